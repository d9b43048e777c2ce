//! Owner checks: a socket's owners looked up again once it has settled, and whenever one of
//! its owners exited — on a thread of their own, applied when done.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::scheduler::Loop;
use crate::event::Event;
use crate::owners::OwnerIndex;
use crate::process::{Owners, UnknownReason};
use crate::socket::Socket;
use crate::source::{At, Source};
use crate::tracker::Key;

/// How long after a socket opens (or changes owners) its owners are looked up again.
pub(super) const SETTLE_AFTER: Duration = Duration::from_secs(1);
/// How often every open socket's owners are checked to still hold it (a listener handed to a
/// child while its first owner lives on): a walk of the owners' fds only.
pub(super) const HOLD_CHECK_EVERY: Duration = Duration::from_secs(10);

/// What an owner check found: each socket checked with the owners found now and what
/// prompted the check (`Source::Ebpf`: the kernel reported an owner's exit), and the owner
/// index it used, to be used again.
pub(super) struct Checked {
    found: Vec<(Socket, Owners, Source)>,
    checker: OwnerIndex,
}

/// A pipe the owner-check thread writes a byte to when it is done, so the scan thread,
/// polling the read end, applies the result at once rather than at its next cycle.
pub(super) struct CheckDone {
    pub(super) rx: OwnedFd,
    tx: Arc<OwnedFd>,
}

impl CheckDone {
    fn new() -> Option<CheckDone> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (rx, tx) = nix::unistd::pipe2(flags).ok()?;
        Some(CheckDone { rx, tx: Arc::new(tx) })
    }

    /// Empties the pipe (non-blocking).
    pub(super) fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.rx, &mut buf), Ok(n) if n > 0) {}
    }
}

impl Loop {
    /// Owners change while a socket stays open: a forking server's parent exits, a listener
    /// is handed over, workers are forked after `listen` (a kernel event names only the
    /// caller). So a socket's owners are looked up again once it has settled (about a second
    /// after it opened or changed owners), whenever one of its owners has exited (the kernel
    /// events say so at once; otherwise one `stat` per distinct owner pid a second), and when,
    /// checked every [`HOLD_CHECK_EVERY`], an owner that lives no longer holds it.
    pub(super) fn check_owners(&mut self, events: &mut Vec<Event>) {
        self.last_liveness = Instant::now();
        if !self.collect_checked(false, events) {
            return;
        }
        let settled: HashSet<Key> = {
            let due = |since: &Instant| since.elapsed() >= SETTLE_AFTER;
            let keys = self.settling.iter().filter(|(_, t)| due(t)).map(|(k, _)| k.clone());
            let keys: HashSet<Key> = keys.collect();
            self.settling.retain(|_, since| !due(since));
            keys
        };
        // Owners the kernel said exited: dead, though /proc may still show them (their files
        // are closed just after the event). The others are looked for in /proc every second,
        // unless the kernel reports their exits: then only with the hold check, as a backstop.
        let exited = std::mem::take(&mut self.exited);
        let hold_due = self.last_hold_check.elapsed() >= HOLD_CHECK_EVERY;
        let stat_all = !self.exits_followed || hold_due || std::mem::take(&mut self.recheck_owners);
        let mut dead: HashSet<u32> = exited.clone();
        let mut alive: HashSet<u32> = HashSet::new();
        let mut stale: Vec<(Source, Socket)> = Vec::new();
        let mut tracked: HashSet<Key> = HashSet::new();
        for t in &self.targets {
            for s in t.tracker.current() {
                let key = Key::of(s);
                tracked.insert(key.clone());
                // Looked for after its owner exited, and nobody found: not every second again.
                if self.given_up.contains(&key) && !settled.contains(&key) {
                    continue;
                }
                let gone = s.processes().iter().any(|p| {
                    if dead.contains(&p.pid) {
                        return true;
                    }
                    if alive.contains(&p.pid) || !stat_all {
                        return false;
                    }
                    if !self.proc_root.join(p.pid.to_string()).exists() {
                        dead.insert(p.pid);
                        return true;
                    }
                    alive.insert(p.pid);
                    false
                });
                if gone || (s.inode != 0 && settled.contains(&Key::of(s))) {
                    let by_exit = s.processes().iter().any(|p| exited.contains(&p.pid));
                    stale.push((if by_exit { Source::Ebpf } else { Source::Scan }, s.clone()));
                }
            }
        }
        self.given_up.retain(|k| tracked.contains(k));
        let held: Vec<Socket> = if hold_due {
            self.last_hold_check = Instant::now();
            let stale_keys: HashSet<Key> = stale.iter().map(|(_, s)| Key::of(s)).collect();
            let tracked = self.targets.iter().flat_map(|t| t.tracker.current());
            tracked
                .filter(|s| s.inode != 0 && !s.processes().is_empty())
                .filter(|s| !stale_keys.contains(&Key::of(s)))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if stale.is_empty() && held.is_empty() {
            return;
        }
        let mut checker = self.checker.take().unwrap_or_else(|| self.new_checker());
        let proc_root = self.proc_root.clone();
        if self.check_done.is_none() {
            self.check_done = CheckDone::new();
        }
        let done = self.check_done.as_ref().map(|d| Arc::clone(&d.tx));
        let pending = exited.clone();
        let spawned =
            std::thread::Builder::new().name("portwatch-owners".into()).spawn(move || {
                let mut stale = stale;
                let moved = no_longer_held(&proc_root, held).into_iter();
                stale.extend(moved.map(|s| (Source::Scan, s)));
                let mut fresh: Vec<Socket> = stale.iter().map(|(_, s)| s.clone()).collect();
                checker.resolve(&mut fresh);
                for s in &mut fresh {
                    without_exited(&mut s.owners, &exited);
                }
                let found = stale.into_iter().zip(fresh);
                let found = found.map(|((by, old), new)| (old, new.owners, by)).collect();
                if let Some(done) = done {
                    let _ = nix::unistd::write(&*done, &[1]);
                }
                Checked { found, checker }
            });
        match spawned {
            Ok(t) => self.checking = Some(t),
            // No thread to be had (a pids limit): the next round tries again, exits included.
            Err(e) => {
                log::debug!("owner checks postponed: {e}");
                self.exited.extend(pending);
            }
        }
    }

    /// Applies the owner check in flight if it is done (or, with `wait`, once it is: its
    /// thread said so and is returning). Whether none is in flight now.
    pub(super) fn collect_checked(&mut self, wait: bool, events: &mut Vec<Event>) -> bool {
        match self.checking.take() {
            Some(t) if !wait && !t.is_finished() => {
                self.checking = Some(t);
                false
            }
            Some(t) => {
                match t.join() {
                    Ok(checked) => self.apply_checked(checked, events),
                    Err(_) => log::warn!("an owner check failed; the next one starts afresh"),
                }
                true
            }
            None => true,
        }
    }

    /// An owner index for the owner checks (the one they had went with a refused thread).
    fn new_checker(&self) -> OwnerIndex {
        let detail = crate::owners::Detail { cmdline: self.cfg.cmdlines, cgroup: true };
        let passwd = std::path::Path::new("/etc/passwd");
        OwnerIndex::new(&self.proc_root, passwd, detail, crate::owners::worker_threads())
    }

    /// Applies what a finished owner check found (and takes its owner index back).
    fn apply_checked(&mut self, checked: Checked, events: &mut Vec<Event>) {
        self.checker = Some(checked.checker);
        for (old, owners, by) in checked.found {
            // Known owners are never replaced by none: /proc may hide them (another pid
            // namespace, no permission), and an owner that exited with the socket found
            // nobody because the socket is closing — its close, maybe already queued, must
            // still name who held it.
            if !matches!(owners, Owners::Known(_)) {
                self.given_up.insert(Key::of(&old));
                continue;
            }
            self.given_up.remove(&Key::of(&old));
            let Some(t) = self.targets.iter_mut().find(|t| t.inode == old.netns) else { continue };
            let at = At::now(by);
            let mut now = old.clone();
            now.owners = owners.clone();
            t.tracker.update_owners(&old, owners, at, events);
            // Held by others now (`--pid` named the one that handed it over): for this
            // watcher it closed.
            if !self.cfg.filter.owner_matches(&now, &self.proc_root) {
                t.tracker.evict(&now, at, events);
                t.ignored.insert(Key::of(&now));
            }
        }
        self.emit(events);
    }
}

/// Drops the processes that exited from `owners` (found while their files were still
/// closing); none left is unknown: the socket is closing with them.
fn without_exited(owners: &mut Owners, exited: &HashSet<u32>) {
    if let Owners::Known(procs) = owners {
        procs.retain(|p| !exited.contains(&p.pid));
        if procs.is_empty() {
            *owners = Owners::Unknown(UnknownReason::NotFound);
        }
    }
}

/// The sockets of `sockets` that one of their (living) owners no longer holds.
fn no_longer_held(proc_root: &std::path::Path, sockets: Vec<Socket>) -> Vec<Socket> {
    if sockets.is_empty() {
        return sockets;
    }
    let wanted: crate::owners::Inodes = sockets.iter().map(|s| s.inode).collect();
    let mut pids: Vec<u32> = sockets.iter().flat_map(|s| s.pids()).collect();
    pids.sort_unstable();
    pids.dedup();
    let holders = crate::owners::holders_among(proc_root, &pids, &wanted);
    sockets
        .into_iter()
        .filter(|s| {
            let held_by = holders.get(&s.inode);
            s.pids().iter().any(|pid| !held_by.is_some_and(|h| h.contains(pid)))
        })
        .collect()
}
