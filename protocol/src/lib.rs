//! The HAMS fault-tolerance protocol as plain state machines, with no I/O.
//!
//! Nothing here reads a clock, opens a socket, spawns a process or touches
//! a disk: time comes in as an argument, executors are ids, durable writes
//! go through the [`backup::Durable`] port, and every decision comes back
//! as an action for the caller to carry out. The timely operators in
//! `hams-operators` are shells around these machines; the simulator in
//! [`sim`] drives the very same machines through crashes, hangs and delays,
//! thousands of schedules per second, and checks the invariants after every
//! step.
//!
//! # The protocol in one page
//! A request is logged at its source partition and flows through the graph
//! in an *epoch* (a timely timestamp). A stateful model's primary
//! ([`infer`], [`primary`]) runs each complete epoch in `seq` order, sends
//! the outputs on at once tagged with their lineage, and ships the states
//! and executions to its backup ([`backup`]) as a delta. The backup applies
//! epoch `e` once it has all of `e` and every upstream backup holds `e`, so
//! the backups form a consistent cut, writes it durably and advances its
//! *durable frontier*. A sink ([`commit`]) releases a result only when every
//! model in its lineage has a durable frontier past the result's epoch.
//!
//! # A view change, step by step
//! 1. **Detect.** The primary's executor dies (its connection closes) or
//!    misses a deadline ([`health`]): [`infer::InferCore`] marks it dead and
//!    emits [`records::Failed`] for its incarnation.
//! 2. **Announce.** The [`coordinator::Coordinator`] turns the first report
//!    for that incarnation into a [`records::Recover`] for view `v + 1`: the
//!    failed model and every stateful model downstream of it get a new
//!    incarnation, their backups become primaries, and new backups are placed.
//! 3. **Cut.** Each affected model's backup ([`backup::BackupCore`]) emits a
//!    [`records::Cut`] at its durable frontier `f`: executions of the old
//!    incarnation from `f` on are orphans. It hands its image (states, held
//!    executions, warm spare) to the new primary on its worker through the
//!    [`view::ViewTable`].
//! 4. **Apply.** Every worker's [`view::ViewTable`] applies view `v + 1`
//!    once all its cuts have arrived: placements and incarnations change at
//!    the same logical point everywhere.
//! 5. **Roll back downstream.** Downstream models were named in the same
//!    recovery, so they cut too; their backups never applied an execution
//!    that consumed an upstream orphan (the backup's orphan rule), so the
//!    cut is consistent.
//! 6. **Discard orphans.** Sinks drop held results that name an execution
//!    at or past a cut ([`commit::Verdict::Orphan`]); nothing released ever
//!    depends on one (I2).
//! 7. **Promote and replay.** The new primary restores the states into the
//!    warm spare, starts its log with the held executions, and sends its new
//!    backup a snapshot. Every source replays its unreleased requests in the
//!    new view, at new epochs; operators drop records of older views. A
//!    replayed request the old primary had executed is answered from the
//!    log ([`primary::Admission::Replay`]), so no session steps twice.
//! 8. **Resync.** The new backup adopts the snapshot and then applies deltas
//!    as before. Until then the model's durable frontier does not move, so
//!    results that depend on the new incarnation are held (the durability
//!    policy `hold`).
//!
//! # Layout
//! - [`ids`]: typed identifiers. [`frontier`]: epochs still to come.
//! - [`records`]: what flows and what is kept; [`flow`]: data-path records and routes.
//! - [`exec`]: what a worker and an executor say to each other; [`health`]: failure detection.
//! - [`primary`], [`infer`]: a model node and a stateful primary's rules.
//! - [`backup`]: apply, cut and sync. [`coordinator`]: view changes.
//!   [`view`]: one worker's control table. [`commit`]: the sink's release rule.
//! - [`join`]: fan-in by `seq`. [`restart`]: how a whole cluster starts again from its disks.
//! - [`invariants`]: I1–I5 over durable records, shared by the simulator and `hams verify`.
//! - [`sim`]: the deterministic simulator.
#![warn(missing_docs)]

pub mod backup;
pub mod commit;
pub mod coordinator;
pub mod exec;
pub mod flow;
pub mod frontier;
pub mod health;
pub mod ids;
pub mod infer;
pub mod invariants;
pub mod join;
pub mod primary;
pub mod records;
pub mod restart;
pub mod sim;
pub mod view;

pub use frontier::Frontier;
pub use ids::{Epoch, ExecId, Fingerprint, Incarnation, Micros, ModelId, Seq, SessionId, View, WorkerId};
