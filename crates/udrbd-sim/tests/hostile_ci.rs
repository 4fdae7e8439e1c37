//! Hostile-peer runs in CI (`udrbd_sim::hostile`): a fixed range of seeds, each a pair of
//! real engines whose network alters, drops, repeats and replays packets, on two threads;
//! every seed must pass (no panic, `invariants()` after every step, every request and
//! command completes once the tampering stops and the nodes disconnect, the pair reconnects
//! or names why not). Minimum totals keep the run from passing by being gentle, and a seed
//! run twice gives the same counts.
//!
//! Longer runs: `vopr --hostile --seeds A..B --threads 2` (a debug build, `cargo build -p
//! udrbd-sim`, also catches arithmetic overflow on values a peer sent).

mod common;

use udrbd_sim::SimFailure;
use udrbd_sim::hostile::{HostileCounts, HostileOptions, run_hostile};

/// The CI range.
const SEEDS: std::ops::Range<u64> = 0..300;

#[test]
fn hostile_ci_range() {
    let options = HostileOptions::default();
    let mut totals = HostileCounts::default();
    let mut failures: Vec<(u64, SimFailure)> = Vec::new();
    for (seed, result) in common::on_two_threads(SEEDS, |seed| run_hostile(seed, &options)) {
        match result {
            Ok(counts) => totals.add(&counts),
            Err(f) => failures.push((seed, f)),
        }
    }
    println!("hostile runs over seeds {SEEDS:?}: {totals}");
    if let Some((seed, first)) = failures.first() {
        panic!(
            "{} hostile seeds failed ({:?}); the first, seed {seed} ({} checker; replay: vopr --hostile --seed {seed}):\n{}",
            failures.len(),
            failures
                .iter()
                .map(|(s, f)| (*s, f.checker.name()))
                .collect::<Vec<_>>(),
            first.checker,
            first.message
        );
    }
    // Not gentle: every kind of alteration happened many times, and the engines refused
    // packets, reconnected and still served requests.
    let t = &totals.tamper;
    let minimums = [
        ("payload fields altered", t.field),
        ("commands changed", t.command),
        ("lengths changed", t.length),
        ("packets dropped", t.dropped),
        ("packets duplicated", t.duplicated),
        ("packets replayed", t.replayed),
        ("protocol errors named", totals.protocol_errors),
        ("requests that succeeded", totals.requests_ok / 100),
        ("connects while tampering", totals.connects / 10),
        ("online verifies over the altering network", totals.verifies),
    ];
    for (what, count) in minimums {
        assert!(count >= 50, "only {count} {what} over the CI range");
    }
}

#[test]
fn a_hostile_seed_replays_bit_for_bit() {
    let options = HostileOptions::default();
    let first = run_hostile(7, &options).expect("seed 7 passes");
    let second = run_hostile(7, &options).expect("seed 7 passes");
    assert_eq!(first, second, "seed 7 replays bit for bit");
    assert!(
        first.tamper.altered() > 0,
        "seed 7 altered packets: {first}"
    );
}
