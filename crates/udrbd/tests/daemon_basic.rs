//! The daemon's life cycle with real processes and real NBD clients: up at start, refusals
//! with DRBD's wording, the export served only while Primary, exclusive backing store, and a
//! clean SIGTERM.

mod support;

use std::time::Duration;

use support::*;

fn setup(size: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("alice.img");
    sparse_file(&disk, size);
    create_md(&disk);
    let config = write_config(dir.path(), "r0", &disk, "");
    (dir, disk, config)
}

#[test]
fn up_at_start_then_primary_and_qemu_io() {
    require_tool("qemu-io", "qemu-utils");
    let (dir, disk, config) = setup(64 << 20);
    let d = TestDaemon::start(dir.path(), &config, &[]);
    let status = d.ok(&["status", "r0"]);
    assert_eq!(
        status,
        "r0 role:Secondary\n  disk:Inconsistent open:no\n  bob connection:Connecting\n\n"
    );
    // `up` of a resource that is up is a no-op.
    d.ok(&["up", "r0"]);
    let o = d.cli(&["primary", "r0"]);
    assert_eq!(o.status.code(), Some(17));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "r0: State change failed: (-2) Need access to UpToDate data\n"
    );
    d.ok(&["primary", "r0", "--force"]);
    let out = run_ok(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        &d.uri("r0"),
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "write -P 0x5c 3M 64k",
        "-c",
        "read -P 0x5c 3M 64k",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // The default export "" is the only resource.
    let default_uri = format!("nbd+unix:///?socket={}", d.socket("r0").display());
    let out = run_ok(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        &default_uri,
        "-c",
        "read -P 0xab 0 1M",
    ]));
    assert!(!out.contains("failed"), "{out}");
    drop(d);
    let _ = disk;
}

#[test]
fn secondary_refuses_the_export_and_demotion_is_refused_while_open() {
    require_tool("nbdinfo", "libnbd-bin");
    require_tool("qemu-img", "qemu-utils");
    let (dir, _disk, config) = setup(64 << 20);
    let d = TestDaemon::start(dir.path(), &config, &[]);
    // Secondary: NBD_OPT_GO is refused with a reason.
    let o = std::process::Command::new("qemu-img")
        .args(["info", "-f", "raw", &d.uri("r0")])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("r0 is Secondary: only a Primary serves its device"),
        "{err}"
    );
    d.ok(&["primary", "r0", "--force"]);
    let json = run_ok(std::process::Command::new("nbdinfo").args(["--json", &d.uri("r0")]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let export = &v["exports"][0];
    assert_eq!(export["export-size"], 64 * 1024 * 1024 - 80 * 512);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(export[flag], true, "{flag}");
    }
    // Hold the device open: secondary and down are refused as DRBD refuses them.
    let mut holder = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); sys.stdout.write('open\\n'); sys.stdout.flush(); sys.stdin.read()",
            &d.uri("r0"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "open\n");
    }
    for verb in ["secondary", "down"] {
        let o = d.cli(&[verb, "r0"]);
        assert_eq!(o.status.code(), Some(11), "{verb}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            "r0: State change failed: (-12) Device is held open by someone\n"
        );
    }
    assert!(d.ok(&["status", "r0"]).contains("open:yes"));
    drop(holder.stdin.take());
    holder.wait().unwrap();
    // Closing the client closes the device.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.ok(&["status", "r0"]).contains("open:yes") {
        assert!(std::time::Instant::now() < deadline, "device still open");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok(&["secondary", "r0"]);
}

#[test]
fn a_second_daemon_on_the_same_backing_file_is_refused() {
    let (dir, _disk, config) = setup(64 << 20);
    let first = TestDaemon::start(dir.path(), &config, &[]);
    assert!(first.ok(&["status", "r0"]).contains("disk:Inconsistent"));
    let second = TestDaemon::start_in(dir.path(), "run2", &config, &[]);
    assert!(second.ok(&["status", "r0"]).contains("disk:Diskless"));
    let o = second.cli(&["up", "r0"]);
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Can not open backing device") && err.contains("in use"),
        "{err}"
    );
    // Two daemons on one run directory are refused too.
    let o = std::process::Command::new(udrbd_bin())
        .args(["daemon", "--node", "alice", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(&first.run_dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already running"));
}

#[test]
fn sigterm_takes_every_resource_down_cleanly() {
    let (dir, disk, config) = setup(64 << 20);
    let mut d = TestDaemon::start(dir.path(), &config, &[]);
    d.ok(&["primary", "r0", "--force"]);
    let status = d.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", d.log_text());
    // Clean meta-data: dump-md needs no --force, and the node is not a crashed Primary.
    let o = std::process::Command::new(udrbd_bin())
        .arg("dump-md")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gi = run_ok(
        std::process::Command::new(udrbd_bin())
            .arg("get-gi")
            .arg(&disk),
    );
    assert!(gi.trim_end().ends_with(":1:1:0:0:0:0:0"), "{gi}");
    assert!(!d.run_dir.join("udrbd.sock").exists());
}

#[test]
fn events_streams_state_changes_in_events2_form() {
    use std::io::BufRead;
    let (dir, _disk, config) = setup(64 << 20);
    let d = TestDaemon::start(dir.path(), &config, &[]);
    // --now: the current state, then "exists -", then exit.
    let now = d.ok(&["events", "r0", "--now"]);
    let lines: Vec<&str> = now.lines().collect();
    assert_eq!(lines.last(), Some(&"exists -"), "{now}");
    assert!(
        lines[0].starts_with("exists resource name:r0 role:Secondary"),
        "{now}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("exists device name:r0 volume:0 minor:0")
                && l.contains(" disk:Inconsistent ")),
        "{now}"
    );
    assert!(
        now.contains(
            "exists connection name:r0 peer-node-id:1 conn-name:bob connection:Connecting"
        ),
        "{now}"
    );
    // Streaming: a promotion shows up as change lines.
    let mut child = std::process::Command::new(udrbd_bin())
        .arg("--run-dir")
        .arg(&d.run_dir)
        .args(["events", "r0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "events ended early"
        );
        if line == "exists -\n" {
            break;
        }
    }
    d.ok(&["primary", "r0", "--force"]);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let promoted = |seen: &[String]| {
        seen.iter()
            .any(|l| l.starts_with("change resource name:r0 role:Primary"))
            && seen.iter().any(|l| {
                l.starts_with("change device name:r0 volume:0 minor:0")
                    && l.contains("disk:UpToDate")
            })
    };
    while !promoted(&seen) {
        assert!(
            std::time::Instant::now() < deadline,
            "no promotion event: {seen:?}"
        );
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "events ended: {seen:?}"
        );
        seen.push(line.trim_end().to_string());
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGTERM with an NBD client connected: the daemon closes the client, takes the resource
/// down cleanly and exits.
#[test]
fn sigterm_closes_connected_clients_and_goes_down_cleanly() {
    use std::io::BufRead;
    let (dir, disk, config) = setup(64 << 20);
    let mut d = TestDaemon::start(dir.path(), &config, &[]);
    d.ok(&["primary", "r0", "--force"]);
    let mut holder = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1]); h.pwrite(b'x'*4096, 0); print('open', flush=True)\ntry:\n    sys.stdin.read(); h.pread(4096, 0)\nexcept Exception as e:\n    print('closed:', e, flush=True)",
            &d.uri("r0"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "open\n");
    assert!(d.ok(&["status", "r0"]).contains("open:yes"));
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", d.log_text());
    // The client's next request fails: its connection was closed.
    drop(holder.stdin.take());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("closed:"), "{line:?}");
    holder.wait().unwrap();
    let o = std::process::Command::new(udrbd_bin())
        .arg("dump-md")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "clean meta-data: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let gi = run_ok(
        std::process::Command::new(udrbd_bin())
            .arg("get-gi")
            .arg(&disk),
    );
    assert!(
        gi.trim_end().ends_with(":1:1:0:0:0:0:0"),
        "not Primary any more: {gi}"
    );
}
