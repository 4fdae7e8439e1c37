//! The DRBD 8.4 activity log (AL): the transaction block, the on-disk ring, the replay that
//! `apply-al` performs, and the in-memory active set that produces transactions
//! (drbd-v08-facts.md §3).
//!
//! One transaction is one 4 KiB block, big-endian:
//!
//! ```text
//!  off  size field
//!    0     4 magic                   0x69CB65A2
//!    4     4 tr_number               transaction counter (u32, wraps)
//!    8     4 crc32c                  over the 4096 bytes with this field 0; init 0, no final xor
//!   12     2 transaction_type        0 = UPDATE, 0xFFFF = INITIALIZED
//!   14     2 n_updates               valid entries in the update arrays (<= 64)
//!   16     2 context_size            number of AL slots (al-extents) when written
//!   18     2 context_start_slot_nr   first slot described by context[]
//!   20    16 reserved                0
//!   36   128 update_slot_nr[64]      u16, unused = 0xFFFF
//!  164   256 update_extent_nr[64]    u32, unused = 0xFFFFFFFF
//!  420  3676 context[919]            u32 extent of slots start.., unused = 0xFFFFFFFF
//! ```
//!
//! Transaction `t` lives at ring position `t mod ring_blocks`, mapped round-robin over the
//! stripes ([`AlGeometry::block_of_position`]).
//!
//! The crash-safety rule the writer side ([`ActivityLog`]) keeps, and the replay relies on:
//! a data write into extent `e` is issued only after a durable transaction lists `e`; before a
//! transaction evicts extent `y`, the bitmap pages covering `y` are durable. So after a crash,
//! "replayed extents + on-disk bitmap" covers every block that may differ from the peer.

use std::collections::{BTreeMap, BTreeSet};

use crate::BLOCK_4K;
use crate::layout::AlGeometry;

/// Magic of every AL transaction block.
pub const AL_MAGIC: u32 = 0x69CB_65A2;
/// Slot changes one transaction can carry.
pub const AL_UPDATES_PER_TRANSACTION: usize = 64;
/// Slots of context one transaction carries: (4096 - 36 - 6 * 64) / 4.
pub const AL_CONTEXT_PER_TRANSACTION: usize = 919;
/// `transaction_type` of an update transaction.
pub const AL_TR_UPDATE: u16 = 0;
/// `transaction_type` of a block written at (re)initialisation.
pub const AL_TR_INITIALIZED: u16 = 0xFFFF;
/// An unused extent entry ("LC_FREE").
pub const LC_FREE: u32 = 0xFFFF_FFFF;
/// An unused update slot entry.
pub const SLOT_FREE: u16 = 0xFFFF;
/// Slot numbers at or above this are out of range for drbdmeta's replay.
pub const SLOT_LIMIT: u16 = 65_534;
/// One AL extent covers 4 MiB of data.
pub const AL_EXTENT_SHIFT: u32 = 22;
/// Bitmap bits per AL extent (4 MiB / 4 KiB).
pub const BITS_PER_AL_EXTENT: u64 = 1 << (AL_EXTENT_SHIFT - 12);
/// Sectors per AL extent.
pub const SECTORS_PER_AL_EXTENT: u64 = 1 << (AL_EXTENT_SHIFT - 9);

const HEADER_BYTES: usize = 36;
const UPDATE_SLOTS_OFFSET: usize = 36;
const UPDATE_EXTENTS_OFFSET: usize = UPDATE_SLOTS_OFFSET + 2 * AL_UPDATES_PER_TRANSACTION;
const CONTEXT_OFFSET: usize = UPDATE_EXTENTS_OFFSET + 4 * AL_UPDATES_PER_TRANSACTION;
const _: () = assert!(UPDATE_EXTENTS_OFFSET == 164);
const _: () = assert!(CONTEXT_OFFSET == 420);
const _: () = assert!(CONTEXT_OFFSET + 4 * AL_CONTEXT_PER_TRANSACTION == BLOCK_4K as usize);
const _: () = assert!(HEADER_BYTES + 6 * AL_UPDATES_PER_TRANSACTION + 4 * 919 == 4096);

/// The AL extent that covers data sector `sector`.
pub fn extent_of_sector(sector: u64) -> u32 {
    (sector >> (AL_EXTENT_SHIFT - 9)) as u32
}

/// The raw CRC of drbdmeta and the kernel: CRC-32C with initial value 0 and no final XOR.
pub fn crc32c_raw(data: &[u8]) -> u32 {
    // crc32c_append inverts its seed on entry and its result on exit.
    !crc32c::crc32c_append(0xFFFF_FFFF, data)
}

/// One decoded transaction block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlTransaction {
    /// Transaction number.
    pub tr_number: u32,
    /// [`AL_TR_UPDATE`] or [`AL_TR_INITIALIZED`] (other values are kept as read).
    pub transaction_type: u16,
    /// Number of valid update entries.
    pub n_updates: u16,
    /// Number of AL slots when written.
    pub context_size: u16,
    /// First slot of `context`.
    pub context_start_slot_nr: u16,
    /// Reserved words, kept so a decode/encode round trip is exact.
    pub reserved: [u32; 4],
    /// Slot numbers of the updates.
    pub update_slot_nr: [u16; AL_UPDATES_PER_TRANSACTION],
    /// Extent numbers of the updates.
    pub update_extent_nr: [u32; AL_UPDATES_PER_TRANSACTION],
    /// Extents of slots `context_start_slot_nr ..`.
    pub context: Box<[u32; AL_CONTEXT_PER_TRANSACTION]>,
}

/// Why a 4 KiB block is not a valid transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlBlockError {
    /// The block is not 4096 bytes.
    #[error("activity-log block must be 4096 bytes, got {0}")]
    WrongSize(usize),
    /// No AL magic.
    #[error("bad activity-log magic 0x{0:08X}")]
    BadMagic(u32),
    /// Checksum mismatch (a torn or corrupt write).
    #[error("activity-log checksum mismatch: stored 0x{stored:08X}, computed 0x{computed:08X}")]
    BadChecksum {
        /// The stored CRC.
        stored: u32,
        /// The CRC of the block.
        computed: u32,
    },
}

impl AlTransaction {
    /// The block drbdmeta create-md writes into every ring position: INITIALIZED, tr 0, every
    /// array zero.
    pub fn initialized() -> AlTransaction {
        AlTransaction {
            tr_number: 0,
            transaction_type: AL_TR_INITIALIZED,
            n_updates: 0,
            context_size: 0,
            context_start_slot_nr: 0,
            reserved: [0; 4],
            update_slot_nr: [0; AL_UPDATES_PER_TRANSACTION],
            update_extent_nr: [0; AL_UPDATES_PER_TRANSACTION],
            context: Box::new([0; AL_CONTEXT_PER_TRANSACTION]),
        }
    }

    /// An empty UPDATE transaction as the kernel writes it: unused entries 0xFFFF/0xFFFFFFFF.
    pub fn empty_update(tr_number: u32, context_size: u16, context_start_slot_nr: u16) -> Self {
        AlTransaction {
            tr_number,
            transaction_type: AL_TR_UPDATE,
            n_updates: 0,
            context_size,
            context_start_slot_nr,
            reserved: [0; 4],
            update_slot_nr: [SLOT_FREE; AL_UPDATES_PER_TRANSACTION],
            update_extent_nr: [LC_FREE; AL_UPDATES_PER_TRANSACTION],
            context: Box::new([LC_FREE; AL_CONTEXT_PER_TRANSACTION]),
        }
    }

    /// Whether this is an INITIALIZED block.
    pub fn is_initialized(&self) -> bool {
        self.transaction_type == AL_TR_INITIALIZED
    }

    /// Encodes into a 4096-byte block with the checksum filled in.
    pub fn encode(&self) -> Box<[u8; BLOCK_4K as usize]> {
        let mut b = Box::new([0u8; BLOCK_4K as usize]);
        put_u32(&mut b[..], 0, AL_MAGIC);
        put_u32(&mut b[..], 4, self.tr_number);
        put_u16(&mut b[..], 12, self.transaction_type);
        put_u16(&mut b[..], 14, self.n_updates);
        put_u16(&mut b[..], 16, self.context_size);
        put_u16(&mut b[..], 18, self.context_start_slot_nr);
        for (i, &r) in self.reserved.iter().enumerate() {
            put_u32(&mut b[..], 20 + 4 * i, r);
        }
        for (i, &slot) in self.update_slot_nr.iter().enumerate() {
            put_u16(&mut b[..], UPDATE_SLOTS_OFFSET + 2 * i, slot);
        }
        for (i, &extent) in self.update_extent_nr.iter().enumerate() {
            put_u32(&mut b[..], UPDATE_EXTENTS_OFFSET + 4 * i, extent);
        }
        for (i, &extent) in self.context.iter().enumerate() {
            put_u32(&mut b[..], CONTEXT_OFFSET + 4 * i, extent);
        }
        let crc = crc32c_raw(&b[..]);
        put_u32(&mut b[..], 8, crc);
        b
    }

    /// Decodes a block, checking magic and checksum.
    pub fn decode(block: &[u8]) -> Result<AlTransaction, AlBlockError> {
        if block.len() != BLOCK_4K as usize {
            return Err(AlBlockError::WrongSize(block.len()));
        }
        let magic = get_u32(block, 0);
        if magic != AL_MAGIC {
            return Err(AlBlockError::BadMagic(magic));
        }
        let stored = get_u32(block, 8);
        let mut copy = [0u8; BLOCK_4K as usize];
        copy.copy_from_slice(block);
        copy[8..12].fill(0);
        let computed = crc32c_raw(&copy);
        if stored != computed {
            return Err(AlBlockError::BadChecksum { stored, computed });
        }
        let mut tr = AlTransaction::initialized();
        tr.tr_number = get_u32(block, 4);
        tr.transaction_type = get_u16(block, 12);
        tr.n_updates = get_u16(block, 14);
        tr.context_size = get_u16(block, 16);
        tr.context_start_slot_nr = get_u16(block, 18);
        for (i, r) in tr.reserved.iter_mut().enumerate() {
            *r = get_u32(block, 20 + 4 * i);
        }
        for (i, slot) in tr.update_slot_nr.iter_mut().enumerate() {
            *slot = get_u16(block, UPDATE_SLOTS_OFFSET + 2 * i);
        }
        for (i, extent) in tr.update_extent_nr.iter_mut().enumerate() {
            *extent = get_u32(block, UPDATE_EXTENTS_OFFSET + 4 * i);
        }
        for (i, extent) in tr.context.iter_mut().enumerate() {
            *extent = get_u32(block, CONTEXT_OFFSET + 4 * i);
        }
        Ok(tr)
    }
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

// ---------------------------------------------------------------------------------------------
// Replay (drbdmeta apply-al, drbd-v08-facts.md §3.4)
// ---------------------------------------------------------------------------------------------

/// A warning the replay reports while still succeeding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayWarning {
    /// Some ring blocks failed magic or checksum; they were skipped.
    CorruptTransactions(u64),
    /// A context entry names a slot number out of range.
    ContextSlotOutOfRange {
        /// Ring position of the transaction.
        position: u64,
        /// The slot number.
        slot: u32,
    },
    /// An update entry names a slot number out of range.
    UpdateSlotOutOfRange {
        /// Ring position of the transaction.
        position: u64,
        /// The slot number.
        slot: u16,
    },
    /// Transaction numbers do not follow ring positions (drbdmeta's ASSERT message).
    PositionMismatch {
        /// Ring position.
        position: u64,
        /// Transaction number found there.
        tr_number: u32,
    },
}

impl std::fmt::Display for ReplayWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayWarning::CorruptTransactions(n) => write!(f, "{n} corrupt AL transactions found"),
            ReplayWarning::ContextSlotOutOfRange { position, slot } => {
                write!(f, "slot number out of range: tr:{position} slot:{slot}")
            }
            ReplayWarning::UpdateSlotOutOfRange { position, slot } => {
                write!(
                    f,
                    "update slot number out of range: tr:{position} slot:{slot}"
                )
            }
            ReplayWarning::PositionMismatch {
                position,
                tr_number,
            } => write!(
                f,
                "transaction number {tr_number} at ring position {position} is out of sequence"
            ),
        }
    }
}

/// What a replay of the ring found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// No block carries the 8.4 format and the geometry is the old default: drbdmeta tries the
    /// 0.7 format, finds nothing, and only marks the meta-data clean.
    Legacy,
    /// No valid block at all.
    NoUsableLog,
    /// Valid blocks but none is an UPDATE, and more than a torn first block is missing.
    NoValidUpdate,
    /// Nothing to replay: every valid block is INITIALIZED (and at most position 0 is torn).
    Initialized,
    /// The active set rebuilt from the update transactions.
    Active {
        /// Extents in the active set: all of them must be marked out of sync.
        extents: BTreeSet<u32>,
        /// Transaction number of the newest valid update.
        newest_tr_number: u32,
    },
}

/// The result of reading the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Outcome.
    pub outcome: ReplayOutcome,
    /// Warnings, in the order drbdmeta would print them.
    pub warnings: Vec<ReplayWarning>,
}

/// Replays the ring. `blocks[p]` is the decode result of ring position `p` (already mapped
/// through the stripes). `unclean_magic` tells whether the superblock carries the 8.4 unclean
/// magic (part of drbdmeta's format detection).
pub fn replay(
    blocks: &[Result<AlTransaction, AlBlockError>],
    geometry: AlGeometry,
    unclean_magic: bool,
) -> Replay {
    let n = blocks.len() as u64;
    assert_eq!(
        n,
        geometry.ring_blocks(),
        "one decode result per ring position"
    );
    let has_magic =
        |p: usize| !matches!(blocks.get(p), Some(Err(AlBlockError::BadMagic(_))) | None);
    let format_84 =
        unclean_magic || has_magic(0) || has_magic(1) || geometry != AlGeometry::DEFAULT;
    let mut warnings = Vec::new();
    if !format_84 {
        return Replay {
            outcome: ReplayOutcome::Legacy,
            warnings,
        };
    }
    let valid = blocks.iter().filter(|b| b.is_ok()).count() as u64;
    // drbdmeta counts corrupt blocks only when some are readable.
    if valid > 0 && valid < n {
        warnings.push(ReplayWarning::CorruptTransactions(n - valid));
    }
    if valid == 0 {
        return Replay {
            outcome: ReplayOutcome::NoUsableLog,
            warnings,
        };
    }
    let updates: Vec<(u64, u32)> = blocks
        .iter()
        .enumerate()
        .filter_map(|(p, b)| match b {
            Ok(tr) if !tr.is_initialized() => Some((p as u64, tr.tr_number)),
            _ => None,
        })
        .collect();
    let Some(&(oldest_pos, _)) = updates.iter().min_by(|a, b| wrap_cmp(a.1, b.1)) else {
        let only_first_torn = valid == n - 1 && blocks[0].is_err();
        let outcome = if valid == n || only_first_torn {
            ReplayOutcome::Initialized
        } else {
            ReplayOutcome::NoValidUpdate
        };
        return Replay { outcome, warnings };
    };
    let &(newest_pos, newest_tr) = updates
        .iter()
        .max_by(|a, b| wrap_cmp(a.1, b.1))
        .expect("non-empty");
    let mut slots: BTreeMap<u16, u32> = BTreeMap::new();
    let mut position = oldest_pos;
    loop {
        if let Ok(tr) = &blocks[position as usize]
            && !tr.is_initialized()
        {
            check_sequence(tr, position, newest_pos, newest_tr, n, &mut warnings);
            apply_transaction(tr, position, &mut slots, &mut warnings);
        }
        if position == newest_pos {
            break;
        }
        position = (position + 1) % n;
    }
    let extents = slots.into_values().filter(|&e| e != LC_FREE).collect();
    Replay {
        outcome: ReplayOutcome::Active {
            extents,
            newest_tr_number: newest_tr,
        },
        warnings,
    }
}

/// drbdmeta asserts that `tr - newest.tr == position - newest.position` (mod ring size).
fn check_sequence(
    tr: &AlTransaction,
    position: u64,
    newest_pos: u64,
    newest_tr: u32,
    n: u64,
    warnings: &mut Vec<ReplayWarning>,
) {
    let tr_distance = newest_tr.wrapping_sub(tr.tr_number) as u64;
    let pos_distance = (newest_pos + n - position) % n;
    if tr_distance != pos_distance {
        warnings.push(ReplayWarning::PositionMismatch {
            position,
            tr_number: tr.tr_number,
        });
    }
}

/// Applies one UPDATE transaction: context first, then the updates (so they win).
fn apply_transaction(
    tr: &AlTransaction,
    position: u64,
    slots: &mut BTreeMap<u16, u32>,
    warnings: &mut Vec<ReplayWarning>,
) {
    for (i, &extent) in tr.context.iter().enumerate() {
        let slot = u32::from(tr.context_start_slot_nr) + i as u32;
        if extent == LC_FREE && slot >= u32::from(tr.context_size) {
            continue;
        }
        if slot >= u32::from(SLOT_LIMIT) {
            warnings.push(ReplayWarning::ContextSlotOutOfRange { position, slot });
            continue;
        }
        set_slot(slots, slot as u16, extent);
    }
    for i in 0..AL_UPDATES_PER_TRANSACTION {
        let slot = tr.update_slot_nr[i];
        if i >= usize::from(tr.n_updates) && slot == SLOT_FREE {
            continue;
        }
        if slot >= SLOT_LIMIT {
            warnings.push(ReplayWarning::UpdateSlotOutOfRange { position, slot });
            continue;
        }
        set_slot(slots, slot, tr.update_extent_nr[i]);
    }
}

fn set_slot(slots: &mut BTreeMap<u16, u32>, slot: u16, extent: u32) {
    if extent == LC_FREE {
        slots.remove(&slot);
    } else {
        slots.insert(slot, extent);
    }
}

/// Wrap-aware comparison of 32-bit transaction numbers (signed difference).
fn wrap_cmp(a: u32, b: u32) -> std::cmp::Ordering {
    (a.wrapping_sub(b) as i32).cmp(&0)
}

// ---------------------------------------------------------------------------------------------
// The active set (writer side, drbd-v08-facts.md §3.3)
// ---------------------------------------------------------------------------------------------

/// What [`ActivityLog::activate`] decided for an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The extent is in the durable active set: the write may be issued now.
    Active,
    /// The extent is assigned a slot, but the transaction recording it is not durable yet:
    /// the write must wait for [`ActivityLog::transaction_written`].
    Pending,
    /// Every slot is referenced or changing: retry after a [`ActivityLog::release`] or a
    /// transaction commit.
    Busy,
}

/// A transaction ready to be written, and what must happen before it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedTransaction {
    /// The block to write (with FUA), at `ring_position`.
    pub transaction: AlTransaction,
    /// Ring position (`tr_number mod ring_blocks`); map it with
    /// [`AlGeometry::block_of_position`].
    pub ring_position: u64,
    /// Extents this transaction removes from the active set: the bitmap pages covering them
    /// must be durable before the transaction is written.
    pub evicted: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    /// Extent in the durable active set (LC_FREE if none).
    committed: u32,
    /// Extent this slot is changing to (not yet durable), if any.
    pending: Option<u32>,
    /// In-flight writes holding this slot.
    refs: u32,
    /// LRU stamp: higher = used more recently.
    last_used: u64,
}

/// The in-memory activity log: `al_extents` slots, LRU eviction, transactions of up to 64
/// changes with a rolling 919-slot context window.
///
/// Invariants (checked by [`ActivityLog::invariants`]):
/// - an extent is in at most one slot (committed or pending);
/// - a slot with references is never evicted, and its extent is committed or pending;
/// - at most one transaction is in flight, and it carries at most 64 changes;
/// - `idle` holds exactly the unreferenced slots with no pending change.
#[derive(Clone, Debug)]
pub struct ActivityLog {
    geometry: AlGeometry,
    slots: Vec<Slot>,
    by_extent: BTreeMap<u32, u16>,
    /// Unreferenced, unchanging slots ordered by LRU stamp: eviction candidates.
    idle: BTreeSet<(u64, u16)>,
    /// Slots with a pending change not yet in a transaction.
    queued: Vec<u16>,
    /// Slots whose change is in the transaction being written.
    in_flight: Option<Vec<u16>>,
    next_tr_number: u32,
    context_start: u16,
    clock: u64,
}

impl ActivityLog {
    /// An empty active set with `al_extents` slots, writing its next transaction as number
    /// `next_tr_number` (0 after a re-initialised ring).
    pub fn new(geometry: AlGeometry, al_extents: u16, next_tr_number: u32) -> ActivityLog {
        assert!(al_extents > 0 && al_extents < SLOT_LIMIT);
        let slots = vec![
            Slot {
                committed: LC_FREE,
                pending: None,
                refs: 0,
                last_used: 0,
            };
            usize::from(al_extents)
        ];
        let idle = (0..al_extents).map(|s| (0u64, s)).collect();
        ActivityLog {
            geometry,
            slots,
            by_extent: BTreeMap::new(),
            idle,
            queued: Vec::new(),
            in_flight: None,
            next_tr_number,
            context_start: 0,
            clock: 0,
        }
    }

    /// Number of slots.
    pub fn al_extents(&self) -> u16 {
        self.slots.len() as u16
    }

    /// Takes a reference on `extent` for one write. On `Active` and `Pending` the reference is
    /// held and must be given back with [`ActivityLog::release`]; on `Busy` nothing is held.
    pub fn activate(&mut self, extent: u32) -> Activation {
        assert_ne!(extent, LC_FREE);
        self.clock += 1;
        if let Some(&slot) = self.by_extent.get(&extent) {
            let s = &mut self.slots[usize::from(slot)];
            if s.refs == 0 && s.pending.is_none() {
                self.idle.remove(&(s.last_used, slot));
            }
            s.refs += 1;
            s.last_used = self.clock;
            return if s.pending.is_some() {
                Activation::Pending
            } else {
                Activation::Active
            };
        }
        if self.queued.len() >= AL_UPDATES_PER_TRANSACTION {
            return Activation::Busy;
        }
        let Some((stamp, slot)) = self.idle.pop_first() else {
            return Activation::Busy;
        };
        let _ = stamp;
        let s = &mut self.slots[usize::from(slot)];
        if s.committed != LC_FREE {
            self.by_extent.remove(&s.committed);
        }
        s.pending = Some(extent);
        s.refs = 1;
        s.last_used = self.clock;
        self.by_extent.insert(extent, slot);
        self.queued.push(slot);
        Activation::Pending
    }

    /// Whether `extent` is in the durable active set.
    pub fn is_active(&self, extent: u32) -> bool {
        self.by_extent
            .get(&extent)
            .is_some_and(|&s| self.slots[usize::from(s)].pending.is_none())
    }

    /// Gives back a reference taken by [`ActivityLog::activate`].
    pub fn release(&mut self, extent: u32) {
        let slot = *self
            .by_extent
            .get(&extent)
            .expect("release of an extent not in the AL");
        let s = &mut self.slots[usize::from(slot)];
        assert!(s.refs > 0, "release without a reference");
        s.refs -= 1;
        if s.refs == 0 && s.pending.is_none() {
            self.idle.insert((s.last_used, slot));
        }
    }

    /// Takes a reference on every extent of `first..=last`, all or none: if one of them
    /// finds the log full ([`Activation::Busy`]), the references already taken are given
    /// back and it returns false, so that two writers can never deadlock each holding half of
    /// the other's slots.
    pub fn activate_all(&mut self, first: u32, last: u32) -> bool {
        for e in first..=last {
            if self.activate(e) == Activation::Busy {
                for taken in first..e {
                    self.release(taken);
                }
                return false;
            }
        }
        true
    }

    /// Gives back the references [`ActivityLog::activate_all`] took.
    pub fn release_all(&mut self, first: u32, last: u32) {
        for e in first..=last {
            self.release(e);
        }
    }

    /// Whether a transaction is waiting to be prepared.
    pub fn wants_transaction(&self) -> bool {
        self.in_flight.is_none() && !self.queued.is_empty()
    }

    /// Whether a transaction is being written.
    pub fn transaction_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Builds the next transaction from the queued changes (at most 64). Returns `None` if
    /// nothing is queued or a transaction is already in flight.
    pub fn prepare_transaction(&mut self) -> Option<PreparedTransaction> {
        if !self.wants_transaction() {
            return None;
        }
        let changes: Vec<u16> = std::mem::take(&mut self.queued);
        let context_size = self.al_extents();
        let mut tr =
            AlTransaction::empty_update(self.next_tr_number, context_size, self.context_start);
        let mut evicted = Vec::new();
        for (i, &slot) in changes.iter().enumerate() {
            let s = &self.slots[usize::from(slot)];
            tr.update_slot_nr[i] = slot;
            tr.update_extent_nr[i] = s.pending.expect("queued slot has a pending change");
            if s.committed != LC_FREE {
                evicted.push(s.committed);
            }
        }
        tr.n_updates = changes.len() as u16;
        // The context is the durable map; the updates on top of it win at replay.
        for i in 0..AL_CONTEXT_PER_TRANSACTION {
            let slot = usize::from(self.context_start) + i;
            if let Some(s) = self.slots.get(slot) {
                tr.context[i] = s.committed;
            }
        }
        let next_start = usize::from(self.context_start) + AL_CONTEXT_PER_TRANSACTION;
        self.context_start = if next_start >= self.slots.len() {
            0
        } else {
            next_start as u16
        };
        let ring_position = u64::from(self.next_tr_number) % self.geometry.ring_blocks();
        self.next_tr_number = self.next_tr_number.wrapping_add(1);
        self.in_flight = Some(changes);
        Some(PreparedTransaction {
            transaction: tr,
            ring_position,
            evicted,
        })
    }

    /// The transaction from [`ActivityLog::prepare_transaction`] is durable: its changes
    /// become part of the active set; writes waiting on them may go.
    pub fn transaction_written(&mut self) {
        let changes = self.in_flight.take().expect("no transaction in flight");
        for slot in changes {
            let s = &mut self.slots[usize::from(slot)];
            s.committed = s
                .pending
                .take()
                .expect("in-flight slot has a pending change");
            if s.refs == 0 {
                self.idle.insert((s.last_used, slot));
            }
        }
    }

    /// Restarts the ring at transaction 0, for a ring written anew at another place (the
    /// meta-data moved with a grown device): returns the whole ring's bytes. The first
    /// blocks are update transactions without updates whose context windows carry every
    /// slot's durable extent; the other blocks are INITIALIZED, as create-md writes them. A
    /// replay of that ring finds the active set as it is now. Changes queued stay queued for
    /// the next transaction; references are kept.
    ///
    /// Panics with a transaction in flight (its outcome would be lost).
    pub fn restart_ring(&mut self) -> Vec<u8> {
        assert!(
            self.in_flight.is_none(),
            "ring restarted under a transaction"
        );
        let blocks = self.geometry.ring_blocks();
        let windows = self.slots.len().div_ceil(AL_CONTEXT_PER_TRANSACTION) as u64;
        assert!(windows <= blocks, "more context windows than ring blocks");
        let initialized = AlTransaction::initialized().encode();
        let mut ring = vec![0u8; (blocks * BLOCK_4K) as usize];
        for position in 0..blocks {
            let block = if position < windows {
                let start = position as usize * AL_CONTEXT_PER_TRANSACTION;
                let mut tr =
                    AlTransaction::empty_update(position as u32, self.al_extents(), start as u16);
                for i in 0..AL_CONTEXT_PER_TRANSACTION {
                    if let Some(s) = self.slots.get(start + i) {
                        tr.context[i] = s.committed;
                    }
                }
                tr.encode()
            } else {
                initialized.clone()
            };
            let at = (self.geometry.block_of_position(position) * BLOCK_4K) as usize;
            ring[at..at + BLOCK_4K as usize].copy_from_slice(&block[..]);
        }
        self.next_tr_number = windows as u32;
        self.context_start = 0;
        ring
    }

    /// Extents of the durable active set plus those pending (what the ring may name after a
    /// crash, and everything a write may currently touch).
    pub fn extents(&self) -> BTreeSet<u32> {
        self.by_extent.keys().copied().collect()
    }

    /// Extents in the durable active set, including those an in-flight transaction is about
    /// to evict (they stay covered until it is durable).
    pub fn committed_extents(&self) -> BTreeSet<u32> {
        self.slots
            .iter()
            .map(|s| s.committed)
            .filter(|&e| e != LC_FREE)
            .collect()
    }

    /// Number of references held.
    pub fn references(&self) -> u64 {
        self.slots.iter().map(|s| u64::from(s.refs)).sum()
    }

    /// The next transaction number.
    pub fn next_tr_number(&self) -> u32 {
        self.next_tr_number
    }

    /// Checks the invariants in the type doc; panics on a violation (a bug).
    pub fn invariants(&self) {
        // Without allocating or searching (it runs after every simulated step): every entry
        // of `by_extent` (of `idle`) is checked against its slot, and the entries are counted
        // against the slots that must have one. An entry names one slot and is checked to hold
        // that slot's value, so entries map one-to-one onto such slots; equal counts make it
        // a bijection: every used (idle) slot has exactly its entry, and an extent in two
        // slots would need two entries for one key.
        let (mut used, mut idle_slots) = (0usize, 0usize);
        for (i, s) in self.slots.iter().enumerate() {
            let current = s.pending.unwrap_or(s.committed);
            if current != LC_FREE {
                used += 1;
            }
            if s.refs == 0 && s.pending.is_none() {
                idle_slots += 1;
            }
            if s.refs > 0 {
                assert_ne!(current, LC_FREE, "referenced slot {i} has no extent");
            }
        }
        for (&extent, &slot) in &self.by_extent {
            let s = &self.slots[usize::from(slot)];
            assert_ne!(extent, LC_FREE, "the free marker in by_extent");
            assert_eq!(
                s.pending.unwrap_or(s.committed),
                extent,
                "by_extent: extent {extent} is not in slot {slot}"
            );
        }
        assert_eq!(self.by_extent.len(), used, "by_extent: a used slot missing");
        for &(last_used, slot) in &self.idle {
            let s = &self.slots[usize::from(slot)];
            assert!(
                s.refs == 0 && s.pending.is_none() && s.last_used == last_used,
                "idle set of slot {slot}"
            );
        }
        assert_eq!(
            self.idle.len(),
            idle_slots,
            "idle set: an idle slot missing"
        );
        assert!(self.queued.len() <= AL_UPDATES_PER_TRANSACTION);
        if let Some(f) = &self.in_flight {
            assert!(f.len() <= AL_UPDATES_PER_TRANSACTION);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn crc_vectors() {
        assert_eq!(crc32c_raw(b"123456789"), 0x58E3_FA20);
        let block = AlTransaction::initialized().encode();
        assert_eq!(get_u32(&block[..], 8), 0x709C_C651);
    }

    /// TV1 of drbd-v08-facts.md §3.2, verified against drbdmeta 9.22.
    fn tv1() -> AlTransaction {
        let mut tr = AlTransaction::empty_update(5, 257, 0);
        tr.n_updates = 1;
        tr.update_slot_nr[0] = 2;
        tr.update_extent_nr[0] = 40;
        tr.context[0] = 3;
        tr.context[1] = 10;
        tr
    }

    #[test]
    fn golden_tv1() {
        let block = tv1().encode();
        assert_eq!(get_u32(&block[..], 8), 0xE85F_E3B3);
        let expected = concat!(
            "69cb65a2",
            "00000005",
            "e85fe3b3",
            "0000",
            "0001",
            "0101",
            "0000",
            "00000000000000000000000000000000",
            "0002",
            "ffff"
        );
        assert_eq!(hex(&block[..40]), expected);
        let sha = sha256_hex(&block[..]);
        assert_eq!(
            sha,
            "13b17a5d6e9ca99c395c7b2720b933bffdcc9ac85f7e8ed5ac526ce7e17bf171"
        );
    }

    /// TV2 and TV3.
    #[test]
    fn golden_tv2_tv3() {
        let mut tr = AlTransaction::empty_update(102, 257, 0);
        tr.n_updates = 1;
        tr.update_slot_nr[0] = 0;
        tr.update_extent_nr[0] = 9;
        tr.context[0] = 9;
        tr.context[1] = 8;
        assert_eq!(get_u32(&tr.encode()[..], 8), 0x7098_08CB);
        let mut tr = AlTransaction::empty_update(7, 0, 0);
        tr.n_updates = 1;
        tr.update_slot_nr[0] = 2;
        tr.update_extent_nr[0] = 5;
        assert_eq!(get_u32(&tr.encode()[..], 8), 0x7518_167A);
    }

    fn ring(
        n: usize,
        placed: Vec<(usize, AlTransaction)>,
    ) -> Vec<Result<AlTransaction, AlBlockError>> {
        let mut blocks: Vec<_> = (0..n).map(|_| Ok(AlTransaction::initialized())).collect();
        for (p, tr) in placed {
            blocks[p] = Ok(tr);
        }
        blocks
    }

    fn active(r: &Replay) -> Vec<u32> {
        match &r.outcome {
            ReplayOutcome::Active { extents, .. } => extents.iter().copied().collect(),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    #[test]
    fn replay_tv1() {
        let r = replay(&ring(8, vec![(5, tv1())]), AlGeometry::DEFAULT, true);
        assert_eq!(active(&r), vec![3, 10, 40]);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn replay_later_context_replaces_slot() {
        let mk = |t, slot, ext, ctx: &[u32]| {
            let mut tr = AlTransaction::empty_update(t, 257, 0);
            tr.n_updates = 1;
            tr.update_slot_nr[0] = slot;
            tr.update_extent_nr[0] = ext;
            tr.context[..ctx.len()].copy_from_slice(ctx);
            tr
        };
        let g = AlGeometry {
            stripes: 4,
            stripe_size_4k: 16,
        };
        let blocks = ring(
            64,
            vec![
                (36, mk(100, 0, 7, &[7])),
                (37, mk(101, 1, 8, &[7, 8])),
                (38, mk(102, 0, 9, &[9, 8])),
            ],
        );
        assert_eq!(active(&replay(&blocks, g, true)), vec![8, 9]);
    }

    #[test]
    fn replay_context_free_inside_range_frees_slot() {
        let mut first = AlTransaction::empty_update(1, 10, 0);
        first.context[..4].copy_from_slice(&[1, 2, 3, 4]);
        let second = AlTransaction::empty_update(2, 3, 0);
        let r = replay(
            &ring(8, vec![(1, first), (2, second)]),
            AlGeometry::DEFAULT,
            true,
        );
        assert_eq!(active(&r), vec![4]);
    }

    #[test]
    fn replay_wraps_transaction_numbers() {
        let mut old = AlTransaction::empty_update(u32::MAX, 257, 0);
        old.context[0] = 1;
        let mut new = AlTransaction::empty_update(0, 257, 0);
        new.context[0] = 2;
        let r = replay(
            &ring(8, vec![(7, old), (0, new)]),
            AlGeometry::DEFAULT,
            true,
        );
        assert_eq!(active(&r), vec![2]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn replay_outcomes() {
        let g = AlGeometry::DEFAULT;
        let all_bad: Vec<_> = (0..8).map(|_| Err(AlBlockError::BadMagic(0))).collect();
        assert_eq!(
            replay(&all_bad, g, true).outcome,
            ReplayOutcome::NoUsableLog
        );
        assert_eq!(replay(&all_bad, g, false).outcome, ReplayOutcome::Legacy);
        assert_eq!(
            replay(&ring(8, vec![]), g, false).outcome,
            ReplayOutcome::Initialized
        );
        let mut torn_first = ring(8, vec![]);
        torn_first[0] = Err(AlBlockError::BadChecksum {
            stored: 1,
            computed: 2,
        });
        assert_eq!(
            replay(&torn_first, g, true).outcome,
            ReplayOutcome::Initialized
        );
        torn_first[3] = Err(AlBlockError::BadChecksum {
            stored: 1,
            computed: 2,
        });
        let r = replay(&torn_first, g, true);
        assert_eq!(r.outcome, ReplayOutcome::NoValidUpdate);
        assert_eq!(r.warnings, vec![ReplayWarning::CorruptTransactions(2)]);
    }

    #[test]
    fn active_set_lru_and_transactions() {
        let mut al = ActivityLog::new(AlGeometry::DEFAULT, 2, 0);
        assert_eq!(al.activate(1), Activation::Pending);
        assert_eq!(al.activate(2), Activation::Pending);
        al.invariants();
        let t = al.prepare_transaction().unwrap();
        assert_eq!(t.transaction.n_updates, 2);
        assert!(t.evicted.is_empty());
        assert!(al.prepare_transaction().is_none());
        al.transaction_written();
        al.invariants();
        assert!(al.is_active(1) && al.is_active(2));
        // Both slots referenced: a third extent must wait.
        assert_eq!(al.activate(3), Activation::Busy);
        al.release(1);
        assert_eq!(al.activate(3), Activation::Pending);
        let t = al.prepare_transaction().unwrap();
        assert_eq!(t.evicted, vec![1]);
        assert_eq!(t.ring_position, 1);
        al.transaction_written();
        al.release(2);
        al.release(3);
        al.invariants();
        assert_eq!(al.extents().into_iter().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(al.references(), 0);
        // The LRU victim is the least recently used idle slot: extent 2.
        assert_eq!(al.activate(4), Activation::Pending);
        assert_eq!(al.prepare_transaction().unwrap().evicted, vec![2]);
    }

    /// Transactions the writer produces replay to exactly its committed active set.
    #[test]
    fn writer_and_replay_agree() {
        let g = AlGeometry::DEFAULT;
        let mut al = ActivityLog::new(g, 1000, 0);
        let mut blocks = ring(8, vec![]);
        for round in 0..40u32 {
            for e in 0..30u32 {
                let extent = (round * 37 + e * 101) % 5000;
                if al.activate(extent) != Activation::Busy {
                    al.release(extent);
                }
            }
            if let Some(t) = al.prepare_transaction() {
                blocks[t.ring_position as usize] = Ok(t.transaction);
                al.transaction_written();
            }
            al.invariants();
            let r = replay(&blocks, g, true);
            assert_eq!(
                active(&r),
                al.committed_extents().into_iter().collect::<Vec<_>>()
            );
        }
    }

    /// A ring restarted at another place (a resize moved the meta-data) replays to the
    /// active set as it was, over more than one context window and on a striped ring, and
    /// the transactions after it replay on top.
    #[test]
    fn a_restarted_ring_replays_to_the_same_active_set() {
        let g = AlGeometry::from_options(2, 64).unwrap();
        let decode = |bytes: &[u8]| -> Vec<Result<AlTransaction, AlBlockError>> {
            (0..g.ring_blocks())
                .map(|p| {
                    let at = (g.block_of_position(p) * BLOCK_4K) as usize;
                    AlTransaction::decode(&bytes[at..at + BLOCK_4K as usize])
                })
                .collect()
        };
        let mut al = ActivityLog::new(g, 1500, 77);
        for e in 0..1400u32 {
            let extent = e * 3 + 1;
            assert_ne!(al.activate(extent), Activation::Busy);
            if e % 2 == 0 {
                al.release(extent);
            }
            if al.queued.len() == AL_UPDATES_PER_TRANSACTION {
                al.prepare_transaction().unwrap();
                al.transaction_written();
            }
        }
        // One change still queued: it stays for the next transaction.
        assert_eq!(al.activate(9_999), Activation::Pending);
        let committed = al.committed_extents();
        let mut ring = al.restart_ring();
        al.invariants();
        let r = replay(&decode(&ring), g, true);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(active(&r), committed.iter().copied().collect::<Vec<_>>());
        let t = al.prepare_transaction().unwrap();
        assert_eq!(t.transaction.tr_number, 2, "after the two context windows");
        let at = (g.block_of_position(t.ring_position) * BLOCK_4K) as usize;
        ring[at..at + BLOCK_4K as usize].copy_from_slice(&t.transaction.encode()[..]);
        al.transaction_written();
        let r = replay(&decode(&ring), g, true);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(
            active(&r),
            al.committed_extents().into_iter().collect::<Vec<_>>()
        );
        assert!(active(&r).contains(&9_999));
    }

    fn sha256_hex(data: &[u8]) -> String {
        // A tiny SHA-256 so the golden test needs no extra dependency.
        const K: [u32; 64] = [
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
            0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
            0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
            0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
            0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
            0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
            0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
            0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
            0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
            0xc67178f2,
        ];
        let mut h: [u32; 8] = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ];
        let mut msg = data.to_vec();
        let bit_len = (data.len() as u64) * 8;
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&bit_len.to_be_bytes());
        for chunk in msg.chunks(64) {
            let mut w = [0u32; 64];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([
                    chunk[4 * i],
                    chunk[4 * i + 1],
                    chunk[4 * i + 2],
                    chunk[4 * i + 3],
                ]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[i - 7])
                    .wrapping_add(s1);
            }
            let mut v = h;
            for i in 0..64 {
                let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
                let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
                let t1 = v[7]
                    .wrapping_add(s1)
                    .wrapping_add(ch)
                    .wrapping_add(K[i])
                    .wrapping_add(w[i]);
                let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
                let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
                let t2 = s0.wrapping_add(maj);
                v = [
                    t1.wrapping_add(t2),
                    v[0],
                    v[1],
                    v[2],
                    v[3].wrapping_add(t1),
                    v[4],
                    v[5],
                    v[6],
                ];
            }
            for i in 0..8 {
                h[i] = h[i].wrapping_add(v[i]);
            }
        }
        h.iter().map(|x| format!("{x:08x}")).collect()
    }

    proptest! {
        #[test]
        fn transaction_round_trip(
            tr_number in any::<u32>(),
            ty in any::<u16>(),
            n_updates in 0u16..=64,
            context_size in any::<u16>(),
            start in any::<u16>(),
            slots in proptest::collection::vec(any::<u16>(), 64),
            extents in proptest::collection::vec(any::<u32>(), 64),
            context in proptest::collection::vec(any::<u32>(), 919),
        ) {
            let mut tr = AlTransaction::empty_update(tr_number, context_size, start);
            tr.transaction_type = ty;
            tr.n_updates = n_updates;
            tr.update_slot_nr.copy_from_slice(&slots);
            tr.update_extent_nr.copy_from_slice(&extents);
            tr.context.copy_from_slice(&context);
            let block = tr.encode();
            prop_assert_eq!(AlTransaction::decode(&block[..]), Ok(tr));
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = AlTransaction::decode(&bytes);
        }

        #[test]
        fn a_flipped_bit_is_detected(byte in 0usize..4096, bit in 0u8..8) {
            let mut block = tv1().encode();
            block[byte] ^= 1 << bit;
            prop_assert!(AlTransaction::decode(&block[..]).is_err());
        }
    }
}
