//! Roles, disk states (re-exported from the wire codec), and why a state change is refused (DRBD's SS_* and ERR_* codes,
//! drbd-ops-formats.md §7), with their exact messages.

/// Roles and disk states are the wire's (P_STATE values, DRBD's names): one definition.
pub use udrbd_wire::state::{ConnState, DiskState, Role};

/// DRBD's SS_* refusal codes used by udrbd, with their messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateChangeError {
    /// -2: promoting without UpToDate data.
    NoUpToDateDisk,
    /// -11: the operation requires a disk.
    IsDiskless,
    /// -12: demoting or taking down while the device is open.
    DeviceInUse,
    /// -18: another state change is in progress.
    InTransientState,
    /// 0: the peer refused without a reason.
    Unknown,
    /// -1: only one Primary is allowed (no allow-two-primaries).
    TwoPrimaries,
    /// -4: a resync needs a local disk.
    NoLocalDisk,
    /// -5: a resync needs the peer's disk.
    NoRemoteDisk,
    /// -6: refusing to be Outdated while Connected.
    ConnectedOutdates,
    /// -8: a resync is already running.
    ResyncRunning,
    /// -9: already StandAlone.
    AlreadyStandAlone,
    /// -10: the peer refused the state change.
    FailedByPeer,
    /// -13: the command needs a net configuration.
    NoNetConfig,
    /// -14: online verify needs a verify-alg.
    NoVerifyAlg,
    /// -15: the command needs a connection.
    NeedConnection,
    /// -16: the disk state is lower than Outdated.
    LowerThanOutdated,
    /// -19: another cluster-wide state change was in progress (the race was lost).
    ConcurrentStateChange,
    /// -23: the peer did not answer in time.
    Timeout,
    /// The peer refused with a code udrbd does not name.
    Peer(i32),
}

impl StateChangeError {
    /// The SS_* code.
    pub fn code(self) -> i32 {
        match self {
            StateChangeError::NoUpToDateDisk => -2,
            StateChangeError::IsDiskless => -11,
            StateChangeError::DeviceInUse => -12,
            StateChangeError::InTransientState => -18,
            StateChangeError::Unknown => 0,
            StateChangeError::TwoPrimaries => -1,
            StateChangeError::NoLocalDisk => -4,
            StateChangeError::NoRemoteDisk => -5,
            StateChangeError::ConnectedOutdates => -6,
            StateChangeError::ResyncRunning => -8,
            StateChangeError::AlreadyStandAlone => -9,
            StateChangeError::FailedByPeer => -10,
            StateChangeError::NoNetConfig => -13,
            StateChangeError::NoVerifyAlg => -14,
            StateChangeError::NeedConnection => -15,
            StateChangeError::LowerThanOutdated => -16,
            StateChangeError::ConcurrentStateChange => -19,
            StateChangeError::Timeout => -23,
            StateChangeError::Peer(code) => code,
        }
    }

    /// The error for an SS_* code a peer replied with (`None` for success codes).
    pub fn from_code(code: i32) -> Option<StateChangeError> {
        if code >= 1 {
            return None;
        }
        Some(match code {
            -2 => StateChangeError::NoUpToDateDisk,
            -11 => StateChangeError::IsDiskless,
            -12 => StateChangeError::DeviceInUse,
            -18 => StateChangeError::InTransientState,
            0 => StateChangeError::Unknown,
            -1 => StateChangeError::TwoPrimaries,
            -4 => StateChangeError::NoLocalDisk,
            -5 => StateChangeError::NoRemoteDisk,
            -6 => StateChangeError::ConnectedOutdates,
            -8 => StateChangeError::ResyncRunning,
            -9 => StateChangeError::AlreadyStandAlone,
            -10 => StateChangeError::FailedByPeer,
            -13 => StateChangeError::NoNetConfig,
            -14 => StateChangeError::NoVerifyAlg,
            -15 => StateChangeError::NeedConnection,
            -16 => StateChangeError::LowerThanOutdated,
            -19 => StateChangeError::ConcurrentStateChange,
            -23 => StateChangeError::Timeout,
            other => StateChangeError::Peer(other),
        })
    }

    /// DRBD's message for the code.
    pub fn message(self) -> &'static str {
        match self {
            StateChangeError::NoUpToDateDisk => "Need access to UpToDate data",
            StateChangeError::IsDiskless => {
                "Device is diskless, the requested operation requires a disk"
            }
            StateChangeError::DeviceInUse => "Device is held open by someone",
            StateChangeError::InTransientState => {
                "In transient state, retry after next state change"
            }
            StateChangeError::Unknown => "unknown error.",
            StateChangeError::TwoPrimaries => "Multiple primaries not allowed by config",
            StateChangeError::NoLocalDisk => "Can not resync without local disk",
            StateChangeError::NoRemoteDisk => "Can not resync without remote disk",
            StateChangeError::ConnectedOutdates => "Refusing to be Outdated while Connected",
            StateChangeError::ResyncRunning => "Can not start OV/resync since it is already active",
            StateChangeError::AlreadyStandAlone => "Can not disconnect a StandAlone device",
            StateChangeError::FailedByPeer => "State change was refused by peer node",
            StateChangeError::NoNetConfig => "Have no net/connection configuration",
            StateChangeError::NoVerifyAlg => "Need a verify algorithm to start online verify",
            StateChangeError::NeedConnection => "Need a connection to start verify or resync",
            StateChangeError::LowerThanOutdated => "Disk state is lower than outdated",
            StateChangeError::ConcurrentStateChange => {
                "Concurrent state changes detected and aborted"
            }
            StateChangeError::Timeout => "Timeout in operation",
            StateChangeError::Peer(_) => "Refused by the peer",
        }
    }

    /// drbdsetup's exit code for the refusal (17 for -2, 5 for -16, 16 for -4, 11 for the
    /// others).
    pub fn exit_code(self) -> u8 {
        match self {
            StateChangeError::NoUpToDateDisk => 17,
            StateChangeError::LowerThanOutdated => 5,
            StateChangeError::NoLocalDisk => 16,
            _ => 11,
        }
    }
}

/// Why an admin command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// A refused state change: printed `State change failed: (CODE) MESSAGE`.
    StateChange(StateChangeError),
    /// ERR_* 124: already attached.
    AlreadyAttached,
    /// ERR_* 118: IO error reading the meta-data at attach.
    MetaDataIo,
    /// ERR_* 119: no valid v08 meta-data signature (wrong magic, v07, v09, bad layout).
    NoValidMetaData,
    /// ERR_* 111: the backing device is smaller than the last agreed size.
    DeviceTooSmall,
    /// The backing device still has IO of an earlier attach in flight.
    StuckIo {
        /// How many operations have not returned.
        outstanding: u64,
    },
    /// ERR_* 138: the command needs a disk configuration (detach while diskless).
    NoDiskConfig,
    /// The disk failed while the command waited.
    DiskFailed,
    /// ERR_* 150: a Primary without a connected peer attaches only the data it was serving
    /// (the disk's current UUID must be the exposed one).
    DataNotCurrent {
        /// The UUID of the data the Primary serves.
        exposed: u64,
    },
    /// ERR_* 151: the command needs the resource StandAlone (`new-current-uuid` while a
    /// connection is configured, other than to skip the initial sync).
    NeedStandAlone,
    /// ERR_* 134: `pause-sync` while it is in force.
    PauseIsSet,
    /// ERR_* 135: `resume-sync` while no `pause-sync` is in force.
    PauseIsClear,
    /// ERR_* 157: `resume-sync` while no `pause-sync` is in force here, and the resync is
    /// paused by the peer.
    PausedByPeer,
    /// ERR_* 130: `resize` while a resync or verify runs.
    ResizeDuringResync,
    /// ERR_* 131: `resize` of two connected Secondaries.
    ResizeNeedsPrimary,
    /// ERR_* 170: the backing device is smaller than the device (or its meta-data would
    /// have to move down).
    ImplicitShrink,
    /// The backing device's size could not be read.
    BackingSizeUnknown,
}

impl CommandError {
    /// The ERR_* code for `Failure: (N) ...` messages, if this is one.
    pub fn err_code(self) -> Option<u32> {
        match self {
            CommandError::AlreadyAttached => Some(124),
            CommandError::MetaDataIo => Some(118),
            CommandError::NoValidMetaData => Some(119),
            CommandError::DeviceTooSmall => Some(111),
            CommandError::NoDiskConfig => Some(138),
            CommandError::DataNotCurrent { .. } => Some(150),
            CommandError::NeedStandAlone => Some(151),
            CommandError::PauseIsSet => Some(134),
            CommandError::PauseIsClear => Some(135),
            CommandError::PausedByPeer => Some(157),
            CommandError::ResizeDuringResync => Some(130),
            CommandError::ResizeNeedsPrimary => Some(131),
            CommandError::ImplicitShrink => Some(170),
            _ => None,
        }
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::StateChange(e) => {
                write!(f, "State change failed: ({}) {}", e.code(), e.message())
            }
            CommandError::AlreadyAttached => {
                write!(
                    f,
                    "Failure: (124) Device is attached to a disk (use detach first)"
                )
            }
            CommandError::MetaDataIo => write!(
                f,
                "Failure: (118) IO error(s) occurred during initial access to meta-data."
            ),
            CommandError::NoValidMetaData => write!(
                f,
                "Failure: (119) No valid meta-data signature found.\n\n\t==> Use 'udrbd create-md res' to initialize meta-data area. <=="
            ),
            CommandError::DeviceTooSmall => {
                write!(
                    f,
                    "Failure: (111) Low.dev. smaller than requested DRBD-dev. size."
                )
            }
            CommandError::StuckIo { outstanding } => write!(
                f,
                "Failure: backing device still has {outstanding} IO request(s) of the previous attach in flight; attach is refused until they return"
            ),
            CommandError::NoDiskConfig => {
                write!(f, "Failure: (138) Device does not have a disk-config")
            }
            CommandError::DiskFailed => write!(f, "Failure: the disk failed during the command"),
            CommandError::DataNotCurrent { exposed } => write!(
                f,
                "Failure: (150) Can only attach to the data we lost last (see kernel log). \
                 (Can only attach to data with current UUID={exposed:016X})"
            ),
            CommandError::NeedStandAlone => write!(f, "Failure: (151) Need to be StandAlone"),
            CommandError::PauseIsSet => write!(f, "Failure: (134) Sync-pause flag is already set"),
            CommandError::PauseIsClear => {
                write!(f, "Failure: (135) Sync-pause flag is already cleared")
            }
            CommandError::PausedByPeer => write!(
                f,
                "Failure: (157) Sync-pause flag is already cleared.\nNote: Resync pause caused by the peer node."
            ),
            CommandError::ResizeDuringResync => {
                write!(f, "Failure: (130) Resize not allowed during resync.")
            }
            CommandError::ResizeNeedsPrimary => {
                write!(f, "Failure: (131) Need one Primary node to resize.")
            }
            CommandError::ImplicitShrink => write!(
                f,
                "Failure: (170) Implicit device shrinking not allowed. See kernel log."
            ),
            CommandError::BackingSizeUnknown => {
                write!(f, "Failure: the backing device's size could not be read")
            }
        }
    }
}
