//! `udrbd`: the command-line entry point. Errors print one line on stderr and exit with the
//! code of the exit-code table (`udrbd help`).

use std::io::{BufWriter, Write};

use clap::Parser;
use udrbd::cli::{self, Cli};
use udrbd::exit_code::ExitCode;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    if matches!(cli.verb, cli::Verb::Daemon { .. }) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        // A panic is a bug (in the engine or a driver): the whole daemon stops at once, rather
        // than serve on with one resource's loop gone (its peer and NBD sockets closed).
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::abort();
        }));
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut warn = std::io::stderr();
    let result = cli::run(cli, &argv, &mut out, &mut warn);
    let flushed = out.flush();
    let code = match (result, flushed) {
        (Ok(()), Ok(())) => ExitCode::Success.code(),
        (Err(e @ cli::CliError::Daemon { .. }), _) => {
            // DRBD's own wording, e.g. "r0: State change failed: (-2) Need access to UpToDate data".
            let _ = writeln!(warn, "{e}");
            e.exit_code()
        }
        (Err(e), _) => {
            let _ = writeln!(warn, "udrbd: {e}");
            e.exit_code()
        }
        (Ok(()), Err(e)) => {
            let _ = writeln!(warn, "udrbd: writing output: {e}");
            ExitCode::Io.code()
        }
    };
    std::process::ExitCode::from(code)
}
