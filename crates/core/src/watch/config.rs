//! What a watcher is asked to do: the settings a [`WatcherBuilder`](super::WatcherBuilder)
//! collects, checked once by `validated`. The scheduler only ever sees a validated `Config`.

use std::path::PathBuf;
use std::time::Duration;

use crate::connection::{Cidr, Connections};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::owners::OwnerLookup;
use crate::source::{Backend, Scope, Source};

/// Shortest interval accepted: below it a cycle's own work (a dump, an owner lookup) takes
/// longer than the interval, so the watcher would only spin a core.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Longest interval accepted: a day.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest close grace accepted: an hour.
const MAX_GRACE: Duration = Duration::from_secs(3600);
/// Most burst scans per cycle.
const MAX_BURST: u32 = 1000;

/// The watcher's settings.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) interval: Duration,
    pub(super) burst_scans: u32,
    pub(super) burst_delay: Duration,
    pub(super) close_grace: Duration,
    pub(super) filter: Filter,
    pub(super) snapshot: Option<PathBuf>,
    pub(super) report_initial: bool,
    pub(super) backend: Backend,
    pub(super) destroy_events: bool,
    pub(super) destroy_buffer: Option<usize>,
    pub(super) change_probe: bool,
    pub(super) cmdlines: bool,
    /// How owners are found (the BPF iterator serves the lookups that read every process).
    pub(super) owner_lookup: OwnerLookup,
    pub(super) scope: Scope,
    /// Where sockets are learnt of.
    pub(super) source: Source,
    /// With kernel events: how often a dump reconciles the state anyway.
    pub(super) reconcile: Duration,
    /// The kernel events' ring buffer, in bytes (default 1 MiB).
    pub(super) ring_bytes: Option<u32>,
    /// The Docker daemon's socket: for container names, and for `follow`.
    pub(super) docker: Option<PathBuf>,
    /// The container to follow across restarts (with `docker`).
    pub(super) follow: Option<String>,
    /// Connection events: which, and how they are selected.
    pub(super) conns: ConnSettings,
}

/// Most remote prefixes per list: what the kernel-side tries hold.
const MAX_PREFIXES: usize = 1024;
/// Longest cooldown accepted: a day.
const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

/// Which connections are reported.
#[derive(Debug, Clone, Default)]
pub(super) struct ConnSettings {
    pub(super) which: Connections,
    /// Only connections whose remote address is in one of these (empty: any).
    pub(super) only: Vec<Cidr>,
    /// No connection whose remote address is in one of these.
    pub(super) ignore: Vec<Cidr>,
    /// After a connection is reported, others with the same remote address and direction
    /// are not, for this long (zero: every one is).
    pub(super) cooldown: Duration,
    /// Whether this process's own connections (and its children's) are reported.
    pub(super) own: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: Duration::from_millis(200),
            burst_scans: 1,
            burst_delay: Duration::from_millis(50),
            close_grace: Duration::ZERO,
            filter: Filter::new(),
            snapshot: None,
            report_initial: true,
            backend: Backend::Auto,
            destroy_events: true,
            destroy_buffer: None,
            change_probe: true,
            cmdlines: true,
            owner_lookup: OwnerLookup::Auto,
            scope: Scope::Current,
            // The feature is the opt-in: a build with `ebpf` uses kernel events where it can.
            source: if cfg!(feature = "ebpf") { Source::Auto } else { Source::Scan },
            reconcile: Duration::from_secs(30),
            ring_bytes: None,
            docker: None,
            follow: None,
            conns: ConnSettings::default(),
        }
    }
}

impl Config {
    /// This config, if every setting is in range; else the first that is not, named as the
    /// builder method names it.
    pub(super) fn validated(self) -> Result<Config> {
        let bad =
            |setting: &'static str, reason: String| Err(Error::InvalidSetting { setting, reason });
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            return bad(
                "interval",
                format!("{:?} is not between {MIN_INTERVAL:?} (the floor) and 24 h", self.interval),
            );
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
        let burst = self.burst_delay.checked_mul(self.burst_scans.saturating_sub(1));
        if self.burst_scans > 1 && burst.is_none_or(|b| b >= self.interval) {
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
        if self.reconcile.is_zero() || self.reconcile > MAX_INTERVAL {
            return bad("reconcile", format!("{:?} is not between 1 ns and 24 h", self.reconcile));
        }
        let c = &self.conns;
        if c.only.len() > MAX_PREFIXES || c.ignore.len() > MAX_PREFIXES {
            return bad("remote", format!("more than {MAX_PREFIXES} remote prefixes"));
        }
        if c.cooldown > MAX_COOLDOWN {
            return bad("connection_cooldown", format!("{:?} is longer than a day", c.cooldown));
        }
        if c.which.any() && !self.filter.has_tcp() {
            return bad("connections", "connections are TCP: the filter selects no TCP".into());
        }
        if c.which.any() && self.backend == Backend::Proc {
            return bad(
                "connections",
                "/proc/net has no socket cookies to follow connections by: use sock_diag".into(),
            );
        }
        if self.source == Source::Ebpf {
            if !cfg!(feature = "ebpf") {
                return bad("source", "this build has no eBPF support (feature `ebpf`)".into());
            }
            if let Some(why) = self.kernel_unsuitable() {
                return bad("source", format!("ebpf cannot watch this selection: {why}"));
            }
        }
        Ok(self)
    }

    /// Why kernel events cannot stand in for scanning this selection, if they cannot.
    pub(super) fn kernel_unsuitable(&self) -> Option<&'static str> {
        if self.backend == Backend::Proc {
            Some("--backend proc reads /proc/net, not the kernel's events")
        } else if !self.filter.listeners_only() {
            Some("kernel events cover TCP and UDP listeners, not unix sockets or other states")
        } else {
            None
        }
    }
}
