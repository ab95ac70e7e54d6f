//! The consistency checker over data directories: reads the durable records
//! of every process database and hands them to the protocol's checker
//! ([`hams_protocol::invariants`], the same one the simulator runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hams_operators::executor::engine::session_origin;
use hams_protocol::invariants::{self, Evidence, Partition};
use hams_protocol::records::{GraphShape, OutputRecord};
use hams_protocol::{Fingerprint, Incarnation, ModelId, Seq, SessionId};
use hams_storage::schema::{PARTITIONS_KEY, SHAPE_KEY};
use hams_storage::{backup, Batch, Cf, Store};

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
    let mut shape: Option<GraphShape> = None;
    let mut partitions: BTreeMap<u32, Partition> = BTreeMap::new();
    let mut outputs: Vec<(u32, OutputRecord)> = Vec::new();
    let mut lineage = Vec::new();
    let mut horizon: BTreeMap<ModelId, Seq> = BTreeMap::new();
    let mut finals: BTreeMap<ModelId, (Incarnation, BTreeMap<SessionId, Fingerprint>)> = BTreeMap::new();
    for dir in dirs {
        let store = Store::open_read_only(dir)?;
        if let Some(s) = store.get::<GraphShape>(Cf::Meta, SHAPE_KEY)? {
            shape = Some(s);
        }
        for p in store.get::<Vec<u32>>(Cf::Meta, PARTITIONS_KEY)?.unwrap_or_default() {
            let (part, outs) = hams_storage::released::evidence(&store, p)?;
            partitions.insert(p, part);
            outputs.extend(outs.into_iter().map(|o| (p, o)));
        }
        lineage.extend(backup::lineage(&store)?);
        for (m, (inc, states)) in backup::states(&store)? {
            if finals.get(&m).is_none_or(|(i, _)| inc > *i) {
                finals.insert(m, (inc, states.into_iter().map(|(s, st)| (s, st.fp)).collect()));
            }
        }
        if let Some(s) = &shape {
            for m in 0..s.nodes.len() as u16 {
                let h = backup::horizon(&store, ModelId(m))?;
                let e = horizon.entry(ModelId(m)).or_insert(h);
                *e = (*e).max(h);
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
    report.stores = dirs.len();
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
