//! The Watcher: a scan thread that turns sock_diag dumps and destroy events into [`Event`]s.
//!
//! Owns scheduling (intervals, bursts, waiting on destroy events and grace deadlines), the
//! scan thread's lifetime and event delivery. What counts as open, closed or restarted is the
//! tracker's business; how owners are found is the owner index's.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::diag::{DestroyFeed, Dump};
use crate::discover::{self, Discovery, Found, NAMED_NETNS_DIR, Namer};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::filter::Filter;
use crate::netns::Netns;
use crate::owners::{self, Detail, OwnerIndex};
use crate::probe::ChangeProbe;
use crate::query::{Backend, Scanner, Scope, worker_threads};
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
/// How often, with `all_netns`, new and vanished namespaces are looked for.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);
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
    scope: Scope,
    docker: Option<PathBuf>,
    /// The container to follow across restarts (with `docker`).
    follow: Option<String>,
    destroy_buffer: Option<usize>,
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
            scope: Scope::Current,
            docker: None,
            follow: None,
            destroy_buffer: None,
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
        self.scope = Scope::One(netns);
        self.follow = None;
        self
    }

    /// Watch every network namespace on the host as one stream: those of all processes and
    /// the named ones under `/run/netns`. A namespace whose first process appears is watched
    /// within a second; when its last process exits its sockets are reported closed. Events
    /// carry each socket's namespace and container. Needs `CAP_SYS_ADMIN` and
    /// `CAP_SYS_PTRACE`; uses three to four file descriptors per namespace.
    pub fn all_netns(mut self) -> Self {
        self.scope = Scope::All;
        self.follow = None;
        self
    }

    /// With [`all_netns`](Self::all_netns), ask the Docker daemon listening on `socket` for
    /// container names (without it, a container is named by its short id). Feature `docker`.
    #[cfg(feature = "docker")]
    pub fn docker_names(mut self, socket: impl AsRef<Path>) -> Self {
        self.docker = Some(socket.as_ref().to_owned());
        self
    }

    /// Watch a Docker container, by name or id, through the daemon listening on `socket`,
    /// and follow it: when it stops, its ports are reported closed; when it runs again (a
    /// restart gives it a new network namespace), the new namespace is watched within about
    /// a second and its ports are reported open. `build` fails if the daemon cannot be
    /// reached or the container is not running. Needs `CAP_SYS_ADMIN`. Feature `docker`.
    #[cfg(feature = "docker")]
    pub fn container(mut self, socket: impl AsRef<Path>, name_or_id: impl Into<String>) -> Self {
        self.docker = Some(socket.as_ref().to_owned());
        self.follow = Some(name_or_id.into());
        self.scope = Scope::Current;
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

    /// The destroy feed's socket receive buffer in bytes (default: the system's,
    /// `net.core.rmem_default`). A burst of closes larger than it overruns the feed; the
    /// watcher then rescans at once, so no close is lost, only reported a scan later.
    pub fn destroy_buffer(mut self, bytes: usize) -> Self {
        self.destroy_buffer = Some(bytes);
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

    fn start(mut self, sink: Sink, events: Option<Receiver<Event>>) -> Result<Watcher> {
        self.validate()?;
        let follow = self.resolve_container()?;
        let proc_root = PathBuf::from("/proc");
        let mut restored = match &self.snapshot {
            Some(path) => restore(path, &self.scope, &self.filter)?,
            None => HashMap::new(),
        };
        let mut targets = Vec::new();
        let mut discovery = None;
        let mut unwatchable = HashSet::new();
        match &self.scope {
            Scope::All => {
                let mut d = Discovery::new(&proc_root, Path::new(NAMED_NETNS_DIR));
                let mut namer = Namer::new(self.docker.clone());
                let found = d.pass();
                let (opened, failed) = open_targets(found.values(), &mut namer, &proc_root, &self);
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
                let mut t = Target::open(&ns, &self)?;
                if let Some((_, sockets)) = restored.drain().next() {
                    // A single namespace's snapshot is keyed 0: see `restore`.
                    t.tracker.adopt(rebase(sockets, t.inode));
                }
                targets.push(t);
            }
        }
        // Namespaces that held sockets in the snapshot and are gone now: those are closed.
        let vanished: Vec<Socket> = restored.into_values().flatten().collect();
        let (wake_rx, wake_tx) =
            nix::unistd::pipe().map_err(|e| Error::NetlinkUnavailable { source: e.into() })?;
        let stop = StopHandle {
            inner: Arc::new(StopInner { stopped: AtomicBool::new(false), wake: wake_tx }),
        };
        let current = Arc::new(Mutex::new(Vec::new()));
        let snapshot =
            match &self.snapshot {
                Some(path) => Some(snapshot::Writer::spawn(path.clone()).map_err(|e| {
                    Error::Io { path: PathBuf::from("<snapshot thread>"), source: e }
                })?),
                None => None,
            };
        let detail = Detail { cmdline: self.cmdlines };
        let scan = Loop {
            dumps: self.filter.dumps(),
            owners: OwnerIndex::new(&proc_root, Path::new("/etc/passwd"), detail, worker_threads()),
            targets,
            discovery,
            follow,
            unwatchable,
            vanished,
            sink,
            wake: wake_rx,
            stop: stop.clone(),
            current: Arc::clone(&current),
            dirty: false,
            snapshot,
            last_liveness: Instant::now(),
            last_discovery: Instant::now(),
            proc_root,
            cfg: self,
        };
        let thread = std::thread::Builder::new()
            .name("portwatch-scan".into())
            .spawn(move || scan.run())
            .map_err(|e| Error::Io { path: PathBuf::from("<scan thread>"), source: e })?;
        Ok(Watcher { thread: Some(thread), events, stop, current })
    }
}

/// A container followed across restarts (only built with feature `docker`).
#[cfg_attr(not(feature = "docker"), allow(dead_code))]
struct Follow {
    socket: PathBuf,
    name: String,
    /// Its init's host pid while it runs in the namespace watched; `None` while it is down.
    pid: Option<u32>,
    /// Why it could not be found again, last time: said once.
    said: Option<String>,
}

impl WatcherBuilder {
    /// The container to follow, resolved now: its namespace becomes the one watched.
    #[cfg(feature = "docker")]
    fn resolve_container(&mut self) -> Result<Option<Follow>> {
        let (Some(name), Some(socket)) = (&self.follow, &self.docker) else { return Ok(None) };
        let c = crate::docker::inspect(socket, name)?;
        let follow =
            Follow { socket: socket.clone(), name: name.clone(), pid: Some(c.pid), said: None };
        self.scope = Scope::One(c.netns()?);
        Ok(Some(follow))
    }

    #[cfg(not(feature = "docker"))]
    fn resolve_container(&mut self) -> Result<Option<Follow>> {
        Ok(None)
    }
}

/// Opens a Target for each of `found`, in inode order; returns those that opened and why the
/// others did not.
fn open_targets<'a>(
    found: impl Iterator<Item = &'a Found>,
    namer: &mut Namer,
    proc_root: &Path,
    cfg: &WatcherBuilder,
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

/// The snapshot's sockets by namespace inode, when it is usable (says why when it is not). A
/// single namespace's sockets come back under key 0: a restarted container has a new
/// namespace, and its ports are still its ports. A path that holds something other than a
/// snapshot is an error: it must not be replaced.
fn restore(path: &Path, scope: &Scope, filter: &Filter) -> Result<HashMap<u64, Vec<Socket>>> {
    let mut out: HashMap<u64, Vec<Socket>> = HashMap::new();
    let snap = match snapshot::load(path) {
        Ok(snapshot::Found::Snapshot(snap)) => snap,
        Ok(snapshot::Found::Fresh) => {
            log::info!("no snapshot at {} yet: starting fresh", path.display());
            return Ok(out);
        }
        Ok(snapshot::Found::Unusable(e)) => {
            log::warn!("ignoring snapshot {}: {e}", path.display());
            return Ok(out);
        }
        Err(problem) => return Err(Error::Snapshot { path: path.to_owned(), problem }),
    };
    let all = matches!(scope, Scope::All);
    if all != (snap.netns == snapshot::ALL_NAMESPACES) {
        let (was, is) = if all { ("one namespace", "all") } else { ("all namespaces", "one") };
        log::warn!("snapshot {} is of {was}, this watcher of {is}: ignored", path.display());
        return Ok(out);
    }
    for s in snap.sockets.into_iter().filter(|s| filter.matches(s)) {
        out.entry(if all { s.netns } else { 0 }).or_default().push(s);
    }
    Ok(out)
}

/// Moves a snapshot's sockets into namespace `netns` (a restarted container's new one).
fn rebase(mut sockets: Vec<Socket>, netns: u64) -> Vec<Socket> {
    if sockets.first().is_some_and(|s| s.netns != netns) {
        log::info!(
            "snapshot taken in another network namespace (a restarted container?): continuing from it"
        );
    }
    for s in &mut sockets {
        s.netns = netns;
    }
    sockets
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

/// One watched namespace: its kernel sockets and what was seen in it.
struct Target {
    inode: u64,
    scanner: Scanner,
    feed: Option<DestroyFeed>,
    /// Skips dumps while no inet socket appeared or went away (see `probe`); `None` where it
    /// cannot be trusted: no destroy feed, unix sockets or non-listening states watched.
    probe: Option<ChangeProbe>,
    tracker: Tracker,
    /// Sockets present but excluded by the owner filter, so their owners are not looked up
    /// again on every scan.
    ignored: HashSet<Key>,
    /// A destroy message (any cookie) arrived since the last full scan.
    destroyed_since_scan: bool,
    /// When the last full scan ran.
    last_full_scan: Option<Instant>,
    /// The last scan error, so a persistent one is logged once.
    last_error: Option<String>,
}

impl Target {
    /// Opens the sockets that read `ns`: each is created inside it and stays bound to it.
    fn open(ns: &Netns, cfg: &WatcherBuilder) -> Result<Target> {
        let scanner = Scanner::new(cfg.backend, ns)?;
        let feed = if cfg.destroy_events && cfg.backend != Backend::Proc {
            match ns.enter(|| DestroyFeed::open(cfg.destroy_buffer))? {
                Ok(feed) => Some(feed),
                Err(e) => {
                    log::warn!("no destroy events ({e}): closes are seen at the next scan");
                    None
                }
            }
        } else {
            None
        };
        let probe = if feed.is_some() && cfg.filter.probe_safe() {
            ns.enter(|| ChangeProbe::open(Path::new("/proc/thread-self/net")))?
        } else {
            None
        };
        Ok(Target {
            inode: ns.inode(),
            scanner,
            feed,
            probe,
            tracker: Tracker::new(cfg.close_grace, cfg.report_initial),
            ignored: HashSet::new(),
            destroyed_since_scan: false,
            last_full_scan: None,
            last_error: None,
        })
    }

    /// Whether this scan can be skipped: the change probe saw no inet socket appear, none
    /// was destroyed, and the last full scan is recent.
    fn quiet(&mut self) -> bool {
        let quiet = self.probe.as_mut().is_some_and(|p| !p.changed());
        quiet
            && !self.destroyed_since_scan
            && self.last_full_scan.is_some_and(|t| t.elapsed() < FULL_SCAN_EVERY)
    }

    /// Dumps the namespace: the sockets the filter keeps, split into those already known
    /// (owners carried over) and new ones. `None` when the dump failed (logged once).
    fn dump(&mut self, dumps: &[Dump], filter: &Filter) -> Option<Dumped> {
        self.destroyed_since_scan = false;
        self.last_full_scan = Some(Instant::now());
        let sockets = match self.scanner.scan(dumps) {
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
                return None;
            }
        };
        let mut d = Dumped::default();
        for mut s in sockets.into_iter().filter(|s| filter.matches(s)) {
            let key = Key::of(&s);
            if self.ignored.contains(&key) {
                d.ignored.insert(key);
            } else if let Some(owners) = self.tracker.owners_of(&s) {
                s.owners = owners.clone();
                d.present.push(s);
            } else {
                d.new.push(s);
            }
        }
        Some(d)
    }
}

/// What one namespace's dump found.
#[derive(Default)]
struct Dumped {
    present: Vec<Socket>,
    new: Vec<Socket>,
    ignored: HashSet<Key>,
}

/// The scan thread's state.
struct Loop {
    cfg: WatcherBuilder,
    dumps: Vec<Dump>,
    owners: OwnerIndex,
    /// The namespaces watched: one, or (with discovery) every one alive.
    targets: Vec<Target>,
    /// Finds namespaces appearing and disappearing, with `all_netns`.
    discovery: Option<(Discovery, Namer)>,
    /// The container followed across restarts, with `container`.
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    follow: Option<Follow>,
    /// Namespaces found that could not be watched (said once): not tried again each pass.
    unwatchable: HashSet<u64>,
    /// Sockets a snapshot had open in namespaces that no longer exist: reported closed first.
    vanished: Vec<Socket>,
    sink: Sink,
    wake: OwnedFd,
    stop: StopHandle,
    current: Arc<Mutex<Vec<Socket>>>,
    /// The set changed since the snapshot was last handed to the writer.
    dirty: bool,
    /// Writes the snapshot off this thread, when one is kept.
    snapshot: Option<snapshot::Writer>,
    /// When owner liveness was last checked.
    last_liveness: Instant,
    /// When namespaces were last looked for.
    last_discovery: Instant,
    proc_root: PathBuf,
}

impl Loop {
    fn run(mut self) {
        let mut events: Vec<Event> = std::mem::take(&mut self.vanished)
            .into_iter()
            .map(|socket| Event::Closed { socket, at: SystemTime::now() })
            .collect();
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
            if self.last_discovery.elapsed() >= DISCOVER_EVERY {
                self.last_discovery = Instant::now();
                self.discover(&mut events);
                self.follow_container(&mut events);
            }
            self.save_snapshot();
            if !self.stop.is_stopped() {
                self.wait_until(cycle + self.cfg.interval, &mut events);
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

    /// One scan: dump each namespace that may have changed, carry known owners over, look
    /// up new ones (one walk of /proc for all namespaces), filter, diff.
    fn scan(&mut self, events: &mut Vec<Event>) {
        let mut dumped: Vec<(usize, Dumped)> = Vec::new();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if !t.quiet()
                && let Some(d) = t.dump(&self.dumps, &self.cfg.filter)
            {
                dumped.push((i, d));
            }
        }
        // Found right after the scan that saw them, while their processes are alive.
        let counts: Vec<usize> = dumped.iter().map(|(_, d)| d.new.len()).collect();
        let mut new: Vec<Socket> = dumped.iter_mut().flat_map(|(_, d)| d.new.drain(..)).collect();
        self.owners.resolve(&mut new);
        let mut new = new.into_iter();
        let now = Instant::now();
        for ((i, mut d), count) in dumped.into_iter().zip(counts) {
            let t = &mut self.targets[i];
            for s in new.by_ref().take(count) {
                let keep = match self.cfg.filter.owner_pid() {
                    Some((pid, children)) => owners::held_by(&s, pid, children, &self.proc_root),
                    None => true,
                };
                if keep {
                    d.present.push(s);
                } else {
                    d.ignored.insert(Key::of(&s));
                }
            }
            t.ignored = d.ignored;
            t.tracker.observe(d.present, now, SystemTime::now(), events);
        }
        for t in &mut self.targets {
            t.tracker.expire(Instant::now(), SystemTime::now(), events);
        }
        self.emit(events);
    }
    /// Sockets that stay open while an owner exits (a forking server's parent, a handed-over
    /// listener) get their owners looked up again: one `stat` per distinct owner pid.
    fn check_owners(&mut self, events: &mut Vec<Event>) {
        self.last_liveness = Instant::now();
        let mut dead: HashSet<u32> = HashSet::new();
        let mut alive: HashSet<u32> = HashSet::new();
        let mut stale: Vec<(usize, Socket)> = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            for s in t.tracker.current() {
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
                    stale.push((i, s.clone()));
                }
            }
        }
        if stale.is_empty() {
            return;
        }
        let mut fresh: Vec<Socket> = stale.iter().map(|(_, s)| s.clone()).collect();
        self.owners.resolve(&mut fresh);
        for ((i, old), new) in stale.iter().zip(fresh) {
            self.targets[*i].tracker.update_owners(old, new.owners, SystemTime::now(), events);
        }
        self.emit(events);
    }

    /// Starts watching namespaces that appeared and reports the sockets of those that went
    /// away closed.
    fn discover(&mut self, events: &mut Vec<Event>) {
        let Some((discovery, namer)) = self.discovery.as_mut() else { return };
        let found = discovery.pass();
        let mut kept = Vec::with_capacity(self.targets.len());
        for mut t in std::mem::take(&mut self.targets) {
            if found.contains_key(&t.inode) {
                kept.push(t);
            } else {
                log::debug!("network namespace {} is gone", t.inode);
                t.tracker.observe(Vec::new(), Instant::now(), SystemTime::now(), events);
                t.tracker.flush(SystemTime::now(), events);
            }
        }
        self.targets = kept;
        self.unwatchable.retain(|inode| found.contains_key(inode));
        let new = found.values().filter(|f| {
            !self.unwatchable.contains(&f.inode) && !self.targets.iter().any(|t| t.inode == f.inode)
        });
        let (opened, failed) = open_targets(new, namer, &self.proc_root, &self.cfg);
        for mut t in opened {
            log::debug!("watching network namespace {}", t.inode);
            // Everything in it opened after the watch began: nothing is initial.
            t.tracker.adopt(Vec::new());
            self.targets.push(t);
        }
        for (inode, e) in failed {
            self.unwatchable.insert(inode);
            if let Err(e) = discover::skip(inode, e) {
                log::warn!("cannot watch network namespace {inode}: {e}");
            }
        }
        self.emit(events);
    }

    /// With a followed container: notices that it stopped (its init is gone, or lives in
    /// another namespace), reports its ports closed, and watches its new namespace once the
    /// daemon says it runs again.
    #[cfg(feature = "docker")]
    fn follow_container(&mut self, events: &mut Vec<Event>) {
        let Some(f) = self.follow.as_mut() else { return };
        let watched = self.targets.first().map(|t| t.inode);
        if let (Some(pid), Some(inode)) = (f.pid, watched)
            && discover::ns_of(&self.proc_root, pid) == Some(inode)
        {
            return;
        }
        if let Some(mut t) = self.targets.pop() {
            log::info!("container {} stopped: its ports are closed; waiting for it", f.name);
            t.tracker.observe(Vec::new(), Instant::now(), SystemTime::now(), events);
            t.tracker.flush(SystemTime::now(), events);
            f.pid = None;
        }
        let back = crate::docker::inspect(&f.socket, &f.name)
            .and_then(|c| Ok((c.pid, Target::open(&c.netns()?, &self.cfg)?)));
        match back {
            Ok((pid, mut t)) => {
                log::info!("container {} runs again: watching its new network namespace", f.name);
                // Everything in it opened after the watch began: nothing is initial.
                t.tracker.adopt(Vec::new());
                self.targets.push(t);
                f.pid = Some(pid);
                f.said = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if f.said.as_ref() != Some(&msg) {
                    log::debug!("container {} is not back yet: {msg}", f.name);
                    f.said = Some(msg);
                }
            }
        }
        self.emit(events);
    }

    #[cfg(not(feature = "docker"))]
    fn follow_container(&mut self, _events: &mut Vec<Event>) {}

    /// Waits until `deadline`, handling destroy events, grace expiries and stop meanwhile.
    fn wait_until(&mut self, deadline: Instant, events: &mut Vec<Event>) {
        loop {
            let now = Instant::now();
            for t in &mut self.targets {
                t.tracker.expire(now, SystemTime::now(), events);
            }
            self.emit(events);
            if self.stop.is_stopped() || now >= deadline {
                return;
            }
            let due = self.targets.iter().filter_map(|t| t.tracker.next_due()).min();
            let until = due.map_or(deadline, |d| d.min(deadline));
            let wait = until.saturating_duration_since(now);
            // Round up so a sub-millisecond wait does not spin.
            let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let (woke, destroyed) = {
                let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
                let mut owners = Vec::new();
                for (i, t) in self.targets.iter().enumerate() {
                    if let Some(feed) = &t.feed {
                        fds.push(PollFd::new(feed.as_fd(), PollFlags::POLLIN));
                        owners.push(i);
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {
                        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                        let destroyed: Vec<usize> = fds[1..]
                            .iter()
                            .zip(&owners)
                            .filter(|(f, _)| ready(f))
                            .map(|(_, i)| *i)
                            .collect();
                        (ready(&fds[0]), destroyed)
                    }
                    Err(_) => (false, Vec::new()), // EINTR: loop again
                }
            };
            if woke {
                return; // stop() wrote to the pipe; the flag is set
            }
            for i in destroyed {
                self.on_destroy(i, events);
            }
        }
    }

    fn on_destroy(&mut self, i: usize, events: &mut Vec<Event>) {
        let t = &mut self.targets[i];
        let Some(feed) = t.feed.as_mut() else { return };
        let tracker = &mut t.tracker;
        let any = &mut t.destroyed_since_scan;
        let drained = feed.drain(|cookie| {
            *any = true;
            tracker.destroyed(cookie, Instant::now(), SystemTime::now(), events)
        });
        match drained {
            Ok(d) if d.overrun => {
                log::debug!("destroy events overran the receive buffer: rescanning");
                t.destroyed_since_scan = true;
                self.scan(events);
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("destroy events failed ({e}): closes are seen at the next scan");
                t.feed = None;
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
            *current = self.open_sockets();
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
