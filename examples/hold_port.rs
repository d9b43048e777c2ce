//! Binds a TCP listener or a UDP socket on a port and holds it: for HOLD_MS milliseconds, or
//! until killed. The Docker demo image uses it for UDP ports (busybox `nc` cannot listen on
//! UDP) and for the transient and burst tests, which need a hold time to the millisecond.
//!
//! `cargo run --example hold_port -- tcp|udp PORT [HOLD_MS]`

use std::net::{TcpListener, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: hold_port tcp|udp PORT [HOLD_MS]";
    let (Some(proto), Some(Ok(port))) = (args.first(), args.get(1).map(|p| p.parse::<u16>()))
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let hold = match args.get(2).map(|h| h.parse::<u64>()) {
        None => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(_)) => {
            eprintln!("{usage}: HOLD_MS must be a number of milliseconds");
            return ExitCode::from(2);
        }
    };
    let held: Box<dyn std::any::Any> = match proto.as_str() {
        "tcp" => match TcpListener::bind(("0.0.0.0", port)) {
            Ok(l) => Box::new(l),
            Err(e) => return fail(proto, port, e),
        },
        "udp" => match UdpSocket::bind(("0.0.0.0", port)) {
            Ok(s) => Box::new(s),
            Err(e) => return fail(proto, port, e),
        },
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match hold {
        Some(d) => std::thread::sleep(d),
        None => loop {
            std::thread::park();
        },
    }
    drop(held);
    ExitCode::SUCCESS
}

fn fail(proto: &str, port: u16, e: std::io::Error) -> ExitCode {
    eprintln!("hold_port: cannot bind {proto} port {port}: {e}");
    ExitCode::from(1)
}
