//! Records on the data path between operators, and where each goes.

use serde::{Deserialize, Serialize};

use crate::ids::{ModelId, Seq, SessionId, View, WorkerId};
use crate::records::{LineageTag, RequestError, Values};
use crate::view::ViewTable;

/// What identifies a request on its way through the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Global sequence number.
    pub seq: Seq,
    /// Source partition the request was logged in; its sink (worker `home`) releases the result.
    pub home: u32,
    /// Offset in the home partition's source log.
    pub offset: u64,
    /// Session of the request, if any.
    pub session: Option<SessionId>,
    /// Session starts here.
    pub start: bool,
    /// Session ends here.
    pub end: bool,
    /// Ingestion time, µs since the Unix epoch.
    pub ingest_us: u64,
    /// View the request was (re)injected in; operators drop older views (they are replayed).
    pub view: View,
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
    Primary(ModelId),
    /// Every request goes to this worker.
    Pinned(WorkerId),
    /// Requests spread over these workers by `seq` (stateless replicas).
    BySeq(Vec<WorkerId>),
    /// Each request goes back to its home worker (sinks).
    Home,
}

impl Route {
    /// The worker that processes `meta` under `table`'s current view.
    pub fn target(&self, meta: &Meta, table: &ViewTable) -> WorkerId {
        match self {
            Route::Primary(m) => table.placement(*m).primary,
            Route::Pinned(w) => *w,
            Route::BySeq(ws) => ws[(meta.seq.0 % ws.len() as u64) as usize],
            Route::Home => WorkerId(meta.home as usize),
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
pub fn view_check(view: View, current: View) -> ViewCheck {
    match view.cmp(&current) {
        std::cmp::Ordering::Equal => ViewCheck::Current,
        std::cmp::Ordering::Less => ViewCheck::Stale,
        std::cmp::Ordering::Greater => ViewCheck::Early,
    }
}
