//! `Coordinate`: the recovery coordinator on worker 0, the shell around
//! [`Coordinator`]: failure reports in, one [`Recover`] per new failure out.

use std::cell::RefCell;
use std::rc::Rc;

use hams_protocol::coordinator::Coordinator;
use hams_protocol::records::{Failed, Recover};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::telemetry::FaultLog;
use super::{now_us, Time};

pub use hams_protocol::coordinator::Topology;

/// Coordinates recoveries.
pub trait Coordinate<'scope> {
    /// Gathers failure reports on worker 0 and emits one [`Recover`] per new failure.
    fn coordinate(self, coordinator: Coordinator, log: Rc<RefCell<FaultLog>>) -> Stream<'scope, Time, Vec<Recover>>;
}

impl<'scope> Coordinate<'scope> for Stream<'scope, Time, Vec<Failed>> {
    fn coordinate(self, mut coordinator: Coordinator, log: Rc<RefCell<FaultLog>>) -> Stream<'scope, Time, Vec<Recover>> {
        self.unary(Exchange::new(|_: &Failed| 0), "Coordinate", move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for f in data.flat_map(|d| d.drain(..)) {
                        let Some(r) = coordinator.on_failed(&f) else { continue };
                        tracing::warn!(view = %r.view, model = %f.model, inc = %f.inc, reason = %f.reason, roles = ?r.roles, "recovering");
                        let now = now_us();
                        log.borrow_mut()
                            .recoveries
                            .extend(r.roles.iter().map(|ro| (r.view.0, ro.model.0, ro.inc.0, now)));
                        session.give(r);
                    }
                });
            }
        })
    }
}
