//! Kafka source and sink, with a pure-Rust client (rskafka).
//!
//! Source: each worker owns the topic's partitions `p ≡ worker (mod workers)`.
//! A background task per partition fetches records; ingestion appends each
//! to the embedded source log *and* advances the stored Kafka position in the
//! same RocksDB batch, so every Kafka record is accepted exactly once and gets
//! its `seq` durably — replays after a failover or restart come from the
//! embedded log, identical.
//!
//! Sink: results are released to the embedded output topic only when committed;
//! a publisher then produces them to the Kafka output topic, keyed
//! by `seq`, and stores how far it got. rskafka has no transactions, so a
//! publisher that restarts reads back the Kafka partition from its last stored
//! offset and skips the `seq`s already there: no loss, no duplicate. The
//! consumer positions that count as "committed" are the sink's released
//! watermarks (advanced only for requests whose results are committed), kept in
//! RocksDB beside the results, since rskafka does not do consumer groups.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hams_storage::{Batch, Cf, Log, OutputRecord, Store};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a Kafka topic is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopic {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic name (must exist: hams does not create topics).
    pub topic: String,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hams-kafka")
            .enable_all()
            .build()
            .expect("starting the Kafka runtime")
    })
}

fn kafka_err(t: &KafkaTopic, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("Kafka {} at {}: {what}: {e}", t.topic, t.brokers.join(",")))
}

/// Connects and checks that the topic exists; returns the client and the topic's partitions.
async fn connect(t: &KafkaTopic) -> Result<(Client, Vec<i32>)> {
    let backoff = rskafka::BackoffConfig {
        deadline: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let client = tokio::time::timeout(
        Duration::from_secs(8),
        ClientBuilder::new(t.brokers.clone()).backoff_config(backoff).build(),
    )
    .await
    .map_err(|_| kafka_err(t, "cannot reach the broker", "timed out"))?
    .map_err(|e| kafka_err(t, "cannot reach the broker", e))?;
    let topics = client.list_topics().await.map_err(|e| kafka_err(t, "listing topics", e))?;
    let Some(topic) = topics.into_iter().find(|x| x.name == t.topic) else {
        return Err(kafka_err(
            t,
            "topic does not exist",
            "create it first (hams does not create topics)",
        ));
    };
    Ok((client, topic.partitions.into_iter().collect()))
}

async fn partition(client: &Client, t: &KafkaTopic, p: i32) -> Result<PartitionClient> {
    client
        .partition_client(t.topic.clone(), p, UnknownTopicHandling::Error)
        .await
        .map_err(|e| kafka_err(t, &format!("partition {p}"), e))
}

fn position_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("kafka/in/{topic}/{partition}").into_bytes()
}

/// One past the last record of a partition, found by reading to the end from
/// `from`: brokers differ in what "latest offset" means for batched records
/// (some report the last batch's base offset), so count what is there.
async fn end_offset(pc: &PartitionClient, from: i64) -> std::result::Result<i64, rskafka::client::error::Error> {
    let mut end = from;
    loop {
        let (records, _) = pc.fetch_records(end, 1..4_000_000, 100).await?;
        match records.iter().map(|r| r.offset).max() {
            Some(last) if last >= end => end = last + 1,
            _ => return Ok(end),
        }
    }
}

/// One fetched Kafka record.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub partition: i32,
    pub offset: i64,
    pub bytes: Vec<u8>,
}

/// A worker's share of a Kafka source topic.
pub(crate) struct KafkaFeed {
    topic: KafkaTopic,
    rx: mpsc::Receiver<Fetched>,
    /// Next offset to accept, per owned partition.
    positions: BTreeMap<i32, i64>,
    /// With `drain`, the end offsets at start: the feed is done once they are reached.
    targets: Option<BTreeMap<i32, i64>>,
    buffered: Option<Fetched>,
}

impl KafkaFeed {
    /// Starts fetching the partitions of `topic` that worker `index` of `workers` owns.
    pub(crate) fn start(topic: &KafkaTopic, store: &Store, index: usize, workers: usize, drain: bool) -> Result<Self> {
        let t = topic.clone();
        let (client, parts) = runtime().block_on(connect(&t))?;
        let owned: Vec<i32> = parts.into_iter().filter(|p| (*p as usize) % workers == index).collect();
        let mut positions = BTreeMap::new();
        let mut targets = BTreeMap::new();
        let (tx, rx) = mpsc::channel();
        for p in owned {
            let pc = runtime().block_on(partition(&client, &t, p))?;
            let start = store.get::<i64>(Cf::Meta, &position_key(&t.topic, p))?.unwrap_or(0);
            positions.insert(p, start);
            if drain {
                let end = runtime()
                    .block_on(end_offset(&pc, start))
                    .map_err(|e| kafka_err(&t, "end offset", e))?;
                tracing::info!(topic = %t.topic, partition = p, start, end, "draining Kafka partition");
                targets.insert(p, end);
            }
            let tx = tx.clone();
            let name = t.topic.clone();
            runtime().spawn(async move {
                let mut next = start;
                loop {
                    match pc.fetch_records(next, 1..4_000_000, 50).await {
                        Ok((records, _high)) => {
                            for r in records {
                                next = r.offset + 1;
                                let bytes = r.record.value.unwrap_or_default();
                                if tx
                                    .send(Fetched {
                                        partition: p,
                                        offset: r.offset,
                                        bytes,
                                    })
                                    .is_err()
                                {
                                    return; // The feed is gone.
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(topic = %name, partition = p, error = %e, "Kafka fetch failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        }
        Ok(KafkaFeed {
            topic: t,
            rx,
            positions,
            targets: drain.then_some(targets),
            buffered: None,
        })
    }

    /// True when draining and every owned partition reached its end offset at start.
    pub(crate) fn drained(&self) -> bool {
        self.targets
            .as_ref()
            .is_some_and(|t| t.iter().all(|(p, end)| self.positions.get(p).is_some_and(|pos| pos >= end)))
    }

    /// Up to `max` records not yet accepted; stages the new positions into `batch`.
    pub(crate) fn take(&mut self, max: usize, store: &Store, batch: &mut Batch) -> Vec<Fetched> {
        let mut out = Vec::new();
        while out.len() < max {
            let next = self.buffered.take().or_else(|| self.rx.try_recv().ok());
            let Some(f) = next else { break };
            let pos = self.positions.get(&f.partition).copied().unwrap_or(0);
            if f.offset < pos {
                continue; // Accepted before (a refetch).
            }
            if let Some(end) = self.targets.as_ref().and_then(|t| t.get(&f.partition)) {
                if f.offset >= *end {
                    continue; // Draining: past the end offset at start.
                }
            }
            self.positions.insert(f.partition, f.offset + 1);
            batch.put(store, Cf::Meta, &position_key(&self.topic.topic, f.partition), &(f.offset + 1));
            out.push(f);
        }
        out
    }
}

fn published_key(topic: &str, partition: u32) -> Vec<u8> {
    format!("kafka/out/{topic}/{partition}").into_bytes()
}

/// Progress of a publisher: next output-log offset to publish, and the Kafka
/// offset that the record before it went to.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Published {
    next: u64,
    kafka_next: i64,
}

/// A result as published to Kafka (the same JSON as `hams results`).
pub fn result_json(rec: &OutputRecord) -> serde_json::Value {
    let result = match &rec.outcome {
        Ok(hams_storage::Values::F32(v)) => serde_json::json!({ "output": v }),
        Ok(hams_storage::Values::Tokens(t)) => serde_json::json!({ "output": t }),
        Err(e) => serde_json::json!({ "error": { "node": e.node, "kind": format!("{:?}", e.kind), "message": e.message } }),
    };
    serde_json::json!({
        "seq": rec.seq.0,
        "session": rec.session.map(|s| s.0),
        "epoch": rec.epoch.0,
        "latency_us": rec.release_us.saturating_sub(rec.ingest_us),
        "result": result,
        "lineage": rec.lineage.iter().map(|t| serde_json::json!([t.model.0, t.incarnation.0, t.epoch.0, format!("{:016x}", t.fingerprint.0)])).collect::<Vec<_>>(),
    })
}

/// Publishes one process's committed results to a Kafka topic.
pub struct Publisher {
    topic: KafkaTopic,
    store: Arc<Store>,
    partitions: Vec<u32>,
    clients: BTreeMap<u32, PartitionClient>,
    /// Per home partition: output-log offsets below this are published (the sink's GC floor).
    floors: BTreeMap<u32, Arc<AtomicU64>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl Publisher {
    /// Connects for the home partitions (= workers) `partitions` of this process.
    pub fn connect(topic: &KafkaTopic, store: Arc<Store>, partitions: Vec<u32>) -> Result<Self> {
        let (client, parts) = runtime().block_on(connect(topic))?;
        let mut clients = BTreeMap::new();
        let mut floors = BTreeMap::new();
        for p in &partitions {
            let kp = parts[*p as usize % parts.len()];
            clients.insert(*p, runtime().block_on(partition(&client, topic, kp))?);
            let published: Published = store.get(Cf::Meta, &published_key(&topic.topic, *p))?.unwrap_or_default();
            floors.insert(*p, Arc::new(AtomicU64::new(published.next)));
        }
        Ok(Publisher {
            topic: topic.clone(),
            store,
            partitions,
            clients,
            floors,
        })
    }

    /// The GC floor of home partition `p`: the sink keeps output records from here on.
    pub fn floor(&self, p: u32) -> Arc<AtomicU64> {
        self.floors.get(&p).cloned().unwrap_or_else(|| Arc::new(AtomicU64::new(u64::MAX)))
    }

    /// Produces committed results not yet in Kafka (up to 4096 per partition);
    /// returns how many output records it got past.
    pub fn publish(&self) -> Result<usize> {
        let log = Log::new(self.store.clone(), Cf::Output);
        let mut total = 0;
        for p in &self.partitions {
            let client = &self.clients[p];
            let key = published_key(&self.topic.topic, *p);
            let mut published: Published = self.store.get(Cf::Meta, &key)?.unwrap_or_default();
            let pending: Vec<(u64, OutputRecord)> = log.read(*p, published.next, 4096)?;
            if pending.is_empty() {
                continue;
            }
            // A crash may have come between a produce and storing its progress:
            // what is in Kafka after our last stored offset is ours, and out already.
            let mut out_already = HashSet::new();
            let end = runtime()
                .block_on(client.get_offset(OffsetAt::Latest))
                .map_err(|e| kafka_err(&self.topic, "end offset", e))?;
            let mut at = published.kafka_next;
            while at < end {
                let (records, _) = runtime()
                    .block_on(client.fetch_records(at, 1..4_000_000, 100))
                    .map_err(|e| kafka_err(&self.topic, "reading back", e))?;
                let Some(last) = records.last().map(|r| r.offset) else { break };
                for r in records {
                    if let Some(k) = r.record.key.as_ref().and_then(|k| std::str::from_utf8(k).ok()?.parse::<u64>().ok()) {
                        out_already.insert(k);
                    }
                }
                at = last + 1;
            }
            let records: Vec<Record> = pending
                .iter()
                .filter(|(_, r)| !out_already.contains(&r.seq.0))
                .map(|(_, r)| Record {
                    key: Some(r.seq.0.to_string().into_bytes()),
                    value: Some(result_json(r).to_string().into_bytes()),
                    headers: BTreeMap::new(),
                    timestamp: chrono_now(),
                })
                .collect();
            let n = records.len();
            let offsets = if records.is_empty() {
                Vec::new()
            } else {
                runtime()
                    .block_on(client.produce(records, Compression::NoCompression))
                    .map_err(|e| kafka_err(&self.topic, "produce", e))?
            };
            published.next = pending.last().map_or(published.next, |(o, _)| o + 1);
            published.kafka_next = offsets.last().map_or(end.max(at), |o| o + 1);
            let mut b = Batch::new();
            b.put(&self.store, Cf::Meta, &key, &published);
            self.store.commit(b, true)?;
            self.floors[p].store(published.next, Ordering::SeqCst);
            tracing::debug!(partition = p, produced = n, "published results to Kafka");
            total += pending.len();
        }
        Ok(total)
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
