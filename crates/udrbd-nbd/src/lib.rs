//! The NBD server protocol, pure (sans-IO): bytes in, events and bytes out. No socket, no
//! clock, no thread; the `udrbd` daemon drives it (ARCHITECTURE.md §2), tests drive it with
//! real clients over a Unix socket (`tests/real_clients.rs`).
//!
//! Implemented from `doc/proto.md` of NetworkBlockDevice/nbd:
//!
//! - fixed newstyle negotiation with `NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES`; options
//!   `NBD_OPT_GO`, `NBD_OPT_INFO` (`NBD_INFO_EXPORT`, `NBD_INFO_BLOCK_SIZE` 512/4096/32 MiB,
//!   `NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`), `NBD_OPT_LIST`, `NBD_OPT_ABORT`,
//!   `NBD_OPT_EXPORT_NAME` and `NBD_OPT_STRUCTURED_REPLY`; every other option gets
//!   `NBD_REP_ERR_UNSUP`;
//! - the transmission phase: READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES with FUA and NO_HOLE;
//!   simple replies, and structured replies (`OFFSET_DATA`, `NONE`, `ERROR` with a message)
//!   once negotiated.
//!
//! The caller decides which exports exist ([`Output::ExportQuery`] answered by
//! [`Input::ExportAnswer`], which may refuse with a message) and executes the block requests
//! ([`Output::Request`] answered by [`Input::Completion`]). See [`ServerConnection`] for the call
//! order and the durability contract, [`wire`] for the byte layouts, [`request`] for which
//! request gets which error.
//!
//! # Limits (STYLE.md habit 6)
//!
//! - READ/WRITE/WRITE_ZEROES length at most 32 MiB ([`wire::MAX_BLOCK_SIZE`]); a longer or
//!   otherwise invalid WRITE gets an error reply and its data is skipped as it streams in.
//! - At most [`ServerConfig::max_outstanding`] requests in flight per connection, and at most
//!   [`ServerConfig::max_unsent_bytes`] of replies not yet taken by the socket; beyond either
//!   the machine stops decoding and [`ServerConnection::receive_window`] drops to 0.
//! - Option data at most [`ServerConfig::max_option_length`], at most
//!   [`ServerConfig::max_options`] options; beyond, a [`ProtocolError`] closes the connection.
//! - The receive buffer holds at most one largest frame plus [`server::RECEIVE_SLACK`].
//!
//! No timers: NBD has none. An idle or slow client is the daemon's business.
#![forbid(unsafe_code)]

pub mod error;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
pub mod request;
pub mod server;
pub mod wire;

pub use error::{HandleError, ProtocolError, UsageError};
pub use export::{
    Export, ExportAnswer, ExportFlags, ExportListing, QueryPurpose, Refusal, RefusalCode,
};
pub use request::{BlockRequest, Completion, Op, RequestId};
pub use server::{CloseReason, Input, Output, Phase, ServerConfig, ServerConnection, Transmit};
pub use wire::{Cookie, Errno};
