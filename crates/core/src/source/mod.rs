//! Where socket facts come from, and the one shape they arrive in.
//!
//! Sources: sock_diag dumps (or the /proc/net fallback) of one namespace — complete views,
//! read on a schedule — and feeds that report as things happen: the sock_diag destroy groups
//! (a socket's cookie when it is freed). The sockstat change probe says whether a dump could
//! have anything new. Every source speaks in [`Observation`]s, so the tracker that turns them
//! into events and the scheduler that runs the sources never know which kind fed them. A new
//! source implements [`Feed`] (or produces a [`Observation::Census`]) and plugs in beside the
//! others. Nothing here knows about owners beyond carrying them, or about events.

mod conn;
mod destroy;
mod diag;
#[cfg(feature = "ebpf")]
pub(crate) mod ebpf;
#[cfg(feature = "ebpf")]
mod kernel;
mod probe;
mod procnet;
mod scan;

use std::collections::HashSet;
use std::os::fd::BorrowedFd;
use std::time::{Instant, SystemTime};

#[cfg(feature = "ebpf")]
pub(crate) use self::conn::ConnFeed;
#[cfg(feature = "ebpf")]
pub(crate) use self::conn::ConnKind;
pub(crate) use self::conn::Connection;
pub(crate) use self::destroy::DestroyFeed;
#[cfg(feature = "ebpf")]
pub(crate) use self::ebpf::ConnOptions;
#[cfg(feature = "ebpf")]
pub(crate) use self::kernel::KernelFeed;
pub(crate) use self::probe::ChangeProbe;
#[cfg(feature = "bench-internals")]
pub(crate) use self::procnet::parse as parse_proc_net;
pub use self::scan::Backend;
pub(crate) use self::scan::Scanner;
#[cfg(feature = "bench-internals")]
pub(crate) use self::{
    destroy::destroyed_cookies,
    diag::{DumpState, decode_datagram},
    probe::inuse_counts,
};

use crate::error::Result;
use crate::netns::Netns;
use crate::socket::{Family, Protocol, Socket, StateSet};

/// One sock_diag dump request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dump {
    /// inet_diag for one protocol and family.
    Inet { protocol: Protocol, family: Family, states: StateSet },
    /// unix_diag.
    Unix { states: StateSet },
}

impl Dump {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dump::Inet { protocol: Protocol::Tcp, family: Family::Ipv4, .. } => "tcp/ipv4",
            Dump::Inet { protocol: Protocol::Tcp, .. } => "tcp/ipv6",
            Dump::Inet { protocol: Protocol::Udp, family: Family::Ipv4, .. } => "udp/ipv4",
            Dump::Inet { .. } => "udp/ipv6",
            Dump::Unix { .. } => "unix",
        }
    }
}

/// Which network namespaces a [`Query`](crate::Query) or [`Watcher`](crate::Watcher) reads.
#[derive(Debug, Clone, Default)]
pub(crate) enum Scope {
    /// The calling thread's.
    #[default]
    Current,
    /// One named namespace.
    One(Netns),
    /// Every namespace on the host, found by namespace discovery.
    All,
}

/// Where a [`Watcher`](crate::Watcher) learns about sockets, and which of them saw an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Source {
    /// Kernel events where the eBPF programs load (feature `ebpf`; root, or CAP_BPF +
    /// CAP_PERFMON + CAP_NET_ADMIN; kernel BTF; a cgroup2 mount), scanning otherwise — saying
    /// once, as a warning, why. Without feature `ebpf`, scanning.
    #[default]
    Auto,
    /// Kernel events (eBPF): every TCP listen and UDP bind at the moment of the call, with
    /// the calling process, however short-lived; dumps only reconcile. An error where the
    /// programs cannot load.
    Ebpf,
    /// sock_diag dumps on an interval, with the destroy feed for closes: a listener that
    /// lives less than one interval can be missed.
    Scan,
}

impl Source {
    /// `"auto"`, `"ebpf"` or `"scan"`: the CLI's `--source` values and the `source` field of
    /// JSON events.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Auto => "auto",
            Source::Ebpf => "ebpf",
            Source::Scan => "scan",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Source {
    type Err = crate::socket::UnknownName;

    fn from_str(name: &str) -> Result<Source, Self::Err> {
        [Source::Auto, Source::Ebpf, Source::Scan]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| crate::socket::UnknownName { what: "source", name: name.to_owned() })
    }
}

/// When something happened — the monotonic instant (for grace periods and ordering) and the
/// wall-clock time (for reports) — and which source saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) mono: Instant,
    pub(crate) wall: SystemTime,
    pub(crate) by: Source,
}

impl At {
    pub(crate) fn now(by: Source) -> At {
        At { mono: Instant::now(), wall: SystemTime::now(), by }
    }
}

/// What a source saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observation {
    /// Every selected socket of one namespace at `at` (a dump): those it lacks are gone.
    Census { sockets: Vec<Socket>, at: At },
    /// One socket seen open at `at`, with its owners if the source knows them (the kernel
    /// event source sends these).
    #[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
    Seen { socket: Socket, at: At },
    /// The socket with this cookie went away at `at`.
    Gone { cookie: u64, at: At },
}

/// What reading a feed found beyond its observations.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FeedState {
    /// The feed lost messages, or saw something it cannot describe: the state can only be
    /// trusted again after a dump.
    pub(crate) resync: bool,
    /// Processes named by [`Feed::follow_exits`] that exited (their last thread; their files
    /// may not be closed yet).
    pub(crate) exited: Vec<u32>,
    /// Namespaces to dump, each with a process in it: a socket opened there that the feed
    /// could not describe (a listen before its port was chosen).
    pub(crate) dump: Vec<(u64, u32)>,
}

/// A source that reports as things happen: its descriptor becomes readable, and the
/// scheduler (which polls it beside the others, no timer) reads what is there.
pub(crate) trait Feed {
    /// The descriptor to poll for reading.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Everything ready now, without blocking. An error means the feed is broken and is
    /// dropped (the caller says so once); dumps still converge the state.
    fn read(&mut self, out: &mut Vec<Observation>) -> Result<FeedState>;

    /// Makes `pids` the processes whose exits [`FeedState::exited`] reports, for feeds that
    /// can. Whether the exit of every one of them will be reported: when not, the caller
    /// checks them itself.
    fn follow_exits(&mut self, _pids: &HashSet<u32>) -> bool {
        false
    }

    /// Reports only the sockets of the namespaces `only` (inodes), or of all (`None`), for
    /// feeds that see every namespace; others ignore it. Filtering here spares the reader
    /// the events it would drop.
    fn report_netns(&mut self, _only: Option<&HashSet<u64>>) {}

    /// Adds `pids` to those of [`Feed::follow_exits`]; whether all of them fit.
    fn follow_more_exits(&mut self, _pids: &[u32]) -> bool {
        false
    }

    /// Messages the feed lost so far, where it can count them (the kernel's ring buffer
    /// can; a destroy feed's overrun cannot say how many).
    fn lost(&self) -> u64 {
        0
    }
}
