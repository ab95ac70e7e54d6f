//! `Release`: the sink, the shell around the protocol's release rule
//! ([`hams_protocol::commit::Sink`]). Results wait here until every
//! stateful execution in their lineage is held by a backup; then the
//! [`Ledger`] makes them durable as released, exactly once per request.

use hams_protocol::commit::{Held, Sink};
use hams_protocol::invariants;
use hams_protocol::records::Cut;
use hams_protocol::{Epoch, ModelId};
use hams_storage::{OutputRecord, Values};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::caps::EpochCaps;
use super::ledger::Ledger;
use super::{frontier, Envelope, Failure, Time};
use crate::error::Result;

pub use super::ledger::SinkConfig;
pub use super::telemetry::{Audit, SinkStats};
pub use hams_protocol::records::Watermark;

/// The streams of a sink.
pub struct SinkStreams<'scope> {
    /// Statistics for worker 0.
    pub stats: Stream<'scope, Time, Vec<SinkStats>>,
    /// Released watermarks, for garbage collection everywhere.
    pub watermarks: Stream<'scope, Time, Vec<Watermark>>,
}

/// Releases results at their home worker.
pub trait Release<'scope> {
    /// Releases `self` (results) and `failures` (typed errors) exactly once per
    /// request, durably, once every stateful execution in their lineage is held
    /// by a backup: the frontier of that model's stream in `durable` has passed
    /// its epoch (I2). Results depending on an orphan are discarded; their
    /// requests are replayed.
    fn release(
        self,
        failures: Stream<'scope, Time, Vec<Failure>>,
        durable: Vec<(u16, Stream<'scope, Time, Vec<Cut>>)>,
        config: SinkConfig,
    ) -> Result<SinkStreams<'scope>>;
}

fn record(
    epoch: Epoch,
    meta: super::Meta,
    outcome: std::result::Result<Values, hams_storage::RequestError>,
    lineage: Vec<hams_storage::LineageTag>,
) -> Held {
    Held {
        epoch,
        offset: meta.offset,
        record: OutputRecord {
            seq: meta.seq,
            offset: meta.offset,
            session: meta.session,
            epoch,
            ingest_us: meta.ingest_us,
            release_us: 0,
            outcome,
            lineage,
        },
    }
}

impl<'scope> Release<'scope> for Stream<'scope, Time, Vec<Envelope>> {
    fn release(
        self,
        failures: Stream<'scope, Time, Vec<Failure>>,
        durable: Vec<(u16, Stream<'scope, Time, Vec<Cut>>)>,
        config: SinkConfig,
    ) -> Result<SinkStreams<'scope>> {
        let mut ledger = Ledger::open(&config)?;
        let floors = config.floors.clone();
        let mut builder = OperatorBuilder::new("Release".to_string(), self.scope());
        let mut ok_in = builder.new_input(self, Exchange::new(|e: &Envelope| e.meta.home as u64));
        let mut err_in = builder.new_input(failures, Exchange::new(|f: &Failure| f.meta.home as u64));
        let models: Vec<ModelId> = durable.iter().map(|(m, _)| ModelId(*m)).collect();
        let mut durable_in: Vec<_> = durable
            .into_iter()
            .map(|(_, s)| builder.new_input(s.broadcast(), Pipeline))
            .collect();
        let (out, stats) = builder.new_output::<Vec<SinkStats>>();
        let (wm_out, watermarks) = builder.new_output::<Vec<Watermark>>();
        let mut out = OutputBuilder::from(out);
        let mut wm_out = OutputBuilder::from(wm_out);
        builder.build(move |mut initial| {
            initial.pop();
            // Reports orphans and, when the inputs end, the audit.
            let mut final_cap: Option<Capability<Time>> = initial.pop();
            let mut caps = EpochCaps::<2>::default();
            let mut sink = Sink::new();
            for (m, floor) in &floors {
                sink.floor(*m, *floor);
            }
            move |frontiers| {
                let mut out = out.activate();
                let mut wm_out = wm_out.activate();
                ok_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = caps.keep(&cap) else { return };
                    for e in data.flat_map(|d| d.drain(..)) {
                        sink.hold(record(epoch, e.meta, Ok(e.values), e.lineage));
                    }
                });
                err_in.for_each_stamp(|cap, data| {
                    let Some(epoch) = caps.keep(&cap) else { return };
                    for f in data.flat_map(|d| d.drain(..)) {
                        sink.hold(record(epoch, f.meta, Err(f.error), f.lineage));
                    }
                });
                for input in durable_in.iter_mut() {
                    input.for_each(|_, data| {
                        for c in data.drain(..) {
                            sink.on_cut(&c);
                        }
                    });
                }
                let decided = sink.decide(|m| models.iter().position(|x| *x == m).map(|i| frontier(&frontiers[2 + i])));
                let mut stats = SinkStats {
                    worker: ledger.partition,
                    orphans: decided.orphans,
                    ..SinkStats::default()
                };
                if let Some(at) = decided.release.iter().map(|h| h.epoch).min() {
                    let (stats_cap, wm_cap) = (caps.get(at, 0).clone(), caps.get(at, 1).clone());
                    let now = super::now_us();
                    for (m, inc) in &decided.first {
                        stats.first_release.push((m.0, inc.0, now));
                        crate::metrics::metrics().phase_latest(crate::metrics::Phase::CaughtUp, now);
                    }
                    let records: Vec<(u64, OutputRecord)> = decided.release.iter().map(|h| (h.offset, h.record.clone())).collect();
                    match ledger.commit(records) {
                        Ok(done) => {
                            stats.suppressed = done.suppressed;
                            stats.first_us = (!done.records.is_empty()).then_some(done.at_us);
                            for rec in &done.records {
                                if super::answers::serving() {
                                    super::answers::released(ledger.partition, rec);
                                }
                                let latency = done.at_us.saturating_sub(rec.ingest_us);
                                crate::metrics::metrics().released(latency, rec.outcome.is_err());
                                stats.released += 1;
                                stats.errors += rec.outcome.is_err() as u64;
                                stats.latencies_us.push(latency.min(u32::MAX as u64) as u32);
                            }
                            if let Some(offset) = done.watermark {
                                wm_out.session(&wm_cap).give(Watermark {
                                    partition: ledger.partition,
                                    offset,
                                });
                            }
                            out.session(&stats_cap).give(std::mem::take(&mut stats));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "sink commit failed; results held for retry");
                            sink.requeue(decided.release);
                        }
                    }
                }
                crate::metrics::metrics().orphans(stats.orphans);
                if stats.orphans > 0 {
                    if let Some(c) = final_cap.as_ref() {
                        out.session(c).give(stats);
                    }
                }
                caps.retain(|_, e| sink.holds_at(e));
                // Keep the audit capability just behind the inputs; spend it when they end.
                let least = frontiers[..2].iter().filter_map(|f| f.frontier().iter().min().copied()).min();
                match (least, final_cap.as_mut()) {
                    (Some(t), Some(cap)) if *cap.time() < t => cap.downgrade(&t),
                    (None, Some(_)) if sink.is_empty() => {
                        let cap = final_cap.take().expect("matched");
                        match ledger.evidence().and_then(|e| Ok((e, ledger.run_start()?))) {
                            Ok(((part, outputs), from)) => {
                                let p = ledger.partition;
                                let outputs: Vec<(u32, OutputRecord)> = outputs.into_iter().map(|o| (p, o)).collect();
                                // This run's share; losses and duplicates count over the whole log.
                                let accepted = part.accepted.saturating_sub(from);
                                let released = part.released_since(from);
                                let report = invariants::exactly_once(&[(p, part)].into_iter().collect(), &outputs);
                                let audit = Audit {
                                    accepted,
                                    released,
                                    lost: report.lost,
                                    duplicated: report.duplicated,
                                    problems: report.problems,
                                };
                                out.session(&cap).give(SinkStats {
                                    worker: p,
                                    audit: Some(audit),
                                    ..SinkStats::default()
                                });
                            }
                            Err(e) => tracing::error!(error = %e, "audit failed"),
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(SinkStreams { stats, watermarks })
    }
}
