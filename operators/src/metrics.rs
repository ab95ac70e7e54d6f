//! Process-wide metrics, served as Prometheus text (`--metrics-addr`).
//!
//! Operators update them as they work: release counts and end-to-end latency
//! at the sinks, queue depths at the model operators, durable frontiers and
//! backup lag at the backups, and timestamps of each recovery's phases
//! (detect, view change, promote, replay, catch-up).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Latency histogram bucket upper bounds, µs.
const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
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

/// Backup progress of one stateful model.
#[derive(Debug, Clone, Copy, Default)]
struct Backlog {
    durable: u64,
    epochs: u64,
    bytes: u64,
}

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    ingested: AtomicU64,
    released: AtomicU64,
    errors: AtomicU64,
    orphans: AtomicU64,
    recoveries: AtomicU64,
    restarts: AtomicU64,
    epoch: AtomicU64,
    latency: Mutex<([u64; BUCKETS_US.len() + 1], u64, u64)>,
    queues: Mutex<BTreeMap<String, u64>>,
    backups: Mutex<BTreeMap<String, Backlog>>,
    phases: Mutex<BTreeMap<u64, BTreeMap<Phase, u64>>>,
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
        self.ingested.fetch_add(n, Ordering::Relaxed);
    }
    /// Records the current epoch of this process's sources.
    pub fn epoch(&self, e: u64) {
        self.epoch.fetch_max(e, Ordering::Relaxed);
    }
    /// Records one release and its end-to-end latency.
    pub fn released(&self, latency_us: u64, error: bool) {
        let b = BUCKETS_US.iter().position(|le| latency_us <= *le).unwrap_or(BUCKETS_US.len());
        // Under the histogram's lock, so one scrape sees the count and the histogram agree.
        let mut l = self.latency.lock().expect("poisoned");
        self.released.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        l.0[b] += 1;
        l.1 += latency_us;
        l.2 += 1;
    }
    /// This process was restarted `n` times (by its supervisor) in this run.
    pub fn restarts(&self, n: u64) {
        self.restarts.store(n, Ordering::Relaxed);
    }

    /// Counts results discarded as orphans.
    pub fn orphans(&self, n: u64) {
        self.orphans.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the requests waiting at (or in flight from) node `node`'s operator on this worker.
    pub fn queue(&self, node: &str, depth: u64) {
        let mut q = self.queues.lock().expect("poisoned");
        if q.get(node) != Some(&depth) {
            q.insert(node.to_string(), depth);
        }
    }
    /// Sets a backup's durable frontier and how far it lags (epochs and bytes waiting).
    pub fn backup(&self, model: &str, durable: u64, lag_epochs: u64, lag_bytes: u64) {
        self.backups.lock().expect("poisoned").insert(
            model.to_string(),
            Backlog {
                durable,
                epochs: lag_epochs,
                bytes: lag_bytes,
            },
        );
    }
    /// Marks a phase of the recovery that creates `view` (first mark wins).
    pub fn phase(&self, view: u64, phase: Phase, at_us: u64) {
        if phase == Phase::ViewChanged {
            self.recoveries.fetch_max(view, Ordering::Relaxed);
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

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // The counters move only under the histogram's lock (see `released`): read them under it.
        let (latency, released, errors) = {
            let l = self.latency.lock().expect("poisoned");
            (*l, self.released.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
        };
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            "hams_requests_ingested_total",
            "Requests logged and sent into the dataflow (replays included).",
            self.ingested.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "hams_results_released_total",
            "Results released exactly once (typed errors included).",
            released,
        );
        counter(
            &mut s,
            "hams_results_errors_total",
            "Released results that are typed errors.",
            errors,
        );
        counter(
            &mut s,
            "hams_orphans_discarded_total",
            "Results discarded because they depended on an orphan execution.",
            self.orphans.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "hams_process_restarts_total",
            "Times this worker process was restarted by its supervisor (after a process or peer loss).",
            self.restarts.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "hams_recoveries_total",
            "View changes applied by this process.",
            self.recoveries.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP hams_epoch Current epoch of this process's sources.\n# TYPE hams_epoch gauge\nhams_epoch {}",
            self.epoch.load(Ordering::Relaxed)
        );
        {
            let l = latency;
            let _ = writeln!(
                s,
                "# HELP hams_request_latency_us End-to-end latency, ingestion to release.\n# TYPE hams_request_latency_us histogram"
            );
            let mut cum = 0;
            for (i, le) in BUCKETS_US.iter().enumerate() {
                cum += l.0[i];
                let _ = writeln!(s, "hams_request_latency_us_bucket{{le=\"{le}\"}} {cum}");
            }
            cum += l.0[BUCKETS_US.len()];
            let _ = writeln!(
                s,
                "hams_request_latency_us_bucket{{le=\"+Inf\"}} {cum}\nhams_request_latency_us_sum {}\nhams_request_latency_us_count {}",
                l.1, l.2
            );
        }
        let _ = writeln!(s, "# HELP hams_queue_depth Requests waiting at or in flight from a model operator of this process.\n# TYPE hams_queue_depth gauge");
        for (node, d) in self.queues.lock().expect("poisoned").iter() {
            let _ = writeln!(s, "hams_queue_depth{{node=\"{node}\"}} {d}");
        }
        let backups = self.backups.lock().expect("poisoned");
        let _ = writeln!(
            s,
            "# HELP hams_durable_frontier First epoch a stateful model's backup does not hold yet.\n# TYPE hams_durable_frontier gauge"
        );
        for (m, b) in backups.iter() {
            let _ = writeln!(s, "hams_durable_frontier{{model=\"{m}\"}} {}", b.durable);
        }
        let _ = writeln!(
            s,
            "# HELP hams_backup_lag_epochs Epochs delivered to a backup and not yet held.\n# TYPE hams_backup_lag_epochs gauge"
        );
        for (m, b) in backups.iter() {
            let _ = writeln!(s, "hams_backup_lag_epochs{{model=\"{m}\"}} {}", b.epochs);
        }
        let _ = writeln!(
            s,
            "# HELP hams_backup_lag_bytes Bytes of deltas delivered to a backup and not yet held.\n# TYPE hams_backup_lag_bytes gauge"
        );
        for (m, b) in backups.iter() {
            let _ = writeln!(s, "hams_backup_lag_bytes{{model=\"{m}\"}} {}", b.bytes);
        }
        drop(backups);
        let _ = writeln!(
            s,
            "# HELP hams_recovery_phase_ms Phases of the latest recovery seen by this process.\n# TYPE hams_recovery_phase_ms gauge"
        );
        for (phase, ms) in self.last_recovery_ms() {
            let _ = writeln!(s, "hams_recovery_phase_ms{{phase=\"{phase}\"}} {ms}");
        }
        s
    }
}

/// Serves `/metrics` on `addr` from a background thread; returns the bound address.
pub fn serve(addr: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("hams-metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request head (it may come in several segments).
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&buf);
            let (status, body) = if request.starts_with("GET /metrics") || request.starts_with("GET / ") {
                ("200 OK", metrics().render())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
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
        let text = m.render();
        assert!(text.contains("hams_results_released_total 2"), "{text}");
        assert!(text.contains("hams_request_latency_us_bucket{le=\"500\"} 1"), "{text}");
        assert!(text.contains("hams_request_latency_us_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("hams_queue_depth{node=\"lstm\"} 4"), "{text}");
        assert!(text.contains("hams_backup_lag_bytes{model=\"lstm\"} 4096"), "{text}");
        assert!(text.contains("hams_recovery_phase_ms{phase=\"detect\"} 2"), "{text}");
        assert!(text.contains("hams_recovery_phase_ms{phase=\"view_change\"} 1"), "{text}");
    }
}
