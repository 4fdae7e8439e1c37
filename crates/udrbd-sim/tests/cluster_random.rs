//! Random two-node runs over a few seeds: one fault per epoch, durability across failovers,
//! convergence after every epoch (`udrbd_sim::workload`).

use udrbd_sim::workload::{WorkloadOptions, run};

#[test]
fn random_pair_runs() {
    for seed in 0..6 {
        let report = run(seed, WorkloadOptions::default());
        assert_eq!(report.faults.len(), 8, "seed {seed}");
    }
}

#[test]
fn random_pair_runs_with_initial_full_sync() {
    for seed in 100..103 {
        run(
            seed,
            WorkloadOptions {
                initial_full_sync: true,
                epochs: 4,
                ..WorkloadOptions::default()
            },
        );
    }
}

#[test]
fn a_random_run_replays_bit_for_bit() {
    let opts = WorkloadOptions {
        epochs: 3,
        ..WorkloadOptions::default()
    };
    assert_eq!(run(11, opts), run(11, opts));
}
