//! The connection record the connection programs send (`struct pw_conn_event`,
//! crates/core/bpf/portwatch.bpf.h), decoded from bytes: pure, never panics, tested on
//! fixtures. No I/O, no aya.
//!
//! Layout, 96 bytes, native byte order except the addresses:
//!
//! | off | size | field                                                               |
//! |----:|-----:|---------------------------------------------------------------------|
//! |   0 |    8 | `ts_ns`: CLOCK_MONOTONIC of the connect, the accept or the close    |
//! |   8 |    8 | socket cookie                                                       |
//! |  16 |    4 | pid: the connect's caller; an accept's listen(2) caller (0 unknown) |
//! |  20 |    4 | tid (connect only)                                                  |
//! |  24 |    4 | uid (connect; accept: the listen caller's)                          |
//! |  28 |    4 | netns inode                                                         |
//! |  32 |    1 | kind (1 connect, 2 accept, 3 disconnect)                            |
//! |  33 |    1 | family (2 `AF_INET`, 10 `AF_INET6`)                                 |
//! |  34 |    1 | direction (1 out, 2 in)                                             |
//! |  35 |    1 | disconnect: 1 if the connection was ever established                |
//! |  36 |    2 | local port, host byte order                                         |
//! |  38 |    2 | remote port, host byte order                                        |
//! |  40 |   16 | local address, network byte order (IPv4: first 4 bytes)             |
//! |  56 |   16 | remote address, likewise                                            |
//! |  72 |   16 | comm of the connecting (accept: listening) thread, NUL-padded       |
//! |  88 |    8 | disconnect: nanoseconds since the connect or accept                 |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::bytes::{array_at, u16_at, u32_at, u64_at};
use crate::socket::Family;

/// Size of one record. Longer input is accepted (a newer object may append fields).
pub(crate) const CONN_RECORD_SIZE: usize = 96;

/// What happened to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// An outbound connect sent its SYN; the record names the caller.
    Connect,
    /// An inbound connection reached ESTABLISHED (softirq context: the pid is the listen
    /// caller's, recorded at listen).
    Accept,
    /// A connection reported by a `Connect` or `Accept` reached CLOSE (no pid).
    Disconnect,
}

/// Which way a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dir {
    Out,
    In,
}

/// One connection record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnEvent {
    pub(crate) kind: ConnKind,
    pub(crate) dir: Dir,
    /// CLOSE_MONOTONIC nanoseconds: the connect (`SYN_SENT`), the accept or the close.
    pub(crate) ts_ns: u64,
    pub(crate) cookie: u64,
    /// The connecting process; for an accept, the process that called listen(2) on the
    /// listener (0 if the programs did not see it); 0 for a disconnect. Never the task a
    /// softirq interrupted.
    pub(crate) pid: u32,
    pub(crate) tid: u32,
    pub(crate) uid: u32,
    /// The connecting (accept: listening) thread's comm. Attacker-controlled.
    pub(crate) comm: Vec<u8>,
    pub(crate) netns: u64,
    pub(crate) family: Family,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// Disconnect: the connection reached ESTABLISHED (false: a connect that failed).
    pub(crate) established: bool,
    /// Disconnect: nanoseconds from the connect or accept to the close.
    pub(crate) duration_ns: u64,
}

fn addr_at(b: &[u8], off: usize, family: Family) -> Option<IpAddr> {
    let raw: [u8; 16] = array_at(b, off)?;
    Some(match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        _ => IpAddr::V6(Ipv6Addr::from(raw)),
    })
}

/// Decodes one record; `None` for a short record or an unknown kind, family or direction.
pub(crate) fn decode_conn(b: &[u8]) -> Option<ConnEvent> {
    if b.len() < CONN_RECORD_SIZE {
        return None;
    }
    let kind = match b[32] {
        1 => ConnKind::Connect,
        2 => ConnKind::Accept,
        3 => ConnKind::Disconnect,
        _ => return None,
    };
    let family = match b[33] {
        2 => Family::Ipv4,
        10 => Family::Ipv6,
        _ => return None,
    };
    let dir = match b[34] {
        1 => Dir::Out,
        2 => Dir::In,
        _ => return None,
    };
    let comm = b.get(72..88)?;
    let comm_len = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    Some(ConnEvent {
        kind,
        dir,
        ts_ns: u64_at(b, 0)?,
        cookie: u64_at(b, 8)?,
        pid: u32_at(b, 16)?,
        tid: u32_at(b, 20)?,
        uid: u32_at(b, 24)?,
        netns: u64::from(u32_at(b, 28)?),
        family,
        established: b[35] != 0,
        local: SocketAddr::new(addr_at(b, 40, family)?, u16_at(b, 36)?),
        remote: SocketAddr::new(addr_at(b, 56, family)?, u16_at(b, 38)?),
        comm: comm[..comm_len].to_vec(),
        duration_ns: u64_at(b, 88)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect from 10.0.0.2:40000 to 93.184.216.34:443 by pid 4242 ("curl").
    #[rustfmt::skip]
    fn connect_v4() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&123_456_789u64.to_ne_bytes()); // ts_ns
        b.extend_from_slice(&77u64.to_ne_bytes()); // cookie
        b.extend_from_slice(&4242u32.to_ne_bytes()); // pid
        b.extend_from_slice(&4243u32.to_ne_bytes()); // tid
        b.extend_from_slice(&1000u32.to_ne_bytes()); // uid
        b.extend_from_slice(&4_026_531_840u32.to_ne_bytes()); // netns inode
        b.extend_from_slice(&[1, 2, 1, 0]); // kind connect, AF_INET, out, not established
        b.extend_from_slice(&40000u16.to_ne_bytes()); // local port
        b.extend_from_slice(&443u16.to_ne_bytes()); // remote port
        b.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // laddr
        b.extend_from_slice(&[93, 184, 216, 34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // raddr
        b.extend_from_slice(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"); // comm
        b.extend_from_slice(&0u64.to_ne_bytes()); // duration
        b
    }

    #[test]
    fn decodes_a_connect() {
        let e = decode_conn(&connect_v4()).expect("decodes");
        assert_eq!((e.kind, e.dir, e.family), (ConnKind::Connect, Dir::Out, Family::Ipv4));
        assert_eq!((e.ts_ns, e.cookie, e.pid, e.tid, e.uid), (123_456_789, 77, 4242, 4243, 1000));
        assert_eq!(e.netns, 4_026_531_840);
        assert_eq!(e.local, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(e.remote, "93.184.216.34:443".parse().unwrap());
        assert_eq!(e.comm, b"curl");
    }

    #[test]
    fn decodes_an_ipv6_disconnect() {
        let mut b = connect_v4();
        b[32..36].copy_from_slice(&[3, 10, 2, 1]);
        b[40..56].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b[56..72].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b[88..96].copy_from_slice(&5_000_000u64.to_ne_bytes());
        let e = decode_conn(&b).expect("decodes");
        assert_eq!((e.kind, e.dir, e.established), (ConnKind::Disconnect, Dir::In, true));
        assert_eq!(e.local, "[::1]:40000".parse().unwrap());
        assert_eq!(e.remote, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(e.duration_ns, 5_000_000);
    }

    #[test]
    fn short_or_unknown_records_are_skipped_and_nothing_panics() {
        let b = connect_v4();
        for len in 0..CONN_RECORD_SIZE {
            assert_eq!(decode_conn(&b[..len]), None, "length {len}");
        }
        for (off, value) in [(32, 0u8), (32, 4), (33, 1), (34, 0), (34, 3)] {
            let mut bad = b.clone();
            bad[off] = value;
            assert_eq!(decode_conn(&bad), None, "byte {off} = {value}");
        }
        for off in 0..CONN_RECORD_SIZE {
            for v in 0..=255u8 {
                let mut any = b.clone();
                any[off] = v;
                let _ = decode_conn(&any);
            }
        }
    }
}
