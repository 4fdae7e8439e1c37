//! The single-node engine driven by an in-memory disk with DRBD's durability model: a write
//! lands in a volatile image at once, and reaches the durable image only through FUA or a
//! later flush. A crash keeps only the durable image. Every step is followed by
//! `invariants()`.

use std::collections::VecDeque;

use bytes::Bytes;
use udrbd_core::*;
use udrbd_meta::activity_log::BITS_PER_AL_EXTENT;
use udrbd_meta::{AlGeometry, Layout, Magic, MdFlags, MetaDiskKind, Superblock};

mod support;
use support::MemDisk;

const MIB: u64 = 1 << 20;

struct Node {
    engine: Resource,
    disk: MemDisk,
    now: Instant,
    /// Operations submitted and not yet executed.
    queued: VecDeque<DiskOp>,
    completions: Vec<BlockCompletion>,
    events: Vec<Event>,
    next_request: u64,
    /// Hold disk operations instead of executing them at once.
    hold: bool,
}

impl Node {
    fn new(size: u64) -> Node {
        let mut disk = MemDisk::new(size);
        disk.create_md();
        Node::with_disk(disk)
    }

    fn with_disk(disk: MemDisk) -> Node {
        let mut config = ResourceConfig::new("r0", 0);
        config.al_extents = 7;
        Node {
            engine: Resource::new(config, [7; 32]),
            disk,
            now: Instant(0),
            queued: VecDeque::new(),
            completions: Vec::new(),
            events: Vec::new(),
            next_request: 1,
            hold: false,
        }
    }

    fn drain(&mut self) {
        loop {
            self.engine.invariants();
            while let Some(out) = self.engine.poll_output() {
                match out {
                    Output::Disk(op) => self.queued.push_back(op),
                    Output::Block(c) => self.completions.push(c),
                    Output::Event(e) => self.events.push(e),
                    Output::Peer(p) => panic!("no peer is configured, yet the engine sent {p:?}"),
                }
            }
            if self.hold {
                return;
            }
            let Some(op) = self.queued.pop_front() else {
                return;
            };
            let c = self.disk.execute(&op);
            self.now = Instant(self.now.0 + 1000);
            self.engine.handle(self.now, Input::Disk(c));
        }
    }

    /// Completes the first held operation (and queues what follows it).
    fn step_one(&mut self) {
        let op = self.queued.pop_front().expect("a held operation");
        let c = self.disk.execute(&op);
        self.now = Instant(self.now.0 + 1000);
        self.engine.handle(self.now, Input::Disk(c));
        self.drain();
    }

    fn command(&mut self, cmd: AdminCommand) -> Result<(), CommandError> {
        let id = self.engine.command(self.now, cmd);
        self.drain();
        self.events
            .iter()
            .find_map(|e| match e {
                Event::CommandDone { id: done, result } if *done == id => Some(*result),
                _ => None,
            })
            .expect("command finished")
    }

    fn attach(&mut self) -> Result<(), CommandError> {
        let size = self.disk.durable.len() as u64;
        self.command(AdminCommand::Attach(AttachParams {
            data_device_bytes: size,
            meta_device_bytes: size,
            meta_kind: MetaDiskKind::Internal,
        }))
    }

    fn request(&mut self, make: impl FnOnce(BlockRequestId) -> BlockRequest) -> BlockRequestId {
        let id = BlockRequestId(self.next_request);
        self.next_request += 1;
        self.engine.handle(self.now, Input::Block(make(id)));
        self.drain();
        id
    }

    fn result(&self, id: BlockRequestId) -> Option<&Result<Option<Bytes>, BlockError>> {
        self.completions
            .iter()
            .find(|c| c.id == id)
            .map(|c| &c.result)
    }

    fn write(&mut self, offset: u64, byte: u8, len: usize) -> BlockRequestId {
        self.request(|id| BlockRequest::Write {
            id,
            offset,
            data: Bytes::from(vec![byte; len]),
            fua: false,
        })
    }

    fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let id = self.request(|id| BlockRequest::Read { id, offset, len });
        match self.result(id) {
            Some(Ok(Some(data))) => data.to_vec(),
            other => panic!("read failed: {other:?}"),
        }
    }

    fn superblock(&self, image: &[u8]) -> Superblock {
        let layout = Layout::internal(image.len() as u64, AlGeometry::DEFAULT).unwrap();
        let at = layout.superblock_byte() as usize;
        Superblock::decode(&image[at..at + 4096]).unwrap()
    }

    fn bitmap_bit(&self, image: &[u8], bit: u64) -> bool {
        let layout = Layout::internal(image.len() as u64, AlGeometry::DEFAULT).unwrap();
        image[(layout.bm_byte() + bit / 8) as usize] >> (bit % 8) & 1 == 1
    }
}

#[test]
fn attach_fresh_meta_data_is_inconsistent_and_needs_force() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    assert_eq!(n.engine.status().disk, DiskState::Inconsistent);
    // The attached superblock carries the 8.4 "unclean" magic and la_size.
    let sb = n.superblock(&n.disk.durable);
    assert_eq!(sb.magic, Magic::V84Unclean);
    assert!(!sb.flags.has(MdFlags::AL_CLEAN));
    assert_eq!(
        n.command(AdminCommand::Primary { force: false }),
        Err(CommandError::StateChange(StateChangeError::NoUpToDateDisk))
    );
    n.command(AdminCommand::Primary { force: true }).unwrap();
    let st = n.engine.status();
    assert_eq!((st.role, st.disk), (Role::Primary, DiskState::UpToDate));
    let sb = n.superblock(&n.disk.durable);
    assert!(
        sb.flags
            .has(MdFlags::PRIMARY_IND | MdFlags::CONSISTENT | MdFlags::WAS_UP_TO_DATE)
    );
    assert_eq!(sb.uuids.current & 1, 1, "bit 0 of a Primary's current UUID");
    assert_eq!(
        sb.uuids.bitmap, 4,
        "the old current (JUST_CREATED) moved to the bitmap slot"
    );
}

#[test]
fn writes_read_back_and_are_refused_when_secondary() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    let id = n.write(0, 1, 4096);
    assert_eq!(n.result(id), Some(&Err(BlockError::NotPrimary)));
    n.command(AdminCommand::Primary { force: true }).unwrap();
    for (i, off) in [0u64, 4 * MIB - 4096, 20 * MIB, 40 * MIB + 512]
        .into_iter()
        .enumerate()
    {
        let id = n.write(off, i as u8 + 1, 8192);
        assert_eq!(n.result(id), Some(&Ok(None)));
        assert_eq!(n.read(off, 8192), vec![i as u8 + 1; 8192]);
    }
    let size = n.engine.status().size_bytes;
    let id = n.write(size - 4096, 9, 8192);
    assert_eq!(n.result(id), Some(&Err(BlockError::OutOfRange)));
}

#[test]
fn cold_extent_waits_for_the_durable_al_transaction() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.hold = true;
    n.write(8 * MIB, 3, 4096);
    // Only the AL transaction is submitted; the data write waits for it.
    let ops: Vec<_> = n.queued.iter().map(|o| o.area).collect();
    assert_eq!(ops, vec![DiskArea::ActivityLog]);
    assert!(matches!(
        n.queued[0].kind,
        DiskOpKind::Write { fua: true, .. }
    ));
    n.hold = false;
    n.drain();
    assert_eq!(n.completions.last().unwrap().result, Ok(None));
    // A second write into the now hot extent goes straight to the disk.
    n.hold = true;
    n.write(8 * MIB + 4096, 4, 4096);
    let ops: Vec<_> = n.queued.iter().map(|o| o.area).collect();
    assert_eq!(ops, vec![DiskArea::Data]);
    n.hold = false;
    n.drain();
}

#[test]
fn eviction_writes_the_bitmap_before_the_transaction() {
    let mut n = Node::new(256 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    // 7 slots: writing 8 extents evicts the first one.
    for e in 0..7u64 {
        n.write(e * 4 * MIB, 1, 4096);
    }
    n.hold = true;
    n.write(40 * 4 * MIB, 1, 4096);
    // The writes that completed are flushed first (meta-data writes are FLUSH|FUA in DRBD),
    // then the evicted extent's page, then the transaction.
    let kinds = |n: &Node| {
        n.queued
            .iter()
            .map(|o| (o.area, matches!(o.kind, DiskOpKind::Flush)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&n),
        vec![(DiskArea::Data, true)],
        "the preflush first"
    );
    n.step_one();
    assert_eq!(
        kinds(&n),
        vec![(DiskArea::Bitmap, false)],
        "evicted extent's page next"
    );
    n.hold = false;
    n.drain();
    // Bit 0 (extent 0's first block, written while no peer was connected) is durable now.
    assert!(n.bitmap_bit(&n.disk.durable, 0));
}

#[test]
fn crash_replays_the_activity_log_on_attach() {
    let mut n = Node::new(256 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    for e in [3u64, 10, 11] {
        n.write(e * 4 * MIB + 8192, 5, 4096);
    }
    // Power cut: the data writes were not flushed, the AL transactions were FUA.
    n.disk.crash();
    let disk = std::mem::replace(&mut n.disk, MemDisk::new(0));
    let mut m = Node::with_disk(disk);
    m.attach().unwrap();
    let st = m.engine.status();
    // Replayed extents are out of sync: 3 extents x 4 MiB.
    assert_eq!(st.out_of_sync_bytes, 3 * 4 * MIB);
    for e in [3u64, 10, 11] {
        for bit in [e * BITS_PER_AL_EXTENT, (e + 1) * BITS_PER_AL_EXTENT - 1] {
            assert!(
                m.bitmap_bit(&m.disk.durable, bit),
                "extent {e} bit {bit} durable"
            );
        }
    }
    let sb = m.superblock(&m.disk.durable);
    assert!(sb.flags.has(MdFlags::CRASHED_PRIMARY));
    assert_eq!(st.disk, DiskState::UpToDate);
}

#[test]
fn clean_down_leaves_clean_meta_data() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.write(MIB, 7, 4096);
    n.engine.handle(n.now, Input::Opened);
    assert_eq!(
        n.command(AdminCommand::Secondary),
        Err(CommandError::StateChange(StateChangeError::DeviceInUse))
    );
    assert_eq!(
        n.command(AdminCommand::Down),
        Err(CommandError::StateChange(StateChangeError::DeviceInUse))
    );
    n.engine.handle(n.now, Input::Closed);
    n.command(AdminCommand::Down).unwrap();
    assert_eq!(n.engine.status().disk, DiskState::Diskless);
    let sb = n.superblock(&n.disk.durable);
    assert_eq!(sb.magic, Magic::V08);
    assert!(sb.flags.has(MdFlags::AL_CLEAN));
    assert!(!sb.flags.has(MdFlags::PRIMARY_IND));
    assert_eq!(sb.uuids.current & 1, 0, "bit 0 cleared on demotion");
    // The written block is out of sync (no peer got it) and that is on disk.
    assert!(n.bitmap_bit(&n.disk.durable, MIB / 4096));
    // Attach again: nothing to replay, the same bits.
    n.attach().unwrap();
    assert_eq!(n.engine.status().out_of_sync_bytes, 4096);
    assert_eq!(n.engine.status().disk, DiskState::UpToDate);
}

/// A request in flight holds the device open, as in DRBD (a request implies an open file):
/// `secondary` and `down` are refused until it completes. A write that waited for its
/// activity-log transaction on a frozen disk while its node was demoted started later on a
/// Secondary and went to the peer, by then Primary (swarm seed 17456).
#[test]
fn a_request_in_flight_holds_the_device_open() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.hold = true;
    let id = n.write(8 * MIB, 3, 4096);
    assert_eq!(n.result(id), None, "the write waits for its AL transaction");
    for cmd in [AdminCommand::Secondary, AdminCommand::Down] {
        let done = n.engine.command(n.now, cmd.clone());
        n.drain();
        let result = n.events.iter().find_map(|e| match e {
            Event::CommandDone { id, result } if *id == done => Some(*result),
            _ => None,
        });
        assert_eq!(
            result,
            Some(Err(CommandError::StateChange(
                StateChangeError::DeviceInUse
            ))),
            "{cmd:?} with a write in flight"
        );
    }
    assert_eq!(n.engine.status().role, Role::Primary);
    n.hold = false;
    n.drain();
    assert_eq!(n.result(id), Some(&Ok(None)));
    n.command(AdminCommand::Secondary).unwrap();
    assert_eq!(n.engine.status().role, Role::Secondary);
}

#[test]
fn a_failed_write_is_never_acknowledged_and_the_disk_detaches() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.disk.fail_data_writes = true;
    let id = n.write(MIB, 1, 4096);
    assert_eq!(n.result(id), Some(&Err(BlockError::Io)));
    assert_eq!(n.engine.status().disk, DiskState::Diskless);
    let id = n.write(MIB, 1, 4096);
    assert_eq!(n.result(id), Some(&Err(BlockError::Io)));
}

#[test]
fn attach_refuses_bad_meta_data() {
    let mut n = Node::with_disk(MemDisk::new(64 * MIB));
    assert_eq!(n.attach(), Err(CommandError::NoValidMetaData));
    assert_eq!(n.engine.status().disk, DiskState::Diskless);
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    assert_eq!(n.attach(), Err(CommandError::AlreadyAttached));
}

#[test]
fn discard_and_write_zeroes_with_fua_flush_before_completing() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.write(MIB, 9, 8192);
    n.hold = true;
    let id = n.request(|id| BlockRequest::Discard {
        id,
        offset: MIB,
        len: 4096,
        fua: true,
    });
    let kinds = |n: &Node| n.queued.iter().map(|o| o.kind.clone()).collect::<Vec<_>>();
    assert_eq!(kinds(&n), vec![DiskOpKind::Discard { len: 4096 }]);
    let op = n.queued.pop_front().unwrap();
    let c = n.disk.execute(&op);
    n.engine.handle(n.now, Input::Disk(c));
    n.drain();
    assert_eq!(
        kinds(&n),
        vec![DiskOpKind::Flush],
        "flush before the completion"
    );
    assert_eq!(n.result(id), None);
    n.hold = false;
    n.drain();
    assert_eq!(n.result(id), Some(&Ok(None)));
    assert_eq!(n.read(MIB, 8192)[..4096], [0u8; 4096]);
    assert_eq!(n.read(MIB, 8192)[4096..], [9u8; 4096]);
    let id = n.request(|id| BlockRequest::WriteZeroes {
        id,
        offset: MIB + 4096,
        len: 4096,
        no_hole: true,
        fua: false,
    });
    assert_eq!(n.result(id), Some(&Ok(None)));
    assert_eq!(n.read(MIB, 8192), vec![0u8; 8192]);
}

/// DRBD writes its meta-data with FLUSH|FUA: application writes that completed before a
/// meta-data write are durable with it. A Primary that wrote without flushing and is then
/// demoted (bitmap and superblock written) keeps that data through a power cut (swarm seed 10:
/// a later crash lost it, and a Primary promoted on that disk read the older data).
#[test]
fn meta_data_writes_make_completed_writes_durable() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.write(MIB, 7, 4096);
    n.command(AdminCommand::Secondary).unwrap();
    n.disk.crash();
    let disk = std::mem::replace(&mut n.disk, MemDisk::new(0));
    let mut n = Node::with_disk(disk);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    assert_eq!(n.read(MIB, 4096), vec![7u8; 4096]);
}

/// `suspend-io` (DRBD's susp) holds new application IO, while a write already in flight
/// completes; `resume-io` lets the held requests go on, in order. Both are idempotent, as
/// DRBD's (a request for the state it is in succeeds).
#[test]
fn suspend_io_holds_new_requests_until_resume_io() {
    let mut n = Node::new(64 * MIB);
    n.attach().unwrap();
    n.command(AdminCommand::Primary { force: true }).unwrap();
    n.write(0, 1, 4096);
    // A write in flight (its disk operation not yet executed) when the IO is suspended.
    n.hold = true;
    let in_flight = n.write(0, 2, 4096);
    assert_eq!(n.result(in_flight), None);
    n.command(AdminCommand::SuspendIo).unwrap();
    n.command(AdminCommand::SuspendIo).unwrap();
    assert!(n.engine.status().suspended_by_user);
    n.hold = false;
    n.drain();
    assert_eq!(n.result(in_flight), Some(&Ok(None)), "in flight: completes");
    let write = n.write(8192, 3, 4096);
    let read = n.request(|id| BlockRequest::Read {
        id,
        offset: 0,
        len: 4096,
    });
    let flush = n.request(|id| BlockRequest::Flush { id });
    for id in [write, read, flush] {
        assert_eq!(n.result(id), None, "held while suspended");
    }
    assert_eq!(n.engine.status().upper_pending, 3);
    assert!(n.queued.is_empty(), "no disk operation for a held request");
    n.command(AdminCommand::ResumeIo).unwrap();
    assert!(!n.engine.status().suspended_by_user);
    assert_eq!(n.result(write), Some(&Ok(None)));
    assert_eq!(
        n.result(read),
        Some(&Ok(Some(Bytes::from(vec![2u8; 4096])))),
        "the held read sees the write that was in flight"
    );
    assert_eq!(n.result(flush), Some(&Ok(None)));
    assert_eq!(n.read(8192, 4096), vec![3u8; 4096]);
    n.command(AdminCommand::ResumeIo).unwrap();
}
