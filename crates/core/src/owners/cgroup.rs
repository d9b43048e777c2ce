//! Parser of `/proc/PID/cgroup`: which container runtime, container, Kubernetes pod or systemd
//! service a process runs in, from its cgroup path alone. Bytes in, values out: no I/O.
//!
//! What can be trusted. A cgroup is named by whoever creates it, and creating one takes write
//! access to its parent directory: root's, except in a subtree delegated to someone else — a
//! container's own (a runtime may hand the container its cgroup), a service's with systemd's
//! `Delegate=`, a user's `user@UID.service` (where rootless containers live). So the path is
//! read from the root down and only what a runtime itself creates counts:
//! - the *outermost* container segment wins; what lies below it the container may have made
//!   (`/docker/ID/docker-FAKE.scope`: container ID);
//! - a container segment below a systemd service (`/system.slice/x.service/docker-ID.scope`)
//!   counts for nothing: the service may have delegation and name it anything; the process is
//!   that service's;
//! - below `user@UID.service` the same rules apply, but the names are user UID's to choose:
//!   [`Cgroup::delegated_uid`] says so, and nothing there is confirmed with a daemon.
//!
//! Paths read under another cgroup namespace start with `/..` (the part above the reader's
//! root is not shown); those segments are skipped, and what follows is read the same way.

use crate::process::{Cgroup, Runtime};

/// Most bytes of `/proc/PID/cgroup` read: one line per v1 hierarchy (a dozen), each path at
/// most `PATH_MAX`.
pub(crate) const CGROUP_MAX: usize = 64 << 10;

/// Parses `/proc/PID/cgroup`: the unified (v2) line `0::/path` when it names a runtime or a
/// service, else the first v1 line (`N:controllers:/path`) that does, else the unified path
/// (or the first line's) with nothing found in it. `None` for no well-formed line.
pub(crate) fn parse_cgroup(bytes: &[u8]) -> Option<Cgroup> {
    let text = String::from_utf8_lossy(bytes);
    let mut unified = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !path.starts_with('/') || id.parse::<u32>().is_err() {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(path);
        } else {
            v1.push(path);
        }
    }
    let fallback = unified.or_else(|| v1.first().copied())?;
    unified
        .into_iter()
        .chain(v1)
        .map(classify)
        .find(|c| c.runtime.is_some())
        .or_else(|| Some(classify(fallback)))
}

/// What one cgroup path says.
fn classify(path: &str) -> Cgroup {
    let mut c = Cgroup {
        path: path.to_owned(),
        runtime: None,
        container_id: None,
        pod_uid: None,
        unit: None,
        delegated_uid: None,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != "..").collect();
    let mut in_kubepods = false;
    let mut i = 0;
    while i < segments.len() {
        let seg = segments[i];
        if c.delegated_uid.is_none()
            && let Some(uid) = user_manager(seg)
        {
            c.delegated_uid = Some(uid);
            i += 1;
            continue;
        }
        if seg.ends_with(".service") {
            // The process is this service's; anything below it the service may have named.
            c.unit = Some(seg.to_owned());
            c.runtime = Some(Runtime::Systemd);
            break;
        }
        if seg == "kubepods" || seg.starts_with("kubepods.") || seg.starts_with("kubepods-") {
            in_kubepods = true;
            if let Some(uid) = pod_slice(seg) {
                c.pod_uid = Some(uid);
            }
            i += 1;
            continue;
        }
        if in_kubepods && let Some(uid) = seg.strip_prefix("pod").filter(|u| is_uuid(u)) {
            c.pod_uid = Some(uid.to_owned());
            i += 1;
            continue;
        }
        // `/docker/ID`: Docker's cgroupfs driver (and dockerd's default cgroup parent).
        let next = segments.get(i + 1).copied();
        let found = match container_scope(seg) {
            Some(found) => Some(found),
            None if seg == "docker" && next.is_some_and(is_container_id) => {
                i += 1;
                next.map(|id| (Runtime::Docker, id))
            }
            // `kubepods/QOS/podUID/ID`: kubelet's cgroupfs driver, runtime not named.
            None if c.pod_uid.is_some() && is_container_id(seg) => Some((Runtime::Cri, seg)),
            None => None,
        };
        if let Some((runtime, id)) = found {
            c.runtime = Some(runtime);
            c.container_id = Some(id.to_owned());
            break;
        }
        i += 1;
    }
    if c.container_id.is_none() {
        c.pod_uid = None;
    }
    c
}

/// `user@1000.service` → 1000: the user manager, whose subtree is delegated to that user.
fn user_manager(seg: &str) -> Option<u32> {
    seg.strip_prefix("user@")?.strip_suffix(".service")?.parse().ok()
}

/// A segment a runtime names after its container: `docker-ID.scope`, `cri-containerd-ID.scope`,
/// `crio-ID.scope` (and cgroupfs `crio-ID`), `libpod-ID.scope` (and `libpod-ID`),
/// `nerdctl-ID.scope`. Monitors (`crio-conmon-ID`, `libpod-conmon-ID`) are not containers.
fn container_scope(seg: &str) -> Option<(Runtime, &str)> {
    const PREFIXES: [(&str, Runtime); 5] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_container_id(id).then_some((*runtime, id))
    })
}

/// `kubepods-burstable-pod1b2c…_….slice` or `kubepods-pod….slice` (systemd driver, the
/// pod's UID with `_` for `-`) → the UID with dashes.
fn pod_slice(seg: &str) -> Option<String> {
    let name = seg.strip_suffix(".slice")?;
    let (_, uid) = name.rsplit_once("-pod")?;
    let uid = uid.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

/// 64 lowercase hex digits: a Docker, containerd, CRI-O or Podman container id.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `8-4-4-4-12` hex digits: a Kubernetes UID.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
            g.len() == n && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "481ac8d844c2db99e6ee0246a0ec8bb5ba47aa6460e2737e22d0660a12acd010";
    const POD: &str = "0b7c2b8e-6f35-4a9d-9d4b-2c1f6e7a8d90";

    fn parse(text: &str) -> Cgroup {
        parse_cgroup(text.as_bytes()).expect("a cgroup")
    }

    fn container(c: &Cgroup) -> (Option<Runtime>, Option<&str>, Option<&str>) {
        (c.runtime, c.container_id.as_deref(), c.pod_uid.as_deref())
    }

    /// `docker run` on this project's CI machine: Docker 20.10.24, cgroupfs driver, hybrid
    /// hierarchy (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified), Linux 6.18.
    #[test]
    fn docker_cgroupfs_hybrid() {
        let text = format!(
            "9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n4:memory:/docker/{ID}\n\
             1:cpu:/docker/{ID}\n0::/docker/{ID}\n"
        );
        let c = parse(&text);
        assert_eq!(container(&c), (Some(Runtime::Docker), Some(ID), None));
        assert_eq!(c.path, format!("/docker/{ID}"));
        assert_eq!((c.unit, c.delegated_uid), (None, None));
    }

    /// Docker's systemd driver on cgroup v1, as CentOS 7 shows it (the form in NeuVector's
    /// share/system/cgroup_test.go), and on cgroup v2 (Docker's "Runtime metrics" docs:
    /// `/sys/fs/cgroup/system.slice/docker-<id>.scope`).
    #[test]
    fn docker_systemd_v1_and_v2() {
        let v1 = format!(
            "10:devices:/system.slice/docker-{ID}.scope\n2:cpuacct,cpu:/system.slice/docker-{ID}.scope\n\
             1:name=systemd:/system.slice/docker-{ID}.scope\n"
        );
        assert_eq!(container(&parse(&v1)), (Some(Runtime::Docker), Some(ID), None));
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container(&parse(&v2)), (Some(Runtime::Docker), Some(ID), None));
    }

    /// Kubernetes, kubelet's systemd driver (cgroup v2; the pod UID's dashes become `_` in
    /// slice names): containerd (`cri-containerd-`), CRI-O (`crio-`), Docker via cri-dockerd
    /// (`docker-`), and a Guaranteed pod (no QoS slice).
    #[test]
    fn kubernetes_systemd_driver() {
        let under = POD.replace('-', "_");
        for (scope, runtime) in [
            (format!("cri-containerd-{ID}.scope"), Runtime::Containerd),
            (format!("crio-{ID}.scope"), Runtime::CriO),
            (format!("docker-{ID}.scope"), Runtime::Docker),
        ] {
            let text = format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/{scope}\n"
            );
            assert_eq!(container(&parse(&text)), (Some(runtime), Some(ID), Some(POD)), "{text}");
        }
        let guaranteed =
            format!("0::/kubepods.slice/kubepods-pod{under}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(
            container(&parse(&guaranteed)),
            (Some(Runtime::Containerd), Some(ID), Some(POD))
        );
        // CRI-O's monitor sits beside the container: it is not in it.
        let conmon = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/crio-conmon-{ID}.scope\n"
        );
        assert_eq!(container(&parse(&conmon)), (None, None, None));
    }

    /// Kubernetes, kubelet's cgroupfs driver (cgroup v1, k3s and older kubeadm clusters):
    /// `kubepods/QOS/pod<UID>/<container id>`, the runtime not named; and CRI-O's cgroupfs form.
    #[test]
    fn kubernetes_cgroupfs_driver() {
        let text = format!(
            "11:pids:/kubepods/besteffort/pod{POD}/{ID}\n10:memory:/kubepods/besteffort/pod{POD}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{POD}/{ID}\n"
        );
        assert_eq!(container(&parse(&text)), (Some(Runtime::Cri), Some(ID), Some(POD)));
        let guaranteed = format!("0::/kubepods/pod{POD}/crio-{ID}\n");
        assert_eq!(container(&parse(&guaranteed)), (Some(Runtime::CriO), Some(ID), Some(POD)));
        // A pod without a container segment (the pod's own cgroup): no pod claimed alone.
        assert_eq!(container(&parse(&format!("0::/kubepods/pod{POD}\n"))), (None, None, None));
    }

    /// Podman: rootful with systemd (`machine.slice/libpod-ID.scope`, and the `container`
    /// child it makes for a container with systemd inside), cgroupfs (`libpod_parent`), the
    /// conmon monitor, and rootless under the user's systemd manager (podman's docs).
    #[test]
    fn podman() {
        for text in [
            format!("0::/machine.slice/libpod-{ID}.scope\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/libpod_parent/libpod-{ID}\n"),
        ] {
            let c = parse(&text);
            assert_eq!(container(&c), (Some(Runtime::Podman), Some(ID), None), "{text}");
            assert_eq!(c.delegated_uid, None);
        }
        assert_eq!(
            container(&parse(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"))).0,
            None
        );
        let rootless = parse(&format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
        ));
        assert_eq!(container(&rootless), (Some(Runtime::Podman), Some(ID), None));
        assert_eq!(rootless.delegated_uid, Some(1000));
    }

    /// Services: a system one, a user's, and the docker daemon's (where docker-proxy runs on a
    /// systemd host).
    #[test]
    fn systemd_services() {
        let c = parse("0::/system.slice/nginx.service\n");
        assert_eq!((c.runtime, c.unit.as_deref()), (Some(Runtime::Systemd), Some("nginx.service")));
        assert_eq!(c.container_id, None);
        let c = parse("0::/user.slice/user-1000.slice/user@1000.service/app.slice/vite.service\n");
        assert_eq!(c.unit.as_deref(), Some("vite.service"));
        assert_eq!(c.delegated_uid, Some(1000));
        let c = parse("12:pids:/system.slice/docker.service\n0::/system.slice/docker.service\n");
        assert_eq!(c.unit.as_deref(), Some("docker.service"));
        // A login session and the root cgroup say nothing.
        for text in
            ["0::/user.slice/user-1000.slice/session-3.scope\n", "0::/\n", "0::/init.scope\n"]
        {
            let c = parse(text);
            assert_eq!((c.runtime, c.unit), (None, None), "{text}");
        }
    }

    /// Hybrid hosts where the unified hierarchy says nothing (all in its root) and v1 does.
    #[test]
    fn v1_speaks_when_unified_does_not() {
        let text = format!("9:name=systemd:/\n4:memory:/docker/{ID}\n0::/\n");
        let c = parse(&text);
        assert_eq!(container(&c), (Some(Runtime::Docker), Some(ID), None));
        assert_eq!(c.path, format!("/docker/{ID}"));
        // This machine's own shell: nothing anywhere; the unified path is reported.
        let c = parse("4:memory:/process_api/ae668a0ded640870e405319b51a86c2a\n0::/\n");
        assert_eq!((c.runtime, c.path.as_str()), (None, "/"));
    }

    /// What a process can name in a subtree it was delegated does not make it someone else.
    #[test]
    fn names_below_what_a_runtime_owns_are_not_believed() {
        let other = "f".repeat(64);
        // Inside a container: the outer (real) container wins.
        let c = parse(&format!("0::/docker/{ID}/docker/{other}\n"));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        let c = parse(&format!("0::/system.slice/docker-{ID}.scope/libpod-{other}.scope\n"));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        // Below a (possibly delegated) service: the service's, no container.
        let c = parse(&format!("0::/system.slice/build.service/docker-{ID}.scope\n"));
        assert_eq!(
            (c.runtime, c.container_id, c.unit.as_deref()),
            (Some(Runtime::Systemd), None, Some("build.service"))
        );
        // A user's subtree: believed as that user's claim only.
        let c = parse(&format!(
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope\n"
        ));
        assert_eq!((c.container_id.as_deref(), c.delegated_uid), (Some(ID), Some(1000)));
        // A pod segment outside kubepods, or a malformed UID, is no pod.
        let c = parse(&format!("0::/pod{POD}/{ID}\n"));
        assert_eq!(container(&c), (None, None, None));
        let c = parse(&format!("0::/kubepods/podnot-a-uid/{ID}\n"));
        assert_eq!(container(&c), (None, None, None));
        // Ids that are not 64 lowercase hex digits.
        for bad in ["abc", &ID.to_uppercase(), &format!("{ID}0"), &ID[..63]] {
            assert_eq!(parse(&format!("0::/docker-{bad}.scope\n")).container_id, None, "{bad}");
        }
    }

    /// Paths read from another cgroup namespace begin with `/..`: a watcher in a pod with a
    /// cgroup namespace of its own (containerd and CRI-O give each pod one on cgroup v2
    /// nodes) reads another pod's from their common ancestor down.
    #[test]
    fn paths_from_another_cgroup_namespace() {
        let c = parse(&format!("0::/../../system.slice/docker-{ID}.scope\n"));
        assert_eq!(container(&c), (Some(Runtime::Docker), Some(ID), None));
        let under = POD.replace('-', "_");
        let c = parse(&format!(
            "0::/../../../kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/\
             cri-containerd-{ID}.scope\n"
        ));
        assert_eq!(container(&c), (Some(Runtime::Containerd), Some(ID), Some(POD)));
    }

    #[test]
    fn garbage_is_none_or_nothing() {
        assert_eq!(parse_cgroup(b""), None);
        assert_eq!(parse_cgroup(b"garbage"), None);
        assert_eq!(parse_cgroup(b"x:y:/z"), None);
        assert_eq!(parse_cgroup(&[0xff, 0xfe, b':', b':']), None);
        let c = parse_cgroup(b"0::/\xff\xfe/docker-x.scope\n").unwrap();
        assert_eq!(c.runtime, None);
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope\n",
            POD.replace('-', "_")
        );
        for cut in 0..text.len() {
            let _ = parse_cgroup(&text.as_bytes()[..cut]);
        }
    }
}
