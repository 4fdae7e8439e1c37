//! The packed state word of P_STATE and P_STATE_CHG_REQ (drbd-v08-facts.md §5.1), with the
//! 8.4 enumerations.
//!
//! ```text
//!  bits   field      values
//!   0-1   role       Role (0 Unknown, 1 Primary, 2 Secondary)
//!   2-3   peer       Role
//!   4-8   conn       ConnState (0..=23)
//!   9-12  disk       DiskState (0..=8)
//!  13-16  pdsk       DiskState
//!    17   susp       IO suspended by the user
//!    18   aftr_isp   sync paused: resync-after dependency
//!    19   peer_isp   sync paused by the peer
//!    20   user_isp   sync paused by the user
//!    21   susp_nod   IO suspended: no data accessible
//!    22   susp_fen   IO suspended: fence-peer handler running
//!  23-31  (pad)      0
//! ```
//!
//! Sent as one big-endian u32. Verified against every P_STATE in the captures, e.g.
//! `0x000108e6` = Secondary/Primary WFBitMapT Inconsistent/UpToDate.
//!
//! Two types: [`StateWord`] is the raw word (what P_STATE_CHG_REQ carries as mask and value,
//! where a field may hold an all-ones mask), [`State`] is a validated state (what P_STATE
//! carries). [`StateWord::convert_for_peer`] is the kernel's `convert_state`, which turns the
//! peer's view of a state change into the local one.

use crate::error::DecodeError;

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Not known (a peer that is not connected).
    Unknown = 0,
    /// Serves the device.
    Primary = 1,
    /// Does not serve the device.
    Secondary = 2,
}

/// Connection states (`enum drbd_conns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnState {
    /// No network configuration.
    StandAlone = 0,
    /// Going to StandAlone.
    Disconnecting = 1,
    /// Transient state before WFConnection.
    Unconnected = 2,
    /// A network timeout (transient).
    Timeout = 3,
    /// The socket broke (transient).
    BrokenPipe = 4,
    /// A network failure (transient).
    NetworkFailure = 5,
    /// The peer violated the protocol (transient).
    ProtocolError = 6,
    /// The peer closed the connection (transient).
    TearDown = 7,
    /// Waiting for the peer.
    WfConnection = 8,
    /// Sockets established, handshake running.
    WfReportParams = 9,
    /// Connected, no resync.
    Connected = 10,
    /// Full sync requested by the admin, about to become source.
    StartingSyncS = 11,
    /// Full sync requested by the admin, about to become target.
    StartingSyncT = 12,
    /// Exchanging bitmaps as the future source.
    WfBitMapS = 13,
    /// Exchanging bitmaps as the future target.
    WfBitMapT = 14,
    /// Target waiting for P_SYNC_UUID.
    WfSyncUuid = 15,
    /// Resync source.
    SyncSource = 16,
    /// Resync target.
    SyncTarget = 17,
    /// Online verify, the side that started it.
    VerifyS = 18,
    /// Online verify, the other side.
    VerifyT = 19,
    /// Resync source, paused.
    PausedSyncS = 20,
    /// Resync target, paused.
    PausedSyncT = 21,
    /// Primary that stopped replicating (congestion).
    Ahead = 22,
    /// Peer of an Ahead primary.
    Behind = 23,
}

/// Disk states (`enum drbd_disk_state`); the same set describes the peer's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskState {
    /// No backing device.
    Diskless = 0,
    /// Reading the meta-data.
    Attaching = 1,
    /// An IO error: on the way to Diskless.
    Failed = 2,
    /// Negotiating with the peer.
    Negotiating = 3,
    /// The data is not usable.
    Inconsistent = 4,
    /// Consistent, known to be older than the peer's.
    Outdated = 5,
    /// Not known (peer disks only).
    DUnknown = 6,
    /// Consistent, not known whether up to date.
    Consistent = 7,
    /// The newest data.
    UpToDate = 8,
}

const ROLES: [Role; 3] = [Role::Unknown, Role::Primary, Role::Secondary];
const CONN_STATES: [ConnState; 24] = [
    ConnState::StandAlone,
    ConnState::Disconnecting,
    ConnState::Unconnected,
    ConnState::Timeout,
    ConnState::BrokenPipe,
    ConnState::NetworkFailure,
    ConnState::ProtocolError,
    ConnState::TearDown,
    ConnState::WfConnection,
    ConnState::WfReportParams,
    ConnState::Connected,
    ConnState::StartingSyncS,
    ConnState::StartingSyncT,
    ConnState::WfBitMapS,
    ConnState::WfBitMapT,
    ConnState::WfSyncUuid,
    ConnState::SyncSource,
    ConnState::SyncTarget,
    ConnState::VerifyS,
    ConnState::VerifyT,
    ConnState::PausedSyncS,
    ConnState::PausedSyncT,
    ConnState::Ahead,
    ConnState::Behind,
];
const DISK_STATES: [DiskState; 9] = [
    DiskState::Diskless,
    DiskState::Attaching,
    DiskState::Failed,
    DiskState::Negotiating,
    DiskState::Inconsistent,
    DiskState::Outdated,
    DiskState::DUnknown,
    DiskState::Consistent,
    DiskState::UpToDate,
];

impl Role {
    /// Every role, by wire value.
    pub const ALL: [Role; 3] = ROLES;
    /// The role with this wire value.
    pub fn from_u32(value: u32) -> Option<Role> {
        ROLES.get(value as usize).copied()
    }
    /// DRBD's name.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Unknown => "Unknown",
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
        }
    }
}

impl ConnState {
    /// Every connection state, by wire value.
    pub const ALL: [ConnState; 24] = CONN_STATES;
    /// The connection state with this wire value.
    pub fn from_u32(value: u32) -> Option<ConnState> {
        CONN_STATES.get(value as usize).copied()
    }
    /// DRBD's name, as /proc/drbd and drbdadm print it.
    pub const fn name(self) -> &'static str {
        match self {
            ConnState::StandAlone => "StandAlone",
            ConnState::Disconnecting => "Disconnecting",
            ConnState::Unconnected => "Unconnected",
            ConnState::Timeout => "Timeout",
            ConnState::BrokenPipe => "BrokenPipe",
            ConnState::NetworkFailure => "NetworkFailure",
            ConnState::ProtocolError => "ProtocolError",
            ConnState::TearDown => "TearDown",
            ConnState::WfConnection => "WFConnection",
            ConnState::WfReportParams => "WFReportParams",
            ConnState::Connected => "Connected",
            ConnState::StartingSyncS => "StartingSyncS",
            ConnState::StartingSyncT => "StartingSyncT",
            ConnState::WfBitMapS => "WFBitMapS",
            ConnState::WfBitMapT => "WFBitMapT",
            ConnState::WfSyncUuid => "WFSyncUUID",
            ConnState::SyncSource => "SyncSource",
            ConnState::SyncTarget => "SyncTarget",
            ConnState::VerifyS => "VerifyS",
            ConnState::VerifyT => "VerifyT",
            ConnState::PausedSyncS => "PausedSyncS",
            ConnState::PausedSyncT => "PausedSyncT",
            ConnState::Ahead => "Ahead",
            ConnState::Behind => "Behind",
        }
    }
}

impl DiskState {
    /// Every disk state, by wire value.
    pub const ALL: [DiskState; 9] = DISK_STATES;
    /// The disk state with this wire value.
    pub fn from_u32(value: u32) -> Option<DiskState> {
        DISK_STATES.get(value as usize).copied()
    }
    /// DRBD's name.
    pub const fn name(self) -> &'static str {
        match self {
            DiskState::Diskless => "Diskless",
            DiskState::Attaching => "Attaching",
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

/// A field of the packed state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateField {
    /// Bits 0-1.
    Role,
    /// Bits 2-3.
    Peer,
    /// Bits 4-8.
    Conn,
    /// Bits 9-12.
    Disk,
    /// Bits 13-16.
    Pdsk,
    /// Bit 17.
    Susp,
    /// Bit 18.
    AftrIsp,
    /// Bit 19.
    PeerIsp,
    /// Bit 20.
    UserIsp,
    /// Bit 21.
    SuspNod,
    /// Bit 22.
    SuspFen,
    /// Bits 23-31, always 0.
    Pad,
}

impl StateField {
    /// Every field, lowest bits first.
    pub const ALL: [StateField; 12] = [
        StateField::Role,
        StateField::Peer,
        StateField::Conn,
        StateField::Disk,
        StateField::Pdsk,
        StateField::Susp,
        StateField::AftrIsp,
        StateField::PeerIsp,
        StateField::UserIsp,
        StateField::SuspNod,
        StateField::SuspFen,
        StateField::Pad,
    ];

    /// (lowest bit, width in bits).
    const fn position(self) -> (u32, u32) {
        match self {
            StateField::Role => (0, 2),
            StateField::Peer => (2, 2),
            StateField::Conn => (4, 5),
            StateField::Disk => (9, 4),
            StateField::Pdsk => (13, 4),
            StateField::Susp => (17, 1),
            StateField::AftrIsp => (18, 1),
            StateField::PeerIsp => (19, 1),
            StateField::UserIsp => (20, 1),
            StateField::SuspNod => (21, 1),
            StateField::SuspFen => (22, 1),
            StateField::Pad => (23, 9),
        }
    }

    /// The field's bits within the word (what a P_STATE_CHG_REQ mask sets for it).
    pub const fn mask(self) -> u32 {
        let (shift, width) = self.position();
        (((1u64 << width) - 1) as u32) << shift
    }

    /// DRBD's name of the field.
    pub const fn name(self) -> &'static str {
        match self {
            StateField::Role => "role",
            StateField::Peer => "peer",
            StateField::Conn => "conn",
            StateField::Disk => "disk",
            StateField::Pdsk => "pdsk",
            StateField::Susp => "susp",
            StateField::AftrIsp => "aftr_isp",
            StateField::PeerIsp => "peer_isp",
            StateField::UserIsp => "user_isp",
            StateField::SuspNod => "susp_nod",
            StateField::SuspFen => "susp_fen",
            StateField::Pad => "pad",
        }
    }
}

impl std::fmt::Display for StateField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The raw packed word (`union drbd_state`), as it travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateWord(pub u32);

impl StateWord {
    /// The value of one field.
    pub const fn field(self, field: StateField) -> u32 {
        let (shift, _) = field.position();
        (self.0 & field.mask()) >> shift
    }

    /// The word with one field replaced (`value` is truncated to the field's width).
    #[must_use]
    pub const fn with_field(self, field: StateField, value: u32) -> StateWord {
        let (shift, _) = field.position();
        StateWord((self.0 & !field.mask()) | ((value << shift) & field.mask()))
    }

    /// A P_STATE_CHG_REQ mask selecting `fields` (e.g. role|disk = 0x1e03 for
    /// `primary --force`).
    pub fn mask_of(fields: &[StateField]) -> StateWord {
        StateWord(fields.iter().fold(0, |m, f| m | f.mask()))
    }

    /// The kernel's `convert_state`: a state word as the peer sees it, turned into the local
    /// view (applied by the receiver of P_STATE_CHG_REQ to both mask and value). Role/peer and
    /// disk/pdsk swap, peer_isp becomes aftr_isp|user_isp, and the connection state maps
    /// StartingSyncS <-> StartingSyncT, VerifyS -> VerifyT, Disconnecting -> TearDown,
    /// WFReportParams and Connected to themselves, the all-ones mask (31) to itself and every
    /// other value to 0 (StandAlone), as the kernel's sparse table does.
    #[must_use]
    pub const fn convert_for_peer(self) -> StateWord {
        let conn = match self.field(StateField::Conn) {
            9 => 9,
            10 => 10,
            11 => 12,
            12 => 11,
            1 => 7,
            18 => 19,
            31 => 31,
            _ => 0,
        };
        let isp = self.field(StateField::AftrIsp) | self.field(StateField::UserIsp);
        self.with_field(StateField::Conn, conn)
            .with_field(StateField::Peer, self.field(StateField::Role))
            .with_field(StateField::Role, self.field(StateField::Peer))
            .with_field(StateField::Pdsk, self.field(StateField::Disk))
            .with_field(StateField::Disk, self.field(StateField::Pdsk))
            .with_field(StateField::PeerIsp, isp)
    }
}

/// A validated state, field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// This node's role.
    pub role: Role,
    /// The peer's role as this node knows it.
    pub peer: Role,
    /// Connection state.
    pub conn: ConnState,
    /// Local disk.
    pub disk: DiskState,
    /// Peer disk.
    pub pdsk: DiskState,
    /// IO suspended by the user.
    pub susp: bool,
    /// Sync paused because of a resync-after dependency.
    pub aftr_isp: bool,
    /// Sync paused by the peer.
    pub peer_isp: bool,
    /// Sync paused by the user.
    pub user_isp: bool,
    /// IO suspended: no data accessible.
    pub susp_nod: bool,
    /// IO suspended: fencing.
    pub susp_fen: bool,
}

impl State {
    /// The packed word.
    pub fn to_word(&self) -> StateWord {
        let flags = [
            (StateField::Susp, self.susp),
            (StateField::AftrIsp, self.aftr_isp),
            (StateField::PeerIsp, self.peer_isp),
            (StateField::UserIsp, self.user_isp),
            (StateField::SuspNod, self.susp_nod),
            (StateField::SuspFen, self.susp_fen),
        ];
        let word = StateWord(0)
            .with_field(StateField::Role, self.role as u32)
            .with_field(StateField::Peer, self.peer as u32)
            .with_field(StateField::Conn, self.conn as u32)
            .with_field(StateField::Disk, self.disk as u32)
            .with_field(StateField::Pdsk, self.pdsk as u32);
        flags
            .iter()
            .fold(word, |w, &(f, on)| w.with_field(f, u32::from(on)))
    }

    /// Decodes a word; every enumerated field must hold a defined value and the pad bits
    /// must be 0.
    pub fn from_word(word: StateWord) -> Result<State, DecodeError> {
        let bad = |field: StateField| DecodeError::BadStateWord {
            word: word.0,
            field,
            value: word.field(field),
        };
        let role = |f| Role::from_u32(word.field(f)).ok_or_else(|| bad(f));
        let disk = |f| DiskState::from_u32(word.field(f)).ok_or_else(|| bad(f));
        if word.field(StateField::Pad) != 0 {
            return Err(bad(StateField::Pad));
        }
        let flag = |f| word.field(f) == 1;
        Ok(State {
            role: role(StateField::Role)?,
            peer: role(StateField::Peer)?,
            conn: ConnState::from_u32(word.field(StateField::Conn))
                .ok_or_else(|| bad(StateField::Conn))?,
            disk: disk(StateField::Disk)?,
            pdsk: disk(StateField::Pdsk)?,
            susp: flag(StateField::Susp),
            aftr_isp: flag(StateField::AftrIsp),
            peer_isp: flag(StateField::PeerIsp),
            user_isp: flag(StateField::UserIsp),
            susp_nod: flag(StateField::SuspNod),
            susp_fen: flag(StateField::SuspFen),
        })
    }
}

impl std::fmt::Display for State {
    /// `Secondary/Primary WFBitMapT Inconsistent/UpToDate`, the form of /proc/drbd.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {} {}/{}",
            self.role.name(),
            self.peer.name(),
            self.conn.name(),
            self.disk.name(),
            self.pdsk.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_state_words_decode() {
        // drbd-wire-observed.md scenario 1.
        let cases = [
            (
                0x0000_c882,
                "Secondary/Unknown WFConnection Inconsistent/DUnknown",
            ),
            (
                0x0000_88aa,
                "Secondary/Secondary Connected Inconsistent/Inconsistent",
            ),
            (
                0x0000_90a9,
                "Primary/Secondary Connected UpToDate/Inconsistent",
            ),
            (
                0x0001_08e6,
                "Secondary/Primary WFBitMapT Inconsistent/UpToDate",
            ),
            (0x0001_10a6, "Secondary/Primary Connected UpToDate/UpToDate"),
            (0x0001_0ae6, "Secondary/Primary WFBitMapT Outdated/UpToDate"),
            (
                0x0000_f0d9,
                "Primary/Secondary WFBitMapS UpToDate/Consistent",
            ),
            (
                0x0000_d081,
                "Primary/Unknown WFConnection UpToDate/DUnknown",
            ),
        ];
        for (word, text) in cases {
            let state = State::from_word(StateWord(word)).unwrap();
            assert_eq!(state.to_string(), text);
            assert_eq!(state.to_word(), StateWord(word));
        }
    }

    #[test]
    fn masks_of_captured_state_change_requests() {
        let force = StateWord::mask_of(&[StateField::Role, StateField::Disk]);
        assert_eq!(force, StateWord(0x1e03));
        let val = StateWord(0)
            .with_field(StateField::Role, Role::Primary as u32)
            .with_field(StateField::Disk, DiskState::UpToDate as u32);
        assert_eq!(val, StateWord(0x1001));
        assert_eq!(StateWord::mask_of(&[StateField::Conn]), StateWord(0x1f0));
        assert_eq!(
            StateWord(0).with_field(StateField::Conn, ConnState::VerifyS as u32),
            StateWord(0x120)
        );
    }

    #[test]
    fn convert_for_peer_is_the_kernels_convert_state() {
        // Peer asks: role Primary, disk UpToDate -> locally: peer Primary, pdsk UpToDate.
        let val = StateWord(0x1001).convert_for_peer();
        assert_eq!(val.field(StateField::Peer), Role::Primary as u32);
        assert_eq!(val.field(StateField::Pdsk), DiskState::UpToDate as u32);
        assert_eq!(val.field(StateField::Role), 0);
        let mask = StateWord(0x1e03).convert_for_peer();
        assert_eq!(
            mask,
            StateWord::mask_of(&[StateField::Peer, StateField::Pdsk])
        );
        let verify = StateWord(0x120).convert_for_peer();
        assert_eq!(verify.field(StateField::Conn), ConnState::VerifyT as u32);
        let conn_mask = StateWord(0x1f0).convert_for_peer();
        assert_eq!(conn_mask, StateWord(0x1f0));
        let disc = StateWord(0x10).convert_for_peer();
        assert_eq!(disc.field(StateField::Conn), ConnState::TearDown as u32);
        let isp = StateWord(0).with_field(StateField::UserIsp, 1);
        assert_eq!(isp.convert_for_peer().field(StateField::PeerIsp), 1);
    }

    #[test]
    fn invalid_values_are_named() {
        let err = State::from_word(StateWord(0x0000_c883)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadStateWord {
                word: 0xc883,
                field: StateField::Role,
                value: 3
            }
        );
        let err = State::from_word(StateWord(0x0080_c882)).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadStateWord {
                field: StateField::Pad,
                ..
            }
        ));
        assert!(State::from_word(StateWord(24 << 4)).is_err());
        assert!(State::from_word(StateWord(9 << 9)).is_err());
    }
}
