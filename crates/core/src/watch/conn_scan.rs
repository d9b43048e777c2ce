//! Connections without kernel events: each namespace's TCP sockets dumped every cycle and
//! compared with its last dump (new ones reported, with owners from /proc; those gone closed),
//! and the destroy feed's cookies for closes as they happen. Coarser than the connection
//! programs — a connection shorter than a cycle can be missed — and said so once at start.

use std::collections::HashSet;

use super::connections::{ConnWatch, disconnect, listener_for};
use super::scheduler::Loop;
use crate::connection::Direction;
use crate::event::Event;
use crate::socket::{Socket, State};
use crate::source::{At, Source};

/// What the connection scan dumps: every TCP state a connection passes through while it has
/// a full socket, and listeners (to tell inbound from outbound).
pub(super) const SCAN_STATES: [State; 9] = [
    State::Established,
    State::SynSent,
    State::SynRecv,
    State::FinWait1,
    State::FinWait2,
    State::CloseWait,
    State::LastAck,
    State::Closing,
    State::Listen,
];

impl ConnWatch {
    /// The destroy feed of namespace `netns` says `cookie` was freed: when scanning, a
    /// connection reported there is closed now. (With kernel events their own close record,
    /// with the kernel's duration, says it.)
    pub(super) fn gone(&mut self, netns: u64, cookie: u64, at: At, events: &mut Vec<Event>) {
        let Some(scanned) = self.scanned.as_mut() else { return };
        if let Some(set) = scanned.get_mut(&netns) {
            set.remove(&cookie);
        }
        if let Some(f) = self.followed.remove(&cookie) {
            events.push(disconnect(f, at, None, None, true));
        }
    }
}

impl Loop {
    /// Scanning for connections: each namespace's established sockets, compared with its last
    /// dump. New ones are reported (owners from /proc), those gone are closed.
    pub(super) fn scan_connections(&mut self, events: &mut Vec<Event>) {
        let Some(mut cw) = self.conns.take() else { return };
        let Some(mut scanned) = cw.scanned.take() else {
            self.conns = Some(cw);
            return;
        };
        let at = At::now(Source::Scan);
        let mut new: Vec<(Socket, Direction)> = Vec::new();
        for t in &mut self.targets {
            let Some(sockets) = t.dump_raw(&cw.dumps) else { continue };
            let (listeners, conns): (Vec<Socket>, Vec<Socket>) =
                sockets.into_iter().partition(|s| s.state == State::Listen);
            let now: HashSet<u64> = conns.iter().filter_map(|s| s.cookie).collect();
            let first = !scanned.contains_key(&t.inode);
            let before = scanned.entry(t.inode).or_default();
            for cookie in before.difference(&now) {
                if let Some(f) = cw.followed.remove(cookie) {
                    events.push(disconnect(f, at, None, None, true));
                }
            }
            if !first {
                for mut s in
                    conns.into_iter().filter(|s| s.cookie.is_some_and(|c| !before.contains(&c)))
                {
                    let dir = if listener_for(&s, listeners.iter()).is_some() {
                        Direction::In
                    } else {
                        Direction::Out
                    };
                    if cw.wants(dir, s.remote) {
                        s.container = t.container.clone();
                        s.netns_name = t.netns_name.clone();
                        new.push((s, dir));
                    }
                }
            }
            *before = now;
        }
        // Namespaces no longer watched: forgotten.
        scanned.retain(|ns, _| self.targets.iter().any(|t| t.inode == *ns));
        let (mut sockets, dirs): (Vec<Socket>, Vec<Direction>) = new.into_iter().unzip();
        self.owners.resolve(&mut sockets);
        for (s, dir) in sockets.into_iter().zip(dirs) {
            self.report(&mut cw, s, dir, None, at, true, events);
        }
        cw.scanned = Some(scanned);
        self.conns = Some(cw);
        self.emit(events);
    }
}
