//! `portwatch watch`: a Watcher's events as text lines or JSON Lines, optional hooks, and the
//! signal handling a library must not do.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use portwatch_core::{Event, Owners, Process, Socket, UnknownReason, Watcher};

use crate::Result;
use crate::args::{WatchArgs, WatchFormat};
use crate::list::{
    backend, docker_socket, names_socket, namespace_text, netns, own_netns, raise_fd_limit,
    selection,
};

/// Events waiting for their hook; past this, events are dropped for hooks (not for output).
const HOOK_QUEUE: usize = 1024;
/// A hook running longer than this is killed (`--exec-timeout`).
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// At shutdown, how long the running hook may still take before it is killed.
const HOOK_STOP_GRACE: Duration = Duration::from_secs(1);

pub fn run(args: &WatchArgs, out: &mut impl Write) -> Result<()> {
    // SIGINT and SIGTERM are blocked in every thread (the watcher's inherits the mask) and
    // taken by one thread with sigwait, which stops the watcher: it finishes its cycle,
    // reports pending closes and writes the snapshot, and the event loop below ends.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(io::Error::from)?;

    let mut filter = selection(&args.filter).ignore_loopback(args.ignore_loopback);
    if let Some(pid) = args.pid {
        filter = filter.pid(pid, args.children);
    }
    let mut builder = Watcher::builder();
    if args.hf {
        builder = builder.high_fidelity();
    }
    if let Some(v) = args.interval {
        builder = builder.interval(v);
    }
    if let Some(v) = args.burst_scans {
        builder = builder.burst_scans(v);
    }
    if let Some(v) = args.burst_delay {
        builder = builder.burst_delay(v);
    }
    if let Some(v) = args.close_grace {
        builder = builder.close_grace(v);
    }
    if let Some(path) = &args.snapshot {
        builder = builder.snapshot(path);
    }
    if args.filter.all_netns {
        raise_fd_limit();
        builder = builder.all_netns();
        if let Some(socket) = names_socket() {
            builder = builder.docker_names(socket);
        }
    } else if let Some(name) = &args.filter.container {
        // Followed across restarts, which give the container a new namespace.
        builder = builder.container(docker_socket()?, name);
    } else if let Some(ns) = netns(&args.filter)? {
        builder = builder.netns(ns);
    }
    let own = own_netns();
    let watcher = builder
        .filter(filter)
        .backend(backend(&args.filter))
        .report_initial(!args.no_initial)
        .cmdlines(args.format == WatchFormat::Json || args.exec.is_some())
        .build()?;

    let stop = watcher.stop_handle();
    std::thread::Builder::new().name("portwatch-signals".into()).spawn(move || {
        if let Ok(sig) = signals.wait() {
            log::info!("{sig}: stopping after this cycle");
        }
        stop.stop();
    })?;

    let timeout = args.exec_timeout.unwrap_or(HOOK_TIMEOUT);
    let hooks = args.exec.as_deref().map(|cmd| Hooks::start(cmd, timeout)).transpose()?;
    for event in watcher.events() {
        let written = match args.format {
            WatchFormat::Text => writeln!(out, "{}", text_line(&event, own)),
            WatchFormat::Json => writeln!(out, "{}", json_line(&event)),
        }
        .and_then(|()| out.flush());
        if let Err(e) = written {
            // The reader is gone: stop quietly (main turns a broken pipe into exit 0).
            watcher.stop_handle().stop();
            return Err(e.into());
        }
        if let Some(h) = &hooks {
            h.submit(&event);
        }
    }
    if let Some(h) = hooks {
        h.finish();
    }
    Ok(())
}

/// `2026-11-22T03:48:02.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// `PID COMMAND, PID COMMAND`, or `unknown (reason)`.
fn pids_text(owners: &Owners, procs: &[Process]) -> String {
    match owners {
        Owners::Known(_) => {
            procs.iter().map(|p| format!("{} {}", p.pid, p.comm)).collect::<Vec<_>>().join(", ")
        }
        Owners::Unknown(UnknownReason::PermissionDenied { .. }) => {
            "unknown (permission denied)".into()
        }
        Owners::Unknown(UnknownReason::NotFound) => "unknown (not found)".into(),
        Owners::Unknown(_) | _ => "unknown".into(),
    }
}

/// The port, or the path of a unix socket.
fn port_text(s: &Socket) -> String {
    match &s.path {
        Some(p) if s.addr.is_none() => p.clone(),
        _ => s.port.to_string(),
    }
}

/// `tcp, 0.0.0.0`, then the container or namespace when it is not this process's own.
fn where_text(s: &Socket, own_netns: u64) -> String {
    let at = match s.addr {
        Some(a) => format!("{}, {a}", s.protocol),
        None => s.protocol.to_string(),
    };
    match (&s.container, namespace_text(s, own_netns)) {
        (Some(_), Some(name)) => format!("{at}, container {name}"),
        (None, Some(ns)) => format!("{at}, {ns}"),
        _ => at,
    }
}

/// One line, keeping the reference monitor's wording (`New port opened: PORT`,
/// `Port closed: PORT`, `pids:`, `last pids:`) so existing greps work.
pub fn text_line(event: &Event, own_netns: u64) -> String {
    let s = event.socket();
    let ts = rfc3339(event.at());
    let (port, at) = (port_text(s), where_text(s, own_netns));
    match event {
        Event::Opened { initial, .. } => format!(
            "[{ts}] New port opened: {port} ({at}, pids: {}){}",
            pids_text(&s.owners, s.processes()),
            if *initial { " [open at start]" } else { "" }
        ),
        Event::Closed { .. } => {
            format!(
                "[{ts}] Port closed: {port} ({at}, last pids: {})",
                pids_text(&s.owners, s.processes())
            )
        }
        Event::OwnersChanged { previous, .. } => format!(
            "[{ts}] Port owners changed: {port} ({at}, pids: {}; before: {})",
            pids_text(&s.owners, s.processes()),
            pids_text(&Owners::Known(previous.clone()), previous)
        ),
        _ => format!("[{ts}] Port event: {port} ({at})"),
    }
}

/// The `event` field of the JSON form and of `PORTWATCH_EVENT`.
fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Opened { .. } => "open",
        Event::Closed { .. } => "close",
        Event::OwnersChanged { .. } => "owners",
        _ => "event",
    }
}

/// `ts`, `event` and `initial` (and, for owner changes, `previous_pids`), then the fields of
/// the socket object `list --format json` prints, in that order.
pub fn json_line(event: &Event) -> String {
    let socket = serde_json::to_string(event.socket()).unwrap_or_else(|_| "{}".into());
    let mut line = format!(
        "{{\"ts\":\"{}\",\"event\":\"{}\",\"initial\":{},",
        rfc3339(event.at()),
        event_name(event),
        event.initial()
    );
    if let Event::OwnersChanged { previous, .. } = event {
        let pids: Vec<u32> = previous.iter().map(|p| p.pid).collect();
        line.push_str(&format!("\"previous_pids\":{},", serde_json::json!(pids)));
    }
    // The socket object without its opening brace.
    line.push_str(socket.strip_prefix('{').unwrap_or("}"));
    line
}

/// The hook runner: one worker thread running `sh -c CMD` per event, in order, so a slow or
/// failing hook never delays scanning or output.
struct Hooks {
    tx: SyncSender<Event>,
    dropped: Arc<AtomicUsize>,
    /// Set at shutdown: queued hooks are skipped and a running one gets `HOOK_STOP_GRACE`.
    stopping: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<()>,
}

impl Hooks {
    fn start(cmd: &str, timeout: Duration) -> Result<Hooks> {
        let (tx, rx) = sync_channel::<Event>(HOOK_QUEUE);
        let cmd = cmd.to_owned();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let worker =
            std::thread::Builder::new().name("portwatch-exec".into()).spawn(move || {
                let mut skipped = 0;
                for event in rx {
                    if stop.load(Ordering::Relaxed) {
                        skipped += 1;
                    } else {
                        run_hook(&cmd, &event, timeout, &stop);
                    }
                }
                if skipped > 0 {
                    log::warn!("--exec: stopping: {skipped} queued hook(s) not run");
                }
            })?;
        Ok(Hooks { tx, dropped: Arc::new(AtomicUsize::new(0)), stopping, worker })
    }

    fn submit(&self, event: &Event) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(event.clone()) {
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
    fn finish(self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.tx);
        let _ = self.worker.join();
    }
}

fn hook_env(event: &Event) -> Vec<(&'static str, String)> {
    let s = event.socket();
    vec![
        ("PORTWATCH_EVENT", event_name(event).to_owned()),
        ("PORTWATCH_TS", rfc3339(event.at())),
        ("PORTWATCH_INITIAL", u8::from(event.initial()).to_string()),
        ("PORTWATCH_PROTO", s.protocol.to_string()),
        ("PORTWATCH_FAMILY", s.family.to_string()),
        ("PORTWATCH_ADDR", s.addr.map(|a| a.to_string()).unwrap_or_default()),
        ("PORTWATCH_PORT", s.port.to_string()),
        ("PORTWATCH_PATH", s.path.clone().unwrap_or_default()),
        ("PORTWATCH_PIDS", s.pids().iter().map(u32::to_string).collect::<Vec<_>>().join(" ")),
    ]
}

fn run_hook(cmd: &str, event: &Event, timeout: Duration, stopping: &AtomicBool) {
    // The hook's stdout goes to our stderr, so it never mixes into the event stream.
    let stdout =
        io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or(Stdio::null());
    // By absolute path: PATH is the environment's to choose, the shell is not.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
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
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = writeln!(stdin, "{}", json_line(event));
    }
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
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                log::warn!("--exec: waiting for the hook: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_319_282_123);
        assert_eq!(rfc3339(t), "2026-11-22T03:48:02.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
