//! The simulated service graph: node shapes, placement, the models the
//! simulated executors run, and the reference evaluator (the oracle for I5).

use std::collections::BTreeMap;

use crate::exec::{InferRequest, InferResponse, ItemResult, SessionUpdate};
use crate::ids::{Fingerprint, ModelId, Seq, SessionId, WorkerId};
use crate::records::{ErrorKind, ItemError, SessionState, Values};

/// Where a node's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The source.
    Source,
    /// Another node's output.
    Node(usize),
}

/// A node of a simulated graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Name, for messages.
    pub name: &'static str,
    /// Keeps a state per session.
    pub stateful: bool,
    /// Inputs (several are joined by `seq`).
    pub inputs: Vec<Input>,
}

/// A simulated service graph.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Name.
    pub name: &'static str,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// The sink's inputs.
    pub sink: Vec<Input>,
}

fn n(name: &'static str, stateful: bool, inputs: &[Input]) -> Node {
    Node {
        name,
        stateful,
        inputs: inputs.to_vec(),
    }
}

impl Graph {
    /// The shapes the simulator explores: one stateful model between
    /// stateless ones, two stateful models in sequence, two stateful
    /// branches joined, and a join feeding a stateful model.
    pub fn shapes() -> Vec<Graph> {
        use Input::{Node as N, Source as S};
        vec![
            Graph {
                name: "chain",
                nodes: vec![n("embed", false, &[S]), n("tracker", true, &[N(0)]), n("head", false, &[N(1)])],
                sink: vec![N(2)],
            },
            Graph {
                name: "pilot",
                nodes: vec![
                    n("perception", false, &[S]),
                    n("tracker", true, &[N(0)]),
                    n("planner", true, &[N(1)]),
                    n("control", false, &[N(2)]),
                ],
                sink: vec![N(3)],
            },
            Graph {
                name: "fatigue",
                nodes: vec![n("eye", true, &[S]), n("posture", true, &[S]), n("fuse", false, &[N(0), N(1)])],
                sink: vec![N(2)],
            },
            Graph {
                name: "mixed",
                nodes: vec![n("mood", true, &[S]), n("words", false, &[S]), n("summary", true, &[N(0), N(1)])],
                sink: vec![N(2), N(1)],
            },
        ]
    }

    /// The shape called `name`.
    ///
    /// # Panics
    /// If there is none.
    pub fn named(name: &str) -> Graph {
        Graph::shapes()
            .into_iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no simulated graph {name:?}"))
    }

    /// Nodes `i` depends on, transitively.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack: Vec<usize> = self.nodes[i]
            .inputs
            .iter()
            .filter_map(|x| match x {
                Input::Node(j) => Some(*j),
                Input::Source => None,
            })
            .collect();
        while let Some(j) = stack.pop() {
            if !out.contains(&j) {
                out.push(j);
                stack.extend(self.nodes[j].inputs.iter().filter_map(|x| match x {
                    Input::Node(k) => Some(*k),
                    Input::Source => None,
                }));
            }
        }
        out.sort();
        out
    }

    /// Nodes that depend on `i`, transitively.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&j| self.ancestors(j).contains(&i)).collect()
    }

    /// Stateful nodes.
    pub fn stateful(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].stateful).collect()
    }

    /// Stateful nodes every sink result depends on.
    pub fn sink_stateful(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self
            .sink
            .iter()
            .filter_map(|x| match x {
                Input::Node(j) => Some(*j),
                Input::Source => None,
            })
            .flat_map(|j| {
                let mut a = self.ancestors(j);
                a.push(j);
                a
            })
            .filter(|j| self.nodes[*j].stateful)
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Where executors sit: hosts of each node and backups of stateful ones.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Per node: the worker of its (only) executor / primary.
    pub primary: Vec<WorkerId>,
    /// Per node: the backup's worker (stateful nodes).
    pub backup: Vec<Option<WorkerId>>,
}

/// Places like `hams` does: round-robin, backups on another process when there is one.
pub fn place(g: &Graph, workers: usize, threads: usize) -> Placement {
    let processes = workers / threads;
    let mut primary = Vec::new();
    let mut backup = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let p = i % workers;
        primary.push(WorkerId(p));
        backup.push(node.stateful.then(|| {
            if processes > 1 {
                WorkerId((p + threads) % workers)
            } else {
                WorkerId((p + 1) % workers)
            }
        }));
    }
    Placement { primary, backup }
}

/// 64-bit FNV-1a over words.
pub fn mix(h: u64, x: u64) -> u64 {
    x.to_le_bytes().iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A session's fingerprint before its first execution.
pub fn origin(model: ModelId, session: SessionId) -> Fingerprint {
    Fingerprint(mix(mix(0xcbf2_9ce4_8422_2325, model.0 as u64), session.0))
}

fn digest(v: &[f32]) -> u64 {
    v.iter().fold(7, |h, x| mix(h, x.to_bits() as u64))
}

/// The input a generated request carries.
pub fn request_input(seq: Seq) -> Vec<f32> {
    let h = mix(0x9e37, seq.0);
    vec![(h % 1000) as f32 / 1000.0, ((h >> 20) % 1000) as f32 / 500.0 - 1.0]
}

/// The state vector width of stateful models.
pub const STATE: usize = 2;

/// Runs one batch on a simulated model; `draw` yields each execution's noise draw.
pub fn run_batch(
    model: ModelId,
    stateful: bool,
    sessions: &mut BTreeMap<SessionId, SessionState>,
    req: &InferRequest,
    mut draw: impl FnMut() -> u64,
) -> InferResponse {
    let mut outputs = Vec::with_capacity(req.items.len());
    let mut changed = BTreeMap::new();
    for item in &req.items {
        let input: Vec<f32> = match &item.input {
            Values::F32(v) => v.clone(),
            Values::Tokens(t) => t.iter().map(|x| *x as f32).collect(),
        };
        if !stateful {
            let s: f32 = input.iter().sum();
            let out = vec![(s * 0.5 + model.0 as f32).sin(), (s * 0.25).cos()];
            outputs.push(ItemResult {
                outcome: Ok(out),
                prev_fp: Fingerprint(0),
                fp: Fingerprint(0),
            });
            continue;
        }
        let Some(session) = item.session else {
            outputs.push(refused(ErrorKind::UnknownSession, "no session".into(), Fingerprint(0)));
            continue;
        };
        let open = sessions.get(&session);
        let (prev_fp, state) = match (item.start, open) {
            (true, _) => (origin(model, session), vec![0.0; STATE]),
            (false, Some(s)) => (s.fp, s.state.clone()),
            (false, None) => {
                outputs.push(refused(
                    ErrorKind::UnknownSession,
                    format!("session {session} not open"),
                    Fingerprint(0),
                ));
                continue;
            }
        };
        let d = draw();
        let noise = (d % 1000) as f32 * 1e-6;
        let s: f32 = input.iter().sum();
        let new: Vec<f32> = state
            .iter()
            .enumerate()
            .map(|(k, x)| (x * 0.5 + s * (k as f32 + 1.0) * 0.3 + noise).tanh())
            .collect();
        let fp = Fingerprint(mix(mix(mix(mix(prev_fp.0, item.seq.0), digest(&input)), d), digest(&new)));
        let out: Vec<f32> = new.iter().map(|x| x * 2.0 + s * 0.1).collect();
        if item.end {
            sessions.remove(&session);
            changed.insert(session, None);
        } else {
            let st = SessionState { state: new, fp };
            sessions.insert(session, st.clone());
            changed.insert(session, Some(st));
        }
        outputs.push(ItemResult {
            outcome: Ok(out),
            prev_fp,
            fp,
        });
    }
    InferResponse {
        ticket: req.ticket,
        outputs,
        delta: changed
            .into_iter()
            .map(|(session, state)| SessionUpdate { session, state })
            .collect(),
        draws: Vec::new(),
        compute_us: 0,
    }
}

fn refused(kind: ErrorKind, message: String, fp: Fingerprint) -> ItemResult {
    ItemResult {
        outcome: Err(ItemError { kind, message }),
        prev_fp: fp,
        fp,
    }
}
