//! Helpers: processes that hold sockets, condition polling with deadlines, running the binary.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, close, fork, pipe2, read};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The `portwatch` binary under test.
pub fn portwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portwatch"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs `portwatch ARGS` and returns its output.
pub fn run(args: &[&str]) -> Output {
    portwatch().args(args).output().expect("portwatch runs")
}

/// Parses stdout of `portwatch list --format json`.
pub fn json_list(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["list", "--format", "json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(
        out.status.success(),
        "portwatch {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON array")
}

/// Polls `check` every 10 ms until it returns `Some`, or panics naming `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks process `pid` to stop, as a service manager would.
pub fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("the process is still there to signal");
}

/// Directories of system tools, owned by root: tests run as root, so a tool is never looked
/// up through `PATH`, where another user might have put something of the same name.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The absolute path of system tool `name` (`ip`, `ss`, `unshare`, `python3`, …), if installed.
pub fn system_tool(name: &str) -> Option<std::path::PathBuf> {
    SYSTEM_DIRS.iter().map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
}

/// A `Command` for system tool `name` by absolute path. Panics naming the tool when it is
/// missing: callers check with [`system_tool`] first where a missing tool means a skip.
pub fn tool(name: &str) -> Command {
    Command::new(system_tool(name).unwrap_or_else(|| panic!("{name} is not installed")))
}

/// A private temporary directory (mode 0700, unpredictable name), removed when dropped. Tests
/// run as root: a predictable name in /tmp is a place for another user to plant a symlink.
pub fn private_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("portwatch-test-").tempdir().expect("a private temp dir")
}

/// `portwatch ARGS` as nobody (`setpriv`, with the further options `setpriv_options`, such
/// as the capabilities to keep) in a mount namespace of its own (`unshare --mount`) whose
/// /proc is mounted over with `hidepid=HIDEPID`: the host's /proc is left alone.
pub fn as_nobody_under_hidepid(hidepid: u8, setpriv_options: &[&str], args: &[&str]) -> Output {
    let script = format!(
        "{} -t proc -o hidepid={hidepid} proc /proc && exec {} --reuid=65534 --regid=65534 \
         --clear-groups {} \"$@\"",
        system_tool("mount").unwrap().display(),
        system_tool("setpriv").unwrap().display(),
        setpriv_options.join(" "),
    );
    tool("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c", &script, "sh"])
        .arg(env!("CARGO_BIN_EXE_portwatch"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Whether we are root; tests that need it [`skip`] without.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The variable CI (`.ci/run`) sets: it has root, Docker, BPF and the tools `make deps`
/// installs, so there a skip means a test that silently stopped testing.
const REQUIRE_PRIVILEGED: &str = "PORTWATCH_REQUIRE_PRIVILEGED";

/// Every test that cannot run here (no root, Docker, BPF or system tool) says so through
/// this: it prints `skipped: REASON`, or fails the test when `PORTWATCH_REQUIRE_PRIVILEGED`
/// is set (to anything but empty or `0`). The caller returns right after.
pub fn skip(reason: &str) {
    let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{reason}, but {REQUIRE_PRIVILEGED} is set: this machine must run every test \
         (as root, with Docker, BPF, and the tools `make deps` installs)"
    );
    eprintln!("skipped: {reason}");
}

/// Ports the sentinels of `ready` use: below the ephemeral range (32768-60999 by default), so
/// a test's `127.0.0.1:0` listener never gets a port an earlier sentinel had — events about
/// sentinels stay queued, and with kernel events every one is reported.
const SENTINEL_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// A short-lived TCP listener on 127.0.0.1, on a port no test listener can get.
pub fn sentinel() -> TcpListener {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ std::process::id());
    let span = u32::from(SENTINEL_PORTS.end - SENTINEL_PORTS.start);
    (0..span)
        .map(|i| SENTINEL_PORTS.start + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16)
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("a free sentinel port")
}

/// A forked child process that holds some of our file descriptors until dropped.
pub struct Holder {
    pub pid: u32,
    release: Option<OwnedFd>,
}

impl Holder {
    /// Forks a child that keeps exactly `keep` open (plus stdio) and blocks until the holder is
    /// dropped.
    pub fn spawn(keep: &[&dyn AsFd]) -> Holder {
        let keep: Vec<RawFd> = keep.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        // CLOEXEC: processes other tests spawn meanwhile must not inherit the write end, or
        // the child would never see EOF.
        let (rx, tx) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let rx_raw = rx.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe calls (close, read, _exit) before it
        // exits: no allocation, no locks, so the other threads of the test harness cannot
        // leave it deadlocked.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                // Drop every fd but stdio, the pipe and the sockets to hold, so this child does
                // not show up as an owner of other tests' sockets.
                for fd in 3..4096 {
                    if fd != rx_raw && !keep.contains(&fd) {
                        let _ = close(fd);
                    }
                }
                let mut buf = [0u8; 1];
                // Returns 0 (EOF) when the parent drops the write end, or fails if it died.
                // SAFETY: rx_raw is still open in this process: it was excluded above.
                let rx = unsafe { std::os::fd::BorrowedFd::borrow_raw(rx_raw) };
                while matches!(read(rx, &mut buf), Ok(n) if n > 0) {}
                // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
                unsafe { nix::libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(rx);
                Holder { pid: child.as_raw() as u32, release: Some(tx) }
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release.take();
        let _ = waitpid(Pid::from_raw(self.pid as i32), None);
    }
}

/// Pids listed for the socket on `port` with protocol `proto` and address `addr`.
pub fn pids_of(list: &[serde_json::Value], proto: &str, addr: &str, port: u16) -> Option<Vec<u32>> {
    list.iter()
        .find(|s| s["proto"] == proto && s["addr"] == addr && s["port"] == port)
        .map(|s| s["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u32).collect())
}

/// A running `portwatch watch`, its stdout lines delivered over a channel. Its stderr is
/// kept, not passed through: tests make hooks fail on purpose, and a hundred expected
/// warnings would bury the output of the test that fails. A failing test prints it.
pub struct WatchCmd {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl WatchCmd {
    pub fn start(args: &[&str]) -> WatchCmd {
        WatchCmd::start_with_env(args, &[])
    }

    /// Like `start`, with these environment variables set.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> WatchCmd {
        let mut child = portwatch()
            .arg("watch")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, kept) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        WatchCmd { child, lines, stderr }
    }

    /// What the watcher wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a line matching `want` arrives.
    pub fn expect(&self, what: &str, mut want: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line with {what} within {PATIENCE:?}; stderr: {:?}", self.stderr());
    }

    /// Returns once the watcher is scanning: opens short-lived sentinel listeners until one
    /// is reported (a sentinel open at its first scan would count as initial, and
    /// `--no-initial` would hide it, hence more than one).
    pub fn ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let sentinel = sentinel();
            let tag = format!("{}", sentinel.local_addr().unwrap().port());
            // Every line of the window is read: with kernel events each sentinel is reported,
            // open and close, and reading one a round would fall further behind each round.
            let window = Instant::now() + Duration::from_millis(200);
            while let Some(left) = window.checked_duration_since(Instant::now()) {
                match self.lines.recv_timeout(left) {
                    Ok(l) if l.contains(&tag) => return,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            drop(sentinel);
        }
        panic!(
            "portwatch watch did not start reporting within {PATIENCE:?}; stderr: {:?}",
            self.stderr()
        );
    }

    /// Every line until `quiet` passes without one.
    pub fn collect(&self, quiet: Duration) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            v.push(l);
        }
        v
    }

    /// Sends SIGTERM, hands every line still written to `f` until stdout closes, and returns
    /// the exit status.
    pub fn terminate_collecting(mut self, mut f: impl FnMut(&str)) -> std::process::ExitStatus {
        sigterm(self.child.id());
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => f(&l),
                Err(_) => break, // stdout closed (or the deadline passed: the wait below says)
            }
        }
        wait_for("portwatch watch to exit", PATIENCE, || self.child.try_wait().unwrap())
    }

    pub fn terminate(self) -> std::process::ExitStatus {
        self.terminate_collecting(|_| {})
    }
}

impl Drop for WatchCmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The harness shows a test's output only when it fails: then the watcher's warnings
        // are what one needs to see.
        if std::thread::panicking() {
            eprintln!("portwatch watch stderr:\n{}", self.stderr());
        }
    }
}

pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

/// Holds a watcher's scan thread in its event callback while `held` is set.
#[derive(Default)]
pub struct Gate {
    held: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    /// A callback is waiting at the gate.
    pub blocked: std::sync::atomic::AtomicBool,
}

impl Gate {
    pub fn hold(&self, on: bool) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = on;
        self.cv.notify_all();
    }

    /// Called by the callback: waits while held.
    pub fn pass(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while *held {
            self.blocked.store(true, std::sync::atomic::Ordering::SeqCst);
            held = self.cv.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        self.blocked.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Opens the gate when dropped.
pub struct Release(pub std::sync::Arc<Gate>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

/// A Docker daemon on the unix socket `sock`: each request line (`GET /containers/NAME/json
/// HTTP/1.0`) goes to `answer`, which says what to reply. Runs until the test ends.
pub fn fake_daemon(sock: &std::path::Path, answer: impl Fn(&str) -> String + Send + 'static) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            // The whole request head, however it arrives.
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let _ = conn.write_all(answer(head.lines().next().unwrap_or("")).as_bytes());
        }
    });
}

/// The daemon's answer for a running container.
pub fn running(id: &str, name: &str, pid: u32) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{{\"Id\":\"{id}\",\
         \"Name\":\"/{name}\",\"State\":{{\"Running\":true,\"Pid\":{pid}}}}}"
    )
}

/// The daemon's answer for a container it does not know.
pub const NO_SUCH_CONTAINER: &str =
    "HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}";
