//! The `list` table, like `ss -tulnp`, and the warning that follows it when owners are
//! missing.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::ops::Range;

use portwatch_core::{AddressScope, Owners, Socket, State, UnknownReason, Users};

use super::{TABLE_OWNERS, escape, forward_text, namespace_text, write_owners};

/// The user column: the owning process's user, else the socket's uid; by name whenever
/// `/etc/passwd` has one, so root is `root` on every line, owners known or not.
fn write_user(text: &mut String, s: &Socket, users: &Users) {
    let (uid, name) = match s.processes().first() {
        Some(p) => (p.uid, p.user.as_deref()),
        None => match s.uid {
            Some(uid) => (uid, None),
            None => return text.push('-'),
        },
    };
    match name.or_else(|| users.name(uid)) {
        Some(name) => text.push_str(&escape(name)),
        None => {
            let _ = write!(text, "{uid}");
        }
    }
}

/// The state column; only unnamed states need formatting.
fn state_text(s: &Socket) -> Cow<'static, str> {
    match s.state {
        State::Other(_) => Cow::Owned(s.state.to_string()),
        named => Cow::Borrowed(named.as_str()),
    }
}

/// The columns a terminal gives `text`.
fn width(text: &str) -> usize {
    if text.is_ascii() { text.len() } else { text.chars().count() }
}

/// Appends `cell` left-aligned in `width` columns, then two spaces.
fn cell(out: &mut Vec<u8>, cell: &str, width: usize) {
    out.extend_from_slice(cell.as_bytes());
    let pad = width.saturating_sub(self::width(cell)) + 2;
    out.resize(out.len() + pad, b' ');
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

/// The cells of one row whose text is built (the rest are static): ranges of one buffer.
struct Row {
    namespace: Range<usize>,
    local: Range<usize>,
    peer: Range<usize>,
    user: Range<usize>,
    process: Range<usize>,
}

/// Appends what `write` writes to `text`, returning where it is.
fn built(text: &mut String, write: impl FnOnce(&mut String)) -> Range<usize> {
    let start = text.len();
    write(text);
    start..text.len()
}

/// The cells of a run of rows whose text is built, in one buffer.
struct Built {
    text: String,
    rows: Vec<Row>,
}

/// Builds the cells of `sockets`. Names other users chose (a unix path, a container, a
/// process name) are escaped.
fn build(sockets: &[Socket], users: &Users, own_netns: Option<u64>) -> Built {
    let mut text = String::with_capacity(sockets.len() * 64);
    let rows = sockets
        .iter()
        .map(|s| Row {
            namespace: built(&mut text, |t| {
                if let Some(own) = own_netns {
                    t.push_str(&namespace_text(s, own).unwrap_or(Cow::Borrowed("host")));
                }
            }),
            local: built(&mut text, |t| {
                let _ = s.write_local(t, escape);
            }),
            peer: built(&mut text, |t| match s.remote {
                Some(r) => {
                    let _ = write!(t, "{r}");
                }
                None => t.push('*'),
            }),
            user: built(&mut text, |t| write_user(t, s, users)),
            process: built(&mut text, |t| {
                write_owners(t, &s.owners, &TABLE_OWNERS);
                if let Some(f) = &s.forwards_to {
                    t.push_str(" -> ");
                    t.push_str(&forward_text(f));
                }
            }),
        })
        .collect();
    Built { text, rows }
}

/// From this many rows the table is built on two threads, half each: at 10 000 rows building
/// them is most of a listing's time after its owners are known.
const TWO_THREADS_FROM: usize = 4096;

/// `work` for each of `parts` (one or two), the second on a thread of its own; here too if
/// that thread is refused.
fn on_threads<P: Sync, T: Send>(parts: &[P], work: impl Fn(&P) -> T + Sync) -> Vec<T> {
    let (Some(first), Some(second), None) = (parts.first(), parts.get(1), parts.get(2)) else {
        return parts.iter().map(&work).collect();
    };
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new().spawn_scoped(scope, || work(second));
        let done = work(first);
        let other = match other {
            Ok(handle) => handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(_) => work(second),
        };
        vec![done, other]
    })
}

/// The table; with `own_netns` (several namespaces listed), a Namespace column first. A Scope
/// column (`lo`, `link`, `addr`, `any`) follows the state when any inet socket is listed. A
/// Peer column follows the local address when any socket listed has a peer (connected
/// sockets, as `--state established` lists): listeners have none, so their table stays as
/// narrow as `ss -l`'s. Built whole, then written at once.
pub fn table(
    sockets: &[Socket],
    users: &Users,
    own_netns: Option<u64>,
    out: &mut impl Write,
) -> io::Result<()> {
    let halves = if sockets.len() >= TWO_THREADS_FROM {
        let (first, second) = sockets.split_at(sockets.len() / 2);
        vec![first, second]
    } else {
        vec![sockets]
    };
    let built = on_threads(&halves, |half| build(half, users, own_netns));
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
    for (half, Built { text, rows }) in halves.iter().zip(&built) {
        for (s, row) in half.iter().zip(rows) {
            widths[0] = widths[0].max(width(&text[row.namespace.clone()]));
            widths[1] = widths[1].max(s.protocol.as_str().len());
            widths[2] = widths[2].max(state_text(s).len());
            widths[4] = widths[4].max(width(&text[row.local.clone()]));
            widths[5] = widths[5].max(width(&text[row.peer.clone()]));
            widths[6] = widths[6].max(width(&text[row.user.clone()]));
        }
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
    let mut head = Vec::new();
    for (column, (title, width)) in header.iter().zip(widths).take(7).enumerate() {
        if shown(column) {
            cell(&mut head, title, width);
        }
    }
    head.extend_from_slice(header[7].as_bytes());
    head.push(b'\n');
    let parts: Vec<(&[Socket], &Built)> = halves.iter().copied().zip(&built).collect();
    let lines = on_threads(&parts, |(half, Built { text, rows })| {
        let mut lines = Vec::with_capacity(text.len() + half.len() * 48);
        for (s, row) in half.iter().zip(rows) {
            let state = state_text(s);
            let cells = [
                &text[row.namespace.clone()],
                s.protocol.as_str(),
                &state,
                scope_text(s),
                &text[row.local.clone()],
                &text[row.peer.clone()],
                &text[row.user.clone()],
            ];
            for (column, (text, width)) in cells.iter().zip(widths).enumerate() {
                if shown(column) {
                    cell(&mut lines, text, width);
                }
            }
            lines.extend_from_slice(text[row.process.clone()].as_bytes());
            lines.push(b'\n');
        }
        lines
    });
    out.write_all(&head)?;
    lines.iter().try_for_each(|l| out.write_all(l))
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
