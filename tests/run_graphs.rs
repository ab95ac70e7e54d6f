//! Every example graph releases every request exactly once, on one process
//! with two workers and on a three-process local cluster.

mod common;

fn check_run(graph: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph(graph);
    let mut args = vec![
        "run",
        "--graph",
        g.to_str().unwrap(),
        "--requests",
        "2000",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend(extra);
    let s = common::run_json(&args);
    assert_eq!(s["released"], 2000, "{graph} {extra:?}: {s}");
    assert_eq!(s["accepted"], 2000, "{graph} {extra:?}: {s}");
    assert_eq!(s["lost"], 0, "{graph} {extra:?}: {s}");
    assert_eq!(s["duplicated"], 0, "{graph} {extra:?}: {s}");
    assert_eq!(s["errors"], 0, "{graph} {extra:?}: {s}");
    let workers = s["workers"].as_u64().unwrap();
    assert_eq!(s["audited"].as_u64().unwrap(), workers, "every sink audited: {s}");
    // The output topic agrees: one result per request.
    let outs = common::outputs(dir.path(), workers as u32);
    let seqs: std::collections::BTreeSet<u64> = outs.iter().map(|o| o.seq.0).collect();
    assert_eq!(outs.len(), 2000);
    assert_eq!(seqs.len(), 2000);
    assert!(outs.iter().all(|o| o.outcome.is_ok()));
}

macro_rules! graph_tests {
    ($($name:ident),*) => {
        mod one_process {
            $( #[test] fn $name() { super::check_run(stringify!($name), &["-w", "2"]); } )*
        }
        mod three_processes {
            $( #[test] fn $name() { super::check_run(stringify!($name), &["-n", "3", "-w", "1"]); } )*
        }
    };
}

graph_tests!(stock, image_query, auto_pilot, fatigue, sentiment, chain);
