//! One `watch` event as a text line or a JSON Lines object.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use portwatch_core::{Direction, Event, Socket};
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
        Event::Connect { .. } => format!(
            "[{ts}] Outbound connection: {} -> {} ({}, pids: {})",
            endpoint(s.addr, s.port),
            remote_text(s),
            conn_where(s, own_netns),
            pids()
        ),
        Event::Accept { .. } => format!(
            "[{ts}] Inbound connection: {} -> {} ({}, pids: {})",
            remote_text(s),
            endpoint(s.addr, s.port),
            conn_where(s, own_netns),
            pids()
        ),
        Event::Disconnect { direction, duration, established, .. } => {
            let (from, to) = match direction {
                Direction::In => (remote_text(s), endpoint(s.addr, s.port)),
                _ => (endpoint(s.addr, s.port), remote_text(s)),
            };
            let how = if *established { "closed" } else { "failed" };
            format!(
                "[{ts}] Connection {how}: {from} -> {to} ({direction}, after {}, {}, last pids: {})",
                duration_text(*duration),
                conn_where(s, own_netns),
                pids()
            )
        }
        _ => format!("[{ts}] Port event: {port} ({at})"),
    }
}

/// `0.418 ms` below a second, `2.503 s` from there.
fn duration_text(d: std::time::Duration) -> String {
    if d < std::time::Duration::from_secs(1) {
        format!("{:.3} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// `1.2.3.4:80`, `[::1]:80`.
fn endpoint(addr: Option<IpAddr>, port: u16) -> String {
    match addr {
        Some(a) => SocketAddr::new(a, port).to_string(),
        None => format!("*:{port}"),
    }
}

fn remote_text(s: &Socket) -> String {
    s.remote.map_or_else(|| "?".to_owned(), |r| r.to_string())
}

/// `tcp`, then the container or namespace when it is not this process's own.
fn conn_where(s: &Socket, own_netns: u64) -> String {
    match (&s.container, namespace_text(s, own_netns)) {
        (Some(_), Some(name)) => format!("{}, container {name}", s.protocol),
        (None, Some(ns)) => format!("{}, {ns}", s.protocol),
        _ => s.protocol.to_string(),
    }
}

/// One JSON Lines object: `ts`, `reported`, `event`, `initial`, `source` (and, for owner changes,
/// `previous_pids`; for connection events `direction`, `remote_addr`, `remote_port`,
/// `kernel_ns`, and for a disconnect `duration_ns` and `established`), then the fields of the socket object `list --format json` prints, in
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
    /// Connection events only: `in` or `out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    /// Connection events: the peer's address and port (also in `remote`, as one string).
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_port: Option<u16>,
    /// Connection events with kernel events: the kernel's CLOCK_MONOTONIC timestamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_ns: Option<u64>,
    /// Disconnect: how long the connection lived, in nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ns: Option<u64>,
    /// Disconnect: whether it was ever established (false: a connect that failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    established: Option<bool>,
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
        let (duration_ns, established) = match event {
            Event::Disconnect { duration, established, .. } => {
                (Some(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)), Some(*established))
            }
            _ => (None, None),
        };
        let remote = event.direction().and(event.socket().remote);
        JsonLine {
            direction: event.direction().map(Direction::as_str),
            remote_addr: remote.map(|r| r.ip().to_string()),
            remote_port: remote.map(|r| r.port()),
            kernel_ns: event.kernel_ns(),
            duration_ns,
            established,
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
