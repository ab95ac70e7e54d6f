//! Bad input gets a clear, typed error and loses nothing: malformed payloads,
//! wrong shapes and types, unknown sessions, broken graph files and data
//! directories that are not hams'.

use hams::storage::{ErrorKind, Request, Values};

mod common;

fn good(session: u64, start: bool, end: bool, x: f32) -> String {
    Request {
        session: Some(session),
        start,
        end,
        input: Values::F32(vec![x; 16]),
    }
    .encode_json()
}

#[test]
fn bad_requests_get_typed_errors_and_the_rest_complete() {
    let dir = tempfile::tempdir().unwrap();
    // Two workers: line i goes to worker i % 2. Sessions stay on one worker (even lines).
    let lines: Vec<(String, Option<ErrorKind>)> = vec![
        (good(10, true, false, 0.1), None),
        ("this is not a request".into(), Some(ErrorKind::Malformed)),
        (good(10, false, false, 0.2), None),
        (
            r#"{"session": 3, "start": true, "input": [1.0, 2.0]}"#.into(),
            Some(ErrorKind::Shape),
        ),
        (good(10, false, true, 0.3), None),
        (
            format!(r#"{{"session": 3, "start": true, "tokens": {:?}}}"#, vec![1; 16]),
            Some(ErrorKind::Type),
        ),
        (good(12, true, false, 0.4), None),
        (
            format!(r#"{{"session": 999, "input": {:?}}}"#, vec![0.5; 16]),
            Some(ErrorKind::UnknownSession),
        ),
        (good(12, false, false, 0.5), None),
        (format!(r#"{{"input": {:?}}}"#, vec![0.5; 16]), Some(ErrorKind::UnknownSession)),
        (good(10, false, false, 0.6), Some(ErrorKind::UnknownSession)), // session 10 has ended
        (
            r#"{"session": 4, "start": true, "input": [1.0, "two"]}"#.into(),
            Some(ErrorKind::Malformed),
        ),
        (good(12, false, true, 0.7), None),
    ];
    let file = dir.path().join("requests.jsonl");
    std::fs::write(&file, lines.iter().map(|(l, _)| format!("{l}\n")).collect::<String>()).unwrap();
    let data = dir.path().join("data");
    let g = common::graph("chain");
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--input",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let bad = lines.iter().filter(|(_, e)| e.is_some()).count() as u64;
    assert_eq!(s["released"], lines.len() as u64, "{s}");
    assert_eq!(s["errors"], bad, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    let outs = common::outputs(&data, 2);
    assert_eq!(outs.len(), lines.len());
    for out in outs {
        let (line, want) = &lines[out.seq.0 as usize];
        match (want, &out.outcome) {
            (None, Ok(Values::F32(v))) => assert_eq!(v.len(), 4, "line {}: {line}", out.seq),
            (Some(kind), Err(e)) => {
                assert_eq!(e.kind, *kind, "line {}: {line}: {e}", out.seq);
                assert!(!e.message.is_empty());
            }
            (w, got) => panic!("line {} ({line}): expected {w:?}, got {got:?}", out.seq),
        }
    }
}

#[test]
fn a_broken_graph_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "name = \"x\"\n[source]\nshape = [4]\n[[node]]\nname = \"m\"\nmodel = \"mlp\"\ninputs = [\"nope\"]\noutput = 2\n[sink]\ninputs = [\"m\"]\n").unwrap();
    let out = common::hams().args(["run", "--graph", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("node \"m\"") && err.contains("unknown input \"nope\""),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_foreign_data_dir_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("thesis.tex"), "precious").unwrap();
    let out = common::hams()
        .args(["run", "--requests", "10", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a hams data directory"), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("thesis.tex")]);
}

#[test]
fn a_corrupt_database_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let g = common::graph("chain");
    common::run_json(&["run", "--graph", g.to_str().unwrap(), "--requests", "50", "--data-dir", data]);
    // Another version's marker.
    let marker = dir.path().join("p0/FORMAT");
    let original = std::fs::read_to_string(&marker).unwrap();
    std::fs::write(&marker, "hams-lineage v999\n").unwrap();
    let out = common::hams()
        .args(["run", "--graph", g.to_str().unwrap(), "--requests", "5", "--data-dir", data])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("v999"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, original).unwrap();
    // A database whose manifest pointer is garbage.
    std::fs::write(dir.path().join("p0/db/CURRENT"), "garbage\n").unwrap();
    let out = common::hams()
        .args(["run", "--graph", g.to_str().unwrap(), "--requests", "5", "--data-dir", data])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hams: error:") && !err.contains("panicked"), "{err}");
}
