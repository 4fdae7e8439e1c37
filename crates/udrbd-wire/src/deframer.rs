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
//! buffer, never copied again, and a frame pushed whole with [`Deframer::push_bytes`] is
//! sliced from the pushed buffer itself, not copied at all.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::header::{Header, HeaderFormat};
use crate::packet::{DecodeContext, Frame, Packet, check_length};

/// The receiving half of one socket.
///
/// Received bytes live in one of two places: `input`, a buffer pushed with
/// [`Deframer::push_bytes`] whose frames are sliced out of it without a copy, or `buffer`,
/// where a frame cut across pushes is assembled. Invariant: `input` is empty while `buffer`
/// holds anything (new bytes are appended to `buffer` then, in stream order).
#[derive(Debug)]
pub struct Deframer {
    input: Bytes,
    buffer: BytesMut,
    context: DecodeContext,
    pending: Option<Header>,
    failed: Option<DecodeError>,
}

impl Deframer {
    /// A deframer for a fresh socket (use [`HeaderFormat::Short`] for a new connection).
    pub fn new(context: DecodeContext) -> Deframer {
        Deframer {
            input: Bytes::new(),
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

    /// Appends received bytes (copied).
    pub fn push(&mut self, bytes: &[u8]) {
        self.spill();
        self.append(bytes);
    }

    /// Appends received bytes without copying them when nothing is being assembled: the
    /// frames wholly inside `bytes` are then slices of it. A driver that hands over whole
    /// frames (or the payload of a frame whose header it handed over before) never has its
    /// payloads copied.
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.buffer.is_empty() && self.input.is_empty() {
            self.input = bytes;
        } else {
            self.spill();
            self.append(&bytes);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.available() + self.pending.map_or(0, |h| h.size())
    }

    /// Bytes still missing before the next frame can be returned (at least 1 while nothing
    /// complete is buffered); a driver may use it to size its next read.
    pub fn missing(&self) -> usize {
        let needed = match &self.pending {
            Some(h) => h.length as usize,
            None => self.context.format().header_size(),
        };
        needed.saturating_sub(self.available())
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

    /// Received bytes not yet decoded (after the pending header, if any).
    fn available(&self) -> usize {
        self.input.len() + self.buffer.len()
    }

    /// The undecoded bytes, wherever they are (see the invariant).
    fn unread(&self) -> &[u8] {
        if self.input.is_empty() {
            &self.buffer
        } else {
            &self.input
        }
    }

    /// Moves `input` into `buffer` (a copy), so that more bytes can be appended to it.
    fn spill(&mut self) {
        if self.input.is_empty() {
            return;
        }
        debug_assert!(self.buffer.is_empty(), "input and buffer both hold bytes");
        let input = std::mem::take(&mut self.input);
        self.append(&input);
    }

    /// Appends to `buffer`. While a header waits for its payload, the payload is assembled in
    /// a fresh buffer of its size rather than by growing this one: it may share its allocation
    /// with frames still in use (growing it would copy or reallocate far more than the
    /// payload).
    fn append(&mut self, bytes: &[u8]) {
        if let Some(h) = self.pending {
            let length = h.length as usize;
            let total = self.buffer.len() + bytes.len();
            if self.buffer.len() < length && self.buffer.capacity() < length {
                let mut fresh = BytesMut::with_capacity(length.max(total));
                fresh.extend_from_slice(&self.buffer);
                self.buffer = fresh;
            }
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Consumes `n` decoded bytes from wherever the unread bytes are.
    fn take(&mut self, n: usize) -> Bytes {
        if self.input.is_empty() {
            self.buffer.split_to(n).freeze()
        } else {
            self.input.split_to(n)
        }
    }

    fn step(&mut self) -> Result<Option<Frame>, DecodeError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                let size = self.context.format().header_size();
                if self.available() < size {
                    // A header cut by the push: assemble it (a few bytes).
                    self.spill();
                    return Ok(None);
                }
                let header = Header::decode(self.context.format(), &self.unread()[..size])?;
                check_length(header.command, header.length, &self.context)?;
                let _ = self.take(size);
                self.pending = Some(header);
                header
            }
        };
        let length = header.length as usize;
        if self.available() < length {
            // A payload cut by the push: assembled in `buffer` (copied) unless nothing of it
            // is here yet, so that a push of exactly the payload can still be sliced.
            self.spill();
            return Ok(None);
        }
        self.pending = None;
        let payload = self.take(length);
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

    /// An h100 P_DATA packet with `len` bytes of data.
    fn data_packet(len: usize) -> crate::packet::EncodedPacket {
        Packet::Data(crate::DataPacket {
            header: crate::DataHeader {
                sector: 8,
                ..Default::default()
            },
            data: Bytes::from(vec![0xab; len]),
            ..Default::default()
        })
        .encode(0, HeaderFormat::Long)
        .unwrap()
    }

    fn data_of(frame: Frame) -> Bytes {
        match frame.packet {
            Packet::Data(d) => d.data,
            other => panic!("not P_DATA: {other:?}"),
        }
    }

    #[test]
    fn whole_frames_pushed_as_bytes_are_sliced_not_copied() {
        let p = data_packet(64 * 1024);
        let stream = Bytes::from([p.to_vec(), p.to_vec()].concat());
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        d.push_bytes(stream.clone());
        let head = p.head.len();
        let first = data_of(d.next_frame().unwrap().unwrap());
        assert_eq!(first.as_ptr(), stream[head..].as_ptr());
        let second = data_of(d.next_frame().unwrap().unwrap());
        assert_eq!(second.as_ptr(), stream[2 * head + first.len()..].as_ptr());
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_payload_pushed_after_its_header_is_sliced_not_copied() {
        let p = data_packet(1 << 20);
        let all = Bytes::from(p.to_vec());
        let size = HeaderFormat::Long.header_size();
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        d.push_bytes(all.slice(..size));
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.missing(), all.len() - size);
        d.push_bytes(all.slice(size..));
        let data = data_of(d.next_frame().unwrap().unwrap());
        assert_eq!(data.as_ptr(), all[p.head.len()..].as_ptr());
        assert_eq!(data, p.data);
    }

    #[test]
    fn a_cut_payload_is_assembled() {
        let p = data_packet(4096);
        let all = Bytes::from(p.to_vec());
        let mut d = Deframer::new(DecodeContext::new(HeaderFormat::Long));
        d.push_bytes(all.slice(..100));
        assert_eq!(d.next_frame().unwrap(), None);
        d.push_bytes(all.slice(100..200));
        d.push(&all[200..300]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.missing(), all.len() - 300);
        d.push_bytes(all.slice(300..));
        assert_eq!(data_of(d.next_frame().unwrap().unwrap()), p.data);
        assert_eq!(d.buffered(), 0);
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
