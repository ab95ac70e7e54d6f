//! Inference backends, model executors and the timely operators of a hams
//! service graph.
//!
//! # Layout
//! - [`model`]: the model zoo, the backend trait, weights and non-determinism.
//! - [`executor`]: executors (OS processes or threads) that hold a model
//!   replica and its session states, and the socket protocol to them.
//! - [`metrics`]: process-wide metrics in Prometheus text.
//! - [`ops`]: timely operators — `Infer`, `JoinBySeq`, `Release` — and the
//!   records flowing between them.
#![warn(missing_docs)]

pub mod error;
pub mod executor;
pub mod metrics;
pub mod model;
pub mod ops;

pub use error::{Error, Result};
