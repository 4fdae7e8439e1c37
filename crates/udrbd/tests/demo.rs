//! `udrbd demo` end to end (smaller disks than the default): it must report that the data
//! written through the Primary read back identically from the promoted peer, that the old
//! Primary resynced, and it must leave no directory behind.

use std::process::Command;

#[test]
fn the_demo_runs_fails_over_and_cleans_up() {
    let o = Command::new(env!("CARGO_BIN_EXE_udrbd"))
        .args(["demo", "--size-mib", "64", "--write-mib", "16"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let written = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote 16 MiB at offset 0 on "))
        .and_then(|l| l.rsplit(' ').next())
        .expect("the write step")
        .to_string();
    assert!(
        stdout.contains(&format!(
            "read 16 MiB back from bob: checksum {written} = what alice acknowledged"
        )),
        "{stdout}"
    );
    // The old Primary came back as a Secondary in sync with the new one.
    let tail = &stdout[stdout.rfind("== 7.").expect("step 7")..];
    assert!(tail.contains("role:Primary"), "{tail}");
    assert!(tail.contains("alice role:Secondary"), "{tail}");
    assert!(tail.contains("peer-disk:UpToDate"), "{tail}");
    let dir = stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit(" in ").next())
        .expect("the first line names the directory");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "{dir} left behind"
    );
}
