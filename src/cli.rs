//! Command-line interface of the `hams` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// High availability for distributed ML service graphs, on timely dataflow.
///
/// `hams [run] [OPTIONS]` runs a service graph (default: the built-in stock
/// demo) on timely workers. Timely's own flags select the cluster: `-w`
/// threads per process, `-n` processes, `-p` this process's index, `-h` a
/// hostfile of `host:port` lines. With `-n N` and no `-p`, hams starts all N
/// processes of a local cluster itself.
#[derive(Debug, Parser)]
#[command(name = "hams", version, disable_help_flag = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Print help (`-h` is timely's hostfile flag).
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    pub help: Option<bool>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a service graph (the default).
    Run(Box<RunArgs>),
    /// Check a graph file and print its nodes, shapes and placement.
    Check(CheckArgs),
    /// Write a node's weights (seeded init) to a safetensors file.
    ExportWeights(ExportArgs),
    /// Check a data directory's durable records: exactly-once, one chain per session, committed lineage.
    Verify(VerifyArgs),
    /// Print the results in a data directory's output topic, one JSON line each.
    Results(ResultsArgs),
    /// Compare fault-tolerance modes on one graph, interleaved, with ratios against `none`.
    Bench(BenchArgs),
    /// Show the live metrics of a running `hams run --metrics-addr ADDR`.
    Status(StatusArgs),
}

/// Options of `hams status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Address given to `hams run --metrics-addr`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// What runs and under which faults: shared by `hams run` and `hams bench`
/// (which hands it to each `hams run` it starts, through [`Workload::args`]).
#[derive(Debug, Clone, Args)]
pub struct Workload {
    /// Graph file (TOML). Default: the built-in stock demo graph.
    #[arg(short = 'g', long)]
    pub graph: Option<PathBuf>,
    /// Offered load in requests/s over all workers (open loop). Default: closed loop.
    #[arg(long, value_parser = positive_f64)]
    pub rate: Option<f64>,
    /// Seed of the request generator (default: the graph's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run every zoo model on this backend (candle, or tch with the `torch` feature).
    #[arg(long)]
    pub backend: Option<hams_operators::model::BackendKind>,
    /// Model sizes.
    #[arg(long, value_enum, default_value_t = Scale::Small)]
    pub scale: Scale,
    /// SIGKILL an executor when its model first runs a request with seq >= SEQ:
    /// `MODEL[:primary|:backup]@SEQ` (repeatable).
    #[arg(long = "kill", value_name = "MODEL[:ROLE]@SEQ")]
    pub kills: Vec<String>,
    /// SIGSTOP an executor (it stops answering) the same way (repeatable).
    #[arg(long = "hang", value_name = "MODEL[:ROLE]@SEQ")]
    pub hangs: Vec<String>,
    /// SIGKILL a whole worker process of a cluster when it logs a request with
    /// seq >= SEQ: `PROCESS@SEQ` (repeatable; its supervisor restarts the cluster).
    #[arg(long = "kill-process", value_name = "PROCESS@SEQ")]
    pub kill_process: Vec<String>,
    /// With --kill-process: also delete the killed process's data directory and
    /// the mirror it kept (a host lost with its disk).
    #[arg(long, requires = "kill_process")]
    pub wipe: bool,
    /// GPU-like non-determinism: perturb every execution slightly.
    #[arg(long)]
    pub nondeterministic: bool,
    /// Checkpoint interval of the checkpoint mode, ms.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub checkpoint_ms: u64,
}

impl Workload {
    /// The same workload as `hams run` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(g) = &self.graph {
            a.extend(["--graph".to_string(), g.display().to_string()]);
        }
        if let Some(r) = self.rate {
            a.extend(["--rate".to_string(), r.to_string()]);
        }
        if let Some(s) = self.seed {
            a.extend(["--seed".to_string(), s.to_string()]);
        }
        if let Some(b) = self.backend {
            let b = if b == hams_operators::model::BackendKind::Tch {
                "tch"
            } else {
                "candle"
            };
            a.extend(["--backend".to_string(), b.to_string()]);
        }
        let scale = if self.scale == Scale::Realistic { "realistic" } else { "small" };
        a.extend(["--scale".to_string(), scale.to_string()]);
        a.extend(self.kills.iter().map(|k| format!("--kill={k}")));
        a.extend(self.hangs.iter().map(|h| format!("--hang={h}")));
        a.extend(self.kill_process.iter().map(|k| format!("--kill-process={k}")));
        if self.wipe {
            a.push("--wipe".into());
        }
        if self.nondeterministic {
            a.push("--nondeterministic".into());
        }
        a.extend(["--checkpoint-ms".to_string(), self.checkpoint_ms.to_string()]);
        a
    }
}

/// Options of `hams bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The workload every round runs.
    #[command(flatten)]
    pub workload: Workload,
    /// Modes to compare, comma-separated.
    #[arg(long, default_value = "none,hams,stop-and-buffer,checkpoint")]
    pub modes: String,
    /// Requests per run.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Rounds: each mode runs this many times, interleaved with the others.
    #[arg(long, default_value_t = 3, value_parser = count(1, 1000))]
    pub rounds: usize,
    /// Worker threads per process.
    #[arg(short = 'w', long = "threads", default_value_t = 2, value_parser = count(1, MAX_WORKERS))]
    pub threads: usize,
    /// Processes of a local cluster.
    #[arg(short = 'n', long = "processes", value_parser = count(1, MAX_PROCESSES))]
    pub processes: Option<usize>,
    /// Also measure raw inference (the models' forward passes back to back, no dataflow).
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object with every number.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// True at realistic model scale.
    pub fn realistic(&self) -> bool {
        self.workload.scale == Scale::Realistic
    }
}

/// Options of `hams results`.
#[derive(Debug, Clone, Args)]
pub struct ResultsArgs {
    /// Data directory of a run.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Only typed errors.
    #[arg(long)]
    pub errors: bool,
}

/// Options of `hams verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Data directory of a run (all its `p*` process databases are read);
    /// repeat it for a cluster whose hosts each kept their own.
    #[arg(long, required = true)]
    pub data_dir: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Model size preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// The sizes in the graph file (fast; CI).
    Small,
    /// Hidden widths, filters and embeddings x8 (benchmarks).
    Realistic,
}

/// Options of `hams run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// What runs, and its faults.
    #[command(flatten)]
    pub workload: Workload,
    /// Requests to generate (0: endless until Ctrl-C or --duration).
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Kafka source: consume up to the topic's end offsets at start, then finish.
    #[arg(long)]
    pub drain: bool,
    /// Read requests from a file of JSON lines instead of generating them
    /// (the file sets the requests and their pace: no --requests, --rate or --seed).
    #[arg(long, conflicts_with_all = ["requests", "rate", "seed"])]
    pub input: Option<PathBuf>,
    /// Data directory (source/output topics, ledger). Default: a temporary one, removed at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Worker threads per process (timely -w).
    #[arg(short = 'w', long = "threads", default_value_t = 1, value_parser = count(1, MAX_WORKERS))]
    pub threads: usize,
    /// Number of processes (timely -n). Default: the hostfile's line count, or 1.
    #[arg(short = 'n', long = "processes", value_parser = count(1, MAX_PROCESSES))]
    pub processes: Option<usize>,
    /// This process's index (timely -p). Without it, a multi-process run starts every process locally.
    #[arg(short = 'p', long = "process", value_parser = count(0, MAX_PROCESSES - 1))]
    pub process: Option<usize>,
    /// Hostfile: one `host:port` per process (timely -h).
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Print one JSON line with the summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Epoch length in µs: requests arriving within one epoch are batched together.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub epoch_us: u64,
    /// Closed loop: requests in flight per worker.
    #[arg(long, default_value_t = 256, value_parser = count(1, 1 << 20))]
    pub max_inflight: usize,
    /// Run executors as threads of the worker process instead of separate processes.
    #[arg(long)]
    pub in_process: bool,
    /// Do not fsync durable batches (faster, survives process crashes but not power loss).
    #[arg(long)]
    pub no_sync: bool,
    /// Stop taking requests after this many seconds.
    #[arg(long, value_parser = positive_f64)]
    pub duration: Option<f64>,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// An executor silent this long while it owes an answer is declared hung
    /// (at least 50: below that a busy but healthy executor would be declared hung).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub deadline_ms: u64,
    /// Skip the consistency check of the durable records at the end.
    #[arg(long)]
    pub no_verify: bool,
    /// Serve the graph to clients under the Open Inference Protocol (KServe v2)
    /// at this address (`HOST:PORT`; process N of a cluster adds N to the
    /// port), HTTP/JSON and gRPC on the same port; requests then come from
    /// clients only, until Ctrl-C. With OTEL_EXPORTER_OTLP_ENDPOINT set, each
    /// request's spans are exported there over OTLP/gRPC.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["input", "rate", "seed", "drain"])]
    pub serve: Option<String>,
    /// Requests waiting to be logged, per partition, before clients get 429
    /// (gRPC RESOURCE_EXHAUSTED) with Retry-After.
    #[arg(long, default_value_t = 1024, value_parser = count(1, 1 << 20), requires = "serve")]
    pub serve_queue: usize,
    /// A recovery holding results longer than this turns new requests away
    /// with 503 (gRPC UNAVAILABLE) and Retry-After; readiness is off while any recovery holds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000), requires = "serve")]
    pub serve_hold_ms: u64,
    /// A served session with no request for this many seconds is ended, its
    /// state freed on primary and backup (0: never; clients end sessions).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=31_536_000), requires = "serve")]
    pub session_ttl_s: u64,
    /// Serve Prometheus metrics at this address (`HOST:PORT`; process N of a cluster adds N to the port).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Fault-tolerance protocol: hams, none (bare), stop-and-buffer, checkpoint.
    #[arg(long, default_value = "hams")]
    pub mode: hams_dataflow::Mode,
    /// Output records kept per partition in the output topic (older ones are deleted).
    #[arg(long, default_value_t = 1_000_000)]
    pub retain_outputs: u64,
    /// Committed lineage records kept behind the released watermark, for `hams verify`.
    #[arg(long, default_value_t = 100_000)]
    pub retain_lineage: u64,
    /// Experiment: make backups hold each epoch this long before applying it (a slow backup).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub backup_delay_ms: u64,
}

/// Options of `hams check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Graph file (TOML).
    pub graph: PathBuf,
    /// Workers per process to place on.
    #[arg(short = 'w', long = "threads", default_value_t = 1, value_parser = count(1, MAX_WORKERS))]
    pub threads: usize,
    /// Processes to place on.
    #[arg(short = 'n', long = "processes", default_value_t = 1, value_parser = count(1, MAX_PROCESSES))]
    pub processes: usize,
}

/// Options of `hams export-weights`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Graph file (TOML).
    #[arg(long)]
    pub graph: PathBuf,
    /// Node whose weights to write.
    #[arg(long)]
    pub node: String,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Bounds of `-w` and `-n`: far beyond any real cluster, and small enough that
/// a typo (`-w 1000000`) is an error instead of a million threads.
const MAX_WORKERS: usize = 1024;
const MAX_PROCESSES: usize = 1024;

/// A count flag in `min..=max`.
fn count(min: usize, max: usize) -> impl clap::builder::TypedValueParser<Value = usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(min as u64..=max as u64)
}

/// A finite number above zero (`--rate 0` would send one request and wait forever).
fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!("{s} is not a finite number above 0")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}
