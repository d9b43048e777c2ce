//! Other network namespaces, from the host: sandboxes made with `ip netns add` and with
//! `unshare --net --pid --fork --mount-proc`, each holding TCP and UDP listeners.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};

use crate::util::{
    NO_SUCH_CONTAINER, PATIENCE, WatchCmd, fake_daemon, is_root, json, json_list, portwatch,
    private_dir, run, running, skip, system_tool, tool, wait_for,
};

/// Binds TCP 7101 and UDP 7102 on 0.0.0.0, prints its pid (as it sees it), then waits for
/// stdin to close.
const LISTENER: &str = "import os, socket, sys
t = socket.socket(); t.bind(('0.0.0.0', 7101)); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 7102))
print(os.getpid(), flush=True)
sys.stdin.read()";

/// Whether this test can run here; prints why not.
fn can_run(tools: &[&str]) -> bool {
    if !is_root() {
        skip("creating network namespaces needs root");
        return false;
    }
    if let Some(t) = tools.iter().find(|t| system_tool(t).is_none()) {
        skip(&format!("{t} is not installed (make deps installs iproute2, util-linux, python3)"));
        return false;
    }
    true
}

/// python3 by absolute path (`can_run` checked it is there).
fn python() -> std::path::PathBuf {
    system_tool("python3").expect("python3 is installed")
}

/// A process holding the listeners inside a fresh namespace; cleans up on drop.
struct Sandbox {
    child: Child,
    /// The listener process's pid on the host.
    host_pid: u32,
    /// Its pid as it sees itself.
    ns_pid: u32,
    netns_name: Option<String>,
}

impl Sandbox {
    fn start(mut cmd: Command, netns_name: Option<String>) -> Sandbox {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ns_pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("sandbox said {line:?}"));
        // `unshare --fork` runs the listener as its child; `ip netns exec` execs in place.
        let host_pid =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .unwrap_or(child.id());
        Sandbox { child, host_pid, ns_pid, netns_name }
    }

    /// `ip netns add NAME`, then the listener inside it.
    fn named(tag: &str) -> Sandbox {
        let name = format!("pwtest-{}-{tag}", std::process::id());
        let _ = tool("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        assert!(tool("ip").args(["netns", "add", &name]).status().unwrap().success());
        let mut cmd = tool("ip");
        cmd.args(["netns", "exec", &name]).arg(python()).args(["-c", LISTENER]);
        Sandbox::start(cmd, Some(name))
    }

    /// `unshare --net --pid --fork --mount-proc`: the listener is pid 1 of its own pid
    /// namespace.
    fn unshared() -> Sandbox {
        let mut cmd = tool("unshare");
        cmd.args(["--net", "--pid", "--fork", "--mount-proc"]).arg(python()).args(["-c", LISTENER]);
        Sandbox::start(cmd, None)
    }

    fn path(&self) -> String {
        match &self.netns_name {
            Some(n) => format!("/run/netns/{n}"),
            None => format!("/proc/{}/ns/net", self.host_pid),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the listener exits on EOF
        let _ = self.child.wait();
        if let Some(n) = &self.netns_name {
            let _ = tool("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ports(list: &[serde_json::Value]) -> Vec<(String, u64)> {
    list.iter()
        .map(|s| (s["proto"].as_str().unwrap().to_owned(), s["port"].as_u64().unwrap()))
        .collect()
}

fn assert_sandbox_listed(list: &[serde_json::Value], sb: &Sandbox, netns_inode: u64) {
    for (proto, port) in [("tcp", 7101), ("udp", 7102)] {
        let s = list
            .iter()
            .find(|s| s["proto"] == proto && s["port"] == port)
            .unwrap_or_else(|| panic!("{proto} {port} in {list:?}"));
        assert_eq!(s["netns"], netns_inode, "tagged with the sandbox's namespace");
        assert_eq!(s["pids"], serde_json::json!([sb.host_pid]), "host pid");
    }
}

#[test]
fn named_namespace_by_path_and_by_pid() {
    if !can_run(&["ip", "python3"]) {
        return;
    }
    let sb = Sandbox::named("list");
    let inode = std::fs::metadata(sb.path()).unwrap().ino();
    let by_path = json_list(&["--netns", &sb.path()]);
    assert_sandbox_listed(&by_path, &sb, inode);
    let by_pid = json_list(&["--netns", &sb.host_pid.to_string()]);
    assert_sandbox_listed(&by_pid, &sb, inode);
    // Either way the namespace carries its /run/netns name.
    let name = sb.netns_name.as_deref().unwrap();
    for s in by_path.iter().chain(&by_pid) {
        assert_eq!(s["netns_name"], name, "{s}");
    }
    // Nothing of the host leaks in: the sandbox holds exactly its two sockets.
    assert_eq!(ports(&by_path).len(), 2, "{by_path:?}");
    // And nothing of the sandbox leaks out.
    let host = json_list(&[]);
    assert!(host.iter().all(|s| s["netns"] != inode));
}

#[test]
fn unshared_sandbox_shows_ns_pid_1() {
    if !can_run(&["unshare", "python3"]) {
        return;
    }
    let sb = Sandbox::unshared();
    assert_eq!(sb.ns_pid, 1, "the listener is init of its pid namespace");
    let inode = std::fs::metadata(sb.path()).unwrap().ino();
    // Both owner lookups name the owner by host pid, with its pid inside.
    for owners in ["proc", "bpf"] {
        let list = json_list(&["--netns", &sb.host_pid.to_string(), "--owners", owners]);
        assert_sandbox_listed(&list, &sb, inode);
        let p = &list[0]["processes"][0];
        assert_eq!(p["pid"], sb.host_pid, "--owners {owners}");
        assert_eq!(p["ns_pid"], 1, "pid inside the sandbox (--owners {owners})");
        assert!(list[0]["netns_name"].is_null(), "not bound under /run/netns: no name");
    }
}

#[test]
fn watch_sees_a_namespace_from_outside() {
    if !can_run(&["ip", "python3"]) {
        return;
    }
    let sb = Sandbox::named("watch");
    let mut w = portwatch()
        .args(["watch", "--format", "json", "--interval", "0.05", "--netns", &sb.path()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(w.stdout.take().unwrap()).lines();
    let mut next =
        || serde_json::from_str::<serde_json::Value>(&lines.next().unwrap().unwrap()).unwrap();
    let (a, b) = (next(), next());
    let mut opened = [a["port"].as_u64().unwrap(), b["port"].as_u64().unwrap()];
    opened.sort_unstable();
    assert_eq!(opened, [7101, 7102]);
    assert!(a["initial"] == true && a["pids"] == serde_json::json!([sb.host_pid]));
    assert_eq!(a["netns_name"], sb.netns_name.as_deref().unwrap(), "{a}");
    let host_pid = sb.host_pid;
    drop(sb); // the listener exits: both close, seen from the host
    let (c, d) = (next(), next());
    assert_eq!((c["event"].as_str(), d["event"].as_str()), (Some("close"), Some("close")));
    assert_eq!(c["pids"], serde_json::json!([host_pid]));
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn namespace_errors_exit_1_and_say_what_to_do() {
    for (arg, says) in [
        ("/nonexistent/netns", "not found"),
        ("/etc/hostname", "is not a network namespace"),
        ("4294967295", "not found"),
    ] {
        let out = run(&["list", "--netns", arg]);
        assert_eq!(out.status.code(), Some(1), "--netns {arg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "--netns {arg}: {err}");
    }
    if !can_run(&["ip", "python3"]) {
        return;
    }
    let sb = Sandbox::named("perm");
    let out = {
        use std::os::unix::process::CommandExt;
        portwatch().args(["list", "--netns", &sb.path()]).uid(65534).gid(65534).output().unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_SYS_ADMIN"));
}

/// A stand-in Docker daemon on a unix socket: answers each `GET /containers/NAME/json` from
/// `containers` (name → pid), 404 otherwise, and records the request lines.
fn fake_docker(
    sock: &std::path::Path,
    containers: Vec<(&'static str, u32)>,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let _ = std::fs::remove_file(sock);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    fake_daemon(sock, move |line| {
        log.lock().unwrap().push(line.to_owned());
        let found = containers
            .iter()
            .find(|(name, _)| line == format!("GET /containers/{name}/json HTTP/1.0"));
        match found {
            Some((name, pid)) => running(&format!("0123456789ab{name}"), name, *pid),
            None => NO_SUCH_CONTAINER.to_owned(),
        }
    });
    seen
}

#[test]
fn container_by_name_through_the_docker_api() {
    if !can_run(&["ip", "python3"]) {
        return;
    }
    let sb = Sandbox::named("docker");
    let dir = private_dir();
    let sock = dir.path().join("docker.sock");
    let requests = fake_docker(&sock, vec![("fakebox", sb.host_pid)]);
    let host = format!("unix://{}", sock.display());
    let out = portwatch()
        .args(["list", "--format", "json", "--container", "fakebox"])
        .env("DOCKER_HOST", &host)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_sandbox_listed(&list, &sb, std::fs::metadata(sb.path()).unwrap().ino());
    for s in &list {
        assert_eq!(s["container"]["name"], "fakebox");
        assert_eq!(s["container"]["id"], "0123456789abfakebox");
    }
    assert_eq!(requests.lock().unwrap().as_slice(), ["GET /containers/fakebox/json HTTP/1.0"]);
    // A container the daemon does not know: exit 1 and say so.
    let out = portwatch()
        .args(["list", "--container", "ghost"])
        .env("DOCKER_HOST", &host)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such container: ghost"));
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn docker_errors_exit_1_and_say_what_to_do() {
    for (host, says) in [
        ("unix:///nonexistent/docker.sock", "cannot reach the Docker daemon"),
        ("tcp://127.0.0.1:2375", "not a unix:// socket"),
    ] {
        let out = portwatch()
            .args(["list", "--container", "x"])
            .env("DOCKER_HOST", host)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{host}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{host}");
    }
    // Nothing that is not a container name reaches the daemon.
    let out = portwatch().args(["list", "--container", "../../etc"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a container name"));
}

/// The sockets of `list` in namespace `inode`.
fn in_netns(list: &[serde_json::Value], inode: u64) -> Vec<serde_json::Value> {
    list.iter().filter(|s| s["netns"] == inode).cloned().collect()
}

#[test]
fn all_netns_lists_every_namespace_tagged() {
    if !can_run(&["ip", "unshare", "python3"]) {
        return;
    }
    let (named, unshared) = (Sandbox::named("all"), Sandbox::unshared());
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let host_ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let list = json_list(&["--all-netns"]);
    for sb in [&named, &unshared] {
        let inode = std::fs::metadata(sb.path()).unwrap().ino();
        let mine = in_netns(&list, inode);
        assert_sandbox_listed(&mine, sb, inode);
        // Exactly the sandbox's two sockets: nothing of the host is tagged with it.
        assert_eq!(ports(&mine).len(), 2, "{mine:?}");
    }
    let p = &in_netns(&list, std::fs::metadata(unshared.path()).unwrap().ino())[0];
    assert_eq!(p["processes"][0]["ns_pid"], 1, "pid inside the unshared sandbox");
    let ours = list.iter().find(|s| s["port"] == host_port).expect("the host listener is listed");
    assert_eq!(ours["netns"], host_ns);
    // The table names the namespaces.
    let out = run(&["list", "--all-netns"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("Namespace"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("host ")), "{table}");
    // A namespace bound under /run/netns goes by its name, in JSON and in the table.
    let name = named.netns_name.as_deref().unwrap();
    let inode = std::fs::metadata(named.path()).unwrap().ino();
    assert!(in_netns(&list, inode).iter().all(|s| s["netns_name"] == name), "{list:?}");
    let row = format!("netns {name} ");
    assert!(table.lines().any(|l| l.starts_with(&row) && l.contains(":7101")), "{table}");
}

#[test]
fn all_netns_watch_follows_namespaces_coming_and_going() {
    if !can_run(&["unshare", "python3"]) {
        return;
    }
    let w = WatchCmd::start(&["--all-netns", "--format", "json"]);
    w.ready();
    // Started after the watch began: picked up by discovery.
    let sb = Sandbox::unshared();
    let inode = std::fs::metadata(sb.path()).unwrap().ino();
    let host_pid = sb.host_pid;
    let mut opened = Vec::new();
    while opened.len() < 2 {
        let l = json(&w.expect("an open in the new namespace", |l| {
            let e = json(l);
            e["event"] == "open" && e["netns"] == inode
        }));
        assert_eq!(l["initial"], false, "opened after the watch began");
        assert_eq!(l["pids"], serde_json::json!([host_pid]));
        assert_eq!(l["processes"][0]["ns_pid"], 1);
        opened.push(l["port"].as_u64().unwrap());
    }
    opened.sort_unstable();
    assert_eq!(opened, [7101, 7102]);
    drop(sb); // the sandbox exits, and its namespace with it
    let mut closed = Vec::new();
    while closed.len() < 2 {
        let l = json(&w.expect("a close in the vanished namespace", |l| {
            let e = json(l);
            e["event"] == "close" && e["netns"] == inode
        }));
        closed.push(l["port"].as_u64().unwrap());
    }
    closed.sort_unstable();
    assert_eq!(closed, [7101, 7102]);
    assert!(w.terminate().success());
}

#[test]
fn all_netns_needs_privilege_and_says_which() {
    if !can_run(&["unshare", "setpriv", "mount", "mkdir", "chmod"]) {
        return;
    }
    // Run as nobody, in a private mount namespace whose /run is a fresh tmpfs: the namespaces
    // other tests create meanwhile are out of sight, and /run/netns holds what `ip netns add`
    // leaves there for a moment — a mode-0 file not yet mounted over. Caught in that moment it
    // made the error say CAP_SYS_PTRACE (the file could not be opened), one run in twelve.
    let script = format!(
        "{mount} -t tmpfs none /run && {mkdir} /run/netns && : > /run/netns/placeholder && \
         {chmod} 0 /run/netns/placeholder && \
         exec {setpriv} --reuid 65534 --regid 65534 --clear-groups {portwatch} list --all-netns",
        mount = system_tool("mount").unwrap().display(),
        mkdir = system_tool("mkdir").unwrap().display(),
        chmod = system_tool("chmod").unwrap().display(),
        setpriv = system_tool("setpriv").unwrap().display(),
        portwatch = env!("CARGO_BIN_EXE_portwatch"),
    );
    let out = tool("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let saw = format!(
        "status {:?}, stdout {:?}, stderr {err:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "exit 1 for a missing privilege: {saw}");
    assert!(err.contains("CAP_SYS_ADMIN"), "names the capability that is missing: {saw}");
}

/// A Docker daemon whose one container, `later`, runs once `pid` is set (404 before).
fn daemon_of_a_container_started_later(
    sock: &std::path::Path,
) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
    let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let theirs = std::sync::Arc::clone(&pid);
    fake_daemon(sock, move |line| match theirs.load(std::sync::atomic::Ordering::SeqCst) {
        pid if pid != 0 && line.starts_with("GET /containers/later/json ") => {
            running("0123456789abcdef", "later", pid)
        }
        _ => NO_SUCH_CONTAINER.to_owned(),
    });
    pid
}

#[test]
fn watch_container_waits_for_a_container_not_running_yet() {
    if !can_run(&["ip", "python3"]) {
        return;
    }
    // Started beside the container, as compose does: the container is not there yet.
    let dir = private_dir();
    let sock = dir.path().join("docker.sock");
    let pid = daemon_of_a_container_started_later(&sock);
    let host = format!("unix://{}", sock.display());
    let w = WatchCmd::start_with_env(
        &["--format", "json", "--container", "later"],
        &[("DOCKER_HOST", host.as_str())],
    );
    wait_for("the watcher to say it waits", PATIENCE, || {
        w.stderr().contains("waiting for it").then_some(())
    });
    // Then it starts: its listeners are reported, with its name.
    let sb = Sandbox::named("later");
    pid.store(sb.host_pid, std::sync::atomic::Ordering::SeqCst);
    let open = w.expect("the container's listener", |l| json(l)["port"] == 7101);
    assert_eq!(json(&open)["container"]["name"], "later", "{open}");
    assert_eq!(w.stderr().matches("waiting for it").count(), 1, "said once: {}", w.stderr());
    // `list` keeps its error: a listing of what is not there fails.
    let out = portwatch()
        .args(["list", "--container", "ghost-of-later"])
        .env("DOCKER_HOST", &host)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    drop(sb);
    assert!(w.terminate().success());
}
