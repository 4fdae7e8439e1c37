//! Random two-node runs: a Primary writing while one fault per epoch strikes, checked for
//! durability across failovers and for convergence after every epoch.
//!
//! Every epoch starts from a connected, UpToDate pair with nothing out of sync, forgets the
//! write model, writes on the Primary (some writes still in flight when the fault strikes),
//! applies one fault, finishes the writes, waits for the pair to be in sync again and
//! compares the replicas. Faults:
//! - none;
//! - a partition of a random length, with writes on the Primary while it lasts;
//! - a crash of the Secondary, writes while it is down, its restart (attach + connect);
//! - a crash of the Primary: every write it acknowledged under protocol C while the peer was
//!   Connected and UpToDate must be on the survivor ([`Cluster::check_acked_writes`]); the
//!   survivor is promoted and writes, the crashed node restarts as the new Secondary;
//! - a switchover (demote, promote the other);
//! - `disconnect` / `connect` of the Secondary with writes in between;
//! - `invalidate` of the Secondary (a full resync) with writes during the resync;
//! - a power cut of both nodes: both restart, resync what the crashed Primary may have
//!   changed, and the old Primary is promoted again.
//!
//! Checkers: those of [`Cluster`] after every step (invariants, no two Primaries
//! connected), durability at a Primary's crash, every request not lost in a crash
//! completes, byte-identical replicas after every epoch, and every completed write reads back
//! on the Primary ([`Cluster::check_reads`]). The network's latency and bandwidth vary per seed.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::{AdminCommand, BlockRequestId, Role};

use crate::cluster::{Cluster, ClusterOptions};
use crate::net::NodeId;

/// Options of a random run.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadOptions {
    /// The cluster (two nodes).
    pub cluster: ClusterOptions,
    /// Epochs (one fault each).
    pub epochs: u64,
    /// Writes per epoch, at most.
    pub writes: u64,
    /// Writes in flight at most.
    pub queue_depth: usize,
    /// Start with a full initial sync (`primary --force`) instead of `new-current-uuid
    /// --clear-bitmap`.
    pub initial_full_sync: bool,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            cluster: ClusterOptions::default(),
            epochs: 8,
            writes: 60,
            queue_depth: 6,
            initial_full_sync: false,
        }
    }
}

/// The fault of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Nothing.
    None,
    /// A partition, healed later.
    Partition,
    /// The Secondary crashes and restarts.
    CrashSecondary,
    /// The Primary crashes; the Secondary takes over.
    CrashPrimary,
    /// The roles swap.
    Switchover,
    /// The Secondary disconnects and reconnects.
    DisconnectConnect,
    /// The Secondary invalidates its data.
    Invalidate,
    /// Both nodes lose power; both restart and the old Primary is promoted again.
    CrashBoth,
}

const FAULTS: [Fault; 8] = [
    Fault::None,
    Fault::Partition,
    Fault::CrashSecondary,
    Fault::CrashPrimary,
    Fault::Switchover,
    Fault::DisconnectConnect,
    Fault::Invalidate,
    Fault::CrashBoth,
];

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Faults, in order.
    pub faults: Vec<Fault>,
    /// Writes completed.
    pub writes: u64,
    /// Sectors verified on a survivor after a Primary's crash.
    pub verified_sectors: u64,
    /// Writes read back on the Primary after an epoch.
    pub verified_reads: u64,
    /// Simulated nanoseconds at the end.
    pub simulated_ns: u64,
    /// Steps.
    pub steps: u64,
}

struct Run {
    c: Cluster,
    rng: ChaCha8Rng,
    opts: WorkloadOptions,
    primary: NodeId,
    /// Requests submitted and not yet awaited.
    pending: Vec<BlockRequestId>,
    report: Report,
}

/// Runs one seed; panics (naming the seed) on a checker violation.
pub fn run(seed: u64, opts: WorkloadOptions) -> Report {
    assert_eq!(opts.cluster.nodes, 2, "the workload drives a pair");
    let mut cluster = opts.cluster;
    // A network from a LAN to a slow WAN, per seed.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
    let high = 50_000 + rng.next_u64() % 5_000_000;
    cluster.net_latency_ns = (high / 10, high);
    cluster.net_bandwidth = (16 << 20) + rng.next_u64() % (1 << 30);
    let mut r = Run {
        c: Cluster::new(seed, cluster),
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x0F0F_F0F0),
        opts,
        primary: 0,
        pending: Vec::new(),
        report: Report::default(),
    };
    r.bring_up();
    for _ in 0..opts.epochs {
        let fault = FAULTS[(r.rng.next_u64() % FAULTS.len() as u64) as usize];
        r.epoch(fault);
    }
    r.report.simulated_ns = r.c.now().0;
    r.report.steps = r.c.steps();
    r.report
}

impl Run {
    fn secondary(&self) -> NodeId {
        self.primary ^ 1
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn bring_up(&mut self) {
        self.c.wait_connected(Duration::from_secs(30));
        if self.opts.initial_full_sync {
            self.c.must(0, AdminCommand::Primary { force: true });
        } else {
            self.c
                .must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
            self.c.must(0, AdminCommand::Primary { force: false });
        }
        self.settle();
    }

    /// Waits for in-flight requests, a connected pair in sync, identical replicas.
    fn settle(&mut self) {
        for id in std::mem::take(&mut self.pending) {
            if self.c.is_lost(id) {
                continue;
            }
            if let Err(e) = self.c.wait(id) {
                self.c.fail(&format!("request {id:?} failed: {e:?}"));
            }
            self.report.writes += 1;
        }
        self.c.wait_in_sync(Duration::from_secs(300));
        if self.c.check_identical() != 1 {
            self.c.fail("the pair is not comparable after settling");
        }
        self.report.verified_reads += self.c.check_reads(self.primary);
    }

    /// Some writes, waited for, then some left in flight.
    fn writes(&mut self) {
        let n = self.below(self.opts.writes) as usize;
        let depth = 1 + self.below(self.opts.queue_depth as u64) as usize;
        let done = self.c.random_writes(self.primary, n, depth);
        self.report.writes += done.len() as u64;
        self.submit_some();
    }

    fn submit_some(&mut self) {
        for _ in 0..self.below(self.opts.queue_depth as u64) {
            let id = if self.below(6) == 0 {
                self.c.submit_flush(self.primary)
            } else {
                self.c.submit_random_write(self.primary, 8)
            };
            self.pending.push(id);
        }
    }

    fn epoch(&mut self, fault: Fault) {
        self.report.faults.push(fault);
        self.c.set_context(format!(
            "epoch {} (faults {:?}), Primary node {}",
            self.report.faults.len() - 1,
            self.report.faults,
            self.primary
        ));
        self.c.forget_writes();
        self.writes();
        let (p, s) = (self.primary, self.secondary());
        match fault {
            Fault::None => {}
            Fault::Partition => {
                self.c.partition(p, s);
                let ms = self.below(15_000);
                self.c.run_for(Duration::from_millis(ms));
                self.submit_some();
                let d = Duration::from_millis(self.below(2_000));
                self.c.run_for(d);
                self.c.heal();
            }
            Fault::CrashSecondary => {
                let d = Duration::from_micros(self.below(3_000));
                self.c.run_for(d);
                self.c.crash(s);
                let d = Duration::from_millis(self.below(2_000));
                self.c.run_for(d);
                self.submit_some();
                self.c.restart(s);
            }
            Fault::CrashPrimary => {
                let d = Duration::from_micros(self.below(3_000));
                self.c.run_for(d);
                self.c.crash(p);
                self.report.verified_sectors += self.c.check_acked_writes(s);
                self.c.wait_disconnected(s, Duration::from_secs(30));
                self.c.must(s, AdminCommand::Primary { force: false });
                self.primary = s;
                self.c.forget_writes();
                self.writes();
                self.c.restart(p);
            }
            Fault::Switchover => {
                self.settle();
                self.c.must(p, AdminCommand::Secondary);
                // As a cluster manager does: promote once the peer has seen the demotion
                // (before, DRBD refuses with "Multiple primaries not allowed").
                self.c
                    .run_until("the peer sees the demotion", Duration::from_secs(30), |c| {
                        c.snapshot(s).peer_role == Role::Secondary
                    });
                self.c.must(s, AdminCommand::Primary { force: false });
                self.primary = s;
                self.writes();
            }
            Fault::DisconnectConnect => {
                self.c.must(s, AdminCommand::Disconnect);
                self.writes();
                self.c.must(
                    s,
                    AdminCommand::Connect {
                        discard_my_data: false,
                    },
                );
            }
            Fault::Invalidate => {
                self.settle();
                self.c.must(s, AdminCommand::Invalidate);
                self.writes();
            }
            Fault::CrashBoth => {
                let d = Duration::from_micros(self.below(3_000));
                self.c.run_for(d);
                self.c.crash(p);
                self.c.crash(s);
                // What was not flushed may be gone on both: the model starts again.
                self.c.forget_writes();
                self.c.restart(s);
                self.c.restart(p);
                self.c.wait_in_sync(Duration::from_secs(300));
                self.c.must(p, AdminCommand::Primary { force: false });
            }
        }
        self.settle();
    }
}
