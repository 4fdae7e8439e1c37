//! The peer verbs of the CLI against real daemons, in ways that do not depend on how far
//! replication goes: the one-line queries (`role`, `cstate`, `dstate`), refusals and errors
//! with their exit codes, `wait-connect --timeout` while the peer is down, the daemon's check of
//! the net options at start, and the listen socket on the node's own address.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A refused verb: drbdsetup's exit code 10 and `text` (e.g. `Failure: (151) ...`) on stderr.
fn assert_failure(o: &std::process::Output, text: &str) {
    assert_eq!(o.status.code(), Some(10), "{}", stderr(o));
    assert!(stderr(o).contains(text), "{}", stderr(o));
}

/// A pair whose daemons start idle (`--no-up`): nothing attached, nothing connecting.
fn idle_pair() -> Pair {
    Pair::start(PairOptions {
        daemon_args: vec!["--no-up".into()],
        ..PairOptions::default()
    })
}

/// A pair of two zeroed disks made UpToDate without a resync (`new-current-uuid
/// --clear-bitmap` on alice).
fn pair_in_sync(opts: PairOptions) -> Pair {
    let p = Pair::start(opts);
    p.wait_connected(20);
    p.alice.ok(&["new-current-uuid", "r0", "--clear-bitmap"]);
    p.wait_up_to_date(Duration::from_secs(20));
    p
}

#[test]
fn queries_of_an_idle_resource() {
    let p = idle_pair();
    let a = &p.alice;
    assert_eq!(a.cstate(), "StandAlone");
    assert_eq!(a.role(), "Secondary/Unknown");
    assert_eq!(a.dstate(), "Diskless/DUnknown");
    a.ok(&["attach", "r0"]);
    assert_eq!(a.dstate(), "Inconsistent/DUnknown");
    assert_eq!(a.cstate(), "StandAlone", "attach alone does not connect");
    a.ok(&["primary", "r0", "--force"]);
    assert_eq!(a.role(), "Primary/Unknown");
    assert_eq!(a.dstate(), "UpToDate/DUnknown");
    // Without a daemon on the run directory, `dstate RESOURCE` reads the meta-data.
    let o = std::process::Command::new(udrbd_bin())
        .arg("--run-dir")
        .arg(p.dir.path().join("no-daemon"))
        .args(["dstate", "r0", "--node", "bob", "--config"])
        .arg(&p.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Inconsistent\n");
}

#[test]
fn verbs_on_an_unknown_resource_fail_clearly() {
    let p = idle_pair();
    for args in [
        &["connect", "nosuch"][..],
        &["connect", "nosuch", "--discard-my-data"],
        &["disconnect", "nosuch"],
        &["invalidate", "nosuch"],
        &["invalidate-remote", "nosuch"],
        &["new-current-uuid", "nosuch", "--clear-bitmap"],
        &["outdate", "nosuch"],
        &["role", "nosuch"],
        &["cstate", "nosuch"],
        &["dstate", "nosuch"],
        &["wait-connect", "nosuch", "--timeout", "1"],
    ] {
        let o = p.alice.cli(args);
        assert_eq!(o.status.code(), Some(10), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "nosuch: No such resource\n", "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn the_verbs_need_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(udrbd_bin())
        .arg("--run-dir")
        .arg(dir.path())
        .args(["cstate", "r0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(20));
    assert!(
        stderr(&o).contains("cannot reach the udrbd daemon"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn wait_connect_times_out_while_the_peer_is_down() {
    let mut p = Pair::start(PairOptions::default());
    p.bob.kill_9();
    let started = Instant::now();
    let o = p.alice.cli(&["wait-connect", "r0", "--timeout", "1"]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(5), "{}{}", stderr(&o), p.logs());
    assert!(
        stderr(&o).starts_with("r0: timed out after 1s waiting for the connection (cstate "),
        "{}",
        stderr(&o)
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_ne!(p.alice.cstate(), "Connected");
}

#[test]
fn disconnect_connect_and_outdate() {
    let p = idle_pair();
    let a = &p.alice;
    a.ok(&["attach", "r0"]);
    // DRBD 8.4: disconnecting a StandAlone resource succeeds (SS_ALREADY_STANDALONE).
    a.ok(&["disconnect", "r0"]);
    assert_eq!(a.cstate(), "StandAlone");
    // bob is idle: alice waits for it.
    a.ok(&["connect", "r0"]);
    assert_eq!(a.cstate(), "WFConnection");
    // connect while connecting: nothing to do.
    a.ok(&["connect", "r0", "--discard-my-data"]);
    assert_eq!(a.cstate(), "WFConnection");
    // A new data generation only StandAlone (drbdsetup's ERR_CONNECTED), unless it skips
    // the initial sync of a connected pair.
    let o = a.cli(&["new-current-uuid", "r0"]);
    assert_failure(&o, "Failure: (151) Need to be StandAlone");
    a.ok(&["disconnect", "r0"]);
    assert_eq!(a.cstate(), "StandAlone");
    a.ok(&["new-current-uuid", "r0"]);
    // Outdate a disconnected Inconsistent disk: it stays Inconsistent (lower than Outdated).
    let o = a.cli(&["outdate", "r0"]);
    assert!(
        o.status.success() || stderr(&o).starts_with("r0: State change failed: ("),
        "{}",
        stderr(&o)
    );
}

#[test]
fn up_and_down_keep_working_and_the_daemon_exits_cleanly() {
    let mut p = Pair::start(PairOptions::default());
    let a = &p.alice;
    a.ok(&["down", "r0"]);
    assert_eq!(a.cstate(), "StandAlone");
    assert_eq!(a.dstate(), "Diskless/DUnknown");
    a.ok(&["up", "r0"]);
    assert_eq!(a.dstate().split('/').next(), Some("Inconsistent"));
    // `up` of a resource that is up is a no-op.
    a.ok(&["up", "r0"]);
    let status = p.alice.daemon.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", p.alice.daemon.log_text());
}

#[test]
fn a_cram_hmac_alg_udrbd_lacks_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair_addresses();
    let disk = dir.path().join("alice.img");
    let opts = PairOptions {
        net: "cram-hmac-alg md5; shared-secret x;".into(),
        ..PairOptions::default()
    };
    let config = write_pair_config(dir.path(), &opts, (&disk, alice), (&disk, bob));
    let o = std::process::Command::new(udrbd_bin())
        .args(["daemon", "--node", "alice", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(14), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("r0: cram-hmac-alg must be sha1, sha256 or sha512"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_lists_the_peer_verbs() {
    let o = std::process::Command::new(udrbd_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for verb in [
        "connect",
        "disconnect",
        "invalidate",
        "invalidate-remote",
        "new-current-uuid",
        "outdate",
        "pause-sync",
        "resume-sync",
        "verify",
        "role",
        "cstate",
        "wait-connect",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{verb} "))),
            "{verb} missing from --help:\n{help}"
        );
    }
}

/// `pause-sync` and `resume-sync` as drbdadm's: the initial full sync, started while bob's
/// pause is in force, waits as PausedSyncS/PausedSyncT (`status` and `events` say why:
/// `resync-suspended:user` on bob, `peer` on alice), a second pause and a resume on the side
/// that did not pause fail with DRBD's codes, and bob's resume lets it run to UpToDate.
#[test]
fn pause_sync_holds_the_initial_sync_until_resume_sync() {
    let p = Pair::start(PairOptions::default());
    let (a, b) = (&p.alice, &p.bob);
    p.wait_connected(20);
    let events = EventsStream::start(a);
    b.ok(&["pause-sync", "r0"]);
    events.wait_for_change("resync-suspended:peer", |l| {
        l.starts_with("change peer-device ") && l.contains("resync-suspended:peer")
    });
    let o = b.cli(&["pause-sync", "r0"]);
    assert_failure(&o, "Failure: (134) Sync-pause flag is already set");
    a.ok(&["primary", "r0", "--force"]);
    let paused = |s: &serde_json::Value, state: &str| json_replication_state(s) == state;
    a.wait_for("PausedSyncS", Duration::from_secs(20), |s| {
        paused(s, "PausedSyncS")
    });
    b.wait_for("PausedSyncT", Duration::from_secs(20), |s| {
        paused(s, "PausedSyncT")
    });
    assert_eq!(a.cstate(), "PausedSyncS");
    assert_eq!(b.cstate(), "PausedSyncT");
    let suspended = |n: &Node| {
        n.status_json()["connections"][0]["peer_devices"][0]["resync-suspended"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(suspended(a), "peer");
    assert_eq!(suspended(b), "user");
    let text = a.ok(&["status", "r0"]);
    assert!(
        text.contains("replication:PausedSyncS") && text.contains("resync-suspended:peer"),
        "{text}"
    );
    events.wait_for_change("PausedSyncS", |l| {
        l.starts_with("change peer-device ") && l.contains("replication:PausedSyncS")
    });
    let oos = |n: &Node| {
        n.status_json()["connections"][0]["peer_devices"][0]["out-of-sync"]
            .as_u64()
            .unwrap()
    };
    let before = oos(b);
    assert!(before > 0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(oos(b), before, "the paused resync moved");
    assert_eq!(b.cstate(), "PausedSyncT");
    // Resuming on alice, who did not pause: DRBD's ERR_PIC_PEER_DEP.
    let o = a.cli(&["resume-sync", "r0"]);
    assert_failure(&o, "Failure: (157) Sync-pause flag is already cleared.");
    b.ok(&["resume-sync", "r0"]);
    p.wait_up_to_date(Duration::from_secs(30));
    assert_eq!(suspended(a), "no");
    let o = b.cli(&["resume-sync", "r0"]);
    assert_failure(&o, "Failure: (135) Sync-pause flag is already cleared");
    assert!(p.logs().contains("Resync suspended"), "{}", p.logs());
    assert!(p.logs().contains("Syncer continues."), "{}", p.logs());
}

/// `verify` between two daemons: a block changed on bob's backing file behind the
/// replication's back is found (`status` shows VerifyS/VerifyT with its progress while it
/// runs, then `out-of-sync:4` on both nodes and DRBD's log lines); a second `verify` while one
/// runs is refused with DRBD's -8; disconnect and connect on the Primary resync the block.
#[test]
fn verify_finds_a_block_changed_behind_the_replication_and_a_reconnect_resyncs_it() {
    use std::io::{Seek, SeekFrom, Write};
    let p = pair_in_sync(PairOptions {
        net: format!("{} verify-alg crc32c;", PairOptions::default().net),
        disk: "c-plan-ahead 0; resync-rate 16M;".into(),
        ..PairOptions::default()
    });
    let (a, b) = (&p.alice, &p.bob);
    a.ok(&["primary", "r0"]);
    let block = 5 << 20;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&b.disk)
        .unwrap();
    f.seek(SeekFrom::Start(block)).unwrap();
    f.write_all(b"changed behind the replication's back")
        .unwrap();
    f.sync_all().unwrap();
    drop(f);
    let events = EventsStream::start(a);
    a.ok(&["verify", "r0"]);
    let text = a.ok(&["status", "r0"]);
    assert!(
        text.contains("replication:VerifyS") && text.contains("done:"),
        "{text}"
    );
    let o = a.cli(&["verify", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(-8) Can not start OV/resync since it is already active"),
        "{}",
        stderr(&o)
    );
    assert_eq!(b.cstate(), "VerifyT");
    events.wait_for_change("VerifyS", |l| {
        l.starts_with("change peer-device ") && l.contains("replication:VerifyS")
    });
    p.wait_for_both("the verify's end", Duration::from_secs(30), |_, s| {
        json_replication_state(s) == "Established"
    });
    for n in p.nodes() {
        let oos = n.status_json()["connections"][0]["peer_devices"][0]["out-of-sync"]
            .as_u64()
            .unwrap();
        assert_eq!(oos, 4, "{}: {}", n.name, p.logs());
        assert!(
            n.daemon
                .log_text()
                .contains("Online verify found 1 4k block out of sync!"),
            "{}",
            p.logs()
        );
        assert!(n.daemon.log_text().contains(&format!(
            "Out of sync: start={}, size=8 (sectors)",
            block / 512
        )));
    }
    assert_ne!(
        a.data_checksum(64 << 20 >> 1),
        b.data_checksum(64 << 20 >> 1)
    );
    a.ok(&["disconnect", "r0"]);
    a.ok(&["connect", "r0"]);
    p.wait_connected(20);
    p.wait_up_to_date(Duration::from_secs(30));
    assert_eq!(a.data_checksum(32 << 20), b.data_checksum(32 << 20));
}

/// `adjust` as drbdadm's: the configuration file is read again and applied to the running
/// resource. A new verify-alg (a handshake option) reconnects, after which `verify` works; a
/// typo in the file is refused with its place and the resource keeps running; a changed
/// backing disk of an attached resource is refused; `adjust` of a resource that is down
/// brings it up.
#[test]
fn adjust_applies_the_changed_configuration_to_the_running_resource() {
    let opts = PairOptions::default();
    let p = pair_in_sync(opts.clone());
    let (a, b) = (&p.alice, &p.bob);
    let o = a.cli(&["verify", "r0"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("(-14) Need a verify algorithm"),
        "{}",
        stderr(&o)
    );

    let rewrite = |opts: &PairOptions| {
        write_pair_config(
            p.dir.path(),
            opts,
            (&a.disk, a.address),
            (&b.disk, b.address),
        );
    };
    let mut changed = opts.clone();
    changed.net = format!("{} verify-alg sha1; ko-count 3;", opts.net);
    changed.disk = "c-plan-ahead 0; resync-rate 50M; disk-timeout 600;".into();
    rewrite(&changed);
    let out = a.ok(&["adjust", "r0"]);
    assert!(out.contains("verify-alg changed: reconnecting"), "{out}");
    b.ok(&["adjust", "r0"]);
    p.wait_connected(20);
    p.wait_up_to_date(Duration::from_secs(20));
    a.ok(&["verify", "r0"]);
    p.wait_for_both("the verify's end", Duration::from_secs(30), |_, s| {
        json_replication_state(s) == "Established"
    });
    assert!(
        a.daemon.log_text().contains("Online verify done"),
        "{}",
        p.logs()
    );
    // Nothing changed: adjust does nothing visible, and keeps the connection.
    assert_eq!(a.ok(&["adjust", "r0"]), "");
    assert_eq!(a.cstate(), "Connected");

    // A typo: refused with its place; the resource runs on.
    let mut typo = changed.clone();
    typo.net = format!("{} ping-intt 3;", changed.net);
    rewrite(&typo);
    let o = a.cli(&["adjust", "r0"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("r0.res:2:") && stderr(&o).contains("ping-intt"),
        "{}",
        stderr(&o)
    );
    assert_eq!(a.cstate(), "Connected");

    // Another backing disk for an attached resource: refused.
    let other = p.dir.path().join("other.img");
    write_pair_config(
        p.dir.path(),
        &changed,
        (&other, a.address),
        (&b.disk, b.address),
    );
    let o = a.cli(&["adjust", "r0"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the backing disk changed; detach it first"),
        "{}",
        stderr(&o)
    );

    // Down, then adjust: up again.
    rewrite(&changed);
    b.ok(&["down", "r0"]);
    assert_eq!(b.cstate(), "StandAlone");
    b.ok(&["adjust", "r0"]);
    p.wait_connected(20);
    p.wait_up_to_date(Duration::from_secs(20));
}

/// The device size in KiB `status --json` reports.
fn json_size_kib(status: &serde_json::Value) -> u64 {
    status["devices"][0]["size"].as_u64().unwrap()
}

/// `resize --size` shrinks both devices (a new NBD client sees the shrunk size, and writes
/// within it work), a bad size is refused by the CLI, and a new `size` in the configuration
/// is applied by `adjust` on the attached resource as a `resize --size`, which grows both.
#[test]
fn resize_size_shrinks_the_device_and_adjust_applies_a_new_size() {
    require_tool("qemu-io", "qemu-utils");
    require_tool("nbdinfo", "libnbd-bin");
    let opts = PairOptions::default();
    let p = pair_in_sync(opts.clone());
    let (a, b) = (&p.alice, &p.bob);
    a.ok(&["primary", "r0"]);
    let o = a.cli(&["resize", "r0", "--size", "12Q"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("--size"), "{}", stderr(&o));
    a.ok(&["resize", "r0", "--size", "16M"]);
    p.wait_for_both("both shrunk to 16 MiB", Duration::from_secs(30), |_, s| {
        json_size_kib(s) == 16 << 10 && json_up_to_date(s)
    });
    assert!(
        b.daemon
            .log_text()
            .contains(&format!("Peer sets u_size to {} sectors", 32 << 10)),
        "{}",
        p.logs()
    );
    let uri = a.daemon.uri("r0");
    let size = run_ok(std::process::Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(size.trim(), (16u64 << 20).to_string());
    let out = run_ok(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0x33 15M 1M",
        "-c",
        "read -P 0x33 15M 1M",
    ]));
    assert!(!out.contains("failed"), "{out}");
    // drbd.conf's `size` changes: adjust resizes the attached device on both.
    let mut changed = opts.clone();
    changed.disk = format!("{} size 24M;", opts.disk);
    write_pair_config(
        p.dir.path(),
        &changed,
        (&a.disk, a.address),
        (&b.disk, b.address),
    );
    let out = a.ok(&["adjust", "r0"]);
    assert!(out.contains("size changed: resized"), "{out}");
    p.wait_for_both("both grown to 24 MiB", Duration::from_secs(30), |_, s| {
        json_size_kib(s) == 24 << 10 && json_up_to_date(s)
    });
    assert_eq!(a.data_checksum(24 << 20), b.data_checksum(24 << 20));
}

/// `resize` as drbdadm's, after both backing files grew (`truncate`, as an `lvextend`): the
/// meta-data moves to the new end of both files, both devices grow, and the new part is
/// resynced from the Primary while the device serves NBD. A new NBD client sees the grown
/// size; drbd-utils' drbdmeta reads the moved meta-data of a node that went down.
#[test]
fn resize_grows_the_device_after_both_backing_files_grew() {
    require_tool("qemu-io", "qemu-utils");
    require_tool("nbdinfo", "libnbd-bin");
    require_tool("drbdmeta", "drbd-utils");
    let opts = PairOptions::default();
    let p = pair_in_sync(opts.clone());
    let (a, b) = (&p.alice, &p.bob);
    a.ok(&["primary", "r0"]);
    let old_kib = json_size_kib(&a.status_json());
    run_ok(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        &a.daemon.uri("r0"),
        "-c",
        "write -P 0x11 0 1M",
    ]));
    let o = a.cli(&["resize", "nosuch"]);
    assert_eq!(stderr(&o), "nosuch: No such resource\n");
    let grown = opts.size + (32 << 20);
    for n in p.nodes() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&n.disk)
            .unwrap()
            .set_len(grown)
            .unwrap();
    }
    a.ok(&["resize", "r0"]);
    let layout = udrbd_meta::Layout::internal(grown, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    let new_kib = (layout.max_data_sect & !7) / 2;
    p.wait_for_both(
        "the grown device in sync",
        Duration::from_secs(30),
        |_, s| json_size_kib(s) == new_kib && json_up_to_date(s),
    );
    assert!(new_kib > old_kib + (31 << 10), "{old_kib} -> {new_kib}");
    for n in p.nodes() {
        let log = n.daemon.log_text();
        assert!(log.contains("md moved"), "{}", p.logs());
        assert!(log.contains("Resync of new storage after online grow"));
    }
    let uri = a.daemon.uri("r0");
    let size = run_ok(std::process::Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(size.trim(), (new_kib * 1024).to_string());
    let last = format!("{}", new_kib * 1024 - (1 << 20));
    let out = run_ok(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        &format!("write -P 0x22 {last} 1M"),
        "-c",
        &format!("read -P 0x22 {last} 1M"),
        "-c",
        "read -P 0x11 0 1M",
    ]));
    assert!(!out.contains("failed"), "{out}");
    p.wait_up_to_date(Duration::from_secs(20));
    assert_eq!(
        a.data_checksum(new_kib * 1024),
        b.data_checksum(new_kib * 1024)
    );
    // The moved meta-data is what drbdmeta finds at the end of the file.
    b.ok(&["down", "r0"]);
    let dump = run_ok(
        std::process::Command::new("drbdmeta")
            .args(["--force", "0", "v08"])
            .arg(&b.disk)
            .args(["internal", "dump-md"]),
    );
    assert!(
        dump.contains(&format!("la-size-sect {};", new_kib * 2)),
        "{dump}"
    );
    b.ok(&["up", "r0"]);
    p.wait_connected(20);
    p.wait_up_to_date(Duration::from_secs(20));
    assert_eq!(json_size_kib(&b.status_json()), new_kib);
}
