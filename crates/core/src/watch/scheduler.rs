//! The scan thread: when each source is read, and where what it saw goes.
//!
//! Owns timing (intervals, bursts, waiting on feeds and grace deadlines), routing of
//! observations to each namespace's tracker, owner lookup of new sockets, and delivery of
//! events, of the open set (for `Watcher::current`) and of snapshots. What counts as open,
//! closed or restarted is the tracker's business; how owners are found is the owner index's;
//! where facts come from is the sources'.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::StopHandle;
use super::config::Config;
use super::connections::ConnWatch;
use super::follow::Follow;
use super::namespaces::Initial;
use super::owner_checks::{CheckDone, Checked};
use super::stats::{Counters, ScanReason};
use super::target::Target;
use crate::discover::{Discovery, Namer};
use crate::event::Event;
use crate::owners::OwnerIndex;
use crate::snapshot::{self, Snapshot};
use crate::socket::Socket;
use crate::source::{At, Dump, Feed, Observation, Scope, Source};
use crate::tracker::{Change, Key, Tracker};

/// How often owners of open sockets are checked for having exited.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);
/// How often, with `all_netns`, new and vanished namespaces are looked for.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);

/// The open set as `Watcher::current` reads it, kept up to date change by change. Shared
/// sockets, so a reader holds the lock only to take references, and copies them after.
pub(super) type Published = Arc<Mutex<HashMap<Key, Arc<Socket>>>>;

/// Where events go.
pub(super) enum Sink {
    /// The channel `Watcher::events` reads, and the write end of a pipe made readable after
    /// each batch, for callers that poll (`Watcher::event_fd`).
    Channel(SyncSender<Event>, OwnedFd),
    Callback(Box<dyn FnMut(Event) + Send>),
}

/// The scan thread's state.
pub(super) struct Loop {
    pub(super) cfg: Config,
    /// Kernel events (eBPF), when that is the source: every namespace's listeners as they
    /// open and close. Dumps then only reconcile.
    pub(super) kernel: Option<Box<dyn Feed + Send>>,
    /// Connection events, when asked for.
    pub(super) conns: Option<ConnWatch>,
    dumps: Vec<Dump>,
    pub(super) owners: OwnerIndex,
    /// The owner index of the owner checks; away on their thread while one runs.
    pub(super) checker: Option<OwnerIndex>,
    /// Owner checks in flight: they walk /proc, which takes long on a busy host, on a thread
    /// of their own while this one keeps reading events.
    pub(super) checking: Option<JoinHandle<Checked>>,
    /// The namespaces watched: one, or (with discovery) every one alive.
    pub(super) targets: Vec<Target>,
    /// Finds namespaces appearing and disappearing, with `all_netns`.
    pub(super) discovery: Option<(Discovery, Namer)>,
    /// Names the container the owners' cgroups name, for sockets whose namespace is no
    /// container's (the host's, shared by host-network containers).
    pub(super) namer: Namer,
    /// The container followed across restarts, with `container`.
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub(super) follow: Option<Follow>,
    /// Namespaces found that could not be watched (said once): not tried again each pass.
    pub(super) unwatchable: HashSet<u64>,
    /// Sockets a snapshot had open in namespaces that no longer exist: reported closed first.
    vanished: Vec<Socket>,
    sink: Sink,
    wake: OwnedFd,
    stop: StopHandle,
    published: Published,
    /// Events the channel had no room for.
    dropped: Arc<AtomicU64>,
    /// What it did, for `Monitor::stats`.
    pub(super) counters: Arc<Counters>,
    /// Why dumps fail, while they do: `Watcher::scan_error`.
    failing: Arc<Mutex<Option<String>>>,
    /// The set changed since the snapshot was last handed to the writer.
    dirty: bool,
    /// Writes the snapshot off this thread, when one is kept.
    snapshot: Option<snapshot::Writer>,
    /// When owner liveness was last checked.
    pub(super) last_liveness: Instant,
    /// When owners were last checked to still hold their sockets.
    pub(super) last_hold_check: Instant,
    /// Sockets whose exited owner was looked for and not replaced: not looked up again each
    /// second (the hold check and a change of owners still do).
    pub(super) given_up: HashSet<Key>,
    /// Sockets whose owners are to be looked up again once settled, since when.
    pub(super) settling: HashMap<Key, Instant>,
    /// Owners the kernel events said exited, not yet checked for.
    pub(super) exited: HashSet<u32>,
    /// The next owner check looks for every exited owner in /proc (kernel events were lost,
    /// an exit among them maybe).
    pub(super) recheck_owners: bool,
    /// The namespace filter last given to the kernel events (`Some(None)`: all).
    netns_filter: Option<Option<HashSet<u64>>>,
    /// Says when the owner check in flight is done (made at the first check).
    pub(super) check_done: Option<CheckDone>,
    /// Owners of sockets opened (or whose owners changed) since the kernel events were last
    /// told whose exits to report.
    new_owners: Vec<u32>,
    /// The kernel events report the exit of every owner of a tracked socket: no need to look
    /// for exited owners in /proc every second.
    pub(super) exits_followed: bool,
    /// When namespaces were last looked for.
    last_discovery: Instant,
    pub(super) proc_root: PathBuf,
}

/// What the scheduler is started with, besides its config.
pub(super) struct Parts {
    pub(super) kernel: Option<Box<dyn Feed + Send>>,
    pub(super) conns: Option<ConnWatch>,
    pub(super) initial: Initial,
    pub(super) follow: Option<Follow>,
    pub(super) owners: OwnerIndex,
    pub(super) checker: OwnerIndex,
    pub(super) sink: Sink,
    pub(super) wake: OwnedFd,
    pub(super) stop: StopHandle,
    pub(super) published: Published,
    pub(super) dropped: Arc<AtomicU64>,
    pub(super) counters: Arc<Counters>,
    pub(super) failing: Arc<Mutex<Option<String>>>,
    pub(super) snapshot: Option<snapshot::Writer>,
    pub(super) proc_root: PathBuf,
}

impl Loop {
    pub(super) fn new(cfg: Config, p: Parts) -> Loop {
        let mut scan = Loop {
            dumps: cfg.filter.dumps(),
            namer: Namer::new(cfg.docker.clone()),
            cfg,
            kernel: p.kernel,
            conns: p.conns,
            owners: p.owners,
            checker: Some(p.checker),
            checking: None,
            targets: p.initial.targets,
            discovery: p.initial.discovery,
            follow: p.follow,
            unwatchable: p.initial.unwatchable,
            vanished: p.initial.vanished,
            sink: p.sink,
            wake: p.wake,
            stop: p.stop,
            published: p.published,
            dropped: p.dropped,
            counters: p.counters,
            failing: p.failing,
            dirty: false,
            snapshot: p.snapshot,
            last_liveness: Instant::now(),
            last_hold_check: Instant::now(),
            given_up: HashSet::new(),
            settling: HashMap::new(),
            exited: HashSet::new(),
            check_done: None,
            netns_filter: None,
            recheck_owners: false,
            new_owners: Vec::new(),
            exits_followed: false,
            last_discovery: Instant::now(),
            proc_root: p.proc_root,
        };
        let source = if scan.kernel.is_some() { Source::Ebpf } else { Source::Scan };
        scan.counters.set_source(source);
        // Sockets adopted from a snapshot are open from the start.
        scan.publish();
        scan
    }

    pub(super) fn run(mut self) {
        let mut events: Vec<Event> = std::mem::take(&mut self.vanished)
            .into_iter()
            .map(|socket| Event::Closed { socket, at: SystemTime::now(), source: Source::Scan })
            .collect();
        let mut last_dump: Option<Instant> = None;
        self.filter_netns();
        while !self.stop.is_stopped() {
            let cycle = Instant::now();
            let (interval, bursts) = self.cadence();
            // Scanning: every cycle. Kernel events: the first, then every `reconcile`.
            let dump = self.kernel.is_none()
                || last_dump.is_none_or(|t| t.elapsed() >= self.cfg.reconcile);
            let reason = match last_dump {
                None => ScanReason::Start,
                Some(_) if self.kernel.is_some() => ScanReason::Reconcile,
                Some(_) => ScanReason::Interval,
            };
            for i in 0..if dump { bursts } else { 0 } {
                self.scan(&mut events, reason);
                if i + 1 < bursts {
                    self.wait_until(Instant::now() + self.cfg.burst_delay, &mut events);
                }
                if self.stop.is_stopped() {
                    break;
                }
            }
            if dump {
                last_dump = Some(cycle);
            } else if self.targets.iter().any(Target::never_dumped) {
                // A namespace opened since (a followed container that started, one found by
                // discovery): its first dump now, not at the next reconcile.
                self.scan_some(&mut events, ScanReason::Namespace, Target::never_dumped);
            }
            // Connections without kernel events: established sockets dumped every cycle.
            self.scan_connections(&mut events);
            if self.last_liveness.elapsed() >= LIVENESS_EVERY {
                self.check_owners(&mut events);
            }
            if self.last_discovery.elapsed() >= DISCOVER_EVERY {
                self.last_discovery = Instant::now();
                self.discover(&mut events);
                self.follow_container(&mut events);
                self.filter_netns();
            }
            self.save_snapshot();
            self.follow_owner_exits();
            if !self.stop.is_stopped() {
                self.wait_until(cycle + interval, &mut events);
            }
        }
        // Closes still waiting out their grace are closes: report them before leaving.
        for t in &mut self.targets {
            t.tracker.flush(SystemTime::now(), &mut events);
        }
        self.emit(&mut events);
        self.save_snapshot();
        // Writes the last snapshot and waits for it: when `stop` returns, it is on disk.
        drop(self.snapshot.take());
    }

    /// Time between cycles and dumps per cycle. Scanning: as configured. With kernel events,
    /// which are read as they come, one dump per `reconcile`, and a cycle a second while
    /// something needs one (owners settling or being checked, owners whose exit the kernel
    /// does not report, namespaces coming and going, a followed container); otherwise one
    /// per owner hold check, so an idle watcher sleeps.
    fn cadence(&self) -> (Duration, u32) {
        if self.kernel.is_none() {
            return (self.cfg.interval, self.cfg.burst_scans);
        }
        let busy = !self.settling.is_empty()
            || self.checking.is_some()
            || !self.exited.is_empty()
            || self.recheck_owners
            || !self.exits_followed
            || self.discovery.is_some()
            || self.follow.is_some()
            || self.targets.iter().any(Target::never_dumped);
        let every = if busy { LIVENESS_EVERY } else { super::owner_checks::HOLD_CHECK_EVERY };
        (every.min(self.cfg.reconcile), 1)
    }

    /// Tells the kernel events which namespaces are watched (all, with `all_netns`), so the
    /// others' events are not sent at all. Called whenever the watched set may change.
    pub(super) fn filter_netns(&mut self) {
        let Some(kernel) = self.kernel.as_mut() else { return };
        let only: Option<HashSet<u64>> = match self.cfg.scope {
            Scope::All => None,
            _ => Some(self.targets.iter().map(|t| t.inode).collect()),
        };
        if self.netns_filter.as_ref() != Some(&only) {
            kernel.report_netns(only.as_ref());
            self.netns_filter = Some(only);
        }
    }

    /// Names the owners of every tracked socket to the kernel events, whose exits they then
    /// report (with kernel events only).
    fn follow_owner_exits(&mut self) {
        let Some(kernel) = self.kernel.as_mut() else { return };
        let pids: HashSet<u32> =
            self.targets.iter().flat_map(|t| t.tracker.current()).flat_map(|s| s.pids()).collect();
        self.exits_followed = kernel.follow_exits(&pids);
    }

    /// With kernel events, when the earliest settling socket is due for its owner lookup (and
    /// an owner check may run again): a wait ends then, so a socket opened during a long idle
    /// wait settles on time. None while a check is in flight: its end wakes the wait.
    fn settle_due(&self) -> Option<Instant> {
        if self.kernel.is_none() || self.checking.is_some() {
            return None;
        }
        let earliest = self.settling.values().min()?;
        Some(
            (*earliest + super::owner_checks::SETTLE_AFTER)
                .max(self.last_liveness + LIVENESS_EVERY),
        )
    }

    /// One scan: dump each namespace that may have changed, carry known owners over, look
    /// up new ones (one walk of /proc for all namespaces), filter, hand each census to its
    /// tracker.
    pub(super) fn scan(&mut self, events: &mut Vec<Event>, reason: ScanReason) {
        self.scan_some(events, reason, |_| true);
    }

    /// A scan of the namespaces `which` picks.
    pub(super) fn scan_some(
        &mut self,
        events: &mut Vec<Event>,
        reason: ScanReason,
        which: impl Fn(&Target) -> bool,
    ) {
        let started = Instant::now();
        let mut dumped = Vec::new();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if which(t)
                && !t.quiet()
                && let Some(d) = t.dump(&self.dumps, &self.cfg.filter)
            {
                dumped.push((i, d));
            }
        }
        let any_dumped = !dumped.is_empty();
        // Found right after the scan that saw them, while their processes are alive.
        let counts: Vec<usize> = dumped.iter().map(|(_, d)| d.new.len()).collect();
        let mut new: Vec<Socket> = dumped.iter_mut().flat_map(|(_, d)| d.new.drain(..)).collect();
        self.owners.resolve(&mut new);
        for s in &mut new {
            self.namer.attribute(s, &self.proc_root);
        }
        let mut new = new.into_iter();
        let at = At::now(Source::Scan);
        for ((i, mut d), count) in dumped.into_iter().zip(counts) {
            let t = &mut self.targets[i];
            for s in new.by_ref().take(count) {
                if self.cfg.filter.owner_matches(&s, &self.proc_root) {
                    d.present.push(s);
                } else {
                    d.ignored.insert(Key::of(&s));
                }
            }
            t.ignored = d.ignored;
            t.tracker.observe(Observation::Census { sockets: d.present, at }, events);
        }
        for t in &mut self.targets {
            t.tracker.expire(Instant::now(), SystemTime::now(), events);
        }
        if any_dumped {
            self.counters.scanned(reason, started.elapsed());
        } else if reason == ScanReason::Interval {
            // Every namespace was quiet: the change probe saw nothing new.
            self.counters.skipped();
        }
        let failing = self.targets.iter().find_map(|t| t.last_error.clone());
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = failing;
        self.emit(events);
    }

    /// Waits until `deadline`, reading feeds, reporting grace expiries and noticing a stop
    /// meanwhile.
    fn wait_until(&mut self, deadline: Instant, events: &mut Vec<Event>) {
        loop {
            let now = Instant::now();
            for t in &mut self.targets {
                t.tracker.expire(now, SystemTime::now(), events);
            }
            self.emit(events);
            let deadline = self.settle_due().map_or(deadline, |d| d.min(deadline));
            if self.stop.is_stopped() || now >= deadline {
                return;
            }
            let due = self.targets.iter().filter_map(|t| t.tracker.next_due()).min();
            let until = due.map_or(deadline, |d| d.min(deadline));
            let wait = until.saturating_duration_since(now);
            // Round up so a sub-millisecond wait does not spin.
            let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let had_kernel = self.kernel.is_some();
            let (woke, checked, kernel, conns, ready) = {
                let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
                let check_at =
                    self.check_done.as_ref().filter(|_| self.checking.is_some()).map(|d| {
                        fds.push(PollFd::new(d.rx.as_fd(), PollFlags::POLLIN));
                        fds.len() - 1
                    });
                let kernel_at = self.kernel.as_ref().map(|k| {
                    fds.push(PollFd::new(k.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let conns_at = self.conns.as_ref().and_then(ConnWatch::fd).map(|fd| {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    fds.len() - 1
                });
                let first_feed = fds.len();
                let mut owners = Vec::new();
                for (i, t) in self.targets.iter().enumerate() {
                    if let Some(feed) = &t.feed {
                        fds.push(PollFd::new(feed.fd(), PollFlags::POLLIN));
                        owners.push(i);
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {
                        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                        let feeds: Vec<usize> = fds[first_feed..]
                            .iter()
                            .zip(&owners)
                            .filter(|(f, _)| ready(f))
                            .map(|(_, i)| *i)
                            .collect();
                        let at = |i: Option<usize>| i.is_some_and(|i| ready(&fds[i]));
                        (ready(&fds[0]), at(check_at), at(kernel_at), at(conns_at), feeds)
                    }
                    Err(_) => (false, false, false, false, Vec::new()), // EINTR: loop again
                }
            };
            if woke {
                return; // stop() wrote to the pipe; the flag is set
            }
            // An owner check finished: its findings now, and the exits that waited for it.
            if checked {
                if let Some(d) = &self.check_done {
                    d.drain();
                }
                self.collect_checked(true, events);
                if !self.exited.is_empty() || self.recheck_owners {
                    self.check_owners(events);
                }
            }
            // Kernel events first: a listener's open is in the ring buffer before its close
            // can reach a destroy feed.
            if kernel {
                // The connection ring is read too, after this one, ready or not: a record in it
                // can precede one just read here (a listener's accept before its close).
                let with_conns = self.conns.is_some();
                self.read_kernel(events, with_conns);
                if had_kernel && self.kernel.is_none() {
                    return; // they failed: the next cycle scans at the scan interval
                }
            } else if conns {
                self.read_connections(events);
            }
            for i in ready {
                self.read_feed(i, events);
            }
        }
    }

    /// Reads what namespace `i`'s feed has, rescanning when it lost some.
    fn read_feed(&mut self, i: usize, events: &mut Vec<Event>) {
        let t = &mut self.targets[i];
        let Some(feed) = t.feed.as_mut() else { return };
        let mut seen = Vec::new();
        let state = feed.read(&mut seen);
        // Any destroy message, even for a socket not tracked, may mean the set changed.
        t.destroyed_since_scan |= !seen.is_empty();
        let netns = t.inode;
        for obs in seen {
            if let (Observation::Gone { cookie, at }, Some(c)) = (&obs, self.conns.as_mut()) {
                c.gone(netns, *cookie, *at, events);
            }
            self.targets[i].tracker.observe(obs, events);
        }
        let t = &mut self.targets[i];
        match state {
            Ok(s) if s.resync => {
                log::debug!("destroy events overran the receive buffer: rescanning");
                t.destroyed_since_scan = true;
                self.scan(events, ScanReason::Resync);
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("destroy events failed ({e}): closes are seen at the next scan");
                t.drop_feed();
            }
        }
        self.emit(events);
    }

    /// Hands `events` to the sink and the tracker's changes to `Watcher::current`.
    pub(super) fn emit(&mut self, events: &mut Vec<Event>) {
        self.publish();
        let sent = !events.is_empty();
        for e in events.drain(..) {
            self.counters.event(&e);
            match &mut self.sink {
                Sink::Channel(tx, _) => match tx.try_send(e) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            log::warn!(
                                "the event reader is {} events behind: {n} event(s) dropped",
                                super::EVENT_QUEUE
                            );
                        }
                    }
                    // Nobody listens any more: stop scanning.
                    Err(TrySendError::Disconnected(_)) => self.stop.stop(),
                },
                Sink::Callback(f) => f(e),
            }
        }
        if let (true, Sink::Channel(_, ready)) = (sent, &self.sink) {
            // Non-blocking: a full pipe is readable already.
            let _ = nix::unistd::write(ready, &[1]);
        }
    }

    /// Applies the trackers' changes to the published open set: as much work as there were
    /// changes, however many sockets are open.
    fn publish(&mut self) {
        self.counters.set_namespaces(self.targets.len());
        {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            for t in &mut self.targets {
                let (settling, new_owners) = (&mut self.settling, &mut self.new_owners);
                self.dirty |= apply(&mut published, &mut t.tracker, settling, new_owners);
            }
        }
        // Their exits are reported from now on (the whole set is brought in step each cycle).
        if let Some(kernel) = self.kernel.as_mut().filter(|_| !self.new_owners.is_empty()) {
            self.exits_followed &= kernel.follow_more_exits(&self.new_owners);
        }
        self.new_owners.clear();
    }

    /// A namespace no longer watched: what its tracker last changed is published, then it
    /// goes.
    pub(super) fn retire(&mut self, mut t: Target) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let (settling, new_owners) = (&mut self.settling, &mut self.new_owners);
        self.dirty |= apply(&mut published, &mut t.tracker, settling, new_owners);
    }

    fn open_sockets(&self) -> Vec<Socket> {
        self.targets.iter().flat_map(|t| t.tracker.current().cloned()).collect()
    }

    fn save_snapshot(&mut self) {
        let Some(writer) = self.snapshot.as_ref().filter(|_| self.dirty) else { return };
        let netns = match (&self.cfg.scope, self.targets.first()) {
            (Scope::All, _) => snapshot::ALL_NAMESPACES,
            (_, Some(t)) => t.inode,
            // A followed container that is down: saved (still dirty) once it runs again.
            (_, None) => return,
        };
        writer.submit(Snapshot { netns, sockets: self.open_sockets() });
        self.dirty = false;
    }
}

/// Applies one tracker's changes to `published`, and notes sockets that opened or changed
/// as settling and their owners in `new_owners`; whether there were any.
fn apply(
    published: &mut HashMap<Key, Arc<Socket>>,
    tracker: &mut Tracker,
    settling: &mut HashMap<Key, Instant>,
    new_owners: &mut Vec<u32>,
) -> bool {
    let mut any = false;
    for change in tracker.take_changes() {
        any = true;
        match change {
            Change::Open(key, socket) => {
                settling.insert(key.clone(), Instant::now());
                new_owners.extend(socket.pids());
                published.insert(key, Arc::new(socket));
            }
            Change::Closed(key) => {
                settling.remove(&key);
                published.remove(&key);
            }
        }
    }
    any
}
