//! Every container's listening ports as they open and close, from the host (run as root).
//!
//! `sudo cargo run --example containers`
//!
//! One watcher covers every network namespace on the host: containers that start later are
//! picked up within a second, and a container's ports are reported closed when it stops.
//! Sockets of the host itself are skipped here.

use portwatch_core::{Event, Watcher};

fn main() -> Result<(), portwatch_core::Error> {
    let watcher = Watcher::builder()
        .all_netns()
        .docker_names(portwatch_core::docker::DEFAULT_SOCKET)
        .build()?;
    for event in watcher.events() {
        let s = event.socket();
        let Some(container) = &s.container else { continue };
        let what = match &event {
            Event::Opened { .. } => "open  ",
            Event::Closed { .. } => "closed",
            _ => "owners",
        };
        println!(
            "{what} {:<20} {} {} {:?}",
            container.name,
            s.protocol,
            s.local_display(),
            s.pids()
        );
    }
    Ok(())
}
