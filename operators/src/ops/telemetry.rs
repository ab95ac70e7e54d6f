//! What operators report, outside the protocol: fault injections and
//! recoveries (for `recovery_ms`), peak memory, and the sinks' counts and
//! audits (for the run's summary).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A report from an operator to the run's summary (and, for `Injected`, to
/// every worker, so a promoted replica does not inject the fault again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Telemetry {
    /// Planned fault number `fault` was injected at `at_us`.
    Injected {
        /// Index into the fault plan.
        fault: usize,
        /// When (µs since the Unix epoch).
        at_us: u64,
        /// The incarnation the target executor served (stateful models), so
        /// the recovery that replaced it is known even if another fault's
        /// view change replaced it first.
        inc: Option<u32>,
    },
    /// A stateless or spare executor hit by fault `fault` is serving again.
    Respawned {
        /// Index into the fault plan.
        fault: usize,
        /// When (µs since the Unix epoch).
        at_us: u64,
    },
    /// Peak resident memory of an executor process as it shuts down, MiB.
    Memory {
        /// `model/replica`.
        executor: String,
        /// VmHWM of the process.
        mb: f64,
    },
}

/// Counts a sink reports as it releases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkStats {
    /// Worker of the sink.
    pub worker: u32,
    /// Results released (including typed errors).
    pub released: u64,
    /// Of those, typed errors.
    pub errors: u64,
    /// Second copies of a `seq` that were not released again.
    pub suppressed: u64,
    /// End-to-end latency of each release, µs.
    pub latencies_us: Vec<u32>,
    /// Results discarded because they depended on an orphan (never released).
    pub orphans: u64,
    /// First release that depended on each `(model, incarnation > 0)`, µs since the Unix epoch.
    pub first_release: Vec<(u16, u32, u64)>,
    /// Final exactly-once audit of the partition, sent once when the stream ends.
    pub audit: Option<Audit>,
    /// When the first of these results was released (µs since the Unix epoch).
    pub first_us: Option<u64>,
}

/// What the durable logs say of one partition at the end of a run (I1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// Requests this run accepted in the partition.
    pub accepted: u64,
    /// Of those, released.
    pub released: u64,
    /// Requests ever accepted in the partition with no answer.
    pub lost: u64,
    /// Answers beyond the first for a request, over the whole log.
    pub duplicated: u64,
    /// The first problems found.
    pub problems: Vec<String>,
}

/// Fault injections and recoveries as worker 0 saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultLog {
    /// Injection time of each fired fault (µs since the Unix epoch), and
    /// the incarnation it hit (stateful models).
    pub injected: BTreeMap<usize, (u64, Option<u32>)>,
    /// Respawn time of stateless or spare executors hit by a fault.
    pub respawned: BTreeMap<usize, u64>,
    /// Recoveries, one entry per model a view change gave a new
    /// incarnation: (view, model, incarnation it got, time announced).
    pub recoveries: Vec<(u64, u16, u32, u64)>,
    /// Peak memory of each executor process, MiB, reported as they shut down.
    pub executor_rss_mb: BTreeMap<String, f64>,
}
