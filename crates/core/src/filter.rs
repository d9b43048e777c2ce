//! Which sockets a query or a watcher reports: the one place selection is decided.
//!
//! Protocols, families and states become the kernel's dump requests (`dumps`); ports,
//! addresses and uid are checked on each socket read (`matches`); the owner pid and command
//! name need owners and are checked last (`owner_matches`). Queries and watchers ask these
//! three, nothing else, after `resolved` has checked the selection and looked up what it names
//! (a user name, a pid) once.

use std::net::IpAddr;
use std::path::Path;

use crate::error::{Error, Result};
use crate::owners;
use crate::socket::{AddressScope, Family, Protocol, Socket, State, StateSet};
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
    scopes: Vec<AddressScope>,
    uid: Option<u32>,
    /// A user name or uid to resolve into `uid` (see `resolved`).
    user: Option<String>,
    pid: Option<(u32, bool)>,
    comm: Option<String>,
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
            scopes: Vec::new(),
            uid: None,
            user: None,
            pid: None,
            comm: None,
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

    /// Also accept local ports `first..=last`. A range that runs backwards (`first > last`)
    /// is refused when the query runs or the watcher is built, with
    /// [`Error::InvalidSetting`] naming `port_range`: it is a mistake, and guessing what was
    /// meant would hide it.
    pub fn port_range(mut self, first: u16, last: u16) -> Filter {
        self.ports.push((first, last));
        self
    }

    /// Also accept this local address (any address while none is given; a wildcard bind is
    /// `0.0.0.0` or `::`).
    pub fn address(mut self, addr: IpAddr) -> Filter {
        self.addresses.push(addr);
        self
    }

    /// Drop sockets bound to a loopback address (`127.0.0.0/8`, `::1`, `::ffff:127.0.0.1`).
    pub fn ignore_loopback(mut self, ignore: bool) -> Filter {
        self.ignore_loopback = ignore;
        self
    }

    /// Also accept inet sockets of this [`AddressScope`] (any scope while none is given).
    /// Unix sockets have none and never match a scope filter.
    pub fn scope(mut self, scope: AddressScope) -> Filter {
        if !self.scopes.contains(&scope) {
            self.scopes.push(scope);
        }
        self
    }

    /// Only sockets the kernel records as created by this uid.
    pub fn uid(mut self, uid: u32) -> Filter {
        self.uid = Some(uid);
        self.user = None;
        self
    }

    /// Only sockets of this user: a name, looked up in `/etc/passwd` (no NSS: a user known
    /// only to LDAP or systemd-homed is not found), or a uid in decimal. Like
    /// [`uid`](Self::uid) it matches the uid the kernel recorded for the socket — its
    /// creator, which is the owning process's user except for a socket created before its
    /// process changed user (a server that binds as root, then drops privileges). So it
    /// needs no owner lookup and matches sockets whose owner is unknown. A name missing
    /// from `/etc/passwd` is refused when the query runs or the watcher is built, with
    /// [`Error::InvalidSetting`] naming `user`.
    pub fn user(mut self, name_or_uid: impl Into<String>) -> Filter {
        let name = name_or_uid.into();
        match name.parse() {
            Ok(uid) => return self.uid(uid),
            Err(_) => self.user = Some(name),
        }
        self
    }

    /// Only sockets held by process `pid` (with `children`, or by any of its descendants).
    /// Needs owner lookup; a socket whose owner is unknown does not match.
    pub fn pid(mut self, pid: u32, children: bool) -> Filter {
        self.pid = Some((pid, children));
        self
    }

    /// Only sockets held by a process with this command name (`/proc/PID/comm`, as `ps -o
    /// comm` shows it). The kernel keeps the first 15 bytes of a name: a longer `comm`
    /// matches a process whose name is its first 15 bytes. Needs owner lookup; a socket whose
    /// owner is unknown does not match.
    pub fn comm(mut self, comm: impl Into<String>) -> Filter {
        self.comm = Some(comm.into());
        self
    }

    /// This filter checked, with what it names looked up: a user name becomes its uid (from
    /// `passwd`), and the pid must be a process (in `proc_root`). The error names the
    /// setting as the builder method does.
    pub(crate) fn resolved(mut self, proc_root: &Path, passwd: &Path) -> Result<Filter> {
        if let Some(&(first, last)) = self.ports.iter().find(|(first, last)| first > last) {
            return Err(Error::InvalidSetting {
                setting: "port_range",
                reason: format!("{first}-{last} runs backwards: write {last}-{first}"),
            });
        }
        if let Some((pid, _)) = self.pid
            && !proc_root.join(pid.to_string()).exists()
        {
            return Err(Error::NoSuchProcess { pid });
        }
        if let Some(name) = self.user.take() {
            let users = owners::read_users(passwd);
            // Two entries with one name: the lowest uid, whatever the line order.
            let uid = users.iter().filter(|(_, n)| **n == name).map(|(uid, _)| *uid).min();
            let Some(uid) = uid else {
                return Err(Error::InvalidSetting {
                    setting: "user",
                    reason: format!(
                        "no user {name:?} in {} (give a uid to match one it does not list)",
                        passwd.display()
                    ),
                });
            };
            self.uid = Some(uid);
        }
        Ok(self)
    }

    /// Whether a socket whose owners are known passes the owner checks: held by the pid
    /// asked for (or, with `children`, a descendant) and by a process with the command name
    /// asked for. Reads parents from `proc_root`.
    pub(crate) fn owner_matches(&self, s: &Socket, proc_root: &Path) -> bool {
        if let Some(comm) = &self.comm
            && !s.processes().iter().any(|p| comm_matches(&p.comm, comm))
        {
            return false;
        }
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

    /// Whether this family is selected.
    pub(crate) fn selects_family(&self, family: Family) -> bool {
        self.families.contains(&family)
    }

    /// Whether this selection can report connections: they are TCP.
    pub(crate) fn has_tcp(&self) -> bool {
        self.protocols.contains(&Protocol::Tcp)
    }

    /// Whether a connection passes the checks that do not need its owners: its family, and
    /// [`Self::matches`] with the service port standing for the port — the local one for an
    /// inbound connection (the listener's), the remote one for an outbound (where it goes).
    pub(crate) fn matches_connection(&self, s: &Socket, outbound: bool) -> bool {
        if !self.families.contains(&s.family) {
            return false;
        }
        match (outbound, s.remote) {
            (true, Some(remote)) if !self.ports.is_empty() => {
                self.matches(&Socket { port: remote.port(), ..s.clone() })
            }
            _ => self.matches(s),
        }
    }

    /// Whether a dumped socket passes the checks that do not need its owners.
    pub(crate) fn matches(&self, s: &Socket) -> bool {
        if !self.ports.is_empty()
            && (s.protocol == Protocol::Unix
                || !self.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s.port)))
        {
            return false;
        }
        if !self.scopes.is_empty() && !s.scope().is_some_and(|sc| self.scopes.contains(&sc)) {
            return false;
        }
        if let Some(addr) = s.addr {
            if self.ignore_loopback && s.scope() == Some(AddressScope::Loopback) {
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

/// Whether a process named `comm` matches `wanted`: equal, or `wanted` cut where the kernel
/// cuts names (15 bytes).
fn comm_matches(comm: &str, wanted: &str) -> bool {
    const TASK_COMM_LEN: usize = 15;
    comm == wanted
        || (wanted.len() > TASK_COMM_LEN
            && wanted.as_bytes().get(..TASK_COMM_LEN) == Some(comm.as_bytes()))
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
        assert!(!f.matches(&tcp("::ffff:127.0.0.1", 53)), "v4-mapped loopback is loopback");
        assert!(f.matches(&tcp("10.0.0.1", 53)));
        let f = Filter::new().scope(AddressScope::Wildcard).scope(AddressScope::LinkLocal);
        assert!(f.matches(&tcp("0.0.0.0", 1)) && f.matches(&tcp("::", 1)));
        assert!(f.matches(&tcp("fe80::1", 1)));
        assert!(!f.matches(&tcp("127.0.0.1", 1)) && !f.matches(&tcp("10.0.0.1", 1)));
        let mut unix = tcp("0.0.0.0", 0);
        (unix.protocol, unix.family, unix.addr) = (Protocol::Unix, Family::Unix, None);
        assert!(!f.matches(&unix) && Filter::new().matches(&unix));
        let f = Filter::new().address("0.0.0.0".parse().unwrap());
        assert!(f.matches(&tcp("0.0.0.0", 1)) && !f.matches(&tcp("10.0.0.1", 1)));
        assert!(Filter::new().uid(1000).matches(&tcp("0.0.0.0", 1)));
        assert!(!Filter::new().uid(0).matches(&tcp("0.0.0.0", 1)));
    }

    #[test]
    fn backwards_range_is_refused_naming_it() {
        let none = Path::new("/nonexistent");
        let err = Filter::new().port(1).port_range(9000, 8000).resolved(none, none).unwrap_err();
        match err {
            Error::InvalidSetting { setting: "port_range", reason } => {
                assert!(reason.contains("9000-8000") && reason.contains("8000-9000"), "{reason}")
            }
            e => panic!("expected InvalidSetting for port_range, got {e:?}"),
        }
        assert!(Filter::new().port_range(80, 80).resolved(none, none).is_ok());
    }

    #[test]
    fn users_resolve_through_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/sh\n")
            .unwrap();
        let f = Filter::new().user("dev").resolved(dir.path(), &passwd).unwrap();
        assert!(f.matches(&tcp("0.0.0.0", 1)));
        let f = Filter::new().user("root").resolved(dir.path(), &passwd).unwrap();
        assert!(!f.matches(&tcp("0.0.0.0", 1)));
        // A number is a uid, listed or not.
        let f = Filter::new().user("1000").resolved(dir.path(), &passwd).unwrap();
        assert!(f.matches(&tcp("0.0.0.0", 1)));
        match Filter::new().user("nobody-here").resolved(dir.path(), &passwd) {
            Err(Error::InvalidSetting { setting: "user", reason }) => {
                assert!(reason.contains("nobody-here"), "{reason}")
            }
            other => panic!("expected InvalidSetting for user, got {other:?}"),
        }
    }

    #[test]
    fn missing_pid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Filter::new().pid(4242, false).resolved(dir.path(), dir.path()).unwrap_err();
        assert!(matches!(err, Error::NoSuchProcess { pid: 4242 }), "{err:?}");
        std::fs::create_dir(dir.path().join("4242")).unwrap();
        assert!(Filter::new().pid(4242, false).resolved(dir.path(), dir.path()).is_ok());
    }

    #[test]
    fn comm_matches_owners_and_the_kernels_cut() {
        let mut s = tcp("0.0.0.0", 1);
        s.owners = crate::process::Owners::Known(vec![crate::socket::fixtures::process(10).into()]);
        let proc_root = Path::new("/nonexistent");
        assert!(Filter::new().comm("srv").owner_matches(&s, proc_root));
        assert!(!Filter::new().comm("sr").owner_matches(&s, proc_root));
        assert!(comm_matches("python3.11-serv", "python3.11-server"));
        assert!(!comm_matches("python3", "python3.11-server"));
        let unknown = tcp("0.0.0.0", 1);
        assert!(!Filter::new().comm("srv").owner_matches(&unknown, proc_root));
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
