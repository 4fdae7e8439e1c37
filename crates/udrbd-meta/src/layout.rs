//! Where v08 meta-data lives on the meta device (drbd-v08-facts.md §1).
//!
//! Internal meta-data ("flexible internal", the default) grows backwards from the end of the
//! backing device, low to high addresses:
//!
//! ```text
//!   [ data ... ][ bitmap: bm_sect ][ AL: al_size_sect ][ superblock: 8 sectors ][ 0..7 pad ]
//!                ^ md_offset+bm_offset ^ md_offset+al_offset ^ md_offset (4 KiB aligned)
//! ```
//!
//! Flexible external meta-data grows forwards from sector 0 of its own device and uses all of
//! it; indexed external meta-data is slot `n` of 128 MiB:
//!
//! ```text
//!   [ superblock: 8 sectors ][ AL: al_size_sect ][ bitmap ... ]
//!   ^ md_offset               ^ +al_offset          ^ +bm_offset
//! ```
//!
//! Invariants of a [`Layout`] (checked by [`Layout::check`]):
//! - `al_offset` and `bm_offset` are sector offsets relative to `md_offset` (signed);
//! - the superblock, the AL and the bitmap are 4 KiB aligned and do not overlap;
//! - the AL holds exactly `al.ring_blocks()` 4 KiB blocks;
//! - for internal meta-data, `usable_data_sect + md_size_sect == (C & !7)` where C is the
//!   device size in whole sectors; the bitmap is sized from C, not from the usable size.
//!
//! drbdmeta recomputes these numbers from the device size and the AL stripes and treats any
//! mismatch as "no meta-data", so they are reproduced bit-exactly here.

use crate::{BLOCK_4K, SECTOR_SIZE};

/// Sectors in one 4 KiB meta-data block.
pub const SECT_PER_4K: u64 = BLOCK_4K / SECTOR_SIZE;
/// Sectors of data one 4 KiB bitmap block covers (4096 bytes * 8 bits * 8 sectors).
pub const DATA_SECT_PER_BM_BLOCK: u64 = BLOCK_4K * 8 * 8;
/// Size of one indexed-external meta-data slot (the fixed 128 MiB layout), in sectors.
pub const INDEXED_SLOT_SECT: u64 = 262_144;
/// drbdmeta refuses devices above 1 PiB (2^41 sectors).
pub const MAX_DEVICE_SECT: u64 = 1 << 41;
/// The kernel caps flexible meta-data at 2^51 sectors (64-bit kernels).
pub const DRBD_MAX_SECTORS_FLEX: u64 = 1 << 51;
/// drbdmeta's limits on the AL ring: 8 ..= 8192 blocks of 4 KiB (32 KiB ..= 32 MiB).
pub const AL_RING_BLOCKS_MIN: u64 = 8;
/// See [`AL_RING_BLOCKS_MIN`].
pub const AL_RING_BLOCKS_MAX: u64 = 8192;

/// The three `meta-disk` variants of drbd.conf (drbd-v08-facts.md §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaDiskKind {
    /// `meta-disk internal`: meta-data at the end of the backing device.
    Internal,
    /// `meta-disk /dev/X`: the whole meta device, starting at sector 0.
    FlexExternal,
    /// `meta-disk /dev/X [n]`: slot `n` of 128 MiB on the meta device.
    Indexed(u32),
}

/// The activity-log ring geometry: `stripes` stripes of `stripe_size_4k` blocks of 4 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlGeometry {
    /// Number of stripes (`al-stripes`).
    pub stripes: u32,
    /// Blocks of 4 KiB per stripe (`al-stripe-size-kB` / 4, truncated).
    pub stripe_size_4k: u32,
}

/// Why a layout cannot be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The device cannot hold the meta-data and at least one 4 KiB block of data.
    #[error("device of {device_bytes} bytes is too small for {md_bytes} bytes of meta-data")]
    DeviceTooSmall {
        /// Size of the device.
        device_bytes: u64,
        /// Size the meta-data needs (plus one data block for internal meta-data).
        md_bytes: u64,
    },
    /// drbdmeta's 1 PiB limit.
    #[error("device of {device_bytes} bytes is larger than the 1 PiB limit of v08 meta-data")]
    DeviceTooLarge {
        /// Size of the device.
        device_bytes: u64,
    },
    /// The AL ring is smaller than 32 KiB.
    #[error(
        "invalid (too small) al-stripe* settings: {stripes} x {stripe_size_4k} blocks of 4 KiB"
    )]
    AlTooSmall {
        /// `al-stripes`.
        stripes: u32,
        /// Stripe size in 4 KiB blocks.
        stripe_size_4k: u32,
    },
    /// The AL ring is larger than 32 MiB.
    #[error(
        "invalid (too large) al-stripe* settings: {stripes} x {stripe_size_4k} blocks of 4 KiB"
    )]
    AlTooLarge {
        /// `al-stripes`.
        stripes: u32,
        /// Stripe size in 4 KiB blocks.
        stripe_size_4k: u32,
    },
    /// Indexed external meta-data only allows the default AL.
    #[error("indexed external meta-data requires the default activity log (1 stripe of 32 KiB)")]
    IndexedNeedsDefaultAl,
}

impl AlGeometry {
    /// The default: one stripe of 32 KiB (8 blocks).
    pub const DEFAULT: AlGeometry = AlGeometry {
        stripes: 1,
        stripe_size_4k: 8,
    };

    /// Builds the geometry from drbdmeta's options (`--al-stripes N --al-stripe-size-kB K`,
    /// K divided by 4 with truncation) and checks drbdmeta's limits.
    pub fn from_options(stripes: u32, stripe_size_kib: u32) -> Result<Self, LayoutError> {
        let geometry = AlGeometry {
            stripes,
            stripe_size_4k: stripe_size_kib / 4,
        };
        geometry.validate()?;
        Ok(geometry)
    }

    /// Interprets the superblock fields: 0/0 means the old default of 1 x 8.
    pub fn from_superblock(stripes: u32, stripe_size_4k: u32) -> Self {
        if stripes == 0 && stripe_size_4k == 0 {
            AlGeometry::DEFAULT
        } else {
            AlGeometry {
                stripes,
                stripe_size_4k,
            }
        }
    }

    /// Checks drbdmeta's ring limits: 8 ..= 8192 blocks.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let blocks = self.ring_blocks();
        if blocks < AL_RING_BLOCKS_MIN {
            return Err(LayoutError::AlTooSmall {
                stripes: self.stripes,
                stripe_size_4k: self.stripe_size_4k,
            });
        }
        if blocks > AL_RING_BLOCKS_MAX {
            return Err(LayoutError::AlTooLarge {
                stripes: self.stripes,
                stripe_size_4k: self.stripe_size_4k,
            });
        }
        Ok(())
    }

    /// Number of 4 KiB blocks in the ring.
    pub fn ring_blocks(&self) -> u64 {
        u64::from(self.stripes) * u64::from(self.stripe_size_4k)
    }

    /// Size of the AL in sectors.
    pub fn size_sect(&self) -> u64 {
        self.ring_blocks() * SECT_PER_4K
    }

    /// The on-disk block (counted from the AL start) that holds ring position `position`
    /// (= transaction number modulo the ring size): positions go round-robin over the stripes.
    pub fn block_of_position(&self, position: u64) -> u64 {
        debug_assert!(position < self.ring_blocks());
        let stripes = u64::from(self.stripes);
        (position % stripes) * u64::from(self.stripe_size_4k) + position / stripes
    }

    /// The largest `al-extents` the kernel accepts for this ring: 919 per block, one block
    /// spare so a torn write never loses part of the active set.
    pub fn max_al_extents(&self) -> u64 {
        crate::activity_log::AL_CONTEXT_PER_TRANSACTION as u64 * (self.ring_blocks() - 1)
    }
}

impl Default for AlGeometry {
    fn default() -> Self {
        AlGeometry::DEFAULT
    }
}

/// The computed placement of v08 meta-data on its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Which variant.
    pub kind: MetaDiskKind,
    /// Activity-log geometry.
    pub al: AlGeometry,
    /// Absolute sector of the superblock on the meta device.
    pub md_offset_sect: u64,
    /// Total size of the meta-data area in sectors.
    pub md_size_sect: u64,
    /// AL start, in sectors relative to `md_offset_sect`.
    pub al_offset_sect: i64,
    /// Bitmap start, in sectors relative to `md_offset_sect`.
    pub bm_offset_sect: i64,
    /// Size of the bitmap area in sectors.
    pub bm_size_sect: u64,
    /// The most data this meta-data can describe, in sectors. For internal meta-data this is
    /// the part of the device below the bitmap; for external meta-data it is bounded by the
    /// bitmap's coverage (the data device's own size must be applied by the caller).
    pub max_data_sect: u64,
}

impl Layout {
    /// Internal meta-data on a backing device of `device_bytes` bytes (§1.2).
    pub fn internal(device_bytes: u64, al: AlGeometry) -> Result<Layout, LayoutError> {
        al.validate()?;
        let capacity_sect = device_bytes / SECTOR_SIZE;
        if capacity_sect > MAX_DEVICE_SECT {
            return Err(LayoutError::DeviceTooLarge { device_bytes });
        }
        let bm_size_sect = internal_bitmap_sect(capacity_sect);
        let md_size_sect = bm_size_sect + SECT_PER_4K + al.size_sect();
        let aligned_sect = capacity_sect & !(SECT_PER_4K - 1);
        // Require at least one 4 KiB block of data below the meta-data.
        if aligned_sect < md_size_sect + SECT_PER_4K {
            return Err(LayoutError::DeviceTooSmall {
                device_bytes,
                md_bytes: (md_size_sect + SECT_PER_4K) * SECTOR_SIZE,
            });
        }
        let md_offset_sect = aligned_sect - SECT_PER_4K;
        let layout = Layout {
            kind: MetaDiskKind::Internal,
            al,
            md_offset_sect,
            md_size_sect,
            al_offset_sect: -(al.size_sect() as i64),
            bm_offset_sect: -(md_size_sect as i64) + SECT_PER_4K as i64,
            bm_size_sect,
            max_data_sect: (aligned_sect - md_size_sect).min(DRBD_MAX_SECTORS_FLEX),
        };
        layout.check();
        Ok(layout)
    }

    /// Flexible external meta-data using the whole meta device of `meta_device_bytes` (§1.3).
    pub fn flex_external(meta_device_bytes: u64, al: AlGeometry) -> Result<Layout, LayoutError> {
        al.validate()?;
        let md_size_sect = meta_device_bytes / SECTOR_SIZE;
        let bm_offset = SECT_PER_4K + al.size_sect();
        // At least one 4 KiB bitmap block.
        if md_size_sect < bm_offset + SECT_PER_4K {
            return Err(LayoutError::DeviceTooSmall {
                device_bytes: meta_device_bytes,
                md_bytes: (bm_offset + SECT_PER_4K) * SECTOR_SIZE,
            });
        }
        let bm_size_sect = md_size_sect - bm_offset;
        let layout = Layout {
            kind: MetaDiskKind::FlexExternal,
            al,
            md_offset_sect: 0,
            md_size_sect,
            al_offset_sect: SECT_PER_4K as i64,
            bm_offset_sect: bm_offset as i64,
            bm_size_sect,
            max_data_sect: (bm_size_sect * SECTOR_SIZE * 8 * 8).min(DRBD_MAX_SECTORS_FLEX),
        };
        layout.check();
        Ok(layout)
    }

    /// Indexed external meta-data, slot `index` of 128 MiB on a meta device of
    /// `meta_device_bytes` (§1.4).
    pub fn indexed(
        meta_device_bytes: u64,
        index: u32,
        al: AlGeometry,
    ) -> Result<Layout, LayoutError> {
        if al != AlGeometry::DEFAULT {
            return Err(LayoutError::IndexedNeedsDefaultAl);
        }
        let md_offset_sect = u64::from(index) * INDEXED_SLOT_SECT;
        let needed_sect = md_offset_sect + INDEXED_SLOT_SECT;
        if meta_device_bytes / SECTOR_SIZE < needed_sect {
            return Err(LayoutError::DeviceTooSmall {
                device_bytes: meta_device_bytes,
                md_bytes: needed_sect * SECTOR_SIZE,
            });
        }
        let bm_offset = SECT_PER_4K + al.size_sect();
        let bm_size_sect = INDEXED_SLOT_SECT - bm_offset;
        let layout = Layout {
            kind: MetaDiskKind::Indexed(index),
            al,
            md_offset_sect,
            md_size_sect: INDEXED_SLOT_SECT,
            al_offset_sect: SECT_PER_4K as i64,
            bm_offset_sect: bm_offset as i64,
            bm_size_sect,
            max_data_sect: bm_size_sect * SECTOR_SIZE * 8 * 8,
        };
        layout.check();
        Ok(layout)
    }

    /// Computes the layout of `kind` for a meta device of `meta_device_bytes`.
    pub fn for_kind(
        kind: MetaDiskKind,
        meta_device_bytes: u64,
        al: AlGeometry,
    ) -> Result<Layout, LayoutError> {
        match kind {
            MetaDiskKind::Internal => Layout::internal(meta_device_bytes, al),
            MetaDiskKind::FlexExternal => Layout::flex_external(meta_device_bytes, al),
            MetaDiskKind::Indexed(index) => Layout::indexed(meta_device_bytes, index, al),
        }
    }

    /// Byte offset of the superblock of `kind` on a meta device of `meta_device_bytes`. It does
    /// not depend on the AL geometry, so it is where a reader looks first.
    pub fn superblock_byte_for(
        kind: MetaDiskKind,
        meta_device_bytes: u64,
    ) -> Result<u64, LayoutError> {
        let capacity_sect = meta_device_bytes / SECTOR_SIZE;
        let (sb_sect, needed_sect) = match kind {
            MetaDiskKind::Internal => {
                let aligned = capacity_sect & !(SECT_PER_4K - 1);
                (aligned.saturating_sub(SECT_PER_4K), SECT_PER_4K)
            }
            MetaDiskKind::FlexExternal => (0, SECT_PER_4K),
            MetaDiskKind::Indexed(index) => {
                let at = u64::from(index) * INDEXED_SLOT_SECT;
                (at, at + INDEXED_SLOT_SECT)
            }
        };
        if capacity_sect < needed_sect {
            return Err(LayoutError::DeviceTooSmall {
                device_bytes: meta_device_bytes,
                md_bytes: needed_sect * SECTOR_SIZE,
            });
        }
        Ok(sb_sect * SECTOR_SIZE)
    }

    /// Asserts the structural invariants listed in the module doc (a failure is a bug here).
    pub fn check(&self) {
        let sb = self.md_offset_sect as i64;
        let al_start = sb + self.al_offset_sect;
        let bm_start = sb + self.bm_offset_sect;
        assert!(sb % SECT_PER_4K as i64 == 0, "superblock not 4 KiB aligned");
        assert!(al_start % SECT_PER_4K as i64 == 0, "AL not 4 KiB aligned");
        assert!(
            bm_start % SECT_PER_4K as i64 == 0,
            "bitmap not 4 KiB aligned"
        );
        assert!(al_start >= 0 && bm_start >= 0);
        match self.kind {
            MetaDiskKind::Internal => {
                assert!(self.bm_offset_sect < self.al_offset_sect && self.al_offset_sect < 0);
                assert_eq!(-self.al_offset_sect, self.al.size_sect() as i64);
                assert_eq!(bm_start + self.bm_size_sect as i64, al_start);
                assert_eq!(self.max_data_sect.min(bm_start as u64), self.max_data_sect);
            }
            MetaDiskKind::FlexExternal | MetaDiskKind::Indexed(_) => {
                assert_eq!(self.al_offset_sect, SECT_PER_4K as i64);
                assert_eq!(
                    self.bm_offset_sect,
                    self.al_offset_sect + self.al.size_sect() as i64
                );
                assert!(self.bm_offset_sect as u64 + self.bm_size_sect <= self.md_size_sect);
            }
        }
    }

    /// Byte offset of the superblock on the meta device.
    pub fn superblock_byte(&self) -> u64 {
        self.md_offset_sect * SECTOR_SIZE
    }

    /// Byte offset of the activity log on the meta device.
    pub fn al_byte(&self) -> u64 {
        offset_byte(self.md_offset_sect, self.al_offset_sect)
    }

    /// Byte offset of the bitmap on the meta device.
    pub fn bm_byte(&self) -> u64 {
        offset_byte(self.md_offset_sect, self.bm_offset_sect)
    }

    /// Size of the bitmap area in bytes.
    pub fn bm_area_bytes(&self) -> u64 {
        self.bm_size_sect * SECTOR_SIZE
    }

    /// Byte offset of the 4 KiB block that holds AL ring position `position`.
    pub fn al_position_byte(&self, position: u64) -> u64 {
        self.al_byte() + self.al.block_of_position(position) * BLOCK_4K
    }

    /// Number of bitmap bits that describe the usable data.
    pub fn bitmap_bits(&self) -> u64 {
        self.max_data_sect.div_ceil(crate::SECTORS_PER_BIT)
    }

    /// First byte past the meta-data area written by `create-md` (end of the superblock).
    pub fn md_end_byte(&self) -> u64 {
        self.superblock_byte() + BLOCK_4K
    }

    /// Clips a last-agreed size to what this layout can hold, as drbdmeta does on read.
    pub fn clip_la_size(&self, la_size_sect: u64) -> u64 {
        la_size_sect.min(self.max_data_sect)
    }
}

fn offset_byte(md_offset_sect: u64, relative_sect: i64) -> u64 {
    let sect = md_offset_sect as i64 + relative_sect;
    debug_assert!(sect >= 0);
    sect as u64 * SECTOR_SIZE
}

/// Bitmap sectors for internal meta-data: one 4 KiB bitmap block per 128 MiB of the *whole*
/// device capacity (`8 * ceil(C / 262144)`).
fn internal_bitmap_sect(capacity_sect: u64) -> u64 {
    SECT_PER_4K * capacity_sect.div_ceil(DATA_SECT_PER_BM_BLOCK)
}

/// Bytes of bitmap drbdmeta dumps, restores and replays for a last-agreed size of
/// `la_size_sect`: the words covering it, rounded up to whole 4 KiB blocks (§1.5).
pub fn bm_bytes_for(la_size_sect: u64) -> u64 {
    let bits = la_size_sect.div_ceil(crate::SECTORS_PER_BIT);
    let words = bits.div_ceil(64);
    (words * 8).div_ceil(BLOCK_4K) * BLOCK_4K
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    fn al(stripes: u32, kib: u32) -> AlGeometry {
        AlGeometry::from_options(stripes, kib).unwrap()
    }

    /// The table of drbd-v08-facts.md §1.2, every row verified against drbdmeta 9.22:
    /// (N, AL, md_size_sect, al_offset, bm_offset, md_offset byte).
    #[test]
    fn internal_layout_matches_drbdmeta_table() {
        let rows: &[(u64, AlGeometry, u64, i64, i64, u64)] = &[
            (MIB + 4096, AlGeometry::DEFAULT, 80, -64, -72, 1_048_576),
            (8 * MIB + 1536, AlGeometry::DEFAULT, 80, -64, -72, 8_384_512),
            (256 * MIB, AlGeometry::DEFAULT, 88, -64, -80, 268_431_360),
            (
                256 * MIB + 1536,
                AlGeometry::DEFAULT,
                96,
                -64,
                -88,
                268_431_360,
            ),
            (
                GIB + 512,
                AlGeometry::DEFAULT,
                144,
                -64,
                -136,
                1_073_737_728,
            ),
            (
                100 * GIB,
                AlGeometry::DEFAULT,
                6472,
                -64,
                -6464,
                107_374_178_304,
            ),
            (
                TIB,
                AlGeometry::DEFAULT,
                65_608,
                -64,
                -65_600,
                1_099_511_623_680,
            ),
            (
                4 * TIB,
                AlGeometry::DEFAULT,
                262_216,
                -64,
                -262_208,
                4_398_046_507_008,
            ),
            (256 * MIB, al(4, 64), 536, -512, -528, 268_431_360),
            (256 * MIB, al(1, 36), 96, -72, -88, 268_431_360),
            (GIB, al(2, 1024), 4168, -4096, -4160, 1_073_737_728),
            (100 * GIB, al(3, 40), 6648, -240, -6640, 107_374_178_304),
        ];
        for &(n, al, md_size, al_off, bm_off, md_byte) in rows {
            let l = Layout::internal(n, al).unwrap();
            assert_eq!(l.md_size_sect, md_size, "md_size_sect for {n}");
            assert_eq!(l.al_offset_sect, al_off, "al_offset for {n}");
            assert_eq!(l.bm_offset_sect, bm_off, "bm_offset for {n}");
            assert_eq!(l.superblock_byte(), md_byte, "md_offset for {n}");
        }
    }

    #[test]
    fn worked_examples() {
        let l = Layout::internal(256 * MIB, AlGeometry::DEFAULT).unwrap();
        assert_eq!(l.max_data_sect, 524_200);
        assert_eq!(l.bitmap_bits(), 65_525);
        assert_eq!(l.bm_byte(), 524_200 * 512);
        let l = Layout::internal(TIB, AlGeometry::DEFAULT).unwrap();
        assert_eq!(l.max_data_sect, 2_147_418_040);
        assert_eq!(l.bitmap_bits(), 268_427_255);
        let l = Layout::internal(256 * MIB + 1536, AlGeometry::DEFAULT).unwrap();
        assert_eq!(l.max_data_sect, 524_192);
    }

    #[test]
    fn external_layouts() {
        let l = Layout::flex_external(300 * MIB, AlGeometry::DEFAULT).unwrap();
        assert_eq!(
            (l.md_size_sect, l.al_offset_sect, l.bm_offset_sect),
            (614_400, 8, 72)
        );
        let l = Layout::indexed(256 * MIB, 1, AlGeometry::DEFAULT).unwrap();
        assert_eq!(l.superblock_byte(), 134_217_728);
        assert_eq!(
            (l.md_size_sect, l.al_offset_sect, l.bm_offset_sect),
            (262_144, 8, 72)
        );
        assert_eq!(l.max_data_sect, 262_072 * 32_768);
        assert!(Layout::indexed(200 * MIB, 1, AlGeometry::DEFAULT).is_err());
    }

    #[test]
    fn limits() {
        assert!(matches!(
            Layout::internal(40 * 1024, AlGeometry::DEFAULT),
            Err(LayoutError::DeviceTooSmall { .. })
        ));
        assert!(Layout::internal(2 << 50, AlGeometry::DEFAULT).is_err());
        assert!(matches!(
            AlGeometry::from_options(1, 28),
            Err(LayoutError::AlTooSmall { .. })
        ));
        assert!(matches!(
            AlGeometry::from_options(2, 32 * 1024),
            Err(LayoutError::AlTooLarge { .. })
        ));
        assert_eq!(AlGeometry::DEFAULT.max_al_extents(), 6433);
    }

    #[test]
    fn stripe_mapping() {
        let g = al(4, 64);
        assert_eq!(g.block_of_position(5), 17);
        assert_eq!(g.block_of_position(6), 33);
        assert_eq!(g.block_of_position(7), 49);
        assert_eq!(AlGeometry::DEFAULT.block_of_position(5), 5);
    }

    #[test]
    fn bm_bytes() {
        assert_eq!(bm_bytes_for(0), 0);
        assert_eq!(bm_bytes_for(524_200), 8192);
        assert_eq!(bm_bytes_for(4096), 4096);
        assert_eq!(bm_bytes_for(1), 4096);
    }

    #[test]
    fn every_size_is_consistent() {
        // Sizes that are not multiples of 4 KiB, around bitmap block boundaries.
        for n in [
            1_052_672u64,
            1_052_673,
            128 * MIB - 1,
            128 * MIB,
            128 * MIB + 511,
            128 * MIB + 4095,
            3 * GIB + 7 * 512 + 13,
        ] {
            let l = Layout::internal(n, AlGeometry::DEFAULT).unwrap();
            l.check();
            assert_eq!(
                l.max_data_sect + l.md_size_sect,
                (n / 512) & !7,
                "usable + meta = aligned capacity for {n}"
            );
            assert!(l.bm_area_bytes() * 8 >= l.bitmap_bits());
        }
    }
}
