//! Socket inode → holding processes through one pass of a BPF `iter/task_file` program
//! (feature `ebpf`): another way of filling the map the `/proc/*/fd` walk fills, read in one
//! pass inside the kernel instead of a `readlink` per fd (10 000 sockets of 2 000 processes:
//! ~9 ms against ~70 ms). Each record also carries what `/proc/PID/status` would say of the
//! holder (parent, uid, name, pid-namespace depth), read at the same instant as its fds.
//! Everything after the map — describing each holder, completing it from `/proc` where the
//! pass cannot (command lines, pids inside a child pid namespace), the reasons of unknown
//! owners — is the walk's own code (`super`).
//!
//! Owns loading `crates/core/bpf/owners.bpf.o` (`load`) and reading it (here). Loading takes
//! three `bpf(2)` calls rather than aya: aya parses all of the kernel's BTF into owned values
//! (~10 ms) and relocates the object generically (~30 ms), ten times a whole small listing.
//! The object has one program and a few CO-RE field relocations; `btf` finds just those
//! fields (and the iterator's attach point) in the kernel's BTF in one pass over its bytes.
//! Nothing is pinned and nothing outlives the process: the program and its link are file
//! descriptors, closed with [`OwnerIter`].
//!
//! The iterator sees every process of the host, whatever `/proc` hides (`lookup` then keeps
//! only the holders `/proc` shows us, where hidepid hides the rest); the limits of the
//! walk still hold where they matter: a deadline between reads (the kernel yields every
//! million objects), and records kept only for wanted inodes, so memory follows the sockets
//! asked about, not what others hold; except in a `list`'s pass beside the dump, made before
//! the sockets are known ([`Keep::Every`]), which keeps at most [`EVERY_MAX`] (4 MiB).

mod btf;
mod elf;
#[cfg(any(test, feature = "bench-internals"))]
pub(crate) mod fuzz;
mod load;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub(crate) use self::load::OwnerIter;
#[cfg(test)]
pub(crate) use self::load::Unavailable;
use super::{
    Detail, Fast, FdScan, Inodes, Pids, Search, describe, fd_counts_shown, fd_table_size,
    for_each_pid, list_fds, open_pid, open_proc, status_name,
};
use crate::process::Process;
use crate::{bytes, sys};

/// One record (`struct pw_owner` in owners.bpf.c): tgid u32, fd u32, socket inode u64,
/// ppid u32, uid u32, pid namespace level u32, described u32, comm [u8; 16].
const RECORD: usize = 48;

/// Which socket fds a pass keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keep<'a> {
    /// Those of these inodes: the sockets a lookup is for.
    Wanted(&'a Inodes),
    /// Every one: a pass made before the sockets asked about are known (beside the dump that
    /// finds them). Bounded by its time budget, and by [`EVERY_MAX`] sockets.
    Every,
}

/// Most socket fds a [`Keep::Every`] pass keeps (16 bytes each: 4 MiB). Any user may hold
/// hundreds of thousands; past this the pass gives up, and the lookup makes its own pass for
/// the sockets asked about once they are known. A host of 10 000 listeners has ~10 000.
const EVERY_MAX: usize = 256 << 10;

/// What one pass found.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    /// (socket inode, pid, fd) of every socket fd kept, in the order read.
    pub(crate) sockets: Vec<(u64, u32, u32)>,
    /// The deadline passed before the pass ended: processes from this pid on were not read.
    pub(crate) stopped_at: Option<u32>,
    /// Every process the pass walked (one with a socket, or a file among fds 0 to 2), with
    /// what the kernel said of it when one of those fds was open.
    pub(crate) walked: HashMap<u32, Option<Task>, Fast>,
    /// For a pass made before the sockets were known ([`early_pass`]): every socket made
    /// after the pass began (and since a little before) has a greater inode number
    /// ([`inode_floor`]). `None`: no bound known.
    pub(crate) floor: Option<u64>,
    /// Of the sockets asked about, those `socket(2)` made and installed in one call
    /// (listeners, UDP sockets): one numbered under the floor was in its process's fd table
    /// before the pass began. Not so for the others: `accept(2)` numbers its socket before
    /// it waits for a connection, and a socket passed between processes (`SCM_RIGHTS`) may
    /// be in flight while the pass reads both.
    pub(crate) made_by_socket: Inodes,
}

/// The holders of the wanted sockets among what passes kept.
#[derive(Debug)]
struct Holders {
    /// Wanted inode → pids holding it (each pid once).
    of: HashMap<u64, Pids, Fast>,
    /// For each holder, one of its wanted sockets and the fd it was at: what proves, when
    /// /proc/PID is read later, that the pid still names the process the pass saw.
    proof: HashMap<u32, (u32, u64), Fast>,
}

impl Holders {
    /// Sized for `wanted`: each holds one socket or a few.
    fn sized_for(wanted: &Inodes) -> Holders {
        Holders {
            of: HashMap::with_capacity_and_hasher(wanted.len(), Fast::default()),
            proof: HashMap::with_capacity_and_hasher(wanted.len(), Fast::default()),
        }
    }

    fn add(&mut self, pass: &Pass, wanted: &Inodes) {
        // A pass reads one process's fds after another: its first wanted socket is the proof.
        let mut last = None;
        for &(inode, pid, fd) in pass.sockets.iter().filter(|(i, ..)| wanted.contains(i)) {
            if last != Some(pid) {
                self.proof.entry(pid).or_insert((fd, inode));
                last = Some(pid);
            }
            let v = self.of.entry(inode).or_default();
            if !v.contains(&pid) {
                v.push(pid);
            }
        }
    }
}

impl Pass {
    /// Whether this pass, made before the sockets were known, may have missed `inode` while
    /// a process held it: unless the socket was numbered before the pass began
    /// ([`Pass::floor`]) by the `socket(2)` that installed it ([`Pass::made_by_socket`]).
    fn may_have_missed(&self, inode: u64) -> bool {
        !(self.floor.is_some_and(|f| inode <= f) && self.made_by_socket.contains(&inode))
    }

    /// The holders of `wanted` among the sockets kept.
    #[cfg(test)]
    pub(crate) fn holders_of(&self, inode: u64) -> Vec<u32> {
        let wanted = Inodes::from_iter([inode]);
        let mut h = Holders::sized_for(&wanted);
        h.add(self, &wanted);
        h.of.remove(&inode).unwrap_or_default().to_vec()
    }
}

/// What the pass read of a process, at the instant it read its fds: what
/// `/proc/PID/status` says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Task {
    /// Its parent's tgid.
    pub(crate) ppid: u32,
    /// Its real uid.
    pub(crate) uid: u32,
    /// The depth of its pid namespace: 0 in the initial one.
    pub(crate) level: u32,
    /// Its command name, NUL-padded.
    pub(crate) comm: [u8; 16],
}

/// Below this many holders, describing them is as fast on one thread as on several (each
/// costs `/proc` reads: a proof, and the status, command line or cgroup asked for).
const PARALLEL_DESCRIBE_MIN_PIDS: usize = 64;

/// Below this fd, every file gets a record (a marker), so that a walked process is known to
/// have been (`PW_MARKER_FDS` in owners.bpf.c).
const MARKER_FDS: u32 = 3;

impl OwnerIter {
    /// One pass over every open file of every process: the socket fds `keep` asks for. Stops
    /// at `deadline` (checked between reads), saying where.
    pub(crate) fn pass(&self, keep: Keep<'_>, deadline: Instant) -> std::io::Result<Pass> {
        let iter = sys::bpf_iter_create(&self.link)?;
        let mut file = std::fs::File::from(iter);
        let mut pass = Pass::default();
        // The kernel hands out at most its 32 KiB buffer a read; a multiple of the record.
        let mut buf = vec![0u8; 32 << 10];
        let mut filled = 0;
        let mut last_pid = 0;
        loop {
            let n = match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => n,
                // A million objects without a record: the kernel yields; carry on.
                Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            filled += n;
            let whole = filled - filled % RECORD;
            for rec in buf[..whole].chunks_exact(RECORD) {
                let (pid, fd, inode, task) = decode(rec);
                if pid != last_pid || task.is_some() {
                    let known = pass.walked.entry(pid).or_default();
                    if known.is_none() {
                        *known = task;
                    }
                    last_pid = pid;
                }
                let kept = match keep {
                    Keep::Wanted(wanted) => wanted.contains(&inode),
                    Keep::Every => inode != 0,
                };
                if kept {
                    pass.sockets.push((inode, pid, fd));
                }
            }
            buf.copy_within(whole..filled, 0);
            filled -= whole;
            if Instant::now() >= deadline
                || matches!(keep, Keep::Every) && pass.sockets.len() >= EVERY_MAX
            {
                pass.stopped_at = Some(last_pid.saturating_add(1));
                break;
            }
        }
        Ok(pass)
    }
}

/// A pass keeping every socket fd, to be made before the sockets asked about are known (see
/// [`scan`]); `floor` is an [`inode_floor`] taken before it. `None` when it failed or stopped
/// at [`EVERY_MAX`] sockets: logged, and the lookup makes its own pass. (One out of time is
/// kept: [`scan`] then walks `/proc` instead, as after any pass that took too long.)
pub(crate) fn early_pass(iter: &OwnerIter, floor: Option<u64>) -> Option<Pass> {
    match iter.pass(Keep::Every, Instant::now() + PASS_BUDGET) {
        Ok(pass) if pass.sockets.len() >= EVERY_MAX => {
            log::debug!("BPF owner pass beside the dump stopped at {} sockets", pass.sockets.len());
            None
        }
        Ok(pass) => Some(Pass { floor, ..pass }),
        Err(e) => {
            log::debug!("BPF owner pass beside the dump failed: {e}");
            None
        }
    }
}

/// Longest [`inode_floor`] may take: moving to a CPU waits for a turn on it, which on a large
/// busy host adds up.
const FLOOR_BUDGET: Duration = Duration::from_millis(5);

/// A number below the inode of every socket made from now on, or `None` when it cannot be
/// known. Sockets and pipes are numbered by the kernel's `get_next_ino` (sockfs and pipefs
/// share it; an implementation detail, not an ABI, checked by a test): each CPU counts up
/// through its own batch of a shared counter, and takes a new batch, above every batch handed
/// out before, when its own runs out. So a socket made on a CPU later than a pipe made there
/// now gets a greater number, and the least of one pipe's number per CPU bounds every later
/// socket from below (a socket whose number is not greater was numbered already). Each pipe is
/// made with the calling thread moved to its CPU, so call this on a thread of its own, which
/// ends next; every online CPU must be one it may run on (not so in a cpuset), and all within
/// [`FLOOR_BUDGET`], or there is no bound. Two cases escape it, each in the window from the
/// floor to the end of the pass (~15 ms): a CPU brought online meanwhile resumes an old batch,
/// and the 32-bit counter wrapping (after 4 billion sockets and pipes) starts again from 1. A
/// socket made then is taken for an old one, and its owner looked for in the one pass only.
pub(crate) fn inode_floor() -> Option<u64> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let me = nix::unistd::Pid::from_raw(0);
    let allowed = sched_getaffinity(me).ok()?;
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let cpus = parse_cpu_list(&online)?;
    if cpus.iter().any(|&c| !allowed.is_set(c).unwrap_or(false)) {
        return None;
    }
    let mut floor = None;
    let deadline = Instant::now() + FLOOR_BUDGET;
    for &cpu in &cpus {
        if Instant::now() >= deadline {
            floor = None;
            break;
        }
        let mut one = CpuSet::new();
        let number = one
            .set(cpu)
            .and_then(|()| sched_setaffinity(me, &one))
            .and_then(|()| nix::unistd::pipe2(OFlag::O_CLOEXEC))
            .and_then(|(read, _write)| nix::sys::stat::fstat(&read))
            .map(|st| st.st_ino);
        match number {
            Ok(n) => floor = Some(floor.map_or(n, |f: u64| f.min(n))),
            Err(_) => {
                floor = None;
                break;
            }
        }
    }
    // Back on every CPU it had (if that fails, only the rest of this thread runs pinned).
    let _ = sched_setaffinity(me, &allowed);
    floor
}

/// The CPUs of a kernel CPU list (`0-3,8,10-11`), or `None` if it is not one.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
        if last < first || last >= nix::sched::CpuSet::count() {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

/// How long one pass may take before the walk is used instead: a pass over 2 000 processes
/// and 10 000 sockets takes ~10 ms here.
const PASS_BUDGET: std::time::Duration = std::time::Duration::from_millis(250);

/// The holders of `wanted` from the iterator, described as a walk would have described them
/// ([`describe_task`]). Pids not reached by `deadline` are counted in `unread`, processes
/// whose files the kernel hid from the pass in `unreadable`.
///
/// `early` is a pass made beside the dump that found the sockets ([`Keep::Every`]): a socket
/// made while it ran may be missing from it, so the sockets it lacks get one more pass of their
/// own (a socket no process holds, a kernel one, costs that pass too). Without it, one pass
/// for `wanted`.
pub(crate) fn scan(
    iter: &OwnerIter,
    early: Option<Pass>,
    proc_root: &Path,
    pids: &[u32],
    search: &Search,
) -> std::io::Result<FdScan> {
    let Search { wanted, users, detail, threads, deadline } = *search;
    let started = Instant::now();
    // The pass reads every fd of every process, with no per-process cap: any user can make it
    // long (threads under an exited leader, each walked with the whole fd table; tens of
    // thousands of fds). Past its own budget it gives way to the walk, which caps each
    // process, rather than leave root's sockets unknown.
    let pass_deadline = deadline.min(started + PASS_BUDGET);
    let had_early = early.is_some();
    let mut pass = match early {
        Some(pass) => pass,
        None => iter.pass(Keep::Wanted(wanted), pass_deadline)?,
    };
    let mut holders = Holders::sized_for(wanted);
    holders.add(&pass, wanted);
    // What the early pass cannot have seen: sockets made since it began, and sockets that
    // may have come into a process it had read already. A listener or UDP socket older than
    // the pass that it did not see (held by no process: a kernel socket; or by one whose
    // files the kernel hides from the pass) would not be found by another pass either.
    let missing: Inodes = wanted
        .iter()
        .filter(|i| !holders.of.contains_key(i) && pass.may_have_missed(**i))
        .copied()
        .collect();
    let again = had_early && pass.stopped_at.is_none() && !missing.is_empty();
    if again {
        let again = iter.pass(Keep::Wanted(&missing), pass_deadline)?;
        holders.add(&again, &missing);
        for (pid, task) in again.walked {
            let known = pass.walked.entry(pid).or_default();
            if known.is_none() {
                *known = task;
            }
        }
        pass.stopped_at = again.stopped_at;
    }
    log::debug!(
        "BPF owner {}: holders of {} sockets in {:?}",
        match (had_early, again) {
            (false, _) => "pass".to_owned(),
            (true, false) => "pass beside the dump".to_owned(),
            (true, true) => format!("pass beside the dump, and one for {} newer", missing.len()),
        },
        holders.of.len(),
        started.elapsed()
    );
    if pass.stopped_at.is_some() && Instant::now() < deadline {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the pass took over {PASS_BUDGET:?} (some process has very many fds or \
                 threads)"
            ),
        ));
    }
    let proc_dir = open_proc(proc_root).map_err(std::io::Error::from)?;
    let mut holder_pids: Vec<u32> = holders.of.values().flatten().copied().collect();
    holder_pids.sort_unstable();
    holder_pids.dedup();
    let threads = if holder_pids.len() < PARALLEL_DESCRIBE_MIN_PIDS { 1 } else { threads };
    let mut scan = for_each_pid(&holder_pids, threads, |pid, local, scratch| {
        let proof = holders.proof.get(&pid).copied();
        let described = match pass.walked.get(&pid) {
            Some(Some(task)) => {
                Some(describe_task(&proc_dir, pid, task, proof, users, detail, &mut scratch.buf))
            }
            // None of its fds 0-2 open: /proc, as the walk would, once it is shown to be the
            // same process (a pid reused since the pass is not described as the holder).
            _ => open_pid(&proc_dir, pid)
                .filter(|dir| still_holds(dir, proof))
                .and_then(|dir| describe(&dir, pid, users, detail, &mut scratch.buf)),
        };
        if let Some(p) = described {
            local.processes.insert(pid, std::sync::Arc::new(p));
        }
    });
    // A holder that cannot be described exited since, or /proc hides it (hidepid): either
    // way the walk would not have found it, so the reasons below are the walk's.
    for pids in holders.of.values_mut() {
        pids.retain(|p| scan.processes.contains_key(p));
    }
    holders.of.retain(|_, pids| !pids.is_empty());
    // Only when an owner is missing: which processes could it be in? Of those listed before
    // the pass (a process started since was not there to be walked), those not walked.
    if wanted.iter().any(|i| !holders.of.contains_key(i)) {
        let from = pass.stopped_at.unwrap_or(u32::MAX);
        if pass.stopped_at.is_some() {
            scan.unread = pids.iter().filter(|p| **p >= from).count().max(1);
        }
        let sized = fd_counts_shown(&proc_dir);
        scan.unreadable = pids
            .iter()
            .filter(|&&p| p < from && !pass.walked.contains_key(&p))
            .filter(|&&p| open_pid(&proc_dir, p).is_some_and(|dir| hid_files(&dir, sized)))
            .count();
    }
    scan.holders = holders.of;
    Ok(scan)
}

/// Describes a holder the iterator found as [`describe`] would from its `/proc/PID`: from
/// what the pass read of it (status's fields), completing from `/proc` only what the pass
/// cannot give: the command line and the cgroup when asked for, and the pid in its own
/// namespace when it is not the host's. Those are read only once `/proc/PID` is shown to be
/// the same process (it still holds the socket at the fd the pass saw, `proof`): a pid reused
/// since, or a process that exited, is described from the pass alone.
fn describe_task(
    proc_dir: &OwnedFd,
    pid: u32,
    task: &Task,
    proof: Option<(u32, u64)>,
    users: &HashMap<u32, String>,
    detail: Detail,
    buf: &mut Vec<u8>,
) -> Process {
    let mut p = Process {
        pid,
        ppid: Some(task.ppid),
        comm: status_name(&task.comm),
        cmdline: Vec::new(),
        uid: task.uid,
        user: users.get(&task.uid).cloned(),
        ns_pid: None,
        cgroup: None,
    };
    if (detail.cmdline || detail.cgroup || task.level > 0)
        && let Some(now) = open_pid(proc_dir, pid)
            .filter(|dir| still_holds(dir, proof))
            .and_then(|dir| describe(&dir, pid, users, detail, buf))
    {
        p.cmdline = now.cmdline;
        p.ns_pid = now.ns_pid;
        p.cgroup = now.cgroup;
    }
    p
}

/// Whether the process of `pid_dir` holds the socket `ino` at fd `fd` (`proof`) still.
fn still_holds(pid_dir: &OwnedFd, proof: Option<(u32, u64)>) -> bool {
    let Some((fd, ino)) = proof else { return false };
    let Ok(name) = std::ffi::CString::new(format!("fd/{fd}")) else { return false };
    let mut buf = [0u8; 64];
    sys::readlinkat(pid_dir, &name, &mut buf)
        .is_ok_and(|link| crate::owners::parse_socket_link(link) == Some(ino))
}

/// Whether a process the iterator did not walk has files it should have seen (one of its
/// first fds): the kernel hid them from it. Kernel threads and zombies have none.
/// `sized`: this kernel gives the number of open fds as the size of `/proc/PID/fd` (6.2+),
/// so one stat tells a kernel thread (none) from a process without listing it.
fn hid_files(pid_dir: &OwnedFd, sized: bool) -> bool {
    if sized && fd_table_size(pid_dir, "fd").unwrap_or(0) == 0 {
        return false;
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let Ok(dir) = nix::fcntl::openat(pid_dir, "fd", flags, Mode::empty()) else { return false };
    // Listed in ascending order: the first fd is the lowest.
    let mut first = Vec::new();
    let _ = list_fds(&dir, 1, &mut first, &mut Vec::new());
    first.first().is_some_and(|fd| *fd < MARKER_FDS)
}

/// (tgid, socket inode, the process) of one record (native byte order, as the program wrote
/// it; `rec` is one whole record).
fn decode(rec: &[u8]) -> (u32, u32, u64, Option<Task>) {
    let u32_at = |at: usize| bytes::u32_at(rec, at).unwrap_or(0);
    let inode = bytes::u64_at(rec, 8).unwrap_or(0);
    let comm = bytes::array_at(rec, 32).unwrap_or([0; 16]);
    let task = (u32_at(28) == 1).then(|| Task {
        ppid: u32_at(16),
        uid: u32_at(20),
        level: u32_at(24),
        comm,
    });
    (u32_at(0), u32_at(4), inode, task)
}

#[cfg(test)]
mod tests;
