//! One resource's event loop: a thread with a current-thread tokio runtime that owns the
//! engine, the NBD listener and connections, the backing devices and their IO threads.
//!
//! Everything that touches the engine runs on this one thread (no locks): NBD connection
//! tasks, the disk-completion task, the timer task and control commands all borrow the shared
//! state briefly, feed one input, and `pump` the engine's outputs to where they go.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, oneshot};
use udrbd_core::{
    AdminCommand, AttachParams, BlockCompletion, BlockError, BlockRequest, BlockRequestId,
    CommandError, CommandId, ConnState, DiskCompletion, DiskState, Event, Input, Instant, Output,
    Resource, ResourceConfig, Role,
};
use udrbd_meta::MetaDiskKind;
use udrbd_nbd as nbd;

use crate::backing::{Backing, IoPool};
use crate::config::{MetaDisk, ResolvedResource};
use crate::control::{ControlReply, ControlRequest};
use crate::meta_io::{Access, MetaDevice};
use crate::peer_net::{NetEvent, PeerNet};
use crate::uring::Uring;

/// IO threads per resource: as many as an NBD client's queue depth commonly is (QD32), so
/// O_DIRECT reads are not limited to fewer concurrent IOs than the client offers.
const IO_THREADS: usize = 32;

/// What `events` subscribers receive: a state snapshot after a batch of changes, or a
/// handler call.
#[derive(Clone, Debug)]
pub enum ResourceEvent {
    /// The resource's state now.
    State(Box<crate::status_format::ResourceView>),
    /// The handler of this name was started.
    Helper(&'static str),
}

/// Messages from the daemon's main thread.
pub enum LoopMessage {
    /// A control request; the reply goes back on the channel.
    Control(ControlRequest, oneshot::Sender<ControlReply>),
    /// The resource's state for `status`.
    View(oneshot::Sender<crate::status_format::ResourceView>),
    /// The resource's state now and a subscription to its later states (for `events`).
    Subscribe(
        oneshot::Sender<(
            crate::status_format::ResourceView,
            tokio::sync::broadcast::Receiver<ResourceEvent>,
        )>,
    ),
    /// Close NBD clients, take the resource down, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// The resource's state shared by its tasks.
struct Shared {
    engine: Resource,
    resource: ResolvedResource,
    backing: Option<Arc<Backing>>,
    /// The backing device's data lives in memory (tmpfs): its writes never wait for a device.
    backing_in_memory: bool,
    /// io_uring on this thread when available, otherwise the IO threads.
    uring: Option<Uring>,
    pool: IoPool,
    disk_tx: UnboundedSender<DiskCompletion>,
    origin: std::time::Instant,
    waiters: BTreeMap<CommandId, oneshot::Sender<Result<(), CommandError>>>,
    /// Engine request id -> (connection, NBD request id).
    routes: BTreeMap<BlockRequestId, (u64, nbd::RequestId)>,
    connections: BTreeMap<u64, UnboundedSender<(nbd::RequestId, nbd::Completion)>>,
    next_request: u64,
    next_connection: u64,
    /// The only resource of the daemon: the default export "" maps to it.
    default_export: bool,
    timer: Rc<Notify>,
    /// The deadline the timer task sleeps until (it is woken only when this changes).
    armed: Option<Instant>,
    shutting_down: bool,
    /// State snapshots for `events` subscribers, sent after every batch of state changes.
    events: tokio::sync::broadcast::Sender<ResourceEvent>,
    /// Openers at the last snapshot (`open:` is reported by events too).
    last_openers: u32,
    /// The peer sockets.
    net: PeerNet,
    /// The daemon's configuration file (`DRBD_CONF` of handlers).
    config_path: PathBuf,
}

type SharedRef = Rc<RefCell<Shared>>;

impl Shared {
    fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_nanos() as u64)
    }

    /// Feeds one input and routes every output.
    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.engine.handle(now, input);
        self.pump();
    }

    fn pump(&mut self) {
        self.pump_outputs(false);
    }

    /// Routes the engine's outputs (`state_changed`: a state change was routed before).
    fn pump_outputs(&mut self, mut state_changed: bool) {
        let mut inline_done = Vec::new();
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Disk(op) => {
                    let backing = self
                        .backing
                        .clone()
                        .expect("disk IO without a backing device");
                    // FUA writes go to the IO threads (pwritev2 with RWF_DSYNC): through
                    // io_uring, RWF_DSYNC writes were lost by the power-cut test (nbdkit cache
                    // behind nbdfuse), while pwritev2 keeps them. Everything else, including
                    // flushes, goes through io_uring (a thread hop per write cost a
                    // replicating peer ~15% of its bandwidth), except the writes and flushes
                    // of a backing in memory, done right here (below).
                    let fua = matches!(op.kind, udrbd_core::DiskOpKind::Write { fua: true, .. });
                    let inline = matches!(
                        op.kind,
                        udrbd_core::DiskOpKind::Write { .. } | udrbd_core::DiskOpKind::Flush
                    );
                    if inline && self.backing_in_memory {
                        // A write to memory (tmpfs) is a copy that cannot wait for a device,
                        // and a flush of it returns at once: done here, they cost no io_uring
                        // worker thread (tmpfs has no non-blocking writes, so the ring hands
                        // each to a worker) and no wake-ups. Their completions are fed after
                        // this batch of outputs, so a flush still completes after every write
                        // completed before it.
                        let device = backing.device_for(op.area);
                        let result = crate::backing::execute(device, &op);
                        inline_done.push(DiskCompletion { id: op.id, result });
                        continue;
                    }
                    // The size of the backing device (`resize`) is no io_uring operation.
                    let capacity = matches!(op.kind, udrbd_core::DiskOpKind::Capacity);
                    match self.uring.as_mut() {
                        Some(ring) if !fua && !capacity => ring.push(op, backing),
                        _ => self.pool.submit(op, backing, self.disk_tx.clone()),
                    }
                }
                Output::Block(c) => self.route_completion(c),
                Output::Event(Event::CommandDone { id, result }) => {
                    if let Some(w) = self.waiters.remove(&id) {
                        let _ = w.send(result);
                    }
                }
                Output::Event(Event::DiskReleased { .. }) => {
                    if self.engine.status().disk == DiskState::Diskless {
                        // Every IO of the old attach returned: close the devices.
                        self.backing = None;
                    }
                }
                Output::Event(Event::StateChanged) => {
                    let s = self.engine.status();
                    match &s.peer {
                        Some(p) => tracing::info!(
                            resource = %s.name,
                            role = s.role.name(),
                            disk = s.disk.name(),
                            conn = p.conn.name(),
                            peer = p.peer_role.name(),
                            peer_disk = p.peer_disk.name(),
                            "state"
                        ),
                        None => {
                            tracing::info!(resource = %s.name, role = s.role.name(), disk = s.disk.name(), "state")
                        }
                    }
                    state_changed = true;
                }
                Output::Event(Event::Handler { name }) => {
                    crate::handlers::run(name, &self.resource, &self.config_path);
                    // events2 shows the call (`call helper ... helper:NAME`).
                    let _ = self.events.send(ResourceEvent::Helper(name));
                }
                Output::Event(Event::Log { level, message }) => match level {
                    udrbd_core::LogLevel::Info => tracing::info!("{message}"),
                    udrbd_core::LogLevel::Warn => tracing::warn!("{message}"),
                    udrbd_core::LogLevel::Error => tracing::error!("{message}"),
                },
                Output::Peer(out) => self.net.execute(out),
            }
        }
        self.net.flush();
        if let Some(ring) = self.uring.as_mut()
            && let Err(e) = ring.submit()
        {
            tracing::error!("io_uring submit failed: {e}");
        }
        if !inline_done.is_empty() {
            // The completions of writes done inline, and whatever they lead to.
            let now = self.now();
            for c in inline_done {
                self.engine.handle(now, Input::Disk(c));
            }
            return self.pump_outputs(state_changed);
        }
        self.after_outputs(state_changed);
    }

    /// Once per batch of outputs: state snapshots for subscribers, the timer.
    fn after_outputs(&mut self, state_changed: bool) {
        // Called on every request: only cheap accessors here, no `status()` snapshot.
        let openers = self.engine.openers();
        if (state_changed || openers != self.last_openers) && self.events.receiver_count() > 0 {
            let _ = self.events.send(ResourceEvent::State(Box::new(
                crate::daemon::resource_view(&self.engine, &self.resource),
            )));
        }
        self.last_openers = openers;
        // Wake the timer task only when the deadline moved: a wake-up per request would cost
        // a task switch on the data path.
        let deadline = self.engine.poll_timeout();
        if deadline != self.armed {
            self.armed = deadline;
            self.timer.notify_one();
        }
    }

    fn route_completion(&mut self, c: BlockCompletion) {
        let Some((conn, id)) = self.routes.remove(&c.id) else {
            return;
        };
        let result = match c.result {
            Ok(Some(data)) => nbd::Completion::Data(data),
            Ok(None) => nbd::Completion::Done,
            Err(BlockError::OutOfRange) => nbd::Completion::Error(nbd::Errno::Inval),
            Err(BlockError::Busy) => nbd::Completion::Error(nbd::Errno::NoMem),
            Err(BlockError::NotPrimary) => nbd::Completion::Error(nbd::Errno::Perm),
            Err(BlockError::Io) => nbd::Completion::Error(nbd::Errno::Io),
        };
        if let Some(tx) = self.connections.get(&conn) {
            let _ = tx.send((id, result));
        }
    }

    /// Starts an engine command; the receiver yields its result.
    fn command(&mut self, cmd: AdminCommand) -> oneshot::Receiver<Result<(), CommandError>> {
        let (tx, rx) = oneshot::channel();
        let now = self.now();
        let id = self.engine.command(now, cmd);
        self.waiters.insert(id, tx);
        self.pump();
        rx
    }

    /// Opens the backing (and meta-data) device for an attach.
    fn open_backing(&mut self) -> Result<AttachParams, ControlReply> {
        let name = self.resource.name.clone();
        let Some(disk) = self.resource.disk.clone() else {
            return Err(ControlReply::error(
                format!("{name}: has no disk on this node (disk none)"),
                20,
            ));
        };
        let open = |path: &Path, what: &str| {
            MetaDevice::open(path, Access::Write).map_err(|e| {
                ControlReply::error(
                    format!("{name}: Failure: (104) Can not open {what} device: {e}"),
                    10,
                )
            })
        };
        let data = open(&disk, "backing")?;
        let (meta, meta_kind) = match &self.resource.meta_disk {
            MetaDisk::Internal => (None, MetaDiskKind::Internal),
            MetaDisk::FlexExternal(p) => (Some(open(p, "meta")?), MetaDiskKind::FlexExternal),
            MetaDisk::Indexed(p, n) => (Some(open(p, "meta")?), MetaDiskKind::Indexed(*n)),
        };
        let params = AttachParams {
            data_device_bytes: data.size_bytes(),
            meta_device_bytes: meta.as_ref().unwrap_or(&data).size_bytes(),
            meta_kind,
        };
        // Inline IO needs every device in memory: a meta-data device on a disk would block
        // the loop.
        self.backing_in_memory =
            in_memory(data.file()) && meta.as_ref().is_none_or(|m| in_memory(m.file()));
        let submit_async = may_block_submissions(data.file())
            || meta
                .as_ref()
                .is_some_and(|m| may_block_submissions(m.file()));
        self.backing = Some(Arc::new(Backing {
            data,
            meta,
            submit_async,
        }));
        Ok(params)
    }

    fn export_answer(&self, name: &str) -> nbd::export::ExportAnswer {
        use nbd::export::{Export, ExportAnswer, ExportFlags, Refusal};
        let res = &self.resource.name;
        if name != res && !(name.is_empty() && self.default_export) {
            return ExportAnswer::Refuse(Refusal::unknown(format!(
                "no export named '{name}' (this socket serves '{res}')"
            )));
        }
        let status = self.engine.status();
        if self.shutting_down {
            return ExportAnswer::Refuse(Refusal::policy(format!("resource {res} is going down")));
        }
        if status.role != Role::Primary {
            return ExportAnswer::Refuse(Refusal::policy(format!(
                "resource {res} is {}: only a Primary serves its device (udrbd primary {res})",
                status.role.name()
            )));
        }
        ExportAnswer::Serve(Export {
            name: res.clone(),
            description: Some(format!(
                "udrbd resource {res} (minor {})",
                self.resource.minor
            )),
            size: status.size_bytes,
            flags: ExportFlags::block_device(),
        })
    }
}

/// Whether `file` lives on a file system with one of `magics` (fstatfs's f_type).
// f_type and the constants have architecture-dependent integer types.
#[allow(clippy::unnecessary_cast)]
fn on_file_system(file: &std::fs::File, magics: &[i64]) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|s| magics.contains(&(s.f_type as i64)))
}

/// Whether `file` lives on tmpfs (its writes are memory copies that never wait for a device).
#[allow(clippy::unnecessary_cast)]
fn in_memory(file: &std::fs::File) -> bool {
    on_file_system(file, &[libc::TMPFS_MAGIC as i64])
}

/// Whether `file` lives on a file system whose writes may block a non-blocking submission
/// (FUSE, NFS): see [`Backing::submit_async`].
#[allow(clippy::unnecessary_cast)]
fn may_block_submissions(file: &std::fs::File) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    on_file_system(file, &[FUSE_SUPER_MAGIC, libc::NFS_SUPER_MAGIC as i64])
}

/// Runs the loop of one resource until shutdown. Blocks the calling thread.
pub fn run(
    resource: ResolvedResource,
    run_dir: PathBuf,
    config_path: PathBuf,
    default_export: bool,
    auto_up: bool,
    messages: UnboundedReceiver<LoopMessage>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(
        &runtime,
        run_loop(
            resource,
            run_dir,
            config_path,
            default_export,
            auto_up,
            messages,
        ),
    );
}

/// The engine's disk options of a `disk` section (disk-timeout 0 is off).
fn disk_options(disk: &crate::config::DiskOptions) -> udrbd_core::DiskOptions {
    udrbd_core::DiskOptions {
        al_extents: disk.al_extents as u16,
        on_io_error: match disk.on_io_error {
            crate::config::OnIoError::PassOn => udrbd_core::OnIoError::PassOn,
            crate::config::OnIoError::Detach => udrbd_core::OnIoError::Detach,
            crate::config::OnIoError::CallLocalIoError => udrbd_core::OnIoError::CallLocalIoError,
        },
        disk_timeout: (!disk.disk_timeout.is_zero()).then_some(disk.disk_timeout),
        size_sect: disk.size_sectors,
    }
}

async fn run_loop(
    resource: ResolvedResource,
    run_dir: PathBuf,
    config_path: PathBuf,
    default_export: bool,
    auto_up: bool,
    mut messages: UnboundedReceiver<LoopMessage>,
) {
    let (disk_tx, disk_rx) = unbounded_channel();
    let mut config = ResourceConfig::new(&resource.name, resource.minor);
    config.set_disk_options(disk_options(&resource.options.disk));
    // The daemon checked the mapping before it started the loops.
    config.net = match crate::engine_config::net_config(&resource) {
        Ok(net) => Some(net),
        Err(e) => {
            tracing::error!("{e}: the resource cannot connect");
            None
        }
    };
    let (net_tx, net_rx) = unbounded_channel();
    let mut seed = [0u8; 32];
    fill_seed(&mut seed);
    let timer = Rc::new(Notify::new());
    // UDRBD_IO=threads forces the IO-thread backend (for comparisons and diagnosis).
    let threads_only = std::env::var("UDRBD_IO").is_ok_and(|v| v == "threads");
    let uring = match Uring::new().and_then(|r| {
        if threads_only {
            Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
        } else {
            Ok(r)
        }
    }) {
        Ok(ring) => Some(ring),
        Err(e) => {
            if !crate::uring::unavailable(&e) {
                tracing::warn!("io_uring setup failed ({e}); using IO threads");
            }
            None
        }
    };
    let uring_eventfd = uring.as_ref().and_then(|r| r.eventfd().try_clone().ok());
    let shared = Rc::new(RefCell::new(Shared {
        uring,
        engine: Resource::new(config, seed),
        pool: IoPool::new(
            &resource.name,
            if uring_eventfd.is_some() {
                1
            } else {
                IO_THREADS
            },
        ),
        resource: resource.clone(),
        backing: None,
        backing_in_memory: false,
        disk_tx,
        origin: std::time::Instant::now(),
        waiters: BTreeMap::new(),
        routes: BTreeMap::new(),
        connections: BTreeMap::new(),
        next_request: 1,
        next_connection: 1,
        default_export,
        timer: timer.clone(),
        armed: None,
        events: tokio::sync::broadcast::channel(256).0,
        last_openers: 0,
        shutting_down: false,
        net: PeerNet::new(net_tx, crate::peer_net::socket_options(&resource)),
        config_path,
    }));
    tokio::task::spawn_local(net_task(shared.clone(), net_rx));
    tokio::task::spawn_local(disk_task(shared.clone(), disk_rx));
    if let Some(fd) = uring_eventfd {
        tokio::task::spawn_local(uring_task(shared.clone(), fd));
    }
    tokio::task::spawn_local(timer_task(shared.clone(), timer));
    let socket = run_dir.join(format!("{}.nbd", resource.name));
    let _ = std::fs::remove_file(&socket);
    match UnixListener::bind(&socket) {
        Ok(listener) => {
            tokio::task::spawn_local(nbd_listener(shared.clone(), listener));
        }
        Err(e) => tracing::error!(socket = %socket.display(), "cannot listen for NBD clients: {e}"),
    }
    if let Some(addr) = resource.options.nbd.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::task::spawn_local(nbd_tcp_listener(shared.clone(), listener));
            }
            Err(e) => tracing::error!(%addr, "cannot listen for NBD clients: {e}"),
        }
    }
    if auto_up {
        let reply = control(&shared, ControlRequest::new("up", Some(&resource.name))).await;
        if !reply.ok {
            tracing::error!(resource = %resource.name, "up failed: {}", reply.error);
        }
    }
    while let Some(message) = messages.recv().await {
        match message {
            LoopMessage::Control(request, reply) => {
                let shared = shared.clone();
                tokio::task::spawn_local(async move {
                    let _ = reply.send(control(&shared, request).await);
                });
            }
            LoopMessage::Subscribe(reply) => {
                let s = shared.borrow();
                let view = crate::daemon::resource_view(&s.engine, &s.resource);
                let _ = reply.send((view, s.events.subscribe()));
            }
            LoopMessage::View(reply) => {
                let s = shared.borrow();
                let _ = reply.send(crate::daemon::resource_view(&s.engine, &s.resource));
            }
            LoopMessage::Shutdown(done) => {
                shutdown(&shared).await;
                let _ = std::fs::remove_file(&socket);
                let _ = done.send(());
                return;
            }
        }
    }
}

fn fill_seed(seed: &mut [u8; 32]) {
    // Generation UUIDs must differ between nodes and runs: seed from the OS.
    if let Ok(bytes) = std::fs::read("/proc/sys/kernel/random/uuid") {
        for (i, b) in bytes.iter().enumerate() {
            seed[i % 32] ^= b;
        }
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, b) in t.to_le_bytes().iter().enumerate() {
        seed[i + 8] ^= b;
    }
    seed[0] ^= std::process::id() as u8;
}

async fn disk_task(shared: SharedRef, mut rx: UnboundedReceiver<DiskCompletion>) {
    while let Some(c) = rx.recv().await {
        let mut s = shared.borrow_mut();
        let now = s.now();
        s.engine.handle(now, Input::Disk(c));
        // Batch whatever else already completed.
        while let Ok(c) = rx.try_recv() {
            s.engine.handle(now, Input::Disk(c));
        }
        s.pump();
    }
}

/// Feeds io_uring completions to the engine whenever the ring's eventfd fires.
async fn uring_task(shared: SharedRef, eventfd: std::os::fd::OwnedFd) {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
    // the AsyncFd's whole lifetime.
    #[allow(unsafe_code)]
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(eventfd, tokio::io::Interest::READABLE)
    };
    let fd = match registered.map_err(std::io::Error::from) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot watch the io_uring eventfd: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        guard.clear_ready();
        let mut s = shared.borrow_mut();
        let done = s.uring.as_mut().map(Uring::reap).unwrap_or_default();
        if done.is_empty() {
            continue;
        }
        let now = s.now();
        for c in done {
            s.engine.handle(now, Input::Disk(c));
        }
        s.pump();
    }
}

/// Feeds the network driver's reports to the engine. Each input is pumped before the next
/// is admitted: an output (a `Close`) may decide whether the next report reaches the engine.
async fn net_task(shared: SharedRef, mut rx: UnboundedReceiver<NetEvent>) {
    while let Some(event) = rx.recv().await {
        let mut s = shared.borrow_mut();
        if let Some(input) = s.net.on_event(event) {
            s.handle(Input::Peer(input));
        }
    }
}

async fn timer_task(shared: SharedRef, notify: Rc<Notify>) {
    loop {
        let deadline = {
            let s = shared.borrow();
            s.engine
                .poll_timeout()
                .map(|at| s.origin + std::time::Duration::from_nanos(at.0))
        };
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => shared.borrow_mut().handle(Input::Timeout),
                    _ = notify.notified() => {}
                }
            }
            None => notify.notified().await,
        }
    }
}

/// Runs one control request against this resource.
async fn control(shared: &SharedRef, request: ControlRequest) -> ControlReply {
    let name = shared.borrow().resource.name.clone();
    if let Some(reply) = query(&shared.borrow().engine, &request.verb) {
        return reply;
    }
    let result = match request.verb.as_str() {
        "up" => return up(shared, &name).await,
        "adjust" => return adjust(shared, &name).await,
        "attach" => match attach(shared).await {
            Ok(r) => Ok(r),
            Err(reply) => return reply,
        },
        "down" => {
            let r = run_command(shared, AdminCommand::Down).await;
            // Down disconnects in the engine; make sure, as `drbdsetup down` does.
            if matches!(r, Ok(Ok(())))
                && peer_conn(&shared.borrow().engine) != ConnState::StandAlone
            {
                run_command(shared, AdminCommand::Disconnect).await
            } else {
                r
            }
        }
        "wait-connect" => return wait_connect(shared, &name, request.timeout_secs).await,
        verb => match admin_command(&request) {
            Some(cmd) => run_command(shared, cmd).await,
            None => return ControlReply::error(format!("{name}: unknown verb '{verb}'"), 20),
        },
    };
    match result {
        Ok(Ok(())) => ControlReply::ok(String::new()),
        Ok(Err(e)) => command_error_reply(&name, e),
        Err(_) => ControlReply::error(format!("{name}: the resource loop stopped"), 20),
    }
}

/// drbdadm up: attach (if there is a disk and it is not attached), then connect (if the peer
/// is StandAlone).
async fn up(shared: &SharedRef, name: &str) -> ControlReply {
    let s = shared.borrow().engine.status();
    let has_disk = shared.borrow().resource.disk.is_some();
    if s.disk == DiskState::Diskless && has_disk {
        match attach(shared).await {
            Ok(Ok(())) => {}
            Err(reply) => return reply,
            Ok(Err(e)) => return command_error_reply(name, e),
        }
    }
    let standalone = shared
        .borrow()
        .engine
        .status()
        .peer
        .is_some_and(|p| p.conn == ConnState::StandAlone);
    if !standalone {
        return ControlReply::ok(String::new());
    }
    let connect = AdminCommand::Connect {
        discard_my_data: false,
    };
    match run_command(shared, connect).await {
        Ok(Ok(())) => ControlReply::ok(String::new()),
        Ok(Err(e)) => command_error_reply(name, e),
        Err(_) => ControlReply::error(format!("{name}: the resource loop stopped"), 20),
    }
}

/// drbdadm adjust: the resource as the configuration file says now. The file is read again;
/// the `disk` options (disk-timeout, on-io-error; al-extents at the next attach) and the `net`
/// options change at once, `handlers` for the next call, the socket options for the next
/// connection. Net options the handshake agreed on (protocol, cram-hmac-alg, the after-sb
/// policies, verify-alg, the addresses) need a new connection: a connected resource
/// disconnects and connects again (DRBD changes some of them on a live connection). Then it
/// is brought up as `up` does. What cannot change under a running resource (its backing disk
/// while attached, its minor, its NBD export) is refused with the way to change it.
async fn adjust(shared: &SharedRef, name: &str) -> ControlReply {
    let (path, node, old) = {
        let s = shared.borrow();
        (
            s.config_path.clone(),
            s.resource.node.clone(),
            s.resource.clone(),
        )
    };
    let new = match crate::config::Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|c| c.resource_for_node(name, &node).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return ControlReply::error(format!("{name}: adjust: {e}"), 10),
    };
    let net = match crate::engine_config::net_config(&new) {
        Ok(net) => net,
        Err(e) => return ControlReply::error(format!("adjust: {e}"), 10),
    };
    let attached = shared.borrow().engine.status().disk != DiskState::Diskless;
    let refuse = |what: &str, how: &str| {
        ControlReply::error(format!("{name}: adjust: {what} changed; {how}"), 10)
    };
    if attached && (old.disk != new.disk || old.meta_disk != new.meta_disk) {
        return refuse("the backing disk", "detach it first, then adjust");
    }
    if old.minor != new.minor || old.device != new.device {
        return refuse(
            "the device",
            "take the resource down and restart the daemon",
        );
    }
    if old.options.nbd != new.options.nbd {
        return refuse("the nbd section", "restart the daemon");
    }
    let mut output = String::new();
    let size = new.options.disk.size_sectors;
    {
        let mut s = shared.borrow_mut();
        let now = s.now();
        let disk = &new.options.disk;
        s.engine.change_disk_options(now, disk_options(disk));
        if attached && old.options.disk.al_extents != disk.al_extents {
            output.push_str(&format!(
                "{name}: al-extents {} takes effect at the next attach\n",
                disk.al_extents
            ));
        }
        s.net.set_options(crate::peer_net::socket_options(&new));
        s.resource = new;
        s.pump();
    }
    let reconnect = {
        let mut s = shared.borrow_mut();
        let now = s.now();
        let r = s.engine.change_net_options(now, net.clone());
        s.pump();
        r.err()
    };
    if let Some(changed) = reconnect {
        output.push_str(&format!(
            "{name}: {} changed: reconnecting\n",
            changed.join(", ")
        ));
        match run_command(shared, AdminCommand::Disconnect).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return command_error_reply(name, e),
            Err(_) => return ControlReply::error(format!("{name}: the resource loop stopped"), 20),
        }
        let mut s = shared.borrow_mut();
        let now = s.now();
        if let Err(still) = s.engine.change_net_options(now, net) {
            return ControlReply::error(
                format!("{name}: adjust: {} could not change", still.join(", ")),
                10,
            );
        }
        s.pump();
    }
    let reply = up(shared, name).await;
    if !reply.ok {
        return reply;
    }
    // A new `size` on an attached disk is a `resize --size`, as drbdadm's adjust runs it.
    if attached && old.options.disk.size_sectors != size {
        let resize = AdminCommand::Resize {
            assume_peer_has_space: false,
            assume_clean: false,
            size_sect: Some(size),
        };
        match run_command(shared, resize).await {
            Ok(Ok(())) => output.push_str(&format!("{name}: size changed: resized\n")),
            Ok(Err(e)) => return command_error_reply(name, e),
            Err(_) => return ControlReply::error(format!("{name}: the resource loop stopped"), 20),
        }
    }
    ControlReply::ok(output)
}

/// The engine command of a verb that maps to exactly one.
fn admin_command(request: &ControlRequest) -> Option<AdminCommand> {
    Some(match request.verb.as_str() {
        "detach" => AdminCommand::Detach {
            force: request.force,
        },
        "primary" => AdminCommand::Primary {
            force: request.force,
        },
        "secondary" => AdminCommand::Secondary,
        "connect" => AdminCommand::Connect {
            discard_my_data: request.discard_my_data,
        },
        "disconnect" => AdminCommand::Disconnect,
        "invalidate" => AdminCommand::Invalidate,
        "invalidate-remote" => AdminCommand::InvalidateRemote,
        "new-current-uuid" => AdminCommand::NewCurrentUuid {
            clear_bitmap: request.clear_bitmap,
        },
        "outdate" => AdminCommand::Outdate,
        "pause-sync" => AdminCommand::PauseSync,
        "resume-sync" => AdminCommand::ResumeSync,
        "suspend-io" => AdminCommand::SuspendIo,
        "resume-io" => AdminCommand::ResumeIo,
        "verify" => AdminCommand::Verify {
            start_sector: request.start_sector,
            stop_sector: request.stop_sector,
        },
        "resize" => AdminCommand::Resize {
            assume_peer_has_space: request.assume_peer_has_space,
            assume_clean: request.assume_clean,
            size_sect: request.size_sectors,
        },
        _ => return None,
    })
}

/// drbdadm 8.4's one-line state queries: `role` (local/peer), `cstate`, `dstate` (local/peer).
fn query(engine: &Resource, verb: &str) -> Option<ControlReply> {
    if !matches!(verb, "role" | "cstate" | "dstate") {
        return None;
    }
    let s = engine.status();
    let (conn, peer_role, peer_disk) = match &s.peer {
        Some(p) => (p.conn, p.peer_role, p.peer_disk),
        None => (ConnState::StandAlone, Role::Unknown, DiskState::DUnknown),
    };
    let line = match verb {
        "role" => format!("{}/{}", s.role.name(), peer_role.name()),
        "cstate" => conn.name().to_string(),
        _ => format!("{}/{}", s.disk.name(), peer_disk.name()),
    };
    Some(ControlReply::ok(line + "\n"))
}

/// The connection state (StandAlone when the engine reports no peer).
fn peer_conn(engine: &Resource) -> ConnState {
    engine
        .status()
        .peer
        .map_or(ConnState::StandAlone, |p| p.conn)
}

/// Waits until the connection is established (Connected or a sync state), at most
/// `timeout_secs` (forever without). A timeout exits 5, as drbdsetup's wait-connect.
async fn wait_connect(shared: &SharedRef, name: &str, timeout_secs: Option<u64>) -> ControlReply {
    let deadline =
        timeout_secs.map(|t| tokio::time::Instant::now() + std::time::Duration::from_secs(t));
    loop {
        if peer_conn(&shared.borrow().engine) >= ConnState::Connected {
            return ControlReply::ok(String::new());
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            let conn = peer_conn(&shared.borrow().engine);
            return ControlReply::error(
                format!(
                    "{name}: timed out after {}s waiting for the connection (cstate {})",
                    timeout_secs.unwrap_or(0),
                    conn.name()
                ),
                WAIT_CONNECT_TIMEOUT_EXIT,
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The exit code of a `wait-connect` that timed out.
pub const WAIT_CONNECT_TIMEOUT_EXIT: u8 = 5;

/// Starts an engine command and waits for its result.
async fn run_command(
    shared: &SharedRef,
    cmd: AdminCommand,
) -> Result<Result<(), CommandError>, oneshot::error::RecvError> {
    let rx = shared.borrow_mut().command(cmd);
    rx.await
}

/// Opens the backing device and attaches it; on failure the devices are closed again.
async fn attach(shared: &SharedRef) -> Result<Result<(), CommandError>, ControlReply> {
    // IO of the previous attach still stuck (a frozen disk): a late write would still land,
    // so the device is not opened again until it returned (the engine says how many).
    let outstanding = shared.borrow().engine.status().stuck_ios;
    if outstanding > 0 {
        return Ok(Err(CommandError::StuckIo { outstanding }));
    }
    let params = shared.borrow_mut().open_backing()?;
    let r = run_command(shared, AdminCommand::Attach(params)).await;
    if !matches!(r, Ok(Ok(()))) {
        let mut s = shared.borrow_mut();
        if s.engine.status().disk == DiskState::Diskless && s.engine.status().stuck_ios == 0 {
            s.backing = None;
        }
    }
    match r {
        Ok(r) => Ok(r),
        Err(_) => {
            let name = shared.borrow().resource.name.clone();
            Err(ControlReply::error(
                format!("{name}: the resource loop stopped"),
                20,
            ))
        }
    }
}

/// DRBD's wording and exit codes for a failed command.
pub fn command_error_reply(name: &str, e: CommandError) -> ControlReply {
    let code = match e {
        CommandError::StateChange(s) => s.exit_code(),
        e if e.err_code().is_some() => 10,
        _ => 20,
    };
    ControlReply::error(format!("{name}: {e}"), code)
}

async fn shutdown(shared: &SharedRef) {
    shared.borrow_mut().shutting_down = true;
    // Close NBD clients: their tasks see the closed channel and end after their in-flight
    // requests complete.
    let conns: Vec<u64> = shared.borrow().connections.keys().copied().collect();
    for c in conns {
        shared.borrow_mut().connections.remove(&c);
    }
    for _ in 0..600 {
        if shared.borrow().engine.openers() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = run_command(shared, AdminCommand::Down).await;
    if let Ok(Err(e)) = r {
        tracing::error!("down at shutdown failed: {e}");
    }
    if peer_conn(&shared.borrow().engine) != ConnState::StandAlone
        && let Ok(Err(e)) = run_command(shared, AdminCommand::Disconnect).await
    {
        tracing::error!("disconnect at shutdown failed: {e}");
    }
    shared.borrow_mut().net.close_all();
}

async fn nbd_listener(shared: SharedRef, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (r, w) = stream.into_split();
                tokio::task::spawn_local(nbd_connection(shared.clone(), r, w));
            }
            Err(e) => {
                tracing::warn!("NBD accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn nbd_tcp_listener(shared: SharedRef, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                tokio::task::spawn_local(nbd_connection(shared.clone(), r, w));
            }
            Err(e) => {
                tracing::warn!("NBD accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The read half of an NBD client's socket, read by readiness so that the bytes go straight
/// into the NBD machine's receive buffer (no copy through a buffer of our own).
trait NbdRead {
    /// Waits until the socket may be readable.
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>>;
    /// Reads what is there without waiting (`WouldBlock` if nothing).
    fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> std::io::Result<usize>;
}

/// A read that returned less than it asked for emptied the socket, so its readiness is
/// cleared at once (as tokio's own `poll_read` does), saving the read that would only have
/// returned EAGAIN: that was every other read of a busy NBD socket. A byte arriving after the
/// read sets readiness again when the runtime next polls, so no wake-up is lost.
macro_rules! nbd_read {
    ($t:ty, $stream:ty) => {
        impl NbdRead for $t {
            async fn readable(&self) -> std::io::Result<()> {
                <$t>::readable(self).await
            }
            fn try_read_buf<B: bytes::BufMut>(&self, buf: &mut B) -> std::io::Result<usize> {
                let stream: &$stream = self.as_ref();
                // One read fills at most the current chunk.
                let asked = buf.chunk_mut().len();
                let mut got = 0;
                let read = stream.try_io(tokio::io::Interest::READABLE, || {
                    got = stream.try_read_buf(buf)?;
                    if got > 0 && got < asked {
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    Ok(got)
                });
                match read {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                    other => other,
                }
            }
        }
    };
}
nbd_read!(tokio::net::unix::OwnedReadHalf, tokio::net::UnixStream);
nbd_read!(tokio::net::tcp::OwnedReadHalf, tokio::net::TcpStream);

/// One NBD client: negotiation, then requests to the engine and replies back.
async fn nbd_connection<R, W>(shared: SharedRef, reader: R, mut writer: W)
where
    R: NbdRead,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut completions) = unbounded_channel();
    let conn_id = {
        let mut s = shared.borrow_mut();
        let id = s.next_connection;
        s.next_connection += 1;
        s.connections.insert(id, tx);
        id
    };
    let mut machine = nbd::ServerConnection::new(nbd::ServerConfig::default());
    let mut opened = false;
    let mut eof = false;
    let mut segments: Vec<bytes::Bytes> = Vec::new();
    let mut unsent = 0u64;
    // Requests handed to the engine whose outputs were not routed yet.
    let mut unpumped = false;
    'conn: loop {
        // Act on everything the machine asked for.
        while let Some(out) = machine.poll_output() {
            match out {
                nbd::Output::Send(t) => {
                    // Gathered and written together below: one syscall for many replies.
                    unsent += t.len();
                    segments.push(t.head);
                    if !t.payload.is_empty() {
                        segments.push(t.payload);
                    }
                }
                nbd::Output::ExportQuery { name, .. } => {
                    let answer = shared.borrow().export_answer(&name);
                    if machine.handle(nbd::Input::ExportAnswer(answer)).is_err() {
                        break 'conn;
                    }
                }
                nbd::Output::ListExports => {
                    let name = shared.borrow().resource.name.clone();
                    let list = vec![nbd::export::ExportListing {
                        name,
                        description: None,
                    }];
                    if machine.handle(nbd::Input::ExportList(list)).is_err() {
                        break 'conn;
                    }
                }
                nbd::Output::Transmission { .. } => {
                    opened = true;
                    shared.borrow_mut().handle(Input::Opened);
                }
                nbd::Output::Request(request) => {
                    submit_request(&shared, conn_id, request);
                    unpumped = true;
                }
                nbd::Output::Close(_) => break 'conn,
            }
        }
        if std::mem::take(&mut unpumped) {
            // Once for all requests of this read: their disk IO goes to the kernel in one
            // io_uring submission (one device kick, a chance to merge) and their packets to
            // the peer in one write, rather than one each.
            shared.borrow_mut().pump();
        }
        if !segments.is_empty() {
            if write_segments(&mut writer, &mut segments).await.is_err() {
                break 'conn;
            }
            if machine
                .handle(nbd::Input::Sent(std::mem::take(&mut unsent)))
                .is_err()
            {
                break 'conn;
            }
            continue;
        }
        let window = machine.receive_window();
        tokio::select! {
            ready = reader.readable(), if window > 0 && !eof => {
                if ready.is_err() {
                    eof = true;
                    continue;
                }
                let mut room = machine.receive_buffer();
                // Never a read of 0 bytes, which would look like EOF (the machine always
                // offers room while its window is open; this is a guard).
                if bytes::BufMut::remaining_mut(&room) == 0 {
                    continue;
                }
                match reader.try_read_buf(&mut room) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        if let Err(e) = machine.handle(nbd::Input::Appended(n)) {
                            tracing::warn!("NBD client: {e}");
                            break 'conn;
                        }
                    }
                }
            }
            done = completions.recv() => {
                match done {
                    Some((id, result)) => {
                        let _ = machine.handle(nbd::Input::Completion { id, result });
                        // Every completion already there too: their replies go out in one
                        // write (one peer ack packet often completes many requests).
                        while let Ok((id, result)) = completions.try_recv() {
                            let _ = machine.handle(nbd::Input::Completion { id, result });
                        }
                    }
                    None => break 'conn,
                }
            }
        }
        if eof && machine.outstanding() == 0 {
            break;
        }
    }
    if unpumped {
        shared.borrow_mut().pump();
    }
    // Requests still in flight complete into the void; the device counts as closed only
    // once they have.
    loop {
        let pending = shared.borrow().routes.values().any(|(c, _)| *c == conn_id);
        if !pending {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut s = shared.borrow_mut();
    s.connections.remove(&conn_id);
    if opened {
        s.handle(Input::Closed);
    }
}

/// Writes every segment, in order, with vectored writes.
async fn write_segments<W>(writer: &mut W, segments: &mut Vec<bytes::Bytes>) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use bytes::Buf;
    let mut i = 0;
    while i < segments.len() {
        let slices: Vec<std::io::IoSlice<'_>> = segments[i..]
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let first = &mut segments[i];
            let k = n.min(first.len());
            first.advance(k);
            n -= k;
            if first.is_empty() {
                i += 1;
            }
        }
    }
    segments.clear();
    Ok(())
}

/// Hands one request to the engine; the caller must [`Shared::pump`] afterwards.
fn submit_request(shared: &SharedRef, conn: u64, request: nbd::BlockRequest) {
    let mut s = shared.borrow_mut();
    let id = BlockRequestId(s.next_request);
    s.next_request += 1;
    s.routes.insert(id, (conn, request.id));
    let block = match request.op {
        nbd::Op::Read { offset, len } => BlockRequest::Read { id, offset, len },
        nbd::Op::Write { offset, data, fua } => BlockRequest::Write {
            id,
            offset,
            data,
            fua,
        },
        nbd::Op::Flush => BlockRequest::Flush { id },
        nbd::Op::Trim { offset, len, fua } => BlockRequest::Discard {
            id,
            offset,
            len: u64::from(len),
            fua,
        },
        nbd::Op::WriteZeroes {
            offset,
            len,
            no_hole,
            fua,
        } => BlockRequest::WriteZeroes {
            id,
            offset,
            len: u64::from(len),
            no_hole,
            fua,
        },
    };
    // Not pumped here: the caller pumps once after a batch of requests.
    let now = s.now();
    s.engine.handle(now, Input::Block(block));
}

#[cfg(test)]
mod tests {
    use super::NbdRead;
    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;

    /// A short read ends the socket's readiness: the next read is not tried (it would only
    /// have returned EAGAIN) until the runtime saw new bytes, and bytes sent after the short
    /// read still wake the reader. Called through the trait, as the NBD connection does: the
    /// read halves' own methods of the same names keep the readiness.
    #[test]
    fn a_short_read_clears_readiness_and_loses_no_wakeup() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, server) = tokio::net::UnixStream::pair().unwrap();
            let (reader, _server_writer) = server.into_split();
            let (_client_reader, mut client) = client.into_split();
            client.write_all(b"first").await.unwrap();
            NbdRead::readable(&reader).await.unwrap();
            let mut buf = bytes::BytesMut::with_capacity(4096);
            let n = NbdRead::try_read_buf(&reader, &mut (&mut buf).limit(4096)).unwrap();
            assert_eq!(&buf[..n], b"first");

            // Sent after the short read; the runtime has not polled since.
            client.write_all(b"second").await.unwrap();
            let again = NbdRead::try_read_buf(&reader, &mut (&mut buf).limit(4096));
            assert_eq!(
                again.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::WouldBlock),
                "a short read left the socket marked readable"
            );

            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                NbdRead::readable(&reader),
            )
            .await
            .expect("bytes sent after a short read never woke the reader")
            .unwrap();
            let n = NbdRead::try_read_buf(&reader, &mut (&mut buf).limit(4096)).unwrap();
            assert_eq!(&buf[5..5 + n], b"second");
        });
    }
}
