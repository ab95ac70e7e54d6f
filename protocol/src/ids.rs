//! Typed identifiers, so a model index is never mistaken for a worker, an
//! epoch for a sequence number, or an incarnation for a view.
//!
//! Each is a transparent newtype: it serializes exactly as its integer, so
//! records keep their on-disk form.

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }
    };
}

id!(
    /// A graph node (model) by its index in the graph.
    ModelId(u16),
    "m"
);
id!(
    /// A batch boundary: the timely timestamp of a service graph.
    Epoch(u64),
    "e"
);
id!(
    /// A request's global sequence number: `offset * partitions + partition`.
    Seq(u64),
    "#"
);
id!(
    /// A session (sequence) of a stateful model; one state per session.
    SessionId(u64),
    "s"
);
id!(
    /// The generation of a stateful model's primary: 0 at start, +1 at each promotion.
    Incarnation(u32),
    "i"
);
id!(
    /// The number of view changes (recoveries) a worker has applied.
    View(u64),
    "v"
);
id!(
    /// A timely worker, by its global index.
    WorkerId(usize),
    "w"
);
id!(
    /// A lineage fingerprint: a hash chained over a session's executions (I4).
    Fingerprint(u64),
    "fp:"
);
id!(
    /// An executor (model replica) a worker has started, unique within the worker.
    ExecId(u64),
    "x"
);

impl Epoch {
    /// The next epoch.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl View {
    /// The next view.
    pub fn next(self) -> View {
        View(self.0 + 1)
    }
}

impl Incarnation {
    /// The next incarnation.
    pub fn next(self) -> Incarnation {
        Incarnation(self.0 + 1)
    }
}

/// Simulated or real time, µs since an origin the caller chooses. The
/// protocol never reads a clock: time always comes in as an argument.
pub type Micros = u64;
