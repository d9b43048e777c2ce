//! Connection events in the watcher: where they come from (the connection programs; when
//! scanning, `conn_scan`), which are reported
//! (direction, remote prefixes, the socket filter, the watcher's own, the cooldown), who owns
//! them (the caller of a connect; a listener's owners for an accept; for a disconnect the
//! owners recorded at its connect or accept), and the connections followed until they close.
//! The open set and the tracker know nothing of connections.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::config::{Config, ConnSettings};
use super::scheduler::Loop;
use crate::connection::Direction;
use crate::error::Result;
use crate::event::Event;
#[cfg(feature = "ebpf")]
use crate::process::{Owners, UnknownReason};
use crate::socket::{Family, Protocol, Socket, State, StateSet};
#[cfg(feature = "ebpf")]
use crate::source::ConnKind;
use crate::source::{At, Connection, Dump, Source};

/// Cooldown entries (and listeners dumped) kept before the expired ones are swept out.
const COOLDOWN_SWEEP: usize = 4096;
/// How long a listener found by a dump stands for accepts on its endpoint.
#[cfg(feature = "ebpf")]
const LISTENER_MEMORY: Duration = Duration::from_secs(1);
/// How long a process described from /proc stands for its next connects.
#[cfg(feature = "ebpf")]
const DESCRIBED_FOR: Duration = Duration::from_secs(1);

/// A connection reported, followed until it closes.
#[derive(Debug)]
pub(super) struct Followed {
    pub(super) socket: Socket,
    pub(super) direction: Direction,
    pub(super) since: Instant,
}

/// The connection side of a watcher.
pub(super) struct ConnWatch {
    settings: ConnSettings,
    /// This process, whose connections are left out unless `settings.own`.
    own_pid: u32,
    #[cfg(feature = "ebpf")]
    feed: Option<crate::source::ConnFeed>,
    /// Scanning: each namespace's connection cookies in its last dump (`None` with kernel
    /// events; see `conn_scan`).
    pub(super) scanned: Option<HashMap<u64, HashSet<u64>>>,
    pub(super) dumps: Vec<Dump>,
    /// Connections reported and not closed yet, by cookie.
    pub(super) followed: HashMap<u64, Followed>,
    /// When a connection was last reported, per direction and remote address (cooldown).
    last: HashMap<(Direction, IpAddr), Instant>,
    /// Listeners found by a dump for an accept, by namespace, family and port, and when.
    #[cfg(feature = "ebpf")]
    listeners: HashMap<(u64, Family, u16), (Socket, Instant)>,
    /// Processes described from /proc for a connect, by pid and thread name, and when.
    #[cfg(feature = "ebpf")]
    described: HashMap<(u32, String), (std::sync::Arc<crate::process::Process>, Instant)>,
    /// Kernel records were lost: followed connections are checked against a dump.
    #[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
    recheck: bool,
}

/// The connection side the settings ask for: kernel events where they load (an error with
/// [`Source::Ebpf`]), else scanning, with a warning saying what that misses.
pub(super) fn start(cfg: &Config) -> Result<Option<ConnWatch>> {
    let settings = cfg.conns.clone();
    if !settings.which.any() {
        return Ok(None);
    }
    let families: Vec<Family> = [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .filter(|f| cfg.filter.selects_family(*f))
        .collect();
    let dumps = families
        .iter()
        .map(|&family| Dump::Inet {
            protocol: Protocol::Tcp,
            family,
            states: StateSet::of(&super::conn_scan::SCAN_STATES),
        })
        .collect();
    let mut watch = ConnWatch {
        own_pid: std::process::id(),
        #[cfg(feature = "ebpf")]
        feed: None,
        scanned: None,
        dumps,
        followed: HashMap::new(),
        last: HashMap::new(),
        #[cfg(feature = "ebpf")]
        listeners: HashMap::new(),
        #[cfg(feature = "ebpf")]
        described: HashMap::new(),
        recheck: false,
        settings,
    };
    #[cfg(feature = "ebpf")]
    if cfg.source != Source::Scan {
        match crate::source::ConnFeed::load(&kernel_options(cfg)) {
            Ok(feed) => {
                watch.feed = Some(feed);
                return Ok(Some(watch));
            }
            Err(e) if cfg.source == Source::Ebpf => {
                return Err(crate::error::Error::EbpfUnavailable { reason: e.to_string() });
            }
            Err(e) => log::warn!("connection events: no kernel events ({e})"),
        }
    }
    log::warn!(
        "connection events from scanning (every {:?}): connections shorter than that can be \
         missed, and owners come from /proc (kernel events, --source ebpf, see every one \
         with its process)",
        if cfg.source == Source::Scan { cfg.interval } else { Duration::from_secs(1) }
    );
    watch.scanned = Some(HashMap::new());
    Ok(Some(watch))
}

#[cfg(feature = "ebpf")]
fn kernel_options(cfg: &Config) -> crate::source::ConnOptions {
    let c = &cfg.conns;
    crate::source::ConnOptions {
        ring_bytes: cfg.ring_bytes.unwrap_or(1 << 20),
        outbound: c.which.includes(Direction::Out),
        inbound: c.which.includes(Direction::In),
        only: c.only.clone(),
        ignore: c.ignore.clone(),
        own_tgid: if c.own { 0 } else { std::process::id() },
        ..Default::default()
    }
}

impl ConnWatch {
    /// The kernel feed's descriptor, to poll beside the others.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        #[cfg(feature = "ebpf")]
        if let Some(feed) = &self.feed {
            return Some(feed.fd());
        }
        None
    }

    /// Whether a connection going `dir` to `remote` may be reported: the direction and the
    /// remote prefixes.
    pub(super) fn wants(&self, dir: Direction, remote: Option<std::net::SocketAddr>) -> bool {
        let s = &self.settings;
        if !s.which.includes(dir) {
            return false;
        }
        let Some(ip) = remote.map(|r| r.ip()) else { return s.only.is_empty() };
        (s.only.is_empty() || s.only.iter().any(|c| c.contains(ip)))
            && !s.ignore.iter().any(|c| c.contains(ip))
    }

    /// Whether the cooldown lets a connection going `dir` to `remote` be reported now; if it
    /// does, the cooldown starts again.
    fn cooled(
        &mut self,
        dir: Direction,
        remote: Option<std::net::SocketAddr>,
        now: Instant,
    ) -> bool {
        let cooldown = self.settings.cooldown;
        let Some(ip) = remote.map(|r| r.ip()).filter(|_| !cooldown.is_zero()) else {
            return true;
        };
        if self.last.len() >= COOLDOWN_SWEEP {
            self.last.retain(|_, t| now.saturating_duration_since(*t) < cooldown);
        }
        match self.last.get(&(dir, ip)) {
            Some(t) if now.saturating_duration_since(*t) < cooldown => false,
            _ => {
                self.last.insert((dir, ip), now);
                true
            }
        }
    }
}

/// The disconnect of a followed connection.
pub(super) fn disconnect(
    f: Followed,
    at: At,
    kernel_ns: Option<u64>,
    duration: Option<Duration>,
    established: bool,
) -> Event {
    let mut socket = f.socket;
    if !established {
        socket.state = State::SynSent;
    } else if socket.state == State::SynSent {
        socket.state = State::Established;
    }
    Event::Disconnect {
        duration: duration.unwrap_or_else(|| at.mono.saturating_duration_since(f.since)),
        socket,
        at: at.wall,
        kernel_ns,
        source: at.by,
        direction: f.direction,
        established,
    }
}

/// The listener an inbound connection came in through: same namespace, protocol, family and
/// port, and its address or a wildcard.
pub(super) fn listener_for<'a>(
    conn: &Socket,
    mut listeners: impl Iterator<Item = &'a Socket>,
) -> Option<&'a Socket> {
    listeners.find(|l| {
        l.state == State::Listen
            && l.protocol == Protocol::Tcp
            && l.family == conn.family
            && l.port == conn.port
            && (l.addr == conn.addr || l.addr.is_none_or(|a| a.is_unspecified()))
    })
}

impl Loop {
    /// Reads the connection programs' records.
    pub(super) fn read_connections(&mut self, events: &mut Vec<Event>) {
        for c in self.drain_connections() {
            self.connection_event(c, events);
        }
        self.emit(events);
    }

    /// Every connection record waiting now, oldest first; after a loss, the connections
    /// followed are checked against a dump.
    pub(super) fn drain_connections(&mut self) -> Vec<Connection> {
        #[cfg(feature = "ebpf")]
        if let Some(cw) = self.conns.as_mut()
            && let Some(feed) = cw.feed.as_mut()
        {
            let mut seen = Vec::new();
            let (lost, _) = feed.read(&mut seen);
            cw.recheck |= lost > 0;
            return seen;
        }
        Vec::new()
    }

    /// One connection record: reported (or not) and followed.
    pub(super) fn connection_event(&mut self, c: Connection, events: &mut Vec<Event>) {
        #[cfg(feature = "ebpf")]
        {
            let Some(mut cw) = self.conns.take() else { return };
            self.connection(&mut cw, c, events);
            if std::mem::take(&mut cw.recheck) {
                self.recheck_followed(&mut cw, events);
            }
            self.conns = Some(cw);
        }
        #[cfg(not(feature = "ebpf"))]
        let _ = (c, events);
    }

    /// One connection from kernel events.
    #[cfg(feature = "ebpf")]
    fn connection(&mut self, cw: &mut ConnWatch, c: Connection, events: &mut Vec<Event>) {
        let Connection { kind, direction, mut socket, kernel_ns, duration, established, at } = c;
        let Some(cookie) = socket.cookie else { return };
        if kind == ConnKind::Disconnect {
            if let Some(f) = cw.followed.remove(&cookie) {
                events.push(disconnect(f, at, kernel_ns, duration, established));
            }
            return;
        }
        if !cw.wants(direction, socket.remote) {
            return;
        }
        let pid = socket.processes().first().map(|p| p.pid);
        let Some(i) = self.target_of(socket.netns, pid) else { return };
        if kind == ConnKind::Accept {
            // The kernel finished the handshake in softirq context: no process did it; the
            // listener's owners are who was connected to. The listener as the watcher knows it
            // (its owners now) first; else the process that called listen(2) on it, as the
            // kernel recorded it (the watcher has not handled that listen yet, or the filter
            // left the listener out); else a dump.
            match listener_for(&socket, self.targets[i].tracker.current()) {
                Some(l) => {
                    socket.owners = l.owners.clone();
                    socket.uid = l.uid;
                }
                None if matches!(socket.owners, Owners::Known(_)) => {
                    self.describe_owners(cw, &mut socket);
                }
                None => self.listener_dumped(cw, i, &mut socket),
            }
        } else {
            self.describe_owners(cw, &mut socket);
        }
        let t = &self.targets[i];
        socket.container = t.container.clone();
        socket.netns_name = t.netns_name.clone();
        // Connects by this process and its children were left out in the kernel.
        let check_own = kind == ConnKind::Accept;
        self.report(cw, socket, direction, kernel_ns, at, check_own, events);
    }

    /// Completes the processes a kernel record named from /proc, while they are there. A
    /// process that connects again within a second (a client in a loop, a proxy) is described
    /// once: the same pid and thread name then is the same process.
    #[cfg(feature = "ebpf")]
    fn describe_owners(&mut self, cw: &mut ConnWatch, socket: &mut Socket) {
        let Owners::Known(procs) = &mut socket.owners else { return };
        let now = Instant::now();
        for p in procs.iter_mut() {
            let key = (p.pid, p.comm.clone());
            if let Some((known, when)) = cw.described.get(&key)
                && now.saturating_duration_since(*when) < DESCRIBED_FOR
            {
                *p = known.clone();
                continue;
            }
            self.owners.describe(std::sync::Arc::make_mut(p));
            if cw.described.len() >= COOLDOWN_SWEEP {
                cw.described.retain(|_, (_, t)| now.saturating_duration_since(*t) < DESCRIBED_FOR);
            }
            cw.described.insert(key, (p.clone(), now));
        }
    }

    /// The owners of an accept whose listener the tracker does not hold — the filter left it
    /// out, or its open is still behind a record another CPU has not committed yet — from a
    /// dump of the namespace's listeners and /proc, remembered for a second per listener
    /// endpoint so a busy one costs one dump a second.
    #[cfg(feature = "ebpf")]
    fn listener_dumped(&mut self, cw: &mut ConnWatch, i: usize, socket: &mut Socket) {
        let key = (socket.netns, socket.family, socket.port);
        let now = Instant::now();
        if let Some((l, when)) = cw.listeners.get(&key)
            && now.saturating_duration_since(*when) < LISTENER_MEMORY
        {
            socket.owners = l.owners.clone();
            socket.uid = l.uid;
            return;
        }
        let dump = Dump::Inet {
            protocol: Protocol::Tcp,
            family: socket.family,
            states: StateSet::of(&[State::Listen]),
        };
        let found = self.targets[i]
            .dump_raw(&[dump])
            .and_then(|all| listener_for(socket, all.iter()).cloned());
        let Some(mut l) = found else {
            socket.owners = Owners::Unknown(UnknownReason::NotFound);
            return;
        };
        self.owners.resolve(std::slice::from_mut(&mut l));
        socket.owners = l.owners.clone();
        socket.uid = l.uid;
        if cw.listeners.len() >= COOLDOWN_SWEEP {
            cw.listeners.retain(|_, (_, t)| now.saturating_duration_since(*t) < LISTENER_MEMORY);
        }
        cw.listeners.insert(key, (l, now));
    }

    /// Reports a new connection if the filters and the cooldown let it through, and follows
    /// it until it closes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report(
        &mut self,
        cw: &mut ConnWatch,
        socket: Socket,
        direction: Direction,
        kernel_ns: Option<u64>,
        at: At,
        check_own: bool,
        events: &mut Vec<Event>,
    ) {
        let Some(cookie) = socket.cookie else { return };
        let filter = &self.cfg.filter;
        if !filter.matches_connection(&socket, direction == Direction::Out)
            || !filter.owner_matches(&socket, &self.proc_root)
        {
            return;
        }
        if check_own
            && !cw.settings.own
            && crate::owners::held_by(&socket, cw.own_pid, true, &self.proc_root)
        {
            return;
        }
        if !cw.cooled(direction, socket.remote, at.mono) {
            return;
        }
        cw.followed.insert(cookie, Followed { socket: socket.clone(), direction, since: at.mono });
        events.push(match direction {
            Direction::Out => Event::Connect { socket, at: at.wall, kernel_ns, source: at.by },
            Direction::In => Event::Accept { socket, at: at.wall, kernel_ns, source: at.by },
        });
    }

    /// After lost kernel records: connections followed that no dump shows any more closed
    /// without a record saying so. Reported closed now (by the scan that saw them gone), so
    /// none is followed for ever.
    #[cfg(feature = "ebpf")]
    fn recheck_followed(&mut self, cw: &mut ConnWatch, events: &mut Vec<Event>) {
        let mut alive = HashSet::new();
        for t in &mut self.targets {
            match t.dump_raw(&cw.dumps) {
                Some(sockets) => alive.extend(sockets.iter().filter_map(|s| s.cookie)),
                // Not dumpable: keep what it has.
                None => alive.extend(
                    cw.followed.iter().filter(|(_, f)| f.socket.netns == t.inode).map(|(c, _)| *c),
                ),
            }
        }
        let gone: Vec<u64> = cw.followed.keys().filter(|c| !alive.contains(c)).copied().collect();
        let at = At::now(Source::Scan);
        for cookie in gone {
            if let Some(f) = cw.followed.remove(&cookie) {
                events.push(disconnect(f, at, None, None, true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::fixtures;

    fn conn(port: u16, addr: &str) -> Socket {
        Socket {
            addr: Some(addr.parse().unwrap()),
            state: State::Established,
            remote: Some("192.0.2.9:50000".parse().unwrap()),
            ..fixtures::listener(port, 99, &[])
        }
    }

    #[test]
    fn the_listener_of_an_inbound_connection_is_found_by_port_and_address() {
        let mut wildcard = fixtures::listener(8080, 1, &[10]);
        wildcard.addr = Some("0.0.0.0".parse().unwrap());
        let mut local = fixtures::listener(9090, 2, &[20]);
        local.addr = Some("127.0.0.1".parse().unwrap());
        let all = [wildcard.clone(), local.clone()];
        assert_eq!(listener_for(&conn(8080, "10.0.0.5"), all.iter()).map(|l| l.port), Some(8080));
        assert_eq!(listener_for(&conn(9090, "127.0.0.1"), all.iter()).map(|l| l.port), Some(9090));
        assert!(listener_for(&conn(9090, "10.0.0.5"), all.iter()).is_none(), "other address");
        assert!(listener_for(&conn(7070, "10.0.0.5"), all.iter()).is_none(), "other port");
    }
}
