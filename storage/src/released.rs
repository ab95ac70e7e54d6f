//! The exactly-once ledger: which requests of a source partition have been released.
//!
//! Per partition it keeps a watermark (every offset below it released; stored
//! as the sink's consumer position in the source log) plus the released
//! offsets above it. Entries under the watermark are garbage-collected, so the
//! ledger stays small on an endless stream.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::Result;
use crate::log::Log;
use crate::store::{Batch, Cf, Store};

/// Consumer group name under which the sink commits source positions.
pub const SINK_GROUP: &str = "sink";

use crate::schema::log_key as key;

/// The released set of one source partition.
#[derive(Debug)]
pub struct Released {
    store: Arc<Store>,
    source: Log,
    partition: u32,
    watermark: u64,
    above: BTreeSet<u64>,
}

impl Released {
    /// Loads the ledger of `partition` from `store`.
    pub fn load(store: Arc<Store>, partition: u32) -> Result<Self> {
        let source = Log::new(store.clone(), Cf::Source);
        let watermark = source.position(SINK_GROUP, partition)?;
        let above = store
            .scan::<u64>(Cf::Released, &key(partition, watermark), &key(partition, u64::MAX), usize::MAX)?
            .into_iter()
            .map(|(k, _)| u64::from_be_bytes(k[4..12].try_into().expect("12-byte key")))
            .collect();
        Ok(Released {
            store,
            source,
            partition,
            watermark,
            above,
        })
    }

    /// Every offset below this has been released.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Released offsets at or above the watermark (bounded by the reorder window).
    pub fn pending_len(&self) -> usize {
        self.above.len()
    }

    /// Released offsets at or above the watermark, ascending.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.above.iter().copied()
    }

    /// True when the request at `offset` has been released.
    pub fn contains(&self, offset: u64) -> bool {
        offset < self.watermark || self.above.contains(&offset)
    }

    /// Stages the release of `(offset, seq)` pairs into `batch`, together with
    /// the advanced watermark (the consumer position) and the garbage
    /// collection of ledger entries under it, so one commit does all. Call
    /// [`Released::apply`] with the result once the batch is durable.
    pub fn stage(&self, batch: &mut Batch, released: &[(u64, hams_protocol::Seq)]) -> Staged {
        let mut offsets = Vec::with_capacity(released.len());
        for &(offset, seq) in released {
            if !self.contains(offset) {
                batch.put(&self.store, Cf::Released, &key(self.partition, offset), &seq.0);
                offsets.push(offset);
            }
        }
        let mut watermark = self.watermark;
        let mut probe: BTreeSet<u64> = offsets.iter().copied().collect();
        loop {
            if self.above.contains(&watermark) || probe.remove(&watermark) {
                watermark += 1;
            } else {
                break;
            }
        }
        if watermark > self.watermark {
            self.source.set_position(batch, SINK_GROUP, self.partition, watermark);
            // Every offset in [old, new) has a ledger entry (it was released); drop them.
            for o in self.watermark..watermark {
                batch.delete(&self.store, Cf::Released, &key(self.partition, o));
            }
        }
        Staged { offsets, watermark }
    }

    /// Records in memory what [`Released::stage`] made durable.
    pub fn apply(&mut self, staged: Staged) {
        self.above.extend(staged.offsets);
        self.watermark = self.watermark.max(staged.watermark);
        let w = self.watermark;
        self.above.retain(|o| *o >= w);
    }
}

/// The exactly-once evidence of `partition` in `store`: the accepted
/// positions (the source log's end), the ledger, and the output records
/// still stored (the checker's input for I1).
pub fn evidence(store: &Arc<Store>, partition: u32) -> Result<(hams_protocol::invariants::Partition, Vec<crate::OutputRecord>)> {
    let released = Released::load(store.clone(), partition)?;
    let accepted = Log::new(store.clone(), Cf::Source).end_offset(partition)?;
    let outputs = Log::new(store.clone(), Cf::Output)
        .read::<crate::OutputRecord>(partition, 0, usize::MAX)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let part = hams_protocol::invariants::Partition {
        accepted,
        watermark: released.watermark(),
        above: released.pending().collect(),
    };
    Ok((part, outputs))
}

/// Where this run's part of `partition`'s source log begins: offsets below
/// were accepted by earlier runs on the same store.
pub fn run_start(store: &Store, partition: u32) -> Result<u64> {
    Ok(store.get::<u64>(Cf::Meta, &crate::schema::feed_start_key(partition))?.unwrap_or(0))
}

/// Releases staged in a batch, to [`Released::apply`] after its commit.
#[derive(Debug)]
#[must_use]
pub struct Staged {
    offsets: Vec<u64>,
    watermark: u64,
}

impl Staged {
    /// The watermark once the batch is applied.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_advances_only_over_contiguous_releases_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = Released::load(store.clone(), 1).unwrap();
        for batch_offsets in [vec![0u64, 2], vec![1, 5]] {
            let mut b = Batch::new();
            let pairs: Vec<(u64, hams_protocol::Seq)> = batch_offsets.iter().map(|o| (*o, hams_protocol::Seq(o * 10))).collect();
            let staged = r.stage(&mut b, &pairs);
            store.commit(b, true).unwrap();
            r.apply(staged);
        }
        assert_eq!(r.watermark(), 3);
        assert!(r.contains(1) && r.contains(5) && !r.contains(3) && !r.contains(4));
        drop(r);
        let r = Released::load(store.clone(), 1).unwrap();
        assert_eq!(r.watermark(), 3);
        assert!(r.contains(5) && !r.contains(4));
        assert_eq!(r.pending_len(), 1);
        assert!(!Released::load(store, 2).unwrap().contains(0));
    }
}
