//! The `hams` command: run service graphs on timely workers.

mod bench;
mod cli;
mod cluster;
mod status;
mod traces;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hams_dataflow::placement::{place, Cluster};
use hams_dataflow::{Executors, Feed, Graph, GraphDef, RunConfig, Timely};
use hams_operators::executor::process::{self, Launch};
use hams_operators::ops::faults::FaultKind;

use cli::{Cli, Command, RunArgs, Scale};

/// The stock demo graph, run when no `--graph` is given.
const DEMO_GRAPH: &str = include_str!("../examples/graphs/stock.toml");

fn main() -> ExitCode {
    // Executor processes are this binary re-executed; serve and exit if we are one.
    hams_operators::executor::server::serve_if_child();
    let traces = traces::Traces::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Run(args)) => run(*args),
        None => run(cli.run),
        Some(Command::Check(args)) => check(&args),
        Some(Command::ExportWeights(args)) => export(&args),
        Some(Command::Verify(args)) => verify(&args),
        Some(Command::Results(args)) => results(&args),
        Some(Command::Bench(args)) => bench::bench(&args).map(|()| ExitCode::SUCCESS),
        Some(Command::Status(args)) => status::status(&args),
    };
    traces.flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hams: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Loads and checks the graph (`None`: the built-in demo) at `scale`.
pub fn load_graph(path: Option<&Path>, scale: Scale) -> Result<Graph> {
    let (def, origin) = match path {
        Some(p) => (GraphDef::from_file(p)?, p.display().to_string()),
        None => (
            GraphDef::from_toml(DEMO_GRAPH, "built-in stock graph")?,
            "built-in stock graph".to_string(),
        ),
    };
    let def = match scale {
        Scale::Small => def,
        Scale::Realistic => def.scaled(8),
    };
    Ok(def.build_from(&origin)?)
}

/// `HOST:PORT` with a name or an address (`localhost:9464`, `0.0.0.0:9464`).
fn metrics_socket(addr: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("--metrics-addr {addr:?}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--metrics-addr {addr:?}: the host has no address"))
}

fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading hostfile {}", path.display()))?;
    let hosts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if hosts.is_empty() {
        bail!("hostfile {} lists no host", path.display());
    }
    Ok(hosts)
}

/// Puts every zoo model of `graph` on `backend` (TorchScript nodes stay on tch).
pub fn set_backend(graph: &mut Graph, backend: hams_operators::model::BackendKind) -> Result<()> {
    if !hams_operators::model::backend_available(backend) {
        bail!("backend {backend:?} is not in this build (rebuild with `--features torch`; see README)");
    }
    for n in &mut graph.nodes {
        if !matches!(n.spec.arch, hams_operators::model::Arch::TorchScript { .. }) {
            n.spec.backend = backend;
            hams_operators::model::check_loadable(&n.spec).with_context(|| format!("--backend for node {}", n.spec.name))?;
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let w = &args.workload;
    let mut graph = load_graph(w.graph.as_deref(), w.scale)?;
    if let Some(seed) = w.seed {
        graph.source.seed = seed;
    }
    if let Some(b) = w.backend {
        set_backend(&mut graph, b)?;
    }
    // Checked before anything starts, so a typo fails at once.
    let metrics_addr = args.metrics_addr.as_deref().map(metrics_socket).transpose()?;
    let hosts = match &args.hostfile {
        Some(h) => Some(read_hostfile(h)?),
        None => None,
    };
    let processes = args.processes.unwrap_or_else(|| hosts.as_ref().map_or(1, Vec::len));
    if let Some(h) = &hosts {
        if h.len() < processes {
            bail!("hostfile lists {} hosts but -n {processes}", h.len());
        }
    }
    if processes > 1 && args.process.is_none() {
        return cluster::launch(&args, processes, hosts);
    }
    let process = args.process.unwrap_or(0);
    let addresses = match (processes, hosts) {
        (1, _) => Vec::new(),
        (n, Some(h)) => h.into_iter().take(n).collect(),
        (n, None) => (0..n).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
    };
    if processes > 1 && !cluster::is_worker() {
        // A process of a cluster runs under its own supervisor, which restarts it.
        return cluster::supervise(&args, &addresses, process);
    }
    if processes > 1 {
        cluster::exit_on_panic();
    }
    let mut process_faults = Vec::new();
    for f in &args.workload.kill_process {
        process_faults.push(hams_dataflow::run::parse_process_fault(f, processes)?);
    }
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempdir()?;
            temp.path.clone()
        }
    };
    let executors = if args.in_process {
        Executors::InProcess
    } else {
        Executors::Process(Launch::new(std::env::current_exe().context("locating the hams binary")?, 1)?)
    };
    let feed = match &args.input {
        None if args.serve.is_some() => {
            let addr = args.serve.as_deref().expect("matched");
            Feed::Serve(hams_dataflow::serve::Front::new(
                addr,
                &graph,
                hams_dataflow::serve::Limits {
                    queue: args.serve_queue,
                    hold: std::time::Duration::from_millis(args.serve_hold_ms),
                    session_ttl: (args.session_ttl_s > 0).then(|| std::time::Duration::from_secs(args.session_ttl_s)),
                },
            ))
        }
        Some(path) => {
            let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let lines = text
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .map(<[u8]>::to_vec)
                .collect();
            Feed::Lines(std::sync::Arc::new(lines))
        }
        None if graph.source.kind == hams_dataflow::SourceKind::Log => Feed::None,
        None if graph.source.kind == hams_dataflow::SourceKind::Kafka => Feed::Kafka { drain: args.drain },
        None => Feed::Generate {
            total: (args.requests > 0).then_some(args.requests),
            rate: args.workload.rate,
        },
    };
    let mut faults = Vec::new();
    for (specs, kind) in [(&args.workload.kills, FaultKind::Kill), (&args.workload.hangs, FaultKind::Hang)] {
        for f in specs {
            faults.push(hams_dataflow::run::parse_fault(&graph, f, kind)?);
        }
    }
    let timely = Timely {
        threads: args.threads.max(1),
        process,
        addresses,
    };
    let placement = place(
        &graph,
        Cluster {
            processes,
            threads: timely.threads,
        },
    );
    if process == 0 {
        for w in placement.capped() {
            eprintln!("hams: note: {w}");
        }
    }
    if process == 0 && !args.json {
        eprintln!(
            "hams: graph {} ({}), {} worker(s) x {} process(es); executors (stateful models: primary and backup; while a new backup syncs, results are held):\n{placement}",
            graph.name, graph.origin, timely.threads, processes
        );
    }
    let config = RunConfig {
        graph,
        timely,
        feed,
        data_dir,
        epoch_us: args.epoch_us,
        max_inflight: args.max_inflight.max(1),
        executors: executors.clone(),
        noise: if args.workload.nondeterministic { 1e-4 } else { 0.0 },
        sync: !args.no_sync,
        progress: !args.quiet && !args.json,
        duration: args.duration.map(Duration::from_secs_f64),
        faults,
        deadline: Duration::from_millis(args.deadline_ms.max(1)),
        lineage_retention: args.retain_lineage,
        retain_outputs: args.retain_outputs.max(1),
        verify: !args.no_verify,
        backup_delay: Duration::from_millis(args.backup_delay_ms),
        mode: args.mode,
        process_faults,
        fired_process_faults: cluster::fired(),
        fault_log: std::env::var_os(cluster::ENV_FAULT_LOG).map(PathBuf::from),
        generation: std::env::var(cluster::ENV_GENERATION)
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        checkpoint_every: Duration::from_millis(args.workload.checkpoint_ms.max(1)),
    };
    if let Some(mut sock) = metrics_addr {
        if sock.port() != 0 {
            let port = sock
                .port()
                .checked_add(process as u16)
                .context("--metrics-addr: no port left for this process")?;
            sock.set_port(port);
        }
        let bound = hams_operators::metrics::serve(&sock.to_string()).with_context(|| format!("serving metrics on {sock}"))?;
        eprintln!("hams: process {process} metrics at http://{bound}/metrics");
    }
    install_ctrl_c();
    let summary = hams_dataflow::run(config);
    if let Executors::Process(launch) = &executors {
        process::cleanup(launch);
    }
    let Some(summary) = summary? else {
        return Ok(ExitCode::SUCCESS);
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{summary}");
    }
    if summary.lost > 0 || summary.duplicated > 0 {
        eprintln!(
            "hams: exactly-once violated: {} lost, {} duplicated",
            summary.lost, summary.duplicated
        );
        return Ok(ExitCode::from(1));
    }
    if summary.consistent == Some(false) {
        eprintln!("hams: the durable records are inconsistent (see the checker's report above)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn install_ctrl_c() {
    extern "C" fn on_signal(_: libc::c_int) {
        // The first signal drains; a second one does not wait for that.
        if hams_dataflow::run::request_stop() {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
    }
    // SAFETY: the handler only swaps an atomic or calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// A directory removed on drop.
struct TempDir {
    path: PathBuf,
}

fn tempdir() -> Result<TempDir> {
    let path = std::env::temp_dir().join(format!(
        "hams-data-{}-{}",
        std::process::id(),
        hams_operators::model::noise::Noise::entropy_seed() % 1_000_000
    ));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(TempDir { path })
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn check(args: &cli::CheckArgs) -> Result<ExitCode> {
    let graph = load_graph(Some(&args.graph), Scale::Small)?;
    println!("graph {} ({}): ok", graph.name, graph.origin);
    println!(
        "  source: {:?} {:?}, sessions {}",
        graph.source.input, graph.source.shape, graph.source.sessions
    );
    for n in &graph.nodes {
        let s = &n.spec;
        println!(
            "  {:<14} {:<6} in {:>5} -> out {:<5} {}{}",
            s.name,
            s.arch.name(),
            s.input_len,
            s.output_len,
            if s.is_stateful() { "stateful" } else { "stateless" },
            if n.replicas > 1 {
                format!(", {} replicas", n.replicas)
            } else {
                String::new()
            }
        );
    }
    let p = place(
        &graph,
        Cluster {
            processes: args.processes,
            threads: args.threads.max(1),
        },
    );
    print!("placement:\n{p}");
    for w in p.capped() {
        println!("note: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn export(args: &cli::ExportArgs) -> Result<ExitCode> {
    let graph = load_graph(Some(&args.graph), Scale::Small)?;
    let node = graph
        .node(&args.node)
        .with_context(|| format!("no node {:?} in {}", args.node, graph.origin))?;
    let params = hams_operators::model::weights::resolve(&node.spec)?;
    hams_operators::model::weights::save_safetensors(&params, &args.out)?;
    println!("wrote {} tensors of {} to {}", params.len(), args.node, args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn verify(args: &cli::VerifyArgs) -> Result<ExitCode> {
    let mut dirs = Vec::new();
    for d in &args.data_dir {
        dirs.extend(hams_dataflow::verify::process_dirs(d)?);
    }
    let report = hams_dataflow::verify::verify_dirs(&dirs)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.consistent() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn results(args: &cli::ResultsArgs) -> Result<ExitCode> {
    use hams_storage::{Cf, OutputRecord, Store};
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&args.data_dir)
        .with_context(|| format!("reading {}", args.data_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('p')))
        .collect();
    dirs.sort();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for dir in dirs {
        let store = Store::open_read_only(&dir)?;
        for (_, rec) in store.scan::<OutputRecord>(Cf::Output, &[], &[0xff; 16], usize::MAX)? {
            if args.errors && rec.outcome.is_ok() {
                continue;
            }
            let line = hams_dataflow::kafka::result_json(&rec);
            use std::io::Write;
            match writeln!(out, "{line}") {
                // The reader has what it wanted (`hams results | head`).
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                r => r?,
            }
        }
    }
    use std::io::Write;
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => r.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}
