//! Service graph definitions: what users write, in TOML or with the Rust builder.

use std::path::PathBuf;

use hams_operators::model::BackendKind;
use serde::{Deserialize, Serialize};

/// A service graph as written: a source, model nodes, a sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphDef {
    /// Service name.
    pub name: String,
    /// Where requests come from.
    pub source: SourceDef,
    /// Model nodes (`[[node]]` tables), in any order.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeDef>,
    /// Where results go.
    pub sink: SinkDef,
}

/// Element type of a request tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ElemType {
    /// Real-valued features.
    #[default]
    F32,
    /// Token ids.
    Tokens,
}

/// Where the requests of a run come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The seeded request generator, logged to the embedded source topic.
    #[default]
    Generator,
    /// Requests already in (or appended to) the embedded source topic.
    Log,
    /// A Kafka topic (`brokers`, `topic`).
    Kafka,
}

fn default_session_len() -> u32 {
    16
}

/// The source node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// Generator or embedded log.
    #[serde(default)]
    pub kind: SourceKind,
    /// Element type of requests.
    #[serde(default)]
    pub input: ElemType,
    /// Shape of a request tensor.
    pub shape: Vec<usize>,
    /// Vocabulary of token requests.
    #[serde(default)]
    pub vocab: Option<u32>,
    /// Concurrent sessions per partition (0: requests have no session).
    #[serde(default)]
    pub sessions: u32,
    /// Requests per session.
    #[serde(default = "default_session_len")]
    pub session_len: u32,
    /// Generator seed.
    #[serde(default)]
    pub seed: u64,
    /// Kafka bootstrap brokers (`kind = "kafka"`).
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Kafka topic of requests (`kind = "kafka"`).
    #[serde(default)]
    pub topic: Option<String>,
}

/// Hidden sizes: a list for MLPs, one width for recurrent models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hidden {
    /// One width.
    One(usize),
    /// Layer widths.
    Many(Vec<usize>),
}

fn default_batch() -> usize {
    64
}

fn default_device() -> String {
    "cpu".into()
}

/// One model node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    /// Unique name (not `source` or `sink`).
    pub name: String,
    /// Architecture: `mlp`, `cnn1d`, `cnn2d`, `lstm`, `gru`, `text`.
    pub model: String,
    /// Upstream nodes (`source` or node names); several inputs are joined by `seq`.
    pub inputs: Vec<String>,
    /// Output width.
    pub output: usize,
    /// Expected input length; checked against what the inputs produce.
    #[serde(default)]
    pub input: Option<usize>,
    /// Hidden width(s).
    #[serde(default)]
    pub hidden: Option<Hidden>,
    /// CNN input channels.
    #[serde(default)]
    pub channels: Option<usize>,
    /// CNN-2D input height.
    #[serde(default)]
    pub height: Option<usize>,
    /// CNN filters.
    #[serde(default)]
    pub filters: Option<usize>,
    /// CNN kernel size.
    #[serde(default)]
    pub kernel: Option<usize>,
    /// Text vocabulary.
    #[serde(default)]
    pub vocab: Option<usize>,
    /// Text embedding width.
    #[serde(default)]
    pub embed: Option<usize>,
    /// TorchScript module file (`model = "torchscript"`).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// TorchScript state elements per session (0 or absent: stateless).
    #[serde(default)]
    pub state: Option<usize>,
    /// Stateful (per-session state): implied by `lstm`/`gru`; stating it is checked.
    #[serde(default)]
    pub stateful: Option<bool>,
    /// Largest batch per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Data-parallel executors of a stateless node.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// Backend.
    #[serde(default)]
    pub backend: BackendKind,
    /// Device: `cpu`, `cuda:N`, `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// safetensors file with PyTorch parameter names (default: seeded init).
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// Seed of the init (default: derived from the node name).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The sink node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    /// Nodes whose outputs are the result (several are joined by `seq`).
    pub inputs: Vec<String>,
    /// Also publish every released result to this Kafka topic (exactly once, keyed by `seq`).
    #[serde(default)]
    pub kafka: Option<crate::kafka::KafkaTopic>,
}

impl NodeDef {
    fn new(name: &str, model: &str) -> Self {
        NodeDef {
            name: name.into(),
            model: model.into(),
            inputs: Vec::new(),
            output: 0,
            input: None,
            hidden: None,
            channels: None,
            height: None,
            filters: None,
            kernel: None,
            vocab: None,
            embed: None,
            file: None,
            state: None,
            stateful: None,
            batch: default_batch(),
            replicas: None,
            backend: BackendKind::Candle,
            device: default_device(),
            weights: None,
            seed: None,
        }
    }

    /// A TorchScript module run by the tch backend; `state` > 0 makes it stateful.
    pub fn torchscript(name: &str, file: impl Into<PathBuf>, state: usize) -> Self {
        NodeDef {
            file: Some(file.into()),
            state: Some(state),
            backend: BackendKind::Tch,
            ..Self::new(name, "torchscript")
        }
    }

    /// A multi-layer perceptron.
    pub fn mlp(name: &str, hidden: impl Into<Vec<usize>>) -> Self {
        NodeDef {
            hidden: Some(Hidden::Many(hidden.into())),
            ..Self::new(name, "mlp")
        }
    }
    /// A 1-D CNN over `[channels, length]`.
    pub fn cnn1d(name: &str, channels: usize, filters: usize, kernel: usize) -> Self {
        NodeDef {
            channels: Some(channels),
            filters: Some(filters),
            kernel: Some(kernel),
            ..Self::new(name, "cnn1d")
        }
    }
    /// A 2-D CNN over `[channels, height, width]`.
    pub fn cnn2d(name: &str, channels: usize, height: usize, filters: usize, kernel: usize) -> Self {
        NodeDef {
            channels: Some(channels),
            height: Some(height),
            filters: Some(filters),
            kernel: Some(kernel),
            ..Self::new(name, "cnn2d")
        }
    }
    /// A stateful LSTM, one step per request and session.
    pub fn lstm(name: &str, hidden: usize) -> Self {
        NodeDef {
            hidden: Some(Hidden::One(hidden)),
            ..Self::new(name, "lstm")
        }
    }
    /// A stateful GRU, one step per request and session.
    pub fn gru(name: &str, hidden: usize) -> Self {
        NodeDef {
            hidden: Some(Hidden::One(hidden)),
            ..Self::new(name, "gru")
        }
    }
    /// An embedding + mean-pool text classifier over token ids.
    pub fn text(name: &str, vocab: usize, embed: usize) -> Self {
        NodeDef {
            vocab: Some(vocab),
            embed: Some(embed),
            ..Self::new(name, "text")
        }
    }
    /// Upstream nodes.
    pub fn inputs<S: Into<String>>(mut self, inputs: impl IntoIterator<Item = S>) -> Self {
        self.inputs = inputs.into_iter().map(Into::into).collect();
        self
    }
    /// Output width.
    pub fn output(mut self, n: usize) -> Self {
        self.output = n;
        self
    }
    /// Largest batch per forward pass.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }
    /// Data-parallel executors (stateless nodes).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = Some(n);
        self
    }
    /// Backend.
    pub fn backend(mut self, b: BackendKind) -> Self {
        self.backend = b;
        self
    }
    /// Device string.
    pub fn device(mut self, d: &str) -> Self {
        self.device = d.into();
        self
    }
    /// safetensors weights.
    pub fn weights(mut self, path: impl Into<PathBuf>) -> Self {
        self.weights = Some(path.into());
        self
    }
    /// Init seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl SourceDef {
    /// Generated feature requests of `shape`.
    pub fn features(shape: impl Into<Vec<usize>>) -> Self {
        SourceDef {
            kind: SourceKind::Generator,
            input: ElemType::F32,
            shape: shape.into(),
            vocab: None,
            sessions: 0,
            session_len: default_session_len(),
            seed: 0,
            brokers: Vec::new(),
            topic: None,
        }
    }
    /// Generated token requests of `len` ids below `vocab`.
    pub fn tokens(len: usize, vocab: u32) -> Self {
        SourceDef {
            input: ElemType::Tokens,
            vocab: Some(vocab),
            ..Self::features(vec![len])
        }
    }
    /// Sessions: `concurrent` per partition, `len` requests each.
    pub fn sessions(mut self, concurrent: u32, len: u32) -> Self {
        self.sessions = concurrent;
        self.session_len = len;
        self
    }
    /// Generator seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl GraphDef {
    /// Starts a graph definition.
    pub fn new(name: &str, source: SourceDef) -> Self {
        GraphDef {
            name: name.into(),
            source,
            nodes: Vec::new(),
            sink: SinkDef {
                inputs: Vec::new(),
                kafka: None,
            },
        }
    }
    /// Adds a model node.
    pub fn node(mut self, node: NodeDef) -> Self {
        self.nodes.push(node);
        self
    }
    /// Sets the sink's inputs.
    pub fn sink<S: Into<String>>(mut self, inputs: impl IntoIterator<Item = S>) -> Self {
        self.sink.inputs = inputs.into_iter().map(Into::into).collect();
        self
    }

    /// Parses a TOML graph; errors name `origin` (the file).
    pub fn from_toml(text: &str, origin: &str) -> crate::Result<Self> {
        toml::from_str(text).map_err(|e| crate::Error::Parse {
            origin: origin.into(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })
    }

    /// Reads and parses a TOML graph file.
    pub fn from_file(path: &std::path::Path) -> crate::Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::Parse {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let mut def = Self::from_toml(&text, &origin)?;
        // Weight paths are relative to the graph file.
        if let Some(dir) = path.parent() {
            for n in &mut def.nodes {
                for path in [&mut n.weights, &mut n.file].into_iter().flatten() {
                    if path.is_relative() {
                        *path = dir.join(&*path);
                    }
                }
            }
        }
        Ok(def)
    }

    /// Multiplies hidden widths, filters and embeddings by `factor` (model scale).
    pub fn scaled(mut self, factor: usize) -> Self {
        for n in &mut self.nodes {
            match &mut n.hidden {
                Some(Hidden::One(h)) => *h *= factor,
                Some(Hidden::Many(hs)) => hs.iter_mut().for_each(|h| *h *= factor),
                None => {}
            }
            if let Some(f) = &mut n.filters {
                *f *= factor;
            }
            if let Some(e) = &mut n.embed {
                *e *= factor;
            }
        }
        self
    }
}
