//! hams: high availability for distributed ML service graphs, on timely dataflow.
//!
//! This facade re-exports the crates a user needs to define and run a
//! service graph from Rust (see `examples/stock.rs`); the `hams` binary does
//! the same from graph files.
//!
//! # Layout
//! - [`protocol`]: the fault-tolerance protocol as pure state machines, its checker and simulator.
//! - [`storage`]: durable lineage on RocksDB (logs, ledger, states).
//! - [`operators`]: backends, model zoo, executors, timely operators.
//! - [`dataflow`]: graph DSL, validation, placement, compilation, runs.
#![warn(missing_docs)]

pub use hams_dataflow as dataflow;
pub use hams_operators as operators;
pub use hams_protocol as protocol;
pub use hams_storage as storage;

pub use hams_dataflow::{Executors, Feed, Graph, GraphDef, NodeDef, RunConfig, SourceDef, Summary, Timely};
pub use hams_operators::executor::server::serve_if_child;
