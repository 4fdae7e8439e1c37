//! The control socket protocol: one JSON object per line each way, over `RUN_DIR/udrbd.sock`
//! (mode 0600). The CLI sends a [`ControlRequest`], the daemon answers with a
//! [`ControlReply`] once the command finished (commands that change state wait for the
//! engine's result).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The control socket's file name inside the run directory.
pub const CONTROL_SOCKET: &str = "udrbd.sock";

/// A CLI request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The verb: up, down, attach, detach, primary, secondary, connect, disconnect,
    /// invalidate, invalidate-remote, new-current-uuid, outdate, pause-sync, resume-sync,
    /// suspend-io, resume-io, verify, resize, adjust, role, cstate, dstate, wait-connect, status,
    /// events.
    pub verb: String,
    /// The resource (`None`: all, for status).
    pub resource: Option<String>,
    /// `--force` (primary, detach).
    #[serde(default)]
    pub force: bool,
    /// `status --verbose`.
    #[serde(default)]
    pub verbose: bool,
    /// `status --statistics`.
    #[serde(default)]
    pub statistics: bool,
    /// `status --json`.
    #[serde(default)]
    pub json: bool,
    /// `events --now`: the current state only.
    #[serde(default)]
    pub now: bool,
    /// `connect --discard-my-data`.
    #[serde(default)]
    pub discard_my_data: bool,
    /// `new-current-uuid --clear-bitmap`.
    #[serde(default)]
    pub clear_bitmap: bool,
    /// `wait-connect --timeout S` (none: wait forever).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// `verify --start SECTOR` (none: where the last verify stopped).
    #[serde(default)]
    pub start_sector: Option<u64>,
    /// `verify --stop SECTOR` (none: the end of the device).
    #[serde(default)]
    pub stop_sector: Option<u64>,
    /// `resize --assume-peer-has-space`.
    #[serde(default)]
    pub assume_peer_has_space: bool,
    /// `resize --assume-clean`.
    #[serde(default)]
    pub assume_clean: bool,
    /// `resize --size`, sectors (none: the user size in force).
    #[serde(default)]
    pub size_sectors: Option<u64>,
}

impl ControlRequest {
    /// A request for `verb` on `resource`.
    pub fn new(verb: &str, resource: Option<&str>) -> ControlRequest {
        ControlRequest {
            verb: verb.to_string(),
            resource: resource.map(str::to_string),
            force: false,
            verbose: false,
            statistics: false,
            json: false,
            now: false,
            discard_my_data: false,
            clear_bitmap: false,
            timeout_secs: None,
            start_sector: None,
            stop_sector: None,
            assume_peer_has_space: false,
            assume_clean: false,
            size_sectors: None,
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Text for stdout (status output).
    #[serde(default)]
    pub output: String,
    /// Text for stderr (the refusal or failure, DRBD's wording).
    #[serde(default)]
    pub error: String,
    /// The exit code the CLI should use (drbdsetup's: 17 for -2, 11 for other refusals, 10
    /// for failures, 20 for local problems).
    #[serde(default)]
    pub exit_code: u8,
}

impl ControlReply {
    /// Success with output.
    pub fn ok(output: String) -> ControlReply {
        ControlReply {
            ok: true,
            output,
            error: String::new(),
            exit_code: 0,
        }
    }

    /// Failure with a message and exit code.
    pub fn error(error: String, exit_code: u8) -> ControlReply {
        ControlReply {
            ok: false,
            output: String::new(),
            error,
            exit_code,
        }
    }
}

/// Why the CLI could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens on the socket.
    #[error("cannot reach the udrbd daemon at {}: {source} (is `udrbd daemon` running with this --run-dir?)", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("control socket {}: {source}", .path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon's answer was not understood.
    #[error("control socket {}: bad reply: {reason}", .path.display())]
    BadReply {
        /// What was wrong.
        reason: String,
        /// The socket path.
        path: PathBuf,
    },
}

/// Connects to the control socket and sends one request line; returns the stream (with the
/// read timeout set, if any) and the socket path for error messages.
fn send_request(
    run_dir: &Path,
    request: &ControlRequest,
    timeout: Option<Duration>,
) -> Result<(UnixStream, PathBuf), ControlError> {
    let path = run_dir.join(CONTROL_SOCKET);
    let mut stream = UnixStream::connect(&path).map_err(|source| ControlError::Connect {
        path: path.clone(),
        source,
    })?;
    let mut line = serde_json::to_string(request).expect("serialisable");
    line.push('\n');
    let sent = stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.write_all(line.as_bytes()));
    sent.map_err(|source| ControlError::Io {
        path: path.clone(),
        source,
    })?;
    Ok((stream, path))
}

/// Sends one request and prints every reply line's output as it arrives, until the daemon
/// closes the stream (`events`).
pub fn stream(
    run_dir: &Path,
    request: &ControlRequest,
    out: &mut dyn Write,
) -> Result<(), ControlError> {
    let (stream, path) = send_request(run_dir, request, None)?;
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    for reply in BufReader::new(stream).lines() {
        let reply = reply.map_err(io)?;
        let reply: ControlReply =
            serde_json::from_str(&reply).map_err(|e| ControlError::BadReply {
                reason: e.to_string(),
                path: path.clone(),
            })?;
        out.write_all(reply.output.as_bytes()).map_err(io)?;
        out.flush().map_err(io)?;
    }
    Ok(())
}

/// Sends one request and waits (up to `timeout`) for the reply.
pub fn call(
    run_dir: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlReply, ControlError> {
    call_with(run_dir, request, Some(timeout))
}

/// Sends one request and waits for the reply, up to `timeout` (`None`: for ever).
pub fn call_with(
    run_dir: &Path,
    request: &ControlRequest,
    timeout: Option<Duration>,
) -> Result<ControlReply, ControlError> {
    let (stream, path) = send_request(run_dir, request, timeout)?;
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|e| ControlError::BadReply {
        reason: e.to_string(),
        path: path.clone(),
    })
}
