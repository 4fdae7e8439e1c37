//! Transmission requests: what leaves the machine for the block device, what comes back, and
//! the validation of a request header against the export (a pure decision, [`validate`]).
//!
//! Validation follows proto.md's "Error values" and "Block size constraints", in this order
//! (first failure wins):
//!
//! | check                                                   | reply                        |
//! |---------------------------------------------------------|------------------------------|
//! | `NBD_CMD_DISC`                                          | none: drain, then close      |
//! | type unknown, or FLUSH/TRIM/WRITE_ZEROES not advertised | `EINVAL`                     |
//! | a flag not valid for the command (FUA without SEND_FUA, |                              |
//! | NO_HOLE outside WRITE_ZEROES, DF, unknown bits)         | `EINVAL`                     |
//! | WRITE/TRIM/WRITE_ZEROES on a read-only export           | `EPERM`                      |
//! | FLUSH with non-zero offset or length                    | `EINVAL`                     |
//! | READ/WRITE/WRITE_ZEROES longer than 32 MiB              | `EINVAL` (TRIM may be longer)|
//! | offset or length not a multiple of 512                  | `EINVAL`                     |
//! | past the end: WRITE/WRITE_ZEROES                        | `ENOSPC`                     |
//! | past the end: READ/TRIM                                 | `EINVAL`                     |
//! | length 0 (not FLUSH)                                    | success at once, no device IO|
//!
//! A rejected WRITE's data still follows its header on the wire; the caller of [`validate`]
//! skips it (see `ServerConnection`), without buffering it, and replies once it is skipped.

use bytes::Bytes;

use crate::export::ExportFlags;
use crate::wire::{self, Cookie, Errno, RequestHeader};

/// The machine's own number for a request in flight, unique for the connection's lifetime.
/// Completions name it, not the cookie: a client MAY reuse a cookie, and two requests in
/// flight with one cookie must still be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A request for the block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    /// Name it in the completion.
    pub id: RequestId,
    /// The client's cookie (for logs; the machine puts it in the reply).
    pub cookie: Cookie,
    /// What to do.
    pub op: Op,
}

/// A block-device operation. Offsets and lengths are multiples of 512, within the export, and
/// non-zero; lengths of READ, WRITE and WRITE_ZEROES are at most 32 MiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Complete with [`Completion::Data`] of exactly `len` bytes.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
    },
    /// Complete with [`Completion::Done`] once written (durably, if `fua`).
    Write {
        /// Byte offset.
        offset: u64,
        /// The client's data (`data.len()` is the length).
        data: Bytes,
        /// Force unit access: durable before the reply.
        fua: bool,
    },
    /// Complete once every write completed before it is durable.
    Flush,
    /// Discard (a hint; may be ignored).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write zeroes; with `no_hole` the range must stay allocated.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// `NBD_CMD_FLAG_NO_HOLE`.
        no_hole: bool,
        /// Force unit access.
        fua: bool,
    },
}

impl Op {
    /// Whether the reply to this op carries data.
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Read { .. })
    }
}

/// The caller's result for a [`BlockRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Success of a request without reply data.
    Done,
    /// Success of a READ: exactly the requested number of bytes.
    Data(Bytes),
    /// Failure; becomes an error reply (with the errno's message if structured).
    Error(Errno),
}

/// What to do with a decoded request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// Reply with this error at once (and skip a WRITE's data).
    Reject { errno: Errno, message: &'static str },
    /// A length-0 request: reply success at once.
    Trivial,
    /// Hand to the device. For a WRITE, `Op::Write::data` is still empty: the caller fills it.
    Accept(Op),
}

/// Decides what a request header asks for, against an export of `size` bytes with `flags`.
pub(crate) fn validate(header: &RequestHeader, size: u64, flags: ExportFlags) -> Verdict {
    let Some(command) = Command::from_wire(header.command, flags) else {
        if header.command == wire::NBD_CMD_DISC {
            return Verdict::Disconnect;
        }
        return reject(Errno::Inval, "unknown or not advertised command");
    };
    if let Err(verdict) = check_flags(header.flags, command, flags) {
        return verdict;
    }
    if flags.read_only && command.writes() {
        return reject(Errno::Perm, "the export is read-only");
    }
    if command == Command::Flush {
        if header.offset != 0 || header.length != 0 {
            return reject(Errno::Inval, "flush with non-zero offset or length");
        }
        return Verdict::Accept(Op::Flush);
    }
    if let Err(verdict) = check_range(header, command, size) {
        return verdict;
    }
    if header.length == 0 {
        return Verdict::Trivial;
    }
    Verdict::Accept(command.op(header))
}

fn reject(errno: Errno, message: &'static str) -> Verdict {
    Verdict::Reject { errno, message }
}

/// The commands this server executes (DISC is handled before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
}

impl Command {
    /// The command, if known and advertised for an export with `flags`.
    fn from_wire(command: u16, flags: ExportFlags) -> Option<Self> {
        match command {
            wire::NBD_CMD_READ => Some(Command::Read),
            wire::NBD_CMD_WRITE => Some(Command::Write),
            wire::NBD_CMD_FLUSH if flags.flush => Some(Command::Flush),
            wire::NBD_CMD_TRIM if flags.trim => Some(Command::Trim),
            wire::NBD_CMD_WRITE_ZEROES if flags.write_zeroes => Some(Command::WriteZeroes),
            _ => None,
        }
    }

    fn writes(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }

    /// Whether the length is limited by the maximum block size: the spec lists READ, WRITE,
    /// CACHE and WRITE_ZEROES; TRIM carries no payload and is not limited.
    fn length_limited(self) -> bool {
        matches!(self, Command::Read | Command::Write | Command::WriteZeroes)
    }

    fn op(self, header: &RequestHeader) -> Op {
        let offset = header.offset;
        let len = header.length;
        let fua = header.flags & wire::NBD_CMD_FLAG_FUA != 0;
        match self {
            Command::Read => Op::Read { offset, len },
            Command::Write => Op::Write {
                offset,
                data: Bytes::new(),
                fua,
            },
            Command::Flush => Op::Flush,
            Command::Trim => Op::Trim { offset, len, fua },
            Command::WriteZeroes => {
                let no_hole = header.flags & wire::NBD_CMD_FLAG_NO_HOLE != 0;
                Op::WriteZeroes {
                    offset,
                    len,
                    no_hole,
                    fua,
                }
            }
        }
    }
}

/// FUA is valid on every command once `NBD_FLAG_SEND_FUA` was advertised (the server MUST
/// accept it, even by ignoring it); NO_HOLE only on WRITE_ZEROES; nothing else is valid (DF
/// needs `NBD_FLAG_SEND_DF`, FAST_ZERO `NBD_FLAG_SEND_FAST_ZERO`, neither advertised).
fn check_flags(request_flags: u16, command: Command, flags: ExportFlags) -> Result<(), Verdict> {
    let mut allowed = 0;
    if flags.fua {
        allowed |= wire::NBD_CMD_FLAG_FUA;
    }
    if command == Command::WriteZeroes {
        allowed |= wire::NBD_CMD_FLAG_NO_HOLE;
    }
    if request_flags & !allowed != 0 {
        return Err(reject(
            Errno::Inval,
            "command flag not valid for this command or export",
        ));
    }
    Ok(())
}

fn check_range(header: &RequestHeader, command: Command, size: u64) -> Result<(), Verdict> {
    if command.length_limited() && header.length > wire::MAX_BLOCK_SIZE {
        return Err(reject(
            Errno::Inval,
            "request longer than the maximum block size of 32 MiB",
        ));
    }
    let block = u64::from(wire::MIN_BLOCK_SIZE);
    if !header.offset.is_multiple_of(block) || !u64::from(header.length).is_multiple_of(block) {
        return Err(reject(
            Errno::Inval,
            "offset or length not a multiple of 512 bytes",
        ));
    }
    let past_end = match header.offset.checked_add(u64::from(header.length)) {
        Some(end) => end > size,
        None => true,
    };
    if past_end {
        return Err(match command {
            Command::Write | Command::WriteZeroes => {
                reject(Errno::NoSpc, "write past the end of the export")
            }
            _ => reject(Errno::Inval, "request past the end of the export"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 20;

    fn header(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: Cookie(1),
            offset,
            length,
        }
    }

    fn errno_of(verdict: Verdict) -> Option<Errno> {
        match verdict {
            Verdict::Reject { errno, .. } => Some(errno),
            _ => None,
        }
    }

    #[test]
    fn accepts_valid_requests() {
        let all = ExportFlags::block_device();
        assert_eq!(
            validate(&header(wire::NBD_CMD_READ, 0, 512, 4096), SIZE, all),
            Verdict::Accept(Op::Read {
                offset: 512,
                len: 4096
            })
        );
        assert_eq!(
            validate(
                &header(wire::NBD_CMD_WRITE, wire::NBD_CMD_FLAG_FUA, 0, 512),
                SIZE,
                all
            ),
            Verdict::Accept(Op::Write {
                offset: 0,
                data: Bytes::new(),
                fua: true
            })
        );
        assert_eq!(
            validate(&header(wire::NBD_CMD_FLUSH, 0, 0, 0), SIZE, all),
            Verdict::Accept(Op::Flush)
        );
        assert_eq!(
            validate(&header(wire::NBD_CMD_TRIM, 0, 0, SIZE as u32), SIZE, all),
            Verdict::Accept(Op::Trim {
                offset: 0,
                len: SIZE as u32,
                fua: false
            })
        );
        assert_eq!(
            validate(
                &header(
                    wire::NBD_CMD_WRITE_ZEROES,
                    wire::NBD_CMD_FLAG_NO_HOLE | wire::NBD_CMD_FLAG_FUA,
                    1024,
                    512
                ),
                SIZE,
                all
            ),
            Verdict::Accept(Op::WriteZeroes {
                offset: 1024,
                len: 512,
                no_hole: true,
                fua: true
            })
        );
        assert_eq!(
            validate(&header(wire::NBD_CMD_DISC, 0, 0, 0), SIZE, all),
            Verdict::Disconnect
        );
        assert_eq!(
            validate(&header(wire::NBD_CMD_READ, 0, SIZE, 0), SIZE, all),
            Verdict::Trivial
        );
    }

    #[test]
    fn rejects_per_the_table() {
        let all = ExportFlags::block_device();
        let none = ExportFlags::default();
        let cases: &[(RequestHeader, ExportFlags, Errno)] = &[
            (header(5, 0, 0, 512), all, Errno::Inval), // CACHE: unknown here
            (header(0xffff, 0, 0, 512), all, Errno::Inval), // unknown
            (header(wire::NBD_CMD_FLUSH, 0, 0, 0), none, Errno::Inval), // not advertised
            (header(wire::NBD_CMD_TRIM, 0, 0, 512), none, Errno::Inval), // not advertised
            (
                header(wire::NBD_CMD_WRITE_ZEROES, 0, 0, 512),
                none,
                Errno::Inval,
            ),
            (
                header(wire::NBD_CMD_WRITE, wire::NBD_CMD_FLAG_FUA, 0, 512),
                none,
                Errno::Inval,
            ),
            (
                header(wire::NBD_CMD_WRITE, wire::NBD_CMD_FLAG_NO_HOLE, 0, 512),
                all,
                Errno::Inval,
            ),
            (
                header(wire::NBD_CMD_READ, wire::NBD_CMD_FLAG_DF, 0, 512),
                all,
                Errno::Inval,
            ),
            (
                header(wire::NBD_CMD_READ, 1 << 9, 0, 512),
                all,
                Errno::Inval,
            ),
            (header(wire::NBD_CMD_FLUSH, 0, 512, 0), all, Errno::Inval),
            (
                header(wire::NBD_CMD_READ, 0, 0, wire::MAX_BLOCK_SIZE + 512),
                all,
                Errno::Inval,
            ),
            (
                header(wire::NBD_CMD_WRITE, 0, 0, wire::MAX_BLOCK_SIZE + 512),
                all,
                Errno::Inval,
            ),
            (
                header(wire::NBD_CMD_WRITE_ZEROES, 0, 0, wire::MAX_BLOCK_SIZE + 512),
                all,
                Errno::Inval,
            ),
            (header(wire::NBD_CMD_READ, 0, 1, 512), all, Errno::Inval),
            (header(wire::NBD_CMD_READ, 0, 0, 100), all, Errno::Inval),
            (header(wire::NBD_CMD_WRITE, 0, 4, 512), all, Errno::Inval),
            (header(wire::NBD_CMD_READ, 0, SIZE, 512), all, Errno::Inval),
            (
                header(wire::NBD_CMD_TRIM, 0, SIZE - 512, 1024),
                all,
                Errno::Inval,
            ),
            (header(wire::NBD_CMD_WRITE, 0, SIZE, 512), all, Errno::NoSpc),
            (
                header(wire::NBD_CMD_WRITE_ZEROES, 0, SIZE - 512, 1024),
                all,
                Errno::NoSpc,
            ),
            (
                header(wire::NBD_CMD_WRITE, 0, u64::MAX - 511, 1024),
                all,
                Errno::NoSpc,
            ),
        ];
        for (h, flags, errno) in cases {
            assert_eq!(
                errno_of(validate(h, SIZE, *flags)),
                Some(*errno),
                "{h:?} {flags:?}"
            );
        }
        let ro = ExportFlags {
            read_only: true,
            ..all
        };
        for command in [
            wire::NBD_CMD_WRITE,
            wire::NBD_CMD_TRIM,
            wire::NBD_CMD_WRITE_ZEROES,
        ] {
            assert_eq!(
                errno_of(validate(&header(command, 0, 0, 512), SIZE, ro)),
                Some(Errno::Perm)
            );
        }
        assert!(matches!(
            validate(&header(wire::NBD_CMD_READ, 0, 0, 512), SIZE, ro),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn fua_is_accepted_on_any_command_once_advertised() {
        let all = ExportFlags::block_device();
        for command in [wire::NBD_CMD_READ, wire::NBD_CMD_FLUSH, wire::NBD_CMD_TRIM] {
            let h = header(
                command,
                wire::NBD_CMD_FLAG_FUA,
                0,
                if command == wire::NBD_CMD_FLUSH {
                    0
                } else {
                    512
                },
            );
            assert!(
                matches!(validate(&h, SIZE, all), Verdict::Accept(_)),
                "{command}"
            );
        }
    }
}
