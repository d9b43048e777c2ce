//! Every outbound TCP connection of every container, with the container's name and the
//! process that made it (run as root).
//!
//! `sudo cargo run --example outbound`
//!
//! One watcher covers every network namespace on the host. With kernel events (feature `ebpf`,
//! on in the `portwatch` package) each `connect(2)` is reported as it is made, with its exact
//! pid, however short the connection; connections of the host itself are skipped here.
//! Names come from other users: escaped with `{:?}` before they reach the terminal.

use portwatch_core::{Connections, Event, Watcher};

fn main() -> Result<(), portwatch_core::Error> {
    let watcher = Watcher::builder()
        .all_netns()
        .docker_names(portwatch_core::docker::DEFAULT_SOCKET)
        .connections(Connections::Out)
        .report_initial(false)
        .build()?;
    for event in watcher.events() {
        let Event::Connect { socket, source, .. } = &event else { continue };
        let Some(container) = &socket.container else { continue };
        let remote = socket.remote.map_or_else(|| "?".to_owned(), |r| r.to_string());
        let who: Vec<String> =
            socket.processes().iter().map(|p| format!("{} {:?}", p.pid, p.comm)).collect();
        println!("{:?} -> {remote} ({}; {source})", container.name, who.join(", "));
    }
    Ok(())
}
