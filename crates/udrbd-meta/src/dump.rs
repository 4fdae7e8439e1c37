//! The `dump-md` text of v08 meta-data: a streaming renderer that prints exactly what
//! drbdmeta 9.22 prints (except its leading comment lines and its always-zero `flags`), and
//! the parser `restore-md` uses (drbd-v08-facts.md §2.4).
//!
//! ```text
//! version "v08";
//!
//! # md_size_sect 88                     <- absolute byte offsets in the next three
//! # md_offset 268431360
//! # al_offset 268398592
//! # bm_offset 268390400
//!
//! uuid {
//!     0x1111111122222222; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;
//!     flags 0x00000080;
//! }
//! # al-extents 257;
//! la-size-sect 524200;
//! bm-byte-per-bit 4096;
//! device-uuid 0x0000000000000000;
//! la-peer-max-bio-size 1048576;
//! al-stripes 1;
//! al-stripe-size-4k 8;
//! # bm-bytes 8192;
//! bm {
//!    # at 0kB
//!     0x0000000000000001; 0x8000000000000000; 0x00000000FFFFFFFF; 0x0123456789ABCDEF;
//!     20 times 0xFFFFFFFFFFFFFFFF;
//! }
//! # bits-set 2178;
//! ```
//!
//! Bitmap lines: at every word index that is a multiple of 4 a line starts; at a line start
//! that is a multiple of 32 a `# at <256*w>kB` comment precedes it. At a line start whose word
//! has equal 32-bit halves, the run of equal words is counted, rounded down to a multiple of
//! 4, and printed as `N times 0x…;` when at least 8. The renderer keeps the pending words
//! run-length encoded, so a run of any length costs constant memory.

use std::io::{self, Write};

use crate::layout::Layout;
use crate::superblock::Superblock;

/// Words per dump line.
const WORDS_PER_LINE: u64 = 4;
/// A `# at` comment every 32 words (8 MiB of data).
const WORDS_PER_AT_COMMENT: u64 = 32;
/// Runs shorter than this are printed word by word.
const MIN_RUN: u64 = 8;

/// Writes the part of the dump before the bitmap words, from `version` to `bm {`.
/// `header_comments` are the leading `#` lines (without the `#`), e.g. date and command.
pub fn write_header(
    out: &mut dyn Write,
    header_comments: &[String],
    layout: &Layout,
    sb: &Superblock,
    bm_bytes: u64,
) -> io::Result<()> {
    writeln!(out, "# DRBD meta data dump")?;
    for line in header_comments {
        writeln!(out, "# {line}")?;
    }
    writeln!(out, "#\n")?;
    writeln!(out, "version \"v08\";\n")?;
    if !sb.is_clean() {
        writeln!(
            out,
            "This_is_an_unclean_meta_data_dump._Don't_trust_the_bitmap."
        )?;
        writeln!(
            out,
            "# You should \"apply-al\" first, if you plan to restore this.\n"
        )?;
    }
    writeln!(out, "# md_size_sect {}", layout.md_size_sect)?;
    writeln!(out, "# md_offset {}", layout.superblock_byte())?;
    writeln!(out, "# al_offset {}", layout.al_byte())?;
    writeln!(out, "# bm_offset {}\n", layout.bm_byte())?;
    writeln!(out, "uuid {{")?;
    let u = sb.uuids.to_array();
    writeln!(
        out,
        "    0x{:016X}; 0x{:016X}; 0x{:016X}; 0x{:016X};",
        u[0], u[1], u[2], u[3]
    )?;
    writeln!(out, "    flags 0x{:08X};", sb.flags.0)?;
    writeln!(out, "}}")?;
    writeln!(out, "# al-extents {};", sb.al_nr_extents)?;
    writeln!(out, "la-size-sect {};", sb.la_size_sect)?;
    writeln!(out, "bm-byte-per-bit {};", sb.bm_bytes_per_bit)?;
    writeln!(out, "device-uuid 0x{:016X};", sb.device_uuid)?;
    writeln!(out, "la-peer-max-bio-size {};", sb.la_peer_max_bio_size)?;
    writeln!(out, "al-stripes {};", sb.al_stripes)?;
    writeln!(out, "al-stripe-size-4k {};", sb.al_stripe_size_4k)?;
    writeln!(out, "# bm-bytes {bm_bytes};")?;
    write!(out, "bm {{")
}

/// Renders bitmap words pushed in order, with constant memory: between pushes it keeps only an
/// undecided tail, which is either fewer than 4 words or one run of equal words (kept as value
/// and count, so a run of any length costs nothing).
pub struct BitmapRenderer<W: Write> {
    out: W,
    buf: Vec<u8>,
    /// Undecided words at a line start: fewer than 4, or a short run.
    small: Vec<u64>,
    /// An undecided run of equal, compressible words at a line start: (value, count).
    run: Option<(u64, u64)>,
    /// Index of the next word to print.
    position: u64,
    bits_set: u64,
}

impl<W: Write> BitmapRenderer<W> {
    /// A renderer writing to `out` (after [`write_header`]).
    pub fn new(out: W) -> Self {
        BitmapRenderer {
            out,
            buf: Vec::with_capacity(1 << 17),
            small: Vec::with_capacity(16),
            run: None,
            position: 0,
            bits_set: 0,
        }
    }

    /// Adds the next words of the bitmap.
    pub fn push(&mut self, words: &[u64]) -> io::Result<()> {
        self.bits_set += words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        let mut chunk = words;
        while !chunk.is_empty() {
            if let Some((value, count)) = self.run.take() {
                let more = chunk.iter().take_while(|&&w| w == value).count();
                if more == chunk.len() {
                    self.run = Some((value, count + more as u64));
                    return Ok(());
                }
                chunk = &chunk[more..];
                self.decide_run(value, count + more as u64);
            }
            if !self.small.is_empty() {
                // Decide the carried words together with the start of this chunk.
                let take = chunk.len().min(64);
                let mut joined = std::mem::take(&mut self.small);
                let carried = joined.len();
                joined.extend_from_slice(&chunk[..take]);
                let consumed = self.process(&joined, false);
                if consumed < carried || consumed == joined.len() {
                    self.keep_undecided(&joined[consumed..]);
                    chunk = &chunk[take..];
                    continue;
                }
                chunk = &chunk[consumed - carried..];
            }
            let consumed = self.process(chunk, false);
            self.keep_undecided(&chunk[consumed..]);
            break;
        }
        self.flush_if_large()
    }

    /// Prints what is left, closes the block and prints `# bits-set`. Returns the count.
    pub fn finish(mut self) -> io::Result<u64> {
        if let Some((value, count)) = self.run.take() {
            self.decide_run(value, count);
        }
        let rest = std::mem::take(&mut self.small);
        self.process(&rest, true);
        self.buf.extend_from_slice(b"\n}\n");
        writeln!(self.buf, "# bits-set {};", self.bits_set)?;
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(self.bits_set)
    }

    /// A run of `count` equal words at a line start has ended: print its multiple-of-4 part
    /// as one line if that is at least 8; the rest is printed word by word later.
    fn decide_run(&mut self, value: u64, count: u64) {
        debug_assert!(self.small.is_empty());
        let run = count - count % WORDS_PER_LINE;
        let rest = if run >= MIN_RUN {
            self.begin_line();
            write_run(&mut self.buf, run, value);
            self.position += run;
            count - run
        } else {
            count
        };
        self.small.extend(std::iter::repeat_n(value, rest as usize));
    }

    /// Keeps an undecided tail (it starts at a line start).
    fn keep_undecided(&mut self, rest: &[u64]) {
        debug_assert!(self.small.is_empty() && self.run.is_none());
        match rest.first() {
            Some(&v) if rest.len() >= 4 && rest.iter().all(|&w| w == v) => {
                self.run = Some((v, rest.len() as u64));
            }
            _ => self.small.extend_from_slice(rest),
        }
    }

    /// Prints every line of `words` (which starts at a line start) that can be decided;
    /// returns how many words were printed. Unless `at_end`, it stops before fewer than 4
    /// words, or before a run of compressible words that reaches the end of `words`.
    fn process(&mut self, words: &[u64], at_end: bool) -> usize {
        let mut w = 0;
        while w < words.len() {
            debug_assert!(self.position.is_multiple_of(WORDS_PER_LINE));
            let value = words[w];
            if halves_equal(value) {
                let n = words[w..].iter().take_while(|&&x| x == value).count();
                if w + n == words.len() && !at_end {
                    return w;
                }
                let run = (n - n % WORDS_PER_LINE as usize) as u64;
                if run >= MIN_RUN {
                    self.begin_line();
                    write_run(&mut self.buf, run, value);
                    self.position += run;
                    w += run as usize;
                    continue;
                }
            }
            let line = (words.len() - w).min(WORDS_PER_LINE as usize);
            if line < WORDS_PER_LINE as usize && !at_end {
                return w;
            }
            self.begin_line();
            for &x in &words[w..w + line] {
                write_word(&mut self.buf, x);
            }
            self.position += line as u64;
            w += line;
        }
        words.len()
    }

    fn begin_line(&mut self) {
        self.buf.extend_from_slice(b"\n   ");
        if self.position.is_multiple_of(WORDS_PER_AT_COMMENT) {
            let _ = write!(self.buf, "# at {}kB\n   ", self.position * 256);
        }
    }

    fn flush_if_large(&mut self) -> io::Result<()> {
        if self.buf.len() >= 1 << 16 {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn halves_equal(w: u64) -> bool {
    (w >> 32) == (w & 0xFFFF_FFFF)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_hex16(buf: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 16];
    for (i, pair) in digits.chunks_exact_mut(2).enumerate() {
        let byte = (v >> (56 - 8 * i)) as u8;
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xF)];
    }
    buf.extend_from_slice(&digits);
}

fn write_word(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(b" 0x");
    push_hex16(buf, v);
    buf.push(b';');
}

fn write_run(buf: &mut Vec<u8>, count: u64, v: u64) {
    let _ = write!(buf, " {count} times 0x");
    push_hex16(buf, v);
    buf.push(b';');
}

/// Renders a whole bitmap into a string (tests and small dumps).
pub fn render_bitmap(words: &[u64]) -> String {
    let mut out = Vec::new();
    out.extend_from_slice(b"bm {");
    let mut r = BitmapRenderer::new(&mut out);
    r.push(words).expect("writing to a Vec");
    r.finish().expect("writing to a Vec");
    String::from_utf8(out).expect("ASCII")
}

// ---------------------------------------------------------------------------------------------
// Parser (restore-md)
// ---------------------------------------------------------------------------------------------

/// A parsed dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpFile {
    /// current, bitmap, history start, history end.
    pub uuids: [u64; 4],
    /// MDF flags.
    pub flags: u32,
    /// Last agreed size, sectors.
    pub la_size_sect: u64,
    /// Bitmap granularity.
    pub bm_bytes_per_bit: u64,
    /// Device UUID.
    pub device_uuid: u64,
    /// Last peer max BIO size.
    pub la_peer_max_bio_size: u64,
    /// AL stripes (1 when the dump has none, as in pre-8.4.3 dumps).
    pub al_stripes: u32,
    /// AL stripe size in 4 KiB blocks (8 when the dump has none).
    pub al_stripe_size_4k: u32,
    /// Bitmap words from the start of the bitmap.
    pub words: Vec<u64>,
}

/// What went wrong where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {kind}")]
pub struct DumpParseError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// Byte range of the offending token in the input (empty at the end of input).
    pub span: (usize, usize),
    /// What went wrong.
    pub kind: DumpErrorKind,
}

/// The kinds of dump syntax errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DumpErrorKind {
    /// Another token was expected.
    #[error("expected {0}")]
    Expected(&'static str),
    /// The input ended before the dump did.
    #[error("unexpected end of file, expected {0} (truncated dump?)")]
    UnexpectedEof(&'static str),
    /// A hex number with the wrong number of digits.
    #[error("invalid hex number (only 8 or 16 hex digits accepted)")]
    BadHex,
    /// A decimal number that does not fit.
    #[error("number out of range")]
    NumberOutOfRange,
    /// Only format v08 is handled.
    #[error("unsupported meta-data version (expected \"v08\")")]
    WrongVersion,
    /// bm-byte-per-bit other than 4096.
    #[error("bm-byte-per-bit must be 4096")]
    BadBytesPerBit,
    /// More bitmap words than the bitmap area holds.
    #[error("bitmap longer than the bitmap area of the device")]
    BitmapTooLong,
    /// A string that never ends.
    #[error("unterminated string")]
    UnterminatedString,
    /// A character that starts no token.
    #[error("unexpected character")]
    BadCharacter,
}

impl DumpParseError {
    /// Whether the input simply ended too early.
    pub fn is_truncation(&self) -> bool {
        matches!(self.kind, DumpErrorKind::UnexpectedEof(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Word,
    Str,
    Punct(u8),
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: TokenKind,
    start: usize,
    end: usize,
    line: u32,
    column: u32,
}

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    line: u32,
    line_start: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text: text.as_bytes(),
            pos: 0,
            line: 1,
            line_start: 0,
        }
    }

    fn error_here(&self, kind: DumpErrorKind) -> DumpParseError {
        DumpParseError {
            line: self.line,
            column: (self.pos - self.line_start + 1) as u32,
            span: (self.pos, self.pos),
            kind,
        }
    }

    fn skip_blanks(&mut self) {
        while let Some(&c) = self.text.get(self.pos) {
            match c {
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                    self.line_start = self.pos;
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'#' => {
                    while self.text.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn next(&mut self) -> Result<Option<Token>, DumpParseError> {
        self.skip_blanks();
        let Some(&c) = self.text.get(self.pos) else {
            return Ok(None);
        };
        let start = self.pos;
        let column = (start - self.line_start + 1) as u32;
        let kind = match c {
            b'{' | b'}' | b';' => {
                self.pos += 1;
                TokenKind::Punct(c)
            }
            b'"' => {
                self.pos += 1;
                while self
                    .text
                    .get(self.pos)
                    .is_some_and(|&c| c != b'"' && c != b'\n')
                {
                    self.pos += 1;
                }
                if self.text.get(self.pos) != Some(&b'"') {
                    return Err(DumpParseError {
                        line: self.line,
                        column,
                        span: (start, self.pos),
                        kind: DumpErrorKind::UnterminatedString,
                    });
                }
                self.pos += 1;
                TokenKind::Str
            }
            c if is_word_byte(c) => {
                while self.text.get(self.pos).is_some_and(|&c| is_word_byte(c)) {
                    self.pos += 1;
                }
                TokenKind::Word
            }
            _ => return Err(self.error_here(DumpErrorKind::BadCharacter)),
        };
        Ok(Some(Token {
            kind,
            start,
            end: self.pos,
            line: self.line,
            column,
        }))
    }
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'\'')
}

struct Parser<'a> {
    scanner: Scanner<'a>,
    text: &'a str,
    peeked: Option<Option<Token>>,
}

impl<'a> Parser<'a> {
    fn peek(&mut self) -> Result<Option<Token>, DumpParseError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.scanner.next()?);
        }
        Ok(self.peeked.expect("just filled"))
    }

    fn bump(&mut self, expected: &'static str) -> Result<Token, DumpParseError> {
        let token = match self.peeked.take() {
            Some(t) => t,
            None => self.scanner.next()?,
        };
        token.ok_or_else(|| {
            self.scanner
                .error_here(DumpErrorKind::UnexpectedEof(expected))
        })
    }

    fn text_of(&self, t: Token) -> &'a str {
        &self.text[t.start..t.end]
    }

    fn error(t: Token, kind: DumpErrorKind) -> DumpParseError {
        DumpParseError {
            line: t.line,
            column: t.column,
            span: (t.start, t.end),
            kind,
        }
    }

    fn keyword(&mut self, word: &'static str) -> Result<(), DumpParseError> {
        let t = self.bump(word)?;
        if t.kind == TokenKind::Word && self.text_of(t) == word {
            Ok(())
        } else {
            Err(Self::error(t, DumpErrorKind::Expected(word)))
        }
    }

    fn punct(&mut self, p: u8, expected: &'static str) -> Result<(), DumpParseError> {
        let t = self.bump(expected)?;
        if t.kind == TokenKind::Punct(p) {
            Ok(())
        } else {
            Err(Self::error(t, DumpErrorKind::Expected(expected)))
        }
    }

    fn hex(&mut self, digits: usize, expected: &'static str) -> Result<u64, DumpParseError> {
        let t = self.bump(expected)?;
        let s = self.text_of(t);
        let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) else {
            return Err(Self::error(t, DumpErrorKind::Expected(expected)));
        };
        if hex.len() != digits || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(Self::error(t, DumpErrorKind::BadHex));
        }
        u64::from_str_radix(hex, 16).map_err(|_| Self::error(t, DumpErrorKind::BadHex))
    }

    fn number(&mut self, expected: &'static str) -> Result<u64, DumpParseError> {
        let t = self.bump(expected)?;
        let s = self.text_of(t);
        if t.kind != TokenKind::Word || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(Self::error(t, DumpErrorKind::Expected(expected)));
        }
        s.parse()
            .map_err(|_| Self::error(t, DumpErrorKind::NumberOutOfRange))
    }

    /// `keyword NUMBER ;`
    fn numeric_field(
        &mut self,
        keyword: &'static str,
        what: &'static str,
    ) -> Result<u64, DumpParseError> {
        self.keyword(keyword)?;
        let n = self.number(what)?;
        self.punct(b';', "';'")?;
        Ok(n)
    }

    fn peek_is_word(&mut self, word: &str) -> Result<bool, DumpParseError> {
        Ok(match self.peek()? {
            Some(t) => t.kind == TokenKind::Word && self.text_of(t) == word,
            None => false,
        })
    }
}

/// Parses a dump. `max_words` bounds the bitmap (the bitmap area of the target device), so a
/// hostile `N times` cannot exhaust memory.
pub fn parse_dump(text: &str, max_words: u64) -> Result<DumpFile, DumpParseError> {
    let mut p = Parser {
        scanner: Scanner::new(text),
        text,
        peeked: None,
    };
    p.keyword("version")?;
    let t = p.bump("\"v08\"")?;
    if t.kind != TokenKind::Str {
        return Err(Parser::error(
            t,
            DumpErrorKind::Expected("a quoted version string"),
        ));
    }
    if p.text_of(t) != "\"v08\"" {
        return Err(Parser::error(t, DumpErrorKind::WrongVersion));
    }
    p.punct(b';', "';'")?;
    p.keyword("uuid")?;
    p.punct(b'{', "'{'")?;
    let mut uuids = [0u64; 4];
    for u in &mut uuids {
        *u = p.hex(16, "a UUID (0x and 16 hex digits)")?;
        p.punct(b';', "';'")?;
    }
    p.keyword("flags")?;
    let flags = p.hex(8, "flags (0x and 8 hex digits)")? as u32;
    p.punct(b';', "';'")?;
    p.punct(b'}', "'}'")?;
    let la_size_sect = p.numeric_field("la-size-sect", "a number of sectors")?;
    let bpb_token = p.peek()?;
    let bm_bytes_per_bit = p.numeric_field("bm-byte-per-bit", "a number of bytes")?;
    if bm_bytes_per_bit != 4096 {
        let t = bpb_token.expect("keyword was read");
        return Err(Parser::error(t, DumpErrorKind::BadBytesPerBit));
    }
    p.keyword("device-uuid")?;
    let device_uuid = p.hex(16, "a UUID (0x and 16 hex digits)")?;
    p.punct(b';', "';'")?;
    let mut dump = DumpFile {
        uuids,
        flags,
        la_size_sect,
        bm_bytes_per_bit,
        device_uuid,
        la_peer_max_bio_size: 0,
        al_stripes: 1,
        al_stripe_size_4k: 8,
        words: Vec::new(),
    };
    if p.peek_is_word("la-peer-max-bio-size")? {
        dump.la_peer_max_bio_size = p.numeric_field("la-peer-max-bio-size", "a number of bytes")?;
    }
    if p.peek_is_word("al-stripes")? {
        dump.al_stripes = u32_field(&mut p, "al-stripes")?;
        dump.al_stripe_size_4k = u32_field(&mut p, "al-stripe-size-4k")?;
    }
    p.keyword("bm")?;
    p.punct(b'{', "'{'")?;
    parse_bitmap_words(&mut p, max_words, &mut dump.words)?;
    if let Some(t) = p.peek()? {
        return Err(Parser::error(
            t,
            DumpErrorKind::Expected("end of file after the bitmap"),
        ));
    }
    Ok(dump)
}

fn u32_field(p: &mut Parser<'_>, keyword: &'static str) -> Result<u32, DumpParseError> {
    let t = p.peek()?;
    let n = p.numeric_field(keyword, "a number")?;
    u32::try_from(n).map_err(|_| {
        Parser::error(
            t.expect("keyword was read"),
            DumpErrorKind::NumberOutOfRange,
        )
    })
}

fn parse_bitmap_words(
    p: &mut Parser<'_>,
    max_words: u64,
    words: &mut Vec<u64>,
) -> Result<(), DumpParseError> {
    const WORD: &str = "a bitmap word (0x and 16 hex digits), 'N times 0x…' or '}'";
    loop {
        let t = p
            .peek()?
            .ok_or_else(|| p.scanner.error_here(DumpErrorKind::UnexpectedEof(WORD)))?;
        if t.kind == TokenKind::Punct(b'}') {
            p.bump(WORD)?;
            return Ok(());
        }
        let text = p.text_of(t);
        let (count, value) = if text.starts_with("0x") || text.starts_with("0X") {
            (1, p.hex(16, WORD)?)
        } else {
            let count = p.number(WORD)?;
            p.keyword("times")?;
            (count, p.hex(16, "a bitmap word (0x and 16 hex digits)")?)
        };
        p.punct(b';', "';'")?;
        if words.len() as u64 + count > max_words {
            return Err(Parser::error(t, DumpErrorKind::BitmapTooLong));
        }
        words.extend(std::iter::repeat_n(value, count as usize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{AlGeometry, Layout};
    use crate::superblock::{GenerationUuids, MdFlags};
    use proptest::prelude::*;

    /// The bitmap of the dump in drbd-v08-facts.md §2.4, printed by drbdmeta 9.22.
    #[test]
    fn golden_bitmap_text() {
        let mut words = vec![
            0x1,
            0x8000_0000_0000_0000,
            0xFFFF_FFFF,
            0x0123_4567_89AB_CDEF,
        ];
        words.extend([u64::MAX; 20]);
        words.extend([0xFFFF_FFFF; 9]);
        words.extend([0; 7]);
        words.extend([0x5555_5555_5555_5555; 8]);
        words.extend([0, 0, 0]);
        words.extend([0xAAAA_AAAA_AAAA_AAAA; 9]);
        words.extend([0; 964]);
        assert_eq!(words.len(), 1024);
        let expected = "bm {
   # at 0kB
    0x0000000000000001; 0x8000000000000000; 0x00000000FFFFFFFF; 0x0123456789ABCDEF;
    20 times 0xFFFFFFFFFFFFFFFF;
    0x00000000FFFFFFFF; 0x00000000FFFFFFFF; 0x00000000FFFFFFFF; 0x00000000FFFFFFFF;
    0x00000000FFFFFFFF; 0x00000000FFFFFFFF; 0x00000000FFFFFFFF; 0x00000000FFFFFFFF;
   # at 8192kB
    0x00000000FFFFFFFF; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;
    0x0000000000000000; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;
    8 times 0x5555555555555555;
    0x0000000000000000; 0x0000000000000000; 0x0000000000000000; 0xAAAAAAAAAAAAAAAA;
    8 times 0xAAAAAAAAAAAAAAAA;
    964 times 0x0000000000000000;
}
# bits-set 2178;
";
        assert_eq!(render_bitmap(&words), expected);
    }

    #[test]
    fn empty_bitmap() {
        assert_eq!(render_bitmap(&[]), "bm {\n}\n# bits-set 0;\n");
    }

    fn full_dump(words: &[u64], flags: u32) -> String {
        let layout = Layout::internal(256 << 20, AlGeometry::DEFAULT).unwrap();
        let mut sb = crate::Superblock::new_created(&layout, 1 << 20);
        sb.uuids = GenerationUuids::from_array([0x1111_1111_2222_2222, 5, 6, 7]);
        sb.flags = MdFlags(flags);
        sb.la_size_sect = 524_200;
        let mut out = Vec::new();
        write_header(&mut out, &["now".into()], &layout, &sb, 8192).unwrap();
        let mut r = BitmapRenderer::new(&mut out);
        r.push(words).unwrap();
        r.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dump_parses_back() {
        let words: Vec<u64> = (0..1024u64)
            .map(|i| if i % 7 == 0 { i * 0x0101 } else { 0 })
            .collect();
        let text = full_dump(&words, 0x81);
        let d = parse_dump(&text, 1 << 20).unwrap();
        assert_eq!(d.words, words);
        assert_eq!(d.flags, 0x81);
        assert_eq!(d.uuids, [0x1111_1111_2222_2222, 5, 6, 7]);
        assert_eq!((d.la_size_sect, d.la_peer_max_bio_size), (524_200, 1 << 20));
        assert_eq!((d.al_stripes, d.al_stripe_size_4k), (1, 8));
    }

    #[test]
    fn unclean_dump_does_not_parse() {
        let text = full_dump(&[0; 8], 0x01);
        let e = parse_dump(&text, 100).unwrap_err();
        assert_eq!((e.line, e.column), (7, 1));
        assert_eq!(e.kind, DumpErrorKind::Expected("uuid"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let text = full_dump(&[0; 8], 0x81);
        let broken = text.replace("la-size-sect 524200;", "la-size-sect 524200");
        let e = parse_dump(&broken, 100).unwrap_err();
        assert_eq!(e.kind, DumpErrorKind::Expected("';'"));
        assert_eq!(e.line, 18);
        let e = parse_dump(&text.replace("flags 0x00000081", "flags 0x0"), 100).unwrap_err();
        assert_eq!(e.kind, DumpErrorKind::BadHex);
        let truncated = &text[..text.len() / 2];
        assert!(parse_dump(truncated, 100).unwrap_err().is_truncation());
        assert_eq!(
            parse_dump(&text, 4).unwrap_err().kind,
            DumpErrorKind::BitmapTooLong
        );
    }

    /// A straightforward, non-streaming rendering of the rules, to check the streaming one.
    fn reference_render(words: &[u64]) -> String {
        let mut s = String::from("bm {");
        let mut w = 0;
        while w < words.len() {
            s.push_str("\n   ");
            if w % 32 == 0 {
                s.push_str(&format!("# at {}kB\n   ", w * 256));
            }
            let v = words[w];
            if halves_equal(v) {
                let n = words[w..].iter().take_while(|&&x| x == v).count();
                let run = n - n % 4;
                if run >= 8 {
                    s.push_str(&format!(" {run} times 0x{v:016X};"));
                    w += run;
                    continue;
                }
            }
            for &x in &words[w..(w + 4).min(words.len())] {
                s.push_str(&format!(" 0x{x:016X};"));
            }
            w += 4;
        }
        s.push('\n');
        let ones: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
        s.push_str(&format!("}}\n# bits-set {ones};\n"));
        s
    }

    proptest! {
        #[test]
        fn streaming_matches_reference(
            runs in proptest::collection::vec((0usize..6, 1usize..70), 0..40),
            chunk in 1usize..100,
        ) {
            let values = [0u64, u64::MAX, 0x5555_5555_5555_5555, 0xFFFF_FFFF, 1, 0x1234_5678_1234_5678];
            let words: Vec<u64> = runs.iter().flat_map(|&(v, n)| std::iter::repeat_n(values[v], n)).collect();
            let mut out = b"bm {".to_vec();
            let mut r = BitmapRenderer::new(&mut out);
            for c in words.chunks(chunk) {
                r.push(c).unwrap();
            }
            r.finish().unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), reference_render(&words));
        }

        #[test]
        fn parse_arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_dump(&text, 1000);
        }

        #[test]
        fn parse_mutated_dump_never_panics(cut in 0usize..2000, insert in "[ -~]{0,5}") {
            let text = full_dump(&[0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 5], 0x81);
            let cut = cut.min(text.len());
            let mutated = format!("{}{}{}", &text[..cut], insert, &text[cut..]);
            let _ = parse_dump(&mutated, 1000);
        }
    }
}
