//! The watcher's durable memory of which sockets were open, so a restarted watcher neither
//! announces them again nor forgets to close the ones that went away meanwhile.
//!
//! A small versioned text format, one socket per `s` line followed by one `p` line per owning
//! process; fields are space-separated and percent-escaped. Written atomically (temporary
//! file, fsync, rename, fsync of the directory). Parsing is strict — a corrupt file is
//! rejected whole with a reason, never half-applied.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::SnapshotProblem;
use crate::process::{Owners, Process, UnknownReason};
use crate::socket::{Family, Protocol, Socket, State, UnixType};

const MAGIC: &str = "portwatch-snapshot 1";
/// How every version of the format starts: a file that does not is someone else's.
const MAGIC_PREFIX: &str = "portwatch-snapshot ";

/// The `netns` of a snapshot that covers every namespace (each socket carries its own).
pub(crate) const ALL_NAMESPACES: u64 = 0;

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The network namespace it was taken in, or [`ALL_NAMESPACES`].
    pub(crate) netns: u64,
    pub(crate) sockets: Vec<Socket>,
}

fn escape(s: &str, out: &mut String) {
    if s.is_empty() {
        out.push_str("%-"); // an empty field must still be a field
        return;
    }
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Result<String, String> {
    if s == "%-" {
        return Ok(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn parse_opt<T: std::str::FromStr>(s: &str, what: &str) -> Result<Option<T>, String> {
    if s == "-" { Ok(None) } else { s.parse().map(Some).map_err(|_| format!("bad {what} {s:?}")) }
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// Serializes a snapshot.
pub(crate) fn encode(snap: &Snapshot) -> String {
    let mut out = format!("{MAGIC}\nnetns {}\n", snap.netns);
    for s in &snap.sockets {
        let _ = write!(
            out,
            "s {} {} {} {} ",
            s.protocol.as_str(),
            s.family.as_str(),
            opt(s.addr),
            s.port
        );
        match &s.path {
            Some(p) => escape(p, &mut out),
            None => out.push('-'),
        }
        let unix = s.unix_type.map(|t| match t {
            UnixType::Stream => 1,
            UnixType::Datagram => 2,
            UnixType::Seqpacket => 5,
            UnixType::Other(n) => n,
        });
        let v6only = s.v6only.map(u8::from);
        let _ = writeln!(
            out,
            " {} {} {} {} {} {} {}",
            s.state.to_kernel(),
            s.inode,
            opt(s.uid),
            opt(s.cookie),
            opt(v6only),
            opt(s.interface),
            opt(unix)
        );
        for p in s.processes() {
            let _ = write!(out, "p {} {} {} {} ", p.pid, opt(p.ppid), p.uid, opt(p.ns_pid));
            match &p.user {
                Some(u) => escape(u, &mut out),
                None => out.push('-'),
            }
            out.push(' ');
            escape(&p.comm, &mut out);
            for arg in &p.cmdline {
                out.push(' ');
                escape(arg, &mut out);
            }
            out.push('\n');
        }
    }
    out
}

/// Parses a snapshot, or says what is wrong with it.
pub(crate) fn decode(text: &str) -> Result<Snapshot, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, MAGIC)) => {}
        Some((_, other)) if other.starts_with(MAGIC_PREFIX) => {
            return Err(format!("unsupported version {other:?}, this build reads {MAGIC:?}"));
        }
        _ => return Err("not a portwatch snapshot".to_owned()),
    }
    let netns = match lines.next() {
        Some((_, l)) => parse(l.strip_prefix("netns ").ok_or("missing netns line")?, "netns")?,
        None => return Err("missing netns line".to_owned()),
    };
    let mut sockets: Vec<Socket> = Vec::new();
    for (n, line) in lines {
        let at = |e: String| format!("line {}: {e}", n + 1);
        let f: Vec<&str> = line.split(' ').collect();
        match f.first().copied() {
            Some("s") if f.len() == 13 => sockets.push(decode_socket(&f, netns).map_err(at)?),
            Some("p") if f.len() >= 7 => {
                let p = decode_process(&f).map_err(at)?;
                let s = sockets.last_mut().ok_or_else(|| at("process before any socket".into()))?;
                match &mut s.owners {
                    Owners::Known(v) => v.push(p.into()),
                    o => *o = Owners::Known(vec![p.into()]),
                }
            }
            Some("") | None => {}
            _ => return Err(at(format!("unexpected line {line:?}"))),
        }
    }
    Ok(Snapshot { netns, sockets })
}

fn decode_socket(f: &[&str], netns: u64) -> Result<Socket, String> {
    let protocol = match f[1] {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "unix" => Protocol::Unix,
        p => return Err(format!("bad protocol {p:?}")),
    };
    let family = match f[2] {
        "ipv4" => Family::Ipv4,
        "ipv6" => Family::Ipv6,
        "unix" => Family::Unix,
        p => return Err(format!("bad family {p:?}")),
    };
    let path = if f[5] == "-" { None } else { Some(unescape(f[5])?) };
    let v6only: Option<u8> = parse_opt(f[10], "v6only")?;
    let unix: Option<u8> = parse_opt(f[12], "unix type")?;
    Ok(Socket {
        protocol,
        family,
        addr: parse_opt::<IpAddr>(f[3], "address")?,
        port: parse(f[4], "port")?,
        path,
        remote: None,
        state: State::from_kernel(parse(f[6], "state")?),
        inode: parse(f[7], "inode")?,
        uid: parse_opt(f[8], "uid")?,
        cookie: parse_opt(f[9], "cookie")?,
        netns,
        v6only: v6only.map(|v| v != 0),
        interface: parse_opt(f[11], "interface")?,
        unix_type: unix.map(UnixType::from_kernel),
        container: None,
        forwards_to: None,
        netns_name: None,
        owners: Owners::Unknown(UnknownReason::NotFound),
    })
}

fn decode_process(f: &[&str]) -> Result<Process, String> {
    Ok(Process {
        pid: parse(f[1], "pid")?,
        ppid: parse_opt(f[2], "ppid")?,
        uid: parse(f[3], "uid")?,
        ns_pid: parse_opt(f[4], "ns_pid")?,
        user: if f[5] == "-" { None } else { Some(unescape(f[5])?) },
        comm: unescape(f[6])?,
        cmdline: f[7..].iter().map(|a| unescape(a)).collect::<Result<_, _>>()?,
        // Not kept: read again when the owners are looked up again.
        cgroup: None,
    })
}

/// Largest snapshot read: far above what any real one holds (command lines are capped), low
/// enough that a path pointed at something huge cannot exhaust memory.
pub(crate) const MAX_SNAPSHOT_BYTES: u64 = 64 << 20;

/// What a snapshot path holds when the watcher starts.
#[derive(Debug)]
pub(crate) enum Found {
    /// Nothing, or an empty file: start fresh, and create it.
    Fresh,
    /// A portwatch snapshot.
    Snapshot(Snapshot),
    /// A portwatch snapshot that cannot be used (another version, damaged): start fresh and
    /// replace it. The reason is said once.
    Unusable(String),
}

/// Reads the snapshot at `path`, without following a symbolic link, refusing anything but a
/// regular file of at most [`MAX_SNAPSHOT_BYTES`] (a FIFO or a device cannot hang or flood the
/// start), and refusing a file that is not a portwatch snapshot, which must not be replaced.
pub(crate) fn load(path: &Path) -> Result<Found, SnapshotProblem> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO does not wait for a writer (fstat then refuses it).
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Fresh),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(SnapshotProblem::SymbolicLink);
        }
        Err(e) => return Err(SnapshotProblem::Unreadable(e)),
    };
    let meta = file.metadata().map_err(SnapshotProblem::Unreadable)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(SnapshotProblem::NotRegularFile { what });
    }
    if meta.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotProblem::TooLarge { limit: MAX_SNAPSHOT_BYTES });
    }
    let mut bytes = Vec::new();
    std::io::Read::take(&file, MAX_SNAPSHOT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(SnapshotProblem::Unreadable)?;
    if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotProblem::TooLarge { limit: MAX_SNAPSHOT_BYTES });
    }
    if bytes.is_empty() {
        return Ok(Found::Fresh);
    }
    if !bytes.starts_with(MAGIC_PREFIX.as_bytes()) {
        return Err(SnapshotProblem::NotASnapshot);
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(Found::Unusable("not UTF-8".into()));
    };
    Ok(match decode(text) {
        Ok(snap) => Found::Snapshot(snap),
        Err(reason) => Found::Unusable(reason),
    })
}

/// Writes a snapshot atomically: a new temporary file beside it, fsync, rename over, fsync of
/// the directory. A crash leaves the old snapshot or the new one, never a torn one.
///
/// The temporary file is created with `O_CREAT|O_EXCL` (never through a symlink someone
/// planted, never reusing a file), mode 0600 (it holds command lines) and an unpredictable
/// name, and is removed if anything fails. The rename replaces the directory entry at `path`
/// itself: were it a symlink, the link is replaced, its target never written.
pub(crate) fn save(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name =
        path.file_name().ok_or_else(|| std::io::Error::other("snapshot path has no file name"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(without_temp_name)?;
    tmp.as_file_mut().write_all(encode(snap).as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// tempfile's error names the random temporary file, so the same failure would read
/// differently each time (and be logged each time): keep the OS error alone.
fn without_temp_name(e: std::io::Error) -> std::io::Error {
    let os = e
        .get_ref()
        .and_then(|inner| inner.source())
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error);
    match os {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::from(e.kind()),
    }
}

/// How long a failed write waits before it is tried again, unless a newer snapshot comes.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Writes snapshots on a thread of its own, the newest only: while a build flushes its
/// output, an fsync here takes hundreds of milliseconds, and the scan thread must not wait
/// for it (a 50 ms listener would come and go unseen). Dropping it writes what was last
/// submitted, then joins the thread.
pub(crate) struct Writer {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Pending {
    next: Option<Snapshot>,
    closing: bool,
    /// Writes finished, failed or not (the tests wait on it).
    #[cfg(test)]
    written: usize,
}

impl Writer {
    /// Starts the thread that writes to `path`.
    pub(crate) fn spawn(path: PathBuf) -> std::io::Result<Writer> {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("portwatch-snapshot".into())
            .spawn(move || write_loop(&path, &theirs))?;
        Ok(Writer { shared, thread: Some(thread) })
    }

    /// Queues `snap`, replacing one not written yet.
    pub(crate) fn submit(&self, snap: Snapshot) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).next = Some(snap);
        cv.notify_one();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).closing = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: writes each snapshot submitted; after a failure (said once until a
/// write succeeds) tries again every [`RETRY_EVERY`], and once more when closing.
fn write_loop(path: &Path, shared: &(Mutex<Pending>, Condvar)) {
    let (lock, cv) = shared;
    let mut failed: Option<Snapshot> = None;
    let mut said: Option<String> = None;
    loop {
        let (snap, last) = {
            let mut p = lock.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(s) = p.next.take() {
                    break (s, p.closing);
                }
                if p.closing {
                    match failed.take() {
                        Some(s) => break (s, true),
                        None => return,
                    }
                }
                if failed.is_none() {
                    p = cv.wait(p).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                let (q, wait) =
                    cv.wait_timeout(p, RETRY_EVERY).unwrap_or_else(PoisonError::into_inner);
                p = q;
                if wait.timed_out()
                    && p.next.is_none()
                    && !p.closing
                    && let Some(s) = failed.take()
                {
                    break (s, false);
                }
            }
        };
        match save(path, &snap) {
            Ok(()) => {
                failed = None;
                said = None;
            }
            Err(e) => {
                let msg =
                    format!("cannot write snapshot {}: {e}; watching continues", path.display());
                if said.as_ref() != Some(&msg) {
                    log::warn!("{msg}");
                    said = Some(msg);
                }
                failed = Some(snap);
            }
        }
        #[cfg(test)]
        {
            lock.lock().unwrap_or_else(PoisonError::into_inner).written += 1;
        }
        if last && lock.lock().unwrap_or_else(PoisonError::into_inner).next.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut tcp = crate::socket::fixtures::listener(8080, 99, &[]);
        tcp.family = Family::Ipv6;
        tcp.addr = Some("::".parse().unwrap());
        tcp.inode = 77;
        tcp.uid = Some(1000);
        tcp.netns = 4026531840;
        tcp.v6only = Some(false);
        tcp.interface = Some(1);
        tcp.owners = Owners::Known(vec![
            Process {
                comm: "my server".into(),
                cmdline: vec!["node".into(), "app.js".into(), "".into(), "100%".into()],
                uid: 1000,
                user: Some("dev".into()),
                ns_pid: Some(7),
                ..crate::socket::fixtures::process(10)
            }
            .into(),
        ]);
        let unix = Socket {
            protocol: Protocol::Unix,
            family: Family::Unix,
            addr: None,
            port: 0,
            path: Some("@abstract name\n".into()),
            unix_type: Some(UnixType::Seqpacket),
            cookie: None,
            uid: None,
            v6only: None,
            interface: None,
            owners: Owners::Unknown(UnknownReason::NotFound),
            ..tcp.clone()
        };
        Snapshot { netns: 4026531840, sockets: vec![tcp, unix] }
    }

    #[test]
    fn round_trip() {
        let snap = sample();
        assert_eq!(decode(&encode(&snap)).unwrap(), snap);
    }

    #[test]
    fn corrupt_snapshots_are_rejected_with_a_reason() {
        let good = encode(&sample());
        assert!(decode("").unwrap_err().contains("not a portwatch snapshot"));
        assert!(decode("portwatch-snapshot 9\n").unwrap_err().contains("unsupported version"));
        assert!(decode(&good.replace("s tcp", "s sctp")).unwrap_err().contains("line 3"));
        assert!(decode(&good.replace(" 8080 ", " 99999 ")).unwrap_err().contains("bad port"));
        assert!(decode("portwatch-snapshot 1\nnetns 1\np 1 - 0 - - x\n").is_err());
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
    }

    fn private_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn loaded(path: &Path) -> Snapshot {
        match load(path) {
            Ok(Found::Snapshot(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn save_is_atomic_and_loads_back() {
        let dir = private_dir();
        let path = dir.path().join("state");
        save(&path, &sample()).unwrap();
        assert_eq!(loaded(&path), sample());
        // No temporary file is left behind, and only the owner may read it (command lines).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    #[test]
    fn save_never_writes_through_a_planted_symlink() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        // The snapshot's directory is writable by everyone (like /tmp): another user plants
        // symlinks at every name an older build would have used for its temporary file, and
        // at the snapshot path itself, all pointing at a file root cares about.
        let shared = private_dir();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let elsewhere = private_dir();
        let victim = elsewhere.path().join("shadow");
        std::fs::write(&victim, "root:secret\n").unwrap();
        let path = shared.path().join("state");
        symlink(&victim, shared.path().join(format!(".state.tmp{}", std::process::id()))).unwrap();
        for guess in [".state.tmp", ".state.tmp0", "state.tmp", ".state.swp"] {
            symlink(&victim, shared.path().join(guess)).unwrap();
        }
        symlink(&victim, &path).unwrap();
        save(&path, &sample()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n", "victim untouched");
        // The link at the snapshot path was replaced by the snapshot, not written through.
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(loaded(&path), sample());
    }

    #[test]
    fn load_refuses_what_is_not_a_snapshot_file() {
        let dir = private_dir();
        let p = |name: &str| dir.path().join(name);
        // Missing or empty: start fresh.
        assert!(matches!(load(&p("missing")), Ok(Found::Fresh)));
        std::fs::write(p("empty"), "").unwrap();
        assert!(matches!(load(&p("empty")), Ok(Found::Fresh)));
        // Someone's notes: refused, so they are never replaced.
        std::fs::write(p("notes.txt"), "notes\n").unwrap();
        assert!(matches!(load(&p("notes.txt")), Err(SnapshotProblem::NotASnapshot)));
        // A damaged snapshot of ours: ignored with a reason, and replaced later.
        std::fs::write(p("torn"), "portwatch-snapshot 1\nnetns 1\ns tcp").unwrap();
        assert!(matches!(load(&p("torn")), Ok(Found::Unusable(_))));
        // Not followed, not read: a symlink, a device that never ends, a FIFO that would
        // block the start, a file too large to be one.
        std::os::unix::fs::symlink(p("torn"), p("link")).unwrap();
        assert!(matches!(load(&p("link")), Err(SnapshotProblem::SymbolicLink)));
        assert!(matches!(
            load(Path::new("/dev/zero")),
            Err(SnapshotProblem::NotRegularFile { what: "a device" })
        ));
        nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            load(&p("fifo")),
            Err(SnapshotProblem::NotRegularFile { what: "a FIFO" })
        ));
        assert!(matches!(load(dir.path()), Err(SnapshotProblem::NotRegularFile { .. })));
        let huge = std::fs::File::create(p("huge")).unwrap();
        huge.set_len(MAX_SNAPSHOT_BYTES + 1).unwrap(); // sparse: costs no disk
        assert!(matches!(load(&p("huge")), Err(SnapshotProblem::TooLarge { .. })));
    }

    #[test]
    fn writer_writes_the_newest_by_the_time_it_is_dropped() {
        let dir = private_dir();
        let path = dir.path().join("state");
        let writer = Writer::spawn(path.clone()).unwrap();
        let mut older = sample();
        older.sockets.truncate(1);
        writer.submit(older);
        writer.submit(sample());
        drop(writer);
        assert_eq!(loaded(&path), sample());
    }

    #[test]
    fn writer_retries_a_failed_write_until_it_succeeds() {
        let tmp = private_dir();
        let dir = tmp.path().join("later");
        let path = dir.join("state");
        let writer = Writer::spawn(path.clone()).unwrap();
        let written = || writer.shared.0.lock().unwrap().written;
        let wait = |done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + RETRY_EVERY * 10;
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        writer.submit(sample());
        wait(&|| written() >= 1);
        assert_eq!(written(), 1);
        assert!(!path.exists(), "the directory does not exist yet: the first write fails");
        std::fs::create_dir_all(&dir).unwrap();
        // Nothing new is submitted: the retry alone must write it.
        wait(&|| path.exists());
        assert_eq!(loaded(&path), sample());
        assert!(written() >= 2);
        drop(writer);
    }
}
