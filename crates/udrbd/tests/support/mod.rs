//! Shared harness for tests that run real `udrbd daemon` processes: a temp dir per test, a
//! config, the daemon as a child process that is killed (and waited for) when dropped, and the
//! CLI pointed at its run directory. Tools a test needs are required loudly, never skipped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
/// that never runs. `extra` is pasted into the resource section.
pub fn write_config(dir: &Path, name: &str, disk: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.res"));
    let text = format!(
        "resource {name} {{\n{extra}\n  on alice {{ device /dev/drbd0; disk {}; address 127.0.0.1:7789; meta-disk internal; }}\n  on bob {{ device /dev/drbd0; disk /dev/null; address 127.0.0.2:7789; meta-disk internal; }}\n}}\n",
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
}

impl TestDaemon {
    /// Starts `udrbd daemon --config CONFIG --node alice --run-dir DIR/run` and waits for its
    /// control socket.
    pub fn start(dir: &Path, config: &Path, extra: &[&str]) -> TestDaemon {
        Self::start_in(dir, "run", config, extra)
    }

    /// As [`TestDaemon::start`] with a named run directory.
    pub fn start_in(dir: &Path, run: &str, config: &Path, extra: &[&str]) -> TestDaemon {
        let run_dir = dir.join(run);
        let log = dir.join(format!("{run}.log"));
        let child = Command::new(udrbd_bin())
            .args(["daemon", "--node", "alice", "--config"])
            .arg(config)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("spawn udrbd daemon");
        let mut d = TestDaemon {
            child: Some(child),
            run_dir,
            log,
        };
        d.wait_for_socket();
        d
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
