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
use crate::source::{At, Observation, Scope, Source};

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
    /// The lookup in flight: the daemon is asked on a thread of its own, so a slow or hung
    /// one never holds up scanning.
    #[cfg(feature = "docker")]
    asking: Option<std::thread::JoinHandle<Result<(u32, crate::netns::Netns)>>>,
}

/// The container to follow, resolved now: its namespace becomes the one watched. One that
/// does not exist or run yet (started beside the watcher, as compose does) is waited for,
/// said once: the watch starts when it does. A daemon that cannot be asked is an error.
#[cfg(feature = "docker")]
pub(super) fn resolve(cfg: &mut Config) -> Result<Option<Follow>> {
    use crate::docker::DockerError;
    let (Some(name), Some(socket)) = (&cfg.follow, &cfg.docker) else { return Ok(None) };
    let mut follow =
        Follow { socket: socket.clone(), name: name.clone(), pid: None, said: None, asking: None };
    match crate::docker::inspect(socket, name) {
        Ok(c) => {
            follow.pid = Some(c.pid);
            cfg.scope = Scope::One(c.netns()?);
        }
        Err(crate::error::Error::Docker(
            e @ (DockerError::NotRunning { .. } | DockerError::NoSuchContainer { .. }),
        )) => {
            log::warn!("{e}: waiting for it; its ports are watched once it runs");
            follow.said = Some(e.to_string());
        }
        Err(e) => return Err(e),
    }
    Ok(Some(follow))
}

/// Whether `follow` waits for its container: nothing is watched until it runs.
pub(super) fn waiting(follow: Option<&Follow>) -> bool {
    #[cfg(feature = "docker")]
    return follow.is_some_and(|f| f.pid.is_none());
    #[cfg(not(feature = "docker"))]
    {
        let _ = follow;
        false
    }
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
            t.tracker.observe(
                Observation::Census { sockets: Vec::new(), at: At::now(Source::Scan) },
                events,
            );
            t.tracker.flush(std::time::SystemTime::now(), events);
            f.pid = None;
            self.retire(t);
        }
        let Some(f) = self.follow.as_mut() else { return };
        let back = match f.asking.take() {
            None => {
                let (socket, name) = (f.socket.clone(), f.name.clone());
                let ask =
                    std::thread::Builder::new().name("portwatch-docker".into()).spawn(move || {
                        let c = crate::docker::inspect(&socket, &name)?;
                        Ok((c.pid, c.netns()?))
                    });
                match ask {
                    Ok(t) => f.asking = Some(t),
                    Err(e) => log::debug!("cannot ask the Docker daemon now: {e}"),
                }
                return;
            }
            Some(t) if !t.is_finished() => {
                f.asking = Some(t);
                return;
            }
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(crate::error::Error::Os {
                    op: "ask the Docker daemon",
                    source: std::io::Error::other("the lookup thread panicked"),
                })
            }),
        };
        match back.and_then(|(pid, ns)| Ok((pid, Target::open(&ns, &self.cfg)?))) {
            Ok((pid, mut t)) => {
                log::info!("container {} runs again: watching its new network namespace", f.name);
                // Everything in it opened after the watch began: nothing is initial.
                t.tracker.started();
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
