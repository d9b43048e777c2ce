//! Helpers: processes that hold sockets, condition polling with deadlines, running the binary.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, close, fork, pipe2, read};

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

/// Whether we are root; tests that need it print why they skip.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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
