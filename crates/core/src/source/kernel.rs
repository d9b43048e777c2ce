//! The kernel event source (feature `ebpf`): the eBPF programs' events as observations.
//!
//! One set of programs sees every network namespace on the host; each observation carries
//! its socket's namespace inode, and the scheduler routes it. A listener is `Seen` at the
//! moment of `listen(2)` (TCP) or `bind(2)` (UDP), with the calling process as its owner as
//! the kernel names it (pid, comm, uid) — the process may be gone by the time this is read.
//! It is `Gone` when it stops listening: closed or shut down (TCP), closed or connected (UDP).

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use super::ebpf::{KernelEvent, Kind, LoadError, LoadOptions, Programs, monotonic_now_ns};
use super::{At, Feed, FeedState, Observation, Source};
use crate::error::Result;
use crate::process::{Owners, Process};
use crate::socket::{Socket, State};

/// The loaded programs, and how much they had lost when last read.
pub(crate) struct KernelFeed {
    programs: Programs,
    lost: u64,
}

impl std::fmt::Debug for KernelFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelFeed").field("programs", &self.programs).finish()
    }
}

impl KernelFeed {
    /// Loads and attaches the programs; `ring_bytes` sizes their ring buffer (default 1 MiB).
    pub(crate) fn load(ring_bytes: Option<u32>) -> Result<KernelFeed, LoadError> {
        let mut opts = LoadOptions::default();
        if let Some(bytes) = ring_bytes {
            opts.ring_bytes = bytes;
        }
        let programs = Programs::load(&opts)?;
        log::debug!("eBPF programs loaded in {:?}", programs.load_time());
        Ok(KernelFeed { programs, lost: 0 })
    }
}

/// What a kernel event means for the open set, if anything.
pub(crate) fn observe(e: KernelEvent, at: At) -> Option<Observation> {
    let state = match e.kind {
        Kind::Listen => State::Listen,
        Kind::UdpBind => State::Unconnected,
        Kind::Unlisten | Kind::UdpConnect | Kind::UdpRelease => {
            return Some(Observation::Gone { cookie: e.cookie, at });
        }
    };
    let owner = Process::from_kernel(e.pid, &e.comm, e.uid);
    let socket = Socket {
        protocol: e.protocol,
        family: e.family,
        addr: Some(e.addr),
        port: e.port,
        path: None,
        remote: None,
        state,
        inode: e.ino,
        uid: Some(e.uid),
        cookie: Some(e.cookie),
        netns: e.netns,
        // The scheduler stamps the namespace's name and container, as a dump would.
        netns_name: None,
        // Only a dump knows whether an IPv6 socket is v6-only: the next one fills it in.
        v6only: None,
        interface: None,
        unix_type: None,
        container: None,
        forwards_to: None,
        owners: Owners::Known(vec![owner.into()]),
    };
    Some(Observation::Seen { socket, at })
}

impl Feed for KernelFeed {
    fn fd(&self) -> BorrowedFd<'_> {
        self.programs.as_fd()
    }

    fn read(&mut self, out: &mut Vec<Observation>) -> Result<FeedState> {
        // One reading of each clock per batch dates every event in it.
        let (mono_ns, wall, instant) = (monotonic_now_ns(), SystemTime::now(), Instant::now());
        let mut resync = false;
        let mut dump = Vec::new();
        self.programs.drain(|e| {
            // A listen(2) without bind(2): the kernel picks the port just after this event.
            // The socket is there to be dumped, in its namespace.
            if e.kind == Kind::Listen && e.port == 0 {
                dump.push((e.netns, e.pid));
                return;
            }
            let age = Duration::from_nanos(mono_ns.saturating_sub(e.ts_ns));
            let at = At {
                mono: instant.checked_sub(age).unwrap_or(instant),
                wall: e.wall_time(mono_ns, wall).unwrap_or(wall),
                by: Source::Ebpf,
            };
            out.extend(observe(e, at));
        });
        let lost = self.programs.lost();
        if lost > self.lost {
            log::warn!(
                "the kernel dropped {} socket event(s) (ring buffer full): rescanning",
                lost - self.lost
            );
            self.lost = lost;
            resync = true;
        }
        Ok(FeedState { resync, exited: self.programs.take_exits(), dump })
    }

    fn follow_exits(&mut self, pids: &HashSet<u32>) -> bool {
        let missed = self.programs.set_owners(pids);
        if missed > 0 {
            log::debug!("{missed} owner(s) beyond the exit map: checked every second");
        }
        missed == 0
    }

    fn report_netns(&mut self, only: Option<&HashSet<u64>>) {
        if !self.programs.report_netns(only) {
            log::debug!("the programs report every namespace: the filter could not be set");
        }
    }

    fn follow_more_exits(&mut self, pids: &[u32]) -> bool {
        self.programs.add_owners(pids) == 0
    }

    fn lost(&self) -> u64 {
        self.lost
    }
}
