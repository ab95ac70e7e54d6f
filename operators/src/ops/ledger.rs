//! The sink's durable side: the output topic and the released ledger of
//! one partition, written in one RocksDB batch per release round, with the
//! garbage collection the released watermark allows.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hams_protocol::invariants::Partition;
use hams_storage::{Batch, Cf, Log, OutputRecord, Released, Store};

use super::now_us;
use crate::error::Result;

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
    pub keep_from: Arc<AtomicU64>,
    /// Per model: executions below this incarnation came from a restart's disk images (committed).
    pub floors: Vec<(hams_protocol::ModelId, hams_protocol::Incarnation)>,
}

/// Durable state of one sink.
pub struct Ledger {
    store: Arc<Store>,
    /// The partition.
    pub partition: u32,
    sync: bool,
    released: Rc<RefCell<Released>>,
    source: Log,
    output: Log,
    next_out: u64,
    /// First output offset still stored.
    out_first: u64,
    retain_outputs: u64,
    keep_from: Arc<AtomicU64>,
}

/// What one commit made durable.
#[derive(Debug, Default)]
pub struct Committed {
    /// Release time of the records.
    pub at_us: u64,
    /// Records released now (offset order of arrival), each once.
    pub records: Vec<OutputRecord>,
    /// Records not released again (their offset was released before).
    pub suppressed: u64,
    /// The partition's released watermark, if it advanced.
    pub watermark: Option<u64>,
}

impl Ledger {
    /// Opens the ledger of `config.partition`.
    pub fn open(config: &SinkConfig) -> Result<Self> {
        let output = Log::new(config.store.clone(), Cf::Output);
        let next_out = output.end_offset(config.partition)?;
        let out_first = output.start_offset(config.partition)?;
        Ok(Ledger {
            store: config.store.clone(),
            partition: config.partition,
            sync: config.sync,
            released: config.released.clone(),
            source: Log::new(config.store.clone(), Cf::Source),
            output,
            next_out,
            out_first,
            retain_outputs: config.retain_outputs.max(1),
            keep_from: config.keep_from.clone(),
        })
    }

    /// Makes `records` durable as released, each offset at most once ever.
    pub fn commit(&mut self, records: Vec<(u64, OutputRecord)>) -> Result<Committed> {
        let mut batch = Batch::new();
        let mut fresh: Vec<(u64, OutputRecord)> = Vec::with_capacity(records.len());
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        let mut suppressed = 0;
        let now = now_us();
        let mut released = self.released.borrow_mut();
        for (offset, mut rec) in records {
            if released.contains(offset) || !seen.insert(offset) {
                suppressed += 1;
                continue;
            }
            rec.release_us = now;
            let at = self.next_out + fresh.len() as u64;
            self.output.append(&mut batch, self.partition, at, &rec);
            if super::answers::serving() {
                // A client retrying this request later reads its answer from there.
                hams_storage::served::answered(&mut batch, &self.store, self.partition, offset, at);
            }
            fresh.push((offset, rec));
        }
        let pairs: Vec<(u64, hams_protocol::Seq)> = fresh.iter().map(|(o, r)| (*o, r.seq)).collect();
        let staged = released.stage(&mut batch, &pairs);
        // Garbage collection in the same batch: requests below the watermark will
        // never be replayed; the output topic keeps the newest `retain_outputs`.
        if staged.watermark() > released.watermark() {
            self.source
                .truncate(&mut batch, self.partition, released.watermark(), staged.watermark());
        }
        let end = self.next_out + fresh.len() as u64;
        let floor = self.keep_from.load(Ordering::SeqCst);
        let first = end.saturating_sub(self.retain_outputs).min(floor).max(self.out_first);
        if first > self.out_first {
            if super::answers::serving() {
                // The answers leaving the topic take their clients' ids with them.
                for (_, rec) in self
                    .output
                    .read::<OutputRecord>(self.partition, self.out_first, (first - self.out_first) as usize)?
                {
                    hams_storage::served::forget(&mut batch, &self.store, self.partition, rec.offset)?;
                }
            }
            self.output.truncate(&mut batch, self.partition, self.out_first, first);
        }
        self.store.commit(batch, self.sync)?;
        self.out_first = first;
        let before = released.watermark();
        released.apply(staged);
        self.next_out = end;
        Ok(Committed {
            at_us: now,
            records: fresh.into_iter().map(|(_, r)| r).collect(),
            suppressed,
            watermark: (released.watermark() > before).then(|| released.watermark()),
        })
    }

    /// This partition's evidence for the exactly-once check: accepted
    /// positions, the ledger, and the output records still stored.
    pub fn evidence(&self) -> Result<(Partition, Vec<OutputRecord>)> {
        Ok(hams_storage::released::evidence(&self.store, self.partition)?)
    }

    /// Where this run's part of the partition's source log begins.
    pub fn run_start(&self) -> Result<u64> {
        Ok(hams_storage::released::run_start(&self.store, self.partition)?)
    }
}
