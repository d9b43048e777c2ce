//! The dump source: one namespace's sockets from sock_diag, or from /proc/net where sock_diag
//! cannot answer, chosen once when the namespace is opened.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::Dump;
use super::diag::SockDiag;
use super::procnet;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::ContainerRef;
use crate::socket::Socket;

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

/// Reads sockets from the backend chosen once, at creation.
pub(crate) struct Scanner {
    diag: Option<SockDiag>,
    backend: Backend,
    /// Where the /proc fallback reads the namespace, if it can.
    proc_net: Option<PathBuf>,
    netns: u64,
    /// Stamped on every socket read.
    container: Option<Arc<ContainerRef>>,
    /// The namespace's `/run/netns` name, stamped on every socket like the container.
    netns_name: Option<Arc<str>>,
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
            netns_name: ns.name_label(),
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
        if let Some(name) = &self.netns_name {
            for s in &mut out {
                s.netns_name = Some(Arc::clone(name));
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
