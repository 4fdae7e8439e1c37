//! SimDisk: a simulated backing device with meta-data, driven by a seeded generator.
//!
//! # Fault model
//!
//! - **Completion:** every operation completes after a random latency, so operations complete
//!   out of submission order. A completed read returns what the cache holds then.
//! - **Durability:** a write's data is in the device's volatile cache from its completion (a
//!   read issued after the completion sees it, and it replaces older cached data of the same
//!   sectors). A sector becomes durable when a write to it completes with FUA, or when a Flush
//!   submitted after the write's completion completes. The device may also write back any
//!   cached sector at any time, which is why a crash may keep more than was flushed.
//! - **Crash (power cut):** the durable image survives. Every cached sector that is not
//!   durable, and every sector of a write still in flight, independently lands or is lost, in
//!   units of 512 bytes or 4 KiB (chosen per crash): writes are torn. Pending operations never
//!   complete. A sector never goes back to older data than it held durably.
//! - **Errors:** per region (data, bitmap, activity log, superblock), reads and writes can be
//!   made to fail with EIO; a failed write changes nothing.
//! - **Freeze:** while frozen, nothing completes; a thawed late write still lands.
//!
//! The disk never inspects what the engine writes: it is the same model for every layout.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::{DiskArea, DiskCompletion, DiskError, DiskOp, DiskOpId, DiskOpKind, Instant};

/// EIO.
pub const EIO: i32 = 5;
const SECTOR: u64 = 512;
const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / SECTOR;

/// Which operations fail, per area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Reads of these areas fail.
    pub fail_reads: [bool; 4],
    /// Writes to these areas fail.
    pub fail_writes: [bool; 4],
    /// Nothing completes.
    pub frozen: bool,
}

/// The mask of sectors `lo .. hi` of a block (`hi <= 8`).
fn block_mask(lo: u64, hi: u64) -> u8 {
    debug_assert!(lo < hi && hi <= SECTORS_PER_BLOCK);
    ((0xFFu16 << lo) & !(0xFFu16 << hi)) as u8
}

/// Index of an area in [`Faults`] arrays.
pub fn area_index(area: DiskArea) -> usize {
    match area {
        DiskArea::Data => 0,
        DiskArea::Bitmap => 1,
        DiskArea::ActivityLog => 2,
        DiskArea::Superblock => 3,
    }
}

#[derive(Clone, Debug)]
struct Pending {
    op: DiskOp,
}

/// What happened on the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Operations completed.
    pub completed: u64,
    /// Writes that crashes tore (some of their units landed, others not).
    pub torn_writes: u64,
    /// Writes that crashes lost entirely.
    pub lost_writes: u64,
    /// IO errors returned.
    pub errors: u64,
}

/// The simulated device (data and meta-data on one image: internal meta-data).
pub struct SimDisk {
    durable: Vec<u8>,
    cache: Vec<u8>,
    /// Cached sectors that are not durable, with the completion number that last wrote them.
    /// Kept per 4 KiB block: the mask of its dirty sectors and the completion number that
    /// last wrote one of them (a flush clears the block only if no sector of it was written
    /// after the flush was submitted; keeping more dirty is harmless: a dirty sector whose
    /// cache equals its durable copy loses nothing in a crash).
    dirty: BTreeMap<u64, (u8, u64)>,
    next_completion: u64,
    pending: BTreeMap<DiskOpId, Pending>,
    /// `pending` ordered by due time.
    due: BTreeSet<(Instant, DiskOpId)>,
    /// Flushes in flight: the dirty sectors (and their completion numbers) they cover.
    flush_covers: BTreeMap<DiskOpId, Vec<(u64, u64)>>, // (block, completion number)
    rng: ChaCha8Rng,
    /// Latency range in nanoseconds.
    latency: (u64, u64),
    /// The faults in force.
    pub faults: Faults,
    /// Counters.
    pub stats: DiskStats,
}

impl SimDisk {
    /// A zeroed disk of `size` bytes.
    pub fn new(size: u64, seed: u64) -> SimDisk {
        SimDisk {
            durable: vec![0; size as usize],
            cache: vec![0; size as usize],
            dirty: BTreeMap::new(),
            next_completion: 0,
            pending: BTreeMap::new(),
            due: BTreeSet::new(),
            flush_covers: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            latency: (10_000, 2_000_000),
            faults: Faults::default(),
            stats: DiskStats::default(),
        }
    }

    /// Sets the latency range (nanoseconds, `min < max`) of operations submitted from now on.
    pub fn set_latency(&mut self, min_ns: u64, max_ns: u64) {
        assert!(min_ns < max_ns, "latency range");
        self.latency = (min_ns, max_ns);
    }

    /// The latency range in nanoseconds.
    pub fn latency(&self) -> (u64, u64) {
        self.latency
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.durable.len() as u64
    }

    /// The device grows to `size` bytes (an `lvextend`): the new part reads as zeros.
    pub fn grow(&mut self, size: u64) {
        assert!(size >= self.size(), "a disk only grows");
        self.durable.resize(size as usize, 0);
        self.cache.resize(size as usize, 0);
    }

    /// Writes bytes straight into the durable image (setting up a disk, e.g. create-md).
    pub fn poke(&mut self, offset: u64, data: &[u8]) {
        let at = offset as usize;
        self.durable[at..at + data.len()].copy_from_slice(data);
        self.cache[at..at + data.len()].copy_from_slice(data);
    }

    /// The durable image (after a crash this is the whole truth).
    pub fn durable(&self, offset: u64, len: usize) -> &[u8] {
        &self.durable[offset as usize..offset as usize + len]
    }

    /// What a read would return now.
    pub fn current(&self, offset: u64, len: usize) -> &[u8] {
        &self.cache[offset as usize..offset as usize + len]
    }

    /// Accepts an operation from the engine.
    pub fn submit(&mut self, op: DiskOp, now: Instant) {
        let latency = self.latency.0 + self.rng.next_u64() % (self.latency.1 - self.latency.0);
        if matches!(op.kind, DiskOpKind::Flush) {
            // A flush covers what was cached (completed) before it was submitted.
            let covered = self.dirty.iter().map(|(b, (_, n))| (*b, *n)).collect();
            self.flush_covers.insert(op.id, covered);
        }
        let due = now.plus(std::time::Duration::from_nanos(latency));
        self.due.insert((due, op.id));
        self.pending.insert(op.id, Pending { op });
    }

    /// The earliest completion time, unless frozen.
    pub fn next_due(&self) -> Option<Instant> {
        if self.faults.frozen {
            return None;
        }
        self.due.first().map(|(at, _)| *at)
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Completes every operation due at `now` (in due order), each with its area, offset,
    /// length (0 for a flush) and whether it modifies data.
    pub fn complete_due(
        &mut self,
        now: Instant,
    ) -> Vec<(DiskCompletion, DiskArea, u64, u64, bool)> {
        if self.faults.frozen {
            return Vec::new();
        }
        let mut done = Vec::new();
        while let Some(&(at, id)) = self.due.first()
            && at <= now
        {
            self.due.pop_first();
            done.push(self.complete(id));
        }
        done
    }

    fn complete(&mut self, id: DiskOpId) -> (DiskCompletion, DiskArea, u64, u64, bool) {
        let Pending { op, .. } = self.pending.remove(&id).expect("pending op");
        let (len, write) = match &op.kind {
            DiskOpKind::Read { len } => (u64::from(*len), false),
            DiskOpKind::Write { data, .. } => (data.len() as u64, true),
            DiskOpKind::Discard { len } | DiskOpKind::WriteZeroes { len } => (*len, true),
            DiskOpKind::Flush | DiskOpKind::Capacity => (0, false),
        };
        let (op_area, offset) = (op.area, op.offset);
        self.stats.completed += 1;
        let area = area_index(op.area);
        let at = op.offset as usize;
        let result = match &op.kind {
            DiskOpKind::Read { .. } if self.faults.fail_reads[area] => {
                Err(DiskError { errno: EIO })
            }
            DiskOpKind::Read { len } => Ok(Some(Bytes::copy_from_slice(
                &self.cache[at..at + *len as usize],
            ))),
            DiskOpKind::Capacity => Ok(Some(Bytes::copy_from_slice(
                &(self.durable.len() as u64).to_le_bytes(),
            ))),
            DiskOpKind::Write { .. }
            | DiskOpKind::Discard { .. }
            | DiskOpKind::WriteZeroes { .. }
                if self.faults.fail_writes[area] =>
            {
                Err(DiskError { errno: EIO })
            }
            DiskOpKind::Write { data, fua } => {
                self.cache_write(op.offset, data, *fua);
                Ok(None)
            }
            DiskOpKind::Discard { len } | DiskOpKind::WriteZeroes { len } => {
                self.cache_write(op.offset, &vec![0u8; *len as usize], false);
                Ok(None)
            }
            DiskOpKind::Flush => {
                for (block, n) in self.flush_covers.remove(&id).unwrap_or_default() {
                    // Whatever the cache holds now is written back (it may be newer; the
                    // block's clean sectors hold their durable data in the cache too). A
                    // block that is no longer dirty (an earlier flush or a FUA write cleaned
                    // it) holds its durable data in the cache: there is nothing to copy.
                    let Some(&(_, m)) = self.dirty.get(&block) else {
                        continue;
                    };
                    let a = (block * BLOCK) as usize;
                    let b = (a + BLOCK as usize).min(self.cache.len());
                    self.durable[a..b].copy_from_slice(&self.cache[a..b]);
                    if m == n {
                        self.dirty.remove(&block);
                    }
                }
                Ok(None)
            }
        };
        if result.is_err() {
            self.stats.errors += 1;
        }
        (DiskCompletion { id, result }, op_area, offset, len, write)
    }

    /// A completed write enters the cache (and, with FUA, the durable image).
    fn cache_write(&mut self, offset: u64, data: &[u8], fua: bool) {
        let at = offset as usize;
        self.cache[at..at + data.len()].copy_from_slice(data);
        let n = self.next_completion;
        self.next_completion += 1;
        // The written sectors, one block (and one map search) at a time.
        let (first, end) = (
            offset / SECTOR,
            (offset + data.len() as u64).div_ceil(SECTOR),
        );
        let mut s = first;
        while s < end {
            let block = s / SECTORS_PER_BLOCK;
            let block_end = ((block + 1) * SECTORS_PER_BLOCK).min(end);
            let bits = block_mask(s % SECTORS_PER_BLOCK, block_end - block * SECTORS_PER_BLOCK);
            s = block_end;
            if fua {
                if let Some((mask, _)) = self.dirty.get_mut(&block) {
                    *mask &= !bits;
                    if *mask == 0 {
                        self.dirty.remove(&block);
                    }
                }
            } else {
                let entry = self.dirty.entry(block).or_insert((0, n));
                entry.0 |= bits;
                entry.1 = n;
            }
        }
        if fua {
            self.durable[at..at + data.len()].copy_from_slice(data);
        }
    }

    /// Power cut: pending operations vanish; every cached sector that is not durable and every
    /// write in flight lands or is lost, per unit of 512 bytes or 4 KiB. The cache becomes the
    /// durable image.
    pub fn crash(&mut self) {
        let unit = if self.rng.next_u64().is_multiple_of(2) {
            1
        } else {
            8
        };
        // Writes in flight first (older than nothing in the cache: they never completed).
        let pending = std::mem::take(&mut self.pending);
        self.due.clear();
        for (_, p) in pending {
            if let DiskOpKind::Write { data, .. } = &p.op.kind {
                let landed = self.land_units(p.op.offset, data, unit);
                self.count(landed, data.len() as u64 / SECTOR);
            }
        }
        // Then cached data, which is newer than any durable copy of its sectors.
        let dirty = std::mem::take(&mut self.dirty);
        let mut decided: BTreeMap<u64, bool> = BTreeMap::new();
        let sectors = dirty.into_iter().flat_map(|(block, (mask, _))| {
            (0..SECTORS_PER_BLOCK)
                .filter(move |i| mask & (1 << i) != 0)
                .map(move |i| block * SECTORS_PER_BLOCK + i)
        });
        for sector in sectors.collect::<Vec<u64>>() {
            let unit_nr = sector / unit;
            let lands = *decided
                .entry(unit_nr)
                .or_insert_with(|| self.rng.next_u64().is_multiple_of(2));
            if lands {
                let a = (sector * SECTOR) as usize;
                let b = a + SECTOR as usize;
                let newer = self.cache[a..b].to_vec();
                self.durable[a..b].copy_from_slice(&newer);
            }
        }
        self.flush_covers.clear();
        self.cache = self.durable.clone();
        self.faults = Faults::default();
    }

    /// Lands a random subset of `data`'s units; returns how many sectors landed.
    fn land_units(&mut self, offset: u64, data: &[u8], unit: u64) -> u64 {
        let unit_bytes = (unit * SECTOR) as usize;
        let mut landed = 0;
        for (i, chunk) in data.chunks(unit_bytes).enumerate() {
            if self.rng.next_u64().is_multiple_of(2) {
                let a = offset as usize + i * unit_bytes;
                self.durable[a..a + chunk.len()].copy_from_slice(chunk);
                landed += chunk.len() as u64 / SECTOR;
            }
        }
        landed
    }

    fn count(&mut self, landed: u64, total: u64) {
        if landed == 0 {
            self.stats.lost_writes += 1;
        } else if landed < total {
            self.stats.torn_writes += 1;
        }
    }
}
