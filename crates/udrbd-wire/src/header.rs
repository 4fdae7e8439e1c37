//! Packet headers (drbd-v08-facts.md §6.1; drbd-wire-observed.md refinement 7).
//!
//! ```text
//!   h80, 8 bytes                h95, 8 bytes                h100, 16 bytes
//!   off size field              off size field              off size field
//!     0    4 magic 0x83740267     0    2 magic 0x835A         0    4 magic 0x8620EC20
//!     4    2 command              2    2 command              4    2 volume
//!     6    2 length               4    4 length               6    2 command
//!                                                             8    4 length
//!                                                            12    4 pad, must be 0
//! ```
//!
//! All fields are big-endian; `length` counts the payload bytes after the header.
//!
//! Which header a connection uses follows from the agreed protocol version
//! ([`HeaderFormat::for_agreed_version`]): before the feature exchange the agreed version is
//! 80, so P_INITIAL_DATA, P_INITIAL_META and P_CONNECTION_FEATURES always travel with h80; the
//! 8.4.11 kernel switches to h100 for everything after (including P_AUTH_CHALLENGE). A
//! receiver with 8-byte headers accepts both h80 and h95 and tells them apart by the magic (the
//! first two bytes differ: `83 74` versus `83 5A`), exactly as the kernel's `decode_header`.
//!
//! Invariants: [`Header::decode`] never reads past [`HeaderFormat::header_size`] bytes;
//! [`Header::new`] refuses what the chosen header cannot carry (an h80 length above 65535, a
//! volume other than 0 without h100), so an encoded header always decodes to the same values.

use bytes::BufMut;

use crate::error::{DecodeError, EncodeError};

/// Magic of h80 (`DRBD_MAGIC`).
pub const MAGIC_H80: u32 = 0x8374_0267;
/// Magic of h95 (`DRBD_MAGIC_BIG`), 16 bits.
pub const MAGIC_H95: u16 = 0x835A;
/// Magic of h100 (`DRBD_MAGIC_100`).
pub const MAGIC_H100: u32 = 0x8620_EC20;
/// Size of h80 and h95.
pub const SHORT_HEADER_SIZE: usize = 8;
/// Size of h100.
pub const LONG_HEADER_SIZE: usize = 16;
/// Above this payload size an 8-byte-header sender at protocol 95..=99 switches from h80 to
/// h95 (`DRBD_MAX_SIZE_H80_PACKET`, 32 KiB).
pub const MAX_SIZE_H80_PACKET: u32 = 1 << 15;

/// The header a connection uses, fixed by the agreed protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderFormat {
    /// 8-byte headers, sending h80 only: agreed version < 95, and the first packets of every
    /// connection (the agreed version is 80 until P_CONNECTION_FEATURES was exchanged).
    Short,
    /// 8-byte headers, sending h80 up to 32 KiB of payload and h95 above: agreed 95..=99.
    ShortOrBig,
    /// 16-byte h100 headers: agreed version >= 100 (what two 8.4 nodes agree on: 101).
    Long,
}

impl HeaderFormat {
    /// The format for an agreed protocol version (the kernel's `prepare_header`).
    pub fn for_agreed_version(version: u32) -> HeaderFormat {
        if version >= 100 {
            HeaderFormat::Long
        } else if version >= 95 {
            HeaderFormat::ShortOrBig
        } else {
            HeaderFormat::Short
        }
    }

    /// Bytes of one header (`drbd_header_size`).
    pub const fn header_size(self) -> usize {
        match self {
            HeaderFormat::Short | HeaderFormat::ShortOrBig => SHORT_HEADER_SIZE,
            HeaderFormat::Long => LONG_HEADER_SIZE,
        }
    }
}

impl std::fmt::Display for HeaderFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderFormat::Short => "h80",
            HeaderFormat::ShortOrBig => "h80/h95",
            HeaderFormat::Long => "h100",
        })
    }
}

/// Which of the three layouts a header has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderKind {
    /// 8 bytes, 16-bit length.
    H80,
    /// 8 bytes, 32-bit length, 16-bit magic.
    H95,
    /// 16 bytes, volume number, 32-bit length.
    H100,
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Layout it was (or will be) written in.
    pub kind: HeaderKind,
    /// Volume number (always 0 in h80/h95).
    pub volume: u16,
    /// Packet command (`enum drbd_packet`).
    pub command: u16,
    /// Payload bytes after the header.
    pub length: u32,
}

impl Header {
    /// The header DRBD would write for a payload of `length` bytes (`prepare_header`).
    pub fn new(
        format: HeaderFormat,
        volume: u16,
        command: u16,
        length: u64,
    ) -> Result<Header, EncodeError> {
        let too_long = EncodeError::TooLongForHeader {
            command,
            length,
            format,
        };
        let length32 = u32::try_from(length).map_err(|_| too_long.clone())?;
        let kind = match format {
            HeaderFormat::Long => HeaderKind::H100,
            HeaderFormat::ShortOrBig if length32 > MAX_SIZE_H80_PACKET => HeaderKind::H95,
            HeaderFormat::Short | HeaderFormat::ShortOrBig => {
                if length32 > u32::from(u16::MAX) {
                    return Err(too_long);
                }
                HeaderKind::H80
            }
        };
        if kind != HeaderKind::H100 && volume != 0 {
            return Err(EncodeError::VolumeNeedsLongHeader { volume });
        }
        Ok(Header {
            kind,
            volume,
            command,
            length: length32,
        })
    }

    /// Decodes the first [`HeaderFormat::header_size`] bytes of `bytes` (the caller provides at
    /// least that many).
    pub fn decode(format: HeaderFormat, bytes: &[u8]) -> Result<Header, DecodeError> {
        assert!(
            bytes.len() >= format.header_size(),
            "caller passes a whole header"
        );
        let magic32 = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        match format {
            HeaderFormat::Long => {
                if magic32 != MAGIC_H100 {
                    return Err(DecodeError::BadMagic {
                        found: magic32,
                        format,
                    });
                }
                let pad = u32_at(12);
                if pad != 0 {
                    return Err(DecodeError::HeaderPadNotZero { pad });
                }
                Ok(Header {
                    kind: HeaderKind::H100,
                    volume: u16_at(4),
                    command: u16_at(6),
                    length: u32_at(8),
                })
            }
            HeaderFormat::Short | HeaderFormat::ShortOrBig => {
                if magic32 == MAGIC_H80 {
                    Ok(Header {
                        kind: HeaderKind::H80,
                        volume: 0,
                        command: u16_at(4),
                        length: u32::from(u16_at(6)),
                    })
                } else if u16_at(0) == MAGIC_H95 {
                    Ok(Header {
                        kind: HeaderKind::H95,
                        volume: 0,
                        command: u16_at(2),
                        length: u32_at(4),
                    })
                } else {
                    Err(DecodeError::BadMagic {
                        found: magic32,
                        format,
                    })
                }
            }
        }
    }

    /// The header at the start of `bytes`, whichever of the three layouts its magic names
    /// (`Ok(None)`: too few bytes to tell yet). For a driver that cuts its reads where frames
    /// end without knowing the format the deframer expects; the deframer still checks the
    /// format and the length.
    pub fn sniff(bytes: &[u8]) -> Result<Option<Header>, DecodeError> {
        let format = match bytes {
            [0x83, 0x5A, ..] => HeaderFormat::ShortOrBig,
            [0x83] => return Ok(None),
            [0x86, 0x20, ..] | [0x86] => HeaderFormat::Long,
            [] => return Ok(None),
            _ => HeaderFormat::ShortOrBig,
        };
        if bytes.len() < format.header_size() {
            // Enough for the magic: refuse garbage early rather than wait for more.
            if bytes.len() >= 4 {
                let magic32 = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                let expected = match format {
                    HeaderFormat::Long => MAGIC_H100,
                    _ => MAGIC_H80,
                };
                if magic32 != expected && bytes[..2] != MAGIC_H95.to_be_bytes() {
                    return Err(DecodeError::BadMagic {
                        found: magic32,
                        format,
                    });
                }
            }
            return Ok(None);
        }
        Header::decode(format, bytes).map(Some)
    }

    /// Bytes this header occupies.
    pub const fn size(&self) -> usize {
        match self.kind {
            HeaderKind::H80 | HeaderKind::H95 => SHORT_HEADER_SIZE,
            HeaderKind::H100 => LONG_HEADER_SIZE,
        }
    }

    /// Appends the header's bytes.
    pub fn encode_into(&self, out: &mut impl BufMut) {
        match self.kind {
            HeaderKind::H80 => {
                debug_assert!(self.length <= u32::from(u16::MAX) && self.volume == 0);
                out.put_u32(MAGIC_H80);
                out.put_u16(self.command);
                out.put_u16(self.length as u16);
            }
            HeaderKind::H95 => {
                debug_assert!(self.volume == 0);
                out.put_u16(MAGIC_H95);
                out.put_u16(self.command);
                out.put_u32(self.length);
            }
            HeaderKind::H100 => {
                out.put_u32(MAGIC_H100);
                out.put_u16(self.volume);
                out.put_u16(self.command);
                out.put_u32(self.length);
                out.put_u32(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(h: &Header) -> Vec<u8> {
        let mut v = Vec::new();
        h.encode_into(&mut v);
        assert_eq!(v.len(), h.size());
        v
    }

    #[test]
    fn h80_initial_packet_bytes() {
        let h = Header::new(HeaderFormat::Short, 0, 0xfff2, 0).unwrap();
        assert_eq!(encode(&h), [0x83, 0x74, 0x02, 0x67, 0xff, 0xf2, 0, 0]);
        assert_eq!(Header::decode(HeaderFormat::Short, &encode(&h)).unwrap(), h);
    }

    #[test]
    fn h95_above_32k_only_for_95_to_99() {
        let small = Header::new(HeaderFormat::ShortOrBig, 0, 0, 32768).unwrap();
        assert_eq!(small.kind, HeaderKind::H80);
        let big = Header::new(HeaderFormat::ShortOrBig, 0, 0, 32769).unwrap();
        assert_eq!(big.kind, HeaderKind::H95);
        assert_eq!(encode(&big), [0x83, 0x5a, 0, 0, 0, 0, 0x80, 0x01]);
        assert_eq!(
            Header::decode(HeaderFormat::Short, &encode(&big)).unwrap(),
            big
        );
        assert!(Header::new(HeaderFormat::Short, 0, 0, 70000).is_err());
        assert_eq!(
            HeaderFormat::for_agreed_version(101),
            HeaderFormat::Long,
            "two 8.4 nodes agree on 101"
        );
        assert_eq!(
            HeaderFormat::for_agreed_version(96),
            HeaderFormat::ShortOrBig
        );
        assert_eq!(HeaderFormat::for_agreed_version(80), HeaderFormat::Short);
    }

    #[test]
    fn h100_pad_and_magic_are_checked() {
        let mut b = encode(&Header::new(HeaderFormat::Long, 3, 0x0e, 4).unwrap());
        assert_eq!(b, hex("8620ec200003000e0000000400000000"));
        b[15] = 1;
        assert_eq!(
            Header::decode(HeaderFormat::Long, &b),
            Err(DecodeError::HeaderPadNotZero { pad: 1 })
        );
        let h80 = hex("83740267fff20000aaaaaaaaaaaaaaaa");
        assert!(matches!(
            Header::decode(HeaderFormat::Long, &h80),
            Err(DecodeError::BadMagic {
                found: MAGIC_H80,
                ..
            })
        ));
        assert!(Header::new(HeaderFormat::Short, 1, 0, 0).is_err());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sniff_tells_the_layout_by_the_magic() {
        for (format, length) in [
            (HeaderFormat::Short, 100),
            (HeaderFormat::ShortOrBig, 1 << 20),
            (HeaderFormat::Long, 1 << 20),
        ] {
            let h = Header::new(format, 0, 0, length).unwrap();
            let mut bytes = Vec::new();
            h.encode_into(&mut bytes);
            bytes.extend_from_slice(&[0xff; 5]);
            for cut in 0..h.size() {
                assert_eq!(Header::sniff(&bytes[..cut]), Ok(None), "{format} cut {cut}");
            }
            assert_eq!(Header::sniff(&bytes), Ok(Some(h)));
        }
        assert!(Header::sniff(b"GET / HTTP/1.1").is_err());
        assert!(Header::sniff(&[0x83, 0x74, 0x02, 0x66]).is_err());
        assert!(Header::sniff(&[0x86, 0x20, 0xec, 0x21, 0, 0]).is_err());
    }
}
