//! Notifies inbound TCP connections from outside, at most once per remote address per
//! cooldown: a log-free take on a "who connects to me" notifier (run as root).
//!
//! `sudo cargo run --example inbound -- [COOLDOWN_SECONDS]` (default 1800)
//!
//! Loopback and private peers are left out (in the kernel, with kernel events); each accept
//! names the listener's owners. Replace `notify` with mail, a push message or a webhook: its
//! own connections are not reported (the watcher leaves out its process and its children).

use std::time::Duration;

use portwatch_core::{Cidr, Connections, Event, Watcher};

fn notify(event: &Event) {
    let s = event.socket();
    let peer = s.remote.map_or_else(|| "?".to_owned(), |r| r.to_string());
    let owners: Vec<String> =
        s.processes().iter().map(|p| format!("{} {:?}", p.pid, p.comm)).collect();
    println!("inbound: {peer} -> port {} ({})", s.port, owners.join(", "));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cooldown: f64 = std::env::args().nth(1).map_or(Ok(1800.0), |a| a.parse())?;
    let mut builder = Watcher::builder()
        .connections(Connections::In)
        .connection_cooldown(Duration::from_secs_f64(cooldown));
    for private in
        ["127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    {
        builder = builder.ignore_remote(private.parse::<Cidr>()?);
    }
    let watcher = builder.build()?;
    for event in watcher.events() {
        if let Event::Accept { .. } = event {
            notify(&event);
        }
    }
    Ok(())
}
