//! Frontiers over epochs, as timely's progress tracking reports them.
//!
//! Epochs are totally ordered, so a frontier is one epoch (the earliest that
//! may still appear) or nothing at all (the stream has ended).

use serde::{Deserialize, Serialize};

use crate::ids::Epoch;

/// The earliest epoch that may still appear on a stream; `None` once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frontier(pub Option<Epoch>);

impl Frontier {
    /// A stream that has ended.
    pub const EMPTY: Frontier = Frontier(None);

    /// A frontier at `e`.
    pub fn at(e: Epoch) -> Frontier {
        Frontier(Some(e))
    }

    /// True when every epoch up to and including `e` is complete.
    ///
    /// # Examples
    /// ```
    /// use hams_protocol::{Epoch, Frontier};
    /// assert!(Frontier::at(Epoch(5)).passed(Epoch(4)));
    /// assert!(!Frontier::at(Epoch(5)).passed(Epoch(5)));
    /// assert!(Frontier::EMPTY.passed(Epoch(u64::MAX)));
    /// ```
    pub fn passed(self, e: Epoch) -> bool {
        self.0.is_none_or(|f| f > e)
    }

    /// True when the stream has ended.
    pub fn is_empty(self) -> bool {
        self.0.is_none()
    }

    /// The earlier of two frontiers.
    pub fn meet(self, other: Frontier) -> Frontier {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Frontier(Some(a.min(b))),
            (a, b) => Frontier(a.or(b)),
        }
    }

    /// The frontier of a set of epochs still held (empty set: ended).
    pub fn of(epochs: impl IntoIterator<Item = Epoch>) -> Frontier {
        Frontier(epochs.into_iter().min())
    }
}
