//! A manager: one member of the Raft group that decides who is primary.

pub mod store;
pub mod types;
