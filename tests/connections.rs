//! `watch --connections` end to end: a thousand short connections (connected, accepted and
//! closed within a millisecond) each reported with the right pid, in and out, in the host and
//! in a sandbox namespace; an accept named after the listener's owner, never whichever task
//! the kernel interrupted; `--remote`, `--ignore-remote` and `--cooldown`; the watcher's own
//! connections (its hooks') left out unless asked; the scanning fallback seeing a long-lived
//! connection and its close.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::schema::assert_event_line;
use crate::util::{PATIENCE, WatchCmd, is_root, json, skip, system_tool, tool};

/// Makes N connections from ADDR to its own listener on ADDR: each connected, accepted and closed at
/// once (well within a millisecond on loopback). Then prints `pid port` and one line per
/// connection, `client_cookie client_port accepted_cookie`. With `hold`, it keeps the last
/// connection open until its stdin closes, printing the line first.
const CONNECTOR: &str = r#"
import os, socket, sys
fam, addr, n, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "hold"
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
cookie = lambda s: int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), sys.byteorder)
l = socket.socket(af, socket.SOCK_STREAM)
l.bind((addr, 0))
l.listen(128)
port = l.getsockname()[1]
lines = []
for i in range(n):
    c = socket.socket(af, socket.SOCK_STREAM)
    c.bind((addr, 0))  # so both ends are ADDR, whatever the loopback address
    c.connect((addr, port))
    a, _ = l.accept()
    lines.append("%d %d %d" % (cookie(c), c.getsockname()[1], cookie(a)))
    if hold and i == n - 1:
        break
    a.close()
    c.close()
print(os.getpid(), port)
print("\n".join(lines), flush=True)
if hold:
    sys.stdin.read()
"#;

/// What a connector did.
struct Connector {
    pid: u32,
    port: u16,
    /// (client cookie, client port, accepted cookie), one per connection.
    conns: Vec<(u64, u16, u64)>,
}

fn parse(text: &str) -> Connector {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().expect("pid line").split_whitespace().collect();
    let conns = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().expect("number")).collect();
            (f[0], f[1] as u16, f[2])
        })
        .collect();
    Connector { pid: head[0].parse().expect("pid"), port: head[1].parse().expect("port"), conns }
}

/// Runs the connector to the end, through `prefix` (e.g. `unshare --net`, where loopback is
/// brought up first).
fn connect(prefix: &[&str], fam: &str, addr: &str, n: usize) -> Connector {
    let python = system_tool("python3").expect("python3");
    let ip = system_tool("ip").expect("ip");
    let script = format!(
        "{} link set lo up && exec {} -c \"$0\" {fam} {addr} {n} no",
        ip.display(),
        python.display()
    );
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = tool(first);
            c.args(rest).arg("/bin/sh");
            c
        }
        None => Command::new("/bin/sh"),
    };
    let out = cmd.args(["-c", &script, CONNECTOR]).output().expect("run the connector");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = parse(&String::from_utf8(out.stdout).expect("utf-8"));
    assert_eq!(c.conns.len(), n);
    c
}

/// Root and the tools: CI has them, and must not skip.
fn can_run(what: &str) -> bool {
    if !is_root() {
        skip(&format!("{what} needs root"));
        return false;
    }
    for t in ["python3", "ip"] {
        if system_tool(t).is_none() {
            skip(&format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// Connection events of `w` by (event, cookie), until `done` holds for them; each line is
/// checked against the schema.
fn collect_until(
    w: &WatchCmd,
    limit: Duration,
    mut done: impl FnMut(&HashMap<(String, u64), serde_json::Value>) -> bool,
) -> HashMap<(String, u64), serde_json::Value> {
    let mut seen = HashMap::new();
    let deadline = Instant::now() + limit;
    while !done(&seen) {
        assert!(Instant::now() < deadline, "timed out; stderr: {}", w.stderr());
        for line in w.collect(Duration::from_millis(200)) {
            let v = json(&line);
            if let (Some(event), Some(cookie)) = (v["event"].as_str(), v["cookie"].as_u64())
                && ["connect", "accept", "disconnect"].contains(&event)
            {
                assert_event_line(&line);
                seen.insert((event.to_owned(), cookie), v);
            }
        }
    }
    seen
}

/// Every connection of `c` in `seen`: the connect with the connector's pid (it called
/// connect), the accept with the connector's pid (it owns the listener: no other task, such
/// as one the softirq interrupted), both disconnects with the same owners and a duration.
fn assert_every_connection(seen: &HashMap<(String, u64), serde_json::Value>, c: &Connector) {
    let pid = serde_json::json!([c.pid]);
    for &(client, client_port, accepted) in &c.conns {
        let get = |event: &str, cookie: u64| {
            seen.get(&(event.to_owned(), cookie))
                .unwrap_or_else(|| panic!("no {event} for cookie {cookie}"))
        };
        let connect = get("connect", client);
        assert_eq!(connect["pids"], pid, "{connect}");
        assert_eq!(connect["processes"][0]["comm"], "python3", "{connect}");
        assert_eq!(
            (connect["direction"].as_str(), connect["source"].as_str()),
            (Some("out"), Some("ebpf"))
        );
        assert_eq!(connect["port"], client_port, "{connect}");
        assert_eq!(connect["remote_port"], c.port, "{connect}");
        assert!(connect["kernel_ns"].as_u64().is_some_and(|t| t > 0), "{connect}");
        let accept = get("accept", accepted);
        assert_eq!(accept["pids"], pid, "the listener's owner: {accept}");
        assert_eq!(accept["direction"], "in", "{accept}");
        assert_eq!(
            (accept["port"].as_u64(), accept["remote_port"].as_u64()),
            (Some(c.port.into()), Some(client_port.into()))
        );
        for (cookie, direction) in [(client, "out"), (accepted, "in")] {
            let d = get("disconnect", cookie);
            assert_eq!(d["pids"], pid, "owners recorded at connect/accept: {d}");
            assert_eq!(
                (d["direction"].as_str(), d["established"].as_bool()),
                (Some(direction), Some(true)),
                "{d}"
            );
            assert!(d["duration_ns"].as_u64().is_some_and(|n| n > 0 && n < 10_000_000_000), "{d}");
        }
    }
}

fn all_four(c: &Connector) -> impl FnMut(&HashMap<(String, u64), serde_json::Value>) -> bool + '_ {
    move |seen| {
        c.conns.iter().all(|&(client, _, accepted)| {
            seen.contains_key(&("disconnect".to_owned(), client))
                && seen.contains_key(&("disconnect".to_owned(), accepted))
        })
    }
}

#[test]
fn a_thousand_short_connections_in_the_host_each_with_the_right_pid_in_and_out() {
    if !can_run("loading eBPF programs") {
        return;
    }
    let w = WatchCmd::start(&[
        "--source",
        "ebpf",
        "--connections",
        "all",
        "--format",
        "json",
        "--no-initial",
    ]);
    w.ready();
    let v4 = connect(&[], "4", "127.0.0.1", 1000);
    let seen = collect_until(&w, PATIENCE * 3, all_four(&v4));
    assert_every_connection(&seen, &v4);
    let v6 = connect(&[], "6", "::1", 100);
    let seen = collect_until(&w, PATIENCE, all_four(&v6));
    assert_every_connection(&seen, &v6);
    assert!(!w.stderr().contains("dropped"), "nothing lost: {}", w.stderr());
    assert!(w.terminate().success());
}

#[test]
fn a_thousand_short_connections_in_a_sandbox_namespace_with_every_namespace_watched() {
    if !can_run("loading eBPF programs") {
        return;
    }
    if system_tool("unshare").is_none() {
        return skip("unshare (util-linux) is not installed");
    }
    let host = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let w = WatchCmd::start(&[
        "--source",
        "ebpf",
        "--connections",
        "all",
        "--format",
        "json",
        "--no-initial",
        "--all-netns",
    ]);
    w.ready();
    let c = connect(&["unshare", "--net"], "4", "127.0.0.1", 1000);
    let seen = collect_until(&w, PATIENCE * 3, all_four(&c));
    assert_every_connection(&seen, &c);
    let first = &seen[&("connect".to_owned(), c.conns[0].0)];
    assert_ne!(first["netns"], host, "reported in its own namespace: {first}");
    assert!(w.terminate().success());
}

#[test]
fn remote_and_ignore_remote_select_connections_by_peer() {
    if !can_run("loading eBPF programs") {
        return;
    }
    // Only ::1 peers, and of those not ::1 itself... is nothing; so: only loopback, minus
    // 127.0.0.0/8: the ::1 connections alone.
    let w = WatchCmd::start(&[
        "--source",
        "ebpf",
        "--connections",
        "all",
        "--format",
        "json",
        "--no-initial",
        "--remote",
        "127.0.0.0/8",
        "--remote",
        "::1",
        "--ignore-remote",
        "127.0.0.1",
    ]);
    w.ready();
    let v4 = connect(&[], "4", "127.0.0.1", 10);
    let v6 = connect(&[], "6", "::1", 10);
    let seen = collect_until(&w, PATIENCE, all_four(&v6));
    assert_every_connection(&seen, &v6);
    let cookies: HashSet<u64> = seen.keys().map(|(_, c)| *c).collect();
    for &(client, _, accepted) in &v4.conns {
        assert!(!cookies.contains(&client) && !cookies.contains(&accepted), "127.0.0.1 ignored");
    }
    assert!(w.terminate().success());
    // A bad prefix is a usage error naming the flag and the form.
    let out = crate::util::run(&["watch", "--connections", "in", "--remote", "10.0.0.0/33"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--remote") && err.contains("ADDRESS/BITS"), "{err}");
    let out = crate::util::run(&["watch", "--remote", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2), "--remote needs --connections");
}

#[test]
fn cooldown_reports_one_connection_per_remote_address_and_direction() {
    if !can_run("loading eBPF programs") {
        return;
    }
    // An address of our own in 127/8, so no other test's connections share its cooldown.
    let pid = std::process::id();
    let addr = format!("127.{}.{}.9", 100 + pid % 100, pid % 250);
    let w = WatchCmd::start(&[
        "--source",
        "ebpf",
        "--connections",
        "all",
        "--format",
        "json",
        "--no-initial",
        "--cooldown",
        "60",
        "--remote",
        &addr,
    ]);
    w.ready();
    let c = connect(&[], "4", &addr, 20);
    let (first_client, _, first_accepted) = c.conns[0];
    let seen = collect_until(&w, PATIENCE, |seen| {
        seen.contains_key(&("disconnect".to_owned(), first_client))
            && seen.contains_key(&("disconnect".to_owned(), first_accepted))
    });
    // Whatever else arrives within a second more.
    let mut seen = seen;
    for line in w.collect(Duration::from_secs(1)) {
        let v = json(&line);
        if let (Some(e), Some(cookie)) = (v["event"].as_str(), v["cookie"].as_u64()) {
            seen.insert((e.to_owned(), cookie), v);
        }
    }
    let mine: HashSet<u64> = c.conns.iter().flat_map(|&(a, _, b)| [a, b]).collect();
    let count = |event: &str| seen.keys().filter(|(e, c)| e == event && mine.contains(c)).count();
    assert_eq!((count("connect"), count("accept"), count("disconnect")), (1, 1, 2), "{seen:?}");
    assert!(w.terminate().success());
}

#[test]
fn the_watchers_own_hooks_connections_are_left_out_unless_asked() {
    if !can_run("loading eBPF programs") {
        return;
    }
    // Every event's hook connects to this listener: the hook's connections must not be
    // reported (they would feed themselves), unless --own-connections.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    // Accepts for as long as the test process lives (hooks connect at every event).
    std::thread::spawn(move || {
        for s in target.incoming() {
            drop(s);
        }
    });
    let hook = format!("exec /bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null");
    for (own, reported) in [(false, false), (true, true)] {
        let mut args = vec![
            "--source",
            "ebpf",
            "--connections",
            "out",
            "--format",
            "json",
            "--no-initial",
            "--remote",
            "127.0.0.1",
            "--exec",
            &hook,
        ];
        if own {
            args.push("--own-connections");
        }
        let w = WatchCmd::start(&args);
        w.ready();
        // The sentinel's open and close ran hooks; one more connection from outside.
        let _ = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ours = serde_json::json!([std::process::id()]);
        let to_target = |l: &str| {
            let v = json(l);
            (v["event"] == "connect" && v["remote_port"] == port).then_some(v)
        };
        if reported {
            // Each reported hook connection runs a hook that connects again: the loop that
            // leaving them out prevents. Only the first is waited for.
            w.expect("a hook's connection", |l| to_target(l).is_some_and(|v| v["pids"] != ours));
        } else {
            let lines = w.collect(Duration::from_secs(2));
            let seen: Vec<serde_json::Value> = lines.iter().filter_map(|l| to_target(l)).collect();
            assert!(seen.iter().all(|v| v["pids"] == ours), "only ours: {seen:?}");
            assert!(!seen.is_empty(), "ours is reported");
        }
        assert!(w.terminate().success());
    }
}

#[test]
fn scanning_sees_a_long_lived_connection_and_its_close_and_says_it_is_coarser() {
    if !can_run("reading other processes' sockets") {
        return;
    }
    let w = WatchCmd::start(&[
        "--source",
        "scan",
        "--interval",
        "0.05",
        "--connections",
        "all",
        "--format",
        "json",
        "--no-initial",
    ]);
    w.ready();
    assert!(w.stderr().contains("connection events from scanning"), "{}", w.stderr());
    let python = system_tool("python3").unwrap();
    let mut child = Command::new(&python)
        .args(["-c", CONNECTOR, "4", "127.0.0.1", "1", "hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    for _ in 0..2 {
        out.read_line(&mut text).unwrap();
    }
    let c = parse(&text);
    let (client, _, accepted) = c.conns[0];
    let seen = collect_until(&w, PATIENCE, |seen| {
        seen.contains_key(&("connect".to_owned(), client))
            && seen.contains_key(&("accept".to_owned(), accepted))
    });
    let connect = &seen[&("connect".to_owned(), client)];
    assert_eq!(connect["source"], "scan", "{connect}");
    assert_eq!(connect["pids"], serde_json::json!([c.pid]), "from /proc: {connect}");
    assert_eq!(seen[&("accept".to_owned(), accepted)]["pids"], serde_json::json!([c.pid]));
    // Closing ends both: the destroy feed reports them at once.
    drop(child.stdin.take());
    child.wait().unwrap();
    let seen = collect_until(&w, PATIENCE, all_four(&c));
    let d = &seen[&("disconnect".to_owned(), client)];
    assert_eq!((d["direction"].as_str(), d["source"].as_str()), (Some("out"), Some("scan")), "{d}");
    assert!(d["duration_ns"].as_u64().is_some_and(|n| n > 0), "{d}");
    assert!(w.terminate().success());
}

#[test]
fn the_library_reports_its_own_connections_only_when_asked() {
    if !can_run("loading eBPF programs") {
        return;
    }
    use portwatch_core::{Connections, Direction, Event, Source, Watcher};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for own in [false, true] {
        let w = Watcher::builder()
            .source(Source::Ebpf)
            .connections(Connections::Out)
            .own_connections(own)
            .remote("127.0.0.1".parse().unwrap())
            .report_initial(false)
            .build()
            .expect("a watcher with connection events");
        // Connects until one is reported (the programs are attached by the time build returns,
        // but a few tries cost nothing), then one more that lives a moment, then closes.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let local = conn.local_addr().unwrap().port();
            let _ = listener.accept().unwrap();
            drop(conn);
            while let Some(e) = w.recv_timeout(Duration::from_millis(100)) {
                if e.socket().port == local {
                    seen.push(e);
                }
            }
            if seen.len() >= 2 {
                break;
            }
        }
        if !own {
            assert!(seen.is_empty(), "own connections are left out by default: {seen:?}");
            continue;
        }
        let Some(Event::Connect { socket, kernel_ns, .. }) = seen.first() else {
            panic!("no connect: {seen:?}");
        };
        assert_eq!(socket.pids(), vec![std::process::id()]);
        assert_eq!(socket.remote.map(|r| r.port()), Some(port));
        assert!(kernel_ns.is_some());
        assert!(
            matches!(
                seen.get(1),
                Some(Event::Disconnect { direction: Direction::Out, established: true, .. })
            ),
            "{seen:?}"
        );
    }
}

#[test]
fn hooks_get_the_connection_in_their_environment() {
    if !can_run("loading eBPF programs") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hook = "echo \"hook $PORTWATCH_EVENT $PORTWATCH_DIRECTION $PORTWATCH_REMOTE_ADDR \
                $PORTWATCH_REMOTE_PORT ${PORTWATCH_DURATION_NS:+has-duration}\" >&2";
    let w = WatchCmd::start(&[
        "--source",
        "ebpf",
        "--connections",
        "out",
        "--no-initial",
        "--remote",
        "127.0.0.1/32",
        "--exec",
        hook,
    ]);
    w.ready();
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = listener.accept().unwrap();
    drop(conn);
    let want = [
        format!("hook connect out 127.0.0.1 {port} \n"),
        format!("hook disconnect out 127.0.0.1 {port} has-duration\n"),
    ];
    crate::util::wait_for("both hooks", PATIENCE, || {
        let err = w.stderr();
        want.iter().all(|l| err.contains(l.as_str())).then_some(())
    });
    assert!(w.terminate().success());
}
