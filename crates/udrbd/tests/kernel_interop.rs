//! The kernel interop matrix of issue 7: udrbd against a real kernel DRBD 8.4.11 node in qemu
//! (`shared/tools/kdrbd-vm`, harness in `kernelvm/mod.rs`; `kernel_peer.rs` has the handshake
//! directions and the kernel-as-SyncSource full sync). Each test boots one guest and runs a
//! group of cases on it, to keep CI time sane:
//!
//! - [`udrbd_primary_full_and_incremental_sync_then_failover_to_the_kernel`]: udrbd Primary
//!   (`--force`) → full sync of 64 MiB to the kernel (its `nr:` counter is the whole device),
//!   writes through udrbd's NBD export; an incremental resync with an RLE bitmap; then udrbd is
//!   killed (SIGKILL) while a writer records its acknowledged writes, and the kernel, promoted,
//!   serves every one of them.
//! - [`bitmaps_of_a_192_mib_device`]: a device whose bitmap needs several plain packets
//!   (more than 32640 bits): an alternating-bit pattern that makes udrbd's RLE encoder fall
//!   back to a plain packet, then `use-rle no` on both sides in both directions.
//! - [`kernel_metadata_after_a_crash_and_failover_to_udrbd`]: the kernel Primary on a host file
//!   is power-cut while a writer logs its ACKs; udrbd (the surviving peer) is promoted and serves
//!   every ACKed write; then a second udrbd node attaches the kernel's image (udrbd replays the
//!   kernel's activity log) and the resync covers exactly the AL extents.
//! - [`cram_hmac_against_the_kernel`]: sha1 and sha256 with a shared secret connect; a wrong
//!   secret is refused by both sides.
//! - [`detach_and_attach_while_connected_on_either_side`]: udrbd Primary detaches and serves
//!   writes and reads through the kernel, then attaches and resyncs exactly what was written;
//!   the kernel detaches and attaches, and gets exactly what udrbd wrote meanwhile.
//! - [`protocol_a_against_the_kernel`], [`protocol_b_against_the_kernel`]: replication both
//!   ways under protocols A and B (the other tests run C).
//! - [`disks_of_different_sizes_against_the_kernel`]: the device is the smaller disk, its
//!   size udrbd's last agreed one across a restart, and a device with usable data is not
//!   shrunk at a connect, by either side.
//!
//! Every test ends with the guest's kernel log free of protocol errors. The tests need root
//! (they fail without it) and about 300 MB of host memory per guest.

mod kernelvm;
mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kernelvm::*;
use support::*;

/// The net options of every guest: quick reconnects.
const KERNEL_NET: &str = "--connect-int=2";
/// The disk options of every guest: a fixed, high resync rate.
const KERNEL_DISK: &str = "--c-plan-ahead=0 --resync-rate=400M";
/// udrbd's `net { }`: quick reconnects, generous timeouts (the kernel runs under TCG).
const UDRBD_NET: &str = "protocol C; connect-int 2; ping-int 10; ping-timeout 20; timeout 19;";

fn test_prelude(base: u16) -> Ports {
    require_root();
    require_libnbd();
    ensure_vm_built();
    let ports = Ports::both_ways(base);
    ports.check_free();
    ports
}

/// The guest `name` on a RAM disk of `size_mib`, with the tests' net and disk options,
/// booting while udrbd starts (`--no-wait`).
fn start_guest(u: &Udrbd, name: &str, ports: Ports, size_mib: u64) -> KernelVm {
    let size = size_mib.to_string();
    KernelVm::start_args(
        &u.vm_dir(),
        name,
        ports,
        &[
            "--size-mib",
            &size,
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            KERNEL_DISK,
            "--no-wait",
        ],
    )
}

/// udrbd `primary --force`, then the full sync to the kernel, until both sides say
/// Connected and UpToDate.
fn force_primary_and_full_sync(d: &TestDaemon, vm: &KernelVm) {
    d.ok(&["primary", "r0", "--force"]);
    vm.wait(
        "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
}

/// The data area of a device with internal meta-data, in KiB, as the guest reports it.
fn guest_size_kib(vm: &KernelVm) -> u64 {
    let sectors: u64 = vm.exec("cat /sys/block/drbd0/size").trim().parse().unwrap();
    sectors / 2
}

/// udrbd's peer-device counters (`received`, `sent`, `out-of-sync`), KiB.
fn udrbd_counters(d: &TestDaemon) -> (u64, u64, u64) {
    let s = status_json(d);
    let p = &s["connections"][0]["peer_devices"][0];
    (
        p["received"].as_u64().unwrap_or(0),
        p["sent"].as_u64().unwrap_or(0),
        p["out-of-sync"].as_u64().unwrap_or(0),
    )
}

/// Runs a python script with libnbd against `uri`; the script's stdout is returned.
fn nbd_python(uri: &str, script: &str, args: &[&str], context: &dyn Fn() -> String) -> String {
    let o = Command::new("/usr/bin/python3")
        .args(["-c", script, uri])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "NBD script failed: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        context()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Writes a random 4 KiB block at each of `blocks` (4 KiB units) through the NBD export, then
/// flushes.
fn nbd_write_random_blocks(d: &TestDaemon, blocks: &[u64]) {
    let script = r#"
import sys, os, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for b in sys.stdin.read().split():
    h.pwrite(os.urandom(4096), int(b) * 4096)
h.flush()
h.shutdown()
"#;
    let list: String = blocks.iter().map(|b| format!("{b}\n")).collect();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, &d.uri("r0")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "NBD writes failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
}

/// `n` distinct random block numbers below `limit`, sorted.
fn scattered_blocks(n: usize, limit: u64) -> Vec<u64> {
    let mut seed = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut seed)
        .unwrap();
    let mut x = u64::from_le_bytes(seed) | 1;
    let mut set = std::collections::BTreeSet::new();
    while set.len() < n {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        set.insert(x % limit);
    }
    set.into_iter().collect()
}

/// The 4 KiB block the ACK writers write as their `i`-th write: `tag` and `i` repeated.
fn ack_block(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}{i}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(4096)
        .collect()
}

/// The bitmap statistics lines of the guest's kernel log since `since` lines:
/// `(send, receive)` as `(plain bytes, plain packets, rle bytes, rle packets)`.
type BmStats = (u64, u64, u64, u64);

fn bitmap_stats(dmesg: &str, since: usize) -> (BmStats, BmStats) {
    let parse = |what: &str| -> BmStats {
        let line = dmesg
            .lines()
            .skip(since)
            .filter(|l| l.contains(&format!("{what} bitmap stats")))
            .last()
            .unwrap_or_else(|| panic!("no `{what} bitmap stats` line in the kernel log:\n{dmesg}"));
        // "... send bitmap stats [Bytes(packets)]: plain 0(0), RLE 23(1), total 23; ..."
        let num = |key: &str| -> (u64, u64) {
            let rest = &line[line.find(key).unwrap_or_else(|| panic!("{line}")) + key.len()..];
            let bytes: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let rest = &rest[bytes.len() + 1..];
            let packets: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            (bytes.parse().unwrap(), packets.parse().unwrap())
        };
        let (pb, pp) = num("plain ");
        let (rb, rp) = num("RLE ");
        (pb, pp, rb, rp)
    };
    (parse("send"), parse("receive"))
}

/// A bitmap exchange with `use-rle no` on both sides: udrbd logs a plain transfer of at least
/// two packets each way (the bitmap has more bits than one packet holds); the kernel logs no
/// statistics (INFO_bm_xfer_stats is quiet about uncompressed transfers).
fn assert_plain_bitmaps(vm: &KernelVm, dmesg_mark: usize, d: &TestDaemon, log_mark: usize) {
    let dmesg = vm.exec("dmesg");
    let kernel: Vec<&str> = dmesg
        .lines()
        .skip(dmesg_mark)
        .filter(|l| l.contains("bitmap stats"))
        .collect();
    assert!(
        kernel.is_empty(),
        "the kernel logged a compressed transfer: {kernel:?}"
    );
    let (send, recv) = bitmap_stats(&d.log_text(), log_mark);
    eprintln!("udrbd's bitmap stats: send {send:?} receive {recv:?}");
    assert!(send.1 >= 2 && send.3 == 0, "udrbd's plain bitmap: {send:?}");
    assert!(
        recv.1 >= 2 && recv.3 == 0,
        "the kernel's plain bitmap: {recv:?}"
    );
}

/// The number of lines of the guest's kernel log now.
fn dmesg_lines(vm: &KernelVm) -> usize {
    vm.exec("dmesg").lines().count()
}

/// The guest's kernel log lines after the first `mark` (a [`dmesg_lines`] count).
fn dmesg_since(vm: &KernelVm, mark: usize) -> Vec<String> {
    vm.exec("dmesg")
        .lines()
        .skip(mark)
        .map(String::from)
        .collect()
}

/// Runs `resync`, which must bring the two back together; returns the growth of the kernel's
/// `nr:` and `ns:` and of udrbd's `received` and `sent` in KiB, and the seconds it took.
fn measure<F: FnOnce(&mut TestDaemon)>(
    vm: &KernelVm,
    d: &mut TestDaemon,
    resync: F,
) -> (u64, u64, u64, u64, f64) {
    let k0 = vm.counters();
    let (r0, s0, _) = udrbd_counters(d);
    let t0 = Instant::now();
    resync(d);
    let secs = t0.elapsed().as_secs_f64();
    let k1 = vm.counters();
    let (r1, s1, oos) = udrbd_counters(d);
    assert_eq!(k1.oos, 0, "the kernel still has out-of-sync blocks");
    assert_eq!(oos, 0, "udrbd still has out-of-sync blocks");
    // A restarted daemon counts from 0 again, and so does the kernel after a `connect`
    // command (drbd_adm_connect zeroes send_cnt and recv_cnt).
    let grown = |after: u64, before: u64| after.checked_sub(before).unwrap_or(after);
    (
        grown(k1.nr, k0.nr),
        grown(k1.ns, k0.ns),
        grown(r1, r0),
        grown(s1, s0),
        secs,
    )
}

// ------------------------------------------------------------------------------------------
// 1. udrbd Primary: full sync, writes, incremental resync (RLE), failover to the kernel
// ------------------------------------------------------------------------------------------

/// udrbd `primary --force` on 64 MiB of random data; the kernel node (RAM disk) receives the
/// full sync: its `nr:` is the whole data area. Writes through udrbd's NBD export reach it
/// (protocol C). udrbd disconnects, writes 200 scattered blocks, reconnects: the kernel
/// receives exactly those blocks (RLE bitmap: one compressed packet each way). Finally a writer
/// on udrbd's export records each acknowledged write while udrbd is killed with SIGKILL; the
/// kernel node, promoted, serves every acknowledged write.
#[test]
fn udrbd_primary_full_and_incremental_sync_then_failover_to_the_kernel() {
    let ports = test_prelude(17400);
    let t_all = Instant::now();
    let u = Udrbd::prepare_with(
        ports,
        UdrbdOptions {
            size_mib: 64,
            random: true,
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
    );
    let vm = start_guest(&u, "kprim", ports, 64);
    let mut d = u.start();
    let o = d.cli(&["wait-connect", "r0", "--timeout", "180"]);
    assert!(o.status.success(), "{}\n{}", d.log_text(), vm.log_tail());
    vm.wait("cs:Connected", WAIT, &|| d.log_text());
    let len = guest_size_kib(&vm) * 1024;
    assert_eq!(
        status_json(&d)["devices"][0]["size"].as_u64().unwrap() * 1024,
        len,
        "udrbd's and the kernel's device sizes differ"
    );
    eprintln!(
        "connected at {:.1?}; data area {} KiB",
        t_all.elapsed(),
        len / 1024
    );

    // Full sync to the kernel.
    let before = md5_hex(&u.data_area(len));
    let t0 = Instant::now();
    force_primary_and_full_sync(&d, &vm);
    let full = t0.elapsed();
    let k = vm.counters();
    eprintln!(
        "full sync of {} KiB in {full:.1?}: kernel {k:?}",
        len / 1024
    );
    assert_eq!(
        k.nr,
        len / 1024,
        "the kernel's nr: is not the whole device after the full sync"
    );
    assert_eq!(
        vm.backing_md5(len),
        before,
        "data differs after the full sync"
    );

    // Writes through the export (protocol C: on the kernel's disk once acknowledged).
    let blocks = scattered_blocks(64, len / 4096);
    nbd_write_random_blocks(&d, &blocks);
    let k2 = vm.counters();
    assert_eq!(
        k2.nr - k.nr,
        64 * 4,
        "the kernel received {k2:?} after 64 writes"
    );
    let host = md5_hex(&u.data_area(len));
    assert_ne!(host, before);
    assert_eq!(vm.backing_md5(len), host, "data differs after the writes");

    // Incremental resync, RLE bitmap (use-rle yes on both: DRBD's default).
    let mark = dmesg_lines(&vm);
    let blocks = scattered_blocks(200, len / 4096);
    let (nr, _, _, sent, secs) = measure(&vm, &mut d, |d| {
        d.ok(&["disconnect", "r0"]);
        vm.wait("cs:WFConnection", WAIT, &|| d.log_text());
        nbd_write_random_blocks(d, &blocks);
        let (_, _, oos) = udrbd_counters(d);
        assert_eq!(
            oos,
            200 * 4,
            "udrbd's out-of-sync after 200 writes while disconnected"
        );
        d.ok(&["connect", "r0"]);
        vm.wait(
            "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
            WAIT,
            &|| d.log_text(),
        );
        wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
    });
    eprintln!(
        "incremental (RLE): 200 changed blocks = 800 KiB; kernel nr +{nr} KiB, udrbd sent +{sent} \
         KiB, {secs:.1}s"
    );
    assert_eq!(
        nr, 800,
        "the kernel received {nr} KiB for 800 KiB of changed blocks"
    );
    assert_eq!(
        sent, 800,
        "udrbd sent {sent} KiB for 800 KiB of changed blocks"
    );
    let dmesg = vm.exec("dmesg");
    let (send, recv) = bitmap_stats(&dmesg, mark);
    eprintln!("kernel bitmap stats: send {send:?} receive {recv:?}");
    assert_eq!(
        (send.1, send.3),
        (0, 1),
        "the kernel did not send one RLE packet"
    );
    assert_eq!(
        (recv.1, recv.3),
        (0, 1),
        "udrbd did not send one RLE packet"
    );
    assert_eq!(
        vm.backing_md5(len),
        md5_hex(&u.data_area(len)),
        "data differs after the incremental resync"
    );

    // Failover: a writer on udrbd's export logs each acknowledged write; udrbd is killed.
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(100000):
    blk = (f"udrbd{i}\n".encode() * 4096)[:4096]
    h.pwrite(blk, ((i * 37) % int(sys.argv[2])) * 4096)
    print(f"ACK {i}", flush=True)
"#;
    let nblocks = len / 4096;
    let mut writer = Command::new("/usr/bin/python3")
        .args(["-c", script, &d.uri("r0"), &nblocks.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let acks = Arc::new(Mutex::new(Vec::<usize>::new()));
    let reader = {
        let acks = acks.clone();
        let out = writer.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(i) = line.strip_prefix("ACK ").and_then(|n| n.parse().ok()) {
                    acks.lock().unwrap().push(i);
                }
            }
        })
    };
    let deadline = Instant::now() + WAIT;
    while acks.lock().unwrap().len() < 100 {
        assert!(
            Instant::now() < deadline,
            "the writer is stuck\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill9();
    let _ = writer.wait();
    reader.join().unwrap();
    let acked = acks.lock().unwrap().clone();
    let t_kill = Instant::now();
    vm.wait(
        "cs:WFConnection ro:Secondary/Unknown ds:UpToDate/DUnknown",
        WAIT,
        &|| d.log_text(),
    );
    vm.exec("drbdsetup-84 primary 0");
    eprintln!(
        "udrbd killed after {} ACKed writes; kernel promoted {:.1?} later",
        acked.len(),
        t_kill.elapsed()
    );
    // The latest write of each block is the one that must be there.
    let mut latest = std::collections::BTreeMap::new();
    for &i in &acked {
        latest.insert((i as u64 * 37) % nblocks, i);
    }
    let cmd: String = latest
        .keys()
        .map(|b| {
            format!("dd if=/dev/drbd0 bs=4096 skip={b} count=1 iflag=direct 2>/dev/null | md5sum;")
        })
        .collect();
    let out = vm.exec(&cmd);
    let sums: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| s.len() == 32)
        .collect();
    assert_eq!(sums.len(), latest.len(), "{out}");
    for ((b, &i), sum) in latest.iter().zip(&sums) {
        assert_eq!(
            *sum,
            md5_hex(&ack_block("udrbd", i)),
            "the kernel, promoted, does not serve ACKed write {i} (block {b})"
        );
    }
    eprintln!(
        "the promoted kernel serves all {} ACKed writes ({} blocks)",
        acked.len(),
        latest.len()
    );
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t_all.elapsed());
}

// ------------------------------------------------------------------------------------------
// 2. A 192 MiB device: bitmaps of several packets, RLE falling back to plain
// ------------------------------------------------------------------------------------------

/// Both nodes on 192 MiB of the same random data (host files; udrbd's create-md writes both
/// meta-data areas, the kernel attaches its one as it is); the kernel skips the initial sync
/// (`new-current-uuid --clear-bitmap`). The bitmap has 49142 bits, more than the 32640 of a
/// plain packet.
///
/// 1. udrbd Primary, disconnected, writes every other block of the first 70 MiB (9000
///    blocks): its RLE encoder cannot compress that (2 bits of code per bit) and sends a plain
///    packet, then an RLE one for the rest; the kernel (SyncTarget) sends the merged bitmap
///    back the same way. The kernel receives exactly those blocks.
/// 2. `use-rle no` on both; udrbd writes 100 scattered blocks while disconnected and is
///    restarted with the new config: both bitmaps travel as 2 plain packets; the kernel
///    receives exactly the written blocks.
/// 3. The kernel Primary (udrbd Secondary), disconnected, writes 40 scattered blocks; after the
///    reconnect (plain bitmaps again) udrbd receives exactly those.
#[test]
fn bitmaps_of_a_192_mib_device() {
    let ports = test_prelude(17410);
    let t_all = Instant::now();
    let size_mib = 192;
    let mut u = Udrbd::prepare_with(
        ports,
        UdrbdOptions {
            size_mib,
            random: true,
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
    );
    // The kernel's image: a copy of udrbd's (data and fresh meta-data).
    let kimg = u.dir.path().join("kernel.img");
    std::fs::copy(&u.disk, &kimg).unwrap();
    let vm = KernelVm::start_args(
        &u.vm_dir(),
        "kbig",
        ports,
        &[
            "--disk-file",
            kimg.to_str().unwrap(),
            "--no-create-md",
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            KERNEL_DISK,
            "--no-wait",
        ],
    );
    let mut d = u.start();
    let o = d.cli(&["wait-connect", "r0", "--timeout", "180"]);
    assert!(o.status.success(), "{}\n{}", d.log_text(), vm.log_tail());
    vm.wait(
        "cs:Connected ro:Secondary/Secondary ds:Inconsistent/Inconsistent",
        WAIT,
        &|| d.log_text(),
    );
    let len = guest_size_kib(&vm) * 1024;
    let bits = len / 4096;
    assert!(bits > 32640, "{bits} bits fit one plain packet");
    eprintln!("connected at {:.1?}; {bits} bitmap bits", t_all.elapsed());
    vm.exec("drbdsetup-84 new-current-uuid --clear-bitmap 0");
    vm.wait(
        "cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    let k = vm.counters();
    assert_eq!(
        (k.nr, k.ns),
        (0, 0),
        "the initial sync was not skipped: {k:?}"
    );

    // 1. Alternating bits: RLE falls back to a plain packet.
    d.ok(&["primary", "r0"]);
    let mark = dmesg_lines(&vm);
    let alternating: Vec<u64> = (0..9000).map(|i| 2 * i).collect();
    let log_mark = d.log_text().lines().count();
    let (nr, _, _, sent, secs) = measure(&vm, &mut d, |d| {
        d.ok(&["disconnect", "r0"]);
        vm.wait("cs:WFConnection", WAIT, &|| d.log_text());
        nbd_write_random_blocks(d, &alternating);
        d.ok(&["connect", "r0"]);
        vm.wait(
            "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
            WAIT,
            &|| d.log_text(),
        );
        wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
    });
    let changed = alternating.len() as u64 * 4;
    eprintln!(
        "alternating: {changed} KiB changed; kernel nr +{nr} KiB, udrbd sent +{sent} KiB, \
         {secs:.1}s"
    );
    assert_eq!(nr, changed);
    assert_eq!(sent, changed);
    let (send, recv) = bitmap_stats(&vm.exec("dmesg"), mark);
    eprintln!("kernel bitmap stats: send {send:?} receive {recv:?}");
    assert!(
        recv.1 >= 1,
        "udrbd did not fall back to a plain packet: {recv:?}"
    );
    assert!(
        recv.3 >= 1,
        "udrbd sent no RLE packet for the rest: {recv:?}"
    );
    // The kernel, SyncTarget, sends back the merged bitmap: the same mix reaches udrbd.
    assert!(
        send.1 >= 1 && send.3 >= 1,
        "the kernel did not send a plain and an RLE packet: {send:?}"
    );
    // udrbd's own statistics agree with the kernel's, byte for byte.
    let (u_send, u_recv) = bitmap_stats(&d.log_text(), log_mark);
    assert_eq!((u_send, u_recv), (recv, send), "udrbd's bitmap stats");

    // 2. use-rle no on both; udrbd (Primary) → kernel.
    u.opts.net = format!("{UDRBD_NET} use-rle no;");
    u.write_config();
    let mark = dmesg_lines(&vm);
    let log_mark = d.log_text().lines().count();
    let blocks = scattered_blocks(100, bits);
    let (nr, _, _, _, secs) = measure(&vm, &mut d, |d| {
        d.ok(&["disconnect", "r0"]);
        vm.wait("cs:WFConnection", WAIT, &|| d.log_text());
        nbd_write_random_blocks(d, &blocks);
        d.terminate(Duration::from_secs(30));
        vm.disconnect();
        vm.connect(&format!("{KERNEL_NET} --use-rle=no"));
        d.restart();
        vm.wait(
            "cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate",
            WAIT,
            &|| d.log_text(),
        );
        wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
    });
    eprintln!("plain, udrbd → kernel: 400 KiB changed; kernel nr +{nr} KiB, {secs:.1}s");
    assert_eq!(nr, 400);
    assert_plain_bitmaps(&vm, mark, &d, log_mark);

    // 3. The kernel Primary → udrbd, plain bitmaps.
    vm.exec("drbdsetup-84 primary 0");
    let mark = dmesg_lines(&vm);
    let log_mark = d.log_text().lines().count();
    let blocks = scattered_blocks(40, bits);
    let (_, ns, received, _, secs) = measure(&vm, &mut d, |d| {
        vm.disconnect();
        wait_udrbd(d, "WFConnection", "UpToDate/DUnknown", WAIT);
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
        vm.connect(&format!("{KERNEL_NET} --use-rle=no"));
        vm.wait(
            "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate",
            WAIT,
            &|| d.log_text(),
        );
        wait_udrbd(d, "Connected", "UpToDate/UpToDate", WAIT);
    });
    eprintln!(
        "plain, kernel → udrbd: 160 KiB changed; kernel ns +{ns} KiB, udrbd received \
         +{received} KiB, {secs:.1}s"
    );
    assert_eq!(ns, 160);
    assert_eq!(received, 160);
    assert_plain_bitmaps(&vm, mark, &d, log_mark);
    // One md5 at the end (192 MiB under TCG takes a while): a block missed by any of the
    // three resyncs would still differ.
    assert_eq!(
        vm.backing_md5(len),
        md5_hex(&u.data_area(len)),
        "the data areas differ after the three incremental resyncs"
    );
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t_all.elapsed());
}

// ------------------------------------------------------------------------------------------
// 3. The kernel's meta-data after a crash; failover from the kernel to udrbd
// ------------------------------------------------------------------------------------------

/// Reads the 4 KiB block `b` of the file at `path`.
fn read_block(path: &Path, b: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(b * 4096)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// The kernel node is Primary on a host file (64 MiB of random data, the same as udrbd's
/// `alice`; meta-data by the guest's drbdmeta; initial sync skipped). A writer in the guest
/// writes 4 KiB blocks with O_DIRECT into AL extents 1, 6 and 13 in turn and logs `ACK i OK`
/// on the console after each; the guest is power-cut (`kdrbd-vm kill`) after at least 12 ACKs.
///
/// - Failover: alice (udrbd, the surviving peer) is promoted and serves every ACKed write.
/// - The kernel's meta-data: a second udrbd node, `kernel`, attaches the kernel's image (its
///   meta-data says: crashed Primary, AL with the writer's extents), replays the AL and
///   connects to alice: the resync covers exactly the three AL extents (4 MiB each), every
///   ACKed write is on both, and the data areas are equal.
#[test]
fn kernel_metadata_after_a_crash_and_failover_to_udrbd() {
    let ports = test_prelude(17420);
    let t_all = Instant::now();
    let u = Udrbd::prepare_with(
        ports,
        UdrbdOptions {
            size_mib: 64,
            random: true,
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
    );
    // The kernel's image: a copy of alice's data; the guest's drbdmeta writes its meta-data.
    let kimg = u.dir.path().join("kernel.img");
    std::fs::copy(&u.disk, &kimg).unwrap();
    let mut vm = KernelVm::start_args(
        &u.vm_dir(),
        "kcrash",
        ports,
        &[
            "--disk-file",
            kimg.to_str().unwrap(),
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            KERNEL_DISK,
            "--no-wait",
        ],
    );
    let mut d = u.start();
    let o = d.cli(&["wait-connect", "r0", "--timeout", "180"]);
    assert!(o.status.success(), "{}\n{}", d.log_text(), vm.log_tail());
    vm.wait(
        "cs:Connected ro:Secondary/Secondary ds:Inconsistent/Inconsistent",
        WAIT,
        &|| d.log_text(),
    );
    let len = guest_size_kib(&vm) * 1024;
    vm.exec("drbdsetup-84 new-current-uuid --clear-bitmap 0 && drbdsetup-84 primary 0");
    vm.wait(
        "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    eprintln!("kernel Primary at {:.1?}", t_all.elapsed());

    // The writer: block i in AL extent 1, 6 or 13 (4 MiB each), in turn: the kernel's AL
    // then holds exactly those three extents.
    const EXTENTS: [u64; 3] = [1, 6, 13];
    let seek = |i: usize| EXTENTS[i % 3] * 1024 + (i as u64 / 3 * 37) % 1024;
    let seeks: Vec<String> = (0..200).map(|i| seek(i).to_string()).collect();
    let cmd = format!(
        "for i in $(seq 0 199); do yes crash$i | head -c 4096 >/tmp/blk.$i; done
         ( i=0; for s in {}; do
             dd if=/tmp/blk.$i of=/dev/drbd0 bs=4096 seek=$s count=1 oflag=direct \
                2>/dev/null || break
             echo \"ACK $i OK\" >/dev/console; i=$((i + 1)); done ) </dev/null >/dev/null 2>&1 &",
        seeks.join(" ")
    );
    vm.exec(&cmd);
    let acked = |vm: &KernelVm| -> Vec<usize> {
        vm.log_text()
            .lines()
            .filter_map(|l| l.strip_prefix("ACK ")?.strip_suffix(" OK")?.parse().ok())
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while acked(&vm).len() < 12 {
        assert!(
            Instant::now() < deadline,
            "the guest's writer is stuck\n{}",
            vm.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vm.kill();
    let acked = acked(&vm);
    let kernel_log = vm.log_text();
    assert_clean_kernel_log(&kernel_log);
    eprintln!("kernel killed after {} ACKed writes", acked.len());
    for &i in &acked {
        assert_eq!(
            read_block(&kimg, seek(i)),
            ack_block("crash", i),
            "ACKed write {i} is not in the kernel's image"
        );
    }

    // Failover: alice promoted serves every ACKed write.
    wait_udrbd(&d, "WFConnection", "UpToDate/DUnknown", WAIT);
    d.ok(&["primary", "r0"]);
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for pair in sys.argv[2:]:
    i, b = map(int, pair.split(":"))
    want = (f"crash{i}\n".encode() * 4096)[:4096]
    got = h.pread(4096, b * 4096)
    if got != want:
        print(f"MISSING {i} at block {b}")
h.shutdown()
"#;
    let pairs: Vec<String> = acked.iter().map(|&i| format!("{i}:{}", seek(i))).collect();
    let pair_refs: Vec<&str> = pairs.iter().map(String::as_str).collect();
    let out = nbd_python(&d.uri("r0"), script, &pair_refs, &|| d.log_text());
    assert!(
        out.is_empty(),
        "alice, promoted, misses ACKed writes:\n{out}"
    );
    eprintln!(
        "alice (udrbd), promoted, serves all {} ACKed writes",
        acked.len()
    );
    d.ok(&["secondary", "r0"]);

    // The kernel's meta-data: a udrbd node attaches the kernel's image. It replaces the kernel:
    // it listens on the guest's port forward (free now), where alice connects.
    let config = u.dir.path().join("replacement.res");
    std::fs::write(
        &config,
        format!(
            "resource r0 {{\n  net {{ {UDRBD_NET} }}\n  disk {{ c-plan-ahead 0; resync-rate 100M; }}\n  on alice {{ device minor 0; disk {}; address 127.0.0.1:{}; meta-disk internal; }}\n  on kernel {{ device minor 0; disk {}; address 127.0.0.1:{}; meta-disk internal; }}\n}}\n",
            u.disk.display(),
            ports.udrbd_listen,
            kimg.display(),
            ports.hp,
        ),
    )
    .unwrap();
    let gi = run_ok(Command::new(udrbd_bin()).args(["show-gi"]).arg(&kimg));
    eprintln!("the kernel's meta-data after the crash:\n{gi}");
    let k = TestDaemon::start_node(u.dir.path(), "kernel", &config, "kernel", &["--no-up"]);
    k.ok(&["attach", "r0"]);
    let oos_kib = status_json(&k)["connections"][0]["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap_or(0);
    // The writer touched three AL extents of 4 MiB each: exactly those are out of sync.
    eprintln!("replayed the kernel's AL: out-of-sync {oos_kib} KiB (3 extents: 12288 KiB)");
    assert_eq!(
        oos_kib,
        EXTENTS.len() as u64 * 4096,
        "the replayed AL does not mark exactly the writer's extents\n{}",
        k.log_text()
    );
    let t0 = Instant::now();
    k.ok(&["connect", "r0"]);
    let deadline = Instant::now() + WAIT;
    loop {
        let ok = |n: &TestDaemon| {
            n.ok(&["cstate", "r0"]).trim() == "Connected"
                && n.ok(&["dstate", "r0"]).trim() == "UpToDate/UpToDate"
        };
        if ok(&k) && ok(&d) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resync between alice and the kernel's image\n--- alice ---\n{}\n--- kernel ---\n{}",
            d.log_text(),
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (k_recv, k_sent, _) = udrbd_counters(&k);
    let (d_recv, d_sent, _) = udrbd_counters(&d);
    eprintln!(
        "resync of the AL extents in {:.1?}: node on the kernel's image received {k_recv} / sent \
         {k_sent} KiB, alice received {d_recv} / sent {d_sent} KiB",
        t0.elapsed()
    );
    assert_eq!(
        k_recv.max(k_sent),
        oos_kib,
        "the resync does not cover exactly the AL extents"
    );
    drop(k);
    d.terminate(Duration::from_secs(30));
    let a = u.data_area(len);
    let b = read_head(&kimg, len);
    for &i in &acked {
        let r = (seek(i) * 4096) as usize..(seek(i) * 4096 + 4096) as usize;
        assert_eq!(
            a[r.clone()],
            ack_block("crash", i)[..],
            "alice lacks ACKed write {i}"
        );
        assert_eq!(
            b[r],
            ack_block("crash", i)[..],
            "the image lacks ACKed write {i}"
        );
    }
    assert_eq!(
        md5_hex(&a),
        md5_hex(&b),
        "the data areas differ after the resync"
    );
    eprintln!("total {:.1?}", t_all.elapsed());
}

// ------------------------------------------------------------------------------------------
// 4. cram-hmac
// ------------------------------------------------------------------------------------------

/// cram-hmac-alg sha1, then sha256, with a shared secret (with a space): the connection comes
/// up and the kernel logs the peer's HMAC length. Then the kernel's secret differs from
/// udrbd's: the kernel refuses udrbd ("Authentication of peer failed") and udrbd refuses the
/// kernel; neither connects.
#[test]
fn cram_hmac_against_the_kernel() {
    let ports = test_prelude(17430);
    let t_all = Instant::now();
    let secret = "se cret-7";
    let net = |alg: &str, secret: &str| {
        format!("{UDRBD_NET} cram-hmac-alg {alg}; shared-secret \"{secret}\";")
    };
    let mut u = Udrbd::prepare_with(
        ports,
        UdrbdOptions {
            net: net("sha1", secret),
            ..UdrbdOptions::default()
        },
    );
    let vm = KernelVm::start_args(
        &u.vm_dir(),
        "khmac",
        ports,
        &[
            "--size-mib",
            "16",
            "--net-opts",
            KERNEL_NET,
            "--shared-secret",
            secret,
            "--cram-hmac-alg",
            "sha1",
            "--no-wait",
        ],
    );
    let mut d = u.start();
    let o = d.cli(&["wait-connect", "r0", "--timeout", "180"]);
    assert!(o.status.success(), "{}\n{}", d.log_text(), vm.log_tail());
    vm.wait("cs:Connected", WAIT, &|| d.log_text());
    assert!(
        vm.exec("dmesg")
            .contains("Peer authenticated using 20 bytes HMAC"),
        "{}",
        vm.exec("dmesg")
    );
    eprintln!("sha1: connected at {:.1?}", t_all.elapsed());

    // sha256.
    d.terminate(Duration::from_secs(30));
    vm.disconnect();
    u.opts.net = net("sha256", secret);
    u.write_config();
    vm.exec(&format!(
        "drbdsetup-84 connect r0 ipv4:10.0.2.15:{GUEST_DRBD_PORT} ipv4:10.0.2.2:{} \
         --protocol=C {KERNEL_NET} --cram-hmac-alg=sha256 '--shared-secret={secret}'",
        ports.pp
    ));
    d.restart();
    let o = d.cli(&["wait-connect", "r0", "--timeout", "180"]);
    assert!(o.status.success(), "{}\n{}", d.log_text(), vm.log_tail());
    vm.wait("cs:Connected", WAIT, &|| d.log_text());
    assert!(
        vm.exec("dmesg")
            .contains("Peer authenticated using 32 bytes HMAC"),
        "{}",
        vm.exec("dmesg")
    );
    eprintln!("sha256: connected at {:.1?}", t_all.elapsed());

    // A wrong secret.
    d.terminate(Duration::from_secs(30));
    vm.disconnect();
    let mark = dmesg_lines(&vm);
    u.opts.net = net("sha256", "not the secret");
    u.write_config();
    vm.exec(&format!(
        "drbdsetup-84 connect r0 ipv4:10.0.2.15:{GUEST_DRBD_PORT} ipv4:10.0.2.2:{} \
         --protocol=C {KERNEL_NET} --cram-hmac-alg=sha256 '--shared-secret={secret}'",
        ports.pp
    ));
    let log_before = d.log_text().len();
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dmesg = dmesg_since(&vm, mark);
        let udrbd_log = d.log_text()[log_before..].to_string();
        let kernel_refused = dmesg
            .iter()
            .any(|l| l.contains("Authentication of peer failed"));
        let udrbd_refused = udrbd_log.contains("authentication of peer failed");
        if kernel_refused && udrbd_refused {
            eprintln!(
                "wrong secret refused by both after {:.1?}:\n{}\n{}",
                t_all.elapsed(),
                dmesg.join("\n"),
                udrbd_log
                    .lines()
                    .filter(|l| l.contains("authentication"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a wrong secret was not refused by both (kernel {kernel_refused}, udrbd \
             {udrbd_refused}):\n{}\n{udrbd_log}",
            dmesg.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!vm.proc_drbd().contains("cs:Connected"));
    let cstate = d.ok(&["cstate", "r0"]).trim().to_string();
    assert_ne!(cstate, "Connected");
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t_all.elapsed());
}

/// udrbd (16 MiB of random data) and a guest `name`, both on protocol `proto`, connected;
/// udrbd `primary --force` and the full sync to the kernel done. Returns the data area's
/// length in bytes too.
fn synced_pair(ports: Ports, name: &str, proto: &str) -> (Udrbd, KernelVm, TestDaemon, u64) {
    let u = Udrbd::prepare_with(
        ports,
        UdrbdOptions {
            net: UDRBD_NET.replace("protocol C", &format!("protocol {proto}")),
            ..UdrbdOptions::default()
        },
    );
    let vm = KernelVm::start_args(
        &u.vm_dir(),
        name,
        ports,
        &[
            "--protocol",
            proto,
            "--net-opts",
            KERNEL_NET,
            "--disk-opts",
            KERNEL_DISK,
            "--no-wait",
        ],
    );
    let d = u.start();
    let o = d.cli(&["wait-connect", "r0", "--timeout", "180"]);
    assert!(o.status.success(), "{}\n{}", d.log_text(), vm.log_tail());
    vm.wait("cs:Connected", WAIT, &|| d.log_text());
    let proc_drbd = vm.proc_drbd();
    assert!(
        proc_drbd.contains(&format!(" {proto} r-")),
        "the guest does not run protocol {proto}: {proc_drbd}"
    );
    let len = guest_size_kib(&vm) * 1024;
    force_primary_and_full_sync(&d, &vm);
    (u, vm, d, len)
}

/// md5 of the whole device as read through udrbd's NBD export.
fn nbd_md5(d: &TestDaemon, len: u64) -> String {
    let script = r#"
import sys, hashlib, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = int(sys.argv[2])
m = hashlib.md5()
for off in range(0, size, 1 << 20):
    m.update(h.pread(min(1 << 20, size - off), off))
print(m.hexdigest())
h.shutdown()
"#;
    nbd_python(&d.uri("r0"), script, &[&len.to_string()], &|| d.log_text())
        .trim()
        .to_string()
}

/// The disk-failure side of the matrix: a detach and an attach while connected, on either
/// side (udrbd Primary, the kernel Secondary).
///
/// - udrbd detaches: a diskless Primary, it serves writes and reads through the kernel (the
///   export reads what the kernel holds) and leaves its backing file alone; the kernel marks
///   the written blocks out of sync. udrbd attaches again: the resync from the kernel moves
///   exactly those blocks.
/// - The kernel detaches: udrbd marks what it writes meanwhile; the kernel attaches again and
///   the resync to it moves exactly those blocks.
#[test]
fn detach_and_attach_while_connected_on_either_side() {
    let ports = test_prelude(17440);
    let t_all = Instant::now();
    let (u, vm, d, len) = synced_pair(ports, "kdet", "C");
    eprintln!("full sync done at {:.1?}", t_all.elapsed());

    // udrbd detaches and goes on as a diskless Primary.
    let own_before = md5_hex(&u.data_area(len));
    d.ok(&["detach", "r0"]);
    wait_udrbd(&d, "Connected", "Diskless/UpToDate", WAIT);
    vm.wait("ds:UpToDate/Diskless", WAIT, &|| d.log_text());
    let k0 = vm.counters();
    let blocks = scattered_blocks(50, len / 4096);
    nbd_write_random_blocks(&d, &blocks);
    let guest = vm.backing_md5(len);
    assert_eq!(
        nbd_md5(&d, len),
        guest,
        "the diskless Primary's export does not read what the kernel holds\n{}",
        d.log_text()
    );
    assert_eq!(
        md5_hex(&u.data_area(len)),
        own_before,
        "udrbd's detached backing file changed"
    );
    // (The reads above came from the kernel: udrbd's `received` and the kernel's `ns:` count
    // them; the resync's share is counted from here.)
    let k1 = vm.counters();
    let (received0, _, _) = udrbd_counters(&d);
    assert_eq!(
        (k1.nr - k0.nr, k1.oos),
        (200, 200),
        "the kernel received {k1:?} (before: {k0:?}) for 50 blocks written by the diskless \
         Primary"
    );
    d.ok(&["attach", "r0"]);
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    vm.wait(
        "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    let (received1, _, _) = udrbd_counters(&d);
    let k2 = vm.counters();
    eprintln!(
        "udrbd detached and attached: kernel {k0:?} -> {k2:?}, udrbd received {received0} -> \
         {received1} KiB"
    );
    assert_eq!(
        (received1 - received0, k2.ns - k1.ns),
        (200, 200),
        "the resync after udrbd's attach did not move exactly the 200 KiB written meanwhile"
    );
    assert_eq!(
        md5_hex(&u.data_area(len)),
        guest,
        "data differs after udrbd's attach"
    );

    // The kernel detaches; udrbd marks what it writes; the kernel attaches again.
    vm.exec("drbdsetup-84 detach 0 2>&1");
    vm.wait("ds:Diskless/UpToDate", WAIT, &|| d.log_text());
    wait_udrbd(&d, "Connected", "UpToDate/Diskless", WAIT);
    let blocks = scattered_blocks(50, len / 4096);
    nbd_write_random_blocks(&d, &blocks);
    let (_, sent0, oos) = udrbd_counters(&d);
    assert_eq!(
        oos, 200,
        "udrbd's out-of-sync after 50 writes to a diskless peer"
    );
    let k3 = vm.counters();
    // As `drbdadm attach`: apply-al first (8.4 refuses meta-data whose activity log was not
    // cleaned, and a detach leaves it so).
    vm.exec(&format!(
        "drbdmeta 0 v08 /dev/ram0 internal apply-al 2>&1 && \
         drbdsetup-84 attach 0 /dev/ram0 /dev/ram0 internal {KERNEL_DISK} 2>&1"
    ));
    vm.wait(
        "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    let (_, sent1, oos) = udrbd_counters(&d);
    let k4 = vm.counters();
    eprintln!(
        "the kernel detached and attached: kernel {k3:?} -> {k4:?}, udrbd sent {sent0} -> {sent1} KiB"
    );
    assert_eq!(oos, 0);
    // (The kernel's counters start at 0 with its attach.)
    assert_eq!(
        (sent1 - sent0, k4.nr),
        (200, 200),
        "the resync after the kernel's attach did not move exactly the 200 KiB written meanwhile"
    );
    assert_eq!(
        vm.backing_md5(len),
        md5_hex(&u.data_area(len)),
        "data differs after the kernel's attach"
    );
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("total {:.1?}", t_all.elapsed());
}

/// Waits until udrbd's data area equals the guest's backing device.
fn wait_same_data(u: &Udrbd, d: &TestDaemon, vm: &KernelVm, len: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (host, guest) = (md5_hex(&u.data_area(len)), vm.backing_md5(len));
        if host == guest {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the data areas still differ after 30 s\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replication under protocol `proto` (A or B) both ways: udrbd Primary writes through its
/// export (a flush waits for the kernel's barrier ack, so the data is on the guest's disk
/// when it returns); then the kernel is Primary and writes with O_DIRECT + fsync (under A and
/// B the guest's write does not wait for udrbd's disk: the test waits for the data); then
/// udrbd is Primary again. A receiver that answered with the wrong ack (P_WRITE_ACK under B,
/// any ack under A) would stall or confuse the other side.
fn replication_under(proto: &str, base: u16) {
    let ports = test_prelude(base);
    let t_all = Instant::now();
    let (u, vm, d, len) = synced_pair(ports, &format!("kproto{proto}"), proto);

    // udrbd Primary: writes and a flush through the export.
    let k0 = vm.counters();
    nbd_write_random_blocks(&d, &scattered_blocks(100, len / 4096));
    let k1 = vm.counters();
    assert_eq!(
        k1.nr - k0.nr,
        400,
        "the kernel received {k1:?} (before {k0:?})"
    );
    assert_eq!(
        md5_hex(&u.data_area(len)),
        vm.backing_md5(len),
        "protocol {proto}: udrbd's flush returned before its writes were on the kernel's disk\n{}",
        d.log_text()
    );

    // The kernel Primary.
    d.ok(&["secondary", "r0"]);
    vm.exec("drbdsetup-84 primary 0 2>&1");
    for (i, off_kib) in [0u64, 1236, 4064, len / 1024 - 4].into_iter().enumerate() {
        vm.exec(&format!(
            "dd if=/dev/urandom of=/tmp/w{i} bs=4096 count=1 2>/dev/null && \
             dd if=/tmp/w{i} of=/dev/drbd0 bs=4096 seek={} oflag=direct,seek_bytes conv=fsync 2>&1",
            off_kib << 10
        ));
    }
    wait_same_data(
        &u,
        &d,
        &vm,
        len,
        &format!("protocol {proto}, the kernel's writes"),
    );
    vm.exec("drbdsetup-84 secondary 0 2>&1");

    // udrbd Primary again.
    d.ok(&["primary", "r0"]);
    nbd_write_random_blocks(&d, &scattered_blocks(20, len / 4096));
    assert_eq!(
        md5_hex(&u.data_area(len)),
        vm.backing_md5(len),
        "protocol {proto}: data differs after udrbd's second round of writes\n{}",
        d.log_text()
    );
    assert!(vm.proc_drbd().contains("oos:0"), "{}", vm.proc_drbd());
    assert_eq!(d.ok(&["dstate", "r0"]).trim(), "UpToDate/UpToDate");
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!("protocol {proto}: total {:.1?}", t_all.elapsed());
}

/// Protocol A against the kernel, both directions (see [`replication_under`]).
#[test]
fn protocol_a_against_the_kernel() {
    replication_under("A", 17450);
}

/// Protocol B against the kernel, both directions (see [`replication_under`]).
#[test]
fn protocol_b_against_the_kernel() {
    replication_under("B", 17460);
}

/// Disks of different sizes against the kernel (DRBD 8.4.11's receive_sizes, both sides):
/// 1. udrbd with usable data (UpToDate alone, 16 MiB) refuses the kernel's 8 MiB disk at the
///    connect: "the peer's disk is too small", StandAlone, its device as it was.
/// 2. Both fresh: the device is the smaller disk on both sides; udrbd's full sync makes them
///    equal; the agreed size is udrbd's `la-size-sect`, and udrbd comes back up with its
///    whole 16 MiB disk and that size, taken by the kernel.
/// 3. The kernel, with usable data as Secondary, refuses a fresh 4 MiB udrbd disk attached
///    while connected, and again at its next connect ("The peer's disk size is too small!",
///    StandAlone): the rule udrbd follows.
#[test]
fn disks_of_different_sizes_against_the_kernel() {
    let ports = test_prelude(17470);
    let t_all = Instant::now();
    let mut u = Udrbd::prepare_with(
        ports,
        UdrbdOptions {
            net: UDRBD_NET.into(),
            ..UdrbdOptions::default()
        },
    );
    let vm = start_guest(&u, "ksizes", ports, 8);
    let device_kib = |d: &TestDaemon| status_json(d)["devices"][0]["size"].as_u64().unwrap();

    // 1. udrbd UpToDate alone before it ever met the kernel.
    let d = TestDaemon::start_node(u.dir.path(), "alice", &u.config, "alice", &["--no-up"]);
    d.ok(&["attach", "r0"]);
    d.ok(&["primary", "r0", "--force"]);
    d.ok(&["secondary", "r0"]);
    let whole = device_kib(&d);
    d.ok(&["connect", "r0"]);
    let deadline = Instant::now() + WAIT;
    while !d.log_text().contains("the peer's disk is too small") {
        assert!(
            Instant::now() < deadline,
            "udrbd did not refuse:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_udrbd(&d, "StandAlone", "UpToDate/DUnknown", WAIT);
    assert_eq!(device_kib(&d), whole);
    assert!(
        d.log_text()
            .contains("Considerable difference in lower level device sizes"),
        "udrbd warns of the sizes as the kernel does:\n{}",
        d.log_text()
    );
    eprintln!(
        "1. udrbd refused the smaller disk at {:.1?}",
        t_all.elapsed()
    );

    // 2. Both fresh: the smaller disk is the device.
    d.ok(&["down", "r0"]);
    fill_file(&u.disk, u.opts.size_mib << 20, true);
    create_md(&u.disk);
    d.ok(&["up", "r0"]);
    vm.wait(
        "cs:Connected ro:Secondary/Secondary ds:Inconsistent/Inconsistent",
        WAIT,
        &|| d.log_text(),
    );
    let kib = guest_size_kib(&vm);
    assert_eq!(device_kib(&d), kib, "udrbd's device is the kernel's");
    assert!(kib < 8 << 10, "{kib} KiB");
    let len = kib * 1024;
    force_primary_and_full_sync(&d, &vm);
    assert_eq!(md5_hex(&u.data_area(len)), vm.backing_md5(len));
    d.ok(&["secondary", "r0"]);
    d.ok(&["down", "r0"]);
    let dump = run_ok(Command::new(udrbd_bin()).arg("dump-md").arg(&u.disk));
    let la = format!("la-size-sect {};", len / 512);
    assert!(dump.contains(&la), "{la} not in udrbd's meta-data:\n{dump}");
    d.ok(&["up", "r0"]);
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    assert_eq!(device_kib(&d), kib);
    vm.wait(
        "cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    vm.assert_clean_dmesg(&|| d.log_text());
    eprintln!(
        "2. agreed on {kib} KiB, kept across down/up, at {:.1?}",
        t_all.elapsed()
    );

    // 3. The kernel, UpToDate, meets a fresh disk smaller than its device: attached by udrbd
    // while connected, then at the kernel's next connect.
    wait_udrbd(&d, "Connected", "UpToDate/UpToDate", WAIT);
    d.ok(&["detach", "r0"]);
    u.opts.size_mib = 4;
    fill_file(&u.disk, u.opts.size_mib << 20, true);
    create_md(&u.disk);
    for (what, act) in [("udrbd's attach", 0), ("the kernel's connect", 1)] {
        let mark = dmesg_lines(&vm);
        if act == 0 {
            d.ok(&["attach", "r0"]);
        } else {
            vm.connect(KERNEL_NET);
        }
        vm.wait("cs:StandAlone", WAIT, &|| d.log_text());
        let dmesg = dmesg_since(&vm, mark);
        assert!(
            dmesg
                .iter()
                .any(|l| l.contains("The peer's disk size is too small!")),
            "{what}:\n{}",
            dmesg.join("\n")
        );
        assert_eq!(guest_size_kib(&vm), kib);
        eprintln!(
            "3. the kernel refused the smaller disk at {what}, at {:.1?}:\n{}",
            t_all.elapsed(),
            dmesg.join("\n")
        );
    }
}
