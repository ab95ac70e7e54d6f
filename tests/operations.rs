//! Operating the binary as a user does: flags out of range are refused at
//! once, Ctrl-C in a terminal drains without losing a request, `hams results`
//! into a pipe that closes early ends quietly, and the cluster flags take
//! every spelling clap allows.

use std::time::Duration;

mod common;

/// Runs `hams` with `args` and expects a usage error (exit 2) naming `needle`.
fn refused(args: &[&str], needle: &str) {
    let out = common::output_within(common::hams().args(args), Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} was accepted: {err}");
    assert!(err.contains(needle), "{args:?}: the error does not name {needle:?}: {err}");
}

#[test]
fn flags_out_of_range_are_refused_before_anything_starts() {
    for (args, needle) in [
        (&["run", "--rate", "0"][..], "--rate"),
        (&["run", "--rate=-5"], "--rate"),
        (&["run", "--rate", "NaN"], "--rate"),
        (&["run", "--rate", "inf"], "--rate"),
        (&["run", "-w", "0"], "--threads"),
        (&["run", "-n", "0"], "--processes"),
        (&["run", "-w", "100000"], "--threads"),
        (&["run", "--deadline-ms", "1"], "--deadline-ms"),
        (&["run", "--epoch-us", "0"], "--epoch-us"),
        (&["run", "--max-inflight", "0"], "--max-inflight"),
        (&["run", "--duration", "0"], "--duration"),
        (&["run", "--checkpoint-ms", "0"], "--checkpoint-ms"),
        (&["run", "--input", "requests.jsonl", "--rate", "100"], "--rate"),
        (&["run", "--input", "requests.jsonl", "--seed", "7"], "--seed"),
        (&["run", "--metrics-addr", "no-port-here"], "--metrics-addr"),
        (&["bench", "--rounds", "0"], "--rounds"),
        (&["bench", "--requests", "0"], "--requests"),
        (&["check", "examples/graphs/chain.toml", "-w", "0"], "--threads"),
    ] {
        refused(args, needle);
    }
}

/// Starts an endless open-loop run whose metrics are at `addr`, waits for
/// some releases, sends SIGINT to its whole process group (as a terminal's
/// Ctrl-C does) and returns the summary.
fn interrupted(extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    // Process K serves metrics on port + K: both must be free.
    let port = common::port_pairs(1)[0];
    // A name, not an address: accepted like any HOST:PORT.
    let addr = format!("localhost:{port}");
    let data = dir.path().join("data");
    let g = common::graph("chain");
    let mut child = common::spawn_group(
        common::hams()
            .args(["run", "--graph", g.to_str().unwrap(), "--requests", "0", "--rate", "400", "--json"])
            .args(["--metrics-addr", &addr, "--data-dir", data.to_str().unwrap()])
            .args(extra),
    );
    let scrape_at = format!("127.0.0.1:{port}");
    let exited = common::await_event("100 released results", Duration::from_secs(60), || {
        // A run that stops by itself is a failure to show, not a wait to time out.
        if let Ok(Some(_)) = child.try_wait() {
            return Some(true);
        }
        common::scrape(&scrape_at, "hams_results_released_total")
            .filter(|n| *n >= 100.0)
            .map(|_| false)
    });
    if exited {
        let out = common::finish_within(child, common::RUN_LIMIT);
        panic!(
            "hams {extra:?} ended before Ctrl-C ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SAFETY: signals our own child's process group, as a terminal would.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) }, 0);
    let out = common::finish_within(child, common::RUN_LIMIT);
    common::assert_success(&out, &["Ctrl-C", extra.join(" ").as_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a summary");
    serde_json::from_str(line).unwrap()
}

#[test]
fn ctrl_c_in_a_terminal_drains_and_loses_nothing() {
    for extra in [&["-w", "2"][..], &["-n", "2", "-w", "1"]] {
        let s = interrupted(extra);
        assert!(s["released"].as_u64().unwrap() >= 100, "{extra:?}: {s}");
        assert_eq!(s["released"], s["accepted"], "{extra:?}: {s}");
        assert_eq!(
            (s["lost"].as_u64(), s["duplicated"].as_u64(), s["errors"].as_u64()),
            (Some(0), Some(0), Some(0)),
            "{extra:?}: {s}"
        );
        assert_eq!(s["consistent"], true, "{extra:?}: {s}");
    }
}

#[test]
fn results_into_a_pipe_closed_early_end_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = common::graph("chain");
    common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "--requests",
        "2000",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let mut child = common::hams()
        .args(["results", "--data-dir", data.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -1`: read one line, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("hams results kept running after its reader left");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success() && err.is_empty(), "{status:?}: {err}");
}

#[test]
fn cluster_flags_take_every_spelling() {
    let g = common::graph("chain");
    for n in [&["-n3"][..], &["--processes=3"]] {
        let mut args = vec!["run", "--graph", g.to_str().unwrap(), "-w", "1", "--requests", "300"];
        args.extend(n);
        let s = common::run_json(&args);
        assert_eq!(
            (s["released"].as_u64(), s["processes"].as_u64()),
            (Some(300), Some(3)),
            "{n:?}: {s}"
        );
    }
}
