//! What a worker and a model executor say to each other, as the protocol
//! sees it (the wire framing lives with the executors).

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Fingerprint, Seq, SessionId};
use crate::records::{ItemError, SessionState, Values};

/// One request in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Global sequence number.
    pub seq: Seq,
    /// Session, for stateful models.
    pub session: Option<SessionId>,
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
    pub epoch: Epoch,
    /// The requests.
    pub items: Vec<Item>,
}

/// One item's result, with the session fingerprints around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The output, or why there is none (the session's state is then unchanged).
    pub outcome: Result<Vec<f32>, ItemError>,
    /// Session fingerprint before (stateful models; 0 when the session is not open).
    pub prev_fp: Fingerprint,
    /// Session fingerprint after: chained over the previous one, the request,
    /// the execution's noise draw and the new state.
    pub fp: Fingerprint,
}

/// New state of one session after a batch (`None`: the session ended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionUpdate {
    /// Session id.
    pub session: SessionId,
    /// Its state, or `None` when it ended.
    pub state: Option<SessionState>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The request's ticket.
    pub ticket: u64,
    /// One entry per item, in order.
    pub outputs: Vec<ItemResult>,
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
    Restore(Vec<(SessionId, SessionState)>),
    /// Exit cleanly.
    Shutdown,
}

/// Something an executor reports to the role that owns it.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// The model is loaded.
    Ready,
    /// A batch finished.
    Done(InferResponse),
    /// Heartbeat answer.
    Pong(u64),
    /// A `Restore` took effect.
    Restored,
    /// The executor is gone; nothing more will come from it.
    Died {
        /// Why (exit status, signal, socket error, load failure).
        reason: String,
    },
}
