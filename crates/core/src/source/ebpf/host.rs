//! What the host offers the eBPF programs: where cgroup2 is mounted, which capabilities this
//! process has. Pure parsers over `/proc/self/mountinfo` and `/proc/self/status` text, plus the
//! two reads; nothing here loads or attaches anything.

use std::path::PathBuf;

/// Mount point of the cgroup2 hierarchy in `mountinfo` text, preferring a mount of the
/// hierarchy's root (root field `/`) — attached there, cgroup programs see every process below.
/// Hybrid hosts have it at /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup.
pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split(' ');
        let (Some(root), Some(mount)) = (fields.nth(3), fields.next()) else { continue };
        let mount = PathBuf::from(unescape(mount));
        if root == "/" {
            return Some(mount);
        }
        fallback.get_or_insert(mount);
    }
    fallback
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && oct.iter().all(|c| (b'0'..=b'7').contains(c))
            && let Ok(byte) =
                u8::try_from(oct.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Capabilities that matter for loading, by bit number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set (`CapEff:` line of `/proc/PID/status`).
pub(crate) fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Capabilities missing for loading and attaching the programs, by name; empty when the set
/// suffices. CAP_SYS_ADMIN alone covers all (the kernel accepts it in place of each, and
/// kernels before 5.8 know no other way); otherwise CAP_BPF (maps, programs), CAP_PERFMON
/// (tracing programs, kernel memory reads) and CAP_NET_ADMIN (cgroup socket programs) are
/// all needed. With every one of them held, a refusal is something else (a security module,
/// a seccomp filter, a locked-down kernel): nothing is named missing.
/// `cgroup`: cgroup socket programs too (CAP_NET_ADMIN); without, tracing programs only.
pub(crate) fn missing_caps(eff: u64, cgroup: bool) -> Vec<&'static str> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|&(bit, _)| bit != CAP_NET_ADMIN || cgroup)
        .filter(|&(bit, _)| !has(bit))
        .map(|(_, name)| name)
        .collect()
}

/// [`missing_caps`] of this process; empty if /proc cannot tell.
pub(crate) fn missing_caps_of_self(cgroup: bool) -> Vec<&'static str> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .map(|eff| missing_caps(eff, cgroup))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/mountinfo on the hybrid-cgroup test machine (kernel 6.18), cut down.
    const HYBRID: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 28 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
30 28 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn finds_the_unified_mount_on_a_hybrid_host() {
        assert_eq!(cgroup2_mount(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_a_pure_v2_mount_and_prefers_the_hierarchy_root() {
        let info = "\
40 30 0:35 /docker/abc /mnt/sub rw,relatime - cgroup2 cgroup2 rw
35 30 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/sys/fs/cgroup")));
        let only_sub = "40 30 0:35 /docker/abc /mnt/sub rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(only_sub), Some(PathBuf::from("/mnt/sub")));
    }

    #[test]
    fn unescapes_mount_points_and_survives_garbage() {
        let info = "29 28 0:27 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(unescape("a\\777b\\04"), "a\\777b\\04", "out of range or short escapes stay");
        for junk in ["", "- cgroup2", "1 2 - cgroup2 x y", " - cgroup2\n\n", "\\"] {
            assert_eq!(cgroup2_mount(junk), None, "{junk:?}");
        }
        assert_eq!(cgroup2_mount("28 0:26 / /sys/fs/cgroup rw - cgroup cgroup rw\n"), None);
    }

    #[test]
    fn reads_capabilities() {
        let root = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(root), Some(0x1ff_ffff_ffff));
        assert!(missing_caps(0x1ff_ffff_ffff, true).is_empty());
        assert_eq!(missing_caps(0, true), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        let bpf_perfmon_netadmin = (1 << 39) | (1 << 38) | (1 << 12);
        assert!(missing_caps(bpf_perfmon_netadmin, true).is_empty());
        assert_eq!(missing_caps(1 << 39, true), ["CAP_PERFMON", "CAP_NET_ADMIN"]);
        // CAP_SYS_ADMIN stands in for the three (the host-side container runs with it alone).
        assert!(missing_caps(1 << 21, true).is_empty());
        // A tracing program alone (the owner iterator) needs no CAP_NET_ADMIN.
        assert_eq!(missing_caps(1 << 39, false), ["CAP_PERFMON"]);
        assert!(missing_caps((1 << 39) | (1 << 38), false).is_empty());
        assert_eq!(effective_caps("CapEff:\tzz\n"), None);
        assert_eq!(effective_caps(""), None);
    }
}
