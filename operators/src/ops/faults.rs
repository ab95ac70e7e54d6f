//! Planned fault injection (`--kill`, `--hang`): which executor to hit and
//! when. A shell concern: the protocol never sees it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Which replica of a model a fault targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The serving executor (stateless models: the first replica).
    Primary,
    /// The backup's warm spare executor.
    Backup,
}

/// What a fault does to its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// SIGKILL: a crash.
    Kill,
    /// SIGSTOP: a hang (no answers, no exit).
    Hang,
}

impl FaultKind {
    /// The signal that injects it.
    pub fn signal(self) -> i32 {
        match self {
            FaultKind::Kill => libc::SIGKILL,
            FaultKind::Hang => libc::SIGSTOP,
        }
    }
}

/// A planned fault: hit `role` of `model` when it first runs a request with `seq >= at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Graph node index.
    pub model: u16,
    /// Which replica.
    pub role: Role,
    /// Request threshold.
    pub at: u64,
    /// Kill or hang.
    pub kind: FaultKind,
}

/// The fault plan and which faults have fired (anywhere, as far as this worker knows).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Planned faults.
    pub faults: Vec<Fault>,
    /// Faults already injected.
    pub fired: BTreeSet<usize>,
    /// Executors of this worker a fault has hit: a second fault waits for
    /// their replacement (a fault during recovery).
    pub hit: BTreeSet<hams_protocol::ExecId>,
}

impl Plan {
    /// The planned faults that `role` of `model` should inject on reaching `seq` (not yet fired).
    pub fn due(&self, model: u16, role: Role, seq: u64) -> Vec<usize> {
        self.faults
            .iter()
            .enumerate()
            .filter(|(i, f)| f.model == model && f.role == role && seq >= f.at && !self.fired.contains(i))
            .map(|(i, _)| i)
            .collect()
    }
}
