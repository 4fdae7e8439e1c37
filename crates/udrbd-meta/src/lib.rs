//! DRBD v08 on-disk meta-data, pure: no IO, no clock, no randomness.
//!
//! Everything here is byte-compatible with what drbd-utils' `drbdmeta` reads and writes for
//! format `v08` (DRBD 8.4), and with what the 8.4 kernel writes while a device is attached:
//!
//! - [`layout`]: where the superblock, activity log and bitmap live, for internal,
//!   flexible-external and indexed-external meta-data, for any device size;
//! - [`superblock`]: the 4 KiB v08 superblock (generation UUIDs, MDF flags, offsets);
//! - [`activity_log`]: the 8.4 activity-log transaction block, the on-disk ring, the replay
//!   `apply-al` performs, and the in-memory active set that produces transactions;
//! - [`bitmap`]: the out-of-sync bitmap, 1 bit per 4 KiB, with per-page dirty tracking;
//! - [`dump`]: the `dump-md` text (renderer and the `restore-md` parser);
//! - [`gi`]: the `get-gi`, `show-gi`, `set-gi` and `dstate` texts.
//!
//! Callers (the `udrbd` binary's IO layer, the engine, the simulator) do the IO; this crate
//! computes offsets and encodes/decodes bytes. On-disk fields are explicit-width integers.
#![forbid(unsafe_code)]

pub mod activity_log;
pub mod bitmap;
pub mod dump;
pub mod gi;
pub mod layout;
pub mod superblock;

pub use activity_log::{ActivityLog, AlTransaction};
pub use bitmap::Bitmap;
pub use layout::{AlGeometry, Layout, MetaDiskKind};
pub use superblock::{GenerationUuids, Magic, MdFlags, Superblock};

/// Bytes in a sector, the unit of every on-disk offset and size.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of data covered by one bitmap bit (`BM_BLOCK_SIZE`); the 8.4 kernel allows no other.
pub const BM_BLOCK_SIZE: u64 = 4096;
/// Sectors covered by one bitmap bit.
pub const SECTORS_PER_BIT: u64 = BM_BLOCK_SIZE / SECTOR_SIZE;
/// The meta-data IO unit: superblock, activity-log blocks and bitmap pages are 4 KiB.
pub const BLOCK_4K: u64 = 4096;

/// Formats a size given in KiB the way drbdmeta's `ppsize` does (`show-gi`, `apply-al`):
/// while the value is at least 10000 and a larger unit exists, divide by 1024, rounding half
/// up. Units K, M, G, T, P, E; printed as `<n> <unit>B`.
pub fn human_size_kib(mut kib: u64) -> String {
    const UNITS: [char; 6] = ['K', 'M', 'G', 'T', 'P', 'E'];
    let mut unit = 0;
    while kib >= 10000 && unit < UNITS.len() - 1 {
        // Round half up: bit 9 is the half of 1024.
        let round_up = (kib >> 9) & 1;
        kib = (kib >> 10) + round_up;
        unit += 1;
    }
    format!("{} {}B", kib, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_size_matches_drbdmeta_examples() {
        // 524200 sectors = 262100 KiB -> "256 MB" (drbd-v08-facts.md §2.4).
        assert_eq!(human_size_kib(262_100), "256 MB");
        assert_eq!(human_size_kib(4096), "4096 KB");
        assert_eq!(human_size_kib(8192), "8192 KB");
        assert_eq!(human_size_kib(12 * 1024), "12 MB");
        assert_eq!(human_size_kib(0), "0 KB");
    }
}
