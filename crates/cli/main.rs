//! The `portwatch` binary: flag parsing, output and exit codes over portwatch-core.
//!
//! Glue only. Anything a library user would want belongs in portwatch-core. Flags are parsed
//! in `args`, turned into library calls in `select`, written out by `render`; `list` and
//! `watch` orchestrate, `hooks` runs `--exec`, `metrics` serves `--metrics`.

mod args;
mod hooks;
mod list;
mod metrics;
mod render;
mod select;
mod watch;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, ShellArg};

/// Why a command failed at run time (exit status 1).
#[derive(Debug)]
pub enum Error {
    /// From the library.
    Core(portwatch_core::Error),
    /// Writing output.
    Io(io::Error),
    /// The metrics endpoint could not listen on this address.
    Metrics { addr: std::net::SocketAddr, source: io::Error },
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
            // Out of file descriptors, /proc/net would not help: the library's text says what does.
            Error::Core(portwatch_core::Error::NetlinkUnavailable { source })
                if !matches!(
                    source.raw_os_error(),
                    Some(nix::libc::EMFILE | nix::libc::ENFILE)
                ) =>
            {
                write!(
                    f,
                    "cannot open a NETLINK_SOCK_DIAG socket: {source}; \
                 use --backend auto or --backend proc to read /proc/net instead"
                )
            }
            Error::Core(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "writing output: {e}"),
            Error::Metrics { addr, source } => {
                write!(f, "cannot serve metrics on {addr}: {source}")?;
                match source.kind() {
                    io::ErrorKind::AddrInUse => {
                        write!(f, "; another process listens there: choose another port")
                    }
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "; a port below 1024 needs root or CAP_NET_BIND_SERVICE: choose a higher one"
                    ),
                    io::ErrorKind::AddrNotAvailable => {
                        write!(f, "; no interface of this host has that address")
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The settings `watch` reads from the environment.
const SETTINGS_FROM_ENV: [&str; 10] = [
    "SCAN_INTERVAL",
    "BURST_SCANS",
    "BURST_DELAY",
    "CLOSE_GRACE_MS",
    "SNAPSHOT_PATH",
    "PORTWATCH_SOURCE",
    "PORTWATCH_RECONCILE",
    "PORTWATCH_METRICS",
    "PORTWATCH_METRICS_LABELS",
    "PORTWATCH_METRICS_MAX_SERIES",
];

/// env_logger's default format (no target), with each message escaped: warnings name
/// namespaces, containers and paths that other users chose, and one of them must not be able
/// to forge a log line or drive the terminal.
fn init_logger() {
    let mut format = env_logger::fmt::ConfigurableFormat::default();
    format.target(false);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(move |buf, record| {
            let message = record.args().to_string();
            let message = render::escape(&message);
            format.format(
                buf,
                &log::Record::builder()
                    .args(format_args!("{message}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
        })
        .init();
}

/// Writes the completion script for `shell`, generated from the flags themselves.
fn completions(shell: ShellArg, out: &mut impl Write) -> Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
        ShellArg::Elvish => Shell::Elvish,
        ShellArg::PowerShell => Shell::PowerShell,
    };
    clap_complete::generate(shell, &mut Cli::command(), "portwatch", out);
    Ok(out.flush()?)
}

/// Writes the man pages into `dir`, generated from the flags themselves: `portwatch.1`, and
/// one per command (`portwatch-list.1`, …) as git does, since one page cannot hold every
/// command's options.
fn man(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        // Not through a symlink someone left there (`make man` may run as root).
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| f.write_all(&page))
            .map_err(|e| portwatch_core::Error::Io { path, source: e })?;
        Ok(())
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| portwatch_core::Error::Io { path: dir.to_owned(), source: e })?;
    let mut cli = Cli::command();
    cli.build();
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help") {
        let name = format!("portwatch-{}", sub.get_name());
        write(&name, sub.clone().name(name.clone()))?;
    }
    write("portwatch", cli)
}

/// The environment variable `flag` (`--interval`) took its value from, if it did: the flag
/// reads one, the variable is set, and the command line does not give the flag.
fn from_env(flag: &str) -> Option<String> {
    let var = env_name(flag)?;
    let on_command_line = std::env::args_os().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('='))
    });
    (std::env::var_os(&var).is_some() && !on_command_line).then_some(var)
}

/// clap's message for a bad value that came from an environment variable names only the
/// flag (`invalid value 'abc' for '--interval <SECONDS>'`), which leaves a user who never
/// typed `--interval` looking for it. This says which variable held it.
fn env_value_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let flag = arg.split_whitespace().next()?;
    let var = from_env(flag)?;
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => std::env::var(&var).unwrap_or_default(),
    };
    let why = std::error::Error::source(e).map_or_else(String::new, |s| format!(": {s}"));
    Some(format!("invalid value {value:?} in {var} (the environment variable for {flag}){why}"))
}

/// Settings that only mean something with another: the flag, and the flag it needs.
const NEEDS: [(&str, &str); 2] =
    [("--metrics-labels", "--metrics"), ("--metrics-max-series", "--metrics")];

/// clap's message for a setting that needs another (`the following required arguments were
/// not provided: --metrics`) names neither variable, which leaves a user who set
/// PORTWATCH_METRICS_LABELS in a unit file looking for a flag. This says which variable
/// asked for what.
fn env_requires_error(e: &clap::Error) -> Option<String> {
    if e.kind() != clap::error::ErrorKind::MissingRequiredArgument {
        return None;
    }
    let (flag, needed, var) =
        NEEDS.iter().find_map(|(flag, needed)| Some((flag, needed, from_env(flag)?)))?;
    let needed_var = env_name(needed).map_or_else(String::new, |v| format!(" (or {v})"));
    Some(format!("{var} (the environment variable for {flag}) needs {needed}{needed_var}"))
}

/// The environment variable flag `flag` (`--interval`) reads, whether set or not.
fn env_name(flag: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = flag.strip_prefix("--")?;
    Cli::command()
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_str()
        .map(str::to_owned)
}

fn main() -> ExitCode {
    // `SCAN_INTERVAL=` (set but empty, as `make` and compose pass an unset variable through)
    // means "not set": the default, not an invalid value. The same for RUST_LOG, which set
    // but empty would hide every warning.
    for name in SETTINGS_FROM_ENV.iter().chain(&["RUST_LOG"]) {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            // SAFETY: no other thread exists yet (this is the first thing main does), so
            // nothing can read the environment concurrently.
            unsafe { std::env::remove_var(name) };
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(message) = env_value_error(&e).or_else(|| env_requires_error(&e)) {
                eprintln!("portwatch: {}", render::escape(&message));
                return ExitCode::from(2);
            }
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_logger();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::List(args) => list::run(args, &mut out),
        Command::Watch(args) => watch::run(args, &mut out),
        Command::Completions { shell } => completions(*shell, &mut out),
        Command::Man { dir } => man(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`portwatch list | head -1`) is how a reader says it has enough.
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // A setting the library refused is a usage error, like a bad flag.
        Err(Error::Core(portwatch_core::Error::InvalidSetting { setting, reason })) => {
            let flag = format!("--{}", setting.replace('_', "-"));
            let named = match from_env(&flag) {
                Some(var) => format!("{var} (the environment variable for {flag})"),
                None => flag,
            };
            eprintln!("portwatch: invalid {named}: {}", render::escape(&reason));
            ExitCode::from(2)
        }
        Err(e) => {
            // If stdout is gone too there is nobody to tell; the status still says it.
            let _ = out.flush();
            // Errors can carry names others chose (a container's, a path's).
            eprintln!("portwatch: {}", render::escape(&e.to_string()));
            ExitCode::from(1)
        }
    }
}
