//! Which namespaces a watcher watches: the first set, and (with `all_netns`) the ones that
//! appear and vanish while it runs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use super::config::Config;
use super::restore::rebase;
use super::scheduler::Loop;
use super::target::Target;
use crate::discover::{self, Discovery, Found, NAMED_NETNS_DIR, Namer};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::netns::Netns;
use crate::socket::Socket;
use crate::source::{At, Observation, Scope, Source};

/// The namespaces watched at start.
pub(super) struct Initial {
    pub(super) targets: Vec<Target>,
    /// With `all_netns`: finds namespaces appearing and disappearing later.
    pub(super) discovery: Option<(Discovery, Namer)>,
    /// Namespaces found that could not be watched (said once).
    pub(super) unwatchable: HashSet<u64>,
    /// Sockets a snapshot had open in namespaces that no longer exist: reported closed first.
    pub(super) vanished: Vec<Socket>,
}

/// Opens the namespaces `cfg` names (none while `waiting` for a followed container), each
/// tracker starting from what `restored` (the snapshot, by namespace) had open there.
pub(super) fn initial(
    cfg: &Config,
    proc_root: &Path,
    mut restored: HashMap<u64, Vec<Socket>>,
    waiting: bool,
) -> Result<Initial> {
    let mut targets = Vec::new();
    let mut discovery = None;
    let mut unwatchable = HashSet::new();
    match &cfg.scope {
        // A followed container not running yet: nothing to open until it does.
        _ if waiting => {}
        Scope::All => {
            let mut d = Discovery::new(proc_root, Path::new(NAMED_NETNS_DIR));
            let mut namer = Namer::new(cfg.docker.clone());
            let found = d.pass();
            let (opened, failed) = open_targets(found.values(), &mut namer, proc_root, cfg);
            for (inode, e) in failed {
                discover::skip(inode, e)?;
                unwatchable.insert(inode);
            }
            for mut t in opened {
                if let Some(sockets) = restored.remove(&t.inode) {
                    t.tracker.adopt(sockets);
                }
                targets.push(t);
            }
            discovery = Some((d, namer));
        }
        scope => {
            let ns = match scope {
                Scope::One(ns) => ns.clone(),
                _ => Netns::current()?,
            };
            let mut t = Target::open(&ns, cfg)?;
            if let Some((_, sockets)) = restored.drain().next() {
                // A single namespace's snapshot is keyed 0: see `restore`.
                t.tracker.adopt(rebase(sockets, t.inode));
            }
            targets.push(t);
        }
    }
    // Namespaces that held sockets in the snapshot and are gone now: those are closed.
    let vanished = restored.into_values().flatten().collect();
    Ok(Initial { targets, discovery, unwatchable, vanished })
}

/// Opens a Target for each of `found`, in inode order; returns those that opened and why the
/// others did not.
fn open_targets<'a>(
    found: impl Iterator<Item = &'a Found>,
    namer: &mut Namer,
    proc_root: &Path,
    cfg: &Config,
) -> (Vec<Target>, Vec<(u64, Error)>) {
    let mut found: Vec<&Found> = found.collect();
    found.sort_by_key(|f| f.inode);
    let (mut opened, mut failed) = (Vec::new(), Vec::new());
    for f in found {
        match discover::open(f, namer, proc_root).and_then(|ns| Target::open(&ns, cfg)) {
            Ok(t) => opened.push(t),
            Err(e) => failed.push((f.inode, e)),
        }
    }
    (opened, failed)
}

impl Loop {
    /// Starts watching namespaces that appeared and reports the sockets of those that went
    /// away closed.
    pub(super) fn discover(&mut self, events: &mut Vec<Event>) {
        let Some((discovery, namer)) = self.discovery.as_mut() else { return };
        let found = discovery.pass();
        let mut kept = Vec::with_capacity(self.targets.len());
        let mut gone = Vec::new();
        for mut t in std::mem::take(&mut self.targets) {
            if found.contains_key(&t.inode) {
                kept.push(t);
            } else {
                log::debug!("network namespace {} is gone", t.inode);
                t.tracker.observe(
                    Observation::Census { sockets: Vec::new(), at: At::now(Source::Scan) },
                    events,
                );
                t.tracker.flush(SystemTime::now(), events);
                gone.push(t);
            }
        }
        self.targets = kept;
        self.unwatchable.retain(|inode| found.contains_key(inode));
        // Left out for their owner's cap: a kernel event in one must not open it either.
        self.unwatchable.extend(discovery.skipped().iter().copied());
        // New namespaces, and those known so far from kernel events alone.
        let new = found.values().filter(|f| {
            !self.unwatchable.contains(&f.inode)
                && !self.targets.iter().any(|t| t.inode == f.inode && t.is_attached())
        });
        let (opened, failed) = open_targets(new, namer, &self.proc_root, &self.cfg);
        for mut t in opened {
            log::debug!("watching network namespace {}", t.inode);
            match self.targets.iter_mut().find(|known| known.inode == t.inode) {
                Some(known) => known.attach(t),
                None => {
                    // Everything in it opened after the watch began: nothing is initial.
                    t.tracker.started();
                    self.targets.push(t);
                }
            }
        }
        for (inode, e) in failed {
            self.unwatchable.insert(inode);
            if let Err(e) = discover::skip(inode, e) {
                log::warn!("cannot watch network namespace {inode}: {e}");
            }
        }
        for t in gone {
            self.retire(t);
        }
        self.emit(events);
    }

    /// Opens namespace `inode` through process `pid` inside it (found by a kernel event),
    /// labelled with its container; `None` when that cannot be done (the process is gone).
    /// Nothing in it is initial: it is new to this watcher.
    pub(super) fn open_found(&mut self, inode: u64, pid: Option<u32>) -> Option<Target> {
        let pid = pid?;
        let path = self.proc_root.join(pid.to_string()).join("ns/net");
        let found = Found { inode, path, pid: Some(pid), name: None };
        let mut fallback = Namer::new(None);
        let namer = match self.discovery.as_mut() {
            Some((_, namer)) => namer,
            None => &mut fallback,
        };
        match discover::open(&found, namer, &self.proc_root)
            .and_then(|ns| Target::open(&ns, &self.cfg))
        {
            Ok(mut t) => {
                log::debug!("watching network namespace {inode}, found by a kernel event");
                t.tracker.started();
                Some(t)
            }
            Err(e) => {
                log::debug!("cannot open network namespace {inode} of process {pid}: {e}");
                None
            }
        }
    }
}
