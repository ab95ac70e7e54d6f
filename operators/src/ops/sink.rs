//! `Release`: the sink. Writes each request's result (or typed error) to the
//! output topic exactly once and records it in the released ledger, in one
//! RocksDB batch per activation.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use hams_storage::{Batch, Cf, Log, OutputRecord, Released, Store, Values};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::{Envelope, Epoch, Failure};
use crate::error::Result;

/// Counts a sink reports as it releases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkStats {
    /// Worker of the sink.
    pub worker: u32,
    /// Results released (including typed errors).
    pub released: u64,
    /// Of those, typed errors.
    pub errors: u64,
    /// Second copies of a `seq` that were not released again.
    pub suppressed: u64,
    /// End-to-end latency of each release, µs.
    pub latencies_us: Vec<u32>,
    /// Final audit, sent once when the stream ends.
    pub audit: Option<Audit>,
}

/// What the durable logs say at the end of a run, for one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// Requests in the source log that this run had to answer.
    pub accepted: u64,
    /// Distinct requests answered in the output topic.
    pub released: u64,
    /// Accepted requests with no answer.
    pub lost: u64,
    /// Answers beyond the first for a request.
    pub duplicated: u64,
}

/// Where a sink writes.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// This worker's store.
    pub store: Arc<Store>,
    /// Source/output partition this worker is home of.
    pub partition: u32,
    /// Wait for each batch to reach the disk before releasing.
    pub sync: bool,
}

/// Releases results at their home worker.
pub trait Release<'scope> {
    /// Releases `self` (results) and `failures` (typed errors) exactly once per
    /// `seq`, durably; returns per-batch statistics.
    fn release(self, failures: Stream<'scope, Epoch, Vec<Failure>>, config: SinkConfig) -> Result<Stream<'scope, Epoch, Vec<SinkStats>>>;
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A result offered to the sink, with its source offset.
type Offered = (u64, OutputRecord);

/// Durable state of one sink.
struct Ledger {
    store: Arc<Store>,
    partition: u32,
    sync: bool,
    released: Released,
    output: Log,
    next_out: u64,
    src_start: u64,
    out_start: u64,
    released_before: BTreeSet<u64>,
}

impl Ledger {
    fn open(config: &SinkConfig) -> Result<Self> {
        let released = Released::load(config.store.clone(), config.partition)?;
        let output = Log::new(config.store.clone(), Cf::Output);
        let next_out = output.end_offset(config.partition)?;
        let src_start = released.watermark();
        let released_before = released.pending().collect();
        Ok(Ledger {
            store: config.store.clone(),
            partition: config.partition,
            sync: config.sync,
            released,
            output,
            next_out,
            src_start,
            out_start: next_out,
            released_before,
        })
    }

    /// Makes `records` durable, skipping released ones, and counts them in `stats`.
    fn commit(&mut self, records: Vec<(u64, OutputRecord)>, stats: &mut SinkStats) -> Result<()> {
        let mut batch = Batch::new();
        let mut fresh = Vec::with_capacity(records.len());
        let mut seen = BTreeSet::new();
        let now = now_us();
        for (offset, mut rec) in records {
            if self.released.contains(offset) || !seen.insert(offset) {
                stats.suppressed += 1;
                continue;
            }
            rec.release_us = now;
            self.output
                .append(&mut batch, self.partition, self.next_out + fresh.len() as u64, &rec);
            fresh.push((offset, rec));
        }
        let pairs: Vec<(u64, u64)> = fresh.iter().map(|(o, r)| (*o, r.seq)).collect();
        let staged = self.released.stage(&mut batch, &pairs);
        self.store.commit(batch, self.sync)?;
        self.released.apply(staged);
        self.next_out += fresh.len() as u64;
        for (_, rec) in fresh {
            stats.released += 1;
            stats.errors += rec.outcome.is_err() as u64;
            stats
                .latencies_us
                .push(now.saturating_sub(rec.ingest_us).min(u32::MAX as u64) as u32);
        }
        Ok(())
    }

    /// Counts, from the durable output topic, what this run answered.
    fn audit(&self) -> Result<Audit> {
        let src_end = Log::new(self.store.clone(), Cf::Source).end_offset(self.partition)?;
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut from = self.out_start;
        loop {
            let chunk: Vec<(u64, OutputRecord)> = self.output.read(self.partition, from, 4096)?;
            let Some(last) = chunk.last().map(|(o, _)| *o) else { break };
            for (_, rec) in chunk {
                *counts.entry(rec.offset).or_default() += 1;
            }
            from = last + 1;
        }
        let range = self.src_start..src_end;
        let mut duplicated = 0;
        let mut released = self.released_before.iter().filter(|o| range.contains(o)).count() as u64;
        for (offset, n) in &counts {
            let earlier = *offset < self.src_start || self.released_before.contains(offset);
            duplicated += n - 1 + earlier as u64;
            released += (!earlier && range.contains(offset)) as u64;
        }
        let accepted = src_end.saturating_sub(self.src_start);
        Ok(Audit {
            accepted,
            released,
            lost: accepted.saturating_sub(released),
            duplicated,
        })
    }
}

impl<'scope> Release<'scope> for Stream<'scope, Epoch, Vec<Envelope>> {
    fn release(self, failures: Stream<'scope, Epoch, Vec<Failure>>, config: SinkConfig) -> Result<Stream<'scope, Epoch, Vec<SinkStats>>> {
        let mut ledger = Ledger::open(&config)?;
        let mut builder = OperatorBuilder::new("Release".to_string(), self.scope());
        let mut ok_in = builder.new_input(self, Exchange::new(|e: &Envelope| e.meta.home as u64));
        let mut err_in = builder.new_input(failures, Exchange::new(|f: &Failure| f.meta.home as u64));
        let (out, stream) = builder.new_output::<Vec<SinkStats>>();
        let mut out = OutputBuilder::from(out);
        builder.build(move |mut initial| {
            let mut final_cap: Option<Capability<Epoch>> = initial.pop();
            // Records whose commit failed wait here for the next attempt.
            let mut waiting: Vec<(Capability<Epoch>, Vec<Offered>)> = Vec::new();
            move |frontiers| {
                let mut out = out.activate();
                ok_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    let recs = data
                        .flat_map(|d| d.drain(..))
                        .map(|e| {
                            let rec = OutputRecord {
                                seq: e.meta.seq,
                                offset: e.meta.offset,
                                session: e.meta.session,
                                epoch,
                                ingest_us: e.meta.ingest_us,
                                release_us: 0,
                                outcome: Ok::<Values, _>(e.values),
                                lineage: e.lineage,
                            };
                            (e.meta.offset, rec)
                        })
                        .collect();
                    waiting.push((cap.delayed(&epoch, 0), recs));
                });
                err_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    let recs = data
                        .flat_map(|d| d.drain(..))
                        .map(|f| {
                            let rec = OutputRecord {
                                seq: f.meta.seq,
                                offset: f.meta.offset,
                                session: f.meta.session,
                                epoch,
                                ingest_us: f.meta.ingest_us,
                                release_us: 0,
                                outcome: Err(f.error),
                                lineage: Vec::new(),
                            };
                            (f.meta.offset, rec)
                        })
                        .collect();
                    waiting.push((cap.delayed(&epoch, 0), recs));
                });
                if !waiting.is_empty() {
                    let cap = waiting.iter().map(|(c, _)| c).min_by_key(|c| *c.time()).expect("non-empty").clone();
                    let records: Vec<_> = waiting.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
                    let mut stats = SinkStats {
                        worker: ledger.partition,
                        ..SinkStats::default()
                    };
                    match ledger.commit(records, &mut stats) {
                        Ok(()) => {
                            waiting.clear();
                            out.session(&cap).give(stats);
                        }
                        Err(e) => tracing::error!(error = %e, "sink commit failed; results held for retry"),
                    }
                }
                // Keep the audit capability just behind the inputs; spend it when they end.
                let least = frontiers.iter().filter_map(|f| f.frontier().iter().min().copied()).min();
                match (least, final_cap.as_mut()) {
                    (Some(t), Some(cap)) if *cap.time() < t => cap.downgrade(&t),
                    (None, Some(_)) if waiting.is_empty() => {
                        let cap = final_cap.take().expect("matched");
                        match ledger.audit() {
                            Ok(audit) => out.session(&cap).give(SinkStats {
                                worker: ledger.partition,
                                audit: Some(audit),
                                ..SinkStats::default()
                            }),
                            Err(e) => tracing::error!(error = %e, "audit failed"),
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(stream)
    }
}
