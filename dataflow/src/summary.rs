//! What a run reports: counts from the sinks, latency percentiles, throughput.

use hams_operators::ops::telemetry::{Audit, SinkStats};
use serde::Serialize;

/// A latency histogram with ~1.5% relative precision in O(1) memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    max: u64,
}

const SUB: u64 = 64;

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() as u64; // >= 6
    let mantissa = (v >> (exp - 6)) - SUB; // 0..64
    ((exp - 5) * SUB + mantissa) as usize
}

fn lower_bound(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let exp = b / SUB + 5;
    let mantissa = b % SUB;
    (SUB + mantissa) << (exp - 6)
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        let b = bucket(v);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.total += 1;
        self.sum += v;
        self.max = self.max.max(v);
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Exact mean (0 when empty): steadier than a quantile when latencies sit on epoch-spaced modes.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.total).unwrap_or(0)
    }

    /// The value at quantile `q` in [0, 1] (bucket lower bound; 0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(b).min(self.max);
            }
        }
        self.max
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }
}

/// Running totals at worker 0, fed by every sink.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Results released.
    pub released: u64,
    /// Of those, typed errors.
    pub errors: u64,
    /// Duplicate releases suppressed by the ledger.
    pub suppressed: u64,
    /// End-to-end latency.
    pub latency: Histogram,
    /// Final audits, one per sink.
    pub audits: Vec<Audit>,
    /// Results discarded as orphans (their requests were replayed).
    pub orphans: u64,
    /// First release depending on each (model, incarnation > 0), µs since the Unix epoch.
    pub first_release: std::collections::BTreeMap<(u16, u32), u64>,
    /// First release of this process's run, µs since the Unix epoch.
    pub first_release_at: Option<u64>,
    /// Releases per [`PACE_US`] slot (µs since the Unix epoch / slot), the
    /// latest [`PACE_SLOTS`] slots.
    pub pace: std::collections::BTreeMap<u64, u64>,
}

/// Width of a slot of [`Totals::pace`], µs.
pub const PACE_US: u64 = 10_000;
/// Slots kept (ten minutes).
const PACE_SLOTS: usize = 60_000;
/// Throughput counts as back once this many slots in a row release at 90% of the baseline.
const BACK_WINDOW: u64 = 10;

impl Totals {
    /// Time from `at_us` until the release rate, over a window of
    /// [`BACK_WINDOW`] slots, is back at 90% of `baseline` requests/s (the
    /// offered rate; else the rate in the second before `at_us`), in ms.
    pub fn throughput_back_ms(&self, at_us: u64, baseline: Option<f64>) -> Option<f64> {
        let first = at_us / PACE_US;
        let baseline = baseline.or_else(|| {
            let before: u64 = self
                .pace
                .range(first.saturating_sub(1_000_000 / PACE_US)..first)
                .map(|(_, n)| n)
                .sum();
            let covered = self.pace.first_key_value().is_some_and(|(k, _)| *k + 1_000_000 / PACE_US <= first);
            (covered && before > 0).then_some(before as f64)
        })?;
        let need = 0.9 * baseline * (BACK_WINDOW * PACE_US) as f64 / 1e6;
        let last = *self.pace.last_key_value()?.0;
        (first..=last.saturating_sub(BACK_WINDOW - 1)).find_map(|w| {
            let n: u64 = self.pace.range(w..w + BACK_WINDOW).map(|(_, n)| n).sum();
            (n as f64 >= need).then(|| ((w + BACK_WINDOW) * PACE_US).saturating_sub(at_us) as f64 / 1000.0)
        })
    }

    /// Folds in one report of a sink.
    pub fn add(&mut self, s: SinkStats) {
        self.released += s.released;
        self.errors += s.errors;
        self.suppressed += s.suppressed;
        for l in s.latencies_us {
            self.latency.record(l as u64);
        }
        if let Some(a) = s.audit {
            self.audits.push(a);
        }
        self.orphans += s.orphans;
        if let Some(t) = s.first_us {
            self.first_release_at = Some(self.first_release_at.map_or(t, |f| f.min(t)));
            *self.pace.entry(t / PACE_US).or_default() += s.released;
            while self.pace.len() > PACE_SLOTS {
                self.pace.pop_first();
            }
        }
        for (m, inc, at) in s.first_release {
            let e = self.first_release.entry((m, inc)).or_insert(at);
            *e = (*e).min(at);
        }
    }
}

/// The outcome of a run, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Graph name.
    pub graph: String,
    /// Fault-tolerance mode.
    pub mode: String,
    /// Requests this run accepted (from the source log).
    pub accepted: u64,
    /// Of those, answered (from the released ledger).
    pub released: u64,
    /// Requests ever accepted on this data directory with no answer.
    pub lost: u64,
    /// Answers beyond the first, over the whole output log.
    pub duplicated: u64,
    /// Answers that are typed errors.
    pub errors: u64,
    /// Mean end-to-end latency, µs.
    pub mean_us: u64,
    /// Median end-to-end latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Released results per second of run time.
    pub throughput_rps: f64,
    /// Wall time of the run, s.
    pub elapsed_s: f64,
    /// Timely workers.
    pub workers: usize,
    /// Timely processes.
    pub processes: usize,
    /// Sinks whose audit arrived (should equal `workers`).
    pub audited: usize,
    /// Results discarded because they depended on an orphan execution (then replayed).
    pub orphans: u64,
    /// Recoveries (view changes) performed.
    pub recoveries: u64,
    /// Recovery time of each injected fault, ms (see [`FaultReport`]).
    pub recovery_ms: Vec<f64>,
    /// Each planned fault and what became of it.
    pub faults: Vec<FaultReport>,
    /// The checker's verdict over the durable records (`None`: not run).
    pub consistent: Option<bool>,
    /// Peak resident memory of this worker process, MiB.
    pub peak_rss_mb: f64,
    /// Peak resident memory of the executor processes, summed, MiB.
    pub executors_rss_mb: f64,
}

/// One planned fault in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultReport {
    /// The fault as given (`lstm:primary@2500`).
    pub fault: String,
    /// Whether it was injected.
    pub injected: bool,
    /// The view change that replaced the stateful primary it hit; one view
    /// change can answer two faults (a kill downstream while an upstream
    /// model's recovery already replaces it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<u64>,
    /// Injection to the first result released from the promoted replica
    /// (stateful primary), or to the replacement executor being ready
    /// (stateless executor or backup spare), in ms.
    pub recovery_ms: Option<f64>,
    /// Injection to the end of the first 100 ms in which results are
    /// released at 90% of the offered rate (or of the rate before the fault), in ms.
    pub throughput_back_ms: Option<f64>,
}

impl Summary {
    /// Builds the summary from worker 0's totals.
    pub fn new(
        graph: &str,
        totals: &Totals,
        elapsed_s: f64,
        workers: usize,
        processes: usize,
        faults: Vec<FaultReport>,
        recoveries: u64,
    ) -> Self {
        let sum = |f: fn(&Audit) -> u64| totals.audits.iter().map(f).sum::<u64>();
        Summary {
            graph: graph.into(),
            mode: String::new(),
            accepted: sum(|a| a.accepted),
            released: sum(|a| a.released),
            lost: sum(|a| a.lost),
            duplicated: sum(|a| a.duplicated),
            errors: totals.errors,
            mean_us: totals.latency.mean(),
            p50_us: totals.latency.quantile(0.5),
            p99_us: totals.latency.quantile(0.99),
            max_us: totals.latency.max(),
            throughput_rps: if elapsed_s > 0.0 { totals.released as f64 / elapsed_s } else { 0.0 },
            elapsed_s,
            workers,
            processes,
            audited: totals.audits.len(),
            orphans: totals.orphans,
            recoveries,
            recovery_ms: faults.iter().filter_map(|f| f.recovery_ms).collect(),
            faults,
            consistent: None,
            peak_rss_mb: hams_operators::metrics::peak_rss_mb("self"),
            executors_rss_mb: 0.0,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "graph {} ({} mode): {} workers in {} process(es), {:.2} s",
            self.graph, self.mode, self.workers, self.processes, self.elapsed_s
        )?;
        writeln!(
            f,
            "released: {}, lost: {}, duplicated: {} (accepted {}, errors {})",
            self.released, self.lost, self.duplicated, self.accepted, self.errors
        )?;
        write!(
            f,
            "latency mean {} us, p50 {} us, p99 {} us, max {} us; throughput {:.0} req/s",
            self.mean_us, self.p50_us, self.p99_us, self.max_us, self.throughput_rps
        )?;
        for fault in &self.faults {
            match (fault.injected, fault.recovery_ms) {
                (true, Some(ms)) => {
                    write!(f, "\nfault {}: recovered in {ms:.1} ms", fault.fault)?;
                    if let Some(back) = fault.throughput_back_ms {
                        write!(f, ", throughput back at 90% after {back:.0} ms")?;
                    }
                }
                (true, None) => write!(f, "\nfault {}: injected, recovery not observed", fault.fault)?,
                (false, _) => write!(f, "\nfault {}: not injected (threshold not reached)", fault.fault)?,
            }
        }
        if self.recoveries > 0 || self.orphans > 0 {
            write!(
                f,
                "\n{} recoveries, {} orphaned results discarded and replayed",
                self.recoveries, self.orphans
            )?;
        }
        match self.consistent {
            Some(true) => write!(f, "\nconsistent: true (durable records verified)"),
            Some(false) => write!(f, "\nconsistent: FALSE"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_back_once_a_window_releases_ninety_percent() {
        // 1000 req/s (10 per 10 ms slot) for 2 s, nothing for 150 ms from t = 2 s, then 10 per slot again.
        let mut t = Totals::default();
        let start = 1_000_000u64;
        for slot in 0..400u64 {
            if !(200..215).contains(&slot) {
                t.pace.insert(start + slot, 10);
            }
        }
        let at = (start + 200) * PACE_US;
        // The first full window after the gap (9 of its 10 slots) ends 240 ms after the fault.
        assert_eq!(t.throughput_back_ms(at, Some(1000.0)), Some(240.0));
        // The same from the rate before the fault.
        assert_eq!(t.throughput_back_ms(at, None), Some(240.0));
        // Never back: nothing after the fault.
        let mut never = Totals::default();
        never.pace.insert(start, 10);
        assert_eq!(never.throughput_back_ms(at, Some(1000.0)), None);
    }

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for q in [0.5, 0.9, 0.99] {
            let exact = q * 100_000.0;
            let got = h.quantile(q) as f64;
            assert!((got - exact).abs() / exact < 0.02, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.max(), 100_000);
        let mut other = Histogram::default();
        other.record(7);
        h.merge(&other);
        assert_eq!(h.len(), 100_001);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn buckets_are_monotone() {
        let mut last = 0;
        for v in 0..10_000u64 {
            let b = bucket(v);
            assert!(b >= last);
            assert!(lower_bound(b) <= v);
            last = b;
        }
    }
}
