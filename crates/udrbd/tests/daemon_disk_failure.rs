//! Local disk failure handling with real processes (issue 5): two daemons, alice Primary on a
//! backing disk that freezes or fails on command (nbdkit's pause and error filters, or a
//! range-selective Python plugin, exposed as a file through nbdfuse: tests/blockstack), bob
//! Secondary on a plain file; a writer and verifier through alice's NBD export (libnbd).
//!
//! Every test resumes the disk and clears faults before it ends; the fixture's drop does it
//! again (and aborts the FUSE connection if IO still hangs), then kills nbdkit and unmounts.

mod blockstack;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blockstack::faulty_disk::FaultyDisk;
use support::*;

const SIZE: u64 = 64 << 20;
const BLOCK: u64 = 4096;
/// Blocks the workload touches (the first 8 MiB).
const BLOCKS: u64 = 2048;

/// The writer/verifier: random 4 KiB writes and reads of the first `BLOCKS` blocks, every
/// block's content derived from (block, sequence number); every read is checked against the
/// last acknowledged write (zeros if none). Any error or wrong byte exits 1. The model (block
/// -> sequence) goes to MODEL as JSON, with counters and the longest request latency.
const WORKLOAD: &str = r#"
import json, nbd, random, struct, sys, time
uri, seconds, seed, blocks, model_path = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
mode = sys.argv[6] if len(sys.argv) > 6 else "mixed"
BS = 4096
def content(b, s):
    if s == 0:
        return bytes(BS)
    return struct.pack('<QQ', b, s) + random.Random(b * 1000003 + s).randbytes(BS - 16)
try:
    model = {int(k): v for k, v in json.load(open(model_path))["model"].items()}
except FileNotFoundError:
    model = {}
h = nbd.NBD()
h.connect_uri(uri)
rng = random.Random(seed)
seq = max(model.values(), default=0)
writes = reads = 0
max_latency = 0.0
def check(b):
    got = h.pread(BS, b * BS)
    want = content(b, model.get(b, 0))
    if got != want:
        print(f"block {b}: read {got[:16].hex()}, expected sequence {model.get(b, 0)}", file=sys.stderr)
        sys.exit(1)
if mode == "verify":
    for b in range(blocks):
        t0 = time.time()
        check(b)
        reads += 1
        max_latency = max(max_latency, time.time() - t0)
else:
    end = time.time() + seconds
    while time.time() < end:
        b = rng.randrange(blocks)
        t0 = time.time()
        if mode == "write" or rng.random() < 0.6:
            seq += 1
            h.pwrite(content(b, seq), b * BS)
            model[b] = seq
            writes += 1
        else:
            check(b)
            reads += 1
        max_latency = max(max_latency, time.time() - t0)
    h.flush()
h.shutdown()
json.dump({"writes": writes, "reads": reads, "max_latency": max_latency,
           "model": {str(k): v for k, v in model.items()}}, open(model_path, "w"))
"#;

struct Workload {
    child: Child,
    model: PathBuf,
}

impl Workload {
    fn start(dir: &Path, uri: &str, seconds: f64, seed: u64, mode: &str) -> Workload {
        let script = dir.join("workload.py");
        std::fs::write(&script, WORKLOAD).unwrap();
        let model = dir.join("model.json");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(uri)
            .arg(seconds.to_string())
            .arg(seed.to_string())
            .arg(BLOCKS.to_string())
            .arg(&model)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with python3-libnbd");
        Workload { child, model }
    }

    /// Waits for the end; panics with its output if it failed. Returns the summary.
    fn finish(self, logs: impl Fn() -> String) -> serde_json::Value {
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the application saw an error: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        serde_json::from_str(&std::fs::read_to_string(&self.model).unwrap()).unwrap()
    }
}

/// Runs the workload to its end.
fn run_workload(pair: &Pair, seconds: f64, seed: u64, mode: &str) -> serde_json::Value {
    let uri = pair.alice.daemon.uri(PAIR_RESOURCE);
    Workload::start(pair.dir.path(), &uri, seconds, seed, mode).finish(|| pair.logs())
}

fn disk_state(s: &serde_json::Value) -> String {
    s["devices"][0]["disk-state"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// A pair with alice on a faulty disk: connected, UpToDate without an initial sync (both
/// disks are zeros), alice Primary.
fn faulty_pair(disk_options: &str, handlers: &str) -> (Pair, FaultyDisk) {
    faulty_pair_with(PairOptions {
        disk: format!("c-plan-ahead 0; resync-rate 100M; {disk_options}"),
        handlers: handlers.to_string(),
        ..PairOptions::default()
    })
}

/// [`faulty_pair`] with options of its own (`size` is the fixture's).
fn faulty_pair_with(opts: PairOptions) -> (Pair, FaultyDisk) {
    require_root();
    require_tool("nbdkit", "nbdkit");
    require_tool("nbdfuse", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("alice.img");
    sparse_file(&image, SIZE);
    create_md(&image);
    let disk = FaultyDisk::start(dir.path(), &image);
    let opts = PairOptions { size: SIZE, ..opts };
    let pair = Pair::start_in(dir, opts, Some(disk.path()));
    pair.wait_connected(20);
    pair.alice
        .ok(&["new-current-uuid", "--clear-bitmap", PAIR_RESOURCE]);
    pair.wait_up_to_date(Duration::from_secs(20));
    pair.alice.ok(&["primary", PAIR_RESOURCE]);
    (pair, disk)
}

/// Polls alice's `status --json` every 100 ms until `done` holds, asserting that every call
/// answers within 1 s; returns the time it took and the longest answer.
fn poll_status_until(
    pair: &Pair,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (Duration, Duration) {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let t0 = Instant::now();
        let s = pair.alice.status_json();
        let took = t0.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_secs(1),
            "status took {took:?} (must answer within 1 s)\n{}",
            pair.logs()
        );
        if done(&s) {
            return (start.elapsed(), slowest);
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}: {s}\n{}",
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Re-attaches alice (after the disk healed) and waits for the resync; then checks every
/// acknowledged write through the NBD export `uri` (the Primary's) and that both data areas
/// are identical.
fn reattach_and_verify(pair: &Pair, image: &Path, uri: &str) {
    // The stuck IO of the old attach must have returned first.
    poll_status_until(pair, "no stuck IO", Duration::from_secs(30), |s| {
        s["devices"][0]["udrbd-stuck-ios"].is_null()
    });
    pair.alice.ok(&["attach", PAIR_RESOURCE]);
    pair.wait_up_to_date(Duration::from_secs(60));
    let summary = Workload::start(pair.dir.path(), uri, 0.0, 0, "verify").finish(|| pair.logs());
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS));
    let alice = read_prefix(image, SIZE / 2);
    let bob = pair.bob.data_area(SIZE / 2);
    assert!(alice == bob, "alice's and bob's data areas differ");
}

/// `detach --force` on alice, which returns within 1 s whatever her disk does.
fn force_detach_alice(pair: &Pair) {
    let t0 = Instant::now();
    pair.alice.ok(&["detach", "--force", PAIR_RESOURCE]);
    let took = t0.elapsed();
    println!("detach --force returned after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "detach --force took {took:?}"
    );
}

fn read_prefix(path: &Path, len: u64) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// The frozen-disk scenario: alice's backing disk pauses under load; `detach` is what ends
/// the hang (disk-timeout, or `detach --force` when `force` is set).
fn frozen_disk(force: bool) {
    let options = if force { "" } else { "disk-timeout 30;" };
    let (pair, disk) = faulty_pair(options, "");
    let image = pair.dir.path().join("alice.img");
    let uri = pair.alice.daemon.uri(PAIR_RESOURCE);
    let workload = Workload::start(pair.dir.path(), &uri, 10.0, 1, "mixed");
    std::thread::sleep(Duration::from_secs(2));
    disk.pause();
    let paused = Instant::now();
    let mut plain_detach = None;
    if force {
        // A plain detach waits for the frozen IO, showing its progress in `status`...
        let mut cmd = Command::new(udrbd_bin());
        cmd.arg("--run-dir")
            .arg(&pair.alice.daemon.run_dir)
            .args(["detach", PAIR_RESOURCE])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        plain_detach = Some(cmd.spawn().unwrap());
        // (Which step hangs depends on what was in flight at the pause: the data IO, the
        // bitmap write-out, the AL ring or the clean superblock.)
        poll_status_until(&pair, "the detach waiting", Duration::from_secs(5), |s| {
            s["devices"][0]["udrbd-detach"].is_string()
        });
        std::thread::sleep(Duration::from_millis(500));
        let s = pair.alice.status_json();
        let step = s["devices"][0]["udrbd-detach"].clone();
        println!("the plain detach hangs at step {step}");
        assert!(
            step.is_string(),
            "the plain detach ended on a frozen disk: {s}"
        );
        // ... until `detach --force` ends it.
        force_detach_alice(&pair);
    }
    let limit = if force {
        Duration::from_secs(1 + 2)
    } else {
        Duration::from_secs(3 + 2)
    };
    let (_, slowest) = poll_status_until(&pair, "alice Diskless", limit, |s| {
        disk_state(s) == "Diskless"
    });
    let took = paused.elapsed();
    println!(
        "alice Diskless {took:?} after the disk froze (limit {limit:?}); slowest status {slowest:?}"
    );
    let s = pair.alice.status_json();
    let reason = if force {
        "forced detach"
    } else {
        "disk-timeout"
    };
    assert_eq!(
        s["devices"][0]["udrbd-disk-failure-reason"].as_str(),
        Some(reason),
        "{s}"
    );
    assert_eq!(s["devices"][0]["udrbd-served-by-peer"], true, "{s}");
    if let Some(child) = plain_detach {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the plain detach: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Writes go on at the peer while the disk stays frozen; status keeps answering.
    let (_, slowest) =
        poll_status_until(&pair, "the workload's end", Duration::from_secs(20), |_| {
            std::fs::metadata(pair.dir.path().join("model.json")).is_ok()
        });
    println!("slowest status while diskless: {slowest:?}");
    let summary = workload.finish(|| pair.logs());
    println!(
        "workload: {} writes, {} reads, longest request {:.3} s",
        summary["writes"], summary["reads"], summary["max_latency"]
    );
    assert!(summary["writes"].as_u64().unwrap() > 0);
    // An attach while the old IO is stuck is refused, naming the stuck IO.
    let o = pair.alice.cli(&["attach", PAIR_RESOURCE]);
    assert!(!o.status.success(), "attach with stuck IO succeeded");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("IO request(s) of the previous attach"),
        "{err}"
    );
    // The late completions change nothing.
    disk.resume();
    reattach_and_verify(&pair, &image, &pair.alice.daemon.uri(PAIR_RESOURCE));
    disk.clear_faults();
}

#[test]
fn frozen_disk_is_detached_by_disk_timeout_and_the_peer_serves_the_io() {
    frozen_disk(false);
}

#[test]
fn frozen_disk_is_detached_by_detach_force_and_the_peer_serves_the_io() {
    frozen_disk(true);
}

/// The frozen disk on the Secondary: bob Primary with the writer on bob's export, alice
/// Secondary on the disk that freezes under the replicated writes. `detach --force` on alice
/// ends the hang: alice is Diskless, connected to bob again (if her detach left writes she
/// had acked but not flushed, she reconnects and bob marks them, as after any connection
/// loss), and bob goes on serving every request. After the disk resumes, alice attaches
/// again and resyncs; every acknowledged write reads back from bob, and the two data areas
/// are identical.
#[test]
fn a_frozen_secondary_is_force_detached_reconnects_and_resyncs() {
    let (pair, disk) = faulty_pair("", "");
    let image = pair.dir.path().join("alice.img");
    pair.alice.ok(&["secondary", PAIR_RESOURCE]);
    pair.bob.ok(&["primary", PAIR_RESOURCE]);
    let uri = pair.bob.daemon.uri(PAIR_RESOURCE);
    let workload = Workload::start(pair.dir.path(), &uri, 8.0, 3, "mixed");
    std::thread::sleep(Duration::from_secs(2));
    disk.pause();
    // Protocol C: bob's writes now wait for alice's acks.
    std::thread::sleep(Duration::from_secs(1));
    force_detach_alice(&pair);
    let (diskless, _) = poll_status_until(&pair, "alice Diskless", Duration::from_secs(3), |s| {
        disk_state(s) == "Diskless"
    });
    println!("alice Diskless {diskless:?} after detach --force (limit 3 s)");
    // alice is (again) bob's diskless peer, while her old IO stays stuck.
    pair.bob.wait_for(
        "a Connected, diskless alice",
        Duration::from_secs(15),
        |s| json_connection_state(s) == "Connected" && json_peer_disk_state(s) == "Diskless",
    );
    let s = pair.alice.status_json();
    assert_eq!(json_connection_state(&s), "Connected", "{s}");
    assert!(
        !s["devices"][0]["udrbd-stuck-ios"].is_null(),
        "alice's frozen IO is counted as stuck: {s}"
    );
    let summary = workload.finish(|| pair.logs());
    println!(
        "workload on bob: {} writes, {} reads, longest request {:.3} s",
        summary["writes"], summary["reads"], summary["max_latency"]
    );
    assert!(summary["writes"].as_u64().unwrap() > 0);
    disk.resume();
    reattach_and_verify(&pair, &image, &uri);
    disk.clear_faults();
}

/// max-buffers on a Secondary whose disk freezes, under protocol A (where the Primary does
/// not wait for the peer's disk): alice, the Secondary, stops reading her data socket once
/// the writes she holds take max-buffers pages. The kernel's socket buffers fill, then
/// bob's send queue (sndbuf-size), and bob's writes wait instead of alice's memory growing.
/// Neither daemon's memory grows by more than 16 MiB. After the resume every write reaches
/// alice's disk and the data areas are identical.
#[test]
fn a_secondary_with_a_frozen_disk_holds_at_most_max_buffers_of_writes() {
    const MAX_BUFFERS: u64 = 32;
    let (pair, disk) = faulty_pair_with(PairOptions {
        // ko-count 0: under protocol A the barrier acks stay out while alice's disk is frozen,
        // and that would end the connection after timeout x ko-count.
        net: format!(
            "protocol A; connect-int 1; ping-int 1; ping-timeout 5; timeout 5; ko-count 0; \
             max-buffers {MAX_BUFFERS}; sndbuf-size 1M;"
        ),
        ..PairOptions::default()
    });
    let image = pair.dir.path().join("alice.img");
    pair.alice.ok(&["secondary", PAIR_RESOURCE]);
    pair.bob.ok(&["primary", PAIR_RESOURCE]);
    let uri = pair.bob.daemon.uri(PAIR_RESOURCE);
    let rss_before = pair.alice.daemon.rss_kib();
    let bob_rss_before = pair.bob.daemon.rss_kib();
    let workload = Workload::start(pair.dir.path(), &uri, 8.0, 5, "write");
    std::thread::sleep(Duration::from_secs(1));
    disk.pause();
    std::thread::sleep(Duration::from_secs(4));
    let received = |s: &serde_json::Value| {
        s["connections"][0]["peer_devices"][0]["received"]
            .as_u64()
            .unwrap_or(0)
    };
    // The resource loop answers while the disk is frozen: no submission waits for it.
    let t0 = Instant::now();
    let mut status = Command::new(udrbd_bin())
        .arg("--run-dir")
        .arg(&pair.alice.daemon.run_dir)
        .args(["status", PAIR_RESOURCE])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while status.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let answered = status.try_wait().unwrap().is_some();
    if !answered {
        let _ = status.kill();
        let _ = status.wait();
    }
    assert!(
        answered,
        "alice's status did not answer within 2 s while her disk is frozen\n{}",
        pair.logs()
    );
    println!("alice's status answered in {:?}", t0.elapsed());
    let first = pair.alice.status_json();
    std::thread::sleep(Duration::from_secs(1));
    let second = pair.alice.status_json();
    let unacked = second["connections"][0]["peer_devices"][0]["unacked"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let rss_paused = pair.alice.daemon.rss_kib();
    let bob_rss_paused = pair.bob.daemon.rss_kib();
    println!(
        "alice frozen: {unacked} writes unacked (max-buffers {MAX_BUFFERS} pages), received \
         {} then {} KiB a second later, RSS {rss_before} -> {rss_paused} KiB; bob's RSS \
         {bob_rss_before} -> {bob_rss_paused} KiB",
        received(&first),
        received(&second)
    );
    assert!(
        unacked <= MAX_BUFFERS,
        "alice holds {unacked} writes, at most max-buffers: {second}\n{}",
        pair.logs()
    );
    assert_eq!(
        received(&first),
        received(&second),
        "alice reads nothing while her disk is frozen:\n{first}\n{second}"
    );
    assert!(
        rss_paused < rss_before + 16 * 1024,
        "alice's memory stays bounded: {rss_before} -> {rss_paused} KiB"
    );
    // And the sender's: bob queues at most sndbuf-size (1 MiB) beyond what his socket
    // took, and his writes wait for room instead of piling up.
    assert!(
        bob_rss_paused < bob_rss_before + 16 * 1024,
        "bob's memory stays bounded: {bob_rss_before} -> {bob_rss_paused} KiB"
    );
    disk.resume();
    let summary = workload.finish(|| pair.logs());
    println!("workload on bob: {} writes", summary["writes"]);
    pair.alice.wait_for(
        "every write received and written",
        Duration::from_secs(30),
        |s| {
            let d = &s["connections"][0]["peer_devices"][0];
            d["unacked"].as_u64() == Some(0)
        },
    );
    pair.bob
        .wait_for("every write acked", Duration::from_secs(30), |s| {
            let d = &s["connections"][0]["peer_devices"][0];
            d["pending"].as_u64() == Some(0) && d["sent"] == received(&pair.alice.status_json())
        });
    let alice = read_prefix(&image, BLOCKS * BLOCK);
    let bob = pair.bob.data_area(BLOCKS * BLOCK);
    assert!(alice == bob, "alice's and bob's data areas differ");
    disk.clear_faults();
}

// ---- read and write errors -------------------------------------------------------------

/// `udrbd dump-md --force` of a detached image (unclean meta-data after a failure).
fn dump_md(image: &Path) -> String {
    run_ok(
        Command::new(udrbd_bin())
            .args(["dump-md", "--force"])
            .arg(image),
    )
}

/// Fills the workload's blocks with acknowledged writes (then flushed).
fn write_phase(pair: &Pair, seed: u64) -> serde_json::Value {
    let summary = run_workload(pair, 2.0, seed, "write");
    assert!(summary["writes"].as_u64().unwrap() > 100, "{summary}");
    summary
}

/// Read errors on alice's disk under `policy`: the application still reads every
/// acknowledged write (from the peer); returns alice's status afterwards.
fn read_errors_under(policy: &str, handlers: &str) -> (Pair, FaultyDisk, serde_json::Value) {
    let (pair, disk) = faulty_pair(&format!("on-io-error {policy};"), handlers);
    write_phase(&pair, 11);
    disk.fail_reads(true);
    let summary = run_workload(&pair, 0.0, 0, "verify");
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS), "{summary}");
    let s = pair.alice.status_json();
    assert!(
        s["devices"][0]["udrbd-io-errors"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    (pair, disk, s)
}

#[test]
fn read_errors_with_detach_are_served_by_the_peer_recorded_in_the_bitmap_and_healed() {
    let (pair, disk, s) = read_errors_under("detach", "");
    assert_eq!(disk_state(&s), "Diskless", "{s}");
    assert_eq!(
        s["devices"][0]["udrbd-disk-failure-reason"].as_str(),
        Some("read error"),
        "{s}"
    );
    disk.clear_faults();
    // The bad block's bit reached the disk on the detach: `down`, then dump-md.
    pair.alice.ok(&["down", PAIR_RESOURCE]);
    let image = pair.dir.path().join("alice.img");
    let words = bitmap_words(&dump_md(&image));
    let bits: u32 = words.iter().map(|w| w.count_ones()).sum();
    // The verifier reads block 0 first: its read failed and detached the disk.
    assert!(words.first().is_some_and(|w| w & 1 == 1), "bit 0 not set");
    println!("bits set on disk after the read error: {bits}");
    assert!((1..16).contains(&bits), "{bits} bits set");
    // Re-attach heals: the resync takes the bad block from the peer.
    pair.alice.ok(&["up", PAIR_RESOURCE]);
    pair.wait_up_to_date(Duration::from_secs(60));
    pair.alice.ok(&["primary", PAIR_RESOURCE]);
    let summary = run_workload(&pair, 0.0, 0, "verify");
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS));
    assert!(read_prefix(&image, SIZE / 2) == pair.bob.data_area(SIZE / 2));
}

#[test]
fn read_errors_with_pass_on_make_the_disk_inconsistent_and_a_reconnect_heals_it() {
    let (pair, disk, s) = read_errors_under("pass_on", "");
    assert_eq!(disk_state(&s), "Inconsistent", "{s}");
    disk.clear_faults();
    // A Primary without UpToDate data must not lose its peer: demote, then reconnect; the
    // handshake makes the Inconsistent side SyncTarget of its out-of-sync blocks.
    pair.alice.ok(&["secondary", PAIR_RESOURCE]);
    pair.alice.ok(&["disconnect", PAIR_RESOURCE]);
    pair.alice.ok(&["connect", PAIR_RESOURCE]);
    pair.wait_up_to_date(Duration::from_secs(60));
    pair.alice.ok(&["primary", PAIR_RESOURCE]);
    let summary = run_workload(&pair, 0.0, 0, "verify");
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS));
    let image = pair.dir.path().join("alice.img");
    assert!(read_prefix(&image, SIZE / 2) == pair.bob.data_area(SIZE / 2));
}

#[test]
fn call_local_io_error_runs_the_handler_once_before_detaching() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("local-io-error.out");
    let handlers = format!(
        "local-io-error \"echo $DRBD_RESOURCE $DRBD_MINOR $DRBD_VOLUME $DRBD_LL_DISK >> {}\";",
        out.display()
    );
    let (pair, disk) = faulty_pair("on-io-error call-local-io-error;", &handlers);
    write_phase(&pair, 12);
    let events = EventsStream::start(&pair.alice);
    disk.fail_reads(true);
    let summary = run_workload(&pair, 0.0, 0, "verify");
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS));
    events.wait_for_change("the disk going Diskless", |l| l.contains("disk:Diskless"));
    let lines = events.lines();
    let dump_end = lines.iter().position(|l| l == "exists -").unwrap();
    let later = &lines[dump_end + 1..];
    let helper = later
        .iter()
        .position(|l| l.starts_with("call helper") && l.ends_with("helper:local-io-error"))
        .unwrap_or_else(|| panic!("no local-io-error call: {later:#?}"));
    let failed = later
        .iter()
        .position(|l| l.contains("disk:Failed"))
        .unwrap_or_else(|| panic!("no disk:Failed: {later:#?}"));
    assert!(
        helper < failed,
        "the handler ran after the detach began: {later:#?}"
    );
    assert_eq!(
        later
            .iter()
            .filter(|l| l.ends_with("helper:local-io-error"))
            .count(),
        1
    );
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        text,
        format!("r0 0 0 {}\n", disk.path().display()),
        "the handler's environment"
    );
    let s = pair.alice.status_json();
    assert_eq!(disk_state(&s), "Diskless", "{s}");
    disk.clear_faults();
}

#[test]
fn write_errors_lose_no_acknowledged_write_and_reattach_resyncs() {
    let (pair, disk) = faulty_pair("", "");
    write_phase(&pair, 13);
    disk.fail_writes(true);
    // Writes and reads go on: the peer has every acknowledged write.
    let summary = run_workload(&pair, 3.0, 14, "mixed");
    assert!(summary["writes"].as_u64().unwrap() > 0);
    let s = pair.alice.status_json();
    assert_eq!(disk_state(&s), "Diskless", "{s}");
    assert_eq!(
        s["devices"][0]["udrbd-disk-failure-reason"].as_str(),
        Some("write error"),
        "{s}"
    );
    disk.clear_faults();
    let image = pair.dir.path().join("alice.img");
    reattach_and_verify(&pair, &image, &pair.alice.daemon.uri(PAIR_RESOURCE));
}

#[test]
fn a_failed_bitmap_write_after_a_read_error_sets_full_sync() {
    let (pair, disk) = faulty_pair("", "");
    write_phase(&pair, 15);
    let layout = udrbd_meta::Layout::internal(SIZE, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    // Writes to the bitmap area fail, the superblock still works; reads of data block 0 fail.
    disk.fail_write_range(layout.bm_byte(), layout.bm_area_bytes());
    disk.fail_read_range(0, BLOCK);
    let summary = run_workload(&pair, 0.0, 0, "verify");
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS));
    let s = pair.alice.status_json();
    assert_eq!(disk_state(&s), "Diskless", "{s}");
    disk.clear_faults();
    pair.alice.ok(&["down", PAIR_RESOURCE]);
    let image = pair.dir.path().join("alice.img");
    let gi = run_ok(Command::new(udrbd_bin()).arg("get-gi").arg(&image));
    let sb = udrbd_meta::Superblock::decode(&read_at(&image, layout.superblock_byte(), 4096))
        .expect("superblock");
    assert!(
        sb.flags.has(udrbd_meta::MdFlags::FULL_SYNC),
        "MDF_FULL_SYNC not set: {gi}"
    );
    // The next attach does a full sync: the whole device is out of sync.
    pair.alice.ok(&["attach", PAIR_RESOURCE]);
    let s = pair.alice.status_json();
    let oos = s["connections"][0]["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap_or(0);
    assert!(oos >= SIZE / 1024 * 99 / 100, "out-of-sync {oos} KiB: {s}");
    pair.alice.ok(&["connect", PAIR_RESOURCE]);
    pair.wait_up_to_date(Duration::from_secs(60));
    pair.alice.ok(&["primary", PAIR_RESOURCE]);
    let summary = run_workload(&pair, 0.0, 0, "verify");
    assert_eq!(summary["reads"].as_u64(), Some(BLOCKS));
    assert!(read_prefix(&image, SIZE / 2) == pair.bob.data_area(SIZE / 2));
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}
