//! Two real daemons replicating over TCP on 127.0.0.x: the initial full sync, the skipped
//! initial sync (`new-current-uuid --clear-bitmap`), writes through the Primary's NBD export,
//! a resync after the Secondary's daemon was killed, a detached Primary served by its peer
//! across a reconnect, and disks of different sizes (the device is the smaller one, kept as
//! the last agreed size across an attach). Each test ends by comparing both backing files'
//! data areas byte for byte.
//!
//! These tests need the engine's peer logic (udrbd-core); with its stub they fail at the
//! first wait for the connection.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// How long a connection or a resync of a 64 MiB disk may take on a slow machine.
const WAIT: Duration = Duration::from_secs(120);

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

/// The data area's size in bytes, from `status --json` (`size` is in KiB).
fn data_bytes(node: &Node) -> u64 {
    let kib = node.status_json()["devices"][0]["size"]
        .as_u64()
        .expect("device size in status --json");
    assert!(kib > 0, "{} has no size", node.name);
    kib * 1024
}

/// KiB written by [`write_through_alice`].
const WRITTEN_KIB: u64 = 1024 + 64 + 4 + 1024 + 4;

/// Writes patterns all over the device through alice's NBD export (python3-libnbd), with a
/// flush at the end, and reads the first one back.
fn write_through_alice(p: &Pair, size: u64) {
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = int(sys.argv[2])
assert h.get_size() == size, (h.get_size(), size)
M = 1 << 20
writes = [(0xab, 0, M), (0x5c, 3 * M, 64 << 10), (0x17, 5000 << 10, 4096),
          (0xe1, size - 2 * M, M), (0x42, size - 4096, 4096)]
for pattern, offset, length in writes:
    h.pwrite(bytes([pattern]) * length, offset)
h.flush()
assert h.pread(M, 0) == bytes([0xab]) * M
h.shutdown()
"#;
    let o = Command::new("/usr/bin/python3")
        .args(["-c", script, &p.alice.daemon.uri("r0"), &size.to_string()])
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "writing through alice's export failed: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        p.logs()
    );
}

/// Both data areas equal, and not all zeros.
fn assert_identical(p: &Pair, size: u64) {
    let a = p.alice.data_area(size);
    let b = p.bob.data_area(size);
    assert!(a.iter().any(|&x| x != 0), "alice's data area is all zeros");
    if a != b {
        let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
        panic!(
            "data areas differ, first at byte {first} (alice {:#x}, bob {:#x})\n{}",
            a[first],
            b[first],
            p.logs()
        );
    }
}

#[test]
fn initial_full_sync_then_replicated_writes() {
    require_libnbd();
    let p = Pair::start(PairOptions::default());
    p.wait_connected(60);
    assert_eq!(p.alice.cstate(), "Connected");
    assert_eq!(p.alice.dstate(), "Inconsistent/Inconsistent");
    assert_eq!(p.bob.role(), "Secondary/Secondary");
    p.alice.ok(&["primary", "r0", "--force"]);
    p.wait_up_to_date(WAIT);
    assert_eq!(p.alice.role(), "Primary/Secondary");
    assert_eq!(p.bob.role(), "Secondary/Primary");
    assert_eq!(p.bob.dstate(), "UpToDate/UpToDate");
    let size = data_bytes(&p.alice);
    write_through_alice(&p, size);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
}

/// Backings on tmpfs: the daemons write to memory inline rather than through io_uring (a
/// full sync, then replicated writes of 4 KiB to 1 MiB).
#[test]
fn backings_on_tmpfs_sync_and_replicate() {
    require_libnbd();
    if !std::path::Path::new("/dev/shm").is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let p = Pair::start_in(dir, PairOptions::default(), None);
    p.wait_connected(60);
    p.alice.ok(&["primary", "r0", "--force"]);
    p.wait_up_to_date(WAIT);
    let size = data_bytes(&p.alice);
    write_through_alice(&p, size);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
}

#[test]
fn skip_initial_sync_with_new_current_uuid_clear_bitmap() {
    require_libnbd();
    let p = Pair::start(PairOptions::default());
    p.wait_connected(60);
    p.alice.ok(&["new-current-uuid", "r0", "--clear-bitmap"]);
    p.wait_up_to_date(WAIT);
    // UpToDate on both: a plain promotion works.
    p.alice.ok(&["primary", "r0"]);
    let size = data_bytes(&p.alice);
    write_through_alice(&p, size);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
}

#[test]
fn protocol_a_with_cram_hmac_and_a_dynamic_resync_controller() {
    require_libnbd();
    let p = Pair::start(PairOptions {
        net: "protocol A; cram-hmac-alg sha256; shared-secret \"t0p s3cret\"; connect-int 1; ping-int 1; ping-timeout 5; timeout 5;".into(),
        disk: "c-plan-ahead 5; c-fill-target 1M; resync-rate 50M; c-max-rate 500M;".into(),
        ..PairOptions::default()
    });
    p.wait_connected(60);
    p.alice.ok(&["primary", "r0", "--force"]);
    p.wait_up_to_date(WAIT);
    let size = data_bytes(&p.alice);
    let written = |s: &serde_json::Value| s["devices"][0]["written"].as_u64().unwrap_or(0);
    let before = written(&p.bob.status_json());
    write_through_alice(&p, size);
    p.wait_up_to_date(WAIT);
    // Protocol A completes writes before the peer has them: wait for bob's write counter to
    // count every KiB written (the flush should already have waited for the barrier ack).
    p.bob.wait_for("every write on bob", WAIT, |s| {
        written(s) >= before + WRITTEN_KIB
    });
    assert_identical(&p, size);
}

#[test]
fn a_killed_secondary_resyncs_what_it_missed() {
    require_libnbd();
    let mut p = Pair::start(PairOptions::default());
    p.wait_connected(60);
    p.alice.ok(&["new-current-uuid", "r0", "--clear-bitmap"]);
    p.wait_up_to_date(WAIT);
    p.alice.ok(&["primary", "r0"]);
    p.bob.kill_9();
    p.alice.wait_for("the peer gone", WAIT, |s| {
        json_connection_state(s) == "Connecting"
    });
    let size = data_bytes(&p.alice);
    write_through_alice(&p, size);
    p.bob.restart();
    p.wait_connected(60);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
}

/// A Primary whose disk is detached serves through its peer, and keeps doing so across a
/// disconnect and reconnect; attached again, it resyncs. (It refused its peer after any
/// break: the peer's new current UUID, made when the Primary's disk went, arrived while
/// the detach drained, and the Primary kept exposing its old one: "Can only connect to data
/// with current UUID".)
#[test]
fn a_detached_primary_serves_through_its_peer_across_a_reconnect() {
    require_libnbd();
    let p = Pair::start(PairOptions::default());
    p.wait_connected(60);
    p.alice.ok(&["new-current-uuid", "r0", "--clear-bitmap"]);
    p.wait_up_to_date(WAIT);
    p.alice.ok(&["primary", "r0"]);
    let size = data_bytes(&p.alice);
    p.alice.ok(&["detach", "r0"]);
    assert_eq!(p.alice.dstate(), "Diskless/UpToDate");
    write_through_alice(&p, size);
    p.alice.ok(&["disconnect", "r0"]);
    assert_eq!(p.alice.cstate(), "StandAlone");
    p.alice.ok(&["connect", "r0"]);
    p.wait_connected(60);
    assert_eq!(p.alice.dstate(), "Diskless/UpToDate");
    write_through_alice(&p, size);
    p.alice.ok(&["attach", "r0"]);
    p.wait_up_to_date(WAIT);
    assert_identical(&p, size);
}

#[test]
fn a_split_brain_runs_the_handlers_and_leaves_both_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("handlers.log");
    let line = |name: &str| {
        format!(
            "{name} \"echo {name} $DRBD_RESOURCE $DRBD_MINOR $DRBD_VOLUME $DRBD_MY_ADDRESS $DRBD_PEER_ADDRESS >> {}\";",
            log.display()
        )
    };
    let p = Pair::start(PairOptions {
        handlers: format!("{} {}", line("initial-split-brain"), line("split-brain")),
        daemon_args: vec!["--no-up".into()],
        ..PairOptions::default()
    });
    // Each node starts its own data generation alone.
    for n in p.nodes() {
        n.ok(&["attach", "r0"]);
        n.ok(&["primary", "r0", "--force"]);
        n.ok(&["secondary", "r0"]);
    }
    for n in p.nodes() {
        n.ok(&["connect", "r0"]);
    }
    let (a, b) = (p.alice.address.ip(), p.bob.address.ip());
    let expected = [
        format!("initial-split-brain r0 0 0 {a} {b}"),
        format!("initial-split-brain r0 0 0 {b} {a}"),
        format!("split-brain r0 0 0 {a} {b}"),
        format!("split-brain r0 0 0 {b} {a}"),
    ];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if expected.iter().all(|e| text.lines().any(|l| l == e)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "handlers did not run: {text:?}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.wait_for_both("StandAlone after the split brain", WAIT, |_, s| {
        json_connection_state(s) == "StandAlone"
    });
}

/// Disks of different sizes: the device is the smaller disk on both nodes, that size is the
/// larger node's last agreed size in its superblock (`la-size-sect` of `dump-md`), and its
/// next attach while StandAlone serves that size, not its whole disk: promoted alone, it
/// still takes its peer back. (With the whole disk it exported more than the peer could
/// hold, and refused it with "the peer's disk is too small".)
#[test]
fn disks_of_different_sizes_keep_the_smaller_size_across_an_attach() {
    require_libnbd();
    let p = Pair::start(PairOptions {
        daemon_args: vec!["--no-up".into()],
        ..PairOptions::default()
    });
    // Bob's disk is half of alice's.
    sparse_file(&p.bob.disk, PairOptions::default().size / 2);
    create_md(&p.bob.disk);
    for n in p.nodes() {
        n.ok(&["up", "r0"]);
    }
    p.wait_connected(60);
    let agreed = data_bytes(&p.alice);
    assert_eq!(data_bytes(&p.bob), agreed);
    assert!(agreed < PairOptions::default().size / 2, "{agreed}");
    p.alice.ok(&["primary", "r0", "--force"]);
    p.wait_up_to_date(WAIT);

    // Alice down, her meta-data read offline.
    p.alice.ok(&["secondary", "r0"]);
    p.alice.ok(&["down", "r0"]);
    let o = Command::new(udrbd_bin())
        .arg("dump-md")
        .arg(&p.alice.disk)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{dump}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let la = format!("la-size-sect {};", agreed / 512);
    assert!(dump.contains(&la), "{la} not in alice's meta-data:\n{dump}");

    // Attached alone and promoted, alice exports the agreed size.
    p.alice.ok(&["attach", "r0"]);
    assert_eq!(data_bytes(&p.alice), agreed, "{}", p.logs());
    p.alice.ok(&["primary", "r0"]);
    write_through_alice(&p, agreed);
    p.alice.ok(&["connect", "r0"]);
    p.wait_up_to_date(WAIT);
    assert_eq!(p.alice.role(), "Primary/Secondary");
    assert_identical(&p, agreed);
}
