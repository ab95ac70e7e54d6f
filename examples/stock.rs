//! The stock service graph built with the Rust DSL and run on two workers.
//!
//! `cargo run --release --example stock` — the same graph as
//! `examples/graphs/stock.toml`, written in code.

use hams::operators::executor::process::Launch;
use hams::{Executors, Feed, GraphDef, NodeDef, RunConfig, SourceDef};

fn main() -> anyhow::Result<()> {
    // Executors are this binary re-executed: serve if we are one.
    hams::serve_if_child();

    let predictors = ["price", "tweet", "lstm", "arima", "knn", "regression", "momentum"];
    let graph = GraphDef::new("stock", SourceDef::features([32]).sessions(16, 64))
        .node(NodeDef::mlp("preprocess", [64]).inputs(["source"]).output(32))
        .node(NodeDef::cnn1d("price", 4, 16, 3).inputs(["preprocess"]).output(8))
        .node(NodeDef::mlp("tweet", [64]).inputs(["source"]).output(8))
        .node(NodeDef::lstm("lstm", 32).inputs(["preprocess"]).output(8))
        .node(NodeDef::mlp("arima", []).inputs(["preprocess"]).output(4))
        .node(NodeDef::mlp("knn", [32, 32]).inputs(["preprocess"]).output(8))
        .node(NodeDef::mlp("regression", []).inputs(["preprocess"]).output(4))
        .node(NodeDef::cnn1d("momentum", 2, 8, 5).inputs(["source"]).output(4))
        .node(NodeDef::mlp("combiner", [64]).inputs(predictors).output(16))
        .node(NodeDef::mlp("decision", [16]).inputs(["combiner"]).output(3))
        .sink(["decision"])
        .build()?;

    let data = std::env::temp_dir().join(format!("hams-stock-example-{}", std::process::id()));
    let launch = Launch::new(std::env::current_exe()?, 1)?;
    let mut config = RunConfig::new(graph, 2, data.clone(), Executors::Process(launch));
    config.feed = Feed::Generate {
        total: Some(2000),
        rate: None,
    };
    let summary = hams::dataflow::run(config)?.expect("process 0 reports");
    println!("{summary}");
    std::fs::remove_dir_all(&data).ok();
    anyhow::ensure!(summary.lost == 0 && summary.duplicated == 0, "exactly-once violated");
    Ok(())
}
