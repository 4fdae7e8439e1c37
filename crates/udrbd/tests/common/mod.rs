//! Helpers shared by the integration tests: the built `udrbd` binary, the real `drbdmeta`,
//! scratch directories with sparse files, and the normalisation of `dump-md` texts.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

/// The `udrbd` binary cargo built for this test run.
pub fn udrbd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_udrbd")
}

/// The real `drbdmeta` (drbd-utils). A missing drbdmeta is a test failure, never a skip.
///
/// Looked up on `PATH`, then in `/usr/sbin` and `/sbin` (where Debian installs it; a non-root
/// `PATH` often lacks them).
pub fn drbdmeta_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join("drbdmeta"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("drbdmeta not found: apt-get install drbd-utils"))
    })
}

/// The result of one command.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Panics (showing stdout and stderr) unless the command exited 0; returns stdout.
    pub fn ok(self) -> String {
        assert!(
            self.status.success(),
            "`{}` failed with {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmdline,
            self.status,
            truncated(&self.stdout),
            truncated(&self.stderr)
        );
        self.stdout
    }

    /// stdout and stderr lines, without drbdmeta's noise about regular files (`ioctl(...)`
    /// and the BLKZEROOUT fallback).
    pub fn message_lines(&self) -> Vec<String> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .filter(|l| !is_drbdmeta_file_noise(l))
            .map(str::to_string)
            .collect()
    }
}

fn is_drbdmeta_file_noise(line: &str) -> bool {
    line.starts_with("ioctl(") || line.trim().is_empty()
}

fn truncated(s: &str) -> &str {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        s
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }
}

/// Runs a command with stdin closed and captures its output.
pub fn run(cmd: &mut Command) -> Output {
    let cmdline = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    Output {
        cmdline,
        status: out.status,
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `udrbd ARGS...`.
pub fn udrbd(args: &[&str]) -> Output {
    run(Command::new(udrbd_bin()).args(args))
}

/// `udrbd VERB DEVICE ARGS...` with internal meta-data.
pub fn udrbd_on(device: &Path, verb: &str, args: &[&str]) -> Output {
    run(Command::new(udrbd_bin()).arg(verb).arg(device).args(args))
}

/// `drbdmeta --force 0 v08 DEVICE internal VERB ARGS...` (`--force`: regular files, no
/// questions).
pub fn drbdmeta_on(device: &Path, verb: &str, args: &[&str]) -> Output {
    run(Command::new(drbdmeta_bin())
        .args(["--force", "0", "v08"])
        .arg(device)
        .arg("internal")
        .arg(verb)
        .args(args))
}

/// The two tools, for tests that run the same step with either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// The real drbdmeta.
    Drbdmeta,
    /// udrbd's offline verbs.
    Udrbd,
}

impl Tool {
    /// Both, drbdmeta first.
    pub const BOTH: [Tool; 2] = [Tool::Drbdmeta, Tool::Udrbd];

    /// Runs `VERB DEVICE ARGS` with this tool. udrbd gets `--force` where drbdmeta's global
    /// `--force` answers a question (restore-md over valid meta-data, dump-md of unclean
    /// meta-data, set-gi); create-md only ever runs on fresh files here.
    pub fn run(self, device: &Path, verb: &str, args: &[&str]) -> Output {
        match self {
            Tool::Drbdmeta => drbdmeta_on(device, verb, args),
            Tool::Udrbd => {
                let mut all: Vec<&str> = args.to_vec();
                if matches!(verb, "restore-md" | "dump-md" | "set-gi") {
                    all.push("--force");
                }
                udrbd_on(device, verb, &all)
            }
        }
    }

    /// The other tool.
    pub fn other(self) -> Tool {
        match self {
            Tool::Drbdmeta => Tool::Udrbd,
            Tool::Udrbd => Tool::Drbdmeta,
        }
    }
}

/// Drops drbdmeta's leading comment block (date, host, command line): everything before the
/// `version "v08";` line.
pub fn strip_dump_header(dump: &str) -> String {
    let start = dump
        .find("version \"v08\";")
        .unwrap_or_else(|| panic!("no `version \"v08\";` line in dump:\n{}", truncated(dump)));
    dump[start..].to_string()
}

/// [`strip_dump_header`] and also drops the `flags 0x...;` line: drbdmeta 9.22 always prints
/// `flags 0x00000000` for v08, udrbd the real flags (compare flags through get-gi instead).
pub fn normalize_dump(dump: &str) -> String {
    let body = strip_dump_header(dump);
    let mut out = String::with_capacity(body.len());
    for line in body.split_inclusive('\n') {
        if line.trim_start().starts_with("flags 0x") {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Asserts two (possibly large) texts are equal, reporting the first differing line instead of
/// both texts.
pub fn assert_same_text(what: &str, left_name: &str, left: &str, right_name: &str, right: &str) {
    if left == right {
        return;
    }
    let l: Vec<&str> = left.lines().collect();
    let r: Vec<&str> = right.lines().collect();
    let i = l
        .iter()
        .zip(&r)
        .position(|(a, b)| a != b)
        .unwrap_or(l.len().min(r.len()));
    let context = |v: &[&str]| {
        v[i.saturating_sub(3)..(i + 4).min(v.len())]
            .iter()
            .map(|s| format!("    {s}\n"))
            .collect::<String>()
    };
    panic!(
        "{what}: {left_name} and {right_name} differ at line {} ({} vs {} lines)\n\
         --- {left_name}:\n{}--- {right_name}:\n{}",
        i + 1,
        l.len(),
        r.len(),
        context(&l),
        context(&r)
    );
}

/// Meta-data offsets as drbdmeta reports them in the `dump-md` header (absolute bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MdOffsets {
    /// `# md_size_sect`.
    pub md_size_sect: u64,
    /// `# md_offset`: the superblock.
    pub md_offset: u64,
    /// `# al_offset`: the activity-log ring.
    pub al_offset: u64,
    /// `# bm_offset`: the bitmap; for internal meta-data also the usable size in bytes.
    pub bm_offset: u64,
}

impl MdOffsets {
    /// Parses the `# md_size_sect` … `# bm_offset` comment lines of a dump.
    pub fn from_dump(dump: &str) -> MdOffsets {
        let field = |name: &str| -> u64 {
            let prefix = format!("# {name} ");
            dump.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` in dump"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("bad `{prefix}`: {e}"))
        };
        MdOffsets {
            md_size_sect: field("md_size_sect"),
            md_offset: field("md_offset"),
            al_offset: field("al_offset"),
            bm_offset: field("bm_offset"),
        }
    }

    /// The usable data size in sectors (internal meta-data: everything below the bitmap).
    pub fn usable_sect(&self) -> u64 {
        self.bm_offset / 512
    }

    /// The whole meta-data area create-md writes: bitmap start to superblock end.
    pub fn md_range(&self) -> (u64, u64) {
        (self.bm_offset, self.md_offset + 4096)
    }
}

/// `bm_bytes(S)` of drbd-v08-facts.md §1.5: the bitmap bytes drbdmeta dumps for la-size S.
pub fn bm_bytes(la_size_sect: u64) -> u64 {
    (la_size_sect.div_ceil(8).div_ceil(64) * 8).next_multiple_of(4096)
}

/// A per-test scratch directory (removed with everything in it when dropped).
pub struct Scratch {
    dir: TempDir,
}

impl Scratch {
    /// A new directory named after the test.
    pub fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("udrbd-{test}-"))
            .tempdir()
            .expect("create temp dir");
        Scratch { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A sparse file of exactly `size` bytes.
    pub fn sparse(&self, name: &str, size: u64) -> PathBuf {
        let path = self.dir.path().join(name);
        let f = File::create(&path).expect("create sparse file");
        f.set_len(size).expect("set_len");
        path
    }

    /// A text file.
    pub fn text(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).expect("write text file");
        path
    }

    /// A sparse copy of `src` (`cp --sparse=always`).
    pub fn copy_sparse(&self, src: &Path, name: &str) -> PathBuf {
        let dst = self.dir.path().join(name);
        run(Command::new("cp").arg("--sparse=always").arg(src).arg(&dst)).ok();
        dst
    }
}

/// Deletes a file early (large sparse files still hold their written blocks).
pub fn remove(path: &Path) {
    fs::remove_file(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
}

/// Reads `len` bytes at `offset`.
pub fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut f = File::open(path).expect("open for read");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).expect("read");
    buf
}

/// Writes `data` at `offset` and syncs.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for write");
    f.write_all_at(data, offset).expect("write");
    f.sync_all().expect("sync");
}

/// Asserts that `len` bytes at `offset` are identical in two files, comparing in chunks and
/// reporting the first differing byte.
pub fn assert_same_bytes(what: &str, a: &Path, b: &Path, offset: u64, len: u64) {
    const CHUNK: u64 = 8 << 20;
    let (mut fa, mut fb) = (
        File::open(a).expect("open a"),
        File::open(b).expect("open b"),
    );
    let mut done = 0;
    let (mut ba, mut bb) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        fa.seek(SeekFrom::Start(offset + done)).expect("seek");
        fb.seek(SeekFrom::Start(offset + done)).expect("seek");
        fa.read_exact(&mut ba[..n]).expect("read a");
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .expect("a difference");
            let at = offset + done + i as u64;
            let show = |buf: &[u8]| -> String {
                buf[i..(i + 16).min(n)]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            };
            panic!(
                "{what}: {} and {} differ at byte {at} (offset +{} in the compared range): \
                 {} vs {}",
                a.display(),
                b.display(),
                at - offset,
                show(&ba),
                show(&bb)
            );
        }
        done += n as u64;
    }
}

/// Writes a line to stderr (shown with `--nocapture`), for progress in slow tests.
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}
