//! The exit codes of the `udrbd` command: one per kind of failure, so scripts can tell a
//! missing device from corrupt meta-data. The table is printed by `udrbd help` and copied into
//! the README (a test keeps the two equal).

/// Every exit code `udrbd` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Success = 0,
    /// An IO error on the device or the output.
    Io = 1,
    /// Bad command-line usage.
    Usage = 2,
    /// The file or device does not exist.
    NotFound = 3,
    /// The path is not a regular file or block device.
    NotADevice = 4,
    /// The device is too small for meta-data.
    TooSmall = 5,
    /// No v08 meta-data (wrong magic).
    NoMetaData = 6,
    /// v07 or v09 meta-data.
    UnsupportedVersion = 7,
    /// The meta-data does not fit the device (truncated or resized).
    LayoutMismatch = 8,
    /// A syntax error in a dump file.
    DumpSyntax = 9,
    /// A dump file that ends too early.
    DumpTruncated = 10,
    /// Refused to overwrite meta-data, a file system or a partition table.
    WouldOverwrite = 11,
    /// Unclean meta-data: apply-al first.
    Unclean = 12,
    /// The activity log cannot be replayed while the primary indicator is set.
    ActivityLogUnusable = 13,
    /// A configuration error, or an unknown resource or node.
    Config = 14,
    /// The device is in use by another process.
    Busy = 15,
    /// An invalid argument value.
    InvalidValue = 16,
}

impl ExitCode {
    /// Every code with its meaning, in order.
    pub const TABLE: [(ExitCode, &'static str); 17] = [
        (ExitCode::Success, "success"),
        (
            ExitCode::Io,
            "IO error on the device (or writing the output)",
        ),
        (
            ExitCode::Usage,
            "usage error: unknown verb or option, missing argument",
        ),
        (ExitCode::NotFound, "the file or device does not exist"),
        (
            ExitCode::NotADevice,
            "not a regular file or block device (e.g. a directory)",
        ),
        (ExitCode::TooSmall, "device too small for meta-data"),
        (ExitCode::NoMetaData, "no v08 meta-data found (wrong magic)"),
        (
            ExitCode::UnsupportedVersion,
            "unsupported meta-data version (v07 or v09)",
        ),
        (
            ExitCode::LayoutMismatch,
            "meta-data does not fit the device (truncated or resized)",
        ),
        (
            ExitCode::DumpSyntax,
            "syntax error in a dump file (file:line:column)",
        ),
        (
            ExitCode::DumpTruncated,
            "dump file truncated (unexpected end of file)",
        ),
        (
            ExitCode::WouldOverwrite,
            "refused: would overwrite meta-data, a file system or a partition table (--force)",
        ),
        (
            ExitCode::Unclean,
            "refused: meta-data is unclean, run apply-al first (--force)",
        ),
        (
            ExitCode::ActivityLogUnusable,
            "activity log unusable while the node was Primary: nothing replayed",
        ),
        (
            ExitCode::Config,
            "configuration error, unknown resource or node",
        ),
        (ExitCode::Busy, "device in use by another process"),
        (ExitCode::InvalidValue, "invalid argument value"),
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The table as text, for `udrbd help` and the README.
    pub fn help_table() -> String {
        let mut s = String::from("Exit codes:\n");
        for (code, meaning) in Self::TABLE {
            s.push_str(&format!("  {:>2}  {meaning}\n", code.code()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_ordered() {
        for (i, (code, _)) in ExitCode::TABLE.iter().enumerate() {
            assert_eq!(code.code() as usize, i);
        }
    }
}
