//! Hostile-peer runs in CI (`udrbd_sim::hostile`): a fixed range of seeds, each a pair of
//! real engines whose network alters, drops, repeats and replays packets, on two threads;
//! every seed must pass (no panic, `invariants()` after every step, every request and
//! command completes once the tampering stops and the nodes disconnect, the pair reconnects
//! or names why not). Minimum totals keep the run from passing by being gentle, and a seed
//! run twice gives the same counts.
//!
//! Longer runs: `vopr --hostile --seeds A..B --threads 2` (a debug build, `cargo build -p
//! udrbd-sim`, also catches arithmetic overflow on values a peer sent).

use std::sync::Mutex;

use udrbd_sim::SimFailure;
use udrbd_sim::hostile::{HostileCounts, HostileOptions, run_hostile};

/// The CI range.
const SEEDS: std::ops::Range<u64> = 0..300;

#[test]
fn hostile_ci_range() {
    let options = HostileOptions::default();
    // Failing seeds are reported below with their seed and checker: keep their panics quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let next = Mutex::new(SEEDS.start);
    let totals = Mutex::new(HostileCounts::default());
    let failures: Mutex<Vec<(u64, SimFailure)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let seed = {
                        let mut n = next.lock().expect("seed counter");
                        let seed = *n;
                        *n += 1;
                        seed
                    };
                    if seed >= SEEDS.end {
                        return;
                    }
                    match run_hostile(seed, &options) {
                        Ok(counts) => totals.lock().expect("totals").add(&counts),
                        Err(f) => failures.lock().expect("failures").push((seed, f)),
                    }
                }
            });
        }
    });
    drop(std::panic::take_hook());
    let totals = totals.into_inner().expect("totals");
    let mut failures = failures.into_inner().expect("failures");
    failures.sort_by_key(|(seed, _)| *seed);
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
