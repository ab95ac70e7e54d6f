//! The primary's rules for a stateful model.
//!
//! A primary runs each epoch's requests in `seq` order, sends every output
//! downstream at once tagged with its lineage `(model, incarnation, epoch,
//! fingerprint)`, and ships the batch's state changes and executions to its
//! backup as a [`Delta`] (asynchronously: nothing waits for it). It keeps an
//! *execution log* by `seq`: a request that comes around again (a replay
//! after a view change) is answered from the log, so a session never steps
//! twice for one request. A promoted primary starts with the log of
//! executions its backup held, which is what makes replay exactly-once.

use std::collections::{HashMap, HashSet};

use crate::exec::{ItemResult, SessionUpdate};
use crate::flow::{Envelope, Failure, Meta};
use crate::ids::{Epoch, Incarnation, ModelId, Seq, WorkerId};
use crate::records::{Delta, DeltaBody, Execution, LineageTag, RequestError, Values};

/// What to do with a request of the current view at a stateful primary.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Executed before (maybe by the replica this one was promoted from): answer from the log.
    Replay(Execution),
    /// Being executed right now: wait for that answer.
    Wait,
    /// New: execute it.
    Execute,
}

/// A stateful primary's execution log.
#[derive(Debug, Clone, Default)]
pub struct Primary {
    log: HashMap<Seq, Execution>,
    executing: HashSet<Seq>,
}

/// A typed error for the request `meta` at `node`.
pub fn failure(node: &str, meta: Meta, kind: crate::records::ErrorKind, message: String, lineage: Vec<LineageTag>) -> Failure {
    Failure {
        meta,
        error: RequestError {
            node: node.to_string(),
            kind,
            message,
        },
        lineage,
    }
}

/// The outputs of one batch, split into results and typed errors.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Results.
    pub ok: Vec<Envelope>,
    /// Typed errors.
    pub err: Vec<Failure>,
}

impl Outputs {
    fn push(&mut self, node: &str, meta: Meta, outcome: Result<Vec<f32>, crate::records::ItemError>, lineage: Vec<LineageTag>) {
        match outcome {
            Ok(values) => self.ok.push(Envelope {
                meta,
                values: Values::F32(values),
                lineage,
            }),
            Err(e) => self.err.push(failure(node, meta, e.kind, e.message, lineage)),
        }
    }
}

/// Outputs of a model that keeps no lineage (stateless, or nothing replicated).
pub fn untagged(node: &str, requests: Vec<Envelope>, results: Vec<ItemResult>) -> Outputs {
    let mut out = Outputs::default();
    for (env, r) in requests.into_iter().zip(results) {
        out.push(node, env.meta, r.outcome, env.lineage);
    }
    out
}

impl Primary {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do with request `seq`.
    pub fn admit(&self, seq: Seq) -> Admission {
        if let Some(e) = self.log.get(&seq) {
            Admission::Replay(e.clone())
        } else if self.executing.contains(&seq) {
            Admission::Wait
        } else {
            Admission::Execute
        }
    }

    /// These requests were sent to the executor.
    pub fn executing(&mut self, seqs: impl IntoIterator<Item = Seq>) {
        self.executing.extend(seqs);
    }

    /// These requests came back (a model that keeps no log).
    pub fn done(&mut self, seqs: impl IntoIterator<Item = Seq>) {
        for s in seqs {
            self.executing.remove(&s);
        }
    }

    /// A batch of epoch `epoch` came back from incarnation `inc`'s executor:
    /// the tagged outputs, and the delta for the backup on worker `backup`.
    #[allow(clippy::too_many_arguments)]
    pub fn executed(
        &mut self,
        node: &str,
        model: ModelId,
        inc: Incarnation,
        epoch: Epoch,
        backup: WorkerId,
        requests: Vec<Envelope>,
        results: Vec<ItemResult>,
        states: Vec<SessionUpdate>,
    ) -> (Outputs, Delta) {
        let mut out = Outputs::default();
        let mut executions = Vec::with_capacity(requests.len());
        for (env, r) in requests.into_iter().zip(results) {
            self.executing.remove(&env.meta.seq);
            let exec = Execution {
                seq: env.meta.seq,
                session: env.meta.session,
                start: env.meta.start,
                end: env.meta.end,
                outcome: r.outcome,
                prev_fp: r.prev_fp,
                fp: r.fp,
                inc,
                epoch,
                input_lineage: env.lineage,
            };
            let mut lineage = exec.input_lineage.clone();
            lineage.push(exec.tag(model));
            out.push(node, env.meta, exec.outcome.clone(), lineage);
            self.log.insert(exec.seq, exec.clone());
            executions.push(exec);
        }
        let delta = Delta {
            model,
            inc,
            to: backup,
            body: DeltaBody::Exec {
                states: states.into_iter().map(|u| (u.session, u.state)).collect(),
                executions,
            },
        };
        (out, delta)
    }

    /// Answers a replayed request from its logged execution.
    pub fn replay(node: &str, model: ModelId, env: Envelope, exec: &Execution) -> Outputs {
        let mut lineage = env.lineage;
        lineage.push(exec.tag(model));
        let mut out = Outputs::default();
        out.push(node, env.meta, exec.outcome.clone(), lineage);
        out
    }

    /// Starts a promoted primary's log with the executions its backup held.
    pub fn promote(&mut self, held: &[Execution]) {
        self.log = held.iter().map(|e| (e.seq, e.clone())).collect();
        self.executing.clear();
    }

    /// Forgets everything (this worker no longer serves the model).
    pub fn demote(&mut self) {
        self.log.clear();
        self.executing.clear();
    }

    /// Forgets executions whose results have been released.
    pub fn gc(&mut self, released: impl Fn(Seq) -> bool) {
        self.log.retain(|seq, _| !released(*seq));
    }

    /// Logged executions.
    pub fn logged(&self) -> usize {
        self.log.len()
    }
}
