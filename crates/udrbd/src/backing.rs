//! The backing-IO driver: executes the engine's [`DiskOp`]s on the backing and meta-data
//! devices with a small pool of threads, and sends each [`DiskCompletion`] back.
//!
//! - Data and meta-data devices are opened exclusively, with O_DIRECT where the file system
//!   supports it ([`MetaDevice`]); buffers handed to the kernel are 4 KiB aligned (a write's
//!   payload is copied into an aligned buffer only if it is not aligned already; reads land in
//!   an aligned buffer that becomes the reply without another copy).
//! - FUA is `pwritev2(RWF_DSYNC)`; Flush is `fdatasync`; Discard punches a hole and
//!   write-zeroes zeroes a range (`fallocate`), falling back to writing zeros.
//! - A job keeps its device open (`Arc`) until the kernel returned its IO, so a completion that
//!   arrives after a detach can never touch a reused descriptor.

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use rustix::fs::FallocateFlags;
use rustix::io::ReadWriteFlags;
use tokio::sync::mpsc::UnboundedSender;
use udrbd_core::{DiskArea, DiskCompletion, DiskError, DiskOp, DiskOpKind};

use crate::meta_io::{AlignedBuf, IO_ALIGN, MetaDevice};

/// The open devices of one attach.
pub struct Backing {
    /// The backing (data) device.
    pub data: MetaDevice,
    /// The meta-data device, if it is not the backing device (external meta-data).
    pub meta: Option<MetaDevice>,
    /// A device's file system may block a submission that asked not to block (FUSE, NFS):
    /// io_uring hands each of its operations to a worker thread (IOSQE_ASYNC), so that the
    /// resource loop never waits for the device. A frozen nbdfuse disk blocked the loop in
    /// the kernel's fuse_get_req once 12 requests were in flight (FUSE's max_background).
    pub submit_async: bool,
}

impl Backing {
    /// Whether every device bypasses the page cache (O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.data.is_direct() && self.meta.as_ref().is_none_or(MetaDevice::is_direct)
    }

    /// The device an operation on `area` goes to.
    pub fn device_for(&self, area: DiskArea) -> &MetaDevice {
        match (area, &self.meta) {
            (DiskArea::Data, _) | (_, None) => &self.data,
            (_, Some(meta)) => meta,
        }
    }
}

struct Job {
    op: DiskOp,
    backing: Arc<Backing>,
    done: UnboundedSender<DiskCompletion>,
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    closed: bool,
}

/// A pool of IO threads.
pub struct IoPool {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` IO threads named after `name`.
    pub fn new(name: &str, threads: usize) -> IoPool {
        let queue: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        let threads = (0..threads)
            .map(|i| {
                let q = queue.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-io{i}"))
                    .spawn(move || worker(&q))
                    .expect("spawn an IO thread")
            })
            .collect();
        IoPool { queue, threads }
    }

    /// Queues `op` on `backing`; its completion is sent to `done`.
    pub fn submit(&self, op: DiskOp, backing: Arc<Backing>, done: UnboundedSender<DiskCompletion>) {
        let (lock, cond) = &*self.queue;
        lock.lock()
            .expect("IO queue")
            .jobs
            .push_back(Job { op, backing, done });
        cond.notify_one();
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        let (lock, cond) = &*self.queue;
        lock.lock().expect("IO queue").closed = true;
        cond.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(queue: &(Mutex<Queue>, Condvar)) {
    let (lock, cond) = queue;
    loop {
        let job = {
            let mut q = lock.lock().expect("IO queue");
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = cond.wait(q).expect("IO queue");
            }
        };
        let Job { op, backing, done } = job;
        let result = execute(backing.device_for(op.area), &op);
        // The devices close once the last operation of a detach returned: this thread's
        // reference goes before the engine hears of it, or a `down` could return (and the
        // next opener find the device locked) while it is still open here.
        drop(backing);
        // The engine may be gone (shutdown): nothing to tell then.
        let _ = done.send(DiskCompletion { id: op.id, result });
    }
}

fn errno(e: std::io::Error) -> DiskError {
    DiskError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Executes one operation synchronously.
pub fn execute(device: &MetaDevice, op: &DiskOp) -> Result<Option<Bytes>, DiskError> {
    let file = device.file();
    match &op.kind {
        DiskOpKind::Read { len } => read(file, op.offset, *len as usize).map(Some),
        DiskOpKind::Write { data, fua } => write(file, op.offset, data, *fua).map(|()| None),
        DiskOpKind::Flush => file.sync_data().map(|()| None).map_err(errno),
        DiskOpKind::Discard { len } => fallocate_or_zero(
            file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            op.offset,
            *len,
        ),
        DiskOpKind::WriteZeroes { len } => fallocate_or_zero(
            file,
            FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            op.offset,
            *len,
        ),
        DiskOpKind::Capacity => device
            .current_size_bytes()
            .map(|size| Some(Bytes::copy_from_slice(&size.to_le_bytes())))
            .map_err(errno),
    }
}

fn read(file: &File, offset: u64, len: usize) -> Result<Bytes, DiskError> {
    let mut storage = vec![0u8; len + IO_ALIGN];
    let start = storage.as_ptr().align_offset(IO_ALIGN);
    let buf = &mut storage[start..start + len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(DiskError { errno: libc::EIO }),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(Bytes::from(storage).slice(start..start + len))
}

fn write(file: &File, offset: u64, data: &Bytes, fua: bool) -> Result<(), DiskError> {
    let aligned;
    let bytes: &[u8] = if (data.as_ptr() as usize).is_multiple_of(IO_ALIGN) {
        data
    } else {
        aligned = AlignedBuf::from_slice(data);
        &aligned[..data.len()]
    };
    let flags = if fua {
        ReadWriteFlags::DSYNC
    } else {
        ReadWriteFlags::empty()
    };
    let mut done = 0;
    while done < bytes.len() {
        let slice = [IoSlice::new(&bytes[done..])];
        match rustix::io::pwritev2(file, &slice, offset + done as u64, flags) {
            Ok(0) => return Err(DiskError { errno: libc::EIO }),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(DiskError {
                    errno: e.raw_os_error(),
                });
            }
        }
    }
    Ok(())
}

fn fallocate_or_zero(
    file: &File,
    mode: FallocateFlags,
    offset: u64,
    len: u64,
) -> Result<Option<Bytes>, DiskError> {
    match rustix::fs::fallocate(file, mode, offset, len) {
        Ok(()) => Ok(None),
        Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
            // No hole punching here: write zeros instead.
            let chunk = AlignedBuf::zeroed((1 << 20).min(len as usize).next_multiple_of(512));
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(chunk.len() as u64) as usize;
                file.write_all_at(&chunk[..n], offset + done)
                    .map_err(errno)?;
                done += n as u64;
            }
            Ok(None)
        }
        Err(e) => Err(DiskError {
            errno: e.raw_os_error(),
        }),
    }
}
