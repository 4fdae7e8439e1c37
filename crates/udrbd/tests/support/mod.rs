//! Shared harness for tests that run real `udrbd daemon` processes: a temp dir per test, a
//! config, the daemon as a child process that is killed (and waited for) when dropped, and the
//! CLI pointed at its run directory. Tools a test needs are required loudly, never skipped.
#![allow(dead_code)]

pub mod nft;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The udrbd binary under test.
pub fn udrbd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_udrbd")
}

/// Fails the test unless `tool` is on PATH (or in /usr/sbin, /sbin).
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(tool).exists());
    assert!(found, "{tool} not found: apt-get install {package}");
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (loop devices, mounts)"
    );
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Runs `udrbd create-md --force` on `disk`.
pub fn create_md(disk: &Path) {
    let o = Command::new(udrbd_bin())
        .args(["create-md", "--force"])
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "create-md: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes a two-node config for resource `name`: node `alice` with `disk`, and a peer `bob`
/// that never runs (alice keeps trying: `connection:Connecting`). Each call gets addresses of
/// its own ([`pair_addresses`]), so concurrent tests never share a listen address. `extra` is
/// pasted into the resource section.
pub fn write_config(dir: &Path, name: &str, disk: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.res"));
    let (alice, bob) = pair_addresses();
    let text = format!(
        "resource {name} {{\n{extra}\n  on alice {{ device /dev/drbd0; disk {}; address {alice}; meta-disk internal; }}\n  on bob {{ device /dev/drbd0; disk /dev/null; address {bob}; meta-disk internal; }}\n}}\n",
        disk.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running daemon.
pub struct TestDaemon {
    child: Option<Child>,
    /// Its run directory.
    pub run_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The command line's arguments after `daemon`, for [`TestDaemon::restart`].
    args: Vec<std::ffi::OsString>,
}

impl TestDaemon {
    /// Starts `udrbd daemon --config CONFIG --node alice --run-dir DIR/run` and waits for its
    /// control socket.
    pub fn start(dir: &Path, config: &Path, extra: &[&str]) -> TestDaemon {
        Self::start_in(dir, "run", config, extra)
    }

    /// The daemon's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The daemon's resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("a running daemon");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// As [`TestDaemon::start`] with a named run directory.
    pub fn start_in(dir: &Path, run: &str, config: &Path, extra: &[&str]) -> TestDaemon {
        Self::start_node(dir, run, config, "alice", extra)
    }

    /// `udrbd daemon --node NODE --config CONFIG --run-dir DIR/RUN EXTRA`, logging to
    /// `DIR/RUN.log`; waits for its control socket.
    pub fn start_node(
        dir: &Path,
        run: &str,
        config: &Path,
        node: &str,
        extra: &[&str],
    ) -> TestDaemon {
        let run_dir = dir.join(run);
        let log = dir.join(format!("{run}.log"));
        let mut args: Vec<std::ffi::OsString> =
            vec!["--node".into(), node.into(), "--config".into()];
        args.push(config.into());
        args.push("--run-dir".into());
        args.push(run_dir.clone().into());
        args.extend(extra.iter().map(Into::into));
        let mut d = TestDaemon {
            child: None,
            run_dir,
            log,
            args,
        };
        d.spawn();
        d
    }

    /// Starts the process (appending to the log) and waits for its control socket.
    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(udrbd_bin())
            .arg("daemon")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn udrbd daemon");
        self.child = Some(child);
        self.wait_for_socket();
    }

    /// Starts the daemon again with the same command line (after [`TestDaemon::kill9`] or
    /// [`TestDaemon::terminate`]; a running one is killed first).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let sock = self.run_dir.join("udrbd.sock");
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                // Let the initial `up` finish.
                let o = self.cli(&["status"]);
                if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("Attaching") {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not come up: {}", self.log_text());
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `udrbd --run-dir RUN ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(udrbd_bin())
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "udrbd {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log_text()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// The NBD URI of resource `name`.
    pub fn uri(&self, name: &str) -> String {
        format!(
            "nbd+unix:///{name}?socket={}",
            self.run_dir.join(format!("{name}.nbd")).display()
        )
    }

    /// The NBD socket path of resource `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.nbd"))
    }

    /// SIGKILL, like a crash of the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&c);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "daemon did not exit within {timeout:?} of SIGTERM: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ------------------------------------------------------------------------------------------
// Two nodes
// ------------------------------------------------------------------------------------------

/// The options of a two-node pair. Every field is pasted into the resource as is.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// Size of each backing file.
    pub size: u64,
    /// The `net { }` body. The default keeps reconnects fast: connect-int 1 s, ping-int 1 s,
    /// ping-timeout 0.5 s, timeout 0.5 s.
    pub net: String,
    /// The `disk { }` body. The default resyncs at a fixed 100 MiB/s.
    pub disk: String,
    /// The `handlers { }` body.
    pub handlers: String,
    /// Extra arguments of both daemons (e.g. `--no-up`).
    pub daemon_args: Vec<String>,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            size: 64 << 20,
            net: "protocol C; connect-int 1; ping-int 1; ping-timeout 5; timeout 5;".into(),
            disk: "c-plan-ahead 0; resync-rate 100M;".into(),
            handlers: String::new(),
            daemon_args: Vec::new(),
        }
    }
}

/// Two 127.0.0.x addresses of their own and a free port on each, for one pair. The last octet
/// comes from the process id and a counter, so concurrent tests (and test binaries) rarely
/// share an address; the port is one the kernel just handed out on that address.
pub fn pair_addresses() -> (std::net::SocketAddr, std::net::SocketAddr) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = (std::process::id().wrapping_mul(7) + n * 2) % 120;
    let addr = |octet: u32| {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, (10 + octet) as u8);
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::net::SocketAddr::from((ip, port))
    };
    (addr(base * 2), addr(base * 2 + 1))
}

/// One node of a [`Pair`].
pub struct Node {
    /// The node's name: alice or bob.
    pub name: &'static str,
    /// Its backing file (internal meta-data at the end).
    pub disk: PathBuf,
    /// Its replication address.
    pub address: std::net::SocketAddr,
    /// The daemon.
    pub daemon: TestDaemon,
}

/// Two daemons, alice and bob, replicating resource `r0`; killed (and waited for) on drop,
/// also when the test panics.
pub struct Pair {
    pub alice: Node,
    pub bob: Node,
    /// The configuration both daemons read.
    pub config: PathBuf,
    /// The test's directory (configuration, backing files, run directories, logs). Declared
    /// last: fields drop in order, so the daemons are gone before their directory is.
    pub dir: tempfile::TempDir,
}

/// The resource name of a [`Pair`].
pub const PAIR_RESOURCE: &str = "r0";

/// Writes the two-node configuration of `r0`: alice and bob with their disks and addresses.
pub fn write_pair_config(
    dir: &Path,
    opts: &PairOptions,
    alice: (&Path, std::net::SocketAddr),
    bob: (&Path, std::net::SocketAddr),
) -> PathBuf {
    let path = dir.join("r0.res");
    let text = format!(
        "resource r0 {{\n  net {{ {} }}\n  disk {{ {} }}\n  handlers {{ {} }}\n  on alice {{ device minor 0; disk {}; address {}; meta-disk internal; }}\n  on bob {{ device minor 0; disk {}; address {}; meta-disk internal; }}\n}}\n",
        opts.net,
        opts.disk,
        opts.handlers,
        alice.0.display(),
        alice.1,
        bob.0.display(),
        bob.1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Pair {
    /// Creates both backing files with fresh meta-data, writes the configuration, and starts
    /// both daemons (which bring r0 up: attach and connect, unless `--no-up`).
    pub fn start(opts: PairOptions) -> Pair {
        Pair::start_in(tempfile::tempdir().unwrap(), opts, None)
    }

    /// As [`Pair::start`], in `dir`, with alice's backing device `alice_disk` (which already
    /// carries meta-data, e.g. a faulty disk served through nbdfuse) instead of a new file.
    pub fn start_in(
        dir: tempfile::TempDir,
        opts: PairOptions,
        alice_disk: Option<PathBuf>,
    ) -> Pair {
        let (alice_addr, bob_addr) = pair_addresses();
        let given = alice_disk.is_some();
        let alice_disk = alice_disk.unwrap_or_else(|| dir.path().join("alice.img"));
        let bob_disk = dir.path().join("bob.img");
        for disk in [&alice_disk, &bob_disk] {
            if given && disk == &alice_disk {
                continue;
            }
            sparse_file(disk, opts.size);
            create_md(disk);
        }
        let config = write_pair_config(
            dir.path(),
            &opts,
            (&alice_disk, alice_addr),
            (&bob_disk, bob_addr),
        );
        let args: Vec<&str> = opts.daemon_args.iter().map(String::as_str).collect();
        let start = |name: &'static str, disk: PathBuf, address| Node {
            name,
            disk,
            address,
            daemon: TestDaemon::start_node(dir.path(), name, &config, name, &args),
        };
        let alice = start("alice", alice_disk, alice_addr);
        let bob = start("bob", bob_disk, bob_addr);
        Pair {
            dir,
            config,
            alice,
            bob,
        }
    }

    /// Both nodes, alice first.
    pub fn nodes(&self) -> [&Node; 2] {
        [&self.alice, &self.bob]
    }

    /// Both daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- alice log ---\n{}\n--- bob log ---\n{}",
            self.alice.daemon.log_text(),
            self.bob.daemon.log_text()
        )
    }

    /// Both nodes reach Connected (or a sync state) within `timeout_secs` (`wait-connect`);
    /// a node that went StandAlone fails at once.
    pub fn wait_connected(&self, timeout_secs: u32) {
        for n in self.nodes() {
            assert_ne!(
                n.cstate(),
                "StandAlone",
                "{}: not connecting\n{}",
                n.name,
                self.logs()
            );
        }
        let timeout = timeout_secs.to_string();
        for n in self.nodes() {
            let o = n.cli(&["wait-connect", PAIR_RESOURCE, "--timeout", &timeout]);
            assert!(
                o.status.success(),
                "{}: wait-connect: {}\n{}",
                n.name,
                String::from_utf8_lossy(&o.stderr),
                self.logs()
            );
        }
    }

    /// Both nodes UpToDate/UpToDate and Established within `timeout`.
    pub fn wait_up_to_date(&self, timeout: Duration) {
        self.wait_for_both("UpToDate/UpToDate, Established", timeout, |_, s| {
            json_up_to_date(s)
        });
    }

    /// Waits until `predicate` holds for both nodes' `status --json` (each node's first
    /// resource object), polling; panics with both logs after `timeout`.
    pub fn wait_for_both(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Node, &serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<serde_json::Value> =
                self.nodes().iter().map(|n| n.status_json()).collect();
            if self
                .nodes()
                .iter()
                .zip(&statuses)
                .all(|(n, s)| predicate(n, s))
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}: alice {} / bob {}\n{}",
                    statuses[0],
                    statuses[1],
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Node {
    /// Runs `udrbd --run-dir RUN ARGS` against this node's daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.daemon.cli(args)
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.daemon.ok(args)
    }

    /// `udrbd cstate r0` (DRBD 8.4's connection state, e.g. `Connected`).
    pub fn cstate(&self) -> String {
        self.ok(&["cstate", PAIR_RESOURCE]).trim().to_string()
    }

    /// `udrbd dstate r0` (local/peer, e.g. `UpToDate/UpToDate`).
    pub fn dstate(&self) -> String {
        self.ok(&["dstate", PAIR_RESOURCE]).trim().to_string()
    }

    /// `udrbd role r0` (local/peer, e.g. `Primary/Secondary`).
    pub fn role(&self) -> String {
        self.ok(&["role", PAIR_RESOURCE]).trim().to_string()
    }

    /// `udrbd status r0 --json`: the resource's object.
    pub fn status_json(&self) -> serde_json::Value {
        let o = self.cli(&["status", PAIR_RESOURCE, "--json"]);
        if !o.status.success() {
            return serde_json::Value::Null;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("status --json: {e}: {}", String::from_utf8_lossy(&o.stdout))
        });
        v[0].clone()
    }

    /// Waits until `predicate` holds for this node's `status --json`; panics with the log after
    /// `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status_json();
            if predicate(&s) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}: {s}\n{}",
                    self.name,
                    self.daemon.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first `len` bytes of the backing file: the data area (internal meta-data sits at
    /// the end of the file, so any `len` up to the device size reads only data).
    pub fn data_area(&self, len: u64) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0u8; len as usize];
        std::fs::File::open(&self.disk)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }

    /// A checksum (FNV-1a, 64 bit) of [`Node::data_area`].
    pub fn data_checksum(&self, len: u64) -> u64 {
        fnv1a(&self.data_area(len))
    }

    /// SIGKILL, like a crash of the node's daemon.
    pub fn kill_9(&mut self) {
        self.daemon.kill9();
    }

    /// Starts the daemon again with the same command line.
    pub fn restart(&mut self) {
        self.daemon.restart();
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `connection-state` of a resource object of `status --json` (its first connection).
/// UpToDate/UpToDate and Established in a `status --json` resource object.
pub fn json_up_to_date(status: &serde_json::Value) -> bool {
    json_disk_state(status) == "UpToDate"
        && json_peer_disk_state(status) == "UpToDate"
        && json_replication_state(status) == "Established"
}

pub fn json_connection_state(status: &serde_json::Value) -> &str {
    status["connections"][0]["connection-state"]
        .as_str()
        .unwrap_or("")
}

/// The local `disk-state` of a resource object of `status --json`.
pub fn json_disk_state(status: &serde_json::Value) -> &str {
    status["devices"][0]["disk-state"].as_str().unwrap_or("")
}

/// The `peer-disk-state` of a resource object of `status --json`.
pub fn json_peer_disk_state(status: &serde_json::Value) -> &str {
    status["connections"][0]["peer_devices"][0]["peer-disk-state"]
        .as_str()
        .unwrap_or("")
}

/// The `replication-state` of a resource object of `status --json`.
pub fn json_replication_state(status: &serde_json::Value) -> &str {
    status["connections"][0]["peer_devices"][0]["replication-state"]
        .as_str()
        .unwrap_or("")
}

/// How long an [`EventsStream`] waits for a line.
pub const EVENTS_WAIT: Duration = Duration::from_secs(30);

/// A `udrbd events r0` child whose stdout lines are collected; killed on drop.
pub struct EventsStream {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl EventsStream {
    pub fn start(node: &Node) -> EventsStream {
        let mut child = Command::new(udrbd_bin())
            .arg("--run-dir")
            .arg(&node.daemon.run_dir)
            .args(["events", PAIR_RESOURCE])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => return,
                }
            }
        });
        let stream = EventsStream {
            child,
            lines,
            reader: Some(reader),
        };
        // The daemon subscribes the stream before it prints the initial dump: once the dump
        // is complete, no later change is missed.
        let deadline = Instant::now() + EVENTS_WAIT;
        while !stream.lines().iter().any(|l| l == "exists -") {
            assert!(
                Instant::now() < deadline,
                "events: no initial dump: {:?}",
                stream.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stream
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line, after the initial dump (`exists -`), for which `predicate` holds.
    pub fn wait_for_change(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + EVENTS_WAIT;
        loop {
            let lines = self.lines();
            if let Some(dump_end) = lines.iter().position(|l| l == "exists -")
                && let Some(l) = lines[dump_end + 1..].iter().find(|l| predicate(l))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no events line for {what}: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EventsStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The bitmap words of a `dump-md` text (`0x...;` and `N times 0x...;` inside `bm { }`).
pub fn bitmap_words(dump: &str) -> Vec<u64> {
    let start = dump.find("\nbm {").expect("bm section") + 5;
    let end = start + dump[start..].find("\n}").expect("end of bm");
    let mut words = Vec::new();
    for line in dump[start..end].lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        for tok in line.split(';').map(str::trim).filter(|t| !t.is_empty()) {
            let (count, value) = match tok.split_once(" times ") {
                Some((n, v)) => (n.trim().parse::<usize>().unwrap(), v.trim()),
                None => (1, tok),
            };
            let value = u64::from_str_radix(value.trim_start_matches("0x"), 16)
                .unwrap_or_else(|e| panic!("bad bitmap word {tok:?}: {e}"));
            words.extend(std::iter::repeat_n(value, count));
        }
    }
    words
}
