//! `Views`: folds the control records every worker must see — recoveries,
//! cuts and released watermarks — into the worker's control table.

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{Scope, Stream};

use super::control::{ControlRef, Cut, Recover};
use super::sink::Watermark;
use super::Epoch;

/// Keeps a worker's control table current.
pub trait Views<'scope> {
    /// Applies every worker's copy of `recovers`, the cuts on `durable` streams
    /// (and their frontiers) and `watermarks`.
    fn views(
        &self,
        recovers: Stream<'scope, Epoch, Vec<Recover>>,
        durable: Vec<(u16, Stream<'scope, Epoch, Vec<Cut>>)>,
        watermarks: Stream<'scope, Epoch, Vec<Watermark>>,
        control: ControlRef,
    );
}

impl<'scope> Views<'scope> for Scope<'scope, Epoch> {
    fn views(
        &self,
        recovers: Stream<'scope, Epoch, Vec<Recover>>,
        durable: Vec<(u16, Stream<'scope, Epoch, Vec<Cut>>)>,
        watermarks: Stream<'scope, Epoch, Vec<Watermark>>,
        control: ControlRef,
    ) {
        let mut builder = OperatorBuilder::new("Views".to_string(), *self);
        let mut rec_in = builder.new_input(recovers.broadcast(), Pipeline);
        let mut wm_in = builder.new_input(watermarks.broadcast(), Pipeline);
        let models: Vec<u16> = durable.iter().map(|(m, _)| *m).collect();
        let mut cut_in: Vec<_> = durable
            .into_iter()
            .map(|(_, s)| builder.new_input(s.broadcast(), Pipeline))
            .collect();
        builder.build(move |_| {
            move |frontiers| {
                // The durable frontiers, for operators that wait on them (stop-and-buffer).
                for (m, f) in models.iter().zip(&frontiers[2..]) {
                    control.borrow_mut().set_durable(*m, f.frontier().iter().min().copied());
                }
                // Cuts first: a recovery is applied once all its cuts are in.
                for input in cut_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            control.borrow_mut().on_cut(c);
                        }
                    });
                }
                rec_in.for_each(|_, data| {
                    for r in data.drain(..) {
                        control.borrow_mut().on_recover(r);
                    }
                });
                wm_in.for_each(|_, data| {
                    for w in data.drain(..) {
                        control.borrow_mut().on_watermark(w.partition, w.offset);
                    }
                });
            }
        });
    }
}
