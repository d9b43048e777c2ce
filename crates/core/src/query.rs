//! The public one-shot query: which sockets to list, from which backend, with or without owners.
//!
//! `Scanner` holds the chosen backend (an open sock_diag socket, or the /proc fallback) so a
//! caller that scans repeatedly opens it once and hears about a fallback once.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::diag::{Dump, SockDiag};
use crate::discover::{self, Namer};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::netns::Netns;
use crate::owners;
use crate::procnet;
use crate::socket::ContainerRef;
use crate::socket::{Family, Protocol, Socket, StateSet};
use std::sync::Arc;

/// Where sockets are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// NETLINK_SOCK_DIAG, falling back to /proc/net (with one warning) for any dump it cannot
    /// do: no sock_diag in the kernel, or a protocol module (udp_diag, unix_diag) missing.
    #[default]
    Auto,
    /// NETLINK_SOCK_DIAG only; an error if it is not available.
    Netlink,
    /// /proc/net/{tcp,tcp6,udp,udp6,unix} only: slower (every read walks the whole socket hash)
    /// and without socket cookies.
    Proc,
}

/// Which network namespaces a [`Query`] or [`Watcher`](crate::Watcher) reads.
#[derive(Debug, Clone, Default)]
pub(crate) enum Scope {
    /// The calling thread's.
    #[default]
    Current,
    /// One named namespace.
    One(Netns),
    /// Every namespace on the host, found by [`discover`](crate::discover).
    All,
}

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
    cmdlines: bool,
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
            cmdlines: true,
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
    /// when a container runtime's cgroup names one, its container. Needs `CAP_SYS_ADMIN` (to
    /// enter them) and `CAP_SYS_PTRACE` (to see other users' namespace links).
    pub fn all_netns(mut self) -> Query {
        self.scope = Scope::All;
        self
    }

    /// With [`all_netns`](Self::all_netns), ask the Docker daemon listening on `socket` for
    /// container names (without it, a container is named by its short id). Feature `docker`.
    #[cfg(feature = "docker")]
    pub fn docker_names(mut self, socket: impl AsRef<Path>) -> Query {
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

    /// Whether to read each owner's command line (default true). Reading it costs about a
    /// fifth of the owner lookup; without it [`Process::cmdline`](crate::Process::cmdline) is
    /// empty.
    pub fn cmdlines(mut self, cmdlines: bool) -> Query {
        self.cmdlines = cmdlines;
        self
    }

    /// Which backend to read sockets from (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Query {
        self.backend = backend;
        self
    }

    /// Runs the query: dumps every requested protocol and family, filters, resolves owners and
    /// returns the sockets sorted by namespace, protocol, family, address, port and path.
    pub fn run(&self) -> Result<Vec<Socket>> {
        let started = Instant::now();
        let namespaces = match &self.scope {
            Scope::Current => vec![Netns::current()?],
            Scope::One(ns) => vec![ns.clone()],
            Scope::All => discover::all(&self.proc_root, &mut Namer::new(self.docker.clone()))?,
        };
        let all = matches!(self.scope, Scope::All);
        let dumps = self.filter.dumps();
        let mut sockets = Vec::new();
        for ns in &namespaces {
            match Scanner::new(self.backend, ns).and_then(|mut s| s.scan(&dumps)) {
                Ok(found) => sockets.extend(found),
                Err(e) if all => discover::skip(ns.inode(), e)?,
                Err(e) => return Err(e),
            }
        }
        log::trace!("read {} namespaces in {:?}", namespaces.len(), started.elapsed());
        sockets.retain(|s| self.filter.matches(s));
        let dumped = Instant::now();
        log::debug!("dumped {} sockets in {:?}", sockets.len(), dumped - started);
        if self.owners {
            let detail = owners::Detail { cmdline: self.cmdlines };
            owners::resolve(&mut sockets, &self.proc_root, &self.passwd, detail, worker_threads());
            log::debug!("resolved owners in {:?}", dumped.elapsed());
            if let Some((pid, children)) = self.filter.owner_pid() {
                sockets.retain(|s| owners::held_by(s, pid, children, &self.proc_root));
            }
        }
        // The inode makes the order total, so an unstable sort gives the same result.
        sockets.sort_unstable_by(|a, b| {
            (a.netns, a.protocol, a.family, a.addr, a.port, &a.path, a.inode)
                .cmp(&(b.netns, b.protocol, b.family, b.addr, b.port, &b.path, b.inode))
        });
        Ok(sockets)
    }
}

/// How many threads the owner walk may use: the CPUs this thread may run on. (One
/// `sched_getaffinity`; `std::thread::available_parallelism` also reads cgroup files, which
/// costs more than the whole walk saves on an idle machine.)
pub(crate) fn worker_threads() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).count()
        })
        .unwrap_or(1)
        .max(1)
}

/// Reads sockets from the backend chosen once, at creation.
pub(crate) struct Scanner {
    diag: Option<SockDiag>,
    backend: Backend,
    /// Where the /proc fallback reads the namespace, if it can.
    proc_net: Option<PathBuf>,
    netns: u64,
    /// Stamped on every socket read.
    container: Option<Arc<ContainerRef>>,
    /// Dumps that sock_diag cannot do here and that are read from /proc instead.
    fallbacks: Vec<Dump>,
}

impl Scanner {
    pub(crate) fn new(backend: Backend, ns: &Netns) -> Result<Scanner> {
        let (netns, proc_net) = (ns.inode(), ns.proc_net().map(Path::to_owned));
        let diag = match backend {
            Backend::Proc => None,
            Backend::Netlink => Some(ns.enter(SockDiag::open)??),
            Backend::Auto => match ns.enter(SockDiag::open)? {
                Ok(d) => Some(d),
                Err(e) => {
                    log::warn!("{e}; reading /proc/net instead (slower, no socket cookies)");
                    None
                }
            },
        };
        if diag.is_none() && proc_net.is_none() {
            return Err(Error::InvalidSetting {
                setting: "backend",
                reason: format!(
                    "the /proc backend reads {} only through a process inside it: name it by pid",
                    ns.path().display()
                ),
            });
        }
        Ok(Scanner {
            diag,
            backend,
            proc_net,
            netns,
            container: ns.container_label(),
            fallbacks: Vec::new(),
        })
    }

    /// Runs `dumps` and returns their sockets in order.
    pub(crate) fn scan(&mut self, dumps: &[Dump]) -> Result<Vec<Socket>> {
        let mut out = Vec::new();
        for &dump in dumps {
            let proc_net = self.proc_net.as_deref();
            let Some(diag) = self.diag.as_mut().filter(|_| !self.fallbacks.contains(&dump)) else {
                // `new` made sure one of the two backends is there.
                if let Some(p) = proc_net {
                    procnet::read(p, dump, self.netns, &mut out)?;
                }
                continue;
            };
            let t = Instant::now();
            let r = diag.dump(dump, self.netns, &mut out);
            log::trace!("sock_diag {} dump took {:?}", dump.name(), t.elapsed());
            match r {
                Ok(()) => {}
                Err(Error::Netlink { source, .. })
                    if self.backend == Backend::Auto && module_missing(&source) =>
                {
                    log::warn!(
                        "sock_diag cannot dump {} here ({source}); reading /proc/net instead",
                        dump.name()
                    );
                    self.fallbacks.push(dump);
                    match proc_net {
                        Some(p) => procnet::read(p, dump, self.netns, &mut out)?,
                        None => return Err(Error::Netlink { request: dump.name(), source }),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(c) = &self.container {
            for s in &mut out {
                s.container = Some(Arc::clone(c));
            }
        }
        Ok(out)
    }
}

/// Errors the kernel gives when the diag module for a protocol is not loaded or not built.
fn module_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            nix::libc::ENOENT | nix::libc::EOPNOTSUPP | nix::libc::EINVAL | nix::libc::EAFNOSUPPORT
        )
    )
}
