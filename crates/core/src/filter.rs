//! Which sockets a query or a watcher reports: the one place selection is decided.
//!
//! Protocols, families and states become the kernel's dump requests (`dumps`); ports,
//! addresses and uid are checked on each socket read (`matches`); the owner pid needs owners
//! and is checked last (`owner_matches`). Queries and watchers ask these three, nothing else.

use std::net::IpAddr;
use std::path::Path;

use crate::owners;
use crate::socket::{Family, Protocol, Socket, State, StateSet};
use crate::source::Dump;

/// A selection of sockets. The default is what `ss -tuln` shows: TCP and UDP, IPv4 and IPv6,
/// listening.
///
/// ```
/// use portwatch_core::{Filter, Protocol};
///
/// let web = Filter::new().protocols(&[Protocol::Tcp]).port_range(8000, 8999).ignore_loopback(true);
/// # let _ = web;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    protocols: Vec<Protocol>,
    families: Vec<Family>,
    states: StateSet,
    ports: Vec<(u16, u16)>,
    addresses: Vec<IpAddr>,
    ignore_loopback: bool,
    uid: Option<u32>,
    pid: Option<(u32, bool)>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new()
    }
}

impl Filter {
    /// TCP and UDP, IPv4 and IPv6, listening (TCP `LISTEN`, UDP `UNCONN`), any port.
    pub fn new() -> Filter {
        Filter {
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            families: vec![Family::Ipv4, Family::Ipv6],
            states: StateSet::LISTENING,
            ports: Vec::new(),
            addresses: Vec::new(),
            ignore_loopback: false,
            uid: None,
            pid: None,
        }
    }

    /// Which protocols. Unix sockets are included only when named here.
    pub fn protocols(mut self, protocols: &[Protocol]) -> Filter {
        self.protocols = protocols.to_vec();
        self
    }

    /// Which inet families (unix sockets are not affected).
    pub fn families(mut self, families: &[Family]) -> Filter {
        self.families = families.to_vec();
        self
    }

    /// Which states, filtered by the kernel. [`StateSet::LISTENING`] by default. `UNCONN`
    /// applies to UDP only: unix datagram sockets are not listeners, and no hashed TCP socket
    /// is ever in that state.
    pub fn states(mut self, states: StateSet) -> Filter {
        self.states = states;
        self
    }

    /// Also accept this local port (any port while none is given). Unix sockets have no port
    /// and never match a port filter.
    pub fn port(self, port: u16) -> Filter {
        self.port_range(port, port)
    }

    /// Also accept local ports `first..=last`.
    pub fn port_range(mut self, first: u16, last: u16) -> Filter {
        self.ports.push((first.min(last), first.max(last)));
        self
    }

    /// Also accept this local address (any address while none is given; a wildcard bind is
    /// `0.0.0.0` or `::`).
    pub fn address(mut self, addr: IpAddr) -> Filter {
        self.addresses.push(addr);
        self
    }

    /// Drop sockets bound to a loopback address (`127.0.0.0/8`, `::1`).
    pub fn ignore_loopback(mut self, ignore: bool) -> Filter {
        self.ignore_loopback = ignore;
        self
    }

    /// Only sockets the kernel records as created by this uid.
    pub fn uid(mut self, uid: u32) -> Filter {
        self.uid = Some(uid);
        self
    }

    /// Only sockets held by process `pid` (with `children`, or by any of its descendants).
    /// Needs owner lookup; a socket whose owner is unknown does not match.
    pub fn pid(mut self, pid: u32, children: bool) -> Filter {
        self.pid = Some((pid, children));
        self
    }

    /// Whether a socket whose owners are known passes the owner checks: held by the pid
    /// asked for (or, with `children`, a descendant). Reads parents from `proc_root`.
    pub(crate) fn owner_matches(&self, s: &Socket, proc_root: &Path) -> bool {
        match self.pid {
            Some((pid, children)) => owners::held_by(s, pid, children, proc_root),
            None => true,
        }
    }

    /// The sock_diag dumps this selection needs.
    pub(crate) fn dumps(&self) -> Vec<Dump> {
        let mut dumps = Vec::new();
        for &protocol in &self.protocols {
            let states = match protocol {
                // No hashed TCP socket is ever in TCP_CLOSE (UDP's UNCONN), and asking for any
                // TCP state beyond LISTEN makes the kernel walk the whole established hash
                // (~0.45 ms per family even when it is empty).
                Protocol::Tcp | Protocol::Unix => self.states.without(State::Unconnected),
                _ => self.states,
            };
            if states.is_empty() {
                continue;
            }
            if protocol == Protocol::Unix {
                dumps.push(Dump::Unix { states });
                continue;
            }
            for &family in &self.families {
                if family != Family::Unix {
                    dumps.push(Dump::Inet { protocol, family, states });
                }
            }
        }
        dumps
    }

    /// Whether only inet sockets in listening states are selected: those appear by being
    /// hashed and leave by being freed (so the change probe can stand in for dumps), and the
    /// kernel event source reports every one of them.
    pub(crate) fn listeners_only(&self) -> bool {
        !self.protocols.contains(&Protocol::Unix)
            && self.states.without(State::Listen).without(State::Unconnected).is_empty()
    }

    /// Whether a socket reported by something other than a dump of this selection (a kernel
    /// event) is one of its protocols, families and states, and passes [`Self::matches`].
    pub(crate) fn admits(&self, s: &Socket) -> bool {
        let states = match s.protocol {
            Protocol::Tcp | Protocol::Unix => self.states.without(State::Unconnected),
            _ => self.states,
        };
        self.protocols.contains(&s.protocol)
            && (s.family == Family::Unix || self.families.contains(&s.family))
            && states.contains(s.state)
            && self.matches(s)
    }

    /// Whether a dumped socket passes the checks that do not need its owners.
    pub(crate) fn matches(&self, s: &Socket) -> bool {
        if !self.ports.is_empty()
            && (s.protocol == Protocol::Unix
                || !self.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s.port)))
        {
            return false;
        }
        if let Some(addr) = s.addr {
            if self.ignore_loopback && addr.is_loopback() {
                return false;
            }
            if !self.addresses.is_empty() && !self.addresses.contains(&addr) {
                return false;
            }
        } else if !self.addresses.is_empty() {
            return false;
        }
        self.uid.is_none_or(|u| s.uid == Some(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str, port: u16) -> Socket {
        let mut s = crate::socket::fixtures::listener(port, 1, &[]);
        s.addr = Some(addr.parse().unwrap());
        s.uid = Some(1000);
        s
    }

    #[test]
    fn ports_ranges_addresses_loopback_uid() {
        let f = Filter::new().port(22).port_range(8000, 8099);
        assert!(f.matches(&tcp("0.0.0.0", 22)));
        assert!(f.matches(&tcp("0.0.0.0", 8050)));
        assert!(!f.matches(&tcp("0.0.0.0", 8100)));
        let f = Filter::new().ignore_loopback(true);
        assert!(!f.matches(&tcp("127.0.0.53", 53)));
        assert!(f.matches(&tcp("10.0.0.1", 53)));
        let f = Filter::new().address("0.0.0.0".parse().unwrap());
        assert!(f.matches(&tcp("0.0.0.0", 1)) && !f.matches(&tcp("10.0.0.1", 1)));
        assert!(Filter::new().uid(1000).matches(&tcp("0.0.0.0", 1)));
        assert!(!Filter::new().uid(0).matches(&tcp("0.0.0.0", 1)));
        // Reversed ranges are normalised.
        assert!(Filter::new().port_range(90, 80).matches(&tcp("0.0.0.0", 85)));
    }

    #[test]
    fn admits_checks_protocol_family_and_state_too() {
        let f = Filter::new().protocols(&[Protocol::Tcp]).families(&[Family::Ipv4]).port(22);
        assert!(f.admits(&tcp("0.0.0.0", 22)));
        assert!(!f.admits(&tcp("0.0.0.0", 23)));
        let mut udp = tcp("0.0.0.0", 22);
        udp.protocol = Protocol::Udp;
        udp.state = State::Unconnected;
        assert!(!f.admits(&udp));
        assert!(Filter::new().port(22).admits(&udp));
        let mut v6 = tcp("::", 22);
        v6.family = Family::Ipv6;
        assert!(!f.admits(&v6));
        let mut unconn_tcp = tcp("0.0.0.0", 22);
        unconn_tcp.state = State::Unconnected;
        assert!(!Filter::new().admits(&unconn_tcp), "TCP is never UNCONN");
    }

    #[test]
    fn dumps_never_ask_tcp_for_unconn() {
        for d in Filter::new().protocols(&[Protocol::Tcp, Protocol::Udp, Protocol::Unix]).dumps() {
            match d {
                Dump::Inet { protocol: Protocol::Tcp, states, .. } | Dump::Unix { states } => {
                    assert!(!states.contains(State::Unconnected))
                }
                Dump::Inet { states, .. } => assert!(states.contains(State::Unconnected)),
            }
        }
        let only_unconn =
            Filter::new().protocols(&[Protocol::Tcp]).states(StateSet::of(&[State::Unconnected]));
        assert!(only_unconn.dumps().is_empty());
    }
}
