//! A backing disk that fails on command: a regular image file served by nbdkit through the
//! Python plugin `range_faults.py` under nbdkit's pause filter, exposed as a regular file by
//! nbdfuse. udrbd uses [`FaultyDisk::path`] as its backing disk (`disk PATH;`, internal
//! meta-data works: the image can be prepared with `create-md` before or through the path).
//!
//! ```text
//!   udrbd ──O_DIRECT/io_uring──▶ MNT/disk (FUSE) ──▶ nbdfuse ──NBD──▶ nbdkit
//!        --filter=pause (pause-control=pause.sock) ──▶ python range_faults.py file=IMAGE
//!        faults=faults.json log=requests.log
//! ```
//!
//! Faults (all at runtime; `faults.json` is replaced atomically and the plugin reads it on
//! every request, so a request that reaches nbdkit after the control method returned sees the
//! new faults):
//! - [`FaultyDisk::fail_reads`] / [`FaultyDisk::fail_writes`]: every read (every write,
//!   write-zeroes, trim and flush) returns EIO.
//! - [`FaultyDisk::fail_read_range`] / [`FaultyDisk::fail_write_range`]: reads (writes,
//!   write-zeroes, trims) overlapping a byte range return EIO; ranges accumulate.
//! - [`FaultyDisk::clear_faults`] heals all of the above (not a pause).
//! - [`FaultyDisk::pause`]: `p` to the pause filter's control socket, returns once it answered
//!   `P` (every request received before has completed); later requests hang inside nbdkit, so
//!   the process doing the IO hangs in the kernel (FUSE) until [`FaultyDisk::resume`] (`r`,
//!   answer `R`).
//!
//! A failed request changes nothing on the image. Every request is logged
//! ([`FaultyDisk::requests`]), so a test can see which offsets udrbd wrote and which requests
//! were failed. FUSE has no FUA: udrbd's FUA write (`pwritev2(RWF_DSYNC)`) reaches nbdkit as a
//! write followed by a flush, and its `fdatasync` as a flush. Each request costs ~0.2 ms
//! (FUSE + nbdfuse + Python; 4 KiB random writes ~5k IOPS at queue depth 1, ~8k at 16). [`internal_md_areas`] gives the byte ranges of
//! internal meta-data (superblock, activity log, bitmap) for an image size.
//!
//! The page cache: udrbd opens the file with O_DIRECT (FUSE accepts it), so its reads and
//! writes reach nbdkit when udrbd issues them, and a pause makes them hang. Anything else that
//! opens [`FaultyDisk::path`] without O_DIRECT (e.g. `std::fs::read`) may be served from, or
//! absorbed by, the page cache: use [`FaultyDisk::read_direct`] / [`FaultyDisk::write_direct`]
//! (or [`pread_direct`] / [`pwrite_direct`]), or read the image file itself once the fixture is
//! gone.
//!
//! Cleanup. A process stuck in IO on a paused FUSE file cannot be killed (SIGKILL does not end
//! a FUSE request that the server has already taken; `wait()` on such a process blocks), so a
//! paused disk must never be left behind:
//! - Dropping a `FaultyDisk` (also during a panic) resumes the disk, waits up to 2 s for the
//!   FUSE requests still waiting to drain; if some are still waiting (or the resume got no
//!   answer, e.g. nbdkit is frozen), it aborts the FUSE connection
//!   (`echo 1 > /sys/fs/fuse/connections/N/abort`, which fails the stuck IO; [`start`] mounts
//!   fusectl on /sys/fs/fuse/connections if it is not mounted, and leaves it mounted), then
//!   unmounts (`fusermount3 -u`, lazily if the file is still open) and reaps nbdfuse (SIGKILL
//!   after 5 s) and SIGKILLs nbdkit.
//! - A panic hook (installed once per test binary) resumes, before unwinding starts, every
//!   disk the panicking thread paused: a daemon dropped (killed and waited for) before the
//!   fixture in the unwinding does not hang in its stuck IO.
//! - nbdkit runs under `setpriv --pdeathsig KILL`: if the test process dies (SIGKILL, a
//!   timeout), nbdkit dies with it, nbdfuse fails the outstanding requests and exits, nothing
//!   stays stuck; at worst a stale mount (ENOTCONN) is left in the test's directory
//!   (`fusermount3 -u` it). (`nbdkit --exit-with-parent` is no good: it sends SIGTERM, and
//!   nbdkit does not finish its shutdown while a request hangs in the pause filter.) The
//!   "parent" is the thread that called [`start`]: create the fixture on the thread that owns
//!   it for the whole test (normally the test's own thread).
//! - Declare the fixture before the daemon that uses it (locals drop in reverse order): the
//!   daemon is gone before the unmount. The other order works too, but the unmount is lazy and
//!   nbdfuse is killed after 5 s (the daemon's later IO then fails with ENOTCONN).
//!
//! [`start`]: FaultyDisk::start

use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use super::{Nbdfuse, Nbdkit, run};

/// The nbdkit Python plugin, written next to the fixture's sockets at start.
const PLUGIN: &str = include_str!("range_faults.py");

/// How long [`FaultyDisk::pause`] and [`FaultyDisk::resume`] wait for the filter's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long cleanup waits for the answer to its resume.
const DROP_RESUME_TIMEOUT: Duration = Duration::from_secs(2);
/// How long cleanup waits, after resuming, for the FUSE requests in flight to drain.
const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The faults currently configured (mirrors `faults.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every read fails.
    pub fail_read: bool,
    /// Every write, write-zeroes, trim and flush fails.
    pub fail_write: bool,
    /// Reads overlapping one of these byte ranges fail.
    pub read_ranges: Vec<Range<u64>>,
    /// Writes, write-zeroes and trims overlapping one of these byte ranges fail.
    pub write_ranges: Vec<Range<u64>>,
}

/// One request nbdkit's plugin saw (a line of `requests.log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `pread`, `pwrite`, `zero`, `trim` or `flush`.
    pub op: String,
    /// Byte offset on the image (0 for a flush).
    pub offset: u64,
    /// Length in bytes (0 for a flush).
    pub len: u64,
    /// Whether it succeeded (false: the fixture failed it with EIO).
    pub ok: bool,
    /// Whether it carried FUA.
    pub fua: bool,
}

impl Request {
    /// The byte range it covered.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len
    }

    /// Whether it overlaps `r`.
    pub fn overlaps(&self, r: &Range<u64>) -> bool {
        self.offset < r.end && r.start < self.offset + self.len
    }

    /// Whether it modifies the disk (pwrite, zero or trim).
    pub fn is_write(&self) -> bool {
        matches!(self.op.as_str(), "pwrite" | "zero" | "trim")
    }
}

/// A process that has the fixture's file open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opener {
    /// Its process id.
    pub pid: u32,
    /// Whether that descriptor has O_DIRECT.
    pub direct: bool,
}

/// A file-backed disk that fails or freezes on command. See the module documentation.
pub struct FaultyDisk {
    id: u64,
    /// nbdfuse (dropped by [`FaultyDisk::teardown`]).
    fuse: Option<Nbdfuse>,
    /// nbdkit (SIGKILLed by [`FaultyDisk::teardown`]).
    kit: Option<Nbdkit>,
    kit_pid: u32,
    image: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    pause_sock: PathBuf,
    faults_file: PathBuf,
    requests_log: PathBuf,
    /// The FUSE connection's number under /sys/fs/fuse/connections.
    conn: Option<u32>,
    faults: Mutex<Faults>,
    paused: AtomicBool,
}

impl FaultyDisk {
    /// Serves `image` (a regular file) and exposes it as the file [`FaultyDisk::path`]. The
    /// fixture's sockets, logs and mount point live in `DIR/IMAGE_NAME.faulty/` (keep `dir`
    /// short: Unix socket paths are limited to 107 bytes). No faults, not paused.
    pub fn start(dir: &Path, image: &Path) -> FaultyDisk {
        let image = image
            .canonicalize()
            .unwrap_or_else(|e| panic!("faulty disk image {}: {e}", image.display()));
        let name = image.file_name().unwrap().to_string_lossy().into_owned();
        let work = dir.join(format!("{name}.faulty"));
        std::fs::create_dir_all(&work).unwrap();
        let work = work.canonicalize().unwrap();
        let plugin = work.join("range_faults.py");
        std::fs::write(&plugin, PLUGIN).unwrap();
        let sock = work.join("nbd.sock");
        let pause_sock = work.join("pause.sock");
        let faults_file = work.join("faults.json");
        let requests_log = work.join("requests.log");
        for f in [&sock, &pause_sock, &faults_file, &requests_log] {
            let _ = std::fs::remove_file(f);
        }
        let mnt = work.join("mnt");
        let log = work.join("nbdkit.log");
        // SIGKILL when the spawning thread dies (`nbdkit --exit-with-parent` sends SIGTERM,
        // which nbdkit does not act on while a request hangs in the pause filter).
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nbdkit", "-f", "--unix"])
            .arg(&sock)
            .args(["--filter=pause", "python"])
            .arg(&plugin)
            .arg(format!("file={}", image.display()))
            .arg(format!("faults={}", faults_file.display()))
            .arg(format!("log={}", requests_log.display()))
            .arg(format!("pause-control={}", pause_sock.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("spawn nbdkit (apt-get install nbdkit nbdkit-plugin-python)");
        let kit_pid = child.id();
        let mut kit = Nbdkit {
            child: Some(child),
            sock: sock.clone(),
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() || !pause_sock.exists() {
            if let Some(st) = kit.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nbdkit exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nbdkit did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // From here on, the guards clean up if anything below panics.
        let fuse = Nbdfuse::start(&mnt, &kit.uri());
        ensure_fusectl();
        let conn = fuse_connection(&mnt);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let disk = FaultyDisk {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fuse: Some(fuse),
            kit: Some(kit),
            kit_pid,
            image,
            work,
            mnt,
            pause_sock,
            faults_file,
            requests_log,
            conn,
            faults: Mutex::new(Faults::default()),
            paused: AtomicBool::new(false),
        };
        assert!(
            disk.conn.is_some(),
            "no FUSE connection found for {} in /proc/self/mountinfo",
            disk.mnt.display()
        );
        disk.write_faults(&Faults::default());
        disk
    }

    /// The file to use as udrbd's backing disk.
    pub fn path(&self) -> PathBuf {
        self.mnt.join("disk")
    }

    /// The image file nbdkit serves. nbdkit writes it through the host's page cache, so
    /// reading it directly shows every write that reached the disk (failed ones did not).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The FUSE mount point (the directory holding [`FaultyDisk::path`]).
    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    /// The fixture's working directory (sockets, logs, faults.json).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// nbdkit's process id.
    pub fn nbdkit_pid(&self) -> u32 {
        self.kit_pid
    }

    /// nbdfuse's process id (0 once it is gone).
    pub fn nbdfuse_pid(&self) -> u32 {
        self.fuse
            .as_ref()
            .and_then(|f| f.child.as_ref())
            .map_or(0, std::process::Child::id)
    }

    /// The processes that have [`FaultyDisk::path`] open, and whether with O_DIRECT (from
    /// /proc/PID/fd and /proc/PID/fdinfo). udrbd must show up with `direct: true`, else its IO
    /// may be absorbed by the page cache and a pause would not stop it.
    pub fn openers(&self) -> Vec<Opener> {
        let target = self.path();
        let mut found = Vec::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return found;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).ok().as_deref() != Some(target.as_path()) {
                    continue;
                }
                let info = p.path().join("fdinfo").join(fd.file_name());
                let flags = std::fs::read_to_string(info)
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                    .unwrap_or(0);
                found.push(Opener {
                    pid,
                    direct: flags & libc::O_DIRECT as u32 != 0,
                });
            }
        }
        found
    }

    /// nbdkit's log (plugin tracebacks of failed requests end up here).
    pub fn nbdkit_log(&self) -> String {
        std::fs::read_to_string(self.work.join("nbdkit.log")).unwrap_or_default()
    }

    /// The FUSE connection number (the directory under /sys/fs/fuse/connections).
    pub fn fuse_connection(&self) -> u32 {
        self.conn.unwrap()
    }

    /// FUSE requests of this mount not answered yet (/sys/fs/fuse/connections/N/waiting):
    /// with the disk paused, IO stuck in the disk shows up here.
    pub fn fuse_waiting(&self) -> u64 {
        fuse_waiting(self.fuse_connection()).unwrap_or(0)
    }

    /// Aborts the FUSE connection: every request in flight and every later one fails
    /// (ECONNABORTED / ENOTCONN), as if the disk vanished. The fixture still cleans up on drop.
    pub fn abort_fuse(&self) {
        abort_fuse(self.fuse_connection());
    }

    /// Makes every later read fail with EIO (`false`: reads work, except failed ranges).
    pub fn fail_reads(&self, on: bool) {
        self.update(|f| f.fail_read = on);
    }

    /// Makes every later write, write-zeroes, trim and flush fail with EIO (`false`: they work,
    /// except failed ranges). A FUA write through FUSE is a write and a flush: it fails too.
    pub fn fail_writes(&self, on: bool) {
        self.update(|f| f.fail_write = on);
    }

    /// Adds a failed read range: later reads overlapping `[offset, offset + len)` fail with EIO.
    pub fn fail_read_range(&self, offset: u64, len: u64) {
        self.update(|f| f.read_ranges.push(offset..offset + len));
    }

    /// Adds a failed write range: later writes, write-zeroes and trims overlapping
    /// `[offset, offset + len)` fail with EIO (flushes do not).
    pub fn fail_write_range(&self, offset: u64, len: u64) {
        self.update(|f| f.write_ranges.push(offset..offset + len));
    }

    /// Removes every fault (reads and writes work again). Does not resume a paused disk.
    pub fn clear_faults(&self) {
        self.update(|f| *f = Faults::default());
    }

    /// The faults currently configured.
    pub fn faults(&self) -> Faults {
        self.faults.lock().unwrap().clone()
    }

    /// Freezes the disk: returns once every request nbdkit received before has completed;
    /// later requests hang until [`FaultyDisk::resume`].
    pub fn pause(&self) {
        // Registered first: a panic from here on resumes it.
        register_paused(self.id, &self.pause_sock);
        self.paused.store(true, Ordering::SeqCst);
        if let Err(e) = control(&self.pause_sock, b'p', CONTROL_TIMEOUT) {
            panic!("pause: {e}\n{}", self.nbdkit_log());
        }
    }

    /// Unfreezes the disk: the hung requests proceed.
    pub fn resume(&self) {
        if let Err(e) = control(&self.pause_sock, b'r', CONTROL_TIMEOUT) {
            panic!("resume: {e}\n{}", self.nbdkit_log());
        }
        self.paused.store(false, Ordering::SeqCst);
        unregister_paused(self.id);
    }

    /// Whether the disk is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Every request the plugin saw since the start (or [`FaultyDisk::clear_requests`]).
    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.requests_log).unwrap_or_default();
        // Only whole lines: the plugin may be appending one right now.
        text.split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let parsed = (f.len() >= 4 && matches!(f[3], "ok" | "EIO"))
                    .then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?)))
                    .flatten();
                let Some((offset, len)) = parsed else {
                    panic!("bad line in {}: {l:?}", self.requests_log.display());
                };
                Request {
                    op: f[0].to_owned(),
                    offset,
                    len,
                    ok: f[3] == "ok",
                    fua: f.get(4) == Some(&"fua"),
                }
            })
            .collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        // The plugin appends (O_APPEND): truncating is safe while it runs.
        std::fs::File::options()
            .write(true)
            .open(&self.requests_log)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    /// Reads `len` bytes at `offset` of [`FaultyDisk::path`] with O_DIRECT (offset and len
    /// multiples of 4 KiB): the request reaches nbdkit, never the page cache.
    pub fn read_direct(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        pread_direct(&self.path(), offset, len)
    }

    /// Writes `data` at `offset` of [`FaultyDisk::path`] with O_DIRECT (offset and length
    /// multiples of 4 KiB).
    pub fn write_direct(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        pwrite_direct(&self.path(), offset, data)
    }

    /// Cleans up like drop, but fails the test if the FUSE requests do not drain after the
    /// resume or the unmount fails (e.g. the file is still open).
    pub fn close(mut self) {
        if self.is_paused() {
            self.resume();
        }
        let conn = self.fuse_connection();
        let drained = wait_for(DROP_DRAIN_TIMEOUT, || fuse_waiting(conn).unwrap_or(0) == 0);
        if !drained {
            let n = fuse_waiting(conn).unwrap_or(0);
            self.teardown();
            panic!("{n} FUSE requests still waiting after the resume (aborted)");
        }
        self.fuse.take().unwrap().close();
        // Unmounted: the connection number may already belong to another mount.
        self.conn = None;
        self.teardown();
    }

    fn update(&self, change: impl FnOnce(&mut Faults)) {
        let mut f = self.faults.lock().unwrap();
        change(&mut f);
        self.write_faults(&f);
    }

    /// Replaces faults.json atomically (the plugin never sees a half-written file).
    fn write_faults(&self, f: &Faults) {
        let ranges = |rs: &[Range<u64>]| -> Vec<[u64; 2]> {
            rs.iter().map(|r| [r.start, r.end - r.start]).collect()
        };
        let json = serde_json::json!({
            "fail_read": f.fail_read,
            "fail_write": f.fail_write,
            "read_ranges": ranges(&f.read_ranges),
            "write_ranges": ranges(&f.write_ranges),
        });
        let tmp = self.faults_file.with_extension("json.tmp");
        std::fs::write(&tmp, json.to_string()).unwrap();
        std::fs::rename(&tmp, &self.faults_file).unwrap();
    }

    /// Resume, drain or abort, unmount, kill: never panics, never hangs for long. Uses the
    /// connection number only while the mount exists (numbers are reused).
    fn teardown(&mut self) {
        let Some(conn) = self.conn else {
            self.fuse.take();
            self.kit.take();
            return;
        };
        let _ = std::fs::remove_file(&self.faults_file);
        let resumed =
            self.kit.is_none() || control(&self.pause_sock, b'r', DROP_RESUME_TIMEOUT).is_ok();
        self.paused.store(false, Ordering::SeqCst);
        unregister_paused(self.id);
        let drained =
            resumed && wait_for(DROP_DRAIN_TIMEOUT, || fuse_waiting(conn).unwrap_or(0) == 0);
        if !drained {
            abort_fuse(conn);
            // nbdkit is of no use any more, and nbdfuse may be waiting for it.
            self.kit.take();
        }
        if let Some(fuse) = self.fuse.take() {
            fuse.force_close();
        }
        self.kit.take();
        self.conn = None;
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        self.teardown();
    }
}

// ------------------------------------------------------------------------------------------
// Internal meta-data offsets
// ------------------------------------------------------------------------------------------

/// Where internal meta-data (default activity log: 1 stripe of 32 KiB) lives on a backing
/// disk of a given size, in bytes. Low to high: data, bitmap, activity log, superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdAreas {
    /// The data area: `0..data_bytes` (the device size udrbd exports).
    pub data_bytes: u64,
    /// The bitmap (1 bit per 4 KiB of data, written in 4 KiB blocks).
    pub bitmap: Range<u64>,
    /// The activity log ring (4 KiB transaction blocks).
    pub al: Range<u64>,
    /// The superblock (4 KiB; the last whole 4 KiB block of the disk).
    pub superblock: Range<u64>,
}

impl MdAreas {
    /// The 4 KiB bitmap block that holds the bit of the data byte `data_offset` (bit
    /// `data_offset / 4096`, little-endian 64-bit words; one block covers 128 MiB of data).
    pub fn bitmap_block_of(&self, data_offset: u64) -> Range<u64> {
        assert!(
            data_offset < self.data_bytes,
            "{data_offset} is not in the data area"
        );
        let byte = self.bitmap.start + data_offset / 4096 / 8;
        let block = byte - (byte - self.bitmap.start) % 4096;
        block..block + 4096
    }

    /// The 4 KiB activity-log block of ring position `position` (transaction number modulo
    /// the ring size of 8).
    pub fn al_block(&self, position: u64) -> Range<u64> {
        let at = self.al.start + (position % ((self.al.end - self.al.start) / 4096)) * 4096;
        at..at + 4096
    }
}

/// The internal meta-data areas of a backing disk of `image_bytes` (as `create-md` lays them
/// out with the default activity log), from `udrbd_meta::Layout`.
pub fn internal_md_areas(image_bytes: u64) -> MdAreas {
    let l = udrbd_meta::Layout::internal(image_bytes, udrbd_meta::AlGeometry::DEFAULT)
        .unwrap_or_else(|e| panic!("internal meta-data on {image_bytes} bytes: {e}"));
    let sb = l.superblock_byte();
    let al = l.al_byte();
    let bm = l.bm_byte();
    MdAreas {
        data_bytes: l.max_data_sect * 512,
        bitmap: bm..bm + l.bm_area_bytes(),
        al: al..sb,
        superblock: sb..sb + 4096,
    }
}

// ------------------------------------------------------------------------------------------
// O_DIRECT IO
// ------------------------------------------------------------------------------------------

/// A zeroed `len`-byte window at a 4 KiB aligned address inside a vector: (vector, start).
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + 4096];
    let start = (4096 - (v.as_ptr() as usize) % 4096) % 4096;
    (v, start)
}

fn open_direct(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Reads `len` bytes at `offset` of `path` with O_DIRECT (4 KiB aligned offset and length).
pub fn pread_direct(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = open_direct(path, false)?;
    let (mut v, start) = aligned(len);
    f.read_exact_at(&mut v[start..start + len], offset)?;
    Ok(v[start..start + len].to_vec())
}

/// Writes `data` at `offset` of `path` with O_DIRECT (4 KiB aligned offset and length).
pub fn pwrite_direct(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let f = open_direct(path, true)?;
    let (mut v, start) = aligned(data.len());
    v[start..start + data.len()].copy_from_slice(data);
    f.write_all_at(&v[start..start + data.len()], offset)
}

// ------------------------------------------------------------------------------------------
// Pause control, FUSE connections, the panic hook
// ------------------------------------------------------------------------------------------

/// Sends `cmd` (`p` or `r`) to the pause filter and waits for its upper-case answer.
fn control(sock: &Path, cmd: u8, timeout: Duration) -> Result<(), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s.write_all(&[cmd])
        .map_err(|e| format!("send {:?}: {e}", cmd as char))?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer)
        .map_err(|e| format!("no answer to {:?} within {timeout:?}: {e}", cmd as char))?;
    if answer[0] != cmd.to_ascii_uppercase() {
        return Err(format!(
            "answer {:?} to {:?}",
            answer[0] as char, cmd as char
        ));
    }
    Ok(())
}

/// Polls `cond` every 20 ms for up to `timeout`; returns whether it held.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Mounts the FUSE control file system unless it is mounted.
fn ensure_fusectl() {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("fusectl"));
    if !mounted {
        let (ok, out) = run(Command::new("mount").args(["-t", "fusectl", "none", FUSECTL]));
        // Another test may have mounted it meanwhile.
        assert!(
            ok || Path::new(FUSECTL)
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some()),
            "mount -t fusectl none {FUSECTL}: {out}"
        );
    }
}

/// The FUSE connection number of the mount on `mnt`: the minor of its device number in
/// /proc/self/mountinfo (no syscall into the FUSE file system, which may be stuck).
fn fuse_connection(mnt: &Path) -> Option<u32> {
    let mnt = mnt.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        // The last mount on that directory is the visible one.
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.get(4) != Some(&&*mnt) {
                return None;
            }
            // An anonymous device (major 0): the kernel's dev_t is the minor.
            match f[2].split_once(':')? {
                ("0", minor) => minor.parse().ok(),
                _ => None,
            }
        })
}

fn fuse_waiting(conn: u32) -> Option<u64> {
    std::fs::read_to_string(format!("{FUSECTL}/{conn}/waiting"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn abort_fuse(conn: u32) {
    let _ = std::fs::write(format!("{FUSECTL}/{conn}/abort"), "1");
}

/// Paused disks by fixture id: the thread that paused it and its pause socket.
static PAUSED: Mutex<Vec<(u64, ThreadId, PathBuf)>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn paused_list() -> std::sync::MutexGuard<'static, Vec<(u64, ThreadId, PathBuf)>> {
    PAUSED.lock().unwrap_or_else(|e| e.into_inner())
}

fn register_paused(id: u64, sock: &Path) {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            resume_paused_by(std::thread::current().id());
            previous(info);
        }));
    });
    let mut list = paused_list();
    list.retain(|(i, _, _)| *i != id);
    list.push((id, std::thread::current().id(), sock.to_path_buf()));
}

fn unregister_paused(id: u64) {
    paused_list().retain(|(i, _, _)| *i != id);
}

/// The panic hook's part: resumes the disks `thread` paused (they stay registered: the
/// fixture's drop still runs its full cleanup).
fn resume_paused_by(thread: ThreadId) {
    let socks: Vec<PathBuf> = paused_list()
        .iter()
        .filter(|(_, t, _)| *t == thread)
        .map(|(_, _, s)| s.clone())
        .collect();
    for sock in socks {
        let _ = control(&sock, b'r', DROP_RESUME_TIMEOUT);
    }
}
