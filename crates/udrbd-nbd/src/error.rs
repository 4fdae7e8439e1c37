//! The two kinds of failure this crate reports (STYLE.md habit 5). A third kind, a bug in this
//! crate, panics.
//!
//! - [`ProtocolError`]: the client broke a MUST of the spec in a way that leaves no reply to
//!   give (bad magic, unknown client flags, an option too long to read). The connection is
//!   finished: [`crate::ServerConnection`] moves to [`crate::Phase::Closed`] and the caller
//!   drops the socket (a hard disconnect, which proto.md allows on a violated MUST).
//! - [`UsageError`]: the caller (the daemon) used the machine wrongly, e.g. completed a request
//!   that is not in flight. The machine's state is unchanged; the input was not taken.
//!
//! Requests that are merely invalid (past the end, unaligned, too long, unknown command) are
//! neither: they get an error reply and the connection stays usable.

/// The client violated the protocol; the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Client flags with a bit we do not know or did not advertise (the spec: the server MUST
    /// drop the connection).
    #[error("client sent unknown client flags {flags:#010x}")]
    UnknownClientFlags {
        /// The 32 bits the client sent.
        flags: u32,
    },
    /// An option header that does not start with `IHAVEOPT`.
    #[error("option header has magic {magic:#018x}, expected IHAVEOPT")]
    BadOptionMagic {
        /// The 64 bits received instead.
        magic: u64,
    },
    /// An option whose data is longer than [`crate::ServerConfig::max_option_length`]; no valid
    /// option comes near it, and reading it would mean buffering what the client dictates.
    #[error("option {option} has {length} bytes of data, more than the limit of {limit}")]
    OptionTooLong {
        /// The option number.
        option: u32,
        /// The length the client announced.
        length: u32,
        /// The configured limit.
        limit: u32,
    },
    /// More options in one negotiation than [`crate::ServerConfig::max_options`].
    #[error("client sent more than {limit} options")]
    TooManyOptions {
        /// The configured limit.
        limit: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` with a name that is not a valid string (not UTF-8, a NUL, or
    /// longer than 4096 bytes). That option cannot be answered with an error, so the session
    /// ends.
    #[error("NBD_OPT_EXPORT_NAME carried an invalid export name")]
    InvalidExportName,
    /// A transmission request that does not start with `NBD_REQUEST_MAGIC`: the stream is out
    /// of sync and nothing after it can be trusted.
    #[error("request has magic {magic:#010x}, expected 0x25609513")]
    BadRequestMagic {
        /// The 32 bits received instead.
        magic: u32,
    },
}

/// The caller used the machine wrongly; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `Input::ExportAnswer` while no export query is pending.
    #[error("no export query is pending")]
    NoExportQuery,
    /// `Input::ExportList` while no list query is pending.
    #[error("no export list query is pending")]
    NoListQuery,
    /// An export (or listed export) whose name is longer than 4096 bytes or contains NUL.
    #[error("export name is longer than 4096 bytes or contains NUL")]
    InvalidExportName,
    /// An export whose size is not a multiple of the 512-byte minimum block size (its tail could
    /// not be addressed).
    #[error("export size {size} is not a multiple of 512")]
    ExportSizeUnaligned {
        /// The size given.
        size: u64,
    },
    /// A completion for a request id that is not in flight.
    #[error("request {id} is not in flight")]
    UnknownRequest {
        /// The id given.
        id: u64,
    },
    /// A completion whose kind does not fit the request: data for a non-read, no data for a
    /// read, or read data of the wrong length.
    #[error("completion of request {id} does not fit it: {what}")]
    CompletionMismatch {
        /// The request id.
        id: u64,
        /// Which rule was broken.
        what: &'static str,
    },
    /// `Input::Sent` reporting more bytes than were handed out in `Output::Send`.
    #[error("{sent} bytes reported sent, but only {unsent} were queued")]
    SentTooMuch {
        /// Bytes reported.
        sent: u64,
        /// Bytes outstanding.
        unsent: u64,
    },
    /// `Input::Received` with more bytes than the receive buffer may hold.
    #[error("{offered} bytes received, but the receive buffer has room for only {room}")]
    ReceiveBufferFull {
        /// Bytes offered.
        offered: usize,
        /// Room left.
        room: usize,
    },
}

/// What [`crate::ServerConnection::handle`] returns on failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The client broke the protocol; the connection is closed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The caller misused the machine; nothing changed.
    #[error(transparent)]
    Usage(#[from] UsageError),
}
