//! The fan-in of a node with several inputs: parts joined by request `seq`.
//!
//! Why not differential's `join`: its arrangements keep every input until it
//! is retracted, and a fan-in needs each pair only once, as soon as the last
//! part arrives, then never again. This emits a joined request the moment
//! its last part arrives and forgets it, so memory is bounded by the
//! requests in flight.

use std::collections::{BTreeSet, HashMap};

use crate::flow::{view_check, Envelope, ViewCheck};
use crate::frontier::Frontier;
use crate::ids::{Epoch, Seq, View};
use crate::records::Values;

#[derive(Debug)]
struct Partial {
    epoch: Epoch,
    view: View,
    parts: Vec<Option<Envelope>>,
    missing: usize,
}

/// One worker's join of `n` inputs.
#[derive(Debug)]
pub struct JoinCore {
    n: usize,
    partial: HashMap<Seq, Partial>,
    /// Parts of a view this worker has not reached yet.
    early: Vec<(usize, Epoch, Envelope)>,
    seen_view: View,
    /// Parts held per epoch, recounted after each step.
    epochs: std::collections::BTreeMap<Epoch, usize>,
}

impl JoinCore {
    /// A join of `inputs` streams.
    pub fn new(inputs: usize) -> Self {
        JoinCore {
            n: inputs,
            partial: HashMap::new(),
            early: Vec::new(),
            seen_view: View(0),
            epochs: std::collections::BTreeMap::new(),
        }
    }

    /// Folds in parts that arrived (`(input, epoch, part)`) under the worker's
    /// current `view`; returns joined requests, each at the epoch of its latest part.
    pub fn step(&mut self, view: View, arrived: Vec<(usize, Epoch, Envelope)>, frontiers: &[Frontier]) -> Vec<(Epoch, Envelope)> {
        if view > self.seen_view {
            // Parts of older views will be replayed; forget them.
            self.seen_view = view;
            self.partial.retain(|_, p| p.view >= view);
        }
        let mut out = Vec::new();
        let mut all = std::mem::take(&mut self.early);
        all.extend(arrived);
        for (i, epoch, env) in all {
            match view_check(env.meta.view, view) {
                ViewCheck::Stale => continue,
                ViewCheck::Early => {
                    self.early.push((i, epoch, env));
                    continue;
                }
                ViewCheck::Current => {}
            }
            let seq = env.meta.seq;
            let n = self.n;
            let p = self.partial.entry(seq).or_insert_with(|| Partial {
                epoch,
                view,
                parts: vec![None; n],
                missing: n,
            });
            p.epoch = p.epoch.max(epoch);
            if p.parts[i].replace(env).is_none() {
                p.missing -= 1;
            }
            if p.missing == 0 {
                let p = self.partial.remove(&seq).expect("present");
                out.push((p.epoch, concat(p.parts)));
            }
        }
        if !self.partial.is_empty() {
            // A part that will never come (its request failed upstream and went to the sink).
            self.partial.retain(|_, p| frontiers.iter().any(|f| !f.passed(p.epoch)));
        }
        self.epochs.clear();
        for e in self.partial.values().map(|p| p.epoch).chain(self.early.iter().map(|(_, e, _)| *e)) {
            *self.epochs.entry(e).or_default() += 1;
        }
        out
    }

    /// The least epoch held (what [`Self::holds`] gives, without allocating).
    pub fn hold_frontier(&self) -> Frontier {
        Frontier::of(self.partial.values().map(|p| p.epoch).chain(self.early.iter().map(|(_, e, _)| *e)))
    }

    /// Whether the join holds `epoch`.
    pub fn holds_at(&self, epoch: Epoch) -> bool {
        self.epochs.contains_key(&epoch)
    }

    /// Epochs the join needs capabilities for.
    pub fn holds(&self) -> BTreeSet<Epoch> {
        self.partial
            .values()
            .map(|p| p.epoch)
            .chain(self.early.iter().map(|(_, e, _)| *e))
            .collect()
    }
}

/// The parts' values, concatenated in input order, with their lineages united.
pub fn concat(parts: Vec<Option<Envelope>>) -> Envelope {
    let mut parts = parts.into_iter().map(|p| p.expect("complete"));
    let mut first = parts.next().expect("at least one input");
    let mut values = match std::mem::replace(&mut first.values, Values::F32(Vec::new())) {
        Values::F32(v) => v,
        Values::Tokens(t) => t.into_iter().map(|x| x as f32).collect(),
    };
    for p in parts {
        match p.values {
            Values::F32(v) => values.extend(v),
            Values::Tokens(t) => values.extend(t.into_iter().map(|x| x as f32)),
        }
        first.lineage.extend(p.lineage);
    }
    first.lineage.sort();
    first.lineage.dedup();
    first.values = Values::F32(values);
    first
}
