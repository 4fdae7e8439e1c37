//! Bad input to the offline meta-data verbs: each case gets a clear one-line error, its own
//! exit code (the table of `udrbd help`), and nothing is written to the device.
//! Also: a successful command prints nothing on stderr, and the README carries the exit-code
//! table that `udrbd help` prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use udrbd::exit_code::ExitCode;

fn udrbd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udrbd"))
        .args(args)
        .output()
        .expect("run udrbd")
}

fn drbdmeta(args: &[&str]) -> Output {
    match Command::new("drbdmeta").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!("drbdmeta not found ({e}): apt-get install drbd-utils"),
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code and a single-line error mentioning `needle`.
fn assert_fails(o: &Output, code: ExitCode, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(i32::from(code.code())),
        "exit code for {code:?}; stderr: {err}"
    );
    // Warnings (e.g. corrupt AL blocks) may precede; the error itself is the one last line.
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("udrbd: "), "{err}");
    assert_eq!(err.matches("udrbd: ").count(), 1, "one error line: {err:?}");
    assert!(
        last.contains(needle),
        "error {last:?} should mention {needle:?}"
    );
}

fn file_of(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

/// A cheap fingerprint of a file: its whole content (test files are small or sparse-small).
fn content(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "junk", 4 << 20);
    std::fs::write(&p, vec![0x5Au8; 4 << 20]).unwrap();
    let before = content(&p);
    for verb in ["get-gi", "dump-md", "show-gi", "dstate", "apply-al"] {
        assert_fails(
            &udrbd(&[verb, s(&p)]),
            ExitCode::NoMetaData,
            "wrong magic 0x5A5A5A5A",
        );
    }
    assert_fails(
        &udrbd(&["set-gi", s(&p), "1:::"]),
        ExitCode::NoMetaData,
        "no v08 meta-data",
    );
    assert_eq!(content(&p), before, "nothing written");
}

#[test]
fn v09_and_v07_meta_data() {
    let dir = tempfile::tempdir().unwrap();
    let v09 = file_of(dir.path(), "v09", 256 << 20);
    let o = drbdmeta(&["--force", "0", "v09", s(&v09), "internal", "create-md", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v07 = file_of(dir.path(), "v07", 256 << 20);
    let o = drbdmeta(&["--force", "0", "v07", s(&v07), "internal", "create-md"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (p, what) in [(&v09, "v09 (DRBD 9)"), (&v07, "v07 (DRBD 0.7)")] {
        let before = content(p);
        for verb in ["get-gi", "dump-md", "apply-al"] {
            assert_fails(&udrbd(&[verb, s(p)]), ExitCode::UnsupportedVersion, what);
        }
        // create-md does not destroy other meta-data either, unless forced.
        assert_fails(
            &udrbd(&["create-md", s(p)]),
            ExitCode::WouldOverwrite,
            "--force",
        );
        assert_eq!(&content(p), &before, "nothing written");
    }
}

#[test]
fn device_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "tiny", 40 * 1024);
    assert_fails(
        &udrbd(&["create-md", s(&p)]),
        ExitCode::TooSmall,
        "too small",
    );
    assert_eq!(content(&p), vec![0; 40 * 1024], "nothing written");
    let p = file_of(dir.path(), "tinier", 1024);
    assert_fails(&udrbd(&["get-gi", s(&p)]), ExitCode::TooSmall, "too small");
}

#[test]
fn truncated_device() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", (1 << 20) + 4096);
    assert!(udrbd(&["create-md", s(&p)]).status.success());
    // Lose the last 4 KiB: the superblock is gone, the last AL block is where it was.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(1 << 20).unwrap();
    let before = content(&p);
    for verb in ["get-gi", "dump-md", "apply-al"] {
        assert_fails(
            &udrbd(&[verb, s(&p)]),
            ExitCode::LayoutMismatch,
            "truncated",
        );
    }
    assert_eq!(content(&p), before, "nothing written");
    // Shrunk by one sector: the superblock position moves down onto the last AL block.
    let p = file_of(dir.path(), "shrunk", 256 << 20);
    assert!(udrbd(&["create-md", s(&p)]).status.success());
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len((256 << 20) - 512).unwrap();
    assert_fails(
        &udrbd(&["get-gi", s(&p)]),
        ExitCode::LayoutMismatch,
        "truncated",
    );
}

#[test]
fn dump_file_errors_name_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", 256 << 20);
    assert!(udrbd(&["create-md", s(&p)]).status.success());
    let o = udrbd(&["dump-md", s(&p)]);
    assert!(o.status.success());
    let dump = String::from_utf8(o.stdout).unwrap();
    let before = content(&p);

    let bad = dir.path().join("bad.dump");
    let broken = dump.replacen("la-size-sect 0;", "la-size-sect 0", 1);
    std::fs::write(&bad, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.starts_with("bm-byte-per-bit"))
        .unwrap()
        + 1;
    let o = udrbd(&["restore-md", s(&p), s(&bad), "--force"]);
    assert_fails(
        &o,
        ExitCode::DumpSyntax,
        &format!(
            "{}:{line}:1: expected ';' (found 'bm-byte-per-bit')",
            bad.display()
        ),
    );

    let bad_hex = dump.replacen("0x0000000000000004;", "0x4;", 1);
    std::fs::write(&bad, &bad_hex).unwrap();
    let o = udrbd(&["restore-md", s(&p), s(&bad), "--force"]);
    assert_fails(&o, ExitCode::DumpSyntax, "invalid hex number");

    let truncated = &dump[..dump.find("bm {").unwrap() + 4];
    std::fs::write(&bad, truncated).unwrap();
    let o = udrbd(&["restore-md", s(&p), s(&bad), "--force"]);
    assert_fails(&o, ExitCode::DumpTruncated, "unexpected end of file");

    let o = udrbd(&[
        "restore-md",
        s(&p),
        s(&dir.path().join("nope.dump")),
        "--force",
    ]);
    assert_fails(&o, ExitCode::NotFound, "nope.dump");
    assert_eq!(content(&p), before, "nothing written");
}

#[test]
fn missing_path_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-disk");
    for verb in [
        "create-md",
        "get-gi",
        "dump-md",
        "show-gi",
        "dstate",
        "apply-al",
    ] {
        assert_fails(
            &udrbd(&[verb, s(&missing)]),
            ExitCode::NotFound,
            "no such file",
        );
        assert_fails(
            &udrbd(&[verb, s(dir.path())]),
            ExitCode::NotADevice,
            "a directory",
        );
    }
    assert!(!missing.exists(), "create-md must not create the file");
}

#[test]
fn bad_values_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", 256 << 20);
    assert!(udrbd(&["create-md", s(&p)]).status.success());
    let before = content(&p);
    assert_fails(
        &udrbd(&["set-gi", s(&p), "::::2"]),
        ExitCode::InvalidValue,
        "'2' is not 0 or 1.",
    );
    assert_fails(
        &udrbd(&["set-gi", s(&p), "xyz"]),
        ExitCode::InvalidValue,
        "not a 64-bit hex UUID",
    );
    let o = udrbd(&[
        "create-md",
        s(&p),
        "--force",
        "--al-stripes",
        "1",
        "--al-stripe-size-kB",
        "16",
    ]);
    assert_fails(&o, ExitCode::InvalidValue, "too small");
    assert_eq!(content(&p), before, "nothing written");
    let o = udrbd(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn busy_device_is_refused() {
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", 256 << 20);
    let f = std::fs::File::open(&p).unwrap();
    rustix::fs::flock(f.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
    assert_fails(&udrbd(&["create-md", s(&p)]), ExitCode::Busy, "in use");
}

#[test]
fn unclean_meta_data_needs_apply_al_or_force() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", 256 << 20);
    assert!(udrbd(&["create-md", s(&p)]).status.success());
    // Clear AL_CLEAN by restoring a dump with flags 0 (what drbdmeta 9.22's dumps carry).
    let dump = String::from_utf8(udrbd(&["dump-md", s(&p)]).stdout).unwrap();
    let dump = dump.replace("flags 0x00000080;", "flags 0x00000000;");
    let f = dir.path().join("d");
    std::fs::write(&f, dump).unwrap();
    assert!(
        udrbd(&["restore-md", s(&p), s(&f), "--force"])
            .status
            .success()
    );
    assert_fails(&udrbd(&["dump-md", s(&p)]), ExitCode::Unclean, "apply-al");
    let o = udrbd(&["dump-md", s(&p), "--force"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("This_is_an_unclean_meta_data_dump."));
    let o = udrbd(&["apply-al", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = udrbd(&["dump-md", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The activity log is unusable while the node was Primary: apply-al refuses and writes
/// nothing (drbdmeta exits 1 there), so the information is not thrown away.
#[test]
fn unusable_activity_log_of_a_primary() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", 256 << 20);
    assert!(udrbd(&["create-md", s(&p)]).status.success());
    assert!(udrbd(&["set-gi", s(&p), "::::1:0:1"]).status.success());
    // Zero the whole AL ring (32 KiB below the superblock).
    let layout = udrbd_meta::Layout::internal(256 << 20, udrbd_meta::AlGeometry::DEFAULT).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0u8; 32 * 1024], layout.al_byte()).unwrap();
        // An attached 8.4 node writes the "unclean" magic, which tells apply-al the ring is
        // in the 8.4 format even when it is unreadable.
        let magic = udrbd_meta::superblock::MD_MAGIC_84_UNCLEAN.to_be_bytes();
        f.write_all_at(&magic, layout.superblock_byte() + 60)
            .unwrap();
    }
    let before = content(&p);
    assert_fails(
        &udrbd(&["apply-al", s(&p)]),
        ExitCode::ActivityLogUnusable,
        "No usable activity log",
    );
    assert_eq!(content(&p), before, "nothing written");
}

#[test]
fn successful_commands_are_quiet_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let p = file_of(dir.path(), "disk", 256 << 20);
    let dump = dir.path().join("dump");
    let runs: Vec<Vec<&str>> = vec![
        vec!["create-md", s(&p)],
        vec!["get-gi", s(&p)],
        vec!["show-gi", s(&p)],
        vec!["dstate", s(&p)],
        vec!["set-gi", s(&p), "::::1:1"],
        vec!["apply-al", s(&p)],
        vec!["dump-md", s(&p)],
    ];
    for args in &runs {
        let o = udrbd(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?} printed on stderr");
        if args[0] == "dump-md" {
            std::fs::write(&dump, &o.stdout).unwrap();
        }
    }
    let o = udrbd(&["restore-md", s(&p), s(&dump), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn readme_has_the_exit_code_table() {
    let o = udrbd(&["help"]);
    let help = String::from_utf8(o.stdout).unwrap();
    let table = ExitCode::help_table();
    assert!(help.contains(&table), "udrbd help prints the table");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    assert!(
        readme.contains(&table),
        "README.md carries the table exactly:\n{table}"
    );
}

/// A bare name is a resource: its disk and meta-disk come from `--config` for `--node`.
#[test]
fn resource_names_resolve_through_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let disk = file_of(dir.path(), "alice.img", 64 << 20);
    let conf = dir.path().join("r0.res");
    std::fs::write(
        &conf,
        format!(
            "resource r0 {{\n  on alice {{ device /dev/drbd0; disk {}; address 127.0.0.1:7789; meta-disk internal; }}\n  on bob {{ device /dev/drbd0; disk /nonexistent; address 127.0.0.2:7789; meta-disk internal; }}\n}}\n",
            disk.display()
        ),
    )
    .unwrap();
    let c = s(&conf);
    let o = udrbd(&["--config", c, "--node", "alice", "create-md", "r0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Global options are also accepted after the verb.
    let o = udrbd(&["get-gi", "r0", "--config", c, "--node", "alice"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0\n"
    );
    assert_eq!(
        udrbd(&["get-gi", s(&disk)]).stdout,
        o.stdout,
        "same as by path"
    );
    assert_fails(
        &udrbd(&["get-gi", "r9", "--config", c, "--node", "alice"]),
        ExitCode::Config,
        "r9",
    );
    assert_fails(
        &udrbd(&["get-gi", "r0", "--config", c, "--node", "carol"]),
        ExitCode::Config,
        "carol",
    );
    assert_fails(
        &udrbd(&["get-gi", "r0", "--config", c, "--node", "bob"]),
        ExitCode::NotFound,
        "/nonexistent",
    );
    let broken = dir.path().join("broken.res");
    std::fs::write(&broken, "resource r0 {\n  on alice { device minor 0 }\n}\n").unwrap();
    assert_fails(
        &udrbd(&["get-gi", "r0", "--config", s(&broken), "--node", "alice"]),
        ExitCode::Config,
        &format!("{}:2:", broken.display()),
    );
}
