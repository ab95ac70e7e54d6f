//! Which worker hosts which executor.
//!
//! Executors are spread round-robin over the workers. A stateful model's
//! backup goes to another process when there is more than one (so losing a
//! process or host keeps one replica), else to another worker.

use std::fmt;

use hams_protocol::flow::Route;
use hams_protocol::WorkerId;

use crate::graph::Graph;

/// The shape of a timely cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    /// Processes.
    pub processes: usize,
    /// Worker threads per process.
    pub threads: usize,
}

impl Cluster {
    /// Total workers.
    pub fn workers(&self) -> usize {
        self.processes * self.threads
    }
    /// The process of worker `w`.
    pub fn process_of(&self, w: usize) -> usize {
        w / self.threads
    }
}

/// Where one node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlacement {
    /// Node name.
    pub name: String,
    /// How requests reach the node's executors.
    pub route: Route,
    /// Workers hosting serving executors (the primary first).
    pub hosts: Vec<usize>,
    /// Worker hosting the backup of a stateful node.
    pub backup: Option<usize>,
    /// Replicas the graph asked for (more than `hosts` when there are fewer workers).
    pub requested: usize,
}

/// Placement of every node of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The cluster placed on.
    pub cluster: Cluster,
    /// Per node, in graph order.
    pub nodes: Vec<NodePlacement>,
}

/// Places `graph` on `cluster`.
///
/// # Examples
/// ```
/// use hams_dataflow::{placement::{place, Cluster}, GraphDef, NodeDef, SourceDef};
/// let g = GraphDef::new("g", SourceDef::features([4]).sessions(2, 4))
///     .node(NodeDef::lstm("l", 8).inputs(["source"]).output(2))
///     .sink(["l"]).build().unwrap();
/// let p = place(&g, Cluster { processes: 3, threads: 2 });
/// let l = &p.nodes[0];
/// assert_ne!(p.cluster.process_of(l.hosts[0]), p.cluster.process_of(l.backup.unwrap()));
/// ```
pub fn place(graph: &Graph, cluster: Cluster) -> Placement {
    let w = cluster.workers().max(1);
    let mut next = 0usize;
    let nodes = graph
        .nodes
        .iter()
        .map(|n| {
            let hosts: Vec<usize> = (0..n.replicas.min(w)).map(|k| (next + k) % w).collect();
            next = (next + hosts.len()) % w;
            let primary = hosts[0];
            let backup = n.spec.is_stateful().then(|| {
                if cluster.processes > 1 {
                    (primary + cluster.threads) % w
                } else {
                    (primary + 1) % w
                }
            });
            let route = if n.spec.is_stateful() || hosts.len() == 1 {
                Route::Pinned(WorkerId(primary))
            } else {
                Route::BySeq(hosts.iter().map(|h| WorkerId(*h)).collect())
            };
            NodePlacement {
                name: n.spec.name.clone(),
                route,
                hosts,
                backup,
                requested: n.replicas,
            }
        })
        .collect();
    Placement { cluster, nodes }
}

impl Placement {
    /// One line per node that got fewer replicas than asked (one executor per worker at most).
    pub fn capped(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.requested > n.hosts.len())
            .map(|n| {
                format!(
                    "node {}: replicas = {}, but there are {} workers; running {} (one per worker)",
                    n.name,
                    n.requested,
                    self.cluster.workers(),
                    n.hosts.len()
                )
            })
            .collect()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |w: usize| format!("w{w}/p{}", self.cluster.process_of(w));
        for n in &self.nodes {
            let hosts: Vec<String> = n.hosts.iter().map(|h| at(*h)).collect();
            write!(f, "  {:<14} {}", n.name, hosts.join(" "))?;
            if let Some(b) = n.backup {
                write!(f, "  (backup {})", at(b))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
