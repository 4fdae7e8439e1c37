//! The out-of-sync bitmap (drbd-v08-facts.md §1.5).
//!
//! One bit per 4 KiB of data (bit `i` covers sectors `[8i, 8i+8)`); 1 = out of sync. On disk
//! it is an array of little-endian 64-bit words, read and written in 4 KiB pages (one page
//! covers 128 MiB of data). In memory it is exactly those words, so it costs DRBD's 32 MiB per
//! TiB of data, plus one dirty bit per page for lazy write-out.
//!
//! Invariants (checked by [`Bitmap::invariants`]):
//! - bits at or past `bits` are always 0 (the kernel keeps "surplus" bits clear);
//! - `set_count` equals the number of 1 bits;
//! - a page whose words changed since it was last marked clean is dirty.

use std::ops::Range;

/// Bytes per on-disk bitmap page.
pub const PAGE_BYTES: usize = 4096;
/// 64-bit words per page.
pub const WORDS_PER_PAGE: usize = PAGE_BYTES / 8;
/// Bits per page.
pub const BITS_PER_PAGE: u64 = (PAGE_BYTES * 8) as u64;

/// The in-memory bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    bits: u64,
    words: Vec<u64>,
    dirty: Vec<u64>,
    dirty_count: u64,
    set_count: u64,
}

impl Bitmap {
    /// A clear bitmap of `bits` bits.
    pub fn new(bits: u64) -> Bitmap {
        let words = bits.div_ceil(64) as usize;
        let pages = words.div_ceil(WORDS_PER_PAGE);
        Bitmap {
            bits,
            words: vec![0; words],
            dirty: vec![0; pages.div_ceil(64)],
            dirty_count: 0,
            set_count: 0,
        }
    }

    /// The bitmap for a device grown to `bits` bits (DRBD's drbd_bm_resize): the bits it has
    /// are kept, the new ones are set when `set_new_bits` (their blocks were never in sync),
    /// and every page is dirty, as the whole bitmap goes to a new place on the disk.
    /// A smaller `bits` drops the bits past it.
    pub fn resized(&self, bits: u64, set_new_bits: bool) -> Bitmap {
        let mut grown = Bitmap::new(bits);
        let kept = self.words.len().min(grown.words.len());
        grown.words[..kept].copy_from_slice(&self.words[..kept]);
        if let Some(last) = kept.checked_sub(1) {
            grown.words[last] &= grown.valid_mask(last);
        }
        grown.set_count = grown.words.iter().map(|w| u64::from(w.count_ones())).sum();
        if set_new_bits && bits > self.bits {
            grown.set_range(self.bits..bits);
        }
        grown.mark_all_dirty();
        grown
    }

    /// Number of bits.
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.words.len().div_ceil(WORDS_PER_PAGE) as u64
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.set_count
    }

    /// Word `i` (bits `64i .. 64i+64`).
    pub fn word(&self, i: usize) -> u64 {
        self.words[i]
    }

    /// All words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Whether bit `bit` is set.
    pub fn test(&self, bit: u64) -> bool {
        assert!(bit < self.bits, "bit {bit} beyond {}", self.bits);
        self.words[(bit / 64) as usize] >> (bit % 64) & 1 == 1
    }

    /// Sets the bits of `range` (clipped to the bitmap); returns how many were newly set.
    pub fn set_range(&mut self, range: Range<u64>) -> u64 {
        self.update_range(range, true)
    }

    /// Clears the bits of `range` (clipped to the bitmap); returns how many were newly cleared.
    pub fn clear_range(&mut self, range: Range<u64>) -> u64 {
        self.update_range(range, false)
    }

    /// Sets every bit (a full sync).
    pub fn set_all(&mut self) -> u64 {
        self.set_range(0..self.bits)
    }

    /// Counts the set bits of `range` (clipped).
    pub fn count_range(&self, range: Range<u64>) -> u64 {
        let (start, end) = (range.start.min(self.bits), range.end.min(self.bits));
        let mut n = 0;
        let mut bit = start;
        while bit < end {
            let w = (bit / 64) as usize;
            let lo = bit % 64;
            let hi = (end - (bit - lo)).min(64);
            n += u64::from((self.words[w] & mask(lo, hi)).count_ones());
            bit = bit - lo + hi;
        }
        n
    }

    /// The first set bit at or after `from`.
    pub fn find_next_set(&self, from: u64) -> Option<u64> {
        if from >= self.bits {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut word = self.words[w] & !((1u64 << (from % 64)) - 1);
        loop {
            if word != 0 {
                let bit = w as u64 * 64 + u64::from(word.trailing_zeros());
                return (bit < self.bits).then_some(bit);
            }
            w += 1;
            if w >= self.words.len() {
                return None;
            }
            word = self.words[w];
        }
    }

    /// ORs `words` into the bitmap starting at word `first_word` (receiving a peer's bitmap);
    /// returns how many bits were newly set. Surplus bits are dropped.
    pub fn or_words(&mut self, first_word: usize, words: &[u64]) -> u64 {
        let mut newly = 0;
        for (i, &w) in words.iter().enumerate() {
            let idx = first_word + i;
            if idx >= self.words.len() {
                break;
            }
            let added = w & !self.words[idx] & self.valid_mask(idx);
            if added != 0 {
                self.words[idx] |= added;
                newly += u64::from(added.count_ones());
                self.mark_dirty((idx / WORDS_PER_PAGE) as u64);
            }
        }
        self.set_count += newly;
        newly
    }

    /// The on-disk bytes of page `page` (little-endian words, zero past the end).
    pub fn page_bytes(&self, page: u64) -> [u8; PAGE_BYTES] {
        let mut out = [0u8; PAGE_BYTES];
        let first = page as usize * WORDS_PER_PAGE;
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            if let Some(w) = self.words.get(first + i) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    /// Loads page `page` from its on-disk bytes (surplus bits past `bits` are dropped). The
    /// page is clean afterwards: memory equals disk.
    pub fn load_page(&mut self, page: u64, bytes: &[u8]) {
        assert!(bytes.len() <= PAGE_BYTES);
        let first = page as usize * WORDS_PER_PAGE;
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let idx = first + i;
            if idx >= self.words.len() {
                break;
            }
            let mut le = [0u8; 8];
            le[..chunk.len()].copy_from_slice(chunk);
            let new = u64::from_le_bytes(le) & self.valid_mask(idx);
            let old = self.words[idx];
            self.set_count =
                self.set_count - u64::from(old.count_ones()) + u64::from(new.count_ones());
            self.words[idx] = new;
        }
        self.mark_clean(page);
    }

    /// Whether page `page` changed since it was last written.
    pub fn is_dirty(&self, page: u64) -> bool {
        self.dirty[(page / 64) as usize] >> (page % 64) & 1 == 1
    }

    /// Marks a page as needing write-out.
    pub fn mark_dirty(&mut self, page: u64) {
        if !self.is_dirty(page) {
            self.dirty[(page / 64) as usize] |= 1 << (page % 64);
            self.dirty_count += 1;
        }
    }

    /// Marks a page as written.
    pub fn mark_clean(&mut self, page: u64) {
        if self.is_dirty(page) {
            self.dirty[(page / 64) as usize] &= !(1 << (page % 64));
            self.dirty_count -= 1;
        }
    }

    /// Number of dirty pages.
    pub fn dirty_count(&self) -> u64 {
        self.dirty_count
    }

    /// Marks every page as needing write-out.
    pub fn mark_all_dirty(&mut self) {
        for p in 0..self.pages() {
            self.mark_dirty(p);
        }
    }

    /// The dirty pages, in order.
    pub fn dirty_pages(&self) -> Vec<u64> {
        let mut pages = Vec::with_capacity(self.dirty_count as usize);
        for (i, &w) in self.dirty.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                pages.push(i as u64 * 64 + u64::from(w.trailing_zeros()));
                w &= w - 1;
            }
        }
        pages
    }

    /// The pages holding bits `range`.
    pub fn pages_of(&self, range: Range<u64>) -> Range<u64> {
        if range.start >= range.end {
            return 0..0;
        }
        range.start / BITS_PER_PAGE..(range.end - 1) / BITS_PER_PAGE + 1
    }

    /// Checks the invariants in the module doc; panics on a violation (a bug).
    pub fn invariants(&self) {
        let ones: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        assert_eq!(ones, self.set_count, "cached count");
        let dirty: u64 = self.dirty.iter().map(|w| u64::from(w.count_ones())).sum();
        assert_eq!(dirty, self.dirty_count, "cached dirty count");
        if let Some(&last) = self.words.last() {
            let idx = self.words.len() - 1;
            assert_eq!(last & !self.valid_mask(idx), 0, "surplus bits set");
        }
    }

    /// The bits of word `idx` that lie inside the bitmap.
    fn valid_mask(&self, idx: usize) -> u64 {
        let start = idx as u64 * 64;
        if start + 64 <= self.bits {
            u64::MAX
        } else {
            mask(0, self.bits.saturating_sub(start))
        }
    }

    fn update_range(&mut self, range: Range<u64>, set: bool) -> u64 {
        let (start, end) = (range.start.min(self.bits), range.end.min(self.bits));
        let mut changed = 0;
        let mut bit = start;
        while bit < end {
            let w = (bit / 64) as usize;
            let lo = bit % 64;
            let hi = (end - (bit - lo)).min(64);
            let m = mask(lo, hi);
            let old = self.words[w];
            let new = if set { old | m } else { old & !m };
            if new != old {
                changed += u64::from((old ^ new).count_ones());
                self.words[w] = new;
                self.mark_dirty((w / WORDS_PER_PAGE) as u64);
            }
            bit = bit - lo + hi;
        }
        if set {
            self.set_count += changed;
        } else {
            self.set_count -= changed;
        }
        changed
    }
}

/// Bits `lo .. hi` of a word (hi <= 64).
fn mask(lo: u64, hi: u64) -> u64 {
    debug_assert!(lo <= hi && hi <= 64);
    let upper = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

#[cfg(test)]
mod tests {
    /// A grown bitmap keeps its bits, sets the new ones only if asked, and is all dirty.
    #[test]
    fn resized_keeps_the_bits_and_dirties_every_page() {
        let mut b = Bitmap::new(100);
        b.set_range(3..5);
        b.set_range(97..100);
        let grown = b.resized(BITS_PER_PAGE + 10, false);
        grown.invariants();
        assert_eq!(grown.count(), 5);
        assert!(grown.test(99) && !grown.test(100));
        assert_eq!(grown.dirty_count(), 2);
        let marked = b.resized(200, true);
        marked.invariants();
        assert_eq!(marked.count(), 5 + 100);
        let shrunk = marked.resized(98, false);
        shrunk.invariants();
        assert_eq!(shrunk.count(), 3);
    }

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn ranges_counts_and_pages() {
        let mut b = Bitmap::new(100_000);
        assert_eq!(b.set_range(10..200), 190);
        assert_eq!(b.set_range(100..300), 100);
        assert_eq!(b.count(), 290);
        assert_eq!(b.count_range(0..64), 54);
        assert_eq!(b.find_next_set(0), Some(10));
        assert_eq!(b.find_next_set(300), None);
        assert_eq!(b.clear_range(0..50), 40);
        assert_eq!(b.dirty_pages(), vec![0]);
        b.mark_clean(0);
        assert_eq!(b.set_range(BITS_PER_PAGE..BITS_PER_PAGE + 1), 1);
        assert_eq!(b.dirty_pages(), vec![1]);
        assert_eq!(b.set_range(99_990..200_000), 10, "clipped at the end");
        b.invariants();
        assert_eq!(b.pages_of(0..BITS_PER_PAGE + 1), 0..2);
    }

    #[test]
    fn on_disk_words_are_little_endian() {
        let mut b = Bitmap::new(64 * 4);
        b.set_range(0..1);
        b.set_range(127..128);
        b.set_range(128..160);
        let page = b.page_bytes(0);
        assert_eq!(&page[..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&page[8..16], &[0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(&page[16..24], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let mut c = Bitmap::new(64 * 4);
        c.load_page(0, &page);
        assert_eq!(b.words(), c.words());
        assert_eq!(c.count(), 34);
    }

    #[test]
    fn surplus_bits_stay_clear() {
        let mut b = Bitmap::new(70);
        assert_eq!(b.set_all(), 70);
        b.load_page(0, &[0xff; PAGE_BYTES]);
        assert_eq!(b.count(), 70);
        assert_eq!(b.or_words(0, &[u64::MAX, u64::MAX, u64::MAX]), 0);
        b.invariants();
    }

    #[test]
    fn memory_is_one_bit_per_4k() {
        // 1 TiB of data = 2^28 bits = 32 MiB of words.
        let bits = 1u64 << 28;
        assert_eq!(bits.div_ceil(64) * 8, 32 << 20);
    }

    proptest! {
        #[test]
        fn matches_a_set_model(bits in 1u64..5000, ops in proptest::collection::vec((any::<bool>(), 0u64..5100, 0u64..300), 0..50)) {
            let mut b = Bitmap::new(bits);
            let mut model = BTreeSet::new();
            for (set, start, len) in ops {
                let range = start..start + len;
                let n = if set { b.set_range(range.clone()) } else { b.clear_range(range.clone()) };
                let mut changed = 0;
                for bit in range.start.min(bits)..range.end.min(bits) {
                    changed += u64::from(if set { model.insert(bit) } else { model.remove(&bit) });
                }
                prop_assert_eq!(n, changed);
                b.invariants();
            }
            prop_assert_eq!(b.count(), model.len() as u64);
            let mut found = Vec::new();
            let mut at = 0;
            while let Some(bit) = b.find_next_set(at) {
                found.push(bit);
                at = bit + 1;
            }
            prop_assert_eq!(found, model.into_iter().collect::<Vec<_>>());
        }
    }
}
