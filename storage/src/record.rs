//! Durable record types shared by the dataflow and the verifier.

use serde::{Deserialize, Serialize};

use crate::request::Values;

/// A request as logged at ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Time the request was due (open loop) or arrived, in µs since the Unix epoch.
    pub ingest_us: u64,
    /// The request's wire bytes, exactly as received.
    pub bytes: Vec<u8>,
}

/// Why a request could not be answered with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The payload is not a request.
    Malformed,
    /// The tensor has the wrong number of elements.
    Shape,
    /// The tensor has the wrong element type (features vs tokens) or values.
    Type,
    /// A stateful model got a request for a session that was never started.
    UnknownSession,
    /// The backend failed on this input.
    Inference,
    /// The model's executor is gone and no replica could serve it.
    Unavailable,
}

/// A typed error returned to the client in place of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestError {
    /// Graph node that refused the request (`source` for ingestion errors).
    pub node: String,
    /// What kind of error.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at {}: {}", self.kind, self.node, self.message)
    }
}

/// One stateful execution a result depends on (the causal-log entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineageTag {
    /// Graph node index of the stateful model.
    pub model: u16,
    /// Incarnation (view) of the model's primary that executed it.
    pub incarnation: u32,
    /// Epoch of the execution.
    pub epoch: u64,
    /// Chained fingerprint of the state the execution produced.
    pub fingerprint: u64,
}

/// A released result, as written to the output topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Global request sequence number.
    pub seq: u64,
    /// Offset of the request in its source partition (the output's partition).
    pub offset: u64,
    /// Session of the request, if any.
    pub session: Option<u64>,
    /// Epoch the result was computed in.
    pub epoch: u64,
    /// Ingestion time (µs since the Unix epoch).
    pub ingest_us: u64,
    /// Release time (µs since the Unix epoch).
    pub release_us: u64,
    /// The result, or why there is none.
    pub outcome: Result<Values, RequestError>,
    /// Stateful executions the result depends on.
    pub lineage: Vec<LineageTag>,
}
