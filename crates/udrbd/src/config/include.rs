//! Reading files and expanding `include "glob";`.
//!
//! An include is replaced, wherever it appears (top level or inside a block), by the
//! statements of the files its glob matches, in sorted order, like drbdadm's. A relative glob
//! is relative to the including file's directory. `*` and `?` are wildcards (in any path
//! component; a leading `.` must be matched explicitly); a glob with wildcards that matches
//! nothing includes nothing, while a plain path that does not exist is an error.
//!
//! Invariants: a file never includes itself through any chain (the stack of files being
//! expanded is checked by canonical path); at most [`MAX_INCLUDE_DEPTH`] nested and
//! [`MAX_FILES`] files in all; each file at most [`MAX_FILE_BYTES`].

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::error::{
    ConfigError, ErrorKind, Found, MAX_FILE_BYTES, MAX_FILES, MAX_INCLUDE_DEPTH, ReadFailure,
};
use super::source::{SourceFile, Span};
use super::syntax::{Body, Stmt, Word, joined, parse_file};

type Result<T> = std::result::Result<T, ConfigError>;

/// All files read and the expanded top-level statements.
pub(crate) struct Loaded {
    pub files: Vec<SourceFile>,
    pub stmts: Vec<Stmt>,
}

/// Reads `path` and everything it includes.
pub(crate) fn load(path: &Path) -> Result<Loaded> {
    let name = path.display().to_string();
    let whole_file = |reason| ConfigError::whole_file(&name, ErrorKind::Read { reason });
    let text = read_limited(path).map_err(whole_file)?;
    let canonical = fs::canonicalize(path).map_err(|error| whole_file(io_failure(&error)))?;
    let mut loader = Loader {
        files: Vec::new(),
        reads_files: true,
        stack: Vec::new(),
    };
    let stmts = loader.file(name, path.to_path_buf(), canonical, text)?;
    Ok(Loaded {
        files: loader.files,
        stmts,
    })
}

/// Parses `text` as a file named `name`; any `include` is an error (no file is read).
pub(crate) fn load_str(name: &str, text: &str) -> Result<Loaded> {
    let mut loader = Loader {
        files: Vec::new(),
        reads_files: false,
        stack: Vec::new(),
    };
    let stmts = loader.file(
        name.to_owned(),
        PathBuf::new(),
        PathBuf::new(),
        text.to_owned(),
    )?;
    Ok(Loaded {
        files: loader.files,
        stmts,
    })
}

struct Loader {
    files: Vec<SourceFile>,
    /// False for `parse_str`: includes are refused.
    reads_files: bool,
    /// Canonical paths and names of the files being expanded, outermost first.
    stack: Vec<(PathBuf, String)>,
}

impl Loader {
    /// Parses one file's text and expands its includes.
    fn file(
        &mut self,
        name: String,
        path: PathBuf,
        canonical: PathBuf,
        text: String,
    ) -> Result<Vec<Stmt>> {
        let id = self.files.len();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.files.push(SourceFile::new(name.clone(), path, text));
        let parsed = match self.files.last() {
            Some(file) => parse_file(id, &file.text),
            None => Ok(Vec::new()),
        };
        let stmts = parsed.map_err(|error| {
            ConfigError::at(&self.files, Span::new(id, error.range), error.kind)
        })?;
        self.stack.push((canonical, name));
        let expanded = self.expand(stmts, &dir);
        self.stack.pop();
        expanded
    }

    /// Replaces every include, at any depth, by the included statements.
    fn expand(&mut self, stmts: Vec<Stmt>, dir: &Path) -> Result<Vec<Stmt>> {
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in stmts {
            if stmt.keyword().text == "include" {
                out.extend(self.include(&stmt, dir)?);
                continue;
            }
            let body = match stmt.body {
                Body::Block { open, stmts } => Body::Block {
                    open,
                    stmts: self.expand(stmts, dir)?,
                },
                semicolon => semicolon,
            };
            out.push(Stmt {
                words: stmt.words,
                body,
            });
        }
        Ok(out)
    }

    fn error(&self, span: Span, kind: ErrorKind) -> ConfigError {
        ConfigError::at(&self.files, span, kind)
    }

    /// `include "glob";`
    fn include(&mut self, stmt: &Stmt, dir: &Path) -> Result<Vec<Stmt>> {
        let pattern = self.include_pattern(stmt)?;
        if !self.reads_files {
            let kind = ErrorKind::IncludeWithoutFiles {
                pattern: pattern.text.clone(),
            };
            return Err(self.error(pattern.span, kind));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(self.error(pattern.span, ErrorKind::IncludeTooDeep));
        }
        let mut stmts = Vec::new();
        for path in glob(dir, &pattern.text) {
            stmts.extend(self.include_file(path, pattern)?);
        }
        Ok(stmts)
    }

    /// The one word of an include statement.
    fn include_pattern<'s>(&self, stmt: &'s Stmt) -> Result<&'s Word> {
        let keyword = stmt.keyword();
        if let Body::Block { open, .. } = &stmt.body {
            let kind = ErrorKind::UnexpectedBlock {
                keyword: keyword.text.clone(),
            };
            return Err(self.error(*open, kind));
        }
        match stmt.words.as_slice() {
            [_, pattern] => Ok(pattern),
            [_, pattern, extra, ..] => Err(self.error(
                pattern.span.after(),
                ErrorKind::MissingSemicolon {
                    after: joined(&stmt.words[..2]),
                    found: Found::Word(extra.text.clone()),
                },
            )),
            _ => Err(self.error(
                keyword.span,
                ErrorKind::MissingValue {
                    option: "include".to_owned(),
                    expected: "a file name or glob in quotes".to_owned(),
                },
            )),
        }
    }

    fn include_file(&mut self, path: PathBuf, pattern: &Word) -> Result<Vec<Stmt>> {
        if self.files.len() >= MAX_FILES {
            return Err(self.error(pattern.span, ErrorKind::TooManyFiles));
        }
        let name = path.display().to_string();
        let read_error = |reason| match reason {
            ReadFailure::NotFound => ErrorKind::IncludeNotFound {
                pattern: pattern.text.clone(),
            },
            reason => ErrorKind::IncludeRead {
                path: name.clone(),
                reason,
            },
        };
        let canonical = fs::canonicalize(&path)
            .map_err(|error| self.error(pattern.span, read_error(io_failure(&error))))?;
        if let Some(start) = self.stack.iter().position(|(open, _)| *open == canonical) {
            let mut chain: Vec<&str> = self.stack[start..]
                .iter()
                .map(|(_, n)| n.as_str())
                .collect();
            chain.push(&name);
            let kind = ErrorKind::IncludeCycle {
                chain: chain.join(" -> "),
            };
            return Err(self.error(pattern.span, kind));
        }
        let text =
            read_limited(&path).map_err(|reason| self.error(pattern.span, read_error(reason)))?;
        self.file(name, path, canonical, text)
    }
}

/// Reads a regular file of at most [`MAX_FILE_BYTES`] as UTF-8.
fn read_limited(path: &Path) -> std::result::Result<String, ReadFailure> {
    let metadata = fs::metadata(path).map_err(|error| io_failure(&error))?;
    if !metadata.is_file() {
        return Err(ReadFailure::NotAFile);
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(ReadFailure::TooLarge);
    }
    let file = fs::File::open(path).map_err(|error| io_failure(&error))?;
    let mut bytes = Vec::new();
    // `take`: the file may have grown since `metadata`.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| io_failure(&error))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadFailure::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| ReadFailure::NotUtf8)
}

fn io_failure(error: &std::io::Error) -> ReadFailure {
    match error.kind() {
        std::io::ErrorKind::NotFound => ReadFailure::NotFound,
        kind => ReadFailure::Io(kind),
    }
}

fn has_wildcard(text: &str) -> bool {
    text.contains(['*', '?'])
}

/// The paths `pattern` (relative to `dir`) names, sorted. Without wildcards, the one path,
/// whether it exists or not (reading it reports "not found").
fn glob(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = dir.join(pattern);
    if !has_wildcard(pattern) {
        return vec![full];
    }
    let mut candidates = vec![PathBuf::new()];
    for component in full.components() {
        candidates = match component {
            Component::Normal(part) if part.to_str().is_some_and(has_wildcard) => {
                let part = part.to_str().unwrap_or_default();
                candidates
                    .iter()
                    .flat_map(|base| matching_entries(base, part))
                    .collect()
            }
            other => candidates
                .into_iter()
                .map(|base| base.join(other))
                .collect(),
        };
    }
    candidates.retain(|path| path.exists());
    candidates.sort();
    candidates
}

/// Entries of directory `base` whose names match `part`.
fn matching_entries(base: &Path, part: &str) -> Vec<PathBuf> {
    let dir = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let pattern: Vec<char> = part.chars().collect();
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') || part.starts_with('.'))
        .filter(|name| wildcard_match(&pattern, &name.chars().collect::<Vec<_>>()))
        .collect();
    names.sort();
    names.into_iter().map(|name| base.join(name)).collect()
}

/// `*` matches any run of characters, `?` any one; iterative with one backtrack point, so
/// linear-ish and no recursion.
fn wildcard_match(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = name.get(n) {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&want) if want == '?' || want == c => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    fn matches(pattern: &str, name: &str) -> bool {
        let pattern: Vec<char> = pattern.chars().collect();
        let name: Vec<char> = name.chars().collect();
        wildcard_match(&pattern, &name)
    }

    #[test]
    fn wildcards() {
        assert!(matches("*.res", "r0.res"));
        assert!(matches("*", ""));
        assert!(matches("r?.res", "r1.res"));
        assert!(matches("*a*b", "xxaxxb"));
        assert!(!matches("*.res", "r0.conf"));
        assert!(!matches("r?.res", "r10.res"));
        assert!(!matches("", "x"));
    }
}
