//! `watch --metrics`: what a scraper gets (checked by promtool, Prometheus's own linter), a
//! real Prometheus seeing a listener open and close, names others chose in label values,
//! the endpoint's refusals and limits, and the errors of a bad address.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::escaping::Hostile;
use crate::util::{PATIENCE, WatchCmd, portwatch, private_dir, skip, system_tool, wait_for};

/// How long a real Prometheus may take to start, scrape and answer.
const PROMETHEUS_PATIENCE: Duration = Duration::from_secs(60);

/// A `portwatch watch --metrics 127.0.0.1:0`, and the address it serves on (logged at info).
fn watch_with_metrics(extra: &[&str]) -> (WatchCmd, String) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let w = WatchCmd::start_with_env(&args, &[("RUST_LOG", "info")]);
    let addr = wait_for("the metrics address on stderr", PATIENCE, || {
        let err = w.stderr();
        let rest = err.split("serving metrics on http://").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    });
    (w, addr)
}

/// An HTTP answer: status, head and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `request` (a whole request head) to `addr` and reads the answer to the end.
fn send(addr: &str, request: &str) -> Answer {
    try_send(addr, request).expect("an answer")
}

/// Like `send`, `Err` when the connection fails (is reset) before the answer is read.
fn try_send(addr: &str, request: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(Answer { status, head: head.to_owned(), body: body.to_owned() })
}

/// GET `target` (HTTP/1.0: the answer is never chunked), with these extra header lines.
fn get(addr: &str, target: &str, headers: &str) -> Answer {
    send(addr, &format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"))
}

/// The sample lines of `metric` (its name followed by `{` or a space) in a scrape.
fn samples<'a>(scrape: &'a str, metric: &str) -> Vec<&'a str> {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[test]
fn a_scrape_passes_promtool_and_holds_every_metric() {
    let Some(promtool) = system_tool("promtool") else {
        return skip("promtool is not installed (Debian's prometheus package; make deps)");
    };
    let (w, addr) = watch_with_metrics(&[]);
    w.ready();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let scrape = wait_for("the listener in a scrape", PATIENCE, || {
        let a = get(&addr, "/metrics", "");
        assert_eq!(a.status, 200, "{}", a.head);
        a.body.contains(&format!("port=\"{port}\"")).then_some(a)
    });
    assert_eq!(
        scrape.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        scrape.head
    );
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(scrape.body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        scrape.body
    );
    let body = &scrape.body;
    let ours = samples(body, "portwatch_listening")
        .into_iter()
        .find(|l| l.contains(&format!("port=\"{port}\"")))
        .unwrap();
    for label in [
        "proto=\"tcp\"",
        "family=\"ipv4\"",
        "addr=\"127.0.0.1\"",
        "netns=",
        "container=\"\"",
        "comm=\"",
    ] {
        assert!(ours.contains(label), "{label} missing from {ours}");
    }
    assert!(ours.ends_with(" 1"), "{ours}");
    for metric in [
        "portwatch_events_total",
        "portwatch_events_dropped_total",
        "portwatch_scan_duration_seconds_bucket",
        "portwatch_scan_duration_seconds_count",
        "portwatch_scans_total",
        "portwatch_scans_skipped_total",
        "portwatch_kernel_events_lost_total",
        "portwatch_owner_unknown_total",
        "portwatch_source_info",
        "portwatch_listening_series_dropped",
        "portwatch_namespaces",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(!samples(body, metric).is_empty(), "{metric} missing:\n{body}");
    }
    assert!(
        samples(body, "portwatch_scans_total").iter().any(|l| l.contains("reason=\"start\"} 1")),
        "{body}"
    );
    // Prometheus asks for OpenMetrics: the same metrics, its content type, and `# EOF` last.
    let om = get(&addr, "/metrics", "Accept: application/openmetrics-text;version=1.0.0\r\n");
    assert_eq!(om.status, 200);
    assert!(om.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE portwatch_source info"), "{}", om.body);
    drop(held);
    w.terminate();
}

#[test]
fn minimal_labels_and_the_series_cap() {
    let held: Vec<TcpListener> =
        (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<String> =
        held.iter().map(|l| l.local_addr().unwrap().port().to_string()).collect();
    let mut args = vec!["--metrics-labels", "minimal", "--metrics-max-series", "1"];
    for p in &ports {
        args.extend(["-p", p.as_str()]);
    }
    let (w, addr) = watch_with_metrics(&args);
    // Three sockets, three label sets, one series shown: two left out, and said so.
    let scrape = wait_for("two of the three listeners left out by the cap", PATIENCE, || {
        let body = get(&addr, "/metrics", "").body;
        let dropped = samples(&body, "portwatch_listening_series_dropped")
            .first()
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())?;
        (dropped == 2).then_some(body)
    });
    let listening = samples(&scrape, "portwatch_listening");
    assert_eq!(listening.len(), 1, "{scrape}");
    let series = listening[0];
    assert!(!series.contains("addr=") && !series.contains("comm="), "{scrape}");
    assert!(ports.iter().any(|p| series.contains(&format!("port=\"{p}\""))), "{scrape}");
    assert!(series.contains("netns=") && series.ends_with(" 1"), "{scrape}");
    drop(held);
    w.terminate();
}

#[test]
fn healthz_and_refusals() {
    let (w, addr) = watch_with_metrics(&[]);
    let ok = get(&addr, "/healthz", "");
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"), "{}", ok.head);
    assert_eq!(get(&addr, "/nothing-here", "").status, 404);
    let post = send(&addr, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = send(&addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty() && head.header("content-length").is_some_and(|n| n != "0"));
    let huge = get(&addr, "/metrics", &format!("X-Pad: {}\r\n", "a".repeat(9000)));
    assert_eq!(huge.status, 431);
    let garbage = send(&addr, "\x01\x02 nonsense\r\n\r\n");
    assert_eq!(garbage.status, 400);
    w.terminate();
}

/// Clients that connect and say nothing hold the endpoint's workers until their deadline,
/// and the rest are turned away; the watcher goes on reporting meanwhile, and the endpoint
/// answers again once they are gone.
#[test]
fn silent_clients_never_stall_the_watcher() {
    let (w, addr) = watch_with_metrics(&[]);
    w.ready();
    let silent: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Past the two workers and eight waiting, connections are answered 503 at once (or,
    // when the request arrives after the answer, reset), never left waiting.
    match try_send(&addr, "GET /metrics HTTP/1.0\r\n\r\n") {
        Ok(busy) => assert_eq!(busy.status, 503, "{}", busy.head),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    w.expect("the listener opened while the endpoint is flooded", |l| l.contains(&port));
    drop(silent);
    wait_for("the endpoint to answer again", PATIENCE, || {
        (get(&addr, "/healthz", "").status == 200).then_some(())
    });
    w.terminate();
}

#[test]
fn a_taken_address_is_a_runtime_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = portwatch().args(["watch", "--metrics", &addr]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot serve metrics on {addr}")), "{err}");
    assert!(err.contains("another process listens there"), "{err}");
}

#[test]
fn a_bad_address_in_the_environment_names_the_variable() {
    let out =
        portwatch().args(["watch"]).env("PORTWATCH_METRICS", "localhost:9184").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PORTWATCH_METRICS") && err.contains("--metrics"), "{err}");
    let out = portwatch().args(["watch", "--metrics-labels", "minimal"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--metrics-labels needs --metrics");
    // Set in the environment (a unit file, a pod spec), the message names the variable.
    let out =
        portwatch().args(["watch"]).env("PORTWATCH_METRICS_LABELS", "minimal").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("PORTWATCH_METRICS_LABELS (the environment variable for --metrics-labels) needs --metrics (or PORTWATCH_METRICS)"),
        "{err}"
    );
}

/// Percent-encodes a PromQL query for a URL.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus of our own: a private directory, loopback only, its own port.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &std::path::Path, target: &str) -> Prometheus {
        let dir = private_dir();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: portwatch\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port: bound by us, then released for Prometheus.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr, _dir: dir }
    }

    /// The result vector of an instant PromQL query, once Prometheus answers.
    fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        TcpStream::connect(&self.addr).ok()?;
        let a = get(&self.addr, &format!("/api/v1/query?query={}", url_encode(promql)), "");
        let v: serde_json::Value = serde_json::from_str(&a.body).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus log:\n{}", self.log());
        }
    }
}

/// A real Prometheus scrapes the watcher: a PromQL query sees a listener a process named
/// with quotes, a backslash and a newline opened (the name arrives intact but escaped), and
/// stops seeing it once it is closed.
#[test]
fn prometheus_sees_a_listener_open_and_close() {
    let Some(binary) = system_tool("prometheus") else {
        return skip("prometheus is not installed (Debian's prometheus package; make deps)");
    };
    let (w, addr) = watch_with_metrics(&[]);
    w.ready();
    let prometheus = Prometheus::start(&binary, &addr);
    // 14 bytes that would end the label and add a sample if they were not escaped.
    let comm = "x\"} 9\nfake 1\\";
    let Some(mut hostile) = Hostile::named(comm, 0) else { return };
    let query = format!("portwatch_listening{{port=\"{}\"}}", hostile.port);
    let seen = wait_for("Prometheus to see the listener", PROMETHEUS_PATIENCE, || {
        prometheus.query(&query).filter(|r| !r.is_empty())
    });
    assert_eq!(seen.len(), 1, "{seen:?}");
    let metric = &seen[0]["metric"];
    // Escaped as in text output (a newline as `\n`), after the kernel's own escaping of
    // /proc/PID/status, which doubles a backslash; a name taken from the kernel event alone
    // (its process gone before /proc was read) keeps one.
    let comm = metric["comm"].as_str().unwrap();
    assert!([r#"x"} 9\nfake 1\"#, r#"x"} 9\nfake 1\\"#].contains(&comm), "{seen:?}");
    assert_eq!(metric["addr"], "127.0.0.1");
    assert_eq!(metric["job"], "portwatch");
    assert_eq!(seen[0]["value"][1], "1");
    // The forged sample never made it.
    assert_eq!(prometheus.query("fake").map(|r| r.len()), Some(0));
    hostile.close();
    wait_for("Prometheus to stop seeing the listener", PROMETHEUS_PATIENCE, || {
        prometheus.query(&query).filter(|r| r.is_empty()).map(|_| ())
    });
    let up = prometheus.query("up{job=\"portwatch\"}").unwrap();
    assert_eq!(up[0]["value"][1], "1", "every scrape succeeded: {up:?}");
    w.terminate();
}

/// The library's counters, read through a `Monitor` from another thread while the events are
/// read on this one: the first scan, then a listener's open and close counted by kind and
/// protocol, and the open set shared.
#[test]
fn a_monitor_counts_scans_and_events_from_another_thread() {
    use portwatch_core::{EventKind, Filter, Protocol, ScanReason, Source, Watcher};
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let w = Watcher::builder()
        .filter(Filter::new().port(port))
        .source(Source::Scan)
        .interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let monitor = w.monitor();
    let events = |s: &portwatch_core::Stats, kind| {
        s.events.iter().find(|(k, p, _)| *k == kind && *p == Protocol::Tcp).map_or(0, |e| e.2)
    };
    let reader = std::thread::spawn(move || {
        wait_for("the open counted", PATIENCE, || {
            let s = monitor.stats();
            (events(&s, EventKind::Opened) == 1).then_some(s)
        });
        assert_eq!(monitor.current_shared().len(), 1);
        monitor
    });
    let monitor = reader.join().unwrap();
    drop(held);
    let s = wait_for("the close counted", PATIENCE, || {
        let s = monitor.stats();
        (events(&s, EventKind::Closed) == 1).then_some(s)
    });
    assert_eq!(s.source, Source::Scan);
    assert_eq!(s.namespaces, 1);
    assert!(s.scans.contains(&(ScanReason::Start, 1)), "{s:?}");
    assert!(s.scan_times.count >= 1 && s.scan_times.buckets.len() == 15, "{s:?}");
    assert_eq!((s.dropped_events, s.kernel_events_lost), (0, 0));
    assert!(monitor.current().is_empty());
    assert_eq!(w.stats().events, s.events);
}
