//! DRBD's variable-length integer prefix code and the LSB-first bit stream it is written to
//! (drbd-v08-facts.md §6.4; the kernel's `drbd_vli.h`).
//!
//! ```text
//!  level  prefix (LSB first)  prefix bits  data bits  total  run lengths
//!    1    0                        1           1        2    1 ..= 2
//!    2    10                       2           1        3    3 ..= 4
//!    3    110                      3           2        5    5 ..= 8
//!    4    1110                     4           3        7    9 ..= 16
//!    5    11110                    5           5       10   17 ..= 48
//!    6    111110                   6           8       14   49 ..= 304
//!    7    11111100 (0x3F)          8          13       21  305 ..= 8496
//!    8    11111110 (0x7F)          8          21       29  8497 ..= 2105648
//!    9    11111101 (0xBF)          8          34       42  next 2^34
//!   10    11111111 (0xFF)          8          56       64  next 2^56
//! ```
//!
//! A code is `prefix | (value - base) << prefix_bits`, written into the stream starting at its
//! least significant bit. Byte `i` of the stream holds stream bits `8i ..= 8i+7`, bit 0 first.
//! Verified against every compressed bitmap in the captures (`3fc506` = one run of 2038).

/// (total bits, prefix bits, prefix value) per level.
const LEVELS: [(u32, u32, u64); 10] = [
    (2, 1, 0x00),
    (3, 2, 0x01),
    (5, 3, 0x03),
    (7, 4, 0x07),
    (10, 5, 0x0f),
    (14, 6, 0x1f),
    (21, 8, 0x3f),
    (29, 8, 0x7f),
    (42, 8, 0xbf),
    (64, 8, 0xff),
];

/// The largest value the code can express.
pub const VLI_MAX: u64 = {
    let mut max = 0u64;
    let mut i = 0;
    while i < LEVELS.len() {
        max += 1u64 << (LEVELS[i].0 - LEVELS[i].1);
        i += 1;
    }
    max
};

/// Encodes `value` (1 ..= [`VLI_MAX`]) as (code, bit count); `None` outside that range.
pub fn encode(value: u64) -> Option<(u64, u32)> {
    if value == 0 {
        return None;
    }
    let mut base = 1u64;
    for &(total, prefix_bits, prefix) in &LEVELS {
        let span = 1u64 << (total - prefix_bits);
        if value - base < span {
            return Some((((value - base) << prefix_bits) | prefix, total));
        }
        base += span;
    }
    None
}

/// Decodes the code at the low end of `look_ahead` as (value, bit count). Every bit pattern
/// starts with some code (the prefix code is complete); whether `look_ahead` held enough real
/// bits is the caller's check.
pub fn decode(look_ahead: u64) -> (u64, u32) {
    let mut base = 1u64;
    for &(total, prefix_bits, prefix) in &LEVELS {
        if look_ahead & ((1u64 << prefix_bits) - 1) == prefix {
            let code = if total == 64 {
                look_ahead
            } else {
                look_ahead & ((1u64 << total) - 1)
            };
            return ((code >> prefix_bits) + base, total);
        }
        base += 1u64 << (total - prefix_bits);
    }
    unreachable!("the 8-bit prefixes 0x3f, 0x7f, 0xbf, 0xff cover every xx111111")
}

/// Writes codes LSB-first into at most `capacity` bytes.
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    capacity_bits: u64,
    bit_len: u64,
}

impl BitWriter {
    pub(crate) fn new(capacity: usize) -> BitWriter {
        BitWriter {
            bytes: Vec::with_capacity(capacity),
            capacity_bits: capacity as u64 * 8,
            bit_len: 0,
        }
    }

    /// Appends the low `bits` bits of `code`; false (and nothing written) if they do not fit,
    /// the kernel's `-ENOBUFS`.
    pub(crate) fn put(&mut self, code: u64, bits: u32) -> bool {
        if self.bit_len + u64::from(bits) > self.capacity_bits {
            return false;
        }
        let mut remaining = bits;
        let mut code = code;
        while remaining > 0 {
            let used = (self.bit_len % 8) as u32;
            if used == 0 {
                self.bytes.push(0);
            }
            let take = (8 - used).min(remaining);
            let chunk = (code & ((1u64 << take) - 1)) as u8;
            *self.bytes.last_mut().expect("pushed above") |= chunk << used;
            code >>= take;
            remaining -= take;
            self.bit_len += u64::from(take);
        }
        true
    }

    pub(crate) fn bit_len(&self) -> u64 {
        self.bit_len
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads an LSB-first stream of `bytes.len() * 8 - pad_bits` bits.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    total_bits: u64,
    position: u64,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(bytes: &'a [u8], pad_bits: u8) -> BitReader<'a> {
        let total_bits = (bytes.len() as u64 * 8).saturating_sub(u64::from(pad_bits));
        BitReader {
            bytes,
            total_bits,
            position: 0,
        }
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.total_bits - self.position
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Up to 64 next bits (zero-filled past the end) and how many of them are real.
    pub(crate) fn peek(&self) -> (u64, u32) {
        let available = self.remaining().min(64) as u32;
        let mut value = 0u64;
        let mut got = 0u32;
        let mut position = self.position;
        while got < available {
            let byte = self.bytes[(position / 8) as usize];
            let offset = (position % 8) as u32;
            let take = (8 - offset).min(available - got);
            let chunk = u64::from(byte >> offset) & ((1u64 << take) - 1);
            value |= chunk << got;
            got += take;
            position += u64::from(take);
        }
        (value, available)
    }

    pub(crate) fn advance(&mut self, bits: u32) {
        debug_assert!(u64::from(bits) <= self.remaining());
        self.position += u64::from(bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_boundaries() {
        let cases = [
            (1, 2),
            (2, 2),
            (3, 3),
            (4, 3),
            (5, 5),
            (8, 5),
            (9, 7),
            (16, 7),
            (17, 10),
            (48, 10),
            (49, 14),
            (304, 14),
            (305, 21),
            (8496, 21),
            (8497, 29),
        ];
        for (value, bits) in cases {
            let (code, n) = encode(value).unwrap();
            assert_eq!(n, bits, "value {value}");
            assert_eq!(decode(code), (value, bits), "value {value}");
        }
        assert_eq!(encode(0), None);
        let (code, n) = encode(VLI_MAX).unwrap();
        assert_eq!((n, decode(code)), (64, (VLI_MAX, 64)));
        assert_eq!(encode(VLI_MAX + 1), None);
    }

    #[test]
    fn one_run_of_2038_is_3fc506() {
        let (code, bits) = encode(2038).unwrap();
        let mut w = BitWriter::new(16);
        assert!(w.put(code, bits));
        assert_eq!(w.bit_len(), 21);
        assert_eq!(w.into_bytes(), [0x3f, 0xc5, 0x06]);
    }

    #[test]
    fn writer_respects_capacity() {
        let mut w = BitWriter::new(1);
        assert!(w.put(0b11, 2));
        assert!(w.put(0, 6));
        assert!(!w.put(0, 1));
        assert_eq!(w.into_bytes(), [0b11]);
    }

    #[test]
    fn reader_peeks_across_bytes() {
        let bytes = [0xe0, 0xcf, 0x2f, 0xe0, 0x47, 0x18, 0xf8, 0xb3, 0x2d, 0x00];
        let mut r = BitReader::new(&bytes, 7);
        assert_eq!(r.remaining(), 73);
        let mut runs = Vec::new();
        while r.remaining() > 0 {
            let (look, have) = r.peek();
            let (value, bits) = decode(look);
            assert!(bits <= have);
            runs.push(value);
            r.advance(bits);
        }
        // drbd-wire-observed.md 1f: runs 1, 1, 2, 496, 1, 499, 2, 1036.
        assert_eq!(runs, [1, 1, 2, 496, 1, 499, 2, 1036]);
    }
}
