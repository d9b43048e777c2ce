//! The Watcher: a scan thread that turns sock_diag dumps and destroy events into [`Event`]s.
//!
//! Owns scheduling (intervals, bursts, waiting on destroy events and grace deadlines), the
//! scan thread's lifetime and event delivery. What counts as open, closed or restarted is the
//! tracker's business; how owners are found is the owner index's.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::diag::{DestroyFeed, Dump};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::filter::Filter;
use crate::netns::Netns;
use crate::owners::{self, Detail, OwnerIndex};
use crate::probe::ChangeProbe;
use crate::query::{Backend, Scanner, worker_threads};
use crate::snapshot::{self, Snapshot};
use crate::socket::Socket;
use crate::tracker::{Key, Tracker};

/// Longest interval accepted: a day.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest close grace accepted: an hour.
const MAX_GRACE: Duration = Duration::from_secs(3600);
/// How often owners of open sockets are checked for having exited.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);
/// With the change probe, a full scan still runs at least this often: the probe cannot see
/// a socket changing state without being added or freed.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(2);
/// Most burst scans per cycle.
const MAX_BURST: u32 = 1000;

/// Watches the sockets of the calling thread's network namespace and reports changes.
///
/// ```no_run
/// use std::time::Duration;
/// use portwatch_core::{Event, Watcher};
///
/// let watcher = Watcher::builder().interval(Duration::from_millis(500)).build()?;
/// for event in watcher.events() {
///     match event {
///         Event::Opened { socket, .. } => println!("opened {}", socket.local_display()),
///         Event::Closed { socket, .. } => println!("closed {}", socket.local_display()),
///         _ => {}
///     }
/// }
/// # Ok::<(), portwatch_core::Error>(())
/// ```
///
/// Dropping the watcher stops its thread and waits for it.
pub struct Watcher {
    thread: Option<JoinHandle<()>>,
    events: Option<Receiver<Event>>,
    stop: StopHandle,
    current: Arc<Mutex<Vec<Socket>>>,
}

/// Ends a [`Watcher`]'s scan thread from anywhere (another thread, a signal-handling loop).
/// The thread finishes its current scan, reports pending closes, writes the snapshot and
/// exits; the event iterator then ends.
#[derive(Clone)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

struct StopInner {
    stopped: AtomicBool,
    /// Write end of a pipe the scan thread polls, so a stop does not wait for a timeout.
    wake: OwnedFd,
}

impl StopHandle {
    /// Asks the watcher to stop. Returns at once; safe to call more than once.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let _ = nix::unistd::write(&self.inner.wake, &[1]);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").field("stopped", &self.is_stopped()).finish()
    }
}

/// Configures a [`Watcher`]; `build` validates every setting and starts it.
#[derive(Debug, Clone)]
pub struct WatcherBuilder {
    interval: Duration,
    burst_scans: u32,
    burst_delay: Duration,
    close_grace: Duration,
    filter: Filter,
    snapshot: Option<PathBuf>,
    report_initial: bool,
    backend: Backend,
    destroy_events: bool,
    cmdlines: bool,
    netns: Option<Netns>,
}

impl Default for WatcherBuilder {
    fn default() -> Self {
        WatcherBuilder {
            interval: Duration::from_millis(200),
            burst_scans: 1,
            burst_delay: Duration::from_millis(50),
            close_grace: Duration::ZERO,
            filter: Filter::new(),
            snapshot: None,
            report_initial: true,
            backend: Backend::Auto,
            destroy_events: true,
            cmdlines: true,
            netns: None,
        }
    }
}

impl WatcherBuilder {
    /// Time between the starts of two scan cycles (default 200 ms: a listener that lives
    /// 250 ms is always seen).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Scans per cycle (default 1). A socket seen by any of them is reported.
    pub fn burst_scans(mut self, scans: u32) -> Self {
        self.burst_scans = scans;
        self
    }

    /// Time between the scans of one cycle (default 50 ms).
    pub fn burst_delay(mut self, delay: Duration) -> Self {
        self.burst_delay = delay;
        self
    }

    /// How long an endpoint must stay closed before its close is reported (default 0: at
    /// once). A listener that closes and reopens within it is a restart: no close, no open.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// Which sockets to watch (default: TCP and UDP listeners).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Watch this network namespace instead of the calling thread's.
    pub fn netns(mut self, netns: Netns) -> Self {
        self.netns = Some(netns);
        self
    }

    /// Keep the set of open sockets in this file across restarts of the watcher.
    pub fn snapshot(mut self, path: impl AsRef<Path>) -> Self {
        self.snapshot = Some(path.as_ref().to_owned());
        self
    }

    /// Whether sockets already open at start are reported, as [`Event::Opened`] with
    /// `initial: true` (default true).
    pub fn report_initial(mut self, report: bool) -> Self {
        self.report_initial = report;
        self
    }

    /// Where sockets are read from (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Whether to use sock_diag destroy events for instant closes (default true; falls back
    /// to scanning, with one warning, where they cannot be had).
    pub fn destroy_events(mut self, enabled: bool) -> Self {
        self.destroy_events = enabled;
        self
    }

    /// Whether owners' command lines are read (default true).
    pub fn cmdlines(mut self, cmdlines: bool) -> Self {
        self.cmdlines = cmdlines;
        self
    }

    /// The high-fidelity preset: a scan every 8 ms, so a listener living 10 ms is seen with
    /// its owner, and a 200 ms close grace against restarts. Costs about 2% of a core idle.
    pub fn high_fidelity(self) -> Self {
        self.interval(Duration::from_millis(8))
            .burst_scans(1)
            .burst_delay(Duration::from_millis(8))
            .close_grace(Duration::from_millis(200))
    }

    fn validate(&self) -> Result<()> {
        let bad =
            |setting: &'static str, reason: String| Err(Error::InvalidSetting { setting, reason });
        if self.interval.is_zero() || self.interval > MAX_INTERVAL {
            return bad("interval", format!("{:?} is not between 1 ns and 24 h", self.interval));
        }
        if self.burst_scans == 0 || self.burst_scans > MAX_BURST {
            return bad(
                "burst_scans",
                format!("{} is not between 1 and {MAX_BURST}", self.burst_scans),
            );
        }
        if self.burst_scans > 1 && self.burst_delay.is_zero() {
            return bad("burst_delay", "must be above 0 when burst_scans is above 1".into());
        }
        if self.burst_scans > 1 && self.burst_delay * (self.burst_scans - 1) >= self.interval {
            return bad(
                "burst_delay",
                format!(
                    "{} scans {:?} apart do not fit in the {:?} interval",
                    self.burst_scans, self.burst_delay, self.interval
                ),
            );
        }
        if self.close_grace > MAX_GRACE {
            return bad("close_grace", format!("{:?} is longer than an hour", self.close_grace));
        }
        Ok(())
    }

    /// Validates the settings, opens the sockets it needs and starts the scan thread; events
    /// are read with [`Watcher::events`].
    pub fn build(self) -> Result<Watcher> {
        let (tx, rx) = mpsc::channel();
        self.start(Sink::Channel(tx), Some(rx))
    }

    /// Like [`build`](Self::build), but calls `f` with each event on the scan thread instead
    /// (a slow callback delays scanning).
    pub fn build_with_callback(self, f: impl FnMut(Event) + Send + 'static) -> Result<Watcher> {
        self.start(Sink::Callback(Box::new(f)), None)
    }

    fn start(self, sink: Sink, events: Option<Receiver<Event>>) -> Result<Watcher> {
        self.validate()?;
        let proc_root = PathBuf::from("/proc");
        let ns = match &self.netns {
            Some(ns) => ns.clone(),
            None => Netns::current()?,
        };
        let scanner = Scanner::new(self.backend, &ns)?;
        let feed = if self.destroy_events && self.backend != Backend::Proc {
            match ns.enter(DestroyFeed::open)? {
                Ok(feed) => Some(feed),
                Err(e) => {
                    log::warn!("no destroy events ({e}): closes are seen at the next scan");
                    None
                }
            }
        } else {
            None
        };
        let (wake_rx, wake_tx) =
            nix::unistd::pipe().map_err(|e| Error::NetlinkUnavailable { source: e.into() })?;
        let stop = StopHandle {
            inner: Arc::new(StopInner { stopped: AtomicBool::new(false), wake: wake_tx }),
        };
        let current = Arc::new(Mutex::new(Vec::new()));
        let detail = Detail { cmdline: self.cmdlines };
        let mut tracker = Tracker::new(self.close_grace, self.report_initial);
        if let Some(path) = &self.snapshot {
            restore(&mut tracker, path, scanner.netns(), &self.filter);
        }
        let scan = Loop {
            dumps: self.filter.dumps(),
            owners: OwnerIndex::new(&proc_root, Path::new("/etc/passwd"), detail, worker_threads()),
            tracker,
            scanner,
            feed,
            sink,
            wake: wake_rx,
            stop: stop.clone(),
            current: Arc::clone(&current),
            ignored: HashSet::new(),
            dirty: false,
            last_error: None,
            last_liveness: Instant::now(),
            probe: None,
            destroyed_since_scan: false,
            last_full_scan: Instant::now(),
            proc_root,
            cfg: self,
        };
        let mut scan = scan;
        if scan.feed.is_some() && scan.cfg.filter.probe_safe() {
            // Opened inside the namespace: the open file stays bound to it.
            scan.probe = ns.enter(|| ChangeProbe::open(Path::new("/proc/thread-self/net")))?;
        }
        let thread = std::thread::Builder::new()
            .name("portwatch-scan".into())
            .spawn(move || scan.run())
            .map_err(|e| Error::Io { path: PathBuf::from("<scan thread>"), source: e })?;
        Ok(Watcher { thread: Some(thread), events, stop, current })
    }
}

/// Loads a snapshot into the tracker when it is usable; says why when it is not.
fn restore(tracker: &mut Tracker, path: &Path, netns: u64, filter: &Filter) {
    if !path.exists() {
        log::info!("no snapshot at {} yet: starting fresh", path.display());
        return;
    }
    match snapshot::load(path) {
        Ok(snap) if snap.netns != netns => log::warn!(
            "snapshot {} was taken in network namespace {}, not this one ({netns}): ignored",
            path.display(),
            snap.netns
        ),
        Ok(snap) => tracker.adopt(snap.sockets.into_iter().filter(|s| filter.matches(s)).collect()),
        Err(e) => log::warn!("ignoring snapshot {}: {e}", path.display()),
    }
}

impl Watcher {
    /// A builder with the defaults: every 200 ms, one scan a cycle, no close grace, TCP and UDP
    /// listeners, destroy events on.
    pub fn builder() -> WatcherBuilder {
        WatcherBuilder::default()
    }

    /// Blocks for each event until the watcher stops. Empty for a callback watcher.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.iter().flat_map(|rx| rx.iter())
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or once stopped.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.as_ref()?.recv_timeout(timeout).ok()
    }

    /// A handle that stops the watcher from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The sockets open now, as of the last scan.
    pub fn current(&self) -> Vec<Socket> {
        self.current.lock().map(|v| v.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Stops the scan thread and waits for it to finish its cycle.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Sink {
    Channel(Sender<Event>),
    Callback(Box<dyn FnMut(Event) + Send>),
}

/// The scan thread's state.
struct Loop {
    cfg: WatcherBuilder,
    dumps: Vec<Dump>,
    scanner: Scanner,
    owners: OwnerIndex,
    feed: Option<DestroyFeed>,
    tracker: Tracker,
    sink: Sink,
    wake: OwnedFd,
    stop: StopHandle,
    current: Arc<Mutex<Vec<Socket>>>,
    /// Sockets present but excluded by the owner filter, so their owners are not looked up
    /// again on every scan.
    ignored: HashSet<Key>,
    /// The set changed since the snapshot was last written.
    dirty: bool,
    /// The last scan error, so a persistent one is logged once.
    last_error: Option<String>,
    /// When owner liveness was last checked.
    last_liveness: Instant,
    /// Skips dumps while no inet socket appeared or went away (see `probe`); `None` where it
    /// cannot be trusted: no destroy feed, unix sockets or non-listening states watched.
    probe: Option<ChangeProbe>,
    /// A destroy message (any cookie) arrived since the last full scan.
    destroyed_since_scan: bool,
    /// When the last full scan ran.
    last_full_scan: Instant,
    proc_root: PathBuf,
}

impl Loop {
    fn run(mut self) {
        let mut events = Vec::new();
        while !self.stop.is_stopped() {
            let cycle = Instant::now();
            for i in 0..self.cfg.burst_scans {
                self.scan(&mut events);
                if i + 1 < self.cfg.burst_scans {
                    self.wait_until(Instant::now() + self.cfg.burst_delay, &mut events);
                }
                if self.stop.is_stopped() {
                    break;
                }
            }
            if self.last_liveness.elapsed() >= LIVENESS_EVERY {
                self.check_owners(&mut events);
            }
            self.save_snapshot();
            if !self.stop.is_stopped() {
                self.wait_until(cycle + self.cfg.interval, &mut events);
            }
        }
        // Closes still waiting out their grace are closes: report them before leaving.
        self.tracker.flush(SystemTime::now(), &mut events);
        self.emit(&mut events);
        self.save_snapshot();
    }

    /// One scan: dump, carry known owners over, look up new ones, filter, diff. Skipped
    /// when the change probe says no inet socket appeared and none was destroyed.
    fn scan(&mut self, events: &mut Vec<Event>) {
        let quiet = self.probe.as_mut().is_some_and(|p| !p.changed());
        if quiet && !self.destroyed_since_scan && self.last_full_scan.elapsed() < FULL_SCAN_EVERY {
            self.tracker.expire(Instant::now(), SystemTime::now(), events);
            self.emit(events);
            return;
        }
        self.destroyed_since_scan = false;
        self.last_full_scan = Instant::now();
        let sockets = match self.scanner.scan(&self.dumps) {
            Ok(s) => {
                self.last_error = None;
                s
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_ref() != Some(&msg) {
                    log::warn!("scan failed: {msg}; retrying every interval");
                    self.last_error = Some(msg);
                }
                return;
            }
        };
        let mut present = Vec::with_capacity(sockets.len());
        let mut new = Vec::new();
        let mut seen_ignored = HashSet::new();
        for mut s in sockets.into_iter().filter(|s| self.cfg.filter.matches(s)) {
            let key = Key::of(&s);
            if self.ignored.contains(&key) {
                seen_ignored.insert(key);
            } else if let Some(owners) = self.tracker.owners_of(&s) {
                s.owners = owners.clone();
                present.push(s);
            } else {
                new.push(s);
            }
        }
        // Found right after the scan that saw them, while their processes are alive.
        self.owners.resolve(&mut new);
        if let Some((pid, children)) = self.cfg.filter.owner_pid() {
            for s in new {
                if owners::held_by(&s, pid, children, &self.proc_root) {
                    present.push(s);
                } else {
                    seen_ignored.insert(Key::of(&s));
                }
            }
        } else {
            present.extend(new);
        }
        self.ignored = seen_ignored;
        self.tracker.observe(present, Instant::now(), SystemTime::now(), events);
        self.tracker.expire(Instant::now(), SystemTime::now(), events);
        self.emit(events);
    }

    /// Sockets that stay open while an owner exits (a forking server's parent, a handed-over
    /// listener) get their owners looked up again: one `stat` per distinct owner pid.
    fn check_owners(&mut self, events: &mut Vec<Event>) {
        self.last_liveness = Instant::now();
        let mut dead: HashSet<u32> = HashSet::new();
        let mut alive: HashSet<u32> = HashSet::new();
        let mut stale: Vec<Socket> = Vec::new();
        for s in self.tracker.current() {
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
            if gone {
                stale.push(s.clone());
            }
        }
        if stale.is_empty() {
            return;
        }
        let mut fresh = stale.clone();
        self.owners.resolve(&mut fresh);
        for (old, new) in stale.iter().zip(fresh) {
            self.tracker.update_owners(old, new.owners, SystemTime::now(), events);
        }
        self.emit(events);
    }

    /// Waits until `deadline`, handling destroy events, grace expiries and stop meanwhile.
    fn wait_until(&mut self, deadline: Instant, events: &mut Vec<Event>) {
        loop {
            let now = Instant::now();
            self.tracker.expire(now, SystemTime::now(), events);
            self.emit(events);
            if self.stop.is_stopped() || now >= deadline {
                return;
            }
            let until = self.tracker.next_due().map_or(deadline, |d| d.min(deadline));
            let wait = until.saturating_duration_since(now);
            // Round up so a sub-millisecond wait does not spin.
            let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let (woke, destroyed) = {
                let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
                if let Some(feed) = &self.feed {
                    fds.push(PollFd::new(feed.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {
                        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                        (ready(&fds[0]), fds.get(1).is_some_and(ready))
                    }
                    Err(_) => (false, false), // EINTR: loop again
                }
            };
            if woke {
                return; // stop() wrote to the pipe; the flag is set
            }
            if destroyed {
                self.on_destroy(events);
            }
        }
    }

    fn on_destroy(&mut self, events: &mut Vec<Event>) {
        let Some(feed) = self.feed.as_mut() else { return };
        let tracker = &mut self.tracker;
        let any = &mut self.destroyed_since_scan;
        let drained = feed.drain(|cookie| {
            *any = true;
            tracker.destroyed(cookie, Instant::now(), SystemTime::now(), events)
        });
        match drained {
            Ok(d) if d.overrun => {
                log::debug!("destroy events overran the receive buffer: rescanning");
                self.scan(events);
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("destroy events failed ({e}): closes are seen at the next scan");
                self.feed = None;
            }
        }
        self.emit(events);
    }

    fn emit(&mut self, events: &mut Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.dirty = true;
        if let Ok(mut current) = self.current.lock() {
            *current = self.tracker.current().cloned().collect();
        }
        for e in events.drain(..) {
            match &mut self.sink {
                Sink::Channel(tx) => {
                    if tx.send(e).is_err() {
                        // Nobody listens any more: stop scanning.
                        self.stop.stop();
                    }
                }
                Sink::Callback(f) => f(e),
            }
        }
    }

    fn save_snapshot(&mut self) {
        let Some(path) = self.cfg.snapshot.as_ref().filter(|_| self.dirty) else { return };
        let snap = Snapshot {
            netns: self.scanner.netns(),
            sockets: self.tracker.current().cloned().collect(),
        };
        match snapshot::save(path, &snap) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                let msg =
                    format!("cannot write snapshot {}: {e}; watching continues", path.display());
                if self.last_error.as_ref() != Some(&msg) {
                    log::warn!("{msg}");
                    self.last_error = Some(msg);
                }
            }
        }
    }
}
