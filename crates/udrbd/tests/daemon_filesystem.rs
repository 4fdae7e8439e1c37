//! A real ext4 file system on udrbd's exported device: nbdfuse turns the NBD export into a
//! file, a loop device turns the file into a block device. Files written, synced and
//! checksummed survive unmount, `down`, `up` and a promotion without --force, and fsck finds
//! the file system clean.

mod blockstack;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use blockstack::*;
use support::*;

/// nbdfuse + loop device + mount of `uri`, with the guards in drop order (mount first).
struct Stack {
    mount: Mount,
    lo: LoopDev,
    fuse: Nbdfuse,
}

impl Stack {
    fn open(mnt: &Path, uri: &str) -> (Nbdfuse, LoopDev) {
        let fuse = Nbdfuse::start(mnt, uri);
        let lo = LoopDev::attach(&fuse.file());
        (fuse, lo)
    }

    fn close(self) {
        let Stack { mount, lo, fuse } = self;
        mount.unmount();
        lo.detach();
        fuse.close();
    }
}

fn disk_state(d: &TestDaemon) -> (String, String) {
    let json = d.ok(&["status", "r0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    (
        v[0]["role"].as_str().unwrap().to_owned(),
        v[0]["devices"][0]["disk-state"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

#[test]
fn ext4_survives_down_up_and_fsck_is_clean() {
    require_root();
    require_tool("nbdfuse", "libnbd-bin");
    require_tool("fusermount3", "fuse3");
    require_tool("losetup", "mount");
    require_tool("mkfs.ext4", "e2fsprogs");
    require_tool("fsck.ext4", "e2fsprogs");
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("udrbd-fs.")
        .tempdir_in("/tmp")
        .unwrap();
    let disk = dir.path().join("alice.img");
    sparse_file(&disk, 256 << 20);
    create_md(&disk);
    let config = write_config(dir.path(), "r0", &disk, "");
    let d = TestDaemon::start(dir.path(), &config, &[]);
    d.ok(&["primary", "r0", "--force"]);
    assert_eq!(disk_state(&d), ("Primary".into(), "UpToDate".into()));

    let mnt = dir.path().join("nbd");
    let fsdir = dir.path().join("fs");

    // mkfs, mount, write files, sync, checksum.
    let (fuse, lo) = Stack::open(&mnt, &d.uri("r0"));
    let (ok, out) = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(lo.dev()));
    assert!(ok, "mkfs.ext4: {out}");
    let mount = Mount::new(lo.dev(), &fsdir);
    let stack = Stack { mount, lo, fuse };
    let files: Vec<(String, usize)> = vec![
        ("a.bin".into(), 5 << 20),
        ("b.bin".into(), (3 << 20) + 12345),
        ("sub/c.bin".into(), 8 << 20),
        ("sub/deeper/d.bin".into(), 777),
    ];
    std::fs::create_dir_all(fsdir.join("sub/deeper")).unwrap();
    let mut sums = Vec::new();
    for (name, size) in &files {
        let path = fsdir.join(name);
        std::fs::write(&path, random_bytes(*size)).unwrap();
        sums.push(sha256(&path));
    }
    // Many small files: inodes and directory blocks all over the device.
    for i in 0..200 {
        std::fs::write(
            fsdir.join(format!("sub/small{i}")),
            random_bytes(100 + i * 37),
        )
        .unwrap();
    }
    let (ok, out) = run(&mut Command::new("sync"));
    assert!(ok, "sync: {out}");
    // Checksums after the sync as well (the page cache still holds them; the point of
    // recording them is the comparison after the remount).
    for ((name, _), sum) in files.iter().zip(&sums) {
        assert_eq!(&sha256(&fsdir.join(name)), sum, "{name}");
    }
    let small: Vec<String> = (0..200)
        .map(|i| sha256(&fsdir.join(format!("sub/small{i}"))))
        .collect();
    stack.close();
    assert!(!d.ok(&["status", "r0"]).contains("open:yes"));

    // down, up, promote without --force: the data is UpToDate now.
    d.ok(&["down", "r0"]);
    d.ok(&["up", "r0"]);
    assert_eq!(disk_state(&d), ("Secondary".into(), "UpToDate".into()));
    d.ok(&["primary", "r0"]);
    assert_eq!(disk_state(&d), ("Primary".into(), "UpToDate".into()));

    // Mount again through a new nbdfuse and loop device: the same files.
    let (fuse, lo) = Stack::open(&mnt, &d.uri("r0"));
    let mount = Mount::new(lo.dev(), &fsdir);
    let stack = Stack { mount, lo, fuse };
    for ((name, size), sum) in files.iter().zip(&sums) {
        let path = fsdir.join(name);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            *size as u64,
            "{name}"
        );
        assert_eq!(&sha256(&path), sum, "{name} changed after down/up");
    }
    for (i, sum) in small.iter().enumerate() {
        assert_eq!(
            &sha256(&fsdir.join(format!("sub/small{i}"))),
            sum,
            "small{i}"
        );
    }
    let Stack { mount, lo, fuse } = stack;
    mount.unmount();
    let o = Command::new("fsck.ext4")
        .arg("-n")
        .arg(lo.dev())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fsck.ext4 -n exited {}: {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    lo.detach();
    fuse.close();
    d.ok(&["secondary", "r0"]);
    eprintln!("ext4 test took {:?}", t0.elapsed());
}
