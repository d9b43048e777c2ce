//! Which way owners are found ([`OwnerLookup`]), and the one place that chooses: load the
//! BPF iterator (or say why not), and fill a walk's result from one pass of it when there is
//! one. Without feature `ebpf` there is no iterator and every lookup walks `/proc`.

use std::path::Path;

use super::{FdScan, Search};

/// How the processes holding each socket are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OwnerLookup {
    /// The BPF iterator where it loads and the host is large enough for it to pay, the
    /// `/proc` walk otherwise. When it cannot load, the walk (same answers), saying why at
    /// info level: what keeps it from loading (no capability, no BTF, an old kernel,
    /// lockdown) holds on every run, and repeating it on each would be noise.
    #[default]
    Auto,
    /// A pass of a BPF `iter/task_file` program over every open file of every process
    /// (feature `ebpf`; root, or CAP_BPF + CAP_PERFMON; kernel BTF; the host's pid
    /// namespace): one, or in a listing, one beside the dump and another for sockets it may
    /// have missed. Not loading is an error that says why.
    Bpf,
    /// A walk of `/proc/*/fd`: each process's first 1024 fds, within a time budget.
    Proc,
}

impl OwnerLookup {
    /// `"auto"`, `"bpf"` or `"proc"`: the CLI's `--owners` values.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerLookup::Auto => "auto",
            OwnerLookup::Bpf => "bpf",
            OwnerLookup::Proc => "proc",
        }
    }
}

impl std::fmt::Display for OwnerLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OwnerLookup {
    type Err = crate::socket::UnknownName;

    fn from_str(name: &str) -> Result<OwnerLookup, Self::Err> {
        [OwnerLookup::Auto, OwnerLookup::Bpf, OwnerLookup::Proc]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| crate::socket::UnknownName {
                what: "owner lookup",
                name: name.to_owned(),
            })
    }
}

/// With [`OwnerLookup::Auto`], the BPF iterator is used from this many processes on. Its
/// fixed cost (index the kernel's BTF, relocate, verify: ~1.5 ms) is more than a walk of a
/// small host's `/proc` costs; see BENCHMARKS.md for the measured crossing.
pub(crate) const AUTO_BPF_MIN_PROCESSES: usize = 200;

/// The BPF owner iterator, when one is loaded. Without feature `ebpf` there is none.
#[cfg(feature = "ebpf")]
pub(crate) type BpfIter = super::bpf::OwnerIter;
/// The BPF owner iterator, when one is loaded. Without feature `ebpf` there is none.
#[cfg(not(feature = "ebpf"))]
#[derive(Debug)]
pub(crate) enum BpfIter {}

/// A pass of the iterator made before the sockets asked about are known, to overlap the dump
/// that finds them. Without feature `ebpf` there is none.
#[cfg(feature = "ebpf")]
pub(crate) type EarlyPass = super::bpf::Pass;
/// A pass of the iterator made before the sockets asked about are known, to overlap the dump
/// that finds them. Without feature `ebpf` there is none.
#[cfg(not(feature = "ebpf"))]
#[derive(Debug)]
pub(crate) enum EarlyPass {}

/// A number below the inode of every socket made from now on, or `None` when it cannot be
/// known (see `bpf::inode_floor`): to be taken before an early pass. Without feature `ebpf`,
/// `None`.
pub(crate) fn inode_floor() -> Option<u64> {
    #[cfg(feature = "ebpf")]
    return super::bpf::inode_floor();
    #[cfg(not(feature = "ebpf"))]
    None
}

/// With an iterator, one pass of it that keeps every socket fd (to be made beside the dump),
/// every socket made since `floor` was taken numbering above it; `None` without one, or when
/// the pass failed (then the lookup makes its own).
pub(crate) fn early_pass(iter: Option<&BpfIter>, floor: Option<u64>) -> Option<EarlyPass> {
    #[cfg(feature = "ebpf")]
    return iter.and_then(|iter| super::bpf::early_pass(iter, floor));
    #[cfg(not(feature = "ebpf"))]
    match (iter, floor) {
        (None, _) => None,
        (Some(never), _) => match *never {},
    }
}

/// `early` told which of the sockets asked about were made by `socket(2)` itself (see
/// `bpf::Pass::made_by_socket`).
pub(crate) fn early_made_by_socket(early: EarlyPass, inodes: super::Inodes) -> EarlyPass {
    #[cfg(feature = "ebpf")]
    return super::bpf::Pass { made_by_socket: inodes, ..early };
    #[cfg(not(feature = "ebpf"))]
    match (early, inodes) {}
}

/// Whether loading the BPF iterator as `how` asks may succeed, told without loading it (the
/// pid namespace and the capabilities): false for the walk, or where the load would be refused
/// at once.
pub(crate) fn may_load(how: OwnerLookup) -> bool {
    #[cfg(feature = "ebpf")]
    return how != OwnerLookup::Proc && super::bpf::OwnerIter::permitted().is_ok();
    #[cfg(not(feature = "ebpf"))]
    {
        let _ = how;
        false
    }
}

/// Loads the BPF iterator as `how` asks: `Ok(None)` for the `/proc` walk (asked for, or
/// `Auto` when it cannot load: then it says why, [`NotLoaded::level`]), an error when `Bpf`
/// cannot load.
pub(crate) fn load_iterator(how: OwnerLookup) -> crate::error::Result<Option<BpfIter>> {
    if how == OwnerLookup::Proc {
        return Ok(None);
    }
    #[cfg(feature = "ebpf")]
    let loaded =
        super::bpf::OwnerIter::load(wants_verifier_log(how, log::log_enabled!(log::Level::Debug)))
            .map_err(|e| NotLoaded { defect: e.is_defect(), reason: e.to_string() });
    #[cfg(not(feature = "ebpf"))]
    let loaded: Result<BpfIter, NotLoaded> = Err(NotLoaded {
        reason: "this build has no eBPF support (feature `ebpf`)".to_owned(),
        defect: false,
    });
    match loaded {
        Ok(iter) => {
            #[cfg(feature = "ebpf")]
            log::debug!("BPF owner iterator loaded in {:?}", iter.load_time);
            Ok(Some(iter))
        }
        Err(why) if how == OwnerLookup::Bpf => {
            Err(crate::error::Error::OwnerLookupUnavailable { reason: why.reason })
        }
        Err(why) => {
            log::log!(why.level(), "owners from /proc instead of the BPF iterator: {}", why.reason);
            Ok(None)
        }
    }
}

/// Why the iterator did not load.
#[derive(Debug)]
struct NotLoaded {
    /// What to tell the user.
    reason: String,
    /// A defect of this build, not a condition of the host.
    defect: bool,
}

impl NotLoaded {
    /// How loudly `Auto` says it walks instead: a warning only for a defect of this build.
    /// What the host lacks (a capability, BTF, a recent kernel) or refuses (lockdown, an LSM)
    /// holds on every run and costs nothing but time, since the walk finds the same owners:
    /// like `ss -p` without privilege, a listing that works says nothing of it (`RUST_LOG=info`
    /// shows it). Asking for `--owners bpf` is how to hear it: that fails, saying why.
    fn level(&self) -> log::Level {
        if self.defect { log::Level::Warn } else { log::Level::Info }
    }
}

/// Whether a refused program is loaded again for the verifier's log: a second load (and a
/// slower one), worth paying only when the reason will be read: `--owners bpf` fails with it,
/// or debug logging is on. `Auto` otherwise takes the refusal and walks.
#[cfg(any(test, feature = "ebpf"))]
fn wants_verifier_log(how: OwnerLookup, debug: bool) -> bool {
    how == OwnerLookup::Bpf || debug
}

/// Fills `scan` from the iterator if there is one: `None` when the caller must walk (no
/// iterator, or the pass failed: logged). `pids` are the processes listed before, and before
/// `early` if there is one ([`early_pass`]). Where `/proc` hides processes from us (hidepid,
/// without the privilege to see through it), only the holders `/proc` shows us are kept: the
/// pass sees every process, and must not tell more than the walk would.
pub(crate) fn try_iterator(
    iter: Option<&BpfIter>,
    early: Option<EarlyPass>,
    proc_root: &Path,
    pids: &[u32],
    search: &Search,
) -> Option<FdScan> {
    #[cfg(feature = "ebpf")]
    if let Some(iter) = iter {
        match super::bpf::scan(iter, early, proc_root, pids, search) {
            Ok(mut scan) => {
                if super::hidepid::hides_from_us(proc_root) {
                    super::hidepid::drop_invisible(&mut scan, proc_root);
                }
                return Some(scan);
            }
            Err(e) => log::warn!("BPF owner iterator failed ({e}): walking /proc instead"),
        }
    }
    #[cfg(not(feature = "ebpf"))]
    let _ = (iter, early, proc_root, pids, search);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reported_refusal_pays_for_the_verifier_log() {
        assert!(wants_verifier_log(OwnerLookup::Bpf, false));
        assert!(!wants_verifier_log(OwnerLookup::Auto, false), "auto: one load, then the walk");
        assert!(wants_verifier_log(OwnerLookup::Auto, true), "unless debug logging will show it");
    }

    #[test]
    fn auto_warns_only_of_a_defect_of_this_build() {
        let level = |defect| NotLoaded { reason: String::new(), defect }.level();
        assert_eq!(level(false), log::Level::Info);
        assert_eq!(level(true), log::Level::Warn);
    }

    /// What the host lacks or refuses is its condition, said at info level; only an object
    /// out of step with the code is a defect.
    #[cfg(feature = "ebpf")]
    #[test]
    fn conditions_of_the_host_are_not_defects() {
        use super::super::bpf::Unavailable;
        use nix::errno::Errno;
        let host = [
            Unavailable::Permission { missing: vec!["CAP_BPF"] },
            Unavailable::NoBtf { source: std::io::ErrorKind::NotFound.into() },
            Unavailable::Unsupported("no struct file".into()),
            Unavailable::PidNamespace,
            Unavailable::Refused { step: "loading", errno: Errno::EPERM, verifier_log: "".into() },
        ];
        for why in host {
            assert!(!why.is_defect(), "{why}");
        }
        assert!(Unavailable::Object("no .BTF".into()).is_defect());
    }
}
