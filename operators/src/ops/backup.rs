//! `Backup`: the backup replica of a stateful model.
//!
//! It applies the primary's [`Delta`]s epoch by epoch — an epoch only once
//! every upstream stateful model's backup holds it (so the backups form a
//! consistent cut, I3) — persists them to RocksDB, and holds a capability at
//! the first epoch it does not hold yet: the frontier of its output *is* the
//! model's durable frontier. On a recovery it cuts (sends a [`Cut`] at that
//! frontier) and hands its states, its held executions and its warm spare
//! executor to the `Infer` operator on the same worker, the new primary.
//!
//! The states live in the backup worker's memory and in RocksDB; the spare
//! executor has the weights loaded, so promotion sends it states, not a model.
//! With [`Cadence::Checkpoint`] the same operator is a periodic checkpointer
//! instead (the `checkpoint` mode): it sits beside the primary, has no spare,
//! and its frontier advances only when a full checkpoint is written.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
use timely::progress::frontier::MutableAntichain;

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

/// When the backup's state becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// Every epoch, as soon as it is applied (HAMS).
    EveryEpoch,
    /// Every interval, as a full checkpoint (checkpoint-replay).
    Checkpoint(Duration),
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
    /// Committed lineage records kept behind the released watermark, for verification.
    pub lineage_retention: u64,
    /// Hold each epoch this long before applying it (a slow backup, for experiments and tests).
    pub apply_delay: Duration,
    /// When applied state counts as durable.
    pub cadence: Cadence,
    /// Keep a warm spare executor (model loaded) for instant promotion.
    pub warm_spare: bool,
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

/// States and held executions.
#[derive(Clone, Default)]
struct Image {
    states: BTreeMap<u64, SessionState>,
    held: HashMap<u64, Execution>,
}

/// The backup role for one incarnation.
struct Active {
    inc: u32,
    /// Holds the states of `inc` (incarnation 0 starts empty; later ones need the snapshot).
    synced: bool,
    /// Everything applied.
    live: Image,
    /// What is durable, when that lags `live` (checkpoint cadence).
    checkpoint: Option<Image>,
    /// Applied but not yet persisted.
    dirty_states: BTreeMap<u64, Option<SessionState>>,
    dirty_lineage: Vec<(u64, LineageRecord)>,
    /// At the first epoch not durable (None until the snapshot arrives).
    cap: Option<Capability<Epoch>>,
    last_checkpoint: Instant,
}

impl Active {
    fn new(inc: u32, synced: bool, cap: Option<Capability<Epoch>>) -> Self {
        Active {
            inc,
            synced,
            live: Image::default(),
            checkpoint: None,
            dirty_states: BTreeMap::new(),
            dirty_lineage: Vec::new(),
            cap,
            last_checkpoint: Instant::now(),
        }
    }

    /// Takes a snapshot as the whole state: the backup is synced, durable from `cap` on.
    fn adopt(&mut self, states: Vec<(u64, SessionState)>, executions: Vec<Execution>, cap: Capability<Epoch>) {
        self.live.states = states.into_iter().collect();
        self.live.held = executions.into_iter().map(|e| (e.seq, e)).collect();
        self.dirty_states = self.live.states.iter().map(|(s, st)| (*s, Some(st.clone()))).collect();
        self.synced = true;
        if self.cap.is_none() {
            self.cap = Some(cap);
        }
    }

    /// The image a promotion hands over: what is durable.
    fn durable_image(self) -> Image {
        match self.checkpoint {
            Some(c) => c,
            None => self.live,
        }
    }
}

type DurableSession<'a, 'b> =
    timely::dataflow::operators::generic::Session<'a, 'b, Epoch, timely::container::CapacityContainerBuilder<Vec<Cut>>, Capability<Epoch>>;

struct State {
    config: BackupConfig,
    control: ControlRef,
    spawn: Spawn,
    me: usize,
    spare: Option<ExecutorHandle>,
    active: Option<Active>,
    inbox: BTreeMap<Epoch, (Capability<Epoch>, Vec<Delta>)>,
    arrived: BTreeMap<Epoch, Instant>,
    upstream_cuts: BTreeMap<u16, BTreeMap<u32, Epoch>>,
    cut_upto: Option<u32>,
    recovering: Vec<usize>,
    notices: Vec<Notice>,
    last_gc: Instant,
    /// Lineage records written, oldest first, for retention.
    written: VecDeque<u64>,
    blocked_logged: bool,
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
            let wake = move |ex: &ExecutorHandle| {
                let a = sync_activator.clone();
                ex.set_wake(Box::new(move || {
                    let _ = a.activate();
                }));
            };
            let initially_backup = control.borrow().placement(config.index).backup == me;
            let mut st = State {
                config,
                control,
                spawn,
                me,
                spare: None,
                active: initially_backup.then(|| Active::new(0, true, durable_cap)),
                inbox: BTreeMap::new(),
                arrived: BTreeMap::new(),
                upstream_cuts: BTreeMap::new(),
                cut_upto: None,
                recovering: Vec::new(),
                notices: Vec::new(),
                last_gc: Instant::now(),
                written: VecDeque::new(),
                blocked_logged: false,
            };
            if initially_backup {
                st.spawn_spare(&wake);
            }
            move |frontiers| {
                let mut durable_h = durable_out.activate();
                deltas_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    st.arrived.entry(epoch).or_insert_with(Instant::now);
                    let entry = st.inbox.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                for input in upstream_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            st.upstream_cuts.entry(c.model).or_default().insert(c.inc, c.epoch);
                        }
                    });
                }
                st.drop_cut_deltas();
                st.spare_events(&wake);
                st.maybe_cut(&mut durable_h);
                st.maybe_take_role(&wake);
                st.apply(frontiers, &activator);
                st.gc();
                if !st.notices.is_empty() {
                    if let Some(nc) = notice_cap.as_ref() {
                        notice_out.activate().session(nc).give_iterator(st.notices.drain(..));
                    }
                }
                st.arrived.retain(|e, _| st.inbox.contains_key(e));
                if frontiers[0].frontier().is_empty() && st.inbox.is_empty() {
                    // The stream has ended.
                    if let (Some(s), Some(nc)) = (st.spare.take(), notice_cap.as_ref()) {
                        let memory = Notice::Memory {
                            executor: s.name().to_string(),
                            mb: s.peak_rss_mb(),
                        };
                        notice_out.activate().session(nc).give(memory);
                    }
                    notice_cap = None;
                    if let Some(a) = st.active.as_mut() {
                        a.cap = None;
                    }
                } else if let (Some(t), Some(nc)) = (frontiers[0].frontier().iter().min(), notice_cap.as_mut()) {
                    if nc.time() < t {
                        nc.downgrade(t);
                    }
                }
                if st.spare.is_some() || matches!(st.config.cadence, Cadence::Checkpoint(_)) {
                    activator.activate_after(Duration::from_millis(100));
                }
            }
        });
        BackupStreams { durable, notices }
    }
}

impl State {
    fn spawn_spare(&mut self, wake: &dyn Fn(&ExecutorHandle)) {
        if !self.config.warm_spare {
            return;
        }
        match (self.spawn)("backup") {
            Ok(e) => {
                wake(&e);
                self.spare = Some(e);
            }
            Err(e) => tracing::error!(node = %self.config.node, error = %e, "cannot start the backup's spare executor"),
        }
    }

    /// Deltas of incarnations that were cut are orphans.
    fn drop_cut_deltas(&mut self) {
        let inc = self.control.borrow().placement(self.config.index).inc;
        let cut = self.cut_upto;
        self.inbox.retain(|_, (_, ds)| {
            ds.retain(|d| d.inc >= inc && cut.is_none_or(|c| d.inc > c));
            !ds.is_empty()
        });
    }

    fn spare_events(&mut self, wake: &dyn Fn(&ExecutorHandle)) {
        let Some(ex) = self.spare.as_ref() else { return };
        let mut died = None;
        while let Some(ev) = ex.try_event() {
            match ev {
                Event::Died { reason } => died = Some(reason),
                Event::Ready { .. } => {
                    for fault in self.recovering.drain(..) {
                        self.notices.push(Notice::Respawned { fault, at_us: now_us() });
                    }
                }
                _ => {}
            }
        }
        if let Some(reason) = died {
            tracing::warn!(node = %self.config.node, %reason, "backup's spare executor died; starting another");
            self.spare = None;
            self.spawn_spare(wake);
        }
    }

    /// A new backup whose primary fails before the backup has synced will never see
    /// the epochs after its snapshot complete (the dead primary holds them). The
    /// snapshot is the previous incarnation's cut image, all that is durable of this
    /// one, so the backup adopts it at once and can cut there.
    fn adopt_waiting_snapshot(&mut self, inc: u32) {
        let Some(a) = self.active.as_mut().filter(|a| a.inc == inc && !a.synced) else {
            return;
        };
        let found = self.inbox.iter_mut().find_map(|(epoch, (cap, ds))| {
            let i = ds
                .iter()
                .position(|d| d.inc == inc && matches!(d.body, DeltaBody::Snapshot { .. }))?;
            Some((*epoch, cap.clone(), ds.remove(i)))
        });
        let Some((epoch, cap, snapshot)) = found else { return };
        if let DeltaBody::Snapshot { states, executions } = snapshot.body {
            tracing::info!(node = %self.config.node, inc, epoch, "primary failed before its backup synced; adopting its snapshot");
            a.adopt(states, executions, cap);
            Self::persist(&self.config, a, &mut self.written);
        }
        self.inbox.retain(|_, (_, ds)| !ds.is_empty());
    }

    /// Recovery: cut, and hand states and spare to the new primary on this worker.
    fn maybe_cut(
        &mut self,
        durable: &mut timely::dataflow::operators::generic::OutputBuilderSession<
            '_,
            Epoch,
            timely::container::CapacityContainerBuilder<Vec<Cut>>,
        >,
    ) {
        let index = self.config.index;
        let Some(r) = self.control.borrow().next_recover().cloned() else {
            return;
        };
        let placement = self.control.borrow().placement(index).clone();
        let mine = r.roles.iter().any(|ro| ro.model == index);
        if mine && placement.backup == self.me {
            self.adopt_waiting_snapshot(placement.inc);
        }
        let ready = self
            .active
            .as_ref()
            .is_some_and(|a| a.inc == placement.inc && a.synced && a.cap.is_some());
        if !(mine && placement.backup == self.me && ready) {
            return;
        }
        let mut a = self.active.take().expect("ready");
        let cap = a.cap.take().expect("ready");
        let cut = Cut {
            view: r.view,
            model: index,
            inc: a.inc,
            epoch: *cap.time(),
        };
        let image = a.durable_image();
        tracing::info!(node = %self.config.node, inc = cut.inc, epoch = cut.epoch, sessions = image.states.len(), "backup cut");
        let mut session: DurableSession<'_, '_> = durable.session(&cap);
        session.give(cut);
        drop(session);
        self.cut_upto = Some(cut.inc);
        self.drop_cut_deltas();
        let executor = self.spare.take();
        self.control.borrow_mut().put_handoff(
            index,
            Handoff {
                executor,
                states: image.states.into_iter().collect(),
                executions: image.held.into_values().collect(),
            },
        );
    }

    /// Takes the backup role of a new incarnation placed on this worker.
    fn maybe_take_role(&mut self, wake: &dyn Fn(&ExecutorHandle)) {
        let index = self.config.index;
        let placement = self.control.borrow().placement(index).clone();
        let stale = self.active.as_ref().is_none_or(|a| a.inc < placement.inc);
        if placement.backup == self.me && placement.inc > 0 && stale && self.cut_upto.is_none_or(|c| c < placement.inc) {
            if self.spare.is_none() && self.config.warm_spare {
                let left = self.control.borrow_mut().take_spare(index);
                match left {
                    Some(e) => {
                        wake(&e);
                        self.spare = Some(e);
                    }
                    None => self.spawn_spare(wake),
                }
            }
            self.active = Some(Active::new(placement.inc, false, None));
        }
    }

    /// Applies complete epochs in order, within the consistent cut, and makes them durable.
    fn apply(&mut self, frontiers: &[MutableAntichain<Epoch>], activator: &timely::scheduling::Activator) {
        let index = self.config.index;
        let Some(a) = self.active.as_mut() else { return };
        let delta_frontier = frontiers[0].frontier();
        let mut applied_any = false;
        let mut fault_seq = None;
        while let Some((&epoch, _)) = self.inbox.iter().next() {
            if delta_frontier.less_equal(&epoch) || frontiers[1..].iter().any(|f| f.frontier().less_equal(&epoch)) {
                break;
            }
            if let Some(wait) = self
                .arrived
                .get(&epoch)
                .and_then(|t| self.config.apply_delay.checked_sub(t.elapsed()))
            {
                if !wait.is_zero() {
                    activator.activate_after(wait);
                    break;
                }
            }
            let (ecap, ds) = self.inbox.first_key_value().map(|(_, v)| v).expect("present");
            if !a.synced && !ds.iter().any(|d| d.inc == a.inc && matches!(d.body, DeltaBody::Snapshot { .. })) {
                break;
            }
            // An execution that consumed an upstream orphan is itself an orphan:
            // stop here; the recovery that made the upstream orphan cuts us too.
            let cuts = &self.upstream_cuts;
            let orphan = ds
                .iter()
                .filter_map(|d| match &d.body {
                    DeltaBody::Exec { executions, .. } => Some(executions),
                    DeltaBody::Snapshot { .. } => None,
                })
                .flatten()
                .flat_map(|e| e.input_lineage.iter())
                .any(|t| {
                    cuts.get(&t.model)
                        .is_some_and(|c| committed(c, |_| true, t.incarnation, t.epoch) == Some(false))
                });
            if orphan {
                if !self.blocked_logged {
                    tracing::info!(node = %self.config.node, epoch, "holding: delta depends on an upstream orphan");
                    self.blocked_logged = true;
                }
                break;
            }
            self.blocked_logged = false;
            let ecap = ecap.clone();
            let (_, (_, ds)) = self.inbox.pop_first().expect("present");
            self.arrived.remove(&epoch);
            let mut top_seq = None;
            let inc = a.inc;
            for d in ds.into_iter().filter(|d| d.inc == inc) {
                match d.body {
                    DeltaBody::Snapshot { states, executions } => a.adopt(states, executions, ecap.clone()),
                    DeltaBody::Exec { states, executions } => {
                        for (s, st) in states {
                            match &st {
                                Some(st) => a.live.states.insert(s, st.clone()),
                                None => a.live.states.remove(&s),
                            };
                            a.dirty_states.insert(s, st);
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
                                a.dirty_lineage.push((e.seq, rec));
                            }
                            top_seq = top_seq.max(Some(e.seq));
                            a.live.held.insert(e.seq, e);
                        }
                    }
                }
            }
            applied_any = true;
            fault_seq = fault_seq.max(top_seq);
            if self.config.cadence == Cadence::EveryEpoch && !Self::persist(&self.config, a, &mut self.written) {
                break;
            }
        }
        // The durable frontier: the first epoch not durable.
        let next = self
            .inbox
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(delta_frontier.iter().copied())
            .min();
        let durable_now = match self.config.cadence {
            Cadence::EveryEpoch => true,
            Cadence::Checkpoint(every) => {
                let due = a.last_checkpoint.elapsed() >= every || next.is_none();
                if due && a.synced && (applied_any || !a.dirty_states.is_empty() || !a.dirty_lineage.is_empty() || a.checkpoint.is_none()) {
                    if Self::persist(&self.config, a, &mut self.written) {
                        a.checkpoint = Some(a.live.clone());
                        a.last_checkpoint = Instant::now();
                        tracing::debug!(node = %self.config.node, sessions = a.live.states.len(), "checkpoint written");
                        true
                    } else {
                        false
                    }
                } else {
                    due && a.synced
                }
            }
        };
        if let (true, Some(cap)) = (durable_now, a.cap.as_mut()) {
            match next {
                Some(t) if t > *cap.time() => cap.downgrade(&t),
                None => a.cap = None,
                _ => {}
            }
        }
        let _ = index;
        if let Some(cap) = a.cap.as_ref() {
            let lag_bytes: usize = self
                .inbox
                .values()
                .flat_map(|(_, ds)| ds.iter())
                .map(|d| match &d.body {
                    DeltaBody::Exec { states, executions } => {
                        states
                            .iter()
                            .map(|(_, s)| s.as_ref().map_or(8, |s| 16 + 4 * s.state.len()))
                            .sum::<usize>()
                            + executions
                                .iter()
                                .map(|e| 48 + e.outcome.as_ref().map_or(0, |v| 4 * v.len()))
                                .sum::<usize>()
                    }
                    DeltaBody::Snapshot { states, .. } => states.iter().map(|(_, s)| 16 + 4 * s.state.len()).sum(),
                })
                .sum();
            crate::metrics::metrics().backup(&self.config.node, *cap.time(), self.inbox.len() as u64, lag_bytes as u64);
        }
        if let Some(seq) = fault_seq {
            self.inject_faults(seq);
        }
    }

    /// Writes applied-but-unpersisted changes in one batch; false if the write failed.
    fn persist(config: &BackupConfig, a: &mut Active, written: &mut VecDeque<u64>) -> bool {
        let index = config.index;
        let mut batch = Batch::new();
        for (s, st) in &a.dirty_states {
            match st {
                Some(st) => batch.put(&config.store, Cf::State, &state_key(index, *s), st),
                None => batch.delete(&config.store, Cf::State, &state_key(index, *s)),
            }
        }
        for (seq, rec) in &a.dirty_lineage {
            batch.put(&config.store, Cf::Lineage, &lineage_key(index, *seq), rec);
        }
        // No fsync: the backup's memory is what the protocol relies on (F1);
        // RocksDB's WAL keeps it across a process crash.
        if let Err(e) = config.store.commit(batch, false) {
            tracing::error!(node = %config.node, error = %e, "backup write failed; holding");
            return false;
        }
        a.dirty_states.clear();
        written.extend(a.dirty_lineage.drain(..).map(|(seq, _)| seq));
        true
    }

    fn inject_faults(&mut self, seq: u64) {
        let due = self.control.borrow().due_faults(self.config.index, Role::Backup, seq);
        for fault in due {
            let kind = self.control.borrow().faults[fault].kind;
            let Some(ex) = self.spare.as_ref() else { continue };
            tracing::warn!(executor = ex.name(), ?kind, seq, "injecting fault");
            ex.signal(if kind == FaultKind::Kill { libc::SIGKILL } else { libc::SIGSTOP });
            if kind == FaultKind::Hang {
                // A hung spare would only be found at promotion; replace it now.
                ex.signal(libc::SIGKILL);
            }
            self.recovering.push(fault);
            self.control.borrow_mut().fired.insert(fault);
            self.notices.push(Notice::Injected { fault, at_us: now_us() });
        }
    }

    /// Forgets held executions once released, and lineage records past retention.
    fn gc(&mut self) {
        if self.last_gc.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_gc = Instant::now();
        let index = self.config.index;
        let ctl = self.control.borrow();
        if let Some(a) = self.active.as_mut() {
            a.live.held.retain(|seq, _| !ctl.is_released(*seq));
            if let Some(c) = a.checkpoint.as_mut() {
                c.held.retain(|seq, _| !ctl.is_released(*seq));
            }
        }
        let released_below = ctl.watermarks().iter().min().copied().unwrap_or(0) * ctl.partitions();
        let keep_from = released_below.saturating_sub(self.config.lineage_retention);
        let mut gc = Batch::new();
        while self.written.front().is_some_and(|s| *s < keep_from) {
            let seq = self.written.pop_front().expect("checked");
            gc.delete(&self.config.store, Cf::Lineage, &lineage_key(index, seq));
        }
        if !gc.is_empty() {
            // The verifier cannot check tags of executions below this horizon.
            gc.put(&self.config.store, Cf::Meta, &lineage_horizon_key(index), &keep_from);
            let _ = self.config.store.commit(gc, false);
        }
    }
}
