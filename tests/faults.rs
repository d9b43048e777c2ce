//! Faults and bad input: what portwatch does when processes, namespaces, files, pipes and
//! hooks misbehave. Each test is bounded by deadlines.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use portwatch_core::{EventKind, Filter, Query, Watcher};

use crate::util::{
    Gate, PATIENCE, Release, WatchCmd, is_root, json, portwatch, private_dir, sigterm, skip,
    system_tool, tool, wait_for,
};

/// Messages the library logged, for tests that check a path was taken. Set up once for the
/// test binary; other tests' messages are in it too, so checks look for specific text.
fn logged() -> &'static Mutex<Vec<String>> {
    struct Recorder(Mutex<Vec<String>>);
    impl log::Log for Recorder {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            if let Ok(mut v) = self.0.lock() {
                v.push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    let r = RECORDER.get_or_init(|| {
        let r: &'static Recorder = Box::leak(Box::new(Recorder(Mutex::new(Vec::new()))));
        let _ = log::set_logger(r);
        log::set_max_level(log::LevelFilter::Debug);
        r
    });
    &r.0
}

/// `portwatch watch ARGS` with stdout lines on a channel and stderr kept for the end.
fn spawn_watch(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = portwatch()
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The first line about `port`, waiting at most `PATIENCE`.
fn line_for(rx: &std::sync::mpsc::Receiver<String>, port: u16) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if json(&l)["port"] == port => return json(&l),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no event for port {port} within {PATIENCE:?}");
}

/// SIGTERM, then the exit status and stderr.
fn stop_watch(child: std::process::Child) -> (std::process::ExitStatus, String) {
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn processes_exiting_and_pids_reused_during_scans() {
    // A steady listener must keep its owner while hundreds of processes start and exit
    // (and pids get reused) under the owner walk.
    let steady = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = steady.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Each `true` is a process that exits at once; its pid is freed for reuse.
                let _ = tool("true").status();
                n += 1;
            }
            n
        })
    };
    for _ in 0..50 {
        let list = Query::new().port(port).run().expect("a scan racing with exits succeeds");
        let s = list.iter().find(|s| s.port == port).expect("the steady listener is listed");
        // A child forked by the churn holds a copy of every fd until its exec closes them
        // (CLOEXEC): seen at that instant, it is an owner too, and the only other one.
        let me = std::process::id();
        assert!(s.pids().contains(&me), "the test process owns it: {:?}", s.owners);
        for p in s.processes() {
            assert!(p.pid == me || p.ppid == Some(me), "an owner that is not us: {p:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let spawned = churn.join().unwrap();
    assert!(spawned > 0, "the churn ran meanwhile");
}

#[test]
fn process_holding_ten_thousand_fds() {
    // One process with 10 000 descriptors: the owner walk reads them all and finds the socket.
    let script = "import os, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = 10100
if hard != resource.RLIM_INFINITY and hard < want:
    try:
        hard = want
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        print('skip', flush=True); sys.stdin.read(); sys.exit()
resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(10010)]
print(s.getsockname()[1], len(os.listdir('/proc/self/fd')), flush=True)
sys.stdin.read()";
    let Some(python) = system_tool("python3") else {
        return skip("python3 is not installed");
    };
    let mut child = match Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return skip("python3 is not installed"),
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    if line.trim() == "skip" {
        drop(child.stdin.take());
        let _ = child.wait();
        return skip("cannot raise the open-file limit to 10 100 (needs root)");
    }
    let mut f = line.split_whitespace().map(|v| v.parse::<u32>().unwrap());
    let (port, open) = (f.next().unwrap() as u16, f.next().unwrap());
    assert!(open >= 10_000, "the child holds {open} descriptors");
    let list = Query::new().port(port).run().unwrap();
    let s = list.iter().find(|s| s.port == port).expect("listed");
    assert_eq!(s.pids(), [child.id()], "found among 10 000 descriptors");
    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn destroy_feed_overrun_rescans_and_loses_no_close() {
    let log = logged();
    // The smallest receive buffer the kernel allows, and 400 listeners closed while the scan
    // thread is held in its event callback: the destroy messages cannot all fit, the feed
    // overruns (ENOBUFS) and the watcher rescans once it reads again. (Closing them while it
    // reads lets a fast reader keep up, and the test would prove nothing.)
    let listeners: Vec<TcpListener> =
        (0..400).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: HashSet<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
    let gate = Arc::new(Gate::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let held = Arc::clone(&gate);
    let w = Watcher::builder()
        .filter(Filter::new().address("127.0.0.1".parse().unwrap()))
        .interval(Duration::from_millis(20))
        .destroy_buffer(1)
        .build_with_callback(move |e| {
            let _ = tx.send(e);
            held.pass();
        })
        .unwrap();
    // Opened before the watcher is dropped, released first: a failing test never leaves the
    // scan thread held (its drop would wait for it forever).
    let _release = Release(Arc::clone(&gate));
    let next = |what: &str| {
        rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}"))
    };
    // The first scan reports them (as open at start): then the watcher is running.
    let mut open: HashSet<u16> = HashSet::new();
    while open.len() < ports.len() {
        let e = next("open of the 400 listeners");
        if e.kind() == EventKind::Opened && ports.contains(&e.socket().port) {
            open.insert(e.socket().port);
        }
    }
    // Hold the scan thread in the callback of the next event (a new listener makes one),
    // then close them all.
    gate.hold(true);
    let _sentinel = TcpListener::bind("127.0.0.1:0").unwrap();
    wait_for("the scan thread to be held", PATIENCE, || {
        gate.blocked.load(Ordering::SeqCst).then_some(())
    });
    drop(listeners);
    gate.hold(false);
    let mut closed: HashSet<u16> = HashSet::new();
    while closed.len() < ports.len() {
        let e = next("close of every one of the 400");
        if e.kind() == EventKind::Closed && ports.contains(&e.socket().port) {
            assert!(closed.insert(e.socket().port), "one close per listener");
        }
    }
    // The scan that follows the release may see the closes before the feed is read: the
    // overrun is then noticed (and logged) just after them.
    wait_for("the feed to overrun (else this test proves nothing)", PATIENCE, || {
        log.lock().unwrap().iter().any(|m| m.contains("overran")).then_some(())
    });
    drop(w);
}

#[test]
fn watched_namespace_vanishing_reports_closes_and_keeps_running() {
    if !is_root() {
        return skip("creating network namespaces needs root");
    }
    let name = format!("pwfault-{}", std::process::id());
    if system_tool("ip").is_none() || system_tool("python3").is_none() {
        return skip("ip (iproute2) or python3 is not installed");
    }
    let _ = tool("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
    if !tool("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success()) {
        return skip("ip netns add failed (is iproute2 installed?)");
    }
    let python = system_tool("python3").unwrap();
    let mut holder = tool("ip")
        .args(["netns", "exec", &name])
        .arg(python)
        .arg("-c")
        .arg("import socket, sys\nt = socket.socket(); t.bind(('0.0.0.0', 7301)); t.listen()\nprint(1, flush=True); sys.stdin.read()")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut String::new()).unwrap();
    let path = format!("/run/netns/{name}");
    let w = WatchCmd::start(&["--format", "json", "--netns", &path]);
    w.expect("the listener in the namespace", |l| json(l)["port"] == 7301);
    // Its last process exits and its name is removed: the namespace is gone for everyone
    // but the watcher's own sockets.
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert!(tool("ip").args(["netns", "del", &name]).status().unwrap().success());
    w.expect("the close", |l| json(l)["event"] == "close" && json(l)["port"] == 7301);
    assert!(w.terminate().success(), "the watcher stayed up and exits cleanly");
}

/// A tiny tmpfs mounted on a private directory, unmounted (and the directory removed) when
/// dropped — also when the test fails.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    /// `None` when the mount is refused (not root).
    fn mount() -> Option<SmallTmpfs> {
        use nix::mount::{MsFlags, mount};
        // The mount point is a fresh 0700 directory with an unpredictable name: nobody else
        // can put a symlink where the mount goes. mount(2) directly: no tool from PATH.
        let dir = private_dir();
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("tmpfs"), dir.path(), Some("tmpfs"), flags, Some("size=4k")).ok()?;
        Some(SmallTmpfs { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        // Detached: a watcher that still has a file open there cannot keep it mounted.
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn snapshot_unwritable_or_full_warns_and_watching_continues() {
    // Unwritable for anyone: procfs does not take new files.
    let mut targets = vec!["/proc/portwatch-snapshot".to_owned()];
    // Full: a one-page tmpfs filled up (root only).
    let full = if is_root() { SmallTmpfs::mount() } else { None };
    match &full {
        Some(fs) => {
            let mut f = std::fs::File::create(fs.path().join("filler")).unwrap();
            while f.write_all(&[0u8; 1024]).and_then(|()| f.sync_all()).is_ok() {}
            targets.push(fs.path().join("snapshot").display().to_string());
        }
        None => skip("the full-disk case: mounting a small tmpfs needs root"),
    }
    for path in &targets {
        let (child, rx) = spawn_watch(&["--format", "json", "--snapshot", path]);
        // Two listeners one after the other: each is a change the watcher tries to save.
        for _ in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            line_for(&rx, l.local_addr().unwrap().port());
        }
        let (status, err) = stop_watch(child);
        assert!(status.success(), "{path}: exits 0");
        assert!(
            err.contains("cannot write snapshot") && err.contains("watching continues"),
            "{err}"
        );
        assert_eq!(err.matches("cannot write snapshot").count(), 1, "said once: {err}");
    }
}

#[test]
fn corrupt_snapshot_is_ignored_with_a_reason() {
    let dir = private_dir();
    let path = dir.path().join("snapshot");
    std::fs::write(&path, "portwatch-snapshot 1\nnetns 1\ns tcp garbage\n\u{0}\u{ff}").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (child, rx) = spawn_watch(&["--format", "json", "--snapshot", path.to_str().unwrap()]);
    // Starting fresh: the open listener is reported, as open at start.
    assert_eq!(line_for(&rx, port)["initial"], true);
    let (status, err) = stop_watch(child);
    assert!(status.success());
    assert!(err.contains("ignoring snapshot"), "{err}");
    // And the file was replaced by a good one on exit.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("portwatch-snapshot 1") && text.contains(&port.to_string()));
}

#[test]
fn snapshot_path_holding_another_file_is_refused_and_left_alone() {
    // `--snapshot notes.txt` by mistake: exit 1 naming the file, which keeps its content.
    let dir = private_dir();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "notes\n").unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&notes, &link).unwrap();
    for (path, says) in [
        (&notes, "not a portwatch snapshot"),
        (&fifo, "a FIFO, not a regular file"),
        (&link, "symbolic link"),
        (&std::path::PathBuf::from("/dev/zero"), "a device, not a regular file"),
    ] {
        let mut child = portwatch()
            .args(["watch", "--snapshot"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status =
            wait_for("watch to refuse the snapshot path", PATIENCE, || child.try_wait().unwrap());
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{}: {err}", path.display());
        assert!(err.contains(&path.display().to_string()) && err.contains(says), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "notes\n", "left as it was");
}

#[test]
fn sigterm_in_the_middle_of_a_burst_exits_0_with_whole_lines() {
    let w = WatchCmd::start(&["--format", "json", "--hf"]);
    w.ready();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                std::thread::sleep(Duration::from_millis(2));
                drop(l);
            }
        })
    };
    w.expect("events flowing", |l| json(l)["event"] == "open");
    let status = w.terminate_collecting(|line| {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a torn line after SIGTERM: {line:?}: {e}"));
    });
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
}

#[test]
fn watch_exits_0_when_its_reader_goes_away() {
    let mut child = portwatch()
        .args(["watch", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Read until the watcher reports something we open, then hang up.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut line = String::new();
    while !line.contains(&format!("\"port\":{port},")) {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "watch ended early");
    }
    drop(out);
    // The next event meets a closed pipe.
    drop(l);
    let _more = TcpListener::bind("127.0.0.1:0").unwrap();
    let status =
        wait_for("watch to exit after its reader left", PATIENCE, || child.try_wait().unwrap());
    assert!(status.success(), "a closed stdout is a normal end: {status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.is_empty(), "quietly: {err}");
}

#[test]
fn hanging_or_failing_hooks_never_hold_up_events() {
    for hook in ["sleep 600", "exit 3"] {
        let w = WatchCmd::start_with_env(&["--format", "json", "--exec", hook], &[]);
        w.ready();
        // Events keep coming on stdout while the first hook hangs (or each one fails).
        for _ in 0..3 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            w.expect(&format!("the open of {port} with hook {hook:?}"), |line| {
                json(line)["port"] == port
            });
        }
        assert!(w.terminate().success(), "hook {hook:?}: clean exit");
    }
}

#[test]
fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
    // The hook leaves a grandchild that would live 10 minutes; --exec-timeout must kill the
    // hook's whole process group while the watch goes on.
    let dir = private_dir();
    let pidfile = dir.path().join("pid");
    let hook = format!("sleep 600 & echo $! > {}.tmp && mv {0}.tmp {0}; wait", pidfile.display());
    let w = WatchCmd::start(&[
        "--format",
        "json",
        "--no-initial",
        "--exec-timeout",
        "0.3",
        "--exec",
        &hook,
    ]);
    w.ready();
    let pid: u32 = wait_for("the hook's grandchild to start", PATIENCE, || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    // Gone, or a zombie waiting for whoever inherited it: either way the kill reached it.
    wait_for("the hook's grandchild to be killed at the timeout", PATIENCE, || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(stat) => stat.rsplit(") ").next().is_some_and(|f| f.starts_with('Z')).then_some(()),
        }
    });
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    w.expect(&format!("the open of {port} after a hook was killed"), |line| {
        json(line)["port"] == port
    });
    assert!(w.terminate().success());
}

#[test]
fn dumps_that_keep_failing_reach_the_caller() {
    use portwatch_core::{Backend, Netns, Source};
    // Read through a process's /proc/PID/net that then goes away: every dump fails.
    let mut child =
        Command::new("/bin/sh").args(["-c", "read x"]).stdin(Stdio::piped()).spawn().unwrap();
    let w = Watcher::builder()
        .netns(Netns::from_pid(child.id()).unwrap())
        .backend(Backend::Proc)
        .source(Source::Scan)
        .interval(Duration::from_millis(20))
        .build()
        .unwrap();
    assert_eq!(w.scan_error(), None, "reading while it lives");
    drop(child.stdin.take());
    let _ = child.wait();
    let why = wait_for("the failure to reach the caller", PATIENCE, || w.scan_error());
    assert!(why.contains("/net"), "{why}");
}
