//! `Infer`: a model node, the shell around [`InferCore`].
//!
//! Requests are routed to the worker the node's [`Route`] names under the
//! current view; the core decides what to run, when, and on which executor;
//! this operator starts executors, moves frames to and from them, injects
//! planned faults, and emits at the epochs the core names.

use std::rc::Rc;
use std::time::Duration;

use hams_protocol::infer::{InferAction, InferCore};
use hams_protocol::records::{Delta, Failed};
use hams_protocol::{Epoch, ExecId, WorkerId};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::caps::EpochCaps;
use super::control::ControlRef;
use super::faults::Role;
use super::telemetry::Telemetry;
use super::{clock, frontier, now_us, Envelope, Failure, Route, Time};
use crate::error::Result;
use crate::executor::{Event, ExecutorHandle};

pub use hams_protocol::infer::InferConfig as CoreConfig;

/// How a model node runs.
#[derive(Debug, Clone)]
pub struct InferConfig {
    /// The protocol's view of the node.
    pub core: CoreConfig,
    /// Which worker runs each request (`Route::Primary` for stateful nodes).
    pub route: Route,
}

/// Starts executors for a node on this worker (`replica` names it in logs).
pub type Spawn = Rc<dyn Fn(&str) -> Result<ExecutorHandle>>;

/// The streams an `Infer` operator produces.
pub struct InferStreams<'scope> {
    /// Outputs.
    pub ok: Stream<'scope, Time, Vec<Envelope>>,
    /// Requests that failed, with typed errors.
    pub err: Stream<'scope, Time, Vec<Failure>>,
    /// State deltas for the backup (stateful nodes).
    pub deltas: Stream<'scope, Time, Vec<Delta>>,
    /// Failure reports for the coordinator.
    pub failed: Stream<'scope, Time, Vec<Failed>>,
    /// Fault and memory reports.
    pub telemetry: Stream<'scope, Time, Vec<Telemetry>>,
}

/// Runs a stream of requests through a model.
pub trait Infer<'scope> {
    /// Sends each request to the worker its route names (under the current
    /// view of `control`) and runs it there on the node's executor.
    ///
    /// # Examples
    /// ```
    /// use std::rc::Rc;
    /// use std::time::Duration;
    /// use hams_operators::executor::inproc;
    /// use hams_operators::model::{Arch, BackendKind, ModelSpec, Weights};
    /// use hams_operators::ops::{control::Control, infer::{CoreConfig, Infer, InferConfig}, Envelope, Meta, Route};
    /// use hams_protocol::{health::Deadlines, ModelId, Seq, View, WorkerId};
    /// use hams_storage::Values;
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// let spec = ModelSpec { name: "mlp".into(), arch: Arch::Mlp { hidden: vec![8] }, input_len: 4,
    ///     output_len: 2, weights: Weights::Seeded(3), backend: BackendKind::Candle,
    ///     device: "cpu".into(), noise: 0.0 };
    /// let out = timely::example(move |scope| {
    ///     let meta = |seq| Meta { seq: Seq(seq), home: 0, offset: seq, session: None, start: false, end: false,
    ///         ingest_us: 0, view: View(0) };
    ///     let reqs = (0..5u64).map(move |s| Envelope { meta: meta(s), values: Values::F32(vec![0.5; 4]), lineage: vec![] });
    ///     let deadlines = Deadlines { answer_us: 5_000_000, heartbeat_us: 100_000, load_us: 60_000_000 };
    ///     let core = CoreConfig { node: "mlp".into(), model: ModelId(1), hosts: vec![WorkerId(0)], stateful: false,
    ///         max_batch: 8, deadlines, replicate: false, hold_until_durable: false };
    ///     let cfg = InferConfig { core, route: Route::Pinned(WorkerId(0)) };
    ///     let control = Control::new(1, [], vec![]);
    ///     let spawn = Rc::new(move |r: &str| Ok(inproc::spawn(&spec, r)));
    ///     reqs.to_stream(scope).container::<Vec<_>>().infer(cfg, control, spawn).ok.capture()
    /// });
    /// let results: Vec<Envelope> = out.try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, v) => v, _ => vec![] }).collect();
    /// assert_eq!(results.len(), 5);
    /// ```
    fn infer(self, config: InferConfig, control: ControlRef, spawn: Spawn) -> InferStreams<'scope>;
}

/// Ports of the data outputs, as indexed in [`EpochCaps`].
const OK: usize = 0;
const ERR: usize = 1;
const DELTA: usize = 2;

impl<'scope> Infer<'scope> for Stream<'scope, Time, Vec<Envelope>> {
    fn infer(self, config: InferConfig, control: ControlRef, spawn: Spawn) -> InferStreams<'scope> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("Infer".to_string(), scope);
        let info = builder.operator_info();
        let route = config.route.clone();
        let ctl = control.clone();
        let exchange = Exchange::new(move |e: &Envelope| route.target(&e.meta, &ctl.borrow().table).0 as u64);
        let mut input = builder.new_input(self, exchange);
        let (ok_out, ok) = builder.new_output::<Vec<Envelope>>();
        let (err_out, err) = builder.new_output::<Vec<Failure>>();
        let (delta_out, deltas) = builder.new_output::<Vec<Delta>>();
        let (failed_out, failed) = builder.new_output::<Vec<Failed>>();
        let (tele_out, telemetry) = builder.new_output::<Vec<Telemetry>>();
        let (mut ok_out, mut err_out) = (OutputBuilder::from(ok_out), OutputBuilder::from(err_out));
        let (mut delta_out, mut failed_out) = (OutputBuilder::from(delta_out), OutputBuilder::from(failed_out));
        let mut tele_out = OutputBuilder::from(tele_out);
        let activator = scope.activator_for(info.address.clone());
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        control.borrow_mut().subscribe(scope.activator_for(info.address.clone()));
        if config.core.hold_until_durable {
            control.borrow_mut().subscribe_durable(scope.activator_for(info.address.clone()));
        }
        let me = scope.index();
        let node = config.core.node.clone();
        let model = config.core.model;

        builder.build(move |mut initial| {
            // Held at the input frontier: to send a snapshot, a report or a
            // memory figure without data in hand.
            let mut frontier_caps: Vec<Capability<Time>> = initial.drain(DELTA..).collect();
            let mut caps = EpochCaps::<3>::default();
            let mut core = InferCore::new(config.core, WorkerId(me));
            let wake = move || -> crate::executor::Wake {
                let a = sync_activator.clone();
                Box::new(move || {
                    let _ = a.activate();
                })
            };
            // Faults injected into this node's executors whose recovery is still to report.
            let mut recovering: Vec<usize> = Vec::new();
            move |frontiers| {
                if core.ended() {
                    return;
                }
                let f = frontier(&frontiers[0]);
                input.for_each_stamp(|cap, data| {
                    if let Some(epoch) = caps.keep(&cap) {
                        for batch in data {
                            core.requests(epoch, batch.drain(..));
                        }
                    }
                });
                let mut telemetry = Vec::new();
                {
                    let ctl = control.borrow();
                    for x in core.executors().collect::<Vec<_>>() {
                        let Some(h) = ctl.pool.get(&x) else { continue };
                        while let Some(ev) = h.try_event() {
                            if matches!(ev, Event::Ready { .. }) {
                                telemetry.extend(recovering.drain(..).map(|fault| Telemetry::Respawned { fault, at_us: now_us() }));
                            }
                            if matches!(ev, Event::Restored) {
                                crate::metrics::metrics().phase(ctl.table.view().0, crate::metrics::Phase::Promoted, now_us());
                            }
                            core.event(x, ev.into_core());
                        }
                    }
                }
                let acts = core.step(clock(), &mut control.borrow_mut().table, f);
                let (mut ok_h, mut err_h, mut delta_h) = (ok_out.activate(), err_out.activate(), delta_out.activate());
                let mut failed_h = failed_out.activate();
                for a in acts {
                    match a {
                        InferAction::Spawn { exec, replica } => match spawn(&replica) {
                            Ok(h) => {
                                h.set_wake(wake());
                                control.borrow_mut().pool.insert(exec, h);
                            }
                            Err(e) => {
                                tracing::error!(%node, error = %e, "cannot start an executor");
                                core.event(exec, hams_protocol::exec::ExecEvent::Died { reason: e.to_string() });
                                activator.activate();
                            }
                        },
                        InferAction::Adopt(exec) => control.borrow().route_events(exec, &wake),
                        InferAction::Send { exec, cmd } => {
                            let top = match &cmd {
                                hams_protocol::exec::ToExecutor::Infer(r) => r.items.iter().map(|i| i.seq.0).max(),
                                _ => None,
                            };
                            if let Some(h) = control.borrow().pool.get(&exec) {
                                h.send(cmd);
                            }
                            if let Some(top) = top {
                                inject(&control, exec, model.0, Role::Primary, top, &mut recovering, &mut telemetry);
                            }
                        }
                        InferAction::Kill { exec, reason } => {
                            if let Some(h) = control.borrow().pool.get(&exec) {
                                tracing::warn!(executor = h.name(), %reason, "executor hung; killing it");
                                // A stopped process dies on SIGKILL too; its death follows as an event.
                                h.signal(libc::SIGKILL);
                            }
                        }
                        InferAction::Drop(exec) => drop_executor(&control, exec, core.ended(), &mut telemetry),
                        InferAction::Died { exec, reason } => {
                            let name = control.borrow().pool.get(&exec).map(|h| h.name().to_string());
                            tracing::warn!(executor = ?name, %reason, "executor died");
                            let next = control.borrow().table.view().0 + 1;
                            crate::metrics::metrics().phase(next, crate::metrics::Phase::Detected, now_us());
                            if !core.config().stateful || !core.config().replicate {
                                // Replaced by the core; the dead handle is of no use.
                                control.borrow_mut().pool.remove(&exec);
                            }
                        }
                        InferAction::Output { epoch, out } => {
                            if !out.ok.is_empty() {
                                ok_h.session(caps.get(epoch, OK)).give_iterator(out.ok.into_iter());
                            }
                            if !out.err.is_empty() {
                                err_h.session(caps.get(epoch, ERR)).give_iterator(out.err.into_iter());
                            }
                        }
                        InferAction::Delta { epoch, delta } => match caps.try_get(epoch, DELTA) {
                            Some(cap) => delta_h.session(cap).give(delta),
                            None => match frontier_caps.first().filter(|c| *c.time() <= epoch.0) {
                                Some(c) => delta_h.session(&c.delayed(&epoch.0)).give(delta),
                                None => tracing::error!(%node, %epoch, "no capability for a delta; dropped"),
                            },
                        },
                        InferAction::Failed(f) => {
                            if let Some(c) = frontier_caps.get(1) {
                                failed_h.session(c).give(f);
                            }
                        }
                        InferAction::Promoted { inc, sessions, held } => {
                            tracing::info!(%node, %inc, sessions, held, "promoted backup is primary; results wait for the new backup to sync (durability policy `hold`)");
                        }
                    }
                }
                caps.retain(|port, e| {
                    let (data, delta) = core.holds_at(e);
                    if port == DELTA {
                        delta
                    } else {
                        data
                    }
                });
                crate::metrics::metrics().queue(&node, core.depth() as u64);
                if !telemetry.is_empty() {
                    if let Some(c) = frontier_caps.get(2) {
                        tele_out.activate().session(c).give_iterator(telemetry.into_iter());
                    }
                }
                if core.ended() {
                    frontier_caps.clear();
                    return;
                }
                if let Some(after) = core.wake_after() {
                    activator.activate_after(Duration::from_micros(after));
                }
                // Keep the frontier capabilities just behind the input.
                if let Some(t) = f.0 {
                    for c in frontier_caps.iter_mut() {
                        if *c.time() < t.0 {
                            c.downgrade(&t.0);
                        }
                    }
                }
            }
        });
        InferStreams {
            ok,
            err,
            deltas,
            failed,
            telemetry,
        }
    }
}

/// Injects the planned faults due for `role` of `model` at request `top` into executor `exec`.
pub(crate) fn inject(
    control: &ControlRef,
    exec: ExecId,
    model: u16,
    role: Role,
    top: u64,
    recovering: &mut Vec<usize>,
    telemetry: &mut Vec<Telemetry>,
) {
    // One fault per executor: a second one due waits for the next executor
    // (a fault during recovery), instead of hitting a dying one.
    if control.borrow().faults.hit.contains(&exec) {
        return;
    }
    let due = control.borrow().faults.due(model, role, top);
    for fault in due.into_iter().take(1) {
        let mut ctl = control.borrow_mut();
        ctl.faults.hit.insert(exec);
        let kind = ctl.faults.faults[fault].kind;
        let Some(h) = ctl.pool.get(&exec) else { continue };
        tracing::warn!(executor = h.name(), ?kind, seq = top, "injecting fault");
        h.signal(kind.signal());
        if role == Role::Backup && kind == super::faults::FaultKind::Hang {
            // A hung spare would only be found at promotion; replace it now.
            h.signal(libc::SIGKILL);
        }
        ctl.faults.fired.insert(fault);
        recovering.push(fault);
        let inc = ctl.table.try_placement(hams_protocol::ids::ModelId(model)).map(|p| p.inc.0);
        telemetry.push(Telemetry::Injected {
            fault,
            at_us: now_us(),
            inc,
        });
        let next = ctl.table.view().0 + 1;
        crate::metrics::metrics().phase(next, crate::metrics::Phase::Injected, now_us());
    }
}

/// Shuts an executor down; at the end of the stream, reports its peak memory first.
pub(crate) fn drop_executor(control: &ControlRef, exec: ExecId, ended: bool, telemetry: &mut Vec<Telemetry>) {
    if let Some(h) = control.borrow_mut().pool.remove(&exec) {
        if ended {
            telemetry.push(Telemetry::Memory {
                executor: h.name().to_string(),
                mb: h.peak_rss_mb(),
            });
        }
    }
}

/// The epoch a timely time stands for.
pub fn epoch(t: Time) -> Epoch {
    Epoch(t)
}
