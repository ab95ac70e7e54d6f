//! Service graphs of ML models, compiled to timely dataflow.
//!
//! Users describe a graph in Rust ([`GraphDef`] with [`NodeDef`] and
//! [`SourceDef`]) or in a TOML file (the same structure); [`GraphDef::build`]
//! checks it into a [`Graph`]; [`run::run`] places its executors on the
//! workers and runs it on one process or a cluster.
//!
//! # Layout
//! - [`def`]: graph definitions (TOML and builder).
//! - [`graph`]: validation into a checked graph with inferred shapes.
//! - [`kafka`]: the Kafka source and the exactly-once Kafka publisher.
//! - [`mode`]: the fault-tolerance protocols (hams and the baselines).
//! - [`placement`]: which worker hosts which executor.
//! - [`compile`]: one worker's timely dataflow for a graph.
//! - [`source`]: ingestion into the durable source log.
//! - [`reference`]: the single-threaded reference evaluator (test oracle).
//! - [`resume`]: how a run resumes from the disks an earlier one left (every session keeps its state).
//! - [`run`]: workers, epochs, flow control and the run's summary.
//! - [`summary`]: latency histogram and the summary report.
//! - [`verify`]: the consistency checker over a run's durable records (gathered from every process).
#![warn(missing_docs)]

pub mod compile;
pub mod def;
pub mod error;
mod gather;
pub mod graph;
pub mod kafka;
pub mod mode;
mod net;
pub mod placement;
pub mod reference;
mod replica;
pub mod resume;
pub mod run;
pub mod serve;
pub mod source;
pub mod summary;
pub mod verify;

pub use compile::Executors;
pub use def::{ElemType, GraphDef, NodeDef, SinkDef, SourceDef, SourceKind};
pub use error::{Error, Result};
pub use graph::Graph;
pub use mode::Mode;
pub use run::{run, RunConfig, Timely};
pub use source::Feed;
pub use summary::Summary;
