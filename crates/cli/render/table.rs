//! The `list` table, like `ss -tulnp`, and the warning that follows it when owners are
//! missing.

use std::borrow::Cow;
use std::io::{self, Write};

use portwatch_core::{AddressScope, Owners, Socket, State, UnknownReason, Users};

use super::{TABLE_OWNERS, escape, forward_text, namespace_text, owners_text};

/// The user column: the owning process's user, else the socket's uid; by name whenever
/// `/etc/passwd` has one, so root is `root` on every line, owners known or not.
fn user_text<'a>(s: &'a Socket, users: &'a Users) -> Cow<'a, str> {
    let (uid, name) = match s.processes().first() {
        Some(p) => (p.uid, p.user.as_deref()),
        None => match s.uid {
            Some(uid) => (uid, None),
            None => return Cow::Borrowed("-"),
        },
    };
    match name.or_else(|| users.name(uid)) {
        Some(name) => escape(name),
        None => Cow::Owned(uid.to_string()),
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

/// The scope column, short as `ss` columns are: `lo` (loopback), `link` (link-local), `addr`
/// (one address), `any` (wildcard); `-` for unix sockets.
fn scope_text(s: &Socket) -> &'static str {
    match s.scope() {
        Some(AddressScope::Loopback) => "lo",
        Some(AddressScope::LinkLocal) => "link",
        Some(AddressScope::Address) => "addr",
        Some(AddressScope::Wildcard) => "any",
        Some(_) => "?",
        None => "-",
    }
}

/// The peer column: `addr:port` of a connected inet socket, `*` for any other.
fn peer_text(s: &Socket) -> String {
    s.remote.map_or_else(|| "*".to_owned(), |r| r.to_string())
}

/// The table; with `own_netns` (several namespaces listed), a Namespace column first. A Scope
/// column (`lo`, `link`, `addr`, `any`) follows the state when any inet socket is listed. A
/// Peer column follows the local address when any socket listed has a peer (connected
/// sockets, as `--state established` lists): listeners have none, so their table stays as
/// narrow as `ss -l`'s.
pub fn table(
    sockets: &[Socket],
    users: &Users,
    own_netns: Option<u64>,
    out: &mut impl Write,
) -> io::Result<()> {
    // Only the namespace, address, peer and user columns need text built per row. The
    // address is a unix path for unix sockets: escaped like every name.
    let rows: Vec<(Cow<'_, str>, String, String, Cow<'_, str>)> = sockets
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
            (ns, local, peer_text(s), user_text(s, users))
        })
        .collect();
    let header = [
        "Namespace",
        "Proto",
        "State",
        "Scope",
        "Local Address:Port",
        "Peer Address:Port",
        "User",
        "Process",
    ];
    let mut widths = header.map(str::len);
    for (s, (ns, local, peer, user)) in sockets.iter().zip(&rows) {
        widths[0] = widths[0].max(ns.chars().count());
        widths[1] = widths[1].max(s.protocol.as_str().len());
        widths[2] = widths[2].max(state_text(s).len());
        widths[4] = widths[4].max(local.chars().count());
        widths[5] = widths[5].max(peer.len());
        widths[6] = widths[6].max(user.chars().count());
    }
    let shown = [
        own_netns.is_some(),
        true,
        true,
        sockets.iter().any(|s| s.addr.is_some()),
        true,
        sockets.iter().any(|s| s.remote.is_some()),
    ];
    let shown = |column: usize| shown.get(column).copied().unwrap_or(true);
    for (column, (text, width)) in header.iter().zip(widths).take(7).enumerate() {
        if shown(column) {
            cell(out, text, width)?;
        }
    }
    writeln!(out, "{}", header[7])?;
    for (s, (ns, local, peer, user)) in sockets.iter().zip(&rows) {
        let state = state_text(s);
        let cells = [&**ns, s.protocol.as_str(), &state, scope_text(s), local, peer, user];
        for (column, (text, width)) in cells.iter().zip(widths).enumerate() {
            if shown(column) {
                cell(out, text, width)?;
            }
        }
        match &s.forwards_to {
            Some(f) => {
                writeln!(out, "{} -> {}", owners_text(&s.owners, &TABLE_OWNERS), forward_text(f))?
            }
            None => writeln!(out, "{}", owners_text(&s.owners, &TABLE_OWNERS))?,
        }
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
