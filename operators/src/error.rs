//! Errors of backends, executors and operators.

/// Errors raised by model backends and executors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model's weights do not fit its declared architecture.
    #[error("model {model}: weights: {reason}")]
    Weights {
        /// Model (graph node) name.
        model: String,
        /// What was wrong.
        reason: String,
    },
    /// An input does not fit the model.
    #[error("model {model}: {reason}")]
    Input {
        /// Model (graph node) name.
        model: String,
        /// What was wrong.
        reason: String,
    },
    /// The tensor library failed.
    #[error("model {model}: {backend} backend: {reason}")]
    Backend {
        /// Model (graph node) name.
        model: String,
        /// Backend name.
        backend: &'static str,
        /// The library's message.
        reason: String,
    },
    /// The requested backend or device is not available in this build or machine.
    #[error("model {model}: {reason}")]
    Unsupported {
        /// Model (graph node) name.
        model: String,
        /// What is missing.
        reason: String,
    },
    /// Talking to an executor failed.
    #[error("executor {model}/{replica}: {reason}")]
    Executor {
        /// Model (graph node) name.
        model: String,
        /// Replica name (`primary`, `backup`, ...).
        replica: String,
        /// What went wrong.
        reason: String,
    },
    /// File system or socket error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The durable store failed.
    #[error(transparent)]
    Storage(#[from] hams_storage::Error),
}

/// Result alias for the operators crate.
pub type Result<T> = std::result::Result<T, Error>;
