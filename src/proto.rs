//! Generated gRPC code (see `proto/` and `build.rs`).

#![allow(clippy::all, missing_docs)]

/// The public API.
pub mod api {
    tonic::include_proto!("pgquorum.v1");
}

/// Raft RPCs between managers.
pub mod raft {
    tonic::include_proto!("pgquorum.raft.v1");
}

/// The agent ↔ leader channel.
pub mod agent {
    tonic::include_proto!("pgquorum.agent.v1");
}

/// Encoded file descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pgquorum_descriptor");
