//! The Watcher: a thread that turns what the sources see into [`Event`]s.
//!
//! Public face (this file): [`Watcher`], [`WatcherBuilder`], [`StopHandle`], [`Monitor`]
//! (with `stats`: its counters). Behind it: the
//! validated settings (`config`), the scan thread (`scheduler`), one watched namespace
//! (`target`), the namespaces watched and found (`namespaces`), a followed container
//! (`follow`), the start from a snapshot (`restore`) and connection events (`connections`,
//! `conn_scan`).

mod config;
mod conn_scan;
mod connections;
mod follow;
mod kernel;
mod namespaces;
mod owner_checks;
mod restore;
mod scheduler;
mod stats;
mod target;

pub use self::stats::{SCAN_TIME_BOUNDS, ScanReason, ScanTimes, Stats};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use self::config::Config;
use self::scheduler::{Loop, Parts, Published, Sink};
use self::stats::Counters;
use crate::connection::{Cidr, Connections};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::filter::Filter;
use crate::netns::Netns;
use crate::owners::{Detail, OwnerIndex, OwnerLookup, load_iterator, worker_threads};
use crate::snapshot;
use crate::socket::Socket;
use crate::source::{Backend, Feed, Scope, Source};

/// Events waiting for the reader of [`Watcher::events`]. A reader that stops reading (a
/// stalled stdout) must not make the watcher grow without bound while sockets churn: past
/// this, events are dropped and counted ([`Watcher::dropped_events`]).
pub const EVENT_QUEUE: usize = 8192;

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
    events: Option<Events>,
    stop: StopHandle,
    monitor: Monitor,
}

/// The receiving end of a watcher's events, and a pipe readable when some may be waiting.
struct Events {
    rx: Receiver<Event>,
    ready: OwnedFd,
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
        // Once: after the scan thread has gone, its end of the pipe is closed (a write would
        // be EPIPE, and SIGPIPE where the host program has not ignored it).
        if !self.inner.stopped.swap(true, Ordering::SeqCst) {
            let _ = nix::unistd::write(&self.inner.wake, &[1]);
        }
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

/// Reads a [`Watcher`]'s open set and counters from any thread ([`Watcher::monitor`]); for a
/// metrics endpoint or a health check beside the loop that reads events. Reading never waits
/// for a scan: the counters are atomics, and the open set is kept up to date change by change
/// (its lock is held only to apply or copy it). It stays readable after the watcher stopped.
#[derive(Clone)]
pub struct Monitor {
    current: Published,
    counters: Arc<Counters>,
    dropped: Arc<AtomicU64>,
    failing: Arc<Mutex<Option<String>>>,
}

impl Monitor {
    /// The sockets open now, as of the last scan or kernel event, in no particular order.
    pub fn current(&self) -> Vec<Socket> {
        // Copied after the lock is released: the scan thread waits only for the references.
        self.current_shared().iter().map(|s| Socket::clone(s)).collect()
    }

    /// Like [`current`](Self::current), without copying the sockets: the watcher's own,
    /// shared. Cheap at any size (a reference count each), for a reader that only looks, such
    /// as a metrics scrape.
    pub fn current_shared(&self) -> Vec<Arc<Socket>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// What the watcher did so far: scans by reason and how long they took, events by kind
    /// and protocol, events dropped and lost, owners not found.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot(self.dropped_events())
    }

    /// See [`Watcher::dropped_events`].
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// See [`Watcher::scan_error`].
    pub fn scan_error(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("stats", &self.stats()).finish()
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").field("stopped", &self.is_stopped()).finish()
    }
}

/// Configures a [`Watcher`]; `build` validates every setting and starts it.
#[derive(Debug, Clone, Default)]
pub struct WatcherBuilder {
    config: Config,
}

impl WatcherBuilder {
    /// Time between the starts of two scan cycles (default 200 ms: a listener that lives
    /// 250 ms is always seen).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// Scans per cycle (default 1). A socket seen by any of them is reported.
    pub fn burst_scans(mut self, scans: u32) -> Self {
        self.config.burst_scans = scans;
        self
    }

    /// Time between the scans of one cycle (default 50 ms).
    pub fn burst_delay(mut self, delay: Duration) -> Self {
        self.config.burst_delay = delay;
        self
    }

    /// How long an endpoint must stay closed before its close is reported (default 0: at
    /// once). A listener that closes and reopens within it is a restart: no close, no open.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.config.close_grace = grace;
        self
    }

    /// Which sockets to watch (default: TCP and UDP listeners).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.config.filter = filter;
        self
    }

    /// Watch this network namespace instead of the calling thread's.
    pub fn netns(mut self, netns: Netns) -> Self {
        self.config.scope = Scope::One(netns);
        self.config.follow = None;
        self
    }

    /// Watch every network namespace on the host as one stream: those of all processes and
    /// the named ones under `/run/netns`. A namespace whose first process appears is watched
    /// within a second; when its last process exits its sockets are reported closed. Events
    /// carry each socket's namespace and container. Needs `CAP_SYS_ADMIN` and
    /// `CAP_SYS_PTRACE`; uses three to four file descriptors per namespace.
    pub fn all_netns(mut self) -> Self {
        self.config.scope = Scope::All;
        self.config.follow = None;
        self
    }

    /// Ask the Docker daemon listening on `socket` for container names: of the namespaces
    /// [`all_netns`](Self::all_netns) finds, and of the containers owners' cgroups name
    /// (without it, a container is named by its short id). Feature `docker`.
    #[cfg(feature = "docker")]
    pub fn docker_names(mut self, socket: impl AsRef<Path>) -> Self {
        self.config.docker = Some(socket.as_ref().to_owned());
        self
    }

    /// Watch a Docker container, by name or id, through the daemon listening on `socket`,
    /// and follow it: when it stops, its ports are reported closed; when it runs again (a
    /// restart gives it a new network namespace), the new namespace is watched within about
    /// two seconds and its ports are reported open. A container that does not exist or run
    /// yet is waited for (with a warning); `build` fails if the daemon cannot be reached.
    /// Needs `CAP_SYS_ADMIN`. Feature `docker`.
    #[cfg(feature = "docker")]
    pub fn container(mut self, socket: impl AsRef<Path>, name_or_id: impl Into<String>) -> Self {
        self.config.docker = Some(socket.as_ref().to_owned());
        self.config.follow = Some(name_or_id.into());
        self.config.scope = Scope::Current;
        self
    }

    /// Keep the set of open sockets in this file across restarts of the watcher.
    pub fn snapshot(mut self, path: impl AsRef<Path>) -> Self {
        self.config.snapshot = Some(path.as_ref().to_owned());
        self
    }

    /// Whether sockets already open at start are reported, as [`Event::Opened`] with
    /// `initial: true` (default true).
    pub fn report_initial(mut self, report: bool) -> Self {
        self.config.report_initial = report;
        self
    }

    /// Where sockets are read from (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// Whether to use sock_diag destroy events for instant closes (default true; falls back
    /// to scanning, with one warning, where they cannot be had).
    pub fn destroy_events(mut self, enabled: bool) -> Self {
        self.config.destroy_events = enabled;
        self
    }

    /// The destroy feed's socket receive buffer in bytes (default: the system's,
    /// `net.core.rmem_default`). A burst of closes larger than it overruns the feed; the
    /// watcher then rescans at once, so no close is lost, only reported a scan later.
    pub fn destroy_buffer(mut self, bytes: usize) -> Self {
        self.config.destroy_buffer = Some(bytes);
        self
    }

    /// Where sockets are learnt of (default [`Source::Auto`] with feature `ebpf`, else
    /// [`Source::Scan`]). With kernel events every listener is seen, however short-lived, with
    /// the process that made it; a dump still runs at the start and every
    /// [`reconcile_interval`](Self::reconcile_interval), and after any lost event. The
    /// interval and burst settings then apply to those dumps only when scanning.
    pub fn source(mut self, source: Source) -> Self {
        self.config.source = source;
        self
    }

    /// With kernel events, how often a dump reconciles the open set anyway (default 30 s).
    pub fn reconcile_interval(mut self, interval: Duration) -> Self {
        self.config.reconcile = interval;
        self
    }

    /// The kernel events' ring buffer in bytes: a power of two, at least 4096 (default
    /// 1 MiB, about 13 000 events). Events that find it full are counted and a dump follows.
    /// With [`connections`](Self::connections), the connection events' own ring buffer gets
    /// the same size (about 10 000 records); those lost are counted and said, not made up.
    pub fn ring_buffer(mut self, bytes: u32) -> Self {
        self.config.ring_bytes = Some(bytes);
        self
    }

    /// Which TCP connections to report besides listeners (default [`Connections::None`]):
    /// [`Event::Connect`] for outbound, [`Event::Accept`] for inbound, and
    /// [`Event::Disconnect`] when one of them closes. In the namespaces watched.
    ///
    /// With kernel events (feature `ebpf`) every connection is seen, however short: a connect
    /// with the process that called it, an accept with the listener's owners. The connection
    /// programs are loaded only when this asks for them (a listener-only watcher, and the
    /// host's socket calls, pay nothing for them), and they drop unwanted connections
    /// (direction, [`remote`](Self::remote), [`ignore_remote`](Self::ignore_remote), this
    /// process's own) in the kernel. When scanning, established sockets are dumped every
    /// interval and closes come from the destroy feed: a connection shorter than the interval
    /// can be missed and owners come from `/proc` (a warning says so once). Connections open
    /// when watching begins are not reported, nor their closes.
    pub fn connections(mut self, which: Connections) -> Self {
        self.config.conns.which = which;
        self
    }

    /// Report only connections whose remote address is in `prefix` (repeat for more: any of
    /// them). At most 1024.
    pub fn remote(mut self, prefix: Cidr) -> Self {
        self.config.conns.only.push(prefix);
        self
    }

    /// Do not report connections whose remote address is in `prefix` (repeatable; wins over
    /// [`remote`](Self::remote)). At most 1024.
    pub fn ignore_remote(mut self, prefix: Cidr) -> Self {
        self.config.conns.ignore.push(prefix);
        self
    }

    /// After a connection is reported, leave out further ones in the same direction with the
    /// same remote address for `cooldown` (default zero: report every one), and their
    /// disconnects — a notifier's per-source rate limit. At most a day.
    pub fn connection_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.conns.cooldown = cooldown;
        self
    }

    /// Whether this process's own connections are reported, and those of the processes it
    /// starts and their children (default false: a watcher that runs a notifier per event
    /// must not report the notifier's connections, nor loop on them).
    pub fn own_connections(mut self, report: bool) -> Self {
        self.config.conns.own = report;
        self
    }

    /// Whether an idle watcher may skip its dumps while the kernel's socket counters
    /// (`/proc/net/sockstat`) are unchanged and no destroy event came (default true; a full
    /// scan still runs every 2 s). It saves nearly all of an idle watcher's CPU, but a local
    /// user can fool it — a listen in one process paired with a `shutdown` of a listener in
    /// another leaves the counters as they were — and hide a listener for up to those 2 s.
    /// [`high_fidelity`](Self::high_fidelity) turns it off.
    pub fn change_probe(mut self, enabled: bool) -> Self {
        self.config.change_probe = enabled;
        self
    }

    /// How owners are found (default [`OwnerLookup::Auto`]). With the BPF iterator, the
    /// lookups that would read every process — the first scan's, and a reconciling dump's
    /// when new processes do not explain its sockets — are one pass of it; the smaller
    /// lookups stay incremental walks of `/proc`. [`build`](Self::build) fails when
    /// [`OwnerLookup::Bpf`] cannot load; `Auto` then walks, saying why at info level (a
    /// warning only when this build's object is at fault).
    pub fn owner_lookup(mut self, how: OwnerLookup) -> Self {
        self.config.owner_lookup = how;
        self
    }

    /// Whether owners' command lines are read (default true).
    pub fn cmdlines(mut self, cmdlines: bool) -> Self {
        self.config.cmdlines = cmdlines;
        self
    }

    /// The high-fidelity preset: a scan every 8 ms, so a listener living 10 ms is seen with
    /// its owner, and a 200 ms close grace against restarts. Every scan dumps: the change
    /// probe, which a local user can fool, is off.
    pub fn high_fidelity(self) -> Self {
        self.change_probe(false)
            .interval(Duration::from_millis(8))
            .burst_scans(1)
            .burst_delay(Duration::from_millis(8))
            .close_grace(Duration::from_millis(200))
    }

    /// Validates the settings, opens the sockets it needs and starts the scan thread; events
    /// are read with [`Watcher::events`].
    pub fn build(self) -> Result<Watcher> {
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (ready_rx, ready_tx) = nix::unistd::pipe2(flags)
            .map_err(|e| Error::Os { op: "create the event pipe", source: e.into() })?;
        self.start(Sink::Channel(tx, ready_tx), Some(Events { rx, ready: ready_rx }))
    }

    /// Like [`build`](Self::build), but calls `f` with each event on the scan thread instead
    /// (a slow callback delays scanning).
    pub fn build_with_callback(self, f: impl FnMut(Event) + Send + 'static) -> Result<Watcher> {
        self.start(Sink::Callback(Box::new(f)), None)
    }

    fn start(self, sink: Sink, events: Option<Events>) -> Result<Watcher> {
        let mut cfg = self.config.validated()?;
        let proc_root = PathBuf::from("/proc");
        cfg.filter = cfg.filter.resolved(&proc_root, Path::new("/etc/passwd"))?;
        let follow = follow::resolve(&mut cfg)?;
        let restored = match &cfg.snapshot {
            Some(path) => restore::restore(path, &cfg.scope, &cfg.filter)?,
            None => Default::default(),
        };
        let kernel = kernel_events(&cfg)?;
        let iter = load_iterator(cfg.owner_lookup)?;
        let conns = connections::start(&cfg)?;
        let waiting = follow::waiting(follow.as_ref());
        let initial = namespaces::initial(&cfg, &proc_root, restored, waiting)?;
        // Close-on-exec: a hook the caller runs must not inherit it.
        let (wake_rx, wake_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Os { op: "create the watcher's wake pipe", source: e.into() })?;
        let stop = StopHandle {
            inner: Arc::new(StopInner { stopped: AtomicBool::new(false), wake: wake_tx }),
        };
        let current: Published = Arc::new(Mutex::new(Default::default()));
        let dropped = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(Mutex::new(None));
        let counters = Arc::new(Counters::default());
        let snapshot = match &cfg.snapshot {
            Some(path) => Some(
                snapshot::Writer::spawn(path.clone())
                    .map_err(|e| Error::Os { op: "start the snapshot thread", source: e })?,
            ),
            None => None,
        };
        let detail = Detail { cmdline: cfg.cmdlines, cgroup: true };
        let index =
            || OwnerIndex::new(&proc_root, Path::new("/etc/passwd"), detail, worker_threads());
        let (owners, checker) = (index().with_iterator(iter), index());
        let parts = Parts {
            kernel,
            conns,
            initial,
            follow,
            owners,
            checker,
            sink,
            wake: wake_rx,
            stop: stop.clone(),
            published: Arc::clone(&current),
            dropped: Arc::clone(&dropped),
            counters: Arc::clone(&counters),
            failing: Arc::clone(&failing),
            snapshot,
            proc_root,
        };
        let scan = Loop::new(cfg, parts);
        let thread = std::thread::Builder::new()
            .name("portwatch-scan".into())
            .spawn(move || scan.run())
            .map_err(|e| Error::Os { op: "start the scan thread", source: e })?;
        let monitor = Monitor { current, counters, dropped, failing };
        Ok(Watcher { thread: Some(thread), events, stop, monitor })
    }
}

/// The kernel event source, when the settings ask for it and it loads: with [`Source::Auto`],
/// scanning instead says once why; with [`Source::Ebpf`], that is an error.
#[cfg(feature = "ebpf")]
fn kernel_events(cfg: &Config) -> Result<Option<Box<dyn Feed + Send>>> {
    if cfg.source == Source::Scan {
        return Ok(None);
    }
    if let Some(why) = cfg.kernel_unsuitable() {
        // Auto only (validation refused Ebpf): scanning is what this selection needs.
        log::info!("scanning: {why}");
        return Ok(None);
    }
    match crate::source::KernelFeed::load(cfg.ring_bytes) {
        Ok(feed) => Ok(Some(Box::new(feed))),
        Err(e) if cfg.source == Source::Ebpf => {
            Err(Error::EbpfUnavailable { reason: e.to_string() })
        }
        Err(e) => {
            log::warn!("scanning instead of kernel events: {e}");
            Ok(None)
        }
    }
}

#[cfg(not(feature = "ebpf"))]
fn kernel_events(_cfg: &Config) -> Result<Option<Box<dyn Feed + Send>>> {
    Ok(None)
}

impl Watcher {
    /// A builder with the defaults: every 200 ms, one scan a cycle, no close grace, TCP and UDP
    /// listeners, destroy events on.
    pub fn builder() -> WatcherBuilder {
        WatcherBuilder::default()
    }

    /// Blocks for each event until the watcher stops. Empty for a callback watcher.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.iter().flat_map(|e| e.rx.iter())
    }

    /// The next event, waiting at most `timeout`; `None` on timeout or once stopped.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.as_ref()?.rx.recv_timeout(timeout).ok()
    }

    /// The next event if one is waiting, without blocking. When none is, the
    /// [`event_fd`](Self::event_fd) is drained (it becomes readable again with the next).
    pub fn try_recv(&self) -> Option<Event> {
        let events = self.events.as_ref()?;
        match events.rx.try_recv() {
            Ok(e) => Some(e),
            Err(_) => {
                let mut buf = [0u8; 64];
                while matches!(nix::unistd::read(&events.ready, &mut buf), Ok(n) if n > 0) {}
                None
            }
        }
    }

    /// A descriptor that polls readable (`poll`, `epoll`, an async runtime's reactor) when
    /// events may be waiting: then call [`try_recv`](Self::try_recv) until it returns `None`.
    /// A wakeup may find nothing (the events were taken meanwhile). `None` for a callback
    /// watcher.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().map(|e| e.ready.as_fd())
    }

    /// Events dropped because the reader of [`events`](Self::events) fell more than
    /// [`EVENT_QUEUE`] behind. [`current`](Self::current) stays exact meanwhile.
    pub fn dropped_events(&self) -> u64 {
        self.monitor.dropped_events()
    }

    /// Why the watcher's dumps fail, while they keep failing (they are retried every cycle,
    /// and the first failure is logged as a warning); `None` once they succeed. Kernel events
    /// and the destroy feed go on meanwhile.
    pub fn scan_error(&self) -> Option<String> {
        self.monitor.scan_error()
    }

    /// A handle that reads the open set and the counters from any thread (the watcher itself
    /// is read by one thread: the one taking its events).
    pub fn monitor(&self) -> Monitor {
        self.monitor.clone()
    }

    /// What the watcher did so far: see [`Monitor::stats`].
    pub fn stats(&self) -> Stats {
        self.monitor.stats()
    }

    /// A handle that stops the watcher from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The sockets open now, as of the last scan or kernel event, in no particular order.
    pub fn current(&self) -> Vec<Socket> {
        self.monitor.current()
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
