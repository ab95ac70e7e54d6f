//! A deterministic simulator for the protocol, in the manner of
//! FoundationDB's and TigerBeetle's: the real state machines of this crate
//! run against simulated workers, channels, progress tracking, executors
//! and disks under one seeded clock, through randomly drawn fault
//! schedules. Every schedule checks I1–I5 as it goes (I2 at each release,
//! I3 at each commit) and at the end (the shared [`crate::invariants`]
//! checker, and the fault-free reference for I5), plus liveness: every
//! request is released within [`LIVENESS_US`] of the last fault.
//!
//! A schedule is a pure function of its seed: [`Schedule::from_seed`] draws
//! the graph, the cluster, the load and the faults, and [`run`] replays it
//! exactly.

mod model;
mod world;

pub use model::{Graph, Input, Node};
pub use world::{Outcome, LIVENESS_US};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ids::{Micros, SessionId};

/// What a fault does to its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A crash (seen at once).
    Kill,
    /// A hang (seen only by the deadline).
    Hang,
    /// (Processes) a crash that also loses the process's disk.
    Wipe,
}

/// Whose executor a fault hits, resolved when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The current primary of a stateful node.
    Primary(usize),
    /// The current backup's warm spare of a stateful node.
    Spare(usize),
    /// The executor of a stateless node.
    Stateless(usize),
    /// A whole worker process (the cluster restarts from its disks).
    Process(usize),
}

/// A planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Whose executor.
    pub target: Target,
    /// Crash or hang.
    pub kind: FaultKind,
    /// When (simulated µs).
    pub at: Micros,
}

/// Everything a schedule is made of.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed (drives every random choice of the run).
    pub seed: u64,
    /// The service graph.
    pub graph: Graph,
    /// Workers in all.
    pub workers: usize,
    /// Workers per process.
    pub threads: usize,
    /// Requests per partition.
    pub requests: u64,
    /// Time between a partition's requests.
    pub gap_us: Micros,
    /// Concurrent sessions per partition.
    pub sessions: u64,
    /// Requests per session.
    pub session_len: u64,
    /// Every n-th request of a partition is malformed (0: none).
    pub bad_every: u64,
    /// Perturb every execution (GPU-like non-determinism).
    pub nondeterministic: bool,
    /// Stop-and-buffer instead of HAMS.
    pub stop_and_buffer: bool,
    /// Epoch length.
    pub epoch_us: Micros,
    /// Largest batch.
    pub max_batch: usize,
    /// Hang detection deadline.
    pub deadline_us: Micros,
    /// Backups hold each epoch this long before applying it.
    pub apply_delay_us: Micros,
    /// Backup writes fail now and then.
    pub write_failures: bool,
    /// Largest delay of a message between workers.
    pub net_delay_us: Micros,
    /// Largest delay of a message within a worker.
    pub local_delay_us: Micros,
    /// Largest delay before a worker learns of a frontier change.
    pub progress_delay_us: Micros,
    /// Largest per-item service time of an executor.
    pub service_us: Micros,
    /// Largest model load time.
    pub load_us: Micros,
    /// The faults.
    pub faults: Vec<Fault>,
    /// Record what happens in [`Outcome::trace`].
    pub trace: bool,
}

impl Config {
    /// A fault-free schedule of `graph` with moderate settings.
    pub fn quiet(seed: u64, graph: Graph) -> Config {
        Config {
            seed,
            graph,
            workers: 3,
            threads: 1,
            requests: 30,
            gap_us: 400,
            sessions: 3,
            session_len: 5,
            bad_every: 0,
            nondeterministic: true,
            stop_and_buffer: false,
            epoch_us: 1000,
            max_batch: 8,
            deadline_us: 200_000,
            apply_delay_us: 0,
            write_failures: false,
            net_delay_us: 400,
            local_delay_us: 50,
            progress_delay_us: 300,
            service_us: 300,
            load_us: 3000,
            faults: Vec::new(),
            trace: false,
        }
    }

    /// Session, start and end of request `offset` of `partition`.
    pub fn session_of(&self, partition: u64, offset: u64, partitions: u64) -> (Option<SessionId>, bool, bool) {
        let slots = self.sessions.max(1);
        let len = self.session_len.max(1);
        let slot = offset % slots;
        let round = offset / slots;
        let (generation, step) = (round / len, round % len);
        let session = (generation * slots + slot) * partitions + partition;
        (Some(SessionId(session)), step == 0, step == len - 1)
    }

    /// One line describing the schedule.
    pub fn describe(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| {
                let (what, i) = match f.target {
                    Target::Primary(i) => ("primary", i),
                    Target::Spare(i) => ("spare", i),
                    Target::Stateless(i) => ("stateless", i),
                    Target::Process(p) => return format!("{:?} process {p}@{}us", f.kind, f.at),
                };
                format!("{:?} {}:{what}@{}us", f.kind, self.graph.nodes[i].name, f.at)
            })
            .collect();
        format!(
            "graph {} on {} workers ({} per process), {} requests/partition every {}us, {}{}{}{}apply delay {}us; faults: [{}]",
            self.graph.name,
            self.workers,
            self.threads,
            self.requests,
            self.gap_us,
            if self.nondeterministic {
                "nondeterministic, "
            } else {
                "deterministic, "
            },
            if self.stop_and_buffer { "stop-and-buffer, " } else { "" },
            if self.write_failures { "failing writes, " } else { "" },
            if self.bad_every > 0 { "bad requests, " } else { "" },
            self.apply_delay_us,
            faults.join(", ")
        )
    }
}

/// Draws a schedule from its seed.
pub struct Schedule;

impl Schedule {
    /// The schedule of `seed`: graph, cluster, load, timing and faults.
    pub fn from_seed(seed: u64) -> Config {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shapes = Graph::shapes();
        let graph = shapes[rng.gen_range(0..shapes.len())].clone();
        let mut c = Config::quiet(seed, graph);
        let (workers, threads) = [(2, 1), (3, 1), (4, 2), (2, 2), (4, 1)][rng.gen_range(0..5)];
        c.workers = workers;
        c.threads = threads;
        c.requests = rng.gen_range(10..40);
        c.gap_us = rng.gen_range(100..1500);
        c.sessions = rng.gen_range(1..4);
        c.session_len = rng.gen_range(2..8);
        c.bad_every = if rng.gen_ratio(1, 4) { rng.gen_range(3..9) } else { 0 };
        c.nondeterministic = rng.gen_ratio(2, 3);
        c.stop_and_buffer = rng.gen_ratio(1, 8);
        c.max_batch = rng.gen_range(1..16);
        c.deadline_us = rng.gen_range(20_000..200_000);
        c.apply_delay_us = if rng.gen_ratio(1, 3) { rng.gen_range(0..20_000) } else { 0 };
        c.write_failures = rng.gen_ratio(1, 6);
        c.net_delay_us = rng.gen_range(10..2000);
        c.progress_delay_us = rng.gen_range(10..2000);
        // Executors keep up with the load (an overloaded schedule only runs longer).
        c.service_us = rng.gen_range(10..(c.gap_us / 3).max(11));
        let span = c.requests * c.gap_us + 5_000;
        let stateful = c.graph.stateful();
        let stateless: Vec<usize> = (0..c.graph.nodes.len()).filter(|i| !stateful.contains(i)).collect();
        let n = rng.gen_range(0..4);
        // Faults begin once every model has loaded (as `hams` starts its clocks).
        let loaded = c.load_us + 1_000;
        let mut t = loaded + rng.gen_range(0..span);
        let processes = c.workers / c.threads;
        for _ in 0..n {
            let kind = if rng.gen_ratio(1, 5) { FaultKind::Hang } else { FaultKind::Kill };
            if processes > 1 && rng.gen_ratio(1, 6) {
                let kind = if rng.gen_ratio(1, 2) { FaultKind::Wipe } else { FaultKind::Kill };
                c.faults.push(Fault {
                    target: Target::Process(rng.gen_range(0..processes)),
                    kind,
                    at: t,
                });
                t += rng.gen_range(0..span);
                continue;
            }
            let target = match rng.gen_range(0..6) {
                0..=2 => Target::Primary(stateful[rng.gen_range(0..stateful.len())]),
                3..=4 => Target::Spare(stateful[rng.gen_range(0..stateful.len())]),
                _ if !stateless.is_empty() => Target::Stateless(stateless[rng.gen_range(0..stateless.len())]),
                _ => Target::Primary(stateful[0]),
            };
            c.faults.push(Fault { target, kind, at: t });
            // Often the next fault lands during the recovery from this one.
            t += if rng.gen_ratio(1, 2) {
                rng.gen_range(0..3_000)
            } else {
                rng.gen_range(0..span)
            };
        }
        c
    }
}

/// Runs one schedule to its end.
pub fn run(cfg: Config) -> Outcome {
    world::World::new(cfg).run()
}

/// The smallest schedule derived from a failing `cfg` that still fails:
/// faults are dropped one at a time and the load halved while it fails.
pub fn shrink(cfg: Config) -> Config {
    let mut best = cfg;
    loop {
        let mut smaller = false;
        for k in 0..best.faults.len() {
            let mut c = best.clone();
            c.faults.remove(k);
            if !run(c.clone()).violations.is_empty() {
                best = c;
                smaller = true;
                break;
            }
        }
        if !smaller && best.requests > 2 {
            let mut c = best.clone();
            c.requests /= 2;
            if !run(c.clone()).violations.is_empty() {
                best = c;
                smaller = true;
            }
        }
        if !smaller {
            return best;
        }
    }
}
