//! Garbage collection: on an endless stream, what the data directory holds and
//! the worker's memory stay bounded as frontiers advance.

use hams::storage::{Cf, Store};

mod common;

/// Records per column family in every process database of `data`.
fn records(data: &std::path::Path) -> Vec<(Cf, usize)> {
    let stores = common::stores(data);
    Cf::ALL
        .iter()
        .map(|cf| {
            let n = stores
                .iter()
                .map(|s: &std::sync::Arc<Store>| s.scan_raw(*cf, &[], &[0xff; 16], usize::MAX).unwrap().len())
                .sum();
            (*cf, n)
        })
        .collect()
}

fn endless(seconds: &str, data: &std::path::Path) -> serde_json::Value {
    let g = common::graph("chain");
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--requests",
        "0",
        "--duration",
        seconds,
        "--rate",
        "3000",
        "--retain-outputs",
        "1500",
        "--retain-lineage",
        "1500",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["duplicated"], 0, "{s}");
    s
}

#[test]
fn disk_and_memory_stay_bounded_on_an_endless_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (short, long) = (dir.path().join("short"), dir.path().join("long"));
    let s1 = endless("2", &short);
    let s2 = endless("10", &long);
    assert!(s2["released"].as_u64().unwrap() > 4 * s1["released"].as_u64().unwrap(), "{s1} {s2}");
    let (r1, r2) = (records(&short), records(&long));
    eprintln!("records after 2 s: {r1:?}\nrecords after 10 s: {r2:?}");
    for ((cf, a), (_, b)) in r1.iter().zip(&r2) {
        // Each column family is capped by a retention or by what is in flight, not by the stream's length.
        let cap = match cf {
            Cf::Output => 2 * 1500,
            Cf::Lineage => 2 * 1500 + 2000,
            _ => 2000,
        };
        assert!(*b <= cap, "{cf:?} holds {b} records after 10 s (cap {cap}; after 2 s: {a})");
    }
    let (m1, m2) = (s1["peak_rss_mb"].as_f64().unwrap(), s2["peak_rss_mb"].as_f64().unwrap());
    // Slack: RocksDB's memtable budget (16 MiB) fills before it flushes.
    eprintln!("peak memory: {m1:.1} MiB after 2 s, {m2:.1} MiB after 10 s");
    assert!(m2 <= m1 + 18.0, "peak memory grew from {m1:.1} MiB to {m2:.1} MiB");
}
