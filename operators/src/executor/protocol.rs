//! Frames between a worker and its executors (length-prefixed bincode).

use hams_storage::{ErrorKind, Values};
use serde::{Deserialize, Serialize};

/// One request in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Global sequence number.
    pub seq: u64,
    /// Session, for stateful models.
    pub session: Option<u64>,
    /// Session starts here (state reset to zero).
    pub start: bool,
    /// Session ends here (state dropped afterwards).
    pub end: bool,
    /// Input tensor.
    pub input: Values,
}

/// A batch to run: one epoch's requests for one model, in `seq` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Correlates the response.
    pub ticket: u64,
    /// Epoch of the batch.
    pub epoch: u64,
    /// The requests.
    pub items: Vec<Item>,
}

/// Why one item got no output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// Error class.
    pub kind: ErrorKind,
    /// Detail for the client.
    pub message: String,
}

/// A session's state and the lineage fingerprint of the execution that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The model's state vector.
    pub state: Vec<f32>,
    /// Chained fingerprint (DESIGN §6, I4).
    pub fp: u64,
}

/// New state of one session after a batch (`None`: the session ended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionUpdate {
    /// Session id.
    pub session: u64,
    /// Its state, or `None` when it ended.
    pub state: Option<SessionState>,
}

/// One item's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Output tensor.
    pub values: Vec<f32>,
    /// Fingerprint of the session before this execution (stateful models; 0 otherwise).
    pub prev_fp: u64,
    /// Fingerprint after it: chained over the previous one, the request and the execution's noise draw.
    pub fp: u64,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The request's ticket.
    pub ticket: u64,
    /// One entry per item, in order.
    pub outputs: Vec<Result<Output, ItemError>>,
    /// Sessions the batch changed (stateful models only).
    pub delta: Vec<SessionUpdate>,
    /// Noise draw of each forward pass (0 when deterministic).
    pub draws: Vec<u64>,
    /// Time spent in the backend.
    pub compute_us: u64,
}

/// Worker → executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToExecutor {
    /// Run a batch.
    Infer(InferRequest),
    /// Liveness probe, answered at once even while a batch runs.
    Ping(u64),
    /// Replace every session state (promotion of a backup; answered by `Restored`).
    Restore(Vec<(u64, SessionState)>),
    /// Exit cleanly.
    Shutdown,
}

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
