//! A cluster from a hostfile on 127.0.0.1, each process a child of the test.

mod common;

#[test]
fn three_processes_from_a_hostfile_release_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let ports = common::port_pairs(3);
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

#[test]
fn garbage_on_the_cluster_and_mirror_ports_is_refused_and_the_run_goes_on() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let ports = common::port_pairs(2);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let metrics = common::port_pairs(1)[0];
    let g = common::graph("chain");
    let child = common::spawn_group(
        common::hams()
            .args([
                "run",
                "--graph",
                g.to_str().unwrap(),
                "-h",
                hosts.to_str().unwrap(),
                "--requests",
                "0",
                "--rate",
                "300",
            ])
            .args(["--json", "--metrics-addr", &format!("127.0.0.1:{metrics}"), "--data-dir"])
            .arg(dir.path().join("data")),
    );
    let addr = format!("127.0.0.1:{metrics}");
    common::await_event("50 released results", std::time::Duration::from_secs(60), || {
        common::scrape(&addr, "hams_results_released_total").filter(|n| *n >= 50.0)
    });
    // Strangers on every port a cluster process listens on: the mirror
    // servers (port + 1) and the mesh ports (closed once the mesh is up).
    let mut strangers = Vec::new();
    for p in &ports {
        for port in [*p, p + 1] {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff garbage of no protocol at all");
                strangers.push(s);
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(&[0xA5; 4096]);
                strangers.push(s);
            }
        }
    }
    assert!(!strangers.is_empty(), "the mirror servers should be listening");
    let before = common::scrape(&addr, "hams_results_released_total").unwrap();
    common::await_event("releases after the garbage", std::time::Duration::from_secs(30), || {
        common::scrape(&addr, "hams_results_released_total").filter(|n| *n >= before + 50.0)
    });
    drop(strangers);
    // SAFETY: signals our own child's process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let out = common::finish_within(child, common::RUN_LIMIT);
    common::assert_success(&out, &["garbage"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let s: serde_json::Value = serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(
        (s["lost"].as_u64(), s["duplicated"].as_u64(), s["errors"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["consistent"], true, "{s}");
    assert_eq!(s["released"], s["accepted"], "{s}");
}
