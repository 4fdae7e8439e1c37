//! [`ServerConnection`]: one NBD server connection, from greeting to close, as a sans-IO state
//! machine.
//!
//! ```text
//!            greeting sent by new()
//!                  |
//!   ClientFlags --4 bytes--> Options <-------------------------------------+
//!                             |  INFO/GO/EXPORT_NAME: Output::ExportQuery   |
//!                             +-----> AwaitExport --Input::ExportAnswer-----+ (INFO, refused GO)
//!                             |  LIST: Output::ListExports                  |
//!                             +-----> AwaitList --Input::ExportList---------+
//!                             |  ABORT: ACK, Output::Close(Aborted)
//!                             |                       GO / EXPORT_NAME served
//!                             +--------------------------------------------> Transmission
//!   Transmission --NBD_CMD_DISC--> Draining --last completion--> Closed (Output::Close)
//!   any phase --ProtocolError--> Closed (the error is returned from handle)
//! ```
//!
//! # Invariants (checked by [`ServerConnection::invariants`])
//!
//! - At most `max_outstanding` requests are in flight, and only in Transmission or Draining.
//! - The receive buffer never holds more than [`ServerConnection::receive_limit`] bytes.
//! - Bytes of a rejected WRITE are skipped as they arrive, never buffered (`skip_bytes`); its
//!   error reply goes out when the last of them is gone (`skip_reply`).
//! - Every `Output::Send` not yet reported by `Input::Sent` is counted in `unsent_bytes`.
//! - An export is bound exactly in Transmission and Draining.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{HandleError, ProtocolError, UsageError};
use crate::export::{Export, ExportAnswer, ExportListing, QueryPurpose};
use crate::handshake::{self, InfoRequest};
use crate::request::{self, BlockRequest, Completion, Op, RequestId, Verdict};
use crate::wire::{self, Cookie, Errno, RequestHeader};

/// Bytes a caller may have read beyond the largest frame when it stops reading on
/// `receive_window() == 0`; one socket read of that size always fits.
pub const RECEIVE_SLACK: usize = 1 << 20;

/// How much room [`ServerConnection::receive_buffer`] makes at a time.
const RECEIVE_CHUNK: usize = 256 * 1024;

/// WRITE payloads at least this long are received into a buffer of their own whose payload
/// starts on an [`PAYLOAD_ALIGN`] boundary (so the caller can hand them to O_DIRECT IO as they
/// are).
const ALIGN_MIN: usize = 64 * 1024;

/// The alignment of large WRITE payloads (a page; O_DIRECT needs at most the logical block).
pub const PAYLOAD_ALIGN: usize = 4096;

/// Limits of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Requests handed to the caller and not yet completed. When reached, the machine decodes
    /// no further requests (and `receive_window()` is 0) until a completion arrives.
    pub max_outstanding: u32,
    /// Reply bytes handed out in `Output::Send` and not yet reported by `Input::Sent`. When
    /// reached, the machine decodes nothing more, so a client that does not read its replies
    /// cannot make the server queue without bound.
    pub max_unsent_bytes: u64,
    /// The longest option data accepted; a longer option closes the connection. The longest
    /// valid option here is `NBD_OPT_GO` with a 4096-byte name and a few info requests.
    pub max_option_length: u32,
    /// Options accepted in one negotiation; more closes the connection.
    pub max_options: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_outstanding: 64,
            max_unsent_bytes: 64 << 20,
            max_option_length: 64 << 10,
            max_options: 1024,
        }
    }
}

/// Bytes for the socket, in two segments so that a READ's data is sent from the caller's
/// buffer without a copy: `head` (a header) then `payload` (empty for most replies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Header bytes (or a whole handshake message).
    pub head: Bytes,
    /// Data that follows `head`, shared with the completion that produced it.
    pub payload: Bytes,
}

impl Transmit {
    /// Total bytes.
    pub fn len(&self) -> u64 {
        (self.head.len() + self.payload.len()) as u64
    }

    /// Whether there is nothing to send (never true for what the machine emits).
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.payload.is_empty()
    }

    /// The bytes, concatenated (a copy; for tests and logs).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.head.len() + self.payload.len());
        all.extend_from_slice(&self.head);
        all.extend_from_slice(&self.payload);
        all
    }
}

/// Why the connection ends without a protocol error. Send every `Output::Send` queued before
/// this, then close the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `NBD_OPT_ABORT` (acknowledged).
    Aborted,
    /// The client sent `NBD_CMD_DISC` and every request before it has been replied to.
    Disconnected,
    /// The caller refused the export of `NBD_OPT_EXPORT_NAME`, which has no error reply.
    ExportRefused,
}

/// What the caller feeds in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Bytes read from the socket, cut anywhere.
    Received(&'a [u8]),
    /// This many bytes were read from the socket straight into
    /// [`ServerConnection::receive_buffer`] (appended, nothing else changed).
    Appended(usize),
    /// The socket took this many bytes of the `Output::Send`s, in order.
    Sent(u64),
    /// The answer to the pending `Output::ExportQuery`.
    ExportAnswer(ExportAnswer),
    /// The answer to the pending `Output::ListExports`.
    ExportList(Vec<ExportListing>),
    /// The result of a `BlockRequest`.
    Completion {
        /// The request's id.
        id: RequestId,
        /// Its result.
        result: Completion,
    },
}

/// What the machine asks of the caller, in the order it must happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the socket, after all earlier ones.
    Send(Transmit),
    /// Which export is `name`? Answer with `Input::ExportAnswer` (nothing else is decoded
    /// until then).
    ExportQuery {
        /// The name the client asked for (`""` is the default export).
        name: String,
        /// Which option asked.
        purpose: QueryPurpose,
    },
    /// Which exports exist? Answer with `Input::ExportList`.
    ListExports,
    /// Negotiation is over: the connection now serves `export`.
    Transmission {
        /// The export as the caller described it.
        export: Export,
        /// Whether READ replies are structured (`NBD_OPT_STRUCTURED_REPLY` was acknowledged).
        structured_replies: bool,
    },
    /// Execute this on the block device, then send `Input::Completion`.
    Request(BlockRequest),
    /// Flush the queued sends, then close the socket.
    Close(CloseReason),
}

/// The coarse phase of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Greeting and option haggling.
    Handshake,
    /// Requests and replies.
    Transmission,
    /// `NBD_CMD_DISC` received; waiting for the requests in flight.
    Draining,
    /// Finished; drop the connection once the queued output is handled.
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    AwaitExport {
        option: u32,
        purpose: QueryPurpose,
        request: InfoRequest,
    },
    AwaitList,
    Transmission,
    Draining,
    Closed,
}

/// The error reply of a rejected WRITE, sent once its data has been skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SkipReply {
    cookie: Cookie,
    errno: Errno,
    message: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    cookie: Cookie,
    /// `(offset, len)` of a READ, which needs data of that length.
    read: Option<(u64, u32)>,
}

/// One NBD server connection.
///
/// # Call order
///
/// 1. `new(config)` queues the greeting; drain `poll_output()`.
/// 2. Whenever `receive_window() > 0`, read at most that many bytes from the socket and pass
///    them as `Input::Received`, or read them straight into `receive_buffer()` and report them
///    with `Input::Appended` (no copy). Report socket writes with `Input::Sent`.
/// 3. After every `handle`, drain `poll_output()` completely and act on each output in order:
///    send bytes, answer queries (at once or later), execute requests (in any order, with any
///    parallelism) and later report their completions.
/// 4. On `Err(HandleError::Protocol(_))` or `Output::Close`, close the socket (after the sends
///    queued before the `Close`).
///
/// # Durability contract
///
/// The machine replies to a request only when the caller completes it. So the caller must not
/// complete a FUA write/trim/write-zeroes before its data is durable, nor a flush before every
/// write completed before the flush arrived is durable (proto.md "Ordering of messages and
/// writes"). Replies may go out in any order; the client matches them by cookie.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    state: State,
    input: BytesMut,
    output: VecDeque<Output>,
    unsent_bytes: u64,
    options_seen: u32,
    client_no_zeroes: bool,
    structured_replies: bool,
    export: Option<Export>,
    skip_bytes: u64,
    skip_reply: Option<SkipReply>,
    in_flight: BTreeMap<RequestId, InFlight>,
    next_request_id: u64,
    /// `input.len()` after the last input: `Input::Appended` must add to exactly this.
    settled_len: usize,
    /// The frame size of a large WRITE whose payload is being received (aligned).
    large_frame: Option<usize>,
    /// A large WRITE was just taken out with nothing behind it: read the next header alone.
    header_next: bool,
}

impl ServerConnection {
    /// A new connection; the greeting is the first output.
    ///
    /// # Panics
    ///
    /// If `max_outstanding`, `max_unsent_bytes` or `max_options` is 0 (nothing could ever be
    /// done), or `max_option_length` is below the 4106 bytes a valid `NBD_OPT_GO` may need.
    pub fn new(config: ServerConfig) -> Self {
        assert!(
            config.max_outstanding > 0,
            "max_outstanding must be at least 1"
        );
        assert!(
            config.max_unsent_bytes > 0,
            "max_unsent_bytes must be at least 1"
        );
        assert!(config.max_options > 0, "max_options must be at least 1");
        assert!(
            config.max_option_length >= 4 + 4096 + 2 + 8,
            "max_option_length too small for NBD_OPT_GO"
        );
        let mut connection = ServerConnection {
            config,
            state: State::ClientFlags,
            input: BytesMut::new(),
            output: VecDeque::new(),
            unsent_bytes: 0,
            options_seen: 0,
            client_no_zeroes: false,
            structured_replies: false,
            export: None,
            skip_bytes: 0,
            skip_reply: None,
            in_flight: BTreeMap::new(),
            next_request_id: 0,
            settled_len: 0,
            large_frame: None,
            header_next: false,
        };
        connection.send(wire::encode_greeting(), Bytes::new());
        connection
    }

    /// Feeds one input; then drain [`ServerConnection::poll_output`]. A protocol error closes
    /// the connection (all queued output is dropped: it is a hard disconnect); a usage error
    /// changes nothing. After close, every input is accepted and ignored.
    pub fn handle(&mut self, input: Input<'_>) -> Result<(), HandleError> {
        if self.state == State::Closed {
            return Ok(());
        }
        match input {
            Input::Received(bytes) => self.receive(bytes)?,
            Input::Appended(n) => self.appended(n)?,
            Input::Sent(n) => self.sent(n)?,
            Input::ExportAnswer(answer) => self.answer_export(answer)?,
            Input::ExportList(exports) => self.answer_list(exports)?,
            Input::Completion { id, result } => self.complete(id, result)?,
        }
        let processed = self.process();
        self.settled_len = self.input.len();
        if let Err(error) = processed {
            self.fail();
            return Err(error.into());
        }
        Ok(())
    }

    /// The receive buffer, to read into straight from the socket: append at most what the
    /// returned [`bytes::buf::Limit`] allows (never more than `receive_window()`, and room
    /// that is already allocated), then report it with `Input::Appended`. Appending nothing is
    /// fine. Large WRITE payloads land in a buffer of their own, aligned to [`PAYLOAD_ALIGN`],
    /// and come out of it without a copy.
    pub fn receive_buffer(&mut self) -> bytes::buf::Limit<&mut BytesMut> {
        let want = self.preferred_read();
        if self.input.capacity() - self.input.len() < want.min(RECEIVE_CHUNK / 4) {
            self.input
                .reserve(RECEIVE_CHUNK.min(want).max(RECEIVE_CHUNK / 4));
        }
        let room = (self.input.capacity() - self.input.len()).min(want);
        bytes::BufMut::limit(&mut self.input, room)
    }

    /// How many bytes the next read should ask for at most: `receive_window()`, less while a
    /// large WRITE payload is being received (exactly its rest) or right after one (one
    /// request header, so that a large payload behind it starts a buffer of its own rather
    /// than being copied there).
    pub fn preferred_read(&self) -> usize {
        let window = self.receive_window();
        if let Some(frame) = self.large_frame {
            return window.min(frame.saturating_sub(self.input.len()).max(1));
        }
        if self.header_next && self.input.len() < wire::REQUEST_HEADER_LEN {
            return window.min(wire::REQUEST_HEADER_LEN - self.input.len());
        }
        window
    }

    /// The next thing for the caller to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.output.pop_front()
    }

    /// How many bytes the caller may pass in the next `Input::Received`: 0 while the machine
    /// waits for the caller (an export answer, completions when `max_outstanding` requests are
    /// in flight, `Input::Sent` when `max_unsent_bytes` are queued) or is finished. This is the
    /// back-pressure: stop reading the socket while it is 0.
    pub fn receive_window(&self) -> usize {
        if self.waits_for_caller() {
            return 0;
        }
        self.receive_limit() - self.input.len()
    }

    /// The most bytes the receive buffer holds: one largest frame (a 32 MiB WRITE or the
    /// longest option) plus [`RECEIVE_SLACK`].
    pub fn receive_limit(&self) -> usize {
        let write_frame = wire::REQUEST_HEADER_LEN + wire::MAX_BLOCK_SIZE as usize;
        let option_frame = 16 + self.config.max_option_length as usize;
        write_frame.max(option_frame) + RECEIVE_SLACK
    }

    /// The coarse phase.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::ClientFlags | State::Options | State::AwaitExport { .. } | State::AwaitList => {
                Phase::Handshake
            }
            State::Transmission => Phase::Transmission,
            State::Draining => Phase::Draining,
            State::Closed => Phase::Closed,
        }
    }

    /// The export being served (Transmission and Draining).
    pub fn export(&self) -> Option<&Export> {
        self.export.as_ref()
    }

    /// Whether structured replies were negotiated.
    pub fn structured_replies(&self) -> bool {
        self.structured_replies
    }

    /// Requests handed out and not completed.
    pub fn outstanding(&self) -> usize {
        self.in_flight.len()
    }

    /// Bytes handed out in `Output::Send` and not yet reported sent.
    pub fn unsent_bytes(&self) -> u64 {
        self.unsent_bytes
    }

    /// Panics if an invariant of the module docs does not hold.
    pub fn invariants(&self) {
        assert!(
            self.in_flight.len() <= self.config.max_outstanding as usize,
            "too many requests in flight"
        );
        assert!(
            self.input.len() <= self.receive_limit(),
            "receive buffer over its limit"
        );
        let serving = matches!(self.state, State::Transmission | State::Draining);
        assert_eq!(
            self.export.is_some(),
            serving,
            "an export is bound exactly while serving"
        );
        if !serving {
            assert!(
                self.in_flight.is_empty(),
                "requests in flight outside transmission"
            );
        }
        if self.skip_bytes > 0 {
            assert_eq!(
                self.state,
                State::Transmission,
                "skipping WRITE data outside transmission"
            );
        }
        assert_eq!(
            self.skip_bytes > 0,
            self.skip_reply.is_some(),
            "a skipped WRITE is answered once skipped"
        );
        if matches!(self.state, State::Draining | State::Closed) {
            assert!(
                self.input.is_empty(),
                "input kept after the client said goodbye"
            );
        }
        let queued: u64 = self
            .output
            .iter()
            .map(|o| if let Output::Send(t) = o { t.len() } else { 0 })
            .sum();
        assert!(
            queued <= self.unsent_bytes,
            "queued sends are not counted as unsent"
        );
        if let Some((last, _)) = self.in_flight.last_key_value() {
            assert!(last.0 < self.next_request_id, "request id from the future");
        }
    }

    // ---- inputs ---------------------------------------------------------------------------

    fn receive(&mut self, bytes: &[u8]) -> Result<(), UsageError> {
        let room = self.receive_limit() - self.input.len();
        if bytes.len() > room {
            return Err(UsageError::ReceiveBufferFull {
                offered: bytes.len(),
                room,
            });
        }
        self.input.extend_from_slice(bytes);
        Ok(())
    }

    fn appended(&mut self, n: usize) -> Result<(), UsageError> {
        let room = self.receive_limit().saturating_sub(self.settled_len);
        if self.input.len() != self.settled_len + n || n > room {
            return Err(UsageError::ReceiveBufferFull { offered: n, room });
        }
        Ok(())
    }

    fn sent(&mut self, n: u64) -> Result<(), UsageError> {
        if n > self.unsent_bytes {
            return Err(UsageError::SentTooMuch {
                sent: n,
                unsent: self.unsent_bytes,
            });
        }
        self.unsent_bytes -= n;
        Ok(())
    }

    fn answer_export(&mut self, answer: ExportAnswer) -> Result<(), UsageError> {
        let State::AwaitExport {
            option, purpose, ..
        } = self.state
        else {
            return Err(UsageError::NoExportQuery);
        };
        if let ExportAnswer::Serve(export) = &answer {
            check_export(export)?;
        }
        let State::AwaitExport { request, .. } = std::mem::replace(&mut self.state, State::Options)
        else {
            unreachable!("checked above");
        };
        match (answer, purpose) {
            (ExportAnswer::Serve(export), QueryPurpose::ExportName) => {
                let reply = wire::encode_export_name_reply(
                    export.size,
                    export.flags.to_wire(),
                    self.client_no_zeroes,
                );
                self.send(reply, Bytes::new());
                self.enter_transmission(export);
            }
            (ExportAnswer::Serve(export), QueryPurpose::Info | QueryPurpose::Go) => {
                for reply in handshake::info_replies(option, &request, &export) {
                    self.send(reply, Bytes::new());
                }
                if purpose == QueryPurpose::Go {
                    self.enter_transmission(export);
                }
            }
            (ExportAnswer::Refuse(_), QueryPurpose::ExportName) => {
                self.close(CloseReason::ExportRefused)
            }
            (ExportAnswer::Refuse(refusal), QueryPurpose::Info | QueryPurpose::Go) => {
                let message = wire::wire_string(&refusal.message);
                let reply = wire::encode_option_reply(
                    option,
                    refusal.code.reply_type(),
                    message.as_bytes(),
                );
                self.send(reply, Bytes::new());
            }
        }
        Ok(())
    }

    fn answer_list(&mut self, exports: Vec<ExportListing>) -> Result<(), UsageError> {
        if self.state != State::AwaitList {
            return Err(UsageError::NoListQuery);
        }
        if exports.iter().any(|e| !wire::is_valid_name(&e.name)) {
            return Err(UsageError::InvalidExportName);
        }
        for listing in &exports {
            let description = listing.description.as_deref().map(wire::wire_string);
            self.send(
                wire::encode_rep_server(&listing.name, description),
                Bytes::new(),
            );
        }
        self.send(
            wire::encode_option_reply(wire::NBD_OPT_LIST, wire::NBD_REP_ACK, &[]),
            Bytes::new(),
        );
        self.state = State::Options;
        Ok(())
    }

    fn complete(&mut self, id: RequestId, result: Completion) -> Result<(), UsageError> {
        let Some(entry) = self.in_flight.get(&id).copied() else {
            return Err(UsageError::UnknownRequest { id: id.0 });
        };
        let mismatch = |what| UsageError::CompletionMismatch { id: id.0, what };
        match (&result, entry.read) {
            (Completion::Data(data), Some((_, len))) if data.len() != len as usize => {
                return Err(mismatch("read data length differs from the request"));
            }
            (Completion::Data(_), None) => {
                return Err(mismatch("data for a request that is not a read"));
            }
            (Completion::Done, Some(_)) => return Err(mismatch("a read completed without data")),
            _ => {}
        }
        self.in_flight.remove(&id);
        match result {
            Completion::Done => self.reply_ok(entry.cookie, None),
            Completion::Data(data) => {
                self.reply_ok(entry.cookie, entry.read.map(|(offset, _)| (offset, data)))
            }
            Completion::Error(errno) => self.reply_error(entry.cookie, errno, errno.message()),
        }
        if self.state == State::Draining {
            self.finish_drain();
        }
        Ok(())
    }

    // ---- decoding ---------------------------------------------------------------------------

    /// Decodes as much buffered input as the state allows.
    fn process(&mut self) -> Result<(), ProtocolError> {
        while self.step()? {}
        Ok(())
    }

    /// One frame (or one piece of skipped data); `Ok(false)` when nothing more can be done now.
    fn step(&mut self) -> Result<bool, ProtocolError> {
        match self.state {
            State::ClientFlags => self.step_client_flags(),
            State::Options => self.step_option(),
            State::Transmission => self.step_request(),
            State::AwaitExport { .. } | State::AwaitList => Ok(false),
            State::Draining | State::Closed => {
                // The client MUST NOT send anything after NBD_CMD_DISC; drop it.
                self.input.clear();
                Ok(false)
            }
        }
    }

    fn waits_for_caller(&self) -> bool {
        match self.state {
            State::AwaitExport { .. } | State::AwaitList | State::Draining | State::Closed => true,
            State::ClientFlags => false,
            State::Options => self.send_blocked(),
            State::Transmission => {
                self.skip_bytes == 0 && (self.send_blocked() || self.requests_blocked())
            }
        }
    }

    fn send_blocked(&self) -> bool {
        self.unsent_bytes >= self.config.max_unsent_bytes
    }

    fn requests_blocked(&self) -> bool {
        self.in_flight.len() >= self.config.max_outstanding as usize
    }

    fn step_client_flags(&mut self) -> Result<bool, ProtocolError> {
        if self.input.len() < 4 {
            return Ok(false);
        }
        let flags = self.input.get_u32();
        if flags & !wire::KNOWN_CLIENT_FLAGS != 0 {
            return Err(ProtocolError::UnknownClientFlags { flags });
        }
        // A client without C_FIXED_NEWSTYLE is still served fixed newstyle replies (the spec
        // allows honouring it); such a client only ever sends NBD_OPT_EXPORT_NAME anyway.
        self.client_no_zeroes = flags & wire::NBD_FLAG_C_NO_ZEROES != 0;
        self.state = State::Options;
        Ok(true)
    }

    fn step_option(&mut self) -> Result<bool, ProtocolError> {
        if self.send_blocked() || self.input.len() < 16 {
            return Ok(false);
        }
        let magic = wire::be_u64(&self.input[0..8]);
        if magic != wire::IHAVEOPT {
            return Err(ProtocolError::BadOptionMagic { magic });
        }
        let option = wire::be_u32(&self.input[8..12]);
        let length = wire::be_u32(&self.input[12..16]);
        if length > self.config.max_option_length {
            return Err(ProtocolError::OptionTooLong {
                option,
                length,
                limit: self.config.max_option_length,
            });
        }
        if self.options_seen >= self.config.max_options {
            return Err(ProtocolError::TooManyOptions {
                limit: self.config.max_options,
            });
        }
        let frame = 16 + length as usize;
        if self.input.len() < frame {
            self.input.reserve(frame - self.input.len());
            return Ok(false);
        }
        self.input.advance(16);
        let data = self.input.split_to(length as usize).freeze();
        self.options_seen += 1;
        self.dispatch_option(option, &data)?;
        Ok(true)
    }

    fn dispatch_option(&mut self, option: u32, data: &[u8]) -> Result<(), ProtocolError> {
        match option {
            wire::NBD_OPT_EXPORT_NAME => {
                let name =
                    handshake::parse_name(data).map_err(|_| ProtocolError::InvalidExportName)?;
                let request = InfoRequest {
                    name: name.clone(),
                    wants_name: false,
                    wants_description: false,
                };
                self.query_export(option, QueryPurpose::ExportName, request);
            }
            wire::NBD_OPT_ABORT => {
                // Data is to be ignored, not rejected.
                self.send(
                    wire::encode_option_reply(option, wire::NBD_REP_ACK, &[]),
                    Bytes::new(),
                );
                self.close(CloseReason::Aborted);
            }
            wire::NBD_OPT_LIST if data.is_empty() => {
                self.state = State::AwaitList;
                self.output.push_back(Output::ListExports);
            }
            wire::NBD_OPT_INFO | wire::NBD_OPT_GO => match handshake::parse_info_request(data) {
                Ok(request) => {
                    let purpose = if option == wire::NBD_OPT_GO {
                        QueryPurpose::Go
                    } else {
                        QueryPurpose::Info
                    };
                    self.query_export(option, purpose, request);
                }
                Err(message) => self.option_error(option, wire::NBD_REP_ERR_INVALID, message),
            },
            wire::NBD_OPT_STRUCTURED_REPLY if data.is_empty() => {
                self.structured_replies = true;
                self.send(
                    wire::encode_option_reply(option, wire::NBD_REP_ACK, &[]),
                    Bytes::new(),
                );
            }
            wire::NBD_OPT_LIST | wire::NBD_OPT_STRUCTURED_REPLY => {
                self.option_error(
                    option,
                    wire::NBD_REP_ERR_INVALID,
                    "this option takes no data",
                );
            }
            _ => self.option_error(
                option,
                wire::NBD_REP_ERR_UNSUP,
                "option not supported by this server",
            ),
        }
        Ok(())
    }

    fn query_export(&mut self, option: u32, purpose: QueryPurpose, request: InfoRequest) {
        let name = request.name.clone();
        self.state = State::AwaitExport {
            option,
            purpose,
            request,
        };
        self.output.push_back(Output::ExportQuery { name, purpose });
    }

    fn option_error(&mut self, option: u32, reply_type: u32, message: &str) {
        self.send(
            wire::encode_option_reply(option, reply_type, message.as_bytes()),
            Bytes::new(),
        );
    }

    fn step_request(&mut self) -> Result<bool, ProtocolError> {
        if self.skip_bytes > 0 {
            let n = self
                .input
                .len()
                .min(usize::try_from(self.skip_bytes).unwrap_or(usize::MAX));
            self.input.advance(n);
            self.skip_bytes -= n as u64;
            if self.skip_bytes > 0 {
                return Ok(false);
            }
            let reply = self
                .skip_reply
                .take()
                .expect("a skipped WRITE has its reply waiting");
            self.reply_error(reply.cookie, reply.errno, reply.message);
            return Ok(true);
        }
        if self.send_blocked()
            || self.requests_blocked()
            || self.input.len() < wire::REQUEST_HEADER_LEN
        {
            return Ok(false);
        }
        let mut raw = [0u8; wire::REQUEST_HEADER_LEN];
        raw.copy_from_slice(&self.input[..wire::REQUEST_HEADER_LEN]);
        let header = RequestHeader::decode(&raw)
            .map_err(|magic| ProtocolError::BadRequestMagic { magic })?;
        let export = self
            .export
            .as_ref()
            .expect("an export is bound in transmission");
        match request::validate(&header, export.size, export.flags) {
            Verdict::Disconnect => {
                self.input.clear();
                self.state = State::Draining;
                self.finish_drain();
            }
            Verdict::Reject { errno, message } => {
                self.input.advance(wire::REQUEST_HEADER_LEN);
                if header.command == wire::NBD_CMD_WRITE && header.length > 0 {
                    // The data follows whatever we think of the header: stream it away, and
                    // reply once it is gone. Clients (libnbd) do not expect a reply to a
                    // request they are still sending.
                    self.skip_bytes = u64::from(header.length);
                    self.skip_reply = Some(SkipReply {
                        cookie: header.cookie,
                        errno,
                        message,
                    });
                } else {
                    self.reply_error(header.cookie, errno, message);
                }
            }
            Verdict::Trivial => {
                self.input.advance(wire::REQUEST_HEADER_LEN);
                let empty_read =
                    (header.command == wire::NBD_CMD_READ).then(|| (header.offset, Bytes::new()));
                self.reply_ok(header.cookie, empty_read);
            }
            Verdict::Accept(op) => return Ok(self.accept(&header, op)),
        }
        Ok(true)
    }

    /// Hands an accepted request to the caller; `false` if a WRITE's data is not all here yet.
    fn accept(&mut self, header: &RequestHeader, op: Op) -> bool {
        let op = match op {
            Op::Write { offset, fua, .. } => {
                let frame = wire::REQUEST_HEADER_LEN + header.length as usize;
                if self.input.len() < frame {
                    if header.length as usize >= ALIGN_MIN {
                        self.align_large_payload(frame);
                    } else {
                        self.input.reserve(frame - self.input.len());
                    }
                    return false;
                }
                self.large_frame = None;
                self.header_next = header.length as usize >= ALIGN_MIN;
                self.input.advance(wire::REQUEST_HEADER_LEN);
                let data = self.input.split_to(header.length as usize).freeze();
                Op::Write { offset, data, fua }
            }
            other => {
                self.header_next = false;
                self.input.advance(wire::REQUEST_HEADER_LEN);
                other
            }
        };
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        let read = match op {
            Op::Read { offset, len } => Some((offset, len)),
            _ => None,
        };
        self.in_flight.insert(
            id,
            InFlight {
                cookie: header.cookie,
                read,
            },
        );
        self.output.push_back(Output::Request(BlockRequest {
            id,
            cookie: header.cookie,
            op,
        }));
        true
    }

    /// Moves the start of a large WRITE frame (its header and what arrived of its payload)
    /// into a buffer of its own with room for the whole frame and the payload aligned, unless
    /// it is there already. The copy is of what arrived so far only: after a large WRITE the
    /// caller reads just the next header (`preferred_read`), so usually that is the header.
    fn align_large_payload(&mut self, frame: usize) {
        self.large_frame = Some(frame);
        let payload = self.input.as_ptr() as usize + wire::REQUEST_HEADER_LEN;
        if payload.is_multiple_of(PAYLOAD_ALIGN) && self.input.capacity() >= frame {
            return;
        }
        let mut fresh = BytesMut::with_capacity(frame + PAYLOAD_ALIGN);
        let start = fresh.as_ptr() as usize + wire::REQUEST_HEADER_LEN;
        let pad = (PAYLOAD_ALIGN - start % PAYLOAD_ALIGN) % PAYLOAD_ALIGN;
        fresh.resize(pad, 0);
        fresh.advance(pad);
        fresh.extend_from_slice(&self.input);
        self.input = fresh;
    }

    // ---- outputs ----------------------------------------------------------------------------

    fn send(&mut self, head: Bytes, payload: Bytes) {
        let transmit = Transmit { head, payload };
        self.unsent_bytes += transmit.len();
        self.output.push_back(Output::Send(transmit));
    }

    /// A successful reply; `read` is `(offset, data)` for a READ.
    fn reply_ok(&mut self, cookie: Cookie, read: Option<(u64, Bytes)>) {
        match read {
            Some((offset, data)) if self.structured_replies && !data.is_empty() => {
                let len = u32::try_from(data.len()).expect("reads are at most 32 MiB");
                self.send(wire::encode_structured_read_head(cookie, offset, len), data);
            }
            Some((_, data)) if !self.structured_replies => {
                self.send(wire::encode_simple_reply(0, cookie), data)
            }
            _ if self.structured_replies => {
                self.send(wire::encode_structured_none(cookie), Bytes::new())
            }
            _ => self.send(wire::encode_simple_reply(0, cookie), Bytes::new()),
        }
    }

    /// An error reply: structured (with `message`) if negotiated, else simple without data.
    fn reply_error(&mut self, cookie: Cookie, errno: Errno, message: &str) {
        let head = if self.structured_replies {
            wire::encode_structured_error(cookie, errno, message)
        } else {
            wire::encode_simple_reply(errno.code(), cookie)
        };
        self.send(head, Bytes::new());
    }

    fn enter_transmission(&mut self, export: Export) {
        self.state = State::Transmission;
        self.export = Some(export.clone());
        self.output.push_back(Output::Transmission {
            export,
            structured_replies: self.structured_replies,
        });
    }

    fn finish_drain(&mut self) {
        debug_assert_eq!(self.state, State::Draining);
        if self.in_flight.is_empty() {
            self.export = None;
            self.close(CloseReason::Disconnected);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.input.clear();
        self.skip_bytes = 0;
        self.skip_reply = None;
        self.output.push_back(Output::Close(reason));
    }

    /// A protocol error: hard disconnect, nothing more goes out.
    fn fail(&mut self) {
        self.state = State::Closed;
        self.input.clear();
        self.output.clear();
        self.unsent_bytes = 0;
        self.in_flight.clear();
        self.export = None;
        self.skip_bytes = 0;
        self.skip_reply = None;
    }
}

fn check_export(export: &Export) -> Result<(), UsageError> {
    if !wire::is_valid_name(&export.name) {
        return Err(UsageError::InvalidExportName);
    }
    if !export.size.is_multiple_of(u64::from(wire::MIN_BLOCK_SIZE)) {
        return Err(UsageError::ExportSizeUnaligned { size: export.size });
    }
    Ok(())
}
