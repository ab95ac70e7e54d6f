//! Errors of graph definition, validation and runs.

/// Errors from building, checking or running a service graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The graph file could not be read or parsed.
    #[error("{origin}: {message}")]
    Parse {
        /// File path (or `graph NAME` for graphs built in Rust).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A node of the graph is wrong.
    #[error("{origin}: node {node:?}: {message}")]
    Node {
        /// File path (or `graph NAME`).
        origin: String,
        /// The node at fault.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// The graph has a cycle.
    #[error("{origin}: cycle through nodes {path}")]
    Cycle {
        /// File path (or `graph NAME`).
        origin: String,
        /// The nodes on the cycle, `a -> b -> a`.
        path: String,
    },
    /// The run configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Timely could not start or a worker failed.
    #[error("timely: {0}")]
    Timely(String),
    /// The durable store failed.
    #[error(transparent)]
    Storage(#[from] hams_storage::Error),
    /// A backend or executor failed.
    #[error(transparent)]
    Operators(#[from] hams_operators::Error),
}

/// Result alias for the dataflow crate.
pub type Result<T> = std::result::Result<T, Error>;
