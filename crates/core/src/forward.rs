//! Published ports: the container and inner port a forwarder's listening socket leads to.
//!
//! Docker's userland proxy (`docker-proxy`, on unless dockerd runs with `userland-proxy:
//! false`) listens on each published host port and relays to the container; its command line
//! says where: `-proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2
//! -container-port 80`. A command line is whatever its process put there, so it is read only
//! from a process that is docker-proxy — running as root (real uid 0 in this user namespace:
//! only root can start one) from an executable named `docker-proxy` (`/proc/PID/exe`) — and
//! only when it describes this very socket (protocol, address and port).
//!
//! The container holding the address comes from the Docker daemon (its bridge networks'
//! endpoints) when it answers, else from the network namespaces: the one, created by root,
//! whose local addresses (`/proc/PID/net/fib_trie`, `if_inet6`) include it, if its processes'
//! cgroup names a Docker container (`discover` looks). Parsers take bytes and do no I/O.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::socket::{Process, Protocol, Socket};

/// What a docker-proxy's command line says it forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxySpec {
    pub(crate) protocol: Protocol,
    pub(crate) host_ip: IpAddr,
    pub(crate) host_port: u16,
    pub(crate) container_ip: IpAddr,
    pub(crate) container_port: u16,
}

/// Parses a docker-proxy command line (Go `flag` syntax: `-name value`, `--name value`,
/// `-name=value`; unknown flags such as `-use-listen-fd` are skipped). `None` unless every
/// one of the five flags is there and well-formed, and the protocol is TCP or UDP.
pub(crate) fn parse_docker_proxy(args: &[String]) -> Option<ProxySpec> {
    let mut proto = None;
    let (mut host_ip, mut host_port, mut container_ip, mut container_port) =
        (None, None, None, None);
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        let wanted = ["proto", "host-ip", "host-port", "container-ip", "container-port"];
        if !wanted.contains(&name) {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => rest.next()?.as_str(),
        };
        match name {
            "proto" => {
                proto = Some(match value {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return None,
                })
            }
            "host-ip" => host_ip = Some(value.parse().ok()?),
            "host-port" => host_port = Some(value.parse().ok()?),
            "container-ip" => container_ip = Some(value.parse().ok()?),
            _ => container_port = Some(value.parse().ok()?),
        }
    }
    Some(ProxySpec {
        protocol: proto?,
        host_ip: host_ip?,
        host_port: host_port?,
        container_ip: container_ip?,
        container_port: container_port?,
    })
}

/// What the socket's docker-proxy forwards it to: `None` unless one of its owners is a
/// docker-proxy run by root whose command line names this socket's protocol, address and port.
pub(crate) fn docker_proxy_of(socket: &Socket, proc_root: &Path) -> Option<ProxySpec> {
    let addr = socket.addr?;
    socket.processes().iter().filter(|p| is_docker_proxy(p, proc_root)).find_map(|p| {
        // Read here when the owner walk did not (a table, or `cmdlines(false)`): docker-proxy
        // processes are few.
        let read;
        let args = if p.cmdline.is_empty() {
            let bytes = std::fs::read(proc_root.join(p.pid.to_string()).join("cmdline")).ok()?;
            read = crate::owners::parse_cmdline(&bytes);
            &read
        } else {
            &p.cmdline
        };
        let spec = parse_docker_proxy(args)?;
        let same = spec.protocol == socket.protocol
            && spec.host_port == socket.port
            && same_addr(spec.host_ip, addr);
        same.then_some(spec)
    })
}

/// Whether `a` (from a command line) and `b` (the kernel's) are one address, an IPv4 one
/// written either way.
fn same_addr(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    canonical(a) == canonical(b)
}

/// Root's `docker-proxy`: real uid 0, named so, running a file named so.
fn is_docker_proxy(p: &Process, proc_root: &Path) -> bool {
    const NAME: &str = "docker-proxy";
    if p.uid != 0 || p.comm != NAME {
        return false;
    }
    let Ok(exe) = std::fs::read_link(proc_root.join(p.pid.to_string()).join("exe")) else {
        return false;
    };
    // A binary replaced by an upgrade while it runs reads `/usr/bin/docker-proxy (deleted)`.
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Path::new(exe).file_name().is_some_and(|n| n == NAME)
}

/// The addresses local to a namespace, from its `/proc/PID/net/fib_trie`: each `|-- ADDR`
/// line followed by a `/32 host LOCAL` line.
pub(crate) fn parse_fib_trie_locals(bytes: &[u8]) -> HashSet<Ipv4Addr> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = HashSet::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim_start_matches([' ', '|', '+', '-']);
        if let Ok(a) = line.trim().parse() {
            last = Some(a);
        } else if line.trim() == "/32 host LOCAL"
            && let Some(a) = last
        {
            out.insert(a);
        }
    }
    out
}

/// The addresses in `/proc/PID/net/if_inet6`: 32 hex digits first on each line.
pub(crate) fn parse_if_inet6(bytes: &[u8]) -> HashSet<Ipv6Addr> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            (hex.len() == 32).then_some(())?;
            u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn docker_proxy_command_lines() {
        // Docker 20.10.24 (this project's CI machine), `docker run -p 18080:80`.
        let v4 = parse_docker_proxy(&args(
            "/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 18080 \
             -container-ip 172.17.0.2 -container-port 80",
        ))
        .unwrap();
        assert_eq!(
            v4,
            ProxySpec {
                protocol: Protocol::Tcp,
                host_ip: "0.0.0.0".parse().unwrap(),
                host_port: 18080,
                container_ip: "172.17.0.2".parse().unwrap(),
                container_port: 80,
            }
        );
        let v6 = parse_docker_proxy(&args(
            "/usr/sbin/docker-proxy -proto udp -host-ip :: -host-port 5353 \
             -container-ip 172.17.0.2 -container-port 53",
        ))
        .unwrap();
        assert_eq!((v6.protocol, v6.host_ip), (Protocol::Udp, "::".parse().unwrap()));
        // Docker 28 passes the socket it made (`-use-listen-fd`); `--x=v` is Go flag syntax too.
        let new = parse_docker_proxy(&args(
            "docker-proxy --proto=tcp -host-ip 127.0.0.1 -host-port 8080 -container-ip \
             fd00::2 -container-port 8000 -use-listen-fd",
        ))
        .unwrap();
        assert_eq!((new.container_ip, new.container_port), ("fd00::2".parse().unwrap(), 8000));
        for bad in [
            "docker-proxy -proto sctp -host-ip 0.0.0.0 -host-port 1 -container-ip 1.2.3.4 -container-port 1",
            "docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 1 -container-ip 1.2.3.4",
            "docker-proxy -proto tcp -host-ip nowhere -host-port 1 -container-ip 1.2.3.4 -container-port 1",
            "docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 70000 -container-ip 1.2.3.4 -container-port 1",
            "docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 1 -container-ip 1.2.3.4 -container-port",
            "",
        ] {
            assert_eq!(parse_docker_proxy(&args(bad)), None, "{bad}");
        }
    }

    #[test]
    fn only_roots_docker_proxy_describing_this_socket_is_believed() {
        let mut s = crate::socket::fixtures::listener(18080, 1, &[std::process::id()]);
        let line = "docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 18080 -container-ip \
                    172.17.0.2 -container-port 80";
        if let crate::socket::Owners::Known(p) = &mut s.owners {
            p[0].comm = "docker-proxy".into();
            p[0].cmdline = args(line);
            p[0].uid = 0;
        }
        // This test process is named docker-proxy in its Process record, but its executable
        // is not docker-proxy: not believed, whoever runs it.
        assert_eq!(docker_proxy_of(&s, Path::new("/proc")), None);
        assert!(same_addr("0.0.0.0".parse().unwrap(), "::ffff:0.0.0.0".parse().unwrap()));
        assert!(!same_addr("0.0.0.0".parse().unwrap(), "::".parse().unwrap()));
    }

    /// `/proc/PID/net/fib_trie` of a Docker container on the default bridge (Linux 6.18),
    /// and its `if_inet6`.
    #[test]
    fn local_addresses() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n\
              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n\
        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 172.17.0.0/16 2 0 2\n\
        +-- 172.17.0.0/30 2 0 2\n           |-- 172.17.0.0\n              /16 link UNICAST\n\
           |-- 172.17.0.2\n              /32 host LOCAL\n\
        |-- 172.17.255.255\n           /32 link BROADCAST\n";
        let locals = parse_fib_trie_locals(trie.as_bytes());
        let want: HashSet<Ipv4Addr> =
            ["127.0.0.1", "172.17.0.2"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(locals, want);
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
fe800000000000000042acfffe110002 36 40 20 80     eth0\nshort 1 2 3\n";
        let v6 = parse_if_inet6(inet6.as_bytes());
        assert!(v6.contains(&"::1".parse().unwrap()));
        assert!(v6.contains(&"fe80::42:acff:fe11:2".parse().unwrap()));
        assert_eq!(v6.len(), 2);
        for cut in 0..trie.len() {
            let _ = parse_fib_trie_locals(&trie.as_bytes()[..cut]);
        }
    }
}
