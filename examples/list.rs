//! The smallest embedding: print every TCP and UDP listener with its processes.
//!
//! `cargo run --example list`

use portwatch_core::{Owners, Query};

fn main() -> Result<(), portwatch_core::Error> {
    for socket in Query::new().run()? {
        let owners = match &socket.owners {
            Owners::Known(procs) => procs
                .iter()
                .map(|p| format!("{} ({})", p.pid, p.comm))
                .collect::<Vec<_>>()
                .join(", "),
            Owners::Unknown(reason) => format!("unknown: {reason}"),
            _ => "unknown".to_owned(),
        };
        println!("{} {} {}", socket.protocol, socket.local_display(), owners);
    }
    Ok(())
}
