//! The option table: one row per option (section, name, value kind with unit and range, DRBD
//! default, and how far udrbd supports it), and the value parser driven by it.
//!
//! Support is data, so that the daemon can grow feature by feature: to turn an option on, change
//! its row's [`Support`] to `Yes` (one line); its value is already parsed, range-checked and
//! stored in the typed options of [`super::model`].
//!
//! Values are stored in the option's DRBD unit ([`Unit`]); K/M/G suffixes (powers of 1024) are
//! accepted only for sizes and rates, and are relative to bytes, like drbdsetup's: `resync-rate
//! 10M` is 10 MiB/s = 10240 KiB/s, `c-fill-target 1M` is 2048 sectors.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::error::ErrorKind;
use super::model::{
    AfterSb0pri, AfterSb1pri, AfterSb2pri, EffectiveOptions, Fencing, OnCongestion, OnIoError,
    OnNoDataAccessible, Protocol, ReadBalancing, RrConflict, UsageCount, WordEnum,
};

/// The option sections of drbd.conf, plus udrbd's `nbd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Global,
    Net,
    Disk,
    Startup,
    /// `options { }`: resource options.
    Options,
    Handlers,
    /// udrbd's own: `nbd { listen ADDR:PORT; }`.
    Nbd,
}

impl Section {
    /// The section's keyword in drbd.conf.
    pub fn keyword(self) -> &'static str {
        match self {
            Section::Global => "global",
            Section::Net => "net",
            Section::Disk => "disk",
            Section::Startup => "startup",
            Section::Options => "options",
            Section::Handlers => "handlers",
            Section::Nbd => "nbd",
        }
    }

    /// The sections allowed in `common` and `resource`.
    pub const RESOURCE_LEVEL: [Section; 6] = [
        Section::Startup,
        Section::Options,
        Section::Net,
        Section::Disk,
        Section::Handlers,
        Section::Nbd,
    ];
}

/// The unit a bare number is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count (no unit, no suffix).
    Count,
    /// 4 KiB pages (no suffix).
    Pages,
    Seconds,
    /// 0.1 s, DRBD's unit for network and disk timeouts.
    Tenths,
    Bytes,
    /// 512-byte sectors.
    Sectors,
    KibPerSec,
}

impl Unit {
    /// Bytes in one unit, for units that accept K/M/G suffixes.
    fn bytes_per_unit(self) -> Option<u64> {
        match self {
            Unit::Bytes => Some(1),
            Unit::Sectors => Some(512),
            Unit::KibPerSec => Some(1024),
            Unit::Count | Unit::Pages | Unit::Seconds | Unit::Tenths => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Count => "",
            Unit::Pages => "pages",
            Unit::Seconds => "seconds",
            Unit::Tenths => "tenths of a second",
            Unit::Bytes => "bytes",
            Unit::Sectors => "sectors",
            Unit::KibPerSec => "KiB/s",
        }
    }

    /// What a value of this unit looks like, for messages.
    fn expected(self) -> &'static str {
        match self {
            Unit::Count => "a number",
            Unit::Pages => "a number of pages",
            Unit::Seconds => "a number of seconds",
            Unit::Tenths => "a number of tenths of a second",
            Unit::Bytes => "a number of bytes, with an optional K, M or G suffix",
            Unit::Sectors => "a number of sectors, or of bytes with a K, M or G suffix",
            Unit::KibPerSec => "a rate in KiB/s, or in bytes/s with a K, M or G suffix",
        }
    }
}

/// What an option's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A number in `unit`, within `min..=max` (in `unit`).
    Number { unit: Unit, min: u64, max: u64 },
    /// `yes`, `no`, or nothing (meaning `yes`).
    Flag,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A [`AfterSb0pri`] word or `discard-node-NAME`.
    AfterSb0pri,
    /// A string (e.g. a hash algorithm name) of at most `max_len` characters.
    Text { max_len: usize },
    /// A name (resource or host).
    Name,
    /// A shell command (handlers).
    Command,
    /// `ADDR:PORT` or `[IPV6]:PORT`.
    SocketAddr,
}

/// How far udrbd supports an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Accepted and stored (and acted on, or about to be).
    Yes,
    /// Only this value (as [`Value::canonical`] spells it) is accepted: the one behaviour udrbd
    /// has. Any other value is "not supported yet".
    Only(&'static str),
    /// Rejected: "option 'X' is not supported yet".
    NotYet,
    /// Accepted, validated and ignored (`global` settings and tuning knobs with no meaning for
    /// udrbd, e.g. `tcp-cork`).
    Ignored,
}

/// A parsed option value, in the option's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Number(u64),
    Flag(bool),
    /// One of a [`ValueKind::Choice`]'s words.
    Word(&'static str),
    Text(String),
    SocketAddr(SocketAddr),
}

impl Value {
    /// The value spelled as DRBD would: numbers in the option's unit, flags as yes/no.
    pub fn canonical(&self) -> String {
        match self {
            Value::Number(n) => n.to_string(),
            Value::Flag(true) => "yes".to_owned(),
            Value::Flag(false) => "no".to_owned(),
            Value::Word(word) => (*word).to_owned(),
            Value::Text(text) => text.clone(),
            Value::SocketAddr(addr) => addr.to_string(),
        }
    }

    // The accessors below are used by the table's setters. A kind mismatch is a table bug that
    // the unit tests rule out; they return a neutral value rather than panic.

    fn number(&self) -> u64 {
        match self {
            Value::Number(n) => *n,
            _ => 0,
        }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.number()).unwrap_or(u32::MAX)
    }

    fn seconds(&self) -> Duration {
        Duration::from_secs(self.number())
    }

    fn tenths(&self) -> Duration {
        Duration::from_millis(self.number().saturating_mul(100))
    }

    fn flag(&self) -> bool {
        matches!(self, Value::Flag(true))
    }

    fn word<T: WordEnum>(&self) -> T {
        match self {
            Value::Word(word) => T::from_word(word).unwrap_or_default(),
            _ => T::default(),
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Value::Text(text) => Some(text.clone()),
            _ => None,
        }
    }

    fn after_sb_0pri(&self) -> AfterSb0pri {
        match self {
            Value::Text(text) => AfterSb0pri::from_word(text).unwrap_or_default(),
            _ => AfterSb0pri::default(),
        }
    }

    fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Value::SocketAddr(addr) => Some(*addr),
            _ => None,
        }
    }
}

type Setter = fn(&mut EffectiveOptions, &Value);

/// One row of the option table.
pub struct OptionSpec {
    pub section: Section,
    pub name: &'static str,
    pub kind: ValueKind,
    /// DRBD's default as written in drbd.conf; `None` for "unset".
    pub default: Option<&'static str>,
    pub support: Support,
    /// Stores a value of this option into the typed options.
    set: Setter,
}

impl fmt::Debug for OptionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptionSpec")
            .field("section", &self.section)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("default", &self.default)
            .field("support", &self.support)
            .finish_non_exhaustive()
    }
}

impl OptionSpec {
    pub(crate) fn apply(&self, options: &mut EffectiveOptions, value: &Value) {
        (self.set)(options, value);
    }

    /// Parses `text`, the option's value as written (`None` for a bare flag).
    pub(crate) fn parse(&self, text: Option<&str>) -> Result<Value, ErrorKind> {
        match (self.kind, text) {
            (ValueKind::Flag, None) => Ok(Value::Flag(true)),
            (_, None) => Err(ErrorKind::MissingValue {
                option: self.name.to_owned(),
                expected: self.expected(),
            }),
            (kind, Some(text)) => self.parse_text(kind, text),
        }
    }

    fn parse_text(&self, kind: ValueKind, text: &str) -> Result<Value, ErrorKind> {
        match kind {
            ValueKind::Number { unit, min, max } => {
                parse_number(self.name, unit, min..=max, text).map(Value::Number)
            }
            ValueKind::Flag => match text {
                "yes" => Ok(Value::Flag(true)),
                "no" => Ok(Value::Flag(false)),
                _ => Err(self.bad_value(text)),
            },
            ValueKind::Choice(words) => words
                .iter()
                .copied()
                .find(|word| *word == text)
                .map(Value::Word)
                .ok_or_else(|| self.bad_value(text)),
            ValueKind::AfterSb0pri => AfterSb0pri::from_word(text)
                .map(|_| Value::Text(text.to_owned()))
                .ok_or_else(|| self.bad_value(text)),
            ValueKind::Text { max_len } if text.chars().count() > max_len => {
                Err(self.bad_value(text))
            }
            ValueKind::Name | ValueKind::Command if text.is_empty() => Err(self.bad_value(text)),
            ValueKind::Text { .. } | ValueKind::Name | ValueKind::Command => {
                Ok(Value::Text(text.to_owned()))
            }
            ValueKind::SocketAddr => parse_socket_addr(text)
                .map(Value::SocketAddr)
                .ok_or_else(|| self.bad_value(text)),
        }
    }

    fn bad_value(&self, text: &str) -> ErrorKind {
        ErrorKind::BadValue {
            option: self.name.to_owned(),
            value: text.to_owned(),
            expected: self.expected(),
        }
    }

    /// What a value of this option looks like, for messages.
    pub(crate) fn expected(&self) -> String {
        match self.kind {
            ValueKind::Number { unit, .. } => unit.expected().to_owned(),
            ValueKind::Flag => "yes or no".to_owned(),
            ValueKind::Choice(words) => format!("one of {}", words.join(", ")),
            ValueKind::AfterSb0pri => {
                format!(
                    "one of {}, discard-node-NAME",
                    AfterSb0pri::WORDS.join(", ")
                )
            }
            ValueKind::Text { max_len } => format!("a string of at most {max_len} characters"),
            ValueKind::Name => "a name".to_owned(),
            ValueKind::Command => "a shell command".to_owned(),
            ValueKind::SocketAddr => "ADDR:PORT or [IPV6-ADDR]:PORT".to_owned(),
        }
    }

    /// Accepts `value` if udrbd supports it (see [`Support`]).
    pub(crate) fn check_support(&self, value: &Value) -> Result<(), ErrorKind> {
        match self.support {
            Support::Yes | Support::Ignored => Ok(()),
            Support::Only(supported) if value.canonical() == supported => Ok(()),
            Support::Only(supported) => Err(ErrorKind::ValueNotSupported {
                option: self.name.to_owned(),
                value: value.canonical(),
                supported,
            }),
            Support::NotYet => Err(ErrorKind::NotSupported {
                option: self.name.to_owned(),
            }),
        }
    }
}

/// `DIGITS[K|M|G]`, scaled to `unit` and checked against `range`.
fn parse_number(
    option: &str,
    unit: Unit,
    range: std::ops::RangeInclusive<u64>,
    text: &str,
) -> Result<u64, ErrorKind> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(ErrorKind::BadValue {
            option: option.to_owned(),
            value: text.to_owned(),
            expected: unit.expected().to_owned(),
        });
    }
    let out_of_range = |shown: String| ErrorKind::OutOfRange {
        option: option.to_owned(),
        value: shown,
        range: range_text(unit, &range),
    };
    let number: u64 = digits.parse().map_err(|_| out_of_range(text.to_owned()))?;
    let value =
        scale(option, unit, number, suffix, text)?.ok_or_else(|| out_of_range(text.to_owned()))?;
    if range.contains(&value) {
        return Ok(value);
    }
    let shown = if suffix.is_empty() {
        text.to_owned()
    } else {
        format!("{text} ({value} {})", unit.name())
    };
    Err(out_of_range(shown))
}

/// Applies a K/M/G suffix (relative to bytes); `Ok(None)` on overflow.
fn scale(
    option: &str,
    unit: Unit,
    number: u64,
    suffix: &str,
    text: &str,
) -> Result<Option<u64>, ErrorKind> {
    if suffix.is_empty() {
        return Ok(Some(number));
    }
    let bad_suffix = |expected: String| ErrorKind::BadSuffix {
        option: option.to_owned(),
        value: text.to_owned(),
        suffix: suffix.to_owned(),
        expected,
    };
    let Some(bytes_per_unit) = unit.bytes_per_unit() else {
        return Err(bad_suffix(format!("no suffix: {}", unit.expected())));
    };
    let shift = match suffix {
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(bad_suffix("one of K, M, G".to_owned())),
    };
    // 1 KiB and up is a whole number of bytes, sectors and KiB, so the division is exact.
    Ok(number
        .checked_mul(1u64 << shift)
        .map(|bytes| bytes / bytes_per_unit))
}

fn range_text(unit: Unit, range: &std::ops::RangeInclusive<u64>) -> String {
    match unit {
        Unit::Count => format!("{} to {}", range.start(), range.end()),
        _ => format!("{} to {} {}", range.start(), range.end(), unit.name()),
    }
}

/// `A.B.C.D:PORT` or `[IPV6]:PORT`, port 1..=65535.
pub(crate) fn parse_socket_addr(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .ok()
        .filter(|addr| addr.port() != 0)
}

/// The row of `name` in `section`.
pub fn find_option(section: Section, name: &str) -> Option<&'static OptionSpec> {
    OPTIONS
        .iter()
        .find(|spec| spec.section == section && spec.name == name)
}

/// The option names of `section`, in table order, for "expected one of ..." messages.
pub fn option_names(section: Section) -> Vec<&'static str> {
    OPTIONS
        .iter()
        .filter(|spec| spec.section == section)
        .map(|spec| spec.name)
        .collect()
}

const fn spec(
    section: Section,
    name: &'static str,
    kind: ValueKind,
    default: Option<&'static str>,
    support: Support,
    set: Setter,
) -> OptionSpec {
    OptionSpec {
        section,
        name,
        kind,
        default,
        support,
        set,
    }
}

const fn num(unit: Unit, min: u64, max: u64) -> ValueKind {
    ValueKind::Number { unit, min, max }
}

const FLAG: ValueKind = ValueKind::Flag;
const HASH: ValueKind = ValueKind::Text { max_len: 64 };
const CMD: ValueKind = ValueKind::Command;

fn set_handler(options: &mut EffectiveOptions, name: &str, value: &Value) {
    if let Some(command) = value.text() {
        options.handlers.commands.insert(name.to_owned(), command);
    }
}

/// A `handlers` row: every handler is a shell command, stored under its (current) name.
macro_rules! handler {
    ($name:literal) => {
        handler!($name => $name)
    };
    ($name:literal => $stored:literal) => {
        spec(S::Handlers, $name, CMD, None, Yes, |o, v| set_handler(o, $stored, v))
    };
}

use Section as S;
use Support::{Ignored, NotYet, Only, Yes};
use Unit::{Bytes, Count, KibPerSec, Pages, Seconds, Sectors, Tenths};

/// The option table (DRBD 8.4, drbd_limits.h; see the reference's §7.2 and §7.3).
///
/// Columns: section, name, kind (unit, min, max in that unit), DRBD default, udrbd support,
/// setter. The resync-controller rows of `disk` (resync-rate, c-*) are `Yes`: the engine's
/// resync controller takes them (engine_config.rs).
#[rustfmt::skip]
pub static OPTIONS: &[OptionSpec] = &[
    // global: accepted for drbd.conf compatibility, meaningless for udrbd.
    spec(S::Global, "usage-count", ValueKind::Choice(UsageCount::WORDS), Some("ask"), Ignored, |_, _| {}),
    spec(S::Global, "minor-count", num(Count, 1, 1_048_576), None, Ignored, |_, _| {}),
    spec(S::Global, "dialog-refresh", num(Seconds, 0, 86_400), Some("1"), Ignored, |_, _| {}),
    spec(S::Global, "disable-ip-verification", FLAG, Some("no"), Ignored, |_, _| {}),
    spec(S::Global, "udev-always-use-vnr", FLAG, Some("no"), Ignored, |_, _| {}),

    // net: the engine's NetConfig takes protocol through use-rle (engine_config.rs); the driver
    // takes sndbuf-size, rcvbuf-size and connect-int for its sockets. Features not built yet
    // (dual primaries, checksum-based resync, data integrity, pull-ahead) accept
    // only their "off" value; tuning knobs without meaning here are ignored.
    spec(S::Net, "protocol", ValueKind::Choice(Protocol::WORDS), Some("C"), Yes, |o, v| o.net.protocol = v.word()),
    spec(S::Net, "cram-hmac-alg", HASH, None, Yes, |o, v| o.net.cram_hmac_alg = v.text()),
    spec(S::Net, "shared-secret", HASH, None, Yes, |o, v| o.net.shared_secret = v.text()),
    spec(S::Net, "allow-two-primaries", FLAG, Some("no"), Only("no"), |o, v| o.net.allow_two_primaries = v.flag()),
    spec(S::Net, "after-sb-0pri", ValueKind::AfterSb0pri, Some("disconnect"), Yes, |o, v| o.net.after_sb_0pri = v.after_sb_0pri()),
    spec(S::Net, "after-sb-1pri", ValueKind::Choice(AfterSb1pri::WORDS), Some("disconnect"), Yes, |o, v| o.net.after_sb_1pri = v.word()),
    spec(S::Net, "after-sb-2pri", ValueKind::Choice(AfterSb2pri::WORDS), Some("disconnect"), Yes, |o, v| o.net.after_sb_2pri = v.word()),
    spec(S::Net, "always-asbp", FLAG, Some("no"), Yes, |o, v| o.net.always_asbp = v.flag()),
    spec(S::Net, "rr-conflict", ValueKind::Choice(RrConflict::WORDS), Some("disconnect"), Yes, |o, v| o.net.rr_conflict = v.word()),
    spec(S::Net, "timeout", num(Tenths, 1, 600), Some("60"), Yes, |o, v| o.net.timeout = v.tenths()),
    spec(S::Net, "connect-int", num(Seconds, 1, 120), Some("10"), Yes, |o, v| o.net.connect_int = v.seconds()),
    spec(S::Net, "ping-int", num(Seconds, 1, 120), Some("10"), Yes, |o, v| o.net.ping_int = v.seconds()),
    spec(S::Net, "ping-timeout", num(Tenths, 1, 300), Some("5"), Yes, |o, v| o.net.ping_timeout = v.tenths()),
    spec(S::Net, "socket-check-timeout", num(Tenths, 0, 300), Some("0"), Yes, |o, v| o.net.socket_check_timeout = v.tenths()),
    spec(S::Net, "ko-count", num(Count, 0, 200), Some("7"), Yes, |o, v| o.net.ko_count = v.count()),
    spec(S::Net, "max-buffers", num(Pages, 32, 131_072), Some("2048"), Yes, |o, v| o.net.max_buffers = v.count()),
    spec(S::Net, "max-epoch-size", num(Count, 1, 20_000), Some("2048"), Yes, |o, v| o.net.max_epoch_size = v.count()),
    spec(S::Net, "sndbuf-size", num(Bytes, 0, 10 << 20), Some("0"), Yes, |o, v| o.net.sndbuf_size_bytes = v.number()),
    spec(S::Net, "rcvbuf-size", num(Bytes, 0, 10 << 20), Some("0"), Yes, |o, v| o.net.rcvbuf_size_bytes = v.number()),
    spec(S::Net, "unplug-watermark", num(Count, 1, 131_072), Some("128"), Ignored, |o, v| o.net.unplug_watermark = v.count()),
    spec(S::Net, "csums-alg", HASH, None, Yes, |o, v| o.net.csums_alg = v.text()),
    spec(S::Net, "verify-alg", HASH, None, Yes, |o, v| o.net.verify_alg = v.text()),
    spec(S::Net, "data-integrity-alg", HASH, None, NotYet, |o, v| o.net.data_integrity_alg = v.text()),
    spec(S::Net, "use-rle", FLAG, Some("yes"), Yes, |o, v| o.net.use_rle = v.flag()),
    spec(S::Net, "tcp-cork", FLAG, Some("yes"), Ignored, |o, v| o.net.tcp_cork = v.flag()),
    spec(S::Net, "on-congestion", ValueKind::Choice(OnCongestion::WORDS), Some("block"), Only("block"), |o, v| o.net.on_congestion = v.word()),
    spec(S::Net, "congestion-fill", num(Sectors, 0, 20 << 20), Some("0"), Ignored, |o, v| o.net.congestion_fill_sectors = v.number()),
    spec(S::Net, "congestion-extents", num(Count, 67, 65_534), Some("1237"), Ignored, |o, v| o.net.congestion_extents = v.count()),
    spec(S::Net, "csums-after-crash-only", FLAG, Some("no"), Only("no"), |o, v| o.net.csums_after_crash_only = v.flag()),
    // udrbd's own, not DRBD's: the TCP congestion control of the peer sockets (Linux's
    // TCP_CONGESTION, at most 15 characters); unset: the system's default. On loopback, BBR
    // was seen holding the data socket to ~1.5 MiB in flight (24 segments) while 1 MiB writes
    // queued behind it; whether another choice is faster here is not settled (README).
    spec(S::Net, "tcp-congestion", ValueKind::Text { max_len: 15 }, None, Yes, |o, v| o.net.tcp_congestion = v.text()),

    // disk
    spec(S::Disk, "on-io-error", ValueKind::Choice(OnIoError::WORDS), Some("detach"), Yes, |o, v| o.disk.on_io_error = v.word()),
    spec(S::Disk, "fencing", ValueKind::Choice(Fencing::WORDS), Some("dont-care"), Only("dont-care"), |o, v| o.disk.fencing = v.word()),
    spec(S::Disk, "disk-timeout", num(Tenths, 0, 6000), Some("0"), Yes, |o, v| o.disk.disk_timeout = v.tenths()),
    spec(S::Disk, "al-extents", num(Count, 67, 65_534), Some("1237"), Yes, |o, v| o.disk.al_extents = v.count()),
    spec(S::Disk, "al-updates", FLAG, Some("yes"), Only("yes"), |o, v| o.disk.al_updates = v.flag()),
    spec(S::Disk, "resync-rate", num(KibPerSec, 1, 4_194_304), Some("250"), Yes, |o, v| o.disk.resync_rate_kib_per_sec = v.count()),
    spec(S::Disk, "resync-after", ValueKind::Name, None, NotYet, |o, v| o.disk.resync_after = v.text()),
    spec(S::Disk, "c-plan-ahead", num(Tenths, 0, 300), Some("20"), Yes, |o, v| o.disk.c_plan_ahead = v.tenths()),
    spec(S::Disk, "c-fill-target", num(Sectors, 0, 1 << 20), Some("100"), Yes, |o, v| o.disk.c_fill_target_sectors = v.number()),
    spec(S::Disk, "c-delay-target", num(Tenths, 1, 100), Some("10"), Yes, |o, v| o.disk.c_delay_target = v.tenths()),
    spec(S::Disk, "c-max-rate", num(KibPerSec, 250, 4_194_304), Some("102400"), Yes, |o, v| o.disk.c_max_rate_kib_per_sec = v.count()),
    spec(S::Disk, "c-min-rate", num(KibPerSec, 0, 4_194_304), Some("250"), Yes, |o, v| o.disk.c_min_rate_kib_per_sec = v.count()),
    spec(S::Disk, "disk-barrier", FLAG, Some("no"), Only("no"), |o, v| o.disk.disk_barrier = v.flag()),
    spec(S::Disk, "disk-flushes", FLAG, Some("yes"), Only("yes"), |o, v| o.disk.disk_flushes = v.flag()),
    spec(S::Disk, "disk-drain", FLAG, Some("yes"), Only("yes"), |o, v| o.disk.disk_drain = v.flag()),
    spec(S::Disk, "md-flushes", FLAG, Some("yes"), Only("yes"), |o, v| o.disk.md_flushes = v.flag()),
    spec(S::Disk, "read-balancing", ValueKind::Choice(ReadBalancing::WORDS), Some("prefer-local"), Only("prefer-local"), |o, v| o.disk.read_balancing = v.word()),
    spec(S::Disk, "size", num(Sectors, 0, 1 << 41), Some("0"), Yes, |o, v| o.disk.size_sectors = v.number()),
    spec(S::Disk, "max-bio-bvecs", num(Count, 0, 128), Some("0"), Only("0"), |o, v| o.disk.max_bio_bvecs = v.count()),
    spec(S::Disk, "discard-zeroes-if-aligned", FLAG, Some("yes"), Only("yes"), |o, v| o.disk.discard_zeroes_if_aligned = v.flag()),
    spec(S::Disk, "disable-write-same", FLAG, Some("no"), Only("no"), |o, v| o.disk.disable_write_same = v.flag()),
    spec(S::Disk, "rs-discard-granularity", num(Bytes, 0, 1 << 20), Some("0"), Only("0"), |o, v| o.disk.rs_discard_granularity_bytes = v.number()),

    // startup
    spec(S::Startup, "wfc-timeout", num(Seconds, 0, 300_000), Some("0"), Yes, |o, v| o.startup.wfc_timeout = v.seconds()),
    spec(S::Startup, "degr-wfc-timeout", num(Seconds, 0, 300_000), Some("0"), Yes, |o, v| o.startup.degr_wfc_timeout = v.seconds()),
    spec(S::Startup, "outdated-wfc-timeout", num(Seconds, 0, 300_000), Some("0"), Yes, |o, v| o.startup.outdated_wfc_timeout = v.seconds()),
    spec(S::Startup, "wait-after-sb", FLAG, Some("no"), Only("no"), |o, v| o.startup.wait_after_sb = v.flag()),
    spec(S::Startup, "become-primary-on", ValueKind::Name, None, NotYet, |o, v| o.startup.become_primary_on = v.text()),
    spec(S::Startup, "stacked-timeouts", FLAG, Some("no"), Only("no"), |o, v| o.startup.stacked_timeouts = v.flag()),

    // options (resource options)
    spec(S::Options, "cpu-mask", ValueKind::Text { max_len: 64 }, None, NotYet, |o, v| o.resource.cpu_mask = v.text()),
    spec(S::Options, "on-no-data-accessible", ValueKind::Choice(OnNoDataAccessible::WORDS), Some("io-error"), Only("io-error"), |o, v| o.resource.on_no_data_accessible = v.word()),

    // handlers (§7.3)
    handler!("pri-on-incon-degr"),
    handler!("pri-lost-after-sb"),
    handler!("pri-lost"),
    handler!("fence-peer"),
    handler!("outdate-peer" => "fence-peer"),
    handler!("unfence-peer"),
    handler!("local-io-error"),
    handler!("initial-split-brain"),
    handler!("split-brain"),
    handler!("before-resync-target"),
    handler!("after-resync-target"),
    handler!("before-resync-source"),
    handler!("out-of-sync"),

    // nbd (udrbd's own)
    spec(S::Nbd, "listen", ValueKind::SocketAddr, None, Yes, |o, v| o.nbd.listen = v.socket_addr()),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_in_range_and_match_the_typed_defaults() {
        let mut options = EffectiveOptions::default();
        for spec in OPTIONS {
            let Some(default) = spec.default else {
                continue;
            };
            let value = spec.parse(Some(default));
            assert!(
                value.is_ok(),
                "{}: default {default} does not parse",
                spec.name
            );
            if let Ok(value) = value {
                spec.apply(&mut options, &value);
            }
        }
        assert_eq!(options, EffectiveOptions::default());
    }

    #[test]
    fn only_values_are_valid_values() {
        for spec in OPTIONS {
            if let Support::Only(only) = spec.support {
                let value = spec.parse(Some(only));
                assert!(value.is_ok(), "{}: Only({only}) does not parse", spec.name);
                assert_eq!(value.map(|v| spec.check_support(&v)), Ok(Ok(())));
            }
        }
    }

    #[test]
    fn names_are_unique_per_section() {
        for (i, a) in OPTIONS.iter().enumerate() {
            for b in OPTIONS.iter().skip(i + 1) {
                assert!(a.section != b.section || a.name != b.name, "{}", a.name);
            }
        }
    }

    #[test]
    fn suffixes_are_relative_to_bytes() {
        let rate = find_option(Section::Disk, "resync-rate");
        assert_eq!(
            rate.map(|s| s.parse(Some("10M"))),
            Some(Ok(Value::Number(10240)))
        );
        let fill = find_option(Section::Disk, "c-fill-target");
        assert_eq!(
            fill.map(|s| s.parse(Some("1M"))),
            Some(Ok(Value::Number(2048)))
        );
    }
}
