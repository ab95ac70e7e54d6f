//! Durable lineage for hams on RocksDB: the Kafka-like request and
//! output logs, the set of released `seq`s, and (for fault tolerance) state
//! snapshots and lineage. Knows nothing of timely.
//!
//! # Layout
//! - [`layout`]: the data directory and its per-process databases.
//! - [`store`]: the database, its column families and atomic batches.
//! - [`log`]: partitioned append-only logs with offsets and consumer positions.
//! - [`mirror`]: every commit also on the next process, so a lost disk loses nothing durable.
//! - [`released`]: which `seq`s have been released, durably.
//! - [`request`]: request wire formats and the seeded generator.
//! - [`schema`]: every column family, key layout and record type, in one table.
//! - [`record`]: the durable record types (the protocol's).
//! - [`backup`]: a backup's writes ([`hams_protocol::backup::Durable`]).
//! - [`codec`]: versioned, checksummed record envelopes.
#![warn(missing_docs)]

pub mod backup;
pub mod codec;
pub mod error;
pub mod layout;
pub mod log;
pub mod mirror;
pub mod record;
pub mod released;
pub mod request;
pub mod schema;
pub mod served;
pub mod store;

pub use error::{Error, Result};
pub use log::Log;
pub use record::{ErrorKind, LineageTag, OutputRecord, RequestError, SourceRecord};
pub use released::Released;
pub use request::{Generator, InputKind, Request, Values};
pub use store::{Batch, Cf, Store};
