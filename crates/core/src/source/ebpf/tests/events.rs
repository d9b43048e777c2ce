//! Events: every listener reported with its owner, namespace and cookie; bursts; loss.

use super::*;

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
    let want: Vec<(&Child, usize)> = children.iter().map(|c| (c, 2)).collect();
    let mut seen = Vec::new();
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), done_for(&want));
    for (child, (_, _, _, protocol, family, kinds)) in children.iter().zip(cases) {
        assert_reported(&seen, child, protocol, family, kinds);
        assert_eq!(of_child(&seen, child).len(), 2, "exactly two events for {child:?}");
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
    // An open names its caller; a close names only its socket (the cookie): joined here.
    let attribute = |seen: &[KernelEvent]| {
        let mut cookies: HashMap<u64, u32> = HashMap::new();
        let mut per_pid: HashMap<u32, Vec<Kind>> = HashMap::new();
        for e in seen {
            let pid = match e.kind {
                Kind::Listen | Kind::UdpBind if want.contains(&e.pid) => {
                    cookies.insert(e.cookie, e.pid);
                    e.pid
                }
                _ => match cookies.get(&e.cookie) {
                    Some(pid) => *pid,
                    None => continue,
                },
            };
            per_pid.entry(pid).or_default().push(e.kind);
        }
        per_pid
    };
    let mut seen = Vec::new();
    let mut count = 0;
    collect_until(&mut progs, &mut seen, Duration::from_secs(10), |seen| {
        count = attribute(seen).values().map(Vec::len).sum();
        count >= 2 * N
    });
    let per_pid = attribute(&seen);
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
    // Not "nothing lost yet": other tests' sockets, anywhere on the host, reach it too.
    let Some(mut progs) = load(&LoadOptions { ring_bytes: 4096 }) else { return };
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
    // What fits (46 records of 80 bytes and a header), plus what other tests' sockets write
    // into the room the drain frees: far from the burst's 200.
    assert!(n > 0 && n <= 2 * (4096 / 88), "{n} records kept by a 4 KiB ring");
    eprintln!("4 KiB ring buffer: {n} records kept, {lost} lost");
}

#[test]
fn udp_autobind_is_no_bind_and_connect_keeps_the_cookie() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    let sink = UdpSocket::bind("127.0.0.1:0").expect("loopback sink");
    let port = sink.local_addr().expect("addr").port().to_string();

    // sendto without bind: the kernel picks a port (autobind); never a listener, no event at
    // all (not even its release: the programs only report sockets they saw bound).
    let sender = run_child(&[], &python, ["udp", "4", "127.0.0.1", "sendto", &port]);
    // bind then connect: a bind event, then a connect event, for the same socket.
    let connector = run_child(&[], &python, ["udp", "4", "127.0.0.1", "connect", &port]);
    // connect without bind (what a resolver does): never a listener, no event either.
    let client = run_child(&[], &python, ["udp", "4", "127.0.0.1", "autoconnect", &port]);
    let mut seen = Vec::new();
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), done_for(&[(&connector, 3)]));
    let client_kinds: Vec<Kind> = of_child(&seen, &client).iter().map(|e| e.kind).collect();
    assert!(client_kinds.is_empty(), "a resolver-style socket is not reported: {client_kinds:?}");

    let sent: Vec<Kind> = of_child(&seen, &sender).iter().map(|e| e.kind).collect();
    assert!(sent.is_empty(), "autobind is not a bind, and its close is no listener's: {sent:?}");

    let conn: Vec<&KernelEvent> = of_child(&seen, &connector);
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
    assert_eq!(conn[0].addr, IpAddr::from([127, 0, 0, 1]), "the bind has the bound address");
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
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), done_for(&[(&child, 2)]));
    // listen(2) on an unbound socket enters LISTEN before the kernel picks the port: the
    // Listen event says port 0 (documented on Kind::Listen); the Unlisten has the port.
    let mine: Vec<(Kind, u16, u64)> =
        of_child(&seen, &child).iter().map(|e| (e.kind, e.port, e.cookie)).collect();
    assert_eq!(mine, [(Kind::Listen, 0, child.cookie), (Kind::Unlisten, child.port, child.cookie)]);
}

#[test]
fn the_descriptor_polls_readable_when_an_event_arrives() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    // Catch up, then make events while blocked in one long poll: it must end with a wakeup
    // (the kernel wakes a consumer that has read everything when the next record is
    // submitted), not with the timeout.
    progs.drain(|_| {});
    let spawner =
        std::thread::spawn(move || run_child(&[], &python, ["udp", "6", "::1", "none", "0"]));
    let mut fds = [PollFd::new(progs.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
    assert_eq!(n, 1, "10 s without a wakeup while a child made two events");
    let child = spawner.join().expect("child thread");
    let mut seen = Vec::new();
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), done_for(&[(&child, 2)]));
    assert_reported(&seen, &child, Protocol::Udp, Family::Ipv6, &[Kind::UdpBind, Kind::UdpRelease]);
}

/// Reads exits until one of `pid` arrives or `within` passes; every exit read.
fn exits_until(progs: &mut Programs, pid: u32, within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    let mut exits = Vec::new();
    loop {
        progs.drain(|_| {});
        exits.extend(progs.take_exits());
        if exits.contains(&pid) || Instant::now() >= deadline {
            return exits;
        }
        let mut fds = [PollFd::new(progs.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
    }
}

/// A process that says "ready", then on a line from stdin runs a thread that exits at once
/// and says "joined", then waits for stdin to close.
const THREADED: &str = r#"
import sys, threading
print("ready", flush=True)
sys.stdin.readline()
t = threading.Thread(target=lambda: None)
t.start()
t.join()
print("joined", flush=True)
sys.stdin.read()
"#;

#[test]
fn the_exit_of_an_owner_asked_about_is_reported_once_its_last_thread_exits() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    let spawn = || {
        let mut child = Command::new(&python)
            .args(["-c", THREADED])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        (child, out)
    };
    let ((mut owner, mut said), (mut other, _other_out)) = (spawn(), spawn());
    let pids: HashSet<u32> = [owner.id()].into();
    assert_eq!(progs.set_owners(&pids), 0, "room for one pid");
    // One of its threads exits while the process lives on: no exit.
    writeln!(owner.stdin.as_mut().expect("stdin"), "thread").expect("write");
    let mut line = String::new();
    said.read_line(&mut line).expect("joined");
    assert_eq!(line.trim(), "joined");
    // The other process was not asked about: its exit never comes.
    drop(other.stdin.take());
    other.wait().expect("wait");
    drop(owner.stdin.take());
    owner.wait().expect("wait");
    let exits = exits_until(&mut progs, owner.id(), Duration::from_secs(5));
    assert_eq!(exits, [owner.id()], "exactly the owner's exit, once");

    // Taken off the set: its next exit (a reused pid, say) is not reported.
    assert_eq!(progs.set_owners(&HashSet::new()), 0);
    let (mut again, _again_out) = spawn();
    assert_eq!(progs.set_owners(&[again.id()].into()), 0);
    assert_eq!(progs.set_owners(&HashSet::new()), 0);
    drop(again.stdin.take());
    again.wait().expect("wait");
    let exits = exits_until(&mut progs, again.id(), Duration::from_millis(500));
    assert!(exits.is_empty(), "no longer asked about, yet reported: {exits:?}");
}

#[test]
fn accepted_connections_are_no_listener_closes() {
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Each accepted connection's socket is cloned from the listener, in LISTEN, then set to
    // SYN_RECV: a change out of LISTEN that is not the listener closing.
    let clients: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let accepted: Vec<_> = (0..3).map(|_| listener.accept().expect("accept").0).collect();
    drop((clients, accepted));
    drop(listener);
    let netns = host_netns();
    let ours = |e: &KernelEvent| e.netns == netns && e.port == port && e.protocol == Protocol::Tcp;
    let mut seen = Vec::new();
    collect_until(&mut progs, &mut seen, Duration::from_secs(5), |seen| {
        seen.iter().any(|e| ours(e) && e.kind == Kind::Unlisten)
    });
    let kinds: Vec<Kind> = seen.iter().filter(|e| ours(e)).map(|e| e.kind).collect();
    assert_eq!(kinds, [Kind::Listen, Kind::Unlisten], "the listener's; no event per accept");
}

#[test]
fn only_the_namespaces_asked_for_are_reported() {
    let Some(mut progs) = load(&LoadOptions::default()) else { return };
    let host = host_netns();
    // Another namespace only (no process is in one with inode 1): the host's listeners are
    // not sent at all.
    assert!(progs.report_netns(Some(&[1].into())));
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let left_out = [tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port()];
    // Then the host's: a listener opened after is, and the ring buffer is in order, so when
    // it arrives the ones before would have.
    assert!(progs.report_netns(Some(&[host].into())));
    let seen_after = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let after = seen_after.local_addr().unwrap().port();
    let ours = |e: &KernelEvent| e.netns == host && e.kind != Kind::Unlisten;
    let mut seen = Vec::new();
    assert!(collect_until(&mut progs, &mut seen, Duration::from_secs(5), |seen| {
        seen.iter().any(|e| ours(e) && e.port == after)
    }));
    let leaked: Vec<_> = seen.iter().filter(|e| ours(e) && left_out.contains(&e.port)).collect();
    assert!(leaked.is_empty(), "another namespace's events were sent: {leaked:?}");
    // Every namespace again.
    assert!(progs.report_netns(None));
    let again = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = again.local_addr().unwrap().port();
    assert!(collect_until(&mut progs, &mut seen, Duration::from_secs(5), |seen| {
        seen.iter().any(|e| ours(e) && e.port == port && e.kind == Kind::UdpBind)
    }));
    drop((tcp, udp));
}
