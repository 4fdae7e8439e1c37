//! The mutation check (issue 6): every deliberately broken engine variant
//! ([`udrbd_core::Mutation`], selected at run time through `ResourceConfig::mutation`) is
//! caught by one of the simulator's named end-to-end checkers within the CI seed range
//! ([`SEEDS`], stopping at the first catch), and the same seeds pass with the real engine.
//!
//! A run "catches" a mutation when the cluster fails it with a message of an end-to-end
//! checker ([`Checker`]: durability, register, convergence, two Primaries, progress); a
//! violated `invariants()` or any other failure does not count (the engine's invariants are
//! relaxed where a mutation would trip them first, so that the end-to-end checkers are what
//! is tested).
//!
//! Workloads: the random pair runs of `udrbd_sim::workload` (one fault per epoch), and, where
//! a mutation needs a particular situation that the random epochs reach only rarely, a
//! randomised but seeded targeted loop built from the same [`Cluster`] API and judged by the
//! same checkers (never by an expectation about the mutation).
//!
//! | mutation | workload | expected checker | why |
//! |---|---|---|---|
//! | `AckBeforePeerAck` | random pairs | convergence or durability | a write is acknowledged (and its blocks free for the next write) while the peer has not written it: a Primary's crash loses it on the survivor, or the replicas end different |
//! | `NoBitmapWhileDisconnected` | random pairs | convergence | after a disconnect / partition / Secondary crash nothing is resynced, the replicas differ |
//! | `WriteBeforeAlTransaction` | random pairs on 16 MiB with 2 AL slots | convergence | the peer got a write the crashed Primary lost, and no AL extent or bit on the crashed node covers it: the resync after its restart misses the block |
//! | `ResyncOverwritesNewerWrite` | resync under a hot write load | convergence | the stale resync data lands after the newer application write on the SyncTarget and its bit is cleared |
//! | `ClearBitBeforeWriteAck` | resync after writes alone | convergence | the SyncSource declares the resync done (its peer UpToDate) while its last replies are still on the way: the cluster compares the replicas at that moment, and blocks the source no longer marks differ |
//! | `FlushWithoutBarrierAck` | flush, then power cut of both, failover | durability | the flush completed before the peer flushed: the peer alone comes back without writes acknowledged before the flush |
//! | `SkipBitmapWriteOnDetach` | clean detach of a Primary whose writes the peer has not confirmed, peer power cut | convergence | the bits of those writes are lost on the detach: the resync misses the blocks the peer lost |
//! | `AttachWithStuckIo` | force-detach with a slow write outstanding, re-attach | convergence (or register) | the old attach's write lands after the resync replaced the block: the replicas differ and the Primary reads stale data |
//!
//! `ClearBitBeforeWriteAck` (the SyncSource clears a bit when it sends P_RS_DATA_REPLY
//! instead of at P_RS_WRITE_ACK) loses no data in a pair: the SyncTarget keeps its own bit
//! until the resync write is durable, and the next bitmap exchange ORs it back. What it breaks
//! is the SyncSource's claim: it declares the resync done, and its peer UpToDate, before the
//! target holds the data. The cluster's convergence check at that transition
//! (`Cluster::check_resync_done`: every block the source no longer marks is identical on
//! both, except blocks an application write is changing, under protocol C) sees it.

use std::cell::Cell;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::*;
use udrbd_sim::cluster::{BLOCK, Cluster, ClusterOptions, pattern};
use udrbd_sim::net::NodeId;
use udrbd_sim::workload::{self, WorkloadOptions};

/// The CI seed range: a mutation must be caught by one of these (the search stops at the
/// first catch).
const SEEDS: Range<u64> = 0..500;

/// The simulator's end-to-end checkers, recognised by their failure messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checker {
    /// `Cluster::check_acked_writes`: an acknowledged protocol C write survives a crash.
    Durability,
    /// `Cluster::check_reads`: a block reads its last acknowledged value.
    Register,
    /// `Cluster::check_identical` / `assert_same_data`: in-sync replicas are identical.
    Convergence,
    /// Never two Primaries connected.
    TwoPrimaries,
    /// Every request, command and resync finishes within its simulated-time limit.
    Progress,
}

/// How a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// An end-to-end checker fired.
    Caught(Checker),
    /// `invariants()` (or another engine assertion) fired: does not count.
    EnginePanic,
    /// Anything else (a refused command, ...): does not count.
    Other,
}

/// Classifies a failure by the first line of its message (the cluster's `fail` format:
/// `seed N: t=..s step N: WHAT`).
fn classify(message: &str) -> Verdict {
    let what = message.lines().next().unwrap_or("");
    if what.contains("the engine panicked") {
        Verdict::EnginePanic
    } else if what.contains("durability:") {
        Verdict::Caught(Checker::Durability)
    } else if what.contains("register:") || what.contains("read on node") {
        Verdict::Caught(Checker::Register)
    } else if what.contains("replicas differ") {
        Verdict::Caught(Checker::Convergence)
    } else if what.contains("both Primary and connected") {
        Verdict::Caught(Checker::TwoPrimaries)
    } else if what.contains("did not complete within")
        || what.contains("did not finish within")
        || what.contains("not reached within")
        || what.contains("livelock")
    {
        Verdict::Caught(Checker::Progress)
    } else {
        Verdict::Other
    }
}

thread_local! {
    /// Panics of this thread are expected (a mutated run failing): not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, returning its panic message if it failed (without printing the panic).
fn failure_of(f: impl FnOnce()) -> Option<String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    let panic = result.err()?;
    Some(
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".to_string()),
    )
}

// ---- selecting the mutation through ClusterOptions::configure (a plain fn pointer) -------

fn mutate<const M: usize>(_: NodeId, config: &mut ResourceConfig) {
    config.mutation = Some(Mutation::ALL[M]);
}

const MUTATE: [fn(NodeId, &mut ResourceConfig); 8] = [
    mutate::<0>,
    mutate::<1>,
    mutate::<2>,
    mutate::<3>,
    mutate::<4>,
    mutate::<5>,
    mutate::<6>,
    mutate::<7>,
];

fn configure(m: Option<Mutation>) -> Option<fn(NodeId, &mut ResourceConfig)> {
    m.map(|m| {
        MUTATE[Mutation::ALL
            .iter()
            .position(|x| *x == m)
            .expect("a variant")]
    })
}

fn options(m: Option<Mutation>) -> ClusterOptions {
    ClusterOptions {
        configure: configure(m),
        ..ClusterOptions::default()
    }
}

// ---- workloads -----------------------------------------------------------------------------

type Workload = fn(u64, Option<Mutation>);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn primary() -> AdminCommand {
    AdminCommand::Primary { force: false }
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// A fresh pair, connected, made UpToDate without a resync, node 0 Primary.
fn primary_pair(seed: u64, options: ClusterOptions) -> Cluster {
    let mut c = Cluster::new(seed, options);
    c.wait_connected(secs(30));
    c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
    c.wait_in_sync(secs(30));
    c.must(0, primary());
    c
}

/// Waits for the pair to be in sync, then convergence and register.
fn settle(c: &mut Cluster, primary: NodeId) {
    c.wait_in_sync(secs(120));
    if c.check_identical() != 1 {
        c.fail("the pair is not comparable after settling");
    }
    c.check_reads(primary);
}

/// The random pair runs (`udrbd_sim::workload`), 8 epochs of one fault each.
fn random_pairs(seed: u64, m: Option<Mutation>) {
    workload::run(
        seed,
        WorkloadOptions {
            cluster: options(m),
            ..WorkloadOptions::default()
        },
    );
}

/// A resync under a hot write load: the Secondary is invalidated (a full resync at a
/// modest rate, about a second) while the Primary keeps a few writes in flight to a few hot
/// blocks until the resync is over; then convergence and register. Repeated.
fn resync_under_hot_writes(seed: u64, m: Option<Mutation>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xD00D);
    let mut opts = options(m);
    opts.resync.resync_rate_kib_per_sec = 8192;
    let mut c = primary_pair(seed, opts);
    for _ in 0..2 {
        c.forget_writes();
        let hot = 1 + below(&mut rng, 4);
        let base = below(&mut rng, c.data_blocks() - hot);
        let depth = 1 + below(&mut rng, 4) as usize;
        c.must(1, AdminCommand::Invalidate);
        let mut ids: Vec<BlockRequestId> = Vec::new();
        let resyncing = |c: &Cluster| {
            c.conn(1) != Some(ConnState::Connected) || c.status(1).disk != DiskState::UpToDate
        };
        while resyncing(&c) {
            let in_flight = ids.iter().filter(|id| c.completion(**id).is_none()).count();
            if in_flight < depth {
                let block = base + below(&mut rng, hot);
                let data = pattern(rng.next_u64(), BLOCK as usize);
                ids.push(c.submit_write(0, block * BLOCK, data, false));
            } else if !c.step() {
                break;
            }
        }
        for id in ids {
            if let Err(e) = c.wait(id) {
                c.fail(&format!("write {id:?} failed: {e:?}"));
            }
        }
        settle(&mut c, 0);
    }
}

/// Crashes of the Primary with FUA writes in flight into cold activity-log extents (a 16 MiB
/// device, 4 extents, 2 AL slots); the survivor takes over (durability), the crashed node
/// restarts as its SyncTarget (convergence, register); repeated with the roles swapped.
/// Every write is FUA, so what the crashed node completed is durable.
fn crash_primary_cold_extents(seed: u64, m: Option<Mutation>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA1A1);
    let opts = ClusterOptions {
        device_bytes: 16 << 20,
        al_extents: 2,
        ..options(m)
    };
    let mut c = primary_pair(seed, opts);
    let mut p: NodeId = 0;
    for _ in 0..4 {
        let s = p ^ 1;
        c.forget_writes();
        for _ in 0..1 + below(&mut rng, 12) {
            c.submit_random_write(p, 1);
        }
        c.run_for(Duration::from_micros(below(&mut rng, 4_000)));
        c.crash(p);
        c.check_acked_writes(s);
        c.wait_disconnected(s, secs(30));
        c.must(s, primary());
        c.forget_writes();
        let ids: Vec<BlockRequestId> = (0..below(&mut rng, 8))
            .map(|_| c.submit_random_write(s, 1))
            .collect();
        for id in ids {
            if let Err(e) = c.wait(id) {
                c.fail(&format!("write {id:?} failed: {e:?}"));
            }
        }
        c.restart(p);
        settle(&mut c, s);
        p = s;
    }
}

/// Writes, a flush, and at once a power cut of both nodes; the Secondary alone comes back
/// and takes over (durability and register on it), then the old Primary rejoins; repeated
/// with the roles swapped.
fn flush_then_power_cut(seed: u64, m: Option<Mutation>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xF1A5);
    let mut c = primary_pair(seed, options(m));
    let mut p: NodeId = 0;
    for _ in 0..3 {
        let s = p ^ 1;
        c.forget_writes();
        let n = 1 + below(&mut rng, 24) as usize;
        let depth = 1 + below(&mut rng, 6) as usize;
        c.random_writes(p, n, depth);
        if let Err(e) = c.flush(p) {
            c.fail(&format!("flush on node {p} failed: {e:?}"));
        }
        c.crash(p);
        c.crash(s);
        c.restart(s);
        c.must(s, primary());
        c.check_acked_writes(s);
        c.check_reads(s);
        c.restart(p);
        settle(&mut c, s);
        p = s;
    }
}

/// The Primary's writes reach the peer, but the pair is partitioned before the peer's acks
/// come back; the Primary detaches cleanly (its writes done locally, unconfirmed by the
/// peer) and the peer loses power before it flushed them or learnt anything. Once the peer is
/// back, the old Primary demotes and re-attaches its disk: only the bits its detach wrote say
/// which blocks the peer may lack, and the resync must repair them. Repeated.
/// (The first form of this workload, a Secondary serving a diskless Primary, no longer
/// depends on the detach's write: that Secondary now writes its bitmap when the Primary
/// demotes, before it drops MDF_PRIMARY_IND.)
fn detach_with_unconfirmed_writes(seed: u64, m: Option<Mutation>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xDE7A);
    let mut c = primary_pair(seed, options(m));
    for _ in 0..3 {
        c.forget_writes();
        let n = 1 + below(&mut rng, 16);
        let writes: Vec<BlockRequestId> = (0..n).map(|_| c.submit_random_write(0, 0)).collect();
        c.run_for(millis(1 + below(&mut rng, 3)));
        c.partition(0, 1);
        c.must(0, AdminCommand::Detach { force: false });
        c.crash(1);
        for id in writes {
            let _ = c.wait(id);
        }
        c.heal();
        c.restart(1);
        c.wait_connected(secs(30));
        // Equal UUIDs (the peer never learnt of the detach): the disk that was a Primary's
        // is the "crashed primary" and becomes SyncSource (rule 40); a Primary would need
        // rule 41, which takes a feature udrbd does not offer (WSAME).
        c.must(0, AdminCommand::Secondary);
        c.attach(0);
        c.wait_in_sync(secs(120));
        c.must(0, primary());
        settle(&mut c, 0);
    }
}

/// The Secondary disconnects, the Primary writes alone (a few to a few hundred blocks), the
/// Secondary reconnects and is resynced; when the SyncSource declares the resync done the
/// cluster compares the replicas (convergence). Repeated.
fn resync_after_writes_alone(seed: u64, m: Option<Mutation>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EC0);
    let mut c = primary_pair(seed, options(m));
    for _ in 0..3 {
        c.forget_writes();
        c.must(1, AdminCommand::Disconnect);
        c.wait_disconnected(0, secs(30));
        let n = 1 + below(&mut rng, 300) as usize;
        let depth = 1 + below(&mut rng, 8) as usize;
        c.random_writes(0, n, depth);
        c.must(
            1,
            AdminCommand::Connect {
                discard_my_data: false,
            },
        );
        settle(&mut c, 0);
    }
}

/// A write is slow on the Primary's disk when the disk is force-detached; the block is
/// written again (through the peer); the node re-attaches as soon as attach is accepted, is
/// resynced, and must read the newest data once the old write has returned.
fn reattach_with_slow_write(seed: u64, m: Option<Mutation>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5700);
    let mut c = primary_pair(seed, options(m));
    for _ in 0..2 {
        c.forget_writes();
        c.random_writes(0, 1 + below(&mut rng, 8) as usize, 4);
        let normal = c.disk(0).latency();
        let slow = 500_000_000 + below(&mut rng, 500_000_000);
        c.disk(0).set_latency(slow, slow + 1_000_000);
        let stuck = c.submit_random_write(0, 0);
        c.disk(0).set_latency(normal.0, normal.1);
        c.run_for(millis(below(&mut rng, 20)));
        c.must(0, AdminCommand::Detach { force: true });
        if let Err(e) = c.wait(stuck) {
            c.fail(&format!("the abandoned write failed: {e:?}"));
        }
        let (offset, _) = c.write_of(stuck).expect("modelled");
        let data = pattern(rng.next_u64(), BLOCK as usize);
        if let Err(e) = c.write(0, offset, data, false) {
            c.fail(&format!("the newer write failed: {e:?}"));
        }
        // As an administrator would: attach again until it is accepted.
        loop {
            match c.command(0, c.attach_command()) {
                Ok(()) => break,
                Err(CommandError::StuckIo { .. }) => c.run_for(millis(50)),
                Err(e) => c.fail(&format!("attach refused: {e}")),
            }
        }
        settle(&mut c, 0);
        c.run_for(secs(2));
        settle(&mut c, 0);
    }
}

// ---- the search ----------------------------------------------------------------------------

/// Runs `workload` with mutation `m` over [`SEEDS`] until an end-to-end checker catches it;
/// then runs the same seeds without the mutation, which must pass.
// The wall clock only times the search for the printout; the runs never see it.
#[allow(clippy::disallowed_methods)]
fn caught(m: Mutation, workload: Workload, name: &str) {
    let started = std::time::Instant::now();
    let mut ignored = Vec::new();
    let mut catch = None;
    for seed in SEEDS {
        let Some(message) = failure_of(|| workload(seed, Some(m))) else {
            continue;
        };
        match classify(&message) {
            Verdict::Caught(checker) => {
                catch = Some((seed, checker, message));
                break;
            }
            other => ignored.push((seed, other, message)),
        }
    }
    let Some((seed, checker, message)) = catch else {
        panic!(
            "{m:?} was not caught by any end-to-end checker over seeds {SEEDS:?} ({name}); {} other failures, the first: {:#?}",
            ignored.len(),
            ignored.iter().take(3).collect::<Vec<_>>()
        );
    };
    let mutated = started.elapsed();
    println!(
        "{m:?}: caught by {checker:?} at seed {seed} ({name}, {:.2} s; {} other failures first)\n  {}",
        mutated.as_secs_f64(),
        ignored.len(),
        message.lines().next().unwrap_or("")
    );
    // The control: the real engine passes the same seeds.
    for s in SEEDS.start..=seed {
        if let Some(message) = failure_of(|| workload(s, None)) {
            panic!("control: seed {s} fails without a mutation ({name}): {message}");
        }
    }
    println!(
        "{m:?}: control seeds {}..={seed} pass without the mutation ({:.2} s)",
        SEEDS.start,
        (started.elapsed() - mutated).as_secs_f64()
    );
}

#[test]
fn ack_before_peer_ack_is_caught() {
    caught(Mutation::AckBeforePeerAck, random_pairs, "random pairs");
}

#[test]
fn no_bitmap_while_disconnected_is_caught() {
    caught(
        Mutation::NoBitmapWhileDisconnected,
        random_pairs,
        "random pairs",
    );
}

#[test]
fn write_before_al_transaction_is_caught() {
    caught(
        Mutation::WriteBeforeAlTransaction,
        crash_primary_cold_extents,
        "Primary crashes, cold extents",
    );
}

#[test]
fn resync_overwrites_newer_write_is_caught() {
    caught(
        Mutation::ResyncOverwritesNewerWrite,
        resync_under_hot_writes,
        "resync under hot writes",
    );
}

#[test]
fn flush_without_barrier_ack_is_caught() {
    caught(
        Mutation::FlushWithoutBarrierAck,
        flush_then_power_cut,
        "flush then power cut",
    );
}

#[test]
fn skip_bitmap_write_on_detach_is_caught() {
    caught(
        Mutation::SkipBitmapWriteOnDetach,
        detach_with_unconfirmed_writes,
        "detach with unconfirmed writes",
    );
}

#[test]
fn attach_with_stuck_io_is_caught() {
    caught(
        Mutation::AttachWithStuckIo,
        reattach_with_slow_write,
        "re-attach with a slow write",
    );
}

#[test]
fn clear_bit_before_write_ack_is_caught() {
    caught(
        Mutation::ClearBitBeforeWriteAck,
        resync_after_writes_alone,
        "resync after writes alone",
    );
}
