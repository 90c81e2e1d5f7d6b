//! A manager: one member of the Raft group that decides who is primary.
//!
//! * [`types`] — the openraft type configuration.
//! * [`store`] — Raft log, vote and state machine on sled.
//! * [`network`] / [`raft_service`] — Raft RPCs over gRPC, client and server.
//! * [`node`] — the running manager: writes, linearizable reads, membership.
//! * [`api`] / [`agents`] — the public API and the agent channel.
//! * [`control`] — the leader's control loop.
//! * [`server`] — start, serve, stop; [`shutdown`] — the leader's hand-over.

pub mod agents;
pub mod api;
pub mod config;
pub mod control;
pub mod identity;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft_service;
pub mod recovery;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod types;
