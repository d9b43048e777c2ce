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
    /// `/proc` walk otherwise; when it cannot load, the walk, saying once (a warning) why.
    #[default]
    Auto,
    /// One pass of a BPF `iter/task_file` program over every open file of every process
    /// (feature `ebpf`; root, or CAP_BPF + CAP_PERFMON; kernel BTF; the host's pid
    /// namespace). Not loading is an error that says why.
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

/// With an iterator, one pass of it that keeps every socket fd (to be made beside the dump);
/// `None` without one, or when the pass failed (then the lookup makes its own).
pub(crate) fn early_pass(iter: Option<&BpfIter>) -> Option<EarlyPass> {
    #[cfg(feature = "ebpf")]
    return iter.and_then(super::bpf::early_pass);
    #[cfg(not(feature = "ebpf"))]
    match iter {
        None => None,
        Some(never) => match *never {},
    }
}

/// Loads the BPF iterator as `how` asks: `Ok(None)` for the `/proc` walk (asked for, or
/// `Auto` when it cannot load: then one warning says why), an error when `Bpf` cannot load.
pub(crate) fn load_iterator(how: OwnerLookup) -> crate::error::Result<Option<BpfIter>> {
    if how == OwnerLookup::Proc {
        return Ok(None);
    }
    #[cfg(feature = "ebpf")]
    let loaded = super::bpf::OwnerIter::load().map_err(|e| e.to_string());
    #[cfg(not(feature = "ebpf"))]
    let loaded: Result<BpfIter, String> =
        Err("this build has no eBPF support (feature `ebpf`)".to_owned());
    match loaded {
        Ok(iter) => {
            #[cfg(feature = "ebpf")]
            log::debug!("BPF owner iterator loaded in {:?}", iter.load_time);
            Ok(Some(iter))
        }
        Err(reason) if how == OwnerLookup::Bpf => {
            Err(crate::error::Error::OwnerLookupUnavailable { reason })
        }
        Err(reason) => {
            log::warn!("owners from /proc instead of the BPF iterator: {reason}");
            Ok(None)
        }
    }
}

/// Fills `scan` from the iterator if there is one: `None` when the caller must walk (no
/// iterator, or the pass failed: logged). `pids` are the processes listed before, and before
/// `early` if there is one ([`early_pass`]).
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
            Ok(scan) => return Some(scan),
            Err(e) => log::warn!("BPF owner iterator failed ({e}): walking /proc instead"),
        }
    }
    #[cfg(not(feature = "ebpf"))]
    let _ = (iter, early, proc_root, pids, search);
    None
}
