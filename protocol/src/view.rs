//! The view table: the control state one worker holds and every operator on
//! that worker reads.
//!
//! A *view* counts the recoveries a worker has applied. The coordinator
//! announces view `v + 1` as a [`Recover`]; a worker applies it only once
//! every affected model's backup has cut for it (the [`Cut`]s arrive on the
//! models' durable streams), so all workers switch placements at the same
//! logical point. The table also carries the released watermarks (which
//! bound every log), the durable frontiers, and the two hand-offs between
//! operators of one worker: a cut backup's image for the new primary, and a
//! demoted primary's live executor for the new backup.

use std::collections::{BTreeMap, HashMap};

use crate::frontier::Frontier;
use crate::ids::{Epoch, ExecId, Incarnation, ModelId, Seq, SessionId, View, WorkerId};
use crate::records::{Cut, Execution, Recover, SessionState};

/// Where a stateful model's replicas are, in the current view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Incarnation of the primary.
    pub inc: Incarnation,
    /// Worker of the primary.
    pub primary: WorkerId,
    /// Worker of the backup.
    pub backup: WorkerId,
    /// Cut epoch of each earlier incarnation.
    pub cuts: BTreeMap<Incarnation, Epoch>,
}

/// The roles of a stateful model in the current view, without its cut history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Incarnation of the primary.
    pub inc: Incarnation,
    /// Worker of the primary.
    pub primary: WorkerId,
    /// Worker of the backup.
    pub backup: WorkerId,
}

/// A promoted backup's image, handed to the primary on the same worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    /// The backup's warm spare executor, now the primary's.
    pub executor: Option<ExecId>,
    /// Session states at the cut.
    pub states: Vec<(SessionId, SessionState)>,
    /// Held executions (answered from the log instead of re-executed).
    pub executions: Vec<Execution>,
}

/// One worker's control table.
#[derive(Debug, Clone)]
pub struct ViewTable {
    view: View,
    partitions: u64,
    models: BTreeMap<ModelId, Placement>,
    recovers: BTreeMap<View, Recover>,
    cuts: BTreeMap<(View, ModelId), Cut>,
    watermarks: Vec<u64>,
    durable: BTreeMap<ModelId, Frontier>,
    handoffs: HashMap<ModelId, Handoff>,
    spares: HashMap<ModelId, ExecId>,
    next_exec: u64,
}

impl ViewTable {
    /// A table for `partitions` source partitions and the initial
    /// `(model, primary, backup)` placement of every stateful model.
    pub fn new(partitions: usize, models: impl IntoIterator<Item = (ModelId, WorkerId, WorkerId)>) -> Self {
        let models = models
            .into_iter()
            .map(|(m, primary, backup)| {
                let p = Placement {
                    inc: Incarnation(0),
                    primary,
                    backup,
                    cuts: BTreeMap::new(),
                };
                (m, p)
            })
            .collect();
        ViewTable {
            view: View(0),
            partitions: partitions.max(1) as u64,
            models,
            recovers: BTreeMap::new(),
            cuts: BTreeMap::new(),
            watermarks: vec![0; partitions.max(1)],
            durable: BTreeMap::new(),
            handoffs: HashMap::new(),
            spares: HashMap::new(),
            next_exec: 0,
        }
    }

    /// Starts `model` at `inc` with the given workers (a restart, see [`crate::restart`]).
    pub fn start_at(&mut self, model: ModelId, inc: Incarnation, primary: WorkerId, backup: WorkerId) {
        let p = self.models.get_mut(&model).unwrap_or_else(|| unknown_model(model));
        (p.inc, p.primary, p.backup) = (inc, primary, backup);
    }

    /// Views applied so far.
    pub fn view(&self) -> View {
        self.view
    }

    /// Placement of stateful `model`.
    ///
    /// # Panics
    /// If `model` is not a stateful model of the graph.
    pub fn placement(&self, model: ModelId) -> &Placement {
        self.try_placement(model).unwrap_or_else(|| unknown_model(model))
    }

    /// The current roles of stateful `model` (a cheap copy of its placement).
    ///
    /// # Panics
    /// If `model` is not a stateful model of the graph.
    pub fn roles(&self, model: ModelId) -> Placed {
        let p = self.placement(model);
        Placed {
            inc: p.inc,
            primary: p.primary,
            backup: p.backup,
        }
    }

    /// Placement of `model`, if it is a stateful model of the graph.
    pub fn try_placement(&self, model: ModelId) -> Option<&Placement> {
        self.models.get(&model)
    }

    /// Every stateful model's placement.
    pub fn placements(&self) -> &BTreeMap<ModelId, Placement> {
        &self.models
    }

    /// The announced recovery that would create the next view, if any.
    pub fn next_recover(&self) -> Option<&Recover> {
        self.recovers.get(&self.view.next())
    }

    /// The next view and the models whose backups have not cut for it yet.
    pub fn awaited_cuts(&self) -> Option<(View, Vec<ModelId>)> {
        let r = self.next_recover()?;
        let missing = r
            .roles
            .iter()
            .map(|ro| ro.model)
            .filter(|m| !self.cuts.contains_key(&(r.view, *m)))
            .collect();
        Some((r.view, missing))
    }

    /// True when request `seq` has been released (it is under its partition's watermark).
    pub fn is_released(&self, seq: Seq) -> bool {
        let (p, offset) = ((seq.0 % self.partitions) as usize, seq.0 / self.partitions);
        offset < self.watermarks[p]
    }

    /// Released watermark of each partition.
    pub fn watermarks(&self) -> &[u64] {
        &self.watermarks
    }

    /// Every `seq` below this is released.
    pub fn released_below(&self) -> Seq {
        Seq(self.watermarks.iter().min().copied().unwrap_or(0) * self.partitions)
    }

    /// Source partitions (= workers).
    pub fn partitions(&self) -> u64 {
        self.partitions
    }

    /// Records the durable frontier of `model`; true if it moved.
    pub fn set_durable(&mut self, model: ModelId, frontier: Frontier) -> bool {
        self.durable.insert(model, frontier) != Some(frontier)
    }

    /// True when every epoch up to and including `epoch` of `model` is held by its backup.
    pub fn durable_past(&self, model: ModelId, epoch: Epoch) -> bool {
        self.durable.get(&model).is_some_and(|f| f.passed(epoch))
    }

    /// Folds in a recovery announcement; true if it is news.
    pub fn on_recover(&mut self, r: Recover) -> bool {
        if r.view <= self.view || self.recovers.contains_key(&r.view) {
            return false;
        }
        self.recovers.insert(r.view, r);
        true
    }

    /// Folds in a cut.
    pub fn on_cut(&mut self, c: Cut) {
        if c.view > self.view {
            self.cuts.insert((c.view, c.model), c);
        }
    }

    /// Folds in a released watermark.
    pub fn on_watermark(&mut self, partition: u32, offset: u64) {
        if let Some(w) = self.watermarks.get_mut(partition as usize) {
            *w = (*w).max(offset);
        }
    }

    /// Applies announced recoveries whose cuts have all arrived; returns the
    /// recoveries applied, in order.
    pub fn advance(&mut self) -> Vec<Recover> {
        let mut applied = Vec::new();
        loop {
            let next = self.view.next();
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
            applied.push(r);
        }
        applied
    }

    /// Leaves a cut backup's image for the new primary on this worker.
    pub fn put_handoff(&mut self, model: ModelId, h: Handoff) {
        self.handoffs.insert(model, h);
    }

    /// Takes the hand-off for `model`, if the backup has left one.
    pub fn take_handoff(&mut self, model: ModelId) -> Option<Handoff> {
        self.handoffs.remove(&model)
    }

    /// Leaves a live executor of a demoted primary for the backup on this worker.
    pub fn put_spare(&mut self, model: ModelId, e: ExecId) {
        self.spares.insert(model, e);
    }

    /// Takes a spare executor left for `model`.
    pub fn take_spare(&mut self, model: ModelId) -> Option<ExecId> {
        self.spares.remove(&model)
    }

    /// A fresh executor id for this worker.
    pub fn new_exec(&mut self) -> ExecId {
        self.next_exec += 1;
        ExecId(self.next_exec)
    }

    /// Executors left in hand-offs and spares (owned by no operator right now).
    pub fn parked_executors(&self) -> impl Iterator<Item = ExecId> + '_ {
        self.handoffs
            .values()
            .filter_map(|h| h.executor)
            .chain(self.spares.values().copied())
    }
}

#[cold]
fn unknown_model(model: ModelId) -> ! {
    panic!("node {model} is not a stateful model of this graph")
}
