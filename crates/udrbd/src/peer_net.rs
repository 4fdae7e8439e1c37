//! The network driver of one resource: executes the engine's [`PeerOutput`]s with tokio TCP
//! sockets and reports what happened as [`NetEvent`]s, which the resource loop turns into
//! [`PeerInput`]s with [`PeerNet::on_event`]. No protocol logic lives here: framing,
//! handshakes, timeouts and retries are the engine's.
//!
//! Tasks (all on the resource's thread, `spawn_local`):
//! - one listener task while the engine wants to listen; it retries the bind until it works
//!   (the address may still be held by an old socket);
//! - one connect task per outgoing `Connect`, bounded by `connect-int` as in DRBD;
//! - per socket a reader task (reads into 128 KiB buffers, hands them over as `Bytes`, a
//!   large payload only once it is complete, so the deframer slices it: [`FrameCutter`]) and a
//!   writer thread (a queue of batches of `Send`s, written with `writev` in order on a
//!   duplicate of the socket's descriptor, what the kernel took reported as `Sent`). The
//!   writer is a thread of its own, not a task, because sending is most of a Primary's work
//!   per byte (copying into the socket and, on loopback, the receiving side's TCP
//!   processing): on its own core it overlaps with the resource loop's NBD reads and disk
//!   submissions. Small batches are written by the loop itself while the thread has nothing
//!   queued ([`INLINE_SEND_MAX`]), which keeps the bytes in order.
//!
//! Invariants:
//! - accepted sockets get fresh ids below [`OUTGOING_CONN_ID_BASE`], never reused;
//! - the engine hears `Closed` exactly once per socket it knows of, and never after it closed
//!   the socket itself ([`PeerNet::on_event`] drops events of sockets it no longer has);
//! - `Connected` is reported only for a `Connect` the engine has not closed meanwhile; a
//!   failed connect is reported as `Closed`;
//! - an accepted socket that arrives after `StopListening` is dropped unreported;
//! - a socket's bytes go out in the engine's order: the loop writes only while its writer
//!   thread has no batch left unwritten ([`WriterShared::queued`] is 0), and the thread only
//!   what the loop handed it;
//! - `Sent` never reports more than was written (the counter is added to after each write).

use std::collections::BTreeMap;
use std::io::{IoSlice, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use udrbd_core::connection::OUTGOING_CONN_ID_BASE;
use udrbd_core::{ConnId, PeerInput, PeerOutput};

/// Bytes a reader asks the kernel for at most per read.
const READ_CHUNK: usize = 128 * 1024;
/// Buffers gathered into one `writev` at most (the kernel's IOV_MAX is 1024).
const MAX_IOVECS: usize = 64;
/// How long a socket the engine closed may take to write out what was queued before it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Pause between two attempts to bind the listen address.
const BIND_RETRY: Duration = Duration::from_millis(200);
/// The listen backlog.
const BACKLOG: u32 = 16;

/// Socket settings from the resource's configuration.
#[derive(Clone, Debug, Default)]
pub struct SocketOptions {
    /// Our address's IP: outgoing sockets bind to it (port 0), as DRBD does, so a peer sees
    /// connections from the address it was configured with.
    pub own_ip: Option<IpAddr>,
    /// `sndbuf-size` in bytes (0: the kernel's autotuning).
    pub sndbuf_bytes: u32,
    /// `rcvbuf-size` in bytes (0: the kernel's autotuning).
    pub rcvbuf_bytes: u32,
    /// How long a connect may take (`connect-int`).
    pub connect_timeout: Duration,
    /// The TCP congestion control (`tcp-congestion`; `None`: the system's).
    pub congestion: Option<String>,
}

/// The socket settings of `resource`: own IP, `sndbuf-size`, `rcvbuf-size`, `connect-int`.
pub fn socket_options(resource: &crate::config::ResolvedResource) -> SocketOptions {
    let net = &resource.options.net;
    SocketOptions {
        own_ip: Some(resource.address.ip()),
        sndbuf_bytes: u32::try_from(net.sndbuf_size_bytes).unwrap_or(u32::MAX),
        rcvbuf_bytes: u32::try_from(net.rcvbuf_size_bytes).unwrap_or(u32::MAX),
        connect_timeout: net.connect_int,
        congestion: net.tcp_congestion.clone(),
    }
}

/// What the driver's tasks report to the loop.
#[derive(Debug)]
pub enum NetEvent {
    /// The listener of `generation` accepted a socket.
    Accepted {
        /// The listener it came from.
        generation: u64,
        /// The socket.
        stream: TcpStream,
        /// The peer's address.
        from: SocketAddr,
    },
    /// An outgoing connect succeeded.
    Connected {
        /// The engine's id for it.
        conn: ConnId,
        /// The socket.
        stream: TcpStream,
    },
    /// An outgoing connect failed or timed out.
    ConnectFailed {
        /// The engine's id for it.
        conn: ConnId,
        /// Why.
        error: std::io::Error,
    },
    /// Bytes read.
    Received {
        /// The socket.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The kernel took more bytes: how many is in the socket's [`WriterShared::sent`]
    /// counter (one event per time the counter left 0, so that a writer far ahead of the loop
    /// does not wake it once per write).
    Sent {
        /// The socket.
        conn: ConnId,
    },
    /// EOF or an error on the socket.
    Broken {
        /// The socket.
        conn: ConnId,
        /// Why (`None`: EOF).
        error: Option<std::io::Error>,
    },
}

/// The `Send`s of one batch of engine outputs, in order: a writer thread is woken once per
/// batch, not once per packet.
type SendBatch = Vec<(Bytes, Bytes)>;

/// Batches up to this many bytes are written by the resource loop itself when the writer
/// thread has nothing queued: a small packet (an ack, a 4 KiB write) costs one `writev`
/// there, less than waking a thread.
const INLINE_SEND_MAX: usize = 64 * 1024;

/// An open socket: its writer and its reader task.
struct Socket {
    /// `None`: the writer could not be started (reported as `Broken`).
    writer: Option<Writer>,
    reader_task: JoinHandle<()>,
    /// Whether the reader reads (`PeerOutput::Receive`); while not, the bytes wait in the
    /// kernel's buffers and the peer's sender blocks.
    receiving: tokio::sync::watch::Sender<bool>,
}

/// The loop's side of a socket's writer thread.
struct Writer {
    queue: std::sync::mpsc::Sender<SendBatch>,
    /// `Send`s of the current batch of outputs, not yet written or handed to the thread.
    batch: SendBatch,
    shared: Arc<WriterShared>,
}

/// What the loop and a writer thread share.
struct WriterShared {
    /// A duplicate of the reader's (non-blocking) descriptor.
    socket: std::net::TcpStream,
    /// Bytes the kernel took that the engine has not heard of yet.
    sent: AtomicU64,
    /// Batches handed to the thread that it has not finished writing. While it is 0 the
    /// thread writes nothing, so the loop may write to the socket itself, in order.
    queued: AtomicUsize,
}

impl WriterShared {
    /// Counts `n` bytes the kernel took; the engine hears of them through a `Sent` event,
    /// sent when the count leaves 0. False if the loop is gone.
    fn count_sent(&self, conn: ConnId, n: usize, events: &UnboundedSender<NetEvent>) -> bool {
        n == 0
            || self.sent.fetch_add(n as u64, Ordering::AcqRel) != 0
            || events.send(NetEvent::Sent { conn }).is_ok()
    }
}

/// The listener the engine asked for.
struct Listening {
    addr: SocketAddr,
    generation: u64,
    task: JoinHandle<()>,
}

/// The sockets of one resource.
pub struct PeerNet {
    events: UnboundedSender<NetEvent>,
    options: SocketOptions,
    listener: Option<Listening>,
    listen_generation: u64,
    connecting: BTreeMap<ConnId, JoinHandle<()>>,
    sockets: BTreeMap<ConnId, Socket>,
    next_accepted: u64,
}

impl PeerNet {
    /// A driver that reports on `events`. Must be used on a `LocalSet`.
    pub fn new(events: UnboundedSender<NetEvent>, options: SocketOptions) -> PeerNet {
        PeerNet {
            events,
            options,
            listener: None,
            listen_generation: 0,
            connecting: BTreeMap::new(),
            sockets: BTreeMap::new(),
            next_accepted: 1,
        }
    }

    /// New socket settings (`adjust`), for the sockets made from now on.
    pub fn set_options(&mut self, options: SocketOptions) {
        self.options = options;
    }

    /// Executes one output of the engine.
    pub fn execute(&mut self, out: PeerOutput) {
        match out {
            PeerOutput::Listen { addr } => self.listen(addr),
            PeerOutput::StopListening => self.stop_listening(),
            PeerOutput::Connect { conn, addr } => self.connect(conn, addr),
            PeerOutput::Send { conn, head, data } => {
                // A socket that broke a moment ago: its Closed is on the way to the engine.
                if let Some(writer) = self.sockets.get_mut(&conn).and_then(|s| s.writer.as_mut()) {
                    writer.batch.push((head, data));
                }
            }
            PeerOutput::Receive { conn, enabled } => {
                if let Some(socket) = self.sockets.get(&conn) {
                    socket.receiving.send_replace(enabled);
                }
            }
            PeerOutput::Close { conn } => self.close(conn),
        }
    }

    /// Writes the `Send`s of this batch of outputs, or hands them to the writer threads
    /// (after every batch of outputs).
    pub fn flush(&mut self) {
        for (&conn, socket) in self.sockets.iter_mut() {
            let Some(writer) = socket.writer.as_mut() else {
                continue;
            };
            if writer.batch.is_empty() {
                continue;
            }
            let mut batch = std::mem::take(&mut writer.batch);
            let shared = &writer.shared;
            let bytes: usize = batch.iter().map(|(h, d)| h.len() + d.len()).sum();
            if bytes <= INLINE_SEND_MAX && shared.queued.load(Ordering::Acquire) == 0 {
                batch = write_inline(conn, shared, batch, &self.events);
                if batch.is_empty() {
                    continue;
                }
            }
            shared.queued.fetch_add(1, Ordering::AcqRel);
            let _ = writer.queue.send(batch);
        }
    }

    /// Turns a task's report into the engine's input, or `None` if the engine must not hear
    /// of it (the socket was closed by the engine meanwhile).
    pub fn on_event(&mut self, event: NetEvent) -> Option<PeerInput> {
        match event {
            NetEvent::Accepted {
                generation,
                stream,
                from,
            } => {
                if self.listener.as_ref().map(|l| l.generation) != Some(generation) {
                    return None;
                }
                let conn = ConnId(self.next_accepted);
                self.next_accepted += 1;
                assert!(
                    conn.0 < OUTGOING_CONN_ID_BASE,
                    "accepted socket ids ran out"
                );
                tracing::debug!(conn = conn.0, %from, "peer socket accepted");
                self.open(conn, stream);
                Some(PeerInput::Accepted { conn })
            }
            NetEvent::Connected { conn, stream } => {
                self.connecting.remove(&conn)?;
                self.open(conn, stream);
                Some(PeerInput::Connected { conn })
            }
            NetEvent::ConnectFailed { conn, error } => {
                self.connecting.remove(&conn)?;
                tracing::debug!(conn = conn.0, "connect failed: {error}");
                Some(PeerInput::Closed { conn })
            }
            NetEvent::Received { conn, bytes } => {
                self.sockets.contains_key(&conn).then_some(())?;
                Some(PeerInput::Received { conn, bytes })
            }
            NetEvent::Sent { conn } => {
                let writer = self.sockets.get(&conn)?.writer.as_ref()?;
                let bytes = writer.shared.sent.swap(0, Ordering::AcqRel);
                (bytes > 0).then_some(PeerInput::Sent { conn, bytes })
            }
            NetEvent::Broken { conn, error } => {
                self.sockets.contains_key(&conn).then_some(())?;
                match error {
                    Some(e) => tracing::debug!(conn = conn.0, "peer socket failed: {e}"),
                    None => tracing::debug!(conn = conn.0, "peer socket closed by the peer"),
                }
                self.close(conn);
                Some(PeerInput::Closed { conn })
            }
        }
    }

    /// Drops every socket and the listener (daemon shutdown), without telling the engine.
    pub fn close_all(&mut self) {
        self.stop_listening();
        let conns: Vec<ConnId> = self
            .connecting
            .keys()
            .chain(self.sockets.keys())
            .copied()
            .collect();
        for conn in conns {
            self.close(conn);
        }
    }

    /// Sockets open or connecting (for tests and status).
    pub fn open_sockets(&self) -> usize {
        self.sockets.len() + self.connecting.len()
    }

    fn listen(&mut self, addr: SocketAddr) {
        if self.listener.as_ref().is_some_and(|l| l.addr == addr) {
            return;
        }
        self.stop_listening();
        self.listen_generation += 1;
        let generation = self.listen_generation;
        let task = tokio::task::spawn_local(listener_task(
            generation,
            addr,
            self.options.clone(),
            self.events.clone(),
        ));
        self.listener = Some(Listening {
            addr,
            generation,
            task,
        });
    }

    fn stop_listening(&mut self) {
        if let Some(l) = self.listener.take() {
            l.task.abort();
        }
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr) {
        assert!(
            conn.0 >= OUTGOING_CONN_ID_BASE,
            "the engine numbers outgoing sockets from OUTGOING_CONN_ID_BASE"
        );
        assert!(
            !self.sockets.contains_key(&conn) && !self.connecting.contains_key(&conn),
            "connect with an id in use"
        );
        let task = tokio::task::spawn_local(connect_task(
            conn,
            addr,
            self.options.clone(),
            self.events.clone(),
        ));
        self.connecting.insert(conn, task);
    }

    /// Registers an established socket and starts its reader and writer.
    fn open(&mut self, conn: ConnId, stream: TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(conn = conn.0, "TCP_NODELAY: {e}");
        }
        let writer = match self.start_writer(conn, &stream) {
            Ok(writer) => Some(writer),
            Err(e) => {
                tracing::warn!(conn = conn.0, "cannot start the socket's writer: {e}");
                let _ = self.events.send(NetEvent::Broken {
                    conn,
                    error: Some(e),
                });
                None
            }
        };
        let (receiving, receive) = tokio::sync::watch::channel(true);
        let reader_task =
            tokio::task::spawn_local(reader_task(conn, stream, receive, self.events.clone()));
        let previous = self.sockets.insert(
            conn,
            Socket {
                writer,
                reader_task,
                receiving,
            },
        );
        assert!(previous.is_none(), "socket id {} opened twice", conn.0);
    }

    /// Starts the writer thread of `stream`, on a duplicate of its descriptor.
    fn start_writer(&self, conn: ConnId, stream: &TcpStream) -> std::io::Result<Writer> {
        let socket =
            std::net::TcpStream::from(std::os::fd::AsFd::as_fd(stream).try_clone_to_owned()?);
        let shared = Arc::new(WriterShared {
            socket,
            sent: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
        });
        let (queue, batches) = std::sync::mpsc::channel();
        let events = self.events.clone();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("udrbd-send-{}", conn.0))
            .spawn(move || writer_thread(conn, thread_shared, batches, events))?;
        Ok(Writer {
            queue,
            batch: Vec::new(),
            shared,
        })
    }

    /// Stops reading at once; the writer finishes what was queued (for at most
    /// [`CLOSE_LINGER`]), then shuts the socket down.
    fn close(&mut self, conn: ConnId) {
        if let Some(task) = self.connecting.remove(&conn) {
            task.abort();
        }
        if let Some(socket) = self.sockets.remove(&conn) {
            socket.reader_task.abort();
            // What the engine sent before closing still goes out, then the socket is shut
            // down: here and now if the thread has nothing queued and the socket takes it
            // all, so that sockets closed together shut down in the engine's order (a peer
            // that saw one socket's FIN before the data still queued on another would act on
            // a connection loss instead of the data); otherwise by the thread, which sees its
            // queue closed, writes out the rest, and shuts the socket down.
            if let Some(mut writer) = socket.writer {
                let shared = writer.shared.clone();
                if shared.queued.load(Ordering::Acquire) == 0 {
                    let batch = std::mem::take(&mut writer.batch);
                    let rest = write_inline(conn, &shared, batch, &self.events);
                    if rest.is_empty() {
                        let _ = shared.socket.shutdown(std::net::Shutdown::Write);
                        return;
                    }
                    writer.batch = rest;
                }
                writer.shared.queued.fetch_add(1, Ordering::AcqRel);
                let _ = writer.queue.send(writer.batch);
            }
        }
    }
}

/// A socket bound to `addr` (SO_REUSEADDR) with the configured buffer sizes.
fn bound_socket(addr: SocketAddr, options: &SocketOptions) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if options.sndbuf_bytes > 0 {
        socket.set_send_buffer_size(options.sndbuf_bytes)?;
    }
    if options.rcvbuf_bytes > 0 {
        socket.set_recv_buffer_size(options.rcvbuf_bytes)?;
    }
    if let Some(name) = &options.congestion {
        // Accepted sockets inherit it from the listener. A name the kernel does not know (a
        // module not loaded, or not allowed) leaves the system's default, with a warning.
        if let Err(e) = rustix::net::sockopt::set_tcp_congestion(&socket, name) {
            tracing::warn!(%addr, "tcp-congestion {name}: {e} (using the system's default)");
        }
    }
    socket.bind(addr)?;
    Ok(socket)
}

fn bind_listener(addr: SocketAddr, options: &SocketOptions) -> std::io::Result<TcpListener> {
    bound_socket(addr, options)?.listen(BACKLOG)
}

async fn listener_task(
    generation: u64,
    addr: SocketAddr,
    options: SocketOptions,
    events: UnboundedSender<NetEvent>,
) {
    let mut logged = false;
    let listener = loop {
        match bind_listener(addr, &options) {
            Ok(l) => break l,
            Err(e) => {
                if !logged {
                    tracing::warn!(%addr, "cannot listen for the peer yet: {e} (retrying)");
                    logged = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    };
    if logged {
        tracing::info!(%addr, "listening for the peer");
    }
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let accepted = NetEvent::Accepted {
                    generation,
                    stream,
                    from,
                };
                if events.send(accepted).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(%addr, "accept failed: {e}");
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

async fn connect_task(
    conn: ConnId,
    addr: SocketAddr,
    options: SocketOptions,
    events: UnboundedSender<NetEvent>,
) {
    let connect = async {
        let local = match (options.own_ip, addr) {
            (Some(ip @ IpAddr::V4(_)), SocketAddr::V4(_))
            | (Some(ip @ IpAddr::V6(_)), SocketAddr::V6(_)) => SocketAddr::new(ip, 0),
            (_, SocketAddr::V4(_)) => {
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
            }
            (_, SocketAddr::V6(_)) => {
                SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)
            }
        };
        let socket = bound_socket(local, &options)?;
        socket.connect(addr).await
    };
    let timeout = options.connect_timeout.max(Duration::from_secs(1));
    let event = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => NetEvent::Connected { conn, stream },
        Ok(Err(error)) => NetEvent::ConnectFailed { conn, error },
        Err(_) => NetEvent::ConnectFailed {
            conn,
            error: std::io::ErrorKind::TimedOut.into(),
        },
    };
    let _ = events.send(event);
}

async fn reader_task(
    conn: ConnId,
    mut socket: TcpStream,
    mut receive: tokio::sync::watch::Receiver<bool>,
    events: UnboundedSender<NetEvent>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut cutter = FrameCutter::default();
    // Right after a held payload: read one header only, so that a large payload behind it
    // lands in an aligned buffer of its own rather than partly in this one (to be copied).
    let mut header_next = false;
    loop {
        // The engine holds max-buffers of the peer's requests: read nothing until
        // it has room again (the socket's owner outlives this task).
        if receive.wait_for(|read| *read).await.is_err() {
            return;
        }
        let held = cutter.held();
        let read = if held > 0 {
            // Exactly the rest of the held payload.
            let rest = held - buf.len();
            socket.read_buf(&mut (&mut buf).limit(rest)).await
        } else {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            if header_next {
                let limit = udrbd_wire::header::LONG_HEADER_SIZE;
                socket.read_buf(&mut (&mut buf).limit(limit)).await
            } else {
                socket.read_buf(&mut buf).await
            }
        };
        let event = match read {
            Ok(0) => NetEvent::Broken { conn, error: None },
            Err(e) => NetEvent::Broken {
                conn,
                error: Some(e),
            },
            Ok(_) => {
                let n = cutter.cut(&buf);
                header_next = held > 0 && cutter.held() == 0;
                if header_next {
                    set_rcvlowat(&socket, 1);
                }
                if n == 0 {
                    // Still holding: wake up when the rest is in, not later (a low-water mark
                    // above what is still to come would never be reached).
                    set_rcvlowat(&socket, cutter.held() - buf.len());
                    continue;
                }
                let bytes = buf.split_to(n).freeze();
                let hold = cutter.held();
                if hold > 0 {
                    // The held payload gets a buffer of its own, sized to it, whose data (after
                    // p_data) is page aligned: the deframer slices it, and the backing writes
                    // it without an aligned copy.
                    let mut fresh = aligned_buffer(hold, udrbd_wire::DataHeader::SIZE);
                    fresh.extend_from_slice(&buf);
                    buf = fresh;
                    // No wake-up before the whole payload is in: one read for it rather than
                    // one per segment, and the sender's softirq skips waking us each time.
                    set_rcvlowat(&socket, hold - buf.len());
                }
                NetEvent::Received { conn, bytes }
            }
        };
        let broken = matches!(event, NetEvent::Broken { .. });
        if events.send(event).is_err() || broken {
            return;
        }
    }
}

/// Sets SO_RCVLOWAT: the socket reports readable (and wakes its reader) only once `bytes`
/// are queued, or at EOF or an error. The kernel caps it at half the receive buffer, so a
/// sender can always make progress. A failure only costs wake-ups, so it is not reported.
fn set_rcvlowat(socket: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = socket.as_raw_fd();
    // SAFETY: setsockopt only reads `size_of::<c_int>()` bytes from `value`, which lives
    // across the call; `fd` is open, borrowed from the socket half we hold.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::trace!("SO_RCVLOWAT: {}", std::io::Error::last_os_error());
    }
}

/// An empty buffer with room for `len` bytes whose byte `at` falls on an
/// [`IO_ALIGN`](crate::meta_io::IO_ALIGN) boundary.
fn aligned_buffer(len: usize, at: usize) -> BytesMut {
    let align = crate::meta_io::IO_ALIGN;
    let mut b = BytesMut::with_capacity(len + align);
    let pad = (align - (b.as_ptr() as usize + at) % align) % align;
    b.resize(pad, 0);
    b.advance(pad);
    debug_assert!(b.capacity() >= len);
    b
}

/// Payloads at least this long are held back until complete (see [`FrameCutter`]).
const HOLD_MIN: usize = 64 * 1024;

/// Where the DRBD frames of a received stream end, so that a large payload reaches the
/// deframer as one buffer, which it slices instead of copying (a 1 MiB P_DATA arrives in
/// many reads). Only a hint, by the headers' magic: the deframer parses for real. Nothing is
/// held back but the rest of a large payload whose header was passed on already (and so was
/// checked by the deframer); everything else goes on as soon as it is read, and after
/// anything that does not look like a header, everything goes on unlooked at.
#[derive(Debug, Default)]
struct FrameCutter {
    /// Bytes of a frame partly passed on that still come before the next header.
    skip: usize,
    /// The start of a header cut by the end of a read (passed on already).
    partial: Vec<u8>,
    /// Length of the payload being held back (the unpassed bytes start with it).
    hold: Option<usize>,
    /// Something did not look like a header: no more cutting.
    lost: bool,
}

impl FrameCutter {
    /// Bytes the unpassed buffer must reach before it is passed on (0: none held).
    fn held(&self) -> usize {
        self.hold.unwrap_or(0)
    }

    /// How many of the unpassed bytes `buf` (in stream order, after everything passed on)
    /// to pass on now.
    fn cut(&mut self, buf: &[u8]) -> usize {
        if self.lost {
            return buf.len();
        }
        let mut at = 0;
        if let Some(need) = self.hold {
            if buf.len() < need {
                return 0;
            }
            self.hold = None;
            at = need;
        }
        loop {
            let k = self.skip.min(buf.len() - at);
            self.skip -= k;
            at += k;
            if at == buf.len() {
                return at;
            }
            let from_partial = self.partial.len();
            let take = (udrbd_wire::header::LONG_HEADER_SIZE - from_partial).min(buf.len() - at);
            self.partial.extend_from_slice(&buf[at..at + take]);
            let header = match udrbd_wire::Header::sniff(&self.partial) {
                Ok(Some(h)) => h,
                Ok(None) => return buf.len(),
                Err(_) => {
                    self.lost = true;
                    return buf.len();
                }
            };
            self.partial.clear();
            at += header.size() - from_partial;
            let length = header.length as usize;
            let rest = buf.len() - at;
            if rest >= length {
                at += length;
            } else if length >= HOLD_MIN {
                self.hold = Some(length);
                return at;
            } else {
                self.skip = length - rest;
                return buf.len();
            }
        }
    }
}

/// A writer thread counts what it wrote (for the engine's `Sent`) at most this far behind.
const SENT_REPORT_BYTES: usize = 4 << 20;

/// How often a writer blocked on a full socket looks at its queue (closed by the engine?).
const WRITER_POLL: Duration = Duration::from_millis(100);

/// Writes the queued batches to the socket in order, counting what the kernel took (see
/// [`WriterShared::count_sent`]), until the queue closes (the engine closed the socket: the
/// rest is written for at most [`CLOSE_LINGER`], then the socket is shut down) or the socket
/// breaks (reported as `Broken`). The descriptor is non-blocking (shared with the reader), so
/// a full socket is waited for with `poll`.
fn writer_thread(
    conn: ConnId,
    shared: Arc<WriterShared>,
    queue: std::sync::mpsc::Receiver<SendBatch>,
    events: UnboundedSender<NetEvent>,
) {
    use std::sync::mpsc::TryRecvError;
    let mut segments: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    let push = |segments: &mut std::collections::VecDeque<Bytes>, batch: SendBatch| {
        for (head, data) in batch {
            for b in [head, data] {
                if !b.is_empty() {
                    segments.push_back(b);
                }
            }
        }
    };
    // Batches taken from the queue whose bytes are not all written yet.
    let mut pulled = 0;
    // Bytes written but not counted in `shared.sent` yet.
    let mut unreported = 0;
    // Set once the queue is closed: the moment the rest must be written by.
    let mut linger_until: Option<std::time::Instant> = None;
    loop {
        if segments.is_empty() {
            if pulled > 0 {
                // Everything handed over is written: the loop may write itself again.
                shared.queued.fetch_sub(pulled, Ordering::AcqRel);
                pulled = 0;
            }
            if linger_until.is_some() {
                break;
            }
            match queue.recv() {
                Ok(batch) => {
                    pulled += 1;
                    push(&mut segments, batch);
                }
                Err(_) => {
                    linger_until = Some(std::time::Instant::now() + CLOSE_LINGER);
                    continue;
                }
            }
        }
        while linger_until.is_none() && segments.len() < MAX_IOVECS {
            match queue.try_recv() {
                Ok(batch) => {
                    pulled += 1;
                    push(&mut segments, batch);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    linger_until = Some(std::time::Instant::now() + CLOSE_LINGER);
                }
            }
        }
        if segments.is_empty() {
            continue;
        }
        if linger_until.is_some_and(|t| std::time::Instant::now() >= t) {
            break;
        }
        let slices: Vec<IoSlice<'_>> = segments
            .iter()
            .take(MAX_IOVECS)
            .map(|b| IoSlice::new(b))
            .collect();
        let written = (&shared.socket).write_vectored(&slices);
        drop(slices);
        let n = match written {
            Ok(0) => {
                let error = Some(std::io::ErrorKind::WriteZero.into());
                let _ = events.send(NetEvent::Broken { conn, error });
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The engine hears of what went out before the thread waits.
                if !shared.count_sent(conn, std::mem::take(&mut unreported), &events) {
                    break;
                }
                wait_writable(&shared.socket, WRITER_POLL);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = events.send(NetEvent::Broken {
                    conn,
                    error: Some(e),
                });
                return;
            }
        };
        consume(&mut segments, n);
        unreported += n;
        // Reported when the thread caught up, or every SENT_REPORT_BYTES: each report may
        // wake the loop, and a megabyte packet takes several writes.
        if (segments.is_empty() || unreported >= SENT_REPORT_BYTES)
            && !shared.count_sent(conn, std::mem::take(&mut unreported), &events)
        {
            break;
        }
    }
    let _ = shared.socket.shutdown(std::net::Shutdown::Write);
}

/// Waits until `socket` takes more bytes, an error shows, or `limit` passed.
fn wait_writable(socket: &std::net::TcpStream, limit: Duration) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(socket, PollFlags::OUT)];
    let timeout = Timespec::try_from(limit).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    });
    // An error (EINTR) only means one more round through the writer's loop.
    let _ = poll(&mut fds, Some(&timeout));
}

/// Writes what of `batch` the socket takes without waiting, from the resource loop (only
/// while the writer thread has nothing queued), and returns the rest. An error other than a
/// full socket is left to the thread to find and report.
fn write_inline(
    conn: ConnId,
    shared: &WriterShared,
    mut batch: SendBatch,
    events: &UnboundedSender<NetEvent>,
) -> SendBatch {
    while !batch.is_empty() {
        let slices: Vec<IoSlice<'_>> = batch
            .iter()
            .take(MAX_IOVECS / 2)
            .flat_map(|(h, d)| [IoSlice::new(h), IoSlice::new(d)])
            .collect();
        let n = (&shared.socket).write_vectored(&slices).unwrap_or(0);
        drop(slices);
        if n == 0 {
            break;
        }
        shared.count_sent(conn, n, events);
        consume_batch(&mut batch, n);
    }
    batch
}

/// Removes the first `n` bytes from the front of `batch`.
fn consume_batch(batch: &mut SendBatch, mut n: usize) {
    let mut done = 0;
    for (head, data) in batch.iter_mut() {
        if n == 0 {
            break;
        }
        let k = n.min(head.len());
        head.advance(k);
        n -= k;
        let k = n.min(data.len());
        data.advance(k);
        n -= k;
        if head.is_empty() && data.is_empty() {
            done += 1;
        }
    }
    batch.drain(..done);
}

/// Removes the first `n` bytes from the front of `segments`.
fn consume(segments: &mut std::collections::VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let front = segments.front_mut().expect("wrote more than was queued");
        let k = n.min(front.len());
        front.advance(k);
        n -= k;
        if front.is_empty() {
            segments.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    fn options() -> SocketOptions {
        SocketOptions {
            own_ip: Some("127.0.0.1".parse().unwrap()),
            connect_timeout: Duration::from_secs(2),
            ..SocketOptions::default()
        }
    }

    /// Runs `f` on a current-thread runtime inside a LocalSet, as the resource loop does.
    fn local<F: std::future::Future<Output = ()>>(f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    /// The next event that reaches the engine.
    async fn next_input(net: &mut PeerNet, rx: &mut UnboundedReceiver<NetEvent>) -> PeerInput {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an event within 5 s")
                .expect("channel open");
            if let Some(input) = net.on_event(event) {
                return input;
            }
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Cuts `stream` into reads of the sizes in `reads` (cycled) and passes them through a
    /// cutter as the reader does: returns the passed-on chunks.
    fn cut_stream(stream: &[u8], reads: &[usize]) -> Vec<Vec<u8>> {
        let mut cutter = FrameCutter::default();
        let (mut unpassed, mut chunks, mut at) = (Vec::new(), Vec::new(), 0);
        for &r in reads.iter().cycle() {
            if at == stream.len() {
                break;
            }
            let n = r.min(stream.len() - at);
            unpassed.extend_from_slice(&stream[at..at + n]);
            at += n;
            let k = cutter.cut(&unpassed);
            if k > 0 {
                chunks.push(unpassed.drain(..k).collect());
            }
        }
        assert!(
            unpassed.is_empty(),
            "bytes held at the end of a whole stream"
        );
        chunks
    }

    fn data_packet(len: usize, format: udrbd_wire::HeaderFormat) -> Vec<u8> {
        udrbd_wire::Packet::Data(udrbd_wire::DataPacket {
            data: Bytes::from(vec![0x5a; len]),
            ..Default::default()
        })
        .encode(0, format)
        .unwrap()
        .to_vec()
    }

    #[test]
    fn the_cutter_passes_large_payloads_whole_and_everything_in_order() {
        use udrbd_wire::HeaderFormat;
        for format in [HeaderFormat::Long, HeaderFormat::ShortOrBig] {
            let mut stream = Vec::new();
            for len in [4096, 1 << 20, 512, 256 * 1024, 1 << 20, 4096] {
                stream.extend(data_packet(len, format));
            }
            for reads in [
                &[1usize][..],
                &[7, 300, 65536],
                &[131072],
                &[3, 100_000, 17],
            ] {
                let chunks = cut_stream(&stream, reads);
                assert_eq!(chunks.concat(), stream, "{format} {reads:?}");
                // Each large payload starts a chunk that holds all of it.
                let mut d = udrbd_wire::Deframer::new(udrbd_wire::DecodeContext::new(format));
                let mut frames = 0;
                for c in &chunks {
                    let c = Bytes::from(c.clone());
                    d.push_bytes(c.clone());
                    while let Some(f) = d.next_frame().unwrap() {
                        let udrbd_wire::Packet::Data(p) = f.packet else {
                            panic!("not data")
                        };
                        if p.data.len() >= HOLD_MIN {
                            let inside = c.as_ptr_range();
                            assert!(inside.contains(&p.data.as_ptr()), "{reads:?}: copied");
                        }
                        frames += 1;
                    }
                }
                assert_eq!(frames, 6);
            }
        }
    }

    #[test]
    fn the_cutter_passes_garbage_on_at_once() {
        let mut stream = data_packet(1 << 20, udrbd_wire::HeaderFormat::Long);
        stream.truncate(1000);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut cutter = FrameCutter::default();
        assert_eq!(cutter.cut(b"GET / HT"), 8);
        assert_eq!(cutter.cut(&stream), stream.len());
        let mut cutter = FrameCutter::default();
        assert_eq!(
            cutter.cut(&stream[..500]),
            16,
            "the header goes on, the payload waits"
        );
        assert_eq!(cutter.cut(&stream[16..]), 0);
    }

    #[test]
    fn aligned_buffers_are_aligned_where_asked() {
        for at in [0, 24, 4095, 5000] {
            let mut b = aligned_buffer(1 << 20, at);
            assert!(b.capacity() >= 1 << 20);
            b.extend_from_slice(&vec![1u8; at + 1]);
            assert_eq!((b[at..].as_ptr() as usize) % crate::meta_io::IO_ALIGN, 0);
        }
    }

    #[test]
    fn consume_advances_across_segments() {
        let mut s: std::collections::VecDeque<Bytes> = [
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fgh"),
        ]
        .into_iter()
        .collect();
        consume(&mut s, 4);
        assert_eq!(s.len(), 2);
        assert_eq!(&s[0][..], b"e");
        consume(&mut s, 1);
        assert_eq!(&s[0][..], b"fgh");
        consume(&mut s, 3);
        assert!(s.is_empty());
    }

    /// Listens on `addr`, connects to it, and returns (outgoing, accepted) once both are up.
    async fn connected_pair(
        net: &mut PeerNet,
        rx: &mut UnboundedReceiver<NetEvent>,
    ) -> (ConnId, ConnId) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        net.execute(PeerOutput::Listen { addr });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = ConnId(OUTGOING_CONN_ID_BASE);
        net.execute(PeerOutput::Connect { conn: out, addr });
        let (mut accepted, mut connected) = (None, false);
        while accepted.is_none() || !connected {
            match next_input(net, rx).await {
                PeerInput::Accepted { conn } => accepted = Some(conn),
                PeerInput::Connected { conn } => {
                    assert_eq!(conn, out);
                    connected = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (out, accepted.unwrap())
    }

    /// What a connected pair's engine heard: bytes `out` sent, bytes `inbound` received.
    struct Transfer {
        out: ConnId,
        inbound: ConnId,
        sent: u64,
        received: Vec<u8>,
    }

    impl Transfer {
        fn new(out: ConnId, inbound: ConnId) -> Transfer {
            Transfer {
                out,
                inbound,
                sent: 0,
                received: Vec::new(),
            }
        }

        /// Takes the next input: `Sent` of `out` and `Received` of `inbound` are counted;
        /// a `Closed` is returned; anything else fails the test.
        async fn next(
            &mut self,
            net: &mut PeerNet,
            rx: &mut UnboundedReceiver<NetEvent>,
        ) -> Option<ConnId> {
            match next_input(net, rx).await {
                PeerInput::Sent { conn, bytes } => {
                    assert_eq!(conn, self.out);
                    self.sent += bytes;
                }
                PeerInput::Received { conn, bytes } => {
                    assert_eq!(conn, self.inbound);
                    self.received.extend_from_slice(&bytes);
                }
                PeerInput::Closed { conn } => return Some(conn),
                other => panic!("unexpected {other:?}"),
            }
            None
        }
    }

    /// Small batches are written by the loop, large ones by the writer thread, and a batch
    /// queued behind the thread's waits for it: whatever the mix, the peer receives the
    /// packets in the engine's order, `Sent` adds up to every byte, and a close right after a
    /// large send delivers it all before the EOF.
    #[test]
    fn small_and_large_sends_arrive_in_order_and_a_close_delivers_the_rest() {
        local(async {
            let (tx, mut rx) = unbounded_channel();
            let mut net = PeerNet::new(tx, options());
            let (out, inbound) = connected_pair(&mut net, &mut rx).await;
            let mut expected = Vec::new();
            let mut send = |net: &mut PeerNet, n: usize, len: usize| {
                let data: Vec<u8> = (0..len).map(|i| (n * 31 + i) as u8).collect();
                let head = Bytes::from((n as u32).to_be_bytes().to_vec());
                expected.extend_from_slice(&head);
                expected.extend_from_slice(&data);
                net.execute(PeerOutput::Send {
                    conn: out,
                    head,
                    data: Bytes::from(data),
                });
            };
            for n in 0..300 {
                let len = match n % 50 {
                    7 => 3 << 20,
                    20..=22 => 200_000,
                    _ => 1 + n % 700,
                };
                send(&mut net, n, len);
                if n % 3 == 0 {
                    net.flush();
                }
                // Let the reader run now and then, so the socket does not fill for good.
                if n % 25 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            send(&mut net, 300, 2 << 20);
            net.execute(PeerOutput::Close { conn: out });
            let mut io = Transfer::new(out, inbound);
            let closed = loop {
                if let Some(conn) = io.next(&mut net, &mut rx).await {
                    break conn;
                }
            };
            assert_eq!(closed, inbound);
            let (sent, received) = (io.sent, io.received);
            assert_eq!(received.len(), expected.len());
            assert!(received == expected, "the packets arrived out of order");
            // The engine closed `out`: its later `Sent`s are not reported, so only a bound.
            assert!(sent <= expected.len() as u64);
        });
    }

    /// `tcp-congestion` reaches both ends: the outgoing socket, and an accepted one (which
    /// inherits the listener's). A name the kernel does not know leaves the default.
    #[test]
    fn the_configured_congestion_control_is_on_outgoing_and_accepted_sockets() {
        local(async {
            use rustix::net::sockopt::tcp_congestion;
            let with = |name: &str| SocketOptions {
                congestion: Some(name.to_string()),
                ..options()
            };
            // reno is built into every kernel and allowed to every user.
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let listener = bind_listener(addr, &with("reno")).unwrap();
            let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let outgoing = bound_socket(local, &with("reno")).unwrap();
            assert_eq!(tcp_congestion(&outgoing).unwrap(), "reno");
            let outgoing = outgoing.connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert_eq!(tcp_congestion(&accepted).unwrap(), "reno");
            assert_eq!(tcp_congestion(&outgoing).unwrap(), "reno");
            let system = bound_socket(local, &options()).unwrap();
            let unknown = bound_socket(local, &with("no-such-cc")).unwrap();
            assert_eq!(
                tcp_congestion(&unknown).unwrap(),
                tcp_congestion(&system).unwrap()
            );
        });
    }

    #[test]
    fn listen_connect_send_receive_close() {
        local(async {
            let (tx, mut rx) = unbounded_channel();
            let mut net = PeerNet::new(tx, options());
            let (out, inbound) = connected_pair(&mut net, &mut rx).await;
            assert!(inbound.0 < OUTGOING_CONN_ID_BASE);
            let data = Bytes::from(vec![7u8; 300_000]);
            net.execute(PeerOutput::Send {
                conn: out,
                head: Bytes::from_static(b"HEAD"),
                data: data.clone(),
            });
            net.flush();
            let mut io = Transfer::new(out, inbound);
            while io.sent < 300_004 || io.received.len() < 300_004 {
                assert_eq!(io.next(&mut net, &mut rx).await, None, "closed early");
            }
            let (sent, received) = (io.sent, io.received);
            assert_eq!(sent, 300_004);
            assert_eq!(&received[..4], b"HEAD");
            assert_eq!(&received[4..], &data[..]);
            // The engine closes its outgoing socket: the other end sees EOF, once.
            net.execute(PeerOutput::Close { conn: out });
            assert_eq!(
                next_input(&mut net, &mut rx).await,
                PeerInput::Closed { conn: inbound }
            );
            assert_eq!(net.open_sockets(), 0);
            net.execute(PeerOutput::StopListening);
        });
    }

    #[test]
    fn a_refused_connect_is_reported_closed() {
        local(async {
            let (tx, mut rx) = unbounded_channel();
            let mut net = PeerNet::new(tx, options());
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let conn = ConnId(OUTGOING_CONN_ID_BASE + 5);
            net.execute(PeerOutput::Connect { conn, addr });
            assert_eq!(
                next_input(&mut net, &mut rx).await,
                PeerInput::Closed { conn }
            );
        });
    }

    #[test]
    fn a_connect_closed_by_the_engine_is_never_reported() {
        local(async {
            let (tx, mut rx) = unbounded_channel();
            let mut net = PeerNet::new(tx, options());
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let conn = ConnId(OUTGOING_CONN_ID_BASE + 1);
            net.execute(PeerOutput::Connect { conn, addr });
            net.execute(PeerOutput::Close { conn });
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(event) = rx.try_recv() {
                assert_eq!(net.on_event(event), None);
            }
            assert_eq!(net.open_sockets(), 0);
        });
    }

    #[test]
    fn outgoing_sockets_come_from_the_own_address() {
        local(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = unbounded_channel();
            let own = SocketOptions {
                own_ip: Some("127.0.0.3".parse().unwrap()),
                ..options()
            };
            let mut net = PeerNet::new(tx, own);
            let conn = ConnId(OUTGOING_CONN_ID_BASE + 2);
            net.execute(PeerOutput::Connect { conn, addr });
            let (_stream, from) = listener.accept().await.unwrap();
            assert_eq!(from.ip(), "127.0.0.3".parse::<IpAddr>().unwrap());
            assert_eq!(
                next_input(&mut net, &mut rx).await,
                PeerInput::Connected { conn }
            );
        });
    }
}
