//! The library's listing against real sockets held by this process and by forked children.

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, UnixAddr, bind, listen, setsockopt,
    socket, sockopt,
};
use portwatch_core::{Backend, Family, Protocol, Query, Socket, State, StateSet, UnixType};

use crate::util::{Holder, private_dir, wait_for};

fn me() -> u32 {
    std::process::id()
}

fn all() -> Query {
    Query::new().protocols(&[Protocol::Tcp, Protocol::Udp, Protocol::Unix])
}

fn find(list: &[Socket], proto: Protocol, addr: SocketAddr) -> Option<&Socket> {
    list.iter().find(|s| s.protocol == proto && s.addr == Some(addr.ip()) && s.port == addr.port())
}

fn by_inode(list: &[Socket], inode: u64) -> Option<&Socket> {
    list.iter().find(|s| s.inode == inode)
}

fn inode_of(fd: &impl AsRawFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().ino()
}

/// An IPv6 socket with IPV6_V6ONLY set, bound to [::]:0 (and listening for TCP).
fn v6only(ty: SockType) -> OwnedFd {
    let fd = socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None).unwrap();
    setsockopt(&fd, sockopt::Ipv6V6Only, &true).unwrap();
    let any = SockaddrIn6::from(std::net::SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    bind(fd.as_raw_fd(), &any).unwrap();
    if ty == SockType::Stream {
        listen(&fd, Backlog::new(16).unwrap()).unwrap();
    }
    fd
}

fn local_port(fd: &OwnedFd) -> u16 {
    let addr: SockaddrIn6 = nix::sys::socket::getsockname(fd.as_raw_fd()).unwrap();
    addr.port()
}

/// Waits until the listing shows `inode` with exactly `pids` (forks elsewhere in the test
/// process can make a child hold our sockets for a few microseconds).
fn wait_pids(query: &Query, inode: u64, mut pids: Vec<u32>) -> Socket {
    pids.sort_unstable();
    wait_for(&format!("socket {inode} owned by {pids:?}"), Duration::from_secs(5), || {
        let list = query.run().unwrap();
        by_inode(&list, inode).filter(|s| s.pids() == pids).cloned()
    })
}

#[test]
fn tcp_listeners_on_every_address_kind() {
    let any4 = TcpListener::bind("0.0.0.0:0").unwrap();
    let lo4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let dual = TcpListener::bind("[::]:0").unwrap();
    let lo6 = TcpListener::bind("[::1]:0").unwrap();
    let only6 = v6only(SockType::Stream);
    let list = Query::new().protocols(&[Protocol::Tcp]).run().unwrap();
    for l in [&any4, &lo4, &dual, &lo6] {
        let addr = l.local_addr().unwrap();
        let s = find(&list, Protocol::Tcp, addr).unwrap_or_else(|| panic!("{addr} listed"));
        assert_eq!(s.state, State::Listen);
        assert_eq!(s.family, if addr.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 });
        assert!(s.pids().contains(&me()), "{addr} owned by us: {:?}", s.pids());
        assert_eq!(s.inode, inode_of(l));
        assert!(s.cookie.is_some());
    }
    let dual_s = find(&list, Protocol::Tcp, dual.local_addr().unwrap()).unwrap();
    assert_eq!(dual_s.v6only, Some(false));
    assert_eq!(dual_s.local_display(), format!("*:{}", dual_s.port));
    let only6_s = by_inode(&list, inode_of(&only6)).expect("v6only listener listed");
    assert_eq!((only6_s.v6only, only6_s.port), (Some(true), local_port(&only6)));
    assert_eq!(only6_s.local_display(), format!("[::]:{}", only6_s.port));
}

#[test]
fn udp_unconnected_on_every_address_kind() {
    let socks: Vec<UdpSocket> = ["0.0.0.0:0", "127.0.0.1:0", "[::]:0", "[::1]:0"]
        .iter()
        .map(|a| UdpSocket::bind(a).unwrap())
        .collect();
    let only6 = v6only(SockType::Datagram);
    let list = Query::new().protocols(&[Protocol::Udp]).run().unwrap();
    for u in &socks {
        let addr = u.local_addr().unwrap();
        let s = find(&list, Protocol::Udp, addr).unwrap_or_else(|| panic!("udp {addr} listed"));
        assert_eq!(s.state, State::Unconnected);
        assert!(s.pids().contains(&me()));
    }
    let s = by_inode(&list, inode_of(&only6)).expect("v6only udp listed");
    assert_eq!(s.v6only, Some(true));
}

#[test]
fn unix_stream_and_seqpacket_path_and_abstract() {
    let tmp = private_dir();
    let dir = tmp.path();
    let path_stream = dir.join("stream.sock");
    let stream = UnixListener::bind(&path_stream).unwrap();
    let abs_name = format!("portwatch-test-{}-abstract", me());
    let abs_stream = UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(&abs_name).unwrap(),
    )
    .unwrap();
    let seq = |addr: &UnixAddr| {
        let fd =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(fd.as_raw_fd(), addr).unwrap();
        listen(&fd, Backlog::new(4).unwrap()).unwrap();
        fd
    };
    let path_seq = dir.join("seq.sock");
    let seq_path = seq(&UnixAddr::new(&path_seq).unwrap());
    let seq_abs_name = format!("{abs_name}-seq");
    let seq_abs = seq(&UnixAddr::new_abstract(seq_abs_name.as_bytes()).unwrap());

    let list = Query::new().protocols(&[Protocol::Unix]).run().unwrap();
    let cases = [
        (inode_of(&stream), path_stream.display().to_string(), UnixType::Stream),
        (inode_of(&abs_stream), format!("@{abs_name}"), UnixType::Stream),
        (inode_of(&seq_path), path_seq.display().to_string(), UnixType::Seqpacket),
        (inode_of(&seq_abs), format!("@{seq_abs_name}"), UnixType::Seqpacket),
    ];
    for (inode, path, ty) in cases {
        let s = by_inode(&list, inode).unwrap_or_else(|| panic!("{path} listed"));
        assert_eq!(s.path.as_deref(), Some(path.as_str()));
        assert_eq!((s.protocol, s.family, s.state), (Protocol::Unix, Family::Unix, State::Listen));
        assert_eq!(s.unix_type, Some(ty));
        assert!(s.pids().contains(&me()));
        assert_eq!(s.uid, Some(nix::unistd::getuid().as_raw()));
    }
    // Unix sockets have no port: a port filter drops them, and they only come when asked for.
    assert!(Query::new().run().unwrap().iter().all(|s| s.protocol != Protocol::Unix));
}

#[test]
fn socket_held_only_by_a_child_lists_the_child() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("[::1]:0").unwrap();
    let (tcp_inode, udp_inode) = (inode_of(&tcp), inode_of(&udp));
    let child = Holder::spawn(&[&tcp, &udp]);
    drop((tcp, udp));
    let q = all();
    let s = wait_pids(&q, tcp_inode, vec![child.pid]);
    let p = &s.processes()[0];
    assert_eq!(p.pid, child.pid);
    assert!(!p.comm.is_empty());
    assert!(!p.cmdline.is_empty(), "a forked child keeps its parent's command line");
    assert_eq!(p.uid, nix::unistd::getuid().as_raw());
    wait_pids(&q, udp_inode, vec![child.pid]);
}

#[test]
fn listener_shared_by_forked_workers_lists_every_pid() {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let workers: Vec<Holder> = (0..3).map(|_| Holder::spawn(&[&l])).collect();
    let mut expected: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    expected.push(me());
    let s = wait_pids(&Query::new().protocols(&[Protocol::Tcp]), inode_of(&l), expected);
    assert_eq!(s.processes().len(), 4);
}

#[test]
fn bound_but_not_listening_tcp_and_connected_udp_are_absent() {
    let bound =
        socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let any = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0);
    bind(bound.as_raw_fd(), &any).unwrap();
    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect("127.0.0.1:9").unwrap();
    let list = all().run().unwrap();
    assert!(by_inode(&list, inode_of(&bound)).is_none(), "bound TCP socket is not a listener");
    assert!(by_inode(&list, inode_of(&connected)).is_none(), "connected UDP is not a listener");
    // Both exist, and a query for the right states does see the connected UDP socket.
    let est = Query::new()
        .protocols(&[Protocol::Udp])
        .states(StateSet::of(&[State::Established]))
        .run()
        .unwrap();
    let s = by_inode(&est, inode_of(&connected)).expect("connected UDP listed as ESTAB");
    assert_eq!(s.remote, Some("127.0.0.1:9".parse().unwrap()));
}

#[test]
fn established_tcp_when_asked_with_remote_end() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (_server, _) = l.accept().unwrap();
    let q = Query::new().protocols(&[Protocol::Tcp]).states(StateSet::of(&[State::Established]));
    let list = q.run().unwrap();
    let s = by_inode(&list, inode_of(&client)).expect("client side listed");
    assert_eq!(s.state, State::Established);
    assert_eq!(s.remote, Some(l.local_addr().unwrap()));
    assert!(s.pids().contains(&me()));
    // The kernel's state filter: the listener itself is not in an ESTABLISHED dump.
    assert!(by_inode(&list, inode_of(&l)).is_none());
}

#[test]
fn proc_backend_sees_the_same_listeners() {
    let tcp = TcpListener::bind("[::]:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let unix_name = format!("portwatch-proc-{}", me());
    let unix = UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(&unix_name).unwrap(),
    )
    .unwrap();
    let q = all().backend(Backend::Proc);
    let list = q.run().unwrap();
    for (inode, what) in
        [(inode_of(&tcp), "tcp"), (inode_of(&udp), "udp"), (inode_of(&unix), "unix")]
    {
        let s = by_inode(&list, inode).unwrap_or_else(|| panic!("{what} listed by /proc backend"));
        assert!(s.pids().contains(&me()));
        assert_eq!(s.cookie, None, "/proc has no cookies");
    }
    let u = by_inode(&list, inode_of(&unix)).unwrap();
    assert_eq!(u.path.as_deref(), Some(format!("@{unix_name}").as_str()));
    // Both backends agree on the endpoint.
    let nl = all().backend(Backend::Netlink).run().unwrap();
    let (a, b) = (by_inode(&list, inode_of(&tcp)).unwrap(), by_inode(&nl, inode_of(&tcp)).unwrap());
    assert_eq!((a.addr, a.port, a.state), (b.addr, b.port, b.state));
}

#[test]
fn port_and_family_filters() {
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l4.local_addr().unwrap().port();
    let list = Query::new().port(port).run().unwrap();
    assert!(!list.is_empty() && list.iter().all(|s| s.port == port));
    let v6 = Query::new().families(&[Family::Ipv6]).port(port).run().unwrap();
    assert!(by_inode(&v6, inode_of(&l4)).is_none());
}

#[test]
fn owners_can_be_skipped() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let list = Query::new().owners(false).run().unwrap();
    let s = by_inode(&list, inode_of(&l)).unwrap();
    assert!(s.pids().is_empty());
    assert_eq!(
        s.owners,
        portwatch_core::Owners::Unknown(portwatch_core::UnknownReason::NotResolved)
    );
}
