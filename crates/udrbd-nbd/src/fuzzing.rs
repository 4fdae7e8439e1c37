//! The checks of the `nbd_server` cargo-fuzz target (`fuzz/fuzz_targets/nbd_server.rs`), shared
//! with the stable replay of its corpus (`tests/fuzz_corpus.rs`) so the two cannot drift apart.
//! Not part of the protocol API.
//!
//! A [`ServerConnection`] is driven as the daemon drives it, by a client that sends the
//! fuzzer's bytes. The first byte sets up the driver:
//!
//! | bits | meaning                                                                       |
//! |------|-------------------------------------------------------------------------------|
//! | 0-3  | the stream is cut into pieces of `7 x n + 1` bytes (and never more than the    |
//! |      | receive window)                                                               |
//! | 4    | a valid negotiation (`NBD_OPT_GO` of the default export) comes first, so the  |
//! |      | rest of the bytes reach the transmission phase                                |
//! | 5    | that negotiation also asks for structured replies                             |
//! | 6    | bytes are read straight into `receive_buffer()` (`Input::Appended`), else     |
//! |      | passed as `Input::Received`                                                   |
//! | 7    | requests are held until `max_outstanding` (4) of them stop the decoding, else  |
//! |      | completed at once; the export is read-only when this bit and bit 4 are both set |
//!
//! Every request the machine hands out must be a valid one for the export (aligned, in
//! bounds, not longer than 32 MiB, no write to a read-only export) with a unique id; the
//! driver, which keeps to the call order, never gets a usage error; `invariants()` holds after
//! every input; after a protocol error the machine is closed and ignores what follows.
//! Some completions are errors, so error replies are produced too. A panic here is a bug (the
//! assertions are the fuzzer's oracle).

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::{
    BlockRequest, Completion, Errno, Export, ExportAnswer, ExportFlags, ExportListing, HandleError,
    Input, Op, Output, Phase, Refusal, RequestId, ServerConfig, ServerConnection, wire,
};

/// The export's size: 1 MiB.
const SIZE: u64 = 1 << 20;

/// What one input reached, for the corpus replay to check that the driver is not vacuous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// The connection entered the transmission phase.
    pub transmission: bool,
    /// Requests handed to the device.
    pub requests: u64,
    /// Requests completed with an error.
    pub failed: u64,
    /// The connection was closed by a protocol error.
    pub protocol_error: bool,
}

/// Runs every check on one fuzzer input.
pub fn nbd_server(data: &[u8]) -> Reached {
    let Some((&control, fuzzed)) = data.split_first() else {
        return Reached::default();
    };
    let cut = usize::from(control & 0x0f) * 7 + 1;
    let negotiate = control & 0x10 != 0;
    let structured = control & 0x20 != 0;
    let in_place = control & 0x40 != 0;
    let hold = control & 0x80 != 0;

    let mut stream = Vec::new();
    if negotiate {
        stream.extend_from_slice(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
        if structured {
            stream.extend(option(wire::NBD_OPT_STRUCTURED_REPLY, &[]));
        }
        // NBD_OPT_GO of "" with no info requests.
        stream.extend(option(wire::NBD_OPT_GO, &[0, 0, 0, 0, 0, 0]));
    }
    stream.extend_from_slice(fuzzed);

    let flags = ExportFlags {
        read_only: hold && negotiate,
        ..ExportFlags::block_device()
    };
    let config = ServerConfig {
        max_outstanding: if hold { 4 } else { 64 },
        ..ServerConfig::default()
    };
    let mut driver = Driver {
        conn: ServerConnection::new(config),
        flags,
        held: Vec::new(),
        ids: BTreeSet::new(),
        completions: 0,
        closed_by_error: false,
        reached: Reached::default(),
    };
    driver.drain();

    let mut rest = &stream[..];
    while !rest.is_empty() {
        let window = driver.conn.receive_window();
        if window == 0 {
            if driver.held.is_empty() {
                // Closed, or draining after NBD_CMD_DISC: nothing more is read.
                assert!(
                    matches!(driver.conn.phase(), Phase::Closed | Phase::Draining),
                    "the window is shut with nothing to wait for in {:?}",
                    driver.conn.phase()
                );
                break;
            }
            driver.complete_held();
            continue;
        }
        let mut n = cut.min(window).min(rest.len());
        let result = if in_place {
            let mut buffer = driver.conn.receive_buffer();
            n = n.min(bytes::BufMut::remaining_mut(&buffer));
            assert!(n > 0, "an open window offers no receive buffer");
            bytes::BufMut::put_slice(&mut buffer, &rest[..n]);
            driver.input(Input::Appended(n))
        } else {
            driver.input(Input::Received(&rest[..n]))
        };
        rest = &rest[n..];
        if result.is_err() || driver.closed_by_error {
            assert_eq!(
                driver.conn.phase(),
                Phase::Closed,
                "a protocol error closes"
            );
            // Whatever comes after is accepted and ignored.
            let _ = driver.conn.handle(Input::Received(rest));
            assert_eq!(driver.conn.poll_output(), None, "output after close");
            driver.reached.protocol_error = true;
            return driver.reached;
        }
        if !hold {
            driver.complete_held();
        }
    }
    while !driver.held.is_empty() {
        driver.complete_held();
    }
    driver.reached.protocol_error |= driver.closed_by_error;
    driver.reached
}

/// One client option: IHAVEOPT, option, length, data.
fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + data.len());
    bytes.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    bytes.extend_from_slice(&option.to_be_bytes());
    bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

struct Driver {
    conn: ServerConnection,
    flags: ExportFlags,
    /// Requests handed out and not completed yet.
    held: Vec<BlockRequest>,
    /// Every request id handed out (to check they are unique).
    ids: BTreeSet<RequestId>,
    completions: u64,
    /// A protocol error surfaced while draining (an answer or a completion let the machine
    /// decode more input, which was bad).
    closed_by_error: bool,
    reached: Reached,
}

impl Driver {
    /// Feeds one input, checks the invariants, acts on every output.
    fn input(&mut self, input: Input<'_>) -> Result<(), HandleError> {
        let result = self.conn.handle(input);
        if let Err(HandleError::Usage(e)) = &result {
            panic!("usage error for a driver that keeps to the call order: {e}");
        }
        self.conn.invariants();
        self.drain();
        result
    }

    /// An input given while acting on outputs: a usage error is a bug, a protocol error
    /// closes the connection.
    fn inner(&mut self, input: Input<'_>) {
        match self.conn.handle(input) {
            Ok(()) => {}
            Err(HandleError::Usage(e)) => panic!("usage error while draining: {e}"),
            Err(HandleError::Protocol(_)) => self.closed_by_error = true,
        }
        self.conn.invariants();
    }

    fn drain(&mut self) {
        while let Some(output) = self.conn.poll_output() {
            match output {
                Output::Send(transmit) => {
                    assert!(!transmit.is_empty(), "an empty send");
                    self.inner(Input::Sent(transmit.len()));
                }
                Output::ExportQuery { name, .. } => {
                    let answer = match name.as_str() {
                        "" | "r0" => ExportAnswer::Serve(Export {
                            name: "r0".into(),
                            description: Some("fuzzed".into()),
                            size: SIZE,
                            flags: self.flags,
                        }),
                        _ => ExportAnswer::Refuse(Refusal::unknown("no such export")),
                    };
                    self.inner(Input::ExportAnswer(answer));
                }
                Output::ListExports => {
                    let list = vec![ExportListing {
                        name: "r0".into(),
                        description: None,
                    }];
                    self.inner(Input::ExportList(list));
                }
                Output::Transmission { export, .. } => {
                    assert_eq!(export.size, SIZE, "the answered export is served");
                    self.reached.transmission = true;
                }
                Output::Request(request) => {
                    self.check(&request);
                    self.reached.requests += 1;
                    self.held.push(request);
                }
                Output::Close(_) => {}
            }
        }
    }

    /// A request handed to the device must be one the device can execute as it is.
    fn check(&mut self, request: &BlockRequest) {
        assert!(
            self.ids.insert(request.id),
            "request id {:?} handed out twice",
            request.id
        );
        let (offset, len) = match &request.op {
            Op::Flush => return,
            Op::Read { offset, len } => (*offset, u64::from(*len)),
            Op::Write { offset, data, .. } => (*offset, data.len() as u64),
            Op::Trim { offset, len, .. } | Op::WriteZeroes { offset, len, .. } => {
                (*offset, u64::from(*len))
            }
        };
        assert!(
            offset.is_multiple_of(512) && len.is_multiple_of(512) && len > 0,
            "unaligned or empty: {:?}",
            request.op
        );
        assert!(offset + len <= SIZE, "past the end: {:?}", request.op);
        if !matches!(request.op, Op::Trim { .. }) {
            assert!(
                len <= u64::from(wire::MAX_BLOCK_SIZE),
                "too long: {:?}",
                request.op
            );
        }
        assert!(
            !self.flags.read_only || request.op.is_read(),
            "a write to a read-only export: {:?}",
            request.op
        );
    }

    /// Completes every held request: reads with data of the asked length, the rest done;
    /// every fifth fails with EIO.
    fn complete_held(&mut self) {
        for request in std::mem::take(&mut self.held) {
            self.completions += 1;
            let result = match &request.op {
                _ if self.completions.is_multiple_of(5) => {
                    self.reached.failed += 1;
                    Completion::Error(Errno::Io)
                }
                Op::Read { len, .. } => Completion::Data(Bytes::from(vec![0xa5; *len as usize])),
                _ => Completion::Done,
            };
            self.inner(Input::Completion {
                id: request.id,
                result,
            });
            self.drain();
        }
    }
}
