//! The `portwatch` binary: flag parsing, output and exit codes over portwatch-core.
//!
//! Glue only. Anything a library user would want belongs in portwatch-core.

mod args;
mod list;
mod watch;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// Why a command failed at run time (exit status 1).
#[derive(Debug)]
pub enum Error {
    /// From the library.
    Core(portwatch_core::Error),
    /// Writing output.
    Io(io::Error),
}

impl From<portwatch_core::Error> for Error {
    fn from(e: portwatch_core::Error) -> Self {
        Error::Core(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Core(portwatch_core::Error::NetlinkUnavailable { source }) => write!(
                f,
                "cannot open a NETLINK_SOCK_DIAG socket: {source}; \
                 use --backend auto or --backend proc to read /proc/net instead"
            ),
            Error::Core(e @ portwatch_core::Error::Io { path, .. })
                if path.starts_with("/proc") =>
            {
                write!(f, "{e} (is procfs mounted at /proc?)")
            }
            Error::Core(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "writing output: {e}"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::List(args) => list::run(args, &mut out),
        Command::Watch(args) => watch::run(args, &mut out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`portwatch list | head -1`) is how a reader says it has enough.
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // A setting the library refused is a usage error, like a bad flag.
        Err(Error::Core(portwatch_core::Error::InvalidSetting { setting, reason })) => {
            eprintln!("portwatch: invalid --{}: {reason}", setting.replace('_', "-"));
            ExitCode::from(2)
        }
        Err(e) => {
            // If stdout is gone too there is nobody to tell; the status still says it.
            let _ = out.flush();
            eprintln!("portwatch: {e}");
            ExitCode::from(1)
        }
    }
}
