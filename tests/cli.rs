//! The `portwatch list` command: output formats, filters, exit codes.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use crate::util::{
    Holder, WatchCmd, is_root, json, json_list, pids_of, portwatch, run, skip, system_tool, tool,
};

#[test]
fn json_objects_carry_every_documented_field() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let list = json_list(&["--port", &port.to_string()]);
    let s = list.iter().find(|s| s["port"] == port).expect("listener in JSON");
    for key in [
        "proto",
        "family",
        "addr",
        "port",
        "path",
        "state",
        "inode",
        "uid",
        "cookie",
        "netns",
        "pids",
        "processes",
        "owner_unknown_reason",
    ] {
        assert!(s.get(key).is_some(), "field {key} present in {s}");
    }
    assert_eq!(s["proto"], "tcp");
    assert_eq!(s["family"], "ipv4");
    assert_eq!(s["addr"], "127.0.0.1");
    assert_eq!(s["state"], "LISTEN");
    assert!(s["inode"].as_u64().unwrap() > 0 && s["netns"].as_u64().unwrap() > 0);
    let me = std::process::id();
    assert!(s["pids"].as_array().unwrap().iter().any(|p| p == me));
    let p = s["processes"].as_array().unwrap().iter().find(|p| p["pid"] == me).unwrap();
    for key in ["pid", "comm", "cmdline", "user", "ns_pid", "uid"] {
        assert!(p.get(key).is_some(), "process field {key} present");
    }
    assert!(s["owner_unknown_reason"].is_null());
}

#[test]
fn wildcards_print_as_documented() {
    let v4 = UdpSocket::bind("0.0.0.0:0").unwrap();
    let v6 = TcpListener::bind("[::]:0").unwrap();
    let list = json_list(&[]);
    let me = std::process::id();
    let p4 =
        pids_of(&list, "udp", "0.0.0.0", v4.local_addr().unwrap().port()).expect("udp 0.0.0.0");
    let p6 = pids_of(&list, "tcp", "::", v6.local_addr().unwrap().port()).expect("tcp ::");
    assert!(p4.contains(&me) && p6.contains(&me));
}

#[test]
fn table_shows_address_state_and_process() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = run(&["list", "--tcp", "--port", &port.to_string()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("Proto"), "header first: {text}");
    let row = lines.find(|l| l.contains(&format!("127.0.0.1:{port}"))).expect("row for listener");
    assert!(row.starts_with("tcp") && row.contains("LISTEN"), "{row}");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], "lo", "a loopback listener's scope: {text}");
    assert!(row.contains(&format!("{}/", std::process::id())), "pid/comm shown: {row}");
    if is_root() {
        // The owner's user name, from the lookup (the table reads no user table of its own
        // when every socket listed has owners).
        assert_eq!(cells[4], "root", "the owner's user: {text}");
    }
    // Owners unknown, the User column still shows the socket's user by name, as it does when
    // owners are known: never a bare 0 on one line and root on the next.
    if is_root() {
        let out = run(&["list", "--tcp", "--no-processes", "--port", &port.to_string()]);
        let text = String::from_utf8(out.stdout).unwrap();
        let row = text.lines().find(|l| l.contains(&format!("127.0.0.1:{port}"))).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[4], "root", "user by name without owners: {text}");
    }
}

#[test]
fn each_listener_says_its_scope_and_scope_filters() {
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let any = UdpSocket::bind("[::]:0").unwrap();
    let (lp, ap) = (lo.local_addr().unwrap().port(), any.local_addr().unwrap().port());
    let find = |list: &[serde_json::Value], port: u16| {
        list.iter().find(|s| s["port"] == port).map(|s| s["scope"].clone())
    };
    let all = json_list(&[]);
    assert_eq!(find(&all, lp), Some("loopback".into()), "{all:?}");
    assert_eq!(find(&all, ap), Some("wildcard".into()), "{all:?}");
    let wild = json_list(&["--scope", "wildcard"]);
    assert!(wild.iter().all(|s| s["scope"] == "wildcard"), "{wild:?}");
    assert!(find(&wild, ap).is_some() && find(&wild, lp).is_none());
    let both = json_list(&["--scope", "loopback,wildcard"]);
    assert!(find(&both, ap).is_some() && find(&both, lp).is_some());
    let out = run(&["list", "--scope", "everywhere"]);
    assert_eq!(out.status.code(), Some(2), "an unknown scope is a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback, link-local, address or wildcard"), "{err}");
    let unix = json_list(&["-x"]);
    assert!(unix.iter().all(|s| s["scope"].is_null()), "unix sockets have no scope");
}

#[test]
fn protocol_and_family_flags_filter() {
    let tcp = TcpListener::bind("[::1]:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tp, up) = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let only_udp = json_list(&["--udp"]);
    assert!(only_udp.iter().all(|s| s["proto"] == "udp"));
    assert!(pids_of(&only_udp, "udp", "127.0.0.1", up).is_some());
    let only4 = json_list(&["-4"]);
    assert!(only4.iter().all(|s| s["family"] == "ipv4"));
    assert!(pids_of(&only4, "tcp", "::1", tp).is_none());
    let only6 = json_list(&["-6", "-t"]);
    assert!(pids_of(&only6, "tcp", "::1", tp).is_some());
    let unix = json_list(&["--unix"]);
    assert!(unix.iter().all(|s| s["proto"] == "unix" && s["port"] == 0));
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    for (args, names) in [
        (&["list", "--port", "70000"][..], "--port"),
        (&["list", "--format", "xml"][..], "--format"),
        (&["list", "--state", "bogus"][..], "--state"),
        (&["list", "--backend", "ebpf"][..], "--backend"),
        (&["list", "-4", "-6"][..], "--ipv4"),
        // Unix sockets have no inet family: -4/-6 with -x would be silently ignored.
        (&["list", "-x", "-4"][..], "--unix"),
        (&["watch", "-x", "-6"][..], "--unix"),
        (&["list", "--user", "no-such-user-here"][..], "--user"),
        (&["list", "--no-processes", "--comm", "sh"][..], "--comm"),
        // The library's floor for the interval, named as the flag.
        (&["watch", "--interval", "0.0001"][..], "--interval"),
        (&["watch", "--exec-timeout", "1"][..], "--exec"),
        (&["watch", "--exec", "true", "--exec-timeout", "0"][..], "--exec-timeout"),
        (&["frobnicate"][..], "frobnicate"),
        (&[][..], "Usage"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "portwatch {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "portwatch {args:?} names {names}: {err}");
    }
    let help = run(&["list", "--help"]);
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn closed_stdout_exits_0_quietly() {
    let (rx, tx) = nix::unistd::pipe().unwrap();
    drop(rx); // the reader is gone before portwatch writes a byte
    let out = portwatch()
        .args(["list", "--unix", "--tcp", "--udp"])
        .stdout(Stdio::from(tx))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("Broken pipe") && !err.contains("error"), "quiet: {err}");
}

#[test]
fn unprivileged_caller_gets_owners_unknown_with_reason() {
    if !is_root() {
        skip("needs root to run portwatch as another user (nobody)");
        return;
    }
    // A root-owned listener, looked at by a process running as nobody: the socket is listed,
    // its owner unknown because our fds are not readable to nobody.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = portwatch()
        .args(["list", "--format", "json", "--port", &port.to_string()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let s = list.iter().find(|s| s["port"] == port).expect("socket still listed");
    assert_eq!(s["owner_unknown_reason"], "permission_denied");
    assert_eq!(s["pids"], serde_json::json!([]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_SYS_PTRACE"), "says what grants access: {err}");
}

#[test]
fn runtime_error_exits_1_with_one_actionable_line() {
    if !is_root() {
        skip("needs root to hide /proc in a private mount namespace");
        return;
    }
    if system_tool("unshare").is_none() {
        skip("unshare (util-linux) is not installed");
        return;
    }
    // A tmpfs over /proc in a private mount namespace: portwatch cannot find its namespace.
    let out = tool("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(format!(
            "/bin/mount -t tmpfs none /proc && exec {} list",
            env!("CARGO_BIN_EXE_portwatch")
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("portwatch: ") && err.contains("/proc"), "{err}");
    assert!(err.contains("is procfs mounted at /proc?"), "says what to check: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn settings_from_the_environment_are_named_when_bad() {
    for (value, says) in [("abc", "not a number"), ("0.0001", "1ms")] {
        let out = portwatch().arg("watch").env("SCAN_INTERVAL", value).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "SCAN_INTERVAL={value}: {err}");
        for name in ["SCAN_INTERVAL", "--interval", says] {
            assert!(err.contains(name), "SCAN_INTERVAL={value} names {name}: {err}");
        }
    }
    // Given on the command line, the flag is what is named.
    let out =
        portwatch().args(["watch", "--burst-scans", "0"]).env("BURST_SCANS", "2").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--burst-scans") && !err.contains("BURST_SCANS"), "{err}");
}

/// The command name of process `pid`, as owners report it.
fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_owned()
}

fn ports(list: &[serde_json::Value]) -> Vec<u64> {
    list.iter().filter_map(|s| s["port"].as_u64()).collect()
}

#[test]
fn list_and_watch_select_by_pid_user_and_comm() {
    let mine = TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = TcpListener::bind("127.0.0.1:0").unwrap();
    let child_port = u64::from(theirs.local_addr().unwrap().port());
    let child = Holder::spawn(&[&theirs]);
    drop(theirs);
    let my_port = u64::from(mine.local_addr().unwrap().port());

    let by_pid = json_list(&["--pid", &child.pid.to_string()]);
    assert_eq!(ports(&by_pid), [child_port], "only the child's socket: {by_pid:?}");

    let comm = comm_of(std::process::id());
    let by_comm = json_list(&["--comm", &comm]);
    assert!(ports(&by_comm).contains(&my_port), "{comm}: {by_comm:?}");
    for s in &by_comm {
        let procs = s["processes"].as_array().unwrap();
        assert!(procs.iter().any(|p| p["comm"] == comm.as_str()), "{comm}: {s}");
    }
    assert!(json_list(&["--comm", "no-such-comm"]).is_empty());

    let uid = nix::unistd::geteuid().as_raw();
    let by_uid = json_list(&["--user", &uid.to_string()]);
    assert!(ports(&by_uid).contains(&my_port), "uid {uid}: {by_uid:?}");
    assert!(by_uid.iter().all(|s| s["uid"] == uid), "{by_uid:?}");
    assert!(!ports(&json_list(&["--user", &(uid + 1).to_string()])).contains(&my_port));
    if is_root() {
        assert!(ports(&json_list(&["--user", "root"])).contains(&my_port));
        assert!(!ports(&json_list(&["--user", "nobody"])).contains(&my_port));
    }

    // The same flags on watch: the child's port is reported, ours never is. (A forked child
    // carries the name of the thread that forked it, not the process's.)
    let w = WatchCmd::start(&[
        "--format",
        "json",
        "--pid",
        &child.pid.to_string(),
        "--comm",
        &comm_of(child.pid),
        "--user",
        &uid.to_string(),
    ]);
    w.expect("the child's port", |l| json(l)["port"] == child_port);
    let later = w.collect(std::time::Duration::from_millis(500));
    assert!(later.iter().all(|l| json(l)["port"] != my_port), "{later:?}");
    let w = WatchCmd::start(&[
        "--format",
        "json",
        "--comm",
        "no-such-comm",
        "--port",
        &my_port.to_string(),
    ]);
    assert!(w.collect(std::time::Duration::from_millis(500)).is_empty());
    assert!(w.terminate().success());
}

#[test]
fn established_sockets_show_their_peer() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server = l.accept().unwrap();
    let peer = client.local_addr().unwrap();
    let out = run(&["list", "--tcp", "--state", "established", "--port", &port.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text.lines().next().unwrap();
    assert!(header.contains("Peer Address:Port"), "{text}");
    let row = text.lines().find(|l| l.contains(&format!("127.0.0.1:{port}"))).expect("a row");
    assert!(row.contains(&peer.to_string()), "the peer {peer} is shown: {text}");
    // Listening sockets have no peer: the column is left out, as before.
    let out = run(&["list", "--tcp", "--port", &port.to_string()]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Peer"));
}
