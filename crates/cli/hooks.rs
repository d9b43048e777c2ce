//! `watch --exec`: runs the user's command for each event, off the scan thread, with a clean
//! environment and a deadline nothing the hook does can defeat. It never changes what the
//! watcher reports.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use portwatch_core::Event;

use crate::Result;
use crate::render::{JsonLine, escape, event_initial, event_name, timestamp};

/// Events waiting for their hook; past this, events are dropped for hooks (not for output).
const HOOK_QUEUE: usize = 1024;
/// A hook running longer than this is killed (`--exec-timeout`).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// At shutdown, how long the running hook may still take before it is killed.
const HOOK_STOP_GRACE: Duration = Duration::from_secs(1);
/// How often a running hook is checked on.
const TICK: Duration = Duration::from_millis(5);

/// The only PATH a hook sees: the system directories, so a PATH set for the watcher (by a
/// unit file, a container image, a user) cannot choose what the hook's commands run.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Passed through when set: they choose how text is decoded and printed, carry no secrets,
/// and a hook that handles non-ASCII names needs them.
const HOOK_LOCALE: [&str; 2] = ["LANG", "LC_ALL"];

/// The hook runner: one worker thread running `sh -c CMD` per event, in order, so a slow or
/// failing hook never delays scanning or output.
pub struct Hooks {
    tx: SyncSender<(Event, SystemTime)>,
    dropped: Arc<AtomicUsize>,
    /// Set at shutdown: queued hooks are skipped and a running one gets `HOOK_STOP_GRACE`.
    stopping: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<()>,
}

impl Hooks {
    pub fn start(cmd: &str, timeout: Duration) -> Result<Hooks> {
        let (tx, rx) = sync_channel::<(Event, SystemTime)>(HOOK_QUEUE);
        let cmd = cmd.to_owned();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let worker =
            std::thread::Builder::new().name("portwatch-exec".into()).spawn(move || {
                let mut skipped = 0;
                for (event, reported) in rx {
                    if stop.load(Ordering::Relaxed) {
                        skipped += 1;
                    } else {
                        run_hook(&cmd, &event, reported, timeout, &stop);
                    }
                }
                if skipped > 0 {
                    log::warn!("--exec: stopping: {skipped} queued hook(s) not run");
                }
            })?;
        Ok(Hooks { tx, dropped: Arc::new(AtomicUsize::new(0)), stopping, worker })
    }

    /// Queues `event`'s hook; `reported` is when its line was written.
    pub fn submit(&self, event: &Event, reported: SystemTime) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((event.clone(), reported)) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!(
                    "--exec hooks are {HOOK_QUEUE} events behind: {n} events skipped for hooks"
                );
            }
        }
    }

    /// At shutdown: the running hook gets `HOOK_STOP_GRACE` to finish, queued ones are
    /// skipped (their events are already on stdout), so a hanging hook cannot hold up exit.
    pub fn finish(self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.tx);
        let _ = self.worker.join();
    }
}

/// The hook's whole environment: a fixed PATH, `HOME=/`, the locale, and the event. Nothing
/// else of the watcher's environment (tokens, `LD_PRELOAD`, `BASH_ENV`, `IFS`) reaches it.
/// Names are escaped as in text lines: a hook that echoes `$PORTWATCH_PATH` into a log
/// cannot be made to forge lines there.
fn hook_env(event: &Event) -> Vec<(&'static str, String)> {
    let s = event.socket();
    let mut env = vec![("PATH", HOOK_PATH.to_owned()), ("HOME", "/".to_owned())];
    for name in HOOK_LOCALE {
        if let Ok(v) = std::env::var(name) {
            env.push((name, v));
        }
    }
    env.extend([
        ("PORTWATCH_EVENT", event_name(event).to_owned()),
        ("PORTWATCH_TS", timestamp(event.at())),
        ("PORTWATCH_INITIAL", u8::from(event_initial(event)).to_string()),
        ("PORTWATCH_PROTO", s.protocol.to_string()),
        ("PORTWATCH_FAMILY", s.family.to_string()),
        ("PORTWATCH_ADDR", s.addr.map(|a| a.to_string()).unwrap_or_default()),
        ("PORTWATCH_PORT", s.port.to_string()),
        ("PORTWATCH_SCOPE", s.scope().map(|sc| sc.as_str()).unwrap_or_default().to_owned()),
        ("PORTWATCH_PATH", s.path.as_deref().map(escape).unwrap_or_default().into_owned()),
        ("PORTWATCH_PIDS", s.pids().iter().map(u32::to_string).collect::<Vec<_>>().join(" ")),
    ]);
    if let Some(direction) = event.direction() {
        let remote = s.remote;
        env.extend([
            ("PORTWATCH_DIRECTION", direction.to_string()),
            ("PORTWATCH_REMOTE_ADDR", remote.map(|r| r.ip().to_string()).unwrap_or_default()),
            ("PORTWATCH_REMOTE_PORT", remote.map(|r| r.port().to_string()).unwrap_or_default()),
        ]);
    }
    if let Event::Disconnect { duration, .. } = event {
        env.push(("PORTWATCH_DURATION_NS", duration.as_nanos().to_string()));
    }
    env
}

fn run_hook(
    cmd: &str,
    event: &Event,
    reported: SystemTime,
    timeout: Duration,
    stopping: &AtomicBool,
) {
    // The hook's stdout goes to our stderr, so it never mixes into the event stream.
    let stdout =
        io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or(Stdio::null());
    // By absolute path: PATH is the environment's to choose, the shell is not.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env_clear()
        .envs(hook_env(event))
        .stdin(Stdio::piped())
        .stdout(stdout)
        // Its own process group, so a kill reaches whatever the hook started, too.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!("--exec: cannot start sh: {e}");
            return;
        }
    };
    let mut input = match JsonLine::new(event, reported).to_line() {
        Ok(line) => StdinFeed::new(child.stdin.take(), line),
        Err(e) => {
            log::warn!("--exec: the event as JSON: {e}; the hook's stdin is empty");
            StdinFeed::new(None, String::new())
        }
    };
    let mut deadline = Instant::now() + timeout;
    loop {
        if stopping.load(Ordering::Relaxed) {
            deadline = deadline.min(Instant::now() + HOOK_STOP_GRACE);
        }
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                log::warn!("--exec hook for a {} event failed: {status}", event_name(event));
                return;
            }
            Ok(None) if Instant::now() >= deadline => {
                log::warn!("--exec hook still running at its deadline: killed");
                kill(&mut child);
                return;
            }
            Ok(None) => input.feed(TICK),
            Err(e) => {
                log::warn!("--exec: waiting for the hook: {e}");
                return;
            }
        }
    }
}

/// Kills the hook's process group and reaps the hook.
fn kill(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// The event's JSON line on its way into the hook's stdin. The pipe is non-blocking and fed
/// between checks of the deadline: a hook that never reads (with an event larger than the
/// pipe's 64 KiB) would otherwise block a plain write forever, and the timeout with it.
struct StdinFeed {
    stdin: Option<ChildStdin>,
    bytes: Vec<u8>,
    sent: usize,
}

impl StdinFeed {
    fn new(stdin: Option<ChildStdin>, mut line: String) -> StdinFeed {
        line.push('\n');
        let stdin = stdin.filter(|s| {
            let nonblocking = fcntl(s, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            if let Err(e) = nonblocking {
                // Blocking writes could outlive the deadline: better no input than no kill.
                log::warn!("--exec: cannot make the hook's stdin non-blocking ({e}): it is empty");
            }
            nonblocking.is_ok()
        });
        StdinFeed { stdin, bytes: line.into_bytes(), sent: 0 }
    }

    /// Writes what the pipe takes within `wait`; returns after `wait` at most. Closes stdin
    /// once all is written (the hook sees EOF) or the hook stopped reading (EPIPE, which is
    /// fine: a hook need not read its stdin).
    fn feed(&mut self, wait: Duration) {
        let Some(stdin) = &mut self.stdin else {
            std::thread::sleep(wait);
            return;
        };
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLOUT)];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        if let Err(e) = poll(&mut fds, timeout) {
            if e != nix::errno::Errno::EINTR {
                self.stdin = None;
            }
            return;
        }
        match stdin.write(&self.bytes[self.sent..]) {
            Ok(n) => self.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => self.sent = self.bytes.len(),
        }
        if self.sent == self.bytes.len() {
            self.stdin = None;
        }
    }
}
