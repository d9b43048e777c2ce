//! Container attribution from cgroups: real processes moved into real cgroups named as each
//! runtime names them, read back by `list` and `watch`; and the names a process may choose in
//! a subtree it was delegated, which must not make it a container.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};

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
    fn start(python: &std::path::Path, group: PathBuf) -> InCgroup {
        std::fs::create_dir_all(&group).unwrap();
        let script = "import os, socket, sys\ns = socket.socket(); s.bind(('127.0.0.1', 0)); \
                      s.listen()\nprint(os.getpid(), s.getsockname()[1], flush=True)\nsys.stdin.read()";
        let mut child = tool(python.to_str().unwrap())
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let (pid, port) = line.trim().split_once(' ').unwrap();
        std::fs::write(group.join("cgroup.procs"), pid).unwrap();
        InCgroup { child, port: port.parse().unwrap(), group }
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
