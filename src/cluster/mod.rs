//! The pure core: committed cluster state, the commands that change it, the
//! messages agents and the leader exchange, and the decisions taken from
//! them. Nothing in here does I/O or reads a clock; time is passed in.

pub mod command;
pub mod config;
pub mod decide;
pub mod lsn;
pub mod settings;
pub mod slots;
pub mod soft;
pub mod state;
pub mod sync;
pub mod wire;

pub use command::{
    Applied, ClusterCommand, CommandResponse, CommandResult, Rejection, RejectionKind,
};
pub use config::{DynamicConfig, SyncMode};
pub use lsn::Lsn;
pub use state::{Cluster, ClusterState, Member, Tags};
