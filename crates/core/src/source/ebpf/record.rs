//! The ring-buffer record the eBPF programs send, decoded from bytes.
//!
//! Owns the layout of `struct pw_event` (crates/core/bpf/portwatch.bpf.h) on the Rust side and
//! nothing else: no I/O, no aya. Decoding is a pure function over `&[u8]` that never panics, so
//! it is tested on byte fixtures and can be fuzzed.
//!
//! Layout, 80 bytes, native byte order except `addr`:
//!
//! | off | size | field                                                     |
//! |----:|-----:|-----------------------------------------------------------|
//! |   0 |    8 | `ts_ns`: `bpf_ktime_get_ns()`, CLOCK_MONOTONIC            |
//! |   8 |    8 | socket cookie                                             |
//! |  16 |    4 | pid (thread group id)                                     |
//! |  20 |    4 | tid                                                       |
//! |  24 |    4 | uid (initial user namespace)                              |
//! |  28 |    4 | netns inode                                               |
//! |  32 |    1 | kind (1 listen, 2 unlisten, 3 udp bind, 4 udp connect, 5 udp release, 6 exit) |
//! |  33 |    1 | family (2 `AF_INET`, 10 `AF_INET6`)                       |
//! |  34 |    1 | protocol (6 TCP, 17 UDP)                                  |
//! |  35 |    1 | zero                                                      |
//! |  36 |    2 | local port, host byte order                               |
//! |  38 |    2 | zero                                                      |
//! |  40 |   16 | local address, network byte order (IPv4: first 4 bytes)   |
//! |  56 |   16 | comm of the calling thread, NUL-padded                    |
//! |  72 |    8 | socket inode (what `/proc/PID/fd/N` links to); 0: none    |
//!
//! The caller (pid, tid, uid, comm), the address and the inode are filled in on opens only
//! (listen, UDP bind): the caller of a close is not necessarily an owner, and the watcher
//! knows the owners already. On closes they are 0 (comm empty, address unspecified): a close
//! carries its cookie, which joins it to its open, and family, protocol, port and netns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use crate::bytes::{array_at, u16_at, u32_at, u64_at};
use crate::socket::{Family, Protocol};

/// Size of one record. Longer input is accepted (a newer object may append fields).
pub(crate) const RECORD_SIZE: usize = 80;

/// What happened to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A TCP socket entered LISTEN (`listen(2)`). The port is 0 when the socket was not bound
    /// before `listen`: the kernel picks the port right after this event. Look the socket up
    /// by cookie (sock_diag) for it; its `Unlisten` carries it.
    Listen,
    /// A TCP socket left LISTEN: closed, shut down, or its `listen` failed.
    Unlisten,
    /// A UDP socket was bound explicitly (`bind(2)`; port 0 binds report the chosen port).
    /// Implicit binds (first `sendto`/`connect` of an unbound socket) are not reported.
    UdpBind,
    /// A UDP socket that has a local port is connecting: from now on it only receives from its
    /// peer, so it stops being a listener. Sent before the kernel connects; the call may still
    /// fail. Sockets without a port yet (connect before any bind) are not reported.
    UdpConnect,
    /// A UDP socket that had a local port was released (its last descriptor closed).
    UdpRelease,
}

impl Kind {
    fn from_raw(raw: u8) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Listen,
            2 => Kind::Unlisten,
            3 => Kind::UdpBind,
            4 => Kind::UdpConnect,
            5 => Kind::UdpRelease,
            _ => return None,
        })
    }
}

/// One socket event from the kernel, with the process that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelEvent {
    /// What happened.
    pub(crate) kind: Kind,
    /// Kernel time of the event: CLOCK_MONOTONIC nanoseconds (see [`KernelEvent::wall_time`]).
    pub(crate) ts_ns: u64,
    /// Socket cookie, as sock_diag dumps and destroy messages carry it.
    pub(crate) cookie: u64,
    /// Process (thread group) id of the caller. Opens only: 0 on a close.
    pub(crate) pid: u32,
    /// Thread id of the caller.
    pub(crate) tid: u32,
    /// Caller's uid, in the initial user namespace.
    pub(crate) uid: u32,
    /// Calling thread's `comm` (at most 16 bytes, no NUL): a thread's name, which may differ
    /// from its process's. Attacker-controlled: escape before display.
    pub(crate) comm: Vec<u8>,
    /// The socket's inode (0 if it has no file): how `/proc/*/fd` finds its holders.
    pub(crate) ino: u64,
    /// Inode of the socket's network namespace, as `Socket::netns` and `Netns::inode` give it.
    pub(crate) netns: u64,
    /// TCP or UDP.
    pub(crate) protocol: Protocol,
    /// IPv4 or IPv6.
    pub(crate) family: Family,
    /// Local address (unspecified for a wildcard bind or a socket not bound yet).
    pub(crate) addr: IpAddr,
    /// Local port (0: not bound yet).
    pub(crate) port: u16,
}

impl KernelEvent {
    /// The wall-clock time of the event, given one reading of each clock taken together
    /// (`now_monotonic_ns` from CLOCK_MONOTONIC, `now_wall` from CLOCK_REALTIME): the event
    /// happened `now_monotonic_ns - ts_ns` before `now_wall`. Reading both clocks once per
    /// drain is enough; the error is the time between the two reads plus any wall-clock step
    /// since the event. `None` if the event claims to come from the future or the result does
    /// not fit.
    pub(crate) fn wall_time(
        &self,
        now_monotonic_ns: u64,
        now_wall: SystemTime,
    ) -> Option<SystemTime> {
        let age = now_monotonic_ns.checked_sub(self.ts_ns)?;
        now_wall.checked_sub(Duration::from_nanos(age))
    }
}

/// The process of an exit record (kind 6: the last thread of a process in the owners map
/// exited), or `None` for any other record. Exit records carry only the time and the pid.
pub(crate) fn exit_of(b: &[u8]) -> Option<u32> {
    if b.len() < RECORD_SIZE || b[32] != 6 {
        return None;
    }
    u32_at(b, 16)
}

/// Decodes one socket record. `None` for a short record or an unknown kind, family or protocol: a
/// record this version cannot understand is skipped, never a panic.
pub(crate) fn decode(b: &[u8]) -> Option<KernelEvent> {
    if b.len() < RECORD_SIZE {
        return None;
    }
    let kind = Kind::from_raw(b[32])?;
    let family = match b[33] {
        2 => Family::Ipv4,
        10 => Family::Ipv6,
        _ => return None,
    };
    let protocol = match b[34] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let raw_addr: [u8; 16] = array_at(b, 40)?;
    let addr = match family {
        Family::Ipv4 => {
            IpAddr::V4(Ipv4Addr::new(raw_addr[0], raw_addr[1], raw_addr[2], raw_addr[3]))
        }
        _ => IpAddr::V6(Ipv6Addr::from(raw_addr)),
    };
    let comm = b.get(56..72)?;
    let comm_len = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    Some(KernelEvent {
        kind,
        ts_ns: u64_at(b, 0)?,
        cookie: u64_at(b, 8)?,
        pid: u32_at(b, 16)?,
        tid: u32_at(b, 20)?,
        uid: u32_at(b, 24)?,
        netns: u64::from(u32_at(b, 28)?),
        family,
        protocol,
        port: u16_at(b, 36)?,
        addr,
        comm: comm[..comm_len].to_vec(),
        ino: u64_at(b, 72)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP listen on 127.0.0.1:8080 by pid 4242 ("python3"), as the object on x86_64 sends it.
    #[rustfmt::skip]
    fn listen_v4() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&123_456_789u64.to_ne_bytes()); // ts_ns
        b.extend_from_slice(&0x1122_3344_5566_7788u64.to_ne_bytes()); // cookie
        b.extend_from_slice(&4242u32.to_ne_bytes()); // pid
        b.extend_from_slice(&4243u32.to_ne_bytes()); // tid
        b.extend_from_slice(&1000u32.to_ne_bytes()); // uid
        b.extend_from_slice(&4_026_531_840u32.to_ne_bytes()); // netns inode
        b.extend_from_slice(&[1, 2, 6, 0]); // kind listen, AF_INET, TCP, pad
        b.extend_from_slice(&8080u16.to_ne_bytes()); // port, host order
        b.extend_from_slice(&[0, 0]); // pad
        b.extend_from_slice(&[127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // addr
        b.extend_from_slice(b"python3\0\0\0\0\0\0\0\0\0"); // comm
        b.extend_from_slice(&987_654u64.to_ne_bytes()); // socket inode
        b
    }

    #[test]
    fn decodes_a_tcp_listen() {
        let e = decode(&listen_v4()).expect("decodes");
        assert_eq!(e.kind, Kind::Listen);
        assert_eq!(e.ts_ns, 123_456_789);
        assert_eq!(e.cookie, 0x1122_3344_5566_7788);
        assert_eq!((e.pid, e.tid, e.uid), (4242, 4243, 1000));
        assert_eq!(e.netns, 4_026_531_840);
        assert_eq!((e.family, e.protocol), (Family::Ipv4, Protocol::Tcp));
        assert_eq!(e.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(e.port, 8080);
        assert_eq!(e.comm, b"python3");
        assert_eq!(e.ino, 987_654);
    }

    #[test]
    fn an_exit_record_is_a_pid_and_no_socket() {
        let mut b = vec![0u8; RECORD_SIZE];
        b[16..20].copy_from_slice(&4242u32.to_ne_bytes());
        b[32] = 6;
        assert_eq!(exit_of(&b), Some(4242));
        assert_eq!(decode(&b), None, "not a socket event");
        assert_eq!(exit_of(&b[..RECORD_SIZE - 1]), None, "truncated");
        assert_eq!(exit_of(&listen_v4()), None, "a listen is no exit");
    }

    #[test]
    fn decodes_a_udp6_bind_with_a_full_comm() {
        let mut b = listen_v4();
        b[32..35].copy_from_slice(&[3, 10, 17]);
        b[40..56].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b[56..72].copy_from_slice(b"0123456789abcdef"); // no NUL: all 16 bytes are the name
        let e = decode(&b).expect("decodes");
        assert_eq!((e.kind, e.family, e.protocol), (Kind::UdpBind, Family::Ipv6, Protocol::Udp));
        assert_eq!(e.addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(e.comm, b"0123456789abcdef");
    }

    #[test]
    fn every_kind_decodes() {
        for (raw, kind) in [
            (1, Kind::Listen),
            (2, Kind::Unlisten),
            (3, Kind::UdpBind),
            (4, Kind::UdpConnect),
            (5, Kind::UdpRelease),
        ] {
            let mut b = listen_v4();
            b[32] = raw;
            assert_eq!(decode(&b).map(|e| e.kind), Some(kind));
        }
    }

    #[test]
    fn truncated_records_are_rejected_at_every_length() {
        let b = listen_v4();
        for len in 0..RECORD_SIZE {
            assert_eq!(decode(&b[..len]), None, "length {len}");
        }
    }

    #[test]
    fn longer_records_decode_their_prefix() {
        let mut b = listen_v4();
        b.extend_from_slice(&[0xff; 24]);
        assert_eq!(decode(&b), decode(&listen_v4()));
    }

    #[test]
    fn unknown_kind_family_or_protocol_is_skipped() {
        for (off, value) in [(32, 0u8), (32, 6), (33, 1), (33, 0xff), (34, 0), (34, 132)] {
            let mut b = listen_v4();
            b[off] = value;
            assert_eq!(decode(&b), None, "byte {off} = {value}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for fuzzing: every single-byte value at every offset.
        let base = listen_v4();
        for off in 0..RECORD_SIZE {
            for v in 0..=255u8 {
                let mut b = base.clone();
                b[off] = v;
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn wall_time_subtracts_the_event_age() {
        let e = decode(&listen_v4()).expect("decodes");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Monotonic now is 1 s after the event.
        let t = e.wall_time(e.ts_ns + 1_000_000_000, now).expect("in range");
        assert_eq!(t, now - Duration::from_secs(1));
        assert_eq!(e.wall_time(e.ts_ns - 1, now), None, "an event from the future");
    }
}
