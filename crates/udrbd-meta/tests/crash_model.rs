//! Crash model of the activity log and bitmap write-out (issue: meta-data foundation).
//!
//! A reference model of a Primary's meta-data writer drives the real [`ActivityLog`] and
//! [`Bitmap`]: writes into extents (activating them through AL transactions written with FUA,
//! the bitmap pages of evicted extents written first), bits set in memory by those writes, and
//! lazy write-out of dirty bitmap pages. A crash is injected at every single meta-data write of
//! the run, once with the write lost and once torn at 512-byte granularity. After the crash the
//! durable image is replayed as `apply-al` does (MDF_PRIMARY_IND is set, as it is while
//! Primary), and the on-disk bitmap must cover:
//!   (a) every bit that was set in memory at the crash, and
//!   (b) every extent of the durable active set at the crash, which includes the extents an
//!       in-flight transaction is about to evict (they leave the AL only once it is durable).
//! Extents an in-flight transaction *adds* need no coverage: no data write into them was issued
//! (the model asserts that too), which is the rule that makes the activity log safe.

use std::collections::BTreeSet;

use udrbd_meta::activity_log::{
    self, Activation, ActivityLog, AlTransaction, BITS_PER_AL_EXTENT, ReplayOutcome,
};
use udrbd_meta::bitmap::{Bitmap, PAGE_BYTES};
use udrbd_meta::layout::bm_bytes_for;
use udrbd_meta::{AlGeometry, BLOCK_4K, Layout};

/// A small deterministic generator (the meta crate has no RNG dependency).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashKind {
    Lost,
    Torn,
}

/// The meta-data area of one device: durable bytes, written one 4 KiB block at a time.
struct MetaImage {
    layout: Layout,
    /// Bytes from the bitmap start to the superblock end.
    bytes: Vec<u8>,
    writes: u64,
    crash_at: Option<(u64, CrashKind)>,
    crashed: bool,
    rng: XorShift,
}

impl MetaImage {
    fn new(layout: Layout, crash_at: Option<(u64, CrashKind)>, seed: u64) -> MetaImage {
        let len = (layout.md_end_byte() - layout.bm_byte()) as usize;
        let mut image = MetaImage {
            layout,
            bytes: vec![0; len],
            writes: 0,
            crash_at,
            crashed: false,
            rng: XorShift(seed | 1),
        };
        // create-md: INITIALIZED ring.
        let init = AlTransaction::initialized().encode();
        for p in 0..layout.al.ring_blocks() {
            let off = (layout.al_position_byte(p) - layout.bm_byte()) as usize;
            image.bytes[off..off + 4096].copy_from_slice(&init[..]);
        }
        image
    }

    /// One meta-data write. Returns false once the node has crashed (the write and all later
    /// ones never happen; the crashing write itself is lost or torn).
    fn write(&mut self, absolute_byte: u64, block: &[u8]) -> bool {
        if self.crashed {
            return false;
        }
        let off = (absolute_byte - self.layout.bm_byte()) as usize;
        let this = self.writes;
        self.writes += 1;
        match self.crash_at {
            Some((at, kind)) if at == this => {
                if kind == CrashKind::Torn {
                    // Some sectors reached the disk, others did not.
                    for s in 0..block.len() / 512 {
                        if self.rng.below(2) == 0 {
                            let r = off + s * 512..off + (s + 1) * 512;
                            self.bytes[r.clone()].copy_from_slice(&block[s * 512..(s + 1) * 512]);
                        }
                    }
                }
                self.crashed = true;
                false
            }
            _ => {
                self.bytes[off..off + block.len()].copy_from_slice(block);
                true
            }
        }
    }
}

/// What the model holds in memory at the moment of the crash.
struct CrashState {
    memory_bits: Vec<u64>,
    committed_extents: BTreeSet<u32>,
}

struct Model {
    al: ActivityLog,
    bitmap: Bitmap,
    image: MetaImage,
    rng: XorShift,
    extents: u64,
}

impl Model {
    /// Writes the pages covering `extent`, then reports whether the node still runs.
    fn write_pages_of_extent(&mut self, extent: u32) -> bool {
        let first = u64::from(extent) * BITS_PER_AL_EXTENT;
        let pages = self.bitmap.pages_of(first..first + BITS_PER_AL_EXTENT);
        for page in pages {
            if !self.write_page(page) {
                return false;
            }
        }
        true
    }

    fn write_page(&mut self, page: u64) -> bool {
        let bytes = self.bitmap.page_bytes(page);
        let at = self.image.layout.bm_byte() + page * PAGE_BYTES as u64;
        if !self.image.write(at, &bytes) {
            return false;
        }
        self.bitmap.mark_clean(page);
        true
    }

    /// Writes queued AL transactions until `extent` is durable in the active set.
    fn make_active(&mut self, extent: u32) -> bool {
        match self.al.activate(extent) {
            Activation::Active => true,
            Activation::Pending => {
                // Our reference is held; commit transactions until it is durable.
                while !self.al.is_active(extent) {
                    if !self.commit_one() {
                        return false;
                    }
                }
                true
            }
            Activation::Busy => panic!("model holds no references across writes"),
        }
    }

    fn commit_one(&mut self) -> bool {
        let prepared = self.al.prepare_transaction().expect("a queued change");
        for &evicted in &prepared.evicted {
            // The ordering rule: an extent leaves the AL only after its bits are durable.
            if !self.write_pages_of_extent(evicted) {
                return false;
            }
        }
        let at = self.image.layout.al_position_byte(prepared.ring_position);
        if !self.image.write(at, &prepared.transaction.encode()[..]) {
            return false;
        }
        self.al.transaction_written();
        self.al.invariants();
        true
    }

    /// One application write: the extent is made active, then bits are set in memory (the
    /// write went to the local disk only, e.g. while disconnected).
    fn data_write(&mut self) -> bool {
        let extent = self.rng.below(self.extents) as u32;
        if !self.make_active(extent) {
            return false;
        }
        assert!(self.al.is_active(extent), "data write into a cold extent");
        let first = u64::from(extent) * BITS_PER_AL_EXTENT;
        let start = first + self.rng.below(BITS_PER_AL_EXTENT);
        let len = 1 + self.rng.below(16);
        self.bitmap
            .set_range(start..(start + len).min(first + BITS_PER_AL_EXTENT));
        self.al.release(extent);
        true
    }

    fn lazy_writeout(&mut self) -> bool {
        let dirty = self.bitmap.dirty_pages();
        if dirty.is_empty() {
            return true;
        }
        let page = dirty[self.rng.below(dirty.len() as u64) as usize];
        self.write_page(page)
    }

    fn crash_state(&self) -> CrashState {
        CrashState {
            memory_bits: self.bitmap.words().to_vec(),
            committed_extents: self.al.committed_extents(),
        }
    }
}

struct Scenario {
    device_bytes: u64,
    geometry: AlGeometry,
    al_extents: u16,
    extents: u64,
    steps: u64,
    seed: u64,
}

/// Runs the scenario, crashing at write `crash_at` if given. Returns the image, the state at
/// the crash, and the number of writes the run made.
fn run(s: &Scenario, crash_at: Option<(u64, CrashKind)>) -> (MetaImage, CrashState, u64) {
    let layout = Layout::internal(s.device_bytes, s.geometry).unwrap();
    let mut m = Model {
        al: ActivityLog::new(s.geometry, s.al_extents, 0),
        bitmap: Bitmap::new(layout.bitmap_bits()),
        image: MetaImage::new(layout, crash_at, s.seed ^ 0x9e37),
        rng: XorShift(s.seed),
        extents: s.extents,
    };
    for _ in 0..s.steps {
        let alive = if m.rng.below(5) == 0 {
            m.lazy_writeout()
        } else {
            m.data_write()
        };
        if !alive {
            break;
        }
    }
    let state = m.crash_state();
    let writes = m.image.writes;
    (m.image, state, writes)
}

/// apply-al on the durable image: returns the on-disk bitmap bytes after the replay.
fn replay_image(image: &MetaImage) -> Vec<u8> {
    let layout = image.layout;
    let geometry = layout.al;
    let ring: Vec<_> = (0..geometry.ring_blocks())
        .map(|p| {
            let off = (layout.al_position_byte(p) - layout.bm_byte()) as usize;
            AlTransaction::decode(&image.bytes[off..off + BLOCK_4K as usize])
        })
        .collect();
    let mut bitmap = image.bytes[..layout.bm_area_bytes() as usize].to_vec();
    // The superblock says Primary (84 unclean magic, PRIMARY_IND): replay applies the extents.
    let replay = activity_log::replay(&ring, geometry, true);
    let bm_bytes = bm_bytes_for(layout.max_data_sect) as usize;
    match replay.outcome {
        ReplayOutcome::Active { extents, .. } => {
            for e in extents {
                let start = e as usize * 128;
                if start < bm_bytes {
                    let end = (start + 128).min(bm_bytes);
                    bitmap[start..end].fill(0xFF);
                }
            }
        }
        ReplayOutcome::Initialized => {}
        other => panic!("unusable activity log after a crash: {other:?}"),
    }
    bitmap
}

fn check_coverage(s: &Scenario, crash_at: (u64, CrashKind)) {
    let (image, state, _) = run(s, Some(crash_at));
    let disk = replay_image(&image);
    let word = |i: usize| u64::from_le_bytes(disk[i * 8..i * 8 + 8].try_into().unwrap());
    for (i, &mem) in state.memory_bits.iter().enumerate() {
        let missing = mem & !word(i);
        assert_eq!(
            missing, 0,
            "seed {} crash {:?}: lost bits in word {i}: {missing:#x}",
            s.seed, crash_at
        );
    }
    for &e in &state.committed_extents {
        let first = e as u64 * BITS_PER_AL_EXTENT;
        for bit in first..(first + BITS_PER_AL_EXTENT).min(image.layout.bitmap_bits()) {
            assert!(
                disk[(bit / 8) as usize] >> (bit % 8) & 1 == 1,
                "seed {} crash {:?}: active extent {e} not replayed (bit {bit})",
                s.seed,
                crash_at
            );
        }
    }
}

fn crash_everywhere(s: &Scenario) -> u64 {
    let (_, _, total) = run(s, None);
    assert!(total > 20, "the scenario must make meta-data writes");
    for at in 0..total {
        for kind in [CrashKind::Lost, CrashKind::Torn] {
            check_coverage(s, (at, kind));
        }
    }
    total
}

#[test]
fn crash_at_every_write_small_active_set() {
    // 7 slots over 64 extents: constant eviction, every transaction small.
    for seed in 1..=4 {
        let s = Scenario {
            device_bytes: 1 << 30,
            geometry: AlGeometry::DEFAULT,
            al_extents: 7,
            extents: 64,
            steps: 300,
            seed,
        };
        let writes = crash_everywhere(&s);
        println!("seed {seed}: {writes} crash points, each lost and torn");
    }
}

#[test]
fn crash_at_every_write_striped_ring() {
    let s = Scenario {
        device_bytes: 2 << 30,
        geometry: AlGeometry {
            stripes: 4,
            stripe_size_4k: 3,
        },
        al_extents: 31,
        extents: 500,
        steps: 400,
        seed: 77,
    };
    crash_everywhere(&s);
}

#[test]
fn crash_at_every_write_context_wider_than_one_block() {
    // 2000 slots: the context window needs 3 transactions to describe the whole set, so a
    // replay relies on several ring blocks.
    let s = Scenario {
        device_bytes: 16 << 30,
        geometry: AlGeometry::DEFAULT,
        al_extents: 2000,
        extents: 3000,
        steps: 2500,
        seed: 5,
    };
    let (_, _, total) = run(&s, None);
    // Every crash point of the tail, where the set is full and evicting.
    for at in total.saturating_sub(300)..total {
        for kind in [CrashKind::Lost, CrashKind::Torn] {
            check_coverage(&s, (at, kind));
        }
    }
}

/// The check is not vacuous: a writer that skips the bitmap write-out on eviction loses bits.
#[test]
fn the_check_catches_a_missing_writeout() {
    let s = Scenario {
        device_bytes: 1 << 30,
        geometry: AlGeometry::DEFAULT,
        al_extents: 7,
        extents: 64,
        steps: 300,
        seed: 3,
    };
    let layout = Layout::internal(s.device_bytes, s.geometry).unwrap();
    let mut m = Model {
        al: ActivityLog::new(s.geometry, s.al_extents, 0),
        bitmap: Bitmap::new(layout.bitmap_bits()),
        image: MetaImage::new(layout, None, 1),
        rng: XorShift(s.seed),
        extents: s.extents,
    };
    // Broken writer: commits transactions without writing evicted extents' pages.
    for _ in 0..s.steps {
        let extent = m.rng.below(m.extents) as u32;
        if m.al.activate(extent) == Activation::Pending {
            while !m.al.is_active(extent) {
                let p = m.al.prepare_transaction().unwrap();
                let at = layout.al_position_byte(p.ring_position);
                m.image.write(at, &p.transaction.encode()[..]);
                m.al.transaction_written();
            }
        }
        let first = u64::from(extent) * BITS_PER_AL_EXTENT;
        m.bitmap.set_range(first..first + 1);
        m.al.release(extent);
    }
    let disk = replay_image(&m.image);
    let lost =
        m.bitmap.words().iter().enumerate().any(|(i, &w)| {
            w & !u64::from_le_bytes(disk[i * 8..i * 8 + 8].try_into().unwrap()) != 0
        });
    assert!(lost, "a writer without bitmap write-out must lose bits");
}
