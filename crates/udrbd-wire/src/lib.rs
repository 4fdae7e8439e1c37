//! DRBD 8.4's peer protocol, pure: headers, packets, bitmap RLE/VLI, a deframer.
//!
//! Byte for byte what a kernel DRBD 8.4 node sends and expects (protocol versions 86..=101;
//! two 8.4 nodes agree on 101), from drbd-v08-facts.md §6 and, where they differ, from the
//! kernel 8.4.11 traffic decoded in drbd-wire-observed.md (golden vectors in `tests/`).
//!
//! - [`header`]: h80 / h95 / h100 and which one a connection uses;
//! - [`command`]: the command numbers and the payload length each accepts;
//! - [`payload`]: the fixed payload structs (p_data, p_block_ack, p_uuids, p_sizes, ...);
//! - [`state`]: the packed state word of P_STATE and P_STATE_CHG_REQ;
//! - [`packet`]: [`Packet`], one variant per command, with decode and encode;
//! - [`deframer`]: bytes cut anywhere in, typed [`Frame`]s out;
//! - [`bitmap`]: the bitmap exchange, plain chunks and RLE+VLI compression, sender and
//!   receiver state machines;
//! - [`vli`]: DRBD's variable-length integer code and its LSB-first bit stream.
//!
//! This crate does no IO and keeps no clock (ARCHITECTURE.md §2): the engine owns the sockets'
//! byte streams, pushes received bytes into a [`Deframer`], and sends the two segments of an
//! [`EncodedPacket`]. Data payloads are [`bytes::Bytes`] end to end, never copied.
//!
//! Failure handling (STYLE.md habit 5): anything a peer can send decodes to a value or a typed
//! [`DecodeError`] / [`BitmapError`], never a panic (fuzzed: `fuzz/fuzz_targets/wire_decode.rs`);
//! asking to encode something the peer would reject is an [`EncodeError`].
#![forbid(unsafe_code)]

pub mod bitmap;
pub mod command;
pub mod deframer;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod header;
pub mod packet;
pub mod payload;
pub mod state;
pub mod vli;

pub use bitmap::{
    BitmapError, BitmapProgress, BitmapReceiver, BitmapSender, BitmapSink, BitmapSource,
    TransferStats,
};
pub use command::{Command, Expected, P_MAY_IGNORE};
pub use deframer::Deframer;
pub use error::{DecodeError, EncodeError, ValueError};
pub use header::{Header, HeaderFormat, HeaderKind};
pub use packet::{
    CompressedBitmap, DataPacket, DecodeContext, EncodedPacket, Frame, Packet, PlainBitmap,
    WriteSamePacket,
};
pub use payload::{
    AfterSbPolicy, Agreed, AlgName, Barrier, BarrierAck, BlockAck, BlockDesc, BlockId,
    BlockRequest, ConnFlags, ConnectionFeatures, DataHeader, DelayProbe, Digest, DigestRequest,
    DpFlags, FeatureFlags, IncompatibleVersions, LegacySyncParams, ProtocolParams, QueueLimits,
    ResyncController, Sizes, StateChange, StateChangeReply, SyncParams, Trim, Uuids, WireProtocol,
};
pub use state::{ConnState, DiskState, Role, State, StateField, StateWord};
