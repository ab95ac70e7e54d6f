//! `hams status`: a running service's metrics, read from its Prometheus endpoint.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::StatusArgs;

fn fetch(addr: &str) -> Result<String> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(3)).build();
    agent
        .get(&format!("http://{addr}/metrics"))
        .call()
        .with_context(|| format!("reading http://{addr}/metrics (is `hams run --metrics-addr {addr}` running?)"))?
        .into_string()
        .context("reading the metrics text")
}

/// Parses `name{labels} value` lines.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The bucket bound at quantile `q` of the latency histogram.
fn quantile(s: &BTreeMap<String, f64>, q: f64) -> Option<String> {
    let total = *s.get("hams_request_latency_us_count")?;
    if total == 0.0 {
        return None;
    }
    let mut buckets: Vec<(f64, f64, String)> = s
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("hams_request_latency_us_bucket{le=\"")?.strip_suffix("\"}")?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), *v, le.to_string()))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
        .into_iter()
        .find(|(_, c, _)| *c >= q * total)
        .map(|(_, _, le)| format!("<={le} us"))
}

fn show(addr: &str) -> Result<()> {
    let s = samples(&fetch(addr)?);
    let get = |k: &str| s.get(k).copied().unwrap_or(0.0);
    println!(
        "released {} ({} errors, {} orphans discarded), ingested {}, epoch {}, recoveries {}; latency p50 {}, p99 {}",
        get("hams_results_released_total"),
        get("hams_results_errors_total"),
        get("hams_orphans_discarded_total"),
        get("hams_requests_ingested_total"),
        get("hams_epoch"),
        get("hams_recoveries_total"),
        quantile(&s, 0.5).unwrap_or_else(|| "-".into()),
        quantile(&s, 0.99).unwrap_or_else(|| "-".into()),
    );
    let labelled = |prefix: &str| -> Vec<(String, f64)> {
        s.iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.trim_end_matches("\"}").to_string(), *v)))
            .collect()
    };
    let queues: Vec<String> = labelled("hams_queue_depth{node=\"")
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !queues.is_empty() {
        println!("queues: {}", queues.join(" "));
    }
    for (m, f) in labelled("hams_durable_frontier{model=\"") {
        let lag = s.get(&format!("hams_backup_lag_epochs{{model=\"{m}\"}}")).copied().unwrap_or(0.0);
        let bytes = s.get(&format!("hams_backup_lag_bytes{{model=\"{m}\"}}")).copied().unwrap_or(0.0);
        println!("backup {m}: durable frontier {f}, lag {lag} epochs / {bytes} bytes");
    }
    let recorded: BTreeMap<String, f64> = labelled("hams_recovery_phase_ms{phase=\"").into_iter().collect();
    let phases: Vec<String> = ["detect", "view_change", "promote", "replay", "catch_up"]
        .iter()
        .filter_map(|p| Some(format!("{p} {:.1} ms", recorded.get(*p)?)))
        .collect();
    if !phases.is_empty() {
        println!("last recovery: {}", phases.join(", "));
    }
    Ok(())
}

/// Prints the status once, or every second with `--watch`.
pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    loop {
        show(&args.metrics_addr)?;
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
