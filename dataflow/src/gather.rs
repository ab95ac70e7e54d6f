//! Exchanging small facts between all workers outside the main dataflow:
//! what each process's disk holds when a run starts (so every worker agrees
//! on how to resume), and each process's durable evidence when it ends (so
//! the run's own check covers a cluster whose hosts keep their own data).

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Exchange as _, Input as _, Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;
use timely::ExchangeData;

/// A one-shot exchange: every worker may send items; [`Gather::finish`]
/// returns what reached this worker.
pub(crate) struct Gather<T: ExchangeData + Clone> {
    input: InputHandleVec<u64, T>,
    probe: ProbeHandle<u64>,
    got: Rc<RefCell<Vec<T>>>,
}

/// Every worker's items reach worker 0 (`to_all: false`) or every worker.
pub(crate) fn build<T: ExchangeData + Clone>(worker: &mut Worker, to_all: bool) -> Gather<T> {
    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let items = scope.input_from(&mut input);
        let items = if to_all { items.broadcast() } else { items.exchange(|_: &T| 0) };
        // Probed after the inspection: done only once every item has arrived.
        items.inspect(move |x| sink.borrow_mut().push(x.clone())).probe_with(&probe);
    });
    Gather { input, probe, got }
}

impl<T: ExchangeData + Clone> Gather<T> {
    /// Sends `items` and waits until every worker has sent its own.
    pub(crate) fn finish(mut self, worker: &mut Worker, items: Vec<T>) -> Vec<T> {
        for i in items {
            self.input.send(i);
        }
        drop(self.input);
        while !self.probe.done() {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        std::mem::take(&mut self.got.borrow_mut())
    }
}
