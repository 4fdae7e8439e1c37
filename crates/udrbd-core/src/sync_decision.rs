//! The sync handshake decision: which side resyncs from which (drbd-v08-facts.md §4).
//!
//! Three parts, all pure:
//!
//! 1. [`uuid_compare`]: DRBD 8.4's `drbd_uuid_compare()` as a table, [`UUID_COMPARE_RULES`].
//!    Each row is (rule number, the scenario behind it, condition, result); the rows are
//!    evaluated top to bottom in DRBD's order and the first match wins. The last row always
//!    matches ("unrelated data"). Rules 34, 35, 51 and 71 repair a half-finished resync; the
//!    repair is returned as data ([`UuidFixup`]) for the engine to apply.
//! 2. [`post_process`]: the rest of `drbd_sync_handshake()` (§4.4): the disk-state override,
//!    the after-split-brain policies, manual recovery with discard-my-data, the rr-conflict
//!    rule. It returns a [`HandshakePlan`]: the handlers to call and the demotion to do, in
//!    order, then connect (as source, target or in sync, with or without a full sync) or
//!    disconnect.
//! 3. The UUID transitions of §4.2 ([`new_current_uuid`], [`resync_start_source`],
//!    [`sync_target_received`], [`resync_finished_target`], [`clear_bitmap_uuid`]).
//!
//! Invariants:
//! - UUID equality ignores bit 0 (it records "held by a Primary"). The exceptions are DRBD's
//!   own: the "is the bitmap UUID zero" tests of rules 34–37 look at the raw value, and bit 0
//!   of the bitmap UUIDs is exactly what discard-younger/older-primary read.
//! - Additions of `UUID_NEW_BM_OFFSET` wrap, as DRBD's `u64` arithmetic does.
//! - Nothing here reads a clock or draws randomness: random UUIDs come in as arguments.

use udrbd_meta::GenerationUuids;

use crate::state::{DiskState, Role};

/// The four generation UUIDs of one node: current, bitmap, history `[younger, older]`.
pub type UuidSet = GenerationUuids;

/// The current UUID of fresh meta data (`drbdmeta create-md`).
pub const UUID_JUST_CREATED: u64 = udrbd_meta::superblock::UUID_JUST_CREATED;
/// Added to the bitmap UUID to derive the sync UUID at resync start.
pub const UUID_NEW_BM_OFFSET: u64 = 0x0001_0000_0000_0000;
/// The highest protocol version DRBD 8.4 speaks (and we do); used in rule 41's encoded
/// "needs protocol and feature" result.
pub const PROTOCOL_VERSION_MAX: u32 = 101;
/// Feature flag WSAME (8.4.7+); rule 41 also takes it to mean "a peer new enough for rule 41".
pub const FEATURE_WSAME: u32 = 4;
/// The oldest protocol that can repair half-finished resyncs (rules 34–37, 51, 71).
const PROTOCOL_UUID_REPAIR: u32 = 91;
/// From this protocol on, rules 51 and 71 recognise a lost sync UUID by the offset.
const PROTOCOL_SYNC_UUID_OFFSET: u32 = 96;

/// P_UUIDS slot 5 (UI_FLAGS): the sender has discard-my-data set.
pub const UUID_FLAG_DISCARD_MY_DATA: u64 = 1;
/// P_UUIDS slot 5: the sender is a "crashed primary".
pub const UUID_FLAG_CRASHED_PRIMARY: u64 = 2;
/// P_UUIDS slot 5: the sender's disk, as it will be after negotiation, is Inconsistent.
pub const UUID_FLAG_INCONSISTENT: u64 = 4;
/// P_UUIDS slot 5: skip the initial sync (`new-current-uuid --clear-bitmap`, protocol ≥ 90).
pub const UUID_FLAG_SKIP_INITIAL_SYNC: u64 = 8;

/// `uuid` without bit 0, the form every UUID comparison uses.
const fn masked(uuid: u64) -> u64 {
    uuid & !1
}

/// `uuid` with bit 0 set to the role (as DRBD stores a current UUID).
const fn with_role_bit(uuid: u64, primary: bool) -> u64 {
    if primary { uuid | 1 } else { masked(uuid) }
}

/// What the peer sent in P_UUIDS: its four UUIDs, the number of bits set in its bitmap
/// (slot 4, UI_SIZE) and its flags (slot 5, UI_FLAGS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerUuids {
    /// The peer's generation UUIDs.
    pub uuids: UuidSet,
    /// Bits set in the peer's bitmap (its "changes" for the after-sb policies).
    pub bits_set: u64,
    /// `UUID_FLAG_*` bits.
    pub flags: u64,
}

impl PeerUuids {
    /// From the six slots of P_UUIDS.
    pub fn from_wire(slots: [u64; 6]) -> PeerUuids {
        PeerUuids {
            uuids: UuidSet::from_array([slots[0], slots[1], slots[2], slots[3]]),
            bits_set: slots[4],
            flags: slots[5],
        }
    }

    /// The six slots of P_UUIDS.
    pub fn to_wire(&self) -> [u64; 6] {
        let u = self.uuids.to_array();
        [u[0], u[1], u[2], u[3], self.bits_set, self.flags]
    }

    /// The peer has discard-my-data set.
    pub fn discard_my_data(&self) -> bool {
        self.flags & UUID_FLAG_DISCARD_MY_DATA != 0
    }

    /// The peer is a "crashed primary".
    pub fn crashed_primary(&self) -> bool {
        self.flags & UUID_FLAG_CRASHED_PRIMARY != 0
    }
}

/// The peer's disk state as the handshake sees it: a peer still Negotiating (attaching) is
/// taken as Inconsistent or Consistent by its `UUID_FLAG_INCONSISTENT` (DRBD's
/// `real_peer_disk` in `receive_state`).
pub fn peer_disk_for_handshake(reported: DiskState, peer_flags: u64) -> DiskState {
    if reported != DiskState::Negotiating {
        reported
    } else if peer_flags & UUID_FLAG_INCONSISTENT != 0 {
        DiskState::Inconsistent
    } else {
        DiskState::Consistent
    }
}

/// The result of `drbd_uuid_compare()`, with DRBD's result codes ([`SyncDecision::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncDecision {
    /// +2: become SyncSource and set all bits (full sync).
    SourceFullSync,
    /// +1: become SyncSource, resync what the bitmap holds.
    SourceUsingBitmap,
    /// 0: in sync.
    NoSync,
    /// −1: become SyncTarget, resync what the bitmap holds.
    TargetUsingBitmap,
    /// −2: become SyncTarget with a full sync.
    TargetFullSync,
    /// +100: split brain, both diverged from the same point; after-sb policies may resolve.
    SplitBrainAutoRecover,
    /// −100: split brain; disconnect unless always-asbp or discard-my-data resolve it.
    SplitBrainDisconnect,
    /// −1000: the data sets have nothing in common.
    UnrelatedData,
    /// Resolving this needs protocol `min` and, if non-zero, feature flags `features`:
    /// −(1000 + min) without features (−1091, −1096), −(0x10000 | min | features << 8) with.
    NeedsProtocol {
        /// The protocol version needed.
        min: u32,
        /// The feature flags needed (0: none).
        features: u32,
    },
}

impl SyncDecision {
    /// DRBD's integer (the `hg` of `drbd_sync_handshake`, logged as "uuid_compare()=%d").
    pub fn code(self) -> i32 {
        match self {
            SyncDecision::SourceFullSync => 2,
            SyncDecision::SourceUsingBitmap => 1,
            SyncDecision::NoSync => 0,
            SyncDecision::TargetUsingBitmap => -1,
            SyncDecision::TargetFullSync => -2,
            SyncDecision::SplitBrainAutoRecover => 100,
            SyncDecision::SplitBrainDisconnect => -100,
            SyncDecision::UnrelatedData => -1000,
            SyncDecision::NeedsProtocol { min, features } => {
                assert!(min <= 0xff && features <= 0xff, "{min} {features}");
                if features == 0 {
                    -(1000 + min as i32)
                } else {
                    -((0x10000 | min | features << 8) as i32)
                }
            }
        }
    }

    /// The decision for a DRBD result code, `None` for a code DRBD never produces.
    pub fn from_code(code: i32) -> Option<SyncDecision> {
        Some(match code {
            2 => SyncDecision::SourceFullSync,
            1 => SyncDecision::SourceUsingBitmap,
            0 => SyncDecision::NoSync,
            -1 => SyncDecision::TargetUsingBitmap,
            -2 => SyncDecision::TargetFullSync,
            100 => SyncDecision::SplitBrainAutoRecover,
            -100 => SyncDecision::SplitBrainDisconnect,
            -1000 => SyncDecision::UnrelatedData,
            c if (-0x1ffff..-0x10000).contains(&c) => {
                let v = c.unsigned_abs();
                let (min, features) = (v & 0xff, (v >> 8) & 0xff);
                (features != 0).then_some(SyncDecision::NeedsProtocol { min, features })?
            }
            c if (-1255..-1000).contains(&c) => SyncDecision::NeedsProtocol {
                min: c.unsigned_abs() - 1000,
                features: 0,
            },
            _ => return None,
        })
    }

    /// +1 or +2: this side becomes SyncSource.
    pub fn is_source(self) -> bool {
        matches!(
            self,
            SyncDecision::SourceFullSync | SyncDecision::SourceUsingBitmap
        )
    }

    /// −1 or −2: this side becomes SyncTarget.
    pub fn is_target(self) -> bool {
        matches!(
            self,
            SyncDecision::TargetFullSync | SyncDecision::TargetUsingBitmap
        )
    }

    /// ±2: all bits are set before the resync.
    pub fn is_full_sync(self) -> bool {
        matches!(
            self,
            SyncDecision::SourceFullSync | SyncDecision::TargetFullSync
        )
    }

    /// ±100.
    pub fn is_split_brain(self) -> bool {
        matches!(
            self,
            SyncDecision::SplitBrainAutoRecover | SyncDecision::SplitBrainDisconnect
        )
    }

    /// ±1 becomes ±2 (DRBD's `hg * 2`); everything else is unchanged.
    fn doubled(self) -> SyncDecision {
        match self {
            SyncDecision::SourceUsingBitmap => SyncDecision::SourceFullSync,
            SyncDecision::TargetUsingBitmap => SyncDecision::TargetFullSync,
            other => other,
        }
    }
}

/// Everything `drbd_uuid_compare()` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareInput {
    /// Our UUIDs (as on disk).
    pub local: UuidSet,
    /// Our CRASHED_PRIMARY flag.
    pub local_crashed_primary: bool,
    /// This side holds RESOLVE_CONFLICTS (it loses ties).
    pub resolve_conflicts: bool,
    /// What the peer sent in P_UUIDS.
    pub peer: PeerUuids,
    /// The agreed protocol version.
    pub agreed_protocol: u32,
    /// The agreed feature flags (the AND of both sides').
    pub agreed_features: u32,
    /// Our role.
    pub local_role: Role,
    /// The peer's role (from its P_STATE).
    pub peer_role: Role,
}

impl CompareInput {
    fn local_current(&self) -> u64 {
        masked(self.local.current)
    }

    fn peer_current(&self) -> u64 {
        masked(self.peer.uuids.current)
    }

    fn currents_equal(&self) -> bool {
        self.local_current() == self.peer_current()
    }

    /// Raw, as DRBD tests it: only we have a bitmap UUID.
    fn only_local_has_bitmap(&self) -> bool {
        self.peer.uuids.bitmap == 0 && self.local.bitmap != 0
    }

    /// Raw, as DRBD tests it: only the peer has a bitmap UUID.
    fn only_peer_has_bitmap(&self) -> bool {
        self.local.bitmap == 0 && self.peer.uuids.bitmap != 0
    }

    /// DRBD's `rct`, "roles at crash time": 1 if we crashed as Primary, + 2 if the peer did.
    fn roles_at_crash_time(&self) -> u8 {
        u8::from(self.local_crashed_primary) + 2 * u8::from(self.peer.crashed_primary())
    }

    fn someone_primary(&self) -> bool {
        self.local_role == Role::Primary || self.peer_role == Role::Primary
    }

    /// The peer generated a sync UUID as SyncSource that never reached us.
    fn peer_lost_sync_uuid(&self) -> bool {
        let (l, p) = (&self.local, &self.peer.uuids);
        if self.agreed_protocol < PROTOCOL_SYNC_UUID_OFFSET {
            masked(l.history[0]) == masked(p.history[1])
        } else {
            masked(p.history[0]).wrapping_add(UUID_NEW_BM_OFFSET) == masked(p.bitmap)
        }
    }

    /// We generated a sync UUID as SyncSource that never reached the peer.
    fn local_lost_sync_uuid(&self) -> bool {
        let (l, p) = (&self.local, &self.peer.uuids);
        if self.agreed_protocol < PROTOCOL_SYNC_UUID_OFFSET {
            masked(l.history[1]) == masked(p.history[0])
        } else {
            masked(l.history[0]).wrapping_add(UUID_NEW_BM_OFFSET) == masked(l.bitmap)
        }
    }
}

/// A repair of UUIDs that a rule asks for before its result holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UuidFixup {
    /// Replace our UUIDs with `uuids` and write them to disk (rules 34 and 71).
    Local {
        /// Our corrected UUIDs.
        uuids: UuidSet,
    },
    /// Replace our copy of the peer's UUIDs with `uuids` (rules 35 and 51); nothing is
    /// written: the peer repairs its own by the mirror-image rule.
    PeerCopy {
        /// The corrected copy of the peer's UUIDs.
        uuids: UuidSet,
    },
}

impl UuidFixup {
    /// Applies the repair to our UUIDs or to our copy of the peer's.
    pub fn apply(self, local: &mut UuidSet, peer: &mut PeerUuids) {
        match self {
            UuidFixup::Local { uuids } => *local = uuids,
            UuidFixup::PeerCopy { uuids } => peer.uuids = uuids,
        }
    }
}

/// What [`uuid_compare`] decided, by which rule, and the repair that rule asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompareOutcome {
    /// The decision.
    pub decision: SyncDecision,
    /// The number of the rule that matched (10 … 100; 0 for "otherwise: unrelated data").
    pub rule: u16,
    /// Apply before acting on the decision (and before [`post_process`]).
    pub fixup: Option<UuidFixup>,
}

/// A rule's result: the decision and the repair it asks for.
pub type RuleResult = (SyncDecision, Option<UuidFixup>);

/// One row of [`UUID_COMPARE_RULES`].
#[derive(Clone, Copy, Debug)]
pub struct UuidCompareRule {
    /// DRBD's rule number (logged as "uuid_compare()=%d by rule %d"); two rows share 40,
    /// as in DRBD.
    pub number: u16,
    /// The situation the row recognises.
    pub scenario: &'static str,
    /// Whether the row applies; only asked if no row above it applied.
    pub applies: fn(&CompareInput) -> bool,
    /// The result.
    pub decide: fn(&CompareInput) -> RuleResult,
}

const fn plain(decision: SyncDecision) -> RuleResult {
    (decision, None)
}

/// The repair rules need protocol 91; below it they only report so (DRBD's −1091).
fn from_protocol_91(input: &CompareInput, result: RuleResult) -> RuleResult {
    if input.agreed_protocol < PROTOCOL_UUID_REPAIR {
        plain(SyncDecision::NeedsProtocol {
            min: PROTOCOL_UUID_REPAIR,
            features: 0,
        })
    } else {
        result
    }
}

/// Undoes the "set with history" of a resync start: bitmap := history[0],
/// history[0] := history[1] (history[1] stays: the value it pushed out is lost).
fn sync_uuid_rotation_undone(set: UuidSet) -> UuidSet {
    UuidSet {
        current: set.current,
        bitmap: set.history[0],
        history: [set.history[1], set.history[1]],
    }
}

fn rule_40_crash_arbitration(input: &CompareInput) -> RuleResult {
    plain(match input.roles_at_crash_time() {
        0 => SyncDecision::NoSync, // Rule 40 proper; not reached.
        1 => SyncDecision::SourceUsingBitmap,
        2 => SyncDecision::TargetUsingBitmap,
        _ if input.resolve_conflicts => SyncDecision::TargetUsingBitmap,
        _ => SyncDecision::SourceUsingBitmap,
    })
}

fn rule_41_primary_present(input: &CompareInput) -> RuleResult {
    plain(if input.agreed_features & FEATURE_WSAME == 0 {
        SyncDecision::NeedsProtocol {
            min: PROTOCOL_VERSION_MAX,
            features: FEATURE_WSAME,
        }
    } else if input.local_role == Role::Primary && input.peer_role == Role::Primary {
        SyncDecision::SplitBrainDisconnect
    } else if input.local_role == Role::Primary {
        SyncDecision::SourceUsingBitmap
    } else {
        SyncDecision::TargetUsingBitmap
    })
}

fn any_history_shared(input: &CompareInput) -> bool {
    let (l, p) = (&input.local.history, &input.peer.uuids.history);
    l.iter()
        .any(|&mine| p.iter().any(|&theirs| masked(mine) == masked(theirs)))
}

/// `drbd_uuid_compare()` as a table, in DRBD's order; the first row that applies decides.
/// "self"/"we" is the local node, "peer" the UUIDs received in P_UUIDS; all UUID
/// comparisons mask bit 0.
pub static UUID_COMPARE_RULES: [UuidCompareRule; 19] = [
    UuidCompareRule {
        number: 10,
        scenario: "both sides are just created (create-md) and never synced: nothing to do \
                   until the operator makes one of them the source",
        applies: |i| {
            i.local_current() == UUID_JUST_CREATED && i.peer_current() == UUID_JUST_CREATED
        },
        decide: |_| plain(SyncDecision::NoSync),
    },
    UuidCompareRule {
        number: 20,
        scenario: "we have no data generation (just created, or zeroed): take all of the peer's",
        applies: |i| {
            matches!(i.local_current(), 0 | UUID_JUST_CREATED)
                && i.peer_current() != UUID_JUST_CREATED
        },
        decide: |_| plain(SyncDecision::TargetFullSync),
    },
    UuidCompareRule {
        number: 30,
        scenario: "the peer has no data generation (just created, or zeroed): give it all of ours",
        applies: |i| {
            i.local_current() != UUID_JUST_CREATED
                && matches!(i.peer_current(), 0 | UUID_JUST_CREATED)
        },
        decide: |_| plain(SyncDecision::SourceFullSync),
    },
    UuidCompareRule {
        number: 34,
        scenario: "same generation, only we keep a bitmap UUID, and the peer's history shows the \
                   resync we sourced completed: we were SyncSource and missed the 'resync \
                   finished' event; do the missed 'clear bitmap UUID' and resync what the bitmap \
                   still holds",
        applies: |i| {
            let (l, p) = (&i.local, &i.peer.uuids);
            i.currents_equal()
                && i.only_local_has_bitmap()
                && masked(l.bitmap) == masked(p.history[0])
                && masked(l.history[0]) == masked(p.history[1])
        },
        decide: |i| {
            let uuids = clear_bitmap_uuid(i.local);
            from_protocol_91(
                i,
                (
                    SyncDecision::SourceUsingBitmap,
                    Some(UuidFixup::Local { uuids }),
                ),
            )
        },
    },
    UuidCompareRule {
        number: 36,
        scenario: "same generation, only we keep a bitmap UUID: we were SyncSource and the peer \
                   failed to write the sync UUID; resync from our bitmap",
        applies: |i| i.currents_equal() && i.only_local_has_bitmap(),
        decide: |i| from_protocol_91(i, plain(SyncDecision::SourceUsingBitmap)),
    },
    UuidCompareRule {
        number: 35,
        scenario: "mirror of 34: we were SyncTarget, the resync completed and the peer missed \
                   the 'resync finished' event; correct our copy of its UUIDs",
        applies: |i| {
            let (l, p) = (&i.local, &i.peer.uuids);
            i.currents_equal()
                && i.only_peer_has_bitmap()
                && masked(l.history[0]) == masked(p.bitmap)
                && masked(l.history[1]) == masked(p.history[0])
        },
        decide: |i| {
            let uuids = clear_bitmap_uuid(i.peer.uuids);
            from_protocol_91(
                i,
                (
                    SyncDecision::TargetUsingBitmap,
                    Some(UuidFixup::PeerCopy { uuids }),
                ),
            )
        },
    },
    UuidCompareRule {
        number: 37,
        scenario: "mirror of 36: we were SyncTarget and failed to write the sync UUID",
        applies: |i| i.currents_equal() && i.only_peer_has_bitmap(),
        decide: |i| from_protocol_91(i, plain(SyncDecision::TargetUsingBitmap)),
    },
    UuidCompareRule {
        number: 40,
        scenario: "same generation, neither crashed as Primary: a replication link hiccup, \
                   nothing to resync",
        applies: |i| i.currents_equal() && i.roles_at_crash_time() == 0,
        decide: |_| plain(SyncDecision::NoSync),
    },
    UuidCompareRule {
        number: 41,
        scenario: "same generation, someone crashed as Primary and someone is Primary now (IO \
                   was frozen, so no new UUID): the current Primary is the source, two \
                   Primaries cannot be resolved; needs a peer with feature WSAME (8.4.7+)",
        applies: |i| i.currents_equal() && i.roles_at_crash_time() != 0 && i.someone_primary(),
        decide: rule_41_primary_present,
    },
    UuidCompareRule {
        number: 40,
        scenario: "same generation, both Secondary, back from a simultaneous hard crash: the \
                   one that was Primary is the source; if both were, RESOLVE_CONFLICTS loses",
        applies: |i| i.currents_equal() && i.roles_at_crash_time() != 0,
        decide: rule_40_crash_arbitration,
    },
    UuidCompareRule {
        number: 50,
        scenario: "the peer's bitmap UUID is our current: the peer moved on from our generation \
                   and tracked its writes; we are behind by its bitmap",
        applies: |i| i.local_current() == masked(i.peer.uuids.bitmap),
        decide: |_| plain(SyncDecision::TargetUsingBitmap),
    },
    UuidCompareRule {
        number: 51,
        scenario: "our current is the peer's younger history and the peer holds a sync UUID it \
                   made as SyncSource that never reached us (P_SYNC_UUID lost): undo that \
                   rotation in our copy of its UUIDs and resync from its bitmap",
        applies: |i| {
            i.local_current() == masked(i.peer.uuids.history[0]) && i.peer_lost_sync_uuid()
        },
        decide: |i| {
            let uuids = sync_uuid_rotation_undone(i.peer.uuids);
            from_protocol_91(
                i,
                (
                    SyncDecision::TargetUsingBitmap,
                    Some(UuidFixup::PeerCopy { uuids }),
                ),
            )
        },
    },
    UuidCompareRule {
        number: 60,
        scenario: "our current is in the peer's history: we are further behind than a bitmap \
                   tells; full sync from the peer",
        applies: |i| {
            let p = &i.peer.uuids;
            i.local_current() == masked(p.history[0]) || i.local_current() == masked(p.history[1])
        },
        decide: |_| plain(SyncDecision::TargetFullSync),
    },
    UuidCompareRule {
        number: 70,
        scenario: "mirror of 50: our bitmap UUID is the peer's current: we moved on and tracked \
                   our writes; the peer is behind by our bitmap",
        applies: |i| masked(i.local.bitmap) == i.peer_current(),
        decide: |_| plain(SyncDecision::SourceUsingBitmap),
    },
    UuidCompareRule {
        number: 71,
        scenario: "mirror of 51: we started a resync as SyncSource and our P_SYNC_UUID never \
                   reached the peer: undo our own rotation",
        applies: |i| masked(i.local.history[0]) == i.peer_current() && i.local_lost_sync_uuid(),
        decide: |i| {
            let uuids = sync_uuid_rotation_undone(i.local);
            from_protocol_91(
                i,
                (
                    SyncDecision::SourceUsingBitmap,
                    Some(UuidFixup::Local { uuids }),
                ),
            )
        },
    },
    UuidCompareRule {
        number: 80,
        scenario: "mirror of 60: the peer's current is in our history: full sync to the peer",
        applies: |i| {
            let l = &i.local;
            i.peer_current() == masked(l.history[0]) || i.peer_current() == masked(l.history[1])
        },
        decide: |_| plain(SyncDecision::SourceFullSync),
    },
    UuidCompareRule {
        number: 90,
        scenario: "both moved on from the same generation (equal non-zero bitmap UUIDs): split \
                   brain, diverged from the same point; the after-sb policies may resolve it",
        applies: |i| {
            masked(i.local.bitmap) == masked(i.peer.uuids.bitmap) && masked(i.local.bitmap) != 0
        },
        decide: |_| plain(SyncDecision::SplitBrainAutoRecover),
    },
    UuidCompareRule {
        number: 100,
        scenario: "some history generation is shared (any slot pair, zero slots included, as \
                   in DRBD): split brain further back; disconnect",
        applies: any_history_shared,
        decide: |_| plain(SyncDecision::SplitBrainDisconnect),
    },
    UuidCompareRule {
        number: 0,
        scenario: "nothing in common: unrelated data",
        applies: |_| true,
        decide: |_| plain(SyncDecision::UnrelatedData),
    },
];

/// `drbd_uuid_compare()`: the first row of [`UUID_COMPARE_RULES`] that applies decides.
pub fn uuid_compare(input: &CompareInput) -> CompareOutcome {
    let rule = UUID_COMPARE_RULES
        .iter()
        .find(|rule| (rule.applies)(input))
        .expect("the last rule always applies");
    let (decision, fixup) = (rule.decide)(input);
    assert!(
        fixup.is_none() || matches!(rule.number, 34 | 35 | 51 | 71),
        "rule {} asked for a fixup",
        rule.number
    );
    CompareOutcome {
        decision,
        rule: rule.number,
        fixup,
    }
}

// ----------------------------------------------------------------------------------------
// Post-processing (drbd-v08-facts.md §4.4).
// ----------------------------------------------------------------------------------------

/// after-sb-0pri: split brain, no Primary now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AfterSb0pri {
    /// No automatic resolution.
    #[default]
    Disconnect,
    /// Discard the node that became Primary last; else as discard-older-primary.
    DiscardYoungerPrimary,
    /// Discard the node that was Primary first; else zero changes, then least changes.
    DiscardOlderPrimary,
    /// Discard a node without changes; both without: RESOLVE_CONFLICTS; both with: none.
    DiscardZeroChanges,
    /// Discard the node with fewer changes; a tie: RESOLVE_CONFLICTS.
    DiscardLeastChanges,
    /// Discard this node.
    DiscardLocal,
    /// Discard the peer.
    DiscardRemote,
}

/// after-sb-1pri: split brain, one Primary now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AfterSb1pri {
    /// No automatic resolution.
    #[default]
    Disconnect,
    /// The after-sb-0pri result, only if it discards the Secondary.
    Consensus,
    /// The after-sb-0pri result as is.
    ViolentlyAs0p,
    /// Discard the Secondary.
    DiscardSecondary,
    /// The after-sb-0pri result; a Primary it discards is demoted, or else the
    /// `pri-lost-after-sb` handler is called.
    CallPriLostAfterSb,
}

/// after-sb-2pri: split brain, two Primaries now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AfterSb2pri {
    /// No automatic resolution.
    #[default]
    Disconnect,
    /// The after-sb-0pri result as is.
    ViolentlyAs0p,
    /// As for after-sb-1pri.
    CallPriLostAfterSb,
}

/// rr-conflict: the decision makes a Primary with good data a SyncTarget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RrConflict {
    /// Refuse: disconnect.
    #[default]
    Disconnect,
    /// Call the `pri-lost` handler, then disconnect.
    CallPriLost,
    /// Become SyncTarget anyway.
    Violently,
}

/// The net options the handshake applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SplitBrainPolicy {
    /// after-sb-0pri (with the peer's discard-local/remote already swapped, as DRBD does).
    pub after_sb_0pri: AfterSb0pri,
    /// after-sb-1pri.
    pub after_sb_1pri: AfterSb1pri,
    /// after-sb-2pri.
    pub after_sb_2pri: AfterSb2pri,
    /// always-asbp: apply the policies to −100 too (then with a full sync).
    pub always_asbp: bool,
    /// rr-conflict.
    pub rr_conflict: RrConflict,
}

/// Everything the rest of `drbd_sync_handshake()` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeInput {
    /// [`uuid_compare`]'s decision (its fixup already applied).
    pub decision: SyncDecision,
    /// Our role.
    pub local_role: Role,
    /// The peer's role.
    pub peer_role: Role,
    /// Our disk as it will be after negotiation (DRBD's `mydisk`).
    pub local_disk: DiskState,
    /// Our disk now (Negotiating while attaching); only the rr-conflict rule uses it.
    pub local_disk_now: DiskState,
    /// The peer's disk ([`peer_disk_for_handshake`]).
    pub peer_disk: DiskState,
    /// Our bitmap UUID, raw: bit 0 says we were Primary when we left the common generation.
    pub local_bitmap_uuid: u64,
    /// The peer's bitmap UUID, raw (from our copy, after any fixup).
    pub peer_bitmap_uuid: u64,
    /// Bits set in our bitmap.
    pub local_bits_set: u64,
    /// Bits set in the peer's bitmap (P_UUIDS slot 4).
    pub peer_bits_set: u64,
    /// The peer's `UUID_FLAG_*` bits (P_UUIDS slot 5).
    pub peer_flags: u64,
    /// Our discard-my-data.
    pub local_discard_my_data: bool,
    /// This side holds RESOLVE_CONFLICTS.
    pub resolve_conflicts: bool,
    /// Would a demotion of this node to Secondary succeed now (call-pri-lost-after-sb tries
    /// one)?
    pub local_demotion_allowed: bool,
    /// The policies.
    pub policy: SplitBrainPolicy,
}

impl HandshakeInput {
    fn primaries(&self) -> u8 {
        u8::from(self.local_role == Role::Primary) + u8::from(self.peer_role == Role::Primary)
    }
}

/// A user-space handler DRBD calls during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handler {
    /// A split brain was detected (before any recovery).
    InitialSplitBrain,
    /// call-pri-lost-after-sb discards this Primary and it could not be demoted.
    PriLostAfterSb,
    /// The split brain stays unresolved; the connection is dropped.
    SplitBrain,
    /// rr-conflict call-pri-lost: this Primary would become SyncTarget.
    PriLost,
}

impl Handler {
    /// The handler's name in drbd.conf.
    pub fn name(self) -> &'static str {
        match self {
            Handler::InitialSplitBrain => "initial-split-brain",
            Handler::PriLostAfterSb => "pri-lost-after-sb",
            Handler::SplitBrain => "split-brain",
            Handler::PriLost => "pri-lost",
        }
    }
}

/// One thing to do, in order, before acting on [`HandshakePlan::outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeStep {
    /// Run the handler and wait for it.
    CallHandler(Handler),
    /// Demote this node to Secondary (call-pri-lost-after-sb); the plan assumed it succeeds
    /// ([`HandshakeInput::local_demotion_allowed`]).
    BecomeSecondary,
}

/// The most steps a plan holds: initial-split-brain, a demotion or pri-lost-after-sb, then
/// split-brain or pri-lost.
pub const MAX_HANDSHAKE_STEPS: usize = 3;

/// Which way data flows after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncDirection {
    /// In sync: Connected.
    None,
    /// This node sends: WFBitMapS, then SyncSource.
    Source,
    /// This node receives: WFBitMapT, then SyncTarget.
    Target,
}

/// Why the handshake drops the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// "Unrelated data, aborting!"
    UnrelatedData,
    /// "To resolve this both sides have to support at least protocol …".
    NeedsProtocol {
        /// The protocol version needed.
        min: u32,
        /// The feature flags needed (0: none).
        features: u32,
    },
    /// "Split-Brain detected but unresolved, dropping connection!"
    SplitBrainUnresolved,
    /// "I shall become SyncSource, but I am inconsistent!"
    InconsistentWouldBeSource,
    /// "I shall become SyncTarget, but I am primary!" (rr-conflict).
    PrimaryWouldBeTarget,
    /// "I shall become SyncTarget, but the peer is inconsistent!" (udrbd's own).
    TargetOfInconsistentPeer,
}

/// What the handshake ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeOutcome {
    /// Go on: with a full sync, set and write every bitmap bit first.
    Connect {
        /// Which way the resync goes.
        direction: SyncDirection,
        /// Set all bits (|result| = 2).
        full_sync: bool,
    },
    /// Drop the connection.
    Disconnect {
        /// Why.
        reason: DisconnectReason,
    },
}

/// How a detected split brain was (or was not) resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitBrainResolution {
    /// By the after-sb policy for the number of Primaries; `full_sync_forced` when it
    /// resolved a −100 (always-asbp): "Doing a full sync, since UUIDs where ambiguous."
    Automatic {
        /// The result was doubled to a full sync.
        full_sync_forced: bool,
    },
    /// By discard-my-data on exactly one side.
    Manual,
    /// Not resolved.
    Unresolved,
}

/// A split brain the handshake saw (after the disk-state override).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SplitBrainReport {
    /// Primaries at handshake time (selects the after-sb policy).
    pub primaries: u8,
    /// +100 or −100.
    pub detected: SyncDecision,
    /// How it ended.
    pub resolution: SplitBrainResolution,
}

/// What the engine does after the handshake: [`HandshakePlan::steps`] in order, then
/// [`HandshakePlan::outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandshakePlan {
    steps: [Option<HandshakeStep>; MAX_HANDSHAKE_STEPS],
    /// The decision after post-processing (DRBD's final `hg`).
    pub decision: SyncDecision,
    /// The end.
    pub outcome: HandshakeOutcome,
    /// "Becoming sync source/target due to disk states."
    pub disk_state_override: bool,
    /// A split brain was seen (±100 after the disk-state override).
    pub split_brain: Option<SplitBrainReport>,
    /// rr-conflict violently let a Primary become SyncTarget: "Becoming SyncTarget,
    /// violating the stable-data assumption".
    pub target_while_primary: bool,
}

impl HandshakePlan {
    fn new(decision: SyncDecision) -> HandshakePlan {
        HandshakePlan {
            steps: [None; MAX_HANDSHAKE_STEPS],
            decision,
            outcome: HandshakeOutcome::Connect {
                direction: SyncDirection::None,
                full_sync: false,
            },
            disk_state_override: false,
            split_brain: None,
            target_while_primary: false,
        }
    }

    /// The handlers to call and the demotion to do, in order.
    pub fn steps(&self) -> impl Iterator<Item = HandshakeStep> + '_ {
        self.steps.iter().map_while(|s| *s)
    }

    fn push(&mut self, step: HandshakeStep) {
        let free = self
            .steps
            .iter_mut()
            .find(|s| s.is_none())
            .expect("a handshake plan has at most MAX_HANDSHAKE_STEPS steps");
        *free = Some(step);
    }

    fn disconnect(mut self, reason: DisconnectReason) -> HandshakePlan {
        self.outcome = HandshakeOutcome::Disconnect { reason };
        self
    }

    fn resolve_split_brain(&mut self, resolution: SplitBrainResolution) {
        let report = self.split_brain.as_mut().expect("split brain seen first");
        report.resolution = resolution;
    }
}

/// The rest of `drbd_sync_handshake()` after the compare (drbd-v08-facts.md §4.4), in
/// DRBD's order. Dry-run connects (`--tentative`) are the engine's business: it plans, then
/// disconnects.
pub fn post_process(input: &HandshakeInput) -> HandshakePlan {
    let mut plan = HandshakePlan::new(input.decision);
    match input.decision {
        SyncDecision::UnrelatedData => {
            return plan.disconnect(DisconnectReason::UnrelatedData);
        }
        SyncDecision::NeedsProtocol { min, features } => {
            return plan.disconnect(DisconnectReason::NeedsProtocol { min, features });
        }
        _ => {}
    }
    let mut hg = disk_state_override(input, &mut plan);
    let mut local_role = input.local_role;
    if hg.is_split_brain() {
        plan.push(HandshakeStep::CallHandler(Handler::InitialSplitBrain));
        plan.split_brain = Some(SplitBrainReport {
            primaries: input.primaries(),
            detected: hg,
            resolution: SplitBrainResolution::Unresolved,
        });
        hg = after_split_brain_policy(input, hg, &mut plan, &mut local_role);
        hg = discard_my_data(input, hg, &mut plan);
    }
    plan.decision = hg;
    if hg == SyncDecision::SplitBrainDisconnect {
        plan.push(HandshakeStep::CallHandler(Handler::SplitBrain));
        return plan.disconnect(DisconnectReason::SplitBrainUnresolved);
    }
    assert!(
        !hg.is_split_brain(),
        "{hg:?} survived the split-brain steps"
    );
    if hg.is_source() && input.local_disk <= DiskState::Inconsistent {
        return plan.disconnect(DisconnectReason::InconsistentWouldBeSource);
    }
    // udrbd's own mirror of the check above (DRBD has none): a SyncTarget needs a source
    // with data. Two Inconsistent disks whose UUIDs had crossed (each had moved on from the
    // other's current UUID) both decided "target", and each waited for the other's bitmap
    // for ever, also after one was forced UpToDate (swarm seed 4213). The connection is
    // refused instead; once one side has data, the disk states decide.
    if hg.is_target() && input.peer_disk == DiskState::Inconsistent {
        return plan.disconnect(DisconnectReason::TargetOfInconsistentPeer);
    }
    // By intention the disk *now*, not the negotiated one: no rr-conflict while attaching.
    if hg.is_target()
        && local_role == Role::Primary
        && input.local_disk_now >= DiskState::Consistent
    {
        match input.policy.rr_conflict {
            RrConflict::Disconnect => {
                return plan.disconnect(DisconnectReason::PrimaryWouldBeTarget);
            }
            RrConflict::CallPriLost => {
                plan.push(HandshakeStep::CallHandler(Handler::PriLost));
                return plan.disconnect(DisconnectReason::PrimaryWouldBeTarget);
            }
            RrConflict::Violently => plan.target_while_primary = true,
        }
    }
    let direction = if hg.is_source() {
        SyncDirection::Source
    } else if hg.is_target() {
        SyncDirection::Target
    } else {
        SyncDirection::None
    };
    plan.outcome = HandshakeOutcome::Connect {
        direction,
        full_sync: hg.is_full_sync(),
    };
    plan
}

/// Step 1: exactly one side Inconsistent forces the direction; a full sync stays one (and a
/// −100 becomes one).
fn disk_state_override(input: &HandshakeInput, plan: &mut HandshakePlan) -> SyncDecision {
    let (mine, peers) = (input.local_disk, input.peer_disk);
    let inconsistent = DiskState::Inconsistent;
    let one_side = (mine == inconsistent && peers > inconsistent)
        || (peers == inconsistent && mine > inconsistent);
    if !one_side {
        return input.decision;
    }
    plan.disk_state_override = true;
    let full =
        input.decision == SyncDecision::SplitBrainDisconnect || input.decision.is_full_sync();
    let forced = if mine > inconsistent {
        SyncDecision::SourceUsingBitmap
    } else {
        SyncDecision::TargetUsingBitmap
    };
    if full { forced.doubled() } else { forced }
}

/// Step 3: +100, or −100 with always-asbp, goes to the policy for the number of Primaries;
/// a resolved −100 becomes a full sync.
fn after_split_brain_policy(
    input: &HandshakeInput,
    hg: SyncDecision,
    plan: &mut HandshakePlan,
    local_role: &mut Role,
) -> SyncDecision {
    let forced = hg == SyncDecision::SplitBrainDisconnect;
    if forced && !input.policy.always_asbp {
        return hg;
    }
    let resolved = match input.primaries() {
        0 => recover_0pri(input),
        1 => recover_1pri(input, plan, local_role),
        _ => recover_2pri(input, plan, local_role),
    };
    if resolved.is_split_brain() {
        return SyncDecision::SplitBrainDisconnect;
    }
    plan.resolve_split_brain(SplitBrainResolution::Automatic {
        full_sync_forced: forced,
    });
    if forced { resolved.doubled() } else { resolved }
}

/// Step 4: a remaining −100 is resolved by discard-my-data on exactly one side.
fn discard_my_data(
    input: &HandshakeInput,
    hg: SyncDecision,
    plan: &mut HandshakePlan,
) -> SyncDecision {
    if hg != SyncDecision::SplitBrainDisconnect {
        return hg;
    }
    let peer_discards = input.peer_flags & UUID_FLAG_DISCARD_MY_DATA != 0;
    let resolved = match (input.local_discard_my_data, peer_discards) {
        (true, false) => SyncDecision::TargetUsingBitmap,
        (false, true) => SyncDecision::SourceUsingBitmap,
        _ => return hg,
    };
    plan.resolve_split_brain(SplitBrainResolution::Manual);
    resolved
}

/// discard-younger-primary: the side whose bitmap UUID has bit 0 clear left the common
/// generation as Secondary and became Primary later: it is discarded.
fn discard_younger_primary(input: &HandshakeInput) -> Option<SyncDecision> {
    match (input.local_bitmap_uuid & 1, input.peer_bitmap_uuid & 1) {
        (0, 1) => Some(SyncDecision::TargetUsingBitmap),
        (1, 0) => Some(SyncDecision::SourceUsingBitmap),
        _ => None,
    }
}

/// discard-older-primary: the reverse.
fn discard_older_primary(input: &HandshakeInput) -> Option<SyncDecision> {
    match (input.local_bitmap_uuid & 1, input.peer_bitmap_uuid & 1) {
        (0, 1) => Some(SyncDecision::SourceUsingBitmap),
        (1, 0) => Some(SyncDecision::TargetUsingBitmap),
        _ => None,
    }
}

/// RESOLVE_CONFLICTS loses a tie.
fn tie_break(input: &HandshakeInput) -> SyncDecision {
    if input.resolve_conflicts {
        SyncDecision::TargetUsingBitmap
    } else {
        SyncDecision::SourceUsingBitmap
    }
}

/// discard-zero-changes: undecided when both sides changed something.
fn discard_zero_changes(input: &HandshakeInput) -> Option<SyncDecision> {
    match (input.local_bits_set, input.peer_bits_set) {
        (0, 0) => Some(tie_break(input)),
        (_, 0) => Some(SyncDecision::SourceUsingBitmap),
        (0, _) => Some(SyncDecision::TargetUsingBitmap),
        _ => None,
    }
}

/// discard-least-changes: always decides.
fn discard_least_changes(input: &HandshakeInput) -> SyncDecision {
    match input.local_bits_set.cmp(&input.peer_bits_set) {
        std::cmp::Ordering::Less => SyncDecision::TargetUsingBitmap,
        std::cmp::Ordering::Greater => SyncDecision::SourceUsingBitmap,
        std::cmp::Ordering::Equal => tie_break(input),
    }
}

/// `drbd_asb_recover_0p`: ±1, or −100 when undecided. The younger/older strategies fall
/// through to zero-changes and then least-changes, as DRBD's `switch` does.
fn recover_0pri(input: &HandshakeInput) -> SyncDecision {
    let undecided = SyncDecision::SplitBrainDisconnect;
    let zero_then_least =
        || discard_zero_changes(input).unwrap_or_else(|| discard_least_changes(input));
    match input.policy.after_sb_0pri {
        AfterSb0pri::Disconnect => undecided,
        AfterSb0pri::DiscardYoungerPrimary => discard_younger_primary(input)
            .or_else(|| discard_older_primary(input))
            .unwrap_or_else(zero_then_least),
        AfterSb0pri::DiscardOlderPrimary => {
            discard_older_primary(input).unwrap_or_else(zero_then_least)
        }
        AfterSb0pri::DiscardZeroChanges => discard_zero_changes(input).unwrap_or(undecided),
        AfterSb0pri::DiscardLeastChanges => discard_least_changes(input),
        AfterSb0pri::DiscardLocal => SyncDecision::TargetUsingBitmap,
        AfterSb0pri::DiscardRemote => SyncDecision::SourceUsingBitmap,
    }
}

/// `drbd_asb_recover_1p`.
fn recover_1pri(
    input: &HandshakeInput,
    plan: &mut HandshakePlan,
    local_role: &mut Role,
) -> SyncDecision {
    let primary = input.local_role == Role::Primary;
    match input.policy.after_sb_1pri {
        AfterSb1pri::Disconnect => SyncDecision::SplitBrainDisconnect,
        AfterSb1pri::Consensus => match recover_0pri(input) {
            SyncDecision::TargetUsingBitmap if !primary => SyncDecision::TargetUsingBitmap,
            SyncDecision::SourceUsingBitmap if primary => SyncDecision::SourceUsingBitmap,
            _ => SyncDecision::SplitBrainDisconnect,
        },
        AfterSb1pri::ViolentlyAs0p => recover_0pri(input),
        AfterSb1pri::DiscardSecondary if primary => SyncDecision::SourceUsingBitmap,
        AfterSb1pri::DiscardSecondary => SyncDecision::TargetUsingBitmap,
        AfterSb1pri::CallPriLostAfterSb => {
            call_pri_lost_after_sb(input, recover_0pri(input), plan, local_role)
        }
    }
}

/// `drbd_asb_recover_2p`.
fn recover_2pri(
    input: &HandshakeInput,
    plan: &mut HandshakePlan,
    local_role: &mut Role,
) -> SyncDecision {
    match input.policy.after_sb_2pri {
        AfterSb2pri::Disconnect => SyncDecision::SplitBrainDisconnect,
        AfterSb2pri::ViolentlyAs0p => recover_0pri(input),
        AfterSb2pri::CallPriLostAfterSb => {
            call_pri_lost_after_sb(input, recover_0pri(input), plan, local_role)
        }
    }
}

/// call-pri-lost-after-sb: a discarded Primary (this node) is demoted; if it cannot be, the
/// `pri-lost-after-sb` handler runs and the split brain stays unresolved.
fn call_pri_lost_after_sb(
    input: &HandshakeInput,
    hg: SyncDecision,
    plan: &mut HandshakePlan,
    local_role: &mut Role,
) -> SyncDecision {
    if hg != SyncDecision::TargetUsingBitmap || *local_role != Role::Primary {
        return hg;
    }
    if input.local_demotion_allowed {
        plan.push(HandshakeStep::BecomeSecondary);
        *local_role = Role::Secondary;
        hg
    } else {
        plan.push(HandshakeStep::CallHandler(Handler::PriLostAfterSb));
        SyncDecision::SplitBrainDisconnect
    }
}

// ----------------------------------------------------------------------------------------
// UUID transitions (drbd-v08-facts.md §4.2).
// ----------------------------------------------------------------------------------------

/// DRBD's `drbd_uuid_set` on the bitmap slot ("set with history"): a non-zero old bitmap
/// UUID is pushed into the history first.
fn bitmap_set_with_history(set: UuidSet, bitmap: u64) -> UuidSet {
    let history = if set.bitmap != 0 {
        [set.bitmap, set.history[0]]
    } else {
        set.history
    };
    UuidSet {
        current: set.current,
        bitmap,
        history,
    }
}

/// "New current": bitmap := current (raw, so bit 0 keeps whether we were Primary),
/// current := `random` with bit 0 = role. The caller warns if the bitmap UUID was set, and
/// writes the result to disk at once.
pub fn new_current_uuid(set: UuidSet, random: u64, primary: bool) -> UuidSet {
    assert!(
        masked(random) > UUID_JUST_CREATED,
        "not a fresh UUID: {random:#x}"
    );
    UuidSet {
        current: with_role_bit(random, primary),
        bitmap: set.current,
        history: set.history,
    }
}

/// Resync start on the SyncSource: the sync UUID is the old bitmap UUID + offset (`random`
/// if the bitmap UUID was 0 or JUST_CREATED), set into the bitmap slot with history. Returns
/// the new set and the sync UUID to send in P_SYNC_UUID.
pub fn resync_start_source(set: UuidSet, random: u64) -> (UuidSet, u64) {
    let sync_uuid = if set.bitmap != 0 && set.bitmap != UUID_JUST_CREATED {
        set.bitmap.wrapping_add(UUID_NEW_BM_OFFSET)
    } else {
        assert!(
            masked(random) > UUID_JUST_CREATED,
            "not a fresh UUID: {random:#x}"
        );
        random
    };
    let next = bitmap_set_with_history(set, sync_uuid);
    assert_eq!(next.bitmap, sync_uuid);
    (next, sync_uuid)
}

/// The SyncTarget received P_SYNC_UUID: current := sync UUID (bit 0 = role), bitmap := 0;
/// no history rotation.
pub fn sync_target_received(set: UuidSet, sync_uuid: u64, primary: bool) -> UuidSet {
    UuidSet {
        current: with_role_bit(sync_uuid, primary),
        bitmap: 0,
        history: set.history,
    }
}

/// Resync finished on the SyncTarget (no failed blocks, not a verify run): take the peer's
/// bitmap and history UUIDs, set our current as bitmap UUID with history, take the peer's
/// current (bit 0 = our role). `peer` is our copy of the source's UUIDs (from the
/// handshake). Then both sides apply [`clear_bitmap_uuid`].
pub fn resync_finished_target(local: UuidSet, peer: UuidSet, primary: bool) -> UuidSet {
    let adopted = UuidSet {
        current: local.current,
        bitmap: peer.bitmap,
        history: peer.history,
    };
    let rotated = bitmap_set_with_history(adopted, local.current);
    UuidSet {
        current: with_role_bit(peer.current, primary),
        ..rotated
    }
}

/// "Clear bitmap UUID" (`drbd_uuid_set_bm(0)`): history[1] := history[0],
/// history[0] := bitmap, bitmap := 0; nothing if the bitmap UUID is already 0.
pub fn clear_bitmap_uuid(set: UuidSet) -> UuidSet {
    if set.bitmap == 0 {
        return set;
    }
    UuidSet {
        current: set.current,
        bitmap: 0,
        history: [set.bitmap, set.history[0]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JC: u64 = UUID_JUST_CREATED;
    const OFF: u64 = UUID_NEW_BM_OFFSET;
    const A: u64 = 0x5eed_0000_0000_a000;
    const B: u64 = 0x5eed_0000_0000_b000;
    const C: u64 = 0x5eed_0000_0000_c000;
    const X: u64 = 0x5eed_0000_0000_e000;

    fn set(current: u64, bitmap: u64, h0: u64, h1: u64) -> UuidSet {
        UuidSet::from_array([current, bitmap, h0, h1])
    }

    /// Both Secondary, nobody crashed, protocol 101 with WSAME.
    fn input(local: UuidSet, peer: UuidSet) -> CompareInput {
        CompareInput {
            local,
            local_crashed_primary: false,
            resolve_conflicts: false,
            peer: PeerUuids {
                uuids: peer,
                bits_set: 0,
                flags: 0,
            },
            agreed_protocol: 101,
            agreed_features: FEATURE_WSAME,
            local_role: Role::Secondary,
            peer_role: Role::Secondary,
        }
    }

    /// The same handshake as the peer sees it.
    fn swapped(i: &CompareInput) -> CompareInput {
        CompareInput {
            local: i.peer.uuids,
            local_crashed_primary: i.peer.crashed_primary(),
            resolve_conflicts: !i.resolve_conflicts,
            peer: PeerUuids {
                uuids: i.local,
                bits_set: 0,
                flags: if i.local_crashed_primary {
                    UUID_FLAG_CRASHED_PRIMARY
                } else {
                    0
                },
            },
            agreed_protocol: i.agreed_protocol,
            agreed_features: i.agreed_features,
            local_role: i.peer_role,
            peer_role: i.local_role,
        }
    }

    #[track_caller]
    fn check(i: &CompareInput, rule: u16, decision: SyncDecision) -> CompareOutcome {
        let out = uuid_compare(i);
        assert_eq!((out.rule, out.decision), (rule, decision), "{i:?}");
        out
    }

    /// DRBD's `drbd_uuid_compare()` written again as the if-chain it is, to cross-check the
    /// table: DRBD's code, the rule number DRBD logs, and the repair.
    fn drbd_reference(i: &CompareInput) -> (i32, u16, Option<UuidFixup>) {
        let m = masked;
        let (l, p, proto) = (i.local, i.peer.uuids, i.agreed_protocol);
        let (s, q) = (m(l.current), m(p.current));
        if s == JC && q == JC {
            return (0, 10, None);
        }
        if (s == JC || s == 0) && q != JC {
            return (-2, 20, None);
        }
        if s != JC && (q == JC || q == 0) {
            return (2, 30, None);
        }
        if s == q {
            if p.bitmap == 0 && l.bitmap != 0 {
                if proto < 91 {
                    return (-1091, 30, None); // DRBD's rule_nr still says 30 here.
                }
                if m(l.bitmap) == m(p.history[0]) && m(l.history[0]) == m(p.history[1]) {
                    let uuids = set(l.current, 0, l.bitmap, l.history[0]);
                    return (1, 34, Some(UuidFixup::Local { uuids }));
                }
                return (1, 36, None);
            }
            if l.bitmap == 0 && p.bitmap != 0 {
                if proto < 91 {
                    return (-1091, 30, None);
                }
                if m(l.history[0]) == m(p.bitmap) && m(l.history[1]) == m(p.history[0]) {
                    let uuids = set(p.current, 0, p.bitmap, p.history[0]);
                    return (-1, 35, Some(UuidFixup::PeerCopy { uuids }));
                }
                return (-1, 37, None);
            }
            let rct = u64::from(i.local_crashed_primary) + (i.peer.flags & 2);
            if rct == 0 {
                return (0, 40, None);
            }
            let (lp, pp) = (i.local_role == Role::Primary, i.peer_role == Role::Primary);
            if lp || pp {
                if i.agreed_features & 4 == 0 {
                    return (-(0x10000 | 101 | (4 << 8)), 41, None);
                }
                return match (lp, pp) {
                    (true, true) => (-100, 41, None),
                    (true, false) => (1, 41, None),
                    _ => (-1, 41, None),
                };
            }
            return match rct {
                1 => (1, 40, None),
                2 => (-1, 40, None),
                _ if i.resolve_conflicts => (-1, 40, None),
                _ => (1, 40, None),
            };
        }
        if s == m(p.bitmap) {
            return (-1, 50, None);
        }
        if s == m(p.history[0]) {
            let lost = if proto < 96 {
                m(l.history[0]) == m(p.history[1])
            } else {
                m(p.history[0]).wrapping_add(OFF) == m(p.bitmap)
            };
            if lost {
                if proto < 91 {
                    return (-1091, 51, None);
                }
                let uuids = set(p.current, p.history[0], p.history[1], p.history[1]);
                return (-1, 51, Some(UuidFixup::PeerCopy { uuids }));
            }
        }
        if s == m(p.history[0]) || s == m(p.history[1]) {
            return (-2, 60, None);
        }
        if m(l.bitmap) == q {
            return (1, 70, None);
        }
        if m(l.history[0]) == q {
            let lost = if proto < 96 {
                m(l.history[1]) == m(p.history[0])
            } else {
                m(l.history[0]).wrapping_add(OFF) == m(l.bitmap)
            };
            if lost {
                if proto < 91 {
                    return (-1091, 71, None);
                }
                let uuids = set(l.current, l.history[0], l.history[1], l.history[1]);
                return (1, 71, Some(UuidFixup::Local { uuids }));
            }
        }
        if q == m(l.history[0]) || q == m(l.history[1]) {
            return (2, 80, None);
        }
        if m(l.bitmap) == m(p.bitmap) && m(l.bitmap) != 0 {
            return (100, 90, None);
        }
        for a in l.history {
            for b in p.history {
                if m(a) == m(b) {
                    return (-100, 100, None);
                }
            }
        }
        (-1000, 100, None) // DRBD's rule_nr still says 100 here.
    }

    /// Cross-checks one input: the table against DRBD's chain, the first-match rule, and
    /// antisymmetry. Returns the index of the row that decided.
    fn cross_check(i: &CompareInput) -> usize {
        let out = uuid_compare(i);
        let (code, drbd_rule, fixup) = drbd_reference(i);
        assert_eq!(out.decision.code(), code, "{i:?}");
        assert_eq!(out.fixup, fixup, "{i:?}");
        let rule_ok = match (code, drbd_rule) {
            (-1091, 30) => matches!(out.rule, 34..=37),
            (-1000, 100) => out.rule == 0,
            _ => out.rule == drbd_rule,
        };
        assert!(
            rule_ok,
            "table rule {} vs DRBD {drbd_rule}: {i:?}",
            out.rule
        );
        let first = UUID_COMPARE_RULES
            .iter()
            .position(|r| (r.applies)(i))
            .expect("the last row matches everything");
        let row = &UUID_COMPARE_RULES[first];
        assert_eq!(row.number, out.rule);
        assert_eq!((row.decide)(i), (out.decision, out.fixup));
        check_antisymmetry(i, out.decision);
        first
    }

    /// Where DRBD's decision is not antisymmetric although it is a direction.
    fn antisymmetry_exception(i: &CompareInput) -> Option<&'static str> {
        let (l, p) = (&i.local, &i.peer.uuids);
        let (s, q) = (masked(l.current), masked(p.current));
        if s == 0 && q == 0 {
            return Some("both currents zero: rule 20 makes both sides SyncTarget");
        }
        let toward_local = [p.bitmap, p.history[0], p.history[1]]
            .iter()
            .any(|&u| masked(u) == s);
        let toward_peer = [l.bitmap, l.history[0], l.history[1]]
            .iter()
            .any(|&u| masked(u) == q);
        if s != q && toward_local && toward_peer {
            return Some("crossed histories: each current is in the other's bitmap or history");
        }
        None
    }

    /// Swapping the sides negates a direction (±1, ±2, 0) and keeps everything else (split
    /// brain, unrelated data, needs protocol): both sides reach the same verdict.
    fn check_antisymmetry(i: &CompareInput, decision: SyncDecision) {
        let theirs = uuid_compare(&swapped(i)).decision;
        let code = decision.code();
        let expected = if code.abs() <= 2 { -code } else { code };
        if theirs.code() != expected {
            assert!(
                antisymmetry_exception(i).is_some(),
                "{decision:?} vs peer's {theirs:?}: {i:?}"
            );
        }
    }

    const UNIVERSE: [u64; 7] = [0, JC, A, A | 1, B, B + OFF, C];

    /// A configuration from 8 bits: crashed flags, RESOLVE_CONFLICTS, roles, protocol
    /// (90, 95, 96, 101) and WSAME.
    fn configured(mut i: CompareInput, bits: u8) -> CompareInput {
        let role = |b: bool| if b { Role::Primary } else { Role::Secondary };
        i.local_crashed_primary = bits & 1 != 0;
        if bits & 2 != 0 {
            i.peer.flags |= UUID_FLAG_CRASHED_PRIMARY;
        }
        i.resolve_conflicts = bits & 4 != 0;
        i.local_role = role(bits & 8 != 0);
        i.peer_role = role(bits & 16 != 0);
        i.agreed_protocol = [90, 95, 96, 101][usize::from((bits >> 5) & 3)];
        i.agreed_features = if bits & 128 != 0 { FEATURE_WSAME } else { 0 };
        i
    }

    fn from_digits(mut index: u64, universe: &[u64], slots: &mut [u64]) {
        let n = universe.len() as u64;
        for slot in slots.iter_mut() {
            *slot = universe[(index % n) as usize];
            index /= n;
        }
    }

    /// Every combination of the eight UUIDs over the universe, each with a configuration
    /// mixed from its index: every input is decided by exactly one row (the first that
    /// matches), agrees with DRBD's chain, never panics, and is antisymmetric except for the
    /// documented cases. Every row decides some input.
    #[test]
    fn enumerate_all_uuid_combinations() {
        let n = UNIVERSE.len() as u64;
        let mut hits = [0u64; UUID_COMPARE_RULES.len()];
        for index in 0..n.pow(8) {
            let mut s = [0u64; 8];
            from_digits(index, &UNIVERSE, &mut s);
            let base = input(set(s[0], s[1], s[2], s[3]), set(s[4], s[5], s[6], s[7]));
            let bits = (index.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
            hits[cross_check(&configured(base, bits))] += 1;
        }
        for (row, count) in UUID_COMPARE_RULES.iter().zip(hits) {
            assert!(
                count > 0,
                "rule {} never decided: {}",
                row.number,
                row.scenario
            );
        }
    }

    /// Equal currents (rules 34–41) with every configuration.
    #[test]
    fn enumerate_equal_currents_every_configuration() {
        let universe = [0, A, A | 1, B, B + OFF, C];
        let n = universe.len() as u64;
        for index in 0..n.pow(6) {
            let mut s = [0u64; 6];
            from_digits(index, &universe, &mut s);
            let base = input(set(X, s[0], s[1], s[2]), set(X | 1, s[3], s[4], s[5]));
            for bits in 0..=u8::MAX {
                let i = configured(base, bits);
                let row = cross_check(&i);
                assert!((3..=9).contains(&row), "{i:?}");
            }
        }
    }

    fn arb_uuid() -> impl Strategy<Value = u64> {
        prop_oneof![
            8 => proptest::sample::select(UNIVERSE.to_vec()),
            1 => any::<u64>(),
        ]
    }

    fn arb_set() -> impl Strategy<Value = UuidSet> {
        [arb_uuid(), arb_uuid(), arb_uuid(), arb_uuid()].prop_map(UuidSet::from_array)
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        proptest::sample::select(vec![Role::Primary, Role::Secondary, Role::Unknown])
    }

    fn arb_compare_input() -> impl Strategy<Value = CompareInput> {
        (
            (arb_set(), arb_set(), any::<bool>(), any::<bool>()),
            (any::<u64>(), any::<u64>(), 86u32..=101, 0u32..8),
            (arb_role(), arb_role()),
        )
            .prop_map(
                |((l, p, crashed, rc), (bits_set, flags, proto, features), roles)| CompareInput {
                    local: l,
                    local_crashed_primary: crashed,
                    resolve_conflicts: rc,
                    peer: PeerUuids {
                        uuids: p,
                        bits_set,
                        flags,
                    },
                    agreed_protocol: proto,
                    agreed_features: features,
                    local_role: roles.0,
                    peer_role: roles.1,
                },
            )
    }

    proptest! {
        #[test]
        fn table_agrees_with_drbd_chain(i in arb_compare_input()) {
            cross_check(&i);
        }
    }

    // ---- One test per row. -------------------------------------------------------------

    #[test]
    fn rule_10_both_just_created() {
        check(
            &input(set(JC, 0, 0, 0), set(JC | 1, 0, 0, 0)),
            10,
            SyncDecision::NoSync,
        );
    }

    #[test]
    fn rule_20_we_have_no_generation() {
        let d = SyncDecision::TargetFullSync;
        check(&input(set(JC, 0, 0, 0), set(A, 0, 0, 0)), 20, d);
        check(&input(set(0, 0, 0, 0), set(A, 0, 0, 0)), 20, d);
    }

    #[test]
    fn rule_30_peer_has_no_generation() {
        let d = SyncDecision::SourceFullSync;
        check(&input(set(A, 0, 0, 0), set(JC, 0, 0, 0)), 30, d);
        check(&input(set(A, 0, 0, 0), set(0, 0, 0, 0)), 30, d);
    }

    /// The source X held bitmap A; the sync UUID is A + OFF; history before: [B, 0].
    fn source_mid_resync() -> UuidSet {
        set(X, A + OFF, A, B)
    }

    fn finished_set() -> UuidSet {
        set(X, 0, A + OFF, A)
    }

    #[test]
    fn rule_34_source_missed_resync_finished() {
        let out = check(
            &input(source_mid_resync(), finished_set()),
            34,
            SyncDecision::SourceUsingBitmap,
        );
        let uuids = finished_set();
        assert_eq!(out.fixup, Some(UuidFixup::Local { uuids }));
    }

    #[test]
    fn rule_36_peer_failed_to_write_sync_uuid() {
        let i = input(source_mid_resync(), set(X, 0, B, 0));
        let out = check(&i, 36, SyncDecision::SourceUsingBitmap);
        assert_eq!(out.fixup, None);
    }

    #[test]
    fn rule_35_peer_missed_resync_finished() {
        let i = input(finished_set(), source_mid_resync());
        let out = check(&i, 35, SyncDecision::TargetUsingBitmap);
        let uuids = finished_set();
        assert_eq!(out.fixup, Some(UuidFixup::PeerCopy { uuids }));
    }

    #[test]
    fn rule_37_we_failed_to_write_sync_uuid() {
        let i = input(set(X, 0, B, 0), source_mid_resync());
        check(&i, 37, SyncDecision::TargetUsingBitmap);
    }

    #[test]
    fn rules_34_to_37_need_protocol_91() {
        let needs = SyncDecision::NeedsProtocol {
            min: 91,
            features: 0,
        };
        for (l, p, rule) in [
            (source_mid_resync(), finished_set(), 34),
            (source_mid_resync(), set(X, 0, B, 0), 36),
            (finished_set(), source_mid_resync(), 35),
            (set(X, 0, B, 0), source_mid_resync(), 37),
        ] {
            let mut i = input(l, p);
            i.agreed_protocol = 90;
            let out = check(&i, rule, needs);
            assert_eq!((out.fixup, out.decision.code()), (None, -1091));
        }
    }

    #[test]
    fn rule_40_link_hiccup() {
        check(
            &input(set(X, 0, A, B), set(X | 1, 0, A, B)),
            40,
            SyncDecision::NoSync,
        );
        // Both with a bitmap UUID (both moved on identically) is also just a hiccup.
        check(
            &input(set(X, A, B, 0), set(X, C, B, 0)),
            40,
            SyncDecision::NoSync,
        );
    }

    #[test]
    fn rule_41_primary_present_after_crash() {
        let mut i = input(set(X, 0, A, 0), set(X, 0, A, 0));
        i.local_crashed_primary = true;
        i.local_role = Role::Primary;
        check(&i, 41, SyncDecision::SourceUsingBitmap);
        i.local_role = Role::Secondary;
        i.peer_role = Role::Primary;
        check(&i, 41, SyncDecision::TargetUsingBitmap);
        i.local_role = Role::Primary;
        check(&i, 41, SyncDecision::SplitBrainDisconnect);
        i.agreed_features = 0;
        let out = check(
            &i,
            41,
            SyncDecision::NeedsProtocol {
                min: 101,
                features: FEATURE_WSAME,
            },
        );
        assert_eq!(out.decision.code(), -(0x10000 | 101 | 0x400));
    }

    #[test]
    fn rule_40_crash_arbitration_both_secondary() {
        let mut i = input(set(X, 0, A, 0), set(X, 0, A, 0));
        i.local_crashed_primary = true;
        check(&i, 40, SyncDecision::SourceUsingBitmap);
        i.local_crashed_primary = false;
        i.peer.flags = UUID_FLAG_CRASHED_PRIMARY;
        check(&i, 40, SyncDecision::TargetUsingBitmap);
        i.local_crashed_primary = true;
        check(&i, 40, SyncDecision::SourceUsingBitmap);
        i.resolve_conflicts = true;
        check(&i, 40, SyncDecision::TargetUsingBitmap);
        // Older peers without WSAME still arbitrate when both are Secondary.
        i.agreed_features = 0;
        check(&i, 40, SyncDecision::TargetUsingBitmap);
    }

    #[test]
    fn rule_50_peer_moved_on_from_our_generation() {
        check(
            &input(set(A, 0, B, 0), set(C, A | 1, B, 0)),
            50,
            SyncDecision::TargetUsingBitmap,
        );
    }

    #[test]
    fn rule_51_lost_sync_uuid_protocol_96() {
        // The peer started a resync as source from bitmap A (our current); P_SYNC_UUID lost.
        let i = input(set(A, 0, B, C), set(X, A + OFF, A, B));
        let out = check(&i, 51, SyncDecision::TargetUsingBitmap);
        let uuids = set(X, A, B, B);
        assert_eq!(out.fixup, Some(UuidFixup::PeerCopy { uuids }));
    }

    #[test]
    fn rule_51_lost_sync_uuid_before_protocol_96() {
        let mut i = input(set(A, 0, B, C), set(X, 0x77 << 4, A, B));
        i.agreed_protocol = 95;
        let out = check(&i, 51, SyncDecision::TargetUsingBitmap);
        assert!(out.fixup.is_some());
        i.agreed_protocol = 101; // the offset test fails: a plain rule 60.
        check(&i, 60, SyncDecision::TargetFullSync);
        i.agreed_protocol = 90;
        check(
            &i,
            51,
            SyncDecision::NeedsProtocol {
                min: 91,
                features: 0,
            },
        );
    }

    #[test]
    fn rule_60_we_are_in_peers_history() {
        let d = SyncDecision::TargetFullSync;
        check(&input(set(A, 0, 0, 0), set(B, C, A, 0)), 60, d);
        check(&input(set(A, 0, 0, 0), set(B, C, 0, A | 1)), 60, d);
    }

    #[test]
    fn rule_70_we_moved_on_from_peers_generation() {
        check(
            &input(set(C, A | 1, B, 0), set(A, 0, B, 0)),
            70,
            SyncDecision::SourceUsingBitmap,
        );
    }

    #[test]
    fn rule_71_our_sync_uuid_was_lost() {
        let i = input(set(X, A + OFF, A, B), set(A, 0, B, C));
        let out = check(&i, 71, SyncDecision::SourceUsingBitmap);
        let uuids = set(X, A, B, B);
        assert_eq!(out.fixup, Some(UuidFixup::Local { uuids }));
        let mut old = input(set(X, 0x77 << 4, A, B), set(A, 0, B, C));
        old.agreed_protocol = 95;
        check(&old, 71, SyncDecision::SourceUsingBitmap);
    }

    #[test]
    fn rule_80_peer_is_in_our_history() {
        let d = SyncDecision::SourceFullSync;
        check(&input(set(B, C, A, 0), set(A, 0, 0, 0)), 80, d);
        check(&input(set(B, C, 0, A), set(A | 1, 0, 0, 0)), 80, d);
    }

    #[test]
    fn rule_90_split_brain_from_the_same_point() {
        let i = input(set(A, C | 1, B, 0), set(X, C, B, 0));
        check(&i, 90, SyncDecision::SplitBrainAutoRecover);
    }

    #[test]
    fn rule_100_split_brain_further_back() {
        let d = SyncDecision::SplitBrainDisconnect;
        check(&input(set(A, 0, C, B), set(X, 0, B + OFF, C)), 100, d);
        // Zero history slots count as shared, as in DRBD.
        check(&input(set(A, 0, 0, 0), set(X, 0, 0, 0)), 100, d);
    }

    #[test]
    fn rule_0_unrelated_data() {
        let i = input(set(A, 0, C, C), set(B, JC, B + OFF, B + OFF));
        check(&i, 0, SyncDecision::UnrelatedData);
    }

    #[test]
    fn codes_match_drbd() {
        let cases = [
            (SyncDecision::SourceFullSync, 2),
            (SyncDecision::SourceUsingBitmap, 1),
            (SyncDecision::NoSync, 0),
            (SyncDecision::TargetUsingBitmap, -1),
            (SyncDecision::TargetFullSync, -2),
            (SyncDecision::SplitBrainAutoRecover, 100),
            (SyncDecision::SplitBrainDisconnect, -100),
            (SyncDecision::UnrelatedData, -1000),
            (
                SyncDecision::NeedsProtocol {
                    min: 91,
                    features: 0,
                },
                -1091,
            ),
            (
                SyncDecision::NeedsProtocol {
                    min: 96,
                    features: 0,
                },
                -1096,
            ),
            (
                SyncDecision::NeedsProtocol {
                    min: 101,
                    features: 4,
                },
                -66661,
            ),
        ];
        for (decision, code) in cases {
            assert_eq!(decision.code(), code);
            assert_eq!(SyncDecision::from_code(code), Some(decision));
        }
        for code in [3, -3, 99, -999, -1001 - 255, -0x10000, i32::MIN] {
            assert_eq!(SyncDecision::from_code(code), None, "{code}");
        }
    }

    #[test]
    fn peer_uuids_wire_round_trip() {
        let slots = [
            A,
            B,
            C,
            X,
            77,
            UUID_FLAG_CRASHED_PRIMARY | UUID_FLAG_DISCARD_MY_DATA,
        ];
        let p = PeerUuids::from_wire(slots);
        assert_eq!(p.uuids, set(A, B, C, X));
        assert!(p.crashed_primary() && p.discard_my_data());
        assert_eq!(p.to_wire(), slots);
    }

    #[test]
    fn negotiating_peer_disk_comes_from_the_flags() {
        let n = DiskState::Negotiating;
        assert_eq!(
            peer_disk_for_handshake(n, UUID_FLAG_INCONSISTENT),
            DiskState::Inconsistent
        );
        assert_eq!(peer_disk_for_handshake(n, 0), DiskState::Consistent);
        let up = DiskState::UpToDate;
        assert_eq!(peer_disk_for_handshake(up, UUID_FLAG_INCONSISTENT), up);
    }

    // ---- Post-processing. --------------------------------------------------------------

    /// Both Secondary and UpToDate, no changes, nothing set, default (disconnect) policies.
    fn hs(decision: SyncDecision) -> HandshakeInput {
        HandshakeInput {
            decision,
            local_role: Role::Secondary,
            peer_role: Role::Secondary,
            local_disk: DiskState::UpToDate,
            local_disk_now: DiskState::UpToDate,
            peer_disk: DiskState::UpToDate,
            local_bitmap_uuid: 0,
            peer_bitmap_uuid: 0,
            local_bits_set: 0,
            peer_bits_set: 0,
            peer_flags: 0,
            local_discard_my_data: false,
            resolve_conflicts: false,
            local_demotion_allowed: true,
            policy: SplitBrainPolicy::default(),
        }
    }

    fn steps(plan: &HandshakePlan) -> Vec<HandshakeStep> {
        plan.steps().collect()
    }

    const INITIAL: HandshakeStep = HandshakeStep::CallHandler(Handler::InitialSplitBrain);
    const SPLIT_BRAIN: HandshakeStep = HandshakeStep::CallHandler(Handler::SplitBrain);

    fn connect(direction: SyncDirection, full_sync: bool) -> HandshakeOutcome {
        HandshakeOutcome::Connect {
            direction,
            full_sync,
        }
    }

    fn disconnect(reason: DisconnectReason) -> HandshakeOutcome {
        HandshakeOutcome::Disconnect { reason }
    }

    const SOURCE: SyncDirection = SyncDirection::Source;
    const TARGET: SyncDirection = SyncDirection::Target;

    #[test]
    fn plain_decisions_connect() {
        for (decision, outcome) in [
            (SyncDecision::SourceFullSync, connect(SOURCE, true)),
            (SyncDecision::SourceUsingBitmap, connect(SOURCE, false)),
            (SyncDecision::NoSync, connect(SyncDirection::None, false)),
            (SyncDecision::TargetUsingBitmap, connect(TARGET, false)),
            (SyncDecision::TargetFullSync, connect(TARGET, true)),
        ] {
            let plan = post_process(&hs(decision));
            assert_eq!((plan.outcome, plan.decision), (outcome, decision));
            assert_eq!(steps(&plan), []);
            assert_eq!(plan.split_brain, None);
        }
    }

    #[test]
    fn unrelated_data_and_old_protocols_disconnect() {
        let plan = post_process(&hs(SyncDecision::UnrelatedData));
        assert_eq!(plan.outcome, disconnect(DisconnectReason::UnrelatedData));
        let needs = SyncDecision::NeedsProtocol {
            min: 101,
            features: 4,
        };
        let plan = post_process(&hs(needs));
        let reason = DisconnectReason::NeedsProtocol {
            min: 101,
            features: 4,
        };
        assert_eq!(plan.outcome, disconnect(reason));
        assert_eq!(steps(&plan), []);
    }

    #[test]
    fn disk_state_override_forces_the_direction() {
        let cases = [
            // (decision, local disk, peer disk, result)
            (
                SyncDecision::SourceUsingBitmap,
                DiskState::Inconsistent,
                DiskState::UpToDate,
                -1,
            ),
            (
                SyncDecision::NoSync,
                DiskState::Inconsistent,
                DiskState::Outdated,
                -1,
            ),
            (
                SyncDecision::SourceFullSync,
                DiskState::Inconsistent,
                DiskState::UpToDate,
                -2,
            ),
            (
                SyncDecision::SplitBrainDisconnect,
                DiskState::Inconsistent,
                DiskState::UpToDate,
                -2,
            ),
            (
                SyncDecision::SplitBrainAutoRecover,
                DiskState::Inconsistent,
                DiskState::UpToDate,
                -1,
            ),
            (
                SyncDecision::TargetUsingBitmap,
                DiskState::Consistent,
                DiskState::Inconsistent,
                1,
            ),
            (
                SyncDecision::TargetFullSync,
                DiskState::UpToDate,
                DiskState::Inconsistent,
                2,
            ),
            (
                SyncDecision::SplitBrainDisconnect,
                DiskState::Outdated,
                DiskState::Inconsistent,
                2,
            ),
        ];
        for (decision, local_disk, peer_disk, code) in cases {
            let mut i = hs(decision);
            (i.local_disk, i.peer_disk) = (local_disk, peer_disk);
            let plan = post_process(&i);
            assert!(plan.disk_state_override);
            assert_eq!(plan.decision.code(), code, "{decision:?}");
            assert_eq!(
                plan.split_brain, None,
                "no split-brain handler after the override"
            );
            assert_eq!(steps(&plan), []);
        }
        // Both Inconsistent: no override, and a source that is Inconsistent refuses.
        let mut i = hs(SyncDecision::SourceUsingBitmap);
        (i.local_disk, i.peer_disk) = (DiskState::Inconsistent, DiskState::Inconsistent);
        let plan = post_process(&i);
        assert!(!plan.disk_state_override);
        assert_eq!(
            plan.outcome,
            disconnect(DisconnectReason::InconsistentWouldBeSource)
        );
        // Both Inconsistent with crossed UUIDs: a target refuses too (udrbd's own), for
        // a bitmap or a full sync alike; nobody has data to sync from (swarm seed 4213).
        for decision in [
            SyncDecision::TargetUsingBitmap,
            SyncDecision::TargetFullSync,
        ] {
            let mut i = hs(decision);
            (i.local_disk, i.peer_disk) = (DiskState::Inconsistent, DiskState::Inconsistent);
            assert_eq!(
                post_process(&i).outcome,
                disconnect(DisconnectReason::TargetOfInconsistentPeer),
                "{decision:?}"
            );
        }
        // The peer Diskless is below Inconsistent: no override either.
        let mut i = hs(SyncDecision::NoSync);
        (i.local_disk, i.peer_disk) = (DiskState::Inconsistent, DiskState::Diskless);
        assert!(!post_process(&i).disk_state_override);
    }

    /// +100 with 0 Primaries under `policy`, bits set and bitmap UUIDs as given.
    fn zero_pri(policy: AfterSb0pri, bits: (u64, u64), bitmaps: (u64, u64), rc: bool) -> i32 {
        let mut i = hs(SyncDecision::SplitBrainAutoRecover);
        i.policy.after_sb_0pri = policy;
        (i.local_bits_set, i.peer_bits_set) = bits;
        (i.local_bitmap_uuid, i.peer_bitmap_uuid) = bitmaps;
        i.resolve_conflicts = rc;
        let plan = post_process(&i);
        assert_eq!(plan.steps().next(), Some(INITIAL));
        let report = plan.split_brain.expect("a split brain");
        assert_eq!(
            (report.primaries, report.detected),
            (0, SyncDecision::SplitBrainAutoRecover)
        );
        let resolved = matches!(report.resolution, SplitBrainResolution::Automatic { .. });
        assert_eq!(
            resolved,
            plan.decision != SyncDecision::SplitBrainDisconnect
        );
        if !resolved {
            assert_eq!(steps(&plan), [INITIAL, SPLIT_BRAIN]);
            assert_eq!(
                plan.outcome,
                disconnect(DisconnectReason::SplitBrainUnresolved)
            );
        }
        plan.decision.code()
    }

    #[test]
    fn after_sb_0pri_primary_age() {
        use AfterSb0pri::*;
        // We left the common generation as Secondary (bit 0 clear) and became Primary later:
        // we are the younger Primary.
        let we_younger = (A, B | 1);
        assert_eq!(
            zero_pri(DiscardYoungerPrimary, (5, 1), we_younger, false),
            -1
        );
        assert_eq!(
            zero_pri(DiscardYoungerPrimary, (5, 1), (A | 1, B), false),
            1
        );
        assert_eq!(zero_pri(DiscardOlderPrimary, (5, 1), we_younger, false), 1);
        assert_eq!(zero_pri(DiscardOlderPrimary, (5, 1), (A | 1, B), false), -1);
        // Undecided: both fall through to zero changes, then least changes.
        for policy in [DiscardYoungerPrimary, DiscardOlderPrimary] {
            assert_eq!(zero_pri(policy, (5, 1), (A, B), false), 1);
            assert_eq!(zero_pri(policy, (1, 5), (A | 1, B | 1), false), -1);
            assert_eq!(zero_pri(policy, (0, 5), (A, B), false), -1);
            assert_eq!(zero_pri(policy, (3, 3), (A, B), false), 1);
            assert_eq!(zero_pri(policy, (3, 3), (A, B), true), -1);
        }
    }

    #[test]
    fn after_sb_0pri_changes() {
        use AfterSb0pri::*;
        let b = (A, B);
        assert_eq!(zero_pri(DiscardZeroChanges, (7, 0), b, false), 1);
        assert_eq!(zero_pri(DiscardZeroChanges, (0, 7), b, false), -1);
        assert_eq!(zero_pri(DiscardZeroChanges, (0, 0), b, false), 1);
        assert_eq!(zero_pri(DiscardZeroChanges, (0, 0), b, true), -1);
        assert_eq!(zero_pri(DiscardZeroChanges, (1, 7), b, false), -100);
        assert_eq!(zero_pri(DiscardLeastChanges, (1, 7), b, false), -1);
        assert_eq!(zero_pri(DiscardLeastChanges, (7, 1), b, false), 1);
        assert_eq!(zero_pri(DiscardLeastChanges, (7, 7), b, false), 1);
        assert_eq!(zero_pri(DiscardLeastChanges, (7, 7), b, true), -1);
    }

    #[test]
    fn after_sb_0pri_fixed() {
        use AfterSb0pri::*;
        assert_eq!(zero_pri(DiscardLocal, (0, 9), (A, B), false), -1);
        assert_eq!(zero_pri(DiscardRemote, (0, 9), (A, B), false), 1);
        assert_eq!(zero_pri(Disconnect, (0, 9), (A, B), false), -100);
    }

    /// +100 with us Primary (`local_primary`) or the peer, under after-sb-1pri `policy` and
    /// an after-sb-0pri that discards us (`0pri says us`) or the peer.
    fn one_pri(policy: AfterSb1pri, local_primary: bool, discard_us: bool) -> HandshakePlan {
        let mut i = hs(SyncDecision::SplitBrainAutoRecover);
        let (primary, secondary) = (Role::Primary, Role::Secondary);
        (i.local_role, i.peer_role) = if local_primary {
            (primary, secondary)
        } else {
            (secondary, primary)
        };
        i.policy.after_sb_0pri = if discard_us {
            AfterSb0pri::DiscardLocal
        } else {
            AfterSb0pri::DiscardRemote
        };
        i.policy.after_sb_1pri = policy;
        let plan = post_process(&i);
        assert_eq!(plan.split_brain.map(|r| r.primaries), Some(1));
        plan
    }

    #[test]
    fn after_sb_1pri_consensus() {
        use AfterSb1pri::Consensus;
        // 0pri discards the Secondary: agreed.
        assert_eq!(
            one_pri(Consensus, false, true).outcome,
            connect(TARGET, false)
        );
        assert_eq!(
            one_pri(Consensus, true, false).outcome,
            connect(SOURCE, false)
        );
        // 0pri discards the Primary: no consensus.
        let unresolved = disconnect(DisconnectReason::SplitBrainUnresolved);
        assert_eq!(one_pri(Consensus, true, true).outcome, unresolved);
        assert_eq!(one_pri(Consensus, false, false).outcome, unresolved);
    }

    #[test]
    fn after_sb_1pri_discard_secondary_and_violently() {
        use AfterSb1pri::*;
        for discard_us in [false, true] {
            let p = one_pri(DiscardSecondary, true, discard_us);
            assert_eq!(p.outcome, connect(SOURCE, false));
            let p = one_pri(DiscardSecondary, false, discard_us);
            assert_eq!(p.outcome, connect(TARGET, false));
        }
        // Violently: the 0pri result even against the Primary; then rr-conflict refuses by
        // default.
        let p = one_pri(ViolentlyAs0p, true, true);
        assert_eq!(p.decision, SyncDecision::TargetUsingBitmap);
        assert_eq!(
            p.outcome,
            disconnect(DisconnectReason::PrimaryWouldBeTarget)
        );
        assert_eq!(
            one_pri(ViolentlyAs0p, false, true).outcome,
            connect(TARGET, false)
        );
        let p = one_pri(Disconnect, true, false);
        assert_eq!(
            p.outcome,
            disconnect(DisconnectReason::SplitBrainUnresolved)
        );
    }

    #[test]
    fn after_sb_1pri_call_pri_lost_after_sb() {
        use AfterSb1pri::CallPriLostAfterSb;
        // The discarded Primary is us and can be demoted: demote, then become target.
        let p = one_pri(CallPriLostAfterSb, true, true);
        assert_eq!(steps(&p), [INITIAL, HandshakeStep::BecomeSecondary]);
        assert_eq!(p.outcome, connect(TARGET, false));
        assert!(!p.target_while_primary);
        // The discarded one is the Secondary (us): no demotion needed.
        let p = one_pri(CallPriLostAfterSb, false, true);
        assert_eq!(
            (steps(&p), p.outcome),
            (vec![INITIAL], connect(TARGET, false))
        );
        // 0pri keeps us (the Primary): we are the source.
        let p = one_pri(CallPriLostAfterSb, true, false);
        assert_eq!(p.outcome, connect(SOURCE, false));
    }

    #[test]
    fn call_pri_lost_after_sb_when_demotion_fails() {
        let mut i = hs(SyncDecision::SplitBrainAutoRecover);
        i.local_role = Role::Primary;
        i.policy.after_sb_0pri = AfterSb0pri::DiscardLocal;
        i.policy.after_sb_1pri = AfterSb1pri::CallPriLostAfterSb;
        i.local_demotion_allowed = false;
        let plan = post_process(&i);
        let pri_lost = HandshakeStep::CallHandler(Handler::PriLostAfterSb);
        assert_eq!(steps(&plan), [INITIAL, pri_lost, SPLIT_BRAIN]);
        assert_eq!(
            plan.outcome,
            disconnect(DisconnectReason::SplitBrainUnresolved)
        );
        // ... unless the peer's discard-my-data then resolves it by hand: we are the source.
        i.peer_flags = UUID_FLAG_DISCARD_MY_DATA;
        let plan = post_process(&i);
        assert_eq!(steps(&plan), [INITIAL, pri_lost]);
        assert_eq!(plan.outcome, connect(SOURCE, false));
        let report = plan.split_brain.expect("seen");
        assert_eq!(report.resolution, SplitBrainResolution::Manual);
    }

    #[test]
    fn after_sb_2pri() {
        let mut i = hs(SyncDecision::SplitBrainAutoRecover);
        (i.local_role, i.peer_role) = (Role::Primary, Role::Primary);
        i.policy.after_sb_0pri = AfterSb0pri::DiscardLocal;
        i.policy.rr_conflict = RrConflict::Violently;
        let unresolved = disconnect(DisconnectReason::SplitBrainUnresolved);
        assert_eq!(post_process(&i).outcome, unresolved);
        i.policy.after_sb_2pri = AfterSb2pri::ViolentlyAs0p;
        let p = post_process(&i);
        assert_eq!(
            (p.outcome, p.target_while_primary),
            (connect(TARGET, false), true)
        );
        i.policy.after_sb_2pri = AfterSb2pri::CallPriLostAfterSb;
        let p = post_process(&i);
        assert_eq!(steps(&p), [INITIAL, HandshakeStep::BecomeSecondary]);
        assert_eq!(
            (p.outcome, p.target_while_primary),
            (connect(TARGET, false), false)
        );
        i.policy.after_sb_0pri = AfterSb0pri::DiscardRemote;
        let p = post_process(&i);
        assert_eq!(
            (steps(&p), p.outcome),
            (vec![INITIAL], connect(SOURCE, false))
        );
        assert_eq!(p.split_brain.map(|r| r.primaries), Some(2));
    }

    #[test]
    fn always_asbp_applies_policies_to_minus_100_with_a_full_sync() {
        let mut i = hs(SyncDecision::SplitBrainDisconnect);
        i.policy.after_sb_0pri = AfterSb0pri::DiscardRemote;
        let p = post_process(&i);
        assert_eq!(
            p.outcome,
            disconnect(DisconnectReason::SplitBrainUnresolved)
        );
        assert_eq!(steps(&p), [INITIAL, SPLIT_BRAIN]);
        i.policy.always_asbp = true;
        let p = post_process(&i);
        assert_eq!(p.outcome, connect(SOURCE, true));
        let resolution = SplitBrainResolution::Automatic {
            full_sync_forced: true,
        };
        assert_eq!(p.split_brain.map(|r| r.resolution), Some(resolution));
        // +100 resolved is not doubled.
        i.decision = SyncDecision::SplitBrainAutoRecover;
        assert_eq!(post_process(&i).outcome, connect(SOURCE, false));
    }

    #[test]
    fn discard_my_data_resolves_by_hand() {
        let mut i = hs(SyncDecision::SplitBrainDisconnect);
        i.local_discard_my_data = true;
        let p = post_process(&i);
        assert_eq!(
            (steps(&p), p.outcome),
            (vec![INITIAL], connect(TARGET, false))
        );
        assert_eq!(
            p.split_brain.map(|r| r.resolution),
            Some(SplitBrainResolution::Manual)
        );
        i.local_discard_my_data = false;
        i.peer_flags = UUID_FLAG_DISCARD_MY_DATA;
        assert_eq!(post_process(&i).outcome, connect(SOURCE, false));
        // Both: nothing decided.
        i.local_discard_my_data = true;
        let p = post_process(&i);
        assert_eq!(
            p.outcome,
            disconnect(DisconnectReason::SplitBrainUnresolved)
        );
        // A failed +100 policy also falls to discard-my-data.
        let mut i = hs(SyncDecision::SplitBrainAutoRecover);
        i.local_discard_my_data = true;
        assert_eq!(post_process(&i).outcome, connect(TARGET, false));
    }

    #[test]
    fn rr_conflict() {
        let mut i = hs(SyncDecision::TargetUsingBitmap);
        i.local_role = Role::Primary;
        let refused = disconnect(DisconnectReason::PrimaryWouldBeTarget);
        assert_eq!(post_process(&i).outcome, refused);
        i.policy.rr_conflict = RrConflict::CallPriLost;
        let p = post_process(&i);
        let pri_lost = HandshakeStep::CallHandler(Handler::PriLost);
        assert_eq!((steps(&p), p.outcome), (vec![pri_lost], refused));
        i.policy.rr_conflict = RrConflict::Violently;
        let p = post_process(&i);
        assert_eq!(
            (p.outcome, p.target_while_primary),
            (connect(TARGET, false), true)
        );
        // Not while attaching (disk now Negotiating), nor with an Inconsistent disk.
        i.policy.rr_conflict = RrConflict::Disconnect;
        for now in [
            DiskState::Negotiating,
            DiskState::Inconsistent,
            DiskState::Outdated,
        ] {
            i.local_disk_now = now;
            assert_eq!(post_process(&i).outcome, connect(TARGET, false), "{now:?}");
        }
        i.local_disk_now = DiskState::Consistent;
        assert_eq!(post_process(&i).outcome, refused);
    }

    // ---- Both sides agree. -------------------------------------------------------------

    fn mirrored_0pri(p: AfterSb0pri) -> AfterSb0pri {
        match p {
            AfterSb0pri::DiscardLocal => AfterSb0pri::DiscardRemote,
            AfterSb0pri::DiscardRemote => AfterSb0pri::DiscardLocal,
            other => other,
        }
    }

    /// The peer's view of the same handshake, with its decision.
    fn mirrored(h: &HandshakeInput, decision: SyncDecision, demotion: bool) -> HandshakeInput {
        HandshakeInput {
            decision,
            local_role: h.peer_role,
            peer_role: h.local_role,
            local_disk: h.peer_disk,
            local_disk_now: h.peer_disk,
            peer_disk: h.local_disk,
            local_bitmap_uuid: h.peer_bitmap_uuid,
            peer_bitmap_uuid: h.local_bitmap_uuid,
            local_bits_set: h.peer_bits_set,
            peer_bits_set: h.local_bits_set,
            peer_flags: u64::from(h.local_discard_my_data),
            local_discard_my_data: h.peer_flags & UUID_FLAG_DISCARD_MY_DATA != 0,
            resolve_conflicts: !h.resolve_conflicts,
            local_demotion_allowed: demotion,
            policy: SplitBrainPolicy {
                after_sb_0pri: mirrored_0pri(h.policy.after_sb_0pri),
                ..h.policy
            },
        }
    }

    fn arb_policy() -> impl Strategy<Value = SplitBrainPolicy> {
        use proptest::sample::select;
        (
            select(vec![
                AfterSb0pri::Disconnect,
                AfterSb0pri::DiscardYoungerPrimary,
                AfterSb0pri::DiscardOlderPrimary,
                AfterSb0pri::DiscardZeroChanges,
                AfterSb0pri::DiscardLeastChanges,
                AfterSb0pri::DiscardLocal,
                AfterSb0pri::DiscardRemote,
            ]),
            select(vec![
                AfterSb1pri::Disconnect,
                AfterSb1pri::Consensus,
                AfterSb1pri::ViolentlyAs0p,
                AfterSb1pri::DiscardSecondary,
                AfterSb1pri::CallPriLostAfterSb,
            ]),
            select(vec![
                AfterSb2pri::Disconnect,
                AfterSb2pri::ViolentlyAs0p,
                AfterSb2pri::CallPriLostAfterSb,
            ]),
            any::<bool>(),
            select(vec![
                RrConflict::Disconnect,
                RrConflict::CallPriLost,
                RrConflict::Violently,
            ]),
        )
            .prop_map(|(p0, p1, p2, always_asbp, rr)| SplitBrainPolicy {
                after_sb_0pri: p0,
                after_sb_1pri: p1,
                after_sb_2pri: p2,
                always_asbp,
                rr_conflict: rr,
            })
    }

    fn arb_disk() -> impl Strategy<Value = DiskState> {
        proptest::sample::select(vec![
            DiskState::Diskless,
            DiskState::Inconsistent,
            DiskState::Outdated,
            DiskState::Consistent,
            DiskState::UpToDate,
        ])
    }

    fn arb_handshake() -> impl Strategy<Value = (CompareInput, HandshakeInput, bool)> {
        (
            arb_compare_input(),
            arb_policy(),
            (arb_disk(), arb_disk(), 0u64..3, 0u64..3),
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(
                |(c, policy, (ld, pd, lb, pb), (ldmd, pdmd, demote, peer_demote))| {
                    let h = HandshakeInput {
                        decision: uuid_compare(&c).decision,
                        local_role: c.local_role,
                        peer_role: c.peer_role,
                        local_disk: ld,
                        local_disk_now: ld,
                        peer_disk: pd,
                        local_bitmap_uuid: c.local.bitmap,
                        peer_bitmap_uuid: c.peer.uuids.bitmap,
                        local_bits_set: lb,
                        peer_bits_set: pb,
                        peer_flags: u64::from(pdmd),
                        local_discard_my_data: ldmd,
                        resolve_conflicts: c.resolve_conflicts,
                        local_demotion_allowed: demote,
                        policy,
                    };
                    (c, h, peer_demote)
                },
            )
    }

    fn check_plan_invariants(h: &HandshakeInput, plan: &HandshakePlan) {
        let steps = steps(plan);
        assert!(steps.len() <= MAX_HANDSHAKE_STEPS);
        let initial = steps.first() == Some(&INITIAL);
        assert_eq!(initial, plan.split_brain.is_some(), "{plan:?}");
        assert!(steps.iter().skip(1).all(|s| *s != INITIAL));
        let split_brain_handler = steps.contains(&SPLIT_BRAIN);
        let unresolved = disconnect(DisconnectReason::SplitBrainUnresolved);
        assert_eq!(split_brain_handler, plan.outcome == unresolved);
        if let HandshakeOutcome::Connect {
            direction,
            full_sync,
        } = plan.outcome
        {
            assert_eq!(full_sync, plan.decision.is_full_sync());
            assert!(direction != SOURCE || h.local_disk > DiskState::Inconsistent);
            let demoted = steps.contains(&HandshakeStep::BecomeSecondary);
            let primary_target = direction == TARGET
                && h.local_role == Role::Primary
                && !demoted
                && h.local_disk_now >= DiskState::Consistent;
            assert_eq!(primary_target, plan.target_while_primary);
            assert!(!primary_target || h.policy.rr_conflict == RrConflict::Violently);
        }
    }

    proptest! {
        /// Both sides run the handshake on their own inputs; whenever both connect, one is
        /// source and the other target (or both in sync), with the same full-sync verdict.
        #[test]
        fn both_sides_agree((c, h, peer_demote) in arb_handshake()) {
            let plan = post_process(&h);
            check_plan_invariants(&h, &plan);
            let theirs_compare = uuid_compare(&swapped(&c)).decision;
            let code = h.decision.code();
            let consistent = if code.abs() <= 2 {
                theirs_compare.code() == -code
            } else {
                theirs_compare == h.decision
            };
            let peer_h = mirrored(&h, theirs_compare, peer_demote);
            let theirs = post_process(&peer_h);
            check_plan_invariants(&peer_h, &theirs);
            if let (
                HandshakeOutcome::Connect { direction: d1, full_sync: f1 },
                HandshakeOutcome::Connect { direction: d2, full_sync: f2 },
            ) = (plan.outcome, theirs.outcome)
            {
                // A Primary that call-pri-lost-after-sb could not demote runs the
                // pri-lost-after-sb handler, which is there to take the node down: DRBD's two
                // sides may then both decide "source" (its peer resolved automatically, it
                // fell through to discard-my-data). Agreement is not promised there.
                let pri_lost = [&plan, &theirs].iter().any(|p| {
                    p.steps()
                        .any(|s| s == HandshakeStep::CallHandler(Handler::PriLostAfterSb))
                });
                if pri_lost {
                    // See above.
                } else if consistent {
                    let opposite = matches!(
                        (d1, d2),
                        (SyncDirection::None, SyncDirection::None)
                            | (SyncDirection::Source, SyncDirection::Target)
                            | (SyncDirection::Target, SyncDirection::Source)
                    );
                    prop_assert!(opposite, "{d1:?} {d2:?} {h:?} {peer_h:?}");
                    // DRBD itself can disagree on "full": with call-pri-lost-after-sb a Primary
                    // that cannot demote leaves the split brain to manual recovery (no
                    // doubling) while its peer resolved it automatically (doubled). That is
                    // still a full sync on both sides, because the bitmap exchange ORs the
                    // source's full bitmap into the target's. What must never happen is a
                    // full sync decided only by the target.
                    if f1 != f2 {
                        let full_on_source = (f1 && d1 == SyncDirection::Source)
                            || (f2 && d2 == SyncDirection::Source);
                        prop_assert!(full_on_source, "{d1:?}/{f1} {d2:?}/{f2} {h:?} {peer_h:?}");
                    }
                } else {
                    prop_assert!(antisymmetry_exception(&c).is_some());
                }
            }
        }
    }

    // ---- UUID transitions. -------------------------------------------------------------

    #[test]
    fn new_current_keeps_the_old_one_raw_in_the_bitmap_slot() {
        let s = new_current_uuid(set(A | 1, 0, B, C), X | 1, false);
        assert_eq!(s, set(X, A | 1, B, C));
        let s = new_current_uuid(set(A, 0, B, C), X, true);
        assert_eq!(s, set(X | 1, A, B, C));
    }

    #[test]
    fn resync_start_source_derives_the_sync_uuid() {
        let (s, sync) = resync_start_source(set(X, A, B, C), 0xdead_0000);
        assert_eq!((s, sync), (set(X, A + OFF, A, B), A + OFF));
        // No bitmap UUID: a random one, no history push.
        let (s, sync) = resync_start_source(set(X, 0, B, C), 0xdead_0000);
        assert_eq!((s, sync), (set(X, 0xdead_0000, B, C), 0xdead_0000));
        // JUST_CREATED: random, and the 4 is pushed into history (it is non-zero).
        let (s, sync) = resync_start_source(set(X, JC, B, C), 0xdead_0000);
        assert_eq!((s, sync), (set(X, 0xdead_0000, JC, B), 0xdead_0000));
        // The addition wraps.
        let (_, sync) = resync_start_source(set(X, u64::MAX - 1, B, C), 0xdead_0000);
        assert_eq!(sync, (u64::MAX - 1).wrapping_add(OFF));
    }

    #[test]
    fn sync_target_and_clear_bitmap() {
        assert_eq!(
            sync_target_received(set(A, C, B, 0), X | 1, false),
            set(X, 0, B, 0)
        );
        assert_eq!(
            sync_target_received(set(A, C, B, 0), X, true),
            set(X | 1, 0, B, 0)
        );
        assert_eq!(clear_bitmap_uuid(set(X, A, B, C)), set(X, 0, A, B));
        assert_eq!(clear_bitmap_uuid(set(X, 0, B, C)), set(X, 0, B, C));
    }

    /// The source's and target's sets after a full resync, both Secondary.
    fn complete_resync(source: UuidSet, target: UuidSet, random: u64) -> (UuidSet, UuidSet) {
        let (source_mid, sync) = resync_start_source(source, random);
        let target_mid = sync_target_received(target, sync, false);
        let target_done = resync_finished_target(target_mid, source, false);
        (
            clear_bitmap_uuid(source_mid),
            clear_bitmap_uuid(target_done),
        )
    }

    #[test]
    fn complete_resync_leaves_identical_sets() {
        let source = set(X, A, B, C);
        let target = set(A, 0, B, C);
        let (s, t) = complete_resync(source, target, 0xdead_0000);
        assert_eq!(s, t);
        assert_eq!(s, set(X, 0, A + OFF, A));
        check(&input(s, t), 40, SyncDecision::NoSync);
    }

    #[test]
    fn half_finished_resyncs_are_repaired() {
        let source = set(X, A, B, C);
        let target = set(A, 0, B, C);
        let (source_mid, sync) = resync_start_source(source, 0xdead_0000);
        // P_SYNC_UUID lost: rule 71 on the source, 51 on the target.
        let on_source = check(
            &input(source_mid, target),
            71,
            SyncDecision::SourceUsingBitmap,
        );
        let on_target = check(
            &input(target, source_mid),
            51,
            SyncDecision::TargetUsingBitmap,
        );
        let (mut s, mut peer) = (source_mid, PeerUuids::default());
        on_source
            .fixup
            .expect("71 repairs")
            .apply(&mut s, &mut peer);
        let (mut t, mut peer_copy) = (target, PeerUuids::default());
        peer_copy.uuids = source_mid;
        on_target
            .fixup
            .expect("51 repairs")
            .apply(&mut t, &mut peer_copy);
        assert_eq!(s, peer_copy.uuids);
        assert_eq!(masked(s.bitmap), masked(target.current));
        // The target finished, the source missed "resync finished": rules 34 and 35.
        let target_done = clear_bitmap_uuid(resync_finished_target(
            sync_target_received(target, sync, false),
            source,
            false,
        ));
        let on_source = check(
            &input(source_mid, target_done),
            34,
            SyncDecision::SourceUsingBitmap,
        );
        let on_target = check(
            &input(target_done, source_mid),
            35,
            SyncDecision::TargetUsingBitmap,
        );
        assert_eq!(
            on_source.fixup,
            Some(UuidFixup::Local { uuids: target_done })
        );
        assert_eq!(
            on_target.fixup,
            Some(UuidFixup::PeerCopy { uuids: target_done })
        );
    }

    fn fresh_uuid() -> impl Strategy<Value = u64> {
        (JC + 2)..u64::MAX
    }

    proptest! {
        /// After a complete resync both sets are the same, bit 0 aside (the sync UUID keeps
        /// the source's bitmap bit 0 on the source, the target's role bit on the target),
        /// and the next handshake finds nothing to do.
        #[test]
        fn complete_resync_is_identical_modulo_bit_0(
            (current, rest) in (fresh_uuid(), any::<[u64; 3]>()),
            target in any::<[u64; 4]>(),
            random in fresh_uuid(),
        ) {
            let source = UuidSet::from_array([current, rest[0], rest[1], rest[2]]);
            let target = UuidSet::from_array(target);
            let (s, t) = complete_resync(source, target, random);
            let m = |u: UuidSet| u.to_array().map(masked);
            prop_assert_eq!(m(s), m(t));
            prop_assert_eq!(s.current, source.current);
            prop_assert_eq!(s.bitmap, 0);
            if source.bitmap != 0 && source.bitmap != JC {
                prop_assert_eq!(s.history, [source.bitmap.wrapping_add(OFF), source.bitmap]);
            }
            let out = uuid_compare(&input(s, t));
            prop_assert_eq!((out.rule, out.decision), (40, SyncDecision::NoSync));
        }
    }
}
