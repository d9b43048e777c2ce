//! Naming a Docker container's network namespace (feature `docker`).
//!
//! A deliberately small Docker Engine API client: one HTTP/1.0 request over the daemon's unix
//! socket (never TCP), so the daemon closes the connection and never chunks the body, and
//! `GET /containers/{id}/json` for the container's name, id and init pid. No async runtime,
//! no HTTP library.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::ContainerRef;

/// The daemon's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Longest answer accepted from the daemon.
const MAX_RESPONSE: u64 = 16 << 20;
/// The whole exchange — connect, request, answer — must fit in this: a daemon that never
/// accepts (a full backlog) or trickles a byte at a time cannot hold a caller.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Why the Docker daemon could not tell us about a container.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The daemon's socket could not be used.
    #[error(
        "cannot reach the Docker daemon at {}: {source} (is it running? is DOCKER_HOST right? \
         root or the docker group can use the socket)",
        socket.display()
    )]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer within [`DEADLINE`].
    #[error("the Docker daemon at {} did not answer within {:?}", socket.display(), DEADLINE)]
    TimedOut {
        /// The socket.
        socket: PathBuf,
    },
    /// No container has this name or id.
    #[error("no such container: {name} (see `docker ps -a`)")]
    NoSuchContainer {
        /// The name or id asked for.
        name: String,
    },
    /// The container exists but is not running.
    #[error("container {name} is not running (start it, or watch it once it runs)")]
    NotRunning {
        /// The name or id asked for.
        name: String,
    },
    /// The daemon answered with another error status.
    #[error("the Docker daemon answered {status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The answer was not what the Engine API sends.
    #[error("unexpected answer from the Docker daemon: {what}")]
    BadAnswer {
        /// What was wrong with it.
        what: &'static str,
    },
    /// Not a Docker container name or id: refused before it reaches the request line.
    #[error("{name:?} is not a container name or id")]
    InvalidName {
        /// What was given.
        name: String,
    },
    /// `DOCKER_HOST` names something other than a unix socket.
    #[error(
        "DOCKER_HOST={value} is not a unix:// socket; portwatch only talks to a local daemon \
         socket (unset DOCKER_HOST, or set it to unix:///var/run/docker.sock)"
    )]
    NotUnixSocket {
        /// The value of `DOCKER_HOST`.
        value: String,
    },
}

/// A running container, as the Docker daemon describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// Host pid of the container's init process.
    pub pid: u32,
}

impl Container {
    /// The container's network namespace (`/proc/PID/ns/net` of its init), labelled with
    /// the container: sockets read there carry its id and name.
    pub fn netns(&self) -> Result<Netns> {
        let label = ContainerRef::new(self.id.clone(), self.name.clone());
        Ok(Netns::from_pid(self.pid)?.with_container(label))
    }
}

/// Where the daemon listens: `DOCKER_HOST` when it is a `unix://` URL, else the default.
/// Any other scheme is refused: this client only talks to a local unix socket.
pub fn socket_from_env(docker_host: Option<&str>) -> Result<PathBuf> {
    match docker_host.filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None => Err(DockerError::NotUnixSocket { value: h.to_owned() }.into()),
        },
    }
}

/// Looks a container up by name or id through the daemon at `socket`, within [`DEADLINE`].
pub fn inspect(socket: &Path, name_or_id: &str) -> Result<Container> {
    // Docker names and ids are [a-zA-Z0-9][a-zA-Z0-9_.-]*: anything else cannot be a
    // container, and must not reach the request line.
    let valid = !name_or_id.is_empty()
        && name_or_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name_or_id.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(DockerError::InvalidName { name: name_or_id.to_owned() }.into());
    }
    let request = format!("GET /containers/{name_or_id}/json HTTP/1.0\r\nHost: docker\r\n\r\n");
    let response = exchange(socket, request.as_bytes(), Instant::now() + DEADLINE)?;
    parse_inspect(&response, name_or_id)
}

/// Sends `request` and reads the whole answer, all before `deadline`.
fn exchange(socket: &Path, request: &[u8], deadline: Instant) -> Result<Vec<u8>, DockerError> {
    let failed = |source: io::Error| {
        if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            DockerError::TimedOut { socket: socket.to_owned() }
        } else {
            DockerError::Unreachable { socket: socket.to_owned(), source }
        }
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    };
    let mut stream = connect(socket, deadline).map_err(failed)?;
    // One write: the request must not reach the daemon in fragments.
    stream.set_write_timeout(Some(left().map_err(failed)?)).map_err(failed)?;
    stream.write_all(request).map_err(failed)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Each read may wait only for what is left of the whole deadline.
        stream.set_read_timeout(Some(left().map_err(failed)?)).map_err(failed)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(response),
            Ok(n) if response.len() as u64 + n as u64 > MAX_RESPONSE => {
                return Err(DockerError::BadAnswer { what: "longer than 16 MiB" });
            }
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e)),
        }
    }
}

/// Connects to the unix socket without blocking: with the daemon's backlog full, a blocking
/// `connect` waits for as long as the daemon does not accept. Retried until `deadline`.
fn connect(socket: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket as open};
    let addr = UnixAddr::new(socket).map_err(io::Error::from)?;
    loop {
        let fd = open(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            // Linux says EAGAIN when a unix socket's backlog is full.
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(nix::errno::Errno::EAGAIN) => return Err(io::ErrorKind::TimedOut.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A container and its addresses, as the daemon's networks list its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addressed {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) addrs: Vec<std::net::IpAddr>,
}

/// Every container endpoint on the daemon's bridge networks, with its addresses: `GET
/// /networks`, then `GET /networks/{id}` of each bridge network (the list leaves endpoints
/// out), all within [`DEADLINE`]. An endpoint is there from when the container's network is
/// set up: before the container runs, and before docker-proxy starts for its published ports
/// (`GET /containers/json` shows the address only once it runs, ~200 ms later).
pub(crate) fn endpoint_addresses(socket: &Path) -> Result<Vec<Addressed>> {
    let deadline = Instant::now() + DEADLINE;
    let list = exchange(socket, b"GET /networks HTTP/1.0\r\nHost: docker\r\n\r\n", deadline)?;
    let mut out = Vec::new();
    for id in parse_bridge_networks(&list)? {
        let request = format!("GET /networks/{id} HTTP/1.0\r\nHost: docker\r\n\r\n");
        out.extend(parse_endpoints(&exchange(socket, request.as_bytes(), deadline)?)?);
    }
    Ok(out)
}

/// The ids of the bridge networks in the daemon's answer to `GET /networks` (only hex ids:
/// they go into a request line).
pub(crate) fn parse_bridge_networks(response: &[u8]) -> Result<Vec<String>> {
    let v = json_body(response, "")?;
    let list = v.as_array().ok_or(DockerError::BadAnswer { what: "networks: not an array" })?;
    Ok(list
        .iter()
        .filter(|n| n["Driver"] == "bridge")
        .filter_map(|n| n["Id"].as_str())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect())
}

/// The container endpoints in the daemon's answer to `GET /networks/{id}`: container id →
/// `Name`, `IPv4Address` and `IPv6Address` (`172.17.0.2/16`: the prefix length is dropped).
pub(crate) fn parse_endpoints(response: &[u8]) -> Result<Vec<Addressed>> {
    let v = json_body(response, "")?;
    let Some(endpoints) = v["Containers"].as_object() else { return Ok(Vec::new()) };
    Ok(endpoints
        .iter()
        .map(|(id, e)| Addressed {
            id: id.clone(),
            name: e["Name"].as_str().unwrap_or("").to_owned(),
            addrs: [&e["IPv4Address"], &e["IPv6Address"]]
                .into_iter()
                .filter_map(|a| a.as_str()?.split('/').next()?.parse().ok())
                .collect(),
        })
        .collect())
}

/// Parses the daemon's answer to `GET /containers/{id}/json`.
pub(crate) fn parse_inspect(response: &[u8], asked: &str) -> Result<Container> {
    let bad = |what: &'static str| Error::from(DockerError::BadAnswer { what });
    let v = json_body(response, asked)?;
    let id = v["Id"].as_str().ok_or_else(|| bad("no Id"))?.to_owned();
    let name = v["Name"].as_str().unwrap_or("").trim_start_matches('/').to_owned();
    let pid = v["State"]["Pid"].as_u64().unwrap_or(0);
    if v["State"]["Running"] != true || pid == 0 {
        return Err(DockerError::NotRunning { name: asked.to_owned() }.into());
    }
    let pid = u32::try_from(pid).map_err(|_| bad("pid out of range"))?;
    Ok(Container { id, name, pid })
}

/// The JSON body of a 200 answer; another status is an error (404: no container `asked`).
fn json_body(response: &[u8], asked: &str) -> Result<serde_json::Value> {
    let bad = |what: &'static str| Error::from(DockerError::BadAnswer { what });
    let split =
        response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no headers"))?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let body = &response[split + 4..];
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    match status {
        200 => {}
        404 => return Err(DockerError::NoSuchContainer { name: asked.to_owned() }.into()),
        status => {
            let msg: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let message = msg["message"].as_str().unwrap_or("").to_owned();
            return Err(DockerError::Api { status, message }.into());
        }
    }
    serde_json::from_slice(body).map_err(|_| bad("body is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged from Docker Engine 28.2 `GET /containers/portwatcher/json`.
    const RUNNING: &str = "HTTP/1.0 200 OK\r\nApi-Version: 1.50\r\nContent-Type: application/json\r\n\r\n\
{\"Id\":\"4f1c0e2b9d8a\",\"Name\":\"/portwatcher\",\"State\":{\"Status\":\"running\",\"Running\":true,\"Pid\":4242}}";

    #[test]
    fn parses_a_running_container() {
        let c = parse_inspect(RUNNING.as_bytes(), "portwatcher").unwrap();
        assert_eq!(
            c,
            Container { id: "4f1c0e2b9d8a".into(), name: "portwatcher".into(), pid: 4242 }
        );
    }

    /// Docker Engine 20.10.24 `GET /networks` (abridged to the fields read, and IPAM).
    const NETWORKS: &str = "HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\r\n\
[{\"Name\":\"none\",\"Id\":\"557f5cac1f0e8c1c16c8b9ba0dbcb03916d86d4296ce51a180762e8cd7af5557\",\"Driver\":\"null\",\"Containers\":{}},\
{\"Name\":\"host\",\"Id\":\"988671c188eaa2c391dac55c68f6a5f7f29e0cc178b1253891edb1fa80c93002\",\"Driver\":\"host\",\"Containers\":{}},\
{\"Name\":\"bridge\",\"Id\":\"00ced8bd13d2af6478e9676178deacb6d049a3b243e862091216c08f10b7c7a1\",\"Driver\":\"bridge\",\
\"IPAM\":{\"Config\":[{\"Subnet\":\"172.17.0.0/16\"}]},\"Containers\":{}},\
{\"Name\":\"evil\",\"Id\":\"x/../../containers/create?\",\"Driver\":\"bridge\"}]";

    /// Docker Engine 20.10.24 `GET /networks/bridge` while `docker run -p 18091:80` starts
    /// (container created, not running yet; abridged).
    const BRIDGE: &str = "HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\r\n\
{\"Name\":\"bridge\",\"Id\":\"00ced8bd13d2af6478e9676178deacb6d049a3b243e862091216c08f10b7c7a1\",\"Driver\":\"bridge\",\
\"Containers\":{\"eea007cd5937d3c1f5a0e4b2f2a7c64f0c4a1b9d8e7f6a5b4c3d2e1f0a9b8c7d\":{\"Name\":\"pwattr-race\",\
\"EndpointID\":\"4f0ebc22f9d2\",\"MacAddress\":\"02:42:ac:11:00:02\",\"IPv4Address\":\"172.17.0.2/16\",\"IPv6Address\":\"\"}}}";

    #[test]
    fn bridge_networks_and_their_endpoints() {
        let ids = parse_bridge_networks(NETWORKS.as_bytes()).unwrap();
        assert_eq!(ids, ["00ced8bd13d2af6478e9676178deacb6d049a3b243e862091216c08f10b7c7a1"]);
        let endpoints = parse_endpoints(BRIDGE.as_bytes()).unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].name, "pwattr-race");
        assert_eq!(endpoints[0].addrs, ["172.17.0.2".parse::<std::net::IpAddr>().unwrap()]);
        for text in [NETWORKS, BRIDGE] {
            for cut in 0..text.len() {
                let _ = parse_bridge_networks(&text.as_bytes()[..cut]);
                let _ = parse_endpoints(&text.as_bytes()[..cut]);
            }
        }
        assert!(parse_bridge_networks(b"HTTP/1.0 200 OK\r\n\r\n{}").is_err());
    }

    #[test]
    fn missing_stopped_and_garbage_are_clear_errors() {
        let nf = "HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: x\"}";
        assert!(
            parse_inspect(nf.as_bytes(), "x")
                .unwrap_err()
                .to_string()
                .contains("no such container: x")
        );
        let stopped =
            RUNNING.replace("\"Running\":true,\"Pid\":4242", "\"Running\":false,\"Pid\":0");
        assert!(
            parse_inspect(stopped.as_bytes(), "p").unwrap_err().to_string().contains("not running")
        );
        for cut in 0..RUNNING.len() {
            let _ = parse_inspect(&RUNNING.as_bytes()[..cut], "p");
        }
    }

    #[test]
    fn only_unix_docker_hosts_and_plain_names() {
        assert_eq!(socket_from_env(None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_from_env(Some("unix:///run/d.sock")).unwrap(),
            PathBuf::from("/run/d.sock")
        );
        assert!(socket_from_env(Some("tcp://10.0.0.1:2375")).is_err());
        for bad in ["", "../etc", "a b", "x/json?", "-x"] {
            assert!(
                inspect(Path::new("/nonexistent"), bad)
                    .unwrap_err()
                    .to_string()
                    .contains("not a container")
            );
        }
    }
}
