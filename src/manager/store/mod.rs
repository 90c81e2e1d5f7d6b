//! Raft storage (log, vote, state machine) on an embedded key-value engine.
//!
//! * [`KvEngine`] — the few operations the Raft stores need, implemented
//!   by [`SledEngine`].

mod engine;

pub use engine::{
    Durability, EngineError, KeyRange, KeyValue, Keyspace, KvEngine, SledEngine, WriteOp,
};
