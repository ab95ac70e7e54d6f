//! A model node on one worker: batching, the executor's life cycle, and (for
//! a stateful model) the primary's rules and its role in view changes.
//!
//! Stateless nodes run whatever has arrived; if their executor dies they
//! start another (with backoff, and give up after [`MAX_START_FAILURES`]
//! starts that never loaded) and resend the batches it lost. Stateful nodes
//! run each epoch in `seq` order once it is complete. The worker that is a
//! model's primary in the current view serves it; a promoted one takes the
//! backup's hand-off (states, held executions, warm spare) and sends its new
//! backup a snapshot before any delta.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::exec::{ExecEvent, InferRequest, InferResponse, Item, ToExecutor};
use crate::flow::{view_check, Envelope, ViewCheck};
use crate::frontier::Frontier;
use crate::health::{Check, Deadlines, Health};
use crate::ids::{Epoch, ExecId, Incarnation, Micros, ModelId, WorkerId};
use crate::primary::{failure, untagged, Admission, Outputs, Primary};
use crate::records::{Delta, DeltaBody, ErrorKind, Failed};
use crate::view::ViewTable;

/// Consecutive executor starts that never loaded before a node gives up.
pub const MAX_START_FAILURES: u32 = 5;

/// How a model node runs.
#[derive(Debug, Clone)]
pub struct InferConfig {
    /// Graph node name (errors name it).
    pub node: String,
    /// The node (lineage tags carry it).
    pub model: ModelId,
    /// Workers with an executor (stateless nodes; the first is the primary).
    pub hosts: Vec<WorkerId>,
    /// Stateful nodes run each epoch as one batch in `seq` order once it is complete.
    pub stateful: bool,
    /// Largest batch per forward pass.
    pub max_batch: usize,
    /// Failure detection.
    pub deadlines: Deadlines,
    /// Stateful nodes: ship deltas to a backup and recover from it (all modes but `none`).
    pub replicate: bool,
    /// Stateful nodes: release outputs only once the backup holds their state (stop-and-buffer).
    pub hold_until_durable: bool,
}

/// What the node's shell must do.
#[derive(Debug)]
pub enum InferAction {
    /// Start an executor; its events come back tagged with `exec`.
    Spawn {
        /// Id of the new executor.
        exec: ExecId,
        /// Replica name, for logs (`primary`, `replica1`).
        replica: String,
    },
    /// Route `exec`'s events here from now on (taken over from the backup).
    Adopt(ExecId),
    /// Send a message to an executor.
    Send {
        /// To whom.
        exec: ExecId,
        /// What.
        cmd: ToExecutor,
    },
    /// Kill an executor found hung; its death follows as an event.
    Kill {
        /// Which.
        exec: ExecId,
        /// Why.
        reason: String,
    },
    /// Shut an executor down: nobody needs it any more.
    Drop(ExecId),
    /// An executor died (for logs and metrics).
    Died {
        /// Which.
        exec: ExecId,
        /// Why.
        reason: String,
    },
    /// Outputs at `epoch`, downstream.
    Output {
        /// Epoch.
        epoch: Epoch,
        /// Results and typed errors.
        out: Outputs,
    },
    /// A delta for the backup, at `epoch`.
    Delta {
        /// Epoch.
        epoch: Epoch,
        /// The delta.
        delta: Delta,
    },
    /// The primary failed: tell the coordinator.
    Failed(Failed),
    /// This worker now serves a promoted incarnation (for logs and metrics).
    Promoted {
        /// The incarnation.
        inc: Incarnation,
        /// Sessions restored.
        sessions: usize,
        /// Held executions inherited.
        held: usize,
    },
}

/// A batch sent to the executor and not yet answered.
#[derive(Debug)]
struct InFlight {
    epoch: Epoch,
    sent: Micros,
    requests: Vec<Envelope>,
}

/// The executor this worker runs for the node.
#[derive(Debug)]
struct Serving {
    exec: ExecId,
    inc: Incarnation,
    dead: bool,
    in_flight: HashMap<u64, InFlight>,
    health: Health,
    /// When it was found hung and killed (its death should follow as an event).
    killed_at: Option<Micros>,
}

impl Serving {
    fn new(exec: ExecId, inc: Incarnation, now: Micros) -> Self {
        Serving {
            exec,
            inc,
            dead: false,
            in_flight: HashMap::new(),
            health: Health::new(now),
            killed_at: None,
        }
    }
}

/// Outputs held (stop-and-buffer) until the backup holds epoch `wait`.
#[derive(Debug)]
struct HeldOut {
    epoch: Epoch,
    wait: Epoch,
    out: Outputs,
}

/// Epochs a node needs capabilities for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    /// For outputs (results and errors).
    pub data: BTreeSet<Epoch>,
    /// For deltas (never held for stop-and-buffer's held outputs: the backup's
    /// frontier, which they wait on, must be able to pass them).
    pub delta: BTreeSet<Epoch>,
}

/// One worker's instance of a model node.
#[derive(Debug)]
pub struct InferCore {
    cfg: InferConfig,
    me: WorkerId,
    serving: Option<Serving>,
    pending: BTreeMap<Epoch, Vec<Envelope>>,
    events: VecDeque<(ExecId, ExecEvent)>,
    next_ticket: u64,
    primary: Primary,
    held: Vec<HeldOut>,
    last_gc: Micros,
    ended: bool,
    wake_after: Option<Micros>,
    start_failures: u32,
    respawn_at: Option<Micros>,
    lost: Vec<InFlight>,
    given_up: bool,
}

impl InferCore {
    /// The node `cfg` on worker `me`.
    pub fn new(cfg: InferConfig, me: WorkerId) -> Self {
        InferCore {
            cfg,
            me,
            serving: None,
            pending: BTreeMap::new(),
            events: VecDeque::new(),
            next_ticket: 0,
            primary: Primary::new(),
            held: Vec::new(),
            last_gc: 0,
            ended: false,
            wake_after: None,
            start_failures: 0,
            respawn_at: None,
            lost: Vec::new(),
            given_up: false,
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &InferConfig {
        &self.cfg
    }

    /// Requests of `epoch` arrived.
    pub fn requests(&mut self, epoch: Epoch, batch: impl IntoIterator<Item = Envelope>) {
        self.pending.entry(epoch).or_default().extend(batch);
    }

    /// An executor reported something.
    pub fn event(&mut self, exec: ExecId, ev: ExecEvent) {
        self.events.push_back((exec, ev));
    }

    /// Executors whose events this node wants.
    pub fn executors(&self) -> impl Iterator<Item = ExecId> + '_ {
        self.serving.as_ref().map(|s| s.exec).into_iter()
    }

    /// True once the input has ended and everything is answered.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Requests waiting here or at the executor.
    pub fn depth(&self) -> usize {
        self.pending.values().map(Vec::len).sum::<usize>()
            + self
                .serving
                .as_ref()
                .map_or(0, |s| s.in_flight.values().map(|f| f.requests.len()).sum())
    }

    /// Executions in the primary's log.
    pub fn logged(&self) -> usize {
        self.primary.logged()
    }

    /// When the node wants to be looked at again even if nothing happens.
    pub fn wake_after(&self) -> Option<Micros> {
        self.wake_after
    }

    /// Epochs the node needs capabilities for.
    pub fn holds(&self) -> Holds {
        let mut h = Holds::default();
        let in_flight = self.serving.iter().flat_map(|s| s.in_flight.values().map(|f| f.epoch));
        let lost = self.lost.iter().map(|f| f.epoch);
        h.delta.extend(self.pending.keys().copied().chain(in_flight).chain(lost));
        h.data = h.delta.clone();
        h.data.extend(self.held.iter().map(|o| o.epoch));
        h
    }

    /// Whether the node holds `epoch` for outputs and for deltas (what
    /// [`Self::holds`] gives, for one epoch, without allocating).
    pub fn holds_at(&self, epoch: Epoch) -> (bool, bool) {
        let delta = self.pending.contains_key(&epoch)
            || self.lost.iter().any(|f| f.epoch == epoch)
            || self.serving.iter().any(|s| s.in_flight.values().any(|f| f.epoch == epoch));
        (delta || self.held.iter().any(|o| o.epoch == epoch), delta)
    }

    /// The least epoch held for outputs and for deltas (what [`Self::holds`] gives, without allocating).
    pub fn hold_frontiers(&self) -> (Frontier, Frontier) {
        let in_flight = self.serving.iter().flat_map(|s| s.in_flight.values().map(|f| f.epoch));
        let lost = self.lost.iter().map(|f| f.epoch);
        let delta = Frontier::of(self.pending.keys().next().copied().into_iter().chain(in_flight).chain(lost));
        let data = delta.meet(Frontier::of(self.held.iter().map(|o| o.epoch)));
        (data, delta)
    }

    /// Runs the node's rules at `now`, with the input's `frontier`.
    pub fn step(&mut self, now: Micros, table: &mut ViewTable, frontier: Frontier) -> Vec<InferAction> {
        let mut acts = Vec::new();
        if self.ended {
            return acts;
        }
        self.wake_after = None;
        // Events first: an executor whose death is already reported must not
        // be handed on as a spare by a demotion in the same step.
        self.collect_events(now, table, &mut acts);
        self.sync_role(now, table, frontier, &mut acts);
        self.respawn(now, table, &mut acts);
        self.watch_health(now, &mut acts);
        self.submit(now, table, frontier, &mut acts);
        self.release_held(table, &mut acts);
        if self.cfg.stateful && now.saturating_sub(self.last_gc) >= 50_000 {
            self.last_gc = now;
            self.primary.gc(|s| table.is_released(s));
        }
        let idle = self.serving.as_ref().is_none_or(|s| s.in_flight.is_empty());
        if frontier.is_empty() && self.pending.is_empty() && self.held.is_empty() && idle && self.lost.is_empty() {
            self.ended = true;
            if let Some(s) = self.serving.take() {
                acts.push(InferAction::Drop(s.exec));
            }
        }
        acts
    }

    fn wake(&mut self, after: Micros) {
        self.wake_after = Some(self.wake_after.map_or(after, |w| w.min(after)));
    }

    fn replica_name(&self) -> String {
        match self.cfg.hosts.iter().position(|h| *h == self.me) {
            Some(0) | None => "primary".into(),
            Some(k) => format!("replica{k}"),
        }
    }

    fn spawn(&mut self, now: Micros, inc: Incarnation, table: &mut ViewTable, acts: &mut Vec<InferAction>) {
        let exec = table.new_exec();
        acts.push(InferAction::Spawn {
            exec,
            replica: self.replica_name(),
        });
        self.serving = Some(Serving::new(exec, inc, now));
    }

    /// Starts, promotes or demotes this worker's executor to match the current view.
    fn sync_role(&mut self, now: Micros, table: &mut ViewTable, frontier: Frontier, acts: &mut Vec<InferAction>) {
        if !self.cfg.stateful {
            let host = self.cfg.hosts.contains(&self.me);
            if self.serving.is_none() && host && self.respawn_at.is_none() && !self.given_up {
                self.spawn(now, Incarnation(0), table, acts);
            }
            return;
        }
        let model = self.cfg.model;
        let placement = table.roles(model);
        let serving_inc = self.serving.as_ref().map(|s| s.inc);
        if placement.primary == self.me && serving_inc != Some(placement.inc) {
            if placement.inc == Incarnation(0) {
                if self.serving.is_none() && self.respawn_at.is_none() {
                    self.spawn(now, Incarnation(0), table, acts);
                }
                return;
            }
            let Some(handoff) = table.take_handoff(model) else {
                return; // The backup on this worker has not cut yet.
            };
            self.demote(placement.backup, table, acts);
            let exec = match handoff.executor {
                Some(e) => {
                    acts.push(InferAction::Adopt(e));
                    self.serving = Some(Serving::new(e, placement.inc, now));
                    e
                }
                None => {
                    self.spawn(now, placement.inc, table, acts);
                    self.serving.as_ref().expect("spawned").exec
                }
            };
            if let Some(s) = self.serving.as_mut() {
                // A warm spare is loaded already; its deadlines start now.
                s.health.ready(now);
            }
            acts.push(InferAction::Send {
                exec,
                cmd: ToExecutor::Restore(handoff.states.clone()),
            });
            self.primary.promote(&handoff.executions);
            acts.push(InferAction::Promoted {
                inc: placement.inc,
                sessions: handoff.states.len(),
                held: handoff.executions.len(),
            });
            // The snapshot precedes every delta of the new incarnation: at the
            // earliest epoch this node may still send one.
            let at = Frontier::of(self.pending.keys().copied()).meet(frontier);
            match at.0 {
                Some(epoch) => acts.push(InferAction::Delta {
                    epoch,
                    delta: Delta {
                        model,
                        inc: placement.inc,
                        to: placement.backup,
                        body: DeltaBody::Snapshot {
                            states: handoff.states,
                            executions: handoff.executions,
                        },
                    },
                }),
                None => tracing::warn!(node = %self.cfg.node, "promoted after the input ended; no snapshot sent"),
            }
        } else if placement.primary != self.me && self.serving.is_some() {
            self.demote(placement.backup, table, acts);
        }
    }

    /// Gives up serving: a live executor becomes the backup's spare if the backup is here.
    /// Pending requests stay: those of older views are dropped at submission.
    fn demote(&mut self, backup: WorkerId, table: &mut ViewTable, acts: &mut Vec<InferAction>) {
        if let Some(s) = self.serving.take() {
            if !s.dead && backup == self.me {
                table.put_spare(self.cfg.model, s.exec);
            } else {
                acts.push(InferAction::Drop(s.exec));
            }
        }
        self.primary.demote();
    }

    fn collect_events(&mut self, now: Micros, table: &ViewTable, acts: &mut Vec<InferAction>) {
        let Some(serving) = self.serving.as_mut() else {
            self.events.clear();
            return;
        };
        let mut done = Vec::new();
        let mut died = None;
        for (exec, ev) in self.events.drain(..) {
            if exec != serving.exec {
                continue; // A former executor's last words.
            }
            serving.health.seen(now);
            match ev {
                ExecEvent::Done(resp) => done.push(resp),
                ExecEvent::Died { reason } => died = Some(reason),
                ExecEvent::Pong(n) => serving.health.pong(n, now),
                ExecEvent::Ready => {
                    serving.health.ready(now);
                    self.start_failures = 0;
                }
                ExecEvent::Restored => {}
            }
        }
        for resp in done {
            let Some(f) = self.serving.as_mut().and_then(|s| s.in_flight.remove(&resp.ticket)) else {
                continue;
            };
            self.emit(f, resp, table, acts);
        }
        let Some(reason) = died else { return };
        let serving = self.serving.as_mut().expect("checked");
        acts.push(InferAction::Died {
            exec: serving.exec,
            reason: reason.clone(),
        });
        if !serving.health.is_ready() {
            self.start_failures += 1;
        }
        if self.cfg.stateful && self.cfg.replicate {
            serving.dead = true;
            acts.push(InferAction::Failed(Failed {
                model: self.cfg.model,
                inc: serving.inc,
                reason,
            }));
            return;
        }
        // Stateless (or unreplicated): start another executor and resend what this one lost.
        if self.cfg.stateful {
            tracing::error!(node = %self.cfg.node, "no backup in this mode: the model's session states are lost");
        }
        let s = self.serving.take().expect("checked");
        self.lost.extend(s.in_flight.into_values());
        self.lost.sort_by_key(|f| f.epoch);
        if self.start_failures >= MAX_START_FAILURES {
            tracing::error!(node = %self.cfg.node, attempts = self.start_failures, %reason, "executor cannot start; the node fails its requests");
            self.given_up = true;
            return;
        }
        // Backoff only between starts that never loaded: a crash of a serving executor restarts at once.
        let delay = match self.start_failures {
            0 | 1 => 0,
            k => 100_000u64 << (k - 2),
        };
        self.respawn_at = Some(now + delay);
    }

    fn respawn(&mut self, now: Micros, table: &mut ViewTable, acts: &mut Vec<InferAction>) {
        let Some(at) = self.respawn_at else { return };
        if now < at {
            self.wake(at - now);
            return;
        }
        self.respawn_at = None;
        self.spawn(now, Incarnation(0), table, acts);
    }

    fn watch_health(&mut self, now: Micros, acts: &mut Vec<InferAction>) {
        let d = self.cfg.deadlines;
        let Some(s) = self.serving.as_mut().filter(|s| !s.dead) else {
            return;
        };
        let oldest = s.in_flight.values().map(|f| f.sent).min();
        let exec = s.exec;
        match s.health.check(now, oldest, d) {
            Check::Fine { after_us } => self.wake(after_us),
            Check::Ping { n, after_us } => {
                acts.push(InferAction::Send {
                    exec,
                    cmd: ToExecutor::Ping(n),
                });
                self.wake(after_us);
            }
            Check::Kill { reason } => match s.killed_at {
                None => {
                    s.killed_at = Some(now);
                    acts.push(InferAction::Kill { exec, reason });
                    self.wake(d.answer_us.max(1000));
                }
                // Killed long ago and still no word of its death (a lost event, an
                // executor that was already gone): take it as dead.
                Some(t) if now.saturating_sub(t) > d.answer_us => {
                    let reason = format!("{reason}; killed {} ms ago and its death never reported", (now - t) / 1000);
                    self.events.push_back((exec, ExecEvent::Died { reason }));
                    self.wake(1000);
                }
                Some(t) => self.wake((t + d.answer_us).saturating_sub(now).max(1000)),
            },
        }
    }

    fn submit(&mut self, now: Micros, table: &ViewTable, frontier: Frontier, acts: &mut Vec<InferAction>) {
        let view = table.view();
        if self.given_up {
            // An executor that can never start: answer with typed errors.
            let lost = std::mem::take(&mut self.lost).into_iter().map(|f| (f.epoch, f.requests));
            for (epoch, reqs) in lost.chain(std::mem::take(&mut self.pending)) {
                let mut out = Outputs::default();
                for e in reqs.into_iter().filter(|e| view_check(e.meta.view, view) != ViewCheck::Stale) {
                    let msg = format!("no executor for model {} could be started", self.cfg.node);
                    out.err
                        .push(failure(&self.cfg.node, e.meta, ErrorKind::Unavailable, msg, e.lineage));
                }
                acts.push(InferAction::Output { epoch, out });
            }
            return;
        }
        if self.serving.as_ref().is_none_or(|s| s.dead) {
            // Requests wait for an executor; those of an older view are replayed, so drop them.
            self.pending.retain(|_, reqs| {
                reqs.retain(|e| view_check(e.meta.view, view) != ViewCheck::Stale);
                !reqs.is_empty()
            });
            return;
        }
        for f in std::mem::take(&mut self.lost) {
            self.send_batch(now, f.epoch, f.requests, acts);
        }
        let epochs: Vec<Epoch> = self.pending.keys().copied().collect();
        for epoch in epochs {
            if self.cfg.stateful && !frontier.passed(epoch) {
                break; // Stateful: only complete epochs, in order.
            }
            let requests = self.pending.remove(&epoch).expect("listed");
            let mut fresh = Vec::new();
            let mut keep = Vec::new();
            let mut early = false;
            for env in requests {
                match view_check(env.meta.view, view) {
                    ViewCheck::Stale => {}
                    // Answered already (an earlier view's result was released after the
                    // replay began): a stateful model must not step its session again.
                    ViewCheck::Current if table.is_released(env.meta.seq) => {}
                    ViewCheck::Early => {
                        early = true;
                        keep.push(env);
                    }
                    ViewCheck::Current if !self.cfg.stateful => fresh.push(env),
                    ViewCheck::Current => match self.primary.admit(env.meta.seq) {
                        Admission::Replay(exec) => {
                            let out = Primary::replay(&self.cfg.node, self.cfg.model, env, &exec);
                            // Executions inherited from a backup are held already; our own may not be yet.
                            let current = self.serving.as_ref().map_or(Incarnation(0), |s| s.inc);
                            let wait = (self.cfg.hold_until_durable && exec.inc == current).then_some(exec.epoch);
                            self.deliver(epoch, wait, out, table, acts);
                        }
                        Admission::Wait => keep.push(env),
                        Admission::Execute => fresh.push(env),
                    },
                }
            }
            if self.cfg.stateful {
                fresh.sort_by_key(|e| e.meta.seq);
            }
            if !fresh.is_empty() {
                self.send_batch(now, epoch, fresh, acts);
            }
            if !keep.is_empty() {
                self.pending.insert(epoch, keep);
            }
            if early && self.cfg.stateful {
                break;
            }
        }
    }

    /// Sends `requests` in batches of at most `max_batch`.
    fn send_batch(&mut self, now: Micros, epoch: Epoch, mut requests: Vec<Envelope>, acts: &mut Vec<InferAction>) {
        let max = self.cfg.max_batch.max(1);
        let serving = self.serving.as_mut().expect("checked by caller");
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
            if self.cfg.stateful {
                self.primary.executing(chunk.iter().map(|e| e.meta.seq));
            }
            acts.push(InferAction::Send {
                exec: serving.exec,
                cmd: ToExecutor::Infer(InferRequest { ticket, epoch, items }),
            });
            serving.in_flight.insert(
                ticket,
                InFlight {
                    epoch,
                    sent: now,
                    requests: chunk,
                },
            );
        }
    }

    /// A finished batch: outputs downstream, its delta to the backup.
    fn emit(&mut self, f: InFlight, resp: InferResponse, table: &ViewTable, acts: &mut Vec<InferAction>) {
        let tagged = self.cfg.stateful && self.cfg.replicate;
        let out = if tagged {
            let inc = self.serving.as_ref().map_or(Incarnation(0), |s| s.inc);
            let backup = table.placement(self.cfg.model).backup;
            let (out, delta) = self.primary.executed(
                &self.cfg.node,
                self.cfg.model,
                inc,
                f.epoch,
                backup,
                f.requests,
                resp.outputs,
                resp.delta,
            );
            acts.push(InferAction::Delta { epoch: f.epoch, delta });
            out
        } else {
            if self.cfg.stateful {
                self.primary.done(f.requests.iter().map(|e| e.meta.seq));
            }
            untagged(&self.cfg.node, f.requests, resp.outputs)
        };
        let wait = (tagged && self.cfg.hold_until_durable).then_some(f.epoch);
        self.deliver(f.epoch, wait, out, table, acts);
    }

    /// Sends outputs downstream now, or (stop-and-buffer) once the backup holds epoch `wait`.
    fn deliver(&mut self, epoch: Epoch, wait: Option<Epoch>, out: Outputs, table: &ViewTable, acts: &mut Vec<InferAction>) {
        match wait {
            Some(w) if !table.durable_past(self.cfg.model, w) => self.held.push(HeldOut { epoch, wait: w, out }),
            _ => acts.push(InferAction::Output { epoch, out }),
        }
    }

    /// Stop-and-buffer: releases held outputs whose epoch the backup now holds.
    fn release_held(&mut self, table: &ViewTable, acts: &mut Vec<InferAction>) {
        if self.held.is_empty() {
            return;
        }
        let model = self.cfg.model;
        let (ready, waiting): (Vec<HeldOut>, Vec<HeldOut>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| table.durable_past(model, h.wait));
        self.held = waiting;
        for h in ready {
            acts.push(InferAction::Output {
                epoch: h.epoch,
                out: h.out,
            });
        }
    }
}
