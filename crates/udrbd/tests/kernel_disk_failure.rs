//! udrbd's failure handling under a real kernel DRBD 8.4.11 Primary (`shared/tools/kdrbd-vm`,
//! harness in `kernelvm/mod.rs`): udrbd is the Secondary, on a backing disk that freezes on
//! command (`blockstack/faulty_disk.rs`: nbdkit's pause filter behind nbdfuse).
//!
//! [`a_frozen_udrbd_secondary_under_a_kernel_primary_detaches_and_resyncs`]: the kernel
//! writes while udrbd's disk is frozen. udrbd's disk-timeout (3 s) detaches it within
//! disk-timeout + 2 s; the writes it could not confirm make it reconnect diskless (as in the
//! simulator's `frozen_secondary_disk_is_detached_by_disk_timeout`), so the kernel completes
//! them on its own disk, records them out of sync, and its writer never hangs. After the disk
//! thaws, `attach` resyncs from the kernel and both data areas end identical; the guest's
//! kernel log shows no protocol error.
//!
//! [`a_frozen_udrbd_primary_serves_its_io_through_the_kernel`]: the other way round, udrbd
//! Primary and the kernel Secondary. udrbd's disk freezes under NBD writes and reads; the
//! disk-timeout detaches it within disk-timeout + 2 s, the stuck requests complete (writes the
//! kernel wrote, reads retried from the kernel), and every later request is served by the
//! kernel's disk (P_DATA, P_DATA_REQUEST). After the thaw `attach` resyncs from the kernel
//! and both data areas end identical.
//!
//! [`read_and_write_errors_on_a_udrbd_primary_are_covered_by_the_kernel`]: udrbd Primary, its
//! disk failing reads of a range, later writes of another (on-io-error detach): the failed
//! read is answered from the kernel's disk, the failed write completes as the kernel wrote
//! it, each error detaches udrbd's disk, and each re-attach resyncs to identical data areas.
//!
//! The udrbd-to-udrbd versions of these scenarios run in `daemon_disk_failure.rs` and in the
//! simulator; here the other side is the kernel, which must accept udrbd's disconnect, its
//! diskless reconnect and the resync that follows. Needs root (FUSE, and the kernel node's
//! build), nbdkit with its python plugin, nbdfuse; about 300 MB of host memory for the guest.

mod blockstack;
mod kernelvm;
mod support;

use std::time::{Duration, Instant};

use blockstack::faulty_disk::FaultyDisk;
use kernelvm::*;
use support::*;

/// The data area in KiB (the guest's 16 MiB brd less 40 KiB of internal meta-data; udrbd's
/// 16 MiB image the same).
const DATA_KIB: u64 = 16344;
/// udrbd's `disk-timeout` in DRBD's tenths of a second.
const DISK_TIMEOUT_DS: u64 = 30;

/// Writes `count` blocks of random bytes from block `first` on the guest's `/dev/drbd0`, one
/// `dd` (O_DIRECT) each; panics if one fails.
fn guest_writes(vm: &KernelVm, first: u64, count: u64) {
    let out = vm.exec(&format!(
        "for i in $(seq {first} {}); do dd if=/dev/urandom of=/dev/drbd0 bs=4096 seek=$i \
         count=1 oflag=direct 2>/dev/null || echo FAILED $i; done",
        first + count - 1
    ));
    assert!(
        !out.contains("FAILED"),
        "a write on the kernel failed: {out}"
    );
}

/// Waits until udrbd has data IO on the disk frozen at `paused`, then until it is Diskless by
/// its disk-timeout: at most disk-timeout + 2 s after that IO was seen (the bound is asserted
/// and the time printed; the IO may be older by one poll, 20 ms). Its status then.
fn diskless_by_disk_timeout(d: &TestDaemon, paused: Instant) -> serde_json::Value {
    // The first IO reaches the frozen disk when the writer gets to it (a guest's `dd` under
    // TCG can take a while): disk-timeout counts from there.
    let stuck = loop {
        let s = status_json(d);
        // Its own requests on the disk (a Primary), or the peer's not acked yet.
        let on_disk = s["devices"][0]["lower-pending"].as_u64().unwrap_or(0)
            + s["connections"][0]["peer_devices"][0]["unacked"]
                .as_u64()
                .unwrap_or(0);
        if on_disk > 0 || json_disk_state(&s) != "UpToDate" {
            break Instant::now();
        }
        assert!(
            paused.elapsed() < WAIT,
            "no IO reached the frozen disk: {s}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let limit = Duration::from_millis(DISK_TIMEOUT_DS * 100) + Duration::from_secs(2);
    wait_status(d, "Diskless", limit, |s| json_disk_state(s) == "Diskless");
    let took = stuck.elapsed();
    println!(
        "udrbd Diskless {took:?} after IO was stuck on its frozen disk (limit {limit:?}; {:?} \
         after the freeze)",
        paused.elapsed()
    );
    assert!(took <= limit, "udrbd detached after {took:?}");
    let s = status_json(d);
    assert_eq!(
        s["devices"][0]["udrbd-disk-failure-reason"].as_str(),
        Some("disk-timeout"),
        "{s}"
    );
    s
}

/// Heals the disk (resumed, no faults), waits until udrbd's stuck IO returned, attaches it,
/// and waits until the resync ends: the guest `Connected`, `roles` (its `ro:` field),
/// `UpToDate/UpToDate`, and udrbd the same. The guest's counters before the attach and after
/// the resync.
fn heal_and_attach(
    d: &TestDaemon,
    vm: &KernelVm,
    disk: &FaultyDisk,
    roles: &str,
) -> (ProcCounters, ProcCounters) {
    if disk.is_paused() {
        disk.resume();
    }
    disk.clear_faults();
    wait_status(d, "end of the stuck IO", Duration::from_secs(30), |s| {
        s["devices"][0]["udrbd-stuck-ios"].is_null()
    });
    let before = parse_proc_counters(&vm.proc_drbd());
    d.ok(&["attach", "r0"]);
    vm.wait(
        &format!("cs:Connected {roles} ds:UpToDate/UpToDate"),
        WAIT,
        &|| d.log_text(),
    );
    wait_status(
        d,
        "UpToDate/UpToDate after the attach",
        WAIT,
        json_up_to_date,
    );
    (before, parse_proc_counters(&vm.proc_drbd()))
}

/// udrbd on a faulty disk and a kernel guest, both running. Fields drop in order: the
/// daemon, the guest, the disk (unmounted once nothing holds it), then the directory.
struct Setup {
    d: TestDaemon,
    vm: KernelVm,
    disk: FaultyDisk,
    /// The image behind the faulty disk (read directly: nbdkit writes through to it).
    image: std::path::PathBuf,
    /// Holds the test's directory.
    _u: Udrbd,
}

impl Setup {
    /// The end of each test: both data areas identical, no protocol error in the guest's
    /// kernel log.
    fn assert_identical_and_clean(&self, t0: Instant) {
        assert_same_data_areas(&self.vm, &self.image, DATA_KIB, &self.d);
        self.vm.assert_clean_dmesg(&|| self.d.log_text());
        eprintln!("total {:.1?}", t0.elapsed());
    }
}

/// Ports from `base`; udrbd's image (random: its data will be the data; zeroed: it receives
/// the kernel's) behind a faulty disk, with disk-timeout; the guest `name`, Primary if
/// `kernel_primary`; then udrbd's daemon, which attaches and connects.
fn start(base: u16, name: &str, kernel_primary: bool) -> Setup {
    require_root();
    require_tool("nbdkit", "nbdkit");
    require_tool("nbdfuse", "libnbd-bin");
    require_libnbd();
    let role: &[&str] = if kernel_primary {
        &["--role", "primary"]
    } else {
        &[]
    };
    let guest_args: Vec<&str> = role
        .iter()
        .copied()
        .chain([
            "--net-opts",
            "--connect-int=2",
            "--disk-opts",
            "--c-plan-ahead=0 --resync-rate=400M",
        ])
        .collect();
    let (mut u, vm) = udrbd_and_guest(
        base,
        UdrbdOptions {
            random: !kernel_primary,
            net: "protocol C; connect-int 2; ping-int 10; ping-timeout 20; timeout 19;".into(),
            disk: format!("c-plan-ahead 0; resync-rate 100M; disk-timeout {DISK_TIMEOUT_DS};"),
            ..UdrbdOptions::default()
        },
        name,
        &guest_args,
    );
    let image = u.disk.clone();
    let disk = FaultyDisk::start(u.dir.path(), &image);
    // The config names the disk's FUSE file.
    u.disk = disk.path();
    u.write_config();
    let d = u.start();
    Setup {
        d,
        vm,
        disk,
        image,
        _u: u,
    }
}

#[test]
fn a_frozen_udrbd_secondary_under_a_kernel_primary_detaches_and_resyncs() {
    let t0 = Instant::now();
    let setup = start(17480, "kfrozen", true);
    let Setup {
        d, vm, disk, image, ..
    } = &setup;

    // The kernel's initial full sync to udrbd, then writes replicated under protocol C.
    vm.wait(
        "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    wait_status(d, "UpToDate/UpToDate", WAIT, json_up_to_date);
    eprintln!("full sync from the kernel after {:.1?}", t0.elapsed());
    guest_writes(vm, 0, 16);
    assert_eq!(
        md5_hex(&read_head(image, 16 * 4096)),
        vm.exec("dd if=/dev/drbd0 bs=4096 count=16 iflag=direct 2>/dev/null | md5sum")
            .split_whitespace()
            .next()
            .unwrap_or(""),
        "the kernel's writes are not on udrbd's disk (protocol C)"
    );

    // Freeze udrbd's disk while the kernel writes 64 more blocks.
    disk.pause();
    let paused = Instant::now();
    let writes_took = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let t = Instant::now();
            guest_writes(vm, 100, 64);
            t.elapsed()
        });
        diskless_by_disk_timeout(d, paused);
        writer.join().expect("the guest's writer")
    });
    println!("the kernel's 64 writes took {writes_took:?} from the freeze");
    // The writes waited for udrbd's detach and reconnect at most, not for the kernel's
    // ko-count (7 x 6 s).
    assert!(
        writes_took < Duration::from_secs(30),
        "the kernel's writes hung for {writes_took:?}\n{}",
        d.log_text()
    );
    // udrbd is the kernel's diskless peer; the kernel holds what udrbd missed.
    let proc_drbd = vm.wait(
        "cs:Connected ro:Primary/Secondary ds:UpToDate/Diskless",
        WAIT,
        &|| d.log_text(),
    );
    let oos = parse_proc_counters(&proc_drbd).oos;
    println!("kernel: {}", proc_drbd.trim());
    assert!(
        oos >= 64 * 4,
        "the kernel's bitmap lacks the 64 blocks udrbd missed: oos:{oos}"
    );
    wait_status(d, "Connected to the kernel", WAIT, |s| {
        json_connection_state(s) == "Connected"
    });

    // The disk thaws: attach, and the kernel resyncs udrbd.
    let (before, after) = heal_and_attach(d, vm, disk, "ro:Primary/Secondary");
    assert_eq!(after.oos, 0, "kernel {after:?}");
    // At least what udrbd missed went over (more if udrbd's own bitmap or activity log
    // added blocks: that depends on which meta-data writes the freeze caught).
    let resynced = after.ns - before.ns;
    println!("the kernel resynced {resynced} KiB ({oos} KiB missed)");
    assert!(resynced >= oos, "kernel {before:?} -> {after:?}");
    setup.assert_identical_and_clean(t0);
}

#[test]
fn a_frozen_udrbd_primary_serves_its_io_through_the_kernel() {
    let t0 = Instant::now();
    // udrbd's random data area becomes the data (`primary --force`).
    let setup = start(17485, "kfrozenp", false);
    let Setup { d, vm, disk, .. } = &setup;
    primary_and_full_sync(d, vm, t0);
    // Blocks 0..64 written before the freeze (to be read back during it).
    nbd_tagged_blocks(d, "write", 0, 64, "before");

    // Freeze udrbd's disk under 64 writes and the read-back of the first 64 blocks.
    let k0 = parse_proc_counters(&vm.proc_drbd());
    disk.pause();
    let paused = Instant::now();
    let (written, mismatches, io_took) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let t = Instant::now();
            let out = nbd_tagged_blocks(d, "write", 1000, 64, "frozen");
            (out, t.elapsed())
        });
        let reader = scope.spawn(|| nbd_tagged_blocks(d, "read", 0, 64, "before"));
        let s = diskless_by_disk_timeout(d, paused);
        assert_eq!(s["devices"][0]["udrbd-served-by-peer"], true, "{s}");
        let (written, took) = writer.join().expect("the NBD writer");
        (written, reader.join().expect("the NBD reader"), took)
    });
    println!("64 writes through udrbd took {io_took:?} from the freeze");
    assert_eq!(
        written.lines().filter(|l| l.starts_with("ok ")).count(),
        64,
        "{written}"
    );
    assert!(
        mismatches.is_empty(),
        "reads during the freeze returned wrong data: {mismatches}"
    );
    // Served by the kernel's disk: udrbd is its diskless Primary peer.
    vm.wait(
        "cs:Connected ro:Secondary/Primary ds:UpToDate/Diskless",
        WAIT,
        &|| d.log_text(),
    );
    let mismatches = nbd_tagged_blocks(d, "read", 1000, 64, "frozen");
    assert!(
        mismatches.is_empty(),
        "read through the kernel: {mismatches}"
    );
    // Both read-backs (128 blocks) came from the kernel's disk: its `ns:` counts the replies.
    let k1 = parse_proc_counters(&vm.proc_drbd());
    println!(
        "the kernel sent {} KiB, received {} KiB since the freeze",
        k1.ns - k0.ns,
        k1.nr - k0.nr
    );
    assert!(k1.ns - k0.ns >= 128 * 4, "kernel {k0:?} -> {k1:?}");
    assert!(k1.nr - k0.nr >= 64 * 4, "kernel {k0:?} -> {k1:?}");
    nbd_tagged_blocks(d, "write", 2000, 16, "diskless");

    // The disk thaws: attach, and the kernel resyncs udrbd.
    let t_attach = Instant::now();
    let (k2, k3) = heal_and_attach(d, vm, disk, "ro:Secondary/Primary");
    println!(
        "resynced {} KiB from the kernel in {:.1?}",
        k3.ns - k2.ns,
        t_attach.elapsed()
    );
    assert!(k3.ns > k2.ns, "no resync: kernel {k2:?} -> {k3:?}");
    for (first, count, tag) in [
        (0, 64, "before"),
        (1000, 64, "frozen"),
        (2000, 16, "diskless"),
    ] {
        let mismatches = nbd_tagged_blocks(d, "read", first, count, tag);
        assert!(mismatches.is_empty(), "{tag}: {mismatches}");
    }
    setup.assert_identical_and_clean(t0);
}

/// udrbd Primary with the kernel Secondary; udrbd's disk fails reads of a range, later writes
/// of another (on-io-error detach, the default). The failed read is served by the kernel
/// (P_DATA_REQUEST) and the failed write completes as the kernel wrote it; each error detaches
/// udrbd's disk, the kernel serves udrbd's IO meanwhile, and each re-attach resyncs to
/// identical data areas.
#[test]
fn read_and_write_errors_on_a_udrbd_primary_are_covered_by_the_kernel() {
    let t0 = Instant::now();
    let setup = start(17490, "kioerr", false);
    let Setup { d, vm, disk, .. } = &setup;
    primary_and_full_sync(d, vm, t0);
    let diskless = |reason: &str| {
        // The detach may still write its bitmap when the request it failed was answered.
        wait_status(d, "Diskless", WAIT, |s| json_disk_state(s) == "Diskless");
        let s = status_json(d);
        assert_eq!(
            s["devices"][0]["udrbd-disk-failure-reason"].as_str(),
            Some(reason),
            "{s}"
        );
        assert_eq!(s["devices"][0]["udrbd-served-by-peer"], true, "{s}");
        vm.wait(
            "cs:Connected ro:Secondary/Primary ds:UpToDate/Diskless",
            WAIT,
            &|| d.log_text(),
        );
    };

    // A read error: the 8 blocks come from the kernel, right.
    nbd_tagged_blocks(d, "write", 500, 8, "read-error");
    disk.fail_read_range(500 * 4096, 8 * 4096);
    let k0 = parse_proc_counters(&vm.proc_drbd());
    let mismatches = nbd_tagged_blocks(d, "read", 500, 8, "read-error");
    assert!(mismatches.is_empty(), "after a read error: {mismatches}");
    diskless("read error");
    let k1 = parse_proc_counters(&vm.proc_drbd());
    println!("the kernel sent {} KiB for the failed read", k1.ns - k0.ns);
    assert!(k1.ns - k0.ns >= 8 * 4, "kernel {k0:?} -> {k1:?}");
    let (k2, k3) = heal_and_attach(d, vm, disk, "ro:Secondary/Primary");
    println!("resynced {} KiB after the read error", k3.ns - k2.ns);

    // A write error: the write completes (the kernel wrote it) and reads back right.
    disk.fail_write_range(3000 * 4096, 4 * 4096);
    let written = nbd_tagged_blocks(d, "write", 3000, 4, "write-error");
    assert_eq!(written.lines().count(), 4, "{written}");
    diskless("write error");
    let mismatches = nbd_tagged_blocks(d, "read", 3000, 4, "write-error");
    assert!(mismatches.is_empty(), "after a write error: {mismatches}");
    let (k4, k5) = heal_and_attach(d, vm, disk, "ro:Secondary/Primary");
    println!("resynced {} KiB after the write error", k5.ns - k4.ns);
    assert!(k5.ns - k4.ns >= 16, "kernel {k4:?} -> {k5:?}");
    for (first, count, tag) in [(500, 8, "read-error"), (3000, 4, "write-error")] {
        let mismatches = nbd_tagged_blocks(d, "read", first, count, tag);
        assert!(mismatches.is_empty(), "{tag}: {mismatches}");
    }
    setup.assert_identical_and_clean(t0);
}
