//! The meaning of statements: turns the statement tree (includes already expanded) into
//! [`ResourceDef`]s and the `common` [`Settings`], checking keywords, values, support and
//! duplicates, each error at the word it is about.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::defs::{Device, HostDef, MetaDisk, ResourceDef, Setting, Settings};
use super::error::{ConfigError, ErrorKind, Found, Position, position_of};
use super::options::{Section, ValueKind, find_option, option_names, parse_socket_addr};
use super::source::{SourceFile, Span};
use super::syntax::{Body, Stmt, Word, joined};

type Result<T> = std::result::Result<T, ConfigError>;

/// Largest minor number (DRBD's MINORMASK, 2^20 - 1).
const MAX_MINOR: u64 = (1 << 20) - 1;

const TOP_KEYWORDS: &str = "global, common, resource, include, skip";
const DEVICE_EXPECTED: &str = "/dev/drbdN, minor N or PATH minor N";
const META_DISK_EXPECTED: &str = "internal, PATH or PATH [INDEX]";
const ADDRESS_EXPECTED: &str = "[ipv4] A.B.C.D:PORT or ipv6 [ADDR]:PORT";

/// What the top level holds.
#[derive(Debug, Default)]
pub(crate) struct Built {
    pub common: Settings,
    pub resources: Vec<ResourceDef>,
}

/// Builds the config from the expanded top-level statements.
pub(crate) fn build(files: &[SourceFile], stmts: &[Stmt]) -> Result<Built> {
    Builder { files }.top(stmts)
}

/// `device`, `disk` and `meta-disk` of volume 0, each with the keyword that set it.
#[derive(Debug, Default, Clone)]
struct VolumeParts {
    device: Option<(Device, Span)>,
    disk: Option<(Option<PathBuf>, Span)>,
    meta_disk: Option<(MetaDisk, Span)>,
}

/// An `on` section before the resource-level volume fields are merged in.
struct RawHost<'s> {
    names: &'s [Word],
    at: Span,
    volume: VolumeParts,
    address: Option<(SocketAddr, Span)>,
}

/// The words after a statement's keyword, consumed left to right.
struct Args<'s> {
    words: &'s [Word],
    next: usize,
}

impl<'s> Args<'s> {
    fn peek(&self) -> Option<&'s Word> {
        self.words.get(self.next)
    }

    fn take(&mut self) -> Option<&'s Word> {
        let word = self.peek();
        self.next += usize::from(word.is_some());
        word
    }

    fn take_if(&mut self, text: &str) -> bool {
        let matches = self.peek().is_some_and(|word| word.text == text);
        self.next += usize::from(matches);
        matches
    }

    fn remaining(&self) -> usize {
        self.words.len().saturating_sub(self.next)
    }
}

struct Builder<'f> {
    files: &'f [SourceFile],
}

impl Builder<'_> {
    fn error(&self, span: Span, kind: ErrorKind) -> ConfigError {
        ConfigError::at(self.files, span, kind)
    }

    fn position(&self, span: Span) -> Position {
        position_of(self.files, span).unwrap_or(Position {
            file: String::new(),
            line: 0,
            column: 0,
        })
    }

    fn unknown_keyword(&self, word: &Word, context: &str, expected: &str) -> ConfigError {
        self.error(
            word.span,
            ErrorKind::UnknownKeyword {
                word: word.text.clone(),
                context: context.to_owned(),
                expected: expected.to_owned(),
            },
        )
    }

    fn duplicate(&self, what: &'static str, word: &Word, first: Span) -> ConfigError {
        let kind = ErrorKind::Duplicate {
            what,
            name: word.text.clone(),
            first: self.position(first),
        };
        self.error(word.span, kind)
    }

    fn top(&self, stmts: &[Stmt]) -> Result<Built> {
        let mut built = Built::default();
        let mut seen = Vec::new();
        for stmt in stmts {
            let keyword = stmt.keyword();
            match keyword.text.as_str() {
                "global" => {
                    self.once(&mut seen, "global", keyword)?;
                    self.option_section(stmt, Section::Global, &mut Settings::default())?;
                }
                "common" => {
                    self.once(&mut seen, "common", keyword)?;
                    built.common = self.sections_block(stmt, "in common section")?;
                }
                "resource" => {
                    let resource = self.resource(stmt)?;
                    if let Some(first) = built.resources.iter().find(|r| r.name == resource.name) {
                        let name = stmt.words.get(1).unwrap_or(keyword);
                        return Err(self.duplicate("resource", name, first.at));
                    }
                    built.resources.push(resource);
                }
                _ => return Err(self.unknown_keyword(keyword, "at top level", TOP_KEYWORDS)),
            }
        }
        Ok(built)
    }

    /// Records that a section was written, failing on the second time.
    fn once(
        &self,
        seen: &mut Vec<(&'static str, Span)>,
        key: &'static str,
        word: &Word,
    ) -> Result<()> {
        if let Some((_, first)) = seen.iter().find(|(seen_key, _)| *seen_key == key) {
            return Err(self.duplicate("section", word, *first));
        }
        seen.push((key, word.span));
        Ok(())
    }

    /// The statements of `stmt`'s block, which must follow exactly `names` words.
    fn block<'s>(&self, stmt: &'s Stmt, names: usize) -> Result<&'s [Stmt]> {
        let keyword = stmt.keyword();
        if let Some(extra) = stmt.words.get(names + 1) {
            let kind = ErrorKind::Unexpected {
                found: Found::Word(extra.text.clone()),
                expected: format!("'{{' after '{}'", joined(&stmt.words[..=names])),
            };
            return Err(self.error(extra.span, kind));
        }
        match &stmt.body {
            Body::Block { stmts, .. } => Ok(stmts),
            Body::Semicolon(span) => Err(self.error(
                *span,
                ErrorKind::ExpectedBlock {
                    keyword: keyword.text.clone(),
                },
            )),
        }
    }

    /// The arguments of a `keyword value...;` statement.
    fn args<'s>(&self, stmt: &'s Stmt) -> Result<Args<'s>> {
        match &stmt.body {
            Body::Semicolon(_) => Ok(Args {
                words: &stmt.words,
                next: 1,
            }),
            Body::Block { open, .. } => Err(self.error(
                *open,
                ErrorKind::UnexpectedBlock {
                    keyword: stmt.keyword().text.clone(),
                },
            )),
        }
    }

    /// The next argument, or "missing value for KEYWORD".
    fn require<'s>(&self, args: &mut Args<'s>, expected: &str) -> Result<&'s Word> {
        args.take().ok_or_else(|| {
            let keyword = args.words.first();
            let kind = ErrorKind::MissingValue {
                option: keyword.map(|word| word.text.clone()).unwrap_or_default(),
                expected: expected.to_owned(),
            };
            self.error(keyword.map_or(Span::new(0, 0..0), |word| word.span), kind)
        })
    }

    /// Fails with "missing ';'" if words are left: the statement ran into the next one.
    fn finish(&self, args: Args<'_>) -> Result<()> {
        let Some(extra) = args.peek() else {
            return Ok(());
        };
        let consumed = &args.words[..args.next.min(args.words.len())];
        let after = consumed.last().map_or(extra.span, |word| word.span.after());
        let kind = ErrorKind::MissingSemicolon {
            after: joined(consumed),
            found: Found::Word(extra.text.clone()),
        };
        Err(self.error(after, kind))
    }

    /// A block of option sections (`common`, or the option part of a resource).
    fn sections_block(&self, stmt: &Stmt, context: &str) -> Result<Settings> {
        let mut settings = Settings::default();
        let mut seen = Vec::new();
        for inner in self.block(stmt, 0)? {
            let keyword = inner.keyword();
            let Some(section) = resource_section(&keyword.text) else {
                let expected = section_keywords();
                return Err(self.unknown_keyword(keyword, context, &expected));
            };
            self.once(&mut seen, section.keyword(), keyword)?;
            self.option_section(inner, section, &mut settings)?;
        }
        Ok(settings)
    }

    /// `net { ... }` and its kin: every statement is an option of `section`.
    fn option_section(&self, stmt: &Stmt, section: Section, settings: &mut Settings) -> Result<()> {
        for inner in self.block(stmt, 0)? {
            self.option(inner, section, settings)?;
        }
        Ok(())
    }

    /// `name [value];`: looked up in the table, parsed, checked for support and duplicates.
    fn option(&self, stmt: &Stmt, section: Section, settings: &mut Settings) -> Result<()> {
        let keyword = stmt.keyword();
        let Some(spec) = find_option(section, &keyword.text) else {
            let context = format!("in {} section", section.keyword());
            let expected = option_names(section).join(", ");
            return Err(self.unknown_keyword(keyword, &context, &expected));
        };
        let mut args = self.args(stmt)?;
        // A bare flag may be followed by the next statement (missing ';'); a yes/no is its value.
        let flag_then_more = spec.kind == ValueKind::Flag
            && args.remaining() > 1
            && !matches!(args.peek().map(|w| w.text.as_str()), Some("yes" | "no"));
        let text = if flag_then_more { None } else { args.take() };
        let value = spec
            .parse(text.map(|word| word.text.as_str()))
            .map_err(|kind| self.error(text.map_or(keyword.span, |word| word.span), kind))?;
        self.finish(args)?;
        spec.check_support(&value)
            .map_err(|kind| self.error(keyword.span, kind))?;
        if let Some(first) = settings.get(section, spec.name) {
            return Err(self.duplicate("option", keyword, first.at));
        }
        settings.items.push(Setting {
            spec,
            value,
            at: keyword.span,
        });
        Ok(())
    }

    fn resource(&self, stmt: &Stmt) -> Result<ResourceDef> {
        let mut args = Args {
            words: &stmt.words,
            next: 1,
        };
        let name = self.require(&mut args, "a resource name")?;
        let context = format!("in resource {}", name.text);
        let mut settings = Settings::default();
        let mut seen = Vec::new();
        let mut defaults = VolumeParts::default();
        let mut hosts = Vec::new();
        for inner in self.block(stmt, 1)? {
            let keyword = inner.keyword();
            let is_block = matches!(inner.body, Body::Block { .. });
            match (keyword.text.as_str(), resource_section(&keyword.text)) {
                ("disk", _) if !is_block => self.volume_field(inner, &mut defaults)?,
                (_, Some(section)) => {
                    self.once(&mut seen, section.keyword(), keyword)?;
                    self.option_section(inner, section, &mut settings)?;
                }
                ("on", _) => hosts.push(self.on(inner)?),
                ("device" | "meta-disk" | "flexible-meta-disk", _) => {
                    self.volume_field(inner, &mut defaults)?;
                }
                ("floating" | "stacked-on-top-of" | "connection-mesh" | "connection", _) => {
                    let option = keyword.text.clone();
                    return Err(self.error(keyword.span, ErrorKind::NotSupported { option }));
                }
                _ => {
                    let expected = format!("on, {}, device, meta-disk", section_keywords());
                    return Err(self.unknown_keyword(keyword, &context, &expected));
                }
            }
        }
        let hosts = self.finish_hosts(hosts, &defaults)?;
        Ok(ResourceDef {
            name: name.text.clone(),
            at: name.span,
            hosts,
            settings,
        })
    }

    /// Merges resource-level volume fields into each host and checks host names are unique.
    fn finish_hosts(&self, raw: Vec<RawHost<'_>>, defaults: &VolumeParts) -> Result<Vec<HostDef>> {
        let mut hosts: Vec<HostDef> = Vec::with_capacity(raw.len());
        let mut seen: Vec<(&str, Span)> = Vec::new();
        for host in raw {
            for name in host.names {
                if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name.text) {
                    return Err(self.duplicate("host", name, *first));
                }
                seen.push((&name.text, name.span));
            }
            hosts.push(self.host(host, defaults)?);
        }
        Ok(hosts)
    }

    fn host(&self, raw: RawHost<'_>, defaults: &VolumeParts) -> Result<HostDef> {
        let names: Vec<String> = raw.names.iter().map(|word| word.text.clone()).collect();
        let missing = |field, expected| {
            let host = names.join(" ");
            self.error(
                raw.at,
                ErrorKind::MissingHostField {
                    field,
                    host,
                    expected,
                },
            )
        };
        let volume = raw.volume;
        let device = volume.device.or_else(|| defaults.device.clone());
        let device = device
            .ok_or_else(|| missing("device", "device /dev/drbdN;"))?
            .0;
        let disk = volume.disk.or_else(|| defaults.disk.clone());
        let disk = disk
            .ok_or_else(|| missing("disk", "disk PATH; or disk none;"))?
            .0;
        let address = raw
            .address
            .ok_or_else(|| missing("address", "address A.B.C.D:PORT;"))?
            .0;
        let meta_disk = volume.meta_disk.or_else(|| defaults.meta_disk.clone());
        Ok(HostDef {
            names,
            device,
            disk,
            meta_disk: meta_disk.map_or(MetaDisk::Internal, |(meta_disk, _)| meta_disk),
            address,
            at: raw.at,
        })
    }

    /// `on HOST [HOST...] { device; disk; meta-disk; address; volume 0 { } }`.
    fn on<'s>(&self, stmt: &'s Stmt) -> Result<RawHost<'s>> {
        let keyword = stmt.keyword();
        let names = stmt.words.get(1..).unwrap_or_default();
        if names.is_empty() {
            let kind = ErrorKind::MissingValue {
                option: "on".to_owned(),
                expected: "a host name".to_owned(),
            };
            return Err(self.error(keyword.span, kind));
        }
        let mut host = RawHost {
            names,
            at: keyword.span,
            volume: VolumeParts::default(),
            address: None,
        };
        for inner in self.block(stmt, names.len())? {
            let inner_keyword = inner.keyword();
            match inner_keyword.text.as_str() {
                "device" | "disk" | "meta-disk" | "flexible-meta-disk" => {
                    self.volume_field(inner, &mut host.volume)?;
                }
                "volume" => self.volume(inner, &mut host.volume)?,
                "address" => {
                    let address = self.address(inner)?;
                    if let Some(first) = put(&mut host.address, address, inner_keyword.span) {
                        return Err(self.duplicate("option", inner_keyword, first));
                    }
                }
                _ => {
                    let expected = "device, disk, meta-disk, address, volume";
                    return Err(self.unknown_keyword(inner_keyword, "in on section", expected));
                }
            }
        }
        Ok(host)
    }

    /// `volume 0 { device; disk; meta-disk; }`: only volume 0 exists for now.
    fn volume(&self, stmt: &Stmt, parts: &mut VolumeParts) -> Result<()> {
        let mut args = Args {
            words: &stmt.words,
            next: 1,
        };
        let number = self.require(&mut args, "a volume number")?;
        if number.text.is_empty() || !number.text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(number.span, bad_value("volume", number, "a volume number")));
        }
        if !number.text.trim_start_matches('0').is_empty() {
            let kind = ErrorKind::VolumeNotSupported {
                number: number.text.clone(),
            };
            return Err(self.error(number.span, kind));
        }
        for inner in self.block(stmt, 1)? {
            let keyword = inner.keyword();
            match keyword.text.as_str() {
                "device" | "disk" | "meta-disk" | "flexible-meta-disk" => {
                    self.volume_field(inner, parts)?;
                }
                _ => {
                    let expected = "device, disk, meta-disk";
                    return Err(self.unknown_keyword(keyword, "in volume section", expected));
                }
            }
        }
        Ok(())
    }

    /// `device ...;`, `disk ...;` or `[flexible-]meta-disk ...;` into `parts`.
    fn volume_field(&self, stmt: &Stmt, parts: &mut VolumeParts) -> Result<()> {
        let keyword = stmt.keyword();
        let first = match keyword.text.as_str() {
            "device" => put(&mut parts.device, self.device(stmt)?, keyword.span),
            "disk" => put(&mut parts.disk, self.disk(stmt)?, keyword.span),
            "flexible-meta-disk" => put(
                &mut parts.meta_disk,
                self.flexible_meta_disk(stmt)?,
                keyword.span,
            ),
            _ => put(&mut parts.meta_disk, self.meta_disk(stmt)?, keyword.span),
        };
        match first {
            Some(first) => Err(self.duplicate("option", keyword, first)),
            None => Ok(()),
        }
    }

    fn device(&self, stmt: &Stmt) -> Result<Device> {
        let mut args = self.args(stmt)?;
        let first = self.require(&mut args, DEVICE_EXPECTED)?;
        let device = if first.text == "minor" {
            let minor = self.minor(self.require(&mut args, "a minor number")?)?;
            Device {
                path: PathBuf::from(format!("/dev/drbd{minor}")),
                minor,
            }
        } else if args.take_if("minor") {
            let minor = self.minor(self.require(&mut args, "a minor number")?)?;
            Device {
                path: PathBuf::from(&first.text),
                minor,
            }
        } else {
            let Some(digits) = first.text.strip_prefix("/dev/drbd") else {
                return Err(self.error(first.span, bad_value("device", first, DEVICE_EXPECTED)));
            };
            let minor = self.minor_digits("device", first, digits)?;
            Device {
                path: PathBuf::from(&first.text),
                minor,
            }
        };
        self.finish(args)?;
        Ok(device)
    }

    fn minor(&self, word: &Word) -> Result<u32> {
        self.minor_digits("minor", word, &word.text)
    }

    /// A minor number 0..=2^20-1 written as `digits` inside `word`.
    fn minor_digits(&self, option: &str, word: &Word, digits: &str) -> Result<u32> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            let expected = if option == "minor" {
                "a minor number"
            } else {
                DEVICE_EXPECTED
            };
            return Err(self.error(word.span, bad_value(option, word, expected)));
        }
        let minor = digits
            .parse::<u64>()
            .ok()
            .filter(|minor| *minor <= MAX_MINOR);
        minor
            .and_then(|minor| u32::try_from(minor).ok())
            .ok_or_else(|| {
                let kind = ErrorKind::OutOfRange {
                    option: option.to_owned(),
                    value: word.text.clone(),
                    range: format!("0 to {MAX_MINOR}"),
                };
                self.error(word.span, kind)
            })
    }

    /// `disk PATH;` or `disk none;` (diskless).
    fn disk(&self, stmt: &Stmt) -> Result<Option<PathBuf>> {
        let mut args = self.args(stmt)?;
        let word = self.require(&mut args, "a backing device path or none")?;
        self.finish(args)?;
        Ok((word.text != "none").then(|| PathBuf::from(&word.text)))
    }

    /// `meta-disk internal;`, `meta-disk PATH;` or `meta-disk PATH [N];` (also `[ N ]`).
    fn meta_disk(&self, stmt: &Stmt) -> Result<MetaDisk> {
        let mut args = self.args(stmt)?;
        let first = self.require(&mut args, META_DISK_EXPECTED)?;
        if first.text == "internal" {
            self.finish(args)?;
            return Ok(MetaDisk::Internal);
        }
        let path = PathBuf::from(&first.text);
        if !args.peek().is_some_and(|word| word.text.starts_with('[')) {
            self.finish(args)?;
            return Ok(MetaDisk::FlexExternal(path));
        }
        let (index_text, index_span) = bracketed(&mut args);
        let index = index_text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok());
        let Some(index) = index else {
            let kind = ErrorKind::BadValue {
                option: "meta-disk".to_owned(),
                value: index_text,
                expected: META_DISK_EXPECTED.to_owned(),
            };
            return Err(self.error(index_span, kind));
        };
        self.finish(args)?;
        Ok(MetaDisk::Indexed(path, index))
    }

    /// `flexible-meta-disk internal;` or `flexible-meta-disk PATH;` (the 8.3 spelling).
    fn flexible_meta_disk(&self, stmt: &Stmt) -> Result<MetaDisk> {
        let mut args = self.args(stmt)?;
        let word = self.require(&mut args, "internal or PATH")?;
        self.finish(args)?;
        Ok(match word.text.as_str() {
            "internal" => MetaDisk::Internal,
            path => MetaDisk::FlexExternal(PathBuf::from(path)),
        })
    }

    /// `address [ipv4] A.B.C.D:PORT;` or `address ipv6 [ADDR]:PORT;`.
    fn address(&self, stmt: &Stmt) -> Result<SocketAddr> {
        let mut args = self.args(stmt)?;
        let first = self.require(&mut args, ADDRESS_EXPECTED)?;
        let (ipv6, word) = match first.text.as_str() {
            "ipv4" => (false, self.require(&mut args, "A.B.C.D:PORT")?),
            "ipv6" => (true, self.require(&mut args, "[ADDR]:PORT")?),
            "ssocks" | "sdp" => {
                let family = first.text.clone();
                let kind = ErrorKind::AddressFamilyNotSupported { family };
                return Err(self.error(first.span, kind));
            }
            _ => (false, first),
        };
        let address = parse_socket_addr(&word.text).filter(|addr| addr.is_ipv6() == ipv6);
        let Some(address) = address else {
            let expected = if ipv6 {
                "ipv6 [ADDR]:PORT"
            } else {
                ADDRESS_EXPECTED
            };
            return Err(self.error(word.span, bad_value("address", word, expected)));
        };
        self.finish(args)?;
        Ok(address)
    }
}

/// Sets `slot` unless already set; returns where it was first set.
fn put<T>(slot: &mut Option<(T, Span)>, value: T, at: Span) -> Option<Span> {
    match slot {
        Some((_, first)) => Some(*first),
        None => {
            *slot = Some((value, at));
            None
        }
    }
}

/// Joins words up to the one ending in `]` (at most three: `[`, `N`, `]`), for `[ N ]`.
fn bracketed(args: &mut Args<'_>) -> (String, Span) {
    let mut text = String::new();
    let mut span = args.peek().map_or(Span::new(0, 0..0), |word| word.span);
    for _ in 0..3 {
        let Some(word) = args.take() else { break };
        text.push_str(&word.text);
        span.end = word.span.end.max(span.start);
        if text.ends_with(']') {
            break;
        }
    }
    (text, span)
}

fn bad_value(option: &str, word: &Word, expected: &str) -> ErrorKind {
    ErrorKind::BadValue {
        option: option.to_owned(),
        value: word.text.clone(),
        expected: expected.to_owned(),
    }
}

/// The option section a resource-level keyword opens, if any.
fn resource_section(keyword: &str) -> Option<Section> {
    Section::RESOURCE_LEVEL
        .into_iter()
        .find(|section| section.keyword() == keyword)
}

fn section_keywords() -> String {
    let keywords: Vec<&str> = Section::RESOURCE_LEVEL
        .iter()
        .map(|section| section.keyword())
        .collect();
    keywords.join(", ")
}
