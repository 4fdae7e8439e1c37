//! `vopr`: swarm runs of the deterministic simulator ([`udrbd_sim::swarm`]).
//!
//! ```text
//! vopr --seed N                 one seed (replays a failure bit for bit)
//! vopr --seeds A..B             seeds A (inclusive) to B (exclusive)
//! vopr --seed N --seeds K       K seeds from N
//! vopr --minutes M [--seed N]   consecutive seeds from N until M minutes of wall time passed
//! vopr --threads T              run seeds on T threads (default 1)
//! vopr --ops N                  operations per seed (default: drawn per seed)
//! vopr --verbose                one line per seed
//! vopr --trace                  every operation and event of the run (one seed)
//! vopr --block B                every change of the model's knowledge of block B, and why
//! vopr --bench                  the speed benchmark (see `bench` below)
//! vopr --epochs E [--full-sync] the older epoch workload (udrbd_sim::workload)
//! vopr --hostile ...            hostile-peer runs instead of the swarm (udrbd_sim::hostile;
//!                               --seed, --seeds, --minutes, --threads, --ops as above)
//! ```
//!
//! A failure prints the seed, the checker, the drawn parameters and the cluster's state, and
//! the exit status is 1. Every run prints the summed fault and event counts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use udrbd_sim::hostile::{HostileCounts, HostileOptions, run_hostile};
use udrbd_sim::swarm::{SwarmCounts, SwarmOptions, run_seed};
use udrbd_sim::workload::{WorkloadOptions, run};

struct Args {
    first: u64,
    end: Option<u64>,
    minutes: Option<f64>,
    threads: usize,
    ops: u64,
    verbose: bool,
    trace: bool,
    trace_block: Option<u64>,
    bench: bool,
    epochs: Option<u64>,
    full_sync: bool,
    hostile: bool,
}

fn parse() -> Args {
    let mut a = Args {
        first: 0,
        end: None,
        minutes: None,
        threads: 1,
        ops: 0,
        verbose: false,
        trace: false,
        trace_block: None,
        bench: false,
        epochs: None,
        full_sync: false,
        hostile: false,
    };
    let mut count = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> String {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v}")))
        };
        match arg.as_str() {
            "--seed" => a.first = number("--seed", value("--seed")),
            "--seeds" => {
                let v = value("--seeds");
                match v.split_once("..") {
                    Some((x, y)) => {
                        a.first = number("--seeds", x.into());
                        a.end = Some(number("--seeds", y.into()));
                    }
                    None => count = Some(number("--seeds", v)),
                }
            }
            "--minutes" => {
                let v = value("--minutes");
                a.minutes = Some(
                    v.parse()
                        .unwrap_or_else(|_| usage(&format!("--minutes: not a number: {v}"))),
                );
            }
            "--threads" => a.threads = number("--threads", value("--threads")).max(1) as usize,
            "--ops" => a.ops = number("--ops", value("--ops")),
            "--verbose" | "-v" => a.verbose = true,
            "--trace" => a.trace = true,
            "--block" => a.trace_block = Some(number("--block", value("--block"))),
            "--bench" => a.bench = true,
            "--epochs" => a.epochs = Some(number("--epochs", value("--epochs"))),
            "--full-sync" => a.full_sync = true,
            "--hostile" => a.hostile = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if let Some(k) = count {
        a.end = Some(a.first + k);
    }
    a
}

// The binary may read the wall clock and /proc (the library may not): `--minutes` and the
// benchmark's CPU time.
#[allow(clippy::disallowed_methods)]
fn main() {
    let args = parse();
    if args.bench {
        bench();
        return;
    }
    if let Some(epochs) = args.epochs {
        epoch_workload(&args, epochs);
        return;
    }
    // Failures are printed once, by the runner, with the seed: keep the panic hook quiet.
    if !args.trace && args.trace_block.is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let options = SwarmOptions {
        ops: args.ops,
        trace: args.trace,
        trace_block: args.trace_block,
        ..SwarmOptions::default()
    };
    let hostile = HostileOptions { ops: args.ops };
    let failed = if args.hostile {
        let run = |seed| {
            run_hostile(seed, &hostile).map_err(|f| Failed {
                text: format!(
                    "seed {seed} failed the {} checker (replay: vopr --hostile --seed {seed})\n{}",
                    f.checker, f.message
                ),
                summary: format!(
                    "seed {seed} ({} checker): vopr --hostile --seed {seed}",
                    f.checker
                ),
            })
        };
        run_seeds(&args, run, HostileCounts::add)
    } else {
        let run = |seed| {
            let report = run_seed(seed, &options).map_err(|f| Failed {
                text: f.to_string(),
                summary: format!("seed {seed} ({} checker): vopr --seed {seed}", f.checker),
            })?;
            if args.verbose {
                println!(
                    "seed {seed}: ok, hash {:016x}: {}",
                    report.hash, report.counts
                );
            }
            Ok(report.counts)
        };
        run_seeds(&args, run, SwarmCounts::add)
    };
    if failed {
        std::process::exit(1);
    }
}

/// A failed seed, as printed.
struct Failed {
    text: String,
    summary: String,
}

/// Runs the seeds of `args` on its threads; prints every failure, then the summed counts and
/// a replay line per failure. Returns whether a seed failed.
#[allow(clippy::disallowed_methods)]
fn run_seeds<C: Default + std::fmt::Display + Send>(
    args: &Args,
    run: impl Fn(u64) -> Result<C, Failed> + Sync,
    add: fn(&mut C, &C),
) -> bool {
    let started = Instant::now();
    let end = match (args.end, args.minutes) {
        (Some(end), _) => end,
        (None, Some(_)) => u64::MAX,
        (None, None) => args.first + 1,
    };
    let deadline = args.minutes.map(|m| m * 60.0);
    let next = AtomicU64::new(args.first);
    let passed = AtomicU64::new(0);
    let totals = Mutex::new(C::default());
    let failures: Mutex<Vec<Failed>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            scope.spawn(|| {
                loop {
                    if deadline.is_some_and(|d| started.elapsed().as_secs_f64() >= d) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    match run(seed) {
                        Ok(counts) => {
                            passed.fetch_add(1, Ordering::Relaxed);
                            add(&mut totals.lock().expect("totals"), &counts);
                        }
                        Err(failure) => {
                            println!("FAILED: {}", failure.text);
                            failures.lock().expect("failures").push(failure);
                        }
                    }
                }
            });
        }
    });
    let totals = totals.into_inner().expect("totals");
    let failures = failures.into_inner().expect("failures");
    println!(
        "{} seeds passed, {} failed in {:.1}s: {totals}",
        passed.into_inner(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &failures {
        println!("failed: {}", f.summary);
    }
    !failures.is_empty()
}

/// The speed benchmark: [`udrbd_sim::bench`]'s fixed workload; prints simulated requests
/// per second of CPU time (the process's, on one thread).
fn bench() {
    for invariants in [true, false] {
        let options = udrbd_sim::bench::BenchOptions {
            invariants,
            ..udrbd_sim::bench::BenchOptions::default()
        };
        let start = cpu_seconds();
        let report = udrbd_sim::bench::run(&options);
        let secs = cpu_seconds() - start;
        println!(
            "bench ({}): {} requests ({} steps, {:.1}s simulated) in {:.3}s of CPU: {:.0} simulated requests per second of CPU",
            if invariants {
                "invariants() after every step"
            } else {
                "without invariants()"
            },
            report.requests,
            report.steps,
            report.simulated_ns as f64 / 1e9,
            secs,
            report.requests as f64 / secs
        );
    }
}

/// CPU time of the calling thread's process in seconds (/proc/self/schedstat, nanoseconds).
#[allow(clippy::disallowed_methods)]
fn cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/schedstat").unwrap_or_default();
    let ns: f64 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    ns / 1e9
}

fn epoch_workload(args: &Args, epochs: u64) {
    let opts = WorkloadOptions {
        epochs,
        initial_full_sync: args.full_sync,
        ..WorkloadOptions::default()
    };
    for s in args.first..args.end.unwrap_or(args.first + 1) {
        let report = run(s, opts);
        println!(
            "seed {s}: ok: {} writes, {} sectors verified after failovers, {:.3}s simulated, {} steps, faults {:?}",
            report.writes,
            report.verified_sectors,
            report.simulated_ns as f64 / 1e9,
            report.steps,
            report.faults
        );
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "vopr: {problem}\n\
         usage: vopr [--hostile] [--seed N] [--seeds A..B | --seeds COUNT] [--minutes M]\n\
         \x20           [--threads T] [--ops N] [--verbose]\n\
         \x20      vopr --bench\n\
         \x20      vopr --epochs E [--full-sync] [--seed N] [--seeds COUNT]"
    );
    std::process::exit(2)
}
