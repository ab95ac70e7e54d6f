//! The keys that make served requests idempotent: a client's id names where
//! its request was logged, and that position names where its answer is in
//! the output topic. Both go when the output topic lets the answer go
//! (`--retain-outputs`), so a server that runs for months keeps a bounded
//! window of ids instead of every id it ever saw.

use crate::error::Result;
use crate::schema::{answer_key, log_key, request_id_key};
use crate::store::{Batch, Cf, Store};

/// Meta key of the client id of the request logged at `(partition, offset)`.
fn id_at_key(partition: u32, offset: u64) -> Vec<u8> {
    let mut k = b"serve/at/".to_vec();
    k.extend_from_slice(&log_key(partition, offset));
    k
}

/// Records, in the batch that logs it, that request `id` is at `(partition, offset)`.
pub fn log_id(batch: &mut Batch, store: &Store, id: &str, partition: u32, offset: u64) {
    batch.put(store, Cf::Meta, &request_id_key(id), &(partition, offset));
    batch.put(store, Cf::Meta, &id_at_key(partition, offset), &id.to_string());
}

/// Where request `id` was logged, if it still is known.
pub fn logged_at(store: &Store, id: &str) -> Result<Option<(u32, u64)>> {
    store.get(Cf::Meta, &request_id_key(id))
}

/// Records, in the batch that releases it, where the answer to `(partition, offset)` is.
pub fn answered(batch: &mut Batch, store: &Store, partition: u32, offset: u64, output_at: u64) {
    batch.put(store, Cf::Meta, &answer_key(partition, offset), &output_at);
}

/// Where the answer to `(partition, offset)` is in the output topic, if released.
pub fn answer_at(store: &Store, partition: u32, offset: u64) -> Result<Option<u64>> {
    store.get(Cf::Meta, &answer_key(partition, offset))
}

/// Forgets the request at `(partition, offset)`, whose answer leaves the
/// output topic in `batch`: a later retry with its id is a new request.
pub fn forget(batch: &mut Batch, store: &Store, partition: u32, offset: u64) -> Result<()> {
    batch.delete(store, Cf::Meta, &answer_key(partition, offset));
    let at = id_at_key(partition, offset);
    if let Some(id) = store.get::<String>(Cf::Meta, &at)? {
        batch.delete(store, Cf::Meta, &request_id_key(&id));
        batch.delete(store, Cf::Meta, &at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_known_until_its_answer_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Batch::new();
        log_id(&mut b, &store, "client-1", 2, 40);
        answered(&mut b, &store, 2, 40, 7);
        store.commit(b, false).unwrap();
        assert_eq!(logged_at(&store, "client-1").unwrap(), Some((2, 40)));
        assert_eq!(answer_at(&store, 2, 40).unwrap(), Some(7));
        let mut b = Batch::new();
        forget(&mut b, &store, 2, 40).unwrap();
        store.commit(b, false).unwrap();
        assert_eq!(logged_at(&store, "client-1").unwrap(), None);
        assert_eq!(answer_at(&store, 2, 40).unwrap(), None);
        // A request logged without an id: forgetting it touches nothing else.
        let mut b = Batch::new();
        forget(&mut b, &store, 2, 41).unwrap();
        store.commit(b, false).unwrap();
    }
}
