//! The smallest watcher: print every listener that opens or closes, until Ctrl-C.
//!
//! `cargo run --example watch`

use portwatch_core::{Event, Watcher};

fn main() -> Result<(), portwatch_core::Error> {
    let watcher = Watcher::builder().build()?;
    for event in watcher.events() {
        let s = event.socket();
        match &event {
            Event::Opened { initial: true, .. } => {
                println!("open   {} (at start) {:?}", s.local_display(), s.pids())
            }
            Event::Opened { .. } => println!("open   {} {:?}", s.local_display(), s.pids()),
            Event::Closed { .. } => println!("closed {} {:?}", s.local_display(), s.pids()),
            _ => println!("owners {} {:?}", s.local_display(), s.pids()),
        }
    }
    Ok(())
}
