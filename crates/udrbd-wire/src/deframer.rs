//! Turns a byte stream cut anywhere into typed packets.
//!
//! ```text
//!   push(bytes) ──> [ buffer ] ──> header? ──> length allowed? ──> whole payload? ──> Frame
//!                                     │ no: wait      │ no: error        │ no: wait
//!                                     └ bad magic / pad: error
//! ```
//!
//! The header format and the integrity digest length are part of the [`DecodeContext`] and can
//! change between packets: a data socket starts with h80 (P_INITIAL_DATA,
//! P_CONNECTION_FEATURES) and switches to h100 once the agreed version is known, i.e. right
//! after [`Deframer::next_frame`] returned the peer's P_CONNECTION_FEATURES (the peer sends
//! nothing else before it has ours, and bytes stay undecoded until asked for).
//!
//! Limits: a header's length is checked against its command's rule (see
//! [`crate::Command::expected_length`]) before any payload is buffered, so the buffer never
//! holds more than one largest packet (1 MiB of data + p_data + digest + header) plus what the
//! caller pushed beyond it; the caller bounds that by how much it reads per call.
//!
//! Invariants: frames come out in stream order, each exactly once, whatever the cut points;
//! after an error the deframer is poisoned and returns that error forever (the connection is
//! dead: DRBD never resynchronises a byte stream); payload bytes are sliced from the receive
//! buffer, never copied again.

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::header::{Header, HeaderFormat};
use crate::packet::{DecodeContext, Frame, Packet, check_length};

/// The receiving half of one socket.
#[derive(Debug)]
pub struct Deframer {
    buffer: BytesMut,
    context: DecodeContext,
    pending: Option<Header>,
    failed: Option<DecodeError>,
}

impl Deframer {
    /// A deframer for a fresh socket (use [`HeaderFormat::Short`] for a new connection).
    pub fn new(context: DecodeContext) -> Deframer {
        Deframer {
            buffer: BytesMut::new(),
            context,
            pending: None,
            failed: None,
        }
    }

    /// The context in use.
    pub fn context(&self) -> DecodeContext {
        self.context
    }

    /// Switches the header format for the packets not yet returned.
    pub fn set_header_format(&mut self, format: HeaderFormat) {
        self.context = self.context.with_format(format);
    }

    /// Sets the integrity digest length (after P_PROTOCOL agreed a data-integrity-alg).
    pub fn set_integrity_digest_len(&mut self, len: usize) {
        self.context = self.context.with_integrity_digest_len(len);
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.pending.map_or(0, |h| h.size())
    }

    /// Bytes still missing before the next frame can be returned (at least 1 while nothing
    /// complete is buffered); a driver may use it to size its next read.
    pub fn missing(&self) -> usize {
        let needed = match &self.pending {
            Some(h) => h.length as usize,
            None => self.context.format().header_size(),
        };
        needed.saturating_sub(self.buffer.len())
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(frame) => Ok(frame),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Frame>, DecodeError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                let size = self.context.format().header_size();
                if self.buffer.len() < size {
                    return Ok(None);
                }
                let header = Header::decode(self.context.format(), &self.buffer[..size])?;
                check_length(header.command, header.length, &self.context)?;
                let _ = self.buffer.split_to(size);
                let length = header.length as usize;
                if self.buffer.len() < length && self.buffer.capacity() < length {
                    // A fresh buffer for the payload, rather than growing this one: it may
                    // share its allocation with frames still in use (growing it would copy
                    // or reallocate far more than the payload).
                    let mut fresh = BytesMut::with_capacity(length);
                    fresh.extend_from_slice(&self.buffer);
                    self.buffer = fresh;
                }
                self.pending = Some(header);
                header
            }
        };
        let length = header.length as usize;
        if self.buffer.len() < length {
            return Ok(None);
        }
        self.pending = None;
        let payload = self.buffer.split_to(length).freeze();
        let packet = Packet::decode(header.command, payload, &self.context)?;
        Ok(Some(Frame {
            volume: header.volume,
            packet,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    #[test]
    fn waits_for_whole_header_and_payload() {
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        let bytes = [
            0x86, 0x20, 0xec, 0x20, 0, 0, 0, 0x0e, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0xc8, 0x82,
        ];
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(d.next_frame().unwrap(), None, "after {i} bytes");
            d.push(&[*b]);
        }
        let frame = d.next_frame().unwrap().unwrap();
        assert!(matches!(frame.packet, Packet::State(_)));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.missing(), 16);
    }

    #[test]
    fn wrong_length_is_detected_from_the_header_and_poisons() {
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        d.push(&[
            0x86, 0x20, 0xec, 0x20, 0, 0, 0, 0x0e, 0, 0, 0, 5, 0, 0, 0, 0,
        ]);
        let err = d.next_frame().unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadLength {
                command: Command::State,
                length: 5,
                ..
            }
        ));
        assert_eq!(d.next_frame().unwrap_err(), err);
    }

    #[test]
    fn oversized_data_is_refused_before_buffering() {
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        let length: u32 = 24 + (1 << 20) + 512;
        let mut h = vec![0x86, 0x20, 0xec, 0x20, 0, 0, 0, 0];
        h.extend_from_slice(&length.to_be_bytes());
        h.extend_from_slice(&[0; 4]);
        d.push(&h);
        assert!(matches!(
            d.next_frame(),
            Err(DecodeError::BadLength {
                command: Command::Data,
                ..
            })
        ));
    }

    #[test]
    fn unknown_commands() {
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        d.push(&[
            0x86, 0x20, 0xec, 0x20, 0, 0, 0x01, 0x23, 0, 0, 0, 3, 0, 0, 0, 0, 1, 2, 3,
        ]);
        assert_eq!(
            d.next_frame().unwrap().unwrap().packet,
            Packet::Ignored {
                command: 0x123,
                length: 3
            }
        );
        d.push(&[
            0x86, 0x20, 0xec, 0x20, 0, 0, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::UnknownCommand { command: 5 })
        );
    }

    #[test]
    fn garbage_is_bad_magic() {
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Short));
        d.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::BadMagic {
                found: 0x4745_5420,
                format: HeaderFormat::Short
            })
        );
    }
}
