//! The control plane as one worker sees it: the current view (how many
//! recoveries have completed), each stateful model's incarnation and replica
//! placement, the released watermarks that bound the logs, and hand-offs of
//! executors and states between operators on this worker.
//!
//! Control records travel as timely data — failure [`Notice`]s to the
//! coordinator, [`Recover`] announcements from it, [`Cut`]s on each model's
//! durable stream — and a per-worker `Views` operator folds them into this
//! table. Data operators read it directly; they never act on a request of a
//! view this worker has not reached (they hold it), and drop requests of
//! older views (the sources replay every unreleased request in the new view).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use hams_storage::Values;
use serde::{Deserialize, Serialize};
use timely::scheduling::Activator;

use super::Epoch;
use crate::executor::protocol::{ItemError, SessionState};
use crate::executor::ExecutorHandle;

/// Shared handle on a worker's control table.
pub type ControlRef = Rc<RefCell<Control>>;

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

/// What a worker tells the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Notice {
    /// The primary executor of incarnation `inc` of stateful `model` is gone.
    Failed {
        /// Graph node index.
        model: u16,
        /// Incarnation that failed.
        inc: u32,
        /// Detection detail.
        reason: String,
        /// When it was detected (µs since the Unix epoch).
        at_us: u64,
    },
    /// Planned fault number `fault` was injected at `at_us`.
    Injected {
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
    /// A stateless or spare executor hit by fault `fault` is serving again.
    Respawned {
        /// Index into the fault plan.
        fault: usize,
        /// When (µs since the Unix epoch).
        at_us: u64,
    },
}

/// New roles of one model in a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// Graph node index.
    pub model: u16,
    /// The new incarnation.
    pub inc: u32,
    /// Worker of the new primary (the old backup).
    pub primary: usize,
    /// Worker of the new backup.
    pub backup: usize,
}

/// The coordinator's announcement of view `view`: these models roll back to
/// their backups, which are promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recover {
    /// The view this recovery creates.
    pub view: u64,
    /// The model whose failure caused it.
    pub failed: u16,
    /// The failed model and every stateful model downstream of it.
    pub roles: Vec<Roles>,
    /// Faults injected so far (so a promoted replica does not re-inject them).
    pub fired: Vec<usize>,
}

/// A backup's cut: incarnation `inc` of `model` is held up to (not including)
/// `epoch`; its executions from `epoch` on are orphans. Sent on the model's
/// durable stream at time `epoch`, so anyone who sees that stream's frontier
/// pass an epoch has seen every cut at or before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// The view whose recovery made the cut.
    pub view: u64,
    /// Graph node index.
    pub model: u16,
    /// The incarnation cut.
    pub inc: u32,
    /// First epoch not held.
    pub epoch: Epoch,
}

/// One execution of a stateful model, as its backup keeps it for replay and verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Request.
    pub seq: u64,
    /// Session.
    pub session: Option<u64>,
    /// Output (or the typed error the model gave).
    pub outcome: Result<Vec<f32>, ItemError>,
    /// Session fingerprint before.
    pub prev_fp: u64,
    /// Session fingerprint after.
    pub fp: u64,
    /// Incarnation that ran it.
    pub inc: u32,
    /// Epoch it ran in.
    pub epoch: Epoch,
    /// Lineage of its input (upstream stateful executions).
    pub input_lineage: Vec<hams_storage::LineageTag>,
}

/// What a stateful primary ships to its backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeltaBody {
    /// The sessions a batch changed and what it produced.
    Exec {
        /// New session states (`None`: ended).
        states: Vec<(u64, Option<SessionState>)>,
        /// The executions.
        executions: Vec<Execution>,
    },
    /// Everything, from a newly promoted primary to its new backup.
    Snapshot {
        /// Every open session.
        states: Vec<(u64, SessionState)>,
        /// Executions whose results are not yet released.
        executions: Vec<Execution>,
    },
}

/// A state delta of one stateful model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Graph node index.
    pub model: u16,
    /// Incarnation of the sender.
    pub inc: u32,
    /// Worker the delta is for.
    pub to: usize,
    /// What changed.
    pub body: DeltaBody,
}

/// Where a stateful model's replicas are, in the current view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Incarnation.
    pub inc: u32,
    /// Worker of the primary.
    pub primary: usize,
    /// Worker of the backup.
    pub backup: usize,
    /// Cut epoch of each earlier incarnation.
    pub cuts: BTreeMap<u32, Epoch>,
}

/// A promoted backup's states and executions, handed to the primary on the same worker.
pub struct Handoff {
    /// The warm spare, now primary.
    pub executor: Option<ExecutorHandle>,
    /// Session states at the cut.
    pub states: Vec<(u64, SessionState)>,
    /// Held executions (replayed instead of re-executed).
    pub executions: Vec<Execution>,
}

/// One worker's control table.
pub struct Control {
    view: u64,
    partitions: u64,
    models: BTreeMap<u16, Placement>,
    recovers: BTreeMap<u64, Recover>,
    cuts: BTreeMap<(u64, u16), Cut>,
    watermarks: Vec<u64>,
    wakers: Vec<Activator>,
    durable: BTreeMap<u16, Option<Epoch>>,
    durable_wakers: Vec<Activator>,
    handoffs: HashMap<u16, Handoff>,
    spares: HashMap<u16, ExecutorHandle>,
    /// Planned faults.
    pub faults: Vec<Fault>,
    /// Faults already injected (anywhere, as far as this worker knows).
    pub fired: BTreeSet<usize>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("view", &self.view)
            .field("models", &self.models)
            .finish()
    }
}

impl Control {
    /// A table for `partitions` source partitions, with the initial placement of stateful models.
    pub fn new(partitions: usize, models: impl IntoIterator<Item = (u16, usize, usize)>, faults: Vec<Fault>) -> ControlRef {
        let models = models
            .into_iter()
            .map(|(m, primary, backup)| {
                (
                    m,
                    Placement {
                        inc: 0,
                        primary,
                        backup,
                        cuts: BTreeMap::new(),
                    },
                )
            })
            .collect();
        Rc::new(RefCell::new(Control {
            view: 0,
            partitions: partitions.max(1) as u64,
            models,
            recovers: BTreeMap::new(),
            cuts: BTreeMap::new(),
            watermarks: vec![0; partitions.max(1)],
            wakers: Vec::new(),
            durable: BTreeMap::new(),
            durable_wakers: Vec::new(),
            handoffs: HashMap::new(),
            spares: HashMap::new(),
            faults,
            fired: BTreeSet::new(),
        }))
    }

    /// Completed recoveries.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Placement of stateful `model`.
    ///
    /// # Panics
    /// If `model` is not a stateful model of the graph.
    pub fn placement(&self, model: u16) -> &Placement {
        self.models.get(&model).unwrap_or_else(|| unknown_model(model))
    }

    /// Every stateful model's placement.
    pub fn placements(&self) -> &BTreeMap<u16, Placement> {
        &self.models
    }

    /// The announced recovery that would create the next view, if any.
    pub fn next_recover(&self) -> Option<&Recover> {
        self.recovers.get(&(self.view + 1))
    }

    /// The next view change and the stateful models whose backups have not cut for it yet.
    pub fn awaited_cuts(&self) -> Option<(u64, Vec<u16>)> {
        let r = self.next_recover()?;
        let missing = r
            .roles
            .iter()
            .map(|ro| ro.model)
            .filter(|m| !self.cuts.contains_key(&(r.view, *m)))
            .collect();
        Some((r.view, missing))
    }

    /// True when the request `seq` has been released (it is under its partition's watermark).
    pub fn is_released(&self, seq: u64) -> bool {
        let (p, offset) = ((seq % self.partitions) as usize, seq / self.partitions);
        offset < self.watermarks[p]
    }

    /// Released watermark of each partition.
    pub fn watermarks(&self) -> &[u64] {
        &self.watermarks
    }

    /// Source partitions (= workers).
    pub fn partitions(&self) -> u64 {
        self.partitions
    }

    /// Wakes `activator` whenever the table changes.
    pub fn subscribe(&mut self, activator: Activator) {
        self.wakers.push(activator);
    }

    fn wake(&self) {
        for w in &self.wakers {
            w.activate();
        }
    }

    /// Wakes `activator` whenever a durable frontier advances.
    pub fn subscribe_durable(&mut self, activator: Activator) {
        self.durable_wakers.push(activator);
    }

    /// Records the durable frontier of `model` (`None`: empty, everything durable).
    pub fn set_durable(&mut self, model: u16, frontier: Option<Epoch>) {
        if self.durable.insert(model, frontier) != Some(frontier) {
            for w in &self.durable_wakers {
                w.activate();
            }
        }
    }

    /// True when every epoch up to and including `epoch` of `model` is held by its backup.
    pub fn durable_past(&self, model: u16, epoch: Epoch) -> bool {
        match self.durable.get(&model) {
            Some(Some(f)) => *f > epoch,
            Some(None) => true,
            None => false,
        }
    }

    /// Folds in a recovery announcement.
    pub fn on_recover(&mut self, r: Recover) {
        if r.view > self.view {
            self.fired.extend(r.fired.iter().copied());
            self.recovers.insert(r.view, r);
            self.advance();
            self.wake();
        }
    }

    /// Folds in a cut.
    pub fn on_cut(&mut self, c: Cut) {
        if c.view > self.view {
            self.cuts.insert((c.view, c.model), c);
            self.advance();
        }
    }

    /// Folds in a released watermark.
    pub fn on_watermark(&mut self, partition: u32, offset: u64) {
        let w = &mut self.watermarks[partition as usize];
        if offset > *w {
            *w = offset;
        }
    }

    /// Applies announced recoveries whose cuts have all arrived.
    fn advance(&mut self) {
        loop {
            let next = self.view + 1;
            let Some(r) = self.recovers.get(&next) else { break };
            if !r.roles.iter().all(|ro| self.cuts.contains_key(&(next, ro.model))) {
                break;
            }
            let r = self.recovers.remove(&next).expect("present");
            for ro in &r.roles {
                let cut = self.cuts.remove(&(next, ro.model)).expect("checked");
                let p = self.models.get_mut(&ro.model).unwrap_or_else(|| unknown_model(ro.model));
                p.cuts.insert(cut.inc, cut.epoch);
                p.inc = ro.inc;
                p.primary = ro.primary;
                p.backup = ro.backup;
            }
            self.view = next;
            tracing::info!(view = next, failed = r.failed, "view change applied");
            crate::metrics::metrics().phase(next, crate::metrics::Phase::ViewChanged, super::now_us());
            self.wake();
        }
    }

    /// Leaves a promoted backup's states for the new primary on this worker.
    pub fn put_handoff(&mut self, model: u16, h: Handoff) {
        self.handoffs.insert(model, h);
        self.wake();
    }

    /// Takes the hand-off for `model`, if the backup has left one.
    pub fn take_handoff(&mut self, model: u16) -> Option<Handoff> {
        self.handoffs.remove(&model)
    }

    /// Leaves a live executor of a demoted primary for the backup on this worker.
    pub fn put_spare(&mut self, model: u16, e: ExecutorHandle) {
        self.spares.insert(model, e);
        self.wake();
    }

    /// Takes a spare executor left for `model`.
    pub fn take_spare(&mut self, model: u16) -> Option<ExecutorHandle> {
        self.spares.remove(&model)
    }

    /// The planned faults that `role` of `model` should inject on seeing `seq` (not yet fired).
    pub fn due_faults(&self, model: u16, role: Role, seq: u64) -> Vec<usize> {
        self.faults
            .iter()
            .enumerate()
            .filter(|(i, f)| f.model == model && f.role == role && seq >= f.at && !self.fired.contains(i))
            .map(|(i, _)| i)
            .collect()
    }
}

#[cold]
fn unknown_model(model: u16) -> ! {
    panic!("node {model} is not a stateful model of this graph")
}

/// Whether `tag` is committed under the cuts known for its model, given the
/// model's durable frontier: `Some(true)` committed, `Some(false)` an orphan,
/// `None` not yet known.
///
/// `cuts` must come from the model's durable stream and `durable_past(e)` be
/// that stream's frontier having passed `e`: a cut at `f <= e` is sent at time
/// `f`, so it is known before the frontier passes `e`.
pub fn committed(cuts: &BTreeMap<u32, Epoch>, durable_past: impl Fn(Epoch) -> bool, inc: u32, epoch: Epoch) -> Option<bool> {
    if let Some(cut) = cuts.get(&inc) {
        return Some(epoch < *cut);
    }
    durable_past(epoch).then_some(true)
}

/// The value of a logged execution, as it flows downstream.
pub fn outcome_values(e: &Execution) -> Result<Values, ItemError> {
    e.outcome.clone().map(Values::F32)
}
