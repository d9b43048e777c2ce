//! Names other users write, used as weapons: a process name (`comm`) and an abstract unix
//! socket name holding control characters and a whole forged event line, and hooks that fight
//! their deadline. Each hostile process runs as `nobody` when we are root, as an attacker
//! would.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::util::{
    PATIENCE, WatchCmd, is_root, portwatch, private_dir, skip, system_tool, wait_for,
};

/// The line an attacker wants a log reader (or a grep) to believe.
const FORGED_TS: &str = "[2026-11-22T03:48:02.123Z]";
const FORGED: &str = "New port opened: 22 (tcp, 0.0.0.0, pids: 1 sshd)";

/// Control characters and the invisible characters that reorder or break lines: none of them
/// may reach human-readable output raw.
fn raw_controls(s: &str) -> Vec<char> {
    s.chars()
        .filter(|c| {
            c.is_control()
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
                || ('\u{202a}'..='\u{202e}').contains(c)
                || ('\u{2066}'..='\u{2069}').contains(c)
        })
        .collect()
}

/// A process, as nobody when we are root, that names itself with control characters and
/// holds a TCP listener and an abstract unix listener whose name carries a forged line.
pub struct Hostile {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
    pub port: u16,
    /// A unique part of the unix name, to find its line.
    tag: String,
}

impl Hostile {
    /// `None` (after a skip) when python3 is missing. With `sharers`, that many forked
    /// children hold the listeners too, each with a command line padded to the 4 KiB the
    /// core keeps: an event naming them all is far larger than a pipe holds.
    fn spawn(sharers: usize) -> Option<Hostile> {
        // ESC, CR, newline, backspace, DEL and a right-to-left override: 15 bytes, the most a
        // comm holds.
        Hostile::named("a\x1b[31m\r\n\x08\x7f\u{202e}", sharers)
    }

    /// Like `spawn`, with this command name (at most 15 bytes), written through
    /// /proc/self/comm as any process may.
    pub fn named(comm: &str, sharers: usize) -> Option<Hostile> {
        let Some(python) = system_tool("python3") else {
            skip("python3 is not installed; make deps installs it");
            return None;
        };
        let tag = format!("pw{:08x}", std::process::id() ^ rand_bits());
        let name = format!("\0{tag}\x1b[2K\r\n{FORGED_TS} {FORGED}\u{202e}");
        assert!(comm.len() <= 15 && name.len() < 108);
        let script = r#"
import os, signal, socket, sys
open('/proc/self/comm', 'wb').write(bytes.fromhex(sys.argv[1]))
t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen()
u = socket.socket(socket.AF_UNIX); u.bind(bytes.fromhex(sys.argv[2])); u.listen()
kids = []
for _ in range(int(sys.argv[3])):
    pid = os.fork()
    if pid == 0:
        while True:
            signal.pause()
    kids.append(pid)
print(t.getsockname()[1], flush=True)
sys.stdin.readline()
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
t.close(); u.close()
print('closed', flush=True)
sys.stdin.read()
"#;
        let mut cmd = std::process::Command::new(python);
        let sharers = sharers.to_string();
        cmd.args(["-c", script, &hex(comm.as_bytes()), &hex(name.as_bytes()), &sharers])
            .current_dir("/")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        cmd.arg("x".repeat(8192));
        if is_root() {
            cmd.uid(65534).gid(65534);
        }
        let mut child = cmd.spawn().expect("python3 starts");
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("python3 said {line:?}"));
        Some(Hostile { pid: child.id(), child, stdin, stdout, port, tag })
    }

    /// Closes both listeners, and returns once they are closed.
    pub fn close(&mut self) {
        writeln!(self.stdin).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "closed");
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        // The whole group: a test that failed before `close` must not leave the forked
        // sharers behind, holding the forged names that other tests (and other runs) read.
        let group = nix::unistd::Pid::from_raw(-(self.pid as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Enough randomness for a name no other test run shares.
fn rand_bits() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

/// Every line `w` writes until `done` holds for the lines so far.
fn lines_until(w: &WatchCmd, what: &str, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    while !done(&lines) {
        lines.push(w.expect(what, |_| true));
    }
    lines
}

/// The text lines of a hostile process's opens and closes: one line per event, no raw
/// control character, and the forged event only ever inside the real one, escaped.
#[test]
fn forged_names_cannot_forge_watch_lines() {
    let Some(mut h) = Hostile::spawn(0) else { return };
    let pid = h.pid.to_string();
    let w = WatchCmd::start(&["-t", "-x", "--pid", &pid]);
    let opened = |l: &[String], key: &str| {
        l.iter().any(|l| l.contains("New port opened: ") && l.contains(key))
    };
    let port = format!(": {} (", h.port);
    let mut lines = lines_until(&w, "both opens", |l| opened(l, &port) && opened(l, &h.tag));
    h.close();
    let closed =
        |l: &[String], key: &str| l.iter().any(|l| l.contains("Port closed: ") && l.contains(key));
    lines.extend(lines_until(&w, "both closes", |l| closed(l, &port) && closed(l, &h.tag)));
    assert!(w.terminate().success());

    assert_eq!(lines.len(), 4, "exactly one line per event: {lines:#?}");
    for l in &lines {
        assert!(raw_controls(l).is_empty(), "raw {:?} in {l:?}", raw_controls(l));
        assert!(!l.starts_with(FORGED_TS), "a forged line: {l:?}");
        if l.contains(FORGED) {
            assert!(l.contains(&h.tag), "the forged text outside its own event: {l:?}");
            assert!(l.contains(&format!("\\r\\n{FORGED_TS} {FORGED}\\u{{202e}}")), "{l:?}");
        }
    }
    let tcp = lines.iter().find(|l| l.contains(&port)).unwrap();
    assert!(tcp.contains(&format!("pids: {pid} a\\x1b[31m\\r")), "comm escaped: {tcp:?}");
}

/// The `list` table: one row per socket whatever the names hold, nothing raw.
#[test]
fn forged_names_cannot_forge_table_rows() {
    let Some(h) = Hostile::spawn(0) else { return };
    let out = portwatch().args(["list", "-t", "-x"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).expect("the table is UTF-8");
    let rows: Vec<&str> = table.lines().collect();
    for row in &rows {
        assert!(raw_controls(row).is_empty(), "raw {:?} in {row:?}", raw_controls(row));
        assert!(!row.starts_with(FORGED_TS), "a forged row: {row:?}");
    }
    // Other tests' hostile processes may be listed too: ours is the row with our tag.
    let ours: Vec<_> = rows.iter().filter(|r| r.contains(&h.tag)).collect();
    assert_eq!(ours.len(), 1, "the unix socket is one row: {ours:#?}");
    assert!(ours[0].contains(FORGED) && ours[0].contains(&format!("{}/a\\x1b[31m", h.pid)));
    for row in rows.iter().filter(|r| r.contains(FORGED)) {
        assert!(row.starts_with("unix "), "the forged text only inside a unix row: {row:?}");
    }
}

/// Hooks see a clean environment: nothing of the watcher's (a token) but a fixed PATH,
/// `HOME=/`, the locale and the event; and the unix path in it is escaped like the text lines.
#[test]
fn hooks_get_a_clean_environment_with_escaped_names() {
    let Some(h) = Hostile::spawn(0) else { return };
    let env_tool = system_tool("env").expect("coreutils' env");
    let dir = private_dir();
    let out = dir.path().join("env");
    // Written aside and renamed, so the test never reads half a file.
    let hook = format!(
        "{} -0 > {out}.tmp && /bin/mv {out}.tmp {out}",
        env_tool.display(),
        out = out.display()
    );
    let pid = h.pid.to_string();
    let w = WatchCmd::start_with_env(
        &["-x", "--pid", &pid, "--exec", &hook],
        &[("SECRET_TOKEN", "x"), ("LANG", "C.UTF-8")],
    );
    let env = wait_for("the hook's environment", PATIENCE, || std::fs::read(&out).ok());
    assert!(w.terminate().success());
    let env = String::from_utf8(env).expect("the environment is UTF-8");
    let vars: Vec<(&str, &str)> =
        env.split('\0').filter(|v| !v.is_empty()).map(|v| v.split_once('=').unwrap()).collect();
    let get = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    assert_eq!(get("SECRET_TOKEN"), None, "the watcher's secrets stay out: {vars:?}");
    assert_eq!(get("PATH"), Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    assert_eq!(get("HOME"), Some("/"));
    assert_eq!(get("LANG"), Some("C.UTF-8"), "the locale passes");
    let path = get("PORTWATCH_PATH").expect("the unix path");
    assert!(path.contains(&h.tag) && path.contains(FORGED), "{path:?}");
    for (k, v) in &vars {
        assert!(raw_controls(v).is_empty(), "raw {:?} in {k}={v:?}", raw_controls(v));
        let known = ["PATH", "HOME", "LANG", "PWD", "SHLVL", "_"].contains(k);
        assert!(known || k.starts_with("PORTWATCH_"), "{k} leaked into the hook");
    }
}

/// A hook that never reads its stdin, handed an event far larger than a pipe holds, is still
/// killed at --exec-timeout, and the next event's hook runs.
#[test]
fn a_hook_that_never_reads_a_large_event_is_killed_at_its_deadline() {
    let Some(mut h) = Hostile::spawn(60) else { return };
    let sleep = system_tool("sleep").expect("coreutils' sleep");
    let dir = private_dir();
    let log = dir.path().join("log");
    // Each hook notes its event and pid (`exec`: the shell becomes the sleep), then sleeps
    // without reading stdin.
    let hook =
        format!("echo \"$PORTWATCH_EVENT $$\" >> {}; exec {} 600", log.display(), sleep.display());
    let pid = h.pid.to_string();
    let w = WatchCmd::start(&[
        "-t",
        "--format",
        "json",
        "--pid",
        &pid,
        "--exec-timeout",
        "0.5",
        "--exec",
        &hook,
    ]);
    let line = w.expect("the open", |l| l.contains(&format!("\"port\":{}", h.port)));
    assert!(line.len() > 200_000, "the event is larger than a pipe: {} bytes", line.len());
    assert!(line.contains("\"cmdline\":\"") && line.contains("…"), "command lines are cut");
    let logged = |what: &str| {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        log.lines().find_map(|l| l.strip_prefix(what)?.trim().parse::<u32>().ok())
    };
    let first = wait_for("the first hook to start", PATIENCE, || logged("open "));
    h.close();
    // Before the fix this hook never ran: the first one blocked writing its stdin forever.
    wait_for("the next event's hook", PATIENCE, || logged("close "));
    let gone = std::fs::read_to_string(format!("/proc/{first}/stat"))
        .map_or(true, |stat| stat.rsplit(") ").next().is_some_and(|f| f.starts_with('Z')));
    assert!(gone, "the first hook was killed at its deadline");
    assert!(w.terminate().success());
}
