//! A validated service graph: nodes in topological order with inferred shapes.
//!
//! # Examples
//! ```
//! use hams_dataflow::{GraphDef, NodeDef, SourceDef};
//! let graph = GraphDef::new("chain", SourceDef::features([8]).sessions(4, 16))
//!     .node(NodeDef::mlp("embed", [16]).inputs(["source"]).output(8))
//!     .node(NodeDef::lstm("tracker", 16).inputs(["embed"]).output(4))
//!     .sink(["tracker"])
//!     .build()
//!     .unwrap();
//! assert_eq!(graph.nodes.len(), 2);
//! assert!(graph.nodes[1].spec.is_stateful());
//!
//! let err = GraphDef::new("bad", SourceDef::features([8]))
//!     .node(NodeDef::mlp("a", [4]).inputs(["nowhere"]).output(2))
//!     .sink(["a"])
//!     .build()
//!     .unwrap_err();
//! assert!(err.to_string().contains("unknown input \"nowhere\""));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use hams_operators::model::{weights, Arch, ModelSpec, Weights};
use hams_storage::{Generator, InputKind};

use crate::def::{ElemType, GraphDef, Hidden, NodeDef, SourceDef};
use crate::error::{Error, Result};

/// Largest size of any one dimension, and of a request's element count.
pub const MAX_DIM: usize = 1 << 24;
/// Most hidden layers of one MLP.
const MAX_LAYERS: usize = 1024;

/// An input of a node: the source or another node (by index into [`Graph::nodes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The request source.
    Source,
    /// A model node.
    Node(usize),
}

/// A checked model node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Position in [`Graph::nodes`] (topological order); lineage tags carry it.
    pub index: u16,
    /// Inputs, joined by `seq` in this order when several.
    pub inputs: Vec<Input>,
    /// The model.
    pub spec: ModelSpec,
    /// Largest batch per forward pass.
    pub batch: usize,
    /// Data-parallel executors (1 for stateful nodes).
    pub replicas: usize,
}

/// A checked service graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Service name.
    pub name: String,
    /// Where the definition came from (file path or `graph NAME`), for messages.
    pub origin: String,
    /// The source.
    pub source: SourceDef,
    /// Model nodes in topological order.
    pub nodes: Vec<Node>,
    /// Inputs of the sink.
    pub sink: Vec<Input>,
    /// Kafka topic the released results also go to.
    pub sink_kafka: Option<crate::kafka::KafkaTopic>,
}

#[derive(Clone, Copy, PartialEq)]
struct Port {
    ty: ElemType,
    len: usize,
}

impl GraphDef {
    /// Checks the definition and resolves it into a [`Graph`].
    pub fn build(self) -> Result<Graph> {
        let origin = format!("graph {}", self.name);
        self.build_from(&origin)
    }

    /// As [`GraphDef::build`], naming `origin` (the file) in errors.
    pub fn build_from(self, origin: &str) -> Result<Graph> {
        Checker { origin, def: &self }.check()
    }
}

struct Checker<'a> {
    origin: &'a str,
    def: &'a GraphDef,
}

impl Checker<'_> {
    fn node_err(&self, node: &str, message: impl Into<String>) -> Error {
        Error::Node {
            origin: self.origin.into(),
            node: node.into(),
            message: message.into(),
        }
    }

    fn check(&self) -> Result<Graph> {
        let def = self.def;
        let src = &def.source;
        if src.shape.is_empty() || src.shape.contains(&0) {
            return Err(self.node_err("source", format!("shape {:?} must be non-empty with no zero dimension", src.shape)));
        }
        let elements = src.shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
        if elements.is_none_or(|n| n > MAX_DIM) {
            return Err(self.node_err(
                "source",
                format!("shape {:?} has more than {MAX_DIM} elements per request", src.shape),
            ));
        }
        if src.input == ElemType::Tokens && src.vocab.is_none_or(|v| v == 0) {
            return Err(self.node_err("source", "token input needs a `vocab` of at least 1"));
        }
        if src.kind == crate::def::SourceKind::Kafka && (src.brokers.is_empty() || src.topic.as_deref().is_none_or(str::is_empty)) {
            return Err(self.node_err("source", "a kafka source needs `brokers` and `topic`"));
        }
        if let Some(k) = &def.sink.kafka {
            if k.brokers.is_empty() || k.topic.is_empty() {
                return Err(self.node_err("sink", "kafka needs `brokers` and `topic`"));
            }
        }
        if src.sessions > 0 && src.session_len == 0 {
            return Err(self.node_err("source", "session_len must be at least 1"));
        }
        // Names.
        let mut by_name = BTreeMap::new();
        for (i, n) in def.nodes.iter().enumerate() {
            if n.name == "source" || n.name == "sink" || n.name.is_empty() {
                return Err(self.node_err(&n.name, "`source` and `sink` are reserved; names must be non-empty"));
            }
            if by_name.insert(n.name.as_str(), i).is_some() {
                return Err(self.node_err(&n.name, "defined twice"));
            }
        }
        let resolve = |owner: &str, inputs: &[String]| -> Result<Vec<Option<usize>>> {
            if inputs.is_empty() {
                return Err(self.node_err(owner, "has no inputs"));
            }
            let mut seen = BTreeSet::new();
            inputs
                .iter()
                .map(|i| {
                    if !seen.insert(i) {
                        return Err(self.node_err(owner, format!("input {i:?} listed twice")));
                    }
                    if i == "source" {
                        Ok(None)
                    } else {
                        by_name
                            .get(i.as_str())
                            .map(|&j| Some(j))
                            .ok_or_else(|| self.node_err(owner, format!("unknown input {i:?}")))
                    }
                })
                .collect()
        };
        let edges: Vec<Vec<Option<usize>>> = def.nodes.iter().map(|n| resolve(&n.name, &n.inputs)).collect::<Result<_>>()?;
        let sink_edges = resolve("sink", &def.sink.inputs)?;
        let order = self.topo_order(&edges)?;
        // Every node must feed the sink, or its work would be lost.
        let mut used = vec![false; def.nodes.len()];
        for e in edges.iter().flatten().chain(sink_edges.iter()).flatten() {
            used[*e] = true;
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(self.node_err(&def.nodes[i].name, "its output goes nowhere (not an input of any node or the sink)"));
        }
        // Shapes, in topological order.
        let source_port = Port {
            ty: src.input,
            len: src.shape.iter().product(),
        };
        let mut ports: Vec<Option<Port>> = vec![None; def.nodes.len()];
        let mut position = vec![0usize; def.nodes.len()];
        let mut nodes = Vec::with_capacity(def.nodes.len());
        for (pos, &i) in order.iter().enumerate() {
            position[i] = pos;
            let n = &def.nodes[i];
            let incoming: Vec<Port> = edges[i]
                .iter()
                .map(|e| e.map_or(source_port, |j| ports[j].expect("topological order")))
                .collect();
            let (spec, replicas) = self.model(n, &incoming)?;
            ports[i] = Some(Port {
                ty: ElemType::F32,
                len: spec.output_len,
            });
            nodes.push(Node {
                index: pos as u16,
                inputs: Vec::new(),
                spec,
                batch: n.batch.max(1),
                replicas,
            });
        }
        let map = |e: &Option<usize>| e.map_or(Input::Source, |j| Input::Node(position[j]));
        for (pos, &i) in order.iter().enumerate() {
            nodes[pos].inputs = edges[i].iter().map(map).collect();
        }
        if sink_edges.contains(&None) && sink_edges.len() > 1 && src.input == ElemType::Tokens {
            return Err(self.node_err("sink", "cannot join token requests with model outputs"));
        }
        let needs_sessions = nodes.iter().find(|n| n.spec.is_stateful());
        if let (Some(n), 0) = (needs_sessions, src.sessions) {
            return Err(self.node_err(&n.spec.name, "is stateful but the source has no sessions (set source.sessions)"));
        }
        Ok(Graph {
            name: def.name.clone(),
            origin: self.origin.into(),
            source: src.clone(),
            nodes,
            sink: sink_edges.iter().map(map).collect(),
            sink_kafka: def.sink.kafka.clone(),
        })
    }

    fn topo_order(&self, edges: &[Vec<Option<usize>>]) -> Result<Vec<usize>> {
        // Depth-first, reporting the first cycle found with its path.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        fn visit(
            i: usize,
            edges: &[Vec<Option<usize>>],
            mark: &mut [Mark],
            stack: &mut Vec<usize>,
            order: &mut Vec<usize>,
        ) -> std::result::Result<(), Vec<usize>> {
            match mark[i] {
                Mark::Done => return Ok(()),
                Mark::Active => {
                    let from = stack.iter().position(|&s| s == i).expect("active nodes are on the stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(i);
                    return Err(cycle);
                }
                Mark::New => {}
            }
            mark[i] = Mark::Active;
            stack.push(i);
            for j in edges[i].iter().flatten() {
                visit(*j, edges, mark, stack, order)?;
            }
            stack.pop();
            mark[i] = Mark::Done;
            order.push(i);
            Ok(())
        }
        let mut mark = vec![Mark::New; edges.len()];
        let mut order = Vec::with_capacity(edges.len());
        for i in 0..edges.len() {
            visit(i, edges, &mut mark, &mut Vec::new(), &mut order).map_err(|cycle| Error::Cycle {
                origin: self.origin.into(),
                path: cycle
                    .iter()
                    .rev()
                    .map(|&j| self.def.nodes[j].name.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> "),
            })?;
        }
        Ok(order)
    }

    fn model(&self, n: &NodeDef, incoming: &[Port]) -> Result<(ModelSpec, usize)> {
        let err = |m: String| self.node_err(&n.name, m);
        // Bounded before any arithmetic on them, so no product or sum below can overflow.
        let hidden: &[usize] = match &n.hidden {
            Some(Hidden::Many(h)) => h,
            Some(Hidden::One(h)) => std::slice::from_ref(h),
            None => &[],
        };
        let sizes = [
            ("output", Some(n.output)),
            ("input", n.input),
            ("channels", n.channels),
            ("height", n.height),
            ("filters", n.filters),
            ("kernel", n.kernel),
            ("vocab", n.vocab),
            ("embed", n.embed),
            ("state", n.state),
            ("batch", Some(n.batch)),
            ("replicas", n.replicas),
        ];
        let hidden_sizes = hidden.iter().map(|h| ("hidden", Some(*h)));
        if let Some((what, v)) = sizes.into_iter().chain(hidden_sizes).find(|(_, v)| v.is_some_and(|v| v > MAX_DIM)) {
            return Err(err(format!("{what} = {}: sizes are at most {MAX_DIM}", v.unwrap_or(0))));
        }
        if hidden.len() > MAX_LAYERS {
            return Err(err(format!("{} hidden layers: at most {MAX_LAYERS}", hidden.len())));
        }
        let need = |v: Option<usize>, what: &str| {
            v.filter(|x| *x > 0)
                .ok_or_else(|| err(format!("a {} model needs `{what}` (> 0)", n.model)))
        };
        let hidden_one = || match &n.hidden {
            Some(Hidden::One(h)) if *h > 0 => Ok(*h),
            _ => Err(err(format!("a {} model needs `hidden` as one width > 0", n.model))),
        };
        let tokens = incoming.iter().any(|p| p.ty == ElemType::Tokens);
        if tokens && incoming.len() > 1 {
            return Err(err("cannot join token requests with other inputs".into()));
        }
        let len: usize = incoming.iter().map(|p| p.len).sum();
        let arch = match n.model.as_str() {
            "mlp" => Arch::Mlp {
                hidden: match &n.hidden {
                    Some(Hidden::Many(h)) => h.clone(),
                    Some(Hidden::One(h)) => vec![*h],
                    None => Vec::new(),
                },
            },
            "cnn1d" => Arch::Cnn1d {
                channels: need(n.channels, "channels")?,
                filters: need(n.filters, "filters")?,
                kernel: need(n.kernel, "kernel")?,
            },
            "cnn2d" => Arch::Cnn2d {
                channels: need(n.channels, "channels")?,
                height: need(n.height, "height")?,
                filters: need(n.filters, "filters")?,
                kernel: need(n.kernel, "kernel")?,
            },
            "lstm" => Arch::Lstm { hidden: hidden_one()? },
            "gru" => Arch::Gru { hidden: hidden_one()? },
            "text" => Arch::Text {
                vocab: need(n.vocab, "vocab")?,
                embed: need(n.embed, "embed")?,
            },
            "torchscript" => {
                let file = n
                    .file
                    .clone()
                    .ok_or_else(|| err("a torchscript model needs `file` (a torch.jit.save module)".into()))?;
                if !file.exists() {
                    return Err(err(format!("TorchScript file {} does not exist", file.display())));
                }
                if n.backend != hams_operators::model::BackendKind::Tch {
                    return Err(err("a torchscript model runs on backend = \"tch\"".into()));
                }
                if n.weights.is_some() {
                    return Err(err("a torchscript module carries its own weights; remove `weights`".into()));
                }
                Arch::TorchScript {
                    file,
                    state: n.state.unwrap_or(0),
                }
            }
            other => {
                return Err(err(format!(
                    "unknown model {other:?} (expected mlp, cnn1d, cnn2d, lstm, gru, text or torchscript)"
                )))
            }
        };
        if let Arch::Mlp { hidden } = &arch {
            if hidden.contains(&0) {
                return Err(err("hidden widths must be > 0".into()));
            }
        }
        if !hams_operators::model::backend_available(n.backend) {
            return Err(err(format!(
                "backend {:?} is not in this build (rebuild with `--features torch`; see README)",
                n.backend
            )));
        }
        if n.output == 0 {
            return Err(err("`output` must be > 0".into()));
        }
        // Types and shapes between connected nodes.
        if arch.takes_tokens() != tokens {
            let (want, got) = if tokens {
                ("f32 features", "tokens")
            } else {
                ("tokens", "f32 features")
            };
            return Err(err(format!(
                "type mismatch: a {} model takes {want}, its input gives {got}",
                n.model
            )));
        }
        if let Some(declared) = n.input {
            if declared != len {
                return Err(err(format!("shape mismatch: declares input {declared}, its inputs give {len}")));
            }
        }
        match &arch {
            Arch::Cnn1d { channels, kernel, .. } | Arch::Cnn2d { channels, kernel, .. } => {
                let per = match &arch {
                    Arch::Cnn2d { height, .. } => channels * height,
                    _ => *channels,
                };
                if len % per != 0 || len == 0 {
                    return Err(err(format!(
                        "shape mismatch: {len} input elements do not form {} of {per}",
                        if per == *channels { "channels" } else { "channels x height" }
                    )));
                }
                if kernel % 2 == 0 {
                    return Err(err(format!("kernel {kernel} must be odd")));
                }
            }
            Arch::Text { vocab, .. } => {
                if let Some(v) = self.def.source.vocab {
                    if v as usize > *vocab {
                        return Err(err(format!("shape mismatch: vocab {vocab} is smaller than the source's {v}")));
                    }
                }
            }
            _ => {}
        }
        let stateful = arch.is_stateful();
        if let Some(s) = n.stateful {
            if s != stateful {
                return Err(err(format!(
                    "declared stateful = {s}, but a {} model is {}",
                    n.model,
                    if stateful { "stateful" } else { "stateless" }
                )));
            }
        }
        let replicas = n.replicas.unwrap_or(1);
        if replicas == 0 || (stateful && replicas > 1) {
            return Err(err(format!(
                "replicas = {replicas}: must be >= 1, and 1 for stateful models (they have a backup instead)"
            )));
        }
        if n.batch == 0 {
            return Err(err("batch must be >= 1".into()));
        }
        let seed = n
            .seed
            .unwrap_or_else(|| n.name.bytes().fold(0x51ed_u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
        let spec = ModelSpec {
            name: n.name.clone(),
            arch,
            input_len: len,
            output_len: n.output,
            weights: match &n.weights {
                Some(p) => Weights::File(p.clone()),
                None => Weights::Seeded(seed),
            },
            backend: n.backend,
            device: n.device.clone(),
            noise: 0.0,
        };
        hams_operators::model::check_loadable(&spec).map_err(|e| err(e.to_string()))?;
        if let Weights::File(_) = &spec.weights {
            let params = weights::resolve(&spec).map_err(|e| err(e.to_string()))?;
            drop(params);
        }
        Ok((spec, replicas))
    }
}

impl Graph {
    /// The request generator this graph's source describes.
    pub fn generator(&self) -> Generator {
        let s = &self.source;
        let len = s.shape.iter().product();
        Generator {
            seed: s.seed,
            input: match s.input {
                ElemType::F32 => InputKind::F32 { len },
                ElemType::Tokens => InputKind::Tokens {
                    len,
                    vocab: s.vocab.unwrap_or(1),
                },
            },
            sessions: s.sessions,
            session_len: s.session_len,
        }
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.spec.name == name)
    }

    /// Nodes upstream of node `i` (transitively), in graph order.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = self.nodes[i]
            .inputs
            .iter()
            .filter_map(|x| match x {
                Input::Node(j) => Some(*j),
                Input::Source => None,
            })
            .collect();
        while let Some(j) = stack.pop() {
            if !std::mem::replace(&mut seen[j], true) {
                stack.extend(self.nodes[j].inputs.iter().filter_map(|x| match x {
                    Input::Node(k) => Some(*k),
                    Input::Source => None,
                }));
            }
        }
        (0..self.nodes.len()).filter(|j| seen[*j]).collect()
    }

    /// Nodes downstream of node `i` (transitively), in graph order.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|j| self.ancestors(*j).contains(&i)).collect()
    }

    /// Indices of the stateful nodes.
    pub fn stateful(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].spec.is_stateful()).collect()
    }
}
