//! The programs against the real kernel: real child processes, real namespaces, real kills.
//!
//! Each test loads its own [`Programs`] (so tests running in parallel also prove that several
//! instances work at once) and picks its events out of the host-wide stream by the cookies of
//! the sockets of the children it spawned. Tests that need root skip, saying why, unless
//! `PORTWATCH_REQUIRE_PRIVILEGED=1`, when they fail instead. Waits have deadlines; traffic only
//! goes to loopback.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::*;
use crate::socket::{Family, Protocol};

mod connections;
mod events;
mod lifecycle;

const REQUIRE: &str = "PORTWATCH_REQUIRE_PRIVILEGED";
const HOLD: &str = "PORTWATCH_EBPF_HOLD";
const TRY_LOAD: &str = "PORTWATCH_EBPF_TRY_LOAD";

fn required() -> bool {
    std::env::var_os(REQUIRE).is_some_and(|v| v == "1")
}

pub(crate) fn skip(why: &str) {
    assert!(!required(), "{REQUIRE}=1 but {why}");
    eprintln!("skipped: {why}");
}

/// Loads the programs, or says why this test cannot run here.
fn load(opts: &LoadOptions) -> Option<Programs> {
    loaded(Programs::load(opts), "the eBPF programs")
}

/// What a load gave, or `None` after saying why this machine cannot load `what` (no
/// privilege, BTF or cgroup2); any other failure is the test's.
pub(super) fn loaded<T>(result: Result<T, LoadError>, what: &str) -> Option<T> {
    match result {
        Ok(p) => Some(p),
        Err(
            e @ (LoadError::PermissionDenied { .. }
            | LoadError::NoBtf { .. }
            | LoadError::NoCgroup2),
        ) => {
            skip(&format!("cannot load {what} here: {e}"));
            None
        }
        Err(e) => panic!("loading failed: {e}"),
    }
}

/// The real python interpreter (not a pyenv shim: a shim would add a process and 50 ms).
fn python() -> Option<String> {
    let out =
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !path.is_empty()).then_some(path)
}

fn python_or_skip() -> Option<String> {
    let p = python();
    if p.is_none() {
        skip("python3 not found");
    }
    p
}

/// Drains into `seen` until `done(seen)` holds or the deadline passes, polling the descriptor.
fn collect_until(
    progs: &mut Programs,
    seen: &mut Vec<KernelEvent>,
    within: Duration,
    mut done: impl FnMut(&[KernelEvent]) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        progs.drain(|e| seen.push(e));
        if done(seen) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("deadline passed; the ring buffer lost {} events host-wide", progs.lost());
            return false;
        }
        let ms = u16::try_from(left.as_millis().min(100)).unwrap_or(100);
        let mut fds = [PollFd::new(progs.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
}

/// A child that opens one socket and exits at once, and what it said about itself.
#[derive(Debug)]
struct Child {
    pid: u32,
    comm: Vec<u8>,
    netns: u64,
    cookie: u64,
    port: u16,
}

/// Opens `proto` (tcp/udp) on `addr`, port 0, listens (TCP), prints
/// `pid comm netns cookie port` and exits. Action `connect` (UDP): connects to port `target`
/// after binding; `sendto` (UDP): sends one datagram there without binding first;
/// `autolisten` (TCP): listens without binding (the kernel picks the port in listen);
/// `autoconnect` (UDP): connects without binding first.
const CHILD: &str = r#"
import os, socket, sys
proto, fam, addr, action, target = sys.argv[1:6]
s = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET,
                  socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
if action == "sendto":
    s.sendto(b"x", (addr, int(target)))
elif action == "autolisten":
    s.listen()
elif action == "autoconnect":
    s.connect((addr, int(target)))
else:
    s.bind((addr, 0))
    if proto == "tcp":
        s.listen()
    if action == "connect":
        s.connect((addr, int(target)))
cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), sys.byteorder)  # SO_COOKIE
comm = open("/proc/self/comm").read().strip()
print(os.getpid(), comm, os.stat("/proc/self/ns/net").st_ino, cookie, s.getsockname()[1], flush=True)
"#;

fn run_child(prefix: &[&str], python: &str, args: [&str; 5]) -> Child {
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(python));
    cmd.args(prefix.iter().skip(1));
    if !prefix.is_empty() {
        cmd.arg(python);
    }
    let out = cmd.arg("-c").arg(CHILD).args(args).output().expect("spawn the child");
    assert!(out.status.success(), "child {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 5, "child said {text:?}");
    Child {
        pid: f[0].parse().expect("pid"),
        comm: f[1].as_bytes().to_vec(),
        netns: f[2].parse().expect("netns"),
        cookie: f[3].parse().expect("cookie"),
        port: f[4].parse().expect("port"),
    }
}

fn host_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").expect("own netns").ino()
}

/// The events of `child`'s socket: its cookie (unique until reboot; pids are reused within
/// seconds here, pid_max being 32768, while other tests fork hundreds of processes).
fn of_child<'a>(seen: &'a [KernelEvent], child: &Child) -> Vec<&'a KernelEvent> {
    seen.iter().filter(|e| e.cookie == child.cookie).collect()
}

/// Checks that `child` was reported with the right kinds, identity, netns, cookie and port.
fn assert_reported(
    seen: &[KernelEvent],
    child: &Child,
    protocol: Protocol,
    family: Family,
    kinds: &[Kind],
) {
    let mine = of_child(seen, child);
    for kind in kinds {
        let e = mine
            .iter()
            .find(|e| e.kind == *kind && e.cookie == child.cookie)
            .unwrap_or_else(|| panic!("no {kind:?} for {child:?}; saw {mine:#?}"));
        assert_eq!(e.netns, child.netns, "netns");
        assert_eq!((e.protocol, e.family), (protocol, family));
        assert_eq!(e.port, child.port, "port of {kind:?}");
        if matches!(kind, Kind::Listen | Kind::UdpBind) {
            assert_eq!(e.pid, child.pid, "pid");
            assert_eq!(e.comm, child.comm, "comm");
            assert_eq!(e.tid, child.pid, "single-threaded child");
            assert_eq!(e.uid, std::fs::metadata("/proc/self").expect("/proc").uid(), "uid");
        } else {
            // A close names no caller: the one closing need not be an owner.
            assert_eq!((e.pid, e.tid, e.comm.as_slice()), (0, 0, &b""[..]), "{kind:?}");
        }
    }
}

fn done_for<'a>(children: &'a [(&'a Child, usize)]) -> impl FnMut(&[KernelEvent]) -> bool + 'a {
    move |seen| children.iter().all(|&(child, n)| of_child(seen, child).len() >= n)
}
