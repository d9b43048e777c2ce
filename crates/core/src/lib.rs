//! Listening sockets of a Linux network namespace, and the processes that own them.
//!
//! portwatch-core asks the kernel over `NETLINK_SOCK_DIAG` for the sockets in the states you
//! want — the state filter runs in the kernel, so a dump of 10 listeners costs tens of
//! microseconds however many connections the host carries — and maps each socket inode to the
//! processes holding it through `/proc/*/fd`. A socket whose owner cannot be found is still
//! returned, with the reason ([`UnknownReason`]).
//!
//! It keeps no global state, installs no signal handlers, sets up no logger (it logs through the
//! [`log`](https://docs.rs/log) facade) and never panics on what the kernel, `/proc` or a caller
//! hands it.
//!
//! # Example
//!
//! ```
//! use portwatch_core::{Owners, Query};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let port = listener.local_addr()?.port();
//!
//! let sockets = Query::new().port(port).run()?;
//! let mine = sockets.iter().find(|s| s.port == port).expect("our listener is listed");
//! if let Owners::Known(procs) = &mine.owners {
//!     assert!(procs.iter().any(|p| p.pid == std::process::id()));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Watching
//!
//! [`Watcher`] reports sockets opening and closing as [`Event`]s, with their owners, from one
//! of two [`Source`]s. With kernel events ([`Source::Ebpf`], feature `ebpf`) every TCP listen
//! and UDP bind is seen at the call, with the calling process, however short-lived; dumps
//! only reconcile. Scanning ([`Source::Scan`]) dumps every 200 ms by default (so a listener
//! that lives 250 ms is always seen), or every 8 ms with [`WatcherBuilder::high_fidelity`],
//! and looks new sockets' owners up right after the scan that found them. Either way closes
//! come within a millisecond (kernel events, or the sock_diag destroy multicast groups).
//!
//! [`Watcher::monitor`] hands another thread (a metrics endpoint, a health check) the open set
//! and the watcher's [`Stats`]: scans by [`ScanReason`] and their times, events by kind and
//! protocol, events dropped or lost, owners not found. Plain counters, no metrics library.
//!
//! ```no_run
//! use portwatch_core::{Event, Filter, Watcher};
//!
//! let watcher = Watcher::builder().filter(Filter::new().ignore_loopback(true)).build()?;
//! for event in watcher.events() {
//!     if let Event::Closed { socket, .. } = event {
//!         println!("{} closed, last held by {:?}", socket.local_display(), socket.pids());
//!     }
//! }
//! # Ok::<(), portwatch_core::Error>(())
//! ```
//!
//! # Backends
//!
//! [`Backend::Auto`] (the default) uses sock_diag and falls back, with one warning, to parsing
//! `/proc/net/{tcp,tcp6,udp,udp6,unix}` for whatever sock_diag cannot answer. The fallback is
//! much slower (every read walks the kernel's whole established hash) and has no socket cookies.
//!
//! # Privileges
//!
//! Listing sockets needs none: sock_diag dumps work for any user. Naming the owner of a socket
//! held by another user's process needs to read that process's `/proc/PID/fd`: root, or
//! `CAP_SYS_PTRACE` (`CAP_DAC_READ_SEARCH` is not enough since Linux 4.x's ptrace checks).
//! Without it such sockets come back with [`UnknownReason::PermissionDenied`]. The destroy
//! multicast groups a [`Watcher`] joins need no privilege either. The BPF owner lookup
//! ([`OwnerLookup::Bpf`], feature `ebpf`) needs root, or `CAP_BPF` and `CAP_PERFMON`.
//!
//! # Cargo features
//!
//! - `serde`: `Serialize` for [`Socket`] and [`Process`], as the JSON objects the `portwatch`
//!   CLI prints (`proto`, `family`, `addr`, `port`, `scope`, `path`, `state`, `inode`, `uid`,
//!   `cookie`, `netns`, `netns_name`, `container`, `forwards_to`, `pids`, `processes` with
//!   their `cgroup`, `owner_unknown_reason`, …),
//!   described by the JSON Schema files in the repository's `schema/` folder.
//! - `docker`: [`docker`] names containers and resolves them to their namespaces through the
//!   Docker Engine API on its unix socket (no async runtime, no HTTP library), and finds the
//!   container behind a published port's address. Without it, containers are found from
//!   cgroups and namespaces alone and named by short id.
//! - `ebpf`: the kernel event source, [`Source::Ebpf`] (and what [`Source::Auto`] prefers).
//!   Its eBPF programs are compiled in (committed as an object: no clang needed to build)
//!   and loaded with [aya](https://docs.rs/aya). Loading needs root, or `CAP_BPF`,
//!   `CAP_PERFMON` and `CAP_NET_ADMIN`; a kernel with BTF; a cgroup2 mount. Also the owner
//!   lookup through a BPF `iter/task_file` program, [`OwnerLookup::Bpf`] (and what
//!   [`OwnerLookup::Auto`] prefers on a host with hundreds of processes): one pass over every
//!   open file of every process instead of a `readlink` per fd.
//!   With the eBPF source, [`WatcherBuilder::connections`] sees every TCP connection with its
//!   process (a second set of programs, loaded only then); without it, connections are
//!   scanned.

#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
#![deny(unsafe_code)]

// Without `ebpf`, only `getdents64` output is read with it.
#[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
mod bytes;
mod connection;
mod discover;
#[cfg(feature = "docker")]
pub mod docker;
mod error;
mod event;
mod filter;
mod forward;
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod internals;
#[cfg(feature = "serde")]
mod json;
mod netns;
mod owners;
mod process;
mod query;
mod snapshot;
mod socket;
mod source;
mod sys;
mod tracker;
mod users;
mod watch;

pub use crate::{
    connection::{BadCidr, Cidr, Connections, Direction},
    error::{Error, Result, SnapshotProblem},
    event::{Event, EventKind},
    filter::Filter,
    netns::Netns,
    owners::OwnerLookup,
    process::{Cgroup, ContainerRef, Forward, Forwarder, Owners, Process, Runtime, UnknownReason},
    query::Query,
    socket::{AddressScope, Family, Protocol, Socket, State, StateSet, UnixType, UnknownName},
    source::{Backend, Source},
    users::Users,
    watch::{
        EVENT_QUEUE, Monitor, SCAN_TIME_BOUNDS, ScanReason, ScanTimes, Stats, StopHandle, Watcher,
        WatcherBuilder,
    },
};
