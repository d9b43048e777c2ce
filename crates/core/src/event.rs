//! What a [`Watcher`](crate::Watcher) reports.

use std::time::SystemTime;

use crate::socket::{Process, Socket};
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
        previous: Vec<Process>,
        /// When the change was seen (wall clock).
        at: SystemTime,
        /// Which source saw the new owner.
        source: Source,
    },
}

impl Event {
    /// The socket the event is about.
    pub fn socket(&self) -> &Socket {
        match self {
            Event::Opened { socket, .. }
            | Event::Closed { socket, .. }
            | Event::OwnersChanged { socket, .. } => socket,
        }
    }

    /// When it happened.
    pub fn at(&self) -> SystemTime {
        match self {
            Event::Opened { at, .. }
            | Event::Closed { at, .. }
            | Event::OwnersChanged { at, .. } => *at,
        }
    }

    /// Which source saw it. For [`Event::OwnersChanged`], [`Source::Ebpf`] means the change
    /// was looked for because the kernel reported that an owner exited.
    pub fn source(&self) -> Source {
        match self {
            Event::Opened { source, .. }
            | Event::Closed { source, .. }
            | Event::OwnersChanged { source, .. } => *source,
        }
    }

    /// Which kind of event it is, to compare or count without matching every field.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Opened { .. } => EventKind::Opened,
            Event::Closed { .. } => EventKind::Closed,
            Event::OwnersChanged { .. } => EventKind::OwnersChanged,
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
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventKind::Opened => "opened",
            EventKind::Closed => "closed",
            EventKind::OwnersChanged => "owners changed",
        })
    }
}
