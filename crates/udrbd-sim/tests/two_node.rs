//! Scripted two-node scenarios against DRBD 8.4's expected behaviour, each over a few seeds.
//!
//! Every scenario runs in bounded simulated time; a failure names its seed (the harness's
//! `fail`, or the `seed` in an assertion message) so it can be replayed.

use std::time::Duration;

use udrbd_core::sync_decision::AfterSb0pri;
use udrbd_core::*;
use udrbd_sim::cluster::{BLOCK, Cluster, ClusterOptions, WireProtocol, is_connected, pattern};

const SEEDS: std::ops::Range<u64> = 0..4;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn primary(force: bool) -> AdminCommand {
    AdminCommand::Primary { force }
}

fn connect(discard_my_data: bool) -> AdminCommand {
    AdminCommand::Connect { discard_my_data }
}

/// Asserts with the seed and the cluster's state in the message.
fn check(c: &Cluster, ok: bool, what: &str) {
    if !ok {
        c.fail(what);
    }
}

/// A fresh pair, connected, made UpToDate without a resync (new-current-uuid
/// --clear-bitmap: both data areas are zeros, so they are identical).
fn in_sync_pair(seed: u64, options: ClusterOptions) -> Cluster {
    let mut c = Cluster::new(seed, options);
    c.wait_connected(secs(30));
    c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
    c.wait_in_sync(secs(30));
    c
}

/// Fills node `node`'s data area with content derived from `tag` (before attach).
fn fill(c: &mut Cluster, node: u8, tag: u64) {
    let len = c.data_area(node).len();
    let data = pattern(tag, len);
    c.disk(node).poke(0, &data);
}

fn written_kib(c: &Cluster, node: u8) -> u64 {
    c.status(node).written_kib
}

fn data_bytes(c: &Cluster) -> u64 {
    c.data_area(0).len() as u64
}

// ---- bring-up --------------------------------------------------------------------------

/// Fresh disks with different content; `primary --force` on node 0 makes it the SyncSource
/// of a full sync; afterwards both are UpToDate, Connected, byte-identical.
#[test]
fn initial_full_sync_after_primary_force() {
    for seed in SEEDS {
        let mut c = Cluster::new(
            seed,
            ClusterOptions {
                up_at_start: false,
                ..ClusterOptions::default()
            },
        );
        fill(&mut c, 0, seed);
        fill(&mut c, 1, seed + 1000);
        c.up(0);
        c.up(1);
        c.wait_connected(secs(30));
        for n in 0..2 {
            let s = c.snapshot(n);
            check(
                &c,
                s.disk == DiskState::Inconsistent && s.peer_disk == DiskState::Inconsistent,
                "fresh disks are Inconsistent on both sides",
            );
        }
        c.must(0, primary(true));
        check(
            &c,
            c.status(0).disk == DiskState::UpToDate,
            "primary --force makes the disk UpToDate",
        );
        // A few writes while the sync runs.
        c.random_writes(0, 20, 4);
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(0, ConnState::SyncSource),
            "node 0 was SyncSource",
        );
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 was SyncTarget",
        );
        check(
            &c,
            c.check_identical() == 1,
            "one connected UpToDate pair compared",
        );
        check(
            &c,
            c.snapshot(0).role == Role::Primary && c.snapshot(1).role == Role::Secondary,
            "roles",
        );
        check(
            &c,
            written_kib(&c, 1) * 1024 >= data_bytes(&c) * 9 / 10,
            "a full sync writes (nearly) the whole data area on the target",
        );
    }
}

/// new-current-uuid --clear-bitmap on a fresh connected pair: both UpToDate, no resync.
#[test]
fn new_current_uuid_clear_bitmap_skips_initial_sync() {
    for seed in SEEDS {
        let mut c = Cluster::new(seed, ClusterOptions::default());
        c.wait_connected(secs(30));
        c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
        c.wait_in_sync(secs(30));
        for n in 0..2 {
            check(
                &c,
                !c.was_ever(n, ConnState::SyncSource) && !c.was_ever(n, ConnState::SyncTarget),
                "no resync",
            );
            check(&c, written_kib(&c, n) == 0, "no data written");
        }
        let (g0, g1) = (c.status(0).generation, c.status(1).generation);
        check(
            &c,
            g0.map(|g| g.0.current) == g1.map(|g| g.0.current),
            "the same current UUID on both",
        );
    }
}

// ---- replication -----------------------------------------------------------------------

/// Protocol C: a write completes after the peer wrote it, so it is on the peer's disk at
/// once; reads on the Primary return it.
#[test]
fn protocol_c_writes_are_on_the_peer_when_acknowledged() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary(false));
        let ids = c.random_writes(0, 60, 8);
        for id in &ids {
            check(&c, c.completion(*id) == Some(&Ok(None)), "write succeeded");
            check(
                &c,
                c.holds_write_or_newer(1, *id),
                "an acknowledged write is on the peer",
            );
            if !c.superseded(*id) {
                let (offset, data) = c.write_of(*id).expect("write");
                let got = c.read(0, offset, data.len() as u32);
                check(
                    &c,
                    got.as_ref() == Ok(&data),
                    "the Primary reads its write back",
                );
            }
        }
        check(&c, c.check_acked_writes(1) > 0, "promised writes verified");
        c.run_for(Duration::from_millis(100));
        c.check_identical();
    }
}

/// Failover: the Primary crashes with writes in flight; every write it acknowledged is on
/// the survivor, which is promoted and reads every one back. The crashed node comes back as
/// a SyncTarget and the pair converges.
#[test]
fn failover_after_primary_crash() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary(false));
        let mut acked = c.random_writes(0, 80, 8);
        let in_flight: Vec<BlockRequestId> = (0..6).map(|_| c.submit_random_write(0, 0)).collect();
        c.run_for(Duration::from_micros(300 + seed * 100));
        acked.extend(in_flight.iter().filter(|id| c.completion(**id).is_some()));
        c.crash(0);
        check(&c, c.check_acked_writes(1) > 0, "promised writes verified");
        c.wait_disconnected(1, secs(30));
        c.must(1, primary(false));
        // A later write of the same block (in flight at the crash) may have landed instead.
        for id in &acked {
            if c.superseded(*id) {
                continue;
            }
            let (offset, data) = c.write_of(*id).expect("write");
            let got = c.read(1, offset, data.len() as u32);
            check(
                &c,
                got.as_ref() == Ok(&data),
                &format!("acked write {id:?} reads back on the survivor"),
            );
        }
        c.restart(0);
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(0, ConnState::SyncTarget),
            "the crashed Primary resyncs",
        );
        c.check_identical();
    }
}

// ---- resync ----------------------------------------------------------------------------

/// A partition while Primary; writes go on locally and are marked out of sync; after the
/// partition heals only those blocks are resynced.
#[test]
fn partition_and_reconnect_resyncs_only_the_written_blocks() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary(false));
        c.random_writes(0, 10, 2);
        c.partition(0, 1);
        c.wait_disconnected(0, secs(30));
        c.wait_disconnected(1, secs(30));
        let blocks = 12;
        c.random_writes(0, blocks, 1);
        check(
            &c,
            c.status(0).out_of_sync_bytes >= BLOCK,
            "writes without the peer are out of sync",
        );
        let before = written_kib(&c, 1);
        c.heal();
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 was SyncTarget",
        );
        let resynced = written_kib(&c, 1) - before;
        check(
            &c,
            resynced >= 4 && resynced <= blocks as u64 * 4 + 64,
            &format!("only the written blocks are resynced: {resynced} KiB"),
        );
        for n in 0..2 {
            check(
                &c,
                c.status(n).out_of_sync_bytes == 0,
                "nothing out of sync",
            );
        }
        c.check_identical();
    }
}

fn slow_resync() -> ClusterOptions {
    let mut o = ClusterOptions {
        up_at_start: false,
        ..ClusterOptions::default()
    };
    o.resync.resync_rate_kib_per_sec = 1024;
    o
}

/// Starts an initial full sync from node 0 (different content on both) and runs it to
/// between a quarter and three quarters.
fn half_synced(seed: u64) -> Cluster {
    let mut c = Cluster::new(seed, slow_resync());
    fill(&mut c, 0, seed);
    fill(&mut c, 1, seed + 1000);
    c.up(0);
    c.up(1);
    c.wait_connected(secs(30));
    c.must(0, primary(true));
    // Half done, not a quarter: what the source still marks includes the requests in
    // flight, and a quarter done left it at 75.3% of the device, past the 3/4 by which
    // resync_interrupted_by_partition_resumes tells a resumed resync from a restarted one.
    c.run_until("the resync is half done", secs(60), |c| {
        c.status(1)
            .peer
            .and_then(|p| p.resync)
            .is_some_and(|r| r.total_sectors > 0 && r.left_sectors * 2 <= r.total_sectors)
    });
    let left = c.status(1).peer.and_then(|p| p.resync).expect("resync");
    check(
        &c,
        left.left_sectors * 4 >= left.total_sectors,
        "the resync is not three quarters done yet",
    );
    c
}

/// A resync interrupted by a partition resumes where it stopped after the partition heals.
#[test]
fn resync_interrupted_by_partition_resumes() {
    for seed in SEEDS {
        let mut c = half_synced(seed);
        c.partition(0, 1);
        c.wait_disconnected(0, secs(30));
        c.wait_disconnected(1, secs(30));
        check(
            &c,
            c.status(1).disk == DiskState::Inconsistent,
            "an interrupted SyncTarget stays Inconsistent",
        );
        let before = written_kib(&c, 1);
        c.heal();
        c.wait_in_sync(secs(120));
        let resynced = written_kib(&c, 1) - before;
        check(
            &c,
            resynced * 1024 < data_bytes(&c) * 3 / 4,
            &format!("the resync resumed instead of restarting: {resynced} KiB"),
        );
        c.check_identical();
    }
}

/// A crash of the SyncTarget during the resync: it restarts, reconnects, and the resync
/// finishes.
#[test]
fn crash_of_the_sync_target_during_resync() {
    for seed in SEEDS {
        let mut c = half_synced(seed);
        c.crash(1);
        c.wait_disconnected(0, secs(30));
        c.restart(1);
        c.wait_in_sync(secs(120));
        c.check_identical();
    }
}

/// A crash of the SyncSource (a Primary) during the resync: the target stays Inconsistent;
/// the source restarts, reconnects, and the resync finishes.
#[test]
fn crash_of_the_sync_source_during_resync() {
    for seed in SEEDS {
        let mut c = half_synced(seed);
        c.crash(0);
        c.wait_disconnected(1, secs(30));
        check(
            &c,
            c.status(1).disk == DiskState::Inconsistent,
            "the target stays Inconsistent without its source",
        );
        let refused = c.command(1, primary(false)).is_err();
        check(
            &c,
            refused,
            "an Inconsistent node refuses to become Primary",
        );
        c.restart(0);
        c.wait_in_sync(secs(120));
        c.check_identical();
    }
}

/// invalidate on the Secondary and invalidate-remote on the Primary: full resyncs.
#[test]
fn invalidate_and_invalidate_remote_resync_everything() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary(false));
        c.random_writes(0, 30, 4);
        let cmd = if seed % 2 == 0 {
            (1, AdminCommand::Invalidate)
        } else {
            (0, AdminCommand::InvalidateRemote)
        };
        let before = written_kib(&c, 1);
        c.must(cmd.0, cmd.1.clone());
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 was SyncTarget",
        );
        let resynced = written_kib(&c, 1) - before;
        check(
            &c,
            resynced * 1024 >= data_bytes(&c) * 9 / 10,
            &format!("{:?} resyncs the whole device: {resynced} KiB", cmd.1),
        );
        c.check_identical();
    }
}

// ---- split brain -----------------------------------------------------------------------

/// Partition a synced pair, promote both, write on each, demote both: the two data
/// generations diverged. Returns the ids of each side's writes.
fn diverge(c: &mut Cluster, writes: [usize; 2]) -> [Vec<BlockRequestId>; 2] {
    c.partition(0, 1);
    c.wait_disconnected(0, secs(30));
    c.wait_disconnected(1, secs(30));
    let mut ids = [Vec::new(), Vec::new()];
    for n in 0..2u8 {
        c.must(n, primary(false));
        ids[usize::from(n)] = c.random_writes(n, writes[usize::from(n)], 2);
        c.must(n, AdminCommand::Secondary);
    }
    ids
}

/// A split brain without automatic resolution: the node that detects it goes StandAlone and
/// runs the split-brain handler; `connect --discard-my-data` on node 1 makes it the
/// SyncTarget.
#[test]
fn split_brain_detected_and_resolved_by_discard_my_data() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        let ids = diverge(&mut c, [5, 5]);
        c.heal();
        c.run_until("a node StandAlone after the split brain", secs(60), |c| {
            (0..2).any(|n| c.conn(n) == Some(ConnState::StandAlone))
        });
        c.run_for(secs(5));
        for n in 0..2 {
            // The node that detects the split brain first drops the connection; the other
            // one may see the connection close before the handshake and keep waiting
            // (WFConnection), as the DRBD user's guide describes.
            let conn = c.conn(n);
            check(
                &c,
                conn == Some(ConnState::StandAlone) || conn == Some(ConnState::WfConnection),
                "StandAlone or WFConnection after the split brain",
            );
            if conn == Some(ConnState::StandAlone) {
                check(
                    &c,
                    c.handlers(n).contains(&"split-brain"),
                    &format!("node {n} called the split-brain handler"),
                );
            }
        }
        // The user's guide's recovery: the victim disconnects (unless StandAlone) and
        // connects with --discard-my-data; the survivor connects if it is StandAlone.
        if c.conn(1) != Some(ConnState::StandAlone) {
            c.must(1, AdminCommand::Disconnect);
        }
        c.must(1, connect(true));
        if c.conn(0) == Some(ConnState::StandAlone) {
            c.must(0, connect(false));
        }
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 was SyncTarget",
        );
        c.check_identical();
        for id in &ids[0] {
            check(&c, c.holds_write_or_newer(1, *id), "node 0's writes win");
        }
    }
}

fn with_after_sb_0pri(policy: AfterSb0pri) -> ClusterOptions {
    let mut o = ClusterOptions::default();
    o.split_brain.after_sb_0pri = policy;
    o
}

/// after-sb-0pri discard-zero-changes: node 1 was Primary but wrote nothing, so its (empty)
/// changes are discarded automatically.
#[test]
fn after_sb_0pri_discard_zero_changes_recovers() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, with_after_sb_0pri(AfterSb0pri::DiscardZeroChanges));
        let ids = diverge(&mut c, [8, 0]);
        c.heal();
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 was SyncTarget",
        );
        check(
            &c,
            (0..2).all(|n| c.conn(n) != Some(ConnState::StandAlone)),
            "no manual intervention",
        );
        c.check_identical();
        for id in &ids[0] {
            check(
                &c,
                c.holds_write_or_newer(1, *id),
                "node 0's writes are kept",
            );
        }
    }
}

/// after-sb-0pri discard-least-changes: the node with fewer changed blocks is discarded.
#[test]
fn after_sb_0pri_discard_least_changes_recovers() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, with_after_sb_0pri(AfterSb0pri::DiscardLeastChanges));
        // The random blocks of the two sides may overlap; 12 against 3 stays apart.
        let ids = diverge(&mut c, [12, 3]);
        c.heal();
        c.wait_in_sync(secs(60));
        check(
            &c,
            c.was_ever(1, ConnState::SyncTarget),
            "node 1 was SyncTarget",
        );
        c.check_identical();
        for id in &ids[0] {
            check(
                &c,
                c.holds_write_or_newer(1, *id),
                "the side with more changes wins",
            );
        }
        check(
            &c,
            ids[1]
                .iter()
                .all(|id| !c.holds_write(1, *id) || ids[0].is_empty()),
            "the side with fewer changes lost its writes",
        );
    }
}

// ---- protocols A, B, C -----------------------------------------------------------------

fn with_protocol(protocol: WireProtocol) -> ClusterOptions {
    ClusterOptions {
        protocol,
        ..ClusterOptions::default()
    }
}

/// Protocol A completes a write when it is written locally and handed to the network: with
/// the network stalled, writes complete, and the Primary's crash loses them on the peer.
#[test]
fn protocol_a_acked_writes_in_the_network_die_with_the_primary() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, with_protocol(WireProtocol::A));
        c.must(0, primary(false));
        c.random_writes(0, 10, 4);
        c.partition(0, 1);
        let ids = c.random_writes(0, 10, 4);
        check(
            &c,
            !is_connected(c.conn(1)) || c.undelivered(0, 1) > 0,
            "the writes are still in the network",
        );
        c.crash(0);
        c.wait_disconnected(1, secs(30));
        c.heal();
        check(
            &c,
            ids.iter().all(|id| !c.holds_write(1, *id)),
            "protocol A: writes the network had not delivered are lost with the Primary",
        );
    }
}

/// Protocol A: writes the network delivered before the Primary crashed are on the peer.
#[test]
fn protocol_a_delivered_writes_survive_the_primary() {
    for seed in SEEDS {
        let mut c = in_sync_pair(seed, with_protocol(WireProtocol::A));
        c.must(0, primary(false));
        let ids = c.random_writes(0, 30, 4);
        c.run_until("the network delivered everything", secs(5), |c| {
            c.undelivered(0, 1) == 0
        });
        c.crash(0);
        // The peer writes what it received, connection or not.
        c.run_for(Duration::from_millis(200));
        for id in &ids {
            check(
                &c,
                c.holds_write_or_newer(1, *id),
                "a delivered write is on the peer",
            );
        }
    }
}

/// Protocols B and C do not complete a write the peer has not received (B) or written (C):
/// with the network stalled, writes wait; after healing they complete, and survive the
/// Primary's crash.
#[test]
fn protocols_b_and_c_wait_for_the_peer() {
    for protocol in [WireProtocol::B, WireProtocol::C] {
        for seed in SEEDS {
            let mut c = in_sync_pair(seed, with_protocol(protocol));
            c.must(0, primary(false));
            c.partition(0, 1);
            let ids: Vec<BlockRequestId> = (0..5).map(|_| c.submit_random_write(0, 0)).collect();
            c.run_for(secs(1));
            check(
                &c,
                ids.iter().all(|id| c.completion(*id).is_none()),
                &format!("{protocol:?}: no write completes while the peer cannot ack it"),
            );
            c.heal();
            for id in &ids {
                let result = c.wait(*id);
                check(&c, result == Ok(None), "the write completes after the heal");
            }
            c.crash(0);
            if protocol == WireProtocol::C {
                c.check_acked_writes(1);
            }
            // B: the peer had the data in memory; once its disk completes it holds it.
            c.run_for(Duration::from_millis(100));
            for id in &ids {
                check(
                    &c,
                    c.holds_write(1, *id),
                    &format!("{protocol:?}: an acknowledged write reaches the peer's disk"),
                );
            }
        }
    }
}

/// max-buffers on the receiving side (DRBD's receiver waiting for pages): under protocol A
/// the Primary completes writes its peer has not written, and with the peer's disk frozen
/// those would pile up in the peer's memory. The peer stops reading its data socket once
/// the writes it holds take max-buffers pages; the rest waits in the network, and after
/// the thaw everything is written and the replicas are identical.
#[test]
fn a_peer_with_a_frozen_disk_holds_at_most_max_buffers_of_writes() {
    peer_with_a_frozen_disk(false, None);
}

/// The same with the writes going to four blocks over and over: all but the first four
/// wait for the lock of an earlier write of their block, on the frozen disk. Those count
/// too (the first version did not count them and read all 1014 writes; a daemon test
/// writing at random held 34 at max-buffers 32).
#[test]
fn a_peer_with_a_frozen_disk_holds_at_most_max_buffers_of_overlapping_writes() {
    peer_with_a_frozen_disk(false, Some(4));
}

/// The same, ended by `detach --force` on the peer instead of the thaw: the abandoned writes
/// free their pages, the diskless peer takes the rest, and its disk, attached again, is
/// resynced.
#[test]
fn detach_force_lets_a_peer_at_max_buffers_read_again() {
    peer_with_a_frozen_disk(true, None);
}

/// With bounded socket buffers (as real sockets have) the back-pressure reaches the
/// Primary's application: once the sockets and sndbuf-size are full, its protocol A writes
/// wait; after the thaw they complete and the replicas are identical.
#[test]
fn a_peer_at_max_buffers_makes_the_primarys_writes_wait() {
    for seed in SEEDS {
        let mut options = with_protocol(WireProtocol::A);
        options.resync.max_buffers_pages = 32;
        options.socket_buffer = Some(256 << 10);
        options.sndbuf_size = 128 << 10;
        let (mut c, blocks, ids) = writes_to_a_frozen_peer(seed, options, None);
        c.run_for(secs(3));
        let done = ids.iter().filter(|id| c.completion(**id).is_some()).count();
        // At most max-buffers (128 KiB) on the peer's disk, the sockets (256 KiB) and
        // sndbuf-size (128 KiB) beyond what the socket took: about 130 writes of 4 KiB.
        check(
            &c,
            done < 200,
            &format!("{done} of {blocks} writes completed while the peer's disk is frozen"),
        );
        println!("seed {seed}: {done} of {blocks} writes completed while frozen");
        c.disk(1).faults.frozen = false;
        for id in &ids {
            let result = c.wait(*id);
            check(
                &c,
                result == Ok(None),
                "every write completes after the thaw",
            );
        }
        peer_received_everything(&mut c, blocks);
        c.wait_in_sync(secs(30));
        c.check_identical();
    }
}

/// max-buffers bounds the peer's reads too: a diskless Primary reads through its peer,
/// whose disk is frozen; the peer takes at most max-buffers pages of read requests onto its
/// disk and leaves the rest in its socket. After the thaw every read completes.
#[test]
fn a_peer_at_max_buffers_takes_no_more_read_requests() {
    const PAGES: u64 = 32;
    for seed in SEEDS {
        let mut options = ClusterOptions::default();
        options.resync.max_buffers_pages = PAGES;
        let mut c = in_sync_pair(seed, options);
        c.must(0, primary(false));
        c.must(0, AdminCommand::Detach { force: false });
        c.disk(1).faults.frozen = true;
        let blocks = data_bytes(&c) / BLOCK;
        let ids: Vec<BlockRequestId> = (0..blocks)
            .map(|i| c.submit_read(0, (i * 7 % blocks) * BLOCK, BLOCK as u32))
            .collect();
        c.run_for(secs(3));
        // Its disk operations: the reads, and a meta-data write or two.
        let on_disk = c.disk_in_flight(1);
        check(
            &c,
            on_disk as u64 <= PAGES + 2,
            &format!(
                "the peer has {on_disk} operations on its disk, its reads at most max-buffers ({PAGES})"
            ),
        );
        check(&c, c.receive_pauses() > 0, "the peer stopped reading");
        c.disk(1).faults.frozen = false;
        for id in &ids {
            let result = c.wait(*id);
            check(
                &c,
                matches!(&result, Ok(Some(d)) if d.len() == BLOCK as usize),
                &format!("every read completes after the thaw: {result:?}"),
            );
        }
    }
}

/// An in-sync pair with `options`, node 0 Primary; node 1's disk frozen, then as many 4 KiB
/// writes on node 0 as the device (4 MiB less the meta-data) has blocks (about 30 times
/// DRBD's smallest max-buffers), in a scattered order over the first `distinct` blocks
/// (`None`: the whole device, each block once): the pair, the write count and the writes.
fn writes_to_a_frozen_peer(
    seed: u64,
    options: ClusterOptions,
    distinct: Option<u64>,
) -> (Cluster, u64, Vec<BlockRequestId>) {
    let mut c = in_sync_pair(seed, options);
    c.must(0, primary(false));
    c.disk(1).faults.frozen = true;
    let blocks = data_bytes(&c) / BLOCK;
    let distinct = distinct.unwrap_or(blocks);
    let ids = (0..blocks)
        .map(|i| {
            let data = pattern(seed * 10_000 + i, BLOCK as usize);
            c.submit_write(0, (i * 7 % distinct) * BLOCK, data, false)
        })
        .collect();
    (c, blocks, ids)
}

/// Runs until node 1 received all `blocks` written and has none on its disk.
fn peer_received_everything(c: &mut Cluster, blocks: u64) {
    c.run_until("the peer received and wrote everything", secs(60), |c| {
        c.status(1)
            .peer
            .is_some_and(|p| p.received_kib == blocks * 4 && p.unacked == 0)
    });
}

fn peer_with_a_frozen_disk(detach: bool, distinct: Option<u64>) {
    const PAGES: u64 = 32;
    for seed in SEEDS {
        let mut options = with_protocol(WireProtocol::A);
        options.resync.max_buffers_pages = PAGES;
        let (mut c, _, ids) = writes_to_a_frozen_peer(seed, options, distinct);
        let blocks = ids.len() as u64;
        for id in &ids {
            let result = c.wait(*id);
            check(&c, result == Ok(None), "protocol A completes the write");
        }
        c.run_for(secs(3));
        let unacked = c.status(1).peer.map_or(0, |p| p.unacked);
        check(
            &c,
            u64::from(unacked) <= PAGES,
            &format!("the peer holds {unacked} writes, at most max-buffers ({PAGES} pages)"),
        );
        check(&c, c.receive_pauses() > 0, "the peer stopped reading");
        if detach {
            // `detach --force` abandons the frozen writes: the peer reads again, diskless.
            c.must(1, AdminCommand::Detach { force: true });
            peer_received_everything(&mut c, blocks);
            c.disk(1).faults.frozen = false;
            c.run_for(secs(1));
            c.attach(1);
        } else {
            c.disk(1).faults.frozen = false;
            peer_received_everything(&mut c, blocks);
        }
        c.wait_in_sync(secs(60));
        c.check_identical();
    }
}

// ---- the harness itself ----------------------------------------------------------------

/// A node without a connection (never told to connect): local IO through the harness, a
/// crash keeps flushed and FUA writes.
#[test]
fn harness_single_node_io_and_crash() {
    for seed in SEEDS {
        let mut c = Cluster::new(
            seed,
            ClusterOptions {
                up_at_start: false,
                ..ClusterOptions::default()
            },
        );
        c.attach(0);
        c.must(0, primary(true));
        let ids = c.random_writes(0, 40, 8);
        c.flush(0).expect("flush");
        let data = pattern(seed, 8192);
        c.write(0, 8192, data.clone(), true).expect("write");
        let got = c.read(0, 8192, 8192).expect("read");
        assert_eq!(got, data, "seed {seed}");
        c.crash(0);
        check(&c, !c.is_up(0), "crashed");
        for (i, id) in ids.iter().enumerate() {
            let (offset, _) = c.write_of(*id).expect("write");
            let rewritten = ids[i + 1..]
                .iter()
                .any(|later| c.write_of(*later).expect("write").0 == offset);
            if !rewritten && !(8192..16384).contains(&offset) {
                check(
                    &c,
                    c.holds_write(0, *id),
                    "flushed writes survive the crash",
                );
            }
        }
        c.boot(0);
        c.attach(0);
        c.must(0, primary(false));
        let got = c.read(0, 8192, 8192).expect("read");
        assert_eq!(got, data, "seed {seed}");
    }
}

/// The same seed gives the same run.
#[test]
fn a_seed_replays_bit_for_bit() {
    let run = |seed| {
        let mut c = in_sync_pair(seed, ClusterOptions::default());
        c.must(0, primary(false));
        c.random_writes(0, 20, 4);
        (
            c.now(),
            c.steps(),
            c.history(1).to_vec(),
            c.data_area(1).to_vec(),
        )
    };
    assert!(run(3) == run(3));
}

/// Writes on the Primary while a full resync (invalidate) runs over a slower network: every
/// write completes, and the resync finishes. (`vopr --seed 1` stalls in this situation, a
/// write and the last resync request never complete; this script does not reproduce that
/// schedule yet.)
#[test]
fn writes_during_an_invalidate_resync_complete() {
    for seed in 0..8 {
        let mut c = in_sync_pair(
            seed,
            ClusterOptions {
                net_latency_ns: (300_000, 3_000_000),
                net_bandwidth: 32 << 20,
                limit: secs(30),
                ..ClusterOptions::default()
            },
        );
        c.must(0, primary(false));
        c.must(1, AdminCommand::Invalidate);
        c.random_writes(0, 60, 6);
        c.wait_in_sync(secs(60));
        c.check_identical();
    }
}
