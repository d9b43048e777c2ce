//! `portwatch list`: one query, printed as a table or a JSON array.

use std::borrow::Cow;
use std::io::{self, Write};

use portwatch_core::{
    Backend, Family, Filter, Netns, Owners, Protocol, Query, Socket, State, StateSet, UnknownReason,
};

use portwatch_core::docker;

use crate::Result;
use crate::args::{BackendArg, Format, ListArgs, SocketFilter, StateArg};

/// Builds the library query the filter flags describe.
pub fn query(filter: &SocketFilter) -> Result<Query> {
    let q = Query::new().filter(selection(filter)).backend(backend(filter));
    if filter.all_netns {
        raise_fd_limit();
        let q = q.all_netns();
        return Ok(match names_socket() {
            Some(socket) => q.docker_names(socket),
            None => q,
        });
    }
    Ok(match netns(filter)? {
        Some(ns) => q.netns(&ns),
        None => q,
    })
}

/// The Docker daemon's socket, from DOCKER_HOST or the default.
pub fn docker_socket() -> Result<std::path::PathBuf> {
    Ok(docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref())?)
}

/// Where `--all-netns` asks for container names: the Docker socket when DOCKER_HOST allows
/// one (names are optional there, so a TCP DOCKER_HOST only costs them, with a warning).
pub fn names_socket() -> Option<std::path::PathBuf> {
    docker_socket().map_err(|e| log::warn!("{e}; containers are named by short id")).ok()
}

/// Watching every namespace holds three or four descriptors per namespace: lift the soft
/// limit to the hard one so a host with hundreds of containers does not run out.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::warn!("cannot raise the open-file limit from {soft}: {e}");
    }
}

/// What names a socket's namespace in output: its container, else its inode when it is not
/// this process's own namespace, else nothing.
pub fn namespace_text(s: &Socket, own_netns: u64) -> Option<Cow<'_, str>> {
    match &s.container {
        Some(c) => Some(Cow::Borrowed(&c.name)),
        None if s.netns != own_netns => Some(Cow::Owned(format!("netns {}", s.netns))),
        None => None,
    }
}

/// This process's network namespace inode (0 if it cannot be read: every other one shows).
pub fn own_netns() -> u64 {
    Netns::current().map_or(0, |ns| ns.inode())
}

/// The namespace `--netns` or `--container` names (`--netns`: a pid when it is all digits,
/// else a path).
pub fn netns(filter: &SocketFilter) -> Result<Option<Netns>> {
    if let Some(name) = &filter.container {
        return Ok(Some(docker::inspect(&docker_socket()?, name)?.netns()?));
    }
    let Some(arg) = &filter.netns else { return Ok(None) };
    let ns = match arg.parse::<u32>() {
        Ok(pid) => Netns::from_pid(pid)?,
        Err(_) => Netns::from_path(arg)?,
    };
    Ok(Some(ns))
}

/// The library filter the selection flags describe.
pub fn selection(filter: &SocketFilter) -> Filter {
    let mut protocols = Vec::new();
    if filter.tcp {
        protocols.push(Protocol::Tcp);
    }
    if filter.udp {
        protocols.push(Protocol::Udp);
    }
    if filter.unix {
        protocols.push(Protocol::Unix);
    }
    if protocols.is_empty() {
        protocols = vec![Protocol::Tcp, Protocol::Udp];
    }
    let families: &[Family] = match (filter.ipv4, filter.ipv6) {
        (true, false) => &[Family::Ipv4],
        (false, true) => &[Family::Ipv6],
        _ => &[Family::Ipv4, Family::Ipv6],
    };
    let states = if filter.states.is_empty() {
        StateSet::LISTENING
    } else {
        filter.states.iter().fold(StateSet::EMPTY, |set, s| match s {
            StateArg::Listening => set.with(State::Listen).with(State::Unconnected),
            StateArg::All => StateSet::ALL,
            StateArg::One(state) => set.with(*state),
        })
    };
    let mut f = Filter::new().protocols(&protocols).families(families).states(states);
    for (first, last) in &filter.ports {
        f = f.port_range(*first, *last);
    }
    f
}

/// The backend the flag names.
pub fn backend(filter: &SocketFilter) -> Backend {
    match filter.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Netlink => Backend::Netlink,
        BackendArg::Proc => Backend::Proc,
    }
}

pub fn run(args: &ListArgs, out: &mut impl Write) -> Result<()> {
    // The table shows no command lines: do not pay for reading them.
    let cmdlines = args.format == Format::Json;
    let sockets = query(&args.filter)?.owners(!args.no_processes).cmdlines(cmdlines).run()?;
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut *out, &sockets).map_err(io::Error::from)?;
            writeln!(out)?;
        }
        Format::Table => print_table(&sockets, args.filter.all_netns.then(own_netns), out)?,
    }
    out.flush()?;
    warn_unknown_owners(&sockets);
    Ok(())
}

/// The process column: `pid/comm` for each owner, or why there is none.
pub fn owners_text(s: &Socket) -> String {
    match &s.owners {
        Owners::Known(procs) => {
            let mut text = String::new();
            for (i, p) in procs.iter().enumerate() {
                use std::fmt::Write;
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(text, "{sep}{}/{}", p.pid, p.comm);
            }
            text
        }
        Owners::Unknown(UnknownReason::NotResolved) => "-".to_owned(),
        Owners::Unknown(UnknownReason::PermissionDenied { .. }) => {
            "unknown (permission denied)".to_owned()
        }
        Owners::Unknown(UnknownReason::NotFound) => "unknown (not found)".to_owned(),
        Owners::Unknown(_) | _ => "unknown".to_owned(),
    }
}

/// The user column: the owning process's user, else the socket's uid.
fn user_text(s: &Socket) -> Cow<'_, str> {
    match s.processes().first() {
        Some(p) => p.user.as_deref().map_or_else(|| Cow::Owned(p.uid.to_string()), Cow::Borrowed),
        None => s.uid.map_or(Cow::Borrowed("-"), |u| Cow::Owned(u.to_string())),
    }
}

/// The state column; only unnamed states need formatting.
fn state_text(s: &Socket) -> Cow<'static, str> {
    match s.state {
        State::Other(_) => Cow::Owned(s.state.to_string()),
        named => Cow::Borrowed(named.as_str()),
    }
}

/// Writes `cell` left-aligned in `width` columns, then two spaces.
fn cell(out: &mut impl Write, cell: &str, width: usize) -> io::Result<()> {
    const SPACES: &[u8] = &[b' '; 128];
    out.write_all(cell.as_bytes())?;
    let mut pad = width.saturating_sub(cell.chars().count()) + 2;
    while pad > 0 {
        let n = pad.min(SPACES.len());
        out.write_all(&SPACES[..n])?;
        pad -= n;
    }
    Ok(())
}

/// The table; with `own_netns` (several namespaces listed), a Namespace column first.
fn print_table(sockets: &[Socket], own_netns: Option<u64>, out: &mut impl Write) -> io::Result<()> {
    // Only the namespace, address and user columns need text built per row.
    let rows: Vec<(Cow<'_, str>, String, Cow<'_, str>)> = sockets
        .iter()
        .map(|s| {
            let ns = own_netns.map_or(Cow::Borrowed(""), |own| {
                namespace_text(s, own).unwrap_or(Cow::Borrowed("host"))
            });
            (ns, s.local_display(), user_text(s))
        })
        .collect();
    let header = ["Namespace", "Proto", "State", "Local Address:Port", "User", "Process"];
    let mut widths = header.map(str::len);
    for (s, (ns, local, user)) in sockets.iter().zip(&rows) {
        widths[0] = widths[0].max(ns.chars().count());
        widths[1] = widths[1].max(s.protocol.as_str().len());
        widths[2] = widths[2].max(state_text(s).len());
        widths[3] = widths[3].max(local.chars().count());
        widths[4] = widths[4].max(user.chars().count());
    }
    let first = if own_netns.is_some() { 0 } else { 1 };
    for (text, width) in header.iter().zip(widths).take(5).skip(first) {
        cell(out, text, width)?;
    }
    writeln!(out, "{}", header[5])?;
    for (s, (ns, local, user)) in sockets.iter().zip(&rows) {
        if own_netns.is_some() {
            cell(out, ns, widths[0])?;
        }
        cell(out, s.protocol.as_str(), widths[1])?;
        cell(out, &state_text(s), widths[2])?;
        cell(out, local, widths[3])?;
        cell(out, user, widths[4])?;
        writeln!(out, "{}", owners_text(s))?;
    }
    Ok(())
}

/// Says once, on stderr, why some owners are missing and what would fix it.
fn warn_unknown_owners(sockets: &[Socket]) {
    let mut denied = 0;
    let mut unreadable = 0;
    for s in sockets {
        if let Owners::Unknown(UnknownReason::PermissionDenied { unreadable: n }) = s.owners {
            denied += 1;
            unreadable = n;
        }
    }
    if denied > 0 {
        let fix = if nix::unistd::geteuid().is_root() {
            "even root may not read them (a security module, or another user namespace)"
        } else {
            "run as root or grant CAP_SYS_PTRACE to see them"
        };
        // One write, so the line is not interleaved with other output.
        let msg = format!(
            "portwatch: owners of {denied} socket(s) unknown: the fds of {unreadable} \
             process(es) are unreadable; {fix}\n"
        );
        let _ = io::stderr().write_all(msg.as_bytes());
    }
}
