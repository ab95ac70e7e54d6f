//! Errors of the storage layer.

use std::path::PathBuf;

/// Errors from the durable lineage store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB reported an error; `kind` tells retryable from fatal.
    #[error("rocksdb {kind:?} error in {path}: {source}")]
    Rocks {
        /// RocksDB's own classification (Busy/TryAgain/TimedOut are retryable).
        kind: rocksdb::ErrorKind,
        /// The database directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rocksdb::Error,
    },
    /// The directory holds something that is not a hams data directory.
    #[error("{path}: not a hams data directory ({found}); refusing to touch it")]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// What was found there instead.
        found: String,
    },
    /// The directory was written by an incompatible format version.
    #[error("{path}: data format {found:?}, this build reads {expected:?}")]
    Version {
        /// The directory.
        path: PathBuf,
        /// The format marker found.
        found: String,
        /// The format marker this build writes.
        expected: &'static str,
    },
    /// A record failed its checksum or could not be decoded.
    #[error("corrupt record in column family {cf} at key {key}: {reason}")]
    Corrupt {
        /// Column family of the record.
        cf: &'static str,
        /// Hex of the key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A request payload could not be parsed.
    #[error("malformed request: {reason}")]
    MalformedRequest {
        /// What was wrong with it.
        reason: String,
    },
    /// File system error outside RocksDB.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Rocks {
                kind: rocksdb::ErrorKind::Busy
                    | rocksdb::ErrorKind::TryAgain
                    | rocksdb::ErrorKind::TimedOut
                    | rocksdb::ErrorKind::Incomplete,
                ..
            }
        )
    }

    pub(crate) fn rocks(path: &std::path::Path, source: rocksdb::Error) -> Self {
        Error::Rocks {
            kind: source.kind(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias for the storage crate.
pub type Result<T> = std::result::Result<T, Error>;
