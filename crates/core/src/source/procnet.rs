//! The /proc/net/{tcp,tcp6,udp,udp6,unix} fallback backend.
//!
//! Used only where NETLINK_SOCK_DIAG cannot be: every read walks the whole established hash
//! (7–9 ms even when nearly empty), and state filtering happens here, after the kernel has
//! formatted every socket. Parsing works on bytes; `read` is the only I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::Dump;
use crate::error::{Error, Result};
use crate::process::{Owners, UnknownReason};
use crate::socket::{Family, Protocol, Socket, State, UnixType};

/// `__SO_ACCEPTCON`: the unix socket is listening.
const SO_ACCEPTCON: u32 = 1 << 16;

/// The file under `/proc/net` that holds a dump's sockets.
fn file_name(dump: Dump) -> &'static str {
    match dump {
        Dump::Inet { protocol: Protocol::Tcp, family: Family::Ipv4, .. } => "tcp",
        Dump::Inet { protocol: Protocol::Tcp, .. } => "tcp6",
        Dump::Inet { protocol: Protocol::Udp, family: Family::Ipv4, .. } => "udp",
        Dump::Inet { .. } => "udp6",
        Dump::Unix { .. } => "unix",
    }
}

/// Reads the sockets of `dump` from `proc_net` (normally `/proc/net`, which is the calling
/// thread's network namespace), keeping those in the requested states.
pub(crate) fn read(proc_net: &Path, dump: Dump, netns: u64, out: &mut Vec<Socket>) -> Result<()> {
    let path = proc_net.join(file_name(dump));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        // IPv6 disabled: no sockets of that family.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dump.name().ends_with("ipv6") => {
            return Ok(());
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let parsed = parse(&bytes, dump, netns).map_err(|reason| Error::Parse { path, reason })?;
    out.extend(parsed);
    Ok(())
}

/// Parses the content of the `/proc/net` file for `dump`, keeping sockets in its states.
pub(crate) fn parse(bytes: &[u8], dump: Dump, netns: u64) -> Result<Vec<Socket>, String> {
    let mut out = Vec::new();
    // A unix path may hold newlines (any user can bind such a name; the kernel prints it raw):
    // a line that is not a socket, after one with a path, goes on that path.
    let mut path_goes_on: Option<Option<usize>> = None;
    // The first line is the column header; the file ends with a newline.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (n, line) in body.split(|b| *b == b'\n').enumerate().skip(1) {
        if let Dump::Unix { .. } = dump
            && let Some(kept) = path_goes_on
            && parse_unix_line(line, netns).is_none()
        {
            if let Some(path) =
                kept.and_then(|i| out.get_mut(i)).and_then(|s: &mut Socket| s.path.as_mut())
            {
                path.push('\n');
                path.push_str(&String::from_utf8_lossy(line));
            }
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let socket = match dump {
            Dump::Inet { protocol, family, states } => {
                let s = parse_inet_line(line, protocol, family, netns);
                match s {
                    Some(s) if states.contains(s.state) => s,
                    Some(_) => continue,
                    None => return Err(format!("line {}: malformed socket line", n + 1)),
                }
            }
            Dump::Unix { states } => match parse_unix_line(line, netns) {
                Some(s) if states.contains(s.state) => {
                    path_goes_on = s.path.is_some().then_some(Some(out.len()));
                    s
                }
                Some(s) => {
                    path_goes_on = s.path.is_some().then_some(None);
                    continue;
                }
                None => return Err(format!("line {}: malformed unix socket line", n + 1)),
            },
        };
        out.push(socket);
    }
    Ok(out)
}

fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace).filter(|f| !f.is_empty())
}

fn hex_u32(field: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

fn dec_u64(field: &[u8]) -> Option<u64> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// `0100007F:0277` (IPv4) or 32 hex digits `:` port (IPv6). Addresses are printed as host-order
/// 32-bit words, so each word converts back with `to_ne_bytes`.
fn parse_endpoint(field: &[u8], family: Family) -> Option<SocketAddr> {
    let colon = field.iter().position(|b| *b == b':')?;
    let (addr, port) = (&field[..colon], &field[colon + 1..]);
    let port = u16::try_from(hex_u32(port)?).ok()?;
    let ip = match (family, addr.len()) {
        (Family::Ipv4, 8) => IpAddr::V4(Ipv4Addr::from(hex_u32(addr)?.to_ne_bytes())),
        (Family::Ipv6, 32) => {
            let mut octets = [0u8; 16];
            for (i, word) in addr.chunks(8).enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&hex_u32(word)?.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`
fn parse_inet_line(line: &[u8], protocol: Protocol, family: Family, netns: u64) -> Option<Socket> {
    let mut f = fields(line);
    let _sl = f.next()?;
    let local = parse_endpoint(f.next()?, family)?;
    let remote = parse_endpoint(f.next()?, family)?;
    let state = State::from_kernel(u8::try_from(hex_u32(f.next()?)?).ok()?);
    let uid = u32::try_from(dec_u64(f.nth(3)?)?).ok()?;
    let inode = dec_u64(f.nth(1)?)?;
    let connected = remote.port() != 0 || !remote.ip().is_unspecified();
    Some(Socket {
        protocol,
        family,
        addr: Some(local.ip()),
        port: local.port(),
        path: None,
        remote: connected.then_some(remote),
        state,
        inode,
        uid: Some(uid),
        cookie: None,
        netns,
        v6only: None,
        interface: None,
        unix_type: None,
        container: None,
        forwards_to: None,
        netns_name: None,
        owners: Owners::Unknown(UnknownReason::NotResolved),
    })
}

/// `Num RefCount Protocol Flags Type St Inode [Path]`. The path may contain spaces.
fn parse_unix_line(line: &[u8], netns: u64) -> Option<Socket> {
    let mut f = fields(line);
    let _num = f.next()?;
    let _refcount = f.next()?;
    let _protocol = f.next()?;
    let flags = hex_u32(f.next()?)?;
    let kind = u8::try_from(hex_u32(f.next()?)?).ok()?;
    let st = hex_u32(f.next()?)?;
    let inode_field = f.next()?;
    let inode = dec_u64(inode_field)?;
    // Everything after the inode column, minus one separating space, is the path.
    let inode_end = inode_field.as_ptr() as usize - line.as_ptr() as usize + inode_field.len();
    let rest = line.get(inode_end..).unwrap_or_default();
    let path = rest.strip_prefix(b" ").filter(|p| !p.is_empty());
    // SS_UNCONNECTED (1) with __SO_ACCEPTCON is a listener; SS_CONNECTED (3) is connected.
    let state = if flags & SO_ACCEPTCON != 0 {
        State::Listen
    } else if st == 3 {
        State::Established
    } else {
        State::Unconnected
    };
    Some(Socket {
        protocol: Protocol::Unix,
        family: Family::Unix,
        addr: None,
        port: 0,
        path: path.map(|p| String::from_utf8_lossy(p).into_owned()),
        remote: None,
        state,
        inode,
        uid: None,
        cookie: None,
        netns,
        v6only: None,
        interface: None,
        unix_type: Some(UnixType::from_kernel(kind)),
        container: None,
        forwards_to: None,
        netns_name: None,
        owners: Owners::Unknown(UnknownReason::NotResolved),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::StateSet;

    fn inet(protocol: Protocol, family: Family) -> Dump {
        Dump::Inet { protocol, family, states: StateSet::LISTENING }
    }

    /// Linux 6.18.44 x86_64: sshd-like 0.0.0.0:2024 listener and a connected 127.0.0.1 socket.
    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1595 1 0000000082fe6ef7 100 0 0 10 0                      
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 1600 1 0000000082fe6ef8 100 0 0 10 0                      
";

    /// Linux 6.18.44 x86_64: [::1]:5353 listener.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:14E9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7208 1 00000000d56b3e70 100 0 0 10 0
";

    /// Linux 6.18.44 x86_64: [::]:5354 unconnected UDP.
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
11873: 00000000000000000000000000000000:14EA 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 7209 2 0000000042c8edd0 0
";

    /// Linux 6.18.44 x86_64: a connected UDP socket (a DNS client): not a listener.
    const UDP4_CONNECTED: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
 6986: 0100007F:81D3 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 7210 2 0000000084882298 0          
";

    /// Linux 6.18.44 x86_64: a path listener, an abstract seqpacket listener with a space in
    /// its name, a connected stream and an unbound datagram socket.
    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
00000000da8e767a: 00000002 00000000 00010000 0001 01  4214 /var/run/docker.sock
00000000c257cea2: 00000002 00000000 00010000 0005 01  7211 @my abstract
00000000c257cea3: 00000003 00000000 00000000 0001 03  7300 
00000000c257cea4: 00000002 00000000 00000000 0002 01  7301
";

    #[test]
    fn tcp4_listener_only() {
        if cfg!(target_endian = "big") {
            return; // fixtures are from a little-endian machine
        }
        let v = parse(TCP4.as_bytes(), inet(Protocol::Tcp, Family::Ipv4), 1).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].addr, Some("0.0.0.0".parse().unwrap()));
        assert_eq!((v[0].port, v[0].inode, v[0].uid), (2024, 1595, Some(0)));
        assert_eq!(v[0].state, State::Listen);
        assert_eq!(v[0].cookie, None);
    }

    #[test]
    fn tcp4_established_when_asked() {
        if cfg!(target_endian = "big") {
            return;
        }
        let dump = Dump::Inet {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            states: StateSet::of(&[State::Established]),
        };
        let v = parse(TCP4.as_bytes(), dump, 1).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].remote, Some("127.0.0.1:50000".parse().unwrap()));
        assert_eq!(v[0].uid, Some(1000));
    }

    #[test]
    fn ipv6_addresses() {
        if cfg!(target_endian = "big") {
            return;
        }
        let v = parse(TCP6.as_bytes(), inet(Protocol::Tcp, Family::Ipv6), 1).unwrap();
        assert_eq!(v[0].addr, Some("::1".parse().unwrap()));
        assert_eq!(v[0].port, 5353);
        let v = parse(UDP6.as_bytes(), inet(Protocol::Udp, Family::Ipv6), 1).unwrap();
        assert_eq!((v[0].addr, v[0].port), (Some("::".parse().unwrap()), 5354));
        assert_eq!(v[0].state, State::Unconnected);
    }

    #[test]
    fn connected_udp_is_not_listening() {
        let v = parse(UDP4_CONNECTED.as_bytes(), inet(Protocol::Udp, Family::Ipv4), 1).unwrap();
        assert!(v.is_empty());
    }

    #[test]
    fn unix_listeners_with_paths() {
        let listening = StateSet::of(&[State::Listen]);
        let listeners = parse(UNIX.as_bytes(), Dump::Unix { states: listening }, 1).unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners[0].path.as_deref(), Some("/var/run/docker.sock"));
        assert_eq!(listeners[1].path.as_deref(), Some("@my abstract"));
        assert_eq!(listeners[1].unix_type, Some(UnixType::Seqpacket));
        assert_eq!(listeners[1].inode, 7211);
    }

    #[test]
    fn a_unix_path_with_newlines_goes_on_over_the_lines_after_it() {
        // Any user can bind such a name (abstract, here a fake log line): the kernel prints it
        // raw, so it spans lines. It must not make the whole file unreadable.
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000006af23d9: 00000002 00000000 00010000 0001 01 2880349 @pw\x1b[2K\r
[2026-11-22T03:48:02.123Z] New port opened: 22 (tcp, 0.0.0.0, pids: 1 sshd)
0000000006af23da: 00000002 00000000 00000000 0001 01 2880350 @unconnected
more of its name
0000000006af23db: 00000002 00000000 00010000 0001 01 2880351 /run/next.sock
";
        let listening = StateSet::of(&[State::Listen]);
        let v = parse(text.as_bytes(), Dump::Unix { states: listening }, 1).unwrap();
        let paths: Vec<&str> = v.iter().filter_map(|s| s.path.as_deref()).collect();
        assert_eq!(
            paths,
            [
                "@pw\x1b[2K\r\n[2026-11-22T03:48:02.123Z] New port opened: 22 (tcp, 0.0.0.0, pids: 1 sshd)",
                "/run/next.sock"
            ]
        );
        // Before any socket with a path, such a line is still malformed.
        let bad = "h\nnot a socket line\n";
        assert!(parse(bad.as_bytes(), Dump::Unix { states: StateSet::ALL }, 1).is_err());
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        let dump = inet(Protocol::Tcp, Family::Ipv4);
        for bad in ["h\n0: zz:0 00:0 0A", "h\n   0: 00000000:FFFFF 00000000:0000 0A", "h\nx"] {
            assert!(parse(bad.as_bytes(), dump, 1).is_err(), "{bad}");
        }
        for cut in 0..TCP6.len() {
            let _ = parse(&TCP6.as_bytes()[..cut], inet(Protocol::Tcp, Family::Ipv6), 1);
        }
        for cut in 0..UNIX.len() {
            let _ = parse(&UNIX.as_bytes()[..cut], Dump::Unix { states: StateSet::ALL }, 1);
        }
    }
}
