//! The single-threaded reference: a graph evaluated one request at a time,
//! in `seq` order, with no timely, no batching and no executors. A
//! distributed run with deterministic backends must release the same results.

use std::collections::BTreeMap;

use hams_operators::executor::engine::Engine;
use hams_operators::executor::protocol::{InferRequest, Item};
use hams_storage::{RequestError, Values};

use crate::error::Result;
use crate::graph::{Graph, Input};
use crate::source::admit;

/// The reference evaluator of one graph; keeps model states across calls.
pub struct Reference {
    graph: Graph,
    engines: Vec<Engine>,
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reference").field("graph", &self.graph.name).finish()
    }
}

impl Reference {
    /// Loads every model of `graph` (deterministically).
    pub fn new(graph: &Graph) -> Result<Self> {
        let engines = graph
            .nodes
            .iter()
            .map(|n| {
                let mut spec = n.spec.clone();
                spec.noise = 0.0;
                Engine::new(&spec, 0)
            })
            .collect::<hams_operators::Result<_>>()?;
        Ok(Reference {
            graph: graph.clone(),
            engines,
        })
    }

    /// The result of one request given as wire bytes; call in `seq` order.
    pub fn eval(&mut self, seq: u64, bytes: &[u8]) -> std::result::Result<Values, RequestError> {
        let env = admit(&self.graph.source, seq, 0, seq, 0, bytes).map_err(|f| f.error)?;
        let mut outs: Vec<Option<Values>> = vec![None; self.graph.nodes.len()];
        let value = |i: &Input, outs: &[Option<Values>]| match i {
            Input::Source => env.values.clone(),
            Input::Node(j) => outs[*j].clone().expect("topological order"),
        };
        let gather = |inputs: &[Input], outs: &[Option<Values>]| {
            if inputs.len() == 1 {
                return value(&inputs[0], outs);
            }
            let mut all = Vec::new();
            for i in inputs {
                match value(i, outs) {
                    Values::F32(v) => all.extend(v),
                    Values::Tokens(t) => all.extend(t.into_iter().map(|x| x as f32)),
                }
            }
            Values::F32(all)
        };
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let input = gather(&node.inputs, &outs);
            let item = Item {
                seq: hams_protocol::Seq(seq),
                session: env.meta.session,
                start: env.meta.start,
                end: env.meta.end,
                input,
            };
            let resp = self.engines[i].infer(&InferRequest {
                ticket: seq,
                epoch: hams_protocol::Epoch(0),
                items: vec![item],
            });
            match resp.outputs.into_iter().next().expect("one item").outcome {
                Ok(o) => outs[i] = Some(Values::F32(o)),
                Err(e) => {
                    return Err(RequestError {
                        node: node.spec.name.clone(),
                        kind: e.kind,
                        message: e.message,
                    })
                }
            }
        }
        Ok(gather(&self.graph.sink, &outs))
    }

    /// Evaluates requests given as `(seq, wire bytes)`, in `seq` order.
    pub fn eval_all(&mut self, requests: &BTreeMap<u64, Vec<u8>>) -> BTreeMap<u64, std::result::Result<Values, RequestError>> {
        requests.iter().map(|(seq, bytes)| (*seq, self.eval(*seq, bytes))).collect()
    }
}
