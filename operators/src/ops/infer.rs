//! `Infer`: run a model node's requests on its executor, one batch per epoch.
//!
//! Stateless nodes run whatever has arrived; if their executor dies they
//! start a new one and resend the batches it lost. Stateful nodes run each
//! epoch in `seq` order once it is complete, ship every batch's state changes
//! to the backup ([`Delta`]s, asynchronously: outputs go downstream at once),
//! keep an execution log so a replayed request is answered from the log
//! instead of stepping its session twice, and report their executor's death
//! to the coordinator ([`Notice::Failed`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hams_storage::{ErrorKind, LineageTag, RequestError, Values};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::control::{ControlRef, Delta, DeltaBody, Execution, FaultKind, Notice, Role};
use super::{now_us, view_check, Envelope, Epoch, Failure, Meta, Route, ViewCheck};
use crate::error::Result;
use crate::executor::protocol::{InferRequest, InferResponse, Item, ItemError, ToExecutor};
use crate::executor::{Event, ExecutorHandle};

/// How a model node runs.
#[derive(Debug, Clone)]
pub struct InferConfig {
    /// Graph node name (errors name it).
    pub node: String,
    /// Graph node index (lineage tags carry it).
    pub index: u16,
    /// Which worker runs each request (`Route::Primary` for stateful nodes).
    pub route: Route,
    /// Workers with an executor (stateless nodes).
    pub hosts: Vec<usize>,
    /// Stateful nodes run each epoch as one batch in `seq` order once the
    /// epoch is complete; stateless nodes run whatever has arrived.
    pub stateful: bool,
    /// Largest batch per forward pass.
    pub max_batch: usize,
    /// An executor that has not answered a batch or ping for this long is hung.
    pub deadline: Duration,
    /// Ping an idle executor this often.
    pub heartbeat: Duration,
    /// Stateful nodes: ship deltas to a backup and recover from it (all modes but `none`).
    pub replicate: bool,
    /// Stateful nodes: release outputs only once the backup holds their state (stop-and-buffer).
    pub hold_until_durable: bool,
}

/// Starts executors for a node on this worker (`replica` names it in logs).
pub type Spawn = Rc<dyn Fn(&str) -> Result<ExecutorHandle>>;

/// The streams an `Infer` operator produces.
pub struct InferStreams<'scope> {
    /// Outputs.
    pub ok: Stream<'scope, Epoch, Vec<Envelope>>,
    /// Requests that failed, with typed errors.
    pub err: Stream<'scope, Epoch, Vec<Failure>>,
    /// State deltas for the backup (stateful nodes).
    pub deltas: Stream<'scope, Epoch, Vec<Delta>>,
    /// Failure notices and fault reports for the coordinator.
    pub notices: Stream<'scope, Epoch, Vec<Notice>>,
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
    /// use hams_operators::ops::{control::Control, infer::{Infer, InferConfig}, Envelope, Meta, Route};
    /// use hams_storage::Values;
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// let spec = ModelSpec { name: "mlp".into(), arch: Arch::Mlp { hidden: vec![8] }, input_len: 4,
    ///     output_len: 2, weights: Weights::Seeded(3), backend: BackendKind::Candle,
    ///     device: "cpu".into(), noise: 0.0 };
    /// let out = timely::example(move |scope| {
    ///     let meta = |seq| Meta { seq, home: 0, offset: seq, session: None, start: false, end: false,
    ///         ingest_us: 0, view: 0 };
    ///     let reqs = (0..5u64).map(move |s| Envelope { meta: meta(s), values: Values::F32(vec![0.5; 4]), lineage: vec![] });
    ///     let cfg = InferConfig { node: "mlp".into(), index: 1, route: Route::Pinned(0), hosts: vec![0],
    ///         stateful: false, max_batch: 8, deadline: Duration::from_secs(5), heartbeat: Duration::from_millis(100),
    ///         replicate: false, hold_until_durable: false };
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

/// Capabilities for the three data outputs at one epoch.
#[derive(Clone)]
struct Caps {
    ok: Capability<Epoch>,
    err: Capability<Epoch>,
    delta: Capability<Epoch>,
}

/// A batch sent to the executor and not yet answered.
struct InFlight {
    caps: Caps,
    epoch: Epoch,
    sent: Instant,
    requests: Vec<Envelope>,
}

/// The executor this worker runs for the node, and what it has been sent.
struct Serving {
    executor: ExecutorHandle,
    /// Incarnation served (stateful nodes).
    inc: u32,
    dead: bool,
    in_flight: HashMap<u64, InFlight>,
    ping: Option<(u64, Instant)>,
    last_seen: Instant,
    /// Faults injected into this executor whose recovery is still to report.
    recovering: Vec<usize>,
    /// When it was first seen ready (model loaded).
    ready_since: Option<Instant>,
}

impl Serving {
    fn new(executor: ExecutorHandle, inc: u32) -> Self {
        Serving {
            executor,
            inc,
            dead: false,
            in_flight: HashMap::new(),
            ping: None,
            last_seen: Instant::now(),
            recovering: Vec::new(),
            ready_since: None,
        }
    }
}

type Session<'a, T> =
    timely::dataflow::operators::generic::OutputBuilderSession<'a, Epoch, timely::container::CapacityContainerBuilder<Vec<T>>>;

/// The operator's state, outside the closure so the logic reads as methods.
struct State {
    config: InferConfig,
    control: ControlRef,
    spawn: Spawn,
    me: usize,
    serving: Option<Serving>,
    pending: BTreeMap<Epoch, (Caps, Vec<Envelope>)>,
    next_ticket: u64,
    /// Stateful: executions of this incarnation (and those it inherited), by `seq`.
    log: HashMap<u64, Execution>,
    /// Stateful: `seq`s sent to the executor and not answered yet.
    executing: HashSet<u64>,
    last_gc: Instant,
    /// Stop-and-buffer: outputs waiting for the backup to hold the epoch they name.
    held: Vec<Held>,
}

/// Outputs held until their model's durable frontier passes `epoch`.
///
/// Only the output capabilities are kept: holding the delta one would keep the
/// backup's frontier, which this waits on, from ever passing the epoch.
struct Held {
    ok_cap: Capability<Epoch>,
    err_cap: Capability<Epoch>,
    epoch: Epoch,
    ok: Vec<Envelope>,
    err: Vec<Failure>,
}

/// Outputs of one activation.
struct Out<'a, 'b> {
    ok: &'b mut Session<'a, Envelope>,
    err: &'b mut Session<'a, Failure>,
    delta: &'b mut Session<'a, Delta>,
}

impl<'scope> Infer<'scope> for Stream<'scope, Epoch, Vec<Envelope>> {
    fn infer(self, config: InferConfig, control: ControlRef, spawn: Spawn) -> InferStreams<'scope> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("Infer".to_string(), scope);
        let info = builder.operator_info();
        let route = config.route.clone();
        let ctl = control.clone();
        let mut input = builder.new_input(self, Exchange::new(move |e: &Envelope| route.target(&e.meta, &ctl.borrow())));
        let (ok_out, ok) = builder.new_output::<Vec<Envelope>>();
        let (err_out, err) = builder.new_output::<Vec<Failure>>();
        let (delta_out, deltas) = builder.new_output::<Vec<Delta>>();
        let (notice_out, notices) = builder.new_output::<Vec<Notice>>();
        let (mut ok_out, mut err_out) = (OutputBuilder::from(ok_out), OutputBuilder::from(err_out));
        let (mut delta_out, mut notice_out) = (OutputBuilder::from(delta_out), OutputBuilder::from(notice_out));
        let activator = scope.activator_for(info.address.clone());
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        control.borrow_mut().subscribe(scope.activator_for(info.address.clone()));
        if config.hold_until_durable {
            control.borrow_mut().subscribe_durable(scope.activator_for(info.address.clone()));
        }
        let me = scope.index();

        builder.build(move |mut initial| {
            // Held at the input frontier: to send a snapshot or a notice without data in hand.
            let mut notice_cap = initial.pop();
            let mut delta_cap = initial.pop();
            let mut st = State {
                config,
                control,
                spawn,
                me,
                serving: None,
                pending: BTreeMap::new(),
                next_ticket: 0,
                log: HashMap::new(),
                executing: HashSet::new(),
                last_gc: Instant::now(),
                held: Vec::new(),
            };
            let wake = move |ex: &ExecutorHandle| {
                let a = sync_activator.clone();
                ex.set_wake(Box::new(move || {
                    let _ = a.activate();
                }));
            };
            let mut notices_buf: Vec<Notice> = Vec::new();
            let mut ended = false;
            move |frontiers| {
                if ended {
                    return;
                }
                let (mut ok_h, mut err_h, mut delta_h) = (ok_out.activate(), err_out.activate(), delta_out.activate());
                let frontier = frontiers[0].frontier().to_owned();
                input.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    let entry = st.pending.entry(epoch).or_insert_with(|| {
                        let caps = Caps {
                            ok: cap.delayed(&epoch, 0),
                            err: cap.delayed(&epoch, 1),
                            delta: cap.delayed(&epoch, 2),
                        };
                        (caps, Vec::new())
                    });
                    for batch in data {
                        tracing::trace!(node = %st.config.node, epoch, n = batch.len(), "received");
                        entry.1.append(batch);
                    }
                });
                if let Some(snapshot) = st.sync_role(&wake) {
                    // At the earliest epoch we may still send a delta for: the snapshot must precede them.
                    let cap = st
                        .pending
                        .values()
                        .map(|(c, _)| &c.delta)
                        .chain(delta_cap.iter())
                        .min_by_key(|c| *c.time());
                    if let Some(cap) = cap {
                        delta_h.session(cap).give(snapshot);
                    }
                }
                let mut out = Out {
                    ok: &mut ok_h,
                    err: &mut err_h,
                    delta: &mut delta_h,
                };
                st.collect_events(&mut out, &wake, &mut notices_buf);
                st.watch_health(&activator);
                st.submit(&frontier, &mut out, &mut notices_buf);
                st.release_held(&mut out);
                st.gc();
                let depth = st.pending.values().map(|(_, r)| r.len()).sum::<usize>()
                    + st.serving
                        .as_ref()
                        .map_or(0, |s| s.in_flight.values().map(|f| f.requests.len()).sum());
                crate::metrics::metrics().queue(&st.config.node, depth as u64);
                if !notices_buf.is_empty() {
                    if let Some(nc) = notice_cap.as_ref() {
                        notice_out.activate().session(nc).give_iterator(notices_buf.drain(..));
                    }
                }
                if frontier.is_empty()
                    && st.pending.is_empty()
                    && st.held.is_empty()
                    && st.serving.as_ref().is_none_or(|s| s.in_flight.is_empty())
                {
                    // The stream has ended: release the executor and the held capabilities.
                    ended = true;
                    if let (Some(s), Some(nc)) = (st.serving.take(), notice_cap.as_ref()) {
                        let memory = Notice::Memory {
                            executor: s.executor.name().to_string(),
                            mb: s.executor.peak_rss_mb(),
                        };
                        notice_out.activate().session(nc).give(memory);
                    }
                    notice_cap = None;
                    delta_cap = None;
                    return;
                }
                // Keep the held capabilities just behind the input.
                if let Some(t) = frontier.iter().min() {
                    for cap in [&mut notice_cap, &mut delta_cap].into_iter().flatten() {
                        if cap.time() < t {
                            cap.downgrade(t);
                        }
                    }
                }
            }
        });
        InferStreams { ok, err, deltas, notices }
    }
}

impl State {
    fn fail(&self, meta: Meta, kind: ErrorKind, message: String, lineage: Vec<LineageTag>) -> Failure {
        Failure {
            meta,
            error: RequestError {
                node: self.config.node.clone(),
                kind,
                message,
            },
            lineage,
        }
    }

    fn spawn_executor(&self, replica: &str, wake: &impl Fn(&ExecutorHandle)) -> Option<ExecutorHandle> {
        match (self.spawn)(replica) {
            Ok(ex) => {
                wake(&ex);
                Some(ex)
            }
            Err(e) => {
                tracing::error!(node = %self.config.node, error = %e, "cannot start an executor");
                None
            }
        }
    }

    /// Starts, promotes or demotes this worker's executor to match the current view.
    fn sync_role(&mut self, wake: &impl Fn(&ExecutorHandle)) -> Option<Delta> {
        let index = self.config.index;
        if !self.config.stateful {
            if self.serving.is_none() && self.config.hosts.contains(&self.me) {
                let k = self.config.hosts.iter().position(|h| *h == self.me).unwrap_or(0);
                let name = if k == 0 { "primary".to_string() } else { format!("replica{k}") };
                self.serving = self.spawn_executor(&name, wake).map(|e| Serving::new(e, 0));
            }
            return None;
        }
        let placement = self.control.borrow().placement(index).clone();
        let serving_inc = self.serving.as_ref().map(|s| s.inc);
        if placement.primary == self.me && serving_inc != Some(placement.inc) {
            if placement.inc == 0 {
                self.serving = self.spawn_executor("primary", wake).map(|e| Serving::new(e, 0));
                return None;
            }
            let Some(handoff) = self.control.borrow_mut().take_handoff(index) else {
                return None; // The backup on this worker has not cut yet.
            };
            self.demote(placement.backup);
            let executor = match handoff.executor {
                Some(e) => {
                    wake(&e);
                    Some(e)
                }
                None => self.spawn_executor("primary", wake),
            };
            let executor = executor?;
            executor.send(ToExecutor::Restore(handoff.states.clone()));
            self.log = handoff.executions.iter().map(|e| (e.seq, e.clone())).collect();
            tracing::info!(node = %self.config.node, inc = placement.inc, sessions = handoff.states.len(), held = self.log.len(), "promoted backup is primary");
            // Durability policy while the new backup syncs: hold. Results depending on this
            // incarnation are released only once the new backup holds the snapshot and their epochs.
            tracing::info!(node = %self.config.node, backup = placement.backup, "durability policy `hold`: results wait for the new backup to sync");
            self.serving = Some(Serving::new(executor, placement.inc));
            return Some(Delta {
                model: index,
                inc: placement.inc,
                to: placement.backup,
                body: DeltaBody::Snapshot {
                    states: handoff.states,
                    executions: handoff.executions,
                },
            });
        } else if placement.primary != self.me && self.serving.is_some() {
            self.demote(placement.backup);
        }
        None
    }

    /// Gives up serving: a live executor becomes the backup's spare if the backup is here.
    /// Pending requests stay: those of older views are dropped at submission.
    fn demote(&mut self, backup: usize) {
        if let Some(s) = self.serving.take() {
            if !s.dead && backup == self.me {
                self.control.borrow_mut().put_spare(self.config.index, s.executor);
            }
        }
        self.log.clear();
        self.executing.clear();
    }

    fn collect_events(&mut self, out: &mut Out<'_, '_>, wake: &impl Fn(&ExecutorHandle), notices: &mut Vec<Notice>) {
        let Some(serving) = self.serving.as_mut() else { return };
        let mut done = Vec::new();
        let mut died = None;
        while let Some(event) = serving.executor.try_event() {
            serving.last_seen = Instant::now();
            match event {
                Event::Done(resp) => done.push(resp),
                Event::Died { reason } => died = Some(reason),
                Event::Pong(n) => {
                    if serving.ping.is_some_and(|(p, _)| p == n) {
                        serving.ping = None;
                    }
                }
                Event::Ready { pid } => {
                    tracing::debug!(executor = serving.executor.name(), pid, "executor ready");
                    for fault in serving.recovering.drain(..) {
                        notices.push(Notice::Respawned { fault, at_us: now_us() });
                    }
                }
                Event::Restored => {
                    let view = self.control.borrow().view();
                    crate::metrics::metrics().phase(view, crate::metrics::Phase::Promoted, now_us());
                }
            }
        }
        for resp in &done {
            tracing::trace!(node = %self.config.node, ticket = resp.ticket, "done");
        }
        for resp in done {
            let Some(f) = self.serving.as_mut().and_then(|s| s.in_flight.remove(&resp.ticket)) else {
                continue;
            };
            self.emit(f, resp, out);
        }
        let Some(reason) = died else { return };
        let serving = self.serving.as_mut().expect("checked");
        tracing::warn!(executor = serving.executor.name(), %reason, "executor died");
        let next_view = self.control.borrow().view() + 1;
        crate::metrics::metrics().phase(next_view, crate::metrics::Phase::Detected, now_us());
        if self.config.stateful && self.config.replicate {
            serving.dead = true;
            notices.push(Notice::Failed {
                model: self.config.index,
                inc: serving.inc,
                reason,
                at_us: now_us(),
            });
            return;
        }
        // Stateless (or unreplicated): start a new executor and resend what the old one lost.
        if self.config.stateful {
            tracing::error!(node = %self.config.node, "no backup in this mode: the model's session states are lost");
        }
        let lost: Vec<InFlight> = serving.in_flight.drain().map(|(_, f)| f).collect();
        let recovering = std::mem::take(&mut serving.recovering);
        self.serving = None;
        let k = self.config.hosts.iter().position(|h| *h == self.me).unwrap_or(0);
        let name = if k == 0 { "primary".to_string() } else { format!("replica{k}") };
        let Some(ex) = self.spawn_executor(&name, wake) else {
            for f in lost {
                for e in f.requests {
                    let msg = "executor died and could not be restarted".to_string();
                    let failure = self.fail(e.meta, ErrorKind::Unavailable, msg, e.lineage);
                    out.err.session(&f.caps.err).give(failure);
                }
            }
            return;
        };
        let mut s = Serving::new(ex, 0);
        s.recovering = recovering;
        self.serving = Some(s);
        for f in lost {
            self.send_batch(f.caps, f.epoch, f.requests, &mut Vec::new());
        }
    }

    /// Kills an executor that stopped answering; its death then arrives as `Died`.
    fn watch_health(&mut self, activator: &timely::scheduling::Activator) {
        let (deadline, heartbeat) = (self.config.deadline, self.config.heartbeat);
        let Some(s) = self.serving.as_mut().filter(|s| !s.dead) else {
            return;
        };
        // Deadlines run from when the executor had its model loaded: loading is slow, not hung.
        let ready = match s.ready_since {
            Some(t) => t,
            None if s.executor.is_ready() => *s.ready_since.insert(Instant::now()),
            None if s.last_seen.elapsed() > crate::executor::LOAD_DEADLINE => {
                tracing::warn!(executor = s.executor.name(), deadline = ?crate::executor::LOAD_DEADLINE, "executor never finished loading; killing it");
                s.executor.signal(libc::SIGKILL);
                return;
            }
            None => {
                activator.activate_after(heartbeat.max(Duration::from_millis(1)));
                return;
            }
        };
        let oldest = s.in_flight.values().map(|f| f.sent.max(ready)).min();
        let waiting_since = match (oldest, s.ping) {
            (Some(o), Some((_, p))) => Some(o.min(p)),
            (o, p) => o.or(p.map(|(_, t)| t)),
        };
        if let Some(since) = waiting_since {
            if since.elapsed() > deadline && s.last_seen.elapsed() > deadline {
                tracing::warn!(executor = s.executor.name(), ?deadline, "executor hung; killing it");
                s.executor.signal(libc::SIGKILL);
                // A stopped process dies on SIGKILL too; its socket closes and `Died` follows.
            }
        } else if s.last_seen.elapsed() >= heartbeat {
            let n = self.next_ticket;
            self.next_ticket += 1;
            s.executor.send(ToExecutor::Ping(n));
            s.ping = Some((n, Instant::now()));
        }
        activator.activate_after(heartbeat.min(deadline / 4).max(Duration::from_millis(1)));
    }

    fn submit(&mut self, frontier: &timely::progress::Antichain<Epoch>, out: &mut Out<'_, '_>, notices: &mut Vec<Notice>) {
        let view = self.control.borrow().view();
        if self.serving.as_ref().is_none_or(|s| s.dead) {
            // Requests wait for a new primary; those of an older view are replayed, so drop them.
            self.pending.retain(|_, (_, reqs)| {
                reqs.retain(|e| view_check(e.meta.view, view) != ViewCheck::Stale);
                !reqs.is_empty()
            });
            if self.serving.is_none() && !self.config.stateful {
                // A stateless executor that could not be started: answer with typed errors.
                for (_, (caps, reqs)) in std::mem::take(&mut self.pending) {
                    for e in reqs {
                        let failure = self.fail(e.meta, ErrorKind::Unavailable, "no executor for this model".into(), e.lineage);
                        out.err.session(&caps.err).give(failure);
                    }
                }
            }
            return;
        }
        let epochs: Vec<Epoch> = self.pending.keys().copied().collect();
        if !epochs.is_empty() {
            tracing::trace!(node = %self.config.node, view, ?epochs, views = ?self.pending.values().flat_map(|(_, r)| r.iter().map(|e| e.meta.view)).collect::<std::collections::BTreeSet<_>>(), frontier = ?frontier.elements(), log = self.log.len(), executing = self.executing.len(), "pending");
        }
        for epoch in epochs {
            if self.config.stateful && frontier.less_equal(&epoch) {
                break; // Stateful: only complete epochs, in order.
            }
            let (caps, requests) = self.pending.remove(&epoch).expect("listed");
            let mut fresh = Vec::new();
            let mut keep = Vec::new();
            let mut early = false;
            for env in requests {
                match view_check(env.meta.view, view) {
                    ViewCheck::Stale => {}
                    ViewCheck::Early => {
                        early = true;
                        keep.push(env);
                    }
                    ViewCheck::Current if !self.config.stateful => fresh.push(env),
                    ViewCheck::Current => {
                        if let Some(exec) = self.log.get(&env.meta.seq) {
                            // Executed before (maybe by the replica we were promoted from): answer from the log.
                            let exec = exec.clone();
                            self.emit_logged(&caps, env, &exec, out);
                        } else if self.executing.contains(&env.meta.seq) {
                            keep.push(env);
                        } else {
                            fresh.push(env);
                        }
                    }
                }
            }
            if self.config.stateful {
                fresh.sort_by_key(|e| e.meta.seq);
            }
            if !fresh.is_empty() {
                self.send_batch(caps.clone(), epoch, fresh, notices);
            }
            if !keep.is_empty() {
                self.pending.insert(epoch, (caps, keep));
            }
            if early && self.config.stateful {
                break;
            }
        }
    }

    /// Sends `requests` in batches of at most `max_batch`, injecting planned faults.
    fn send_batch(&mut self, caps: Caps, epoch: Epoch, mut requests: Vec<Envelope>, notices: &mut Vec<Notice>) {
        let max = self.config.max_batch.max(1);
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(max));
            let chunk = std::mem::replace(&mut requests, rest);
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let items = chunk
                .iter()
                .map(|e| Item {
                    seq: e.meta.seq,
                    session: e.meta.session,
                    start: e.meta.start,
                    end: e.meta.end,
                    input: e.values.clone(),
                })
                .collect();
            let top = chunk.iter().map(|e| e.meta.seq).max().unwrap_or(0);
            if self.config.stateful {
                self.executing.extend(chunk.iter().map(|e| e.meta.seq));
            }
            let serving = self.serving.as_mut().expect("checked by caller");
            tracing::trace!(node = %self.config.node, ticket, epoch, "send");
            serving.executor.send(ToExecutor::Infer(InferRequest { ticket, epoch, items }));
            serving.in_flight.insert(
                ticket,
                InFlight {
                    caps: caps.clone(),
                    epoch,
                    sent: Instant::now(),
                    requests: chunk,
                },
            );
            let due = self.control.borrow().due_faults(self.config.index, Role::Primary, top);
            for fault in due {
                let kind = self.control.borrow().faults[fault].kind;
                let signal = if kind == FaultKind::Kill { libc::SIGKILL } else { libc::SIGSTOP };
                let serving = self.serving.as_mut().expect("checked");
                tracing::warn!(executor = serving.executor.name(), ?kind, seq = top, "injecting fault");
                serving.executor.signal(signal);
                serving.recovering.push(fault);
                self.control.borrow_mut().fired.insert(fault);
                notices.push(Notice::Injected { fault, at_us: now_us() });
                let next_view = self.control.borrow().view() + 1;
                crate::metrics::metrics().phase(next_view, crate::metrics::Phase::Injected, now_us());
            }
        }
    }

    /// Sends a finished batch's outputs and failures downstream, and its delta to the backup.
    fn emit(&mut self, f: InFlight, resp: InferResponse, out: &mut Out<'_, '_>) {
        let tagged = self.config.stateful && self.config.replicate;
        let inc = self.serving.as_ref().map_or(0, |s| s.inc);
        let mut executions = Vec::new();
        let (mut oks, mut errs) = (Vec::new(), Vec::new());
        for (env, result) in f.requests.into_iter().zip(resp.outputs) {
            if self.config.stateful {
                self.executing.remove(&env.meta.seq);
            }
            let mut lineage = env.lineage.clone();
            let (outcome, prev_fp, fp) = match result {
                Ok(o) => (Ok(o.values), o.prev_fp, o.fp),
                Err(e) => (Err(e), 0, 0),
            };
            if tagged {
                lineage.push(LineageTag {
                    model: self.config.index,
                    incarnation: inc,
                    epoch: f.epoch,
                    fingerprint: fp,
                });
                executions.push(Execution {
                    seq: env.meta.seq,
                    session: env.meta.session,
                    outcome: outcome.clone(),
                    prev_fp,
                    fp,
                    inc,
                    epoch: f.epoch,
                    input_lineage: env.lineage,
                });
            }
            match outcome {
                Ok(values) => oks.push(Envelope {
                    meta: env.meta,
                    values: Values::F32(values),
                    lineage,
                }),
                Err(e) => errs.push(self.fail(env.meta, e.kind, e.message, lineage)),
            }
        }
        if tagged {
            for e in &executions {
                self.log.insert(e.seq, e.clone());
            }
            let backup = self.control.borrow().placement(self.config.index).backup;
            out.delta.session(&f.caps.delta).give(Delta {
                model: self.config.index,
                inc,
                to: backup,
                body: DeltaBody::Exec {
                    states: resp.delta.into_iter().map(|u| (u.session, u.state)).collect(),
                    executions,
                },
            });
        }
        let wait = (tagged && self.config.hold_until_durable).then_some(f.epoch);
        self.deliver(&f.caps, wait, oks, errs, out);
    }

    /// Sends results downstream now, or (stop-and-buffer) once the backup holds epoch `wait`.
    fn deliver(&mut self, caps: &Caps, wait: Option<Epoch>, ok: Vec<Envelope>, err: Vec<Failure>, out: &mut Out<'_, '_>) {
        match wait {
            Some(epoch) if !self.control.borrow().durable_past(self.config.index, epoch) => self.held.push(Held {
                ok_cap: caps.ok.clone(),
                err_cap: caps.err.clone(),
                epoch,
                ok,
                err,
            }),
            _ => {
                if !ok.is_empty() {
                    out.ok.session(&caps.ok).give_iterator(ok.into_iter());
                }
                if !err.is_empty() {
                    out.err.session(&caps.err).give_iterator(err.into_iter());
                }
            }
        }
    }

    /// Stop-and-buffer: releases held outputs whose epoch the backup now holds.
    fn release_held(&mut self, out: &mut Out<'_, '_>) {
        if self.held.is_empty() {
            return;
        }
        let control = self.control.borrow();
        let (ready, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| control.durable_past(self.config.index, h.epoch));
        drop(control);
        self.held = waiting;
        for h in ready {
            if !h.ok.is_empty() {
                out.ok.session(&h.ok_cap).give_iterator(h.ok.into_iter());
            }
            if !h.err.is_empty() {
                out.err.session(&h.err_cap).give_iterator(h.err.into_iter());
            }
        }
    }

    /// Answers a replayed request from the execution log.
    fn emit_logged(&mut self, caps: &Caps, env: Envelope, exec: &Execution, out: &mut Out<'_, '_>) {
        let tag = LineageTag {
            model: self.config.index,
            incarnation: exec.inc,
            epoch: exec.epoch,
            fingerprint: exec.fp,
        };
        let mut lineage = env.lineage;
        lineage.push(tag);
        let (mut ok, mut err) = (Vec::new(), Vec::new());
        match &exec.outcome {
            Ok(values) => ok.push(Envelope {
                meta: env.meta,
                values: Values::F32(values.clone()),
                lineage,
            }),
            Err(ItemError { kind, message }) => err.push(self.fail(env.meta, *kind, message.clone(), lineage)),
        }
        // Executions inherited from a backup are held already; our own may not be yet.
        let current = self.serving.as_ref().map_or(0, |s| s.inc);
        let wait = (self.config.hold_until_durable && exec.inc == current).then_some(exec.epoch);
        self.deliver(caps, wait, ok, err, out);
    }

    /// Forgets executions whose results have been released.
    fn gc(&mut self) {
        if !self.config.stateful || self.last_gc.elapsed() < Duration::from_millis(50) {
            return;
        }
        self.last_gc = Instant::now();
        let control = self.control.borrow();
        self.log.retain(|seq, _| !control.is_released(*seq));
    }
}
