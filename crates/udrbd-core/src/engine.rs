//! The [`Resource`] state machine: one DRBD resource (volume 0) on one node.
//!
//! Call order: `handle(now, input)` or `command(now, cmd)`, then drain `poll_output()` until
//! it returns `None`, then arm a timer for `poll_timeout()`. Every input is processed to
//! completion inside `handle`; `progress` then advances whatever the input unblocked (activity
//! log transactions, bitmap write-out, the step of a pending command).
//!
//! Invariants (checked by [`Resource::invariants`] after every step in tests):
//! - every in-flight block request is either waiting for the activity log or has exactly one
//!   disk operation outstanding that points back to it;
//! - the activity-log references held equal the extents held by submitted or waiting writes;
//! - outstanding disk operations belong to the current attach generation, and `Diskless`
//!   means no meta-data in memory and no operation outstanding;
//! - a bitmap page is never written twice at once (a late completion could otherwise leave
//!   an older copy on disk);
//! - while Primary with a disk, the durable superblock carries MDF_PRIMARY_IND;
//! - the device fits its disk, and outside an attach the superblock's last agreed size is
//!   the device's; a grow whose superblock is not yet durable (`Disk::grow_pending`) grew
//!   the device, and no write past the old size goes to the disk before it is;
//! - the disk is Negotiating exactly while an attach that completed on an established link
//!   waits for the peer's answer (`attach_negotiation`), with no command pending.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_meta::{ActivityLog, Bitmap, Layout, MdFlags, Superblock};

use crate::state::{CommandError, DiskState, Role, StateChangeError};
use crate::timer::{Timer, TimerTable};
use crate::types::*;

/// Per-resource settings the engine needs (taken from the configuration file).
#[derive(Clone, Debug)]
pub struct ResourceConfig {
    /// Resource name.
    pub name: String,
    /// Device minor.
    pub minor: u32,
    /// Activity-log slots (`al-extents`).
    pub al_extents: u16,
    /// Whether a peer is configured: writes that do not reach it are marked out of sync.
    pub has_peer: bool,
    /// The peer's net options (`None`: no peer, never connects).
    pub net: Option<crate::peer_config::NetConfig>,
    /// Maximum in-flight block requests; more are answered `Busy`.
    pub max_requests: usize,
    /// Interval of the lazy bitmap write-out.
    pub bitmap_writeout_interval: Duration,
    /// What a local IO error does (`on-io-error`).
    pub on_io_error: OnIoError,
    /// A backing IO older than this force-detaches the disk (`disk-timeout`; `None`: off).
    pub disk_timeout: Option<Duration>,
    /// The configured user size (`disk { size }`; DRBD's disk-size, u_size), sectors: an
    /// attached device is at most this large (0: as large as the disks allow). It is what
    /// an attach starts with; `resize --size` and a connected peer's change the one in force
    /// (`Disk::user_size_sect`) until the next attach.
    pub user_size_sect: u64,
    /// A deliberately broken rule, for the simulator's mutation test only (`None`, the
    /// default, is the real engine; see [`crate::Mutation`]).
    pub mutation: Option<crate::Mutation>,
}

/// The `disk` options the engine takes from the configuration (the resync options are the
/// peer's: [`crate::NetConfig::resync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// Activity-log extents.
    pub al_extents: u16,
    /// What a local IO error does.
    pub on_io_error: OnIoError,
    /// disk-timeout (`None`: off).
    pub disk_timeout: Option<Duration>,
    /// `size` (sectors; 0: no limit): the user size of the next attach (an attached disk's
    /// changes by `resize --size`: the daemon's `adjust` runs one).
    pub size_sect: u64,
}

impl ResourceConfig {
    /// Takes these disk options.
    pub fn set_disk_options(&mut self, options: DiskOptions) {
        self.al_extents = options.al_extents;
        self.on_io_error = options.on_io_error;
        self.disk_timeout = options.disk_timeout;
        self.user_size_sect = crate::resize::whole_blocks(options.size_sect);
    }
}

/// The `on-io-error` policy of the `disk` section (drbd-v08-facts.md §5.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnIoError {
    /// The disk goes Inconsistent; the failed blocks are out of sync and served by the peer.
    PassOn,
    /// The disk goes Failed, then Diskless; IO continues through the peer.
    #[default]
    Detach,
    /// The `local-io-error` handler runs first, then as `Detach`.
    CallLocalIoError,
}

/// The kind of a local IO error (DRBD's READ, WRITE and META error kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LocalIoError {
    /// A data read.
    Read,
    /// A data write or flush.
    Write,
    /// Meta-data (superblock, activity log, bitmap).
    MetaData,
}

/// Why the local disk failed (shown by `status` until the next attach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFailure {
    /// A data read returned an error.
    ReadError,
    /// A data write returned an error.
    WriteError,
    /// A meta-data read or write returned an error.
    MetaDataError,
    /// A backing IO did not complete within `disk-timeout`.
    Timeout,
    /// `detach --force`.
    Forced,
    /// A diskless Primary's attach whose negotiation ended without a handshake, on a disk of
    /// another data generation than the one the Primary served.
    DataNotCurrent,
}

impl DiskFailure {
    /// The words `status` prints.
    pub fn words(self) -> &'static str {
        match self {
            DiskFailure::ReadError => "read error",
            DiskFailure::WriteError => "write error",
            DiskFailure::MetaDataError => "meta-data error",
            DiskFailure::Timeout => "disk-timeout",
            DiskFailure::Forced => "forced detach",
            DiskFailure::DataNotCurrent => "data not current",
        }
    }

    /// A force-detach: outstanding IO is abandoned, not waited for.
    pub fn is_forced(self) -> bool {
        matches!(self, DiskFailure::Timeout | DiskFailure::Forced)
    }
}

impl ResourceConfig {
    /// Defaults for a resource named `name`.
    pub fn new(name: &str, minor: u32) -> ResourceConfig {
        ResourceConfig {
            name: name.to_string(),
            minor,
            al_extents: 1237,
            has_peer: true,
            net: None,
            max_requests: 8192,
            bitmap_writeout_interval: Duration::from_secs(5),
            on_io_error: OnIoError::Detach,
            disk_timeout: None,
            user_size_sect: 0,
            mutation: None,
        }
    }
}

/// What an outstanding disk operation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpPurpose {
    /// The data operation of a block request.
    Request(BlockRequestId),
    /// Attach: reading the superblock.
    ReadSuperblock,
    /// Attach: reading the activity-log ring.
    ReadActivityLog,
    /// Attach: reading bitmap pages `first .. first + count`.
    ReadBitmap { first: u64, count: u64 },
    /// Writing one bitmap page.
    BitmapPage(u64),
    /// Writing an activity-log transaction.
    AlTransaction,
    /// The flush before a transaction that evicts extents.
    AlPreflush,
    /// Re-initialising the activity-log ring.
    AlInitialize,
    /// Writing the superblock (carrying this version).
    Superblock(u64),
    /// Writing data received from the peer (application or resync).
    PeerWrite(u64),
    /// Reading data for the peer.
    PeerRead(u64),
    /// Flushing before acking received epochs: those of link generation `link_gen` up to
    /// absolute number `through`.
    EpochFlush { link_gen: u64, through: u64 },
    /// Flushing resync writes before clearing their bits.
    ResyncFlush,
    /// The flush before meta-data writes (superblock, bitmap pages): DRBD writes its
    /// meta-data with FLUSH|FUA (md-flushes), so data writes that completed before a
    /// meta-data write are durable with it.
    MdPreflush,
    /// Asking the backing device for its size (`resize`).
    Capacity,
}

/// Attach, detach and the other commands that take several steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Attach in progress.
    Attach(crate::attach::AttachStep),
    /// Promotion: done when the superblock carrying this version is durable. `approved_on`
    /// names the link (its data socket) whose peer agreed to it; None when it was decided
    /// without a connection.
    Primary {
        sb_version: u64,
        approved_on: Option<crate::connection::ConnId>,
    },
    /// Demotion: bitmap first, then the superblock.
    Secondary { sb_version: Option<u64> },
    /// Detach (also the tail of `down` and of a disk failure).
    Detach(crate::attach::DetachStep),
    /// A cluster-wide state change waits for the peer's P_STATE_CHG_REPLY.
    PeerApproval,
    /// An online resize: `resize`, or a peer's larger disk (command id 0).
    Resize(crate::resize::Resize),
}

/// The attached disk: meta-data in memory and its write state.
pub(crate) struct Disk {
    pub(crate) layout: Layout,
    /// The superblock as it should be on disk.
    pub(crate) sb: Superblock,
    /// Version of `sb` (incremented on every change).
    pub(crate) sb_version: u64,
    /// Version last made durable.
    pub(crate) sb_durable: u64,
    /// A superblock write is outstanding.
    pub(crate) sb_in_flight: bool,
    pub(crate) bitmap: Bitmap,
    pub(crate) al: ActivityLog,
    /// Activity-log writer state.
    pub(crate) al_writer: AlWriter,
    /// Bitmap pages being written.
    pub(crate) pages_in_flight: BTreeSet<u64>,
    /// Exported size in sectors: the last agreed size (`sb.la_size_sect`, which follows it),
    /// or `usable_sect` on a disk that never agreed one; at most `usable_sect`.
    pub(crate) size_sect: u64,
    /// What the disk can hold, in sectors (fixed at attach).
    pub(crate) usable_sect: u64,
    /// The user size in force (sectors, 0: none; DRBD's disk_conf->disk_size of this
    /// attach): the configured one at attach, then `resize --size`'s or the peer's. It goes
    /// with the disk: the next attach takes the configured one again.
    pub(crate) user_size_sect: u64,
    /// A grow not yet durable: (the size the superblock on disk records, in sectors; the
    /// superblock version that records the new one). Writes past the old size wait for that
    /// version: a crash before it brought the node back at the old size, with acknowledged
    /// writes past its end (DRBD's drbd_determine_dev_size writes the superblock before the
    /// grown device takes writes).
    pub(crate) grow_pending: Option<(u64, u64)>,
    /// Bitmap pages owed to the disk, not yet written since they were marked: those holding
    /// the bits a grow set (its new part), or every page of a meta-data move. No
    /// superblock that records a grown size goes out before its pages are durable, or a
    /// crash in between came back at the new size with the new part taken as in sync, and
    /// a part that differed between the disks (a moved meta-data area) was never resynced
    /// (swarm seed 6670; DRBD writes the bitmap before its superblock in
    /// drbd_determine_dev_size). A move ends only once all its pages are durable.
    pub(crate) owed_pages: BTreeSet<u64>,
    /// Those of `owed_pages` whose write (which carries them) is in flight.
    pub(crate) owed_pages_in_flight: BTreeSet<u64>,
    /// The AL ring as read at attach (for the replay).
    pub(crate) al_ring: Option<Bytes>,
    /// Pages still to read at attach.
    pub(crate) bitmap_pages_to_read: u64,
    /// Data writes (application and peer) completed on this disk.
    pub(crate) data_writes_done: u64,
    /// `data_writes_done` as it was when the latest completed flush was submitted: those
    /// writes are durable.
    pub(crate) flushed_through: u64,
    /// Flushes in flight, with `data_writes_done` at their submission.
    pub(crate) flushes_in_flight: BTreeMap<DiskOpId, u64>,
    /// A superblock write waits for a flush covering this many data writes.
    pub(crate) sb_flush_need: Option<u64>,
    /// Bitmap page writes wait for a flush covering this many data writes.
    pub(crate) bm_flush_need: Option<u64>,
    /// The activity-log re-initialisation waits for a flush covering this many data writes.
    pub(crate) al_reinit_flush_need: Option<u64>,
}

impl Disk {
    /// Bits set among the first `bits` of the bitmap. Bits past a device size a smaller peer
    /// agreed stay set for a later size that covers them (a grown device marks that range
    /// anyway), but no resync can clear them and they are no part of the device.
    pub(crate) fn bits_set_within(&self, bits: u64) -> u64 {
        let all = self.bitmap.bits();
        // Usually nothing lies past `bits`: counting the tail, not the head, stays cheap.
        self.bitmap.count() - self.bitmap.count_range(bits.min(all)..all)
    }
}

/// Who waits for a meta-data preflush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MdWriter {
    Superblock,
    BitmapPages,
    /// A clean detach's re-initialisation of the activity-log ring: it ends the log's cover
    /// of completed writes, which must be durable first.
    AlReinit,
}

/// The activity-log writer: at most one transaction in flight, evicted pages first.
#[derive(Clone, Debug, Default)]
pub(crate) enum AlWriter {
    /// Nothing in flight.
    #[default]
    Idle,
    /// Waiting for the bitmap pages of the evicted extents.
    Pages {
        prepared: Box<udrbd_meta::activity_log::PreparedTransaction>,
        pages: BTreeSet<u64>,
    },
    /// The transaction evicts extents: the flush before it is in flight (completed writes
    /// of an evicted extent must be durable before the log stops covering them; DRBD writes
    /// the transaction with a preflush).
    Preflushing {
        prepared: Box<udrbd_meta::activity_log::PreparedTransaction>,
    },
    /// The preflush completed: the transaction block may be written.
    Preflushed {
        prepared: Box<udrbd_meta::activity_log::PreparedTransaction>,
    },
    /// The transaction block is being written.
    Writing,
}

/// An in-flight block request.
pub(crate) struct Request {
    pub(crate) request: BlockRequest,
    /// AL extents held (writes, discards, write-zeroes), inclusive.
    pub(crate) extents: Option<(u32, u32)>,
    /// Whether the extents' references are held.
    pub(crate) holds_extents: bool,
    /// The outstanding data operation, once submitted.
    pub(crate) op: Option<DiskOpId>,
    /// A discard or write-zeroes with FUA: a flush follows before it completes.
    pub(crate) flush_after: bool,
    /// The local part is done (or not needed).
    pub(crate) local_done: bool,
    /// The local part failed.
    pub(crate) local_error: bool,
    /// Network parts (packets) not yet confirmed as the protocol demands.
    pub(crate) net_pending: u32,
    /// A read from the peer failed.
    pub(crate) net_failed: bool,
    /// The write was sent to the peer.
    pub(crate) replicated: bool,
    /// The epoch the write was sent in.
    pub(crate) epoch: Option<u64>,
    /// A flush waits for the barrier ack of this epoch.
    pub(crate) flush_epoch: Option<u64>,
    /// Read data: (byte offset, bytes); a local read is one part at 0.
    pub(crate) read_parts: Vec<(u64, Bytes)>,
    /// The range lock of a write in flight.
    pub(crate) lock: Option<u64>,
    /// The engine's `data_generation` when the request arrived.
    pub(crate) data_generation: u64,
}

/// Counters reported by `status --statistics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    /// KiB read from the local disk.
    pub read_kib: u64,
    /// KiB written to the local disk.
    pub written_kib: u64,
    /// Activity-log transactions written.
    pub al_writes: u64,
    /// Bitmap pages written.
    pub bm_writes: u64,
}

/// A snapshot of the resource for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Resource name.
    pub name: String,
    /// Minor.
    pub minor: u32,
    /// Role.
    pub role: Role,
    /// Local disk state.
    pub disk: DiskState,
    /// Number of openers (NBD clients).
    pub openers: u32,
    /// The device size in bytes: the local disk's, or without one the size agreed with the
    /// peer (0 when neither).
    pub size_bytes: u64,
    /// The attached disk's user size in force (sectors, 0: none or no disk): `disk { size }`,
    /// `resize --size`, or the peer's.
    pub user_size_sect: u64,
    /// Bytes marked out of sync in the bitmap.
    pub out_of_sync_bytes: u64,
    /// Application requests in flight.
    pub upper_pending: u64,
    /// Data operations on the local disk in flight.
    pub lower_pending: u64,
    /// Operations of earlier attach generations that have not returned.
    pub stuck_ios: u64,
    /// Why the disk failed, since the last attach.
    pub disk_failure: Option<DiskFailure>,
    /// Local IO errors since the last attach.
    pub io_errors: u64,
    /// Application IO is served by the peer (no usable local disk).
    pub served_by_peer: bool,
    /// `suspend-io` is in force: new application IO waits (`suspended:user`).
    pub suspended_by_user: bool,
    /// A detach in progress: its step (`waiting-for-io`, `writing-bitmap`,
    /// `writing-full-sync-flag`, `clearing-al`, `writing-superblock`, `releasing`).
    pub detach_step: Option<&'static str>,
    /// Generation UUIDs and flags as in memory, if attached.
    pub generation: Option<(udrbd_meta::GenerationUuids, MdFlags)>,
    /// Counters.
    pub statistics: Statistics,
    /// A command in progress (attach, detach, ...), for `status`.
    pub busy_with: Option<&'static str>,
    /// The peer, if one is configured.
    pub peer: Option<crate::peer_config::PeerStatus>,
}

/// An attach negotiating with the connected peer (DRBD's D_NEGOTIATING).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttachNegotiation {
    /// The state the attach computed, which the disk takes when the handshake runs (DRBD's
    /// `new_state_tmp`).
    pub(crate) disk_state: DiskState,
    /// The peer's current UUID as last received (None: the peer has no disk): a disk of
    /// another generation missed the peer's writes, if the negotiation ends without a
    /// handshake.
    pub(crate) peer_current: Option<u64>,
}

/// One DRBD resource on one node. See the module doc for the call order and invariants.
pub struct Resource {
    pub(crate) config: ResourceConfig,
    pub(crate) role: Role,
    pub(crate) disk_state: DiskState,
    /// Some exactly while the disk is Negotiating: an attach that completed while connected,
    /// waiting for the peer's P_UUIDS and P_STATE.
    pub(crate) attach_negotiation: Option<AttachNegotiation>,
    pub(crate) disk: Option<Disk>,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) generation: u32,
    pub(crate) next_sequence: u32,
    pub(crate) ops: BTreeMap<DiskOpId, OpPurpose>,
    /// Outstanding operations of earlier attach generations.
    pub(crate) stale_ops: BTreeMap<u32, u64>,
    pub(crate) requests: BTreeMap<BlockRequestId, Request>,
    /// Incremented whenever a handshake makes this node's disk its peer's copy (it enters a
    /// resync as SyncTarget: a stale disk, `--discard-my-data`, a split-brain victim). A
    /// write that arrived in an earlier generation and is not yet on its way to the peer
    /// belongs to data that was given up: it fails rather than start late, or be served by
    /// the peer (`start_waiting_writes`, `serve_without_local_disk`).
    pub(crate) data_generation: u64,
    /// `pause-sync` is in force (DRBD's user_isp): a resync stays PausedSyncS/T until
    /// `resume-sync`. Kept across connections, as DRBD keeps it in the device state.
    pub(crate) user_isp: bool,
    /// `suspend-io` is in force (DRBD's susp): new application IO is held until
    /// `resume-io`; what is in flight completes.
    pub(crate) user_susp: bool,
    /// Where the next online verify starts, sectors (DRBD's ov_start_sector): where the last
    /// one stopped, 0 once one reached the end, or the `--start` of the running one.
    pub(crate) ov_start_sector: u64,
    /// Where the running (or next) online verify stops, sectors (`--stop`; DRBD's
    /// ov_stop_sector).
    pub(crate) ov_stop_sector: u64,
    /// Writes waiting for activity-log extents (references held, or none held when busy).
    pub(crate) al_waiting: VecDeque<BlockRequestId>,
    /// Application requests that arrived during an administrative detach, not yet looked at
    /// (DRBD's `drbd_suspend_io` for the whole of `adm_detach`); see
    /// [`Resource::holds_application_io`].
    pub(crate) held_requests: VecDeque<BlockRequest>,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) openers: u32,
    pub(crate) timers: TimerTable,
    pub(crate) pending: Option<(CommandId, Pending)>,
    pub(crate) next_command: u64,
    pub(crate) crashed_primary: bool,
    pub(crate) statistics: Statistics,
    pub(crate) now: Instant,
    /// The peer, if one is configured.
    pub(crate) peer: Option<crate::peer::Peer>,
    /// Incremented for every established link: completions of older links send nothing.
    pub(crate) link_gen: u64,
    /// Byte ranges with a write or a resync read/request in flight.
    pub(crate) locks: BTreeMap<u64, (u64, u64)>,
    pub(crate) next_lock: u64,
    /// The peer's writes and resync reads waiting for a range lock, in arrival order.
    pub(crate) lock_waiting: VecDeque<crate::replication::LockWaiter>,
    pub(crate) peer_writes: BTreeMap<u64, crate::replication::PeerWrite>,
    /// The bytes of the peer's requests held here (received, not completed): the payload of
    /// its writes and the length of its reads (read and resync requests), submitted to the
    /// disk or waiting for a lock. At max-buffers pages the data socket is not read
    /// (`Resource::receive_full`).
    pub(crate) peer_bytes_held: u64,
    /// The part of `peer_bytes_held` submitted to the disk (not completed).
    pub(crate) peer_bytes_on_disk: u64,
    pub(crate) peer_reads: BTreeMap<u64, crate::replication::PeerRead>,
    pub(crate) next_peer_op: u64,
    /// Resync target: written resync ranges not yet flushed, and the ones being flushed.
    pub(crate) rs_unflushed: Vec<(u64, u64)>,
    pub(crate) rs_flush_in_flight: Option<Vec<(u64, u64)>>,
    /// Resync target: the range lock of each request in flight, by sector.
    pub(crate) rs_request_locks: BTreeMap<u64, u64>,
    /// Zeros for write-zeroes sent as data.
    pub(crate) zero_buffer: Bytes,
    /// Local IO errors of this attach (see [`DiskErrors`]).
    pub(crate) disk_errors: DiskErrors,
    /// The current UUID (bit 0 cleared) of the data this Primary serves: its own disk's, or
    /// the connected peer's when it has none (DRBD's ed_uuid). A Primary that is not connected
    /// attaches only a disk with this UUID.
    pub(crate) exposed_uuid: Option<u64>,
    /// Operations of this generation in submission order, for `disk-timeout` (only kept when
    /// it is on; entries of completed operations are dropped lazily from the front).
    pub(crate) op_started: VecDeque<(DiskOpId, Instant)>,
}

/// What went wrong with the local disk since the last attach (DRBD's WAS_IO_ERROR,
/// WAS_READ_ERROR and FORCE_DETACH flags); cleared by the next attach.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DiskErrors {
    /// Why the disk failed (the first reason).
    pub(crate) failure: Option<DiskFailure>,
    /// Errors counted.
    pub(crate) count: u64,
    /// A data read failed: its bits are set, and losing them must force a full sync.
    pub(crate) read_error: bool,
    /// A bitmap page write failed.
    pub(crate) bitmap_write_failed: bool,
    /// A superblock write failed.
    pub(crate) superblock_write_failed: bool,
    /// Outstanding IO was abandoned (disk-timeout or `detach --force`).
    pub(crate) forced: bool,
    /// Abandoned operations are being tied up: their "errors" are not IO errors.
    pub(crate) abandoning: bool,
}

impl Resource {
    /// A resource with no disk, Secondary. `seed` feeds generation UUIDs.
    pub fn new(config: ResourceConfig, seed: [u8; 32]) -> Resource {
        let mut resource = Resource {
            config,
            role: Role::Secondary,
            disk_state: DiskState::Diskless,
            attach_negotiation: None,
            disk: None,
            rng: ChaCha20Rng::from_seed(seed),
            generation: 1,
            next_sequence: 0,
            ops: BTreeMap::new(),
            stale_ops: BTreeMap::new(),
            requests: BTreeMap::new(),
            data_generation: 0,
            user_isp: false,
            user_susp: false,
            al_waiting: VecDeque::new(),
            held_requests: VecDeque::new(),
            outputs: VecDeque::new(),
            openers: 0,
            timers: TimerTable::default(),
            pending: None,
            next_command: 1,
            crashed_primary: false,
            statistics: Statistics::default(),
            now: Instant(0),
            peer: None,
            link_gen: 0,
            locks: BTreeMap::new(),
            next_lock: 1,
            lock_waiting: VecDeque::new(),
            peer_writes: BTreeMap::new(),
            peer_bytes_held: 0,
            peer_bytes_on_disk: 0,
            peer_reads: BTreeMap::new(),
            next_peer_op: 1,
            rs_unflushed: Vec::new(),
            rs_flush_in_flight: None,
            rs_request_locks: BTreeMap::new(),
            zero_buffer: Bytes::new(),
            disk_errors: DiskErrors::default(),
            exposed_uuid: None,
            op_started: VecDeque::new(),
            ov_start_sector: 0,
            ov_stop_sector: u64::MAX,
        };
        resource.init_peer();
        resource
    }

    /// Processes one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = now;
        match input {
            Input::Timeout => self.on_timeout(now),
            Input::Block(request) => self.on_block_request(request),
            Input::Disk(completion) => self.on_disk_completion(completion),
            Input::Opened => self.openers += 1,
            Input::Closed => {
                assert!(self.openers > 0, "close without open");
                self.openers -= 1;
            }
            Input::Peer(input) => self.on_peer_input(input),
        }
        self.progress();
    }

    /// Starts an admin command; its result arrives as [`Event::CommandDone`].
    pub fn command(&mut self, now: Instant, cmd: AdminCommand) -> CommandId {
        self.now = now;
        let id = CommandId(self.next_command);
        self.next_command += 1;
        // Connect and disconnect do not wait for a command in progress (an attach may still
        // be writing its superblock): they never use the pending slot.
        // `detach --force` must end a detach (or anything else) stuck on a frozen disk.
        let independent = matches!(
            cmd,
            AdminCommand::Connect { .. }
                | AdminCommand::Disconnect
                | AdminCommand::Detach { force: true }
                | AdminCommand::PauseSync
                | AdminCommand::ResumeSync
                | AdminCommand::SuspendIo
                | AdminCommand::ResumeIo
        );
        // An attach negotiating with the peer is a transient state too (DRBD's
        // D_NEGOTIATING): a command that changes the disk's state waits for its end.
        if (self.pending.is_some() || self.attach_negotiation.is_some()) && !independent {
            self.finish_command(
                id,
                Err(CommandError::StateChange(
                    StateChangeError::InTransientState,
                )),
            );
            return id;
        }
        let started = match cmd {
            AdminCommand::Attach(params) => self.start_attach(params),
            AdminCommand::Detach { force } => self.start_detach(force),
            AdminCommand::Primary { force } => self.start_primary(id, force),
            AdminCommand::Secondary => self.start_secondary(),
            AdminCommand::Down => self.start_down(),
            AdminCommand::Resize {
                assume_peer_has_space,
                assume_clean,
                size_sect,
            } => self.start_resize(
                if assume_peer_has_space {
                    crate::resize::DDSF_FORCED
                } else {
                    0
                } | if assume_clean {
                    crate::resize::DDSF_NO_RESYNC
                } else {
                    0
                },
                size_sect.map_or(self.user_size_in_force(), crate::resize::whole_blocks),
            ),
            AdminCommand::SuspendIo | AdminCommand::ResumeIo => {
                // DRBD's NS(susp, 1/0): a request for the state it is in does nothing and
                // succeeds. The peer sees the flag in our P_STATE.
                let suspend = cmd == AdminCommand::SuspendIo;
                if self.user_susp != suspend {
                    self.user_susp = suspend;
                    self.user_flags_changed();
                }
                Ok(None)
            }
            other => self.start_peer_command(id, other),
        };
        match started {
            Ok(Some(pending)) => {
                let detach = matches!(pending, Pending::Detach(_));
                self.pending = Some((id, pending));
                if detach {
                    self.announce_detach();
                }
            }
            Ok(None) => self.finish_command(id, Ok(())),
            Err(e) => self.finish_command(id, Err(e)),
        }
        self.progress();
        id
    }

    /// `adjust`: new disk options. disk-timeout and on-io-error take effect at once (a
    /// shorter disk-timeout also for the operations already on the disk); al-extents at the
    /// next attach (the activity log attached keeps its size).
    pub fn change_disk_options(&mut self, now: Instant, options: DiskOptions) {
        self.now = now;
        self.config.set_disk_options(options);
        self.timers.stop(Timer::DiskTimeout);
        self.progress();
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline, if a timer is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A snapshot for `status`.
    pub fn status(&self) -> Status {
        let data_ops = self
            .ops
            .values()
            .filter(|p| matches!(p, OpPurpose::Request(_)))
            .count() as u64;
        Status {
            name: self.config.name.clone(),
            minor: self.config.minor,
            role: self.role,
            disk: self.disk_state,
            openers: self.openers,
            // A diskless node's device has the size agreed with the peer (DRBD sets its
            // capacity from P_SIZES): a diskless Primary's export advertised 0 bytes to every
            // NBD client that connected after the detach.
            size_bytes: self.exported_size(),
            user_size_sect: self.user_size_in_force(),
            // Of the device only: counting the bits past it, a node whose device had shrunk
            // said it was 4 MiB out of sync after every resync had ended.
            out_of_sync_bytes: self.disk.as_ref().map_or(0, |d| {
                d.bits_set_within(d.size_sect.div_ceil(udrbd_meta::SECTORS_PER_BIT))
                    * udrbd_meta::BM_BLOCK_SIZE
            }),
            upper_pending: (self.requests.len() + self.held_requests.len()) as u64,
            lower_pending: data_ops,
            stuck_ios: self.stale_ops.values().sum(),
            detach_step: match &self.pending {
                Some((_, Pending::Detach(step))) => Some(step.words()),
                _ => None,
            },
            disk_failure: self.disk_errors.failure,
            io_errors: self.disk_errors.count,
            served_by_peer: self.role == Role::Primary
                && !(self.disk_state == DiskState::UpToDate && self.disk.is_some())
                && self.peer_serves(),
            suspended_by_user: self.user_susp,
            generation: self.disk.as_ref().map(|d| (d.sb.uuids, d.sb.flags)),
            statistics: self.statistics,
            busy_with: self.pending.as_ref().map(|(_, p)| match p {
                Pending::Attach(_) => "attaching",
                Pending::Primary { .. } => "promoting",
                Pending::Secondary { .. } => "demoting",
                Pending::Detach(_) => "detaching",
                Pending::PeerApproval => "waiting for the peer",
                Pending::Resize(_) => "resizing",
            }),
            peer: self.peer_status(),
        }
    }

    /// Number of openers (cheap, unlike [`Resource::status`], for the data path).
    pub fn openers(&self) -> u32 {
        self.openers
    }

    /// Whether the device is in use, as DRBD's open count says: an opener, or an
    /// application request not completed (in DRBD a request implies an open file: a client's
    /// IO completes before its close counts, as the daemon's NBD server does too). A device
    /// in use is not demoted: a write that arrived while Primary and waited (its activity-log
    /// transaction on a frozen disk) would otherwise start on a Secondary and go to the peer,
    /// now Primary, with data the split-brain handshake gave up (swarm seed 17456).
    pub(crate) fn device_in_use(&self) -> bool {
        self.openers > 0 || !self.requests.is_empty() || !self.held_requests.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> &ResourceConfig {
        &self.config
    }

    /// The role, and the connection state and the peer's disk if a peer is configured (what
    /// `status` shows of them, without building a [`Status`]: the simulator asks at every
    /// request completion).
    pub fn role_and_peer(&self) -> (Role, Option<(crate::state::ConnState, DiskState)>) {
        (self.role, self.peer.as_ref().map(|p| (p.conn, p.peer_disk)))
    }

    /// Whether 4 KiB block `block` of the data is marked for resync: its bit is set in the
    /// in-memory bitmap, or its 4 MiB extent is in the activity log (which a crash turns into
    /// set bits). `None` without meta-data in memory. For the simulator's bitmap-soundness
    /// checker (a read-only view; the data path never calls it).
    pub fn block_marked(&self, block: u64) -> Option<bool> {
        let d = self.disk.as_ref()?;
        let extent = udrbd_meta::activity_log::extent_of_sector(block * 8);
        Some(
            d.bitmap.test(block)
                || d.al.is_active(extent)
                || d.al.committed_extents().contains(&extent),
        )
    }

    /// Whether 4 KiB block `block` has its bit set in the bitmap (None without meta-data).
    pub fn block_out_of_sync(&self, block: u64) -> Option<bool> {
        Some(self.disk.as_ref()?.bitmap.test(block))
    }

    /// Checks every invariant of the module doc; panics on a violation (a bug).
    pub fn invariants(&self) {
        self.peer_invariants();
        self.resize_invariants();
        // A device in use is not demoted (`device_in_use`), and a Secondary takes no new
        // request: a Secondary has no application request of its own in flight.
        assert!(
            self.role == Role::Primary || self.requests.is_empty(),
            "a Secondary with application requests in flight"
        );
        if let Some(d) = &self.disk {
            for page in &d.owed_pages {
                assert!(
                    d.bitmap.is_dirty(*page) || d.pages_in_flight.contains(page),
                    "owed bitmap page {page} neither dirty nor being written"
                );
            }
            assert!(
                d.owed_pages_in_flight.is_subset(&d.pages_in_flight),
                "an owed bitmap page counted in flight is not"
            );
            assert!(d.size_sect <= d.usable_sect, "the device fits its disk");
            if let Some((old, version)) = d.grow_pending {
                assert!(old < d.size_sect, "a pending grow grew the device");
                assert!(
                    d.sb_durable < version && version <= d.sb_version,
                    "a pending grow waits for a superblock version still to be written"
                );
            }
            if !matches!(self.pending, Some((_, Pending::Attach(_)))) {
                assert_eq!(
                    d.sb.la_size_sect, d.size_sect,
                    "the superblock's last agreed size is the device's"
                );
            }
        }
        assert_eq!(
            self.attach_negotiation.is_some(),
            self.disk_state == DiskState::Negotiating,
            "Negotiating exactly while an attach negotiates"
        );
        if self.attach_negotiation.is_some() {
            assert!(self.disk.is_some(), "a negotiating disk is attached");
            assert!(
                self.link()
                    .is_some_and(|l| l.handshake_done && self.pending.is_none()),
                "an attach negotiates on an established link, with no command pending"
            );
        }
        // One pass over the requests and one over the operations, without allocating: this
        // runs after every step of every simulation. Requests and their operations are
        // matched by walking both maps side by side: usually requests (by id) got their
        // operations (by id) in the same order; only when they did not is each request's
        // operation looked up.
        let mut page_ops = 0usize;
        let mut request_ops = self.ops.iter().filter_map(|(op, purpose)| {
            assert_eq!(op.generation(), self.generation, "op of another generation");
            match purpose {
                OpPurpose::Request(id) => Some((*op, *id)),
                OpPurpose::BitmapPage(_) => {
                    page_ops += 1;
                    None
                }
                _ => None,
            }
        });
        let mut in_order = true;
        let mut waiting_parts = 0u64;
        let mut held = 0u64;
        for (id, r) in &self.requests {
            waiting_parts += u64::from(r.net_pending);
            match r.op {
                Some(op) => in_order = in_order && request_ops.next() == Some((op, *id)),
                None => assert!(
                    self.al_waiting.contains(id)
                        || (r.local_done && (r.net_pending > 0 || r.flush_epoch.is_some())),
                    "request {id:?} is lost"
                ),
            }
            if r.holds_extents {
                let (a, b) = r.extents.expect("held extents");
                held += u64::from(b - a + 1);
            }
        }
        for pw in self.peer_writes.values() {
            if pw.holds_extents {
                let (a, b) = pw.extents.expect("held extents");
                held += u64::from(b - a + 1);
            }
        }
        for (a, b) in self.link().into_iter().flat_map(|l| l.held_extents()) {
            held += u64::from(b - a + 1);
        }
        // The rest of the operations (checking each).
        let left_over = request_ops.count() > 0;
        // In order and nothing left over: the requests with an operation and the request
        // operations are the same pairs, each pointing to the other.
        if !in_order || left_over {
            let mut requests_with_op = 0usize;
            for (id, r) in &self.requests {
                if let Some(op) = r.op {
                    assert_eq!(self.ops.get(&op), Some(&OpPurpose::Request(*id)));
                    requests_with_op += 1;
                }
            }
            // Every request's op points back to it, so requests map one-to-one onto request
            // ops; equal counts make it a bijection: every request op's request points to it.
            let request_ops = self
                .ops
                .values()
                .filter(|p| matches!(p, OpPurpose::Request(_)))
                .count();
            assert_eq!(
                request_ops, requests_with_op,
                "a request operation whose request does not point to it"
            );
        }
        let sent_parts: u64 = self.link().map_or(0, |l| l.sent.len() as u64);
        // AckBeforePeerAck completes writes whose parts are still out: the end-to-end
        // checkers must catch it, so this accounting is not checked then.
        assert!(
            self.link().is_none()
                || sent_parts == waiting_parts
                || self.config.mutation == Some(crate::Mutation::AckBeforePeerAck),
            "network parts: {sent_parts} sent, {waiting_parts} awaited"
        );
        match &self.disk {
            None => {
                // Before the superblock is read, an attach has no meta-data in memory yet.
                let attaching = matches!(self.pending, Some((_, Pending::Attach(_))));
                assert_eq!(
                    self.disk_state,
                    if attaching {
                        DiskState::Attaching
                    } else {
                        DiskState::Diskless
                    }
                );
                assert!(
                    attaching || self.ops.is_empty(),
                    "diskless with operations outstanding"
                );
            }
            Some(d) => {
                d.al.invariants();
                d.bitmap.invariants();
                assert_eq!(d.al.references(), held, "activity-log references");
                assert!(
                    page_ops == 0 || self.bitmap_loaded(),
                    "a bitmap page written before the attach read the bitmap"
                );
                if page_ops == 0 {
                    assert!(d.pages_in_flight.is_empty());
                } else {
                    let writing: Vec<u64> = self
                        .ops
                        .values()
                        .filter_map(|p| match p {
                            OpPurpose::BitmapPage(page) => Some(*page),
                            _ => None,
                        })
                        .collect();
                    let unique: BTreeSet<u64> = writing.iter().copied().collect();
                    assert_eq!(
                        unique.len(),
                        writing.len(),
                        "a bitmap page written twice at once"
                    );
                    assert_eq!(unique, d.pages_in_flight);
                }
                assert!(
                    d.flushes_in_flight
                        .keys()
                        .all(|id| self.ops.contains_key(id)),
                    "a flush counted for meta-data preflushes is not outstanding"
                );
                assert!(d.flushed_through <= d.data_writes_done);
                if self.role == Role::Primary
                    && d.sb_durable == d.sb_version
                    && !matches!(self.pending, Some((_, Pending::Secondary { .. })))
                {
                    assert!(
                        d.sb.flags.has(MdFlags::PRIMARY_IND),
                        "Primary without PRIMARY_IND"
                    );
                }
            }
        }
    }

    // ---- internals shared by the submodules -------------------------------------------

    /// Emits a disk operation of the current generation.
    pub(crate) fn submit(
        &mut self,
        purpose: OpPurpose,
        area: DiskArea,
        offset: u64,
        kind: DiskOpKind,
    ) -> DiskOpId {
        let id = DiskOpId::new(self.generation, self.next_sequence);
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.ops.insert(id, purpose);
        if matches!(kind, DiskOpKind::Flush)
            && let Some(d) = self.disk.as_mut()
        {
            d.flushes_in_flight.insert(id, d.data_writes_done);
        }
        if self.config.disk_timeout.is_some() {
            self.op_started.push_back((id, self.now));
        }
        self.outputs.push_back(Output::Disk(DiskOp {
            id,
            area,
            offset,
            kind,
        }));
        id
    }

    pub(crate) fn finish_command(&mut self, id: CommandId, result: Result<(), CommandError>) {
        self.outputs
            .push_back(Output::Event(Event::CommandDone { id, result }));
    }

    pub(crate) fn state_changed(&mut self) {
        self.outputs.push_back(Output::Event(Event::StateChanged));
    }

    pub(crate) fn complete(
        &mut self,
        id: BlockRequestId,
        result: Result<Option<Bytes>, BlockError>,
    ) {
        self.outputs
            .push_back(Output::Block(BlockCompletion { id, result }));
    }

    /// A fresh generation UUID (never 0 or JUST_CREATED; bit 0 per role).
    pub(crate) fn new_uuid(&mut self) -> u64 {
        loop {
            let u = self.rng.next_u64() & !1;
            if u > udrbd_meta::superblock::UUID_JUST_CREATED {
                return u;
            }
        }
    }

    /// Recomputes the MDF flags from the states (drbd-v08-facts.md §2.2) and bumps the
    /// superblock version if they changed. FULL_SYNC and AL_DISABLED are preserved.
    pub(crate) fn update_md_flags(&mut self) {
        // A promotion in progress wrote "Primary" and waits for it to be durable: a flag
        // update meanwhile (a handshake, the peer's disk state) keeps it. Recomputing for
        // the old role made the node Primary over a superblock without PRIMARY_IND (found
        // by the swarm, with a frozen disk holding the promotion's superblock write).
        let promoting = matches!(self.pending, Some((_, Pending::Primary { .. })));
        // A demotion keeps "Primary" until it has made sure that every write accepted as
        // Primary is marked durably or confirmed (it then writes the flags itself). A flag
        // update meanwhile (the peer's disk failed, say) wrote the superblock without
        // MDF_PRIMARY_IND while such a write was still in flight; its bit then stayed in
        // memory, and a crash lost it (swarm seed 11152).
        let demoting = matches!(
            self.pending,
            Some((_, Pending::Secondary { sb_version: None }))
        );
        self.update_md_flags_for(if promoting || demoting {
            Role::Primary
        } else {
            self.role
        });
    }

    /// The disk state the meta-data and P_UUIDS record: while an attach negotiates, the
    /// state it computed (DRBD's new_state_tmp), else the disk's.
    pub(crate) fn disk_state_to_record(&self) -> DiskState {
        self.attach_negotiation
            .map_or(self.disk_state, |n| n.disk_state)
    }

    /// Whether the connected peer is a Primary without a usable disk, whose data is on this
    /// node's disk alone.
    pub(crate) fn serving_diskless_primary(&self) -> bool {
        self.peer.as_ref().is_some_and(|p| {
            p.conn >= crate::state::ConnState::Connected
                && p.peer_role == Role::Primary
                && p.peer_disk < DiskState::Inconsistent
        })
    }

    /// As [`Resource::update_md_flags`], for the role the node is taking (a promotion writes
    /// "Primary" before it is Primary).
    pub(crate) fn update_md_flags_for(&mut self, role: Role) {
        // The last step of an attach writes the flags of the state it ends in.
        // So does a negotiating one: the flags of the state its attach computed.
        let disk_state = match &self.pending {
            Some((
                _,
                Pending::Attach(crate::attach::AttachStep::Superblock2 { disk_state, .. }),
            )) => *disk_state,
            // Before that step the flags are those read from the disk, which the attach
            // still needs: recomputed for a disk Attaching (a state change meanwhile), they
            // lost MDF_PRIMARY_IND before the activity log's replay, which then did not
            // mark the writes of a crashed Primary (swarm seed 85398), and MDF_CONSISTENT.
            Some((_, Pending::Attach(_))) => return,
            _ => self.disk_state_to_record(),
        };
        let crashed = self.crashed_primary;
        let Some(d) = self.disk.as_ref() else { return };
        let mut f = MdFlags(d.sb.flags.0 & (MdFlags::FULL_SYNC | MdFlags::AL_DISABLED));
        f.set(MdFlags::CONSISTENT, disk_state > DiskState::Inconsistent);
        f.set(MdFlags::WAS_UP_TO_DATE, disk_state > DiskState::Outdated);
        // Also while the connected peer is a Primary without a usable disk: this node's
        // activity log then covers that Primary's writes, and a crash must replay it (DRBD
        // sets MDF_PRIMARY_IND for "role Primary, or peer Primary with pdsk < Inconsistent").
        let serving_diskless_primary = self.serving_diskless_primary();
        // The flag goes only once the bitmap is durable: the bits of the diskless Primary's
        // writes are set in memory, and a crash between the flag's write and theirs would
        // neither replay the activity log nor find the bits (swarm seed 269, the peer
        // demoted). The bitmap write-out is started here and its completion comes back.
        let covering = d.sb.flags.has(MdFlags::PRIMARY_IND)
            && role != Role::Primary
            && !serving_diskless_primary
            && !self.bitmap_is_durable();
        f.set(
            MdFlags::PRIMARY_IND,
            role == Role::Primary || serving_diskless_primary || covering,
        );
        if covering {
            self.write_dirty_pages();
        }
        f.set(MdFlags::CRASHED_PRIMARY, crashed);
        let connected = self
            .peer
            .as_ref()
            .is_some_and(|p| p.conn >= crate::state::ConnState::Connected);
        let peer_outdated = self
            .peer
            .as_ref()
            .is_some_and(|p| p.peer_disk == DiskState::Outdated);
        let Some(d) = self.disk.as_mut() else { return };
        f.set(MdFlags::CONNECTED_IND, connected);
        f.set(MdFlags::PEER_OUT_DATED, peer_outdated);
        // Bit 0 of the current UUID records "this generation was held by a Primary".
        let current = if role == Role::Primary {
            d.sb.uuids.current | 1
        } else {
            d.sb.uuids.current & !1
        };
        let current = if d.sb.uuids.current <= udrbd_meta::superblock::UUID_JUST_CREATED {
            d.sb.uuids.current
        } else {
            current
        };
        if f != d.sb.flags || current != d.sb.uuids.current {
            d.sb.flags = f;
            d.sb.uuids.current = current;
            d.sb_version += 1;
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        for timer in Timer::ALL {
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            self.timers.stop(timer);
            match timer {
                Timer::BitmapWriteout => self.write_dirty_pages(),
                Timer::DiskTimeout => self.check_disk_timeout(),
                other => self.on_peer_timer(other),
            }
        }
    }

    fn on_disk_completion(&mut self, c: DiskCompletion) {
        let generation = c.id.generation();
        if generation != self.generation {
            // A late completion of an earlier attach: the result is dropped; the count of
            // stuck operations goes down.
            let n = self
                .stale_ops
                .get_mut(&generation)
                .expect("unknown operation id");
            *n -= 1;
            if *n == 0 {
                self.stale_ops.remove(&generation);
                self.outputs
                    .push_back(Output::Event(Event::DiskReleased { generation }));
            }
            return;
        }
        let purpose = self
            .ops
            .remove(&c.id)
            .expect("completion of an unknown operation");
        let flushed = self.count_for_md_preflush(c.id, purpose, c.result.is_ok());
        if flushed
            && purpose != OpPurpose::MdPreflush
            && self
                .disk
                .as_ref()
                .is_some_and(|d| d.bm_flush_need.is_some())
        {
            // Bitmap pages waiting for their preflush: `flush_through` had no flush of its
            // own to start when one in flight (an epoch's, a resync's) covered the writes
            // they wait for, and that one's completion is theirs. Left to the lazy
            // write-out, a resync waited seconds for its bitmap to be durable.
            self.write_dirty_pages();
        }
        match purpose {
            OpPurpose::Request(id) => self.on_request_done(id, c.result),
            OpPurpose::BitmapPage(page) => {
                if let Some(d) = self.disk.as_mut() {
                    d.pages_in_flight.remove(&page);
                    // Durable; or failed, and the disk fails with it (a meta-data error
                    // always detaches).
                    d.owed_pages_in_flight.remove(&page);
                }
                self.statistics.bm_writes += 1;
                if c.result.is_err() {
                    self.disk_errors.bitmap_write_failed = true;
                    self.local_io_error(LocalIoError::MetaData);
                } else if self.bitmap_is_durable()
                    && self.role != Role::Primary
                    && self.pending.is_none()
                    && self
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.sb.flags.has(MdFlags::PRIMARY_IND))
                {
                    // A PRIMARY_IND kept for bits not yet durable may go now.
                    self.update_md_flags();
                }
            }
            OpPurpose::AlPreflush => {
                let Some(d) = self.disk.as_mut() else { return };
                match (c.result, std::mem::take(&mut d.al_writer)) {
                    (Ok(_), AlWriter::Preflushing { prepared }) => {
                        d.al_writer = AlWriter::Preflushed { prepared };
                    }
                    (Ok(_), other) => d.al_writer = other,
                    (Err(_), _) => self.local_io_error(LocalIoError::Write),
                }
            }
            OpPurpose::AlTransaction => {
                self.statistics.al_writes += 1;
                match c.result {
                    Ok(_) => self.al_transaction_written(),
                    Err(_) => {
                        if let Some(d) = self.disk.as_mut() {
                            d.al_writer = AlWriter::Idle;
                        }
                        self.local_io_error(LocalIoError::MetaData)
                    }
                }
            }
            OpPurpose::Superblock(version) => {
                if let Some(d) = self.disk.as_mut() {
                    d.sb_in_flight = false;
                    if c.result.is_ok() {
                        d.sb_durable = d.sb_durable.max(version);
                        if d.grow_pending.is_some_and(|(_, v)| v <= d.sb_durable) {
                            d.grow_pending = None;
                        }
                    }
                }
                if c.result.is_err() {
                    self.disk_errors.superblock_write_failed = true;
                    self.local_io_error(LocalIoError::MetaData);
                }
            }
            OpPurpose::ReadSuperblock
            | OpPurpose::ReadActivityLog
            | OpPurpose::ReadBitmap { .. }
            | OpPurpose::AlInitialize => self.on_attach_io(purpose, c.result),
            OpPurpose::PeerWrite(id) => self.on_peer_write_done(id, c.result),
            OpPurpose::PeerRead(id) => self.on_peer_read_done(id, c.result),
            OpPurpose::EpochFlush { link_gen, through } => {
                self.on_epoch_flushed(link_gen, through, c.result)
            }
            OpPurpose::ResyncFlush => self.on_resync_flushed(c.result),
            OpPurpose::Capacity => self.on_capacity(c.result),
            OpPurpose::MdPreflush => {
                if c.result.is_err() {
                    // Part of a meta-data write in DRBD: a meta-data error, which detaches.
                    self.local_io_error(LocalIoError::MetaData);
                }
                // The writers waiting for it go on (the superblock through `progress`).
                if self
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.bm_flush_need.is_some())
                {
                    self.write_dirty_pages();
                }
            }
        }
    }

    /// Keeps the counts behind [`Resource::md_preflushed`]: completed data writes, and what
    /// every completed flush covers.
    /// Returns whether a flush completed and advanced what is durable.
    fn count_for_md_preflush(&mut self, id: DiskOpId, purpose: OpPurpose, ok: bool) -> bool {
        let data_write = match purpose {
            OpPurpose::Request(r) => self.requests.get(&r).is_some_and(|r| {
                matches!(
                    r.request,
                    BlockRequest::Write { .. }
                        | BlockRequest::Discard { .. }
                        | BlockRequest::WriteZeroes { .. }
                )
            }),
            OpPurpose::PeerWrite(_) => true,
            _ => false,
        };
        let Some(d) = self.disk.as_mut() else {
            return false;
        };
        if data_write {
            d.data_writes_done += 1;
        }
        if let Some(covers) = d.flushes_in_flight.remove(&id)
            && ok
            && covers > d.flushed_through
        {
            d.flushed_through = covers;
            return true;
        }
        false
    }

    /// Whether `writer` may write meta-data now: every data write that completed before it
    /// first asked is durable (DRBD's FLUSH|FUA meta-data writes). If not, a flush is started
    /// (one at a time) and the writer asks again when it completes. A Failed disk writes
    /// what it can without waiting (its detach writes the bitmap once, best effort, next to
    /// one flush: [`Resource::last_chance_flush`]).
    pub(crate) fn md_preflushed(&mut self, writer: MdWriter) -> bool {
        let failed = self.disk_state == DiskState::Failed;
        let Some(d) = self.disk.as_mut() else {
            return true;
        };
        let done = d.data_writes_done;
        let need = match writer {
            MdWriter::Superblock => &mut d.sb_flush_need,
            MdWriter::BitmapPages => &mut d.bm_flush_need,
            MdWriter::AlReinit => &mut d.al_reinit_flush_need,
        };
        let wanted = *need.get_or_insert(done);
        if failed || d.flushed_through >= wanted {
            *need = None;
            return true;
        }
        self.flush_through(wanted);
        false
    }

    /// Starts a flush that makes the first `writes` completed data writes durable, unless
    /// one that does already completed or is in flight.
    fn flush_through(&mut self, writes: u64) {
        let Some(d) = self.disk.as_ref() else {
            return;
        };
        let covered =
            d.flushed_through >= writes || d.flushes_in_flight.values().any(|&c| c >= writes);
        if !covered {
            self.submit(OpPurpose::MdPreflush, DiskArea::Data, 0, DiskOpKind::Flush);
        }
    }

    /// The detach of a Failed disk: one flush of every data write completed so far, which a
    /// forced detach does not wait for. DRBD's bitmap write-out on detach ends with
    /// drbd_md_flush, also after a failure ("in case we want to get something to stable
    /// storage still, this may be the last chance"). Without it a write that completed here
    /// and was acked (to the Primary, or to the NBD client) stayed in the disk's volatile
    /// cache after the detach: the peer's barrier for it is then acked without a flush, as
    /// there is no disk to flush, and a crash lost it with nothing marked (swarm seed 4656).
    pub(crate) fn last_chance_flush(&mut self) {
        if let Some(done) = self.disk.as_ref().map(|d| d.data_writes_done) {
            self.flush_through(done);
        }
    }

    /// Advances everything an input may have unblocked.
    pub(crate) fn progress(&mut self) {
        loop {
            let before = self.progress_fingerprint();
            self.release_held_requests();
            self.start_waiting_writes();
            self.start_lock_waiters();
            self.drive_resync_flush();
            self.drive_activity_log();
            self.drive_superblock();
            self.drive_pending_command();
            self.drive_receive();
            if self.progress_fingerprint() == before {
                break;
            }
        }
        self.arm_bitmap_writeout();
        self.arm_disk_timeout();
        self.track_exposed_uuid();
    }

    /// Keeps [`Resource::exposed_uuid`] current: the local disk's UUID while it serves (not
    /// while it detaches); kept while it does not (the peer's, when it serves, comes with its
    /// P_UUIDS: `receive_uuids`); forgotten on demotion. Not the peer's UUIDs as last stored:
    /// those can be stale (a peer that adopted a skip-initial-sync UUID sends none), and a
    /// stale exposed UUID refused the peer's current data (DRBD sets ed_uuid from the local
    /// disk's current UUID and, on a diskless Primary, from each P_UUIDS received).
    fn track_exposed_uuid(&mut self) {
        if self.role != Role::Primary {
            self.exposed_uuid = None;
            return;
        }
        if self.announced_disk_state() == DiskState::UpToDate
            && let Some(d) = self.disk.as_ref()
            && !matches!(self.pending, Some((_, Pending::Attach(_))))
        {
            self.exposed_uuid = Some(d.sb.uuids.current & !1);
        }
    }

    /// The oldest outstanding operation and when it was submitted (drops the entries of
    /// completed ones from the front of `op_started`).
    fn oldest_outstanding_op(&mut self) -> Option<(DiskOpId, Instant)> {
        while let Some((id, _)) = self.op_started.front() {
            if self.ops.contains_key(id) {
                break;
            }
            self.op_started.pop_front();
        }
        self.op_started.front().copied()
    }

    /// Arms the disk-timeout timer for the oldest outstanding operation.
    fn arm_disk_timeout(&mut self) {
        let Some(timeout) = self.config.disk_timeout else {
            return;
        };
        match self.oldest_outstanding_op() {
            Some((_, started)) => {
                if self.timers.get(Timer::DiskTimeout).is_none() {
                    self.timers.set(Timer::DiskTimeout, started.plus(timeout));
                }
            }
            None => self.timers.stop(Timer::DiskTimeout),
        }
    }

    /// The disk-timeout timer fired: force-detach if the oldest operation is overdue.
    fn check_disk_timeout(&mut self) {
        let Some(timeout) = self.config.disk_timeout else {
            return;
        };
        let Some((id, started)) = self.oldest_outstanding_op() else {
            return;
        };
        if self.now < started.plus(timeout) {
            return;
        }
        let purpose = self.ops[&id];
        self.log(
            LogLevel::Error,
            format!(
                "disk-timeout: a backing IO ({purpose:?}) did not complete in {} ms: force-detaching",
                timeout.as_millis()
            ),
        );
        self.force_detach(DiskFailure::Timeout);
    }

    /// What `progress` watches to know whether another round may do more.
    fn progress_fingerprint(&self) -> (usize, Option<(CommandId, Pending)>, u64) {
        let sb_version = self.disk.as_ref().map_or(0, |d| d.sb_version);
        (self.outputs.len(), self.pending.clone(), sb_version)
    }

    /// Writes the superblock when its version moved past the durable one.
    fn drive_superblock(&mut self) {
        let Some(d) = self.disk.as_mut() else { return };
        if d.sb_in_flight || d.sb_version == d.sb_durable || !self.pending_allows_md_io() {
            return;
        }
        // A grown size waits for the bits of its new part (`Disk::owed_pages`), unless the
        // superblock says MDF_FULL_SYNC (a meta-data move: a crash means a full sync) or the
        // disk failed (its detach writes what it can).
        let Some(d) = self.disk.as_ref() else { return };
        let grow_bits_pending = !d.owed_pages.is_empty() || !d.owed_pages_in_flight.is_empty();
        if grow_bits_pending
            && !d.sb.flags.has(MdFlags::FULL_SYNC)
            && self.disk_state != DiskState::Failed
        {
            self.write_dirty_pages();
            return;
        }
        if !self.md_preflushed(MdWriter::Superblock) {
            return;
        }
        let Some(d) = self.disk.as_mut() else { return };
        d.sb_in_flight = true;
        let version = d.sb_version;
        let offset = d.layout.superblock_byte();
        let data = Bytes::copy_from_slice(&d.sb.encode()[..]);
        self.submit(
            OpPurpose::Superblock(version),
            DiskArea::Superblock,
            offset,
            DiskOpKind::Write { data, fua: true },
        );
    }

    /// Meta-data writes wait while an attach is still reading the meta-data.
    fn pending_allows_md_io(&self) -> bool {
        let full_sync_flag = matches!(
            self.pending,
            Some((
                _,
                Pending::Detach(crate::attach::DetachStep::FullSyncSuperblock { .. })
            ))
        );
        !matches!(&self.pending, Some((_, Pending::Attach(step))) if !step.may_write_superblock())
            && (self.disk_state != DiskState::Failed
                || (full_sync_flag && !self.disk_errors.superblock_write_failed))
    }

    /// Writes every dirty bitmap page that is not already being written.
    pub(crate) fn write_dirty_pages(&mut self) {
        let Some(d) = self.disk.as_ref() else { return };
        // A resize moving the meta-data writes nothing at the new place before the
        // superblock that names it is durable.
        if !self.bitmap_loaded() || self.resize_holds_bitmap() {
            return;
        }
        // While Failed only the detach writes the bitmap (once: a failed page is not retried).
        if self.disk_state == DiskState::Failed
            && !matches!(
                self.pending,
                Some((_, Pending::Detach(crate::attach::DetachStep::Drain)))
            )
        {
            return;
        }
        let pages: Vec<u64> = d
            .bitmap
            .dirty_pages()
            .into_iter()
            .filter(|p| !d.pages_in_flight.contains(p))
            .collect();
        if pages.is_empty() || !self.md_preflushed(MdWriter::BitmapPages) {
            return;
        }
        for page in pages {
            self.write_page(page);
        }
    }

    /// Whether the in-memory bitmap holds what the disk holds: not while an attach is still
    /// reading the superblock, the activity log or the bitmap. A page written before its
    /// read came in carried zeros over the bits on disk: an attach stuck on a frozen disk
    /// wrote a page (a meta-data preflush completing, with a page marked meanwhile) and
    /// erased the mark of a write the peer lacked (swarm seed 75103).
    pub(crate) fn bitmap_loaded(&self) -> bool {
        !matches!(
            &self.pending,
            Some((
                _,
                Pending::Attach(
                    crate::attach::AttachStep::Superblock(_)
                        | crate::attach::AttachStep::ActivityLog
                        | crate::attach::AttachStep::Bitmap
                )
            ))
        )
    }

    /// Writes one bitmap page (a snapshot of it; it is clean from now on).
    pub(crate) fn write_page(&mut self, page: u64) {
        let d = self.disk.as_mut().expect("attached");
        assert!(
            !d.pages_in_flight.contains(&page),
            "page {page} written twice at once"
        );
        let data = Bytes::copy_from_slice(&d.bitmap.page_bytes(page));
        d.bitmap.mark_clean(page);
        d.pages_in_flight.insert(page);
        if d.owed_pages.remove(&page) {
            d.owed_pages_in_flight.insert(page);
        }
        let offset = d.layout.bm_byte() + page * udrbd_meta::bitmap::PAGE_BYTES as u64;
        self.submit(
            OpPurpose::BitmapPage(page),
            DiskArea::Bitmap,
            offset,
            DiskOpKind::Write { data, fua: true },
        );
    }

    /// Whether the bitmap is durable: nothing dirty, nothing in flight.
    pub(crate) fn bitmap_is_durable(&self) -> bool {
        self.disk
            .as_ref()
            .is_none_or(|d| d.pages_in_flight.is_empty() && d.bitmap.dirty_count() == 0)
    }

    fn arm_bitmap_writeout(&mut self) {
        let dirty = self
            .disk
            .as_ref()
            .is_some_and(|d| d.bitmap.dirty_count() > 0);
        if dirty && self.timers.get(Timer::BitmapWriteout).is_none() {
            let at = self.now.plus(self.config.bitmap_writeout_interval);
            self.timers.set(Timer::BitmapWriteout, at);
        } else if !dirty {
            self.timers.stop(Timer::BitmapWriteout);
        }
    }
}
