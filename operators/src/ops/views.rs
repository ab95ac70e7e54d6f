//! `Views`: folds what every worker must see — recoveries, cuts, durable
//! frontiers, released watermarks and fired faults — into the worker's
//! control state, and wakes whoever it concerns.

use std::cell::RefCell;
use std::rc::Rc;

use hams_protocol::records::{Cut, Recover};
use hams_protocol::ModelId;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{Scope, Stream};

use super::control::ControlRef;
use super::sink::Watermark;
use super::telemetry::FaultLog;
use super::telemetry::Telemetry;
use super::{frontier, now_us, Time};

/// Keeps a worker's control state current.
pub trait Views<'scope> {
    /// Applies every worker's copy of `recovers`, the cuts on `durable`
    /// streams (and their frontiers), `watermarks`, and `telemetry` (fired
    /// faults; on worker 0 also into `log`).
    fn views(
        &self,
        recovers: Stream<'scope, Time, Vec<Recover>>,
        durable: Vec<(u16, Stream<'scope, Time, Vec<Cut>>)>,
        watermarks: Stream<'scope, Time, Vec<Watermark>>,
        telemetry: Stream<'scope, Time, Vec<Telemetry>>,
        control: ControlRef,
        log: Rc<RefCell<FaultLog>>,
    );
}

impl<'scope> Views<'scope> for Scope<'scope, Time> {
    fn views(
        &self,
        recovers: Stream<'scope, Time, Vec<Recover>>,
        durable: Vec<(u16, Stream<'scope, Time, Vec<Cut>>)>,
        watermarks: Stream<'scope, Time, Vec<Watermark>>,
        telemetry: Stream<'scope, Time, Vec<Telemetry>>,
        control: ControlRef,
        log: Rc<RefCell<FaultLog>>,
    ) {
        let mut builder = OperatorBuilder::new("Views".to_string(), *self);
        let mut rec_in = builder.new_input(recovers.broadcast(), Pipeline);
        let mut wm_in = builder.new_input(watermarks.broadcast(), Pipeline);
        let mut tele_in = builder.new_input(telemetry.broadcast(), Pipeline);
        let models: Vec<ModelId> = durable.iter().map(|(m, _)| ModelId(*m)).collect();
        let mut cut_in: Vec<_> = durable
            .into_iter()
            .map(|(_, s)| builder.new_input(s.broadcast(), Pipeline))
            .collect();
        let me = self.index();
        builder.build(move |_| {
            move |frontiers| {
                let mut ctl = control.borrow_mut();
                // The durable frontiers, for operators that wait on them (stop-and-buffer).
                let mut moved = false;
                for (m, f) in models.iter().zip(&frontiers[3..]) {
                    moved |= ctl.table.set_durable(*m, frontier(f));
                }
                if moved {
                    ctl.wake_durable();
                }
                // Cuts first: a recovery is applied once all its cuts are in.
                let mut news = false;
                for input in cut_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            ctl.table.on_cut(c);
                        }
                    });
                }
                rec_in.for_each(|_, data| {
                    for r in data.drain(..) {
                        news |= ctl.table.on_recover(r);
                    }
                });
                wm_in.for_each(|_, data| {
                    for w in data.drain(..) {
                        ctl.table.on_watermark(w.partition, w.offset);
                    }
                });
                tele_in.for_each(|_, data| {
                    for t in data.drain(..) {
                        if let Telemetry::Injected { fault, .. } = t {
                            ctl.faults.fired.insert(fault);
                        }
                        if me != 0 {
                            continue;
                        }
                        let mut log = log.borrow_mut();
                        match t {
                            Telemetry::Injected { fault, at_us, inc } => {
                                log.injected.entry(fault).or_insert((at_us, inc));
                            }
                            Telemetry::Respawned { fault, at_us } => {
                                log.respawned.entry(fault).or_insert(at_us);
                            }
                            Telemetry::Memory { executor, mb } => {
                                let peak = log.executor_rss_mb.entry(executor).or_insert(0.0);
                                *peak = peak.max(mb);
                            }
                        }
                    }
                });
                for r in ctl.table.advance() {
                    tracing::info!(view = %r.view, failed = %r.failed, "view change applied");
                    crate::metrics::metrics().phase(r.view.0, crate::metrics::Phase::ViewChanged, now_us());
                    news = true;
                }
                if news {
                    crate::ops::answers::holding(ctl.table.next_recover().is_some(), now_us());
                    ctl.wake();
                }
            }
        });
    }
}
