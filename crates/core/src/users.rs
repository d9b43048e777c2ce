//! User names for uids, from `/etc/passwd` (no NSS), for callers that show a socket's uid
//! when its owners are unknown. Reading and parsing stay in `owners`, which names processes'
//! users the same way: one table, one answer for a uid everywhere.

use std::collections::HashMap;
use std::path::Path;

use crate::owners;

/// The user names `/etc/passwd` gives uids: the names [`Process::user`](crate::Process::user)
/// carries, for a uid with no process at hand (a socket's [`uid`](crate::Socket::uid)).
///
/// ```
/// let users = portwatch_core::Users::load();
/// let root = users.name(0); // Some("root") on nearly every system
/// # let _ = root;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Users {
    names: HashMap<u32, String>,
}

impl Users {
    /// Reads `/etc/passwd`; empty (every name unknown) when it cannot be read.
    pub fn load() -> Users {
        Users::from_file(Path::new("/etc/passwd"))
    }

    /// Reads a file in `/etc/passwd` format.
    pub fn from_file(path: &Path) -> Users {
        Users { names: owners::read_users(path) }
    }

    /// The name of `uid`, when the file lists it (the first line for it wins).
    pub fn name(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }
}
