//! pgquorum: a high-availability manager for PostgreSQL with its own Raft
//! quorum of managers.
//!
//! * [`cluster`] — the pure core: committed state, commands, decisions.
//! * [`manager`] — a Raft member: storage, network, API, control loop.
//! * [`agent`] — drives one PostgreSQL server.
//! * [`cli`] — the `pgquorum` command line.
//! * [`drill`] — randomized faults against a real cluster, and their checker.

pub mod agent;
pub mod boottime;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod drill;
pub mod durable;
pub mod keeper;
pub mod lock;
pub mod logging;
pub mod manager;
pub mod process;
pub mod proto;
pub mod security;
pub mod signals;
pub mod transport;
pub mod views;
pub mod wallclock;
