//! `udrbd`: the command-line entry point. Errors print one line on stderr and exit with the
//! code of the exit-code table (`udrbd help`).

use std::io::{BufWriter, Write};

use clap::Parser;
use udrbd::cli::{self, Cli};
use udrbd::exit_code::ExitCode;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut warn = std::io::stderr();
    let result = cli::run(cli, &argv, &mut out, &mut warn);
    let flushed = out.flush();
    let code = match (result, flushed) {
        (Ok(()), Ok(())) => ExitCode::Success,
        (Err(e), _) => {
            let _ = writeln!(warn, "udrbd: {e}");
            e.exit_code()
        }
        (Ok(()), Err(e)) => {
            let _ = writeln!(warn, "udrbd: writing output: {e}");
            ExitCode::Io
        }
    };
    std::process::ExitCode::from(code.code())
}
