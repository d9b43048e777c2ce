//! `portwatch list`: one query, printed as a table or a JSON array.

use std::borrow::Cow;
use std::io::{self, Write};

use portwatch_core::{
    Backend, ContainerRef, Family, Filter, Netns, Owners, Protocol, Query, Socket, State, StateSet,
    UnknownReason,
};

use portwatch_core::docker;

use crate::Result;
use crate::args::{BackendArg, Format, ListArgs, SocketFilter, StateArg};

/// Builds the library query the filter flags describe.
pub fn query(filter: &SocketFilter) -> Result<Query> {
    let q = Query::new().filter(selection(filter)).backend(backend(filter));
    Ok(match netns(filter)? {
        Some(ns) => q.netns(&ns),
        None => q,
    })
}

/// The namespace `--netns` or `--container` names (`--netns`: a pid when it is all digits,
/// else a path).
pub fn netns(filter: &SocketFilter) -> Result<Option<Netns>> {
    if let Some(name) = &filter.container {
        let socket = docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref())?;
        let c = docker::inspect(&socket, name)?;
        let label = ContainerRef::new(c.id.clone(), c.name.clone());
        return Ok(Some(c.netns()?.with_container(label)));
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
        Format::Table => print_table(&sockets, out)?,
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

fn print_table(sockets: &[Socket], out: &mut impl Write) -> io::Result<()> {
    // Only the address and user columns need text built per row; the rest is borrowed.
    let rows: Vec<(String, Cow<'_, str>)> =
        sockets.iter().map(|s| (s.local_display(), user_text(s))).collect();
    let header = ["Proto", "State", "Local Address:Port", "User", "Process"];
    let mut widths = [header[0].len(), header[1].len(), header[2].len(), header[3].len()];
    for (s, (local, user)) in sockets.iter().zip(&rows) {
        widths[0] = widths[0].max(s.protocol.as_str().len());
        widths[1] = widths[1].max(state_text(s).len());
        widths[2] = widths[2].max(local.chars().count());
        widths[3] = widths[3].max(user.chars().count());
    }
    for (text, width) in header.iter().zip(widths) {
        cell(out, text, width)?;
    }
    writeln!(out, "{}", header[4])?;
    for (s, (local, user)) in sockets.iter().zip(&rows) {
        cell(out, s.protocol.as_str(), widths[0])?;
        cell(out, &state_text(s), widths[1])?;
        cell(out, local, widths[2])?;
        cell(out, user, widths[3])?;
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
