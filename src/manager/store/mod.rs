//! Raft storage (log, vote, state machine) on an embedded key-value engine.
