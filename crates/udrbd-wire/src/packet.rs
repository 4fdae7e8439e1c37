//! Packets as typed values: [`Packet::decode`] from a command number and its payload,
//! [`Packet::encode`] to header bytes plus a shared data payload.
//!
//! Data-carrying packets (P_DATA, P_DATA_REPLY, P_RS_DATA_REPLY, P_WSAME) hold their data as
//! [`Bytes`]: decoding slices it out of the received buffer and encoding hands it back as the
//! second segment of an [`EncodedPacket`], so a 1 MiB write is never copied by this crate.
//!
//! ```text
//!  P_DATA on the wire (h100, data-integrity-alg crc32c, 4 KiB):
//!   8620ec20 0000 0000 0000101c 00000000     header: volume 0, cmd 0, length 4124
//!   00000000000000a0 402cea02148effff        sector 160, block_id
//!   00000001 00000102                        seq_num 1, dp_flags RW_SYNC|SEND_WRITE_ACK
//!   cb79682b                                 integrity digest (crc32c, little-endian)
//!   ... 4096 data bytes ...                  EncodedPacket::data
//! ```
//!
//! The integrity digest is present exactly when data-integrity-alg was agreed (P_PROTOCOL);
//! only the caller knows its length, so it is part of the [`DecodeContext`]. It covers
//! P_DATA, P_DATA_REPLY, P_RS_DATA_REPLY and P_WSAME, never P_TRIM / P_ZEROES.

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::{Command, MAX_DIGEST_LEN, MAX_IGNORED_PAYLOAD, P_MAY_IGNORE};
use crate::error::{DecodeError, EncodeError};
use crate::header::{Header, HeaderFormat};
use crate::payload::{
    Barrier, BarrierAck, BlockAck, BlockDesc, BlockRequest, ConnectionFeatures, DataHeader,
    DelayProbe, Digest, DigestRequest, LegacySyncParams, ProtocolParams, Reader, Sizes,
    StateChange, StateChangeReply, SyncParams, Trim, Uuids,
};
use crate::state::{State, StateWord};

/// What a receiver needs to know beyond the bytes: the header format (from the agreed
/// protocol version) and the length of the data-integrity digest (0 if none was agreed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeContext {
    format: HeaderFormat,
    integrity_digest_len: u8,
}

impl DecodeContext {
    /// A context without integrity digests.
    pub const fn new(format: HeaderFormat) -> DecodeContext {
        DecodeContext {
            format,
            integrity_digest_len: 0,
        }
    }

    /// The same context with integrity digests of `len` bytes (at most 64: a longer digest is
    /// a configuration bug and panics).
    #[must_use]
    pub fn with_integrity_digest_len(mut self, len: usize) -> DecodeContext {
        assert!(len <= MAX_DIGEST_LEN, "integrity digest of {len} bytes");
        self.integrity_digest_len = len as u8;
        self
    }

    /// The header format.
    pub const fn format(&self) -> HeaderFormat {
        self.format
    }

    /// The integrity digest length.
    pub const fn integrity_digest_len(&self) -> usize {
        self.integrity_digest_len as usize
    }

    /// The same context with another header format.
    #[must_use]
    pub const fn with_format(mut self, format: HeaderFormat) -> DecodeContext {
        self.format = format;
        self
    }
}

/// p_data with its digest and data: P_DATA, P_DATA_REPLY, P_RS_DATA_REPLY.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DataPacket {
    /// Sector, cookie, sequence number, flags.
    pub header: DataHeader,
    /// Integrity digest over `data` (empty without data-integrity-alg).
    pub digest: Digest,
    /// The data, a multiple of 512 bytes, at most 1 MiB.
    pub data: Bytes,
}

/// p_wsame with its digest and one logical block: P_WSAME.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WriteSamePacket {
    /// Sector, cookie, sequence number, flags.
    pub header: DataHeader,
    /// Bytes to write.
    pub size: u32,
    /// Integrity digest over `data`.
    pub digest: Digest,
    /// The block to repeat.
    pub data: Bytes,
}

/// A plain bitmap chunk: consecutive little-endian 64-bit words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PlainBitmap {
    /// The payload, a multiple of 8 bytes (checked when decoding).
    pub payload: Bytes,
}

impl PlainBitmap {
    /// A chunk holding these words.
    pub fn from_words(words: &[u64]) -> PlainBitmap {
        let mut b = BytesMut::with_capacity(words.len() * 8);
        for w in words {
            b.put_u64_le(*w);
        }
        PlainBitmap {
            payload: b.freeze(),
        }
    }

    /// Number of words.
    pub fn word_count(&self) -> usize {
        self.payload.len() / 8
    }

    /// The words, in order.
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.payload.chunks_exact(8).map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
    }
}

/// p_compressed_bm with encoding RLE_VLI_Bits (see [`crate::bitmap`]).
///
/// ```text
///  encoding byte:  bit 7    bits 6-4    bits 3-0
///                  first    pad bits    code = 2 (RLE_VLI_Bits)
///                  run set  at the end
///  then the VLI bit stream, LSB first
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CompressedBitmap {
    /// Whether the first run is a run of set bits.
    pub first_run_set: bool,
    /// Unused bits at the end of the last code byte (0..=7).
    pub pad_bits: u8,
    /// The code bytes (at least one).
    pub code: Bytes,
}

/// The only bitmap encoding DRBD uses.
pub const RLE_VLI_BITS: u8 = 2;

impl CompressedBitmap {
    /// The encoding byte.
    pub fn encoding(&self) -> u8 {
        debug_assert!(self.pad_bits <= 7);
        (u8::from(self.first_run_set) << 7) | ((self.pad_bits & 7) << 4) | RLE_VLI_BITS
    }
}

/// A packet, typed. Variants are named after DRBD's commands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Packet {
    /// P_DATA: a replicated write.
    Data(DataPacket),
    /// P_DATA_REPLY: answer to P_DATA_REQUEST.
    DataReply(DataPacket),
    /// P_RS_DATA_REPLY: answer to P_RS_DATA_REQUEST / P_CSUM_RS_REQUEST.
    RsDataReply(DataPacket),
    /// P_BARRIER: closes an epoch.
    Barrier(Barrier),
    /// P_BITMAP: a plain bitmap chunk (empty: the end of a plain transfer).
    Bitmap(PlainBitmap),
    /// P_UNPLUG_REMOTE.
    UnplugRemote,
    /// P_DATA_REQUEST: remote read.
    DataRequest(BlockRequest),
    /// P_RS_DATA_REQUEST: resync read.
    RsDataRequest(BlockRequest),
    /// P_SYNC_PARAM: resync parameters of protocol <= 88.
    SyncParam(LegacySyncParams),
    /// P_PROTOCOL.
    Protocol(ProtocolParams),
    /// P_UUIDS.
    Uuids(Uuids),
    /// P_SIZES.
    Sizes(Sizes),
    /// P_STATE.
    State(State),
    /// P_SYNC_UUID.
    SyncUuid(u64),
    /// P_AUTH_CHALLENGE: 64..=128 random bytes.
    AuthChallenge(Bytes),
    /// P_AUTH_RESPONSE: HMAC over the peer's challenge.
    AuthResponse(Bytes),
    /// P_STATE_CHG_REQ: a cluster-wide state change of one volume.
    StateChgReq(StateChange),
    /// P_PING.
    Ping,
    /// P_PING_ACK.
    PingAck,
    /// P_RECV_ACK: protocol B.
    RecvAck(BlockAck),
    /// P_WRITE_ACK: protocol C.
    WriteAck(BlockAck),
    /// P_RS_WRITE_ACK: written, may be set in sync.
    RsWriteAck(BlockAck),
    /// P_SUPERSEDED: dual-primary conflict, the peer's write was dropped.
    Superseded(BlockAck),
    /// P_NEG_ACK: the write failed on the peer.
    NegAck(BlockAck),
    /// P_NEG_DREPLY: remote read failed.
    NegDReply(BlockAck),
    /// P_NEG_RS_DREPLY: resync read failed.
    NegRsDReply(BlockAck),
    /// P_BARRIER_ACK.
    BarrierAck(BarrierAck),
    /// P_STATE_CHG_REPLY.
    StateChgReply(StateChangeReply),
    /// P_OV_REQUEST: online verify asks for a digest.
    OvRequest(BlockRequest),
    /// P_OV_REPLY: the digest.
    OvReply(DigestRequest),
    /// P_OV_RESULT: ID_IN_SYNC or ID_OUT_OF_SYNC.
    OvResult(BlockAck),
    /// P_CSUM_RS_REQUEST: checksum-based resync request.
    CsumRsRequest(DigestRequest),
    /// P_RS_IS_IN_SYNC: the checksum matched.
    RsIsInSync(BlockAck),
    /// P_SYNC_PARAM89: resync parameters (132 or 148 bytes).
    SyncParam89(SyncParams),
    /// P_COMPRESSED_BITMAP.
    CompressedBitmap(CompressedBitmap),
    /// P_DELAY_PROBE.
    DelayProbe(DelayProbe),
    /// P_OUT_OF_SYNC: Ahead mode marks a range out of sync.
    OutOfSync(BlockDesc),
    /// P_RS_CANCEL.
    RsCancel(BlockAck),
    /// P_CONN_ST_CHG_REQ: a connection-wide state change.
    ConnStChgReq(StateChange),
    /// P_CONN_ST_CHG_REPLY.
    ConnStChgReply(StateChangeReply),
    /// P_RETRY_WRITE: dual-primary conflict, re-issue the write.
    RetryWrite(BlockAck),
    /// P_PROTOCOL_UPDATE: new net options on an established connection.
    ProtocolUpdate(ProtocolParams),
    /// P_TRIM: a discard.
    Trim(Trim),
    /// P_RS_THIN_REQ.
    RsThinReq(BlockRequest),
    /// P_RS_DEALLOCATED.
    RsDeallocated(BlockDesc),
    /// P_WSAME.
    WriteSame(WriteSamePacket),
    /// P_ZEROES: write-zeroes.
    Zeroes(Trim),
    /// P_INITIAL_META: first packet of the meta socket.
    InitialMeta,
    /// P_INITIAL_DATA: first packet of the data socket.
    InitialData,
    /// P_CONNECTION_FEATURES.
    ConnectionFeatures(ConnectionFeatures),
    /// An unknown command >= P_MAY_IGNORE; its payload was skipped.
    Ignored {
        /// The command number.
        command: u16,
        /// Bytes skipped.
        length: u32,
    },
}

/// A decoded packet with the volume its header named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Volume number (0 with 8-byte headers).
    pub volume: u16,
    /// The packet.
    pub packet: Packet,
}

/// An encoded packet: `head` (header, fixed payload, digest) followed by `data` (the shared
/// data of data-carrying packets, empty otherwise). Send both, in this order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EncodedPacket {
    /// Header and everything but the bulk data.
    pub head: Bytes,
    /// Bulk data, shared with the caller's buffer.
    pub data: Bytes,
}

impl EncodedPacket {
    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }

    /// Never true: every packet has a header.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Both segments in one buffer (tests, small packets).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.data);
        v
    }
}

/// The payload length rule for a header, checked before its payload is buffered: the command
/// must be known (or skippable) and the length allowed.
pub(crate) fn check_length(
    command_number: u16,
    length: u32,
    ctx: &DecodeContext,
) -> Result<(), DecodeError> {
    match Command::from_u16(command_number) {
        Some(command) => {
            let expected = command.expected_length(ctx.format, ctx.integrity_digest_len);
            if expected.allows(u64::from(length)) {
                Ok(())
            } else {
                Err(DecodeError::BadLength {
                    command,
                    length,
                    expected,
                })
            }
        }
        None if command_number >= P_MAY_IGNORE => {
            if length <= MAX_IGNORED_PAYLOAD {
                Ok(())
            } else {
                Err(DecodeError::IgnoredTooLong {
                    command: command_number,
                    length,
                    max: MAX_IGNORED_PAYLOAD,
                })
            }
        }
        None => Err(DecodeError::UnknownCommand {
            command: command_number,
        }),
    }
}

impl Packet {
    /// The command number this packet travels under.
    pub fn command_number(&self) -> u16 {
        match self.command() {
            Some(c) => c as u16,
            None => match self {
                Packet::Ignored { command, .. } => *command,
                _ => unreachable!("only Ignored has no Command"),
            },
        }
    }

    /// The command, `None` for [`Packet::Ignored`].
    pub fn command(&self) -> Option<Command> {
        Some(match self {
            Packet::Data(_) => Command::Data,
            Packet::DataReply(_) => Command::DataReply,
            Packet::RsDataReply(_) => Command::RsDataReply,
            Packet::Barrier(_) => Command::Barrier,
            Packet::Bitmap(_) => Command::Bitmap,
            Packet::UnplugRemote => Command::UnplugRemote,
            Packet::DataRequest(_) => Command::DataRequest,
            Packet::RsDataRequest(_) => Command::RsDataRequest,
            Packet::SyncParam(_) => Command::SyncParam,
            Packet::Protocol(_) => Command::Protocol,
            Packet::Uuids(_) => Command::Uuids,
            Packet::Sizes(_) => Command::Sizes,
            Packet::State(_) => Command::State,
            Packet::SyncUuid(_) => Command::SyncUuid,
            Packet::AuthChallenge(_) => Command::AuthChallenge,
            Packet::AuthResponse(_) => Command::AuthResponse,
            Packet::StateChgReq(_) => Command::StateChgReq,
            Packet::Ping => Command::Ping,
            Packet::PingAck => Command::PingAck,
            Packet::RecvAck(_) => Command::RecvAck,
            Packet::WriteAck(_) => Command::WriteAck,
            Packet::RsWriteAck(_) => Command::RsWriteAck,
            Packet::Superseded(_) => Command::Superseded,
            Packet::NegAck(_) => Command::NegAck,
            Packet::NegDReply(_) => Command::NegDReply,
            Packet::NegRsDReply(_) => Command::NegRsDReply,
            Packet::BarrierAck(_) => Command::BarrierAck,
            Packet::StateChgReply(_) => Command::StateChgReply,
            Packet::OvRequest(_) => Command::OvRequest,
            Packet::OvReply(_) => Command::OvReply,
            Packet::OvResult(_) => Command::OvResult,
            Packet::CsumRsRequest(_) => Command::CsumRsRequest,
            Packet::RsIsInSync(_) => Command::RsIsInSync,
            Packet::SyncParam89(_) => Command::SyncParam89,
            Packet::CompressedBitmap(_) => Command::CompressedBitmap,
            Packet::DelayProbe(_) => Command::DelayProbe,
            Packet::OutOfSync(_) => Command::OutOfSync,
            Packet::RsCancel(_) => Command::RsCancel,
            Packet::ConnStChgReq(_) => Command::ConnStChgReq,
            Packet::ConnStChgReply(_) => Command::ConnStChgReply,
            Packet::RetryWrite(_) => Command::RetryWrite,
            Packet::ProtocolUpdate(_) => Command::ProtocolUpdate,
            Packet::Trim(_) => Command::Trim,
            Packet::RsThinReq(_) => Command::RsThinReq,
            Packet::RsDeallocated(_) => Command::RsDeallocated,
            Packet::WriteSame(_) => Command::WriteSame,
            Packet::Zeroes(_) => Command::Zeroes,
            Packet::InitialMeta => Command::InitialMeta,
            Packet::InitialData => Command::InitialData,
            Packet::ConnectionFeatures(_) => Command::ConnectionFeatures,
            Packet::Ignored { .. } => return None,
        })
    }

    /// Decodes the payload of a packet whose header carried `command` (the whole payload,
    /// exactly as long as the header said).
    pub fn decode(
        command: u16,
        payload: Bytes,
        ctx: &DecodeContext,
    ) -> Result<Packet, DecodeError> {
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        check_length(command, length, ctx)?;
        let Some(cmd) = Command::from_u16(command) else {
            return Ok(Packet::Ignored { command, length });
        };
        decode_known(cmd, payload, ctx)
    }

    /// Encodes the packet for `volume` with the given header format. The length rules of the
    /// receiver are checked, so an encoded packet always decodes (with a context whose digest
    /// length matches the packet's digest).
    pub fn encode(&self, volume: u16, format: HeaderFormat) -> Result<EncodedPacket, EncodeError> {
        let Some(command) = self.command() else {
            return Err(EncodeError::UnknownCommand {
                command: self.command_number(),
            });
        };
        let header_size = format.header_size();
        let mut head = BytesMut::with_capacity(header_size + 32);
        head.put_bytes(0, header_size);
        let data = self.encode_payload(&mut head);
        let length = (head.len() - header_size + data.len()) as u64;
        let digest_len = self.integrity_digest().map_or(0, |d| d.len() as u8);
        let expected = command.expected_length(format, digest_len);
        if !expected.allows(length) {
            return Err(EncodeError::BadLength {
                command,
                length,
                expected,
            });
        }
        let header = Header::new(format, volume, command as u16, length)?;
        let mut header_bytes = Vec::with_capacity(header_size);
        header.encode_into(&mut header_bytes);
        head[..header_size].copy_from_slice(&header_bytes);
        Ok(EncodedPacket {
            head: head.freeze(),
            data,
        })
    }

    /// The integrity digest of a data-carrying packet.
    fn integrity_digest(&self) -> Option<&Digest> {
        match self {
            Packet::Data(d) | Packet::DataReply(d) | Packet::RsDataReply(d) => Some(&d.digest),
            Packet::WriteSame(w) => Some(&w.digest),
            _ => None,
        }
    }

    /// Appends the payload except bulk data; returns the bulk data.
    fn encode_payload(&self, out: &mut BytesMut) -> Bytes {
        match self {
            Packet::Data(d) | Packet::DataReply(d) | Packet::RsDataReply(d) => {
                d.header.encode(out);
                out.put_slice(d.digest.as_bytes());
                return d.data.clone();
            }
            Packet::WriteSame(w) => {
                w.header.encode(out);
                out.put_u32(w.size);
                out.put_slice(w.digest.as_bytes());
                return w.data.clone();
            }
            Packet::Barrier(b) => {
                out.put_u32(b.barrier);
                out.put_u32(b.pad);
            }
            Packet::BarrierAck(b) => {
                out.put_u32(b.barrier);
                out.put_u32(b.set_size);
            }
            Packet::Bitmap(b) => out.put_slice(&b.payload),
            Packet::CompressedBitmap(c) => {
                out.put_u8(c.encoding());
                out.put_slice(&c.code);
            }
            Packet::UnplugRemote
            | Packet::Ping
            | Packet::PingAck
            | Packet::InitialMeta
            | Packet::InitialData
            | Packet::Ignored { .. } => {}
            Packet::DataRequest(r)
            | Packet::RsDataRequest(r)
            | Packet::OvRequest(r)
            | Packet::RsThinReq(r) => r.encode(out),
            Packet::OvReply(r) | Packet::CsumRsRequest(r) => {
                r.request.encode(out);
                out.put_slice(r.digest.as_bytes());
            }
            Packet::RecvAck(a)
            | Packet::WriteAck(a)
            | Packet::RsWriteAck(a)
            | Packet::Superseded(a)
            | Packet::NegAck(a)
            | Packet::NegDReply(a)
            | Packet::NegRsDReply(a)
            | Packet::OvResult(a)
            | Packet::RsIsInSync(a)
            | Packet::RsCancel(a)
            | Packet::RetryWrite(a) => a.encode(out),
            Packet::OutOfSync(d) | Packet::RsDeallocated(d) => d.encode(out),
            Packet::SyncParam(p) => p.encode(out),
            Packet::Protocol(p) | Packet::ProtocolUpdate(p) => p.encode(out),
            Packet::Uuids(u) => u.encode(out),
            Packet::Sizes(s) => s.encode(out),
            Packet::State(s) => out.put_u32(s.to_word().0),
            Packet::SyncUuid(u) => out.put_u64(*u),
            Packet::AuthChallenge(b) | Packet::AuthResponse(b) => out.put_slice(b),
            Packet::StateChgReq(s) | Packet::ConnStChgReq(s) => {
                out.put_u32(s.mask.0);
                out.put_u32(s.val.0);
            }
            Packet::StateChgReply(r) | Packet::ConnStChgReply(r) => out.put_i32(r.retcode),
            Packet::SyncParam89(p) => p.encode(out),
            Packet::DelayProbe(p) => {
                out.put_u32(p.seq_num);
                out.put_u32(p.offset);
            }
            Packet::Trim(t) | Packet::Zeroes(t) => {
                t.header.encode(out);
                out.put_u32(t.size);
            }
            Packet::ConnectionFeatures(f) => f.encode(out),
        }
        Bytes::new()
    }
}

/// Decodes a payload whose length already satisfies the command's rule.
fn decode_known(cmd: Command, payload: Bytes, ctx: &DecodeContext) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(&payload);
    let digest_len = ctx.integrity_digest_len();
    let data_packet = |r: &mut Reader<'_>, fixed: usize| {
        let header = DataHeader::decode(r);
        let digest = Digest::new(r.bytes(digest_len)).expect("digest_len <= 64");
        (header, digest, payload.slice(fixed + digest_len..))
    };
    let trim = |r: &mut Reader<'_>| Trim {
        header: DataHeader::decode(r),
        size: r.u32(),
    };
    let digest_request = |r: &mut Reader<'_>| {
        let request = BlockRequest::decode(r);
        let rest = r.bytes(r.remaining());
        DigestRequest {
            request,
            digest: Digest::new(rest).expect("length rule caps the digest at 64"),
        }
    };
    let state_change = |r: &mut Reader<'_>| StateChange {
        mask: StateWord(r.u32()),
        val: StateWord(r.u32()),
    };
    let packet = match cmd {
        Command::Data | Command::DataReply | Command::RsDataReply => {
            let (header, digest, data) = data_packet(&mut r, 24);
            let d = DataPacket {
                header,
                digest,
                data,
            };
            match cmd {
                Command::Data => Packet::Data(d),
                Command::DataReply => Packet::DataReply(d),
                _ => Packet::RsDataReply(d),
            }
        }
        Command::WriteSame => {
            let header = DataHeader::decode(&mut r);
            let size = r.u32();
            let digest = Digest::new(r.bytes(digest_len)).expect("digest_len <= 64");
            Packet::WriteSame(WriteSamePacket {
                header,
                size,
                digest,
                data: payload.slice(28 + digest_len..),
            })
        }
        Command::Barrier => Packet::Barrier(Barrier {
            barrier: r.u32(),
            pad: r.u32(),
        }),
        Command::BarrierAck => Packet::BarrierAck(BarrierAck {
            barrier: r.u32(),
            set_size: r.u32(),
        }),
        Command::Bitmap => Packet::Bitmap(PlainBitmap {
            payload: payload.clone(),
        }),
        Command::CompressedBitmap => {
            let encoding = r.u8();
            if encoding & 0x0f != RLE_VLI_BITS {
                return Err(DecodeError::UnknownBitmapEncoding {
                    code: encoding & 0x0f,
                });
            }
            Packet::CompressedBitmap(CompressedBitmap {
                first_run_set: encoding & 0x80 != 0,
                pad_bits: (encoding >> 4) & 7,
                code: payload.slice(1..),
            })
        }
        Command::UnplugRemote => Packet::UnplugRemote,
        Command::Ping => Packet::Ping,
        Command::PingAck => Packet::PingAck,
        Command::InitialMeta => Packet::InitialMeta,
        Command::InitialData => Packet::InitialData,
        Command::DataRequest => Packet::DataRequest(BlockRequest::decode(&mut r)),
        Command::RsDataRequest => Packet::RsDataRequest(BlockRequest::decode(&mut r)),
        Command::OvRequest => Packet::OvRequest(BlockRequest::decode(&mut r)),
        Command::RsThinReq => Packet::RsThinReq(BlockRequest::decode(&mut r)),
        Command::OvReply => Packet::OvReply(digest_request(&mut r)),
        Command::CsumRsRequest => Packet::CsumRsRequest(digest_request(&mut r)),
        Command::RecvAck => Packet::RecvAck(BlockAck::decode(&mut r)),
        Command::WriteAck => Packet::WriteAck(BlockAck::decode(&mut r)),
        Command::RsWriteAck => Packet::RsWriteAck(BlockAck::decode(&mut r)),
        Command::Superseded => Packet::Superseded(BlockAck::decode(&mut r)),
        Command::NegAck => Packet::NegAck(BlockAck::decode(&mut r)),
        Command::NegDReply => Packet::NegDReply(BlockAck::decode(&mut r)),
        Command::NegRsDReply => Packet::NegRsDReply(BlockAck::decode(&mut r)),
        Command::OvResult => Packet::OvResult(BlockAck::decode(&mut r)),
        Command::RsIsInSync => Packet::RsIsInSync(BlockAck::decode(&mut r)),
        Command::RsCancel => Packet::RsCancel(BlockAck::decode(&mut r)),
        Command::RetryWrite => Packet::RetryWrite(BlockAck::decode(&mut r)),
        Command::OutOfSync => Packet::OutOfSync(BlockDesc::decode(&mut r)),
        Command::RsDeallocated => Packet::RsDeallocated(BlockDesc::decode(&mut r)),
        Command::SyncParam => Packet::SyncParam(LegacySyncParams::decode(&mut r)?),
        Command::Protocol => Packet::Protocol(ProtocolParams::decode(&mut r, cmd)?),
        Command::ProtocolUpdate => Packet::ProtocolUpdate(ProtocolParams::decode(&mut r, cmd)?),
        Command::Uuids => Packet::Uuids(Uuids::decode(&mut r)),
        Command::Sizes => Packet::Sizes(Sizes::decode(&mut r)),
        Command::State => Packet::State(State::from_word(StateWord(r.u32()))?),
        Command::SyncUuid => Packet::SyncUuid(r.u64()),
        Command::AuthChallenge => Packet::AuthChallenge(payload.clone()),
        Command::AuthResponse => Packet::AuthResponse(payload.clone()),
        Command::StateChgReq => Packet::StateChgReq(state_change(&mut r)),
        Command::ConnStChgReq => Packet::ConnStChgReq(state_change(&mut r)),
        Command::StateChgReply => Packet::StateChgReply(StateChangeReply { retcode: r.i32() }),
        Command::ConnStChgReply => Packet::ConnStChgReply(StateChangeReply { retcode: r.i32() }),
        Command::SyncParam89 => Packet::SyncParam89(SyncParams::decode(&mut r)?),
        Command::DelayProbe => Packet::DelayProbe(DelayProbe {
            seq_num: r.u32(),
            offset: r.u32(),
        }),
        Command::Trim => Packet::Trim(trim(&mut r)),
        Command::Zeroes => Packet::Zeroes(trim(&mut r)),
        Command::ConnectionFeatures => {
            Packet::ConnectionFeatures(ConnectionFeatures::decode(&mut r))
        }
    };
    Ok(packet)
}
