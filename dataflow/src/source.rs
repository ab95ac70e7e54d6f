//! Ingestion: each worker owns one partition of the source topic. New requests
//! (generated, or read from a file) are appended to it durably before they
//! enter the dataflow; requests logged by an earlier run but never released
//! are replayed first.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use hams_operators::ops::control::ControlRef;
use hams_operators::ops::{Envelope, Failure, Meta};
use hams_protocol::{Seq, SessionId, View};
use hams_storage::{Batch, Cf, ErrorKind, Generator, Log, Released, Request, RequestError, SourceRecord, Store, Values};

use crate::def::{ElemType, SourceDef};
use crate::error::Result;
use crate::graph::Graph;

/// Where new requests come from.
#[derive(Debug, Clone)]
pub enum Feed {
    /// `count` generated requests per worker share (`None`: endless), at `rate` req/s in total.
    Generate {
        /// Total requests over all workers (`None`: endless).
        total: Option<u64>,
        /// Offered load over all workers (`None`: as fast as the window allows).
        rate: Option<f64>,
    },
    /// Requests as wire bytes (one per entry), spread over workers round-robin.
    Lines(Arc<Vec<Vec<u8>>>),
    /// Nothing new: only what the log already holds.
    None,
    /// The graph's Kafka source topic; with `drain`, up to its end offsets at start.
    Kafka {
        /// Stop once the topic's end offsets at start are reached.
        drain: bool,
    },
    /// Clients of the serving front end (`--serve`), until the run is stopped.
    Serve(Arc<crate::serve::Front>),
}

/// One worker's ingestion.
pub(crate) struct Ingest {
    partition: u32,
    partitions: u32,
    log: Log,
    next_offset: u64,
    backlog: VecDeque<(u64, SourceRecord)>,
    generator: Generator,
    feed: Feed,
    /// Requests of this worker's share created so far (in this run, across restarts).
    made: u64,
    /// `made` when this process started (open-loop due times count from there).
    made0: u64,
    sync: bool,
    source: SourceDef,
    control: ControlRef,
    released: Rc<RefCell<Released>>,
    view: View,
    kafka: Option<crate::kafka::KafkaFeed>,
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Ingest {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<Store>,
        graph: &Graph,
        partition: u32,
        partitions: u32,
        feed: Feed,
        sync: bool,
        control: ControlRef,
        released: Rc<RefCell<Released>>,
    ) -> Result<Self> {
        let kafka = match (&feed, &graph.source) {
            (Feed::Kafka { drain }, s) => {
                let topic = crate::kafka::KafkaTopic {
                    brokers: s.brokers.clone(),
                    topic: s.topic.clone().unwrap_or_default(),
                };
                Some(crate::kafka::KafkaFeed::start(
                    &topic,
                    &store,
                    partition as usize,
                    partitions as usize,
                    *drain,
                )?)
            }
            _ => None,
        };
        let log = Log::new(store.clone(), Cf::Source);
        let next_offset = log.end_offset(partition)?;
        let made = feed_progress(&store, partition, next_offset)?;
        let mut ingest = Ingest {
            partition,
            partitions,
            generator: graph.generator(),
            feed,
            made,
            made0: made,
            sync,
            source: graph.source.clone(),
            control,
            released,
            view: View(0),
            kafka,
            log,
            next_offset,
            backlog: VecDeque::new(),
        };
        ingest.load_unreleased()?;
        if !ingest.backlog.is_empty() {
            tracing::info!(
                partition,
                requests = ingest.backlog.len(),
                "replaying requests logged but never released"
            );
        }
        Ok(ingest)
    }

    /// Queues every logged request not yet released (a restart, or a recovery's replay).
    fn load_unreleased(&mut self) -> Result<()> {
        let ledger = self.released.clone();
        let released = ledger.borrow();
        let from = released.watermark();
        self.backlog = self
            .log
            .read::<SourceRecord>(self.partition, from, usize::MAX)?
            .into_iter()
            .filter(|(o, _)| *o < self.next_offset && !released.contains(*o))
            .collect();
        Ok(())
    }

    /// This worker's share of `total` requests.
    fn share(&self, total: u64) -> u64 {
        let (p, n) = (self.partition as u64, self.partitions as u64);
        total / n + (p < total % n) as u64
    }

    /// Global index of this worker's `k`-th request (interleaved over workers).
    fn global(&self, k: u64) -> u64 {
        k * self.partitions as u64 + self.partition as u64
    }

    /// True when nothing more will come and everything that came is released
    /// (until then a recovery may need to replay it).
    pub(crate) fn done(&self) -> bool {
        self.exhausted() && self.released.borrow().watermark() >= self.next_offset
    }

    /// True when no new request will come.
    fn exhausted(&self) -> bool {
        self.backlog.is_empty()
            && match &self.feed {
                Feed::Generate { total, .. } => total.is_some_and(|t| self.made >= self.share(t)),
                Feed::Lines(lines) => self.global(self.made) >= lines.len() as u64,
                Feed::None => true,
                Feed::Kafka { .. } => self.kafka.as_ref().is_some_and(|k| k.drained()),
                Feed::Serve(_) => false,
            }
    }

    /// When the next generated request is due, µs since the run started.
    pub(crate) fn next_due_us(&self) -> Option<u64> {
        match &self.feed {
            Feed::Generate { rate: Some(r), .. } if !self.exhausted() => {
                Some((self.global(self.made - self.made0) as f64 * 1e6 / r) as u64)
            }
            _ => None,
        }
    }

    /// Ingests up to `budget` requests due by `elapsed_us`: logs new ones
    /// durably (one batch) and returns them, backlog first.
    pub(crate) fn poll(&mut self, run_start_us: u64, elapsed_us: u64, budget: usize) -> Result<Vec<(u64, SourceRecord)>> {
        let view = self.control.borrow().table.view();
        let mut budget = budget;
        if view > self.view {
            // A recovery: everything not released yet goes around again, in the new
            // view, at once (it was in flight already; the window does not apply).
            self.view = view;
            self.load_unreleased()?;
            budget = budget.max(self.backlog.len());
            tracing::info!(
                partition = self.partition,
                view = %view,
                requests = self.backlog.len(),
                "replaying unreleased requests"
            );
            hams_operators::metrics::metrics().phase(view.0, hams_operators::metrics::Phase::Replayed, now_us());
        }
        let mut out = Vec::new();
        while out.len() < budget {
            match self.backlog.pop_front() {
                // Released since the replay began (a result of the old view came through).
                Some((offset, _)) if self.released.borrow().contains(offset) => {}
                Some(r) => out.push(r),
                None => break,
            }
        }
        let mut batch = Batch::new();
        let now = now_us();
        if let Some(k) = self.kafka.as_mut() {
            // Accept fetched Kafka records: logged with their new position, in one batch.
            for f in k.take(budget.saturating_sub(out.len()), self.log.store(), &mut batch) {
                tracing::trace!(partition = f.partition, offset = f.offset, "accepted from Kafka");
                let rec = SourceRecord {
                    ingest_us: now,
                    bytes: f.bytes,
                };
                self.log.append(&mut batch, self.partition, self.next_offset, &rec);
                out.push((self.next_offset, rec));
                self.next_offset += 1;
            }
        }
        let mut served = Vec::new();
        if let Feed::Serve(front) = &self.feed {
            for mut p in front.take(self.partition, budget.saturating_sub(out.len())) {
                let rec = SourceRecord {
                    ingest_us: now,
                    bytes: std::mem::take(&mut p.bytes),
                };
                self.log.append(&mut batch, self.partition, self.next_offset, &rec);
                if let Some(id) = &p.id {
                    // Logged with the request: a retry with this id finds it, even after a restart.
                    hams_storage::served::log_id(&mut batch, self.log.store(), id, self.partition, self.next_offset);
                }
                out.push((self.next_offset, rec));
                served.push((self.next_offset, p));
                self.next_offset += 1;
            }
        }
        while out.len() < budget && !self.exhausted() {
            let k = self.made;
            let (bytes, ingest_us) = match &self.feed {
                Feed::Generate { rate, .. } => {
                    let due = rate.map(|r| (self.global(k - self.made0) as f64 * 1e6 / r) as u64);
                    if due.is_some_and(|d| d > elapsed_us) {
                        break;
                    }
                    let req = self.generator.request(self.partition, self.partitions, self.next_offset);
                    // Open loop: latency counts from when the request was due, not when we got to it.
                    (req.encode_binary(), due.map_or(now, |d| run_start_us + d))
                }
                Feed::Lines(lines) => (lines[self.global(k) as usize].clone(), now),
                Feed::None | Feed::Kafka { .. } | Feed::Serve(_) => break,
            };
            let rec = SourceRecord { ingest_us, bytes };
            self.log.append(&mut batch, self.partition, self.next_offset, &rec);
            out.push((self.next_offset, rec));
            self.next_offset += 1;
            self.made += 1;
        }
        self.log.store().commit(batch, self.sync)?;
        // Before the requests enter the dataflow, so no release can pass their clients by.
        for (offset, p) in served {
            p.logged(self.partition, offset);
        }
        Ok(out)
    }

    /// Turns a logged request into a dataflow record, or a typed error for its client.
    pub(crate) fn admit(&self, offset: u64, rec: SourceRecord) -> std::result::Result<Envelope, Box<Failure>> {
        let seq = offset * self.partitions as u64 + self.partition as u64;
        let mut r = admit(&self.source, seq, self.partition, offset, rec.ingest_us, &rec.bytes);
        match &mut r {
            Ok(e) => e.meta.view = self.view,
            Err(f) => f.meta.view = self.view,
        }
        r
    }
}

/// How much of its feed a supervised run had logged before this process
/// (re)started: a restart continues the feed where it stopped, a new run
/// (or an unsupervised one) starts it afresh after what the log holds.
fn feed_progress(store: &Store, partition: u32, end: u64) -> Result<u64> {
    use hams_storage::schema::{feed_start_key, RUN_KEY};
    let id = std::env::var(crate::run::ENV_RUN_ID).ok();
    let same = id.is_some() && store.get::<String>(Cf::Meta, RUN_KEY)? == id;
    if same {
        let start = store.get::<u64>(Cf::Meta, &feed_start_key(partition))?.unwrap_or(end);
        return Ok(end.saturating_sub(start));
    }
    let mut b = Batch::new();
    b.put(store, Cf::Meta, &feed_start_key(partition), &end);
    if let Some(id) = id {
        b.put(store, Cf::Meta, RUN_KEY, &id);
    }
    store.commit(b, true)?;
    Ok(0)
}

/// Decodes and checks a request against the graph's source, into a dataflow
/// record or a typed error for its client.
pub fn admit(
    source: &SourceDef,
    seq: u64,
    home: u32,
    offset: u64,
    ingest_us: u64,
    bytes: &[u8],
) -> std::result::Result<Envelope, Box<Failure>> {
    let mut meta = Meta {
        seq: Seq(seq),
        home,
        offset,
        session: None,
        start: false,
        end: false,
        ingest_us,
        view: View(0),
    };
    let fail = |meta, kind, message| {
        Box::new(Failure {
            meta,
            error: RequestError {
                node: "source".into(),
                kind,
                message,
            },
            lineage: Vec::new(),
        })
    };
    let req = match Request::decode(bytes) {
        Ok(r) => r,
        Err(e) => return Err(fail(meta, ErrorKind::Malformed, e.to_string())),
    };
    meta.session = req.session.map(SessionId);
    meta.start = req.start;
    meta.end = req.end;
    let kind_ok = matches!(
        (&req.input, source.input),
        (Values::F32(_), ElemType::F32) | (Values::Tokens(_), ElemType::Tokens)
    );
    if !kind_ok {
        let want = if source.input == ElemType::F32 {
            "f32 \"input\""
        } else {
            "\"tokens\""
        };
        return Err(fail(
            meta,
            ErrorKind::Type,
            format!("this service takes {want}, got {}", req.input.kind()),
        ));
    }
    let len: usize = source.shape.iter().product();
    if req.input.len() != len {
        return Err(fail(
            meta,
            ErrorKind::Shape,
            format!("input has {} elements, the service takes {len}", req.input.len()),
        ));
    }
    Ok(Envelope {
        meta,
        values: req.input,
        lineage: Vec::new(),
    })
}
