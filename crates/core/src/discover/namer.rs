//! Naming containers: of a namespace (from the cgroup of a process inside, confirmed by the
//! Docker daemon), of a socket whose namespace is no container's (from its owners' cgroups),
//! and behind a published port (the container holding docker-proxy's `-container-ip`: from
//! the daemon's bridge networks, else from the namespace holding the address).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{container_id, ns_of};
use crate::forward;
use crate::owners::{self, list_pids};
use crate::process::{ContainerRef, Forward, Forwarder, Runtime};
use crate::socket::Socket;

/// Largest `fib_trie` read: a container's is well under a page; a host's with many routes
/// grows, but it is never read (the host's namespace is skipped).
const FIB_TRIE_MAX: u64 = 1 << 20;

/// A process in the namespace, created by root, that holds `ip` as a local address (the
/// lowest pid found): `(pid, netns inode)`. The caller's own namespace is not looked in, nor
/// one another user created (anyone may make a namespace and give it any address).
fn netns_holding(ip: IpAddr, proc_root: &Path) -> Option<(u32, u64)> {
    use std::io::Read;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    let mut seen = HashSet::from([own]);
    let mut pids = list_pids(proc_root).ok()?;
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Some(netns) = ns_of(proc_root, pid) else { continue };
        if !seen.insert(netns) {
            continue;
        }
        let Ok(ns_file) = std::fs::File::open(dir.join("ns/net")) else { continue };
        if crate::sys::ns_owner_uid(&ns_file).ok() != Some(0) {
            continue;
        }
        let file = if ip.is_ipv4() { "net/fib_trie" } else { "net/if_inet6" };
        let mut bytes = Vec::new();
        let Ok(f) = std::fs::File::open(dir.join(file)) else { continue };
        if f.take(FIB_TRIE_MAX).read_to_end(&mut bytes).is_err() {
            continue;
        }
        let holds = match ip {
            IpAddr::V4(a) => forward::parse_fib_trie_locals(&bytes).contains(&a),
            IpAddr::V6(a) => forward::parse_if_inet6(&bytes).contains(&a),
        };
        if holds {
            return Some((pid, netns));
        }
    }
    None
}

/// Names the containers namespaces belong to: the id from the cgroup of a process inside,
/// and the name from the Docker daemon when one is configured and answers (else the short
/// id, as `docker ps` shows it).
///
/// A cgroup path is chosen by whoever creates the cgroup: a user with a delegated subtree can
/// name one `docker-<a real id>.scope`. So a name from the daemon is given only when the
/// container's init runs in the namespace being named; the short id alone (no daemon, or one
/// that does not know the id) is unverified. The daemon is asked once per id.
#[derive(Debug, Default)]
pub(crate) struct Namer {
    /// The Docker daemon's socket, when names should be asked for.
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub(crate) docker: Option<PathBuf>,
    /// Container id → its name and init pid, as the daemon said; `None`: it did not say.
    known: HashMap<String, Option<(String, u32)>>,
    /// Every container endpoint's addresses as the daemon last listed them (`None`: it did not
    /// answer), and when it was asked.
    addresses: Option<(Instant, Option<HashMap<IpAddr, ContainerRef>>)>,
}

/// How long the daemon's list of container addresses (or its silence) stands for an address
/// missing from it before it is asked again: a container that just started is found at once,
/// and addresses no container has, or a daemon that does not answer, cost at most one request
/// per this.
const ADDRESSES_FRESH: Duration = Duration::from_millis(500);

impl Namer {
    pub(crate) fn new(docker: Option<PathBuf>) -> Namer {
        Namer { docker, known: HashMap::new(), addresses: None }
    }

    /// The container of namespace `netns`, from the cgroup of process `pid` inside it.
    pub(crate) fn container_of(
        &mut self,
        proc_root: &Path,
        pid: u32,
        netns: u64,
    ) -> Option<ContainerRef> {
        let cgroup = std::fs::read(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        let id = container_id(&cgroup)?;
        let confirmed = |init: u32| ns_of(proc_root, init) == Some(netns);
        let known = match self.known.get(&id) {
            // Asked before, and its init is still in this namespace.
            Some(Some((_, init))) if confirmed(*init) => self.known[&id].clone(),
            Some(None) => None,
            // New, or restarted (a new init): ask.
            _ => {
                let answer = self.ask(&id);
                self.known.insert(id.clone(), answer.clone());
                answer
            }
        };
        match known {
            Some((name, init)) if confirmed(init) => Some(ContainerRef::new(id, name)),
            Some((name, _)) => {
                log::warn!(
                    "process {pid}'s cgroup names container {name} ({}), but container's \
                     network namespace is another: not naming network namespace {netns}",
                    &id[..12]
                );
                None
            }
            None => Some(ContainerRef::new(id.clone(), &id[..12])),
        }
    }

    /// The container of a socket read from a namespace no container was found for (the host's,
    /// shared by `--network host` containers and pods): the one its owners' cgroups name, when
    /// every owner is in it. Named by the Docker daemon when it runs the container (the id
    /// comes from a path only dockerd creates: no confirmation needed), by short id otherwise
    /// and always for a user's delegated cgroup, which the system daemon does not run.
    ///
    /// And a socket a root docker-proxy holds for a published port gets `forwards_to`: the
    /// container holding its `-container-ip`, from the daemon when it answers (it is
    /// authoritative: an address it does not list is no container's), else from the network
    /// namespace that holds the address.
    pub(crate) fn attribute(&mut self, socket: &mut Socket, proc_root: &Path) {
        if let Some((port, netns)) = forward::pasta_of(socket, proc_root) {
            let container = netns.and_then(|ns| self.container_in(ns, proc_root)).map(Arc::new);
            let any: IpAddr = match socket.addr {
                Some(IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
            };
            socket.forwards_to = Some(Arc::new(Forward {
                via: Forwarder::Pasta,
                protocol: socket.protocol,
                addr: any,
                port,
                container,
            }));
        }
        if let Some(spec) = forward::docker_proxy_of(socket, proc_root) {
            let container = self.container_at(spec.container_ip, proc_root).map(Arc::new);
            socket.forwards_to = Some(Arc::new(Forward {
                via: Forwarder::DockerProxy,
                protocol: spec.protocol,
                addr: spec.container_ip,
                port: spec.container_port,
                container,
            }));
        }
        if socket.container.is_some() {
            return;
        }
        let mut cgroups = socket.processes().iter().map(|p| p.cgroup.as_ref());
        let Some(Some(first)) = cgroups.next() else { return };
        let Some(id) = first.container_id.clone() else { return };
        if !cgroups.all(|c| c.is_some_and(|c| c.container_id.as_ref() == Some(&id))) {
            return;
        }
        let ask = first.runtime == Some(Runtime::Docker) && first.delegated_uid.is_none();
        let name = if ask { self.name_of(&id) } else { None };
        let name = name.unwrap_or_else(|| id[..12].to_owned());
        socket.container = Some(Arc::new(ContainerRef::new(id, name)));
    }

    /// The container of network namespace `netns` (a pasta's): the one a process in it (other
    /// than pasta's own) has in its cgroup, with its short id as its name; named by the
    /// daemon only when it is Docker's and not in a user's delegated subtree.
    fn container_in(&mut self, netns: u64, proc_root: &Path) -> Option<ContainerRef> {
        let pids = list_pids(proc_root).ok()?;
        let c = pids
            .into_iter()
            .filter(|pid| crate::discover::ns_of(proc_root, *pid) == Some(netns))
            .filter_map(|pid| std::fs::read(proc_root.join(pid.to_string()).join("cgroup")).ok())
            .filter_map(|bytes| owners::parse_cgroup(&bytes))
            .find(|c| c.container_id.is_some())?;
        let id = c.container_id?;
        let ask = c.runtime == Some(Runtime::Docker) && c.delegated_uid.is_none();
        let name = if ask { self.name_of(&id) } else { None };
        let name = name.unwrap_or_else(|| id.chars().take(12).collect());
        Some(ContainerRef::new(id, name))
    }

    /// The Docker container that holds address `ip`: from the daemon's list when it answers
    /// (asked again at most every [`ADDRESSES_FRESH`] while an address is missing from it),
    /// else from the namespaces.
    fn container_at(&mut self, ip: IpAddr, proc_root: &Path) -> Option<ContainerRef> {
        let stale = self.addresses.as_ref().is_none_or(|(at, list)| {
            !list.as_ref().is_some_and(|l| l.contains_key(&ip)) && at.elapsed() >= ADDRESSES_FRESH
        });
        if stale {
            self.addresses = Some((Instant::now(), self.list_addresses()));
        }
        if let Some((_, Some(list))) = &self.addresses {
            return list.get(&ip).cloned();
        }
        let Some((pid, netns)) = netns_holding(ip, proc_root) else {
            log::debug!("no network namespace created by root holds {ip}");
            return None;
        };
        let cgroup = std::fs::read(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        let c = owners::parse_cgroup(&cgroup)?;
        if c.runtime != Some(Runtime::Docker) || c.delegated_uid.is_some() {
            log::debug!(
                "{ip} is in network namespace {netns}, whose process {pid} is in no Docker container"
            );
            return None;
        }
        self.container_of(proc_root, pid, netns)
    }

    /// Every container endpoint's addresses, from the daemon; `None` when it does not answer.
    #[cfg(feature = "docker")]
    fn list_addresses(&self) -> Option<HashMap<IpAddr, ContainerRef>> {
        let socket = self.docker.as_ref()?;
        match crate::docker::endpoint_addresses(socket) {
            Ok(list) => Some(
                list.into_iter()
                    .flat_map(|c| {
                        let r = ContainerRef::new(c.id, c.name);
                        c.addrs.into_iter().map(move |a| (a, r.clone()))
                    })
                    .collect(),
            ),
            Err(e) => {
                log::debug!("{e}; containers of published ports found from their namespaces");
                None
            }
        }
    }

    #[cfg(not(feature = "docker"))]
    fn list_addresses(&self) -> Option<HashMap<IpAddr, ContainerRef>> {
        None
    }

    /// The name the daemon gives container `id`, asked once.
    fn name_of(&mut self, id: &str) -> Option<String> {
        if !self.known.contains_key(id) {
            let answer = self.ask(id);
            self.known.insert(id.to_owned(), answer);
        }
        self.known.get(id)?.as_ref().map(|(name, _)| name.clone())
    }

    /// The container's name and init pid, from the daemon.
    #[cfg(feature = "docker")]
    fn ask(&self, id: &str) -> Option<(String, u32)> {
        let socket = self.docker.as_ref()?;
        match crate::docker::inspect(socket, id) {
            Ok(c) => Some((c.name, c.pid)),
            Err(e) => {
                log::debug!("container {id}: {e}; using its short id as its name");
                None
            }
        }
    }

    #[cfg(not(feature = "docker"))]
    fn ask(&self, _id: &str) -> Option<(String, u32)> {
        None
    }
}
