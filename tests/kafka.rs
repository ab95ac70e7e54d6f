//! Kafka end to end, against a real Kafka-compatible broker (tansu, memory
//! storage, on 127.0.0.1): requests produced to a topic, a graph run with a
//! primary kill in the middle, and exactly one result per request read back
//! from the output topic, consistent by the verifier. Without a broker
//! (`tansu` not installed) these tests say so and pass; `.ci/run` installs it.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hams::GraphDef;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;

mod common;

fn tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HAMS_TANSU").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([home.join(".cargo/bin")])
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

struct Broker {
    child: Child,
    addr: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> Option<Broker> {
    let Some(bin) = tansu() else {
        eprintln!("skipping: no Kafka-compatible broker (install: cargo install tansu --locked --features dynostore)");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args([
            "--listener-url",
            &format!("tcp://{addr}"),
            "--advertised-listener-url",
            &format!("tcp://{addr}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Broker { child, addr })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn create_topics(addr: &str, topics: &[(&str, i32)]) {
    rt().block_on(async {
        let client = ClientBuilder::new(vec![addr.to_string()]).build().await.unwrap();
        let c = client.controller_client().unwrap();
        for (t, parts) in topics {
            c.create_topic(*t, *parts, 1, 5_000).await.unwrap();
        }
    });
}

fn produce(addr: &str, topic: &str, per_partition: &BTreeMap<i32, Vec<Vec<u8>>>) {
    rt().block_on(async {
        let client = ClientBuilder::new(vec![addr.to_string()]).build().await.unwrap();
        for (p, values) in per_partition {
            let pc = client.partition_client(topic, *p, UnknownTopicHandling::Retry).await.unwrap();
            for chunk in values.chunks(200) {
                let records = chunk
                    .iter()
                    .map(|v| Record {
                        key: None,
                        value: Some(v.clone()),
                        headers: BTreeMap::new(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                pc.produce(records, Compression::NoCompression).await.unwrap();
            }
        }
    });
}

/// Every (key, value) of a topic.
fn consume(addr: &str, topic: &str, partitions: i32) -> Vec<(String, serde_json::Value)> {
    rt().block_on(async {
        let client = ClientBuilder::new(vec![addr.to_string()]).build().await.unwrap();
        let mut out = Vec::new();
        for p in 0..partitions {
            let pc = client.partition_client(topic, p, UnknownTopicHandling::Retry).await.unwrap();
            let mut at = 0;
            loop {
                let (records, high) = pc.fetch_records(at, 1..10_000_000, 200).await.unwrap();
                for r in &records {
                    let key = String::from_utf8(r.record.key.clone().unwrap_or_default()).unwrap();
                    out.push((key, serde_json::from_slice(r.record.value.as_deref().unwrap_or_default()).unwrap()));
                    at = r.offset + 1;
                }
                if at >= high || records.is_empty() {
                    break;
                }
            }
        }
        out
    })
}

/// The chain graph reading from and writing to Kafka.
fn kafka_graph(dir: &std::path::Path, addr: &str, requests: &str, results: &str) -> PathBuf {
    let chain = std::fs::read_to_string(common::graph("chain")).unwrap();
    let text = chain
        .replace(
            "[source]\n",
            &format!("[source]\nkind = \"kafka\"\nbrokers = [\"{addr}\"]\ntopic = \"{requests}\"\n"),
        )
        .replace(
            "[sink]\ninputs = [\"head\"]\n",
            &format!("[sink]\ninputs = [\"head\"]\nkafka = {{ brokers = [\"{addr}\"], topic = \"{results}\" }}\n"),
        );
    let path = dir.join("chain_kafka.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn exactly_one_result_per_request_through_kafka_with_a_primary_kill() {
    let Some(broker) = start_broker() else { return };
    create_topics(&broker.addr, &[("requests", 2), ("results", 2)]);
    // Requests of partition p are the generator's partition-p stream, so sessions stay in order.
    let chain = GraphDef::from_file(&common::graph("chain")).unwrap().build().unwrap();
    let g = chain.generator();
    let n = 1200u64;
    let mut bad_seq = None;
    let mut per_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for seq in 0..n {
        let (p, k) = ((seq % 2) as u32, seq / 2);
        let mut bytes = g.request(p, 2, k).encode_json().into_bytes();
        if seq == 501 {
            // Not a request: a typed error for its client; the stream goes on.
            bytes = b"{not json".to_vec();
            bad_seq = Some(seq);
        }
        per_partition.entry(p as i32).or_default().push(bytes);
    }
    produce(&broker.addr, "requests", &per_partition);
    let dir = tempfile::tempdir().unwrap();
    let graph = kafka_graph(dir.path(), &broker.addr, "requests", "results");
    let data = dir.path().join("data");
    let s = common::run_json(&[
        "run",
        "--graph",
        graph.to_str().unwrap(),
        "-w",
        "2",
        "--drain",
        "--nondeterministic",
        "--kill",
        "tracker@600",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(
        (s["released"].as_u64(), s["lost"].as_u64(), s["duplicated"].as_u64()),
        (Some(n), Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["consistent"], true, "{s}");
    assert_eq!(s["recoveries"], 1, "{s}");
    let results = consume(&broker.addr, "results", 2);
    let mut per_seq: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    for (key, value) in results {
        per_seq.entry(key.parse().unwrap()).or_default().push(value);
    }
    assert_eq!(per_seq.len() as u64, n, "one result per request");
    assert!(per_seq.values().all(|v| v.len() == 1), "no duplicate in the output topic");
    let bad = &per_seq[&bad_seq.unwrap()][0];
    assert_eq!(bad["result"]["error"]["kind"], "Malformed", "{bad}");
    let odd: Vec<_> = per_seq
        .iter()
        .filter(|(s, v)| Some(**s) != bad_seq && !v[0]["result"]["output"].is_array())
        .collect();
    assert!(odd.is_empty(), "every other request has an output: {odd:?}");
    // Running again consumes nothing new and publishes nothing twice.
    let again = common::run_json(&[
        "run",
        "--graph",
        graph.to_str().unwrap(),
        "-w",
        "2",
        "--drain",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(consume(&broker.addr, "results", 2).len() as u64, n);
}

#[test]
fn broker_and_topic_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let graph = kafka_graph(dir.path(), &format!("127.0.0.1:{port}"), "requests", "results");
    fails_clearly(&graph, &dir.path().join("d1"), "cannot reach the broker");
    let Some(broker) = start_broker() else { return };
    let graph = kafka_graph(dir.path(), &broker.addr, "no_such_topic", "results");
    fails_clearly(&graph, &dir.path().join("d2"), "topic does not exist");
}

/// Runs `graph` to its end and expects exit code 2 with `message` on stderr.
fn fails_clearly(graph: &std::path::Path, data: &std::path::Path, message: &str) {
    let out = common::output_within(
        common::hams()
            .args(["run", "--graph", graph.to_str().unwrap(), "--drain", "--data-dir"])
            .arg(data),
        common::RUN_LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(message), "{err}");
}
