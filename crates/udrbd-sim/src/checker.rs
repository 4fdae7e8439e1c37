//! Named checkers and typed failures.
//!
//! Every way a simulated run can fail names the checker that fired ([`Checker`]), so a test
//! can ask not only "did the run fail" but "which promise was broken" (the mutation check
//! needs that). A failure is raised by [`raise`]: it records a [`SimFailure`] in a
//! thread-local slot and panics with a readable message (so scripted scenarios, which do not
//! catch it, still fail with the seed and the cluster's state). [`crate::swarm::run_seed`]
//! catches the panic and takes the typed failure back with [`take_failure`]. Engine panics
//! (a violated `invariants()` or an `assert!` in the engine) are caught by the cluster and
//! raised as [`Checker::Invariants`].
//!
//! The definitions of the checkers, each against what DRBD 8.4 promises and nothing
//! stronger, are in [`crate::swarm`]'s module doc.

use std::cell::RefCell;
use std::fmt;

/// The checker that caught a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Checker {
    /// (1) An acknowledged protocol C write did not survive the crash of one node.
    Durability,
    /// (2) A read did not return the block's last acknowledged value in its data generation.
    Register,
    /// (3) At a quiescent point two replicas differ where no node has the bit set or the
    /// extent in its activity log.
    BitmapSoundness,
    /// (4) After the faults stopped, the resync did not complete or UpToDate replicas differ.
    Convergence,
    /// (5) Two Primaries while connected, or a promotion DRBD would refuse was granted.
    Primaries,
    /// (6) An engine's `invariants()` (or another assertion inside the engine) failed.
    Invariants,
    /// (7) A request or command did not complete in bounded simulated time although a
    /// healthy path existed, an in-flight count leaked, or the run livelocked.
    Progress,
    /// A scripted scenario's own expectation, or the harness itself (not a DRBD promise).
    Scenario,
}

impl Checker {
    /// Every checker, in order.
    pub const ALL: [Checker; 8] = [
        Checker::Durability,
        Checker::Register,
        Checker::BitmapSoundness,
        Checker::Convergence,
        Checker::Primaries,
        Checker::Invariants,
        Checker::Progress,
        Checker::Scenario,
    ];

    /// A short name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Checker::Durability => "durability",
            Checker::Register => "register",
            Checker::BitmapSoundness => "bitmap-soundness",
            Checker::Convergence => "convergence",
            Checker::Primaries => "primaries",
            Checker::Invariants => "invariants",
            Checker::Progress => "progress",
            Checker::Scenario => "scenario",
        }
    }
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed run: which checker fired, and the message (seed, time, cluster state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The checker.
    pub checker: Checker,
    /// What happened, with the seed, the simulated time and every node's state.
    pub message: String,
}

thread_local! {
    static LAST_FAILURE: RefCell<Option<SimFailure>> = const { RefCell::new(None) };
}

/// Records the failure for [`take_failure`] and panics with its message.
pub fn raise(checker: Checker, message: String) -> ! {
    let text = format!("[{checker}] {message}");
    LAST_FAILURE.with(|f| *f.borrow_mut() = Some(SimFailure { checker, message }));
    panic!("{text}")
}

/// The failure last raised on this thread, if any (and forgets it).
pub fn take_failure() -> Option<SimFailure> {
    LAST_FAILURE.with(|f| f.borrow_mut().take())
}
