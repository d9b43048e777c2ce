//! Owner checks: a socket's owners looked up again once it has settled, and whenever one of
//! its owners exited — on a thread of their own, applied when done.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::scheduler::Loop;
use crate::event::Event;
use crate::owners::OwnerIndex;
use crate::socket::{Owners, Socket};
use crate::source::{At, Source};
use crate::tracker::Key;

/// How long after a socket opens (or changes owners) its owners are looked up again.
const SETTLE_AFTER: Duration = Duration::from_secs(1);
/// How often every open socket's owners are checked to still hold it (a listener handed to a
/// child while its first owner lives on): a walk of the owners' fds only.
const HOLD_CHECK_EVERY: Duration = Duration::from_secs(10);

/// What an owner check found: each socket checked with the owners found now, and the owner
/// index it used, to be used again.
pub(super) struct Checked {
    found: Vec<(Socket, Owners)>,
    checker: OwnerIndex,
}

impl Loop {
    /// Owners change while a socket stays open: a forking server's parent exits, a listener
    /// is handed over, workers are forked after `listen` (a kernel event names only the
    /// caller). So a socket's owners are looked up again once it has settled (about a second
    /// after it opened or changed owners), whenever one of its owners has exited (one `stat`
    /// per distinct owner pid), and when, checked every [`HOLD_CHECK_EVERY`], an owner that
    /// lives no longer holds it.
    pub(super) fn check_owners(&mut self, events: &mut Vec<Event>) {
        self.last_liveness = Instant::now();
        match self.checking.take() {
            Some(t) if !t.is_finished() => {
                self.checking = Some(t);
                return;
            }
            Some(t) => match t.join() {
                Ok(checked) => self.apply_checked(checked, events),
                Err(_) => log::warn!("an owner check failed; the next one starts afresh"),
            },
            None => {}
        }
        let settled: HashSet<Key> = {
            let due = |since: &Instant| since.elapsed() >= SETTLE_AFTER;
            let keys = self.settling.iter().filter(|(_, t)| due(t)).map(|(k, _)| k.clone());
            let keys: HashSet<Key> = keys.collect();
            self.settling.retain(|_, since| !due(since));
            keys
        };
        let mut dead: HashSet<u32> = HashSet::new();
        let mut alive: HashSet<u32> = HashSet::new();
        let mut stale: Vec<(usize, Socket)> = Vec::new();
        let mut tracked: HashSet<Key> = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            for s in t.tracker.current() {
                let key = Key::of(s);
                tracked.insert(key.clone());
                // Looked for after its owner exited, and nobody found: not every second again.
                if self.given_up.contains(&key) && !settled.contains(&key) {
                    continue;
                }
                let gone = s.processes().iter().any(|p| {
                    if alive.contains(&p.pid) {
                        return false;
                    }
                    if dead.contains(&p.pid) || !self.proc_root.join(p.pid.to_string()).exists() {
                        dead.insert(p.pid);
                        return true;
                    }
                    alive.insert(p.pid);
                    false
                });
                if gone || (s.inode != 0 && settled.contains(&Key::of(s))) {
                    stale.push((i, s.clone()));
                }
            }
        }
        self.given_up.retain(|k| tracked.contains(k));
        let held: Vec<Socket> = if self.last_hold_check.elapsed() >= HOLD_CHECK_EVERY {
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
        let spawned =
            std::thread::Builder::new().name("portwatch-owners".into()).spawn(move || {
                let mut stale = stale;
                stale.extend(no_longer_held(&proc_root, held).into_iter().map(|s| (0, s)));
                let mut fresh: Vec<Socket> = stale.iter().map(|(_, s)| s.clone()).collect();
                checker.resolve(&mut fresh);
                let found = stale.into_iter().zip(fresh).map(|((_, old), new)| (old, new.owners));
                Checked { found: found.collect(), checker }
            });
        match spawned {
            Ok(t) => self.checking = Some(t),
            // No thread to be had (a pids limit): the next round tries again.
            Err(e) => log::debug!("owner checks postponed: {e}"),
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
        for (old, owners) in checked.found {
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
            let at = At::now(Source::Scan);
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

/// The sockets of `sockets` that one of their (living) owners no longer holds.
fn no_longer_held(proc_root: &std::path::Path, sockets: Vec<Socket>) -> Vec<Socket> {
    if sockets.is_empty() {
        return sockets;
    }
    let wanted: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
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
