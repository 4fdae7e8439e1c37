//! Two engines connected through an in-memory network that delivers bytes in order (cut
//! into small pieces), with in-memory disks: the handshake, the initial full sync, protocol C
//! replication, an incremental resync after a disconnect, failover, and split-brain
//! detection. `invariants()` runs after every step. (The randomized two-node simulator with
//! latency, partitions and crashes is udrbd-sim's.)

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use udrbd_core::connection::{ConnId, OUTGOING_CONN_ID_BASE};
use udrbd_core::*;
use udrbd_meta::MetaDiskKind;
use udrbd_wire::{DataHeader, DataPacket, DecodeContext, Deframer, HeaderFormat, Packet};

mod support;
use support::MemDisk;

const SIZE: u64 = 8 << 20;

struct Node {
    engine: Resource,
    disk: MemDisk,
    addr: SocketAddr,
    listening: bool,
    completions: BTreeMap<BlockRequestId, Result<Option<Bytes>, BlockError>>,
    events: Vec<Event>,
    next_request: u64,
    next_accept: u64,
    /// Bytes this node sent on every socket.
    sent_bytes: u64,
}

struct Cluster {
    nodes: Vec<Node>,
    now: Instant,
    /// (node, input) to deliver, in order.
    queue: VecDeque<(usize, Input)>,
    /// (node, conn) -> (peer node, peer conn).
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    /// Bytes held back by a partition: (to node, input).
    held: Vec<(usize, Input)>,
    partitioned: bool,
    /// Rewrites the packets alice sends bob: see [`GrowBeforeBitmap`].
    grow_before_bitmap: Option<GrowBeforeBitmap>,
    disk_ops: VecDeque<(usize, DiskOp)>,
    /// The node whose superblock writes are held back (not executed) in `held_disk_ops`.
    hold_superblock_of: Option<usize>,
    /// The node whose bitmap page writes are held back the same way.
    hold_bitmap_of: Option<usize>,
    held_disk_ops: Vec<(usize, DiskOp)>,
    cut: usize,
}

fn addr(i: usize) -> SocketAddr {
    format!("127.0.0.{}:7789", i + 1).parse().unwrap()
}

impl Cluster {
    fn new(configure: impl Fn(usize, &mut ResourceConfig)) -> Cluster {
        let nodes = (0..2)
            .map(|i| {
                let mut config = ResourceConfig::new("r0", 0);
                let mut net = NetConfig::new(
                    ["alice", "bob"][i],
                    addr(i),
                    ["alice", "bob"][1 - i],
                    addr(1 - i),
                );
                net.connect_int = Duration::from_secs(1);
                net.resync.c_plan_ahead_tenths = 0;
                net.resync.resync_rate_kib_per_sec = 4_000_000;
                net.resync.max_buffers_pages = 8000;
                net.connect_at_start = false;
                config.net = Some(net);
                configure(i, &mut config);
                let mut disk = MemDisk::new(SIZE);
                disk.create_md();
                Node {
                    engine: Resource::new(config, [i as u8 + 1; 32]),
                    disk,
                    addr: addr(i),
                    listening: false,
                    completions: BTreeMap::new(),
                    events: Vec::new(),
                    next_request: 1,
                    next_accept: 1,
                    sent_bytes: 0,
                }
            })
            .collect();
        let mut c = Cluster {
            nodes,
            now: Instant(1_000_000_000),
            queue: VecDeque::new(),
            links: BTreeMap::new(),
            held: Vec::new(),
            partitioned: false,
            grow_before_bitmap: None,
            disk_ops: VecDeque::new(),
            hold_superblock_of: None,
            hold_bitmap_of: None,
            held_disk_ops: Vec::new(),
            cut: 0,
        };
        for i in 0..2 {
            c.command(i, attach()).unwrap();
        }
        c
    }

    fn drain(&mut self, i: usize) {
        self.nodes[i].engine.invariants();
        while let Some(out) = self.nodes[i].engine.poll_output() {
            match out {
                Output::Disk(op) => self.disk_ops.push_back((i, op)),
                Output::Block(c) => {
                    self.nodes[i].completions.insert(c.id, c.result);
                }
                Output::Event(e) => self.nodes[i].events.push(e),
                Output::Peer(p) => self.route(i, p),
            }
        }
    }

    fn route(&mut self, i: usize, out: PeerOutput) {
        match out {
            PeerOutput::Listen { addr } => {
                assert_eq!(addr, self.nodes[i].addr);
                self.nodes[i].listening = true;
            }
            PeerOutput::StopListening => self.nodes[i].listening = false,
            PeerOutput::Connect { conn, addr } => {
                let j = (0..2).find(|&j| self.nodes[j].addr == addr).unwrap();
                if self.nodes[j].listening && !self.partitioned {
                    let accepted = ConnId(self.nodes[j].next_accept);
                    self.nodes[j].next_accept += 1;
                    assert!(accepted.0 < OUTGOING_CONN_ID_BASE);
                    self.links.insert((i, conn), (j, accepted));
                    self.links.insert((j, accepted), (i, conn));
                    self.queue
                        .push_back((j, Input::Peer(PeerInput::Accepted { conn: accepted })));
                    self.queue
                        .push_back((i, Input::Peer(PeerInput::Connected { conn })));
                } else {
                    self.queue
                        .push_back((i, Input::Peer(PeerInput::Closed { conn })));
                }
            }
            PeerOutput::Send { conn, head, data } => {
                let n = (head.len() + data.len()) as u64;
                self.nodes[i].sent_bytes += n;
                self.queue
                    .push_back((i, Input::Peer(PeerInput::Sent { conn, bytes: n })));
                let Some(&(j, peer_conn)) = self.links.get(&(i, conn)) else {
                    return;
                };
                let mut bytes = head.to_vec();
                bytes.extend_from_slice(&data);
                if let Some(trick) = self.grow_before_bitmap.as_mut().filter(|_| j == 1) {
                    bytes = trick.rewrite(bytes);
                }
                // Cut the stream at varying points.
                let mut at = 0;
                while at < bytes.len() {
                    self.cut = (self.cut * 7 + 13) % 97;
                    let n = (self.cut + 1).min(bytes.len() - at);
                    let n = if bytes.len() > 4096 {
                        bytes.len() - at
                    } else {
                        n
                    };
                    let input = Input::Peer(PeerInput::Received {
                        conn: peer_conn,
                        bytes: Bytes::copy_from_slice(&bytes[at..at + n]),
                    });
                    if self.partitioned {
                        self.held.push((j, input));
                    } else {
                        self.queue.push_back((j, input));
                    }
                    at += n;
                }
            }
            // This harness delivers every byte at once: an engine must cope with bytes that
            // a driver had read before it stopped reading (the simulator holds the rest).
            PeerOutput::Receive { .. } => {}
            PeerOutput::Close { conn } => {
                if let Some((j, peer_conn)) = self.links.remove(&(i, conn)) {
                    self.links.remove(&(j, peer_conn));
                    self.queue
                        .push_back((j, Input::Peer(PeerInput::Closed { conn: peer_conn })));
                }
            }
        }
    }

    /// Delivers everything queued; returns whether anything happened.
    fn step(&mut self) -> bool {
        for i in 0..2 {
            self.drain(i);
        }
        if let Some((i, input)) = self.queue.pop_front() {
            self.now = Instant(self.now.0 + 1_000);
            self.nodes[i].engine.handle(self.now, input);
            self.drain(i);
            return true;
        }
        if let Some((i, op)) = self.disk_ops.pop_front() {
            if (self.hold_superblock_of == Some(i) && op.area == DiskArea::Superblock)
                || (self.hold_bitmap_of == Some(i) && op.area == DiskArea::Bitmap)
            {
                self.held_disk_ops.push((i, op));
                return true;
            }
            let c = self.nodes[i].disk.execute(&op);
            self.now = Instant(self.now.0 + 1_000);
            self.nodes[i].engine.handle(self.now, Input::Disk(c));
            self.drain(i);
            return true;
        }
        false
    }

    /// Runs until `done` holds, jumping to timer deadlines when idle; panics after `limit`.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Cluster) -> bool) {
        let end = self.now.plus(limit);
        loop {
            if done(self) {
                return;
            }
            if self.step() {
                assert!(self.now <= end, "not done within {limit:?}");
                continue;
            }
            let next = (0..2)
                .filter_map(|i| self.nodes[i].engine.poll_timeout())
                .min()
                .expect("nothing to do and no timer armed");
            assert!(next <= end, "not done within {limit:?}");
            self.now = self.now.max(next);
            for i in 0..2 {
                if self.nodes[i]
                    .engine
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    self.nodes[i].engine.handle(self.now, Input::Timeout);
                    self.drain(i);
                }
            }
        }
    }

    fn command(&mut self, i: usize, cmd: AdminCommand) -> Result<(), CommandError> {
        let id = self.nodes[i].engine.command(self.now, cmd);
        self.drain(i);
        let mut result = None;
        self.run_until(Duration::from_secs(30), |c| {
            result = c.nodes[i].events.iter().find_map(|e| match e {
                Event::CommandDone { id: d, result } if *d == id => Some(*result),
                _ => None,
            });
            result.is_some()
        });
        result.unwrap()
    }

    fn status(&self, i: usize) -> Status {
        self.nodes[i].engine.status()
    }

    fn conn(&self, i: usize) -> ConnState {
        self.status(i).peer.unwrap().conn
    }

    fn connect_both(&mut self) {
        for i in 0..2 {
            self.command(
                i,
                AdminCommand::Connect {
                    discard_my_data: false,
                },
            )
            .unwrap();
        }
    }

    fn wait_connected(&mut self) {
        self.run_until(Duration::from_secs(120), |c| {
            (0..2).all(|i| c.conn(i) == ConnState::Connected)
        });
    }

    fn request(
        &mut self,
        i: usize,
        make: impl FnOnce(BlockRequestId) -> BlockRequest,
    ) -> BlockRequestId {
        let id = BlockRequestId(self.nodes[i].next_request);
        self.nodes[i].next_request += 1;
        self.nodes[i]
            .engine
            .handle(self.now, Input::Block(make(id)));
        self.drain(i);
        id
    }

    fn wait(&mut self, i: usize, id: BlockRequestId) -> Result<Option<Bytes>, BlockError> {
        self.run_until(Duration::from_secs(30), |c| {
            c.nodes[i].completions.contains_key(&id)
        });
        self.nodes[i].completions.remove(&id).unwrap()
    }

    fn write(&mut self, i: usize, offset: u64, data: Vec<u8>) -> Result<(), BlockError> {
        let id = self.request(i, |id| BlockRequest::Write {
            id,
            offset,
            data: Bytes::from(data),
            fua: false,
        });
        self.wait(i, id).map(|_| ())
    }

    fn read(&mut self, i: usize, offset: u64, len: u32) -> Vec<u8> {
        let id = self.request(i, |id| BlockRequest::Read { id, offset, len });
        self.wait(i, id).unwrap().unwrap().to_vec()
    }

    fn data_area(&self, i: usize) -> &[u8] {
        let size = self.status(i).size_bytes as usize;
        &self.nodes[i].disk.volatile[..size]
    }

    fn handlers(&self, i: usize) -> Vec<&'static str> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Handler { name } => Some(*name),
                _ => None,
            })
            .collect()
    }
}

fn attach() -> AdminCommand {
    attach_of(SIZE)
}

/// `attach` of a disk of `bytes` with internal meta-data.
fn attach_of(bytes: u64) -> AdminCommand {
    AdminCommand::Attach(AttachParams {
        data_device_bytes: bytes,
        meta_device_bytes: bytes,
        meta_kind: MetaDiskKind::Internal,
    })
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `primary --force` on alice, connected to bob: the full sync makes the two equal.
fn full_sync_from_alice(c: &mut Cluster) {
    c.command(0, AdminCommand::Primary { force: true }).unwrap();
    c.run_until(Duration::from_secs(120), |c| {
        c.status(1).disk == DiskState::UpToDate && c.conn(0) == ConnState::Connected
    });
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// Two fresh nodes, alice filled with data and forced Primary: a full sync makes them equal.
fn synced_pair() -> Cluster {
    synced_pair_with(|_, _| {})
}

/// [`synced_pair`] of nodes `configure` configured.
fn synced_pair_with(configure: impl Fn(usize, &mut ResourceConfig)) -> Cluster {
    let mut c = Cluster::new(configure);
    let size = c.status(0).size_bytes as usize;
    let random: Vec<u8> = pattern(7, size);
    c.nodes[0].disk.poke(0, &random);
    c.connect_both();
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
    });
    assert_eq!(c.status(0).disk, DiskState::Inconsistent);
    full_sync_from_alice(&mut c);
    c
}

#[test]
fn handshake_then_full_sync_after_primary_force() {
    let c = synced_pair();
    for i in 0..2 {
        let s = c.status(i);
        assert_eq!(s.disk, DiskState::UpToDate);
        let p = s.peer.unwrap();
        assert_eq!(p.conn, ConnState::Connected);
        assert_eq!(p.peer_disk, DiskState::UpToDate);
        assert_eq!(s.out_of_sync_bytes, 0);
    }
    assert_eq!(c.status(0).role, Role::Primary);
    assert_eq!(c.status(1).peer.unwrap().peer_role, Role::Primary);
    // Both sides hold the same generation (modulo bit 0).
    let u0 = c.status(0).generation.unwrap().0;
    let u1 = c.status(1).generation.unwrap().0;
    assert_eq!(u0.current & !1, u1.current & !1);
    assert_eq!(u0.bitmap, 0);
    assert_eq!(u1.bitmap, 0);
    // The full sync moved the whole device.
    assert!(c.nodes[0].sent_bytes >= c.status(0).size_bytes);
}

#[test]
fn protocol_c_writes_reach_the_peer_and_survive_failover() {
    let mut c = synced_pair();
    for k in 0..20u64 {
        c.write(0, k * 12288, pattern(k as u8, 8192)).unwrap();
    }
    let flush = c.request(0, |id| BlockRequest::Flush { id });
    c.wait(0, flush).unwrap();
    assert_eq!(c.data_area(0), c.data_area(1));
    // The peer's disk holds them durably after the flush (barrier + peer flush).
    for k in 0..20u64 {
        let at = (k * 12288) as usize;
        assert_eq!(
            &c.nodes[1].disk.durable[at..at + 8192],
            &pattern(k as u8, 8192)[..]
        );
    }
    // Alice vanishes; bob is promoted and serves every acknowledged write.
    c.partitioned = true;
    for (conn, _) in c
        .links
        .clone()
        .keys()
        .filter(|(n, _)| *n == 0)
        .map(|(_, c)| (*c, ()))
    {
        c.route(0, PeerOutput::Close { conn });
    }
    c.partitioned = false;
    c.run_until(Duration::from_secs(30), |c| {
        c.conn(1) < ConnState::Connected
    });
    c.command(1, AdminCommand::Primary { force: false })
        .unwrap();
    for k in 0..20u64 {
        assert_eq!(c.read(1, k * 12288, 8192), pattern(k as u8, 8192));
    }
}

#[test]
fn incremental_resync_moves_only_what_changed() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.command(1, AdminCommand::Disconnect).unwrap();
    for k in 0..16u64 {
        c.write(0, k * 65536, pattern(k as u8 + 1, 4096)).unwrap();
    }
    assert_eq!(c.status(0).out_of_sync_bytes, 16 * 4096);
    let before = c.nodes[0].sent_bytes;
    let kib = |c: &Cluster, i: usize| {
        let p = c.status(i).peer.unwrap();
        (p.sent_kib, p.received_kib)
    };
    let (sent0, received1) = (kib(&c, 0).0, kib(&c, 1).1);
    c.connect_both();
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(0) == ConnState::Connected
            && c.conn(1) == ConnState::Connected
            && c.status(1).disk == DiskState::UpToDate
    });
    let moved = c.nodes[0].sent_bytes - before;
    assert!(
        (16 * 4096..16 * 4096 + 64 * 1024).contains(&moved),
        "moved {moved} bytes"
    );
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(c.status(0).out_of_sync_bytes, 0);
    // The status counters are DRBD's `ns:`/`nr:`: data, not wire bytes (headers, bitmaps,
    // handshake), so both are exactly the changed blocks.
    assert_eq!(kib(&c, 0).0 - sent0, 16 * 4);
    assert_eq!(kib(&c, 1).1 - received1, 16 * 4);
}

/// `disconnect` on a connected node tells the peer first (P_CONN_ST_CHG_REQ
/// conn=Disconnecting, as DRBD does; a kernel peer otherwise logs "short read" on the EOF): the
/// peer tears the connection down without an error and waits for a reconnect.
#[test]
fn disconnect_tells_the_peer_which_tears_down_without_an_error() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.run_until(Duration::from_secs(10), |c| {
        c.conn(0) == ConnState::StandAlone && c.conn(1) == ConnState::WfConnection
    });
    let told = c.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::Log { message, .. } if message == "the peer disconnects"));
    assert!(told, "bob was not told: {:?}", c.nodes[1].events);
    assert_eq!(c.status(1).peer.unwrap().last_error, None);
    c.connect_both();
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
    });
}

#[test]
fn a_second_primary_is_refused() {
    let mut c = synced_pair();
    assert_eq!(
        c.command(1, AdminCommand::Primary { force: false }),
        Err(CommandError::StateChange(StateChangeError::TwoPrimaries))
    );
}

#[test]
fn split_brain_is_detected_and_resolved_by_discard_my_data() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.command(1, AdminCommand::Disconnect).unwrap();
    c.command(1, AdminCommand::Primary { force: false })
        .unwrap();
    c.write(0, 0, pattern(1, 4096)).unwrap();
    c.write(1, 8192, pattern(2, 4096)).unwrap();
    c.command(0, AdminCommand::Secondary).unwrap();
    c.command(1, AdminCommand::Secondary).unwrap();
    c.connect_both();
    c.run_until(Duration::from_secs(30), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::StandAlone)
    });
    for i in 0..2 {
        assert!(c.status(i).peer.unwrap().split_brain);
        assert!(
            c.handlers(i).contains(&"split-brain"),
            "{:?}",
            c.handlers(i)
        );
    }
    c.command(
        1,
        AdminCommand::Connect {
            discard_my_data: true,
        },
    )
    .unwrap();
    c.command(
        0,
        AdminCommand::Connect {
            discard_my_data: false,
        },
    )
    .unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(0) == ConnState::Connected
            && c.conn(1) == ConnState::Connected
            && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(&c.data_area(1)[..4096], &pattern(1, 4096)[..]);
}

#[test]
fn invalidate_and_invalidate_remote_resync_everything() {
    let mut c = synced_pair();
    // Corrupt bob's copy behind DRBD's back, then invalidate it.
    c.nodes[1].disk.poke(4096, &[0xee; 4096]);
    c.command(1, AdminCommand::Invalidate).unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(1) == ConnState::Connected && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
    c.nodes[1].disk.poke(8192, &[0xdd; 4096]);
    c.command(0, AdminCommand::InvalidateRemote).unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(0) == ConnState::Connected && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
}

#[test]
fn skip_initial_sync_with_new_current_uuid_clear_bitmap() {
    let mut c = Cluster::new(|_, _| {});
    c.connect_both();
    c.wait_connected();
    c.command(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
        .unwrap();
    c.run_until(Duration::from_secs(10), |c| {
        (0..2).all(|i| c.status(i).disk == DiskState::UpToDate)
    });
    assert_eq!(c.status(1).peer.unwrap().peer_disk, DiskState::UpToDate);
    c.command(0, AdminCommand::Primary { force: false })
        .unwrap();
    c.write(0, 0, pattern(3, 4096)).unwrap();
    assert_eq!(&c.data_area(1)[..4096], &pattern(3, 4096)[..]);
}

#[test]
fn a_wrong_shared_secret_stops_both_sides_before_any_data() {
    let mut c = Cluster::new(|i, config| {
        let net = config.net.as_mut().unwrap();
        let secret: &[u8] = if i == 0 { b"right" } else { b"wrong" };
        net.cram_hmac = Some(connection::CramHmac::new("sha256", secret).unwrap());
    });
    c.connect_both();
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::StandAlone)
    });
    for i in 0..2 {
        let error = c.status(i).peer.unwrap().last_error.unwrap();
        assert!(error.contains("authentication"), "{error}");
        let logged = c.nodes[i].events.iter().any(|e| {
            matches!(e, Event::Log { level: LogLevel::Error, message } if message.contains("authentication"))
        });
        assert!(logged);
        // Only the setup packets crossed: features, challenge and response (no handshake).
        assert!(
            c.nodes[i].sent_bytes < 1024,
            "{} bytes",
            c.nodes[i].sent_bytes
        );
    }
}

#[test]
fn garbage_from_the_peer_is_a_named_protocol_error_and_the_node_reconnects() {
    let mut c = synced_pair();
    let conn = c.a_socket_of_bob();
    c.send_bob_garbage(conn);
    c.run_until(Duration::from_secs(5), |c| c.conn(1) < ConnState::Connected);
    let error = c.status(1).peer.unwrap().last_error.unwrap();
    assert!(error.contains("protocol error"), "{error}");
    // The Primary keeps serving while the peer is away, and the pair reconnects.
    c.write(0, 0, pattern(9, 4096)).unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(0) == ConnState::Connected && c.conn(1) == ConnState::Connected
    });
    assert_eq!(c.data_area(0), c.data_area(1));
}

#[test]
fn a_partition_is_noticed_by_ping_and_acknowledged_writes_survive_promotion() {
    let mut c = synced_pair();
    for k in 0..8u64 {
        c.write(0, k * 4096, pattern(k as u8 + 40, 4096)).unwrap();
    }
    c.partitioned = true;
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(0) < ConnState::Connected && c.conn(1) < ConnState::Connected
    });
    c.command(1, AdminCommand::Primary { force: false })
        .unwrap();
    for k in 0..8u64 {
        assert_eq!(c.read(1, k * 4096, 4096), pattern(k as u8 + 40, 4096));
    }
}

#[test]
fn the_dynamic_resync_controller_with_defaults_ramps_past_resync_rate_and_stays_under_c_max_rate() {
    let mut c = Cluster::new(|_, config| {
        let net = config.net.as_mut().unwrap();
        net.resync = resync_controller::ResyncControllerConfig::default();
    });
    c.connect_both();
    c.wait_connected();
    c.command(0, AdminCommand::Primary { force: true }).unwrap();
    c.run_until(Duration::from_secs(5), |c| {
        c.conn(1) == ConnState::SyncTarget
    });
    let start = c.now;
    c.run_until(Duration::from_secs(600), |c| {
        c.status(1).disk == DiskState::UpToDate
    });
    let seconds = c.now.since(start).as_secs_f64();
    let kib = c.status(0).size_bytes as f64 / 1024.0;
    let rate = kib / seconds;
    println!("dynamic controller: {kib} KiB in {seconds:.2} s = {rate:.0} KiB/s");
    // resync-rate (250 KiB/s) is only the starting point; c-max-rate (102400 KiB/s) caps it.
    assert!(rate > 1000.0, "{rate} KiB/s");
    assert!(rate <= 102_400.0 * 1.05, "{rate} KiB/s");
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// A write to a block the SyncTarget has just requested: the target holds the block for its
/// resync request, the source must answer that request before the target can write the
/// replicated data. The source's write may hold the block only until its local write is
/// done; holding it until the peer's ack deadlocked (found by the simulator).
#[test]
fn a_write_racing_a_resync_request_for_the_same_block_completes() {
    let mut c = synced_pair();
    c.command(1, AdminCommand::Invalidate).unwrap();
    c.run_until(Duration::from_secs(10), |c| {
        c.conn(1) == ConnState::SyncTarget
    });
    // From here on both directions are held: bob's resync requests and alice's write cross.
    c.partitioned = true;
    c.run_until(Duration::from_secs(1), |c| {
        c.status(1).peer.unwrap().rs_in_flight_sectors > 0
    });
    let id = c.request(0, |id| BlockRequest::Write {
        id,
        offset: 0,
        data: Bytes::from(pattern(77, 4096)),
        fua: false,
    });
    // Alice's write is submitted locally (and sent) before bob's requests reach her.
    // (Only local events are queued while partitioned: every step is alice's or bob's own.)
    while !c.disk_ops.is_empty() || !c.queue.is_empty() {
        c.step();
    }
    c.partitioned = false;
    let held: Vec<(usize, Input)> = std::mem::take(&mut c.held);
    c.queue.extend(held);
    assert_eq!(c.wait(0, id), Ok(None));
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(1) == ConnState::Connected && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(&c.data_area(1)[..4096], &pattern(77, 4096)[..]);
}

// ---- a peer that sends what no honest peer sends ----------------------------------------
// (found by the simulator's hostile-peer runs, udrbd_sim::hostile)

impl Cluster {
    /// Delivers everything in flight (locally: a partition holds the network's part).
    fn settle(&mut self) {
        while !self.disk_ops.is_empty() || !self.queue.is_empty() {
            self.step();
        }
    }

    /// The packets a partition holds for node `to`, per socket of `to`, decoded.
    fn held_packets(&self, to: usize) -> Vec<(ConnId, Packet)> {
        let mut streams: BTreeMap<ConnId, Vec<u8>> = BTreeMap::new();
        for (j, input) in &self.held {
            if let (true, Input::Peer(PeerInput::Received { conn, bytes })) = (*j == to, input) {
                streams.entry(*conn).or_default().extend_from_slice(bytes);
            }
        }
        let mut packets = Vec::new();
        for (conn, bytes) in streams {
            let mut deframer = Deframer::new(DecodeContext::new(HeaderFormat::Long));
            deframer.push(&bytes);
            while let Some(frame) = deframer.next_frame().expect("an honest stream") {
                packets.push((conn, frame.packet));
            }
        }
        packets
    }

    /// Ends the partition, dropping what it held, and has node `i` receive `packet` on its
    /// socket `conn` as if its peer had sent it.
    fn inject(&mut self, i: usize, conn: ConnId, packet: &Packet) {
        self.held.clear();
        self.partitioned = false;
        let bytes = packet.encode(0, HeaderFormat::Long).unwrap().to_vec();
        self.queue.push_back((
            i,
            Input::Peer(PeerInput::Received {
                conn,
                bytes: Bytes::from(bytes),
            }),
        ));
    }

    /// One of bob's sockets to alice.
    fn a_socket_of_bob(&self) -> ConnId {
        self.a_socket_of(1)
    }

    /// One of node `i`'s sockets to its peer.
    fn a_socket_of(&self, i: usize) -> ConnId {
        let (&(_, conn), _) = self
            .links
            .iter()
            .find(|((n, _), _)| *n == i)
            .expect("a socket of the node");
        conn
    }

    /// Executes the superblock writes held back (`hold_superblock_of`) and holds no more.
    fn release_superblock_writes(&mut self) {
        self.hold_superblock_of = None;
        self.hold_bitmap_of = None;
        self.disk_ops
            .extend(std::mem::take(&mut self.held_disk_ops));
    }

    /// Bob receives bytes that are no DRBD packet on `conn`: a protocol error that breaks
    /// the connection (the honest handshake that follows starts afresh).
    fn send_bob_garbage(&mut self, conn: ConnId) {
        self.queue.push_back((
            1,
            Input::Peer(PeerInput::Received {
                conn,
                bytes: Bytes::from_static(b"this is not a DRBD packet at all"),
            }),
        ));
    }

    /// Node `i`'s end of the socket whose other end is node `j`'s `conn`.
    fn other_end(&self, j: usize, conn: ConnId) -> ConnId {
        self.links[&(j, conn)].1
    }
}

/// The packet `to` would have received first on any socket, of the kind `want` picks.
fn first_held<T>(c: &Cluster, to: usize, want: impl Fn(&Packet) -> Option<T>) -> (ConnId, T) {
    c.held_packets(to)
        .iter()
        .find_map(|(conn, p)| want(p).map(|t| (*conn, t)))
        .expect("the packet is held")
}

/// A P_DATA_REPLY naming the block id of a write: a protocol error, and the write still
/// completes. Taking the id out of the sent table before checking its kind orphaned the
/// write: the teardown did not find its network part, so it never completed, and the next
/// link broke `invariants()` ("network parts: 0 sent, 1 awaited").
#[test]
fn a_data_reply_naming_a_write_is_a_protocol_error_and_the_write_still_completes() {
    let mut c = synced_pair();
    c.settle();
    c.partitioned = true;
    let id = c.request(0, |id| BlockRequest::Write {
        id,
        offset: 8192,
        data: Bytes::from(pattern(5, 4096)),
        fua: false,
    });
    c.settle();
    let (conn, header) = first_held(&c, 1, |p| match p {
        Packet::Data(d) => Some(d.header),
        _ => None,
    });
    let reply = Packet::DataReply(DataPacket {
        header: DataHeader {
            seq_num: 0,
            dp_flags: Default::default(),
            ..header
        },
        digest: Default::default(),
        data: Bytes::from(vec![0u8; 4096]),
    });
    let alice_end = c.other_end(1, conn);
    c.inject(0, alice_end, &reply);
    assert_eq!(c.wait(0, id), Ok(None), "the write completes");
    let error = c.status(0).peer.unwrap().last_error.unwrap();
    assert!(error.contains("P_DATA_REPLY"), "{error}");
    // The pair reconnects and resyncs the block bob never got.
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected) && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(&c.data_area(1)[8192..12288], &pattern(5, 4096)[..]);
}

/// A P_DATA_REPLY for a read served by the peer must carry the sector and length asked
/// for; one that does not is a protocol error, and the read fails rather than returning
/// those bytes (they were returned as the read's data).
#[test]
fn a_data_reply_for_the_wrong_sector_fails_the_read_instead_of_answering_it() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Detach { force: false }).unwrap();
    assert_eq!(c.status(0).disk, DiskState::Diskless);
    c.settle();
    c.partitioned = true;
    let id = c.request(0, |id| BlockRequest::Read {
        id,
        offset: 8192,
        len: 4096,
    });
    c.settle();
    let (conn, request) = first_held(&c, 1, |p| match p {
        Packet::DataRequest(r) => Some(*r),
        _ => None,
    });
    assert_eq!(request.sector, 16);
    let wrong = Packet::DataReply(DataPacket {
        header: DataHeader {
            sector: request.sector + 8,
            block_id: request.block_id,
            seq_num: 0,
            dp_flags: Default::default(),
        },
        digest: Default::default(),
        data: Bytes::from(pattern(99, 4096)),
    });
    let alice_end = c.other_end(1, conn);
    c.inject(0, alice_end, &wrong);
    assert_eq!(
        c.wait(0, id),
        Err(BlockError::Io),
        "no disk and no peer: EIO"
    );
    let error = c.status(0).peer.unwrap().last_error.unwrap();
    assert!(error.contains("sector 24"), "{error}");
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
    });
    assert_eq!(c.read(0, 8192, 4096), &c.data_area(1)[8192..12288]);
}

/// A sector whose byte offset does not fit 64 bits is a named protocol error (it overflowed
/// `sector * 512`: a panic with overflow checks, a wrapped offset without).
#[test]
fn a_sector_past_two_to_the_55_is_a_protocol_error() {
    for sector in [u64::MAX, 1 << 55, (1 << 55) - 1] {
        let mut c = synced_pair();
        c.settle();
        let conn = c.a_socket_of_bob();
        let packet = Packet::OutOfSync(udrbd_wire::BlockDesc {
            sector,
            blksize: 4096,
            pad: 0,
        });
        c.partitioned = true;
        c.inject(1, conn, &packet);
        c.run_until(Duration::from_secs(5), |c| c.conn(1) < ConnState::Connected);
        let error = c.status(1).peer.unwrap().last_error.unwrap();
        assert!(error.contains("out of range"), "sector {sector}: {error}");
    }
}

/// A Primary whose disk detached serves through its peer, and after a network break it
/// reconnects to that peer. The peer makes a new current UUID when the Primary's disk goes
/// (DRBD's "lost contact to peer's copy of the data"); its P_UUIDS arrived while the detach
/// was still draining, and the Primary, whose disk state was still UpToDate locally
/// (D_FAILED to the peer), kept exposing its old UUID: after the break it refused the peer's
/// data for ever ("Can only connect to data with current UUID").
#[test]
fn a_diskless_primary_reconnects_to_its_peer_after_a_network_break() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Detach { force: false }).unwrap();
    c.write(0, 4096, pattern(61, 4096)).unwrap();
    c.settle();
    let conn = c.a_socket_of_bob();
    c.send_bob_garbage(conn);
    c.run_until(Duration::from_secs(5), |c| c.conn(1) < ConnState::Connected);
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
    });
    assert_eq!(c.status(0).disk, DiskState::Diskless);
    assert_eq!(c.read(0, 4096, 4096), pattern(61, 4096));
}

/// A Secondary takes a smaller size from its peer (the device is the smaller disk) and grows
/// back when the peer offers its whole disk again. The shrunken size was kept (and sent as
/// the disk's size) until the next attach: the Primary then refused the peer at every
/// connect ("the peer's disk is too small"), which a hostile run's P_SIZES found.
#[test]
fn a_device_a_smaller_peer_shrank_grows_back_with_a_larger_one() {
    let mut c = synced_pair();
    let full = c.status(1).size_bytes;
    c.settle();
    let conn = c.a_socket_of_bob();
    peer_disk_resized(&mut c, 1, 1024);
    assert_eq!(
        c.status(1).size_bytes,
        1024 * 512,
        "bob took the smaller size"
    );
    // Break the connection: the honest handshake that follows offers the whole disks.
    c.send_bob_garbage(conn);
    c.run_until(Duration::from_secs(5), |c| c.conn(1) < ConnState::Connected);
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
            && c.status(1).disk == DiskState::UpToDate
            && c.status(1).out_of_sync_bytes == 0
    });
    assert_eq!(c.status(1).size_bytes, full, "bob grew back");
    assert_eq!(c.data_area(0), c.data_area(1));
    c.write(0, full - 4096, pattern(3, 4096)).unwrap();
    c.settle();
    assert_eq!(
        &c.data_area(1)[full as usize - 4096..],
        &pattern(3, 4096)[..]
    );
}

/// Node `i` (connected, settled) receives a P_SIZES of a peer disk of `sectors` sectors, as
/// a connected peer's resize sends it.
fn peer_disk_resized(c: &mut Cluster, i: usize, sectors: u64) {
    let conn = c.a_socket_of(i);
    let sizes = Packet::Sizes(udrbd_wire::Sizes {
        d_size: sectors,
        c_size: sectors,
        max_bio_size: 1 << 20,
        ..Default::default()
    });
    c.partitioned = true;
    c.inject(i, conn, &sizes);
    c.settle();
}

/// A grown device takes writes past its old size only once the superblock that records the
/// new size is durable, as DRBD's drbd_determine_dev_size writes it before the grown device
/// takes IO. Before, the superblock write went out beside the first writes past the old
/// end: after a crash in between, the node came back at its old size, with acknowledged
/// writes past its end (until a handshake grew it again; a node promoted alone never
/// served them). Node `grower` shrinks to 1024 sectors with a peer's P_SIZES, then grows
/// back to the whole disk with its superblock writes held; alice writes the last block.
fn writes_past_a_grow_wait_for_its_superblock(grower: usize) {
    let mut c = synced_pair();
    let full = c.status(grower).size_bytes;
    let full_sectors = full / 512;
    if grower == 0 {
        // A Primary is never shrunk.
        c.command(0, AdminCommand::Secondary).unwrap();
    }
    c.settle();
    peer_disk_resized(&mut c, grower, 1024);
    assert_eq!(c.status(grower).size_bytes, 1024 * 512, "shrunk");
    if grower == 0 {
        c.command(0, AdminCommand::Primary { force: false })
            .unwrap();
        c.settle();
    }
    c.hold_superblock_of = Some(grower);
    peer_disk_resized(&mut c, grower, full_sectors);
    assert_eq!(c.status(grower).size_bytes, full, "grown");
    let last = full - 4096;
    let id = c.request(0, |id| BlockRequest::Write {
        id,
        offset: last,
        data: Bytes::from(pattern(9, 4096)),
        fua: false,
    });
    c.settle();
    assert!(
        !c.held_disk_ops.is_empty(),
        "the grown size's superblock write is held"
    );
    assert!(
        !c.nodes[0].completions.contains_key(&id),
        "the write past the old size waits for the grown size to be durable"
    );
    assert_ne!(
        &c.nodes[grower].disk.volatile[last as usize..full as usize],
        &pattern(9, 4096)[..],
        "nothing past the old size is written before the grown size is durable"
    );
    // A write within the old size does not wait.
    c.write(0, 0, pattern(8, 4096)).unwrap();
    c.release_superblock_writes();
    c.wait(0, id).unwrap();
    c.settle();
    for node in 0..2 {
        assert_eq!(
            &c.nodes[node].disk.volatile[last as usize..full as usize],
            &pattern(9, 4096)[..]
        );
    }
    // The superblock on disk records the grown size: a crash now brings it back whole.
    assert_eq!(durable_la_size(&c, grower), full);
}

/// The last agreed size (bytes) in the superblock on node `i`'s disk of SIZE bytes, as a
/// crash would leave it.
fn durable_la_size(c: &Cluster, i: usize) -> u64 {
    let layout = udrbd_meta::Layout::internal(SIZE, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    let at = layout.superblock_byte() as usize;
    let sb = udrbd_meta::Superblock::decode(&c.nodes[i].disk.durable[at..at + 4096]).unwrap();
    sb.la_size_sect * 512
}

#[test]
fn a_grown_secondary_writes_past_its_old_size_once_the_grown_size_is_durable() {
    writes_past_a_grow_wait_for_its_superblock(1);
}

#[test]
fn a_grown_primary_writes_past_its_old_size_once_the_grown_size_is_durable() {
    writes_past_a_grow_wait_for_its_superblock(0);
}

/// Bob's disk replaced by a fresh one half the size, attached while StandAlone.
fn give_bob_a_smaller_disk(c: &mut Cluster) {
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.settle();
    let small = SIZE / 2;
    let mut disk = MemDisk::new(small);
    disk.create_md();
    c.nodes[1].disk = disk;
    c.command(1, attach_of(small)).unwrap();
    c.settle();
}

/// Two fresh nodes, bob's disk half the size of alice's: their first connect shrinks alice's
/// device to bob's disk (neither holds usable data yet), then alice, filled with data and
/// forced Primary, full-syncs the device to bob.
fn pair_of_different_sizes() -> Cluster {
    let mut c = Cluster::new(|_, _| {});
    let full = c.status(0).size_bytes;
    give_bob_a_smaller_disk(&mut c);
    c.nodes[0].disk.poke(0, &pattern(7, full as usize));
    c.connect_both();
    c.wait_connected();
    let size = c.status(0).size_bytes;
    assert!(size < SIZE / 2, "alice's device is bob's disk: {size}");
    assert_eq!(c.status(1).size_bytes, size);
    full_sync_from_alice(&mut c);
    c
}

/// Full syncs in both directions between disks of different sizes cover the device and end.
/// A full sync marks the whole bitmap; the larger disk's bits past the agreed size were
/// counted as left to sync, and no resync request could clear them: as SyncTarget it never
/// ended.
#[test]
fn full_syncs_between_disks_of_different_sizes_end() {
    // The first, from the larger disk: pair_of_different_sizes.
    let mut c = pair_of_different_sizes();
    let size = c.status(0).size_bytes;
    assert_eq!(c.status(0).out_of_sync_bytes, 0, "of the device");
    // Now the larger disk is the SyncTarget of a full sync.
    c.command(0, AdminCommand::Secondary).unwrap();
    c.command(0, AdminCommand::Invalidate).unwrap();
    c.run_until(Duration::from_secs(5), |c| {
        c.conn(0) == ConnState::SyncTarget
    });
    c.run_until(Duration::from_secs(120), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected) && c.status(0).disk == DiskState::UpToDate
    });
    assert_eq!(c.status(0).size_bytes, size);
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// A diskless peer (its handshake sends no disk size) changes no size: the device keeps the size
/// agreed with the peer's smaller disk (DRBD's drbd_new_dev_size keeps the last agreed one),
/// and the diskless peer's device is the Primary's current size, not its disk's. Before,
/// alice's device grew to her whole disk, and bob's disk, attached again, was refused as too
/// small (the swarm with disks of different sizes); bob exported alice's whole disk.
#[test]
fn a_diskless_peer_changes_no_size() {
    let mut c = pair_of_different_sizes();
    let agreed = c.status(0).size_bytes;
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.run_until(Duration::from_secs(30), |c| {
        c.status(1).disk == DiskState::Diskless
            && c.status(0).peer.unwrap().peer_disk == DiskState::Diskless
    });
    // A handshake with the diskless bob.
    c.command(1, AdminCommand::Disconnect).unwrap();
    c.settle();
    c.command(
        1,
        AdminCommand::Connect {
            discard_my_data: false,
        },
    )
    .unwrap();
    c.wait_connected();
    c.settle();
    assert_eq!(c.status(0).size_bytes, agreed, "alice's device");
    assert_eq!(c.status(1).size_bytes, agreed, "bob's diskless device");
    c.write(0, agreed - 4096, pattern(5, 4096)).unwrap();
    c.command(1, attach_of(SIZE / 2)).unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.status(1).disk == DiskState::UpToDate && c.status(0).out_of_sync_bytes == 0
    });
    assert_eq!(c.conn(0), ConnState::Connected);
    assert_eq!(c.status(0).peer.unwrap().last_error, None);
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// A device with usable data is never shrunk by a smaller peer disk that arrives with the
/// peer's attach or at a connect (DRBD 8.4.11's receive_sizes): "the peer's disk is too
/// small", StandAlone, the device as it was. Shrinking a Secondary there made the smaller
/// size its last agreed one, which its next attach and promotion would have served.
#[test]
fn a_device_with_data_is_not_shrunk_by_a_smaller_peer_disk() {
    let mut c = synced_pair();
    let full = c.status(0).size_bytes;
    c.command(0, AdminCommand::Secondary).unwrap();
    // The peer attaches a smaller disk while connected.
    give_bob_a_smaller_disk(&mut c);
    c.run_until(Duration::from_secs(30), |c| {
        c.conn(0) == ConnState::StandAlone
    });
    let error = c.status(0).peer.unwrap().last_error.unwrap();
    assert!(error.contains("the peer's disk is too small"), "{error}");
    assert_eq!(c.status(0).size_bytes, full);
    let warned = c.nodes[0].events.iter().any(|e| {
        matches!(e, Event::Log { message, .. }
            if message.starts_with("Considerable difference in lower level device sizes: "))
    });
    assert!(warned, "alice warned of the sizes as DRBD does");
    // And at a connect.
    c.connect_both();
    c.run_until(Duration::from_secs(30), |c| {
        c.conn(0) == ConnState::StandAlone
    });
    let error = c.status(0).peer.unwrap().last_error.unwrap();
    assert!(error.contains("the peer's disk is too small"), "{error}");
    assert_eq!(c.status(0).size_bytes, full);
    assert_eq!(c.status(0).disk, DiskState::UpToDate);
}

/// Alice's first P_SIZES to bob says `small_sectors`; the honest one is sent again right
/// before her first bitmap packet, as a replayed packet would arrive (one packet per send).
struct GrowBeforeBitmap {
    small_sectors: u64,
    honest: Option<Vec<u8>>,
    done: bool,
}

impl GrowBeforeBitmap {
    fn rewrite(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        let mut deframer = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        deframer.push(&bytes);
        let Ok(Some(frame)) = deframer.next_frame() else {
            return bytes;
        };
        match frame.packet {
            Packet::Sizes(sizes) if self.honest.is_none() => {
                self.honest = Some(bytes);
                let small = Packet::Sizes(udrbd_wire::Sizes {
                    d_size: self.small_sectors,
                    c_size: self.small_sectors,
                    ..sizes
                });
                small.encode(0, HeaderFormat::Long).unwrap().to_vec()
            }
            Packet::Bitmap(_) | Packet::CompressedBitmap(_) if !self.done => {
                self.done = true;
                let mut both = self.honest.clone().expect("P_SIZES came first");
                both.extend_from_slice(&bytes);
                both
            }
            _ => bytes,
        }
    }
}

/// The size a node agreed with a smaller peer is its last agreed size (la_size_sect, in its
/// superblock), and an attach while StandAlone starts from it, as DRBD's: the device stays
/// the smaller one until a peer agrees on more. Before, the attach offered the whole disk
/// again: alice, promoted StandAlone, exposed a device her peer could not hold, and refused
/// that peer at the next connect ("the peer's disk is too small").
#[test]
fn an_attach_keeps_the_size_last_agreed_with_a_smaller_peer() {
    let mut c = pair_of_different_sizes();
    let agreed = c.status(0).size_bytes;
    c.settle();
    let la_on_disk = |c: &Cluster| durable_la_size(c, 0);
    assert_eq!(
        la_on_disk(&c),
        agreed,
        "the agreed size is in alice's superblock"
    );

    // Alice alone: detach, attach, promote. Her device is still the agreed size.
    c.command(0, AdminCommand::Secondary).unwrap();
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.command(0, AdminCommand::Detach { force: false }).unwrap();
    c.settle();
    c.command(0, attach()).unwrap();
    c.run_until(Duration::from_secs(30), |c| {
        c.status(0).disk == DiskState::UpToDate
    });
    assert_eq!(
        c.status(0).size_bytes,
        agreed,
        "the attach kept the agreed size"
    );
    c.command(0, AdminCommand::Primary { force: false })
        .unwrap();
    c.write(0, agreed - 4096, pattern(9, 4096)).unwrap();

    // Her peer, still as small, is taken back.
    c.command(
        0,
        AdminCommand::Connect {
            discard_my_data: false,
        },
    )
    .unwrap();
    c.run_until(Duration::from_secs(120), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
            && c.status(1).disk == DiskState::UpToDate
            && c.status(0).out_of_sync_bytes == 0
    });
    assert_eq!(c.status(0).peer.unwrap().last_error, None);
    assert_eq!(c.status(1).size_bytes, agreed);
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(la_on_disk(&c), agreed);
}

/// A P_SIZES that grows the device after the handshake chose the sync direction and before
/// the peer's bitmap: the bitmap covers the new size. The receiver was made on entering
/// WFBitMapT, for the old size, and the first bitmap packet hit its "bitmap changed size"
/// assertion: a panic from what a peer sent (hostile seed 61082: a tampered P_SIZES shrank
/// the device, the replayed honest one grew it back).
#[test]
fn a_device_that_grows_before_the_peers_bitmap_takes_the_bitmap_for_the_new_size() {
    let mut c = synced_pair();
    let full = c.status(1).size_bytes;
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.command(1, AdminCommand::Disconnect).unwrap();
    c.write(0, 65536, pattern(7, 4096)).unwrap();
    // Bob's disk holds no usable data, so the small size may shrink his device at the connect
    // (one with data refuses it: a_device_with_data_is_not_shrunk_by_a_smaller_peer_disk).
    c.command(1, AdminCommand::Invalidate).unwrap();
    c.settle();
    assert_eq!(c.status(1).disk, DiskState::Inconsistent);
    c.grow_before_bitmap = Some(GrowBeforeBitmap {
        small_sectors: 1024,
        honest: None,
        done: false,
    });
    let before = c.nodes[1].events.len();
    c.connect_both();
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected) && c.status(1).disk == DiskState::UpToDate
    });
    let log: Vec<&str> = c.nodes[1].events[before..]
        .iter()
        .filter_map(|e| match e {
            Event::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        log.iter()
            .filter(|m| m.starts_with("Handshake successful"))
            .count(),
        1,
        "one connection, no protocol error: {log:#?}"
    );
    let trick = c.grow_before_bitmap.take().unwrap();
    assert!(
        trick.done,
        "bob's bitmap exchange came after the grown size"
    );
    assert!(
        log.iter().any(|m| m.contains("-> 1024 sectors")),
        "bob took the smaller size first: {log:#?}"
    );
    assert_eq!(c.status(1).size_bytes, full, "bob grew back");
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(&c.data_area(1)[65536..69632], &pattern(7, 4096)[..]);
}

// ---- pause-sync / resume-sync --------------------------------------------------------------

impl Cluster {
    /// Lets `d` of simulated time pass (timers fire, nothing else is asked of the nodes).
    fn idle_for(&mut self, d: Duration) {
        let end = self.now.plus(d);
        self.run_until(d + Duration::from_secs(2), |c| c.now >= end);
    }

    fn out_of_sync(&self, i: usize) -> u64 {
        self.status(i).out_of_sync_bytes
    }
}

/// `pause-sync` (DRBD's user_isp) holds a resync that starts while it is in force on both
/// sides (PausedSyncS / PausedSyncT, the peer paused by our P_STATE's user_isp), refuses to be
/// set twice (ERR_PAUSE_IS_SET), and `resume-sync` on the other side names the peer's pause
/// (ERR_PIC_PEER_DEP); the resync runs once no side pauses it.
#[test]
fn pause_sync_holds_a_resync_on_both_sides_until_both_resume() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.settle();
    for i in 0..64u64 {
        c.write(0, i * 65536, pattern(i as u8, 4096)).unwrap();
    }
    c.command(1, AdminCommand::PauseSync).unwrap();
    assert_eq!(
        c.command(1, AdminCommand::PauseSync),
        Err(CommandError::PauseIsSet)
    );
    c.command(
        0,
        AdminCommand::Connect {
            discard_my_data: false,
        },
    )
    .unwrap();
    c.run_until(Duration::from_secs(30), |c| {
        c.conn(0) == ConnState::PausedSyncS && c.conn(1) == ConnState::PausedSyncT
    });
    c.idle_for(Duration::from_secs(5));
    assert_eq!(c.conn(0), ConnState::PausedSyncS);
    assert_eq!(c.conn(1), ConnState::PausedSyncT);
    assert_eq!(c.out_of_sync(0), 64 * 4096, "nothing resynced while paused");
    assert_eq!(c.out_of_sync(1), 64 * 4096);
    let (a, b) = (c.status(0).peer.unwrap(), c.status(1).peer.unwrap());
    assert!(!a.sync_paused_by_user && a.sync_paused_by_peer);
    assert!(b.sync_paused_by_user && !b.sync_paused_by_peer);
    assert_eq!(
        c.command(0, AdminCommand::ResumeSync),
        Err(CommandError::PausedByPeer)
    );
    // Alice pauses too: bob's resume leaves it paused by alice.
    c.command(0, AdminCommand::PauseSync).unwrap();
    c.command(1, AdminCommand::ResumeSync).unwrap();
    c.idle_for(Duration::from_secs(2));
    assert_eq!(c.conn(0), ConnState::PausedSyncS);
    assert_eq!(c.conn(1), ConnState::PausedSyncT);
    assert_eq!(c.out_of_sync(1), 64 * 4096);
    c.command(0, AdminCommand::ResumeSync).unwrap();
    c.run_until(Duration::from_secs(30), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected) && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.out_of_sync(0), 0);
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(
        c.command(0, AdminCommand::ResumeSync),
        Err(CommandError::PauseIsClear)
    );
    // `down` ends a pause-sync, as DRBD's deletes the device's state with it.
    c.command(1, AdminCommand::PauseSync).unwrap();
    c.command(1, AdminCommand::Down).unwrap();
    assert!(!c.status(1).peer.unwrap().sync_paused_by_user);
}

/// A running resync paused on its source stops where it is (the target sends no new
/// requests), and its paused time is left out of its elapsed time (DRBD's rs_paused); it
/// ends after `resume-sync`.
#[test]
fn a_running_resync_paused_on_the_source_stops_and_resumes() {
    // 1 MiB/s: a full sync of the 8 MiB runs for about 8 s.
    let mut c = synced_pair_with(|_, config| {
        config.net.as_mut().unwrap().resync.resync_rate_kib_per_sec = 1024;
    });
    c.command(0, AdminCommand::InvalidateRemote).unwrap();
    c.run_until(Duration::from_secs(30), |c| {
        c.conn(1) == ConnState::SyncTarget && c.out_of_sync(1) < SIZE / 2
    });
    c.command(0, AdminCommand::PauseSync).unwrap();
    c.run_until(Duration::from_secs(5), |c| {
        c.conn(1) == ConnState::PausedSyncT
    });
    c.idle_for(Duration::from_secs(1));
    let left = c.out_of_sync(1);
    assert!(left > 0);
    c.idle_for(Duration::from_secs(10));
    assert_eq!(c.out_of_sync(1), left, "the paused target requested more");
    assert_eq!(c.out_of_sync(0), left);
    c.command(0, AdminCommand::ResumeSync).unwrap();
    c.run_until(Duration::from_secs(5), |c| {
        c.conn(1) == ConnState::SyncTarget
    });
    let resync = c.status(1).peer.unwrap().resync.unwrap();
    assert!(
        resync.paused_ms >= 10_000,
        "paused {} ms of {} ms",
        resync.paused_ms,
        resync.elapsed_ms
    );
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected) && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
}

// ---- online verify ---------------------------------------------------------------------

impl Cluster {
    fn logs(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Log { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// `disconnect`, then `connect` on node `i` (both commands done).
    fn reconnect(&mut self, i: usize) {
        self.command(i, AdminCommand::Disconnect).unwrap();
        self.settle();
        self.command(
            i,
            AdminCommand::Connect {
                discard_my_data: false,
            },
        )
        .unwrap();
    }

    fn logged(&self, i: usize, text: &str) -> bool {
        self.logs(i).iter().any(|m| m.contains(text))
    }

    /// Runs `verify` on node `i` and waits until both nodes are Connected again.
    fn verify(&mut self, i: usize, start_sector: Option<u64>, stop_sector: Option<u64>) {
        self.command(
            i,
            AdminCommand::Verify {
                start_sector,
                stop_sector,
            },
        )
        .unwrap();
        assert_eq!(self.conn(i), ConnState::VerifyS);
        self.run_until(Duration::from_secs(60), |c| {
            (0..2).all(|j| c.conn(j) == ConnState::Connected)
        });
    }
}

fn with_verify_alg(alg: &str) -> impl Fn(usize, &mut ResourceConfig) + '_ {
    move |_, config| {
        config.net.as_mut().unwrap().verify_alg = Some(VerifyAlg::new(alg).unwrap());
    }
}

fn with_csums_alg(alg: &str) -> impl Fn(usize, &mut ResourceConfig) + '_ {
    move |_, config| {
        config.net.as_mut().unwrap().csums_alg = Some(VerifyAlg::new(alg).unwrap());
    }
}

/// csums-alg: the SyncTarget asks with the digest of its own block (P_CSUM_RS_REQUEST), and
/// the source answers a block it holds the same with P_RS_IS_IN_SYNC, the others with their
/// data. A full sync onto a disk that holds half the data already moves only the other
/// half (and the three blocks changed in the first), the disks end equal, and both sides
/// log DRBD's "had equal checksums" line.
#[test]
fn a_resync_with_csums_alg_sends_only_the_blocks_whose_digests_differ() {
    let mut c = Cluster::new(with_csums_alg("sha1"));
    let size = c.status(0).size_bytes as usize;
    let data = pattern(7, size);
    c.nodes[0].disk.poke(0, &data);
    let half = size / 2 / 4096 * 4096;
    c.nodes[1].disk.poke(0, &data[..half]);
    for block in [3usize, 100, 200] {
        c.nodes[1].disk.poke(block * 4096 + 17, b"differs");
    }
    c.connect_both();
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
    });
    full_sync_from_alice(&mut c);
    // One digest covers a whole request (up to 128 KiB, as DRBD merges adjacent bits): a
    // block that differs has the rest of its request sent too.
    let blocks = size.div_ceil(4096) as u64;
    let same = (half / 4096 - 3) as u64;
    let line = c
        .logs(0)
        .into_iter()
        .find(|l| l.contains("had equal checksums"))
        .expect("the source logs the checksums' result");
    let kib: Vec<u64> = line
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [percent, eliminated, transferred, total] = kib[..] else {
        panic!("{line}");
    };
    assert_eq!(
        (total, eliminated + transferred, percent),
        (blocks * 4, blocks * 4, eliminated * 100 / total),
        "{line}"
    );
    assert!(
        (same * 4 - 4 * 128..=same * 4).contains(&eliminated),
        "{line}: {same} blocks are the same"
    );
    assert!(
        c.logged(1, &line),
        "the target logs it too: {:?}",
        c.logs(1)
    );
    // DRBD's `ns:` on the source and `nr:` on the target count the data moved.
    let sent = c.status(0).peer.unwrap().sent_kib;
    let received = c.status(1).peer.unwrap().received_kib;
    assert_eq!((sent, received), (transferred, transferred));
    assert_eq!((c.out_of_sync(0), c.out_of_sync(1)), (0, 0));
}

/// Nodes with different csums-algs do not connect ("Different csums-alg settings",
/// StandAlone), as DRBD's receive_SyncParam refuses them.
#[test]
fn nodes_with_different_csums_algs_do_not_connect() {
    let mut c = Cluster::new(|i, config| {
        if i == 0 {
            with_csums_alg("crc32c")(i, config);
        }
    });
    c.connect_both();
    c.run_until(Duration::from_secs(30), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::StandAlone)
    });
    let error = c.status(0).peer.unwrap().last_error.unwrap();
    assert!(
        error.contains("Different csums-alg settings. me=\"crc32c\" peer=\"\""),
        "{error}"
    );
}

/// `verify` compares every block of the pair: nothing on an in-sync pair; blocks changed
/// behind the replication's back (written to one backing disk directly) are found, logged
/// as runs, marked on both nodes, reported to the out-of-sync handler, and resynced by the
/// next connection.
#[test]
fn online_verify_finds_exactly_the_blocks_that_differ_and_a_reconnect_resyncs_them() {
    let mut c = synced_pair_with(with_verify_alg("crc32c"));
    c.verify(0, None, None);
    assert!(c.logged(0, "Starting Online Verify from sector 0"));
    assert!(c.logged(1, "Online Verify start sector: 0"));
    assert!(c.logged(0, "Online verify done"), "{:?}", c.logs(0));
    assert!(c.logged(1, "Online verify done"), "{:?}", c.logs(1));
    assert_eq!((c.out_of_sync(0), c.out_of_sync(1)), (0, 0));
    assert!(c.handlers(0).is_empty() && c.handlers(1).is_empty());

    // Behind the replication's back: blocks 10 and 11 and block 1000 of bob's disk.
    c.nodes[1].disk.poke(10 * 4096, &pattern(99, 8192));
    c.nodes[1].disk.poke(1000 * 4096 + 100, b"bit rot");
    c.verify(1, None, None);
    for i in 0..2 {
        assert_eq!(c.out_of_sync(i), 3 * 4096, "node {i}: {:?}", c.logs(i));
        assert!(c.logged(i, "Online verify found 3 4k block out of sync!"));
        assert!(c.logged(i, "Out of sync: start=80, size=16 (sectors)"));
        assert!(c.logged(i, "Out of sync: start=8000, size=8 (sectors)"));
        assert_eq!(c.handlers(i), ["out-of-sync"]);
        assert_eq!(c.status(i).disk, DiskState::UpToDate);
    }
    assert_ne!(c.data_area(0), c.data_area(1));
    // DRBD's recipe: disconnect and connect; the Primary's new data generation makes the
    // reconnect resync the marked blocks.
    c.reconnect(0);
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected && c.out_of_sync(i) == 0)
            && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(c.data_area(0), c.data_area(1));
    c.verify(0, None, None);
    assert_eq!((c.out_of_sync(0), c.out_of_sync(1)), (0, 0));
}

/// Application writes during a verify, from either side: a write to a block whose digest
/// is being compared waits for the comparison, and both sides read blocks in the order of
/// the data stream, so a verify of an in-sync pair under writes finds nothing.
#[test]
fn a_verify_under_writes_finds_an_in_sync_pair_in_sync() {
    for source in [0, 1] {
        let mut c = synced_pair_with(|i, config| {
            with_verify_alg("sha1")(i, config);
            // 2 MiB/s: the verify of 8 MiB runs for about 4 s.
            config.net.as_mut().unwrap().resync.resync_rate_kib_per_sec = 2048;
        });
        let id = c.nodes[source].engine.command(
            c.now,
            AdminCommand::Verify {
                start_sector: None,
                stop_sector: None,
            },
        );
        c.drain(source);
        let mut n = 0u64;
        let mut seen_verify = false;
        while !seen_verify || (0..2).any(|i| c.conn(i) != ConnState::Connected) {
            seen_verify |= c.conn(source) == ConnState::VerifyS;
            // Right after a step of the verify sent its requests.
            c.run_until(Duration::from_secs(5), |c| {
                c.conn(source) != ConnState::VerifyS || c.status(source).peer.unwrap().pending > 0
            });
            // Writes just ahead of the verify's position and behind it, in flight together.
            let position = c
                .status(source)
                .peer
                .unwrap()
                .resync
                .and_then(|r| r.verify)
                .map_or(0, |v| v.position);
            let near = (position * 512 / 4096 + n % 7) % (SIZE / 4096 - 64);
            let a = c.request(0, |id| BlockRequest::Write {
                id,
                offset: near * 4096,
                data: Bytes::from(pattern(n as u8, 4096)),
                fua: false,
            });
            let b = c.request(0, |id| BlockRequest::Write {
                id,
                offset: ((n * 37) % (SIZE / 4096 - 64)) * 4096,
                data: Bytes::from(pattern(n as u8 ^ 0x55, 8192)),
                fua: false,
            });
            c.wait(0, a).unwrap();
            c.wait(0, b).unwrap();
            n += 1;
            assert!(
                n < 100_000,
                "the verify did not end: {:?} {:?} {:?}",
                c.conn(0),
                c.conn(1),
                c.status(source).peer.unwrap().resync
            );
        }
        assert!(
            c.nodes[source]
                .events
                .iter()
                .any(|e| matches!(e, Event::CommandDone { id: d, result: Ok(()) } if *d == id))
        );
        assert!(n > 20, "only {n} writes during the verify");
        c.settle();
        assert_eq!(c.data_area(0), c.data_area(1));
        for i in 0..2 {
            assert_eq!(
                c.out_of_sync(i),
                0,
                "source {source}, node {i}: {:?}",
                c.logs(i)
            );
            assert!(c.logged(i, "Online verify done"));
        }
    }
}

/// `--stop` ends the verify at its stop sector on both nodes (the target learns it from the
/// source's P_STATE); the next verify starts there, and one cut short by a disconnect
/// resumes where it got to, as DRBD's ov_start_sector.
#[test]
fn a_verify_stops_at_its_stop_sector_and_the_next_one_resumes_where_the_last_stopped() {
    let mut c = synced_pair_with(|i, config| {
        with_verify_alg("sha256")(i, config);
        config.net.as_mut().unwrap().resync.resync_rate_kib_per_sec = 1024;
    });
    c.verify(0, None, Some(1024));
    assert!(c.logged(0, "Online verify done"));
    assert!(c.logged(1, "Online verify done"));
    // The next one continues at sector 1024; its status says where it is.
    c.command(
        0,
        AdminCommand::Verify {
            start_sector: None,
            stop_sector: None,
        },
    )
    .unwrap();
    assert!(c.logged(0, "Starting Online Verify from sector 1024"));
    c.run_until(Duration::from_secs(10), |c| {
        c.conn(1) == ConnState::VerifyT
            && c.status(1).peer.unwrap().resync.is_some_and(|r| {
                r.verify.is_some_and(|v| v.start_sector == 1024) && r.left_sectors < r.total_sectors
            })
    });
    assert!(c.logged(1, "Online Verify start sector: 1024"));
    let r = c.status(0).peer.unwrap().resync.unwrap();
    let v = r.verify.unwrap();
    assert_eq!(
        r.total_sectors,
        c.status(0).size_bytes.div_ceil(4096) * 8 - 1024
    );
    assert_eq!((v.start_sector, v.stop_sector), (1024, u64::MAX));
    c.run_until(Duration::from_secs(30), |c| {
        c.status(0)
            .peer
            .unwrap()
            .resync
            .and_then(|r| r.verify)
            .is_some_and(|v| v.position >= 4096)
    });
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.settle();
    let reached = c
        .logs(0)
        .iter()
        .find_map(|m| {
            m.strip_prefix("Online Verify reached sector ")
                .map(|s| s.parse::<u64>().unwrap())
        })
        .expect("the aborted verify logs where it got to");
    assert!(
        (1024..c.status(0).size_bytes / 512).contains(&reached),
        "{reached}"
    );
    assert_eq!(reached % 8, 0);
    c.command(
        0,
        AdminCommand::Connect {
            discard_my_data: false,
        },
    )
    .unwrap();
    c.wait_connected();
    c.verify(0, None, None);
    assert!(c.logged(0, &format!("Starting Online Verify from sector {reached}")));
    // A verify that reached the end starts again at 0.
    c.command(
        0,
        AdminCommand::Verify {
            start_sector: None,
            stop_sector: Some(8),
        },
    )
    .unwrap();
    let starts = c
        .logs(0)
        .into_iter()
        .filter(|m| m.starts_with("Starting Online Verify"))
        .collect::<Vec<_>>();
    assert_eq!(
        starts.last().unwrap(),
        "Starting Online Verify from sector 0"
    );
    c.wait_connected();
}

/// What `verify` refuses, with DRBD's codes: no verify-alg (SS_NO_VERIFY_ALG), no
/// connection, a resync running; and two nodes with
/// different verify-algs do not connect ("Different verify-alg settings", StandAlone).
#[test]
fn verify_is_refused_without_a_verify_alg_a_connection_or_while_a_resync_runs() {
    let err = |e| Err(CommandError::StateChange(e));
    let verify = AdminCommand::Verify {
        start_sector: None,
        stop_sector: None,
    };
    let mut c = synced_pair();
    assert_eq!(
        c.command(1, verify.clone()),
        err(StateChangeError::NoVerifyAlg)
    );
    assert_eq!(c.conn(1), ConnState::Connected);

    let mut c = synced_pair_with(with_verify_alg("crc32c"));
    c.command(0, AdminCommand::InvalidateRemote).unwrap();
    assert_eq!(
        c.command(0, verify.clone()),
        err(StateChangeError::ResyncRunning)
    );
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
    });
    c.command(1, AdminCommand::Disconnect).unwrap();
    assert_eq!(
        c.command(1, verify.clone()),
        err(StateChangeError::NeedConnection)
    );

    let mut c = Cluster::new(|i, config| {
        with_verify_alg(["crc32c", "sha1"][i])(i, config);
    });
    c.connect_both();
    c.run_until(Duration::from_secs(30), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::StandAlone)
    });
    let error = c.status(0).peer.unwrap().last_error.unwrap();
    assert!(
        error.contains("Different verify-alg settings. me=\"crc32c\" peer=\"sha1\""),
        "{error}"
    );
}

// ---- adjust --------------------------------------------------------------------------------

/// `adjust`'s engine side: a new resync-rate takes effect on a resync under way (on the
/// target, which pulls); a handshake option (protocol, verify-alg) is refused while connected,
/// naming the options, and taken while StandAlone.
#[test]
fn net_options_change_at_once_and_handshake_options_wait_for_a_new_connection() {
    let mut c = synced_pair_with(|_, config| {
        config.net.as_mut().unwrap().resync.resync_rate_kib_per_sec = 256;
    });
    c.command(0, AdminCommand::InvalidateRemote).unwrap();
    c.idle_for(Duration::from_secs(2));
    assert_eq!(c.conn(1), ConnState::SyncTarget);
    assert!(
        c.out_of_sync(1) > SIZE / 2,
        "256 KiB/s: most of 8 MiB is left"
    );
    let mut net = c.nodes[1].engine.config().net.clone().unwrap();
    net.resync.resync_rate_kib_per_sec = 400_000;
    c.nodes[1]
        .engine
        .change_net_options(c.now, net.clone())
        .unwrap();
    c.drain(1);
    c.run_until(Duration::from_secs(3), |c| {
        c.conn(1) == ConnState::Connected && c.status(1).disk == DiskState::UpToDate
    });
    assert_eq!(
        c.nodes[1]
            .engine
            .config()
            .net
            .as_ref()
            .unwrap()
            .resync
            .resync_rate_kib_per_sec,
        400_000
    );
    let mut handshake = net.clone();
    handshake.protocol = udrbd_wire::WireProtocol::A;
    handshake.verify_alg = Some(VerifyAlg::Crc32c);
    assert_eq!(
        c.nodes[1]
            .engine
            .change_net_options(c.now, handshake.clone()),
        Err(vec!["protocol", "verify-alg"])
    );
    c.command(1, AdminCommand::Disconnect).unwrap();
    c.nodes[1]
        .engine
        .change_net_options(c.now, handshake)
        .unwrap();
    c.drain(1);
    let config = c.nodes[1].engine.config().net.clone().unwrap();
    assert_eq!(config.verify_alg, Some(VerifyAlg::Crc32c));
}

/// Swarm seed 2636: bob's disk finished attaching while the connection was being set up,
/// after bob had sent its handshake without P_UUIDS (a disk still attaching has none to
/// send). Bob's handshake made it SyncSource, and alice took its P_SYNC_UUID without ever
/// having bob's UUIDs: at the end of the resync she could not take the source's current UUID,
/// and two in-sync disks kept unrelated generations ("Unrelated data" at the next
/// connection). A P_SYNC_UUID from a peer whose UUIDs are unknown now reconnects, and the new
/// handshake has them.
#[test]
fn a_disk_that_attaches_during_the_handshake_leaves_related_generations() {
    attach_during_the_handshake(false);
}

/// As [`a_disk_that_attaches_during_the_handshake_leaves_related_generations`], with both
/// disks grown and their meta-data moved by a StandAlone `resize` first, so that each disk
/// holds more than the device: the pair ends in sync at one size, the grown one, which the
/// reconnect's handshake (bob's disk offered this time) agrees on.
#[test]
fn a_disk_that_attaches_during_the_handshake_with_grown_disks_ends_at_one_size() {
    attach_during_the_handshake(true);
}

impl Cluster {
    /// Node `i` (StandAlone, detached) attaches with `attach` while the two connect: its
    /// attach waits for its superblock writes until the connection is in WFReportParams;
    /// then the peer's handshake is held back while the attach completes (so that it
    /// completes in WFReportParams, after its node sent its handshake without a disk), and
    /// delivered after.
    fn attach_during_the_handshake(&mut self, i: usize, attach: AdminCommand) {
        let result = self.command_during_the_handshake(i, attach);
        assert_eq!(result, Ok(()));
    }

    /// Node `i` runs `cmd`, which writes its superblock, while the two connect: the
    /// superblock writes wait until the connection is in WFReportParams; then the peer's
    /// handshake is held back while the command completes there, and delivered after.
    fn command_during_the_handshake(
        &mut self,
        i: usize,
        cmd: AdminCommand,
    ) -> Result<(), CommandError> {
        self.hold_superblock_of = Some(i);
        let attach = self.nodes[i].engine.command(self.now, cmd);
        self.drain(i);
        for j in 0..2 {
            let connect = AdminCommand::Connect {
                discard_my_data: false,
            };
            self.nodes[j].engine.command(self.now, connect);
            self.drain(j);
        }
        self.run_until(Duration::from_secs(30), |c| {
            c.conn(i) == ConnState::WfReportParams
        });
        let in_flight = std::mem::take(&mut self.queue);
        self.partitioned = true;
        self.release_superblock_writes();
        let done = |c: &Cluster| {
            c.nodes[i].events.iter().find_map(|e| match e {
                Event::CommandDone { id, result } if *id == attach => Some(*result),
                _ => None,
            })
        };
        self.run_until(Duration::from_secs(30), |c| done(c).is_some());
        assert_eq!(self.conn(i), ConnState::WfReportParams);
        self.partitioned = false;
        let held = std::mem::take(&mut self.held);
        self.queue.extend(in_flight);
        self.queue.extend(held);
        done(self).expect("done")
    }
}

fn attach_during_the_handshake(grown: bool) {
    let mut c = synced_pair();
    let size = c.status(0).size_bytes;
    if grown {
        for i in 0..2 {
            c.command(i, AdminCommand::Disconnect).unwrap();
            c.nodes[i].disk.grow(GROWN);
            c.command(i, resize(false, false)).unwrap();
        }
        c.connect_both();
        c.wait_connected();
    }
    // Bob moves on alone as Primary, then leaves with its disk.
    c.command(0, AdminCommand::Secondary).unwrap();
    c.command(1, AdminCommand::Primary { force: false })
        .unwrap();
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.settle();
    c.write(1, 12 * 4096, pattern(42, 4096)).unwrap();
    c.command(1, AdminCommand::Secondary).unwrap();
    c.command(1, AdminCommand::Disconnect).unwrap();
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.attach_during_the_handshake(1, attach_of(if grown { GROWN } else { SIZE }));
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected && c.out_of_sync(i) == 0)
            && (0..2).all(|i| c.status(i).disk == DiskState::UpToDate)
    });
    assert_eq!(c.data_area(0), c.data_area(1));
    // Grown, the reconnect (below) offers bob's whole disk: both grow, both the same.
    let size = if grown { grown_usable_bytes() } else { size };
    assert_eq!(
        (c.status(0).size_bytes, c.status(1).size_bytes),
        (size, size)
    );
    // The target took the source's current UUID at the end of the resync.
    let current = |c: &Cluster, i: usize| c.status(i).generation.unwrap().0.current & !1;
    assert_eq!(
        current(&c, 0),
        current(&c, 1),
        "the in-sync disks' generations"
    );
    // So a new connection finds the two in sync, without a resync.
    let resyncs = |c: &Cluster| {
        c.logs(1)
            .iter()
            .filter(|m| m.starts_with("Began resync"))
            .count()
    };
    let before = resyncs(&c);
    c.reconnect(0);
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
            || c.status(0).peer.unwrap().last_error.is_some()
    });
    assert_eq!(c.status(0).peer.unwrap().last_error, None);
    assert_eq!((c.out_of_sync(0), c.out_of_sync(1)), (0, 0));
    assert_eq!(resyncs(&c), before, "no resync between in-sync disks");
}

/// A disk that attaches during the handshake, its P_SIZES gone out without it, agrees on the
/// peer's device size as a diskless node does: when the peer's device grew past this disk's
/// last agreed size (this disk grown and its meta-data moved, but its `resize` refused to
/// grow StandAlone), the device grows to it and the resync covers the grown part. Before, the
/// device stayed at its old size while the bitmap exchange covered the agreed one: the
/// target's resync never asked for the grown part and never ended (swarm seed 14721).
#[test]
fn a_disk_that_attaches_during_the_handshake_grows_to_the_peers_larger_device() {
    let mut c = synced_pair();
    let old = c.status(0).size_bytes;
    c.disconnect_and_grow_both_disks();
    // Alice grows her device alone; bob's resize moves his meta-data but keeps his size.
    c.command(0, resize(true, false)).unwrap();
    c.command(1, resize(false, false)).unwrap();
    c.settle();
    let new = grown_usable_bytes();
    assert_eq!((c.status(0).size_bytes, c.status(1).size_bytes), (new, old));
    c.write(0, new - 4096, pattern(9, 4096)).unwrap();
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.attach_during_the_handshake(1, attach_of(GROWN));
    c.wait_in_sync_at(Some(new));
    assert_eq!(c.data_area(0), c.data_area(1));
    assert_eq!(
        &c.nodes[1].disk.volatile[(new - 4096) as usize..new as usize],
        &pattern(9, 4096)[..]
    );
}

/// Two resyncs on one connection, the second started by `invalidate` (no handshake in
/// between): each ends with the two UUID sets equal, as DRBD's drbd_resync_finished makes
/// what a node knows of its peer's UUIDs its own. Before, the second target took the peer's
/// UUIDs of the handshake, from before the first resync: the pair, in sync, held different
/// current UUIDs, and the next connect found a split brain (swarm seed 12492).
#[test]
fn a_resync_started_by_invalidate_after_another_ends_with_equal_generations() {
    let mut c = synced_pair();
    // Alice (Primary) writes alone: a new current UUID, which bob takes in the resync.
    c.command(0, AdminCommand::Disconnect).unwrap();
    c.settle();
    c.write(0, 3 * 4096, pattern(3, 4096)).unwrap();
    c.connect_both();
    c.wait_in_sync_at(None);
    // Then alice's own data is invalidated: bob is the source of a full sync.
    c.command(0, AdminCommand::Invalidate).unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.logged(0, "Resync done (SyncTarget)")
    });
    c.wait_in_sync_at(None);
    assert_eq!(c.data_area(0), c.data_area(1));
    let current = |c: &Cluster, i: usize| c.status(i).generation.unwrap().0.current & !1;
    assert_eq!(
        current(&c, 0),
        current(&c, 1),
        "the in-sync disks' generations"
    );
    // A new connection finds the two related and in sync: no split brain.
    c.reconnect(0);
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected)
            || (0..2).any(|i| c.status(i).peer.unwrap().last_error.is_some())
    });
    for i in 0..2 {
        assert_eq!(c.status(i).peer.unwrap().last_error, None, "node {i}");
        assert!(!c.status(i).peer.unwrap().split_brain, "node {i}");
    }
    c.wait_in_sync_at(None);
    assert_eq!(c.data_area(0), c.data_area(1));
}

// ---- online resize ---------------------------------------------------------------------

const GROWN: u64 = 16 << 20;

impl Cluster {
    /// Both nodes disconnect, and both backing disks grow to [`GROWN`] (an lvextend).
    fn disconnect_and_grow_both_disks(&mut self) {
        for i in 0..2 {
            self.command(i, AdminCommand::Disconnect).unwrap();
            self.nodes[i].disk.grow(GROWN);
        }
    }

    /// Waits until both nodes are Connected, UpToDate and in sync (and of `size` bytes).
    fn wait_in_sync_at(&mut self, size: Option<u64>) {
        self.run_until(Duration::from_secs(60), |c| {
            (0..2).all(|i| {
                let s = c.status(i);
                c.conn(i) == ConnState::Connected
                    && s.disk == DiskState::UpToDate
                    && s.out_of_sync_bytes == 0
                    && size.is_none_or(|size| s.size_bytes == size)
            })
        });
    }
}

fn resize(assume_peer_has_space: bool, assume_clean: bool) -> AdminCommand {
    AdminCommand::Resize {
        assume_peer_has_space,
        assume_clean,
        size_sect: None,
    }
}

/// The superblock at the end of node `i`'s disk as a crash would leave it, checked against
/// the internal layout for the disk's current size.
fn durable_superblock(c: &Cluster, i: usize) -> udrbd_meta::Superblock {
    let disk = &c.nodes[i].disk.durable;
    let layout =
        udrbd_meta::Layout::internal(disk.len() as u64, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    let at = layout.superblock_byte() as usize;
    let sb = udrbd_meta::Superblock::decode(&disk[at..at + 4096]).unwrap();
    sb.check_layout(&layout).unwrap();
    sb
}

fn grown_usable_bytes() -> u64 {
    let layout = udrbd_meta::Layout::internal(GROWN, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    (layout.max_data_sect & !7) * 512
}

/// `lvextend` on both nodes, then `resize` on the Primary (or the Secondary): internal
/// meta-data moves to the new end of both disks, both devices grow, and the new part is
/// resynced from the Primary. The moved meta-data is what an attach reads.
fn both_disks_grow_and_resize_on(node: usize) {
    let mut c = synced_pair();
    let old = c.status(0).size_bytes;
    c.settle();
    for i in 0..2 {
        c.nodes[i].disk.grow(GROWN);
    }
    c.command(node, resize(false, false)).unwrap();
    let new = grown_usable_bytes();
    c.wait_in_sync_at(Some(new));
    c.settle();
    for i in 0..2 {
        assert!(c.logged(i, "md moved"), "node {i}: {:?}", c.logs(i));
        assert!(c.logged(i, "Resync of new storage after online grow"));
        let sb = durable_superblock(&c, i);
        assert_eq!(
            sb.la_size_sect * 512,
            new,
            "node {i} recorded the grown size"
        );
        assert!(
            !sb.flags.has(udrbd_meta::superblock::MdFlags::FULL_SYNC)
                && !sb.flags.has(udrbd_meta::superblock::MdFlags::AL_DISABLED),
            "the move's flags are cleared"
        );
    }
    // The Primary was the source: bob's new part (his old meta-data among it) is alice's.
    assert!(c.logged(0, "Began resync as SyncSource"));
    assert!(c.logged(1, "Began resync as SyncTarget"));
    assert_eq!(c.data_area(0), c.data_area(1));
    assert!(new > old);
    // The grown part takes writes, replicated.
    c.write(0, new - 4096, pattern(5, 4096)).unwrap();
    c.settle();
    assert_eq!(
        &c.nodes[1].disk.volatile[(new - 4096) as usize..new as usize],
        &pattern(5, 4096)[..]
    );
    // Bob detaches and attaches again: the meta-data at the new end is his.
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.command(1, attach_of(GROWN)).unwrap();
    c.run_until(Duration::from_secs(60), |c| {
        c.status(1).disk == DiskState::UpToDate && c.conn(1) == ConnState::Connected
    });
    assert_eq!(c.status(1).size_bytes, new);
    assert_eq!(c.status(1).out_of_sync_bytes, 0);
}

#[test]
fn resize_on_the_primary_moves_the_meta_data_grows_both_and_resyncs_the_new_part() {
    both_disks_grow_and_resize_on(0);
}

#[test]
fn resize_on_the_secondary_grows_both_and_the_primary_is_the_source() {
    both_disks_grow_and_resize_on(1);
}

/// Writes go on while the meta-data moves, and the activity log at the new place names the
/// extents in use: a crash of the Primary right after the move marks them at the next
/// attach (as the ring the move wrote is replayed).
#[test]
fn the_activity_log_written_at_the_new_place_covers_the_extents_in_use() {
    let mut c = synced_pair();
    c.settle();
    for i in 0..2 {
        c.nodes[i].disk.grow(GROWN);
    }
    // Writes in two extents, one of them in flight during the resize.
    c.write(0, 0, pattern(1, 4096)).unwrap();
    let id = c.request(0, |id| BlockRequest::Write {
        id,
        offset: 5 << 20,
        data: Bytes::from(pattern(2, 4096)),
        fua: false,
    });
    c.command(0, resize(false, false)).unwrap();
    c.wait(0, id).unwrap();
    c.settle();
    let disk = &c.nodes[0].disk.durable;
    let layout = udrbd_meta::Layout::internal(GROWN, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    let ring: Vec<_> = (0..layout.al.ring_blocks())
        .map(|p| {
            let at = layout.al_position_byte(p) as usize;
            udrbd_meta::activity_log::AlTransaction::decode(&disk[at..at + 4096])
        })
        .collect();
    let replay = udrbd_meta::activity_log::replay(&ring, layout.al, true);
    let udrbd_meta::activity_log::ReplayOutcome::Active { extents, .. } = replay.outcome else {
        panic!("the moved ring replays nothing: {replay:?}");
    };
    let in_use: Vec<u32> = [0u64, 5 << 20]
        .iter()
        .map(|&b| udrbd_meta::activity_log::extent_of_sector(b / 512))
        .collect();
    for e in in_use {
        assert!(
            extents.contains(&e),
            "extent {e} not in the moved ring {extents:?}"
        );
    }
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
}

/// StandAlone, `resize` moves the meta-data of a grown disk but keeps the device's size
/// (the peer's disk is unknown); `--assume-peer-has-space` grows it, and the peer, grown
/// and resized the same way, resyncs the new part at the next connect.
#[test]
fn a_standalone_resize_grows_only_with_assume_peer_has_space() {
    let mut c = synced_pair();
    let old = c.status(0).size_bytes;
    c.disconnect_and_grow_both_disks();
    c.command(0, resize(false, false)).unwrap();
    assert_eq!(
        c.status(0).size_bytes,
        old,
        "no peer agreed: the size stays"
    );
    assert_eq!(durable_superblock(&c, 0).la_size_sect * 512, old);
    c.command(0, resize(true, false)).unwrap();
    c.settle();
    let new = grown_usable_bytes();
    assert_eq!(c.status(0).size_bytes, new);
    assert!(c.logged(0, "Resize while not connected was forced by the user!"));
    assert_eq!(
        c.status(0).out_of_sync_bytes,
        new - old,
        "the new part is marked"
    );
    c.write(0, new - 4096, pattern(6, 4096)).unwrap();
    c.command(1, resize(true, false)).unwrap();
    c.connect_both();
    c.wait_in_sync_at(Some(new));
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// `--assume-clean`: the new part is taken as it is, on both nodes, without a resync.
#[test]
fn resize_assume_clean_skips_the_resync_of_the_new_part() {
    let mut c = synced_pair();
    c.settle();
    let resyncs_before: Vec<usize> = (0..2)
        .map(|i| {
            c.logs(i)
                .iter()
                .filter(|m| m.contains("Began resync"))
                .count()
        })
        .collect();
    for i in 0..2 {
        c.nodes[i].disk.grow(GROWN);
    }
    c.command(0, resize(false, true)).unwrap();
    let new = grown_usable_bytes();
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.status(i).size_bytes == new)
    });
    c.settle();
    for (i, before) in resyncs_before.into_iter().enumerate() {
        assert_eq!(c.conn(i), ConnState::Connected);
        assert_eq!(c.status(i).out_of_sync_bytes, 0);
        let resyncs = c
            .logs(i)
            .iter()
            .filter(|m| m.contains("Began resync"))
            .count();
        assert_eq!(resyncs, before, "node {i} resynced");
    }
    assert!(c.logged(1, "Resync of new storage suppressed with --assume-clean"));
}

/// DRBD's refusals: two connected Secondaries (131), a resync running (130), no disk (138),
/// a backing device smaller than the device (170).
#[test]
fn resize_is_refused_as_drbd_refuses_it() {
    let mut c = synced_pair();
    c.command(0, AdminCommand::Secondary).unwrap();
    c.settle();
    let e = c.command(0, resize(false, false)).unwrap_err();
    assert_eq!(e, CommandError::ResizeNeedsPrimary);
    assert_eq!(e.err_code(), Some(131));
    c.command(0, AdminCommand::Primary { force: false })
        .unwrap();
    c.command(1, AdminCommand::Invalidate).unwrap();
    assert!(matches!(
        c.conn(0),
        ConnState::SyncSource | ConnState::WfBitMapS
    ));
    assert_eq!(
        c.command(0, resize(false, false)),
        Err(CommandError::ResizeDuringResync)
    );
    c.run_until(Duration::from_secs(60), |c| {
        c.conn(0) == ConnState::Connected && c.status(1).disk == DiskState::UpToDate
    });
    let size = c.status(1).size_bytes as usize;
    c.nodes[1].disk.reported_size = Some(SIZE - (1 << 20));
    let e = c.command(1, resize(false, false)).unwrap_err();
    assert_eq!(e.err_code(), Some(170));
    assert_eq!(c.status(1).size_bytes as usize, size, "nothing changed");
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    assert_eq!(
        c.command(1, resize(false, false)),
        Err(CommandError::NoDiskConfig)
    );
}

/// A disk attached while connected agrees on the size with the peer's disk as the peer last
/// announced it, as DRBD's attach does, and the peer computes the same from the P_SIZES
/// that follows: here both disks hold more than the device (grown, their meta-data moved by
/// a StandAlone `resize`), so both devices grow when alice's disk comes back. Before, alice
/// kept her last agreed size while bob grew to hers, and their bitmap exchanges, of
/// different sizes, never ended (swarm seed 2412).
#[test]
fn a_disk_attached_while_connected_agrees_on_the_size_with_the_peer() {
    let mut c = synced_pair();
    let old = c.status(0).size_bytes;
    for i in 0..2 {
        c.command(i, AdminCommand::Disconnect).unwrap();
        c.nodes[i].disk.grow(GROWN);
        c.command(i, resize(false, false)).unwrap();
        assert_eq!(c.status(i).size_bytes, old, "StandAlone: the size stays");
    }
    c.command(0, AdminCommand::Secondary).unwrap();
    c.command(0, AdminCommand::Detach { force: false }).unwrap();
    c.connect_both();
    c.wait_connected();
    c.command(0, attach_of(GROWN)).unwrap();
    let new = grown_usable_bytes();
    c.wait_in_sync_at(None);
    assert_eq!((c.status(0).size_bytes, c.status(1).size_bytes), (new, new));
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// Swarm seed 2714: a disk that finished attaching during the handshake, after its node had
/// offered no disk (d_size 0), agreed on the size with its whole disk while the peer, from
/// the offer, kept its device's size; the two bitmap exchanges covered different sizes and
/// never ended. Here alice (the older data) attaches while the two connect, both disks
/// grown and their meta-data moved first (each holds more than the device), and bob, the
/// Primary with newer data, is the source. Alice now agrees as the diskless node she
/// offered to be.
#[test]
fn a_disk_attaching_in_the_handshake_agrees_on_the_size_as_offered_by_the_target() {
    let mut c = synced_pair();
    // Bob becomes the Primary, then the two part; each disk grows and its meta-data moves.
    c.command(0, AdminCommand::Secondary).unwrap();
    c.command(1, AdminCommand::Primary { force: false })
        .unwrap();
    for i in 0..2 {
        c.command(i, AdminCommand::Disconnect).unwrap();
        c.nodes[i].disk.grow(GROWN);
        c.command(i, resize(false, false)).unwrap();
    }
    let size = c.status(0).size_bytes;
    c.write(1, 12 * 4096, pattern(42, 4096)).unwrap();
    c.command(0, AdminCommand::Detach { force: false }).unwrap();
    c.attach_during_the_handshake(0, attach_of(GROWN));
    c.run_until(Duration::from_secs(60), |c| {
        (0..2).all(|i| c.conn(i) == ConnState::Connected && c.out_of_sync(i) == 0)
            && (0..2).all(|i| c.status(i).disk == DiskState::UpToDate)
    });
    let sizes = (c.status(0).size_bytes, c.status(1).size_bytes);
    assert!(sizes.0 == sizes.1 && sizes.0 >= size, "{sizes:?}");
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// A connected peer's P_SIZES that names a disk larger than this one makes this node
/// measure its own (it may have grown too); the packets behind it wait for the size it
/// agrees on, as DRBD's receiver does. Here bob's disk, grown and its meta-data moved,
/// attaches to a connected Primary whose disk grew but was not measured: alice measures
/// hers, moves her meta-data, and both devices grow. (Swarm seed 2529 hung in the bitmap
/// exchange that bob's P_STATE started while alice measured, on devices of different sizes;
/// this script does not reach that interleaving, the seed does.)
#[test]
fn the_packets_behind_a_larger_peer_disk_wait_until_this_disk_is_measured() {
    let mut c = synced_pair();
    c.disconnect_and_grow_both_disks();
    c.command(1, resize(false, false)).unwrap();
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.connect_both();
    c.wait_connected();
    c.command(1, attach_of(GROWN)).unwrap();
    let new = grown_usable_bytes();
    c.wait_in_sync_at(Some(new));
    assert!(c.logged(0, "md moved"), "alice measured her disk");
    assert_eq!(c.data_area(0), c.data_area(1));
}

/// The SyncSource's new resync options (its `adjust`) reach the SyncTarget in P_SYNC_PARAM,
/// which takes them, as DRBD's receive_SyncParam does: the target, which paces the resync,
/// speeds up. Values beyond drbd.conf's ranges are clamped.
#[test]
fn the_peers_new_resync_options_are_taken_during_a_resync() {
    let mut c = synced_pair_with(|_, config| {
        config.net.as_mut().unwrap().resync.resync_rate_kib_per_sec = 256;
    });
    c.command(0, AdminCommand::InvalidateRemote).unwrap();
    c.idle_for(Duration::from_secs(2));
    assert_eq!(c.conn(1), ConnState::SyncTarget);
    assert!(c.out_of_sync(1) > SIZE / 2, "256 KiB/s: most is left");
    let mut net = c.nodes[0].engine.config().net.clone().unwrap();
    net.resync.resync_rate_kib_per_sec = 400_000;
    c.nodes[0].engine.change_net_options(c.now, net).unwrap();
    c.drain(0);
    c.run_until(Duration::from_secs(3), |c| {
        c.conn(1) == ConnState::Connected && c.status(1).disk == DiskState::UpToDate
    });
    assert!(c.logged(1, "the peer's resync options taken: resync-rate 400000K"));
    // Bob's own configuration is unchanged: they hold for this connection.
    let own = c.nodes[1].engine.config().net.clone().unwrap().resync;
    assert_eq!(own.resync_rate_kib_per_sec, 256);
    // A peer's out-of-range values are clamped.
    c.settle();
    let conn = c.a_socket_of(1);
    let params = Packet::SyncParam89(udrbd_wire::SyncParams {
        resync_rate: u32::MAX,
        verify_alg: udrbd_wire::AlgName::NONE,
        csums_alg: udrbd_wire::AlgName::NONE,
        controller: Some(udrbd_wire::ResyncController {
            c_plan_ahead: u32::MAX,
            c_delay_target: 0,
            c_fill_target: u32::MAX,
            c_max_rate: 0,
        }),
    });
    c.inject(1, conn, &params);
    c.settle();
    assert!(
        c.logged(
            1,
            "taken: resync-rate 4194304K c-plan-ahead 300 c-fill-target 1048576s c-delay-target 1 c-max-rate 250K",
        ),
        "{:?}",
        c.logs(1)
    );
    assert_eq!(c.conn(1), ConnState::Connected);
}

/// Swarm seed 6670: the superblock that records a grown size goes out only once the bits
/// the grow set for its new part are on disk, as DRBD writes the bitmap before its
/// superblock in drbd_determine_dev_size. Before, the superblock could be durable first: a
/// crash in between came back at the grown size with the new part taken as in sync, and a
/// part that differed between the disks (an old meta-data area) was never resynced. Bob
/// shrinks with a peer's P_SIZES, then grows back with his bitmap writes held.
#[test]
fn a_grown_size_is_recorded_only_after_the_bits_of_its_new_part() {
    let mut c = synced_pair();
    let full = c.status(1).size_bytes;
    c.settle();
    peer_disk_resized(&mut c, 1, 1024);
    c.settle();
    assert_eq!(durable_la_size(&c, 1), 1024 * 512);
    c.hold_bitmap_of = Some(1);
    peer_disk_resized(&mut c, 1, full / 512);
    assert_eq!(c.status(1).size_bytes, full, "grown in memory");
    c.settle();
    assert!(!c.held_disk_ops.is_empty(), "bitmap writes held");
    assert_eq!(
        durable_la_size(&c, 1),
        1024 * 512,
        "no superblock with the grown size before its bits"
    );
    c.release_superblock_writes();
    c.settle();
    assert_eq!(durable_la_size(&c, 1), full);
}

// ---- the user size (`disk { size }`, `resize --size`) ------------------------------------

fn resize_to(sectors: u64) -> AdminCommand {
    AdminCommand::Resize {
        assume_peer_has_space: false,
        assume_clean: false,
        size_sect: Some(sectors),
    }
}

/// `resize --size` on the Primary shrinks both devices to the user size (the peer takes it:
/// "Peer sets u_size"); requests past the new end fail; `--size 0` grows both back, and the
/// part that comes back is resynced from the Primary. The shrunk size is the last agreed one
/// an attach serves.
#[test]
fn resize_with_size_shrinks_both_devices_and_size_0_grows_them_back() {
    let mut c = synced_pair();
    let full = c.status(0).size_bytes;
    let half = full / 2;
    c.command(0, resize_to(half / 512)).unwrap();
    c.wait_in_sync_at(Some(half));
    assert!(c.logged(1, &format!("Peer sets u_size to {} sectors", half / 512)));
    assert_eq!(
        c.write(0, half, pattern(3, 4096)),
        Err(BlockError::OutOfRange)
    );
    c.write(0, half - 4096, pattern(4, 4096)).unwrap();
    c.settle();
    // The shrunk size is what bob's next attach serves.
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    c.command(1, attach()).unwrap();
    c.wait_in_sync_at(Some(half));
    // Grown back: what comes back is the Primary's.
    c.nodes[1].disk.poke((half + 8192) as usize, &[0xab; 4096]);
    c.command(0, resize_to(0)).unwrap();
    c.wait_in_sync_at(Some(full));
    assert!(c.logged(0, "Resync of new storage after online grow"));
    assert_eq!(c.data_area(0), c.data_area(1));
    c.write(0, full - 4096, pattern(5, 4096)).unwrap();
    c.settle();
    assert_eq!(
        &c.nodes[1].disk.volatile[(full - 4096) as usize..full as usize],
        &pattern(5, 4096)[..]
    );
}

/// A user size in the configuration caps a fresh device, and the smaller of the two nodes'
/// is taken at the connect (the peer without one takes it); an attach refuses a user size
/// below the device its disk holds data for, as DRBD ("refusing to truncate a consistent
/// device").
#[test]
fn a_configured_user_size_caps_the_device_and_an_attach_never_truncates_data() {
    let user = (SIZE / 2) / 512;
    let mut c = synced_pair_with(move |i, config| {
        if i == 0 {
            config.user_size_sect = user;
        }
    });
    for i in 0..2 {
        assert_eq!(c.status(i).size_bytes, user * 512, "node {i}");
    }
    assert!(c.logged(1, &format!("Peer sets u_size to {user} sectors")));
    // Bob, detached, is configured smaller still: his attach refuses to truncate.
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    let now = c.now;
    c.nodes[1].engine.change_disk_options(
        now,
        DiskOptions {
            al_extents: 1237,
            on_io_error: OnIoError::Detach,
            disk_timeout: None,
            size_sect: user / 2,
        },
    );
    assert_eq!(c.command(1, attach()), Err(CommandError::DeviceTooSmall));
    assert!(c.logged(1, "refusing to truncate a consistent device"));
}

/// A `resize` that ends while a connection is being set up (its disk measured and its
/// meta-data moved while the pair connected) changes no size: the handshake offered the old
/// one, and the exchange and resync cover that. It fails with DRBD's 130. Before, alice's
/// device grew under the handshake, and the pair agreed on two sizes (a swarm run's
/// `resize --size`, seed 6455).
#[test]
fn a_resize_that_ends_during_the_handshake_changes_no_size() {
    let mut c = synced_pair();
    let old = c.status(0).size_bytes;
    c.disconnect_and_grow_both_disks();
    let result = c.command_during_the_handshake(0, resize(true, false));
    assert_eq!(result, Err(CommandError::ResizeDuringResync));
    c.wait_in_sync_at(Some(old));
    assert_eq!(c.data_area(0), c.data_area(1));
    // Connected and idle, the same resize grows both.
    c.command(0, resize(false, false)).unwrap();
    c.wait_in_sync_at(Some(grown_usable_bytes()));
}

/// The user size goes with the disk (DRBD's disk_conf): one the peer set, or `resize
/// --size` set, is gone after a detach, and the next attach starts from the configured one
/// (none here) at the last agreed size, then takes the connected peer's. Before, it stayed
/// with the diskless node and refused its attach ("refusing to truncate") once the device
/// had grown past it (swarm seed 4578).
#[test]
fn a_user_size_goes_with_the_disk() {
    let mut c = synced_pair();
    let half = c.status(0).size_bytes / 2;
    c.command(0, resize_to(half / 512)).unwrap();
    c.wait_in_sync_at(Some(half));
    assert_eq!(c.status(1).user_size_sect, half / 512);
    c.command(1, AdminCommand::Detach { force: false }).unwrap();
    assert_eq!(c.status(1).user_size_sect, 0);
    // Attached again (the configured user size, none, at the last agreed size), it takes
    // the connected peer's.
    c.command(1, attach()).unwrap();
    c.wait_in_sync_at(Some(half));
    assert_eq!(c.status(1).user_size_sect, half / 512);
}
