//! `udrbd daemon`: hosts the resources of one node.
//!
//! - One thread per resource runs its event loop ([`crate::resource_loop`]).
//! - The main thread serves the control socket `RUN_DIR/udrbd.sock` (JSON lines, mode 0600)
//!   and forwards each request to the resource it names.
//! - At start every resource of the node is brought up (attach, then connect to the peer), like
//!   `drbdadm up all` at boot, unless `--no-up`; the daemon never promotes by itself.
//! - On SIGTERM or SIGINT each resource closes its NBD clients (after their in-flight
//!   requests), goes down cleanly, and the daemon exits.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;
use udrbd_core::{ConnState, DiskState, Resource};

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

/// Keeps the allocator from handing the data path's large buffers back to the kernel after
/// every use. Each replicated 1 MiB write allocates a 1 MiB receive buffer (NBD payload on
/// the Primary, P_DATA payload on the peer) and frees it when the write completed; with
/// glibc's defaults, the resource loop's (non-main) arena trims the freed memory with
/// madvise(MADV_DONTNEED), so the next buffer faults in 256 fresh pages (perf: ~13% of a
/// peer's samples in page faults and madvise). Buffers below 32 MiB now come from the arenas,
/// and up to 64 MiB of free memory at an arena's top stays there (about the data in flight
/// at the default queue depths). glibc only; elsewhere the allocator's defaults stay.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; it is called before the resource
        // threads start, with valid parameter numbers and values.
        #[allow(unsafe_code)]
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20) == 1
        };
        if !ok {
            tracing::debug!("mallopt refused the allocator settings");
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    tune_allocator();
    let config = Config::load(&opts.config).map_err(|e| DaemonError::Config(e.to_string()))?;
    let mut resources = Vec::new();
    for def in config.resources_for_node(&opts.node) {
        let r = config
            .resource_for_node(&def.name, &opts.node)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        // The net options must map onto the engine's (e.g. a known cram-hmac-alg).
        crate::engine_config::net_config(&r).map_err(DaemonError::Config)?;
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
    let config = opts.config.clone();
    let auto_up = !opts.no_up;
    let name = r.name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("udrbd-{name}"))
        .spawn(move || resource_loop::run(r, run_dir, config, single, auto_up, rx))
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
    let device = sf::DeviceView {
        volume: 0,
        minor: resource.minor,
        disk_state: disk_state_view(s.disk),
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
            disk_failure_reason: s.disk_failure.map(|f| f.words().to_string()),
            io_errors: (s.io_errors > 0).then_some(s.io_errors),
            served_by_peer: s.served_by_peer,
            detach_step: s.detach_step.map(str::to_string),
        },
    };
    let connections = connections_view(s.peer.as_ref(), resource, s.out_of_sync_bytes / 1024);
    sf::ResourceView {
        name: s.name,
        node_id: 0,
        role: role_view(s.role),
        suspended: sf::Suspended {
            user: s.suspended_by_user,
            ..Default::default()
        },
        force_io_failures: false,
        write_ordering: sf::WriteOrdering::Flush,
        device,
        connections,
    }
}

/// The connection to the peer: from the engine's peer status, or, when it reports none, the
/// configured peer as StandAlone.
pub fn connections_view(
    peer: Option<&udrbd_core::PeerStatus>,
    resource: &ResolvedResource,
    out_of_sync_kib: u64,
) -> Vec<sf::ConnectionView> {
    match peer {
        Some(peer) => vec![connection_view(peer, out_of_sync_kib)],
        None => resource
            .peer
            .names
            .first()
            .map(|name| standalone_view(name, out_of_sync_kib))
            .into_iter()
            .collect(),
    }
}

fn role_view(role: udrbd_core::Role) -> sf::Role {
    match role {
        udrbd_core::Role::Primary => sf::Role::Primary,
        udrbd_core::Role::Secondary => sf::Role::Secondary,
        udrbd_core::Role::Unknown => sf::Role::Unknown,
    }
}

fn disk_state_view(disk: DiskState) -> sf::DiskState {
    match disk {
        DiskState::Diskless => sf::DiskState::Diskless,
        DiskState::Attaching => sf::DiskState::Attaching,
        DiskState::Failed => sf::DiskState::Failed,
        DiskState::Negotiating => sf::DiskState::Negotiating,
        DiskState::Inconsistent => sf::DiskState::Inconsistent,
        DiskState::Outdated => sf::DiskState::Outdated,
        DiskState::DUnknown => sf::DiskState::DUnknown,
        DiskState::Consistent => sf::DiskState::Consistent,
        DiskState::UpToDate => sf::DiskState::UpToDate,
    }
}

/// DRBD 8.4's connection state in DRBD 9's words: the connection state, and the replication
/// state of the peer device (8.4 folds both into one `cstate`).
pub fn conn_state_view(conn: ConnState) -> (sf::ConnState, sf::ReplState) {
    use sf::ConnState as C;
    use sf::ReplState as R;
    match conn {
        ConnState::StandAlone => (C::StandAlone, R::Off),
        ConnState::Disconnecting => (C::Disconnecting, R::Off),
        ConnState::Unconnected => (C::Unconnected, R::Off),
        ConnState::Timeout => (C::Timeout, R::Off),
        ConnState::BrokenPipe => (C::BrokenPipe, R::Off),
        ConnState::NetworkFailure => (C::NetworkFailure, R::Off),
        ConnState::ProtocolError => (C::ProtocolError, R::Off),
        ConnState::TearDown => (C::TearDown, R::Off),
        // DRBD 9 says Connecting until the handshake is through.
        ConnState::WfConnection | ConnState::WfReportParams => (C::Connecting, R::Off),
        ConnState::Connected => (C::Connected, R::Established),
        ConnState::StartingSyncS => (C::Connected, R::StartingSyncS),
        ConnState::StartingSyncT => (C::Connected, R::StartingSyncT),
        ConnState::WfBitMapS => (C::Connected, R::WFBitMapS),
        ConnState::WfBitMapT => (C::Connected, R::WFBitMapT),
        ConnState::WfSyncUuid => (C::Connected, R::WFSyncUUID),
        ConnState::SyncSource => (C::Connected, R::SyncSource),
        ConnState::SyncTarget => (C::Connected, R::SyncTarget),
        ConnState::VerifyS => (C::Connected, R::VerifyS),
        ConnState::VerifyT => (C::Connected, R::VerifyT),
        ConnState::PausedSyncS => (C::Connected, R::PausedSyncS),
        ConnState::PausedSyncT => (C::Connected, R::PausedSyncT),
        ConnState::Ahead => (C::Connected, R::Ahead),
        ConnState::Behind => (C::Connected, R::Behind),
    }
}

fn connection_view(peer: &udrbd_core::PeerStatus, out_of_sync_kib: u64) -> sf::ConnectionView {
    let (connection_state, replication_state) = conn_state_view(peer.conn);
    let sync = peer.resync.map(|r| sf::SyncProgress {
        rs_total_sectors: r.total_sectors,
        rs_failed_sectors: 0,
        rs_same_csum_sectors: r.same_csum_sectors,
        rs_dt_start_ms: r.elapsed_ms,
        rs_paused_ms: r.paused_ms,
        rs_dt0_ms: r.dt0_ms,
        rs_db0_sectors: r.db0_sectors,
        rs_dt1_ms: r.dt1_ms,
        rs_db1_sectors: r.db1_sectors,
        want_kib_per_sec: r.want_kib_per_sec,
        verify: r.verify.map(|v| sf::VerifyProgress {
            ov_start_sector: v.start_sector,
            ov_stop_sector: v.stop_sector,
            ov_position: v.position,
            ov_left: v.left_sectors,
            ov_skipped: 0,
        }),
    });
    sf::ConnectionView {
        name: peer.name.clone(),
        peer_node_id: 1,
        connection_state,
        peer_role: role_view(peer.peer_role),
        tls: false,
        congested: false,
        ap_in_flight_sectors: peer.ap_in_flight_sectors,
        rs_in_flight_sectors: peer.rs_in_flight_sectors,
        paths: vec![sf::PathView {
            local: peer.own_address,
            remote: peer.peer_address,
            established: peer.conn >= ConnState::WfReportParams,
        }],
        peer_device: sf::PeerDeviceView {
            volume: 0,
            replication_state,
            peer_disk_state: disk_state_view(peer.peer_disk),
            peer_client: false,
            resync_suspended: sf::ResyncSuspended {
                user: peer.sync_paused_by_user,
                peer: peer.sync_paused_by_peer,
                ..Default::default()
            },
            received_kib: peer.received_kib,
            sent_kib: peer.sent_kib,
            out_of_sync_kib,
            pending: peer.pending,
            unacked: peer.unacked,
            peer_uuid_stable: false,
            sync,
        },
    }
}

/// The configured peer when the engine reports none: StandAlone, nothing known.
fn standalone_view(name: &str, out_of_sync_kib: u64) -> sf::ConnectionView {
    sf::ConnectionView {
        name: name.to_string(),
        peer_node_id: 1,
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
            out_of_sync_kib,
            pending: 0,
            unacked: 0,
            peer_uuid_stable: false,
            sync: None,
        },
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
            while let Ok(event) = updates.recv().await {
                let lines = match event {
                    crate::resource_loop::ResourceEvent::State(new) => {
                        let lines = sf::events2_changes(Some(&old), Some(&new), statistics);
                        old = *new;
                        lines
                    }
                    crate::resource_loop::ResourceEvent::Helper(helper) => {
                        let peer = old
                            .connections
                            .first()
                            .map(|c| (c.peer_node_id, c.name.as_str()));
                        vec![sf::event_helper(&sf::HelperEvent {
                            resource: &old.name,
                            peer,
                            volume: Some(0),
                            minor: None,
                            helper,
                            status: None,
                        })]
                    }
                };
                for line in lines {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use udrbd_core::{PeerStatus, ResourceConfig, ResyncStatus, Role};

    fn resource() -> ResolvedResource {
        let text = "resource r0 {\n  on alice { device minor 0; disk /tmp/a.img; address 127.0.0.31:7000; meta-disk internal; }\n  on bob { device minor 0; disk /tmp/b.img; address 127.0.0.32:7000; meta-disk internal; }\n}\n";
        Config::parse_str("t.res", text)
            .unwrap()
            .resource_for_node("r0", "alice")
            .unwrap()
    }

    fn peer(conn: ConnState) -> PeerStatus {
        PeerStatus {
            name: "bob".into(),
            own_address: "127.0.0.31:7000".parse().unwrap(),
            peer_address: "127.0.0.32:7000".parse().unwrap(),
            conn,
            peer_role: Role::Secondary,
            peer_disk: udrbd_core::DiskState::UpToDate,
            sent_kib: 100,
            received_kib: 7,
            pending: 2,
            unacked: 3,
            ap_in_flight_sectors: 16,
            rs_in_flight_sectors: 64,
            resync: None,
            split_brain: false,
            sync_paused_by_user: false,
            sync_paused_by_peer: false,
            last_error: None,
        }
    }

    /// A real engine's view (Secondary, diskless, the stub peer) with the connection replaced
    /// by one built from `p`, and a 1 GiB UpToDate disk.
    fn view(p: Option<&PeerStatus>, out_of_sync_kib: u64) -> sf::ResourceView {
        let r = resource();
        let engine = Resource::new(ResourceConfig::new("r0", 0), [7; 32]);
        let mut v = resource_view(&engine, &r);
        v.role = sf::Role::Primary;
        v.device.disk_state = sf::DiskState::UpToDate;
        v.device.size_kib = 1 << 20;
        v.connections = connections_view(p, &r, out_of_sync_kib);
        v
    }

    #[test]
    fn without_peer_status_the_peer_is_standalone() {
        let text = sf::status_text_all(&[view(None, 0)], false, false, 80);
        assert_eq!(
            text,
            "r0 role:Primary\n  disk:UpToDate open:no\n  bob connection:StandAlone\n\n"
        );
    }

    #[test]
    fn every_84_connection_state_maps() {
        for conn in ConnState::ALL {
            let (c, r) = conn_state_view(conn);
            if conn >= ConnState::Connected {
                assert_eq!(c, sf::ConnState::Connected, "{conn:?}");
                assert_ne!(r, sf::ReplState::Off, "{conn:?}");
                if conn > ConnState::Connected {
                    assert_eq!(r.as_str(), conn.name(), "{conn:?}");
                }
            } else {
                assert_eq!(r, sf::ReplState::Off, "{conn:?}");
                if conn < ConnState::WfConnection {
                    assert_eq!(c.as_str(), conn.name(), "{conn:?}");
                } else {
                    assert_eq!(c, sf::ConnState::Connecting, "{conn:?}");
                }
            }
        }
    }

    #[test]
    fn wf_connection_is_connecting_with_an_unestablished_path() {
        let p = peer(ConnState::WfConnection);
        let v = view(Some(&p), 0);
        let c = &v.connections[0];
        assert_eq!(c.connection_state, sf::ConnState::Connecting);
        assert_eq!(c.paths.len(), 1);
        assert!(!c.paths[0].established);
        assert_eq!(
            sf::status_text_all(&[v], false, false, 80),
            "r0 role:Primary\n  disk:UpToDate open:no\n  bob connection:Connecting\n\n"
        );
    }

    #[test]
    fn connected_shows_the_peer_and_statistics() {
        let p = peer(ConnState::Connected);
        let v = view(Some(&p), 0);
        let c = &v.connections[0];
        assert!(c.paths[0].established);
        assert_eq!(c.ap_in_flight_sectors, 16);
        assert_eq!(c.rs_in_flight_sectors, 64);
        assert_eq!(
            sf::status_text_all(std::slice::from_ref(&v), false, false, 80),
            "r0 role:Primary\n  disk:UpToDate open:no\n  bob role:Secondary\n    peer-disk:UpToDate\n\n"
        );
        let stats = sf::status_text_all(&[v], true, true, 200);
        assert!(stats.contains("received:7 sent:100"), "{stats}");
        assert!(stats.contains("pending:2 unacked:3"), "{stats}");
    }

    #[test]
    fn a_resync_shows_done_and_eta() {
        let mut p = peer(ConnState::SyncSource);
        p.peer_disk = udrbd_core::DiskState::Inconsistent;
        // 1 GiB to resync, half done; 3 s window moved 96 MiB: 32 MiB/s, 512 MiB left: 16 s.
        p.resync = Some(ResyncStatus {
            total_sectors: 2 << 20,
            left_sectors: 1 << 20,
            elapsed_ms: 16_000,
            paused_ms: 0,
            dt0_ms: 18_000,
            db0_sectors: 18 * 32 * 2048,
            dt1_ms: 3_000,
            db1_sectors: 3 * 32 * 2048,
            want_kib_per_sec: 32 * 1024,
            same_csum_sectors: 4096,
            verify: None,
        });
        let v = view(Some(&p), 512 * 1024);
        let text = sf::status_text_all(std::slice::from_ref(&v), false, false, 80);
        assert_eq!(
            text,
            "r0 role:Primary\n  disk:UpToDate open:no\n  bob role:Secondary\n    replication:SyncSource peer-disk:Inconsistent done:50.00\n\n"
        );
        let verbose = sf::status_text_all(std::slice::from_ref(&v), true, true, 300);
        assert!(verbose.contains("dbdt1:32.00"), "{verbose}");
        assert!(verbose.contains("eta:16"), "{verbose}");
        let json = sf::status_json(&[v]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        let pd = &parsed[0]["connections"][0]["peer_devices"][0];
        assert_eq!(pd["replication-state"], "SyncSource");
        assert_eq!(pd["percent-in-sync"], 50.0);
        assert_eq!(pd["rs-same-csum"], 4096);
    }
}
