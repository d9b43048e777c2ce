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
//!
//! pasta (rootless Podman's network, any user may run it) listens on the host ports its
//! `-t`/`--tcp-ports` and `-u`/`--udp-ports` options name and delivers to the network
//! namespace it serves: a claim of that user about that user's own socket, read only from a
//! process running the `passt`/`pasta` executable that holds the socket. The namespace is that
//! of one of its own processes (it forks into it), else its `--netns` path; the container, the
//! one its processes' cgroup names.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::process::Process;
use crate::socket::{Protocol, Socket};

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
        let spec = parse_docker_proxy(&cmdline_of(p, proc_root)?)?;
        let same = spec.protocol == socket.protocol
            && spec.host_port == socket.port
            && same_addr(spec.host_ip, addr);
        same.then_some(spec)
    })
}

/// A pasta port spec, one item of `-t`/`-u`: `[ADDR[%IF]/][~]FIRST[-LAST][:TO[-TO_LAST]]`, or
/// `all` / `auto` (every port, to the same port), `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PastaPorts {
    addr: Option<IpAddr>,
    first: u16,
    last: u16,
    /// The namespace port of `first` (later ports follow it).
    to: u16,
    exclude: bool,
}

/// The namespace port pasta's command line forwards `port` (at `addr`) to, for `protocol`.
pub(crate) fn parse_pasta(
    args: &[String],
    protocol: Protocol,
    addr: IpAddr,
    port: u16,
) -> Option<u16> {
    let (short, long) = match protocol {
        Protocol::Tcp => ("-t", "--tcp-ports"),
        Protocol::Udp => ("-u", "--udp-ports"),
        Protocol::Unix => return None,
    };
    let mut specs = Vec::new();
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        let value = if arg == short || arg == long {
            rest.next()?.as_str()
        } else if let Some(v) = arg.strip_prefix(&format!("{long}=")) {
            v
        } else if let Some(v) = arg.strip_prefix(short).filter(|v| !v.is_empty()) {
            v
        } else {
            continue;
        };
        specs.push(value);
    }
    let mut found = None;
    for spec in specs {
        match spec {
            "none" => {}
            "all" | "auto" => found = found.or(Some(port)),
            _ => {
                let items: Vec<PastaPorts> = parse_pasta_spec(spec)?;
                let here = |p: &PastaPorts| {
                    (p.first..=p.last).contains(&port)
                        && p.addr.is_none_or(|a| same_addr(a, addr) || a.is_unspecified())
                };
                if items.iter().any(|p| p.exclude && here(p)) {
                    return None;
                }
                if let Some(p) = items.iter().find(|p| !p.exclude && here(p)) {
                    found = Some(p.to.checked_add(port - p.first)?);
                }
            }
        }
    }
    found
}

/// One `-t`/`-u` value: comma-separated items, an address prefix applying to all of them.
fn parse_pasta_spec(spec: &str) -> Option<Vec<PastaPorts>> {
    let (addr, ports) = match spec.rsplit_once('/') {
        Some((a, p)) => {
            let a = a.split_once('%').map_or(a, |(a, _)| a);
            let a = a.trim_start_matches('[').trim_end_matches(']');
            (Some(a.parse().ok()?), p)
        }
        None => (None, spec),
    };
    let range = |r: &str| -> Option<(u16, u16)> {
        match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|p| (p, p)),
        }
    };
    ports
        .split(',')
        .map(|item| {
            let (exclude, item) = match item.strip_prefix('~') {
                Some(i) => (true, i),
                None => (false, item),
            };
            let (from, to) = item.split_once(':').map_or((item, None), |(f, t)| (f, Some(t)));
            let (first, last) = range(from)?;
            let to = match to {
                Some(t) => range(t)?.0,
                None => first,
            };
            (first <= last).then_some(PastaPorts { addr, first, last, to, exclude })
        })
        .collect()
}

/// Where the socket's pasta delivers it: the namespace port, and the namespace (its inode)
/// when it can be told. `None` unless an owner runs pasta and its command line names this
/// socket's port.
pub(crate) fn pasta_of(socket: &Socket, proc_root: &Path) -> Option<(u16, Option<u64>)> {
    let addr = socket.addr?;
    let pastas: Vec<&Process> =
        socket.processes().iter().map(|p| &**p).filter(|p| is_pasta(p, proc_root)).collect();
    let port = pastas.iter().find_map(|p| {
        parse_pasta(&cmdline_of(p, proc_root)?, socket.protocol, addr, socket.port)
    })?;
    // It forks into the namespace it serves: one of its processes is there.
    let netns = pastas
        .iter()
        .filter_map(|p| crate::discover::ns_of(proc_root, p.pid))
        .find(|ns| *ns != socket.netns);
    Some((port, netns))
}

/// A process running pasta's executable (`passt`, `pasta`, or their `.avx2` builds). Its name
/// first (no read for every other owner), then the executable.
fn is_pasta(p: &Process, proc_root: &Path) -> bool {
    if !(p.comm.starts_with("passt") || p.comm.starts_with("pasta")) {
        return false;
    }
    exe_name(p, proc_root).is_some_and(|n| {
        matches!(n.split_once('.').map_or(n.as_str(), |(n, _)| n), "passt" | "pasta")
    })
}

/// A forwarder's command line: as the owner walk read it, or read here when it did not (a
/// table, or `cmdlines(false)`): forwarders are few.
fn cmdline_of<'p>(p: &'p Process, proc_root: &Path) -> Option<std::borrow::Cow<'p, [String]>> {
    if !p.cmdline.is_empty() {
        return Some(std::borrow::Cow::Borrowed(&p.cmdline));
    }
    let bytes = std::fs::read(proc_root.join(p.pid.to_string()).join("cmdline")).ok()?;
    Some(std::borrow::Cow::Owned(crate::owners::parse_cmdline(&bytes)))
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
    exe_name(p, proc_root).is_some_and(|n| n == NAME)
}

/// The file name of the executable `p` runs (`/proc/PID/exe`); one replaced by an upgrade
/// while it runs reads `/usr/bin/NAME (deleted)`, and is still NAME.
fn exe_name(p: &Process, proc_root: &Path) -> Option<String> {
    let exe = std::fs::read_link(proc_root.join(p.pid.to_string()).join("exe")).ok()?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Some(Path::new(exe).file_name()?.to_string_lossy().into_owned())
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
        if let crate::process::Owners::Known(p) = &mut s.owners {
            let p = std::sync::Arc::make_mut(&mut p[0]);
            p.comm = "docker-proxy".into();
            p.cmdline = args(line);
            p.uid = 0;
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
    fn pasta_command_lines() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let any = IpAddr::from([0, 0, 0, 0]);
        let at = |line: &str, proto, addr, port| parse_pasta(&args(line), proto, addr, port);
        // Rootless Podman's form, and pasta's own examples (man pasta).
        let podman = "pasta --config-net -t 8080-8080:80-80 -u 5353-5353:53-53 --dns-forward \
                      169.254.1.1 -f --netns /run/user/1000/netns/netns-1234";
        assert_eq!(at(podman, Protocol::Tcp, any, 8080), Some(80));
        assert_eq!(at(podman, Protocol::Udp, any, 5353), Some(53));
        assert_eq!(at(podman, Protocol::Tcp, any, 5353), None, "-u is UDP only");
        assert_eq!(at("pasta -t 22", Protocol::Tcp, any, 22), Some(22));
        assert_eq!(at("pasta -t 22:23", Protocol::Tcp, any, 22), Some(23));
        assert_eq!(at("pasta -t 22-80:32-90", Protocol::Tcp, any, 25), Some(35));
        assert_eq!(at("pasta --tcp-ports=8000-8010,~8005", Protocol::Tcp, any, 8003), Some(8003));
        assert_eq!(at("pasta --tcp-ports=8000-8010,~8005", Protocol::Tcp, any, 8005), None);
        assert_eq!(at("pasta -t 127.0.0.1/8080:80", Protocol::Tcp, lo, 8080), Some(80));
        assert_eq!(at("pasta -t 10.0.0.1/8080:80", Protocol::Tcp, lo, 8080), None, "other addr");
        assert_eq!(
            at(
                "pasta -t ::1%lo/8080",
                Protocol::Tcp,
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                8080
            ),
            Some(8080)
        );
        assert_eq!(at("pasta -t all", Protocol::Tcp, any, 443), Some(443));
        assert_eq!(at("pasta -t none", Protocol::Tcp, any, 443), None);
        // Arguments of the command pasta runs are not pasta's.
        assert_eq!(at("pasta --config-net -- nc -t 8080", Protocol::Tcp, any, 8080), None);
        // Garbage never panics.
        for bad in [
            "pasta -t",
            "pasta -t 99999",
            "pasta -t 80-70",
            "pasta -t x/80",
            "pasta -t 65535:65535-1",
            "pasta -t 1-65535:65535",
        ] {
            let _ = at(bad, Protocol::Tcp, any, 80);
        }
        assert_eq!(at("pasta -t 65000-65535:65500", Protocol::Tcp, any, 65535), None, "past u16");
    }

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
