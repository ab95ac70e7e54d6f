//! Losing a whole worker process of a cluster (F2), or a host with its disk
//! (F3): the cluster restarts itself, every request is released exactly
//! once, the records are consistent, and no session starts again from zero.
//!
//! Each run kills processes of a `-n 3 -w 1` cluster running `auto_pilot`
//! (two stateful models in sequence) mid-stream.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hams::storage::{OutputRecord, Values};

const REQUESTS: u64 = 3000;

fn args(data: &Path, nondeterministic: bool, extra: &[&str]) -> Vec<String> {
    let g = common::graph("auto_pilot");
    let mut a: Vec<String> = ["run", "--graph", g.to_str().unwrap(), "-n", "3", "-w", "1", "--rate", "1500"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend([
        "--requests".into(),
        REQUESTS.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    if nondeterministic {
        a.push("--nondeterministic".into());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(data: &Path, nondeterministic: bool, extra: &[&str]) -> serde_json::Value {
    let a = args(data, nondeterministic, extra);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    common::run_json(&refs)
}

/// Released results by `seq`, each exactly once.
fn results(data: &Path) -> BTreeMap<u64, OutputRecord> {
    let mut by_seq = BTreeMap::new();
    for o in common::outputs(data, 3) {
        let seq = o.seq.0;
        assert!(by_seq.insert(seq, o).is_none(), "seq {seq} released twice");
    }
    assert_eq!(by_seq.len() as u64, REQUESTS, "every request released");
    by_seq
}

/// Everything a run with process faults must show.
fn check(s: &serde_json::Value, data: &Path, what: &str) -> BTreeMap<u64, OutputRecord> {
    assert_eq!(s["released"], REQUESTS, "{what}: {s}");
    assert_eq!((s["lost"].as_u64(), s["duplicated"].as_u64()), (Some(0), Some(0)), "{what}: {s}");
    assert_eq!(s["errors"], 0, "{what}: no session may be lost (UnknownSession) or fail: {s}");
    assert_eq!(s["consistent"], true, "{what}: {s}");
    for f in s["faults"].as_array().unwrap() {
        assert_eq!(f["injected"], true, "{what}: every planned fault fires: {s}");
    }
    // The data directory says the same to an independent check: one fingerprint
    // chain per session across the restarts, no session started again from zero.
    let report = hams::dataflow::verify::verify(data).unwrap();
    assert!(report.consistent() && report.broken_chains == 0, "{what}: {report}");
    assert!(report.executions > 0, "{what}: {report}");
    results(data)
}

#[test]
fn killing_any_process_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..3 {
        let data = dir.path().join(format!("kill{k}"));
        let s = run(&data, true, &["--kill-process", &format!("{k}@1500")]);
        check(&s, &data, &format!("process {k} killed"));
        assert!(s["faults"][0]["recovery_ms"].is_number(), "{s}");
    }
}

#[test]
fn losing_any_host_with_its_disk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..3 {
        let data = dir.path().join(format!("wipe{k}"));
        let s = run(&data, true, &["--kill-process", &format!("{k}@1500"), "--wipe"]);
        check(&s, &data, &format!("host of process {k} lost with its disk"));
    }
}

#[test]
fn with_deterministic_models_a_process_kill_changes_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("baseline");
    let want = check(&run(&base, false, &[]), &base, "baseline");
    let data = dir.path().join("killed");
    let got = check(&run(&data, false, &["--kill-process", "1@1200", "--wipe"]), &data, "host 1 lost");
    for (seq, o) in &got {
        let (Ok(Values::F32(a)), Ok(Values::F32(b))) = (&o.outcome, &want[seq].outcome) else {
            panic!("seq {seq}: {:?} vs {:?}", o.outcome, want[seq].outcome);
        };
        assert_eq!(a, b, "seq {seq} differs from the fault-free run (I5)");
    }
}

#[test]
fn two_process_kills_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = run(&data, true, &["--kill-process", "1@900", "--kill-process", "2@2100"]);
    check(&s, &data, "processes 1 then 2 killed");
}

#[test]
fn an_executor_killed_while_the_cluster_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = run(&data, true, &["--kill-process", "1@1500", "--kill", "tracker@1510"]);
    check(&s, &data, "process 1 killed, then the tracker's primary as the cluster resumes");
}

#[test]
fn a_process_killed_while_the_cluster_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = args(&data, true, &["--kill-process", "2@1200", "--json"]);
    let launcher = common::spawn_group(common::hams().args(&a));
    let limit = Duration::from_secs(60);
    let first: Vec<u32> = common::await_event("three worker processes", limit, || {
        let c = common::children_of(launcher.id());
        (c.len() == 3).then_some(c)
    });
    // Process 2 dies; as soon as the launcher starts its replacement, kill that too.
    let replacement = common::await_event("a restarted worker process", limit, || {
        common::children_of(launcher.id()).into_iter().find(|p| !first.contains(p))
    });
    // SAFETY: kill(2) on our own grandchild.
    unsafe { libc::kill(replacement as i32, libc::SIGKILL) };
    let out = common::finish_within(launcher, common::RUN_LIMIT);
    common::assert_success(&out, &["kill during restart"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    check(&s, &data, "a process killed during the restart");
}
