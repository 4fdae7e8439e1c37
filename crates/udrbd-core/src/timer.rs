//! Timers are an enum indexing a table (quinn's TimerTable): the engine arms and disarms them,
//! `poll_timeout` reports the earliest, and a timeout handler checks every kind, so spurious
//! wake-ups are harmless.

use crate::types::Instant;

/// Every timer the engine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Lazy write-out of dirty bitmap pages.
    BitmapWriteout = 0,
    /// The connection setup machine's deadline.
    ConnectionSetup = 1,
    /// Send the next P_PING (every ping-int).
    Ping = 2,
    /// The P_PING_ACK is due (ping-timeout).
    PingAck = 3,
    /// The resync's 100 ms step.
    ResyncStep = 4,
    /// The oldest backing IO reaches `disk-timeout`.
    DiskTimeout = 5,
}

impl Timer {
    /// All timers, in table order.
    pub const ALL: [Timer; 6] = [
        Timer::BitmapWriteout,
        Timer::ConnectionSetup,
        Timer::Ping,
        Timer::PingAck,
        Timer::ResyncStep,
        Timer::DiskTimeout,
    ];
}

/// Deadlines, one slot per [`Timer`].
#[derive(Clone, Debug, Default)]
pub struct TimerTable {
    deadlines: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    /// Arms `timer` for `at` (replacing an earlier deadline).
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    /// The deadline of `timer`.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    /// Whether `timer` is armed and due at `now`.
    pub fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }
}
