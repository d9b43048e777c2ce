//! Parsers of what the owner walk reads: fd links, `/proc/PID/status`, `/proc/PID/cmdline`,
//! `/etc/passwd`. Bytes in, values out: no I/O, tested on fixtures, fuzzed.

use std::collections::HashMap;

/// `socket:[12345]` → 12345.
pub(crate) fn parse_socket_link(link: &[u8]) -> Option<u64> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// What portwatch needs from `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Status {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) ppid: Option<u32>,
    /// Pid in the innermost pid namespace (last `NSpid:` field).
    pub(crate) ns_pid: Option<u32>,
}

/// Parses `/proc/PID/status`. `None` when `Name:` or `Uid:` is missing or malformed.
pub(crate) fn parse_status(bytes: &[u8]) -> Option<Status> {
    let mut name = None;
    let mut uid = None;
    let mut ns_pid = None;
    let mut ppid = None;
    for line in bytes.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (key, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        match key {
            b"Name" => name = Some(String::from_utf8_lossy(value).into_owned()),
            // Real, effective, saved, filesystem: the real uid is the first.
            b"Uid" => uid = first_number(value),
            b"PPid" => ppid = first_number(value),
            b"NSpid" => {
                ns_pid = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split_ascii_whitespace().last())
                    .and_then(|v| v.parse().ok())
            }
            _ => {}
        }
    }
    Some(Status { name: name?, uid: uid?, ppid, ns_pid })
}

/// A task's command name (`comm`, as the kernel keeps it: up to 16 bytes, NUL-padded) the way
/// [`parse_status`] reads it from the `Name:` line: the kernel escapes `\n` and `\` there
/// (`proc_task_name`), and the line's value is trimmed.
#[cfg(any(test, feature = "ebpf"))]
pub(crate) fn status_name(comm: &[u8]) -> String {
    let comm = &comm[..comm.iter().position(|b| *b == 0).unwrap_or(comm.len())];
    let mut escaped = Vec::with_capacity(comm.len());
    for &b in comm {
        match b {
            b'\n' => escaped.extend_from_slice(b"\\n"),
            b'\\' => escaped.extend_from_slice(b"\\\\"),
            b => escaped.push(b),
        }
    }
    String::from_utf8_lossy(escaped.trim_ascii()).into_owned()
}

fn first_number(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.split_ascii_whitespace().next()?.parse().ok()
}

/// Most bytes of a command line kept. Any process can make its command line megabytes long
/// (and any user can start one): each owner is copied into every event about its sockets, so
/// an unbounded one multiplies into gigabytes. `ps` shows 4 KiB by default too.
pub(crate) const CMDLINE_MAX_BYTES: usize = 4096;
/// Most arguments kept (a few hundred thousand one-byte arguments fit in the byte limit of
/// the kernel, each a separate string).
pub(crate) const CMDLINE_MAX_ARGS: usize = 128;
/// The last argument of a command line that was cut.
pub(crate) const CMDLINE_CUT: &str = "…";

/// Parses `/proc/PID/cmdline`: NUL-separated arguments, usually NUL-terminated. Longer than
/// [`CMDLINE_MAX_BYTES`] or [`CMDLINE_MAX_ARGS`], it is cut, and [`CMDLINE_CUT`] is its last
/// argument.
pub(crate) fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let cut_bytes = bytes.len() > CMDLINE_MAX_BYTES;
    let bytes = &bytes[..bytes.len().min(CMDLINE_MAX_BYTES)];
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .take(CMDLINE_MAX_ARGS + 1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if cut_bytes || args.len() > CMDLINE_MAX_ARGS {
        args.truncate(CMDLINE_MAX_ARGS);
        args.push(CMDLINE_CUT.to_owned());
    }
    args
}

/// Parses `/etc/passwd` into uid → name. Malformed lines are skipped; the first name for a uid
/// wins, as with getpwuid.
pub(crate) fn parse_passwd(bytes: &[u8]) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let mut f = line.split(|b| *b == b':');
        let (Some(name), Some(_pw), Some(uid)) = (f.next(), f.next(), f.next()) else { continue };
        if name.is_empty() || name.starts_with(b"#") {
            continue;
        }
        let Some(uid) = std::str::from_utf8(uid).ok().and_then(|u| u.parse().ok()) else {
            continue;
        };
        users.entry(uid).or_insert_with(|| String::from_utf8_lossy(name).into_owned());
    }
    users
}
