//! Loading the connection programs (`crates/core/bpf/connections.bpf.c`, committed as
//! `connections.bpf.o`): their own object, ring buffer and maps, so they are loaded and attached
//! only by a watcher that asks for connection events — a listener-only watcher, and every
//! socket call on the host, pays nothing for them.
//!
//! | kernel name       | hook                         | reports                               |
//! |-------------------|------------------------------|---------------------------------------|
//! | `pw_conn_state`   | `tp_btf/inet_sock_set_state` | accepts, closes; stashes connects     |
//! | `pw_conn_sockops` | `sockops` (cgroup2 root)     | connects, once the local port is known |
//!
//! What is wanted (directions, remote prefixes, which process is the watcher) is written to
//! the maps before the programs are attached, so the kernel drops the rest before it costs a
//! ring-buffer record. Same lifecycle as [`Programs`](super::Programs): bpf_links owned by
//! descriptors, gone on drop and on SIGKILL.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, RingBuf};
use aya::programs::{BtfTracePoint, CgroupAttachMode, SockOps};

use super::conn_record::{ConnEvent, decode_conn};
use super::{LoadError, Prepared, prepare, program_error, program_mut};
use crate::connection::Cidr;

static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../bpf/connections.bpf.o");

const EVENTS_MAP: &str = "PW_CONN_EVENTS";
const LOST_MAP: &str = "PW_CONN_LOST";
const CONFIG_MAP: &str = "PW_CONN_CONFIG";
const ONLY_MAP: &str = "PW_CONN_ONLY";
const IGNORE_MAP: &str = "PW_CONN_IGNORE";
const TABLE_MAP: &str = "PW_CONNS";

/// Kernel names of the programs, for `bpftool prog show` and the benches.
pub(crate) const CONN_PROGRAM_NAMES: [&str; 2] = ["pw_conn_state", "pw_conn_sockops"];

/// Most prefixes per list (the LPM tries' size).
pub(crate) const MAX_PREFIXES: usize = 1024;

/// Bits of the config's flags (portwatch.bpf.h).
const OUT: u32 = 1;
const IN: u32 = 2;
const F_ONLY: u32 = 4;
const F_IGNORE: u32 = 8;

/// What to load, and what the kernel is to report.
#[derive(Debug, Clone)]
pub(crate) struct ConnOptions {
    /// Ring buffer bytes: a power of two, at least 4096 (96 + 8 bytes a record).
    pub(crate) ring_bytes: u32,
    /// Connections followed at once, from connect or accept to close (default 65 536).
    pub(crate) table: u32,
    pub(crate) outbound: bool,
    pub(crate) inbound: bool,
    /// Only remotes in these prefixes (empty: any).
    pub(crate) only: Vec<Cidr>,
    /// No remote in these.
    pub(crate) ignore: Vec<Cidr>,
    /// Connects by this process and its descendants are left out (0: none).
    pub(crate) own_tgid: u32,
}

impl Default for ConnOptions {
    fn default() -> Self {
        ConnOptions {
            ring_bytes: 1 << 20,
            table: 65536,
            outbound: true,
            inbound: true,
            only: Vec::new(),
            ignore: Vec::new(),
            own_tgid: 0,
        }
    }
}

/// A prefix as the tries key it: IPv4 mapped into IPv6.
fn cidr_key(c: &Cidr) -> Key<[u8; 16]> {
    let (addr, len) = match c.addr() {
        IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + u32::from(c.prefix_len())),
        IpAddr::V6(a) => (a.octets(), u32::from(c.prefix_len())),
    };
    Key::new(len, addr)
}

/// The loaded and attached connection programs, their ring buffer and counters.
pub(crate) struct ConnPrograms {
    // Field order is drop order: maps, then the programs and links.
    events: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    ebpf: Ebpf,
    load_time: Duration,
}

impl std::fmt::Debug for ConnPrograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPrograms").field("load_time", &self.load_time).finish_non_exhaustive()
    }
}

fn mismatch(what: impl Into<String>) -> LoadError {
    LoadError::Mismatch { what: what.into() }
}

impl ConnPrograms {
    /// Loads the programs, writes what is wanted into their maps, then attaches them (so no
    /// unwanted record is ever sent). Either both are attached or neither stays.
    pub(crate) fn load(opts: &ConnOptions) -> Result<ConnPrograms, LoadError> {
        let start = Instant::now();
        if opts.only.len() > MAX_PREFIXES || opts.ignore.len() > MAX_PREFIXES {
            return Err(mismatch(format!("more than {MAX_PREFIXES} remote prefixes")));
        }
        let sizes = [(EVENTS_MAP, opts.ring_bytes), (TABLE_MAP, opts.table.max(1))];
        let Prepared { mut ebpf, btf, cgroup, cgroup_dir } =
            prepare(OBJECT, &sizes, Some(opts.ring_bytes))?;

        let flags = if opts.outbound { OUT } else { 0 }
            | if opts.inbound { IN } else { 0 }
            | if opts.only.is_empty() { 0 } else { F_ONLY }
            | if opts.ignore.is_empty() { 0 } else { F_IGNORE };
        let write = |e: aya::maps::MapError| mismatch(format!("writing a map: {e}"));
        {
            let map = ebpf.map_mut(CONFIG_MAP).ok_or_else(|| mismatch(CONFIG_MAP))?;
            let mut config: Array<_, [u32; 2]> = Array::try_from(map).map_err(write)?;
            config.set(0, [flags, opts.own_tgid], 0).map_err(write)?;
        }
        for (name, list) in [(ONLY_MAP, &opts.only), (IGNORE_MAP, &opts.ignore)] {
            let map = ebpf.map_mut(name).ok_or_else(|| mismatch(name))?;
            let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(map).map_err(write)?;
            for cidr in list {
                trie.insert(&cidr_key(cidr), 1, 0).map_err(write)?;
            }
        }

        let [state, sockops] = CONN_PROGRAM_NAMES;
        let tracepoint = "inet_sock_set_state";
        let prog: &mut BtfTracePoint = program_mut(&mut ebpf, state)?;
        prog.load(tracepoint, &btf).map_err(|e| program_error(state, tracepoint, false, e))?;
        prog.attach().map_err(|e| program_error(state, tracepoint, true, e))?;
        let target = cgroup.display().to_string();
        let prog: &mut SockOps = program_mut(&mut ebpf, sockops)?;
        prog.load().map_err(|e| program_error(sockops, &target, false, e))?;
        prog.attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(|e| program_error(sockops, &target, true, e))?;

        let events = ebpf
            .take_map(EVENTS_MAP)
            .and_then(|m| RingBuf::try_from(m).ok())
            .ok_or_else(|| mismatch(format!("ring buffer {EVENTS_MAP}")))?;
        let lost = ebpf
            .take_map(LOST_MAP)
            .and_then(|m| Array::try_from(m).ok())
            .ok_or_else(|| mismatch(format!("array {LOST_MAP}")))?;
        Ok(ConnPrograms { events, lost, ebpf, load_time: start.elapsed() })
    }

    /// Hands every record available now to `f`, oldest first, without blocking.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(ConnEvent)) {
        while let Some(item) = self.events.next() {
            if let Some(event) = decode_conn(&item) {
                f(event);
            }
        }
    }

    /// Records dropped because the ring buffer was full, and connections reported whose close
    /// cannot be (the connection table was full), since loading.
    pub(crate) fn lost(&self) -> (u64, u64) {
        (self.lost.get(&0, 0).unwrap_or(0), self.lost.get(&1, 0).unwrap_or(0))
    }

    /// How long loading took.
    pub(crate) fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Kernel ids of the loaded programs.
    pub(crate) fn program_ids(&self) -> Vec<u32> {
        self.ebpf.programs().filter_map(|(_, p)| p.info().ok()).map(|i| i.id()).collect()
    }
}

/// The ring buffer's descriptor: readable when records are waiting.
impl AsFd for ConnPrograms {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}
