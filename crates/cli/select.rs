//! Flags to library: everything that turns parsed arguments into a portwatch-core `Query`,
//! `WatcherBuilder`, `Filter` or `Netns`. It must not print: output belongs to `render`, and
//! the commands decide what runs when.

use portwatch_core::{
    Backend, Connections, Family, Filter, Netns, OwnerLookup, Protocol, Query, Source, State,
    StateSet, Watcher, WatcherBuilder, docker,
};

use crate::Result;
use crate::args::{
    BackendArg, ConnectionsArg, OwnersArg, SocketFilter, SourceArg, StateArg, WatchArgs,
};

/// Builds the library query the filter flags describe.
pub fn query(filter: &SocketFilter) -> Result<Query> {
    let q = Query::new()
        .filter(selection(filter))
        .backend(backend(filter))
        .owner_lookup(owner_lookup(filter));
    if filter.all_netns {
        raise_fd_limit();
        let q = q.all_netns();
        return Ok(match names_socket() {
            Some(socket) => q.docker_names(socket),
            None => q,
        });
    }
    let q = match netns(filter)? {
        Some(ns) => q.netns(&ns),
        None => q,
    };
    Ok(with_names(q, Query::docker_names))
}

/// `q` asking the Docker daemon for the names of containers that owners' cgroups name, when
/// `DOCKER_HOST` allows a socket (names are optional: without one, short ids, quietly).
fn with_names<T>(q: T, names: fn(T, std::path::PathBuf) -> T) -> T {
    match docker_socket() {
        Ok(socket) => names(q, socket),
        Err(_) => q,
    }
}

/// Builds the watcher the `watch` flags describe; the caller adds what only it knows (hooks
/// decide whether command lines are read).
pub fn watcher(args: &WatchArgs) -> Result<WatcherBuilder> {
    let filter = selection(&args.filter).ignore_loopback(args.ignore_loopback);
    let mut builder = Watcher::builder();
    if args.hf {
        builder = builder.high_fidelity();
    }
    if let Some(v) = args.interval {
        builder = builder.interval(v);
    }
    if let Some(v) = args.burst_scans {
        builder = builder.burst_scans(v);
    }
    if let Some(v) = args.burst_delay {
        builder = builder.burst_delay(v);
    }
    if let Some(v) = args.close_grace {
        builder = builder.close_grace(v);
    }
    if let Some(path) = &args.snapshot {
        builder = builder.snapshot(path);
    }
    if args.filter.all_netns {
        raise_fd_limit();
        builder = builder.all_netns();
        if let Some(socket) = names_socket() {
            builder = builder.docker_names(socket);
        }
    } else if let Some(name) = &args.filter.container {
        // Followed across restarts, which give the container a new namespace.
        builder = builder.container(docker_socket()?, name);
    } else {
        if let Some(ns) = netns(&args.filter)? {
            builder = builder.netns(ns);
        }
        builder = with_names(builder, WatcherBuilder::docker_names);
    }
    if let Some(v) = args.reconcile {
        builder = builder.reconcile_interval(v);
    }
    let source = match args.source {
        SourceArg::Auto => Source::Auto,
        SourceArg::Ebpf => Source::Ebpf,
        SourceArg::Scan => Source::Scan,
    };
    if let Some(which) = args.connections {
        builder = builder.connections(match which {
            ConnectionsArg::In => Connections::In,
            ConnectionsArg::Out => Connections::Out,
            ConnectionsArg::All => Connections::All,
        });
        for cidr in &args.remotes {
            builder = builder.remote(*cidr);
        }
        for cidr in &args.ignore_remotes {
            builder = builder.ignore_remote(*cidr);
        }
        if let Some(v) = args.cooldown {
            builder = builder.connection_cooldown(v);
        }
        builder = builder.own_connections(args.own_connections);
    }
    Ok(builder
        .filter(filter)
        .backend(backend(&args.filter))
        .owner_lookup(owner_lookup(&args.filter))
        .report_initial(!args.no_initial)
        .source(source))
}

/// The Docker daemon's socket, from DOCKER_HOST or the default.
fn docker_socket() -> Result<std::path::PathBuf> {
    Ok(docker::socket_from_env(std::env::var("DOCKER_HOST").ok().as_deref())?)
}

/// Where `--all-netns` asks for container names: the Docker socket when DOCKER_HOST allows
/// one (names are optional there, so a TCP DOCKER_HOST only costs them, with a warning).
fn names_socket() -> Option<std::path::PathBuf> {
    docker_socket().map_err(|e| log::warn!("{e}; containers are named by short id")).ok()
}

/// Watching every namespace holds three or four descriptors per namespace: lift the soft
/// limit to the hard one so a host with hundreds of containers does not run out.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        log::warn!("cannot raise the open-file limit from {soft}: {e}");
    }
}

/// This process's network namespace inode (0 if it cannot be read: every other one shows).
pub fn own_netns() -> u64 {
    Netns::current().map_or(0, |ns| ns.inode())
}

/// The namespace `--netns` or `--container` names (`--netns`: a pid when it is all digits,
/// else a path).
fn netns(filter: &SocketFilter) -> Result<Option<Netns>> {
    if let Some(name) = &filter.container {
        return Ok(Some(docker::inspect(&docker_socket()?, name)?.netns()?));
    }
    let Some(arg) = &filter.netns else { return Ok(None) };
    let ns = match arg.parse::<u32>() {
        Ok(pid) => Netns::from_pid(pid)?,
        Err(_) => Netns::from_path(arg)?,
    };
    Ok(Some(ns))
}

/// The library filter the selection flags describe.
fn selection(filter: &SocketFilter) -> Filter {
    let mut protocols = Vec::new();
    if filter.tcp {
        protocols.push(Protocol::Tcp);
    }
    if filter.udp {
        protocols.push(Protocol::Udp);
    }
    if filter.unix {
        protocols.push(Protocol::Unix);
    }
    if protocols.is_empty() {
        protocols = vec![Protocol::Tcp, Protocol::Udp];
    }
    let families: &[Family] = match (filter.ipv4, filter.ipv6) {
        (true, false) => &[Family::Ipv4],
        (false, true) => &[Family::Ipv6],
        _ => &[Family::Ipv4, Family::Ipv6],
    };
    let states = if filter.states.is_empty() {
        StateSet::LISTENING
    } else {
        filter.states.iter().fold(StateSet::EMPTY, |set, s| match s {
            StateArg::Listening => set.with(State::Listen).with(State::Unconnected),
            StateArg::All => StateSet::ALL,
            StateArg::One(state) => set.with(*state),
        })
    };
    let mut f = Filter::new().protocols(&protocols).families(families).states(states);
    for (first, last) in &filter.ports {
        f = f.port_range(*first, *last);
    }
    for scope in &filter.scopes {
        f = f.scope(*scope);
    }
    if let Some(pid) = filter.pid {
        f = f.pid(pid, filter.children);
    }
    if let Some(user) = &filter.user {
        f = f.user(user.as_str());
    }
    if let Some(comm) = &filter.comm {
        f = f.comm(comm.as_str());
    }
    f
}

/// The backend the flag names.
fn backend(filter: &SocketFilter) -> Backend {
    match filter.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Netlink => Backend::Netlink,
        BackendArg::Proc => Backend::Proc,
    }
}

/// The owner lookup `--owners` names.
fn owner_lookup(filter: &SocketFilter) -> OwnerLookup {
    match filter.owners {
        OwnersArg::Auto => OwnerLookup::Auto,
        OwnersArg::Bpf => OwnerLookup::Bpf,
        OwnersArg::Proc => OwnerLookup::Proc,
    }
}
