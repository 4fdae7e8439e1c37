//! The engine's inputs and outputs: time, disk operations, block requests, admin commands and
//! events.

use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
use udrbd_meta::MetaDiskKind;

pub use crate::connection::ConnId;

/// A point in monotonic time, in nanoseconds since an arbitrary origin. The engine never reads
/// a clock: every call carries `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_nanos() as u64))
    }

    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Identifies a disk operation; the high 32 bits are the attach generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskOpId(pub u64);

impl DiskOpId {
    /// Builds an id from the attach generation and a sequence number.
    pub fn new(generation: u32, sequence: u32) -> DiskOpId {
        DiskOpId(u64::from(generation) << 32 | u64::from(sequence))
    }

    /// The attach generation the operation belongs to.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Which part of the disks an operation touches. `Data` goes to the backing device, the others
/// to the meta-data device (the same device for internal meta-data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskArea {
    /// Application data.
    Data,
    /// The out-of-sync bitmap.
    Bitmap,
    /// The activity-log ring.
    ActivityLog,
    /// The superblock.
    Superblock,
}

/// What a disk operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOpKind {
    /// Read `len` bytes.
    Read {
        /// Length in bytes.
        len: u32,
    },
    /// Write `data`; with `fua` the data is durable when the operation completes.
    Write {
        /// The bytes (shared, never copied by the engine).
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Deallocate `len` bytes; reads of the range return zeros afterwards.
    Discard {
        /// Length in bytes.
        len: u64,
    },
    /// Write `len` bytes of zeros (allocation allowed).
    WriteZeroes {
        /// Length in bytes.
        len: u64,
    },
    /// Report the device's current size in bytes, as 8 little-endian bytes of data
    /// (`resize`: the backing device may have grown). Reads and writes nothing.
    Capacity,
}

/// A disk operation for the driver to execute. The engine keeps no buffer of it: `data` is
/// shared with the driver, which owns it until the kernel returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOp {
    /// Identifier, echoed in the completion.
    pub id: DiskOpId,
    /// Device area.
    pub area: DiskArea,
    /// Byte offset on the backing device (`Data`) or the meta-data device (others).
    pub offset: u64,
    /// The operation.
    pub kind: DiskOpKind,
}

/// An IO error reported by the driver (an errno value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskError {
    /// The OS error number (EIO = 5).
    pub errno: i32,
}

/// The completion of a [`DiskOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCompletion {
    /// The operation.
    pub id: DiskOpId,
    /// Data for reads, nothing for other operations, or the error.
    pub result: Result<Option<Bytes>, DiskError>,
}

/// Identifies a block request (chosen by the caller, unique among in-flight requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRequestId(pub u64);

/// A request from the application (the NBD server) to the replicated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockRequest {
    /// Read `len` bytes at `offset`.
    Read {
        /// Request id.
        id: BlockRequestId,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write `data` at `offset`; with `fua` it is durable when completed.
    Write {
        /// Request id.
        id: BlockRequestId,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Every write completed before this flush was submitted is durable when it completes.
    Flush {
        /// Request id.
        id: BlockRequestId,
    },
    /// Discard (TRIM) a range; it reads back as zeros.
    Discard {
        /// Request id.
        id: BlockRequestId,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Durable when completed.
        fua: bool,
    },
    /// Write zeros over a range.
    WriteZeroes {
        /// Request id.
        id: BlockRequestId,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Allocate (no hole).
        no_hole: bool,
        /// Durable when completed.
        fua: bool,
    },
}

impl BlockRequest {
    /// The request's id.
    pub fn id(&self) -> BlockRequestId {
        match self {
            BlockRequest::Read { id, .. }
            | BlockRequest::Write { id, .. }
            | BlockRequest::Flush { id }
            | BlockRequest::Discard { id, .. }
            | BlockRequest::WriteZeroes { id, .. } => *id,
        }
    }
}

/// Why a block request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The data could not be read or written (no good copy reachable).
    Io,
    /// The request lies (partly) past the end of the device.
    OutOfRange,
    /// The resource is not Primary.
    NotPrimary,
    /// Too many requests in flight.
    Busy,
}

/// The completion of a [`BlockRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCompletion {
    /// The request.
    pub id: BlockRequestId,
    /// Data for reads, nothing for other requests, or the error.
    pub result: Result<Option<Bytes>, BlockError>,
}

/// Identifies an admin command; its result arrives as [`Event::CommandDone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u64);

/// Sizes the driver measured when it opened the backing and meta-data devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachParams {
    /// Size of the backing (data) device in bytes.
    pub data_device_bytes: u64,
    /// Size of the meta-data device in bytes (the backing device for internal meta-data).
    pub meta_device_bytes: u64,
    /// Where the meta-data is.
    pub meta_kind: MetaDiskKind,
}

/// Admin commands (drbdadm's verbs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Attach the backing device: read and check its meta-data, replay its activity log.
    Attach(AttachParams),
    /// Detach: wait for IO, write the bitmap, leave the meta-data clean. `force` abandons IO.
    Detach {
        /// `detach --force`.
        force: bool,
    },
    /// Become Primary; `force` overrides a disk that is not UpToDate (initial sync).
    Primary {
        /// `primary --force`.
        force: bool,
    },
    /// Become Secondary.
    Secondary,
    /// Demote (if needed and allowed), disconnect and detach.
    Down,
    /// Start connecting to the peer (from StandAlone).
    Connect {
        /// `--discard-my-data`: this node gives up its changes in a split brain.
        discard_my_data: bool,
    },
    /// Close the connection and stay StandAlone.
    Disconnect,
    /// This node's data is invalid: a full resync from the peer.
    Invalidate,
    /// The peer's data is invalid: a full resync to the peer.
    InvalidateRemote,
    /// Start a new data generation; with `clear_bitmap` on a connected pair of fresh disks
    /// both become UpToDate without a resync (DRBD's "skip initial sync").
    NewCurrentUuid {
        /// `--clear-bitmap`.
        clear_bitmap: bool,
    },
    /// Mark the local data Outdated (not while connected).
    Outdate,
    /// Pause the resync (`pause-sync`, DRBD's user_isp): now and any that starts later, until
    /// `resume-sync`; the peer pauses its side too.
    PauseSync,
    /// Let the resync continue (`resume-sync`), unless the peer paused it as well.
    ResumeSync,
    /// Hold new application IO (`suspend-io`, DRBD's susp); what is in flight completes.
    SuspendIo,
    /// Let held application IO go on (`resume-io`).
    ResumeIo,
    /// Online verify (`verify`): compare every block's digest (verify-alg) with the peer's,
    /// from `start_sector` (default: where the last run stopped) up to `stop_sector`; the
    /// blocks that differ are marked out of sync on both nodes.
    Verify {
        /// `--start`, sectors (rounded down to a 4 KiB block).
        start_sector: Option<u64>,
        /// `--stop`, sectors.
        stop_sector: Option<u64>,
    },
    /// Online resize (`resize`): the backing device is measured again, internal meta-data
    /// moves to its new end, and the device grows to what both disks hold, or to the user
    /// size (`--size`), which may also shrink it.
    Resize {
        /// `--assume-peer-has-space`: StandAlone, grow to this disk's size.
        assume_peer_has_space: bool,
        /// `--assume-clean`: the new part needs no resync.
        assume_clean: bool,
        /// `--size`, sectors: the new user size (0: no limit; `None`: the current one).
        size_sect: Option<u64>,
    },
}

/// Something the driver should know or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An admin command finished.
    CommandDone {
        /// The command.
        id: CommandId,
        /// Success, or why it was refused or failed.
        result: Result<(), crate::state::CommandError>,
    },
    /// The role, disk state or another reported state changed (for `events`).
    StateChanged,
    /// The backing device may be closed: every operation of `generation` has returned.
    DiskReleased {
        /// The attach generation that ended.
        generation: u32,
    },
    /// Run a user-space handler (drbd.conf `handlers { NAME "cmd"; }`); the engine does not
    /// wait for it.
    Handler {
        /// The handler's name in drbd.conf (`split-brain`, `initial-split-brain`, ...).
        name: &'static str,
    },
    /// Something for the log (connection progress, a peer's protocol error, an auth failure).
    Log {
        /// Severity.
        level: LogLevel,
        /// The message, in DRBD's words where DRBD has some.
        message: String,
    },
}

/// Severity of an [`Event::Log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Normal progress.
    Info,
    /// Something went wrong but the engine goes on.
    Warn,
    /// A failure (a dropped connection, a refused peer).
    Error,
}

/// Network events the driver reports. Sockets are named by [`ConnId`]s: accepted ones get ids
/// from the driver (below [`crate::connection::OUTGOING_CONN_ID_BASE`]), outgoing ones from the
/// engine's `Connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerInput {
    /// The listener accepted a socket.
    Accepted {
        /// Its id.
        conn: ConnId,
    },
    /// A `Connect` succeeded.
    Connected {
        /// The socket named in the `Connect`.
        conn: ConnId,
    },
    /// Bytes read from a socket, in stream order.
    Received {
        /// The socket.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The socket took `bytes` more bytes of what was sent (cumulative per report, in order):
    /// protocol A completes on it and the send queue is bounded by it.
    Sent {
        /// The socket.
        conn: ConnId,
        /// Bytes handed to the kernel since the last report.
        bytes: u64,
    },
    /// A socket reached EOF or failed, or a `Connect` failed; the driver released it.
    Closed {
        /// The socket.
        conn: ConnId,
    },
}

/// What the engine asks of the network driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerOutput {
    /// Listen on our address and report accepted sockets.
    Listen {
        /// The address.
        addr: SocketAddr,
    },
    /// Stop listening (the connection is established, or StandAlone).
    StopListening,
    /// Open a connection; report `Connected` or `Closed` for `conn`.
    Connect {
        /// The id of the new socket.
        conn: ConnId,
        /// The peer's address.
        addr: SocketAddr,
    },
    /// Write `head` then `data` to the socket, in order after everything sent before.
    Send {
        /// The socket.
        conn: ConnId,
        /// Header (and small payload) bytes.
        head: Bytes,
        /// Data payload, shared, possibly empty.
        data: Bytes,
    },
    /// Stop (`enabled: false`) or go on (`true`) reading the socket: the engine holds
    /// max-buffers of the peer's requests (DRBD's receiver waiting for pages), so
    /// the bytes should wait in the socket and the peer's sender block. Bytes the driver read
    /// already may still be delivered. A socket starts enabled.
    Receive {
        /// The socket.
        conn: ConnId,
        /// Read it.
        enabled: bool,
    },
    /// Close the socket and forget it (pending sends may be dropped).
    Close {
        /// The socket.
        conn: ConnId,
    },
}

/// What the caller gives the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A timer armed from `poll_timeout` fired (spurious wake-ups are fine).
    Timeout,
    /// An application request.
    Block(BlockRequest),
    /// A disk operation completed.
    Disk(DiskCompletion),
    /// An application opened the device (an NBD client connected).
    Opened,
    /// An application closed the device (all its requests have completed).
    Closed,
    /// The network.
    Peer(PeerInput),
}

/// What the engine asks of the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Submit a disk operation.
    Disk(DiskOp),
    /// Complete an application request.
    Block(BlockCompletion),
    /// Report an event.
    Event(Event),
    /// Network.
    Peer(PeerOutput),
}
