//! `portwatch list`: one query, printed as a table or a JSON array.

use std::io::{self, Write};

use portwatch_core::{
    Backend, Family, Owners, Protocol, Query, Socket, State, StateSet, UnknownReason,
};

use crate::Result;
use crate::args::{BackendArg, Format, ListArgs, SocketFilter, StateArg};

/// Builds the library query the filter flags describe.
pub fn query(filter: &SocketFilter) -> Query {
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
    let backend = match filter.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Netlink => Backend::Netlink,
        BackendArg::Proc => Backend::Proc,
    };
    let mut q =
        Query::new().protocols(&protocols).families(families).states(states).backend(backend);
    for port in &filter.ports {
        q = q.port(*port);
    }
    q
}

pub fn run(args: &ListArgs, out: &mut impl Write) -> Result<()> {
    // The table shows no command lines: do not pay for reading them.
    let cmdlines = args.format == Format::Json;
    let sockets = query(&args.filter).owners(!args.no_processes).cmdlines(cmdlines).run()?;
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
            procs.iter().map(|p| format!("{}/{}", p.pid, p.comm)).collect::<Vec<_>>().join(",")
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
fn user_text(s: &Socket) -> String {
    if let Some(p) = s.processes().first() {
        return p.user.clone().unwrap_or_else(|| p.uid.to_string());
    }
    s.uid.map_or_else(|| "-".to_owned(), |u| u.to_string())
}

fn print_table(sockets: &[Socket], out: &mut impl Write) -> io::Result<()> {
    let rows: Vec<[String; 5]> = sockets
        .iter()
        .map(|s| {
            [
                s.protocol.to_string(),
                s.state.to_string(),
                s.local_display(),
                user_text(s),
                owners_text(s),
            ]
        })
        .collect();
    let header = ["Proto", "State", "Local Address:Port", "User", "Process"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 5]| -> io::Result<()> {
        writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        )
    };
    line(out, header)?;
    for row in &rows {
        line(out, [&row[0], &row[1], &row[2], &row[3], &row[4]])?;
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
