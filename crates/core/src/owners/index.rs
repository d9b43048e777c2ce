//! The watcher's owner lookup: incremental, so a few new sockets do not cost a walk of every
//! process's fds.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{
    BpfIter, Detail, FdScan, Inodes, Search, WALK_BUDGET, describe, hidepid, list_pids, open_pid,
    open_proc, read_users, scan_pids, try_iterator,
};
use crate::process::{Owners, Process, UnknownReason};
use crate::socket::Socket;

/// Owner lookup for a watcher: remembers the processes it has seen so that finding the owners
/// of a few new sockets does not read every process's fds.
///
/// New sockets are looked for in phases, stopping after the first phase that finds them all:
/// processes that appeared since the last lookup, then processes running as a socket's uid,
/// then every other process. The parents of the holders found are then checked too, so a
/// listener shared by a forked server lists the parent as well as the new workers. A watcher
/// with no new sockets calls nothing here, and reads no `/proc/*/fd` at all.
///
/// With a BPF owner iterator, a lookup that would read every process — the first one (the
/// watcher's first scan), or one whose sockets the new and same-user processes do not hold
/// (after a reconciling dump, say) — is one pass of the iterator instead.
pub(crate) struct OwnerIndex {
    proc_root: PathBuf,
    passwd: PathBuf,
    users: Option<HashMap<u32, String>>,
    seen_pids: HashSet<u32>,
    detail: Detail,
    threads: usize,
    iter: Option<BpfIter>,
}

impl OwnerIndex {
    pub(crate) fn new(
        proc_root: &Path,
        passwd: &Path,
        detail: Detail,
        threads: usize,
    ) -> OwnerIndex {
        OwnerIndex {
            proc_root: proc_root.to_owned(),
            passwd: passwd.to_owned(),
            users: None,
            seen_pids: HashSet::new(),
            detail,
            threads,
            iter: None,
        }
    }

    /// Uses `iter` for the lookups that would read every process.
    pub(crate) fn with_iterator(mut self, iter: Option<BpfIter>) -> OwnerIndex {
        self.iter = iter;
        self
    }

    /// Finds the owners of `sockets` (new ones: owners of known sockets are carried over by
    /// the caller).
    pub(crate) fn resolve(&mut self, sockets: &mut [Socket]) {
        if sockets.is_empty() {
            return;
        }
        let (Ok(proc_dir), Ok(pids)) = (open_proc(&self.proc_root), list_pids(&self.proc_root))
        else {
            for s in sockets.iter_mut() {
                s.owners = Owners::Unknown(UnknownReason::PermissionDenied { unreadable: 1 });
            }
            return;
        };
        // One budget for every phase: the bound is on what a lookup costs the scan thread.
        let deadline = Instant::now() + WALK_BUDGET;
        let users = &*self.users.get_or_insert_with(|| read_users(&self.passwd));
        let wanted: Inodes = sockets.iter().map(|s| s.inode).filter(|i| *i != 0).collect();
        let detail = self.detail;
        let search = |threads| Search { wanted: &wanted, users, detail, threads, deadline };
        let mut missing = wanted.clone();
        let uids: HashSet<u32> = sockets.iter().filter_map(|s| s.uid).collect();
        let mut scanned: HashSet<u32> = HashSet::new();
        let mut total = FdScan::default();
        let phases: [&dyn Fn(u32) -> bool; 3] = [
            &|pid| !self.seen_pids.contains(&pid),
            &|pid| owner_uid(&proc_dir, pid).is_some_and(|u| uids.contains(&u)),
            &|_| true,
        ];
        // The first lookup reads every process whatever the phases: one pass does it.
        let first = self.seen_pids.is_empty();
        let mut by_iterator = false;
        for (i, phase) in phases.into_iter().enumerate() {
            if missing.is_empty() {
                break;
            }
            // The first phase (new processes) is cheap; past it, every process may be read.
            if (first || i > 0)
                && let Some(scan) = try_iterator(
                    self.iter.as_ref(),
                    None,
                    &self.proc_root,
                    &pids,
                    &search(self.threads),
                )
            {
                total = scan;
                by_iterator = true;
                break;
            }
            let batch: Vec<u32> =
                pids.iter().copied().filter(|p| !scanned.contains(p) && phase(*p)).collect();
            let scan = scan_pids(&proc_dir, &batch, &search(self.threads));
            scanned.extend(batch);
            missing.retain(|i| !scan.holders.contains_key(i));
            total.merge(scan);
        }
        // Forked sharers: a holder's parent often holds the same socket (the listener was
        // opened before the fork). Walk up while parents keep holding something.
        // (The iterator's pass found every holder already.)
        let mut parents: Vec<u32> = if by_iterator {
            Vec::new()
        } else {
            total.processes.values().filter_map(|p| p.ppid).collect()
        };
        while !parents.is_empty() {
            parents.retain(|p| *p > 1 && scanned.insert(*p));
            let scan = scan_pids(&proc_dir, &parents, &search(1));
            parents = scan.processes.values().filter_map(|p| p.ppid).collect();
            total.merge(scan);
        }
        total.hidden = hidepid::explains_missing(&total, &wanted, &self.proc_root);
        self.seen_pids = pids.into_iter().collect();
        for s in sockets.iter_mut() {
            s.owners = total.owners_of(s.inode);
        }
    }

    /// Completes what a kernel event said of a process (pid, command name, uid) from
    /// `/proc/PID` while it is there and still that process (same command name; else the pid
    /// may be another's already): its command line, parent, pid in its own namespace, cgroup;
    /// and the user name in any case.
    pub(crate) fn describe(&mut self, p: &mut Process) {
        let users = self.users.get_or_insert_with(|| read_users(&self.passwd));
        if p.user.is_none() {
            p.user = users.get(&p.uid).cloned();
        }
        let Ok(proc_dir) = open_proc(&self.proc_root) else { return };
        let Some(pid_dir) = open_pid(&proc_dir, p.pid) else { return };
        let mut buf = Vec::new();
        if let Some(now) = describe(&pid_dir, p.pid, users, self.detail, &mut buf)
            && (now.comm == p.comm || has_thread_named(&self.proc_root, p.pid, &p.comm))
        {
            // The kernel names the calling thread; a process is named by its main thread, as
            // the scan source names it.
            p.comm = now.comm;
            p.cmdline = now.cmdline;
            p.ppid = now.ppid;
            p.ns_pid = now.ns_pid;
            p.cgroup = now.cgroup;
        }
    }
}

/// Most threads of a process looked at for a name.
const THREADS_LOOKED_AT: usize = 4096;

/// Whether one of process `pid`'s threads is named `comm` (a kernel event names the thread
/// that made the call).
fn has_thread_named(proc_root: &Path, pid: u32, comm: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return false;
    };
    tasks.flatten().take(THREADS_LOOKED_AT).any(|t| {
        std::fs::read(t.path().join("comm"))
            .is_ok_and(|name| name.strip_suffix(b"\n").unwrap_or(&name) == comm.as_bytes())
    })
}

/// The effective uid a process runs as: the owner of its `/proc/PID` directory (one `fstatat`,
/// no file read).
fn owner_uid(proc_dir: &OwnedFd, pid: u32) -> Option<u32> {
    nix::sys::stat::fstatat(proc_dir, pid.to_string().as_str(), nix::fcntl::AtFlags::empty())
        .ok()
        .map(|st| st.st_uid)
}
