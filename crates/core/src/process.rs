//! Who holds a socket, and what they belong to: the processes ([`Owners`], [`Process`]), why
//! none is known ([`UnknownReason`]), and the container, cgroup and published port a socket
//! is attributed to ([`ContainerRef`], [`Cgroup`], [`Forward`]).
//!
//! Plain data: no I/O here. `owners` fills processes in, `discover` attributes containers.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::socket::Protocol;

/// A container's identity, as sockets read from its namespace carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ContainerRef {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
}

impl ContainerRef {
    /// A container reference.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> ContainerRef {
        ContainerRef { id: id.into(), name: name.into() }
    }
}

/// A published port: the container address and port a forwarder's listening socket sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forward {
    /// The forwarder holding the host-side socket.
    pub via: Forwarder,
    /// The protocol forwarded.
    pub protocol: Protocol,
    /// The container's address it connects to (pasta: unspecified, any address of the
    /// namespace, as it delivers to whichever listens there).
    pub addr: IpAddr,
    /// The port inside the container.
    pub port: u16,
    /// The container holding `addr`, when found (from the Docker daemon, else from the
    /// network namespaces).
    pub container: Option<Arc<ContainerRef>>,
}

/// A process that listens on a published port on a container's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Forwarder {
    /// Docker's userland proxy (`docker-proxy`, dockerd's `userland-proxy`, on by default).
    DockerProxy,
    /// pasta (the `passt` project), rootless Podman's default network: `-t`/`-u` on its
    /// command line say which host ports go to which ports of the namespace it serves.
    Pasta,
}

impl Forwarder {
    /// The name the JSON output uses: `docker-proxy` or `pasta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarder::DockerProxy => "docker-proxy",
            Forwarder::Pasta => "pasta",
        }
    }
}

/// What a process's cgroup says about who runs it: its container runtime and container, its
/// Kubernetes pod, its systemd service. Read from `/proc/PID/cgroup` alone, without asking a
/// runtime.
///
/// Cgroup names are chosen by whoever creates the cgroup, so only the part of the path a
/// runtime owns counts: the outermost container segment (what lies below it the container
/// may write), never one below a systemd service (a service with `Delegate=` writes its own
/// subtree). Below `user@UID.service`, the subtree systemd delegates to user UID, the names
/// are that user's: a rootless container, or a claim, and [`Cgroup::delegated_uid`] says so.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Cgroup {
    /// The cgroup path the rest was read from, as `/proc/PID/cgroup` shows it (the unified
    /// hierarchy's, else the first v1 hierarchy's that names a runtime).
    pub path: String,
    /// The container runtime, or [`Runtime::Systemd`] for a service outside any container.
    pub runtime: Option<Runtime>,
    /// The 64-hex-digit container id.
    pub container_id: Option<String>,
    /// The Kubernetes pod's UID (`metadata.uid`, with dashes), for a container of a pod.
    pub pod_uid: Option<String>,
    /// The systemd service (`nginx.service`) the process runs in, outside any container.
    pub unit: Option<String>,
    /// The user whose delegated subtree (`user@UID.service`) holds the cgroup: its names are
    /// that user's to choose.
    pub delegated_uid: Option<u32>,
}

/// A container runtime (or systemd), as a cgroup path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Runtime {
    /// Docker (`/docker/ID`, `docker-ID.scope`), also as a Kubernetes runtime.
    Docker,
    /// containerd: Kubernetes CRI (`cri-containerd-ID.scope`) or nerdctl (`nerdctl-ID.scope`).
    Containerd,
    /// CRI-O (`crio-ID.scope`, `crio-ID`).
    CriO,
    /// Podman (`libpod-ID.scope`, `libpod-ID`).
    Podman,
    /// A Kubernetes container whose runtime the path does not name (the cgroupfs driver's
    /// `kubepods/QOS/podUID/ID`).
    Cri,
    /// A systemd service, outside any container.
    Systemd,
}

impl Runtime {
    /// The name the JSON output uses: `docker`, `containerd`, `cri-o`, `podman`, `cri`,
    /// `systemd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Cri => "cri",
            Runtime::Systemd => "systemd",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Owners {
    /// The processes that hold a file descriptor for the socket, by ascending pid. Shared:
    /// one process holding many sockets is one value, not a copy per socket.
    Known(Vec<Arc<Process>>),
    /// No holder was found; the reason says why.
    Unknown(UnknownReason),
}

/// Why the owner of a socket is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownReason {
    /// Owner lookup was not asked for.
    NotResolved,
    /// No readable process holds it, and `unreadable` processes' fd tables could not be read:
    /// the owner is probably among them. Root, or CAP_SYS_PTRACE, can read most; a process
    /// protected by a security module or owned by another user namespace may refuse even root.
    PermissionDenied {
        /// How many processes' `/proc/PID/fd` could not be read.
        unreadable: usize,
    },
    /// Every process was searched and none holds it: the socket closed during the scan, it is
    /// held only by the kernel, or its holder is not visible in this `/proc` (another pid
    /// namespace).
    NotFound,
    /// The owner may be among processes the owner walk did not finish reading. The walk is
    /// bounded, because any user can make it slow: each process is read for at most its first
    /// 1024 fds (a server's listeners are among its lowest), and the walk stops after 200 ms.
    Skipped {
        /// Processes holding more than 1024 fds: only the first 1024 were read.
        crowded: usize,
        /// Processes not read at all: the walk ran out of time first.
        unread: usize,
    },
    /// No visible process holds it, and `/proc` is mounted with `hidepid=`: other users'
    /// processes are hidden from this one. Root or `CAP_SYS_PTRACE`, or membership of the
    /// group the mount's `gid=` names, sees them.
    Hidden,
}

impl UnknownReason {
    /// A short machine-readable code, the JSON output's `owner_unknown_reason`:
    /// `not_resolved`, `permission_denied`, `not_found`, `skipped` or `hidden`. The `Display`
    /// text says more.
    pub fn code(self) -> &'static str {
        match self {
            UnknownReason::NotResolved => "not_resolved",
            UnknownReason::PermissionDenied { .. } => "permission_denied",
            UnknownReason::NotFound => "not_found",
            UnknownReason::Skipped { .. } => "skipped",
            UnknownReason::Hidden => "hidden",
        }
    }
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::NotResolved => f.write_str("owner lookup not requested"),
            UnknownReason::PermissionDenied { unreadable } => {
                write!(f, "permission denied: the fds of {unreadable} process(es) are unreadable")
            }
            UnknownReason::NotFound => {
                f.write_str("not found: no visible process holds it (closed, kernel-owned, or in another pid namespace)")
            }
            UnknownReason::Skipped { crowded, unread } => write!(
                f,
                "skipped: {crowded} process(es) hold more than 1024 fds and were read in part, \
                 {unread} were not read before the owner walk's time ran out; the owner may be \
                 among them"
            ),
            UnknownReason::Hidden => f.write_str(
                "hidden: /proc is mounted with hidepid, so other users' processes cannot be \
                 seen; run as root, with CAP_SYS_PTRACE, or in the group its gid= option names",
            ),
        }
    }
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Process {
    /// Pid as this `/proc` sees it.
    pub pid: u32,
    /// Parent pid (`None` where unknown).
    pub ppid: Option<u32>,
    /// Command name (`/proc/PID/status` `Name:`).
    pub comm: String,
    /// Full command line, one element per argument (empty for kernel threads and zombies, and
    /// when [`Query::cmdlines`](crate::Query::cmdlines) turned it off).
    pub cmdline: Vec<String>,
    /// Real uid.
    pub uid: u32,
    /// User name for `uid` from `/etc/passwd`, when it has one.
    pub user: Option<String>,
    /// Pid inside the process's own pid namespace, when it differs from `pid` (a container).
    pub ns_pid: Option<u32>,
    /// What its cgroup says: container runtime and id, pod, systemd service (`None` when
    /// `/proc/PID/cgroup` was not read ([`Query::cgroups`](crate::Query::cgroups)) or could
    /// not be, as for a process gone before a kernel event about it was read).
    pub cgroup: Option<Cgroup>,
}

impl Process {
    /// A process as a kernel event names it, at the moment of the call: its pid, uid and the
    /// calling thread's `comm` (attacker-written bytes, kept lossily as text). What the event
    /// does not carry is filled in from /proc later, while the process is there.
    #[cfg(feature = "ebpf")]
    pub(crate) fn from_kernel(pid: u32, comm: &[u8], uid: u32) -> Process {
        Process {
            pid,
            ppid: None,
            comm: String::from_utf8_lossy(comm).into_owned(),
            cmdline: Vec::new(),
            uid,
            user: None,
            ns_pid: None,
            cgroup: None,
        }
    }

    /// The command line joined by spaces, or the command name when it is empty.
    pub fn cmdline_string(&self) -> String {
        if self.cmdline.is_empty() { self.comm.clone() } else { self.cmdline.join(" ") }
    }
}
