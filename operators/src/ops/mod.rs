//! Timely operators of a compiled service graph and the records they carry.
//!
//! Each operator is an extension trait on `Stream` (or `Scope`), named after
//! its method (timely's own style): [`infer::Infer`], [`join::JoinBySeq`],
//! [`backup::Backup`], [`sink::Release`], [`coordinate::Coordinate`] and
//! [`views::Views`]. [`control`] holds the control plane they share.

pub mod backup;
pub mod control;
pub mod coordinate;
pub mod infer;
pub mod join;
pub mod sink;
pub mod views;

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
    /// View the request was (re)injected in; operators drop older views (they are replayed).
    pub view: u64,
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
    /// Stateful executions the failure depends on (a session a model had, or had not, started).
    pub lineage: Vec<LineageTag>,
}

/// Which worker processes a request at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// Every request goes to the current primary of this stateful model.
    Primary(u16),
    /// Every request goes to this worker.
    Pinned(usize),
    /// Requests spread over these workers by `seq` (stateless replicas).
    BySeq(Vec<usize>),
    /// Each request goes back to its home worker (sinks).
    Home,
}

impl Route {
    /// The worker index for `meta` under `control`'s current view.
    pub fn target(&self, meta: &Meta, control: &control::Control) -> u64 {
        match self {
            Route::Primary(m) => control.placement(*m).primary as u64,
            Route::Pinned(w) => *w as u64,
            Route::BySeq(ws) => ws[(meta.seq % ws.len() as u64) as usize] as u64,
            Route::Home => meta.home as u64,
        }
    }
}

/// What an operator does with a record of view `view` when its worker is at `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewCheck {
    /// Same view: process it.
    Current,
    /// Older view: drop it; it is replayed in the current one.
    Stale,
    /// Newer view: hold it until this worker learns that view.
    Early,
}

/// Classifies a record's view against the worker's.
pub fn view_check(view: u64, current: u64) -> ViewCheck {
    match view.cmp(&current) {
        std::cmp::Ordering::Equal => ViewCheck::Current,
        std::cmp::Ordering::Less => ViewCheck::Stale,
        std::cmp::Ordering::Greater => ViewCheck::Early,
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
