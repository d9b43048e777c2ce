//! What a [`Watcher`](crate::Watcher) reports.

use std::time::{Duration, SystemTime};

use crate::connection::Direction;
use crate::process::Process;
use crate::socket::Socket;
use crate::source::Source;

/// Something that happened to a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A socket opened (or, with `initial`, was already open when watching began).
    Opened {
        /// The socket, with the processes holding it when it was found.
        socket: Socket,
        /// When it was seen (wall clock).
        at: SystemTime,
        /// It was already open when watching began.
        initial: bool,
        /// Which source saw it: [`Source::Ebpf`] (a kernel event, at the call) or
        /// [`Source::Scan`] (a dump).
        source: Source,
    },
    /// A socket closed and its endpoint stayed closed for the grace period.
    Closed {
        /// The socket, with the last processes known to hold it.
        socket: Socket,
        /// When it went away (wall clock).
        at: SystemTime,
        /// Which source saw it go (the destroy feed counts as the scan source's).
        source: Source,
    },
    /// The same endpoint stayed open (or reopened within the grace period) held by other
    /// processes.
    OwnersChanged {
        /// The socket with its new owners.
        socket: Socket,
        /// The processes that held it before.
        previous: Vec<std::sync::Arc<Process>>,
        /// When the change was seen (wall clock).
        at: SystemTime,
        /// Which source saw the new owner.
        source: Source,
    },
    /// An outbound TCP connection attempt: a process called `connect(2)` (reported when
    /// [`WatcherBuilder::connections`](crate::WatcherBuilder::connections) asks for them).
    /// The socket is the connecting one: local address and port, [`Socket::remote`], state
    /// `SYN-SENT`, and as owner the process that called `connect` — exact with kernel events,
    /// from `/proc` when scanning.
    Connect {
        /// The connecting socket.
        socket: Socket,
        /// When the connect was made (wall clock).
        at: SystemTime,
        /// The kernel's timestamp of it, CLOCK_MONOTONIC nanoseconds (kernel events only).
        kernel_ns: Option<u64>,
        /// Which source saw it.
        source: Source,
    },
    /// An inbound TCP connection reached ESTABLISHED on a listener. Its owners are the
    /// listener's (the kernel completes the handshake on its own, in no process's context;
    /// when scanning, the process holding the accepted socket). State `ESTAB`.
    Accept {
        /// The accepted socket: local address and port (the listener's), the peer in
        /// [`Socket::remote`].
        socket: Socket,
        /// When it was established (wall clock).
        at: SystemTime,
        /// The kernel's timestamp, CLOCK_MONOTONIC nanoseconds (kernel events only).
        kernel_ns: Option<u64>,
        /// Which source saw it.
        source: Source,
    },
    /// A connection reported by [`Event::Connect`] or [`Event::Accept`] closed, with the
    /// owners recorded then. Its state is the last it was reported in (`SYN-SENT` for a connect
    /// that never connected).
    Disconnect {
        /// The socket, with the owners recorded at its connect or accept.
        socket: Socket,
        /// When it closed (wall clock).
        at: SystemTime,
        /// The kernel's timestamp of the close, CLOCK_MONOTONIC nanoseconds (kernel events).
        kernel_ns: Option<u64>,
        /// Which source saw it.
        source: Source,
        /// Which way the connection went.
        direction: Direction,
        /// How long it lived: from the connect or accept to the close, by the kernel's clock
        /// with kernel events; between the scans that saw it come and go when scanning.
        duration: Duration,
        /// Whether it was ever established (false: a connect that failed — refused,
        /// unreachable, timed out).
        established: bool,
    },
}

impl Event {
    /// The socket the event is about.
    pub fn socket(&self) -> &Socket {
        match self {
            Event::Opened { socket, .. }
            | Event::Closed { socket, .. }
            | Event::OwnersChanged { socket, .. }
            | Event::Connect { socket, .. }
            | Event::Accept { socket, .. }
            | Event::Disconnect { socket, .. } => socket,
        }
    }

    /// When it happened.
    pub fn at(&self) -> SystemTime {
        match self {
            Event::Opened { at, .. }
            | Event::Closed { at, .. }
            | Event::OwnersChanged { at, .. }
            | Event::Connect { at, .. }
            | Event::Accept { at, .. }
            | Event::Disconnect { at, .. } => *at,
        }
    }

    /// Which source saw it. For [`Event::OwnersChanged`], [`Source::Ebpf`] means the change
    /// was looked for because the kernel reported that an owner exited.
    pub fn source(&self) -> Source {
        match self {
            Event::Opened { source, .. }
            | Event::Closed { source, .. }
            | Event::OwnersChanged { source, .. }
            | Event::Connect { source, .. }
            | Event::Accept { source, .. }
            | Event::Disconnect { source, .. } => *source,
        }
    }

    /// Which kind of event it is, to compare or count without matching every field.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Opened { .. } => EventKind::Opened,
            Event::Closed { .. } => EventKind::Closed,
            Event::OwnersChanged { .. } => EventKind::OwnersChanged,
            Event::Connect { .. } => EventKind::Connect,
            Event::Accept { .. } => EventKind::Accept,
            Event::Disconnect { .. } => EventKind::Disconnect,
        }
    }

    /// For a connection event, which way the connection goes; `None` for listener events.
    pub fn direction(&self) -> Option<Direction> {
        match self {
            Event::Connect { .. } => Some(Direction::Out),
            Event::Accept { .. } => Some(Direction::In),
            Event::Disconnect { direction, .. } => Some(*direction),
            _ => None,
        }
    }

    /// For a connection event with kernel events, the kernel's timestamp of it
    /// (CLOCK_MONOTONIC nanoseconds).
    pub fn kernel_ns(&self) -> Option<u64> {
        match self {
            Event::Connect { kernel_ns, .. }
            | Event::Accept { kernel_ns, .. }
            | Event::Disconnect { kernel_ns, .. } => *kernel_ns,
            _ => None,
        }
    }

    /// Whether the socket was already open when watching began.
    pub fn initial(&self) -> bool {
        matches!(self, Event::Opened { initial: true, .. })
    }
}

/// The kind of an [`Event`], without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// [`Event::Opened`].
    Opened,
    /// [`Event::Closed`].
    Closed,
    /// [`Event::OwnersChanged`].
    OwnersChanged,
    /// [`Event::Connect`].
    Connect,
    /// [`Event::Accept`].
    Accept,
    /// [`Event::Disconnect`].
    Disconnect,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventKind::Opened => "opened",
            EventKind::Closed => "closed",
            EventKind::OwnersChanged => "owners changed",
            EventKind::Connect => "connect",
            EventKind::Accept => "accept",
            EventKind::Disconnect => "disconnect",
        })
    }
}
