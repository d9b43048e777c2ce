//! Kernel events in the watcher: routing each socket seen to its namespace (opening it with
//! `all_netns`), completing its owner from /proc, and each cookie gone to every tracker.

use super::scheduler::Loop;
use super::target::Target;
use crate::event::Event;
use crate::socket::Socket;
use crate::source::{At, Observation, Scope};
use crate::tracker::Key;

impl Loop {
    /// Reads the kernel events: each socket seen goes to its namespace's tracker (a namespace
    /// not watched yet is opened at once with `all_netns`), each cookie gone to every tracker.
    pub(super) fn read_kernel(&mut self, events: &mut Vec<Event>) {
        let Some(kernel) = self.kernel.as_mut() else { return };
        let mut seen = Vec::new();
        let state = kernel.read(&mut seen);
        for obs in seen {
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
        match state {
            Ok(s) if s.resync => {
                for t in &mut self.targets {
                    t.force_dump();
                }
                self.scan(events);
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("kernel events failed ({e}): scanning every interval instead");
                self.kernel = None;
            }
        }
        self.emit(events);
    }

    /// A socket a kernel event reports open: filtered as a dump would be, its owner described
    /// from /proc while it may still be there, then tracked in its namespace.
    fn kernel_seen(&mut self, mut socket: Socket, at: At, events: &mut Vec<Event>) {
        if !self.cfg.filter.admits(&socket) {
            return;
        }
        let Some(i) = self.target_for(&socket) else { return };
        if let crate::socket::Owners::Known(procs) = &mut socket.owners {
            for p in procs.iter_mut() {
                self.owners.describe(p);
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

    /// The watched namespace a socket is in. With `all_netns`, one not watched yet is opened
    /// now — through the process that made the socket, or, when it is already gone, tracked
    /// from kernel events alone until namespace discovery finds it.
    fn target_for(&mut self, socket: &Socket) -> Option<usize> {
        if let Some(i) = self.targets.iter().position(|t| t.inode == socket.netns) {
            return Some(i);
        }
        if !matches!(self.cfg.scope, Scope::All) || self.unwatchable.contains(&socket.netns) {
            return None;
        }
        let pid = socket.processes().first().map(|p| p.pid);
        let t = self.open_found(socket.netns, pid).unwrap_or_else(|| {
            log::debug!("network namespace {} known from kernel events only", socket.netns);
            Target::detached(socket.netns, &self.cfg)
        });
        self.targets.push(t);
        Some(self.targets.len() - 1)
    }
}
