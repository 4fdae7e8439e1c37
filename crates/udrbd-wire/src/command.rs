//! Packet commands (`enum drbd_packet`, drbd-v08-facts.md §6.3) and the payload length each
//! one may have.
//!
//! ```text
//!   cmd  name                  socket  payload (bytes; d = integrity digest, D = data)
//!  0x00  P_DATA                data    p_data 24 + d + D       D % 512 == 0, D <= 1 MiB
//!  0x01  P_DATA_REPLY          data    p_data 24 + d + D       (same)
//!  0x02  P_RS_DATA_REPLY       data    p_data 24 + d + D       (same)
//!  0x03  P_BARRIER             data    p_barrier 8
//!  0x04  P_BITMAP              data    n x 8 (LE words)        n <= (4096 - header) / 8
//!  0x07  P_UNPLUG_REMOTE       data    0
//!  0x08  P_DATA_REQUEST        data    p_block_req 24
//!  0x09  P_RS_DATA_REQUEST     data    p_block_req 24
//!  0x0a  P_SYNC_PARAM          data    4 [+ verify-alg + NUL]  (protocol <= 88)
//!  0x0b  P_PROTOCOL            data    24 [+ alg + NUL]        alg + NUL <= 64
//!  0x0c  P_UUIDS               data    48
//!  0x0d  P_SIZES               data    32, or 56 with the WSAME queue limits
//!  0x0e  P_STATE               data    4
//!  0x0f  P_SYNC_UUID           data    8
//!  0x10  P_AUTH_CHALLENGE      data    64..=128
//!  0x11  P_AUTH_RESPONSE       data    1..=64 (the HMAC digest)
//!  0x12  P_STATE_CHG_REQ       data    8
//!  0x13  P_PING                meta    0
//!  0x14  P_PING_ACK            meta    0
//!  0x15  P_RECV_ACK .. 0x1b    meta    p_block_ack 24  (RECV, WRITE, RS_WRITE, SUPERSEDED,
//!                                                        NEG_ACK, NEG_DREPLY, NEG_RS_DREPLY)
//!  0x1c  P_BARRIER_ACK         meta    8
//!  0x1d  P_STATE_CHG_REPLY     meta    4
//!  0x1e  P_OV_REQUEST          data    24
//!  0x1f  P_OV_REPLY            data    24 + digest (0..=64)
//!  0x20  P_OV_RESULT           meta    24
//!  0x21  P_CSUM_RS_REQUEST     data    24 + digest (0..=64)
//!  0x22  P_RS_IS_IN_SYNC       meta    24
//!  0x23  P_SYNC_PARAM89        data    132 (p_rs_param_89) or 148 (p_rs_param_95)
//!  0x24  P_COMPRESSED_BITMAP   data    2 ..= 4096 - header
//!  0x27  P_DELAY_PROBE         both    8
//!  0x28  P_OUT_OF_SYNC         data    p_block_desc 16
//!  0x29  P_RS_CANCEL           meta    24
//!  0x2a  P_CONN_ST_CHG_REQ     data    8
//!  0x2b  P_CONN_ST_CHG_REPLY   meta    4
//!  0x2c  P_RETRY_WRITE         meta    24
//!  0x2d  P_PROTOCOL_UPDATE     data    as P_PROTOCOL
//!  0x31  P_TRIM                data    p_trim 28
//!  0x32  P_RS_THIN_REQ         data    24
//!  0x33  P_RS_DEALLOCATED      data    16
//!  0x34  P_WSAME               data    p_wsame 28 + d + D      (one logical block)
//!  0x36  P_ZEROES              data    p_trim 28
//! 0xfff1 P_INITIAL_META        meta    0, always h80
//! 0xfff2 P_INITIAL_DATA        data    0, always h80
//! 0xfffe P_CONNECTION_FEATURES data    72, always h80
//! ```
//!
//! Commands at or above `P_MAY_IGNORE` (0x100) that this table does not know are skipped;
//! any other unknown command is a protocol error (the kernel drops the connection). The legacy
//! 0x05/0x06 (P_BECOME_SYNC_TARGET/SOURCE) have no handler in 8.4 and are unknown here too.
//!
//! The exact-length rule is DRBD's: the kernel rejects a fixed-size packet whose length differs
//! from its struct ("unexpected packet size" / "No payload expected"), so a wrong length is a
//! typed error here, detected from the header alone before the payload is buffered.

use crate::header::HeaderFormat;

/// Commands at or above this value may be skipped by a receiver that does not know them.
pub const P_MAY_IGNORE: u16 = 0x100;
/// `DRBD_MAX_BIO_SIZE`: the largest data payload of one packet (1 MiB).
pub const MAX_BIO_SIZE: u32 = 1 << 20;
/// Every bitmap packet, header included, fits `DRBD_SOCKET_BUFFER_SIZE`.
pub const BITMAP_PACKET_MAX: u32 = 4096;
/// Largest digest of any hash the kernel knows (`HASH_MAX_DIGESTSIZE`).
pub const MAX_DIGEST_LEN: usize = 64;
/// Size of the name buffers for algorithms (`SHARED_SECRET_MAX`), NUL included.
pub const ALG_NAME_BUFFER: usize = 64;
/// Bytes of a cram-hmac challenge DRBD sends (`CHALLENGE_LEN`); the receiver accepts up to
/// twice that.
pub const CHALLENGE_LEN: u32 = 64;
/// The largest payload of a skippable unknown command we are willing to buffer.
pub const MAX_IGNORED_PAYLOAD: u32 = MAX_BIO_SIZE + 4096;

macro_rules! commands {
    ($($variant:ident = $value:literal, $name:literal;)*) => {
        /// A packet command this crate knows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum Command {
            $(
                #[doc = $name]
                $variant = $value,
            )*
        }

        impl Command {
            /// Every known command, in numeric order.
            pub const ALL: &'static [Command] = &[$(Command::$variant),*];

            /// The command with this number, if known.
            pub fn from_u16(value: u16) -> Option<Command> {
                match value {
                    $($value => Some(Command::$variant),)*
                    _ => None,
                }
            }

            /// DRBD's name (`P_DATA`, ...).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Command::$variant => $name,)*
                }
            }
        }
    };
}

commands! {
    Data = 0x00, "P_DATA";
    DataReply = 0x01, "P_DATA_REPLY";
    RsDataReply = 0x02, "P_RS_DATA_REPLY";
    Barrier = 0x03, "P_BARRIER";
    Bitmap = 0x04, "P_BITMAP";
    UnplugRemote = 0x07, "P_UNPLUG_REMOTE";
    DataRequest = 0x08, "P_DATA_REQUEST";
    RsDataRequest = 0x09, "P_RS_DATA_REQUEST";
    SyncParam = 0x0a, "P_SYNC_PARAM";
    Protocol = 0x0b, "P_PROTOCOL";
    Uuids = 0x0c, "P_UUIDS";
    Sizes = 0x0d, "P_SIZES";
    State = 0x0e, "P_STATE";
    SyncUuid = 0x0f, "P_SYNC_UUID";
    AuthChallenge = 0x10, "P_AUTH_CHALLENGE";
    AuthResponse = 0x11, "P_AUTH_RESPONSE";
    StateChgReq = 0x12, "P_STATE_CHG_REQ";
    Ping = 0x13, "P_PING";
    PingAck = 0x14, "P_PING_ACK";
    RecvAck = 0x15, "P_RECV_ACK";
    WriteAck = 0x16, "P_WRITE_ACK";
    RsWriteAck = 0x17, "P_RS_WRITE_ACK";
    Superseded = 0x18, "P_SUPERSEDED";
    NegAck = 0x19, "P_NEG_ACK";
    NegDReply = 0x1a, "P_NEG_DREPLY";
    NegRsDReply = 0x1b, "P_NEG_RS_DREPLY";
    BarrierAck = 0x1c, "P_BARRIER_ACK";
    StateChgReply = 0x1d, "P_STATE_CHG_REPLY";
    OvRequest = 0x1e, "P_OV_REQUEST";
    OvReply = 0x1f, "P_OV_REPLY";
    OvResult = 0x20, "P_OV_RESULT";
    CsumRsRequest = 0x21, "P_CSUM_RS_REQUEST";
    RsIsInSync = 0x22, "P_RS_IS_IN_SYNC";
    SyncParam89 = 0x23, "P_SYNC_PARAM89";
    CompressedBitmap = 0x24, "P_COMPRESSED_BITMAP";
    DelayProbe = 0x27, "P_DELAY_PROBE";
    OutOfSync = 0x28, "P_OUT_OF_SYNC";
    RsCancel = 0x29, "P_RS_CANCEL";
    ConnStChgReq = 0x2a, "P_CONN_ST_CHG_REQ";
    ConnStChgReply = 0x2b, "P_CONN_ST_CHG_REPLY";
    RetryWrite = 0x2c, "P_RETRY_WRITE";
    ProtocolUpdate = 0x2d, "P_PROTOCOL_UPDATE";
    Trim = 0x31, "P_TRIM";
    RsThinReq = 0x32, "P_RS_THIN_REQ";
    RsDeallocated = 0x33, "P_RS_DEALLOCATED";
    WriteSame = 0x34, "P_WSAME";
    Zeroes = 0x36, "P_ZEROES";
    InitialMeta = 0xfff1, "P_INITIAL_META";
    InitialData = 0xfff2, "P_INITIAL_DATA";
    ConnectionFeatures = 0xfffe, "P_CONNECTION_FEATURES";
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The payload lengths a command may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expected {
    /// Exactly this many bytes.
    Exactly(u32),
    /// One of two sizes (an older and a newer struct layout).
    OneOf(u32, u32),
    /// Any length in `min..=max`.
    Range {
        /// Smallest length.
        min: u32,
        /// Largest length.
        max: u32,
    },
    /// `min + k * unit` for some `k >= 0`, at most `max`.
    Aligned {
        /// Fixed part.
        min: u32,
        /// Largest length.
        max: u32,
        /// Granularity of the variable part.
        unit: u32,
    },
}

impl Expected {
    /// Whether `length` satisfies the rule.
    pub fn allows(self, length: u64) -> bool {
        match self {
            Expected::Exactly(n) => length == u64::from(n),
            Expected::OneOf(a, b) => length == u64::from(a) || length == u64::from(b),
            Expected::Range { min, max } => (u64::from(min)..=u64::from(max)).contains(&length),
            Expected::Aligned { min, max, unit } => {
                (u64::from(min)..=u64::from(max)).contains(&length)
                    && (length - u64::from(min)).is_multiple_of(u64::from(unit))
            }
        }
    }

    /// The largest length the rule allows.
    pub fn max(self) -> u32 {
        match self {
            Expected::Exactly(n) => n,
            Expected::OneOf(a, b) => a.max(b),
            Expected::Range { max, .. } | Expected::Aligned { max, .. } => max,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Expected::Exactly(n) => write!(f, "exactly {n}"),
            Expected::OneOf(a, b) => write!(f, "{a} or {b}"),
            Expected::Range { min, max } => write!(f, "{min}..={max}"),
            Expected::Aligned { min, max, unit } => {
                write!(f, "{min} + a multiple of {unit}, at most {max}")
            }
        }
    }
}

/// Fixed part of p_data.
pub(crate) const P_DATA_SIZE: u32 = 24;
/// Fixed part of p_trim / p_wsame.
pub(crate) const P_TRIM_SIZE: u32 = 28;
/// p_block_req / p_block_ack.
pub(crate) const P_BLOCK_SIZE: u32 = 24;

impl Command {
    /// The payload lengths DRBD accepts for this command, given the header format in use and
    /// the integrity digest length (0 without data-integrity-alg).
    pub fn expected_length(self, format: HeaderFormat, integrity_digest_len: u8) -> Expected {
        let digest = u32::from(integrity_digest_len);
        let bitmap_max = BITMAP_PACKET_MAX - format.header_size() as u32;
        let max_digest = MAX_DIGEST_LEN as u32;
        let data = |fixed: u32| Expected::Aligned {
            min: fixed + digest,
            max: fixed + digest + MAX_BIO_SIZE,
            unit: 512,
        };
        match self {
            Command::Data | Command::DataReply | Command::RsDataReply => data(P_DATA_SIZE),
            Command::WriteSame => data(P_TRIM_SIZE),
            Command::Barrier | Command::BarrierAck => Expected::Exactly(8),
            Command::Bitmap => Expected::Aligned {
                min: 0,
                max: bitmap_max,
                unit: 8,
            },
            Command::CompressedBitmap => Expected::Range {
                min: 2,
                max: bitmap_max,
            },
            Command::UnplugRemote
            | Command::Ping
            | Command::PingAck
            | Command::InitialMeta
            | Command::InitialData => Expected::Exactly(0),
            Command::DataRequest
            | Command::RsDataRequest
            | Command::OvRequest
            | Command::RsThinReq => Expected::Exactly(P_BLOCK_SIZE),
            Command::RecvAck
            | Command::WriteAck
            | Command::RsWriteAck
            | Command::Superseded
            | Command::NegAck
            | Command::NegDReply
            | Command::NegRsDReply
            | Command::OvResult
            | Command::RsIsInSync
            | Command::RsCancel
            | Command::RetryWrite => Expected::Exactly(P_BLOCK_SIZE),
            Command::OvReply | Command::CsumRsRequest => Expected::Range {
                min: P_BLOCK_SIZE,
                max: P_BLOCK_SIZE + max_digest,
            },
            Command::SyncParam => Expected::Range {
                min: 4,
                max: 4 + ALG_NAME_BUFFER as u32,
            },
            Command::Protocol | Command::ProtocolUpdate => Expected::Range {
                min: 24,
                max: 24 + ALG_NAME_BUFFER as u32,
            },
            Command::Uuids => Expected::Exactly(48),
            Command::Sizes => Expected::OneOf(32, 56),
            Command::State | Command::StateChgReply | Command::ConnStChgReply => {
                Expected::Exactly(4)
            }
            Command::SyncUuid | Command::DelayProbe => Expected::Exactly(8),
            Command::StateChgReq | Command::ConnStChgReq => Expected::Exactly(8),
            Command::AuthChallenge => Expected::Range {
                min: CHALLENGE_LEN,
                max: 2 * CHALLENGE_LEN,
            },
            Command::AuthResponse => Expected::Range {
                min: 1,
                max: max_digest,
            },
            Command::SyncParam89 => Expected::OneOf(132, 148),
            Command::OutOfSync | Command::RsDeallocated => Expected::Exactly(16),
            Command::Trim | Command::Zeroes => Expected::Exactly(P_TRIM_SIZE),
            Command::ConnectionFeatures => Expected::Exactly(72),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_sorted() {
        for w in Command::ALL.windows(2) {
            assert!((w[0] as u16) < (w[1] as u16));
        }
        for &c in Command::ALL {
            assert_eq!(Command::from_u16(c as u16), Some(c));
        }
        assert_eq!(Command::from_u16(0x05), None);
        assert_eq!(Command::from_u16(0x25), None);
        assert_eq!(Command::SyncParam89.to_string(), "P_SYNC_PARAM89");
    }

    #[test]
    fn bitmap_chunk_limits_follow_the_header_size() {
        // 511 words with 8-byte headers, 510 with h100 (facts §6.4).
        let short = Command::Bitmap.expected_length(HeaderFormat::Short, 0);
        assert_eq!(short.max(), 511 * 8);
        let long = Command::Bitmap.expected_length(HeaderFormat::Long, 0);
        assert_eq!(long.max(), 510 * 8);
        assert!(long.allows(0) && long.allows(256) && !long.allows(255));
    }

    #[test]
    fn data_rule_counts_the_digest() {
        let rule = Command::Data.expected_length(HeaderFormat::Long, 4);
        assert!(rule.allows(4124) && !rule.allows(4120) && rule.allows(28));
        assert!(rule.allows(28 + (1 << 20)) && !rule.allows(28 + (1 << 20) + 512));
        assert_eq!(rule.to_string(), "28 + a multiple of 512, at most 1048604");
    }
}
