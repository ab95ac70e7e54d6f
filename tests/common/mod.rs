//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hams::storage::{Cf, Log, OutputRecord, Store};

/// The `hams` binary under test.
pub fn hams() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hams"));
    c.env("RUST_LOG", "warn");
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
    let out = hams().args(args).arg("--json").output().expect("hams runs");
    assert_success(&out, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary in {stdout:?}"));
    serde_json::from_str(line).expect("valid JSON")
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
