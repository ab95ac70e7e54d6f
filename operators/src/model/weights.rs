//! Named parameters with PyTorch names, shared by every backend.
//!
//! The same [`Params`] load into candle and tch, so a safetensors file exported
//! from PyTorch (or by `hams`) gives the same model on both.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::spec::{Arch, ModelSpec, Weights};
use crate::error::{Error, Result};

/// One parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// All parameters of a model, by PyTorch name.
pub type Params = BTreeMap<String, Param>;

/// The parameter names and shapes `spec` requires, with each one's fan-in for init.
pub fn layout(spec: &ModelSpec) -> Vec<(String, Vec<usize>, usize)> {
    let mut out = Vec::new();
    let linear = |out: &mut Vec<_>, prefix: &str, fan_in: usize, fan_out: usize| {
        out.push((format!("{prefix}.weight"), vec![fan_out, fan_in], fan_in));
        out.push((format!("{prefix}.bias"), vec![fan_out], fan_in));
    };
    match &spec.arch {
        Arch::Mlp { hidden } => {
            let mut dims = vec![spec.input_len];
            dims.extend(hidden);
            dims.push(spec.output_len);
            for (i, w) in dims.windows(2).enumerate() {
                linear(&mut out, &format!("layers.{i}"), w[0], w[1]);
            }
        }
        Arch::Cnn1d { channels, filters, kernel } => {
            let fan_in = channels * kernel;
            out.push(("conv.weight".into(), vec![*filters, *channels, *kernel], fan_in));
            out.push(("conv.bias".into(), vec![*filters], fan_in));
            linear(&mut out, "head", *filters, spec.output_len);
        }
        Arch::Cnn2d {
            channels, filters, kernel, ..
        } => {
            let fan_in = channels * kernel * kernel;
            out.push(("conv.weight".into(), vec![*filters, *channels, *kernel, *kernel], fan_in));
            out.push(("conv.bias".into(), vec![*filters], fan_in));
            linear(&mut out, "head", *filters, spec.output_len);
        }
        Arch::Lstm { hidden } | Arch::Gru { hidden } => {
            let (prefix, gates) = if matches!(spec.arch, Arch::Lstm { .. }) {
                ("lstm", 4)
            } else {
                ("gru", 3)
            };
            let h = *hidden;
            out.push((format!("{prefix}.weight_ih_l0"), vec![gates * h, spec.input_len], h));
            out.push((format!("{prefix}.weight_hh_l0"), vec![gates * h, h], h));
            out.push((format!("{prefix}.bias_ih_l0"), vec![gates * h], h));
            out.push((format!("{prefix}.bias_hh_l0"), vec![gates * h], h));
            linear(&mut out, "head", h, spec.output_len);
        }
        // The module file carries its own parameters.
        Arch::TorchScript { .. } => {}
        Arch::Text { vocab, embed } => {
            // nn.Embedding initialises N(0, 1); a uniform of the same variance keeps init simple.
            out.push(("embedding.weight".into(), vec![*vocab, *embed], 1));
            linear(&mut out, "head", *embed, spec.output_len);
        }
    }
    out
}

/// Bytes of `spec`'s parameters (f32), or `None` when the count overflows.
pub fn param_bytes(spec: &ModelSpec) -> Option<u64> {
    layout(spec).iter().try_fold(0u64, |sum, (_, shape, _)| {
        let n = shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d as u64))?;
        sum.checked_add(n.checked_mul(4)?)
    })
}

/// PyTorch-style init: uniform in ±1/sqrt(fan_in), seeded per parameter name.
pub fn seeded(spec: &ModelSpec, seed: u64) -> Params {
    layout(spec)
        .into_iter()
        .map(|(name, shape, fan_in)| {
            let name_hash = name
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash);
            let bound = if name == "embedding.weight" {
                3f32.sqrt()
            } else {
                1.0 / (fan_in as f32).sqrt()
            };
            let n = shape.iter().product();
            let data = (0..n).map(|_| rng.gen_range(-bound..bound)).collect();
            (name, Param { shape, data })
        })
        .collect()
}

/// Loads parameters from a safetensors file (f32, f16 or bf16 tensors).
pub fn load_safetensors(model: &str, path: &Path) -> Result<Params> {
    let err = |reason: String| Error::Weights {
        model: model.to_string(),
        reason: format!("{}: {reason}", path.display()),
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let mut out = Params::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
            safetensors::Dtype::F16 | safetensors::Dtype::BF16 => {
                let f16 = view.dtype() == safetensors::Dtype::F16;
                raw.chunks_exact(2)
                    .map(|c| {
                        let bits = u16::from_le_bytes([c[0], c[1]]);
                        if f16 {
                            half_to_f32(bits)
                        } else {
                            f32::from_bits((bits as u32) << 16)
                        }
                    })
                    .collect()
            }
            other => return Err(err(format!("tensor {name}: unsupported dtype {other:?}"))),
        };
        out.insert(
            name,
            Param {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Writes parameters as an f32 safetensors file.
pub fn save_safetensors(params: &Params, path: &Path) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = params
        .iter()
        .map(|(n, p)| (n.clone(), p.data.iter().flat_map(|x| x.to_le_bytes()).collect(), p.shape.clone()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("sizes match by construction");
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::Io {
        context: format!("writing {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    })
}

/// The parameters of `spec`: seeded or loaded, checked against the architecture.
pub fn resolve(spec: &ModelSpec) -> Result<Params> {
    let params = match &spec.weights {
        Weights::Seeded(seed) => return Ok(seeded(spec, *seed)),
        Weights::File(path) => load_safetensors(&spec.name, path)?,
    };
    check(spec, &params)?;
    Ok(params)
}

/// Checks that `params` has exactly the names and shapes `spec` needs.
pub fn check(spec: &ModelSpec, params: &Params) -> Result<()> {
    let err = |reason: String| Error::Weights {
        model: spec.name.clone(),
        reason,
    };
    for (name, shape, _) in layout(spec) {
        match params.get(&name) {
            None => {
                return Err(err(format!(
                    "missing tensor {name} (shape {shape:?}) for a {} model",
                    spec.arch.name()
                )))
            }
            Some(p) if p.shape != shape => return Err(err(format!("tensor {name} has shape {:?}, the graph needs {shape:?}", p.shape))),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec::BackendKind;

    fn spec(arch: Arch) -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            arch,
            input_len: 6,
            output_len: 3,
            weights: Weights::Seeded(7),
            backend: BackendKind::Candle,
            device: "cpu".into(),
            noise: 0.0,
        }
    }

    #[test]
    fn safetensors_round_trip_and_shape_check() {
        let s = spec(Arch::Lstm { hidden: 4 });
        let p = seeded(&s, 7);
        assert_eq!(p["lstm.weight_ih_l0"].shape, vec![16, 6]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.safetensors");
        save_safetensors(&p, &f).unwrap();
        let mut s2 = s.clone();
        s2.weights = Weights::File(f.clone());
        assert_eq!(resolve(&s2).unwrap(), p);
        let mut wrong = s2.clone();
        wrong.arch = Arch::Lstm { hidden: 5 };
        let e = resolve(&wrong).unwrap_err().to_string();
        assert!(e.contains("lstm.weight_ih_l0") && e.contains("[20, 6]"), "{e}");
        let mut missing = s2;
        missing.weights = Weights::File(dir.path().join("nope.safetensors"));
        assert!(resolve(&missing).is_err());
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
    }
}
