//! The serving front end, driven by real HTTP clients (ureq and curl):
//! Open Inference Protocol metadata and inference, sequences as sessions,
//! answers only once released, exactly once across client retries and a
//! failover, and clear 4xx answers to bad requests while serving goes on.

use std::time::Duration;

use hams::dataflow::reference::Reference;
use hams::storage::{Request, Values};
use serde_json::{json, Value};

mod common;

/// A served run of `graph` (2 workers) with `extra` flags; its address.
fn serve(graph: &str, data: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    serve_with_env(graph, data, extra, &[])
}

/// The same, with `env` set for the run.
fn serve_with_env(graph: &str, data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    let port = common::port_pairs(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let g = common::graph(graph);
    let child = common::spawn_group(
        common::hams()
            .envs(env.iter().copied())
            .args([
                "run",
                "--graph",
                g.to_str().unwrap(),
                "-w",
                "2",
                "--json",
                "--serve",
                &addr,
                "--data-dir",
            ])
            .arg(data)
            .args(extra),
    );
    common::await_event("the server to be ready", Duration::from_secs(60), || {
        (common::fetch_status(&addr, "/v2/health/ready") == Some(200)).then_some(())
    });
    (child, addr)
}

/// A served two-process cluster of `graph` (one worker each) with `extra`
/// flags; process K's address at index K.
fn serve_cluster(graph: &str, data: &std::path::Path, extra: &[&str]) -> (std::process::Child, [String; 2]) {
    let port = common::port_pairs(1)[0];
    let g = common::graph(graph);
    let child = common::spawn_group(
        common::hams()
            .args(["run", "--graph", g.to_str().unwrap(), "-n", "2", "-w", "1", "--json"])
            .args(["--serve", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args(extra),
    );
    let addrs = [format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", port + 1)];
    for a in &addrs {
        common::await_event("the server to be ready", Duration::from_secs(60), || {
            (common::fetch_status(a, "/v2/health/ready") == Some(200)).then_some(())
        });
    }
    (child, addrs)
}

/// Stops a served run as Ctrl-C does and returns its summary.
fn stop(child: std::process::Child) -> Value {
    // SAFETY: signals our own child's process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let out = common::finish_within(child, common::RUN_LIMIT);
    common::assert_success(&out, &["serve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).expect("a summary")).unwrap()
}

fn post(addr: &str, model: &str, body: &Value) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build();
    let json = |r: ureq::Response| {
        r.into_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let req = agent
        .post(&format!("http://{addr}/v2/models/{model}/infer"))
        .set("Content-Type", "application/json");
    match req.send_string(&body.to_string()) {
        Ok(r) => (r.status(), json(r)),
        Err(ureq::Error::Status(code, r)) => (code, json(r)),
        Err(e) => (0, json!({ "transport": e.to_string() })),
    }
}

fn features(session: u64, step: u64) -> Vec<f32> {
    (0..16)
        .map(|i| (((session * 131 + step * 17 + i) % 97) as f32 / 48.5) - 1.0)
        .collect()
}

fn request(session: u64, step: u64, steps: u64) -> Value {
    json!({
        "id": format!("s{session}-{step}"),
        "parameters": { "sequence_id": session, "sequence_start": step == 0, "sequence_end": step + 1 == steps },
        "inputs": [{ "name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": features(session, step) }],
    })
}

fn output(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn sequences_are_answered_exactly_once_across_retries_and_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, addr) = serve("chain", &data, &["--kill", "tracker@60"]);
    let meta: Value = serde_json::from_str(&common::fetch(&addr, "/v2/models/chain").unwrap()).unwrap();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 16]), "{meta}");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 4]), "{meta}");
    // Eight clients, one sequence each, retrying with the same id until answered.
    let (sessions, steps) = (8u64, 20u64);
    let answers: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=sessions)
            .map(|session| {
                let addr = &addr;
                s.spawn(move || {
                    (0..steps)
                        .map(|step| {
                            let body = request(session, step, steps);
                            let first = loop {
                                match post(addr, "chain", &body) {
                                    (200, v) => break v,
                                    (0 | 429 | 503 | 504, _) => std::thread::sleep(Duration::from_millis(20)),
                                    (code, v) => panic!("session {session} step {step}: {code} {v}"),
                                }
                            };
                            // A retry after the answer: the same answer, nothing run again.
                            if step % 5 == 2 {
                                let (code, again) = post(addr, "chain", &body);
                                assert_eq!((code, output(&again)), (200, output(&first)), "retry of s{session}-{step}");
                            }
                            output(&first)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let s = stop(child);
    // Every id logged once and released once, through a failover of the stateful model.
    assert_eq!(
        (s["accepted"].as_u64(), s["released"].as_u64()),
        (Some(sessions * steps), Some(sessions * steps)),
        "{s}"
    );
    assert_eq!(
        (s["lost"].as_u64(), s["duplicated"].as_u64(), s["errors"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["consistent"], true, "{s}");
    assert!(
        s["recoveries"].as_u64().unwrap() >= 1,
        "the kill should have caused a recovery: {s}"
    );
    // Retries after a restart on the same data directory: the same answers, read back, nothing run.
    let (child, addr) = serve("chain", &data, &[]);
    for (session, step) in [(1, 0), (4, 7), (8, steps - 1)] {
        let (code, again) = post(&addr, "chain", &request(session, step, steps));
        assert_eq!(code, 200, "{again}");
        assert_eq!(
            output(&again),
            answers[(session - 1) as usize][step as usize],
            "s{session}-{step} after a restart"
        );
    }
    let s = stop(child);
    assert_eq!(s["accepted"], 0, "a retry was logged again: {s}");
    // The answers are a fault-free evaluation's, step by step.
    assert_reference_answers(&answers, sessions, steps);
}

#[test]
fn bad_requests_get_clear_4xx_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve("chain", &dir.path().join("data"), &[]);
    let url = format!("http://{addr}/v2/models/chain/infer");
    let curl = |args: &[&str]| -> (u16, String) {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: application/json"])
            .args(args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    };
    let tensor =
        |name: &str, shape: Value, datatype: &str| json!([{ "name": name, "shape": shape, "datatype": datatype, "data": vec![0.25; 16] }]);
    let body = |inputs: Value, parameters: Value| json!({ "inputs": inputs, "parameters": parameters }).to_string();
    let good_inputs = tensor("INPUT", json!([1, 16]), "FP32");
    let good = body(good_inputs.clone(), json!({ "sequence_id": 3, "sequence_start": true }));
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "not an inference request"),
        (body(tensor("INPUT", json!([1, 16]), "BYTES"), json!({})), 400, "datatype BYTES"),
        (
            body(tensor("INPUT", json!([1, 15]), "FP32"), json!({})),
            400,
            "does not hold one request",
        ),
        (body(tensor("IMAGE", json!([1, 16]), "FP32"), json!({})), 400, "unknown input"),
        (body(good_inputs.clone(), json!({ "sequence_id": 99 })), 400, "UnknownSession"),
        (
            body(good_inputs.clone(), json!({ "sequence_start": true })),
            400,
            "without a sequence_id",
        ),
    ];
    for (body, code, needle) in &cases {
        let (got, text) = curl(&["-d", body, &url]);
        assert_eq!(got, *code, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    let (got, text) = curl(&["-d", &good, &format!("http://{addr}/v2/models/nosuchmodel/infer")]);
    assert!(got == 404 && text.contains("unknown model"), "{got} {text}");
    let big = format!("{{\"inputs\": [{{\"data\": [{}]}}]}}", "0.5,".repeat(20 << 20));
    let path = dir.path().join("big.json");
    std::fs::write(&path, big).unwrap();
    let (got, _) = curl(&["--data-binary", &format!("@{}", path.display()), &url]);
    assert_eq!(got, 413, "an oversized body");
    // And it still serves.
    let (got, text) = curl(&["-d", &good, &url]);
    assert_eq!(got, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["outputs"][0]["shape"], json!([1, 4]), "{v}");
    assert_eq!(common::fetch_status(&addr, "/v2/health/live"), Some(200));
    // The same port serves Prometheus metrics, the answers counted by status.
    let metrics = common::fetch(&addr, "/metrics").unwrap();
    for (status, n) in [(400, 6), (404, 1), (200, 1)] {
        let line = format!("hams_serve_requests_total{{protocol=\"http\",status=\"{status}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let s = stop(child);
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["consistent"], true, "{s}");
}

#[test]
fn tritons_own_clients_are_served_over_http_and_grpc() {
    let Ok(python) = std::env::var("HAMS_TRITON_PYTHON") else {
        eprintln!("SKIPPED: HAMS_TRITON_PYTHON is not set (scripts/test installs tritonclient and sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve("chain", &dir.path().join("data"), &[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/triton_client.py");
    let chain = hams::GraphDef::from_file(&common::graph("chain")).unwrap().build().unwrap();
    for protocol in ["http", "grpc"] {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .args([protocol, &addr, "chain"])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "tritonclient ({protocol}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        assert_eq!(
            (&seen["live"], &seen["ready"], &seen["model_ready"]),
            (&json!(true), &json!(true), &json!(true)),
            "{protocol}: {seen}"
        );
        assert_eq!(seen["metadata"]["outputs"][0]["shape"], json!([-1, 4]), "{protocol}: {seen}");
        assert!(
            seen["unknown_model"].as_str().unwrap().contains("unknown model"),
            "{protocol}: {seen}"
        );
        assert!(
            seen["wrong_shape"].as_str().unwrap().contains("does not hold one request"),
            "{protocol}: {seen}"
        );
        assert!(
            seen["never_started"].as_str().unwrap().contains("UnknownSession"),
            "{protocol}: {seen}"
        );
        assert_eq!(
            seen["binary_same"], true,
            "binary tensors answer as JSON ones do: {protocol}: {seen}"
        );
        if protocol == "grpc" {
            let garbage = seen["garbage"].as_str().unwrap();
            assert!(garbage.starts_with("INVALID_ARGUMENT") && garbage.contains("decode"), "{seen}");
            assert_eq!(seen["serves_after_garbage"], true, "{seen}");
        }
        // Its answers are the reference's for the same sequence, and retries got the same.
        let mut reference = Reference::new(&chain).unwrap();
        for (step, o) in seen["outputs"].as_array().unwrap().iter().enumerate() {
            assert_eq!(o["retry_same"], true, "{protocol}: {o}");
            let input: Vec<f32> = o["input"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let r = Request {
                session: Some(11),
                start: step == 0,
                end: step == 2,
                input: Values::F32(input),
            };
            let Ok(Values::F32(want)) = reference.eval(step as u64, &r.encode_binary()) else {
                panic!("reference failed")
            };
            let got: Vec<f32> = o["output"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            assert!(
                got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())),
                "{protocol} step {step}: {got:?} vs {want:?}"
            );
        }
    }
    let s = stop(child);
    // Per protocol: 3 steps, 2 binary checks, the sequence never started (an
    // error answer), and over gRPC one more after the garbage; no retry logged.
    assert_eq!(
        (s["accepted"].as_u64(), s["released"].as_u64(), s["errors"].as_u64()),
        (Some(13), Some(13), Some(2)),
        "{s}"
    );
}

#[test]
fn a_burst_far_above_capacity_gets_429s_with_retry_after_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 2 requests in flight per worker and 4 queued per partition: 12 in all.
    let (child, addr) = serve("chain", &dir.path().join("data"), &["--max-inflight", "2", "--serve-queue", "4"]);
    let (clients, each) = (96, 4);
    let outcomes: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let addr = &addr;
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
                    (0..each)
                        .map(|k| {
                            let body = json!({
                                "id": format!("burst-{c}-{k}"),
                                // A one-step sequence each; every accepted request is
                                // answered within the timeout, or gets a 504.
                                "parameters": { "timeout": 20_000_000, "sequence_id": c * 10 + k + 1, "sequence_start": true, "sequence_end": true },
                                "inputs": [{ "name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": features(c, k) }],
                            });
                            match agent
                                .post(&format!("http://{addr}/v2/models/chain/infer"))
                                .send_string(&body.to_string())
                            {
                                Ok(r) => (r.status(), None),
                                Err(ureq::Error::Status(code, r)) => (code, r.header("Retry-After").map(str::to_string)),
                                Err(e) => panic!("client {c}: {e}"),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let ok = outcomes.iter().filter(|(code, _)| *code == 200).count() as u64;
    let busy: Vec<_> = outcomes.iter().filter(|(code, _)| *code == 429).collect();
    assert!(!busy.is_empty(), "a burst of {} requests got no 429", clients * each);
    assert!(
        busy.iter().all(|(_, after)| after.as_deref() == Some("1")),
        "every 429 says when to retry: {busy:?}"
    );
    assert_eq!(
        ok + busy.len() as u64,
        clients * each,
        "only 200s and 429s: {:?}",
        outcomes.iter().filter(|(c, _)| *c != 200 && *c != 429).collect::<Vec<_>>()
    );
    // It still serves once the burst is over.
    let (code, v) = post(
        &addr,
        "chain",
        &json!({
            "parameters": { "sequence_id": 5000, "sequence_start": true },
            "inputs": [{ "name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": features(1, 1) }],
        }),
    );
    assert_eq!(code, 200, "{v}");
    let s = stop(child);
    // Everything accepted was answered, once; nothing refused was logged.
    assert_eq!(
        (
            s["accepted"].as_u64(),
            s["released"].as_u64(),
            s["lost"].as_u64(),
            s["duplicated"].as_u64()
        ),
        (Some(ok + 1), Some(ok + 1), Some(0), Some(0)),
        "{s}"
    );
}

/// Panics where `answers` (by session, then step) differ from the
/// reference's for sequences `1..=sessions` of `steps` steps, sent in order.
fn assert_reference_answers(answers: &[Vec<Vec<f32>>], sessions: u64, steps: u64) {
    let chain = hams::GraphDef::from_file(&common::graph("chain")).unwrap().build().unwrap();
    let mut reference = Reference::new(&chain).unwrap();
    let mut seq = 0;
    for session in 1..=sessions {
        for step in 0..steps {
            let r = Request {
                session: Some(session),
                start: step == 0,
                end: step + 1 == steps,
                input: Values::F32(features(session, step)),
            };
            seq += 1;
            let Ok(Values::F32(want)) = reference.eval(seq, &r.encode_binary()) else {
                panic!("reference failed")
            };
            let got = &answers[(session - 1) as usize][step as usize];
            assert!(
                got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())),
                "s{session} step {step}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn a_killed_process_restarts_and_every_request_is_answered_once_as_without_the_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two processes of one worker each: process K serves port+K, partition K.
    let (child, addrs) = serve_cluster("chain", &data, &["--kill-process", "1@40"]);
    let addr = |session: u64| addrs[(session % 2) as usize].clone();
    let (sessions, steps) = (8u64, 15u64);
    let answers: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=sessions)
            .map(|session| {
                let addr = addr(session);
                s.spawn(move || {
                    (0..steps)
                        .map(|step| {
                            let body = request(session, step, steps);
                            let give_up = std::time::Instant::now() + Duration::from_secs(120);
                            // Retries with the same id through the kill and the restart.
                            let v = loop {
                                match post(&addr, "chain", &body) {
                                    (200, v) => break v,
                                    (0 | 429 | 503 | 504, _) if std::time::Instant::now() < give_up => {
                                        std::thread::sleep(Duration::from_millis(50))
                                    }
                                    (code, v) => panic!("session {session} step {step}: {code} {v}"),
                                }
                            };
                            output(&v)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let s = stop(child);
    assert_eq!(s["faults"][0]["injected"], true, "the process kill fired: {s}");
    assert_eq!(
        (s["lost"].as_u64(), s["duplicated"].as_u64(), s["errors"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["consistent"], true, "{s}");
    // Every id logged and released once, and no session started again from zero.
    let report = hams::dataflow::verify::verify(&data).unwrap();
    assert!(report.consistent() && report.broken_chains == 0, "{report}");
    assert_eq!(common::outputs(&data, 2).len() as u64, sessions * steps, "one release per request");
    assert_reference_answers(&answers, sessions, steps);
}

#[test]
fn ids_are_kept_as_long_as_their_answers_and_no_longer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two partitions of 10 retained answers each.
    let (child, addr) = serve("chain", &data, &["--retain-outputs", "10"]);
    let body = |i: u64| {
        json!({
            "id": format!("r{i}"),
            "parameters": { "sequence_id": i + 1, "sequence_start": true, "sequence_end": true },
            "inputs": [{ "name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": features(i, 0) }],
        })
    };
    let mut last = Vec::new();
    for i in 0..60 {
        let (code, v) = post(&addr, "chain", &body(i));
        assert_eq!(code, 200, "{v}");
        last = output(&v);
    }
    // A recent id: the same answer, read back, not run again.
    let (code, v) = post(&addr, "chain", &body(59));
    assert_eq!((code, output(&v)), (200, last), "{v}");
    let s = stop(child);
    assert_eq!(s["accepted"], 60, "a retry within the window was logged again: {s}");
    // The ids whose answers left the output topic are gone with them.
    let ids: usize = common::stores(&data)
        .iter()
        .map(|st| {
            st.scan::<(u32, u64)>(hams::storage::Cf::Meta, b"serve/id/", b"serve/id0", usize::MAX)
                .unwrap()
                .len()
        })
        .sum();
    assert!((1..=20).contains(&ids), "{ids} ids kept for 20 retained answers");
}

#[test]
fn an_idle_session_is_ended_and_its_state_freed_on_primary_and_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, addr) = serve("chain", &data, &["--session-ttl-s", "1"]);
    let step = |session: u64, step: u64, start: bool| {
        post(
            &addr,
            "chain",
            &json!({
                "parameters": { "sequence_id": session, "sequence_start": start },
                "inputs": [{ "name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": features(session, step) }],
            }),
        )
    };
    // Session 5 goes idle; session 6 keeps going, a request every 300 ms.
    assert_eq!(step(5, 0, true).0, 200);
    assert_eq!(step(6, 0, true).0, 200);
    for k in 1..10 {
        std::thread::sleep(Duration::from_millis(300));
        let (code, v) = step(6, k, false);
        assert_eq!(code, 200, "an active session is kept: {v}");
    }
    let (code, v) = step(5, 1, false);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("UnknownSession"), "{v}");
    let s = stop(child);
    // The checker holds the backup to it: a final state for session 5 would
    // be one no committed execution left open.
    assert_eq!(s["consistent"], true, "{s}");
    assert_eq!((s["lost"].as_u64(), s["duplicated"].as_u64()), (Some(0), Some(0)), "{s}");
    let report = hams::dataflow::verify::verify(&data).unwrap();
    assert!(report.consistent(), "{report}");
    let held: Vec<u64> = common::stores(&data)
        .iter()
        .flat_map(|st| hams::storage::backup::states(st).unwrap())
        .flat_map(|(_, (_, states))| states.into_keys().map(|s| s.0))
        .collect();
    assert!(!held.contains(&5), "the idle session's state is still held: {held:?}");
    assert!(held.contains(&6), "the active session's state is held: {held:?}");
}

#[test]
fn every_process_serves_every_request_and_retries_find_their_answer_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, addrs) = serve_cluster("chain", &data, &[]);
    // Every sequence through process 0, half of them owned by process 1.
    let (sessions, steps) = (6u64, 5u64);
    let mut answers = vec![Vec::new(); sessions as usize];
    for step in 0..steps {
        for session in 1..=sessions {
            let (code, v) = post(&addrs[0], "chain", &request(session, step, steps));
            assert_eq!(code, 200, "s{session}-{step}: {v}");
            answers[(session - 1) as usize].push(output(&v));
        }
    }
    // Retries through the other process: the same answers, nothing run again.
    for session in 1..=sessions {
        let (code, v) = post(&addrs[1], "chain", &request(session, 2, steps));
        assert_eq!((code, output(&v)), (200, answers[(session - 1) as usize][2].clone()), "{v}");
    }
    let s = stop(child);
    assert_eq!(s["accepted"].as_u64(), Some(sessions * steps), "a retry was logged again: {s}");
    assert_eq!((s["lost"].as_u64(), s["duplicated"].as_u64()), (Some(0), Some(0)), "{s}");
    assert_eq!(s["consistent"], true, "{s}");
    assert_reference_answers(&answers, sessions, steps);
}

#[test]
fn a_request_with_an_id_and_no_sequence_runs_once_whichever_process_takes_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addrs) = serve_cluster("image_query", &dir.path().join("data"), &[]);
    let body = |k: usize| {
        json!({
            "id": format!("thumb-{k}"),
            "inputs": [{ "name": "INPUT", "shape": [1, 3, 16, 16], "datatype": "FP32",
                         "data": (0..768).map(|i| ((i * 7 + k) % 11) as f32 / 11.0).collect::<Vec<_>>() }],
        })
    };
    for k in 0..8 {
        let (code, first) = post(&addrs[k % 2], "image_query", &body(k));
        assert_eq!(code, 200, "{first}");
        let (code, again) = post(&addrs[(k + 1) % 2], "image_query", &body(k));
        assert_eq!((code, output(&again)), (200, output(&first)), "thumb-{k}: {again}");
    }
    let s = stop(child);
    assert_eq!(s["accepted"], 8, "a retry through the other process ran again: {s}");
    assert_eq!(s["consistent"], true, "{s}");
}

/// An OTLP trace collector (the OpenTelemetry protocol's own gRPC service),
/// keeping each span's name and string or integer attributes.
mod collector {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    pub type Spans = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

    struct Collector(Spans);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.0.lock().unwrap();
            for span in req
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
            {
                let attrs = span
                    .attributes
                    .into_iter()
                    .filter_map(|kv| match kv.value?.value? {
                        Value::StringValue(s) => Some((kv.key, s)),
                        Value::IntValue(i) => Some((kv.key, i.to_string())),
                        _ => None,
                    })
                    .collect();
                spans.push((span.name, attrs));
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }

    /// Starts a collector; its endpoint and what it received.
    pub fn start() -> (String, Spans) {
        let spans = Spans::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = tonic::service::Routes::new(TraceServiceServer::new(Collector(spans.clone())))
            .prepare()
            .into_axum_router();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app)
                    .await
                    .unwrap();
            });
        });
        (format!("http://{addr}"), spans)
    }
}

#[test]
fn request_spans_go_to_an_otlp_collector_when_one_is_configured() {
    let (endpoint, spans) = collector::start();
    let dir = tempfile::tempdir().unwrap();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let (child, addr) = serve_with_env("chain", &dir.path().join("data"), &[], &env);
    for step in 0..3 {
        let (code, v) = post(&addr, "chain", &request(7, step, 3));
        assert_eq!(code, 200, "{v}");
    }
    stop(child);
    // The exporter flushes as the process ends.
    let spans = spans.lock().unwrap().clone();
    let named = |n: &str| spans.iter().filter(|(name, _)| name == n).collect::<Vec<_>>();
    let infer = named("hams.infer");
    assert_eq!(infer.len(), 3, "{spans:?}");
    let attr = |s: &(String, Vec<(String, String)>), k: &str| s.1.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let ids: Vec<_> = infer.iter().filter_map(|s| attr(s, "id")).collect();
    assert_eq!(ids, ["s7-0", "s7-1", "s7-2"], "{spans:?}");
    assert!(infer
        .iter()
        .all(|s| attr(s, "status").as_deref() == Some("200") && attr(s, "sequence_id").as_deref() == Some("7")));
    for child in ["admit", "log", "release"] {
        assert_eq!(named(child).len(), 3, "{child}: {spans:?}");
    }
}
