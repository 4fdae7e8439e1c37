//! Guards for the kernel and user-space plumbing the filesystem and power-cut tests stack under
//! and above udrbd: nbdkit serving a file, nbdfuse exposing an NBD export as a file, loop
//! devices and mounts. Each guard undoes what it set up when dropped (also when a test panics);
//! the explicit `close`/`stop` methods do the same but fail the test if undoing fails.
#![allow(dead_code)]

pub mod faulty_disk;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd`; returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("{cmd:?}: {e}")),
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        // A FUSE mount whose server died answers ENOTCONN: still a mount point.
        return std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&*dir.to_string_lossy()));
    };
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*canon.to_string_lossy()))
}

/// Waits up to `timeout` for `child` to exit; kills it (SIGKILL) if it does not.
/// Returns whether it exited by itself.
fn reap(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nbdfuse MNT/disk URI`: the NBD export as the regular file `MNT/disk`.
pub struct Nbdfuse {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Nbdfuse {
    /// Mounts `uri` on `mnt` (created if missing) and waits until `mnt/disk` exists.
    pub fn start(mnt: &Path, uri: &str) -> Nbdfuse {
        std::fs::create_dir_all(mnt).unwrap();
        let log = mnt.with_extension("nbdfuse.log");
        let child = Command::new("nbdfuse")
            .arg(mnt.join("disk"))
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("spawn nbdfuse (apt-get install libnbd-bin fuse3)");
        let mut f = Nbdfuse {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(is_mountpoint(mnt) && mnt.join("disk").exists()) {
            if let Some(st) = f.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nbdfuse exited ({st}): {}", f.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "nbdfuse did not mount: {}",
                f.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        f
    }

    /// The file that is the export.
    pub fn file(&self) -> PathBuf {
        self.mnt.join("disk")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `fusermount3 -u` and waits for nbdfuse to exit; fails the test if either fails.
    pub fn close(mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        // A loop device detached just now may still hold the file for a moment.
        while is_mountpoint(&self.mnt) {
            let (ok, out) = run(Command::new("fusermount3").arg("-u").arg(&self.mnt));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fusermount3 -u {}: {out}",
                self.mnt.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = self.child.take().unwrap();
        assert!(
            reap(&mut child, Duration::from_secs(10)),
            "nbdfuse did not exit after the unmount: {}",
            self.log_text()
        );
    }

    /// Unmounts without waiting for the FUSE server (for a server that is dead or stuck):
    /// `fusermount3 -u`, else `umount -l`; then reaps nbdfuse (killing it if needed).
    pub fn force_close(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        if is_mountpoint(&self.mnt) {
            let (ok, _) = run(Command::new("fusermount3").arg("-u").arg(&self.mnt));
            if !ok {
                let (ok, _) = run(Command::new("fusermount3").arg("-uz").arg(&self.mnt));
                if !ok {
                    let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            reap(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for Nbdfuse {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A loop device on a file (`losetup -f --show FILE`).
pub struct LoopDev {
    dev: Option<PathBuf>,
}

impl LoopDev {
    /// Attaches `file` to a free loop device.
    pub fn attach(file: &Path) -> LoopDev {
        let (ok, out) = run(Command::new("losetup").args(["-f", "--show"]).arg(file));
        assert!(ok, "losetup -f --show {}: {out}", file.display());
        LoopDev {
            dev: Some(PathBuf::from(out.trim())),
        }
    }

    /// The device node, e.g. /dev/loop3.
    pub fn dev(&self) -> &Path {
        self.dev.as_deref().unwrap()
    }

    fn backing_gone(dev: &Path) -> bool {
        let name = dev.file_name().unwrap().to_string_lossy().into_owned();
        !Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists()
    }

    /// `losetup -d` and waits until the kernel has let go of the backing file.
    pub fn detach(mut self) {
        let dev = self.dev.take().unwrap();
        let (ok, out) = run(Command::new("losetup").arg("-d").arg(&dev));
        assert!(ok, "losetup -d {}: {out}", dev.display());
        wait_until(Duration::from_secs(10), "the loop device to detach", || {
            Self::backing_gone(&dev)
        });
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !Self::backing_gone(&dev) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A mounted file system.
pub struct Mount {
    dir: Option<PathBuf>,
}

impl Mount {
    /// `mount DEV DIR` (DIR is created if missing).
    pub fn new(dev: &Path, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let (ok, out) = run(Command::new("mount").arg(dev).arg(dir));
        assert!(ok, "mount {} {}: {out}", dev.display(), dir.display());
        Mount {
            dir: Some(dir.to_path_buf()),
        }
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap()
    }

    /// `umount DIR`; fails the test if it fails.
    pub fn unmount(mut self) {
        let dir = self.dir.take().unwrap();
        let (ok, out) = run(Command::new("umount").arg(&dir));
        if !ok {
            let _ = run(Command::new("umount").arg("-l").arg(&dir));
            panic!("umount {}: {out}", dir.display());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let (ok, _) = run(Command::new("umount").arg(&dir));
            if !ok {
                let _ = run(Command::new("umount").arg("-l").arg(&dir));
            }
        }
    }
}

/// `nbdkit -f --unix SOCK --filter=cache file FILE cache=writeback`: a disk whose writes stay
/// in nbdkit until a flush or FUA, so SIGKILL of nbdkit is a power cut.
pub struct Nbdkit {
    child: Option<Child>,
    sock: PathBuf,
    log: PathBuf,
}

impl Nbdkit {
    /// Serves `file` on `sock` with the writeback cache (its cache file lives in `tmp`).
    pub fn start_writeback_cache(file: &Path, sock: &Path, tmp: &Path) -> Nbdkit {
        let _ = std::fs::remove_file(sock);
        let log = sock.with_extension("nbdkit.log");
        let child = Command::new("nbdkit")
            .arg("-f")
            .arg("--unix")
            .arg(sock)
            .args(["--filter=cache", "file"])
            .arg(file)
            .arg("cache=writeback")
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("spawn nbdkit (apt-get install nbdkit)");
        let mut k = Nbdkit {
            child: Some(child),
            sock: sock.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            if let Some(st) = k.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nbdkit exited ({st}): {}",
                    std::fs::read_to_string(&k.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "nbdkit did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        k
    }

    /// The NBD URI of the served file.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    /// SIGKILL and reap: the power cut. Unflushed writes are gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sha256sum FILE`, the hex digest.
pub fn sha256(file: &Path) -> String {
    let (ok, out) = run(Command::new("sha256sum").arg(file));
    assert!(ok, "sha256sum {}: {out}", file.display());
    out.split_whitespace().next().unwrap().to_owned()
}

/// `n` bytes from /dev/urandom.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}
