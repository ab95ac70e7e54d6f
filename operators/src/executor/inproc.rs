//! The in-process executor: a thread of the worker's process (no isolation).

use super::engine::Engine;
use super::protocol::ToExecutor;
use super::{Event, ExecutorHandle, Shared};
use crate::model::noise::Noise;
use crate::model::ModelSpec;

/// Starts `spec` on a thread of this process.
///
/// # Examples
/// ```
/// use hams_operators::executor::{inproc, Event, protocol::{InferRequest, Item, ToExecutor}};
/// use hams_operators::model::{Arch, BackendKind, ModelSpec, Weights};
/// use hams_storage::Values;
/// let spec = ModelSpec { name: "mlp".into(), arch: Arch::Mlp { hidden: vec![8] }, input_len: 4,
///     output_len: 2, weights: Weights::Seeded(3), backend: BackendKind::Candle,
///     device: "cpu".into(), noise: 0.0 };
/// let ex = inproc::spawn(&spec, "primary");
/// let item = Item { seq: hams_protocol::Seq(0), session: None, start: false, end: false, input: Values::F32(vec![0.1; 4]) };
/// ex.send(ToExecutor::Infer(InferRequest { ticket: 1, epoch: hams_protocol::Epoch(0), items: vec![item] }));
/// let done = loop {
///     match ex.try_event() {
///         Some(Event::Done(r)) => break r,
///         _ => std::thread::yield_now(),
///     }
/// };
/// assert_eq!(done.outputs[0].outcome.as_ref().unwrap().len(), 2);
/// ```
pub fn spawn(spec: &ModelSpec, replica: &str) -> ExecutorHandle {
    let (shared, events) = Shared::new(false);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = format!("{}/{replica}", spec.name);
    let spec = spec.clone();
    let feed = shared.clone();
    std::thread::Builder::new()
        .name(format!("exec-{name}"))
        .spawn(move || {
            let mut engine = match Engine::new(&spec, Noise::entropy_seed()) {
                Ok(e) => e,
                Err(e) => {
                    feed.emit(Event::Died { reason: e.to_string() });
                    return;
                }
            };
            feed.emit(Event::Ready { pid: std::process::id() });
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    ToExecutor::Infer(req) => feed.emit(Event::Done(engine.infer(&req))),
                    ToExecutor::Ping(n) => feed.emit(Event::Pong(n)),
                    ToExecutor::Restore(states) => {
                        engine.restore(states);
                        feed.emit(Event::Restored);
                    }
                    ToExecutor::Shutdown => break,
                }
            }
        })
        .expect("spawning an executor thread");
    ExecutorHandle::new(name, tx, events, shared)
}
