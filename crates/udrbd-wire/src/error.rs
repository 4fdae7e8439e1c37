//! Typed errors. A decode error means the peer misbehaved: the caller drops the connection
//! (DRBD goes to ProtocolError / NetworkFailure). An encode error means the caller asked for a
//! packet the peer would reject; the engine treats it as a bug. No error carries a `String`.

use crate::command::{Command, Expected};
use crate::header::HeaderFormat;
use crate::state::StateField;

/// Why received bytes are not a valid packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header does not start with the magic of the header format in use (garbage, or a
    /// peer that uses a different protocol version).
    #[error("bad magic {found:#010x} for {format} headers")]
    BadMagic {
        /// The first four bytes, big-endian.
        found: u32,
        /// The format the connection uses.
        format: HeaderFormat,
    },
    /// The pad word of an h100 header is not zero.
    #[error("h100 header pad is {pad:#010x}, must be 0")]
    HeaderPadNotZero {
        /// The pad word.
        pad: u32,
    },
    /// A command below P_MAY_IGNORE that 8.4 does not know.
    #[error("unknown command {command:#06x} (below P_MAY_IGNORE, not skippable)")]
    UnknownCommand {
        /// The command number.
        command: u16,
    },
    /// A known command with a payload length DRBD does not accept.
    #[error("{command} with a payload of {length} bytes, expected {expected}")]
    BadLength {
        /// The command.
        command: Command,
        /// The length from the header.
        length: u32,
        /// What the command allows.
        expected: Expected,
    },
    /// A skippable unknown command whose payload is larger than we buffer.
    #[error("skippable command {command:#06x} with a payload of {length} bytes, at most {max}")]
    IgnoredTooLong {
        /// The command number.
        command: u16,
        /// The length from the header.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// A state word with an undefined value in one of its fields.
    #[error("state word {word:#010x}: {field} has no value {value}")]
    BadStateWord {
        /// The word.
        word: u32,
        /// The offending field.
        field: StateField,
        /// Its value.
        value: u32,
    },
    /// A field that holds an enumeration has an undefined value.
    #[error("{command}: {field} has no value {value}")]
    BadValue {
        /// The command.
        command: Command,
        /// The field's name in DRBD's struct.
        field: &'static str,
        /// The value received.
        value: u32,
    },
    /// An algorithm name is not a NUL-terminated string of at most 63 bytes.
    #[error("{command}: {field} is not a NUL-terminated name")]
    BadAlgName {
        /// The command.
        command: Command,
        /// The field's name in DRBD's struct.
        field: &'static str,
    },
    /// P_COMPRESSED_BITMAP with an encoding other than RLE_VLI_Bits (2).
    #[error("P_COMPRESSED_BITMAP with encoding {code}, only RLE_VLI_Bits (2) exists")]
    UnknownBitmapEncoding {
        /// Bits 0-3 of the encoding byte.
        code: u8,
    },
}

/// Why a packet cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload does not fit the length field of the header format.
    #[error(
        "command {command:#06x} with a payload of {length} bytes does not fit {format} headers"
    )]
    TooLongForHeader {
        /// The command number.
        command: u16,
        /// The payload length.
        length: u64,
        /// The header format.
        format: HeaderFormat,
    },
    /// Only h100 carries a volume number.
    #[error("volume {volume} needs h100 headers")]
    VolumeNeedsLongHeader {
        /// The volume.
        volume: u16,
    },
    /// The packet would be rejected by the receiver for its length.
    #[error("{command} with a payload of {length} bytes, the receiver expects {expected}")]
    BadLength {
        /// The command.
        command: Command,
        /// The payload length.
        length: u64,
        /// What the receiver allows.
        expected: Expected,
    },
    /// A skippable command is sent by whoever made it, never by this crate.
    #[error("command {command:#06x} is not known, so it cannot be encoded")]
    UnknownCommand {
        /// The command number.
        command: u16,
    },
}

/// A value does not fit its wire field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A digest longer than any hash DRBD knows.
    #[error("digest of {len} bytes, at most 64")]
    DigestTooLong {
        /// Its length.
        len: usize,
    },
    /// An algorithm name longer than 63 bytes or containing a NUL.
    #[error("algorithm name of {len} bytes: at most 63, no NUL")]
    BadAlgName {
        /// Its length.
        len: usize,
    },
}
