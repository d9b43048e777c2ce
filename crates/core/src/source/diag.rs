//! NETLINK_SOCK_DIAG dumps: encoding requests, reading multi-datagram answers, decoding sockets.
//!
//! Owns the netlink socket and the dump protocol; knows nothing of processes or of filtering
//! beyond what the kernel does for us (the state bitmask). Decoding is a pure function over bytes
//! (`decode_datagram`) so it is tested on fixtures; `SockDiag` only does the syscalls.

use std::io;

use netlink_packet_core::{
    ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NlasIterator, Parseable,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, AF_UNIX, INET_DIAG_SKV6ONLY, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY,
    UDIAG_SHOW_NAME, UNIX_DIAG_NAME,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_packet_sock_diag::unix::{self, ShowFlags, UnixRequest, UnixResponseHeader};
use netlink_sys::{Socket as NlSocket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use super::Dump;

use crate::error::{Error, Result};
use crate::process::{Owners, UnknownReason};
use crate::socket::{Family, Protocol, Socket, State, UnixType};

/// `UNIX_DIAG_UID` (Linux 5.3+): the uid of the socket's creator. Missing from the crate.
const UNIX_DIAG_UID: u16 = 7;
/// `UDIAG_SHOW_UID`.
const UDIAG_SHOW_UID: u32 = 1 << 6;
/// Byte sizes of the fixed message headers (struct inet_diag_msg, struct unix_diag_msg).
pub(super) const INET_DIAG_MSG_LEN: usize = 72;
const UNIX_DIAG_MSG_LEN: usize = 16;
/// How many times a dump flagged NLM_F_DUMP_INTR (or truncated) is redone before giving up.
const MAX_DUMP_ATTEMPTS: u32 = 5;
/// Dump datagrams are at most 32 KiB (the kernel caps `max_recvmsg_len`); twice that is room.
pub(super) const RECV_BUF_LEN: usize = 64 * 1024;

impl Dump {
    /// The request message, serialized with sequence number `seq`.
    pub(crate) fn request(self, seq: u32) -> Vec<u8> {
        let payload = match self {
            Dump::Inet { protocol, family, states } => {
                let (af, socket_id) = match family {
                    Family::Ipv6 => (AF_INET6, SocketId::new_v6()),
                    _ => (AF_INET, SocketId::new_v4()),
                };
                SockDiagMessage::InetRequest(InetRequest {
                    family: af,
                    protocol: if protocol == Protocol::Udp { IPPROTO_UDP } else { IPPROTO_TCP },
                    extensions: ExtensionFlags::empty(),
                    states: StateFlags::from_bits_retain(states.bits()),
                    socket_id,
                })
            }
            Dump::Unix { states } => SockDiagMessage::UnixRequest(UnixRequest {
                state_flags: unix::StateFlags::from_bits_retain(states.bits()),
                inode: 0,
                show_flags: ShowFlags::from_bits_retain(UDIAG_SHOW_NAME | UDIAG_SHOW_UID),
                cookie: [0xff; 8], // INET_DIAG_NOCOOKIE: no single-socket lookup
            }),
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, payload.into());
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// What the datagram just decoded says about the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More datagrams follow.
    More,
    /// NLMSG_DONE was seen.
    Done,
}

/// Per-dump decoding state carried across datagrams.
#[derive(Debug)]
pub(crate) struct DumpState {
    pub(crate) dump: Dump,
    pub(crate) seq: u32,
    pub(crate) netns: u64,
    /// The kernel flagged a message with NLM_F_DUMP_INTR: the dump may be inconsistent.
    pub(crate) interrupted: bool,
}

/// Decodes one datagram of a dump answer, appending sockets to `out`.
///
/// Messages with another sequence number (left over from an abandoned dump) are skipped.
/// Socket messages whose attributes are malformed still yield their socket: only the fixed
/// header is required.
pub(crate) fn decode_datagram(
    buf: &[u8],
    st: &mut DumpState,
    out: &mut Vec<Socket>,
) -> Result<Progress> {
    let decode_err = |reason: String| Error::Decode { request: st.dump.name(), reason };
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let msg = NetlinkBuffer::new_checked(rest).map_err(|e| {
            decode_err(format!("bad netlink header at byte {offset} of {}: {e}", buf.len()))
        })?;
        let len = msg.length() as usize;
        if len < 16 {
            return Err(decode_err(format!("netlink message length {len} at byte {offset}")));
        }
        // Messages are padded to 4 bytes; the last one may not be.
        offset += len.next_multiple_of(4);
        if msg.sequence_number() != st.seq {
            continue;
        }
        if msg.flags() & NLM_F_DUMP_INTR != 0 {
            st.interrupted = true;
        }
        let payload = msg.payload();
        match msg.message_type() {
            NLMSG_DONE => return Ok(Progress::Done),
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => return Err(decode_err("kernel reported NLMSG_OVERRUN".into())),
            NLMSG_ERROR => {
                let err = ErrorBuffer::new_checked(payload)
                    .map_err(|e| decode_err(format!("bad NLMSG_ERROR: {e}")))?;
                match err.code() {
                    // An ACK: not expected in a dump, harmless.
                    None => {}
                    Some(code) => {
                        return Err(Error::Netlink {
                            request: st.dump.name(),
                            source: io::Error::from_raw_os_error(-code.get()),
                        });
                    }
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                let socket = match st.dump {
                    Dump::Inet { protocol, .. } => decode_inet(payload, protocol, st.netns),
                    Dump::Unix { .. } => decode_unix(payload, st.netns),
                }
                .map_err(decode_err)?;
                out.push(socket);
            }
            other => {
                log::debug!("sock_diag {}: ignoring message type {other}", st.dump.name())
            }
        }
    }
    Ok(Progress::More)
}

pub(super) fn cookie(raw: [u8; 8]) -> u64 {
    // The kernel's idiag_cookie is two host-order u32s, low word first (ss does the same).
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(hi) << 32 | u64::from(lo)
}

fn unresolved() -> Owners {
    Owners::Unknown(UnknownReason::NotResolved)
}

fn decode_inet(payload: &[u8], protocol: Protocol, netns: u64) -> Result<Socket, String> {
    if payload.len() < INET_DIAG_MSG_LEN {
        return Err(format!("inet_diag_msg of {} bytes, need {INET_DIAG_MSG_LEN}", payload.len()));
    }
    let h = InetResponseHeader::parse(&payload[..INET_DIAG_MSG_LEN]).map_err(|e| e.to_string())?;
    let family = match h.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        af => return Err(format!("address family {af} in an inet_diag answer")),
    };
    let mut v6only = None;
    for nla in NlasIterator::new(&payload[INET_DIAG_MSG_LEN..]) {
        // A malformed attribute ends the walk; the socket itself is still good.
        let Ok(nla) = nla else { break };
        if nla.kind() == INET_DIAG_SKV6ONLY && family == Family::Ipv6 {
            v6only = nla.value().first().map(|b| *b != 0);
        }
    }
    let id = &h.socket_id;
    let remote = (id.destination_port != 0 || !id.destination_address.is_unspecified())
        .then(|| std::net::SocketAddr::new(id.destination_address, id.destination_port));
    Ok(Socket {
        protocol,
        family,
        addr: Some(id.source_address),
        port: id.source_port,
        path: None,
        remote,
        state: State::from_kernel(h.state),
        inode: u64::from(h.inode),
        uid: Some(h.uid),
        cookie: Some(cookie(id.cookie)),
        netns,
        v6only,
        interface: (id.interface_id != 0).then_some(id.interface_id),
        unix_type: None,
        container: None,
        forwards_to: None,
        netns_name: None,
        owners: unresolved(),
    })
}

fn decode_unix(payload: &[u8], netns: u64) -> Result<Socket, String> {
    if payload.len() < UNIX_DIAG_MSG_LEN {
        return Err(format!("unix_diag_msg of {} bytes, need {UNIX_DIAG_MSG_LEN}", payload.len()));
    }
    if payload[0] != AF_UNIX {
        return Err(format!("address family {} in a unix_diag answer", payload[0]));
    }
    let h = UnixResponseHeader::parse(&payload[..UNIX_DIAG_MSG_LEN]).map_err(|e| e.to_string())?;
    let mut path = None;
    let mut uid = None;
    for nla in NlasIterator::new(&payload[UNIX_DIAG_MSG_LEN..]) {
        let Ok(nla) = nla else { break };
        match nla.kind() {
            UNIX_DIAG_NAME => path = unix_name(nla.value()),
            UNIX_DIAG_UID => {
                uid = nla.value().get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => {}
        }
    }
    Ok(Socket {
        protocol: Protocol::Unix,
        family: Family::Unix,
        addr: None,
        port: 0,
        path,
        remote: None,
        state: State::from_kernel(h.state),
        inode: u64::from(h.inode),
        uid,
        cookie: Some(cookie(h.cookie)),
        netns,
        v6only: None,
        interface: None,
        unix_type: Some(UnixType::from_kernel(h.kind)),
        container: None,
        forwards_to: None,
        netns_name: None,
        owners: unresolved(),
    })
}

/// A unix socket name as `ss` prints it: the path, or `@` + the abstract name with its NUL
/// bytes shown as `@` too.
pub(crate) fn unix_name(raw: &[u8]) -> Option<String> {
    match raw.split_first() {
        None => None,
        Some((0, name)) => {
            let shown: Vec<u8> = name.iter().map(|b| if *b == 0 { b'@' } else { *b }).collect();
            Some(format!("@{}", String::from_utf8_lossy(&shown)))
        }
        Some(_) => {
            let path = raw.split(|b| *b == 0).next().unwrap_or(raw);
            Some(String::from_utf8_lossy(path).into_owned())
        }
    }
}

/// A NETLINK_SOCK_DIAG socket, bound to the network namespace it was created in.
pub(crate) struct SockDiag {
    socket: NlSocket,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub(crate) fn open() -> Result<SockDiag> {
        let nl = |source| Error::NetlinkUnavailable { source };
        let mut socket = NlSocket::new(NETLINK_SOCK_DIAG).map_err(nl)?;
        socket.bind_auto().map_err(nl)?;
        socket.connect(&NlAddr::new(0, 0)).map_err(nl)?;
        Ok(SockDiag { socket, buf: vec![0; RECV_BUF_LEN], seq: 0 })
    }

    /// Runs one dump to completion, appending its sockets to `out`. An interrupted or truncated
    /// dump is redone (its partial results dropped) up to `MAX_DUMP_ATTEMPTS` times.
    pub(crate) fn dump(&mut self, dump: Dump, netns: u64, out: &mut Vec<Socket>) -> Result<()> {
        let start = out.len();
        for _ in 0..MAX_DUMP_ATTEMPTS {
            out.truncate(start);
            self.seq = self.seq.wrapping_add(1);
            let mut st = DumpState { dump, seq: self.seq, netns, interrupted: false };
            let request = dump.request(st.seq);
            self.socket
                .send(&request, 0)
                .map_err(|source| Error::Netlink { request: dump.name(), source })?;
            if self.read_answer(&mut st, out)? && !st.interrupted {
                return Ok(());
            }
            log::debug!("sock_diag {}: dump inconsistent, redoing it", dump.name());
        }
        out.truncate(start);
        Err(Error::DumpInterrupted { request: dump.name(), attempts: MAX_DUMP_ATTEMPTS })
    }

    /// Reads datagrams until NLMSG_DONE. Returns false when a datagram was truncated (the
    /// buffer is then grown and the dump must be redone).
    fn read_answer(&mut self, st: &mut DumpState, out: &mut Vec<Socket>) -> Result<bool> {
        let mut complete = true;
        loop {
            let mut window = &mut self.buf[..];
            let n = match self.socket.recv(&mut window, nix::libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Netlink { request: st.dump.name(), source }),
            };
            if n > self.buf.len() {
                // Keep reading to NLMSG_DONE so no stale datagram is left behind.
                complete = false;
                self.buf.resize(n.next_power_of_two(), 0);
                continue;
            }
            if decode_datagram(&self.buf[..n], st, out)? == Progress::Done {
                return Ok(complete);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::socket::StateSet;

    const NETNS: u64 = 4026531840;

    fn state(dump: Dump, seq: u32) -> DumpState {
        DumpState { dump, seq, netns: NETNS, interrupted: false }
    }

    fn tcp4() -> Dump {
        Dump::Inet { protocol: Protocol::Tcp, family: Family::Ipv4, states: StateSet::LISTENING }
    }

    /// A netlink header: length, type, flags, seq, pid — host byte order.
    fn nlhdr(len: u32, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    /// One inet_diag_msg for 127.0.0.1:8080 LISTEN, inode 0x3039 (12345), uid 1000,
    /// cookie 0x0000_0002_0000_0001, as Linux 6.18 sends it on x86_64 (little endian).
    #[rustfmt::skip]
    pub(crate) const INET_LISTEN_127_8080: [u8; 72] = [
        0x02,                   // idiag_family: AF_INET
        0x0a,                   // idiag_state: TCP_LISTEN
        0x00,                   // idiag_timer
        0x00,                   // idiag_retrans
        0x1f, 0x90,             // id.idiag_sport: 8080, big endian
        0x00, 0x00,             // id.idiag_dport: 0
        127, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0, // id.idiag_src
        0, 0, 0, 0,    0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0, // id.idiag_dst
        0x00, 0x00, 0x00, 0x00, // id.idiag_if
        0x01, 0x00, 0x00, 0x00, // id.idiag_cookie[0] (low word)
        0x02, 0x00, 0x00, 0x00, // id.idiag_cookie[1] (high word)
        0x00, 0x00, 0x00, 0x00, // idiag_expires
        0x00, 0x00, 0x00, 0x00, // idiag_rqueue
        0x80, 0x00, 0x00, 0x00, // idiag_wqueue: backlog 128
        0xe8, 0x03, 0x00, 0x00, // idiag_uid: 1000
        0x39, 0x30, 0x00, 0x00, // idiag_inode: 12345
    ];

    /// A unix_diag_msg: stream, LISTEN, inode 777, then UNIX_DIAG_NAME "@foo" (abstract),
    /// UNIX_DIAG_UID 1000, and an attribute kind 99 this library does not know.
    #[rustfmt::skip]
    const UNIX_LISTEN_ABSTRACT: [u8; 40] = [
        0x01,                   // udiag_family: AF_UNIX
        0x01,                   // udiag_type: SOCK_STREAM
        0x0a,                   // udiag_state: TCP_LISTEN
        0x00,                   // pad
        0x09, 0x03, 0x00, 0x00, // udiag_ino: 777
        0x05, 0x00, 0x00, 0x00, // udiag_cookie[0]
        0x00, 0x00, 0x00, 0x00, // udiag_cookie[1]
        0x08, 0x00, 0x00, 0x00, // nla_len 8, nla_type UNIX_DIAG_NAME
        0x00, b'f', b'o', b'o', // "\0foo": abstract
        0x08, 0x00, 0x07, 0x00, // nla_len 8, nla_type UNIX_DIAG_UID
        0xe8, 0x03, 0x00, 0x00, // 1000
        0x08, 0x00, 0x63, 0x00, // nla_len 8, nla_type 99: unknown
        0xde, 0xad, 0xbe, 0xef, // its value
    ];

    pub(crate) fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = nlhdr(16 + payload.len() as u32, ty, flags, seq);
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn done(seq: u32) -> Vec<u8> {
        message(NLMSG_DONE, 2, seq, &0i32.to_ne_bytes())
    }

    #[test]
    fn decodes_inet_listener_fixture() {
        if cfg!(target_endian = "big") {
            return; // the fixture is little endian
        }
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 2, 7, &INET_LISTEN_127_8080);
        buf.extend(done(7));
        let mut st = state(tcp4(), 7);
        let mut out = Vec::new();
        assert_eq!(decode_datagram(&buf, &mut st, &mut out).unwrap(), Progress::Done);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!((s.protocol, s.family), (Protocol::Tcp, Family::Ipv4));
        assert_eq!(s.addr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(s.port, 8080);
        assert_eq!(s.state, State::Listen);
        assert_eq!((s.inode, s.uid, s.cookie), (12345, Some(1000), Some(0x2_0000_0001)));
        assert_eq!(s.remote, None);
        assert_eq!(s.netns, NETNS);
        assert!(!st.interrupted);
    }

    #[test]
    fn decodes_unix_abstract_fixture_and_skips_unknown_attribute() {
        if cfg!(target_endian = "big") {
            return;
        }
        let buf = message(SOCK_DIAG_BY_FAMILY, 2, 1, &UNIX_LISTEN_ABSTRACT);
        let mut st = state(Dump::Unix { states: StateSet::LISTENING }, 1);
        let mut out = Vec::new();
        assert_eq!(decode_datagram(&buf, &mut st, &mut out).unwrap(), Progress::More);
        let s = &out[0];
        assert_eq!(s.path.as_deref(), Some("@foo"));
        assert_eq!(s.uid, Some(1000));
        assert_eq!(s.inode, 777);
        assert_eq!(s.unix_type, Some(UnixType::Stream));
        assert_eq!(s.state, State::Listen);
    }

    #[test]
    fn several_messages_per_datagram_and_stale_sequence_skipped() {
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 2, 3, &INET_LISTEN_127_8080); // stale
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 2, 4, &INET_LISTEN_127_8080));
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 2, 4, &INET_LISTEN_127_8080));
        buf.extend(done(4));
        let mut st = state(tcp4(), 4);
        let mut out = Vec::new();
        assert_eq!(decode_datagram(&buf, &mut st, &mut out).unwrap(), Progress::Done);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn dump_intr_flag_is_noticed() {
        let buf = message(SOCK_DIAG_BY_FAMILY, 2 | NLM_F_DUMP_INTR, 1, &INET_LISTEN_127_8080);
        let mut st = state(tcp4(), 1);
        decode_datagram(&buf, &mut st, &mut Vec::new()).unwrap();
        assert!(st.interrupted);
    }

    #[test]
    fn nlmsg_error_is_typed() {
        // NLMSG_ERROR: error code -EINVAL then the offending request's header.
        let mut payload = (-22i32).to_ne_bytes().to_vec();
        payload.extend(nlhdr(16, SOCK_DIAG_BY_FAMILY, 0x301, 1));
        let buf = message(NLMSG_ERROR, 0, 1, &payload);
        let err = decode_datagram(&buf, &mut state(tcp4(), 1), &mut Vec::new()).unwrap_err();
        match err {
            Error::Netlink { request, source } => {
                assert_eq!(request, "tcp/ipv4");
                assert_eq!(source.raw_os_error(), Some(22));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn short_and_garbage_input_is_an_error_not_a_panic() {
        let full = message(SOCK_DIAG_BY_FAMILY, 2, 1, &INET_LISTEN_127_8080);
        for cut in 0..full.len() {
            let mut st = state(tcp4(), 1);
            // Must not panic; a cut inside the payload is an error.
            let _ = decode_datagram(&full[..cut], &mut st, &mut Vec::new());
        }
        // A header claiming more bytes than the datagram holds.
        let mut lying = nlhdr(4096, SOCK_DIAG_BY_FAMILY, 2, 1);
        lying.extend_from_slice(&INET_LISTEN_127_8080);
        assert!(decode_datagram(&lying, &mut state(tcp4(), 1), &mut Vec::new()).is_err());
        // A zero length header must not loop forever.
        let zero = nlhdr(0, SOCK_DIAG_BY_FAMILY, 2, 1);
        assert!(decode_datagram(&zero, &mut state(tcp4(), 1), &mut Vec::new()).is_err());
    }

    #[test]
    fn malformed_attribute_keeps_the_socket() {
        let mut payload = INET_LISTEN_127_8080.to_vec();
        payload.extend([0xff, 0x00, 0x0b, 0x00]); // nla_len 255: past the end
        let buf = message(SOCK_DIAG_BY_FAMILY, 2, 1, &payload);
        let mut out = Vec::new();
        decode_datagram(&buf, &mut state(tcp4(), 1), &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn request_encodes_states_and_flags() {
        let req = Dump::Inet {
            protocol: Protocol::Udp,
            family: Family::Ipv6,
            states: StateSet::of(&[State::Unconnected]),
        }
        .request(9);
        let nl = NetlinkBuffer::new_checked(&req[..]).unwrap();
        assert_eq!(nl.message_type(), SOCK_DIAG_BY_FAMILY);
        assert_eq!(nl.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(nl.sequence_number(), 9);
        let p = nl.payload();
        assert_eq!((p[0], p[1]), (AF_INET6, IPPROTO_UDP));
        assert_eq!(u32::from_ne_bytes([p[4], p[5], p[6], p[7]]), 1 << 7);
    }

    #[test]
    fn unix_names() {
        assert_eq!(unix_name(b"/run/a.sock\0").as_deref(), Some("/run/a.sock"));
        assert_eq!(unix_name(b"\0a\0b").as_deref(), Some("@a@b"));
        assert_eq!(unix_name(b""), None);
    }
}
