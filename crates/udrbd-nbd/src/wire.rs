//! The NBD wire format: magics, numbers, and the encoders/decoders of every fixed layout the
//! server sends or receives. The source of truth is `doc/proto.md` of NetworkBlockDevice/nbd;
//! every constant below carries the name it has there. All integers are big-endian.
//!
//! # Handshake (fixed newstyle)
//!
//! ```text
//! server greeting, 18 bytes                    client flags, 4 bytes
//! +--------+----------------------------+       +--------+---------------------------------+
//! | off sz | field                      |       | off sz | field                           |
//! +--------+----------------------------+       +--------+---------------------------------+
//! |  0   8 | NBDMAGIC 0x4e42444d41474943 |       |  0   4 | bit 0 C_FIXED_NEWSTYLE          |
//! |  8   8 | IHAVEOPT 0x49484156454F5054 |       |        | bit 1 C_NO_ZEROES, others: close |
//! | 16   2 | handshake flags: bit 0     |       +--------+---------------------------------+
//! |        | FIXED_NEWSTYLE, bit 1      |
//! |        | NO_ZEROES                  |
//! +--------+----------------------------+
//!
//! option request (client), 16 + length bytes   option reply (server), 20 + length bytes
//! +--------+----------------------------+       +--------+---------------------------------+
//! |  0   8 | IHAVEOPT                   |       |  0   8 | 0x0003e889045565a9              |
//! |  8   4 | option (NBD_OPT_*)         |       |  8   4 | option being answered           |
//! | 12   4 | length of data             |       | 12   4 | reply type (NBD_REP_*)          |
//! | 16   n | data                       |       | 16   4 | length of data                  |
//! +--------+----------------------------+       | 20   n | data                            |
//!                                               +--------+---------------------------------+
//!
//! NBD_OPT_INFO / NBD_OPT_GO data               NBD_REP_INFO data
//! +--------+----------------------------+       +------------+-----------------------------+
//! |  0   4 | name length N (<= len - 6) |       | type       | payload                     |
//! |  4   N | export name (UTF-8)        |       +------------+-----------------------------+
//! | 4+N  2 | number of info requests K  |       | 0 EXPORT   | u64 size, u16 trans. flags  |
//! | 6+N 2K | K x u16 NBD_INFO_* wanted  |       | 1 NAME     | canonical name              |
//! +--------+----------------------------+       | 2 DESCRIPT.| description                 |
//!   (total must be exactly 6 + N + 2K)          | 3 BLOCK_SZ | u32 min, u32 pref, u32 max  |
//!                                               +------------+-----------------------------+
//!
//! NBD_REP_SERVER data (NBD_OPT_LIST)           NBD_OPT_EXPORT_NAME reply (no reply header)
//! +--------+----------------------------+       +--------+---------------------------------+
//! |  0   4 | name length N              |       |  0   8 | export size                     |
//! |  4   N | name                       |       |  8   2 | transmission flags              |
//! | 4+N  * | description (optional)     |       | 10 124 | zeroes, unless C_NO_ZEROES      |
//! +--------+----------------------------+       +--------+---------------------------------+
//! ```
//!
//! # Transmission
//!
//! ```text
//! request (client), 28 bytes (+ length bytes of data for NBD_CMD_WRITE)
//! +--------+---------------------------------------------------------------+
//! |  0   4 | NBD_REQUEST_MAGIC 0x25609513                                  |
//! |  4   2 | command flags: bit 0 FUA, 1 NO_HOLE, 2 DF, 3 REQ_ONE, 4 FAST_ZERO |
//! |  6   2 | type: 0 READ 1 WRITE 2 DISC 3 FLUSH 4 TRIM 5 CACHE 6 WRITE_ZEROES |
//! |  8   8 | cookie ("handle"), echoed verbatim in the reply               |
//! | 16   8 | offset                                                        |
//! | 24   4 | length                                                        |
//! +--------+---------------------------------------------------------------+
//!
//! simple reply, 16 bytes (+ data of a successful READ)
//! +--------+---------------------------------------------------------------+
//! |  0   4 | NBD_SIMPLE_REPLY_MAGIC 0x67446698                             |
//! |  4   4 | error (0 = success, else NBD_E*)                              |
//! |  8   8 | cookie                                                        |
//! +--------+---------------------------------------------------------------+
//!
//! structured reply chunk, 20 bytes + length bytes of payload
//! +--------+---------------------------------------------------------------+
//! |  0   4 | NBD_STRUCTURED_REPLY_MAGIC 0x668e33ef                         |
//! |  4   2 | flags: bit 0 DONE                                             |
//! |  6   2 | type: 0 NONE, 1 OFFSET_DATA, 2^15+1 ERROR                     |
//! |  8   8 | cookie                                                        |
//! | 16   4 | length of payload                                             |
//! +--------+---------------------------------------------------------------+
//!   OFFSET_DATA payload: u64 offset, then data (length - 8 bytes, at least 1)
//!   ERROR payload:       u32 error (non-zero), u16 message length M, M bytes message
//! ```
//!
//! Encoders return [`Bytes`] so that a READ's data never has to be copied behind its header:
//! the header goes out as one segment and the data, shared, as the next.

use bytes::{BufMut, Bytes, BytesMut};

// ---- Handshake magics and flags -------------------------------------------------------------

/// `NBDMAGIC` (`INIT_PASSWD`), the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second greeting magic, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply in fixed newstyle negotiation.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag bit 0, `NBD_FLAG_FIXED_NEWSTYLE`.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag bit 1, `NBD_FLAG_NO_ZEROES`.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// What this server advertises: both, and nothing else (the spec allows no other bits).
pub const SERVER_HANDSHAKE_FLAGS: u16 = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

/// Client flag bit 0, `NBD_FLAG_C_FIXED_NEWSTYLE`.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag bit 1, `NBD_FLAG_C_NO_ZEROES`.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; any other bit set closes the connection.
pub const KNOWN_CLIENT_FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

// ---- Transmission flags (16 bits, sent after option haggling) -------------------------------

/// Bit 0, `NBD_FLAG_HAS_FLAGS`: MUST always be 1.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Bit 1, `NBD_FLAG_READ_ONLY`.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Bit 2, `NBD_FLAG_SEND_FLUSH`.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Bit 3, `NBD_FLAG_SEND_FUA`.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// Bit 4, `NBD_FLAG_ROTATIONAL`.
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
/// Bit 5, `NBD_FLAG_SEND_TRIM`.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Bit 6, `NBD_FLAG_SEND_WRITE_ZEROES`.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Bit 7, `NBD_FLAG_SEND_DF` (never set: we always send one data chunk, but do not advertise it).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// Bit 8, `NBD_FLAG_CAN_MULTI_CONN`.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// ---- Options and option replies -------------------------------------------------------------

/// `NBD_OPT_EXPORT_NAME` (1): choose an export and enter transmission; cannot return errors.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT` (2): soft disconnect during negotiation.
pub const NBD_OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST` (3): one `NBD_REP_SERVER` per export, then `NBD_REP_ACK`.
pub const NBD_OPT_LIST: u32 = 3;
/// `NBD_OPT_STARTTLS` (5): answered with `NBD_REP_ERR_UNSUP` (NOTLS mode).
pub const NBD_OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO` (6).
pub const NBD_OPT_INFO: u32 = 6;
/// `NBD_OPT_GO` (7).
pub const NBD_OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY` (8).
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT` (9): not implemented, answered with `NBD_REP_ERR_UNSUP`.
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT` (10): not implemented, answered with `NBD_REP_ERR_UNSUP`.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;

/// `NBD_REP_ACK` (1).
pub const NBD_REP_ACK: u32 = 1;
/// `NBD_REP_SERVER` (2).
pub const NBD_REP_SERVER: u32 = 2;
/// `NBD_REP_INFO` (3).
pub const NBD_REP_INFO: u32 = 3;
/// Error replies have bit 31 set.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ERR_UNSUP` (2^31 + 1): option unknown to this server.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR + 1;
/// `NBD_REP_ERR_POLICY` (2^31 + 2): known and valid, but forbidden by server policy.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR + 2;
/// `NBD_REP_ERR_INVALID` (2^31 + 3): syntactically or semantically invalid.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR + 3;
/// `NBD_REP_ERR_UNKNOWN` (2^31 + 6): the requested export is not available.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR + 6;
/// `NBD_REP_ERR_SHUTDOWN` (2^31 + 7): the server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR + 7;

/// `NBD_INFO_EXPORT` (0): size and transmission flags; mandatory before a successful ACK.
pub const NBD_INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME` (1): canonical export name.
pub const NBD_INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION` (2): human-readable description.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE` (3): minimum, preferred and maximum block size.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---- Transmission: requests ----------------------------------------------------------------

/// `NBD_REQUEST_MAGIC`.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Bytes in a request header (a WRITE's data follows it).
pub const REQUEST_HEADER_LEN: usize = 28;

/// `NBD_CMD_READ` (0).
pub const NBD_CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE` (1): the only request that carries data.
pub const NBD_CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC` (2): soft disconnect; no reply.
pub const NBD_CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH` (3).
pub const NBD_CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM` (4).
pub const NBD_CMD_TRIM: u16 = 4;
/// `NBD_CMD_WRITE_ZEROES` (6).
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;

/// Command flag bit 0, `NBD_CMD_FLAG_FUA`.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag bit 1, `NBD_CMD_FLAG_NO_HOLE` (WRITE_ZEROES only).
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag bit 2, `NBD_CMD_FLAG_DF` (READ only, needs `NBD_FLAG_SEND_DF`: never valid here).
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;

// ---- Transmission: replies -----------------------------------------------------------------

/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Bytes in a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Bytes in a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Structured reply flag bit 0, `NBD_REPLY_FLAG_DONE`.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// `NBD_REPLY_TYPE_NONE` (0).
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA` (1).
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_ERROR` (2^15 + 1).
pub const NBD_REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// ---- Limits --------------------------------------------------------------------------------

/// Minimum block size we advertise: every offset and length must be a multiple of it. A DRBD
/// device is addressed in 512-byte sectors.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Preferred block size we advertise: the DRBD bitmap granularity (4 KiB).
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Maximum block size we advertise, and the largest READ/WRITE/WRITE_ZEROES we accept: 2^25,
/// the length the spec says SHOULD NOT be considered a denial of service.
pub const MAX_BLOCK_SIZE: u32 = 32 * 1024 * 1024;
/// The spec's limit on any string (export names, messages, descriptions).
pub const MAX_STRING_LEN: usize = 4096;
/// Zero bytes after the `NBD_OPT_EXPORT_NAME` reply unless `NBD_FLAG_C_NO_ZEROES`.
pub const EXPORT_NAME_ZEROES: usize = 124;

const _: () = assert!(MIN_BLOCK_SIZE.is_power_of_two() && MIN_BLOCK_SIZE <= 65_536);
const _: () = assert!(PREFERRED_BLOCK_SIZE.is_power_of_two() && PREFERRED_BLOCK_SIZE >= 512);
const _: () = assert!(MAX_BLOCK_SIZE.is_multiple_of(MIN_BLOCK_SIZE) && MAX_BLOCK_SIZE >= 1 << 20);
const _: () = assert!(REQUEST_HEADER_LEN == 4 + 2 + 2 + 8 + 8 + 4);
const _: () = assert!(SIMPLE_REPLY_LEN == 4 + 4 + 8);
const _: () = assert!(STRUCTURED_REPLY_LEN == 4 + 2 + 2 + 8 + 4);

// ---- Errors sent in replies ----------------------------------------------------------------

/// The error values of a transmission reply (proto.md "Error values"); never zero, which is
/// what makes an error reply an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Errno {
    /// `NBD_EPERM` (1): e.g. a write to a read-only export.
    Perm,
    /// `NBD_EIO` (5): the device failed.
    Io,
    /// `NBD_ENOMEM` (12): the server SHOULD NOT use it.
    NoMem,
    /// `NBD_EINVAL` (22): bad request (unknown command, bad flag, unaligned, too long, past
    /// the end of a read or trim).
    Inval,
    /// `NBD_ENOSPC` (28): a write or write-zeroes past the end of the export.
    NoSpc,
    /// `NBD_EOVERFLOW` (75): only for READ with `NBD_CMD_FLAG_DF`, which we never advertise.
    Overflow,
    /// `NBD_ENOTSUP` (95): only for WRITE_ZEROES with FAST_ZERO, which we never advertise.
    NotSup,
    /// `NBD_ESHUTDOWN` (108): the server is shutting down; the client must disconnect.
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub const fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// A human-readable message for a structured error chunk.
    pub const fn message(self) -> &'static str {
        match self {
            Errno::Perm => "operation not permitted",
            Errno::Io => "input/output error",
            Errno::NoMem => "cannot allocate memory",
            Errno::Inval => "invalid argument",
            Errno::NoSpc => "no space left on device",
            Errno::Overflow => "value too large",
            Errno::NotSup => "operation not supported",
            Errno::Shutdown => "server is shutting down",
        }
    }
}

/// The opaque 64-bit value the client puts in a request ("handle" in older revisions of the
/// spec, "cookie" in newer ones); the server echoes it in every reply to that request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cookie(pub u64);

// ---- Decoding --------------------------------------------------------------------------------

/// A decoded transmission request header (the 28 fixed bytes, magic already checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command type (`NBD_CMD_*`), possibly unknown.
    pub command: u16,
    /// Echoed in the reply.
    pub cookie: Cookie,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length (of the data that follows, for a WRITE).
    pub length: u32,
}

impl RequestHeader {
    /// Decodes the first [`REQUEST_HEADER_LEN`] bytes; `Err(magic)` if the magic is wrong.
    pub fn decode(bytes: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, u32> {
        let magic = be_u32(&bytes[0..4]);
        if magic != NBD_REQUEST_MAGIC {
            return Err(magic);
        }
        Ok(RequestHeader {
            flags: be_u16(&bytes[4..6]),
            command: be_u16(&bytes[6..8]),
            cookie: Cookie(be_u64(&bytes[8..16])),
            offset: be_u64(&bytes[16..24]),
            length: be_u32(&bytes[24..28]),
        })
    }

    /// Encodes the header (the client side; used by tests and tools).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.0.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

pub(crate) fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub(crate) fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

// ---- Encoding: handshake ----------------------------------------------------------------------

/// The 18-byte server greeting.
pub fn encode_greeting() -> Bytes {
    let mut b = BytesMut::with_capacity(18);
    b.put_u64(NBDMAGIC);
    b.put_u64(IHAVEOPT);
    b.put_u16(SERVER_HANDSHAKE_FLAGS);
    debug_assert_eq!(b.len(), 18);
    b.freeze()
}

/// An option reply: 20-byte header plus `data`.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Bytes {
    let data_len = u32::try_from(data.len()).expect("option reply data is bounded by its builders");
    let mut b = BytesMut::with_capacity(20 + data.len());
    b.put_u64(OPTION_REPLY_MAGIC);
    b.put_u32(option);
    b.put_u32(reply_type);
    b.put_u32(data_len);
    b.put_slice(data);
    b.freeze()
}

/// `NBD_REP_INFO` carrying `NBD_INFO_EXPORT` (length 12).
pub fn encode_info_export(option: u32, size: u64, transmission_flags: u16) -> Bytes {
    let mut data = [0u8; 12];
    data[0..2].copy_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    data[2..10].copy_from_slice(&size.to_be_bytes());
    data[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    encode_option_reply(option, NBD_REP_INFO, &data)
}

/// `NBD_REP_INFO` carrying `NBD_INFO_BLOCK_SIZE` (length 14) with our three constants.
pub fn encode_info_block_size(option: u32) -> Bytes {
    let mut data = [0u8; 14];
    data[0..2].copy_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    data[2..6].copy_from_slice(&MIN_BLOCK_SIZE.to_be_bytes());
    data[6..10].copy_from_slice(&PREFERRED_BLOCK_SIZE.to_be_bytes());
    data[10..14].copy_from_slice(&MAX_BLOCK_SIZE.to_be_bytes());
    encode_option_reply(option, NBD_REP_INFO, &data)
}

/// `NBD_REP_INFO` carrying a string item (`NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`).
pub fn encode_info_string(option: u32, info: u16, text: &str) -> Bytes {
    let mut data = Vec::with_capacity(2 + text.len());
    data.extend_from_slice(&info.to_be_bytes());
    data.extend_from_slice(text.as_bytes());
    encode_option_reply(option, NBD_REP_INFO, &data)
}

/// `NBD_REP_SERVER` for `NBD_OPT_LIST`: name length, name, optional description.
pub fn encode_rep_server(name: &str, description: Option<&str>) -> Bytes {
    let name_len = u32::try_from(name.len()).expect("export names are at most 4096 bytes");
    let description = description.unwrap_or("");
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.extend_from_slice(&name_len.to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(description.as_bytes());
    encode_option_reply(NBD_OPT_LIST, NBD_REP_SERVER, &data)
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless `no_zeroes`.
pub fn encode_export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(10 + EXPORT_NAME_ZEROES);
    b.put_u64(size);
    b.put_u16(transmission_flags);
    if !no_zeroes {
        b.put_bytes(0, EXPORT_NAME_ZEROES);
    }
    b.freeze()
}

// ---- Encoding: transmission -------------------------------------------------------------------

/// A simple reply header; a successful READ's data follows it as its own segment.
pub fn encode_simple_reply(error: u32, cookie: Cookie) -> Bytes {
    let mut b = BytesMut::with_capacity(SIMPLE_REPLY_LEN);
    b.put_u32(NBD_SIMPLE_REPLY_MAGIC);
    b.put_u32(error);
    b.put_u64(cookie.0);
    b.freeze()
}

/// A structured reply chunk header with `length` bytes of payload to follow.
fn put_chunk_header(b: &mut BytesMut, flags: u16, reply_type: u16, cookie: Cookie, length: u32) {
    b.put_u32(NBD_STRUCTURED_REPLY_MAGIC);
    b.put_u16(flags);
    b.put_u16(reply_type);
    b.put_u64(cookie.0);
    b.put_u32(length);
}

/// `NBD_REPLY_TYPE_NONE` with `NBD_REPLY_FLAG_DONE`: success of a request without data.
pub fn encode_structured_none(cookie: Cookie) -> Bytes {
    let mut b = BytesMut::with_capacity(STRUCTURED_REPLY_LEN);
    put_chunk_header(&mut b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
    b.freeze()
}

/// The head of one `NBD_REPLY_TYPE_OFFSET_DATA` chunk with `NBD_REPLY_FLAG_DONE`: chunk header
/// and the 8-byte offset. The `data_len` bytes of data follow as a separate segment. The data
/// is already in memory when this is sent, so no error can follow it, which is what allows DONE
/// on a content chunk.
pub fn encode_structured_read_head(cookie: Cookie, offset: u64, data_len: u32) -> Bytes {
    assert!(
        data_len > 0,
        "an OFFSET_DATA chunk describes at least one byte"
    );
    assert!(
        data_len <= MAX_BLOCK_SIZE,
        "reads are bounded by the maximum block size"
    );
    let mut b = BytesMut::with_capacity(STRUCTURED_REPLY_LEN + 8);
    put_chunk_header(
        &mut b,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        cookie,
        8 + data_len,
    );
    b.put_u64(offset);
    b.freeze()
}

/// `NBD_REPLY_TYPE_ERROR` with `NBD_REPLY_FLAG_DONE` and a human-readable message.
pub fn encode_structured_error(cookie: Cookie, errno: Errno, message: &str) -> Bytes {
    let message = wire_string(message);
    let message_len = u16::try_from(message.len()).expect("wire strings are at most 4096 bytes");
    let mut b = BytesMut::with_capacity(STRUCTURED_REPLY_LEN + 6 + message.len());
    put_chunk_header(
        &mut b,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_ERROR,
        cookie,
        6 + u32::from(message_len),
    );
    b.put_u32(errno.code());
    b.put_u16(message_len);
    b.put_slice(message.as_bytes());
    b.freeze()
}

/// Cuts a caller-supplied text to what the spec allows for a string: no NUL (cut at the first
/// one) and at most [`MAX_STRING_LEN`] bytes (cut at a character boundary).
pub fn wire_string(text: &str) -> &str {
    let text = match text.find('\0') {
        Some(nul) => &text[..nul],
        None => text,
    };
    if text.len() <= MAX_STRING_LEN {
        return text;
    }
    let mut end = MAX_STRING_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `name` may be sent as an export name: at most 4096 bytes, no NUL.
pub fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_STRING_LEN && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_flags() {
        // proto.md: S: 64 bits NBDMAGIC, S: 64 bits IHAVEOPT, S: 16 bits handshake flags.
        assert_eq!(&encode_greeting()[..], b"NBDMAGICIHAVEOPT\x00\x03");
    }

    #[test]
    fn option_reply_magic_is_the_spec_value() {
        let reply = encode_option_reply(NBD_OPT_ABORT, NBD_REP_ACK, &[]);
        assert_eq!(
            &reply[..],
            &[
                0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // reply magic
                0, 0, 0, 2, // NBD_OPT_ABORT
                0, 0, 0, 1, // NBD_REP_ACK
                0, 0, 0, 0, // no data
            ]
        );
    }

    #[test]
    fn request_header_round_trips_and_checks_magic() {
        let header = RequestHeader {
            flags: NBD_CMD_FLAG_FUA,
            command: NBD_CMD_WRITE,
            cookie: Cookie(0x0102_0304_0506_0708),
            offset: 4096,
            length: 512,
        };
        let bytes = header.encode();
        assert_eq!(
            bytes,
            [
                0x25, 0x60, 0x95, 0x13, // NBD_REQUEST_MAGIC
                0x00, 0x01, // FUA
                0x00, 0x01, // NBD_CMD_WRITE
                1, 2, 3, 4, 5, 6, 7, 8, // cookie
                0, 0, 0, 0, 0, 0, 0x10, 0, // offset 4096
                0, 0, 2, 0, // length 512
            ]
        );
        assert_eq!(RequestHeader::decode(&bytes), Ok(header));
        let mut bad = bytes;
        bad[0] = 0x12;
        assert_eq!(RequestHeader::decode(&bad), Err(0x1260_9513));
    }

    #[test]
    fn simple_reply_layout() {
        assert_eq!(
            &encode_simple_reply(22, Cookie(7))[..],
            &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 7]
        );
    }

    #[test]
    fn structured_chunks_layout() {
        assert_eq!(
            &encode_structured_none(Cookie(9))[..],
            &[
                0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0
            ]
        );
        assert_eq!(
            &encode_structured_read_head(Cookie(9), 512, 4)[..],
            &[
                0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0,
                12, // header
                0, 0, 0, 0, 0, 0, 2, 0, // offset 512
            ]
        );
        assert_eq!(
            &encode_structured_error(Cookie(9), Errno::Inval, "no")[..],
            &[
                0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0,
                8, // header
                0, 0, 0, 22, 0, 2, b'n', b'o',
            ]
        );
    }

    #[test]
    fn errno_values_are_the_spec_values() {
        let all = [
            (Errno::Perm, 1),
            (Errno::Io, 5),
            (Errno::NoMem, 12),
            (Errno::Inval, 22),
            (Errno::NoSpc, 28),
            (Errno::Overflow, 75),
            (Errno::NotSup, 95),
            (Errno::Shutdown, 108),
        ];
        for (errno, code) in all {
            assert_eq!(errno.code(), code);
            assert!(!errno.message().is_empty());
        }
    }

    #[test]
    fn wire_string_cuts_at_nul_and_4096_on_a_char_boundary() {
        assert_eq!(wire_string("ab\0cd"), "ab");
        let long = "é".repeat(3000); // 6000 bytes, 2 per char
        let cut = wire_string(&long);
        assert_eq!(cut.len(), 4096);
        let odd = format!("x{}", "é".repeat(3000));
        assert_eq!(wire_string(&odd).len(), 4095);
    }
}
