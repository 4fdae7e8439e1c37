//! The sans-IO DRBD engine (ARCHITECTURE.md §3).
//!
//! One [`Resource`] per DRBD resource: a single-threaded state machine that does no IO, reads
//! no clock and draws no unseeded randomness. The caller (the daemon's driver, or the
//! simulator) owns every file and socket:
//!
//! ```text
//!   loop {
//!       resource.handle(now, input);          // a block request, a disk completion, a timeout
//!       while let Some(out) = resource.poll_output() {
//!           match out { Disk(op) => submit, Block(done) => reply, Event(e) => report, .. }
//!       }
//!       arm a timer for resource.poll_timeout();
//!   }
//! ```
//!
//! The durability contract: only a completed `Flush` or a completed write with `fua` is
//! durable. The engine expresses ordering by not emitting a dependent operation before its
//! prerequisite completed (a write into a cold activity-log extent waits for the AL
//! transaction; an extent leaves the AL only after its bitmap pages are durable; the
//! superblock that says "Primary" is durable before a write is accepted as Primary).
//!
//! Disk operations carry the attach generation in their id: a completion for an operation of
//! an older attach is recognised and dropped, never mistaken for one of the current attach.
#![forbid(unsafe_code)]

mod attach;
pub mod connection;
mod engine;
pub mod mutation;
mod peer;
pub mod peer_config;
mod replication;
mod requests;
mod resize;
pub mod resync_controller;
pub mod state;
pub mod sync_decision;
pub mod timer;
pub mod types;
pub mod verify;

pub use engine::{
    DiskFailure, DiskOptions, OnIoError, Resource, ResourceConfig, Statistics, Status,
};
pub use mutation::Mutation;
pub use peer_config::{NetConfig, PeerStatus, ResyncStatus, VerifyStatus};
pub use state::{CommandError, ConnState, DiskState, Role, StateChangeError};
pub use types::*;
pub use verify::{UnknownVerifyAlg, VerifyAlg};
