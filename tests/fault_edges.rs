//! Fault tolerance at the edges: the sink never releases an orphan, and
//! faults while idle, at start-up and on an empty stream are handled.

mod common;

use std::time::Duration;

#[test]
fn the_sink_never_releases_an_orphan() {
    // The backup applies each epoch 300 ms late, so when the primary dies many
    // executions are not held: everything computed from them must be dropped.
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("chain");
    let data = dir.path().join("data");
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--requests",
        "2000",
        "--rate",
        "2500",
        "--nondeterministic",
        "--backup-delay-ms",
        "300",
        "--kill",
        "tracker@1000",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        (s["released"].as_u64(), s["lost"].as_u64(), s["duplicated"].as_u64()),
        (Some(2000), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["errors"], 0, "{s}");
    assert!(
        s["orphans"].as_u64().unwrap() > 0,
        "the delayed backup left orphans to discard: {s}"
    );
    assert_eq!(s["consistent"], true, "{s}");
    // Independently of the run's own check: every released result's tracker
    // execution is one the backup committed, with the same fingerprint.
    let report = hams::dataflow::verify::verify(&data).unwrap();
    assert!(report.consistent(), "{report}");
    assert_eq!(report.unmatched_tags, 0);
    let outs = common::outputs(&data, 2);
    let promoted = outs.iter().filter(|o| o.lineage.iter().any(|t| t.incarnation.0 == 1)).count();
    assert!(promoted > 0, "results after the failover come from the promoted replica");
}

#[test]
fn a_primary_killed_while_idle_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("chain");
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = common::spawn_group(common::hams().args([
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--requests",
        "60",
        "--rate",
        "20",
        "--json",
        "--metrics-addr",
        &addr,
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    let limit = Duration::from_secs(30);
    // Only this run's executor: a child of the process just started.
    let pid = common::await_event("the tracker's primary executor", limit, || {
        common::executor_pids(child.id(), "tracker", "primary").first().copied()
    });
    // Requests come 50 ms apart: once some are released, the executor idles between them.
    common::await_event("ten released results", limit, || {
        common::scrape(&addr, "hams_results_released_total").filter(|n| *n >= 10.0)
    });
    // SAFETY: kill(2) on our own grandchild; at worst it is gone (ESRCH).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let out = common::finish_within(child, common::RUN_LIMIT);
    common::assert_success(&out, &["idle kill"]);
    let s: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        (
            s["released"].as_u64(),
            s["lost"].as_u64(),
            s["duplicated"].as_u64(),
            s["errors"].as_u64()
        ),
        (Some(60), Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["recoveries"], 1, "{s}");
    assert_eq!(s["consistent"], true, "{s}");
}

#[test]
fn a_fault_at_start_up_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("auto_pilot");
    let data = dir.path().join("data");
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--requests",
        "500",
        "--nondeterministic",
        "--kill",
        "tracker@0",
        "--kill",
        "planner:backup@0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        (s["released"].as_u64(), s["lost"].as_u64(), s["duplicated"].as_u64()),
        (Some(500), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["consistent"], true, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert!(s["faults"].as_array().unwrap().iter().all(|f| f["injected"] == true), "{s}");
}

#[test]
fn an_empty_stream_with_a_planned_fault_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let g = common::graph("fatigue");
    let data = dir.path().join("data");
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--input",
        empty.to_str().unwrap(),
        "--kill",
        "eye@0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        (s["released"].as_u64(), s["lost"].as_u64(), s["duplicated"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["faults"][0]["injected"], false, "{s}");
    assert_eq!(s["consistent"], true, "{s}");
}
