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

/// Far beyond any run of the tests (seconds): a run still going is stuck.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `cmd` in a process group of its own; kills the whole group (cluster
/// processes and executors) if it outlives `limit`, so a stuck run fails the
/// test with its output instead of hanging it.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hams starts");
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
