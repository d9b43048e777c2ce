//! Container attribution from cgroups: real processes moved into real cgroups named as each
//! runtime names them, read back by `list` and `watch`; and the names a process may choose in
//! a subtree it was delegated, which must not make it a container.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::hostile::cgroup2_root;
use crate::util::{
    WatchCmd, fake_daemon, is_root, json, portwatch, private_dir, running, skip, system_tool, tool,
};

/// A python3 TCP listener on 127.0.0.1 (in this network namespace), moved into cgroup
/// `group` (created, and removed on drop).
struct InCgroup {
    child: Child,
    port: u16,
    group: PathBuf,
}

impl InCgroup {
    /// Runs `cmd` (stdin and stdout piped) until it prints a line starting with its pid, moves
    /// it into `group`, and returns it with the rest of that line.
    fn spawn(mut cmd: Command, group: PathBuf) -> (InCgroup, String) {
        std::fs::create_dir_all(&group).unwrap();
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let (pid, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        std::fs::write(group.join("cgroup.procs"), pid).unwrap();
        let rest = rest.to_owned();
        (InCgroup { child, port: 0, group }, rest)
    }

    fn start(python: &std::path::Path, group: PathBuf) -> InCgroup {
        let script = "import os, socket, sys\ns = socket.socket(); s.bind(('127.0.0.1', 0)); \
                      s.listen()\nprint(os.getpid(), s.getsockname()[1], flush=True)\nsys.stdin.read()";
        let mut cmd = Command::new(python);
        cmd.args(["-c", script]);
        let (mut started, port) = InCgroup::spawn(cmd, group);
        started.port = port.parse().unwrap();
        started
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        // The group, then the test's parents of it (each removed only once empty).
        let mut dir = Some(self.group.as_path());
        while let Some(d) = dir.filter(|d| d.file_name().is_some_and(|n| n != "unified")) {
            if std::fs::remove_dir(d).is_err() || d.parent() == cgroup2_root().as_deref() {
                break;
            }
            dir = d.parent();
        }
    }
}

#[test]
fn owners_cgroups_name_their_container_and_delegated_names_stay_claims() {
    if !is_root() {
        return skip("creating cgroups and moving processes into them needs root");
    }
    let (Some(root), Some(python)) = (cgroup2_root(), system_tool("python3")) else {
        return skip("no cgroup2 mount, or python3 is not installed");
    };
    let me = std::process::id();
    let (host_id, svc_id, user_id) = ("ab12".repeat(16), "cd34".repeat(16), "ef56".repeat(16));
    let base = root.join(format!("portwatch-test-{me}-attribution"));
    // A host-network Docker container (systemd driver's name), a service that named a child
    // cgroup after a container (it may: services can be delegated their subtree), and a
    // rootless container under nobody's user manager.
    let host = InCgroup::start(&python, base.join(format!("docker-{host_id}.scope")));
    let svc =
        InCgroup::start(&python, base.join("evil.service").join(format!("docker-{svc_id}.scope")));
    let user = InCgroup::start(
        &python,
        base.join("user@65534.service").join(format!("docker-{user_id}.scope")),
    );
    // A daemon that names whatever it is asked about: only what is asked gets a name.
    let dir = private_dir();
    let sock = dir.path().join("docker.sock");
    fake_daemon(&sock, |line| {
        let id = line.split('/').nth(2).unwrap_or("");
        running(id, &format!("named-{}", &id[..4.min(id.len())]), 1)
    });
    let docker_host = format!("unix://{}", sock.display());
    let out = portwatch()
        .args(["list", "-t", "--format", "json"])
        .env("DOCKER_HOST", &docker_host)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let on = |port: u16| {
        list.iter().find(|s| s["port"] == port).unwrap_or_else(|| panic!("{port} listed")).clone()
    };

    let h = on(host.port);
    let cg = &h["processes"][0]["cgroup"];
    assert_eq!(cg["runtime"], "docker", "{h}");
    assert_eq!(cg["container_id"], host_id.as_str());
    assert!(cg["path"].as_str().unwrap().ends_with(&format!("/docker-{host_id}.scope")), "{h}");
    assert!(cg["delegated_uid"].is_null() && cg["unit"].is_null());
    assert_eq!(h["container"]["id"], host_id.as_str(), "a host-network container: {h}");
    assert_eq!(h["container"]["name"], "named-ab12", "named by the daemon: {h}");

    let s = on(svc.port);
    let cg = &s["processes"][0]["cgroup"];
    assert_eq!(
        (cg["runtime"].as_str(), cg["unit"].as_str()),
        (Some("systemd"), Some("evil.service"))
    );
    assert!(cg["container_id"].is_null(), "a name below a service is not believed: {s}");
    assert!(s["container"].is_null(), "{s}");

    let u = on(user.port);
    let cg = &u["processes"][0]["cgroup"];
    assert_eq!(
        (cg["container_id"].as_str(), cg["delegated_uid"].as_u64()),
        (Some(user_id.as_str()), Some(65534))
    );
    assert_eq!(
        u["container"]["name"],
        &user_id[..12],
        "a user's claim is not named by the daemon: {u}"
    );

    // Events carry the same, from the watcher's own reads.
    let w = WatchCmd::start_with_env(
        &["--format", "json", "--interval", "0.05", "-p", &host.port.to_string()],
        &[("DOCKER_HOST", &docker_host)],
    );
    let line = w.expect("the host-network container's listener", |l| {
        l.contains(&format!("\"port\":{},", host.port))
    });
    let e = json(&line);
    assert_eq!(e["container"]["name"], "named-ab12", "{line}");
    assert_eq!(e["processes"][0]["cgroup"]["container_id"], host_id.as_str(), "{line}");
    crate::schema::assert_event_line(&line);
}

/// A process whose executable is named `docker-proxy` (a copy of python3) listening on
/// 127.0.0.1:`port` with docker-proxy's command line for `container_ip`:80; run as `nobody`
/// with `as_nobody`.
fn fake_proxy(dir: &std::path::Path, port: u16, container_ip: &str, nobody: bool) -> Child {
    let script = "import os, socket, sys\na = sys.argv\nport = int(a[a.index('-host-port') + 1])\n\
                  s = socket.socket(); s.bind(('127.0.0.1', port)); s.listen()\n\
                  print(os.getpid(), flush=True)\nsys.stdin.read()";
    let mut cmd = Command::new(dir.join("docker-proxy"));
    cmd.args(["-c", script, "-proto", "tcp", "-host-ip", "127.0.0.1", "-host-port"])
        .arg(port.to_string())
        .args(["-container-ip", container_ip, "-container-port", "80"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = if nobody { crate::hostile::as_nobody(cmd) } else { cmd }.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the fake docker-proxy started");
    child
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process that waits in a new network namespace holding `addr` on its loopback, moved into
/// cgroup `group`; as `nobody` in a user namespace of its own with `user`.
fn namespace_holding(addr: &str, group: PathBuf, user: bool) -> InCgroup {
    let ip = system_tool("ip").unwrap();
    let script = format!(
        "{0} link set lo up && {0} addr add {addr}/32 dev lo && echo $$ && exec cat",
        ip.display()
    );
    let mut cmd = tool("unshare");
    cmd.arg(if user { "-Urn" } else { "--net" }).args(["/bin/sh", "-c", &script]);
    InCgroup::spawn(if user { crate::hostile::as_nobody(cmd) } else { cmd }, group).0
}

#[test]
fn a_published_port_forwards_to_the_container_holding_its_address() {
    if !is_root() {
        return skip("namespaces created by root, cgroups and other users' processes need root");
    }
    let (Some(root), Some(python), Some(_)) =
        (cgroup2_root(), system_tool("python3"), system_tool("ip"))
    else {
        return skip("no cgroup2 mount, or python3 or ip is not installed");
    };
    let me = std::process::id();
    let base = root.join(format!("portwatch-test-{me}-published"));
    let (id, claimed) = ("0a1b".repeat(16), "2c3d".repeat(16));
    // The container: root's namespace holding 10.213.7.2, its process in docker-ID.scope.
    let _container =
        namespace_holding("10.213.7.2", base.join(format!("docker-{id}.scope")), false);
    // A user's namespace holding 10.213.7.3, in a cgroup named after a container too.
    let _claim =
        namespace_holding("10.213.7.3", base.join(format!("docker-{claimed}.scope")), true);
    let dir = private_dir();
    std::fs::copy(std::fs::canonicalize(&python).unwrap(), dir.path().join("docker-proxy"))
        .unwrap();
    // nobody may run the copy (the directory is private to root otherwise; nobody may not
    // write in it).
    let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open).unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut proxies = vec![
        fake_proxy(dir.path(), ports[0], "10.213.7.2", false),
        fake_proxy(dir.path(), ports[1], "10.213.7.3", false),
        // The same executable and command line, but run by nobody: not believed.
        fake_proxy(dir.path(), ports[2], "10.213.7.2", true),
    ];
    let list = |docker_host: &str| -> Vec<serde_json::Value> {
        let mut cmd = portwatch();
        cmd.args(["list", "-t", "--format", "json"]);
        for p in ports {
            cmd.args(["-p", &p.to_string()]);
        }
        let out = cmd.env("DOCKER_HOST", docker_host).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let on = |list: &[serde_json::Value], port: u16| {
        list.iter()
            .find(|s| s["port"] == port)
            .unwrap_or_else(|| panic!("{port}: {list:?}"))
            .clone()
    };

    // No daemon: found from the namespaces.
    let found = list("unix:///nonexistent");
    let f = &on(&found, ports[0])["forwards_to"];
    assert_eq!(
        *f,
        serde_json::json!({"container": {"id": id, "name": &id[..12]}, "addr": "10.213.7.2",
                           "port": 80, "proto": "tcp", "via": "docker-proxy"}),
        "{found:?}"
    );
    let f = &on(&found, ports[1])["forwards_to"];
    assert_eq!(f["addr"], "10.213.7.3");
    assert!(f["container"].is_null(), "a namespace a user made is no container: {f}");
    assert!(on(&found, ports[2])["forwards_to"].is_null(), "nobody's docker-proxy is not believed");

    // A daemon: it says which container holds which address (and it knows no 10.213.7.2).
    let sock = dir.path().join("docker.sock");
    let listed = claimed.clone();
    fake_daemon(&sock, move |line| {
        let body = match line.split(' ').nth(1).unwrap_or("") {
            "/networks" => {
                "[{\"Name\":\"bridge\",\"Id\":\"ab12\",\"Driver\":\"bridge\"}]".to_owned()
            }
            "/networks/ab12" => format!(
                "{{\"Containers\":{{\"{listed}\":{{\"Name\":\"web\",\
                 \"IPv4Address\":\"10.213.7.3/32\",\"IPv6Address\":\"\"}}}}}}"
            ),
            other => panic!("the daemon was asked {other}"),
        };
        format!("HTTP/1.0 200 OK\r\n\r\n{body}")
    });
    let named = list(&format!("unix://{}", sock.display()));
    assert_eq!(on(&named, ports[1])["forwards_to"]["container"]["name"], "web", "{named:?}");
    assert!(
        on(&named, ports[0])["forwards_to"]["container"].is_null(),
        "the daemon is authoritative: an address it does not list is no container's"
    );
    for p in &mut proxies {
        drop(p.stdin.take());
        let _ = p.wait();
    }
}

#[test]
fn a_port_pasta_forwards_says_where_it_goes() {
    if !is_root() {
        return skip("pasta's port needs a namespace of its own (root here)");
    }
    let Some(pasta) = system_tool("pasta") else {
        return skip("pasta (Debian's passt) is not installed; make deps installs it");
    };
    // pasta gives the command a network (and user) namespace of its own and listens on the
    // host's port, delivering to the namespace's port 80. As root it runs as nobody.
    let port = free_port();
    let mut cmd = Command::new(pasta);
    cmd.args(["--config-net", "-t", &format!("{port}:80"), "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let p = port.to_string();
    let found = crate::util::wait_for("pasta's host port", crate::util::PATIENCE, || {
        let out =
            portwatch().args(["list", "--tcp", "--port", &p, "--format", "json"]).output().ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        list.into_iter().find(|s| !s["forwards_to"].is_null())
    });
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let f = &found["forwards_to"];
    assert_eq!(f["via"], "pasta", "{found}");
    assert_eq!((f["port"].as_u64(), f["proto"].as_str()), (Some(80), Some("tcp")), "{found}");
    assert!(f["addr"] == "::" || f["addr"] == "0.0.0.0", "any address of the namespace: {found}");
    // No container there: the namespace's processes are in no container's cgroup.
    assert!(f["container"].is_null(), "{found}");
    // A listener that is no pasta's says nothing, even with a pasta-like command line.
    let mine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = mine.local_addr().unwrap().port().to_string();
    let list = crate::util::json_list(&["--tcp", "--port", &p]);
    assert!(list[0]["forwards_to"].is_null(), "{:?}", list[0]);
}
