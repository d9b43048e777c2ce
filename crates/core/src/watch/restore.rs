//! Starting from a snapshot: which sockets an earlier run left open, by namespace.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::snapshot;
use crate::socket::Socket;
use crate::source::Scope;

/// The snapshot's sockets by namespace inode, when it is usable (says why when it is not). A
/// single namespace's sockets come back under key 0: a restarted container has a new
/// namespace, and its ports are still its ports. A path that holds something other than a
/// snapshot is an error: it must not be replaced.
pub(super) fn restore(
    path: &Path,
    scope: &Scope,
    filter: &Filter,
) -> Result<HashMap<u64, Vec<Socket>>> {
    let mut out: HashMap<u64, Vec<Socket>> = HashMap::new();
    let snap = match snapshot::load(path) {
        Ok(snapshot::Found::Snapshot(snap)) => snap,
        Ok(snapshot::Found::Fresh) => {
            log::info!("no snapshot at {} yet: starting fresh", path.display());
            return Ok(out);
        }
        Ok(snapshot::Found::Unusable(e)) => {
            log::warn!("ignoring snapshot {}: {e}", path.display());
            return Ok(out);
        }
        Err(problem) => return Err(Error::Snapshot { path: path.to_owned(), problem }),
    };
    let all = matches!(scope, Scope::All);
    if all != (snap.netns == snapshot::ALL_NAMESPACES) {
        let (was, is) = if all { ("one namespace", "all") } else { ("all namespaces", "one") };
        log::warn!("snapshot {} is of {was}, this watcher of {is}: ignored", path.display());
        return Ok(out);
    }
    for s in snap.sockets.into_iter().filter(|s| filter.matches(s)) {
        out.entry(if all { s.netns } else { 0 }).or_default().push(s);
    }
    Ok(out)
}

/// Moves a snapshot's sockets into namespace `netns` (a restarted container's new one).
pub(super) fn rebase(mut sockets: Vec<Socket>, netns: u64) -> Vec<Socket> {
    if sockets.first().is_some_and(|s| s.netns != netns) {
        log::info!(
            "snapshot taken in another network namespace (a restarted container?): continuing from it"
        );
    }
    for s in &mut sockets {
        s.netns = netns;
    }
    sockets
}
