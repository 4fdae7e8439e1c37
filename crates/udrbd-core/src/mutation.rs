//! Deliberately broken engine variants, for the simulator's mutation test only.
//!
//! A [`Mutation`] in [`crate::ResourceConfig::mutation`] breaks exactly one of DRBD's rules at
//! the one place in the engine where that rule lives (each site is marked with a comment
//! naming the variant). The simulator's mutation test (`crates/udrbd-sim/tests/mutations.rs`)
//! proves that its end-to-end checkers (durability, register, convergence, ...) catch every
//! variant. It is a run-time value rather than a cargo feature so that no other build can
//! ever carry a broken engine by accident; the daemon never sets it.

/// One deliberately broken rule. `None` in the configuration (the default) is the real engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// A protocol C write completes when its local write is done, without waiting for the
    /// peer's P_WRITE_ACK (`requests.rs`, `try_complete`).
    AckBeforePeerAck,
    /// A write that did not reach the peer (disconnected) is not marked out of sync in the
    /// bitmap (`requests.rs`, `try_complete`).
    NoBitmapWhileDisconnected,
    /// A write into a cold activity-log extent is submitted as soon as the extent is
    /// referenced, before the AL transaction naming it is durable (`requests.rs`,
    /// `start_waiting_writes`).
    WriteBeforeAlTransaction,
    /// On the SyncTarget, a received application write does not wait for an overlapping
    /// resync request or resync write, so the older resync data can land after it
    /// (`replication.rs`, `start_lock_waiters`).
    ResyncOverwritesNewerWrite,
    /// The SyncSource clears a block's bit when it sends the resync data
    /// (P_RS_DATA_REPLY), not when the target acknowledges having written it
    /// (P_RS_WRITE_ACK) (`replication.rs`, `on_peer_read_done`).
    ClearBitBeforeWriteAck,
    /// A flush completes once the local flush and the P_WRITE_ACKs are in, without waiting
    /// for the peer's P_BARRIER_ACK (the peer's flush) (`replication.rs`, `flush_satisfied`).
    FlushWithoutBarrierAck,
    /// A clean detach does not write the dirty bitmap pages before it marks the meta-data
    /// clean (`attach.rs`, `drive_detach`).
    SkipBitmapWriteOnDetach,
    /// Attach is accepted while operations of the previous attach are still outstanding on
    /// the disk (`attach.rs`, `start_attach`).
    AttachWithStuckIo,
}

impl Mutation {
    /// Every variant, in declaration order.
    pub const ALL: [Mutation; 8] = [
        Mutation::AckBeforePeerAck,
        Mutation::NoBitmapWhileDisconnected,
        Mutation::WriteBeforeAlTransaction,
        Mutation::ResyncOverwritesNewerWrite,
        Mutation::ClearBitBeforeWriteAck,
        Mutation::FlushWithoutBarrierAck,
        Mutation::SkipBitmapWriteOnDetach,
        Mutation::AttachWithStuckIo,
    ];
}
