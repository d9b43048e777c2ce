//! Whether `/proc` hides other users' processes from us (`hidepid=`), so that an owner that
//! was not found may simply be invisible; and, for the BPF pass (which sees every process
//! whatever `/proc` shows), dropping the holders `/proc` would not have shown.
//!
//! With `hidepid=2` (`invisible`) another user's `/proc/PID` is not even listed, and with
//! `hidepid=1` (`noaccess`) it is listed but unreadable: either way the walk cannot tell a
//! closed socket from a hidden owner, so the reason must come from the mount itself. Processes
//! with `CAP_SYS_PTRACE` and members of the mount's `gid=` group see everything; for them
//! hidepid explains nothing.

use std::path::Path;

use super::FdScan;

/// `CAP_SYS_PTRACE`'s bit in `CapEff:`.
const CAP_SYS_PTRACE: u32 = 19;

/// The hidepid setting of the procfs mounted at `mount_point`, from `/proc/self/mountinfo`:
/// `Some(gid)` when it hides processes (with the exempt group, if `gid=` names one), `None`
/// when it does not or no procfs is mounted there. The last mount at that point wins, as the
/// kernel's path lookup sees it.
pub(crate) fn parse_hidepid(mountinfo: &[u8], mount_point: &[u8]) -> Option<Option<u32>> {
    let mut setting = None;
    for line in mountinfo.split(|b| *b == b'\n') {
        let Some(dash) = line.windows(3).position(|w| w == b" - ") else { continue };
        let (mount, fs) = (&line[..dash], &line[dash + 3..]);
        let mut mount_fields = mount.split(|b| *b == b' ');
        let Some(point) = mount_fields.nth(4) else { continue };
        if unescape(point) != mount_point {
            continue;
        }
        let mut fs_fields = fs.split(|b| *b == b' ');
        if fs_fields.next() != Some(b"proc") {
            setting = None;
            continue;
        }
        let options = mount_fields.next().into_iter().chain(fs_fields.nth(1));
        let mut hides = false;
        let mut gid = None;
        for option in options.flat_map(|o| o.split(|b| *b == b',')) {
            if let Some(v) = option.strip_prefix(b"hidepid=") {
                hides = !matches!(v, b"0" | b"off");
            } else if let Some(v) = option.strip_prefix(b"gid=") {
                gid = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            }
        }
        setting = hides.then_some(gid);
    }
    setting
}

/// Undoes mountinfo's octal escapes (`\040` for a space) in a path.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8).wrapping_add(b - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Whether the process whose `/proc/PID/status` this is sees through hidepid: it has
/// `CAP_SYS_PTRACE` (in `CapEff:`), or `gid` (the mount's `gid=`) is its effective group (the
/// second of `Gid:`) or one of its `Groups:`.
pub(crate) fn exempt(status: &[u8], gid: Option<u32>) -> bool {
    let field = |key: &[u8]| {
        status.split(|b| *b == b'\n').find_map(|l| l.strip_prefix(key)).and_then(|v| {
            std::str::from_utf8(v).ok().map(|v| v.split_ascii_whitespace().collect::<Vec<_>>())
        })
    };
    let caps =
        field(b"CapEff:").and_then(|v| u64::from_str_radix(v.first()?, 16).ok()).unwrap_or(0);
    let ptrace = caps & (1 << CAP_SYS_PTRACE) != 0;
    let gid = gid.map(|g| g.to_string());
    let member = gid.is_some_and(|g| {
        field(b"Gid:").is_some_and(|v| v.get(1) == Some(&g.as_str()))
            || field(b"Groups:").is_some_and(|v| v.contains(&g.as_str()))
    });
    ptrace || member
}

/// Whether some of `wanted` has no holder in `scan` and `/proc` at `proc_root` hides other
/// users' processes from this one: then hidepid, not a closed socket, is the likely reason.
/// Reads nothing when every socket's owner was found.
pub(super) fn explains_missing(scan: &FdScan, wanted: &super::Inodes, proc_root: &Path) -> bool {
    if wanted.iter().all(|i| scan.holders.contains_key(i)) {
        return false;
    }
    hides_from_us(proc_root)
}

/// Whether `/proc` at `proc_root` hides other users' processes from this process: mounted
/// with `hidepid=` and this process not exempt ([`exempt`]). Reads `/proc/self/status`, and
/// the mount table only without `CAP_SYS_PTRACE` (root's usual case needs one small read).
pub(super) fn hides_from_us(proc_root: &Path) -> bool {
    let status = std::fs::read(proc_root.join("self/status")).unwrap_or_default();
    if exempt(&status, None) {
        return false;
    }
    let Ok(mountinfo) = std::fs::read(proc_root.join("self/mountinfo")) else { return false };
    let point = std::fs::canonicalize(proc_root).unwrap_or_else(|_| proc_root.to_owned());
    let Some(gid) = parse_hidepid(&mountinfo, point.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    !exempt(&status, gid)
}

/// Drops from `scan` (a BPF pass's) every holder whose `/proc/PID` this process may not
/// enter, as the walk could not have: with `hidepid=2` it is not listed, with `hidepid=1`
/// it is listed but closed. The pass sees every process; without this, a process with `CAP_BPF`
/// and `CAP_PERFMON` but not `CAP_SYS_PTRACE` would be shown, from the pass alone, the
/// processes `/proc` hides from it. Its sockets then say what the walk's would: hidden.
/// One `openat` per holder: call it only where [`hides_from_us`].
#[cfg(feature = "ebpf")]
pub(super) fn drop_invisible(scan: &mut FdScan, proc_root: &Path) {
    let Ok(proc_dir) = super::open_proc(proc_root) else {
        scan.processes.clear();
        scan.holders.clear();
        return;
    };
    scan.processes.retain(|pid, _| visible(&proc_dir, *pid));
    for pids in scan.holders.values_mut() {
        pids.retain(|p| scan.processes.contains_key(p));
    }
    scan.holders.retain(|_, pids| !pids.is_empty());
}

/// Whether this process may enter `/proc/PID`: open it for reading, which hidepid checks.
/// An `O_PATH` open, as [`super::open_pid`] makes, is not checked: it succeeds under
/// `hidepid=1` and `hidepid=2` alike (the kernel checks when the directory is read or
/// entered, and hides it only from listings), so it cannot tell.
#[cfg(feature = "ebpf")]
fn visible(proc_dir: &std::os::fd::OwnedFd, pid: u32) -> bool {
    use nix::fcntl::OFlag;
    let mut name = [0u8; 12];
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let name = super::decimal_cstr(pid, &mut name);
    nix::fcntl::openat(proc_dir, name, flags, nix::sys::stat::Mode::empty()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/mountinfo lines from Linux 6.18.44: the host's /proc, then a private one
    /// mounted over it with `hidepid=2,gid=27` (the kernel prints `invisible`), and one with
    /// a space in its mount point.
    const HOST: &[u8] = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";
    const HIDDEN: &[u8] = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
611 22 0:77 / /proc rw,relatime - proc proc rw,gid=27,hidepid=invisible\n\
612 27 0:78 / /my\\040proc rw,relatime - proc proc rw,hidepid=1\n";

    #[test]
    fn hidepid_from_mountinfo() {
        assert_eq!(parse_hidepid(HOST, b"/proc"), None);
        assert_eq!(parse_hidepid(HIDDEN, b"/proc"), Some(Some(27)), "the last mount wins");
        assert_eq!(parse_hidepid(HIDDEN, b"/my proc"), Some(None));
        assert_eq!(parse_hidepid(HIDDEN, b"/elsewhere"), None);
        let off = b"22 27 0:21 / /proc rw - proc proc rw,hidepid=off\n";
        assert_eq!(parse_hidepid(off, b"/proc"), None);
        let old = b"22 27 0:21 / /proc rw,hidepid=2 - proc proc rw\n";
        assert_eq!(parse_hidepid(old, b"/proc"), Some(None), "older kernels: per-mount options");
        let covered = [HIDDEN, b"700 22 0:80 / /proc rw - tmpfs tmpfs rw\n"].concat();
        assert_eq!(parse_hidepid(&covered, b"/proc"), None, "no longer procfs there");
        for cut in 0..HIDDEN.len() {
            let _ = parse_hidepid(&HIDDEN[..cut], b"/proc");
        }
    }

    #[test]
    fn who_sees_through_hidepid() {
        let status = |caps: &str| {
            format!(
                "Name:\tx\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t100\t65534\t65534\nGroups:\t27 44 \nCapEff:\t{caps}\n"
            )
        };
        let nobody = status("0000000000000000");
        assert!(!exempt(nobody.as_bytes(), None));
        assert!(!exempt(nobody.as_bytes(), Some(65534)), "the real gid is not the effective one");
        assert!(exempt(nobody.as_bytes(), Some(100)), "effective gid");
        assert!(exempt(nobody.as_bytes(), Some(44)), "supplementary group");
        assert!(!exempt(nobody.as_bytes(), Some(4)));
        assert!(exempt(status("0000000000080000").as_bytes(), None), "CAP_SYS_PTRACE");
        assert!(exempt(status("000001ffffffffff").as_bytes(), None), "root");
        assert!(!exempt(status("zz").as_bytes(), None));
        assert!(!exempt(b"", Some(0)));
    }

    /// The decision the BPF lookup makes once (whether to check each holder): a fake /proc
    /// (a directory with `self/status` and `self/mountinfo`) mounted, as its mountinfo says,
    /// with or without hidepid.
    #[test]
    fn whether_proc_hides_processes_from_us() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(root.join("self")).unwrap();
        let at = |options: &str, caps: &str, gid: u32| {
            let line = format!("611 22 0:77 / {} rw - proc proc {options}\n", root.display());
            std::fs::write(root.join("self/mountinfo"), line).unwrap();
            let status = format!("Gid:\t{gid}\t{gid}\t{gid}\t{gid}\nCapEff:\t{caps}\n");
            std::fs::write(root.join("self/status"), status).unwrap();
            hides_from_us(&root)
        };
        let (none, bpf_perfmon, ptrace) = ("0000000000000000", "000000c000000000", "80000");
        assert!(at("rw,hidepid=invisible", none, 65534));
        assert!(at("rw,hidepid=noaccess", bpf_perfmon, 65534), "CAP_BPF sees no more of /proc");
        assert!(!at("rw,hidepid=invisible", ptrace, 65534), "CAP_SYS_PTRACE sees through");
        assert!(!at("rw,gid=27,hidepid=invisible", none, 27), "the mount's gid= group");
        assert!(!at("rw", none, 65534), "no hidepid");
        assert!(!hides_from_us(&root.join("nowhere")), "nothing to read: nothing hidden");
    }
}
