//! The library's one error type. Each variant carries what a user needs to act: the path, the
//! request, the privilege that would help.

use std::io;
use std::path::PathBuf;

/// Errors from portwatch-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A NETLINK_SOCK_DIAG socket could not be opened or used. (Out of file descriptors,
    /// the message says so: that is no netlink problem.)
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {}", netlink_hint(source))]
    NetlinkUnavailable {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a sock_diag request with an error (NLMSG_ERROR).
    #[error("sock_diag {request} dump failed: {source}")]
    Netlink {
        /// Which dump: `"tcp/ipv4"`, `"unix"`, …
        request: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A sock_diag answer could not be decoded.
    #[error("sock_diag {request} answer could not be decoded: {reason}")]
    Decode {
        /// Which dump.
        request: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The kernel kept flagging a dump as inconsistent (NLM_F_DUMP_INTR) while sockets changed.
    #[error(
        "sock_diag {request} dump was interrupted by concurrent changes {attempts} times in a row"
    )]
    DumpInterrupted {
        /// Which dump.
        request: &'static str,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A file or directory could not be read for lack of permission.
    #[error("permission denied reading {}: run as root or grant CAP_SYS_PTRACE", path.display())]
    PermissionDenied {
        /// What could not be read.
        path: PathBuf,
    },
    /// A file could not be opened because this process (`EMFILE`) or the system (`ENFILE`)
    /// has as many open files as its limit allows.
    #[error("cannot open {}: {}", path.display(), too_many_hint(source))]
    TooManyOpenFiles {
        /// What could not be opened.
        path: PathBuf,
        /// The OS error: `EMFILE` or `ENFILE`.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No network namespace at this path (or no such process).
    #[error("network namespace {} not found: check the path, or that the process still runs", path.display())]
    NamespaceNotFound {
        /// The path looked for.
        path: PathBuf,
    },
    /// No process has this pid (a [`Filter::pid`](crate::Filter::pid) asked for it).
    #[error("no process {pid}: check the pid, or that the process still runs")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The path exists but is not a network namespace.
    #[error("{} is not a network namespace (expected /run/netns/NAME, /proc/PID/ns/net or /var/run/docker/netns/ID)", path.display())]
    NotNetworkNamespace {
        /// The path.
        path: PathBuf,
    },
    /// Entering or opening the namespace needs a privilege this process lacks.
    #[error("permission denied for network namespace {}: run as root or grant {need}", path.display())]
    NamespacePermission {
        /// The namespace.
        path: PathBuf,
        /// What would grant it.
        need: &'static str,
    },
    /// The Docker daemon could not be asked, or answered that the container is missing or
    /// stopped (feature `docker`).
    #[cfg(feature = "docker")]
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    /// An operating-system call failed; `op` says which.
    #[error("cannot {op}: {source}")]
    Os {
        /// What was being done: `"create the watcher's wake pipe"`, …
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The eBPF source was asked for ([`Source::Ebpf`](crate::Source::Ebpf)) and its
    /// programs could not be loaded; the reason names what is missing (a capability, kernel
    /// BTF, a cgroup2 mount, …).
    #[error("cannot use kernel events (eBPF): {reason}; use the scan source instead")]
    EbpfUnavailable {
        /// Why.
        reason: String,
    },
    /// The BPF owner lookup was asked for ([`OwnerLookup::Bpf`](crate::OwnerLookup::Bpf))
    /// and cannot load; the reason names what is missing (a capability, kernel BTF, the
    /// host's pid namespace, …).
    #[error("cannot look owners up with BPF: {reason}; or use the /proc walk (--owners proc)")]
    OwnerLookupUnavailable {
        /// Why.
        reason: String,
    },
    /// `/proc` could not be read, so neither namespaces nor owners can be found.
    #[error("cannot read {}: {source} (is procfs mounted at /proc?)", path.display())]
    ProcUnavailable {
        /// What could not be read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A [`WatcherBuilder`](crate::WatcherBuilder) setting is out of range.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting {
        /// The setting, as the builder method names it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The snapshot file cannot be used and is left as it is: it is not a portwatch snapshot
    /// (so it must not be replaced), or not a regular file.
    #[error("cannot use {} as the snapshot: {problem}; name a new file, or move this one away", path.display())]
    Snapshot {
        /// The snapshot path.
        path: PathBuf,
        /// What is wrong with it.
        problem: SnapshotProblem,
    },
    /// A file had content that could not be parsed.
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Why a snapshot file is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotProblem {
    /// The file holds something else: portwatch never overwrites it.
    #[error("it is not a portwatch snapshot, and portwatch does not overwrite other files")]
    NotASnapshot,
    /// The path is a symbolic link, which is not followed.
    #[error("it is a symbolic link, which is not followed")]
    SymbolicLink,
    /// The path is a directory, FIFO, socket or device.
    #[error("it is {what}, not a regular file")]
    NotRegularFile {
        /// What it is: `"a directory"`, `"a FIFO"`, …
        what: &'static str,
    },
    /// The file is larger than any snapshot could be.
    #[error("it is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// It could not be read.
    #[error("it cannot be read: {0}")]
    Unreadable(#[source] io::Error),
}

impl Error {
    /// An I/O error on `path`, as [`Error::PermissionDenied`] where that is the cause.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            Error::PermissionDenied { path }
        } else if is_too_many_open_files(&source) {
            Error::TooManyOpenFiles { path, source }
        } else {
            Error::Io { path, source }
        }
    }
}

/// Whether `e` is `EMFILE` (this process's limit) or `ENFILE` (the system's).
fn is_too_many_open_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE))
}

/// What to do about running out of file descriptors, after the OS error.
fn too_many_hint(e: &io::Error) -> String {
    if e.raw_os_error() == Some(nix::libc::ENFILE) {
        format!("{e}: too many open files on the whole system; raise fs.file-max")
    } else {
        format!(
            "{e}: too many open files; raise the open-file limit (ulimit -Hn, LimitNOFILE= in a \
             systemd unit, --ulimit nofile= for a container): each watched namespace takes 3-4"
        )
    }
}

/// A netlink socket that could not be opened: out of file descriptors, or no sock_diag.
fn netlink_hint(e: &io::Error) -> String {
    if is_too_many_open_files(e) {
        too_many_hint(e)
    } else {
        format!("{e} (is sock_diag available in this kernel?)")
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
