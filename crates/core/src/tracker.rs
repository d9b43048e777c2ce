//! Turns successive socket observations into open, close and owner-change events.
//!
//! Pure logic: no I/O, no clock of its own. Callers hand it [`Observation`]s — a census of a
//! namespace, one socket seen, one cookie gone, each with its time — from whichever source, and
//! it decides what to report. Owns identity (which observations are the same socket),
//! debouncing (the close grace period, restarts on the same endpoint) and correlation of closes
//! by cookie. It records every change to its open set, so a reader of that set is updated by
//! what changed rather than by copying all of it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::event::Event;
use crate::process::Owners;
use crate::socket::{Family, Protocol, Socket};
use crate::source::{At, Observation, Source};

/// Where a socket listens: what a user means by "port 8080 closed".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    netns: u64,
    protocol: Protocol,
    family: Family,
    addr: Option<IpAddr>,
    port: u16,
    path: Option<String>,
}

impl Endpoint {
    pub(crate) fn of(s: &Socket) -> Endpoint {
        Endpoint {
            netns: s.netns,
            protocol: s.protocol,
            family: s.family,
            addr: s.addr,
            port: s.port,
            path: s.path.clone(),
        }
    }
}

/// One socket: its endpoint plus what tells two sockets on one endpoint apart (the cookie, or
/// the inode where the backend has no cookies).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    endpoint: Endpoint,
    id: u64,
}

impl Key {
    pub(crate) fn of(s: &Socket) -> Key {
        Key { endpoint: Endpoint::of(s), id: s.cookie.unwrap_or(s.inode) }
    }
}

/// A socket that went away and is waiting out the grace period.
#[derive(Debug)]
struct Closing {
    socket: Socket,
    /// When the close is reported if the endpoint has not reopened.
    due: Instant,
    /// Which source saw it go.
    by: Source,
}

/// How long a destroyed cookie is remembered, so a dump that raced with the close does not
/// bring the socket back.
const DESTROYED_MEMORY: Duration = Duration::from_secs(5);

/// A change to the open set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// This socket is open now (new, or with new owners).
    Open(Key, Socket),
    /// This socket is no longer open.
    Closed(Key),
}

/// The set of open sockets and the closes waiting out their grace.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Changes to `known` since [`Tracker::take_changes`] was last called.
    changes: Vec<Change>,
    known: HashMap<Key, Socket>,
    by_cookie: HashMap<u64, Key>,
    closing: HashMap<Endpoint, Vec<Closing>>,
    destroyed: HashMap<u64, Instant>,
    grace: Duration,
    /// Whether sockets open before the first observation are reported (`initial: true`).
    report_initial: bool,
    observed: bool,
    /// The sockets known came from a snapshot and the next observation is the first since.
    adopted: bool,
}

fn pids(owners: &Owners) -> Vec<u32> {
    match owners {
        Owners::Known(p) => p.iter().map(|p| p.pid).collect(),
        _ => Vec::new(),
    }
}

impl Tracker {
    pub(crate) fn new(grace: Duration, report_initial: bool) -> Tracker {
        Tracker {
            changes: Vec::new(),
            known: HashMap::new(),
            by_cookie: HashMap::new(),
            closing: HashMap::new(),
            destroyed: HashMap::new(),
            grace,
            report_initial,
            observed: false,
            adopted: false,
        }
    }

    /// Starts from sockets known from an earlier run (a snapshot): they are not announced
    /// again if the first observation still sees them; those it does not see are closed.
    pub(crate) fn adopt(&mut self, sockets: Vec<Socket>) {
        for s in sockets {
            self.insert(s);
        }
        // The next observation is a continuation, not a first look.
        self.observed = true;
        self.adopted = true;
    }

    /// Starts as a continuation: the watch began before this tracker (a namespace that
    /// appeared later), so nothing it learns of is open "at start".
    pub(crate) fn started(&mut self) {
        self.observed = true;
    }

    /// The owners already known for a socket with this key, if any.
    pub(crate) fn owners_of(&self, s: &Socket) -> Option<&Owners> {
        self.known.get(&Key::of(s)).map(|k| &k.owners)
    }

    /// Every socket currently open, in no particular order.
    pub(crate) fn current(&self) -> impl Iterator<Item = &Socket> {
        self.known.values()
    }

    fn insert(&mut self, s: Socket) {
        let key = Key::of(&s);
        if let Some(c) = s.cookie {
            self.by_cookie.insert(c, key.clone());
        }
        self.changes.push(Change::Open(key.clone(), s.clone()));
        self.known.insert(key, s);
    }

    fn remove(&mut self, key: &Key) -> Option<Socket> {
        let s = self.known.remove(key)?;
        if let Some(c) = s.cookie {
            self.by_cookie.remove(&c);
        }
        self.changes.push(Change::Closed(key.clone()));
        Some(s)
    }

    /// The changes to the open set since the last call, oldest first.
    pub(crate) fn take_changes(&mut self) -> std::vec::Drain<'_, Change> {
        self.changes.drain(..)
    }

    /// Records what a source saw.
    pub(crate) fn observe(&mut self, obs: Observation, out: &mut Vec<Event>) {
        match obs {
            Observation::Census { sockets, at } => self.census(sockets, at, out),
            Observation::Seen { socket, at } => self.seen(socket, at, out),
            Observation::Gone { cookie, at } => self.gone(cookie, at, out),
        }
    }

    /// A census: every socket of the namespace, as one dump saw it. Known sockets it does not
    /// show have closed (a dump is exact: an inconsistent one is redone); sockets it shows for
    /// the first time have opened — or, on an endpoint still waiting out a close, restarted.
    /// Absences are handled first so that a socket replaced between two scans is a restart.
    fn census(&mut self, seen: Vec<Socket>, at: At, out: &mut Vec<Event>) {
        let seen_keys: HashSet<Key> = seen.iter().map(Key::of).collect();
        if std::mem::take(&mut self.adopted) {
            self.carry_over(&seen, &seen_keys, at, out);
        }
        let gone: Vec<Key> =
            self.known.keys().filter(|k| !seen_keys.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(s) = self.remove(&key) {
                self.close(s, at, out);
            }
        }
        let initial = !self.observed;
        self.observed = true;
        for s in seen {
            self.refresh(&s);
            self.open(s, initial, at, out);
        }
    }

    /// What only a dump knows (whether an IPv6 socket is v6-only, its bound interface, the
    /// inode of a socket a kernel event saw without one) is taken into a known socket.
    fn refresh(&mut self, dumped: &Socket) {
        let key = Key::of(dumped);
        let Some(known) = self.known.get_mut(&key) else { return };
        let stale = (known.inode == 0 && dumped.inode != 0)
            || (known.v6only.is_none() && dumped.v6only.is_some())
            || (known.interface.is_none() && dumped.interface.is_some());
        if stale {
            known.inode = dumped.inode;
            known.v6only = dumped.v6only;
            known.interface = dumped.interface;
            self.changes.push(Change::Open(key, known.clone()));
        }
    }

    /// One socket seen open by a source that reports as things happen: a new socket unless
    /// known (a known one with unknown owners takes the owners the source names).
    fn seen(&mut self, s: Socket, at: At, out: &mut Vec<Event>) {
        let key = Key::of(&s);
        if let Some(known) = self.known.get(&key) {
            if matches!(known.owners, Owners::Unknown(_)) && matches!(s.owners, Owners::Known(_)) {
                let owners = s.owners.clone();
                self.update_owners(&s, owners, at, out);
            }
            return;
        }
        self.open(s, false, at, out);
    }

    /// A socket not known before: opened, or restarted on an endpoint waiting out a close.
    fn open(&mut self, mut s: Socket, initial: bool, at: At, out: &mut Vec<Event>) {
        if s.cookie.is_some_and(|c| self.destroyed.contains_key(&c)) {
            return; // the kernel already told us it is gone
        }
        if self.known.contains_key(&Key::of(&s)) {
            return;
        }
        let endpoint = Endpoint::of(&s);
        let restarted = self.closing.get_mut(&endpoint).and_then(Vec::pop);
        if self.closing.get(&endpoint).is_some_and(Vec::is_empty) {
            self.closing.remove(&endpoint);
        }
        match restarted {
            // A kernel event names only the caller: one of the processes that held the
            // endpoint before (a pre-forked worker re-listening) keeps the old owners until
            // the owner checks say otherwise.
            Some(old)
                if at.by == Source::Ebpf
                    && !pids(&s.owners).is_empty()
                    && pids(&s.owners).iter().all(|p| pids(&old.socket.owners).contains(p)) =>
            {
                s.owners = old.socket.owners;
            }
            Some(old) => {
                if pids(&old.socket.owners) != pids(&s.owners) {
                    let previous = old.socket.processes().to_vec();
                    out.push(Event::OwnersChanged {
                        socket: s.clone(),
                        previous,
                        at: at.wall,
                        source: at.by,
                    });
                }
            }
            None if initial && !self.report_initial => {}
            None => {
                out.push(Event::Opened { socket: s.clone(), at: at.wall, initial, source: at.by })
            }
        }
        self.insert(s);
    }

    /// After a snapshot: a socket seen on an endpoint the snapshot had open under another
    /// identity is the same port, not a new one — a restarted container's namespace and
    /// cookies are new. It takes the old one's place; a change of owners is reported.
    fn carry_over(
        &mut self,
        seen: &[Socket],
        seen_keys: &HashSet<Key>,
        at: At,
        out: &mut Vec<Event>,
    ) {
        let mut unmatched: HashMap<Endpoint, Vec<Key>> = HashMap::new();
        for key in self.known.keys().filter(|k| !seen_keys.contains(*k)) {
            unmatched.entry(key.endpoint.clone()).or_default().push(key.clone());
        }
        for s in seen {
            if self.known.contains_key(&Key::of(s)) {
                continue;
            }
            let Some(old) = unmatched.get_mut(&Endpoint::of(s)).and_then(Vec::pop) else {
                continue;
            };
            let Some(old) = self.remove(&old) else { continue };
            if pids(&old.owners) != pids(&s.owners) {
                let previous = old.processes().to_vec();
                out.push(Event::OwnersChanged {
                    socket: s.clone(),
                    previous,
                    at: at.wall,
                    source: at.by,
                });
            }
            self.insert(s.clone());
        }
    }

    /// The socket with this cookie closed. Unknown cookies (every connection's end arrives
    /// on the destroy feed too) are ignored at the cost of one lookup.
    fn gone(&mut self, cookie: u64, at: At, out: &mut Vec<Event>) {
        let Some(key) = self.by_cookie.get(&cookie).cloned() else { return };
        self.destroyed.insert(cookie, at.mono);
        if let Some(s) = self.remove(&key) {
            self.close(s, at, out);
        }
    }

    fn close(&mut self, s: Socket, at: At, out: &mut Vec<Event>) {
        if self.grace.is_zero() {
            out.push(Event::Closed { socket: s, at: at.wall, source: at.by });
        } else {
            let endpoint = Endpoint::of(&s);
            self.closing.entry(endpoint).or_default().push(Closing {
                socket: s,
                due: at.mono + self.grace,
                by: at.by,
            });
        }
    }

    /// Reports the closes whose grace has run out by `now`.
    pub(crate) fn expire(&mut self, now: Instant, wall: SystemTime, out: &mut Vec<Event>) {
        self.destroyed.retain(|_, at| now.duration_since(*at) < DESTROYED_MEMORY);
        let mut emptied = Vec::new();
        for (endpoint, closing) in self.closing.iter_mut() {
            let (due, waiting): (Vec<Closing>, Vec<Closing>) =
                closing.drain(..).partition(|c| c.due <= now);
            *closing = waiting;
            for c in due {
                // The close happened `grace` ago; report that moment, not the expiry.
                let at = wall.checked_sub(now.duration_since(c.due) + self.grace).unwrap_or(wall);
                out.push(Event::Closed { socket: c.socket, at, source: c.by });
            }
            if closing.is_empty() {
                emptied.push(endpoint.clone());
            }
        }
        for e in emptied {
            self.closing.remove(&e);
        }
    }

    /// Replaces the owners of a known socket whose processes changed while it stayed open.
    pub(crate) fn update_owners(
        &mut self,
        s: &Socket,
        owners: Owners,
        at: At,
        out: &mut Vec<Event>,
    ) {
        let Some(known) = self.known.get_mut(&Key::of(s)) else { return };
        if pids(&known.owners) == pids(&owners) {
            return;
        }
        let previous = known.processes().to_vec();
        known.owners = owners;
        out.push(Event::OwnersChanged {
            socket: known.clone(),
            previous,
            at: at.wall,
            source: at.by,
        });
        self.changes.push(Change::Open(Key::of(known), known.clone()));
    }

    /// A known socket that left the selection (its owners no longer pass the owner filter):
    /// for this tracker it closed.
    pub(crate) fn evict(&mut self, s: &Socket, at: At, out: &mut Vec<Event>) {
        if let Some(known) = self.remove(&Key::of(s)) {
            self.close(known, at, out);
        }
    }

    /// When the earliest pending close is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.closing.values().flatten().map(|c| c.due).min()
    }

    /// Reports every pending close now (shutting down).
    pub(crate) fn flush(&mut self, wall: SystemTime, out: &mut Vec<Event>) {
        for (_, closing) in self.closing.drain() {
            for c in closing {
                out.push(Event::Closed { socket: c.socket, at: wall, source: c.by });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(port: u16, cookie: u64, pids: &[u32]) -> Socket {
        crate::socket::fixtures::listener(port, cookie, pids)
    }

    /// A fake clock: a fixed origin plus an offset the test advances.
    struct Clock {
        origin: Instant,
        offset: Duration,
    }

    impl Clock {
        fn new() -> Clock {
            Clock { origin: Instant::now(), offset: Duration::ZERO }
        }
        fn now(&self) -> Instant {
            self.origin + self.offset
        }
        fn wall(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.offset
        }
        fn advance(&mut self, ms: u64) {
            self.offset += Duration::from_millis(ms);
        }
    }

    impl Clock {
        fn at(&self) -> At {
            At { mono: self.now(), wall: self.wall(), by: Source::Scan }
        }
    }

    /// One whole cycle: the given scans, then expiry.
    fn cycle(t: &mut Tracker, clock: &Clock, scans: &[Vec<Socket>]) -> Vec<Event> {
        let mut out = Vec::new();
        for scan in scans {
            t.observe(Observation::Census { sockets: scan.clone(), at: clock.at() }, &mut out);
        }
        t.expire(clock.now(), clock.wall(), &mut out);
        out
    }

    fn gone(t: &mut Tracker, clock: &Clock, cookie: u64, out: &mut Vec<Event>) {
        t.observe(Observation::Gone { cookie, at: clock.at() }, out);
    }

    fn kinds(events: &[Event]) -> Vec<(&'static str, u16)> {
        let kind = |e: &Event| match e {
            Event::Opened { .. } => "open",
            Event::Closed { .. } => "close",
            Event::OwnersChanged { .. } => "owners",
            _ => "connection",
        };
        events.iter().map(|e| (kind(e), e.socket().port)).collect()
    }

    #[test]
    fn open_then_close_with_grace() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(Duration::from_millis(200), true);
        assert!(cycle(&mut t, &clock, &[vec![]]).is_empty());
        clock.advance(100);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 1, &[10])]]);
        assert_eq!(kinds(&e), [("open", 80)]);
        assert!(matches!(e[0], Event::Opened { initial: false, .. }));
        clock.advance(100);
        // Gone, but within grace: nothing yet.
        assert!(cycle(&mut t, &clock, &[vec![]]).is_empty());
        assert_eq!(t.next_due(), Some(clock.now() + Duration::from_millis(200)));
        clock.advance(199);
        assert!(cycle(&mut t, &clock, &[vec![]]).is_empty());
        clock.advance(1);
        let e = cycle(&mut t, &clock, &[vec![]]);
        assert_eq!(kinds(&e), [("close", 80)]);
        // Last known owners travel with the close, stamped when the socket went away.
        assert_eq!(e[0].socket().pids(), [10]);
        assert_eq!(e[0].at(), clock.wall() - Duration::from_millis(200));
    }

    #[test]
    fn restart_inside_grace_is_silent_or_owners_changed() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(Duration::from_millis(500), true);
        cycle(&mut t, &clock, &[vec![]]);
        cycle(&mut t, &clock, &[vec![sock(80, 1, &[10])]]);
        clock.advance(100);
        assert!(cycle(&mut t, &clock, &[vec![]]).is_empty());
        clock.advance(100);
        // Same process reopens the endpoint (new cookie): no close, no open.
        assert!(cycle(&mut t, &clock, &[vec![sock(80, 2, &[10])]]).is_empty());
        clock.advance(1000);
        assert!(cycle(&mut t, &clock, &[vec![sock(80, 2, &[10])]]).is_empty());
        // Close, and another process takes the endpoint within grace: owners changed only.
        cycle(&mut t, &clock, &[vec![]]);
        clock.advance(100);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 3, &[11])]]);
        assert_eq!(kinds(&e), [("owners", 80)]);
        match &e[0] {
            Event::OwnersChanged { socket, previous, .. } => {
                assert_eq!(socket.pids(), [11]);
                assert_eq!(previous.iter().map(|p| p.pid).collect::<Vec<_>>(), [10]);
            }
            other => panic!("{other:?}"),
        }
        clock.advance(1000);
        assert!(cycle(&mut t, &clock, &[vec![sock(80, 3, &[11])]]).is_empty());
    }

    #[test]
    fn replacement_between_two_scans_is_a_restart() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::from_millis(500), true);
        cycle(&mut t, &clock, &[vec![sock(80, 1, &[10])]]);
        // Old cookie gone and new one present in the same cycle.
        assert!(cycle(&mut t, &clock, &[vec![sock(80, 2, &[10])]]).is_empty());
    }

    #[test]
    fn zero_grace_reports_at_once() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        cycle(&mut t, &clock, &[vec![sock(80, 1, &[10])]]);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 2, &[10])]]);
        assert_eq!(kinds(&e), [("close", 80), ("open", 80)]);
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn initial_sockets_flagged_or_skipped() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        let e = cycle(&mut t, &clock, &[vec![sock(22, 1, &[1])]]);
        assert!(matches!(e[..], [Event::Opened { initial: true, .. }]));
        let mut quiet = Tracker::new(Duration::ZERO, false);
        assert!(cycle(&mut quiet, &clock, &[vec![sock(22, 1, &[1])]]).is_empty());
        // ...but its later close is still reported, and later opens are not initial.
        let e = cycle(&mut quiet, &clock, &[vec![sock(23, 2, &[1])]]);
        assert_eq!(kinds(&e), [("close", 22), ("open", 23)]);
        assert!(matches!(e[1], Event::Opened { initial: false, .. }));
    }

    #[test]
    fn burst_scans_catch_a_socket_seen_once() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        cycle(&mut t, &clock, &[vec![]]);
        // Seen only in the middle scan of a three-scan burst: opened, with its owner, and
        // closed by the next scan.
        let e = cycle(&mut t, &clock, &[vec![], vec![sock(9000, 5, &[42])], vec![]]);
        assert_eq!(kinds(&e), [("open", 9000), ("close", 9000)]);
        assert_eq!(e[0].socket().pids(), [42]);
    }

    #[test]
    fn destroy_closes_known_cookie_at_once_and_ignores_unknown() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        cycle(&mut t, &clock, &[vec![sock(80, 7, &[10])]]);
        let mut out = Vec::new();
        gone(&mut t, &clock, 12345, &mut out);
        assert!(out.is_empty());
        gone(&mut t, &clock, 7, &mut out);
        assert_eq!(kinds(&out), [("close", 80)]);
        // A dump that raced with the close and still shows the socket does not reopen it.
        let e = cycle(&mut t, &clock, &[vec![sock(80, 7, &[10])]]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn destroy_respects_grace_and_restart() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(Duration::from_millis(300), true);
        cycle(&mut t, &clock, &[vec![sock(80, 7, &[10])]]);
        let mut out = Vec::new();
        gone(&mut t, &clock, 7, &mut out);
        assert!(out.is_empty());
        clock.advance(50);
        assert!(cycle(&mut t, &clock, &[vec![sock(80, 8, &[10])]]).is_empty());
    }

    #[test]
    fn adopted_sockets_are_not_announced_and_missing_ones_close() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        t.adopt(vec![sock(80, 1, &[10]), sock(81, 2, &[10])]);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 1, &[10]), sock(82, 3, &[11])]]);
        assert_eq!(kinds(&e), [("close", 81), ("open", 82)]);
        assert!(matches!(e[1], Event::Opened { initial: false, .. }));
    }

    #[test]
    fn adopted_endpoints_reopened_under_new_cookies_are_the_same_ports() {
        // A restarted container: new namespace (rebased by the caller), new cookies, new pids.
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        t.adopt(vec![sock(80, 1, &[10]), sock(81, 2, &[10])]);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 5, &[20])]]);
        assert_eq!(kinds(&e), [("owners", 80), ("close", 81)]);
        assert_eq!(e[0].socket().pids(), [20]);
        // Only the first observation carries over: later it is an ordinary close and open.
        let e = cycle(&mut t, &clock, &[vec![sock(80, 6, &[20])]]);
        assert_eq!(kinds(&e), [("close", 80), ("open", 80)]);
    }

    #[test]
    fn reuseport_siblings_are_separate_sockets() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 1, &[10]), sock(80, 2, &[11])]]);
        assert_eq!(kinds(&e), [("open", 80), ("open", 80)]);
        let e = cycle(&mut t, &clock, &[vec![sock(80, 2, &[11])]]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].socket().pids(), [10]);
    }

    #[test]
    fn owners_update_reports_change_once() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        let s = sock(80, 1, &[10, 11]);
        cycle(&mut t, &clock, &[vec![s.clone()]]);
        let mut out = Vec::new();
        let fewer = sock(80, 1, &[11]).owners;
        t.update_owners(&s, fewer.clone(), clock.at(), &mut out);
        t.update_owners(&s, fewer, clock.at(), &mut out);
        assert_eq!(kinds(&out), [("owners", 80)]);
    }

    #[test]
    fn a_socket_seen_then_gone_between_two_dumps_opens_and_closes_in_order() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        cycle(&mut t, &clock, &[vec![]]);
        let mut out = Vec::new();
        t.observe(Observation::Seen { socket: sock(80, 9, &[42]), at: clock.at() }, &mut out);
        gone(&mut t, &clock, 9, &mut out);
        assert_eq!(kinds(&out), [("open", 80), ("close", 80)]);
        assert_eq!(out[1].socket().pids(), [42], "the close names the owner");
        // The next dump, which never saw it, changes nothing.
        assert!(cycle(&mut t, &clock, &[vec![]]).is_empty());
    }

    #[test]
    fn a_seen_socket_a_dump_already_knows_only_fills_unknown_owners() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        cycle(&mut t, &clock, &[vec![sock(80, 9, &[])]]);
        let mut out = Vec::new();
        t.observe(Observation::Seen { socket: sock(80, 9, &[42]), at: clock.at() }, &mut out);
        assert_eq!(kinds(&out), [("owners", 80)]);
        out.clear();
        t.observe(Observation::Seen { socket: sock(80, 9, &[43]), at: clock.at() }, &mut out);
        assert!(out.is_empty(), "known owners are the owner index's to change");
    }

    #[test]
    fn changes_to_the_open_set_are_recorded_in_order() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, false);
        cycle(&mut t, &clock, &[vec![sock(80, 1, &[10])]]);
        cycle(&mut t, &clock, &[vec![sock(81, 2, &[10])]]);
        let changes: Vec<Change> = t.take_changes().collect();
        let k = |port, cookie| Key::of(&sock(port, cookie, &[10]));
        assert_eq!(
            changes,
            [
                Change::Open(k(80, 1), sock(80, 1, &[10])),
                Change::Closed(k(80, 1)),
                Change::Open(k(81, 2), sock(81, 2, &[10])),
            ],
            "silent (initial) sockets are recorded too"
        );
        assert_eq!(t.take_changes().count(), 0);
    }

    #[test]
    fn a_dump_completes_what_a_kernel_event_could_not_say() {
        let clock = Clock::new();
        let mut t = Tracker::new(Duration::ZERO, true);
        cycle(&mut t, &clock, &[vec![]]);
        let mut seen = sock(80, 9, &[42]);
        seen.family = Family::Ipv6;
        seen.inode = 0;
        let mut out = Vec::new();
        t.observe(Observation::Seen { socket: seen.clone(), at: clock.at() }, &mut out);
        let mut dumped = seen.clone();
        dumped.inode = 5;
        dumped.v6only = Some(false);
        assert!(cycle(&mut t, &clock, &[vec![dumped]]).is_empty(), "no event: the same socket");
        let now = t.current().next().unwrap();
        assert_eq!((now.inode, now.v6only), (5, Some(false)));
        assert_eq!(now.pids(), [42], "the owner stays");
    }

    #[test]
    fn a_kernel_event_naming_one_of_the_holders_is_no_owner_change() {
        let mut clock = Clock::new();
        let mut t = Tracker::new(Duration::from_millis(500), true);
        cycle(&mut t, &clock, &[vec![sock(80, 1, &[10, 11, 12])]]);
        cycle(&mut t, &clock, &[vec![]]);
        clock.advance(100);
        let mut out = Vec::new();
        let at = At { by: Source::Ebpf, ..clock.at() };
        t.observe(Observation::Seen { socket: sock(80, 2, &[11]), at }, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(t.current().next().unwrap().pids(), [10, 11, 12], "the holders are kept");
        // A process that did not hold it before is a change.
        cycle(&mut t, &clock, &[vec![]]);
        t.observe(Observation::Seen { socket: sock(80, 3, &[99]), at }, &mut out);
        assert_eq!(kinds(&out), [("owners", 80)]);
    }
}
