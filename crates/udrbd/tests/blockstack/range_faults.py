# nbdkit Python plugin: a file-backed disk whose reads and writes fail on command.
#
#   nbdkit python range_faults.py file=IMAGE faults=FAULTS.json [log=REQUESTS.log]
#
# FAULTS.json is read again on every request (a missing file means "no faults"), so the
# faults change at runtime; replace it atomically (write a temporary file, rename it over):
#
#   {"fail_read": false,            every read fails
#    "fail_write": false,           every write, write-zeroes, trim and flush fails
#    "read_ranges": [[OFF, LEN]],   reads overlapping [OFF, OFF+LEN) fail
#    "write_ranges": [[OFF, LEN]]}  writes, write-zeroes and trims overlapping them fail
#
# A failing request changes nothing and returns EIO to the NBD client. With log=, every
# request appends one line "OP OFFSET LENGTH RESULT" to REQUESTS.log (OP: pread, pwrite, zero,
# trim or flush; RESULT: ok or EIO; " fua" follows for requests with the FUA flag).
#
# Thread model: parallel (the GIL serialises the Python code, the file IO releases it).

import builtins
import ctypes
import errno
import json
import os
import threading

import nbdkit

API_VERSION = 2

image = None
faults_path = None
log_path = None

fd = -1
log_fd = -1

_lock = threading.Lock()
_cached_raw = None
_cached = None

_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def config(key, value):
    global image, faults_path, log_path
    if key == "file":
        image = os.path.abspath(value)
    elif key == "faults":
        faults_path = os.path.abspath(value)
    elif key == "log":
        log_path = os.path.abspath(value)
    else:
        raise RuntimeError("unknown parameter %s" % key)


def config_complete():
    if image is None or faults_path is None:
        raise RuntimeError("file= and faults= are required")


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def get_ready():
    global fd, log_fd
    fd = os.open(image, os.O_RDWR)
    if log_path is not None:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def open(readonly):
    return 1


def get_size(h):
    return os.fstat(fd).st_size


def can_write(h):
    return True


def can_flush(h):
    return True


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h):
    # One shared descriptor: a flush on any connection flushes every connection's writes.
    return True


def _faults():
    """The current faults; re-parsed only when the file's bytes change."""
    global _cached_raw, _cached
    try:
        with builtins.open(faults_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raw = b""
    with _lock:
        if raw != _cached_raw:
            cfg = json.loads(raw) if raw.strip() else {}
            _cached = {
                "fail_read": bool(cfg.get("fail_read", False)),
                "fail_write": bool(cfg.get("fail_write", False)),
                "read_ranges": [(int(o), int(n)) for o, n in cfg.get("read_ranges", [])],
                "write_ranges": [(int(o), int(n)) for o, n in cfg.get("write_ranges", [])],
            }
            _cached_raw = raw
        return _cached


def _overlaps(ranges, offset, count):
    return any(o < offset + count and offset < o + n for o, n in ranges)


def _log(op, offset, count, flags, result):
    if log_fd >= 0:
        fua = " fua" if flags & nbdkit.FLAG_FUA else ""
        os.write(log_fd, ("%s %d %d %s%s\n" % (op, offset, count, result, fua)).encode())


def _fail(op, offset, count, flags):
    _log(op, offset, count, flags, "EIO")
    nbdkit.set_error(errno.EIO)
    raise OSError(errno.EIO, "injected %s error at %d+%d" % (op, offset, count))


def _check_read(offset, count):
    f = _faults()
    if f["fail_read"] or _overlaps(f["read_ranges"], offset, count):
        _fail("pread", offset, count, 0)


def _check_write(op, offset, count, flags):
    f = _faults()
    if f["fail_write"] or _overlaps(f["write_ranges"], offset, count):
        _fail(op, offset, count, flags)


def pread(h, buf, offset, flags):
    _check_read(offset, len(buf))
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            nbdkit.set_error(errno.EIO)
            raise OSError(errno.EIO, "read beyond the end of %s" % image)
        done += n
    _log("pread", offset, len(buf), 0, "ok")


def _write_all(data, offset):
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _sync_if_fua(flags):
    if flags & nbdkit.FLAG_FUA:
        os.fdatasync(fd)


def pwrite(h, buf, offset, flags):
    _check_write("pwrite", offset, len(buf), flags)
    _write_all(buf, offset)
    _sync_if_fua(flags)
    _log("pwrite", offset, len(buf), flags, "ok")


def _punch(offset, count):
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(count)) == 0:
        return
    # No hole punching: write zeros.
    zeros = bytes(min(count, 1 << 20))
    done = 0
    while done < count:
        n = min(len(zeros), count - done)
        _write_all(zeros[:n], offset + done)
        done += n


def zero(h, count, offset, flags):
    _check_write("zero", offset, count, flags)
    _punch(offset, count)
    _sync_if_fua(flags)
    _log("zero", offset, count, flags, "ok")


def trim(h, count, offset, flags):
    _check_write("trim", offset, count, flags)
    _punch(offset, count)
    _sync_if_fua(flags)
    _log("trim", offset, count, flags, "ok")


def flush(h, flags):
    if _faults()["fail_write"]:
        _fail("flush", 0, 0, 0)
    os.fdatasync(fd)
    _log("flush", 0, 0, 0, "ok")
