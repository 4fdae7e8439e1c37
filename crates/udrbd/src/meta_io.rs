//! The IO layer for meta-data: a backing file or block device opened for reading or writing,
//! with aligned, positioned reads and writes.
//!
//! - Block devices are sized with BLKGETSIZE64, regular files with `stat`.
//! - IO uses O_DIRECT where the file system supports it (buffers and offsets are 4 KiB
//!   aligned), and falls back to buffered IO plus `fdatasync` where it does not (tmpfs).
//! - A device opened for writing is locked exclusively (flock; O_EXCL for block devices), a
//!   device opened for reading takes a shared lock, so two writers (two daemons, or a daemon
//!   and `create-md`) cannot share a disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// Alignment of every buffer, offset and length used with O_DIRECT.
pub const IO_ALIGN: usize = 4096;

/// Why a device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The path does not exist.
    #[error("{}: no such file or device", .0.display())]
    NotFound(PathBuf),
    /// A directory, socket, fifo, ...
    #[error("{}: not a regular file or block device ({kind})", .path.display())]
    NotADevice {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Another process holds the device.
    #[error("{}: device is in use by another process (locked)", .0.display())]
    Busy(PathBuf),
    /// An IO error, with the operation and offset.
    #[error("{}: {op} failed at byte {offset}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Byte offset of the operation (0 for open).
        offset: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The device ended before the expected data.
    #[error("{}: unexpected end of device at byte {offset} (device truncated?)", .path.display())]
    ShortRead {
        /// The path.
        path: PathBuf,
        /// Where the read came up short.
        offset: u64,
    },
}

/// Read-only or read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Shared lock, no writes.
    Read,
    /// Exclusive lock.
    Write,
}

/// A 4 KiB aligned heap buffer (for O_DIRECT), without `unsafe`: an over-allocated `Vec`
/// and an aligned window into it.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + IO_ALIGN];
        let start = storage.as_ptr().align_offset(IO_ALIGN);
        assert!(start < IO_ALIGN, "alignment offset");
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// A buffer holding a copy of `data`, zero-padded to a multiple of 4 KiB.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(data.len().next_multiple_of(IO_ALIGN));
        buf[..data.len()].copy_from_slice(data);
        buf
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// An open meta-data (or backing) device.
pub struct MetaDevice {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    direct: bool,
    access: Access,
}

impl MetaDevice {
    /// Opens `path`, sizes it and locks it.
    pub fn open(path: &Path, access: Access) -> Result<MetaDevice, DeviceError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DeviceError::NotFound(path.to_path_buf()),
            _ => io_error(path, "stat", 0, e),
        })?;
        let ft = meta.file_type();
        let block = ft.is_block_device();
        if !block && !ft.is_file() {
            let kind = if ft.is_dir() {
                "a directory"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_fifo() {
                "a fifo"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a file"
            };
            return Err(DeviceError::NotADevice {
                path: path.to_path_buf(),
                kind,
            });
        }
        let (file, direct) = open_file(path, access, block)?;
        lock(&file, path, access)?;
        let size_bytes = if block {
            block_device_size(&file).map_err(|e| io_error(path, "BLKGETSIZE64", 0, e))?
        } else {
            meta.len()
        };
        Ok(MetaDevice {
            file,
            path: path.to_path_buf(),
            size_bytes,
            direct,
            access,
        })
    }

    /// The path it was opened as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The device's size in bytes now (`resize`: it may have grown since it was opened).
    pub fn current_size_bytes(&self) -> std::io::Result<u64> {
        let meta = self.file.metadata()?;
        if meta.file_type().is_block_device() {
            block_device_size(&self.file)
        } else {
            Ok(meta.len())
        }
    }

    /// Whether IO bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The open file (for the data path's IO threads).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads `len` bytes (a multiple of 4 KiB) at `offset` (4 KiB aligned).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<AlignedBuf, DeviceError> {
        let mut buf = AlignedBuf::zeroed(len);
        self.read_into(offset, &mut buf)?;
        Ok(buf)
    }

    /// Reads into an aligned buffer.
    pub fn read_into(&self, offset: u64, buf: &mut AlignedBuf) -> Result<(), DeviceError> {
        debug_assert!(offset.is_multiple_of(IO_ALIGN as u64) && buf.len().is_multiple_of(512));
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    return Err(DeviceError::ShortRead {
                        path: self.path.clone(),
                        offset: at,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.path, "read", at, e)),
            }
        }
        Ok(())
    }

    /// Writes an aligned buffer at `offset` (4 KiB aligned).
    pub fn write_at(&self, offset: u64, buf: &AlignedBuf) -> Result<(), DeviceError> {
        assert_eq!(
            self.access,
            Access::Write,
            "write to a device opened read-only"
        );
        debug_assert!(offset.is_multiple_of(IO_ALIGN as u64) && buf.len().is_multiple_of(512));
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| io_error(&self.path, "write", offset, e))
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> Result<(), DeviceError> {
        self.file
            .sync_data()
            .map_err(|e| io_error(&self.path, "fdatasync", 0, e))
    }
}

fn io_error(path: &Path, op: &'static str, offset: u64, source: io::Error) -> DeviceError {
    DeviceError::Io {
        path: path.to_path_buf(),
        op,
        offset,
        source,
    }
}

fn open_file(path: &Path, access: Access, block: bool) -> Result<(File, bool), DeviceError> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(access == Access::Write);
        let mut flags = 0;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if block && access == Access::Write {
            // For block devices O_EXCL means "not mounted, not held by another opener".
            flags |= libc::O_EXCL;
        }
        o.custom_flags(flags).open(path)
    };
    match open(true) {
        Ok(f) => Ok((f, true)),
        // tmpfs and some FUSE file systems refuse O_DIRECT.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(false)
            .map(|f| (f, false))
            .map_err(|e| open_error(path, e)),
        Err(e) => Err(open_error(path, e)),
    }
}

fn open_error(path: &Path, e: io::Error) -> DeviceError {
    if e.raw_os_error() == Some(libc::EBUSY) {
        DeviceError::Busy(path.to_path_buf())
    } else {
        io_error(path, "open", 0, e)
    }
}

fn lock(file: &File, path: &Path, access: Access) -> Result<(), DeviceError> {
    let op = match access {
        Access::Read => FlockOperation::NonBlockingLockShared,
        Access::Write => FlockOperation::NonBlockingLockExclusive,
    };
    rustix::fs::flock(file, op).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            DeviceError::Busy(path.to_path_buf())
        } else {
            io_error(path, "flock", 0, e.into())
        }
    })
}

/// BLKGETSIZE64: the size of a block device in bytes.
#[allow(unsafe_code)]
fn block_device_size(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live u64;
    // the fd is open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers() {
        for len in [0, 4096, 8192, 1 << 20] {
            let b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
            assert_eq!(b.len(), len);
        }
        let b = AlignedBuf::from_slice(&[1, 2, 3]);
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[..4], &[1, 2, 3, 0]);
    }

    #[test]
    fn open_errors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MetaDevice::open(&dir.path().join("missing"), Access::Read),
            Err(DeviceError::NotFound(_))
        ));
        assert!(matches!(
            MetaDevice::open(dir.path(), Access::Read),
            Err(DeviceError::NotADevice {
                kind: "a directory",
                ..
            })
        ));
        let file = dir.path().join("disk");
        std::fs::write(&file, vec![7u8; 8192]).unwrap();
        let w = MetaDevice::open(&file, Access::Write).unwrap();
        assert!(matches!(
            MetaDevice::open(&file, Access::Write),
            Err(DeviceError::Busy(_))
        ));
        w.write_at(4096, &AlignedBuf::from_slice(&[9; 4096]))
            .unwrap();
        w.sync().unwrap();
        drop(w);
        // Another test of this process may fork a child (a handler) that holds a copy of
        // the descriptor, and with it the lock, until it execs: retry briefly.
        let mut tries = 0;
        let r = loop {
            match MetaDevice::open(&file, Access::Read) {
                Err(DeviceError::Busy(_)) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(r.size_bytes(), 8192);
        assert_eq!(r.read_at(4096, 4096).unwrap()[0], 9);
        assert!(matches!(
            r.read_at(8192, 4096),
            Err(DeviceError::ShortRead { .. })
        ));
    }
}
