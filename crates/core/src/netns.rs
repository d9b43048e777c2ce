//! Network namespaces: naming one, and creating sockets inside it.
//!
//! A netlink socket belongs to the namespace of the thread that created it, for its whole
//! life. So to read another namespace, a short-lived dedicated thread `setns`es into it,
//! creates what is needed and returns it; the caller's threads never change namespace.
//! Owners are still found in this process's `/proc`, which sees the host's pids (and, through
//! `NSpid`, the pid inside the container).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};
use crate::process::ContainerRef;

/// A network namespace to read sockets from.
///
/// ```no_run
/// use portwatch_core::{Netns, Query};
///
/// let ns = Netns::from_path("/run/netns/blue")?;
/// let sockets = Query::new().netns(&ns).run()?;
/// # Ok::<(), portwatch_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Netns {
    /// `None`: the namespace of whichever thread does the work (the caller's).
    file: Option<Arc<File>>,
    path: PathBuf,
    inode: u64,
    /// `/proc/PID/net` of a process inside, for the /proc fallback backend.
    proc_net: Option<PathBuf>,
    /// The container this is the namespace of, stamped on every socket read here.
    container: Option<Arc<ContainerRef>>,
    /// Its name under `/run/netns`, when it is bound there; stamped like the container.
    name: Option<Arc<str>>,
}

/// Where `ip netns add` binds named namespaces.
pub(crate) const NAMED_NETNS_DIR: &str = "/run/netns";

/// The name under `dir` (`/run/netns`) that namespace `inode` is bound to, if any. Only
/// mount points of nsfs count: a regular file left behind (or not yet mounted over) by `ip
/// netns` names nothing.
pub(crate) fn name_in(dir: &Path, inode: u64) -> Option<Arc<str>> {
    let nsfs = std::fs::metadata("/proc/self/ns/net").ok()?.dev();
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = std::fs::metadata(entry.path()).ok()?;
        let name = entry.file_name();
        (meta.ino() == inode && meta.dev() == nsfs).then(|| name.to_str().map(Arc::from))?
    })
}

/// Opens a namespace file and reads its inode, naming what is wrong when it cannot.
fn open_file(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NamespaceNotFound { path: path.to_owned() },
        std::io::ErrorKind::PermissionDenied => Error::NamespacePermission {
            path: path.to_owned(),
            need: "CAP_SYS_PTRACE (to open another user's /proc/PID/ns/net)",
        },
        _ => Error::io(path, e),
    })?;
    let inode = file.metadata().map_err(|e| Error::io(path, e))?.ino();
    Ok((file, inode))
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> Result<Netns> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let inode = std::fs::metadata(&path)
            .map_err(|source| Error::ProcUnavailable { path: path.clone(), source })?
            .ino();
        Ok(Netns {
            file: None,
            path,
            inode,
            proc_net: Some(PathBuf::from("/proc/net")),
            container: None,
            name: None,
        })
    }

    /// The namespace bound at `path`: `/run/netns/NAME` (from `ip netns add`),
    /// `/proc/PID/ns/net`, `/var/run/docker/netns/ID`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref().to_owned();
        let (file, inode) = open_file(&path)?;
        let name = name_in(Path::new(NAMED_NETNS_DIR), inode);
        let ns = Netns {
            inode,
            file: Some(Arc::new(file)),
            path,
            proc_net: None,
            container: None,
            name,
        };
        // Only entering it proves what it is: a regular file, or another kind of namespace,
        // is refused with EINVAL.
        ns.enter(|| ())?;
        Ok(ns)
    }

    /// The network namespace of process `pid` (`/proc/PID/ns/net`).
    pub fn from_pid(pid: u32) -> Result<Netns> {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::NamespaceNotFound { path });
        }
        let mut ns = Netns::from_path(path)?;
        ns.proc_net = Some(PathBuf::from(format!("/proc/{pid}/net")));
        Ok(ns)
    }

    /// A namespace found at `path` (`/proc/PID/ns/net` of process `pid`, or a `/run/netns`
    /// entry) with inode `inode`: opened without the entering check (whoever uses it enters
    /// it, and says so if it is not a network namespace). A leftover `/run/netns` file that is
    /// no longer a bind mount has a different inode than was found, and is refused.
    pub(crate) fn found(
        path: &Path,
        inode: u64,
        pid: Option<u32>,
        container: Option<ContainerRef>,
    ) -> Result<Netns> {
        let (file, opened) = open_file(path)?;
        if opened != inode {
            return Err(Error::NamespaceNotFound { path: path.to_owned() });
        }
        Ok(Netns {
            file: Some(Arc::new(file)),
            path: path.to_owned(),
            inode,
            proc_net: pid.map(|pid| PathBuf::from(format!("/proc/{pid}/net"))),
            container: container.map(Arc::new),
            name: None,
        })
    }

    /// The namespace's inode number: what `netns` fields of sockets and events carry.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Where it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Labels the namespace as a container's: sockets and events read here carry it.
    pub fn with_container(mut self, container: ContainerRef) -> Netns {
        self.container = Some(Arc::new(container));
        self
    }

    /// The container this namespace belongs to, if labelled.
    pub fn container(&self) -> Option<&ContainerRef> {
        self.container.as_deref()
    }

    pub(crate) fn container_label(&self) -> Option<Arc<ContainerRef>> {
        self.container.clone()
    }

    /// Its name under `/run/netns` (`ip netns add NAME`), when it is bound there.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// This namespace, known by `name` (discovery found it under `/run/netns`).
    pub(crate) fn named(mut self, name: Option<Arc<str>>) -> Netns {
        self.name = name;
        self
    }

    pub(crate) fn name_label(&self) -> Option<Arc<str>> {
        self.name.clone()
    }

    /// Where the /proc fallback can read this namespace's sockets, if anywhere.
    pub(crate) fn proc_net(&self) -> Option<&Path> {
        self.proc_net.as_deref()
    }

    /// Whether this is the calling thread's namespace (same device and inode).
    fn is_current(&self) -> bool {
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        let here = std::fs::metadata("/proc/thread-self/ns/net").map(id).ok();
        let this = self.file.as_ref().and_then(|f| f.metadata().map(id).ok());
        here.is_some() && here == this
    }

    /// Runs `f` on a dedicated thread inside the namespace and returns its result. Sockets
    /// `f` creates stay in the namespace after the thread ends.
    pub(crate) fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let Some(file) = &self.file else { return Ok(f()) };
        let fd = file.as_fd();
        let path = &self.path;
        // Taken by the thread, or by this one when no thread can be had.
        let job = std::sync::Mutex::new(Some(f));
        let take = || job.lock().unwrap_or_else(|e| e.into_inner()).take();
        std::thread::scope(|s| {
            // A refused thread (a pids limit) is an error to report, never a panic.
            let thread =
                std::thread::Builder::new().name("portwatch-setns".into()).spawn_scoped(s, || {
                    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
                        Errno::EINVAL => Error::NotNetworkNamespace { path: path.clone() },
                        Errno::EPERM => Error::NamespacePermission {
                            path: path.clone(),
                            need: "CAP_SYS_ADMIN (to enter another network namespace)",
                        },
                        e => Error::io(path, e.into()),
                    })?;
                    Ok(take().map(|f| f()))
                });
            let done = match thread {
                Ok(t) => t.join().unwrap_or_else(|_| {
                    Err(Error::io(path, std::io::Error::other("namespace thread panicked")))
                })?,
                // Already there (the host's namespace, found by discovery): no thread needed.
                Err(_) if self.is_current() => take().map(|f| f()),
                Err(source) => {
                    return Err(Error::Os {
                        op: "start a thread to enter a network namespace",
                        source,
                    });
                }
            };
            done.ok_or_else(|| Error::io(path, std::io::Error::other("namespace job ran twice")))
        })
    }
}
