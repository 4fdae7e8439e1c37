//! A test driver for `ServerConnection`: feeds bytes, drains outputs, answers export queries
//! from a small catalog, records what was sent and which requests came out.
#![allow(dead_code)]

use bytes::Bytes;
use udrbd_nbd::wire::{self, Cookie, RequestHeader};
use udrbd_nbd::{
    BlockRequest, CloseReason, Export, ExportAnswer, ExportFlags, ExportListing, HandleError,
    Input, Output, Refusal, ServerConfig, ServerConnection,
};

/// 1 MiB unless a test says otherwise.
pub const SIZE: u64 = 1 << 20;
pub const SECONDARY_MESSAGE: &str = "resource r1 is Secondary: only a Primary serves its device";

/// The catalog: "" and "r0" are r0; "r1" is refused as Secondary; anything else is unknown.
pub fn catalog(name: &str, flags: ExportFlags) -> ExportAnswer {
    match name {
        "" | "r0" => ExportAnswer::Serve(Export {
            name: "r0".into(),
            description: Some("udrbd resource r0".into()),
            size: SIZE,
            flags,
        }),
        "r1" => ExportAnswer::Refuse(Refusal::unknown(SECONDARY_MESSAGE)),
        _ => ExportAnswer::Refuse(Refusal::unknown(format!("no export named {name:?}"))),
    }
}

pub struct Harness {
    pub conn: ServerConnection,
    pub sent: Vec<u8>,
    pub requests: Vec<BlockRequest>,
    pub closed: Option<CloseReason>,
    pub transmission: Option<(Export, bool)>,
    pub queries: Vec<String>,
    pub flags: ExportFlags,
    /// Answer export queries automatically.
    pub auto_answer: bool,
    /// A protocol error surfaced while draining (an answer or completion let the machine decode
    /// more input, which was bad).
    pub protocol_error: Option<HandleError>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(ServerConfig::default())
    }

    pub fn with_config(config: ServerConfig) -> Self {
        let mut h = Harness {
            conn: ServerConnection::new(config),
            sent: Vec::new(),
            requests: Vec::new(),
            closed: None,
            transmission: None,
            queries: Vec::new(),
            flags: ExportFlags::block_device(),
            auto_answer: true,
            protocol_error: None,
        };
        h.drain();
        h
    }

    /// Feeds bytes (all at once), then drains.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), HandleError> {
        self.input(Input::Received(bytes))
    }

    /// Feeds bytes as a driver that reads straight into the receive buffer does: as much as
    /// `receive_buffer()` takes at a time, reported with `Input::Appended`, then drains.
    pub fn feed_in_place(&mut self, mut bytes: &[u8]) -> Result<(), HandleError> {
        while !bytes.is_empty() {
            let mut buf = self.conn.receive_buffer();
            let n = bytes::BufMut::remaining_mut(&buf).min(bytes.len());
            assert!(n > 0, "the machine takes no more bytes");
            bytes::BufMut::put_slice(&mut buf, &bytes[..n]);
            bytes = &bytes[n..];
            self.input(Input::Appended(n))?;
        }
        Ok(())
    }

    /// Feeds one input and drains; returns the first error, including a protocol error that
    /// surfaced while draining.
    pub fn input(&mut self, input: Input<'_>) -> Result<(), HandleError> {
        let result = self.conn.handle(input);
        self.conn.invariants();
        self.drain();
        self.conn.invariants();
        match (result, self.protocol_error.take()) {
            (Err(e), _) | (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Hands an input to the machine while draining: usage errors are bugs of the harness or
    /// the machine; protocol errors are recorded.
    fn inner(&mut self, input: Input<'_>) {
        match self.conn.handle(input) {
            Ok(()) => {}
            Err(HandleError::Usage(e)) => panic!("usage error while draining: {e}"),
            Err(e) => {
                self.protocol_error.get_or_insert(e);
            }
        }
    }

    pub fn drain(&mut self) {
        while let Some(output) = self.conn.poll_output() {
            match output {
                Output::Send(t) => {
                    self.sent.extend_from_slice(&t.to_vec());
                    self.inner(Input::Sent(t.len()));
                }
                Output::ExportQuery { name, .. } => {
                    self.queries.push(name.clone());
                    if self.auto_answer {
                        let answer = catalog(&name, self.flags);
                        self.inner(Input::ExportAnswer(answer));
                    }
                }
                Output::ListExports => {
                    let list = vec![
                        ExportListing {
                            name: "r0".into(),
                            description: Some("primary".into()),
                        },
                        ExportListing {
                            name: "r1".into(),
                            description: None,
                        },
                    ];
                    self.inner(Input::ExportList(list));
                }
                Output::Transmission {
                    export,
                    structured_replies,
                } => {
                    self.transmission = Some((export, structured_replies));
                }
                Output::Request(request) => self.requests.push(request),
                Output::Close(reason) => self.closed = Some(reason),
            }
        }
    }

    pub fn take_sent(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.sent)
    }

    /// Greeting read, client flags sent, structured replies as asked, GO "" done.
    pub fn negotiated(structured: bool) -> Self {
        Self::negotiated_with(
            ServerConfig::default(),
            ExportFlags::block_device(),
            structured,
        )
    }

    pub fn negotiated_with(config: ServerConfig, flags: ExportFlags, structured: bool) -> Self {
        let mut h = Self::with_config(config);
        h.flags = flags;
        let mut bytes = client_flags(3).to_vec();
        if structured {
            bytes.extend(option(wire::NBD_OPT_STRUCTURED_REPLY, &[]));
        }
        bytes.extend(option(wire::NBD_OPT_GO, &go_data("", &[])));
        h.feed(&bytes).expect("negotiation");
        assert!(h.transmission.is_some(), "entered transmission");
        h.take_sent();
        h
    }

    /// Completes every pending request: reads with a pattern, the rest Done.
    pub fn complete_all(&mut self) {
        let requests = std::mem::take(&mut self.requests);
        for request in requests {
            let result = completion_for(&request);
            let completion = Input::Completion {
                id: request.id,
                result,
            };
            // A protocol error (bad input decoded after this completion) is the test's business.
            if let Err(HandleError::Usage(e)) = self.input(completion) {
                panic!("completion refused: {e}");
            }
        }
    }
}

pub fn completion_for(request: &BlockRequest) -> udrbd_nbd::Completion {
    match request.op {
        udrbd_nbd::Op::Read { offset, len } => {
            udrbd_nbd::Completion::Data(pattern(offset, len as usize))
        }
        _ => udrbd_nbd::Completion::Done,
    }
}

/// Deterministic data: byte i of the export is (i / 512 + i) as u8.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| ((offset + i) / 512 + (offset + i)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

pub fn client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// A client option: IHAVEOPT, option, length, data.
pub fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"IHAVEOPT");
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// NBD_OPT_GO / NBD_OPT_INFO data.
pub fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        d.extend_from_slice(&info.to_be_bytes());
    }
    d
}

/// A request header (and data for a write).
pub fn request(command: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    RequestHeader {
        flags,
        command,
        cookie: Cookie(cookie),
        offset,
        length,
    }
    .encode()
    .to_vec()
}

pub fn write(cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut b = request(wire::NBD_CMD_WRITE, 0, cookie, offset, data.len() as u32);
    b.extend_from_slice(data);
    b
}
