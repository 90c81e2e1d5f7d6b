//! The openraft type configuration: what a log entry carries and how nodes
//! are addressed.

use std::io::Cursor;

use crate::cluster::{ClusterCommand, CommandResponse};

/// Raft id of a manager. Never reuse the id of a removed manager.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// pgquorum's Raft: log entries are cluster commands, managers are
    /// addressed by their gRPC `HOST:PORT`.
    pub TypeConfig:
        D = ClusterCommand,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
