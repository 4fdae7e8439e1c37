//! The config parser's one error type.
//!
//! Every error is rendered on one line as `FILE:LINE:COL: message (expected ...)` (or
//! `FILE: message (expected ...)` when no position applies, e.g. an unreadable top-level file
//! or an unknown resource name), and carries the file's text and a span so that miette can draw
//! a fancy report. The payloads are the offending words themselves (data for the message), not
//! free-form prose.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};

use super::source::{SourceFile, Span};

/// Largest config file read, in bytes: a `.res` file is a few KiB; anything bigger is a mistake
/// (or `/dev/zero`).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Deepest nesting of `{ }` blocks: DRBD needs 4 (`resource`/`on`/`volume`), the rest is slack.
/// The bound keeps the recursive-descent parser's stack small on hostile input.
pub const MAX_DEPTH: usize = 16;
/// Longest chain of nested includes.
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Most files read for one config (counting a file each time it is included).
pub const MAX_FILES: usize = 256;

/// Where in the config an error is: 1-based line, 1-based column counted in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The file's name as given to [`super::Config::load`] or joined from an include.
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The `file:line:column` of the start of `span`; `None` if the span names no file (a bug).
pub(crate) fn position_of(files: &[SourceFile], span: Span) -> Option<Position> {
    let file = files.get(span.file)?;
    let (line, column) = file.line_column(span.start);
    Some(Position {
        file: file.name.clone(),
        line,
        column,
    })
}

/// A position in a file, or just the file when the error is about the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    At(Position),
    File(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::At(position) => position.fmt(f),
            Location::File(file) => f.write_str(file),
        }
    }
}

/// What the parser found where it expected something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Word(String),
    Symbol(char),
    EndOfFile,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Word(word) => write!(f, "'{word}'"),
            Found::Symbol(symbol) => write!(f, "'{symbol}'"),
            Found::EndOfFile => f.write_str("end of file"),
        }
    }
}

/// Why a file could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFailure {
    NotFound,
    NotAFile,
    TooLarge,
    NotUtf8,
    Io(std::io::ErrorKind),
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFailure::NotFound => f.write_str("no such file"),
            ReadFailure::NotAFile => f.write_str("not a regular file"),
            ReadFailure::TooLarge => write!(f, "larger than {MAX_FILE_BYTES} bytes"),
            ReadFailure::NotUtf8 => f.write_str("not valid UTF-8"),
            ReadFailure::Io(kind) => write!(f, "{kind}"),
        }
    }
}

/// What went wrong. Each message ends with `(expected ...)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read file: {reason} (expected a readable regular file)")]
    Read { reason: ReadFailure },
    #[error("unterminated string (expected '\"' before the end of the line)")]
    UnterminatedString,
    #[error("unterminated block: '{{' after '{after}' is never closed (expected '}}')")]
    UnterminatedBlock { after: String },
    #[error("blocks nested too deeply (expected at most {MAX_DEPTH} levels)")]
    TooDeep,
    #[error("unexpected {found} (expected {expected})")]
    Unexpected { found: Found, expected: String },
    #[error("missing ';' after '{after}', found {found} (expected ';')")]
    MissingSemicolon { after: String, found: Found },
    #[error("unknown keyword '{word}' {context} (expected one of {expected})")]
    UnknownKeyword {
        word: String,
        context: String,
        expected: String,
    },
    #[error("'{keyword}' needs a block (expected '{{' after '{keyword}')")]
    ExpectedBlock { keyword: String },
    #[error("'{keyword}' does not take a block (expected ';')")]
    UnexpectedBlock { keyword: String },
    #[error("missing value for '{option}' (expected {expected})")]
    MissingValue { option: String, expected: String },
    #[error("bad value '{value}' for '{option}' (expected {expected})")]
    BadValue {
        option: String,
        value: String,
        expected: String,
    },
    #[error("bad unit suffix '{suffix}' in '{value}' for '{option}' (expected {expected})")]
    BadSuffix {
        option: String,
        value: String,
        suffix: String,
        expected: String,
    },
    #[error("value {value} of '{option}' is out of range (expected {range})")]
    OutOfRange {
        option: String,
        value: String,
        range: String,
    },
    #[error("option '{option}' is not supported yet (expected it left out)")]
    NotSupported { option: String },
    #[error(
        "option '{option}' is not supported yet with value '{value}' \
         (expected '{supported}', the only behaviour udrbd has)"
    )]
    ValueNotSupported {
        option: String,
        value: String,
        supported: &'static str,
    },
    #[error("volume {number} is not supported yet (expected volume 0)")]
    VolumeNotSupported { number: String },
    #[error("address family '{family}' is not supported yet (expected ipv4 or ipv6)")]
    AddressFamilyNotSupported { family: String },
    #[error("duplicate {what} '{name}', first at {first} (expected each {what} once)")]
    Duplicate {
        what: &'static str,
        name: String,
        first: Position,
    },
    #[error("missing '{field}' for host '{host}' (expected {expected})")]
    MissingHostField {
        field: &'static str,
        host: String,
        expected: &'static str,
    },
    #[error("include \"{pattern}\" matched no file (expected an existing file)")]
    IncludeNotFound { pattern: String },
    #[error("cannot read included file '{path}': {reason} (expected a readable regular file)")]
    IncludeRead { path: String, reason: ReadFailure },
    #[error("include cycle: {chain} (expected includes without a cycle)")]
    IncludeCycle { chain: String },
    #[error("includes nested too deeply (expected at most {MAX_INCLUDE_DEPTH} levels)")]
    IncludeTooDeep,
    #[error("too many files included (expected at most {MAX_FILES})")]
    TooManyFiles,
    #[error("include \"{pattern}\" cannot be read by parse_str (expected Config::load)")]
    IncludeWithoutFiles { pattern: String },
    #[error("unknown resource '{name}' (expected one of {known})")]
    UnknownResource { name: String, known: String },
    #[error("unknown host {node} in resource {resource} (hosts: {hosts})")]
    UnknownHost {
        node: String,
        resource: String,
        hosts: String,
    },
    #[error("resource '{resource}' has {count} 'on' sections (expected exactly 2)")]
    HostCount { resource: String, count: usize },
    #[error(
        "'timeout' ({timeout_tenths} tenths of a second) is not shorter than \
         '{other}' ({other_seconds} s) (expected timeout < connect-int and timeout < ping-int)"
    )]
    TimeoutTooLong {
        timeout_tenths: u64,
        other: &'static str,
        other_seconds: u64,
    },
}

/// A config error: where, what, and the source text for a miette report.
///
/// Boxed: errors are rare and the `Ok` path of every parser function stays small.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", .0.location, .0.kind)]
pub struct ConfigError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    location: Location,
    kind: ErrorKind,
    source_code: Option<NamedSource<Arc<str>>>,
    span: Option<SourceSpan>,
}

impl Diagnostic for ConfigError {
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.0
            .source_code
            .as_ref()
            .map(|source| source as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let label = LabeledSpan::new_with_span(Some("here".to_owned()), self.0.span?);
        Some(Box::new(std::iter::once(label)))
    }
}

impl ConfigError {
    /// An error at `span` in one of `files`. A span naming no file (a bug) degrades to a
    /// position-less error rather than a panic.
    pub(crate) fn at(files: &[SourceFile], span: Span, kind: ErrorKind) -> Self {
        let (Some(file), Some(position)) = (files.get(span.file), position_of(files, span)) else {
            return Self::whole_file("<unknown>", kind);
        };
        ConfigError(Box::new(Inner {
            location: Location::At(position),
            kind,
            source_code: Some(NamedSource::new(&file.name, Arc::clone(&file.text))),
            span: Some(SourceSpan::new(span.start.into(), span.len())),
        }))
    }

    /// An error about a whole file (or the config as a whole), with no position.
    pub(crate) fn whole_file(name: &str, kind: ErrorKind) -> Self {
        ConfigError(Box::new(Inner {
            location: Location::File(name.to_owned()),
            kind,
            source_code: None,
            span: None,
        }))
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    pub fn location(&self) -> &Location {
        &self.0.location
    }

    /// The `file:line:column`, when the error has one.
    pub fn position(&self) -> Option<&Position> {
        match &self.0.location {
            Location::At(position) => Some(position),
            Location::File(_) => None,
        }
    }
}
