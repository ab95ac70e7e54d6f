//! The Prometheus endpoint serves the documented series during a run, with
//! values that agree with each other and with the run's own summary, and
//! `hams status` reads them.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod common;

fn get(addr: &str) -> Option<String> {
    common::fetch(addr, "/metrics")
}

#[test]
fn metrics_answer_with_hundreds_of_idle_connections_open() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("chain");
    let child = common::spawn_group(
        common::hams()
            .args(["run", "--graph", g.to_str().unwrap(), "--requests", "0", "--rate", "100", "--json"])
            .args(["--metrics-addr", &addr, "--data-dir", dir.path().to_str().unwrap()]),
    );
    common::await_event("the metrics endpoint", Duration::from_secs(60), || get(&addr));
    // Connected and silent, like clients that went away without closing.
    let idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // And one that sends half a request.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let start = Instant::now();
    let body = get(&addr).expect("a scrape with 201 idle connections open");
    assert!(start.elapsed() < Duration::from_secs(5), "the scrape took {:?}", start.elapsed());
    assert!(body.contains("hams_results_released_total"), "{body}");
    assert_eq!(common::fetch_status(&addr, "/nothing-here"), Some(404));
    drop(idle);
    // SAFETY: signals our own child's process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let out = common::finish_within(child, common::RUN_LIMIT);
    common::assert_success(&out, &["idle connections"]);
}

#[test]
fn metrics_endpoint_shows_every_series_during_a_run() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("chain");
    let child = common::hams()
        .args([
            "run",
            "--graph",
            g.to_str().unwrap(),
            "-w",
            "2",
            "--requests",
            "0",
            "--duration",
            "4",
            "--rate",
            "500",
            "-q",
            "--json",
        ])
        .args([
            "--kill",
            "tracker@400",
            "--metrics-addr",
            &addr,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(b) = get(&addr).filter(|b| b.contains("hams_recovery_phase_ms{phase=\"catch_up\"}")) {
            break b;
        }
        assert!(Instant::now() < deadline, "metrics never showed a recovery: {:?}", get(&addr));
    };
    for series in [
        "hams_request_latency_us_bucket{le=",
        "hams_results_released_total",
        "hams_requests_ingested_total",
        "hams_queue_depth{node=\"tracker\"}",
        "hams_backup_lag_epochs{model=\"tracker\"}",
        "hams_backup_lag_bytes{model=\"tracker\"}",
        "hams_durable_frontier{model=\"tracker\"}",
        "hams_recovery_phase_ms{phase=\"detect\"}",
        "hams_recovery_phase_ms{phase=\"view_change\"}",
        "hams_recovery_phase_ms{phase=\"promote\"}",
        "hams_recovery_phase_ms{phase=\"replay\"}",
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    // The values agree: every release is in the latency histogram once, nothing
    // is released that was not ingested, and the recovery's phases are ordered.
    let sample = common::scrape_all(&addr).expect("a later scrape");
    let v = |series: &str| *sample.get(series).unwrap_or_else(|| panic!("{series} missing from {sample:?}"));
    let count = v("hams_request_latency_us_count");
    let released = v("hams_results_released_total");
    let inf = v("hams_request_latency_us_bucket{le=\"+Inf\"}");
    let ingested = v("hams_requests_ingested_total");
    assert!(
        released > 0.0 && count == released && inf == count,
        "released {released}, histogram {count}/{inf}"
    );
    assert!(ingested >= released, "released {released} of {ingested} ingested");
    assert!(v("hams_recoveries_total") >= 1.0);
    assert_eq!(v("hams_results_errors_total"), 0.0);
    assert!(v("hams_durable_frontier{model=\"tracker\"}") > 0.0);
    let phase = |p: &str| v(&format!("hams_recovery_phase_ms{{phase=\"{p}\"}}"));
    for p in ["detect", "view_change", "promote", "replay", "catch_up"] {
        assert!((0.0..5_000.0).contains(&phase(p)), "{p} took {} ms", phase(p));
    }
    let status = common::hams().args(["status", "--metrics-addr", &addr]).output().unwrap();
    common::assert_success(&status, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("released") && text.contains("backup tracker") && text.contains("last recovery"),
        "{text}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let total = summary["released"].as_f64().unwrap();
    assert!(
        total >= released,
        "the run released {total}, the endpoint already showed {released}"
    );
    assert_eq!(summary["errors"], 0, "{summary}");
}
