//! `udrbd daemon --config BAD` end to end: it refuses to start (exit 14), prints exactly one
//! error line naming FILE:LINE:COLUMN, and creates nothing; a node the configuration does not
//! name is reported; an option value udrbd does not implement is refused as "not supported
//! yet" while the value it implements is accepted. (The parser's own tests: tests/config.rs.)

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A resource r0 for alice and bob, with `extra` pasted in as line 2 (and following lines).
fn config(dir: &Path, extra: &str) -> PathBuf {
    let disk = dir.join("alice.img");
    let path = dir.join("bad.res");
    let text = format!(
        "resource r0 {{\n{extra}\n  on alice {{ device /dev/drbd0; disk {}; address 127.0.0.1:7789; meta-disk internal; }}\n  on bob {{ device /dev/drbd0; disk /dev/null; address 127.0.0.2:7789; meta-disk internal; }}\n}}\n",
        disk.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `udrbd daemon` on `config`, which must exit by itself within 10 s; returns (exit
/// code, stderr).
fn daemon_exit(dir: &Path, config: &Path, node: &str) -> (Option<i32>, String) {
    let mut child = Command::new(udrbd_bin())
        .args(["daemon", "--node", node, "--config"])
        .arg(config)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "the daemon kept running on a bad config: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    (o.status.code(), String::from_utf8(o.stderr).unwrap())
}

/// The daemon refuses `extra` with exactly `udrbd: FILE:LINE:COL: ...` containing every one of
/// `words`.
fn refused(extra: &str, line: u32, col: u32, words: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), extra);
    let (code, stderr) = daemon_exit(dir.path(), &cfg, "alice");
    assert_eq!(code, Some(14), "{extra:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    let prefix = format!("udrbd: {}:{line}:{col}: ", cfg.display());
    assert!(
        stderr.starts_with(&prefix),
        "{extra:?}: want {prefix}: {stderr}"
    );
    for w in words {
        assert!(stderr.contains(w), "{extra:?}: no {w:?} in {stderr}");
    }
    // Nothing was set up: no run directory, no control socket.
    assert!(!dir.path().join("run").exists(), "{stderr}");
}

#[test]
fn unknown_keyword() {
    refused("  bogus 1;", 2, 3, &["unknown keyword 'bogus'"]);
    refused(
        "  net { protocol C; bogus-net yes; }",
        2,
        21,
        &["unknown keyword 'bogus-net'"],
    );
}

#[test]
fn missing_semicolon() {
    // Points just after the value, where the ';' belongs.
    refused(
        "  net { protocol C }",
        2,
        19,
        &["missing ';'", "protocol C", "found '}'"],
    );
    refused(
        "  net {\n    protocol C\n  }",
        3,
        15,
        &["missing ';'", "found '}'"],
    );
}

#[test]
fn bad_value() {
    refused(
        "  net { protocol D; }",
        2,
        18,
        &["bad value 'D' for 'protocol'", "A, B, C"],
    );
}

#[test]
fn out_of_range_value() {
    refused(
        "  disk { al-extents 5; }",
        2,
        21,
        &["value 5 of 'al-extents' is out of range", "67 to 65534"],
    );
}

#[test]
fn not_supported_yet_and_the_supported_value() {
    refused(
        "  disk { al-updates no; }",
        2,
        10,
        &["'al-updates'", "not supported yet", "no"],
    );
    // `yes`, the behaviour udrbd has, is accepted: the daemon comes up and attaches.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "  disk { al-updates yes; on-io-error pass_on; }",
    );
    let disk = dir.path().join("alice.img");
    sparse_file(&disk, 64 << 20);
    create_md(&disk);
    let mut d = TestDaemon::start(dir.path(), &cfg, &[]);
    assert!(d.ok(&["status", "r0"]).contains("disk:Inconsistent"));
    assert!(d.terminate(Duration::from_secs(20)).success());
}

#[test]
fn an_error_in_an_on_section_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.res");
    std::fs::write(
        &cfg,
        "resource r0 {\n  on alice { device /dev/drbd0; disk /tmp/x.img; address 127.0.0.1:7789; meta-disk internal; }\n  on bob {\n    device /dev/drbd0;\n    disk /dev/null;\n    adress 127.0.0.2:7789;\n  }\n}\n",
    )
    .unwrap();
    let (code, stderr) = daemon_exit(dir.path(), &cfg, "alice");
    assert_eq!(code, Some(14), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("udrbd: {}:6:5: ", cfg.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown keyword 'adress'"), "{stderr}");
}

/// A node the configuration does not name: the daemon does not refuse to start; it logs one
/// warning naming the node and serves no resource (`status` says DRBD's "No currently
/// configured DRBD found", a named resource is "No such resource").
#[test]
fn unknown_node_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("alice.img");
    sparse_file(&disk, 64 << 20);
    create_md(&disk);
    let cfg = write_config(dir.path(), "r0", &disk, "");
    let run = dir.path().join("run");
    let log = dir.path().join("carol.log");
    let mut child = Command::new(udrbd_bin())
        .args(["daemon", "--node", "carol", "--config"])
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&run)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new(udrbd_bin())
            .arg("--run-dir")
            .arg(&run)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            // Refusing to start would be fine too, with the node in the message.
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(!s.success(), "exited 0: {text}");
            assert!(text.contains("carol"), "{text}");
            return;
        }
        let o = cli(&["status"]);
        if o.status.success() {
            break String::from_utf8(o.stdout).unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon did not come up: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    let o = cli(&["status", "r0"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("no resource of the configuration has an 'on carol' section"),
        "{text}"
    );
    assert_eq!(status, "# No currently configured DRBD found.\n");
    assert_eq!(o.status.code(), Some(10));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "r0: No such resource\n");
    // The backing file of alice was not touched (no attach): alice can still use it.
    let mut alice = TestDaemon::start(dir.path(), &cfg, &[]);
    assert!(alice.ok(&["status", "r0"]).contains("disk:Inconsistent"));
    assert!(alice.terminate(Duration::from_secs(20)).success());
}
