//! Output: the `list` table, `watch` text lines and JSON Lines, and the pieces they share
//! (owner text, timestamps, namespace names, the event vocabulary). It formats what it is
//! given and never queries the system.
//!
//! Names in sockets come from other users: process names (`comm`), unix socket paths (an
//! abstract name can hold any byte), container names. Every human-readable text built here
//! passes them through [`escape`], so none can end a line, move the cursor or reorder text
//! and forge output. JSON needs no help: serde escapes by construction.

mod event;
mod table;

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use portwatch_core::{Event, Forward, Owners, Process, Socket, UnknownReason};

pub use event::{JsonLine, text_line};
pub use table::{table, unknown_owners_warning};

/// `s` with every character that could forge or hide output written as an escape: control
/// characters (`\n`, `\r`, `\t`, ESC as `\x1b`, DEL as `\x7f`, C1 controls as `\u{9b}`)
/// and the invisible characters that reorder or break lines in terminals and log viewers
/// (bidi overrides and isolates, line and paragraph separators, as `\u{202e}`). Printable
/// UTF-8, spaces and backslashes stay as they are, so ordinary names read unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    // Printable ASCII, the common case, is checked a byte at a time.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1) and the invisible formatting characters that change
/// how the rest of a line displays.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'            // Arabic letter mark
            | '\u{200e}' | '\u{200f}' // left-to-right and right-to-left marks
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
        )
}

/// How a list of owners is written: `17982/python3,18023/python3` in the table,
/// `3194 python3, 3195 python3` in watch lines (the reference monitor's wording).
pub struct OwnerStyle {
    /// Between a pid and its command name.
    pub pid_comm: &'static str,
    /// Between two owners.
    pub between: &'static str,
    /// When owners were not looked up (`--no-processes`).
    pub not_resolved: &'static str,
}

/// The `list` table's Process column.
pub const TABLE_OWNERS: OwnerStyle = OwnerStyle { pid_comm: "/", between: ",", not_resolved: "-" };
/// The `pids:` of `watch` text lines.
pub const LINE_OWNERS: OwnerStyle =
    OwnerStyle { pid_comm: " ", between: ", ", not_resolved: "unknown" };

/// The processes holding a socket, or why they are unknown.
pub fn owners_text(owners: &Owners, style: &OwnerStyle) -> String {
    let mut text = String::new();
    write_owners(&mut text, owners, style);
    text
}

/// [`owners_text`], appended to `text`.
pub fn write_owners(text: &mut String, owners: &Owners, style: &OwnerStyle) {
    text.push_str(match owners {
        Owners::Known(procs) => return write_processes(text, procs, style),
        Owners::Unknown(UnknownReason::NotResolved) => style.not_resolved,
        Owners::Unknown(UnknownReason::PermissionDenied { .. }) => "unknown (permission denied)",
        Owners::Unknown(UnknownReason::NotFound) => "unknown (not found)",
        Owners::Unknown(UnknownReason::Skipped { .. }) => "unknown (skipped)",
        Owners::Unknown(UnknownReason::Hidden) => "unknown (hidden by hidepid)",
        Owners::Unknown(_) | _ => "unknown",
    });
}

/// `PID COMM` for each process, in `style`, each name escaped.
pub fn processes_text(procs: &[Arc<Process>], style: &OwnerStyle) -> String {
    let mut text = String::new();
    write_processes(&mut text, procs, style);
    text
}

/// [`processes_text`], appended to `text`.
fn write_processes(text: &mut String, procs: &[Arc<Process>], style: &OwnerStyle) {
    for (i, p) in procs.iter().enumerate() {
        let sep = if i == 0 { "" } else { style.between };
        let _ = write!(text, "{sep}{}{}{}", p.pid, style.pid_comm, escape(&p.comm));
    }
}

/// What names a socket's namespace in output: its container (escaped), else, when it is not
/// this process's own namespace, `netns NAME` for one bound under `/run/netns` (escaped) or
/// `netns INODE`; else nothing.
pub fn namespace_text(s: &Socket, own_netns: u64) -> Option<Cow<'_, str>> {
    match (&s.container, &s.netns_name) {
        (Some(c), _) => Some(escape(&c.name)),
        _ if s.netns == own_netns => None,
        (None, Some(name)) => Some(Cow::Owned(format!("netns {}", escape(name)))),
        (None, None) => Some(Cow::Owned(format!("netns {}", s.netns))),
    }
}

/// Where a published port leads: `NAME:PORT` of the container (its name escaped), or
/// `ADDR:PORT` when no container was found for the address.
pub fn forward_text(f: &Forward) -> String {
    match (&f.container, f.addr) {
        (Some(c), _) => format!("{}:{}", escape(&c.name), f.port),
        (None, addr) => std::net::SocketAddr::new(addr, f.port).to_string(),
    }
}

/// `2026-11-22T03:48:02.123Z`: UTC, milliseconds (truncated), `Z`.
pub fn timestamp(t: SystemTime) -> String {
    // Before 1970 or past jiff's range only with a broken clock: show the epoch, as a
    // timestamp that is obviously wrong beats no line.
    let ts = jiff::Timestamp::try_from(t)
        .or_else(|_| jiff::Timestamp::try_from(UNIX_EPOCH))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{ts:.3}")
}

/// The `event` field of JSON lines and `PORTWATCH_EVENT` of hooks: `open`, `close`,
/// `owners`; `connect`, `accept`, `disconnect`. The CLI owns this vocabulary, not the library's domain type.
pub fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Opened { .. } => "open",
        Event::Closed { .. } => "close",
        Event::OwnersChanged { .. } => "owners",
        Event::Connect { .. } => "connect",
        Event::Accept { .. } => "accept",
        Event::Disconnect { .. } => "disconnect",
        // A kind of event this CLI predates: still a line, never a crash.
        _ => "event",
    }
}

/// Whether the event reports a socket already open when watching began.
pub fn event_initial(event: &Event) -> bool {
    matches!(event, Event::Opened { initial: true, .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_319_282_123);
        assert_eq!(timestamp(t), "2026-11-22T03:48:02.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        // Truncated, not rounded: 03:48:02.999999 is still in second 02.
        let t = UNIX_EPOCH + Duration::from_micros(1_795_319_282_999_999);
        assert_eq!(timestamp(t), "2026-11-22T03:48:02.999Z");
    }

    #[test]
    fn escape_keeps_printable_text_and_escapes_the_rest() {
        assert!(matches!(escape("python3 — ünïcode ok"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("\x1b[2J\x07\x7f\0"), "\\x1b[2J\\x07\\x7f\\x00");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("evil\u{202e}txt.sh\u{2066}"), "evil\\u{202e}txt.sh\\u{2066}");
        assert_eq!(escape("x\u{2028}y"), "x\\u{2028}y");
        // An escape-looking backslash stays: it is printable and cannot forge a line.
        assert_eq!(escape("a\\nb"), "a\\nb");
    }
}
