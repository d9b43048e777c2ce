//! Follow one process (and its children): a callback per change and a timestamped history,
//! as process-port-monitor offers.
//!
//! `cargo run --example pid_ports -- PID [SECONDS]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portwatch_core::{Event, EventKind, Filter, Protocol, Watcher};

/// One entry of the history.
#[derive(Debug)]
struct Change {
    at: SystemTime,
    what: EventKind,
    endpoint: String,
    pids: Vec<u32>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let pid: u32 = args.next().ok_or("usage: pid_ports PID [SECONDS]")?.parse()?;
    let seconds: u64 = args.next().map_or(Ok(10), |s| s.parse())?;

    let history: Arc<Mutex<Vec<Change>>> = Arc::default();
    let log = Arc::clone(&history);
    let filter = Filter::new().protocols(&[Protocol::Tcp, Protocol::Udp]).pid(pid, true);
    let watcher = Watcher::builder().filter(filter).build_with_callback(move |event: Event| {
        let s = event.socket();
        println!("{} {} {:?}", event.kind(), s.local_display(), s.pids());
        if let Ok(mut h) = log.lock() {
            h.push(Change {
                at: event.at(),
                what: event.kind(),
                endpoint: s.local_display(),
                pids: s.pids(),
            });
        }
    })?;
    std::thread::sleep(Duration::from_secs(seconds));
    println!(
        "ports of {pid} now: {:?}",
        watcher.current().iter().map(|s| s.local_display()).collect::<Vec<_>>()
    );
    watcher.stop();
    for c in history.lock().map_err(|_| "history lock poisoned")?.iter() {
        let t = c.at.duration_since(SystemTime::UNIX_EPOCH)?.as_secs_f64();
        println!("{t:.3} {} {} {:?}", c.what, c.endpoint, c.pids);
    }
    Ok(())
}
