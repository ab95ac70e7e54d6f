//! The tch (libtorch) backend, on CPU libtorch: the same safetensors weights
//! give the same outputs and states as candle for every zoo model; a
//! TorchScript LSTM serves as the stateful node of `chain` and the
//! fault-tolerance guarantees hold with it; CUDA asked for and absent is a
//! clear error. Compiled only with `--features torch`.
#![cfg(feature = "torch")]

use hams::dataflow::reference::Reference;
use hams::operators::model::{self, weights, Arch, BackendKind, Input, ModelSpec, Weights};
use hams::storage::Values;
use hams::GraphDef;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;

fn spec(name: &str, arch: Arch, input_len: usize, output_len: usize) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        arch,
        input_len,
        output_len,
        weights: Weights::Seeded(42),
        backend: BackendKind::Candle,
        device: "cpu".into(),
        noise: 0.0,
    }
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: candle {x} vs tch {y}");
    }
}

#[test]
fn candle_and_tch_agree_on_every_zoo_model() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = [
        spec("mlp", Arch::Mlp { hidden: vec![24, 12] }, 10, 4),
        spec(
            "cnn1d",
            Arch::Cnn1d {
                channels: 2,
                filters: 6,
                kernel: 3,
            },
            16,
            3,
        ),
        spec(
            "cnn2d",
            Arch::Cnn2d {
                channels: 3,
                height: 4,
                filters: 5,
                kernel: 3,
            },
            48,
            3,
        ),
        spec("lstm", Arch::Lstm { hidden: 12 }, 6, 4),
        spec("gru", Arch::Gru { hidden: 12 }, 6, 4),
        spec("text", Arch::Text { vocab: 50, embed: 8 }, 7, 3),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for s in zoo {
        // Both backends load the same safetensors file.
        let file = dir.path().join(format!("{}.safetensors", s.name));
        weights::save_safetensors(&weights::resolve(&s).unwrap(), &file).unwrap();
        let mut c = s.clone();
        c.weights = Weights::File(file);
        let mut t = c.clone();
        t.backend = BackendKind::Tch;
        let (mut mc, mut mt) = (model::load(&c).unwrap(), model::load(&t).unwrap());
        let state_len = s.arch.state_len();
        // Several batches; stateful models carry each backend's own states from step to step.
        let rows = 5;
        let (mut sc, mut st) = (vec![0.0f32; rows * state_len], vec![0.0f32; rows * state_len]);
        for step in 0..4 {
            let what = format!("{} step {step}", s.name);
            let (fc, ft) = if s.arch.takes_tokens() {
                let ids: Vec<u32> = (0..rows * s.input_len).map(|_| rng.gen_range(0..50)).collect();
                (
                    mc.forward(rows, Input::Tokens(&ids), &sc).unwrap(),
                    mt.forward(rows, Input::Tokens(&ids), &st).unwrap(),
                )
            } else {
                let x: Vec<f32> = (0..rows * s.input_len).map(|_| rng.gen_range(-1.0..1.0)).collect();
                (
                    mc.forward(rows, Input::F32(&x), &sc).unwrap(),
                    mt.forward(rows, Input::F32(&x), &st).unwrap(),
                )
            };
            close(&fc.output, &ft.output, &format!("{what} output"));
            close(&fc.state, &ft.state, &format!("{what} state"));
            sc = fc.state;
            st = ft.state;
        }
    }
}

#[test]
fn cuda_requested_without_cuda_is_a_clear_error() {
    let mut s = spec("gpu_lstm", Arch::Lstm { hidden: 4 }, 2, 2);
    s.backend = BackendKind::Tch;
    s.device = "cuda:0".into();
    let err = model::load(&s).err().expect("no CUDA here").to_string();
    assert!(err.contains("cuda:0") && err.contains("CUDA is not available"), "{err}");
}

#[test]
fn torchscript_lstm_serves_chain_like_the_zoo_lstm() {
    let dir = tempfile::tempdir().unwrap();
    let g = common::graph("chain_torchscript");
    let s = common::run_json(&[
        "run",
        "--graph",
        g.to_str().unwrap(),
        "-w",
        "2",
        "--requests",
        "1000",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        (s["released"].as_u64(), s["lost"].as_u64(), s["errors"].as_u64()),
        (Some(1000), Some(0), Some(0)),
        "{s}"
    );
    // The module was traced from the zoo LSTM's weights: the candle chain is the reference.
    let chain = GraphDef::from_file(&common::graph("chain")).unwrap().build().unwrap();
    let generator = chain.generator();
    let requests = (0..1000u64)
        .map(|seq| (seq, generator.request((seq % 2) as u32, 2, seq / 2).encode_binary()))
        .collect();
    let expected = Reference::new(&chain).unwrap().eval_all(&requests);
    for out in common::outputs(dir.path(), 2) {
        let (Ok(Values::F32(got)), Ok(Values::F32(want))) = (&out.outcome, &expected[&out.seq.0]) else {
            panic!("{out:?}")
        };
        close(got, want, &format!("seq {}", out.seq));
    }
}

#[test]
fn fault_tolerance_holds_with_torchscript_as_the_backend() {
    for faults in [
        &["--kill", "tracker@500"][..],
        &["--kill", "tracker:backup@400", "--kill", "tracker@600"][..],
        &["--hang", "tracker@300"][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let g = common::graph("chain_torchscript");
        let mut args = vec![
            "run",
            "--graph",
            g.to_str().unwrap(),
            "-n",
            "3",
            "-w",
            "1",
            "--requests",
            "1200",
            "--nondeterministic",
            "--deadline-ms",
            "200",
        ];
        args.extend(["--data-dir", dir.path().to_str().unwrap()]);
        args.extend(faults);
        let s = common::run_json(&args);
        assert_eq!(
            (s["released"].as_u64(), s["lost"].as_u64(), s["duplicated"].as_u64()),
            (Some(1200), Some(0), Some(0)),
            "{faults:?}: {s}"
        );
        assert_eq!(s["consistent"], true, "{faults:?}: {s}");
        assert!(
            s["faults"].as_array().unwrap().iter().all(|f| f["injected"] == true),
            "{faults:?}: {s}"
        );
    }
}
