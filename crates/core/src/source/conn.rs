//! Connection observations: what the connection sources saw, in one shape. With kernel events
//! (feature `ebpf`), [`ConnFeed`] turns the connection programs' records into them as they
//! come; when scanning, the watcher compares dumps of established sockets and reads the
//! destroy feed. Nothing here filters, names owners beyond what the kernel said, or knows
//! about events.

use std::time::Duration;

use super::At;
use crate::connection::Direction;
use crate::socket::Socket;

/// What happened to a connection.
#[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnKind {
    Connect,
    Accept,
    Disconnect,
}

/// One connection seen: connected, accepted or closed.
#[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connection {
    pub(crate) kind: ConnKind,
    pub(crate) direction: Direction,
    /// Local end in `addr`/`port`, the peer in `remote`; for a connect from kernel events,
    /// the caller as its one owner; else owners not resolved.
    pub(crate) socket: Socket,
    /// The kernel's CLOCK_MONOTONIC timestamp (kernel events).
    pub(crate) kernel_ns: Option<u64>,
    /// Disconnect: how long it lived, by the kernel's clock.
    pub(crate) duration: Option<Duration>,
    /// Disconnect: whether it ever reached ESTABLISHED.
    pub(crate) established: bool,
    pub(crate) at: At,
}

#[cfg(feature = "ebpf")]
pub(crate) use self::feed::ConnFeed;

#[cfg(feature = "ebpf")]
mod feed {
    use std::os::fd::{AsFd, BorrowedFd};
    use std::time::{Duration, Instant, SystemTime};

    use super::{ConnKind, Connection};
    use crate::connection::Direction;
    use crate::process::{Owners, Process, UnknownReason};
    use crate::socket::{Protocol, Socket, State};
    use crate::source::ebpf::{self, ConnEvent, ConnOptions, ConnPrograms, Dir, LoadError};
    use crate::source::{At, Source};

    /// The connection programs, and their loss counters when last read.
    #[derive(Debug)]
    pub(crate) struct ConnFeed {
        programs: ConnPrograms,
        lost: (u64, u64),
    }

    impl ConnFeed {
        pub(crate) fn load(opts: &ConnOptions) -> Result<ConnFeed, LoadError> {
            let programs = ConnPrograms::load(opts)?;
            log::debug!("connection eBPF programs loaded in {:?}", programs.load_time());
            Ok(ConnFeed { programs, lost: (0, 0) })
        }

        pub(crate) fn fd(&self) -> BorrowedFd<'_> {
            self.programs.as_fd()
        }

        /// Everything ready now. Losses are said (a warning each time they grow) and returned:
        /// records lost and closes that cannot be reported, since the last read.
        pub(crate) fn read(&mut self, out: &mut Vec<Connection>) -> (u64, u64) {
            let (mono_ns, wall, instant) =
                (ebpf::monotonic_now_ns(), SystemTime::now(), Instant::now());
            self.programs.drain(|e| {
                let age = Duration::from_nanos(mono_ns.saturating_sub(e.ts_ns));
                let at = At {
                    mono: instant.checked_sub(age).unwrap_or(instant),
                    wall: wall_time(&e, mono_ns, wall),
                    by: Source::Ebpf,
                };
                out.push(connection(e, at));
            });
            let now = self.programs.lost();
            let new = (now.0 - self.lost.0.min(now.0), now.1 - self.lost.1.min(now.1));
            if new.0 > 0 {
                log::warn!(
                    "the kernel dropped {} connection event(s) (ring buffer full): \
                     those connections and their closes are not reported",
                    new.0
                );
            }
            if new.1 > 0 {
                log::warn!(
                    "{} connection(s) reported whose close cannot be (the kernel's connection \
                     table is full)",
                    new.1
                );
            }
            self.lost = now;
            new
        }
    }

    fn wall_time(e: &ConnEvent, mono_ns: u64, wall: SystemTime) -> SystemTime {
        mono_ns
            .checked_sub(e.ts_ns)
            .and_then(|age| wall.checked_sub(Duration::from_nanos(age)))
            .unwrap_or(wall)
    }

    /// A record as an observation. A connect names its caller, an accept the process that
    /// called listen(2) on its listener (recorded in that call): the accept and the closes
    /// happen in softirq context, where the current task is whoever was interrupted.
    pub(super) fn connection(e: ConnEvent, at: At) -> Connection {
        let (kind, state) = match e.kind {
            ebpf::ConnKind::Connect => (ConnKind::Connect, State::SynSent),
            ebpf::ConnKind::Accept => (ConnKind::Accept, State::Established),
            ebpf::ConnKind::Disconnect if e.established => {
                (ConnKind::Disconnect, State::Established)
            }
            ebpf::ConnKind::Disconnect => (ConnKind::Disconnect, State::SynSent),
        };
        // A connect's caller; an accept's listener as the process that called listen(2) on it
        // (recorded then, in its context), when the programs saw that.
        let named = kind == ConnKind::Connect || (kind == ConnKind::Accept && e.pid != 0);
        let owners = if named {
            Owners::Known(vec![Process::from_kernel(e.pid, &e.comm, e.uid).into()])
        } else {
            Owners::Unknown(UnknownReason::NotResolved)
        };
        let socket = Socket {
            protocol: Protocol::Tcp,
            family: e.family,
            addr: Some(e.local.ip()),
            port: e.local.port(),
            path: None,
            remote: Some(e.remote),
            state,
            inode: 0,
            uid: named.then_some(e.uid),
            cookie: Some(e.cookie),
            netns: e.netns,
            netns_name: None,
            v6only: None,
            interface: None,
            unix_type: None,
            container: None,
            forwards_to: None,
            owners,
        };
        Connection {
            kind,
            direction: match e.dir {
                Dir::Out => Direction::Out,
                Dir::In => Direction::In,
            },
            socket,
            kernel_ns: Some(e.ts_ns),
            duration: (kind == ConnKind::Disconnect).then(|| Duration::from_nanos(e.duration_ns)),
            established: e.established || kind == ConnKind::Accept,
            at,
        }
    }
}
