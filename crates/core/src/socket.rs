//! The socket records every backend produces and every consumer reads: what a socket is and
//! where (protocol, family, state, addresses, namespace). Who holds it is in `process`.
//!
//! Plain data: no I/O here. Backends fill these in (`diag`, `procnet`), `owners` attaches processes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::process::{ContainerRef, Forward, Owners, Process};

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Unix domain socket (stream or seqpacket when listening).
    Unix,
}

impl Protocol {
    /// The lowercase name `ss` and the JSON output use: `"tcp"`, `"udp"`, `"unix"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Unix => "unix",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Family {
    /// AF_INET.
    Ipv4,
    /// AF_INET6 (dual-stack sockets included: see [`Socket::v6only`]).
    Ipv6,
    /// AF_UNIX.
    Unix,
}

impl Family {
    /// The name the JSON output uses: `"ipv4"`, `"ipv6"`, `"unix"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Unix => "unix",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kernel's socket state (`TCP_*` numbering, shared by UDP and unix sockets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum State {
    /// Connected (`TCP_ESTABLISHED`, 1); for UDP and unix, a connected socket.
    Established,
    /// `TCP_SYN_SENT` (2).
    SynSent,
    /// `TCP_SYN_RECV` (3).
    SynRecv,
    /// `TCP_FIN_WAIT1` (4).
    FinWait1,
    /// `TCP_FIN_WAIT2` (5).
    FinWait2,
    /// `TCP_TIME_WAIT` (6).
    TimeWait,
    /// `TCP_CLOSE` (7): for UDP and unix datagram sockets, bound but not connected —
    /// the state of a UDP "listener", shown as `UNCONN` like `ss` does.
    Unconnected,
    /// `TCP_CLOSE_WAIT` (8).
    CloseWait,
    /// `TCP_LAST_ACK` (9).
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11).
    Closing,
    /// `TCP_NEW_SYN_RECV` (12).
    NewSynRecv,
    /// A state number this library does not know.
    Other(u8),
}

impl State {
    /// Every named state, in kernel order.
    pub const ALL: [State; 12] = [
        State::Established,
        State::SynSent,
        State::SynRecv,
        State::FinWait1,
        State::FinWait2,
        State::TimeWait,
        State::Unconnected,
        State::CloseWait,
        State::LastAck,
        State::Listen,
        State::Closing,
        State::NewSynRecv,
    ];

    /// The state for a kernel state number.
    pub fn from_kernel(n: u8) -> State {
        match n {
            1..=12 => State::ALL[usize::from(n) - 1],
            n => State::Other(n),
        }
    }

    /// The kernel's number for this state.
    pub fn to_kernel(self) -> u8 {
        match self {
            State::Other(n) => n,
            named => {
                // ALL is in kernel order, starting at 1.
                State::ALL.iter().position(|s| *s == named).map_or(0, |i| i as u8 + 1)
            }
        }
    }

    /// The name `ss` prints: `LISTEN`, `UNCONN`, `ESTAB`, `TIME-WAIT`, …
    pub fn as_str(self) -> &'static str {
        match self {
            State::Established => "ESTAB",
            State::SynSent => "SYN-SENT",
            State::SynRecv => "SYN-RECV",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::TimeWait => "TIME-WAIT",
            State::Unconnected => "UNCONN",
            State::CloseWait => "CLOSE-WAIT",
            State::LastAck => "LAST-ACK",
            State::Listen => "LISTEN",
            State::Closing => "CLOSING",
            State::NewSynRecv => "NEW-SYN-RECV",
            State::Other(_) => "UNKNOWN",
        }
    }
}

/// A name that is not one of a type's names: returned by the `FromStr` impls of [`State`],
/// [`Protocol`], [`Family`] and [`AddressScope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// What was parsed: `"state"`, `"protocol"`, `"family"`, `"scope"`.
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.what, self.name)
    }
}

impl std::error::Error for UnknownName {}

impl FromStr for State {
    type Err = UnknownName;

    /// An `ss`-style name, case-insensitive, `_` or `-`: `listen`, `time-wait`, `unconn`;
    /// also `established` and `unconnected`.
    fn from_str(name: &str) -> Result<State, UnknownName> {
        let upper = name.to_ascii_uppercase().replace('_', "-");
        match upper.as_str() {
            "ESTABLISHED" => Ok(State::Established),
            "UNCONNECTED" | "CLOSE" => Ok(State::Unconnected),
            _ => State::ALL
                .into_iter()
                .find(|s| s.as_str() == upper)
                .ok_or_else(|| UnknownName { what: "state", name: name.to_owned() }),
        }
    }
}

impl FromStr for Protocol {
    type Err = UnknownName;

    /// `tcp`, `udp` or `unix`, case-insensitive.
    fn from_str(name: &str) -> Result<Protocol, UnknownName> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Unix]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownName { what: "protocol", name: name.to_owned() })
    }
}

impl FromStr for Family {
    type Err = UnknownName;

    /// `ipv4`, `ipv6` or `unix`, case-insensitive (`inet`/`inet6` too, as `ss -f` says).
    fn from_str(name: &str) -> Result<Family, UnknownName> {
        match name.to_ascii_lowercase().as_str() {
            "ipv4" | "inet" | "4" => Ok(Family::Ipv4),
            "ipv6" | "inet6" | "6" => Ok(Family::Ipv6),
            "unix" => Ok(Family::Unix),
            _ => Err(UnknownName { what: "family", name: name.to_owned() }),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Other(n) => write!(f, "UNKNOWN({n})"),
            s => f.write_str(s.as_str()),
        }
    }
}

/// A set of [`State`]s, as the kernel's `idiag_states` bitmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateSet(u32);

impl StateSet {
    /// What `ss -l` shows: TCP and unix `LISTEN`, UDP `UNCONN`.
    pub const LISTENING: StateSet = StateSet((1 << 10) | (1 << 7));
    /// Every state.
    pub const ALL: StateSet = StateSet(u32::MAX);
    /// No state.
    pub const EMPTY: StateSet = StateSet(0);

    /// A set holding the given states.
    pub fn of(states: &[State]) -> StateSet {
        states.iter().fold(StateSet::EMPTY, |set, s| set.with(*s))
    }

    /// This set with `state` added.
    #[must_use]
    pub fn with(self, state: State) -> StateSet {
        StateSet(self.0 | Self::bit(state))
    }

    /// This set with `state` removed.
    #[must_use]
    pub fn without(self, state: State) -> StateSet {
        StateSet(self.0 & !Self::bit(state))
    }

    /// Whether `state` is in the set.
    pub fn contains(self, state: State) -> bool {
        self.0 & Self::bit(state) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kernel bitmask (`1 << TCP_STATE` per state).
    pub fn bits(self) -> u32 {
        self.0
    }

    fn bit(state: State) -> u32 {
        1u32.checked_shl(u32::from(state.to_kernel())).unwrap_or(0)
    }
}

impl Default for StateSet {
    fn default() -> Self {
        StateSet::LISTENING
    }
}

/// One socket as the kernel reported it, with the processes that hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Socket {
    /// TCP, UDP or unix.
    pub protocol: Protocol,
    /// IPv4, IPv6 or unix.
    pub family: Family,
    /// Local address; `0.0.0.0` or `::` for a wildcard bind. `None` for unix sockets.
    pub addr: Option<IpAddr>,
    /// Local port; 0 for unix sockets.
    pub port: u16,
    /// Unix socket path; abstract names start with `@` like `ss` shows them. `None` for inet
    /// sockets and unbound unix sockets.
    pub path: Option<String>,
    /// Remote address and port of a connected inet socket.
    pub remote: Option<SocketAddr>,
    /// Kernel state.
    pub state: State,
    /// Socket inode number (the `N` in `/proc/PID/fd/* -> socket:[N]`).
    pub inode: u64,
    /// Owner uid the kernel recorded for the socket (`None` where the kernel does not say).
    pub uid: Option<u32>,
    /// Socket cookie: unique for the socket's lifetime within a boot; matches destroy events.
    /// `None` from the /proc backend, which does not expose it.
    pub cookie: Option<u64>,
    /// Inode of the network namespace the socket was read from (`/proc/PID/ns/net`).
    pub netns: u64,
    /// The namespace's name when it is bound under `/run/netns` (`ip netns add NAME`).
    pub netns_name: Option<Arc<str>>,
    /// For IPv6 sockets, whether `IPV6_V6ONLY` is set (`None` where unknown or not IPv6).
    pub v6only: Option<bool>,
    /// Index of the network interface the socket is bound to (`SO_BINDTODEVICE`), if any.
    pub interface: Option<u32>,
    /// Unix socket type (stream, seqpacket, datagram); `None` for inet sockets.
    pub unix_type: Option<UnixType>,
    /// The container whose namespace the socket was read from, when known; for a socket in a
    /// namespace that is no container's, the container every owner's cgroup names.
    pub container: Option<Arc<ContainerRef>>,
    /// Where a published port's forwarder (docker-proxy) sends what this socket accepts: the
    /// container and its inner port.
    pub forwards_to: Option<Arc<Forward>>,
    /// The processes holding the socket, or why they are unknown.
    pub owners: Owners,
}

impl Socket {
    /// The local endpoint as `ss` prints it: `0.0.0.0:22`, `[::1]:53`, `*:80` (an IPv6 wildcard
    /// that also accepts IPv4), `[::]:80` (IPv6 only), `/run/x.sock`, `@name`.
    pub fn local_display(&self) -> String {
        let mut text = String::new();
        let _ = self.write_local(&mut text, |path| path.into());
        text
    }

    /// [`local_display`](Self::local_display), written to `out`, with a unix path (a name
    /// another user chose) passed through `path` first: how a renderer escapes it without a
    /// copy of every address.
    pub fn write_local<W: fmt::Write>(
        &self,
        out: &mut W,
        path: impl FnOnce(&str) -> std::borrow::Cow<'_, str>,
    ) -> fmt::Result {
        match (self.addr, &self.path) {
            (Some(IpAddr::V6(a)), _) if a.is_unspecified() && self.v6only == Some(false) => {
                write!(out, "*:{}", self.port)
            }
            (Some(IpAddr::V6(a)), _) => write!(out, "[{a}]:{}", self.port),
            (Some(a), _) => write!(out, "{a}:{}", self.port),
            (None, Some(p)) => out.write_str(&path(p)),
            (None, None) => out.write_str("*"),
        }
    }

    /// The processes holding the socket (empty when unknown).
    pub fn processes(&self) -> &[Arc<Process>] {
        match &self.owners {
            Owners::Known(p) => p,
            Owners::Unknown(_) => &[],
        }
    }

    /// The pids of the processes holding the socket, ascending.
    pub fn pids(&self) -> Vec<u32> {
        self.processes().iter().map(|p| p.pid).collect()
    }

    /// Which local addresses it accepts on; `None` for unix sockets.
    pub fn scope(&self) -> Option<AddressScope> {
        self.addr.map(AddressScope::of)
    }
}

/// Which local addresses an inet socket accepts on: what a port forwarder needs to know first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AddressScope {
    /// Bound to a loopback address (`127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`): reachable
    /// only from inside its network namespace.
    Loopback,
    /// Bound to a link-local address (`169.254.0.0/16`, `fe80::/10`): reachable only from
    /// the link the address is on (an IPv6 one is bound to one interface).
    LinkLocal,
    /// Bound to one specific address: reachable through the interface that holds it.
    Address,
    /// Bound to the wildcard (`0.0.0.0`, `::`): reachable on every address of the
    /// namespace, loopback included (an IPv6 wildcard that is not [`Socket::v6only`] takes
    /// IPv4 too).
    Wildcard,
}

impl AddressScope {
    /// Every scope, narrowest first.
    pub const ALL: [AddressScope; 4] = [
        AddressScope::Loopback,
        AddressScope::LinkLocal,
        AddressScope::Address,
        AddressScope::Wildcard,
    ];

    /// The scope of a socket bound to `addr`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// has the scope of its IPv4 address.
    pub fn of(addr: IpAddr) -> AddressScope {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        let link_local = match addr {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => a.is_unicast_link_local(),
        };
        if addr.is_unspecified() {
            AddressScope::Wildcard
        } else if addr.is_loopback() {
            AddressScope::Loopback
        } else if link_local {
            AddressScope::LinkLocal
        } else {
            AddressScope::Address
        }
    }

    /// The name the JSON output and `--scope` use: `loopback`, `link_local`, `address`,
    /// `wildcard`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressScope::Loopback => "loopback",
            AddressScope::LinkLocal => "link_local",
            AddressScope::Address => "address",
            AddressScope::Wildcard => "wildcard",
        }
    }
}

impl fmt::Display for AddressScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AddressScope {
    type Err = UnknownName;

    /// `loopback`, `link_local` (or `link-local`), `address`, `wildcard`, case-insensitive.
    fn from_str(name: &str) -> Result<AddressScope, UnknownName> {
        let wanted = name.to_ascii_lowercase().replace('-', "_");
        AddressScope::ALL
            .into_iter()
            .find(|s| s.as_str() == wanted)
            .ok_or_else(|| UnknownName { what: "scope", name: name.to_owned() })
    }
}

/// Unix domain socket type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnixType {
    /// SOCK_STREAM (`u_str` in `ss`).
    Stream,
    /// SOCK_DGRAM (`u_dgr`).
    Datagram,
    /// SOCK_SEQPACKET (`u_seq`).
    Seqpacket,
    /// Another kernel socket type number.
    Other(u8),
}

impl UnixType {
    pub(crate) fn from_kernel(n: u8) -> UnixType {
        match n {
            1 => UnixType::Stream,
            2 => UnixType::Datagram,
            5 => UnixType::Seqpacket,
            n => UnixType::Other(n),
        }
    }

    /// The name used in output: `"stream"`, `"dgram"`, `"seqpacket"`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnixType::Stream => "stream",
            UnixType::Datagram => "dgram",
            UnixType::Seqpacket => "seqpacket",
            UnixType::Other(_) => "other",
        }
    }
}

/// Test fixtures shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::process::UnknownReason;

    /// A TCP/IPv4 listener on 0.0.0.0:`port` in netns 1, cookie `cookie`, inode
    /// `cookie + 1000`, held by `pids` (owner unknown when empty).
    pub(crate) fn listener(port: u16, cookie: u64, pids: &[u32]) -> Socket {
        Socket {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            addr: Some(IpAddr::from([0, 0, 0, 0])),
            port,
            path: None,
            remote: None,
            state: State::Listen,
            inode: cookie + 1000,
            uid: Some(0),
            cookie: Some(cookie),
            netns: 1,
            v6only: None,
            interface: None,
            unix_type: None,
            container: None,
            forwards_to: None,
            netns_name: None,
            owners: if pids.is_empty() {
                Owners::Unknown(UnknownReason::NotFound)
            } else {
                Owners::Known(pids.iter().map(|&pid| process(pid).into()).collect())
            },
        }
    }

    /// A process `pid` named `srv`, child of 1, uid 0.
    pub(crate) fn process(pid: u32) -> Process {
        Process {
            pid,
            ppid: Some(1),
            comm: "srv".into(),
            cmdline: vec![],
            uid: 0,
            user: None,
            ns_pid: None,
            cgroup: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(State::from_kernel(n).to_kernel(), n);
        }
        assert_eq!(State::from_kernel(10), State::Listen);
        assert_eq!(State::from_kernel(7), State::Unconnected);
    }

    #[test]
    fn names_parse() {
        assert_eq!("listen".parse(), Ok(State::Listen));
        assert_eq!("established".parse(), Ok(State::Established));
        assert_eq!("time_wait".parse(), Ok(State::TimeWait));
        let bad = "bogus".parse::<State>().unwrap_err();
        assert_eq!(bad.to_string(), "unknown state \"bogus\"");
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Unix] {
            assert_eq!(p.as_str().to_uppercase().parse(), Ok(p));
        }
        assert!("sctp".parse::<Protocol>().is_err());
        for f in [Family::Ipv4, Family::Ipv6, Family::Unix] {
            assert_eq!(f.as_str().parse(), Ok(f));
        }
        assert!("ipx".parse::<Family>().is_err());
    }

    #[test]
    fn address_scopes() {
        for (addr, scope) in [
            ("127.0.0.1", AddressScope::Loopback),
            ("127.1.2.3", AddressScope::Loopback),
            ("::1", AddressScope::Loopback),
            ("::ffff:127.0.0.1", AddressScope::Loopback),
            ("0.0.0.0", AddressScope::Wildcard),
            ("::", AddressScope::Wildcard),
            ("::ffff:0.0.0.0", AddressScope::Wildcard),
            ("169.254.1.2", AddressScope::LinkLocal),
            ("fe80::1", AddressScope::LinkLocal),
            ("febf::1", AddressScope::LinkLocal),
            ("fec0::1", AddressScope::Address),
            ("10.0.0.1", AddressScope::Address),
            ("::ffff:10.0.0.1", AddressScope::Address),
            ("2001:db8::1", AddressScope::Address),
        ] {
            assert_eq!(AddressScope::of(addr.parse().unwrap()), scope, "{addr}");
        }
        for s in AddressScope::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
        assert_eq!("Link-Local".parse(), Ok(AddressScope::LinkLocal));
        assert_eq!(
            "host".parse::<AddressScope>().unwrap_err().to_string(),
            "unknown scope \"host\""
        );
    }

    #[test]
    fn state_set_bits_match_kernel() {
        assert_eq!(StateSet::LISTENING.bits(), (1 << 10) | (1 << 7));
        let s = StateSet::of(&[State::Established]);
        assert!(s.contains(State::Established) && !s.contains(State::Listen));
        assert!(s.without(State::Established).is_empty());
        // Out-of-range states never overflow the shift.
        assert!(!StateSet::EMPTY.with(State::Other(200)).contains(State::Listen));
    }
}
