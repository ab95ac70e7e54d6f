//! `Coordinate`: the recovery coordinator, on worker 0.
//!
//! Turns failure notices into numbered recoveries (views), one at a time,
//! so concurrent failures get a total order: each [`Recover`] names the
//! failed stateful model and every stateful model downstream of it (they may
//! have consumed its orphans), each with a new incarnation, its backup
//! promoted to primary, and a new backup placed on another process when
//! there is one.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::control::{Notice, Recover, Roles};
use super::Epoch;

/// What the coordinator knows of the graph and cluster.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// For each stateful model: itself and the stateful models downstream of it.
    pub affected: BTreeMap<u16, Vec<u16>>,
    /// Initial (primary, backup) worker of each stateful model.
    pub placement: BTreeMap<u16, (usize, usize)>,
    /// Worker threads per process (to tell processes apart).
    pub threads: usize,
    /// Total workers.
    pub workers: usize,
    /// Keep the backup beside the primary (checkpointing): recovery restarts in place.
    pub colocate: bool,
}

/// Fault injections and recoveries as worker 0 saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultLog {
    /// Injection time of each fired fault (µs since the Unix epoch).
    pub injected: BTreeMap<usize, u64>,
    /// Respawn time of stateless or spare executors hit by a fault.
    pub respawned: BTreeMap<usize, u64>,
    /// Recoveries: (view, failed model, incarnation it got, detection time).
    pub recoveries: Vec<(u64, u16, u32, u64)>,
    /// Peak memory of each executor process, MiB, reported as they shut down.
    pub executor_rss_mb: BTreeMap<String, f64>,
}

/// Coordinates recoveries.
pub trait Coordinate<'scope> {
    /// Gathers notices on worker 0 and emits one [`Recover`] per new failure.
    fn coordinate(self, config: CoordinatorConfig, log: Rc<RefCell<FaultLog>>) -> Stream<'scope, Epoch, Vec<Recover>>;
}

impl<'scope> Coordinate<'scope> for Stream<'scope, Epoch, Vec<Notice>> {
    fn coordinate(self, config: CoordinatorConfig, log: Rc<RefCell<FaultLog>>) -> Stream<'scope, Epoch, Vec<Recover>> {
        let mut roles: BTreeMap<u16, (u32, usize, usize)> = config.placement.iter().map(|(m, (p, b))| (*m, (0, *p, *b))).collect();
        let mut view = 0u64;
        let mut fired: BTreeSet<usize> = BTreeSet::new();
        self.unary(Exchange::new(|_: &Notice| 0), "Coordinate", move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for notice in data.flat_map(|d| d.drain(..)) {
                        match notice {
                            Notice::Injected { fault, at_us } => {
                                fired.insert(fault);
                                log.borrow_mut().injected.entry(fault).or_insert(at_us);
                            }
                            Notice::Memory { executor, mb } => {
                                let mut log = log.borrow_mut();
                                let peak = log.executor_rss_mb.entry(executor).or_insert(0.0);
                                *peak = peak.max(mb);
                            }
                            Notice::Respawned { fault, at_us } => {
                                log.borrow_mut().respawned.entry(fault).or_insert(at_us);
                            }
                            Notice::Failed { model, inc, reason, at_us } => {
                                let Some(&(current, _, _)) = roles.get(&model) else { continue };
                                if inc != current {
                                    continue; // Already recovered (a duplicate or an older incarnation).
                                }
                                view += 1;
                                let process = |w: usize| w / config.threads.max(1);
                                let mut new_roles = Vec::new();
                                for m in config.affected.get(&model).into_iter().flatten() {
                                    let (inc, primary, backup) = roles[m];
                                    let new_primary = backup;
                                    let new_backup = if config.colocate {
                                        new_primary
                                    } else if process(primary) != process(new_primary) {
                                        primary
                                    } else {
                                        // Same process: prefer a worker of another process, then another worker.
                                        (1..config.workers)
                                            .map(|k| (new_primary + k * config.threads.max(1)) % config.workers)
                                            .find(|w| process(*w) != process(new_primary))
                                            .unwrap_or(if primary != new_primary { primary } else { new_primary })
                                    };
                                    roles.insert(*m, (inc + 1, new_primary, new_backup));
                                    new_roles.push(Roles {
                                        model: *m,
                                        inc: inc + 1,
                                        primary: new_primary,
                                        backup: new_backup,
                                    });
                                }
                                tracing::warn!(view, model, inc, %reason, roles = ?new_roles, "recovering");
                                log.borrow_mut().recoveries.push((view, model, inc + 1, at_us));
                                session.give(Recover {
                                    view,
                                    failed: model,
                                    roles: new_roles,
                                    fired: fired.iter().copied().collect(),
                                });
                            }
                        }
                    }
                });
            }
        })
    }
}
