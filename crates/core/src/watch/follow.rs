//! Following a Docker container across restarts (feature `docker`): a restart gives it a new
//! network namespace, so the watched target is replaced when the daemon says it runs again.

#[cfg(feature = "docker")]
use std::path::PathBuf;

#[cfg(feature = "docker")]
use super::config::Config;
use super::scheduler::Loop;
#[cfg(feature = "docker")]
use super::target::Target;
use crate::error::Result;
use crate::event::Event;
#[cfg(feature = "docker")]
use crate::source::{At, Observation, Scope};

/// A container followed across restarts (only built with feature `docker`).
#[cfg_attr(not(feature = "docker"), allow(dead_code))]
pub(super) struct Follow {
    #[cfg(feature = "docker")]
    socket: PathBuf,
    #[cfg(feature = "docker")]
    name: String,
    /// Its init's host pid while it runs in the namespace watched; `None` while it is down.
    #[cfg(feature = "docker")]
    pid: Option<u32>,
    /// Why it could not be found again, last time: said once.
    #[cfg(feature = "docker")]
    said: Option<String>,
}

/// The container to follow, resolved now: its namespace becomes the one watched.
#[cfg(feature = "docker")]
pub(super) fn resolve(cfg: &mut Config) -> Result<Option<Follow>> {
    let (Some(name), Some(socket)) = (&cfg.follow, &cfg.docker) else { return Ok(None) };
    let c = crate::docker::inspect(socket, name)?;
    let follow =
        Follow { socket: socket.clone(), name: name.clone(), pid: Some(c.pid), said: None };
    cfg.scope = Scope::One(c.netns()?);
    Ok(Some(follow))
}

#[cfg(not(feature = "docker"))]
pub(super) fn resolve(_cfg: &mut super::config::Config) -> Result<Option<Follow>> {
    Ok(None)
}

impl Loop {
    /// With a followed container: notices that it stopped (its init is gone, or lives in
    /// another namespace), reports its ports closed, and watches its new namespace once the
    /// daemon says it runs again.
    #[cfg(feature = "docker")]
    pub(super) fn follow_container(&mut self, events: &mut Vec<Event>) {
        let Some(f) = self.follow.as_mut() else { return };
        let watched = self.targets.first().map(|t| t.inode);
        if let (Some(pid), Some(inode)) = (f.pid, watched)
            && crate::discover::ns_of(&self.proc_root, pid) == Some(inode)
        {
            return;
        }
        if let Some(mut t) = self.targets.pop() {
            log::info!("container {} stopped: its ports are closed; waiting for it", f.name);
            t.tracker.observe(Observation::Census { sockets: Vec::new(), at: At::now() }, events);
            t.tracker.flush(std::time::SystemTime::now(), events);
            f.pid = None;
            self.retire(t);
        }
        let Some(f) = self.follow.as_mut() else { return };
        let back = crate::docker::inspect(&f.socket, &f.name)
            .and_then(|c| Ok((c.pid, Target::open(&c.netns()?, &self.cfg)?)));
        match back {
            Ok((pid, mut t)) => {
                log::info!("container {} runs again: watching its new network namespace", f.name);
                // Everything in it opened after the watch began: nothing is initial.
                t.tracker.adopt(Vec::new());
                self.targets.push(t);
                f.pid = Some(pid);
                f.said = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if f.said.as_ref() != Some(&msg) {
                    log::debug!("container {} is not back yet: {msg}", f.name);
                    f.said = Some(msg);
                }
            }
        }
        self.emit(events);
    }

    #[cfg(not(feature = "docker"))]
    pub(super) fn follow_container(&mut self, _events: &mut Vec<Event>) {}
}
