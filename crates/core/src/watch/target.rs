//! One watched network namespace: the sources that read it and the tracker of what is open
//! in it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Config;
use crate::error::Result;
use crate::filter::Filter;
use crate::netns::Netns;
use crate::process::ContainerRef;
use crate::socket::Socket;
use crate::source::{Backend, ChangeProbe, DestroyFeed, Dump, Scanner};
use crate::tracker::{Key, Tracker};

/// With the change probe, a full scan still runs at least this often: the probe cannot see
/// a socket changing state without being added or freed.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(2);

/// One watched namespace: its kernel sockets and what was seen in it.
pub(super) struct Target {
    pub(super) inode: u64,
    /// `None` for a namespace known only from kernel events (it could not be opened: it may
    /// be gone already); namespace discovery opens it if it finds it.
    scanner: Option<Scanner>,
    /// The container it belongs to, stamped on sockets kernel events report here.
    pub(super) container: Option<Arc<ContainerRef>>,
    /// Its name under /run/netns, stamped likewise.
    pub(super) netns_name: Option<Arc<str>>,
    pub(super) feed: Option<DestroyFeed>,
    /// Skips dumps while no inet socket appeared or went away (see `probe`); `None` where it
    /// cannot be trusted: no destroy feed, unix sockets or non-listening states watched.
    probe: Option<ChangeProbe>,
    pub(super) tracker: Tracker,
    /// Sockets present but excluded by the owner filter, so their owners are not looked up
    /// again on every scan.
    pub(super) ignored: HashSet<Key>,
    /// A destroy message (any cookie) arrived since the last full scan.
    pub(super) destroyed_since_scan: bool,
    /// When the last full scan ran.
    last_full_scan: Option<Instant>,
    /// The last scan error, so a persistent one is logged once (and shown to the caller).
    pub(super) last_error: Option<String>,
}

/// What one namespace's dump found.
#[derive(Default)]
pub(super) struct Dumped {
    /// Sockets already known, with their known owners.
    pub(super) present: Vec<Socket>,
    /// Sockets not known before: their owners are to be looked up.
    pub(super) new: Vec<Socket>,
    /// Sockets the owner filter excluded before, still there.
    pub(super) ignored: HashSet<Key>,
}

impl Target {
    /// Opens the sockets that read `ns`: each is created inside it and stays bound to it.
    pub(super) fn open(ns: &Netns, cfg: &Config) -> Result<Target> {
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
        let probe = if cfg.change_probe && feed.is_some() && cfg.filter.listeners_only() {
            ns.enter(|| ChangeProbe::open(Path::new("/proc/thread-self/net")))?
        } else {
            None
        };
        Ok(Target {
            inode: ns.inode(),
            scanner: Some(scanner),
            container: ns.container_label(),
            netns_name: ns.name_label(),
            feed,
            probe,
            tracker: Tracker::new(cfg.close_grace, cfg.report_initial),
            ignored: HashSet::new(),
            destroyed_since_scan: false,
            last_full_scan: None,
            last_error: None,
        })
    }

    /// A namespace known only from kernel events: a tracker, and nothing to dump with yet.
    pub(super) fn detached(inode: u64, cfg: &Config) -> Target {
        let mut tracker = Tracker::new(cfg.close_grace, cfg.report_initial);
        tracker.started();
        Target {
            inode,
            scanner: None,
            container: None,
            netns_name: None,
            feed: None,
            probe: None,
            tracker,
            ignored: HashSet::new(),
            destroyed_since_scan: false,
            last_full_scan: None,
            last_error: None,
        }
    }

    /// Whether it was opened (else it is known from kernel events only).
    pub(super) fn is_attached(&self) -> bool {
        self.scanner.is_some()
    }

    /// Takes the sources of `opened`, the same namespace opened now, keeping what was seen.
    pub(super) fn attach(&mut self, opened: Target) {
        self.scanner = opened.scanner;
        self.container = opened.container;
        self.netns_name = opened.netns_name;
        self.feed = opened.feed;
        self.probe = opened.probe;
    }

    /// Whether it has never been dumped (opened since the last dump).
    pub(super) fn never_dumped(&self) -> bool {
        self.scanner.is_some() && self.last_full_scan.is_none()
    }

    /// The destroy feed failed: without it the change probe cannot be trusted either (it
    /// relies on the feed to see sockets go).
    pub(super) fn drop_feed(&mut self) {
        self.feed = None;
        self.probe = None;
    }

    /// The next dump must run, whatever the change probe says.
    pub(super) fn force_dump(&mut self) {
        self.destroyed_since_scan = true;
    }

    /// Whether this scan can be skipped: the change probe saw no inet socket appear, none
    /// was destroyed, and the last full scan is recent.
    pub(super) fn quiet(&mut self) -> bool {
        let quiet = self.probe.as_mut().is_some_and(|p| !p.changed());
        quiet
            && !self.destroyed_since_scan
            && self.last_full_scan.is_some_and(|t| t.elapsed() < FULL_SCAN_EVERY)
    }

    /// Dumps what `dumps` asks for, whatever the filter says (the connection scan); `None`
    /// when the namespace has no scanner or the dump failed (a failing dump is already
    /// reported by the listener scan).
    pub(super) fn dump_raw(&mut self, dumps: &[Dump]) -> Option<Vec<Socket>> {
        self.scanner.as_mut()?.scan(dumps).ok()
    }

    /// Dumps the namespace: the sockets the filter keeps, split into those already known
    /// (owners carried over) and new ones. `None` when the dump failed (logged once).
    pub(super) fn dump(&mut self, dumps: &[Dump], filter: &Filter) -> Option<Dumped> {
        let scanner = self.scanner.as_mut()?;
        self.destroyed_since_scan = false;
        self.last_full_scan = Some(Instant::now());
        let sockets = match scanner.scan(dumps) {
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
