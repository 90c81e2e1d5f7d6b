//! Raft storage (log, vote, state machine) on an embedded key-value engine.
//!
//! * [`LogStore`] — openraft's `RaftLogStorage`: log entries, vote,
//!   committed and purged log ids.
//! * [`StateMachineStore`] — openraft's `RaftStateMachine`: the committed
//!   [`ClusterState`](crate::cluster::ClusterState) in memory, persisted by
//!   durable snapshots; [`StateMachineStore::watch`] is how the rest of the
//!   manager reads it.
//! * [`KvEngine`] — the few operations both need, implemented by
//!   [`SledEngine`]. [`open`] puts both stores on one sled database so a
//!   single flush makes all of their writes durable.
//! * [`Watermark`] — a small file beside sled's recording the latest vote
//!   and committed log id: sled 0.34 opens a damaged data file as an empty
//!   (or shortened) database without an error, the watermark catches it.
//!
//! A store that cannot be opened stops the manager with a [`StoreError`]:
//! starting over empty under the same node id could break Raft's safety.

// openraft's traits return its `StorageError` (224 bytes); helpers do too.
#![allow(clippy::result_large_err)]

mod engine;
mod log_store;
mod state_machine;
mod watermark;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

pub use engine::{
    flush_durable, Durability, EngineError, KeyRange, KeyValue, Keyspace, KvEngine, SledEngine,
    WriteOp,
};
pub use log_store::LogStore;
pub use state_machine::{AppliedState, SnapshotBuilder, StateMachineStore};
pub use watermark::{Watermark, WatermarkRecord};

use crate::manager::types::{NodeId, StorageError};

/// The watermark beside sled's files (sled ignores files it does not know).
const WATERMARK_FILE: &str = "pgquorum-watermark.json";

/// What the operator must (not) do about a store that does not open.
const ADVICE: &str = "Do not delete this directory and rejoin the group under the same node \
    id: this manager may have voted or acknowledged entries, and forgetting them can break the \
    group's safety. Fix the cause (disk, permissions, another process using it) or restore a \
    backup; if the data is lost, remove this manager from the group and add it back with a new \
    node id";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the Raft store in {} is corrupt: {detail}. {ADVICE}", dir.display())]
    Corrupt { dir: PathBuf, detail: String },
    /// `cause` is in the message, not chained, so it is printed once.
    #[error("cannot open the Raft store in {}: {cause}. {ADVICE}", dir.display())]
    Open { dir: PathBuf, cause: EngineError },
}

impl StoreError {
    fn new(dir: &Path, error: EngineError) -> Self {
        let dir = dir.to_path_buf();
        match error {
            EngineError::Corruption(detail) => StoreError::Corrupt { dir, detail },
            cause => StoreError::Open { dir, cause },
        }
    }
}

/// Opens (or creates) the Raft storage in `dir`: one sled database for the
/// log and the state machine.
pub fn open(
    dir: &Path,
    durability: Durability,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let error = |e| StoreError::new(dir, e);
    let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(dir, durability).map_err(error)?);
    let watermark = Watermark::new(dir.join(WATERMARK_FILE));
    let log = LogStore::new(Arc::clone(&engine), Some(watermark)).map_err(error)?;
    let state_machine = StateMachineStore::new(engine).map_err(error)?;
    Ok((log, state_machine))
}

/// An openraft storage error: fatal for the Raft node that gets it.
fn storage_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: EngineError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}
