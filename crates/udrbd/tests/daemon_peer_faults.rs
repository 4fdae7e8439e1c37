//! Faults between peers, with real daemons on 127.0.0.x:
//!
//! - `invalidate` on the Secondary and `invalidate-remote` on the Primary run a full resync
//!   that repairs a data area corrupted behind the daemon's back;
//! - a wrong shared secret: both sides log the authentication failure, stay StandAlone, and
//!   nothing is replicated;
//! - split brain: unresolved (handler, `status`, `events`, then `connect --discard-my-data`),
//!   and resolved automatically by `after-sb-0pri discard-zero-changes` and
//!   `discard-least-changes`;
//! - a fake peer (std::net, in this file) that completes DRBD's connection setup with one real
//!   daemon and then sends garbage, a truncated packet, an unknown command or an oversized
//!   packet: the daemon drops it with a named error and keeps serving NBD.
//!
//! Every daemon, child process and temp dir is cleaned up by drop guards, also on failure.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// How long a connection, a state change or a resync of a small disk may take.
const WAIT: Duration = Duration::from_secs(30);
/// Backing file size of every node: small, so that a full resync takes well under a second.
const DISK_SIZE: u64 = 32 << 20;
const MIB: u64 = 1 << 20;

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Pair options: small disks, a fast fixed-rate resync, and these handlers / net options.
fn options(net_extra: &str, handlers: &str) -> PairOptions {
    let defaults = PairOptions::default();
    PairOptions {
        size: DISK_SIZE,
        net: format!("{} {net_extra}", defaults.net),
        disk: "c-plan-ahead 0; resync-rate 400M;".into(),
        handlers: handlers.into(),
        ..defaults
    }
}

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

/// Writes `(pattern, offset, length)` through the NBD export at `uri` (python3-libnbd),
/// flushes, and reads every write back. Returns the script's failure text, if any.
fn nbd_write(uri: &str, writes: &[(u8, u64, u64)]) -> Result<(), String> {
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
writes = [tuple(int(x) for x in w.split(':')) for w in sys.argv[2].split(',')]
for pattern, offset, length in writes:
    h.pwrite(bytes([pattern]) * length, offset)
h.flush()
for pattern, offset, length in writes:
    assert h.pread(length, offset) == bytes([pattern]) * length, (pattern, offset)
h.shutdown()
"#;
    let spec: Vec<String> = writes
        .iter()
        .map(|(p, o, l)| format!("{p}:{o}:{l}"))
        .collect();
    let o = Command::new("/usr/bin/python3")
        .args(["-c", script, uri, &spec.join(",")])
        .output()
        .unwrap();
    if o.status.success() && o.stdout.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// [`nbd_write`] through `node`'s export; panics with both logs on failure.
fn write_through(p: &Pair, node: &Node, writes: &[(u8, u64, u64)]) {
    if let Err(e) = nbd_write(&node.daemon.uri(PAIR_RESOURCE), writes) {
        panic!(
            "writing through {}'s export failed: {e}\n{}",
            node.name,
            p.logs()
        );
    }
}

/// The data area's size in bytes, from `status --json` (`size` is in KiB).
fn data_bytes(node: &Node) -> u64 {
    let kib = node.status_json()["devices"][0]["size"]
        .as_u64()
        .expect("device size in status --json");
    assert!(kib > 0, "{} has no size", node.name);
    kib * 1024
}

fn wait_standalone(p: &Pair, what: &str) {
    p.wait_for_both(what, WAIT, |_, s| json_connection_state(s) == "StandAlone");
}

/// A connected pair, both UpToDate without an initial sync (`new-current-uuid
/// --clear-bitmap`), both Secondary. Returns it with the data area's size.
fn up_to_date_pair(opts: PairOptions) -> (Pair, u64) {
    let p = Pair::start(opts);
    p.wait_connected(30);
    p.alice
        .ok(&["new-current-uuid", PAIR_RESOURCE, "--clear-bitmap"]);
    p.wait_up_to_date(WAIT);
    let size = data_bytes(&p.alice);
    (p, size)
}

/// Index of the first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Both data areas equal and not all zeros.
fn assert_identical(p: &Pair, size: u64) {
    let a = p.alice.data_area(size);
    let b = p.bob.data_area(size);
    assert!(a.iter().any(|&x| x != 0), "alice's data area is all zeros");
    if let Some(i) = first_difference(&a, &b) {
        panic!(
            "data areas differ, first at byte {i} (alice {:#x}, bob {:#x})\n{}",
            a[i],
            b[i],
            p.logs()
        );
    }
}

/// Overwrites `ranges` (offset, length) of `disk` with non-repeating garbage, behind the
/// daemon's back, and syncs the file.
fn corrupt(disk: &Path, ranges: &[(u64, u64)]) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let mut x: u32 = 0x9e37_79b9;
    for &(offset, len) in ranges {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        f.write_all_at(&garbage, offset).unwrap();
    }
    f.sync_all().unwrap();
}

/// The regions [`corrupt`] damages: inside and outside what [`SOME_WRITES`] wrote, at odd
/// offsets, up to the last block of the data area.
fn damage(size: u64) -> Vec<(u64, u64)> {
    vec![
        (512, 8192),
        (3 * MIB + 100, 70_000),
        (9 * MIB, MIB),
        (size / 2 + 4096, 4096),
        (size - 4096, 4096),
    ]
}

/// Writes that give the data area non-trivial contents.
fn some_writes(size: u64) -> Vec<(u8, u64, u64)> {
    vec![
        (0xab, 0, MIB),
        (0x5c, 3 * MIB, 64 << 10),
        (0x17, 9 * MIB + 4096, 8192),
        (0xe1, size - 2 * MIB, MIB),
    ]
}

/// A full resync after corrupting bob's data area, started by `start` (invalidate or
/// invalidate-remote).
fn corrupted_secondary_is_repaired_by(start: impl FnOnce(&Pair)) {
    require_libnbd();
    let (p, size) = up_to_date_pair(options("", ""));
    p.alice.ok(&["primary", PAIR_RESOURCE]);
    write_through(&p, &p.alice, &some_writes(size));
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
    let received_before = p.bob.status_json()["connections"][0]["peer_devices"][0]["received"]
        .as_u64()
        .unwrap_or(0);

    corrupt(&p.bob.disk, &damage(size));
    let a = p.alice.data_area(size);
    let b = p.bob.data_area(size);
    for &(offset, len) in &damage(size) {
        let r = offset as usize..(offset + len) as usize;
        assert_ne!(a[r.clone()], b[r], "corrupting {offset} changed nothing");
    }

    start(&p);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
    // A full resync: bob received at least the whole data area again.
    let received_after = p.bob.status_json()["connections"][0]["peer_devices"][0]["received"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        received_after >= received_before + size / 1024,
        "bob received {} KiB in the resync, the data area is {} KiB\n{}",
        received_after - received_before,
        size / 1024,
        p.logs()
    );
    // And replication still works after it.
    write_through(&p, &p.alice, &[(0x66, 5 * MIB, 4096)]);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
}

/// Appends `name $DRBD_RESOURCE $DRBD_MY_ADDRESS` to `log` (a handlers section entry).
fn handler_line(name: &str, log: &Path) -> String {
    format!(
        "{name} \"echo {name} $DRBD_RESOURCE $DRBD_MY_ADDRESS >> {}\";",
        log.display()
    )
}

/// Lines of the handler log.
fn handler_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the handler log has every line of `expected`.
fn wait_for_handlers(p: &Pair, log: &Path, expected: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = handler_lines(log);
        if expected.iter().all(|e| lines.contains(e)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "handlers did not run: expected {expected:?}, have {lines:?}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Partitions the pair (`disconnect` on both), promotes both, writes `alice_writes` on alice
/// and `bob_writes` on bob, and demotes both. Leaves both StandAlone and Secondary.
fn diverge(p: &Pair, alice_writes: &[(u8, u64, u64)], bob_writes: &[(u8, u64, u64)]) {
    for n in p.nodes() {
        n.ok(&["disconnect", PAIR_RESOURCE]);
    }
    wait_standalone(p, "StandAlone after disconnect");
    for (n, writes) in [(&p.alice, alice_writes), (&p.bob, bob_writes)] {
        n.ok(&["primary", PAIR_RESOURCE]);
        assert_eq!(n.role(), "Primary/Unknown");
        if !writes.is_empty() {
            write_through(p, n, writes);
        }
        n.ok(&["secondary", PAIR_RESOURCE]);
    }
}

// ------------------------------------------------------------------------------------------
// 1. invalidate / invalidate-remote
// ------------------------------------------------------------------------------------------

#[test]
fn invalidate_on_the_secondary_resyncs_a_corrupted_data_area() {
    corrupted_secondary_is_repaired_by(|p| {
        p.bob.ok(&["invalidate", PAIR_RESOURCE]);
        // The command returns with bob's disk already Inconsistent.
        let s = p.bob.status_json();
        assert_ne!(json_disk_state(&s), "UpToDate", "{s}\n{}", p.logs());
    });
}

#[test]
fn invalidate_remote_on_the_primary_resyncs_a_corrupted_data_area() {
    corrupted_secondary_is_repaired_by(|p| {
        p.alice.ok(&["invalidate-remote", PAIR_RESOURCE]);
    });
}

// ------------------------------------------------------------------------------------------
// 2. Wrong shared secret
// ------------------------------------------------------------------------------------------

#[test]
fn a_wrong_shared_secret_fails_authentication_on_both_sides() {
    require_libnbd();
    let dir = tempfile::tempdir().unwrap();
    let (alice_addr, bob_addr) = pair_addresses();
    let alice_disk = dir.path().join("alice.img");
    let bob_disk = dir.path().join("bob.img");
    for disk in [&alice_disk, &bob_disk] {
        sparse_file(disk, DISK_SIZE);
        create_md(disk);
    }
    // Each node reads a configuration of its own, with its own secret.
    let config_for = |node: &str, secret: &str| {
        let d = dir.path().join(format!("{node}-config"));
        std::fs::create_dir(&d).unwrap();
        let opts = options(
            &format!("cram-hmac-alg sha256; shared-secret \"{secret}\";"),
            "",
        );
        write_pair_config(&d, &opts, (&alice_disk, alice_addr), (&bob_disk, bob_addr))
    };
    let alice_config = config_for("alice", "secret of alice");
    let bob_config = config_for("bob", "secret of bob");
    let node = |name: &'static str, disk: &Path, address, config: &Path| Node {
        name,
        disk: disk.to_path_buf(),
        address,
        daemon: TestDaemon::start_node(dir.path(), name, config, name, &[]),
    };
    let alice = node("alice", &alice_disk, alice_addr, &alice_config);
    let bob = node("bob", &bob_disk, bob_addr, &bob_config);
    let p = Pair {
        config: alice_config.clone(),
        alice,
        bob,
        dir,
    };

    wait_standalone(&p, "StandAlone after the authentication failure");
    for n in p.nodes() {
        let log = n.daemon.log_text();
        assert!(
            log.contains("authentication of peer failed"),
            "{} does not log the authentication failure\n{}",
            n.name,
            p.logs()
        );
        assert!(
            !log.contains("Handshake successful"),
            "{} completed a handshake\n{}",
            n.name,
            p.logs()
        );
        assert_eq!(n.cstate(), "StandAlone");
        assert_eq!(n.dstate(), "Inconsistent/DUnknown");
    }
    // Nothing is replicated: alice's writes stay on alice.
    p.alice.ok(&["primary", PAIR_RESOURCE, "--force"]);
    let size = data_bytes(&p.alice);
    write_through(&p, &p.alice, &some_writes(size));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        p.alice.data_area(size).iter().any(|&b| b != 0),
        "alice's writes are missing"
    );
    assert!(
        p.bob.data_area(size).iter().all(|&b| b == 0),
        "bob's data area changed\n{}",
        p.logs()
    );
    for n in p.nodes() {
        assert_eq!(n.cstate(), "StandAlone", "{}\n{}", n.name, p.logs());
        let received = n.status_json()["connections"][0]["peer_devices"][0]["received"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(received, 0, "{} received data\n{}", n.name, p.logs());
    }
}

// ------------------------------------------------------------------------------------------
// 3. Split brain
// ------------------------------------------------------------------------------------------

#[test]
fn an_unresolved_split_brain_is_reported_and_resolved_by_discard_my_data() {
    require_libnbd();
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("handlers.log");
    let handlers = format!(
        "{} {}",
        handler_line("initial-split-brain", &hlog),
        handler_line("split-brain", &hlog)
    );
    let (p, size) = up_to_date_pair(options("", &handlers));
    diverge(
        &p,
        &[(0xa1, 0, MIB), (0xa2, 7 * MIB, 4096)],
        &[
            (0xb1, MIB, MIB),
            (0xb2, 7 * MIB, 8192),
            (0xb3, size - 4096, 4096),
        ],
    );
    let alice_data = p.alice.data_area(size);
    let bob_data = p.bob.data_area(size);
    assert!(first_difference(&alice_data, &bob_data).is_some());

    let events = [EventsStream::start(&p.alice), EventsStream::start(&p.bob)];
    for n in p.nodes() {
        n.ok(&["connect", PAIR_RESOURCE]);
    }
    let (a, b) = (p.alice.address.ip(), p.bob.address.ip());
    wait_for_handlers(
        &p,
        &hlog,
        &[format!("split-brain r0 {a}"), format!("split-brain r0 {b}")],
    );
    wait_standalone(&p, "StandAlone after the split brain");
    for n in p.nodes() {
        assert!(
            n.daemon.log_text().contains("Split-Brain detected"),
            "{} does not log the split brain\n{}",
            n.name,
            p.logs()
        );
        let text = n.ok(&["status", PAIR_RESOURCE]);
        let peer = if n.name == "alice" { "bob" } else { "alice" };
        assert!(
            text.contains(&format!("{peer} connection:StandAlone")),
            "{}: status: {text}",
            n.name
        );
        assert!(text.contains("disk:UpToDate"), "{}: status: {text}", n.name);
        let now = n.ok(&["events", PAIR_RESOURCE, "--now"]);
        assert!(
            now.lines()
                .any(|l| l.starts_with("exists connection name:r0")
                    && l.contains("connection:StandAlone")),
            "{}: events --now: {now}",
            n.name
        );
        assert_eq!(n.role(), "Secondary/Unknown");
    }
    // Each node's event stream shows the split-brain helper call and the connection going
    // (back) to StandAlone after the connect.
    for (n, events) in p.nodes().into_iter().zip(&events) {
        let call = events.wait_for_change("the split-brain helper call", |l| {
            l.starts_with("call helper name:r0 ") && l.ends_with(" helper:split-brain")
        });
        let peer = if n.name == "alice" { "bob" } else { "alice" };
        assert!(
            call.contains(&format!("conn-name:{peer}")),
            "{}: {call}",
            n.name
        );
        events.wait_for_change("the connection going StandAlone", |l| {
            l.starts_with("change connection name:r0") && l.contains("connection:StandAlone")
        });
    }
    drop(events);
    // Nothing was synced: each side still has its own data.
    assert_eq!(p.alice.data_area(size), alice_data);
    assert_eq!(p.bob.data_area(size), bob_data);

    // The manual recovery: bob discards its data.
    p.bob.ok(&["disconnect", PAIR_RESOURCE]);
    p.bob.ok(&["connect", PAIR_RESOURCE, "--discard-my-data"]);
    p.alice.ok(&["connect", PAIR_RESOURCE]);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
    assert!(
        p.alice.data_area(size) == alice_data,
        "alice's data changed in the resolution\n{}",
        p.logs()
    );
}

#[test]
fn discard_zero_changes_recovers_from_the_side_with_changes() {
    require_libnbd();
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("handlers.log");
    let handlers = format!(
        "{} {}",
        handler_line("initial-split-brain", &hlog),
        handler_line("split-brain", &hlog)
    );
    let (p, size) = up_to_date_pair(options("after-sb-0pri discard-zero-changes;", &handlers));
    // Both were Primary alone; only bob wrote.
    diverge(
        &p,
        &[],
        &[
            (0xb1, MIB, MIB),
            (0xb2, 7 * MIB, 8192),
            (0xb3, size - 4096, 4096),
        ],
    );
    let bob_data = p.bob.data_area(size);
    for n in p.nodes() {
        n.ok(&["connect", PAIR_RESOURCE]);
    }
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
    assert!(
        p.alice.data_area(size) == bob_data,
        "alice did not get bob's changes\n{}",
        p.logs()
    );
    let (a, b) = (p.alice.address.ip(), p.bob.address.ip());
    // Detected (initial-split-brain), resolved without the split-brain handler.
    wait_for_handlers(
        &p,
        &hlog,
        &[
            format!("initial-split-brain r0 {a}"),
            format!("initial-split-brain r0 {b}"),
        ],
    );
    let lines = handler_lines(&hlog);
    assert!(
        !lines.iter().any(|l| l.starts_with("split-brain ")),
        "split-brain handler ran for a resolved split brain: {lines:?}"
    );
    for n in p.nodes() {
        assert!(
            n.daemon.log_text().contains("Split-Brain resolved"),
            "{} does not log the automatic resolution\n{}",
            n.name,
            p.logs()
        );
    }
}

#[test]
fn discard_least_changes_overwrites_the_side_with_fewer_changes() {
    require_libnbd();
    let (p, size) = up_to_date_pair(options("after-sb-0pri discard-least-changes;", ""));
    // alice changes 8 KiB (2 bitmap bits), bob 3 MiB + 8 KiB: alice is overwritten, although
    // alice's writes overlap none of bob's.
    diverge(
        &p,
        &[(0xa1, 0, 4096), (0xa2, 12 * MIB, 4096)],
        &[
            (0xb1, MIB, 2 * MIB),
            (0xb2, 7 * MIB, 8192),
            (0xb3, size - MIB, MIB),
        ],
    );
    let bob_data = p.bob.data_area(size);
    for n in p.nodes() {
        n.ok(&["connect", PAIR_RESOURCE]);
    }
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
    let alice_now = p.alice.data_area(size);
    assert!(
        alice_now == bob_data,
        "alice's data is not bob's: first difference at {:?}\n{}",
        first_difference(&alice_now, &bob_data),
        p.logs()
    );
    assert!(
        alice_now[..4096].iter().all(|&b| b == 0),
        "alice's write survived"
    );
    assert!(p.alice.daemon.log_text().contains("Split-Brain resolved"));
}

// ------------------------------------------------------------------------------------------
// 4. A misbehaving peer
// ------------------------------------------------------------------------------------------

/// h80 P_INITIAL_DATA / P_INITIAL_META.
const INITIAL_DATA: [u8; 8] = [0x83, 0x74, 0x02, 0x67, 0xff, 0xf2, 0, 0];
const INITIAL_META: [u8; 8] = [0x83, 0x74, 0x02, 0x67, 0xff, 0xf1, 0, 0];
const H100_MAGIC: [u8; 4] = [0x86, 0x20, 0xec, 0x20];
const P_PING: u16 = 0x13;
const P_PING_ACK: u16 = 0x14;

/// An h100 header (volume 0).
fn h100(command: u16, length: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    udrbd_wire::Header::new(
        udrbd_wire::HeaderFormat::Long,
        0,
        command,
        u64::from(length),
    )
    .unwrap()
    .encode_into(&mut v);
    assert_eq!(v[..4], H100_MAGIC);
    v
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// One real daemon (alice, Primary) whose peer `bob` is this test: a listener on bob's
/// address. Drops every socket and the daemon when dropped.
struct FakePeerSetup {
    daemon: TestDaemon,
    listener: TcpListener,
    /// Dropped last, after the daemon is gone.
    _dir: tempfile::TempDir,
}

/// A fake peer that completed connection setup with the daemon: the data socket, the meta
/// socket (answered by a thread that acknowledges pings), and a thread that reads the data
/// socket to its end.
struct Established {
    data: TcpStream,
    meta: TcpStream,
    /// What the daemon sent on the data socket after the features, and whether it closed it.
    data_reader: Option<std::thread::JoinHandle<(Vec<u8>, bool)>>,
    meta_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Established {
    fn drop(&mut self) {
        let _ = self.data.shutdown(Shutdown::Both);
        let _ = self.meta.shutdown(Shutdown::Both);
        if let Some(t) = self.meta_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.data_reader.take() {
            let _ = t.join();
        }
    }
}

impl FakePeerSetup {
    fn start() -> FakePeerSetup {
        let dir = tempfile::tempdir().unwrap();
        let (alice_addr, bob_addr) = pair_addresses();
        let disk = dir.path().join("alice.img");
        sparse_file(&disk, 16 << 20);
        create_md(&disk);
        // The listener exists before the daemon starts: its first connect reaches it.
        let listener = TcpListener::bind(bob_addr).unwrap();
        let config = write_pair_config(
            dir.path(),
            &options("", ""),
            (&disk, alice_addr),
            (Path::new("/dev/null"), bob_addr),
        );
        let daemon = TestDaemon::start_node(dir.path(), "alice", &config, "alice", &[]);
        let s = FakePeerSetup {
            daemon,
            listener,
            _dir: dir,
        };
        s.daemon.ok(&["primary", "r0", "--force"]);
        s
    }

    fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// Accepts one socket from the daemon within `timeout`.
    fn accept(&self, timeout: Duration) -> TcpStream {
        self.listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    return s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "the daemon did not connect to the fake peer\n{}",
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// DRBD's connection setup as the peer: the daemon connects twice (its first socket
    /// carries P_INITIAL_DATA, its second P_INITIAL_META; we never connect, so no socket
    /// crosses), then P_CONNECTION_FEATURES both ways on the data socket (we speak 100..=101,
    /// no authentication). Returns once the daemon's handshake packets (h100) arrive.
    fn establish(&self) -> Established {
        let mut data = None;
        let mut meta = None;
        while data.is_none() || meta.is_none() {
            let mut s = self.accept(WAIT);
            let first = read_n(&mut s, 8);
            if first == INITIAL_DATA {
                assert!(data.is_none(), "two data sockets\n{}", self.log());
                data = Some(s);
            } else if first == INITIAL_META {
                assert!(meta.is_none(), "two meta sockets\n{}", self.log());
                meta = Some(s);
            } else {
                panic!("first packet {first:02x?}\n{}", self.log());
            }
        }
        let (mut data, meta) = (data.unwrap(), meta.unwrap());
        // The daemon's features (h80, 72 bytes): min 100, max 101.
        let features = read_n(&mut data, 8 + 72);
        assert_eq!(
            features[..8],
            [0x83, 0x74, 0x02, 0x67, 0xff, 0xfe, 0x00, 0x48],
            "{features:02x?}"
        );
        let min = u32::from_be_bytes(features[8..12].try_into().unwrap());
        let max = u32::from_be_bytes(features[16..20].try_into().unwrap());
        assert_eq!((min, max), (100, 101));
        let ours = udrbd_wire::Packet::ConnectionFeatures(udrbd_wire::ConnectionFeatures {
            protocol_min: 100,
            feature_flags: udrbd_wire::FeatureFlags(0),
            protocol_max: 101,
            pad: 0,
        })
        .encode(0, udrbd_wire::HeaderFormat::Short)
        .unwrap();
        assert_eq!(ours.head.len(), 80);
        data.write_all(&ours.head).unwrap();
        // The daemon is established: its P_PROTOCOL comes first, in an h100 header.
        let first = read_n(&mut data, 16);
        assert_eq!(first[..4], H100_MAGIC, "{first:02x?}\n{}", self.log());
        assert_eq!(
            u16::from_be_bytes([first[6], first[7]]),
            0x0b,
            "P_PROTOCOL first"
        );
        let mut reader = data.try_clone().unwrap();
        reader.set_read_timeout(Some(WAIT)).unwrap();
        let data_reader = std::thread::spawn(move || {
            let mut got = first;
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return (got, true),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        return (got, true);
                    }
                    Err(_) => return (got, false),
                }
            }
        });
        let mut pinger = meta.try_clone().unwrap();
        pinger.set_read_timeout(None).unwrap();
        let meta_thread = std::thread::spawn(move || {
            // Answer P_PING with P_PING_ACK until the socket ends.
            loop {
                let mut header = [0u8; 16];
                if pinger.read_exact(&mut header).is_err() || header[..4] != H100_MAGIC {
                    return;
                }
                let command = u16::from_be_bytes([header[6], header[7]]);
                let length = u32::from_be_bytes(header[8..12].try_into().unwrap());
                let mut payload = vec![0u8; length as usize];
                if pinger.read_exact(&mut payload).is_err() {
                    return;
                }
                if command == P_PING && pinger.write_all(&h100(P_PING_ACK, 0)).is_err() {
                    return;
                }
            }
        });
        Established {
            data,
            meta,
            data_reader: Some(data_reader),
            meta_thread: Some(meta_thread),
        }
    }
}

/// Sends `bad` on the data socket of an established fake peer (then closes the data socket if
/// `close`), and checks that the daemon closes the connection, logs `expected`, goes back to
/// connecting, and still serves NBD as the Primary.
fn misbehaving_peer(bad: &[u8], close: bool, expected: &str) {
    require_libnbd();
    let setup = FakePeerSetup::start();
    let mut peer = setup.establish();
    let log = |what: &str| format!("{what}\n--- alice log ---\n{}", setup.log());
    assert!(
        setup.log().contains("Handshake successful"),
        "{}",
        log("no handshake")
    );

    peer.data.write_all(bad).unwrap();
    if close {
        peer.data.shutdown(Shutdown::Write).unwrap();
    }
    // The daemon drops the connection: the data socket ends.
    let (received, closed) = peer.data_reader.take().unwrap().join().unwrap();
    assert!(
        closed,
        "{}",
        log(&format!(
            "the daemon did not close the data socket ({} bytes received)",
            received.len()
        ))
    );
    let deadline = Instant::now() + WAIT;
    while !setup.log().contains(expected) {
        assert!(
            Instant::now() < deadline,
            "{}",
            log(&format!("the log does not name the error {expected:?}"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon tries to connect again (it does not give up on a broken peer) ...
    let deadline = Instant::now() + WAIT;
    loop {
        let o = setup.daemon.cli(&["cstate", "r0"]);
        let cstate = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if cstate == "WFConnection" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            log(&format!("cstate {cstate}, expected WFConnection"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... and serves its device all the while.
    assert_eq!(setup.daemon.ok(&["role", "r0"]).trim(), "Primary/Unknown");
    assert_eq!(
        setup.daemon.ok(&["dstate", "r0"]).trim(),
        "UpToDate/DUnknown"
    );
    let uri = setup.daemon.uri("r0");
    if let Err(e) = nbd_write(&uri, &[(0x3c, 0, 64 << 10), (0xc3, 5 * MIB, 4096)]) {
        panic!("{}", log(&format!("NBD after the bad peer: {e}")));
    }
    drop(peer);
}

#[test]
fn a_peer_sending_garbage_is_disconnected_with_a_protocol_error() {
    let garbage: Vec<u8> = (0u32..256)
        .map(|i| (i.wrapping_mul(0x9d) ^ 0xde) as u8)
        .collect();
    let found = u32::from_be_bytes(garbage[..4].try_into().unwrap());
    misbehaving_peer(
        &garbage,
        false,
        &format!("protocol error: bad magic {found:#010x} for h100 headers"),
    );
}

#[test]
fn a_peer_closing_after_a_truncated_packet_is_disconnected() {
    // P_STATE (4 bytes of payload) with only 2 of them, then the data socket closes.
    let mut truncated = h100(0x0e, 4);
    truncated.extend_from_slice(&[0x00, 0x00]);
    misbehaving_peer(&truncated, true, "connection closed by peer");
}

#[test]
fn a_peer_sending_a_truncated_header_and_closing_is_disconnected() {
    // 10 of the 16 bytes of a P_STATE header, then the data socket closes.
    let truncated = h100(0x0e, 4)[..10].to_vec();
    misbehaving_peer(&truncated, true, "connection closed by peer");
}

#[test]
fn a_peer_sending_an_unknown_command_is_disconnected_with_a_protocol_error() {
    // 0xfe is below P_MAY_IGNORE (0x100) and not a DRBD 8.4 command.
    assert!(udrbd_wire::Command::from_u16(0x00fe).is_none());
    let mut unknown = h100(0x00fe, 8);
    unknown.extend_from_slice(&[0u8; 8]);
    misbehaving_peer(
        &unknown,
        false,
        "protocol error: unknown command 0x00fe (below P_MAY_IGNORE, not skippable)",
    );
}

#[test]
fn a_peer_sending_an_oversized_packet_is_disconnected_with_a_protocol_error() {
    // P_DATA announcing 64 MiB of payload (at most 1 MiB + 24 exist); a little of it follows.
    let mut oversized = h100(0x00, 64 << 20);
    oversized.extend_from_slice(&[0x55u8; 4096]);
    misbehaving_peer(
        &oversized,
        false,
        "protocol error: P_DATA with a payload of 67108864 bytes",
    );
}

/// The fake peer itself: without any fault the daemon stays connected to it (answered pings
/// keep the link up), so the faults above are what breaks the connection.
#[test]
fn a_well_behaved_fake_peer_stays_connected() {
    let setup = FakePeerSetup::start();
    let peer = setup.establish();
    std::thread::sleep(Duration::from_secs(3));
    let o = setup.daemon.cli(&["cstate", "r0"]);
    let cstate = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(cstate, "WFReportParams", "{}", setup.log());
    assert!(!setup.log().contains("protocol error"), "{}", setup.log());
    drop(peer);
}
