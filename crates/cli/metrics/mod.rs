//! `watch --metrics ADDR:PORT`: the watcher as Prometheus metrics, on `/metrics`, and a health
//! check on `/healthz`.
//!
//! Every scrape reads the watcher's open set and counters through its `Monitor` (nothing is
//! kept here between scrapes, and a scrape never waits for a scan) and encodes them with
//! `prometheus-client`: the Prometheus text format, or OpenMetrics when the scraper's `Accept`
//! asks for it (Prometheus does). The library knows nothing of metrics formats; the HTTP
//! server is `http`, the process's own figures `process`.

mod http;
mod process;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use portwatch_core::{EventKind, Monitor, Socket, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use self::http::{Request, Response};
use crate::args::MetricsLabels;
use crate::render::escape;
use crate::{Error, Result};

/// `portwatch_listening` series at most, by default.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// What the flags say about the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub labels: MetricsLabels,
    pub max_series: usize,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Listens on `addr`: before the watcher starts, so a port taken is said at once.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|source| Error::Metrics { addr, source })
}

/// Serves the metrics of the watcher `monitor` reads on `listener`, on threads of their own.
pub fn serve(listener: TcpListener, monitor: Monitor, settings: Settings) -> Result<()> {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let bound =
        listener.local_addr().map_err(|source| Error::Metrics { addr: unspecified, source })?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Watched { monitor: monitor.clone(), settings }));
    let registry = Arc::new(registry);
    http::serve(listener, Arc::new(move |request| route(request, &registry, &monitor)))
        .map_err(|source| Error::Metrics { addr: bound, source })?;
    log::info!("serving metrics on http://{bound}/metrics");
    Ok(())
}

fn route(request: &Request, registry: &Registry, monitor: &Monitor) -> Response {
    let page = match request.path.as_str() {
        "/metrics" | "/healthz" | "/" => request.path.as_str(),
        _ => return Response::text(404, "not found: try /metrics or /healthz\n"),
    };
    if request.method != "GET" && request.method != "HEAD" {
        let mut refusal = Response::text(405, "only GET (and HEAD)\n");
        refusal.allow = Some("GET, HEAD");
        return refusal;
    }
    match page {
        "/metrics" => {
            let openmetrics = request
                .accept
                .as_deref()
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let mut body = String::new();
            let encoded = if openmetrics {
                prometheus_client::encoding::text::encode(&mut body, registry)
            } else {
                prometheus_client::encoding::prometheus_text::encode(&mut body, registry)
            };
            match encoded {
                Ok(()) => Response {
                    status: 200,
                    content_type: if openmetrics {
                        OPENMETRICS
                    } else {
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                    },
                    body: body.into_bytes(),
                    allow: None,
                },
                Err(_) => Response::text(500, "encoding the metrics failed\n"),
            }
        }
        "/healthz" => match monitor.scan_error() {
            None => Response::text(200, "ok\n"),
            Some(e) => Response::text(503, format!("scans failing: {}\n", escape(&e))),
        },
        _ => Response::text(200, "portwatch: metrics on /metrics, health on /healthz\n"),
    }
}

/// The collector: reads the watcher at each scrape.
#[derive(Debug)]
struct Watched {
    monitor: Monitor,
    settings: Settings,
}

impl Collector for Watched {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        self.listening(&mut e)?;
        let stats = self.monitor.stats();
        encode_stats(&stats, &mut e)?;
        encode_process(&process::usage(), &mut e)
    }
}

/// The label names of `portwatch_listening`, in the order `labels` gives their values.
fn label_names(set: MetricsLabels) -> &'static [&'static str] {
    match set {
        MetricsLabels::Full => &["proto", "family", "addr", "port", "netns", "container", "comm"],
        MetricsLabels::Minimal => &["proto", "family", "port", "netns", "container"],
    }
}

/// A socket's label values. Names others chose (a process's, a container's, a unix path) are
/// escaped as in text output, so a scrape read on a terminal cannot drive it; the exposition
/// format's own escaping (quotes, backslashes, newlines) is the encoder's.
fn labels(s: &Socket, set: MetricsLabels) -> Vec<String> {
    let container = s.container.as_ref().map_or_else(String::new, |c| escape(&c.name).into_owned());
    let mut v = vec![s.protocol.as_str().to_owned(), s.family.as_str().to_owned()];
    if set == MetricsLabels::Full {
        v.push(match (&s.addr, &s.path) {
            (Some(a), _) => a.to_string(),
            (None, Some(p)) => escape(p).into_owned(),
            (None, None) => String::new(),
        });
    }
    v.extend([s.port.to_string(), s.netns.to_string(), container]);
    if set == MetricsLabels::Full {
        let mut comms: Vec<&str> = s.processes().iter().map(|p| p.comm.as_str()).collect();
        comms.sort_unstable();
        comms.dedup();
        v.push(escape(&comms.join(",")).into_owned());
    }
    v
}

impl Watched {
    /// `portwatch_listening`: how many open sockets have each label set (1 per socket, unless
    /// SO_REUSEPORT listeners or the minimal labels make several alike), at most `max_series`
    /// series (in label order), and how many series were left out.
    fn listening(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let set = self.settings.labels;
        let mut series: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for s in self.monitor.current_shared() {
            *series.entry(labels(&s, set)).or_default() += 1;
        }
        let names = label_names(set);
        let mut m = e.encode_descriptor(
            "portwatch_listening",
            "Open sockets the watcher reports, by label set (1 per socket unless several share \
             their labels)",
            None,
            MetricType::Gauge,
        )?;
        for (values, n) in series.iter().take(self.settings.max_series) {
            let labels: Vec<(&str, &str)> =
                names.iter().copied().zip(values.iter().map(String::as_str)).collect();
            m.encode_family(&labels)?.encode_gauge(n)?;
        }
        let dropped = series.len().saturating_sub(self.settings.max_series) as u64;
        gauge(
            e,
            "portwatch_listening_series_dropped",
            "portwatch_listening series left out of this scrape by --metrics-max-series",
            dropped,
        )
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&v)
}

/// A counter with one label.
fn counters<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        m.encode_family(&[(label, value)])?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

/// The name an event kind has in JSON lines (`event`).
fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Opened => "open",
        EventKind::Closed => "close",
        EventKind::OwnersChanged => "owners",
        _ => "other",
    }
}

fn encode_stats(s: &Stats, e: &mut DescriptorEncoder) -> std::fmt::Result {
    {
        let mut m = e.encode_descriptor(
            "portwatch_events",
            "Events reported, by kind (open, close, owners) and protocol; dropped ones included",
            None,
            MetricType::Counter,
        )?;
        for (kind, proto, n) in &s.events {
            let labels = [("event", event_name(*kind)), ("proto", proto.as_str())];
            m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
    }
    counter(
        e,
        "portwatch_events_dropped",
        "Events dropped because their reader fell too far behind",
        s.dropped_events,
    )?;
    {
        let buckets: Vec<(f64, u64)> =
            s.scan_times.buckets.iter().map(|(bound, n)| (bound.as_secs_f64(), *n)).collect();
        e.encode_descriptor(
            "portwatch_scan_duration",
            "Time of each scan: dumps of the watched namespaces, owner lookup and tracking",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            s.scan_times.sum.as_secs_f64(),
            s.scan_times.count,
            &buckets,
            None,
        )?;
    }
    counters(
        e,
        "portwatch_scans",
        "Scans that dumped a namespace, by reason (start, interval, reconcile, resync, namespace)",
        "reason",
        s.scans.iter().map(|(r, n)| (r.as_str(), *n)),
    )?;
    counter(
        e,
        "portwatch_scans_skipped",
        "Scans skipped because the kernel's socket counters showed no change",
        s.scans_skipped,
    )?;
    counter(
        e,
        "portwatch_kernel_events_lost",
        "Kernel events lost because the eBPF ring buffer was full (a rescan follows each loss)",
        s.kernel_events_lost,
    )?;
    counters(
        e,
        "portwatch_owner_unknown",
        "Sockets reported open with an unknown owner, by reason",
        "reason",
        s.owner_unknown.iter().copied(),
    )?;
    e.encode_descriptor(
        "portwatch_source",
        "What reports sockets: ebpf (kernel events) or scan (dumps)",
        None,
        MetricType::Info,
    )?
    .encode_info(&[("source", s.source.as_str())])?;
    e.encode_descriptor("portwatch_build", "The portwatch version", None, MetricType::Info)?
        .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
    gauge(e, "portwatch_namespaces", "Network namespaces watched", s.namespaces as u64)
}

fn encode_process(u: &process::Usage, e: &mut DescriptorEncoder) -> std::fmt::Result {
    e.encode_descriptor(
        "process_cpu",
        "Total user and system CPU time spent in seconds",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?
    .encode_counter::<NoLabelSet, _, u64>(&u.cpu.as_secs_f64(), None)?;
    e.encode_descriptor(
        "process_resident_memory",
        "Resident memory size in bytes",
        Some(&Unit::Bytes),
        MetricType::Gauge,
    )?
    .encode_gauge(&u.resident_bytes)?;
    e.encode_descriptor(
        "process_virtual_memory",
        "Virtual memory size in bytes",
        Some(&Unit::Bytes),
        MetricType::Gauge,
    )?
    .encode_gauge(&u.virtual_bytes)?;
    e.encode_descriptor(
        "process_start_time",
        "Start time of the process since the Unix epoch in seconds",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?
    .encode_gauge(&u.start_time_seconds)?;
    gauge(e, "process_open_fds", "Number of open file descriptors", u.open_fds)?;
    gauge(e, "process_max_fds", "Maximum number of open file descriptors", u.max_fds)
}
