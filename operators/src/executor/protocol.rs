//! Frames between a worker and its executors (length-prefixed bincode).
//!
//! The messages themselves are the protocol's ([`hams_protocol::exec`]);
//! this adds what only the wire needs: the executor's own announcements.

use serde::{Deserialize, Serialize};

pub use hams_protocol::exec::{InferRequest, InferResponse, Item, ItemResult, SessionUpdate, ToExecutor};
pub use hams_protocol::records::{ItemError, SessionState};

/// Executor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromExecutor {
    /// The model is loaded and the executor serves.
    Ready {
        /// Executor process id.
        pid: u32,
        /// Backend name.
        backend: String,
    },
    /// A batch finished.
    Done(InferResponse),
    /// Answer to `Ping`.
    Pong(u64),
    /// The states of a `Restore` are in place.
    Restored,
    /// The executor cannot go on (it exits after sending this).
    Fatal(String),
}
