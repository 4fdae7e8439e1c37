//! The resync rate controller and the c-min-rate throttle (facts §8; option units §7.2).
//!
//! The resync is pulled by the SyncTarget (and online verify by VerifyS): every
//! [`SLEEP_TIME`] (100 ms) the caller asks [`ResyncController::step`] how many 4 KiB requests
//! to issue, passing the sectors of resync replies that arrived since the last step.
//!
//! Two modes, chosen by `c-plan-ahead`:
//!
//! ```text
//!   c-plan-ahead = 0   fixed rate:  requests = resync-rate KiB/s × 0.1 s / 4 KiB = rate / 40
//!
//!   c-plan-ahead = P   dynamic:     a plan FIFO of P slots (one per 100 ms step) + its total
//!                       want       = resync-rate sectors/step × P      at the very start
//!                                  | c-fill-target                     if it is not 0
//!                                  | sect_in × c-delay-target          otherwise (delay based)
//!                       correction = want − in_flight − total
//!                       cps        = correction / P      (added to every slot, total += cps × P)
//!                       curr       = pop oldest slot (push 0), total −= curr
//!                       req_sect   = clamp(sect_in + curr, 0, c-max-rate sectors/step)
//!                       requests   = req_sect / 8
//!
//!   both modes:   requests ≤ max-buffers/2 − requests in flight
//! ```
//!
//! Independently, the c-min-rate throttle ([`ResyncController::should_throttle`]) delays
//! resync while there is application IO and the recent resync rate, averaged from the
//! [`SyncMarks`] (one every 3 s, 8 kept), exceeds c-min-rate. The marks also give the progress
//! numbers DRBD shows (speed, average since start, ETA), computed by the pure functions at the
//! end of this module with DRBD's integer arithmetic.
//!
//! Invariants (checked by [`ResyncController::invariants`]):
//! - the plan FIFO has exactly `c-plan-ahead` slots and `total` is the sum of the slots;
//! - a step that issues requests leaves at most `max-buffers/2` requests (8 sectors each) in
//!   flight by the controller's own count (checked in [`ResyncController::step`]);
//! - the sync marks are ordered in time, oldest first from `last + 1`.
//!
//! Differences from the 8.4 kernel, each on purpose:
//! - in-flight sectors are an unsigned count that saturates at 0 (the kernel's `int` can go
//!   negative when replies of an aborted run arrive after the reset);
//! - the max-buffers cap uses the larger of the caller's in-flight request count and the
//!   controller's own count (the kernel has only its own; they agree when every reply is
//!   counted in `sect_in`);
//! - a step counts 4 KiB units, so a caller that merges requests stays exact (the kernel adds
//!   8 sectors per merged request);
//! - a bitmap that grew during the run gives a rate of 0, not the kernel's unsigned wrap.

use std::time::Duration;

use crate::types::Instant;

/// How often the resync timer fires: DRBD's SLEEP_TIME = HZ/10.
pub const SLEEP_TIME: Duration = Duration::from_millis(100);
/// Interval between two sync marks: DRBD_SYNC_MARK_STEP = 3 s.
pub const SYNC_MARK_STEP: Duration = Duration::from_secs(3);
/// Number of sync marks kept: DRBD_SYNC_MARKS.
pub const SYNC_MARKS: usize = 8;
/// Sectors (512 bytes) in one resync request / one bitmap bit (4 KiB).
pub const SECTORS_PER_REQUEST: u64 = 8;
/// KiB in one resync request / one bitmap bit.
pub const KIB_PER_REQUEST: u64 = 4;
/// Steps per second (1 s / SLEEP_TIME).
const STEPS_PER_SECOND: u64 = 10;
/// The progress display calls a resync stalled when its ~18 s mark is older than this.
pub const STALLED_AFTER: Duration = Duration::from_secs(180);

/// The disk (and `max-buffers` net) options the controller reads, in DRBD's units (§7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncControllerConfig {
    /// `resync-rate`, KiB/s: the fixed rate, and the dynamic controller's initial rate.
    pub resync_rate_kib_per_sec: u64,
    /// `c-plan-ahead`, in 0.1 s (= steps); 0 selects the fixed rate.
    pub c_plan_ahead_tenths: u64,
    /// `c-fill-target`, sectors to keep in flight; 0 selects the delay-based target.
    pub c_fill_target_sectors: u64,
    /// `c-delay-target`, in 0.1 s.
    pub c_delay_target_tenths: u64,
    /// `c-max-rate`, KiB/s.
    pub c_max_rate_kib_per_sec: u64,
    /// `c-min-rate`, KiB/s; 0 never throttles the resync for application IO.
    pub c_min_rate_kib_per_sec: u64,
    /// `max-buffers` (net), pages; at most half of it are resync requests in flight.
    pub max_buffers_pages: u64,
}

impl Default for ResyncControllerConfig {
    /// DRBD 8.4's compiled defaults (the limits header, not the man page).
    fn default() -> Self {
        ResyncControllerConfig {
            resync_rate_kib_per_sec: 250,
            c_plan_ahead_tenths: 20,
            c_fill_target_sectors: 100,
            c_delay_target_tenths: 10,
            c_max_rate_kib_per_sec: 102_400,
            c_min_rate_kib_per_sec: 250,
            max_buffers_pages: 2048,
        }
    }
}

/// An option outside DRBD's range (§7.2); names the option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResyncConfigError {
    /// `resync-rate` not in 1–4194304 KiB/s.
    #[error("resync-rate out of range (1-4194304 KiB/s)")]
    ResyncRate,
    /// `c-plan-ahead` not in 0–300 (0.1 s).
    #[error("c-plan-ahead out of range (0-300, 0.1 s)")]
    CPlanAhead,
    /// `c-fill-target` not in 0–2^20 sectors.
    #[error("c-fill-target out of range (0-1048576 sectors)")]
    CFillTarget,
    /// `c-delay-target` not in 1–100 (0.1 s).
    #[error("c-delay-target out of range (1-100, 0.1 s)")]
    CDelayTarget,
    /// `c-max-rate` not in 250–4194304 KiB/s.
    #[error("c-max-rate out of range (250-4194304 KiB/s)")]
    CMaxRate,
    /// `c-min-rate` not in 0–4194304 KiB/s.
    #[error("c-min-rate out of range (0-4194304 KiB/s)")]
    CMinRate,
    /// `max-buffers` not in 32–131072 pages.
    #[error("max-buffers out of range (32-131072 pages)")]
    MaxBuffers,
}

impl ResyncControllerConfig {
    /// Checks every option against DRBD's limits; the first one out of range is reported.
    pub fn validate(&self) -> Result<(), ResyncConfigError> {
        let checks = [
            (
                self.resync_rate_kib_per_sec,
                1,
                4_194_304,
                ResyncConfigError::ResyncRate,
            ),
            (
                self.c_plan_ahead_tenths,
                0,
                300,
                ResyncConfigError::CPlanAhead,
            ),
            (
                self.c_fill_target_sectors,
                0,
                1 << 20,
                ResyncConfigError::CFillTarget,
            ),
            (
                self.c_delay_target_tenths,
                1,
                100,
                ResyncConfigError::CDelayTarget,
            ),
            (
                self.c_max_rate_kib_per_sec,
                250,
                4_194_304,
                ResyncConfigError::CMaxRate,
            ),
            (
                self.c_min_rate_kib_per_sec,
                0,
                4_194_304,
                ResyncConfigError::CMinRate,
            ),
            (
                self.max_buffers_pages,
                32,
                131_072,
                ResyncConfigError::MaxBuffers,
            ),
        ];
        match checks
            .into_iter()
            .find(|(value, min, max, _)| !(min..=max).contains(&value))
        {
            Some((_, _, _, error)) => Err(error),
            None => Ok(()),
        }
    }

    /// The fixed-rate mode's requests per step: `resync-rate × 0.1 s / 4 KiB`.
    pub fn fixed_rate_requests_per_step(&self) -> u64 {
        self.resync_rate_kib_per_sec / (KIB_PER_REQUEST * STEPS_PER_SECOND)
    }

    /// `c-max-rate` in sectors per step (KiB/s × 2 × 0.1 s), the dynamic mode's ceiling.
    pub fn max_sectors_per_step(&self) -> u64 {
        kib_per_sec_to_sectors_per_step(self.c_max_rate_kib_per_sec)
    }

    /// At most this many resync requests are in flight: `max-buffers / 2`.
    pub fn max_requests_in_flight(&self) -> u64 {
        self.max_buffers_pages / 2
    }
}

/// KiB/s → sectors per 100 ms step, truncated as DRBD does: `(rate × 2 × SLEEP_TIME) / HZ`.
fn kib_per_sec_to_sectors_per_step(rate_kib_per_sec: u64) -> u64 {
    rate_kib_per_sec * 2 / STEPS_PER_SECOND
}

/// The planning FIFO (DRBD's `struct fifo_buffer`): one slot per step, plus the running total.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlanFifo {
    values: Vec<i64>,
    head: usize,
    total: i64,
}

impl PlanFifo {
    fn new(steps: usize) -> PlanFifo {
        PlanFifo {
            values: vec![0; steps],
            head: 0,
            total: 0,
        }
    }

    fn steps(&self) -> usize {
        self.values.len()
    }

    /// DRBD's `fifo_add_val` plus the total update.
    fn add_to_every_slot(&mut self, value: i64) {
        for slot in &mut self.values {
            *slot += value;
        }
        self.total += value * self.values.len() as i64;
    }

    /// DRBD's `fifo_push(plan, 0)` plus the total update: takes the oldest slot out.
    fn pop_oldest(&mut self) -> i64 {
        assert!(!self.values.is_empty(), "the fixed-rate mode has no plan");
        let oldest = std::mem::replace(&mut self.values[self.head], 0);
        self.head = (self.head + 1) % self.values.len();
        self.total -= oldest;
        oldest
    }
}

/// One resync (or verify) run's rate controller, sync marks and throttle.
///
/// Call order: [`ResyncController::new`] (or [`ResyncController::reset`]) when the resync or
/// verify starts; then every [`SLEEP_TIME`] on the side that pulls (SyncTarget, VerifyS)
/// [`ResyncController::step`], issue that many 4 KiB requests (checking
/// [`ResyncController::should_throttle`] before each, on both sides) and give back those not
/// issued with [`ResyncController::unissued`]; call [`ResyncController::advance_marks`] whenever
/// bits are cleared.
#[derive(Clone, Debug)]
pub struct ResyncController {
    config: ResyncControllerConfig,
    plan: PlanFifo,
    /// Sectors requested and not yet answered (DRBD's `rs_in_flight`).
    in_flight_sectors: u64,
    /// The rate shown as "want" (DRBD's `c_sync_rate`), KiB/s.
    sync_rate_kib_per_sec: u64,
    marks: SyncMarks,
}

impl ResyncController {
    /// A controller for a run that starts at `now` with `bits_total` bits to go.
    ///
    /// Panics if `config` is out of range: validate it when it is parsed.
    pub fn new(config: ResyncControllerConfig, now: Instant, bits_total: u64) -> Self {
        assert_eq!(
            config.validate(),
            Ok(()),
            "validate the config before using it"
        );
        ResyncController {
            config,
            plan: PlanFifo::new(config.c_plan_ahead_tenths as usize),
            in_flight_sectors: 0,
            sync_rate_kib_per_sec: config.resync_rate_kib_per_sec,
            marks: SyncMarks::new(now, bits_total),
        }
    }

    /// DRBD's `drbd_rs_controller_reset` and mark reset at every resync/verify start: the
    /// plan and its total are zeroed, nothing is in flight, the marks start at `now`.
    pub fn reset(&mut self, now: Instant, bits_total: u64) {
        *self = ResyncController::new(self.config, now, bits_total);
    }

    /// Applies changed options (disk-options / net-options). A changed `c-plan-ahead` gives a
    /// new, zeroed plan, as DRBD allocates a new FIFO; the in-flight count is kept.
    pub fn set_config(&mut self, config: ResyncControllerConfig) {
        assert_eq!(
            config.validate(),
            Ok(()),
            "validate the config before using it"
        );
        if config.c_plan_ahead_tenths != self.config.c_plan_ahead_tenths {
            self.plan = PlanFifo::new(config.c_plan_ahead_tenths as usize);
        }
        self.config = config;
    }

    /// The options in use.
    pub fn config(&self) -> &ResyncControllerConfig {
        &self.config
    }

    /// One 100 ms step (DRBD's `drbd_rs_number_requests`): `sect_in` sectors of resync
    /// replies arrived since the last step, `in_flight_requests` 4 KiB requests are still
    /// unanswered by the caller's count. Returns how many 4 KiB requests to issue now; they
    /// are counted in flight (give back the ones not issued with [`Self::unissued`]).
    pub fn step(&mut self, sect_in: u64, in_flight_requests: u64) -> u64 {
        self.in_flight_sectors = self.in_flight_sectors.saturating_sub(sect_in);
        let wanted = if self.plan.steps() == 0 {
            self.sync_rate_kib_per_sec = self.config.resync_rate_kib_per_sec;
            self.config.fixed_rate_requests_per_step()
        } else {
            let requests = self.plan_sectors(sect_in) / SECTORS_PER_REQUEST;
            self.sync_rate_kib_per_sec = requests * KIB_PER_REQUEST * STEPS_PER_SECOND;
            requests
        };
        let in_flight = in_flight_requests.max(self.in_flight_sectors / SECTORS_PER_REQUEST);
        let room = self
            .config
            .max_requests_in_flight()
            .saturating_sub(in_flight);
        let requests = wanted.min(room);
        self.in_flight_sectors += requests * SECTORS_PER_REQUEST;
        assert!(
            requests == 0
                || self.in_flight_sectors / SECTORS_PER_REQUEST
                    <= self.config.max_requests_in_flight(),
            "more requests in flight than max-buffers/2"
        );
        requests
    }

    /// The dynamic controller (DRBD's `drbd_rs_controller`): sectors to request this step.
    /// `self.in_flight_sectors` has already been decremented by `sect_in`.
    fn plan_sectors(&mut self, sect_in: u64) -> u64 {
        let steps = self.plan.steps() as i64;
        assert!(steps > 0);
        let want = self.want_sectors(sect_in) as i64;
        let correction = want - self.in_flight_sectors as i64 - self.plan.total;
        // Integer division truncates towards zero, as C's does.
        let correction_per_step = correction / steps;
        self.plan.add_to_every_slot(correction_per_step);
        let current = self.plan.pop_oldest();
        let request_sectors = (sect_in as i64 + current).max(0) as u64;
        request_sectors.min(self.config.max_sectors_per_step())
    }

    /// The in-flight amount to aim for, in sectors.
    fn want_sectors(&self, sect_in: u64) -> u64 {
        let steps = self.plan.steps() as u64;
        if self.in_flight_sectors + sect_in == 0 {
            // At the start of the run: resync-rate's sectors per step, for every planned step.
            kib_per_sec_to_sectors_per_step(self.config.resync_rate_kib_per_sec) * steps
        } else if self.config.c_fill_target_sectors != 0 {
            self.config.c_fill_target_sectors
        } else {
            // Inflow per 100 ms × target delay in 100 ms units.
            sect_in * self.config.c_delay_target_tenths
        }
    }

    /// Gives back `requests` the last [`Self::step`] allowed but the caller did not issue
    /// (bitmap exhausted, throttled, resync extent busy).
    pub fn unissued(&mut self, requests: u64) {
        let sectors = requests * SECTORS_PER_REQUEST;
        assert!(
            sectors <= self.in_flight_sectors,
            "gave back more than was allowed"
        );
        self.in_flight_sectors -= sectors;
    }

    /// Sectors requested and not yet answered, by the controller's own count.
    pub fn in_flight_sectors(&self) -> u64 {
        self.in_flight_sectors
    }

    /// The rate for status ("want:"), KiB/s: in the dynamic mode the last step's requests
    /// × 4 KiB × 10 per second (before the max-buffers cap, as DRBD); in the fixed mode
    /// `resync-rate`.
    pub fn rate_kib_per_sec(&self) -> u64 {
        self.sync_rate_kib_per_sec
    }

    /// The sync marks of this run.
    pub fn marks(&self) -> &SyncMarks {
        &self.marks
    }

    /// Records progress: `bits_left` bits are still out of sync (see [`SyncMarks::advance`]).
    pub fn advance_marks(&mut self, now: Instant, bits_left: u64) {
        self.marks.advance(now, bits_left);
    }

    /// The resync was paused (PausedSyncS/T); see [`SyncMarks::pause`].
    pub fn pause(&mut self, now: Instant) {
        self.marks.pause(now);
    }

    /// The resync continues; see [`SyncMarks::resume`].
    pub fn resume(&mut self, now: Instant) {
        self.marks.resume(now);
    }

    /// The c-min-rate throttle (DRBD's `drbd_rs_c_min_rate_throttle`): true when there is
    /// application IO and the recent resync rate exceeds c-min-rate. `application_io_recent`
    /// is the caller's judgement: activity-log references pending, or more than 64 sectors
    /// of non-resync IO on the backing disk since the last check. Resync requests for an
    /// extent application IO waits on must not be throttled; the caller skips this check.
    pub fn should_throttle(
        &self,
        now: Instant,
        application_io_recent: bool,
        bits_left: u64,
    ) -> bool {
        c_min_rate_throttle(
            self.config.c_min_rate_kib_per_sec,
            application_io_recent,
            self.marks.recent_rate_kib_per_sec(now, bits_left),
        )
    }

    /// Checks the structural invariants; panics on a violation (a bug).
    pub fn invariants(&self) {
        assert_eq!(self.plan.steps() as u64, self.config.c_plan_ahead_tenths);
        assert_eq!(self.plan.total, self.plan.values.iter().sum::<i64>());
        assert!(self.plan.steps() == 0 || self.plan.head < self.plan.steps());
        self.marks.invariants();
    }
}

/// The throttle decision itself: c-min-rate 0 disables it; otherwise throttle when there is
/// application IO and the recent rate is above c-min-rate (strictly, as DRBD).
pub fn c_min_rate_throttle(
    c_min_rate_kib_per_sec: u64,
    application_io_recent: bool,
    recent_rate_kib_per_sec: u64,
) -> bool {
    c_min_rate_kib_per_sec != 0
        && application_io_recent
        && recent_rate_kib_per_sec > c_min_rate_kib_per_sec
}

/// One sync mark: at `time`, `bits_left` bits were still out of sync (or to verify).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMark {
    /// When the mark was taken.
    pub time: Instant,
    /// Bits left at that time.
    pub bits_left: u64,
}

/// DRBD's rolling sync marks (`rs_mark_time[]`, `rs_mark_left[]`, `rs_last_mark`) plus the
/// run's start, total and paused time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncMarks {
    marks: [SyncMark; SYNC_MARKS],
    last: usize,
    start: Instant,
    bits_total: u64,
    paused_for: Duration,
    paused: bool,
}

/// What the status shows about a running resync (`/proc/drbd`'s "finish:" and "speed:" line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    /// Estimated seconds to go, from the ~18 s mark.
    pub eta_seconds: u64,
    /// Rate over the ~18 s since mark `last + 2`, KiB/s ("speed:").
    pub speed_kib_per_sec: u64,
    /// Rate since mark `last − 1`, 3–6 s ago, KiB/s: what the throttle uses.
    pub recent_kib_per_sec: u64,
    /// Mean rate since the start, paused periods excluded, KiB/s.
    pub average_kib_per_sec: u64,
    /// No progress mark for [`STALLED_AFTER`].
    pub stalled: bool,
}

impl SyncMarks {
    /// All marks at (`now`, `bits_total`), as DRBD sets them at resync/verify start.
    pub fn new(now: Instant, bits_total: u64) -> SyncMarks {
        SyncMarks {
            marks: [SyncMark {
                time: now,
                bits_left: bits_total,
            }; SYNC_MARKS],
            last: 0,
            start: now,
            bits_total,
            paused_for: Duration::ZERO,
            paused: false,
        }
    }

    /// DRBD's `drbd_advance_rs_marks`: a new mark when [`SYNC_MARK_STEP`] has passed since
    /// the last one, the count changed, and the resync is not paused.
    pub fn advance(&mut self, now: Instant, bits_left: u64) {
        let last = self.marks[self.last];
        if self.paused || now < last.time.plus(SYNC_MARK_STEP) || last.bits_left == bits_left {
            return;
        }
        self.last = (self.last + 1) % SYNC_MARKS;
        self.marks[self.last] = SyncMark {
            time: now,
            bits_left,
        };
    }

    /// Resync suspended: the last mark's time is set to `now`.
    pub fn pause(&mut self, now: Instant) {
        self.marks[self.last].time = now;
        self.paused = true;
    }

    /// Syncer continues: the time since the pause counts as paused.
    pub fn resume(&mut self, now: Instant) {
        if self.paused {
            self.paused_for += now.since(self.marks[self.last].time);
            self.paused = false;
        }
    }

    /// Time spent paused by `now` (DRBD's rs_paused), a pause under way included.
    pub fn paused_for(&self, now: Instant) -> Duration {
        if self.paused {
            self.paused_for + now.since(self.marks[self.last].time)
        } else {
            self.paused_for
        }
    }

    /// The most recent mark.
    pub fn last(&self) -> SyncMark {
        self.marks[self.last]
    }

    /// The mark `offset` places after the last one, cyclically (`SYNC_MARKS − 1` = previous).
    fn mark_after_last(&self, offset: usize) -> SyncMark {
        self.marks[(self.last + offset) % SYNC_MARKS]
    }

    /// The rate since the mark before the last one (3–6 s), KiB/s: the throttle's input.
    pub fn recent_rate_kib_per_sec(&self, now: Instant, bits_left: u64) -> u64 {
        let mark = self.mark_after_last(SYNC_MARKS - 1);
        rate_kib_per_sec(
            mark.bits_left.saturating_sub(bits_left),
            now.since(mark.time),
        )
    }

    /// The mean rate since the start, paused time excluded, KiB/s.
    pub fn average_rate_kib_per_sec(&self, now: Instant, bits_left: u64) -> u64 {
        let running = now.since(self.start).saturating_sub(self.paused_for);
        rate_kib_per_sec(self.bits_total.saturating_sub(bits_left), running)
    }

    /// The numbers `/proc/drbd` shows. Mark `last + 2` is at least 6 marks (~18 s) old and
    /// will not be overwritten for another 3 s.
    pub fn progress(&self, now: Instant, bits_left: u64) -> ResyncProgress {
        let mark = self.mark_after_last(2);
        let elapsed = now.since(mark.time);
        let done = mark.bits_left.saturating_sub(bits_left);
        ResyncProgress {
            eta_seconds: eta_seconds(bits_left, done, elapsed),
            speed_kib_per_sec: rate_kib_per_sec(done, elapsed),
            recent_kib_per_sec: self.recent_rate_kib_per_sec(now, bits_left),
            average_kib_per_sec: self.average_rate_kib_per_sec(now, bits_left),
            stalled: elapsed > STALLED_AFTER,
        }
    }

    /// Checks that the marks are in time order, oldest at `last + 1`.
    pub fn invariants(&self) {
        for offset in 1..SYNC_MARKS {
            let older = self.mark_after_last(offset);
            let newer = self.mark_after_last(offset + 1);
            assert!(older.time <= newer.time, "sync marks out of order");
        }
        assert!(self.start <= self.mark_after_last(1).time);
    }
}

/// Bits (4 KiB each) → KiB: DRBD's `Bit2KB`.
pub fn bits_to_kib(bits: u64) -> u64 {
    bits * KIB_PER_REQUEST
}

/// `bits_done` bits in `elapsed`, as KiB/s: `Bit2KB(db / dt)` with `dt` in whole seconds,
/// at least 1.
pub fn rate_kib_per_sec(bits_done: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs().max(1);
    bits_to_kib(bits_done / seconds)
}

/// Seconds to go, DRBD's `rt = (dt × (rs_left / (db/100 + 1))) / 100`: `bits_done` bits in
/// `elapsed` (whole seconds, at least 1) and `bits_left` to go. The `+ 1` keeps it finite
/// when nothing was done, and makes it slightly low otherwise.
pub fn eta_seconds(bits_left: u64, bits_done: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs().max(1);
    seconds * (bits_left / (bits_done / 100 + 1)) / 100
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn at_seconds(seconds: u64) -> Instant {
        Instant(seconds * SECOND)
    }

    /// A link that answers each request `round_trip_steps` after it was issued, at most
    /// `bandwidth_kib_per_sec` (FIFO, excess waits in a queue).
    struct Link {
        round_trip_steps: u64,
        requests_per_step: u64,
        queue: VecDeque<(u64, u64)>,
        outstanding: u64,
    }

    impl Link {
        fn new(round_trip_steps: u64, bandwidth_kib_per_sec: u64) -> Link {
            let requests_per_step = bandwidth_kib_per_sec / (KIB_PER_REQUEST * STEPS_PER_SECOND);
            Link {
                round_trip_steps,
                requests_per_step,
                queue: VecDeque::new(),
                outstanding: 0,
            }
        }

        /// Requests answered at `step`.
        fn answer(&mut self, step: u64) -> u64 {
            let mut answered = 0;
            while let Some((ready, count)) = self.queue.front_mut() {
                if *ready > step || answered == self.requests_per_step {
                    break;
                }
                let take = (*count).min(self.requests_per_step - answered);
                answered += take;
                *count -= take;
                if *count == 0 {
                    self.queue.pop_front();
                }
            }
            self.outstanding -= answered;
            answered
        }

        fn send(&mut self, step: u64, requests: u64) {
            if requests > 0 {
                self.queue
                    .push_back((step + self.round_trip_steps, requests));
                self.outstanding += requests;
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct StepRecord {
        sect_in: u64,
        requests: u64,
        /// The controller's in-flight sectors as it planned (after sect_in, before issuing).
        in_flight_planned: u64,
        rate_kib_per_sec: u64,
    }

    fn simulate(config: ResyncControllerConfig, link: &mut Link, steps: u64) -> Vec<StepRecord> {
        let mut controller = ResyncController::new(config, Instant(0), u64::MAX);
        let mut trace = Vec::new();
        for step in 0..steps {
            let answered = link.answer(step);
            let sect_in = answered * SECTORS_PER_REQUEST;
            let requests = controller.step(sect_in, link.outstanding);
            controller.invariants();
            assert_eq!(
                controller.in_flight_sectors(),
                (link.outstanding + requests) * 8
            );
            link.send(step, requests);
            trace.push(StepRecord {
                sect_in,
                requests,
                in_flight_planned: controller.in_flight_sectors() - requests * 8,
                rate_kib_per_sec: controller.rate_kib_per_sec(),
            });
        }
        trace
    }

    /// Achieved rate over the trace's tail, KiB/s (sectors in per step × 0.5 KiB × 10).
    fn achieved_kib_per_sec(tail: &[StepRecord]) -> u64 {
        let sectors: u64 = tail.iter().map(|r| r.sect_in).sum();
        sectors * STEPS_PER_SECOND / 2 / tail.len() as u64
    }

    /// Asserts the controller's in-flight amount is constant over `tail` and just below `want`,
    /// and returns it. It settles short of `want` by less than one request per planned step:
    /// a correction below `steps` sectors plans nothing (`cps = correction / steps` is 0), and
    /// what the plan hands out below 8 sectors per step is dropped by `req_sect / 8`, as in
    /// DRBD. Each popped slot leaves `total`, so the plan drains and the shortfall stays.
    fn assert_settled(tail: &[StepRecord], want: u64, steps: u64) -> u64 {
        let settled = tail[0].in_flight_planned;
        assert!(
            tail.iter().all(|r| r.in_flight_planned == settled),
            "not settled: {tail:?}"
        );
        assert!(
            settled <= want && want - settled < steps * SECTORS_PER_REQUEST,
            "{settled}"
        );
        settled
    }

    #[test]
    fn resync_controller_defaults_are_drbds() {
        let config = ResyncControllerConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.c_plan_ahead_tenths, 20);
        assert_eq!(config.c_fill_target_sectors, 100);
        assert_eq!(config.max_sectors_per_step(), 20_480);
        assert_eq!(config.max_requests_in_flight(), 1024);
        let bad = ResyncControllerConfig {
            c_delay_target_tenths: 0,
            ..config
        };
        assert_eq!(bad.validate(), Err(ResyncConfigError::CDelayTarget));
        let bad = ResyncControllerConfig {
            c_plan_ahead_tenths: 301,
            ..config
        };
        assert_eq!(bad.validate(), Err(ResyncConfigError::CPlanAhead));
    }

    #[test]
    fn resync_controller_fixed_rate_issues_rate_over_40_per_step() {
        for (rate, per_step) in [
            (250, 6),
            (4000, 100),
            (40_960, 1024),
            (1, 0),
            (39, 0),
            (41, 1),
        ] {
            let config = ResyncControllerConfig {
                resync_rate_kib_per_sec: rate,
                c_plan_ahead_tenths: 0,
                max_buffers_pages: 131_072,
                ..ResyncControllerConfig::default()
            };
            let mut controller = ResyncController::new(config, Instant(0), 1000);
            let mut in_flight = 0;
            for _ in 0..5 {
                // Every request answered within the step: a fixed rate ignores feedback.
                let requests = controller.step(in_flight * 8, 0);
                controller.invariants();
                assert_eq!(requests, per_step, "resync-rate {rate}");
                assert_eq!(controller.rate_kib_per_sec(), rate);
                in_flight = requests;
            }
        }
    }

    #[test]
    fn resync_controller_first_dynamic_step_spreads_resync_rate_over_the_plan() {
        let mut controller =
            ResyncController::new(ResyncControllerConfig::default(), Instant(0), 1);
        // want = 250 KiB/s → 50 sectors/step × 20 steps = 1000; cps = 50; curr = 50.
        assert_eq!(controller.step(0, 0), 6);
        assert_eq!(controller.rate_kib_per_sec(), 240);
        assert_eq!(controller.in_flight_sectors(), 48);
        // Planned: 19 slots of 50 = 950 sectors still to come.
        assert_eq!(controller.plan.total, 950);
        controller.invariants();
    }

    #[test]
    fn resync_controller_default_settings_converge_to_fill_target() {
        // 400 KiB/s link (10 requests = 80 sectors per step), 100 ms round trip.
        let mut link = Link::new(1, 400);
        let trace = simulate(ResyncControllerConfig::default(), &mut link, 300);
        println!("step  sect_in  requests  in_flight(planned)  want KiB/s");
        for (step, record) in trace
            .iter()
            .enumerate()
            .filter(|(s, _)| s % 10 == 0 || *s < 25)
        {
            println!(
                "{step:4}  {:7}  {:8}  {:18}  {:10}",
                record.sect_in, record.requests, record.in_flight_planned, record.rate_kib_per_sec
            );
        }
        let tail = &trace[200..];
        // Settled just below c-fill-target 100 sectors (see `assert_settled`).
        assert_eq!(assert_settled(tail, 100, 20), 72);
        let achieved = achieved_kib_per_sec(tail);
        println!("achieved {achieved} KiB/s on a 400 KiB/s link");
        assert_eq!(achieved, 400);
    }

    #[test]
    fn resync_controller_large_fill_target_reaches_link_bandwidth() {
        // 20 MiB/s link (500 requests per step), 300 ms round trip: 12000 sectors in transit.
        let config = ResyncControllerConfig {
            c_fill_target_sectors: 20_000,
            max_buffers_pages: 131_072,
            ..ResyncControllerConfig::default()
        };
        let mut link = Link::new(3, 20_000);
        let trace = simulate(config, &mut link, 400);
        let tail = &trace[300..];
        assert_eq!(achieved_kib_per_sec(tail), 20_000);
        assert_eq!(assert_settled(tail, 20_000, 20), 19_960);
    }

    #[test]
    fn resync_controller_c_max_rate_caps_the_rate() {
        // A 1 GiB/s link, but c-max-rate 10 MiB/s = 2048 sectors = 256 requests per step.
        let config = ResyncControllerConfig {
            c_fill_target_sectors: 1 << 20,
            c_max_rate_kib_per_sec: 10_240,
            max_buffers_pages: 131_072,
            ..ResyncControllerConfig::default()
        };
        let mut link = Link::new(1, 1 << 20);
        let trace = simulate(config, &mut link, 200);
        assert!(
            trace
                .iter()
                .all(|r| r.requests <= 256 && r.rate_kib_per_sec <= 10_240)
        );
        assert_eq!(trace[150].requests, 256);
        assert_eq!(trace[150].rate_kib_per_sec, 10_240);
        assert_eq!(achieved_kib_per_sec(&trace[100..]), 10_240);
    }

    #[test]
    fn resync_controller_delay_based_keeps_inflow_times_delay_in_flight() {
        // c-fill-target 0, c-delay-target 1 s: keep 10 steps' inflow in flight.
        let config = ResyncControllerConfig {
            c_fill_target_sectors: 0,
            c_delay_target_tenths: 10,
            max_buffers_pages: 4096,
            ..ResyncControllerConfig::default()
        };
        // 4000 KiB/s link = 100 requests = 800 sectors per step, 100 ms round trip.
        let mut link = Link::new(1, 4000);
        let trace = simulate(config, &mut link, 400);
        let tail = &trace[300..];
        assert_eq!(achieved_kib_per_sec(tail), 4000);
        assert!(tail.iter().all(|r| r.sect_in == 800));
        // want = sect_in × c-delay-target = 800 × 10.
        assert_eq!(assert_settled(tail, 8000, 20), 7960);
    }

    #[test]
    fn resync_controller_caps_in_flight_at_half_max_buffers() {
        // Fixed 40 MiB/s = 1024 requests per step, but max-buffers 64 → 32 in flight.
        let config = ResyncControllerConfig {
            resync_rate_kib_per_sec: 40_960,
            c_plan_ahead_tenths: 0,
            max_buffers_pages: 64,
            ..ResyncControllerConfig::default()
        };
        let mut controller = ResyncController::new(config, Instant(0), 1000);
        assert_eq!(controller.step(0, 0), 32);
        assert_eq!(controller.step(0, 32), 0, "nothing answered: no room");
        assert_eq!(controller.step(10 * 8, 22), 10, "10 answered: room for 10");
        // The caller's count wins when it is the larger (replies not yet counted in sect_in).
        assert_eq!(controller.step(5 * 8, 30), 2);
        controller.invariants();
        // Requests not issued are given back.
        controller.unissued(2);
        assert_eq!(controller.in_flight_sectors(), (32 - 5) * 8);
        assert_eq!(
            controller.rate_kib_per_sec(),
            40_960,
            "the fixed rate is reported uncapped"
        );

        // The dynamic mode is capped too.
        let config = ResyncControllerConfig {
            max_buffers_pages: 32,
            ..Default::default()
        };
        let mut controller = ResyncController::new(config, Instant(0), 1000);
        let config_fast = ResyncControllerConfig {
            resync_rate_kib_per_sec: 100_000,
            ..config
        };
        controller.set_config(config_fast);
        assert_eq!(controller.step(0, 0), 16);
        // want = 20000 sectors/step × 20; cps = curr = 20000 sectors = 2500 requests.
        assert_eq!(controller.rate_kib_per_sec(), 100_000);
    }

    #[test]
    fn resync_controller_reset_zeroes_plan_and_in_flight() {
        let mut controller =
            ResyncController::new(ResyncControllerConfig::default(), Instant(0), 9);
        controller.step(0, 0);
        controller.step(16, 0);
        assert_ne!(controller.plan.total, 0);
        controller.reset(at_seconds(5), 100);
        controller.invariants();
        assert_eq!(controller.plan, PlanFifo::new(20));
        assert_eq!(controller.in_flight_sectors(), 0);
        assert_eq!(
            controller.marks().last(),
            SyncMark {
                time: at_seconds(5),
                bits_left: 100
            }
        );
        // c-plan-ahead changed: a new zeroed plan of the new size.
        controller.step(0, 0);
        let config = ResyncControllerConfig {
            c_plan_ahead_tenths: 50,
            ..Default::default()
        };
        controller.set_config(config);
        assert_eq!(controller.plan, PlanFifo::new(50));
        assert_eq!(controller.in_flight_sectors(), 48);
        controller.invariants();
    }

    /// A controller whose marks recorded `bits_per_second` for `seconds`, one advance per s.
    fn resyncing(c_min_rate: u64, bits_per_second: u64, seconds: u64) -> (ResyncController, u64) {
        let config = ResyncControllerConfig {
            c_min_rate_kib_per_sec: c_min_rate,
            ..ResyncControllerConfig::default()
        };
        let total = 1_000_000;
        let mut controller = ResyncController::new(config, Instant(0), total);
        let mut left = total;
        for second in 1..=seconds {
            left -= bits_per_second;
            controller.advance_marks(at_seconds(second), left);
            controller.invariants();
        }
        (controller, left)
    }

    #[test]
    fn resync_controller_sync_marks_every_3_s_8_kept() {
        let (controller, left) = resyncing(250, 100, 30);
        assert_eq!(left, 997_000);
        // Marks at 3, 6, ..., 30 s; 8 kept: the oldest is 9 s.
        let marks = controller.marks();
        assert_eq!(
            marks.last(),
            SyncMark {
                time: at_seconds(30),
                bits_left: 997_000
            }
        );
        assert_eq!(marks.mark_after_last(1).time, at_seconds(9));
        assert_eq!(marks.mark_after_last(SYNC_MARKS - 1).time, at_seconds(27));
        // No progress, no mark.
        let mut marks = marks.clone();
        marks.advance(at_seconds(40), 997_000);
        assert_eq!(marks.last().time, at_seconds(30));
    }

    #[test]
    fn resync_controller_c_min_rate_throttle() {
        // 1000 bits/s = 4000 KiB/s, c-min-rate 250 KiB/s.
        let (fast, left) = resyncing(250, 1000, 30);
        let now = at_seconds(31);
        let left_now = left - 1000;
        // Mark before the last: 27 s, 4 s ago, 4000 bits since → 4000 KiB/s.
        assert_eq!(fast.marks().recent_rate_kib_per_sec(now, left_now), 4000);
        assert!(fast.should_throttle(now, true, left_now));
        assert!(
            !fast.should_throttle(now, false, left_now),
            "no application IO"
        );
        // c-min-rate 0 never throttles.
        let (disabled, left) = resyncing(0, 1000, 30);
        assert!(!disabled.should_throttle(now, true, left - 1000));
        // 50 bits/s = 200 KiB/s is below c-min-rate 250: not throttled.
        let (slow, left) = resyncing(250, 50, 30);
        assert_eq!(slow.marks().recent_rate_kib_per_sec(now, left - 50), 200);
        assert!(!slow.should_throttle(now, true, left - 50));
        // Exactly at c-min-rate is not above it.
        assert!(!c_min_rate_throttle(250, true, 250));
        assert!(c_min_rate_throttle(250, true, 251));
    }

    #[test]
    fn resync_controller_eta_and_rates() {
        // 18 s for 18000 bits, 1_000_000 left: (18 × (1_000_000 / 181)) / 100 = 994 s.
        assert_eq!(eta_seconds(1_000_000, 18_000, Duration::from_secs(18)), 994);
        // Nothing done: 100 × bits_left / 100 per second, i.e. bits_left × dt / 100.
        assert_eq!(eta_seconds(5000, 0, Duration::from_secs(20)), 1000);
        // Under a second counts as one second.
        assert_eq!(eta_seconds(5000, 99, Duration::from_millis(10)), 50);
        assert_eq!(rate_kib_per_sec(18_000, Duration::from_secs(18)), 4000);
        assert_eq!(rate_kib_per_sec(3, Duration::from_millis(500)), 12);
        assert_eq!(bits_to_kib(256), 1024);

        let (controller, left) = resyncing(250, 1000, 30);
        let progress = controller.marks().progress(at_seconds(30), left);
        // Mark last + 2 is the one of 12 s: 18 s, 18000 bits.
        assert_eq!(
            progress,
            ResyncProgress {
                eta_seconds: 18 * (970_000 / 181) / 100,
                speed_kib_per_sec: 4000,
                recent_kib_per_sec: 4000,
                average_kib_per_sec: 4000,
                stalled: false,
            }
        );
        assert_eq!(progress.eta_seconds, 964);
        assert!(controller.marks().progress(at_seconds(300), left).stalled);
    }

    #[test]
    fn resync_controller_paused_time_is_not_averaged() {
        let mut marks = SyncMarks::new(Instant(0), 10_000);
        marks.advance(at_seconds(10), 9000);
        marks.pause(at_seconds(10));
        marks.advance(at_seconds(20), 8000);
        assert_eq!(marks.last().time, at_seconds(10), "no marks while paused");
        marks.resume(at_seconds(50));
        marks.invariants();
        // 1000 bits in 10 running seconds (40 s paused) = 400 KiB/s.
        assert_eq!(marks.average_rate_kib_per_sec(at_seconds(50), 9000), 400);
    }
}
