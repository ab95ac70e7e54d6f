//! The simulated cluster: timely-like operators and channels around the
//! protocol's state machines, simulated executors and disks, one clock.
//!
//! What is simulated is what timely and the OS give the real shells:
//! - every operator exists on every worker; data is routed by the sender's
//!   view table, as timely's exchange does;
//! - channels are FIFO per (sender, receiver, port) with random delays, so
//!   messages of different channels reorder freely;
//! - progress: a port's frontier is the least epoch any upstream operator
//!   holds a capability for or any message in flight to it carries; each
//!   worker learns of a changed frontier after a random delay;
//! - executors load, answer after a service time, die (their death seen
//!   after a short delay) or hang (seen only by the deadline);
//! - each process has a disk; writes are atomic.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{self, Graph, Input, Placement};
use super::{Config, FaultKind, Target};
use crate::backup::{BackupAction, BackupConfig, BackupCore, Cadence, Durable, Frontiers, Write};
use crate::commit::{Held, Sink};
use crate::coordinator::{Coordinator, Topology};
use crate::exec::{ExecEvent, ToExecutor};
use crate::flow::{Envelope, Failure, Meta, Route};
use crate::frontier::Frontier;
use crate::health::Deadlines;
use crate::ids::{Epoch, ExecId, Incarnation, Micros, ModelId, Seq, SessionId, View, WorkerId};
use crate::infer::{InferAction, InferConfig, InferCore};
use crate::invariants::{self, Evidence, Partition};
use crate::join::JoinCore;
use crate::records::{
    Cut, Delta, ErrorKind, Execution, Failed, LineageRecord, OutputRecord, Recover, RequestError, SessionState, Values, Watermark,
};
use crate::restart::{self, Image, Start};
use crate::view::{Handoff, ViewTable};

/// The simulator hashes small integer keys millions of times: a multiply-rotate
/// hash (as rustc's FxHash) instead of SipHash, which is built against attacks
/// no simulation faces.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_u16(&mut self, x: u16) {
        self.write_u64(x as u64);
    }
    fn write_isize(&mut self, x: isize) {
        self.write_u64(x as u64);
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A logical operator (present on every worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Source,
    /// Join before node `i` (`i == nodes.len()`: before the sink).
    Join(usize),
    Infer(usize),
    Backup(usize),
    Sink,
    Views,
    Coord,
}

#[derive(Debug, Clone)]
enum Body {
    Env(Envelope),
    Fail(Failure),
    Delta(Delta),
    Cut(Cut),
    Failed(Failed),
    Recover(Recover),
    Watermark(Watermark),
}

/// A message to one port of one operator instance. Data (with an epoch)
/// holds that port's frontier while in flight.
#[derive(Debug, Clone)]
struct Msg {
    op: Op,
    port: usize,
    epoch: Option<Epoch>,
    body: Body,
}

#[derive(Debug)]
enum Ev {
    Deliver { w: usize, msg: Msg },
    Activate { op: Op, w: usize },
    Exec { w: usize, exec: ExecId, ev: ExecEvent },
    Tick { w: usize },
    Fault(usize),
}

#[derive(Debug)]
struct SimExec {
    node: usize,
    owner: Option<Op>,
    alive: bool,
    hung: bool,
    /// Loaded its model (a hang while loading is seen only by the load deadline).
    ready: bool,
    busy_until: Micros,
    sessions: BTreeMap<SessionId, SessionState>,
    mailbox: VecDeque<ExecEvent>,
    rng: u64,
}

/// One process's disk.
#[derive(Debug, Default, Clone)]
struct Disk {
    lineage: BTreeMap<(ModelId, Seq), Execution>,
    states: BTreeMap<ModelId, (Incarnation, BTreeMap<SessionId, SessionState>)>,
}

struct SourceState {
    epoch: Option<Epoch>,
    view: View,
    made: u64,
    /// Accepted requests: offset -> ingest time.
    log: BTreeMap<u64, Micros>,
    backlog: VecDeque<u64>,
    /// The released ledger of this partition.
    watermark: u64,
    above: BTreeSet<u64>,
}

/// The outcome of a schedule.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Violations found (empty: the schedule passed).
    pub violations: Vec<String>,
    /// Requests released.
    pub released: u64,
    /// View changes applied (at worker 0).
    pub views: u64,
    /// Faults that found their executor and fired.
    pub fired: usize,
    /// Simulated time at the end.
    pub end_us: Micros,
    /// Results discarded as orphans.
    pub orphans: u64,
    /// Events processed.
    pub events: u64,
    /// Events by kind: deliveries, activations, executor events, ticks, faults.
    pub by_kind: [u64; 5],
    /// What happened, when [`super::Config::trace`] is on.
    pub trace: Vec<String>,
}

pub(super) struct World {
    cfg: Config,
    g: Graph,
    place: Placement,
    rng: ChaCha8Rng,
    now: Micros,
    next_id: u64,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    events: HashMap<u64, Ev>,
    workers: usize,
    ops: Vec<Op>,
    /// Per op: its input ports' upstream (op, out port) edges.
    edges: HashMap<Op, Vec<Vec<(Op, usize)>>>,
    inflight: HashMap<(Op, usize), BTreeMap<Epoch, usize>>,
    queues: HashMap<(Op, usize), Vec<Msg>>,
    scheduled: BTreeSet<(Op, usize)>,
    chan: HashMap<(usize, usize, Op, usize), Micros>,
    tables: Vec<ViewTable>,
    execs: Vec<HashMap<ExecId, SimExec>>,
    disks: Vec<Disk>,
    infer: HashMap<(usize, usize), InferCore>,
    backup: HashMap<(usize, usize), BackupCore>,
    join: HashMap<(usize, usize), JoinCore>,
    sinks: Vec<Sink>,
    sources: Vec<SourceState>,
    coordinator: Coordinator,
    topology: Topology,
    /// Restarts of the whole cluster so far.
    generation: u32,
    /// Upstream stateful models of each stateful node, in port order.
    upstream: HashMap<usize, Vec<usize>>,
    /// Every execution some backup committed: the ground truth for I2 and I3.
    committed: HashMap<(ModelId, Seq), LineageRecord>,
    outputs: Vec<(u32, OutputRecord)>,
    /// Last frontier each op's ports showed, to wake operators on change.
    last_frontiers: HashMap<(Op, usize), Frontier>,
    fired: Vec<bool>,
    /// Something that can move a frontier changed since they were computed.
    dirty: bool,
    last_fault: Micros,
    out: Outcome,
    /// Print what happens (`HAMS_SIM_TRACE=1` with a replayed seed).
    trace: bool,
}

/// Every request must be released this long after the last fault.
pub const LIVENESS_US: Micros = 5_000_000;

impl World {
    pub(super) fn new(cfg: Config) -> World {
        let g = cfg.graph.clone();
        let workers = cfg.workers;
        let place = model::place(&g, workers, cfg.threads);
        let stateful = g.stateful();
        let mut ops = vec![Op::Source];
        let mut edges: HashMap<Op, Vec<Vec<(Op, usize)>>> = HashMap::default();
        let mut upstream = HashMap::default();
        let producer = |i: &Input| match i {
            Input::Source => (Op::Source, 0),
            Input::Node(j) => (Op::Infer(*j), 0),
        };
        for (i, node) in g.nodes.iter().enumerate() {
            if node.inputs.len() > 1 {
                ops.push(Op::Join(i));
                edges.insert(Op::Join(i), node.inputs.iter().map(|x| vec![producer(x)]).collect());
                edges.insert(Op::Infer(i), vec![vec![(Op::Join(i), 0)]]);
            } else {
                edges.insert(Op::Infer(i), vec![vec![producer(&node.inputs[0])]]);
            }
            ops.push(Op::Infer(i));
            if node.stateful {
                let ups: Vec<usize> = g.ancestors(i).into_iter().filter(|j| g.nodes[*j].stateful).collect();
                let mut ports = vec![vec![(Op::Infer(i), 2)]];
                ports.extend(ups.iter().map(|j| vec![(Op::Backup(*j), 0)]));
                edges.insert(Op::Backup(i), ports);
                upstream.insert(i, ups);
                ops.push(Op::Backup(i));
            }
        }
        let sink_join = g.nodes.len();
        let mut ok_port = if g.sink.len() > 1 {
            ops.push(Op::Join(sink_join));
            edges.insert(Op::Join(sink_join), g.sink.iter().map(|x| vec![producer(x)]).collect());
            vec![(Op::Join(sink_join), 0)]
        } else {
            vec![producer(&g.sink[0])]
        };
        ok_port.sort();
        let mut err_port: Vec<(Op, usize)> = (0..g.nodes.len()).map(|i| (Op::Infer(i), 1)).collect();
        err_port.push((Op::Source, 0));
        let mut sink_ports = vec![ok_port, err_port];
        sink_ports.extend(stateful.iter().map(|j| vec![(Op::Backup(*j), 0)]));
        edges.insert(Op::Sink, sink_ports);
        edges.insert(Op::Views, stateful.iter().map(|j| vec![(Op::Backup(*j), 0)]).collect());
        ops.extend([Op::Sink, Op::Views, Op::Coord]);
        let models = stateful
            .iter()
            .map(|&i| (ModelId(i as u16), place.primary[i], place.backup[i].expect("stateful")));
        let table = ViewTable::new(workers, models);
        let topology = Topology {
            affected: stateful
                .iter()
                .map(|&i| {
                    let mut v = vec![ModelId(i as u16)];
                    v.extend(
                        g.descendants(i)
                            .into_iter()
                            .filter(|j| g.nodes[*j].stateful)
                            .map(|j| ModelId(j as u16)),
                    );
                    (ModelId(i as u16), v)
                })
                .collect(),
            placement: stateful
                .iter()
                .map(|&i| (ModelId(i as u16), (place.primary[i], place.backup[i].expect("stateful"))))
                .collect(),
            threads: cfg.threads,
            workers,
            colocate: false,
        };
        let processes = workers / cfg.threads;
        let mut w = World {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            g: g.clone(),
            place: place.clone(),
            now: 0,
            next_id: 0,
            queue: BinaryHeap::new(),
            events: HashMap::default(),
            workers,
            ops,
            edges,
            inflight: HashMap::default(),
            queues: HashMap::default(),
            scheduled: BTreeSet::new(),
            chan: HashMap::default(),
            tables: vec![table.clone(); workers],
            execs: (0..workers).map(|_| HashMap::default()).collect(),
            disks: (0..processes).map(|_| Disk::default()).collect(),
            infer: HashMap::default(),
            backup: HashMap::default(),
            join: HashMap::default(),
            sinks: (0..workers).map(|_| Sink::new()).collect(),
            sources: (0..workers)
                .map(|_| SourceState {
                    epoch: Some(Epoch(0)),
                    view: View(0),
                    made: 0,
                    log: BTreeMap::new(),
                    backlog: VecDeque::new(),
                    watermark: 0,
                    above: BTreeSet::new(),
                })
                .collect(),
            coordinator: Coordinator::new(topology.clone(), &BTreeMap::new()),
            topology,
            generation: 0,
            upstream,
            committed: HashMap::default(),
            outputs: Vec::new(),
            last_frontiers: HashMap::default(),
            fired: vec![false; cfg.faults.len()],
            dirty: true,
            last_fault: 0,
            out: Outcome::default(),
            trace: cfg.trace,
            cfg,
        };
        w.boot(&BTreeMap::new(), Vec::new());
        for k in 0..w.cfg.faults.len() {
            let at = w.cfg.faults[k].at;
            w.at(at, Ev::Fault(k));
        }
        w
    }

    /// Builds every worker's state machines, each stateful model starting as
    /// `starts` says (empty: a fresh start), and sets the cluster going.
    fn boot(&mut self, starts: &BTreeMap<ModelId, Start>, handoffs: Vec<(WorkerId, ModelId, Handoff)>) {
        let (g, place, workers) = (self.g.clone(), self.place.clone(), self.workers);
        let models = g
            .stateful()
            .into_iter()
            .map(|i| (ModelId(i as u16), place.primary[i], place.backup[i].expect("stateful")));
        let mut table = ViewTable::new(workers, models);
        for (m, st) in starts {
            table.start_at(*m, st.inc, st.primary, st.backup);
        }
        for (p, src) in self.sources.iter().enumerate() {
            table.on_watermark(p as u32, src.watermark);
        }
        self.tables = vec![table; workers];
        for (w, m, h) in handoffs {
            self.tables[w.0].put_handoff(m, h);
        }
        self.coordinator = Coordinator::new(self.topology.clone(), starts);
        let deadlines = Deadlines {
            answer_us: self.cfg.deadline_us,
            heartbeat_us: (self.cfg.deadline_us / 5).max(5_000),
            load_us: 10_000_000,
        };
        let floors: Vec<(ModelId, Incarnation)> = starts.iter().map(|(m, st)| (*m, st.floor())).collect();
        self.infer.clear();
        self.backup.clear();
        self.join.clear();
        for (i, node) in g.nodes.iter().enumerate() {
            for wk in 0..workers {
                let cfg = InferConfig {
                    node: node.name.to_string(),
                    model: ModelId(i as u16),
                    hosts: vec![place.primary[i]],
                    stateful: node.stateful,
                    max_batch: self.cfg.max_batch,
                    deadlines,
                    replicate: true,
                    hold_until_durable: self.cfg.stop_and_buffer,
                };
                self.infer.insert((i, wk), InferCore::new(cfg, WorkerId(wk)));
                if node.stateful {
                    let cfg = BackupConfig {
                        node: node.name.to_string(),
                        model: ModelId(i as u16),
                        lineage_retention: u64::MAX / 4,
                        apply_delay_us: self.cfg.apply_delay_us,
                        cadence: Cadence::EveryEpoch,
                        warm_spare: true,
                    };
                    let mut b = BackupCore::new(cfg, WorkerId(wk), &self.tables[wk], self.now);
                    for (m, f) in &floors {
                        b.upstream_floor(*m, *f);
                    }
                    self.backup.insert((i, wk), b);
                }
                if node.inputs.len() > 1 {
                    self.join.insert((i, wk), JoinCore::new(node.inputs.len()));
                }
            }
        }
        if g.sink.len() > 1 {
            for wk in 0..workers {
                self.join.insert((g.nodes.len(), wk), JoinCore::new(g.sink.len()));
            }
        }
        self.sinks = (0..workers)
            .map(|_| {
                let mut s = Sink::new();
                for (m, f) in &floors {
                    s.floor(*m, *f);
                }
                s
            })
            .collect();
        for wk in 0..workers {
            for op in self.ops.clone() {
                self.activate(op, wk, 0);
            }
            self.at(self.now + self.cfg.epoch_us, Ev::Tick { w: wk });
        }
        self.dirty = true;
    }

    /// A worker process died: timely cannot shrink, so every process restarts
    /// from what the disks hold (`lost`: that process's disk is gone too and
    /// comes back from its mirror on the next process, which holds every
    /// completed commit). Memory, messages and executors are gone; epochs
    /// start again at 0.
    fn restart(&mut self, lost: Option<usize>) {
        self.generation += 1;
        if self.trace {
            self.log(format!("cluster restarts (generation {}); lost disk: {lost:?}", self.generation));
        }
        let faults: Vec<(Micros, u64, Ev)> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|Reverse((t, id))| {
                let ev = self.events.remove(&id)?;
                matches!(ev, Ev::Fault(_)).then_some((t, id, ev))
            })
            .collect();
        self.events.clear();
        for (t, id, ev) in faults {
            self.events.insert(id, ev);
            self.queue.push(Reverse((t, id)));
        }
        self.inflight.clear();
        self.queues.clear();
        self.scheduled.clear();
        self.chan.clear();
        self.last_frontiers.clear();
        for e in &mut self.execs {
            e.clear();
        }
        if let Some(p) = lost {
            // Restored from the mirror: the same completed commits.
            let copy = self.disks[p].clone();
            self.disks[p] = copy;
        }
        let threads = self.cfg.threads;
        let mut images = Vec::new();
        for (p, d) in self.disks.iter().enumerate() {
            for (m, (inc, _)) in &d.states {
                images.push(Image {
                    model: *m,
                    inc: *inc,
                    worker: WorkerId(p * threads),
                });
            }
        }
        let starts = restart::plan(&self.topology.placement, &images, threads, self.workers);
        let partitions = self.workers as u64;
        let released = |seq: Seq, sources: &[SourceState]| {
            let s = &sources[(seq.0 % partitions) as usize];
            let o = seq.0 / partitions;
            o < s.watermark || s.above.contains(&o)
        };
        let mut handoffs = Vec::new();
        for (m, st) in &starts {
            let Some(w) = st.image else { continue };
            let d = &self.disks[w.0 / threads];
            let states = d.states.get(m).map(|(_, s)| s.clone()).unwrap_or_default();
            let executions = d
                .lineage
                .iter()
                .filter(|((x, seq), _)| x == m && !released(*seq, &self.sources))
                .map(|(_, e)| e.clone())
                .collect();
            let h = Handoff {
                executor: None,
                states: states.into_iter().collect(),
                executions,
            };
            handoffs.push((w, *m, h));
        }
        for s in &mut self.sources {
            s.epoch = Some(Epoch(0));
            s.view = View(0);
            s.backlog = s
                .log
                .keys()
                .copied()
                .filter(|o| *o >= s.watermark && !s.above.contains(o))
                .collect();
        }
        self.boot(&starts, handoffs);
    }

    fn at(&mut self, t: Micros, ev: Ev) {
        let id = self.next_id;
        self.next_id += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((t.max(self.now), id)));
    }

    fn activate(&mut self, op: Op, w: usize, delay: Micros) {
        if self.scheduled.insert((op, w)) {
            self.at(self.now + delay, Ev::Activate { op, w });
        }
    }

    fn log(&mut self, line: String) {
        let line = format!("[{:>8}us] {line}", self.now);
        self.out.trace.push(line);
    }

    fn jitter(&mut self, max: Micros) -> Micros {
        self.rng.gen_range(0..=max)
    }

    fn violation(&mut self, v: String) {
        if self.out.violations.len() < 10 {
            self.out.violations.push(format!("t={}us: {v}", self.now));
        }
    }

    pub(super) fn run(mut self) -> Outcome {
        let mut steps = 0u64;
        while let Some(Reverse((t, id))) = self.queue.pop() {
            let ev = self.events.remove(&id).expect("scheduled");
            self.now = t;
            steps += 1;
            let kind = match ev {
                Ev::Deliver { .. } => 0,
                Ev::Activate { .. } => 1,
                Ev::Exec { .. } => 2,
                Ev::Tick { .. } => 3,
                Ev::Fault(_) => 4,
            };
            self.out.by_kind[kind] += 1;
            match ev {
                Ev::Deliver { w, msg } => {
                    let op = msg.op;
                    self.queues.entry((op, w)).or_default().push(msg);
                    self.activate(op, w, 0);
                }
                Ev::Activate { op, w } => {
                    self.scheduled.remove(&(op, w));
                    self.dirty |= !matches!(op, Op::Views | Op::Coord);
                    self.step(op, w);
                }
                Ev::Exec { w, exec, ev } => self.exec_event(w, exec, ev),
                Ev::Tick { w } => {
                    self.dirty = true;
                    self.tick(w);
                }
                Ev::Fault(k) => self.fault(k),
            }
            self.wake_on_progress();
            if !self.out.violations.is_empty() {
                break;
            }
            if self.all_released() {
                break;
            }
            let limit = self.last_fault.max(self.cfg.faults.iter().map(|f| f.at).max().unwrap_or(0)) + LIVENESS_US;
            if self.now > limit {
                let pending: Vec<String> = self
                    .sources
                    .iter()
                    .enumerate()
                    .map(|(p, s)| format!("p{p}: {}/{} released", s.watermark, s.log.len()))
                    .collect();
                let waits = self.tables[0].awaited_cuts();
                self.violation(format!(
                    "liveness: not every request released {} ms after the last fault ({}; view {}, awaited cuts {:?})",
                    LIVENESS_US / 1000,
                    pending.join(", "),
                    self.tables[0].view(),
                    waits
                ));
                break;
            }
        }
        self.out.events = steps;
        self.out.end_us = self.now;
        if self.out.violations.is_empty() {
            self.final_checks();
        }
        self.out.released = self.sources.iter().map(|s| s.watermark).sum();
        self.out.views = self.tables[0].view().0;
        self.out.fired = self.fired.iter().filter(|f| **f).count();
        self.out
    }

    fn all_released(&self) -> bool {
        self.sources
            .iter()
            .all(|s| s.made >= self.cfg.requests && s.backlog.is_empty() && s.watermark >= s.log.len() as u64)
    }

    // ---------------------------------------------------------------- progress

    /// The frontier at an input port: least epoch upstream may still send.
    fn port_frontier(&self, op: Op, port: usize, memo: &mut HashMap<(Op, usize), Frontier>) -> Frontier {
        let mut f = self
            .inflight
            .get(&(op, port))
            .and_then(|m| m.keys().next().copied())
            .map_or(Frontier::EMPTY, Frontier::at);
        if let Some(ports) = self.edges.get(&op) {
            for (u, q) in &ports[port] {
                f = f.meet(self.out_frontier(*u, *q, memo));
            }
        }
        f
    }

    fn out_frontier(&self, op: Op, port: usize, memo: &mut HashMap<(Op, usize), Frontier>) -> Frontier {
        if let Some(f) = memo.get(&(op, port)) {
            return *f;
        }
        let mut f = Frontier::EMPTY;
        for w in 0..self.workers {
            f = f.meet(self.caps(op, port, w));
        }
        let inputs = self.edges.get(&op).map_or(0, Vec::len);
        for p in 0..inputs {
            f = f.meet(self.port_frontier(op, p, memo));
        }
        memo.insert((op, port), f);
        f
    }

    fn caps(&self, op: Op, port: usize, w: usize) -> Frontier {
        match op {
            Op::Source => Frontier(self.sources[w].epoch),
            Op::Infer(i) => {
                let (data, delta) = self.infer[&(i, w)].hold_frontiers();
                if port == 2 {
                    delta
                } else {
                    data
                }
            }
            Op::Join(i) => self.join[&(i, w)].hold_frontier(),
            Op::Backup(i) => self.backup[&(i, w)].hold_frontier(),
            _ => Frontier::EMPTY,
        }
    }

    /// The frontiers of `op`'s input ports as of the end of the previous
    /// event: never ahead of the truth (frontiers only advance), and taken
    /// before this activation consumes anything.
    fn frontiers(&self, op: Op) -> Vec<Frontier> {
        let n = self.edges.get(&op).map_or(0, Vec::len);
        (0..n)
            .map(|p| self.last_frontiers.get(&(op, p)).copied().unwrap_or(Frontier::at(Epoch(0))))
            .collect()
    }

    /// Operators whose input frontier moved are woken, each worker after its own delay.
    fn wake_on_progress(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let mut memo = HashMap::default();
        let mut changed = Vec::new();
        for op in self.ops.clone() {
            let n = self.edges.get(&op).map_or(0, Vec::len);
            for p in 0..n {
                let f = self.port_frontier(op, p, &mut memo);
                if self.last_frontiers.insert((op, p), f) != Some(f) {
                    changed.push(op);
                }
            }
        }
        changed.dedup();
        for op in changed {
            for w in 0..self.workers {
                let d = self.jitter(self.cfg.progress_delay_us);
                self.activate(op, w, d);
            }
        }
    }

    // ---------------------------------------------------------------- messages

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if let Some(e) = msg.epoch {
            self.dirty = true;
            *self.inflight.entry((msg.op, msg.port)).or_default().entry(e).or_default() += 1;
        }
        let delay = if from == to {
            self.jitter(self.cfg.local_delay_us)
        } else {
            self.jitter(self.cfg.net_delay_us)
        };
        let key = (from, to, msg.op, msg.port);
        let t = (self.now + delay).max(self.chan.get(&key).copied().unwrap_or(0));
        self.chan.insert(key, t);
        self.at(t, Ev::Deliver { w: to, msg });
    }

    fn consumed(&mut self, msg: &Msg) {
        if let Some(e) = msg.epoch {
            let m = self.inflight.get_mut(&(msg.op, msg.port)).expect("counted");
            let c = m.get_mut(&e).expect("counted");
            *c -= 1;
            if *c == 0 {
                m.remove(&e);
            }
        }
    }

    fn take(&mut self, op: Op, w: usize) -> Vec<Msg> {
        let msgs = self.queues.remove(&(op, w)).unwrap_or_default();
        for m in &msgs {
            self.consumed(m);
        }
        msgs
    }

    /// The worker node `i`'s input goes to, under worker `w`'s view.
    fn target(&self, w: usize, i: usize, meta: &Meta) -> usize {
        let route = if self.g.nodes[i].stateful {
            Route::Primary(ModelId(i as u16))
        } else {
            Route::Pinned(self.place.primary[i])
        };
        route.target(meta, &self.tables[w]).0
    }

    /// Sends a node's (or the source's) output to every consumer.
    fn emit(&mut self, w: usize, from: Input, epoch: Epoch, env: Envelope) {
        let consumers: Vec<(usize, usize)> = self
            .g
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(j, n)| n.inputs.iter().position(|x| *x == from).map(|k| (j, k)))
            .collect();
        for (j, k) in consumers {
            let to = self.target(w, j, &env.meta);
            let (op, port) = if self.g.nodes[j].inputs.len() > 1 {
                (Op::Join(j), k)
            } else {
                (Op::Infer(j), 0)
            };
            self.send(
                w,
                to,
                Msg {
                    op,
                    port,
                    epoch: Some(epoch),
                    body: Body::Env(env.clone()),
                },
            );
        }
        if let Some(k) = self.g.sink.iter().position(|x| *x == from) {
            let home = env.meta.home as usize;
            let (op, port) = if self.g.sink.len() > 1 {
                (Op::Join(self.g.nodes.len()), k)
            } else {
                (Op::Sink, 0)
            };
            self.send(
                w,
                home,
                Msg {
                    op,
                    port,
                    epoch: Some(epoch),
                    body: Body::Env(env),
                },
            );
        }
    }

    fn fail(&mut self, w: usize, epoch: Epoch, f: Failure) {
        let home = f.meta.home as usize;
        self.send(
            w,
            home,
            Msg {
                op: Op::Sink,
                port: 1,
                epoch: Some(epoch),
                body: Body::Fail(f),
            },
        );
    }

    fn broadcast_cut(&mut self, w: usize, i: usize, cut: Cut) {
        let stateful = self.g.stateful();
        let idx = stateful.iter().position(|j| *j == i).expect("stateful");
        let downstream: Vec<(usize, usize)> = self
            .upstream
            .iter()
            .filter_map(|(j, ups)| ups.iter().position(|u| *u == i).map(|k| (*j, k + 1)))
            .collect();
        for to in 0..self.workers {
            let epoch = Some(cut.epoch);
            self.send(
                w,
                to,
                Msg {
                    op: Op::Sink,
                    port: 2 + idx,
                    epoch,
                    body: Body::Cut(cut),
                },
            );
            self.send(
                w,
                to,
                Msg {
                    op: Op::Views,
                    port: idx,
                    epoch,
                    body: Body::Cut(cut),
                },
            );
            for (j, port) in &downstream {
                self.send(
                    w,
                    to,
                    Msg {
                        op: Op::Backup(*j),
                        port: *port,
                        epoch,
                        body: Body::Cut(cut),
                    },
                );
            }
        }
    }

    // ---------------------------------------------------------------- operators

    fn step(&mut self, op: Op, w: usize) {
        match op {
            Op::Source => self.source(w),
            Op::Join(i) => self.join_step(i, w),
            Op::Infer(i) => self.infer_step(i, w),
            Op::Backup(i) => self.backup_step(i, w),
            Op::Sink => self.sink_step(w),
            Op::Views => self.views_step(w),
            Op::Coord => self.coord_step(w),
        }
    }

    fn tick(&mut self, w: usize) {
        let s = &mut self.sources[w];
        if let Some(e) = s.epoch {
            s.epoch = Some(e.next());
            let next = self.now + self.cfg.epoch_us;
            self.at(next, Ev::Tick { w });
            self.source(w);
        }
    }

    fn source(&mut self, w: usize) {
        let Some(epoch) = self.sources[w].epoch else { return };
        let view = self.tables[w].view();
        let partitions = self.workers as u64;
        if view > self.sources[w].view {
            // A recovery: every request not released goes around again, in the new view.
            let s = &mut self.sources[w];
            s.view = view;
            s.backlog = s
                .log
                .keys()
                .copied()
                .filter(|o| *o >= s.watermark && !s.above.contains(o))
                .collect();
        }
        let mut admitted = Vec::new();
        while let Some(o) = self.sources[w].backlog.pop_front() {
            let s = &self.sources[w];
            if o >= s.watermark && !s.above.contains(&o) {
                admitted.push(o);
            }
        }
        loop {
            let s = &self.sources[w];
            if s.made >= self.cfg.requests {
                break;
            }
            let due = s.made * self.cfg.gap_us + w as u64 * 7;
            if due > self.now {
                let wait = due - self.now;
                self.at(self.now + wait, Ev::Activate { op: Op::Source, w });
                break;
            }
            let s = &mut self.sources[w];
            let offset = s.log.len() as u64;
            s.log.insert(offset, self.now);
            s.made += 1;
            admitted.push(offset);
        }
        for offset in admitted {
            let seq = Seq(offset * partitions + w as u64);
            let ingest = self.sources[w].log[&offset];
            let (session, start, end) = self.cfg.session_of(w as u64, offset, partitions);
            let meta = Meta {
                seq,
                home: w as u32,
                offset,
                session,
                start,
                end,
                ingest_us: ingest,
                view,
            };
            if self.cfg.bad_every > 0 && offset % self.cfg.bad_every == self.cfg.bad_every - 1 {
                let error = RequestError {
                    node: "source".into(),
                    kind: ErrorKind::Shape,
                    message: "bad request".into(),
                };
                self.fail(
                    w,
                    epoch,
                    Failure {
                        meta,
                        error,
                        lineage: Vec::new(),
                    },
                );
                continue;
            }
            let env = Envelope {
                meta,
                values: Values::F32(model::request_input(seq)),
                lineage: Vec::new(),
            };
            self.emit(w, Input::Source, epoch, env);
        }
        let s = &self.sources[w];
        if s.made >= self.cfg.requests && s.backlog.is_empty() && s.watermark >= s.log.len() as u64 {
            self.sources[w].epoch = None;
        }
    }

    fn join_step(&mut self, i: usize, w: usize) {
        let frontiers = self.frontiers(Op::Join(i));
        let msgs = self.take(Op::Join(i), w);
        let arrived = msgs
            .into_iter()
            .filter_map(|m| match m.body {
                Body::Env(e) => Some((m.port, m.epoch.expect("data"), e)),
                _ => None,
            })
            .collect();
        let view = self.tables[w].view();
        let out = self.join.get_mut(&(i, w)).expect("join").step(view, arrived, &frontiers);
        for (epoch, env) in out {
            if i == self.g.nodes.len() {
                let home = env.meta.home as usize;
                self.send(
                    w,
                    home,
                    Msg {
                        op: Op::Sink,
                        port: 0,
                        epoch: Some(epoch),
                        body: Body::Env(env),
                    },
                );
            } else {
                let to = self.target(w, i, &env.meta);
                self.send(
                    w,
                    to,
                    Msg {
                        op: Op::Infer(i),
                        port: 0,
                        epoch: Some(epoch),
                        body: Body::Env(env),
                    },
                );
            }
        }
    }

    fn infer_step(&mut self, i: usize, w: usize) {
        let frontier = self.frontiers(Op::Infer(i))[0];
        let before = self.infer[&(i, w)].holds();
        let msgs = self.take(Op::Infer(i), w);
        let mut arrived: BTreeSet<Epoch> = BTreeSet::new();
        let core = self.infer.get_mut(&(i, w)).expect("infer");
        for m in msgs {
            if let Body::Env(e) = m.body {
                let epoch = m.epoch.expect("data");
                arrived.insert(epoch);
                core.requests(epoch, [e]);
            }
        }
        let owned: Vec<ExecId> = core.executors().collect();
        for x in owned {
            if let Some(ex) = self.execs[w].get_mut(&x) {
                while let Some(ev) = ex.mailbox.pop_front() {
                    core.event(x, ev);
                }
            }
        }
        let acts = core.step(self.now, &mut self.tables[w], frontier);
        let wake = core.wake_after();
        // Timely lets an operator send only at an epoch it holds a capability for.
        let least = Frontier::of(before.data.iter().chain(&before.delta).chain(&arrived).copied()).meet(frontier);
        for a in acts {
            if self.trace {
                let line = format!("w{w} {}: {}", self.g.nodes[i].name, brief(&a));
                self.log(line);
            }
            match a {
                InferAction::Spawn { exec, .. } => self.spawn(w, i, exec, Op::Infer(i)),
                InferAction::Adopt(exec) => self.adopt(w, exec, Op::Infer(i)),
                InferAction::Send { exec, cmd } => self.exec_command(w, exec, cmd),
                InferAction::Kill { exec, .. } => self.kill(w, exec),
                InferAction::Drop(exec) => {
                    self.execs[w].remove(&exec);
                }
                InferAction::Died { .. } | InferAction::Promoted { .. } => {}
                InferAction::Output { epoch, out } => {
                    if least.passed(epoch) {
                        self.violation(format!("{} on w{w} sent at {epoch} without a capability", self.g.nodes[i].name));
                    }
                    for env in out.ok {
                        self.emit(w, Input::Node(i), epoch, env);
                    }
                    for f in out.err {
                        self.fail(w, epoch, f);
                    }
                }
                InferAction::Delta { epoch, delta } => {
                    if least.passed(epoch) {
                        self.violation(format!(
                            "{} on w{w} sent a delta at {epoch} without a capability",
                            self.g.nodes[i].name
                        ));
                    }
                    let to = delta.to.0;
                    self.send(
                        w,
                        to,
                        Msg {
                            op: Op::Backup(i),
                            port: 0,
                            epoch: Some(epoch),
                            body: Body::Delta(delta),
                        },
                    );
                }
                InferAction::Failed(f) => self.send(
                    w,
                    0,
                    Msg {
                        op: Op::Coord,
                        port: 0,
                        epoch: None,
                        body: Body::Failed(f),
                    },
                ),
            }
        }
        if let Some(d) = wake {
            self.at(self.now + d, Ev::Activate { op: Op::Infer(i), w });
        }
    }

    fn backup_step(&mut self, i: usize, w: usize) {
        let frontiers = self.frontiers(Op::Backup(i));
        let msgs = self.take(Op::Backup(i), w);
        let now = self.now;
        let core = self.backup.get_mut(&(i, w)).expect("backup");
        for m in msgs {
            match m.body {
                Body::Delta(d) => core.delta(m.epoch.expect("data"), d, now),
                Body::Cut(c) => core.upstream_cut(&c),
                _ => {}
            }
        }
        if let Some(x) = core.spare() {
            if let Some(ex) = self.execs[w].get_mut(&x) {
                while let Some(ev) = ex.mailbox.pop_front() {
                    core.event(x, ev, now);
                }
            }
        }
        let process = w / self.cfg.threads;
        let mut disk = SimDisk {
            disk: &mut self.disks[process],
            committed: &mut self.committed,
            violations: Vec::new(),
            fail: self.cfg.write_failures && self.rng.gen_ratio(1, 50),
        };
        let f = Frontiers {
            deltas: frontiers[0],
            upstream: &frontiers[1..],
        };
        let (acts, wake) = core.step(now, &mut self.tables[w], f, &mut disk);
        let problems = std::mem::take(&mut disk.violations);
        for p in problems {
            self.violation(p);
        }
        for a in acts {
            if self.trace {
                let line = format!("w{w} {} backup: {a:?}", self.g.nodes[i].name);
                self.log(line);
            }
            match a {
                BackupAction::Spawn(exec) => self.spawn(w, i, exec, Op::Backup(i)),
                BackupAction::Adopt(exec) => self.adopt(w, exec, Op::Backup(i)),
                BackupAction::Drop(exec) => {
                    self.execs[w].remove(&exec);
                }
                BackupAction::Cut(cut) => self.broadcast_cut(w, i, cut),
                BackupAction::Applied(_) => {}
            }
        }
        if let Some(d) = wake {
            self.at(self.now + d, Ev::Activate { op: Op::Backup(i), w });
        }
    }

    fn sink_step(&mut self, w: usize) {
        let frontiers = self.frontiers(Op::Sink);
        let msgs = self.take(Op::Sink, w);
        for m in msgs {
            let epoch = m.epoch;
            let (meta, outcome, lineage) = match m.body {
                Body::Env(e) => (e.meta, Ok(e.values), e.lineage),
                Body::Fail(f) => (f.meta, Err(f.error), f.lineage),
                Body::Cut(c) => {
                    self.sinks[w].on_cut(&c);
                    continue;
                }
                _ => continue,
            };
            let epoch = epoch.expect("data");
            let record = OutputRecord {
                seq: meta.seq,
                offset: meta.offset,
                session: meta.session,
                epoch,
                ingest_us: meta.ingest_us,
                release_us: 0,
                outcome,
                lineage,
            };
            self.sinks[w].hold(Held {
                epoch,
                offset: meta.offset,
                record,
            });
        }
        let stateful = self.g.stateful();
        let decided = self.sinks[w].decide(|m| stateful.iter().position(|j| *j == m.0 as usize).map(|k| frontiers[2 + k]));
        self.out.orphans += decided.orphans;
        let s = &mut self.sources[w];
        let before = s.watermark;
        let mut released = Vec::new();
        for h in decided.release {
            if h.offset < s.watermark || !s.above.insert(h.offset) {
                continue; // Released before: suppressed, exactly once.
            }
            released.push(h.record);
        }
        while s.above.remove(&s.watermark) {
            s.watermark += 1;
        }
        let advanced = (s.watermark > before).then_some(s.watermark);
        for mut rec in released {
            rec.release_us = self.now;
            for t in &rec.lineage {
                let ok = self
                    .committed
                    .get(&(t.model, rec.seq))
                    .is_some_and(|c| c.fp == t.fingerprint && c.inc == t.incarnation && c.epoch == t.epoch);
                if !ok {
                    let name = self.g.nodes[t.model.0 as usize].name;
                    self.violation(format!(
                        "I2: seq {} released depending on {name}'s execution (inc {}, epoch {}) that no backup holds",
                        rec.seq, t.incarnation.0, t.epoch.0
                    ));
                }
            }
            if self.trace {
                let line = {
                    format!(
                        "w{w} sink released {} {:?} {:?}",
                        rec.seq,
                        rec.outcome.as_ref().map(|_| ()),
                        rec.lineage
                    )
                };
                self.log(line);
            }
            self.outputs.push((w as u32, rec));
        }
        if let Some(offset) = advanced {
            for to in 0..self.workers {
                let wm = Watermark {
                    partition: w as u32,
                    offset,
                };
                self.send(
                    w,
                    to,
                    Msg {
                        op: Op::Views,
                        port: 0,
                        epoch: None,
                        body: Body::Watermark(wm),
                    },
                );
            }
            self.activate(Op::Source, w, 0);
        }
    }

    fn views_step(&mut self, w: usize) {
        let frontiers = self.frontiers(Op::Views);
        let msgs = self.take(Op::Views, w);
        let t = &mut self.tables[w];
        let mut durable_moved = false;
        for (k, j) in self.g.stateful().into_iter().enumerate() {
            durable_moved |= t.set_durable(ModelId(j as u16), frontiers[k]);
        }
        let mut news = false;
        for m in msgs {
            match m.body {
                Body::Cut(c) => t.on_cut(c),
                Body::Recover(r) => news |= t.on_recover(r),
                Body::Watermark(wm) => t.on_watermark(wm.partition, wm.offset),
                _ => {}
            }
        }
        let applied = t.advance();
        if !applied.is_empty() {
            let v = t.view();
            if self.trace {
                let line = format!("w{w} view {v}: {applied:?}");
                self.log(line);
            }
            news = true;
        }
        // Everyone on this worker reads the table: wake whoever it concerns.
        for op in self.ops.clone() {
            let durable_readers = durable_moved && matches!(op, Op::Infer(_));
            if op != Op::Views && (news || durable_readers) {
                self.activate(op, w, 0);
            }
        }
    }

    fn coord_step(&mut self, w: usize) {
        for m in self.take(Op::Coord, w) {
            if let Body::Failed(f) = m.body {
                if let Some(r) = self.coordinator.on_failed(&f) {
                    if self.trace {
                        let line = format!("coordinator: {r:?}");
                        self.log(line);
                    }
                    for to in 0..self.workers {
                        self.send(
                            w,
                            to,
                            Msg {
                                op: Op::Views,
                                port: 0,
                                epoch: None,
                                body: Body::Recover(r.clone()),
                            },
                        );
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- executors

    fn spawn(&mut self, w: usize, node: usize, exec: ExecId, owner: Op) {
        let load = 500 + self.jitter(self.cfg.load_us);
        let rng = self.rng.gen();
        self.execs[w].insert(
            exec,
            SimExec {
                node,
                owner: Some(owner),
                alive: true,
                hung: false,
                ready: false,
                busy_until: self.now + load,
                sessions: BTreeMap::new(),
                mailbox: VecDeque::new(),
                rng,
            },
        );
        self.at(
            self.now + load,
            Ev::Exec {
                w,
                exec,
                ev: ExecEvent::Ready,
            },
        );
    }

    fn adopt(&mut self, w: usize, exec: ExecId, owner: Op) {
        if let Some(ex) = self.execs[w].get_mut(&exec) {
            ex.owner = Some(owner);
        }
        self.activate(owner, w, 0);
    }

    fn exec_command(&mut self, w: usize, exec: ExecId, cmd: ToExecutor) {
        let service = 50 + self.jitter(self.cfg.service_us);
        let nondeterministic = self.cfg.nondeterministic;
        let now = self.now;
        let Some(ex) = self.execs[w].get_mut(&exec) else { return };
        if !ex.alive || ex.hung {
            return;
        }
        let (at, ev) = match cmd {
            ToExecutor::Infer(req) => {
                let stateful = self.g.nodes[ex.node].stateful;
                let mut rng = ex.rng;
                let resp = model::run_batch(ModelId(ex.node as u16), stateful, &mut ex.sessions, &req, || {
                    if nondeterministic {
                        rng = model::mix(rng, 1);
                        rng
                    } else {
                        0
                    }
                });
                ex.rng = rng;
                ex.busy_until = ex.busy_until.max(now) + service * req.items.len().max(1) as u64;
                (ex.busy_until, ExecEvent::Done(resp))
            }
            ToExecutor::Ping(n) => (now + 20, ExecEvent::Pong(n)),
            ToExecutor::Restore(states) => {
                ex.sessions = states.into_iter().collect();
                ex.busy_until = ex.busy_until.max(now) + 30;
                (ex.busy_until, ExecEvent::Restored)
            }
            ToExecutor::Shutdown => {
                self.execs[w].remove(&exec);
                return;
            }
        };
        self.at(at, Ev::Exec { w, exec, ev });
    }

    fn exec_event(&mut self, w: usize, exec: ExecId, ev: ExecEvent) {
        let Some(ex) = self.execs[w].get_mut(&exec) else { return };
        let death = matches!(ev, ExecEvent::Died { .. });
        if !death && (!ex.alive || ex.hung) {
            return;
        }
        ex.ready |= matches!(ev, ExecEvent::Ready);
        ex.mailbox.push_back(ev);
        if let Some(owner) = ex.owner {
            self.activate(owner, w, 0);
        }
    }

    fn kill(&mut self, w: usize, exec: ExecId) {
        let Some(ex) = self.execs[w].get_mut(&exec) else { return };
        if !ex.alive {
            return;
        }
        ex.alive = false;
        let seen = 50 + self.jitter(500);
        let ev = ExecEvent::Died { reason: "killed".into() };
        self.at(self.now + seen, Ev::Exec { w, exec, ev });
    }

    // ---------------------------------------------------------------- faults

    fn fault(&mut self, k: usize) {
        let f = self.cfg.faults[k].clone();
        if let Target::Process(p) = f.target {
            self.fired[k] = true;
            self.last_fault = self.now;
            let lost = (f.kind == FaultKind::Wipe).then_some(p);
            self.restart(lost);
            return;
        }
        let found = match f.target {
            Target::Primary(i) | Target::Stateless(i) => {
                let w = if self.g.nodes[i].stateful {
                    self.tables[0].placement(ModelId(i as u16)).primary.0
                } else {
                    self.place.primary[i].0
                };
                self.infer[&(i, w)].executors().next().map(|x| (w, x))
            }
            Target::Spare(i) => {
                let w = self.tables[0].placement(ModelId(i as u16)).backup.0;
                self.backup[&(i, w)].spare().map(|x| (w, x))
            }
            Target::Process(_) => None,
        };
        let Some((w, exec)) = found else { return };
        let hang = f.kind == FaultKind::Hang;
        if !self.execs[w].get(&exec).is_some_and(|e| e.alive && !e.hung && (e.ready || !hang)) {
            return;
        }
        self.fired[k] = true;
        if self.trace {
            let line = format!("fault {k}: {:?} {:?} exec {exec} on w{w}", f.kind, f.target);
            self.log(line);
        }
        self.last_fault = self.now;
        match f.kind {
            FaultKind::Kill | FaultKind::Wipe => self.kill(w, exec),
            FaultKind::Hang => {
                if let Some(ex) = self.execs[w].get_mut(&exec) {
                    ex.hung = true;
                }
            }
        }
    }

    // ---------------------------------------------------------------- the end

    fn final_checks(&mut self) {
        let partitions: BTreeMap<u32, Partition> = self
            .sources
            .iter()
            .enumerate()
            .map(|(p, s)| {
                let part = Partition {
                    accepted: s.log.len() as u64,
                    watermark: s.watermark,
                    above: s.above.clone(),
                };
                (p as u32, part)
            })
            .collect();
        let mut lineage = Vec::new();
        for d in &self.disks {
            for ((m, seq), e) in &d.lineage {
                lineage.push((*m, *seq, e.lineage_record()));
            }
        }
        // The final states are those of the latest backup that synced: a new
        // backup that never received its snapshot (everything was released from
        // held executions first) wrote nothing.
        let mut finals: BTreeMap<ModelId, (Incarnation, BTreeMap<SessionId, crate::ids::Fingerprint>)> = BTreeMap::new();
        for d in &self.disks {
            for (m, (inc, states)) in &d.states {
                if finals.get(m).is_none_or(|(i, _)| inc > i) {
                    finals.insert(*m, (*inc, states.iter().map(|(k, v)| (*k, v.fp)).collect()));
                }
            }
        }
        let finals = finals.into_iter().map(|(m, (_, s))| (m, s)).collect();
        let g = &self.g;
        let stateful_sink: BTreeSet<ModelId> = g.sink_stateful().into_iter().map(|j| ModelId(j as u16)).collect();
        let expected = |o: &OutputRecord| -> BTreeSet<ModelId> {
            match &o.outcome {
                Ok(_) => stateful_sink.clone(),
                Err(e) if e.node == "source" => BTreeSet::new(),
                Err(e) => {
                    let i = g.nodes.iter().position(|n| n.name == e.node).expect("node");
                    let mut a = g.ancestors(i);
                    a.push(i);
                    a.into_iter().filter(|j| g.nodes[*j].stateful).map(|j| ModelId(j as u16)).collect()
                }
            }
        };
        let name = |m: ModelId| g.nodes[m.0 as usize].name.to_string();
        let origin = |m: ModelId, s: SessionId| model::origin(m, s);
        let ev = Evidence {
            partitions,
            outputs: self.outputs.clone(),
            lineage,
            horizon: BTreeMap::new(),
            final_states: Some(finals),
            origin: &origin,
            expected: &expected,
            name: &name,
        };
        let report = invariants::check(&ev);
        if !report.consistent() {
            let text = report.to_string();
            self.violation(format!("checker: {}", text.trim_end()));
        }
        if !self.cfg.nondeterministic {
            self.check_reference();
        }
    }

    /// I5: with deterministic models, the released results are the fault-free run's.
    fn check_reference(&mut self) {
        let g = self.g.clone();
        let partitions = self.workers as u64;
        let mut states: Vec<BTreeMap<SessionId, SessionState>> = vec![BTreeMap::new(); g.nodes.len()];
        let mut want: BTreeMap<Seq, Result<Values, ErrorKind>> = BTreeMap::new();
        let total = self.cfg.requests * partitions;
        for s in 0..total {
            let seq = Seq(s);
            let (w, offset) = (s % partitions, s / partitions);
            if self.cfg.bad_every > 0 && offset % self.cfg.bad_every == self.cfg.bad_every - 1 {
                want.insert(seq, Err(ErrorKind::Shape));
                continue;
            }
            let (session, start, end) = self.cfg.session_of(w, offset, partitions);
            let mut outs: Vec<Option<Vec<f32>>> = vec![None; g.nodes.len()];
            let mut err = None;
            let value = |x: &Input, outs: &[Option<Vec<f32>>]| match x {
                Input::Source => model::request_input(seq),
                Input::Node(j) => outs[*j].clone().expect("topological"),
            };
            for (i, node) in g.nodes.iter().enumerate() {
                let input: Vec<f32> = node.inputs.iter().flat_map(|x| value(x, &outs)).collect();
                let req = crate::exec::InferRequest {
                    ticket: 0,
                    epoch: Epoch(0),
                    items: vec![crate::exec::Item {
                        seq,
                        session,
                        start,
                        end,
                        input: Values::F32(input),
                    }],
                };
                let resp = model::run_batch(ModelId(i as u16), node.stateful, &mut states[i], &req, || 0);
                match resp.outputs.into_iter().next().expect("one").outcome {
                    Ok(v) => outs[i] = Some(v),
                    Err(e) => {
                        err = Some(e.kind);
                        break;
                    }
                }
            }
            let result = match err {
                Some(k) => Err(k),
                None => Ok(Values::F32(g.sink.iter().flat_map(|x| value(x, &outs)).collect())),
            };
            want.insert(seq, result);
        }
        let outputs = std::mem::take(&mut self.outputs);
        for (_, o) in &outputs {
            let got = o.outcome.clone().map_err(|e| e.kind);
            if want.get(&o.seq) != Some(&got) {
                self.violation(format!(
                    "I5: seq {} released {got:?}, the fault-free run gives {:?}",
                    o.seq,
                    want.get(&o.seq)
                ));
                break;
            }
        }
        self.outputs = outputs;
    }
}

/// A backup's writes to its process's disk; every lineage record written is
/// checked against the ground truth (I3 at commit time, and no double commit).
struct SimDisk<'a> {
    disk: &'a mut Disk,
    committed: &'a mut HashMap<(ModelId, Seq), LineageRecord>,
    violations: Vec<String>,
    fail: bool,
}

impl Durable for SimDisk<'_> {
    fn write(&mut self, w: &Write<'_>) -> Result<(), String> {
        if self.fail {
            return Err("simulated write failure".into());
        }
        let entry = self.disk.states.entry(w.model).or_default();
        if w.reset || entry.0 != w.inc {
            *entry = (w.inc, BTreeMap::new());
        }
        for (s, st) in w.states {
            match st {
                Some(st) => entry.1.insert(*s, st.clone()),
                None => entry.1.remove(s),
            };
        }
        for e in w.lineage {
            let (seq, rec) = (&e.seq, e.lineage_record());
            for t in &rec.upstream {
                let held = self
                    .committed
                    .get(&(t.model, *seq))
                    .is_some_and(|c| c.fp == t.fingerprint && c.inc == t.incarnation && c.epoch == t.epoch);
                if !held {
                    self.violations.push(format!(
                        "I3: model {} committed seq {seq} derived from model {}'s execution (inc {}, epoch {}) its backup does not hold",
                        w.model.0, t.model.0, t.incarnation.0, t.epoch.0
                    ));
                }
            }
            if let Some(prev) = self.committed.insert((w.model, *seq), rec.clone()) {
                if prev != rec {
                    self.violations.push(format!(
                        "I4: model {} seq {seq} committed twice: fp {} -> {} (inc {}) and fp {} -> {} (inc {})",
                        w.model.0, prev.prev_fp.0, prev.fp.0, prev.inc.0, rec.prev_fp.0, rec.fp.0, rec.inc.0
                    ));
                }
            }
            self.disk.lineage.insert((w.model, *seq), e.clone());
        }
        Ok(())
    }
}

fn brief(a: &InferAction) -> String {
    match a {
        InferAction::Send {
            exec,
            cmd: ToExecutor::Infer(r),
        } => {
            let seqs: Vec<u64> = r.items.iter().map(|i| i.seq.0).collect();
            format!("send {exec} batch {} at {} {seqs:?}", r.ticket, r.epoch)
        }
        InferAction::Output { epoch, out } => {
            let ok: Vec<String> = out.ok.iter().map(|e| format!("{}@{}", e.meta.seq, e.meta.view)).collect();
            let err: Vec<String> = out.err.iter().map(|e| format!("{}:{:?}", e.meta.seq, e.error.kind)).collect();
            format!("output at {epoch} ok {ok:?} err {err:?}")
        }
        InferAction::Delta { epoch, delta } => match &delta.body {
            crate::records::DeltaBody::Exec { executions, .. } => {
                let e: Vec<String> = executions
                    .iter()
                    .map(|x| format!("{}:{}->{}", x.seq, x.prev_fp.0 % 1000, x.fp.0 % 1000))
                    .collect();
                format!("delta at {epoch} to {} inc {} {e:?}", delta.to, delta.inc)
            }
            crate::records::DeltaBody::Snapshot { states, executions } => {
                format!(
                    "snapshot at {epoch} to {} inc {} ({} states, {} held)",
                    delta.to,
                    delta.inc,
                    states.len(),
                    executions.len()
                )
            }
        },
        other => format!("{other:?}").chars().take(160).collect(),
    }
}
