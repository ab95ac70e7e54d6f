//! The output-commit rule (I2): a result leaves the sink only when every
//! stateful execution in its lineage is held by a backup.
//!
//! An execution `(model, inc, epoch)` is *committed* when the model's
//! durable frontier has passed `epoch` and no cut says otherwise, and an
//! *orphan* when incarnation `inc` was cut at or before `epoch` (its backup
//! never held it; the request is replayed). Cuts ride the durable stream at
//! their own epoch, so when the frontier passes an epoch every cut at or
//! before it is known: the rule never mistakes an orphan for committed.

use std::collections::{BTreeMap, BTreeSet};

use crate::frontier::Frontier;
use crate::ids::{Epoch, Incarnation, ModelId};
use crate::records::{Cut, LineageTag, OutputRecord};

/// Whether execution `(inc, epoch)` of a model is committed, given the cuts
/// known for the model and its durable frontier: `Some(true)` committed,
/// `Some(false)` an orphan, `None` not yet known.
///
/// # Examples
/// ```
/// use std::collections::BTreeMap;
/// use hams_protocol::{commit::committed, Epoch, Frontier, Incarnation};
/// let cuts = BTreeMap::from([(Incarnation(0), Epoch(10))]);
/// assert_eq!(committed(&cuts, Frontier::at(Epoch(3)), Incarnation(0), Epoch(7)), Some(true));
/// assert_eq!(committed(&cuts, Frontier::at(Epoch(3)), Incarnation(0), Epoch(12)), Some(false));
/// assert_eq!(committed(&cuts, Frontier::at(Epoch(3)), Incarnation(1), Epoch(12)), None);
/// ```
pub fn committed(cuts: &BTreeMap<Incarnation, Epoch>, durable: Frontier, inc: Incarnation, epoch: Epoch) -> Option<bool> {
    if let Some(cut) = cuts.get(&inc) {
        return Some(epoch < *cut);
    }
    durable.passed(epoch).then_some(true)
}

/// The fate of a held result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every execution it depends on is committed: release it.
    Release,
    /// It depends on an orphan: discard it (its request is replayed).
    Orphan,
    /// Not yet known.
    Wait,
}

/// The cuts a sink (or a backup, for its upstream models) has seen.
#[derive(Debug, Clone, Default)]
pub struct Cuts {
    cuts: BTreeMap<ModelId, BTreeMap<Incarnation, Epoch>>,
    /// Per model: executions of incarnations below this came from a disk
    /// image when the cluster restarted, so they are committed.
    floors: BTreeMap<ModelId, Incarnation>,
}

impl Cuts {
    /// Records a cut.
    pub fn on_cut(&mut self, c: &Cut) {
        self.cuts.entry(c.model).or_default().insert(c.inc, c.epoch);
    }

    /// Executions of `model` below incarnation `floor` are committed (see [`crate::restart`]).
    pub fn floor(&mut self, model: ModelId, floor: Incarnation) {
        self.floors.insert(model, floor);
    }

    fn below_floor(&self, t: &LineageTag) -> bool {
        self.floors.get(&t.model).is_some_and(|f| t.incarnation < *f)
    }

    /// The verdict on a result with `lineage`; `durable(m)` is model `m`'s
    /// durable frontier, `None` for models without a backup (their tags are
    /// not gated).
    pub fn verdict(&self, lineage: &[LineageTag], durable: impl Fn(ModelId) -> Option<Frontier>) -> Verdict {
        let empty = BTreeMap::new();
        let mut all = true;
        for t in lineage {
            if self.below_floor(t) {
                continue;
            }
            let Some(f) = durable(t.model) else { continue };
            match committed(self.cuts.get(&t.model).unwrap_or(&empty), f, t.incarnation, t.epoch) {
                Some(true) => {}
                Some(false) => return Verdict::Orphan,
                None => all = false,
            }
        }
        if all {
            Verdict::Release
        } else {
            Verdict::Wait
        }
    }

    /// True when `tag` is known to be an orphan (cut at or before its epoch).
    pub fn is_orphan(&self, tag: &LineageTag) -> bool {
        !self.below_floor(tag)
            && self
                .cuts
                .get(&tag.model)
                .and_then(|c| c.get(&tag.incarnation))
                .is_some_and(|cut| tag.epoch >= *cut)
    }
}

/// A result waiting at its sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// Epoch the result arrived at.
    pub epoch: Epoch,
    /// Offset of its request in the home partition.
    pub offset: u64,
    /// The result.
    pub record: OutputRecord,
}

/// What one decision round of a sink found.
#[derive(Debug, Default)]
pub struct Decided {
    /// Results to release now (made durable, then answered), in arrival order.
    pub release: Vec<Held>,
    /// Results discarded as orphans.
    pub orphans: u64,
    /// `(model, incarnation > 0)` pairs released for the first time (recovery caught up).
    pub first: Vec<(ModelId, Incarnation)>,
}

/// The sink's rule: hold results, release the committed, discard orphans.
#[derive(Debug, Default)]
pub struct Sink {
    held: Vec<Held>,
    /// Results held per epoch (the capabilities the shell keeps).
    epochs: BTreeMap<Epoch, usize>,
    cuts: Cuts,
    first_seen: BTreeSet<(ModelId, Incarnation)>,
}

impl Sink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A result arrives.
    pub fn hold(&mut self, h: Held) {
        *self.epochs.entry(h.epoch).or_default() += 1;
        self.held.push(h);
    }

    fn forget(&mut self, epoch: Epoch) {
        if let Some(n) = self.epochs.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                self.epochs.remove(&epoch);
            }
        }
    }

    /// A cut arrives on a durable stream.
    pub fn on_cut(&mut self, c: &Cut) {
        self.cuts.on_cut(c);
    }

    /// Executions of `model` below incarnation `floor` are committed (see [`crate::restart`]).
    pub fn floor(&mut self, model: ModelId, floor: Incarnation) {
        self.cuts.floor(model, floor);
    }

    /// Decides every held result against the durable frontiers.
    pub fn decide(&mut self, durable: impl Fn(ModelId) -> Option<Frontier>) -> Decided {
        let mut d = Decided::default();
        if self.held.is_empty() {
            return d;
        }
        let mut keep = Vec::with_capacity(self.held.len());
        let mut gone = Vec::new();
        for h in std::mem::take(&mut self.held) {
            match self.cuts.verdict(&h.record.lineage, &durable) {
                Verdict::Release => {
                    gone.push(h.epoch);
                    d.release.push(h);
                }
                Verdict::Orphan => {
                    gone.push(h.epoch);
                    d.orphans += 1;
                }
                Verdict::Wait => keep.push(h),
            }
        }
        self.held = keep;
        for e in gone {
            self.forget(e);
        }
        for h in &d.release {
            for t in &h.record.lineage {
                if t.incarnation.0 > 0 && self.first_seen.insert((t.model, t.incarnation)) {
                    d.first.push((t.model, t.incarnation));
                }
            }
        }
        d
    }

    /// Puts back results whose release could not be made durable (retried next round).
    pub fn requeue(&mut self, results: Vec<Held>) {
        for h in results {
            self.hold(h);
        }
    }

    /// Results still held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Epochs the sink still needs capabilities for.
    pub fn holds(&self) -> BTreeSet<Epoch> {
        self.epochs.keys().copied().collect()
    }

    /// Whether the sink holds `epoch`.
    pub fn holds_at(&self, epoch: Epoch) -> bool {
        self.epochs.contains_key(&epoch)
    }
}
