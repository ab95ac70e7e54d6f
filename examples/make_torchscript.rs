//! Writes `examples/models/tracker_lstm.pt`: the chain graph's LSTM tracker as
//! a TorchScript module, traced with libtorch from the very weights the zoo
//! LSTM uses (so candle and TorchScript runs of `chain` agree).
//!
//! `cargo run --release --features torch --example make_torchscript`
//!
//! The module follows hams' stateful calling convention:
//! `forward(x[B, 16], state[B, 64]) -> [B, 16 + 64]` (outputs, then the new state `[h | c]`).
//! A PyTorch user would write the same as an `nn.Module` and `torch.jit.script` it.

use hams::operators::model::weights;
use hams::GraphDef;
use tch::nn::{self, Module, RNN};
use tch::{CModule, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = GraphDef::from_file(&here.join("examples/graphs/chain.toml"))?.build()?;
    let spec = &graph.node("tracker").expect("chain has a tracker").spec;
    let params = weights::resolve(spec)?;
    let hidden = spec.arch.state_len() as i64 / 2;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let lstm = nn::lstm(vs.root() / "lstm", spec.input_len as i64, hidden, Default::default());
    let head = nn::linear(vs.root() / "head", hidden, spec.output_len as i64, Default::default());
    let mut vars = vs.variables();
    tch::no_grad(|| {
        for (name, p) in &params {
            let shape: Vec<i64> = p.shape.iter().map(|d| *d as i64).collect();
            vars.get_mut(name)
                .expect("zoo names match tch::nn")
                .copy_(&Tensor::from_slice(&p.data).reshape(shape.as_slice()));
        }
    });
    // Inference only: the traced module embeds the weights as constants.
    vs.freeze();
    let example = [
        Tensor::zeros([2, spec.input_len as i64], (Kind::Float, Device::Cpu)),
        Tensor::zeros([2, 2 * hidden], (Kind::Float, Device::Cpu)),
    ];
    let mut step = |inputs: &[Tensor]| {
        let (x, s) = (&inputs[0], &inputs[1]);
        let (h, c) = (s.narrow(1, 0, hidden).unsqueeze(0), s.narrow(1, hidden, hidden).unsqueeze(0));
        let nn::LSTMState((h1, c1)) = lstm.step(x, &nn::LSTMState((h, c)));
        let (h1, c1) = (h1.squeeze_dim(0), c1.squeeze_dim(0));
        // A traced method has one result: outputs then new state, side by side.
        vec![Tensor::cat(&[&head.forward(&h1), &h1, &c1], 1)]
    };
    let module = tch::no_grad(|| CModule::create_by_tracing("TrackerLstm", "forward", &example, &mut step))?;
    let out = here.join("examples/models/tracker_lstm.pt");
    module.save(&out)?;
    println!("wrote {} ({} bytes)", out.display(), std::fs::metadata(&out)?.len());
    Ok(())
}
