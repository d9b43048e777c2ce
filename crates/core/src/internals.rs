//! Hot paths exposed to the root package's criterion benches and to the fuzz targets in
//! `fuzz/` (feature `bench-internals`). Not a public API: no stability promise, hidden from
//! the docs.

use std::path::Path;

use crate::owners;
use crate::socket::{Family, Protocol, Socket, StateSet};
use crate::source::{self, Dump, DumpState};

/// One dump datagram holding `n` inet_diag LISTEN messages and NLMSG_DONE, sequence 1, as the
/// kernel would send it on this machine.
pub fn inet_datagram(n: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n * 88 + 20);
    let header = |buf: &mut Vec<u8>, len: u32, ty: u16| {
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        buf.extend_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
    };
    for i in 0..n {
        header(&mut buf, 16 + 72, 20);
        let mut msg = [0u8; 72];
        msg[0] = 2; // AF_INET
        msg[1] = 10; // LISTEN
        msg[4..6].copy_from_slice(&(10000 + i as u16).to_be_bytes());
        msg[8..12].copy_from_slice(&[127, 0, 0, 1]);
        msg[44..48].copy_from_slice(&(i as u32).to_ne_bytes()); // cookie, low word
        msg[68..72].copy_from_slice(&(100_000 + i as u32).to_ne_bytes()); // inode
        buf.extend_from_slice(&msg);
    }
    header(&mut buf, 20, 3);
    buf.extend_from_slice(&0i32.to_ne_bytes());
    buf
}

/// Decodes a datagram from [`inet_datagram`]; returns the sockets.
pub fn decode_inet(buf: &[u8]) -> Vec<Socket> {
    let dump =
        Dump::Inet { protocol: Protocol::Tcp, family: Family::Ipv4, states: StateSet::LISTENING };
    let mut st = DumpState { dump, seq: 1, netns: 1, interrupted: false };
    let mut out = Vec::new();
    let _ = source::decode_datagram(buf, &mut st, &mut out);
    out
}

/// Parses `/proc/net/tcp` content.
pub fn parse_proc_net_tcp(bytes: &[u8]) -> Vec<Socket> {
    let dump =
        Dump::Inet { protocol: Protocol::Tcp, family: Family::Ipv4, states: StateSet::LISTENING };
    source::parse_proc_net(bytes, dump, 1).unwrap_or_default()
}

/// Socket inodes, as the owner lookup keeps them.
#[derive(Debug)]
pub struct InodeSet(owners::Inodes);

/// `inodes` as an [`InodeSet`] for [`owner_walk`].
pub fn inode_set(inodes: impl IntoIterator<Item = u64>) -> InodeSet {
    InodeSet(inodes.into_iter().collect())
}

/// One owner walk over `proc_root` for `inodes`; returns how many inodes were found.
pub fn owner_walk(proc_root: &Path, inodes: &InodeSet, threads: usize) -> usize {
    let users = Default::default();
    owners::scan_fds(
        proc_root,
        &inodes.0,
        &users,
        owners::Detail { cmdline: true, cgroup: true },
        threads,
    )
    .holders
    .len()
}

/// Every dump kind a watcher runs.
fn all_dumps() -> [Dump; 5] {
    let inet = |protocol, family| Dump::Inet { protocol, family, states: StateSet::LISTENING };
    [
        inet(Protocol::Tcp, Family::Ipv4),
        inet(Protocol::Tcp, Family::Ipv6),
        inet(Protocol::Udp, Family::Ipv4),
        inet(Protocol::Udp, Family::Ipv6),
        Dump::Unix { states: StateSet::LISTENING },
    ]
}

/// Fuzz entry: a datagram from the kernel, decoded as every dump kind and as destroy events.
pub fn fuzz_netlink(buf: &[u8]) {
    for dump in all_dumps() {
        let mut st = DumpState { dump, seq: 1, netns: 1, interrupted: false };
        let mut out = Vec::new();
        let _ = source::decode_datagram(buf, &mut st, &mut out);
        for s in &out {
            let _ = s.local_display();
        }
    }
    source::destroyed_cookies(buf, |_| {});
}

/// Fuzz entry: `/proc/net/{tcp,tcp6,udp,udp6,unix}` content, parsed as each.
pub fn fuzz_proc_net(bytes: &[u8]) {
    for dump in all_dumps() {
        let _ = source::parse_proc_net(bytes, dump, 1);
    }
}

/// Fuzz entry: what the owner walk and namespace discovery read from `/proc/PID`: `status`,
/// `cmdline` (and docker-proxy's, as forwarding reads it), an fd link, a namespace link,
/// `cgroup`, `net/fib_trie`, `net/if_inet6`, and `/etc/passwd`.
pub fn fuzz_proc_pid(bytes: &[u8]) {
    let _ = owners::parse_status(bytes);
    let _ = owners::parse_cmdline(bytes);
    let _ = owners::parse_socket_link(bytes);
    let _ = owners::parse_passwd(bytes);
    let _ = crate::discover::parse_ns_link(bytes);
    let _ = owners::parse_cgroup(bytes);
    let _ = crate::forward::parse_docker_proxy(&owners::parse_cmdline(bytes));
    let _ = crate::forward::parse_fib_trie_locals(bytes);
    let _ = crate::forward::parse_if_inet6(bytes);
    let mut counts = Vec::new();
    source::inuse_counts(bytes, &mut counts);
}

/// Fuzz entry: a snapshot file. One that loads must save and load back to the same thing.
pub fn fuzz_snapshot(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Ok(snap) = crate::snapshot::decode(text) {
        let again = crate::snapshot::decode(&crate::snapshot::encode(&snap));
        assert_eq!(again.as_ref(), Ok(&snap), "a loaded snapshot must round-trip");
    }
}

/// Fuzz entry (feature `ebpf`): bytes as the BPF owner iterator's object, taken apart and
/// relocated as its loader does (`owners::bpf::fuzz::fuzz_object`). No `bpf(2)` call.
#[cfg(feature = "ebpf")]
pub fn fuzz_bpf_object(bytes: &[u8]) {
    owners::bpf_fuzz::fuzz_object(bytes);
}

/// Fuzz entry (feature `ebpf`): bytes as what the kernel hands the BPF owner iterator: its
/// BTF (the committed object relocated against it), a pass's records, the verifier's log
/// (`owners::bpf::fuzz::fuzz_kernel`). No `bpf(2)` call.
#[cfg(feature = "ebpf")]
pub fn fuzz_bpf_kernel(bytes: &[u8]) {
    owners::bpf_fuzz::fuzz_kernel(bytes);
}
