//! A cluster from a hostfile on 127.0.0.1, each process a child of the test.

use std::net::TcpListener;

mod common;

#[test]
fn three_processes_from_a_hostfile_release_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    // Each process listens on its port and (for its neighbour's mirror) the next one.
    let ports: Vec<u16> = {
        let mut held = Vec::new();
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            if let Ok(m) = TcpListener::bind(("127.0.0.1", p + 1)) {
                ports.push(p);
                held.push(m);
            }
            held.push(l);
        }
        ports
    };
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let data = dir.path().join("data");
    let g = common::graph("fatigue");
    let children: Vec<_> = (0..3)
        .map(|p| {
            common::hams()
                .args(["run", "--graph", g.to_str().unwrap(), "-w", "2", "--requests", "3000", "--json"])
                .args([
                    "-p",
                    &p.to_string(),
                    "-h",
                    hosts.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (p, o) in outs.iter().enumerate() {
        common::assert_success(o, &["process", &p.to_string()]);
    }
    // Only process 0 reports.
    assert!(outs[1].stdout.is_empty() && outs[2].stdout.is_empty());
    let stdout = String::from_utf8_lossy(&outs[0].stdout);
    let s: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (s["released"].as_u64(), s["lost"].as_u64(), s["duplicated"].as_u64()),
        (Some(3000), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["workers"], 6);
    assert_eq!(s["processes"], 3);
    let results = common::outputs(&data, 6);
    assert_eq!(results.len(), 3000);
    let seqs: std::collections::BTreeSet<u64> = results.iter().map(|r| r.seq.0).collect();
    assert_eq!(seqs, (0..3000).collect());
}
