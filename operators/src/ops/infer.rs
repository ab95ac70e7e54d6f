//! `Infer`: run a model node's requests through its executor, one batch per epoch.

use std::collections::{BTreeMap, HashMap};

use hams_storage::{ErrorKind, LineageTag, RequestError, Values};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::{Envelope, Epoch, Failure, Meta, Route};
use crate::executor::protocol::{InferRequest, InferResponse, Item, ToExecutor};
use crate::executor::{Event, ExecutorHandle};

/// How a model node runs.
#[derive(Debug, Clone)]
pub struct InferConfig {
    /// Graph node name (errors name it).
    pub node: String,
    /// Graph node index (lineage tags carry it).
    pub index: u16,
    /// Which worker runs each request.
    pub route: Route,
    /// Stateful nodes run each epoch as one batch in `seq` order once the epoch
    /// is complete; stateless nodes run whatever has arrived.
    pub stateful: bool,
    /// Largest batch per forward pass.
    pub max_batch: usize,
}

/// Runs a stream of requests through a model.
pub trait Infer<'scope> {
    /// Sends each request to the worker its route names and runs it on that
    /// worker's executor (`executor` is `Some` exactly on those workers).
    /// Returns the outputs and the requests that failed (typed errors).
    ///
    /// # Examples
    /// ```
    /// use hams_operators::executor::inproc;
    /// use hams_operators::model::{Arch, BackendKind, ModelSpec, Weights};
    /// use hams_operators::ops::{infer::{Infer, InferConfig}, Envelope, Meta, Route};
    /// use hams_storage::Values;
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// let spec = ModelSpec { name: "mlp".into(), arch: Arch::Mlp { hidden: vec![8] }, input_len: 4,
    ///     output_len: 2, weights: Weights::Seeded(3), backend: BackendKind::Candle,
    ///     device: "cpu".into(), noise: 0.0 };
    /// let out = timely::example(move |scope| {
    ///     let meta = |seq| Meta { seq, home: 0, offset: seq, session: None, start: false, end: false, ingest_us: 0 };
    ///     let reqs = (0..5u64).map(move |s| Envelope { meta: meta(s), values: Values::F32(vec![0.5; 4]), lineage: vec![] });
    ///     let cfg = InferConfig { node: "mlp".into(), index: 1, route: Route::Pinned(0), stateful: false, max_batch: 8 };
    ///     let (ok, _err) = reqs.to_stream(scope).container::<Vec<_>>().infer(cfg, Some(inproc::spawn(&spec, "primary")));
    ///     ok.capture()
    /// });
    /// let results: Vec<Envelope> = out.try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, v) => v, _ => vec![] }).collect();
    /// assert_eq!(results.len(), 5);
    /// ```
    fn infer(
        self,
        config: InferConfig,
        executor: Option<ExecutorHandle>,
    ) -> (Stream<'scope, Epoch, Vec<Envelope>>, Stream<'scope, Epoch, Vec<Failure>>);
}

/// A batch sent to the executor and not yet answered.
struct InFlight {
    ok_cap: Capability<Epoch>,
    err_cap: Capability<Epoch>,
    epoch: Epoch,
    requests: Vec<(Meta, Vec<LineageTag>)>,
}

/// Requests of one epoch waiting to be sent.
struct Pending {
    ok_cap: Capability<Epoch>,
    err_cap: Capability<Epoch>,
    requests: Vec<Envelope>,
}

impl<'scope> Infer<'scope> for Stream<'scope, Epoch, Vec<Envelope>> {
    fn infer(
        self,
        config: InferConfig,
        executor: Option<ExecutorHandle>,
    ) -> (Stream<'scope, Epoch, Vec<Envelope>>, Stream<'scope, Epoch, Vec<Failure>>) {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("Infer".to_string(), scope);
        let info = builder.operator_info();
        let route = config.route.clone();
        let mut input = builder.new_input(self, Exchange::new(move |e: &Envelope| route.target(&e.meta)));
        let (ok_out, ok_stream) = builder.new_output::<Vec<Envelope>>();
        let (err_out, err_stream) = builder.new_output::<Vec<Failure>>();
        let mut ok_out = OutputBuilder::from(ok_out);
        let mut err_out = OutputBuilder::from(err_out);

        if let Some(ex) = &executor {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            ex.set_wake(Box::new(move || {
                let _ = activator.activate();
            }));
        }

        builder.build(move |_initial| {
            let mut pending: BTreeMap<Epoch, Pending> = BTreeMap::new();
            let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
            let mut next_ticket = 0u64;
            let mut dead: Option<String> = if executor.is_none() {
                Some(format!("no executor of {} on this worker", config.node))
            } else {
                None
            };
            let node = config.node.clone();
            let fail = move |meta: Meta, kind: ErrorKind, message: String| Failure {
                meta,
                error: RequestError {
                    node: node.clone(),
                    kind,
                    message,
                },
            };

            move |frontiers| {
                let mut ok_out = ok_out.activate();
                let mut err_out = err_out.activate();
                input.for_each_stamp(|cap, data| {
                    let Some(epoch) = cap.least().copied() else { return };
                    let entry = pending.entry(epoch).or_insert_with(|| Pending {
                        ok_cap: cap.delayed(&epoch, 0),
                        err_cap: cap.delayed(&epoch, 1),
                        requests: Vec::new(),
                    });
                    for batch in data {
                        entry.requests.append(batch);
                    }
                });

                // Collect what the executor reported.
                if let Some(ex) = &executor {
                    while let Some(event) = ex.try_event() {
                        match event {
                            Event::Done(resp) => {
                                if let Some(f) = in_flight.remove(&resp.ticket) {
                                    emit(&config, f, resp, &mut ok_out, &mut err_out, &fail);
                                }
                            }
                            Event::Died { reason } => {
                                tracing::error!(executor = ex.name(), %reason, "executor died");
                                dead = Some(reason);
                            }
                            Event::Ready { pid } => tracing::debug!(executor = ex.name(), pid, "executor ready"),
                            Event::Pong(_) => {}
                        }
                    }
                }

                // Without an executor, everything waiting fails with a typed error.
                if let Some(reason) = &dead {
                    let msg = format!("executor unavailable: {reason}");
                    for (_, f) in in_flight.drain() {
                        let mut s = err_out.session(&f.err_cap);
                        for (meta, _) in f.requests {
                            s.give(fail(meta, ErrorKind::Unavailable, msg.clone()));
                        }
                    }
                    for (_, p) in std::mem::take(&mut pending) {
                        let mut s = err_out.session(&p.err_cap);
                        for e in p.requests {
                            s.give(fail(e.meta, ErrorKind::Unavailable, msg.clone()));
                        }
                    }
                    return;
                }

                // Send ready epochs: stateful ones complete and in order, stateless at once.
                let frontier = frontiers[0].frontier();
                let ready: Vec<Epoch> = pending
                    .keys()
                    .copied()
                    .take_while(|e| !config.stateful || !frontier.less_equal(e))
                    .collect();
                let ex = executor.as_ref().expect("checked by `dead`");
                for epoch in ready {
                    let mut p = pending.remove(&epoch).expect("listed above");
                    if config.stateful {
                        p.requests.sort_by_key(|e| e.meta.seq);
                    }
                    let mut requests = std::mem::take(&mut p.requests);
                    while !requests.is_empty() {
                        let rest = requests.split_off(requests.len().min(config.max_batch.max(1)));
                        let chunk = std::mem::replace(&mut requests, rest);
                        let ticket = next_ticket;
                        next_ticket += 1;
                        let mut items = Vec::with_capacity(chunk.len());
                        let mut metas = Vec::with_capacity(chunk.len());
                        for e in chunk {
                            items.push(Item {
                                seq: e.meta.seq,
                                session: e.meta.session,
                                start: e.meta.start,
                                end: e.meta.end,
                                input: e.values,
                            });
                            metas.push((e.meta, e.lineage));
                        }
                        ex.send(ToExecutor::Infer(InferRequest { ticket, epoch, items }));
                        in_flight.insert(
                            ticket,
                            InFlight {
                                ok_cap: p.ok_cap.clone(),
                                err_cap: p.err_cap.clone(),
                                epoch,
                                requests: metas,
                            },
                        );
                    }
                }
            }
        });
        (ok_stream, err_stream)
    }
}

type OkOut<'a> =
    timely::dataflow::operators::generic::OutputBuilderSession<'a, Epoch, timely::container::CapacityContainerBuilder<Vec<Envelope>>>;
type ErrOut<'a> =
    timely::dataflow::operators::generic::OutputBuilderSession<'a, Epoch, timely::container::CapacityContainerBuilder<Vec<Failure>>>;

/// Sends a finished batch's outputs and failures downstream.
fn emit(
    config: &InferConfig,
    f: InFlight,
    resp: InferResponse,
    ok_out: &mut OkOut<'_>,
    err_out: &mut ErrOut<'_>,
    fail: &impl Fn(Meta, ErrorKind, String) -> Failure,
) {
    let mut ok = ok_out.session(&f.ok_cap);
    let mut failures = Vec::new();
    for ((meta, mut lineage), out) in f.requests.into_iter().zip(resp.outputs) {
        match out {
            Ok(values) => {
                if config.stateful {
                    lineage.push(LineageTag {
                        model: config.index,
                        incarnation: 0,
                        epoch: f.epoch,
                        fingerprint: 0,
                    });
                }
                ok.give(Envelope {
                    meta,
                    values: Values::F32(values),
                    lineage,
                });
            }
            Err(e) => failures.push(fail(meta, e.kind, e.message)),
        }
    }
    drop(ok);
    if !failures.is_empty() {
        err_out.session(&f.err_cap).give_iterator(failures.into_iter());
    }
}
