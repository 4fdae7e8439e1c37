//! The drbd.conf (DRBD 8.4 syntax) config parser.
//!
//! A DRBD admin's `.res` file works as is, as far as udrbd supports its options; errors point
//! at `file:line:column` and say what was expected ([`ConfigError`]).
//!
//! # Grammar
//!
//! Lexical (`syntax`, on winnow):
//!
//! ```text
//! file     = { stmt } EOF
//! stmt     = word { word } ( ";" | "{" { stmt } "}" )
//! word     = bare | quoted
//! bare     = 1*( any char but whitespace, "{", "}", ";", '"', "#" )
//! quoted   = '"' { char but '"', "\", newline | "\" char-but-newline } '"'
//! comment  = "#" ... end of line              (whitespace and comments separate tokens)
//! ```
//!
//! In a quoted string `\n` and `\t` are newline and tab; a backslash before any other
//! character stands for that character. A statement starting with `skip` is dropped, and its
//! block only has to balance its braces.
//!
//! Statements (`build`):
//!
//! ```text
//! top      = include | global | common | resource
//! include  = "include" GLOB ";"                          (anywhere; see below)
//! global   = "global" "{" { global-option } "}"          (accepted and ignored)
//! common   = "common" "{" { section } "}"
//! resource = "resource" NAME "{" { section | on | volume-field } "}"
//! section  = ("net" | "disk" | "startup" | "options" | "handlers" | "nbd") "{" { option } "}"
//! option   = NAME [ VALUE ] ";"                           (see options::OPTIONS)
//! on       = "on" HOST { HOST } "{" { volume-field | address | volume } "}"
//! volume   = "volume" "0" "{" { volume-field } "}"        (any other number: not supported yet)
//! volume-field = "device" ( "/dev/drbdN" | "minor" N | PATH "minor" N ) ";"
//!          | "disk" ( PATH | "none" ) ";"
//!          | "meta-disk" ( "internal" | PATH [ "[" N "]" ] ) ";"
//!          | "flexible-meta-disk" ( "internal" | PATH ) ";"
//! address  = "address" [ "ipv4" ] A.B.C.D:PORT ";" | "address" "ipv6" "[" ADDR "]:" PORT ";"
//! ```
//!
//! `device`, `disk` and `meta-disk` written at resource level apply to every `on` section that
//! does not set them; `meta-disk` defaults to `internal`. `nbd { listen ADDR:PORT; }` is
//! udrbd's own section (the NBD TCP listen address).
//!
//! # Includes
//!
//! [`Config::load`] replaces `include "glob";` by the statements of the matching files (sorted;
//! relative to the including file's directory; `*` and `?` wildcards). A plain path that does
//! not exist, and an include cycle, are errors. [`parse_str`] reads no files: any include is an
//! error there, which keeps it deterministic and safe to fuzz.
//!
//! # Units
//!
//! Each option takes DRBD's unit for a bare number; sizes and rates accept K/M/G suffixes,
//! powers of 1024 relative to bytes (`resync-rate 10M` = 10240 KiB/s). In the typed options
//! ([`NetOptions`], ...) times are [`std::time::Duration`]s (`timeout 60`, in 0.1 s, is 6 s) and
//! other quantities carry their unit in the field name (`resync_rate_kib_per_sec`).
//!
//! # Support
//!
//! What udrbd can do is data: each row of [`options::OPTIONS`] has a [`Support`]. An option
//! udrbd cannot honour yet is rejected with "option 'X' is not supported yet", except when the
//! value given is the one behaviour udrbd has (`on-io-error detach;`).
//!
//! # Invariants
//!
//! - No input panics the parser; nesting, include depth, file count and file size are bounded.
//! - Every setting, resource and host keeps its [`Span`], so late errors (in the resolver)
//!   still name `file:line:column`, in the included file where it was written.
//! - A resource name, an option within one section, a section within one resource, and a host
//!   name within one resource each appear at most once.
//! - Inheritance is applied only by [`Config::resource_for_node`]: DRBD defaults, then
//!   `common`, then the resource.

mod build;
mod defs;
mod error;
mod include;
mod model;
pub mod options;
mod resolve;
mod source;
mod syntax;

use std::path::Path;

pub use defs::{Device, HostDef, MetaDisk, ResourceDef, Setting, Settings};
pub use error::{
    ConfigError, ErrorKind, Found, Location, MAX_DEPTH, MAX_FILE_BYTES, MAX_FILES,
    MAX_INCLUDE_DEPTH, Position, ReadFailure,
};
pub use model::{
    AfterSb0pri, AfterSb1pri, AfterSb2pri, DiskOptions, EffectiveOptions, Fencing, Handlers,
    NbdOptions, NetOptions, OnCongestion, OnIoError, OnNoDataAccessible, Protocol, ReadBalancing,
    ResourceOptions, RrConflict, StartupOptions, UsageCount, WordEnum,
};
pub use options::{OPTIONS, OptionSpec, Section, Support, Unit, Value, ValueKind};
pub use resolve::{PeerHost, ResolvedResource};
pub use source::{SourceFile, Span};

/// A parsed config: every resource as written, the `common` settings, and the files read.
#[derive(Debug, Clone)]
pub struct Config {
    pub resources: Vec<ResourceDef>,
    /// The option sections of `common`, inherited by every resource.
    pub common: Settings,
    /// Every file read, the top-level one first; [`Span`]s index into it.
    pub files: Vec<SourceFile>,
}

impl Config {
    /// Reads `path`, follows its includes, and parses everything.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let loaded = include::load(path)?;
        Config::build(loaded)
    }

    /// Parses `text` as a file called `name` (used in messages). Reads no files: an `include`
    /// is an error.
    pub fn parse_str(name: &str, text: &str) -> Result<Config, ConfigError> {
        let loaded = include::load_str(name, text)?;
        Config::build(loaded)
    }

    fn build(loaded: include::Loaded) -> Result<Config, ConfigError> {
        let built = build::build(&loaded.files, &loaded.stmts)?;
        Ok(Config {
            resources: built.resources,
            common: built.common,
            files: loaded.files,
        })
    }

    /// Where `span` is, for messages about something in the config.
    pub fn position(&self, span: Span) -> Option<Position> {
        error::position_of(&self.files, span)
    }
}

/// [`Config::parse_str`], as a free function for the fuzz target.
pub fn parse_str(name: &str, text: &str) -> Result<Config, ConfigError> {
    Config::parse_str(name, text)
}
