//! `JoinBySeq`: the fan-in of a node with several inputs, the shell around
//! [`JoinCore`] (which says why this is not differential's `join`).

use hams_protocol::join::JoinCore;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{Scope, Stream};

use super::caps::EpochCaps;
use super::control::ControlRef;
use super::{frontier, Envelope, Route, Time};

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
    /// use hams_protocol::{Seq, View, WorkerId};
    /// use hams_storage::Values;
    /// use timely::dataflow::operators::{Capture, ToStream, capture::Event};
    ///
    /// let out = timely::example(|scope| {
    ///     let env = |seq, v: f32| Envelope { meta: Meta { seq: Seq(seq), home: 0, offset: seq, session: None,
    ///         start: false, end: false, ingest_us: 0, view: View(0) }, values: Values::F32(vec![v]), lineage: vec![] };
    ///     let a = vec![env(1, 1.0), env(2, 2.0)].to_stream(scope).container::<Vec<_>>();
    ///     let b = vec![env(2, 20.0), env(1, 10.0)].to_stream(scope).container::<Vec<_>>();
    ///     scope.join_by_seq(vec![a, b], Route::Pinned(WorkerId(0)), Control::new(1, [], vec![])).capture()
    /// });
    /// let mut joined: Vec<(u64, Values)> = out.try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, v) => v, _ => vec![] })
    ///     .map(|e| (e.meta.seq.0, e.values)).collect();
    /// joined.sort_by_key(|x| x.0);
    /// assert_eq!(joined, vec![(1, Values::F32(vec![1.0, 10.0])), (2, Values::F32(vec![2.0, 20.0]))]);
    /// ```
    fn join_by_seq(
        &self,
        inputs: Vec<Stream<'scope, Time, Vec<Envelope>>>,
        route: Route,
        control: ControlRef,
    ) -> Stream<'scope, Time, Vec<Envelope>>;
}

impl<'scope> JoinBySeq<'scope> for Scope<'scope, Time> {
    fn join_by_seq(
        &self,
        inputs: Vec<Stream<'scope, Time, Vec<Envelope>>>,
        route: Route,
        control: ControlRef,
    ) -> Stream<'scope, Time, Vec<Envelope>> {
        let mut builder = OperatorBuilder::new("JoinBySeq".to_string(), *self);
        let info = builder.operator_info();
        control.borrow_mut().subscribe(self.activator_for(info.address.clone()));
        let n = inputs.len();
        let mut handles: Vec<_> = inputs
            .into_iter()
            .map(|s| {
                let route = route.clone();
                let ctl = control.clone();
                builder.new_input(
                    s,
                    Exchange::new(move |e: &Envelope| route.target(&e.meta, &ctl.borrow().table).0 as u64),
                )
            })
            .collect();
        let (out, stream) = builder.new_output::<Vec<Envelope>>();
        let mut out = OutputBuilder::from(out);
        builder.build(move |_initial| {
            let mut core = JoinCore::new(n);
            let mut caps = EpochCaps::<1>::default();
            move |frontiers| {
                let mut arrived = Vec::new();
                for (i, handle) in handles.iter_mut().enumerate() {
                    handle.for_each_stamp(|cap, data| {
                        let Some(epoch) = caps.keep(&cap) else { return };
                        for env in data.flat_map(|d| d.drain(..)) {
                            arrived.push((i, epoch, env));
                        }
                    });
                }
                let fs: Vec<_> = frontiers.iter().map(frontier).collect();
                let view = control.borrow().table.view();
                let joined = core.step(view, arrived, &fs);
                let mut out = out.activate();
                for (epoch, env) in joined {
                    out.session(caps.get(epoch, 0)).give(env);
                }
                caps.retain(|_, e| core.holds_at(e));
            }
        });
        stream
    }
}
