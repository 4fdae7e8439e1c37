//! What the CI seed ranges share: running every seed of a range on two threads.

use std::ops::Range;
use std::sync::Mutex;

/// Runs `run` for every seed of `seeds` on two threads (seeds handed out in order) and
/// returns each seed's result, in seed order. The panics of failing seeds are kept quiet:
/// the callers report failures with their seed and checker.
pub fn on_two_threads<R: Send>(seeds: Range<u64>, run: impl Fn(u64) -> R + Sync) -> Vec<(u64, R)> {
    std::panic::set_hook(Box::new(|_| {}));
    let next = Mutex::new(seeds.start);
    let results = Mutex::new(Vec::new());
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
                    if seed >= seeds.end {
                        return;
                    }
                    let result = run(seed);
                    results.lock().expect("results").push((seed, result));
                }
            });
        }
    });
    drop(std::panic::take_hook());
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(seed, _)| *seed);
    results
}
