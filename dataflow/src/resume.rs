//! Starting a run on a data directory that an earlier run, or an earlier
//! life of this cluster, left behind: the processes tell each other what
//! their disks hold and all resume the same way (see
//! [`hams_protocol::restart`]): each stateful model continues from its
//! latest backup image, never from empty states.

use std::collections::BTreeMap;
use std::sync::Arc;

use hams_protocol::records::GraphShape;
use hams_protocol::restart::{self, Image, Start};
use hams_protocol::view::Handoff;
use hams_protocol::Incarnation;
use hams_protocol::{ModelId, Seq, WorkerId};
use hams_storage::schema::{backup_key, PARTITIONS_KEY, SHAPE_KEY};
use hams_storage::{backup, Cf, Released, Store};
use timely::worker::Worker;

use crate::error::{Error, Result};
use crate::graph::Graph;

/// What one process's disk says, as sent to every worker when a run starts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Holdings {
    /// The backup images it holds.
    images: Vec<Image>,
    /// Released watermark of each of its partitions.
    watermarks: Vec<(u32, u64)>,
}

/// How this worker resumes.
pub(crate) struct Resume {
    /// How every stateful model starts.
    pub starts: BTreeMap<ModelId, Start>,
    /// Released watermark of every partition.
    pub watermarks: Vec<(u32, u64)>,
    /// Images this worker's primaries start from.
    pub handoffs: Vec<(ModelId, Handoff)>,
}

/// Refuses a data directory written by another graph or another cluster
/// shape: resuming it would silently mix two services' states.
pub fn check_compatible(store: &Store, graph: &Graph, partitions: &[u32]) -> Result<()> {
    if let Some(was) = store.get::<GraphShape>(Cf::Meta, SHAPE_KEY)? {
        let now = crate::verify::shape(graph);
        if was != now {
            return Err(Error::Config(format!(
                "{}: this data directory belongs to another graph ({}); start a new one with another --data-dir",
                store.path().display(),
                difference(&was, &now)
            )));
        }
    }
    if let Some(was) = store.get::<Vec<u32>>(Cf::Meta, PARTITIONS_KEY)? {
        if was != partitions {
            return Err(Error::Config(format!(
                "{}: this data directory was written by a cluster in which this process owned partitions {was:?}; \
                 with these -n/-w it would own {partitions:?}. Restart with the same processes and workers, \
                 or start a new --data-dir (hams does not move session state between cluster shapes)",
                store.path().display()
            )));
        }
    }
    Ok(())
}

/// The first difference between two graph shapes, in words.
fn difference(was: &GraphShape, now: &GraphShape) -> String {
    if was.nodes.len() != now.nodes.len() {
        return format!("it had {} nodes, this graph has {}", was.nodes.len(), now.nodes.len());
    }
    for (i, (a, b)) in was.nodes.iter().zip(&now.nodes).enumerate() {
        if a != b {
            let kind = |n: &hams_protocol::records::ShapeNode| if n.stateful { "stateful" } else { "stateless" };
            return format!(
                "node {i} was {:?} ({}, inputs {:?}), now {:?} ({}, inputs {:?})",
                a.name,
                kind(a),
                a.inputs.iter().map(|x| x.map(|m| m.0)).collect::<Vec<_>>(),
                b.name,
                kind(b),
                b.inputs.iter().map(|x| x.map(|m| m.0)).collect::<Vec<_>>()
            );
        }
    }
    format!(
        "its sink read {:?}, this one reads {:?}",
        was.sink.iter().map(|x| x.map(|m| m.0)).collect::<Vec<_>>(),
        now.sink.iter().map(|x| x.map(|m| m.0)).collect::<Vec<_>>()
    )
}

/// Agrees with every other worker on how to resume, then loads the images
/// this worker's primaries start from.
pub(crate) fn resume(
    worker: &mut Worker,
    store: &Arc<Store>,
    initial: &BTreeMap<ModelId, (WorkerId, WorkerId)>,
    partitions: &[u32],
    threads: usize,
) -> Result<Resume> {
    let me = worker.index();
    let first = me % threads == 0;
    let mine = match first {
        true => vec![holdings(store, initial.keys().copied(), partitions, WorkerId(me))?],
        false => Vec::new(),
    };
    let all: Vec<Holdings> = crate::gather::build(worker, true).finish(worker, mine);
    let images: Vec<Image> = all.iter().flat_map(|h| h.images.iter().copied()).collect();
    let mut watermarks: Vec<(u32, u64)> = all.iter().flat_map(|h| h.watermarks.iter().copied()).collect();
    watermarks.sort();
    let starts = restart::plan(initial, &images, threads, worker.peers());
    let released = |seq: Seq| {
        let p = worker.peers() as u64;
        watermarks
            .iter()
            .find(|(part, _)| *part as u64 == seq.0 % p)
            .is_some_and(|(_, w)| seq.0 / p < *w)
    };
    let mut handoffs = Vec::new();
    for (m, s) in &starts {
        if s.image != Some(WorkerId(me)) {
            continue;
        }
        let states = backup::states(store)?.remove(m).map(|(_, st)| st).unwrap_or_default();
        let executions: Vec<_> = backup::executions(store, Some(*m))?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| !released(e.seq))
            .collect();
        tracing::info!(model = %m, inc = %s.inc, sessions = states.len(), held = executions.len(), "resuming from the backup image on this process");
        handoffs.push((
            *m,
            Handoff {
                executor: None,
                states: states.into_iter().collect(),
                executions,
            },
        ));
    }
    if me == 0 {
        for (m, s) in starts.iter().filter(|(_, s)| s.image.is_some()) {
            tracing::info!(model = %m, inc = %s.inc, primary = %s.primary, backup = %s.backup, "model resumes from its latest backup image");
        }
    }
    Ok(Resume {
        starts,
        watermarks,
        handoffs,
    })
}

/// What this process's disk holds.
fn holdings(store: &Arc<Store>, models: impl Iterator<Item = ModelId>, partitions: &[u32], worker: WorkerId) -> Result<Holdings> {
    let mut images = Vec::new();
    for model in models {
        if let Some(inc) = store.get::<Incarnation>(Cf::Meta, &backup_key(model))? {
            images.push(Image { model, inc, worker });
        }
    }
    let mut watermarks = Vec::new();
    for p in partitions {
        // The sink's consumer position: every offset below it is released.
        watermarks.push((*p, Released::load(store.clone(), *p)?.watermark()));
    }
    Ok(Holdings { images, watermarks })
}
