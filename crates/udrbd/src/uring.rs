//! Backing IO through io_uring, from the resource's own thread: the engine's disk operations
//! are pushed to the submission queue and submitted in one syscall per batch; completions are
//! signalled on an eventfd the event loop watches. No thread hop on the data path.
//!
//! FUA writes are not sent through the ring: the driver gives them to the IO threads
//! (pwritev2 with RWF_DSYNC), because RWF_DSYNC writes through io_uring were lost by the
//! power-cut test.
//!
//! Ownership rule (why the `unsafe` below is sound): every buffer and file descriptor an SQE
//! points to is owned by its [`InFlight`] entry, which stays in `in_flight` until the kernel
//! posted the CQE for it. A stuck operation (a frozen disk) therefore keeps its buffer and its
//! device open for as long as the kernel may still touch them; dropping the ring with IO in
//! flight is avoided by [`Uring::in_flight`] checks at shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{IoUring, opcode, squeue, types};
use udrbd_core::{DiskCompletion, DiskError, DiskOp, DiskOpKind};

use crate::backing::Backing;
use crate::meta_io::IO_ALIGN;

/// Submission queue entries.
const ENTRIES: u32 = 256;

/// What keeps an in-flight operation's memory and device alive.
struct InFlight {
    op: DiskOp,
    /// The buffer the kernel reads from or writes into (aligned window inside).
    buffer: Option<Vec<u8>>,
    /// A write's payload when the kernel writes straight from it (no aligned copy).
    data: Option<Bytes>,
    /// Start of the aligned window in `buffer`.
    start: usize,
    len: usize,
    /// Keeps the file descriptor open.
    _backing: Arc<Backing>,
}

/// The ring and the operations it owns.
pub struct Uring {
    ring: IoUring,
    eventfd: OwnedFd,
    in_flight: BTreeMap<u64, InFlight>,
    /// Entries that did not fit the submission queue yet.
    backlog: VecDeque<(u64, squeue::Entry)>,
    next: u64,
}

impl Uring {
    /// A ring with an eventfd for completions.
    pub fn new() -> io::Result<Uring> {
        let ring = IoUring::new(ENTRIES)?;
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        )?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Uring {
            ring,
            eventfd,
            in_flight: BTreeMap::new(),
            backlog: VecDeque::new(),
            next: 1,
        })
    }

    /// The eventfd signalled when completions are posted.
    pub fn eventfd(&self) -> &OwnedFd {
        &self.eventfd
    }

    /// Operations the kernel has not returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues one operation (submitted by the next [`Uring::submit`]).
    pub fn push(&mut self, op: DiskOp, backing: Arc<Backing>) {
        let device = backing.device_for(op.area);
        let fd = types::Fd(device.file().as_raw_fd());
        let direct = device.is_direct();
        let backing_async = backing.submit_async;
        let key = self.next;
        self.next += 1;
        let mut entry = InFlight {
            op,
            buffer: None,
            data: None,
            start: 0,
            len: 0,
            _backing: backing,
        };
        let sqe = match entry.op.kind.clone() {
            DiskOpKind::Read { len } => {
                let (buf, start) = aligned(len as usize);
                entry.buffer = Some(buf);
                entry.start = start;
                entry.len = len as usize;
                let ptr = entry.buffer.as_mut().expect("buffer")[start..].as_mut_ptr();
                opcode::Read::new(fd, ptr, len)
                    .offset(entry.op.offset)
                    .build()
            }
            DiskOpKind::Write { data, fua } => {
                entry.len = data.len();
                // Only O_DIRECT needs an aligned buffer: a page-cache write (a peer on tmpfs)
                // or an already aligned payload is written from the payload itself, saving a
                // copy of every byte replicated.
                let ptr = if !direct || (data.as_ptr() as usize).is_multiple_of(IO_ALIGN) {
                    let ptr = data.as_ptr();
                    entry.data = Some(data.clone());
                    ptr
                } else {
                    let (buf, start) = aligned_copy(&data);
                    entry.buffer = Some(buf);
                    entry.start = start;
                    entry.buffer.as_ref().expect("buffer")[start..].as_ptr()
                };
                // FUA writes are not sent through the ring (see the driver): RWF_DSYNC writes
                // through io_uring were lost in the power-cut test.
                assert!(!fua, "FUA writes go to the IO threads");
                opcode::Write::new(fd, ptr, data.len() as u32)
                    .offset(entry.op.offset)
                    .build()
            }
            DiskOpKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            DiskOpKind::Discard { len } => opcode::Fallocate::new(fd, len)
                .offset(entry.op.offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            DiskOpKind::WriteZeroes { len } => opcode::Fallocate::new(fd, len)
                .offset(entry.op.offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            DiskOpKind::Capacity => unreachable!("the backing size is read by an IO thread"),
        };
        self.in_flight.insert(key, entry);
        let sqe = if backing_async {
            sqe.flags(squeue::Flags::ASYNC)
        } else {
            sqe
        };
        self.backlog.push_back((key, sqe.user_data(key)));
    }

    /// Pushes the backlog into the submission queue and submits it. Without anything to
    /// submit and no completions held back by the kernel this is no syscall: the driver calls
    /// it after every batch of engine outputs, most of which start no disk IO (a peer on
    /// tmpfs writes inline), and an empty io_uring_enter per batch was a third of a syscall
    /// per replicated write there.
    #[allow(unsafe_code)]
    pub fn submit(&mut self) -> io::Result<()> {
        let idle = {
            let mut sq = self.ring.submission();
            while let Some((key, sqe)) = self.backlog.pop_front() {
                // SAFETY: the buffer and file descriptor the entry points to are owned
                // by `in_flight[key]`, which is removed only after the kernel posted this
                // entry's completion (see `reap`).
                if unsafe { sq.push(&sqe) }.is_err() {
                    self.backlog.push_front((key, sqe));
                    break;
                }
            }
            sq.is_empty() && !sq.cq_overflow()
        };
        if idle {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Collects every posted completion (and clears the eventfd), including those the kernel
    /// held back because the completion queue was full: they reach the queue only through an
    /// io_uring_enter, which then signals no eventfd, so they are collected here at once.
    pub fn reap(&mut self) -> Vec<DiskCompletion> {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.eventfd, &mut counter);
        let mut done = Vec::new();
        loop {
            let cqes: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (key, res) in cqes {
                let Some(entry) = self.in_flight.remove(&key) else {
                    continue;
                };
                done.push(complete(entry, res));
            }
            // An enter with GETEVENTS (set for an overflow) moves them into the queue.
            if !self.ring.submission().cq_overflow() || self.ring.submit().is_err() {
                break;
            }
        }
        if !self.backlog.is_empty() {
            let _ = self.submit();
        }
        done
    }
}

fn complete(entry: InFlight, res: i32) -> DiskCompletion {
    let id = entry.op.id;
    if res < 0 {
        return DiskCompletion {
            id,
            result: Err(DiskError { errno: -res }),
        };
    }
    let result = match entry.op.kind {
        DiskOpKind::Read { .. } | DiskOpKind::Write { .. } if (res as usize) < entry.len => {
            // O_DIRECT IO within the device is never short; a short one is an error.
            Err(DiskError { errno: libc::EIO })
        }
        DiskOpKind::Read { .. } => {
            let buf = entry.buffer.expect("read buffer");
            Ok(Some(
                Bytes::from(buf).slice(entry.start..entry.start + entry.len),
            ))
        }
        _ => Ok(None),
    };
    DiskCompletion { id, result }
}

/// A zeroed buffer with a 4 KiB aligned window of `len` bytes: (buffer, window start).
/// An aligned copy of `data` (for O_DIRECT), without zeroing the buffer first: only the
/// padding before the aligned start is written besides the data.
fn aligned_copy(data: &[u8]) -> (Vec<u8>, usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(data.len() + IO_ALIGN);
    let start = buf.as_ptr().align_offset(IO_ALIGN);
    buf.resize(start, 0);
    buf.extend_from_slice(data);
    debug_assert_eq!(buf.as_ptr().align_offset(IO_ALIGN), start);
    (buf, start)
}

fn aligned(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + IO_ALIGN];
    let start = buf.as_ptr().align_offset(IO_ALIGN);
    (buf, start)
}

/// Whether `e` means io_uring is not available here (fall back to IO threads).
pub fn unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta_io::{Access, MetaDevice};
    use udrbd_core::{DiskArea, DiskOpId};

    /// A ring and a backing file of `len` bytes (kept while the directory lives).
    fn ring_on_a_file(len: u64) -> (tempfile::TempDir, Arc<Backing>, Uring) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        let backing = Arc::new(Backing {
            data: MetaDevice::open(&path, Access::Write).unwrap(),
            meta: None,
            submit_async: false,
        });
        (dir, backing, Uring::new().unwrap())
    }

    #[test]
    fn write_read_flush_through_the_ring() {
        let (_dir, backing, mut ring) = ring_on_a_file(1 << 20);
        let op = |n, kind| DiskOp {
            id: DiskOpId::new(1, n),
            area: DiskArea::Data,
            offset: 8192,
            kind,
        };
        ring.push(
            op(
                1,
                DiskOpKind::Write {
                    data: Bytes::from(vec![7u8; 4096]),
                    fua: false,
                },
            ),
            backing.clone(),
        );
        ring.submit().unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            done = ring.reap();
        }
        assert_eq!(done[0].result, Ok(None));
        ring.push(op(2, DiskOpKind::Read { len: 4096 }), backing.clone());
        ring.push(op(3, DiskOpKind::Flush), backing.clone());
        ring.submit().unwrap();
        let mut all = Vec::new();
        while all.len() < 2 {
            all.extend(ring.reap());
        }
        let read = all.iter().find(|c| c.id == DiskOpId::new(1, 2)).unwrap();
        assert_eq!(
            read.result.as_ref().unwrap().as_ref().unwrap()[..],
            [7u8; 4096]
        );
        assert_eq!(ring.in_flight(), 0);
    }

    /// More completions than the completion queue holds: the kernel keeps the rest back, and
    /// only an io_uring_enter releases them, which `submit` no longer does when it has nothing
    /// to submit. One `reap` still returns every one of them.
    #[test]
    fn completions_past_a_full_completion_queue_are_reaped_too() {
        let (_dir, backing, mut ring) = ring_on_a_file(4 << 20);
        let total = 3 * ENTRIES as u64;
        for n in 0..total {
            let op = DiskOp {
                id: DiskOpId::new(1, n as u32),
                area: DiskArea::Data,
                offset: n * 4096,
                kind: DiskOpKind::Write {
                    data: Bytes::from(vec![n as u8; 4096]),
                    fua: false,
                },
            };
            ring.push(op, backing.clone());
        }
        // Each submit moves one submission queue's worth to the kernel.
        for _ in 0..3 {
            ring.submit().unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ring.ring.submission().cq_overflow() {
            assert!(
                std::time::Instant::now() < deadline,
                "the completion queue never overflowed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The queue is full (2 x ENTRIES) and the kernel holds at least one more back.
        let mut done = ring.reap();
        assert!(
            done.len() > 2 * ENTRIES as usize,
            "one reap returned {} completions: none of those held back",
            done.len()
        );
        while (done.len() as u64) < total {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {total} completions",
                done.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
            done.extend(ring.reap());
        }
        assert!(done.iter().all(|c| c.result == Ok(None)));
        assert_eq!(ring.in_flight(), 0);
    }
}
