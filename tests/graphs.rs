//! Graph files and the builder: every example checks, every kind of error is
//! reported with the file and the node at fault.

use hams::dataflow::{Error, GraphDef};

mod common;

fn check(toml: &str) -> Result<hams::Graph, Error> {
    GraphDef::from_toml(toml, "test.toml")?.build_from("test.toml")
}

const HEAD: &str = r#"
name = "t"
[source]
shape = [8]
sessions = 2
"#;

fn with_nodes(nodes: &str, sink: &str) -> String {
    format!("{HEAD}\n{nodes}\n[sink]\ninputs = {sink}\n")
}

fn err_of(toml: &str) -> String {
    let e = check(toml).expect_err("graph must be refused").to_string();
    assert!(e.starts_with("test.toml"), "error does not name the file: {e}");
    e
}

#[test]
fn every_example_graph_checks() {
    for name in ["stock", "image_query", "auto_pilot", "fatigue", "sentiment", "chain"] {
        let path = common::graph(name);
        let g = GraphDef::from_file(&path).unwrap().build_from(&path.display().to_string()).unwrap();
        assert_eq!(g.name, name);
    }
}

#[test]
fn example_graphs_have_the_hams_shapes() {
    let nodes = |name: &str| {
        let path = common::graph(name);
        let g = GraphDef::from_file(&path).unwrap().build().unwrap();
        // Source and sink count as nodes, as in the HAMS paper.
        (g.nodes.len() + 2, g.nodes.iter().filter(|n| n.spec.is_stateful()).count())
    };
    assert_eq!(nodes("stock"), (12, 1));
    assert_eq!(nodes("image_query"), (5, 0));
    assert_eq!(nodes("auto_pilot"), (7, 2));
    assert_eq!(nodes("fatigue"), (6, 2));
    assert_eq!(nodes("sentiment"), (5, 1));
    assert_eq!(nodes("chain"), (5, 1));
}

#[test]
fn unknown_input_names_node_and_input() {
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"ghost\"]\noutput = 2",
        "[\"a\"]",
    ));
    assert!(e.contains("node \"a\"") && e.contains("unknown input \"ghost\""), "{e}");
}

#[test]
fn missing_inputs_are_refused() {
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = []\noutput = 2",
        "[\"a\"]",
    ));
    assert!(e.contains("node \"a\"") && e.contains("has no inputs"), "{e}");
    let e = err_of(&with_nodes("[[node]]\nname = \"a\"\nmodel = \"mlp\"\noutput = 2", "[\"a\"]"));
    assert!(e.contains("missing field `inputs`"), "{e}");
}

#[test]
fn cycles_are_reported_with_their_path() {
    let nodes = "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"b\"]\noutput = 2\n\
                 [[node]]\nname = \"b\"\nmodel = \"mlp\"\ninputs = [\"a\"]\noutput = 2";
    let e = err_of(&with_nodes(nodes, "[\"a\"]"));
    assert!(
        e.contains("cycle through nodes") && (e.contains("a -> b") || e.contains("b -> a")),
        "{e}"
    );
}

#[test]
fn type_and_shape_mismatches_name_the_node() {
    // A text model fed features.
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"t\"\nmodel = \"text\"\ninputs = [\"source\"]\nvocab = 10\nembed = 4\noutput = 2",
        "[\"t\"]",
    ));
    assert!(e.contains("node \"t\"") && e.contains("type mismatch"), "{e}");
    // Declared input width differs from what the upstream node gives.
    let nodes = "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"source\"]\noutput = 4\n\
                 [[node]]\nname = \"b\"\nmodel = \"mlp\"\ninputs = [\"a\"]\ninput = 5\noutput = 2";
    let e = err_of(&with_nodes(nodes, "[\"b\"]"));
    assert!(
        e.contains("node \"b\"") && e.contains("shape mismatch") && e.contains("give 4"),
        "{e}"
    );
    // A CNN whose channels do not divide its input.
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"c\"\nmodel = \"cnn1d\"\ninputs = [\"source\"]\nchannels = 3\nfilters = 4\nkernel = 3\noutput = 2",
        "[\"c\"]",
    ));
    assert!(e.contains("node \"c\"") && e.contains("shape mismatch"), "{e}");
}

#[test]
fn other_mistakes_are_clear() {
    let mlp = |name: &str, input: &str| format!("[[node]]\nname = \"{name}\"\nmodel = \"mlp\"\ninputs = [\"{input}\"]\noutput = 2\n");
    let e = err_of(&with_nodes(&format!("{}{}", mlp("a", "source"), mlp("a", "source")), "[\"a\"]"));
    assert!(e.contains("defined twice"), "{e}");
    let e = err_of(&with_nodes(&format!("{}{}", mlp("a", "source"), mlp("b", "source")), "[\"a\"]"));
    assert!(e.contains("node \"b\"") && e.contains("goes nowhere"), "{e}");
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"transformer\"\ninputs = [\"source\"]\noutput = 2",
        "[\"a\"]",
    ));
    assert!(e.contains("unknown model \"transformer\""), "{e}");
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"source\"]\noutput = 2\ncolour = 1",
        "[\"a\"]",
    ));
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"mlp\"\nstateful = true\ninputs = [\"source\"]\noutput = 2",
        "[\"a\"]",
    ));
    assert!(e.contains("declared stateful = true"), "{e}");
    let e = err_of("name = \"t\"\n[source\nshape = [8]");
    assert!(e.contains("test.toml"), "{e}");
    let no_sessions = "name = \"t\"\n[source]\nshape = [8]\n[[node]]\nname = \"l\"\nmodel = \"lstm\"\ninputs = [\"source\"]\nhidden = 4\noutput = 2\n[sink]\ninputs = [\"l\"]\n";
    let e = err_of(no_sessions);
    assert!(e.contains("node \"l\"") && e.contains("no sessions"), "{e}");
}

#[test]
fn a_model_too_large_to_load_is_refused_before_anything_allocates() {
    // 16M x 16M weights: the executor would abort on allocation.
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"huge\"\nmodel = \"mlp\"\ninputs = [\"source\"]\nhidden = [16000000, 16000000]\noutput = 2",
        "[\"huge\"]",
    ));
    assert!(e.contains("node \"huge\"") && e.contains("GiB") && e.contains("available"), "{e}");
    // Sizes whose products would overflow are refused as they are read.
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"absurd\"\nmodel = \"cnn2d\"\ninputs = [\"source\"]\nchannels = 4294967296\nheight = 4294967296\nfilters = 2\nkernel = 3\noutput = 2",
        "[\"absurd\"]",
    ));
    assert!(e.contains("node \"absurd\"") && e.contains("channels = 4294967296"), "{e}");
    let e = err_of("name = \"t\"\n[source]\nshape = [65536, 65536, 65536]\n[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"source\"]\noutput = 2\n[sink]\ninputs = [\"a\"]\n");
    assert!(e.contains("source") && e.contains("elements per request"), "{e}");
}

#[test]
fn a_device_the_backend_cannot_use_is_refused_at_check_time() {
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"source\"]\noutput = 2\ndevice = \"cuda:0\"",
        "[\"a\"]",
    ));
    assert!(e.contains("node \"a\"") && e.contains("cuda:0") && e.contains("cpu only"), "{e}");
    let e = err_of(&with_nodes(
        "[[node]]\nname = \"a\"\nmodel = \"mlp\"\ninputs = [\"source\"]\noutput = 2\ndevice = \"tpu\"",
        "[\"a\"]",
    ));
    assert!(e.contains("tpu"), "{e}");
}

#[test]
fn weights_files_are_checked_against_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    // Weights of a 4-wide LSTM given to an 8-wide one.
    let small = GraphDef::new("w", hams::SourceDef::features([8]).sessions(1, 4))
        .node(hams::NodeDef::lstm("l", 4).inputs(["source"]).output(2))
        .sink(["l"])
        .build()
        .unwrap();
    let params = hams::operators::model::weights::resolve(&small.nodes[0].spec).unwrap();
    hams::operators::model::weights::save_safetensors(&params, &w).unwrap();
    let toml = format!(
        "{HEAD}\n[[node]]\nname = \"l\"\nmodel = \"lstm\"\ninputs = [\"source\"]\nhidden = 8\noutput = 2\nweights = {:?}\n[sink]\ninputs = [\"l\"]\n",
        w.display().to_string()
    );
    let e = err_of(&toml);
    assert!(e.contains("node \"l\"") && e.contains("lstm.weight_ih_l0"), "{e}");
}
