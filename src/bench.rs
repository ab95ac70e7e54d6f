//! `hams bench`: the same graph under several fault-tolerance modes, run
//! interleaved (A B A B ...) in one invocation, compared by ratios measured in
//! the same run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hams_dataflow::{Graph, Mode};
use hams_operators::model::{self, Input};
use serde_json::{json, Value};

use crate::cli::BenchArgs;

/// Median of `xs` (0 when empty).
fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One `hams run` of the benchmark as a child process; its JSON summary.
fn run_once(args: &BenchArgs, mode: Mode, data: &Path) -> Result<Value> {
    let exe = std::env::current_exe().context("locating the hams binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").args(["--mode", &mode.to_string(), "--json", "-q"]);
    cmd.args(["--requests", &args.requests.to_string(), "-w", &args.threads.to_string()]);
    cmd.arg("--data-dir").arg(data);
    if let Some(n) = args.processes {
        cmd.args(["-n", &n.to_string()]);
    }
    cmd.args(args.workload.args());
    let out = cmd.output().context("running hams run")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match line {
        Some(l) => {
            let v: Value = serde_json::from_str(l)?;
            if v["consistent"] == false {
                // Show why: the run printed the checker's report.
                let stderr = String::from_utf8_lossy(&out.stderr);
                for l in stderr.lines().skip_while(|l| !l.contains("consistency check failed")).take(12) {
                    eprintln!("  {mode}: {l}");
                }
            }
            Ok(v)
        }
        None => bail!(
            "{mode} run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

/// Raw inference: every model's forward passes back to back, in this process, no dataflow.
/// Returns requests per second through the whole graph on one core.
pub fn raw_throughput(graph: &Graph, requests: u64) -> Result<f64> {
    let per_request_s = raw_seconds(graph, requests, false)?;
    Ok(if per_request_s > 0.0 { 1.0 / per_request_s } else { 0.0 })
}

/// One request alone through every model's forward pass (batches of 1), in
/// µs: the floor of a served request's latency at concurrency 1.
pub fn raw_latency_us(graph: &Graph) -> Result<f64> {
    Ok(raw_seconds(graph, 1000, true)? * 1e6)
}

/// Seconds per request of the graph's forward passes, in full batches or one by one.
fn raw_seconds(graph: &Graph, requests: u64, one_by_one: bool) -> Result<f64> {
    let mut per_request_s = 0.0;
    for node in &graph.nodes {
        let spec = &node.spec;
        let mut m = model::load(spec)?;
        let rows = if one_by_one { 1 } else { node.batch.min(requests as usize).max(1) };
        let state = vec![0.0f32; rows * spec.arch.state_len()];
        let feats: Vec<f32> = (0..rows * spec.input_len).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let tokens: Vec<u32> = (0..rows * spec.input_len).map(|i| (i % 7) as u32).collect();
        let input = if spec.arch.takes_tokens() {
            Input::Tokens(&tokens)
        } else {
            Input::F32(&feats)
        };
        m.forward(rows, input, &state)?; // warm-up
                                         // A limit is best estimated by the fastest of several long-enough tries.
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let (t, mut batches) = (Instant::now(), 0u64);
            while batches < 3 || batches * (rows as u64) < requests || t.elapsed() < Duration::from_millis(100) {
                m.forward(rows, input, &state)?;
                batches += 1;
            }
            best = best.min(t.elapsed().as_secs_f64() / (batches * rows as u64) as f64);
        }
        per_request_s += best;
    }
    Ok(per_request_s)
}

/// Runs the benchmark; prints a table (stderr) and one JSON object (stdout with `--json`).
pub fn bench(args: &BenchArgs) -> Result<()> {
    let modes: Vec<Mode> = args
        .modes
        .split(',')
        .map(|m| m.trim().parse::<Mode>().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    if modes.is_empty() {
        bail!("--modes lists no mode");
    }
    let mut graph = crate::load_graph(args.workload.graph.as_deref(), args.workload.scale)?;
    if let Some(b) = args.workload.backend {
        crate::set_backend(&mut graph, b)?;
    }
    let dir = std::env::temp_dir().join(format!("hams-bench-{}", std::process::id()));
    let mut runs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let started = Instant::now();
    for round in 0..args.rounds.max(1) {
        for mode in &modes {
            let data = dir.join(format!("{mode}-{round}"));
            let s = run_once(args, *mode, &data)?;
            let _ = std::fs::remove_dir_all(&data);
            eprintln!(
                "round {round} {mode:<16} mean {:>8} us  p50 {:>8} us  p99 {:>8} us  {:>8.0} req/s  recovery {} ms  back at 90% {} ms",
                s["mean_us"],
                s["p50_us"],
                s["p99_us"],
                s["throughput_rps"].as_f64().unwrap_or(0.0),
                s["recovery_ms"],
                Value::Array(
                    s["faults"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| f["throughput_back_ms"].clone())
                        .collect()
                )
            );
            runs.entry(mode.to_string()).or_default().push(s);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (raw, raw_batch1_us) = if args.raw {
        (Some(raw_throughput(&graph, args.requests)?), Some(raw_latency_us(&graph)?))
    } else {
        (None, None)
    };
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut report = serde_json::Map::new();
    for (mode, rs) in &runs {
        let recovery: Vec<f64> = rs
            .iter()
            .flat_map(|r| r["recovery_ms"].as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_f64())
            .collect();
        let back: Vec<f64> = rs
            .iter()
            .flat_map(|r| r["faults"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f["throughput_back_ms"].as_f64())
            .collect();
        let mut m = json!({
            "rounds": rs.len(),
            "mean_us": median(rs.iter().map(|r| f(r, "mean_us")).collect()),
            "p50_us": median(rs.iter().map(|r| f(r, "p50_us")).collect()),
            // Run-to-run spread of the median, to judge a ratio against the noise.
            "p50_us_range": [
                rs.iter().map(|r| f(r, "p50_us")).fold(f64::INFINITY, f64::min),
                rs.iter().map(|r| f(r, "p50_us")).fold(0.0, f64::max),
            ],
            "p99_us": median(rs.iter().map(|r| f(r, "p99_us")).collect()),
            "max_us": rs.iter().map(|r| f(r, "max_us")).fold(0.0, f64::max),
            "throughput_rps": median(rs.iter().map(|r| f(r, "throughput_rps")).collect()),
            "recovery_ms": recovery,
            "recovery_ms_median": median(recovery.clone()),
            "throughput_back_ms_median": median(back),
            "released": rs.iter().map(|r| r["released"].as_u64().unwrap_or(0)).sum::<u64>(),
            "lost": rs.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum::<u64>(),
            "duplicated": rs.iter().map(|r| r["duplicated"].as_u64().unwrap_or(0)).sum::<u64>(),
            "errors": rs.iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum::<u64>(),
            "consistent": if rs.iter().all(|r| r["consistent"].is_null()) { Value::Null } else { Value::Bool(rs.iter().all(|r| r["consistent"] == true)) },
            "peak_rss_mb": rs.iter().map(|r| f(r, "peak_rss_mb") + f(r, "executors_rss_mb")).fold(0.0, f64::max),
        });
        if let Some(raw) = raw {
            m["throughput_vs_raw"] = json!(f(&m, "throughput_rps") / raw);
        }
        report.insert(mode.clone(), m);
    }
    if let Some(none) = report.get("none").cloned() {
        for (mode, m) in report.iter_mut() {
            if mode != "none" {
                let ratio = |k: &str| if f(&none, k) > 0.0 { f(m, k) / f(&none, k) } else { 0.0 };
                let (mean, p50, p99, thr) = (ratio("mean_us"), ratio("p50_us"), ratio("p99_us"), ratio("throughput_rps"));
                m["mean_ratio"] = json!(mean);
                m["p50_ratio"] = json!(p50);
                m["p99_ratio"] = json!(p99);
                m["throughput_ratio"] = json!(thr);
            }
        }
    }
    let mut recovery_ratios = serde_json::Map::new();
    if let Some(h) = report.get("hams").map(|m| f(m, "recovery_ms_median")).filter(|h| *h > 0.0) {
        for other in ["checkpoint", "stop-and-buffer"] {
            if let Some(o) = report.get(other).map(|m| f(m, "recovery_ms_median")).filter(|o| *o > 0.0) {
                recovery_ratios.insert(format!("{other}/hams"), json!(o / h));
            }
        }
    }
    // The table.
    eprintln!(
        "\n{}{} ({} requests, {} rounds, {:.1} s){}",
        graph.name,
        args.workload.backend.map(|b| format!(" on {b:?}")).unwrap_or_default(),
        args.requests,
        args.rounds,
        started.elapsed().as_secs_f64(),
        raw.map(|r| format!(", raw inference {r:.0} req/s")).unwrap_or_default()
    );
    eprintln!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12} {:>6} {:>6} {:>6} {:>6} {:>14} {:>10} {:>8}",
        "mode",
        "mean_us",
        "p50_us",
        "p99_us",
        "max_us",
        "req/s",
        "recovery_ms",
        "meanx",
        "p50x",
        "p99x",
        "thr%",
        "lost/dup/err",
        "consistent",
        "rss_mb"
    );
    for mode in &modes {
        let m = &report[&mode.to_string()];
        eprintln!(
            "{:<16} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>12} {:>6} {:>6} {:>6} {:>6} {:>14} {:>10} {:>8.0}",
            mode.to_string(),
            f(m, "mean_us"),
            f(m, "p50_us"),
            f(m, "p99_us"),
            f(m, "max_us"),
            f(m, "throughput_rps"),
            if m["recovery_ms"].as_array().is_some_and(|a| !a.is_empty()) {
                format!("{:.1}", f(m, "recovery_ms_median"))
            } else {
                "-".into()
            },
            m.get("mean_ratio")
                .map_or("-".into(), |r| format!("{:.3}", r.as_f64().unwrap_or(0.0))),
            m.get("p50_ratio")
                .map_or("-".into(), |r| format!("{:.3}", r.as_f64().unwrap_or(0.0))),
            m.get("p99_ratio")
                .map_or("-".into(), |r| format!("{:.3}", r.as_f64().unwrap_or(0.0))),
            m.get("throughput_vs_raw")
                .map_or("-".into(), |r| format!("{:.0}", 100.0 * r.as_f64().unwrap_or(0.0))),
            format!("{}/{}/{}", m["lost"], m["duplicated"], m["errors"]),
            m["consistent"].to_string(),
            f(m, "peak_rss_mb"),
        );
    }
    for (k, v) in &recovery_ratios {
        eprintln!("recovery {k}: {:.1}x", v.as_f64().unwrap_or(0.0));
    }
    if args.json {
        let out = json!({
            "graph": graph.name,
            "requests": args.requests,
            "rounds": args.rounds,
            "rate": args.workload.rate,
            "scale": if args.realistic() { "realistic" } else { "small" },
            "kill_process": args.workload.kill_process,
            "wipe": args.workload.wipe,
            "raw_rps": raw,
            "raw_batch1_us": raw_batch1_us,
            "modes": report,
            "recovery_ratios": recovery_ratios,
        });
        println!("{out}");
    }
    // A mode that claims fault tolerance must lose, duplicate and fail nothing.
    let broken: Vec<String> = modes
        .iter()
        .filter(|m| m.replicates())
        .filter_map(|m| {
            let r = &report[&m.to_string()];
            let bad = r["lost"] != 0 || r["duplicated"] != 0 || r["errors"] != 0 || r["consistent"] == false;
            bad.then(|| {
                format!(
                    "{m}: {} lost, {} duplicated, {} errors, consistent {}",
                    r["lost"], r["duplicated"], r["errors"], r["consistent"]
                )
            })
        })
        .collect();
    if !broken.is_empty() {
        bail!("fault tolerance failed: {}", broken.join("; "));
    }
    Ok(())
}
