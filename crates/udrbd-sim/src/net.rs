//! SimNet: TCP-like byte streams between simulated nodes, driven by a seeded generator.
//!
//! # Fault model
//!
//! - A connection is two in-order byte streams. Bytes are delivered in order, never
//!   duplicated, in chunks cut at random points, after a latency drawn per chunk from a range
//!   (but never before an earlier chunk of the same stream), limited by a per-stream bandwidth.
//! - A **partition** between two nodes (symmetric, or one-way) stalls the affected streams:
//!   their bytes stay queued, as TCP would retransmit them; nothing is lost while the
//!   connection lives. Healing resumes delivery.
//! - A **reset** closes a connection at once: queued bytes are dropped, and each side learns of
//!   the close after the latency. A node closing its end drops what it has not yet delivered
//!   too (an abortive close, the case DRBD cares about).
//! - A **graceful close** ([`SimNet::shutdown`], the socket's FIN) still delivers what the
//!   closing node sent, in order and subject to partitions, then tells the peer; bytes
//!   towards the closing node are dropped.
//! - A **stall** is a partition of one stream only.
//! - Connecting succeeds only when the destination listens and the nodes are not partitioned
//!   in either direction; otherwise the attempt fails after the latency.
//!
//! Nodes are small integers; connections are numbered by the network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::Instant;

/// A simulated node.
pub type NodeId = u8;

/// A connection, as numbered by the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetConnId(pub u64);

/// What the network tells a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A connection to `node` was accepted (on `node`'s listener).
    Accepted {
        /// The node that accepted.
        node: NodeId,
        /// The connection.
        conn: NetConnId,
        /// Who connected.
        from: NodeId,
    },
    /// An outgoing connection is established.
    Connected {
        /// The node that connected.
        node: NodeId,
        /// The connection.
        conn: NetConnId,
    },
    /// An outgoing connection attempt failed.
    ConnectFailed {
        /// The node that tried.
        node: NodeId,
        /// The attempt's connection id.
        conn: NetConnId,
    },
    /// Bytes arrived.
    Received {
        /// The receiving node.
        node: NodeId,
        /// The connection.
        conn: NetConnId,
        /// The bytes (a chunk of the stream).
        bytes: Bytes,
    },
    /// The connection is closed (reset by the network or closed by the peer).
    Closed {
        /// The node that learns it.
        node: NodeId,
        /// The connection.
        conn: NetConnId,
    },
}

#[derive(Clone, Debug)]
struct Stream {
    from: NodeId,
    to: NodeId,
    queued: VecDeque<Bytes>,
    /// When the last scheduled chunk arrives (in-order delivery).
    last_arrival: Instant,
    stalled: bool,
    /// The sender shut the connection down: once the queue drains, the receiver learns of
    /// the close.
    fin: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Bytes delivered.
    pub bytes: u64,
    /// Chunks delivered.
    pub chunks: u64,
    /// Connections reset.
    pub resets: u64,
    /// Connect attempts refused.
    pub refused: u64,
}

/// The simulated network.
pub struct SimNet {
    rng: ChaCha8Rng,
    listening: BTreeSet<NodeId>,
    /// Partitioned directions (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Connection -> its two streams: [initiator -> acceptor, acceptor -> initiator].
    conns: BTreeMap<NetConnId, [Stream; 2]>,
    /// Events scheduled for delivery, by time then insertion order.
    schedule: BTreeMap<(Instant, u64), NetEvent>,
    next_event: u64,
    next_conn: u64,
    /// Latency range in nanoseconds.
    pub latency: (u64, u64),
    /// Bytes per second per stream.
    pub bandwidth: u64,
    /// Counters.
    pub stats: NetStats,
}

impl SimNet {
    /// A network with loopback-like latency and bandwidth.
    pub fn new(seed: u64) -> SimNet {
        SimNet {
            rng: ChaCha8Rng::seed_from_u64(seed),
            listening: BTreeSet::new(),
            cut: BTreeSet::new(),
            conns: BTreeMap::new(),
            schedule: BTreeMap::new(),
            next_event: 0,
            next_conn: 1,
            latency: (20_000, 200_000),
            bandwidth: 1 << 30,
            stats: NetStats::default(),
        }
    }

    fn latency(&mut self) -> Duration {
        Duration::from_nanos(
            self.latency.0 + self.rng.next_u64() % (self.latency.1 - self.latency.0),
        )
    }

    fn schedule(&mut self, at: Instant, event: NetEvent) {
        self.schedule.insert((at, self.next_event), event);
        self.next_event += 1;
    }

    /// `node` accepts connections.
    pub fn listen(&mut self, node: NodeId) {
        self.listening.insert(node);
    }

    /// `node` no longer accepts connections (established ones live on).
    pub fn stop_listening(&mut self, node: NodeId) {
        self.listening.remove(&node);
    }

    /// Whether `node` accepts connections.
    pub fn is_listening(&self, node: NodeId) -> bool {
        self.listening.contains(&node)
    }

    /// Bytes sent by `from` on connections to `to` that have not been delivered yet (queued
    /// behind a partition or a stall, or scheduled for delivery).
    pub fn undelivered(&self, from: NodeId, to: NodeId) -> u64 {
        let queued: u64 = self
            .conns
            .values()
            .flat_map(|s| s.iter())
            .filter(|s| s.from == from && s.to == to)
            .flat_map(|s| s.queued.iter())
            .map(|b| b.len() as u64)
            .sum();
        let scheduled: u64 = self
            .schedule
            .values()
            .filter_map(|e| match e {
                NetEvent::Received { node, conn, bytes }
                    if *node == to
                        && self
                            .conns
                            .get(conn)
                            .is_some_and(|s| s[0].from == from || s[1].from == from) =>
                {
                    Some(bytes.len() as u64)
                }
                _ => None,
            })
            .sum();
        queued + scheduled
    }

    /// `from` connects to `to`; the outcome arrives as an event.
    pub fn connect(&mut self, now: Instant, from: NodeId, to: NodeId) -> NetConnId {
        let conn = NetConnId(self.next_conn);
        self.next_conn += 1;
        let at = now.plus(self.latency());
        let reachable = self.listening.contains(&to)
            && !self.cut.contains(&(from, to))
            && !self.cut.contains(&(to, from));
        if !reachable {
            self.stats.refused += 1;
            self.schedule(at, NetEvent::ConnectFailed { node: from, conn });
            return conn;
        }
        let stream = |a, b| Stream {
            from: a,
            to: b,
            queued: VecDeque::new(),
            last_arrival: at,
            stalled: false,
            fin: false,
        };
        self.conns
            .insert(conn, [stream(from, to), stream(to, from)]);
        self.schedule(
            at,
            NetEvent::Accepted {
                node: to,
                conn,
                from,
            },
        );
        self.schedule(at, NetEvent::Connected { node: from, conn });
        conn
    }

    /// `node` sends `bytes` on `conn` (ignored if the connection is gone).
    pub fn send(&mut self, now: Instant, node: NodeId, conn: NetConnId, bytes: Bytes) {
        let Some(streams) = self.conns.get_mut(&conn) else {
            return;
        };
        let dir = if streams[0].from == node { 0 } else { 1 };
        if streams[dir].fin || streams[1 - dir].fin {
            // The receiver closed its end (or the sender did, and sends no more).
            return;
        }
        streams[dir].queued.push_back(bytes);
        self.pump(now, conn, dir);
    }

    /// Schedules the queued bytes of one stream, cut into random chunks.
    fn pump(&mut self, now: Instant, conn: NetConnId, dir: usize) {
        loop {
            let Some(streams) = self.conns.get(&conn) else {
                return;
            };
            let s = &streams[dir];
            let (from, to) = (s.from, s.to);
            if s.stalled || self.cut.contains(&(from, to)) {
                return;
            }
            if s.queued.is_empty() {
                if s.fin {
                    // Everything sent is on its way: the FIN follows the last byte.
                    let last = s.last_arrival;
                    let at = now.plus(self.latency()).max(last);
                    self.conns.remove(&conn);
                    self.schedule(at, NetEvent::Closed { node: to, conn });
                }
                return;
            }
            let latency = self.latency();
            let cut = 1 + self.rng.next_u64() as usize % 9000;
            let streams = self.conns.get_mut(&conn).expect("connection");
            let s = &mut streams[dir];
            let front = s.queued.front_mut().expect("queued bytes");
            let chunk = if front.len() <= cut {
                s.queued.pop_front().expect("queued bytes")
            } else {
                front.split_to(cut)
            };
            let transfer =
                Duration::from_nanos(chunk.len() as u64 * 1_000_000_000 / self.bandwidth.max(1));
            let at = now.plus(latency).max(s.last_arrival).plus(transfer);
            s.last_arrival = at;
            self.stats.bytes += chunk.len() as u64;
            self.stats.chunks += 1;
            self.schedule(
                at,
                NetEvent::Received {
                    node: to,
                    conn,
                    bytes: chunk,
                },
            );
        }
    }

    /// `node` closes its end: undelivered bytes are dropped; the peer learns of it later.
    pub fn close(&mut self, now: Instant, node: NodeId, conn: NetConnId) {
        let Some(streams) = self.conns.remove(&conn) else {
            return;
        };
        self.drop_scheduled(conn);
        let other = if streams[0].from == node {
            streams[0].to
        } else {
            streams[0].from
        };
        let at = now.plus(self.latency());
        self.schedule(at, NetEvent::Closed { node: other, conn });
    }

    /// `node` closes its end gracefully: what it sent is still delivered (after a partition
    /// heals, if one holds it), then the peer learns of the close. Bytes towards `node` are
    /// dropped.
    pub fn shutdown(&mut self, now: Instant, node: NodeId, conn: NetConnId) {
        let Some(streams) = self.conns.get_mut(&conn) else {
            return;
        };
        let out = if streams[0].from == node { 0 } else { 1 };
        streams[1 - out].queued.clear();
        streams[out].fin = true;
        self.schedule.retain(|_, e| {
            !matches!(e, NetEvent::Received { node: n, conn: c, .. } if *n == node && *c == conn)
        });
        self.pump(now, conn, out);
    }

    /// The network resets `conn`: both ends learn of it.
    pub fn reset(&mut self, now: Instant, conn: NetConnId) {
        let Some(streams) = self.conns.remove(&conn) else {
            return;
        };
        self.stats.resets += 1;
        self.drop_scheduled(conn);
        for node in [streams[0].from, streams[0].to] {
            let at = now.plus(self.latency());
            self.schedule(at, NetEvent::Closed { node, conn });
        }
    }

    fn drop_scheduled(&mut self, conn: NetConnId) {
        self.schedule.retain(|_, e| match e {
            NetEvent::Received { conn: c, .. }
            | NetEvent::Accepted { conn: c, .. }
            | NetEvent::Connected { conn: c, .. } => *c != conn,
            _ => true,
        });
    }

    /// Connections between `a` and `b`, either direction.
    pub fn connections_between(&self, a: NodeId, b: NodeId) -> Vec<NetConnId> {
        self.conns
            .iter()
            .filter(|(_, s)| (s[0].from == a && s[0].to == b) || (s[0].from == b && s[0].to == a))
            .map(|(c, _)| *c)
            .collect()
    }

    /// Stops traffic from `from` to `to` (and back, unless `one_way`).
    pub fn partition(&mut self, from: NodeId, to: NodeId, one_way: bool) {
        self.cut.insert((from, to));
        if !one_way {
            self.cut.insert((to, from));
        }
        // Chunks already scheduled across the cut are held back: requeue them.
        let held: Vec<((Instant, u64), NetEvent)> = self
            .schedule
            .iter()
            .filter(|(_, e)| matches!(e, NetEvent::Received { node, conn, .. } if self.direction_cut(*conn, *node)))
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        for (key, event) in held.into_iter().rev() {
            self.schedule.remove(&key);
            if let NetEvent::Received { node, conn, bytes } = event
                && let Some(streams) = self.conns.get_mut(&conn)
            {
                let dir = if streams[0].to == node { 0 } else { 1 };
                streams[dir].queued.push_front(bytes);
            }
        }
    }

    fn direction_cut(&self, conn: NetConnId, to: NodeId) -> bool {
        self.conns.get(&conn).is_some_and(|s| {
            let dir = if s[0].to == to { 0 } else { 1 };
            self.cut.contains(&(s[dir].from, s[dir].to))
        })
    }

    /// Heals every partition; queued bytes flow again.
    pub fn heal(&mut self, now: Instant) {
        self.cut.clear();
        let conns: Vec<NetConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            for dir in 0..2 {
                if let Some(s) = self.conns.get_mut(&conn) {
                    s[dir].stalled = false;
                    s[dir].last_arrival = s[dir].last_arrival.max(now);
                }
                self.pump(now, conn, dir);
            }
        }
    }

    /// Stalls the stream of `conn` that `from` sends on.
    pub fn stall(&mut self, conn: NetConnId, from: NodeId) {
        if let Some(s) = self.conns.get_mut(&conn) {
            let dir = if s[0].from == from { 0 } else { 1 };
            s[dir].stalled = true;
        }
    }

    /// Lets the stream of `conn` that `from` sends on flow again (see [`SimNet::stall`]).
    pub fn unstall(&mut self, now: Instant, conn: NetConnId, from: NodeId) {
        let Some(s) = self.conns.get_mut(&conn) else {
            return;
        };
        let dir = if s[0].from == from { 0 } else { 1 };
        s[dir].stalled = false;
        s[dir].last_arrival = s[dir].last_arrival.max(now);
        self.pump(now, conn, dir);
    }

    /// The next event time.
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.keys().next().map(|(at, _)| *at)
    }

    /// Every event due at `now`, in order.
    pub fn poll(&mut self, now: Instant) -> Vec<NetEvent> {
        let mut out = Vec::new();
        while let Some((&(at, n), _)) = self.schedule.iter().next() {
            if at > now {
                break;
            }
            out.push(self.schedule.remove(&(at, n)).expect("scheduled event"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_until_quiet(net: &mut SimNet, now: &mut Instant) -> Vec<NetEvent> {
        let mut all = Vec::new();
        while let Some(at) = net.next_due() {
            *now = at;
            all.extend(net.poll(at));
        }
        all
    }

    fn received(events: &[NetEvent], node: NodeId) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| match e {
                NetEvent::Received { node: n, bytes, .. } if *n == node => Some(bytes.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn streams_are_in_order_and_cut_anywhere() {
        for seed in 0..20 {
            let mut net = SimNet::new(seed);
            let mut now = Instant(0);
            net.listen(2);
            let c = net.connect(now, 1, 2);
            let events = run_until_quiet(&mut net, &mut now);
            assert!(events.contains(&NetEvent::Connected { node: 1, conn: c }));
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            for part in data.chunks(7777) {
                net.send(now, 1, c, Bytes::copy_from_slice(part));
            }
            let events = run_until_quiet(&mut net, &mut now);
            assert_eq!(received(&events, 2), data);
            assert!(net.stats.chunks > 13, "cut into more chunks than sent");
        }
    }

    #[test]
    fn partitions_stall_and_heal_without_loss() {
        let mut net = SimNet::new(3);
        let mut now = Instant(0);
        net.listen(2);
        let c = net.connect(now, 1, 2);
        run_until_quiet(&mut net, &mut now);
        net.send(now, 1, c, Bytes::from(vec![1u8; 50_000]));
        net.partition(1, 2, true);
        let events = run_until_quiet(&mut net, &mut now);
        let early = received(&events, 2).len();
        assert!(early < 50_000, "a one-way partition holds bytes back");
        // The reverse direction still works.
        net.send(now, 2, c, Bytes::from_static(b"pong"));
        let events = run_until_quiet(&mut net, &mut now);
        assert_eq!(received(&events, 1), b"pong");
        net.heal(now);
        let events = run_until_quiet(&mut net, &mut now);
        assert_eq!(early + received(&events, 2).len(), 50_000);
        // Connecting across a partition fails.
        net.partition(1, 2, false);
        let c2 = net.connect(now, 1, 2);
        let events = run_until_quiet(&mut net, &mut now);
        assert_eq!(events, vec![NetEvent::ConnectFailed { node: 1, conn: c2 }]);
    }

    #[test]
    fn reset_closes_both_ends_and_drops_bytes() {
        let mut net = SimNet::new(4);
        let mut now = Instant(0);
        net.listen(2);
        let c = net.connect(now, 1, 2);
        run_until_quiet(&mut net, &mut now);
        net.send(now, 1, c, Bytes::from(vec![9u8; 10_000]));
        net.reset(now, c);
        let events = run_until_quiet(&mut net, &mut now);
        assert!(received(&events, 2).is_empty());
        assert!(events.contains(&NetEvent::Closed { node: 1, conn: c }));
        assert!(events.contains(&NetEvent::Closed { node: 2, conn: c }));
        net.send(now, 1, c, Bytes::from_static(b"late"));
        assert!(run_until_quiet(&mut net, &mut now).is_empty());
    }

    #[test]
    fn shutdown_delivers_what_was_sent_then_closes() {
        let mut net = SimNet::new(6);
        let mut now = Instant(0);
        net.listen(2);
        let c = net.connect(now, 1, 2);
        run_until_quiet(&mut net, &mut now);
        net.partition(1, 2, false);
        net.send(now, 1, c, Bytes::from(vec![7u8; 20_000]));
        net.send(now, 2, c, Bytes::from(vec![8u8; 100]));
        net.shutdown(now, 1, c);
        assert!(
            run_until_quiet(&mut net, &mut now).is_empty(),
            "held by the partition"
        );
        net.heal(now);
        let events = run_until_quiet(&mut net, &mut now);
        assert_eq!(received(&events, 2).len(), 20_000);
        assert!(
            received(&events, 1).is_empty(),
            "bytes towards the closed end are dropped"
        );
        assert_eq!(events.last(), Some(&NetEvent::Closed { node: 2, conn: c }));
        assert!(!events.contains(&NetEvent::Closed { node: 1, conn: c }));
        net.send(now, 2, c, Bytes::from_static(b"late"));
        assert!(run_until_quiet(&mut net, &mut now).is_empty());
    }

    #[test]
    fn bandwidth_limits_delivery_time() {
        let mut net = SimNet::new(5);
        net.bandwidth = 10 << 20; // 10 MiB/s
        let mut now = Instant(0);
        net.listen(2);
        let c = net.connect(now, 1, 2);
        run_until_quiet(&mut net, &mut now);
        let start = now;
        net.send(now, 1, c, Bytes::from(vec![0u8; 10 << 20]));
        run_until_quiet(&mut net, &mut now);
        let took = now.since(start);
        assert!(took >= Duration::from_millis(990), "{took:?}");
    }
}
