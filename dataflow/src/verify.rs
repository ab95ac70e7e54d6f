//! The consistency checker over a run's durable records: each process
//! database's evidence is read (by `hams verify` from data directories, or
//! by each process of a run and sent to process 0) and handed, all
//! together, to the protocol's checker ([`hams_protocol::invariants`], the
//! same one the simulator runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hams_operators::executor::engine::session_origin;
use hams_protocol::invariants::{self, Evidence, Partition};
use hams_protocol::records::{GraphShape, LineageRecord, OutputRecord};
use hams_protocol::{Fingerprint, Incarnation, ModelId, Seq, SessionId};
use hams_storage::schema::{PARTITIONS_KEY, SHAPE_KEY};
use hams_storage::{backup, Batch, Cf, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, Input};

pub use hams_protocol::invariants::Report;

/// The process databases (`p0`, `p1`, ...) under a data directory.
pub fn process_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::Config(format!("{}: {e}", root.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.len() > 1 && n.starts_with('p') && n[1..].bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(Error::Config(format!(
            "{}: no process databases (p0, p1, ...) to verify",
            root.display()
        )));
    }
    Ok(dirs)
}

/// Checks every process database under the data directory `root`.
pub fn verify(root: &Path) -> Result<Report> {
    verify_dirs(&process_dirs(root)?)
}

/// Checks the process databases `dirs` together (one run's, maybe gathered from several hosts).
pub fn verify_dirs(dirs: &[PathBuf]) -> Result<Report> {
    let evidence = dirs
        .iter()
        .map(|d| StoreEvidence::read(&Store::open_read_only(d)?))
        .collect::<Result<Vec<_>>>()?;
    check(evidence)
}

/// What one process database holds for the checker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreEvidence {
    /// The graph's shape, if the database records it.
    pub shape: Option<GraphShape>,
    /// The partitions this database is home of: ledger and accepted positions.
    pub partitions: Vec<(u32, Partition)>,
    /// Their released results still stored.
    pub outputs: Vec<(u32, OutputRecord)>,
    /// Committed executions.
    pub lineage: Vec<(ModelId, Seq, LineageRecord)>,
    /// Lineage garbage-collected below these.
    pub horizon: Vec<(ModelId, Seq)>,
    /// Backup states.
    pub states: Vec<HeldStates>,
}

/// One model's backup states in a database: the incarnation that wrote
/// them and each session's fingerprint.
pub type HeldStates = (ModelId, Incarnation, Vec<(SessionId, Fingerprint)>);

impl StoreEvidence {
    /// Reads `store`'s evidence.
    pub fn read(store: &Arc<Store>) -> Result<Self> {
        let mut e = StoreEvidence {
            shape: store.get::<GraphShape>(Cf::Meta, SHAPE_KEY)?,
            ..StoreEvidence::default()
        };
        for p in store.get::<Vec<u32>>(Cf::Meta, PARTITIONS_KEY)?.unwrap_or_default() {
            let (part, outs) = hams_storage::released::evidence(store, p)?;
            e.partitions.push((p, part));
            e.outputs.extend(outs.into_iter().map(|o| (p, o)));
        }
        e.lineage = backup::lineage(store)?;
        for (m, (inc, states)) in backup::states(store)? {
            e.states.push((m, inc, states.into_iter().map(|(s, st)| (s, st.fp)).collect()));
        }
        if let Some(s) = &e.shape {
            for m in 0..s.nodes.len() as u16 {
                e.horizon.push((ModelId(m), backup::horizon(store, ModelId(m))?));
            }
        }
        Ok(e)
    }
}

/// Checks the evidence of every process database of a run together.
pub fn check(stores: Vec<StoreEvidence>) -> Result<Report> {
    let count = stores.len();
    let mut shape: Option<GraphShape> = None;
    let mut partitions: BTreeMap<u32, Partition> = BTreeMap::new();
    let mut outputs = Vec::new();
    let mut lineage = Vec::new();
    let mut horizon: BTreeMap<ModelId, Seq> = BTreeMap::new();
    let mut finals: BTreeMap<ModelId, (Incarnation, BTreeMap<SessionId, Fingerprint>)> = BTreeMap::new();
    for e in stores {
        shape = shape.or(e.shape);
        partitions.extend(e.partitions);
        outputs.extend(e.outputs);
        lineage.extend(e.lineage);
        for (m, h) in e.horizon {
            let x = horizon.entry(m).or_insert(h);
            *x = (*x).max(h);
        }
        for (m, inc, states) in e.states {
            // The latest backup to have synced holds the model's final states.
            if finals.get(&m).is_none_or(|(i, _)| inc > *i) {
                finals.insert(m, (inc, states.into_iter().collect()));
            }
        }
    }
    let shape = shape.ok_or_else(|| Error::Config("no database records the graph's shape: not a data directory of a run".into()))?;
    let origin = |m: ModelId, s: SessionId| session_origin(&shape.name(m), s);
    let expected = |o: &OutputRecord| shape.expected(o);
    let name = |m: ModelId| shape.name(m);
    let evidence = Evidence {
        partitions,
        outputs,
        lineage,
        horizon,
        final_states: Some(finals.into_iter().map(|(m, (_, s))| (m, s)).collect()),
        origin: &origin,
        expected: &expected,
        name: &name,
    };
    let mut report = invariants::check(&evidence);
    report.stores = count;
    Ok(report)
}

/// The shape of `graph`, as runs record it.
pub fn shape(graph: &Graph) -> GraphShape {
    let input = |i: &Input| match i {
        Input::Source => None,
        Input::Node(j) => Some(ModelId(*j as u16)),
    };
    GraphShape {
        nodes: graph
            .nodes
            .iter()
            .map(|n| hams_protocol::records::ShapeNode {
                name: n.spec.name.clone(),
                stateful: n.spec.is_stateful(),
                inputs: n.inputs.iter().map(input).collect(),
            })
            .collect(),
        sink: graph.sink.iter().map(input).collect(),
    }
}

/// Records the graph's shape and this process's partitions in its database, for the checker.
pub fn record_run(store: &Store, graph: &Graph, partitions: Vec<u32>) -> Result<()> {
    let mut b = Batch::new();
    b.put(store, Cf::Meta, SHAPE_KEY, &shape(graph));
    b.put(store, Cf::Meta, PARTITIONS_KEY, &partitions);
    Ok(store.commit(b, false)?)
}
