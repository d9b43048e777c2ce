//! Command-line flags. Parsing only: turning flags into a library query happens in the command
//! modules.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Which ports open and close in a Linux network namespace, and which processes own them.
#[derive(Debug, Parser)]
#[command(name = "portwatch", version, about, propagate_version = true)]
#[command(
    after_help = "Logging: set RUST_LOG=debug (or info, warn, error) for diagnostics on stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List listening sockets and their processes, like `ss -tulnp`.
    List(ListArgs),
}

/// Which sockets to show; shared by the commands that read sockets.
#[derive(Debug, Args)]
pub struct SocketFilter {
    /// TCP sockets (with none of --tcp/--udp/--unix: TCP and UDP).
    #[arg(short = 't', long)]
    pub tcp: bool,
    /// UDP sockets.
    #[arg(short = 'u', long)]
    pub udp: bool,
    /// Unix domain stream and seqpacket sockets.
    #[arg(short = 'x', long)]
    pub unix: bool,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only this local port (repeat for more).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Socket states to show (repeat or comma-separate): listening (the default), established,
    /// syn-sent, time-wait, … or all.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    pub states: Vec<StateArg>,
    /// Where to read sockets from.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// A `--state` value.
#[derive(Debug, Clone, Copy)]
pub enum StateArg {
    Listening,
    All,
    One(portwatch_core::State),
}

fn parse_state(s: &str) -> Result<StateArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "listening" => Ok(StateArg::Listening),
        "all" => Ok(StateArg::All),
        other => portwatch_core::State::parse(other).map(StateArg::One).ok_or_else(|| {
            "expected listening, all, or a state such as listen, unconn, established, \
             syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, close-wait, last-ack, closing"
                .to_owned()
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// sock_diag, falling back to /proc/net where it cannot answer.
    Auto,
    /// sock_diag only.
    Netlink,
    /// /proc/net only (slower; no socket cookies).
    Proc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned table for people.
    Table,
    /// One JSON array of socket objects.
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: SocketFilter,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Do not look up owning processes (faster; every owner shows as not resolved).
    #[arg(long)]
    pub no_processes: bool,
}
