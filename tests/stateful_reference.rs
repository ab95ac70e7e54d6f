//! Stateful correctness: interleaved sessions through stateful graphs on
//! several workers give exactly the outputs of a single-threaded reference
//! run of the same models on the same inputs.

use hams::dataflow::reference::Reference;
use hams::storage::Values;
use hams::GraphDef;

mod common;

fn compare(graph: &str, workers: &str) {
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph(graph);
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        workers,
        "--requests",
        "1500",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(s["released"], 1500, "{s}");
    let partitions: u32 = workers.parse().unwrap();
    let graph_def = GraphDef::from_file(&g).unwrap().build().unwrap();
    // The same requests, regenerated independently of the run (the source log is garbage-collected).
    let generator = graph_def.generator();
    let requests = (0..1500u64)
        .map(|seq| {
            let (p, offset) = ((seq % partitions as u64) as u32, seq / partitions as u64);
            (seq, generator.request(p, partitions, offset).encode_binary())
        })
        .collect();
    let expected = Reference::new(&graph_def).unwrap().eval_all(&requests);
    let outputs = common::outputs(dir.path(), partitions);
    assert_eq!(outputs.len(), 1500);
    let mut sessions = std::collections::BTreeSet::new();
    for out in outputs {
        sessions.insert(out.session);
        let want = expected[&out.seq.0].as_ref().expect("reference succeeds");
        let (Ok(Values::F32(got)), Values::F32(want)) = (&out.outcome, want) else {
            panic!("seq {}: {:?} vs {want:?}", out.seq, out.outcome);
        };
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "seq {} session {:?}: {got:?} vs reference {want:?}",
                out.seq,
                out.session
            );
        }
    }
    assert!(sessions.len() > 20, "sessions interleave: {}", sessions.len());
}

#[test]
fn lstm_chain_matches_the_reference_on_three_workers() {
    compare("chain", "3");
}

#[test]
fn two_stateful_models_in_sequence_match_the_reference() {
    compare("auto_pilot", "2");
}

#[test]
fn joined_stateful_branches_match_the_reference() {
    compare("fatigue", "3");
}
