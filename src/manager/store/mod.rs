//! Raft storage (log, vote, state machine) on an embedded key-value engine.
//!
//! * [`LogStore`] — openraft's `RaftLogStorage`: log entries, vote,
//!   committed and purged log ids.
//! * [`KvEngine`] — the few operations the Raft stores need, implemented
//!   by [`SledEngine`].
//! * [`Watermark`] — a small file beside sled's recording the latest vote
//!   and committed log id: sled 0.34 opens a damaged data file as an empty
//!   (or shortened) database without an error, the watermark catches it.

// openraft's traits return its `StorageError` (224 bytes); helpers do too.
#![allow(clippy::result_large_err)]

mod engine;
mod log_store;
mod watermark;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

pub use engine::{
    Durability, EngineError, KeyRange, KeyValue, Keyspace, KvEngine, SledEngine, WriteOp,
};
pub use log_store::LogStore;
pub use watermark::{Watermark, WatermarkRecord};

use crate::manager::types::{NodeId, StorageError};

/// An openraft storage error: fatal for the Raft node that gets it.
fn storage_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: EngineError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}
