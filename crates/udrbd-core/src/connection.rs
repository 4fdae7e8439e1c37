//! Connection setup: from "nothing" to two authenticated sockets with an agreed protocol
//! version, exactly as DRBD 8.4's `conn_connect()` does it (drbd-v08-facts.md §6.2, checked
//! against kernel 8.4.11 traffic in drbd-wire-observed.md §1a and scenario s2).
//!
//! ```text
//!        Start: Listen, then the loop of conn_connect()
//!   +--> Connecting ---Connected---> first socket: P_INITIAL_DATA, second: P_INITIAL_META
//!   |      | refused / connect-int
//!   |      v
//!   |    WaitAccept (connect-int +-1/7) <----------------------------+
//!   |      | an accepted socket (queued while in another step)       | a socket died, or an
//!   |      v                                                         | accepted one waits
//!   |    ReadFirstPacket: P_INITIAL_DATA -> data, P_INITIAL_META -> meta (RESOLVE_CONFLICTS);
//!   |      a second data (meta) socket: "crossed", the old one is closed; crossed or garbage:
//!   |      a coin decides between waiting for another accept and the bottom of the loop
//!   +------+ bottom, not both sockets                                 |
//!            both sockets --> SocketCheck (socket-check-timeout) -----+
//!                                 | both alive, no accepted socket waiting
//!                                 v
//!   Features: P_CONNECTION_FEATURES (h80) on the data socket both ways; agree on the version
//!   AuthChallenge / AuthResponse (cram-hmac-alg set; h100 from here): 64 random bytes out,
//!     the peer's challenge in (reflection check), HMAC(secret, peer's challenge) out,
//!     HMAC(secret, our challenge) expected in (length = digest size)
//!   -> Established { data, meta, agreed version and features, resolve_conflicts, leftovers }
//! ```
//!
//! One change of timing against DRBD, none of bytes: DRBD sleeps socket-check-timeout only
//! when its own connect completed the pair, and releases accepted sockets it has not read
//! yet when it leaves the loop. Then two nodes that connect their meta (or data) sockets at
//! the same moment both go on with a socket the other one drops, and one of them may be
//! "established" with a dead socket until its first ping fails. Here every complete pair is
//! checked for socket-check-timeout, and an accepted socket that arrived meanwhile is read
//! (and treated as crossed) before going on. With network delays below socket-check-timeout
//! both nodes then always end with the same two sockets (tests/connection.rs checks this over
//! thousands of random schedules).
//!
//! The check ends early when it has nothing left to learn: a socket of the pair died, or the
//! peer's handshake has begun (its P_CONNECTION_FEATURES on our data socket or on one we have
//! not read yet). A peer that checks faster than we do (a kernel with the default
//! ping-timeout of 0.5 s against our longer one) waits only 4 x its own ping-timeout for our
//! features; a full check on our side would eat most of that and, with a slow network or a
//! slow guest, all of it. tests/connection.rs runs udrbd against a model of 8.4.11's
//! `conn_connect()` behind qemu's user network, with stalls of up to 0.6 s.
//!
//! During the handshake nobody reads the meta socket (as in DRBD): when it closes, what the
//! data socket says still counts (an authentication failure is reported as such, even if the
//! peer's FIN on the meta socket overtook its last bytes on the data socket), but the attempt
//! cannot end Established.
//!
//! Shape (STYLE.md habit 2): [`ConnectionSetup::handle`]`(now, input)`, then drain
//! [`ConnectionSetup::poll_output`] until `None`, then arm a timer for
//! [`ConnectionSetup::poll_timeout`] and feed [`SetupInput::Timeout`] when it passes (spurious
//! timeouts are no-ops). The machine does no IO: the driver owns the listener and the sockets.
//! Outgoing sockets get ids from the machine (at or above [`OUTGOING_CONN_ID_BASE`]), accepted
//! ones from the driver (below it). The driver reports every outcome of a `Connect` (Connected
//! or Closed), delivers received bytes in order, and reports `Closed` when a socket reads EOF
//! or fails; after a `Close` from the machine it may still report events for that socket,
//! which are ignored.
//!
//! DRBD's return codes of `conn_connect()` become: "retry" (0) = every socket is closed, a
//! [`SetupOutput::Retrying`] reports why, and a new attempt starts 1 s later (DRBD sleeps one
//! second in `drbdd_init`); "give up" (-1, StandAlone) = everything is closed and
//! [`SetupOutput::Failed`] ends the machine. A bad first packet on an accepted socket closes
//! only that socket (`receive_first_packet`, then the coin).
//!
//! Where udrbd is stricter than DRBD 8.4 (which would retry forever on a configuration that
//! can never work): a peer that sends anything but P_AUTH_CHALLENGE when we expect it
//! ([`SetupError::AuthNotConfiguredOnPeer`]), an auth response of the wrong length (another
//! cram-hmac-alg on the peer, [`SetupError::AuthFailed`]) and an unexpected packet instead of
//! P_AUTH_RESPONSE give up instead of retrying. udrbd advertises protocol 100..=101 only (every
//! 8.4 release since 2012 speaks them); an older peer is refused with
//! [`SetupError::IncompatibleProtocol`].
//!
//! Invariants ([`ConnectionSetup::invariants`]): at most one connect is pending; a socket id
//! is in at most one role (pending connect, queued accept, socket being read, data, meta); the
//! armed timer is the current step's, and only one; RESOLVE_CONFLICTS is set exactly when the
//! meta socket was accepted; every receive buffer holds at most [`MAX_SETUP_BUFFER`] bytes and
//! at most [`MAX_QUEUED_ACCEPTS`] accepted sockets wait; after Established, Failed or Stop the
//! machine holds no socket and arms no timer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::RngCore;
use udrbd_wire::{
    Agreed, Command, ConnectionFeatures, DecodeContext, DecodeError, FeatureFlags, Header,
    HeaderFormat, HeaderKind, Packet,
};

use crate::types::Instant;

/// The oldest protocol version udrbd speaks (h100 headers; 8.4 releases since 2012 speak
/// 100..=101, older peers are refused by name).
pub const PROTOCOL_MIN: u32 = 100;
/// The newest protocol version udrbd speaks (8.4's `PRO_VERSION_MAX`).
pub const PROTOCOL_MAX: u32 = 101;
/// Bytes of our P_AUTH_CHALLENGE (`CHALLENGE_LEN`).
pub const CHALLENGE_LEN: usize = 64;
/// Longest shared secret DRBD accepts (`SHARED_SECRET_MAX`).
pub const MAX_SHARED_SECRET_LEN: usize = 64;
/// Ids of sockets the machine connects start here; the driver numbers accepted sockets below.
pub const OUTGOING_CONN_ID_BASE: u64 = 1 << 63;
/// Accepted sockets waiting to be read; more are closed at once (a listen backlog).
pub const MAX_QUEUED_ACCEPTS: usize = 8;
/// Bytes buffered per socket during setup. A well-behaved peer sends at most its features,
/// its challenge and response, and the first packets of its handshake before it needs ours.
pub const MAX_SETUP_BUFFER: usize = 64 * 1024;
/// Pause between a failed attempt and the next (`schedule_timeout(HZ)` in `drbdd_init`).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// P_INITIAL_DATA / P_INITIAL_META: an h80 header with length 0.
const INITIAL_PACKET_LEN: usize = 8;

/// A socket, named by the driver (accepted) or by the machine (connected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// The hash of cram-hmac-alg, by the kernel crypto name DRBD configures (`hmac(<name>)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CramHmacAlg {
    /// `sha1`: 20-byte responses.
    Sha1,
    /// `sha256`: 32-byte responses.
    Sha256,
    /// `sha512`: 64-byte responses.
    Sha512,
}

macro_rules! hmac_with {
    ($hash:ty, $key:expr, $message:expr) => {{
        let mut mac =
            <Hmac<$hash> as KeyInit>::new_from_slice($key).expect("HMAC takes keys of any length");
        mac.update($message);
        mac
    }};
}

impl CramHmacAlg {
    /// The algorithm of a kernel hash name (`cram-hmac-alg sha256;`).
    pub fn from_kernel_name(name: &str) -> Result<CramHmacAlg, ConfigError> {
        match name {
            "sha1" => Ok(CramHmacAlg::Sha1),
            "sha256" => Ok(CramHmacAlg::Sha256),
            "sha512" => Ok(CramHmacAlg::Sha512),
            _ => Err(ConfigError::UnknownCramHmacAlg),
        }
    }

    /// The kernel hash name.
    pub fn kernel_name(self) -> &'static str {
        match self {
            CramHmacAlg::Sha1 => "sha1",
            CramHmacAlg::Sha256 => "sha256",
            CramHmacAlg::Sha512 => "sha512",
        }
    }

    /// Bytes of a response (`crypto_hash_digestsize`).
    pub fn digest_len(self) -> usize {
        match self {
            CramHmacAlg::Sha1 => 20,
            CramHmacAlg::Sha256 => 32,
            CramHmacAlg::Sha512 => 64,
        }
    }

    /// HMAC(key, message): the P_AUTH_RESPONSE to a challenge.
    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        let tag = match self {
            CramHmacAlg::Sha1 => hmac_with!(sha1::Sha1, key, message)
                .finalize()
                .into_bytes()
                .to_vec(),
            CramHmacAlg::Sha256 => hmac_with!(sha2::Sha256, key, message)
                .finalize()
                .into_bytes()
                .to_vec(),
            CramHmacAlg::Sha512 => hmac_with!(sha2::Sha512, key, message)
                .finalize()
                .into_bytes()
                .to_vec(),
        };
        debug_assert_eq!(tag.len(), self.digest_len());
        tag
    }

    /// Whether `tag` is HMAC(key, message), compared in constant time.
    pub fn verify(self, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        match self {
            CramHmacAlg::Sha1 => hmac_with!(sha1::Sha1, key, message)
                .verify_slice(tag)
                .is_ok(),
            CramHmacAlg::Sha256 => hmac_with!(sha2::Sha256, key, message)
                .verify_slice(tag)
                .is_ok(),
            CramHmacAlg::Sha512 => hmac_with!(sha2::Sha512, key, message)
                .verify_slice(tag)
                .is_ok(),
        }
    }
}

/// cram-hmac-alg and shared-secret: peer authentication is on.
#[derive(Clone, PartialEq, Eq)]
pub struct CramHmac {
    alg: CramHmacAlg,
    secret: Vec<u8>,
}

impl CramHmac {
    /// Authentication with the kernel hash `alg_name` and the secret's bytes (no terminator,
    /// as DRBD keys the HMAC with `strlen(shared_secret)` bytes).
    pub fn new(alg_name: &str, shared_secret: &[u8]) -> Result<CramHmac, ConfigError> {
        let alg = CramHmacAlg::from_kernel_name(alg_name)?;
        if shared_secret.len() > MAX_SHARED_SECRET_LEN {
            return Err(ConfigError::SharedSecretTooLong {
                len: shared_secret.len(),
            });
        }
        Ok(CramHmac {
            alg,
            secret: shared_secret.to_vec(),
        })
    }

    /// The algorithm.
    pub fn alg(&self) -> CramHmacAlg {
        self.alg
    }
}

impl std::fmt::Debug for CramHmac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CramHmac")
            .field("alg", &self.alg)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// A configuration the machine cannot run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// cram-hmac-alg names a hash udrbd does not implement.
    #[error("cram-hmac-alg must be sha1, sha256 or sha512")]
    UnknownCramHmacAlg,
    /// shared-secret is longer than DRBD allows.
    #[error("shared-secret of {len} bytes, at most 64")]
    SharedSecretTooLong {
        /// Its length.
        len: usize,
    },
}

/// The net options connection setup uses.
#[derive(Clone, Debug)]
pub struct SetupConfig {
    /// Where we listen (`address` of our `on` section).
    pub own_address: SocketAddr,
    /// Where we connect (`address` of the peer's `on` section).
    pub peer_address: SocketAddr,
    /// `connect-int`: the pause between connect attempts.
    pub connect_int: Duration,
    /// `ping-timeout`: 4 times this bounds the wait for each handshake packet.
    pub ping_timeout: Duration,
    /// `socket-check-timeout` (zero: use `ping-timeout`).
    pub socket_check_timeout: Duration,
    /// `cram-hmac-alg` and `shared-secret`, if set.
    pub cram_hmac: Option<CramHmac>,
    /// The feature flags we advertise in P_CONNECTION_FEATURES (what udrbd implements).
    pub features: FeatureFlags,
}

impl SetupConfig {
    /// DRBD's defaults (connect-int 10 s, ping-timeout 0.5 s, socket-check-timeout 0, no
    /// authentication, no features).
    pub fn new(own_address: SocketAddr, peer_address: SocketAddr) -> SetupConfig {
        SetupConfig {
            own_address,
            peer_address,
            connect_int: Duration::from_secs(10),
            ping_timeout: Duration::from_millis(500),
            socket_check_timeout: Duration::ZERO,
            cram_hmac: None,
            features: FeatureFlags::default(),
        }
    }
}

/// What the driver tells the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupInput {
    /// Begin: listen and connect.
    Start,
    /// The listener accepted a socket (its id chosen by the driver, below
    /// [`OUTGOING_CONN_ID_BASE`]).
    Accepted {
        /// The new socket.
        conn: ConnId,
    },
    /// A `Connect` succeeded.
    Connected {
        /// The socket named in the `Connect`.
        conn: ConnId,
    },
    /// Bytes read from a socket, in stream order.
    Received {
        /// The socket.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// A socket reached EOF or failed, or a `Connect` failed; the driver released it.
    Closed {
        /// The socket.
        conn: ConnId,
    },
    /// The deadline from `poll_timeout` passed (spurious calls are harmless).
    Timeout,
    /// Disconnect: close everything and stop.
    Stop,
}

/// What the machine asks of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupOutput {
    /// Listen on our address (emitted once, at Start). The listener is no longer needed after
    /// Established, Failed or Stop (DRBD releases it once both sockets are up).
    Listen {
        /// Our address.
        addr: SocketAddr,
    },
    /// Open a connection to the peer and report `Connected` or `Closed` for `conn`.
    Connect {
        /// The id of the new socket.
        conn: ConnId,
        /// The peer's address.
        addr: SocketAddr,
    },
    /// Write these bytes to the socket.
    Send {
        /// The socket.
        conn: ConnId,
        /// The bytes.
        bytes: Bytes,
    },
    /// Close the socket and forget it.
    Close {
        /// The socket.
        conn: ConnId,
    },
    /// Informational: a socket or a whole attempt failed in a way DRBD retries; the machine
    /// goes on by itself.
    Retrying {
        /// What went wrong.
        reason: SetupError,
    },
    /// Final: both sockets are up, the peer agreed on a version (and authenticated). The
    /// sockets now belong to the caller.
    Established {
        /// The data socket.
        data: ConnId,
        /// The meta socket.
        meta: ConnId,
        /// The agreed protocol version (100 or 101).
        agreed_version: u32,
        /// Our feature flags AND the peer's.
        agreed_features: u32,
        /// We accepted the meta socket: we are the tie-breaker (RESOLVE_CONFLICTS).
        resolve_conflicts: bool,
        /// Bytes received on the data socket after the handshake, to be decoded first.
        leftover_data: Bytes,
        /// Bytes received on the meta socket, to be decoded first.
        leftover_meta: Bytes,
    },
    /// Final: DRBD would go StandAlone. Every socket has been closed.
    Failed {
        /// Why.
        reason: SetupError,
    },
}

/// Why a connection attempt failed (final in [`SetupOutput::Failed`], informational in
/// [`SetupOutput::Retrying`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The peer's P_AUTH_RESPONSE is not HMAC(secret, our challenge): another secret, or
    /// another cram-hmac-alg (a response of the wrong length).
    #[error("authentication of peer failed")]
    AuthFailed,
    /// The peer presented our own challenge (a reflection attack).
    #[error("peer presented the same challenge")]
    AuthReflection,
    /// We have cram-hmac-alg set; the peer sent something else where its challenge belongs.
    #[error("peer does not authenticate (cram-hmac-alg not set on the peer)")]
    AuthNotConfiguredOnPeer,
    /// We have no cram-hmac-alg; the peer sent P_AUTH_CHALLENGE.
    #[error("peer expects authentication (cram-hmac-alg not set here)")]
    AuthExpectedButNotOffered,
    /// The peer's protocol range does not reach ours (100..=101).
    #[error(
        "incompatible DRBD dialects: we support {PROTOCOL_MIN}-{PROTOCOL_MAX}, peer {peer_min}-{peer_max}"
    )]
    IncompatibleProtocol {
        /// The peer's oldest version.
        peer_min: u32,
        /// The peer's newest version.
        peer_max: u32,
    },
    /// A well-formed packet other than the one the handshake expects.
    #[error("expected {expected}, received command {received:#06x}")]
    UnexpectedPacket {
        /// What the handshake waits for.
        expected: Command,
        /// What came.
        received: u16,
    },
    /// The first bytes of an accepted socket are not P_INITIAL_DATA / P_INITIAL_META, or a
    /// socket sent more than setup buffers.
    #[error("garbage instead of a DRBD packet")]
    Garbage,
    /// A handshake packet does not decode.
    #[error("protocol error: {0}")]
    Protocol(DecodeError),
    /// A handshake packet or a first packet did not arrive in time (4 x ping-timeout).
    #[error("timeout waiting for the peer")]
    Timeout,
    /// A socket closed during the handshake.
    #[error("connection lost")]
    ConnectionLost,
}

impl SetupError {
    /// The error for the first packet the engine decodes after Established, if that packet
    /// shows a configuration mismatch setup could not see in time: a peer with cram-hmac-alg
    /// sends its P_AUTH_CHALLENGE only after our P_CONNECTION_FEATURES arrived, so it may come
    /// after we (without cram-hmac-alg) were already established.
    pub fn first_packet_after_setup(packet: &Packet) -> Option<SetupError> {
        matches!(packet, Packet::AuthChallenge(_)).then_some(SetupError::AuthExpectedButNotOffered)
    }
}

/// Counters for status output and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetupStats {
    /// Attempts started (1 after Start, one more after each retry pause).
    pub attempts: u32,
    /// `Connect`s emitted.
    pub connects: u32,
    /// Sockets accepted (queued).
    pub accepted: u32,
    /// "initial packet crossed": a second data or meta socket replaced the first.
    pub crossed: u32,
}

/// Who opened a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// We connected it.
    Connected,
    /// We accepted it.
    Accepted,
}

/// The peer's handshake has begun on our data socket (see [`ConnectionSetup::peer_handshake`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerHandshake {
    /// With a meta socket the peer connected: our pair is the peer's.
    OnOurPair,
    /// With a meta socket we connected, before the peer's bytes came at this time.
    Since(Instant),
}

/// A data or meta socket.
#[derive(Debug)]
struct Socket {
    conn: ConnId,
    origin: Origin,
    /// Bytes received and not yet consumed by the handshake.
    received: BytesMut,
    /// The meta socket closed during the handshake (never set on the data socket).
    closed: bool,
    /// When it became our data or meta socket.
    since: Instant,
    /// When its first bytes after the initial packet came (on the data socket: the peer's
    /// handshake has begun).
    first_bytes_at: Option<Instant>,
}

/// An accepted socket whose first packet is not yet read.
#[derive(Debug)]
struct Incoming {
    conn: ConnId,
    received: BytesMut,
    /// The driver reported EOF: what is buffered is all there is.
    closed: bool,
    /// When bytes beyond the initial packet came (the peer's handshake, if it becomes our
    /// data socket).
    first_bytes_at: Option<Instant>,
}

impl Incoming {
    fn receive(&mut self, now: Instant, bytes: &[u8]) {
        self.received.extend_from_slice(bytes);
        if self.first_bytes_at.is_none() && self.received.len() > INITIAL_PACKET_LEN {
            self.first_bytes_at = Some(now);
        }
    }
}

/// Where in `conn_connect()` the machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Before Start.
    Idle,
    /// `drbd_try_connect`: one connect outstanding.
    Connecting {
        conn: ConnId,
    },
    /// Both sockets exist after our connect: wait socket-check-timeout, then check.
    SocketCheck,
    /// `drbd_wait_for_connect`: waiting for an accepted socket.
    WaitAccept,
    /// `receive_first_packet` on `reading`.
    ReadFirstPacket,
    /// Between a failed attempt and the next.
    Pause,
    /// P_CONNECTION_FEATURES sent, waiting for the peer's.
    Features,
    /// P_AUTH_CHALLENGE sent, waiting for the peer's.
    AuthChallenge,
    /// P_AUTH_RESPONSE sent, waiting for the peer's.
    AuthResponse,
    /// Final states.
    Established,
    Failed,
    Stopped,
}

impl Step {
    fn is_final(self) -> bool {
        matches!(self, Step::Established | Step::Failed | Step::Stopped)
    }

    /// Steps inside the socket loop of `conn_connect()` (accepted sockets queue).
    fn is_socket_loop(self) -> bool {
        matches!(
            self,
            Step::Connecting { .. } | Step::SocketCheck | Step::WaitAccept | Step::ReadFirstPacket
        )
    }

    fn is_handshake(self) -> bool {
        matches!(
            self,
            Step::Features | Step::AuthChallenge | Step::AuthResponse
        )
    }

    /// The timer this step runs on.
    fn timer(self) -> Option<SetupTimer> {
        match self {
            Step::Connecting { .. } => Some(SetupTimer::Connect),
            Step::SocketCheck => Some(SetupTimer::SocketCheck),
            Step::WaitAccept => Some(SetupTimer::AcceptWait),
            Step::ReadFirstPacket => Some(SetupTimer::FirstPacket),
            Step::Pause => Some(SetupTimer::Pause),
            Step::Features | Step::AuthChallenge | Step::AuthResponse => {
                Some(SetupTimer::Handshake)
            }
            Step::Idle | Step::Established | Step::Failed | Step::Stopped => None,
        }
    }
}

/// The timers of connection setup; each step runs on exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetupTimer {
    /// A connect outstanding for connect-int is given up.
    Connect = 0,
    /// No accepted socket within connect-int +- 1/7: connect again.
    AcceptWait,
    /// socket-check-timeout after both sockets exist.
    SocketCheck,
    /// 4 x ping-timeout for the first packet of an accepted socket.
    FirstPacket,
    /// 4 x ping-timeout for each handshake packet (the data socket's receive timeout).
    Handshake,
    /// 1 s between attempts.
    Pause,
}

impl SetupTimer {
    const ALL: [SetupTimer; 6] = [
        SetupTimer::Connect,
        SetupTimer::AcceptWait,
        SetupTimer::SocketCheck,
        SetupTimer::FirstPacket,
        SetupTimer::Handshake,
        SetupTimer::Pause,
    ];
}

/// One deadline per [`SetupTimer`].
#[derive(Clone, Debug, Default)]
struct TimerTable {
    deadlines: [Option<Instant>; SetupTimer::ALL.len()],
}

impl TimerTable {
    fn set(&mut self, timer: SetupTimer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    fn stop(&mut self, timer: SetupTimer) {
        self.deadlines[timer as usize] = None;
    }

    fn get(&self, timer: SetupTimer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    fn clear(&mut self) {
        self.deadlines = Default::default();
    }

    fn first_expired(&self, now: Instant) -> Option<SetupTimer> {
        SetupTimer::ALL
            .into_iter()
            .find(|t| self.deadlines[*t as usize].is_some_and(|at| at <= now))
    }

    fn armed(&self) -> impl Iterator<Item = SetupTimer> + '_ {
        SetupTimer::ALL
            .into_iter()
            .filter(|t| self.deadlines[*t as usize].is_some())
    }

    fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }
}

/// The result of looking for the next handshake packet in a receive buffer.
enum Next {
    /// More bytes needed.
    Incomplete,
    /// The expected packet, consumed from the buffer.
    Packet(Packet),
    /// A well-formed header of another command (not consumed).
    Unexpected { command: u16 },
    /// Undecodable.
    Error(DecodeError),
}

/// Data or meta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Data,
    Meta,
}

/// The sans-IO connection setup of one peer (see the module documentation).
#[derive(Debug)]
pub struct ConnectionSetup {
    config: SetupConfig,
    rng: ChaCha20Rng,
    step: Step,
    timers: TimerTable,
    outputs: VecDeque<SetupOutput>,
    next_outgoing: u64,
    data: Option<Socket>,
    meta: Option<Socket>,
    /// DRBD's RESOLVE_CONFLICTS bit: set on accepting P_INITIAL_META, cleared on connecting
    /// the meta socket.
    resolve_conflicts: bool,
    /// Accepted sockets not yet read (the listen backlog), in accept order.
    incoming: VecDeque<Incoming>,
    /// The accepted socket whose first packet is being read.
    reading: Option<Incoming>,
    agreed: Option<Agreed>,
    challenge: Option<[u8; CHALLENGE_LEN]>,
    stats: SetupStats,
}

impl ConnectionSetup {
    /// A machine for `config`, drawing challenges and coin flips from `rng`.
    pub fn new(config: SetupConfig, rng: ChaCha20Rng) -> ConnectionSetup {
        assert!(!config.connect_int.is_zero(), "connect-int is at least 1 s");
        assert!(
            !config.ping_timeout.is_zero(),
            "ping-timeout is at least 0.1 s"
        );
        ConnectionSetup {
            config,
            rng,
            step: Step::Idle,
            timers: TimerTable::default(),
            outputs: VecDeque::new(),
            next_outgoing: OUTGOING_CONN_ID_BASE,
            data: None,
            meta: None,
            resolve_conflicts: false,
            incoming: VecDeque::new(),
            reading: None,
            agreed: None,
            challenge: None,
            stats: SetupStats::default(),
        }
    }

    /// Numbers outgoing sockets from `first` on (at or above [`OUTGOING_CONN_ID_BASE`]), so
    /// that successive machines of one engine never reuse an id the driver may still hold.
    #[must_use]
    pub fn with_first_outgoing_id(mut self, first: u64) -> ConnectionSetup {
        assert!(
            first >= OUTGOING_CONN_ID_BASE,
            "outgoing ids start at the base"
        );
        self.next_outgoing = first;
        self
    }

    /// Processes one input; then drain `poll_output` and re-arm the timer.
    pub fn handle(&mut self, now: Instant, input: SetupInput) {
        match input {
            SetupInput::Start => self.start(now),
            SetupInput::Accepted { conn } => self.on_accepted(now, conn),
            SetupInput::Connected { conn } => self.on_connected(now, conn),
            SetupInput::Received { conn, bytes } => self.on_received(now, conn, &bytes),
            SetupInput::Closed { conn } => self.on_closed(now, conn),
            SetupInput::Timeout => self.on_timeout(now),
            SetupInput::Stop => self.stop(),
        }
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<SetupOutput> {
        self.outputs.pop_front()
    }

    /// When to call `handle(now, Timeout)` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Whether Established, Failed or Stop ended the machine.
    pub fn is_finished(&self) -> bool {
        self.step.is_final()
    }

    /// Counters.
    pub fn stats(&self) -> SetupStats {
        self.stats
    }

    /// Panics if an invariant of the module documentation is violated.
    pub fn invariants(&self) {
        let mut ids: Vec<ConnId> = Vec::new();
        if let Step::Connecting { conn } = self.step {
            assert!(conn.0 >= OUTGOING_CONN_ID_BASE && conn.0 < self.next_outgoing);
            assert!(!self.has_both(), "a connect only while a socket is missing");
            ids.push(conn);
        }
        ids.extend(self.data.iter().chain(self.meta.iter()).map(|s| s.conn));
        ids.extend(
            self.incoming
                .iter()
                .chain(self.reading.iter())
                .map(|i| i.conn),
        );
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "a socket in two roles");
        assert!(self.incoming.len() <= MAX_QUEUED_ACCEPTS);
        for s in self.data.iter().chain(self.meta.iter()) {
            assert!(s.received.len() <= MAX_SETUP_BUFFER);
        }
        for i in self.incoming.iter().chain(self.reading.iter()) {
            assert!(i.received.len() <= MAX_SETUP_BUFFER);
        }
        assert!(self.data.as_ref().is_none_or(|s| !s.closed));
        assert!(self.step.is_handshake() || self.meta.as_ref().is_none_or(|s| !s.closed));
        if let Some(meta) = &self.meta {
            assert_eq!(
                self.resolve_conflicts,
                meta.origin == Origin::Accepted,
                "RESOLVE_CONFLICTS is set exactly by accepting the meta socket"
            );
        }
        assert_eq!(self.reading.is_some(), self.step == Step::ReadFirstPacket);
        let armed: Vec<SetupTimer> = self.timers.armed().collect();
        assert_eq!(armed, self.step.timer().into_iter().collect::<Vec<_>>());
        if !self.step.is_socket_loop() {
            assert!(self.incoming.is_empty() && self.reading.is_none());
        }
        if self.step.is_handshake() {
            assert!(self.has_both(), "the handshake runs on both sockets");
            assert_eq!(self.agreed.is_some(), self.step != Step::Features);
            assert_eq!(self.challenge.is_some(), self.step != Step::Features);
        }
        if self.step.is_final() || self.step == Step::Pause || self.step == Step::Idle {
            assert!(self.data.is_none() && self.meta.is_none());
        }
    }

    fn start(&mut self, now: Instant) {
        if self.step != Step::Idle {
            return;
        }
        self.outputs.push_back(SetupOutput::Listen {
            addr: self.config.own_address,
        });
        self.stats.attempts = 1;
        self.connect(now);
    }

    /// The top of DRBD's loop: `drbd_try_connect`.
    fn connect(&mut self, now: Instant) {
        assert!(!self.has_both());
        let conn = ConnId(self.next_outgoing);
        self.next_outgoing += 1;
        self.stats.connects += 1;
        self.outputs.push_back(SetupOutput::Connect {
            conn,
            addr: self.config.peer_address,
        });
        self.enter(Step::Connecting { conn }, now.plus(self.config.connect_int));
    }

    fn on_connected(&mut self, now: Instant, conn: ConnId) {
        if self.step != (Step::Connecting { conn }) {
            return; // a connect we gave up (and closed) already
        }
        let packet = if self.data.is_none() {
            self.data = Some(Socket::new(conn, Origin::Connected, now));
            Packet::InitialData
        } else {
            assert!(
                self.meta.is_none(),
                "connecting only while a socket is missing"
            );
            self.resolve_conflicts = false;
            self.meta = Some(Socket::new(conn, Origin::Connected, now));
            Packet::InitialMeta
        };
        self.send(conn, &packet, HeaderFormat::Short);
        if self.has_both() {
            self.socket_check(now);
        } else {
            self.wait_accept(now);
        }
    }

    /// Both sockets exist: sleep socket-check-timeout (ping-timeout if 0), then check them.
    ///
    /// Shorter once the peer's handshake has begun on our data socket (its
    /// P_CONNECTION_FEATURES, or the first bytes of it): the peer has checked its pair and
    /// waits for our features, 4 x its own ping-timeout from the end of its own check.
    /// Sleeping our full check on top (a longer ping-timeout than the peer's, a late start of
    /// ours) can miss that deadline, and the peer gives up on a pair we then take as
    /// established (see [`Self::peer_handshake`]).
    fn socket_check(&mut self, now: Instant) {
        debug_assert!(self.has_both());
        let end = now.plus(self.socket_check_timeout());
        self.enter(Step::SocketCheck, end);
        self.shorten_socket_check(now);
    }

    fn socket_check_timeout(&self) -> Duration {
        if self.config.socket_check_timeout.is_zero() {
            self.config.ping_timeout
        } else {
            self.config.socket_check_timeout
        }
    }

    /// Ends the socket check early, or sooner, once the peer's handshake has begun.
    fn shorten_socket_check(&mut self, now: Instant) {
        debug_assert_eq!(self.step, Step::SocketCheck);
        let end = match self.peer_handshake() {
            None => return,
            Some(PeerHandshake::OnOurPair) => now,
            Some(PeerHandshake::Since(at)) => {
                let grace = self.socket_check_timeout() / 4;
                let current = self.timers.get(SetupTimer::SocketCheck).expect("armed");
                current.min(at.plus(grace)).max(now)
            }
        };
        if end <= now {
            self.timers.stop(SetupTimer::SocketCheck);
            self.socket_check_done(now);
        } else {
            self.timers.set(SetupTimer::SocketCheck, end);
        }
    }

    /// Whether the peer's handshake has begun on a pair that can be ours: bytes on our data
    /// socket after its initial packet, and a meta socket that is not known dead and that the
    /// peer may hold. A meta socket the peer connected is one it holds (it connects only the
    /// sockets of its pair, before its handshake begins). One we connected before the peer's
    /// bytes came may be in the peer's backlog, which the peer resets as its handshake begins:
    /// a short grace after the bytes lets that reset arrive. One we connected after them cannot
    /// be the peer's (its listener is gone).
    fn peer_handshake(&self) -> Option<PeerHandshake> {
        let (Some(data), Some(meta)) = (&self.data, &self.meta) else {
            return None;
        };
        let began = data.first_bytes_at?;
        match meta.origin {
            _ if meta.closed => None,
            Origin::Accepted => Some(PeerHandshake::OnOurPair),
            Origin::Connected if meta.since <= began => Some(PeerHandshake::Since(began)),
            Origin::Connected => None,
        }
    }

    /// The end of the socket check: on to the handshake only with both sockets alive and no
    /// accepted socket waiting. A waiting one is read first (DRBD would release it with its
    /// listen socket): if the peer connected a data or meta socket at the same time as we
    /// did, that is "crossed" and handled as such, instead of both sides going on with
    /// different sockets.
    ///
    /// A queued socket the peer has already closed is not read: the peer gave it up (it
    /// released it as crossed, or its connect timed out) and holds other sockets, perhaps
    /// exactly our pair. Taking it as "crossed" would close a socket of a pair the peer has
    /// already checked and is handshaking on (a kernel peer then logs "short read (expected
    /// size 8)" and starts over).
    fn socket_check_done(&mut self, now: Instant) {
        self.incoming.retain(|i| !i.closed);
        if self.has_both() && self.incoming.is_empty() {
            self.begin_handshake(now);
        } else {
            self.wait_accept(now);
        }
    }

    /// `drbd_wait_for_connect`: connect-int with 1/7 random jitter, or the next queued socket.
    fn wait_accept(&mut self, now: Instant) {
        let interval = self.config.connect_int;
        let jitter = interval / 7;
        let timeout = if self.coin() {
            interval + jitter
        } else {
            interval - jitter
        };
        self.enter(Step::WaitAccept, now.plus(timeout));
        self.take_incoming(now);
    }

    fn take_incoming(&mut self, now: Instant) {
        debug_assert_eq!(self.step, Step::WaitAccept);
        if let Some(incoming) = self.incoming.pop_front() {
            self.reading = Some(incoming);
            self.enter(
                Step::ReadFirstPacket,
                now.plus(self.config.ping_timeout * 4),
            );
            self.read_first_packet(now);
        }
    }

    fn on_accepted(&mut self, now: Instant, conn: ConnId) {
        assert!(
            conn.0 < OUTGOING_CONN_ID_BASE,
            "the driver numbers accepted sockets below OUTGOING_CONN_ID_BASE"
        );
        self.stats.accepted += 1;
        if !self.step.is_socket_loop() || self.incoming.len() >= MAX_QUEUED_ACCEPTS {
            self.outputs.push_back(SetupOutput::Close { conn });
            return;
        }
        self.incoming.push_back(Incoming {
            conn,
            received: BytesMut::new(),
            closed: false,
            first_bytes_at: None,
        });
        if self.step == Step::WaitAccept {
            self.take_incoming(now);
        }
    }

    /// `receive_first_packet` and the classification after it.
    fn read_first_packet(&mut self, now: Instant) {
        let Some(incoming) = &self.reading else {
            return;
        };
        if incoming.received.len() < INITIAL_PACKET_LEN {
            if incoming.closed {
                self.first_packet_failed(now, SetupError::ConnectionLost);
            }
            return;
        }
        let role = match Header::decode(HeaderFormat::Short, &incoming.received) {
            Ok(h) if h.kind == HeaderKind::H80 && h.length == 0 => {
                match Command::from_u16(h.command) {
                    Some(Command::InitialData) => Some(Role::Data),
                    Some(Command::InitialMeta) => Some(Role::Meta),
                    _ => None,
                }
            }
            _ => None,
        };
        match role {
            Some(role) => {
                let mut incoming = self.reading.take().expect("checked above");
                incoming.received.advance(INITIAL_PACKET_LEN);
                self.classify(now, incoming, role);
            }
            None => self.first_packet_failed(now, SetupError::Garbage),
        }
    }

    fn first_packet_failed(&mut self, now: Instant, reason: SetupError) {
        let incoming = self.reading.take().expect("reading a first packet");
        if !incoming.closed {
            self.outputs.push_back(SetupOutput::Close {
                conn: incoming.conn,
            });
        }
        self.outputs.push_back(SetupOutput::Retrying { reason });
        self.after_accept(now, true);
    }

    /// The `switch (fp)` of `conn_connect()`.
    fn classify(&mut self, now: Instant, incoming: Incoming, role: Role) {
        let socket = Socket {
            conn: incoming.conn,
            origin: Origin::Accepted,
            first_bytes_at: incoming.first_bytes_at,
            received: incoming.received,
            closed: false,
            since: now,
        };
        let slot = match role {
            Role::Data => &mut self.data,
            Role::Meta => {
                self.resolve_conflicts = true;
                &mut self.meta
            }
        };
        let old = slot.replace(socket);
        if incoming.closed {
            // drbd_socket_okay() at the bottom of the loop releases it.
            *slot = None;
        }
        let crossed = old.is_some();
        if let Some(old) = old {
            self.stats.crossed += 1;
            self.outputs
                .push_back(SetupOutput::Close { conn: old.conn });
        }
        self.after_accept(now, crossed);
    }

    /// After an accepted socket: on "crossed" or a bad first packet DRBD flips a coin between
    /// waiting for another accept (`goto retry`) and the bottom of the loop. The coin breaks
    /// the symmetry of two nodes that cross each other's sockets; a peer whose handshake has
    /// begun on our pair has left its loop, and waits for our features (see `socket_check`).
    fn after_accept(&mut self, now: Instant, randomize: bool) {
        if randomize && self.peer_handshake().is_none() && self.coin() {
            self.wait_accept(now);
        } else {
            self.loop_bottom(now);
        }
    }

    /// `while (!ok)`: with both sockets alive, on to the handshake (through a socket check,
    /// see [`Self::socket_check_done`]); else connect again.
    fn loop_bottom(&mut self, now: Instant) {
        if self.has_both() {
            self.socket_check(now);
        } else {
            self.connect(now);
        }
    }

    fn on_received(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        if let Some(incoming) = self.reading.as_mut().filter(|i| i.conn == conn) {
            if incoming.received.len() + bytes.len() > MAX_SETUP_BUFFER {
                return self.first_packet_failed(now, SetupError::Garbage);
            }
            incoming.receive(now, bytes);
            return self.read_first_packet(now);
        }
        if let Some(at) = self.incoming.iter().position(|i| i.conn == conn) {
            let incoming = &mut self.incoming[at];
            if incoming.received.len() + bytes.len() > MAX_SETUP_BUFFER {
                let incoming = self.incoming.remove(at).expect("found");
                if !incoming.closed {
                    self.outputs.push_back(SetupOutput::Close {
                        conn: incoming.conn,
                    });
                }
                self.outputs.push_back(SetupOutput::Retrying {
                    reason: SetupError::Garbage,
                });
            } else {
                incoming.receive(now, bytes);
                if incoming.first_bytes_at.is_some() && self.step == Step::SocketCheck {
                    // The peer's handshake has begun on a socket we have not read: our
                    // pair is not the peer's, and the check cannot make it so.
                    self.socket_check_done(now);
                }
            }
            return;
        }
        let Some(role) = self.role_of(conn) else {
            return; // a socket we closed
        };
        let socket = self.socket_mut(role);
        if socket.received.len() + bytes.len() > MAX_SETUP_BUFFER {
            return self.socket_failed(now, role, SetupError::Garbage);
        }
        if socket.first_bytes_at.is_none() && !bytes.is_empty() {
            socket.first_bytes_at = Some(now);
        }
        socket.received.extend_from_slice(bytes);
        if role == Role::Data && self.step.is_handshake() {
            self.progress_handshake(now);
        } else if self.step == Step::SocketCheck {
            self.shorten_socket_check(now);
        }
    }

    fn on_closed(&mut self, now: Instant, conn: ConnId) {
        if self.step == (Step::Connecting { conn }) {
            // Refused or failed: wait for the peer to connect to us.
            return self.wait_accept(now);
        }
        if let Some(incoming) = self.reading.as_mut().filter(|i| i.conn == conn) {
            incoming.closed = true;
            return self.read_first_packet(now);
        }
        if let Some(incoming) = self.incoming.iter_mut().find(|i| i.conn == conn) {
            // Its first packet may still be buffered: DRBD reads it from a closed socket.
            incoming.closed = true;
            return;
        }
        match self.role_of(conn) {
            Some(Role::Meta) if self.step.is_handshake() => {
                // Nobody reads the meta socket during the handshake (as in DRBD): what the
                // data socket says comes first, a closed meta socket only prevents
                // Established. Across two sockets a FIN can overtake the other's last bytes.
                self.socket_mut(Role::Meta).closed = true;
            }
            Some(role) => {
                match role {
                    Role::Data => self.data = None,
                    Role::Meta => self.meta = None,
                }
                if self.step.is_handshake() {
                    self.retry(now, SetupError::ConnectionLost);
                } else if self.step == Step::SocketCheck {
                    // The check found what it waits for: a socket of the pair is dead.
                    self.socket_check_done(now);
                }
            }
            None => {}
        }
    }

    /// A data or meta socket misbehaved: in the socket loop drop it, in the handshake retry.
    fn socket_failed(&mut self, now: Instant, role: Role, reason: SetupError) {
        if self.step.is_handshake() {
            return self.retry(now, reason);
        }
        let socket = match role {
            Role::Data => self.data.take(),
            Role::Meta => self.meta.take(),
        };
        let conn = socket.expect("a socket in this role").conn;
        self.outputs.push_back(SetupOutput::Close { conn });
        self.outputs.push_back(SetupOutput::Retrying { reason });
    }

    fn on_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.first_expired(now) {
            self.timers.stop(timer);
            match (timer, self.step) {
                (SetupTimer::Connect, Step::Connecting { conn }) => {
                    self.outputs.push_back(SetupOutput::Close { conn });
                    self.wait_accept(now);
                }
                (SetupTimer::AcceptWait, Step::WaitAccept) => self.loop_bottom(now),
                (SetupTimer::SocketCheck, Step::SocketCheck) => self.socket_check_done(now),
                (SetupTimer::FirstPacket, Step::ReadFirstPacket) => {
                    self.first_packet_failed(now, SetupError::Timeout);
                }
                (SetupTimer::Handshake, step) if step.is_handshake() => {
                    self.retry(now, SetupError::Timeout);
                }
                (SetupTimer::Pause, Step::Pause) => {
                    self.stats.attempts += 1;
                    self.connect(now);
                }
                _ => {} // a timer of a step already left (cannot stay armed, but harmless)
            }
        }
    }

    fn stop(&mut self) {
        if self.step.is_final() {
            return;
        }
        self.close_all();
        self.enter_final(Step::Stopped);
    }

    /// Both sockets are up: P_CONNECTION_FEATURES on the data socket (h80).
    fn begin_handshake(&mut self, now: Instant) {
        assert!(self.has_both());
        while let Some(incoming) = self.incoming.pop_front() {
            // DRBD releases its listen socket here; queued connections are reset.
            if !incoming.closed {
                self.outputs.push_back(SetupOutput::Close {
                    conn: incoming.conn,
                });
            }
        }
        self.enter(Step::Features, self.handshake_deadline(now));
        let features = self.own_features();
        let data = self.socket(Role::Data).conn;
        self.send(
            data,
            &Packet::ConnectionFeatures(features),
            HeaderFormat::Short,
        );
        self.progress_handshake(now);
    }

    fn own_features(&self) -> ConnectionFeatures {
        ConnectionFeatures {
            protocol_min: PROTOCOL_MIN,
            feature_flags: self.config.features,
            protocol_max: PROTOCOL_MAX,
            pad: 0,
        }
    }

    /// Decodes handshake packets from the data socket while the step expects one.
    fn progress_handshake(&mut self, now: Instant) {
        loop {
            let expected = match self.step {
                Step::Features => Command::ConnectionFeatures,
                Step::AuthChallenge => Command::AuthChallenge,
                Step::AuthResponse => Command::AuthResponse,
                _ => return,
            };
            let format = self.format();
            let received = &mut self.socket_mut(Role::Data).received;
            match next_packet(received, format, expected) {
                Next::Incomplete => return,
                Next::Packet(packet) => self.on_handshake_packet(now, packet),
                Next::Unexpected { command } => {
                    let reason = match expected {
                        Command::AuthChallenge => SetupError::AuthNotConfiguredOnPeer,
                        _ => SetupError::UnexpectedPacket {
                            expected,
                            received: command,
                        },
                    };
                    return self.fail(reason);
                }
                Next::Error(e) => {
                    // DRBD retries when a header does not decode, and gives up on a bad length.
                    return match e {
                        DecodeError::BadMagic { .. } | DecodeError::HeaderPadNotZero { .. } => {
                            self.retry(now, SetupError::Protocol(e))
                        }
                        _ => self.fail(SetupError::Protocol(e)),
                    };
                }
            }
        }
    }

    fn on_handshake_packet(&mut self, now: Instant, packet: Packet) {
        match packet {
            Packet::ConnectionFeatures(peer) => self.on_features(now, &peer),
            Packet::AuthChallenge(challenge) => self.on_challenge(now, &challenge),
            Packet::AuthResponse(response) => self.on_response(now, &response),
            _ => unreachable!("next_packet returns only the expected command"),
        }
    }

    /// `drbd_do_features`, then `drbd_do_auth` starts with our challenge.
    fn on_features(&mut self, now: Instant, peer: &ConnectionFeatures) {
        let agreed = match self.own_features().agree(peer) {
            Ok(agreed) => agreed,
            Err(e) => {
                return self.fail(SetupError::IncompatibleProtocol {
                    peer_min: e.peer_min,
                    peer_max: e.peer_max,
                });
            }
        };
        assert!((PROTOCOL_MIN..=PROTOCOL_MAX).contains(&agreed.protocol_version));
        self.agreed = Some(agreed);
        let mut challenge = [0u8; CHALLENGE_LEN];
        self.rng.fill_bytes(&mut challenge);
        self.challenge = Some(challenge);
        if self.config.cram_hmac.is_none() {
            if self.peer_sent_challenge() {
                return self.fail(SetupError::AuthExpectedButNotOffered);
            }
            return self.establish(now);
        }
        self.enter(Step::AuthChallenge, self.handshake_deadline(now));
        let data = self.socket(Role::Data).conn;
        let packet = Packet::AuthChallenge(Bytes::copy_from_slice(&challenge));
        self.send(data, &packet, self.format());
    }

    fn on_challenge(&mut self, now: Instant, peers: &[u8]) {
        let ours = self.challenge.expect("sent before");
        if peers[..CHALLENGE_LEN] == ours {
            return self.fail(SetupError::AuthReflection);
        }
        let auth = self.config.cram_hmac.as_ref().expect("auth step");
        let response = auth.alg.hmac(&auth.secret, peers);
        self.enter(Step::AuthResponse, self.handshake_deadline(now));
        let data = self.socket(Role::Data).conn;
        let packet = Packet::AuthResponse(Bytes::from(response));
        self.send(data, &packet, self.format());
    }

    fn on_response(&mut self, now: Instant, response: &[u8]) {
        let auth = self.config.cram_hmac.as_ref().expect("auth step");
        let ours = self.challenge.expect("sent before");
        if response.len() == auth.alg.digest_len() && auth.alg.verify(&auth.secret, &ours, response)
        {
            self.establish(now);
        } else {
            self.fail(SetupError::AuthFailed);
        }
    }

    /// Without cram-hmac-alg: whether the peer's next packet, if already here, is its challenge.
    fn peer_sent_challenge(&self) -> bool {
        let format = self.format();
        let received = &self.socket(Role::Data).received;
        received.len() >= format.header_size()
            && Header::decode(format, received)
                .is_ok_and(|h| h.command == Command::AuthChallenge as u16)
    }

    fn establish(&mut self, now: Instant) {
        if self.socket(Role::Meta).closed {
            return self.retry(now, SetupError::ConnectionLost);
        }
        let agreed = self.agreed.expect("features agreed");
        let data = self.data.take().expect("handshake on both sockets");
        let meta = self.meta.take().expect("handshake on both sockets");
        debug_assert_eq!(self.resolve_conflicts, meta.origin == Origin::Accepted);
        self.outputs.push_back(SetupOutput::Established {
            data: data.conn,
            meta: meta.conn,
            agreed_version: agreed.protocol_version,
            agreed_features: agreed.features.0,
            resolve_conflicts: meta.origin == Origin::Accepted,
            leftover_data: data.received.freeze(),
            leftover_meta: meta.received.freeze(),
        });
        self.enter_final(Step::Established);
    }

    /// DRBD's "-1": StandAlone.
    fn fail(&mut self, reason: SetupError) {
        self.close_all();
        self.outputs.push_back(SetupOutput::Failed { reason });
        self.enter_final(Step::Failed);
    }

    /// DRBD's "0": close everything, try again in a second.
    fn retry(&mut self, now: Instant, reason: SetupError) {
        self.close_all();
        self.outputs.push_back(SetupOutput::Retrying { reason });
        self.enter(Step::Pause, now.plus(RETRY_PAUSE));
    }

    fn close_all(&mut self) {
        let mut conns: Vec<ConnId> = Vec::new();
        if let Step::Connecting { conn } = self.step {
            conns.push(conn);
        }
        conns.extend(self.data.take().map(|s| s.conn));
        conns.extend(self.meta.take().filter(|s| !s.closed).map(|s| s.conn));
        let unread = self
            .reading
            .take()
            .into_iter()
            .chain(self.incoming.drain(..));
        conns.extend(unread.filter(|i| !i.closed).map(|i| i.conn));
        for conn in conns {
            self.outputs.push_back(SetupOutput::Close { conn });
        }
        self.resolve_conflicts = false;
        self.agreed = None;
        self.challenge = None;
    }

    /// Moves to `step`, armed with its timer at `deadline`.
    fn enter(&mut self, step: Step, deadline: Instant) {
        self.timers.clear();
        self.step = step;
        let timer = step.timer().expect("a step with a timer");
        self.timers.set(timer, deadline);
    }

    fn enter_final(&mut self, step: Step) {
        debug_assert!(step.is_final());
        self.timers.clear();
        self.step = step;
    }

    fn handshake_deadline(&self, now: Instant) -> Instant {
        now.plus(self.config.ping_timeout * 4)
    }

    /// The header format of the data socket: h80 until the features are agreed.
    fn format(&self) -> HeaderFormat {
        self.agreed.map_or(HeaderFormat::Short, |a| {
            HeaderFormat::for_agreed_version(a.protocol_version)
        })
    }

    fn send(&mut self, conn: ConnId, packet: &Packet, format: HeaderFormat) {
        let encoded = packet
            .encode(0, format)
            .expect("handshake packets always encode");
        debug_assert!(encoded.data.is_empty());
        self.outputs.push_back(SetupOutput::Send {
            conn,
            bytes: encoded.head,
        });
    }

    fn coin(&mut self) -> bool {
        self.rng.next_u32() & 1 == 1
    }

    fn has_both(&self) -> bool {
        self.data.is_some() && self.meta.is_some()
    }

    fn role_of(&self, conn: ConnId) -> Option<Role> {
        if self.data.as_ref().is_some_and(|s| s.conn == conn) {
            Some(Role::Data)
        } else if self.meta.as_ref().is_some_and(|s| s.conn == conn) {
            Some(Role::Meta)
        } else {
            None
        }
    }

    fn socket(&self, role: Role) -> &Socket {
        match role {
            Role::Data => self.data.as_ref(),
            Role::Meta => self.meta.as_ref(),
        }
        .expect("socket present")
    }

    fn socket_mut(&mut self, role: Role) -> &mut Socket {
        match role {
            Role::Data => self.data.as_mut(),
            Role::Meta => self.meta.as_mut(),
        }
        .expect("socket present")
    }
}

impl Socket {
    fn new(conn: ConnId, origin: Origin, now: Instant) -> Socket {
        Socket {
            conn,
            origin,
            received: BytesMut::new(),
            closed: false,
            since: now,
            first_bytes_at: None,
        }
    }
}

/// The next packet of the handshake in `received`: the header is checked (magic, command,
/// length rule) before its payload is waited for, so nothing larger than a handshake packet
/// (at most 128 bytes of payload) is ever waited for.
fn next_packet(received: &mut BytesMut, format: HeaderFormat, expected: Command) -> Next {
    let header_size = format.header_size();
    if received.len() < header_size {
        return Next::Incomplete;
    }
    let header = match Header::decode(format, &received[..header_size]) {
        Ok(header) => header,
        Err(e) => return Next::Error(e),
    };
    if header.command != expected as u16 {
        return Next::Unexpected {
            command: header.command,
        };
    }
    let rule = expected.expected_length(format, 0);
    if !rule.allows(u64::from(header.length)) {
        return Next::Error(DecodeError::BadLength {
            command: expected,
            length: header.length,
            expected: rule,
        });
    }
    let total = header_size + header.length as usize;
    if received.len() < total {
        return Next::Incomplete;
    }
    let mut frame = received.split_to(total);
    let payload = frame.split_off(header_size).freeze();
    match Packet::decode(header.command, payload, &DecodeContext::new(format)) {
        Ok(packet) => Next::Packet(packet),
        Err(e) => Next::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    const A: &str = "127.0.0.1:17101";
    const B: &str = "127.0.0.1:17102";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn config(auth: Option<(&str, &[u8])>) -> SetupConfig {
        let mut c = SetupConfig::new(A.parse().unwrap(), B.parse().unwrap());
        c.cram_hmac = auth.map(|(alg, secret)| CramHmac::new(alg, secret).unwrap());
        c.features = FeatureFlags(0x7);
        c
    }

    /// A machine, driven by hand as if the peer were a kernel.
    struct Scripted {
        m: ConnectionSetup,
        now: Instant,
        out: Vec<SetupOutput>,
    }

    impl Scripted {
        fn new(auth: Option<(&str, &[u8])>) -> Scripted {
            let m = ConnectionSetup::new(config(auth), ChaCha20Rng::seed_from_u64(7));
            Scripted {
                m,
                now: Instant(1_000),
                out: Vec::new(),
            }
        }

        fn input(&mut self, input: SetupInput) {
            self.m.handle(self.now, input);
            self.m.invariants();
            while let Some(o) = self.m.poll_output() {
                self.out.push(o);
            }
        }

        fn take(&mut self) -> Vec<SetupOutput> {
            std::mem::take(&mut self.out)
        }

        fn received(&mut self, conn: u64, bytes: &[u8]) {
            self.input(SetupInput::Received {
                conn: ConnId(conn),
                bytes: Bytes::copy_from_slice(bytes),
            });
        }

        /// Start; our connect becomes the data socket; the peer's meta socket is accepted as
        /// conn 1. Returns the data socket's id; the machine has sent its features.
        fn reach_features(&mut self) -> ConnId {
            self.input(SetupInput::Start);
            let out = self.take();
            assert_eq!(
                out[0],
                SetupOutput::Listen {
                    addr: A.parse().unwrap()
                }
            );
            let SetupOutput::Connect { conn: data, addr } = out[1] else {
                panic!("{out:?}")
            };
            assert_eq!(addr, B.parse().unwrap());
            self.input(SetupInput::Connected { conn: data });
            assert_eq!(
                self.take(),
                [SetupOutput::Send {
                    conn: data,
                    bytes: Bytes::from(hex("83740267fff20000"))
                }]
            );
            self.input(SetupInput::Accepted { conn: ConnId(1) });
            self.received(1, &hex("83740267fff10000"));
            assert!(
                self.take().is_empty(),
                "both sockets: the socket check first"
            );
            self.now = self.m.poll_timeout().unwrap();
            assert_eq!(self.now, Instant(1_000).plus(Duration::from_millis(500)));
            self.input(SetupInput::Timeout);
            let features = hex("83740267fffe0048 00000064 00000007 00000065 00000000")
                .into_iter()
                .chain([0; 56])
                .collect::<Vec<u8>>();
            assert_eq!(
                self.take(),
                [SetupOutput::Send {
                    conn: data,
                    bytes: Bytes::from(features)
                }],
                "our features with min 100, max 101"
            );
            data
        }
    }

    fn kernel_features(min: u32, max: u32) -> Vec<u8> {
        let mut v = hex("83740267fffe0048");
        for w in [min, 0xf, max, 0] {
            v.extend_from_slice(&u32::to_be_bytes(w));
        }
        v.extend_from_slice(&[0; 56]);
        v
    }

    const B_CHALLENGE: &str = "8620ec20000000100000004000000000
        25c6ac50787d8606206b96aa96d187cbf12b41a4c383a5766d2a53a6b386b264
        0de539fd5a1b033ace3a62c0e8f55c83a1080db7b912675a7c904c5e53166e3e";
    const A_CHALLENGE: &str = "8d2df0c6455635f4e41bbfcdab3611e4f398354f8b7d6152ac6a33be80f75d51
        19b5c3a28b31326b3bf4a8579baf351357aafd72ad4d30f4452f7aec1bab2e79";
    const A_RESPONSE: &str = "8620ec20000000110000002000000000
        de67a7d5eaed20a174c22d918924989fbb6db573b3b71a3242dfebcccb4cca55";
    const B_RESPONSE: &str = "6e3ebbd0066f118a5b68159d8c43b7a88ab3b717ba1884f941e044af9f360d84";

    #[test]
    fn s2_golden_hmac_sha256() {
        let alg = CramHmacAlg::from_kernel_name("sha256").unwrap();
        let b_challenge = &hex(B_CHALLENGE)[16..];
        assert_eq!(
            alg.hmac(b"wirecap-secret", b_challenge),
            hex(A_RESPONSE)[16..]
        );
        assert_eq!(
            alg.hmac(b"wirecap-secret", &hex(A_CHALLENGE)),
            hex(B_RESPONSE)
        );
        assert!(alg.verify(b"wirecap-secret", &hex(A_CHALLENGE), &hex(B_RESPONSE)));
        assert!(!alg.verify(b"wirecap-secreT", &hex(A_CHALLENGE), &hex(B_RESPONSE)));
    }

    #[test]
    fn s2_golden_response_bytes_from_the_machine() {
        let mut s = Scripted::new(Some(("sha256", b"wirecap-secret")));
        let data = s.reach_features();
        s.received(data.0, &kernel_features(86, 101));
        let out = s.take();
        let [SetupOutput::Send { conn, bytes }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(*conn, data);
        assert_eq!(
            bytes[..16],
            hex("8620ec20000000100000004000000000"),
            "h100 challenge"
        );
        assert_eq!(bytes.len(), 16 + 64);
        s.received(data.0, &hex(B_CHALLENGE));
        assert_eq!(
            s.take(),
            [SetupOutput::Send {
                conn: data,
                bytes: Bytes::from(hex(A_RESPONSE))
            }],
            "byte for byte the kernel's P_AUTH_RESPONSE of capture s2"
        );
    }

    #[test]
    fn authenticated_against_a_scripted_kernel_with_leftovers() {
        let secret = b"wirecap-secret";
        let mut s = Scripted::new(Some(("sha1", secret)));
        let data = s.reach_features();
        s.received(1, &hex("8620ec20000000130000000000000000")); // an early P_PING on meta
        s.received(data.0, &kernel_features(86, 101));
        let out = s.take();
        let SetupOutput::Send { bytes, .. } = &out[0] else {
            panic!()
        };
        let ours = bytes[16..].to_vec();
        let peers = [0x5a; 64];
        let mut stream = hex("8620ec20000000100000004000000000");
        stream.extend_from_slice(&peers);
        s.received(data.0, &stream);
        let out = s.take();
        let SetupOutput::Send { bytes, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(bytes[16..], CramHmacAlg::Sha1.hmac(secret, &peers));
        let mut stream = hex("8620ec20000000110000001400000000");
        stream.extend_from_slice(&CramHmacAlg::Sha1.hmac(secret, &ours));
        let protocol = hex(
            "8620ec200000000b0000001900000000 00000003 0000000000000000000000000000000000000000 00",
        );
        stream.extend_from_slice(&protocol);
        // Cut the response and the packet after it anywhere: here in the middle of the header.
        s.received(data.0, &stream[..7]);
        assert!(s.take().is_empty());
        s.received(data.0, &stream[7..]);
        assert_eq!(
            s.take(),
            [SetupOutput::Established {
                data,
                meta: ConnId(1),
                agreed_version: 101,
                agreed_features: 0x7,
                resolve_conflicts: true,
                leftover_data: Bytes::from(protocol),
                leftover_meta: Bytes::from(hex("8620ec20000000130000000000000000")),
            }]
        );
        assert_eq!(s.m.poll_timeout(), None);
    }

    #[test]
    fn reflected_challenge_is_refused() {
        let mut s = Scripted::new(Some(("sha256", b"secret")));
        let data = s.reach_features();
        s.received(data.0, &kernel_features(86, 101));
        let out = s.take();
        let SetupOutput::Send { bytes, .. } = &out[0] else {
            panic!()
        };
        let echo = bytes.clone();
        s.received(data.0, &echo);
        assert_eq!(
            s.take(),
            [
                SetupOutput::Close { conn: data },
                SetupOutput::Close { conn: ConnId(1) },
                SetupOutput::Failed {
                    reason: SetupError::AuthReflection
                }
            ],
            "no response is sent to a reflected challenge"
        );
        assert!(s.m.is_finished());
    }

    #[test]
    fn wrong_response_fails_without_retry() {
        let mut s = Scripted::new(Some(("sha256", b"secret")));
        let data = s.reach_features();
        s.received(data.0, &kernel_features(86, 101));
        s.received(data.0, &hex(B_CHALLENGE));
        s.take();
        s.received(data.0, &hex(A_RESPONSE)); // keyed with another secret
        let out = s.take();
        assert_eq!(
            out.last(),
            Some(&SetupOutput::Failed {
                reason: SetupError::AuthFailed
            })
        );
        assert!(!out.iter().any(|o| matches!(o, SetupOutput::Send { .. })));
        assert_eq!(s.m.poll_timeout(), None, "no retry");
        let mut s = Scripted::new(Some(("sha1", b"secret")));
        let data = s.reach_features();
        s.received(data.0, &kernel_features(86, 101));
        s.received(data.0, &hex(B_CHALLENGE));
        s.take();
        s.received(data.0, &hex(A_RESPONSE)); // a sha256-sized response to a sha1 node
        assert_eq!(
            s.take().last(),
            Some(&SetupOutput::Failed {
                reason: SetupError::AuthFailed
            })
        );
    }

    #[test]
    fn old_peer_is_refused_by_name() {
        let mut s = Scripted::new(None);
        let data = s.reach_features();
        s.received(data.0, &kernel_features(86, 96));
        assert_eq!(
            s.take().last(),
            Some(&SetupOutput::Failed {
                reason: SetupError::IncompatibleProtocol {
                    peer_min: 86,
                    peer_max: 96
                }
            })
        );
    }

    #[test]
    fn auth_configuration_mismatch() {
        let mut s = Scripted::new(Some(("sha256", b"secret")));
        let data = s.reach_features();
        let mut stream = kernel_features(86, 101);
        stream.extend_from_slice(&hex("8620ec200000000b0000001900000000"));
        s.received(data.0, &stream);
        assert_eq!(
            s.take().last(),
            Some(&SetupOutput::Failed {
                reason: SetupError::AuthNotConfiguredOnPeer
            })
        );
        let mut s = Scripted::new(None);
        let data = s.reach_features();
        let mut stream = kernel_features(86, 101);
        stream.extend_from_slice(&hex(B_CHALLENGE));
        s.received(data.0, &stream);
        assert_eq!(
            s.take().last(),
            Some(&SetupOutput::Failed {
                reason: SetupError::AuthExpectedButNotOffered
            })
        );
        let challenge = Packet::AuthChallenge(Bytes::from(vec![1; 64]));
        assert_eq!(
            SetupError::first_packet_after_setup(&challenge),
            Some(SetupError::AuthExpectedButNotOffered)
        );
        assert_eq!(SetupError::first_packet_after_setup(&Packet::Ping), None);
    }

    #[test]
    fn garbage_on_an_accepted_socket_closes_only_that_socket() {
        let mut s = Scripted::new(None);
        s.input(SetupInput::Start);
        let out = s.take();
        let SetupOutput::Connect { conn, .. } = out[1] else {
            panic!()
        };
        s.input(SetupInput::Closed { conn }); // refused: wait for the peer
        s.input(SetupInput::Accepted { conn: ConnId(1) });
        s.received(1, b"GET / HTTP/1.1\r\n");
        let out = s.take();
        assert_eq!(out[0], SetupOutput::Close { conn: ConnId(1) });
        assert_eq!(
            out[1],
            SetupOutput::Retrying {
                reason: SetupError::Garbage
            }
        );
        assert!(!s.m.is_finished());
        // It goes on: connect again now or after connect-int.
        s.now = s.m.poll_timeout().unwrap();
        s.input(SetupInput::Timeout);
        assert!(
            s.take()
                .iter()
                .any(|o| matches!(o, SetupOutput::Connect { .. }))
        );
    }

    #[test]
    fn unknown_alg_and_long_secret_are_refused() {
        assert_eq!(
            CramHmac::new("md5", b"x"),
            Err(ConfigError::UnknownCramHmacAlg)
        );
        assert_eq!(
            CramHmac::new("hmac(sha1)", b"x"),
            Err(ConfigError::UnknownCramHmacAlg)
        );
        assert_eq!(
            CramHmac::new("sha1", &[b'x'; 65]),
            Err(ConfigError::SharedSecretTooLong { len: 65 })
        );
        for name in ["sha1", "sha256", "sha512"] {
            let alg = CramHmacAlg::from_kernel_name(name).unwrap();
            assert_eq!(alg.kernel_name(), name);
            assert_eq!(alg.hmac(b"k", b"m").len(), alg.digest_len());
        }
        assert!(!format!("{:?}", CramHmac::new("sha1", b"hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn stop_closes_everything_and_ends() {
        let mut s = Scripted::new(None);
        let data = s.reach_features();
        s.input(SetupInput::Accepted { conn: ConnId(2) });
        assert_eq!(
            s.take(),
            [SetupOutput::Close { conn: ConnId(2) }],
            "no accepts now"
        );
        s.input(SetupInput::Stop);
        assert_eq!(
            s.take(),
            [
                SetupOutput::Close { conn: data },
                SetupOutput::Close { conn: ConnId(1) }
            ]
        );
        assert!(s.m.is_finished());
        assert_eq!(s.m.poll_timeout(), None);
        s.input(SetupInput::Start);
        s.input(SetupInput::Received {
            conn: data,
            bytes: Bytes::from_static(b"late"),
        });
        assert!(s.take().is_empty());
    }

    #[test]
    fn handshake_timeout_retries_after_a_second() {
        let mut s = Scripted::new(None);
        let data = s.reach_features();
        let deadline = s.m.poll_timeout().unwrap();
        assert_eq!(
            deadline,
            s.now.plus(Duration::from_secs(2)),
            "4 x ping-timeout"
        );
        s.now = deadline;
        s.input(SetupInput::Timeout);
        let out = s.take();
        assert!(out.contains(&SetupOutput::Close { conn: data }));
        assert!(out.contains(&SetupOutput::Retrying {
            reason: SetupError::Timeout
        }));
        assert_eq!(
            s.m.poll_timeout(),
            Some(deadline.plus(Duration::from_secs(1)))
        );
        s.now = deadline.plus(Duration::from_secs(1));
        s.input(SetupInput::Timeout);
        assert!(matches!(s.take()[..], [SetupOutput::Connect { .. }]));
        assert_eq!(s.m.stats().attempts, 2);
    }
}
