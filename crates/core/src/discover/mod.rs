//! Finding every network namespace on the host, and the container each belongs to; and, for
//! a socket, the container its owners' cgroups name and the one behind a published port
//! (`Namer::attribute`).
//!
//! A namespace is alive while a process is in it or a file keeps it (a bind mount under
//! `/run/netns`). Discovery keeps a map from pid to namespace inode: each pass lists `/proc`
//! (one `getdents`), forgets pids that exited and reads `/proc/PID/ns/net` only for pids it
//! has not seen — plus once more for pids first seen on the pass before, which catches a
//! process that `unshare`s or `setns`es just after it starts (as container runtimes do). A
//! long-lived process moving to another namespace later is not seen until a process is
//! started there; `ip netns exec` targets are found through `/run/netns` anyway.
//!
//! Any user can create network namespaces (`unshare -Urn`), and each one watched costs three
//! or four file descriptors: so at most [`NETNS_PER_OWNER`] namespaces of one owner other than
//! root are handed on, whether to a `Query` or a `Watcher`, and the rest are named once in a
//! warning.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::owners::{self, list_pids};

mod namer;
pub(crate) use self::namer::Namer;

pub(crate) use crate::netns::NAMED_NETNS_DIR;

/// Most network namespaces watched per owner other than root (the owner of the user namespace
/// that owns it: who created it). A rootless container runtime rarely runs more than a few
/// dozen per user; a user making thousands (to exhaust portwatch's file descriptors, one
/// `EMFILE` away from failing every new socket it needs) gets these, and the others are named
/// in one warning. Root's, which container runtimes make, are not capped.
pub(crate) const NETNS_PER_OWNER: usize = 64;

/// A namespace found alive, and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) inode: u64,
    /// `/proc/PID/ns/net` of a process inside, or the `/run/netns` entry.
    pub(crate) path: PathBuf,
    /// The lowest pid inside, when a process is (a container's init, usually).
    pub(crate) pid: Option<u32>,
    /// Its name under `/run/netns`, when it is bound there.
    pub(crate) name: Option<Arc<str>>,
}

/// The pid → namespace map discovery keeps between passes.
#[derive(Debug)]
pub(crate) struct Discovery {
    proc_root: PathBuf,
    named_dir: PathBuf,
    /// Namespace inode of each live pid (0: unreadable, not asked again).
    pids: HashMap<u32, u64>,
    /// Pids first seen on the last pass: read again on the next.
    young: Vec<u32>,
    /// Owner uid of each namespace inode seen (asked once per namespace).
    owners: HashMap<u64, u32>,
    /// The capped owners' namespaces handed on by the last pass: they stay, so a namespace
    /// being watched is not dropped when its owner makes more.
    kept: HashSet<u64>,
    /// Owners already warned about.
    warned: HashSet<u32>,
    /// The namespaces the last pass left out for their owner's cap.
    skipped: HashSet<u64>,
}

/// Parses a namespace link: `net:[4026531840]`.
pub(crate) fn parse_ns_link(link: &[u8]) -> Option<u64> {
    link.strip_prefix(b"net:[")?
        .strip_suffix(b"]")
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
}

/// The network namespace inode of process `pid`; `None` when it is gone or unreadable.
pub(crate) fn ns_of(proc_root: &Path, pid: u32) -> Option<u64> {
    let link = std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net")).ok()?;
    parse_ns_link(link.as_os_str().as_encoded_bytes())
}

impl Discovery {
    pub(crate) fn new(proc_root: &Path, named_dir: &Path) -> Discovery {
        Discovery {
            proc_root: proc_root.to_owned(),
            named_dir: named_dir.to_owned(),
            pids: HashMap::new(),
            young: Vec::new(),
            owners: HashMap::new(),
            kept: HashSet::new(),
            warned: HashSet::new(),
            skipped: HashSet::new(),
        }
    }

    fn read_ns(&self, pid: u32) -> u64 {
        ns_of(&self.proc_root, pid).unwrap_or(0)
    }

    /// The namespaces alive now, by inode, at most [`NETNS_PER_OWNER`] of each owner but root.
    pub(crate) fn pass(&mut self) -> HashMap<u64, Found> {
        let found = self.update();
        self.capped(found)
    }

    fn update(&mut self) -> HashMap<u64, Found> {
        let Ok(live) = list_pids(&self.proc_root) else {
            // /proc unreadable this once: keep what was known rather than lose every namespace.
            return self.found();
        };
        let live_set: std::collections::HashSet<u32> = live.iter().copied().collect();
        self.pids.retain(|pid, _| live_set.contains(pid));
        for pid in std::mem::take(&mut self.young) {
            if let Some(ns) = self.pids.get(&pid).copied() {
                let now = self.read_ns(pid);
                if now != ns && now != 0 {
                    self.pids.insert(pid, now);
                }
            }
        }
        for pid in live {
            if let std::collections::hash_map::Entry::Vacant(e) = self.pids.entry(pid) {
                e.insert(0);
                self.young.push(pid);
            }
        }
        for &pid in &self.young {
            let ns = self.read_ns(pid);
            self.pids.insert(pid, ns);
        }
        self.found()
    }

    /// The namespaces the last pass left out for their owner's cap: not to be watched by any
    /// other way in (a kernel event in one of them) either.
    pub(crate) fn skipped(&self) -> &HashSet<u64> {
        &self.skipped
    }

    /// Drops the namespaces past [`NETNS_PER_OWNER`] of each owner but root, and says so once
    /// per owner.
    fn capped(&mut self, mut found: HashMap<u64, Found>) -> HashMap<u64, Found> {
        self.owners.retain(|inode, _| found.contains_key(inode));
        for f in found.values() {
            if !self.owners.contains_key(&f.inode) {
                let owner = owner_of(f, &self.proc_root);
                self.owners.insert(f.inode, owner);
            }
        }
        let (kept, skipped) = cap_per_owner(&self.owners, &self.kept, NETNS_PER_OWNER);
        self.skipped.clear();
        for (uid, inodes) in skipped {
            for inode in &inodes {
                found.remove(inode);
                self.skipped.insert(*inode);
            }
            if self.warned.insert(uid) {
                log::warn!(
                    "skipping {} network namespace(s) owned by uid {uid} (inodes {}{}): at most \
                     {NETNS_PER_OWNER} per user other than root are watched, as each costs file \
                     descriptors",
                    inodes.len(),
                    inodes.iter().take(8).map(u64::to_string).collect::<Vec<_>>().join(", "),
                    if inodes.len() > 8 { ", …" } else { "" },
                );
            } else {
                log::debug!("still skipping {} namespace(s) of uid {uid}", inodes.len());
            }
        }
        self.kept = kept;
        found
    }

    fn found(&self) -> HashMap<u64, Found> {
        let mut out: HashMap<u64, Found> = HashMap::new();
        for (&pid, &inode) in &self.pids {
            if inode == 0 {
                continue;
            }
            match out.get_mut(&inode) {
                Some(f) if f.pid.is_some_and(|p| p <= pid) => {}
                Some(f) => {
                    f.pid = Some(pid);
                    f.path = self.proc_root.join(pid.to_string()).join("ns/net");
                }
                None => {
                    let path = self.proc_root.join(pid.to_string()).join("ns/net");
                    out.insert(inode, Found { inode, path, pid: Some(pid), name: None });
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(&self.named_dir) {
            for entry in dir.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                // `ip netns add` creates the file with mode 0, then mounts the namespace over
                // it (nsfs files are 0444): caught in between, it is no namespace yet, and one
                // that cannot open it must not take it for a missing privilege. The next pass
                // sees it mounted.
                if meta.permissions().mode() & 0o444 == 0 {
                    continue;
                }
                let inode = meta.ino();
                let name = entry.file_name().to_str().map(Arc::from);
                // An unmounted leftover file is on the parent filesystem, not nsfs: entering it
                // fails, and the caller skips it.
                let found =
                    out.entry(inode).or_insert(Found { inode, path, pid: None, name: None });
                found.name = name;
            }
        }
        out
    }
}

/// Who owns a namespace: the owner of its user namespace (`NS_GET_OWNER_UID`, Linux 4.11+),
/// else the uid of the process found inside, else root (a `/run/netns` entry: binding one
/// there takes root).
fn owner_of(found: &Found, proc_root: &Path) -> u32 {
    if let Ok(file) = std::fs::File::open(&found.path)
        && let Ok(uid) = crate::sys::ns_owner_uid(&file)
    {
        return uid;
    }
    found
        .pid
        .and_then(|pid| std::fs::metadata(proc_root.join(pid.to_string())).ok())
        .map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// Splits namespaces by owner (`owners`: inode → uid) into those handed on — every one of
/// root's, and at most `limit` of any other owner's, those in `kept` first, then by inode — and,
/// per owner, the inodes skipped (ascending).
fn cap_per_owner(
    owners: &HashMap<u64, u32>,
    kept: &HashSet<u64>,
    limit: usize,
) -> (HashSet<u64>, Vec<(u32, Vec<u64>)>) {
    let mut by_owner: HashMap<u32, Vec<u64>> = HashMap::new();
    for (&inode, &uid) in owners {
        if uid != 0 {
            by_owner.entry(uid).or_default().push(inode);
        }
    }
    let mut handed = HashSet::new();
    let mut skipped = Vec::new();
    for (uid, mut inodes) in by_owner {
        inodes.sort_by_key(|i| (!kept.contains(i), *i));
        let rest = inodes.split_off(inodes.len().min(limit));
        handed.extend(inodes);
        if !rest.is_empty() {
            let mut rest = rest;
            rest.sort_unstable();
            skipped.push((uid, rest));
        }
    }
    skipped.sort_unstable();
    (handed, skipped)
}

/// Opens a namespace discovery found, labelled with its container.
pub(crate) fn open(found: &Found, namer: &mut Namer, proc_root: &Path) -> Result<Netns> {
    let container = found.pid.and_then(|pid| namer.container_of(proc_root, pid, found.inode));
    Ok(Netns::found(&found.path, found.inode, found.pid, container)?.named(found.name.clone()))
}

/// What to do when a namespace discovery found cannot be read: a missing privilege is an
/// error (not allowed into one means not allowed into any, and the message says what grants
/// it); any other failure skips that namespace, logged — at debug level when it simply went
/// away meanwhile, else as a warning.
pub(crate) fn skip(inode: u64, e: Error) -> Result<()> {
    match e {
        Error::NamespacePermission { .. } => Err(e),
        Error::NamespaceNotFound { .. } => {
            log::debug!("network namespace {inode} went away before it could be read");
            Ok(())
        }
        e => {
            log::warn!("skipping network namespace {inode}: {e}");
            Ok(())
        }
    }
}

/// Every network namespace alive now, labelled, in inode order.
pub(crate) fn all(proc_root: &Path, namer: &mut Namer) -> Result<Vec<Netns>> {
    let mut found: Vec<Found> =
        Discovery::new(proc_root, Path::new(NAMED_NETNS_DIR)).pass().into_values().collect();
    found.sort_by_key(|f| f.inode);
    let mut out = Vec::with_capacity(found.len());
    for f in &found {
        match open(f, namer, proc_root) {
            Ok(ns) => out.push(ns),
            Err(e) => skip(f.inode, e)?,
        }
    }
    Ok(out)
}

/// The container id a `/proc/PID/cgroup` file names (see [`owners::parse_cgroup`] for which
/// part of the path counts).
pub(crate) fn container_id(cgroup: &[u8]) -> Option<String> {
    owners::parse_cgroup(cgroup)?.container_id
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e9c0b1a2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link(b"mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link(b"net:[x]"), None);
        assert_eq!(parse_ns_link(b""), None);
    }

    #[test]
    fn container_ids_from_cgroups() {
        for path in [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("12:pids:/docker/{ID}"),
            format!("0::/kubepods/besteffort/pod1/cri-containerd-{ID}.scope"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(path.as_bytes()).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(container_id(b"0::/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(container_id(b"0::/"), None);
        assert_eq!(container_id(b"garbage"), None);
        assert_eq!(container_id(&[0xff, 0xfe]), None);
    }

    #[test]
    fn a_user_gets_a_bounded_number_of_namespaces_and_keeps_them() {
        // uid 1000 owns 5 namespaces, root 4; at most 2 per user.
        let mut owners: HashMap<u64, u32> = (10..15).map(|i| (i, 1000)).collect();
        owners.extend((20..24).map(|i| (i, 0)));
        let (kept, skipped) = cap_per_owner(&owners, &HashSet::new(), 2);
        assert_eq!(skipped, [(1000, vec![12, 13, 14])]);
        assert!(kept.contains(&10) && kept.contains(&11) && !kept.contains(&20));
        // Those handed on before stay, whatever the newcomers' inodes.
        let (kept, skipped) = cap_per_owner(&owners, &HashSet::from([13, 14]), 2);
        assert_eq!(skipped, [(1000, vec![10, 11, 12])]);
        assert_eq!(kept, HashSet::from([13, 14]));
        let (_, skipped) = cap_per_owner(&owners, &HashSet::new(), 64);
        assert!(skipped.is_empty());
    }

    #[test]
    fn discovery_reads_each_pid_once_then_forgets_exited_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mk = |pid: u32, ns: &str| {
            let d = dir.join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&d).unwrap();
            let _ = std::fs::remove_file(d.join("net"));
            std::os::unix::fs::symlink(ns, d.join("net")).unwrap();
        };
        mk(1, "net:[100]");
        mk(7, "net:[200]");
        mk(9, "net:[200]");
        let mut d = Discovery::new(dir, &dir.join("no-named"));
        let found = d.pass();
        assert_eq!(found.len(), 2);
        assert_eq!(found[&200].pid, Some(7), "the lowest pid inside names the namespace");
        // A young pid that moved (unshare after start) is caught on the next pass.
        mk(9, "net:[300]");
        let found = d.pass();
        assert_eq!(found.len(), 3);
        // Later moves are not looked for: the link is not read again.
        mk(9, "net:[400]");
        assert!(!d.pass().contains_key(&400));
        // Exited pids take their namespace with them.
        std::fs::remove_dir_all(dir.join("7")).unwrap();
        std::fs::remove_dir_all(dir.join("9")).unwrap();
        let found = d.pass();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), [100]);
    }
}
