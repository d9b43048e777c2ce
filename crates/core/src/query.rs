//! The public one-shot query: which sockets to list, from which backend, with or without owners.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::discover::{self, Namer};
use crate::error::Result;
use crate::filter::Filter;
use crate::netns::Netns;
use crate::owners::{self, Fast, OwnerLookup};
use crate::socket::{Family, Protocol, Socket, StateSet};
use crate::source::{Backend, Scanner, Scope};

/// A one-shot listing of sockets in the calling thread's network namespace (or another, or
/// all of them).
///
/// The defaults give what `ss -tulnp` shows: TCP listeners and unconnected UDP sockets, IPv4
/// and IPv6, with their owning processes.
///
/// ```no_run
/// use portwatch_core::{Protocol, Query};
///
/// let sockets = Query::new().protocols(&[Protocol::Tcp]).port(22).run()?;
/// for s in &sockets {
///     println!("{} {:?}", s.local_display(), s.pids());
/// }
/// # Ok::<(), portwatch_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Query {
    filter: Filter,
    scope: Scope,
    /// The Docker daemon's socket, for naming containers found by `all_netns`.
    docker: Option<PathBuf>,
    owners: bool,
    lookup: OwnerLookup,
    cmdlines: bool,
    cgroups: bool,
    backend: Backend,
    proc_root: PathBuf,
    passwd: PathBuf,
}

impl Default for Query {
    fn default() -> Self {
        Query::new()
    }
}

impl Query {
    /// TCP and UDP, IPv4 and IPv6, listening (TCP `LISTEN`, UDP `UNCONN`), with owners.
    pub fn new() -> Query {
        Query {
            filter: Filter::new(),
            scope: Scope::Current,
            docker: None,
            owners: true,
            lookup: OwnerLookup::Auto,
            cmdlines: true,
            cgroups: true,
            backend: Backend::Auto,
            proc_root: PathBuf::from("/proc"),
            passwd: PathBuf::from("/etc/passwd"),
        }
    }

    /// Read this network namespace instead of the calling thread's. Owners are still found
    /// in this process's `/proc`.
    pub fn netns(mut self, netns: &Netns) -> Query {
        self.scope = Scope::One(netns.clone());
        self
    }

    /// Read every network namespace on the host: those of all processes (`/proc/*/ns/net`)
    /// and the named ones under `/run/netns`. Each socket carries its namespace's inode and,
    /// when a container runtime's cgroup names one, its container. (In any namespace, a
    /// socket whose namespace is no container's carries the container its owners' cgroups
    /// name, when they all name the same one: a host-network container.) Needs `CAP_SYS_ADMIN` (to
    /// enter them) and `CAP_SYS_PTRACE` (to see other users' namespace links).
    pub fn all_netns(mut self) -> Query {
        self.scope = Scope::All;
        self
    }

    /// Ask the Docker daemon listening on `socket` for container names: of the namespaces
    /// [`all_netns`](Self::all_netns) finds, and of the containers owners' cgroups name
    /// (without it, a container is named by its short id). Feature `docker`.
    #[cfg(feature = "docker")]
    pub fn docker_names(mut self, socket: impl AsRef<std::path::Path>) -> Query {
        self.docker = Some(socket.as_ref().to_owned());
        self
    }

    /// The whole selection at once (replaces what the other selection methods set).
    pub fn filter(mut self, filter: Filter) -> Query {
        self.filter = filter;
        self
    }

    /// Which protocols to list. Unix sockets are listed only when asked for here.
    pub fn protocols(mut self, protocols: &[Protocol]) -> Query {
        self.filter = self.filter.protocols(protocols);
        self
    }

    /// Which inet families to list (unix sockets are not affected).
    pub fn families(mut self, families: &[Family]) -> Query {
        self.filter = self.filter.families(families);
        self
    }

    /// Which states to list, filtered by the kernel: see [`Filter::states`].
    pub fn states(mut self, states: StateSet) -> Query {
        self.filter = self.filter.states(states);
        self
    }

    /// Keep only sockets on this local port (call again for more ports). Unix sockets have
    /// no port and are dropped by a port filter.
    pub fn port(mut self, port: u16) -> Query {
        self.filter = self.filter.port(port);
        self
    }

    /// Whether to find the processes holding each socket (default true). Without it every
    /// socket's owners are [`UnknownReason::NotResolved`](crate::UnknownReason::NotResolved).
    pub fn owners(mut self, owners: bool) -> Query {
        self.owners = owners;
        self
    }

    /// How owners are found (default [`OwnerLookup::Auto`]): one pass of a BPF iterator over
    /// every process's open files, or a walk of `/proc/*/fd`. Either way the processes are
    /// described from `/proc`, and an owner that cannot be found says why.
    /// [`run`](Self::run) fails when [`OwnerLookup::Bpf`] cannot load.
    pub fn owner_lookup(mut self, how: OwnerLookup) -> Query {
        self.lookup = how;
        self
    }

    /// Whether to read each owner's command line (default true). Reading it costs about a
    /// fifth of the owner lookup; without it [`Process::cmdline`](crate::Process::cmdline) is
    /// empty.
    pub fn cmdlines(mut self, cmdlines: bool) -> Query {
        self.cmdlines = cmdlines;
        self
    }

    /// Whether to read each owner's cgroup (default true): [`Process::cgroup`](crate::Process::cgroup),
    /// and the container of a socket in a namespace that is no container's. One more small
    /// file per owner; without it both are `None`.
    pub fn cgroups(mut self, cgroups: bool) -> Query {
        self.cgroups = cgroups;
        self
    }

    /// Which backend to read sockets from (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Query {
        self.backend = backend;
        self
    }

    /// Runs the query: checks the filter (a backwards port range, a user name missing from
    /// `/etc/passwd` and a pid that is no process are errors), dumps every requested protocol
    /// and family, filters, resolves owners and returns the sockets sorted by namespace,
    /// protocol, family, address, port and path.
    pub fn run(&self) -> Result<Vec<Socket>> {
        let started = Instant::now();
        let filter = self.filter.clone().resolved(&self.proc_root, &self.passwd)?;
        let mut namer = Namer::new(self.docker.clone());
        std::thread::scope(|scope| {
            // The BPF owner lookup's load and pass need nothing the dump finds: they run
            // beside it, on the second core (`owners::iterator_beside`). `_waiting` is
            // dropped, telling it to stop, when this returns before joining it.
            let how = self.lookup;
            let proc_root = &self.proc_root;
            let (_waiting, caller) = std::sync::mpsc::channel();
            let beside = (self.owners && owners::may_use_iterator(how, proc_root)).then(|| {
                std::thread::Builder::new()
                    .name("pw-owners".into())
                    .spawn_scoped(scope, move || {
                        owners::iterator_beside(how, proc_root, true, &caller)
                    })
            });
            let mut sockets = self.dump(&filter, &mut namer)?;
            let dumped = Instant::now();
            log::debug!("dumped {} sockets in {:?}", sockets.len(), dumped - started);
            sort(&mut sockets);
            if !self.owners {
                return Ok(sockets);
            }
            let users = owners::read_users(&self.passwd);
            let beside = match beside {
                None => None,
                Some(Ok(side)) => side.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?,
                // Refused (a pids limit): loaded here, after the dump, for a pass of the
                // sockets it found.
                Some(Err(e)) => {
                    log::debug!("BPF owner lookup after the dump, not beside it: {e}");
                    let (_waiting, caller) = std::sync::mpsc::channel();
                    owners::iterator_beside(how, &self.proc_root, false, &caller)?
                }
            };
            let detail = owners::Detail { cmdline: self.cmdlines, cgroup: self.cgroups };
            let threads = owners::worker_threads();
            owners::resolve(&mut sockets, beside, &users, &self.proc_root, detail, threads);
            for s in &mut sockets {
                namer.attribute(s, &self.proc_root);
            }
            log::debug!("resolved owners in {:?}", dumped.elapsed());
            sockets.retain(|s| filter.owner_matches(s, &self.proc_root));
            Ok(sockets)
        })
    }

    /// Every socket of the scope's namespaces that `filter` matches (owners not looked up).
    fn dump(&self, filter: &Filter, namer: &mut Namer) -> Result<Vec<Socket>> {
        let started = Instant::now();
        let namespaces = match &self.scope {
            Scope::Current => vec![Netns::current()?],
            Scope::One(ns) => vec![ns.clone()],
            Scope::All => discover::all(&self.proc_root, namer)?,
        };
        let all = matches!(self.scope, Scope::All);
        let dumps = filter.dumps();
        let mut sockets = Vec::new();
        for ns in &namespaces {
            match Scanner::new(self.backend, ns).and_then(|mut s| s.scan(&dumps)) {
                // Moved, not copied, when it is the first: at 10 000 sockets a copy costs
                // more than the sort (~2 MB of fresh pages, faulted in one by one).
                Ok(found) if sockets.is_empty() => sockets = found,
                Ok(found) => sockets.extend(found),
                Err(e) if all => discover::skip(ns.inode(), e)?,
                Err(e) => return Err(e),
            }
        }
        log::trace!("read {} namespaces in {:?}", namespaces.len(), started.elapsed());
        sockets.retain(|s| filter.matches(s));
        Ok(sockets)
    }
}

/// Sorts `sockets` into the order [`Query::run`] returns: namespace, protocol, family,
/// address, port, path, then the inode, which makes the order total. Comparing those fields
/// pair by pair, and swapping 200-byte sockets about, took 2-3 ms at 10 000 sockets. A
/// listing has few distinct (namespace, protocol, family, address): each gets a rank, so
/// that one number (rank and port) orders nearly every pair, and the sockets are moved once,
/// into their places, after the sort of small keys: ~1 ms.
fn sort(sockets: &mut [Socket]) {
    type Group = (u64, Protocol, Family, Option<std::net::IpAddr>);
    // Numbered as first met, then ranked.
    let mut ids: HashMap<Group, u64, Fast> = HashMap::default();
    let mut keys: Vec<(u64, u64, u32)> = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let next = ids.len() as u64;
            let id = *ids.entry((s.netns, s.protocol, s.family, s.addr)).or_insert(next);
            (id << 16 | u64::from(s.port), s.inode, i as u32)
        })
        .collect();
    let mut groups: Vec<(Group, u64)> = ids.into_iter().collect();
    groups.sort_unstable();
    let mut rank = vec![0; groups.len()];
    for (r, (_, id)) in groups.iter().enumerate() {
        rank[*id as usize] = r as u64;
    }
    for key in &mut keys {
        key.0 = rank[(key.0 >> 16) as usize] << 16 | (key.0 & 0xffff);
    }
    // Paths differ only among unix sockets (port 0, one rank per namespace).
    keys.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| sockets[a.2 as usize].path.cmp(&sockets[b.2 as usize].path))
            .then(a.1.cmp(&b.1))
    });
    // Each socket to its place, following where earlier swaps moved it (as std's
    // sort_by_cached_key does).
    for i in 0..keys.len() {
        let mut from = keys[i].2;
        while (from as usize) < i {
            from = keys[from as usize].2;
        }
        keys[i].2 = from;
        sockets.swap(i, from as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::fixtures::listener;

    /// The sort orders as the fields themselves do, whatever the mix: both families, mapped
    /// and high addresses, unix paths, namespaces, equal fields down to the inode.
    #[test]
    fn the_sort_orders_as_the_fields_do() {
        let mut all = Vec::new();
        for (i, addr) in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "::", "::1", "::ffff:1.2.3.4"]
            .into_iter()
            .chain(["ffff::1", "10.0.0.1"])
            .enumerate()
        {
            for (port, netns) in [(80, 2), (80, 1), (443, 1), (1, 1)] {
                let mut s = listener(port, i as u64 + 10 * u64::from(port), &[]);
                s.addr = Some(addr.parse().unwrap());
                s.family = if addr.contains(':') { Family::Ipv6 } else { Family::Ipv4 };
                s.netns = netns;
                all.push(s.clone());
                s.protocol = Protocol::Udp;
                all.push(s);
            }
        }
        for (inode, path) in
            [(7, Some("/run/b")), (6, Some("/run/a")), (5, None), (4, Some("/run/a"))]
        {
            let mut s = listener(0, inode, &[]);
            (s.protocol, s.family, s.addr) = (Protocol::Unix, Family::Unix, None);
            s.path = path.map(str::to_owned);
            all.push(s);
        }
        // Two sharing a port (SO_REUSEPORT): the inode orders them.
        for inode in [9_000_002, 9_000_001] {
            let mut s = listener(8080, 0, &[]);
            s.inode = inode;
            all.push(s);
        }
        let mut by_fields = all.clone();
        by_fields.sort_by(|a, b| {
            (a.netns, a.protocol, a.family, a.addr, a.port, &a.path, a.inode)
                .cmp(&(b.netns, b.protocol, b.family, b.addr, b.port, &b.path, b.inode))
        });
        all.reverse();
        sort(&mut all);
        let ids =
            |v: &[Socket]| v.iter().map(|s| (s.netns, s.inode, s.protocol)).collect::<Vec<_>>();
        assert_eq!(ids(&all), ids(&by_fields));
    }
}
