//! `--owners auto|bpf|proc`: the BPF task_file iterator finds the same owners as the /proc
//! walk (every holder of a socket shared by forked processes, `--pid` still filtering), the
//! watcher's first scan uses it, and where it cannot load `bpf` is an error that says why and
//! `auto` walks `/proc`, saying why at info level (after one load: no retry for the log).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::util::{
    Holder, PATIENCE, WatchCmd, as_nobody_under_hidepid, is_root, json, json_list, pids_of,
    portwatch, private_dir, skip, system_tool, tool, wait_for,
};

fn can_load() -> bool {
    if !is_root() {
        skip("the BPF owner lookup needs root (or CAP_BPF and CAP_PERFMON)");
        return false;
    }
    true
}

#[test]
fn every_holder_of_a_forked_listener_through_the_iterator() {
    if !can_load() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (a, b) = (Holder::spawn(&[&l]), Holder::spawn(&[&l]));
    let mut all = vec![std::process::id(), a.pid, b.pid];
    all.sort_unstable();
    let p = port.to_string();
    for owners in ["bpf", "proc"] {
        let list = json_list(&["--tcp", "--port", &p, "--owners", owners]);
        assert_eq!(pids_of(&list, "tcp", "127.0.0.1", port), Some(all.clone()), "{owners}");
        let s = &list[0];
        assert!(s["owner_unknown_reason"].is_null(), "{owners}: {s}");
        // Each holder is described from /proc, as the walk describes it.
        let comms: Vec<&str> = s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["comm"].as_str().unwrap())
            .collect();
        assert_eq!(comms.len(), 3, "{owners}: {s}");
        // --pid keeps only the sockets that process holds.
        let only_a =
            json_list(&["--tcp", "--port", &p, "--owners", owners, "--pid", &a.pid.to_string()]);
        assert_eq!(only_a.len(), 1, "{owners}: {only_a:?}");
        let not_held =
            json_list(&["--tcp", "--owners", owners, "--pid", &b.pid.to_string(), "--port", "1"]);
        assert!(not_held.is_empty(), "{owners}: {not_held:?}");
    }
}

#[test]
fn the_watchers_first_scan_finds_every_holder_through_the_iterator() {
    if !can_load() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let child = Holder::spawn(&[&l]);
    let mut want = vec![std::process::id(), child.pid];
    want.sort_unstable();
    let w = WatchCmd::start(&["--owners", "bpf", "--source", "scan", "--format", "json"]);
    let line = w.expect("the listener open at start", |l| {
        l.contains(&format!("\"port\":{port},")) && l.contains("\"initial\":true")
    });
    let ev = json(&line);
    let pids: Vec<u32> =
        ev["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect();
    assert_eq!(pids, want, "{line}");
    assert!(!w.stderr().contains("instead of the BPF iterator"), "it loaded: {}", w.stderr());
    assert!(w.terminate().success());
}

#[test]
fn bpf_that_cannot_load_is_an_error_and_auto_walks_proc_saying_why() {
    if !is_root() {
        return skip("running portwatch as nobody needs root");
    }
    // As nobody: --owners bpf is a run-time error naming what is missing and the way out.
    let out = portwatch().args(["list", "--owners", "bpf"]).uid(65534).gid(65534).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot look owners up with BPF"), "{err}");
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON"), "names what is missing: {err}");
    assert!(err.contains("--owners proc"), "names the way out: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // The same for a watcher.
    let out = portwatch()
        .args(["watch", "--owners", "bpf", "--source", "scan"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot look owners up with BPF"), "{err}");
    // auto: the walk, saying why at info level (a watcher always tries the iterator).
    let mut auto = portwatch();
    auto.args(["watch", "--owners", "auto", "--source", "scan", "--format", "json"])
        .env("RUST_LOG", "info")
        .uid(65534)
        .gid(65534);
    let mut child = auto.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("owners from /proc instead of the BPF iterator"), "{line}");
    assert!(line.contains("INFO") && line.contains("CAP_BPF"), "names what is missing: {line}");
    let _ = child.kill();
    let _ = child.wait();
    // A list with auto still lists (through /proc), and at the default level says nothing of
    // BPF: not having a privilege one did not ask to use is no news (on a host with 200
    // processes or more it tries to load the iterator; below, it does not even try).
    let out =
        portwatch().args(["list", "--owners", "auto"]).uid(65534).gid(65534).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("BPF"), "silent about BPF: {err}");
}

/// `strace` with `bpf(2)` failing with EPERM for the traced process alone (strace's fault
/// injection: what lockdown or an LSM does, without changing the kernel for anyone else), and
/// its calls written to `trace`.
fn refusing_bpf(strace: &Path, trace: &Path) -> Command {
    let mut cmd = Command::new(strace);
    cmd.args([
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-I3",
        "-e",
        "trace=bpf",
        "-e",
        "inject=bpf:error=EPERM",
        "-o",
    ])
    .arg(trace)
    .arg("--")
    .arg(env!("CARGO_BIN_EXE_portwatch"))
    .env("RUST_LOG", "warn");
    cmd
}

/// How many programs `trace` (strace's output) shows being loaded.
fn program_loads(trace: &Path) -> usize {
    std::fs::read_to_string(trace).unwrap().matches("bpf(BPF_PROG_LOAD").count()
}

#[test]
fn a_kernel_that_refuses_the_iterator_costs_auto_one_load_and_no_warning() {
    if !can_load() {
        return;
    }
    let Some(strace) = system_tool("strace") else {
        return skip("strace is not installed (make deps installs it)");
    };
    let dir = private_dir();
    // --owners bpf: an error quoting the refusal, after a second load for the verifier's log.
    let trace = dir.path().join("bpf");
    let out = refusing_bpf(&strace, &trace).args(["list", "--owners", "bpf"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the kernel refused the BPF owner lookup"), "{err}");
    assert_eq!(program_loads(&trace), 2, "the load, then again for the log");
    // auto (a watcher: it always tries the iterator): one load, then the walk; why is said at
    // info level, never as a warning.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let trace = dir.path().join("auto");
    let mut watch = refusing_bpf(&strace, &trace);
    watch
        .args(["watch", "--owners", "auto", "--source", "scan", "--format", "json"])
        .args(["--tcp", "--port", &port.to_string()])
        .env("RUST_LOG", "info")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = watch.spawn().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = format!("\"port\":{port},");
    // Its owner is the walk's to find (on a host crowded enough, within its budget or not):
    // the event is what shows the lookup was made.
    wait_for("the listener's initial event", PATIENCE, || {
        lines.try_recv().ok().filter(|l| l.contains(&want))
    });
    // The watcher is in strace's process group: SIGTERM to the group stops it (strace, with
    // -I3, blocks it and exits once its tracee has).
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("the watcher and strace to exit", PATIENCE, || child.try_wait().unwrap());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(program_loads(&trace), 1, "no second load for the log: {err}");
    let said: Vec<&str> = err.lines().filter(|l| l.contains("BPF")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains("INFO") && said[0].contains("refused"), "{err}");
}

#[test]
fn a_bad_owners_value_is_a_usage_error() {
    let out = portwatch().args(["list", "--owners", "ebpf"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--owners") && err.contains("bpf"), "{err}");
}

#[test]
fn names_read_by_the_iterator_are_the_ones_proc_shows() {
    if !can_load() {
        return;
    }
    let Some(python) = crate::util::system_tool("python3") else {
        return skip("python3 is not installed");
    };
    // A process naming itself with a newline, a backslash and a tab (PR_SET_NAME), holding a
    // listener: /proc/PID/status escapes the first two, the iterator reads the raw bytes.
    let script = "import ctypes, socket, sys\n\
        ctypes.CDLL(None).prctl(15, b'pw\\nx\\\\y\\tz', 0, 0, 0)\n\
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
        print(s.getsockname()[1], flush=True); sys.stdin.read()\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().to_owned();
    let procs = |owners: &str, format: &str| {
        let out = portwatch()
            .args(["list", "--tcp", "--port", &port, "--owners", owners, "--format", format])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let bpf = procs("bpf", "json");
    assert_eq!(bpf, procs("proc", "json"));
    assert!(bpf.contains(&format!("\"pids\":[{}]", child.id())), "{bpf}");
    assert_eq!(procs("bpf", "table"), procs("proc", "table"));
    drop(child.stdin.take());
    let _ = child.wait();
}

/// As nobody: raises its fd limit, holds ~20 000 fds, starts THREADS threads, says "ready",
/// then its main thread exits alone (SYS_exit, not exit_group): the leader is a zombie, and
/// the kernel's task_file iterator then walks every thread with the whole fd table.
const ZOMBIE_LEADER: &str = r#"
import ctypes, os, resource, sys, threading, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 25000), hard))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(min(hard, 25000) - 100)]
threading.stack_size(64 * 1024)
for _ in range(int(sys.argv[1])):
    threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
print(len(fds), flush=True)
ctypes.CDLL(None).syscall(60, 0)
"#;

#[test]
fn a_process_that_makes_the_bpf_pass_long_cannot_hide_roots_owners() {
    if !can_load() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut hostile = crate::util::tool("python3");
    hostile.args(["-c", ZOMBIE_LEADER, "400"]).uid(65534).gid(65534).process_group(0);
    let mut child = hostile.stdout(Stdio::piped()).spawn().unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let fds: usize = line.trim().parse().unwrap_or(0);
    // The pass would visit every fd once per thread; past its budget the walk, which caps
    // each process, names the owner.
    let out = portwatch()
        .args(["list", "--tcp", "--port", &port.to_string(), "--owners", "bpf", "--format", "json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pids_of(&list, "tcp", "127.0.0.1", port),
        Some(vec![std::process::id()]),
        "{fds} fds x 400 threads: {err}"
    );
    assert!(err.contains("walking /proc instead"), "the pass gave way to the walk: {err}");
}

/// `portwatch ARGS` as nobody with CAP_BPF and CAP_PERFMON only (no CAP_SYS_PTRACE, so
/// hidepid holds for it), in a mount namespace of its own whose /proc has `hidepid=HIDEPID`.
fn with_bpf_caps_under_hidepid(hidepid: u8, args: &[&str]) -> std::process::Output {
    let caps = "-all,+bpf,+perfmon";
    let options = ["--inh-caps", "--ambient-caps", "--bounding-set"].map(|o| format!("{o}={caps}"));
    as_nobody_under_hidepid(hidepid, &options.each_ref().map(String::as_str), args)
}

#[test]
fn the_pass_does_not_reveal_the_processes_hidepid_hides() {
    if !can_load() {
        return;
    }
    if ["unshare", "mount", "setpriv", "python3"].iter().any(|t| system_tool(t).is_none()) {
        return skip("unshare, mount, setpriv (util-linux) or python3 is not installed");
    }
    // Root's listener (this test's) and one of nobody's own, listed by nobody with the BPF
    // capabilities where /proc hides root's processes: the pass sees both holders, but may
    // name only the one /proc shows, as the walk does; root's is hidden.
    let root = TcpListener::bind("127.0.0.1:0").unwrap();
    let root_port = root.local_addr().unwrap().port().to_string();
    let mut py = tool("python3");
    py.args(["-c", HOLD_AS_NOBODY]).uid(65534).gid(65534);
    let mut own = py.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut own_port = String::new();
    BufReader::new(own.stdout.take().unwrap()).read_line(&mut own_port).unwrap();
    let own_port = own_port.trim().to_owned();
    let list = |hidepid: u8, owners: &str, port: &str| {
        let out = with_bpf_caps_under_hidepid(
            hidepid,
            &["list", "--format", "json", "--tcp", "--owners", owners, "--port", port],
        );
        // --owners bpf fails where the iterator cannot load: when it succeeds, it loaded.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "hidepid={hidepid} --owners {owners}: {err}");
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        list[0].clone()
    };
    // hidepid=2: other users' /proc/PID are not there; hidepid=1: there, but closed.
    for (hidepid, owners) in [(2, "bpf"), (2, "proc"), (1, "bpf"), (1, "proc")] {
        let hidden = list(hidepid, owners, &root_port);
        let said = format!("hidepid={hidepid} --owners {owners}");
        assert_eq!(hidden["pids"], json!([]), "{said}: root's holder shown: {hidden}");
        assert_eq!(hidden["owner_unknown_reason"], "hidden", "{said}: {hidden}");
        let shown = list(hidepid, owners, &own_port);
        assert_eq!(shown["pids"], json!([own.id()]), "{said}: {shown}");
    }
    drop(own.stdin.take());
    let _ = own.wait();
}

/// Listens on 127.0.0.1, prints the port, and holds it until stdin closes.
const HOLD_AS_NOBODY: &str = "import socket, sys
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()";
