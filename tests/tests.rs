//! Integration tests of the library and the `portwatch` binary against real sockets and
//! processes. One test binary, several modules (link once).

mod attribution;
mod cli;
mod differential;
mod ebpf;
mod escaping;
mod faults;
mod hardening;
mod hostile;
mod list;
mod netns;
mod packaging;
mod schema;
mod util;
mod watch;
