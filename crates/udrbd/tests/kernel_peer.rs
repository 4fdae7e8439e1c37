//! udrbd against a real kernel DRBD 8.4.11 peer: Debian 12's own kernel with its in-tree
//! `drbd.ko`, booted in qemu (TCG) by `shared/tools/kdrbd-vm` (beside the repository; the
//! environment variable `KDRBD_VM` may name the script instead). The guest's DRBD is reachable
//! at host `127.0.0.1:HP` and connects out to host `127.0.0.1:PP`.
//!
//! The first two tests are the two directions of the handshake, each made the only possible one:
//!
//! - [`kernel_connects_to_a_listening_udrbd`]: udrbd starts first and listens on
//!   `127.0.0.1:PP`; its peer address is a port where nothing listens, so udrbd's own connect
//!   attempts all fail. Then the kernel node boots and connects: **udrbd accepts**.
//! - [`udrbd_connects_to_a_waiting_kernel`]: the kernel node boots first and waits in
//!   `WFConnection`; its peer port has no listener (udrbd listens on another port), so its own
//!   connect attempts all fail. Then udrbd starts and connects to `127.0.0.1:HP`: **udrbd
//!   connects**.
//!
//! With both sides reachable, DRBD's connect race lets either side's sockets win (even one of
//! each for the data and the meta socket), so a test could not tell which side it exercised.
//! Here each test also checks the guest's `/proc/net/tcp`: both established DRBD sockets are
//! the guest's outgoing ones (remote port PP) in the first test, and accepted by the guest
//! (local port 7789) in the second. Each side waits `connect-int` (10 s, DRBD's default, on
//! both) for the peer's second socket, so the handshake completes 10-14 s after the first
//! socket.
//!
//! A third test, [`both_sides_connect_and_the_race_resolves`], is the usual setup (each side
//! can reach the other) started at the same time: whichever mix the race gives must connect.
//!
//! A fourth test, [`kernel_primary_syncs_to_udrbd`], turns the data around: the kernel node is
//! Primary with random data and udrbd, on a zeroed disk, connects and becomes the SyncTarget of
//! a full sync; then the kernel's own writes must replicate to udrbd (protocol C), and after a
//! disconnect with scattered writes on the kernel, the incremental resync (RLE bitmap) moves
//! exactly the changed blocks.
//!
//! After the handshake each of the first three tests makes udrbd `primary --force` on a data
//! area full of random bytes, waits for the full sync to the kernel node (`UpToDate/UpToDate`
//! in its `/proc/drbd`) and compares the md5 of both data areas (udrbd's backing file, the
//! guest's `/dev/ram0` read with O_DIRECT). Then it writes, zeroes and trims through udrbd's NBD
//! export and compares again. Finally the guest's `dmesg` must show the agreed protocol version
//! and no protocol error.
//!
//! The tests need root only for `kdrbd-vm build` (apt-get: qemu-system-x86, busybox-static,
//! cpio, kmod, and the kernel and drbd-utils packages); once the cache
//! (`/var/cache/kdrbd-vm`) is complete, build returns at once. They never skip: a VM that
//! cannot be built or booted fails them. Each guest uses about 300 MB of host memory.

mod kernelvm;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use kernelvm::*;
use support::*;

/// The data area in KiB that both sides must report (the guest's 16 MiB brd less 40 KiB of
/// internal meta-data).
const DATA_KIB: u64 = 16344;

/// Both sides connected: udrbd's `wait-connect`, then the guest's `cs:Connected`; both report
/// the same size and `Inconsistent/Inconsistent` (fresh meta-data on both).
fn wait_connected(d: &TestDaemon, vm: &KernelVm) {
    let t0 = Instant::now();
    let o = d.cli(&[
        "wait-connect",
        "r0",
        "--timeout",
        &WAIT.as_secs().to_string(),
    ]);
    assert!(
        o.status.success(),
        "udrbd wait-connect: {}\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text(),
        vm.log_tail()
    );
    let proc_drbd = vm.wait("cs:Connected", WAIT, &|| d.log_text());
    eprintln!("connected in {:.1?}: {}", t0.elapsed(), proc_drbd.trim());
    assert!(
        proc_drbd.contains("ro:Secondary/Secondary ds:Inconsistent/Inconsistent"),
        "{proc_drbd}"
    );
    assert_eq!(d.ok(&["cstate", "r0"]).trim(), "Connected");
    assert_eq!(d.ok(&["dstate", "r0"]).trim(), "Inconsistent/Inconsistent");
    let udrbd_kib = status_json(d)["devices"][0]["size"].as_u64().unwrap();
    let guest_sectors: u64 = vm.exec("cat /sys/block/drbd0/size").trim().parse().unwrap();
    assert_eq!(udrbd_kib, DATA_KIB, "udrbd's device size");
    assert_eq!(guest_sectors / 2, DATA_KIB, "the guest's device size");
}

/// udrbd `primary --force` (its random data area becomes the data), the full sync to the
/// kernel node, md5 of both data areas; then writes, zeroes and a trim through udrbd's NBD
/// export, and md5 again.
fn full_sync_then_writes(u: &Udrbd, d: &TestDaemon, vm: &KernelVm) {
    let len = DATA_KIB * 1024;
    let before = md5_hex(&u.data_area(len));
    let t0 = Instant::now();
    d.ok(&["primary", "r0", "--force"]);
    vm.wait(
        "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    eprintln!("full sync of {DATA_KIB} KiB in {:.1?}", t0.elapsed());
    assert_eq!(d.ok(&["role", "r0"]).trim(), "Primary/Secondary");
    assert_eq!(d.ok(&["dstate", "r0"]).trim(), "UpToDate/UpToDate");
    let host = md5_hex(&u.data_area(len));
    assert_eq!(host, before, "udrbd's data changed during the sync");
    assert_eq!(
        vm.backing_md5(len),
        host,
        "the kernel node's data differs after the full sync\n{}",
        d.log_text()
    );

    // Writes, a write-zeroes and a trim through udrbd's export (protocol C: complete once the
    // kernel node has them).
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = int(sys.argv[2])
assert h.get_size() == size, (h.get_size(), size)
assert h.can_trim() and h.can_zero()
K = 1024
h.pwrite(bytes([0xab]) * (64 * K), 0)
h.pwrite(bytes([0x5c]) * (4 * K), 5 * 1024 * K)
h.pwrite(bytes([0x17]) * (256 * K), 8 * 1024 * K + 12 * K)
h.pwrite(bytes([0x42]) * (4 * K), size - 4 * K)
h.zero(128 * K, 2 * 1024 * K)
h.trim(1024 * K, 12 * 1024 * K)
h.flush()
assert h.pread(64 * K, 0) == bytes([0xab]) * (64 * K)
h.shutdown()
"#;
    let o = Command::new("/usr/bin/python3")
        .args(["-c", script, &d.uri("r0"), &len.to_string()])
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "writing through udrbd's export failed: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
    let data = u.data_area(len);
    assert!(data[..64 << 10].iter().all(|&b| b == 0xab));
    assert!(
        data[2 << 20..(2 << 20) + (128 << 10)]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(data[(len - 4096) as usize..].iter().all(|&b| b == 0x42));
    let host = md5_hex(&data);
    assert_ne!(host, before);
    assert_eq!(
        vm.backing_md5(len),
        host,
        "the kernel node's data differs after the writes through udrbd\n{}",
        d.log_text()
    );
    assert!(
        vm.proc_drbd()
            .contains("cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate"),
        "{}",
        vm.proc_drbd()
    );
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

/// udrbd listens first; the kernel node boots later and connects to it. udrbd's peer address
/// has no listener, so the connection can only be the kernel's: udrbd accepts.
#[test]
fn kernel_connects_to_a_listening_udrbd() {
    require_libnbd();
    ensure_vm_built();
    let ports = Ports {
        hp: 17311,
        pp: 17312,
        ap: 17313,
        // udrbd's peer port: nothing listens there.
        dead: 17314,
        udrbd_listen: 17312,
        udrbd_peer: 17314,
    };
    ports.check_free();
    let t0 = Instant::now();
    let u = Udrbd::prepare(ports);
    let d = u.start();
    wait_for_listener(&d, ports.udrbd_listen, Duration::from_secs(20));
    assert_eq!(d.ok(&["cstate", "r0"]).trim(), "WFConnection");
    let vm = KernelVm::start(&u.vm_dir(), "kacc", ports);
    wait_connected(&d, &vm);
    let (accepted, outgoing, table) = vm.drbd_sockets();
    assert_eq!(
        (accepted, outgoing),
        (0, 2),
        "expected the guest's two outgoing sockets only:\n{table}"
    );
    full_sync_then_writes(&u, &d, &vm);
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t0.elapsed());
}

/// The kernel node boots first and waits (WFConnection); then udrbd starts and connects to it.
/// The kernel's peer port has no listener (udrbd listens on another one), so the connection
/// can only be udrbd's: udrbd connects.
#[test]
fn udrbd_connects_to_a_waiting_kernel() {
    require_libnbd();
    ensure_vm_built();
    let ports = Ports {
        hp: 17321,
        pp: 17322,
        ap: 17323,
        // The kernel's peer port: nothing listens there.
        dead: 17322,
        udrbd_listen: 17324,
        udrbd_peer: 17321,
    };
    ports.check_free();
    let t0 = Instant::now();
    let u = Udrbd::prepare(ports);
    let vm = KernelVm::start(&u.vm_dir(), "kconn", ports);
    let proc_drbd = vm.proc_drbd();
    assert!(proc_drbd.contains("cs:WFConnection"), "{proc_drbd}");
    let d = u.start();
    wait_connected(&d, &vm);
    let (accepted, outgoing, table) = vm.drbd_sockets();
    assert_eq!(
        (accepted, outgoing),
        (2, 0),
        "expected two sockets accepted by the guest only:\n{table}"
    );
    full_sync_then_writes(&u, &d, &vm);
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t0.elapsed());
}

/// Both sides reachable, as in a real setup: the kernel node boots (`--no-wait`) while udrbd
/// starts. udrbd's first connects reach qemu's port forward before the guest listens (accepted,
/// then closed), then DRBD's connect race decides which side's socket becomes the data socket
/// and which the meta socket; any mix must lead to one connection.
#[test]
fn both_sides_connect_and_the_race_resolves() {
    require_libnbd();
    ensure_vm_built();
    let ports = Ports {
        hp: 17331,
        pp: 17332,
        ap: 17333,
        // Unused: both sides' addresses are real here.
        dead: 17334,
        udrbd_listen: 17332,
        udrbd_peer: 17331,
    };
    ports.check_free();
    let t0 = Instant::now();
    let u = Udrbd::prepare(ports);
    let vm = KernelVm::start_with(&u.vm_dir(), "krace", ports, &["--no-wait"]);
    let d = u.start();
    wait_connected(&d, &vm);
    let (accepted, outgoing, table) = vm.drbd_sockets();
    eprintln!("race: the guest accepted {accepted} and opened {outgoing} of the DRBD sockets");
    assert_eq!(
        accepted + outgoing,
        2,
        "expected two established DRBD sockets in the guest:\n{table}"
    );
    full_sync_then_writes(&u, &d, &vm);
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t0.elapsed());
}

/// The other direction of the data: the kernel node is the SyncSource. The guest boots
/// `--role primary` (`primary --force` on its fresh RAM disk, still `WFConnection`) and fills
/// its whole data area with random bytes; then udrbd starts on a zeroed backing file with fresh
/// meta-data (`Inconsistent`) and connects to it (the kernel's peer port has no listener, as in
/// [`udrbd_connects_to_a_waiting_kernel`]). udrbd's current UUID is "just created", so the
/// kernel starts a full sync as SyncSource and udrbd, the SyncTarget, requests every block
/// (in 8.4 the SyncTarget drives the resync). After `UpToDate/UpToDate` on both sides the data
/// areas must be equal. Then the kernel writes blocks on `/dev/drbd0` (O_DIRECT and an fsync,
/// protocol C): each must be in udrbd's backing file as soon as the guest's `dd` returns.
#[test]
fn kernel_primary_syncs_to_udrbd() {
    ensure_vm_built();
    let ports = Ports {
        hp: 17341,
        pp: 17342,
        ap: 17343,
        // The kernel's peer port: nothing listens there.
        dead: 17342,
        udrbd_listen: 17344,
        udrbd_peer: 17341,
    };
    ports.check_free();
    let t0 = Instant::now();
    let len = DATA_KIB * 1024;
    let u = Udrbd::prepare_zeroed(ports);
    let vm = KernelVm::start_with(&u.vm_dir(), "ksrc", ports, &["--role", "primary"]);
    let proc_drbd = vm.proc_drbd();
    assert!(
        proc_drbd.contains("cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown"),
        "{proc_drbd}"
    );
    // The whole data area (16344 KiB = 681 × 24 KiB), random, while nobody is connected.
    let t_fill = Instant::now();
    vm.exec("dd if=/dev/urandom of=/dev/drbd0 bs=24k count=681 oflag=direct 2>&1");
    let guest_before = vm.backing_md5(len);
    eprintln!("guest data area filled in {:.1?}", t_fill.elapsed());
    assert_ne!(
        guest_before,
        md5_hex(&vec![0u8; len as usize]),
        "the guest's data area is still zero"
    );
    assert!(
        u.data_area(len).iter().all(|&b| b == 0),
        "udrbd's data area is not zero before the sync"
    );

    // udrbd connects; it must be the SyncTarget of a full sync. Sample its states until both
    // sides are UpToDate.
    let t_conn = Instant::now();
    let d = u.start();
    assert_eq!(d.ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    assert_eq!(d.ok(&["dstate", "r0"]).trim(), "Inconsistent/DUnknown");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut connected_at = None;
    let mut sync_target_at = None;
    let deadline = Instant::now() + WAIT;
    loop {
        let cstate = d.ok(&["cstate", "r0"]).trim().to_string();
        let dstate = d.ok(&["dstate", "r0"]).trim().to_string();
        if connected_at.is_none() && cstate != "WFConnection" && cstate != "WFReportParams" {
            connected_at = Some(t_conn.elapsed());
        }
        if sync_target_at.is_none() && cstate == "SyncTarget" {
            sync_target_at = Some(t_conn.elapsed());
        }
        if seen.last() != Some(&(cstate.clone(), dstate.clone())) {
            seen.push((cstate.clone(), dstate.clone()));
        }
        if cstate == "Connected" && dstate == "UpToDate/UpToDate" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "udrbd not Connected UpToDate/UpToDate after {WAIT:?}; states seen: {seen:?}\n{}\n{}",
            d.log_text(),
            vm.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let synced_at = t_conn.elapsed();
    eprintln!(
        "udrbd: handshake after {connected_at:.1?}, SyncTarget at {sync_target_at:.1?}, \
         UpToDate/UpToDate at {synced_at:.1?}; states seen: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(c, ds)| c == "SyncTarget" && ds == "Inconsistent/UpToDate"),
        "udrbd was never SyncTarget Inconsistent/UpToDate; states seen: {seen:?}\n{}",
        d.log_text()
    );
    assert!(
        !seen.iter().any(|(c, _)| c == "SyncSource"),
        "udrbd was SyncSource; states seen: {seen:?}"
    );
    assert_eq!(d.ok(&["role", "r0"]).trim(), "Secondary/Primary");
    let proc_drbd = vm.wait(
        "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    eprintln!("guest: {}", proc_drbd.trim());
    let (accepted, outgoing, table) = vm.drbd_sockets();
    assert_eq!(
        (accepted, outgoing),
        (2, 0),
        "expected two sockets accepted by the guest only:\n{table}"
    );
    let dmesg = vm.exec("dmesg");
    assert!(
        dmesg.contains(&format!(
            "Began resync as SyncSource (will sync {DATA_KIB} KB"
        )),
        "the guest did not begin a full sync as SyncSource:\n{dmesg}"
    );
    let host = md5_hex(&u.data_area(len));
    assert_eq!(
        vm.backing_md5(len),
        guest_before,
        "the guest's data changed during the sync"
    );
    assert_eq!(
        host,
        guest_before,
        "udrbd's data differs from the kernel's after the full sync\n{}",
        d.log_text()
    );

    // Writes on the kernel Primary, replicated with protocol C: once the guest's dd returns,
    // udrbd has written the blocks. (offset KiB, length KiB): the first block, a single block,
    // one 64 KiB write across a 4 MiB boundary (one AL extent to the next), the last block.
    let t_writes = Instant::now();
    let writes: [(u64, u64); 4] = [(0, 4), (1236, 4), (4096 - 32, 64), (DATA_KIB - 4, 4)];
    for (i, &(off_kib, len_kib)) in writes.iter().enumerate() {
        let out = vm.exec(&format!(
            "dd if=/dev/urandom of=/tmp/w{i} bs=1024 count={len_kib} 2>/dev/null && \
             dd if=/tmp/w{i} of=/dev/drbd0 bs={len_kib}k seek={} count=1 \
             oflag=direct,seek_bytes conv=fsync 2>&1 && md5sum </tmp/w{i}",
            off_kib << 10,
        ));
        let guest_md5 = out
            .lines()
            .last()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("")
            .to_string();
        assert_eq!(guest_md5.len(), 32, "no md5 from the guest: {out}");
        let data = u.data_area(len);
        let (a, b) = (
            (off_kib << 10) as usize,
            ((off_kib + len_kib) << 10) as usize,
        );
        assert_eq!(
            md5_hex(&data[a..b]),
            guest_md5,
            "the kernel's write of {len_kib} KiB at {off_kib} KiB is not in udrbd's backing \
             file after the guest's dd returned (protocol C)\n{out}\n{}",
            d.log_text()
        );
    }
    eprintln!(
        "{} writes from the kernel in {:.1?}",
        writes.len(),
        t_writes.elapsed()
    );
    let host = md5_hex(&u.data_area(len));
    assert_ne!(host, guest_before);
    assert_eq!(
        vm.backing_md5(len),
        host,
        "the data areas differ after the kernel's writes\n{}",
        d.log_text()
    );
    // The kernel sent the full sync and each write once (`ns` in KiB), and nothing is out of
    // sync.
    let sent_kib = DATA_KIB + writes.iter().map(|w| w.1).sum::<u64>();
    let proc_drbd = vm.proc_drbd();
    assert!(
        proc_drbd.contains("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate")
            && proc_drbd.contains(&format!("ns:{sent_kib} nr:0 "))
            && proc_drbd.contains("oos:0"),
        "expected ns:{sent_kib} and oos:0: {proc_drbd}"
    );
    assert_eq!(d.ok(&["cstate", "r0"]).trim(), "Connected");
    assert_eq!(d.ok(&["dstate", "r0"]).trim(), "UpToDate/UpToDate");

    // Incremental resync from the kernel: udrbd disconnects, the kernel writes 30 scattered
    // blocks, udrbd connects again. The kernel's `ns:` and
    // udrbd's `received` grow by exactly the changed blocks; the bitmaps travel RLE-compressed
    // (DRBD's default use-rle yes), one packet each way.
    let k0 = parse_proc_counters(&vm.proc_drbd());
    let received = |d: &TestDaemon| {
        status_json(d)["connections"][0]["peer_devices"][0]["received"]
            .as_u64()
            .unwrap()
    };
    let r0 = received(&d);
    let mark = vm.exec("dmesg").lines().count();
    let t_inc = Instant::now();
    d.ok(&["disconnect", "r0"]);
    vm.wait("cs:WFConnection", WAIT, &|| d.log_text());
    let blocks: Vec<u64> = (0..30u64).map(|i| (i * 131 + 7) % (DATA_KIB / 4)).collect();
    let cmd: String = blocks
        .iter()
        .map(|b| {
            format!(
                "dd if=/dev/urandom of=/dev/drbd0 bs=4096 seek={b} count=1 oflag=direct \
                 2>/dev/null || echo FAILED;"
            )
        })
        .collect();
    let out = vm.exec(&cmd);
    assert!(!out.contains("FAILED"), "{out}");
    d.ok(&["connect", "r0"]);
    vm.wait(
        "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    let k1 = parse_proc_counters(&vm.proc_drbd());
    let r1 = received(&d);
    eprintln!(
        "incremental resync of 30 blocks (120 KiB) from the kernel in {:.1?}: kernel {k0:?} -> \
         {k1:?}, udrbd received {r0} -> {r1} KiB",
        t_inc.elapsed(),
    );
    assert_eq!(
        k1.ns - k0.ns,
        120,
        "the kernel sent {k1:?} (before: {k0:?})"
    );
    assert_eq!(r1 - r0, 120, "udrbd received {} KiB", r1 - r0);
    let dmesg = vm.exec("dmesg");
    let stats: Vec<&str> = dmesg
        .lines()
        .skip(mark)
        .filter(|l| l.contains("bitmap stats"))
        .collect();
    assert!(
        stats.len() == 2 && stats.iter().all(|l| l.contains("plain 0(0), RLE ")),
        "expected an RLE bitmap each way: {stats:?}"
    );
    let host = md5_hex(&u.data_area(len));
    assert_eq!(
        vm.backing_md5(len),
        host,
        "the data areas differ after the incremental resync\n{}",
        d.log_text()
    );
    assert_eq!(d.ok(&["dstate", "r0"]).trim(), "UpToDate/UpToDate");
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t0.elapsed());
}

/// Overwrites 256 KiB at `offset` of udrbd's backing file with 0xEE (under the running
/// daemon, as a disk that went bad would).
fn corrupt_udrbd(u: &Udrbd, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&u.disk)
        .unwrap();
    f.write_all_at(&[0xee; 256 << 10], offset).unwrap();
    f.sync_all().unwrap();
}

/// Overwrites 256 KiB at `offset` of the guest's backing RAM disk with 0xEE, under DRBD.
fn corrupt_guest(vm: &KernelVm, offset: u64) {
    vm.exec(&format!(
        "dd if=/dev/zero bs=4096 count=64 2>/dev/null | tr '\\000' '\\356' | \
         dd of=/dev/ram0 bs=4096 seek={} oflag=direct 2>&1",
        offset / 4096
    ));
}

/// One full sync that `start` begins (the caller corrupted the future target's disk): the data areas differ before it and are equal after,
/// both sides `UpToDate/UpToDate`, and each side logged one more full resync in its `role`
/// ("SyncSource" / "SyncTarget" for udrbd; the kernel the other).
fn full_resync(
    what: &str,
    u: &Udrbd,
    d: &TestDaemon,
    vm: &KernelVm,
    udrbd_side: &str,
    start: &dyn Fn(),
) {
    let len = DATA_KIB * 1024;
    let kernel_side = if udrbd_side == "SyncSource" {
        "SyncTarget"
    } else {
        "SyncSource"
    };
    let began = |text: &str, side: &str| {
        text.matches(&format!("Began resync as {side} (will sync {DATA_KIB} KB"))
            .count()
    };
    let (udrbd_before, kernel_before) = (
        began(&d.log_text(), udrbd_side),
        began(&vm.exec("dmesg"), kernel_side),
    );
    assert_ne!(
        md5_hex(&u.data_area(len)),
        vm.backing_md5(len),
        "{what}: the data areas are equal before the resync"
    );
    let t0 = Instant::now();
    start();
    let deadline = Instant::now() + WAIT;
    loop {
        let udrbd_done = d.ok(&["cstate", "r0"]).trim() == "Connected"
            && d.ok(&["dstate", "r0"]).trim() == "UpToDate/UpToDate"
            && began(&d.log_text(), udrbd_side) > udrbd_before;
        let proc_drbd = vm.proc_drbd();
        if udrbd_done
            && proc_drbd.contains("cs:Connected")
            && proc_drbd.contains("ds:UpToDate/UpToDate")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no full resync to UpToDate/UpToDate after {WAIT:?}\nguest: {proc_drbd}\n{}\n{}",
            d.log_text(),
            vm.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{what}: full resync in {:.1?}", t0.elapsed());
    assert_eq!(
        began(&vm.exec("dmesg"), kernel_side),
        kernel_before + 1,
        "{what}: the guest did not run one full resync as {kernel_side}\n{}",
        vm.exec("dmesg")
    );
    assert_eq!(
        md5_hex(&u.data_area(len)),
        vm.backing_md5(len),
        "{what}: the data areas differ after the resync\n{}",
        d.log_text()
    );
}

/// `invalidate` and `invalidate-remote`, issued on either side, against a kernel peer. In 8.4
/// they are cluster-wide state changes (P_STATE_CHG_REQ with conn StartingSyncT/S); the side
/// that agrees applies the change at once, both sides set every bit, and the source's
/// P_SYNC_UUID starts the resync: no bitmap exchange (a kernel sends none). Each direction
/// first corrupts 256 KiB of the future target's disk under the running node; the full
/// resync must repair it.
#[test]
fn invalidate_and_invalidate_remote_with_a_kernel_peer() {
    require_libnbd();
    ensure_vm_built();
    let ports = Ports {
        hp: 17351,
        pp: 17352,
        ap: 17353,
        // The kernel's peer port: nothing listens there.
        dead: 17352,
        udrbd_listen: 17354,
        udrbd_peer: 17351,
    };
    ports.check_free();
    let t0 = Instant::now();
    let u = Udrbd::prepare(ports);
    let vm = KernelVm::start(&u.vm_dir(), "kinv", ports);
    let d = u.start();
    wait_connected(&d, &vm);
    full_sync_then_writes(&u, &d, &vm);

    // udrbd Primary, the kernel Secondary.
    corrupt_guest(&vm, 1 << 20);
    full_resync(
        "the kernel's invalidate",
        &u,
        &d,
        &vm,
        "SyncSource",
        &|| {
            vm.exec("drbdsetup-84 invalidate 0 2>&1");
        },
    );
    corrupt_guest(&vm, 6 << 20);
    full_resync(
        "udrbd's invalidate-remote",
        &u,
        &d,
        &vm,
        "SyncSource",
        &|| {
            d.ok(&["invalidate-remote", "r0"]);
        },
    );
    // Both Secondary: the kernel is the source now.
    d.ok(&["secondary", "r0"]);
    corrupt_udrbd(&u, 3 << 20);
    full_resync("udrbd's invalidate", &u, &d, &vm, "SyncTarget", &|| {
        d.ok(&["invalidate", "r0"]);
    });
    corrupt_udrbd(&u, 9 << 20);
    full_resync(
        "the kernel's invalidate-remote",
        &u,
        &d,
        &vm,
        "SyncTarget",
        &|| {
            vm.exec("drbdsetup-84 invalidate-remote 0 2>&1");
        },
    );
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t0.elapsed());
}
