//! Whether `/proc` hides other users' processes from us (`hidepid=`), so that an owner that
//! was not found may simply be invisible.
//!
//! With `hidepid=2` (`invisible`) another user's `/proc/PID` is not even listed, and with
//! `hidepid=1` (`noaccess`) it is listed but unreadable: either way the walk cannot tell a
//! closed socket from a hidden owner, so the reason must come from the mount itself. Processes
//! with `CAP_SYS_PTRACE` and members of the mount's `gid=` group see everything; for them
//! hidepid explains nothing.

use std::collections::HashSet;
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
pub(super) fn explains_missing(scan: &FdScan, wanted: &HashSet<u64>, proc_root: &Path) -> bool {
    if wanted.iter().all(|i| scan.holders.contains_key(i)) {
        return false;
    }
    let Ok(mountinfo) = std::fs::read(proc_root.join("self/mountinfo")) else { return false };
    let point = std::fs::canonicalize(proc_root).unwrap_or_else(|_| proc_root.to_owned());
    let Some(gid) = parse_hidepid(&mountinfo, point.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let status = std::fs::read(proc_root.join("self/status")).unwrap_or_default();
    !exempt(&status, gid)
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
}
