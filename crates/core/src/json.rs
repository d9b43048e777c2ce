//! The JSON shape of sockets and processes (feature `serde`), shared by every consumer that
//! prints them: `portwatch list --format json`, the `watch` event stream, embedders.
//!
//! Field names are a stable interface: add fields, never rename them.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::process::{Cgroup, Forward, Owners, Process};
use crate::socket::Socket;

impl Serialize for Socket {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Socket", 21)?;
        s.serialize_field("proto", self.protocol.as_str())?;
        s.serialize_field("family", self.family.as_str())?;
        s.serialize_field("addr", &self.addr.map(|a| a.to_string()))?;
        s.serialize_field("port", &self.port)?;
        s.serialize_field("scope", &self.scope().map(|sc| sc.as_str()))?;
        s.serialize_field("path", &self.path)?;
        s.serialize_field("remote", &self.remote.map(|r| r.to_string()))?;
        s.serialize_field("state", self.state.as_str())?;
        s.serialize_field("inode", &self.inode)?;
        s.serialize_field("uid", &self.uid)?;
        s.serialize_field("cookie", &self.cookie)?;
        s.serialize_field("netns", &self.netns)?;
        s.serialize_field("netns_name", &self.netns_name.as_deref())?;
        s.serialize_field("v6only", &self.v6only)?;
        s.serialize_field("interface", &self.interface)?;
        s.serialize_field("unix_type", &self.unix_type.map(|t| t.as_str()))?;
        s.serialize_field(
            "container",
            &self.container.as_deref().map(|c| Container { id: &c.id, name: &c.name }),
        )?;
        s.serialize_field("forwards_to", &self.forwards_to.as_deref().map(ForwardsTo::of))?;
        s.serialize_field("pids", &self.pids())?;
        s.serialize_field("processes", self.processes())?;
        let reason = match &self.owners {
            Owners::Known(_) => None,
            Owners::Unknown(r) => Some(r.code()),
        };
        s.serialize_field("owner_unknown_reason", &reason)?;
        s.end()
    }
}

/// `{"id": …, "name": …}`.
#[derive(serde::Serialize)]
struct Container<'a> {
    id: &'a str,
    name: &'a str,
}

/// `{"container": …, "addr": …, "port": …, "proto": …, "via": …}`.
#[derive(serde::Serialize)]
struct ForwardsTo<'a> {
    container: Option<Container<'a>>,
    addr: String,
    port: u16,
    proto: &'static str,
    via: &'static str,
}

impl ForwardsTo<'_> {
    fn of(f: &Forward) -> ForwardsTo<'_> {
        ForwardsTo {
            container: f.container.as_deref().map(|c| Container { id: &c.id, name: &c.name }),
            addr: f.addr.to_string(),
            port: f.port,
            proto: f.protocol.as_str(),
            via: f.via.as_str(),
        }
    }
}

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Process", 8)?;
        s.serialize_field("pid", &self.pid)?;
        s.serialize_field("ppid", &self.ppid)?;
        s.serialize_field("comm", &self.comm)?;
        s.serialize_field("cmdline", &self.cmdline_string())?;
        s.serialize_field("uid", &self.uid)?;
        s.serialize_field("user", &self.user)?;
        s.serialize_field("ns_pid", &self.ns_pid)?;
        s.serialize_field("cgroup", &self.cgroup)?;
        s.end()
    }
}

impl Serialize for Cgroup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Cgroup", 6)?;
        s.serialize_field("path", &self.path)?;
        s.serialize_field("runtime", &self.runtime.map(|r| r.as_str()))?;
        s.serialize_field("container_id", &self.container_id)?;
        s.serialize_field("pod_uid", &self.pod_uid)?;
        s.serialize_field("unit", &self.unit)?;
        s.serialize_field("delegated_uid", &self.delegated_uid)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use crate::process::*;
    use crate::socket::fixtures;
    use crate::socket::*;

    #[test]
    fn socket_json_shape() {
        let mut s = fixtures::listener(8080, 7, &[]);
        s.family = Family::Ipv6;
        s.addr = Some("::".parse().unwrap());
        s.inode = 42;
        s.uid = Some(1000);
        s.v6only = Some(false);
        s.owners = Owners::Known(vec![
            Process {
                cmdline: vec!["srv".into(), "-p".into(), "8080".into()],
                uid: 1000,
                user: Some("dev".into()),
                ns_pid: Some(1),
                ..fixtures::process(10)
            }
            .into(),
        ]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["addr"], "::");
        assert_eq!(v["port"], 8080);
        assert_eq!(v["scope"], "wildcard");
        assert_eq!(v["state"], "LISTEN");
        assert_eq!(v["pids"], serde_json::json!([10]));
        assert_eq!(v["processes"][0]["cmdline"], "srv -p 8080");
        assert_eq!(v["processes"][0]["ns_pid"], 1);
        assert!(v["processes"][0]["cgroup"].is_null());
        assert!(v["owner_unknown_reason"].is_null());

        let mut in_pod = fixtures::process(11);
        in_pod.cgroup = crate::owners::parse_cgroup(
            b"0::/kubepods/burstable/pod0b7c2b8e-6f35-4a9d-9d4b-2c1f6e7a8d90/\
              481ac8d844c2db99e6ee0246a0ec8bb5ba47aa6460e2737e22d0660a12acd010\n",
        );
        let v = serde_json::to_value(&in_pod).unwrap();
        assert_eq!(v["cgroup"]["runtime"], "cri");
        assert_eq!(v["cgroup"]["pod_uid"], "0b7c2b8e-6f35-4a9d-9d4b-2c1f6e7a8d90");
        assert_eq!(v["cgroup"]["container_id"].as_str().map(str::len), Some(64));
        assert!(v["cgroup"]["unit"].is_null() && v["cgroup"]["delegated_uid"].is_null());

        assert!(v["forwards_to"].is_null());
        let mut published = s.clone();
        published.forwards_to = Some(std::sync::Arc::new(Forward {
            via: Forwarder::DockerProxy,
            protocol: Protocol::Tcp,
            addr: "172.17.0.2".parse().unwrap(),
            port: 80,
            container: Some(std::sync::Arc::new(ContainerRef::new("d791", "web"))),
        }));
        let v = serde_json::to_value(&published).unwrap();
        assert_eq!(
            v["forwards_to"],
            serde_json::json!({"container": {"id": "d791", "name": "web"}, "addr": "172.17.0.2",
                               "port": 80, "proto": "tcp", "via": "docker-proxy"})
        );

        let unknown = Socket { owners: Owners::Unknown(UnknownReason::NotFound), ..s };
        let v = serde_json::to_value(&unknown).unwrap();
        assert_eq!(v["owner_unknown_reason"], "not_found");
        assert_eq!(v["pids"], serde_json::json!([]));
    }
}
