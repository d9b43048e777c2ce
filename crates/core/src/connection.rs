//! Connection events' plain data: which way a connection goes, which directions a watcher
//! reports, and the remote-address prefixes that select them. No I/O.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Which way a TCP connection goes, seen from the watched host or container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Outbound: a process here called `connect(2)`.
    Out,
    /// Inbound: a peer connected to a listener here.
    In,
}

impl Direction {
    /// `"out"` or `"in"`: the JSON `direction` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which connections a [`Watcher`](crate::Watcher) reports (see
/// [`WatcherBuilder::connections`](crate::WatcherBuilder::connections)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Connections {
    /// None: only listeners (the default).
    #[default]
    None,
    /// Inbound: [`Event::Accept`](crate::Event::Accept) and their disconnects.
    In,
    /// Outbound: [`Event::Connect`](crate::Event::Connect) and their disconnects.
    Out,
    /// Both.
    All,
}

impl Connections {
    /// Whether connections going `dir` are reported.
    pub fn includes(self, dir: Direction) -> bool {
        matches!(
            (self, dir),
            (Connections::All, _)
                | (Connections::In, Direction::In)
                | (Connections::Out, Direction::Out)
        )
    }

    /// Whether any connection is reported.
    pub fn any(self) -> bool {
        self != Connections::None
    }
}

impl FromStr for Connections {
    type Err = crate::socket::UnknownName;

    /// `in`, `out`, `all` or `none`, case-insensitive (the CLI's `--connections`).
    fn from_str(name: &str) -> Result<Connections, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "in" => Ok(Connections::In),
            "out" => Ok(Connections::Out),
            "all" => Ok(Connections::All),
            "none" => Ok(Connections::None),
            _ => Err(crate::socket::UnknownName { what: "connections", name: name.to_owned() }),
        }
    }
}

/// An address prefix, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a prefix of its
/// full length. Bits past the prefix are cleared, so `10.1.2.3/8` is `10.0.0.0/8`. An IPv4
/// prefix also matches IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`), as a dual-stack
/// socket reports IPv4 peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The prefix of `len` bits of `addr`; `None` if `len` is longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let (bits, addr) = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
                (32, IpAddr::V4((u32::from(a) & mask).into()))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
                (128, IpAddr::V6((u128::from(a) & mask).into()))
            }
        };
        (len <= bits).then_some(Cidr { addr, len })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in the prefix (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        Cidr::new(ip, self.len).is_some_and(|c| c.addr == self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCidr {
    /// The text given.
    pub text: String,
}

impl fmt::Display for BadCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an address prefix: write ADDRESS or ADDRESS/BITS \
             (10.0.0.0/8, 192.168.1.7, 2001:db8::/32)",
            self.text
        )
    }
}

impl std::error::Error for BadCidr {}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr { text: text.to_owned() };
        let (addr, len) = match text.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => full,
        };
        Cidr::new(addr, len).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_clear_host_bits_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()), "IPv4-mapped");
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains("192.168.1.7".parse().unwrap()));
        assert!(!host.contains("192.168.1.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        assert!("::/0".parse::<Cidr>().unwrap().contains("::1".parse().unwrap()));
    }

    #[test]
    fn bad_prefixes_are_refused_naming_the_text() {
        for text in ["", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0/8", "x/8", "1.2.3.4/-1"] {
            let err = text.parse::<Cidr>().expect_err(text);
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn connections_choices() {
        assert!(Connections::All.includes(Direction::In));
        assert!(Connections::Out.includes(Direction::Out));
        assert!(!Connections::Out.includes(Direction::In));
        assert!(!Connections::None.any());
        assert_eq!("IN".parse::<Connections>(), Ok(Connections::In));
        assert!("sideways".parse::<Connections>().is_err());
    }
}
