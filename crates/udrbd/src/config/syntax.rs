//! Lexing and the generic statement tree, on winnow.
//!
//! This layer knows only DRBD's shape, not its keywords: a file is a list of statements, a
//! statement is one or more words ended by `;` or by a `{ }` block of statements. What the
//! words mean is checked by `build`, which can then name the section and the option in its
//! errors. See the grammar in the parent module's docs.
//!
//! Invariants: every [`Word`] and [`Body`] carries the span it came from; nesting deeper than
//! [`MAX_DEPTH`] is an error (the parser recurses once per block); `skip` blocks are balanced
//! but not parsed, and never reach the tree.

use std::ops::Range;

use winnow::Parser;
use winnow::error::ParserError;
use winnow::stream::{LocatingSlice, Location, Stream};
use winnow::token::{take_till, take_while};

use super::error::{ErrorKind, Found, MAX_DEPTH};
use super::source::Span;

/// One word of a statement: a bare word or the unescaped contents of a quoted string.
#[derive(Debug, Clone)]
pub(crate) struct Word {
    pub text: String,
    pub span: Span,
}

/// How a statement ends.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// `;`, with its span.
    Semicolon(Span),
    /// `{ ... }`, with the span of the `{`.
    Block { open: Span, stmts: Vec<Stmt> },
}

/// `word word ... ;` or `word word ... { ... }`; `words` is never empty.
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    pub words: Vec<Word>,
    pub body: Body,
}

impl Stmt {
    /// The first word (the keyword).
    pub fn keyword(&self) -> &Word {
        // `words` is never empty by construction; the fallback keeps this total.
        self.words.first().unwrap_or(&EMPTY_WORD)
    }
}

static EMPTY_WORD: Word = Word {
    text: String::new(),
    span: Span {
        file: 0,
        start: 0,
        end: 0,
    },
};

/// The words of a statement joined by spaces, for messages.
pub(crate) fn joined(words: &[Word]) -> String {
    let texts: Vec<&str> = words.iter().map(|word| word.text.as_str()).collect();
    texts.join(" ")
}

type Input<'a> = LocatingSlice<&'a str>;

/// A syntax error: byte range in the file being parsed and what went wrong.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub range: Range<usize>,
    pub kind: ErrorKind,
}

impl<'a> ParserError<Input<'a>> for SyntaxError {
    type Inner = Self;

    // Only reached if a winnow primitive fails, which the parser below rules out by peeking
    // first; still a proper error, never a panic.
    fn from_input(input: &Input<'a>) -> Self {
        let at = input.current_token_start();
        SyntaxError {
            range: at..at,
            kind: ErrorKind::Unexpected {
                found: found(input.peek_token()),
                expected: "a statement".to_owned(),
            },
        }
    }

    fn into_inner(self) -> Result<Self, Self> {
        Ok(self)
    }
}

type PResult<T> = Result<T, SyntaxError>;

fn found(token: Option<char>) -> Found {
    token.map_or(Found::EndOfFile, Found::Symbol)
}

/// Characters of a bare word: anything but whitespace and the five DRBD specials.
fn is_bare(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '{' | '}' | ';' | '"' | '#')
}

/// Parses one file into its statement tree.
pub(crate) fn parse_file(file: usize, text: &str) -> PResult<Vec<Stmt>> {
    let mut input = LocatingSlice::new(text);
    TreeParser { file }.statements(&mut input, 0, None)
}

/// The block being parsed: its `{` and the words before it, for "unterminated block".
struct Open<'w> {
    brace: Range<usize>,
    words: &'w [Word],
}

struct TreeParser {
    file: usize,
}

impl TreeParser {
    fn span(&self, range: Range<usize>) -> Span {
        Span::new(self.file, range)
    }

    /// Statements up to the end of file (top level) or the `}` closing `open`.
    fn statements(
        &self,
        input: &mut Input<'_>,
        depth: usize,
        open: Option<Open<'_>>,
    ) -> PResult<Vec<Stmt>> {
        let mut stmts = Vec::new();
        loop {
            trivia(input)?;
            let at = input.current_token_start();
            match (input.peek_token(), &open) {
                (None, None) => return Ok(stmts),
                (None, Some(open)) => return Err(unterminated_block(open)),
                (Some('}'), Some(_)) => {
                    input.next_token();
                    return Ok(stmts);
                }
                (Some(symbol @ ('}' | '{' | ';')), _) => {
                    return Err(SyntaxError {
                        range: at..at + 1,
                        kind: ErrorKind::Unexpected {
                            found: Found::Symbol(symbol),
                            expected: "a keyword".to_owned(),
                        },
                    });
                }
                (Some(_), _) => stmts.extend(self.statement(input, depth)?),
            }
        }
    }

    /// One statement; `None` for a `skip` statement, which is dropped.
    fn statement(&self, input: &mut Input<'_>, depth: usize) -> PResult<Option<Stmt>> {
        let words = self.words(input)?;
        trivia(input)?;
        let at = input.current_token_start();
        match input.peek_token() {
            Some(';') => {
                input.next_token();
                let skip = is_skip(&words);
                let body = Body::Semicolon(self.span(at..at + 1));
                Ok((!skip).then_some(Stmt { words, body }))
            }
            Some('{') if is_skip(&words) => {
                skip_balanced(input, &words)?;
                Ok(None)
            }
            Some('{') => self.block(input, depth + 1, words).map(Some),
            other => Err(missing_semicolon(&words, found(other))),
        }
    }

    /// Words up to the next `;`, `{`, `}` or end of file.
    fn words(&self, input: &mut Input<'_>) -> PResult<Vec<Word>> {
        let mut words = Vec::new();
        loop {
            trivia(input)?;
            let (text, range) = match input.peek_token() {
                Some('"') => quoted(input)?,
                Some(c) if is_bare(c) => bare(input)?,
                _ => return Ok(words),
            };
            words.push(Word {
                text,
                span: self.span(range),
            });
        }
    }

    /// `{ statements }` after `words`.
    fn block(&self, input: &mut Input<'_>, depth: usize, words: Vec<Word>) -> PResult<Stmt> {
        let at = input.current_token_start();
        if depth > MAX_DEPTH {
            return Err(SyntaxError {
                range: at..at + 1,
                kind: ErrorKind::TooDeep,
            });
        }
        input.next_token();
        let open = Open {
            brace: at..at + 1,
            words: &words,
        };
        let stmts = self.statements(input, depth, Some(open))?;
        let body = Body::Block {
            open: self.span(at..at + 1),
            stmts,
        };
        Ok(Stmt { words, body })
    }
}

fn is_skip(words: &[Word]) -> bool {
    words.first().is_some_and(|word| word.text == "skip")
}

fn unterminated_block(open: &Open<'_>) -> SyntaxError {
    SyntaxError {
        range: open.brace.clone(),
        kind: ErrorKind::UnterminatedBlock {
            after: joined(open.words),
        },
    }
}

/// "missing ';'", placed just after the last word: where the `;` belongs.
fn missing_semicolon(words: &[Word], found: Found) -> SyntaxError {
    let end = words.last().map_or(0, |word| word.span.end);
    SyntaxError {
        range: end..end,
        kind: ErrorKind::MissingSemicolon {
            after: joined(words),
            found,
        },
    }
}

/// Whitespace and `#` comments.
fn trivia(input: &mut Input<'_>) -> PResult<()> {
    loop {
        take_while(0.., char::is_whitespace)
            .void()
            .parse_next(input)?;
        if input.peek_token() != Some('#') {
            return Ok(());
        }
        take_till(0.., '\n').void().parse_next(input)?;
    }
}

fn bare(input: &mut Input<'_>) -> PResult<(String, Range<usize>)> {
    let (text, range) = take_while(1.., is_bare).with_span().parse_next(input)?;
    Ok((text.to_owned(), range))
}

/// `"..."` on one line; `\n`, `\t` are newline and tab, a backslash before any other character
/// stands for that character (so `\"` and `\\` work).
fn quoted(input: &mut Input<'_>) -> PResult<(String, Range<usize>)> {
    let start = input.current_token_start();
    '"'.parse_next(input)?;
    let mut text = String::new();
    loop {
        let c = match input.next_token() {
            Some('"') => return Ok((text, start..input.current_token_start())),
            Some('\\') => match input.next_token() {
                Some('n') => '\n',
                Some('t') => '\t',
                Some(c) if c != '\n' => c,
                _ => return Err(unterminated_string(start)),
            },
            Some('\n') | None => return Err(unterminated_string(start)),
            Some(c) => c,
        };
        text.push(c);
    }
}

fn unterminated_string(start: usize) -> SyntaxError {
    SyntaxError {
        range: start..start + 1,
        kind: ErrorKind::UnterminatedString,
    }
}

/// Consumes the block of a `skip` statement, counting braces (iteratively, so any depth is
/// fine) and still honouring strings and comments, so a `}` inside them does not count.
fn skip_balanced(input: &mut Input<'_>, words: &[Word]) -> PResult<()> {
    let open_at = input.current_token_start();
    let mut depth = 0usize;
    loop {
        trivia(input)?;
        match input.peek_token() {
            None => {
                let open = Open {
                    brace: open_at..open_at + 1,
                    words,
                };
                return Err(unterminated_block(&open));
            }
            Some('"') => {
                quoted(input)?;
            }
            Some(c @ ('{' | '}' | ';')) => {
                input.next_token();
                depth = match c {
                    '{' => depth + 1,
                    '}' => depth.saturating_sub(1),
                    _ => depth,
                };
                if depth == 0 && c == '}' {
                    return Ok(());
                }
            }
            Some(_) => {
                bare(input)?;
            }
        }
    }
}
