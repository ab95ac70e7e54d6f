//! Timely operators of a compiled service graph: thin shells around the
//! protocol's state machines (`hams_protocol`).
//!
//! Each operator turns timely's world into the machine's events (data that
//! arrived, input frontiers, executor events, the clock) and carries out the
//! actions that come back (outputs at the epochs the machine names, executor
//! messages, RocksDB writes), keeping exactly the capabilities the machine
//! says it still needs. They decide nothing themselves.
//!
//! Each is an extension trait on `Stream` (or `Scope`), named after its
//! method (timely's own style): [`infer::Infer`], [`join::JoinBySeq`],
//! [`backup::Backup`], [`sink::Release`], [`coordinate::Coordinate`] and
//! [`views::Views`]. [`control`] holds what operators on one worker share,
//! [`faults`] the planned fault injection and [`telemetry`] what is reported
//! about executors; neither reaches the protocol's records.

pub mod answers;
pub mod backup;
pub mod caps;
pub mod control;
pub mod coordinate;
pub mod faults;
pub mod infer;
pub mod join;
pub mod ledger;
pub mod sink;
pub mod telemetry;
pub mod views;

pub use hams_protocol::flow::{view_check, Envelope, Failure, Meta, Route, ViewCheck};

/// Timely timestamps of a service graph: the protocol's epochs, as plain integers.
pub type Time = u64;

/// Microseconds since the Unix epoch (for latencies reported to clients).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Monotonic microseconds since this process started: the protocol's clock.
pub fn clock() -> hams_protocol::Micros {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_micros() as u64
}

/// A timely frontier over epochs as the protocol sees it.
pub fn frontier(f: &timely::progress::frontier::MutableAntichain<Time>) -> hams_protocol::Frontier {
    hams_protocol::Frontier(f.frontier().iter().min().map(|t| hams_protocol::Epoch(*t)))
}
