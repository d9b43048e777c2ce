//! Integration tests of the library and the `portwatch` binary against real sockets and
//! processes. One test binary, several modules (link once).

mod attribution;
mod cli;
mod connections;
mod differential;
mod ebpf;
mod escaping;
mod faults;
mod hardening;
mod hostile;
mod list;
mod metrics;
mod netns;
mod owners;
mod packaging;
mod schema;
mod util;
mod watch;
