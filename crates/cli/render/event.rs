//! One `watch` event as a text line or a JSON Lines object.

use std::borrow::Cow;
use std::time::SystemTime;

use portwatch_core::{Event, Socket};
use serde::Serialize;

use super::{
    LINE_OWNERS, escape, event_initial, event_name, forward_text, namespace_text, owners_text,
    processes_text, timestamp,
};

/// The port, or the (escaped) path of a unix socket.
fn port_text(s: &Socket) -> Cow<'_, str> {
    match &s.path {
        Some(p) if s.addr.is_none() => escape(p),
        _ => Cow::Owned(s.port.to_string()),
    }
}

/// `tcp, 0.0.0.0`, then the container or namespace when it is not this process's own, then
/// where a published port forwards to (`forwards to web:80`).
fn where_text(s: &Socket, own_netns: u64) -> String {
    let at = match s.addr {
        Some(a) => format!("{}, {a}", s.protocol),
        None => s.protocol.to_string(),
    };
    let at = match (&s.container, namespace_text(s, own_netns)) {
        (Some(_), Some(name)) => format!("{at}, container {name}"),
        (None, Some(ns)) => format!("{at}, {ns}"),
        _ => at,
    };
    match &s.forwards_to {
        Some(f) => format!("{at}, forwards to {}", forward_text(f)),
        None => at,
    }
}

/// One line, keeping the reference monitor's wording (`New port opened: PORT`,
/// `Port closed: PORT`, `pids:`, `last pids:`) so existing greps work. Every name in it is
/// escaped, so the line is exactly one line whatever the names hold.
///
/// The timestamp is `reported`, when the line is written, so the lines' times never go
/// backwards (a close is reported once the close grace has passed, with its `ts` — when the
/// socket went — in JSON).
pub fn text_line(event: &Event, own_netns: u64, reported: SystemTime) -> String {
    let s = event.socket();
    let ts = timestamp(reported);
    let (port, at) = (port_text(s), where_text(s, own_netns));
    let pids = || owners_text(&s.owners, &LINE_OWNERS);
    match event {
        Event::Opened { initial, .. } => format!(
            "[{ts}] New port opened: {port} ({at}, pids: {}){}",
            pids(),
            if *initial { " [open at start]" } else { "" }
        ),
        Event::Closed { .. } => format!("[{ts}] Port closed: {port} ({at}, last pids: {})", pids()),
        Event::OwnersChanged { previous, .. } => format!(
            "[{ts}] Port owners changed: {port} ({at}, pids: {}; before: {})",
            pids(),
            processes_text(previous, &LINE_OWNERS)
        ),
        _ => format!("[{ts}] Port event: {port} ({at})"),
    }
}

/// One JSON Lines object: `ts`, `reported`, `event`, `initial`, `source` (and, for owner changes,
/// `previous_pids`), then the fields of the socket object `list --format json` prints, in
/// that order. Field names are an interface: add, never rename.
#[derive(Serialize)]
pub struct JsonLine<'a> {
    ts: String,
    reported: String,
    event: &'static str,
    initial: bool,
    /// `ebpf` or `scan`: which source saw it.
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_pids: Option<Vec<u32>>,
    #[serde(flatten)]
    socket: &'a Socket,
}

impl<'a> JsonLine<'a> {
    /// `reported`: when the line is written (`ts` is when it happened).
    pub fn new(event: &'a Event, reported: SystemTime) -> JsonLine<'a> {
        let previous_pids = match event {
            Event::OwnersChanged { previous, .. } => Some(previous.iter().map(|p| p.pid).collect()),
            _ => None,
        };
        JsonLine {
            ts: timestamp(event.at()),
            reported: timestamp(reported),
            event: event_name(event),
            initial: event_initial(event),
            source: event.source().as_str(),
            previous_pids,
            socket: event.socket(),
        }
    }

    /// The object on one line, without a newline.
    pub fn to_line(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}
