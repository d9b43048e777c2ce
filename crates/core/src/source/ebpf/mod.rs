//! Kernel socket events from eBPF programs (feature `ebpf`): a source of listener opens and
//! closes that sees every one, however short-lived, with the process that made it.
//!
//! Owns loading and attaching the programs of `crates/core/bpf/portwatch.bpf.c` (committed as
//! `portwatch.bpf.o`, rebuilt by `make bpf`), the ring buffer they write to and its "lost"
//! counter. It must not know about the watcher, the tracker or the CLI: it hands out
//! [`KernelEvent`]s and lets the caller poll(2) the ring buffer's descriptor. No threads, no
//! timers, no global state; everything it attached is detached when [`Programs`] is dropped —
//! and by the kernel when the process dies, SIGKILL included, because every attachment is a
//! bpf_link owned by a file descriptor (never a legacy `BPF_PROG_ATTACH`, which would outlive
//! us; see the tests).
//!
//! # Programs
//!
//! | kernel name      | hook                            | reports                        |
//! |------------------|---------------------------------|--------------------------------|
//! | `pw_tcp_listen`  | `tp_btf/inet_sock_set_state`    | TCP entering / leaving LISTEN  |
//! | `pw_udp_bind4/6` | `cgroup/post_bind4` / `6`       | explicit UDP binds             |
//! | `pw_udp_conn4/6` | `cgroup/connect4` / `6`         | UDP connects (stops listening) |
//! | `pw_udp_release` | `cgroup/sock_release`           | UDP sockets with a port closed |
//! | `pw_owner_exit`  | `tp_btf/sched_process_exit`     | exits of the pids asked about  |
//!
//! Exits are reported only for the processes named with [`Programs::set_owners`] (the
//! owners of tracked sockets), when their last thread exits, before their files close.
//!
//! The cgroup programs are attached to the root of the cgroup2 hierarchy found in
//! `/proc/self/mountinfo`, so they see every process below it in every network namespace;
//! they only observe (always allow). In a container with its own cgroup namespace, the
//! "root" is the container's, and only its processes are seen.
//!
//! # Time
//!
//! [`KernelEvent::ts_ns`] is `bpf_ktime_get_ns()`, CLOCK_MONOTONIC: compare it with
//! [`monotonic_now_ns`] and convert with [`KernelEvent::wall_time`].
//!
//! # Privileges
//!
//! Root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN (CAP_SYS_ADMIN + CAP_NET_ADMIN on kernels
//! before 5.8). Kernel 5.12 or later built with BTF (`/sys/kernel/btf/vmlinux`).

// A few items (program names and ids, the cgroup used, errno) serve only the tests, which
// check what is attached and detached.
#![cfg_attr(not(test), allow(dead_code))]

mod conn_record;
mod connections;
pub(crate) mod host;
mod record;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::collections::HashSet;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError};
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};

pub(crate) use self::conn_record::{ConnEvent, ConnKind, Dir};
pub(crate) use self::connections::{ConnOptions, ConnPrograms};
#[cfg_attr(not(test), allow(unused_imports))]
pub(crate) use self::record::{KernelEvent, Kind, decode, exit_of};

/// The programs' object, built from `crates/core/bpf/portwatch.bpf.c` by `make bpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../bpf/portwatch.bpf.o");

const EVENTS_MAP: &str = "PW_EVENTS";
const LOST_MAP: &str = "PW_LOST";
const OWNERS_MAP: &str = "PW_OWNERS";
const NETNS_ONLY_MAP: &str = "PW_NETNS_ONLY";
const NETNS_MAP: &str = "PW_NETNS";
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Ring-buffer size a [`LoadOptions::default`] asks for: 1 MiB, 11 915 records (88 bytes each
/// with the kernel's header). Every instance gets every event on the host, and a busy resolver
/// alone makes a UDP connect and a release per query, so leave room for bursts.
pub(crate) const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// Which programs, by their kernel names, and the hook each attaches to.
const TRACEPOINT_PROGRAMS: [(&str, &str); 2] =
    [("pw_tcp_listen", "inet_sock_set_state"), ("pw_owner_exit", "sched_process_exit")];
const CGROUP_SOCK_PROGRAMS: [&str; 3] = ["pw_udp_bind4", "pw_udp_bind6", "pw_udp_release"];
const CGROUP_ADDR_PROGRAMS: [&str; 2] = ["pw_udp_conn4", "pw_udp_conn6"];

/// The kernel names of all programs, for finding them in `bpftool prog show`.
pub(crate) const PROGRAM_NAMES: [&str; 7] = [
    TRACEPOINT_PROGRAMS[0].0,
    TRACEPOINT_PROGRAMS[1].0,
    CGROUP_SOCK_PROGRAMS[0],
    CGROUP_SOCK_PROGRAMS[1],
    CGROUP_SOCK_PROGRAMS[2],
    CGROUP_ADDR_PROGRAMS[0],
    CGROUP_ADDR_PROGRAMS[1],
];

/// How to load the programs.
#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    /// Ring-buffer size in bytes: a power of two and a multiple of the page size. Each event
    /// takes 88 bytes of it (80 plus the kernel's 8-byte header). When the consumer falls
    /// behind, further events are dropped and counted ([`Programs::lost`]).
    pub(crate) ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { ring_bytes: DEFAULT_RING_BYTES }
    }
}

/// Why the programs could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LoadError {
    /// This process lacks the capabilities.
    #[error(
        "loading eBPF programs needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN \
         (missing: {}; {step} failed with {source})",
        missing.join(", ")
    )]
    PermissionDenied {
        /// Missing capabilities, by name.
        missing: Vec<&'static str>,
        /// What was refused.
        step: String,
        /// The refusal.
        source: io::Error,
    },
    /// The kernel has no BTF (it was built without CONFIG_DEBUG_INFO_BTF, or is too old).
    #[error(
        "no kernel BTF at {BTF_PATH} (needs a kernel built with CONFIG_DEBUG_INFO_BTF): {source}"
    )]
    NoBtf {
        /// What reading it said.
        source: aya::BtfError,
    },
    /// No cgroup2 hierarchy is mounted, so the UDP programs have nowhere to attach.
    #[error(
        "no cgroup2 mount in /proc/self/mountinfo: mount one (mount -t cgroup2 none /sys/fs/cgroup)"
    )]
    NoCgroup2,
    /// The cgroup2 root was found but could not be opened.
    #[error("cannot open the cgroup2 root {path}: {source}")]
    Cgroup {
        /// Its mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The requested ring-buffer size is not one the kernel accepts.
    #[error("ring buffer size {bytes} is not a power of two of at least 4096 bytes")]
    RingBufferSize {
        /// The size asked for.
        bytes: u32,
    },
    /// The object could not be parsed, relocated against the kernel's BTF, or its maps created.
    #[error("cannot prepare the eBPF object: {source}")]
    Object {
        /// aya's error.
        source: Box<EbpfError>,
    },
    /// The kernel refused to load a program (the verifier log says why).
    #[error(
        "the kernel refused to load eBPF program {program} ({source}); verifier log:\n{verifier_log}"
    )]
    ProgramRefused {
        /// Kernel name of the program.
        program: &'static str,
        /// The errno.
        source: io::Error,
        /// The verifier's log.
        verifier_log: String,
    },
    /// The kernel refused to attach a loaded program.
    #[error("the kernel refused to attach eBPF program {program} to {target}: {source}")]
    AttachRefused {
        /// Kernel name of the program.
        program: &'static str,
        /// The tracepoint or cgroup.
        target: String,
        /// The errno.
        source: io::Error,
    },
    /// The kernel lacks what a program needs (its hook, a BTF type), found before any syscall.
    #[error("this kernel cannot run eBPF program {program}: {reason}")]
    Unsupported {
        /// Kernel name of the program.
        program: &'static str,
        /// What aya found missing.
        reason: String,
    },
    /// The object lacks something this code expects: it is out of step with the source.
    #[error("the eBPF object does not match this build ({what}): run make bpf")]
    Mismatch {
        /// What is missing or of the wrong type.
        what: String,
    },
}

impl LoadError {
    /// The errno behind this error, if one is.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            LoadError::PermissionDenied { source, .. }
            | LoadError::ProgramRefused { source, .. }
            | LoadError::AttachRefused { source, .. }
            | LoadError::Cgroup { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Turns an EPERM/EACCES into [`LoadError::PermissionDenied`] when capabilities are missing;
/// as root the refusal has another cause (lockdown, a seccomp filter, an LSM), so the specific
/// error stays.
fn permission_or(
    step: impl Into<String>,
    source: io::Error,
    otherwise: impl FnOnce(io::Error) -> LoadError,
) -> LoadError {
    let denied = source.raw_os_error().is_some_and(|e| {
        e == nix::errno::Errno::EPERM as i32 || e == nix::errno::Errno::EACCES as i32
    });
    let missing = if denied { host::missing_caps_of_self(true) } else { Vec::new() };
    if missing.is_empty() {
        otherwise(source)
    } else {
        LoadError::PermissionDenied { missing, step: step.into(), source }
    }
}

/// The io::Error deepest in an error's source chain (aya wraps the syscall's).
fn io_error_in(err: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    let mut cur = Some(err);
    let mut found = None;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            found = io.raw_os_error().map(io::Error::from_raw_os_error);
        }
        cur = e.source();
    }
    found
}

pub(super) fn program_error(
    program: &'static str,
    target: &str,
    attaching: bool,
    err: ProgramError,
) -> LoadError {
    if let ProgramError::LoadError { io_error, verifier_log } = err {
        let log = verifier_log.to_string();
        return permission_or(format!("loading {program}"), io_error, |source| {
            LoadError::ProgramRefused { program, source, verifier_log: log }
        });
    }
    match io_error_in(&err) {
        Some(io) if attaching => permission_or(format!("attaching {program}"), io, |source| {
            LoadError::AttachRefused { program, target: target.to_owned(), source }
        }),
        Some(io) => permission_or(format!("loading {program}"), io, |source| {
            LoadError::ProgramRefused { program, source, verifier_log: String::new() }
        }),
        // No syscall failed: aya found the kernel lacking something (the tracepoint's BTF
        // type, say) before asking it.
        None => LoadError::Unsupported { program, reason: err.to_string() },
    }
}

/// Reads CLOCK_MONOTONIC, the clock of [`KernelEvent::ts_ns`], in nanoseconds.
pub(crate) fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0).saturating_mul(1_000_000_000)
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The loaded and attached programs, their ring buffer and lost counter. Dropping it detaches
/// and unloads everything. Several can live at once (each gets its own maps; the kernel runs
/// every attached copy).
pub(crate) struct Programs {
    // Field order is drop order: the ring buffer and counter, then the programs and links.
    events: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    owners: BpfHashMap<MapData, u32, u8>,
    /// What `owners` holds, so an update writes only the difference.
    owner_pids: HashSet<u32>,
    /// Slot 0: whether only the namespaces in `netns` are reported.
    netns_only: Array<MapData, u32>,
    netns: BpfHashMap<MapData, u32, u8>,
    /// What `netns` holds.
    netns_set: HashSet<u32>,
    /// Exits read by [`Programs::drain`], until [`Programs::take_exits`].
    exits: Vec<u32>,
    _ebpf: Ebpf,
    cgroup: PathBuf,
    load_time: Duration,
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs")
            .field("cgroup", &self.cgroup)
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

impl Programs {
    /// Loads every program, attaches them (the tracepoint, and the cgroup programs to the
    /// cgroup2 root) and opens the ring buffer. Either all are attached or none stays.
    pub(crate) fn load(opts: &LoadOptions) -> Result<Programs, LoadError> {
        let start = Instant::now();
        let Prepared { mut ebpf, btf, cgroup, cgroup_dir } =
            prepare(OBJECT, &[(EVENTS_MAP, opts.ring_bytes)], Some(opts.ring_bytes))?;

        for (name, tracepoint) in TRACEPOINT_PROGRAMS {
            let prog: &mut BtfTracePoint = program_mut(&mut ebpf, name)?;
            prog.load(tracepoint, &btf).map_err(|e| program_error(name, tracepoint, false, e))?;
            prog.attach().map_err(|e| program_error(name, tracepoint, true, e))?;
        }

        let target = cgroup.display().to_string();
        for name in CGROUP_SOCK_PROGRAMS {
            let prog: &mut CgroupSock = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, &target, false, e))?;
            // Single = flags 0 on BPF_LINK_CREATE, which cgroups always attach as "multi":
            // other programs, and our other instances, keep running beside ours.
            prog.attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(|e| program_error(name, &target, true, e))?;
        }
        for name in CGROUP_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, &target, false, e))?;
            prog.attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(|e| program_error(name, &target, true, e))?;
        }

        let events = ebpf
            .take_map(EVENTS_MAP)
            .and_then(|m| RingBuf::try_from(m).ok())
            .ok_or_else(|| LoadError::Mismatch { what: format!("ring buffer {EVENTS_MAP}") })?;
        let lost = ebpf
            .take_map(LOST_MAP)
            .and_then(|m| Array::try_from(m).ok())
            .ok_or_else(|| LoadError::Mismatch { what: format!("array {LOST_MAP}") })?;
        let owners = ebpf
            .take_map(OWNERS_MAP)
            .and_then(|m| BpfHashMap::try_from(m).ok())
            .ok_or_else(|| LoadError::Mismatch { what: format!("hash {OWNERS_MAP}") })?;
        let netns_only = ebpf
            .take_map(NETNS_ONLY_MAP)
            .and_then(|m| Array::try_from(m).ok())
            .ok_or_else(|| LoadError::Mismatch { what: format!("array {NETNS_ONLY_MAP}") })?;
        let netns = ebpf
            .take_map(NETNS_MAP)
            .and_then(|m| BpfHashMap::try_from(m).ok())
            .ok_or_else(|| LoadError::Mismatch { what: format!("hash {NETNS_MAP}") })?;
        Ok(Programs {
            events,
            lost,
            owners,
            owner_pids: HashSet::new(),
            netns_only,
            netns,
            netns_set: HashSet::new(),
            exits: Vec::new(),
            _ebpf: ebpf,
            cgroup,
            load_time: start.elapsed(),
        })
    }

    /// Hands every record available now to `f`, oldest first, without blocking; returns how
    /// many records were read (records this build cannot decode are counted and skipped).
    /// Call it when the descriptor ([`AsFd`]) polls readable.
    /// Exits are kept for [`Programs::take_exits`].
    pub(crate) fn drain(&mut self, mut f: impl FnMut(KernelEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            n += 1;
            if let Some(pid) = exit_of(&item) {
                self.exits.push(pid);
            } else if let Some(event) = decode(&item) {
                f(event);
            }
        }
        n
    }

    /// The processes named by [`Programs::set_owners`] that exited since the last call, in
    /// the order read: each when its last thread exited, before its files were closed.
    pub(crate) fn take_exits(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.exits)
    }

    /// Makes `pids` the processes whose exit is reported (writing only what changed).
    /// Returns how many of them could not be added (the map is full, 16 384 entries, or the
    /// kernel refused): the caller must watch those some other way.
    pub(crate) fn set_owners(&mut self, pids: &HashSet<u32>) -> usize {
        let gone: Vec<u32> = self.owner_pids.difference(pids).copied().collect();
        for pid in gone {
            // Already absent is fine: the result is the same.
            let _ = self.owners.remove(&pid);
            self.owner_pids.remove(&pid);
        }
        let new: Vec<u32> = pids.difference(&self.owner_pids).copied().collect();
        self.add_owners(&new)
    }

    /// Reports the sockets of the namespaces `only` (inodes) and no others, or of every
    /// namespace (`None`): the others' events are not even sent, so they do not wake the
    /// reader. Whether that holds: on a failure (or more namespaces than the map holds) every
    /// namespace is reported, which is only more work for the reader, never less.
    pub(crate) fn report_netns(&mut self, only: Option<&HashSet<u64>>) -> bool {
        let Some(only) = only else {
            return self.netns_only.set(0, 0, 0).is_ok();
        };
        let want: HashSet<u32> = only.iter().filter_map(|i| u32::try_from(*i).ok()).collect();
        // Added before the old ones go, and the switch turned on last: no wanted event is
        // ever dropped on the way.
        for inum in want.difference(&self.netns_set).copied().collect::<Vec<_>>() {
            if self.netns.insert(inum, 1, 0).is_err() {
                let _ = self.netns_only.set(0, 0, 0);
                return false;
            }
            self.netns_set.insert(inum);
        }
        if self.netns_only.set(0, 1, 0).is_err() {
            return false;
        }
        for inum in self.netns_set.difference(&want).copied().collect::<Vec<_>>() {
            let _ = self.netns.remove(&inum);
            self.netns_set.remove(&inum);
        }
        true
    }

    /// Adds `pids` to the processes whose exit is reported; how many could not be added.
    pub(crate) fn add_owners(&mut self, pids: &[u32]) -> usize {
        let mut missed = 0;
        for &pid in pids {
            if self.owner_pids.contains(&pid) {
                continue;
            }
            match self.owners.insert(pid, 1, 0) {
                Ok(()) => {
                    self.owner_pids.insert(pid);
                }
                Err(_) => missed += 1,
            }
        }
        missed
    }

    /// Events the kernel dropped since loading because the ring buffer was full.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.get(&0, 0).unwrap_or(0)
    }

    /// How long [`Programs::load`] took (BTF parsing, relocation, verification, attaching).
    pub(crate) fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Kernel ids of the loaded programs (what `bpftool prog show` lists).
    pub(crate) fn program_ids(&self) -> Vec<u32> {
        self._ebpf.programs().filter_map(|(_, p)| p.info().ok()).map(|i| i.id()).collect()
    }

    /// The cgroup2 directory the cgroup programs are attached to.
    pub(crate) fn cgroup(&self) -> &std::path::Path {
        &self.cgroup
    }
}

/// The ring buffer's descriptor: readable when records are waiting.
impl AsFd for Programs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

/// An object parsed and relocated against the kernel's BTF, its maps created, and the cgroup2
/// root its cgroup programs attach to: what every program set needs before loading programs.
pub(super) struct Prepared {
    pub(super) ebpf: Ebpf,
    pub(super) btf: Btf,
    pub(super) cgroup: PathBuf,
    pub(super) cgroup_dir: File,
}

/// Prepares `object` with the map sizes given (`ring`: a ring buffer size to check first).
pub(super) fn prepare(
    object: &[u8],
    sizes: &[(&'static str, u32)],
    ring: Option<u32>,
) -> Result<Prepared, LoadError> {
    if let Some(bytes) = ring
        && (!bytes.is_power_of_two() || bytes < 4096)
    {
        return Err(LoadError::RingBufferSize { bytes });
    }
    let btf = Btf::from_sys_fs().map_err(|source| LoadError::NoBtf { source })?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = host::cgroup2_mount(&mountinfo).ok_or(LoadError::NoCgroup2)?;
    let cgroup_dir =
        File::open(&cgroup).map_err(|source| LoadError::Cgroup { path: cgroup.clone(), source })?;
    let mut loader = EbpfLoader::new();
    loader.btf(Some(&btf));
    for (map, size) in sizes {
        loader.map_max_entries(map, *size);
    }
    let ebpf = loader.load(object).map_err(|err| match io_error_in(&err) {
        Some(io) => {
            permission_or("creating the maps", io, |_| LoadError::Object { source: Box::new(err) })
        }
        None => LoadError::Object { source: Box::new(err) },
    })?;
    Ok(Prepared { ebpf, btf, cgroup, cgroup_dir })
}

pub(super) fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| LoadError::Mismatch { what: format!("no program {name}") })?;
    prog.try_into().map_err(|_| LoadError::Mismatch { what: format!("{name} has another type") })
}
