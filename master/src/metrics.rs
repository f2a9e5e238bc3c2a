//! Prometheus metrics of the master, written with the Prometheus project's Rust client
//! (`prometheus-client`) and served by [`crate::api::metrics`] as `GET {base}/metrics`.
//!
//! Two kinds of figures. Figures the master already keeps (instance traffic, gauges and
//! status, SSE subscribers, dropped events, store write errors, spawn failures) are read
//! from their owners at scrape time by collectors, so nothing is counted twice and a scrape
//! shows exactly what GET /instances shows at that moment. Figures nobody else keeps (API
//! requests and their latency) live here, in the registry, and the API middleware feeds
//! them. Process figures (CPU, memory, fds) are read from /proc at scrape time.
//!
//! Labels are bounded: per instance `id`, `alias` and `type` (so one series set per
//! instance), a `status` from a fixed list, and for requests the *route template* (never
//! the raw path), a normalised method and the status code.
//!
//! Counter semantics: the traffic counters are the totals of GET /instances, which carry
//! over worker restarts (see [`crate::counters`]) and only go back to 0 on a PATCH `reset`
//! (or when the master restarts and reloads what it last saved). A reset is therefore seen
//! by Prometheus as a counter reset (the value drops), never as a negative rate.

use std::sync::Weak;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::model::{InstanceKind, InstanceStatus};

/// One instance as the metrics endpoint shows it: a copy taken under the lock, so encoding
/// a scrape never holds the registry.
#[derive(Debug, Clone)]
pub struct InstanceFigures {
    pub id: String,
    pub alias: String,
    pub kind: InstanceKind,
    pub status: InstanceStatus,
    /// tcprx, tcptx, udprx, udptx as GET /instances shows them (monotonic until a reset).
    pub traffic: [u64; 4],
    pub tcps: i32,
    pub udps: i32,
    pub pool: i32,
    /// Milliseconds, as the worker reports it.
    pub ping_ms: i32,
    /// Worker processes started after the first one (crash restarts, restart actions, URL
    /// changes) since this master started.
    pub restarts: u64,
    pub last_exit: Option<i32>,
    /// Seconds since the current worker was spawned; `None` while none runs.
    pub worker_uptime: Option<f64>,
}

/// What the metrics read from the master at scrape time. The state implements it, so this
/// file does not depend on the state (data flows one way: state -> metrics).
pub trait MasterFigures: Send + Sync {
    /// Every instance (not the key record) as the metrics show it, in id order.
    fn instance_figures(&self) -> Vec<InstanceFigures>;
    /// Worker processes that could not be spawned since this master started.
    fn spawn_failures(&self) -> u64;
    /// Open SSE streams.
    fn sse_subscribers(&self) -> usize;
    /// Events not delivered to subscribers dropped for lagging.
    fn sse_dropped_events(&self) -> u64;
    /// Store writes that failed since this master started.
    fn store_write_errors(&self) -> u64;
}

/// Upper bounds (seconds) of the API latency histogram: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The statuses an instance can have, each shown as its own series.
const STATUSES: [InstanceStatus; 3] = [
    InstanceStatus::Running,
    InstanceStatus::Stopped,
    InstanceStatus::Error,
];

/// The exposition formats the endpoint can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (what a scraper gets unless it asks for OpenMetrics).
    PrometheusText,
    /// OpenMetrics text 1.0.0 (ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Labels of an API request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, e.g. `/api/v1/instances/:id`, or `unmatched`.
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

/// Labels of the API latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The master's metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A method as a label value: the standard ones by name, anything else as `other`, so a
/// client sending made-up methods cannot create series.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// The registry for `master` (held weakly: the master owns these metrics).
    pub fn new(master: Weak<dyn MasterFigures>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "nodepass_api_requests",
            "API requests answered, by route template, method and status code",
            requests.clone(),
        );
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "nodepass_api_request_duration",
            "Time from request to response headers, by route template and method",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register_collector(Box::new(MasterCollector { master }));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            requests,
            latency,
        }
    }

    /// Counts one answered API request.
    pub fn observe_request(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Renders every metric in `format`.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(64 * 1024);
        match format {
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

fn kind_label(kind: InstanceKind) -> &'static str {
    match kind {
        InstanceKind::Server => "server",
        InstanceKind::Client => "client",
        InstanceKind::NotApplicable => "",
    }
}

fn status_label(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Running => "running",
        InstanceStatus::Stopped => "stopped",
        InstanceStatus::Error => "error",
        InstanceStatus::NotApplicable => "",
    }
}

/// The `id`, `alias`, `type` labels of an instance.
fn instance_labels(f: &InstanceFigures) -> [(&'static str, &str); 3] {
    [
        ("id", f.id.as_str()),
        ("alias", f.alias.as_str()),
        ("type", kind_label(f.kind)),
    ]
}

/// Writes one family with a series per instance; `value` returns `None` to leave an
/// instance out (e.g. no exit code yet).
fn per_instance<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    figures: &[InstanceFigures],
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    value: impl Fn(&InstanceFigures) -> Option<M>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for f in figures {
        if let Some(metric) = value(f) {
            let labels = instance_labels(f);
            metric.encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Reads the instance registry and the master's own tallies at scrape time.
struct MasterCollector {
    master: Weak<dyn MasterFigures>,
}

impl std::fmt::Debug for MasterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterCollector")
    }
}

impl Collector for MasterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(m) = self.master.upgrade() else {
            return Ok(());
        };
        let figures = m.instance_figures();
        let e = &mut encoder;
        let bytes = Some(&Unit::Bytes);
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;
        let traffic = [
            (
                "nodepass_instance_tcp_rx",
                "TCP bytes received (tcprx of GET /instances)",
            ),
            (
                "nodepass_instance_tcp_tx",
                "TCP bytes sent (tcptx of GET /instances)",
            ),
            (
                "nodepass_instance_udp_rx",
                "UDP bytes received (udprx of GET /instances)",
            ),
            (
                "nodepass_instance_udp_tx",
                "UDP bytes sent (udptx of GET /instances)",
            ),
        ];
        for (i, (name, help)) in traffic.into_iter().enumerate() {
            per_instance(e, &figures, name, help, bytes, counter, |f| {
                Some(ConstCounter::new(f.traffic[i]))
            })?;
        }
        per_instance(
            e,
            &figures,
            "nodepass_instance_tcp_connections",
            "Active TCP connections (tcps)",
            None,
            gauge,
            |f| Some(ConstGauge::new(i64::from(f.tcps))),
        )?;
        per_instance(
            e,
            &figures,
            "nodepass_instance_udp_sessions",
            "Active UDP sessions (udps)",
            None,
            gauge,
            |f| Some(ConstGauge::new(i64::from(f.udps))),
        )?;
        per_instance(
            e,
            &figures,
            "nodepass_instance_pool_connections",
            "Data connections in the pool (pool)",
            None,
            gauge,
            |f| Some(ConstGauge::new(i64::from(f.pool))),
        )?;
        per_instance(
            e,
            &figures,
            "nodepass_instance_ping",
            "Last control channel round trip (ping, reported in ms)",
            Some(&Unit::Seconds),
            gauge,
            |f| Some(ConstGauge::new(f64::from(f.ping_ms) / 1000.0)),
        )?;
        per_instance(
            e,
            &figures,
            "nodepass_instance_worker_restarts",
            "Worker processes started after the first one since the master started (crash restarts, restart actions, URL changes)",
            None,
            counter,
            |f| Some(ConstCounter::new(f.restarts)),
        )?;
        per_instance(
            e,
            &figures,
            "nodepass_instance_worker_last_exit_code",
            "Exit code of the last worker process that ended (128 + signal number if a signal ended it, -1 unknown); absent until one ended",
            None,
            gauge,
            |f| f.last_exit.map(|c| ConstGauge::new(i64::from(c))),
        )?;
        per_instance(
            e,
            &figures,
            "nodepass_instance_worker_uptime",
            "Time since the current worker process was started; absent while none runs",
            Some(&Unit::Seconds),
            gauge,
            |f| f.worker_uptime.map(ConstGauge::new),
        )?;
        {
            let mut family = e.encode_descriptor(
                "nodepass_instance_status",
                "Instance status: 1 for the current status, 0 for the others",
                None,
                gauge,
            )?;
            for f in &figures {
                let [id, alias, kind] = instance_labels(f);
                for s in STATUSES {
                    let labels = [id, alias, kind, ("status", status_label(s))];
                    ConstGauge::new(i64::from(f.status == s))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = e.encode_descriptor(
                "nodepass_instances",
                "Instances by status (the API key record not counted)",
                None,
                gauge,
            )?;
            for s in STATUSES {
                let n = figures.iter().filter(|f| f.status == s).count();
                ConstGauge::new(n as i64)
                    .encode(family.encode_family(&[("status", status_label(s))])?)?;
            }
        }
        ConstGauge::new(m.sse_subscribers() as i64).encode(e.encode_descriptor(
            "nodepass_sse_subscribers",
            "Open event streams (GET /events)",
            None,
            gauge,
        )?)?;
        ConstCounter::new(m.sse_dropped_events()).encode(e.encode_descriptor(
            "nodepass_sse_dropped_events",
            "Events missed by subscribers that fell too far behind and were disconnected",
            None,
            counter,
        )?)?;
        ConstCounter::new(m.spawn_failures()).encode(e.encode_descriptor(
            "nodepass_worker_spawn_failures",
            "Worker processes that could not be started at all",
            None,
            counter,
        )?)?;
        ConstCounter::new(m.store_write_errors()).encode(e.encode_descriptor(
            "nodepass_store_write_errors",
            "Failed writes and flushes of the state store",
            None,
            counter,
        )?)?;
        Ok(())
    }
}

/// The usual `process_*` metrics of the master process, read from /proc/self.
#[derive(Debug)]
struct ProcessCollector;

/// What /proc tells about this process.
#[derive(Debug, Default)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Reads /proc/self/stat, /proc/stat (boot time), /proc/self/fd and the fd limit. Parts
/// that cannot be read are left at zero (or absent), so a locked-down /proc costs figures,
/// never the scrape.
pub fn process_figures() -> ProcessFigures {
    let mut p = ProcessFigures::default();
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name (field 2) may hold spaces and parentheses: fields are counted
        // from after its closing parenthesis, where field 3 (state) is index 0.
        if let Some(pos) = stat.rfind(')') {
            let fields: Vec<&str> = stat[pos + 1..].split_whitespace().collect();
            let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            let utime = num(11).unwrap_or(0);
            let stime = num(12).unwrap_or(0);
            p.cpu_seconds = (utime + stime) as f64 / ticks;
            p.threads = num(17).unwrap_or(0);
            p.virtual_bytes = num(20).unwrap_or(0);
            p.resident_bytes = num(21).unwrap_or(0).saturating_mul(page);
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            if let (Some(boot), Some(start)) = (boot, num(19)) {
                p.start_time_seconds = boot as f64 + start as f64 / ticks;
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries; do not count it.
        p.open_fds = (dir.count() as u64).saturating_sub(1);
    }
    p.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    p
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = process_figures();
        let gauge = MetricType::Gauge;
        let seconds = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        ConstCounter::new(p.cpu_seconds).encode(e.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            seconds,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(p.resident_bytes as i64).encode(e.encode_descriptor(
            "process_resident_memory",
            "Resident memory size",
            bytes,
            gauge,
        )?)?;
        ConstGauge::new(p.virtual_bytes as i64).encode(e.encode_descriptor(
            "process_virtual_memory",
            "Virtual memory size",
            bytes,
            gauge,
        )?)?;
        ConstGauge::new(p.open_fds as i64).encode(e.encode_descriptor(
            "process_open_fds",
            "Open file descriptors",
            None,
            gauge,
        )?)?;
        if let Some(max) = p.max_fds {
            ConstGauge::new(i64::try_from(max).unwrap_or(i64::MAX)).encode(
                e.encode_descriptor(
                    "process_max_fds",
                    "Limit of open file descriptors",
                    None,
                    gauge,
                )?,
            )?;
        }
        ConstGauge::new(p.threads as i64).encode(e.encode_descriptor(
            "process_threads",
            "OS threads",
            None,
            gauge,
        )?)?;
        ConstGauge::new(p.start_time_seconds).encode(e.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            seconds,
            gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_describe_this_process() {
        let p = process_figures();
        assert!(p.resident_bytes > 0);
        assert!(p.threads >= 1);
        // stdin/stdout/stderr at least, unless closed by the test harness.
        assert!(p.open_fds >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        assert!(p.start_time_seconds > 0.0 && p.start_time_seconds <= now + 1.0);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let m = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&m), "other");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
    }
}
