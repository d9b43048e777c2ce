//! What a watcher is asked to do: the settings a [`WatcherBuilder`](super::WatcherBuilder)
//! collects, checked once by `validated`. The scheduler only ever sees a validated `Config`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::source::{Backend, Scope};

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
    pub(super) scope: Scope,
    /// The Docker daemon's socket: for container names, and for `follow`.
    pub(super) docker: Option<PathBuf>,
    /// The container to follow across restarts (with `docker`).
    pub(super) follow: Option<String>,
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
            scope: Scope::Current,
            docker: None,
            follow: None,
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
        Ok(self)
    }
}
