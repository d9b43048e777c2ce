#![no_main]
//! The CLI's duration, port and state arguments, through the real clap definitions. The input
//! is split at the first NUL: the flag's value, then (ignored) the rest.

use clap::Parser;

#[path = "../../crates/cli/args.rs"]
#[allow(dead_code)]
mod args;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data.split(|b| *b == 0).next().unwrap_or_default()) else {
        return;
    };
    for flag in ["--interval", "--burst-delay", "--close-grace", "--port", "--state", "--burst-scans"] {
        let _ = args::Cli::try_parse_from(["portwatch", "watch", flag, value]);
    }
    let _ = args::Cli::try_parse_from(["portwatch", "list", "--port", value]);
});
