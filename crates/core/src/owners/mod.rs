//! Socket inode → owning processes, from `/proc/*/fd`.
//!
//! Owns every read of `/proc/PID/…` and of `/etc/passwd`. Reading fd links is the dominant cost
//! of a listing (~5 µs a link), so the walk is done once for all wanted inodes, split over the
//! machine's cores, and relative to directory handles (`openat`/`readlinkat`) so the kernel does
//! not resolve `/proc/PID/fd/N` from the root for every link. What cannot matter is skipped:
//! no walk at all when no socket needs an owner, no per-process reads for non-holders. A process
//! that vanishes mid-scan is not an error; one whose fds we may not read is counted, so a socket
//! without a found owner says why.
//!
//! Any user can make the walk expensive (a process may hold a million fds, and anyone may start
//! many), and it runs on the watcher's scan thread: so each process is read for at most
//! [`FDS_PER_PROCESS`] fds, each walk stops at a deadline, and what was not read is counted so
//! the sockets whose owner may be there say [`UnknownReason::Skipped`]. Each process is read
//! through one handle on its `/proc/PID` directory, so a pid reused between the reads of its fd
//! table and its `status` cannot describe another process.
//!
//! The inode → pids map comes from one of two places ([`OwnerLookup`]): this walk, or (feature
//! `ebpf`) a pass of a BPF `task_file` iterator (`bpf`), which reads every fd of every
//! process inside the kernel; a `list` makes it beside its dump (`iterator_beside`), and one
//! more for sockets that pass may have missed. Either way the holders are then described here, from their
//! `/proc/PID`, and a socket without a found owner says why: one pipeline, two ways of
//! filling its map.
//!
//! Parsers (`parse_*`) take bytes and are tested on fixtures.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::Mode;

use crate::process::{Owners, Process, UnknownReason};
use crate::socket::{Protocol, Socket, State};
use crate::sys;

#[cfg(feature = "ebpf")]
mod bpf;
#[cfg(all(feature = "ebpf", feature = "bench-internals"))]
pub(crate) use self::bpf::fuzz as bpf_fuzz;
mod cgroup;
mod hidepid;
mod index;
mod lookup;
mod parse;
pub(crate) use self::cgroup::{CGROUP_MAX, parse_cgroup};
pub(crate) use self::index::OwnerIndex;
pub use self::lookup::OwnerLookup;
pub(crate) use self::lookup::{
    AUTO_BPF_MIN_PROCESSES, BpfIter, EarlyPass, early_made_by_socket, early_pass, inode_floor,
    load_iterator, may_load, try_iterator,
};
pub(crate) use self::parse::CMDLINE_MAX_BYTES;
#[cfg(any(test, feature = "ebpf"))]
pub(crate) use self::parse::status_name;
#[cfg(test)]
pub(crate) use self::parse::{CMDLINE_CUT, CMDLINE_MAX_ARGS, Status};
pub(crate) use self::parse::{parse_cmdline, parse_passwd, parse_socket_link, parse_status};

/// Most fds read of one process per walk. Listening sockets are opened at start-up, and the
/// kernel hands out the lowest free fd, so a server's listeners sit among its first few dozen
/// fds; `/proc/PID/fd` lists in ascending fd order, so the first entries are the ones read.
/// 1024 is also the default soft `RLIMIT_NOFILE`: a process that never raised its limit is
/// always read whole. A process holding more (a busy proxy, or a neighbour with 20 000 fds to
/// slow the walk down) is read in part and counted, and a socket whose owner is not found then
/// says [`UnknownReason::Skipped`]. At ~3 µs a link this bounds a process's cost to ~3 ms.
pub(crate) const FDS_PER_PROCESS: usize = 1024;
/// Longest one owner walk of a watcher may take (over all its phases): while the walk runs
/// the scan thread does not scan. The 10 000-listener, 2 000-process benchmark walks in ~70 ms
/// on 2 vCPUs, and the per-process fd cap bounds a crowd of 40 × 20 000 fds to ~200 ms; the
/// budget is the backstop, with room for a machine whose cores are busy (a tight one named
/// busy hosts' owners "skipped"). Processes not reached in time are counted, and sockets
/// whose owner may be among them say [`UnknownReason::Skipped`].
pub(crate) const WALK_BUDGET: Duration = Duration::from_secs(1);
/// The same for a one-shot listing, which blinds nothing while it runs: only a pathological
/// host reaches it.
pub(crate) const LIST_WALK_BUDGET: Duration = Duration::from_secs(5);

/// Pids handed to a worker thread at a time: small enough to balance, large enough that the
/// shared counter is not contended.
const CHUNK: usize = 16;
/// Below this many processes a walk is as fast on one thread as on several: a small host's
/// are mostly kernel threads, one `stat` each, and starting a thread costs more (at 10/1, 70
/// processes: 0.3 ms faster on one thread than on two).
const PARALLEL_WALK_MIN_PIDS: usize = 128;

/// Hashing for the maps of a lookup, keyed by inode or pid and filled by the ten thousand in
/// a large listing: foldhash, seeded per map. SipHash (std's default) cost a 10 000-socket
/// listing ~2 ms; the keys are numbers the kernel hands out, which no other user chooses.
pub(crate) type Fast = foldhash::fast::RandomState;
/// Socket inodes.
pub(crate) type Inodes = HashSet<u64, Fast>;
/// The pids holding one socket, each once: one, nearly always, and then no heap allocation
/// (ten thousand of them cost a large listing ~1 ms to make and free).
pub(crate) type Pids = smallvec::SmallVec<[u32; 2]>;

/// What to read about each owning process beyond pid, name and uid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Detail {
    /// Read `/proc/PID/cmdline`.
    pub(crate) cmdline: bool,
    /// Read `/proc/PID/cgroup`.
    pub(crate) cgroup: bool,
}

/// What one owner lookup looks for, and how: the same for the `/proc` walk and the BPF pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Search<'a> {
    /// The socket inodes whose holders are sought.
    pub(crate) wanted: &'a Inodes,
    /// uid → user name, for describing the holders.
    pub(crate) users: &'a HashMap<u32, String>,
    /// What to read of each holder.
    pub(crate) detail: Detail,
    /// Threads the walk may use.
    pub(crate) threads: usize,
    /// When to stop: processes not read by then are counted `unread`.
    pub(crate) deadline: Instant,
}

/// The outcome of one walk over `/proc/*/fd`.
#[derive(Debug, Default)]
pub(crate) struct FdScan {
    /// Wanted inode → pids holding it (unsorted, each pid once per inode).
    pub(crate) holders: HashMap<u64, Pids, Fast>,
    /// Every holding process, described right after its fds were read (while it still lives).
    pub(crate) processes: HashMap<u32, Arc<Process>, Fast>,
    /// Processes whose fd table could not be read (permission).
    pub(crate) unreadable: usize,
    /// Processes holding more than [`FDS_PER_PROCESS`] fds: only the first were read.
    pub(crate) crowded: usize,
    /// Processes not read at all: the walk's deadline passed first.
    pub(crate) unread: usize,
    /// `/proc` hides other users' processes from us (hidepid), so an owner may be invisible.
    pub(crate) hidden: bool,
}

/// Lists the pids under `proc_root`. With `getdents64` into one buffer: `read_dir` makes an
/// entry and a name per process, a third of the listing's time at 2 000 processes.
pub(crate) fn list_pids(proc_root: &Path) -> std::io::Result<Vec<u32>> {
    let dir = open_proc(proc_root)?;
    let mut pids = Vec::new();
    let mut buf = vec![0u8; DENTS_BUF];
    loop {
        let n = sys::getdents64(&dir, &mut buf)?;
        if n == 0 {
            return Ok(pids);
        }
        let names = sys::dirent_names(&buf[..n]);
        pids.extend(names.filter_map(|name| std::str::from_utf8(name).ok()?.parse::<u32>().ok()));
    }
}

/// Where a pid's fd walk ended.
enum PidScan {
    /// Read (possibly partially: the process may have exited midway).
    Done,
    /// Only the first [`FDS_PER_PROCESS`] fds were read: it holds more.
    Crowded,
    /// `/proc/PID/fd` or its links could not be read for lack of permission.
    Unreadable,
}

/// Opens `/proc/PID` relative to an open `/proc`: every later read of this process goes through
/// this handle, which keeps naming the same process even if the pid is reused (reads through it
/// then fail with ESRCH/ENOENT instead of describing the newcomer). `O_PATH`: it is only ever a
/// base for `openat`. `None` when it exited (or is hidden from us).
pub(crate) fn open_pid(proc_dir: &OwnedFd, pid: u32) -> Option<OwnedFd> {
    let mut name = [0u8; 12];
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    openat(proc_dir, decimal_cstr(pid, &mut name), flags, Mode::empty()).ok()
}

/// Bytes of `getdents64` records read at a time from `/proc/PID/fd`: room for the first
/// [`FDS_PER_PROCESS`] fds (24 bytes each up to fd 9 999) in one call, as libc's `readdir`.
const DENTS_BUF: usize = 32 << 10;
/// The longest record of an fd in `/proc/PID/fd`: 19 bytes of header, ten digits and a NUL,
/// rounded up to 8.
const FD_RECORD_MAX: usize = 32;

/// Lists the fds of an open `/proc/PID/fd` into `fds` (cleared first), ascending, at most
/// `max`; `Ok(true)` when there are more. The listing is in fd order, so stopping early keeps
/// the lowest fds and spares the kernel building an entry for each of the rest. `buf` is
/// scratch, sized here for `max` fds (and `.`, `..`), up to [`DENTS_BUF`] bytes.
pub(crate) fn list_fds(
    fd_dir: &OwnedFd,
    max: usize,
    fds: &mut Vec<u32>,
    buf: &mut Vec<u8>,
) -> Result<bool, Errno> {
    fds.clear();
    buf.resize(max.saturating_add(2).saturating_mul(FD_RECORD_MAX).min(DENTS_BUF), 0);
    loop {
        let n = sys::getdents64(fd_dir, buf)?;
        let names = sys::dirent_names(&buf[..n]);
        for fd in names.filter_map(|name| std::str::from_utf8(name).ok()?.parse().ok()) {
            if fds.len() == max {
                return Ok(true);
            }
            fds.push(fd);
        }
        // Until a call returns nothing: a short one is not the end when a signal is pending
        // (the kernel then stops filling early).
        if n == 0 {
            return Ok(false);
        }
    }
}

/// Walks `fd/` of an open `/proc/PID`, calling `found(inode)` for every socket fd among its
/// first [`FDS_PER_PROCESS`] whose inode is wanted.
fn scan_pid(
    pid_dir: &OwnedFd,
    wanted: &Inodes,
    scratch: &mut Scratch,
    mut found: impl FnMut(u64),
) -> PidScan {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = match openat(pid_dir, "fd", flags, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::EACCES | Errno::EPERM) => return PidScan::Unreadable,
        // ENOENT/ESRCH: exited; anything else: nothing we can learn from this process.
        Err(_) => return PidScan::Done,
    };
    let fds = &mut scratch.fds;
    let outcome = match list_fds(&dir, FDS_PER_PROCESS, fds, &mut scratch.dents) {
        Ok(true) => PidScan::Crowded,
        // Exited midway (ENOENT), or a short list: what was read is what there is.
        Ok(false) | Err(_) => PidScan::Done,
    };
    let mut name = [0u8; 12];
    let mut link = [0u8; 64];
    for &fd in fds.iter() {
        let link = match sys::readlinkat(&dir, decimal_cstr(fd, &mut name), &mut link) {
            Ok(link) => link,
            // Some processes let anyone list their fd table but refuse every link, even to
            // root (a process protected by a security module or another user namespace).
            Err(Errno::EACCES | Errno::EPERM) => return PidScan::Unreadable,
            // A closed fd (ENOENT) or an exited process: skip it.
            Err(_) => continue,
        };
        if let Some(inode) = parse_socket_link(link)
            && wanted.contains(&inode)
        {
            found(inode);
        }
    }
    outcome
}

/// `n` as a NUL-terminated decimal string in `buf`, without allocating.
fn decimal_cstr(mut n: u32, buf: &mut [u8; 12]) -> &CStr {
    let mut i = buf.len() - 1;
    buf[i] = 0;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Digits then one NUL: always a valid C string; the fallback is unreachable.
    CStr::from_bytes_with_nul(&buf[i..]).unwrap_or_default()
}

/// Largest /proc/PID/status read (it is ~1.5 KiB).
const STATUS_MAX: usize = 64 << 10;

/// Reads a small /proc file relative to an open directory into `buf` (cleared first).
///
/// Unlike `std::fs::read` it does not `fstat` first (/proc files report size 0) and stops at
/// the first short read: `status` and `cmdline` are generated whole by each read that has room
/// for them, so a short read is the end and a second `read` would only return 0.
/// At most `max` bytes are read (one more than that says it was longer).
fn read_proc_file(dir: &OwnedFd, path: &str, max: usize, buf: &mut Vec<u8>) -> Option<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut file = std::fs::File::from(openat(dir, path, flags, Mode::empty()).ok()?);
    buf.clear();
    let mut chunk = 4096.min(max + 1);
    loop {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = match file.read(&mut buf[start..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(_) => return None,
        };
        buf.truncate(start + n);
        if n < chunk || buf.len() > max {
            return Some(());
        }
        chunk = (chunk * 2).min(max + 1 - buf.len());
    }
}

/// Opens `/proc` as a directory handle for the `*at` calls.
pub(crate) fn open_proc(proc_root: &Path) -> nix::Result<OwnedFd> {
    open(proc_root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
}

/// Finds and describes every process under `proc_root` holding one of `wanted`, over up to
/// `threads` threads, within [`LIST_WALK_BUDGET`] (the benches' entry to the walk).
#[cfg(feature = "bench-internals")]
pub(crate) fn scan_fds(
    proc_root: &Path,
    wanted: &Inodes,
    users: &HashMap<u32, String>,
    detail: Detail,
    threads: usize,
) -> FdScan {
    if wanted.is_empty() {
        return FdScan::default();
    }
    let (Ok(proc_dir), Ok(pids)) = (open_proc(proc_root), list_pids(proc_root)) else {
        log::warn!("cannot read {}: process owners unknown", proc_root.display());
        return FdScan { unreadable: 1, ..FdScan::default() };
    };
    let deadline = Instant::now() + LIST_WALK_BUDGET;
    scan_pids(&proc_dir, &pids, &Search { wanted, users, detail, threads, deadline })
}

/// The size `stat` gives the fd table (`/proc/PID/fd`) at `path` from `dir`: since Linux 6.2
/// the number of fds open in it ([`fd_counts_shown`]), before that 0. `None` if unreadable.
pub(crate) fn fd_table_size<P: ?Sized + nix::NixPath>(dir: &OwnedFd, path: &P) -> Option<i64> {
    nix::sys::stat::fstatat(dir, path, AtFlags::empty()).ok().map(|st| st.st_size)
}

/// Whether this kernel gives the number of a process's open fds as the size of its
/// `/proc/PID/fd` (6.2+; before, 0 for all): our own process always has some.
pub(crate) fn fd_counts_shown(proc_dir: &OwnedFd) -> bool {
    fd_table_size(proc_dir, "self/fd").is_some_and(|n| n > 0)
}

/// Whether process `pid` has no open file (a kernel thread, a zombie), told by one `stat` of
/// its `/proc/PID/fd` where [`fd_counts_shown`]. False when it cannot be told.
fn has_no_files(proc_dir: &OwnedFd, pid: u32) -> bool {
    let mut path = [0u8; 20];
    let mut at = &mut path[..];
    // "PID/fd" and a NUL fit in 20 bytes for any u32.
    if write!(at, "{pid}/fd\0").is_err() {
        return false;
    }
    let len = 20 - at.len();
    CStr::from_bytes_with_nul(&path[..len])
        .is_ok_and(|path| fd_table_size(proc_dir, path) == Some(0))
}

/// Walks the fds of `pids` (relative to the open `/proc`), over up to `threads` threads, and
/// describes every process holding one of `wanted`. Pids not reached by `deadline` are counted
/// in `unread`, not read.
pub(crate) fn scan_pids(proc_dir: &OwnedFd, pids: &[u32], search: &Search) -> FdScan {
    let Search { wanted, users, detail, threads, deadline } = *search;
    if wanted.is_empty() || pids.is_empty() {
        return FdScan::default();
    }
    let counts_shown = fd_counts_shown(proc_dir);
    let threads = if pids.len() < PARALLEL_WALK_MIN_PIDS { 1 } else { threads };
    for_each_pid(pids, threads, |pid, local, scratch| {
        // One clock read (vDSO, tens of ns) per process: nothing beside its walk.
        if Instant::now() >= deadline {
            local.unread += 1;
            return;
        }
        // One call for a process without files, not five (open its directory and its fd
        // table, list that, close both): most of a small host's processes are kernel threads.
        // Nor is one of root's kernel threads then unreadable to other users: it holds nothing.
        if counts_shown && has_no_files(proc_dir, pid) {
            return;
        }
        let Some(pid_dir) = open_pid(proc_dir, pid) else { return };
        let mut holds = false;
        let seen = scan_pid(&pid_dir, wanted, scratch, |inode| {
            holds = true;
            let v = local.holders.entry(inode).or_default();
            if !v.contains(&pid) {
                v.push(pid);
            }
        });
        match seen {
            PidScan::Done => {}
            PidScan::Crowded => local.crowded += 1,
            PidScan::Unreadable => local.unreadable += 1,
        }
        if let Some(p) =
            holds.then(|| describe(&pid_dir, pid, users, detail, &mut scratch.buf)).flatten()
        {
            local.processes.insert(pid, Arc::new(p));
        }
    })
}

/// Buffers a worker keeps across the processes it reads.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The fds of one process.
    fds: Vec<u32>,
    /// `getdents64` records.
    dents: Vec<u8>,
    /// A /proc file.
    pub(crate) buf: Vec<u8>,
}

/// Runs `work` for each of `pids` over up to `threads` threads (the callers say how many pay:
/// [`PARALLEL_WALK_MIN_PIDS`], and the BPF lookup's own for describing holders), each worker
/// filling its own [`FdScan`]; returns them merged.
fn for_each_pid(
    pids: &[u32],
    threads: usize,
    work: impl Fn(u32, &mut FdScan, &mut Scratch) + Sync,
) -> FdScan {
    let threads = threads.clamp(1, 16);
    let next = AtomicUsize::new(0);
    let result = Mutex::new(FdScan::default());
    let worker = || {
        let mut local = FdScan::default();
        let mut scratch = Scratch::default();
        loop {
            let start = next.fetch_add(CHUNK, Ordering::Relaxed);
            let Some(chunk) = pids.get(start..pids.len().min(start + CHUNK)) else { break };
            if chunk.is_empty() {
                break;
            }
            for &pid in chunk {
                work(pid, &mut local, &mut scratch);
            }
        }
        // A poisoned lock only means another worker panicked; its data is still a valid map.
        let mut total = result.lock().unwrap_or_else(|e| e.into_inner());
        total.merge(local);
    };
    if threads == 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                // Refused (a pids limit): the threads that did start, and this one, share
                // the work all the same.
                let spawned = std::thread::Builder::new().spawn_scoped(s, worker);
                if let Err(e) = spawned {
                    log::debug!("owner walk on fewer threads: {e}");
                    break;
                }
            }
            worker();
        });
    }
    result.into_inner().unwrap_or_else(|e| e.into_inner())
}

impl FdScan {
    pub(super) fn merge(&mut self, other: FdScan) {
        self.unreadable += other.unreadable;
        self.crowded += other.crowded;
        self.unread += other.unread;
        self.hidden |= other.hidden;
        self.processes.extend(other.processes);
        for (inode, pids) in other.holders {
            let v = self.holders.entry(inode).or_default();
            for pid in pids {
                if !v.contains(&pid) {
                    v.push(pid);
                }
            }
        }
    }

    /// The owners of `inode` by ascending pid, or why there are none: first what the walk
    /// skipped (the owner may be there), then hidepid (it hides processes rather than refusing
    /// them, and explains refusals too), then refusals.
    pub(super) fn owners_of(&self, inode: u64) -> Owners {
        let mut procs: Vec<Arc<Process>> = self
            .holders
            .get(&inode)
            .into_iter()
            .flatten()
            .filter_map(|pid| self.processes.get(pid).cloned())
            .collect();
        procs.sort_by_key(|p| p.pid);
        if !procs.is_empty() {
            Owners::Known(procs)
        } else if self.crowded + self.unread > 0 {
            Owners::Unknown(UnknownReason::Skipped { crowded: self.crowded, unread: self.unread })
        } else if self.hidden {
            Owners::Unknown(UnknownReason::Hidden)
        } else if self.unreadable > 0 {
            Owners::Unknown(UnknownReason::PermissionDenied { unreadable: self.unreadable })
        } else {
            Owners::Unknown(UnknownReason::NotFound)
        }
    }
}

/// Describes one process from `status`, `cmdline` and `cgroup` of its open `/proc/PID`; `None`
/// if it exited. `buf` is a scratch buffer kept across calls.
pub(super) fn describe(
    pid_dir: &OwnedFd,
    pid: u32,
    users: &HashMap<u32, String>,
    detail: Detail,
    buf: &mut Vec<u8>,
) -> Option<Process> {
    read_proc_file(pid_dir, "status", STATUS_MAX, buf)?;
    let status = parse_status(buf)?;
    let cmdline =
        match detail.cmdline.then(|| read_proc_file(pid_dir, "cmdline", CMDLINE_MAX_BYTES, buf)) {
            Some(Some(())) => parse_cmdline(buf),
            _ => Vec::new(),
        };
    let cgroup = match detail.cgroup.then(|| read_proc_file(pid_dir, "cgroup", CGROUP_MAX, buf)) {
        Some(Some(())) => parse_cgroup(buf),
        _ => None,
    };
    Some(Process {
        pid,
        ppid: status.ppid,
        comm: status.name,
        cmdline,
        uid: status.uid,
        user: users.get(&status.uid).cloned(),
        ns_pid: status.ns_pid.filter(|n| *n != pid),
        cgroup,
    })
}

/// Reads the user table, empty (with a debug log) when it cannot be read.
pub(crate) fn read_users(passwd: &Path) -> HashMap<u32, String> {
    match std::fs::read(passwd) {
        Ok(b) => parse_passwd(&b),
        Err(e) => {
            log::debug!("cannot read {}: {e}; user names unknown", passwd.display());
            HashMap::new()
        }
    }
}

/// Which of `pids` hold which of `wanted`: a walk of those processes' fds only (bounded as
/// every walk is). A process that cannot be read holds nothing here.
pub(crate) fn holders_among(
    proc_root: &Path,
    pids: &[u32],
    wanted: &Inodes,
) -> HashMap<u64, Pids, Fast> {
    let Ok(proc_dir) = open_proc(proc_root) else { return HashMap::default() };
    let detail = Detail { cmdline: false, cgroup: false };
    let deadline = Instant::now() + WALK_BUDGET;
    let users = HashMap::new();
    scan_pids(&proc_dir, pids, &Search { wanted, users: &users, detail, threads: 1, deadline })
        .holders
}

/// The BPF iterator of a one-shot lookup, loaded and passed over once before the sockets
/// asked about are known, so that it runs beside the dump that finds them
/// ([`iterator_beside`]).
#[derive(Debug)]
pub(crate) struct Beside {
    iter: BpfIter,
    early: Option<EarlyPass>,
    /// The processes, listed before the pass.
    pids: std::io::Result<Vec<u32>>,
}

/// Whether a one-shot lookup done as `how` may use the BPF iterator, told before the
/// processes are listed, so that loading it can start at once: with `Auto`, when the host
/// runs at least [`AUTO_BPF_MIN_PROCESSES`] processes. Told by one `stat`: the link count of
/// `/proc` is its own two, its few fixed subdirectories and one per process on the host (in
/// every pid namespace; threads not counted), so it bounds the processes from above, by about
/// ten on the host (the iterator is refused in another pid namespace anyway). A count of 0
/// or 1 (a filesystem that does not count subdirectories) tells nothing: then it may.
pub(crate) fn may_use_iterator(how: OwnerLookup, proc_root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match how {
        OwnerLookup::Proc => false,
        OwnerLookup::Bpf => true,
        OwnerLookup::Auto => std::fs::metadata(proc_root)
            .map_or(true, |m| m.nlink() <= 1 || m.nlink() - 2 >= AUTO_BPF_MIN_PROCESSES as u64),
    }
}

/// Loads the iterator as `how` asks, then lists the processes under `proc_root` (the list must
/// come before the pass: it is what tells a process the pass could not see from one that did
/// not exist yet); with `early`, one pass keeping every socket fd. (Once loaded, `Auto` passes
/// whatever the count: the load was the cost, and a pass is cheaper than a walk of even a
/// small host's processes.) `caller` is the receiving end of a channel the caller never sends
/// on: dropped (its dump failed), nothing will use the pass, and none is made. An error only
/// when `how` is [`OwnerLookup::Bpf`] and the iterator cannot load.
pub(crate) fn iterator_beside(
    how: OwnerLookup,
    proc_root: &Path,
    early: bool,
    caller: &std::sync::mpsc::Receiver<std::convert::Infallible>,
) -> crate::error::Result<Option<Beside>> {
    std::thread::scope(|scope| {
        // Taking the inode floor waits for a turn on every CPU (milliseconds on a busy host):
        // on a thread of its own, beside the load, where the load may succeed. Without it, a
        // second pass looks for every socket the early one did not find.
        let floor = (early && may_load(how)).then(|| {
            std::thread::Builder::new().name("pw-floor".into()).spawn_scoped(scope, inode_floor)
        });
        let Some(iter) = load_iterator(how)? else { return Ok(None) };
        if caller.try_recv() == Err(std::sync::mpsc::TryRecvError::Disconnected) {
            return Ok(None);
        }
        let pids = list_pids(proc_root);
        let floor = match floor {
            Some(Ok(thread)) => thread.join().ok().flatten(),
            Some(Err(e)) => {
                log::debug!("no thread for the inode floor: {e}");
                None
            }
            None => None,
        };
        if early && floor.is_none() {
            log::debug!(
                "no inode floor: every socket the pass beside the dump lacks gets a second pass"
            );
        }
        let early = early.then(|| early_pass(Some(&iter), floor)).flatten();
        Ok(Some(Beside { iter, early, pids }))
    })
}

/// Fills in `owners` of every socket with one pass over all processes: of the iterator when
/// `beside` brings one (with its pass made beside the dump, if any), else of `/proc`, listed
/// now: a process started during the dump may hold one of its sockets.
pub(crate) fn resolve(
    sockets: &mut [Socket],
    beside: Option<Beside>,
    users: &HashMap<u32, String>,
    proc_root: &Path,
    detail: Detail,
    threads: usize,
) {
    let mut wanted = Inodes::with_capacity_and_hasher(sockets.len(), Fast::default());
    wanted.extend(sockets.iter().map(|s| s.inode).filter(|i| *i != 0));
    if wanted.is_empty() {
        for socket in sockets.iter_mut() {
            socket.owners = FdScan::default().owners_of(socket.inode);
        }
        return;
    }
    let deadline = Instant::now() + LIST_WALK_BUDGET;
    let search = Search { wanted: &wanted, users, detail, threads, deadline };
    let from_iter = beside.and_then(|Beside { iter, early, pids }| {
        // A socket accept(2) made, or one passed between processes, can be older than the
        // early pass and missing from it all the same: only listeners and UDP sockets, made
        // and installed by one socket(2), are known to have been there for it to see.
        let mut made_by_socket = Inodes::with_capacity_and_hasher(sockets.len(), Fast::default());
        made_by_socket.extend(
            sockets
                .iter()
                .filter(|s| s.state == State::Listen || s.protocol == Protocol::Udp)
                .map(|s| s.inode),
        );
        let early = early.map(|e| early_made_by_socket(e, made_by_socket));
        let listed = pids.as_deref().unwrap_or_default();
        try_iterator(Some(&iter), early, proc_root, listed, &search)
    });
    let mut scan = match from_iter {
        Some(scan) => scan,
        // Listed only for the walk: the iterator's list came before its pass.
        None => match (open_proc(proc_root), list_pids(proc_root)) {
            (Ok(proc_dir), Ok(pids)) => scan_pids(&proc_dir, &pids, &search),
            _ => {
                log::warn!("cannot read {}: process owners unknown", proc_root.display());
                FdScan { unreadable: 1, ..FdScan::default() }
            }
        },
    };
    scan.hidden = hidepid::explains_missing(&scan, &wanted, proc_root);
    for socket in sockets.iter_mut() {
        socket.owners = scan.owners_of(socket.inode);
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

/// Whether `pid` (or, with `children`, one of its descendants) holds the socket.
pub(crate) fn held_by(s: &Socket, pid: u32, children: bool, proc_root: &Path) -> bool {
    s.processes().iter().any(|p| {
        if p.pid == pid {
            return true;
        }
        if !children {
            return false;
        }
        // Walk up the parents; bounded in case of a cycle from pid reuse mid-walk.
        let mut parent = p.ppid;
        for _ in 0..64 {
            match parent {
                Some(pp) if pp == pid => return true,
                Some(pp) if pp > 1 => parent = parent_of(proc_root, pp),
                _ => return false,
            }
        }
        false
    })
}

/// The parent pid of `pid`, from `/proc/PID/status`.
fn parent_of(proc_root: &Path, pid: u32) -> Option<u32> {
    let bytes = std::fs::read(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_status(&bytes)?.ppid
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/PID/status of a process in a container (pid 4242 on the host, 7 inside), from
    /// Linux 6.18.44; abridged to the lines around the ones read.
    const STATUS_CONTAINER: &str = "Name:\tnode\nUmask:\t0022\nState:\tS (sleeping)\n\
Tgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\n\
Gid:\t1000\t1000\t1000\t1000\nFDSize:\t64\nGroups:\t\nNStgid:\t4242\t7\nNSpid:\t4242\t7\n\
NSpgid:\t4242\t7\nNSsid:\t4200\t1\nKthread:\t0\nVmPeak:\t   10000 kB\n";

    /// /proc/1/status on the host (no nested pid namespace), Linux 6.18.44.
    const STATUS_HOST_INIT: &str = "Name:\tsystemd\nUmask:\t0000\nState:\tS (sleeping)\n\
Tgid:\t1\nNgid:\t0\nPid:\t1\nPPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
NSpid:\t1\n";

    /// `/proc/self/fd`, open. (Other tests of this process open and close fds meanwhile: the
    /// tests below assert only what holds whatever they do.)
    fn own_fd_dir() -> OwnedFd {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        open(Path::new("/proc/self/fd"), flags, Mode::empty()).unwrap()
    }

    #[test]
    fn list_fds_lists_every_fd_in_order_over_several_calls() {
        // Past one buffer's worth, so the listing takes more than one call.
        let held: Vec<std::fs::File> =
            (0..1500).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let (mut fds, mut buf) = (Vec::new(), Vec::new());
        assert_eq!(list_fds(&own_fd_dir(), usize::MAX, &mut fds, &mut buf), Ok(false));
        assert!(fds.windows(2).all(|w| w[0] < w[1]), "ascending, each once");
        for f in &held {
            let fd = std::os::fd::AsRawFd::as_raw_fd(f) as u32;
            assert!(fds.binary_search(&fd).is_ok(), "fd {fd} of {} listed", fds.len());
        }
    }

    #[test]
    fn list_fds_keeps_the_lowest_and_says_there_are_more() {
        let (mut fds, mut buf) = (Vec::new(), Vec::new());
        assert_eq!(list_fds(&own_fd_dir(), 2, &mut fds, &mut buf), Ok(true));
        // stdin, stdout and stderr are open under the test harness: the lowest two.
        assert_eq!(fds, [0, 1]);
    }

    #[test]
    fn dirent_records_are_read_without_trusting_them() {
        // Two records as the kernel writes them: ".", then "12".
        let mut records = Vec::new();
        for name in [&b"."[..], b"12"] {
            let len = (19 + name.len() + 1).next_multiple_of(8);
            let mut r = vec![0u8; len];
            r[16..18].copy_from_slice(&(len as u16).to_ne_bytes());
            r[19..19 + name.len()].copy_from_slice(name);
            records.extend(r);
        }
        let names: Vec<&[u8]> = sys::dirent_names(&records).collect();
        assert_eq!(names, [&b"."[..], b"12"]);
        // Cut anywhere, or a length of zero or past the end: no panic, no endless loop.
        for cut in 0..records.len() {
            assert!(sys::dirent_names(&records[..cut]).count() <= 2);
        }
        let mut zero = records.clone();
        zero[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(sys::dirent_names(&zero).count(), 0);
        zero[16..18].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(sys::dirent_names(&zero).count(), 0);
    }

    #[test]
    fn auto_loads_the_iterator_beside_the_dump_only_on_a_host_of_many_processes() {
        let proc_root = tempfile::tempdir().unwrap();
        let dirs = |n: usize| {
            for pid in 1..=n {
                let _ = std::fs::create_dir(proc_root.path().join(pid.to_string()));
            }
        };
        dirs(1);
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(proc_root.path()).unwrap().nlink() != 3 {
            eprintln!(
                "skipped: the temporary directory's filesystem does not count subdirectories"
            );
            return;
        }
        dirs(AUTO_BPF_MIN_PROCESSES - 1);
        assert!(!may_use_iterator(OwnerLookup::Auto, proc_root.path()), "fewer processes still");
        assert!(may_use_iterator(OwnerLookup::Bpf, proc_root.path()), "asked for");
        dirs(AUTO_BPF_MIN_PROCESSES);
        assert!(may_use_iterator(OwnerLookup::Auto, proc_root.path()));
        assert!(!may_use_iterator(OwnerLookup::Proc, proc_root.path()));
        let gone = proc_root.path().join("gone");
        assert!(may_use_iterator(OwnerLookup::Auto, &gone), "unknown: try");
        // The kernel fact it rests on: /proc links one per process on the host (in every pid
        // namespace, so at least those this /proc lists), and a few more (other tests start
        // and end processes meanwhile: some slack).
        let links = std::fs::metadata("/proc").unwrap().nlink();
        let listed = list_pids(Path::new("/proc")).unwrap().len() as u64;
        assert!(links.saturating_sub(2) + 32 >= listed, "{links} links, {listed} processes");
    }

    /// Loaded beside the dump, the iterator passes (`Auto` as `Bpf`): the load was the cost.
    #[cfg(feature = "ebpf")]
    #[test]
    fn loaded_beside_the_dump_the_iterator_passes() {
        let beside = |how, early| {
            let proc_root = tempfile::tempdir().unwrap();
            std::fs::create_dir(proc_root.path().join("1")).unwrap();
            let (_waiting, caller) = std::sync::mpsc::channel();
            iterator_beside(how, proc_root.path(), early, &caller)
        };
        match beside(OwnerLookup::Bpf, true) {
            Ok(Some(b)) => {
                assert!(b.early.is_some(), "one pass beside the dump");
                assert_eq!(b.pids.unwrap(), [1], "the processes listed before it");
            }
            Ok(None) => unreachable!("--owners bpf either loads or fails"),
            Err(e) => return crate::source::ebpf::tests::skip(&format!("no iterator: {e}")),
        }
        let auto = beside(OwnerLookup::Auto, true).unwrap();
        assert!(auto.is_some_and(|b| b.early.is_some()), "a small host too, once loaded");
        assert!(beside(OwnerLookup::Proc, true).unwrap().is_none());
        // Loaded after the dump (no thread for it): no early pass.
        let after = beside(OwnerLookup::Bpf, false).unwrap();
        assert!(after.is_some_and(|b| b.early.is_none()));
        // The caller gave up (its dump failed): no pass.
        let (waiting, caller) = std::sync::mpsc::channel();
        drop(waiting);
        let proc = Path::new("/proc");
        assert!(iterator_beside(OwnerLookup::Bpf, proc, true, &caller).unwrap().is_none());
    }

    /// A zombie (no files left) is told by one stat; a live process with files is walked.
    #[test]
    fn a_process_without_files_is_told_without_opening_it() {
        let proc_dir = open_proc(Path::new("/proc")).unwrap();
        if !fd_counts_shown(&proc_dir) {
            eprintln!("skipped: this kernel does not give fd counts (before 6.2)");
            return;
        }
        assert!(!has_no_files(&proc_dir, std::process::id()), "this test has files");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        // Unreaped, it stays a zombie: state Z, after the command's name in parentheses.
        while !std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        {
            assert!(Instant::now() < deadline, "{stat} never showed a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(has_no_files(&proc_dir, child.id()));
        child.wait().unwrap();
        // In the host's pid namespace, pid 2 is kthreadd, a kernel thread.
        if std::fs::read_to_string("/proc/2/status").is_ok_and(|s| s.starts_with("Name:\tkthreadd"))
        {
            assert!(has_no_files(&proc_dir, 2), "a kernel thread has no files");
        }
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link(b"socket:[]"), None);
        assert_eq!(parse_socket_link(b"pipe:[12345]"), None);
        assert_eq!(parse_socket_link(b"/dev/null"), None);
        assert_eq!(parse_socket_link(b"socket:[99999999999999999999999]"), None);
    }

    #[test]
    fn status_in_container() {
        let s = parse_status(STATUS_CONTAINER.as_bytes()).unwrap();
        assert_eq!(s, Status { name: "node".into(), uid: 1000, ppid: Some(4200), ns_pid: Some(7) });
    }

    #[test]
    fn status_on_host() {
        let s = parse_status(STATUS_HOST_INIT.as_bytes()).unwrap();
        assert_eq!((s.name.as_str(), s.uid, s.ns_pid), ("systemd", 0, Some(1)));
    }

    #[test]
    fn status_missing_fields() {
        assert_eq!(parse_status(b"Name:\tx\n"), None);
        assert_eq!(parse_status(b"Uid:\tnope\nName:\tx\n"), None);
        for cut in 0..STATUS_CONTAINER.len() {
            let _ = parse_status(&STATUS_CONTAINER.as_bytes()[..cut]);
        }
    }

    #[test]
    fn names_as_status_shows_them() {
        // What Linux 6.18.44 prints as `Name:` for these comms (proc_task_name escapes only
        // `\n` and `\`), after parse_status's trim.
        assert_eq!(status_name(b"nginx\0\0\0\0\0\0\0\0\0\0\0"), "nginx");
        assert_eq!(status_name(b"a\nb\\c\td\0"), "a\\nb\\\\c\td");
        assert_eq!(status_name(b" spaced \0"), "spaced");
        assert_eq!(status_name(b"0123456789abcdef"), "0123456789abcdef", "no NUL: all 16");
        assert_eq!(status_name(b"\xff\xfe"), "\u{fffd}\u{fffd}");
        let status = b"Name:\ta\\nb\\\\c\td\nUid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status(status).unwrap().name, status_name(b"a\nb\\c\td"));
    }

    #[test]
    fn decimal_names() {
        let mut buf = [0u8; 12];
        assert_eq!(decimal_cstr(0, &mut buf).to_bytes(), b"0");
        assert_eq!(decimal_cstr(1234, &mut buf).to_bytes(), b"1234");
        assert_eq!(decimal_cstr(u32::MAX, &mut buf).to_bytes(), b"4294967295");
    }

    #[test]
    fn cmdlines() {
        assert_eq!(parse_cmdline(b"python3\0-m\0http.server\0"), ["python3", "-m", "http.server"]);
        assert_eq!(parse_cmdline(b"nginx: worker process"), ["nginx: worker process"]);
        assert!(parse_cmdline(b"").is_empty());
        // What a hostile process can make of its command line is cut, visibly.
        let many = "a\0".repeat(180_000);
        let v = parse_cmdline(many.as_bytes());
        assert_eq!(v.len(), CMDLINE_MAX_ARGS + 1);
        assert_eq!(v.last().map(String::as_str), Some(CMDLINE_CUT));
        let long = format!("{}\0", "x".repeat(10 * CMDLINE_MAX_BYTES));
        let v = parse_cmdline(long.as_bytes());
        assert_eq!(v[0].len(), CMDLINE_MAX_BYTES);
        assert_eq!(v[1], CMDLINE_CUT);
        let exact = format!("{}\0", "y".repeat(CMDLINE_MAX_BYTES - 1));
        assert_eq!(parse_cmdline(exact.as_bytes()).len(), 1, "at the limit: not cut");
    }

    #[test]
    fn a_walk_past_its_deadline_reads_nothing_and_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            listener.as_raw_fd()
        }))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
        let proc_dir = open_proc(Path::new("/proc")).unwrap();
        let pids = [std::process::id(), 1];
        let wanted = Inodes::from_iter([inode]);
        let users = HashMap::new();
        let detail = Detail { cmdline: false, cgroup: false };
        let search =
            |deadline| Search { wanted: &wanted, users: &users, detail, threads: 1, deadline };
        let late = scan_pids(&proc_dir, &pids, &search(Instant::now()));
        assert_eq!((late.unread, late.processes.len()), (2, 0));
        assert_eq!(
            late.owners_of(inode),
            Owners::Unknown(UnknownReason::Skipped { crowded: 0, unread: 2 })
        );
        let soon = Instant::now() + WALK_BUDGET;
        let found = scan_pids(&proc_dir, &pids, &search(soon));
        assert_eq!(found.unread, 0);
        assert!(matches!(found.owners_of(inode), Owners::Known(p) if p[0].pid == pids[0]));
    }

    #[test]
    fn a_process_handle_never_reads_its_successor() {
        let proc_dir = open_proc(Path::new("/proc")).unwrap();
        let spawn = || std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let mut first = spawn();
        let pid = first.id();
        let handle = open_pid(&proc_dir, pid).expect("a live process opens");
        let (users, detail) = (HashMap::new(), Detail { cmdline: true, cgroup: true });
        let mut buf = Vec::new();
        assert!(describe(&handle, pid, &users, detail, &mut buf).is_some());
        first.kill().unwrap();
        first.wait().unwrap();
        // Hand the pid to a newcomer: as root, by setting the last pid handed out (what CRIU
        // does); other processes forking meanwhile may take it first, so try a few times.
        let mut successor = None;
        for _ in 0..50 {
            if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
                break;
            }
            let mut next = std::process::Command::new("/bin/sh")
                .args(["-c", "exec sleep 30"])
                .spawn()
                .unwrap();
            if next.id() == pid {
                successor = Some(next);
                break;
            }
            let _ = next.kill();
            let _ = next.wait();
        }
        // Through the handle: nothing, not the newcomer's fds or status.
        assert!(describe(&handle, pid, &users, detail, &mut buf).is_none());
        let mut scratch = Scratch::default();
        let mut found = false;
        scan_pid(&handle, &Inodes::from_iter([1]), &mut scratch, |_| found = true);
        assert!(scratch.fds.is_empty() && !found);
        if let Some(mut next) = successor {
            // By path, the same pid now names the newcomer: reads by pid would mix them.
            let fresh = open_pid(&proc_dir, pid).unwrap();
            assert!(describe(&fresh, pid, &users, detail, &mut buf).is_some());
            let _ = next.kill();
            let _ = next.wait();
        } else {
            eprintln!(
                "pid {pid} was not reused (not root, or taken): checked the stale handle only"
            );
        }
    }

    #[test]
    fn passwd() {
        let users = parse_passwd(
            b"root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nwww-data:x:33:33::/var/www:\n\
toor:x:0:0::/:/bin/sh\nbad:x:notanumber:0::/:\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&33).map(String::as_str), Some("www-data"));
        assert_eq!(users.len(), 2);
    }
}
