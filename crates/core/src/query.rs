//! The public one-shot query: which sockets to list, from which backend, with or without owners.
//!
//! `Scanner` holds the chosen backend (an open sock_diag socket, or the /proc fallback) so a
//! caller that scans repeatedly opens it once and hears about a fallback once.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::diag::{Dump, SockDiag};
use crate::error::{Error, Result};
use crate::owners;
use crate::procnet;
use crate::socket::{Family, Protocol, Socket, State, StateSet};

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

/// A one-shot listing of sockets in the calling thread's network namespace.
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
    protocols: Vec<Protocol>,
    families: Vec<Family>,
    states: StateSet,
    ports: Vec<u16>,
    owners: bool,
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
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            families: vec![Family::Ipv4, Family::Ipv6],
            states: StateSet::LISTENING,
            ports: Vec::new(),
            owners: true,
            backend: Backend::Auto,
            proc_root: PathBuf::from("/proc"),
            passwd: PathBuf::from("/etc/passwd"),
        }
    }

    /// Which protocols to list. Unix sockets are listed only when asked for here.
    pub fn protocols(mut self, protocols: &[Protocol]) -> Query {
        self.protocols = protocols.to_vec();
        self
    }

    /// Which inet families to list (unix sockets are not affected).
    pub fn families(mut self, families: &[Family]) -> Query {
        self.families = families.to_vec();
        self
    }

    /// Which states to list, filtered by the kernel. The default, [`StateSet::LISTENING`], is
    /// `LISTEN` for TCP and unix and `UNCONN` for UDP. Unix datagram sockets in `UNCONN` are
    /// never listed: they are not listeners.
    pub fn states(mut self, states: StateSet) -> Query {
        self.states = states;
        self
    }

    /// Keep only sockets on this local port (call again for more ports). Unix sockets have
    /// no port and are dropped by a port filter.
    pub fn port(mut self, port: u16) -> Query {
        self.ports.push(port);
        self
    }

    /// Whether to find the processes holding each socket (default true). Without it every
    /// socket's owners are [`UnknownReason::NotResolved`](crate::UnknownReason::NotResolved).
    pub fn owners(mut self, owners: bool) -> Query {
        self.owners = owners;
        self
    }

    /// Which backend to read sockets from (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Query {
        self.backend = backend;
        self
    }

    /// Runs the query: dumps every requested protocol and family, filters, resolves owners and
    /// returns the sockets sorted by protocol, family, address, port and path.
    pub fn run(&self) -> Result<Vec<Socket>> {
        let mut scanner = Scanner::new(self.backend, &self.proc_root)?;
        let mut sockets = scanner.scan(&self.dumps())?;
        if !self.ports.is_empty() {
            sockets.retain(|s| s.protocol != Protocol::Unix && self.ports.contains(&s.port));
        }
        if self.owners {
            owners::resolve(&mut sockets, &self.proc_root, &self.passwd, worker_threads());
        }
        sockets.sort_by(|a, b| {
            (a.protocol, a.family, a.addr, a.port, &a.path, a.inode)
                .cmp(&(b.protocol, b.family, b.addr, b.port, &b.path, b.inode))
        });
        Ok(sockets)
    }

    /// The dumps this query needs.
    fn dumps(&self) -> Vec<Dump> {
        let mut dumps = Vec::new();
        for &protocol in &self.protocols {
            if protocol == Protocol::Unix {
                dumps.push(Dump::Unix { states: self.states.without(State::Unconnected) });
                continue;
            }
            for &family in &self.families {
                if family != Family::Unix {
                    dumps.push(Dump::Inet { protocol, family, states: self.states });
                }
            }
        }
        dumps
    }
}

/// How many threads the owner walk may use: the machine's cores.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The inode of the calling thread's network namespace.
pub(crate) fn current_netns(proc_root: &Path) -> Result<u64> {
    let path = proc_root.join("thread-self/ns/net");
    std::fs::metadata(&path).map(|m| m.ino()).map_err(|e| Error::io(path, e))
}

/// Reads sockets from the backend chosen once, at creation.
pub(crate) struct Scanner {
    diag: Option<SockDiag>,
    backend: Backend,
    proc_net: PathBuf,
    netns: u64,
    /// Dumps that sock_diag cannot do here and that are read from /proc instead.
    fallbacks: Vec<Dump>,
}

impl Scanner {
    pub(crate) fn new(backend: Backend, proc_root: &Path) -> Result<Scanner> {
        let netns = current_netns(proc_root)?;
        let diag = match backend {
            Backend::Proc => None,
            Backend::Netlink => Some(SockDiag::open()?),
            Backend::Auto => match SockDiag::open() {
                Ok(d) => Some(d),
                Err(e) => {
                    log::warn!("{e}; reading /proc/net instead (slower, no socket cookies)");
                    None
                }
            },
        };
        Ok(Scanner { diag, backend, proc_net: proc_root.join("net"), netns, fallbacks: Vec::new() })
    }

    /// Runs `dumps` and returns their sockets in order.
    pub(crate) fn scan(&mut self, dumps: &[Dump]) -> Result<Vec<Socket>> {
        let mut out = Vec::new();
        for &dump in dumps {
            let Some(diag) = self.diag.as_mut().filter(|_| !self.fallbacks.contains(&dump)) else {
                procnet::read(&self.proc_net, dump, self.netns, &mut out)?;
                continue;
            };
            match diag.dump(dump, self.netns, &mut out) {
                Ok(()) => {}
                Err(Error::Netlink { source, .. })
                    if self.backend == Backend::Auto && module_missing(&source) =>
                {
                    log::warn!(
                        "sock_diag cannot dump {} here ({source}); reading /proc/net instead",
                        dump.name()
                    );
                    self.fallbacks.push(dump);
                    procnet::read(&self.proc_net, dump, self.netns, &mut out)?;
                }
                Err(e) => return Err(e),
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
