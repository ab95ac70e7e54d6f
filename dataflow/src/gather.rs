//! Gathering every process's durable evidence at worker 0 when a run ends,
//! so the run's own check covers a cluster whose processes keep their data
//! directories on different hosts.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Input as _, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use crate::verify::StoreEvidence;

/// The gathering dataflow of one worker.
pub(crate) struct Gather {
    input: InputHandleVec<u64, StoreEvidence>,
    probe: ProbeHandle<u64>,
    got: Rc<RefCell<Vec<StoreEvidence>>>,
}

/// Builds it (every worker, in the same order as the run's dataflow).
pub(crate) fn build(worker: &mut Worker) -> Gather {
    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        scope
            .input_from(&mut input)
            .probe_with(&probe)
            .sink(Exchange::new(|_: &StoreEvidence| 0), "GatherEvidence", move |(input, _)| {
                input.for_each(|_, data| sink.borrow_mut().append(data));
            });
    });
    Gather { input, probe, got }
}

impl Gather {
    /// Sends this worker's `evidence` (one worker per process sends its
    /// database's) and waits until every worker has; worker 0 returns all of it.
    pub(crate) fn finish(mut self, worker: &mut Worker, evidence: Option<StoreEvidence>) -> Vec<StoreEvidence> {
        if let Some(e) = evidence {
            self.input.send(e);
        }
        drop(self.input);
        while !self.probe.done() {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        std::mem::take(&mut self.got.borrow_mut())
    }
}
