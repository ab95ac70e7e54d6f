//! `Backup`: the backup replica of a stateful model.
//!
//! It applies the primary's [`Delta`]s epoch by epoch — an epoch only once
//! every upstream stateful model's backup holds it (so the backups form a
//! consistent cut, I3) — writes them to RocksDB in one batch per epoch, and
//! holds a capability at the first epoch it does not hold yet: the frontier
//! of its output *is* the model's durable frontier. On a recovery it cuts
//! (sends a [`Cut`] at that frontier), and hands its states, its held
//! executions and its warm spare executor to the `Infer` operator on the same
//! worker, which becomes the new primary.
//!
//! The states live in the backup worker's memory and in RocksDB; the spare
//! executor has the weights loaded so promotion sends it states, not a model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hams_storage::{Batch, Cf, Store};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::control::{committed, ControlRef, Cut, Delta, DeltaBody, Execution, FaultKind, Handoff, Notice, Role};
use super::infer::Spawn;
use super::{now_us, Epoch};
use crate::executor::protocol::SessionState;
use crate::executor::{Event, ExecutorHandle};

/// One committed execution as the verifier reads it (`Cf::Lineage`, key: model, seq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// Session.
    pub session: Option<u64>,
    /// Fingerprint before.
    pub prev_fp: u64,
    /// Fingerprint after.
    pub fp: u64,
    /// Incarnation that executed it.
    pub inc: u32,
    /// Epoch it executed in.
    pub epoch: Epoch,
}

/// Key of a lineage record.
pub fn lineage_key(model: u16, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&model.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Meta key of the seq below which `model`'s lineage records were garbage-collected.
pub fn lineage_horizon_key(model: u16) -> Vec<u8> {
    format!("lineage/horizon/{model}").into_bytes()
}

fn state_key(model: u16, session: u64) -> [u8; 10] {
    lineage_key(model, session)
}

/// How a backup runs.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Graph node name.
    pub node: String,
    /// Graph node index.
    pub index: u16,
    /// This worker's store.
    pub store: Arc<Store>,
    /// fsync each epoch's batch.
    pub sync: bool,
    /// Committed lineage records kept behind the released watermark, for verification.
    pub lineage_retention: u64,
    /// Hold each epoch this long before applying it (a slow backup, for experiments and tests).
    pub apply_delay: Duration,
}

/// The streams of a backup.
pub struct BackupStreams<'scope> {
    /// The durable stream: its frontier is the model's durable frontier; its data are [`Cut`]s.
    pub durable: Stream<'scope, Epoch, Vec<Cut>>,
    /// Fault reports for the coordinator.
    pub notices: Stream<'scope, Epoch, Vec<Notice>>,
}

/// Backs up a stateful model.
pub trait Backup<'scope> {
    /// Applies the deltas in `self` on the model's backup worker, gated by the
    /// durable streams of the stateful models upstream of it.
    fn backup(
        self,
        upstream: Vec<Stream<'scope, Epoch, Vec<Cut>>>,
        config: BackupConfig,
        control: ControlRef,
        spawn: Spawn,
    ) -> BackupStreams<'scope>;
}

/// The backup role for one incarnation.
struct Active {
    inc: u32,
    /// Holds the states of `inc` (incarnation 0 starts empty; later ones need the snapshot).
    synced: bool,
    states: BTreeMap<u64, SessionState>,
    held: HashMap<u64, Execution>,
    /// At the first epoch not held yet (None until the snapshot arrives).
    cap: Option<Capability<Epoch>>,
}

impl<'scope> Backup<'scope> for Stream<'scope, Epoch, Vec<Delta>> {
    fn backup(
        self,
        upstream: Vec<Stream<'scope, Epoch, Vec<Cut>>>,
        config: BackupConfig,
        control: ControlRef,
        spawn: Spawn,
    ) -> BackupStreams<'scope> {
        let scope = self.scope();
        let me = scope.index();
        let mut builder = OperatorBuilder::new("Backup".to_string(), scope);
        let info = builder.operator_info();
        let mut deltas_in = builder.new_input(self, Exchange::new(|d: &Delta| d.to as u64));
        let mut upstream_in: Vec<_> = upstream.into_iter().map(|s| builder.new_input(s.broadcast(), Pipeline)).collect();
        let (durable_out, durable) = builder.new_output::<Vec<Cut>>();
        let (notice_out, notices) = builder.new_output::<Vec<Notice>>();
        let mut durable_out = OutputBuilder::from(durable_out);
        let mut notice_out = OutputBuilder::from(notice_out);
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        let activator = scope.activator_for(info.address.clone());
        control.borrow_mut().subscribe(scope.activator_for(info.address.clone()));

        builder.build(move |mut initial| {
            let mut notice_cap = initial.pop();
            let durable_cap = initial.pop();
            let index = config.index;
            let wake = move |ex: &ExecutorHandle| {
                let a = sync_activator.clone();
                ex.set_wake(Box::new(move || {
                    let _ = a.activate();
                }));
            };
            let node = config.node.clone();
            let spawn_spare = move |wake: &dyn Fn(&ExecutorHandle)| match spawn("backup") {
                Ok(e) => {
                    wake(&e);
                    Some(e)
                }
                Err(e) => {
                    tracing::error!(%node, error = %e, "cannot start the backup's spare executor");
                    None
                }
            };
            let initially_backup = control.borrow().placement(index).backup == me;
            let mut spare = if initially_backup { spawn_spare(&wake) } else { None };
            let mut active = initially_backup.then(|| Active {
                inc: 0,
                synced: true,
                states: BTreeMap::new(),
                held: HashMap::new(),
                cap: durable_cap,
            });
            let mut inbox: BTreeMap<Epoch, (Capability<Epoch>, Vec<Delta>)> = BTreeMap::new();
            let mut arrived: BTreeMap<Epoch, Instant> = BTreeMap::new();
            let mut upstream_cuts: BTreeMap<u16, BTreeMap<u32, Epoch>> = BTreeMap::new();
            let mut cut_upto: Option<u32> = None;
            let mut recovering: Vec<usize> = Vec::new();
            let mut notices: Vec<Notice> = Vec::new();
            let mut last_gc = Instant::now();
            // Lineage records written, oldest first, for retention.
            let mut written: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
            let mut blocked_logged = false;

            move |frontiers| {
                let mut durable_h = durable_out.activate();
                deltas_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    arrived.entry(epoch).or_insert_with(Instant::now);
                    let entry = inbox.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                for input in upstream_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            upstream_cuts.entry(c.model).or_default().insert(c.inc, c.epoch);
                        }
                    });
                }
                // Drop deltas of incarnations that were cut.
                let placement = control.borrow().placement(index).clone();
                inbox.retain(|_, (_, ds)| {
                    ds.retain(|d| d.inc >= placement.inc && cut_upto.is_none_or(|c| d.inc > c));
                    !ds.is_empty()
                });

                // The spare executor.
                if let Some(ex) = spare.as_ref() {
                    let mut died = None;
                    while let Some(ev) = ex.try_event() {
                        match ev {
                            Event::Died { reason } => died = Some(reason),
                            Event::Ready { .. } => {
                                for fault in recovering.drain(..) {
                                    notices.push(Notice::Respawned { fault, at_us: now_us() });
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(reason) = died {
                        tracing::warn!(node = %config.node, %reason, "backup's spare executor died; starting another");
                        spare = spawn_spare(&wake);
                    }
                }

                // Recovery: cut, and hand states and spare to the new primary on this worker.
                let recover = control.borrow().next_recover().cloned();
                if let Some(r) = recover {
                    let mine = r.roles.iter().any(|ro| ro.model == index);
                    let ready = active.as_ref().is_some_and(|a| a.inc == placement.inc && a.synced && a.cap.is_some());
                    if mine && placement.backup == me && ready {
                        let a = active.take().expect("ready");
                        let cap = a.cap.expect("ready");
                        let cut = Cut {
                            view: r.view,
                            model: index,
                            inc: a.inc,
                            epoch: *cap.time(),
                        };
                        tracing::info!(node = %config.node, inc = a.inc, epoch = cut.epoch, sessions = a.states.len(), "backup cut");
                        durable_h.session(&cap).give(cut);
                        cut_upto = Some(a.inc);
                        inbox.retain(|_, (_, ds)| {
                            ds.retain(|d| d.inc > a.inc);
                            !ds.is_empty()
                        });
                        let executor = spare.take();
                        control.borrow_mut().put_handoff(
                            index,
                            Handoff {
                                executor,
                                states: a.states.into_iter().collect(),
                                executions: a.held.into_values().collect(),
                            },
                        );
                    }
                }

                // A new incarnation's backup role.
                if placement.backup == me && placement.inc > 0 && active.as_ref().is_none_or(|a| a.inc < placement.inc) && cut_upto.is_none_or(|c| c < placement.inc) {
                    if spare.is_none() {
                        spare = control.borrow_mut().take_spare(index).inspect(|e| wake(e)).or_else(|| spawn_spare(&wake));
                    }
                    active = Some(Active {
                        inc: placement.inc,
                        synced: false,
                        states: BTreeMap::new(),
                        held: HashMap::new(),
                        cap: None,
                    });
                }

                // Apply complete epochs, in order, within the consistent cut.
                if let Some(a) = active.as_mut() {
                    let delta_frontier = frontiers[0].frontier();
                    let faults_due = |seq| control.borrow().due_faults(index, Role::Backup, seq);
                    while let Some((&epoch, _)) = inbox.iter().next() {
                        if delta_frontier.less_equal(&epoch) || frontiers[1..].iter().any(|f| f.frontier().less_equal(&epoch)) {
                            break;
                        }
                        if let Some(wait) = arrived.get(&epoch).and_then(|t| config.apply_delay.checked_sub(t.elapsed())) {
                            if !wait.is_zero() {
                                activator.activate_after(wait);
                                break;
                            }
                        }
                        let (ecap, ds) = inbox.first_key_value().map(|(_, v)| v).expect("present");
                        if !a.synced && !ds.iter().any(|d| d.inc == a.inc && matches!(d.body, DeltaBody::Snapshot { .. })) {
                            break;
                        }
                        // An execution that consumed an upstream orphan is itself an orphan:
                        // stop here; the recovery that made the upstream orphan cuts us too.
                        let orphan = ds.iter().flat_map(|d| match &d.body {
                            DeltaBody::Exec { executions, .. } => executions.iter().flat_map(|e| e.input_lineage.iter()).collect::<Vec<_>>(),
                            DeltaBody::Snapshot { .. } => Vec::new(),
                        })
                        .any(|t| upstream_cuts.get(&t.model).is_some_and(|cuts| committed(cuts, |_| true, t.incarnation, t.epoch) == Some(false)));
                        if orphan {
                            if !blocked_logged {
                                tracing::info!(node = %config.node, epoch, "holding: delta depends on an upstream orphan");
                                blocked_logged = true;
                            }
                            break;
                        }
                        let ecap = ecap.clone();
                        let (_, (_, ds)) = inbox.pop_first().expect("present");
                        arrived.remove(&epoch);
                        let mut batch = Batch::new();
                        let mut top_seq = None;
                        for d in ds.into_iter().filter(|d| d.inc == a.inc) {
                            match d.body {
                                DeltaBody::Snapshot { states, executions } => {
                                    a.states = states.into_iter().collect();
                                    a.held = executions.into_iter().map(|e| (e.seq, e)).collect();
                                    a.synced = true;
                                    let prefix = index.to_be_bytes();
                                    batch.delete_range(&config.store, Cf::State, &prefix, &(index + 1).to_be_bytes());
                                    for (s, st) in &a.states {
                                        batch.put(&config.store, Cf::State, &state_key(index, *s), st);
                                    }
                                    if a.cap.is_none() {
                                        a.cap = Some(ecap.clone());
                                    }
                                }
                                DeltaBody::Exec { states, executions } => {
                                    tracing::trace!(node = %config.node, epoch, states = states.len(), live = states.iter().filter(|s| s.1.is_some()).count(), held = a.states.len(), executions = executions.len(), "applying delta");
                                    for (s, st) in states {
                                        match st {
                                            Some(st) => {
                                                batch.put(&config.store, Cf::State, &state_key(index, s), &st);
                                                a.states.insert(s, st);
                                            }
                                            None => {
                                                batch.delete(&config.store, Cf::State, &state_key(index, s));
                                                a.states.remove(&s);
                                            }
                                        }
                                    }
                                    for e in executions {
                                        if e.fp != 0 {
                                            let rec = LineageRecord {
                                                session: e.session,
                                                prev_fp: e.prev_fp,
                                                fp: e.fp,
                                                inc: e.inc,
                                                epoch: e.epoch,
                                            };
                                            batch.put(&config.store, Cf::Lineage, &lineage_key(index, e.seq), &rec);
                                            written.push_back(e.seq);
                                        }
                                        top_seq = top_seq.max(Some(e.seq));
                                        a.held.insert(e.seq, e);
                                    }
                                }
                            }
                        }
                        if let Err(e) = config.store.commit(batch, config.sync) {
                            // Not durable: the frontier stays here, results wait, and we retry.
                            tracing::error!(node = %config.node, error = %e, "backup write failed; holding");
                            break;
                        }
                        blocked_logged = false;
                        if let Some(seq) = top_seq {
                            for fault in faults_due(seq) {
                                let kind = control.borrow().faults[fault].kind;
                                if let Some(ex) = spare.as_ref() {
                                    tracing::warn!(executor = ex.name(), ?kind, seq, "injecting fault");
                                    ex.signal(if kind == FaultKind::Kill { libc::SIGKILL } else { libc::SIGSTOP });
                                    recovering.push(fault);
                                    control.borrow_mut().fired.insert(fault);
                                    notices.push(Notice::Injected { fault, at_us: now_us() });
                                    if kind == FaultKind::Hang {
                                        // A hung spare would only be found at promotion; replace it now.
                                        ex.signal(libc::SIGKILL);
                                    }
                                }
                            }
                        }
                    }
                    // The durable frontier: the first epoch not held.
                    if let Some(cap) = a.cap.as_mut() {
                        let next = inbox.keys().next().copied().into_iter().chain(delta_frontier.iter().copied()).min();
                        match next {
                            Some(t) if t > *cap.time() => cap.downgrade(&t),
                            None => a.cap = None,
                            _ => {}
                        }
                    }
                    if last_gc.elapsed() > Duration::from_millis(200) {
                        last_gc = Instant::now();
                        let ctl = control.borrow();
                        a.held.retain(|seq, _| !ctl.is_released(*seq));
                        let p = ctl.partitions();
                        let released_below = ctl.watermarks().iter().min().copied().unwrap_or(0) * p;
                        let keep_from = released_below.saturating_sub(config.lineage_retention);
                        let mut gc = Batch::new();
                        while written.front().is_some_and(|s| *s < keep_from) {
                            let seq = written.pop_front().expect("checked");
                            gc.delete(&config.store, Cf::Lineage, &lineage_key(index, seq));
                        }
                        if !gc.is_empty() {
                            // The verifier cannot check tags of executions below this horizon.
                            gc.put(&config.store, Cf::Meta, &lineage_horizon_key(index), &keep_from);
                            let _ = config.store.commit(gc, false);
                        }
                    }
                }
                if !notices.is_empty() {
                    if let Some(nc) = notice_cap.as_ref() {
                        notice_out.activate().session(nc).give_iterator(notices.drain(..));
                    }
                }
                arrived.retain(|e, _| inbox.contains_key(e));
                let ended = frontiers[0].frontier().is_empty() && inbox.is_empty();
                if ended {
                    notice_cap = None;
                    spare = None;
                    if let Some(a) = active.as_mut() {
                        a.cap = None;
                    }
                } else if let (Some(t), Some(nc)) = (frontiers[0].frontier().iter().min(), notice_cap.as_mut()) {
                    if nc.time() < t {
                        nc.downgrade(t);
                    }
                }
                if spare.is_some() {
                    activator.activate_after(Duration::from_millis(100));
                }
            }
        });
        BackupStreams { durable, notices }
    }
}
