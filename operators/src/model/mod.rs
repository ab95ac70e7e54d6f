//! The model zoo and the backend trait it runs on.
//!
//! A model is `f(inputs, states) -> (outputs, new_states)` over a batch: one
//! forward pass per call, whatever the batch size. Stateless models get and
//! return empty states. Inputs and outputs cross the trait as host `f32` rows,
//! because that is what crosses the executor socket anyway; each backend keeps
//! its weights on its own device.
//!
//! # Examples
//! ```
//! use hams_operators::model::{self, Arch, BackendKind, Input, ModelSpec, Weights};
//! # fn main() -> hams_operators::Result<()> {
//! let spec = ModelSpec {
//!     name: "tracker".into(),
//!     arch: Arch::Lstm { hidden: 8 },
//!     input_len: 4,
//!     output_len: 2,
//!     weights: Weights::Seeded(1),
//!     backend: BackendKind::Candle,
//!     device: "cpu".into(),
//!     noise: 0.0,
//! };
//! let mut m = model::load(&spec)?;
//! let zero = vec![0.0; 3 * spec.arch.state_len()];
//! let out = m.forward(3, Input::F32(&[0.5; 12]), &zero)?;
//! assert_eq!(out.output.len(), 3 * 2);
//! assert_eq!(out.state.len(), 3 * 16);
//! # Ok(()) }
//! ```

mod candle;
pub mod noise;
pub mod spec;
#[cfg(feature = "torch")]
mod tch;
pub mod weights;

pub use spec::{Arch, BackendKind, ModelSpec, Weights};

use crate::error::{Error, Result};

/// A batch of inputs, `rows * input_len` elements row-major.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Features.
    F32(&'a [f32]),
    /// Token ids.
    Tokens(&'a [u32]),
}

/// The result of one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// `rows * output_len` outputs.
    pub output: Vec<f32>,
    /// `rows * state_len` new states (empty for stateless models).
    pub state: Vec<f32>,
}

/// A loaded model, ready to run batches.
pub trait Model: Send {
    /// What the model is.
    fn spec(&self) -> &ModelSpec;
    /// Runs one forward pass over `rows` requests; `state` holds `rows * state_len` elements.
    fn forward(&mut self, rows: usize, input: Input<'_>, state: &[f32]) -> Result<Forward>;
}

/// True when this build can run models on `backend`.
pub fn backend_available(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Candle => true,
        BackendKind::Tch => cfg!(feature = "torch"),
    }
}

/// Checks, before anything is allocated, that `spec` can be loaded here: its
/// backend is in this build, its device exists, and its weights fit in the
/// memory this host has available (twice over: the backend copies them).
pub fn check_loadable(spec: &ModelSpec) -> Result<()> {
    let unsupported = |reason: String| Error::Unsupported {
        model: spec.name.clone(),
        reason,
    };
    match spec.backend {
        BackendKind::Candle => {
            candle::device(spec)?;
        }
        #[cfg(feature = "torch")]
        BackendKind::Tch => {
            tch::device(spec)?;
        }
        #[cfg(not(feature = "torch"))]
        BackendKind::Tch => {
            return Err(unsupported(
                "the tch backend needs hams built with the `torch` feature (see README: libtorch)".into(),
            ))
        }
    }
    let bytes = weights::param_bytes(spec)
        .ok_or_else(|| unsupported("its parameter count overflows: the sizes in the graph are far too large".into()))?;
    if let Some(available) = available_memory() {
        if bytes.saturating_mul(2) > available {
            return Err(unsupported(format!(
                "its weights need {:.1} GiB ({} parameters), and this host has {:.1} GiB of memory available",
                bytes as f64 / (1u64 << 30) as f64,
                bytes / 4,
                available as f64 / (1u64 << 30) as f64
            )));
        }
    }
    Ok(())
}

/// `MemAvailable` of this host, in bytes (`None` where /proc/meminfo is not there).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Loads `spec` on its backend.
pub fn load(spec: &ModelSpec) -> Result<Box<dyn Model>> {
    if matches!(spec.arch, Arch::TorchScript { .. }) && spec.backend != BackendKind::Tch {
        return Err(Error::Unsupported {
            model: spec.name.clone(),
            reason: "TorchScript modules run on the tch backend (backend = \"tch\")".into(),
        });
    }
    let params = weights::resolve(spec)?;
    match spec.backend {
        BackendKind::Candle => Ok(Box::new(candle::CandleModel::new(spec.clone(), &params)?)),
        #[cfg(feature = "torch")]
        BackendKind::Tch => Ok(Box::new(tch::TchModel::new(spec.clone(), &params)?)),
        #[cfg(not(feature = "torch"))]
        BackendKind::Tch => Err(Error::Unsupported {
            model: spec.name.clone(),
            reason: "the tch backend needs hams built with the `torch` feature (see README: libtorch)".into(),
        }),
    }
}

/// Checks a batch before a backend runs it; `Some` is the (empty) answer to an empty batch.
pub(crate) fn prepare(spec: &ModelSpec, rows: usize, input: Input<'_>, state: &[f32]) -> Result<Option<Forward>> {
    check_input(spec, rows, input, state)?;
    Ok((rows == 0).then(|| Forward {
        output: Vec::new(),
        state: Vec::new(),
    }))
}

/// Checks that `input` has the element type and count `spec` expects for `rows` requests.
pub fn check_input(spec: &ModelSpec, rows: usize, input: Input<'_>, state: &[f32]) -> Result<()> {
    let err = |reason: String| Error::Input {
        model: spec.name.clone(),
        reason,
    };
    let n = match input {
        Input::F32(d) if !spec.arch.takes_tokens() => d.len(),
        Input::Tokens(d) if spec.arch.takes_tokens() => d.len(),
        _ => return Err(err(format!("a {} model cannot read this element type", spec.arch.name()))),
    };
    if n != rows * spec.input_len {
        return Err(err(format!("{n} input elements for {rows} rows of {}", spec.input_len)));
    }
    if state.len() != rows * spec.arch.state_len() {
        return Err(err(format!(
            "{} state elements for {rows} rows of {}",
            state.len(),
            spec.arch.state_len()
        )));
    }
    Ok(())
}
