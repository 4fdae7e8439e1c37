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

/// A small device with 2 activity-log slots: extents are evicted all the time. An AL
/// transaction that evicts an extent is preceded by a flush, so writes that completed in
/// that extent are durable before the log stops covering it; without the preflush these runs
/// diverged after a Primary crash (the peer had writes the crashed Primary lost, and neither
/// its AL nor its bitmap covered them).
#[test]
fn random_pair_runs_with_a_tiny_activity_log() {
    for seed in 0..8 {
        run(
            seed,
            WorkloadOptions {
                cluster: udrbd_sim::cluster::ClusterOptions {
                    device_bytes: 16 << 20,
                    al_extents: 2,
                    ..Default::default()
                },
                ..WorkloadOptions::default()
            },
        );
    }
}
