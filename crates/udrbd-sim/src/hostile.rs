//! Hostile-peer runs: a pair of real engines whose network alters packets on the way
//! ([`crate::tamper`]: payload fields set to edge values, commands and lengths changed,
//! packets dropped, repeated and replayed), under application IO and admin commands.
//!
//! What a peer sends is input like any other, so what an honest peer guarantees (the
//! swarm's durability, register and convergence checkers) does not hold here; what must
//! hold is what a node owes whatever its peer does:
//!
//! 1. **Invariants**: no panic, and `Resource::invariants()` after every step (the cluster
//!    runs it and turns a panic into a [`Checker::Invariants`] failure with the seed);
//! 2. **Progress**: no livelock at one instant (the cluster), and once the tampering stops
//!    and both nodes `disconnect`, every block request and admin command completes within
//!    [`SETTLE`] of simulated time and nothing stays outstanding ([`Checker::Progress`]): a
//!    peer cannot wedge a node beyond a disconnect;
//! 3. **Recovery**: after that, tampering off, both nodes `connect` again and end up
//!    Connected, or StandAlone having named why (a split brain, or data a node refuses to
//!    resync from), within [`SETTLE`] ([`Checker::Progress`]).
//!
//! Every seed draws the replication protocol, the share of packets altered (0.1% to 10%)
//! and the operation count. `vopr --hostile --seeds A..B` runs seeds; the library reads no
//! clock.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::*;

use crate::checker::{self, Checker, SimFailure};
use crate::cluster::{BLOCK, Cluster, ClusterOptions, WireProtocol};
use crate::net::NodeId;
use crate::tamper::TamperCounts;

/// How long the end of a run may take to settle (each of the two checks).
pub const SETTLE: Duration = Duration::from_secs(120);

/// What a run does.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostileOptions {
    /// Operations per seed (0: drawn, 300 to 1000).
    pub ops: u64,
}

/// What happened, summed over seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostileCounts {
    /// Seeds run.
    pub seeds: u64,
    /// Block requests submitted.
    pub requests: u64,
    /// Requests that succeeded.
    pub requests_ok: u64,
    /// Admin commands started.
    pub commands: u64,
    /// Times a node entered Connected while the tampering was on (it reconnected after the
    /// tampering broke a connection, or kept one).
    pub connects: u64,
    /// Times a node entered VerifyS (an online verify ran over the altering network).
    pub verifies: u64,
    /// Log lines naming a protocol error (a packet the engine refused).
    pub protocol_errors: u64,
    /// What the network did.
    pub tamper: TamperCounts,
    /// Times a node stopped reading its data socket at max-buffers.
    pub receive_pauses: u64,
    /// Simulated nanoseconds.
    pub simulated_ns: u64,
}

impl HostileCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, o: &HostileCounts) {
        self.seeds += o.seeds;
        self.requests += o.requests;
        self.requests_ok += o.requests_ok;
        self.commands += o.commands;
        self.connects += o.connects;
        self.verifies += o.verifies;
        self.protocol_errors += o.protocol_errors;
        self.tamper.add(&o.tamper);
        self.receive_pauses += o.receive_pauses;
        self.simulated_ns += o.simulated_ns;
    }
}

impl std::fmt::Display for HostileCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.tamper;
        write!(
            f,
            "seeds {} | requests {} ok {} | commands {} | connects {} verifies {} protocol-errors {} | \
             packets {} altered {} (field {} command {} length {} dropped {} duplicated {} replayed {}) | \
             receive-pauses {} | simulated {:.1}s",
            self.seeds,
            self.requests,
            self.requests_ok,
            self.commands,
            self.connects,
            self.verifies,
            self.protocol_errors,
            t.seen,
            t.altered(),
            t.field,
            t.command,
            t.length,
            t.dropped,
            t.duplicated,
            t.replayed,
            self.receive_pauses,
            self.simulated_ns as f64 / 1e9
        )
    }
}

/// Runs one seed.
pub fn run_hostile(seed: u64, options: &HostileOptions) -> Result<HostileCounts, SimFailure> {
    let _ = checker::take_failure();
    let result = catch_unwind(AssertUnwindSafe(|| Run::new(seed, options).run()));
    result.map_err(|panic| {
        checker::take_failure().unwrap_or_else(|| SimFailure {
            checker: Checker::Scenario,
            message: format!(
                "seed {seed}: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into())
            ),
        })
    })
}

const NODES: [NodeId; 2] = [0, 1];

struct Run {
    c: Cluster,
    rng: ChaCha8Rng,
    ops: u64,
    per_million: u32,
    /// Requests submitted and not completed yet.
    inflight: Vec<BlockRequestId>,
    /// Commands started and not finished yet.
    commands: Vec<(NodeId, CommandId)>,
    counts: HostileCounts,
}

impl Run {
    fn new(seed: u64, options: &HostileOptions) -> Run {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4805_7113);
        let protocol = match rng.next_u64() % 3 {
            0 => WireProtocol::A,
            1 => WireProtocol::B,
            _ => WireProtocol::C,
        };
        // 1000 to 100 000 per million, spread over two orders of magnitude.
        let per_million = (1000.0 * 100f64.powf((rng.next_u64() % 1000) as f64 / 1000.0)) as u32;
        let ops = if options.ops > 0 {
            options.ops
        } else {
            300 + rng.next_u64() % 700
        };
        // A quarter of the seeds run DRBD's smallest max-buffers, so that the receiver stops
        // reading its data socket now and then (drawn apart: the others keep what they drew).
        let small_buffers = ChaCha8Rng::seed_from_u64(seed ^ 0x6D61_7862).next_u64() % 4 == 0;
        let mut resync = ClusterOptions::default().resync;
        if small_buffers {
            resync.max_buffers_pages = 32;
        }
        let c = Cluster::new(
            seed,
            ClusterOptions {
                protocol,
                resync,
                // The cluster's own limit is for honest runs; here the run judges progress.
                limit: Duration::from_secs(3600),
                verify_alg: Some(udrbd_core::VerifyAlg::Crc32c),
                csums_alg: (seed % 2 == 1).then_some(udrbd_core::VerifyAlg::Sha1),
                ..ClusterOptions::default()
            },
        );
        Run {
            c,
            rng,
            ops,
            per_million,
            inflight: Vec::new(),
            commands: Vec::new(),
            counts: HostileCounts {
                seeds: 1,
                ..HostileCounts::default()
            },
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn run(mut self) -> HostileCounts {
        // An honest start: connected, node 0 Primary, the initial sync done.
        self.c.wait_connected(Duration::from_secs(60));
        self.c.must(0, AdminCommand::Primary { force: true });
        self.c.wait_in_sync(Duration::from_secs(120));
        self.c.set_tamper(self.per_million);
        self.c
            .set_context(format!("tampering with {} per million", self.per_million));
        for _ in 0..self.ops {
            match self.below(20) {
                0..14 => self.io(),
                14..18 => {
                    let d = Duration::from_micros(self.below(2_000_000));
                    self.run_for(d);
                }
                _ => self.admin(),
            }
            self.reap();
        }
        self.c.set_tamper(0);
        self.settle();
        self.recover();
        self.counts.tamper = self.c.tamper_counts();
        self.counts.receive_pauses = self.c.receive_pauses();
        self.counts.simulated_ns = self.c.now().0;
        self.counts.protocol_errors = NODES
            .iter()
            .map(|&n| {
                self.c
                    .logs(n)
                    .iter()
                    .filter(|l| l.contains("protocol error"))
                    .count() as u64
            })
            .sum();
        self.counts
    }

    /// Runs for `d`, counting the nodes' entries into Connected.
    fn run_for(&mut self, d: Duration) {
        let before: Vec<usize> = NODES.iter().map(|&n| self.c.history(n).len()).collect();
        self.c.run_for(d);
        for (i, &n) in NODES.iter().enumerate() {
            self.counts.connects += self.c.history(n)[before[i]..]
                .iter()
                .filter(|(_, s)| s.conn == Some(ConnState::Connected))
                .count() as u64;
            self.counts.verifies += self.c.history(n)[before[i]..]
                .iter()
                .filter(|(_, s)| s.conn == Some(ConnState::VerifyS))
                .count() as u64;
        }
    }

    /// One request on the Primary (or, now and then, on any node).
    fn io(&mut self) {
        if self.inflight.len() >= 16 {
            let d = Duration::from_micros(self.below(5_000));
            self.run_for(d);
            return;
        }
        let primary = NODES
            .into_iter()
            .find(|&n| self.c.snapshot(n).role == Role::Primary);
        let node = match primary {
            Some(p) if self.below(10) > 0 => p,
            _ => self.below(2) as NodeId,
        };
        let blocks = self.c.data_blocks();
        let n = 1 + self.below(8).min(blocks - 1);
        let offset = self.below(blocks - n + 1) * BLOCK;
        let len = n * BLOCK;
        let id = BlockRequestId(0);
        let request = match self.below(10) {
            0..3 => BlockRequest::Read {
                id,
                offset,
                len: len as u32,
            },
            3..8 => {
                let tag = self.rng.next_u64();
                BlockRequest::Write {
                    id,
                    offset,
                    data: crate::cluster::pattern(tag, len as usize),
                    fua: self.below(8) == 0,
                }
            }
            8 => BlockRequest::Flush { id },
            _ => BlockRequest::Discard {
                id,
                offset,
                len,
                fua: false,
            },
        };
        self.counts.requests += 1;
        let id = self.c.submit(node, request);
        self.inflight.push(id);
    }

    fn admin(&mut self) {
        let node = self.below(2) as NodeId;
        let cmd = match self.below(14) {
            0 | 1 => AdminCommand::Primary { force: false },
            2 => AdminCommand::Secondary,
            3..=6 => AdminCommand::Connect {
                discard_my_data: self.below(4) == 0,
            },
            7 => AdminCommand::Disconnect,
            8 => AdminCommand::Detach {
                force: self.below(2) == 0,
            },
            9 | 10 => self.c.attach_command(),
            11 => AdminCommand::Invalidate,
            12 => AdminCommand::InvalidateRemote,
            _ => match self.below(3) {
                0 => AdminCommand::NewCurrentUuid {
                    clear_bitmap: self.below(2) == 0,
                },
                1 => AdminCommand::Outdate,
                // An online verify: altered P_OV_REQUEST / REPLY / RESULT packets.
                _ => AdminCommand::Verify {
                    start_sector: None,
                    stop_sector: None,
                },
            },
        };
        self.counts.commands += 1;
        let id = self.c.start_command(node, cmd);
        self.commands.push((node, id));
    }

    /// Forgets what completed.
    fn reap(&mut self) {
        let c = &self.c;
        let mut ok = 0;
        self.inflight.retain(|id| match c.completion(*id) {
            Some(result) => {
                ok += u64::from(result.is_ok());
                false
            }
            None => true,
        });
        self.counts.requests_ok += ok;
        self.commands
            .retain(|&(node, id)| c.command_result(node, id).is_none());
    }

    fn outstanding(&self) -> bool {
        let c = &self.c;
        self.inflight.iter().any(|id| c.completion(*id).is_none())
            || self
                .commands
                .iter()
                .any(|&(node, id)| c.command_result(node, id).is_none())
    }

    /// (2) Tampering off, both nodes disconnect: everything completes, nothing stays
    /// outstanding.
    fn settle(&mut self) {
        self.c
            .set_context("settling: tampering off, both nodes disconnect".into());
        for node in NODES {
            let id = self.c.start_command(node, AdminCommand::Disconnect);
            self.commands.push((node, id));
        }
        let settled = self.c.try_run_until(SETTLE, |c| {
            NODES
                .iter()
                .all(|&n| c.conn(n).is_none_or(|conn| conn == ConnState::StandAlone))
        });
        let mut waited = Duration::ZERO;
        while settled && self.outstanding() && waited < SETTLE {
            self.c.run_for(Duration::from_millis(100));
            waited += Duration::from_millis(100);
        }
        if !settled || self.outstanding() {
            let requests: Vec<_> = self
                .inflight
                .iter()
                .filter(|id| self.c.completion(**id).is_none())
                .collect();
            let commands: Vec<_> = self
                .commands
                .iter()
                .filter(|&&(n, id)| self.c.command_result(n, id).is_none())
                .collect();
            self.c.fail_by(
                Checker::Progress,
                &format!(
                    "after the tampering stopped and both nodes disconnected, still outstanding within {SETTLE:?}: requests {requests:?}, commands (node, id) {commands:?}"
                ),
            );
        }
        self.reap();
        // Let lazy work (bitmap write-out) finish, then nothing may be in flight.
        self.c.run_for(Duration::from_secs(7));
        for node in NODES {
            let st = self.c.status(node);
            if st.upper_pending != 0
                || st.lower_pending != 0
                || st.stuck_ios != 0
                || self.c.disk_in_flight(node) != 0
            {
                self.c.fail_by(
                    Checker::Progress,
                    &format!("node {node} is idle but has work outstanding: {st:?}"),
                );
            }
        }
    }

    /// (3) Honest again, the pair reconnects, or a node names why it will not.
    fn recover(&mut self) {
        self.c
            .set_context("recovering: tampering off, both nodes connect".into());
        for node in NODES {
            if self.c.snapshot(node).disk <= DiskState::Failed {
                let attach = self.c.attach_command();
                let _ = self.c.command(node, attach);
            }
            let id = self.c.start_command(
                node,
                AdminCommand::Connect {
                    discard_my_data: false,
                },
            );
            self.commands.push((node, id));
        }
        let done = self.c.try_run_until(SETTLE, |c| {
            let connected = c.all_connected();
            let refused = NODES.iter().any(|&n| {
                c.conn(n) == Some(ConnState::StandAlone)
                    && c.status(n)
                        .peer
                        .as_ref()
                        .is_some_and(|p| p.last_error.is_some())
            });
            connected || refused
        });
        if !done {
            self.c.fail_by(
                Checker::Progress,
                &format!(
                    "honest again and told to connect, the pair neither connected nor named why within {SETTLE:?}\n  node 0: {:?}\n  node 1: {:?}",
                    self.c.status(0),
                    self.c.status(1)
                ),
            );
        }
    }
}
