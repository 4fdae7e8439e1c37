//! The bitmap exchange of WFBitMapS/T (drbd-v08-facts.md §6.4, corrected by
//! drbd-wire-observed.md difference 1): [`BitmapSender`] produces the packets exactly as the
//! 8.4 kernel's `send_bitmap_rle_or_plain` does, [`BitmapReceiver`] consumes them as
//! `receive_bitmap` does, ORing the peer's bits into the local bitmap.
//!
//! ```text
//!  sender, per packet (4096 bytes max, header included):
//!    use-rle and bits left?  --yes-->  RLE+VLI code from the bit offset, as many runs as fit
//!          |no                           |
//!          |                    code bits <= plain bits covered?
//!          |                      |yes                       |no
//!          |              P_COMPRESSED_BITMAP;         rewind to the 64-bit word at or
//!          |              done if it reached the end   below the start offset
//!          v                                                 v
//!    P_BITMAP with min((4096 - header)/8, words left) LE words  (511 with h80, 510 with h100);
//!    done when that is 0 words: a plain transfer ENDS WITH AN EMPTY P_BITMAP
//! ```
//!
//! The receiver mirrors it: a P_BITMAP must carry exactly the number of words the sender's
//! rule gives for the current word offset (so the chunking must match), and an empty one ends
//! the transfer; a P_COMPRESSED_BITMAP continues from the current bit offset and ends the
//! transfer when its runs reach the last bit. After a compressed packet both sides continue at
//! word `bit_offset / 64`, so a plain fallback may resend bits already covered; ORing makes that
//! harmless.
//!
//! Invariants: the bitmap must not change size or content (sender side) while a transfer runs;
//! `bit_offset <= bit_count` and `word_offset <= word_count` at every step; a receiver never
//! touches a bit at or past `bit_count`. Errors leave the bits set so far in place: a peer that
//! claims extra out-of-sync bits costs resync work, never data.

use std::ops::Range;

use bytes::Bytes;

use crate::command::BITMAP_PACKET_MAX;
use crate::header::HeaderFormat;
use crate::packet::{CompressedBitmap, Packet, PlainBitmap};
use crate::vli::{self, BitReader, BitWriter};

/// Read access to an out-of-sync bitmap: 64-bit words, bit `i` of word `w` is bit `64w + i`.
pub trait BitmapSource {
    /// Number of valid bits.
    fn bit_count(&self) -> u64;
    /// Word `index` (`index < bit_count().div_ceil(64)`).
    fn word(&self, index: u64) -> u64;
}

/// Write access for a receiver: only ever sets bits.
pub trait BitmapSink: BitmapSource {
    /// ORs `words` into the bitmap from word `first_word` on (bits past the end are dropped).
    fn or_words(&mut self, first_word: u64, words: &[u64]);
    /// Sets every bit of `range` (within `0..bit_count()`).
    fn set_bits(&mut self, range: Range<u64>);
}

impl BitmapSource for udrbd_meta::Bitmap {
    fn bit_count(&self) -> u64 {
        self.bits()
    }
    fn word(&self, index: u64) -> u64 {
        udrbd_meta::Bitmap::word(self, index as usize)
    }
}

impl BitmapSink for udrbd_meta::Bitmap {
    fn or_words(&mut self, first_word: u64, words: &[u64]) {
        udrbd_meta::Bitmap::or_words(self, first_word as usize, words);
    }
    fn set_bits(&mut self, range: Range<u64>) {
        self.set_range(range);
    }
}

/// Packets and bytes (header included) of one transfer, by kind; DRBD logs them at the end
/// ("send bitmap stats [Bytes(packets)]: plain ..., RLE ...").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransferStats {
    /// P_BITMAP packets.
    pub plain_packets: u64,
    /// Their bytes.
    pub plain_bytes: u64,
    /// P_COMPRESSED_BITMAP packets.
    pub compressed_packets: u64,
    /// Their bytes.
    pub compressed_bytes: u64,
}

/// Where a transfer stands (`struct bm_xfer_ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Progress {
    bit_count: u64,
    word_count: u64,
    bit_offset: u64,
    word_offset: u64,
    header_size: u32,
}

impl Progress {
    fn new(bit_count: u64, format: HeaderFormat) -> Progress {
        Progress {
            bit_count,
            word_count: bit_count.div_ceil(64),
            bit_offset: 0,
            word_offset: 0,
            header_size: format.header_size() as u32,
        }
    }

    /// Words of the next plain packet: the receiver demands exactly this many.
    fn plain_words(&self) -> u64 {
        let per_packet = u64::from((BITMAP_PACKET_MAX - self.header_size) / 8);
        per_packet.min(self.word_count - self.word_offset)
    }

    /// Largest code of a compressed packet (the encoding byte takes one).
    fn code_capacity(&self) -> usize {
        (BITMAP_PACKET_MAX - self.header_size - 1) as usize
    }

    fn advance_words(&mut self, words: u64) {
        self.word_offset += words;
        self.bit_offset = (self.word_offset * 64).min(self.bit_count);
    }

    fn set_bit_offset(&mut self, bit: u64) {
        self.bit_offset = bit;
        self.word_offset = bit / 64;
    }

    fn invariants(&self) {
        assert!(self.bit_offset <= self.bit_count);
        assert!(self.word_offset <= self.word_count);
    }
}

/// The mask of the valid bits of word `index`.
fn valid_mask(bit_count: u64, index: u64) -> u64 {
    let end = bit_count - index * 64;
    if end >= 64 {
        u64::MAX
    } else {
        (1u64 << end) - 1
    }
}

/// The first bit at or after `from` whose value is `set`, or `bit_count`.
fn find_next(bitmap: &impl BitmapSource, bit_count: u64, from: u64, set: bool) -> u64 {
    if from >= bit_count {
        return bit_count;
    }
    let load = |w: u64| {
        let word = bitmap.word(w);
        if set { word } else { !word }
    };
    let mut index = from / 64;
    let mut word = load(index) & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            return (index * 64 + u64::from(word.trailing_zeros())).min(bit_count);
        }
        index += 1;
        if index * 64 >= bit_count {
            return bit_count;
        }
        word = load(index);
    }
}

/// Sends a bitmap: call [`BitmapSender::next_packet`] until it returns `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapSender {
    progress: Progress,
    use_rle: bool,
    done: bool,
    stats: TransferStats,
}

impl BitmapSender {
    /// A transfer of a bitmap of `bit_count` bits. `use_rle` is the net option use-rle
    /// (default yes) and requires an agreed protocol >= 90.
    pub fn new(bit_count: u64, format: HeaderFormat, use_rle: bool) -> BitmapSender {
        BitmapSender {
            progress: Progress::new(bit_count, format),
            use_rle,
            done: false,
            stats: TransferStats::default(),
        }
    }

    /// The next packet (P_COMPRESSED_BITMAP or P_BITMAP), `None` once the transfer is done.
    /// `bitmap` must be the same, unchanged bitmap on every call.
    pub fn next_packet(&mut self, bitmap: &impl BitmapSource) -> Option<Packet> {
        assert_eq!(
            bitmap.bit_count(),
            self.progress.bit_count,
            "bitmap changed size"
        );
        if self.done {
            return None;
        }
        let header = u64::from(self.progress.header_size);
        let packet = if let Some(compressed) = self.try_compress(bitmap) {
            self.stats.compressed_packets += 1;
            self.stats.compressed_bytes += header + 1 + compressed.code.len() as u64;
            self.done = self.progress.bit_offset >= self.progress.bit_count;
            Packet::CompressedBitmap(compressed)
        } else {
            let p = &self.progress;
            let count = p.plain_words();
            let words: Vec<u64> = (p.word_offset..p.word_offset + count)
                .map(|w| bitmap.word(w) & valid_mask(p.bit_count, w))
                .collect();
            self.progress.advance_words(count);
            self.stats.plain_packets += 1;
            self.stats.plain_bytes += header + count * 8;
            self.done = count == 0;
            Packet::Bitmap(PlainBitmap::from_words(&words))
        };
        self.progress.invariants();
        Some(packet)
    }

    /// Whether the last packet was produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Packets and bytes so far.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    /// `fill_bitmap_rle_bits`: runs from the bit offset until the code buffer is full or the
    /// bitmap ends. Returns `None` (after rewinding to a word boundary) when the code would not
    /// be shorter than the plain bits it covers, or when RLE is off or nothing is left.
    fn try_compress(&mut self, bitmap: &impl BitmapSource) -> Option<CompressedBitmap> {
        let p = &mut self.progress;
        if !self.use_rle || p.bit_offset >= p.bit_count {
            return None;
        }
        let start = p.bit_offset;
        let mut writer = BitWriter::new(p.code_capacity());
        let first_run_set = find_next(bitmap, p.bit_count, start, true) == start;
        let mut run_set = first_run_set;
        let mut offset = start;
        while offset < p.bit_count {
            let end = find_next(bitmap, p.bit_count, offset, !run_set);
            let (code, bits) = vli::encode(end - offset).expect("runs are 1..=2^56");
            if !writer.put(code, bits) {
                break;
            }
            offset = end;
            run_set = !run_set;
        }
        let plain_bits = offset - start;
        let code_bytes = writer.bit_len().div_ceil(8);
        if plain_bits < code_bytes * 8 {
            // Incompressible here: the plain packet starts at the word holding `start`.
            p.set_bit_offset(start);
            p.bit_offset = p.word_offset * 64;
            return None;
        }
        p.set_bit_offset(offset);
        let pad_bits = ((8 - writer.bit_len() % 8) % 8) as u8;
        Some(CompressedBitmap {
            first_run_set,
            pad_bits,
            code: Bytes::from(writer.into_bytes()),
        })
    }
}

/// Why a bitmap transfer failed (the kernel drops the connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// Some other packet arrived while the bitmap was expected.
    #[error("command {command:#06x} arrived during the bitmap exchange")]
    NotABitmapPacket {
        /// Its command number.
        command: u16,
    },
    /// A packet after the transfer ended.
    #[error("bitmap packet after the transfer ended")]
    AlreadyDone,
    /// A P_BITMAP whose length differs from the chunking rule.
    #[error("P_BITMAP of {received} bytes at word {word_offset}, expected {expected}")]
    PlainLength {
        /// The word offset it would start at.
        word_offset: u64,
        /// Bytes the rule demands.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// A P_COMPRESSED_BITMAP without code bytes or larger than a packet.
    #[error("P_COMPRESSED_BITMAP with {length} code bytes, expected 1..={max}")]
    CompressedLength {
        /// Code bytes.
        length: u64,
        /// The limit.
        max: u64,
    },
    /// A run reaching past the last bit.
    #[error("bitmap run {start}..{end} reaches past bit {bit_count}")]
    RunPastEnd {
        /// First bit of the run.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// Bits in the bitmap.
        bit_count: u64,
    },
    /// The code stream ends inside a code.
    #[error("truncated VLI code at stream bit {position}")]
    TruncatedCode {
        /// Bit position in the stream.
        position: u64,
    },
    /// The bitmap changed size during the transfer (the device's agreed size changed: a
    /// P_SIZES between two bitmap packets, which no honest peer sends, as DRBD sends its
    /// bitmap packets back to back and its receiver takes nothing else until the last).
    #[error("the bitmap changed size during the transfer: {began} bits, now {now}")]
    SizeChanged {
        /// Bits when the transfer began.
        began: u64,
        /// Bits now.
        now: u64,
    },
}

/// Whether the transfer goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BitmapProgress {
    /// More packets are expected.
    More,
    /// The peer's bitmap is complete.
    Done,
}

/// Receives a bitmap: feed every P_BITMAP / P_COMPRESSED_BITMAP to
/// [`BitmapReceiver::receive`] until it reports [`BitmapProgress::Done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapReceiver {
    progress: Progress,
    done: bool,
    stats: TransferStats,
}

impl BitmapReceiver {
    /// A transfer into a bitmap of `bit_count` bits.
    pub fn new(bit_count: u64, format: HeaderFormat) -> BitmapReceiver {
        BitmapReceiver {
            progress: Progress::new(bit_count, format),
            done: false,
            stats: TransferStats::default(),
        }
    }

    /// Consumes one packet, ORing its bits into `bitmap`.
    pub fn receive(
        &mut self,
        packet: &Packet,
        bitmap: &mut impl BitmapSink,
    ) -> Result<BitmapProgress, BitmapError> {
        match packet {
            Packet::Bitmap(plain) => self.receive_plain(plain, bitmap),
            Packet::CompressedBitmap(c) => self.receive_compressed(c, bitmap),
            other => Err(BitmapError::NotABitmapPacket {
                command: other.command_number(),
            }),
        }
    }

    /// `receive_bitmap_plain`.
    pub fn receive_plain(
        &mut self,
        chunk: &PlainBitmap,
        bitmap: &mut impl BitmapSink,
    ) -> Result<BitmapProgress, BitmapError> {
        self.check(bitmap)?;
        let p = &mut self.progress;
        let words = p.plain_words();
        if chunk.payload.len() as u64 != words * 8 {
            return Err(BitmapError::PlainLength {
                word_offset: p.word_offset,
                expected: words * 8,
                received: chunk.payload.len() as u64,
            });
        }
        self.stats.plain_packets += 1;
        self.stats.plain_bytes += u64::from(p.header_size) + words * 8;
        if words == 0 {
            self.done = true;
            return Ok(BitmapProgress::Done);
        }
        let values: Vec<u64> = chunk.words().collect();
        bitmap.or_words(p.word_offset, &values);
        p.advance_words(words);
        p.invariants();
        Ok(BitmapProgress::More)
    }

    /// `recv_bm_rle_bits`.
    pub fn receive_compressed(
        &mut self,
        packet: &CompressedBitmap,
        bitmap: &mut impl BitmapSink,
    ) -> Result<BitmapProgress, BitmapError> {
        self.check(bitmap)?;
        let p = &mut self.progress;
        let max = p.code_capacity() as u64;
        let length = packet.code.len() as u64;
        if length == 0 || length > max {
            return Err(BitmapError::CompressedLength { length, max });
        }
        self.stats.compressed_packets += 1;
        self.stats.compressed_bytes += u64::from(p.header_size) + 1 + length;
        let mut reader = BitReader::new(&packet.code, packet.pad_bits);
        let mut start = p.bit_offset;
        let mut run_set = packet.first_run_set;
        while reader.remaining() > 0 {
            let (look_ahead, available) = reader.peek();
            let (run, bits) = vli::decode(look_ahead);
            if bits > available {
                return Err(BitmapError::TruncatedCode {
                    position: reader.position(),
                });
            }
            // Clear runs past the end are refused too (the kernel only checks set runs, but
            // its sender never produces either).
            let end = start.saturating_add(run);
            if end > p.bit_count {
                return Err(BitmapError::RunPastEnd {
                    start,
                    end,
                    bit_count: p.bit_count,
                });
            }
            if run_set {
                bitmap.set_bits(start..end);
            }
            start = end;
            run_set = !run_set;
            reader.advance(bits);
        }
        p.set_bit_offset(start);
        p.invariants();
        self.done = start == p.bit_count;
        Ok(if self.done {
            BitmapProgress::Done
        } else {
            BitmapProgress::More
        })
    }

    /// Whether the transfer is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Packets and bytes so far.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    fn check(&self, bitmap: &impl BitmapSink) -> Result<(), BitmapError> {
        if bitmap.bit_count() != self.progress.bit_count {
            return Err(BitmapError::SizeChanged {
                began: self.progress.bit_count,
                now: bitmap.bit_count(),
            });
        }
        if self.done {
            return Err(BitmapError::AlreadyDone);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use udrbd_meta::Bitmap;

    fn transfer(bitmap: &Bitmap, format: HeaderFormat, rle: bool) -> (Vec<Packet>, Bitmap) {
        let mut sender = BitmapSender::new(bitmap.bits(), format, rle);
        let mut receiver = BitmapReceiver::new(bitmap.bits(), format);
        let mut received = Bitmap::new(bitmap.bits());
        let mut packets = Vec::new();
        while let Some(packet) = sender.next_packet(bitmap) {
            let progress = receiver.receive(&packet, &mut received).unwrap();
            packets.push(packet);
            assert_eq!(progress == BitmapProgress::Done, sender.is_done());
        }
        assert!(receiver.is_done());
        (packets, received)
    }

    #[test]
    fn all_set_2038_bits_is_one_captured_packet() {
        let mut bm = Bitmap::new(2038);
        bm.set_all();
        let (packets, received) = transfer(&bm, HeaderFormat::Long, true);
        assert_eq!(received.words(), bm.words());
        let Packet::CompressedBitmap(c) = &packets[0] else {
            panic!()
        };
        assert_eq!(packets.len(), 1);
        assert_eq!(c.encoding(), 0xb2);
        assert_eq!(&c.code[..], [0x3f, 0xc5, 0x06]);
    }

    #[test]
    fn plain_transfer_ends_with_an_empty_packet() {
        let mut bm = Bitmap::new(2038);
        for b in [1, 300, 2037] {
            bm.set_range(b..b + 1);
        }
        bm.set_range(1280..1296);
        let (packets, received) = transfer(&bm, HeaderFormat::Long, false);
        assert_eq!(packets.len(), 2);
        let Packet::Bitmap(first) = &packets[0] else {
            panic!()
        };
        assert_eq!(first.word_count(), 32);
        assert_eq!(packets[1], Packet::Bitmap(PlainBitmap::default()));
        assert_eq!(received.words(), bm.words());
    }

    #[test]
    fn chunking_is_511_or_510_words() {
        let bits = 64 * 1200;
        let mut bm = Bitmap::new(bits);
        bm.set_range(0..bits);
        for (format, sizes) in [
            (HeaderFormat::Short, [511, 511, 178, 0]),
            (HeaderFormat::Long, [510, 510, 180, 0]),
        ] {
            let (packets, received) = transfer(&bm, format, false);
            let counts: Vec<usize> = packets
                .iter()
                .map(|p| match p {
                    Packet::Bitmap(b) => b.word_count(),
                    _ => panic!(),
                })
                .collect();
            assert_eq!(counts, sizes);
            assert_eq!(received.words(), bm.words());
        }
    }

    /// A bitmap that changes size between two packets of one transfer is an error, not a
    /// panic: the bits of the first packet were laid out for the old size.
    #[test]
    fn a_bitmap_that_changed_size_during_the_transfer_is_an_error() {
        let bits = 64 * 1200;
        let mut receiver = BitmapReceiver::new(bits, HeaderFormat::Long);
        let mut bm = Bitmap::new(bits);
        let first = Packet::Bitmap(PlainBitmap::from_words(&[u64::MAX; 510]));
        assert_eq!(receiver.receive(&first, &mut bm), Ok(BitmapProgress::More));
        let mut smaller = Bitmap::new(bits / 2);
        assert_eq!(
            receiver.receive(&first, &mut smaller),
            Err(BitmapError::SizeChanged {
                began: bits,
                now: bits / 2
            })
        );
        assert_eq!(smaller.count(), 0, "nothing merged into the resized bitmap");
    }

    #[test]
    fn wrong_chunk_length_is_an_error() {
        let mut receiver = BitmapReceiver::new(64 * 600, HeaderFormat::Long);
        let mut bm = Bitmap::new(64 * 600);
        let short = Packet::Bitmap(PlainBitmap::from_words(&[0; 509]));
        assert_eq!(
            receiver.receive(&short, &mut bm),
            Err(BitmapError::PlainLength {
                word_offset: 0,
                expected: 4080,
                received: 4072
            })
        );
        let empty_too_early = Packet::Bitmap(PlainBitmap::default());
        assert!(receiver.receive(&empty_too_early, &mut bm).is_err());
        assert_eq!(
            receiver.receive(&Packet::Ping, &mut bm),
            Err(BitmapError::NotABitmapPacket { command: 0x13 })
        );
    }

    #[test]
    fn incompressible_falls_back_to_plain_and_ends_with_empty() {
        let bits = 64 * 100;
        let mut bm = Bitmap::new(bits);
        for b in (0..bits).step_by(2) {
            bm.set_range(b..b + 1);
        }
        let (packets, received) = transfer(&bm, HeaderFormat::Long, true);
        assert_eq!(received.words(), bm.words());
        assert_eq!(packets.len(), 2);
        assert!(matches!(&packets[0], Packet::Bitmap(b) if b.word_count() == 100));
        assert_eq!(packets[1], Packet::Bitmap(PlainBitmap::default()));
    }

    #[test]
    fn mixed_transfer_compresses_runs_and_sends_noise_plain() {
        let bits = 64 * 4000;
        let mut bm = Bitmap::new(bits);
        bm.set_range(1000..50_000);
        // Noise: a xorshift sequence, far from compressible.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u64> = (0..1500)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        bm.or_words(1000, &noise);
        bm.set_range(180_000..200_000);
        let (packets, received) = transfer(&bm, HeaderFormat::Long, true);
        assert_eq!(received.words(), bm.words());
        let kinds: Vec<char> = packets
            .iter()
            .map(|p| match p {
                Packet::CompressedBitmap(_) => 'c',
                Packet::Bitmap(b) if b.word_count() == 0 => 'e',
                _ => 'p',
            })
            .collect();
        let kinds: String = kinds.into_iter().collect();
        // The runs and the start of the noise compress (long runs pay for the noise), then
        // noise words go plain (510 per packet, from the word where compression stopped), and
        // once the remaining noise plus the last runs compress again, that packet ends the
        // transfer: no empty terminator.
        assert_eq!(kinds, "cppc");
        assert!(!kinds.contains('e'), "{kinds}");
    }

    #[test]
    fn run_past_the_end_is_refused() {
        // One set run of 2038 into a bitmap of 2000 bits.
        let packet = Packet::CompressedBitmap(CompressedBitmap {
            first_run_set: true,
            pad_bits: 3,
            code: Bytes::from_static(&[0x3f, 0xc5, 0x06]),
        });
        let mut bm = Bitmap::new(2000);
        let mut receiver = BitmapReceiver::new(2000, HeaderFormat::Long);
        assert!(matches!(
            receiver.receive(&packet, &mut bm),
            Err(BitmapError::RunPastEnd { end: 2038, .. })
        ));
        // The same code with 4 pad bits loses its last real bit: truncated.
        let truncated = Packet::CompressedBitmap(CompressedBitmap {
            first_run_set: true,
            pad_bits: 4,
            code: Bytes::from_static(&[0x3f, 0xc5, 0x06]),
        });
        let mut receiver = BitmapReceiver::new(2038, HeaderFormat::Long);
        let mut bm = Bitmap::new(2038);
        assert!(matches!(
            receiver.receive(&truncated, &mut bm),
            Err(BitmapError::TruncatedCode { position: 0 })
        ));
    }

    #[test]
    fn empty_bitmap_sends_one_empty_plain_packet() {
        let bm = Bitmap::new(0);
        let (packets, _) = transfer(&bm, HeaderFormat::Long, true);
        assert_eq!(packets, [Packet::Bitmap(PlainBitmap::default())]);
    }
}
