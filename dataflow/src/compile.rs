//! Compiling a [`Graph`] into one worker's timely dataflow.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use hams_operators::executor::process::{self, Launch};
use hams_operators::executor::{inproc, ExecutorHandle};
use hams_operators::ops::infer::{Infer, InferConfig};
use hams_operators::ops::join::JoinBySeq;
use hams_operators::ops::sink::{Release, SinkConfig, SinkStats};
use hams_operators::ops::{Envelope, Epoch, Failure, Route};
use hams_storage::Store;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Concatenate, Input as _, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, Stream};
use timely::worker::Worker;

use crate::error::Result;
use crate::graph::{Graph, Input};
use crate::placement::Placement;
use crate::summary::Totals;

/// How executors are hosted.
#[derive(Debug, Clone)]
pub enum Executors {
    /// One OS process per replica (isolation; SIGKILL-able).
    Process(Launch),
    /// Threads of the worker process (no isolation).
    InProcess,
}

/// Everything a worker needs to build its dataflow.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub graph: Graph,
    pub placement: Placement,
    pub executors: Executors,
    pub noise: f32,
    pub sync: bool,
}

/// A built dataflow's handles.
pub(crate) struct Handles {
    pub ok_in: InputHandleVec<Epoch, Envelope>,
    pub err_in: InputHandleVec<Epoch, Failure>,
    pub probe: ProbeHandle<Epoch>,
    pub totals: Rc<RefCell<Totals>>,
}

fn spawn(plan: &Plan, node: usize, replica: &str) -> Result<ExecutorHandle> {
    let mut spec = plan.graph.nodes[node].spec.clone();
    spec.noise = plan.noise;
    Ok(match &plan.executors {
        Executors::Process(launch) => process::spawn(&spec, replica, launch)?,
        Executors::InProcess => inproc::spawn(&spec, replica),
    })
}

/// The stream feeding a node: its one input, or the join of several by `seq`.
fn gather<'s>(
    scope: timely::dataflow::Scope<'s, Epoch>,
    source: &Stream<'s, Epoch, Vec<Envelope>>,
    inputs: &[Input],
    outputs: &[Stream<'s, Epoch, Vec<Envelope>>],
    route: Route,
) -> Stream<'s, Epoch, Vec<Envelope>> {
    let mut streams: Vec<_> = inputs
        .iter()
        .map(|i| match i {
            Input::Source => source.clone(),
            Input::Node(j) => outputs[*j].clone(),
        })
        .collect();
    if streams.len() == 1 {
        streams.pop().expect("one")
    } else {
        scope.join_by_seq(streams, route)
    }
}

/// Builds the dataflow of `plan` on `worker`, spawning the executors it hosts.
pub(crate) fn build(worker: &mut Worker, plan: &Plan, store: Arc<Store>) -> Result<Handles> {
    let index = worker.index();
    let mut ok_in = InputHandleVec::new();
    let mut err_in = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let totals = Rc::new(RefCell::new(Totals::default()));
    let sink_totals = totals.clone();
    worker.dataflow::<Epoch, _, _>(|scope| -> Result<()> {
        let source = scope.input_from(&mut ok_in);
        let mut failures = vec![scope.input_from(&mut err_in)];
        let mut outputs: Vec<Stream<'_, Epoch, Vec<Envelope>>> = Vec::with_capacity(plan.graph.nodes.len());
        for (i, (node, place)) in plan.graph.nodes.iter().zip(&plan.placement.nodes).enumerate() {
            let input = gather(scope, &source, &node.inputs, &outputs, place.route.clone());
            let executor = match place.hosts.iter().position(|h| *h == index) {
                Some(0) => Some(spawn(plan, i, "primary")?),
                Some(k) => Some(spawn(plan, i, &format!("replica{k}"))?),
                None => None,
            };
            let config = InferConfig {
                node: node.spec.name.clone(),
                index: node.index,
                route: place.route.clone(),
                stateful: node.spec.is_stateful(),
                max_batch: node.batch,
            };
            let (ok, err) = input.infer(config, executor);
            outputs.push(ok);
            failures.push(err);
        }
        let results = gather(scope, &source, &plan.graph.sink, &outputs, Route::Home);
        let failures = scope.concatenate(failures);
        let sink = SinkConfig {
            store,
            partition: index as u32,
            sync: plan.sync,
        };
        results.release(failures, sink)?.probe_with(&probe).sink(
            Exchange::new(|_: &SinkStats| 0),
            "CollectStats",
            move |(input, _frontier)| {
                input.for_each(|_, data| {
                    let mut t = sink_totals.borrow_mut();
                    for s in data.drain(..) {
                        t.add(s);
                    }
                });
            },
        );
        Ok(())
    })?;
    Ok(Handles {
        ok_in,
        err_in,
        probe,
        totals,
    })
}
