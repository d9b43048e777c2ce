//! Hostile neighbours: what an unprivileged local user can try against a watcher running as
//! root — forging closes, flooding it with events or giant command lines, starving it of
//! threads. Each test reproduces the attack (as `nobody` where that matters).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use portwatch_core::{EVENT_QUEUE, Event, EventKind, Filter, Netns, Watcher};

use crate::util::{PATIENCE, is_root, skip, system_tool, tool, wait_for};
use crate::watch::expect;

/// The uid and gid of `nobody`.
pub(crate) const NOBODY: u32 = 65534;

/// A command that runs as `nobody` when we are root (else as ourselves: the attacks work
/// from any uid, root only makes them cross users).
pub(crate) fn as_nobody(mut cmd: Command) -> Command {
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

/// In a user and network namespace of its own (`unshare -Urn`, which any user may do),
/// `nobody` listens on 7777 and 7778, prints its pid, reads a cookie, and sends a copy of a
/// destroy message for it to every destroy feed in its namespace — a watcher's, once the
/// watcher looks in — found in /proc/net/netlink as anyone can. Then it closes 7778 and says
/// how many feeds it reached.
const FORGER: &str = "import os, socket, struct, sys
a = socket.socket(); a.bind(('127.0.0.1', 7777)); a.listen()
b = socket.socket(); b.bind(('127.0.0.1', 7778)); b.listen()
print(os.getpid(), flush=True)
cookie = int(sys.stdin.readline())
msg = bytearray(72)
msg[0] = 2   # AF_INET
msg[1] = 7   # TCP_CLOSE, as the kernel's destroy messages say
msg[44:52] = struct.pack('=II', cookie & 0xffffffff, cookie >> 32)
hdr = struct.pack('=IHHII', 16 + len(msg), 20, 0, 0, 0)  # SOCK_DIAG_BY_FAMILY
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)
feeds = [int(f[2]) for f in (l.split() for l in open('/proc/net/netlink').read().splitlines()[1:])
         if f[1] == '4' and f[3] == '0000000f']
for port in feeds:
    s.sendto(hdr + bytes(msg), (port, 0))
b.close()
print(len(feeds), flush=True)
sys.stdin.read()";

#[test]
fn a_forged_destroy_message_does_not_close_a_live_port() {
    if !is_root() {
        return skip("watching another user's namespace needs root");
    }
    let (Some(unshare), Some(python)) = (system_tool("unshare"), system_tool("python3")) else {
        return skip("unshare (util-linux) or python3 is not installed");
    };
    let mut cmd = Command::new(unshare);
    cmd.args(["-Urn"]).arg(python).args(["-c", FORGER]);
    let mut forger = as_nobody(cmd).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(forger.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("forger said {line:?}"));
    // No scan after the first: closes can only come from the destroy feed.
    let w = Watcher::builder()
        .netns(Netns::from_pid(pid).unwrap())
        .interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut cookie = None;
    let mut other_seen = false;
    while cookie.is_none() || !other_seen {
        let e = expect(&w, "both listeners open", |e| e.kind() == EventKind::Opened);
        if e.socket().port == 7777 {
            cookie = e.socket().cookie;
        }
        other_seen |= e.socket().port == 7778;
    }
    let cookie = cookie.expect("sock_diag gives cookies");
    writeln!(forger.stdin.as_mut().unwrap(), "{cookie}").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.trim().parse::<u32>().is_ok_and(|n| n >= 1), "reached the feed: {line:?}");
    // 7778's close is queued behind the forged datagram on the same socket: once it is
    // reported, the forgery has been read.
    loop {
        let e = expect(&w, "7778's close", |e| e.kind() == EventKind::Closed);
        assert_ne!(e.socket().port, 7777, "a datagram from nobody closed a live port");
        if e.socket().port == 7778 {
            break;
        }
    }
    assert!(w.current().iter().any(|s| s.port == 7777), "still open");
    drop(forger.stdin.take());
    let _ = forger.wait();
}

#[test]
fn a_reader_that_stops_reading_costs_bounded_memory() {
    // Nobody reads the events while listeners churn: past the queue, events are dropped and
    // counted, and the open set stays exact.
    let Some(python) = system_tool("python3") else {
        return skip("python3 is not installed");
    };
    let w = Watcher::builder()
        .filter(Filter::new().address("127.0.0.1".parse().unwrap()))
        .interval(Duration::from_millis(5))
        .build()
        .unwrap();
    // The listeners live in a child: a thousand fds more in this test process would push
    // other tests' sockets past the owner walk's per-process fd cap.
    let churn = "import socket, sys
while sys.stdin.readline():
    ls = []
    for _ in range(1000):
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); ls.append(s)
    print(' '.join(str(s.getsockname()[1]) for s in ls), flush=True)
    sys.stdin.readline()
    for s in ls: s.close()
    print('closed', flush=True)";
    let mut child = Command::new(python)
        .args(["-c", churn])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut rounds = 0;
    wait_for("events to be dropped", PATIENCE * 3, || {
        writeln!(stdin).unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let ports: Vec<u16> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
        wait_for("the batch to be seen", PATIENCE, || {
            let open = w.current();
            ports.iter().all(|p| open.iter().any(|s| s.port == *p)).then_some(())
        });
        writeln!(stdin).unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        rounds += 1;
        (w.dropped_events() > 0).then_some(())
    });
    drop(stdin);
    let _ = child.wait();
    assert!(rounds as usize * 2000 > EVENT_QUEUE, "more events than the queue holds");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    wait_for("current() to stay exact", PATIENCE, || {
        w.current().iter().any(|s| s.port == port).then_some(())
    });
    // What the queue holds is still delivered, in order.
    let first = w.recv_timeout(Duration::from_secs(1));
    assert!(matches!(first, Some(Event::Opened { .. })), "{first:?}");
}

#[test]
fn a_giant_command_line_is_cut_in_every_report() {
    if system_tool("python3").is_none() {
        return skip("python3 is not installed");
    }
    // The audit's process: 180 000 arguments (360 KB) and listeners. Each report carries
    // the owner: its command line is cut at 4 KiB and 128 arguments, visibly.
    let script = "import socket, sys
ls = []
for _ in range(5):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); ls.append(s)
print(' '.join(str(s.getsockname()[1]) for s in ls), flush=True)
sys.stdin.read()";
    let mut cmd = Command::new(system_tool("python3").unwrap());
    cmd.arg("-c").arg(script).args(std::iter::repeat_n("a", 180_000));
    let mut child = as_nobody(cmd).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ports: Vec<u16> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    let out = crate::util::run(&["list", "--format", "json", "--port", &ports[0].to_string()]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cmdline = list[0]["processes"][0]["cmdline"].as_str().expect("owner named").to_owned();
    assert!(cmdline.len() <= 4096 + 4 * 128, "cut: {} bytes", cmdline.len());
    assert!(cmdline.ends_with('…'), "visibly cut: …{}", &cmdline[cmdline.len() - 20..]);
    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn refused_threads_degrade_instead_of_aborting() {
    if !is_root() {
        return skip("limiting a process's threads with a pids cgroup needs root");
    }
    // cgroup v1's pids hierarchy, or the v2 root where the pids controller is enabled.
    let Some(group) = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"].iter().find_map(|root| {
        let group =
            std::path::Path::new(root).join(format!("portwatch-test-{}", std::process::id()));
        std::fs::create_dir(&group).ok()?;
        if group.join("pids.max").exists() {
            return Some(group);
        }
        let _ = std::fs::remove_dir(&group);
        None
    }) else {
        return skip("no pids cgroup controller to limit threads with");
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Another namespace to enter (entering needs a thread of its own), kept by a process
    // in it: found through /proc, not /run/netns, which other tests remount meanwhile.
    let mut inside = tool("unshare")
        .args(["--net", "/bin/sh", "-c", "read x"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    wait_for("the process to be in its own namespace", PATIENCE, || {
        (ns_of(inside.id()) != ns_of(std::process::id())).then_some(())
    });
    // The process itself and nothing more: every thread it tries to start is refused.
    std::fs::write(group.join("pids.max"), "1").unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} list --all-netns --format json",
        group.display(),
        env!("CARGO_BIN_EXE_portwatch")
    );
    let out =
        Command::new("/bin/sh").arg("-c").arg(&script).env("RUST_LOG", "warn").output().unwrap();
    drop(inside.stdin.take());
    let _ = inside.wait();
    let _ = std::fs::remove_dir(&group);
    let err = String::from_utf8_lossy(&out.stderr);
    // A panic here was exit 134 (panic = "abort") in release builds, 101 in test builds.
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "the host namespace is still listed: {err}");
    assert!(err.contains("cannot start a thread"), "says what it skipped and why: {err}");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list.iter().any(|s| s["port"] == port), "the host's sockets are listed");
}

#[test]
fn high_fidelity_is_not_fooled_by_a_listen_paired_with_a_shutdown() {
    use std::os::fd::AsRawFd;
    // A listener that will be shut down (unhashed, not freed: no destroy event) at the same
    // instant another one starts listening: the kernel's socket counters stay as they were.
    let decoy = TcpListener::bind("127.0.0.1:0").unwrap();
    let decoy_port = decoy.local_addr().unwrap().port();
    let w = Watcher::builder()
        .high_fidelity()
        .filter(Filter::new().address("127.0.0.1".parse().unwrap()))
        .build()
        .unwrap();
    expect(&w, "the decoy", |e| e.kind() == EventKind::Opened && e.socket().port == decoy_port);
    let hidden = TcpListener::bind("127.0.0.1:0").unwrap();
    nix::sys::socket::shutdown(decoy.as_raw_fd(), nix::sys::socket::Shutdown::Both).unwrap();
    let port = hidden.local_addr().unwrap().port();
    // It lives 300 ms: far longer than the 8 ms --hf promises to catch.
    std::thread::sleep(Duration::from_millis(300));
    drop(hidden);
    expect(&w, "the paired listener", |e| e.kind() == EventKind::Opened && e.socket().port == port);
}

/// The cgroup2 mount point (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on
/// pure v2 ones).
pub(crate) fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(std::path::PathBuf::from))?
    })
}

#[test]
fn a_cgroup_named_after_a_container_does_not_borrow_its_name() {
    if !is_root() {
        return skip("creating cgroups and moving processes needs root");
    }
    let (Some(cgroups), Some(python)) = (cgroup2_root(), system_tool("python3")) else {
        return skip("no cgroup2 mount, or python3 is not installed");
    };
    let id = "5eed".repeat(16);
    let me = std::process::id();
    let listen = |port: u16| {
        format!(
            "import os, socket, sys\ns = socket.socket(); s.bind(('0.0.0.0', {port})); \
             s.listen()\nprint(os.getpid(), flush=True)\nsys.stdin.read()"
        )
    };
    // The real container: its init in a namespace of its own, in docker-ID.scope.
    // The impostor: nobody, in its own user and network namespace, whose cgroup (delegated
    // to it, say) is named docker-ID.scope too.
    let mut procs = Vec::new();
    let mut groups = Vec::new();
    for (tag, port, user) in [("real", 7211u16, false), ("evil", 7212, true)] {
        let group =
            cgroups.join(format!("portwatch-test-{me}-{tag}")).join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&group).unwrap();
        let mut cmd = tool("unshare");
        cmd.arg(if user { "-Urn" } else { "--net" }).arg(&python).args(["-c", &listen(port)]);
        let mut child = if user { as_nobody(cmd) } else { cmd }
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        std::fs::write(group.join("cgroup.procs"), line.trim()).unwrap();
        procs.push((child, line.trim().parse::<u32>().unwrap()));
        groups.push(group);
    }
    let dir = crate::util::private_dir();
    let sock = dir.path().join("docker.sock");
    let (real_id, real_pid) = (id.clone(), procs[0].1);
    crate::util::fake_daemon(&sock, move |_| crate::util::running(&real_id, "realbox", real_pid));
    let out = crate::util::portwatch()
        .args(["list", "--all-netns", "--format", "json", "--no-processes"])
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    for (mut child, _) in procs {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    for g in &groups {
        let _ = std::fs::remove_dir(g);
        let _ = std::fs::remove_dir(g.parent().unwrap());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let on = |port: u16| {
        list.iter().find(|s| s["port"] == port).unwrap_or_else(|| panic!("{port} listed"))
    };
    assert_eq!(on(7211)["container"]["name"], "realbox", "the real container is named");
    assert!(on(7212)["container"].is_null(), "the impostor is not: {}", on(7212));
    assert!(err.contains("not naming"), "says why: {err}");
}

#[test]
fn sigterm_ends_a_watch_stuck_on_a_silent_docker_daemon() {
    // A daemon that takes the connection and never answers: the watcher is blocked in its
    // first Docker call when SIGTERM comes, and must end then, not at the call's deadline.
    let dir = crate::util::private_dir();
    let sock = dir.path().join("docker.sock");
    let daemon = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut child = crate::util::portwatch()
        .args(["watch", "--container", "silent"])
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_held, _) = daemon.accept().unwrap();
    crate::util::sigterm(child.id());
    let status = wait_for("watch to end on SIGTERM", PATIENCE, || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "ended by the signal, not by the call's deadline: {status:?} {err}");
    assert!(!err.contains("did not answer"), "{err}");
}
