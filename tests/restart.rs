//! Restarts on a data directory that a killed run left behind.

mod common;

use std::time::Duration;

use hams::storage::{Batch, Cf};

/// Starts a chain run in its own process group and SIGKILLs the whole
/// cluster once `released` results are out, leaving logged requests unreleased.
fn kill_mid_run(data: &std::path::Path, released: f64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let g = common::graph("chain");
    let child = common::spawn_group(common::hams().args([
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--requests",
        "4000",
        "--rate",
        "500",
        "--nondeterministic",
        // Slow backups hold every result ~100 ms, so the kill always leaves
        // logged requests unreleased (the restart must replay them).
        "--backup-delay-ms",
        "100",
        "--metrics-addr",
        &addr,
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    common::await_event("results released before the kill", Duration::from_secs(60), || {
        common::scrape(&addr, "hams_results_released_total").filter(|n| *n >= released)
    });
    // SAFETY: the whole process group of our own child (its executors included).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let out = common::finish_within(child, common::RUN_LIMIT);
    assert!(!out.status.success(), "the run was killed");
}

#[test]
fn a_restart_that_lost_every_session_state_is_reported_inconsistent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    kill_mid_run(&data, 400.0);
    // The backups' session states are gone, as if their disks had been wiped.
    for store in common::stores(&data) {
        let mut b = Batch::new();
        b.delete_range(&store, Cf::State, &[], &[0xff; 11]);
        store.commit(b, true).unwrap();
    }
    drop(common::stores(&data));
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let g = common::graph("chain");
    let out = common::output_within(
        common::hams().args([
            "run",
            "--graph",
            g.to_str().unwrap(),
            "-w",
            "2",
            "--input",
            empty.to_str().unwrap(),
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        common::RUN_LIMIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(
        s["consistent"], false,
        "the checker must see the sessions start again from nothing: {s}\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "an inconsistent run fails: {stderr}");
    assert!(
        stderr.contains("model tracker session"),
        "the report names the model and session: {stderr}"
    );
    // `hams verify` agrees, naming the model, the session and the request.
    let v = common::output_within(
        common::hams().args(["verify", "--data-dir", data.to_str().unwrap()]),
        common::RUN_LIMIT,
    );
    let report = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(
        report.contains("INCONSISTENT") && report.contains("model tracker session") && report.contains("seq #"),
        "{report}"
    );
}
