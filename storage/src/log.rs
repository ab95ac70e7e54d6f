//! Kafka-like partitioned, append-only logs with offsets and consumer positions.

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::Result;
use crate::store::{Batch, Cf, Store};

/// One partitioned log stored in a column family (`Cf::Source` or `Cf::Output`).
#[derive(Debug, Clone)]
pub struct Log {
    store: Arc<Store>,
    cf: Cf,
}

use crate::schema::{log_key as key, log_key_parts, log_meta_key as meta_key};

fn offset_of(key: &[u8]) -> u64 {
    log_key_parts(key).1
}

impl Log {
    /// The log kept in column family `cf` of `store`.
    pub fn new(store: Arc<Store>, cf: Cf) -> Self {
        Log { store, cf }
    }

    /// The store behind the log.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// First offset still held (earlier ones were garbage-collected).
    pub fn start_offset(&self, partition: u32) -> Result<u64> {
        Ok(self
            .store
            .get::<u64>(Cf::Meta, &meta_key("start", self.cf, partition, ""))?
            .unwrap_or(0))
    }

    /// The offset the next appended record gets.
    pub fn end_offset(&self, partition: u32) -> Result<u64> {
        let last = self.store.last_key(self.cf, &key(partition, 0), &key(partition, u64::MAX))?;
        let start = self.start_offset(partition)?;
        Ok(last.map_or(start, |k| (offset_of(&k) + 1).max(start)))
    }

    /// Stages a record at `offset` (the caller owns the partition's offset counter).
    pub fn append<T: Serialize>(&self, batch: &mut Batch, partition: u32, offset: u64, record: &T) {
        batch.put(&self.store, self.cf, &key(partition, offset), record);
    }

    /// Records from `from` on, at most `max`, in offset order.
    pub fn read<T: DeserializeOwned>(&self, partition: u32, from: u64, max: usize) -> Result<Vec<(u64, T)>> {
        Ok(self
            .store
            .scan(self.cf, &key(partition, from), &key(partition, u64::MAX), max)?
            .into_iter()
            .map(|(k, v)| (offset_of(&k), v))
            .collect())
    }

    /// Stages removal of the records in `[from, offset)`, where `from` is the
    /// current start offset, and makes `offset` the new start (garbage collection).
    ///
    /// Point deletes, one per record: RocksDB range tombstones issued this
    /// often would slow every later read of the log.
    pub fn truncate(&self, batch: &mut Batch, partition: u32, from: u64, offset: u64) {
        for o in from..offset {
            batch.delete(&self.store, self.cf, &key(partition, o));
        }
        batch.put(&self.store, Cf::Meta, &meta_key("start", self.cf, partition, ""), &offset);
    }

    /// Committed position of consumer `group`: every record before it is done.
    pub fn position(&self, group: &str, partition: u32) -> Result<u64> {
        Ok(self
            .store
            .get::<u64>(Cf::Meta, &meta_key("pos", self.cf, partition, group))?
            .unwrap_or(0))
    }

    /// Stages a new committed position for consumer `group`.
    pub fn set_position(&self, batch: &mut Batch, group: &str, partition: u32, offset: u64) {
        batch.put(&self.store, Cf::Meta, &meta_key("pos", self.cf, partition, group), &offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_positions_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = Log::new(store.clone(), Cf::Source);
        assert_eq!(log.end_offset(3).unwrap(), 0);
        let mut b = Batch::new();
        for o in 0..10u64 {
            log.append(&mut b, 3, o, &format!("r{o}"));
            log.append(&mut b, 4, o, &format!("other{o}"));
        }
        store.commit(b, true).unwrap();
        assert_eq!(log.end_offset(3).unwrap(), 10);
        let got: Vec<(u64, String)> = log.read(3, 7, 100).unwrap();
        assert_eq!(got, vec![(7, "r7".into()), (8, "r8".into()), (9, "r9".into())]);

        let mut b = Batch::new();
        log.set_position(&mut b, "sink", 3, 6);
        log.truncate(&mut b, 3, 0, 10);
        store.commit(b, true).unwrap();
        assert_eq!(log.position("sink", 3).unwrap(), 6);
        assert_eq!(log.position("sink", 4).unwrap(), 0);
        assert!(log.read::<String>(3, 0, 100).unwrap().is_empty());
        // Offsets never go back after the log was emptied by truncation.
        assert_eq!(log.end_offset(3).unwrap(), 10);
        assert_eq!(log.read::<String>(4, 0, 100).unwrap().len(), 10);
    }
}
