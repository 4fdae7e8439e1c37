//! The net options of a resource's one peer, and what `status` reports about the peer.

use std::net::SocketAddr;
use std::time::Duration;

use udrbd_wire::WireProtocol;

use crate::connection::CramHmac;
use crate::resync_controller::ResyncControllerConfig;
use crate::state::{ConnState, DiskState, Role};
use crate::sync_decision::SplitBrainPolicy;

/// The net section (drbd.conf `net { }`) plus the two addresses, in DRBD's units.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// This node's host name (`discard-node-NAME` compares against it).
    pub own_name: String,
    /// The peer's host name (the connection's name in `status`).
    pub peer_name: String,
    /// Where we listen.
    pub own_address: SocketAddr,
    /// Where the peer listens.
    pub peer_address: SocketAddr,
    /// Replication protocol A, B or C.
    pub protocol: WireProtocol,
    /// cram-hmac-alg + shared-secret.
    pub cram_hmac: Option<CramHmac>,
    /// after-sb-0pri/1pri/2pri, always-asbp, rr-conflict.
    pub split_brain: SplitBrainPolicy,
    /// `timeout`: a peer that does not answer a request in `timeout` x `ko_count` is dropped.
    pub timeout: Duration,
    /// `ko-count` (0 = off).
    pub ko_count: u32,
    /// `connect-int`: the pause between connection attempts.
    pub connect_int: Duration,
    /// `ping-int`: an idle meta socket is pinged this often.
    pub ping_int: Duration,
    /// `ping-timeout`: a ping must be answered within this.
    pub ping_timeout: Duration,
    /// `socket-check-timeout` (zero: ping-timeout).
    pub socket_check_timeout: Duration,
    /// `max-epoch-size`: writes per epoch at most.
    pub max_epoch_size: u32,
    /// `sndbuf-size` bytes (0 = auto: 32 MiB here): bytes queued on the data socket beyond
    /// which new writes wait.
    pub sndbuf_size: u64,
    /// `use-rle`: compressed bitmap exchange.
    pub use_rle: bool,
    /// The resync controller's options (disk section: resync-rate, c-*; net: max-buffers,
    /// which also bounds the peer's requests held here: see `Resource::receive_full`).
    pub resync: ResyncControllerConfig,
    /// `connect --discard-my-data` (also settable per connect command).
    pub discard_my_data: bool,
    /// Start connecting when the resource is created (the daemon's `up`).
    pub connect_at_start: bool,
    /// verify-alg: online verify's digest (none: `verify` is refused).
    pub verify_alg: Option<crate::verify::VerifyAlg>,
    /// csums-alg: a SyncTarget sends the digest of its own block (P_CSUM_RS_REQUEST), and
    /// the source sends the block only if its own digest differs (else P_RS_IS_IN_SYNC).
    /// Both nodes must name the same one (none: every resync request asks for the data).
    pub csums_alg: Option<crate::verify::VerifyAlg>,
}

impl NetConfig {
    /// DRBD's defaults between `own` and `peer`.
    pub fn new(own_name: &str, own: SocketAddr, peer_name: &str, peer: SocketAddr) -> NetConfig {
        NetConfig {
            own_name: own_name.to_string(),
            peer_name: peer_name.to_string(),
            own_address: own,
            peer_address: peer,
            protocol: WireProtocol::C,
            cram_hmac: None,
            split_brain: SplitBrainPolicy::default(),
            timeout: Duration::from_secs(6),
            ko_count: 7,
            connect_int: Duration::from_secs(10),
            ping_int: Duration::from_secs(10),
            ping_timeout: Duration::from_millis(500),
            socket_check_timeout: Duration::ZERO,
            max_epoch_size: 2048,
            sndbuf_size: 0,
            use_rle: true,
            resync: ResyncControllerConfig::default(),
            discard_my_data: false,
            connect_at_start: true,
            verify_alg: None,
            csums_alg: None,
        }
    }
}

/// The peer as `status` shows it.
impl NetConfig {
    /// The options that differ between `self` and `new` and that the handshake agreed on
    /// with the peer, or that name the peer (its name and both addresses): changed, they
    /// take effect at the next connection. The others change at once
    /// ([`crate::Resource::change_net_options`]).
    pub fn handshake_changes(&self, new: &NetConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, what: &'static str| {
            if differs {
                changed.push(what);
            }
        };
        check(self.own_name != new.own_name, "the node's name");
        check(self.peer_name != new.peer_name, "the peer's name");
        check(self.own_address != new.own_address, "address");
        check(self.peer_address != new.peer_address, "the peer's address");
        check(self.protocol != new.protocol, "protocol");
        check(
            self.cram_hmac != new.cram_hmac,
            "cram-hmac-alg/shared-secret",
        );
        check(
            self.split_brain != new.split_brain,
            "after-sb-*/rr-conflict",
        );
        check(self.verify_alg != new.verify_alg, "verify-alg");
        check(self.csums_alg != new.csums_alg, "csums-alg");
        changed
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's host name.
    pub name: String,
    /// Our address.
    pub own_address: SocketAddr,
    /// The peer's address.
    pub peer_address: SocketAddr,
    /// Connection state (DRBD 8.4's, including the sync states).
    pub conn: ConnState,
    /// The peer's role (Unknown unless connected).
    pub peer_role: Role,
    /// The peer's disk (DUnknown unless connected).
    pub peer_disk: DiskState,
    /// KiB of data sent to the peer (application writes and resync replies).
    pub sent_kib: u64,
    /// KiB of data received from the peer.
    pub received_kib: u64,
    /// Requests sent to the peer and not yet answered.
    pub pending: u32,
    /// Requests from the peer we have not answered yet.
    pub unacked: u32,
    /// Application write data in flight to the peer, sectors.
    pub ap_in_flight_sectors: u64,
    /// Resync data in flight, sectors.
    pub rs_in_flight_sectors: u64,
    /// Resync counters while a resync runs.
    pub resync: Option<ResyncStatus>,
    /// The last handshake saw a split brain it did not resolve.
    pub split_brain: bool,
    /// `pause-sync` is in force here (`resync-suspended:user`).
    pub sync_paused_by_user: bool,
    /// The peer paused the resync (`resync-suspended:peer`).
    pub sync_paused_by_peer: bool,
    /// Why the last connection ended or failed, if it did.
    pub last_error: Option<String>,
}

/// Resync counters in DRBD's units (sectors, milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResyncStatus {
    /// Sectors to resync when the resync started.
    pub total_sectors: u64,
    /// Sectors still out of sync.
    pub left_sectors: u64,
    /// Milliseconds since the start.
    pub elapsed_ms: u64,
    /// Milliseconds paused.
    pub paused_ms: u64,
    /// Length of the long (~18 s) rate window, ms, and sectors done in it.
    pub dt0_ms: u64,
    /// Sectors done in the long window.
    pub db0_sectors: u64,
    /// Length of the short (~3 s) rate window, ms.
    pub dt1_ms: u64,
    /// Sectors done in the short window.
    pub db1_sectors: u64,
    /// The controller's current target rate, KiB/s.
    pub want_kib_per_sec: u64,
    /// With a csums-alg: sectors found equal by digest, not transferred (rs-same-csum).
    pub same_csum_sectors: u64,
    /// The online verify's counters, while a verify runs (the fields above then count
    /// blocks verified).
    pub verify: Option<VerifyStatus>,
}

/// Online-verify counters (sectors), as DRBD's ov_* fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyStatus {
    /// Where the verify started (ov-start-sector).
    pub start_sector: u64,
    /// Where it stops (ov-stop-sector; u64::MAX: the end).
    pub stop_sector: u64,
    /// How far it got (ov-position).
    pub position: u64,
    /// Sectors still to verify (ov-left).
    pub left_sectors: u64,
}
