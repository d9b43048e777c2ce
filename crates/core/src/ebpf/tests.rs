//! The programs against the real kernel: real child processes, real namespaces, real kills.
//!
//! Each test loads its own [`Programs`] (so tests running in parallel also prove that several
//! instances work at once) and picks its events out of the host-wide stream by the pids of the
//! children it spawned. Tests that need root skip, saying why, unless
//! `PORTWATCH_REQUIRE_PRIVILEGED=1`, when they fail instead. Waits have deadlines; traffic only
//! goes to loopback.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::*;
use crate::socket::{Family, Protocol};

const REQUIRE: &str = "PORTWATCH_REQUIRE_PRIVILEGED";
const HOLD: &str = "PORTWATCH_EBPF_HOLD";
const TRY_LOAD: &str = "PORTWATCH_EBPF_TRY_LOAD";

fn required() -> bool {
    std::env::var_os(REQUIRE).is_some_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!required(), "{REQUIRE}=1 but {why}");
    eprintln!("skipped: {why}");
}

/// Loads the programs, or says why this test cannot run here.
fn load(opts: &LoadOptions) -> Option<Programs> {
    match Programs::load(opts) {
        Ok(p) => Some(p),
        Err(
            e @ (LoadError::PermissionDenied { .. }
            | LoadError::NoBtf { .. }
            | LoadError::NoCgroup2),
        ) => {
            skip(&format!("cannot load the eBPF programs here: {e}"));
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

fn of_pid(seen: &[KernelEvent], pid: u32) -> Vec<&KernelEvent> {
    seen.iter().filter(|e| e.pid == pid).collect()
}

/// Checks that `child` was reported with the right kinds, identity, netns, cookie and port.
fn assert_reported(
    seen: &[KernelEvent],
    child: &Child,
    protocol: Protocol,
    family: Family,
    kinds: &[Kind],
) {
    let mine = of_pid(seen, child.pid);
    for kind in kinds {
        let e = mine
            .iter()
            .find(|e| e.kind == *kind && e.cookie == child.cookie)
            .unwrap_or_else(|| panic!("no {kind:?} for {child:?}; saw {mine:#?}"));
        assert_eq!(e.comm, child.comm, "comm");
        assert_eq!(e.netns, child.netns, "netns");
        assert_eq!((e.protocol, e.family), (protocol, family));
        assert_eq!(e.port, child.port, "port of {kind:?}");
        assert_eq!(e.tid, child.pid, "single-threaded child");
        assert_eq!(e.uid, std::fs::metadata("/proc/self").expect("/proc").uid(), "uid");
    }
}

fn done_for(children: &[(u32, usize)]) -> impl FnMut(&[KernelEvent]) -> bool + '_ {
    move |seen| children.iter().all(|&(pid, n)| seen.iter().filter(|e| e.pid == pid).count() >= n)
}

/// Zero-lifetime listeners of each protocol and family, each in a process that exits at once,
/// in `netns_prefix` (empty: the host's namespace). Every one is reported, with its owner.
fn zero_lifetime(netns_prefix: &[&str], v4: &str, v6: &str) -> Option<Vec<Child>> {
    let python = python_or_skip()?;
    let mut progs = load(&LoadOptions::default())?;
    let cases = [
        ("tcp", "4", v4, Protocol::Tcp, Family::Ipv4, &[Kind::Listen, Kind::Unlisten][..]),
        ("tcp", "6", v6, Protocol::Tcp, Family::Ipv6, &[Kind::Listen, Kind::Unlisten]),
        ("udp", "4", v4, Protocol::Udp, Family::Ipv4, &[Kind::UdpBind, Kind::UdpRelease]),
        ("udp", "6", v6, Protocol::Udp, Family::Ipv6, &[Kind::UdpBind, Kind::UdpRelease]),
    ];
    let children: Vec<Child> = cases
        .iter()
        .map(|(p, f, a, ..)| run_child(netns_prefix, &python, [p, f, a, "none", "0"]))
        .collect();
    let want: Vec<(u32, usize)> = children.iter().map(|c| (c.pid, 2)).collect();
    let mut seen = Vec::new();
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), done_for(&want));
    for (child, (_, _, _, protocol, family, kinds)) in children.iter().zip(cases) {
        assert_reported(&seen, child, protocol, family, kinds);
        assert_eq!(of_pid(&seen, child.pid).len(), 2, "exactly two events for {child:?}");
    }
    Some(children)
}

#[test]
fn zero_lifetime_listeners_are_reported_with_their_owner() {
    let Some(children) = zero_lifetime(&[], "127.0.0.1", "::1") else { return };
    assert!(children.iter().all(|c| c.netns == host_netns()));
}

#[test]
fn zero_lifetime_listeners_in_a_sandbox_netns() {
    if Command::new("unshare").arg("--version").output().is_err() {
        return skip("unshare (util-linux) not found");
    }
    // A new namespace's lo is down: bind the wildcard addresses, no traffic.
    let Some(children) = zero_lifetime(&["unshare", "--net"], "0.0.0.0", "::") else { return };
    let host = host_netns();
    let netns: HashSet<u64> = children.iter().map(|c| c.netns).collect();
    // Each event carried its child's namespace (checked above). Not "one inode per child":
    // a freed namespace's inode number is reused by the next one.
    assert!(!netns.contains(&host), "children ran in their own namespaces");
}

/// Forks `n` children that each open one listener (TCP/UDP × v4/v6 in turn) and exit, reaping
/// them at the end; prints each child's pid, then the wall time taken.
const BURST: &str = r#"
import os, socket, sys, time
n = int(sys.argv[1])
kinds = [(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"), (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
         (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"), (socket.AF_INET6, socket.SOCK_DGRAM, "::1")]
t = time.monotonic()
pids = []
for i in range(n):
    fam, ty, addr = kinds[i % 4]
    pid = os.fork()
    if pid == 0:
        s = socket.socket(fam, ty)
        s.bind((addr, 0))
        if ty == socket.SOCK_STREAM:
            s.listen()
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print(" ".join(map(str, pids)))
print(time.monotonic() - t, flush=True)
"#;

fn burst(python: &str, n: usize) -> (Vec<u32>, f64) {
    let out = Command::new(python).arg("-c").arg(BURST).arg(n.to_string()).output().expect("spawn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines();
    let pids = lines.next().unwrap_or("").split(' ').filter_map(|p| p.parse().ok()).collect();
    let secs = lines.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    (pids, secs)
}

#[test]
fn a_thousand_zero_lifetime_listeners_in_about_a_second_are_all_captured() {
    const N: usize = 1000;
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions { ring_bytes: 4 << 20 }) else { return };
    let (pids, secs) = burst(&python, N);
    assert_eq!(pids.len(), N);
    let want: HashSet<u32> = pids.iter().copied().collect();
    let mut seen = Vec::new();
    let mut count = 0;
    collect_until(&mut progs, &mut seen, Duration::from_secs(10), |seen| {
        count = seen.iter().filter(|e| want.contains(&e.pid)).count();
        count >= 2 * N
    });
    let mut per_pid: HashMap<u32, Vec<Kind>> = HashMap::new();
    for e in seen.iter().filter(|e| want.contains(&e.pid)) {
        per_pid.entry(e.pid).or_default().push(e.kind);
    }
    for (i, pid) in pids.iter().enumerate() {
        let expect = if i % 4 < 2 {
            [Kind::Listen, Kind::Unlisten]
        } else {
            [Kind::UdpBind, Kind::UdpRelease]
        };
        assert_eq!(
            per_pid.get(pid).map(Vec::as_slice),
            Some(&expect[..]),
            "child #{i} (pid {pid})"
        );
    }
    assert_eq!(count, 2 * N);
    assert_eq!(progs.lost(), 0);
    eprintln!("{N} listeners in {secs:.2} s: {count} events, all captured, none lost");
}

#[test]
fn a_tiny_ring_buffer_counts_what_it_loses() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions { ring_bytes: 4096 }) else { return };
    assert_eq!(progs.lost(), 0);
    // 200 events do not fit in 4 KiB (51 records) while nobody drains.
    let (pids, _) = burst(&python, 100);
    assert_eq!(pids.len(), 100);
    let deadline = Instant::now() + Duration::from_secs(5);
    while progs.lost() == 0 && Instant::now() < deadline {
        let mut fds = [PollFd::new(progs.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(20u16));
    }
    let lost = progs.lost();
    assert!(lost > 0, "a 4 KiB ring buffer lost nothing under a burst of 200 events");
    let mut n = 0;
    progs.drain(|_| n += 1);
    assert!(n > 0 && n <= 4096 / 80, "{n} records fit in 4 KiB");
    eprintln!("4 KiB ring buffer: {n} records kept, {lost} lost");
}

#[test]
fn udp_autobind_is_no_bind_and_connect_keeps_the_cookie() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    let sink = UdpSocket::bind("127.0.0.1:0").expect("loopback sink");
    let port = sink.local_addr().expect("addr").port().to_string();

    // sendto without bind: the kernel picks a port (autobind); no bind event, a release event.
    let sender = run_child(&[], &python, ["udp", "4", "127.0.0.1", "sendto", &port]);
    // bind then connect: a bind event, then a connect event, for the same socket.
    let connector = run_child(&[], &python, ["udp", "4", "127.0.0.1", "connect", &port]);
    // connect without bind (what a resolver does): never a listener, only its release shows.
    let client = run_child(&[], &python, ["udp", "4", "127.0.0.1", "autoconnect", &port]);
    let mut seen = Vec::new();
    collect_until(
        &mut progs,
        &mut seen,
        Duration::from_secs(5),
        done_for(&[(sender.pid, 1), (connector.pid, 3), (client.pid, 1)]),
    );
    let client_kinds: Vec<Kind> = of_pid(&seen, client.pid).iter().map(|e| e.kind).collect();
    assert_eq!(client_kinds, [Kind::UdpRelease], "an unbound socket's connect is not reported");

    let sent: Vec<Kind> = of_pid(&seen, sender.pid).iter().map(|e| e.kind).collect();
    assert_eq!(sent, [Kind::UdpRelease], "autobind is not a bind; its close is a release");
    assert_reported(&seen, &sender, Protocol::Udp, Family::Ipv4, &[Kind::UdpRelease]);

    let conn: Vec<&KernelEvent> = of_pid(&seen, connector.pid);
    let kinds: Vec<Kind> = conn.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [Kind::UdpBind, Kind::UdpConnect, Kind::UdpRelease]);
    assert!(conn.iter().all(|e| e.cookie == connector.cookie), "one socket, one cookie: {conn:#?}");
    assert_reported(
        &seen,
        &connector,
        Protocol::Udp,
        Family::Ipv4,
        &[Kind::UdpBind, Kind::UdpConnect],
    );
    assert_eq!(
        conn[1].addr,
        IpAddr::from([127, 0, 0, 1]),
        "the connect event has the bound address"
    );
    assert!(conn.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns), "timestamps in order");
    // ts_ns is CLOCK_MONOTONIC: the events are in our recent past.
    let (now, wall) = (monotonic_now_ns(), std::time::SystemTime::now());
    let age = Duration::from_nanos(now.saturating_sub(conn[0].ts_ns));
    assert!(conn[0].ts_ns <= now && age < Duration::from_secs(60), "age {age:?}");
    let at = conn[0].wall_time(now, wall).expect("in range");
    assert!(at <= wall && wall.duration_since(at).unwrap_or_default() < Duration::from_secs(60));
}

#[test]
fn tcp_listen_without_bind_reports_port_zero_then_the_port() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    let child = run_child(&[], &python, ["tcp", "4", "0.0.0.0", "autolisten", "0"]);
    let mut seen = Vec::new();
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), done_for(&[(child.pid, 2)]));
    // listen(2) on an unbound socket enters LISTEN before the kernel picks the port: the
    // Listen event says port 0 (documented on Kind::Listen); the Unlisten has the port.
    let mine: Vec<(Kind, u16, u64)> =
        of_pid(&seen, child.pid).iter().map(|e| (e.kind, e.port, e.cookie)).collect();
    assert_eq!(mine, [(Kind::Listen, 0, child.cookie), (Kind::Unlisten, child.port, child.cookie)]);
}

#[test]
fn a_bad_ring_buffer_size_is_refused_before_touching_the_kernel() {
    for bytes in [0, 100, 4095, 4096 + 4096 * 2, 2048] {
        let err = Programs::load(&LoadOptions { ring_bytes: bytes }).expect_err("bad size");
        assert!(matches!(err, LoadError::RingBufferSize { bytes: b } if b == bytes), "{err}");
        assert_eq!(err.errno(), None);
    }
}

fn loaded_ids() -> HashSet<u32> {
    aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect()
}

fn wait_unloaded(ids: &[u32]) -> HashSet<u32> {
    // Programs are freed after an RCU grace period once the last reference goes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let still: HashSet<u32> = loaded_ids().into_iter().filter(|id| ids.contains(id)).collect();
        if still.is_empty() || Instant::now() > deadline {
            return still;
        }
        std::thread::yield_now();
        let mut fds: [PollFd<'_>; 0] = [];
        let _ = poll(&mut fds, PollTimeout::from(10u16));
    }
}

#[test]
fn two_instances_both_see_events_and_drop_unloads_everything() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut a) = load(&LoadOptions::default()) else { return };
    let Some(mut b) = load(&LoadOptions::default()) else { return };
    eprintln!(
        "aya load + attach: {:?} and {:?} ({})",
        a.load_time(),
        b.load_time(),
        a.cgroup().display()
    );
    let ids: Vec<u32> = a.program_ids().into_iter().chain(b.program_ids()).collect();
    assert_eq!(ids.len(), 2 * PROGRAM_NAMES.len());
    let loaded = loaded_ids();
    assert!(ids.iter().all(|id| loaded.contains(id)));

    let child = run_child(&[], &python, ["tcp", "4", "127.0.0.1", "none", "0"]);
    for progs in [&mut a, &mut b] {
        let mut seen = Vec::new();
        collect_until(progs, &mut seen, Duration::from_secs(5), done_for(&[(child.pid, 2)]));
        assert_reported(
            &seen,
            &child,
            Protocol::Tcp,
            Family::Ipv4,
            &[Kind::Listen, Kind::Unlisten],
        );
    }
    drop(a);
    drop(b);
    let still = wait_unloaded(&ids);
    assert!(still.is_empty(), "programs {still:?} outlived their Programs");
}

/// Not a test on its own: the process [`sigkill_detaches_everything`] loads the programs in and
/// kills. Does nothing unless PORTWATCH_EBPF_HOLD=1.
#[test]
#[ignore = "helper process of sigkill_detaches_everything"]
fn hold_for_kill() {
    if std::env::var_os(HOLD).is_none_or(|v| v != "1") {
        return;
    }
    let progs = Programs::load(&LoadOptions::default()).expect("load in the helper");
    let ids: Vec<String> = progs.program_ids().iter().map(u32::to_string).collect();
    println!("PW_HOLD {}", ids.join(" "));
    // Block until killed: stdin is a pipe the parent never writes to.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn sigkill_detaches_everything() {
    if load(&LoadOptions::default()).is_none() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut helper = Command::new(exe)
        .args([
            "ebpf::tests::hold_for_kill",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-exec the test binary");
    let stdout = helper.stdout.take().expect("piped");
    let ids: Vec<u32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test NAME ... " first, on the same line.
        .find_map(|l| {
            l.split_once("PW_HOLD ")
                .map(|(_, ids)| ids)
                .map(|ids| ids.split(' ').filter_map(|i| i.parse().ok()).collect())
        })
        .expect("the helper loaded the programs");
    assert_eq!(ids.len(), PROGRAM_NAMES.len());
    let loaded = loaded_ids();
    assert!(ids.iter().all(|id| loaded.contains(id)), "attached while the helper lives");

    helper.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
    let _ = helper.wait();
    let still = wait_unloaded(&ids);
    assert!(still.is_empty(), "programs {still:?} survived a SIGKILL of their owner");
}

/// Not a test on its own: [`unprivileged_load_names_the_missing_capabilities`] runs it as an
/// unprivileged user. Does nothing unless PORTWATCH_EBPF_TRY_LOAD=1.
#[test]
#[ignore = "helper process of unprivileged_load_names_the_missing_capabilities"]
fn try_load() {
    if std::env::var_os(TRY_LOAD).is_none_or(|v| v != "1") {
        return;
    }
    match Programs::load(&LoadOptions::default()) {
        Ok(_) => println!("PW_LOAD ok"),
        Err(e) => println!("PW_LOAD {e:?} / {e}"),
    }
}

/// Runs [`try_load`] as nobody with exactly `caps` (setpriv names: `bpf`, `perfmon`, ...);
/// returns what it said, or `None` (skipped) when that cannot be arranged here.
fn try_load_as_nobody_with(caps: &[&str]) -> Option<String> {
    load(&LoadOptions::default())?;
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("setpriv (util-linux) not found");
        return None;
    }
    let set: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all{set}"))
        .arg(format!("--ambient-caps=-all{set}"))
        .arg(format!("--bounding-set=-all{set}"))
        .arg("--")
        .arg(exe)
        .args(["ebpf::tests::try_load", "--exact", "--ignored", "--nocapture"])
        .env(TRY_LOAD, "1")
        .output()
        .expect("setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    let said = text.split_once("PW_LOAD ").map(|(_, s)| s.to_owned());
    Some(said.unwrap_or_else(|| {
        panic!("the helper said nothing: {text} {}", String::from_utf8_lossy(&out.stderr))
    }))
}

#[test]
fn unprivileged_load_names_the_missing_capabilities() {
    let Some(said) = try_load_as_nobody_with(&[]) else { return };
    assert!(said.starts_with("PermissionDenied"), "{said}");
    assert!(said.contains("needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN"), "{said}");
    assert!(said.contains("missing: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"), "{said}");
    let Some(said) = try_load_as_nobody_with(&["bpf", "perfmon"]) else { return };
    assert!(said.contains("missing: CAP_NET_ADMIN;"), "{said}");
}

#[test]
fn cap_bpf_perfmon_and_net_admin_suffice_without_root() {
    let Some(said) = try_load_as_nobody_with(&["bpf", "perfmon", "net_admin"]) else { return };
    assert!(said.starts_with("ok"), "{said}");
}
