//! The default backend: candle on CPU.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use super::spec::{Arch, ModelSpec};
use super::weights::Params;
use super::{prepare, Forward, Input, Model};
use crate::error::{Error, Result};

/// The candle backend runs on the CPU (`cpu` or `auto`).
pub(crate) fn device(spec: &ModelSpec) -> Result<Device> {
    match spec.device.as_str() {
        "cpu" | "auto" => Ok(Device::Cpu),
        other => Err(Error::Unsupported {
            model: spec.name.clone(),
            reason: format!(
                "device {other:?}: the candle backend runs on the cpu only (device = \"cpu\" or \"auto\"; CUDA needs backend = \"tch\")"
            ),
        }),
    }
}

pub(crate) struct CandleModel {
    spec: ModelSpec,
    device: Device,
    /// Parameters by PyTorch name; linear weights are stored transposed (`[in, out]`).
    p: BTreeMap<String, Tensor>,
}

impl CandleModel {
    pub(crate) fn new(spec: ModelSpec, params: &Params) -> Result<Self> {
        let device = device(&spec)?;
        let mut p = BTreeMap::new();
        for (name, param) in params {
            let mut t = Tensor::from_slice(&param.data, param.shape.as_slice(), &device).map_err(|e| be(&spec, e))?;
            if is_linear_weight(&spec.arch, name) {
                t = t.t().and_then(|t| t.contiguous()).map_err(|e| be(&spec, e))?;
            }
            p.insert(alias(name), t);
        }
        Ok(CandleModel { spec, device, p })
    }

    fn param(&self, name: &str) -> &Tensor {
        &self.p[name]
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        x.matmul(self.param(&format!("{prefix}.weight")))?
            .broadcast_add(self.param(&format!("{prefix}.bias")))
    }

    fn run(&self, rows: usize, input: Input<'_>, state: &[f32]) -> candle_core::Result<Forward> {
        let dev = &self.device;
        let features = |shape: &[usize]| match input {
            Input::F32(d) => Tensor::from_slice(d, shape, dev),
            Input::Tokens(_) => unreachable!("checked by check_input"),
        };
        let n_in = self.spec.input_len;
        let (output, state) = match &self.spec.arch {
            Arch::Mlp { hidden } => {
                let mut x = features(&[rows, n_in])?;
                for i in 0..=hidden.len() {
                    x = self.linear(&x, &format!("layers.{i}"))?;
                    if i < hidden.len() {
                        x = x.relu()?;
                    }
                }
                (x, None)
            }
            Arch::Cnn1d { channels, kernel, .. } => {
                let x = features(&[rows, *channels, n_in / channels])?;
                let y = x.conv1d(self.param("conv.weight"), kernel / 2, 1, 1, 1)?;
                let y = y.broadcast_add(&self.param("conv.bias").reshape((1, (), 1))?)?.relu()?;
                (self.linear(&y.mean(2)?, "head")?, None)
            }
            Arch::Cnn2d {
                channels, height, kernel, ..
            } => {
                let x = features(&[rows, *channels, *height, n_in / (channels * height)])?;
                let y = x.conv2d(self.param("conv.weight"), kernel / 2, 1, 1, 1)?;
                let y = y.broadcast_add(&self.param("conv.bias").reshape((1, (), 1, 1))?)?.relu()?;
                (self.linear(&y.mean((2, 3))?, "head")?, None)
            }
            Arch::Lstm { hidden } => {
                let h_len = *hidden;
                let x = features(&[rows, n_in])?;
                let s = Tensor::from_slice(state, (rows, 2 * h_len), dev)?;
                let (h, c) = (s.narrow(1, 0, h_len)?, s.narrow(1, h_len, h_len)?);
                let gates = self.linear(&x, "lstm.ih")?.add(&self.linear(&h, "lstm.hh")?)?;
                let g = gates.chunk(4, 1)?;
                let (i, f) = (candle_nn::ops::sigmoid(&g[0])?, candle_nn::ops::sigmoid(&g[1])?);
                let (gg, o) = (g[2].tanh()?, candle_nn::ops::sigmoid(&g[3])?);
                let c2 = f.mul(&c)?.add(&i.mul(&gg)?)?;
                let h2 = o.mul(&c2.tanh()?)?;
                (self.linear(&h2, "head")?, Some(Tensor::cat(&[&h2, &c2], 1)?))
            }
            Arch::Gru { hidden } => {
                let x = features(&[rows, n_in])?;
                let h = Tensor::from_slice(state, (rows, *hidden), dev)?;
                let gi = self.linear(&x, "gru.ih")?.chunk(3, 1)?;
                let gh = self.linear(&h, "gru.hh")?.chunk(3, 1)?;
                let r = candle_nn::ops::sigmoid(&gi[0].add(&gh[0])?)?;
                let z = candle_nn::ops::sigmoid(&gi[1].add(&gh[1])?)?;
                let n = gi[2].add(&r.mul(&gh[2])?)?.tanh()?;
                let h2 = z.ones_like()?.sub(&z)?.mul(&n)?.add(&z.mul(&h)?)?;
                (self.linear(&h2, "head")?, Some(h2))
            }
            Arch::TorchScript { .. } => unreachable!("refused by model::load"),
            Arch::Text { embed, .. } => {
                let Input::Tokens(ids) = input else {
                    unreachable!("checked by check_input")
                };
                let ids = Tensor::from_slice(ids, rows * n_in, dev)?;
                let e = self.param("embedding.weight").index_select(&ids, 0)?;
                let pooled = e.reshape((rows, n_in, *embed))?.mean(1)?;
                let logits = self.linear(&pooled, "head")?;
                (candle_nn::ops::softmax_last_dim(&logits)?, None)
            }
        };
        Ok(Forward {
            output: flat(&output)?,
            state: match state {
                Some(s) => flat(&s)?,
                None => Vec::new(),
            },
        })
    }
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

fn be(spec: &ModelSpec, e: candle_core::Error) -> Error {
    Error::Backend {
        model: spec.name.clone(),
        backend: "candle",
        reason: e.to_string(),
    }
}

/// `lstm.weight_ih_l0` → `lstm.ih.weight`, so RNN matrices go through [`CandleModel::linear`].
fn alias(name: &str) -> String {
    for (torch, short) in [
        ("weight_ih_l0", "ih.weight"),
        ("weight_hh_l0", "hh.weight"),
        ("bias_ih_l0", "ih.bias"),
        ("bias_hh_l0", "hh.bias"),
    ] {
        if let Some(prefix) = name.strip_suffix(torch) {
            return format!("{prefix}{short}");
        }
    }
    name.to_string()
}

/// Weights used as `x @ W^T` (stored transposed); RNN input/hidden matrices included.
fn is_linear_weight(arch: &Arch, name: &str) -> bool {
    match arch {
        Arch::Text { .. } => name == "head.weight",
        Arch::Cnn1d { .. } | Arch::Cnn2d { .. } => name == "head.weight",
        _ => name.ends_with(".weight") || name.contains(".weight_"),
    }
}

impl Model for CandleModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn forward(&mut self, rows: usize, input: Input<'_>, state: &[f32]) -> Result<Forward> {
        if let Some(empty) = prepare(&self.spec, rows, input, state)? {
            return Ok(empty);
        }
        self.run(rows, input, state).map_err(|e| be(&self.spec, e))
    }
}
