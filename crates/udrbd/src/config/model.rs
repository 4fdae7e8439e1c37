//! Typed, effective options: what the rest of udrbd reads after
//! [`super::Config::resource_for_node`].
//!
//! Units: times are [`Duration`]s (an option given in 0.1 s, like `timeout 60`, becomes 6 s);
//! sizes and rates are integers whose field name ends in the unit (`_bytes`, `_sectors`,
//! `_kib_per_sec`); counts are plain integers. Every `Default` is DRBD 8.4's compiled default
//! (drbd_limits.h), and a unit test checks it against the table in `options`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// An enumerated option value spelled as a DRBD word.
pub trait WordEnum: Sized + Default {
    /// The DRBD spellings, in declaration order.
    const WORDS: &'static [&'static str];
    fn from_word(word: &str) -> Option<Self>;
    fn as_word(&self) -> &'static str;
}

/// Declares an enum of DRBD words with its [`WordEnum`] impl, `Default` and `Display`.
macro_rules! word_enum {
    (
        $(#[$meta:meta])*
        $name:ident (default $default:ident) {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl WordEnum for $name {
            const WORDS: &'static [&'static str] = &[$($word),+];
            fn from_word(word: &str) -> Option<Self> {
                match word {
                    $($word => Some(Self::$variant),)+
                    _ => None,
                }
            }
            fn as_word(&self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)+
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_word())
            }
        }
    };
}

word_enum! {
    /// `net { protocol }`: when a write counts as completed.
    Protocol (default C) {
        /// Written locally and sent.
        A = "A",
        /// Written locally and received by the peer.
        B = "B",
        /// Written locally and on the peer's disk.
        C = "C",
    }
}

word_enum! {
    /// `net { after-sb-1pri }`: split-brain recovery with one Primary.
    AfterSb1pri (default Disconnect) {
        Disconnect = "disconnect",
        Consensus = "consensus",
        ViolentlyAs0p = "violently-as0p",
        DiscardSecondary = "discard-secondary",
        CallPriLostAfterSb = "call-pri-lost-after-sb",
    }
}

word_enum! {
    /// `net { after-sb-2pri }`: split-brain recovery with two Primaries.
    AfterSb2pri (default Disconnect) {
        Disconnect = "disconnect",
        ViolentlyAs0p = "violently-as0p",
        CallPriLostAfterSb = "call-pri-lost-after-sb",
    }
}

word_enum! {
    /// `net { rr-conflict }`: a resync would make a Primary a SyncTarget.
    RrConflict (default Disconnect) {
        Disconnect = "disconnect",
        Violently = "violently",
        CallPriLost = "call-pri-lost",
    }
}

word_enum! {
    /// `net { on-congestion }`: the send buffer is full (protocol A).
    OnCongestion (default Block) {
        Block = "block",
        PullAhead = "pull-ahead",
        Disconnect = "disconnect",
    }
}

word_enum! {
    /// `disk { on-io-error }`.
    OnIoError (default Detach) {
        PassOn = "pass_on",
        CallLocalIoError = "call-local-io-error",
        Detach = "detach",
    }
}

word_enum! {
    /// `disk { fencing }`.
    Fencing (default DontCare) {
        DontCare = "dont-care",
        ResourceOnly = "resource-only",
        ResourceAndStonith = "resource-and-stonith",
    }
}

word_enum! {
    /// `disk { read-balancing }`.
    ReadBalancing (default PreferLocal) {
        PreferLocal = "prefer-local",
        PreferRemote = "prefer-remote",
        RoundRobin = "round-robin",
        LeastPending = "least-pending",
        WhenCongestedRemote = "when-congested-remote",
        Striping32K = "32K-striping",
        Striping64K = "64K-striping",
        Striping128K = "128K-striping",
        Striping256K = "256K-striping",
        Striping512K = "512K-striping",
        Striping1M = "1M-striping",
    }
}

word_enum! {
    /// `options { on-no-data-accessible }`.
    OnNoDataAccessible (default IoError) {
        IoError = "io-error",
        SuspendIo = "suspend-io",
    }
}

word_enum! {
    /// `global { usage-count }` (accepted and ignored: udrbd reports nothing).
    UsageCount (default Ask) {
        Yes = "yes",
        No = "no",
        Ask = "ask",
    }
}

/// `net { after-sb-0pri }`: split-brain recovery with no Primary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum AfterSb0pri {
    #[default]
    Disconnect,
    DiscardYoungerPrimary,
    DiscardOlderPrimary,
    DiscardZeroChanges,
    DiscardLeastChanges,
    DiscardLocal,
    DiscardRemote,
    /// `discard-node-NAME` as written. The resolver turns it into `DiscardLocal` or
    /// `DiscardRemote` (as drbdadm does), so a resolved resource never holds it.
    DiscardNode(String),
}

impl AfterSb0pri {
    /// The fixed spellings; `discard-node-NAME` comes on top.
    pub const WORDS: &'static [&'static str] = &[
        "disconnect",
        "discard-younger-primary",
        "discard-older-primary",
        "discard-zero-changes",
        "discard-least-changes",
        "discard-local",
        "discard-remote",
    ];
    const DISCARD_NODE: &'static str = "discard-node-";

    pub fn from_word(word: &str) -> Option<Self> {
        let fixed = match word {
            "disconnect" => Self::Disconnect,
            "discard-younger-primary" => Self::DiscardYoungerPrimary,
            "discard-older-primary" => Self::DiscardOlderPrimary,
            "discard-zero-changes" => Self::DiscardZeroChanges,
            "discard-least-changes" => Self::DiscardLeastChanges,
            "discard-local" => Self::DiscardLocal,
            "discard-remote" => Self::DiscardRemote,
            _ => {
                let node = word.strip_prefix(Self::DISCARD_NODE)?;
                return (!node.is_empty()).then(|| Self::DiscardNode(node.to_owned()));
            }
        };
        Some(fixed)
    }
}

/// `net { }`, effective. Hash names and the secret are `None` when not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    pub protocol: Protocol,
    pub cram_hmac_alg: Option<String>,
    pub shared_secret: Option<String>,
    pub allow_two_primaries: bool,
    pub after_sb_0pri: AfterSb0pri,
    pub after_sb_1pri: AfterSb1pri,
    pub after_sb_2pri: AfterSb2pri,
    pub always_asbp: bool,
    pub rr_conflict: RrConflict,
    /// Given in 0.1 s.
    pub timeout: Duration,
    pub connect_int: Duration,
    pub ping_int: Duration,
    /// Given in 0.1 s.
    pub ping_timeout: Duration,
    /// Given in 0.1 s; zero means "use ping-timeout".
    pub socket_check_timeout: Duration,
    /// Zero means off.
    pub ko_count: u32,
    /// In pages (4 KiB).
    pub max_buffers: u32,
    pub max_epoch_size: u32,
    /// Zero means autotune.
    pub sndbuf_size_bytes: u64,
    /// Zero means autotune.
    pub rcvbuf_size_bytes: u64,
    pub unplug_watermark: u32,
    pub csums_alg: Option<String>,
    pub verify_alg: Option<String>,
    pub data_integrity_alg: Option<String>,
    pub use_rle: bool,
    pub tcp_cork: bool,
    pub on_congestion: OnCongestion,
    pub congestion_fill_sectors: u64,
    pub congestion_extents: u32,
    pub csums_after_crash_only: bool,
    /// udrbd's own: the TCP congestion control of the peer sockets (`None`: the system's).
    pub tcp_congestion: Option<String>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            protocol: Protocol::C,
            cram_hmac_alg: None,
            shared_secret: None,
            allow_two_primaries: false,
            after_sb_0pri: AfterSb0pri::Disconnect,
            after_sb_1pri: AfterSb1pri::Disconnect,
            after_sb_2pri: AfterSb2pri::Disconnect,
            always_asbp: false,
            rr_conflict: RrConflict::Disconnect,
            timeout: Duration::from_secs(6),
            connect_int: Duration::from_secs(10),
            ping_int: Duration::from_secs(10),
            ping_timeout: Duration::from_millis(500),
            socket_check_timeout: Duration::ZERO,
            ko_count: 7,
            max_buffers: 2048,
            max_epoch_size: 2048,
            sndbuf_size_bytes: 0,
            rcvbuf_size_bytes: 0,
            unplug_watermark: 128,
            csums_alg: None,
            verify_alg: None,
            data_integrity_alg: None,
            use_rle: true,
            tcp_cork: true,
            on_congestion: OnCongestion::Block,
            congestion_fill_sectors: 0,
            congestion_extents: 1237,
            csums_after_crash_only: false,
            tcp_congestion: None,
        }
    }
}

/// `disk { }`, effective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    pub on_io_error: OnIoError,
    pub fencing: Fencing,
    /// Given in 0.1 s; zero means off.
    pub disk_timeout: Duration,
    pub al_extents: u32,
    pub al_updates: bool,
    pub resync_rate_kib_per_sec: u32,
    /// The resource (or minor) to resync after; `None` = -1 in DRBD.
    pub resync_after: Option<String>,
    /// Given in 0.1 s; zero means fixed-rate resync.
    pub c_plan_ahead: Duration,
    pub c_fill_target_sectors: u64,
    /// Given in 0.1 s.
    pub c_delay_target: Duration,
    pub c_max_rate_kib_per_sec: u32,
    /// Zero means never throttle resync for application IO.
    pub c_min_rate_kib_per_sec: u32,
    pub disk_barrier: bool,
    pub disk_flushes: bool,
    pub disk_drain: bool,
    pub md_flushes: bool,
    pub read_balancing: ReadBalancing,
    /// Zero means the whole backing device.
    pub size_sectors: u64,
    pub max_bio_bvecs: u32,
    pub discard_zeroes_if_aligned: bool,
    pub disable_write_same: bool,
    pub rs_discard_granularity_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            on_io_error: OnIoError::Detach,
            fencing: Fencing::DontCare,
            disk_timeout: Duration::ZERO,
            al_extents: 1237,
            al_updates: true,
            resync_rate_kib_per_sec: 250,
            resync_after: None,
            c_plan_ahead: Duration::from_secs(2),
            c_fill_target_sectors: 100,
            c_delay_target: Duration::from_secs(1),
            c_max_rate_kib_per_sec: 102_400,
            c_min_rate_kib_per_sec: 250,
            disk_barrier: false,
            disk_flushes: true,
            disk_drain: true,
            md_flushes: true,
            read_balancing: ReadBalancing::PreferLocal,
            size_sectors: 0,
            max_bio_bvecs: 0,
            discard_zeroes_if_aligned: true,
            disable_write_same: false,
            rs_discard_granularity_bytes: 0,
        }
    }
}

/// `startup { }`, effective. A zero timeout means "wait forever".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupOptions {
    pub wfc_timeout: Duration,
    pub degr_wfc_timeout: Duration,
    pub outdated_wfc_timeout: Duration,
    pub wait_after_sb: bool,
    /// A host name or `both`.
    pub become_primary_on: Option<String>,
    pub stacked_timeouts: bool,
}

/// `options { }` (resource options), effective.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceOptions {
    /// A hex CPU mask as written.
    pub cpu_mask: Option<String>,
    pub on_no_data_accessible: OnNoDataAccessible,
}

/// `handlers { NAME "command"; }`: handler name (DRBD's, e.g. `fence-peer`) to shell command.
/// `outdate-peer`, the old name of `fence-peer`, is stored as `fence-peer`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Handlers {
    pub commands: BTreeMap<String, String>,
}

impl Handlers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.commands.get(name).map(String::as_str)
    }
}

/// `nbd { listen ADDR:PORT; }`: udrbd's own section, the NBD TCP listen address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NbdOptions {
    /// `None`: only the unix socket in the run-dir.
    pub listen: Option<SocketAddr>,
}

/// All option sections of a resource, effective (defaults, then `common`, then the resource).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EffectiveOptions {
    pub net: NetOptions,
    pub disk: DiskOptions,
    pub startup: StartupOptions,
    pub resource: ResourceOptions,
    pub handlers: Handlers,
    pub nbd: NbdOptions,
}
