//! `Release`: the sink. Writes each request's result (or typed error) to the
//! output topic exactly once and records it in the released ledger, in one
//! RocksDB batch per activation.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use hams_storage::{Batch, Cf, Log, OutputRecord, Released, Store, Values};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::control::{committed, Cut};
use super::{now_us, Envelope, Epoch, Failure};
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
    /// Results discarded because they depended on an orphan (never released).
    pub orphans: u64,
    /// First release that depended on each `(model, incarnation > 0)`, µs since the Unix epoch.
    pub first_release: Vec<(u16, u32, u64)>,
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
    /// The partition's released ledger (shared with ingestion, which replays what is not in it).
    pub released: Rc<RefCell<Released>>,
    /// Output records kept per partition (older ones are garbage-collected).
    pub retain_outputs: u64,
    /// Output records from this offset on are never garbage-collected (a
    /// publisher has not shipped them yet); `u64::MAX` when there is none.
    pub keep_from: Arc<std::sync::atomic::AtomicU64>,
}

/// Advance of a partition's released watermark (every offset below is released).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Source partition.
    pub partition: u32,
    /// Offsets below this are released.
    pub offset: u64,
}

/// The streams of a sink.
pub struct SinkStreams<'scope> {
    /// Statistics for worker 0.
    pub stats: Stream<'scope, Epoch, Vec<SinkStats>>,
    /// Released watermarks, for garbage collection everywhere.
    pub watermarks: Stream<'scope, Epoch, Vec<Watermark>>,
}

/// Releases results at their home worker.
pub trait Release<'scope> {
    /// Releases `self` (results) and `failures` (typed errors) exactly once per
    /// `seq`, durably, once every stateful execution in their lineage is held
    /// by a backup: the frontier of that model's stream in `durable` has passed
    /// its epoch (I2). Results depending on an orphan (a cut incarnation's
    /// execution past its cut) are discarded; their requests are replayed.
    fn release(
        self,
        failures: Stream<'scope, Epoch, Vec<Failure>>,
        durable: Vec<(u16, Stream<'scope, Epoch, Vec<Cut>>)>,
        config: SinkConfig,
    ) -> Result<SinkStreams<'scope>>;
}

/// Durable state of one sink.
struct Ledger {
    store: Arc<Store>,
    partition: u32,
    sync: bool,
    released: Rc<RefCell<Released>>,
    source: Log,
    output: Log,
    next_out: u64,
    /// First output offset still stored.
    out_first: u64,
    retain_outputs: u64,
    keep_from: Arc<std::sync::atomic::AtomicU64>,
    /// This run's output records removed by retention (each a distinct release).
    gced_outputs: u64,
    src_start: u64,
    out_start: u64,
    released_before: BTreeSet<u64>,
}

impl Ledger {
    fn open(config: &SinkConfig) -> Result<Self> {
        let released = config.released.clone();
        let released_ref = released.borrow();
        let output = Log::new(config.store.clone(), Cf::Output);
        let next_out = output.end_offset(config.partition)?;
        let out_first = output.start_offset(config.partition)?;
        let src_start = released_ref.watermark();
        let released_before = released_ref.pending().collect();
        drop(released_ref);
        Ok(Ledger {
            store: config.store.clone(),
            partition: config.partition,
            sync: config.sync,
            released,
            source: Log::new(config.store.clone(), Cf::Source),
            output,
            next_out,
            out_first,
            retain_outputs: config.retain_outputs.max(1),
            keep_from: config.keep_from.clone(),
            gced_outputs: 0,
            src_start,
            out_start: next_out,
            released_before,
        })
    }

    /// Makes `records` durable, skipping released ones, and counts them in `stats`.
    /// Returns the new watermark if it advanced.
    fn commit(&mut self, records: Vec<(u64, OutputRecord)>, stats: &mut SinkStats) -> Result<Option<u64>> {
        let mut batch = Batch::new();
        let mut fresh = Vec::with_capacity(records.len());
        let mut seen = BTreeSet::new();
        let now = now_us();
        let mut released = self.released.borrow_mut();
        for (offset, mut rec) in records {
            if released.contains(offset) || !seen.insert(offset) {
                stats.suppressed += 1;
                continue;
            }
            rec.release_us = now;
            self.output
                .append(&mut batch, self.partition, self.next_out + fresh.len() as u64, &rec);
            fresh.push((offset, rec));
        }
        let pairs: Vec<(u64, u64)> = fresh.iter().map(|(o, r)| (*o, r.seq)).collect();
        let staged = released.stage(&mut batch, &pairs);
        // Garbage collection in the same batch: requests below the watermark will
        // never be replayed; the output topic keeps the newest `retain_outputs`.
        if staged.watermark() > released.watermark() {
            self.source
                .truncate(&mut batch, self.partition, released.watermark(), staged.watermark());
        }
        let end = self.next_out + fresh.len() as u64;
        let floor = self.keep_from.load(std::sync::atomic::Ordering::SeqCst);
        let first = end.saturating_sub(self.retain_outputs).min(floor).max(self.out_first);
        if first > self.out_first {
            self.output.truncate(&mut batch, self.partition, self.out_first, first);
        }
        self.store.commit(batch, self.sync)?;
        self.gced_outputs += first.saturating_sub(self.out_first.max(self.out_start));
        self.out_first = first;
        let before = released.watermark();
        released.apply(staged);
        self.next_out += fresh.len() as u64;
        for (_, rec) in fresh {
            crate::metrics::metrics().released(now.saturating_sub(rec.ingest_us), rec.outcome.is_err());
            stats.released += 1;
            stats.errors += rec.outcome.is_err() as u64;
            stats
                .latencies_us
                .push(now.saturating_sub(rec.ingest_us).min(u32::MAX as u64) as u32);
        }
        Ok((released.watermark() > before).then(|| released.watermark()))
    }

    /// Counts, from the durable output topic, what this run answered.
    fn audit(&self) -> Result<Audit> {
        let src_end = Log::new(self.store.clone(), Cf::Source).end_offset(self.partition)?;
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let mut from = self.out_start.max(self.out_first);
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
        let mut released = self.released_before.iter().filter(|o| range.contains(o)).count() as u64 + self.gced_outputs;
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

/// A result waiting for its lineage to be held by backups.
struct Held {
    /// Capabilities for the stats (0) and watermark (1) outputs.
    cap: (Capability<Epoch>, Capability<Epoch>),
    offset: u64,
    record: OutputRecord,
}

impl<'scope> Release<'scope> for Stream<'scope, Epoch, Vec<Envelope>> {
    fn release(
        self,
        failures: Stream<'scope, Epoch, Vec<Failure>>,
        durable: Vec<(u16, Stream<'scope, Epoch, Vec<Cut>>)>,
        config: SinkConfig,
    ) -> Result<SinkStreams<'scope>> {
        let mut ledger = Ledger::open(&config)?;
        let mut builder = OperatorBuilder::new("Release".to_string(), self.scope());
        let mut ok_in = builder.new_input(self, Exchange::new(|e: &Envelope| e.meta.home as u64));
        let mut err_in = builder.new_input(failures, Exchange::new(|f: &Failure| f.meta.home as u64));
        let models: Vec<u16> = durable.iter().map(|(m, _)| *m).collect();
        let mut durable_in: Vec<_> = durable
            .into_iter()
            .map(|(_, s)| builder.new_input(s.broadcast(), Pipeline))
            .collect();
        let (out, stats) = builder.new_output::<Vec<SinkStats>>();
        let (wm_out, watermarks) = builder.new_output::<Vec<Watermark>>();
        let mut out = OutputBuilder::from(out);
        let mut wm_out = OutputBuilder::from(wm_out);
        builder.build(move |mut initial| {
            initial.pop();
            let mut final_cap: Option<Capability<Epoch>> = initial.pop();
            let mut held: Vec<Held> = Vec::new();
            let mut cuts: BTreeMap<u16, BTreeMap<u32, Epoch>> = BTreeMap::new();
            let mut first_seen: BTreeSet<(u16, u32)> = BTreeSet::new();
            move |frontiers| {
                let mut out = out.activate();
                let mut wm_out = wm_out.activate();
                ok_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    for e in data.flat_map(|d| d.drain(..)) {
                        let record = OutputRecord {
                            seq: e.meta.seq,
                            offset: e.meta.offset,
                            session: e.meta.session,
                            epoch,
                            ingest_us: e.meta.ingest_us,
                            release_us: 0,
                            outcome: Ok::<Values, _>(e.values),
                            lineage: e.lineage,
                        };
                        held.push(Held {
                            cap: (cap.delayed(&epoch, 0), cap.delayed(&epoch, 1)),
                            offset: e.meta.offset,
                            record,
                        });
                    }
                });
                err_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    for f in data.flat_map(|d| d.drain(..)) {
                        let record = OutputRecord {
                            seq: f.meta.seq,
                            offset: f.meta.offset,
                            session: f.meta.session,
                            epoch,
                            ingest_us: f.meta.ingest_us,
                            release_us: 0,
                            outcome: Err(f.error),
                            lineage: f.lineage,
                        };
                        held.push(Held {
                            cap: (cap.delayed(&epoch, 0), cap.delayed(&epoch, 1)),
                            offset: f.meta.offset,
                            record,
                        });
                    }
                });
                for input in durable_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            cuts.entry(c.model).or_default().insert(c.inc, c.epoch);
                        }
                    });
                }
                let mut stats = SinkStats {
                    worker: ledger.partition,
                    ..SinkStats::default()
                };
                if !held.is_empty() {
                    tracing::trace!(partition = ledger.partition, held = held.len(), durable = ?frontiers[2..].iter().map(|f| f.frontier().to_owned()).collect::<Vec<_>>(), "sink holding");
                    // Decide each held result: release, discard (orphan), or keep waiting.
                    let empty = BTreeMap::new();
                    let verdict = |r: &OutputRecord| -> Option<bool> {
                        let mut all = true;
                        for t in &r.lineage {
                            let Some(i) = models.iter().position(|m| *m == t.model) else { continue };
                            let f = frontiers[2 + i].frontier();
                            match committed(cuts.get(&t.model).unwrap_or(&empty), |e| !f.less_equal(&e), t.incarnation, t.epoch) {
                                Some(true) => {}
                                Some(false) => return Some(false),
                                None => all = false,
                            }
                        }
                        all.then_some(true)
                    };
                    let mut ready = Vec::new();
                    let mut cap: Option<(Capability<Epoch>, Capability<Epoch>)> = None;
                    held.retain(|h| match verdict(&h.record) {
                        Some(true) => {
                            if cap.as_ref().is_none_or(|c| h.cap.0.time() < c.0.time()) {
                                cap = Some(h.cap.clone());
                            }
                            ready.push((h.offset, h.record.clone()));
                            false
                        }
                        Some(false) => {
                            stats.orphans += 1;
                            false
                        }
                        None => true,
                    });
                    if let Some(cap) = cap {
                        for (_, r) in &ready {
                            for t in &r.lineage {
                                if t.incarnation > 0 && first_seen.insert((t.model, t.incarnation)) {
                                    stats.first_release.push((t.model, t.incarnation, now_us()));
                                    crate::metrics::metrics().phase_latest(crate::metrics::Phase::CaughtUp, now_us());
                                }
                            }
                        }
                        match ledger.commit(ready.clone(), &mut stats) {
                            Ok(wm) => {
                                if let Some(offset) = wm {
                                    wm_out.session(&cap.1).give(Watermark {
                                        partition: ledger.partition,
                                        offset,
                                    });
                                }
                                out.session(&cap.0).give(std::mem::take(&mut stats));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "sink commit failed; results held for retry");
                                for (offset, record) in ready {
                                    held.push(Held {
                                        cap: cap.clone(),
                                        offset,
                                        record,
                                    });
                                }
                            }
                        }
                    }
                }
                crate::metrics::metrics().orphans(stats.orphans);
                if stats.orphans > 0 {
                    if let Some(c) = final_cap.as_ref() {
                        out.session(c).give(stats);
                    }
                }
                // Keep the audit capability just behind the inputs; spend it when they end.
                let least = frontiers[..2].iter().filter_map(|f| f.frontier().iter().min().copied()).min();
                match (least, final_cap.as_mut()) {
                    (Some(t), Some(cap)) if *cap.time() < t => cap.downgrade(&t),
                    (None, Some(_)) if held.is_empty() => {
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
        Ok(SinkStreams { stats, watermarks })
    }
}
