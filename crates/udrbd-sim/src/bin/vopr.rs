//! `vopr --seed N [--seeds COUNT] [--epochs E] [--full-sync]`: random two-node runs
//! ([`udrbd_sim::workload`]); a failing seed panics with its number and replays bit for bit.

use udrbd_sim::workload::{WorkloadOptions, run};

fn main() {
    let mut seed = 0u64;
    let mut seeds = 1u64;
    let mut opts = WorkloadOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match arg.as_str() {
            "--seed" => seed = value("--seed"),
            "--seeds" => seeds = value("--seeds"),
            "--epochs" => opts.epochs = value("--epochs"),
            "--full-sync" => opts.initial_full_sync = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    for s in seed..seed + seeds {
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
    eprintln!("vopr: {problem}\nusage: vopr [--seed N] [--seeds COUNT] [--epochs E] [--full-sync]");
    std::process::exit(2)
}
