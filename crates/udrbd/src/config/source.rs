//! Source files and spans: every word the parser keeps remembers which file and which bytes it
//! came from, so errors found late (in the resolver) still point at `file:line:column`.

use std::path::PathBuf;
use std::sync::Arc;

/// One file read for a config (the top-level file or an included one).
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Name used in messages: the path as given, or the include's directory joined with the
    /// matched file name.
    pub name: String,
    /// Path the file was read from (empty for [`super::parse_str`] input).
    pub path: PathBuf,
    pub text: Arc<str>,
    /// Byte offset of the start of each line; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub(crate) fn new(name: String, path: PathBuf, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        SourceFile {
            name,
            path,
            text: text.into(),
            line_starts,
        }
    }

    /// 1-based line and column (in characters, a tab counts as one) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (u32, u32) {
        let line_index = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        // `get` rather than slicing: a span is always on a char boundary, but a bug here must
        // not panic on fuzzed input.
        let column = self
            .text
            .get(line_start..offset)
            .map_or(offset.saturating_sub(line_start), |prefix| {
                prefix.chars().count()
            });
        (to_u32(line_index + 1), to_u32(column + 1))
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Bytes `start..end` of file number `file` of [`super::Config::files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub(crate) file: usize,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Span {
    pub(crate) fn new(file: usize, range: std::ops::Range<usize>) -> Self {
        Span {
            file,
            start: range.start,
            end: range.end,
        }
    }

    /// Index into [`super::Config::files`].
    pub fn file_index(self) -> usize {
        self.file
    }

    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The empty span just after this one: where a missing `;` belongs.
    pub(crate) fn after(self) -> Span {
        Span {
            start: self.end,
            ..self
        }
    }
}
