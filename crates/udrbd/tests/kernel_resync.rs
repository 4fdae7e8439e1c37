//! A resync between udrbd and a real kernel DRBD 8.4.11 node (`shared/tools/kdrbd-vm`,
//! harness in `kernelvm/mod.rs`) interrupted half-way resumes where it was, in both
//! directions: the SyncTarget keeps what it received (its bitmap shrinks as blocks arrive)
//! and the next handshake's bitmap exchange leaves only the rest to send.
//!
//! - [`an_interrupted_resync_from_the_kernel_resumes`]: the kernel is the SyncSource of a full
//!   sync to udrbd, udrbd disconnects at about half-way and connects again.
//! - [`an_interrupted_resync_to_the_kernel_resumes`]: udrbd is the SyncSource, the same cut.
//! - [`pause_sync_on_either_side_holds_a_resync_with_the_kernel`]: `pause-sync` on udrbd, then
//!   on the kernel, holds the resync on both sides until `resume-sync`.
//! - [`resize_with_the_kernel_grows_and_shrinks_both_devices_either_way`]: udrbd's backing
//!   file grows and `resize` runs on udrbd, then on the kernel: both devices grow, the new
//!   part resyncs; the kernel's `resize --size` shrinks both, udrbd's `--size 0` grows both
//!   back.
//! - [`a_resync_with_csums_alg_moves_only_the_blocks_that_differ_both_ways`], with
//!   csums-alg: the SyncTarget asks with digests, udrbd as either side; only blocks whose
//!   digests differ move.
//!
//! Each of the first two checks that the second resync covers at most what was left (the
//! kernel's "Began resync ... will sync N KB" against udrbd's out-of-sync at the cut), that
//! the whole transfer (the kernel's `ns:`/`nr:`) is less than 1.1 device sizes, and that the
//! data areas end identical.
//! The SyncSource runs at a fixed 2 MiB/s (16 MiB: ~8 s) so the cut lands mid-way.
//!
//! Needs root (the kernel node's build); about 300 MB of host memory per guest.

mod kernelvm;
mod support;

use std::time::{Duration, Instant};

use kernelvm::*;
use support::*;

/// The data area in KiB (the guest's 16 MiB brd less 40 KiB of internal meta-data).
const DATA_KIB: u64 = 16344;
const UDRBD_NET: &str = "protocol C; connect-int 2; ping-int 10; ping-timeout 20; timeout 19;";
const KERNEL_NET: &str = "--connect-int=2";

/// The out-of-sync KiB of udrbd's `status --json` `s`.
fn out_of_sync_kib(s: &serde_json::Value) -> u64 {
    s["connections"][0]["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits until the resync under way is between 40% and 60% done (udrbd's out-of-sync), then
/// disconnects udrbd; the out-of-sync KiB at the cut.
fn cut_half_way(d: &TestDaemon, vm: &KernelVm) -> u64 {
    let t0 = Instant::now();
    loop {
        // Both from one snapshot: the resync is under way and has this much left.
        let s = status_json(d);
        let oos = out_of_sync_kib(&s);
        let syncing = s["connections"][0]["peer_devices"][0]["replication-state"]
            .as_str()
            .is_some_and(|r| r.starts_with("Sync"));
        if syncing && oos <= DATA_KIB * 6 / 10 {
            d.ok(&["disconnect", "r0"]);
            let at_cut = out_of_sync_kib(&status_json(d));
            println!(
                "cut after {:.1?} with {oos} KiB of {DATA_KIB} left ({at_cut} at the disconnect)",
                t0.elapsed()
            );
            assert!(
                at_cut >= DATA_KIB * 3 / 10,
                "the resync was almost over at the cut: {at_cut} KiB left"
            );
            vm.wait("cs:(WFConnection|StandAlone)", WAIT, &|| d.log_text());
            return at_cut;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the resync did not get half-way: {oos} KiB out of sync\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `N` of each "Began resync as ROLE (will sync N KB" in the guest's dmesg.
fn began_resync_kib(vm: &KernelVm, role: &str) -> Vec<u64> {
    let marker = format!("Began resync as {role} (will sync ");
    vm.exec("dmesg")
        .lines()
        .filter_map(|l| l.split_once(&marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Connects udrbd again and waits for the end of the resync; then the checks of the module
/// documentation (`role`: the kernel's, `at_cut`: udrbd's out-of-sync at the cut).
fn resume_and_check(u: &Udrbd, d: &TestDaemon, vm: &KernelVm, role: &str, at_cut: u64) {
    d.ok(&["connect", "r0"]);
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
    let began = began_resync_kib(vm, role);
    let k = parse_proc_counters(&vm.proc_drbd());
    let moved = if role == "SyncSource" { k.ns } else { k.nr };
    println!("the kernel as {role}: resyncs of {began:?} KiB, {moved} KiB moved in all");
    assert_eq!(began.len(), 2, "expected two resyncs: {began:?}");
    assert_eq!(began[0], DATA_KIB, "the first resync is a full sync");
    // A block in flight at the cut may be counted on one side only: 1% of slack.
    assert!(
        began[1] <= at_cut + DATA_KIB / 100,
        "the second resync ({} KiB) did not resume from the {at_cut} KiB left",
        began[1]
    );
    assert!(
        (DATA_KIB..DATA_KIB * 11 / 10).contains(&moved),
        "{moved} KiB moved for a {DATA_KIB} KiB device"
    );
    assert_same_data_areas(vm, &u.disk, DATA_KIB, d);
    vm.assert_clean_dmesg(&|| d.log_text());
}

#[test]
fn an_interrupted_resync_from_the_kernel_resumes() {
    require_root();
    let (u, vm) = udrbd_and_guest(
        17505,
        UdrbdOptions {
            random: false,
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
        "kresync-src",
        &[
            "--role",
            "primary",
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            "--c-plan-ahead=0 --resync-rate=2M",
        ],
    );
    vm.exec("dd if=/dev/urandom of=/dev/drbd0 bs=24k count=681 oflag=direct 2>&1");
    let d = u.start();
    let at_cut = cut_half_way(&d, &vm);
    resume_and_check(&u, &d, &vm, "SyncSource", at_cut);
}

#[test]
fn an_interrupted_resync_to_the_kernel_resumes() {
    require_root();
    let (u, vm) = udrbd_and_guest(
        17510,
        UdrbdOptions {
            net: UDRBD_NET.into(),
            disk: "c-plan-ahead 0; resync-rate 2M;".into(),
            ..UdrbdOptions::default()
        },
        "kresync-dst",
        &["--net-opts", KERNEL_NET],
    );
    let d = u.start();
    force_primary(&d);
    let at_cut = cut_half_way(&d, &vm);
    resume_and_check(&u, &d, &vm, "SyncTarget", at_cut);
}

/// The replication state and `resync-suspended` of udrbd's `status --json` `s`.
fn replication_and_suspended(s: &serde_json::Value) -> (String, String) {
    let pd = &s["connections"][0]["peer_devices"][0];
    (
        pd["replication-state"].as_str().unwrap_or("").to_string(),
        pd["resync-suspended"].as_str().unwrap_or("").to_string(),
    )
}

/// Asserts that neither side's out-of-sync moves for 3 s (after 1 s for what was in flight);
/// returns udrbd's.
fn assert_held(d: &TestDaemon, vm: &KernelVm, what: &str) -> u64 {
    std::thread::sleep(Duration::from_secs(1));
    let (udrbd, kernel) = (out_of_sync_kib(&status_json(d)), vm.counters().oos);
    std::thread::sleep(Duration::from_secs(3));
    let (udrbd2, kernel2) = (out_of_sync_kib(&status_json(d)), vm.counters().oos);
    println!(
        "{what}: udrbd {udrbd} -> {udrbd2} KiB, the kernel {kernel} -> {kernel2} KiB out of sync"
    );
    assert!(udrbd > 0, "{what}: the resync ended before the pause");
    assert_eq!(udrbd2, udrbd, "{what}: udrbd's resync moved while paused");
    assert_eq!(
        kernel2, kernel,
        "{what}: the kernel's resync moved while paused"
    );
    udrbd
}

/// `pause-sync` on either side holds a resync between udrbd and the kernel on both (DRBD's
/// user_isp, seen by the other side as peer_isp in P_STATE), and `resume-sync` lets it end.
/// udrbd is the SyncSource of a full sync at 2 MiB/s: udrbd's pause makes the kernel
/// PausedSyncT with its peer_isp flag (`/proc/drbd` `r-p`); the kernel's own pause makes udrbd
/// PausedSyncS with `resync-suspended:peer`, where `resume-sync` names the peer's pause (157).
#[test]
fn pause_sync_on_either_side_holds_a_resync_with_the_kernel() {
    require_root();
    let (u, vm) = udrbd_and_guest(
        17515,
        UdrbdOptions {
            net: UDRBD_NET.into(),
            disk: "c-plan-ahead 0; resync-rate 2M;".into(),
            ..UdrbdOptions::default()
        },
        "kresync-pause",
        &["--net-opts", KERNEL_NET],
    );
    let d = u.start();
    force_primary(&d);
    wait_status(&d, "the resync under way", WAIT, |s| {
        replication_and_suspended(s).0 == "SyncSource" && out_of_sync_kib(s) < DATA_KIB * 9 / 10
    });
    // udrbd pauses: the kernel's resync waits for it.
    d.ok(&["pause-sync", "r0"]);
    vm.wait(r"cs:PausedSyncT .* C r-p", WAIT, &|| d.log_text());
    let (repl, suspended) = replication_and_suspended(&status_json(&d));
    assert_eq!((repl.as_str(), suspended.as_str()), ("PausedSyncS", "user"));
    let held = assert_held(&d, &vm, "paused by udrbd");
    d.ok(&["resume-sync", "r0"]);
    vm.wait(r"cs:SyncTarget .* C r---", WAIT, &|| d.log_text());
    wait_status(&d, "progress after resume-sync", WAIT, |s| {
        out_of_sync_kib(s) < held
    });
    // The kernel pauses: udrbd's side waits for it.
    vm.exec("drbdsetup-84 pause-sync 0 2>&1");
    wait_status(&d, "PausedSyncS paused by the kernel", WAIT, |s| {
        replication_and_suspended(s) == ("PausedSyncS".into(), "peer".into())
    });
    let o = d.cli(&["resume-sync", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Failure: (157)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_held(&d, &vm, "paused by the kernel");
    vm.exec("drbdsetup-84 resume-sync 0 2>&1");
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    assert_same_data_areas(&vm, &u.disk, DATA_KIB, &d);
    vm.assert_clean_dmesg(&|| d.log_text());
}

/// Online verify with the kernel, both ways (verify-alg crc32c on both nodes). Blocks of
/// udrbd's backing file are changed behind the replication's back:
/// - `drbdsetup verify` in the guest (the kernel VerifyS, udrbd VerifyT) finds the block at
///   4 MiB on both nodes (the kernel's P_OV_RESULT marks it on udrbd);
/// - udrbd's `verify --start --stop` (udrbd VerifyS) finds the block at 6 MiB within its range
///   and not the one at 10 MiB beyond it; the kernel, which does not know the stop sector,
///   ends its VerifyT on udrbd's P_STATE;
/// - disconnect and connect on udrbd, the Primary, resync exactly the marked blocks.
#[test]
fn online_verify_with_the_kernel_finds_changed_blocks_both_ways() {
    use std::io::{Seek, SeekFrom, Write};
    require_root();
    let (u, vm) = udrbd_and_guest(
        17520,
        UdrbdOptions {
            net: format!("{UDRBD_NET} verify-alg crc32c;"),
            ..UdrbdOptions::default()
        },
        "kresync-verify",
        &["--net-opts", "--connect-int=2 --verify-alg=crc32c"],
    );
    let d = u.start();
    force_primary(&d);
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    let change = |at_mib: u64| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&u.disk)
            .unwrap();
        f.seek(SeekFrom::Start(at_mib << 20)).unwrap();
        f.write_all(b"changed behind the replication's back")
            .unwrap();
        f.sync_all().unwrap();
    };
    let oos_both = || (out_of_sync_kib(&status_json(&d)), vm.counters().oos);
    let verify_done = |what: &str| {
        vm.wait("cs:Connected ", WAIT, &|| d.log_text());
        wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
        // The last results may trail the end of the run by a moment.
        std::thread::sleep(Duration::from_secs(1));
        println!("{what}: out of sync (udrbd, kernel) {:?} KiB", oos_both());
    };

    // The kernel verifies: udrbd answers its P_OV_REQUESTs.
    change(4);
    vm.exec("drbdsetup-84 verify 0 2>&1");
    verify_done("kernel's verify");
    assert_eq!(oos_both(), (4, 4), "{}", d.log_text());
    let dmesg = vm.exec("dmesg");
    assert!(
        dmesg.contains("Out of sync: start=8192, size=8 (sectors)"),
        "{dmesg}"
    );
    assert!(
        dmesg.contains("Online verify found 1 4k block out of sync!"),
        "{dmesg}"
    );
    assert!(
        d.log_text()
            .contains("Online verify found 1 4k block out of sync!"),
        "{}",
        d.log_text()
    );

    // udrbd verifies sectors 8192..16384 (4..8 MiB): the block at 6 MiB, not the one at 10.
    change(6);
    change(10);
    d.ok(&["verify", "r0", "--start", "8192", "--stop", "16384"]);
    verify_done("udrbd's verify");
    assert_eq!(oos_both(), (8, 8), "{}", d.log_text());
    let log = d.log_text();
    assert!(
        log.contains("Starting Online Verify from sector 8192"),
        "{log}"
    );
    assert!(
        log.contains("Out of sync: start=12288, size=8 (sectors)"),
        "{log}"
    );
    assert!(!log.contains("start=20480"), "{log}");
    let dmesg = vm.exec("dmesg");
    assert!(
        dmesg.contains("Online Verify start sector: 8192"),
        "{dmesg}"
    );

    // Repair: the Primary's reconnect resyncs the marked blocks. The block at 10 MiB was
    // not verified and stays different.
    d.ok(&["disconnect", "r0"]);
    vm.wait("cs:(WFConnection|StandAlone)", WAIT, &|| d.log_text());
    d.ok(&["connect", "r0"]);
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    assert_eq!(oos_both(), (0, 0));
    d.ok(&["verify", "r0", "--start", "0"]);
    verify_done("the last verify");
    assert_eq!(oos_both(), (4, 4), "only the block at 10 MiB is left");
    vm.assert_clean_dmesg(&|| d.log_text());
}

/// `adjust` of udrbd's resync-rate during a resync to the kernel: udrbd sends its new resync
/// options in P_SYNC_PARAM on the live connection, as DRBD's disk-options does, and the
/// kernel, the SyncTarget that paces the resync, takes them (`want:` in its `/proc/drbd`).
#[test]
fn adjust_sends_a_new_resync_rate_that_the_kernel_target_takes() {
    require_root();
    let (mut u, vm) = udrbd_and_guest(
        17525,
        UdrbdOptions {
            net: UDRBD_NET.into(),
            disk: "c-plan-ahead 0; resync-rate 1M;".into(),
            ..UdrbdOptions::default()
        },
        "kresync-adjust",
        &[
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            "--c-plan-ahead=0 --resync-rate=1M",
        ],
    );
    let d = u.start();
    force_primary(&d);
    vm.wait(r"want: 1,024 K/sec", WAIT, &|| d.log_text());
    u.opts.disk = "c-plan-ahead 0; resync-rate 3M;".into();
    u.write_config();
    assert_eq!(d.ok(&["adjust", "r0"]), "");
    assert_eq!(d.ok(&["cstate", "r0"]).trim(), "SyncSource", "no reconnect");
    vm.wait(r"want: 3,072 K/sec", WAIT, &|| d.log_text());
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    assert_same_data_areas(&vm, &u.disk, DATA_KIB, &d);
    vm.assert_clean_dmesg(&|| d.log_text());
}

/// The device size in KiB of udrbd's `status --json`.
fn size_kib(s: &serde_json::Value) -> u64 {
    s["devices"][0]["size"].as_u64().unwrap_or(0)
}

/// Online grow with a kernel peer whose disk (the guest's 16 MiB brd) is larger than
/// udrbd's 8 MiB file, so that udrbd's disk is the limit.
/// 1. udrbd is Primary; its file grows to 12 MiB and `udrbd resize` runs: udrbd moves its
///    meta-data and grows, its P_SIZES (c_size 0) make the kernel grow and answer, and the
///    new part resyncs from udrbd to the kernel.
/// 2. The kernel is Primary; udrbd's file grows to 16 MiB and `drbdsetup resize` runs in the
///    guest: the kernel's P_SIZES names a disk larger than udrbd's, so udrbd measures its
///    backing file, moves its meta-data and grows; the kernel grows on udrbd's answer and
///    resyncs the new part to udrbd.
/// 3. The kernel, still Primary, runs `drbdsetup resize --size=8M`: its P_SIZES carries the
///    user size, which udrbd takes ("Peer sets u_size"); both devices shrink to 8 MiB.
/// 4. udrbd, Primary again, runs `resize --size 0`: the user size goes on both, both grow
///    back, and the part that came back resyncs from udrbd to the kernel.
///
/// Each step ends with identical data areas of the new size and a clean dmesg.
#[test]
fn resize_with_the_kernel_grows_and_shrinks_both_devices_either_way() {
    require_root();
    let (u, vm) = udrbd_and_guest(
        17530,
        UdrbdOptions {
            size_mib: 8,
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
        "kresync-resize",
        &["--net-opts", KERNEL_NET],
    );
    let d = u.start();
    force_primary(&d);
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    let usable_kib = |mib: u64| {
        let layout =
            udrbd_meta::Layout::internal(mib << 20, udrbd_meta::AlGeometry::DEFAULT).unwrap();
        (layout.max_data_sect & !7) / 2
    };
    assert_eq!(size_kib(&status_json(&d)), usable_kib(8));
    let grow_file = |mib: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&u.disk)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
    };
    // Both devices at `kib`, Connected and UpToDate on both sides; the kernel's dmesg.
    let sized = |kib: u64, what: &str| -> String {
        let t0 = Instant::now();
        while !(size_kib(&status_json(&d)) == kib
            && d.ok(&["dstate", "r0"]).trim() == "UpToDate/UpToDate"
            && d.ok(&["cstate", "r0"]).trim() == "Connected")
        {
            assert!(
                t0.elapsed() < WAIT,
                "{what}: not at {kib} KiB\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        vm.wait("cs:Connected .* ds:UpToDate/UpToDate", WAIT, &|| {
            d.log_text()
        });
        let dmesg = vm.exec("dmesg");
        assert!(
            dmesg.contains(&format!("({kib} KB)")),
            "{what}: the kernel's size\n{dmesg}"
        );
        println!("{what}: both devices at {kib} KiB");
        dmesg
    };
    let grown = |kib: u64, what: &str, grow: usize| {
        let dmesg = sized(kib, what);
        // The kernel's grow number `grow` started the resync of the new part, and so did
        // udrbd's.
        let grows = |log: &str| {
            log.matches("Resync of new storage after online grow")
                .count()
        };
        assert_eq!(grows(&dmesg), grow, "{what}\n{dmesg}");
        assert_eq!(grows(&d.log_text()), grow, "{what}\n{}", d.log_text());
        assert_eq!(d.log_text().matches("md moved").count(), grow);
        assert_same_data_areas(&vm, &u.disk, kib, &d);
        println!("{what}: data areas identical");
    };

    // 1. udrbd, the Primary, resizes.
    grow_file(12);
    d.ok(&["resize", "r0"]);
    grown(usable_kib(12), "udrbd's resize", 1);
    let log = d.log_text();
    assert!(log.contains("md moved"), "{log}");
    assert!(log.contains("Began resync as SyncSource"), "{log}");

    // 2. The kernel, now the Primary, resizes.
    d.ok(&["secondary", "r0"]);
    vm.exec("drbdsetup-84 primary 0");
    grow_file(16);
    let out = vm.exec("drbdsetup-84 resize 0 2>&1; echo rc=$?");
    assert!(out.contains("rc=0"), "{out}");
    let full = DATA_KIB.min(usable_kib(16));
    grown(full, "the kernel's resize", 2);
    let log = d.log_text();
    assert!(log.contains("Began resync as SyncTarget"), "{log}");

    // 3. The kernel's `resize --size` shrinks both devices: udrbd takes its user size.
    let out = vm.exec("drbdsetup-84 resize 0 --size=8M 2>&1; echo rc=$?");
    assert!(out.contains("rc=0"), "{out}");
    sized(8 << 10, "the kernel's resize --size 8M");
    assert!(
        d.log_text()
            .contains(&format!("Peer sets u_size to {} sectors", 16 << 10)),
        "{}",
        d.log_text()
    );
    assert_same_data_areas(&vm, &u.disk, 8 << 10, &d);

    // 4. udrbd, the Primary again, takes the user size away: both grow back, and the part
    //    that comes back is resynced from udrbd (its third "new storage" resync).
    vm.exec("drbdsetup-84 secondary 0");
    d.ok(&["primary", "r0"]);
    d.ok(&["resize", "r0", "--size", "0"]);
    sized(full, "udrbd's resize --size 0");
    let new_storage = |log: &str| {
        log.matches("Resync of new storage after online grow")
            .count()
    };
    assert_eq!(new_storage(&d.log_text()), 3, "{}", d.log_text());
    assert_eq!(new_storage(&vm.exec("dmesg")), 3);
    assert_same_data_areas(&vm, &u.disk, full, &d);
    vm.assert_clean_dmesg(&|| d.log_text());
}

/// The kernel's `disk-options` during its resync to udrbd: the kernel sends its new resync
/// options in P_SYNC_PARAM, and udrbd, the SyncTarget that paces the resync, takes them for
/// this connection, as a kernel target does. At the old 512 KiB/s the rest of the 16 MiB
/// would take about half a minute; at the new 16 MiB/s it is done in a few seconds.
#[test]
fn the_kernels_new_resync_rate_is_taken_by_a_udrbd_sync_target() {
    require_root();
    let (u, vm) = udrbd_and_guest(
        17535,
        UdrbdOptions {
            random: false,
            net: UDRBD_NET.into(),
            disk: "c-plan-ahead 0; resync-rate 512K;".into(),
            ..UdrbdOptions::default()
        },
        "kresync-params",
        &[
            "--role",
            "primary",
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            "--c-plan-ahead=0 --resync-rate=512K",
        ],
    );
    vm.exec("dd if=/dev/urandom of=/dev/drbd0 bs=24k count=681 oflag=direct 2>&1");
    let d = u.start();
    wait_udrbd(&d, "SyncTarget", "Inconsistent/UpToDate", WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let left = out_of_sync_kib(&status_json(&d));
    assert!(left > DATA_KIB / 2, "512 KiB/s: most is left ({left} KiB)");
    vm.exec("drbdsetup-84 disk-options 0 --c-plan-ahead=0 --resync-rate=16M 2>&1");
    let changed = Instant::now();
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    let took = changed.elapsed();
    println!("{left} KiB left at the change; done {took:?} after it");
    assert!(
        d.log_text()
            .contains("the peer's resync options taken: resync-rate 16384K"),
        "{}",
        d.log_text()
    );
    // The old pace needed left / 512 s for the rest.
    assert!(
        took < Duration::from_secs(left / 512 / 2),
        "{took:?} for {left} KiB"
    );
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    assert_same_data_areas(&vm, &u.disk, DATA_KIB, &d);
    vm.assert_clean_dmesg(&|| d.log_text());
}

/// The (eliminated, transferred, total) KiB of the last "had equal checksums" line in `log`
/// (DRBD's drbd_resync_finished with a csums-alg), and the line from the percentage on.
fn equal_checksums(log: &str) -> Option<((u64, u64, u64), String)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("had equal checksums"))?;
    let from = line[..line.find(" % had")?]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let line = line[from..].trim_end().to_string();
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [_, eliminated, transferred, total] = numbers[..] else {
        return None;
    };
    Some(((eliminated, transferred, total), line))
}

/// Overwrites `data` at `offset` of udrbd's backing file, behind the replication's back.
fn write_behind(u: &Udrbd, offset: u64, data: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&u.disk)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// csums-alg crc32c on both nodes; udrbd's disk starts as zeros, as the guest's does.
///
/// 1. 1 MiB of random bytes written to udrbd's backing file at 4 MiB, then udrbd's `primary
///    --force`: the kernel, SyncTarget of the full sync, asks with P_CSUM_RS_REQUEST and udrbd
///    answers a block with the same digest with P_RS_IS_IN_SYNC. Only that MiB moves (and
///    the rest of a request that straddles it), and both sides log the same "had equal
///    checksums" line.
/// 2. One block at 10 MiB changed on udrbd's disk, udrbd made Secondary, and the kernel's
///    `invalidate-remote`: udrbd, SyncTarget, asks with digests and the kernel compares; the
///    changed block comes back from the kernel.
///
/// Both times the data areas end identical.
#[test]
fn a_resync_with_csums_alg_moves_only_the_blocks_that_differ_both_ways() {
    use std::io::Read;
    require_root();
    let (u, vm) = udrbd_and_guest(
        17540,
        UdrbdOptions {
            random: false,
            net: format!("{UDRBD_NET} csums-alg crc32c;"),
            ..UdrbdOptions::default()
        },
        "kresync-csums",
        &["--net-opts", "--connect-int=2 --csums-alg=crc32c"],
    );
    let mut random = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    write_behind(&u, 4 << 20, &random);
    let d = u.start();
    force_primary(&d);
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    let dmesg = vm.exec("dmesg");
    let (kib, line) = equal_checksums(&dmesg).unwrap_or_else(|| panic!("{dmesg}"));
    println!("full sync to the kernel: {line}");
    let (eliminated, transferred, total) = kib;
    assert_eq!(
        (total, eliminated + transferred),
        (DATA_KIB, DATA_KIB),
        "{line}"
    );
    // A request is at most 128 KiB: the two that straddle the MiB's ends, at the most.
    assert!((1024..=1024 + 256).contains(&transferred), "{line}");
    let (_, ours) = equal_checksums(&d.log_text()).unwrap_or_else(|| panic!("{}", d.log_text()));
    assert_eq!(ours, line, "udrbd, the SyncSource, counted the same");
    assert_same_data_areas(&vm, &u.disk, DATA_KIB, &d);

    write_behind(&u, 10 << 20, b"changed behind the replication's back");
    d.ok(&["secondary", "r0"]);
    vm.exec("drbdsetup-84 invalidate-remote 0 2>&1");
    let t0 = Instant::now();
    while !d.log_text().contains("Resync done (SyncTarget)") {
        assert!(
            t0.elapsed() < WAIT,
            "no resync from the kernel\n{}\n{}\n{}",
            d.log_text(),
            status_json(&d),
            vm.exec("dmesg | tail -40; cat /proc/drbd")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    vm.wait("ds:UpToDate/UpToDate", WAIT, &|| d.log_text());
    let log = d.log_text();
    let ((eliminated, transferred, total), ours) =
        equal_checksums(&log).unwrap_or_else(|| panic!("{log}"));
    println!("resync from the kernel: {ours}");
    assert_eq!(
        (total, eliminated + transferred),
        (DATA_KIB, DATA_KIB),
        "{ours}"
    );
    assert!(
        (4..=128).contains(&transferred),
        "one changed block: {ours}"
    );
    let dmesg = vm.exec("dmesg");
    let (_, theirs) = equal_checksums(&dmesg).unwrap_or_else(|| panic!("{dmesg}"));
    assert_eq!(theirs, ours, "the kernel, the SyncSource, counted the same");
    assert_same_data_areas(&vm, &u.disk, DATA_KIB, &d);
    vm.assert_clean_dmesg(&|| d.log_text());
}
