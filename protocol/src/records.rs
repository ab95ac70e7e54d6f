//! The protocol's records: what flows between roles and what is kept durably.
//!
//! Every durable record is one of these types; `hams_storage::schema` says
//! where each is stored (column family and key). Fault injection and
//! telemetry never appear here.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Fingerprint, Incarnation, ModelId, Seq, SessionId, View, WorkerId};

/// The tensor a request carries, flattened row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Values {
    /// Real-valued features.
    F32(Vec<f32>),
    /// Token ids for embedding models.
    Tokens(Vec<u32>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::Tokens(v) => v.len(),
        }
    }
    /// True when there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Values::F32(_) => "f32",
            Values::Tokens(_) => "tokens",
        }
    }
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

/// Why one item of a batch got no output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// Error class.
    pub kind: ErrorKind,
    /// Detail for the client.
    pub message: String,
}

/// One stateful execution a result depends on (the causal-log entry).
/// Every tag on a result names an execution of that result's own request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineageTag {
    /// The stateful model.
    pub model: ModelId,
    /// Incarnation of the model's primary that executed it.
    pub incarnation: Incarnation,
    /// Epoch of the execution.
    pub epoch: Epoch,
    /// Fingerprint of the session after the execution.
    pub fingerprint: Fingerprint,
}

/// A session's state and the fingerprint of the execution that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The model's state vector.
    pub state: Vec<f32>,
    /// Chained fingerprint (I4); it covers a digest of `state`.
    pub fp: Fingerprint,
}

/// One execution of a stateful model: what its backup holds, replays from
/// and (as a [`LineageRecord`]) commits for the checker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Request.
    pub seq: Seq,
    /// Session.
    pub session: Option<SessionId>,
    /// The request started its session (its chain begins here).
    pub start: bool,
    /// The request ended its session.
    pub end: bool,
    /// Output (or the typed error the model gave).
    pub outcome: Result<Vec<f32>, ItemError>,
    /// Session fingerprint before.
    pub prev_fp: Fingerprint,
    /// Session fingerprint after (equal to `prev_fp` when the model refused the request).
    pub fp: Fingerprint,
    /// Incarnation that ran it.
    pub inc: Incarnation,
    /// Epoch it ran in.
    pub epoch: Epoch,
    /// Lineage of its input: the upstream stateful executions it consumed.
    pub input_lineage: Vec<LineageTag>,
}

impl Execution {
    /// The tag a result computed from this execution carries.
    pub fn tag(&self, model: ModelId) -> LineageTag {
        LineageTag {
            model,
            incarnation: self.inc,
            epoch: self.epoch,
            fingerprint: self.fp,
        }
    }

    /// What a backup commits of this execution for the checker.
    pub fn lineage_record(&self) -> LineageRecord {
        LineageRecord {
            session: self.session,
            start: self.start,
            end: self.end,
            ok: self.outcome.is_ok(),
            prev_fp: self.prev_fp,
            fp: self.fp,
            inc: self.inc,
            epoch: self.epoch,
            upstream: self.input_lineage.clone(),
        }
    }
}

/// One committed execution as the checker reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// Session.
    pub session: Option<SessionId>,
    /// The execution started its session.
    pub start: bool,
    /// The execution ended its session.
    pub end: bool,
    /// The model produced an output (false: a typed error, state unchanged).
    pub ok: bool,
    /// Fingerprint before.
    pub prev_fp: Fingerprint,
    /// Fingerprint after.
    pub fp: Fingerprint,
    /// Incarnation that executed it.
    pub inc: Incarnation,
    /// Epoch it executed in.
    pub epoch: Epoch,
    /// The upstream stateful executions its input depended on (I3).
    pub upstream: Vec<LineageTag>,
}

/// A request as logged at ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// Time the request was due (open loop) or arrived, in µs since the Unix epoch.
    pub ingest_us: u64,
    /// The request's wire bytes, exactly as received.
    pub bytes: Vec<u8>,
}

/// A released result, as written to the output topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Global request sequence number.
    pub seq: Seq,
    /// Offset of the request in its source partition (the output's partition).
    pub offset: u64,
    /// Session of the request, if any.
    pub session: Option<SessionId>,
    /// Epoch the result was computed in.
    pub epoch: Epoch,
    /// Ingestion time (µs since the Unix epoch).
    pub ingest_us: u64,
    /// Release time (µs since the Unix epoch).
    pub release_us: u64,
    /// The result, or why there is none.
    pub outcome: Result<Values, RequestError>,
    /// Stateful executions the result depends on.
    pub lineage: Vec<LineageTag>,
}

/// A backup's cut: incarnation `inc` of `model` is held up to (not
/// including) `epoch`; its executions from `epoch` on are orphans. Sent on
/// the model's durable stream at time `epoch`, so anyone who sees that
/// stream's frontier pass an epoch has seen every cut at or before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// The view whose recovery made the cut.
    pub view: View,
    /// The model.
    pub model: ModelId,
    /// The incarnation cut.
    pub inc: Incarnation,
    /// First epoch not held.
    pub epoch: Epoch,
}

/// What a stateful primary ships to its backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeltaBody {
    /// The sessions a batch changed and what it produced.
    Exec {
        /// New session states (`None`: ended).
        states: Vec<(SessionId, Option<SessionState>)>,
        /// The executions.
        executions: Vec<Execution>,
    },
    /// Everything, from a newly promoted primary to its new backup.
    Snapshot {
        /// Every open session.
        states: Vec<(SessionId, SessionState)>,
        /// Executions whose results are not yet released.
        executions: Vec<Execution>,
    },
}

/// A state delta of one stateful model, sent at the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The model.
    pub model: ModelId,
    /// Incarnation of the sender.
    pub inc: Incarnation,
    /// Worker of the backup it is for.
    pub to: WorkerId,
    /// What changed.
    pub body: DeltaBody,
}

/// New roles of one model in a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// The model.
    pub model: ModelId,
    /// The new incarnation.
    pub inc: Incarnation,
    /// Worker of the new primary (the old backup).
    pub primary: WorkerId,
    /// Worker of the new backup.
    pub backup: WorkerId,
}

/// The coordinator's announcement of view `view`: these models roll back to
/// their backups, which are promoted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recover {
    /// The view this recovery creates.
    pub view: View,
    /// The model whose failure caused it.
    pub failed: ModelId,
    /// The failed model and every stateful model downstream of it.
    pub roles: Vec<Roles>,
}

/// What a worker tells the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// The stateful model whose primary executor is gone.
    pub model: ModelId,
    /// The incarnation that failed.
    pub inc: Incarnation,
    /// Detection detail.
    pub reason: String,
}

/// Advance of a partition's released watermark (every offset below is released).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Source partition.
    pub partition: u32,
    /// Offsets below this are released.
    pub offset: u64,
}

/// The shape of a service graph, as a run records it for the checker (and
/// so a restart can tell a different graph).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphShape {
    /// The nodes, by index.
    pub nodes: Vec<ShapeNode>,
    /// The sink's inputs (`None`: the source).
    pub sink: Vec<Option<ModelId>>,
}

/// One node of a [`GraphShape`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeNode {
    /// Its name.
    pub name: String,
    /// It keeps a state per session.
    pub stateful: bool,
    /// Its inputs (`None`: the source).
    pub inputs: Vec<Option<ModelId>>,
}

impl GraphShape {
    fn reach(&self, from: &[Option<ModelId>], into: &mut std::collections::BTreeSet<ModelId>) {
        for m in from.iter().flatten() {
            if into.insert(*m) {
                if let Some(n) = self.nodes.get(m.0 as usize) {
                    self.reach(&n.inputs, into);
                }
            }
        }
    }

    /// The stateful models a released record must carry a lineage tag of:
    /// every stateful model on the path the request took to where it ended.
    pub fn expected(&self, o: &OutputRecord) -> std::collections::BTreeSet<ModelId> {
        let mut on_path = std::collections::BTreeSet::new();
        match &o.outcome {
            Ok(_) => self.reach(&self.sink, &mut on_path),
            Err(e) => {
                if let Some(i) = self.nodes.iter().position(|n| n.name == e.node) {
                    let me = ModelId(i as u16);
                    self.reach(&[Some(me)], &mut on_path);
                }
            }
        }
        on_path.retain(|m| self.nodes.get(m.0 as usize).is_some_and(|n| n.stateful));
        on_path
    }

    /// The name of `m` (or its index, for a model the shape lacks).
    pub fn name(&self, m: ModelId) -> String {
        self.nodes.get(m.0 as usize).map_or_else(|| m.to_string(), |n| n.name.clone())
    }
}
