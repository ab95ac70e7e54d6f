//! The tch (libtorch) backend: TorchScript modules, and the zoo on `tch::nn`,
//! on CPU or CUDA. Loads the same [`Params`] as candle, so one safetensors
//! file gives the same model on both.

use tch::nn::{self, Module, RNN};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::spec::{Arch, ModelSpec};
use super::weights::Params;
use super::{prepare, Forward, Input, Model};
use crate::error::{Error, Result};

enum Net {
    Mlp(Vec<nn::Linear>),
    Cnn1d(nn::Conv1D, nn::Linear),
    Cnn2d(nn::Conv2D, nn::Linear),
    Lstm(nn::LSTM, nn::Linear),
    Gru(nn::GRU, nn::Linear),
    Text(nn::Embedding, nn::Linear),
    Script(CModule),
}

pub(crate) struct TchModel {
    spec: ModelSpec,
    device: Device,
    net: Net,
    // Keeps the parameters alive.
    _vs: nn::VarStore,
}

fn err(spec: &ModelSpec, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        model: spec.name.clone(),
        backend: "tch",
        reason: e.to_string(),
    }
}

/// `cpu`, `cuda:N` or `auto`, with a clear error when CUDA is asked for and absent.
pub(crate) fn device(spec: &ModelSpec) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    let unsupported = |reason: String| Error::Unsupported {
        model: spec.name.clone(),
        reason,
    };
    match spec.device.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        d => {
            let n: usize = d
                .strip_prefix("cuda:")
                .or_else(|| (d == "cuda").then_some("0"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| unsupported(format!("unknown device {d:?} (expected cpu, cuda:N or auto)")))?;
            let count = tch::Cuda::device_count() as usize;
            if !cuda || n >= count {
                return Err(unsupported(format!(
                    "device {d:?} requested but CUDA is not available here ({count} CUDA devices; is this a `--features cuda` build on a GPU host?)"
                )));
            }
            Ok(Device::Cuda(n))
        }
    }
}

impl TchModel {
    pub(crate) fn new(spec: ModelSpec, params: &Params) -> Result<Self> {
        let device = device(&spec)?;
        tch::set_num_threads(std::env::var("RAYON_NUM_THREADS").ok().and_then(|n| n.parse().ok()).unwrap_or(1));
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let (i, o) = (spec.input_len as i64, spec.output_len as i64);
        let net = match &spec.arch {
            Arch::Mlp { hidden } => {
                let mut dims = vec![i];
                dims.extend(hidden.iter().map(|h| *h as i64));
                dims.push(o);
                Net::Mlp(
                    dims.windows(2)
                        .enumerate()
                        .map(|(k, w)| nn::linear(&root / "layers" / k, w[0], w[1], Default::default()))
                        .collect(),
                )
            }
            Arch::Cnn1d { channels, filters, kernel } => {
                let c = nn::ConvConfig {
                    padding: (*kernel / 2) as i64,
                    ..Default::default()
                };
                Net::Cnn1d(
                    nn::conv1d(&root / "conv", *channels as i64, *filters as i64, *kernel as i64, c),
                    nn::linear(&root / "head", *filters as i64, o, Default::default()),
                )
            }
            Arch::Cnn2d {
                channels, filters, kernel, ..
            } => {
                let c = nn::ConvConfig {
                    padding: (*kernel / 2) as i64,
                    ..Default::default()
                };
                Net::Cnn2d(
                    nn::conv2d(&root / "conv", *channels as i64, *filters as i64, *kernel as i64, c),
                    nn::linear(&root / "head", *filters as i64, o, Default::default()),
                )
            }
            Arch::Lstm { hidden } => Net::Lstm(
                nn::lstm(&root / "lstm", i, *hidden as i64, Default::default()),
                nn::linear(&root / "head", *hidden as i64, o, Default::default()),
            ),
            Arch::Gru { hidden } => Net::Gru(
                nn::gru(&root / "gru", i, *hidden as i64, Default::default()),
                nn::linear(&root / "head", *hidden as i64, o, Default::default()),
            ),
            Arch::Text { vocab, embed } => Net::Text(
                nn::embedding(&root / "embedding", *vocab as i64, *embed as i64, Default::default()),
                nn::linear(&root / "head", *embed as i64, o, Default::default()),
            ),
            Arch::TorchScript { file, .. } => {
                let m = CModule::load_on_device(file, device).map_err(|e| Error::Weights {
                    model: spec.name.clone(),
                    reason: format!("{}: {e}", file.display()),
                })?;
                Net::Script(m)
            }
        };
        // Copy the named parameters in (PyTorch names, as safetensors files carry them).
        let mut vars = vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, p) in params {
                let var = vars.get_mut(name).ok_or_else(|| Error::Weights {
                    model: spec.name.clone(),
                    reason: format!("tch has no parameter {name}"),
                })?;
                let shape: Vec<i64> = p.shape.iter().map(|d| *d as i64).collect();
                var.copy_(&Tensor::from_slice(&p.data).reshape(shape.as_slice()).to_device(device));
            }
            Ok(())
        })?;
        vs.freeze();
        let model = TchModel {
            spec,
            device,
            net,
            _vs: vs,
        };
        if let Net::Script(_) = model.net {
            model.probe()?;
        }
        Ok(model)
    }

    /// Runs a TorchScript module once on zeros, so a shape mismatch is a load-time error.
    fn probe(&self) -> Result<()> {
        let spec = &self.spec;
        let x = vec![0.0f32; spec.input_len];
        let s = vec![0.0f32; spec.arch.state_len()];
        let out = self.run(1, Input::F32(&x), &s).map_err(|e| Error::Weights {
            model: spec.name.clone(),
            reason: format!(
                "TorchScript module does not fit the graph (input {}, state {}): {e}",
                spec.input_len,
                spec.arch.state_len()
            ),
        })?;
        if out.output.len() != spec.output_len || out.state.len() != spec.arch.state_len() {
            return Err(Error::Weights {
                model: spec.name.clone(),
                reason: format!(
                    "TorchScript module gives {} outputs and {} state elements per row, the graph declares {} and {}",
                    out.output.len(),
                    out.state.len(),
                    spec.output_len,
                    spec.arch.state_len()
                ),
            });
        }
        Ok(())
    }

    fn tensor(&self, data: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(data).reshape(shape).to_device(self.device)
    }

    fn run(&self, rows: usize, input: Input<'_>, state: &[f32]) -> std::result::Result<Forward, tch::TchError> {
        let (b, n) = (rows as i64, self.spec.input_len as i64);
        let feats = |shape: &[i64]| match input {
            Input::F32(d) => self.tensor(d, shape),
            Input::Tokens(_) => unreachable!("checked by check_input"),
        };
        let (out, st): (Tensor, Option<Tensor>) = tch::no_grad(|| -> std::result::Result<_, tch::TchError> {
            Ok(match &self.net {
                Net::Mlp(layers) => {
                    let mut x = feats(&[b, n]);
                    for (k, l) in layers.iter().enumerate() {
                        x = l.forward(&x);
                        if k + 1 < layers.len() {
                            x = x.relu();
                        }
                    }
                    (x, None)
                }
                Net::Cnn1d(conv, head) => {
                    let Arch::Cnn1d { channels, .. } = self.spec.arch else {
                        unreachable!()
                    };
                    let x = feats(&[b, channels as i64, n / channels as i64]);
                    let y = conv.forward(&x).relu().mean_dim(2, false, Kind::Float);
                    (head.forward(&y), None)
                }
                Net::Cnn2d(conv, head) => {
                    let Arch::Cnn2d { channels, height, .. } = self.spec.arch else {
                        unreachable!()
                    };
                    let (c, h) = (channels as i64, height as i64);
                    let x = feats(&[b, c, h, n / (c * h)]);
                    let y = conv.forward(&x).relu().mean_dim(&[2i64, 3][..], false, Kind::Float);
                    (head.forward(&y), None)
                }
                Net::Lstm(lstm, head) => {
                    let Arch::Lstm { hidden } = self.spec.arch else { unreachable!() };
                    let h = hidden as i64;
                    let s = self.tensor(state, &[b, 2 * h]);
                    let (h0, c0) = (s.narrow(1, 0, h).unsqueeze(0), s.narrow(1, h, h).unsqueeze(0));
                    let nn::LSTMState((h1, c1)) = lstm.step(&feats(&[b, n]), &nn::LSTMState((h0, c0)));
                    let (h1, c1) = (h1.squeeze_dim(0), c1.squeeze_dim(0));
                    (head.forward(&h1), Some(Tensor::cat(&[&h1, &c1], 1)))
                }
                Net::Gru(gru, head) => {
                    let Arch::Gru { hidden } = self.spec.arch else { unreachable!() };
                    let h0 = self.tensor(state, &[b, hidden as i64]).unsqueeze(0);
                    let nn::GRUState(h1) = gru.step(&feats(&[b, n]), &nn::GRUState(h0));
                    let h1 = h1.squeeze_dim(0);
                    (head.forward(&h1), Some(h1))
                }
                Net::Text(embedding, head) => {
                    let Input::Tokens(ids) = input else {
                        unreachable!("checked by check_input")
                    };
                    let ids: Vec<i64> = ids.iter().map(|t| *t as i64).collect();
                    let ids = Tensor::from_slice(&ids).reshape([b, n]).to_device(self.device);
                    let pooled = embedding.forward(&ids).mean_dim(1, false, Kind::Float);
                    (head.forward(&pooled).softmax(-1, Kind::Float), None)
                }
                Net::Script(m) => {
                    let x = feats(&[b, n]);
                    let state_len = self.spec.arch.state_len() as i64;
                    if state_len == 0 {
                        (m.forward_ts(&[x])?, None)
                    } else {
                        let s = self.tensor(state, &[b, state_len]);
                        match m.forward_is(&[IValue::Tensor(x), IValue::Tensor(s)])? {
                            // One tensor: outputs then new state, side by side (what tracing can export).
                            IValue::Tensor(t) => {
                                let out_len = self.spec.output_len as i64;
                                (t.narrow(1, 0, out_len), Some(t.narrow(1, out_len, state_len)))
                            }
                            IValue::Tuple(mut v) if v.len() == 2 => {
                                let (IValue::Tensor(y), IValue::Tensor(s)) = (v.remove(0), v.remove(0)) else {
                                    return Err(tch::TchError::Kind("expected (Tensor, Tensor)".into()));
                                };
                                (y, Some(s))
                            }
                            other => return Err(tch::TchError::Kind(format!("expected a (output, state) tuple, got {other:?}"))),
                        }
                    }
                }
            })
        })?;
        let flat = |t: &Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1));
        Ok(Forward {
            output: flat(&out)?,
            state: match st {
                Some(s) => flat(&s)?,
                None => Vec::new(),
            },
        })
    }
}

impl Model for TchModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward(&mut self, rows: usize, input: Input<'_>, state: &[f32]) -> Result<Forward> {
        if let Some(empty) = prepare(&self.spec, rows, input, state)? {
            return Ok(empty);
        }
        self.run(rows, input, state).map_err(|e| err(&self.spec, e))
    }
}
