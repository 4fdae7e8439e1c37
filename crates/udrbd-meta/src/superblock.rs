//! The v08 superblock: 4096 bytes at `md_offset`, all fields big-endian
//! (drbd-v08-facts.md §2, every offset verified against drbdmeta 9.22).
//!
//! ```text
//!  off size field                 meaning
//!    0    8 la_size_sect          last agreed device size, sectors (0 = never negotiated)
//!    8    8 uuid[CURRENT]         current data generation UUID
//!   16    8 uuid[BITMAP]          bitmap UUID (0 if none)
//!   24    8 uuid[HISTORY_START]   younger history UUID
//!   32    8 uuid[HISTORY_END]     older history UUID
//!   40    8 device_uuid           opaque, preserved
//!   48    8 reserved              0
//!   56    4 flags                 MDF_* bits
//!   60    4 magic                 0x8374026B (v08) or 0x8374026C (8.4 "unclean")
//!   64    4 md_size_sect          size of the meta-data area, sectors
//!   68    4 al_offset             signed sectors from md_offset
//!   72    4 al_nr_extents         configured al-extents (informational)
//!   76    4 bm_offset             signed sectors from md_offset
//!   80    4 bm_bytes_per_bit      4096
//!   84    4 la_peer_max_bio_size  last peer max BIO size, bytes
//!   88    4 al_stripes            0/0 = old default 1 x 8
//!   92    4 al_stripe_size_4k
//!   96 4000 reserved              zero (drbdmeta zeroes it on every write)
//! ```
//!
//! Invariants: [`Superblock::encode`] produces exactly 4096 bytes with the reserved area zero;
//! [`Superblock::decode`] accepts only the two v08 magics and names every other one
//! (v07, v09, unknown); whether the offsets fit the device is checked separately against a
//! [`Layout`] by [`Superblock::check_layout`].

use zerocopy::byteorder::big_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::BLOCK_4K;
use crate::layout::{AlGeometry, Layout};

/// `DRBD_MAGIC`, the base of every meta-data magic (and the h80 packet magic).
pub const DRBD_MAGIC: u32 = 0x8374_0267;
/// DRBD 0.7 meta-data.
pub const MD_MAGIC_07: u32 = DRBD_MAGIC + 3;
/// v08 meta-data, clean (written by drbdmeta create-md and apply-al).
pub const MD_MAGIC_08: u32 = DRBD_MAGIC + 4;
/// v08 meta-data as written by an 8.4 kernel while attached.
pub const MD_MAGIC_84_UNCLEAN: u32 = DRBD_MAGIC + 5;
/// DRBD 9 meta-data.
pub const MD_MAGIC_09: u32 = DRBD_MAGIC + 6;
/// Generation UUID of freshly created meta-data.
pub const UUID_JUST_CREATED: u64 = 4;
/// The only bitmap granularity DRBD 8.4 accepts.
pub const BM_BYTES_PER_BIT: u32 = 4096;
/// What drbdmeta writes into `al_nr_extents`.
pub const DRBDMETA_AL_NR_EXTENTS: u32 = 257;
/// DRBD_MAX_BIO_SIZE: 1 MiB.
pub const DRBD_MAX_BIO_SIZE: u32 = 1 << 20;
/// Offset of the magic in the 0.7 superblock (after `la_kb` u64 and five u32 counters).
const MD_07_MAGIC_OFFSET: usize = 28;

/// The on-disk superblock, field for field.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawSuperblock {
    la_size_sect: U64,
    uuid: [U64; 4],
    device_uuid: U64,
    reserved_u64: U64,
    flags: U32,
    magic: U32,
    md_size_sect: U32,
    al_offset: I32,
    al_nr_extents: U32,
    bm_offset: I32,
    bm_bytes_per_bit: U32,
    la_peer_max_bio_size: U32,
    al_stripes: U32,
    al_stripe_size_4k: U32,
    reserved: [u8; 4000],
}

const _: () = assert!(core::mem::size_of::<RawSuperblock>() == BLOCK_4K as usize);
const _: () = assert!(core::mem::offset_of!(RawSuperblock, flags) == 56);
const _: () = assert!(core::mem::offset_of!(RawSuperblock, magic) == 60);
const _: () = assert!(core::mem::offset_of!(RawSuperblock, al_stripe_size_4k) == 92);
const _: () = assert!(core::mem::offset_of!(RawSuperblock, reserved) == 96);

/// Which v08 magic a superblock carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// `MD_MAGIC_08`: clean, as drbdmeta leaves it.
    V08,
    /// `MD_MAGIC_84_UNCLEAN`: written while attached; the AL may need a replay.
    V84Unclean,
}

impl Magic {
    /// The on-disk value.
    pub fn value(self) -> u32 {
        match self {
            Magic::V08 => MD_MAGIC_08,
            Magic::V84Unclean => MD_MAGIC_84_UNCLEAN,
        }
    }
}

/// The MDF_* flag word (drbd-v08-facts.md §2.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MdFlags(pub u32);

impl MdFlags {
    /// Disk state > Inconsistent.
    pub const CONSISTENT: u32 = 0x001;
    /// Primary (or a diskless Primary peer uses this disk).
    pub const PRIMARY_IND: u32 = 0x002;
    /// Connection state > WFReportParams.
    pub const CONNECTED_IND: u32 = 0x004;
    /// A full sync is pending.
    pub const FULL_SYNC: u32 = 0x008;
    /// Disk state > Outdated.
    pub const WAS_UP_TO_DATE: u32 = 0x010;
    /// The peer's disk is known to be Inconsistent or Outdated.
    pub const PEER_OUT_DATED: u32 = 0x020;
    /// Crashed Primary that has not seen its peer since.
    pub const CRASHED_PRIMARY: u32 = 0x040;
    /// The activity log needs no replay.
    pub const AL_CLEAN: u32 = 0x080;
    /// `al-updates no` (or a resize/move in progress).
    pub const AL_DISABLED: u32 = 0x100;

    /// Whether every bit of `mask` is set.
    pub fn has(self, mask: u32) -> bool {
        self.0 & mask == mask
    }

    /// Sets or clears the bits of `mask`.
    pub fn set(&mut self, mask: u32, on: bool) {
        if on {
            self.0 |= mask;
        } else {
            self.0 &= !mask;
        }
    }
}

/// The four generation UUIDs stored on disk (drbd-v08-facts.md §4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GenerationUuids {
    /// Current data generation.
    pub current: u64,
    /// Base generation of the bitmap, 0 if the bitmap is not in use.
    pub bitmap: u64,
    /// History: `[younger, older]`.
    pub history: [u64; 2],
}

impl GenerationUuids {
    /// As an array in on-disk order: current, bitmap, history start, history end.
    pub fn to_array(self) -> [u64; 4] {
        [self.current, self.bitmap, self.history[0], self.history[1]]
    }

    /// From an array in on-disk order.
    pub fn from_array(a: [u64; 4]) -> Self {
        GenerationUuids {
            current: a[0],
            bitmap: a[1],
            history: [a[2], a[3]],
        }
    }
}

/// A decoded v08 superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Which v08 magic.
    pub magic: Magic,
    /// Last agreed size of the device, sectors.
    pub la_size_sect: u64,
    /// Generation UUIDs.
    pub uuids: GenerationUuids,
    /// Opaque device UUID.
    pub device_uuid: u64,
    /// MDF_* flags.
    pub flags: MdFlags,
    /// Size of the meta-data area, sectors.
    pub md_size_sect: u32,
    /// AL start relative to the superblock, sectors.
    pub al_offset: i32,
    /// Configured al-extents when last written.
    pub al_nr_extents: u32,
    /// Bitmap start relative to the superblock, sectors.
    pub bm_offset: i32,
    /// Bitmap granularity; always 4096.
    pub bm_bytes_per_bit: u32,
    /// Last peer max BIO size, bytes.
    pub la_peer_max_bio_size: u32,
    /// AL stripes as stored (0/0 = default).
    pub al_stripes: u32,
    /// AL stripe size in 4 KiB blocks as stored.
    pub al_stripe_size_4k: u32,
}

/// Why a 4 KiB block is not a v08 superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    /// The block is not 4096 bytes.
    #[error("superblock must be 4096 bytes, got {0}")]
    WrongSize(usize),
    /// 0.7 meta-data.
    #[error("found v07 (DRBD 0.7) meta-data, not v08")]
    V07,
    /// DRBD 9 meta-data.
    #[error("found v09 (DRBD 9) meta-data, not v08")]
    V09,
    /// An activity-log block where the superblock should be: the device shrank.
    #[error(
        "found an activity-log block where the superblock should be: the device is smaller than when its meta-data was created (truncated?)"
    )]
    Truncated,
    /// Anything else.
    #[error("no v08 meta-data: wrong magic 0x{0:08X} (expected 0x{MD_MAGIC_08:08X})")]
    WrongMagic(u32),
    /// The bitmap granularity is not 4 KiB.
    #[error("bm-bytes-per-bit is {0}, DRBD 8.4 only supports 4096")]
    BadBytesPerBit(u32),
}

/// The stored offsets disagree with the ones computed for this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "meta-data does not match the device size: stored {field} {stored}, expected {expected} (device resized or truncated?)"
)]
pub struct LayoutMismatch {
    /// The superblock field that differs.
    pub field: &'static str,
    /// Its stored value.
    pub stored: i64,
    /// The value computed from the device size and AL stripes.
    pub expected: i64,
}

impl Superblock {
    /// What `drbdmeta create-md` writes for `layout` (drbd-v08-facts.md §2.5).
    pub fn new_created(layout: &Layout, la_peer_max_bio_size: u32) -> Superblock {
        Superblock {
            magic: Magic::V08,
            la_size_sect: 0,
            uuids: GenerationUuids {
                current: UUID_JUST_CREATED,
                ..GenerationUuids::default()
            },
            device_uuid: 0,
            flags: MdFlags(MdFlags::AL_CLEAN),
            md_size_sect: layout.md_size_sect as u32,
            al_offset: layout.al_offset_sect as i32,
            al_nr_extents: DRBDMETA_AL_NR_EXTENTS,
            bm_offset: layout.bm_offset_sect as i32,
            bm_bytes_per_bit: BM_BYTES_PER_BIT,
            la_peer_max_bio_size,
            al_stripes: layout.al.stripes,
            al_stripe_size_4k: layout.al.stripe_size_4k,
        }
    }

    /// Decodes a 4096-byte block.
    pub fn decode(block: &[u8]) -> Result<Superblock, SuperblockError> {
        let raw = RawSuperblock::ref_from_bytes(block)
            .map_err(|_| SuperblockError::WrongSize(block.len()))?;
        let magic = match raw.magic.get() {
            MD_MAGIC_08 => Magic::V08,
            MD_MAGIC_84_UNCLEAN => Magic::V84Unclean,
            MD_MAGIC_07 => return Err(SuperblockError::V07),
            MD_MAGIC_09 => return Err(SuperblockError::V09),
            other => return Err(classify_foreign_block(block, other)),
        };
        if raw.bm_bytes_per_bit.get() != BM_BYTES_PER_BIT {
            return Err(SuperblockError::BadBytesPerBit(raw.bm_bytes_per_bit.get()));
        }
        Ok(Superblock {
            magic,
            la_size_sect: raw.la_size_sect.get(),
            uuids: GenerationUuids::from_array(raw.uuid.map(|u| u.get())),
            device_uuid: raw.device_uuid.get(),
            flags: MdFlags(raw.flags.get()),
            md_size_sect: raw.md_size_sect.get(),
            al_offset: raw.al_offset.get(),
            al_nr_extents: raw.al_nr_extents.get(),
            bm_offset: raw.bm_offset.get(),
            bm_bytes_per_bit: raw.bm_bytes_per_bit.get(),
            la_peer_max_bio_size: raw.la_peer_max_bio_size.get(),
            al_stripes: raw.al_stripes.get(),
            al_stripe_size_4k: raw.al_stripe_size_4k.get(),
        })
    }

    /// Encodes into 4096 bytes; the reserved area is zero.
    pub fn encode(&self) -> Box<[u8; BLOCK_4K as usize]> {
        let raw = RawSuperblock {
            la_size_sect: U64::new(self.la_size_sect),
            uuid: self.uuids.to_array().map(U64::new),
            device_uuid: U64::new(self.device_uuid),
            reserved_u64: U64::new(0),
            flags: U32::new(self.flags.0),
            magic: U32::new(self.magic.value()),
            md_size_sect: U32::new(self.md_size_sect),
            al_offset: I32::new(self.al_offset),
            al_nr_extents: U32::new(self.al_nr_extents),
            bm_offset: I32::new(self.bm_offset),
            bm_bytes_per_bit: U32::new(self.bm_bytes_per_bit),
            la_peer_max_bio_size: U32::new(self.la_peer_max_bio_size),
            al_stripes: U32::new(self.al_stripes),
            al_stripe_size_4k: U32::new(self.al_stripe_size_4k),
            reserved: [0; 4000],
        };
        let mut out = Box::new([0u8; BLOCK_4K as usize]);
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// The AL geometry this superblock describes.
    pub fn al_geometry(&self) -> AlGeometry {
        AlGeometry::from_superblock(self.al_stripes, self.al_stripe_size_4k)
    }

    /// Records `layout`'s meta-data geometry (the fields [`Superblock::check_layout`]
    /// compares): the meta-data moved or grew with its device.
    pub fn set_layout(&mut self, layout: &Layout) {
        self.md_size_sect = layout.md_size_sect as u32;
        self.al_offset = layout.al_offset_sect as i32;
        self.bm_offset = layout.bm_offset_sect as i32;
    }

    /// Checks the stored offsets against the layout computed for the device, as drbdmeta's
    /// validity check does (a mismatch means "no meta-data" there).
    pub fn check_layout(&self, layout: &Layout) -> Result<(), LayoutMismatch> {
        let fields = [
            (
                "md_size_sect",
                i64::from(self.md_size_sect),
                layout.md_size_sect as i64,
            ),
            (
                "al_offset",
                i64::from(self.al_offset),
                layout.al_offset_sect,
            ),
            (
                "bm_offset",
                i64::from(self.bm_offset),
                layout.bm_offset_sect,
            ),
        ];
        for (field, stored, expected) in fields {
            if stored != expected {
                return Err(LayoutMismatch {
                    field,
                    stored,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Whether drbdmeta would call this meta-data clean (no apply-al needed).
    pub fn is_clean(&self) -> bool {
        self.magic == Magic::V08 && self.flags.has(MdFlags::AL_CLEAN)
    }
}

/// Names a block that carries no v08 magic: 0.7 meta-data keeps its magic at offset 28, and an
/// activity-log block at the superblock's place means the device lost its tail.
fn classify_foreign_block(block: &[u8], magic: u32) -> SuperblockError {
    let be32 = |off: usize| {
        u32::from_be_bytes([block[off], block[off + 1], block[off + 2], block[off + 3]])
    };
    if be32(MD_07_MAGIC_OFFSET) == MD_MAGIC_07 {
        return SuperblockError::V07;
    }
    if be32(0) == crate::activity_log::AL_MAGIC {
        return SuperblockError::Truncated;
    }
    SuperblockError::WrongMagic(magic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first 96 bytes after a default create-md on 256 MiB, read from drbdmeta 9.22's
    /// output (drbd-v08-facts.md §2).
    #[test]
    fn golden_created_superblock() {
        let layout = Layout::internal(256 << 20, AlGeometry::DEFAULT).unwrap();
        let block = Superblock::new_created(&layout, 0).encode();
        let hex: String = block[..96].iter().map(|b| format!("{b:02x}")).collect();
        let expected = concat!(
            "0000000000000000",
            "0000000000000004",
            "0000000000000000",
            "0000000000000000",
            "0000000000000000",
            "0000000000000000",
            "0000000000000000",
            "00000080",
            "8374026b",
            "00000058",
            "ffffffc0",
            "00000101",
            "ffffffb0",
            "00001000",
            "00000000",
            "00000001",
            "00000008"
        );
        assert_eq!(hex, expected);
        assert!(block[96..].iter().all(|&b| b == 0));
        let decoded = Superblock::decode(&block[..]).unwrap();
        assert!(decoded.check_layout(&layout).is_ok());
        assert!(decoded.is_clean());
    }

    #[test]
    fn foreign_magics_are_named() {
        let mut block = [0u8; 4096];
        block[60..64].copy_from_slice(&MD_MAGIC_09.to_be_bytes());
        assert_eq!(Superblock::decode(&block), Err(SuperblockError::V09));
        block[60..64].copy_from_slice(&MD_MAGIC_07.to_be_bytes());
        assert_eq!(Superblock::decode(&block), Err(SuperblockError::V07));
        let mut block = [0u8; 4096];
        block[28..32].copy_from_slice(&MD_MAGIC_07.to_be_bytes());
        assert_eq!(Superblock::decode(&block), Err(SuperblockError::V07));
        let mut block = [0u8; 4096];
        block[0..4].copy_from_slice(&crate::activity_log::AL_MAGIC.to_be_bytes());
        assert_eq!(Superblock::decode(&block), Err(SuperblockError::Truncated));
        assert_eq!(
            Superblock::decode(&[0u8; 4096]),
            Err(SuperblockError::WrongMagic(0))
        );
        assert_eq!(
            Superblock::decode(&[0u8; 100]),
            Err(SuperblockError::WrongSize(100))
        );
    }

    fn arb_superblock() -> impl Strategy<Value = Superblock> {
        (
            any::<bool>(),
            any::<u64>(),
            any::<[u64; 4]>(),
            any::<u64>(),
            any::<u32>(),
            any::<(u32, i32, u32, i32, u32, u32, u32)>(),
        )
            .prop_map(|(clean, la, uuids, device_uuid, flags, rest)| Superblock {
                magic: if clean { Magic::V08 } else { Magic::V84Unclean },
                la_size_sect: la,
                uuids: GenerationUuids::from_array(uuids),
                device_uuid,
                flags: MdFlags(flags),
                md_size_sect: rest.0,
                al_offset: rest.1,
                al_nr_extents: rest.2,
                bm_offset: rest.3,
                bm_bytes_per_bit: BM_BYTES_PER_BIT,
                la_peer_max_bio_size: rest.4,
                al_stripes: rest.5,
                al_stripe_size_4k: rest.6,
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(sb in arb_superblock()) {
            let block = sb.encode();
            prop_assert_eq!(Superblock::decode(&block[..]), Ok(sb));
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = Superblock::decode(&bytes);
        }

        #[test]
        fn decode_arbitrary_blocks_never_panics(bytes in proptest::collection::vec(any::<u8>(), 4096)) {
            if let Ok(sb) = Superblock::decode(&bytes) {
                // A decoded block re-encodes to the same fields (reserved bytes are dropped).
                prop_assert_eq!(Superblock::decode(&sb.encode()[..]), Ok(sb));
            }
        }
    }
}
