//! Exports as the caller describes them, and the caller's answers to export queries.
//!
//! The machine never decides which exports exist: `NBD_OPT_INFO`, `NBD_OPT_GO` and
//! `NBD_OPT_EXPORT_NAME` become [`crate::Output::ExportQuery`], `NBD_OPT_LIST` becomes
//! [`crate::Output::ListExports`], and the caller answers with [`crate::Input::ExportAnswer`] /
//! [`crate::Input::ExportList`]. That is where the daemon maps the default export `""` to a
//! resource, and where a Secondary refuses with a reason the client prints, e.g.
//! `Refusal::unknown("resource r0 is Secondary: only a Primary serves its device")`.

use crate::wire;

/// The transmission flags the caller may set for an export. Only features this crate
/// implements can be expressed (no DF, FAST_ZERO, CACHE, RESIZE); `NBD_FLAG_HAS_FLAGS` is always
/// sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportFlags {
    /// `NBD_FLAG_READ_ONLY`: writes, trims and write-zeroes get `EPERM`.
    pub read_only: bool,
    /// `NBD_FLAG_SEND_FLUSH`: the client may send `NBD_CMD_FLUSH`.
    pub flush: bool,
    /// `NBD_FLAG_SEND_FUA`: the client may set `NBD_CMD_FLAG_FUA`.
    pub fua: bool,
    /// `NBD_FLAG_ROTATIONAL`: a scheduling hint.
    pub rotational: bool,
    /// `NBD_FLAG_SEND_TRIM`: the client may send `NBD_CMD_TRIM`.
    pub trim: bool,
    /// `NBD_FLAG_SEND_WRITE_ZEROES`: the client may send `NBD_CMD_WRITE_ZEROES` (and NO_HOLE).
    pub write_zeroes: bool,
    /// `NBD_FLAG_CAN_MULTI_CONN`: flush and FUA are visible across all connections.
    pub multi_conn: bool,
}

impl ExportFlags {
    /// Everything a writable block device with a volatile cache offers.
    pub const fn block_device() -> Self {
        ExportFlags {
            read_only: false,
            flush: true,
            fua: true,
            rotational: false,
            trim: true,
            write_zeroes: true,
            multi_conn: true,
        }
    }

    /// The 16 bits sent in `NBD_INFO_EXPORT` and the `NBD_OPT_EXPORT_NAME` reply.
    pub const fn to_wire(self) -> u16 {
        let mut bits = wire::NBD_FLAG_HAS_FLAGS;
        if self.read_only {
            bits |= wire::NBD_FLAG_READ_ONLY;
        }
        if self.flush {
            bits |= wire::NBD_FLAG_SEND_FLUSH;
        }
        if self.fua {
            bits |= wire::NBD_FLAG_SEND_FUA;
        }
        if self.rotational {
            bits |= wire::NBD_FLAG_ROTATIONAL;
        }
        if self.trim {
            bits |= wire::NBD_FLAG_SEND_TRIM;
        }
        if self.write_zeroes {
            bits |= wire::NBD_FLAG_SEND_WRITE_ZEROES;
        }
        if self.multi_conn {
            bits |= wire::NBD_FLAG_CAN_MULTI_CONN;
        }
        bits
    }
}

/// An export the caller agrees to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The canonical name (sent as `NBD_INFO_NAME` when asked; may differ from the name the
    /// client used, e.g. `"r0"` for the default export `""`). At most 4096 bytes, no NUL.
    pub name: String,
    /// Sent as `NBD_INFO_DESCRIPTION` when asked (cut to 4096 bytes).
    pub description: Option<String>,
    /// Size in bytes; a multiple of 512.
    pub size: u64,
    /// What the client may do.
    pub flags: ExportFlags,
}

/// One entry of the reply to `NBD_OPT_LIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportListing {
    /// The export name, as the client would pass it to `NBD_OPT_GO`.
    pub name: String,
    /// Optional human-readable details.
    pub description: Option<String>,
}

/// Which option asked about an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryPurpose {
    /// `NBD_OPT_INFO`: the client only wants details; negotiation continues either way.
    Info,
    /// `NBD_OPT_GO`: on success the connection enters transmission.
    Go,
    /// `NBD_OPT_EXPORT_NAME`: on success the connection enters transmission; a refusal cannot
    /// be explained to the client, the connection is just closed (spec: MUST terminate).
    ExportName,
}

/// The option reply type a refusal is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    /// `NBD_REP_ERR_UNKNOWN`: "the requested export is not available" (unknown, or not served
    /// right now, e.g. the resource is Secondary).
    Unknown,
    /// `NBD_REP_ERR_POLICY`: server policy forbids it.
    Policy,
    /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down; the client must disconnect.
    Shutdown,
}

impl RefusalCode {
    /// The `NBD_REP_ERR_*` value.
    pub const fn reply_type(self) -> u32 {
        match self {
            RefusalCode::Unknown => wire::NBD_REP_ERR_UNKNOWN,
            RefusalCode::Policy => wire::NBD_REP_ERR_POLICY,
            RefusalCode::Shutdown => wire::NBD_REP_ERR_SHUTDOWN,
        }
    }
}

/// A refused export: the code and a message for a human (sent as the error reply's data, cut
/// to 4096 bytes and at the first NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reply type.
    pub code: RefusalCode,
    /// What the client prints.
    pub message: String,
}

impl Refusal {
    /// `NBD_REP_ERR_UNKNOWN` with a message.
    pub fn unknown(message: impl Into<String>) -> Self {
        Refusal {
            code: RefusalCode::Unknown,
            message: message.into(),
        }
    }

    /// `NBD_REP_ERR_POLICY` with a message.
    pub fn policy(message: impl Into<String>) -> Self {
        Refusal {
            code: RefusalCode::Policy,
            message: message.into(),
        }
    }
}

/// The caller's answer to [`crate::Output::ExportQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportAnswer {
    /// Serve this export.
    Serve(Export),
    /// Refuse, with a reason.
    Refuse(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_the_spec_bits() {
        assert_eq!(ExportFlags::default().to_wire(), 0x0001);
        // HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|CAN_MULTI_CONN
        assert_eq!(
            ExportFlags::block_device().to_wire(),
            0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100
        );
        let ro = ExportFlags {
            read_only: true,
            rotational: true,
            ..ExportFlags::default()
        };
        assert_eq!(ro.to_wire(), 0x0001 | 0x0002 | 0x0010);
    }

    #[test]
    fn refusal_codes() {
        assert_eq!(RefusalCode::Unknown.reply_type(), 0x8000_0006);
        assert_eq!(RefusalCode::Policy.reply_type(), 0x8000_0002);
        assert_eq!(RefusalCode::Shutdown.reply_type(), 0x8000_0007);
    }
}
