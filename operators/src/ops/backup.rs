//! `Backup`: a stateful model's backup, the shell around [`BackupCore`].
//!
//! The frontier of its output *is* the model's durable frontier: the
//! operator holds a capability exactly at the epoch the core says is the
//! first it does not hold durably, and emits the core's cuts there. Writes go
//! to this worker's RocksDB through the storage crate's backup writer.

use std::time::Duration;

use hams_protocol::backup::{BackupAction, BackupCore, Frontiers};
use hams_protocol::records::{Cut, Delta};
use hams_protocol::{Frontier, WorkerId};
use hams_storage::backup::BackupWriter;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::caps::EpochCaps;
use super::control::ControlRef;
use super::faults::Role;
use super::infer::{drop_executor, inject, Spawn};
use super::telemetry::Telemetry;
use super::{clock, frontier, now_us, Time};

pub use hams_protocol::backup::{BackupConfig as CoreConfig, Cadence};

/// How a backup runs.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The protocol's view of the backup.
    pub core: CoreConfig,
    /// Where its writes go.
    pub writer: BackupWriter,
    /// Per model: executions below this incarnation came from a restart's disk images (committed).
    pub floors: Vec<(hams_protocol::ModelId, hams_protocol::Incarnation)>,
}

/// The streams of a backup.
pub struct BackupStreams<'scope> {
    /// The durable stream: its frontier is the model's durable frontier; its data are [`Cut`]s.
    pub durable: Stream<'scope, Time, Vec<Cut>>,
    /// Fault and memory reports.
    pub telemetry: Stream<'scope, Time, Vec<Telemetry>>,
}

/// Backs up a stateful model.
pub trait Backup<'scope> {
    /// Applies the deltas in `self` on the model's backup worker, gated by the
    /// durable streams of the stateful models upstream of it.
    fn backup(
        self,
        upstream: Vec<Stream<'scope, Time, Vec<Cut>>>,
        config: BackupConfig,
        control: ControlRef,
        spawn: Spawn,
    ) -> BackupStreams<'scope>;
}

impl<'scope> Backup<'scope> for Stream<'scope, Time, Vec<Delta>> {
    fn backup(
        self,
        upstream: Vec<Stream<'scope, Time, Vec<Cut>>>,
        config: BackupConfig,
        control: ControlRef,
        spawn: Spawn,
    ) -> BackupStreams<'scope> {
        let scope = self.scope();
        let me = scope.index();
        let mut builder = OperatorBuilder::new("Backup".to_string(), scope);
        let info = builder.operator_info();
        let mut deltas_in = builder.new_input(self, Exchange::new(|d: &Delta| d.to.0 as u64));
        let mut upstream_in: Vec<_> = upstream.into_iter().map(|s| builder.new_input(s.broadcast(), Pipeline)).collect();
        let (durable_out, durable) = builder.new_output::<Vec<Cut>>();
        let (tele_out, telemetry) = builder.new_output::<Vec<Telemetry>>();
        let mut durable_out = OutputBuilder::from(durable_out);
        let mut tele_out = OutputBuilder::from(tele_out);
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        let activator = scope.activator_for(info.address.clone());
        control.borrow_mut().subscribe(scope.activator_for(info.address.clone()));
        let node = config.core.node.clone();
        let model = config.core.model;

        builder.build(move |mut initial| {
            let mut tele_cap = initial.pop();
            // The durable capability: held at the core's durable frontier.
            let mut durable_cap: Option<Capability<Time>> = initial.pop();
            let mut inbox = EpochCaps::<1>::default();
            let mut core = BackupCore::new(config.core.clone(), WorkerId(me), &control.borrow().table, clock());
            for (m, floor) in &config.floors {
                core.upstream_floor(*m, *floor);
            }
            let mut writer = config.writer.clone();
            let wake = move || -> crate::executor::Wake {
                let a = sync_activator.clone();
                Box::new(move || {
                    let _ = a.activate();
                })
            };
            let mut recovering: Vec<usize> = Vec::new();
            move |frontiers| {
                let now = clock();
                deltas_in.for_each_stamp(|cap, data| {
                    if let Some(epoch) = inbox.keep(&cap) {
                        for batch in data {
                            for d in batch.drain(..) {
                                core.delta(epoch, d, now);
                            }
                        }
                    }
                });
                for input in upstream_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            core.upstream_cut(&c);
                        }
                    });
                }
                let mut telemetry = Vec::new();
                if let Some(x) = core.spare() {
                    let events: Vec<_> = {
                        let ctl = control.borrow();
                        ctl.pool
                            .get(&x)
                            .map(|h| std::iter::from_fn(|| h.try_event()).collect())
                            .unwrap_or_default()
                    };
                    for ev in events {
                        if core.event(x, ev.into_core(), now) {
                            telemetry.extend(recovering.drain(..).map(|fault| Telemetry::Respawned { fault, at_us: now_us() }));
                        }
                    }
                }
                let upstream: Vec<Frontier> = frontiers[1..].iter().map(frontier).collect();
                let fr = Frontiers {
                    deltas: frontier(&frontiers[0]),
                    upstream: &upstream,
                };
                let (acts, wake_after) = core.step(now, &mut control.borrow_mut().table, fr, &mut writer);
                for a in acts {
                    match a {
                        BackupAction::Spawn(exec) => match spawn("backup") {
                            Ok(h) => {
                                h.set_wake(wake());
                                control.borrow_mut().pool.insert(exec, h);
                            }
                            Err(e) => {
                                tracing::error!(%node, error = %e, "cannot start the backup's spare executor");
                                core.event(exec, hams_protocol::exec::ExecEvent::Died { reason: e.to_string() }, now);
                                activator.activate();
                            }
                        },
                        BackupAction::Adopt(exec) => control.borrow().route_events(exec, &wake),
                        BackupAction::Drop(exec) => drop_executor(&control, exec, core.ended(), &mut telemetry),
                        BackupAction::Cut(cut) => {
                            // The durable capability, or (a snapshot adopted and cut in one
                            // step) the capability its delta arrived with.
                            let cap = durable_cap
                                .as_ref()
                                .filter(|c| *c.time() <= cut.epoch.0)
                                .or_else(|| inbox.at_or_before(cut.epoch, 0));
                            match cap {
                                Some(c) => durable_out.activate().session(&c.delayed(&cut.epoch.0)).give(cut),
                                None => tracing::error!(%node, ?cut, "no durable capability for a cut"),
                            }
                        }
                        BackupAction::Applied(seq) => {
                            if let Some(x) = core.spare() {
                                inject(&control, x, model.0, Role::Backup, seq.0, &mut recovering, &mut telemetry);
                            }
                        }
                    }
                }
                // The durable capability follows the core's durable frontier.
                match core.durable_at() {
                    None => durable_cap = None,
                    Some(e) => match durable_cap.as_mut() {
                        Some(c) if *c.time() < e.0 => c.downgrade(&e.0),
                        Some(_) => {}
                        None => durable_cap = inbox.at_or_before(e, 0).map(|c| c.delayed(&e.0)),
                    },
                }
                inbox.retain(|_, e| core.inbox_holds(e));
                if let Some(e) = core.durable_at() {
                    let (epochs, bytes) = core.lag();
                    crate::metrics::metrics().backup(&node, e.0, epochs, bytes);
                }
                if let Some(after) = wake_after {
                    activator.activate_after(Duration::from_micros(after));
                }
                if !telemetry.is_empty() {
                    if let Some(c) = tele_cap.as_ref() {
                        tele_out.activate().session(c).give_iterator(telemetry.into_iter());
                    }
                }
                match frontiers[0].frontier().iter().min() {
                    None if core.ended() => tele_cap = None,
                    Some(t) => {
                        if let Some(c) = tele_cap.as_mut().filter(|c| c.time() < t) {
                            c.downgrade(t);
                        }
                    }
                    None => {}
                }
            }
        });
        BackupStreams { durable, telemetry }
    }
}
