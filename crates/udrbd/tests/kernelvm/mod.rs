//! Shared harness of the tests against a real kernel DRBD 8.4.11 peer (`kernel_peer.rs`,
//! `kernel_interop.rs`): Debian 12's own kernel with its in-tree `drbd.ko`, booted in qemu (TCG)
//! by `shared/tools/kdrbd-vm` (beside the repository; the environment variable `KDRBD_VM` may
//! name the script instead). The guest's DRBD is reachable at host `127.0.0.1:HP` and connects
//! out to host `127.0.0.1:PP`.
//!
//! [`KernelVm`] is one guest, killed (qemu SIGKILL) when dropped, also when a test panics;
//! [`Udrbd`] is a udrbd node's directory, backing file and config, whose daemon
//! ([`TestDaemon`]) is killed on drop too.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;

/// The guest's default brd size (kernel_peer.rs); its data area is 16344 KiB (internal
/// meta-data takes 40 KiB).
pub const SIZE_MIB: u64 = 16;
/// The guest's DRBD port (fixed by kdrbd-vm).
pub const GUEST_DRBD_PORT: u16 = 7789;
/// How long a connection or a sync may take under TCG.
pub const WAIT: Duration = Duration::from_secs(180);
/// Patterns that must not appear in the guest's kernel log.
pub const BAD_KERNEL_LOG: [&str; 6] = [
    "protocol error",
    "ProtocolError",
    "BAD!",
    "Unexpected data packet",
    "short read",
    "error receiving",
];

/// The ports of one test: the guest's hostfwd of its DRBD (`hp`), the port the guest connects
/// to (`pp`), the guest agent (`ap`), and a port where nothing listens (`dead`).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub hp: u16,
    pub pp: u16,
    pub ap: u16,
    pub dead: u16,
    /// Where udrbd listens.
    pub udrbd_listen: u16,
    /// Where udrbd connects.
    pub udrbd_peer: u16,
}

impl Ports {
    /// The usual setup (each side can reach the other) on ports `base+1..base+4`: the guest's
    /// hostfwd `base+1`, udrbd listening on `base+2`, the agent `base+3`.
    pub fn both_ways(base: u16) -> Ports {
        Ports {
            hp: base + 1,
            pp: base + 2,
            ap: base + 3,
            dead: base + 4,
            udrbd_listen: base + 2,
            udrbd_peer: base + 1,
        }
    }

    /// Checks that nothing uses the ports (so a clash fails clearly, not as a hang).
    pub fn check_free(&self) {
        for port in [self.hp, self.pp, self.ap, self.dead, self.udrbd_listen] {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                panic!("port 127.0.0.1:{port} is not free ({e}); {self:?}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// kdrbd-vm
// ------------------------------------------------------------------------------------------

/// The kdrbd-vm script: `$KDRBD_VM`, else `shared/tools/kdrbd-vm/kdrbd-vm` beside the
/// repository, else the workplace's `/work/shared/tools/kdrbd-vm/kdrbd-vm` (a clean clone
/// for CI may live elsewhere).
pub fn kdrbd_vm_tool() -> PathBuf {
    let tool = match std::env::var_os("KDRBD_VM") {
        Some(p) => PathBuf::from(p),
        None => {
            let beside = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/tools/kdrbd-vm/kdrbd-vm");
            if beside.is_file() {
                beside
            } else {
                PathBuf::from("/work/shared/tools/kdrbd-vm/kdrbd-vm")
            }
        }
    };
    assert!(
        tool.is_file(),
        "kdrbd-vm not found at {} (set KDRBD_VM to the script)",
        tool.display()
    );
    tool
}

/// The build cache kdrbd-vm uses.
pub fn kdrbd_vm_cache() -> PathBuf {
    std::env::var_os("KDRBD_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kdrbd-vm"))
}

/// Runs `kdrbd-vm build` once per test binary (it returns at once when the cache is complete;
/// a fresh build needs root and apt) and checks the cache it leaves.
pub fn ensure_vm_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let t0 = Instant::now();
        let o = Command::new(kdrbd_vm_tool())
            .arg("build")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running kdrbd-vm build: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "kdrbd-vm build failed ({}; needs root and apt the first time): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let cache = kdrbd_vm_cache();
        for f in ["vmlinuz", "initramfs.cpio.gz", "build.info"] {
            let p = cache.join(f);
            if std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) == 0 {
                return Err(format!("kdrbd-vm build left no {}", p.display()));
            }
        }
        let info = std::fs::read_to_string(cache.join("build.info")).unwrap_or_default();
        if !info.contains("drbd_module=8.4.") {
            return Err(format!("the guest's drbd module is not 8.4: {info}"));
        }
        eprintln!("kdrbd-vm build: {:.1?}", t0.elapsed());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The counters of the guest's `/proc/drbd` (KiB, except `oos`, also KiB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// `ns:` network send.
    pub ns: u64,
    /// `nr:` network receive.
    pub nr: u64,
    /// `dw:` disk write.
    pub dw: u64,
    /// `oos:` out of sync.
    pub oos: u64,
}

/// Parses the counters line of `/proc/drbd`.
pub fn parse_proc_counters(proc_drbd: &str) -> ProcCounters {
    let field = |name: &str| -> u64 {
        let key = format!("{name}:");
        proc_drbd
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/drbd: {proc_drbd}"))
    };
    ProcCounters {
        ns: field("ns"),
        nr: field("nr"),
        dw: field("dw"),
        oos: field("oos"),
    }
}

/// One kernel DRBD guest, killed (qemu SIGKILL) when dropped, also when the test panics.
pub struct KernelVm {
    tool: PathBuf,
    pub dir: PathBuf,
    pub name: String,
    pub ports: Ports,
    /// The guest's backing device: `/dev/ram0`, or `/dev/vda` with `--disk-file`.
    pub backing: &'static str,
    /// qemu's pid (from `NAME.pid`), so that dropping kills it even if the state directory
    /// is gone by then.
    pid: Option<i32>,
}

impl KernelVm {
    /// `kdrbd-vm start NAME --listen-port HP --peer-port PP --agent-port AP --size-mib 16`
    /// with the state directory `dir`; waits for the guest's DRBD setup (`KDRBD-READY`).
    pub fn start(dir: &Path, name: &str, ports: Ports) -> KernelVm {
        Self::start_with(dir, name, ports, &[])
    }

    /// As [`KernelVm::start`] with more options for `kdrbd-vm start` (e.g. `--no-wait`).
    pub fn start_with(dir: &Path, name: &str, ports: Ports, extra: &[&str]) -> KernelVm {
        let size = SIZE_MIB.to_string();
        let args: Vec<&str> = ["--size-mib", size.as_str()]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        Self::start_args(dir, name, ports, &args)
    }

    /// `kdrbd-vm start NAME --listen-port HP --peer-port PP --agent-port AP --protocol C ARGS`
    /// (ARGS name the size or the disk file); waits for `KDRBD-READY` unless `--no-wait`.
    pub fn start_args(dir: &Path, name: &str, ports: Ports, args: &[&str]) -> KernelVm {
        let mut vm = KernelVm {
            pid: None,
            tool: kdrbd_vm_tool(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            ports,
            backing: if args.contains(&"--disk-file") {
                "/dev/vda"
            } else {
                "/dev/ram0"
            },
        };
        let t0 = Instant::now();
        let hp = ports.hp.to_string();
        let pp = ports.pp.to_string();
        let ap = ports.ap.to_string();
        let o = vm.run(
            &[
                "start",
                name,
                "--listen-port",
                &hp,
                "--peer-port",
                &pp,
                "--agent-port",
                &ap,
                "--protocol",
                "C",
            ]
            .iter()
            .chain(args)
            .copied()
            .collect::<Vec<&str>>(),
        );
        vm.pid = std::fs::read_to_string(dir.join(format!("{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        assert!(
            o.status.success(),
            "kdrbd-vm start {name} failed ({}): {}{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            vm.log_tail()
        );
        eprintln!("guest {name} started in {:.1?}", t0.elapsed());
        vm
    }

    /// Runs `kdrbd-vm ARGS --dir DIR`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.tool)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.tool.display()))
    }

    /// Runs `sh -c CMD` in the guest; returns its exit status and output.
    pub fn try_exec(&self, cmd: &str) -> (Option<i32>, String) {
        let o = self.run(&["exec", &self.name, cmd, "--timeout", "120"]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// Runs `sh -c CMD` in the guest; returns its output, or panics with it.
    pub fn exec(&self, cmd: &str) -> String {
        let o = self.run(&["exec", &self.name, cmd, "--timeout", "120"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "guest {}: `{cmd}` failed ({}): {out}{}\n{}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        out
    }

    /// The guest's `/proc/drbd`.
    pub fn proc_drbd(&self) -> String {
        self.exec("cat /proc/drbd")
    }

    /// The counters of the guest's `/proc/drbd`.
    pub fn counters(&self) -> ProcCounters {
        parse_proc_counters(&self.proc_drbd())
    }

    /// Waits until the guest's `/proc/drbd` matches the extended regex `re`; returns it.
    pub fn wait(&self, re: &str, timeout: Duration, context: &dyn Fn() -> String) -> String {
        let o = self.run(&[
            "wait",
            &self.name,
            re,
            "--timeout",
            &timeout.as_secs().to_string(),
        ]);
        assert!(
            o.status.success(),
            "guest {}: /proc/drbd did not match `{re}` within {timeout:?}: {}{}\n{}\n{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail(),
            context()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The guest's serial log (init's output, kernel messages, lines written to the console),
    /// without carriage returns.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name)))
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// The last lines of the guest's serial log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!("--- guest {} serial log (tail) ---\n{tail}", self.name)
    }

    /// The guest's established TCP connections of its DRBD: `(accepted, outgoing)`, where
    /// accepted ones have the local port 7789 and outgoing ones the remote port PP.
    pub fn drbd_sockets(&self) -> (usize, usize, String) {
        let table = self.exec("cat /proc/net/tcp");
        let port = |addr: &str| {
            u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).unwrap_or(0)
        };
        let (mut accepted, mut outgoing) = (0, 0);
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "01" {
                continue; // not ESTABLISHED
            }
            if port(f[1]) == GUEST_DRBD_PORT {
                accepted += 1;
            } else if port(f[2]) == self.ports.pp {
                outgoing += 1;
            }
        }
        (accepted, outgoing, table)
    }

    /// md5 of the first `len` bytes of the guest's backing device, read with O_DIRECT.
    pub fn backing_md5(&self, len: u64) -> String {
        assert_eq!(len % 4096, 0);
        let bs = [1u64 << 20, 64 << 10, 4096]
            .into_iter()
            .find(|bs| len.is_multiple_of(*bs))
            .unwrap();
        let out = self.exec(&format!(
            "dd if={} bs={bs} count={} iflag=direct 2>/dev/null | md5sum",
            self.backing,
            len / bs
        ));
        out.split_whitespace().next().unwrap_or("").to_string()
    }

    /// `drbdsetup-84 disconnect` of the guest's connection (it goes StandAlone).
    pub fn disconnect(&self) {
        self.exec(&format!(
            "drbdsetup-84 disconnect ipv4:10.0.2.15:{GUEST_DRBD_PORT} ipv4:10.0.2.2:{}",
            self.ports.pp
        ));
    }

    /// `drbdsetup-84 connect r0` to the host's `127.0.0.1:PP` with protocol C and `opts`.
    pub fn connect(&self, opts: &str) {
        self.exec(&format!(
            "drbdsetup-84 connect r0 ipv4:10.0.2.15:{GUEST_DRBD_PORT} ipv4:10.0.2.2:{} \
             --protocol=C {opts}",
            self.ports.pp
        ));
    }

    /// A power cut: `kdrbd-vm kill` (qemu SIGKILL; returns once qemu is gone).
    pub fn kill(&mut self) {
        let o = self.run(&["kill", &self.name]);
        self.pid = None;
        assert!(
            o.status.success(),
            "kdrbd-vm kill {}: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Checks the guest's kernel log: the handshake's line is there, no protocol error. On a
    /// failure the message carries `peer_log` too (udrbd's side of what went wrong).
    ///
    /// One exception, before the first successful handshake only: every test starts udrbd
    /// while the guest boots, so both sides connect at once, and a socket the race left
    /// without its first packet (or one side's pair the other gave up) makes the kernel log
    /// `short read (expected size 8)` while it is still in WFConnection. The kernel retries,
    /// as it does against another kernel in the same race; that line is printed, not
    /// counted. Every line from the first handshake on is checked.
    pub fn assert_clean_dmesg(&self, peer_log: &dyn Fn() -> String) {
        let dmesg = self.exec("dmesg");
        let marker = "Handshake successful: Agreed network protocol version 101";
        let Some(from) = dmesg.find(marker) else {
            panic!(
                "no successful handshake in the guest's kernel log:\n{dmesg}\nudrbd's log:\n{}",
                peer_log()
            )
        };
        let before = &dmesg[..from];
        let mut problem = None;
        for line in before.lines() {
            if line.contains("short read (expected size 8)") {
                println!("tolerated during the connect race: {line}");
                continue;
            }
            if let Some(bad) = BAD_KERNEL_LOG.iter().find(|bad| line.contains(*bad)) {
                problem = Some(format!("the guest's kernel log shows `{bad}`:\n{dmesg}"));
                break;
            }
        }
        if let Some(problem) = problem.or_else(|| kernel_log_problem(&dmesg[from..])) {
            panic!("{problem}\nudrbd's log:\n{}", peer_log());
        }
    }
}

/// A kernel log (dmesg, or a guest's serial log) shows a successful handshake and no protocol
/// error.
pub fn assert_clean_kernel_log(log: &str) {
    if let Some(problem) = kernel_log_problem(log) {
        panic!("{problem}");
    }
}

fn kernel_log_problem(log: &str) -> Option<String> {
    if !log.contains("Handshake successful: Agreed network protocol version 101") {
        return Some(format!(
            "no successful handshake in the guest's kernel log:\n{log}"
        ));
    }
    BAD_KERNEL_LOG
        .iter()
        .find(|bad| log.contains(*bad))
        .map(|bad| format!("the guest's kernel log shows `{bad}`:\n{log}"))
}

impl Drop for KernelVm {
    fn drop(&mut self) {
        // A power cut is enough: the guest keeps nothing (a disk file stays in the temp dir).
        let killed = self.run(&["kill", &self.name]).status.success();
        // Without its state directory kdrbd-vm cannot find qemu: kill the recorded pid, if it
        // is still our qemu.
        if let Some(pid) = self.pid.filter(|_| !killed) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let serial = format!("{}.log", self.dir.join(&self.name).display());
            if String::from_utf8_lossy(&cmdline).contains(&serial) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The udrbd side
// ------------------------------------------------------------------------------------------

/// Fails the test unless python3-libnbd is installed.
pub fn require_libnbd() {
    let o = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .output()
        .expect("/usr/bin/python3");
    assert!(
        o.status.success(),
        "python3-libnbd missing: apt-get install python3-libnbd"
    );
}

/// How to set up a [`Udrbd`] node.
#[derive(Clone, Debug)]
pub struct UdrbdOptions {
    /// The backing file's size.
    pub size_mib: u64,
    /// Random bytes (udrbd's data will be the data) or zeroes (written, not sparse).
    pub random: bool,
    /// The `net { }` body.
    pub net: String,
    /// The `disk { }` body.
    pub disk: String,
}

impl Default for UdrbdOptions {
    fn default() -> Self {
        UdrbdOptions {
            size_mib: SIZE_MIB,
            random: true,
            // Timeouts are DRBD's (tenths of a second) but generous: the kernel runs under TCG.
            net: "protocol C; connect-int 10; ping-int 10; ping-timeout 20; timeout 60;".into(),
            disk: "c-plan-ahead 0; resync-rate 100M;".into(),
        }
    }
}

/// udrbd's node `alice` with a backing file and fresh internal meta-data, and the config of
/// `r0` with the kernel node as peer `kernel`.
pub struct Udrbd {
    pub dir: tempfile::TempDir,
    pub disk: PathBuf,
    pub config: PathBuf,
    pub ports: Ports,
    pub opts: UdrbdOptions,
}

impl Udrbd {
    /// A 16 MiB backing file full of random bytes (udrbd's data will be the data).
    pub fn prepare(ports: Ports) -> Udrbd {
        Self::prepare_with(ports, UdrbdOptions::default())
    }

    /// A 16 MiB backing file of zeroes: udrbd receives the kernel's data.
    pub fn prepare_zeroed(ports: Ports) -> Udrbd {
        Self::prepare_with(
            ports,
            UdrbdOptions {
                random: false,
                ..UdrbdOptions::default()
            },
        )
    }

    pub fn prepare_with(ports: Ports, opts: UdrbdOptions) -> Udrbd {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("alice.img");
        fill_file(&disk, opts.size_mib << 20, opts.random);
        create_md(&disk);
        let u = Udrbd {
            config: dir.path().join("r0.res"),
            dir,
            disk,
            ports,
            opts,
        };
        u.write_config();
        u
    }

    /// (Re)writes the config from `self.opts` (a running daemon reads it at its next start).
    pub fn write_config(&self) {
        let text = format!(
            "resource r0 {{\n  net {{ {} }}\n  disk {{ {} }}\n  on alice {{ device minor 0; disk {}; address 127.0.0.1:{}; meta-disk internal; }}\n  on kernel {{ device minor 0; disk /dev/null; address 127.0.0.1:{}; meta-disk internal; }}\n}}\n",
            self.opts.net,
            self.opts.disk,
            self.disk.display(),
            self.ports.udrbd_listen,
            self.ports.udrbd_peer,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts the daemon (which brings r0 up: attach, then listen and connect).
    pub fn start(&self) -> TestDaemon {
        TestDaemon::start_node(self.dir.path(), "alice", &self.config, "alice", &[])
    }

    /// The guest's state directory (inside the test's temp dir).
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.path().join("vm")
    }

    /// The first `len` bytes of the backing file (the data area).
    pub fn data_area(&self, len: u64) -> Vec<u8> {
        read_head(&self.disk, len)
    }
}

/// Waits until udrbd reports `cstate` and `dstate`.
pub fn wait_udrbd(d: &TestDaemon, cstate: &str, dstate: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = d.ok(&["cstate", "r0"]).trim().to_string();
        let ds = d.ok(&["dstate", "r0"]).trim().to_string();
        if c == cstate && ds == dstate {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "udrbd is {c} {ds}, not {cstate} {dstate}, after {timeout:?}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first `kib` KiB of the guest's backing device and of udrbd's backing file `image` (the
/// data areas) are equal.
pub fn assert_same_data_areas(vm: &KernelVm, image: &Path, kib: u64, d: &TestDaemon) {
    assert_eq!(
        vm.backing_md5(kib * 1024),
        md5_hex(&read_head(image, kib * 1024)),
        "the data areas differ\n{}",
        d.log_text()
    );
}

/// A test's two nodes, prepared from ports `base+1..base+4` (checked free): udrbd's node
/// from `opts` (not started), and the guest `name` with a [`SIZE_MIB`] device and
/// `guest_args` for `kdrbd-vm start` (started, waited for).
pub fn udrbd_and_guest(
    base: u16,
    opts: UdrbdOptions,
    name: &str,
    guest_args: &[&str],
) -> (Udrbd, KernelVm) {
    ensure_vm_built();
    let ports = Ports::both_ways(base);
    ports.check_free();
    let u = Udrbd::prepare_with(ports, opts);
    let vm = KernelVm::start_with(&u.vm_dir(), name, ports, guest_args);
    (u, vm)
}

/// udrbd `primary --force` once connected (its data becomes the data).
pub fn force_primary(d: &TestDaemon) {
    d.ok(&[
        "wait-connect",
        "r0",
        "--timeout",
        &WAIT.as_secs().to_string(),
    ]);
    d.ok(&["primary", "r0", "--force"]);
}

/// udrbd `primary --force` once connected, and the full sync of its data to the kernel.
pub fn primary_and_full_sync(d: &TestDaemon, vm: &KernelVm, t0: Instant) {
    force_primary(d);
    vm.wait(
        "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
        WAIT,
        &|| d.log_text(),
    );
    eprintln!("full sync to the kernel after {:.1?}", t0.elapsed());
}

/// An NBD client of udrbd's export for tests that check blocks by content: `write FIRST COUNT
/// TAG` writes block `FIRST + i` with the sha256 of `TAG:i` repeated (4 KiB), reports each
/// acknowledged write as `ok i` (one at a time, in order) and flushes at the end; `read FIRST
/// COUNT TAG` reads the blocks back and reports `mismatch i` for each that differs.
const NBD_TAGGED_BLOCKS: &str = r#"
import hashlib, sys, nbd
uri, mode, first, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
h = nbd.NBD()
h.connect_uri(uri)
for i in range(count):
    block = hashlib.sha256(f"{tag}:{i}".encode()).digest() * 128
    at = (first + i) * 4096
    if mode == "write":
        h.pwrite(block, at)
        print("ok", i, flush=True)
    elif h.pread(4096, at) != block:
        print("mismatch", i, flush=True)
if mode == "write":
    h.flush()
h.shutdown()
"#;

/// Runs [`NBD_TAGGED_BLOCKS`] against `d`'s export of r0 (`mode` is `write` or `read`); its
/// output. Panics if the client fails.
pub fn nbd_tagged_blocks(d: &TestDaemon, mode: &str, first: u64, count: u64, tag: &str) -> String {
    let o = Command::new("/usr/bin/python3")
        .args(["-c", NBD_TAGGED_BLOCKS, &d.uri("r0"), mode])
        .args([first.to_string(), count.to_string(), tag.to_string()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "NBD {mode} failed: {out}{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
    out
}

/// Writes `size` bytes to `path`: random ones, or zeroes (written, not sparse).
pub fn fill_file(path: &Path, size: u64, random: bool) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if random {
            urandom.read_exact(&mut chunk[..n]).unwrap();
        }
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// The first `len` bytes of a file.
pub fn read_head(path: &Path, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// `udrbd status r0 --json`: the resource's object.
pub fn status_json(d: &TestDaemon) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["status", "r0", "--json"])).unwrap();
    v[0].clone()
}

/// Polls `d`'s `status --json` every 100 ms until `done` holds; panics with the status and
/// the log after `limit`.
pub fn wait_status(
    d: &TestDaemon,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let s = status_json(d);
        if done(&s) {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "udrbd: no {what} after {limit:?}: {s}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// md5 (hex) of `bytes`, by the host's md5sum.
pub fn md5_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Whether some socket of this host listens on `127.0.0.1:port` (from `/proc/net/tcp`, so
/// the listener sees no probe connection).
pub fn host_listens_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == "0A"
    })
}

/// Waits until udrbd listens on `127.0.0.1:port`.
pub fn wait_for_listener(d: &TestDaemon, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !host_listens_on(port) {
        assert!(
            Instant::now() < deadline,
            "udrbd does not listen on 127.0.0.1:{port} after {timeout:?}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
