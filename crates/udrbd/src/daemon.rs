//! `udrbd daemon`: hosts the resources of one node.
//!
//! - One thread per resource runs its event loop ([`crate::resource_loop`]).
//! - The main thread serves the control socket `RUN_DIR/udrbd.sock` (JSON lines, mode 0600)
//!   and forwards each request to the resource it names.
//! - At start every resource of the node is brought up (attach), like `drbdadm up all` at boot,
//!   unless `--no-up`; the daemon never promotes by itself.
//! - On SIGTERM or SIGINT each resource closes its NBD clients (after their in-flight
//!   requests), goes down cleanly, and the daemon exits.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;
use udrbd_core::{DiskState, Resource};

use crate::config::{Config, ResolvedResource};
use crate::control::{CONTROL_SOCKET, ControlReply, ControlRequest};
use crate::resource_loop::{self, LoopMessage};
use crate::status_format as sf;

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// This node's name.
    pub node: String,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Do not bring resources up at start.
    pub no_up: bool,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// Another daemon serves this run directory.
    #[error("another udrbd daemon is already running with run-dir {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// Setting up the run directory or the control socket failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

struct Handle {
    messages: UnboundedSender<LoopMessage>,
    thread: std::thread::JoinHandle<()>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let config = Config::load(&opts.config).map_err(|e| DaemonError::Config(e.to_string()))?;
    let mut resources = Vec::new();
    for def in config.resources_for_node(&opts.node) {
        let r = config
            .resource_for_node(&def.name, &opts.node)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        resources.push(r);
    }
    if resources.is_empty() {
        tracing::warn!(node = %opts.node, "no resource of the configuration has an 'on {}' section", opts.node);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DaemonError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.run_dir).map_err(io(&opts.run_dir))?;
    let socket = opts.run_dir.join(CONTROL_SOCKET);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(DaemonError::AlreadyRunning(opts.run_dir.clone()));
    }
    let _ = std::fs::remove_file(&socket);
    let std_listener = std::os::unix::net::UnixListener::bind(&socket).map_err(io(&socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(&socket))?;
    std_listener.set_nonblocking(true).map_err(io(&socket))?;

    let single = resources.len() == 1;
    let mut handles = BTreeMap::new();
    for r in resources {
        handles.insert(r.name.clone(), spawn_resource(r, &opts, single));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(&opts.run_dir))?;
    let senders: BTreeMap<String, UnboundedSender<LoopMessage>> = handles
        .iter()
        .map(|(n, h)| (n.clone(), h.messages.clone()))
        .collect();
    runtime.block_on(async move {
        let listener = UnixListener::from_std(std_listener).expect("tokio listener");
        serve(listener, senders).await;
    });
    tracing::info!("shutting down");
    for (name, h) in &handles {
        let (tx, rx) = oneshot::channel();
        if h.messages.send(LoopMessage::Shutdown(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
        tracing::info!(resource = %name, "down");
    }
    for (_, h) in handles {
        let _ = h.thread.join();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn spawn_resource(r: ResolvedResource, opts: &DaemonOptions, single: bool) -> Handle {
    let (tx, rx) = unbounded_channel();
    let run_dir = opts.run_dir.clone();
    let auto_up = !opts.no_up;
    let name = r.name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("udrbd-{name}"))
        .spawn(move || resource_loop::run(r, run_dir, single, auto_up, rx))
        .expect("spawn a resource thread");
    Handle {
        messages: tx,
        thread,
    }
}

/// Serves control connections until a termination signal.
async fn serve(listener: UnixListener, resources: BTreeMap<String, UnboundedSender<LoopMessage>>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .expect("SIGINT handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(control_connection(stream, resources.clone()));
                }
            }
        }
    }
}

async fn control_connection(
    stream: tokio::net::UnixStream,
    resources: BTreeMap<String, UnboundedSender<LoopMessage>>,
) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(request) if request.verb == "events" => {
                // A stream of events2 lines, one JSON reply per line, until the client goes.
                events(&request, &resources, &mut w).await;
                return;
            }
            Ok(request) => dispatch(request, &resources).await,
            Err(e) => ControlReply::error(format!("bad control request: {e}"), 20),
        };
        let mut text = serde_json::to_string(&reply).expect("serialisable");
        text.push('\n');
        if w.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn dispatch(
    request: ControlRequest,
    resources: &BTreeMap<String, UnboundedSender<LoopMessage>>,
) -> ControlReply {
    let names: Vec<String> = match &request.resource {
        Some(name) if name != "all" => {
            if !resources.contains_key(name) {
                return ControlReply::error(format!("{name}: No such resource"), 10);
            }
            vec![name.clone()]
        }
        _ if request.verb == "status" => resources.keys().cloned().collect(),
        _ => return ControlReply::error(format!("{}: needs a resource name", request.verb), 20),
    };
    if request.verb == "status" {
        return status(&request, &names, resources).await;
    }
    let mut output = String::new();
    for name in names {
        let (tx, rx) = oneshot::channel();
        let mut one = request.clone();
        one.resource = Some(name.clone());
        if resources[&name]
            .send(LoopMessage::Control(one, tx))
            .is_err()
        {
            return ControlReply::error(format!("{name}: resource loop is gone"), 20);
        }
        match rx.await {
            Ok(reply) if reply.ok => output.push_str(&reply.output),
            Ok(reply) => return reply,
            Err(_) => return ControlReply::error(format!("{name}: resource loop is gone"), 20),
        }
    }
    ControlReply::ok(output)
}

/// The status view of one resource, for the formatter.
pub fn resource_view(engine: &Resource, resource: &ResolvedResource) -> sf::ResourceView {
    let s = engine.status();
    let role = match s.role {
        udrbd_core::Role::Primary => sf::Role::Primary,
        udrbd_core::Role::Secondary => sf::Role::Secondary,
        udrbd_core::Role::Unknown => sf::Role::Unknown,
    };
    let disk_state = match s.disk {
        DiskState::Diskless => sf::DiskState::Diskless,
        DiskState::Attaching => sf::DiskState::Attaching,
        DiskState::Failed => sf::DiskState::Failed,
        DiskState::Negotiating => sf::DiskState::Negotiating,
        DiskState::Inconsistent => sf::DiskState::Inconsistent,
        DiskState::Outdated => sf::DiskState::Outdated,
        DiskState::DUnknown => sf::DiskState::DUnknown,
        DiskState::Consistent => sf::DiskState::Consistent,
        DiskState::UpToDate => sf::DiskState::UpToDate,
    };
    let device = sf::DeviceView {
        volume: 0,
        minor: resource.minor,
        disk_state,
        client: false,
        backing_dev: resource.disk.as_ref().map(|p| p.display().to_string()),
        quorum: true,
        open: s.openers > 0,
        size_kib: s.size_bytes / 1024,
        read_kib: s.statistics.read_kib,
        written_kib: s.statistics.written_kib,
        al_writes: s.statistics.al_writes,
        bm_writes: s.statistics.bm_writes,
        upper_pending: s.upper_pending as u32,
        lower_pending: s.lower_pending as u32,
        al_suspended: false,
        blocked: sf::Blocked::default(),
        udrbd: sf::UdrbdDeviceExtras {
            stuck_ios: (s.stuck_ios > 0).then_some(s.stuck_ios),
            disk_failure_reason: None,
        },
    };
    let connections = resource
        .peer
        .names
        .first()
        .map(|peer| sf::ConnectionView {
            name: peer.clone(),
            peer_node_id: 1,
            // Replication is not built yet: the peer is configured, never connected.
            connection_state: sf::ConnState::StandAlone,
            peer_role: sf::Role::Unknown,
            tls: false,
            congested: false,
            ap_in_flight_sectors: 0,
            rs_in_flight_sectors: 0,
            paths: Vec::new(),
            peer_device: sf::PeerDeviceView {
                volume: 0,
                replication_state: sf::ReplState::Off,
                peer_disk_state: sf::DiskState::DUnknown,
                peer_client: false,
                resync_suspended: sf::ResyncSuspended::default(),
                received_kib: 0,
                sent_kib: 0,
                out_of_sync_kib: s.out_of_sync_bytes / 1024,
                pending: 0,
                unacked: 0,
                peer_uuid_stable: false,
                sync: None,
            },
        })
        .into_iter()
        .collect();
    sf::ResourceView {
        name: s.name,
        node_id: 0,
        role,
        suspended: sf::Suspended::default(),
        force_io_failures: false,
        write_ordering: sf::WriteOrdering::Flush,
        device,
        connections,
    }
}

/// `events`: `drbdsetup events2` lines: the current state (`exists` ... `exists -`), then a
/// `change` batch after every state change, until the client disconnects (`--now`: only the
/// current state). Each line travels as one [`ControlReply`] with the line as output.
async fn events(
    request: &ControlRequest,
    resources: &BTreeMap<String, UnboundedSender<LoopMessage>>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) {
    let names: Vec<&String> = match &request.resource {
        Some(name) if name != "all" => resources.keys().filter(|n| *n == name).collect(),
        _ => resources.keys().collect(),
    };
    let (tx, mut rx) = unbounded_channel::<String>();
    let mut views = Vec::new();
    for name in names {
        let (reply_tx, reply_rx) = oneshot::channel();
        if resources[name]
            .send(LoopMessage::Subscribe(reply_tx))
            .is_err()
        {
            continue;
        }
        let Ok((view, mut updates)) = reply_rx.await else {
            continue;
        };
        views.push(view.clone());
        let tx = tx.clone();
        let statistics = request.statistics;
        tokio::spawn(async move {
            let mut old = view;
            while let Ok(new) = updates.recv().await {
                for line in sf::events2_changes(Some(&old), Some(&new), statistics) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                old = new;
            }
        });
    }
    drop(tx);
    let encode = |line: String| {
        let mut text = serde_json::to_string(&ControlReply::ok(line + "\n")).expect("serialisable");
        text.push('\n');
        text
    };
    for line in sf::events2_now_all(&views, request.statistics) {
        if w.write_all(encode(line).as_bytes()).await.is_err() {
            return;
        }
    }
    if request.now {
        return;
    }
    while let Some(line) = rx.recv().await {
        if w.write_all(encode(line).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `status`: DRBD 9's `drbdadm status` text, or `drbdsetup status --json`.
async fn status(
    request: &ControlRequest,
    names: &[String],
    resources: &BTreeMap<String, UnboundedSender<LoopMessage>>,
) -> ControlReply {
    let mut views = Vec::new();
    for name in names {
        let (tx, rx) = oneshot::channel();
        if resources[name].send(LoopMessage::View(tx)).is_err() {
            return ControlReply::error(format!("{name}: resource loop is gone"), 20);
        }
        match rx.await {
            Ok(view) => views.push(view),
            Err(_) => return ControlReply::error(format!("{name}: resource loop is gone"), 20),
        }
    }
    if request.json {
        return ControlReply::ok(sf::status_json(&views));
    }
    ControlReply::ok(sf::status_text_all(
        &views,
        request.verbose,
        request.statistics,
        80,
    ))
}
