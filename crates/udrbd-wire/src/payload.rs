//! Payload structs (drbd-v08-facts.md §6.3, with the corrections of drbd-wire-observed.md),
//! all fields big-endian unless said otherwise.
//!
//! ```text
//!  p_data (24)              p_block_ack (24)         p_block_req (24)        p_block_desc (16)
//!   0 8 sector               0 8 sector               0 8 sector              0 8 sector
//!   8 8 block_id (opaque)    8 8 block_id (echoed)    8 8 block_id            8 4 blksize
//!  16 4 seq_num             16 4 blksize             16 4 blksize            12 4 pad
//!  20 4 dp_flags            20 4 seq_num             20 4 pad (NOT always 0)
//!
//!  p_barrier (8)            p_barrier_ack (8)        p_trim / p_wsame (28)   p_delay_probe93 (8)
//!   0 4 barrier (opaque)     0 4 barrier (echoed)     0 24 p_data             0 4 seq_num
//!   4 4 pad                  4 4 set_size            24 4 size (bytes)        4 4 offset
//!
//!  p_uuids (48)             p_sizes (32 | 56)                         p_protocol (24 + alg)
//!   0 8 current              0 8 d_size   backing capacity, sectors    0 4 protocol 1=A 2=B 3=C
//!   8 8 bitmap               8 8 u_size   user size, sectors           4 4 after_sb_0p
//!  16 8 history[0]          16 8 c_size   current size, sectors        8 4 after_sb_1p
//!  24 8 history[1]          24 4 max_bio_size (bytes)                 12 4 after_sb_2p
//!  32 8 bits_set            28 2 queue_order_type                     16 4 conn_flags
//!  40 8 flags               30 2 dds_flags                            20 4 two_primaries
//!                           -- with FF_WSAME (o_qlim) --              24 n integrity alg + NUL
//!                           32 4 physical_block_size                       (protocol >= 87)
//!                           36 4 logical_block_size
//!                           40 4 alignment_offset      p_rs_param_89 (132) / _95 (148)
//!                           44 4 io_min                  0  4 resync_rate (KiB/s)
//!                           48 4 io_opt                  4 64 verify_alg, NUL-padded
//!                           52 1 discard_enabled        68 64 csums_alg, NUL-padded
//!                           53 1 discard_zeroes_data   132  4 c_plan_ahead     (95 only)
//!                           54 1 write_same_capable    136  4 c_delay_target   (95 only)
//!                           55 1 pad                   140  4 c_fill_target    (95 only)
//!                                                      144  4 c_max_rate       (95 only)
//!  p_connection_features (72)
//!   0 4 protocol_min   4 4 feature_flags   8 4 protocol_max   12 4 pad   16 56 reserved (0)
//! ```
//!
//! Invariants: every struct decodes from exactly the bytes its command's length rule admits
//! ([`crate::Command::expected_length`]) and encodes back to the same bytes. Fields that the
//! kernel fills with stale bytes (p_block_req.pad was 0x102 in a real P_OV_REQUEST) or treats as
//! opaque (block_id, barrier numbers, which 8.4.11 sends as little-endian counters) are kept
//! verbatim so that decode then encode is byte-exact; receivers must not interpret them. The
//! 56 reserved bytes of P_CONNECTION_FEATURES are ignored on receipt and sent as zeros.

use bytes::BufMut;

use crate::command::{ALG_NAME_BUFFER, Command, MAX_DIGEST_LEN};
use crate::error::{DecodeError, ValueError};

/// Reads big-endian fields from a slice whose length the caller already checked against the
/// command's length rule: running past the end is a bug in this crate, not a peer error.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N));
        out
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }
    pub(crate) fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.array())
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }
}

/// A digest (data-integrity, verify or csums), at most 64 bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    len: u8,
    bytes: [u8; MAX_DIGEST_LEN],
}

impl Digest {
    /// No digest.
    pub const EMPTY: Digest = Digest {
        len: 0,
        bytes: [0; MAX_DIGEST_LEN],
    };

    /// A digest of these bytes.
    pub fn new(bytes: &[u8]) -> Result<Digest, ValueError> {
        if bytes.len() > MAX_DIGEST_LEN {
            return Err(ValueError::DigestTooLong { len: bytes.len() });
        }
        let mut d = Digest::EMPTY;
        d.bytes[..bytes.len()].copy_from_slice(bytes);
        d.len = bytes.len() as u8;
        Ok(d)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is no digest.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Digest {
    fn default() -> Digest {
        Digest::EMPTY
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Longest algorithm name: the 64-byte buffers keep a NUL.
pub const MAX_ALG_NAME_LEN: usize = ALG_NAME_BUFFER - 1;

/// A crypto algorithm name ("crc32c", "sha256", or empty for none), at most 63 bytes, no NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AlgName {
    len: u8,
    bytes: [u8; MAX_ALG_NAME_LEN],
}

impl AlgName {
    /// The empty name (no algorithm configured).
    pub const NONE: AlgName = AlgName {
        len: 0,
        bytes: [0; MAX_ALG_NAME_LEN],
    };

    /// A name of these bytes.
    pub fn new(name: &[u8]) -> Result<AlgName, ValueError> {
        if name.len() > MAX_ALG_NAME_LEN || name.contains(&0) {
            return Err(ValueError::BadAlgName { len: name.len() });
        }
        let mut a = AlgName::NONE;
        a.bytes[..name.len()].copy_from_slice(name);
        a.len = name.len() as u8;
        Ok(a)
    }

    /// The name's bytes (no NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The name as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// Whether no algorithm is named.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes `name NUL` filling `bytes` exactly (P_PROTOCOL, P_SYNC_PARAM).
    fn decode_terminated(
        bytes: &[u8],
        command: Command,
        field: &'static str,
    ) -> Result<AlgName, DecodeError> {
        let bad = DecodeError::BadAlgName { command, field };
        match bytes.split_last() {
            Some((0, name)) => AlgName::new(name).map_err(|_| bad),
            _ => Err(bad),
        }
    }

    /// Decodes a NUL-padded 64-byte buffer (p_rs_param_89): the kernel zeroes the buffer
    /// before copying the name, so anything but `name NUL 0*` is refused.
    fn decode_padded(
        bytes: &[u8],
        command: Command,
        field: &'static str,
    ) -> Result<AlgName, DecodeError> {
        let bad = DecodeError::BadAlgName { command, field };
        let end = bytes.iter().position(|&b| b == 0).ok_or(bad.clone())?;
        if bytes[end..].iter().any(|&b| b != 0) {
            return Err(bad);
        }
        AlgName::new(&bytes[..end]).map_err(|_| bad)
    }

    fn encode_padded(&self, out: &mut impl BufMut) {
        out.put_slice(self.as_bytes());
        out.put_bytes(0, ALG_NAME_BUFFER - self.len());
    }

    fn encode_terminated(&self, out: &mut impl BufMut) {
        out.put_slice(self.as_bytes());
        out.put_u8(0);
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }
}

impl Default for AlgName {
    fn default() -> AlgName {
        AlgName::NONE
    }
}

impl std::fmt::Debug for AlgName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlgName({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The opaque request cookie of data packets and acks: echoed unchanged. Decoded big-endian,
/// which is what the special values below are; the kernel's own cookies are pointers that show
/// up as little-endian bytes (`0027ea02148effff`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub u64);

impl BlockId {
    /// `ID_SYNCER`: resync and online-verify requests and replies.
    pub const SYNCER: BlockId = BlockId(u64::MAX);
    /// `ID_IN_SYNC` (4711): P_OV_RESULT, the block matched.
    pub const IN_SYNC: BlockId = BlockId(4711);
    /// `ID_OUT_OF_SYNC` (4712): P_OV_RESULT, the block differs.
    pub const OUT_OF_SYNC: BlockId = BlockId(4712);
}

macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $flag:ident = $value:expr;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);

        impl $name {
            $($(#[$fdoc])* pub const $flag: $name = $name($value);)*

            /// Whether every bit of `other` is set.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }

        impl std::ops::BitAnd for $name {
            type Output = $name;
            fn bitand(self, rhs: $name) -> $name {
                $name(self.0 & rhs.0)
            }
        }
    };
}

flag_set! {
    /// `DP_*` flags of p_data.dp_flags. For protocol < 95 only RW_SYNC is transmitted; for
    /// protocol >= 100 the ack type comes from SEND_RECEIVE_ACK / SEND_WRITE_ACK. O_DIRECT
    /// writes from 8.4.11 in protocol C carry 0x102 (RW_SYNC | SEND_WRITE_ACK).
    DpFlags {
        /// Obsolete.
        HARDBARRIER = 1;
        /// Synchronous request.
        RW_SYNC = 2;
        /// Written during a resync: the peer may set it in sync (answers P_RS_WRITE_ACK).
        MAY_SET_IN_SYNC = 4;
        /// Unplug hint.
        UNPLUG = 8;
        /// Forced unit access.
        FUA = 16;
        /// Flush before the write.
        FLUSH = 32;
        /// A discard (P_TRIM).
        DISCARD = 64;
        /// Protocol B for this request.
        SEND_RECEIVE_ACK = 128;
        /// Protocol C for this request.
        SEND_WRITE_ACK = 256;
        /// Write-same (P_WSAME).
        WSAME = 512;
        /// Write-zeroes (P_ZEROES; mainline 8.4.11).
        ZEROES = 1024;
    }
}

flag_set! {
    /// Feature flags of P_CONNECTION_FEATURES; both sides AND them. 8.4.11 advertises 0xf.
    FeatureFlags {
        /// P_TRIM.
        TRIM = 1;
        /// P_RS_THIN_REQ / P_RS_DEALLOCATED.
        THIN_RESYNC = 2;
        /// P_WSAME, and P_SIZES carries the queue limits (56 bytes).
        WSAME = 4;
        /// P_ZEROES (write-zeroes); not in drbd-v08-facts.md, advertised by 8.4.11.
        WZEROES = 8;
    }
}

flag_set! {
    /// p_protocol.conn_flags.
    ConnFlags {
        /// `--discard-my-data` on connect.
        DISCARD_MY_DATA = 1;
        /// `--dry-run` on connect.
        DRY_RUN = 2;
    }
}

/// The replication protocol of p_protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireProtocol {
    /// Asynchronous.
    A = 1,
    /// Memory synchronous.
    B = 2,
    /// Synchronous.
    C = 3,
}

/// After-split-brain policies (`enum drbd_after_sb_p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AfterSbPolicy {
    /// disconnect
    Disconnect = 0,
    /// discard-younger-primary
    DiscardYoungerPrimary = 1,
    /// discard-older-primary
    DiscardOlderPrimary = 2,
    /// discard-zero-changes
    DiscardZeroChanges = 3,
    /// discard-least-changes
    DiscardLeastChanges = 4,
    /// discard-local
    DiscardLocal = 5,
    /// discard-remote
    DiscardRemote = 6,
    /// consensus
    Consensus = 7,
    /// discard-secondary
    DiscardSecondary = 8,
    /// call-pri-lost-after-sb
    CallHelper = 9,
    /// violently-as0p
    Violently = 10,
}

impl AfterSbPolicy {
    /// Every policy, by wire value.
    pub const ALL: [AfterSbPolicy; 11] = [
        AfterSbPolicy::Disconnect,
        AfterSbPolicy::DiscardYoungerPrimary,
        AfterSbPolicy::DiscardOlderPrimary,
        AfterSbPolicy::DiscardZeroChanges,
        AfterSbPolicy::DiscardLeastChanges,
        AfterSbPolicy::DiscardLocal,
        AfterSbPolicy::DiscardRemote,
        AfterSbPolicy::Consensus,
        AfterSbPolicy::DiscardSecondary,
        AfterSbPolicy::CallHelper,
        AfterSbPolicy::Violently,
    ];
}

/// p_data without the digest and data (P_DATA, P_DATA_REPLY, P_RS_DATA_REPLY) and the head of
/// p_trim / p_wsame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataHeader {
    /// First sector.
    pub sector: u64,
    /// Opaque cookie, echoed in the ack.
    pub block_id: BlockId,
    /// Per-connection sequence number (0 in replies).
    pub seq_num: u32,
    /// DP_* flags (0 in replies).
    pub dp_flags: DpFlags,
}

impl DataHeader {
    /// Bytes of p_data on the wire.
    pub const SIZE: usize = 24;

    pub(crate) fn decode(r: &mut Reader<'_>) -> DataHeader {
        DataHeader {
            sector: r.u64(),
            block_id: BlockId(r.u64()),
            seq_num: r.u32(),
            dp_flags: DpFlags(r.u32()),
        }
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.sector);
        out.put_u64(self.block_id.0);
        out.put_u32(self.seq_num);
        out.put_u32(self.dp_flags.0);
    }
}

/// p_block_ack: every ack on the meta socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockAck {
    /// First sector, echoed.
    pub sector: u64,
    /// Cookie, echoed (ID_IN_SYNC / ID_OUT_OF_SYNC in P_OV_RESULT).
    pub block_id: BlockId,
    /// Bytes (the data only, never the digest).
    pub blksize: u32,
    /// The sender's sequence number (one counter for data packets and acks).
    pub seq_num: u32,
}

impl BlockAck {
    pub(crate) fn decode(r: &mut Reader<'_>) -> BlockAck {
        BlockAck {
            sector: r.u64(),
            block_id: BlockId(r.u64()),
            blksize: r.u32(),
            seq_num: r.u32(),
        }
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.sector);
        out.put_u64(self.block_id.0);
        out.put_u32(self.blksize);
        out.put_u32(self.seq_num);
    }
}

/// p_block_req: data, resync, verify and thin requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    /// First sector.
    pub sector: u64,
    /// Cookie (ID_SYNCER for resync and verify).
    pub block_id: BlockId,
    /// Bytes requested.
    pub blksize: u32,
    /// Not zero in practice (stale send-buffer bytes); ignore it, send 0.
    pub pad: u32,
}

impl BlockRequest {
    pub(crate) fn decode(r: &mut Reader<'_>) -> BlockRequest {
        BlockRequest {
            sector: r.u64(),
            block_id: BlockId(r.u64()),
            blksize: r.u32(),
            pad: r.u32(),
        }
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.sector);
        out.put_u64(self.block_id.0);
        out.put_u32(self.blksize);
        out.put_u32(self.pad);
    }
}

/// p_block_req followed by a digest: P_OV_REPLY (verify-alg) and P_CSUM_RS_REQUEST
/// (csums-alg, one digest over the whole request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DigestRequest {
    /// The block.
    pub request: BlockRequest,
    /// Its digest; the length is whatever the sender's algorithm produces.
    pub digest: Digest,
}

/// p_block_desc: P_OUT_OF_SYNC and P_RS_DEALLOCATED.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockDesc {
    /// First sector.
    pub sector: u64,
    /// Bytes.
    pub blksize: u32,
    /// Unused.
    pub pad: u32,
}

impl BlockDesc {
    pub(crate) fn decode(r: &mut Reader<'_>) -> BlockDesc {
        BlockDesc {
            sector: r.u64(),
            blksize: r.u32(),
            pad: r.u32(),
        }
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.sector);
        out.put_u32(self.blksize);
        out.put_u32(self.pad);
    }
}

/// p_barrier: closes the sender's current epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Barrier {
    /// Opaque epoch number, echoed in P_BARRIER_ACK (8.4.11 sends a little-endian counter, so
    /// read big-endian it steps by 0x01000000).
    pub barrier: u32,
    /// Unused.
    pub pad: u32,
}

/// p_barrier_ack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BarrierAck {
    /// The barrier number, echoed.
    pub barrier: u32,
    /// Writes in the epoch.
    pub set_size: u32,
}

/// p_trim (P_TRIM, P_ZEROES): a discard or write-zeroes of `size` bytes, no data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Trim {
    /// Sector, cookie, sequence number and flags.
    pub header: DataHeader,
    /// Bytes.
    pub size: u32,
}

/// p_uuids: the generation UUIDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Uuids {
    /// Current UUID.
    pub current: u64,
    /// Bitmap UUID.
    pub bitmap: u64,
    /// History UUIDs, younger first.
    pub history: [u64; 2],
    /// Bits set in the sender's bitmap.
    pub bits_set: u64,
    /// UI_FLAGS (1 discard-my-data, 2 crashed primary, 4 inconsistent); 0 in every capture.
    pub flags: u64,
}

impl Uuids {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Uuids {
        Uuids {
            current: r.u64(),
            bitmap: r.u64(),
            history: [r.u64(), r.u64()],
            bits_set: r.u64(),
            flags: r.u64(),
        }
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        for v in [
            self.current,
            self.bitmap,
            self.history[0],
            self.history[1],
            self.bits_set,
            self.flags,
        ] {
            out.put_u64(v);
        }
    }
}

/// o_qlim: the queue limits P_SIZES carries when FF_WSAME was agreed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QueueLimits {
    /// Bytes.
    pub physical_block_size: u32,
    /// Bytes.
    pub logical_block_size: u32,
    /// Bytes.
    pub alignment_offset: u32,
    /// Bytes.
    pub io_min: u32,
    /// Bytes.
    pub io_opt: u32,
    /// Boolean byte.
    pub discard_enabled: u8,
    /// Boolean byte.
    pub discard_zeroes_data: u8,
    /// Boolean byte.
    pub write_same_capable: u8,
    /// Unused.
    pub pad: u8,
}

/// p_sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sizes {
    /// Backing device capacity, sectors.
    pub d_size: u64,
    /// User-configured size, sectors (0 = none).
    pub u_size: u64,
    /// Current exported size, sectors.
    pub c_size: u64,
    /// Largest request the sender accepts, bytes (130560 from a kernel peer in the capture).
    pub max_bio_size: u32,
    /// Always 0 in 8.4.
    pub queue_order_type: u16,
    /// DDSF_* flags (1 forced, 2 no-resync).
    pub dds_flags: u16,
    /// Present (56-byte packet) exactly when FF_WSAME was agreed.
    pub queue_limits: Option<QueueLimits>,
}

impl Sizes {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Sizes {
        let mut s = Sizes {
            d_size: r.u64(),
            u_size: r.u64(),
            c_size: r.u64(),
            max_bio_size: r.u32(),
            queue_order_type: r.u16(),
            dds_flags: r.u16(),
            queue_limits: None,
        };
        if r.remaining() == 24 {
            s.queue_limits = Some(QueueLimits {
                physical_block_size: r.u32(),
                logical_block_size: r.u32(),
                alignment_offset: r.u32(),
                io_min: r.u32(),
                io_opt: r.u32(),
                discard_enabled: r.u8(),
                discard_zeroes_data: r.u8(),
                write_same_capable: r.u8(),
                pad: r.u8(),
            });
        }
        s
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.d_size);
        out.put_u64(self.u_size);
        out.put_u64(self.c_size);
        out.put_u32(self.max_bio_size);
        out.put_u16(self.queue_order_type);
        out.put_u16(self.dds_flags);
        if let Some(q) = &self.queue_limits {
            out.put_u32(q.physical_block_size);
            out.put_u32(q.logical_block_size);
            out.put_u32(q.alignment_offset);
            out.put_u32(q.io_min);
            out.put_u32(q.io_opt);
            out.put_u8(q.discard_enabled);
            out.put_u8(q.discard_zeroes_data);
            out.put_u8(q.write_same_capable);
            out.put_u8(q.pad);
        }
    }
}

/// p_protocol (P_PROTOCOL, P_PROTOCOL_UPDATE): the net options both sides must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProtocolParams {
    /// A, B or C.
    pub protocol: WireProtocol,
    /// after-sb-0pri.
    pub after_sb_0p: AfterSbPolicy,
    /// after-sb-1pri.
    pub after_sb_1p: AfterSbPolicy,
    /// after-sb-2pri.
    pub after_sb_2p: AfterSbPolicy,
    /// discard-my-data / dry-run.
    pub conn_flags: ConnFlags,
    /// allow-two-primaries.
    pub two_primaries: bool,
    /// data-integrity-alg, sent for protocol >= 87 (an empty name as a lone NUL); `None` is
    /// the 24-byte packet of older peers.
    pub integrity_alg: Option<AlgName>,
}

impl ProtocolParams {
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        command: Command,
    ) -> Result<ProtocolParams, DecodeError> {
        let bad = |field: &'static str, value: u32| DecodeError::BadValue {
            command,
            field,
            value,
        };
        let policy = |field, v: u32| {
            AfterSbPolicy::ALL
                .get(v as usize)
                .copied()
                .ok_or(bad(field, v))
        };
        let protocol = match r.u32() {
            1 => WireProtocol::A,
            2 => WireProtocol::B,
            3 => WireProtocol::C,
            v => return Err(bad("protocol", v)),
        };
        let after_sb_0p = policy("after_sb_0p", r.u32())?;
        let after_sb_1p = policy("after_sb_1p", r.u32())?;
        let after_sb_2p = policy("after_sb_2p", r.u32())?;
        let conn_flags = ConnFlags(r.u32());
        let two_primaries = match r.u32() {
            0 => false,
            1 => true,
            v => return Err(bad("two_primaries", v)),
        };
        let rest = r.bytes(r.remaining());
        let integrity_alg = if rest.is_empty() {
            None
        } else {
            Some(AlgName::decode_terminated(rest, command, "integrity_alg")?)
        };
        Ok(ProtocolParams {
            protocol,
            after_sb_0p,
            after_sb_1p,
            after_sb_2p,
            conn_flags,
            two_primaries,
            integrity_alg,
        })
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(self.protocol as u32);
        out.put_u32(self.after_sb_0p as u32);
        out.put_u32(self.after_sb_1p as u32);
        out.put_u32(self.after_sb_2p as u32);
        out.put_u32(self.conn_flags.0);
        out.put_u32(u32::from(self.two_primaries));
        if let Some(alg) = &self.integrity_alg {
            alg.encode_terminated(out);
        }
    }
}

/// p_rs_param (P_SYNC_PARAM, protocol <= 88): the resync rate and, for 88, the verify-alg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LegacySyncParams {
    /// KiB/s.
    pub resync_rate: u32,
    /// Protocol 88 only: verify-alg + NUL.
    pub verify_alg: Option<AlgName>,
}

impl LegacySyncParams {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<LegacySyncParams, DecodeError> {
        let resync_rate = r.u32();
        let rest = r.bytes(r.remaining());
        let verify_alg = if rest.is_empty() {
            None
        } else {
            Some(AlgName::decode_terminated(
                rest,
                Command::SyncParam,
                "verify_alg",
            )?)
        };
        Ok(LegacySyncParams {
            resync_rate,
            verify_alg,
        })
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(self.resync_rate);
        if let Some(alg) = &self.verify_alg {
            alg.encode_terminated(out);
        }
    }
}

/// The c-* resync controller settings of p_rs_param_95.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResyncController {
    /// c-plan-ahead, 0.1 s.
    pub c_plan_ahead: u32,
    /// c-delay-target, 0.1 s.
    pub c_delay_target: u32,
    /// c-fill-target, sectors.
    pub c_fill_target: u32,
    /// c-max-rate, KiB/s.
    pub c_max_rate: u32,
}

/// p_rs_param_89 / p_rs_param_95 (P_SYNC_PARAM89).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyncParams {
    /// resync-rate, KiB/s (250 by default).
    pub resync_rate: u32,
    /// verify-alg, empty if none.
    pub verify_alg: AlgName,
    /// csums-alg, empty if none.
    pub csums_alg: AlgName,
    /// Present in the 148-byte p_rs_param_95 (protocol >= 95, what 8.4.11 sends).
    pub controller: Option<ResyncController>,
}

impl SyncParams {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<SyncParams, DecodeError> {
        let c = Command::SyncParam89;
        let resync_rate = r.u32();
        let verify_alg = AlgName::decode_padded(r.bytes(ALG_NAME_BUFFER), c, "verify_alg")?;
        let csums_alg = AlgName::decode_padded(r.bytes(ALG_NAME_BUFFER), c, "csums_alg")?;
        let controller = (r.remaining() == 16).then(|| ResyncController {
            c_plan_ahead: r.u32(),
            c_delay_target: r.u32(),
            c_fill_target: r.u32(),
            c_max_rate: r.u32(),
        });
        Ok(SyncParams {
            resync_rate,
            verify_alg,
            csums_alg,
            controller,
        })
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(self.resync_rate);
        self.verify_alg.encode_padded(out);
        self.csums_alg.encode_padded(out);
        if let Some(c) = &self.controller {
            out.put_u32(c.c_plan_ahead);
            out.put_u32(c.c_delay_target);
            out.put_u32(c.c_fill_target);
            out.put_u32(c.c_max_rate);
        }
    }
}

/// p_req_state (P_STATE_CHG_REQ, P_CONN_ST_CHG_REQ): raw mask and value words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateChange {
    /// Fields to change.
    pub mask: crate::state::StateWord,
    /// Their new values, in the sender's view (see [`crate::StateWord::convert_for_peer`]).
    pub val: crate::state::StateWord,
}

/// p_req_state_reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateChangeReply {
    /// SS_* code: >= 1 success, <= 0 refusal.
    pub retcode: i32,
}

/// p_delay_probe93 (8.4 ignores it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DelayProbe {
    /// Sequence number.
    pub seq_num: u32,
    /// Offset.
    pub offset: u32,
}

/// Protocol versions 8.4 speaks (`PRO_VERSION_MIN` ..= `PRO_VERSION_MAX`).
pub const PROTOCOL_MIN: u32 = 86;
/// The newest 8.4 protocol version.
pub const PROTOCOL_MAX: u32 = 101;

/// p_connection_features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionFeatures {
    /// Oldest version the sender speaks (86).
    pub protocol_min: u32,
    /// FF_* flags (0xf from 8.4.11).
    pub feature_flags: FeatureFlags,
    /// Newest version the sender speaks (101); 0 means "same as min".
    pub protocol_max: u32,
    /// Unused.
    pub pad: u32,
}

/// What two P_CONNECTION_FEATURES agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Agreed {
    /// min(own max, peer max).
    pub protocol_version: u32,
    /// Own flags AND the peer's.
    pub features: FeatureFlags,
}

/// The version ranges of the two sides do not overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("incompatible protocol versions: ours {own_min}..={own_max}, peer {peer_min}..={peer_max}")]
pub struct IncompatibleVersions {
    /// Our oldest.
    pub own_min: u32,
    /// Our newest.
    pub own_max: u32,
    /// The peer's oldest.
    pub peer_min: u32,
    /// The peer's newest.
    pub peer_max: u32,
}

impl ConnectionFeatures {
    /// What 8.4 sends: 86..=101 with the given feature flags.
    pub fn drbd84(feature_flags: FeatureFlags) -> ConnectionFeatures {
        ConnectionFeatures {
            protocol_min: PROTOCOL_MIN,
            feature_flags,
            protocol_max: PROTOCOL_MAX,
            pad: 0,
        }
    }

    /// The kernel's `drbd_do_features` decision: a peer max of 0 means its min; fail if the
    /// ranges do not overlap; agree on the smaller max and the common flags.
    pub fn agree(&self, peer: &ConnectionFeatures) -> Result<Agreed, IncompatibleVersions> {
        let peer_max = if peer.protocol_max == 0 {
            peer.protocol_min
        } else {
            peer.protocol_max
        };
        if self.protocol_max < peer.protocol_min || self.protocol_min > peer_max {
            return Err(IncompatibleVersions {
                own_min: self.protocol_min,
                own_max: self.protocol_max,
                peer_min: peer.protocol_min,
                peer_max,
            });
        }
        Ok(Agreed {
            protocol_version: self.protocol_max.min(peer_max),
            features: self.feature_flags & peer.feature_flags,
        })
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> ConnectionFeatures {
        let f = ConnectionFeatures {
            protocol_min: r.u32(),
            feature_flags: FeatureFlags(r.u32()),
            protocol_max: r.u32(),
            pad: r.u32(),
        };
        // reserved[7]: ignored, as the kernel does.
        r.bytes(56);
        f
    }
    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_u32(self.protocol_min);
        out.put_u32(self.feature_flags.0);
        out.put_u32(self.protocol_max);
        out.put_u32(self.pad);
        out.put_bytes(0, 56);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_agreement_is_the_kernels() {
        let ours = ConnectionFeatures::drbd84(FeatureFlags(0x7));
        let kernel = ConnectionFeatures::drbd84(FeatureFlags(0xf));
        let a = ours.agree(&kernel).unwrap();
        assert_eq!(a.protocol_version, 101);
        assert_eq!(a.features, FeatureFlags(0x7));
        let old = ConnectionFeatures {
            protocol_min: 90,
            feature_flags: FeatureFlags(0),
            protocol_max: 0,
            pad: 0,
        };
        assert_eq!(ours.agree(&old).unwrap().protocol_version, 90);
        let future = ConnectionFeatures {
            protocol_min: 110,
            feature_flags: FeatureFlags(0),
            protocol_max: 120,
            pad: 0,
        };
        assert!(ours.agree(&future).is_err());
    }

    #[test]
    fn alg_names() {
        assert!(AlgName::new(b"crc32c").is_ok());
        assert!(AlgName::new(&[b'a'; 63]).is_ok());
        assert!(AlgName::new(&[b'a'; 64]).is_err());
        assert!(AlgName::new(b"a\0b").is_err());
        let c = Command::Protocol;
        assert!(AlgName::decode_terminated(b"crc32c", c, "x").is_err());
        assert!(AlgName::decode_terminated(b"crc\0c\0", c, "x").is_err());
        assert_eq!(
            AlgName::decode_terminated(b"\0", c, "x").unwrap(),
            AlgName::NONE
        );
        let mut padded = [0u8; 64];
        padded[..6].copy_from_slice(b"crc32c");
        assert_eq!(
            AlgName::decode_padded(&padded, c, "x").unwrap().as_str(),
            Some("crc32c")
        );
        padded[40] = 1;
        assert!(AlgName::decode_padded(&padded, c, "x").is_err());
        assert!(AlgName::decode_padded(&[b'a'; 64], c, "x").is_err());
    }

    #[test]
    fn digests() {
        assert_eq!(Digest::new(&[1; 64]).unwrap().len(), 64);
        assert!(Digest::new(&[1; 65]).is_err());
        assert_eq!(
            format!("{:?}", Digest::new(&[0xcb, 0x79]).unwrap()),
            "Digest(cb79)"
        );
    }
}
