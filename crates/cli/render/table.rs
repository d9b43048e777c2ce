//! The `list` table, like `ss -tulnp`, and the warning that follows it when owners are
//! missing.

use std::borrow::Cow;
use std::io::{self, Write};

use portwatch_core::{Owners, Socket, State, UnknownReason};

use super::{TABLE_OWNERS, escape, namespace_text, owners_text};

/// The user column: the owning process's user, else the socket's uid.
fn user_text(s: &Socket) -> Cow<'_, str> {
    match s.processes().first() {
        Some(p) => p.user.as_deref().map_or_else(|| Cow::Owned(p.uid.to_string()), escape),
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
pub fn table(sockets: &[Socket], own_netns: Option<u64>, out: &mut impl Write) -> io::Result<()> {
    // Only the namespace, address and user columns need text built per row. The address is
    // a unix path for unix sockets: escaped like every name.
    let rows: Vec<(Cow<'_, str>, String, Cow<'_, str>)> = sockets
        .iter()
        .map(|s| {
            let ns = own_netns.map_or(Cow::Borrowed(""), |own| {
                namespace_text(s, own).unwrap_or(Cow::Borrowed("host"))
            });
            let local = s.local_display();
            let local = match escape(&local) {
                Cow::Borrowed(_) => local,
                Cow::Owned(escaped) => escaped,
            };
            (ns, local, user_text(s))
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
        writeln!(out, "{}", owners_text(&s.owners, &TABLE_OWNERS))?;
    }
    Ok(())
}

/// Why some owners are missing and what would fix it (one line each, with its newline), if any
/// are.
pub fn unknown_owners_warning(sockets: &[Socket]) -> Option<String> {
    let mut denied = 0;
    let mut unreadable = 0;
    let mut skipped = 0;
    let mut hidden = 0;
    let mut counts = (0, 0);
    for s in sockets {
        match s.owners {
            Owners::Unknown(UnknownReason::PermissionDenied { unreadable: n }) => {
                denied += 1;
                unreadable = n;
            }
            Owners::Unknown(UnknownReason::Skipped { crowded, unread }) => {
                skipped += 1;
                counts = (crowded, unread);
            }
            Owners::Unknown(UnknownReason::Hidden) => hidden += 1,
            _ => {}
        }
    }
    let mut text = String::new();
    if denied > 0 {
        let fix = if nix::unistd::geteuid().is_root() {
            "even root may not read them (a security module, or another user namespace)"
        } else {
            "run as root or grant CAP_SYS_PTRACE to see them"
        };
        text.push_str(&format!(
            "portwatch: owners of {denied} socket(s) unknown: the fds of {unreadable} \
             process(es) are unreadable; {fix}\n"
        ));
    }
    if skipped > 0 {
        let (crowded, unread) = counts;
        text.push_str(&format!(
            "portwatch: owners of {skipped} socket(s) unknown: {crowded} process(es) hold more \
             than 1024 fds and were read in part, {unread} were not read in the owner walk's \
             time; the owner may be among them\n"
        ));
    }
    if hidden > 0 {
        text.push_str(&format!(
            "portwatch: owners of {hidden} socket(s) unknown: /proc is mounted with hidepid, \
             which hides other users' processes; run as root, grant CAP_SYS_PTRACE, or join \
             the group its gid= option names\n"
        ));
    }
    (!text.is_empty()).then_some(text)
}
