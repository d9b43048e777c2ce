//! Command-line flags. Parsing only: turning flags into a library query happens in `select`.

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
    /// Report sockets opening and closing, with their processes, as they happen.
    Watch(Box<WatchArgs>),
    /// Print a shell completion script: `portwatch completions bash > /etc/bash_completion.d/portwatch`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Write the man pages (portwatch.1, portwatch-list.1, portwatch-watch.1) into DIR;
    /// `make man` writes them to target/man.
    #[command(hide = true)]
    Man {
        /// Where to write the pages (created if missing).
        dir: std::path::PathBuf,
    },
}

/// A shell `completions` writes for. Our own enum, not clap_complete's, so this file stays
/// plain clap (the fuzz targets compile it as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
    Elvish,
    #[value(name = "powershell")]
    PowerShell,
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
    /// Unix domain stream and seqpacket sockets (not with -4/-6, which select inet
    /// families).
    #[arg(short = 'x', long, conflicts_with_all = ["ipv4", "ipv6", "scopes"])]
    pub unix: bool,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only this local port or range, e.g. 8080 or 8000-8999 (repeat for more).
    #[arg(short = 'p', long = "port", value_name = "PORT[-PORT]", value_parser = parse_port_range)]
    pub ports: Vec<(u16, u16)>,
    /// Only inet sockets bound to these kinds of local address (repeat or comma-separate):
    /// loopback, link-local, address (one specific address), wildcard (0.0.0.0, ::).
    #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',', value_parser = parse_scope)]
    pub scopes: Vec<portwatch_core::AddressScope>,
    /// Socket states to show (repeat or comma-separate): listening (the default), established,
    /// syn-sent, time-wait, … or all.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = parse_state)]
    pub states: Vec<StateArg>,
    /// Only sockets held by this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// With --pid, also sockets held by its descendants.
    #[arg(long, requires = "pid")]
    pub children: bool,
    /// Only sockets of this user (a name from /etc/passwd, or a uid): the uid the kernel
    /// recorded for the socket, its creator.
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,
    /// Only sockets held by a process with this command name (as `ps -o comm` shows it).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Where to read sockets from.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// How to find the processes holding each socket.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = OwnersArg::Auto)]
    pub owners: OwnersArg,
    /// Read another network namespace: a path (/run/netns/NAME, /proc/PID/ns/net,
    /// /var/run/docker/netns/ID) or the pid of a process inside it.
    #[arg(long, value_name = "PATH|PID")]
    pub netns: Option<String>,
    /// Read a Docker container's network namespace, found through the Docker Engine API on
    /// /var/run/docker.sock (or a unix:// DOCKER_HOST).
    #[arg(long, value_name = "NAME|ID", conflicts_with = "netns")]
    pub container: Option<String>,
    /// Every network namespace on the host (all processes' and /run/netns), each socket
    /// tagged with its namespace and container. Needs root (CAP_SYS_ADMIN, CAP_SYS_PTRACE).
    #[arg(long, conflicts_with_all = ["netns", "container"])]
    pub all_netns: bool,
}

/// A `--state` value.
#[derive(Debug, Clone, Copy)]
pub enum StateArg {
    Listening,
    All,
    One(portwatch_core::State),
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.trim().parse::<u16>().map_err(|_| format!("{p:?} is not a port number from 0 to 65535"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("range {s} runs backwards: write {b}-{a}"));
            }
            Ok((a, b))
        }
        None => port(s).map(|p| (p, p)),
    }
}

fn parse_scope(s: &str) -> Result<portwatch_core::AddressScope, String> {
    s.parse().map_err(|_| "expected loopback, link-local, address or wildcard".to_owned())
}

fn parse_state(s: &str) -> Result<StateArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "listening" => Ok(StateArg::Listening),
        "all" => Ok(StateArg::All),
        other => other.parse().map(StateArg::One).map_err(|_| {
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
pub enum OwnersArg {
    /// The BPF iterator where it loads and pays (hundreds of processes), else /proc (why it
    /// cannot load: RUST_LOG=info).
    Auto,
    /// A pass of a BPF task_file iterator over every open file (root, or CAP_BPF +
    /// CAP_PERFMON; kernel BTF); an error if it cannot load.
    Bpf,
    /// A walk of /proc/*/fd (each process's first 1024 fds).
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
    #[arg(long, conflicts_with_all = ["pid", "comm"])]
    pub no_processes: bool,
}

/// Seconds as a decimal number (`2`, `0.5`), not negative.
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 2 or 0.05)"))?;
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{s} is not between 0 and 86400 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

/// Like `parse_seconds`, but 0 is refused.
fn parse_positive_seconds(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_seconds(s)?;
    if d.is_zero() {
        return Err("must be above 0".to_owned());
    }
    Ok(d)
}

/// Milliseconds as a whole number.
fn parse_millis(s: &str) -> Result<std::time::Duration, String> {
    let v: u64 =
        s.trim().parse().map_err(|_| format!("{s:?} is not a whole number of milliseconds"))?;
    if v > 3_600_000 {
        return Err(format!("{v} ms is longer than an hour"));
    }
    Ok(std::time::Duration::from_millis(v))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchFormat {
    /// One line per event, the reference monitor's wording.
    Text,
    /// JSON Lines: one event object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: SocketFilter,
    /// Output format.
    #[arg(long, value_enum, default_value_t = WatchFormat::Text)]
    pub format: WatchFormat,
    /// Seconds between scan cycles (default 0.2; fractions allowed).
    #[arg(long, env = "SCAN_INTERVAL", value_name = "SECONDS", value_parser = parse_positive_seconds, allow_hyphen_values = true)]
    pub interval: Option<std::time::Duration>,
    /// Scans per cycle (default 1); a socket seen by any of them is reported.
    #[arg(long, env = "BURST_SCANS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub burst_scans: Option<u32>,
    /// Seconds between the scans of a cycle (default 0.05).
    #[arg(long, env = "BURST_DELAY", value_name = "SECONDS", value_parser = parse_seconds, allow_hyphen_values = true)]
    pub burst_delay: Option<std::time::Duration>,
    /// Milliseconds a closed port must stay closed before its close is reported (default 0).
    #[arg(long, env = "CLOSE_GRACE_MS", value_name = "MS", value_parser = parse_millis, allow_hyphen_values = true)]
    pub close_grace: Option<std::time::Duration>,
    /// Keep the set of open ports in this file across restarts.
    #[arg(long, env = "SNAPSHOT_PATH", value_name = "PATH")]
    pub snapshot: Option<std::path::PathBuf>,
    /// High fidelity: a scan every 8 ms (catches listeners living 10 ms) and a 200 ms close
    /// grace; flags given alongside override it.
    #[arg(long)]
    pub hf: bool,
    /// Drop sockets bound to loopback addresses.
    #[arg(long)]
    pub ignore_loopback: bool,
    /// Run CMD (with `/bin/sh -c`) for each event: the event is in PORTWATCH_* environment
    /// variables and, as JSON, on its stdin; never in the command line. The hook's environment
    /// holds nothing else but a system PATH, HOME=/ and LANG/LC_ALL.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Seconds a hook may run before it is killed, with everything it started (default 30).
    #[arg(long, value_name = "SECONDS", requires = "exec", value_parser = parse_positive_seconds)]
    pub exec_timeout: Option<std::time::Duration>,
    /// Do not report ports already open at start.
    #[arg(long)]
    pub no_initial: bool,
    /// Where sockets are learnt of: `ebpf` (kernel events: every listener, at the call, with
    /// its process), `scan` (sock_diag dumps every --interval), or `auto` (ebpf where it
    /// loads, else scan, saying why).
    #[arg(long, env = "PORTWATCH_SOURCE", value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// With kernel events, seconds between the dumps that reconcile the state (default 30).
    #[arg(long, env = "PORTWATCH_RECONCILE", value_name = "SECONDS", value_parser = parse_positive_seconds)]
    pub reconcile: Option<std::time::Duration>,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics, and /healthz (an IP address, not
    /// a name: `127.0.0.1:9184`, `[::1]:9184`, `0.0.0.0:9184`; port 0 picks one, logged at info).
    #[arg(long, env = "PORTWATCH_METRICS", value_name = "ADDR:PORT", value_parser = parse_listen_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Labels of portwatch_listening: `full` (proto, family, addr, port, netns, container,
    /// comm) or `minimal` (without addr and comm, the labels that multiply series).
    #[arg(
        long,
        env = "PORTWATCH_METRICS_LABELS",
        value_enum,
        value_name = "SET",
        requires = "metrics"
    )]
    pub metrics_labels: Option<MetricsLabels>,
    /// At most this many portwatch_listening series (default 10000); the rest are left out
    /// and counted in portwatch_listening_series_dropped.
    #[arg(long, env = "PORTWATCH_METRICS_MAX_SERIES", value_name = "N", requires = "metrics", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub metrics_max_series: Option<u32>,
    /// Also report TCP connections: `in` (accept: a peer connected to a listener here; owners
    /// are the listener's), `out` (connect: a process here connected out; the caller), or
    /// `all`, each with its disconnect. With --source scan (or where eBPF cannot load), dumps
    /// of established sockets every --interval: short connections are missed.
    #[arg(long, value_enum, value_name = "in|out|all")]
    pub connections: Option<ConnectionsArg>,
    /// With --connections, only connections whose remote address is in this prefix
    /// (10.0.0.0/8, 2001:db8::/32, or one address); repeat for more.
    #[arg(long = "remote", value_name = "CIDR", requires = "connections", value_parser = parse_cidr)]
    pub remotes: Vec<portwatch_core::Cidr>,
    /// With --connections, leave out connections whose remote address is in this prefix;
    /// repeatable, wins over --remote.
    #[arg(long = "ignore-remote", value_name = "CIDR", requires = "connections", value_parser = parse_cidr)]
    pub ignore_remotes: Vec<portwatch_core::Cidr>,
    /// With --connections, after reporting a connection leave out the next ones in the same
    /// direction with the same remote address for SECONDS (and their disconnects).
    #[arg(long, value_name = "SECONDS", requires = "connections", value_parser = parse_seconds)]
    pub cooldown: Option<std::time::Duration>,
    /// With --connections, also report portwatch's own connections and those of its --exec
    /// hooks (left out by default: a hook that notifies over the network would report itself).
    #[arg(long, requires = "connections")]
    pub own_connections: bool,
}

/// A `--metrics-labels` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsLabels {
    /// proto, family, addr, port, netns, container, comm.
    Full,
    /// proto, family, port, netns, container.
    Minimal,
}

/// A socket address to listen on: an IP address and a port (no name lookup).
fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not ADDR:PORT with an IP address: e.g. 127.0.0.1:9184, [::1]:9184 or \
             0.0.0.0:9184"
        )
    })
}

/// A `--connections` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectionsArg {
    /// Inbound: accepted connections.
    In,
    /// Outbound: connects.
    Out,
    /// Both.
    All,
}

fn parse_cidr(s: &str) -> Result<portwatch_core::Cidr, String> {
    s.parse().map_err(|e: portwatch_core::BadCidr| e.to_string())
}

/// A `--source` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// Kernel events where they load, else scanning.
    Auto,
    /// Kernel events (eBPF); an error where they cannot load.
    Ebpf,
    /// sock_diag dumps on an interval.
    Scan,
}
