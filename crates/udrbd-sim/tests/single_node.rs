//! Deterministic single-node runs over many seeds: crashes at random moments, checked for
//! durability, register reads, bitmap soundness, invariants and progress.

use udrbd_sim::single::{Options, run};

#[test]
fn many_seeds_with_crashes() {
    let mut total = udrbd_sim::single::Report::default();
    for seed in 0..60 {
        let r = run(seed, Options::default());
        total.requests += r.requests;
        total.crashes += r.crashes;
        total.verified_blocks += r.verified_blocks;
        total.torn_writes += r.torn_writes;
        total.al_writes += r.al_writes;
    }
    println!("{total:?}");
    assert!(total.crashes >= 150, "{total:?}");
    assert!(total.verified_blocks > 1000, "{total:?}");
    assert!(total.torn_writes > 50, "{total:?}");
    assert!(total.al_writes > 1000, "{total:?}");
}

#[test]
fn a_seed_replays_bit_for_bit() {
    assert_eq!(run(7, Options::default()), run(7, Options::default()));
}
