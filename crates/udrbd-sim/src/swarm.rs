//! Swarm runs: every seed draws its own fault probabilities and workload mix, drives a pair
//! of real engines through a few thousand random operations with faults everywhere, then
//! heals everything and demands convergence. Named checkers judge every run against what
//! DRBD 8.4 promises (ARCHITECTURE.md §4), no more.
//!
//! # Operations (weights drawn per seed, [`SwarmParams`])
//!
//! - **IO** on the node the runner believes Primary: reads, writes (some with FUA), flushes,
//!   discards and write-zeroes of 1 to `max_blocks` 4 KiB blocks, up to `queue_depth` in
//!   flight. Requests never overlap a write in flight (the order of overlapping concurrent
//!   requests is undefined), so every read has one expected value per block.
//! - **Time**: the simulation runs for a random span (the engines' timers, resyncs, pings).
//! - **Admin** on a random up node: primary, secondary, connect, disconnect, detach,
//!   detach --force, attach, invalidate, invalidate-remote, new-current-uuid, outdate. The
//!   runner does not wait; a refusal is counted, never a failure.
//! - **Failover**: promote the node that is not Primary, typically while the old Primary lives
//!   behind a partition (DRBD without fencing allows it: a split brain follows, resolved by
//!   the after-sb policies drawn per seed, or by the runner with `connect
//!   --discard-my-data` in the liveness phase).
//! - **Crash** of a node (a power cut, [`SimDisk::crash`](crate::disk::SimDisk::crash): pending
//!   and unflushed writes land, tear at 512 B / 4 KiB, or vanish) and its **restart** from the
//!   durable image (attach, connect) some operations later.
//! - **Disk faults** per node: freeze / thaw; read or write errors per region (data, bitmap,
//!   activity log, superblock), switched on and off; `disk-timeout` and the `on-io-error`
//!   policy are drawn per seed.
//! - **Network faults**: symmetric and one-way partitions, heal, connection resets, stalls of
//!   one stream, latency and bandwidth changes.
//! - **Options**: half the seeds run their own net and resync options ([`Tuning`]): the
//!   dynamic resync controller or a slow fixed rate, `max-buffers` down to 32, epochs of one
//!   write, other `timeout`, `ko-count`, `ping-int`, `ping-timeout` and `connect-int`, a small
//!   `sndbuf-size`, and sockets whose buffers fill (the sender's writes then wait).
//! - **Clock faults**: a node's clock leaps 50 ms to 15 s forward
//!   ([`Cluster::clock_jump`]): its ping, ping-timeout, disk-timeout and connect timers see
//!   the time pass at once, while its peer, disks and network do not.
//!
//! # The model
//!
//! Per node, a *view*: for every block, the value an application reading on that node as
//! Primary must get, or "unknown". A successful write sets the writer's view, and its peer's
//! when the writer is connected under protocol C (under A or B the peer's copy may lag: it
//! becomes unknown). A failed write, a write lost in a crash, a local data write that
//! returned EIO, and every acknowledged write not yet made durable by a flush or FUA on a node
//! that crashes make the affected blocks unknown on that node. When a node becomes a resync
//! target (or a diskless node connects to an UpToDate peer) its view becomes the source's: the
//! data generation changes, which is how a split-brain resolution discarding one side's
//! writes is modelled. A disk that goes away (detach, failure, crash) keeps what the model
//! knows it holds (not its unflushed writes, not blocks a write in flight may still change,
//! not blocks an unfinished resync had yet to bring); attaching it again serves that, so a
//! stale disk attached and promoted while disconnected is judged by its own content, as DRBD
//! serves it. Unknown blocks become known again with the next write.
//!
//! # Checkers ([`Checker`])
//!
//! 1. **Durability**: when a node crashes, every block whose last acknowledged write was
//!    completed by a Primary under protocol C while its peer was Connected and UpToDate holds
//!    that write on the surviving peer, if the survivor is UpToDate and none of its own writes
//!    to that block failed since. (A write in flight to the block makes it exempt: either
//!    value is right.)
//! 2. **Register**: every read returns, for every block, the node's view of it (as at the
//!    read's submission or completion), unless unknown. In the liveness phase the whole device
//!    is read back on the Primary.
//! 3. **Bitmap soundness**: at quiescent points (both nodes up with meta-data in memory, no
//!    request, disk operation or network byte in flight) every 4 KiB block that differs
//!    between the replicas is marked on at least one node: its bitmap bit is set or its
//!    extent is in the activity log.
//! 4. **Convergence**: after the faults stop (liveness phase: heal, thaw, clear errors,
//!    restart, attach, connect, resolve a split brain), the pair becomes Connected, UpToDate
//!    on both sides with nothing out of sync within bounded simulated time, and the replicas
//!    are byte-identical.
//! 5. **Primaries**: never two Primaries connected to each other (after every step); a
//!    `primary` the engine grants must be one DRBD grants: the node's disk is UpToDate, or it
//!    is connected to an UpToDate peer, and it does not see a Primary peer while connected.
//! 6. **Invariants**: `Resource::invariants()` after every step (the cluster runs it).
//! 7. **Progress**: in the liveness phase every request and command completes within bounded
//!    simulated time, and once idle no engine has a request, disk operation, peer request or
//!    stuck IO outstanding; no livelock at one instant.
//!
//! A failure is returned as a [`SwarmFailure`] naming the checker, the seed and the drawn
//! parameters; `vopr --seed N` replays it bit for bit. The library reads no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::resync_controller::ResyncControllerConfig;
use udrbd_core::sync_decision::{AfterSb0pri, AfterSb1pri, SplitBrainPolicy};
use udrbd_core::*;
use udrbd_wire::WireProtocol;

use crate::checker::{self, Checker};
use crate::cluster::{
    AckInfo, BLOCK, Cluster, ClusterOptions, ConfigureHook, JournalEntry, Snapshot, is_connected,
};
use crate::net::NodeId;

/// Options of a swarm run (what the caller chooses; the rest is drawn from the seed).
#[derive(Clone, Default)]
pub struct SwarmOptions {
    /// Operations per seed (0: drawn, a few thousand).
    pub ops: u64,
    /// Alters each node's configuration at every boot (after the drawn parameters), e.g. to
    /// select an engine mutation.
    pub configure: Option<ConfigureHook>,
    /// Print every operation and journal entry to stderr (for debugging one seed).
    pub trace: bool,
    /// Print every change of the model's knowledge of this block (both views, the detached
    /// disks' content, the last acknowledged write) with what caused it.
    pub trace_block: Option<u64>,
}

impl std::fmt::Debug for SwarmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmOptions")
            .field("ops", &self.ops)
            .field("configure", &self.configure.as_ref().map(|_| "hook"))
            .finish()
    }
}

/// What a seed draws: the workload mix and the fault probabilities (per mille of operations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwarmParams {
    /// Operations.
    pub ops: u64,
    /// Backing device size, MiB (internal meta-data at its end).
    pub device_mib: u64,
    /// Node 1's backing device, MiB, when smaller than node 0's (a quarter of the seeds):
    /// the device is the smaller disk.
    pub second_disk_mib: Option<u64>,
    /// `al-extents` (small: extents are evicted).
    pub al_extents: u16,
    /// Replication protocol.
    pub protocol: WireProtocol,
    /// `disk-timeout`.
    pub disk_timeout: Option<Duration>,
    /// `on-io-error`.
    pub on_io_error: OnIoError,
    /// after-sb-0pri / after-sb-1pri.
    pub split_brain: SplitBrainPolicy,
    /// Requests in flight at most.
    pub queue_depth: usize,
    /// Blocks per request at most.
    pub max_blocks: u64,
    /// IO mix weights: read, write, flush, discard, write-zeroes.
    pub io_mix: [u32; 5],
    /// Operation weights: io, run, admin, failover, crash, restart, disk fault, net fault,
    /// settle.
    pub op_mix: [u32; 9],
    /// Network latency range, ns.
    pub net_latency_ns: (u64, u64),
    /// Network bandwidth, bytes per second.
    pub net_bandwidth: u64,
    /// The net and resync options of half the seeds (the others run the cluster's defaults).
    pub tuning: Option<Tuning>,
}

/// Net and resync options a seed may draw instead of the cluster's defaults (fast fixed-rate
/// resync, DRBD's timers): the dynamic resync controller or a slow fixed rate, a small
/// `max-buffers`, short epochs, and other `timeout`, `ko-count`, `ping-int`, `ping-timeout`
/// and `connect-int`, all within DRBD's ranges (`timeout` below `connect-int` and `ping-int`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// disk { resync-rate c-* } and net { max-buffers }.
    pub resync: ResyncControllerConfig,
    /// `max-epoch-size`.
    pub max_epoch_size: u32,
    /// `connect-int`.
    pub connect_int: Duration,
    /// `ping-int`.
    pub ping_int: Duration,
    /// `ping-timeout`.
    pub ping_timeout: Duration,
    /// `timeout`.
    pub timeout: Duration,
    /// `ko-count` (0: off).
    pub ko_count: u32,
    /// `sndbuf-size` (0: auto).
    pub sndbuf_size: u64,
    /// The sockets' buffers ([`ClusterOptions::socket_buffer`]).
    pub socket_buffer: Option<u64>,
}

/// Draws the tuning of `seed`, from a generator of its own: the seeds without one draw what
/// they drew before it existed.
fn draw_tuning(seed: u64) -> Option<Tuning> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7475_6E69_6E67);
    let mut below = |n: u64| rng.next_u64() % n.max(1);
    if below(2) == 0 {
        return None;
    }
    let max_buffers_pages = [32, 64, 256, 2048][below(4) as usize];
    let resync = match below(3) {
        // DRBD's dynamic controller, around its defaults.
        0 => ResyncControllerConfig {
            resync_rate_kib_per_sec: 250 + below(50_000),
            c_plan_ahead_tenths: 1 + below(50),
            c_fill_target_sectors: [0, 100, 2_000][below(3) as usize],
            c_delay_target_tenths: 1 + below(30),
            c_max_rate_kib_per_sec: 1_024 + below(100 * 1_024),
            c_min_rate_kib_per_sec: [0, 250, 4_096][below(3) as usize],
            max_buffers_pages,
        },
        // A fixed rate, slow to fast (16 MiB take 64 s at the slowest).
        1 => ResyncControllerConfig {
            resync_rate_kib_per_sec: 250 + below(1 << 20),
            c_plan_ahead_tenths: 0,
            max_buffers_pages,
            ..ResyncControllerConfig::default()
        },
        _ => ResyncControllerConfig {
            max_buffers_pages,
            ..ClusterOptions::default().resync
        },
    };
    let connect_int = Duration::from_secs(1 + below(10));
    let ping_int = Duration::from_secs(1 + below(10));
    // In 0.1 s, below both intervals (DRBD refuses a timeout that is not).
    let timeout_max = connect_int.min(ping_int).as_millis() as u64 / 100 - 1;
    Some(Tuning {
        resync,
        max_epoch_size: [1, 2, 7, 64, 2048][below(5) as usize],
        connect_int,
        ping_int,
        ping_timeout: Duration::from_millis(100 * (1 + below(30))),
        timeout: Duration::from_millis(100 * (1 + below(timeout_max.max(1)))),
        ko_count: below(8) as u32,
        sndbuf_size: [0, 64 << 10, 1 << 20][below(3) as usize],
        socket_buffer: [None, Some(64 << 10), Some(1 << 20)][below(3) as usize],
    })
}

/// Event and fault counts of a run (summed over seeds by [`SwarmCounts::add`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmCounts {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds whose two disks differ in size.
    pub unequal_disks: u64,
    /// Seeds with their own net and resync options ([`Tuning`]).
    pub tuned: u64,
    /// Seeds whose resyncs go by digest (csums-alg).
    pub csums: u64,
    /// Times a node stopped reading its data socket at max-buffers.
    pub receive_pauses: u64,
    /// Operations.
    pub ops: u64,
    /// Block requests submitted.
    pub requests: u64,
    /// Block requests completed successfully.
    pub requests_ok: u64,
    /// Block requests completed with an error.
    pub requests_failed: u64,
    /// Reads whose data was checked (register).
    pub reads_checked: u64,
    /// Admin commands issued.
    pub commands: u64,
    /// Admin commands refused or failed.
    pub commands_refused: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Writes torn by crashes.
    pub torn_writes: u64,
    /// Writes lost entirely by crashes.
    pub lost_writes: u64,
    /// Symmetric partitions.
    pub partitions: u64,
    /// One-way partitions.
    pub one_way_partitions: u64,
    /// Connections reset by the network.
    pub resets: u64,
    /// Streams stalled.
    pub stalls: u64,
    /// Latency or bandwidth changes.
    pub net_changes: u64,
    /// A node's clock leapt forward.
    pub clock_jumps: u64,
    /// Disk freezes.
    pub freezes: u64,
    /// IO error injections switched on.
    pub error_injections: u64,
    /// IO errors the disks returned.
    pub io_errors: u64,
    /// Disks that went Failed (any reason).
    pub disk_failures: u64,
    /// Resyncs that completed (a target reached Connected).
    pub resyncs: u64,
    /// Times a resync target went PausedSyncT (`pause-sync` on either node).
    pub sync_pauses: u64,
    /// `suspend-io` commands that held application IO.
    pub io_suspends: u64,
    /// Online verifies started (a node went VerifyS).
    pub verifies: u64,
    /// Devices that grew (`resize` after both disks grew), counted per node.
    pub grows: u64,
    /// Devices shrunk to a user size (`resize --size`), counted per node.
    pub shrinks: u64,
    /// Promotions of a node while its peer was down or unreachable.
    pub failovers: u64,
    /// Split brains detected.
    pub split_brains: u64,
    /// Quiescent points where bitmap soundness was checked.
    pub bitmap_checks: u64,
    /// Blocks verified on a survivor at a crash (durability).
    pub durable_blocks_checked: u64,
    /// Engine steps.
    pub steps: u64,
    /// Simulated nanoseconds.
    pub simulated_ns: u64,
}

/// How much the swarm's disks grow at most, in total (bytes).
const MAX_GROWTH: u64 = 12 << 20;

impl SwarmCounts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, o: &SwarmCounts) {
        let pairs: [(&mut u64, u64); 37] = [
            (&mut self.seeds, o.seeds),
            (&mut self.unequal_disks, o.unequal_disks),
            (&mut self.tuned, o.tuned),
            (&mut self.csums, o.csums),
            (&mut self.receive_pauses, o.receive_pauses),
            (&mut self.ops, o.ops),
            (&mut self.requests, o.requests),
            (&mut self.requests_ok, o.requests_ok),
            (&mut self.requests_failed, o.requests_failed),
            (&mut self.reads_checked, o.reads_checked),
            (&mut self.commands, o.commands),
            (&mut self.commands_refused, o.commands_refused),
            (&mut self.crashes, o.crashes),
            (&mut self.torn_writes, o.torn_writes),
            (&mut self.lost_writes, o.lost_writes),
            (&mut self.partitions, o.partitions),
            (&mut self.one_way_partitions, o.one_way_partitions),
            (&mut self.resets, o.resets),
            (&mut self.stalls, o.stalls),
            (&mut self.net_changes, o.net_changes),
            (&mut self.clock_jumps, o.clock_jumps),
            (&mut self.freezes, o.freezes),
            (&mut self.error_injections, o.error_injections),
            (&mut self.io_errors, o.io_errors),
            (&mut self.disk_failures, o.disk_failures),
            (&mut self.resyncs, o.resyncs),
            (&mut self.sync_pauses, o.sync_pauses),
            (&mut self.io_suspends, o.io_suspends),
            (&mut self.verifies, o.verifies),
            (&mut self.grows, o.grows),
            (&mut self.shrinks, o.shrinks),
            (&mut self.failovers, o.failovers),
            (&mut self.split_brains, o.split_brains),
            (&mut self.bitmap_checks, o.bitmap_checks),
            (&mut self.durable_blocks_checked, o.durable_blocks_checked),
            (&mut self.steps, o.steps),
            (&mut self.simulated_ns, o.simulated_ns),
        ];
        for (a, b) in pairs {
            *a += b;
        }
    }
}

impl std::fmt::Display for SwarmCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seeds {} (unequal disks {}, tuned {}, csums {}) ops {} requests {} (ok {}, failed {}, reads checked {}) commands {} (refused {}) | \
             crashes {} torn-writes {} lost-writes {} | partitions {} one-way {} resets {} stalls {} net-changes {} | clock-jumps {} | \
             freezes {} error-injections {} io-errors {} disk-failures {} | resyncs {} sync-pauses {} io-suspends {} verifies {} grows {} shrinks {} failovers {} split-brains {} | \
             bitmap-checks {} durable-blocks {} receive-pauses {} | steps {} simulated {:.1}s",
            self.seeds,
            self.unequal_disks,
            self.tuned,
            self.csums,
            self.ops,
            self.requests,
            self.requests_ok,
            self.requests_failed,
            self.reads_checked,
            self.commands,
            self.commands_refused,
            self.crashes,
            self.torn_writes,
            self.lost_writes,
            self.partitions,
            self.one_way_partitions,
            self.resets,
            self.stalls,
            self.net_changes,
            self.clock_jumps,
            self.freezes,
            self.error_injections,
            self.io_errors,
            self.disk_failures,
            self.resyncs,
            self.sync_pauses,
            self.io_suspends,
            self.verifies,
            self.grows,
            self.shrinks,
            self.failovers,
            self.split_brains,
            self.bitmap_checks,
            self.durable_blocks_checked,
            self.receive_pauses,
            self.steps,
            self.simulated_ns as f64 / 1e9
        )
    }
}

/// A passed seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmReport {
    /// The seed.
    pub seed: u64,
    /// What it drew.
    pub params: SwarmParams,
    /// What happened.
    pub counts: SwarmCounts,
    /// A hash of every output (completions, read data, state changes, command results, IO
    /// errors, the final data areas): equal for two runs of one seed.
    pub hash: u64,
}

/// A failed seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmFailure {
    /// The seed.
    pub seed: u64,
    /// The checker that fired.
    pub checker: Checker,
    /// What it saw (seed, simulated time, step, the runner's last operation, node states).
    pub message: String,
    /// What the seed drew (boxed: the failure stays small).
    pub params: Box<SwarmParams>,
}

impl std::fmt::Display for SwarmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed the {} checker (replay: vopr --seed {})\n  params: {:?}\n{}",
            self.seed, self.checker, self.seed, self.params, self.message
        )
    }
}

/// Draws the parameters of `seed` (`ops` overrides the drawn operation count unless 0).
pub fn draw_params(seed: u64, ops: u64) -> SwarmParams {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A4E_5741_524D);
    let mut below = |n: u64| rng.next_u64() % n.max(1);
    let protocol = match below(10) {
        0 => WireProtocol::A,
        1 => WireProtocol::B,
        _ => WireProtocol::C,
    };
    let disk_timeout = (below(3) == 0).then(|| Duration::from_millis(500 + below(3000)));
    let on_io_error = match below(4) {
        0 => OnIoError::PassOn,
        1 => OnIoError::CallLocalIoError,
        _ => OnIoError::Detach,
    };
    let split_brain = SplitBrainPolicy {
        after_sb_0pri: match below(4) {
            0 => AfterSb0pri::DiscardYoungerPrimary,
            1 => AfterSb0pri::DiscardZeroChanges,
            2 => AfterSb0pri::DiscardLeastChanges,
            _ => AfterSb0pri::Disconnect,
        },
        after_sb_1pri: match below(3) {
            0 => AfterSb1pri::DiscardSecondary,
            1 => AfterSb1pri::Consensus,
            _ => AfterSb1pri::Disconnect,
        },
        ..SplitBrainPolicy::default()
    };
    let high = 30_000 + below(3_000_000);
    let mut weight = |base: u64| (below(base + 1) + 1) as u32;
    let io_mix = [weight(30), weight(60), weight(8), weight(6), weight(4)];
    let op_mix = [
        weight(400), // io
        weight(120), // run
        weight(30),  // admin
        weight(6),   // failover
        weight(6),   // crash
        weight(20),  // restart (only when a node is down)
        weight(25),  // disk fault
        weight(25),  // net fault
        weight(8),   // settle
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0B5E_55ED);
    let mut below = |n: u64| rng.next_u64() % n.max(1);
    let device_mib = [8, 12, 16][below(3) as usize];
    // From a generator of its own, so that the seeds with disks of one size draw what they
    // drew before this parameter existed.
    let mut sizes = ChaCha8Rng::seed_from_u64(seed ^ 0x5123_D15C);
    let second_disk_mib =
        (sizes.next_u64() % 4 == 0).then(|| device_mib - 2 - 2 * (sizes.next_u64() % 2));
    SwarmParams {
        ops: if ops > 0 { ops } else { 1_500 + below(2_500) },
        device_mib,
        second_disk_mib,
        tuning: draw_tuning(seed),
        // Tiny, so that extents are evicted all the time (DRBD's minimum is 67), but at
        // least 2: a request of up to 32 blocks spans two 4 MiB extents, and with one slot it
        // could never hold both.
        al_extents: 2 + below(4) as u16,
        protocol,
        disk_timeout,
        on_io_error,
        split_brain,
        queue_depth: 1 + below(16) as usize,
        max_blocks: 1 + below(32),
        io_mix,
        op_mix,
        net_latency_ns: (high / 10, high),
        net_bandwidth: (8 << 20) + below(1 << 30),
    }
}

/// Runs one seed; a checker violation is returned, naming the checker.
pub fn run_seed(seed: u64, options: &SwarmOptions) -> Result<SwarmReport, SwarmFailure> {
    let params = draw_params(seed, options.ops);
    let _ = checker::take_failure();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut run = Run::new(seed, params, options.configure.clone());
        run.trace = options.trace;
        run.trace_block = options.trace_block;
        run.main_phase();
        run.liveness_phase();
        run.report()
    }));
    result.map_err(|panic| {
        let (checker, message) = match checker::take_failure() {
            Some(f) => (f.checker, f.message),
            None => (
                Checker::Scenario,
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into()),
            ),
        };
        SwarmFailure {
            seed,
            checker,
            message,
            params: Box::new(params),
        }
    })
}

// ---- data patterns ------------------------------------------------------------------------

/// The content of one block written with `tag` (0: zeros). Every 8-byte word differs, so a
/// torn or misplaced sector never passes for another block's.
fn block_data(tag: u64, out: &mut Vec<u8>) {
    if tag == 0 {
        out.resize(out.len() + BLOCK as usize, 0);
        return;
    }
    for i in 0..BLOCK / 8 {
        out.extend_from_slice(&(tag ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    }
}

/// The tag a block holds, if it is a whole pattern block.
fn tag_of(block: &[u8]) -> Option<u64> {
    let first = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
    let mut expected = Vec::with_capacity(BLOCK as usize);
    block_data(first, &mut expected);
    if expected == block {
        return Some(first);
    }
    block.iter().all(|&b| b == 0).then_some(0)
}

/// FNV-1a over 64-bit words.
#[derive(Clone, Copy)]
struct Hash(u64);

impl Hash {
    fn add(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01B3);
        }
    }
    fn add_bytes(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
}

// ---- the run -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write { fua: bool },
    Flush,
    Discard,
    WriteZeroes,
}

struct Req {
    node: NodeId,
    kind: Kind,
    first: u64,
    blocks: u64,
    /// Tag base of a write (block `b` gets `base | (b + 1)`); 0 for zeros.
    base: u64,
    seq: u64,
    /// The node's link epoch at submission, if it was connected then.
    link: Option<u64>,
    /// The peer's attach epoch at submission, if the peer had a disk then that this node
    /// mirrors to (a mirrored write is on the peer's disk only if the peer kept that disk
    /// until the write completed). None while the peer's disk was below Inconsistent
    /// (Diskless, Attaching, Negotiating), in its own state or in this node's view of it:
    /// DRBD mirrors a write only while its view of the peer's disk is at least Inconsistent
    /// (`drbd_should_do_remote`), and completes a write it did not mirror on the local disk
    /// alone, also while still connected. So a disk that the peer attached while the write
    /// was in flight may lack it (swarm seed 496: the peer attached while connected, its
    /// handshake failed on split brain, and writes completed meanwhile never reached it).
    peer_attach: Option<u64>,
    /// The same for the submitting node's own disk: a write submitted without a usable local
    /// disk goes to the peer alone, even if a disk attaches before it completes (swarm seeds
    /// 1543, 2857: a diskless Primary's write, then its old disk attached).
    local_attach: Option<u64>,
    /// The submitting node's data generation at submission (see `Run::data_generation`).
    data_generation: u64,
    /// The reading node's view at submission.
    expected: Vec<Option<u64>>,
}

/// What marks a watched block on a node (`--block`): its bit or extent in memory (None
/// without meta-data), its bit in the durable bitmap, and whether the durable superblock
/// says MDF_PRIMARY_IND (a crash then replays the activity log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockMarks {
    marked: Option<bool>,
    durable_bit: bool,
    durable_primary_ind: Option<bool>,
}

/// An acknowledged write not yet durable on a node: (sequence, the node's attach epoch, the
/// writing node, the writer's link epoch it was mirrored on: see `Run::volatile`).
type VolatileWrite = (u64, u64, usize, Option<u64>);

struct PendingCommand {
    cmd: AdminCommand,
    /// The node's role when the command was issued.
    role: Role,
}

struct Run {
    c: Cluster,
    rng: ChaCha8Rng,
    params: SwarmParams,
    blocks: u64,
    counts: SwarmCounts,
    hash: Hash,
    seq: u64,
    /// Per node: the value an application reading there must get (None: unknown).
    view: [Vec<Option<u64>>; 2],
    /// Per node: acknowledged, not yet durable blocks (with the sequence of their write).
    /// (The sequence of the write and the node's attach epoch then: a flush makes durable
    /// only what the current attach wrote; a flush while diskless flushes nothing local.)
    /// And the node whose request wrote it: a flush on the peer covers only what it mirrored.
    /// And, for a write mirrored from the peer, the writer's link epoch it was sent on: the
    /// writer's flush covers only what its barrier acks covered, its current link's epochs.
    volatile: [BTreeMap<u64, VolatileWrite>; 2],
    /// Per node: blocks its peer mirrored to it while its disk was not usable yet (an
    /// attaching disk, Negotiating, records them too): when the attach is done they are on
    /// that disk, or on their way, whatever it held when it went.
    mirrored_while_attaching: [BTreeSet<u64>; 2],
    /// Per node: incremented whenever its disk goes away (detach, failure).
    attach_epoch: [u64; 2],
    /// Per node: incremented whenever its view becomes the peer's (it became a resync
    /// target, or joined an UpToDate peer without a usable disk). A write submitted in an
    /// earlier generation belongs to data that was given up: when it completes, whether the
    /// resync already brought that block, or does so after it, depends on timing.
    data_generation: [u64; 2],
    /// Per node whose disk is away (detached, failed, crashed): what that disk holds, as far
    /// as the model knows. Its view meanwhile is what the peer serves; attaching the disk
    /// again brings this back (a stale disk attached while disconnected serves stale data,
    /// as in DRBD).
    on_disk: [Option<Vec<Option<u64>>>; 2],
    /// Per node that became a resync target and has not finished: its view before. Until
    /// the resync finishes, its disk holds the source's value only where both agreed.
    pre_target: [Option<Vec<Option<u64>>>; 2],
    /// Per block: the last acknowledged write (tag, promised, sequence), if known.
    acked: Vec<Option<(u64, bool, u64)>>,
    /// Per node: the sequence of the last failed local data write of a block.
    failed_write: [BTreeMap<u64, u64>; 2],
    inflight: BTreeMap<BlockRequestId, Req>,
    /// Blocks with a write in flight (reads avoid them), and blocks with a read in flight.
    busy_write: BTreeSet<u64>,
    busy_read: BTreeMap<u64, u32>,
    commands: BTreeMap<(NodeId, CommandId), PendingCommand>,
    last: [Snapshot; 2],
    /// Per node: the largest device size seen (bytes), to count grows, and the last one, to
    /// count shrinks.
    sizes: [u64; 2],
    last_sizes: [u64; 2],
    /// How much both disks grew (bytes), bounded by `MAX_GROWTH`.
    grown: u64,
    /// Per node: the snapshot before `last` (the state a promotion was granted in).
    previous: [Snapshot; 2],
    /// Per node: incremented whenever its connection is lost (a write is mirrored only if it
    /// started and completed on the same link).
    link_epoch: [u64; 2],
    down_since: [Option<u64>; 2],
    /// What the runner is doing (for failure messages).
    op: String,
    trace: bool,
    trace_block: Option<u64>,
    /// The watched block's last printed state.
    #[allow(clippy::type_complexity)]
    watched: Option<(
        Option<u64>,
        Option<u64>,
        Option<Option<u64>>,
        Option<Option<u64>>,
        Option<(u64, bool, u64)>,
        [Option<VolatileWrite>; 2],
        [(Option<u64>, Option<u64>); 2],
        [BlockMarks; 2],
    )>,
    /// The liveness phase wiped a node's meta-data (once is enough).
    wiped: bool,
    /// The node's last attach was refused because its disk holds other data than the data
    /// generation it exposed as a Primary (ERR_DATA_NOT_CURRENT).
    attach_refused: [bool; 2],
}

const NODES: [NodeId; 2] = [0, 1];

/// The attach epoch of a write a diskless node completed through its peer (no flush makes it
/// durable on the node's own disk).
const NOT_LOCAL: u64 = u64::MAX;

/// Blockwise: the value where both views know the same one, else unknown.
fn agreed(a: &[Option<u64>], b: &[Option<u64>]) -> Vec<Option<u64>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| if x == y { *x } else { None })
        .collect()
}

fn is_source(conn: Option<ConnState>) -> bool {
    matches!(
        conn,
        Some(
            ConnState::StartingSyncS
                | ConnState::WfBitMapS
                | ConnState::SyncSource
                | ConnState::PausedSyncS
        )
    )
}

fn is_target(conn: Option<ConnState>) -> bool {
    matches!(
        conn,
        Some(
            ConnState::StartingSyncT
                | ConnState::WfBitMapT
                | ConnState::WfSyncUuid
                | ConnState::SyncTarget
                | ConnState::PausedSyncT
        )
    )
}

impl Run {
    fn new(seed: u64, params: SwarmParams, configure: Option<ConfigureHook>) -> Run {
        let mut options = ClusterOptions {
            device_bytes: params.device_mib << 20,
            second_disk_bytes: params.second_disk_mib.map(|mib| mib << 20),
            protocol: params.protocol,
            split_brain: params.split_brain,
            al_extents: params.al_extents,
            net_latency_ns: params.net_latency_ns,
            net_bandwidth: params.net_bandwidth,
            disk_timeout: params.disk_timeout,
            on_io_error: params.on_io_error,
            journal: true,
            limit: Duration::from_secs(600),
            // Every digest in turn (drawn from the seed alone: nothing else moves).
            verify_alg: Some(udrbd_core::VerifyAlg::ALL[(seed % 4) as usize]),
            // Half the seeds resync by digest (drawn from the seed alone, as above).
            csums_alg: (seed / 4 % 2 == 1)
                .then(|| udrbd_core::VerifyAlg::ALL[(seed / 8 % 4) as usize]),
            ..ClusterOptions::default()
        };
        if let Some(t) = params.tuning {
            options.resync = t.resync;
            options.connect_int = t.connect_int;
            options.ping_int = t.ping_int;
            options.ping_timeout = t.ping_timeout;
            options.timeout = t.timeout;
            options.ko_count = t.ko_count;
            options.max_epoch_size = t.max_epoch_size;
            options.sndbuf_size = t.sndbuf_size;
            options.socket_buffer = t.socket_buffer;
        }
        let csums = options.csums_alg.is_some();
        let mut c = Cluster::with_configure(seed, options, configure);
        c.wait_connected(Duration::from_secs(60));
        c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
        c.wait_in_sync(Duration::from_secs(60));
        c.must(0, AdminCommand::Primary { force: false });
        let blocks = c.data_blocks();
        let last = [c.snapshot(0), c.snapshot(1)];
        let mut run = Run {
            c,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x7275_6E6E_6572),
            params,
            blocks,
            counts: SwarmCounts {
                seeds: 1,
                unequal_disks: u64::from(params.second_disk_mib.is_some()),
                tuned: u64::from(params.tuning.is_some()),
                csums: u64::from(csums),
                ..SwarmCounts::default()
            },
            hash: Hash(0xCBF2_9CE4_8422_2325),
            seq: 0,
            view: [
                vec![Some(0); blocks as usize],
                vec![Some(0); blocks as usize],
            ],
            volatile: [BTreeMap::new(), BTreeMap::new()],
            mirrored_while_attaching: [BTreeSet::new(), BTreeSet::new()],
            attach_epoch: [0, 0],
            data_generation: [0, 0],
            on_disk: [None, None],
            pre_target: [None, None],
            acked: vec![None; blocks as usize],
            failed_write: [BTreeMap::new(), BTreeMap::new()],
            inflight: BTreeMap::new(),
            busy_write: BTreeSet::new(),
            busy_read: BTreeMap::new(),
            commands: BTreeMap::new(),
            last,
            previous: last,
            sizes: [0; 2],
            last_sizes: [0; 2],
            grown: 0,
            link_epoch: [0, 0],
            down_since: [None, None],
            op: String::new(),
            trace: false,
            trace_block: None,
            watched: None,
            wiped: false,
            attach_refused: [false; 2],
        };
        run.drain();
        run
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn pick(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return i;
            }
            x -= u64::from(w);
        }
        weights.len() - 1
    }

    fn set_op(&mut self, op: String) {
        self.watch_block(&format!("before op {}: {op}", self.counts.ops));
        if self.trace {
            eprintln!(
                "t={:.6} op {}: {op}",
                self.c.now().0 as f64 / 1e9,
                self.counts.ops
            );
        }
        self.c.set_context(format!("op {}: {op}", self.counts.ops));
        self.op = op;
    }

    fn fail(&self, checker: Checker, what: &str) -> ! {
        self.c.fail_by(checker, what)
    }

    fn report(mut self) -> SwarmReport {
        for node in NODES {
            let d = self.c.disk(node);
            self.counts.torn_writes += d.stats.torn_writes;
            self.counts.lost_writes += d.stats.lost_writes;
            self.counts.io_errors += d.stats.errors;
        }
        self.counts.resets = self.c.net().stats.resets;
        self.counts.receive_pauses = self.c.receive_pauses();
        self.counts.steps = self.c.steps();
        self.counts.simulated_ns = self.c.now().0;
        for node in NODES {
            self.hash.add_bytes(self.c.data_area(node));
        }
        SwarmReport {
            seed: self.c.seed(),
            params: self.params,
            counts: self.counts,
            hash: self.hash.0,
        }
    }

    // ---- the main phase ----------------------------------------------------------------

    fn main_phase(&mut self) {
        for _ in 0..self.params.ops {
            self.counts.ops += 1;
            let op = self.pick(&self.params.op_mix.clone());
            match op {
                0 => self.io(),
                1 => {
                    let d = self.span();
                    self.set_op(format!("run {d:?}"));
                    self.c.run_for(d);
                }
                2 => self.admin(),
                3 => self.failover(),
                4 => self.crash(),
                5 => self.restart_some(),
                6 => self.disk_fault(),
                7 => self.net_fault(),
                _ => self.settle(),
            }
            self.drain();
        }
    }

    /// A random span of simulated time, mostly short.
    fn span(&mut self) -> Duration {
        match self.below(10) {
            0..=6 => Duration::from_micros(self.below(3_000)),
            7 | 8 => Duration::from_millis(self.below(300)),
            _ => Duration::from_millis(self.below(8_000)),
        }
    }

    /// The node the application uses: a Primary if there is one.
    fn primary(&self) -> Option<NodeId> {
        NODES
            .into_iter()
            .find(|&n| self.c.is_up(n) && self.last[usize::from(n)].role == Role::Primary)
    }

    fn peer(node: NodeId) -> NodeId {
        node ^ 1
    }

    // ---- IO ------------------------------------------------------------------------------

    fn io(&mut self) {
        let Some(node) = self.primary() else {
            // The application needs a Primary: the cluster manager promotes one.
            if self.commands.is_empty() {
                self.failover();
            }
            let d = Duration::from_micros(self.below(5_000));
            self.c.run_for(d);
            return;
        };
        if self.inflight.len() >= self.params.queue_depth {
            let d = Duration::from_micros(self.below(2_000));
            self.c.run_for(d);
            return;
        }
        let kind = match self.pick(&self.params.io_mix.clone()) {
            0 => Kind::Read,
            1 => Kind::Write {
                fua: self.below(10) == 0,
            },
            2 => Kind::Flush,
            3 => Kind::Discard,
            _ => Kind::WriteZeroes,
        };
        let (first, blocks) = if kind == Kind::Flush {
            (0, 0)
        } else {
            let n = 1 + self.below(self.params.max_blocks);
            let n = n.min(self.blocks);
            let first = self.below(self.blocks - n + 1);
            (first, n)
        };
        let range = first..first + blocks;
        let conflict = match kind {
            Kind::Read | Kind::Flush => range.clone().any(|b| self.busy_write.contains(&b)),
            _ => range
                .clone()
                .any(|b| self.busy_write.contains(&b) || self.busy_read.contains_key(&b)),
        };
        if conflict {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let base = seq << 24;
        let offset = first * BLOCK;
        let len = blocks * BLOCK;
        let id = BlockRequestId(0);
        let request = match kind {
            Kind::Read => BlockRequest::Read {
                id,
                offset,
                len: len as u32,
            },
            Kind::Write { fua } => {
                let mut data = Vec::with_capacity(len as usize);
                for b in range.clone() {
                    block_data(base | (b + 1), &mut data);
                }
                BlockRequest::Write {
                    id,
                    offset,
                    data: Bytes::from(data),
                    fua,
                }
            }
            Kind::Flush => BlockRequest::Flush { id },
            Kind::Discard => BlockRequest::Discard {
                id,
                offset,
                len,
                fua: false,
            },
            Kind::WriteZeroes => BlockRequest::WriteZeroes {
                id,
                offset,
                len,
                no_hole: self.below(2) == 0,
                fua: false,
            },
        };
        let expected = if kind == Kind::Read {
            self.view[usize::from(node)][first as usize..(first + blocks) as usize].to_vec()
        } else {
            Vec::new()
        };
        match kind {
            Kind::Read => {
                for b in range.clone() {
                    *self.busy_read.entry(b).or_insert(0) += 1;
                }
            }
            Kind::Flush => {}
            _ => self.busy_write.extend(range.clone()),
        }
        self.set_op(format!("{kind:?} of blocks {range:?} on node {node}"));
        let id = self.c.submit(node, request);
        self.counts.requests += 1;
        self.inflight.insert(
            id,
            Req {
                node,
                kind,
                first,
                blocks,
                base: if matches!(kind, Kind::Write { .. }) {
                    base
                } else {
                    0
                },
                seq,
                link: is_connected(self.last[usize::from(node)].conn)
                    .then_some(self.link_epoch[usize::from(node)]),
                peer_attach: (self.last[usize::from(node)].peer_disk >= DiskState::Inconsistent
                    && self.last[usize::from(node) ^ 1].disk >= DiskState::Inconsistent)
                    .then_some(self.attach_epoch[usize::from(node) ^ 1]),
                local_attach: (self.last[usize::from(node)].disk >= DiskState::Inconsistent)
                    .then_some(self.attach_epoch[usize::from(node)]),
                data_generation: self.data_generation[usize::from(node)],
                expected,
            },
        );
    }

    fn release(&mut self, req: &Req) {
        let range = req.first..req.first + req.blocks;
        match req.kind {
            Kind::Read => {
                for b in range {
                    if let Some(n) = self.busy_read.get_mut(&b) {
                        *n -= 1;
                        if *n == 0 {
                            self.busy_read.remove(&b);
                        }
                    }
                }
            }
            Kind::Flush => {}
            _ => {
                for b in range {
                    self.busy_write.remove(&b);
                }
            }
        }
    }

    fn tag(req: &Req, block: u64) -> u64 {
        if req.base == 0 {
            0
        } else {
            req.base | (block + 1)
        }
    }

    fn on_completed(
        &mut self,
        id: BlockRequestId,
        result: Result<Option<Bytes>, BlockError>,
        ack: AckInfo,
    ) {
        let Some(req) = self.inflight.remove(&id) else {
            return;
        };
        self.release(&req);
        self.hash.add(id.0);
        self.hash.add(u64::from(result.is_ok()));
        if result.is_ok() {
            self.counts.requests_ok += 1;
        } else {
            self.counts.requests_failed += 1;
        }
        let node = usize::from(req.node);
        let peer = node ^ 1;
        match (req.kind, result) {
            (Kind::Read, Ok(data)) => {
                let data = data.unwrap_or_default();
                self.hash.add_bytes(&data);
                self.check_read(&req, &data);
            }
            (Kind::Read, Err(_)) => {}
            (Kind::Flush, Ok(_)) => {
                let epoch = self.attach_epoch[node];
                self.volatile[node].retain(|_, (s, e, _, _)| *s >= req.seq || *e != epoch);
                let link = self.link_epoch[node];
                if ack.connected && ack.peer_has_disk && req.link == Some(link) {
                    let epoch = self.attach_epoch[peer];
                    // The peer flushed before acking the epochs of this node's writes (the
                    // flush waited for those barrier acks); not for its own writes, and not
                    // for writes sent on an earlier link, whose epochs were never acked
                    // (swarm seed 1929: the peer's frozen disk held such a write when it lost
                    // power, after a flush on the next link had completed without it). Nor
                    // when the peer's disk was leaving (Failed: a detach) by then: the flush
                    // did not wait for it (swarm seed 25021: that disk, frozen, was
                    // force-detached and lost power; attached again it said UpToDate, as
                    // DRBD's does, without the write its node had acknowledged).
                    self.volatile[peer].retain(|_, (s, e, w, l)| {
                        *s >= req.seq || *e != epoch || *w != node || *l != Some(link)
                    });
                }
            }
            (Kind::Flush, Err(_)) => {}
            (kind, Ok(_)) => {
                let fua = kind == Kind::Write { fua: true };
                let attached = self.last[node].disk >= DiskState::Inconsistent
                    && req.local_attach == Some(self.attach_epoch[node]);
                // Mirrored: started and completed on one link. Started on a link that broke
                // (or completed on a link that came up meanwhile): the peer may or may not
                // have it.
                let same_link = ack.connected && req.link == Some(self.link_epoch[node]);
                let maybe_mirrored = req.link.is_some() || ack.connected;
                // A request whose local part was submitted to a disk that went before it
                // completed may have completed on that part alone, the peer having refused
                // it (P_NEG_ACK): the mark that says so went with the disk (swarm seed
                // 27050: a diskless Primary, whose disk had failed after its discard landed
                // there, while the peer was detaching).
                let lost_its_disk = req.local_attach.is_some() && !attached;
                let promised = same_link
                    && ack.protocol_c
                    && ack.primary
                    && ack.peer_up_to_date
                    && ack.conn == Some(ConnState::Connected)
                    && !lost_its_disk;
                // The completing node marks a block out of sync when the peer refused the
                // write (P_NEG_ACK): its P_STATE saying why (a detach, a failed disk) may come
                // after the neg-ack, on the other socket (swarm seed 2086). Such a write is not
                // mirrored, whatever the peer's disk state looked like.
                // A disk this node still had at the completion may be gone by the time the
                // completion is looked at (the detach ended in the same step): its bitmap,
                // which held the mark, cannot tell any more, and the peer may have refused
                // the write (swarm seed 42271: both nodes detached at once, the Primary's
                // disk with the only copy of a discard the detaching peer had neg-acked).
                let marked: Vec<bool> = (req.first..req.first + req.blocks)
                    .map(|b| self.c.block_out_of_sync(req.node, b).unwrap_or(attached))
                    .collect();
                let marked_here = |b: u64| marked[(b - req.first) as usize];
                for b in req.first..req.first + req.blocks {
                    let tag = Self::tag(&req, b);
                    let local_failed = self.failed_write[node]
                        .get(&b)
                        .is_some_and(|&s| s >= req.seq);
                    // A disk attached since the write was submitted does not have it: what
                    // this node reads now depends on which copy serves it.
                    let attached_since =
                        !attached && self.last[node].disk >= DiskState::Inconsistent;
                    // Submitted before this node took its peer's data (swarm seed 8427: a
                    // write stuck on a frozen disk while Primary completed after the node,
                    // demoted, had become the SyncTarget of a split-brain survivor).
                    let given_up = req.data_generation != self.data_generation[node];
                    self.view[node][b as usize] =
                        (!local_failed && !attached_since && !given_up).then_some(tag);
                    if !attached {
                        // Served by the peer: not on this node's own disk at all.
                        self.volatile[node].insert(b, (self.seq, NOT_LOCAL, node, None));
                        // A Negotiating disk (attached while connected) takes writes too.
                        if self.last[node].disk == DiskState::Negotiating {
                            self.mirrored_while_attaching[node].insert(b);
                        }
                    } else if !fua {
                        // A flush covers what completed before it was submitted: the
                        // completion's sequence counts, not the submission's.
                        self.volatile[node]
                            .insert(b, (self.seq, self.attach_epoch[node], node, None));
                    }
                    if !maybe_mirrored && is_target(self.last[peer].conn) {
                        // Written here alone while the peer is already a resync target
                        // (it took this node's view when it became one): the block is out of
                        // sync here, and whether the bitmap exchange still carries it to the
                        // peer depends on timing. Unknown there.
                        self.view[peer][b as usize] = None;
                    }
                    if maybe_mirrored {
                        let peer_failed = self.failed_write[peer]
                            .get(&b)
                            .is_some_and(|&s| s >= req.seq);
                        // The peer's disk had the write if it was attached at submission and
                        // still is, and the completing node still saw it take writes: a
                        // detaching disk neg-acks and says Failed (its own state still says
                        // UpToDate until it is Diskless).
                        let peer_disk_kept = req.peer_attach == Some(self.attach_epoch[peer])
                            && self.last[peer].disk >= DiskState::Inconsistent
                            && ack.peer_has_disk;
                        self.view[peer][b as usize] = (same_link
                            && ack.protocol_c
                            && !peer_failed
                            && peer_disk_kept
                            && !marked_here(b))
                        .then_some(tag);
                        if !fua {
                            self.volatile[peer]
                                .insert(b, (self.seq, self.attach_epoch[peer], node, req.link));
                        }
                        if self.last[peer].disk < DiskState::Inconsistent {
                            self.mirrored_while_attaching[peer].insert(b);
                        }
                    }
                    self.acked[b as usize] = Some((tag, promised && !marked_here(b), req.seq));
                }
            }
            (_, Err(_)) => {
                for b in req.first..req.first + req.blocks {
                    self.view[node][b as usize] = None;
                    if ack.connected || req.link.is_some() {
                        self.view[peer][b as usize] = None;
                        // Its P_DATA may still be on the wire, and land on the peer's disk
                        // once that is attached again (a Negotiating disk takes writes; swarm
                        // seed 88449: the write failed when the peer's disk went).
                        if let Some(on_disk) = self.on_disk[peer].as_mut() {
                            on_disk[b as usize] = None;
                        }
                    }
                    self.acked[b as usize] = None;
                }
            }
        }
    }

    fn check_read(&mut self, req: &Req, data: &[u8]) {
        let node = usize::from(req.node);
        if data.len() as u64 != req.blocks * BLOCK {
            self.fail(
                Checker::Register,
                &format!(
                    "a read of {} blocks returned {} bytes",
                    req.blocks,
                    data.len()
                ),
            );
        }
        for (i, chunk) in data.chunks(BLOCK as usize).enumerate() {
            let b = req.first + i as u64;
            let (Some(then), Some(now)) = (req.expected[i], self.view[node][b as usize]) else {
                continue;
            };
            let got = tag_of(chunk);
            if got != Some(then) && got != Some(now) {
                self.fail(
                    Checker::Register,
                    &format!(
                        "node {node} read block {b}: got {got:?}, expected tag {then:#x} (or {now:#x})"
                    ),
                );
            }
        }
        self.counts.reads_checked += 1;
    }

    // ---- the journal ---------------------------------------------------------------------

    /// Applies everything the cluster journaled, in order, to the model and the checkers.
    fn drain(&mut self) {
        for entry in self.c.take_journal() {
            self.seq += 1;
            if self.trace {
                match &entry {
                    JournalEntry::Completed {
                        id,
                        node,
                        result,
                        ack,
                    } => eprintln!(
                        "    completed {id:?} on {node}: {:?} {ack:?}",
                        result.as_ref().map(|_| ())
                    ),
                    other => eprintln!("    {other:?}"),
                }
            }
            let what = self.trace_block.map(|_| match &entry {
                JournalEntry::Completed {
                    id, node, result, ..
                } => {
                    let req = self.inflight.get(id).map(|r| (r.kind, r.first, r.blocks));
                    format!("completed {id:?} on {node} {req:?}: ok {}", result.is_ok())
                }
                other => format!("{other:?}"),
            });
            match entry {
                JournalEntry::Completed {
                    id, result, ack, ..
                } => self.on_completed(id, result, ack),
                JournalEntry::State { node, snapshot } => self.on_state(node, snapshot),
                JournalEntry::DataIoError {
                    node,
                    offset,
                    len,
                    write,
                } => {
                    self.hash.add(0xE10 + u64::from(node));
                    if write {
                        let first = offset / BLOCK;
                        let end = (offset + len).div_ceil(BLOCK).min(self.blocks);
                        // A peer without a usable disk reads this node's: its view goes too.
                        // (A diskless Primary's protocol A write completes when sent; when it
                        // then fails here, its data is gone, as DRBD's "pretend" for
                        // protocol A has it: swarm seed 15501.)
                        let other = usize::from(node) ^ 1;
                        let served = self.last[other].disk < DiskState::Inconsistent;
                        for b in first..end {
                            self.failed_write[usize::from(node)].insert(b, self.seq);
                            self.view[usize::from(node)][b as usize] = None;
                            if served {
                                self.view[other][b as usize] = None;
                            }
                        }
                    }
                }
                JournalEntry::CommandDone { node, id, result } => {
                    self.on_command_done(node, id, result)
                }
            }
            if let Some(what) = what {
                self.watch_block(&what);
            }
        }
    }

    /// `--block`: prints what changed in the model's knowledge of the watched block.
    fn watch_block(&mut self, what: &str) {
        let Some(b) = self.trace_block.map(|b| b as usize) else {
            return;
        };
        let now = (
            self.view[0][b],
            self.view[1][b],
            self.on_disk[0].as_ref().map(|d| d[b]),
            self.on_disk[1].as_ref().map(|d| d[b]),
            self.acked[b],
            [0, 1].map(|n| self.volatile[n].get(&(b as u64)).copied()),
            [0, 1].map(|n: NodeId| {
                let at = b as u64 * BLOCK;
                let disk = self.c.disk_ref(n);
                (
                    tag_of(disk.current(at, BLOCK as usize)),
                    tag_of(disk.durable(at, BLOCK as usize)),
                )
            }),
            [0, 1].map(|n: NodeId| BlockMarks {
                marked: self.c.block_marked(n, b as u64),
                durable_bit: self.c.durable_bitmap_bit(n, b as u64),
                durable_primary_ind: self.c.durable_primary_ind(n),
            }),
        );
        if self.watched != Some(now) {
            eprintln!(
                "t={:.6} block {b}: view {:x?} {:x?} on_disk {:x?} {:x?} acked {:x?} volatile {:?} disks (current, durable) {:x?} marks {:?}  <- {what}",
                self.c.now().0 as f64 / 1e9,
                now.0,
                now.1,
                now.2,
                now.3,
                now.4,
                now.5,
                now.6,
                now.7,
            );
            self.watched = Some(now);
        }
    }

    /// What node `i`'s own disk holds as far as the model knows, while it is attached: its
    /// view, except blocks not yet durable (a detach does not flush them; a crash may lose
    /// them), blocks a write in flight may still change (an abandoned write can land late),
    /// and blocks an unfinished resync has not brought.
    fn disk_content(&self, i: usize) -> Vec<Option<u64>> {
        let mut content = self.settled_view(i);
        for b in self.volatile[i].keys() {
            content[*b as usize] = None;
        }
        for req in self.inflight.values() {
            if !matches!(req.kind, Kind::Read | Kind::Flush) {
                for b in req.first..req.first + req.blocks {
                    content[b as usize] = None;
                }
            }
        }
        content
    }

    /// Node `i`'s view, except where a resync to it never finished: there, only what both
    /// its views (before and since the resync began) agreed on.
    fn settled_view(&self, i: usize) -> Vec<Option<u64>> {
        match &self.pre_target[i] {
            Some(before) => agreed(before, &self.view[i]),
            None => self.view[i].clone(),
        }
    }

    /// A Negotiating disk goes (failure, crash) before its handshake: what it holds is what it
    /// held when it went before, without the blocks written to it since or still in flight
    /// (swarm seed 6841: a crash while Negotiating).
    fn negotiating_disk_goes(&mut self, i: usize) {
        let mut content = self.negotiating_disk(i);
        for req in self.inflight.values() {
            if !matches!(req.kind, Kind::Read | Kind::Flush) {
                for b in req.first..req.first + req.blocks {
                    content[b as usize] = None;
                }
            }
        }
        self.on_disk[i] = Some(content);
        self.mirrored_while_attaching[i].clear();
    }

    /// What the disk of node `i`, Negotiating, holds as far as the model knows: what it held
    /// when it went, except the blocks written to it since.
    fn negotiating_disk(&self, i: usize) -> Vec<Option<u64>> {
        let mut view = self.on_disk[i]
            .clone()
            .unwrap_or_else(|| vec![None; self.blocks as usize]);
        for &b in &self.mirrored_while_attaching[i] {
            view[b as usize] = None;
        }
        view
    }

    fn on_state(&mut self, node: NodeId, s: Snapshot) {
        let i = usize::from(node);
        if self.c.is_up(node) {
            let status = self.c.status(node);
            let size = status.size_bytes;
            if self.grown > 0 && size > self.sizes[i] && self.sizes[i] != 0 {
                self.counts.grows += 1;
            }
            if status.user_size_sect != 0 && size != 0 && size < self.last_sizes[i] {
                self.counts.shrinks += 1;
            }
            if size != 0 && size < self.last_sizes[i] {
                // What lay past the new end is gone (DRBD's drbd_bm_resize drops its bits;
                // a grow later resyncs the part from whichever node is the source then):
                // every copy of those blocks is unknown, and no write to them is promised
                // any more (swarm seed 340, once `resize --size` shrank devices).
                self.forget_blocks_from(size.div_ceil(BLOCK));
            }
            self.sizes[i] = self.sizes[i].max(size);
            if size != 0 {
                self.last_sizes[i] = size;
            }
        }
        let before = self.last[i];
        self.previous[i] = before;
        self.last[i] = s;
        if is_connected(before.conn) && !is_connected(s.conn) {
            self.link_epoch[i] += 1;
            if self.pre_target[i].is_some() {
                // A resync target cut off before its resync finished serves what its disk
                // holds: an Inconsistent disk reads its blocks in sync locally (DRBD's
                // drbd_may_do_local_read), and a block the source changed may be in sync
                // in this node's bitmap if the source's bits never arrived (swarm seed
                // 37780: cut off in WFBitMapT, it read its own value, not the source's).
                self.view[i] = self.settled_view(i);
            }
        }
        if before.disk == DiskState::Negotiating && s.disk < DiskState::Negotiating {
            self.negotiating_disk_goes(i);
            self.attach_epoch[i] += 1;
        }
        if before.disk >= DiskState::Inconsistent && s.disk < DiskState::Inconsistent {
            self.on_disk[i] = Some(self.disk_content(i));
            self.attach_epoch[i] += 1;
            self.mirrored_while_attaching[i].clear();
        }
        if before.disk < DiskState::Inconsistent && s.disk >= DiskState::Inconsistent {
            // The node's own disk is back: reads are served from it again. What it wrote
            // through the peer meanwhile is not on it (a resync from the peer, if one
            // follows, brings the peer's view).
            self.volatile[i].retain(|_, (_, e, _, _)| *e != NOT_LOCAL);
            self.view[i] = self.on_disk[i]
                .take()
                .unwrap_or_else(|| vec![None; self.blocks as usize]);
            // Writes the peer mirrored to this disk while it was attaching are on it, or on
            // their way, whatever it held when it went (swarm seeds 26375, 58490: protocol A
            // writes, one with FUA, landed just after the attach).
            for b in std::mem::take(&mut self.mirrored_while_attaching[i]) {
                self.view[i][b as usize] = None;
            }
        }
        self.hash.add(
            u64::from(node)
                | (s.role as u64) << 8
                | (s.disk as u64) << 16
                | (s.conn.map_or(99, |c| c as u64)) << 24
                | (s.peer_role as u64) << 32
                | (s.peer_disk as u64) << 40,
        );
        // A resync target (or a node without a usable disk that connects) takes the source's
        // data: the data generation changes. "Without a usable disk" is every disk state
        // below Inconsistent, not only Diskless: DRBD serves IO locally only with a local
        // reference (get_ldev: disk >= Inconsistent), so a node that is Attaching (reading
        // its meta-data), Failed or Negotiating reads from its peer too (swarm seed 317: a
        // diskless Primary connected while its attach was under way, and read the peer's
        // data).
        let becomes_target = is_target(s.conn) && !is_target(before.conn);
        let diskless_joins = s.disk < DiskState::Inconsistent
            && is_connected(s.conn)
            && s.peer_disk == DiskState::UpToDate
            && !(before.disk < DiskState::Inconsistent
                && is_connected(before.conn)
                && before.peer_disk == DiskState::UpToDate);
        if becomes_target {
            let before_resync = match self.pre_target[i].take() {
                // An unfinished resync before: its disk is known only where both agreed.
                Some(older) => agreed(&older, &self.view[i]),
                None => self.view[i].clone(),
            };
            self.pre_target[i] = Some(before_resync);
        }
        if becomes_target || diskless_joins {
            // The source's data: where its own resync never finished, what both of its views
            // agreed on (see `becomes_source` below; its state change may come after this
            // one: swarm seeds 26716, 38552). A source still Negotiating (its attach waits
            // for the handshake this node just ran) reads from this node, but its disk is
            // the source: what that disk held when it went, without the blocks written to it
            // since.
            self.view[i] = if becomes_target && self.last[i ^ 1].disk == DiskState::Negotiating {
                self.negotiating_disk(i ^ 1)
            } else {
                self.settled_view(i ^ 1)
            };
            self.data_generation[i] += 1;
            // A write still in flight on the source may reach this node through the resync:
            // the source's resync read of the block waits for the write's local part, and
            // then carries the new data, mirrored or not (swarm seed 47718: submitted while
            // the link was in WFReportParams, not mirrored, its local part landed just before
            // the resync read; the write completed after the link broke again). Unknown here.
            if becomes_target {
                // A resync covers the device only: past a device a user size shrank, this
                // node keeps what it had, which may be anything (swarm seed 4878).
                let device = [node, node ^ 1]
                    .iter()
                    .filter(|&&n| self.c.is_up(n))
                    .map(|&n| self.c.status(n).size_bytes)
                    .min()
                    .unwrap_or(0);
                for b in device.div_ceil(BLOCK)..self.blocks {
                    self.view[i][b as usize] = None;
                }
                let source = node ^ 1;
                for req in self.inflight.values() {
                    if req.node == source && !matches!(req.kind, Kind::Read | Kind::Flush) {
                        for b in req.first..req.first + req.blocks {
                            self.view[i][b as usize] = None;
                        }
                    }
                }
            }
        }
        // A resync target's resync finished when its disk is UpToDate, not when it is back
        // to Connected: DRBD also aborts a resync back to Connected when the source's disk
        // goes (detach, failure), and the target stays Inconsistent with what it had got so
        // far (swarm seeds 45, 479: the aborted target's disk was taken for the source's,
        // then served stale data after an attach whose Inconsistent flag never reached it).
        // A target whose resync never finished that becomes a resync source (its disk made
        // UpToDate, as DRBD's sanitize_state does for a SyncSource) serves what its disk
        // holds: the source's value only where both agreed (swarm seed 6530: a split-brain
        // victim whose resync aborted before it began, later chosen as source).
        let becomes_source = is_source(s.conn) && !is_source(before.conn);
        if becomes_source && let Some(older) = self.pre_target[i].take() {
            self.view[i] = agreed(&older, &self.view[i]);
        }
        if self.pre_target[i].is_some() && !is_target(s.conn) && s.disk == DiskState::UpToDate {
            self.counts.resyncs += 1;
            self.pre_target[i] = None;
        }
        if s.disk == DiskState::Failed && before.disk != DiskState::Failed {
            self.counts.disk_failures += 1;
        }
        if s.conn == Some(ConnState::PausedSyncT) && before.conn != Some(ConnState::PausedSyncT) {
            self.counts.sync_pauses += 1;
        }
        if s.conn == Some(ConnState::VerifyS) && before.conn != Some(ConnState::VerifyS) {
            self.counts.verifies += 1;
        }
    }

    fn on_command_done(&mut self, node: NodeId, id: CommandId, result: Result<(), CommandError>) {
        let Some(pending) = self.commands.remove(&(node, id)) else {
            return;
        };
        self.hash.add(u64::from(result.is_ok()));
        if matches!(pending.cmd, AdminCommand::Attach(_)) {
            self.attach_refused[usize::from(node)] =
                matches!(result, Err(CommandError::DataNotCurrent { .. }));
        }
        if result.is_err() {
            // A refusal is DRBD's answer, not a failure: the checkers judge outcomes.
            self.counts.commands_refused += 1;
            return;
        }
        if pending.cmd == AdminCommand::SuspendIo {
            self.counts.io_suspends += 1;
        }
        if pending.cmd == (AdminCommand::Primary { force: false }) {
            // (5) A promotion DRBD grants: UpToDate data here or at a connected peer, and no
            // connected Primary peer. `last` is the state before the promotion took effect.
            if pending.role == Role::Primary {
                return; // already Primary: a no-op, as in DRBD
            }
            // The state in which the role changed (the journal reports the state change
            // before the command's completion).
            let i = usize::from(node);
            let s = if self.last[i].role == Role::Primary {
                self.previous[i]
            } else {
                self.last[i]
            };
            let up_to_date = s.disk == DiskState::UpToDate
                || (is_connected(s.conn) && s.peer_disk == DiskState::UpToDate);
            if !up_to_date {
                self.fail(
                    Checker::Primaries,
                    &format!("node {node} was promoted without UpToDate data: {s:?}"),
                );
            }
            if is_connected(s.conn) && s.peer_role == Role::Primary {
                self.fail(
                    Checker::Primaries,
                    &format!("node {node} was promoted while its connected peer is Primary"),
                );
            }
            let other = Self::peer(node);
            if !self.c.is_up(other) || !is_connected(s.conn) {
                self.counts.failovers += 1;
            }
        }
    }

    // ---- admin ---------------------------------------------------------------------------

    fn attach_cmd(&self, node: NodeId) -> AdminCommand {
        self.c.attach_command_of(node)
    }

    fn start(&mut self, node: NodeId, cmd: AdminCommand) {
        if !self.c.is_up(node) {
            return;
        }
        self.set_op(format!("{cmd:?} on node {node}"));
        self.counts.commands += 1;
        let role = self.last[usize::from(node)].role;
        let id = self.c.start_command(node, cmd.clone());
        self.commands
            .insert((node, id), PendingCommand { cmd, role });
    }

    fn admin(&mut self) {
        let node = self.below(2) as NodeId;
        let cmd = match self.below(15) {
            0 | 1 => AdminCommand::Primary { force: false },
            2 | 3 => AdminCommand::Secondary,
            4 | 5 => AdminCommand::Connect {
                discard_my_data: false,
            },
            6 => AdminCommand::Disconnect,
            7 => AdminCommand::Detach { force: false },
            8 => AdminCommand::Detach { force: true },
            9 | 10 => self.attach_cmd(node),
            11 => AdminCommand::Invalidate,
            12 => match self.below(5) {
                0 => AdminCommand::InvalidateRemote,
                1 => AdminCommand::NewCurrentUuid {
                    clear_bitmap: false,
                },
                2 => AdminCommand::Outdate,
                // Both disks grow (an lvextend on both nodes), then `resize` on one: the
                // meta-data moves, and, connected, the device grows and resyncs its new
                // part. A node whose meta-data did not move yet (down, StandAlone, the
                // resize refused or cut off) moves it at its next resize or peer's grow.
                // `resize --size`: the device shrinks to a user size of at least half the
                // workload's blocks, or (a third of the time) grows back without one. The
                // liveness phase takes every user size away again.
                3 => {
                    let size = if self.below(3) == 0 {
                        0
                    } else {
                        let blocks = self.blocks / 2 + self.below(self.blocks / 2 + 1);
                        blocks.max(1) * BLOCK / 512
                    };
                    self.set_op(format!("resize --size {size} sectors on node {node}"));
                    AdminCommand::Resize {
                        assume_peer_has_space: false,
                        assume_clean: false,
                        size_sect: Some(size),
                    }
                }
                _ if self.grown < MAX_GROWTH => {
                    let bytes = (1 + self.below(4)) << 20;
                    self.grown += bytes;
                    self.set_op(format!("both disks grow by {bytes} bytes"));
                    self.c.grow_disks(bytes);
                    AdminCommand::Resize {
                        assume_peer_has_space: false,
                        assume_clean: false,
                        size_sect: None,
                    }
                }
                _ => AdminCommand::Resize {
                    assume_peer_has_space: false,
                    assume_clean: false,
                    size_sect: None,
                },
            },
            13 => AdminCommand::Connect {
                discard_my_data: self.below(4) == 0,
            },
            // A resync paused, or application IO held, for a while: the liveness phase
            // resumes them. An online verify, from where the last one stopped or from a
            // random block, to the end or a random stop.
            _ => match self.below(5) {
                0 => AdminCommand::PauseSync,
                1 => AdminCommand::ResumeSync,
                2 => AdminCommand::SuspendIo,
                3 => AdminCommand::ResumeIo,
                _ => {
                    let sectors = self.params.device_mib << 11;
                    AdminCommand::Verify {
                        start_sector: (self.below(2) == 0).then(|| self.below(sectors)),
                        stop_sector: (self.below(2) == 0).then(|| self.below(sectors)),
                    }
                }
            },
        };
        self.start(node, cmd);
    }

    /// Promotes the node that is not Primary (often while the old Primary lives, cut off).
    fn failover(&mut self) {
        let candidate = match self.primary() {
            Some(p) => Self::peer(p),
            None => self.below(2) as NodeId,
        };
        if !self.c.is_up(candidate) {
            return;
        }
        if self.below(2) == 0
            && let Some(p) = self.primary()
            && is_connected(self.last[usize::from(p)].conn)
        {
            // A switchover: demote first (the promotion is refused until the peer sees it).
            self.start(p, AdminCommand::Secondary);
        }
        self.start(candidate, AdminCommand::Primary { force: false });
    }

    // ---- crashes -------------------------------------------------------------------------

    fn crash(&mut self) {
        let node = self.below(2) as NodeId;
        if !self.c.is_up(node) {
            return;
        }
        self.set_op(format!("crash of node {node}"));
        self.drain();
        self.check_durability(Self::peer(node));
        self.c.crash(node);
        self.counts.crashes += 1;
        let i = usize::from(node);
        // Acknowledged writes that were not durable may be gone, torn, or there.
        if self.last[i].disk >= DiskState::Inconsistent {
            self.on_disk[i] = Some(self.disk_content(i));
        } else if self.last[i].disk == DiskState::Negotiating {
            self.negotiating_disk_goes(i);
        }
        self.pre_target[i] = None;
        for (b, _) in std::mem::take(&mut self.volatile[i]) {
            self.view[i][b as usize] = None;
        }
        self.forget_requests_of(node);
        self.commands.retain(|(n, _), _| *n != node);
        self.down_since[i] = Some(self.counts.ops);
        // The crash ends its link as a disconnect does: a link after the restart is another
        // one (swarm seed 77191: a write mirrored before the crash counted as covered by a
        // flush on the next link, which had the same number).
        if is_connected(self.last[i].conn) {
            self.link_epoch[i] += 1;
        }
        self.last[i] = Snapshot {
            role: Role::Secondary,
            disk: DiskState::Diskless,
            conn: Some(ConnState::StandAlone),
            peer_role: Role::Unknown,
            peer_disk: DiskState::DUnknown,
        };
    }

    /// (1) Durability: the survivor holds every promised write that is its block's last.
    fn check_durability(&mut self, survivor: NodeId) {
        if !self.c.is_up(survivor) || self.c.status(survivor).disk != DiskState::UpToDate {
            return;
        }
        let s = usize::from(survivor);
        let mut expected = Vec::with_capacity(BLOCK as usize);
        let mut checked = 0;
        for b in 0..self.blocks {
            let Some((tag, true, seq)) = self.acked[b as usize] else {
                continue;
            };
            // The survivor's own copy may have gone since: it crashed itself before the write
            // was durable there, or a resync from a node that had lost it replaced it (a
            // crashed Primary resyncs its activity log to the peer, as in DRBD). Its view
            // says so.
            if self.view[s][b as usize] != Some(tag)
                || self.busy_write.contains(&b)
                || self.failed_write[s].get(&b).is_some_and(|&f| f >= seq)
            {
                continue;
            }
            expected.clear();
            block_data(tag, &mut expected);
            let at = (b * BLOCK) as usize;
            if self.c.data_area(survivor)[at..at + BLOCK as usize] != expected[..] {
                self.fail(
                    Checker::Durability,
                    &format!(
                        "survivor node {survivor} lacks block {b} (tag {tag:#x}), acknowledged under protocol C while it was Connected and UpToDate"
                    ),
                );
            }
            checked += 1;
        }
        self.counts.durable_blocks_checked += checked;
    }

    fn restart_some(&mut self) {
        let Some(node) = NODES.into_iter().find(|&n| !self.c.is_up(n)) else {
            return;
        };
        let i = usize::from(node);
        if self.down_since[i].is_some_and(|s| self.counts.ops < s + 3) {
            return;
        }
        self.restart(node);
    }

    /// Boots node `i` on its durable image, attaches and connects (`drbdadm up`).
    fn restart(&mut self, node: NodeId) {
        self.set_op(format!("restart of node {node}"));
        self.down_since[usize::from(node)] = None;
        self.c.boot(node);
        self.drain();
        let attach = self.attach_cmd(node);
        if let Err(e) = self.c.command(node, attach) {
            self.fail(
                Checker::Durability,
                &format!("node {node}: attach after a crash refused: {e}"),
            );
        }
        self.drain();
        self.start(
            node,
            AdminCommand::Connect {
                discard_my_data: false,
            },
        );
    }

    // ---- disk and network faults -----------------------------------------------------------

    fn disk_fault(&mut self) {
        let node = self.below(2) as NodeId;
        if !self.c.is_up(node) {
            return;
        }
        let choice = self.below(10);
        let area = match self.below(8) {
            0..=4 => 0,
            5 => 1,
            6 => 2,
            _ => 3,
        };
        self.set_op(format!("disk fault {choice} (area {area}) on node {node}"));
        let faults = &mut self.c.disk(node).faults;
        match choice {
            0 | 1 => {
                if !faults.frozen {
                    faults.frozen = true;
                    self.counts.freezes += 1;
                }
            }
            2..=4 => faults.frozen = false,
            5 => {
                faults.fail_reads[area] = true;
                self.counts.error_injections += 1;
            }
            6 => {
                faults.fail_writes[area] = true;
                self.counts.error_injections += 1;
            }
            _ => {
                faults.fail_reads = [false; 4];
                faults.fail_writes = [false; 4];
            }
        }
    }

    fn net_fault(&mut self) {
        let choice = self.below(13);
        self.set_op(format!("net fault {choice}"));
        match choice {
            0 | 1 => {
                self.c.partition(0, 1);
                self.counts.partitions += 1;
            }
            2 => {
                let from = self.below(2) as NodeId;
                self.c.partition_one_way(from, from ^ 1);
                self.counts.one_way_partitions += 1;
            }
            3..=5 => self.c.heal(),
            6 | 7 => {
                let now = self.c.now();
                for conn in self.c.net().connections_between(0, 1) {
                    self.c.net().reset(now, conn);
                }
            }
            8 => {
                let conns = self.c.net().connections_between(0, 1);
                if !conns.is_empty() {
                    let conn = conns[self.below(conns.len() as u64) as usize];
                    let from = self.below(2) as NodeId;
                    self.c.net().stall(conn, from);
                    self.counts.stalls += 1;
                }
            }
            9 | 10 => {
                let high = 20_000 + self.below(20_000_000);
                self.c.net().latency = (high / 10, high);
                self.counts.net_changes += 1;
            }
            11 => {
                self.c.net().bandwidth = (1 << 20) + self.below(1 << 30);
                self.counts.net_changes += 1;
            }
            _ => {
                // Not a network fault but a node's: its clock leaps (a paused VM resumes).
                let node = self.below(2) as NodeId;
                let by = Duration::from_millis(50 + self.below(15_000));
                self.set_op(format!("clock of node {node} leaps {by:?}"));
                self.c.clock_jump(node, by);
                self.counts.clock_jumps += 1;
            }
        }
    }

    // ---- quiescence and bitmap soundness ----------------------------------------------------

    fn quiescent(&self) -> bool {
        self.inflight.is_empty()
            && NODES.iter().all(|&n| self.c.is_up(n))
            && self.c.undelivered(0, 1) == 0
            && self.c.undelivered(1, 0) == 0
            && NODES.iter().all(|&n| self.c.disk_in_flight(n) == 0)
    }

    /// Runs until quiescent (bounded); then checks bitmap soundness.
    fn settle(&mut self) {
        self.set_op("settle".into());
        let limit = Duration::from_millis(200 + self.below(3_000));
        let deadline = self.c.now().plus(limit);
        while self.c.now() < deadline {
            self.c.run_for(Duration::from_millis(5));
            self.drain();
            if self.quiescent() {
                self.check_bitmap_soundness();
                return;
            }
        }
    }

    /// (3) Wherever the replicas differ, a node has the bit set or the extent active.
    fn check_bitmap_soundness(&mut self) {
        if NODES.iter().any(|&n| self.c.block_marked(n, 0).is_none()) {
            return;
        }
        self.counts.bitmap_checks += 1;
        let (a, b) = (self.c.data_area(0), self.c.data_area(1));
        let differing: Vec<u64> = a
            .chunks(BLOCK as usize)
            .zip(b.chunks(BLOCK as usize))
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| i as u64)
            .collect();
        for block in differing {
            let marked = NODES
                .iter()
                .any(|&n| self.c.block_marked(n, block) == Some(true));
            if !marked {
                self.fail(
                    Checker::BitmapSoundness,
                    &format!(
                        "block {block} differs between the replicas, and neither node has it marked out of sync or in its activity log"
                    ),
                );
            }
        }
    }

    // ---- the liveness phase ------------------------------------------------------------------

    /// Heals everything, then demands convergence, progress and the register read-back.
    fn liveness_phase(&mut self) {
        self.set_op("liveness: heal".into());
        self.c.heal();
        let (lat, bw) = (self.params.net_latency_ns, self.params.net_bandwidth);
        self.c.net().latency = lat;
        self.c.net().bandwidth = bw;
        for node in NODES {
            if self.c.is_up(node) {
                self.c.disk(node).faults = Default::default();
            }
        }
        for node in NODES {
            if !self.c.is_up(node) {
                self.restart(node);
            }
        }
        let limit = Duration::from_secs(600);
        let deadline = self.c.now().plus(limit);
        let mut round = 0u64;
        loop {
            self.drain();
            if self.converged() {
                break;
            }
            if self.c.now() >= deadline {
                self.fail(
                    Checker::Convergence,
                    &format!(
                        "not Connected, UpToDate and in sync {limit:?} after the faults stopped ({} requests, {} commands outstanding: {:?})",
                        self.inflight.len(),
                        self.commands.len(),
                        self.commands
                            .iter()
                            .map(|((n, id), c)| (*n, *id, &c.cmd))
                            .collect::<Vec<_>>()
                    ),
                );
            }
            self.set_op(format!("liveness round {round}"));
            self.nudge(round);
            round += 1;
            self.c.run_for(Duration::from_millis(500));
        }
        self.set_op("liveness: idle".into());
        // Long enough for the lazy bitmap write-out armed by the last bit change (a resync
        // clears bits up to its end) to fire and complete: that write is due work, not stuck
        // work. With 2 s, a write-out armed 3 s before the wait began was in flight at the
        // check (swarm seed 19073).
        let writeout = self.c.options().bitmap_writeout_interval;
        self.c.run_for(writeout + Duration::from_secs(2));
        self.drain();
        self.check_idle();
        self.c.check_identical();
        self.read_back();
        if self.below(3) == 0 {
            self.verify_check();
        }
    }

    /// (4) Online verify, at the end of a third of the runs: one byte of the Secondary's
    /// disk is changed behind the replication's back; a verify of the whole device from
    /// either node must find that block, and only it, on both nodes (nothing the run left
    /// behind is taken for a difference, nothing is missed), and a reconnect from the Primary
    /// resyncs it.
    fn verify_check(&mut self) {
        let primary = self.primary().unwrap_or(0);
        let victim = Self::peer(primary);
        let block = self.below(self.blocks);
        let offset = block * BLOCK + self.below(BLOCK);
        let byte = self.c.disk(victim).current(offset, 1)[0];
        self.c.disk(victim).poke(offset, &[!byte]);
        let source = self.below(2) as NodeId;
        self.set_op(format!(
            "liveness: verify from node {source}, block {block} of node {victim} changed"
        ));
        let verify = AdminCommand::Verify {
            start_sector: Some(0),
            stop_sector: None,
        };
        if let Err(e) = self.c.command(source, verify) {
            self.fail(
                Checker::Convergence,
                &format!("verify refused on an in-sync pair: {e}"),
            );
        }
        self.c
            .run_until("the verify's end", Duration::from_secs(600), |c| {
                c.all_connected()
            });
        // The source's P_STATE (data socket) that ends the target's verify may overtake its
        // last P_OV_RESULTs (meta socket): they land in the next moments.
        self.c.run_for(Duration::from_secs(2));
        self.drain();
        for node in NODES {
            let found = self.c.status(node).out_of_sync_bytes;
            if found != BLOCK {
                self.fail(
                    Checker::Convergence,
                    &format!(
                        "the verify left {found} bytes out of sync on node {node}; block {block} alone differs"
                    ),
                );
            }
        }
        self.set_op("liveness: reconnect after the verify".into());
        self.c.must(primary, AdminCommand::Disconnect);
        self.c.must(
            primary,
            AdminCommand::Connect {
                discard_my_data: false,
            },
        );
        self.c.wait_in_sync(Duration::from_secs(600));
        self.drain();
        self.c.check_identical();
    }

    /// In sync, nothing outstanding, and no IO held by `suspend-io` (with nothing in flight
    /// a suspended pair looked converged, and the read-back's first read waited for ever:
    /// swarm seed 2768).
    fn converged(&self) -> bool {
        self.inflight.is_empty()
            && self.commands.is_empty()
            && self.c.all_in_sync()
            && NODES.iter().all(|&n| {
                !self.c.is_up(n) || {
                    let s = self.c.status(n);
                    !s.suspended_by_user
                        && s.user_size_sect == 0
                        && s.size_bytes >= self.blocks * BLOCK
                }
            })
    }

    /// What an operator does to bring the pair back: attach, connect, resolve a split brain
    /// (the Secondary, or node 1, discards its data), force a Primary when nobody has
    /// UpToDate data (every copy was invalidated, left mid-resync or failed a write under
    /// pass_on; a diskless Primary is demoted first so that its disk can attach), and wipe
    /// the meta-data of one node when the data is unrelated (DRBD's only way out: create-md).
    fn nudge(&mut self, round: u64) {
        if !self.commands.is_empty() {
            return;
        }
        let status = [self.c.status(0), self.c.status(1)];
        let error_is = |s: &crate::cluster::NodeStatus, what: &str| {
            s.peer
                .as_ref()
                .and_then(|p| p.last_error.as_deref())
                .is_some_and(|e| e.contains(what))
        };
        if !self.wiped && status.iter().any(|s| error_is(s, "Unrelated data")) {
            self.wiped = true;
            let node =
                if status[1].disk == DiskState::UpToDate && status[0].disk < DiskState::UpToDate {
                    0
                } else {
                    1
                };
            self.wipe(node);
            return;
        }
        let mut resumed = false;
        for node in NODES {
            let st = &status[usize::from(node)];
            if self.c.is_up(node) && st.peer.as_ref().is_some_and(|p| p.sync_paused_by_user) {
                // A paused resync never ends: the operator resumes it.
                self.start(node, AdminCommand::ResumeSync);
                resumed = true;
            }
            if self.c.is_up(node) && st.suspended_by_user {
                // Held IO never completes: the operator resumes it.
                self.start(node, AdminCommand::ResumeIo);
                resumed = true;
            }
        }
        if resumed {
            return;
        }
        let settled = |s: &crate::cluster::NodeStatus| {
            s.disk == DiskState::UpToDate
                && s.user_size_sect == 0
                && s.busy_with.is_none()
                && s.peer
                    .as_ref()
                    .is_some_and(|p| p.conn == ConnState::Connected)
        };
        if NODES.iter().all(|&n| self.c.is_up(n))
            && status.iter().all(settled)
            && status.iter().any(|s| s.size_bytes < self.blocks * BLOCK)
        {
            // Connected, both UpToDate, and the device smaller than both disks: a disk
            // attached while the connection was being set up is offered with no size (its
            // P_SIZES went out before it attached), so the pair kept the last agreed size,
            // as DRBD does (it sends P_SIZES after an attach only on a Connected link).
            // As a DRBD admin does, the operator runs `resize` on the Primary (promoting
            // node 0 first: two connected Secondaries refuse it) (swarm seeds 12055, 3340).
            let primary = NODES
                .into_iter()
                .find(|&n| status[usize::from(n)].role == Role::Primary);
            match primary {
                Some(node) => self.start(
                    node,
                    AdminCommand::Resize {
                        assume_peer_has_space: false,
                        assume_clean: false,
                        size_sect: None,
                    },
                ),
                None => self.start(0, AdminCommand::Primary { force: false }),
            }
            return;
        }
        if status.iter().all(|s| s.role == Role::Primary) {
            // Two Primaries never connect: the operator demotes one.
            self.start(1, AdminCommand::Secondary);
            return;
        }
        let none_up_to_date = status.iter().all(|s| s.disk != DiskState::UpToDate);
        if round > 10 && round % 10 == 6 && none_up_to_date {
            // A diskless Primary while no disk anywhere is UpToDate has no data to serve, and
            // its own disk is refused while it is Primary (ERR_DATA_NOT_CURRENT): the peer's
            // disk went Inconsistent under it, e.g. a pass_on write error on the SyncSource of
            // this Primary's resync (swarm seed 18167). As a DRBD admin must, the operator
            // demotes it; its disk then attaches, and the forced promotion below picks the
            // copy that becomes the truth.
            for node in NODES {
                let st = &status[usize::from(node)];
                if st.role == Role::Primary
                    && st.disk == DiskState::Diskless
                    && st.busy_with.is_none()
                {
                    self.start(node, AdminCommand::Secondary);
                    return;
                }
            }
        }
        let split_brain = status
            .iter()
            .any(|s| s.peer.as_ref().is_some_and(|p| p.split_brain));
        let loser = if status[1].role == Role::Primary {
            0
        } else {
            1
        };
        for node in NODES {
            let st = &status[usize::from(node)];
            let conn = st.peer.as_ref().map(|p| p.conn);
            if st.user_size_sect != 0
                && st.disk >= DiskState::Inconsistent
                && st.busy_with.is_none()
                && self.c.is_up(node)
            {
                // A user size (`resize --size`) keeps the device smaller than the workload:
                // the operator takes it away, on a node that is not connected or from either
                // node of a pair with a Primary (two connected Secondaries refuse a resize:
                // one disconnects first). A connect takes the smaller of two user sizes, so
                // both nodes lose theirs before the device grows back.
                let secondaries = conn == Some(ConnState::Connected)
                    && status.iter().all(|s| s.role == Role::Secondary);
                let cmd = if secondaries {
                    AdminCommand::Disconnect
                } else {
                    AdminCommand::Resize {
                        assume_peer_has_space: false,
                        assume_clean: false,
                        size_sect: Some(0),
                    }
                };
                self.start(node, cmd);
                continue;
            }
            if st.disk == DiskState::Diskless
                && st.busy_with.is_none()
                && conn != Some(ConnState::StandAlone)
            {
                // (A StandAlone diskless node connects first: a Primary that served its
                // peer's data attaches its own disk only while connected to the peer,
                // ERR_DATA_NOT_CURRENT.)
                let attach = self.attach_cmd(node);
                self.start(node, attach);
                continue;
            }
            if conn == Some(ConnState::StandAlone)
                && st.role == Role::Primary
                && st.disk == DiskState::Diskless
                && error_is(st, "Can only connect to data")
            {
                // A diskless Primary serves only the data generation it exposed: the peer's
                // disk holds another one (the connection was refused) and so does its own
                // (ERR_DATA_NOT_CURRENT), or it has not tried its own yet. Once both are
                // refused, nobody has that data any more: the operator demotes it, as a DRBD
                // admin must.
                let cmd = if self.attach_refused[usize::from(node)] {
                    self.attach_refused[usize::from(node)] = false;
                    AdminCommand::Secondary
                } else {
                    self.attach_cmd(node)
                };
                self.start(node, cmd);
                continue;
            }
            if conn == Some(ConnState::StandAlone)
                && st.role == Role::Primary
                && (error_is(st, "I shall become SyncTarget, but I am primary")
                    || error_is(st, "both sides have to support"))
            {
                // The handshake would make this Primary a SyncTarget (rr-conflict), or needs
                // rule 41 (a crashed primary while someone is Primary), which takes a feature
                // udrbd does not offer: as a DRBD admin must, the operator demotes it; the
                // next round connects.
                self.start(node, AdminCommand::Secondary);
                continue;
            }
            if conn == Some(ConnState::StandAlone) {
                let discard = split_brain && node == loser;
                if discard && st.role == Role::Primary {
                    self.start(node, AdminCommand::Secondary);
                    continue;
                }
                if split_brain && node == loser {
                    self.counts.split_brains += 1;
                }
                self.start(
                    node,
                    AdminCommand::Connect {
                        discard_my_data: discard,
                    },
                );
            }
        }
        // Nobody has UpToDate data: the operator forces the best copy to be the truth. What
        // it holds is whatever the interrupted resyncs left: the model forgets it.
        let attached = status.iter().all(|s| s.disk >= DiskState::Inconsistent);
        if round > 10 && round % 10 == 1 && attached && none_up_to_date {
            let node = if status[0].role == Role::Primary
                || (status[1].role != Role::Primary && status[0].disk >= status[1].disk)
            {
                0
            } else {
                1
            };
            if status[node].role == Role::Primary {
                // primary --force on a Primary is a no-op: demote first.
                self.start(node as NodeId, AdminCommand::Secondary);
                return;
            }
            self.view[node] = vec![None; self.blocks as usize];
            self.start(node as NodeId, AdminCommand::Primary { force: true });
            return;
        }
        // Connected, no resync, with blocks still out of sync (a write the peer failed, a
        // resync request that failed) or a disk that went Inconsistent in place (a read
        // error under on-io-error pass_on) next to an UpToDate one: DRBD resyncs them at
        // the next connection, so the operator reconnects.
        let connected_attached = status.iter().all(|s| {
            s.disk >= DiskState::Inconsistent
                && s.peer.as_ref().is_some_and(|p| {
                    p.conn == ConnState::Connected && p.peer_disk >= DiskState::Inconsistent
                })
        });
        let one_up_to_date = status.iter().any(|s| s.disk == DiskState::UpToDate);
        if round > 4
            && round.is_multiple_of(5)
            && connected_attached
            && one_up_to_date
            && status
                .iter()
                .any(|s| s.out_of_sync_bytes > 0 || s.disk != DiskState::UpToDate)
        {
            self.start(1, AdminCommand::Disconnect);
        }
    }

    /// Blocks from `first` on (past a shrunk device's end) may hold anything, everywhere.
    fn forget_blocks_from(&mut self, first: u64) {
        for b in first..self.blocks {
            for node in 0..2 {
                self.view[node][b as usize] = None;
                if let Some(on_disk) = self.on_disk[node].as_mut() {
                    on_disk[b as usize] = None;
                }
            }
            self.acked[b as usize] = None;
        }
    }

    /// The requests of a node that went down are lost: their blocks may hold either value.
    fn forget_requests_of(&mut self, node: NodeId) {
        let lost: Vec<BlockRequestId> = self
            .inflight
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let req = self.inflight.remove(&id).expect("in flight");
            self.release(&req);
            if !matches!(req.kind, Kind::Read | Kind::Flush) {
                for b in req.first..req.first + req.blocks {
                    self.view[0][b as usize] = None;
                    self.view[1][b as usize] = None;
                    self.acked[b as usize] = None;
                }
            }
        }
    }

    /// `down`, `create-md`, `up` on node `i`: its data will be fully synced from the peer.
    fn wipe(&mut self, node: NodeId) {
        self.set_op(format!("liveness: wipe the meta-data of node {node}"));
        self.c.crash(node);
        // Its requests in flight died with it (they used to stay counted as outstanding,
        // swarm seed 1958).
        self.forget_requests_of(node);
        self.commands.retain(|(n, _), _| *n != node);
        crate::cluster::create_md(self.c.disk(node));
        self.view[usize::from(node)] = vec![None; self.blocks as usize];
        self.on_disk[usize::from(node)] = None;
        self.pre_target[usize::from(node)] = None;
        self.restart(node);
    }

    /// (7) Once idle, nothing is outstanding anywhere.
    fn check_idle(&mut self) {
        for node in NODES {
            let st = self.c.status(node);
            let peer_busy = st.peer.as_ref().is_some_and(|p| {
                p.pending != 0
                    || p.unacked != 0
                    || p.ap_in_flight_sectors != 0
                    || p.rs_in_flight_sectors != 0
            });
            if st.upper_pending != 0
                || st.lower_pending != 0
                || st.stuck_ios != 0
                || peer_busy
                || self.c.disk_in_flight(node) != 0
            {
                self.fail(
                    Checker::Progress,
                    &format!("node {node} is idle but has work outstanding: {st:?}"),
                );
            }
        }
    }

    /// (2) The whole device reads back on a Primary as the model says.
    fn read_back(&mut self) {
        let node = match self.primary() {
            Some(p) => p,
            None => {
                self.set_op("liveness: promote node 0".into());
                if let Err(e) = self.c.command(0, AdminCommand::Primary { force: false }) {
                    self.fail(
                        Checker::Progress,
                        &format!("promotion of node 0 after convergence refused: {e}"),
                    );
                }
                self.drain();
                0
            }
        };
        self.set_op(format!("liveness: read back on node {node}"));
        let chunk = 64u64;
        let mut first = 0;
        while first < self.blocks {
            let n = chunk.min(self.blocks - first);
            let expected =
                self.view[usize::from(node)][first as usize..(first + n) as usize].to_vec();
            let id = self.c.submit_read(node, first * BLOCK, (n * BLOCK) as u32);
            let result = self.c.wait(id);
            self.drain();
            match result {
                Ok(Some(data)) => {
                    self.hash.add_bytes(&data);
                    let req = Req {
                        node,
                        kind: Kind::Read,
                        first,
                        blocks: n,
                        base: 0,
                        seq: 0,
                        link: None,
                        peer_attach: None,
                        local_attach: None,
                        data_generation: 0,
                        expected,
                    };
                    self.check_read(&req, &data);
                }
                other => self.fail(
                    Checker::Progress,
                    &format!("read-back of block {first} failed: {other:?}"),
                ),
            }
            first += n;
        }
    }
}
