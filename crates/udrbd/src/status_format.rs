//! What `udrbd status` and `udrbd events2` print: DRBD 9's `drbdsetup status` text (with its
//! 80-column wrapping), `status --json`, `events2` lines, and the refusal messages
//! (drbd-ops-formats.md §1, §2, §3 and §7.1).
//!
//! Pure formatting: the daemon fills a [`ResourceView`] (one resource, volume 0, at most one
//! peer) and these functions turn it into text. Nothing here does IO or reads the clock.
//!
//! Units follow DRBD's output: sizes and traffic in KiB, in-flight data and resync counters
//! in 512-byte sectors, times in milliseconds.
//!
//! udrbd's own additions ([`UdrbdDeviceExtras`]) are printed only when set (they describe a
//! failed or failing disk, like DRBD's `blocked:` which also appears only when set): in the
//! text after `open:` on the device line, as `udrbd-stuck-ios:N`,
//! `udrbd-disk-failure-reason:<word>`, `udrbd-io-errors:N`, `udrbd-served-by-peer:yes` and
//! `udrbd-detach:<step>`, and at the end of the device object in JSON (keys
//! `"udrbd-stuck-ios"`, `"udrbd-disk-failure-reason"`, `"udrbd-io-errors"`,
//! `"udrbd-served-by-peer"`, `"udrbd-detach"`). They never
//! appear in `events2` lines, which stay exactly DRBD's.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;

// ------------------------------------------------------------------------------------------
// State vocabularies (§0)
// ------------------------------------------------------------------------------------------

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Not known (a peer that is not connected).
    Unknown,
    /// Serves the device.
    Primary,
    /// Does not serve the device.
    Secondary,
}

impl Role {
    /// DRBD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "Unknown",
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
        }
    }
}

/// A disk state (local `disk:` or `peer-disk:`), in DRBD 9's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskState {
    /// No backing device.
    Diskless,
    /// Reading the meta-data.
    Attaching,
    /// Detaching.
    Detaching,
    /// An IO error: on the way to Diskless.
    Failed,
    /// Negotiating with the peer.
    Negotiating,
    /// Not usable data.
    Inconsistent,
    /// Consistent but older than a peer's.
    Outdated,
    /// Not known (peer disks only).
    DUnknown,
    /// Consistent, not known whether up to date.
    Consistent,
    /// The newest data.
    UpToDate,
}

impl DiskState {
    /// DRBD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Diskless => "Diskless",
            DiskState::Attaching => "Attaching",
            DiskState::Detaching => "Detaching",
            DiskState::Failed => "Failed",
            DiskState::Negotiating => "Negotiating",
            DiskState::Inconsistent => "Inconsistent",
            DiskState::Outdated => "Outdated",
            DiskState::DUnknown => "DUnknown",
            DiskState::Consistent => "Consistent",
            DiskState::UpToDate => "UpToDate",
        }
    }
}

/// A connection state (`connection:`), in DRBD 9's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnState {
    /// Not trying to connect (after `disconnect` or a split brain).
    StandAlone,
    /// Tearing the connection down.
    Disconnecting,
    /// About to connect.
    Unconnected,
    /// The peer did not answer in time.
    Timeout,
    /// The socket broke.
    BrokenPipe,
    /// A network error.
    NetworkFailure,
    /// The peer broke the protocol.
    ProtocolError,
    /// Closing.
    TearDown,
    /// Waiting for the peer.
    Connecting,
    /// Connected.
    Connected,
}

impl ConnState {
    /// DRBD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::StandAlone => "StandAlone",
            ConnState::Disconnecting => "Disconnecting",
            ConnState::Unconnected => "Unconnected",
            ConnState::Timeout => "Timeout",
            ConnState::BrokenPipe => "BrokenPipe",
            ConnState::NetworkFailure => "NetworkFailure",
            ConnState::ProtocolError => "ProtocolError",
            ConnState::TearDown => "TearDown",
            ConnState::Connecting => "Connecting",
            ConnState::Connected => "Connected",
        }
    }
}

/// A replication state (`replication:`), in DRBD 9's order (the order matters: states above
/// `Established` are printed without `--verbose`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplState {
    /// No replication (not connected).
    Off,
    /// Connected and in sync.
    Established,
    /// Starting a resync as source.
    StartingSyncS,
    /// Starting a resync as target.
    StartingSyncT,
    /// Exchanging bitmaps, as source.
    WFBitMapS,
    /// Exchanging bitmaps, as target.
    WFBitMapT,
    /// Waiting for the sync UUID.
    WFSyncUUID,
    /// Resync source.
    SyncSource,
    /// Resync target.
    SyncTarget,
    /// Online verify, source.
    VerifyS,
    /// Online verify, target.
    VerifyT,
    /// Paused resync, source.
    PausedSyncS,
    /// Paused resync, target.
    PausedSyncT,
    /// Congestion: ahead of the peer.
    Ahead,
    /// Congestion: behind the peer.
    Behind,
}

impl ReplState {
    /// DRBD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplState::Off => "Off",
            ReplState::Established => "Established",
            ReplState::StartingSyncS => "StartingSyncS",
            ReplState::StartingSyncT => "StartingSyncT",
            ReplState::WFBitMapS => "WFBitMapS",
            ReplState::WFBitMapT => "WFBitMapT",
            ReplState::WFSyncUUID => "WFSyncUUID",
            ReplState::SyncSource => "SyncSource",
            ReplState::SyncTarget => "SyncTarget",
            ReplState::VerifyS => "VerifyS",
            ReplState::VerifyT => "VerifyT",
            ReplState::PausedSyncS => "PausedSyncS",
            ReplState::PausedSyncT => "PausedSyncT",
            ReplState::Ahead => "Ahead",
            ReplState::Behind => "Behind",
        }
    }

    /// A resync (not a verify): SyncSource, SyncTarget, PausedSyncS/T.
    fn is_resync(self) -> bool {
        matches!(
            self,
            ReplState::SyncSource
                | ReplState::SyncTarget
                | ReplState::PausedSyncS
                | ReplState::PausedSyncT
        )
    }
}

/// How writes are ordered on the backing device (`write-ordering:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteOrdering {
    /// No ordering.
    None,
    /// Drain the queue.
    Drain,
    /// Flush the backing device.
    Flush,
    /// Barriers.
    Barrier,
}

impl WriteOrdering {
    /// DRBD's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOrdering::None => "none",
            WriteOrdering::Drain => "drain",
            WriteOrdering::Flush => "flush",
            WriteOrdering::Barrier => "barrier",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Role, DiskState, ConnState, ReplState, WriteOrdering);

/// Why I/O is suspended (`suspended:`): any combination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Suspended {
    /// `suspend-io` by the user.
    pub user: bool,
    /// No access to UpToDate data.
    pub no_data: bool,
    /// Waiting for the fence-peer handler.
    pub fencing: bool,
    /// Lost quorum (with `on-no-quorum suspend-io`).
    pub quorum: bool,
}

impl Suspended {
    /// Suspended for any reason.
    pub fn any(&self) -> bool {
        self.user || self.no_data || self.fencing || self.quorum
    }

    /// `no`, or the reasons as a comma list in DRBD's order (`user,no-data,fencing,quorum`).
    pub fn text(&self) -> String {
        comma_list(&[
            (self.user, "user"),
            (self.no_data, "no-data"),
            (self.fencing, "fencing"),
            (self.quorum, "quorum"),
        ])
    }
}

/// Why resync is paused (`resync-suspended:`): any combination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResyncSuspended {
    /// `pause-sync` by the user.
    pub user: bool,
    /// Paused on the peer.
    pub peer: bool,
    /// Waiting for another resync (`resync-after`).
    pub dependency: bool,
    /// Too many resyncs at once.
    pub max_parallel: bool,
}

impl ResyncSuspended {
    /// Paused for any reason.
    pub fn any(&self) -> bool {
        self.user || self.peer || self.dependency || self.max_parallel
    }

    /// `no`, or the reasons as a comma list in DRBD's order.
    pub fn text(&self) -> String {
        comma_list(&[
            (self.user, "user"),
            (self.peer, "peer"),
            (self.dependency, "dependency"),
            (self.max_parallel, "max-parallel"),
        ])
    }
}

/// Which side of the device blocks I/O (`blocked:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Blocked {
    /// Application I/O is blocked.
    pub upper: bool,
    /// I/O to the backing device is blocked.
    pub lower: bool,
}

impl Blocked {
    /// Blocked on either side.
    pub fn any(&self) -> bool {
        self.upper || self.lower
    }

    /// `no`, `upper`, `lower` or `upper,lower`.
    pub fn text(&self) -> String {
        comma_list(&[(self.upper, "upper"), (self.lower, "lower")])
    }
}

fn comma_list(items: &[(bool, &str)]) -> String {
    let set: Vec<&str> = items
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| *s)
        .collect();
    if set.is_empty() {
        "no".to_string()
    } else {
        set.join(",")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn json_bool(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

// ------------------------------------------------------------------------------------------
// The data model
// ------------------------------------------------------------------------------------------

/// One resource as `status` shows it: exactly one device (volume 0 in practice) and at most
/// one peer connection (the text and JSON code handles several connections, sorted by name).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceView {
    /// The resource name.
    pub name: String,
    /// This node's id (`node-id:`, verbose only in text).
    pub node_id: u32,
    /// The local role.
    pub role: Role,
    /// Why I/O is suspended, if it is.
    pub suspended: Suspended,
    /// `force-io-failures` (a `--force secondary` still held open).
    pub force_io_failures: bool,
    /// `write-ordering:` (verbose + statistics in text; always in JSON).
    pub write_ordering: WriteOrdering,
    /// The one device.
    pub device: DeviceView,
    /// The peer connections (zero or one for udrbd).
    pub connections: Vec<ConnectionView>,
}

/// The local device (volume) of a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceView {
    /// The volume number (0 for udrbd; another number makes `volume:N` appear).
    pub volume: u32,
    /// The device minor.
    pub minor: u32,
    /// The local disk state.
    pub disk_state: DiskState,
    /// Intentionally diskless (`client:yes`).
    pub client: bool,
    /// The backing device path; `None` prints `backing_dev:none`.
    pub backing_dev: Option<String>,
    /// The device has quorum (`quorum:no` is printed when it has not).
    pub quorum: bool,
    /// The exported device is open.
    pub open: bool,
    /// The exported size, KiB (`size:`).
    pub size_kib: u64,
    /// Data read from the local disk, KiB.
    pub read_kib: u64,
    /// Data written to the local disk, KiB.
    pub written_kib: u64,
    /// Activity-log meta-data writes (a count).
    pub al_writes: u64,
    /// Bitmap meta-data writes (a count).
    pub bm_writes: u64,
    /// Application requests not yet completed.
    pub upper_pending: u32,
    /// Requests open to the backing device.
    pub lower_pending: u32,
    /// The activity log is suspended.
    pub al_suspended: bool,
    /// Blocked I/O.
    pub blocked: Blocked,
    /// udrbd's additions.
    pub udrbd: UdrbdDeviceExtras,
}

/// udrbd-specific device facts that DRBD does not have. Printed only when set: in text only
/// with `--verbose`, in JSON always (at the end of the device object), never in `events2`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdrbdDeviceExtras {
    /// Backing-device requests past their deadline (`udrbd-stuck-ios`).
    pub stuck_ios: Option<u64>,
    /// Why the local disk failed (`udrbd-disk-failure-reason`). Spaces are printed as `_` in
    /// the text, since DRBD values never contain spaces.
    pub disk_failure_reason: Option<String>,
    /// Local IO errors since the last attach (`udrbd-io-errors`).
    pub io_errors: Option<u64>,
    /// A Primary without a usable disk: the peer serves its IO (`udrbd-served-by-peer`).
    pub served_by_peer: bool,
    /// The step of a detach in progress (`udrbd-detach`).
    pub detach_step: Option<String>,
}

/// A connection to one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionView {
    /// The connection name: the peer's host name from the configuration.
    pub name: String,
    /// The peer's node id.
    pub peer_node_id: u32,
    /// The connection state.
    pub connection_state: ConnState,
    /// The peer's role (`Unknown` unless connected).
    pub peer_role: Role,
    /// TLS is on (`tls:yes`).
    pub tls: bool,
    /// The send buffer is congested.
    pub congested: bool,
    /// Application data in flight, sectors.
    pub ap_in_flight_sectors: u64,
    /// Resync data in flight, sectors.
    pub rs_in_flight_sectors: u64,
    /// The network paths (JSON `paths`, `events2` path lines).
    pub paths: Vec<PathView>,
    /// The peer's view of volume 0.
    pub peer_device: PeerDeviceView,
}

/// One network path of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathView {
    /// The local address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The path carries the connection.
    pub established: bool,
}

/// A peer's volume, as seen over one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerDeviceView {
    /// The volume number.
    pub volume: u32,
    /// The replication state.
    pub replication_state: ReplState,
    /// The peer's disk state (`DUnknown` when not connected).
    pub peer_disk_state: DiskState,
    /// The peer is intentionally diskless.
    pub peer_client: bool,
    /// Why resync is paused, if it is.
    pub resync_suspended: ResyncSuspended,
    /// Data received from the peer, KiB.
    pub received_kib: u64,
    /// Data sent to the peer, KiB.
    pub sent_kib: u64,
    /// Data out of sync with the peer (bits set in the bitmap), KiB.
    pub out_of_sync_kib: u64,
    /// Requests sent to the peer, not yet acknowledged.
    pub pending: u32,
    /// Requests received from the peer, not yet acknowledged by us.
    pub unacked: u32,
    /// The peer's data generation is stable (DRBD's UUID_FLAG_STABLE); used only for
    /// `may_promote` in events2.
    pub peer_uuid_stable: bool,
    /// The resync/verify counters: `Some` while a resync or verify runs (DRBD's "sync
    /// details"). `None` during a resync falls back to `done = 100 × (1 − out_of_sync/size)`.
    pub sync: Option<SyncProgress>,
}

/// The kernel's resync counters (sectors and milliseconds, as DRBD reports them). `done:`,
/// `dbdt1:`, `eta:` and the JSON rates are computed from them exactly as drbdsetup does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Sectors to resync when the resync started (`rs-total`). 0 means "no details".
    pub rs_total_sectors: u64,
    /// Sectors that failed to resync (`rs-failed`).
    pub rs_failed_sectors: u64,
    /// Sectors skipped because the checksums matched (`rs-same-csum`).
    pub rs_same_csum_sectors: u64,
    /// Time since the start of the resync, ms (`rs-dt-start-ms`).
    pub rs_dt_start_ms: u64,
    /// Time spent paused, ms (`rs-paused-ms`).
    pub rs_paused_ms: u64,
    /// Length of the long (~18 s) rate window, ms (`rs-dt0-ms`).
    pub rs_dt0_ms: u64,
    /// Sectors done in the long window (`rs-db0-sectors`).
    pub rs_db0_sectors: u64,
    /// Length of the short (~3 s) rate window, ms (`rs-dt1-ms`).
    pub rs_dt1_ms: u64,
    /// Sectors done in the short window (`rs-db1-sectors`).
    pub rs_db1_sectors: u64,
    /// The controller's target rate, KiB/s (c_sync_rate; JSON `want` shows it in MiB/s).
    pub want_kib_per_sec: u64,
    /// Online-verify counters, while a verify runs.
    pub verify: Option<VerifyProgress>,
}

/// Online-verify counters, sectors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Where the verify started.
    pub ov_start_sector: u64,
    /// Where it stops.
    pub ov_stop_sector: u64,
    /// The current position.
    pub ov_position: u64,
    /// Sectors left (0 means "no verify details").
    pub ov_left: u64,
    /// Sectors skipped.
    pub ov_skipped: u64,
}

impl SyncProgress {
    fn ov_left(&self) -> u64 {
        self.verify.as_ref().map_or(0, |v| v.ov_left)
    }

    /// Sectors still to go: `ov_left` during a verify, else `out_of_sync − rs_failed`.
    pub fn sectors_to_go(&self, out_of_sync_kib: u64) -> u64 {
        match self.ov_left() {
            0 => (out_of_sync_kib * 2).saturating_sub(self.rs_failed_sectors),
            left => left,
        }
    }

    /// `done:`, percent: `100 × (rs_total − to_go) / rs_total`.
    pub fn done_percent(&self, out_of_sync_kib: u64) -> f64 {
        let to_go = self.sectors_to_go(out_of_sync_kib);
        100.0 * (self.rs_total_sectors as f64 - to_go as f64) / self.rs_total_sectors as f64
    }

    /// `dbdt1:` (the ~3 s window), MiB/s.
    pub fn dbdt1(&self) -> f64 {
        rate_mib(self.rs_db1_sectors, self.rs_dt1_ms)
    }

    /// `dbdt0` / JSON `db0/dt0 [MiB/s]` (the ~18 s window), MiB/s.
    pub fn dbdt0(&self) -> f64 {
        rate_mib(self.rs_db0_sectors, self.rs_dt0_ms)
    }

    /// `eta:`, seconds from `dbdt1`; NaN when nothing was measured yet (printed `nan`).
    pub fn eta_seconds(&self, out_of_sync_kib: u64) -> f64 {
        let db = self.rs_db1_sectors as f64;
        let dt = self.rs_dt1_ms.max(1) as f64;
        if db > 0.0 {
            dt * 1e-3 * self.sectors_to_go(out_of_sync_kib) as f64 / db
        } else {
            f64::NAN
        }
    }

    /// `dbdt` / JSON `db/dt [MiB/s]`: the mean since the start, without pauses, MiB/s.
    pub fn dbdt(&self, out_of_sync_kib: u64) -> f64 {
        let to_go = self.sectors_to_go(out_of_sync_kib);
        let db = self.rs_total_sectors as f64 - to_go as f64;
        let dt = self.rs_dt_start_ms.saturating_sub(self.rs_paused_ms);
        db / dt.max(1) as f64 * 1000.0 / 2048.0
    }
}

fn rate_mib(db_sectors: u64, dt_ms: u64) -> f64 {
    db_sectors as f64 / dt_ms.max(1) as f64 * 1000.0 / 2048.0
}

impl PeerDeviceView {
    /// DRBD's "sync details": the kernel reported a non-zero `rs_total`.
    pub fn has_sync_details(&self) -> bool {
        self.sync.as_ref().is_some_and(|s| s.rs_total_sectors != 0)
    }

    fn sync_details(&self) -> Option<&SyncProgress> {
        self.sync.as_ref().filter(|s| s.rs_total_sectors != 0)
    }

    fn in_resync_without_details(&self) -> bool {
        self.sync.is_none() && self.replication_state.is_resync()
    }

    /// The `done:` percentage, if one is shown (during a resync or a verify).
    pub fn done_percent(&self, device_size_kib: u64) -> Option<f64> {
        if let Some(s) = self.sync_details() {
            Some(s.done_percent(self.out_of_sync_kib))
        } else if self.in_resync_without_details() {
            Some(in_sync_percent(self.out_of_sync_kib, device_size_kib))
        } else {
            None
        }
    }
}

/// `100 × (1 − out_of_sync/size)`; 0 for a device of size 0 (as JSON's `percent-in-sync`).
fn in_sync_percent(out_of_sync_kib: u64, size_kib: u64) -> f64 {
    if size_kib == 0 {
        0.0
    } else {
        100.0 * (1.0 - out_of_sync_kib as f64 / size_kib as f64)
    }
}

/// printf's `%.Nf`: Rust's fixed formatting rounds the same way; NaN and infinities are
/// spelled as glibc does.
fn c_fixed(x: f64, prec: usize) -> String {
    if x.is_nan() {
        if x.is_sign_negative() { "-nan" } else { "nan" }.to_string()
    } else if x.is_infinite() {
        if x < 0.0 { "-inf" } else { "inf" }.to_string()
    } else {
        format!("{x:.prec$}")
    }
}

// ------------------------------------------------------------------------------------------
// `drbdsetup status` text (§1)
// ------------------------------------------------------------------------------------------

/// Options of the text status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// `--verbose`: print every item.
    pub verbose: bool,
    /// `--statistics`: the statistics lines.
    pub statistics: bool,
    /// The terminal width; 80 when stdout is not a terminal. 0 means 80.
    pub width: usize,
    /// stdout is a terminal: `client:`/`peer-client:` are then left out without `--verbose`.
    pub is_tty: bool,
}

/// `drbdsetup status <res>` for one resource, as printed to a pipe (not a tty): one paragraph
/// ending with an empty line, wrapped at `width` columns (pass 80 when not a terminal).
pub fn status_text(r: &ResourceView, verbose: bool, statistics: bool, width: usize) -> String {
    status_text_with(
        r,
        &TextOptions {
            verbose,
            statistics,
            width,
            is_tty: false,
        },
    )
}

/// [`status_text`] with every option.
pub fn status_text_with(r: &ResourceView, opts: &TextOptions) -> String {
    let mut w = Wrapper::new(opts.width);
    resource_paragraph(&mut w, r, opts);
    w.out
}

/// `drbdsetup status` (all resources): the paragraphs sorted by name, or
/// `# No currently configured DRBD found.` when there is none.
pub fn status_text_all(
    resources: &[ResourceView],
    verbose: bool,
    statistics: bool,
    width: usize,
) -> String {
    status_text_all_with(
        resources,
        &TextOptions {
            verbose,
            statistics,
            width,
            is_tty: false,
        },
    )
}

/// [`status_text_all`] with every option.
pub fn status_text_all_with(resources: &[ResourceView], opts: &TextOptions) -> String {
    if resources.is_empty() {
        return "# No currently configured DRBD found.\n".to_string();
    }
    let mut w = Wrapper::new(opts.width);
    for r in sorted_by_name(resources) {
        resource_paragraph(&mut w, r, opts);
    }
    w.out
}

fn sorted_by_name(resources: &[ResourceView]) -> Vec<&ResourceView> {
    let mut v: Vec<&ResourceView> = resources.iter().collect();
    v.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    v
}

fn sorted_connections(r: &ResourceView) -> Vec<&ConnectionView> {
    let mut v: Vec<&ConnectionView> = r.connections.iter().collect();
    // drbdsetup: unnamed connections first, then by name.
    v.sort_by(|a, b| {
        (!a.name.is_empty(), a.name.as_bytes()).cmp(&(!b.name.is_empty(), b.name.as_bytes()))
    });
    v
}

/// drbd-utils' `wrap_printf`: each item is printed as a unit; before an item that would cross
/// the width, a newline and the continuation indent. The column counter excludes the indent
/// and starts at -1 on a fresh line, so wrapped lines can exceed the width by indent + 1, and
/// an item that leaves the counter at exactly 0 makes the next item start a "fresh line" on
/// the same line (indent printed, leading space dropped).
struct Wrapper {
    out: String,
    col: isize,
    columns: isize,
}

impl Wrapper {
    fn new(width: usize) -> Self {
        let columns = if width == 0 { 80 } else { width as isize };
        Wrapper {
            out: String::new(),
            col: 0,
            columns,
        }
    }

    fn item(&mut self, indent: usize, item: &str) {
        let mut s = item;
        while let Some(rest) = s.strip_prefix('\n') {
            self.out.push('\n');
            self.col = 0;
            s = rest;
        }
        if s.is_empty() {
            return;
        }
        if self.col > 0 && self.col + s.len() as isize > self.columns {
            self.out.push('\n');
            self.col = 0;
        }
        if self.col == 0 {
            s = s.trim_start_matches(' ');
            self.out.extend(std::iter::repeat_n(' ', indent));
            self.col = -1;
        }
        self.out.push_str(s);
        self.col += s.len() as isize;
        if s.ends_with('\n') {
            self.col = 0;
        }
    }
}

fn resource_paragraph(w: &mut Wrapper, r: &ResourceView, o: &TextOptions) {
    w.item(0, &r.name);
    if o.verbose {
        w.item(4, &format!(" node-id:{}", r.node_id));
    }
    w.item(4, &format!(" role:{}", r.role));
    if o.verbose || r.suspended.any() {
        w.item(4, &format!(" suspended:{}", r.suspended.text()));
    }
    if o.verbose || r.force_io_failures {
        w.item(
            4,
            &format!(" force-io-failures:{}", yes_no(r.force_io_failures)),
        );
    }
    if o.statistics && o.verbose {
        w.item(4, "\n");
        w.item(4, &format!(" write-ordering:{}", r.write_ordering));
    }
    w.item(0, "\n");

    // One device: `volume:N` is left out when it is volume 0.
    let single_device = true;
    device_line(w, &r.device, single_device, o);
    for c in sorted_connections(r) {
        connection_lines(w, c, &r.device, single_device, o);
    }
    w.item(0, "\n");
}

fn device_line(w: &mut Wrapper, d: &DeviceView, single_device: bool, o: &TextOptions) {
    let mut indent = 2;
    if o.verbose || !(single_device && d.volume == 0) {
        w.item(indent, &format!("volume:{}", d.volume));
        indent = 6;
        if o.verbose {
            w.item(indent, &format!(" minor:{}", d.minor));
        }
    }
    w.item(indent, &format!(" disk:{}", d.disk_state));
    if d.disk_state == DiskState::Diskless && (o.verbose || !o.is_tty) {
        w.item(indent, &format!(" client:{}", yes_no(d.client)));
    }
    if o.verbose {
        let dev = d.backing_dev.as_deref().unwrap_or("none");
        w.item(indent, &format!(" backing_dev:{dev}"));
    }
    if o.verbose || !d.quorum {
        w.item(indent, &format!(" quorum:{}", yes_no(d.quorum)));
    }
    w.item(indent, &format!(" open:{}", yes_no(d.open)));
    {
        if let Some(n) = d.udrbd.stuck_ios {
            w.item(indent, &format!(" udrbd-stuck-ios:{n}"));
        }
        if let Some(reason) = &d.udrbd.disk_failure_reason {
            let word: String = reason
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect();
            w.item(indent, &format!(" udrbd-disk-failure-reason:{word}"));
        }
        if let Some(n) = d.udrbd.io_errors {
            w.item(indent, &format!(" udrbd-io-errors:{n}"));
        }
        if d.udrbd.served_by_peer {
            w.item(indent, " udrbd-served-by-peer:yes");
        }
        if let Some(step) = &d.udrbd.detach_step {
            w.item(indent, &format!(" udrbd-detach:{step}"));
        }
    }
    let indent = 6;
    if o.statistics {
        w.item(indent, "\n");
        if o.verbose {
            w.item(indent, &format!(" size:{}", d.size_kib));
        }
        w.item(indent, &format!(" read:{}", d.read_kib));
        w.item(indent, &format!(" written:{}", d.written_kib));
        if o.verbose {
            w.item(indent, &format!(" al-writes:{}", d.al_writes));
            w.item(indent, &format!(" bm-writes:{}", d.bm_writes));
            w.item(indent, &format!(" upper-pending:{}", d.upper_pending));
            w.item(indent, &format!(" lower-pending:{}", d.lower_pending));
            w.item(indent, &format!(" al-suspended:{}", yes_no(d.al_suspended)));
        }
    }
    if o.verbose || d.blocked.any() {
        w.item(indent, &format!(" blocked:{}", d.blocked.text()));
    }
    w.item(indent, "\n");
}

fn connection_lines(
    w: &mut Wrapper,
    c: &ConnectionView,
    device: &DeviceView,
    single_device: bool,
    o: &TextOptions,
) {
    if !c.name.is_empty() {
        w.item(2, &c.name);
    }
    if o.verbose || c.name.is_empty() {
        let indent = if c.name.is_empty() { 2 } else { 6 };
        w.item(indent, &format!(" node-id:{}", c.peer_node_id));
    }
    let connected = c.connection_state == ConnState::Connected;
    if o.verbose || !connected {
        w.item(6, &format!(" connection:{}", c.connection_state));
    }
    if o.verbose || connected {
        w.item(6, &format!(" role:{}", c.peer_role));
    }
    if o.verbose || c.tls {
        w.item(6, &format!(" tls:{}", yes_no(c.tls)));
    }
    if o.verbose || c.congested {
        w.item(6, &format!(" congested:{}", yes_no(c.congested)));
        w.item(6, &format!(" ap-in-flight:{}", c.ap_in_flight_sectors));
        w.item(6, &format!(" rs-in-flight:{}", c.rs_in_flight_sectors));
    }
    w.item(0, "\n");
    if o.verbose || o.statistics || connected {
        peer_device_line(w, &c.peer_device, device, single_device, o);
    }
}

fn peer_device_line(
    w: &mut Wrapper,
    p: &PeerDeviceView,
    device: &DeviceView,
    single_device: bool,
    o: &TextOptions,
) {
    let mut indent = 4;
    if o.verbose || !(single_device && p.volume == 0) {
        w.item(indent, &format!("volume:{}", p.volume));
        indent = 8;
    }
    if o.verbose || p.replication_state > ReplState::Established {
        w.item(indent, &format!(" replication:{}", p.replication_state));
        indent = 8;
    }
    if o.verbose
        || o.statistics
        || p.replication_state != ReplState::Off
        || p.peer_disk_state != DiskState::DUnknown
    {
        w.item(indent, &format!(" peer-disk:{}", p.peer_disk_state));
        if p.peer_disk_state == DiskState::Diskless && (o.verbose || !o.is_tty) {
            w.item(indent, &format!(" peer-client:{}", yes_no(p.peer_client)));
        }
        let indent = 8;
        if let Some(done) = p.done_percent(device.size_kib) {
            w.item(indent, &format!(" done:{}", c_fixed(done, 2)));
        }
        if o.verbose || p.resync_suspended.any() {
            w.item(
                indent,
                &format!(" resync-suspended:{}", p.resync_suspended.text()),
            );
        }
        if o.statistics {
            w.item(indent, "\n");
            peer_device_statistics(&mut |s| w.item(indent, s), p, o.verbose);
        }
    }
    w.item(0, "\n");
}

/// The peer-device statistics items (each with its leading space), in drbdsetup's order.
/// `verbose` is always true in events2 (`--statistics` implies it there).
fn peer_device_statistics(emit: &mut dyn FnMut(&str), p: &PeerDeviceView, verbose: bool) {
    emit(&format!(" received:{}", p.received_kib));
    emit(&format!(" sent:{}", p.sent_kib));
    if verbose || p.out_of_sync_kib != 0 {
        emit(&format!(" out-of-sync:{}", p.out_of_sync_kib));
    }
    if !verbose {
        return;
    }
    emit(&format!(" pending:{}", p.pending));
    emit(&format!(" unacked:{}", p.unacked));
    if let Some(s) = p.sync_details() {
        emit(&format!(" dbdt1:{}", c_fixed(s.dbdt1(), 2)));
        emit(&format!(
            " eta:{}",
            c_fixed(s.eta_seconds(p.out_of_sync_kib), 0)
        ));
    }
}

// ------------------------------------------------------------------------------------------
// `drbdsetup status --json` (§2)
// ------------------------------------------------------------------------------------------

/// `drbdsetup status --json`: one array of resource objects (sorted by name), with
/// drbdsetup's hand-made pretty printing (`} ],` closers, the space after
/// `"connection-state": "…",`, a lone `,` line between resources, `]` and an empty line at
/// the end).
pub fn status_json(resources: &[ResourceView]) -> String {
    let mut o = String::from("[\n");
    for (i, r) in sorted_by_name(resources).into_iter().enumerate() {
        if i > 0 {
            o.push_str(",\n");
        }
        json_resource(&mut o, r);
    }
    o.push_str("]\n\n");
    o
}

/// A JSON string literal (drbdsetup does not escape; names never need it, but udrbd's free
/// text might).
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Writes `"key": value` lines at one indent, joined by `,\n`, the last without a comma.
struct JsonObj<'a> {
    out: &'a mut String,
    indent: &'static str,
    first: bool,
}

impl<'a> JsonObj<'a> {
    fn new(out: &'a mut String, indent: &'static str) -> Self {
        JsonObj {
            out,
            indent,
            first: true,
        }
    }

    fn raw(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push_str(",\n");
        }
        self.first = false;
        let _ = write!(self.out, "{}\"{}\": {}", self.indent, key, value);
    }

    fn str(&mut self, key: &str, value: &str) {
        self.raw(key, &json_str(value));
    }

    fn num(&mut self, key: &str, value: impl fmt::Display) {
        self.raw(key, &value.to_string());
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.raw(key, json_bool(value));
    }

    fn end(self) {
        if !self.first {
            self.out.push('\n');
        }
    }
}

fn json_resource(o: &mut String, r: &ResourceView) {
    o.push_str("{\n");
    {
        let mut j = JsonObj::new(o, "  ");
        j.str("name", &r.name);
        j.num("node-id", r.node_id);
        j.str("role", r.role.as_str());
        j.bool("suspended", r.suspended.any());
        j.bool("suspended-user", r.suspended.user);
        j.bool("suspended-no-data", r.suspended.no_data);
        j.bool("suspended-fencing", r.suspended.fencing);
        j.bool("suspended-quorum", r.suspended.quorum);
        j.bool("force-io-failures", r.force_io_failures);
        j.str("write-ordering", r.write_ordering.as_str());
        j.raw("devices", "[\n");
    }
    json_device(o, &r.device);
    o.push_str(" ],\n  \"connections\": [\n");
    for (i, c) in sorted_connections(r).into_iter().enumerate() {
        if i > 0 {
            o.push_str(",\n");
        }
        json_connection(o, c, &r.device);
    }
    o.push_str(" ]\n}\n");
}

fn json_device(o: &mut String, d: &DeviceView) {
    o.push_str("    {\n");
    let mut j = JsonObj::new(o, "      ");
    j.num("volume", d.volume);
    j.num("minor", d.minor);
    j.str("disk-state", d.disk_state.as_str());
    j.bool("client", d.client);
    j.bool("open", d.open);
    j.bool("quorum", d.quorum);
    j.num("size", d.size_kib);
    j.num("read", d.read_kib);
    j.num("written", d.written_kib);
    j.num("al-writes", d.al_writes);
    j.num("bm-writes", d.bm_writes);
    j.num("upper-pending", d.upper_pending);
    j.num("lower-pending", d.lower_pending);
    if let Some(n) = d.udrbd.stuck_ios {
        j.num("udrbd-stuck-ios", n);
    }
    if let Some(reason) = &d.udrbd.disk_failure_reason {
        j.str("udrbd-disk-failure-reason", reason);
    }
    if let Some(n) = d.udrbd.io_errors {
        j.num("udrbd-io-errors", n);
    }
    if d.udrbd.served_by_peer {
        j.bool("udrbd-served-by-peer", true);
    }
    if let Some(step) = &d.udrbd.detach_step {
        j.str("udrbd-detach", step);
    }
    j.end();
    o.push_str("    }");
}

fn json_connection(o: &mut String, c: &ConnectionView, device: &DeviceView) {
    let _ = write!(
        o,
        "    {{\n      \"peer-node-id\": {},\n      \"name\": {},\n      \"connection-state\": \"{}\", \n",
        c.peer_node_id,
        json_str(&c.name),
        c.connection_state
    );
    {
        let mut j = JsonObj::new(o, "      ");
        j.bool("congested", c.congested);
        j.str("peer-role", c.peer_role.as_str());
        j.bool("tls", c.tls);
        j.num("ap-in-flight", c.ap_in_flight_sectors);
        j.num("rs-in-flight", c.rs_in_flight_sectors);
        j.raw("paths", "[\n");
    }
    for (i, p) in c.paths.iter().enumerate() {
        if i > 0 {
            o.push_str(",\n");
        }
        json_path(o, p);
    }
    o.push_str(" ],\n      \"peer_devices\": [\n");
    json_peer_device(o, &c.peer_device, device);
    o.push_str(" ]\n    }");
}

fn json_path(o: &mut String, p: &PathView) {
    o.push_str("        {\n");
    for (key, addr) in [("this_host", &p.local), ("remote_host", &p.remote)] {
        let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = write!(
            o,
            "          \"{key}\": {{\n            \"address\": \"{}\",\n            \"port\": {},\n            \"family\": \"{family}\"\n          }},\n",
            addr.ip(),
            addr.port()
        );
    }
    let _ = write!(
        o,
        "          \"established\": {}\n        }}",
        json_bool(p.established)
    );
}

fn json_peer_device(o: &mut String, p: &PeerDeviceView, device: &DeviceView) {
    o.push_str("        {\n");
    let mut j = JsonObj::new(o, "          ");
    j.num("volume", p.volume);
    j.str("replication-state", p.replication_state.as_str());
    j.str("peer-disk-state", p.peer_disk_state.as_str());
    j.bool("peer-client", p.peer_client);
    j.str("resync-suspended", &p.resync_suspended.text());
    j.num("received", p.received_kib);
    j.num("sent", p.sent_kib);
    j.num("out-of-sync", p.out_of_sync_kib);
    j.num("pending", p.pending);
    j.num("unacked", p.unacked);
    let details = p.sync_details();
    j.bool("has-sync-details", details.is_some());
    j.bool(
        "has-online-verify-details",
        details.is_some_and(|s| s.ov_left() != 0),
    );
    j.raw(
        "percent-in-sync",
        &c_fixed(in_sync_percent(p.out_of_sync_kib, device.size_kib), 2),
    );
    if let Some(s) = details {
        let oos = p.out_of_sync_kib;
        j.num("rs-total", s.rs_total_sectors);
        j.num("rs-dt-start-ms", s.rs_dt_start_ms);
        j.num("rs-paused-ms", s.rs_paused_ms);
        j.num("rs-dt0-ms", s.rs_dt0_ms);
        j.num("rs-db0-sectors", s.rs_db0_sectors);
        j.num("rs-dt1-ms", s.rs_dt1_ms);
        j.num("rs-db1-sectors", s.rs_db1_sectors);
        match &s.verify {
            Some(v) if v.ov_left != 0 => {
                j.num("ov-start-sector", v.ov_start_sector);
                j.num("ov-stop-sector", v.ov_stop_sector);
                j.num("ov-position", v.ov_position);
                j.num("ov-left", v.ov_left);
                j.num("ov-skipped", v.ov_skipped);
            }
            _ => {
                j.num("rs-failed", s.rs_failed_sectors);
                j.num("rs-same-csum", s.rs_same_csum_sectors);
            }
        }
        j.raw("want", &c_fixed(s.want_kib_per_sec as f64 / 1024.0, 2));
        j.raw("db0/dt0 [MiB/s]", &c_fixed(s.dbdt0(), 2));
        j.raw("db1/dt1 [MiB/s]", &c_fixed(s.dbdt1(), 2));
        let eta = if s.rs_db1_sectors == 0 {
            987654321.0
        } else {
            s.eta_seconds(oos)
        };
        j.raw("estimated-seconds-to-finish", &c_fixed(eta, 0));
        j.raw("db/dt [MiB/s]", &c_fixed(s.dbdt(oos), 2));
        j.raw("percent-resync-done", &c_fixed(s.done_percent(oos), 2));
    } else if p.in_resync_without_details() {
        j.raw(
            "percent-resync-done",
            &c_fixed(in_sync_percent(p.out_of_sync_kib, device.size_kib), 2),
        );
    }
    j.end();
    o.push_str("        }");
}

// ------------------------------------------------------------------------------------------
// `drbdsetup events2` (§3)
// ------------------------------------------------------------------------------------------

/// The action word of an events2 line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The initial dump.
    Exists,
    /// A new object.
    Create,
    /// A changed object.
    Change,
    /// A removed object.
    Destroy,
}

impl EventKind {
    /// The action word.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Exists => "exists",
            EventKind::Create => "create",
            EventKind::Change => "change",
            EventKind::Destroy => "destroy",
        }
    }
}

/// The line that ends the initial dump.
pub const EVENTS2_END_OF_DUMP: &str = "exists -";

/// events2's `may_promote` and `promotion_score`, computed as drbdsetup does (§3.1).
pub fn promotion_info(r: &ResourceView) -> (bool, u32) {
    let d = &r.device;
    if r.force_io_failures || !d.quorum {
        return (false, 0);
    }
    let peers = || r.connections.iter().map(|c| &c.peer_device);
    let replicas = u32::from(d.disk_state == DiskState::UpToDate)
        + peers()
            .filter(|p| p.volume == d.volume && p.peer_disk_state == DiskState::UpToDate)
            .count() as u32;
    if replicas == 0 {
        return (false, 0);
    }
    let stable = d.disk_state == DiskState::UpToDate
        || peers().any(|p| {
            p.volume == d.volume && p.peer_disk_state == DiskState::UpToDate && p.peer_uuid_stable
        });
    let have_primary =
        r.role == Role::Primary || r.connections.iter().any(|c| c.peer_role == Role::Primary);
    let has_disk = matches!(
        d.disk_state,
        DiskState::UpToDate | DiskState::Consistent | DiskState::Inconsistent
    );
    let local_up_to_date = u32::from(d.disk_state == DiskState::UpToDate);
    let score = u32::from(has_disk) * 10000 + local_up_to_date.min(99) * 100 + replicas.min(99);
    (!have_primary && stable, score)
}

fn addr_str(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("ipv4:{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("ipv6:[{}]:{}", v6.ip(), v6.port()),
    }
}

fn resource_id(r: &ResourceView) -> String {
    format!("name:{}", r.name)
}

fn device_id(kind: EventKind, r: &ResourceView) -> String {
    if kind == EventKind::Destroy {
        format!("name:{} volume:{}", r.name, r.device.volume)
    } else {
        format!(
            "name:{} volume:{} minor:{}",
            r.name, r.device.volume, r.device.minor
        )
    }
}

fn connection_id(r: &ResourceView, c: &ConnectionView) -> String {
    format!(
        "name:{} peer-node-id:{} conn-name:{}",
        r.name, c.peer_node_id, c.name
    )
}

fn peer_device_id(r: &ResourceView, c: &ConnectionView) -> String {
    format!("{} volume:{}", connection_id(r, c), c.peer_device.volume)
}

fn path_id(r: &ResourceView, c: &ConnectionView, p: &PathView) -> String {
    format!(
        "{} local:{} peer:{}",
        connection_id(r, c),
        addr_str(&p.local),
        addr_str(&p.remote)
    )
}

fn line(kind: EventKind, object: &str, id: &str, items: &[String]) -> String {
    let mut s = format!("{} {} {}", kind.as_str(), object, id);
    for i in items {
        s.push_str(i);
    }
    s
}

// Each group below returns its items with their leading spaces.

fn res_role(r: &ResourceView) -> Vec<String> {
    vec![format!(" role:{}", r.role)]
}

fn res_suspended(r: &ResourceView) -> Vec<String> {
    vec![format!(" suspended:{}", r.suspended.text())]
}

fn res_fail_io(r: &ResourceView) -> Vec<String> {
    vec![format!(
        " force-io-failures:{}",
        yes_no(r.force_io_failures)
    )]
}

fn res_stats(r: &ResourceView) -> Vec<String> {
    vec![format!(" write-ordering:{}", r.write_ordering)]
}

fn res_promotion(r: &ResourceView) -> Vec<String> {
    let (may, score) = promotion_info(r);
    vec![format!(
        " may_promote:{} promotion_score:{score}",
        yes_no(may)
    )]
}

fn dev_info(d: &DeviceView) -> Vec<String> {
    vec![
        format!(
            " backing_dev:{}",
            d.backing_dev.as_deref().unwrap_or("none")
        ),
        format!(" disk:{}", d.disk_state),
        format!(" client:{}", yes_no(d.client)),
        format!(" open:{}", yes_no(d.open)),
        format!(" quorum:{}", yes_no(d.quorum)),
    ]
}

/// Device statistics; `old` leaves out `al-suspended`/`blocked` when they did not change.
fn dev_stats(d: &DeviceView, old: Option<&DeviceView>) -> Vec<String> {
    let mut v = vec![
        format!(" size:{}", d.size_kib),
        format!(" read:{}", d.read_kib),
        format!(" written:{}", d.written_kib),
        format!(" al-writes:{}", d.al_writes),
        format!(" bm-writes:{}", d.bm_writes),
        format!(" upper-pending:{}", d.upper_pending),
        format!(" lower-pending:{}", d.lower_pending),
    ];
    if old.is_none_or(|o| o.al_suspended != d.al_suspended) {
        v.push(format!(" al-suspended:{}", yes_no(d.al_suspended)));
    }
    if old.is_none_or(|o| o.blocked != d.blocked) {
        v.push(format!(" blocked:{}", d.blocked.text()));
    }
    v
}

fn conn_state(c: &ConnectionView) -> Vec<String> {
    vec![format!(" connection:{}", c.connection_state)]
}

fn conn_role(c: &ConnectionView) -> Vec<String> {
    vec![format!(" role:{}", c.peer_role)]
}

fn conn_stats(c: &ConnectionView, old: Option<&ConnectionView>) -> Vec<String> {
    let mut v = Vec::new();
    if old.is_none_or(|o| o.congested != c.congested) {
        v.push(format!(" congested:{}", yes_no(c.congested)));
    }
    v.push(format!(" ap-in-flight:{}", c.ap_in_flight_sectors));
    v.push(format!(" rs-in-flight:{}", c.rs_in_flight_sectors));
    v
}

fn pd_repl(p: &PeerDeviceView) -> Vec<String> {
    vec![format!(" replication:{}", p.replication_state)]
}

fn pd_disk(p: &PeerDeviceView) -> Vec<String> {
    vec![
        format!(" peer-disk:{}", p.peer_disk_state),
        format!(" peer-client:{}", yes_no(p.peer_client)),
    ]
}

fn pd_resync_susp(p: &PeerDeviceView) -> Vec<String> {
    vec![format!(" resync-suspended:{}", p.resync_suspended.text())]
}

/// `done:` during a resync with details (always), then the statistics (with `--statistics`,
/// which implies verbose in events2).
fn pd_stats(p: &PeerDeviceView, statistics: bool) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(s) = p.sync_details() {
        v.push(format!(
            " done:{}",
            c_fixed(s.done_percent(p.out_of_sync_kib), 2)
        ));
    }
    if statistics {
        peer_device_statistics(&mut |s| v.push(s.to_string()), p, true);
    }
    v
}

fn path_info(p: &PathView) -> Vec<String> {
    vec![format!(" established:{}", yes_no(p.established))]
}

/// The events2 line of the resource object (no newline). `exists`, `create` and `change`
/// carry every key (like `--full`); `destroy` only the name. For `change` lines with only
/// what changed, use [`events2_changes`].
pub fn event_resource(kind: EventKind, r: &ResourceView, statistics: bool) -> String {
    let mut items = Vec::new();
    if kind != EventKind::Destroy {
        items.extend(res_role(r));
        items.extend(res_suspended(r));
        items.extend(res_fail_io(r));
        if statistics {
            items.extend(res_stats(r));
        }
        items.extend(res_promotion(r));
    }
    line(kind, "resource", &resource_id(r), &items)
}

/// The events2 line of the device (volume 0).
pub fn event_device(kind: EventKind, r: &ResourceView, statistics: bool) -> String {
    let mut items = Vec::new();
    if kind != EventKind::Destroy {
        items.extend(dev_info(&r.device));
        if statistics {
            items.extend(dev_stats(&r.device, None));
        }
    }
    line(kind, "device", &device_id(kind, r), &items)
}

/// The events2 line of a connection.
pub fn event_connection(
    kind: EventKind,
    r: &ResourceView,
    c: &ConnectionView,
    statistics: bool,
) -> String {
    let mut items = Vec::new();
    if kind != EventKind::Destroy {
        items.extend(conn_state(c));
        items.extend(conn_role(c));
        if statistics {
            items.extend(conn_stats(c, None));
        }
    }
    line(kind, "connection", &connection_id(r, c), &items)
}

/// The events2 line of a connection's peer device.
pub fn event_peer_device(
    kind: EventKind,
    r: &ResourceView,
    c: &ConnectionView,
    statistics: bool,
) -> String {
    let mut items = Vec::new();
    if kind != EventKind::Destroy {
        let p = &c.peer_device;
        items.extend(pd_repl(p));
        items.extend(pd_disk(p));
        items.extend(pd_resync_susp(p));
        items.extend(pd_stats(p, statistics));
    }
    line(kind, "peer-device", &peer_device_id(r, c), &items)
}

/// The events2 line of a path.
pub fn event_path(kind: EventKind, r: &ResourceView, c: &ConnectionView, p: &PathView) -> String {
    let items = if kind == EventKind::Destroy {
        Vec::new()
    } else {
        path_info(p)
    };
    line(kind, "path", &path_id(r, c, p), &items)
}

/// A handler call or its response (`call helper …` / `response helper … status:N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelperEvent<'a> {
    /// The resource name.
    pub resource: &'a str,
    /// The connection (peer node id, connection name), for per-peer handlers.
    pub peer: Option<(u32, &'a str)>,
    /// The volume, for per-volume handlers.
    pub volume: Option<u32>,
    /// The minor, for per-device handlers.
    pub minor: Option<u32>,
    /// The handler name (`before-resync-target`, `fence-peer`, …).
    pub helper: &'a str,
    /// `None` for the call, `Some(exit status)` for the response.
    pub status: Option<u32>,
}

/// The events2 line of a handler call or response.
pub fn event_helper(h: &HelperEvent<'_>) -> String {
    let mut s = format!(
        "{} helper name:{}",
        if h.status.is_some() {
            "response"
        } else {
            "call"
        },
        h.resource
    );
    if let Some((id, name)) = h.peer {
        let _ = write!(s, " peer-node-id:{id} conn-name:{name}");
    }
    if let Some(v) = h.volume {
        let _ = write!(s, " volume:{v}");
    }
    if let Some(m) = h.minor {
        let _ = write!(s, " minor:{m}");
    }
    let _ = write!(s, " helper:{}", h.helper);
    if let Some(st) = h.status {
        let _ = write!(s, " status:{st}");
    }
    s
}

/// Every line about a resource with one action, in drbdsetup's batch order: the resource,
/// the connections, the device, then per connection its peer device and paths.
fn all_lines(kind: EventKind, r: &ResourceView, statistics: bool) -> Vec<String> {
    let conns = sorted_connections(r);
    let mut v = vec![event_resource(kind, r, statistics)];
    for c in &conns {
        v.push(event_connection(kind, r, c, statistics));
    }
    v.push(event_device(kind, r, statistics));
    for c in &conns {
        v.push(event_peer_device(kind, r, c, statistics));
        for p in &c.paths {
            v.push(event_path(kind, r, c, p));
        }
    }
    v
}

/// `drbdsetup events2 --now <res>`: the `exists` lines of the current state, then `exists -`.
/// Lines have no newline.
pub fn events2_now(r: &ResourceView, statistics: bool) -> Vec<String> {
    events2_now_all(std::slice::from_ref(r), statistics)
}

/// `drbdsetup events2 --now` for several resources (sorted by name); only `exists -` when
/// there is none.
pub fn events2_now_all(resources: &[ResourceView], statistics: bool) -> Vec<String> {
    let mut v = Vec::new();
    for r in sorted_by_name(resources) {
        v.extend(all_lines(EventKind::Exists, r, statistics));
    }
    v.push(EVENTS2_END_OF_DUMP.to_string());
    v
}

/// The events2 lines that describe going from `old` to `new` (`None`: the resource does not
/// exist), the way drbdsetup prints one batch: `create` lines with every key for new
/// objects, `change` lines with the identifying keys plus only the groups that changed, and
/// `destroy` lines (paths, peer devices, connections, device, resource) for removed objects.
///
/// Groups, as in drbdsetup: resource `role`, `suspended`, `force-io-failures`, the pair
/// `may_promote`/`promotion_score`, and with statistics `write-ordering`; device
/// `backing_dev disk client open quorum` as one group; connection `connection`, `role`;
/// peer device `replication`, `peer-disk peer-client`, `resync-suspended`; path
/// `established`. Statistics groups appear only with `statistics`. A peer device's `done:`
/// comes with its statistics group, which is printed when its counters changed.
pub fn events2_changes(
    old: Option<&ResourceView>,
    new: Option<&ResourceView>,
    statistics: bool,
) -> Vec<String> {
    match (old, new) {
        (None, None) => Vec::new(),
        (None, Some(n)) => all_lines(EventKind::Create, n, statistics),
        (Some(o), None) => destroy_all(o),
        (Some(o), Some(n)) => change_lines(o, n, statistics),
    }
}

fn destroy_connection(r: &ResourceView, c: &ConnectionView) -> Vec<String> {
    let mut v: Vec<String> = c
        .paths
        .iter()
        .map(|p| event_path(EventKind::Destroy, r, c, p))
        .collect();
    v.push(event_peer_device(EventKind::Destroy, r, c, false));
    v.push(event_connection(EventKind::Destroy, r, c, false));
    v
}

fn destroy_all(r: &ResourceView) -> Vec<String> {
    let mut v = Vec::new();
    for c in sorted_connections(r) {
        v.extend(destroy_connection(r, c));
    }
    v.push(event_device(EventKind::Destroy, r, false));
    v.push(event_resource(EventKind::Destroy, r, false));
    v
}

fn change_lines(o: &ResourceView, n: &ResourceView, statistics: bool) -> Vec<String> {
    let ch = EventKind::Change;
    let mut v = Vec::new();

    // Resource.
    let mut items = Vec::new();
    if o.role != n.role {
        items.extend(res_role(n));
    }
    if o.suspended != n.suspended {
        items.extend(res_suspended(n));
    }
    if o.force_io_failures != n.force_io_failures {
        items.extend(res_fail_io(n));
    }
    if statistics && o.write_ordering != n.write_ordering {
        items.extend(res_stats(n));
    }
    if promotion_info(o) != promotion_info(n) {
        items.extend(res_promotion(n));
    }
    if !items.is_empty() {
        v.push(line(ch, "resource", &resource_id(n), &items));
    }

    let find = |r: &'_ ResourceView, name: &str| -> Option<usize> {
        r.connections.iter().position(|c| c.name == name)
    };
    let new_conns = sorted_connections(n);

    // Connections.
    for c in &new_conns {
        match find(o, &c.name).map(|i| &o.connections[i]) {
            None => v.push(event_connection(EventKind::Create, n, c, statistics)),
            Some(oc) => {
                let mut items = Vec::new();
                if oc.connection_state != c.connection_state {
                    items.extend(conn_state(c));
                }
                if oc.peer_role != c.peer_role {
                    items.extend(conn_role(c));
                }
                let stats_changed = oc.congested != c.congested
                    || oc.ap_in_flight_sectors != c.ap_in_flight_sectors
                    || oc.rs_in_flight_sectors != c.rs_in_flight_sectors;
                if statistics && stats_changed {
                    items.extend(conn_stats(c, Some(oc)));
                }
                if !items.is_empty() {
                    v.push(line(ch, "connection", &connection_id(n, c), &items));
                }
            }
        }
    }

    // Device.
    let (od, nd) = (&o.device, &n.device);
    let info_changed = od.disk_state != nd.disk_state
        || od.quorum != nd.quorum
        || od.open != nd.open
        || od.client != nd.client
        || od.backing_dev != nd.backing_dev;
    let stats_changed = statistics
        && (od.size_kib != nd.size_kib
            || od.read_kib != nd.read_kib
            || od.written_kib != nd.written_kib
            || od.al_writes != nd.al_writes
            || od.bm_writes != nd.bm_writes
            || od.upper_pending != nd.upper_pending
            || od.lower_pending != nd.lower_pending
            || od.al_suspended != nd.al_suspended
            || od.blocked != nd.blocked);
    if info_changed || stats_changed {
        let mut items = Vec::new();
        if info_changed {
            items.extend(dev_info(nd));
        }
        if stats_changed {
            items.extend(dev_stats(nd, Some(od)));
        }
        v.push(line(ch, "device", &device_id(ch, n), &items));
    }

    // Per connection: peer device and paths.
    for c in &new_conns {
        let Some(oc) = find(o, &c.name).map(|i| &o.connections[i]) else {
            v.push(event_peer_device(EventKind::Create, n, c, statistics));
            for p in &c.paths {
                v.push(event_path(EventKind::Create, n, c, p));
            }
            continue;
        };
        let (op, np) = (&oc.peer_device, &c.peer_device);
        let mut items = Vec::new();
        if op.replication_state != np.replication_state {
            items.extend(pd_repl(np));
        }
        if op.peer_disk_state != np.peer_disk_state || op.peer_client != np.peer_client {
            items.extend(pd_disk(np));
        }
        if op.resync_suspended != np.resync_suspended {
            items.extend(pd_resync_susp(np));
        }
        let state_changed = !items.is_empty();
        let counters_changed = op.received_kib != np.received_kib
            || op.sent_kib != np.sent_kib
            || op.out_of_sync_kib != np.out_of_sync_kib
            || op.pending != np.pending
            || op.unacked != np.unacked
            || op.sync != np.sync;
        if state_changed || (statistics && counters_changed) {
            if counters_changed {
                items.extend(pd_stats(np, statistics));
            }
            v.push(line(ch, "peer-device", &peer_device_id(n, c), &items));
        }
        for p in &c.paths {
            let same = |q: &&PathView| q.local == p.local && q.remote == p.remote;
            match oc.paths.iter().find(same) {
                None => v.push(event_path(EventKind::Create, n, c, p)),
                Some(q) if q.established != p.established => {
                    v.push(event_path(ch, n, c, p));
                }
                Some(_) => {}
            }
        }
        for q in &oc.paths {
            if !c
                .paths
                .iter()
                .any(|p| p.local == q.local && p.remote == q.remote)
            {
                v.push(event_path(EventKind::Destroy, n, c, q));
            }
        }
    }

    // Removed connections.
    for oc in sorted_connections(o) {
        if find(n, &oc.name).is_none() {
            v.extend(destroy_connection(n, oc));
        }
    }
    v
}

// ------------------------------------------------------------------------------------------
// Refusals and failures (§7.1)
// ------------------------------------------------------------------------------------------

/// A refused state change (an SS_* code ≤ 0), as drbdsetup prints it on stderr (no newline):
/// `r0: State change failed: (-2) Need access to UpToDate data`. SS_UNKNOWN_ERROR (0) is
/// printed without the space: `r0: State change failed: (0)unknown error.`
pub fn refusal_message(object: &str, code: i32, message: &str) -> String {
    if code == 0 {
        format!("{object}: State change failed: ({code}){message}")
    } else {
        format!("{object}: State change failed: ({code}) {message}")
    }
}

/// drbdsetup's exit code for a refused state change (§7.1): 17 for -2, 5 for -16, 16 for -4,
/// otherwise 11.
pub fn refusal_exit_code(code: i32) -> i32 {
    match code {
        -2 => 17,
        -16 => 5,
        -4 => 16,
        _ => 11,
    }
}

/// A failed command (an ERR_* code, 102–176), as drbdsetup prints it (no newline):
/// `r0: Failure: (158) Unknown resource`. drbdsetup exits with 10.
pub fn failure_message(object: &str, err_code: i32, message: &str) -> String {
    format!("{object}: Failure: ({err_code}) {message}")
}

/// The line drbdadm adds when a drbdsetup child exits with code ≥ 10.
pub fn drbdadm_command_failed(argv: &str, exit_code: i32) -> String {
    format!("Command '{argv}' terminated with exit code {exit_code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn device() -> DeviceView {
        DeviceView {
            volume: 0,
            minor: 0,
            disk_state: DiskState::UpToDate,
            client: false,
            backing_dev: Some("/dev/vg0/r0".into()),
            quorum: true,
            open: true,
            size_kib: 1048412,
            read_kib: 2116,
            written_kib: 1048412,
            al_writes: 1,
            bm_writes: 0,
            upper_pending: 0,
            lower_pending: 0,
            al_suspended: false,
            blocked: Blocked::default(),
            udrbd: UdrbdDeviceExtras::default(),
        }
    }

    fn peer_device() -> PeerDeviceView {
        PeerDeviceView {
            volume: 0,
            replication_state: ReplState::Established,
            peer_disk_state: DiskState::UpToDate,
            peer_client: false,
            resync_suspended: ResyncSuspended::default(),
            received_kib: 0,
            sent_kib: 1048412,
            out_of_sync_kib: 0,
            pending: 0,
            unacked: 0,
            peer_uuid_stable: true,
            sync: None,
        }
    }

    fn connection(name: &str) -> ConnectionView {
        ConnectionView {
            name: name.into(),
            peer_node_id: 1,
            connection_state: ConnState::Connected,
            peer_role: Role::Secondary,
            tls: false,
            congested: false,
            ap_in_flight_sectors: 0,
            rs_in_flight_sectors: 0,
            paths: vec![PathView {
                local: addr("10.0.0.1:7789"),
                remote: addr("10.0.0.2:7789"),
                established: true,
            }],
            peer_device: peer_device(),
        }
    }

    /// r0 on alice: Primary, UpToDate, connected to bob (Secondary, UpToDate).
    fn r0() -> ResourceView {
        ResourceView {
            name: "r0".into(),
            node_id: 0,
            role: Role::Primary,
            suspended: Suspended::default(),
            force_io_failures: false,
            write_ordering: WriteOrdering::Flush,
            device: device(),
            connections: vec![connection("bob")],
        }
    }

    fn disconnect(c: &mut ConnectionView, state: ConnState) {
        c.connection_state = state;
        c.peer_role = Role::Unknown;
        c.peer_device.replication_state = ReplState::Off;
        c.peer_device.peer_disk_state = DiskState::DUnknown;
        c.paths[0].established = false;
    }

    /// SyncSource at done 0.04 (the §1.2 field example): 1 GiB, rs_total = size.
    fn syncing(r: &mut ResourceView, repl: ReplState, peer_disk: DiskState) {
        let p = &mut r.connections[0].peer_device;
        p.replication_state = repl;
        p.peer_disk_state = peer_disk;
        // to_go = 2096824 - 839 sectors → 0.04 %
        p.out_of_sync_kib = (2096824 - 840) / 2;
        p.sync = Some(SyncProgress {
            rs_total_sectors: 2096824,
            rs_dt_start_ms: 100,
            rs_dt0_ms: 100,
            rs_db0_sectors: 840,
            rs_dt1_ms: 100,
            rs_db1_sectors: 840,
            ..SyncProgress::default()
        });
    }

    // ---------------------------------------------------------------- §1.2 situations

    #[test]
    fn primary_connected_uptodate() {
        assert_eq!(
            status_text(&r0(), false, false, 80),
            "r0 role:Primary\n  disk:UpToDate open:yes\n  bob role:Secondary\n    peer-disk:UpToDate\n\n"
        );
    }

    #[test]
    fn sync_source_and_target_show_done() {
        // The field captures predate open:; otherwise identical.
        let mut r = r0();
        r.connections[0].name = "server2".into();
        syncing(&mut r, ReplState::SyncSource, DiskState::Inconsistent);
        assert_eq!(
            status_text(&r, false, false, 80),
            "r0 role:Primary\n  disk:UpToDate open:yes\n  server2 role:Secondary\n    replication:SyncSource peer-disk:Inconsistent done:0.04\n\n"
        );

        let mut r = r0();
        r.role = Role::Secondary;
        r.device.disk_state = DiskState::Inconsistent;
        r.device.open = false;
        r.connections[0].name = "server1".into();
        r.connections[0].peer_role = Role::Primary;
        syncing(&mut r, ReplState::SyncTarget, DiskState::UpToDate);
        assert_eq!(
            status_text(&r, false, false, 80),
            "r0 role:Secondary\n  disk:Inconsistent open:no\n  server1 role:Primary\n    replication:SyncTarget peer-disk:UpToDate done:0.04\n\n"
        );
    }

    #[test]
    fn congested_sync_source_connection() {
        let mut r = r0();
        r.role = Role::Secondary;
        let c = &mut r.connections[0];
        c.name = "m13c23".into();
        c.congested = true;
        c.rs_in_flight_sectors = 2264;
        let p = &mut c.peer_device;
        p.replication_state = ReplState::SyncSource;
        p.peer_disk_state = DiskState::Inconsistent;
        p.out_of_sync_kib = 1000;
        p.sync = Some(SyncProgress {
            rs_total_sectors: 7252,
            ..SyncProgress::default()
        });
        let text = status_text(&r, false, false, 80);
        let tail: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            tail,
            [
                "  m13c23 role:Secondary congested:yes ap-in-flight:0 rs-in-flight:2264",
                "    replication:SyncSource peer-disk:Inconsistent done:72.42",
                "",
            ]
        );
    }

    #[test]
    fn connecting_and_standalone_have_no_peer_device_line() {
        let mut r = r0();
        disconnect(&mut r.connections[0], ConnState::Connecting);
        assert_eq!(
            status_text(&r, false, false, 80),
            "r0 role:Primary\n  disk:UpToDate open:yes\n  bob connection:Connecting\n\n"
        );
        disconnect(&mut r.connections[0], ConnState::StandAlone);
        assert_eq!(
            status_text(&r, false, false, 80),
            "r0 role:Primary\n  disk:UpToDate open:yes\n  bob connection:StandAlone\n\n"
        );
    }

    #[test]
    fn diskless_primary_shows_client_when_piped_only() {
        let mut r = r0();
        r.device.disk_state = DiskState::Diskless;
        r.device.backing_dev = None;
        assert_eq!(
            status_text(&r, false, false, 80),
            "r0 role:Primary\n  disk:Diskless client:no open:yes\n  bob role:Secondary\n    peer-disk:UpToDate\n\n"
        );
        let tty = TextOptions {
            verbose: false,
            statistics: false,
            width: 80,
            is_tty: true,
        };
        assert!(status_text_with(&r, &tty).contains("  disk:Diskless open:yes\n"));

        // An intentional client, seen from its peer.
        let mut r = r0();
        r.connections[0].peer_device.peer_disk_state = DiskState::Diskless;
        r.connections[0].peer_device.peer_client = true;
        assert!(
            status_text(&r, false, false, 80)
                .contains("\n    peer-disk:Diskless peer-client:yes\n")
        );
    }

    #[test]
    fn outdated_local_and_peer() {
        let mut r = r0();
        r.role = Role::Secondary;
        r.device.disk_state = DiskState::Outdated;
        r.device.open = false;
        r.connections[0].name = "alice".into();
        disconnect(&mut r.connections[0], ConnState::Connecting);
        assert_eq!(
            status_text(&r, false, false, 80),
            "r0 role:Secondary\n  disk:Outdated open:no\n  alice connection:Connecting\n\n"
        );

        let mut r = r0();
        r.connections[0].peer_device.peer_disk_state = DiskState::Outdated;
        assert!(status_text(&r, false, false, 80).ends_with("\n    peer-disk:Outdated\n\n"));
        r.connections[0].peer_device.replication_state = ReplState::WFBitMapS;
        assert!(
            status_text(&r, false, false, 80)
                .ends_with("\n    replication:WFBitMapS peer-disk:Outdated\n\n")
        );
    }

    #[test]
    fn quorum_lost_and_suspended() {
        let mut r = r0();
        r.device.quorum = false;
        r.suspended.quorum = true;
        let text = status_text(&r, false, false, 80);
        assert!(
            text.starts_with(
                "r0 role:Primary suspended:quorum\n  disk:UpToDate quorum:no open:yes\n"
            )
        );
        r.suspended.user = true;
        r.suspended.no_data = true;
        assert!(
            status_text(&r, false, false, 80)
                .starts_with("r0 role:Primary suspended:user,no-data,quorum\n")
        );
    }

    // ---------------------------------------------------------------- §1.3 verbose + statistics

    const VERBOSE_STATS: &str = "\
r0 node-id:0 role:Primary suspended:no force-io-failures:no
    write-ordering:flush
  volume:0 minor:0 disk:UpToDate backing_dev:/dev/vg0/r0 quorum:yes open:yes
      size:1048412 read:2116 written:1048412 al-writes:1 bm-writes:0 upper-pending:0
      lower-pending:0 al-suspended:no blocked:no
  bob node-id:1 connection:Connected role:Secondary tls:no congested:no
      ap-in-flight:0 rs-in-flight:0
    volume:0 replication:Established peer-disk:UpToDate resync-suspended:no
        received:0 sent:1048412 out-of-sync:0 pending:0 unacked:0

";

    #[test]
    fn verbose_statistics_example_byte_for_byte() {
        assert_eq!(status_text(&r0(), true, true, 80), VERBOSE_STATS);
    }

    #[test]
    fn verbose_statistics_during_resync() {
        let mut r = r0();
        let p = &mut r.connections[0].peer_device;
        p.replication_state = ReplState::SyncSource;
        p.peer_disk_state = DiskState::Inconsistent;
        p.sent_kib = 393216;
        p.out_of_sync_kib = 655196;
        p.sync = Some(SyncProgress {
            // rs-total is not shown in the text; this value gives the example's done:37.50.
            rs_total_sectors: 2096627,
            rs_dt1_ms: 3000,
            rs_db1_sectors: 629146,
            ..SyncProgress::default()
        });
        let text = status_text(&r, true, true, 80);
        assert!(
            text.ends_with(
                "\n    volume:0 replication:SyncSource peer-disk:Inconsistent done:37.50
        resync-suspended:no
        received:0 sent:393216 out-of-sync:655196 pending:0 unacked:0 dbdt1:102.40 eta:6

"
            ),
            "{text}"
        );
    }

    #[test]
    fn statistics_without_verbose() {
        let mut r = r0();
        r.connections[0].peer_device.out_of_sync_kib = 4;
        assert_eq!(
            status_text(&r, false, true, 80),
            "r0 role:Primary\n  disk:UpToDate open:yes\n      read:2116 written:1048412\n  bob role:Secondary\n    peer-disk:UpToDate\n        received:0 sent:1048412 out-of-sync:4\n\n"
        );
        // Not connected: --statistics still prints the peer-device line.
        disconnect(&mut r.connections[0], ConnState::Connecting);
        assert!(status_text(&r, false, true, 80).ends_with(
            "  bob connection:Connecting\n    peer-disk:DUnknown\n        received:0 sent:1048412 out-of-sync:4\n\n"
        ));
    }

    #[test]
    fn eta_is_nan_before_any_progress() {
        let mut r = r0();
        syncing(&mut r, ReplState::SyncSource, DiskState::Inconsistent);
        let s = r.connections[0].peer_device.sync.as_mut().unwrap();
        s.rs_db1_sectors = 0;
        assert!(status_text(&r, true, true, 200).contains(" dbdt1:0.00 eta:nan\n"));
    }

    #[test]
    fn blocked_and_udrbd_extras() {
        let mut r = r0();
        r.device.blocked.upper = true;
        let text = status_text(&r, false, false, 80);
        assert!(
            text.contains("\n  disk:UpToDate open:yes blocked:upper\n"),
            "{text}"
        );
        assert!(!text.contains("udrbd"));
        r.device.udrbd.stuck_ios = Some(3);
        r.device.udrbd.disk_failure_reason = Some("read error".into());
        let text = status_text(&r, false, false, 200);
        assert!(
            text.contains(
                " open:yes udrbd-stuck-ios:3 udrbd-disk-failure-reason:read_error blocked:upper\n"
            ),
            "{text}"
        );
        let json = status_json(&[r.clone()]);
        assert!(json.contains(
            "      \"lower-pending\": 0,\n      \"udrbd-stuck-ios\": 3,\n      \"udrbd-disk-failure-reason\": \"read error\"\n    } ],\n"
        ));
        r.device.udrbd.io_errors = Some(2);
        r.device.udrbd.served_by_peer = true;
        r.device.udrbd.detach_step = Some("writing-bitmap".into());
        let text = status_text(&r, false, false, 200);
        assert!(
            text.contains(
                " udrbd-disk-failure-reason:read_error udrbd-io-errors:2 udrbd-served-by-peer:yes udrbd-detach:writing-bitmap"
            ),
            "{text}"
        );
        let json = status_json(&[r]);
        assert!(json.contains(
            "\"udrbd-io-errors\": 2,\n      \"udrbd-served-by-peer\": true,\n      \"udrbd-detach\": \"writing-bitmap\"\n"
        ), "{json}");
    }

    // ---------------------------------------------------------------- wrapping, empty, sorting

    #[test]
    fn wraps_long_names_at_80_columns() {
        let mut r = r0();
        r.name = "a".repeat(70);
        disconnect(&mut r.connections[0], ConnState::Connecting);
        r.connections[0].name = "b".repeat(60);
        let text = status_text(&r, false, false, 80);
        assert_eq!(
            text,
            format!(
                "{}\n    role:Primary\n  disk:UpToDate open:yes\n  {}\n      connection:Connecting\n\n",
                "a".repeat(70),
                "b".repeat(60)
            )
        );
        // 67 + " role:Primary" ends at column 80 exactly: no wrap (the counter starts at -1).
        r.name = "a".repeat(68);
        assert!(
            status_text(&r, false, false, 80)
                .starts_with(&format!("{} role:Primary\n", "a".repeat(68)))
        );
        r.name = "a".repeat(69);
        assert!(
            status_text(&r, false, false, 80)
                .starts_with(&format!("{}\n    role:Primary\n", "a".repeat(69)))
        );
    }

    #[test]
    fn wrapped_lines_may_exceed_the_width() {
        // The statistics line of the verbose example is 84 columns wide.
        let longest = VERBOSE_STATS.lines().map(str::len).max().unwrap();
        assert_eq!(longest, 84);
        // Wider terminal: no wrapping at all.
        let wide = status_text(&r0(), true, true, 200);
        assert!(wide.contains(" upper-pending:0 lower-pending:0 al-suspended:no blocked:no\n"));
        assert!(wide.contains(" congested:no ap-in-flight:0 rs-in-flight:0\n"));
        // Width 0 means 80.
        assert_eq!(status_text(&r0(), true, true, 0), VERBOSE_STATS);
    }

    #[test]
    fn one_character_name_quirk() {
        // wrap_printf's counter is back at 0 after a 1-byte first item: the next item is
        // printed like the start of a line (indent, no leading space).
        let mut r = r0();
        r.name = "a".into();
        assert!(status_text(&r, false, false, 80).starts_with("a    role:Primary\n"));
    }

    #[test]
    fn empty_and_sorted() {
        assert_eq!(
            status_text_all(&[], false, false, 80),
            "# No currently configured DRBD found.\n"
        );
        let mut r1 = r0();
        r1.name = "r1".into();
        let all = status_text_all(&[r1, r0()], false, false, 80);
        assert!(all.starts_with("r0 role:Primary\n"));
        assert!(all.contains("\n\nr1 role:Primary\n"));
        assert!(all.ends_with("peer-disk:UpToDate\n\n"));
        assert_eq!(status_json(&[]), "[\n]\n\n");
    }

    // ---------------------------------------------------------------- §2.2 JSON

    const JSON_EXAMPLE: &str = r#"[
{
  "name": "r0",
  "node-id": 0,
  "role": "Primary",
  "suspended": false,
  "suspended-user": false,
  "suspended-no-data": false,
  "suspended-fencing": false,
  "suspended-quorum": false,
  "force-io-failures": false,
  "write-ordering": "flush",
  "devices": [
    {
      "volume": 0,
      "minor": 0,
      "disk-state": "UpToDate",
      "client": false,
      "open": true,
      "quorum": true,
      "size": 1048412,
      "read": 2116,
      "written": 1048412,
      "al-writes": 1,
      "bm-writes": 0,
      "upper-pending": 0,
      "lower-pending": 0
    } ],
  "connections": [
    {
      "peer-node-id": 1,
      "name": "bob",
      "connection-state": "Connected", 
      "congested": false,
      "peer-role": "Secondary",
      "tls": false,
      "ap-in-flight": 0,
      "rs-in-flight": 0,
      "paths": [
        {
          "this_host": {
            "address": "10.0.0.1",
            "port": 7789,
            "family": "ipv4"
          },
          "remote_host": {
            "address": "10.0.0.2",
            "port": 7789,
            "family": "ipv4"
          },
          "established": true
        } ],
      "peer_devices": [
        {
          "volume": 0,
          "replication-state": "Established",
          "peer-disk-state": "UpToDate",
          "peer-client": false,
          "resync-suspended": "no",
          "received": 0,
          "sent": 1048412,
          "out-of-sync": 0,
          "pending": 0,
          "unacked": 0,
          "has-sync-details": false,
          "has-online-verify-details": false,
          "percent-in-sync": 100.00
        } ]
    } ]
}
]

"#;

    #[test]
    fn json_example_byte_for_byte() {
        assert_eq!(status_json(&[r0()]), JSON_EXAMPLE);
    }

    #[test]
    fn json_resync_block() {
        let mut r = r0();
        let p = &mut r.connections[0].peer_device;
        p.replication_state = ReplState::SyncSource;
        p.peer_disk_state = DiskState::Inconsistent;
        p.out_of_sync_kib = 655196;
        p.sync = Some(SyncProgress {
            rs_total_sectors: 2096824,
            rs_dt_start_ms: 4012,
            rs_paused_ms: 0,
            rs_dt0_ms: 4012,
            rs_db0_sectors: 786432,
            rs_dt1_ms: 3004,
            rs_db1_sectors: 629146,
            ..SyncProgress::default()
        });
        // The doc's snippet has the same keys; its rates (95.72, 102.28) and percentages
        // (37.50) do not follow from its own counters, these do.
        let json = status_json(&[r]);
        assert!(
            json.contains(
                r#"          "has-sync-details": true,
          "has-online-verify-details": false,
          "percent-in-sync": 37.51,
          "rs-total": 2096824,
          "rs-dt-start-ms": 4012,
          "rs-paused-ms": 0,
          "rs-dt0-ms": 4012,
          "rs-db0-sectors": 786432,
          "rs-dt1-ms": 3004,
          "rs-db1-sectors": 629146,
          "rs-failed": 0,
          "rs-same-csum": 0,
          "want": 0.00,
          "db0/dt0 [MiB/s]": 95.71,
          "db1/dt1 [MiB/s]": 102.26,
          "estimated-seconds-to-finish": 6,
          "db/dt [MiB/s]": 95.71,
          "percent-resync-done": 37.51
        } ]
    } ]
}
]
"#
            ),
            "{json}"
        );
    }

    #[test]
    fn json_verify_and_no_rate_and_no_details() {
        let mut r = r0();
        let p = &mut r.connections[0].peer_device;
        p.replication_state = ReplState::VerifyS;
        p.sync = Some(SyncProgress {
            rs_total_sectors: 1000,
            verify: Some(VerifyProgress {
                ov_start_sector: 0,
                ov_stop_sector: 1000,
                ov_position: 250,
                ov_left: 750,
                ov_skipped: 0,
            }),
            ..SyncProgress::default()
        });
        let json = status_json(std::slice::from_ref(&r));
        assert!(json.contains("\"has-online-verify-details\": true,"));
        assert!(
            json.contains("\"ov-left\": 750,\n          \"ov-skipped\": 0,\n          \"want\"")
        );
        assert!(json.contains("\"estimated-seconds-to-finish\": 987654321,"));
        assert!(json.contains("\"percent-resync-done\": 25.00\n"));
        assert!(
            status_text(&r, false, false, 80)
                .contains(" replication:VerifyS peer-disk:UpToDate done:25.00\n")
        );

        // A resync without details: percent-resync-done from out-of-sync/size.
        let p = &mut r.connections[0].peer_device;
        p.replication_state = ReplState::SyncTarget;
        p.sync = None;
        p.out_of_sync_kib = 1048412 / 4;
        let json = status_json(&[r]);
        assert!(
            json.contains(
                "\"percent-in-sync\": 75.00,\n          \"percent-resync-done\": 75.00\n"
            )
        );
    }

    #[test]
    fn json_two_resources_no_connection() {
        let mut a = r0();
        a.connections.clear();
        let mut b = a.clone();
        b.name = "r1".into();
        let json = status_json(&[b, a]);
        assert!(
            json.contains("    } ],\n  \"connections\": [\n ]\n}\n,\n{\n  \"name\": \"r1\",\n")
        );
        assert!(json.starts_with("[\n{\n  \"name\": \"r0\",\n"));
        assert!(json.ends_with(" ]\n}\n]\n\n"));
    }

    // ---------------------------------------------------------------- §3 events2

    /// some-resource of events2-all-create-change.test, at its first `create` lines.
    fn some_resource() -> ResourceView {
        let mut r = r0();
        r.name = "some-resource".into();
        r.role = Role::Secondary;
        r.write_ordering = WriteOrdering::None;
        r.device = DeviceView {
            minor: 1000,
            disk_state: DiskState::Diskless,
            backing_dev: None,
            open: false,
            size_kib: 5,
            read_kib: 10,
            written_kib: 15,
            al_writes: 40,
            bm_writes: 50,
            upper_pending: 60,
            lower_pending: 70,
            ..device()
        };
        let c = &mut r.connections[0];
        c.name = "some-peer".into();
        disconnect(c, ConnState::StandAlone);
        c.ap_in_flight_sectors = 10;
        c.rs_in_flight_sectors = 20;
        c.paths = vec![PathView {
            local: addr("1.2.3.4:7789"),
            remote: addr("5.6.7.8:7790"),
            established: false,
        }];
        let p = &mut c.peer_device;
        p.received_kib = 5;
        p.sent_kib = 10;
        p.pending = 30;
        p.unacked = 40;
        r
    }

    #[test]
    fn events2_create_lines_golden() {
        let r = some_resource();
        let c = &r.connections[0];
        let k = EventKind::Create;
        assert_eq!(
            event_resource(k, &r, false),
            "create resource name:some-resource role:Secondary suspended:no force-io-failures:no may_promote:no promotion_score:0"
        );
        assert_eq!(
            event_device(k, &r, false),
            "create device name:some-resource volume:0 minor:1000 backing_dev:none disk:Diskless client:no open:no quorum:yes"
        );
        assert_eq!(
            event_connection(k, &r, c, false),
            "create connection name:some-resource peer-node-id:1 conn-name:some-peer connection:StandAlone role:Unknown"
        );
        assert_eq!(
            event_peer_device(k, &r, c, false),
            "create peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0 replication:Off peer-disk:DUnknown peer-client:no resync-suspended:no"
        );
        assert_eq!(
            event_path(k, &r, c, &c.paths[0]),
            "create path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790 established:no"
        );
    }

    #[test]
    fn events2_create_lines_with_statistics_golden() {
        let r = some_resource();
        let c = &r.connections[0];
        let k = EventKind::Create;
        assert_eq!(
            event_resource(k, &r, true),
            "create resource name:some-resource role:Secondary suspended:no force-io-failures:no write-ordering:none may_promote:no promotion_score:0"
        );
        assert_eq!(
            event_device(k, &r, true),
            "create device name:some-resource volume:0 minor:1000 backing_dev:none disk:Diskless client:no open:no quorum:yes size:5 read:10 written:15 al-writes:40 bm-writes:50 upper-pending:60 lower-pending:70 al-suspended:no blocked:no"
        );
        assert_eq!(
            event_connection(k, &r, c, true),
            "create connection name:some-resource peer-node-id:1 conn-name:some-peer connection:StandAlone role:Unknown congested:no ap-in-flight:10 rs-in-flight:20"
        );
        assert_eq!(
            event_peer_device(k, &r, c, true),
            "create peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0 replication:Off peer-disk:DUnknown peer-client:no resync-suspended:no received:5 sent:10 out-of-sync:0 pending:30 unacked:40"
        );
    }

    #[test]
    fn events2_change_sequence_golden() {
        let s1 = some_resource();
        // attach: UpToDate on /dev/sda
        let mut s2 = s1.clone();
        s2.device.disk_state = DiskState::UpToDate;
        s2.device.backing_dev = Some("/dev/sda".into());
        assert_eq!(
            events2_changes(Some(&s1), Some(&s2), false),
            [
                "change resource name:some-resource may_promote:yes promotion_score:10101",
                "change device name:some-resource volume:0 minor:1000 backing_dev:/dev/sda disk:UpToDate client:no open:no quorum:yes",
            ]
        );
        let mut s3 = s2.clone();
        s3.connections[0].paths[0].established = true;
        assert_eq!(
            events2_changes(Some(&s2), Some(&s3), false),
            [
                "change path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790 established:yes"
            ]
        );
        let mut s4 = s3.clone();
        s4.connections[0].connection_state = ConnState::Connected;
        s4.connections[0].peer_role = Role::Secondary;
        assert_eq!(
            events2_changes(Some(&s3), Some(&s4), false),
            [
                "change connection name:some-resource peer-node-id:1 conn-name:some-peer connection:Connected role:Secondary"
            ]
        );
        let mut s5 = s4.clone();
        s5.connections[0].peer_device.replication_state = ReplState::Established;
        s5.connections[0].peer_device.peer_disk_state = DiskState::UpToDate;
        assert_eq!(
            events2_changes(Some(&s4), Some(&s5), false),
            [
                "change resource name:some-resource may_promote:yes promotion_score:10102",
                "change peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0 replication:Established peer-disk:UpToDate peer-client:no",
            ]
        );
        let mut s6 = s5.clone();
        s6.role = Role::Primary;
        assert_eq!(
            events2_changes(Some(&s5), Some(&s6), false),
            [
                "change resource name:some-resource role:Primary may_promote:no promotion_score:10102"
            ]
        );
        assert!(events2_changes(Some(&s6), Some(&s6), true).is_empty());

        // The sync golden (events2-sync.test), plain and with --statistics.
        let mut s7 = s5.clone();
        let p = &mut s7.connections[0].peer_device;
        p.replication_state = ReplState::SyncSource;
        p.peer_disk_state = DiskState::Inconsistent;
        p.out_of_sync_kib = 2500;
        p.sync = Some(SyncProgress {
            rs_total_sectors: 8000,
            rs_dt1_ms: 1000,
            rs_db1_sectors: 500,
            ..SyncProgress::default()
        });
        let pd = |v: Vec<String>| v.into_iter().find(|l| l.contains("peer-device")).unwrap();
        assert_eq!(
            pd(events2_changes(Some(&s5), Some(&s7), false)),
            "change peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0 replication:SyncSource peer-disk:Inconsistent peer-client:no done:37.50"
        );
        assert_eq!(
            pd(events2_changes(Some(&s5), Some(&s7), true)),
            "change peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0 replication:SyncSource peer-disk:Inconsistent peer-client:no done:37.50 received:5 sent:10 out-of-sync:2500 pending:30 unacked:40 dbdt1:0.24 eta:10"
        );
    }

    #[test]
    fn promotion_scores_golden() {
        let mut r = some_resource();
        r.connections.clear();
        r.device.disk_state = DiskState::UpToDate;
        assert_eq!(promotion_info(&r), (true, 10101));
        let mut r = r0();
        r.role = Role::Secondary;
        assert_eq!(promotion_info(&r), (true, 10102));
        r.device.disk_state = DiskState::Inconsistent;
        assert_eq!(promotion_info(&r), (true, 10001));
        r.connections[0].peer_device.peer_uuid_stable = false;
        assert_eq!(promotion_info(&r), (false, 10001));
        r.device.disk_state = DiskState::Diskless;
        r.connections[0].peer_device.peer_uuid_stable = true;
        assert_eq!(promotion_info(&r), (true, 1));
        r.connections[0].peer_role = Role::Primary;
        assert_eq!(promotion_info(&r), (false, 1));
        r.device.quorum = false;
        assert_eq!(promotion_info(&r), (false, 0));
    }

    #[test]
    fn events2_destroy_golden() {
        let r = some_resource();
        assert_eq!(
            events2_changes(Some(&r), None, false),
            [
                "destroy path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790",
                "destroy peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0",
                "destroy connection name:some-resource peer-node-id:1 conn-name:some-peer",
                "destroy device name:some-resource volume:0",
                "destroy resource name:some-resource",
            ]
        );
        let mut no_peer = r.clone();
        no_peer.connections.clear();
        assert_eq!(
            events2_changes(Some(&r), Some(&no_peer), false),
            [
                "destroy path name:some-resource peer-node-id:1 conn-name:some-peer local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790",
                "destroy peer-device name:some-resource peer-node-id:1 conn-name:some-peer volume:0",
                "destroy connection name:some-resource peer-node-id:1 conn-name:some-peer",
            ]
        );
        let created = events2_changes(Some(&no_peer), Some(&r), false);
        assert_eq!(created.len(), 3);
        assert!(created[0].starts_with("create connection "));
        assert!(created[1].starts_with("create peer-device "));
        assert!(created[2].starts_with("create path "));
    }

    #[test]
    fn events2_helper_golden() {
        let mut h = HelperEvent {
            resource: "some-resource",
            peer: Some((1, "some-peer")),
            volume: Some(0),
            minor: None,
            helper: "before-resync-target",
            status: None,
        };
        assert_eq!(
            event_helper(&h),
            "call helper name:some-resource peer-node-id:1 conn-name:some-peer volume:0 helper:before-resync-target"
        );
        h.status = Some(1);
        assert_eq!(
            event_helper(&h),
            "response helper name:some-resource peer-node-id:1 conn-name:some-peer volume:0 helper:before-resync-target status:1"
        );
    }

    #[test]
    fn events2_now_dump() {
        let mut r = r0();
        r.role = Role::Secondary;
        r.device.minor = 7;
        r.connections[0].name = "remote-host".into();
        assert_eq!(
            events2_now(&r, false),
            [
                "exists resource name:r0 role:Secondary suspended:no force-io-failures:no may_promote:yes promotion_score:10102",
                "exists connection name:r0 peer-node-id:1 conn-name:remote-host connection:Connected role:Secondary",
                "exists device name:r0 volume:0 minor:7 backing_dev:/dev/vg0/r0 disk:UpToDate client:no open:yes quorum:yes",
                "exists peer-device name:r0 peer-node-id:1 conn-name:remote-host volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no",
                "exists path name:r0 peer-node-id:1 conn-name:remote-host local:ipv4:10.0.0.1:7789 peer:ipv4:10.0.0.2:7789 established:yes",
                "exists -",
            ]
        );
        assert_eq!(events2_now_all(&[], true), ["exists -"]);
        let v6 = PathView {
            local: addr("[fd00::1]:7789"),
            remote: addr("[fd00::2]:7789"),
            established: false,
        };
        assert!(
            event_path(EventKind::Destroy, &r, &r.connections[0], &v6)
                .ends_with(" local:ipv6:[fd00::1]:7789 peer:ipv6:[fd00::2]:7789")
        );
    }

    // ---------------------------------------------------------------- §7.1

    #[test]
    fn refusals_and_failures() {
        assert_eq!(
            refusal_message("r0", -1, "Multiple primaries not allowed by config"),
            "r0: State change failed: (-1) Multiple primaries not allowed by config"
        );
        assert_eq!(
            refusal_message("0", -2, "Need access to UpToDate data"),
            "0: State change failed: (-2) Need access to UpToDate data"
        );
        assert_eq!(
            refusal_message("r0", 0, "unknown error."),
            "r0: State change failed: (0)unknown error."
        );
        assert_eq!(
            failure_message("r0", 158, "Unknown resource"),
            "r0: Failure: (158) Unknown resource"
        );
        assert_eq!(
            [-2, -16, -4, -1, -12, 0].map(refusal_exit_code),
            [17, 5, 16, 11, 11, 11]
        );
        assert_eq!(
            drbdadm_command_failed("drbdsetup primary r0", 11),
            "Command 'drbdsetup primary r0' terminated with exit code 11"
        );
    }
}
