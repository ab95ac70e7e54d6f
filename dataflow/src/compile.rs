//! Compiling a [`Graph`] into one worker's timely dataflow.
//!
//! Data path: source → `Infer` per node (`JoinBySeq` before nodes with
//! several inputs) → `Release` at each request's home worker. Fault
//! tolerance: each stateful node's deltas feed a `Backup`, whose output
//! frontier is that model's durable frontier; the sink and the downstream
//! backups read it. Notices go to the `Coordinate` operator on worker 0; its
//! recoveries, the cuts and the released watermarks reach every worker's
//! control table through `Views`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hams_operators::executor::process::{self, Launch};
use hams_operators::executor::{inproc, ExecutorHandle};
use hams_operators::ops::backup::{Backup, BackupConfig, Cadence, CoreConfig as BackupCore};
use hams_operators::ops::control::{Control, ControlRef};
use hams_operators::ops::coordinate::{Coordinate, Topology};
use hams_operators::ops::faults::Fault;
use hams_operators::ops::infer::{CoreConfig as InferCore, Infer, InferConfig, Spawn};
use hams_operators::ops::join::JoinBySeq;
use hams_operators::ops::sink::{Release, SinkConfig};
use hams_operators::ops::telemetry::{FaultLog, SinkStats};
use hams_operators::ops::views::Views;
use hams_operators::ops::{Envelope, Failure, Route, Time};
use hams_protocol::health::Deadlines;
use hams_protocol::records::Cut;
use hams_protocol::{ModelId, WorkerId};
use hams_storage::backup::BackupWriter;
use hams_storage::{Released, Store};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Concatenate, Input as _, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, Stream};
use timely::worker::Worker;

use crate::error::Result;
use crate::graph::{Graph, Input};
use crate::mode::Mode;
use crate::placement::Placement;
use crate::resume::Resume;
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
    pub faults: Vec<Fault>,
    pub deadline: Duration,
    pub lineage_retention: u64,
    pub backup_delay: Duration,
    pub retain_outputs: u64,
    pub mode: Mode,
    pub checkpoint_every: Duration,
    /// Per home partition: output records from here on are not yet published to Kafka.
    pub keep_outputs_from: BTreeMap<u32, Arc<std::sync::atomic::AtomicU64>>,
}

impl Plan {
    /// (primary, backup) workers of stateful node `i`; the checkpointer sits beside the primary.
    fn replicas(&self, i: usize) -> (usize, usize) {
        let p = &self.placement.nodes[i];
        let primary = p.hosts[0];
        match self.mode {
            Mode::Checkpoint => (primary, primary),
            _ => (primary, p.backup.expect("stateful nodes have a backup")),
        }
    }
}

/// A built dataflow's handles.
pub(crate) struct Handles {
    pub ok_in: InputHandleVec<Time, Envelope>,
    pub err_in: InputHandleVec<Time, Failure>,
    pub probe: ProbeHandle<Time>,
    pub totals: Rc<RefCell<Totals>>,
    pub control: ControlRef,
    pub released: Rc<RefCell<Released>>,
    pub faults: Rc<RefCell<FaultLog>>,
}

fn spawner(plan: &Arc<Plan>, node: usize) -> Spawn {
    let plan = plan.clone();
    Rc::new(move |replica: &str| -> hams_operators::Result<ExecutorHandle> {
        let mut spec = plan.graph.nodes[node].spec.clone();
        spec.noise = plan.noise;
        Ok(match &plan.executors {
            Executors::Process(launch) => process::spawn(&spec, replica, launch)?,
            Executors::InProcess => inproc::spawn(&spec, replica),
        })
    })
}

/// The stream feeding a node: its one input, or the join of several by `seq`.
fn gather<'s>(
    scope: timely::dataflow::Scope<'s, Time>,
    source: &Stream<'s, Time, Vec<Envelope>>,
    inputs: &[Input],
    outputs: &[Stream<'s, Time, Vec<Envelope>>],
    route: Route,
    control: &ControlRef,
) -> Stream<'s, Time, Vec<Envelope>> {
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
        scope.join_by_seq(streams, route, control.clone())
    }
}

/// Where each stateful model's primary and backup go on a fresh start.
pub(crate) fn initial(plan: &Plan) -> BTreeMap<ModelId, (WorkerId, WorkerId)> {
    plan.graph
        .stateful()
        .into_iter()
        .map(|i| {
            let (p, b) = plan.replicas(i);
            (ModelId(i as u16), (WorkerId(p), WorkerId(b)))
        })
        .collect()
}

/// Builds the dataflow of `plan` on `worker`, spawning the executors it
/// hosts; every stateful model starts as `resume` says.
pub(crate) fn build(worker: &mut Worker, plan: &Arc<Plan>, store: Arc<Store>, resume: Resume) -> Result<Handles> {
    let index = worker.index();
    let peers = worker.peers();
    let graph = &plan.graph;
    let stateful = graph.stateful();
    let control = Control::new(
        peers,
        stateful.iter().map(|&i| {
            let (primary, backup) = plan.replicas(i);
            (i as u16, primary, backup)
        }),
        plan.faults.clone(),
    );
    {
        let mut ctl = control.borrow_mut();
        for (m, s) in &resume.starts {
            ctl.table.start_at(*m, s.inc, s.primary, s.backup);
        }
        for (p, w) in &resume.watermarks {
            ctl.table.on_watermark(*p, *w);
        }
        for (m, h) in resume.handoffs {
            ctl.table.put_handoff(m, h);
        }
    }
    // Executions of incarnations before this run came from disk images: committed.
    let floors: Vec<(ModelId, hams_protocol::Incarnation)> = resume.starts.iter().map(|(m, s)| (*m, s.floor())).collect();
    let released = Rc::new(RefCell::new(Released::load(store.clone(), index as u32)?));
    let mut ok_in = InputHandleVec::new();
    let mut err_in = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let totals = Rc::new(RefCell::new(Totals::default()));
    let fault_log = Rc::new(RefCell::new(FaultLog::default()));
    let topology = Topology {
        affected: stateful
            .iter()
            .map(|&i| {
                let mut v = vec![ModelId(i as u16)];
                v.extend(
                    graph
                        .descendants(i)
                        .into_iter()
                        .filter(|j| stateful.contains(j))
                        .map(|j| ModelId(j as u16)),
                );
                (ModelId(i as u16), v)
            })
            .collect(),
        placement: stateful
            .iter()
            .map(|&i| {
                let (p, b) = plan.replicas(i);
                (ModelId(i as u16), (WorkerId(p), WorkerId(b)))
            })
            .collect(),
        colocate: plan.mode == Mode::Checkpoint,
        threads: plan.placement.cluster.threads,
        workers: peers,
    };
    worker.dataflow::<Time, _, _>(|scope| -> Result<()> {
        let source = scope.input_from(&mut ok_in);
        let mut failures = vec![scope.input_from(&mut err_in)];
        let mut outputs: Vec<Stream<'_, Time, Vec<Envelope>>> = Vec::with_capacity(graph.nodes.len());
        let mut durable: BTreeMap<u16, Stream<'_, Time, Vec<Cut>>> = BTreeMap::new();
        let mut failed = Vec::new();
        let mut telemetry = Vec::new();
        for (i, (node, place)) in graph.nodes.iter().zip(&plan.placement.nodes).enumerate() {
            let is_stateful = node.spec.is_stateful();
            let route = if is_stateful {
                Route::Primary(ModelId(i as u16))
            } else {
                place.route.clone()
            };
            let input = gather(scope, &source, &node.inputs, &outputs, route.clone(), &control);
            let spawn = spawner(plan, i);
            let deadline = plan.deadline.as_micros() as u64;
            let core = InferCore {
                node: node.spec.name.clone(),
                model: ModelId(node.index),
                hosts: place.hosts.iter().map(|h| WorkerId(*h)).collect(),
                stateful: is_stateful,
                max_batch: node.batch,
                deadlines: Deadlines {
                    answer_us: deadline,
                    heartbeat_us: (deadline / 5).max(5_000),
                    load_us: hams_operators::executor::LOAD_DEADLINE.as_micros() as u64,
                },
                replicate: plan.mode.replicates(),
                hold_until_durable: plan.mode == Mode::StopAndBuffer,
            };
            let s = input.infer(InferConfig { core, route }, control.clone(), spawn.clone());
            outputs.push(s.ok);
            failures.push(s.err);
            failed.push(s.failed);
            telemetry.push(s.telemetry);
            if is_stateful && plan.mode.replicates() {
                let upstream = graph
                    .ancestors(i)
                    .into_iter()
                    .filter_map(|j| durable.get(&(j as u16)).cloned())
                    .collect();
                let core = BackupCore {
                    node: node.spec.name.clone(),
                    model: ModelId(node.index),
                    lineage_retention: plan.lineage_retention,
                    apply_delay_us: plan.backup_delay.as_micros() as u64,
                    cadence: match plan.mode {
                        Mode::Checkpoint => Cadence::Checkpoint {
                            every_us: plan.checkpoint_every.as_micros() as u64,
                        },
                        _ => Cadence::EveryEpoch,
                    },
                    warm_spare: plan.mode != Mode::Checkpoint,
                };
                // No fsync: the backup's memory is what F1 relies on; the WAL
                // keeps the writes across a process crash.
                let writer = BackupWriter::new(store.clone(), false);
                let floors = floors.clone();
                let b = s
                    .deltas
                    .backup(upstream, BackupConfig { core, writer, floors }, control.clone(), spawn);
                durable.insert(i as u16, b.durable);
                telemetry.push(b.telemetry);
            }
        }
        let results = gather(scope, &source, &graph.sink, &outputs, Route::Home, &control);
        let failures = scope.concatenate(failures);
        let sink = SinkConfig {
            floors: floors.clone(),
            store,
            partition: index as u32,
            sync: plan.sync,
            released: released.clone(),
            retain_outputs: plan.retain_outputs,
            keep_from: plan
                .keep_outputs_from
                .get(&(index as u32))
                .cloned()
                .unwrap_or_else(|| Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX))),
        };
        let sinks = results.release(failures, durable.iter().map(|(m, s)| (*m, s.clone())).collect(), sink)?;
        let coordinator = hams_protocol::coordinator::Coordinator::new(topology, &resume.starts);
        let recovers = scope.concatenate(failed).coordinate(coordinator, fault_log.clone());
        let telemetry = scope.concatenate(telemetry);
        scope.views(
            recovers,
            durable.into_iter().collect(),
            sinks.watermarks,
            telemetry,
            control.clone(),
            fault_log.clone(),
        );
        let sink_totals = totals.clone();
        sinks
            .stats
            .probe_with(&probe)
            .sink(Exchange::new(|_: &SinkStats| 0), "CollectStats", move |(input, _frontier)| {
                input.for_each(|_, data| {
                    let mut t = sink_totals.borrow_mut();
                    for s in data.drain(..) {
                        t.add(s);
                    }
                });
            });
        Ok(())
    })?;
    Ok(Handles {
        ok_in,
        err_in,
        probe,
        totals,
        control,
        released,
        faults: fault_log,
    })
}
