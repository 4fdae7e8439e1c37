//! Engine bugs the swarm runner (`udrbd_sim::swarm`, `vopr`) found, each minimised into a
//! scripted scenario: seeds stop meaning anything when the generator changes; scripts do not.
//! Every scenario failed (a panic, a livelock, a named checker) before its fix in udrbd-core.

use std::time::Duration;

use udrbd_core::*;
use udrbd_meta::MetaDiskKind;
use udrbd_sim::cluster::{BLOCK, Cluster, ClusterOptions, pattern};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn attach_cmd(c: &Cluster) -> AdminCommand {
    let size = c.options().device_bytes;
    AdminCommand::Attach(AttachParams {
        data_device_bytes: size,
        meta_device_bytes: size,
        meta_kind: MetaDiskKind::Internal,
    })
}

fn check(c: &Cluster, ok: bool, what: &str) {
    if !ok {
        c.fail(what);
    }
}

/// A connected pair made UpToDate without a resync, node 0 Primary if `primary`.
fn pair(seed: u64, options: ClusterOptions, primary: bool) -> Cluster {
    let mut c = Cluster::new(seed, options);
    c.wait_connected(secs(30));
    c.must(0, AdminCommand::NewCurrentUuid { clear_bitmap: true });
    c.wait_in_sync(secs(30));
    if primary {
        c.must(0, AdminCommand::Primary { force: false });
    }
    c
}

/// Swarm seed 0 (progress: a livelock): `disk-timeout` fired while an attach waited for its
/// superblock read on a frozen disk. With no meta-data in memory yet, `force_detach` returned
/// early, the overdue read stayed, and the disk-timeout timer re-armed in the past for ever.
/// Now the attach fails (its read becomes stuck IO) and a later attach succeeds once the disk
/// returned it.
#[test]
fn disk_timeout_during_an_attach_fails_the_attach() {
    for seed in 0..3 {
        let options = ClusterOptions {
            disk_timeout: Some(secs(3)),
            ..ClusterOptions::default()
        };
        let mut c = pair(seed, options, true);
        c.must(1, AdminCommand::Detach { force: false });
        c.disk(1).faults.frozen = true;
        let attach = attach_cmd(&c);
        let id = c.start_command(1, attach);
        c.run_for(secs(10));
        let result = c.command_result(1, id);
        check(
            &c,
            matches!(result, Some(Err(CommandError::MetaDataIo))),
            &format!("the attach stuck on a frozen disk failed by disk-timeout: {result:?}"),
        );
        c.disk(1).faults.frozen = false;
        c.run_for(secs(1));
        let attach = attach_cmd(&c);
        c.must(1, attach);
        c.wait_in_sync(secs(60));
    }
}

/// Swarm seed 19: a diskless node could never connect. It sends no P_UUIDS (as DRBD's
/// drbd_send_uuids, which needs a disk), and its peer demanded them before P_STATE ("P_STATE
/// before P_PROTOCOL, P_SIZES and P_UUIDS"), dropping the connection in a loop.
#[test]
fn a_diskless_node_connects() {
    for seed in 0..3 {
        let mut c = pair(seed, ClusterOptions::default(), true);
        c.must(1, AdminCommand::Disconnect);
        c.must(1, AdminCommand::Detach { force: false });
        c.must(
            1,
            AdminCommand::Connect {
                discard_my_data: false,
            },
        );
        c.wait_connected(secs(30));
        c.run_for(secs(5));
        let (s0, s1) = (c.snapshot(0), c.snapshot(1));
        check(
            &c,
            c.all_connected()
                && s0.peer_disk == DiskState::Diskless
                && s1.disk == DiskState::Diskless,
            &format!("connected to a diskless peer: {s0:?} / {s1:?}"),
        );
        // And it stays usable: the disk comes back and resyncs.
        c.write(0, 0, pattern(seed, BLOCK as usize), false)
            .expect("write on the Primary");
        let attach = attach_cmd(&c);
        c.must(1, attach);
        c.wait_in_sync(secs(60));
        c.check_identical();
    }
}

/// Swarm seed 23 (invariants: "attached" panic): both nodes diskless and connected, then one
/// attaches. It ran the sync handshake against the UUIDs its peer had sent while it still had
/// a disk, and made the diskless peer a resync target.
#[test]
fn attaching_next_to_a_diskless_peer_starts_no_resync() {
    for seed in 0..3 {
        let mut c = pair(seed, ClusterOptions::default(), false);
        c.must(1, AdminCommand::Detach { force: false });
        c.must(0, AdminCommand::Detach { force: false });
        c.run_for(secs(1));
        let attach = attach_cmd(&c);
        c.must(0, attach);
        c.run_for(secs(5));
        let (s0, s1) = (c.snapshot(0), c.snapshot(1));
        check(
            &c,
            s0.conn == Some(ConnState::Connected) && s1.conn == Some(ConnState::Connected),
            &format!("connected, no resync: {s0:?} / {s1:?}"),
        );
        let attach = attach_cmd(&c);
        c.must(1, attach);
        c.wait_in_sync(secs(60));
    }
}

fn pass_on(_: u8, config: &mut ResourceConfig) {
    config.on_io_error = OnIoError::PassOn;
}

/// Swarm seed 30 (primaries): after a split brain with two Primaries, a read error under
/// `on-io-error pass_on` made one Primary Inconsistent; on reconnect the handshake made it
/// SyncTarget of the other Primary and the two connected. DRBD's is_valid_state refuses
/// Primary/Primary without allow-two-primaries whatever the handshake decided.
#[test]
fn two_primaries_never_connect() {
    for seed in 0..3 {
        let options = ClusterOptions {
            configure: Some(pass_on),
            ..ClusterOptions::default()
        };
        let mut c = pair(seed, options, true);
        c.partition(0, 1);
        c.wait_disconnected(1, secs(60));
        c.must(1, AdminCommand::Primary { force: false });
        c.disk(0).faults.fail_reads[0] = true;
        let read = c.read(0, 0, BLOCK as u32);
        check(&c, read.is_err(), "the read fails: no local data, no peer");
        c.disk(0).faults.fail_reads[0] = false;
        check(
            &c,
            c.status(0).disk == DiskState::Inconsistent,
            "pass_on made node 0 Inconsistent",
        );
        c.heal();
        // The cluster fails the run if both Primaries ever connect.
        c.run_for(secs(20));
        check(
            &c,
            !c.all_connected(),
            "two Primaries stay apart (the operator must demote one)",
        );
    }
}

/// Swarm seed 22 (invariants: "Primary without PRIMARY_IND"): a promotion waited for its
/// superblock on a frozen disk while the connection changed; the flag update for the new
/// connection state recomputed the flags for the old role, so the node became Primary over a
/// superblock without MDF_PRIMARY_IND (a crash then would not replay the activity log as a
/// Primary's).
#[test]
fn a_pending_promotion_keeps_primary_ind() {
    for seed in 0..3 {
        let mut c = pair(seed, ClusterOptions::default(), false);
        c.disk(0).faults.frozen = true;
        let id = c.start_command(0, AdminCommand::Primary { force: false });
        c.run_for(Duration::from_millis(50));
        // A flag update while the promotion waits: the connection goes away.
        let now = c.now();
        for conn in c.net().connections_between(0, 1) {
            c.net().reset(now, conn);
        }
        c.run_for(secs(2));
        c.disk(0).faults.frozen = false;
        c.run_for(secs(2));
        check(
            &c,
            c.command_result(0, id) == Some(Ok(())),
            "the promotion completes",
        );
        let sb = c.durable_superblock(0);
        check(
            &c,
            sb.flags.has(udrbd_meta::MdFlags::PRIMARY_IND),
            "the durable superblock says Primary",
        );
    }
}

/// Swarm seed 406 (bitmap-soundness): a write was accepted on a disconnected Primary (waiting
/// for its activity-log transaction) when `secondary` came. The demotion wrote the bitmap and
/// the superblock without MDF_PRIMARY_IND while the write was still in flight; the write then
/// set its bit in memory only, and a crash lost it (apply-al replays nothing for a Secondary).
/// DRBD demotes with nothing on the fly: now the demotion waits for the write and writes its
/// bit before the superblock.
#[test]
fn a_demotion_writes_the_bits_of_writes_in_flight() {
    for seed in 0..6 {
        let mut c = pair(seed, ClusterOptions::default(), true);
        c.must(0, AdminCommand::Disconnect);
        c.disk(0).faults.frozen = true;
        let block = 700 + seed;
        let write = c.submit_write(0, block * BLOCK, pattern(seed, BLOCK as usize), false);
        let demote = c.start_command(0, AdminCommand::Secondary);
        c.run_for(Duration::from_millis(10));
        c.disk(0).faults.frozen = false;
        c.run_until("the demotion completes", secs(10), |c| {
            c.command_result(0, demote).is_some()
        });
        check(
            &c,
            c.command_result(0, demote) == Some(Ok(())),
            "the demotion succeeds",
        );
        c.run_for(Duration::from_millis(500));
        let written = c.wait(write);
        check(&c, written.is_ok(), "the write succeeds");
        let primary_ind = c
            .durable_superblock(0)
            .flags
            .has(udrbd_meta::MdFlags::PRIMARY_IND);
        check(
            &c,
            c.durable_bitmap_bit(0, block) || primary_ind,
            "the disconnected write is recorded on disk (its bit, or an AL a crash replays)",
        );
    }
}

/// Swarm seeds 406 and 42 (bitmap-soundness): a write completed on a connected Primary sat in
/// its disk's volatile cache, covered by the activity log. A clean detach (and a demotion)
/// then ended that cover, the detach by re-initialising the ring and the demotion by clearing
/// MDF_PRIMARY_IND, without flushing the data: a later power cut lost the write, with no bit
/// and no extent left to resync it from the peer. DRBD's meta-data writes carry REQ_FLUSH;
/// now a data flush precedes both.
#[test]
fn detach_and_demotion_make_completed_writes_durable() {
    for seed in 0..3 {
        for detach in [true, false] {
            let mut c = pair(seed, ClusterOptions::default(), true);
            let block = 300 + seed;
            let data = pattern(seed + 10, BLOCK as usize);
            c.write(0, block * BLOCK, data.clone(), false)
                .expect("write on the Primary");
            let cmd = if detach {
                AdminCommand::Detach { force: false }
            } else {
                AdminCommand::Secondary
            };
            c.must(0, cmd);
            let durable = c.disk(0).durable(block * BLOCK, BLOCK as usize).to_vec();
            check(
                &c,
                durable == data[..],
                &format!(
                    "after the {}, the write is durable on node 0",
                    if detach { "detach" } else { "demotion" }
                ),
            );
        }
    }
}

/// Swarm seed 51 (bitmap-soundness): a Primary under protocol A was demoted while its last
/// writes still awaited the peer's barrier ack; then the connection broke. The connection
/// loss set their bits, in memory only (the lazy write-out comes seconds later), on a node
/// whose superblock no longer said Primary: a crash lost them. DRBD writes the bitmap out
/// after every connection loss ("write from disconnected"); now the engine does too.
#[test]
fn a_connection_loss_writes_the_bitmap_out() {
    for seed in 0..3 {
        let options = ClusterOptions {
            protocol: udrbd_wire::WireProtocol::A,
            ..ClusterOptions::default()
        };
        let mut c = pair(seed, options, true);
        // The peer receives the write but never acknowledges its epoch.
        c.disk(1).faults.frozen = true;
        let block = 500 + seed;
        c.write(0, block * BLOCK, pattern(seed, BLOCK as usize), false)
            .expect("a protocol A write completes without the peer");
        c.must(0, AdminCommand::Secondary);
        let now = c.now();
        for conn in c.net().connections_between(0, 1) {
            c.net().reset(now, conn);
        }
        c.wait_disconnected(0, secs(30));
        c.run_for(secs(1));
        check(
            &c,
            c.durable_bitmap_bit(0, block),
            "the unacknowledged write's bit is on disk",
        );
        c.disk(1).faults.frozen = false;
    }
}
