//! Single-node runs: a Primary with a configured but absent peer, a random workload of reads,
//! writes (some with FUA), flushes, discards and write-zeroes, crashes at random moments and
//! re-attaches from the durable image.
//!
//! Checkers (each a panic naming the seed and the violation):
//! - **durability**: a write acknowledged with FUA, or acknowledged before an acknowledged
//!   flush was submitted, reads back after a crash, unless a later write to the same block was
//!   submitted (it may have landed, or been torn);
//! - **register**: a read of a block with no write in flight returns the last completed write;
//! - **bitmap soundness**: after a crash and re-attach, every block written since the last
//!   clean attach is out of sync (the absent peer never got it): its bit is set, directly or
//!   through the activity-log replay;
//! - **invariants**: `Resource::invariants()` after every step;
//! - **progress**: every request completes in bounded simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use udrbd_core::*;
use udrbd_meta::activity_log::AlTransaction;
use udrbd_meta::{AlGeometry, Layout, MetaDiskKind, Superblock};

use crate::disk::SimDisk;

/// Block size of the workload and of the checkers.
const BLOCK: u64 = 4096;

/// Options of a run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Device size in bytes.
    pub device_bytes: u64,
    /// Activity-log slots (small to force evictions).
    pub al_extents: u16,
    /// Workload requests per epoch (between crashes).
    pub requests: u64,
    /// Crash/re-attach epochs.
    pub epochs: u64,
    /// Requests in flight at most.
    pub queue_depth: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device_bytes: 96 << 20,
            al_extents: 7,
            requests: 300,
            epochs: 4,
            queue_depth: 8,
        }
    }
}

/// Counts of what a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Requests completed.
    pub requests: u64,
    /// Crashes.
    pub crashes: u64,
    /// Blocks verified after crashes.
    pub verified_blocks: u64,
    /// Torn writes at crashes.
    pub torn_writes: u64,
    /// Activity-log transactions written.
    pub al_writes: u64,
}

#[derive(Clone, Debug)]
struct BlockWrite {
    request: BlockRequestId,
    data: Bytes,
    /// Completed (acknowledged) at this step, if yet.
    acked_at: Option<u64>,
    fua: bool,
}

/// The model of one block: writes in submission order since the last re-attach.
#[derive(Clone, Debug, Default)]
struct BlockModel {
    writes: Vec<BlockWrite>,
}

struct Run {
    seed: u64,
    opts: Options,
    rng: ChaCha8Rng,
    engine: Resource,
    disk: SimDisk,
    now: Instant,
    next_request: u64,
    /// Requests in flight: id -> (kind, first block, blocks, the data written).
    in_flight: BTreeMap<BlockRequestId, (Kind, u64, u64, Option<Bytes>)>,
    /// Flushes in flight: id -> the step at which they were submitted.
    flushes: BTreeMap<BlockRequestId, u64>,
    /// Latest step whose completed writes a completed flush made durable.
    durable_step: u64,
    step: u64,
    blocks: BTreeMap<u64, BlockModel>,
    /// Blocks written to the disk since the last clean attach (they may differ from the absent
    /// peer, so they must be out of sync after a crash).
    written: BTreeSet<u64>,
    report: Report,
    events: Vec<Event>,
    size_blocks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Zero,
}

/// Runs one seed; panics with the seed on a checker violation.
pub fn run(seed: u64, opts: Options) -> Report {
    let mut disk = SimDisk::new(opts.device_bytes, seed ^ 0xD15C);
    create_md(&mut disk);
    let mut r = Run {
        seed,
        opts,
        rng: ChaCha8Rng::seed_from_u64(seed),
        engine: new_engine(seed, opts),
        disk,
        now: Instant(0),
        next_request: 1,
        in_flight: BTreeMap::new(),
        flushes: BTreeMap::new(),
        durable_step: 0,
        step: 0,
        blocks: BTreeMap::new(),
        written: BTreeSet::new(),
        report: Report::default(),
        events: Vec::new(),
        size_blocks: 0,
    };
    r.attach();
    r.command(AdminCommand::Primary { force: true });
    for epoch in 0..opts.epochs {
        r.workload();
        if epoch + 1 < opts.epochs {
            r.crash_and_recover();
        }
    }
    r.report.torn_writes = r.disk.stats.torn_writes;
    r.report
}

fn new_engine(seed: u64, opts: Options) -> Resource {
    let mut config = ResourceConfig::new("r0", 0);
    config.al_extents = opts.al_extents;
    config.bitmap_writeout_interval = Duration::from_millis(50);
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    Resource::new(config, s)
}

/// create-md on the simulated disk.
fn create_md(disk: &mut SimDisk) {
    let layout = Layout::internal(disk.size(), AlGeometry::DEFAULT).expect("layout");
    let init = AlTransaction::initialized().encode();
    for p in 0..layout.al.ring_blocks() {
        disk.poke(layout.al_position_byte(p), &init[..]);
    }
    disk.poke(
        layout.superblock_byte(),
        &Superblock::new_created(&layout, 0).encode()[..],
    );
}

impl Run {
    fn fail(&self, what: String) -> ! {
        panic!("seed {}: step {}: {what}", self.seed, self.step)
    }

    /// Feeds one input, then routes outputs; invariants after every step.
    fn handle(&mut self, input: Input) {
        self.engine.handle(self.now, input);
        self.engine.invariants();
        self.drain_outputs();
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Disk(op) => {
                    if matches!(op.area, DiskArea::ActivityLog) {
                        self.report.al_writes += 1;
                    }
                    self.note_data_write(&op);
                    self.disk.submit(op, self.now);
                }
                Output::Block(c) => self.on_completion(c),
                Output::Event(e) => self.events.push(e),
                Output::Peer(p) => panic!("a single node without a peer sent {p:?}"),
            }
        }
    }

    /// Advances simulated time to the next disk completion or timer; false if nothing is due.
    fn tick(&mut self) -> bool {
        let next = [self.disk.next_due(), self.engine.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = next else { return false };
        self.now = self.now.max(at);
        for (c, ..) in self.disk.complete_due(self.now) {
            self.handle(Input::Disk(c));
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.handle(Input::Timeout);
        }
        true
    }

    fn command(&mut self, cmd: AdminCommand) {
        let id = self.engine.command(self.now, cmd.clone());
        self.engine.invariants();
        self.drain_outputs();
        let deadline = self.now.plus(Duration::from_secs(60));
        loop {
            let done = self.events.iter().find_map(|e| match e {
                Event::CommandDone { id: d, result } if *d == id => Some(*result),
                _ => None,
            });
            if let Some(result) = done {
                if let Err(e) = result {
                    self.fail(format!("{cmd:?} failed: {e}"));
                }
                return;
            }
            if !self.tick() || self.now > deadline {
                self.fail(format!("{cmd:?} did not finish (progress)"));
            }
        }
    }

    fn attach(&mut self) {
        let size = self.disk.size();
        self.command(AdminCommand::Attach(AttachParams {
            data_device_bytes: size,
            meta_device_bytes: size,
            meta_kind: MetaDiskKind::Internal,
        }));
        self.size_blocks = self.engine.status().size_bytes / BLOCK;
    }

    fn workload(&mut self) {
        let mut submitted = 0;
        let deadline = self.now.plus(Duration::from_secs(3600));
        while submitted < self.opts.requests || !self.in_flight.is_empty() {
            if submitted < self.opts.requests && self.in_flight.len() < self.opts.queue_depth {
                self.submit_random();
                submitted += 1;
                continue;
            }
            if !self.tick() || self.now > deadline {
                self.fail(format!(
                    "{} requests never completed (progress)",
                    self.in_flight.len()
                ));
            }
        }
    }

    fn submit_random(&mut self) {
        self.step += 1;
        let id = BlockRequestId(self.next_request);
        self.next_request += 1;
        // Concentrate on a few extents so the small activity log churns.
        let hot = !self.rng.next_u64().is_multiple_of(3);
        let span = if hot {
            self.size_blocks.min(24 * 1024)
        } else {
            self.size_blocks
        };
        let blocks = 1 + self.rng.next_u64() % 4;
        let mut first = self.rng.next_u64() % (span - blocks);
        // Like a file system, never two writes in flight to one block: their order would be
        // undefined (NBD and DRBD do not order concurrent overlapping writes).
        while (first..first + blocks).any(|b| self.write_in_flight(b)) {
            first = self.rng.next_u64() % (span - blocks);
        }
        let offset = first * BLOCK;
        let choice = self.rng.next_u64() % 20;
        let (kind, request, data) = match choice {
            0..=5 => (
                Kind::Read,
                BlockRequest::Read {
                    id,
                    offset,
                    len: (blocks * BLOCK) as u32,
                },
                None,
            ),
            6..=15 => {
                let data = self.random_data(blocks);
                let fua = choice == 15;
                let req = BlockRequest::Write {
                    id,
                    offset,
                    data: data.clone(),
                    fua,
                };
                self.record_write(id, first, blocks, &data, fua);
                (Kind::Write, req, Some(data))
            }
            16 | 17 => {
                self.flushes.insert(id, self.step);
                (Kind::Flush, BlockRequest::Flush { id }, None)
            }
            _ => {
                let data = Bytes::from(vec![0u8; (blocks * BLOCK) as usize]);
                self.record_write(id, first, blocks, &data, false);
                let req = if choice == 18 {
                    BlockRequest::Discard {
                        id,
                        offset,
                        len: blocks * BLOCK,
                        fua: false,
                    }
                } else {
                    BlockRequest::WriteZeroes {
                        id,
                        offset,
                        len: blocks * BLOCK,
                        no_hole: false,
                        fua: false,
                    }
                };
                (Kind::Zero, req, Some(data))
            }
        };
        self.in_flight.insert(id, (kind, first, blocks, data));
        self.handle(Input::Block(request));
    }

    fn random_data(&mut self, blocks: u64) -> Bytes {
        let mut v = vec![0u8; (blocks * BLOCK) as usize];
        // Distinct content per block: a tag, the rest a pattern.
        for (i, chunk) in v.chunks_mut(BLOCK as usize).enumerate() {
            let tag = self.rng.next_u64() ^ i as u64;
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (tag >> ((j % 8) * 8)) as u8;
            }
        }
        Bytes::from(v)
    }

    /// A data write reaching the disk may make it differ from the absent peer.
    fn note_data_write(&mut self, op: &DiskOp) {
        let len = match &op.kind {
            DiskOpKind::Write { data, .. } => data.len() as u64,
            DiskOpKind::Discard { len } | DiskOpKind::WriteZeroes { len } => *len,
            _ => return,
        };
        if op.area == DiskArea::Data {
            self.written
                .extend(op.offset / BLOCK..(op.offset + len).div_ceil(BLOCK));
        }
    }

    fn record_write(
        &mut self,
        request: BlockRequestId,
        first: u64,
        blocks: u64,
        data: &Bytes,
        fua: bool,
    ) {
        for b in 0..blocks {
            let slice = data.slice((b * BLOCK) as usize..((b + 1) * BLOCK) as usize);
            self.blocks
                .entry(first + b)
                .or_default()
                .writes
                .push(BlockWrite {
                    request,
                    data: slice,
                    acked_at: None,
                    fua,
                });
        }
    }

    fn on_completion(&mut self, c: BlockCompletion) {
        self.report.requests += 1;
        let Some((kind, first, blocks, _)) = self.in_flight.remove(&c.id) else {
            self.fail(format!("completion of unknown request {:?}", c.id));
        };
        if let Err(e) = &c.result {
            self.fail(format!(
                "{kind:?} request {:?} failed: {e:?} (healthy disk)",
                c.id
            ));
        }
        match kind {
            Kind::Read => {
                let data = c.result.clone().ok().flatten().expect("read data");
                for b in 0..blocks {
                    self.check_read(
                        first + b,
                        &data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize],
                    );
                }
            }
            Kind::Write | Kind::Zero => {
                for b in 0..blocks {
                    let m = self.blocks.get_mut(&(first + b)).expect("model");
                    if let Some(w) = m.writes.iter_mut().find(|w| w.request == c.id) {
                        w.acked_at = Some(self.step);
                    }
                }
            }
            Kind::Flush => {
                let submitted = self.flushes.remove(&c.id).expect("flush");
                self.durable_step = self.durable_step.max(submitted);
            }
        }
    }

    fn write_in_flight(&self, block: u64) -> bool {
        self.blocks
            .get(&block)
            .is_some_and(|m| m.writes.iter().any(|w| w.acked_at.is_none()))
    }

    /// Register: with no write to the block in flight, a read returns the last write.
    fn check_read(&self, block: u64, got: &[u8]) {
        let Some(m) = self.blocks.get(&block) else {
            return;
        };
        if m.writes.iter().any(|w| w.acked_at.is_none()) {
            return;
        }
        let Some(last) = m.writes.last() else { return };
        if got != &last.data[..] {
            self.fail(format!(
                "read of block {block} does not return its last write"
            ));
        }
    }

    fn crash_and_recover(&mut self) {
        // Crash at a random moment of activity: submit some more, let a little time pass.
        for _ in 0..(self.rng.next_u64() % 8) {
            if self.in_flight.len() < self.opts.queue_depth {
                self.submit_random();
            }
        }
        for _ in 0..(self.rng.next_u64() % 6) {
            self.tick();
        }
        self.report.crashes += 1;
        self.disk.crash();
        self.in_flight.clear();
        self.flushes.clear();
        self.events.clear();
        self.engine = new_engine(self.seed.wrapping_add(self.report.crashes), self.opts);
        self.attach();
        self.check_after_crash();
        self.command(AdminCommand::Primary { force: false });
        self.blocks.clear();
        self.durable_step = 0;
    }

    fn check_after_crash(&mut self) {
        let blocks: Vec<u64> = self.blocks.keys().copied().collect();
        for block in blocks {
            let m = &self.blocks[&block];
            let Some(last) = m.writes.last() else {
                continue;
            };
            // Durability: the last write of the block was acknowledged and promised durable.
            // A flush covers the writes acknowledged before it was submitted (an earlier step).
            let promised = last
                .acked_at
                .is_some_and(|at| last.fua || at < self.durable_step);
            if promised {
                let got = self.disk.durable(block * BLOCK, BLOCK as usize);
                if got != &last.data[..] {
                    let which: Vec<String> = m
                        .writes
                        .iter()
                        .map(|w| {
                            format!(
                                "{:?} acked {:?} fua {} match {}",
                                w.request,
                                w.acked_at,
                                w.fua,
                                got == &w.data[..]
                            )
                        })
                        .collect();
                    self.fail(format!(
                        "durability: block {block} lost its acknowledged write (durable step {}; writes {which:?}; zero {})",
                        self.durable_step,
                        got.iter().all(|&b| b == 0)
                    ));
                }
                self.report.verified_blocks += 1;
            }
        }
        // Bitmap soundness: every block written since the clean attach is out of sync.
        let status = self.engine.status();
        if status.out_of_sync_bytes == 0 && !self.written.is_empty() {
            self.fail("bitmap soundness: nothing out of sync after a crash with writes".into());
        }
        let layout = Layout::internal(self.disk.size(), AlGeometry::DEFAULT).expect("layout");
        for &block in &self.written {
            let byte = self.disk.durable(layout.bm_byte() + block / 8, 1)[0];
            if byte >> (block % 8) & 1 == 0 {
                self.fail(format!(
                    "bitmap soundness: written block {block} is not out of sync on disk"
                ));
            }
        }
    }
}
