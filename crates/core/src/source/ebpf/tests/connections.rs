//! The connection programs against the real kernel: short connections made by a child
//! process, in the host and in a sandbox namespace, each connect with the child's pid, each
//! accept and close without any pid, and nothing for the loader's own connects.

use super::*;
use crate::source::ebpf::{ConnEvent, ConnKind, ConnOptions, ConnPrograms, Dir};

/// Makes `n` connections to its own listener on `addr`, each connected, accepted and closed at
/// once, then prints `pid port` and one line per connection: `client_cookie client_port
/// accepted_cookie`.
const CONNECTOR: &str = r#"
import os, socket, sys
fam, addr, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
cookie = lambda s: int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), sys.byteorder)
l = socket.socket(af, socket.SOCK_STREAM)
l.bind((addr, 0))
l.listen(128)
port = l.getsockname()[1]
lines = []
for _ in range(n):
    c = socket.socket(af, socket.SOCK_STREAM)
    c.connect((addr, port))
    a, _ = l.accept()
    lines.append("%d %d %d" % (cookie(c), c.getsockname()[1], cookie(a)))
    a.close()
    c.close()
print(os.getpid(), port)
print("\n".join(lines), flush=True)
"#;

struct Connector {
    pid: u32,
    port: u16,
    /// (client cookie, client port, accepted cookie)
    conns: Vec<(u64, u16, u64)>,
}

fn run_connector(prefix: &[&str], python: &str, fam: &str, addr: &str, n: usize) -> Connector {
    let script =
        format!("ip link set lo up 2>/dev/null; exec {python} -c '{CONNECTOR}' {fam} {addr} {n}");
    let mut cmd = Command::new(prefix.first().copied().unwrap_or("sh"));
    if prefix.is_empty() {
        cmd.args(["-c", &script]);
    } else {
        cmd.args(&prefix[1..]).args(["sh", "-c", &script]);
    }
    let out = cmd.output().expect("spawn the connector");
    assert!(out.status.success(), "connector: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().expect("pid line").split_whitespace().collect();
    let conns = lines
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().expect("number")).collect();
            (f[0], f[1] as u16, f[2])
        })
        .collect::<Vec<_>>();
    assert_eq!(conns.len(), n);
    Connector { pid: head[0].parse().expect("pid"), port: head[1].parse().expect("port"), conns }
}

fn load_conns(opts: &ConnOptions) -> Option<ConnPrograms> {
    loaded(ConnPrograms::load(opts), "the connection programs")
}

fn collect(
    progs: &mut ConnPrograms,
    within: Duration,
    mut done: impl FnMut(&[ConnEvent]) -> bool,
) -> Vec<ConnEvent> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        progs.drain(|e| seen.push(e));
        if done(&seen) || Instant::now() > deadline {
            return seen;
        }
        let mut fds = [PollFd::new(progs.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
    }
}

/// Every connection of `c` reported: connect with its pid, comm, both ends; accept with the
/// listener's (the same process); both disconnects with pid 0; durations from the kernel.
fn assert_all_reported(seen: &[ConnEvent], c: &Connector, netns: u64) {
    let by_cookie: HashMap<(u64, u8), &ConnEvent> =
        seen.iter().map(|e| ((e.cookie, e.kind as u8), e)).collect();
    for &(client, client_port, accepted) in &c.conns {
        let connect = by_cookie
            .get(&(client, ConnKind::Connect as u8))
            .unwrap_or_else(|| panic!("no connect for cookie {client}"));
        assert_eq!((connect.pid, connect.tid), (c.pid, c.pid), "the caller's pid");
        assert_eq!(connect.dir, Dir::Out);
        assert_eq!(connect.netns, netns);
        assert_eq!(connect.local.port(), client_port, "local port known at connect");
        assert_eq!(connect.remote.port(), c.port);
        assert!(connect.comm.starts_with(b"python"), "{:?}", connect.comm);
        let accept = by_cookie
            .get(&(accepted, ConnKind::Accept as u8))
            .unwrap_or_else(|| panic!("no accept for cookie {accepted}"));
        // The process that called listen(2) on the listener, recorded then: never the task a
        // softirq happened to interrupt.
        assert_eq!(accept.pid, c.pid, "the listener's owner");
        assert_eq!(accept.dir, Dir::In);
        assert_eq!((accept.local.port(), accept.remote.port()), (c.port, client_port));
        for (cookie, dir) in [(client, Dir::Out), (accepted, Dir::In)] {
            let d = by_cookie
                .get(&(cookie, ConnKind::Disconnect as u8))
                .unwrap_or_else(|| panic!("no disconnect for cookie {cookie}"));
            assert_eq!((d.pid, d.dir, d.established), (0, dir, true));
            assert!(d.duration_ns > 0 && d.duration_ns < 10_000_000_000, "{}", d.duration_ns);
        }
    }
}

fn done_for(c: &Connector) -> impl FnMut(&[ConnEvent]) -> bool + '_ {
    let want: HashSet<u64> = c.conns.iter().flat_map(|&(a, _, b)| [a, b]).collect();
    move |seen| {
        seen.iter().filter(|e| e.kind == ConnKind::Disconnect && want.contains(&e.cookie)).count()
            >= want.len()
    }
}

#[test]
fn short_connections_in_the_host_are_all_reported_with_the_callers_pid() {
    let Some(python) = python_or_skip() else { return };
    let Some(mut progs) = load_conns(&ConnOptions::default()) else { return };
    for (fam, addr) in [("4", "127.0.0.1"), ("6", "::1")] {
        let c = run_connector(&[], &python, fam, addr, 200);
        let seen = collect(&mut progs, Duration::from_secs(10), done_for(&c));
        assert_all_reported(&seen, &c, host_netns());
        let ip: IpAddr = addr.parse().unwrap();
        let mine: HashSet<u64> = c.conns.iter().flat_map(|&(a, _, b)| [a, b]).collect();
        for e in seen.iter().filter(|e| mine.contains(&e.cookie)) {
            assert_eq!((e.local.ip(), e.remote.ip()), (ip, ip), "both ends' addresses: {e:?}");
        }
    }
    assert_eq!(progs.lost(), (0, 0));
}

#[test]
fn short_connections_in_a_sandbox_namespace_are_reported() {
    let Some(python) = python_or_skip() else { return };
    if !std::path::Path::new("/usr/bin/unshare").exists() {
        return skip("no /usr/bin/unshare");
    }
    let Some(mut progs) = load_conns(&ConnOptions::default()) else { return };
    let c = run_connector(&["/usr/bin/unshare", "--net"], &python, "4", "127.0.0.1", 100);
    let seen = collect(&mut progs, Duration::from_secs(10), done_for(&c));
    let netns = seen.iter().find(|e| e.cookie == c.conns[0].0).map(|e| e.netns).expect("seen");
    assert_ne!(netns, host_netns(), "the sandbox's namespace");
    assert_all_reported(&seen, &c, netns);
}

#[test]
fn unwanted_directions_and_remotes_are_dropped_in_the_kernel() {
    let Some(python) = python_or_skip() else { return };
    // Outbound only, not to 127.0.0.0/8: only the ::1 connects of the child, and their closes.
    let opts = ConnOptions {
        inbound: false,
        ignore: vec!["127.0.0.0/8".parse().unwrap()],
        ..ConnOptions::default()
    };
    let Some(mut progs) = load_conns(&opts) else { return };
    let v4 = run_connector(&[], &python, "4", "127.0.0.1", 20);
    let v6 = run_connector(&[], &python, "6", "::1", 20);
    let want: HashSet<u64> = v6.conns.iter().map(|c| c.0).collect();
    let seen = collect(&mut progs, Duration::from_secs(10), |seen| {
        seen.iter().filter(|e| e.kind == ConnKind::Disconnect && want.contains(&e.cookie)).count()
            >= want.len()
    });
    let cookies: HashSet<u64> = seen.iter().map(|e| e.cookie).collect();
    for &(client, _, accepted) in &v6.conns {
        assert!(cookies.contains(&client), "the child's ::1 connect");
        assert!(!cookies.contains(&accepted), "no inbound");
    }
    for &(client, _, accepted) in &v4.conns {
        assert!(!cookies.contains(&client) && !cookies.contains(&accepted), "127/8 ignored");
    }
    assert!(seen.iter().all(|e| e.kind != ConnKind::Accept));
}

#[test]
fn the_loaders_own_connects_and_its_childrens_are_dropped_in_the_kernel() {
    let Some(python) = python_or_skip() else { return };
    let own = ConnOptions { inbound: false, own_tgid: std::process::id(), ..Default::default() };
    let Some(mut hiding) = load_conns(&own) else { return };
    let Some(mut showing) = load_conns(&ConnOptions { inbound: false, ..Default::default() })
    else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("bound").port();
    let _own = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let child = run_connector(&[], &python, "4", "127.0.0.1", 5);
    let want: HashSet<u64> = child.conns.iter().map(|c| c.0).collect();
    // The other instance sees both, so they happened while the programs were attached.
    let shown = collect(&mut showing, Duration::from_secs(10), |seen| {
        seen.iter().any(|e| e.pid == std::process::id() && e.remote.port() == port)
            && seen
                .iter()
                .filter(|e| e.kind == ConnKind::Disconnect && want.contains(&e.cookie))
                .count()
                >= want.len()
    });
    assert!(shown.iter().any(|e| e.pid == std::process::id()), "the other instance saw it");
    let hidden = collect(&mut hiding, Duration::from_millis(200), |_| false);
    assert!(hidden.iter().all(|e| e.pid != std::process::id()), "own connect left out");
    assert!(hidden.iter().all(|e| !want.contains(&e.cookie)), "a child's left out");
}

#[test]
fn a_full_ring_buffer_is_counted_not_invented() {
    let Some(python) = python_or_skip() else { return };
    // One page: about 39 records, and nobody reads until the child is done (400 records).
    let Some(mut progs) = load_conns(&ConnOptions { ring_bytes: 4096, ..Default::default() })
    else {
        return;
    };
    let c = run_connector(&[], &python, "4", "127.0.0.1", 100);
    let seen = collect(&mut progs, Duration::from_millis(100), |_| false);
    let (lost, _) = progs.lost();
    assert!(lost > 0, "the kernel counted what did not fit");
    let mine: HashSet<u64> = c.conns.iter().flat_map(|&(a, _, b)| [a, b]).collect();
    let mut started = HashSet::new();
    for e in seen.iter().filter(|e| mine.contains(&e.cookie)) {
        match e.kind {
            ConnKind::Connect => {
                assert_eq!(e.pid, c.pid, "a connect names its caller even under loss");
                started.insert(e.cookie);
            }
            ConnKind::Accept => {
                started.insert(e.cookie);
            }
            // A connection whose start was dropped is forgotten by the kernel: no close of a
            // connection nobody was told of.
            ConnKind::Disconnect => assert!(started.contains(&e.cookie), "{e:?}"),
        }
    }
}

/// Not a test on its own: holds the connection programs for `make bench-connections`
/// (benches/conn_cost.py) until stdin closes. Does nothing unless PORTWATCH_EBPF_HOLD=1.
#[test]
#[ignore = "helper process of benches/conn_cost.py"]
fn hold_connections() {
    if std::env::var_os(HOLD).is_none_or(|v| v != "1") {
        return;
    }
    let progs = ConnPrograms::load(&ConnOptions::default()).expect("load in the helper");
    let ids: Vec<String> = progs.program_ids().iter().map(u32::to_string).collect();
    println!("PW_HOLD {}", ids.join(" "));
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    // The ring buffer fills while nobody reads it: what the kernel then dropped is counted.
    println!("PW_LOST {:?}", progs.lost());
}
