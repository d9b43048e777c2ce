//! Kernel events in the watcher: routing each socket seen to its namespace (opening it with
//! `all_netns`), completing its owner from /proc, and each cookie gone to every tracker.

use super::scheduler::Loop;
use super::stats::ScanReason;
use super::target::Target;
use crate::event::Event;
use crate::socket::Socket;
use crate::source::{At, Observation, Scope, Source};
use crate::tracker::Key;

impl Loop {
    /// Reads the kernel events: each socket seen goes to its namespace's tracker (a namespace
    /// not watched yet is opened at once with `all_netns`), each cookie gone to every tracker.
    /// With `connections`, the connection records waiting are read after them and the two
    /// handled in the order they happened: an accept finds its listener open even when the
    /// watcher fell behind and the listener's close is read in the same batch.
    pub(super) fn read_kernel(&mut self, events: &mut Vec<Event>, connections: bool) {
        let Some(kernel) = self.kernel.as_mut() else { return };
        let mut seen = Vec::new();
        let mut state = kernel.read(&mut seen);
        self.counters.set_kernel_lost(kernel.lost());
        let mut dump = Vec::new();
        if let Ok(s) = &mut state {
            self.exited.extend(s.exited.drain(..));
            dump = std::mem::take(&mut s.dump);
        }
        let conns = if connections { self.drain_connections() } else { Vec::new() };
        let mut conns = conns.into_iter().peekable();
        for obs in seen {
            let at = match &obs {
                Observation::Seen { at, .. }
                | Observation::Gone { at, .. }
                | Observation::Census { at, .. } => at.mono,
            };
            while let Some(c) = conns.next_if(|c| c.at.mono <= at) {
                self.connection_event(c, events);
            }
            match obs {
                Observation::Seen { socket, at } => self.kernel_seen(socket, at, events),
                gone @ Observation::Gone { .. } => {
                    for t in &mut self.targets {
                        t.tracker.observe(gone.clone(), events);
                    }
                }
                census @ Observation::Census { .. } => {
                    log::debug!("kernel events gave a census, ignored: {census:?}");
                }
            }
        }
        for c in conns {
            self.connection_event(c, events);
        }
        match state {
            Ok(s) if s.resync => {
                for t in &mut self.targets {
                    t.force_dump();
                }
                self.scan(events, ScanReason::Resync);
                // An owner's exit may be among what was lost: the next check looks for every
                // exited owner in /proc.
                self.recheck_owners = true;
                self.check_owners(events);
            }
            Ok(_) if !dump.is_empty() => {
                // Only the namespaces where a port is to be found.
                let mut inodes = std::collections::HashSet::new();
                for (netns, pid) in dump {
                    if let Some(i) = self.target_of(netns, Some(pid)) {
                        self.targets[i].force_dump();
                        inodes.insert(netns);
                    }
                }
                self.scan_some(events, ScanReason::Resync, |t| inodes.contains(&t.inode));
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("kernel events failed ({e}): scanning every interval instead");
                self.kernel = None;
                self.exits_followed = false;
                self.counters.set_source(Source::Scan);
            }
        }
        // An owner exited: who holds its sockets now is looked up at once.
        if !self.exited.is_empty() {
            self.check_owners(events);
        }
        self.emit(events);
    }

    /// A socket a kernel event reports open: filtered as a dump would be, its owner described
    /// from /proc while it may still be there, then tracked in its namespace.
    fn kernel_seen(&mut self, mut socket: Socket, at: At, events: &mut Vec<Event>) {
        if !self.cfg.filter.admits(&socket) {
            return;
        }
        let pid = socket.processes().first().map(|p| p.pid);
        let Some(i) = self.target_of(socket.netns, pid) else { return };
        if let crate::process::Owners::Known(procs) = &mut socket.owners {
            for p in procs.iter_mut() {
                self.owners.describe(std::sync::Arc::make_mut(p));
            }
        }
        let t = &mut self.targets[i];
        socket.container = t.container.clone();
        socket.netns_name = t.netns_name.clone();
        self.namer.attribute(&mut socket, &self.proc_root);
        if !self.cfg.filter.owner_matches(&socket, &self.proc_root) {
            t.ignored.insert(Key::of(&socket));
            return;
        }
        t.tracker.observe(Observation::Seen { socket, at }, events);
    }

    /// The watched namespace `netns` (where a socket is). With `all_netns`, one not watched
    /// yet is opened now — through `pid`, the process that made the socket, or, when it is
    /// already gone, tracked from kernel events alone until namespace discovery finds it.
    pub(super) fn target_of(&mut self, netns: u64, pid: Option<u32>) -> Option<usize> {
        if let Some(i) = self.targets.iter().position(|t| t.inode == netns) {
            return Some(i);
        }
        if !matches!(self.cfg.scope, Scope::All) || self.unwatchable.contains(&netns) {
            return None;
        }
        let t = self.open_found(netns, pid).unwrap_or_else(|| {
            log::debug!("network namespace {netns} known from kernel events only");
            Target::detached(netns, &self.cfg)
        });
        self.targets.push(t);
        Some(self.targets.len() - 1)
    }
}
