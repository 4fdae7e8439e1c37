//! Deterministic clusters: N nodes (a pair by default), each the real engine around a
//! [`SimDisk`], joined by one [`SimNet`], driven by one simulated clock and one seed.
//!
//! Scripted scenarios call [`Cluster::command`], [`Cluster::write`], [`Cluster::partition`],
//! [`Cluster::crash`] and friends; each runs the simulation until its result is known, within a
//! simulated-time limit. A failure panics with the seed, the simulated time and every node's
//! state, so a failing run can be replayed bit for bit.
//!
//! # Routing (the harness is the driver of every engine)
//!
//! - `Listen` / `StopListening` open and close the node's listener in the network;
//!   addresses are names only: node `i` is `127.0.0.{i+1}:7789`, and node `i`'s peer is
//!   node `i ^ 1` (a node without a partner has no net configuration).
//! - `Connect { conn, addr }` opens a network connection; the engine's [`ConnId`] and the
//!   network's [`NetConnId`] are mapped both ways. Accepted sockets get ids 1, 2, ... per
//!   node and incarnation (below [`OUTGOING_CONN_ID_BASE`]).
//! - `Send { head, data }` queues both into the stream and reports `Sent` for all of it at
//!   once, at the same instant: the socket buffer is unbounded (unless
//!   [`ClusterOptions::socket_buffer`] bounds it: then what does not fit waits with the
//!   sender, and is reported as the receiving engine consumes bytes) and a byte counts as
//!   sent when the kernel took it, not when the peer received it. Protocol A completes on that,
//!   so an acknowledged protocol A write can be lost with the Primary's crash while the
//!   network still holds it (a partition stalls streams without loss).
//! - `Close` shuts the socket down gracefully ([`SimNet::shutdown`]: what was sent is still
//!   delivered, then the peer sees the close), or abortively with `abortive_close`.
//! - Network events become `Accepted`, `Connected`, `Closed` (a failed connect too),
//!   `Received`. Events for a socket the engine closed are dropped; sends on a socket the
//!   network closed (its `Closed` not yet delivered) are dropped.
//! - Inputs produced while routing (a `Sent`, a network event, a disk completion) go to one
//!   FIFO of ready inputs and are delivered one at a time, each followed by
//!   `Resource::invariants()` and the routing of its outputs; only when the FIFO is empty
//!   does the clock jump to the next due disk completion, network delivery or engine
//!   deadline. It never busy-waits; a burst of more than [`MAX_STEPS_PER_INSTANT`] steps at
//!   one instant is reported as a livelock.
//!
//! # Faults
//!
//! - [`Cluster::crash`]: a power cut. The disk keeps its durable image and tears or drops
//!   the rest ([`SimDisk::crash`]); the engine is dropped; the node's sockets are reset (the
//!   peer learns of it after the network latency); its block requests never complete.
//!   [`Cluster::restart`] boots a new engine (a new seed) on the durable image, attaches and
//!   connects (`drbdadm up`).
//! - [`Cluster::partition`] stalls both directions without loss (TCP retransmits) and
//!   refuses new connections; [`Cluster::heal`] resumes delivery.
//! - [`Cluster::clock_jump`]: node `i`'s clock leaps forward (a paused VM or a stopped
//!   process resuming: its monotonic clock moved on while nothing ran). Each engine sees its
//!   own clock, the cluster's plus an offset that only grows, so every clock stays
//!   monotonic; the node's timers that the jump passed fire at once (pings, disk-timeout,
//!   connect-int), while disks and network keep the cluster's time.
//!
//! # Checkers
//!
//! - after every step: `invariants()` of every engine, and never two Primaries connected to
//!   each other;
//! - [`Cluster::check_acked_writes`] (durability across a failover): every block whose last
//!   write was acknowledged by a Primary under protocol C while its peer was Connected and
//!   UpToDate holds that write on the given node;
//! - [`Cluster::check_identical`] (convergence): connected UpToDate replicas are
//!   byte-identical.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::connection::OUTGOING_CONN_ID_BASE;
use udrbd_core::resync_controller::ResyncControllerConfig;
use udrbd_core::sync_decision::SplitBrainPolicy;
use udrbd_core::*;
use udrbd_meta::activity_log::AlTransaction;
use udrbd_meta::{AlGeometry, GenerationUuids, Layout, MdFlags, MetaDiskKind, Superblock};
pub use udrbd_wire::WireProtocol;

use crate::checker::{self, Checker};
use crate::disk::SimDisk;
use crate::net::{NetConnId, NetEvent, NodeId, SimNet};
use crate::tamper::{Tamper, TamperCounts};

/// Bytes per sector, the granularity of the write model.
pub const SECTOR: u64 = 512;
/// Bytes per block of the random writes.
pub const BLOCK: u64 = 4096;
/// Steps at one simulated instant beyond which the run is declared a livelock.
pub const MAX_STEPS_PER_INSTANT: u64 = 1_000_000;
/// The port of every node's address.
pub const PORT: u16 = 7789;

/// How a cluster is built.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    /// Nodes (node `i`'s peer is `i ^ 1`).
    pub nodes: usize,
    /// Size of every backing device (internal meta-data at its end), but see
    /// `second_disk_bytes`.
    pub device_bytes: u64,
    /// The backing device of node 1 (of every odd node), if not `device_bytes`: disks of
    /// different sizes, whose device is the smaller one.
    pub second_disk_bytes: Option<u64>,
    /// Replication protocol.
    pub protocol: WireProtocol,
    /// after-sb-* and rr-conflict.
    pub split_brain: SplitBrainPolicy,
    /// Resync controller (fixed rate by default, fast, so runs are short).
    pub resync: ResyncControllerConfig,
    /// `connect-int`.
    pub connect_int: Duration,
    /// `ping-int`.
    pub ping_int: Duration,
    /// `ping-timeout`.
    pub ping_timeout: Duration,
    /// `timeout`.
    pub timeout: Duration,
    /// `ko-count`.
    pub ko_count: u32,
    /// `max-epoch-size`.
    pub max_epoch_size: u32,
    /// `sndbuf-size` (0: auto).
    pub sndbuf_size: u64,
    /// Bytes a socket holds per direction between the sending and the receiving engine (the
    /// kernel's send and receive buffers), `None`: unbounded. Bytes beyond it stay with the
    /// sender's driver and are reported `Sent` only once the receiver consumed enough: a
    /// receiver that stops reading (max-buffers) makes its peer's sends wait, and its
    /// writes with them (sndbuf-size). Not with tampering (hostile runs).
    pub socket_buffer: Option<u64>,
    /// `al-extents`.
    pub al_extents: u16,
    /// Interval of the lazy bitmap write-out.
    pub bitmap_writeout_interval: Duration,
    /// Network latency range, nanoseconds.
    pub net_latency_ns: (u64, u64),
    /// Network bandwidth per stream, bytes per second.
    pub net_bandwidth: u64,
    /// An engine's `Close` drops what the network has not delivered yet (an RST) instead of
    /// delivering it before the peer learns of the close (a FIN, the default).
    pub abortive_close: bool,
    /// Attach and connect every node in [`Cluster::new`] (`drbdadm up`).
    pub up_at_start: bool,
    /// Simulated time a command or a block request may take before the run fails.
    pub limit: Duration,
    /// `disk-timeout` of every node (`None`: off).
    pub disk_timeout: Option<Duration>,
    /// `on-io-error` of every node.
    pub on_io_error: OnIoError,
    /// Run every engine's `invariants()` after every step (on by default; off only to measure
    /// the simulator's own speed).
    pub invariants_every_step: bool,
    /// Record a [`JournalEntry`] for every completion, state change and disk error (for a
    /// driver that keeps its own model, like the swarm runner).
    pub journal: bool,
    /// A last word on each node's configuration.
    pub configure: Option<fn(NodeId, &mut ResourceConfig)>,
    /// Both nodes' verify-alg (none: `verify` is refused).
    pub verify_alg: Option<udrbd_core::VerifyAlg>,
    /// Both nodes' csums-alg (none: resync requests ask for the data).
    pub csums_alg: Option<udrbd_core::VerifyAlg>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 2,
            device_bytes: 4 << 20,
            second_disk_bytes: None,
            protocol: WireProtocol::C,
            split_brain: SplitBrainPolicy::default(),
            resync: ResyncControllerConfig {
                resync_rate_kib_per_sec: 1 << 20,
                c_plan_ahead_tenths: 0,
                ..ResyncControllerConfig::default()
            },
            connect_int: Duration::from_secs(1),
            ping_int: Duration::from_secs(10),
            ping_timeout: Duration::from_millis(500),
            timeout: Duration::from_secs(6),
            ko_count: 7,
            max_epoch_size: 2048,
            sndbuf_size: 0,
            socket_buffer: None,
            al_extents: 1237,
            bitmap_writeout_interval: Duration::from_secs(5),
            net_latency_ns: (20_000, 200_000),
            net_bandwidth: 1 << 30,
            abortive_close: false,
            up_at_start: true,
            limit: Duration::from_secs(120),
            disk_timeout: None,
            on_io_error: OnIoError::Detach,
            journal: false,
            invariants_every_step: true,
            configure: None,
            verify_alg: None,
            csums_alg: None,
        }
    }
}

impl ClusterOptions {
    /// The size of node `i`'s backing device.
    pub fn disk_bytes(&self, node: NodeId) -> u64 {
        match self.second_disk_bytes {
            Some(bytes) if node % 2 == 1 => bytes,
            _ => self.device_bytes,
        }
    }
}

/// A node's `status` (mirrored field by field: udrbd-core does not export its `Status` type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Role.
    pub role: Role,
    /// Local disk state.
    pub disk: DiskState,
    /// Exported size in bytes.
    pub size_bytes: u64,
    /// The user size in force (sectors, 0: none).
    pub user_size_sect: u64,
    /// Bytes marked out of sync in the bitmap.
    pub out_of_sync_bytes: u64,
    /// Application requests in flight.
    pub upper_pending: u64,
    /// Local data operations in flight.
    pub lower_pending: u64,
    /// Operations of earlier attach generations that have not returned.
    pub stuck_ios: u64,
    /// Why the local disk failed, since the last attach.
    pub disk_failure: Option<DiskFailure>,
    /// Local IO errors since the last attach.
    pub io_errors: u64,
    /// Application IO is served by the peer (no usable local disk).
    pub served_by_peer: bool,
    /// `suspend-io` holds new application IO.
    pub suspended_by_user: bool,
    /// Generation UUIDs and flags, if attached.
    pub generation: Option<(GenerationUuids, MdFlags)>,
    /// KiB read from the local disk.
    pub read_kib: u64,
    /// KiB written to the local disk.
    pub written_kib: u64,
    /// Activity-log transactions written.
    pub al_writes: u64,
    /// Bitmap pages written.
    pub bm_writes: u64,
    /// A command in progress.
    pub busy_with: Option<&'static str>,
    /// The peer.
    pub peer: Option<PeerStatus>,
}

impl NodeStatus {
    fn of(engine: &Resource) -> NodeStatus {
        let st = engine.status();
        NodeStatus {
            role: st.role,
            disk: st.disk,
            size_bytes: st.size_bytes,
            user_size_sect: st.user_size_sect,
            out_of_sync_bytes: st.out_of_sync_bytes,
            upper_pending: st.upper_pending,
            lower_pending: st.lower_pending,
            stuck_ios: st.stuck_ios,
            disk_failure: st.disk_failure,
            io_errors: st.io_errors,
            served_by_peer: st.served_by_peer,
            suspended_by_user: st.suspended_by_user,
            generation: st.generation,
            read_kib: st.statistics.read_kib,
            written_kib: st.statistics.written_kib,
            al_writes: st.statistics.al_writes,
            bm_writes: st.statistics.bm_writes,
            busy_with: st.busy_with,
            peer: st.peer,
        }
    }
}

/// A node's state as `status` shows it, recorded at every change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Role.
    pub role: Role,
    /// Local disk.
    pub disk: DiskState,
    /// Connection state (`None` without a net configuration).
    pub conn: Option<ConnState>,
    /// The peer's role as this node knows it.
    pub peer_role: Role,
    /// The peer's disk as this node knows it.
    pub peer_disk: DiskState,
}

impl Snapshot {
    fn of(status: &NodeStatus) -> Snapshot {
        Snapshot {
            role: status.role,
            disk: status.disk,
            conn: status.peer.as_ref().map(|p| p.conn),
            peer_role: status.peer.as_ref().map_or(Role::Unknown, |p| p.peer_role),
            peer_disk: status
                .peer
                .as_ref()
                .map_or(DiskState::DUnknown, |p| p.peer_disk),
        }
    }
}

/// Connected, or a state that needs a connection (syncing, verifying, Ahead/Behind).
pub fn is_connected(conn: Option<ConnState>) -> bool {
    conn.is_some_and(|c| c >= ConnState::Connected)
}

/// A write as the model of acknowledged data sees it.
#[derive(Clone, Debug)]
struct WriteRecord {
    id: BlockRequestId,
    node: NodeId,
    offset: u64,
    data: Bytes,
    acked: bool,
    /// Acknowledged under protocol C by a Primary whose peer was Connected and UpToDate.
    promised: bool,
}

/// A block request in flight.
#[derive(Clone, Debug)]
struct InFlight {
    node: NodeId,
    /// Index in the write model, for writes.
    write: Option<usize>,
    /// Bytes asked for, for reads.
    read_len: Option<u32>,
}

/// What the harness knew when a Primary completed a write or a flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckInfo {
    /// The node completing the request replicates under protocol C.
    pub protocol_c: bool,
    /// Its connection is established (Connected or a resync state), so the request was
    /// mirrored to the peer.
    pub connected: bool,
    /// It sees the peer's disk UpToDate.
    pub peer_up_to_date: bool,
    /// It sees the peer with a disk that takes writes (Inconsistent or better; not a disk
    /// the peer is detaching, which it reports Failed).
    pub peer_has_disk: bool,
    /// It is Primary.
    pub primary: bool,
    /// Its connection state.
    pub conn: Option<ConnState>,
}

/// What happened, in step order (recorded with [`ClusterOptions::journal`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalEntry {
    /// A block request completed.
    Completed {
        /// The request.
        id: BlockRequestId,
        /// Its node.
        node: NodeId,
        /// Success (read data), or the error.
        result: Result<Option<Bytes>, BlockError>,
        /// The node's state at the completion.
        ack: AckInfo,
    },
    /// A node's state changed (see [`Cluster::history`]).
    State {
        /// The node.
        node: NodeId,
        /// The new state.
        snapshot: Snapshot,
    },
    /// A disk operation on a node's data area failed (an injected error).
    DataIoError {
        /// The node.
        node: NodeId,
        /// Byte offset in the data area.
        offset: u64,
        /// Length in bytes (0 for a flush).
        len: u64,
        /// A write (or discard), not a read.
        write: bool,
    },
    /// An admin command finished.
    CommandDone {
        /// The node.
        node: NodeId,
        /// The command.
        id: CommandId,
        /// Its result.
        result: Result<(), CommandError>,
    },
}

/// A socket as the harness maps it.
#[derive(Clone, Debug)]
struct Socket {
    /// The network's connection (`None`: a connect to an unknown address).
    net: Option<NetConnId>,
    /// The network closed it; the `Closed` input is on its way.
    closed_by_net: bool,
    /// The engine does not read it (`PeerOutput::Receive`): what arrives waits in `held`,
    /// as in a kernel socket's receive buffer, a close behind the bytes.
    paused: bool,
    held: VecDeque<PeerInput>,
    /// Bytes sent by the engine that the socket did not take yet (`socket_buffer`).
    unsent: VecDeque<Bytes>,
}

struct Node {
    engine: Option<Resource>,
    disk: SimDisk,
    incarnation: u64,
    next_accept: u64,
    sockets: BTreeMap<ConnId, Socket>,
    from_net: BTreeMap<NetConnId, ConnId>,
    done: BTreeMap<CommandId, Result<(), CommandError>>,
    events: Vec<(Instant, Event)>,
    history: Vec<(Instant, Snapshot)>,
    /// How far this node's clock is ahead of the cluster's (ns; only grows).
    clock_offset: u64,
    /// Blocks a data write to this node's disk ever failed on.
    failed_write_blocks: BTreeSet<u64>,
    /// The sizes this node's disk had before it grew (`grow_disks`), oldest first.
    grown_from: Vec<u64>,
}

impl Node {
    /// This node's clock when the cluster's reads `now`.
    fn clock(&self, now: Instant) -> Instant {
        Instant(now.0 + self.clock_offset)
    }

    /// The engine's next deadline on the cluster's clock.
    fn deadline(&self) -> Option<Instant> {
        self.engine
            .as_ref()
            .and_then(|e| e.poll_timeout())
            .map(|t| Instant(t.0.saturating_sub(self.clock_offset)))
    }
}

/// The simulated cluster. See the module doc.
pub struct Cluster {
    seed: u64,
    /// Times an engine stopped reading a socket (`PeerOutput::Receive`, max-buffers).
    receive_pauses: u64,
    /// Per network connection and sending node: bytes handed to the network and not yet
    /// consumed by the receiving engine (`socket_buffer`).
    in_sockets: BTreeMap<(NetConnId, NodeId), u64>,
    options: ClusterOptions,
    now: Instant,
    nodes: Vec<Node>,
    net: SimNet,
    ready: VecDeque<(NodeId, Input)>,
    next_request: u64,
    requests: BTreeMap<BlockRequestId, InFlight>,
    completions: BTreeMap<BlockRequestId, (NodeId, Result<Option<Bytes>, BlockError>)>,
    lost: BTreeSet<BlockRequestId>,
    writes: Vec<WriteRecord>,
    steps_at_now: u64,
    steps: u64,
    /// The harness's own randomness (random writes).
    rng: ChaCha8Rng,
    /// What the driver of the run is doing (for failure messages).
    context: String,
    /// What happened, in order, if [`ClusterOptions::journal`] is on.
    journal: Vec<JournalEntry>,
    /// A last word on each node's configuration that may capture state.
    configure_dyn: Option<ConfigureHook>,
    /// Packets altered on the way ([`Cluster::set_tamper`]).
    tamper: Tamper,
    /// Tampering was on at some point: the checks that assume honest peers are off.
    tampered: bool,
}

/// A hook that alters a node's configuration (it may capture state, unlike
/// [`ClusterOptions::configure`]).
pub type ConfigureHook = std::sync::Arc<dyn Fn(NodeId, &mut ResourceConfig) + Send + Sync>;

/// splitmix64 over the run's seed and two salts: independent streams per node and purpose.
fn derive_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The address of node `i`.
pub fn address(node: NodeId) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, node + 1)), PORT)
}

/// The name of node `i`.
pub fn node_name(node: NodeId) -> String {
    format!("node{node}")
}

/// create-md on a simulated disk (internal meta-data, default activity-log geometry).
pub fn create_md(disk: &mut SimDisk) {
    let layout = Layout::internal(disk.size(), AlGeometry::DEFAULT).expect("layout");
    let init = AlTransaction::initialized().encode();
    for p in 0..layout.al.ring_blocks() {
        disk.poke(layout.al_position_byte(p), &init[..]);
    }
    disk.poke(
        layout.superblock_byte(),
        &Superblock::new_created(&layout, 0).encode()[..],
    );
}

/// Deterministic, distinct content for tests: `len` bytes derived from `tag`.
pub fn pattern(tag: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        let word = derive_seed(tag, i as u64 / 64, 0x5A7).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    Bytes::from(v)
}

impl Cluster {
    /// A cluster of fresh (create-md'd) nodes; with `up_at_start`, every node is attached and
    /// told to connect (the connection itself is still to be awaited).
    pub fn new(seed: u64, options: ClusterOptions) -> Cluster {
        Cluster::with_configure(seed, options, None)
    }

    /// [`Cluster::new`] with a configuration hook that runs after
    /// [`ClusterOptions::configure`] for every node, at every boot.
    pub fn with_configure(
        seed: u64,
        options: ClusterOptions,
        configure: Option<ConfigureHook>,
    ) -> Cluster {
        assert!(options.nodes >= 1 && options.nodes <= 200, "node count");
        let mut net = SimNet::new(derive_seed(seed, 0xEE, 0));
        net.latency = options.net_latency_ns;
        net.bandwidth = options.net_bandwidth;
        let mut c = Cluster {
            seed,
            receive_pauses: 0,
            in_sockets: BTreeMap::new(),
            options,
            now: Instant(0),
            nodes: Vec::new(),
            net,
            ready: VecDeque::new(),
            next_request: 1,
            requests: BTreeMap::new(),
            completions: BTreeMap::new(),
            lost: BTreeSet::new(),
            writes: Vec::new(),
            steps_at_now: 0,
            steps: 0,
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x77, 0)),
            context: String::new(),
            journal: Vec::new(),
            configure_dyn: configure,
            tamper: Tamper::new(
                ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x7A, 0)),
                options.device_bytes / SECTOR,
            ),
            tampered: false,
        };
        for i in 0..options.nodes {
            let mut disk = SimDisk::new(
                options.disk_bytes(i as NodeId),
                derive_seed(seed, i as u64, 0xD15C),
            );
            create_md(&mut disk);
            c.nodes.push(Node {
                engine: None,
                disk,
                incarnation: 0,
                next_accept: 1,
                sockets: BTreeMap::new(),
                from_net: BTreeMap::new(),
                done: BTreeMap::new(),
                events: Vec::new(),
                history: Vec::new(),
                clock_offset: 0,
                failed_write_blocks: BTreeSet::new(),
                grown_from: Vec::new(),
            });
            c.boot(i as NodeId);
        }
        if options.up_at_start {
            for i in 0..options.nodes {
                c.up(i as NodeId);
            }
        }
        c
    }

    // ---- configuration -------------------------------------------------------------------

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The options.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Steps taken (inputs delivered).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s peer, if it has one.
    pub fn peer_of(&self, node: NodeId) -> Option<NodeId> {
        let peer = node ^ 1;
        (usize::from(peer) < self.options.nodes).then_some(peer)
    }

    fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        (0..self.nodes.len() as NodeId).find(|&i| address(i) == addr)
    }

    /// The configuration node `i` boots with.
    pub fn config_for(&self, node: NodeId) -> ResourceConfig {
        let o = &self.options;
        let mut config = ResourceConfig::new("r0", 0);
        config.al_extents = o.al_extents;
        config.bitmap_writeout_interval = o.bitmap_writeout_interval;
        config.has_peer = self.peer_of(node).is_some();
        config.net = self.peer_of(node).map(|peer| {
            let mut net = NetConfig::new(
                &node_name(node),
                address(node),
                &node_name(peer),
                address(peer),
            );
            net.protocol = o.protocol;
            net.split_brain = o.split_brain;
            net.resync = o.resync;
            net.connect_int = o.connect_int;
            net.ping_int = o.ping_int;
            net.ping_timeout = o.ping_timeout;
            net.timeout = o.timeout;
            net.ko_count = o.ko_count;
            net.max_epoch_size = o.max_epoch_size;
            net.sndbuf_size = o.sndbuf_size;
            net.verify_alg = o.verify_alg;
            net.csums_alg = o.csums_alg;
            net.connect_at_start = false;
            net
        });
        config.disk_timeout = o.disk_timeout;
        config.on_io_error = o.on_io_error;
        if let Some(configure) = o.configure {
            configure(node, &mut config);
        }
        if let Some(configure) = &self.configure_dyn {
            configure(node, &mut config);
        }
        config
    }

    // ---- node lifecycle ------------------------------------------------------------------

    /// Whether node `i` runs an engine (it is not crashed).
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes[usize::from(node)].engine.is_some()
    }

    /// Starts a new engine on node `i` (nothing attached, StandAlone).
    pub fn boot(&mut self, node: NodeId) {
        let n = &mut self.nodes[usize::from(node)];
        assert!(n.engine.is_none(), "boot of a running node {node}");
        n.incarnation += 1;
        let mut rng =
            ChaCha8Rng::seed_from_u64(derive_seed(self.seed, u64::from(node), n.incarnation));
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let config = self.config_for(node);
        let n = &mut self.nodes[usize::from(node)];
        n.engine = Some(Resource::new(config, seed));
        n.next_accept = 1;
        // Command ids start again with every engine.
        n.done.clear();
        self.record_state(node);
    }

    /// Attach (and connect, if node `i` has a peer): `drbdadm up`. A refusal fails the run.
    pub fn up(&mut self, node: NodeId) {
        self.attach(node);
        if self.peer_of(node).is_some() {
            self.must(
                node,
                AdminCommand::Connect {
                    discard_my_data: false,
                },
            );
        }
    }

    /// Attaches node `i`'s disk. A refusal fails the run.
    pub fn attach(&mut self, node: NodeId) {
        let attach = self.attach_command_of(node);
        self.must(node, attach);
    }

    /// `attach` of node 0's whole simulated disk with internal meta-data (any node's, when
    /// the disks are of one size: `ClusterOptions::second_disk_bytes` unset).
    pub fn attach_command(&self) -> AdminCommand {
        self.attach_command_of(0)
    }

    /// `attach` of node `i`'s whole simulated disk with internal meta-data.
    pub fn attach_command_of(&self, node: NodeId) -> AdminCommand {
        let size = self.md_disk_bytes(node);
        AdminCommand::Attach(AttachParams {
            data_device_bytes: size,
            meta_device_bytes: size,
            meta_kind: MetaDiskKind::Internal,
        })
    }

    /// Power cut on node `i`: see the module doc.
    pub fn crash(&mut self, node: NodeId) {
        let now = self.now;
        let n = &mut self.nodes[usize::from(node)];
        assert!(n.engine.is_some(), "crash of a node that is down");
        n.disk.crash();
        n.engine = None;
        for socket in std::mem::take(&mut n.sockets).into_values() {
            if let Some(conn) = socket.net {
                self.net.reset(now, conn);
            }
        }
        n.from_net.clear();
        self.net.stop_listening(node);
        self.ready.retain(|(at, _)| *at != node);
        let lost: Vec<BlockRequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.requests.remove(&id);
            self.lost.insert(id);
        }
    }

    /// Boots node `i` again on its durable image, attaches and connects.
    pub fn restart(&mut self, node: NodeId) {
        self.boot(node);
        self.up(node);
    }

    // ---- the network -----------------------------------------------------------------------

    /// Partitions `a` from `b` (both directions): streams stall, connects fail.
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.net.partition(a, b, false);
    }

    /// Stops traffic from `from` to `to` only.
    pub fn partition_one_way(&mut self, from: NodeId, to: NodeId) {
        self.net.partition(from, to, true);
    }

    /// Node `node`'s clock leaps `by` forward (see the module doc).
    pub fn clock_jump(&mut self, node: NodeId, by: Duration) {
        self.nodes[usize::from(node)].clock_offset += by.as_nanos() as u64;
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.net.heal(self.now);
    }

    /// Lets what `from` sends on `conn` flow again (after `net().stall(conn, from)`).
    pub fn unstall(&mut self, conn: NetConnId, from: NodeId) {
        self.net.unstall(self.now, conn, from);
    }

    /// Alters a share of the packets every node sends from now on (parts per million of
    /// them, 0: none; see [`crate::tamper`]). Once it was on, the cluster's own checks that
    /// assume honest peers (two Primaries connected, replicas equal at a resync's end) are
    /// off for the rest of the run; `invariants()` after every step stays on.
    pub fn set_tamper(&mut self, per_million: u32) {
        self.tamper.per_million = per_million;
        self.tampered |= per_million > 0;
    }

    /// What the tampering did so far.
    pub fn tamper_counts(&self) -> TamperCounts {
        self.tamper.counts
    }

    /// The network (for counters and finer faults).
    pub fn net(&mut self) -> &mut SimNet {
        &mut self.net
    }

    /// Times an engine stopped reading a socket: the peer's requests it held took
    /// max-buffers pages.
    pub fn receive_pauses(&self) -> u64 {
        self.receive_pauses
    }

    /// Bytes `from` sent to `to` that the network has not delivered.
    pub fn undelivered(&self, from: NodeId, to: NodeId) -> u64 {
        self.net.undelivered(from, to)
    }

    // ---- observation -------------------------------------------------------------------

    fn engine(&self, node: NodeId) -> &Resource {
        match &self.nodes[usize::from(node)].engine {
            Some(e) => e,
            None => self.fail(&format!("node {node} is down")),
        }
    }

    /// Node `i`'s status (the node must be up).
    pub fn status(&self, node: NodeId) -> NodeStatus {
        NodeStatus::of(self.engine(node))
    }

    /// Node `i`'s state in short.
    pub fn snapshot(&self, node: NodeId) -> Snapshot {
        Snapshot::of(&self.status(node))
    }

    /// Node `i`'s connection state (`None` without a peer).
    pub fn conn(&self, node: NodeId) -> Option<ConnState> {
        self.status(node).peer.map(|p| p.conn)
    }

    /// Every state node `i` went through, with the time of the change.
    pub fn history(&self, node: NodeId) -> &[(Instant, Snapshot)] {
        &self.nodes[usize::from(node)].history
    }

    /// Whether node `i` was ever in connection state `conn` (since the cluster started).
    pub fn was_ever(&self, node: NodeId, conn: ConnState) -> bool {
        self.history(node).iter().any(|(_, s)| s.conn == Some(conn))
    }

    /// Events of node `i` (every kind but StateChanged), with their time.
    pub fn events(&self, node: NodeId) -> &[(Instant, Event)] {
        &self.nodes[usize::from(node)].events
    }

    /// Names of the handlers node `i` called, in order.
    pub fn handlers(&self, node: NodeId) -> Vec<&'static str> {
        self.events(node)
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Handler { name } => Some(*name),
                _ => None,
            })
            .collect()
    }

    /// Log lines of node `i`.
    pub fn logs(&self, node: NodeId) -> Vec<String> {
        self.events(node)
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Log { level, message } => Some(format!("{level:?}: {message}")),
                _ => None,
            })
            .collect()
    }

    /// The data area of node `i`'s disk as a read would see it now (after a crash: the
    /// durable image).
    pub fn data_area(&self, node: NodeId) -> &[u8] {
        // The data area of the disk as created: a grown disk's new part (and its old
        // meta-data) is compared by `assert_same_data` up to the device's size.
        let disk = &self.nodes[usize::from(node)].disk;
        let created = self.options.disk_bytes(node);
        let layout = Layout::internal(created, AlGeometry::DEFAULT).expect("layout");
        disk.current(0, (layout.max_data_sect * SECTOR) as usize)
    }

    /// Node `i`'s meta-data layout (internal meta-data, default activity-log geometry), where
    /// its durable image holds the meta-data ([`Cluster::md_disk_bytes`]).
    pub fn layout(&self, node: NodeId) -> Layout {
        Layout::internal(self.md_disk_bytes(node), AlGeometry::DEFAULT).expect("layout")
    }

    /// The disk size whose internal meta-data node `i`'s durable image holds: the disk's size,
    /// or, after `grow_disks` and before a `resize` moved the meta-data (or with the move's
    /// first superblock not yet durable), the size it had before. What an attach finds;
    /// an operator whose attach finds nothing at the new end shrinks the device back, as
    /// with DRBD.
    pub fn md_disk_bytes(&self, node: NodeId) -> u64 {
        let n = &self.nodes[usize::from(node)];
        let sizes = std::iter::once(n.disk.size()).chain(n.grown_from.iter().rev().copied());
        for size in sizes {
            let layout = Layout::internal(size, AlGeometry::DEFAULT).expect("layout");
            let block = n.disk.durable(layout.superblock_byte(), 4096);
            if Superblock::decode(block).is_ok_and(|sb| sb.check_layout(&layout).is_ok()) {
                return size;
            }
        }
        n.disk.size()
    }

    /// Both disks grow by `bytes` (an `lvextend` on both nodes); `resize` moves the
    /// meta-data and grows the device.
    pub fn grow_disks(&mut self, bytes: u64) {
        for n in &mut self.nodes {
            let size = n.disk.size();
            n.grown_from.push(size);
            n.disk.grow(size + bytes);
        }
    }

    /// The superblock in node `i`'s durable image (what survives a power cut).
    pub fn durable_superblock(&self, node: NodeId) -> Superblock {
        let at = self.layout(node).superblock_byte();
        let block = self.nodes[usize::from(node)].disk.durable(at, 4096);
        Superblock::decode(block)
            .unwrap_or_else(|e| self.fail(&format!("node {node}: durable superblock: {e:?}")))
    }

    /// Whether the superblock in node `i`'s durable image says MDF_PRIMARY_IND (None if it
    /// does not decode).
    pub fn durable_primary_ind(&self, node: NodeId) -> Option<bool> {
        let at = self.layout(node).superblock_byte();
        let block = self.nodes[usize::from(node)].disk.durable(at, 4096);
        Superblock::decode(block)
            .ok()
            .map(|sb| sb.flags.has(udrbd_meta::MdFlags::PRIMARY_IND))
    }

    /// Whether bit `bit` (4 KiB block `bit` of the data) is set in the bitmap area of node
    /// `i`'s durable image (little-endian 64-bit words, drbd-v08-facts.md §1.5).
    pub fn durable_bitmap_bit(&self, node: NodeId, bit: u64) -> bool {
        let at = self.layout(node).bm_byte() + bit / 8;
        let byte = self.nodes[usize::from(node)].disk.durable(at, 1)[0];
        byte & (1 << (bit % 8)) != 0
    }

    /// Disk operations of node `i` in flight (including abandoned ones on a frozen disk).
    pub fn disk_in_flight(&self, node: NodeId) -> usize {
        self.nodes[usize::from(node)].disk.in_flight()
    }

    /// Whether block `block` is marked for resync on node `i` (bit set or extent in the
    /// activity log); `None` if the node is down or has no meta-data in memory.
    pub fn block_marked(&self, node: NodeId, block: u64) -> Option<bool> {
        self.nodes[usize::from(node)]
            .engine
            .as_ref()
            .and_then(|e| e.block_marked(block))
    }

    /// Whether block `block` has its bit set in node `i`'s bitmap (None without meta-data).
    pub fn block_out_of_sync(&self, node: NodeId, block: u64) -> Option<bool> {
        self.nodes[usize::from(node)]
            .engine
            .as_ref()
            .and_then(|e| e.block_out_of_sync(block))
    }

    /// Node `i`'s disk (for faults and counters).
    pub fn disk(&mut self, node: NodeId) -> &mut SimDisk {
        &mut self.nodes[usize::from(node)].disk
    }

    /// Node `i`'s disk, to look at.
    pub fn disk_ref(&self, node: NodeId) -> &SimDisk {
        &self.nodes[usize::from(node)].disk
    }

    /// Checks every engine's invariants (they are also checked after every step).
    pub fn invariants(&self) {
        for n in &self.nodes {
            if let Some(e) = &n.engine {
                e.invariants();
            }
        }
    }

    /// One line per node, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.engine {
                None => s.push_str(&format!("  node {i}: down\n")),
                Some(e) => {
                    let st = NodeStatus::of(e);
                    let peer = st.peer.as_ref().map(|p| {
                        format!(
                            "{:?} peer {:?}/{:?} pending {} unacked {} resync {:?} sb {} err {:?}",
                            p.conn,
                            p.peer_role,
                            p.peer_disk,
                            p.pending,
                            p.unacked,
                            p.resync.map(|r| (r.total_sectors, r.left_sectors)),
                            p.split_brain,
                            p.last_error
                        )
                    });
                    s.push_str(&format!(
                        "  node {i}: {:?}/{:?} oos {} upper {} lower {} busy {:?} conn {}\n",
                        st.role,
                        st.disk,
                        st.out_of_sync_bytes,
                        st.upper_pending,
                        st.lower_pending,
                        st.busy_with,
                        peer.unwrap_or_else(|| "-".into())
                    ));
                    let logs: Vec<String> = n
                        .events
                        .iter()
                        .filter_map(|(t, e)| match e {
                            Event::Log { message, .. } => {
                                Some(format!("    t={:.3} {message}", t.0 as f64 / 1e9))
                            }
                            _ => None,
                        })
                        .collect();
                    for line in &logs[logs.len().saturating_sub(6)..] {
                        s.push_str(line);
                        s.push('\n');
                    }
                }
            }
        }
        s
    }

    /// Says what the run is doing, for failure messages (a workload's epoch and fault).
    pub fn set_context(&mut self, context: String) {
        self.context = context;
    }

    /// Fails the run as a scenario's own expectation ([`Checker::Scenario`]): the seed, the
    /// time, the context and every node's state.
    pub fn fail(&self, what: &str) -> ! {
        self.fail_by(Checker::Scenario, what)
    }

    /// Fails the run, naming the checker that caught it ([`checker::raise`]).
    pub fn fail_by(&self, checker: Checker, what: &str) -> ! {
        checker::raise(
            checker,
            format!(
                "seed {}: t={:.6}s step {}: {what}\n  during: {}\n{}",
                self.seed,
                self.now.0 as f64 / 1e9,
                self.steps,
                self.context,
                self.describe()
            ),
        )
    }

    // ---- admin commands ------------------------------------------------------------------

    /// Runs `cmd` on node `i` until its `CommandDone` arrives; fails the run if it does not
    /// within the limit.
    pub fn command(&mut self, node: NodeId, cmd: AdminCommand) -> Result<(), CommandError> {
        let now = self.now;
        let id = self.start_command(node, cmd.clone());
        let deadline = now.plus(self.options.limit);
        loop {
            if let Some(result) = self.nodes[usize::from(node)].done.get(&id) {
                return *result;
            }
            if !self.is_up(node) {
                self.fail(&format!("node {node} went down during {cmd:?}"));
            }
            if !self.step_before(deadline) {
                self.fail_by(
                    Checker::Progress,
                    &format!(
                        "node {node}: {cmd:?} did not finish within {:?}",
                        self.options.limit
                    ),
                );
            }
        }
    }

    /// Hands `cmd` to node `i` without running the simulation; its result is
    /// [`Cluster::command_result`] once the engine finished it.
    pub fn start_command(&mut self, node: NodeId, cmd: AdminCommand) -> CommandId {
        let now = self.nodes[usize::from(node)].clock(self.now);
        let Some(engine) = self.nodes[usize::from(node)].engine.as_mut() else {
            self.fail(&format!("{cmd:?} on node {node}, which is down"));
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let id = engine.command(now, cmd);
            engine.invariants();
            id
        }));
        let id = match result {
            Ok(id) => id,
            Err(panic) => self.engine_panicked(node, panic),
        };
        self.route(node);
        id
    }

    /// The result of command `id` on node `i`, if it finished.
    pub fn command_result(&self, node: NodeId, id: CommandId) -> Option<Result<(), CommandError>> {
        self.nodes[usize::from(node)].done.get(&id).copied()
    }

    /// Runs `cmd`; a refusal fails the run.
    pub fn must(&mut self, node: NodeId, cmd: AdminCommand) {
        if let Err(e) = self.command(node, cmd.clone()) {
            self.fail(&format!("node {node}: {cmd:?} refused: {e}"));
        }
    }

    // ---- block requests -----------------------------------------------------------------

    /// Submits a request on node `i` (its id is replaced by a fresh one); returns the id.
    pub fn submit(&mut self, node: NodeId, request: BlockRequest) -> BlockRequestId {
        let id = BlockRequestId(self.next_request);
        self.next_request += 1;
        let (request, written) = match request {
            BlockRequest::Read { offset, len, .. } => {
                (BlockRequest::Read { id, offset, len }, None)
            }
            BlockRequest::Write {
                offset, data, fua, ..
            } => (
                BlockRequest::Write {
                    id,
                    offset,
                    data: data.clone(),
                    fua,
                },
                Some((offset, data)),
            ),
            BlockRequest::Flush { .. } => (BlockRequest::Flush { id }, None),
            BlockRequest::Discard {
                offset, len, fua, ..
            } => (
                BlockRequest::Discard {
                    id,
                    offset,
                    len,
                    fua,
                },
                Some((offset, Bytes::from(vec![0u8; len as usize]))),
            ),
            BlockRequest::WriteZeroes {
                offset,
                len,
                no_hole,
                fua,
                ..
            } => (
                BlockRequest::WriteZeroes {
                    id,
                    offset,
                    len,
                    no_hole,
                    fua,
                },
                Some((offset, Bytes::from(vec![0u8; len as usize]))),
            ),
        };
        let write = written.map(|(offset, data)| {
            self.writes.push(WriteRecord {
                id,
                node,
                offset,
                data,
                acked: false,
                promised: false,
            });
            self.writes.len() - 1
        });
        if !self.is_up(node) {
            self.fail(&format!("request on node {node}, which is down"));
        }
        let read_len = match &request {
            BlockRequest::Read { len, .. } => Some(*len),
            _ => None,
        };
        self.requests.insert(
            id,
            InFlight {
                node,
                write,
                read_len,
            },
        );
        self.deliver(node, Input::Block(request));
        id
    }

    /// Submits a write.
    pub fn submit_write(
        &mut self,
        node: NodeId,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> BlockRequestId {
        self.submit(
            node,
            BlockRequest::Write {
                id: BlockRequestId(0),
                offset,
                data,
                fua,
            },
        )
    }

    /// Submits a read.
    pub fn submit_read(&mut self, node: NodeId, offset: u64, len: u32) -> BlockRequestId {
        self.submit(
            node,
            BlockRequest::Read {
                id: BlockRequestId(0),
                offset,
                len,
            },
        )
    }

    /// Submits a flush.
    pub fn submit_flush(&mut self, node: NodeId) -> BlockRequestId {
        self.submit(
            node,
            BlockRequest::Flush {
                id: BlockRequestId(0),
            },
        )
    }

    /// The result of request `id`, if it completed.
    pub fn completion(&self, id: BlockRequestId) -> Option<&Result<Option<Bytes>, BlockError>> {
        self.completions.get(&id).map(|(_, r)| r)
    }

    /// Whether request `id` was lost in a crash of its node.
    pub fn is_lost(&self, id: BlockRequestId) -> bool {
        self.lost.contains(&id)
    }

    /// Runs until request `id` completes; fails the run if it does not within the limit or
    /// its node crashes.
    pub fn wait(&mut self, id: BlockRequestId) -> Result<Option<Bytes>, BlockError> {
        let deadline = self.now.plus(self.options.limit);
        loop {
            if let Some(r) = self.completion(id) {
                return r.clone();
            }
            if self.lost.contains(&id) {
                self.fail(&format!("request {id:?} was lost in a crash"));
            }
            if !self.step_before(deadline) {
                self.fail_by(
                    Checker::Progress,
                    &format!(
                        "request {id:?} did not complete within {:?}",
                        self.options.limit
                    ),
                );
            }
        }
    }

    /// Writes and waits.
    pub fn write(
        &mut self,
        node: NodeId,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), BlockError> {
        let id = self.submit_write(node, offset, data, fua);
        self.wait(id).map(|_| ())
    }

    /// Reads and waits.
    pub fn read(&mut self, node: NodeId, offset: u64, len: u32) -> Result<Bytes, BlockError> {
        let id = self.submit_read(node, offset, len);
        self.wait(id).map(|d| d.expect("read data"))
    }

    /// Flushes and waits.
    pub fn flush(&mut self, node: NodeId) -> Result<(), BlockError> {
        let id = self.submit_flush(node);
        self.wait(id).map(|_| ())
    }

    /// Blocks of 4 KiB in the smallest data area (the device of disks of different sizes).
    pub fn data_blocks(&self) -> u64 {
        (0..self.nodes.len() as NodeId)
            .map(|i| self.data_area(i).len() as u64 / BLOCK)
            .min()
            .unwrap_or(0)
    }

    /// The offset and data of modelled write `id`.
    pub fn write_of(&self, id: BlockRequestId) -> Option<(u64, Bytes)> {
        self.writes
            .iter()
            .find(|w| w.id == id)
            .map(|w| (w.offset, w.data.clone()))
    }

    /// Whether a write in flight covers `block`.
    fn block_busy(&self, block: u64) -> bool {
        self.requests.values().any(|r| {
            r.write.is_some_and(|w| {
                let w = &self.writes[w];
                let end = w.offset + w.data.len() as u64;
                w.offset < (block + 1) * BLOCK && block * BLOCK < end
            })
        })
    }

    /// Submits one write of a random 4 KiB block of random content on node `i`, to a block
    /// no write in flight covers (the order of overlapping concurrent writes is undefined);
    /// every `fua_every`-th with FUA (0: none). Does not wait.
    pub fn submit_random_write(&mut self, node: NodeId, fua_every: u64) -> BlockRequestId {
        let blocks = self.data_blocks();
        let block = loop {
            let b = self.rng.next_u64() % blocks;
            if !self.block_busy(b) {
                break b;
            }
        };
        let data = pattern(self.rng.next_u64(), BLOCK as usize);
        let fua = fua_every != 0 && self.rng.next_u64().is_multiple_of(fua_every);
        self.submit_write(node, block * BLOCK, data, fua)
    }

    /// `count` random writes on node `i` with up to `depth` in flight; waits for all of
    /// them and returns their ids (see [`Cluster::submit_random_write`]).
    pub fn random_writes(
        &mut self,
        node: NodeId,
        count: usize,
        depth: usize,
    ) -> Vec<BlockRequestId> {
        assert!(depth >= 1);
        let mut ids = Vec::with_capacity(count);
        let deadline = self.now.plus(self.options.limit);
        while ids.len() < count || ids.iter().any(|id| self.completion(*id).is_none()) {
            let in_flight = ids
                .iter()
                .filter(|id| self.completion(**id).is_none())
                .count();
            if ids.len() < count && in_flight < depth {
                let id = self.submit_random_write(node, 8);
                ids.push(id);
                continue;
            }
            if ids.iter().any(|id| self.lost.contains(id)) {
                self.fail("a random write was lost in a crash");
            }
            if !self.step_before(deadline) {
                self.fail_by(
                    Checker::Progress,
                    &format!(
                        "random writes on node {node} did not complete within {:?}",
                        self.options.limit
                    ),
                );
            }
        }
        ids
    }

    // ---- running -------------------------------------------------------------------------

    /// Runs until `done` holds (checked after every step); false if `limit` of simulated time
    /// passed first (then the clock stands at the limit).
    pub fn try_run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> bool {
        let deadline = self.now.plus(limit);
        loop {
            if done(self) {
                return true;
            }
            if !self.step_before(deadline) {
                self.now = self.now.max(deadline);
                return done(self);
            }
        }
    }

    /// Runs until `done` holds; fails the run, naming `what`, if it does not within `limit`.
    pub fn run_until(&mut self, what: &str, limit: Duration, done: impl FnMut(&Cluster) -> bool) {
        if !self.try_run_until(limit, done) {
            self.fail_by(
                Checker::Progress,
                &format!("not reached within {limit:?}: {what}"),
            );
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        self.try_run_until(d, |_| false);
    }

    /// Whether every node that has a peer is up and Connected (no resync running).
    pub fn all_connected(&self) -> bool {
        (0..self.nodes.len() as NodeId)
            .filter(|&i| self.peer_of(i).is_some())
            .all(|i| self.is_up(i) && self.conn(i) == Some(ConnState::Connected))
    }

    /// Whether every node with a peer is Connected, UpToDate, sees its peer UpToDate, and
    /// has nothing out of sync.
    pub fn all_in_sync(&self) -> bool {
        self.all_connected()
            && (0..self.nodes.len() as NodeId)
                .filter(|&i| self.peer_of(i).is_some())
                .all(|i| {
                    let st = self.status(i);
                    st.disk == DiskState::UpToDate
                        && st.out_of_sync_bytes == 0
                        && st.peer.is_some_and(|p| p.peer_disk == DiskState::UpToDate)
                })
    }

    /// Runs until every pair is Connected.
    pub fn wait_connected(&mut self, limit: Duration) {
        self.run_until("every node Connected", limit, |c| c.all_connected());
    }

    /// Runs until every pair is Connected and UpToDate with nothing out of sync.
    pub fn wait_in_sync(&mut self, limit: Duration) {
        self.run_until("every node Connected, UpToDate, in sync", limit, |c| {
            c.all_in_sync()
        });
    }

    /// Runs until node `i` no longer has a connection.
    pub fn wait_disconnected(&mut self, node: NodeId, limit: Duration) {
        self.run_until(&format!("node {node} disconnected"), limit, |c| {
            !c.is_up(node) || !is_connected(c.conn(node))
        });
    }

    /// One step: the next ready input, or else a jump of the clock to the next due event,
    /// if it is due by `deadline`. False if nothing is due by then.
    fn step_before(&mut self, deadline: Instant) -> bool {
        if let Some((node, input)) = self.ready.pop_front() {
            self.deliver(node, input);
            return true;
        }
        let Some(at) = self.next_due() else {
            return false;
        };
        if at > deadline {
            return false;
        }
        self.advance_to(at);
        true
    }

    /// Advances as [`Cluster::try_run_until`] would by one step; false if nothing is
    /// scheduled at all.
    pub fn step(&mut self) -> bool {
        self.step_before(Instant(u64::MAX))
    }

    fn next_due(&self) -> Option<Instant> {
        let nodes = self
            .nodes
            .iter()
            .flat_map(|n| [n.disk.next_due(), n.deadline()]);
        nodes.chain([self.net.next_due()]).flatten().min()
    }

    /// Moves the clock to `at` and queues everything due then.
    fn advance_to(&mut self, at: Instant) {
        if at > self.now {
            self.now = at;
            self.steps_at_now = 0;
        }
        let now = self.now;
        for i in 0..self.nodes.len() {
            let node = i as NodeId;
            for (c, area, offset, len, write) in self.nodes[i].disk.complete_due(now) {
                if c.result.is_err() && area == DiskArea::Data && write && len > 0 {
                    let blocks = offset / BLOCK..(offset + len).div_ceil(BLOCK);
                    self.nodes[i].failed_write_blocks.extend(blocks);
                }
                if self.options.journal && c.result.is_err() && area == DiskArea::Data {
                    self.journal.push(JournalEntry::DataIoError {
                        node,
                        offset,
                        len,
                        write,
                    });
                }
                self.ready.push_back((node, Input::Disk(c)));
            }
        }
        for event in self.net.poll(now) {
            self.on_net_event(event);
        }
        for i in 0..self.nodes.len() {
            let due = self.nodes[i].deadline().is_some_and(|t| t <= now);
            if due {
                self.ready.push_back((i as NodeId, Input::Timeout));
            }
        }
    }

    /// Hands one input to node `i`'s engine, checks invariants, routes the outputs.
    fn deliver(&mut self, node: NodeId, input: Input) {
        self.steps += 1;
        self.steps_at_now += 1;
        if self.steps_at_now > MAX_STEPS_PER_INSTANT {
            self.fail_by(
                Checker::Progress,
                &format!("livelock: more than {MAX_STEPS_PER_INSTANT} steps at one instant"),
            );
        }
        if self.steps_at_now + 8 > MAX_STEPS_PER_INSTANT {
            // About to be declared a livelock: say what goes round.
            let what = match &input {
                Input::Peer(PeerInput::Received { conn, bytes }) => {
                    format!(
                        "Received {conn:?} {} bytes {:02x?}",
                        bytes.len(),
                        &bytes[..bytes.len().min(16)]
                    )
                }
                other => format!("{other:?}").chars().take(200).collect(),
            };
            self.context
                .push_str(&format!("\n  node {node} input: {what}"));
        }
        let n = &mut self.nodes[usize::from(node)];
        let now = n.clock(self.now);
        let Some(engine) = n.engine.as_mut() else {
            return;
        };
        let closed = match &input {
            Input::Peer(p) => {
                let conn = match p {
                    PeerInput::Accepted { conn }
                    | PeerInput::Connected { conn }
                    | PeerInput::Received { conn, .. }
                    | PeerInput::Sent { conn, .. }
                    | PeerInput::Closed { conn } => *conn,
                };
                if !n.sockets.contains_key(&conn) {
                    // The engine closed it meanwhile: events for it are dropped.
                    return;
                }
                matches!(p, PeerInput::Closed { .. }).then_some(conn)
            }
            _ => None,
        };
        let check = self.options.invariants_every_step;
        let result = catch_unwind(AssertUnwindSafe(|| {
            engine.handle(now, input);
            if check {
                engine.invariants();
            }
        }));
        if let Err(panic) = result {
            self.engine_panicked(node, panic);
        }
        let n = &mut self.nodes[usize::from(node)];
        if let Some(conn) = closed
            && let Some(socket) = n.sockets.remove(&conn)
            && let Some(net) = socket.net
        {
            n.from_net.remove(&net);
        }
        self.route(node);
    }

    /// An engine's panic (a bug or a violated invariant) fails the run with the seed.
    fn engine_panicked(&self, node: NodeId, panic: Box<dyn std::any::Any + Send>) -> ! {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        self.fail_by(
            Checker::Invariants,
            &format!("node {node}: the engine panicked: {message}"),
        )
    }

    // ---- routing -------------------------------------------------------------------------

    fn route(&mut self, node: NodeId) {
        loop {
            let Some(out) = self.nodes[usize::from(node)]
                .engine
                .as_mut()
                .and_then(|e| e.poll_output())
            else {
                return;
            };
            match out {
                Output::Disk(op) => {
                    let now = self.now;
                    self.nodes[usize::from(node)].disk.submit(op, now);
                }
                Output::Block(c) => self.on_block_completion(node, c),
                Output::Event(e) => self.on_event(node, e),
                Output::Peer(p) => self.on_peer_output(node, p),
            }
        }
    }

    fn on_block_completion(&mut self, node: NodeId, c: BlockCompletion) {
        let Some(r) = self.requests.remove(&c.id) else {
            self.fail(&format!("node {node} completed unknown request {:?}", c.id));
        };
        if r.node != node {
            self.fail(&format!(
                "node {node} completed request {:?} of node {}",
                c.id, r.node
            ));
        }
        // Whatever a peer sent: a read that succeeds returns exactly the bytes asked for.
        if let (Some(len), Ok(data)) = (r.read_len, &c.result) {
            let got = data.as_ref().map(|d| d.len());
            if got != Some(len as usize) {
                self.fail_by(
                    Checker::Invariants,
                    &format!(
                        "node {node} completed read {:?} of {len} bytes with {got:?} bytes",
                        c.id
                    ),
                );
            }
        }
        let ack = if r.write.is_some() || self.options.journal {
            self.ack_info(node)
        } else {
            AckInfo::default()
        };
        if let (Some(w), Ok(_)) = (r.write, &c.result) {
            let promised = ack.protocol_c
                && ack.primary
                && ack.peer_up_to_date
                && ack.conn == Some(ConnState::Connected);
            let record = &mut self.writes[w];
            record.acked = true;
            record.promised = promised;
        }
        if self.options.journal {
            self.journal.push(JournalEntry::Completed {
                id: c.id,
                node,
                result: c.result.clone(),
                ack,
            });
        }
        self.completions.insert(c.id, (node, c.result));
    }

    /// What node `i` knows when it completes a request (see [`AckInfo`]).
    fn ack_info(&self, node: NodeId) -> AckInfo {
        let engine = self.engine(node);
        let (role, peer) = engine.role_and_peer();
        let protocol_c = engine
            .config()
            .net
            .as_ref()
            .is_some_and(|n| n.protocol == WireProtocol::C);
        let connected = peer.is_some_and(|(conn, _)| is_connected(Some(conn)));
        AckInfo {
            protocol_c,
            conn: peer.map(|(conn, _)| conn),
            connected,
            peer_up_to_date: connected && peer.is_some_and(|(_, disk)| disk == DiskState::UpToDate),
            peer_has_disk: connected
                && peer.is_some_and(|(_, disk)| {
                    disk >= DiskState::Inconsistent && disk != DiskState::DUnknown
                }),
            primary: role == Role::Primary,
        }
    }

    /// Takes what was journaled since the last call ([`ClusterOptions::journal`]).
    pub fn take_journal(&mut self) -> Vec<JournalEntry> {
        std::mem::take(&mut self.journal)
    }

    fn on_event(&mut self, node: NodeId, event: Event) {
        let now = self.now;
        match event {
            Event::StateChanged => {
                let before = self.nodes[usize::from(node)]
                    .history
                    .last()
                    .map(|(_, s)| *s);
                self.record_state(node);
                if !self.tampered {
                    // Both judge the engines by the data and states an honest peer gives.
                    self.check_primaries();
                    if let Some(before) = before {
                        self.check_resync_done(node, before);
                    }
                }
            }
            Event::CommandDone { id, result } => {
                if self.options.journal {
                    self.journal
                        .push(JournalEntry::CommandDone { node, id, result });
                }
                let n = &mut self.nodes[usize::from(node)];
                n.done.insert(id, result);
                n.events.push((now, Event::CommandDone { id, result }));
            }
            other => self.nodes[usize::from(node)].events.push((now, other)),
        }
    }

    fn record_state(&mut self, node: NodeId) {
        let snapshot = self.snapshot(node);
        let now = self.now;
        let history = &mut self.nodes[usize::from(node)].history;
        if history.last().map(|(_, s)| *s) != Some(snapshot) {
            history.push((now, snapshot));
            if self.options.journal {
                self.journal.push(JournalEntry::State { node, snapshot });
            }
        }
    }

    /// Convergence, when a SyncSource declares its resync done (its peer UpToDate): the
    /// SyncTarget holds the source's data in every block the source no longer marks. The
    /// source clears a bit at P_RS_WRITE_ACK, which the target sends once it wrote the block;
    /// so the replicas are identical then, except in blocks an application write is changing
    /// (protocol C only: under A and B a completed write may still be on its way to the
    /// peer), blocks the source still marks (a resync request that failed), and blocks the
    /// target marks itself where a write to its disk failed (its own write of the block
    /// failed after the peer had taken it: swarm seed 16734; the target's resync goes on, and
    /// the liveness phase's convergence check judges the end).
    fn check_resync_done(&self, node: NodeId, before: Snapshot) {
        let after = self.snapshot(node);
        let was_source = matches!(
            before.conn,
            Some(ConnState::SyncSource | ConnState::PausedSyncS)
        );
        if !was_source
            || after.conn != Some(ConnState::Connected)
            || after.peer_disk != DiskState::UpToDate
            || self.options.protocol != WireProtocol::C
        {
            return;
        }
        let Some(peer) = self.peer_of(node).filter(|&p| self.is_up(p)) else {
            return;
        };
        // The device only: what lies past a device a user size shrank is no replica.
        let size = self
            .status(node)
            .size_bytes
            .min(self.status(peer).size_bytes) as usize;
        let (mine, theirs) = (self.data_area(node), self.data_area(peer));
        let (mine, theirs) = (
            &mine[..size.min(mine.len())],
            &theirs[..size.min(theirs.len())],
        );
        let block = BLOCK as usize;
        for (b, (x, y)) in mine.chunks(block).zip(theirs.chunks(block)).enumerate() {
            let b = b as u64;
            if x != y
                && !self.block_busy(b)
                && self.block_out_of_sync(node, b) == Some(false)
                && !(self.block_out_of_sync(peer, b) == Some(true)
                    && self.nodes[usize::from(peer)]
                        .failed_write_blocks
                        .contains(&b))
            {
                self.fail_by(
                    Checker::Convergence,
                    &format!(
                        "replicas differ when node {node} ended its resync as SyncSource (peer UpToDate): block {b} on node {peer} is not the source's, and the source does not mark it"
                    ),
                );
            }
        }
    }

    /// Never two Primaries connected to each other (no allow-two-primaries).
    fn check_primaries(&self) {
        for i in 0..self.nodes.len() as NodeId {
            let Some(j) = self.peer_of(i) else { continue };
            if j < i || !self.is_up(i) || !self.is_up(j) {
                continue;
            }
            let (a, b) = (self.snapshot(i), self.snapshot(j));
            if a.role == Role::Primary
                && b.role == Role::Primary
                && is_connected(a.conn)
                && is_connected(b.conn)
            {
                self.fail_by(
                    Checker::Primaries,
                    &format!("nodes {i} and {j} are both Primary and connected"),
                );
            }
        }
    }

    fn on_peer_output(&mut self, node: NodeId, out: PeerOutput) {
        let now = self.now;
        match out {
            PeerOutput::Listen { addr } => {
                if addr != address(node) {
                    self.fail(&format!("node {node} listens on {addr}, not its address"));
                }
                self.net.listen(node);
            }
            PeerOutput::StopListening => self.net.stop_listening(node),
            PeerOutput::Connect { conn, addr } => {
                let n = &self.nodes[usize::from(node)];
                if conn.0 < OUTGOING_CONN_ID_BASE || n.sockets.contains_key(&conn) {
                    self.fail(&format!(
                        "node {node} connects with a bad or used id {conn:?}"
                    ));
                }
                let net = self.node_at(addr).map(|to| self.net.connect(now, node, to));
                let n = &mut self.nodes[usize::from(node)];
                n.sockets.insert(
                    conn,
                    Socket {
                        net,
                        closed_by_net: false,
                        paused: false,
                        held: VecDeque::new(),
                        unsent: VecDeque::new(),
                    },
                );
                match net {
                    Some(net) => {
                        n.from_net.insert(net, conn);
                    }
                    None => self
                        .ready
                        .push_back((node, Input::Peer(PeerInput::Closed { conn }))),
                }
            }
            PeerOutput::Send { conn, head, data } => {
                let Some(socket) = self.nodes[usize::from(node)].sockets.get(&conn) else {
                    self.fail(&format!("node {node} sends on unknown socket {conn:?}"));
                };
                if socket.closed_by_net {
                    return;
                }
                let Some(net) = socket.net else {
                    self.fail(&format!("node {node} sends on unconnected socket {conn:?}"));
                };
                if self.options.socket_buffer.is_some() && !self.tampered {
                    let socket = self.nodes[usize::from(node)]
                        .sockets
                        .get_mut(&conn)
                        .expect("checked");
                    socket.unsent.push_back(head);
                    if !data.is_empty() {
                        socket.unsent.push_back(data);
                    }
                    self.flush_unsent(node, conn);
                    return;
                }
                let bytes = (head.len() + data.len()) as u64;
                for segment in self.tamper.packet(node, conn, head, data) {
                    if !segment.is_empty() {
                        self.net.send(now, node, net, segment);
                    }
                }
                // The socket took it all.
                self.report_sent(node, conn, bytes);
            }
            PeerOutput::Receive { conn, enabled } => {
                let n = &mut self.nodes[usize::from(node)];
                self.receive_pauses += u64::from(!enabled);
                if let Some(s) = n.sockets.get_mut(&conn) {
                    s.paused = !enabled;
                    if enabled {
                        let held: Vec<PeerInput> = s.held.drain(..).collect();
                        let net = s.net;
                        for input in held {
                            self.hand_over(node, net, input);
                        }
                    }
                }
            }
            PeerOutput::Close { conn } => {
                let n = &mut self.nodes[usize::from(node)];
                if let Some(socket) = n.sockets.remove(&conn)
                    && let Some(net) = socket.net
                {
                    n.from_net.remove(&net);
                    self.in_sockets.retain(|(c, _), _| *c != net);
                    if self.options.abortive_close {
                        self.net.close(now, node, net);
                    } else {
                        self.net.shutdown(now, node, net);
                    }
                }
            }
        }
    }

    /// What the network brought for socket `id` of `node` (network connection `net`): held
    /// while the engine does not read the socket, delivered otherwise.
    fn arrive(&mut self, node: NodeId, id: ConnId, net: NetConnId, input: PeerInput) {
        match self.nodes[usize::from(node)].sockets.get_mut(&id) {
            Some(s) if s.paused => s.held.push_back(input),
            _ => self.hand_over(node, Some(net), input),
        }
    }

    /// Hands `input` to `node`'s engine; received bytes free room in the sender's socket.
    fn hand_over(&mut self, node: NodeId, net: Option<NetConnId>, input: PeerInput) {
        let received = match (&input, net) {
            (PeerInput::Received { bytes, .. }, Some(net)) => Some((net, bytes.len() as u64)),
            _ => None,
        };
        self.ready.push_back((node, Input::Peer(input)));
        if let Some((net, len)) = received {
            self.consumed(node, net, len);
        }
    }

    /// Reports `bytes` more sent on a socket: one report covers consecutive sends on a socket
    /// (the kernel reports cumulative progress too).
    fn report_sent(&mut self, node: NodeId, conn: ConnId, bytes: u64) {
        if let Some((n, Input::Peer(PeerInput::Sent { conn: c, bytes: b }))) = self.ready.back_mut()
            && *n == node
            && *c == conn
        {
            *b += bytes;
        } else {
            self.ready
                .push_back((node, Input::Peer(PeerInput::Sent { conn, bytes })));
        }
    }

    /// Hands a socket's unsent bytes to the network while its buffer has room
    /// (`socket_buffer`), and reports them sent.
    fn flush_unsent(&mut self, node: NodeId, conn: ConnId) {
        let Some(capacity) = self.options.socket_buffer else {
            return;
        };
        let now = self.now;
        let Some(socket) = self.nodes[usize::from(node)].sockets.get_mut(&conn) else {
            return;
        };
        let Some(net) = socket.net.filter(|_| !socket.closed_by_net) else {
            socket.unsent.clear();
            return;
        };
        let in_socket = self.in_sockets.entry((net, node)).or_default();
        let mut sent = 0;
        while *in_socket < capacity
            && let Some(front) = socket.unsent.front_mut()
        {
            let room = (capacity - *in_socket) as usize;
            let chunk = if front.len() <= room {
                socket.unsent.pop_front().expect("unsent bytes")
            } else {
                front.split_to(room)
            };
            *in_socket += chunk.len() as u64;
            sent += chunk.len() as u64;
            self.net.send(now, node, net, chunk);
        }
        if sent > 0 {
            self.report_sent(node, conn, sent);
        }
    }

    /// `node`'s engine got `bytes` of network connection `net`: its peer's socket has room
    /// for that much more.
    fn consumed(&mut self, node: NodeId, net: NetConnId, bytes: u64) {
        if self.options.socket_buffer.is_none() {
            return;
        }
        let sender = node ^ 1;
        if let Some(in_socket) = self.in_sockets.get_mut(&(net, sender)) {
            *in_socket = in_socket.saturating_sub(bytes);
        }
        if let Some(&conn) = self
            .nodes
            .get(usize::from(sender))
            .and_then(|n| n.from_net.get(&net))
        {
            self.flush_unsent(sender, conn);
        }
    }

    fn on_net_event(&mut self, event: NetEvent) {
        let now = self.now;
        match event {
            NetEvent::Accepted { node, conn, .. } => {
                let n = &mut self.nodes[usize::from(node)];
                if n.engine.is_none() {
                    self.net.reset(now, conn);
                    return;
                }
                let id = ConnId(n.next_accept);
                n.next_accept += 1;
                assert!(id.0 < OUTGOING_CONN_ID_BASE);
                n.sockets.insert(
                    id,
                    Socket {
                        net: Some(conn),
                        closed_by_net: false,
                        paused: false,
                        held: VecDeque::new(),
                        unsent: VecDeque::new(),
                    },
                );
                n.from_net.insert(conn, id);
                self.ready
                    .push_back((node, Input::Peer(PeerInput::Accepted { conn: id })));
            }
            NetEvent::Connected { node, conn } => {
                match self.nodes[usize::from(node)].from_net.get(&conn) {
                    Some(&id) => self
                        .ready
                        .push_back((node, Input::Peer(PeerInput::Connected { conn: id }))),
                    None => self.net.close(now, node, conn),
                }
            }
            NetEvent::ConnectFailed { node, conn } | NetEvent::Closed { node, conn } => {
                let n = &mut self.nodes[usize::from(node)];
                if let Some(&id) = n.from_net.get(&conn) {
                    if let Some(s) = n.sockets.get_mut(&id) {
                        s.closed_by_net = true;
                    }
                    self.arrive(node, id, conn, PeerInput::Closed { conn: id });
                }
            }
            NetEvent::Received { node, conn, bytes } => {
                let n = &self.nodes[usize::from(node)];
                if let Some(&id) = n.from_net.get(&conn)
                    && n.sockets.get(&id).is_some_and(|s| !s.closed_by_net)
                {
                    self.arrive(node, id, conn, PeerInput::Received { conn: id, bytes });
                }
            }
        }
    }

    // ---- checkers --------------------------------------------------------------------------

    /// Forgets the write model (after a split-brain resolution discarded writes on purpose).
    pub fn forget_writes(&mut self) {
        self.writes.clear();
    }

    /// Whether a later modelled write (submitted after `id`) overlaps write `id`.
    pub fn superseded(&self, id: BlockRequestId) -> bool {
        let Some(at) = self.writes.iter().position(|w| w.id == id) else {
            return false;
        };
        let w = &self.writes[at];
        let end = w.offset + w.data.len() as u64;
        self.writes[at + 1..]
            .iter()
            .any(|l| l.offset < end && w.offset < l.offset + l.data.len() as u64)
    }

    /// Whether node `i`'s data holds write `id`, or a later write overlaps it.
    pub fn holds_write_or_newer(&self, node: NodeId, id: BlockRequestId) -> bool {
        self.superseded(id) || self.holds_write(node, id)
    }

    /// Whether node `i`'s data holds all of write `id`.
    pub fn holds_write(&self, node: NodeId, id: BlockRequestId) -> bool {
        let w = self
            .writes
            .iter()
            .find(|w| w.id == id)
            .expect("a modelled write");
        let data = self.data_area(node);
        data[w.offset as usize..w.offset as usize + w.data.len()] == w.data[..]
    }

    /// Durability across a failover: every sector whose last write was acknowledged by a
    /// Primary under protocol C while its peer was Connected and UpToDate holds that write on
    /// node `i`. Returns the number of sectors verified.
    pub fn check_acked_writes(&self, node: NodeId) -> u64 {
        let mut last: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, w) in self.writes.iter().enumerate() {
            let first = w.offset / SECTOR;
            for s in first..first + (w.data.len() as u64).div_ceil(SECTOR) {
                last.insert(s, i);
            }
        }
        let data = self.data_area(node);
        let mut verified = 0;
        for (sector, i) in last {
            let w = &self.writes[i];
            if !(w.acked && w.promised) {
                continue;
            }
            let at = (sector * SECTOR - w.offset) as usize;
            let expected = &w.data[at..at + SECTOR as usize];
            let got = &data[(sector * SECTOR) as usize..((sector + 1) * SECTOR) as usize];
            if got != expected {
                self.fail_by(Checker::Durability, &format!(
                    "durability: node {node} lost sector {sector} of write {:?} (acknowledged by node {} under protocol C while the peer was Connected and UpToDate)",
                    w.id, w.node
                ));
            }
            verified += 1;
        }
        verified
    }

    /// Register: on node `i` (a Primary), every modelled write that completed successfully
    /// and that no later write overlaps reads back. A write lost in a crash before it
    /// completed makes the blocks it covers unknown, so they are skipped. Returns the number
    /// of writes read back.
    pub fn check_reads(&mut self, node: NodeId) -> u64 {
        let lost: Vec<(u64, u64)> = self
            .writes
            .iter()
            .filter(|w| self.lost.contains(&w.id))
            .map(|w| (w.offset, w.offset + w.data.len() as u64))
            .collect();
        let candidates: Vec<(BlockRequestId, u64, Bytes)> = self
            .writes
            .iter()
            .filter(|w| {
                w.acked
                    && matches!(self.completions.get(&w.id), Some((_, Ok(_))))
                    && !lost
                        .iter()
                        .any(|(a, b)| *a < w.offset + w.data.len() as u64 && w.offset < *b)
            })
            .map(|w| (w.id, w.offset, w.data.clone()))
            .collect();
        let mut verified = 0;
        for (id, offset, data) in candidates {
            if self.superseded(id) {
                continue;
            }
            match self.read(node, offset, data.len() as u32) {
                Ok(got) if got == data => verified += 1,
                Ok(_) => self.fail_by(
                    Checker::Register,
                    &format!("register: node {node} does not read back write {id:?} at {offset}"),
                ),
                Err(e) => self.fail(&format!("read on node {node} failed: {e:?}")),
            }
        }
        verified
    }

    /// Convergence: every pair of up nodes that are Connected with UpToDate disks on both
    /// sides has byte-identical data areas. Returns the number of pairs compared.
    pub fn check_identical(&self) -> usize {
        let mut pairs = 0;
        for i in 0..self.nodes.len() as NodeId {
            let Some(j) = self.peer_of(i) else { continue };
            if j < i || !self.is_up(i) || !self.is_up(j) {
                continue;
            }
            let (a, b) = (self.snapshot(i), self.snapshot(j));
            if !(a.conn == Some(ConnState::Connected)
                && b.conn == Some(ConnState::Connected)
                && a.disk == DiskState::UpToDate
                && b.disk == DiskState::UpToDate)
            {
                continue;
            }
            self.assert_same_data(i, j);
            pairs += 1;
        }
        pairs
    }

    /// Fails the run unless nodes `a` and `b` hold the same data.
    pub fn assert_same_data(&self, a: NodeId, b: NodeId) {
        // The whole device, a grown part included.
        let size = if self.is_up(a) && self.is_up(b) {
            self.status(a).size_bytes.min(self.status(b).size_bytes) as usize
        } else {
            self.data_area(a).len().min(self.data_area(b).len())
        };
        let (x, y) = (
            self.nodes[usize::from(a)].disk.current(0, size),
            self.nodes[usize::from(b)].disk.current(0, size),
        );
        if let Some(at) = x.iter().zip(y).position(|(p, q)| p != q) {
            let differing = x
                .chunks(4096)
                .zip(y.chunks(4096))
                .filter(|(p, q)| p != q)
                .count();
            self.fail_by(Checker::Convergence, &format!(
                "replicas differ: nodes {a} and {b} first at byte {at} (block {}); {differing} blocks of 4 KiB differ",
                at / 4096
            ));
        }
    }
}
