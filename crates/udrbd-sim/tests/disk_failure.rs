//! Scripted two-node scenarios of local disk failures against DRBD 8.4's expected behaviour
//! (drbd-v08-facts.md §5.4): on-io-error pass_on / detach / call-local-io-error,
//! disk-timeout and `detach --force` on a frozen disk, the bitmap written on detach (and
//! the MDF_FULL_SYNC fallback), late completions of abandoned IO, and re-attach with a
//! resync from the peer. Each scenario runs over a few seeds; a failure names its seed.
//!
//! Every scenario keeps its own model of the acknowledged writes (whole 4 KiB blocks on
//! disks that start zeroed) and ends with both data areas byte-identical to it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use udrbd_core::*;
use udrbd_meta::MdFlags;
use udrbd_sim::cluster::{BLOCK, Cluster, ClusterOptions, pattern};

const SEEDS: std::ops::Range<u64> = 0..4;

/// Indexes of the areas in `Faults::fail_reads` / `fail_writes`.
const DATA: usize = 0;
const BITMAP: usize = 1;

const DISK_TIMEOUT: Duration = Duration::from_secs(3);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn primary() -> AdminCommand {
    AdminCommand::Primary { force: false }
}

fn detach(force: bool) -> AdminCommand {
    AdminCommand::Detach { force }
}

/// Asserts with the seed and the cluster's state in the message.
fn check(c: &Cluster, ok: bool, what: &str) {
    if !ok {
        c.fail(what);
    }
}

fn with_disk_timeout(_: u8, config: &mut ResourceConfig) {
    config.disk_timeout = Some(DISK_TIMEOUT);
}

fn pass_on(_: u8, config: &mut ResourceConfig) {
    config.on_io_error = OnIoError::PassOn;
}

fn call_local_io_error(_: u8, config: &mut ResourceConfig) {
    config.on_io_error = OnIoError::CallLocalIoError;
}

fn configured(configure: fn(u8, &mut ResourceConfig)) -> ClusterOptions {
    ClusterOptions {
        configure: Some(configure),
        ..ClusterOptions::default()
    }
}

/// A fresh pair, connected, made UpToDate without a resync (both data areas are zeros).
fn in_sync_pair(seed: u64, options: ClusterOptions) -> Cluster {
    let mut c = Cluster::new(seed, options);
    c.wait_connected(secs(30));
    c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
    c.wait_in_sync(secs(30));
    c
}

/// The acknowledged writes: block number → its content (the data areas start zeroed).
struct Model {
    tag: u64,
    blocks: BTreeMap<u64, Bytes>,
}

impl Model {
    fn new(seed: u64) -> Model {
        Model {
            tag: seed << 32,
            blocks: BTreeMap::new(),
        }
    }

    /// Fresh content for one block.
    fn next_data(&mut self) -> Bytes {
        self.tag += 1;
        pattern(self.tag, BLOCK as usize)
    }

    /// Writes block `block` on `node` with fresh content and waits; it must succeed.
    fn write(&mut self, c: &mut Cluster, node: u8, block: u64) -> Bytes {
        let data = self.next_data();
        let result = c.write(node, block * BLOCK, data.clone(), false);
        check(
            c,
            result.is_ok(),
            &format!("write of block {block} on node {node}: {result:?}"),
        );
        self.blocks.insert(block, data.clone());
        data
    }

    /// Submits writes of fresh content to `blocks` (distinct) without waiting.
    fn submit_writes(
        &mut self,
        c: &mut Cluster,
        node: u8,
        blocks: impl IntoIterator<Item = u64>,
    ) -> Vec<(u64, Bytes, BlockRequestId)> {
        blocks
            .into_iter()
            .map(|b| {
                let data = self.next_data();
                let id = c.submit_write(node, b * BLOCK, data.clone(), false);
                (b, data, id)
            })
            .collect()
    }

    /// Waits for submitted writes; every one must succeed (then it is in the model).
    fn wait_writes(&mut self, c: &mut Cluster, writes: &[(u64, Bytes, BlockRequestId)]) {
        for (block, data, id) in writes {
            let result = c.wait(*id);
            check(
                c,
                result == Ok(None),
                &format!("write of block {block}: {result:?}"),
            );
            self.blocks.insert(*block, data.clone());
        }
    }

    /// The data area every replica must end with.
    fn image(&self, len: usize) -> Vec<u8> {
        let mut image = vec![0u8; len];
        for (block, data) in &self.blocks {
            let at = (block * BLOCK) as usize;
            image[at..at + data.len()].copy_from_slice(data);
        }
        image
    }

    /// Node `node`'s data area equals the model.
    fn assert_disk(&self, c: &Cluster, node: u8) {
        let got = c.data_area(node);
        let want = self.image(got.len());
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            c.fail(&format!(
                "node {node}'s data area differs from the acknowledged writes at block {}",
                at as u64 / BLOCK
            ));
        }
    }

    /// Every modelled block reads back on `node` (through the engine).
    fn assert_reads(&self, c: &mut Cluster, node: u8) {
        for (block, data) in &self.blocks {
            let got = c.read(node, block * BLOCK, BLOCK as u32);
            check(
                c,
                got.as_ref() == Ok(data),
                &format!(
                    "node {node} reads block {block} back: {:?}",
                    got.map(|_| ())
                ),
            );
        }
    }
}

/// Node `node`'s disk state.
fn disk(c: &Cluster, node: u8) -> DiskState {
    c.status(node).disk
}

/// When node `node`'s disk last went Failed: the engine logs "disk Failed (reason)" as it
/// sets the state (the harness records state snapshots after each step, and Failed →
/// Diskless of a force-detach happens within one step, so the log line is the witness).
fn failed_at(c: &Cluster, node: u8) -> Option<Instant> {
    c.events(node)
        .iter()
        .rev()
        .find(
            |(_, e)| matches!(e, Event::Log { message, .. } if message.starts_with("disk Failed")),
        )
        .map(|(t, _)| *t)
}

/// The outstanding IO of node `node` returns after a thaw; nothing else changes.
fn thaw_and_drain(c: &mut Cluster, node: u8) {
    let before = c.status(node);
    c.disk(node).faults.frozen = false;
    c.run_until("the stuck IO returned", secs(2), |c| {
        c.status(node).stuck_ios == 0
    });
    let after = c.status(node);
    check(
        c,
        after.disk == DiskState::Diskless
            && after.role == before.role
            && after.io_errors == before.io_errors
            && after.disk_failure == before.disk_failure
            && after.peer.map(|p| (p.conn, p.peer_disk))
                == before.peer.map(|p| (p.conn, p.peer_disk)),
        "late completions of abandoned IO change nothing",
    );
}

/// Re-attach on `node` while connected: it becomes SyncTarget of what it missed, and both
/// replicas end identical and equal to the model.
fn reattach_and_converge(c: &mut Cluster, node: u8, m: &Model) {
    c.attach(node);
    c.wait_in_sync(secs(60));
    check(
        c,
        c.was_ever(node, ConnState::SyncTarget),
        &format!("node {node} resynced after the re-attach"),
    );
    c.assert_same_data(0, 1);
    m.assert_disk(c, 0);
    m.assert_disk(c, 1);
}

// ---- 1, 2: a frozen Primary disk: disk-timeout, detach --force ---------------------------

/// Node 0 (Primary) under a read and write load when its disk freezes. The disk is
/// force-detached (by disk-timeout or `detach --force`); every request completes without
/// error through the peer; late completions after the thaw change nothing but land on the
/// disk; attach is refused while IO is stuck, and after the thaw resyncs the node.
fn frozen_primary(seed: u64, force: bool) {
    let options = if force {
        ClusterOptions::default()
    } else {
        configured(with_disk_timeout)
    };
    let mut c = in_sync_pair(seed, options);
    c.must(0, primary());
    let mut m = Model::new(seed);
    for b in 0..16 {
        m.write(&mut c, 0, b);
    }
    c.disk(0).faults.frozen = true;
    let frozen_at = c.now();
    let reads: Vec<(u64, BlockRequestId)> = (0..8)
        .map(|b| (b, c.submit_read(0, b * BLOCK, BLOCK as u32)))
        .collect();
    let writes = m.submit_writes(&mut c, 0, 16..32);
    c.run_for(millis(500));
    check(
        &c,
        reads.iter().all(|(_, id)| c.completion(*id).is_none())
            && writes.iter().all(|(_, _, id)| c.completion(*id).is_none()),
        "nothing completes while the local disk is frozen",
    );
    if force {
        c.must(0, detach(true));
        check(
            &c,
            disk(&c, 0) == DiskState::Diskless,
            "detach --force ends at once",
        );
    } else {
        c.run_until(
            "the disk-timeout detached the frozen disk",
            DISK_TIMEOUT,
            |c| disk(c, 0) == DiskState::Diskless,
        );
        let failed_at = failed_at(&c, 0).expect("went through Failed");
        check(
            &c,
            failed_at.0 + millis(10).as_nanos() as u64
                >= frozen_at.0 + DISK_TIMEOUT.as_nanos() as u64,
            "not detached before disk-timeout",
        );
        check(
            &c,
            c.now().0 <= frozen_at.0 + (DISK_TIMEOUT + millis(500)).as_nanos() as u64,
            "detached within disk-timeout",
        );
    }
    check(&c, failed_at(&c, 0).is_some(), "Failed before Diskless");
    for (block, id) in &reads {
        let got = c.wait(*id);
        check(
            &c,
            got.as_ref() == Ok(&Some(m.blocks[block].clone())),
            &format!(
                "read of block {block} served by the peer: {:?}",
                got.map(|_| ())
            ),
        );
    }
    m.wait_writes(&mut c, &writes);
    let st = c.status(0);
    let reason = if force {
        DiskFailure::Forced
    } else {
        DiskFailure::Timeout
    };
    check(
        &c,
        st.role == Role::Primary
            && st.disk == DiskState::Diskless
            && st.disk_failure == Some(reason)
            && st.served_by_peer
            && st.stuck_ios > 0,
        &format!("a diskless Primary served by its peer with stuck IO: {st:?}"),
    );
    // IO goes on through the peer.
    for b in 32..40 {
        m.write(&mut c, 0, b);
    }
    m.assert_reads(&mut c, 0);
    // No attach while IO of the old disk is outstanding.
    let stuck = c.status(0).stuck_ios;
    let refused = c.command(0, c.attach_command());
    check(
        &c,
        refused == Err(CommandError::StuckIo { outstanding: stuck }),
        &format!("attach with {stuck} stuck IOs: {refused:?}"),
    );
    thaw_and_drain(&mut c, 0);
    for (block, data, _) in &writes {
        let at = (block * BLOCK) as usize;
        check(
            &c,
            c.data_area(0)[at..at + BLOCK as usize] == data[..],
            &format!("the late write of block {block} landed on the thawed disk"),
        );
    }
    m.write(&mut c, 0, 40);
    reattach_and_converge(&mut c, 0, &m);
    check(
        &c,
        !c.status(0).served_by_peer,
        "served locally again after the resync",
    );
    m.assert_reads(&mut c, 0);
}

#[test]
fn frozen_primary_disk_is_detached_by_disk_timeout() {
    for seed in SEEDS {
        frozen_primary(seed, false);
    }
}

#[test]
fn frozen_primary_disk_is_detached_by_detach_force() {
    for seed in SEEDS {
        frozen_primary(seed, true);
    }
}

// ---- 3: read errors under each on-io-error policy ---------------------------------------

/// Reads of blocks 0..4 on node 0 (Primary) fail locally. The application gets the right
/// data (from the peer); the bad blocks are out of sync; pass_on keeps the disk
/// (Inconsistent), detach and call-local-io-error detach it with the bits of the bad blocks
/// in the on-disk bitmap. A re-attach (while connected) resyncs them from the peer.
fn read_errors(seed: u64, policy: OnIoError) {
    let options = match policy {
        OnIoError::PassOn => configured(pass_on),
        OnIoError::Detach => ClusterOptions::default(),
        OnIoError::CallLocalIoError => configured(call_local_io_error),
    };
    let mut c = in_sync_pair(seed, options);
    c.must(0, primary());
    let mut m = Model::new(seed);
    for b in 0..16 {
        m.write(&mut c, 0, b);
    }
    // The peer confirms the writes (barrier ack): a detach marks writes it has not confirmed.
    c.flush(0).expect("flush");
    c.disk(0).faults.fail_reads[DATA] = true;
    let bad = 0..4u64;
    let reads: Vec<(u64, BlockRequestId)> = bad
        .clone()
        .map(|b| (b, c.submit_read(0, b * BLOCK, BLOCK as u32)))
        .collect();
    for (block, id) in &reads {
        let got = c.wait(*id);
        check(
            &c,
            got.as_ref() == Ok(&Some(m.blocks[block].clone())),
            &format!(
                "{policy:?}: read of bad block {block} served by the peer: {:?}",
                got.map(|_| ())
            ),
        );
    }
    if policy != OnIoError::PassOn {
        c.run_until("the disk detached", secs(5), |c| {
            disk(c, 0) == DiskState::Diskless
        });
    }
    let st = c.status(0);
    check(
        &c,
        st.io_errors >= 1 && st.role == Role::Primary && st.served_by_peer,
        &format!("{policy:?}: IO errors counted, IO served by the peer: {st:?}"),
    );
    match policy {
        OnIoError::PassOn => {
            check(
                &c,
                st.disk == DiskState::Inconsistent,
                "pass_on: the disk goes Inconsistent",
            );
            check(
                &c,
                st.out_of_sync_bytes >= bad.clone().count() as u64 * BLOCK,
                &format!(
                    "pass_on: the bad blocks are out of sync: {}",
                    st.out_of_sync_bytes
                ),
            );
            check(&c, c.handlers(0).is_empty(), "pass_on: no handler");
        }
        OnIoError::Detach | OnIoError::CallLocalIoError => {
            check(
                &c,
                st.disk_failure == Some(DiskFailure::ReadError),
                &format!("{policy:?}: failed by a read error: {:?}", st.disk_failure),
            );
            for b in bad.clone() {
                check(
                    &c,
                    c.durable_bitmap_bit(0, b),
                    &format!("{policy:?}: the bit of bad block {b} is in the on-disk bitmap"),
                );
            }
            check(
                &c,
                !c.durable_bitmap_bit(0, 15),
                "a good block's bit stays clear",
            );
            let handlers = c.handlers(0);
            if policy == OnIoError::CallLocalIoError {
                check(
                    &c,
                    handlers == ["local-io-error"],
                    &format!("the local-io-error handler ran once: {handlers:?}"),
                );
                let events = c.events(0);
                let handler = events.iter().position(|(_, e)| {
                    matches!(
                        e,
                        Event::Handler {
                            name: "local-io-error"
                        }
                    )
                });
                let failed = events.iter().position(|(_, e)| {
                    matches!(e, Event::Log { message, .. } if message.starts_with("disk Failed"))
                });
                check(
                    &c,
                    matches!((handler, failed), (Some(h), Some(f)) if h < f),
                    "the handler runs before the disk goes Failed",
                );
            } else {
                check(&c, handlers.is_empty(), "detach: no handler");
            }
        }
    }
    // Writes and reads go on.
    for b in 16..20 {
        m.write(&mut c, 0, b);
    }
    m.assert_reads(&mut c, 0);
    c.disk(0).faults.fail_reads[DATA] = false;
    if policy == OnIoError::PassOn {
        // pass_on kept the disk attached: a detach (the peer is UpToDate) and an attach.
        c.must(0, detach(false));
    }
    reattach_and_converge(&mut c, 0, &m);
    m.assert_reads(&mut c, 0);
}

#[test]
fn read_errors_pass_on() {
    for seed in SEEDS {
        read_errors(seed, OnIoError::PassOn);
    }
}

#[test]
fn read_errors_detach() {
    for seed in SEEDS {
        read_errors(seed, OnIoError::Detach);
    }
}

#[test]
fn read_errors_call_local_io_error() {
    for seed in SEEDS {
        read_errors(seed, OnIoError::CallLocalIoError);
    }
}

/// csums-alg on a SyncTarget whose disk fails every read (on-io-error pass_on keeps it
/// attached): a block it cannot read for its digest is asked for as data instead, so the
/// resync ends, with the source's data on the target. (DRBD's w_e_send_csum drops such a
/// request, and the resync asks again for as long as the read fails.)
#[test]
fn a_sync_target_that_cannot_read_a_block_for_its_digest_asks_for_the_data() {
    for seed in SEEDS {
        let options = ClusterOptions {
            configure: Some(pass_on),
            csums_alg: Some(VerifyAlg::Crc32c),
            ..ClusterOptions::default()
        };
        let mut c = in_sync_pair(seed, options);
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..16 {
            m.write(&mut c, 0, b);
        }
        c.flush(0).expect("flush");
        c.disk(1).faults.fail_reads[DATA] = true;
        c.must(1, AdminCommand::Invalidate);
        c.run_until("the resync began", secs(10), |c| {
            c.was_ever(1, ConnState::SyncTarget)
        });
        c.run_until("the resync ended", secs(60), |c| {
            c.conn(1) == Some(ConnState::Connected) && disk(c, 1) == DiskState::UpToDate
        });
        let st = c.status(1);
        check(
            &c,
            st.io_errors >= 1 && st.out_of_sync_bytes == 0,
            &format!("the target's reads failed, and it is in sync: {st:?}"),
        );
        c.disk(1).faults.fail_reads[DATA] = false;
        m.assert_disk(&c, 1);
        m.assert_reads(&mut c, 0);
    }
}

// ---- 4: write errors ----------------------------------------------------------------------

/// Writes on node 0 (Primary) fail locally: every one completes successfully (the peer has
/// it), the node detaches, nothing acknowledged is lost, and a re-attach resyncs.
#[test]
fn write_errors_on_the_primary_detach_and_lose_nothing() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..8 {
            m.write(&mut c, 0, b);
        }
        c.disk(0).faults.fail_writes[DATA] = true;
        let writes = m.submit_writes(&mut c, 0, (4..24).rev());
        m.wait_writes(&mut c, &writes);
        c.run_until("the disk detached", secs(5), |c| {
            disk(c, 0) == DiskState::Diskless
        });
        let st = c.status(0);
        check(
            &c,
            st.disk_failure == Some(DiskFailure::WriteError)
                && st.io_errors >= 1
                && st.served_by_peer,
            &format!("detached by a write error, served by the peer: {st:?}"),
        );
        for b in 24..28 {
            m.write(&mut c, 0, b);
        }
        m.assert_reads(&mut c, 0);
        m.assert_disk(&c, 1);
        c.disk(0).faults.fail_writes[DATA] = false;
        reattach_and_converge(&mut c, 0, &m);
        m.assert_reads(&mut c, 0);
    }
}

// ---- 5: the bitmap write-out of the detach fails after a read error -----------------------

/// A read error detaches node 0, and its bitmap pages cannot be written while its
/// superblock can: MDF_FULL_SYNC is set on disk, and the next attach syncs everything.
#[test]
fn failed_bitmap_write_after_read_error_sets_full_sync() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..8 {
            m.write(&mut c, 0, b);
        }
        check(
            &c,
            !c.durable_superblock(0).flags.has(MdFlags::FULL_SYNC),
            "no MDF_FULL_SYNC before",
        );
        c.disk(0).faults.fail_reads[DATA] = true;
        c.disk(0).faults.fail_writes[BITMAP] = true;
        let got = c.read(0, 2 * BLOCK, BLOCK as u32);
        check(
            &c,
            got.as_ref() == Ok(&m.blocks[&2]),
            "the read is served by the peer",
        );
        c.run_until("the disk detached", secs(5), |c| {
            disk(c, 0) == DiskState::Diskless
        });
        check(
            &c,
            !c.durable_bitmap_bit(0, 2),
            "the bad block's bit did not reach the disk",
        );
        check(
            &c,
            c.durable_superblock(0).flags.has(MdFlags::FULL_SYNC),
            "MDF_FULL_SYNC is in the durable superblock",
        );
        for b in 8..12 {
            m.write(&mut c, 0, b);
        }
        c.disk(0).faults.fail_reads[DATA] = false;
        c.disk(0).faults.fail_writes[BITMAP] = false;
        let before = c.status(0).written_kib;
        reattach_and_converge(&mut c, 0, &m);
        let resynced = c.status(0).written_kib - before;
        let data_kib = c.data_area(0).len() as u64 / 1024;
        check(
            &c,
            resynced >= data_kib * 9 / 10,
            &format!("a full sync after MDF_FULL_SYNC: {resynced} of {data_kib} KiB"),
        );
        check(
            &c,
            !c.durable_superblock(0).flags.has(MdFlags::FULL_SYNC),
            "MDF_FULL_SYNC cleared once the full sync is under way",
        );
    }
}

// ---- 6: the disk freezes during the detach's meta-data write-out -------------------------

fn with_disk_timeout_lazy_bitmap(_: u8, config: &mut ResourceConfig) {
    config.disk_timeout = Some(DISK_TIMEOUT);
    // Dirty bitmap pages stay dirty until the detach writes them.
    config.bitmap_writeout_interval = Duration::from_secs(3600);
}

/// `down` on node 0 (a disconnected Primary with dirty bitmap pages) while its disk is
/// frozen: the detach's bitmap write-out hangs until disk-timeout force-detaches; `down`
/// ends. After the thaw the late bitmap page is on disk, and node 0 comes back as the
/// SyncSource of the blocks it wrote alone.
#[test]
fn down_with_a_frozen_disk_ends_by_disk_timeout() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, configured(with_disk_timeout_lazy_bitmap));
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..4 {
            m.write(&mut c, 0, b);
        }
        c.must(0, AdminCommand::Disconnect);
        c.wait_disconnected(1, secs(30));
        // The bitmap write-out after the connection loss (and its preflush) is done.
        c.run_for(secs(1));
        let alone = 4..12u64;
        for b in alone.clone() {
            m.write(&mut c, 0, b);
        }
        check(
            &c,
            alone.clone().all(|b| !c.durable_bitmap_bit(0, b)),
            "the bitmap pages are dirty (not yet on disk)",
        );
        // The writes are durable already: the detach's meta-data write-out needs no flush
        // before it (DRBD's FLUSH|FUA), so the bitmap page itself is what the freeze holds.
        c.flush(0).expect("flush");
        c.disk(0).faults.frozen = true;
        let frozen_at = c.now();
        let id = c.start_command(0, AdminCommand::Down);
        c.run_until(
            "down finished on the frozen disk",
            DISK_TIMEOUT + millis(500),
            |c| c.command_result(0, id).is_some(),
        );
        check(
            &c,
            c.now().0 >= frozen_at.0 + DISK_TIMEOUT.as_nanos() as u64 - 10_000_000,
            "down waited for the bitmap until disk-timeout",
        );
        let st = c.status(0);
        check(
            &c,
            c.command_result(0, id) == Some(Ok(()))
                && st.disk == DiskState::Diskless
                && st.role == Role::Secondary
                && st.disk_failure == Some(DiskFailure::Timeout)
                && st.stuck_ios > 0,
            &format!("down ended Diskless through disk-timeout: {st:?}"),
        );
        thaw_and_drain(&mut c, 0);
        check(
            &c,
            alone.clone().all(|b| c.durable_bitmap_bit(0, b)),
            "the late bitmap page landed after the thaw",
        );
        c.up(0);
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 resynced the blocks node 0 wrote alone",
        );
        c.assert_same_data(0, 1);
        m.assert_disk(&c, 0);
        m.assert_disk(&c, 1);
    }
}

/// A plain detach of node 1 (Secondary) while its disk is frozen and node 0 writes: the
/// detach's meta-data writes hang; disk-timeout (`force == false`) or a following
/// `detach --force` ends it. Node 0's writes all succeed and are recorded in its bitmap;
/// node 1 re-attaches after the thaw and resyncs.
fn detach_on_frozen_secondary(seed: u64, force: bool) {
    let options = if force {
        ClusterOptions::default()
    } else {
        configured(with_disk_timeout)
    };
    let mut c = in_sync_pair(seed, options);
    c.must(0, primary());
    let mut m = Model::new(seed);
    for b in 0..8 {
        m.write(&mut c, 0, b);
    }
    c.disk(1).faults.frozen = true;
    let id = c.start_command(1, detach(false));
    let writes = m.submit_writes(&mut c, 0, 8..16);
    c.run_for(secs(1));
    check(
        &c,
        c.command_result(1, id).is_none() && disk(&c, 1) != DiskState::Diskless,
        "the detach waits for the frozen disk",
    );
    if force {
        c.must(1, detach(true));
        c.run_until("the plain detach finished", secs(1), |c| {
            c.command_result(1, id).is_some()
        });
    } else {
        c.run_until("disk-timeout ended the detach", DISK_TIMEOUT, |c| {
            c.command_result(1, id).is_some()
        });
    }
    let st = c.status(1);
    check(
        &c,
        st.disk == DiskState::Diskless && st.stuck_ios > 0,
        &format!("node 1 Diskless with stuck IO: {st:?}"),
    );
    m.wait_writes(&mut c, &writes);
    for b in 16..20 {
        m.write(&mut c, 0, b);
    }
    let oos = c.status(0).out_of_sync_bytes;
    check(
        &c,
        oos >= 12 * BLOCK,
        &format!("node 0's bitmap records the writes node 1 did not get: {oos}"),
    );
    thaw_and_drain(&mut c, 1);
    reattach_and_converge(&mut c, 1, &m);
    m.assert_reads(&mut c, 0);
}

#[test]
fn detach_on_a_frozen_disk_ends_by_disk_timeout() {
    for seed in SEEDS {
        detach_on_frozen_secondary(seed, false);
    }
}

#[test]
fn detach_on_a_frozen_disk_ends_by_detach_force() {
    for seed in SEEDS {
        detach_on_frozen_secondary(seed, true);
    }
}

// ---- 7: a stuck write lands after the detach ---------------------------------------------

/// A write of block 5 is stuck on node 0's frozen disk; `detach --force` completes it
/// (the peer has it); a newer write of the same block goes to the peer alone. After the
/// thaw the stale late write is on node 0's disk (SimDisk semantics), reads still return
/// the newest data, and the resync after the re-attach replaces the stale block.
#[test]
fn stuck_write_lands_after_force_detach_and_is_resynced() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..8 {
            m.write(&mut c, 0, b);
        }
        c.disk(0).faults.frozen = true;
        let stuck = m.submit_writes(&mut c, 0, [5]);
        c.run_for(millis(200));
        check(
            &c,
            c.completion(stuck[0].2).is_none(),
            "the write waits for the frozen disk",
        );
        c.must(0, detach(true));
        m.wait_writes(&mut c, &stuck);
        check(
            &c,
            c.status(0).stuck_ios >= 1,
            "the abandoned write is counted as stuck",
        );
        let newest = m.write(&mut c, 0, 5);
        thaw_and_drain(&mut c, 0);
        let at = (5 * BLOCK) as usize;
        check(
            &c,
            c.data_area(0)[at..at + BLOCK as usize] == stuck[0].1[..],
            "the late write landed on the disk image after the detach",
        );
        let got = c.read(0, 5 * BLOCK, BLOCK as u32);
        check(
            &c,
            got.as_ref() == Ok(&newest),
            "the diskless Primary reads the newest data from the peer",
        );
        reattach_and_converge(&mut c, 0, &m);
        m.assert_reads(&mut c, 0);
    }
}

// ---- 8: attach while old IO is stuck -----------------------------------------------------

/// After a force-detach with IO stuck on the frozen disk, attach is refused with StuckIo
/// naming the count, and changes nothing; after the thaw it succeeds and resyncs.
#[test]
fn attach_is_refused_while_io_is_stuck() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..4 {
            m.write(&mut c, 0, b);
        }
        c.disk(0).faults.frozen = true;
        let writes = m.submit_writes(&mut c, 0, 4..7);
        let read = c.submit_read(0, 0, BLOCK as u32);
        c.run_for(millis(100));
        c.must(0, detach(true));
        m.wait_writes(&mut c, &writes);
        let got = c.wait(read);
        check(
            &c,
            got == Ok(Some(m.blocks[&0].clone())),
            "the abandoned read is served by the peer",
        );
        let stuck = c.status(0).stuck_ios;
        check(
            &c,
            stuck >= 4,
            &format!("the 4 abandoned requests are stuck: {stuck}"),
        );
        for _ in 0..2 {
            let result = c.command(0, c.attach_command());
            check(
                &c,
                result == Err(CommandError::StuckIo { outstanding: stuck }),
                &format!("attach refused with StuckIo({stuck}): {result:?}"),
            );
            let message = result.map_err(|e| e.to_string()).err().unwrap_or_default();
            check(
                &c,
                message.contains(&stuck.to_string()),
                &format!("the refusal names the count: {message}"),
            );
            check(
                &c,
                disk(&c, 0) == DiskState::Diskless && c.status(0).stuck_ios == stuck,
                "a refused attach changes nothing",
            );
            c.run_for(millis(500));
        }
        m.write(&mut c, 0, 7);
        thaw_and_drain(&mut c, 0);
        reattach_and_converge(&mut c, 0, &m);
    }
}

// ---- 9: the Secondary's disk fails while the Primary writes ------------------------------

/// Node 1's (Secondary) disk freezes (with disk-timeout) or fails writes while node 0
/// writes: every write on node 0 succeeds, node 1 goes Diskless, node 0's bitmap records
/// what node 1 missed, and node 1's re-attach resyncs exactly that. A frozen disk also
/// holds the last writes before the freeze unflushed: node 1 cannot confirm them (their
/// barrier), so it reconnects instead of acking, and node 0 records them too.
fn secondary_disk_fails(seed: u64, frozen: bool) {
    let options = if frozen {
        configured(with_disk_timeout)
    } else {
        ClusterOptions::default()
    };
    let mut c = in_sync_pair(seed, options);
    c.must(0, primary());
    let mut m = Model::new(seed);
    for b in 0..8 {
        m.write(&mut c, 0, b);
    }
    if frozen {
        c.disk(1).faults.frozen = true;
    } else {
        c.disk(1).faults.fail_writes[DATA] = true;
    }
    let writes = m.submit_writes(&mut c, 0, 8..24);
    m.wait_writes(&mut c, &writes);
    c.run_until("node 1 Diskless", secs(5), |c| {
        disk(c, 1) == DiskState::Diskless
    });
    let reason = if frozen {
        DiskFailure::Timeout
    } else {
        DiskFailure::WriteError
    };
    check(
        &c,
        c.status(1).disk_failure == Some(reason),
        &format!("node 1 failed by {reason:?}"),
    );
    for b in 24..32 {
        m.write(&mut c, 0, b);
    }
    // Connected again (after node 1's reconnect, if it had unflushed writes), peer Diskless.
    c.run_until("node 0 connected to a diskless node 1", secs(10), |c| {
        c.status(0)
            .peer
            .as_ref()
            .is_some_and(|p| p.conn == ConnState::Connected && p.peer_disk == DiskState::Diskless)
    });
    let st = c.status(0);
    check(
        &c,
        st.disk == DiskState::UpToDate && !st.served_by_peer,
        &format!("node 0 goes on alone: {st:?}"),
    );
    // Blocks 8..32 node 1 missed; a frozen disk may also hold blocks 0..8 unflushed.
    let unflushed = if frozen { 8 * BLOCK } else { 0 };
    check(
        &c,
        st.out_of_sync_bytes >= 24 * BLOCK && st.out_of_sync_bytes <= 24 * BLOCK + unflushed,
        &format!(
            "node 0's bitmap holds the 24 blocks node 1 missed (and at most the {} bytes it \
             could not flush): {} bytes",
            unflushed, st.out_of_sync_bytes
        ),
    );
    if frozen {
        thaw_and_drain(&mut c, 1);
    } else {
        c.disk(1).faults.fail_writes[DATA] = false;
    }
    let before = c.status(1).written_kib;
    reattach_and_converge(&mut c, 1, &m);
    let resynced = c.status(1).written_kib - before;
    check(
        &c,
        resynced <= (24 * BLOCK + unflushed) / 1024 + 64,
        &format!("only the missed blocks are resynced: {resynced} KiB"),
    );
    m.assert_reads(&mut c, 0);
}

#[test]
fn frozen_secondary_disk_is_detached_by_disk_timeout() {
    for seed in SEEDS {
        secondary_disk_fails(seed, true);
    }
}

#[test]
fn secondary_write_errors_detach_it() {
    for seed in SEEDS {
        secondary_disk_fails(seed, false);
    }
}

// ---- a clean detach of the Secondary under load (the non-failure baseline) ---------------

/// A plain detach of node 1 while node 0 keeps writing: the writes complete promptly
/// (none waits for ko-count x timeout), node 0 records what node 1 misses, and the
/// re-attach resyncs.
#[test]
fn clean_detach_of_the_secondary_under_write_load() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        let mut m = Model::new(seed);
        for b in 0..8 {
            m.write(&mut c, 0, b);
        }
        let id = c.start_command(1, detach(false));
        let mut next = 8;
        while c.command_result(1, id).is_none() {
            let writes = m.submit_writes(&mut c, 0, next..next + 4);
            next += 4;
            let started = c.now();
            m.wait_writes(&mut c, &writes);
            check(
                &c,
                c.now().0 - started.0 < secs(1).as_nanos() as u64,
                "writes complete promptly during the detach",
            );
        }
        check(
            &c,
            c.command_result(1, id) == Some(Ok(())) && disk(&c, 1) == DiskState::Diskless,
            "the detach finished",
        );
        for b in next..next + 4 {
            m.write(&mut c, 0, b);
        }
        check(
            &c,
            c.status(0)
                .peer
                .is_some_and(|p| p.conn == ConnState::Connected),
            "still connected",
        );
        reattach_and_converge(&mut c, 1, &m);
    }
}

/// A clean `detach` of the SyncTarget in the middle of a full sync ends the resync on both
/// sides (8.4 detaches through D_FAILED, which aborts it): both go back to Connected, the
/// target's disk is released; re-attaching it (while connected) resumes from its bitmap and
/// the replicas converge.
#[test]
fn detach_of_the_sync_target_aborts_the_resync_on_both_sides() {
    for seed in SEEDS {
        let mut c = Cluster::new(
            seed,
            ClusterOptions {
                up_at_start: false,
                ..ClusterOptions::default()
            },
        );
        let len = c.data_area(0).len();
        c.disk(0).poke(0, &pattern(seed, len));
        c.disk(1).poke(0, &pattern(seed + 1000, len));
        c.up(0);
        c.up(1);
        c.wait_connected(secs(30));
        c.must(0, AdminCommand::Primary { force: true });
        c.run_until("the resync running", secs(30), |c| {
            c.conn(1) == Some(ConnState::SyncTarget) && c.status(1).written_kib > 0
        });
        c.must(1, detach(false));
        check(
            &c,
            disk(&c, 1) == DiskState::Diskless,
            "the target detached",
        );
        c.run_until("both Connected", secs(30), |c| {
            c.conn(0) == Some(ConnState::Connected) && c.conn(1) == Some(ConnState::Connected)
        });
        let left = c.status(0).out_of_sync_bytes;
        check(&c, left > 0, "the source's bitmap keeps what is left");
        c.attach(1);
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.check_identical() == 1,
            "identical after the re-attach",
        );
    }
}

/// A diskless Primary (its disk force-detached) loses its peer through a partition: IO
/// fails while there is no copy of the data; after the heal the connection comes back (a
/// diskless node sends no P_UUIDS; the handshake has nothing to sync) and the Primary serves
/// IO through the peer again, with the writes acknowledged before the partition.
#[test]
fn a_diskless_primary_reconnects_to_its_peer() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        let a = pattern(seed, BLOCK as usize);
        c.write(0, 0, a.clone(), false)
            .expect("write before the detach");
        c.must(0, detach(true));
        c.run_until("node 0 Diskless", secs(10), |c| {
            disk(c, 0) == DiskState::Diskless
        });
        let b = pattern(seed + 1, BLOCK as usize);
        c.write(0, BLOCK, b.clone(), false)
            .expect("a diskless Primary writes through the peer");
        c.partition(0, 1);
        c.run_until("the link gone", secs(60), |c| {
            c.conn(0) != Some(ConnState::Connected)
        });
        let r = c.read(0, 0, BLOCK as u32);
        check(&c, r.is_err(), "no copy reachable: EIO");
        c.heal();
        c.wait_connected(secs(60));
        let r = c.read(0, 0, BLOCK as u32);
        check(
            &c,
            r.ok() == Some(a.clone()),
            "the first write, from the peer",
        );
        let r = c.read(0, BLOCK, BLOCK as u32);
        check(
            &c,
            r.ok() == Some(b.clone()),
            "the diskless write, from the peer",
        );
        // The disk comes back: the resync brings what it missed.
        c.attach(0);
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.check_identical() == 1,
            "identical after the re-attach",
        );
    }
}

/// A diskless Primary that lost its peer attaches only the data it was serving (DRBD's
/// ERR_DATA_NOT_CURRENT): its old disk predates the writes the peer took alone, so the attach
/// is refused while disconnected; once connected again the attach resyncs what it missed.
#[test]
fn a_disconnected_diskless_primary_refuses_its_stale_disk() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary());
        c.must(0, detach(true));
        c.run_until("node 0 Diskless", secs(10), |c| {
            disk(c, 0) == DiskState::Diskless
        });
        let b = pattern(seed + 7, BLOCK as usize);
        c.write(0, 3 * BLOCK, b.clone(), false)
            .expect("a diskless Primary writes through the peer");
        c.partition(0, 1);
        c.run_until("the link gone", secs(60), |c| {
            c.conn(0) != Some(ConnState::Connected)
        });
        let cmd = c.attach_command();
        let refused = c.command(0, cmd);
        check(
            &c,
            matches!(refused, Err(CommandError::DataNotCurrent { .. })),
            &format!("attach of the stale disk refused: {refused:?}"),
        );
        check(&c, disk(&c, 0) == DiskState::Diskless, "still diskless");
        c.heal();
        c.wait_connected(secs(60));
        c.attach(0);
        c.wait_in_sync(secs(60));
        let r = c.read(0, 3 * BLOCK, BLOCK as u32);
        check(
            &c,
            r.ok() == Some(b.clone()),
            "the diskless write, now local",
        );
        check(
            &c,
            c.check_identical() == 1,
            "identical after the re-attach",
        );
    }
}

// ---- clock faults ------------------------------------------------------------------------

/// A node's clock leaps past disk-timeout while one of its writes is on the disk (a paused VM
/// resuming: DRBD's request timer then sees an old request and force-detaches, as it does).
/// The write still completes through the peer; a clock leap without IO outstanding changes
/// nothing but the ping: the pair stays (or comes back) Connected and in sync.
#[test]
fn a_clock_leap_past_disk_timeout_with_io_outstanding_detaches() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, configured(with_disk_timeout));
        c.must(0, primary());
        // Idle (nothing on the disks): a leap only makes the timers fire early.
        c.run_for(secs(1));
        check(&c, c.disk_in_flight(1) == 0, "node 1 is idle");
        c.clock_jump(1, secs(20));
        c.run_for(secs(30));
        c.wait_in_sync(secs(60));
        check(
            &c,
            disk(&c, 1) == DiskState::UpToDate,
            "an idle leap detaches nothing",
        );
        // A write on node 0's disk when node 0's clock leaps.
        c.disk(0).set_latency(2_000_000, 2_000_001);
        let write = c.submit_write(0, 0, pattern(seed, BLOCK as usize), false);
        c.run_for(millis(1));
        c.clock_jump(0, DISK_TIMEOUT + secs(1));
        c.run_until("the disk-timeout fired", secs(5), |c| {
            c.status(0).disk_failure == Some(DiskFailure::Timeout)
        });
        let result = c.wait(write);
        check(
            &c,
            result.is_ok(),
            &format!("the write completed through the peer: {result:?}"),
        );
    }
}
