//! Timely operators of a compiled service graph and the records they carry.
//!
//! Each operator is an extension trait on `Stream`, named after its method
//! (timely's own style): [`infer::Infer`], [`join::JoinBySeq`],
//! [`sink::Release`].

pub mod infer;
pub mod join;
pub mod sink;

use hams_storage::{LineageTag, RequestError, Values};
use serde::{Deserialize, Serialize};

/// Timely timestamps of a service graph: epochs.
pub type Epoch = u64;

/// What identifies a request on its way through the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Global sequence number.
    pub seq: u64,
    /// Worker owning the request's source partition; its sink releases the result.
    pub home: u32,
    /// Offset in the home partition's source log.
    pub offset: u64,
    /// Session of the request, if any.
    pub session: Option<u64>,
    /// Session starts here.
    pub start: bool,
    /// Session ends here.
    pub end: bool,
    /// Ingestion time, µs since the Unix epoch.
    pub ingest_us: u64,
}

/// A request's current value between two operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Identity.
    pub meta: Meta,
    /// The tensor flowing on this edge.
    pub values: Values,
    /// Stateful executions this value depends on.
    pub lineage: Vec<LineageTag>,
}

/// A request that cannot be answered with a result; goes straight to its sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Identity.
    pub meta: Meta,
    /// Why.
    pub error: RequestError,
}

/// Which worker processes a request at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// Every request goes to this worker (stateful models: the primary).
    Pinned(usize),
    /// Requests spread over these workers by `seq` (stateless replicas).
    BySeq(Vec<usize>),
    /// Each request goes back to its home worker (sinks).
    Home,
}

impl Route {
    /// The worker index for `meta`.
    pub fn target(&self, meta: &Meta) -> u64 {
        match self {
            Route::Pinned(w) => *w as u64,
            Route::BySeq(ws) => ws[(meta.seq % ws.len() as u64) as usize] as u64,
            Route::Home => meta.home as u64,
        }
    }

    /// True when `worker` may receive requests under this route.
    pub fn hosts(&self, worker: usize) -> bool {
        match self {
            Route::Pinned(w) => *w == worker,
            Route::BySeq(ws) => ws.contains(&worker),
            Route::Home => true,
        }
    }
}
