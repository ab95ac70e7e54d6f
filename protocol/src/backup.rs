//! The backup's rules for a stateful model.
//!
//! A backup applies its primary's [`Delta`]s epoch by epoch, and applies
//! epoch `e` only when
//! - every delta of `e` has arrived (the delta stream's frontier passed `e`),
//! - every upstream stateful model's backup holds `e` (their durable
//!   frontiers passed `e`): so the backups always form a consistent cut (I3),
//! - and no execution in it consumed an upstream orphan (the recovery that
//!   orphaned the upstream execution cuts this model too).
//!
//! It writes what it applied durably, then moves its *durable frontier*:
//! the first epoch it does not hold. A result is released only once the
//! durable frontier of every stateful model in its lineage has passed the
//! result's epoch.
//!
//! On a view change that names its model, the backup *cuts*: it announces
//! its durable frontier as the cut epoch ([`Cut`]; everything its primary
//! ran from there on is an orphan) and hands its states, its held
//! executions and its warm spare executor to the new primary on its worker.
//! A backup of a new incarnation starts unsynced and becomes synced when the
//! new primary's snapshot arrives. If that primary dies first, the backup
//! adopts the snapshot it already has (the previous cut, all that is durable
//! of the incarnation) so the next view change can cut there.
//!
//! With [`Cadence::Checkpoint`] the same rules run as a periodic
//! checkpointer beside the primary (the `checkpoint` baseline): the durable
//! frontier moves only when a full checkpoint is written.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::commit::Cuts;
use crate::exec::ExecEvent;
use crate::frontier::Frontier;
use crate::ids::{Epoch, ExecId, Incarnation, Micros, ModelId, Seq, SessionId, WorkerId};
use crate::infer::MAX_START_FAILURES;
use crate::records::{Cut, Delta, DeltaBody, Execution, SessionState};
use crate::view::{Handoff, ViewTable};

/// When the backup's state becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// Every epoch, as soon as it is applied (HAMS).
    EveryEpoch,
    /// Every interval, as a full checkpoint (checkpoint-replay).
    Checkpoint {
        /// Interval.
        every_us: Micros,
    },
}

/// How a backup runs.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Graph node name.
    pub node: String,
    /// The model.
    pub model: ModelId,
    /// Committed lineage records kept behind the released watermark, for the checker.
    pub lineage_retention: u64,
    /// Hold each epoch this long before applying it (a slow backup, for experiments and tests).
    pub apply_delay_us: Micros,
    /// When applied state counts as durable.
    pub cadence: Cadence,
    /// Keep a warm spare executor (model loaded) for instant promotion.
    pub warm_spare: bool,
}

/// One durable write of a backup: applied but not yet persisted changes.
#[derive(Debug)]
pub struct Write<'a> {
    /// The model.
    pub model: ModelId,
    /// The incarnation this backup holds.
    pub inc: Incarnation,
    /// Drop every stored state of the model first (a snapshot replaces them all).
    pub reset: bool,
    /// Session states to store (`None`: delete).
    pub states: &'a BTreeMap<SessionId, Option<SessionState>>,
    /// Committed executions: what a promotion or a restart replays from, and the checker reads.
    pub lineage: &'a [Execution],
    /// Lineage records past retention, to delete.
    pub forget: &'a [Seq],
    /// Lineage below this `seq` is gone (the checker cannot check it).
    pub horizon: Option<Seq>,
}

/// Where a backup's writes go. The shell writes RocksDB; the simulator a
/// simulated disk. An error leaves the changes pending (retried later).
pub trait Durable {
    /// Makes `w` durable, atomically.
    fn write(&mut self, w: &Write<'_>) -> Result<(), String>;
}

/// What the backup's shell must do.
#[derive(Debug)]
pub enum BackupAction {
    /// Start a warm spare executor.
    Spawn(ExecId),
    /// Route `exec`'s events here (a spare left by a demoted primary).
    Adopt(ExecId),
    /// Shut the spare down (the stream ended).
    Drop(ExecId),
    /// Emit `cut` on the durable stream at its epoch (the held durable
    /// capability), then release that capability.
    Cut(Cut),
    /// Executions up to this `seq` were applied (for fault injection).
    Applied(Seq),
}

/// States and held executions.
#[derive(Debug, Clone, Default)]
struct Image {
    states: BTreeMap<SessionId, SessionState>,
    held: BTreeMap<Seq, Execution>,
}

/// The backup role for one incarnation.
#[derive(Debug)]
struct Active {
    inc: Incarnation,
    /// Holds the states of `inc` (incarnation 0 starts empty; later ones need the snapshot).
    synced: bool,
    /// Everything applied.
    live: Image,
    /// What is durable, when that lags `live` (checkpoint cadence).
    checkpoint: Option<Image>,
    /// Applied but not yet persisted.
    dirty_states: BTreeMap<SessionId, Option<SessionState>>,
    dirty_lineage: Vec<Execution>,
    /// The next write replaces every stored state (a fresh or adopted image).
    reset: bool,
    /// The durable frontier: the first epoch not durable (None until synced, or once ended).
    durable_at: Option<Epoch>,
    last_checkpoint: Micros,
}

impl Active {
    fn new(inc: Incarnation, synced: bool, durable_at: Option<Epoch>, now: Micros) -> Self {
        Active {
            inc,
            synced,
            live: Image::default(),
            checkpoint: None,
            dirty_states: BTreeMap::new(),
            dirty_lineage: Vec::new(),
            // A synced start (incarnation 0) owns the store's states from the first write.
            reset: synced,
            durable_at,
            last_checkpoint: now,
        }
    }

    /// Takes a snapshot at `epoch` as the whole state: synced, durable from `epoch` on.
    fn adopt(&mut self, states: Vec<(SessionId, SessionState)>, executions: Vec<Execution>, epoch: Epoch) {
        self.live.states = states.into_iter().collect();
        self.live.held = executions.into_iter().map(|e| (e.seq, e)).collect();
        self.dirty_states = self.live.states.iter().map(|(s, st)| (*s, Some(st.clone()))).collect();
        // The held executions must be on this backup's disk too: a restart replays from them.
        self.dirty_lineage.extend(self.live.held.values().cloned());
        self.reset = true;
        self.synced = true;
        self.durable_at.get_or_insert(epoch);
    }

    fn is_clean(&self) -> bool {
        self.dirty_states.is_empty() && self.dirty_lineage.is_empty() && !self.reset
    }

    /// The image a promotion hands over: what is durable.
    fn durable_image(self) -> Image {
        self.checkpoint.unwrap_or(self.live)
    }
}

/// The frontiers a backup looks at.
#[derive(Debug, Clone, Copy)]
pub struct Frontiers<'a> {
    /// Of its delta input.
    pub deltas: Frontier,
    /// Of each upstream stateful model's durable stream.
    pub upstream: &'a [Frontier],
}

/// One worker's instance of a model's backup.
#[derive(Debug)]
pub struct BackupCore {
    cfg: BackupConfig,
    me: WorkerId,
    spare: Option<ExecId>,
    spare_failures: u32,
    spare_respawn_at: Option<Micros>,
    spare_ready: bool,
    active: Option<Active>,
    inbox: BTreeMap<Epoch, Vec<Delta>>,
    arrived: BTreeMap<Epoch, Micros>,
    upstream_cuts: Cuts,
    cut_upto: Option<Incarnation>,
    blocked_logged: bool,
    last_gc: Micros,
    /// Lineage records written, oldest first, for retention.
    written: VecDeque<Seq>,
    ended: bool,
}

impl BackupCore {
    /// The backup of `cfg.model` on worker `me`; it is the backup of
    /// incarnation 0 if the initial placement says so.
    pub fn new(cfg: BackupConfig, me: WorkerId, table: &ViewTable, now: Micros) -> Self {
        // A later incarnation (a restart) starts unsynced, taking its role like any new backup.
        let p = table.roles(cfg.model);
        let initially = p.backup == me && p.inc == Incarnation(0);
        BackupCore {
            active: initially.then(|| Active::new(Incarnation(0), true, Some(Epoch(0)), now)),
            cfg,
            me,
            spare: None,
            spare_failures: 0,
            spare_respawn_at: None,
            spare_ready: false,
            inbox: BTreeMap::new(),
            arrived: BTreeMap::new(),
            upstream_cuts: Cuts::default(),
            cut_upto: None,
            blocked_logged: false,
            last_gc: now,
            written: VecDeque::new(),
            ended: false,
        }
    }

    /// A delta arrived at `epoch`.
    pub fn delta(&mut self, epoch: Epoch, d: Delta, now: Micros) {
        self.arrived.entry(epoch).or_insert(now);
        self.inbox.entry(epoch).or_default().push(d);
    }

    /// A cut arrived on an upstream model's durable stream.
    pub fn upstream_cut(&mut self, c: &Cut) {
        self.upstream_cuts.on_cut(c);
    }

    /// Executions of upstream `model` below incarnation `floor` are committed (see [`crate::restart`]).
    pub fn upstream_floor(&mut self, model: ModelId, floor: Incarnation) {
        self.upstream_cuts.floor(model, floor);
    }

    /// The spare executor reported something; true when it became ready (for telemetry).
    pub fn event(&mut self, exec: ExecId, ev: ExecEvent, now: Micros) -> bool {
        if self.spare != Some(exec) {
            return false;
        }
        match ev {
            ExecEvent::Ready => {
                self.spare_failures = 0;
                self.spare_ready = true;
                true
            }
            ExecEvent::Died { reason } => {
                self.spare = None;
                if !self.spare_ready {
                    self.spare_failures += 1;
                }
                if self.spare_failures >= MAX_START_FAILURES {
                    tracing::error!(node = %self.cfg.node, %reason, "the backup's spare executor cannot start; promotion will start one");
                } else {
                    tracing::warn!(node = %self.cfg.node, %reason, "backup's spare executor died; starting another");
                    let delay = match self.spare_failures {
                        0 | 1 => 0,
                        k => 100_000u64 << (k - 2),
                    };
                    self.spare_respawn_at = Some(now + delay);
                }
                false
            }
            _ => false,
        }
    }

    /// The spare executor, if any.
    pub fn spare(&self) -> Option<ExecId> {
        self.spare
    }

    /// The durable frontier this backup holds a capability for (its own part
    /// of the model's durable frontier).
    pub fn durable_at(&self) -> Option<Epoch> {
        self.active.as_ref().and_then(|a| a.durable_at)
    }

    /// Epochs of deltas waiting to be applied.
    pub fn inbox(&self) -> impl Iterator<Item = Epoch> + '_ {
        self.inbox.keys().copied()
    }

    /// Whether deltas of `epoch` wait in the inbox.
    pub fn inbox_holds(&self, epoch: Epoch) -> bool {
        self.inbox.contains_key(&epoch)
    }

    /// Epochs the backup needs capabilities for.
    pub fn holds(&self) -> BTreeSet<Epoch> {
        self.inbox.keys().copied().chain(self.durable_at()).collect()
    }

    /// The least epoch held (what [`Self::holds`] gives, without allocating).
    pub fn hold_frontier(&self) -> Frontier {
        Frontier::of(self.inbox.keys().next().copied().into_iter().chain(self.durable_at()))
    }

    /// Backlog: epochs and approximate bytes of deltas not applied yet.
    pub fn lag(&self) -> (u64, u64) {
        let bytes: usize = self
            .inbox
            .values()
            .flatten()
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
        (self.inbox.len() as u64, bytes as u64)
    }

    /// True once the delta stream has ended and everything is applied.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Runs the backup's rules at `now`.
    pub fn step(
        &mut self,
        now: Micros,
        table: &mut ViewTable,
        frontiers: Frontiers<'_>,
        store: &mut dyn Durable,
    ) -> (Vec<BackupAction>, Option<Micros>) {
        let mut acts = Vec::new();
        let mut wake = None;
        self.drop_cut_deltas(table);
        // The role first: a view change that makes this the backup of a new
        // incarnation and the next one's recovery can arrive together, and the
        // cut must then adopt the snapshot waiting in the inbox at once.
        self.maybe_take_role(now, table, &mut acts);
        self.maybe_cut(table, store, &mut acts);
        self.ensure_spare(now, table, &mut acts, &mut wake);
        self.apply(now, frontiers, store, &mut acts, &mut wake);
        // A write that failed before may have just succeeded: cut now if one is due.
        self.maybe_cut(table, store, &mut acts);
        if self.cut_due(table) {
            // Still due: look again soon rather than wait for something to wake us.
            wake = Some(wake.map_or(10_000, |w: Micros| w.min(10_000)));
        }
        self.gc(now, table, store);
        self.arrived.retain(|e, _| self.inbox.contains_key(e));
        if frontiers.deltas.is_empty() && self.inbox.is_empty() && !self.ended {
            // The stream has ended.
            self.ended = true;
            if let Some(s) = self.spare.take() {
                acts.push(BackupAction::Drop(s));
            }
            if let Some(a) = self.active.as_mut() {
                a.durable_at = None;
            }
        }
        if let Cadence::Checkpoint { every_us } = self.cfg.cadence {
            if !self.ended {
                wake = Some(wake.map_or(every_us / 4, |w: Micros| w.min(every_us / 4)).max(1000));
            }
        }
        (acts, wake)
    }

    /// Deltas of incarnations that were cut are orphans.
    fn drop_cut_deltas(&mut self, table: &ViewTable) {
        let inc = table.placement(self.cfg.model).inc;
        let cut = self.cut_upto;
        self.inbox.retain(|_, ds| {
            ds.retain(|d| d.inc >= inc && cut.is_none_or(|c| d.inc > c));
            !ds.is_empty()
        });
    }

    fn ensure_spare(&mut self, now: Micros, table: &mut ViewTable, acts: &mut Vec<BackupAction>, wake: &mut Option<Micros>) {
        if !self.cfg.warm_spare || self.spare.is_some() || self.active.is_none() || self.ended {
            return;
        }
        if let Some(at) = self.spare_respawn_at {
            if now < at {
                *wake = Some(at - now);
                return;
            }
        } else if self.spare_failures >= MAX_START_FAILURES {
            return;
        }
        self.spare_respawn_at = None;
        let exec = table.new_exec();
        self.spare = Some(exec);
        self.spare_ready = false;
        acts.push(BackupAction::Spawn(exec));
    }

    /// A new backup whose primary fails before the backup has synced will never see
    /// the epochs after its snapshot complete (the dead primary holds them). The
    /// snapshot is the previous incarnation's cut image, all that is durable of this
    /// one, so the backup adopts it at once and can cut there.
    fn adopt_waiting_snapshot(&mut self, inc: Incarnation, store: &mut dyn Durable) {
        let Some(a) = self.active.as_mut().filter(|a| a.inc == inc && !a.synced) else {
            return;
        };
        let found = self.inbox.iter_mut().find_map(|(epoch, ds)| {
            let i = ds
                .iter()
                .position(|d| d.inc == inc && matches!(d.body, DeltaBody::Snapshot { .. }))?;
            Some((*epoch, ds.remove(i)))
        });
        let Some((epoch, snapshot)) = found else { return };
        if let DeltaBody::Snapshot { states, executions } = snapshot.body {
            tracing::info!(node = %self.cfg.node, %inc, %epoch, "primary failed before its backup synced; adopting its snapshot");
            a.adopt(states, executions, epoch);
            persist(&self.cfg, a, &mut self.written, store);
        }
        self.inbox.retain(|_, ds| !ds.is_empty());
    }

    /// Recovery: cut, and hand states and spare to the new primary on this worker.
    fn maybe_cut(&mut self, table: &mut ViewTable, store: &mut dyn Durable, acts: &mut Vec<BackupAction>) {
        let model = self.cfg.model;
        let Some(r) = table.next_recover() else { return };
        let view = r.view;
        let mine = r.roles.iter().any(|ro| ro.model == model);
        let placement = table.roles(model);
        if !(mine && placement.backup == self.me) {
            return;
        }
        self.adopt_waiting_snapshot(placement.inc, store);
        // After a failed write the cut waits until a retry has made everything
        // applied durable: it must hand over only what is durable.
        let ready = self.active.as_ref().is_some_and(|a| {
            a.inc == placement.inc && a.synced && a.durable_at.is_some() && (a.is_clean() || self.cfg.cadence != Cadence::EveryEpoch)
        });
        if !ready {
            return;
        }
        let a = self.active.take().expect("ready");
        let cut = Cut {
            view,
            model,
            inc: a.inc,
            epoch: a.durable_at.expect("ready"),
        };
        let image = a.durable_image();
        tracing::info!(node = %self.cfg.node, inc = %cut.inc, epoch = %cut.epoch, sessions = image.states.len(), "backup cut");
        acts.push(BackupAction::Cut(cut));
        self.cut_upto = Some(cut.inc);
        self.drop_cut_deltas(table);
        table.put_handoff(
            model,
            Handoff {
                executor: self.spare.take(),
                states: image.states.into_iter().collect(),
                executions: image.held.into_values().collect(),
            },
        );
    }

    /// True when the next view change waits for this backup to cut.
    fn cut_due(&self, table: &ViewTable) -> bool {
        let model = self.cfg.model;
        let Some(r) = table.next_recover() else { return false };
        r.roles.iter().any(|ro| ro.model == model) && table.roles(model).backup == self.me && !self.ended
    }

    /// Takes the backup role of a new incarnation placed on this worker.
    fn maybe_take_role(&mut self, now: Micros, table: &mut ViewTable, acts: &mut Vec<BackupAction>) {
        let model = self.cfg.model;
        let placement = table.roles(model);
        let stale = self.active.as_ref().is_none_or(|a| a.inc < placement.inc);
        if placement.backup == self.me && placement.inc.0 > 0 && stale && self.cut_upto.is_none_or(|c| c < placement.inc) {
            if self.spare.is_none() && self.cfg.warm_spare {
                if let Some(e) = table.take_spare(model) {
                    acts.push(BackupAction::Adopt(e));
                    self.spare = Some(e);
                    self.spare_ready = true;
                }
            }
            self.active = Some(Active::new(placement.inc, false, None, now));
        }
    }

    /// Applies complete epochs in order, within the consistent cut, and makes them durable.
    fn apply(
        &mut self,
        now: Micros,
        frontiers: Frontiers<'_>,
        store: &mut dyn Durable,
        acts: &mut Vec<BackupAction>,
        wake: &mut Option<Micros>,
    ) {
        let Some(a) = self.active.as_mut() else { return };
        let mut applied_any = false;
        let mut top_seq = None;
        while let Some((&epoch, ds)) = self.inbox.first_key_value() {
            if !frontiers.deltas.passed(epoch) || frontiers.upstream.iter().any(|f| !f.passed(epoch)) {
                break;
            }
            if let Some(t) = self.arrived.get(&epoch) {
                let due = t + self.cfg.apply_delay_us;
                if due > now {
                    *wake = Some(due - now);
                    break;
                }
            }
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
                .any(|t| cuts.is_orphan(t));
            if orphan {
                if !self.blocked_logged {
                    tracing::info!(node = %self.cfg.node, %epoch, "holding: delta depends on an upstream orphan");
                    self.blocked_logged = true;
                }
                break;
            }
            self.blocked_logged = false;
            let (_, ds) = self.inbox.pop_first().expect("present");
            self.arrived.remove(&epoch);
            let inc = a.inc;
            for d in ds.into_iter().filter(|d| d.inc == inc) {
                match d.body {
                    DeltaBody::Snapshot { states, executions } => a.adopt(states, executions, epoch),
                    DeltaBody::Exec { states, executions } => {
                        for (s, st) in states {
                            match &st {
                                Some(st) => a.live.states.insert(s, st.clone()),
                                None => a.live.states.remove(&s),
                            };
                            a.dirty_states.insert(s, st);
                        }
                        for e in executions {
                            a.dirty_lineage.push(e.clone());
                            top_seq = top_seq.max(Some(e.seq));
                            a.live.held.insert(e.seq, e);
                        }
                    }
                }
            }
            applied_any = true;
        }
        // The durable frontier: the first epoch not durable.
        let next = Frontier::of(self.inbox.keys().copied()).meet(frontiers.deltas);
        let durable_now = match self.cfg.cadence {
            Cadence::EveryEpoch => a.is_clean() || persist(&self.cfg, a, &mut self.written, store),
            Cadence::Checkpoint { every_us } => {
                let due = now.saturating_sub(a.last_checkpoint) >= every_us || next.is_empty();
                if due && a.synced && (applied_any || !a.is_clean() || a.checkpoint.is_none()) {
                    if persist(&self.cfg, a, &mut self.written, store) {
                        a.checkpoint = Some(a.live.clone());
                        a.last_checkpoint = now;
                        tracing::debug!(node = %self.cfg.node, sessions = a.live.states.len(), "checkpoint written");
                        true
                    } else {
                        false
                    }
                } else {
                    due && a.synced
                }
            }
        };
        if !durable_now && !a.is_clean() {
            // The write failed: try again soon (nothing else may wake this backup).
            *wake = Some(wake.map_or(10_000, |w: Micros| w.min(10_000)));
        }
        if let (true, Some(at)) = (durable_now, a.durable_at) {
            match next.0 {
                Some(t) if t > at => a.durable_at = Some(t),
                None => a.durable_at = None,
                _ => {}
            }
        }
        if let Some(seq) = top_seq {
            acts.push(BackupAction::Applied(seq));
        }
    }

    /// Forgets held executions once released, and lineage records past retention.
    fn gc(&mut self, now: Micros, table: &ViewTable, store: &mut dyn Durable) {
        if now.saturating_sub(self.last_gc) < 200_000 {
            return;
        }
        self.last_gc = now;
        if let Some(a) = self.active.as_mut() {
            a.live.held.retain(|seq, _| !table.is_released(*seq));
            if let Some(c) = a.checkpoint.as_mut() {
                c.held.retain(|seq, _| !table.is_released(*seq));
            }
        }
        let keep_from = Seq(table.released_below().0.saturating_sub(self.cfg.lineage_retention));
        let mut forget = Vec::new();
        while self.written.front().is_some_and(|s| *s < keep_from) {
            forget.push(self.written.pop_front().expect("checked"));
        }
        if !forget.is_empty() {
            let w = Write {
                model: self.cfg.model,
                inc: self.active.as_ref().map_or(Incarnation(0), |a| a.inc),
                reset: false,
                states: &BTreeMap::new(),
                lineage: &[],
                forget: &forget,
                horizon: Some(keep_from),
            };
            if let Err(e) = store.write(&w) {
                tracing::warn!(node = %self.cfg.node, error = %e, "lineage garbage collection failed");
            }
        }
    }
}

/// Writes applied-but-unpersisted changes in one batch; false if the write failed.
fn persist(cfg: &BackupConfig, a: &mut Active, written: &mut VecDeque<Seq>, store: &mut dyn Durable) -> bool {
    if a.is_clean() {
        return true;
    }
    let w = Write {
        model: cfg.model,
        inc: a.inc,
        reset: a.reset,
        states: &a.dirty_states,
        lineage: &a.dirty_lineage,
        forget: &[],
        horizon: None,
    };
    if let Err(e) = store.write(&w) {
        tracing::error!(node = %cfg.node, error = %e, "backup write failed; holding");
        return false;
    }
    a.dirty_states.clear();
    a.reset = false;
    written.extend(a.dirty_lineage.drain(..).map(|e| e.seq));
    true
}
