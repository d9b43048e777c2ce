//! The Watcher and `portwatch watch` against real sockets and processes.

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use portwatch_core::{Event, EventKind, Filter, Protocol, Watcher};

use crate::schema::assert_event_line;
use crate::util::{Holder, PATIENCE, WatchCmd, json, portwatch, private_dir, run, wait_for};

fn me() -> u32 {
    std::process::id()
}

/// Waits for the first event matching `want`, failing after `PATIENCE`.
pub fn expect(w: &Watcher, what: &str, mut want: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + PATIENCE;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(e) = w.recv_timeout(left)
            && want(&e)
        {
            return e;
        }
    }
    panic!("no {what} within {PATIENCE:?}");
}

/// Returns once the watcher reports new sockets: opens short-lived sentinels until one is
/// reported (one open before the first scan would count as initial).
pub fn ready(w: &Watcher) {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let sentinel = crate::util::sentinel();
        let port = sentinel.local_addr().unwrap().port();
        // Every event of the window is read: with kernel events each sentinel is reported,
        // open and close, and reading one a round would fall further behind each round.
        let window = Instant::now() + Duration::from_millis(200);
        while let Some(left) = window.checked_duration_since(Instant::now()) {
            match w.recv_timeout(left) {
                Some(e) if on_port(&e, "open", port) && !e.initial() => return,
                Some(_) => {}
                None => break,
            }
        }
        drop(sentinel);
    }
    panic!("watcher did not start reporting within {PATIENCE:?}");
}

/// Waits until events matching every one of `wants` have arrived (in any order); returns
/// every event seen meanwhile.
fn expect_all(w: &Watcher, what: &str, wants: &[&dyn Fn(&Event) -> bool]) -> Vec<Event> {
    let mut seen = Vec::new();
    let mut found: Vec<Option<Event>> = vec![None; wants.len()];
    let deadline = Instant::now() + PATIENCE;
    while found.iter().any(Option::is_none) {
        let left = deadline.checked_duration_since(Instant::now());
        let Some(e) = left.and_then(|l| w.recv_timeout(l)) else {
            panic!("not all of {what} within {PATIENCE:?}: got {found:?}");
        };
        if let Some(i) = wants.iter().enumerate().position(|(i, f)| found[i].is_none() && f(&e)) {
            found[i] = Some(e.clone());
        }
        seen.push(e);
    }
    seen
}

/// Collects every event for `quiet` after the last one.
fn drain(w: &Watcher, quiet: Duration) -> Vec<Event> {
    let mut v = Vec::new();
    while let Some(e) = w.recv_timeout(quiet) {
        v.push(e);
    }
    v
}

/// Whether `e` is of `kind` (`open`, `close`, `owners`: the JSON names) on `port`.
fn on_port(e: &Event, kind: &str, port: u16) -> bool {
    let is = match kind {
        "open" => EventKind::Opened,
        "close" => EventKind::Closed,
        "owners" => EventKind::OwnersChanged,
        other => panic!("no event kind {other}"),
    };
    e.kind() == is && e.socket().port == port
}

#[test]
fn open_and_close_with_pid_and_instant_close() {
    let w = Watcher::builder()
        .interval(Duration::from_millis(50))
        .filter(Filter::new().protocols(&[Protocol::Tcp, Protocol::Udp]))
        .report_initial(false)
        .build()
        .unwrap();
    ready(&w);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let opened = expect(&w, "open", |e| on_port(e, "open", port));
    assert!(opened.socket().pids().contains(&me()));
    assert!(!opened.initial());
    assert!(w.current().iter().any(|s| s.port == port), "current() shows it");
    drop(l);
    let closed = expect(&w, "close", |e| on_port(e, "close", port));
    assert!(closed.socket().pids().contains(&me()), "last owners travel with the close");
    assert!(!w.current().iter().any(|s| s.port == port));

    let u = UdpSocket::bind("[::1]:0").unwrap();
    let uport = u.local_addr().unwrap().port();
    expect(&w, "udp open", |e| on_port(e, "open", uport) && e.socket().protocol == Protocol::Udp);
    drop(u);
    expect(&w, "udp close", |e| on_port(e, "close", uport));
}

#[test]
fn restart_inside_grace_is_not_reported() {
    let w = Watcher::builder()
        .interval(Duration::from_millis(20))
        .close_grace(Duration::from_millis(1500))
        .report_initial(false)
        .build()
        .unwrap();
    ready(&w);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    expect(&w, "open", |e| on_port(e, "open", addr.port()));
    drop(l);
    // Reopen at once on the same endpoint (std sets SO_REUSEADDR), as a restarting server.
    let again = TcpListener::bind(addr).unwrap();
    let events: Vec<_> = drain(&w, Duration::from_millis(2000))
        .into_iter()
        .filter(|e| e.socket().port == addr.port())
        .collect();
    assert!(events.is_empty(), "a restart is not an open or a close: {events:?}");
    // A real close is still reported, after the grace.
    let t = Instant::now();
    drop(again);
    expect(&w, "close after grace", |e| on_port(e, "close", addr.port()));
    assert!(t.elapsed() >= Duration::from_millis(1400), "grace respected: {:?}", t.elapsed());
}

#[test]
fn initial_sockets_are_flagged() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let w = Watcher::builder().interval(Duration::from_millis(50)).build().unwrap();
    let e = expect(&w, "initial open", |e| on_port(e, "open", port));
    assert!(e.initial());
}

#[test]
fn stop_ends_the_event_stream_promptly() {
    let w = Watcher::builder().interval(Duration::from_secs(3600)).build().unwrap();
    let stop = w.stop_handle();
    let t = Instant::now();
    stop.stop();
    // The iterator ends without waiting for the hour-long interval.
    let n = w.events().count();
    assert!(t.elapsed() < Duration::from_secs(5), "stopped in {:?} after {n} events", t.elapsed());
}

#[test]
fn bad_settings_name_the_setting() {
    for (b, setting) in [
        (Watcher::builder().interval(Duration::ZERO), "interval"),
        (Watcher::builder().burst_scans(0), "burst_scans"),
        (
            Watcher::builder()
                .interval(Duration::from_millis(100))
                .burst_scans(5)
                .burst_delay(Duration::from_millis(50)),
            "burst_delay",
        ),
        (Watcher::builder().close_grace(Duration::from_secs(7200)), "close_grace"),
        // Below the floor a watcher only spins a core.
        (Watcher::builder().interval(Duration::from_micros(999)), "interval"),
        (Watcher::builder().filter(Filter::new().port_range(9000, 8000)), "port_range"),
        (Watcher::builder().filter(Filter::new().user("no-such-user-here")), "user"),
    ] {
        match b.build() {
            Err(portwatch_core::Error::InvalidSetting { setting: s, .. }) => assert_eq!(s, setting),
            Err(e) => panic!("{setting}: unexpected {e}"),
            Ok(_) => panic!("{setting}: accepted"),
        }
    }
    match Watcher::builder().interval(Duration::from_micros(999)).build() {
        Err(e) => assert!(e.to_string().contains("1ms"), "the floor is named: {e}"),
        Ok(_) => panic!("999 µs accepted"),
    }
    // The one-shot query checks its filter the same way.
    let backwards = portwatch_core::Query::new().filter(Filter::new().port_range(9000, 8000));
    match backwards.run() {
        Err(portwatch_core::Error::InvalidSetting { setting, reason }) => {
            assert_eq!(setting, "port_range");
            assert!(reason.contains("9000-8000"), "{reason}");
        }
        other => panic!("a backwards range: {other:?}"),
    }
}

#[test]
fn a_pid_that_is_no_process_is_refused() {
    // Pids stop at pid_max (at most 2^22), so this one never exists.
    let filter = Filter::new().pid(99_999_999, false);
    match Watcher::builder().filter(filter.clone()).build() {
        Err(portwatch_core::Error::NoSuchProcess { pid }) => assert_eq!(pid, 99_999_999),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a watcher for no process was built"),
    }
    let out = portwatch().args(["watch", "--pid", "99999999"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no process 99999999"), "{stderr}");
    let out = portwatch().args(["list", "--pid", "99999999"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn snapshot_continuity_across_restarts() {
    let dir = private_dir();
    let path = dir.path().join("snapshot");
    let stays = TcpListener::bind("127.0.0.1:0").unwrap();
    let goes = TcpListener::bind("127.0.0.1:0").unwrap();
    let (stays_port, goes_port) =
        (stays.local_addr().unwrap().port(), goes.local_addr().unwrap().port());
    let builder = || Watcher::builder().interval(Duration::from_millis(50)).snapshot(&path);

    let first = builder().build().unwrap();
    expect_all(
        &first,
        "both opens",
        &[&|e| on_port(e, "open", stays_port), &|e| on_port(e, "open", goes_port)],
    );
    first.stop();
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("portwatch-snapshot 1"));

    // While no watcher runs: one closes, one opens.
    drop(goes);
    let new = TcpListener::bind("127.0.0.1:0").unwrap();
    let new_port = new.local_addr().unwrap().port();

    let second = builder().build().unwrap();
    let mut got = expect_all(
        &second,
        "the close of the port gone meanwhile and the new port",
        &[&|e| on_port(e, "close", goes_port), &|e| on_port(e, "open", new_port)],
    );
    let new_open = got.iter().find(|e| on_port(e, "open", new_port)).unwrap();
    assert!(!new_open.initial(), "opened while down is a real open");
    got.extend(drain(&second, Duration::from_millis(500)));
    let again: Vec<_> = got.iter().filter(|e| on_port(e, "open", stays_port)).collect();
    assert!(again.is_empty(), "a port still open is not announced twice");
    drop(second);

    // A damaged snapshot is ignored, not fatal.
    std::fs::write(&path, "portwatch-snapshot 1\nnetns 1\ns garbage").unwrap();
    let third = builder().build().unwrap();
    expect(&third, "fresh start after corrupt snapshot", |e| on_port(e, "open", stays_port));
    drop(third);
    // A file that is not a snapshot at all is someone else's: refused, never replaced.
    std::fs::write(&path, "garbage").unwrap();
    match builder().build() {
        Err(portwatch_core::Error::Snapshot {
            problem: portwatch_core::SnapshotProblem::NotASnapshot,
            ..
        }) => {}
        other => panic!("{:?}", other.map(|_| "a watcher")),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
}

#[test]
fn text_output_keeps_the_reference_wording() {
    let w = WatchCmd::start(&["--interval", "0.05", "--no-initial", "-t"]);
    w.ready();
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let open = w.expect("open", |l| l.contains(&format!("New port opened: {port} ")));
    assert!(open.starts_with("[20") && open.contains("Z] New port opened"), "{open}");
    assert!(open.contains(&format!("pids: {} ", me())), "{open}");
    assert!(open.contains("(tcp, 0.0.0.0"), "{open}");
    drop(l);
    let close = w.expect("close", |l| l.contains(&format!("Port closed: {port} ")));
    assert!(close.contains(&format!("last pids: {} ", me())), "{close}");
    assert!(w.terminate().success(), "SIGTERM exits 0");
}

#[test]
fn json_lines_carry_ts_event_initial_and_socket_fields() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let w =
        WatchCmd::start(&["--format", "json", "--interval", "0.05", "--port", &port.to_string()]);
    let v = json(&w.expect("initial open", |l| l.contains("\"event\":\"open\"")));
    assert_eq!(v["initial"], true);
    assert_eq!(v["port"], port);
    assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    for key in ["proto", "family", "addr", "state", "inode", "cookie", "netns", "pids", "processes"]
    {
        assert!(v.get(key).is_some(), "{key} present");
    }
    drop(l);
    let v = json(&w.expect("close", |l| l.contains("\"event\":\"close\"")));
    assert_eq!(v["initial"], false);
    assert!(v["pids"].as_array().unwrap().iter().any(|p| p == me()));
}

#[test]
fn pid_filter_follows_one_process() {
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = TcpListener::bind("127.0.0.1:0").unwrap();
    let their_port = theirs.local_addr().unwrap().port();
    let child = Holder::spawn(&[&theirs]);
    drop(theirs);
    let w = WatchCmd::start(&[
        "--format",
        "json",
        "--interval",
        "0.05",
        "--pid",
        &child.pid.to_string(),
    ]);
    let v = json(&w.expect("the child's port", |l| l.contains(&format!("\"port\":{their_port},"))));
    assert_eq!(v["pids"], serde_json::json!([child.pid]));
    let rest = w.collect(Duration::from_millis(500));
    let other_port = other.local_addr().unwrap().port();
    assert!(
        rest.iter().all(|l| json(l)["pids"].as_array().unwrap().iter().any(|p| p == child.pid)),
        "only the child's ports: {rest:?}"
    );
    assert!(!rest.iter().any(|l| l.contains(&format!("\"port\":{other_port},"))));
    drop(child);
    w.expect("the child's close", |l| {
        l.contains("\"event\":\"close\"") && l.contains(&format!("\"port\":{their_port},"))
    });
}

#[test]
fn exec_hook_gets_event_in_environment_and_stdin() {
    let dir = private_dir();
    let out = dir.path().join("hook.out");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Event data reaches the hook as variables and stdin only; a port named like a shell
    // command could not run anything.
    let hook = format!(
        "echo \"$PORTWATCH_EVENT $PORTWATCH_PROTO $PORTWATCH_PORT $PORTWATCH_SCOPE $PORTWATCH_PIDS\" >> {0}; cat >> {0}",
        out.display()
    );
    let w = WatchCmd::start(&["--interval", "0.05", "--port", &port.to_string(), "--exec", &hook]);
    let text = wait_for("the hook to run", PATIENCE, || {
        std::fs::read_to_string(&out).ok().filter(|t| t.contains("\"event\":\"open\""))
    });
    assert!(text.contains(&format!("open tcp {port} loopback {}", me())), "{text}");
    let json_line = text.lines().find(|l| l.starts_with('{')).unwrap();
    assert_eq!(json(json_line)["port"], port);
    // A failing hook does not stop the watcher.
    drop(w);
    let w =
        WatchCmd::start(&["--interval", "0.05", "--port", &port.to_string(), "--exec", "exit 3"]);
    w.expect("output despite a failing hook", |l| l.contains(&format!("New port opened: {port} ")));
    drop(l);
    w.expect("close despite a failing hook", |l| l.contains(&format!("Port closed: {port} ")));
}

#[test]
fn reference_burst_case_in_hf() {
    // The reference report's failing case: 20 listeners living 50 ms, started 10 ms apart,
    // TCP and UDP, each caught with its pid, open and close.
    let w = WatchCmd::start(&["--hf", "--format", "json", "--no-initial", "-4"]);
    w.ready();
    let _ = w.collect(Duration::from_millis(300)); // the sentinels' closes
    let burst = |udp: bool| -> Vec<u16> {
        let threads: Vec<_> = (0..20)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(10));
                std::thread::spawn(move || {
                    let _ = i;
                    // Bind, hold 50 ms, close; the port is what the watcher must report.
                    if udp {
                        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                        std::thread::sleep(Duration::from_millis(50));
                        s.local_addr().unwrap().port()
                    } else {
                        let s = TcpListener::bind("127.0.0.1:0").unwrap();
                        std::thread::sleep(Duration::from_millis(50));
                        s.local_addr().unwrap().port()
                    }
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let tcp = burst(false);
    let udp = burst(true);
    let lines = w.collect(Duration::from_millis(1500));
    for (proto, ports) in [("tcp", &tcp), ("udp", &udp)] {
        for port in ports {
            for kind in ["open", "close"] {
                let found = lines.iter().map(|l| json(l)).any(|v| {
                    v["proto"] == proto
                        && v["port"] == *port
                        && v["event"] == kind
                        && v["pids"].as_array().unwrap().iter().any(|p| p == me())
                });
                assert!(found, "{proto} {port} {kind} with our pid in {} lines", lines.len());
            }
        }
    }
}

#[test]
fn bad_watch_flags_exit_2_naming_the_flag() {
    for (args, name) in [
        (&["watch", "--interval", "-1"][..], "--interval"),
        (&["watch", "--interval", "0"][..], "--interval"),
        (&["watch", "--close-grace", "soon"][..], "--close-grace"),
        (&["watch", "--burst-scans", "0"][..], "--burst-scans"),
        (&["watch", "--format", "yaml"][..], "--format"),
        (&["watch", "--children"][..], "--pid"),
        (
            &["watch", "--burst-scans", "10", "--burst-delay", "1", "--interval", "2"][..],
            "--burst-delay",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{args:?} names {name}: {err}");
    }
    // The same checks apply to the reference monitor's environment variables.
    let out = portwatch().args(["watch"]).env("CLOSE_GRACE_MS", "abc").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--close-grace"));
    let out = portwatch().args(["watch"]).env("SCAN_INTERVAL", "-5").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn empty_environment_settings_mean_the_defaults() {
    // As `make` and compose pass an unset variable through: set, but empty.
    let names = ["SCAN_INTERVAL", "BURST_SCANS", "BURST_DELAY", "CLOSE_GRACE_MS", "SNAPSHOT_PATH"];
    let w = WatchCmd::start_with_env(&["--no-initial"], &names.map(|v| (v, "")));
    w.ready();
    assert!(w.terminate().success());
}

/// The JSON line's keys in their documented order: `ts`, `event`, `initial`,
/// `previous_pids` (owner changes only), then the socket's fields as `list` prints them.
#[test]
fn json_lines_keep_their_key_order_for_every_kind_of_event() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let w = WatchCmd::start(&[
        "--format",
        "json",
        "--interval",
        "0.05",
        "--close-grace",
        "1000",
        "--port",
        &port.to_string(),
    ]);
    let order = |line: &str, keys: &[&str]| {
        let at: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("{k} in {line}")))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "keys {keys:?} in order: {line}");
        assert!(line.starts_with("{\"ts\":\""), "{line}");
    };
    let socket_keys = ["proto", "family", "addr", "port", "path", "state", "pids", "processes"];
    let open = w.expect("the open", |l| l.contains("\"event\":\"open\""));
    order(&open, &[&["ts", "event", "initial"][..], &socket_keys].concat());
    // Each kind of line also matches schema/event.schema.json.
    assert_event_line(&open);
    assert!(!open.contains("previous_pids"), "{open}");
    // Restarted within the close grace by another process: the owners change, naming who
    // held it before.
    drop(l);
    let again = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let child = Holder::spawn(&[&again]);
    drop(again);
    let owners = w.expect("the owner change", |l| l.contains("\"event\":\"owners\""));
    order(&owners, &[&["ts", "event", "initial", "previous_pids"][..], &socket_keys].concat());
    assert!(owners.contains(&format!("\"previous_pids\":[{}", me())), "{owners}");
    assert_event_line(&owners);
    drop(child);
    let close = w.expect("the close", |l| l.contains("\"event\":\"close\""));
    order(&close, &[&["ts", "event", "initial"][..], &socket_keys].concat());
    assert_event_line(&close);
    assert!(w.terminate().success());
}

#[test]
fn lines_never_go_back_in_time_and_json_says_when_it_happened() {
    // A close waits out its grace while later opens are reported: in text, the time is when
    // the line was written; in JSON, `ts` is when it happened and `reported` when written.
    for format in ["json", "text"] {
        let w = WatchCmd::start(&["--format", format, "--no-initial", "--close-grace", "300"]);
        w.ready();
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let a_port = a.local_addr().unwrap().port();
        w.expect("a's open", |l| l.contains(&a_port.to_string()));
        drop(a);
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let b_port = b.local_addr().unwrap().port();
        let mut lines = vec![w.expect("b's open", |l| l.contains(&b_port.to_string()))];
        lines.push(w.expect("a's close", |l| {
            l.contains(&a_port.to_string()) && (l.contains("\"close\"") || l.contains("closed"))
        }));
        let times: Vec<String> = lines
            .iter()
            .map(|l| match format {
                "json" => json(l)["reported"].as_str().unwrap().to_owned(),
                _ => l[1..l.find(']').unwrap()].to_owned(),
            })
            .collect();
        assert!(times[0] <= times[1], "{format}: {lines:?}");
        if format == "json" {
            let close = json(&lines[1]);
            let (ts, reported) =
                (close["ts"].as_str().unwrap(), close["reported"].as_str().unwrap());
            assert!(ts < reported, "the close happened before it was reported: {close}");
            assert!(ts <= json(&lines[0])["ts"].as_str().unwrap(), "a went before b opened");
        }
        drop(b);
        assert!(w.terminate().success());
    }
}

#[test]
fn a_listener_handed_to_a_child_while_its_owner_lives_on_changes_owners() {
    // The parent (this process) listens, later gives the socket to a child it forks and
    // closes its own fd, and keeps running: the owners change, and a watcher of the parent's
    // ports sees the port leave it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mine =
        Watcher::builder().filter(Filter::new().port(port).pid(me(), false)).build().unwrap();
    let all = Watcher::builder().filter(Filter::new().port(port)).build().unwrap();
    expect(&mine, "the parent's port", |e| on_port(e, "open", port));
    expect(&all, "the port", |e| on_port(e, "open", port));
    // Well after it settled (owners are looked up again a second after an open).
    std::thread::sleep(Duration::from_secs(3));
    let child = Holder::spawn(&[&l]);
    drop(l);
    let wait = |w: &Watcher, what: &str, want: &dyn Fn(&Event) -> bool| {
        let deadline = Instant::now() + PATIENCE * 3;
        while Instant::now() < deadline {
            match w.recv_timeout(Duration::from_millis(200)) {
                Some(e) if want(&e) => return e,
                _ => {}
            }
        }
        panic!("no {what} within {:?}", PATIENCE * 3);
    };
    let changed = wait(&all, "owner change", &|e| on_port(e, "owners", port));
    assert_eq!(changed.socket().pids(), [child.pid], "the child holds it now");
    match &changed {
        Event::OwnersChanged { previous, .. } => {
            assert_eq!(previous.iter().map(|p| p.pid).collect::<Vec<_>>(), [me()])
        }
        other => panic!("{other:?}"),
    }
    wait(&mine, "the port leaving the parent's watcher", &|e| on_port(e, "close", port));
    drop(child);
}
