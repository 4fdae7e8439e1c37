//! Proves the `FaultyDisk` fixture (tests/blockstack/faulty_disk.rs) that the local-disk
//! failure tests build on: udrbd runs on it with O_DIRECT and its IO reaches nbdkit (and hangs
//! while the disk is paused); whole-disk and range faults fail exactly the requests they should
//! and heal; a paused disk blocks a direct read until resumed; dropping a paused fixture (also
//! with nbdkit frozen) leaves no process, no mount and no stuck reader behind.

mod blockstack;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockstack::faulty_disk::*;
use blockstack::{KillOnDrop, wait_until};
use support::*;

fn require_stack() {
    require_root();
    require_tool("nbdkit", "nbdkit");
    require_tool("nbdfuse", "libnbd-bin");
    require_tool("fusermount3", "fuse3");
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so").exists()
            || Command::new("nbdkit")
                .args(["python", "--version"])
                .output()
                .is_ok_and(|o| o.status.success()),
        "nbdkit's python plugin is missing: apt-get install nbdkit-plugin-python"
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("udrbd-faulty.")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A sparse image of `size` bytes in `dir`.
fn image(dir: &Path, size: u64) -> PathBuf {
    let img = dir.join("disk.img");
    sparse_file(&img, size);
    img
}

fn is_eio(r: &std::io::Result<impl Sized>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

fn process_gone(pid: u32) -> bool {
    // A zombie counts as gone (it holds no file, no mount, no connection).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*dir))
}

fn qemu_io(uri: &str, cmd: &str) -> Command {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri, "-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits up to `timeout` for `child` to exit; its exit status and output, or None.
fn exited_within(child: &mut KillOnDrop, timeout: Duration) -> Option<(bool, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            let mut out = String::new();
            for pipe in [
                child
                    .0
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read>),
                child
                    .0
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read>),
            ]
            .into_iter()
            .flatten()
            {
                let mut p = pipe;
                let _ = p.read_to_string(&mut out);
            }
            return Some((st.success(), out));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// udrbd on the fixture: attach writes the superblock where `internal_md_areas` says, NBD
/// writes and reads work, every descriptor udrbd holds is O_DIRECT, and while the disk is
/// paused an NBD write and an NBD read of an uncached block hang (not absorbed by the page
/// cache) until the resume.
/// A direct read of 4 KiB at `offset` on a thread, returned once it is stuck in the paused
/// disk's FUSE queue: the thread, and where its result arrives.
fn stuck_direct_read(
    disk: &FaultyDisk,
    offset: u64,
) -> (
    std::thread::JoinHandle<()>,
    mpsc::Receiver<std::io::Result<Vec<u8>>>,
) {
    let (tx, rx) = mpsc::channel();
    let path = disk.path();
    let reader = std::thread::spawn(move || {
        let _ = tx.send(pread_direct(&path, offset, 4096));
    });
    wait_until(
        Duration::from_secs(5),
        "the read to be stuck in FUSE",
        || disk.fuse_waiting() >= 1,
    );
    (reader, rx)
}

#[test]
fn udrbd_runs_on_the_faulty_disk_and_its_io_hangs_while_paused() {
    require_stack();
    require_tool("qemu-io", "qemu-utils");
    require_tool("nbdinfo", "libnbd-bin");
    let t0 = Instant::now();
    let tmp = tempdir();
    let dir = tmp.path();
    let size = 64 << 20;
    let img = image(dir, size);
    create_md(&img);
    let areas = internal_md_areas(size);
    // Declared before the daemon: dropped after it.
    let disk = FaultyDisk::start(dir, &img);
    let config = write_config(dir, "r0", &disk.path(), "");
    let d = TestDaemon::start(dir, &config, &[]);

    let openers = disk.openers();
    assert!(!openers.is_empty(), "udrbd does not hold the disk open");
    assert!(
        openers.iter().all(|o| o.direct),
        "udrbd opened the FUSE file without O_DIRECT: {openers:?}"
    );
    let sb_writes: Vec<Request> = disk
        .requests()
        .into_iter()
        .filter(|r| r.is_write() && r.overlaps(&areas.superblock))
        .collect();
    assert!(
        sb_writes.iter().any(|r| r.range() == areas.superblock),
        "attach did not write the superblock at {:?}: {:?}",
        areas.superblock,
        disk.requests()
    );

    d.ok(&["primary", "r0", "--force"]);
    let uri = d.uri("r0");
    let exported = run_ok(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(
        exported.trim().parse::<u64>().unwrap(),
        areas.data_bytes,
        "the export size vs internal_md_areas"
    );
    disk.clear_requests();
    let out = run_ok(&mut qemu_io(&uri, "write -P 0xab 1M 64k"));
    assert!(out.contains("wrote 65536/65536"), "{out}");
    let reqs = disk.requests();
    assert!(
        reqs.iter()
            .any(|r| r.op == "pwrite" && r.overlaps(&((1 << 20)..(1 << 20) + 65536))),
        "the data write did not reach nbdkit: {reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.is_write() && r.overlaps(&areas.al)),
        "no activity-log write in {:?}: {reqs:?}",
        areas.al
    );
    run_ok(&mut qemu_io(&uri, "read -P 0xab 1M 64k"));

    disk.pause();
    let mut writer = KillOnDrop(qemu_io(&uri, "write -P 0xcd 8M 4k").spawn().unwrap());
    let mut reader = KillOnDrop(qemu_io(&uri, "read -P 0 16M 4k").spawn().unwrap());
    // The write (into a cold extent: its activity-log transaction first) and the read are
    // udrbd's IO stuck in the disk.
    wait_until(
        Duration::from_secs(10),
        "udrbd's IO to be stuck in FUSE",
        || disk.fuse_waiting() >= 2,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        writer.0.try_wait().unwrap().is_none(),
        "an NBD write completed while the disk was paused"
    );
    assert!(
        reader.0.try_wait().unwrap().is_none(),
        "an NBD read completed while the disk was paused"
    );
    assert!(disk.fuse_waiting() >= 2);
    disk.resume();
    for (what, child) in [("write", &mut writer), ("read", &mut reader)] {
        let r = exited_within(child, Duration::from_secs(10));
        assert!(
            matches!(r, Some((true, _))),
            "the NBD {what} after the resume: {r:?}\n{}",
            d.log_text()
        );
    }
    run_ok(&mut qemu_io(&uri, "read -P 0xcd 8M 4k"));
    // The data reached the image (read through nbdkit, past any page cache).
    assert_eq!(disk.read_direct(8 << 20, 4096).unwrap(), vec![0xcd; 4096]);
    drop(d);
    drop(disk);
    eprintln!("udrbd on the faulty disk: {:?}", t0.elapsed());
}

/// fail_reads / fail_writes fail every direct read / write with EIO; clear_faults heals.
#[test]
fn whole_disk_faults_fail_direct_io_until_cleared() {
    require_stack();
    let tmp = tempdir();
    let img = image(tmp.path(), 16 << 20);
    let disk = FaultyDisk::start(tmp.path(), &img);
    let block = vec![0x5a; 4096];
    disk.write_direct(4096, &block).unwrap();

    disk.fail_reads(true);
    assert!(
        is_eio(&disk.read_direct(4096, 4096)),
        "read with fail_reads"
    );
    assert!(is_eio(&disk.read_direct(12 << 20, 8192)));
    disk.write_direct(8192, &block).unwrap();
    disk.clear_faults();
    assert_eq!(disk.read_direct(4096, 4096).unwrap(), block);
    assert_eq!(disk.read_direct(8192, 4096).unwrap(), block);

    disk.fail_writes(true);
    assert!(
        is_eio(&disk.write_direct(4096, &[0x11; 4096])),
        "write with fail_writes"
    );
    assert!(is_eio(&disk.write_direct(15 << 20, &[0x11; 4096])));
    // A failed write changes nothing; reads still work.
    assert_eq!(disk.read_direct(4096, 4096).unwrap(), block);
    // fdatasync reaches nbdkit as a flush, which fails too.
    let f = std::fs::File::options()
        .write(true)
        .open(disk.path())
        .unwrap();
    assert!(is_eio(&f.sync_data()), "fdatasync with fail_writes");
    drop(f);
    disk.fail_writes(false);
    disk.write_direct(4096, &[0x22; 4096]).unwrap();
    assert_eq!(disk.read_direct(4096, 4096).unwrap(), vec![0x22; 4096]);

    let failed: Vec<Request> = disk.requests().into_iter().filter(|r| !r.ok).collect();
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert_eq!(failed.iter().filter(|r| r.op == "pread").count(), 2);
    assert_eq!(failed.iter().filter(|r| r.op == "pwrite").count(), 2);
    assert_eq!(failed.iter().filter(|r| r.op == "flush").count(), 1);
    disk.close();
}

/// Range faults fail only the requests that overlap a range, reads and writes separately.
#[test]
fn range_faults_fail_only_overlapping_requests() {
    require_stack();
    let tmp = tempdir();
    let img = image(tmp.path(), 16 << 20);
    let disk = FaultyDisk::start(tmp.path(), &img);
    let block = vec![0x77; 4096];
    for off in [0, 1 << 20, 2 << 20, 3 << 20] {
        disk.write_direct(off, &block).unwrap();
    }

    // One byte inside the block at 1 MiB.
    disk.fail_write_range((1 << 20) + 100, 1);
    assert!(is_eio(&disk.write_direct(1 << 20, &[1; 4096])));
    assert!(
        is_eio(&disk.write_direct((1 << 20) - 4096, &[1; 8192])),
        "a write spanning the range"
    );
    disk.write_direct((1 << 20) - 4096, &[1; 4096]).unwrap();
    disk.write_direct((1 << 20) + 4096, &[1; 4096]).unwrap();
    disk.write_direct(2 << 20, &[2; 4096]).unwrap();
    assert_eq!(
        disk.read_direct(1 << 20, 4096).unwrap(),
        block,
        "reads unaffected"
    );

    // A second range, for reads; the write range stays.
    disk.fail_read_range(3 << 20, 4096);
    assert!(is_eio(&disk.read_direct(3 << 20, 4096)));
    assert!(is_eio(&disk.read_direct((3 << 20) - 4096, 8192)));
    assert_eq!(
        disk.read_direct((3 << 20) + 4096, 4096).unwrap(),
        vec![0; 4096]
    );
    assert_eq!(disk.read_direct(2 << 20, 4096).unwrap(), vec![2; 4096]);
    disk.write_direct(3 << 20, &[3; 4096]).unwrap();
    assert!(is_eio(&disk.write_direct(1 << 20, &[1; 4096])));
    let (read_range, write_range) = (
        (3 << 20)..(3 << 20) + 4096,
        (1 << 20) + 100..(1 << 20) + 101,
    );
    assert_eq!(
        disk.faults(),
        Faults {
            fail_read: false,
            fail_write: false,
            read_ranges: vec![read_range],
            write_ranges: vec![write_range],
        }
    );

    disk.clear_faults();
    disk.write_direct(1 << 20, &[9; 4096]).unwrap();
    assert_eq!(disk.read_direct(1 << 20, 4096).unwrap(), vec![9; 4096]);
    assert_eq!(disk.read_direct(3 << 20, 4096).unwrap(), vec![3; 4096]);
    disk.close();
}

/// A direct read from another thread hangs while the disk is paused and completes on resume.
#[test]
fn pause_hangs_a_direct_read_until_resume() {
    require_stack();
    let tmp = tempdir();
    let img = image(tmp.path(), 16 << 20);
    let disk = FaultyDisk::start(tmp.path(), &img);
    disk.write_direct(1 << 20, &[0x42; 4096]).unwrap();
    disk.pause();
    assert!(disk.is_paused());
    let (reader, rx) = stuck_direct_read(&disk, 1 << 20);
    assert!(
        matches!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "a direct read completed while the disk was paused"
    );
    assert!(disk.fuse_waiting() >= 1);
    disk.resume();
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("read after resume");
    assert_eq!(got.unwrap(), vec![0x42; 4096]);
    reader.join().unwrap();
    disk.close();
}

/// Dropping a paused fixture with a reader stuck in it: the reader finishes, and no nbdkit,
/// no nbdfuse and no mount are left.
#[test]
fn dropping_a_paused_disk_leaves_nothing_behind() {
    require_stack();
    let tmp = tempdir();
    let img = image(tmp.path(), 16 << 20);
    let disk = FaultyDisk::start(tmp.path(), &img);
    let (kit, fuse, mnt) = (
        disk.nbdkit_pid(),
        disk.nbdfuse_pid(),
        disk.mount_point().to_owned(),
    );
    assert!(!process_gone(kit) && !process_gone(fuse) && mounted(&mnt));
    disk.pause();
    let (reader, rx) = stuck_direct_read(&disk, 0);
    let t = Instant::now();
    drop(disk);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "drop took {:?}",
        t.elapsed()
    );
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stuck reader did not finish after the drop");
    // The drop resumed the disk before tearing it down: the read completed normally.
    assert_eq!(got.unwrap(), vec![0; 4096]);
    reader.join().unwrap();
    assert!(process_gone(kit), "nbdkit {kit} is still running");
    assert!(process_gone(fuse), "nbdfuse {fuse} is still running");
    assert!(!mounted(&mnt), "{} is still mounted", mnt.display());
}

/// abort_fuse fails the IO stuck in a paused disk at once (the disk vanished); drop still
/// cleans up.
#[test]
fn abort_fuse_fails_stuck_io() {
    require_stack();
    let tmp = tempdir();
    let img = image(tmp.path(), 16 << 20);
    let disk = FaultyDisk::start(tmp.path(), &img);
    let mnt = disk.mount_point().to_owned();
    disk.pause();
    let (reader, rx) = stuck_direct_read(&disk, 0);
    disk.abort_fuse();
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the aborted read did not return");
    assert!(r.is_err(), "the aborted read returned data");
    reader.join().unwrap();
    assert!(disk.read_direct(0, 4096).is_err(), "IO after the abort");
    drop(disk);
    assert!(!mounted(&mnt), "{} is still mounted", mnt.display());
}

/// A test that panics while udrbd's IO is stuck in the paused disk, with the daemon dropped
/// (SIGKILL and wait) before the fixture: without the fixture's panic hook the wait would
/// never return (a process stuck in FUSE IO cannot die until the disk resumes).
#[test]
fn a_panic_while_paused_does_not_hang_the_daemon_teardown() {
    require_stack();
    require_tool("qemu-io", "qemu-utils");
    let tmp = tempdir();
    let dir = tmp.path().to_owned();
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let img = image(&dir, 64 << 20);
        create_md(&img);
        let disk = FaultyDisk::start(&dir, &img);
        let _ = tx.send((disk.nbdkit_pid(), disk.mount_point().to_owned()));
        let config = write_config(&dir, "r0", &disk.path(), "");
        let d = TestDaemon::start(&dir, &config, &[]);
        d.ok(&["primary", "r0", "--force"]);
        disk.pause();
        let _writer = KillOnDrop(
            qemu_io(&d.uri("r0"), "write -P 0xcd 8M 4k")
                .spawn()
                .unwrap(),
        );
        wait_until(Duration::from_secs(5), "udrbd's write to be stuck", || {
            disk.fuse_waiting() >= 1
        });
        panic!("deliberate panic with udrbd's IO stuck in the paused disk (expected)");
    }));
    assert!(result.is_err(), "the closure did not panic");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "unwinding took {:?}",
        t.elapsed()
    );
    let (kit, mnt) = rx.recv().unwrap();
    assert!(process_gone(kit), "nbdkit {kit} is still running");
    assert!(!mounted(&mnt), "{} is still mounted", mnt.display());
}

/// The emergency exit: nbdkit frozen (SIGSTOP) so the resume gets no answer; the drop aborts
/// the FUSE connection, the stuck reader gets an error, nothing is left behind.
#[test]
fn dropping_a_disk_with_frozen_nbdkit_aborts_the_fuse_connection() {
    require_stack();
    let tmp = tempdir();
    let img = image(tmp.path(), 16 << 20);
    let disk = FaultyDisk::start(tmp.path(), &img);
    let (kit, fuse, mnt) = (
        disk.nbdkit_pid(),
        disk.nbdfuse_pid(),
        disk.mount_point().to_owned(),
    );
    let pid = rustix::process::Pid::from_raw(kit as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The signal stops the threads asynchronously: a read sent before would still complete.
    wait_until(Duration::from_secs(5), "nbdkit to stop", || {
        std::fs::read_dir(format!("/proc/{kit}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                    st.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                })
            })
    });
    let (reader, rx) = stuck_direct_read(&disk, 0);
    let t = Instant::now();
    drop(disk);
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "drop took {:?}",
        t.elapsed()
    );
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stuck reader did not finish after the abort");
    assert!(r.is_err(), "the aborted read returned data");
    reader.join().unwrap();
    assert!(process_gone(kit), "nbdkit {kit} is still there");
    assert!(process_gone(fuse), "nbdfuse {fuse} is still running");
    assert!(!mounted(&mnt), "{} is still mounted", mnt.display());
}

/// The offsets of internal meta-data: 256 MiB gives md_size_sect 88 (bitmap 16 + AL 64 +
/// superblock 8 sectors), and create-md's superblock magic is where `superblock` says.
#[test]
fn internal_md_areas_match_create_md() {
    let a = internal_md_areas(256 << 20);
    let end = 256u64 << 20;
    assert_eq!(a.superblock, end - 4096..end);
    assert_eq!(a.al, end - 4096 - 32768..end - 4096);
    assert_eq!(a.bitmap, end - 4096 - 32768 - 8192..end - 4096 - 32768);
    assert_eq!(a.data_bytes, a.bitmap.start);
    assert_eq!(a.bitmap_block_of(0), a.bitmap.start..a.bitmap.start + 4096);
    assert_eq!(
        a.bitmap_block_of((128 << 20) + 4096),
        a.bitmap.start + 4096..a.bitmap.start + 8192
    );
    assert_eq!(a.al_block(9), a.al.start + 4096..a.al.start + 8192);

    let tmp = tempdir();
    // Not a multiple of 4 KiB: the superblock is the last whole 4 KiB block.
    let size = (100 << 20) + 3 * 512;
    let img = image(tmp.path(), size);
    create_md(&img);
    let a = internal_md_areas(size);
    assert_eq!(a.superblock.start, (100 << 20) - 4096);
    let raw = std::fs::read(&img).unwrap();
    let sb = &raw[a.superblock.start as usize..a.superblock.end as usize];
    // struct meta_data_on_disk_08: magic (big endian) after la_size, 4 UUIDs, device UUID,
    // reserved and flags.
    assert_eq!(
        u32::from_be_bytes(sb[60..64].try_into().unwrap()),
        udrbd_meta::superblock::MD_MAGIC_08
    );
}
