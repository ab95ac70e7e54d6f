//! Fault-tolerance protocols a graph can run under, for
//! side-by-side measurement on the same graph, executors and transport.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A fault-tolerance protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No replication and no commit gating: the bare-metal reference.
    None,
    /// Classic primary–backup: a stateful model's outputs leave it only once
    /// its backup holds the state that produced them.
    StopAndBuffer,
    /// Periodic checkpoints of model state to RocksDB beside the primary, plus
    /// the input log; recovery restarts the executor (loading the model),
    /// restores the checkpoint and re-executes. Results wait for the
    /// checkpoint that covers them (as Flink's exactly-once sinks do), so a
    /// re-execution can never contradict a released result.
    Checkpoint,
    /// HAMS: outputs flow at once, backups apply deltas asynchronously, the
    /// sink releases on the backups' durable frontiers.
    Hams,
}

impl Mode {
    /// Every mode, in the order benchmarks report them.
    pub const ALL: [Mode; 4] = [Mode::None, Mode::Hams, Mode::StopAndBuffer, Mode::Checkpoint];

    /// True when stateful models are replicated (deltas, backups, recovery).
    pub fn replicates(self) -> bool {
        self != Mode::None
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Mode::None => "none",
            Mode::StopAndBuffer => "stop-and-buffer",
            Mode::Checkpoint => "checkpoint",
            Mode::Hams => "hams",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or_else(|| format!("unknown mode {s:?} (expected none, hams, stop-and-buffer or checkpoint)"))
    }
}
