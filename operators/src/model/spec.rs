//! What a model is: architecture, sizes, weights and backend options.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The architectures of the model zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arch {
    /// Multi-layer perceptron with ReLU between layers.
    Mlp {
        /// Hidden layer widths.
        hidden: Vec<usize>,
    },
    /// 1-D convolution over `[channels, length]`, ReLU, global average pool, linear head.
    Cnn1d {
        /// Input channels.
        channels: usize,
        /// Convolution filters.
        filters: usize,
        /// Kernel width (odd; padded to keep the length).
        kernel: usize,
    },
    /// 2-D convolution over `[channels, height, width]`, ReLU, global average pool, linear head.
    Cnn2d {
        /// Input channels.
        channels: usize,
        /// Input height.
        height: usize,
        /// Convolution filters.
        filters: usize,
        /// Kernel size (odd; padded to keep the size).
        kernel: usize,
    },
    /// One LSTM layer stepped once per request, state `(h, c)` per session; linear head on `h`.
    Lstm {
        /// Hidden size.
        hidden: usize,
    },
    /// One GRU layer stepped once per request, state `h` per session; linear head on `h`.
    Gru {
        /// Hidden size.
        hidden: usize,
    },
    /// Token embedding, mean pool, linear head and softmax.
    Text {
        /// Vocabulary size.
        vocab: usize,
        /// Embedding width.
        embed: usize,
    },
    /// A TorchScript module (`torch.jit.save`), run by the tch backend.
    /// Stateless: `forward(x[B, in]) -> y[B, out]`. Stateful (`state > 0`):
    /// `forward(x[B, in], state[B, state]) -> (y[B, out], new_state[B, state])`,
    /// or one tensor `[B, out + state]` holding both side by side (as a traced
    /// module must return).
    #[serde(rename = "torchscript")]
    TorchScript {
        /// The `.pt` file.
        file: PathBuf,
        /// Elements of one session's state (0: stateless).
        state: usize,
    },
}

impl Arch {
    /// True for models with per-session state.
    pub fn is_stateful(&self) -> bool {
        self.state_len() > 0
    }

    /// Elements of one session's state (0 for stateless models).
    pub fn state_len(&self) -> usize {
        match self {
            Arch::Lstm { hidden } => 2 * hidden,
            Arch::Gru { hidden } => *hidden,
            Arch::TorchScript { state, .. } => *state,
            _ => 0,
        }
    }

    /// True when the model reads token ids rather than features.
    pub fn takes_tokens(&self) -> bool {
        matches!(self, Arch::Text { .. })
    }

    /// Short name, as in graph files.
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Mlp { .. } => "mlp",
            Arch::Cnn1d { .. } => "cnn1d",
            Arch::Cnn2d { .. } => "cnn2d",
            Arch::Lstm { .. } => "lstm",
            Arch::Gru { .. } => "gru",
            Arch::Text { .. } => "text",
            Arch::TorchScript { .. } => "torchscript",
        }
    }
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    /// PyTorch-style uniform init from this seed.
    Seeded(u64),
    /// A safetensors file with PyTorch parameter names.
    File(PathBuf),
}

/// Which tensor library runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// candle on CPU (default).
    #[default]
    Candle,
    /// libtorch through tch (the `torch` feature).
    Tch,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "candle" => Ok(BackendKind::Candle),
            "tch" | "torch" => Ok(BackendKind::Tch),
            other => Err(format!("unknown backend {other:?} (expected candle or tch)")),
        }
    }
}

/// Everything needed to instantiate one model in an executor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Graph node name.
    pub name: String,
    /// Architecture and sizes.
    pub arch: Arch,
    /// Flattened input elements per request.
    pub input_len: usize,
    /// Output elements per request.
    pub output_len: usize,
    /// Weight source.
    pub weights: Weights,
    /// Backend.
    pub backend: BackendKind,
    /// Device string (`cpu`, `cuda:0`, `auto`).
    pub device: String,
    /// GPU-like non-determinism: relative perturbation of outputs and states per execution (0 = off).
    pub noise: f32,
}

impl ModelSpec {
    /// True for models with per-session state.
    pub fn is_stateful(&self) -> bool {
        self.arch.is_stateful()
    }
}
