//! Process-wide metrics, served as Prometheus text (`--metrics-addr`).
//!
//! Operators update them as they work: release counts and end-to-end latency
//! at the sinks, queue depths at the model operators, durable frontiers and
//! backup lag at the backups, and timestamps of each recovery's phases
//! (detect, view change, promote, replay, catch-up).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency histogram bucket upper bounds, µs.
const BUCKETS_US: [f64; 16] = [
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
];

/// A phase of a recovery, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The fault was injected (planned faults only).
    Injected,
    /// The executor's death or hang was detected.
    Detected,
    /// This process applied the view change.
    ViewChanged,
    /// The promoted replica restored its states.
    Promoted,
    /// The sources replayed the unreleased requests.
    Replayed,
    /// The first result from the promoted replica was released.
    CaughtUp,
}

type Labels = Vec<(&'static str, String)>;

/// The process's metrics (a prometheus-client registry and the series in it).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Held while a release updates the counters and the histogram, and while
    /// a scrape encodes them, so one scrape sees them agree.
    scrape: Mutex<()>,
    ingested: Counter,
    released: Counter,
    errors: Counter,
    orphans: Counter,
    recoveries: Counter,
    restarts: Counter,
    epoch: Gauge,
    latency: Histogram,
    queues: Family<Labels, Gauge>,
    durable: Family<Labels, Gauge>,
    lag_epochs: Family<Labels, Gauge>,
    lag_bytes: Family<Labels, Gauge>,
    phase_ms: Family<Labels, Gauge<f64, AtomicU64>>,
    served: Family<Labels, Counter>,
    phases: Mutex<BTreeMap<u64, BTreeMap<Phase, u64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let family = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Labels, Gauge>::default();
            r.register(name, help, f.clone());
            f
        };
        let ingested = counter(
            &mut registry,
            "hams_requests_ingested",
            "Requests logged and sent into the dataflow (replays included)",
        );
        let released = counter(
            &mut registry,
            "hams_results_released",
            "Results released exactly once (typed errors included)",
        );
        let errors = counter(&mut registry, "hams_results_errors", "Released results that are typed errors");
        let orphans = counter(
            &mut registry,
            "hams_orphans_discarded",
            "Results discarded because they depended on an orphan execution",
        );
        let restarts = counter(
            &mut registry,
            "hams_process_restarts",
            "Times this worker process was restarted by its supervisor (after a process or peer loss)",
        );
        let recoveries = counter(&mut registry, "hams_recoveries", "View changes applied by this process");
        let epoch = Gauge::default();
        registry.register("hams_epoch", "Current epoch of this process's sources", epoch.clone());
        let latency = Histogram::new(BUCKETS_US);
        registry.register(
            "hams_request_latency_us",
            "End-to-end latency, ingestion to release, in microseconds",
            latency.clone(),
        );
        let queues = family(
            &mut registry,
            "hams_queue_depth",
            "Requests waiting at or in flight from a model operator of this process",
        );
        let durable = family(
            &mut registry,
            "hams_durable_frontier",
            "First epoch a stateful model's backup does not hold yet",
        );
        let lag_epochs = family(
            &mut registry,
            "hams_backup_lag_epochs",
            "Epochs delivered to a backup and not yet held",
        );
        let lag_bytes = family(
            &mut registry,
            "hams_backup_lag_bytes",
            "Bytes of deltas delivered to a backup and not yet held",
        );
        let phase_ms = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "hams_recovery_phase_ms",
            "Phases of the latest recovery seen by this process, in milliseconds",
            phase_ms.clone(),
        );
        let served = Family::<Labels, Counter>::default();
        registry.register(
            "hams_serve_requests",
            "Inference requests answered by the serving front end, by protocol and HTTP status (gRPC codes mapped to theirs)",
            served.clone(),
        );
        Metrics {
            registry,
            scrape: Mutex::new(()),
            ingested,
            released,
            errors,
            orphans,
            recoveries,
            restarts,
            epoch,
            latency,
            queues,
            durable,
            lag_epochs,
            lag_bytes,
            phase_ms,
            served,
            phases: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Peak resident set size of process `pid` (`"self"` for this one), MiB, from /proc (0 if unknown).
pub fn peak_rss_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    /// Counts requests entering the dataflow.
    pub fn ingested(&self, n: u64) {
        self.ingested.inc_by(n);
    }
    /// Records the current epoch of this process's sources.
    pub fn epoch(&self, e: u64) {
        let e = i64::try_from(e).unwrap_or(i64::MAX);
        if self.epoch.get() < e {
            self.epoch.set(e);
        }
    }
    /// Records one release and its end-to-end latency.
    pub fn released(&self, latency_us: u64, error: bool) {
        let _agree = self.scrape.lock().expect("poisoned");
        self.released.inc();
        if error {
            self.errors.inc();
        }
        self.latency.observe(latency_us as f64);
    }
    /// This process was restarted `n` times (by its supervisor) in this run.
    pub fn restarts(&self, n: u64) {
        self.restarts.inc_by(n.saturating_sub(self.restarts.get()));
    }

    /// Counts results discarded as orphans.
    pub fn orphans(&self, n: u64) {
        self.orphans.inc_by(n);
    }
    /// Counts one inference request the front end answered over `protocol` with `status`.
    pub fn served(&self, protocol: &'static str, status: u16) {
        self.served
            .get_or_create(&vec![("protocol", protocol.to_string()), ("status", status.to_string())])
            .inc();
    }
    /// Sets the requests waiting at (or in flight from) node `node`'s operator on this worker.
    pub fn queue(&self, node: &str, depth: u64) {
        self.queues.get_or_create(&vec![("node", node.to_string())]).set(gauge(depth));
    }
    /// Sets a backup's durable frontier and how far it lags (epochs and bytes waiting).
    pub fn backup(&self, model: &str, durable: u64, lag_epochs: u64, lag_bytes: u64) {
        let l = vec![("model", model.to_string())];
        self.durable.get_or_create(&l).set(gauge(durable));
        self.lag_epochs.get_or_create(&l).set(gauge(lag_epochs));
        self.lag_bytes.get_or_create(&l).set(gauge(lag_bytes));
    }
    /// Marks a phase of the recovery that creates `view` (first mark wins).
    pub fn phase(&self, view: u64, phase: Phase, at_us: u64) {
        if phase == Phase::ViewChanged {
            self.recoveries.inc_by(view.saturating_sub(self.recoveries.get()));
        }
        self.phases
            .lock()
            .expect("poisoned")
            .entry(view)
            .or_default()
            .entry(phase)
            .or_insert(at_us);
    }

    /// Marks a phase of the latest recovery this process knows of.
    pub fn phase_latest(&self, phase: Phase, at_us: u64) {
        let mut phases = self.phases.lock().expect("poisoned");
        if let Some((_, marks)) = phases.iter_mut().next_back() {
            marks.entry(phase).or_insert(at_us);
        }
    }

    /// Durations of the latest recovery's phases, ms: detect (from the
    /// injection), view change (from detection), promote and replay (both from
    /// the view change; they overlap), catch-up (from the later of the two to
    /// the first release from the promoted replica).
    pub fn last_recovery_ms(&self) -> Vec<(&'static str, f64)> {
        let phases = self.phases.lock().expect("poisoned");
        let Some((_, m)) = phases.iter().next_back() else {
            return Vec::new();
        };
        let span = |from: Option<u64>, to: Option<u64>| Some(to?.saturating_sub(from?) as f64 / 1000.0);
        let get = |p: Phase| m.get(&p).copied();
        let ready = get(Phase::Promoted).max(get(Phase::Replayed));
        [
            ("detect", span(get(Phase::Injected), get(Phase::Detected))),
            ("view_change", span(get(Phase::Detected), get(Phase::ViewChanged))),
            ("promote", span(get(Phase::ViewChanged), get(Phase::Promoted))),
            ("replay", span(get(Phase::ViewChanged), get(Phase::Replayed))),
            ("catch_up", span(ready, get(Phase::CaughtUp))),
        ]
        .into_iter()
        .filter_map(|(n, d)| Some((n, d?)))
        .collect()
    }

    /// The OpenMetrics text exposition (Prometheus reads it).
    pub fn render(&self) -> String {
        for (phase, ms) in self.last_recovery_ms() {
            self.phase_ms.get_or_create(&vec![("phase", phase.to_string())]).set(ms);
        }
        let mut s = String::new();
        let _agree = self.scrape.lock().expect("poisoned");
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `addr` (HTTP/1.1, any number of connections, on its
/// own thread); returns the bound address.
pub fn serve(addr: &str) -> std::io::Result<SocketAddr> {
    use axum::http::StatusCode;
    let app = router()
        .route("/", axum::routing::get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") });
    serve_http("hams-metrics", addr, 1, app)
}

/// `/metrics`, for a server of its own or the serving front end's.
pub fn router() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}

async fn scrape() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics().render())
}

/// Serves `app` on `addr` from a thread of its own (a tokio runtime with
/// `threads` workers), so the timely workers never wait on a client;
/// returns the bound address.
pub fn serve_http(name: &str, addr: &str, threads: usize, app: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()?;
    let what = name.to_string();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(server = %what, error = %e, "HTTP server stopped");
                    }
                }
                Err(e) => tracing::error!(server = %what, error = %e, "HTTP server could not start"),
            }
        })
    })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.released(300, false);
        m.released(3_000, true);
        m.queue("lstm", 4);
        m.backup("lstm", 17, 2, 4096);
        m.phase(1, Phase::Injected, 1_000);
        m.phase(1, Phase::Detected, 3_000);
        m.phase(1, Phase::ViewChanged, 4_000);
        m.served("grpc", 429);
        let text = m.render();
        assert!(text.contains("hams_results_released_total 2"), "{text}");
        assert!(text.contains("hams_request_latency_us_bucket{le=\"500.0\"} 1"), "{text}");
        assert!(text.contains("hams_request_latency_us_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("hams_queue_depth{node=\"lstm\"} 4"), "{text}");
        assert!(
            text.contains("hams_serve_requests_total{protocol=\"grpc\",status=\"429\"} 1"),
            "{text}"
        );
        assert!(text.contains("hams_backup_lag_bytes{model=\"lstm\"} 4096"), "{text}");
        assert!(text.contains("hams_recovery_phase_ms{phase=\"detect\"} 2"), "{text}");
        assert!(text.contains("hams_recovery_phase_ms{phase=\"view_change\"} 1"), "{text}");
    }
}
