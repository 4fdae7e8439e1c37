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
#[derive(Clone)]
struct MetaImage {
    layout: Layout,
    /// Bytes from the bitmap start to the superblock end.
    bytes: Vec<u8>,
}

impl MetaImage {
    fn new(layout: Layout) -> MetaImage {
        let len = (layout.md_end_byte() - layout.bm_byte()) as usize;
        let mut image = MetaImage {
            layout,
            bytes: vec![0; len],
        };
        // create-md: INITIALIZED ring.
        let init = AlTransaction::initialized().encode();
        for p in 0..layout.al.ring_blocks() {
            let off = (layout.al_position_byte(p) - layout.bm_byte()) as usize;
            image.bytes[off..off + 4096].copy_from_slice(&init[..]);
        }
        image
    }

    fn offset(&self, absolute_byte: u64) -> usize {
        (absolute_byte - self.layout.bm_byte()) as usize
    }

    fn apply(&mut self, absolute_byte: u64, block: &[u8]) {
        let off = self.offset(absolute_byte);
        self.bytes[off..off + block.len()].copy_from_slice(block);
    }

    /// The image as it is after a crash during the write of `block`: lost (unchanged), or torn
    /// (a random subset of its 512-byte sectors reached the disk).
    fn crashed_during(
        &self,
        absolute_byte: u64,
        block: &[u8],
        kind: CrashKind,
        rng: &mut XorShift,
    ) -> MetaImage {
        let mut after = self.clone();
        if kind == CrashKind::Torn {
            // A tear is partial by definition: a random non-empty, proper subset of the
            // sectors lands (all of them is a completed write, none is a lost one).
            let sectors = block.len() / 512;
            let full = (1u64 << sectors) - 1;
            let landed = 1 + rng.below(full - 1);
            let off = self.offset(absolute_byte);
            for s in 0..sectors {
                if landed >> s & 1 == 1 {
                    after.bytes[off + s * 512..off + (s + 1) * 512]
                        .copy_from_slice(&block[s * 512..(s + 1) * 512]);
                }
            }
        }
        after
    }
}

struct Model {
    al: ActivityLog,
    bitmap: Bitmap,
    image: MetaImage,
    rng: XorShift,
    crash_rng: XorShift,
    extents: u64,
    /// Whether to inject a crash at every write (check mode), or only count writes.
    check_crashes: bool,
    writes: u64,
    seed: u64,
}

impl Model {
    fn new(s: &Scenario, check_crashes: bool) -> Model {
        let layout = Layout::internal(s.device_bytes, s.geometry).unwrap();
        Model {
            al: ActivityLog::new(s.geometry, s.al_extents, 0),
            bitmap: Bitmap::new(layout.bitmap_bits()),
            image: MetaImage::new(layout),
            rng: XorShift(s.seed),
            crash_rng: XorShift(s.seed ^ 0x9e37_79b9),
            extents: s.extents,
            check_crashes,
            writes: 0,
            seed: s.seed,
        }
    }

    /// One meta-data write (durable on completion, as with FUA). Before it completes, the
    /// crash that would interrupt it is checked, lost and torn: the model's state right now
    /// is the state at that crash.
    /// `evicting` names the extents an AL transaction removes from the active set.
    fn meta_write(&mut self, absolute_byte: u64, block: &[u8], evicting: &[u32]) {
        if self.check_crashes {
            for kind in [CrashKind::Lost, CrashKind::Torn] {
                let crashed =
                    self.image
                        .crashed_during(absolute_byte, block, kind, &mut self.crash_rng);
                // A tear whose differing sectors all landed is a completed write: then the
                // transaction is durable and its evicted extents have left the AL.
                let off = crashed.offset(absolute_byte);
                let landed = crashed.bytes[off..off + block.len()] == *block;
                let mut required = self.al.committed_extents();
                if landed {
                    for e in evicting {
                        required.remove(e);
                    }
                }
                check_coverage(self, &crashed, &required, (self.writes, kind));
            }
        }
        self.image.apply(absolute_byte, block);
        self.writes += 1;
    }

    /// Writes the pages covering `extent`.
    fn write_pages_of_extent(&mut self, extent: u32) {
        let first = u64::from(extent) * BITS_PER_AL_EXTENT;
        for page in self.bitmap.pages_of(first..first + BITS_PER_AL_EXTENT) {
            self.write_page(page);
        }
    }

    fn write_page(&mut self, page: u64) {
        let bytes = self.bitmap.page_bytes(page);
        let at = self.image.layout.bm_byte() + page * PAGE_BYTES as u64;
        self.meta_write(at, &bytes, &[]);
        self.bitmap.mark_clean(page);
    }

    /// Writes queued AL transactions until `extent` is durable in the active set.
    fn make_active(&mut self, extent: u32) {
        match self.al.activate(extent) {
            Activation::Active => {}
            Activation::Pending => {
                // Our reference is held; commit transactions until it is durable.
                while !self.al.is_active(extent) {
                    self.commit_one();
                }
            }
            Activation::Busy => panic!("model holds no references across writes"),
        }
    }

    fn commit_one(&mut self) {
        let prepared = self.al.prepare_transaction().expect("a queued change");
        for &evicted in &prepared.evicted {
            // The ordering rule: an extent leaves the AL only after its bits are durable.
            self.write_pages_of_extent(evicted);
        }
        let at = self.image.layout.al_position_byte(prepared.ring_position);
        self.meta_write(at, &prepared.transaction.encode()[..], &prepared.evicted);
        self.al.transaction_written();
        self.al.invariants();
    }

    /// One application write: the extent is made active, then bits are set in memory (the
    /// write went to the local disk only, e.g. while disconnected).
    fn data_write(&mut self) {
        let extent = self.rng.below(self.extents) as u32;
        self.make_active(extent);
        assert!(self.al.is_active(extent), "data write into a cold extent");
        let first = u64::from(extent) * BITS_PER_AL_EXTENT;
        let start = first + self.rng.below(BITS_PER_AL_EXTENT);
        let len = 1 + self.rng.below(16);
        self.bitmap
            .set_range(start..(start + len).min(first + BITS_PER_AL_EXTENT));
        self.al.release(extent);
    }

    fn lazy_writeout(&mut self) {
        let dirty = self.bitmap.dirty_pages();
        if !dirty.is_empty() {
            let page = dirty[self.rng.below(dirty.len() as u64) as usize];
            self.write_page(page);
        }
    }

    fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            if self.rng.below(5) == 0 {
                self.lazy_writeout();
            } else {
                self.data_write();
            }
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

/// apply-al on a durable image: returns the on-disk bitmap bytes after the replay.
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

/// (a) every bit set in memory and (b) every extent of the durable active set are set in the
/// replayed on-disk bitmap.
fn check_coverage(
    m: &Model,
    crashed: &MetaImage,
    required: &BTreeSet<u32>,
    crash_at: (u64, CrashKind),
) {
    let disk = replay_image(crashed);
    let word = |i: usize| u64::from_le_bytes(disk[i * 8..i * 8 + 8].try_into().unwrap());
    for (i, &mem) in m.bitmap.words().iter().enumerate() {
        let missing = mem & !word(i);
        assert_eq!(
            missing, 0,
            "seed {} crash {crash_at:?}: lost bits in word {i}: {missing:#x}",
            m.seed
        );
    }
    for &e in required {
        let first = e as u64 * BITS_PER_AL_EXTENT;
        for bit in first..(first + BITS_PER_AL_EXTENT).min(crashed.layout.bitmap_bits()) {
            assert!(
                disk[(bit / 8) as usize] >> (bit % 8) & 1 == 1,
                "seed {} crash {crash_at:?}: active extent {e} not replayed (bit {bit})",
                m.seed
            );
        }
    }
}

fn crash_everywhere(s: &Scenario) -> u64 {
    let mut m = Model::new(s, true);
    m.run(s.steps);
    assert!(m.writes > 20, "the scenario must make meta-data writes");
    m.writes
}

#[test]
fn crash_at_every_write_small_active_set() {
    // 7 slots over 64 extents: constant eviction, every transaction small.
    for seed in 1..=24 {
        let s = Scenario {
            device_bytes: 1 << 30,
            geometry: AlGeometry::DEFAULT,
            al_extents: 7,
            extents: 64,
            steps: 1000,
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
    // Fill the set without checking, then crash at every write while it is full and evicting.
    let mut m = Model::new(&s, false);
    m.run(s.steps);
    m.check_crashes = true;
    let before = m.writes;
    m.run(300);
    assert!(m.writes - before > 100);
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
    let mut m = Model::new(&s, false);
    // Broken writer: commits transactions without writing evicted extents' pages.
    for _ in 0..s.steps {
        let extent = m.rng.below(m.extents) as u32;
        if m.al.activate(extent) == Activation::Pending {
            while !m.al.is_active(extent) {
                let p = m.al.prepare_transaction().unwrap();
                let at = m.image.layout.al_position_byte(p.ring_position);
                m.image.apply(at, &p.transaction.encode()[..]);
                m.al.transaction_written();
            }
        }
        let first = u64::from(extent) * BITS_PER_AL_EXTENT;
        m.bitmap.set_range(first..first + 1);
        m.al.release(extent);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_coverage(&m, &m.image, &BTreeSet::new(), (0, CrashKind::Lost));
    }));
    assert!(
        result.is_err(),
        "a writer without bitmap write-out must lose bits"
    );
}
