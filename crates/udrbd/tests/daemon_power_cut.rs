//! Power cut of the backing disk under a writing Primary.
//!
//! The backing disk is `nbdkit --filter=cache file disk.img cache=writeback` exposed as a file
//! by nbdfuse: writes stay inside nbdkit until a flush or FUA reaches it, so SIGKILL of nbdkit
//! loses exactly what udrbd did not make durable (killing only udrbd would prove nothing: the
//! page cache survives a process). A libnbd writer writes distinct 4 KiB blocks across many
//! 4 MiB extents (activity-log transactions and evictions with `al-extents 67`), mixing plain
//! writes, flushes and FUA writes, and logs every write that an acknowledged flush or FUA made
//! durable. After the cut (nbdkit and udrbd killed), everything restarts on the same disk.img:
//! every logged write must read back exactly, and every block whose new content reached the
//! disk must be marked out of sync (the peer is configured but absent, so a resync must copy
//! it): completed writes through the bitmap, the rest through the replayed activity log.

mod blockstack;
mod support;

use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blockstack::*;
use support::*;

/// The writer: `WRITER URI ISSUED_LOG DURABLE_LOG SEED MAX_SECONDS`. Every block is written at
/// most once (so what a block holds names the one write that put it there). Before a write is
/// sent, "SEQ OFFSET FUA" goes to the issued log; a write is logged durable ("SEQ OFFSET",
/// fsync'd) once a FUA write is acknowledged, or once a flush that was sent after the write's
/// acknowledgement is acknowledged. 16 requests in flight.
///
/// It writes in bursts, cycling through: `cold` (random extents of the whole device: activity
/// log misses, transactions and evictions; plain, FUA and flush mixed), `flush` (plain writes
/// and flushes in 8 extents that are in the activity log: nothing but the flushes makes them
/// durable) and `fua` (plain and FUA writes in those extents, no flush: nothing but FUA makes
/// them durable). Once 3 flushes (FUA writes) of a `flush` (`fua`) burst are acknowledged
/// with 100 or more writes of the burst to go, it prints "steady flush" ("steady fua").
const WRITER: &str = r#"
import nbd, os, random, struct, sys, time
uri, issued_path, durable_path = sys.argv[1], sys.argv[2], sys.argv[3]
seed, max_s = int(sys.argv[4]), float(sys.argv[5])
MAGIC = 0x5443504442524455
def block(seq):
    return struct.pack('<QQ', MAGIC, seq) + random.Random(seq).randbytes(4080)
h = nbd.NBD()
h.connect_uri(uri)
nblocks = h.get_size() // 4096
nextents = (nblocks + 1023) // 1024
rng = random.Random(seed)
issued = os.open(issued_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
durable = os.open(durable_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
used = set()
hot = [rng.randrange(nextents) for _ in range(8)]
CYCLE = ['cold', 'flush', 'cold', 'fua']
burst, kind, left, acks = -1, None, 0, 0
def next_burst():
    global burst, kind, left, acks
    burst += 1
    kind = CYCLE[burst % len(CYCLE)]
    left = rng.randint(20, 50) if kind == 'cold' else rng.randint(250, 500)
    acks = 0
def pick():
    while True:
        if kind == 'cold':
            e = rng.randrange(nextents)
            hot[rng.randrange(len(hot))] = e
        else:
            e = rng.choice(hot)
        b = e * 1024 + rng.randrange(1024)
        if b < nblocks and b not in used:
            used.add(b)
            return b
def log_durable(items):
    if items:
        os.write(durable, ''.join('%d %d\n' % it for it in items).encode())
        os.fsync(durable)
def acked_in_burst(b):
    global acks
    if b == burst:
        acks += 1
        if acks == 3 and left >= 100:
            print('steady', kind, flush=True)
pending = {}
acked_unflushed = []
seq = 0
stats = {'W': 0, 'FUA': 0, 'F': 0}
print('started', flush=True)
t_end = time.monotonic() + max_s
while time.monotonic() < t_end:
    while len(pending) < 16:
        if left == 0:
            next_burst()
        left -= 1
        r = rng.random()
        if r < 0.05 and kind != 'fua':
            cover, acked_unflushed = acked_unflushed, []
            pending[h.aio_flush()] = ('F', cover, burst)
        else:
            seq += 1
            off = pick() * 4096
            fua = r < 0.15 and kind != 'flush'
            os.write(issued, b'%d %d %d\n' % (seq, off, fua))
            buf = nbd.Buffer.from_bytearray(bytearray(block(seq)))
            c = h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA if fua else 0)
            pending[c] = ('W', seq, off, fua, buf, burst)
    h.poll(-1)
    for c in list(pending):
        if h.aio_command_completed(c):
            p = pending.pop(c)
            if p[0] == 'F':
                log_durable(p[1])
                stats['F'] += 1
                acked_in_burst(p[2])
            elif p[3]:
                log_durable([(p[1], p[2])])
                stats['FUA'] += 1
                acked_in_burst(p[5])
            else:
                acked_unflushed.append((p[1], p[2]))
                stats['W'] += 1
print('done', stats, flush=True)
"#;

/// The checker: `CHECKER URI ISSUED_LOG DURABLE_LOG` prints one JSON object: the counts, the
/// durable writes that do not read back (`bad`), and the offsets of all issued writes whose
/// content is on the device (`present`).
const CHECKER: &str = r#"
import json, nbd, random, struct, sys
uri, issued_path, durable_path = sys.argv[1], sys.argv[2], sys.argv[3]
MAGIC = 0x5443504442524455
def block(seq):
    return struct.pack('<QQ', MAGIC, seq) + random.Random(seq).randbytes(4080)
issued = {}
for line in open(issued_path):
    if line.endswith('\n'):
        s, o, f = map(int, line.split())
        issued[s] = (o, f)
durable = {}
for line in open(durable_path):
    s, o = map(int, line.split())
    durable[s] = o
h = nbd.NBD()
h.connect_uri(uri)
bad, present, lost = [], [], 0
for s, o in durable.items():
    if issued.get(s, (None,))[0] != o:
        bad.append([s, o, 'durable write %d at %d was never issued' % (s, o)])
for s, (o, f) in sorted(issued.items()):
    got = h.pread(4096, o)
    if got == block(s):
        present.append(o)
        continue
    if s not in durable:
        lost += 1
        continue
    if got == bytes(4096):
        what = 'zeros'
    else:
        m, other = struct.unpack('<QQ', got[:16])
        what = 'block of write %d' % other if m == MAGIC else 'other data'
    bad.append([s, o, 'fua=%d reads %s' % (f, what)])
print(json.dumps({'issued': len(issued), 'durable': len(durable), 'lost': lost,
                  'bad': bad[:50], 'bad_count': len(bad), 'present': present}))
"#;

/// Fails the test unless the nbdkit+nbdfuse stack loses unflushed writes at SIGKILL of nbdkit
/// and keeps flushed ones (fdatasync) and RWF_DSYNC ones (udrbd's FUA): without that, the
/// power-cut test below could pass vacuously.
fn assert_stack_loses_unflushed_writes(dir: &Path) {
    let img = dir.join("probe.img");
    sparse_file(&img, 8 << 20);
    let sock = dir.join("probe.sock");
    let mut kit = Nbdkit::start_writeback_cache(&img, &sock, dir);
    let fuse = Nbdfuse::start(&dir.join("probe"), &kit.uri());
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(fuse.file())
        .unwrap();
    let (a, b, c) = ([0xaau8; 4096], [0xbbu8; 4096], [0xccu8; 4096]);
    f.write_all_at(&a, 0).unwrap();
    f.sync_data().unwrap();
    let n = rustix::io::pwritev2(
        &f,
        &[std::io::IoSlice::new(&c)],
        2 << 20,
        rustix::io::ReadWriteFlags::DSYNC,
    )
    .unwrap();
    assert_eq!(n, 4096);
    f.write_all_at(&b, 1 << 20).unwrap();
    // Through the page cache to nbdkit, but not flushed.
    let mut back = [0u8; 4096];
    f.read_exact_at(&mut back, 1 << 20).unwrap();
    assert_eq!(back, b);
    kit.kill9();
    drop(f);
    fuse.force_close();
    let raw = std::fs::File::open(&img).unwrap();
    let read = |off: u64| {
        let mut buf = [0u8; 4096];
        raw.read_exact_at(&mut buf, off).unwrap();
        buf
    };
    assert_eq!(
        read(0),
        a,
        "a flushed write was lost by the power-cut stack"
    );
    assert_eq!(read(2 << 20), c, "an RWF_DSYNC write was lost");
    assert_eq!(
        read(1 << 20),
        [0u8; 4096],
        "the power-cut stack kept an unflushed write: a power-cut test on it proves nothing"
    );
}

fn status_json(d: &TestDaemon) -> serde_json::Value {
    let json = d.ok(&["status", "r0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0].clone()
}

/// drbdsetup status --json: the out-of-sync KiB towards the (absent) peer bob.
fn out_of_sync_kib(s: &serde_json::Value) -> u64 {
    let conn = &s["connections"][0];
    assert_eq!(conn["name"], "bob", "{s}");
    conn["peer_devices"][0]["out-of-sync"]
        .as_u64()
        .unwrap_or_else(|| panic!("no out-of-sync in {s}"))
}

fn dump_md(disk: &Path) -> String {
    run_ok(Command::new(udrbd_bin()).arg("dump-md").arg(disk))
}

/// Zeroes the bitmap of a detached disk (dump-md, restore-md): as if the peer had been in
/// sync, so the bits the test finds afterwards are the ones the writes set.
fn clear_bitmap(dir: &Path, disk: &Path) {
    let dump = dump_md(disk);
    let words = bitmap_words(&dump).len();
    let bm = dump.find("\nbm {").unwrap() + 1;
    let close = bm + dump[bm..].find("\n}").unwrap() + 2;
    let text = format!(
        "{}bm {{\n    {words} times 0x0000000000000000;\n}}{}",
        &dump[..bm],
        &dump[close..]
    );
    let path = dir.join("cleared.md");
    std::fs::write(&path, text).unwrap();
    run_ok(
        Command::new(udrbd_bin())
            .args(["restore-md", "--force"])
            .arg(disk)
            .arg(&path),
    );
    assert!(dump_md(disk).contains("# bits-set 0;"));
}

struct Checked {
    issued: u64,
    durable: u64,
    lost: u64,
    present: Vec<u64>,
}

fn check_writes(d: &TestDaemon, dir: &Path, script: &Path) -> Checked {
    let o = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(d.uri("r0"))
        .arg(dir.join("issued.log"))
        .arg(dir.join("durable.log"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "checker: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["bad_count"],
        0,
        "acknowledged-durable writes lost or wrong after the power cut (seq, offset, what): {}\n{}",
        v["bad"],
        d.log_text()
    );
    Checked {
        issued: v["issued"].as_u64().unwrap(),
        durable: v["durable"].as_u64().unwrap(),
        lost: v["lost"].as_u64().unwrap(),
        present: v["present"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect(),
    }
}

/// Where in the writer's bursts the power cut falls.
#[derive(Clone, Copy, Debug)]
enum CutAt {
    /// Wherever the writer is.
    Anywhere,
    /// Within a burst of the kind ("flush" or "fua") that has 3 acknowledged flushes (FUA
    /// writes): the durability of the writes logged in it rests on those alone.
    Steady(&'static str),
}

/// Writes for `write_for`, then (for `CutAt::Steady`) waits for the next steady burst of the
/// kind, cuts the power, restarts everything and checks the logged writes and the bitmap.
fn power_cut_after(write_for: Duration, at: CutAt, seed: u64) {
    require_root();
    require_tool("nbdkit", "nbdkit");
    require_tool("nbdfuse", "libnbd-bin");
    require_tool("fusermount3", "fuse3");
    assert!(
        Command::new("/usr/bin/python3")
            .args(["-c", "import nbd"])
            .status()
            .unwrap()
            .success(),
        "/usr/bin/python3 lacks nbd: apt-get install python3-libnbd"
    );
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("udrbd-powercut.")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    assert_stack_loses_unflushed_writes(dir);
    let writer_py = dir.join("writer.py");
    let checker_py = dir.join("checker.py");
    std::fs::write(&writer_py, WRITER).unwrap();
    std::fs::write(&checker_py, CHECKER).unwrap();

    // 1 GiB: 256 extents of 4 MiB against 67 activity-log slots.
    let img = dir.join("disk.img");
    sparse_file(&img, 1 << 30);
    let bsock = dir.join("b.sock");
    let mnt = dir.join("backing");
    let mut kit = Nbdkit::start_writeback_cache(&img, &bsock, dir);
    let fuse = Nbdfuse::start(&mnt, &kit.uri());
    let disk: PathBuf = fuse.file();
    create_md(&disk);
    let config = write_config(dir, "r0", &disk, "  disk { al-extents 67; }");
    let mut d = TestDaemon::start(dir, &config, &[]);
    d.ok(&["primary", "r0", "--force"]);
    d.ok(&["down", "r0"]);
    clear_bitmap(dir, &disk);
    d.ok(&["up", "r0"]);
    d.ok(&["primary", "r0"]);
    let s = status_json(&d);
    assert_eq!(s["devices"][0]["disk-state"], "UpToDate");
    assert_eq!(out_of_sync_kib(&s), 0, "{s}");

    let mut writer = KillOnDrop(
        Command::new("/usr/bin/python3")
            .arg(&writer_py)
            .arg(d.uri("r0"))
            .arg(dir.join("issued.log"))
            .arg(dir.join("durable.log"))
            .arg(seed.to_string())
            .arg("30")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("writer.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let lines = {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = writer.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let writer_err = || std::fs::read_to_string(dir.join("writer.err")).unwrap_or_default();
    let first = lines.recv_timeout(Duration::from_secs(10));
    assert_eq!(first.as_deref(), Ok("started"), "writer: {}", writer_err());
    std::thread::sleep(write_for);
    if let CutAt::Steady(kind) = at {
        let want = format!("steady {kind}");
        // Announcements from before now are stale.
        while lines.try_recv().is_ok() {}
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == want => break,
                Ok(_) => {}
                Err(e) => panic!("no {want:?} from the writer ({e}): {}", writer_err()),
            }
        }
    }
    if let Some(st) = writer.0.try_wait().unwrap() {
        panic!(
            "the writer stopped before the power cut ({st}): {}\n{}",
            writer_err(),
            d.log_text()
        );
    }

    // The power cut: the disk first (nothing reaches disk.img after this), then udrbd.
    kit.kill9();
    d.kill9();
    writer.kill();
    fuse.force_close();
    let crashed_log = d.log_text();
    drop(d);

    // Power back: the same disk.img, holding only what was flushed.
    let kit = Nbdkit::start_writeback_cache(&img, &bsock, dir);
    let fuse = Nbdfuse::start(&mnt, &kit.uri());
    let d = TestDaemon::start_in(dir, "run2", &config, &[]);
    let s = status_json(&d);
    assert_eq!(
        s["devices"][0]["disk-state"],
        "UpToDate",
        "after the crash: {s}\n{}",
        d.log_text()
    );
    d.ok(&["primary", "r0"]);
    let c = check_writes(&d, dir, &checker_py);
    assert!(c.durable > 0, "no write was made durable before the cut");
    let s = status_json(&d);
    let oos_kib = out_of_sync_kib(&s);
    assert!(oos_kib > 0, "nothing out of sync after the crash: {s}");
    d.ok(&["down", "r0"]);

    let dump = dump_md(&disk);
    let words = bitmap_words(&dump);
    let bit = |b: u64| (words[(b / 64) as usize] >> (b % 64)) & 1 == 1;
    let bits_set: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
    assert!(dump.contains(&format!("# bits-set {bits_set};")), "{dump}");
    assert!(bits_set > 0);
    assert_eq!(
        bits_set * 4,
        oos_kib,
        "status out-of-sync vs the bitmap written at down"
    );
    let unmarked: Vec<u64> = c
        .present
        .iter()
        .copied()
        .filter(|off| !bit(off / 4096))
        .collect();
    assert!(
        unmarked.is_empty(),
        "{} of {} written blocks are on disk but not marked out of sync (first offsets: {:?})\ncrashed daemon:\n{crashed_log}\nrestarted daemon:\n{}",
        unmarked.len(),
        c.present.len(),
        &unmarked[..unmarked.len().min(20)],
        d.log_text()
    );
    // Whole extents from the activity-log replay (the writes alone set a few bits per extent).
    let full_extents = words
        .chunks(16)
        .filter(|e| e.iter().all(|w| *w == u64::MAX))
        .count();
    assert!(
        full_extents > 0,
        "no whole 4 MiB extent is out of sync: the activity log was not replayed"
    );
    eprintln!(
        "power cut after {write_for:?} at {at:?}: issued {}, durable {}, on disk {}, lost {} (unflushed), bits set {bits_set}, whole extents {full_extents}, {:?}",
        c.issued,
        c.durable,
        c.present.len(),
        c.lost,
        t0.elapsed()
    );
    drop(d);
    fuse.close();
    drop(kit);
}

#[test]
fn power_cut_after_half_a_second_where_only_flushes_made_writes_durable() {
    power_cut_after(Duration::from_millis(500), CutAt::Steady("flush"), 1);
}

#[test]
fn power_cut_after_two_seconds_where_only_fua_made_writes_durable() {
    power_cut_after(Duration::from_secs(2), CutAt::Steady("fua"), 2);
}

#[test]
fn power_cut_after_four_seconds_anywhere() {
    power_cut_after(Duration::from_secs(4), CutAt::Anywhere, 3);
}

/// The superblock records the activity-log size in use, as DRBD's `drbd_md_write` does
/// (`al_nr_extents = act_log->nr_elements`): after running with `al-extents 67`, dump-md of
/// the detached disk says `# al-extents 67;`, not create-md's 257.
#[test]
fn the_superblock_records_the_al_extents_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("alice.img");
    sparse_file(&disk, 64 << 20);
    create_md(&disk);
    assert!(dump_md(&disk).contains("# al-extents 257;"));
    let config = write_config(tmp.path(), "r0", &disk, "  disk { al-extents 67; }");
    let d = TestDaemon::start(tmp.path(), &config, &[]);
    d.ok(&["primary", "r0", "--force"]);
    d.ok(&["down", "r0"]);
    let dump = dump_md(&disk);
    let line = dump.lines().find(|l| l.starts_with("# al-extents"));
    assert_eq!(line, Some("# al-extents 67;"), "{}", d.log_text());
}
