//! The kernel event source (`--source ebpf`) end to end: listeners that live no time at all,
//! in the host and in sandboxes, each with its process; a thousand at once; an owner gone
//! before /proc could be read; lost events made good by a dump; the fallback to scanning
//! where the programs cannot load.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_core::{Event, EventKind, Filter, Protocol, Source, Watcher};

use crate::util::{
    Gate, PATIENCE, Release, WatchCmd, is_root, json, portwatch, skip, system_tool, tool, wait_for,
};

/// Forks `n` children; each opens one listener — TCP or UDP, IPv4 or IPv6 in turn, on ADDR4
/// or ADDR6 (argv) — closes it and exits at once, then says `pid proto family port`. Reaps
/// them all and exits.
const ZERO_LIFETIME: &str = r#"
import os, socket, sys
n, addr4, addr6 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
kinds = [(socket.AF_INET, socket.SOCK_STREAM, addr4, "tcp", "ipv4"),
         (socket.AF_INET6, socket.SOCK_STREAM, addr6, "tcp", "ipv6"),
         (socket.AF_INET, socket.SOCK_DGRAM, addr4, "udp", "ipv4"),
         (socket.AF_INET6, socket.SOCK_DGRAM, addr6, "udp", "ipv6")]
r, w = os.pipe()
kids = []
for i in range(n):
    fam, ty, addr, proto, family = kinds[i % 4]
    pid = os.fork()
    if pid == 0:
        os.close(r)
        s = socket.socket(fam, ty)
        s.bind((addr, 0))
        if ty == socket.SOCK_STREAM:
            s.listen()
        port = s.getsockname()[1]
        s.close()
        os.write(w, f"{os.getpid()} {proto} {family} {port}\n".encode())
        os._exit(0)
    kids.append(pid)
os.close(w)
for pid in kids:
    os.waitpid(pid, 0)
sys.stdout.write(os.fdopen(r).read())
"#;

/// One zero-lifetime listener a child opened: (pid, proto, family, port).
type Child = (u32, String, String, u16);

/// Runs ZERO_LIFETIME for `n` children, through `prefix` (e.g. `unshare --net`).
fn zero_lifetime(prefix: &[&str], n: usize, addr4: &str, addr6: &str) -> Vec<Child> {
    let python = system_tool("python3").expect("python3");
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = tool(first);
            c.args(rest).arg(&python);
            c
        }
        None => Command::new(&python),
    };
    let out = cmd.args(["-c", ZERO_LIFETIME, &n.to_string(), addr4, addr6]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let children: Vec<Child> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].to_owned(), f[2].to_owned(), f[3].parse().unwrap())
        })
        .collect();
    assert_eq!(children.len(), n, "{text}");
    children
}

/// Whether this machine can load the programs: root (CI is, and must not skip).
fn can_load() -> bool {
    if !is_root() {
        skip("loading eBPF programs needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)");
        return false;
    }
    if system_tool("python3").is_none() {
        skip("python3 is not installed");
        return false;
    }
    true
}

/// Reads `w`'s JSON lines until every child has an open naming its pid and a close.
fn expect_children(w: &WatchCmd, children: &[Child]) -> Vec<serde_json::Value> {
    let mut want: HashMap<(String, u16), u32> =
        children.iter().map(|(pid, proto, _, port)| ((proto.clone(), *port), *pid)).collect();
    let mut opened: HashSet<(String, u16)> = HashSet::new();
    let mut lines = Vec::new();
    while !want.is_empty() {
        let line = json(&w.expect("every child's open and close", |_| true));
        let key = (
            line["proto"].as_str().unwrap_or("").to_owned(),
            line["port"].as_u64().unwrap_or(0) as u16,
        );
        if let Some(pid) = want.get(&key) {
            match line["event"].as_str() {
                Some("open")
                    if line["pids"].as_array().is_some_and(|p| p.contains(&(*pid).into())) =>
                {
                    opened.insert(key);
                }
                Some("close") if opened.contains(&key) => {
                    want.remove(&key);
                }
                _ => {}
            }
        }
        lines.push(line);
    }
    lines
}

#[test]
fn zero_lifetime_listeners_are_reported_with_their_process() {
    if !can_load() {
        return;
    }
    let w = WatchCmd::start(&["--source", "ebpf", "--format", "json", "--no-initial"]);
    w.ready();
    let children = zero_lifetime(&[], 8, "127.0.0.1", "::1");
    let lines = expect_children(&w, &children);
    for (pid, proto, family, port) in &children {
        let open = lines
            .iter()
            .find(|l| l["event"] == "open" && l["proto"] == proto.as_str() && l["port"] == *port)
            .unwrap();
        assert_eq!(open["family"], family.as_str(), "{open}");
        assert_eq!(open["source"], "ebpf", "{open}");
        // The process was gone before anything could read /proc: what the kernel said of it
        // is what there is.
        assert_eq!(open["processes"][0]["pid"], *pid, "{open}");
        assert_eq!(open["processes"][0]["comm"], "python3", "{open}");
    }
    assert!(w.terminate().success());
}

#[test]
fn zero_lifetime_listeners_in_a_sandbox_with_every_namespace_watched() {
    if !can_load() {
        return;
    }
    if system_tool("unshare").is_none() {
        return skip("unshare (util-linux) is not installed");
    }
    let host = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let w =
        WatchCmd::start(&["--source", "ebpf", "--format", "json", "--no-initial", "--all-netns"]);
    w.ready();
    // A namespace made after the watch began, gone with its only process: covered from its
    // first bind, with no discovery pass in between.
    let children = zero_lifetime(&["unshare", "--net"], 4, "0.0.0.0", "::");
    let lines = expect_children(&w, &children);
    for (pid, proto, _, port) in &children {
        let open = lines
            .iter()
            .find(|l| l["event"] == "open" && l["proto"] == proto.as_str() && l["port"] == *port)
            .unwrap();
        assert_eq!(open["processes"][0]["pid"], *pid, "{open}");
        assert_ne!(open["netns"], host, "reported in its own namespace: {open}");
    }
    assert!(w.terminate().success());
}

#[test]
fn a_thousand_listeners_in_about_a_second_are_each_one_open_and_one_close() {
    if !can_load() {
        return;
    }
    let w = Watcher::builder().source(Source::Ebpf).report_initial(false).build().unwrap();
    crate::watch::ready(&w);
    let started = Instant::now();
    let children = zero_lifetime(&[], 1000, "127.0.0.1", "::1");
    let took = started.elapsed();
    // Keyed by pid too: a port freed by one child is often taken by a later one.
    let mut want: HashSet<(u32, Protocol, u16)> = children
        .iter()
        .map(|(pid, proto, _, port)| {
            (*pid, if proto == "tcp" { Protocol::Tcp } else { Protocol::Udp }, *port)
        })
        .collect();
    let mut opens: HashMap<(u32, Protocol, u16), usize> = HashMap::new();
    let mut closes: HashMap<(u32, Protocol, u16), usize> = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while closes.len() < want.len() && Instant::now() < deadline {
        let Some(e) = w.recv_timeout(Duration::from_millis(500)) else { continue };
        let s = e.socket();
        let Some(&pid) = s.pids().first() else { continue };
        let key = (pid, s.protocol, s.port);
        if !want.contains(&key) {
            continue;
        }
        match e.kind() {
            EventKind::Opened => *opens.entry(key).or_default() += 1,
            EventKind::Closed => *closes.entry(key).or_default() += 1,
            _ => {}
        }
    }
    want.retain(|k| opens.get(k) != Some(&1) || closes.get(k) != Some(&1));
    assert!(want.is_empty(), "{} of 1000 not exactly one open and one close: {want:?}", want.len());
    eprintln!("1000 zero-lifetime listeners in {took:?}: all reported");
}

#[test]
fn lost_kernel_events_are_made_good_by_a_dump() {
    if !can_load() {
        return;
    }
    // The smallest ring buffer, and the scan thread held while a burst fills it: events are
    // lost, and the listener that stays open is still reported, by the dump the loss causes.
    let gate = Arc::new(Gate::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let held = Arc::clone(&gate);
    let w = Watcher::builder()
        .source(Source::Ebpf)
        .ring_buffer(4096)
        .reconcile_interval(Duration::from_secs(3600))
        .filter(Filter::new().address("127.0.0.1".parse().unwrap()))
        .build_with_callback(move |e| {
            let _ = tx.send(e);
            held.pass();
        })
        .unwrap();
    let _release = Release(Arc::clone(&gate));
    gate.hold(true);
    let _nudge = crate::util::sentinel();
    wait_for("the scan thread to be held", PATIENCE, || {
        gate.blocked.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    });
    let _burst = zero_lifetime(&[], 200, "127.0.0.1", "::1");
    let stays = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stays.local_addr().unwrap().port();
    gate.hold(false);
    let found = wait_for("the listener that stayed", PATIENCE, || {
        rx.recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|e: &Event| e.kind() == EventKind::Opened && e.socket().port == port)
    });
    assert_eq!(found.source(), Source::Scan, "found by the dump, not by its lost event");
    drop(w);
}

#[test]
fn a_udp_socket_that_connects_stops_listening_at_once() {
    if !can_load() {
        return;
    }
    let w = Watcher::builder().source(Source::Ebpf).report_initial(false).build().unwrap();
    crate::watch::ready(&w);
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = u.local_addr().unwrap().port();
    crate::watch::expect(&w, "the bind", |e| {
        e.kind() == EventKind::Opened && e.socket().port == port
    });
    u.connect("127.0.0.1:9").unwrap();
    let closed = crate::watch::expect(&w, "the close at connect", |e| {
        e.kind() == EventKind::Closed && e.socket().port == port
    });
    assert_eq!(closed.source(), Source::Ebpf);
}

#[test]
fn two_watchers_at_once_both_see_everything() {
    if !can_load() {
        return;
    }
    let a = WatchCmd::start(&["--source", "ebpf", "--format", "json", "--no-initial"]);
    let b = WatchCmd::start(&["--source", "ebpf", "--format", "json", "--no-initial"]);
    a.ready();
    b.ready();
    let children = zero_lifetime(&[], 4, "127.0.0.1", "::1");
    expect_children(&a, &children);
    expect_children(&b, &children);
    assert!(a.terminate().success() && b.terminate().success());
}

#[test]
fn without_the_privilege_auto_scans_and_says_why_and_ebpf_refuses() {
    if !is_root() {
        return skip("running portwatch as nobody needs root");
    }
    // As nobody: auto falls back to scanning, once, saying what is missing.
    let mut auto = portwatch();
    auto.args(["watch", "--format", "json"]).env("RUST_LOG", "warn").uid(65534).gid(65534);
    let mut child = auto.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("scanning instead of kernel events"), "{line}");
    assert!(line.contains("CAP_BPF"), "names what is missing: {line}");
    let _ = child.kill();
    let _ = child.wait();
    // Asked for explicitly, it is an error: exit 1 with the reason.
    let out =
        portwatch().args(["watch", "--source", "ebpf"]).uid(65534).gid(65534).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot use kernel events") && err.contains("CAP_BPF"), "{err}");
}

/// Listens on 127.0.0.1, forks a child that shares the socket, prints `port parent child`,
/// then the parent waits for a signal and the child for the end of stdin.
const SHARED_WITH_A_CHILD: &str = r#"
import os, signal, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
child = os.fork()
if child == 0:
    sys.stdin.read()
    os._exit(0)
print(s.getsockname()[1], os.getpid(), child, flush=True)
signal.pause()
"#;

#[test]
fn an_owner_that_exits_leaves_its_socket_to_the_child_that_shares_it() {
    if !can_load() {
        return;
    }
    let w = Watcher::builder().source(Source::Ebpf).report_initial(false).build().unwrap();
    crate::watch::ready(&w);
    let mut parent = tool("python3")
        .args(["-c", SHARED_WITH_A_CHILD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let f: Vec<u32> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (port, parent_pid, child_pid) = (f[0] as u16, f[1], f[2]);
    assert_eq!(parent_pid, parent.id());
    // Kept here: Child::wait would close it, and the child would exit with the parent.
    let child_stdin = parent.stdin.take();
    let opened = crate::watch::expect(&w, "the listen", |e| {
        e.kind() == EventKind::Opened && e.socket().port == port
    });
    assert_eq!(opened.socket().pids(), [parent_pid], "the caller of listen(2)");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(parent_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    parent.wait().unwrap();
    // The kernel reports the parent's exit: the socket stays open, held by the child alone —
    // found because of that report (source ebpf), not by a later look at /proc (scan).
    let changed = crate::watch::expect(&w, "the child as the only owner", |e| {
        e.kind() == EventKind::OwnersChanged
            && e.socket().port == port
            && e.socket().pids() == [child_pid]
    });
    assert_eq!(changed.socket().processes()[0].pid, child_pid);
    assert_eq!(changed.source(), Source::Ebpf, "prompted by the kernel's exit report");
    drop(child_stdin); // the child exits: its close
    let closed = crate::watch::expect(&w, "the close", |e| {
        e.kind() == EventKind::Closed && e.socket().port == port
    });
    assert_eq!(closed.socket().pids(), [child_pid], "closed by its last owner");
}

#[test]
fn a_listen_without_bind_is_found_in_its_namespace_with_the_port_the_kernel_chose() {
    if !can_load() {
        return;
    }
    let w = Watcher::builder().source(Source::Ebpf).report_initial(false).build().unwrap();
    crate::watch::ready(&w);
    // listen(2) on an unbound socket: the kernel event comes before the port is chosen.
    let s = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    nix::sys::socket::listen(&s, nix::sys::socket::Backlog::new(1).unwrap()).unwrap();
    let addr: nix::sys::socket::SockaddrIn =
        nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&s)).unwrap();
    let opened = crate::watch::expect(&w, "the listener", |e| {
        e.kind() == EventKind::Opened && e.socket().port == addr.port()
    });
    assert_eq!(opened.socket().pids(), [std::process::id()]);
    drop(s);
    crate::watch::expect(&w, "its close", |e| {
        e.kind() == EventKind::Closed && e.socket().port == addr.port()
    });
}
