//! Running a graph: timely workers (threads and processes), ingestion with
//! epochs, flow control, progress and the final summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hams_storage::{layout, Store};
use timely::communication::Config as CommConfig;

use hams_operators::ops::faults::{Fault, FaultKind, Role};
use hams_operators::ops::telemetry::FaultLog;

use crate::compile::{self, Executors, Plan};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::mode::Mode;
use crate::placement::{place, Cluster};
use crate::source::{now_us, Feed, Ingest};
use crate::summary::{FaultReport, Summary, Totals};

/// Set by a supervisor for the processes it (re)starts: the same id across
/// restarts of one run (so a restart continues the run's feed).
pub const ENV_RUN_ID: &str = "HAMS_RUN_ID";

/// Where this process sits in a timely cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timely {
    /// Worker threads per process.
    pub threads: usize,
    /// Index of this process.
    pub process: usize,
    /// Addresses (`host:port`) of all processes; empty or one entry for a single process.
    pub addresses: Vec<String>,
}

impl Timely {
    /// One process with `threads` workers.
    pub fn threads(threads: usize) -> Self {
        Timely {
            threads,
            process: 0,
            addresses: Vec::new(),
        }
    }

    /// Number of processes.
    pub fn processes(&self) -> usize {
        self.addresses.len().max(1)
    }

    fn config(&self) -> timely::Config {
        let communication = if self.processes() > 1 {
            CommConfig::Cluster {
                threads: self.threads,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            }
        } else if self.threads > 1 {
            CommConfig::Process(self.threads)
        } else {
            CommConfig::Thread
        };
        timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        }
    }
}

/// Everything about one run of a graph.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The service graph.
    pub graph: Graph,
    /// Cluster shape and this process's place in it.
    pub timely: Timely,
    /// New requests.
    pub feed: Feed,
    /// Data directory (shared by the processes of a local cluster).
    pub data_dir: PathBuf,
    /// Epoch length: requests arriving within one tick form one epoch.
    pub epoch_us: u64,
    /// Closed-loop window: requests in flight per worker when no rate is set.
    pub max_inflight: usize,
    /// Executor hosting.
    pub executors: Executors,
    /// GPU-like non-determinism (relative perturbation; 0 = deterministic).
    pub noise: f32,
    /// fsync each durable batch.
    pub sync: bool,
    /// Print a progress line every second (process 0, worker 0).
    pub progress: bool,
    /// Stop ingesting after this long.
    pub duration: Option<Duration>,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// An executor silent this long (with work or a ping outstanding) is declared hung.
    pub deadline: Duration,
    /// Committed lineage records kept behind the released watermark (for `hams verify`).
    pub lineage_retention: u64,
    /// Output records kept per partition; older ones are garbage-collected.
    pub retain_outputs: u64,
    /// Run the consistency checker over the data directory at the end (process 0).
    pub verify: bool,
    /// Make backups hold each epoch this long before applying it (experiments, tests).
    pub backup_delay: Duration,
    /// Fault-tolerance protocol.
    pub mode: Mode,
    /// Checkpoint interval of the `checkpoint` mode.
    pub checkpoint_every: Duration,
    /// Whole-process faults to inject (by index; each fires once per run).
    pub process_faults: Vec<ProcessFault>,
    /// Process faults already injected in earlier lives of this run, with their times (µs since the Unix epoch).
    pub fired_process_faults: BTreeMap<usize, u64>,
    /// Where to note a process fault before it strikes (for the supervisor).
    pub fault_log: Option<PathBuf>,
    /// Which restart of this process this is (0: its first start).
    pub generation: u32,
}

/// A planned fault of a whole worker process: SIGKILL `process` when it
/// logs a request with `seq >= at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessFault {
    /// The process.
    pub process: usize,
    /// Request threshold.
    pub at: u64,
}

/// Parses a process fault `PROCESS@SEQ` for a cluster of `processes`.
///
/// # Examples
/// ```
/// use hams_dataflow::run::parse_process_fault;
/// assert_eq!(parse_process_fault("1@500", 3).unwrap().process, 1);
/// assert!(parse_process_fault("3@500", 3).is_err());
/// assert!(parse_process_fault("1", 3).is_err());
/// ```
pub fn parse_process_fault(text: &str, processes: usize) -> Result<ProcessFault> {
    let err = |m: String| Error::Config(format!("--kill-process {text:?}: {m} (expected PROCESS@SEQ)"));
    let (p, at) = text.split_once('@').ok_or_else(|| err("missing @SEQ".into()))?;
    let process: usize = p.parse().map_err(|_| err(format!("{p:?} is not a process index")))?;
    let at: u64 = at.parse().map_err(|_| err(format!("{at:?} is not a sequence number")))?;
    if processes < 2 {
        return Err(err("a single process has no peer to carry on: use -n 2 or more".into()));
    }
    if process >= processes {
        return Err(err(format!("the cluster has processes 0..{processes}")));
    }
    Ok(ProcessFault { process, at })
}

impl RunConfig {
    /// A single-process run of `graph` with `threads` workers and defaults for the rest.
    pub fn new(graph: Graph, threads: usize, data_dir: PathBuf, executors: Executors) -> Self {
        RunConfig {
            graph,
            timely: Timely::threads(threads),
            feed: Feed::Generate {
                total: Some(1000),
                rate: None,
            },
            data_dir,
            epoch_us: 1000,
            max_inflight: 256,
            executors,
            noise: 0.0,
            sync: true,
            progress: false,
            duration: None,
            faults: Vec::new(),
            deadline: Duration::from_millis(500),
            lineage_retention: 100_000,
            retain_outputs: 1_000_000,
            verify: true,
            backup_delay: Duration::ZERO,
            mode: Mode::Hams,
            checkpoint_every: Duration::from_millis(500),
            process_faults: Vec::new(),
            fired_process_faults: BTreeMap::new(),
            fault_log: None,
            generation: 0,
        }
    }
}

/// Parses a fault `MODEL[:primary|:backup]@SEQ` against `graph`.
///
/// # Examples
/// ```
/// use hams_dataflow::{run::parse_fault, GraphDef, NodeDef, SourceDef};
/// use hams_operators::ops::faults::{FaultKind, Role};
/// let g = GraphDef::new("g", SourceDef::features([4]).sessions(2, 4))
///     .node(NodeDef::lstm("lstm", 8).inputs(["source"]).output(2))
///     .sink(["lstm"]).build().unwrap();
/// let f = parse_fault(&g, "lstm:backup@250", FaultKind::Kill).unwrap();
/// assert_eq!((f.model, f.role, f.at), (0, Role::Backup, 250));
/// assert!(parse_fault(&g, "nope@3", FaultKind::Kill).is_err());
/// ```
pub fn parse_fault(graph: &Graph, text: &str, kind: FaultKind) -> Result<Fault> {
    let err = |m: String| Error::Config(format!("fault {text:?}: {m} (expected MODEL[:primary|:backup]@SEQ)"));
    let (target, at) = text.rsplit_once('@').ok_or_else(|| err("missing @SEQ".into()))?;
    let at: u64 = at.parse().map_err(|_| err(format!("{at:?} is not a sequence number")))?;
    let (name, role) = match target.split_once(':') {
        Some((n, "primary")) => (n, Role::Primary),
        Some((n, "backup")) => (n, Role::Backup),
        Some((_, r)) => return Err(err(format!("unknown role {r:?}"))),
        None => (target, Role::Primary),
    };
    let i = graph.nodes.iter().position(|n| n.spec.name == name).ok_or_else(|| {
        let names: Vec<_> = graph.nodes.iter().map(|n| n.spec.name.as_str()).collect();
        err(format!("no node {name:?} in graph {} (nodes: {})", graph.name, names.join(", ")))
    })?;
    if role == Role::Backup && !graph.nodes[i].spec.is_stateful() {
        return Err(err(format!("{name} is stateless and has no backup")));
    }
    Ok(Fault {
        model: i as u16,
        role,
        at,
        kind,
    })
}

fn describe_fault(graph: &Graph, f: &Fault) -> String {
    let role = match f.role {
        Role::Primary => "primary",
        Role::Backup => "backup",
    };
    let verb = match f.kind {
        FaultKind::Kill => "kill",
        FaultKind::Hang => "hang",
    };
    format!("{verb} {}:{role}@{}", graph.nodes[f.model as usize].spec.name, f.at)
}

/// What became of each planned fault, from worker 0's logs.
fn fault_reports(plan: &Plan, config: &RunConfig, log: &FaultLog, totals: &Totals) -> Vec<FaultReport> {
    let rate = match config.feed {
        Feed::Generate { rate, .. } => rate,
        _ => None,
    };
    let mut reports = executor_fault_reports(plan, log, totals, rate);
    // A process fault's recovery is measured by the first life of the cluster
    // after it: this one, for the latest fault.
    let latest = config.fired_process_faults.values().max().copied();
    for (i, f) in config.process_faults.iter().enumerate() {
        let at = config.fired_process_faults.get(&i).copied();
        let recovered = match (at, totals.first_release_at) {
            (Some(t), Some(first)) if Some(t) == latest && first > t => Some((first - t) as f64 / 1000.0),
            _ => None,
        };
        reports.push(FaultReport {
            fault: format!("kill process {}@{}", f.process, f.at),
            injected: at.is_some(),
            view: None,
            recovery_ms: recovered,
            // Only the offered rate is a baseline here: the releases before the kill were another life's.
            throughput_back_ms: at
                .filter(|t| Some(*t) == latest && rate.is_some())
                .and_then(|t| totals.throughput_back_ms(t, rate)),
        });
    }
    reports
}

fn executor_fault_reports(plan: &Plan, log: &FaultLog, totals: &Totals, rate: Option<f64>) -> Vec<FaultReport> {
    plan.faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let hit = log.injected.get(&i).copied();
            let injected = hit.map(|(at, _)| at);
            let stateful = plan.graph.nodes[f.model as usize].spec.is_stateful();
            let mut view = None;
            let recovered = hit.and_then(|(at, inc)| {
                if stateful && f.role == Role::Primary && plan.mode.replicates() {
                    // The view change that replaced the incarnation hit (another
                    // fault's may have, before this one's report came in), then
                    // the model's first release from a later incarnation.
                    let (v, _, inc, _) = log
                        .recoveries
                        .iter()
                        .find(|(_, m, i, t)| *m == f.model && inc.map_or(*t >= at, |hit| *i > hit))?;
                    view = Some(*v);
                    totals
                        .first_release
                        .iter()
                        .filter(|((m, i), _)| *m == f.model && *i >= *inc)
                        .map(|(_, t)| *t)
                        .min()
                } else {
                    log.respawned.get(&i).copied()
                }
            });
            FaultReport {
                fault: describe_fault(&plan.graph, f),
                injected: injected.is_some(),
                view,
                recovery_ms: injected.zip(recovered).map(|(a, b)| b.saturating_sub(a) as f64 / 1000.0),
                throughput_back_ms: injected.and_then(|t| totals.throughput_back_ms(t, rate)),
            }
        })
        .collect()
}

/// Tells this run's processes from any other's on the same ports.
fn cluster_tag(addresses: &[String], graph: &str) -> u64 {
    let bytes: Vec<u8> = addresses.iter().map(String::as_str).chain([graph]).flat_map(str::bytes).collect();
    crate::serve::fnv(&bytes)
}

/// Set by [`request_stop`] (e.g. on Ctrl-C): stop ingesting, drain, report.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks running workers to stop taking new requests and finish; true if a
/// stop had already been asked for.
pub fn request_stop() -> bool {
    STOP.swap(true, Ordering::SeqCst)
}

/// Runs the graph; returns the summary on process 0 (`None` on the others).
pub fn run(config: RunConfig) -> Result<Option<Summary>> {
    let cluster = Cluster {
        processes: config.timely.processes(),
        threads: config.timely.threads.max(1),
    };
    if config.timely.process >= cluster.processes {
        return Err(Error::Config(format!(
            "process index {} but only {} processes",
            config.timely.process, cluster.processes
        )));
    }
    hams_operators::metrics::metrics().restarts(config.generation as u64);
    let dir = layout::process_dir(&config.data_dir, config.timely.process)?;
    let (store, _mirror) = match config.timely.addresses.len() {
        0 | 1 => (Store::open(&dir)?, None),
        _ => {
            let tag = cluster_tag(&config.timely.addresses, &config.graph.name);
            let (store, server) = crate::replica::open(&config.data_dir, &dir, &config.timely.addresses, config.timely.process, tag)?;
            (store, Some(server))
        }
    };
    let first = (config.timely.process * cluster.threads) as u32;
    let partitions: Vec<u32> = (first..first + cluster.threads as u32).collect();
    crate::resume::check_compatible(&store, &config.graph, &partitions)?;
    crate::verify::record_run(&store, &config.graph, partitions.clone())?;
    if let Feed::Serve(front) = &config.feed {
        // Process K serves on the given port + K, its own partitions.
        let addr = front.address(config.timely.process)?;
        let peers = (0..cluster.processes)
            .map(|j| front.peer_address(j, &config.timely.addresses))
            .collect::<Result<Vec<_>>>()?;
        let bound = crate::serve::start(front, &addr, store.clone(), &partitions, cluster.workers() as u32, peers)
            .map_err(|e| Error::Config(format!("serving on {addr}: {e}")))?;
        eprintln!(
            "hams: process {} serves the Open Inference Protocol at http://{bound}/v2",
            config.timely.process
        );
    }
    // Results also go to Kafka: one publisher for this process's home partitions.
    let publisher = match &config.graph.sink_kafka {
        Some(topic) => {
            let first = (config.timely.process * cluster.threads) as u32;
            let parts = (first..first + cluster.threads as u32).collect();
            Some(Arc::new(crate::kafka::Publisher::connect(topic, store.clone(), parts)?))
        }
        None => None,
    };
    let keep_outputs_from = publisher
        .as_ref()
        .map(|p| (0..cluster.workers() as u32).map(|w| (w, p.floor(w))).collect())
        .unwrap_or_default();
    let placement = place(&config.graph, cluster);
    if config.timely.process == 0 {
        tracing::info!(graph = %config.graph.name, "placement:\n{placement}");
    }
    let plan = Arc::new(Plan {
        graph: config.graph.clone(),
        placement,
        executors: config.executors.clone(),
        noise: config.noise,
        sync: config.sync,
        faults: config.faults.clone(),
        deadline: config.deadline,
        lineage_retention: config.lineage_retention,
        backup_delay: config.backup_delay,
        retain_outputs: config.retain_outputs,
        mode: config.mode,
        checkpoint_every: config.checkpoint_every,
        keep_outputs_from,
    });
    let (addresses, process, threads) = (config.timely.addresses.clone(), config.timely.process, cluster.threads);
    let graph_name = config.graph.name.clone();
    let config = Arc::new(config);
    let timely_config = config.timely.config();
    let mode = config.mode;
    let publishing = Arc::new(AtomicBool::new(true));
    let publish_thread = publisher.clone().map(|p| {
        let on = publishing.clone();
        std::thread::spawn(move || {
            while on.load(Ordering::SeqCst) {
                if let Err(e) = p.publish() {
                    tracing::error!(error = %e, "publishing results to Kafka failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    });
    let guards = {
        // Timely prints connection progress on stdout; keep stdout for results.
        let _redirect = StdoutToStderr::new();
        let logic = move |worker: &mut timely::worker::Worker| worker_main(worker, &plan, &config, store.clone());
        if addresses.len() > 1 {
            let tag = cluster_tag(&addresses, &graph_name);
            let (builders, others) = crate::net::connect(&addresses, process, threads, tag, Duration::from_secs(120))
                .map_err(|e| Error::Timely(format!("connecting the cluster: {e}")))?;
            timely::execute::execute_from(builders, others, timely::WorkerConfig::default(), logic).map_err(Error::Timely)?
        } else {
            timely::execute(timely_config, logic).map_err(Error::Timely)?
        }
    };
    let mut summary = None;
    for result in guards.join() {
        match result {
            Ok(Ok(Some(s))) => summary = Some(s),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(panic) => return Err(Error::Timely(format!("worker failed: {panic}"))),
        }
    }
    publishing.store(false, Ordering::SeqCst);
    if let Some(t) = publish_thread {
        let _ = t.join();
    }
    if let Some(p) = &publisher {
        // Everything committed goes out before the run reports.
        while p.publish()? > 0 {}
    }
    if let Some(s) = summary.as_mut() {
        s.mode = mode.to_string();
    }
    Ok(summary)
}

fn worker_main(worker: &mut timely::worker::Worker, plan: &Arc<Plan>, config: &RunConfig, store: Arc<Store>) -> Result<Option<Summary>> {
    let index = worker.index();
    let peers = worker.peers();
    let threads = plan.placement.cluster.threads;
    let first = (index / threads * threads) as u32;
    let partitions: Vec<u32> = (first..first + threads as u32).collect();
    let resume = crate::resume::resume(worker, &store, &compile::initial(plan), &partitions, threads)?;
    let handles = compile::build(worker, plan, store.clone(), resume)?;
    let gather = crate::gather::build(worker, false);
    let mut inputs = Some((handles.ok_in, handles.err_in));
    let mut ingest = Ingest::new(
        store.clone(),
        &plan.graph,
        index as u32,
        peers as u32,
        config.feed.clone(),
        config.sync,
        handles.control.clone(),
        handles.released.clone(),
    )?;
    // Let the operators start their executors, and wait for the models to load, so
    // the first requests do not measure model loading.
    let loading_deadline = Instant::now() + hams_operators::executor::LOAD_DEADLINE;
    for _ in 0..3 {
        worker.step();
    }
    while hams_operators::executor::loading() > 0 && Instant::now() < loading_deadline {
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    // Start the clocks together so epochs line up across workers.
    timely::synchronization::Barrier::new(worker).wait();
    let start = Instant::now();
    let start_us = now_us();
    let epoch_us = config.epoch_us.max(1);
    let open_loop = matches!(config.feed, Feed::Generate { rate: Some(_), .. });
    let mut epoch = 0u64;
    let mut in_flight: std::collections::VecDeque<(u64, usize)> = Default::default();
    let mut outstanding = 0usize;
    let mut last_progress = Instant::now();
    let mut stalled: Option<(u64, Instant, Instant)> = None;
    loop {
        let elapsed_us = start.elapsed().as_micros() as u64;
        let tick = elapsed_us / epoch_us;
        if let Some((ok_in, err_in)) = inputs.as_mut().filter(|_| tick > epoch) {
            epoch = tick;
            hams_operators::metrics::metrics().epoch(epoch);
            ok_in.advance_to(epoch);
            err_in.advance_to(epoch);
        }
        while let Some(&(e, n)) = in_flight.front() {
            if handles.probe.less_equal(&e) {
                break;
            }
            in_flight.pop_front();
            outstanding -= n;
        }
        if let Some((ok_in, err_in)) = inputs.as_mut() {
            let budget = if open_loop {
                4096
            } else {
                config.max_inflight.saturating_sub(outstanding)
            };
            {
                // Polled even with no budget: a recovery's replay does not wait for the window.
                let records = ingest.poll(start_us, elapsed_us, budget)?;
                if !records.is_empty() {
                    let n = records.len();
                    let top = records.iter().map(|(o, _)| o * peers as u64 + index as u64).max().unwrap_or(0);
                    strike(config, index / threads, top);
                    for (offset, rec) in records {
                        match ingest.admit(offset, rec) {
                            Ok(env) => ok_in.send(env),
                            Err(fail) => err_in.send(*fail),
                        }
                    }
                    hams_operators::metrics::metrics().ingested(n as u64);
                    match in_flight.back_mut() {
                        Some((e, m)) if *e == epoch => *m += n,
                        _ => in_flight.push_back((epoch, n)),
                    }
                    outstanding += n;
                }
            }
            let out_of_time = config.duration.is_some_and(|d| start.elapsed() >= d);
            if ingest.done() || out_of_time || STOP.load(Ordering::SeqCst) {
                if let Feed::Serve(front) = &config.feed {
                    front.stop();
                }
                // Closing the inputs lets the frontier run to the end.
                inputs = None;
            }
        }
        let open = inputs.is_some();
        let wait_us = if open {
            let next_tick = (tick + 1) * epoch_us;
            let next = ingest.next_due_us().map_or(next_tick, |d| d.min(next_tick));
            next.saturating_sub(start.elapsed().as_micros() as u64).max(50)
        } else {
            10_000
        };
        worker.step_or_park(Some(Duration::from_micros(wait_us)));
        if index == 0 && config.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let t = handles.totals.borrow();
            eprintln!(
                "[{:>6.1}s] released {} ({} errors), p50 {} us, p99 {} us",
                start.elapsed().as_secs_f64(),
                t.released,
                t.errors,
                t.latency.quantile(0.5),
                t.latency.quantile(0.99)
            );
        }
        stalled = watch_view_change(plan, &handles.control, stalled);
        if !open && handles.probe.done() {
            break;
        }
    }
    // The run ends here; the check below is not part of its time.
    let elapsed_s = start.elapsed().as_secs_f64();
    // The run's own check: one worker of each process sends its database's
    // evidence to worker 0, which checks the whole cluster's together.
    let check = config.verify && plan.mode.replicates();
    let evidence = match check && index % threads == 0 {
        true => Some(crate::verify::StoreEvidence::read(&store)?),
        false => None,
    };
    let gathered = gather.finish(worker, evidence.into_iter().collect());
    // Let the final statistics reach worker 0.
    while worker.step_or_park(Some(Duration::from_millis(1))) {}
    if index != 0 {
        return Ok(None);
    }
    let consistent = match check {
        true => {
            let report = crate::verify::check(gathered)?;
            if !report.consistent() {
                eprint!("hams: consistency check failed: {report}");
            }
            Some(report.consistent())
        }
        false => None,
    };
    let totals = handles.totals.borrow();
    let log = handles.faults.borrow();
    let executors_rss_mb = log.executor_rss_mb.values().sum();
    let mut summary = Summary::new(
        &plan.graph.name,
        &totals,
        elapsed_s,
        peers,
        plan.placement.cluster.processes,
        fault_reports(plan, config, &log, &totals),
        log.recoveries.iter().map(|r| r.0).collect::<std::collections::BTreeSet<_>>().len() as u64,
    );
    summary.executors_rss_mb = executors_rss_mb;
    summary.consistent = consistent;
    Ok(Some(summary))
}

/// Injects the process faults due on this process at request `top`: notes
/// the fault for the supervisor, then dies as a crash would (SIGKILL).
fn strike(config: &RunConfig, process: usize, top: u64) {
    for (i, f) in config.process_faults.iter().enumerate() {
        if f.process != process || top < f.at || config.fired_process_faults.contains_key(&i) {
            continue;
        }
        tracing::warn!(process, seq = top, "injecting fault: killing this whole process");
        if let Some(path) = &config.fault_log {
            use std::io::Write;
            let line = format!("fault {i} {}\n", now_us());
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = f.write_all(line.as_bytes()).and_then(|_| f.sync_all());
            }
        }
        // SAFETY: kill(2) on this very process; nothing after it runs.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Says, every few seconds, which backups a view change still waits for: a
/// recovery that does not finish must not go unexplained.
fn watch_view_change(
    plan: &Plan,
    control: &hams_operators::ops::control::ControlRef,
    stalled: Option<(u64, Instant, Instant)>,
) -> Option<(u64, Instant, Instant)> {
    const PATIENCE: Duration = Duration::from_secs(5);
    let (view, missing) = control.borrow().table.awaited_cuts()?;
    let view = view.0;
    let (since, mut said) = match stalled {
        Some((v, since, said)) if v == view => (since, said),
        _ => (Instant::now(), Instant::now()),
    };
    if since.elapsed() >= PATIENCE && said.elapsed() >= PATIENCE {
        said = Instant::now();
        let names: Vec<&str> = missing.iter().map(|m| plan.graph.nodes[m.0 as usize].spec.name.as_str()).collect();
        tracing::warn!(view, waiting_s = since.elapsed().as_secs(), backups = ?names, "view change still waits for these backups to cut");
    }
    Some((view, since, said))
}

/// Points fd 1 at stderr while alive (timely's cluster start-up `println!`s).
struct StdoutToStderr {
    saved: i32,
}

impl StdoutToStderr {
    fn new() -> Self {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: dup/dup2 on the process's own standard descriptors; failures leave them as they were.
        let saved = unsafe { libc::dup(1) };
        if saved >= 0 {
            // SAFETY: as above.
            unsafe { libc::dup2(2, 1) };
        }
        StdoutToStderr { saved }
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if self.saved >= 0 {
            // SAFETY: restores the descriptor saved in `new`.
            unsafe {
                libc::dup2(self.saved, 1);
                libc::close(self.saved);
            }
        }
    }
}
