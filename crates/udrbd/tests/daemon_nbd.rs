//! The NBD export of a Primary against real clients: fio with verification, nbdinfo's view of
//! the export, every bad-request case of the request table (libnbd with its checks off, and a
//! tiny raw client for what libnbd cannot send), malformed handshakes, several connections at
//! once, TRIM/WRITE_ZEROES, and the optional TCP listener.

mod support;

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The python side: libnbd checks and a raw fixed-newstyle client (`case_NAME ARGS...` prints
/// a JSON object on success, fails with an assertion message otherwise).
const NBDTEST_PY: &str = r###""""Helpers for udrbd's NBD tests: a tiny raw fixed-newstyle client and libnbd checks."""
import errno, json, os, socket, struct, sys, threading

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY = 0x67446698
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WZ = 0, 1, 2, 3, 4, 6


def connect_sock(target):
    if target.startswith("tcp:"):
        host, port = target[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(target)
    s.settimeout(30)
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


class Raw:
    """A raw NBD client: greeting, NBD_OPT_GO, then hand-built requests (simple replies)."""

    def __init__(self, target, name="r0"):
        self.s = connect_sock(target)
        greeting = recv_exact(self.s, 18)
        assert greeting[:8] == NBDMAGIC, greeting
        assert struct.unpack(">Q", greeting[8:16])[0] == IHAVEOPT, greeting
        hflags = struct.unpack(">H", greeting[16:])[0]
        assert hflags & 1, "server is not fixed newstyle: %#x" % hflags
        self.s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        self.size = None
        self.cookie = 0
        if name is not None:
            rtype, payload = self.go(name)
            assert rtype == REP_ACK, "OPT_GO refused: %#x %r" % (rtype, payload)

    def go(self, name):
        """NBD_OPT_GO; returns (REP_ACK, b"") or the error reply (type, payload)."""
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(">H", 0)
        self.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            magic, opt, rtype, rlen = struct.unpack(">QIII", recv_exact(self.s, 20))
            assert magic == REPLY_MAGIC and opt == OPT_GO, (hex(magic), opt)
            payload = recv_exact(self.s, rlen)
            if rtype == REP_ACK:
                assert self.size is not None, "no NBD_INFO_EXPORT"
                return rtype, b""
            if rtype == REP_INFO:
                if struct.unpack(">H", payload[:2])[0] == 0:  # NBD_INFO_EXPORT
                    self.size, self.tflags = struct.unpack(">QH", payload[2:12])
                continue
            assert rtype & 0x80000000, "unexpected reply %#x" % rtype
            return rtype, payload

    def send(self, cmd, offset, length, flags=0, payload=b""):
        self.cookie += 1
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, self.cookie, offset, length))
        # Large payloads in chunks: the server may reply (error) only after skipping them.
        for i in range(0, len(payload), 1 << 20):
            self.s.sendall(payload[i:i + (1 << 20)])
        return self.cookie

    def reply(self, cookie, read_len=0):
        magic, err, c = struct.unpack(">IIQ", recv_exact(self.s, 16))
        assert magic == SIMPLE_REPLY, hex(magic)
        assert c == cookie, "reply to cookie %d, expected %d" % (c, cookie)
        data = recv_exact(self.s, read_len) if err == 0 and read_len else b""
        return err, data

    def call(self, cmd, offset, length, flags=0, payload=b"", read_len=0):
        return self.reply(self.send(cmd, offset, length, flags, payload), read_len)

    def read(self, offset, length):
        err, data = self.call(CMD_READ, offset, length, read_len=length)
        assert err == 0, "read %d+%d: errno %d" % (offset, length, err)
        return data

    def write(self, offset, data):
        err, _ = self.call(CMD_WRITE, offset, len(data), payload=data)
        assert err == 0, "write %d+%d: errno %d" % (offset, len(data), err)

    def close(self):
        try:
            self.send(CMD_DISC, 0, 0)
        finally:
            self.s.close()


def connect_nbd(uri):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def expect_nbd_error(what, want, fn):
    import nbd
    try:
        fn()
    except nbd.Error as e:
        got = e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno, e.errno)
        assert got == errno.errorcode[want], "%s: %s (%s), expected %s" % (what, got, e.string, errno.errorcode[want])
        return
    raise AssertionError("%s: succeeded, expected %s" % (what, errno.errorcode[want]))


def expect_raw_error(c, what, want, cmd, offset, length, flags=0, payload=b""):
    err, _ = c.call(cmd, offset, length, flags, payload)
    assert err == want, "%s: errno %d, expected %d (%s)" % (what, err, want, errno.errorcode[want])


def case_bad_requests_libnbd(uri):
    import nbd
    h = connect_nbd(uri)
    h.set_strict_mode(0)  # let libnbd send what it would refuse
    size = h.get_size()
    pat = bytes([0x5A]) * 4096
    h.pwrite(pat, 0)
    tail = bytes([0xC3]) * 512
    h.pwrite(tail, size - 512)
    # Each bad request fails with its errno and the connection still serves the next request.
    cases = [
        ("read past the end", errno.EINVAL, lambda: h.pread(512, size)),
        ("read across the end", errno.EINVAL, lambda: h.pread(1024, size - 512)),
        ("write past the end", errno.ENOSPC, lambda: h.pwrite(b"x" * 512, size)),
        ("write across the end", errno.ENOSPC, lambda: h.pwrite(b"x" * 1024, size - 512)),
        ("zero past the end", errno.ENOSPC, lambda: h.zero(512, size)),
        ("trim past the end", errno.EINVAL, lambda: h.trim(512, size)),
        ("unaligned read offset", errno.EINVAL, lambda: h.pread(512, 1)),
        ("unaligned read length", errno.EINVAL, lambda: h.pread(100, 0)),
        ("unaligned write", errno.EINVAL, lambda: h.pwrite(b"y" * 100, 0)),
        ("unaligned write offset", errno.EINVAL, lambda: h.pwrite(b"y" * 512, 4)),
        ("write over 32 MiB", errno.EINVAL, lambda: h.pwrite(b"z" * ((32 << 20) + 512), 0)),
        ("read over 32 MiB", errno.EINVAL, lambda: h.pread((32 << 20) + 512, 0)),
    ]
    for what, want, fn in cases:
        expect_nbd_error(what, want, fn)
        got = h.pread(4096, 0)
        assert got == pat, "after %s: read back %r..., data changed or stream out of sync" % (what, got[:16])
        assert h.pread(512, size - 512) == tail, "after %s: last sector changed" % what
    h.shutdown()
    return {"size": size, "cases": len(cases)}


def case_bad_requests_raw(sock):
    c = Raw(sock)
    size = c.size
    pat = bytes(range(256)) * 16
    c.write(8192, pat)
    c.write(0, b"\x77" * 8192)
    big = b"\xee" * ((32 << 20) + 512)
    cases = [
        ("raw read past the end", errno.EINVAL, CMD_READ, size, 512, 0, b""),
        ("raw write past the end", errno.ENOSPC, CMD_WRITE, size, 512, 0, b"w" * 512),
        ("raw unaligned read", errno.EINVAL, CMD_READ, 8193, 512, 0, b""),
        ("raw unaligned write", errno.EINVAL, CMD_WRITE, 8192, 100, 0, b"u" * 100),
        ("raw write over 32 MiB (payload skipped)", errno.EINVAL, CMD_WRITE, 0, len(big), 0, big),
        ("raw unknown command 0x1234", errno.EINVAL, 0x1234, 0, 512, 0, b""),
        ("raw NBD_CMD_CACHE (not advertised)", errno.EINVAL, 5, 0, 512, 0, b""),
        ("raw unknown command 7", errno.EINVAL, 7, 0, 512, 0, b""),
        ("raw unknown command flag", errno.EINVAL, CMD_READ, 0, 512, 1 << 9, b""),
        ("raw flush with a length", errno.EINVAL, CMD_FLUSH, 0, 512, 0, b""),
        ("raw write whose end overflows u64", errno.ENOSPC, CMD_WRITE, 2**64 - 512, 1024, 0, b"o" * 1024),
        ("raw read at 2^63", errno.EINVAL, CMD_READ, 2**63, 512, 0, b""),
        ("raw write-zeroes across the end", errno.ENOSPC, CMD_WZ, size - 512, 1024, 0, b""),
        ("raw trim across the end", errno.EINVAL, CMD_TRIM, size - 512, 1024, 0, b""),
        ("raw read over 32 MiB", errno.EINVAL, CMD_READ, 0, (32 << 20) + 512, 0, b""),
    ]
    for what, want, cmd, off, ln, fl, payload in cases:
        expect_raw_error(c, what, want, cmd, off, ln, fl, payload)
        got = c.read(8192, len(pat))
        assert got == pat, "after %s: next read returned wrong data %r..." % (what, got[:16])
    # Length 0 is a success without data; a flush is fine.
    assert c.call(CMD_READ, 4096, 0) == (0, b""), "zero-length read"
    assert c.call(CMD_WRITE, 4096, 0) == (0, b""), "zero-length write"
    assert c.call(CMD_FLUSH, 0, 0) == (0, b""), "flush"
    assert c.read(8192, len(pat)) == pat
    # Nothing of the rejected writes reached the disk.
    assert c.read(0, 8192) == b"\x77" * 8192, "a rejected write changed the disk"
    c.close()
    return {"size": size, "cases": len(cases)}


def case_bad_handshake(uri, sock):
    import nbd
    good = connect_nbd(uri)
    good.pwrite(b"\x11" * 4096, 0)
    results = {}
    # 1: garbage right after the greeting (bad client flags and more).
    # 2: valid client flags, then an option with a bad magic.
    # 3: valid client flags, then a half option and EOF.
    for name, blob, half_close in [
        ("garbage", b"\xde\xad\xbe\xef" * 64, False),
        ("bad option magic", struct.pack(">I", 3) + struct.pack(">QII", 0x1122334455667788, OPT_GO, 6) + b"\0" * 6, False),
        ("truncated option", struct.pack(">I", 3) + struct.pack(">QI", IHAVEOPT, OPT_GO), True),
    ]:
        s = connect_sock(sock)
        s.settimeout(10)
        greeting = recv_exact(s, 18)
        assert greeting[:8] == NBDMAGIC
        s.sendall(blob)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        rest = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except socket.timeout:
            raise AssertionError("%s: the server did not close the connection within 10 s" % name)
        except ConnectionResetError:
            pass
        s.close()
        results[name] = len(rest)
        # The established client keeps working.
        good.pwrite(bytes([len(results)]) * 512, 4096 * len(results))
        assert good.pread(4096, 0) == b"\x11" * 4096, "after %s: other client broken" % name
        # A new client can connect.
        h = connect_nbd(uri)
        assert h.pread(4096, 0) == b"\x11" * 4096, "after %s: new client reads wrong data" % name
        assert h.pread(512, 4096 * len(results)) == bytes([len(results)]) * 512
        h.shutdown()
    # A refused NBD_OPT_GO (unknown export) leaves the negotiation open: GO r0 then works.
    c = Raw(sock, name=None)
    rtype, payload = c.go("nosuch")
    assert rtype == 0x80000006, "GO nosuch: reply %#x %r, expected NBD_REP_ERR_UNKNOWN" % (rtype, payload)
    rtype, payload = c.go("r0")
    assert rtype == REP_ACK, "GO r0 after a refusal: %#x %r" % (rtype, payload)
    assert c.read(0, 4096) == b"\x11" * 4096
    c.close()
    results["unknown export then r0"] = 0
    # In transmission: a request with a bad magic closes that connection; a client that dies
    # in the middle of a WRITE payload leaves the others unharmed.
    for name, blob in [
        ("bad request magic", struct.pack(">IHHQQI", 0x12345678, 0, CMD_READ, 1, 0, 512)),
        ("truncated write payload", struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 0, 1 << 20) + b"\x99" * 1000),
    ]:
        c = Raw(sock)
        c.s.settimeout(10)
        c.s.sendall(blob)
        if name.startswith("truncated"):
            c.s.shutdown(socket.SHUT_WR)
        try:
            extra = c.s.recv(65536)
            while extra:
                extra = c.s.recv(65536)
        except socket.timeout:
            raise AssertionError("%s: the server did not close the connection within 10 s" % name)
        except ConnectionResetError:
            pass
        c.s.close()
        results[name] = 0
        assert good.pread(4096, 0) == b"\x11" * 4096, "after %s: other client broken" % name
        h = connect_nbd(uri)
        assert h.pread(4096, 0) == b"\x11" * 4096, "after %s: new client reads wrong data" % name
        h.shutdown()
    good.flush()
    good.shutdown()
    return results


def case_multi_conn(uri, n):
    n = int(n)
    handles = [connect_nbd(uri) for _ in range(n)]
    for h in handles:
        assert h.can_multi_conn()
    region = 1 << 20
    errors = []

    def writer(i):
        try:
            h = handles[i]
            data = bytes([0x30 + i]) * 4096
            for off in range(0, region, 4096):
                h.pwrite(data, i * region + off)
        except Exception as e:  # noqa
            errors.append(repr(e))

    ts = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    handles[n - 1].flush()
    for reader in handles:
        for i in range(n):
            got = reader.pread(region, i * region)
            assert got == bytes([0x30 + i]) * region, "region %d read through another connection differs" % i
    for h in handles:
        h.shutdown()
    return {"connections": n}


def case_trim_zero(uri):
    import nbd
    h = connect_nbd(uri)
    mib = 1 << 20
    h.pwrite(b"\xaa" * (4 * mib), 0)
    h.flush()
    h.trim(mib, 0)
    h.zero(mib, mib)
    h.zero(mib, 2 * mib, nbd.CMD_FLAG_NO_HOLE)
    h.zero(4096, 3 * mib + 8192, nbd.CMD_FLAG_FUA)
    h.trim(4096, 3 * mib + 65536, nbd.CMD_FLAG_FUA)
    h.flush()
    z = b"\0" * mib
    assert h.pread(mib, 0) == z, "trimmed range does not read zeros"
    assert h.pread(mib, mib) == z, "write-zeroes range does not read zeros"
    assert h.pread(mib, 2 * mib) == z, "write-zeroes NO_HOLE range does not read zeros"
    got = h.pread(mib, 3 * mib)
    want = bytearray(b"\xaa" * mib)
    want[8192:8192 + 4096] = b"\0" * 4096
    want[65536:65536 + 4096] = b"\0" * 4096
    assert got == bytes(want), "partial zero/trim: wrong bytes around the ranges"
    h.shutdown()
    # A fresh connection sees the same.
    h = connect_nbd(uri)
    assert h.pread(mib, 0) == z and h.pread(mib, mib) == z
    h.shutdown()
    return {}


def case_tcp_raw(target):
    c = Raw(target)
    c.write(0, b"\x42" * 4096)
    assert c.read(0, 4096) == b"\x42" * 4096
    c.close()
    return {"size": c.size}


if __name__ == "__main__":
    fn = globals()["case_" + sys.argv[1]]
    print(json.dumps(fn(*sys.argv[2:])))
"###;

const PYTHON: &str = "/usr/bin/python3";

struct Fixture {
    dir: tempfile::TempDir,
    disk: PathBuf,
    daemon: TestDaemon,
}

/// A daemon with one resource of `size` bytes, Primary (`--force`), and the python helper
/// written next to it. `extra` goes into the resource section.
fn primary(size: u64, extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("alice.img");
    sparse_file(&disk, size);
    create_md(&disk);
    let config = write_config(dir.path(), "r0", &disk, extra);
    std::fs::write(dir.path().join("nbdtest.py"), NBDTEST_PY).unwrap();
    let daemon = TestDaemon::start(dir.path(), &config, &[]);
    daemon.ok(&["primary", "r0", "--force"]);
    Fixture { dir, disk, daemon }
}

/// The usable size of a backing file of `bytes` after internal v08 meta-data: 4 KiB
/// superblock, 32 KiB activity log, and one bitmap bit per 4 KiB rounded up to 4 KiB.
fn usable_size(bytes: u64) -> u64 {
    let bitmap = (bytes.div_ceil(4096).div_ceil(8)).next_multiple_of(4096);
    bytes - 4096 - 32768 - bitmap
}

/// Runs `cmd` with a deadline; returns (success, stdout, stderr).
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let (out, err) = (read_all(Box::new(out)), read_all(Box::new(err)));
    let Some(status) = exit_within(&mut child, timeout) else {
        panic!(
            "{cmd:?} did not finish within {timeout:?}: {}{}",
            out.join().unwrap(),
            err.join().unwrap()
        );
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// Waits up to `timeout` for `child` to exit; kills it and returns None if it does not.
fn exit_within(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs one case of the python helper; returns its JSON result.
fn py_case(f: &Fixture, case: &str, args: &[&str]) -> serde_json::Value {
    require_tool(PYTHON, "python3-libnbd");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(f.dir.path().join("nbdtest.py"))
        .arg(case)
        .args(args);
    let (ok, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        ok,
        "python case {case} failed:\n{out}{err}\ndaemon log:\n{}",
        f.daemon.log_text()
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{case}: {e}: {out}"))
}

fn socket_str(f: &Fixture) -> String {
    f.daemon.socket("r0").display().to_string()
}

/// Waits until no NBD client holds the device open.
fn wait_closed(d: &TestDaemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ok(&["status", "r0"]).contains("open:yes") {
        assert!(
            Instant::now() < deadline,
            "device still open after every client left: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// fio's JSON with the "fio: connected to NBD server" line stripped.
fn fio_json(stdout: &str) -> serde_json::Value {
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON: {stdout}"));
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn fio_random_writes_verify() {
    require_tool("fio", "fio");
    let f = primary(128 << 20, "");
    let uri = f.daemon.uri("r0");
    let mut cmd = Command::new("fio");
    // fio leaves its verify state file in the working directory.
    cmd.current_dir(f.dir.path()).args([
        "--name=v",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=64M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--output-format=json",
    ]);
    let (ok, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(300));
    assert!(ok, "fio failed: {out}{err}\n{}", f.daemon.log_text());
    let v = fio_json(&out);
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    let written = job["write"]["io_bytes"].as_u64().unwrap();
    let verified = job["read"]["io_bytes"].as_u64().unwrap();
    assert_eq!(written, 64 << 20, "fio wrote {written} bytes");
    assert_eq!(verified, 64 << 20, "fio verified {verified} bytes");
    wait_closed(&f.daemon);
}

#[test]
fn nbdinfo_reports_size_and_flags() {
    require_tool("nbdinfo", "libnbd-bin");
    assert_eq!(usable_size(128 << 20), (128 << 20) - 80 * 512);
    assert_eq!(usable_size(256 << 20), (256 << 20) - 88 * 512);
    for size in [64u64 << 20, 200 << 20] {
        let f = primary(size, "");
        let json = run_ok(Command::new("nbdinfo").args(["--json", &f.daemon.uri("r0")]));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let export = &v["exports"][0];
        assert_eq!(export["export-name"], "r0");
        assert_eq!(export["export-size"], usable_size(size), "{export}");
        for flag in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_multi_conn",
        ] {
            assert_eq!(export[flag], true, "{flag}: {export}");
        }
        assert_eq!(export["is_read_only"], false);
        assert_eq!(export["block_size_minimum"], 512, "{export}");
        assert_eq!(export["block_size_maximum"], 32 << 20, "{export}");
        let _ = &f.disk;
    }
}

#[test]
fn bad_requests_are_refused_and_the_connection_goes_on_libnbd() {
    let f = primary(64 << 20, "");
    let r = py_case(&f, "bad_requests_libnbd", &[&f.daemon.uri("r0")]);
    assert_eq!(r["size"], usable_size(64 << 20));
    assert_eq!(r["cases"], 12);
    wait_closed(&f.daemon);
}

#[test]
fn bad_requests_are_refused_and_the_connection_goes_on_raw() {
    let f = primary(64 << 20, "");
    let r = py_case(&f, "bad_requests_raw", &[&socket_str(&f)]);
    assert_eq!(r["size"], usable_size(64 << 20));
    assert_eq!(r["cases"], 15);
    wait_closed(&f.daemon);
}

#[test]
fn a_malformed_handshake_closes_only_that_connection() {
    let f = primary(64 << 20, "");
    let r = py_case(&f, "bad_handshake", &[&f.daemon.uri("r0"), &socket_str(&f)]);
    let cases = r.as_object().unwrap();
    assert_eq!(cases.len(), 6, "{r}");
    // No broken connection keeps the device open.
    wait_closed(&f.daemon);
    assert!(f.daemon.ok(&["status", "r0"]).contains("role:Primary"));
}

#[test]
fn concurrent_connections_see_each_others_writes() {
    let f = primary(64 << 20, "");
    let r = py_case(&f, "multi_conn", &[&f.daemon.uri("r0"), "4"]);
    assert_eq!(r["connections"], 4);
    // And a fresh client after they are gone.
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &f.daemon.uri("r0"),
        "-c",
        "read -P 0x30 0 1M",
        "-c",
        "read -P 0x33 3M 1M",
    ]));
    assert!(!out.contains("failed"), "{out}");
    wait_closed(&f.daemon);
}

#[test]
fn trim_and_write_zeroes_read_back_zeros() {
    let f = primary(64 << 20, "");
    py_case(&f, "trim_zero", &[&f.daemon.uri("r0")]);
    wait_closed(&f.daemon);
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_listener_on_loopback_only() {
    require_tool("qemu-io", "qemu-utils");
    require_tool("ss", "iproute2");
    let port = free_port();
    let f = primary(64 << 20, &format!("  nbd {{ listen 127.0.0.1:{port}; }}"));
    let uri = format!("nbd://127.0.0.1:{port}/r0");
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "write -P 0x5c 5M 64k",
    ]));
    assert!(!out.contains("failed"), "{out}");
    // The same data through the unix socket.
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &f.daemon.uri("r0"),
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "read -P 0x5c 5M 64k",
    ]));
    assert!(!out.contains("failed"), "{out}");
    let r = py_case(&f, "tcp_raw", &[&format!("tcp:127.0.0.1:{port}")]);
    assert_eq!(r["size"], usable_size(64 << 20));
    // Bound to 127.0.0.1 only.
    let ss = run_ok(Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]));
    let locals: Vec<&str> = ss
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(locals, [format!("127.0.0.1:{port}")], "{ss}");
    let other = std::net::TcpStream::connect(("127.0.0.2", port));
    assert!(
        other.is_err(),
        "127.0.0.2:{port} accepted a connection: not bound to 127.0.0.1 only"
    );
    wait_closed(&f.daemon);
}

/// `suspend-io` holds an NBD client's write (it does not complete, `status` says
/// `suspended:user` and counts it in upper-pending) until `resume-io`; then it completes and
/// reads back.
#[test]
fn suspend_io_holds_a_client_write_until_resume_io() {
    require_tool("qemu-io", "qemu-utils");
    let f = primary(64 << 20, "");
    let d = &f.daemon;
    d.ok(&["suspend-io", "r0"]);
    let text = d.ok(&["status", "r0"]);
    assert!(text.contains("r0 role:Primary suspended:user"), "{text}");
    let mut writer = Command::new("qemu-io")
        .args(["-f", "raw", &d.uri("r0"), "-c", "write -P 0x77 1M 64k"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = |d: &TestDaemon| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&d.ok(&["status", "r0", "--json"])).unwrap()[0]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(d)["devices"][0]["upper-pending"].as_u64() != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the write never reached the daemon: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the write completed while IO was suspended"
    );
    assert_eq!(status(d)["suspended-user"], true);
    d.ok(&["resume-io", "r0"]);
    let exit = exit_within(&mut writer, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the write did not complete after resume-io: {}",
            d.log_text()
        )
    });
    assert!(exit.success());
    assert!(!d.ok(&["status", "r0"]).contains("suspended:"));
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &d.uri("r0"),
        "-c",
        "read -P 0x77 1M 64k",
    ]));
    assert!(!out.contains("failed"), "{out}");
    wait_closed(d);
}
