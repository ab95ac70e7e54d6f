//! `JoinBySeq`: the fan-in of a node with several inputs.
//!
//! Why not differential's `join`: its arrangements keep every input until it
//! is retracted, and a fan-in needs each pair only once, as soon as the last
//! part arrives, then never again. This operator emits a joined request the
//! moment its last part arrives and forgets it, so its memory is bounded by
//! the requests in flight.

use std::collections::HashMap;

use hams_storage::Values;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, Stream};

use super::control::ControlRef;
use super::{view_check, Envelope, Epoch, Route, ViewCheck};

/// Joins the streams of a node's inputs by request `seq`.
pub trait JoinBySeq<'scope> {
    /// Concatenates, for each `seq`, the values of all `inputs` in order, and
    /// unions their lineage. Requests missing a part (it failed upstream and
    /// went to the sink as an error) are dropped once every input's frontier
    /// has passed their epoch. Parts of an older view are dropped (their
    /// requests are replayed in the current one).
    ///
    /// # Examples
    /// ```
    /// use hams_operators::ops::{control::Control, join::JoinBySeq, Envelope, Meta, Route};
    /// use hams_storage::Values;
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// let out = timely::example(|scope| {
    ///     let env = |seq, v: f32| Envelope { meta: Meta { seq, home: 0, offset: seq, session: None,
    ///         start: false, end: false, ingest_us: 0, view: 0 }, values: Values::F32(vec![v]), lineage: vec![] };
    ///     let a = vec![env(1, 1.0), env(2, 2.0)].to_stream(scope).container::<Vec<_>>();
    ///     let b = vec![env(2, 20.0), env(1, 10.0)].to_stream(scope).container::<Vec<_>>();
    ///     scope.join_by_seq(vec![a, b], Route::Pinned(0), Control::new(1, [], vec![])).capture()
    /// });
    /// let mut joined: Vec<(u64, Values)> = out.try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, v) => v, _ => vec![] })
    ///     .map(|e| (e.meta.seq, e.values)).collect();
    /// joined.sort_by_key(|x| x.0);
    /// assert_eq!(joined, vec![(1, Values::F32(vec![1.0, 10.0])), (2, Values::F32(vec![2.0, 20.0]))]);
    /// ```
    fn join_by_seq(
        &self,
        inputs: Vec<Stream<'scope, Epoch, Vec<Envelope>>>,
        route: Route,
        control: ControlRef,
    ) -> Stream<'scope, Epoch, Vec<Envelope>>;
}

struct Partial {
    cap: Capability<Epoch>,
    view: u64,
    parts: Vec<Option<Envelope>>,
    missing: usize,
}

impl<'scope> JoinBySeq<'scope> for Scope<'scope, Epoch> {
    fn join_by_seq(
        &self,
        inputs: Vec<Stream<'scope, Epoch, Vec<Envelope>>>,
        route: Route,
        control: ControlRef,
    ) -> Stream<'scope, Epoch, Vec<Envelope>> {
        let mut builder = OperatorBuilder::new("JoinBySeq".to_string(), *self);
        let info = builder.operator_info();
        control.borrow_mut().subscribe(self.activator_for(info.address.clone()));
        let n = inputs.len();
        let mut handles: Vec<_> = inputs
            .into_iter()
            .map(|s| {
                let route = route.clone();
                let ctl = control.clone();
                builder.new_input(s, Exchange::new(move |e: &Envelope| route.target(&e.meta, &ctl.borrow())))
            })
            .collect();
        let (out, stream) = builder.new_output::<Vec<Envelope>>();
        let mut out = OutputBuilder::from(out);
        builder.build(move |_initial| {
            let mut partial: HashMap<u64, Partial> = HashMap::new();
            // Parts of a view this worker has not reached yet.
            let mut early: Vec<(usize, Capability<Epoch>, Envelope)> = Vec::new();
            let mut seen_view = 0;
            move |frontiers| {
                let mut out = out.activate();
                let view = control.borrow().view();
                if view > seen_view {
                    // Parts of older views will be replayed; forget them.
                    seen_view = view;
                    partial.retain(|_, p| p.view >= view);
                }
                let mut arrived: Vec<(usize, Capability<Epoch>, Envelope)> = std::mem::take(&mut early);
                for (i, handle) in handles.iter_mut().enumerate() {
                    handle.for_each_stamp(|cap, data| {
                        let Some(epoch) = cap.least().copied() else { return };
                        for env in data.flat_map(|d| d.drain(..)) {
                            arrived.push((i, cap.delayed(&epoch, 0), env));
                        }
                    });
                }
                for (i, cap, env) in arrived {
                    match view_check(env.meta.view, view) {
                        ViewCheck::Stale => continue,
                        ViewCheck::Early => {
                            early.push((i, cap, env));
                            continue;
                        }
                        ViewCheck::Current => {}
                    }
                    let seq = env.meta.seq;
                    let p = partial.entry(seq).or_insert_with(|| Partial {
                        cap: cap.clone(),
                        view,
                        parts: vec![None; n],
                        missing: n,
                    });
                    if p.cap.time() < cap.time() {
                        // The join happens after its latest part.
                        p.cap = cap;
                    }
                    if p.parts[i].replace(env).is_none() {
                        p.missing -= 1;
                    }
                    if p.missing == 0 {
                        let p = partial.remove(&seq).expect("present");
                        out.session(&p.cap).give(concat(p.parts));
                    }
                }
                if !partial.is_empty() {
                    partial.retain(|_, p| frontiers.iter().any(|f| f.frontier().less_equal(p.cap.time())));
                }
            }
        });
        stream
    }
}

fn concat(parts: Vec<Option<Envelope>>) -> Envelope {
    let mut parts = parts.into_iter().map(|p| p.expect("complete"));
    let mut first = parts.next().expect("at least one input");
    let mut values = match std::mem::replace(&mut first.values, Values::F32(Vec::new())) {
        Values::F32(v) => v,
        Values::Tokens(t) => t.into_iter().map(|x| x as f32).collect(),
    };
    for p in parts {
        match p.values {
            Values::F32(v) => values.extend(v),
            Values::Tokens(t) => values.extend(t.into_iter().map(|x| x as f32)),
        }
        first.lineage.extend(p.lineage);
    }
    first.lineage.sort();
    first.lineage.dedup();
    first.values = Values::F32(values);
    first
}
