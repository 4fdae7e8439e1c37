// Tests drive real IO: a blocking Unix-socket server with threads, temporary files, and the
// NBD clients installed on the machine (libnbd-bin, qemu-utils, python3-libnbd). The pure
// crate's clippy.toml forbids that in the library, not here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

//! Real NBD clients against `ServerConnection`: nbdinfo, qemu-io, nbdcopy, qemu-img and
//! python3-libnbd talk to a test server with an in-memory 64 MiB export. A missing tool fails
//! the test with the name of the Debian package to install.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use udrbd_nbd::{
    Completion, Export, ExportAnswer, ExportFlags, ExportListing, HandleError, Input, Op, Output,
    Phase, Refusal, ServerConfig, ServerConnection,
};

const EXPORT_SIZE: u64 = 64 << 20;
const SECONDARY: &str = "resource r0 is Secondary: only a Primary serves its device";
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

// ---- The test server ----------------------------------------------------------------------------

type Disk = Arc<Mutex<Vec<u8>>>;

struct TestServer {
    dir: tempfile::TempDir,
    socket: PathBuf,
    disk: Disk,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("nbd.sock");
        let listener = UnixListener::bind(&socket).expect("bind the Unix socket");
        let disk: Disk = Arc::new(Mutex::new(vec![0u8; EXPORT_SIZE as usize]));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (disk2, errors2, stop2) = (disk.clone(), errors.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (disk, errors) = (disk2.clone(), errors2.clone());
                thread::spawn(move || {
                    if let Err(error) = serve(stream, &disk) {
                        errors.lock().unwrap().push(error);
                    }
                });
            }
        });
        TestServer {
            dir,
            socket,
            disk,
            errors,
            stop,
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Protocol errors any connection ran into (real clients must cause none).
    fn assert_no_errors(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "server connections failed: {errors:?}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket); // wake the accept loop
    }
}

/// The exports: "" and "r0" are the 64 MiB disk with every feature; "nocaps" is the same disk
/// advertising nothing but reads and writes; "secondary" is refused with a reason.
fn answer(name: &str) -> ExportAnswer {
    let export = |name: &str, flags| {
        ExportAnswer::Serve(Export {
            name: name.into(),
            description: Some("udrbd test export".into()),
            size: EXPORT_SIZE,
            flags,
        })
    };
    match name {
        "" | "r0" => export("r0", ExportFlags::block_device()),
        "nocaps" => export("nocaps", ExportFlags::default()),
        "secondary" => ExportAnswer::Refuse(Refusal::unknown(SECONDARY)),
        other => ExportAnswer::Refuse(Refusal::unknown(format!("no export named {other:?}"))),
    }
}

/// One connection: drain outputs (executing requests at once), then read what the machine
/// has room for. Returns a description of a protocol error, if any.
fn serve(mut stream: UnixStream, disk: &Disk) -> Result<(), String> {
    let mut conn = ServerConnection::new(ServerConfig::default());
    let mut buf = vec![0u8; 256 << 10];
    loop {
        while let Some(output) = conn.poll_output() {
            let input = match output {
                Output::Send(t) => {
                    let written = stream
                        .write_all(&t.head)
                        .and_then(|()| stream.write_all(&t.payload));
                    if written.is_err() {
                        return Ok(()); // the client went away
                    }
                    Input::Sent(t.len())
                }
                Output::ExportQuery { name, .. } => Input::ExportAnswer(answer(&name)),
                Output::ListExports => Input::ExportList(vec![
                    ExportListing {
                        name: "r0".into(),
                        description: Some("resource r0".into()),
                    },
                    ExportListing {
                        name: "nocaps".into(),
                        description: None,
                    },
                ]),
                Output::Transmission { .. } => continue,
                Output::Request(request) => Input::Completion {
                    id: request.id,
                    result: execute(disk, &request.op),
                },
                Output::Close(_) => return Ok(()),
            };
            check(conn.handle(input))?;
            conn.invariants();
        }
        if conn.phase() == Phase::Closed {
            return Ok(());
        }
        let window = conn.receive_window();
        assert!(
            window > 0,
            "every query and request is answered at once, so the machine never waits"
        );
        let n = match stream.read(&mut buf[..window.min(256 << 10)]) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        check(conn.handle(Input::Received(&buf[..n])))?;
        conn.invariants();
    }
}

fn check(result: Result<(), HandleError>) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(HandleError::Usage(e)) => panic!("the test server misused the machine: {e}"),
        Err(HandleError::Protocol(e)) => Err(e.to_string()),
    }
}

fn execute(disk: &Disk, op: &Op) -> Completion {
    let mut disk = disk.lock().unwrap();
    let range = |offset: u64, len: usize| offset as usize..offset as usize + len;
    match op {
        Op::Read { offset, len } => {
            Completion::Data(Bytes::copy_from_slice(&disk[range(*offset, *len as usize)]))
        }
        Op::Write { offset, data, .. } => {
            disk[range(*offset, data.len())].copy_from_slice(data);
            Completion::Done
        }
        Op::Flush => Completion::Done,
        Op::Trim { offset, len, .. } | Op::WriteZeroes { offset, len, .. } => {
            disk[range(*offset, *len as usize)].fill(0);
            Completion::Done
        }
    }
}

// ---- Running the tools ---------------------------------------------------------------------------

/// Fails (never skips) when a tool is missing, naming the Debian package.
fn require(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok(),
        "{tool} is not installed: install the Debian package {package} (apt-get install {package})"
    );
}

fn require_python_libnbd() {
    let status = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "/usr/bin/python3 cannot import nbd: install the Debian package python3-libnbd"
    );
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command with a deadline; output goes through files so that no pipe can block it.
fn run(dir: &Path, program: &str, args: &[&str]) -> Run {
    run_env(dir, program, args, &[])
}

fn run_env(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out_path = dir.join(format!("{program}.stdout").replace('/', "_"));
    let err_path = dir.join(format!("{program}.stderr").replace('/', "_"));
    let stdout = std::fs::File::create(&out_path).unwrap();
    let stderr = std::fs::File::create(&err_path).unwrap();
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {TOOL_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        success: status.success(),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    }
}

fn run_ok(dir: &Path, program: &str, args: &[&str]) -> String {
    let r = run(dir, program, args);
    assert!(
        r.success,
        "{program} {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    r.stdout
}

// ---- The tests ------------------------------------------------------------------------------------

#[test]
fn nbdinfo_sees_size_flags_and_block_sizes() {
    require("nbdinfo", "libnbd-bin");
    let server = TestServer::start();
    let json = run_ok(server.dir.path(), "nbdinfo", &["--json", &server.uri("")]);
    let info: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], EXPORT_SIZE, "{json}");
    for feature in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(export[feature], true, "{feature} in {json}");
    }
    for feature in ["is_read_only", "can_df", "can_fast_zero", "can_cache"] {
        assert_eq!(export[feature], false, "{feature} in {json}");
    }
    assert_eq!(export["block_size_minimum"], 512, "{json}");
    assert_eq!(export["block_size_preferred"], 4096, "{json}");
    assert_eq!(export["block_size_maximum"], 32 << 20, "{json}");
    assert_eq!(info["protocol"], "newstyle-fixed", "{json}");

    let named = run_ok(
        server.dir.path(),
        "nbdinfo",
        &["--json", &server.uri("nocaps")],
    );
    let named: serde_json::Value = serde_json::from_str(&named).unwrap();
    assert_eq!(named["exports"][0]["can_flush"], false);
    assert_eq!(named["exports"][0]["can_multi_conn"], false);

    let list = run_ok(server.dir.path(), "nbdinfo", &["--list", &server.uri("")]);
    assert!(list.contains("r0") && list.contains("nocaps"), "{list}");
    server.assert_no_errors();
}

#[test]
fn refused_export_fails_the_clients_with_the_reason() {
    require("nbdinfo", "libnbd-bin");
    require("qemu-img", "qemu-utils");
    let server = TestServer::start();
    let dir = server.dir.path();
    // libnbd 1.14 turns NBD_REP_ERR_UNKNOWN into its own ENOENT text and shows the server's
    // message only in its debug output.
    let r = run_env(
        dir,
        "nbdinfo",
        &[&server.uri("secondary")],
        &[("LIBNBD_DEBUG", "1")],
    );
    assert!(
        !r.success,
        "nbdinfo must fail on a refused export:\n{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("server replied with error to opt_go request"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("server error message: {SECONDARY}")),
        "the reason reaches libnbd: {}",
        r.stderr
    );
    // qemu prints it as is.
    let r = run(dir, "qemu-img", &["info", &server.uri("secondary")]);
    assert!(
        !r.success,
        "qemu-img must fail on a refused export:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains(&format!("server reported: {SECONDARY}")),
        "the reason is printed: {}",
        r.stderr
    );
    // NBD_OPT_INFO is refused the same way (nbdinfo --list asks INFO for every listed export).
    let r = run(dir, "nbdinfo", &["--size", &server.uri("nope")]);
    assert!(!r.success);
    server.assert_no_errors();
}

#[test]
fn qemu_io_writes_and_reads_back_on_default_and_named_exports() {
    require("qemu-io", "qemu-utils");
    let server = TestServer::start();
    for (export, pattern, offset) in [("", "0xab", "0"), ("r0", "0xcd", "4M")] {
        let uri = server.uri(export);
        let write = format!("write -P {pattern} {offset} 1M");
        let read = format!("read -P {pattern} {offset} 1M");
        let out = run_ok(
            server.dir.path(),
            "qemu-io",
            &["-f", "raw", &uri, "-c", &write, "-c", &read, "-c", "flush"],
        );
        assert!(out.contains("wrote 1048576/1048576 bytes"), "{out}");
        assert!(out.contains("read 1048576/1048576 bytes"), "{out}");
        assert!(!out.contains("fail"), "{out}");
    }
    let disk = server.disk.lock().unwrap();
    assert!(disk[..1 << 20].iter().all(|&b| b == 0xab));
    assert!(disk[4 << 20..5 << 20].iter().all(|&b| b == 0xcd));
    drop(disk);
    // Write zeroes and discard through qemu too.
    let uri = server.uri("r0");
    let out = run_ok(
        server.dir.path(),
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -z 0 64k",
            "-c",
            "discard 64k 64k",
            "-c",
            "read -P 0 0 64k",
        ],
    );
    assert!(!out.contains("fail"), "{out}");
    server.assert_no_errors();
}

#[test]
fn nbdcopy_and_qemu_img_round_trip() {
    require("nbdcopy", "libnbd-bin");
    require("qemu-img", "qemu-utils");
    let server = TestServer::start();
    // A 64 MiB source with data at the start and in the middle, holes elsewhere.
    let source = server.path("source.img");
    let mut image = vec![0u8; EXPORT_SIZE as usize];
    for (i, byte) in image[..(8 << 20)].iter_mut().enumerate() {
        *byte = (i / 4096 + i) as u8;
    }
    image[(40 << 20)..(41 << 20)].fill(0x77);
    std::fs::write(&source, &image).unwrap();
    let dir = server.dir.path();
    let uri = server.uri("");
    run_ok(dir, "nbdcopy", &[source.to_str().unwrap(), &uri]);
    let compare = run_ok(
        dir,
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            source.to_str().unwrap(),
            &uri,
        ],
    );
    assert!(compare.contains("Images are identical"), "{compare}");
    let copy = server.path("copy.img");
    std::fs::File::create(&copy)
        .unwrap()
        .set_len(EXPORT_SIZE)
        .unwrap();
    run_ok(dir, "nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert!(
        std::fs::read(&copy).unwrap() == image,
        "the copy back equals the source"
    );
    server.assert_no_errors();
}

const LIBNBD_SCRIPT: &str = r#"
import errno, sys
import nbd

uri, structured = sys.argv[1], sys.argv[2] == "1"

def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)  # let bad requests reach the server
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    assert h.get_structured_replies_negotiated() == structured
    return h

def expect_error(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != want:
            sys.exit(f"{what}: errno {e.errnum} ({e.string}), expected {want}")
        print(f"{what}: {e.string}")
    else:
        sys.exit(f"{what}: succeeded")

h = connect(uri)
size = h.get_size()
expect_error(lambda: h.pread(512, size), errno.EINVAL, "read past the end")
h.pwrite(b"\x5a" * 4096, 8192)
assert h.pread(4096, 8192) == b"\x5a" * 4096, "request after an error"
expect_error(lambda: h.pread(512, 1), errno.EINVAL, "unaligned read")
assert h.pread(512, 8192) == b"\x5a" * 512, "request after an error"
expect_error(lambda: h.pwrite(b"x" * 512, size), errno.ENOSPC, "write past the end")
expect_error(lambda: h.pwrite(b"y" * 100, 0), errno.EINVAL, "unaligned write")
expect_error(lambda: h.pwrite(b"z" * (32 * 1024 * 1024 + 4096), 0), errno.EINVAL, "oversized write")
assert h.pread(4096, 8192) == b"\x5a" * 4096, "request after a skipped write payload"
expect_error(lambda: h.zero(4096, size - 2048), errno.ENOSPC, "write zeroes past the end")
h.flush()
h.trim(4096, 8192)
h.zero(4096, 8192)
assert h.pread(4096, 8192) == bytes(4096)
h.shutdown()

# An export that advertises neither flush nor trim: both get EINVAL, reads still work.
h = connect(uri.replace("nbd+unix:///", "nbd+unix:///nocaps"))
expect_error(lambda: h.flush(), errno.EINVAL, "flush not advertised")
expect_error(lambda: h.trim(4096, 0), errno.EINVAL, "trim not advertised")
expect_error(lambda: h.pwrite(b"f" * 512, 0, nbd.CMD_FLAG_FUA), errno.EINVAL, "FUA not advertised")
assert len(h.pread(4096, 0)) == 4096
h.shutdown()
print("ok")
"#;

#[test]
fn libnbd_bad_requests_get_errors_and_the_connection_stays_usable() {
    require_python_libnbd();
    let server = TestServer::start();
    let script = server.path("bad_requests.py");
    std::fs::write(&script, LIBNBD_SCRIPT).unwrap();
    for structured in ["1", "0"] {
        let args = [script.to_str().unwrap(), &server.uri(""), structured];
        let r = run_env(
            server.dir.path(),
            "/usr/bin/python3",
            &args,
            &[("LIBNBD_DEBUG", "1")],
        );
        assert!(
            r.success,
            "structured={structured}\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        );
        assert!(r.stdout.trim_end().ends_with("ok"), "{}", r.stdout);
        assert!(
            r.stdout
                .contains("read past the end: nbd_pread: read: command failed: Invalid argument"),
            "{}",
            r.stdout
        );
        // A structured error chunk carries the server's message; libnbd 1.14 logs it in its debug
        // output.
        let message_seen = r.stderr.contains("request past the end of the export");
        assert_eq!(message_seen, structured == "1", "{}", r.stderr);
    }
    server.assert_no_errors();
}
