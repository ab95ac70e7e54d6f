//! The Prometheus endpoint serves the documented series during a run, and
//! `hams status` reads them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod common;

fn get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn metrics_endpoint_shows_every_series_during_a_run() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("chain");
    let mut child = common::hams()
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
        ])
        .args([
            "--kill",
            "tracker@400",
            "--metrics-addr",
            &addr,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
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
    let status = common::hams().args(["status", "--metrics-addr", &addr]).output().unwrap();
    common::assert_success(&status, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("released") && text.contains("backup tracker") && text.contains("last recovery"),
        "{text}"
    );
    let out = child.wait().unwrap();
    assert!(out.success());
}
