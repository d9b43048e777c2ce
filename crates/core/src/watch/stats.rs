//! What the scan thread did, counted for monitoring ([`Monitor::stats`](super::Monitor::stats)):
//! plain numbers, written by the scan thread with relaxed atomics and read from any thread
//! without a lock, so a reader never delays a scan. No metrics format lives here: the
//! `portwatch` CLI turns these into Prometheus metrics.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::event::{Event, EventKind};
use crate::process::Owners;
use crate::socket::Protocol;
use crate::source::Source;

/// Why a scan (a dump of the watched namespaces) ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScanReason {
    /// The first scan, when watching begins.
    Start,
    /// A scan cycle (the scan source: every interval).
    Interval,
    /// With kernel events, the periodic dump that reconciles the open set.
    Reconcile,
    /// A feed lost messages (the kernel's ring buffer or a destroy feed's receive buffer
    /// overran), or saw something only a dump can describe.
    Resync,
    /// A namespace that started being watched since the last dump (kernel events).
    Namespace,
}

impl ScanReason {
    /// Every reason, in a fixed order.
    pub const ALL: [ScanReason; 5] = [
        ScanReason::Start,
        ScanReason::Interval,
        ScanReason::Reconcile,
        ScanReason::Resync,
        ScanReason::Namespace,
    ];

    /// `"start"`, `"interval"`, `"reconcile"`, `"resync"` or `"namespace"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScanReason::Start => "start",
            ScanReason::Interval => "interval",
            ScanReason::Reconcile => "reconcile",
            ScanReason::Resync => "resync",
            ScanReason::Namespace => "namespace",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The upper bounds of [`ScanTimes`]' buckets, from 100 µs (a dump of a few listeners) to
/// 5 s (an owner walk on a crowded host); longer scans are counted in `count` only.
pub const SCAN_TIME_BOUNDS: [Duration; 15] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
    Duration::from_secs(5),
];

/// How long scans took, as a histogram with fixed buckets ([`SCAN_TIME_BOUNDS`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScanTimes {
    /// For each bound of [`SCAN_TIME_BOUNDS`], the scans that took longer than the bound
    /// before it and at most this one (not cumulative).
    pub buckets: Vec<(Duration, u64)>,
    /// Every scan timed, those past the last bound included.
    pub count: u64,
    /// Their total time.
    pub sum: Duration,
}

/// A snapshot of a watcher's counters ([`Monitor::stats`](super::Monitor::stats)). Counters
/// only grow while the watcher runs. Each is read on its own, without stopping the scan
/// thread: a snapshot taken during a scan may count it in one field and not yet in another.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// What reports sockets now: [`Source::Ebpf`] (kernel events, dumps reconcile) or
    /// [`Source::Scan`] (dumps every interval). It changes from the first to the second when
    /// kernel events fail while running.
    pub source: Source,
    /// Network namespaces watched now.
    pub namespaces: usize,
    /// Scans that dumped at least one namespace, by reason.
    pub scans: Vec<(ScanReason, u64)>,
    /// Scans skipped because the change probe saw nothing that could have changed.
    pub scans_skipped: u64,
    /// How long the scans counted in `scans` took: dumps, owner lookup of the new sockets
    /// and tracking.
    pub scan_times: ScanTimes,
    /// Events reported, by kind and protocol; dropped ones included (see `dropped_events`).
    pub events: Vec<(EventKind, Protocol, u64)>,
    /// Events dropped because the reader fell [`EVENT_QUEUE`](crate::EVENT_QUEUE) behind.
    pub dropped_events: u64,
    /// Kernel events the eBPF programs could not queue (ring buffer full); each loss is
    /// followed by a dump, so the open set still converges.
    pub kernel_events_lost: u64,
    /// Events reporting an open socket (opened, or owners changed) whose owner is unknown, by
    /// [`UnknownReason::code`](crate::UnknownReason::code).
    pub owner_unknown: Vec<(&'static str, u64)>,
}

const KINDS: [EventKind; 3] = [EventKind::Opened, EventKind::Closed, EventKind::OwnersChanged];
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Unix];
const UNKNOWN: [&str; 5] = ["not_resolved", "permission_denied", "not_found", "skipped", "hidden"];

/// The live counters, shared by the scan thread (the only writer) and monitors.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// 0: scan, 1: ebpf.
    source: AtomicU8,
    namespaces: AtomicUsize,
    scans: [AtomicU64; ScanReason::ALL.len()],
    scans_skipped: AtomicU64,
    scan_buckets: [AtomicU64; SCAN_TIME_BOUNDS.len()],
    scan_count: AtomicU64,
    scan_nanos: AtomicU64,
    events: [[AtomicU64; PROTOCOLS.len()]; KINDS.len()],
    kernel_lost: AtomicU64,
    owner_unknown: [AtomicU64; UNKNOWN.len()],
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(super) fn set_source(&self, source: Source) {
        self.source.store(u8::from(source == Source::Ebpf), Ordering::Relaxed);
    }

    pub(super) fn set_namespaces(&self, n: usize) {
        self.namespaces.store(n, Ordering::Relaxed);
    }

    /// A scan that dumped something, and how long it took.
    pub(super) fn scanned(&self, reason: ScanReason, took: Duration) {
        add(&self.scans[reason.index()], 1);
        if let Some(i) = SCAN_TIME_BOUNDS.iter().position(|b| took <= *b) {
            add(&self.scan_buckets[i], 1);
        }
        add(&self.scan_count, 1);
        add(&self.scan_nanos, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    pub(super) fn skipped(&self) {
        add(&self.scans_skipped, 1);
    }

    /// The kernel's running count of lost events.
    pub(super) fn set_kernel_lost(&self, lost: u64) {
        self.kernel_lost.store(lost, Ordering::Relaxed);
    }

    /// An event about to be delivered (or dropped).
    pub(super) fn event(&self, e: &Event) {
        let kind = KINDS.iter().position(|k| *k == e.kind());
        let proto = PROTOCOLS.iter().position(|p| *p == e.socket().protocol);
        if let (Some(k), Some(p)) = (kind, proto) {
            add(&self.events[k][p], 1);
        }
        if let (Owners::Unknown(r), false) = (&e.socket().owners, e.kind() == EventKind::Closed)
            && let Some(i) = UNKNOWN.iter().position(|c| *c == r.code())
        {
            add(&self.owner_unknown[i], 1);
        }
    }

    pub(super) fn snapshot(&self, dropped_events: u64) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut events = Vec::new();
        for (k, kind) in KINDS.iter().enumerate() {
            for (p, proto) in PROTOCOLS.iter().enumerate() {
                events.push((*kind, *proto, get(&self.events[k][p])));
            }
        }
        Stats {
            source: if self.source.load(Ordering::Relaxed) == 1 {
                Source::Ebpf
            } else {
                Source::Scan
            },
            namespaces: self.namespaces.load(Ordering::Relaxed),
            scans: ScanReason::ALL.iter().map(|r| (*r, get(&self.scans[r.index()]))).collect(),
            scans_skipped: get(&self.scans_skipped),
            scan_times: ScanTimes {
                buckets: SCAN_TIME_BOUNDS
                    .iter()
                    .zip(&self.scan_buckets)
                    .map(|(b, c)| (*b, get(c)))
                    .collect(),
                count: get(&self.scan_count),
                sum: Duration::from_nanos(get(&self.scan_nanos)),
            },
            events,
            dropped_events,
            kernel_events_lost: get(&self.kernel_lost),
            owner_unknown: UNKNOWN
                .iter()
                .zip(&self.owner_unknown)
                .map(|(c, n)| (*c, get(n)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::UnknownReason;
    use crate::socket::fixtures::listener;

    #[test]
    fn counts_scans_into_buckets_and_events_by_kind_and_protocol() {
        let c = Counters::default();
        c.scanned(ScanReason::Start, Duration::from_micros(80));
        c.scanned(ScanReason::Interval, Duration::from_millis(3));
        c.scanned(ScanReason::Interval, Duration::from_secs(9));
        c.skipped();
        let open = Event::Opened {
            socket: listener(80, 1, &[]),
            at: std::time::SystemTime::now(),
            initial: false,
            source: Source::Scan,
        };
        c.event(&open);
        let s = c.snapshot(7);
        assert_eq!(s.scans[0], (ScanReason::Start, 1));
        assert_eq!(s.scans[1], (ScanReason::Interval, 2));
        assert_eq!(s.scans_skipped, 1);
        assert_eq!(s.scan_times.count, 3);
        assert_eq!(s.scan_times.buckets[0], (Duration::from_micros(100), 1));
        // 3 ms falls in the (2.5 ms, 5 ms] bucket; 9 s in none.
        assert_eq!(s.scan_times.buckets[5], (Duration::from_millis(5), 1));
        assert_eq!(s.scan_times.buckets.iter().map(|b| b.1).sum::<u64>(), 2);
        assert_eq!(s.events[0], (EventKind::Opened, Protocol::Tcp, 1));
        assert_eq!(s.dropped_events, 7);
        // The fixture with no pids has an unknown owner.
        let Owners::Unknown(r) = open.socket().owners else { panic!("fixture has owners") };
        let counted: Vec<_> = s.owner_unknown.iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counted, [&(r.code(), 1)]);
    }

    #[test]
    fn every_unknown_reason_has_a_counter() {
        let reasons = [
            UnknownReason::NotResolved,
            UnknownReason::PermissionDenied { unreadable: 1 },
            UnknownReason::NotFound,
            UnknownReason::Skipped { crowded: 1, unread: 0 },
            UnknownReason::Hidden,
        ];
        for r in reasons {
            assert!(UNKNOWN.contains(&r.code()), "{r:?}");
        }
    }
}
