//! The durable schema in one place: what each column family holds, under
//! which key, as which record type. The record types are the protocol's
//! (`hams_protocol::records`); every value is stored in a checksummed,
//! versioned envelope ([`crate::codec`]).
//!
//! | column family | key | value |
//! |---|---|---|
//! | `source` | [`log_key`] (partition, offset) | [`SourceRecord`] |
//! | `output` | [`log_key`] (partition, offset) | [`OutputRecord`] |
//! | `released` | [`log_key`] (partition, offset) | `seq` (`u64`), released offsets above the watermark |
//! | `state` | [`model_key`] (model, session) | [`SessionState`], a backup's session states |
//! | `lineage` | [`model_key`] (model, seq) | [`Execution`], committed executions (what a restart replays from; the checker reads their [`LineageRecord`]) |
//! | `meta` | [`FORMAT_KEY`] | the format string |
//! | `meta` | [`log_meta_key`] `start`/`pos` | first offset kept / a consumer's position (`u64`) |
//! | `meta` | [`horizon_key`] (model) | lineage below this `seq` was garbage-collected (`u64`) |
//! | `meta` | [`backup_key`] (model) | incarnation whose backup the `state` rows belong to ([`Incarnation`]) |
//! | `meta` | [`SHAPE_KEY`] | the graph's shape ([`GraphShape`]) |
//! | `meta` | [`PARTITIONS_KEY`] | the source partitions this store is home of (`Vec<u32>`) |
//! | `meta` | [`COMMIT_KEY`] | number of the last commit mirrored to the successor (`u64`) |
//! | `meta` | [`RUN_KEY`] | id of the supervised run that last wrote here (`String`) |
//! | `meta` | [`feed_start_key`] (partition) | the partition's log end when that run began (`u64`) |
//! | `meta` | [`request_id_key`] (client id) | where a served request was logged: `(partition, offset)` |
//! | `meta` | [`answer_key`] (partition, offset) | where its result is in the output topic (`u64`), for retries |

pub use hams_protocol::records::{Execution, GraphShape, LineageRecord, OutputRecord, SessionState, SourceRecord};
pub use hams_protocol::{Incarnation, ModelId, Seq, SessionId};

use crate::store::Cf;

/// Meta key of a served request's client id (the exactly-once key of retries).
pub fn request_id_key(id: &str) -> Vec<u8> {
    format!("serve/id/{id}").into_bytes()
}

/// Meta key of the output-topic offset holding the result of source `(partition, offset)`.
pub fn answer_key(partition: u32, offset: u64) -> Vec<u8> {
    let mut k = b"serve/answer/".to_vec();
    k.extend_from_slice(&log_key(partition, offset));
    k
}

/// Meta key of the format record.
pub const FORMAT_KEY: &[u8] = b"format";

/// Meta key under which a run records its graph's shape.
pub const SHAPE_KEY: &[u8] = b"graph/shape";

/// Meta key of the source partitions a process's store is home of.
pub const PARTITIONS_KEY: &[u8] = b"graph/partitions";

/// Meta key of the number of the last commit mirrored (see [`crate::mirror`]).
pub const COMMIT_KEY: &[u8] = b"mirror/commit";

/// Meta key of the id of the supervised run that last wrote here: a restart
/// of that run continues its feed; another run starts a new one.
pub const RUN_KEY: &[u8] = b"run/id";

/// Meta key of a partition's log end when the current run began.
pub fn feed_start_key(partition: u32) -> Vec<u8> {
    format!("run/feed_start/{partition}").into_bytes()
}

/// Key of a record in a partitioned log or the released ledger.
pub fn log_key(partition: u32, offset: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// The (partition, offset) of a [`log_key`].
///
/// # Panics
/// If `key` is shorter than 12 bytes (keys come only from [`log_key`]).
pub fn log_key_parts(key: &[u8]) -> (u32, u64) {
    (
        u32::from_be_bytes(key[..4].try_into().expect("log keys are 12 bytes")),
        u64::from_be_bytes(key[4..12].try_into().expect("log keys are 12 bytes")),
    )
}

/// Key of a model's record about a session (`state`) or a request (`lineage`).
pub fn model_key(model: ModelId, id: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&model.0.to_be_bytes());
    k[2..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The (model, id) of a [`model_key`], or `None` for a key of another length.
pub fn model_key_parts(key: &[u8]) -> Option<(ModelId, u64)> {
    let key: &[u8; 10] = key.try_into().ok()?;
    Some((
        ModelId(u16::from_be_bytes([key[0], key[1]])),
        u64::from_be_bytes(key[2..].try_into().expect("8 bytes")),
    ))
}

/// Meta key of a log's start offset (`start`) or a consumer group's position (`pos`).
pub fn log_meta_key(kind: &str, cf: Cf, partition: u32, group: &str) -> Vec<u8> {
    format!("{kind}/{}/{partition}/{group}", cf.name()).into_bytes()
}

/// Meta key of the `seq` below which `model`'s lineage records were garbage-collected.
pub fn horizon_key(model: ModelId) -> Vec<u8> {
    format!("lineage/horizon/{}", model.0).into_bytes()
}

/// Meta key of the incarnation whose backup wrote `model`'s `state` rows in this store.
pub fn backup_key(model: ModelId) -> Vec<u8> {
    let mut k = backup_key_prefix();
    k.extend_from_slice(model.0.to_string().as_bytes());
    k
}

/// What every [`backup_key`] begins with.
pub fn backup_key_prefix() -> Vec<u8> {
    b"backup/".to_vec()
}
