//! The simulator's speed benchmark: a fixed, documented workload (`vopr --bench`).
//!
//! A connected pair under protocol C (16 MiB devices, `al-extents 7`, the default network of
//! [`ClusterOptions`]), node 0 Primary; `requests` random 4 KiB requests, 70 % writes and
//! 30 % reads, at queue depth 32, no faults. Every step runs the engines' `invariants()` as in
//! every other run. The result counts requests, engine steps and simulated time; the caller
//! measures CPU time.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::{AdminCommand, BlockRequestId};

use crate::cluster::{BLOCK, Cluster, ClusterOptions, JournalEntry};

/// The benchmark's workload.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Requests to complete.
    pub requests: u64,
    /// Requests in flight.
    pub queue_depth: usize,
    /// Seed.
    pub seed: u64,
    /// Run `invariants()` after every step (as every other run does).
    pub invariants: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            requests: 200_000,
            queue_depth: 32,
            seed: 1,
            invariants: true,
        }
    }
}

/// What the benchmark did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchReport {
    /// Requests completed.
    pub requests: u64,
    /// Engine steps.
    pub steps: u64,
    /// Simulated nanoseconds.
    pub simulated_ns: u64,
}

/// Runs the benchmark workload.
pub fn run(options: &BenchOptions) -> BenchReport {
    let mut c = Cluster::new(
        options.seed,
        ClusterOptions {
            device_bytes: 16 << 20,
            al_extents: 7,
            journal: true,
            invariants_every_step: options.invariants,
            ..ClusterOptions::default()
        },
    );
    c.wait_connected(Duration::from_secs(30));
    c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
    c.wait_in_sync(Duration::from_secs(30));
    c.must(0, AdminCommand::Primary { force: false });
    c.take_journal();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let blocks = c.data_blocks();
    let data = Bytes::from(vec![0xA5u8; BLOCK as usize]);
    let mut in_flight: BTreeSet<BlockRequestId> = BTreeSet::new();
    let (mut submitted, mut completed) = (0u64, 0u64);
    let start_steps = c.steps();
    let start_ns = c.now().0;
    while completed < options.requests {
        while in_flight.len() < options.queue_depth && submitted < options.requests {
            let offset = (rng.next_u64() % blocks) * BLOCK;
            let id = if rng.next_u64() % 10 < 7 {
                c.submit_write(0, offset, data.clone(), false)
            } else {
                c.submit_read(0, offset, BLOCK as u32)
            };
            in_flight.insert(id);
            submitted += 1;
        }
        assert!(c.step(), "the benchmark stalled");
        for entry in c.take_journal() {
            if let JournalEntry::Completed { id, result, .. } = entry {
                assert!(result.is_ok(), "a benchmark request failed");
                in_flight.remove(&id);
                completed += 1;
            }
        }
    }
    BenchReport {
        requests: completed,
        steps: c.steps() - start_steps,
        simulated_ns: c.now().0 - start_ns,
    }
}
