//! Durable record types shared by the dataflow and the checker: the
//! protocol's own records (see [`crate::schema`] for where each is stored).

pub use hams_protocol::records::{ErrorKind, LineageRecord, LineageTag, OutputRecord, RequestError, SessionState, SourceRecord};
