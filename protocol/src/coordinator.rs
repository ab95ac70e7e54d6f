//! The coordinator: turns failure reports into numbered view changes.
//!
//! One coordinator (on worker 0) gives concurrent failures a total order.
//! A report names a model and the incarnation that failed; a report for an
//! incarnation already replaced is a duplicate and ignored. Each new
//! failure becomes a [`Recover`] for the next view: the failed model and
//! every stateful model downstream of it (they may have consumed its
//! orphans) get a new incarnation, their backups become primaries, and each
//! gets a new backup on another process when there is one.

use std::collections::BTreeMap;

use crate::ids::{Incarnation, ModelId, View, WorkerId};
use crate::records::{Failed, Recover, Roles};

/// What the coordinator knows of the graph and cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    /// For each stateful model: itself and the stateful models downstream of it.
    pub affected: BTreeMap<ModelId, Vec<ModelId>>,
    /// Initial (primary, backup) worker of each stateful model.
    pub placement: BTreeMap<ModelId, (WorkerId, WorkerId)>,
    /// Worker threads per process (to tell processes apart).
    pub threads: usize,
    /// Total workers.
    pub workers: usize,
    /// Keep the backup beside the primary (checkpointing): recovery restarts in place.
    pub colocate: bool,
}

impl Topology {
    /// The initial roles: `placement` at incarnation 0, or as a restart's
    /// plan says (see [`crate::restart`]).
    pub fn starting(&self, starts: &BTreeMap<ModelId, crate::restart::Start>) -> BTreeMap<ModelId, (Incarnation, WorkerId, WorkerId)> {
        self.placement
            .iter()
            .map(|(m, (p, b))| match starts.get(m) {
                Some(s) => (*m, (s.inc, s.primary, s.backup)),
                None => (*m, (Incarnation(0), *p, *b)),
            })
            .collect()
    }
}

/// The coordinator's state.
#[derive(Debug, Clone)]
pub struct Coordinator {
    topology: Topology,
    roles: BTreeMap<ModelId, (Incarnation, WorkerId, WorkerId)>,
    view: View,
}

impl Coordinator {
    /// A coordinator at view 0, with each model's roles as `starts` says
    /// (a restart) or at incarnation 0 where the topology puts it.
    pub fn new(topology: Topology, starts: &BTreeMap<ModelId, crate::restart::Start>) -> Self {
        let roles = topology.starting(starts);
        Coordinator {
            topology,
            roles,
            view: View(0),
        }
    }

    /// The last view announced.
    pub fn view(&self) -> View {
        self.view
    }

    /// A failure report: the next view change, or `None` for a duplicate.
    pub fn on_failed(&mut self, f: &Failed) -> Option<Recover> {
        let &(current, _, _) = self.roles.get(&f.model)?;
        if f.inc != current {
            return None; // Already recovered (a duplicate or an older incarnation).
        }
        self.view = self.view.next();
        let t = &self.topology;
        let threads = t.threads.max(1);
        let process = |w: WorkerId| w.0 / threads;
        let mut roles = Vec::new();
        for m in t.affected.get(&f.model).into_iter().flatten() {
            let (inc, primary, backup) = self.roles[m];
            let new_primary = backup;
            let new_backup = if t.colocate {
                new_primary
            } else if process(primary) != process(new_primary) {
                primary
            } else {
                // Same process: prefer a worker of another process, then another worker.
                (1..t.workers)
                    .map(|k| WorkerId((new_primary.0 + k * threads) % t.workers))
                    .find(|w| process(*w) != process(new_primary))
                    .unwrap_or(if primary != new_primary { primary } else { new_primary })
            };
            self.roles.insert(*m, (inc.next(), new_primary, new_backup));
            roles.push(Roles {
                model: *m,
                inc: inc.next(),
                primary: new_primary,
                backup: new_backup,
            });
        }
        Some(Recover {
            view: self.view,
            failed: f.model,
            roles,
        })
    }
}
