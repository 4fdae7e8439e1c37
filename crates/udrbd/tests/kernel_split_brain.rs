//! Split brain between udrbd and a real kernel DRBD 8.4.11 node (`shared/tools/kdrbd-vm`,
//! harness in `kernelvm/mod.rs`). Both sides must read each other's generation UUIDs the same
//! way: a split brain taken for an ordinary resync would overwrite one side's writes without
//! anyone deciding it. Both run `after-sb-0pri discard-zero-changes`.
//!
//! [`split_brain_with_the_kernel_detected_resolved_both_ways_and_automatically`], one guest:
//! 1. Both sides promoted and written while disconnected: at the connect both detect the split
//!    brain, neither policy applies (both have changes), both go StandAlone.
//!    `connect --discard-my-data` on udrbd: udrbd becomes the SyncTarget, its writes are gone,
//!    the kernel's are on both, the data areas are identical.
//! 2. The same, resolved on the kernel's side (`drbdsetup connect --discard-my-data`): udrbd
//!    is the SyncSource and the kernel's writes are gone.
//! 3. Both promoted while disconnected, only the kernel writes: discard-zero-changes resolves
//!    it on both sides without a hand, from the kernel to udrbd.
//!
//! Needs root (the kernel node's build) and python3-libnbd; about 300 MB of host memory.

mod kernelvm;
mod support;

use std::time::Instant;

use kernelvm::*;
use support::*;

/// The data area in KiB (the guest's 16 MiB brd less 40 KiB of internal meta-data).
const DATA_KIB: u64 = 16344;
/// The net options both sides share (the guest's as drbdsetup-84 flags).
const UDRBD_NET: &str = "protocol C; connect-int 2; ping-int 10; ping-timeout 20; timeout 19; \
                         after-sb-0pri discard-zero-changes;";
const KERNEL_NET: &str = "--connect-int=2 --after-sb-0pri=discard-zero-changes";

/// How many of the 8 blocks from `first` written with `tag` differ on udrbd (read through its
/// export, promoted for the read).
fn udrbd_mismatches(d: &TestDaemon, first: u64, tag: &str) -> usize {
    d.ok(&["primary", "r0"]);
    let out = nbd_tagged_blocks(d, "read", first, 8, tag);
    d.ok(&["secondary", "r0"]);
    out.lines().filter(|l| l.starts_with("mismatch")).count()
}

/// The guest's blocks `first..first+count` (4 KiB), each of random bytes, written with
/// O_DIRECT; their md5.
fn guest_write(vm: &KernelVm, first: u64, count: u64) -> String {
    vm.exec(&format!(
        "dd if=/dev/urandom of=/dev/drbd0 bs=4096 seek={first} count={count} oflag=direct \
         2>/dev/null && dd if=/dev/drbd0 bs=4096 skip={first} count={count} iflag=direct \
         2>/dev/null | md5sum"
    ))
    .split_whitespace()
    .next()
    .unwrap_or("")
    .to_string()
}

/// The md5 of blocks `first..first+count` of the guest's backing device.
fn guest_md5(vm: &KernelVm, first: u64, count: u64) -> String {
    vm.exec(&format!(
        "dd if={} bs=4096 skip={first} count={count} iflag=direct 2>/dev/null | md5sum",
        vm.backing
    ))
    .split_whitespace()
    .next()
    .unwrap_or("")
    .to_string()
}

/// Both sides disconnected and promoted (each starts a data generation of its own), then
/// `udrbd_writes` and `kernel_writes` blocks written at 100.. on udrbd and 200.. on the
/// kernel, both demoted. The md5 of the kernel's written blocks.
fn diverge(
    d: &TestDaemon,
    vm: &KernelVm,
    round: u64,
    udrbd_writes: u64,
    kernel_writes: u64,
) -> String {
    d.ok(&["disconnect", "r0"]);
    vm.wait("cs:(WFConnection|StandAlone)", WAIT, &|| d.log_text());
    d.ok(&["primary", "r0"]);
    if udrbd_writes > 0 {
        nbd_tagged_blocks(
            d,
            "write",
            100 * round,
            udrbd_writes,
            &format!("udrbd{round}"),
        );
    }
    d.ok(&["secondary", "r0"]);
    vm.exec("drbdsetup-84 primary 0");
    let md5 = if kernel_writes > 0 {
        guest_write(vm, 100 * round + 50, kernel_writes)
    } else {
        String::new()
    };
    vm.exec("drbdsetup-84 secondary 0");
    md5
}

/// The kernel and udrbd both `Connected UpToDate/UpToDate`, and their data areas equal.
fn wait_in_sync_and_identical(u: &Udrbd, d: &TestDaemon, vm: &KernelVm) {
    vm.wait(
        "cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
    assert_same_data_areas(vm, &u.disk, DATA_KIB, d);
}

const UNRESOLVED: &str = "Split-Brain detected but unresolved, dropping connection!";

/// udrbd's `connect` of diverged sides: udrbd detects the split brain (`UNRESOLVED` in its
/// log once more) and goes StandAlone. The kernel either detected it too (StandAlone,
/// `UNRESOLVED` in its dmesg since: true) or saw the
/// connection torn down before it looked at udrbd's UUIDs and waits for the next connect
/// (WFConnection: false), both as DRBD's user guide describes a split brain. It must not
/// have connected, or synced either way.
fn connect_into_split_brain(d: &TestDaemon, vm: &KernelVm) -> bool {
    let udrbd_before = log_count(d, UNRESOLVED);
    let dmesg_mark = vm.exec("dmesg").lines().count();
    d.ok(&["connect", "r0"]);
    // udrbd was StandAlone before the connect too: its log says when the connect ended.
    let t0 = Instant::now();
    while log_count(d, UNRESOLVED) == udrbd_before {
        assert!(
            t0.elapsed() < WAIT,
            "udrbd did not detect the split brain\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_udrbd(d, "StandAlone", "UpToDate/DUnknown", WAIT);
    assert_eq!(
        log_count(d, UNRESOLVED),
        udrbd_before + 1,
        "{}",
        d.log_text()
    );
    // The kernel has settled once it is StandAlone or back in WFConnection after udrbd's
    // connect (udrbd's StandAlone means that connect ended).
    let proc_drbd = vm.wait("cs:(StandAlone|WFConnection) ", WAIT, &|| d.log_text());
    let dmesg = vm.exec("dmesg");
    let new_dmesg: Vec<&str> = dmesg.lines().skip(dmesg_mark).collect();
    assert!(
        !new_dmesg.iter().any(|l| l.contains("Began resync")),
        "the kernel resynced after a split brain:\n{}",
        new_dmesg.join("\n")
    );
    let detected = new_dmesg.iter().any(|l| l.contains(UNRESOLVED));
    assert_eq!(
        detected,
        proc_drbd.contains("cs:StandAlone"),
        "{proc_drbd}\n{}",
        new_dmesg.join("\n")
    );
    println!(
        "split brain: udrbd StandAlone, the kernel {}",
        if detected {
            "detected it too (StandAlone)"
        } else {
            "saw the connection torn down first (WFConnection)"
        }
    );
    detected
}

fn log_count(d: &TestDaemon, what: &str) -> usize {
    d.log_text().matches(what).count()
}

#[test]
fn split_brain_with_the_kernel_detected_resolved_both_ways_and_automatically() {
    require_root();
    require_libnbd();
    let t0 = Instant::now();
    let (u, vm) = udrbd_and_guest(
        17500,
        UdrbdOptions {
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
        "ksplit",
        &[
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            "--c-plan-ahead=0 --resync-rate=400M",
        ],
    );
    let d = u.start();
    primary_and_full_sync(&d, &vm, t0);
    d.ok(&["secondary", "r0"]);

    // 1. Both wrote: detected on both sides, StandAlone; udrbd discards its data.
    let kernel_md5 = diverge(&d, &vm, 1, 8, 8);
    let kernel_detected = connect_into_split_brain(&d, &vm);
    d.ok(&["connect", "r0", "--discard-my-data"]);
    if kernel_detected {
        vm.connect(KERNEL_NET);
    }
    wait_in_sync_and_identical(&u, &d, &vm);
    assert_eq!(
        guest_md5(&vm, 150, 8),
        kernel_md5,
        "the kernel's writes are gone"
    );
    assert_eq!(
        udrbd_mismatches(&d, 100, "udrbd1"),
        8,
        "udrbd's discarded writes are still there"
    );
    eprintln!(
        "split brain 1 resolved by udrbd discarding, after {:.1?}",
        t0.elapsed()
    );

    // 2. Both wrote again; this time the kernel discards its data.
    let kernel_md5 = diverge(&d, &vm, 2, 8, 8);
    if !connect_into_split_brain(&d, &vm) {
        vm.disconnect();
    }
    vm.connect(&format!("{KERNEL_NET} --discard-my-data"));
    d.ok(&["connect", "r0"]);
    wait_in_sync_and_identical(&u, &d, &vm);
    assert_ne!(
        guest_md5(&vm, 250, 8),
        kernel_md5,
        "the kernel's discarded writes are still there"
    );
    assert_eq!(
        udrbd_mismatches(&d, 200, "udrbd2"),
        0,
        "udrbd's writes did not survive"
    );
    eprintln!(
        "split brain 2 resolved by the kernel discarding, after {:.1?}",
        t0.elapsed()
    );

    // 3. Both promoted, only the kernel wrote: discard-zero-changes, no hands.
    let resolved = "Split-Brain resolved";
    let udrbd_resolved = log_count(&d, resolved);
    let dmesg_mark = vm.exec("dmesg").lines().count();
    let kernel_md5 = diverge(&d, &vm, 3, 0, 8);
    d.ok(&["connect", "r0"]);
    wait_in_sync_and_identical(&u, &d, &vm);
    assert_eq!(
        guest_md5(&vm, 350, 8),
        kernel_md5,
        "the kernel's writes are gone"
    );
    assert_eq!(
        log_count(&d, resolved),
        udrbd_resolved + 1,
        "udrbd did not resolve a split brain\n{}",
        d.log_text()
    );
    let dmesg = vm.exec("dmesg");
    let new_dmesg: Vec<&str> = dmesg.lines().skip(dmesg_mark).collect();
    assert!(
        new_dmesg
            .iter()
            .any(|l| l.contains("Split-Brain detected, 0 primaries, automatically solved")),
        "the kernel did not solve the split brain itself:\n{}",
        new_dmesg.join("\n")
    );
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t0.elapsed());
}
