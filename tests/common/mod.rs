//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hams::storage::{Cf, Log, OutputRecord, Store};

/// The `hams` binary under test.
pub fn hams() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hams"));
    // HAMS_TEST_LOG=info (say) shows more of what a failing run did.
    c.env("RUST_LOG", std::env::var("HAMS_TEST_LOG").unwrap_or_else(|_| "warn".into()));
    c
}

/// Path of an example graph.
pub fn graph(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/graphs")
        .join(format!("{name}.toml"))
}

/// Runs `hams` with `args`, asserting success, and parses its `--json` line.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = output_within(hams().args(args).arg("--json"), RUN_LIMIT);
    assert_success(&out, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary in {stdout:?}"));
    serde_json::from_str(line).expect("valid JSON")
}

/// `n` free ports on 127.0.0.1 whose next port is free too (a cluster
/// process listens on its port, and on the next one for its mirror).
pub fn port_pairs(n: usize) -> Vec<u16> {
    use std::net::TcpListener;
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if let Ok(m) = TcpListener::bind(("127.0.0.1", p + 1)) {
            ports.push(p);
            held.push(m);
        }
        held.push(l);
    }
    ports
}

/// Far beyond any run of the tests (seconds): a run still going is stuck.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `cmd` in a process group of its own; kills the whole group (cluster
/// processes and executors) if it outlives `limit`, so a stuck run fails the
/// test with its output instead of hanging it.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    finish_within(spawn_group(cmd), limit)
}

/// Starts `cmd` in a process group of its own, its output piped.
pub fn spawn_group(cmd: &mut Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hams starts")
}

/// Waits for a child started by [`spawn_group`]; kills its group and fails
/// with its last log lines if it outlives `limit`.
pub fn finish_within(mut child: std::process::Child, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let pgid = child.id() as i32;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if start.elapsed() > limit {
            // SAFETY: signals our own child's process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            let tail: Vec<&str> = std::str::from_utf8(&err).unwrap_or("").lines().rev().take(40).collect();
            panic!(
                "stuck: still running after {limit:?}; killed. stderr (last lines first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        // The fields after the command (which may hold spaces) follow its closing parenthesis.
                        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                        rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Executor processes started by `parent` (a `hams run` process) serving `model` as `replica`.
pub fn executor_pids(parent: u32, model: &str, replica: &str) -> Vec<u32> {
    let needle = format!("{model}-{replica}-");
    children_of(parent)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(b"HAMS_EXECUTOR_SOCKET=") && String::from_utf8_lossy(kv).contains(&needle))
            })
        })
        .collect()
}

/// The body of `GET http://addr{path}` (`None`: unreachable or not 200).
pub fn fetch(addr: &str, path: &str) -> Option<String> {
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(5)).build();
    agent.get(&format!("http://{addr}{path}")).call().ok()?.into_string().ok()
}

/// The status of `GET http://addr{path}` (`None`: unreachable).
pub fn fetch_status(addr: &str, path: &str) -> Option<u16> {
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(5)).build();
    match agent.get(&format!("http://{addr}{path}")).call() {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

/// Every sample of one Prometheus text scrape of `addr`, by series (`None`: unreachable).
pub fn scrape_all(addr: &str) -> Option<std::collections::BTreeMap<String, f64>> {
    let body = fetch(addr, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// One value from a scrape of `addr` (`None`: unreachable or absent).
pub fn scrape(addr: &str, series: &str) -> Option<f64> {
    scrape_all(addr)?.get(series).copied()
}

/// Polls `probe` every few milliseconds until it yields, or fails after `limit` with `what`.
pub fn await_event<T>(what: &str, limit: std::time::Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "hams {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The per-process databases under a data directory.
pub fn stores(data_dir: &Path) -> Vec<std::sync::Arc<Store>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .expect("data dir exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('p')))
        .collect();
    dirs.sort();
    dirs.iter().map(|d| Store::open(d).expect("store opens")).collect()
}

/// Every record of a log in every store, for partitions `0..partitions`.
fn read_all<T: serde::de::DeserializeOwned>(data_dir: &Path, cf: Cf, partitions: u32) -> Vec<(u32, u64, T)> {
    let mut out = Vec::new();
    for store in stores(data_dir) {
        let log = Log::new(store, cf);
        for p in 0..partitions {
            for (o, r) in log.read::<T>(p, 0, usize::MAX).expect("log reads") {
                out.push((p, o, r));
            }
        }
    }
    out
}

/// Released results of a run.
pub fn outputs(data_dir: &Path, partitions: u32) -> Vec<OutputRecord> {
    read_all(data_dir, Cf::Output, partitions).into_iter().map(|(_, _, r)| r).collect()
}
