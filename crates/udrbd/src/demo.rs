//! `udrbd demo`: two daemons on loopback addresses with file-backed disks in a temp dir, the
//! initial sync with a progress bar, data written and checksummed through the Primary's NBD
//! export, the Primary killed, the peer promoted, the data verified there, and the old
//! Primary back and resynced. Every step prints the real command and `status`.
//!
//! Needs no root and no config. The daemons run in their own process group (a Ctrl-C in the
//! terminal reaches only the demo), and the demo kills them and removes its directory when it
//! ends, fails, or is interrupted.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::nbd_client::{NbdClient, NbdClientError};

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A `udrbd` command failed.
    #[error("`udrbd {command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr.
        output: String,
    },
    /// A state was not reached in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The NBD export misbehaved.
    #[error(transparent)]
    Nbd(#[from] NbdClientError),
    /// The data read back differs from what was written.
    #[error("data read back from {node} differs from what was written ({read} != {written})")]
    Mismatch {
        /// The node read from.
        node: String,
        /// Checksum read.
        read: String,
        /// Checksum written.
        written: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Demo options.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Backing file size, MiB.
    pub size_mib: u64,
    /// MiB written through NBD before the failover.
    pub write_mib: u64,
    /// Keep the directory (and print where it is) instead of removing it.
    pub keep: bool,
}

/// The processes and directory to clean up, shared with the Ctrl-C watcher.
#[derive(Default)]
struct Cleanup {
    children: Vec<Child>,
    dir: Option<PathBuf>,
    keep: bool,
}

impl Cleanup {
    fn run(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        if let Some(dir) = self.dir.take() {
            if self.keep {
                eprintln!("(kept {})", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

struct Demo<'a> {
    exe: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    cleanup: Arc<Mutex<Cleanup>>,
    /// Index into `cleanup.children` per node, while running.
    running: [Option<u32>; 2],
    out: &'a mut dyn Write,
}

const NODES: [&str; 2] = ["alice", "bob"];

/// Runs the demo, printing to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<(), DemoError> {
    let cleanup = Arc::new(Mutex::new(Cleanup {
        keep: opts.keep,
        ..Default::default()
    }));
    watch_ctrl_c(cleanup.clone());
    let result = run_inner(opts, out, cleanup.clone());
    if let Err(e) = &result {
        let dir = cleanup.lock().expect("lock").dir.clone();
        if let Some(dir) = dir {
            for n in NODES {
                let log = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let _ = writeln!(out, "\n--- last lines of {n}'s daemon log ---");
                for line in tail.iter().rev() {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        let _ = writeln!(out, "\ndemo failed: {e}");
    }
    cleanup.lock().expect("lock").run();
    result
}

/// A Ctrl-C ends the demo cleanly: daemons killed, directory removed, exit 130.
fn watch_ctrl_c(cleanup: Arc<Mutex<Cleanup>>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("\ninterrupted: stopping the daemons and removing the demo directory");
            cleanup.lock().expect("lock").run();
            std::process::exit(130);
        }
    });
}

fn free_port(ip: &str) -> Result<u16, DemoError> {
    let l = TcpListener::bind((ip, 0)).map_err(io(format!("binding a port on {ip}")))?;
    Ok(l.local_addr().map_err(io("local address"))?.port())
}

fn run_inner(
    opts: &DemoOptions,
    out: &mut dyn Write,
    cleanup: Arc<Mutex<Cleanup>>,
) -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(io("finding the udrbd binary"))?;
    let dir = std::env::temp_dir().join(format!("udrbd-demo.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    cleanup.lock().expect("lock").dir = Some(dir.clone());
    let addrs: [SocketAddr; 2] = [
        SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")?)),
        SocketAddr::from(([127, 0, 0, 2], free_port("127.0.0.2")?)),
    ];
    let mut demo = Demo {
        exe,
        config: dir.join("r0.res"),
        dir,
        cleanup,
        running: [None, None],
        out,
    };
    demo.say(&format!(
        "udrbd demo: two nodes on {} and {}, {} MiB file-backed disks in {}\n",
        addrs[0],
        addrs[1],
        opts.size_mib,
        demo.dir.display()
    ));

    demo.step("1. Meta-data: DRBD v08 internal meta-data on two fresh backing files");
    for n in NODES {
        let disk = demo.dir.join(format!("{n}.img"));
        let f = std::fs::File::create(&disk).map_err(io(format!("creating {}", disk.display())))?;
        f.set_len(opts.size_mib << 20)
            .map_err(io(format!("sizing {}", disk.display())))?;
        demo.udrbd_offline(&["create-md", "--force", &disk.display().to_string()])?;
    }
    let res = format!(
        "resource r0 {{\n  net {{ protocol C; connect-int 1; ping-int 1; ping-timeout 5; timeout 5; }}\n  disk {{ c-plan-ahead 0; resync-rate 40M; }}\n{}}}\n",
        NODES
            .iter()
            .zip(addrs)
            .map(|(n, a)| format!(
                "  on {n} {{ device minor 0; disk {}; address {a}; meta-disk internal; }}\n",
                demo.dir.join(format!("{n}.img")).display()
            ))
            .collect::<String>()
    );
    std::fs::write(&demo.config, &res).map_err(io("writing the config"))?;
    demo.say(&format!("$ cat {}\n{res}", demo.config.display()));

    demo.step("2. Two daemons: each attaches its disk and connects to the other");
    for i in 0..2 {
        demo.start_daemon(i)?;
    }
    demo.wait("both nodes Connected", Duration::from_secs(30), |d| {
        Ok((0..2).all(|i| d.cstate(i).is_ok_and(|c| c == "Connected")))
    })?;
    demo.status(0)?;

    demo.step("3. Initial full sync: alice becomes Primary with --force (both disks are new)");
    demo.cli(0, &["primary", "r0", "--force"])?;
    demo.progress(1, Duration::from_secs(600))?;
    demo.status(0)?;

    let write = opts.write_mib.min(opts.size_mib / 2);
    demo.step(&format!(
        "4. {write} MiB of random data written through alice's NBD export, then flushed"
    ));
    let socket = demo.dir.join("alice/r0.nbd");
    let mut client = NbdClient::connect(&socket, "r0")?;
    let mut hash = Fnv::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let chunk = 1usize << 20;
    for m in 0..write {
        let mut data = vec![0u8; chunk];
        for b in data.chunks_mut(8) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            b.copy_from_slice(&rng.to_le_bytes()[..b.len()]);
        }
        hash.update(&data);
        client.write(m << 20, &data)?;
    }
    client.flush()?;
    client.disconnect()?;
    let written = format!("{:016x}", hash.finish());
    demo.say(&format!(
        "wrote {write} MiB at offset 0 on nbd+unix:///r0?socket={}, checksum {written}\n",
        socket.display()
    ));
    demo.status(0)?;

    demo.step("5. alice (the Primary) dies: kill -9");
    demo.kill(0)?;
    demo.wait(
        "bob to notice that alice is gone",
        Duration::from_secs(30),
        |d| Ok(d.cstate(1)? != "Connected"),
    )?;
    demo.status(1)?;

    demo.step("6. bob is promoted and serves the same data");
    demo.cli(1, &["primary", "r0"])?;
    let socket = demo.dir.join("bob/r0.nbd");
    let mut client = NbdClient::connect(&socket, "r0")?;
    let mut hash = Fnv::new();
    for m in 0..write {
        hash.update(&client.read(m << 20, chunk as u32)?);
    }
    client.disconnect()?;
    let read = format!("{:016x}", hash.finish());
    if read != written {
        return Err(DemoError::Mismatch {
            node: "bob".into(),
            read,
            written,
        });
    }
    demo.say(&format!(
        "read {write} MiB back from bob: checksum {read} = what alice acknowledged\n"
    ));
    demo.status(1)?;

    demo.step("7. alice comes back: she resyncs from bob (the new Primary) and is a Secondary");
    demo.start_daemon(0)?;
    demo.wait("alice to reconnect", Duration::from_secs(30), |d| {
        Ok(d.cstate(0)
            .is_ok_and(|c| c != "WFConnection" && c != "StandAlone"))
    })?;
    demo.progress(0, Duration::from_secs(600))?;
    demo.status(1)?;
    demo.say("demo finished: every acknowledged byte survived the Primary's death.\n");
    Ok(())
}

impl Demo<'_> {
    fn say(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    fn step(&mut self, title: &str) {
        self.say(&format!("\n== {title}\n"));
    }

    fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.join(NODES[i])
    }

    fn udrbd_offline(&mut self, args: &[&str]) -> Result<String, DemoError> {
        self.say(&format!("$ udrbd {}\n", args.join(" ")));
        run_udrbd(&self.exe, args)
    }

    fn cli_quiet(&self, i: usize, args: &[&str]) -> Result<String, DemoError> {
        let run_dir = self.run_dir(i).display().to_string();
        let mut all = vec!["--run-dir", run_dir.as_str()];
        all.extend_from_slice(args);
        run_udrbd(&self.exe, &all)
    }

    fn cli(&mut self, i: usize, args: &[&str]) -> Result<String, DemoError> {
        self.say(&format!(
            "[{}]$ udrbd --run-dir {} {}\n",
            NODES[i],
            self.run_dir(i).display(),
            args.join(" ")
        ));
        let output = self.cli_quiet(i, args)?;
        self.say(&output);
        Ok(output)
    }

    fn status(&mut self, i: usize) -> Result<(), DemoError> {
        self.cli(i, &["status", "r0"]).map(|_| ())
    }

    fn cstate(&self, i: usize) -> Result<String, DemoError> {
        Ok(self.cli_quiet(i, &["cstate", "r0"])?.trim().to_string())
    }

    fn start_daemon(&mut self, i: usize) -> Result<(), DemoError> {
        let log = self.dir.join(format!("{}.log", NODES[i]));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io("opening the daemon log"))?;
        self.say(&format!(
            "[{}]$ udrbd daemon --config {} --node {} --run-dir {} &\n",
            NODES[i],
            self.config.display(),
            NODES[i],
            self.run_dir(i).display()
        ));
        let child = Command::new(&self.exe)
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .args(["--node", NODES[i]])
            .arg("--run-dir")
            .arg(self.run_dir(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io("starting a daemon"))?;
        let pid = child.id();
        self.cleanup.lock().expect("lock").children.push(child);
        self.running[i] = Some(pid);
        let socket = self.run_dir(i).join("udrbd.sock");
        let start = Instant::now();
        while !socket.exists() {
            let exited = {
                let mut c = self.cleanup.lock().expect("lock");
                let child = c.children.iter_mut().find(|ch| ch.id() == pid);
                child.is_some_and(|ch| ch.try_wait().ok().flatten().is_some())
            };
            if exited {
                return Err(DemoError::Command {
                    command: format!("daemon --node {}", NODES[i]),
                    output: "the daemon exited (see its log below)".into(),
                });
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(DemoError::Timeout(
                    Duration::from_secs(20),
                    format!("{}'s control socket", NODES[i]),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) -> Result<(), DemoError> {
        let pid = self.running[i].take().expect("running");
        self.say(&format!("$ kill -9 {pid}   # {}'s daemon\n", NODES[i]));
        let mut c = self.cleanup.lock().expect("lock");
        if let Some(pos) = c.children.iter().position(|ch| ch.id() == pid) {
            let mut child = c.children.remove(pos);
            let killed = child.kill();
            child.wait().map_err(io("waiting for the killed daemon"))?;
            killed.map_err(io("kill -9"))?;
        }
        // The NBD socket file stays behind after a kill; the restarted daemon replaces it.
        Ok(())
    }

    fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Demo) -> Result<bool, DemoError>,
    ) -> Result<(), DemoError> {
        let start = Instant::now();
        loop {
            if done(self).unwrap_or(false) {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(DemoError::Timeout(limit, what.to_string()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A progress bar until node `i` (the SyncTarget) is UpToDate and both are Connected.
    fn progress(&mut self, i: usize, limit: Duration) -> Result<(), DemoError> {
        let start = Instant::now();
        let mut last_len = 0usize;
        loop {
            let json = self.cli_quiet(1 - i, &["status", "r0", "--json"])?;
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let r = &v[0];
            let conn = &r["connections"][0];
            let pd = &conn["peer_devices"][0];
            let repl = pd["replication-state"].as_str().unwrap_or("?").to_string();
            let pct = pd["percent-in-sync"].as_f64().unwrap_or(0.0);
            let peer_disk = pd["peer-disk-state"].as_str().unwrap_or("?").to_string();
            let width = 40usize;
            let filled = ((pct / 100.0) * width as f64).round() as usize;
            let line = format!(
                "\r[{}{}] {pct:6.2}% in sync  {repl:<12} {}: {peer_disk:<12} {:5.1}s",
                "#".repeat(filled.min(width)),
                ".".repeat(width - filled.min(width)),
                NODES[i],
                start.elapsed().as_secs_f64()
            );
            let pad = last_len.saturating_sub(line.len());
            last_len = line.len();
            self.say(&format!("{line}{}", " ".repeat(pad)));
            if peer_disk == "UpToDate" && repl == "Established" {
                self.say("\n");
                return Ok(());
            }
            if start.elapsed() > limit {
                self.say("\n");
                return Err(DemoError::Timeout(
                    limit,
                    format!("{} to be UpToDate", NODES[i]),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn run_udrbd(exe: &Path, args: &[&str]) -> Result<String, DemoError> {
    let o = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io("running udrbd"))?;
    if !o.status.success() {
        return Err(DemoError::Command {
            command: args.join(" "),
            output: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// 64-bit FNV-1a over everything written (a checksum to compare, not a security hash).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

use std::os::unix::process::CommandExt as _;
