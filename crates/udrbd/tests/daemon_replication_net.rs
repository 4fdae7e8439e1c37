//! Two real daemons replicating over TCP on 127.0.0.x, with the network under the test's
//! control: a private nftables table per test counts the bytes each node sends to the other
//! (only on the pair's own addresses and ports), throttles them, and drops them both ways to
//! partition the pair. Acceptance tests of the replication's promises:
//!
//! - the initial full sync sends at least the whole device and leaves identical data areas;
//! - failover after `kill -9` of the Primary loses no acknowledged (protocol C) write;
//! - after a partition, every write acknowledged before it is on the promoted peer (the link
//!   is throttled first, so unsent writes queue up on the Primary: with protocol A this test
//!   fails, as it should);
//! - an incremental resync sends (about) what changed, not the device;
//! - a resync interrupted by a partition resumes where it was instead of starting over;
//! - the dynamic resync controller with DRBD's defaults completes a resync at a sane rate.
//!
//! Writes go through the Primary's NBD export with python3-libnbd (several in flight); the
//! writer prints each write only after its completion, so its log holds exactly the
//! acknowledged writes. Every block a writer writes carries its seed, index and block number,
//! and each index goes to a block of its own, so a read tells which write it holds.
//!
//! These tests need root (nftables) and fail without it.

mod support;

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::nft::{Direction, NftTable};
use support::*;

/// The longest a connection, a loss of connection or a fast resync may take on a loaded
/// machine before the test fails (tests normally take a few seconds).
const WAIT: Duration = Duration::from_secs(60);

const MIB: u64 = 1 << 20;

/// A fast fixed-rate resync (no dynamic controller).
const FAST_RESYNC: &str = "c-plan-ahead 0; resync-rate 2000M;";

/// Short timeouts: a lost peer is noticed within a couple of seconds (ping every second, an
/// answer expected within 0.5 s), reconnect attempts every second.
const FAST_NET: &str = "protocol C; connect-int 1; ping-int 1; ping-timeout 5; timeout 5;";

/// The writer and verifier run by /usr/bin/python3 with libnbd.
///
/// `write URI SEED COUNT INFLIGHT SPACING`: COUNT 4 KiB writes, at most INFLIGHT in flight;
/// write i goes to slot s = i * M mod SLOTS (M coprime to SLOTS, so every write has a slot of
/// its own); with SPACING 1 the slot is the block, with SPACING k > 1 the block is
/// k * s + (s mod (k - 1)), so no two written blocks are adjacent. Prints `A i block ok` after
/// each completed write, then flushes and prints `DONE`.
///
/// `verify URI SEED`: reads `i block` lines on stdin and checks that each block holds write
/// i's content; prints `VERIFIED n BAD m`, exits 1 if any differs.
const NBD_SCRIPT: &str = r#"
import sys, struct, math, nbd

MAGIC = 0x7564726264746573
BS = 4096

def content(seed, i, block):
    return struct.pack('<QQQQ', MAGIC, seed, i, block) * (BS // 32)

mode, uri, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
if mode == 'write':
    count, inflight, spacing = map(int, sys.argv[4:7])
    slots = h.get_size() // BS // spacing
    assert count <= slots, (count, slots)
    mult = int(slots * 0.618) | 1
    while math.gcd(mult, slots) != 1:
        mult += 2
    def block_of(i):
        s = (i * mult) % slots
        return s * spacing + (s % (spacing - 1) if spacing > 1 else 0)
    pending = {}
    i = 0
    out = sys.stdout
    while i < count or pending:
        while i < count and len(pending) < inflight:
            b = block_of(i)
            buf = nbd.Buffer.from_bytearray(bytearray(content(seed, i, b)))
            pending[h.aio_pwrite(buf, b * BS)] = (i, b, buf)
            i += 1
        done = [c for c in pending if h.aio_command_completed(c)]
        for c in done:
            j, b, _ = pending.pop(c)
            out.write('A %d %d ok\n' % (j, b))
        if done:
            out.flush()
        else:
            h.poll(1000)
    h.flush()
    out.write('DONE\n')
    out.flush()
    h.shutdown()
elif mode == 'verify':
    n = bad = 0
    for line in sys.stdin:
        j, b = map(int, line.split())
        got = h.pread(BS, b * BS)
        if got != content(seed, j, b):
            bad += 1
            if bad <= 10:
                print('BAD write %d block %d: %r' % (j, b, got[:32]))
        n += 1
    print('VERIFIED %d BAD %d' % (n, bad))
    sys.exit(1 if bad else 0)
"#;

/// Fails the test unless python3-libnbd is installed.
fn require_libnbd() {
    let o = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .output()
        .expect("/usr/bin/python3");
    assert!(
        o.status.success(),
        "python3-libnbd missing: apt-get install python3-libnbd"
    );
}

/// Everything these tests need, loudly.
fn require_all() {
    require_root();
    require_tool("nft", "nftables");
    require_libnbd();
}

/// A seed for the writers' contents, printed so a failure names it.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seed = nanos ^ u64::from(std::process::id()) << 32;
    println!("seed {seed}");
    seed
}

/// The data area's size in bytes, from `status --json` (`size` is in KiB).
fn data_bytes(node: &Node) -> u64 {
    let kib = node.status_json()["devices"][0]["size"]
        .as_u64()
        .expect("device size in status --json");
    assert!(kib > 0, "{} has no size", node.name);
    kib * 1024
}

/// The peer device's `out-of-sync` in KiB.
fn out_of_sync_kib(s: &serde_json::Value) -> u64 {
    s["connections"][0]["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap_or(0)
}

/// The peer device's `percent-resync-done`, if it is resyncing.
fn resync_done_percent(s: &serde_json::Value) -> Option<f64> {
    s["connections"][0]["peer_devices"][0]["percent-resync-done"].as_f64()
}

/// Both nodes lost the connection (neither `Connected` nor in a resync).
fn wait_disconnected(p: &Pair) {
    p.wait_for_both("the connection lost on both", WAIT, |_, s| {
        matches!(json_connection_state(s), "Connecting" | "StandAlone")
    });
}

/// A pair that skipped the initial sync, alice Primary.
fn start_primary_pair(opts: PairOptions) -> Pair {
    let p = Pair::start(opts);
    p.wait_connected(60);
    p.alice.ok(&["new-current-uuid", "r0", "--clear-bitmap"]);
    p.wait_up_to_date(WAIT);
    p.alice.ok(&["primary", "r0"]);
    p
}

/// A pair started with `--no-up` whose alice has random bytes in its whole data area (the
/// size comes from an attach, detached again before the fill); then both are brought up and
/// connected. Returns the pair and the data area's size.
fn start_pair_with_random_alice(opts: PairOptions) -> (Pair, u64) {
    let p = Pair::start(PairOptions {
        daemon_args: vec!["--no-up".into()],
        ..opts
    });
    p.alice.ok(&["attach", "r0"]);
    let size = data_bytes(&p.alice);
    p.alice.ok(&["detach", "r0"]);
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut disk = std::fs::File::options()
        .write(true)
        .open(&p.alice.disk)
        .unwrap();
    let copied = std::io::copy(&mut (&mut random).take(size), &mut disk).unwrap();
    assert_eq!(copied, size);
    disk.sync_all().unwrap();
    for n in p.nodes() {
        n.ok(&["up", "r0"]);
    }
    p.wait_connected(60);
    assert_eq!(p.alice.dstate(), "Inconsistent/Inconsistent");
    (p, size)
}

/// Both data areas equal (compared by checksum, then byte for byte for the message), and not
/// all zeros.
fn assert_identical(p: &Pair, size: u64) {
    let a = p.alice.data_area(size);
    let b = p.bob.data_area(size);
    assert!(a.iter().any(|&x| x != 0), "alice's data area is all zeros");
    let (ca, cb) = (fnv1a(&a), fnv1a(&b));
    println!("data area checksums: alice {ca:#018x}, bob {cb:#018x} ({size} bytes)");
    if ca != cb || a != b {
        let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
        panic!(
            "data areas differ, first at byte {first} (alice {:#x}, bob {:#x})\n{}",
            a[first],
            b[first],
            p.logs()
        );
    }
}

/// A python3-libnbd writer (see [`NBD_SCRIPT`]) whose acknowledged writes are collected by a
/// thread; killed (and waited for) on drop.
struct Writer {
    child: Option<Child>,
    acked: Arc<Mutex<Vec<(u64, u64)>>>,
    done: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: std::path::PathBuf,
}

impl Writer {
    fn start(p: &Pair, node: &Node, seed: u64, count: u64, inflight: u32, spacing: u32) -> Writer {
        let stderr = p.dir.path().join(format!("writer-{}.err", node.name));
        let mut child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                NBD_SCRIPT,
                "write",
                &node.daemon.uri("r0"),
                &seed.to_string(),
                &count.to_string(),
                &inflight.to_string(),
                &spacing.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn /usr/bin/python3");
        let stdout = child.stdout.take().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (acked, done) = (acked.clone(), done.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let f: Vec<&str> = line.split(' ').collect();
                    match f.as_slice() {
                        ["A", i, b, "ok"] => acked
                            .lock()
                            .unwrap()
                            .push((i.parse().unwrap(), b.parse().unwrap())),
                        ["DONE"] => done.store(true, Ordering::SeqCst),
                        _ => {} // a line cut short by the writer's death
                    }
                }
            })
        };
        Writer {
            child: Some(child),
            acked,
            done,
            reader: Some(reader),
            stderr,
        }
    }

    /// The writes acknowledged so far (index, block).
    fn acked(&self) -> Vec<(u64, u64)> {
        self.acked.lock().unwrap().clone()
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until at least `n` writes were acknowledged.
    fn wait_acked(&self, n: usize, p: &Pair) {
        let deadline = Instant::now() + WAIT;
        while self.acked_count() < n {
            assert!(
                Instant::now() < deadline && !self.done.load(Ordering::SeqCst),
                "writer: {} of {n} writes acknowledged; stderr: {}\n{}",
                self.acked_count(),
                self.stderr_text(),
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the writer's exit (killing it after `timeout`); returns whether it exited
    /// successfully having printed DONE, and every acknowledged write.
    fn finish(mut self, timeout: Duration) -> (bool, Vec<(u64, u64)>) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.reader.take().unwrap().join().unwrap();
        let ok = status.is_some_and(|s| s.success()) && self.done.load(Ordering::SeqCst);
        (ok, self.acked())
    }

    /// Kills the writer and returns every acknowledged write.
    fn kill(mut self) -> Vec<(u64, u64)> {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.finish(Duration::from_secs(10)).1
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads every write of `writes` back through `node`'s NBD export; panics on a difference.
fn verify(p: &Pair, node: &Node, seed: u64, writes: &[(u64, u64)]) {
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            NBD_SCRIPT,
            "verify",
            &node.daemon.uri("r0"),
            &seed.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn /usr/bin/python3");
    let input: String = writes.iter().map(|(i, b)| format!("{i} {b}\n")).collect();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{} read back: {}", node.name, out.trim());
    assert!(
        o.status.success() && out.contains(&format!("VERIFIED {} BAD 0", writes.len())),
        "reading the acknowledged writes back from {} failed (seed {seed}): {out}{}\n{}",
        node.name,
        String::from_utf8_lossy(&o.stderr),
        p.logs()
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

// ------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------

#[test]
fn initial_full_sync_sends_the_device_and_ends_identical() {
    require_all();
    let (p, size) = start_pair_with_random_alice(PairOptions {
        size: 64 * MIB,
        net: FAST_NET.into(),
        disk: FAST_RESYNC.into(),
        ..PairOptions::default()
    });
    let nft = NftTable::for_pair(p.alice.address, p.bob.address);
    let t0 = Instant::now();
    p.alice.ok(&["primary", "r0", "--force"]);
    p.wait_up_to_date(WAIT);
    let elapsed = t0.elapsed();
    let (a2b, b2a) = (nft.bytes(Direction::AToB), nft.bytes(Direction::BToA));
    println!(
        "initial sync of {:.1} MiB in {elapsed:.2?}: alice->bob {a2b} bytes ({:.4} x device), bob->alice {b2a} bytes",
        mib(size),
        a2b as f64 / size as f64
    );
    assert_identical(&p, size);
    assert!(
        a2b >= size,
        "alice sent {a2b} bytes, less than the device's {size}\n{}",
        p.logs()
    );
}

#[test]
fn failover_after_kill_9_of_the_primary_loses_no_acknowledged_write() {
    require_all();
    let seed = seed();
    let mut p = start_primary_pair(PairOptions {
        size: 64 * MIB,
        net: FAST_NET.into(),
        disk: FAST_RESYNC.into(),
        ..PairOptions::default()
    });
    let size = data_bytes(&p.alice);
    let count = size / 4096;
    let w = Writer::start(&p, &p.alice, seed, count, 8, 1);
    w.wait_acked(500, &p);
    p.alice.kill_9();
    let killed_at = w.acked_count();
    let (finished, acked) = w.finish(WAIT);
    println!(
        "alice killed after {killed_at} acknowledged writes; the writer saw {} of {count} acknowledged",
        acked.len()
    );
    assert!(
        !finished && (acked.len() as u64) < count,
        "the writer finished before the kill: the test did not kill mid-stream"
    );
    p.bob.wait_for("the connection to alice lost", WAIT, |s| {
        matches!(json_connection_state(s), "Connecting" | "StandAlone")
    });
    p.bob.ok(&["primary", "r0"]);
    assert_eq!(p.bob.dstate(), "UpToDate/DUnknown");
    verify(&p, &p.bob, seed, &acked);
}

#[test]
fn writes_acknowledged_before_a_partition_are_on_the_promoted_peer() {
    require_all();
    let seed = seed();
    let p = start_primary_pair(PairOptions {
        size: 64 * MIB,
        net: FAST_NET.into(),
        disk: FAST_RESYNC.into(),
        ..PairOptions::default()
    });
    let nft = NftTable::for_pair(p.alice.address, p.bob.address);
    let size = data_bytes(&p.alice);
    let count = size / 4096;
    let w = Writer::start(&p, &p.alice, seed, count, 8, 1);
    w.wait_acked(300, &p);
    // A slow link (128 KiB/s once the first second's 144 KiB are through, 36 writes): writes
    // queue up on alice's side of the connection, so an acknowledgement before the peer has
    // the write would be lost with the queue.
    nft.throttle(Direction::AToB, 128 << 10);
    let throttled_at = w.acked_count();
    let t_throttle = Instant::now();
    w.wait_acked(throttled_at + 72, &p);
    let throttled_rate =
        (w.acked_count() - throttled_at) as f64 * 4.0 / t_throttle.elapsed().as_secs_f64();
    // Every write printed so far was acknowledged before the first packet is dropped.
    let partition = nft.prepare_partition();
    let before = w.acked();
    partition.apply();
    let t0 = Instant::now();
    wait_disconnected(&p);
    let noticed = t0.elapsed();
    let at_notice = w.acked_count();
    // Alice goes on alone: writes complete without the peer.
    std::thread::sleep(Duration::from_millis(500));
    let all = w.kill();
    println!(
        "throttled to 128 KiB/s: {throttled_rate:.0} KiB/s of writes; partition noticed by both after {noticed:.2?}; {} writes acknowledged before it, {} when noticed, {} in all",
        before.len(),
        at_notice,
        all.len()
    );
    p.bob.ok(&["primary", "r0"]);
    verify(&p, &p.bob, seed, &before);
}

#[test]
fn incremental_resync_sends_only_what_changed() {
    require_all();
    let seed = seed();
    let p = start_primary_pair(PairOptions {
        size: 272 * MIB,
        net: FAST_NET.into(),
        disk: FAST_RESYNC.into(),
        ..PairOptions::default()
    });
    let nft = NftTable::for_pair(p.alice.address, p.bob.address);
    let size = data_bytes(&p.alice);
    assert!(size >= 256 * MIB, "size {size}");
    p.alice.ok(&["disconnect", "r0"]);
    p.alice.wait_for("StandAlone", WAIT, |s| {
        json_connection_state(s) == "StandAlone"
    });
    // 16384 blocks of 4 KiB (64 MiB), no two adjacent, spread over the device.
    const BLOCKS: u64 = 16384;
    let changed = BLOCKS * 4096;
    let t_write = Instant::now();
    let (finished, acked) = Writer::start(&p, &p.alice, seed, BLOCKS, 16, 4).finish(WAIT);
    println!(
        "{BLOCKS} scattered 4 KiB writes on the disconnected Primary in {:.2?}",
        t_write.elapsed()
    );
    assert!(
        finished && acked.len() as u64 == BLOCKS,
        "the writer failed after {} writes\n{}",
        acked.len(),
        p.logs()
    );
    let mut blocks: Vec<u64> = acked.iter().map(|&(_, b)| b).collect();
    blocks.sort_unstable();
    assert!(
        blocks.windows(2).all(|w| w[1] > w[0] + 1),
        "adjacent blocks"
    );
    let oos = out_of_sync_kib(&p.alice.status_json());
    println!("alice out-of-sync before the reconnect: {oos} KiB");
    nft.reset();
    let t0 = Instant::now();
    p.alice.ok(&["connect", "r0"]);
    p.wait_up_to_date(WAIT);
    let elapsed = t0.elapsed();
    let (a2b, b2a) = (nft.bytes(Direction::AToB), nft.bytes(Direction::BToA));
    let ratio = a2b as f64 / changed as f64;
    println!(
        "incremental resync of {:.1} MiB changed in {elapsed:.2?}: alice->bob {a2b} bytes ({ratio:.4} x changed), bob->alice {b2a} bytes",
        mib(changed)
    );
    let t_cmp = Instant::now();
    assert_identical(&p, size);
    verify(&p, &p.alice, seed, &acked);
    println!("compared and read back in {:.2?}", t_cmp.elapsed());
    assert!(
        a2b >= changed,
        "alice sent {a2b} bytes, less than the {changed} bytes changed\n{}",
        p.logs()
    );
    assert!(
        ratio <= 1.05,
        "the resync sent {a2b} bytes, {ratio:.3} x the {changed} bytes changed (at most 1.05 x)\n{}",
        p.logs()
    );
}

#[test]
fn resync_interrupted_by_a_partition_resumes_without_starting_over() {
    require_all();
    let (p, size) = start_pair_with_random_alice(PairOptions {
        size: 96 * MIB,
        net: FAST_NET.into(),
        disk: "c-plan-ahead 0; resync-rate 20M;".into(),
        ..PairOptions::default()
    });
    let nft = NftTable::for_pair(p.alice.address, p.bob.address);
    let t0 = Instant::now();
    p.alice.ok(&["primary", "r0", "--force"]);
    // Partition at about half-way.
    let deadline = Instant::now() + WAIT;
    let done_at_partition = loop {
        let s = p.alice.status_json();
        let done = resync_done_percent(&s).unwrap_or(0.0);
        if done >= 50.0 {
            nft.partition();
            break done;
        }
        assert!(
            Instant::now() < deadline && !json_up_to_date(&s),
            "the resync did not reach 50%: {s}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let oos_at_partition = out_of_sync_kib(&p.alice.status_json());
    let a2b_at_partition = nft.bytes(Direction::AToB);
    println!(
        "partitioned at {done_at_partition:.2}% done after {:.2?} (out-of-sync {oos_at_partition} KiB, alice->bob {a2b_at_partition} bytes)",
        t0.elapsed()
    );
    assert!(
        done_at_partition < 90.0,
        "the resync was almost over before the partition: {done_at_partition}%"
    );
    wait_disconnected(&p);
    let s = p.alice.status_json();
    println!(
        "both disconnected after {:.2?}: alice {}, out-of-sync {} KiB",
        t0.elapsed(),
        json_connection_state(&s),
        out_of_sync_kib(&s)
    );
    nft.heal();
    // The resync goes on where it was: alice's out-of-sync never grows back towards the
    // device's size (a new resync's percent-resync-done starts at 0 again, as DRBD's does:
    // it counts from the bits left at its start).
    let mut highest_oos_after = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let s = p.alice.status_json();
        highest_oos_after = highest_oos_after.max(out_of_sync_kib(&s));
        if json_up_to_date(&s) && json_up_to_date(&p.bob.status_json()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no UpToDate/UpToDate after the partition healed: {s}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed();
    println!("after the partition alice's out-of-sync was at most {highest_oos_after} KiB");
    let (a2b, b2a) = (nft.bytes(Direction::AToB), nft.bytes(Direction::BToA));
    let ratio = a2b as f64 / size as f64;
    println!(
        "resync of {:.1} MiB with a partition done in {elapsed:.2?}: alice->bob {a2b} bytes ({ratio:.4} x device), bob->alice {b2a} bytes",
        mib(size)
    );
    assert_identical(&p, size);
    assert!(
        a2b >= size,
        "alice sent {a2b} bytes, less than the device's {size}\n{}",
        p.logs()
    );
    assert!(
        ratio <= 1.3,
        "the resync sent {a2b} bytes, {ratio:.3} x the device: it started over\n{}",
        p.logs()
    );
    assert!(
        highest_oos_after <= oos_at_partition + 1024,
        "after the partition alice's out-of-sync grew to {highest_oos_after} KiB from {oos_at_partition} KiB: the resync started over\n{}",
        p.logs()
    );
}

#[test]
fn dynamic_resync_controller_with_drbd_defaults_completes_a_resync() {
    require_all();
    // No resync options: resync-rate 250K, c-plan-ahead 20 (2 s), c-fill-target 100 sectors,
    // c-delay-target 10, c-max-rate 100M, c-min-rate 250K.
    let (p, size) = start_pair_with_random_alice(PairOptions {
        size: 64 * MIB,
        net: FAST_NET.into(),
        disk: String::new(),
        ..PairOptions::default()
    });
    let t0 = Instant::now();
    p.alice.ok(&["primary", "r0", "--force"]);
    // (time, alice's out-of-sync KiB) samples, and the highest rate bob's controller aimed at
    // (`want`).
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut max_want: f64 = 0.0;
    let deadline = Instant::now() + WAIT;
    loop {
        let s = p.alice.status_json();
        let sb = p.bob.status_json();
        // The SyncTarget runs the controller.
        if let Some(want) = sb["connections"][0]["peer_devices"][0]["want"].as_f64() {
            max_want = max_want.max(want);
        }
        if resync_done_percent(&s).is_some() {
            samples.push((Instant::now(), out_of_sync_kib(&s)));
        }
        if json_up_to_date(&s) && json_up_to_date(&sb) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resync did not finish within {WAIT:?}: {s}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = t0.elapsed();
    let rate = size as f64 / elapsed.as_secs_f64();
    // The highest rate over any window of at least 2 s between samples.
    let mut max_window: f64 = 0.0;
    for (i, &(t1, oos1)) in samples.iter().enumerate() {
        if let Some(&(t2, oos2)) = samples[i..]
            .iter()
            .find(|(t, _)| t.duration_since(t1) >= Duration::from_secs(2))
        {
            let kib = oos1.saturating_sub(oos2) as f64;
            max_window = max_window.max(kib * 1024.0 / t2.duration_since(t1).as_secs_f64());
        }
    }
    println!(
        "resync of {:.1} MiB with DRBD's default controller in {elapsed:.2?}: {:.2} MiB/s on average, {:.2} MiB/s at most over 2 s, want at most {max_want:.2} MiB/s ({} samples)",
        mib(size),
        rate / MIB as f64,
        max_window / MIB as f64,
        samples.len()
    );
    assert!(
        rate > 250.0 * 1024.0,
        "{rate:.0} B/s is not above resync-rate 250K\n{}",
        p.logs()
    );
    assert!(
        max_want > 250.0 / 1024.0 && max_want <= 100.0,
        "bob's controller aimed at {max_want} MiB/s at most: not above resync-rate 250K, or above c-max-rate 100M\n{}",
        p.logs()
    );
    assert!(
        rate <= 100.0 * MIB as f64 && max_window <= 100.0 * MIB as f64,
        "{rate:.0} B/s on average, {max_window:.0} B/s at most over 2 s: above c-max-rate 100M\n{}",
        p.logs()
    );
    assert_identical(&p, size);
}
