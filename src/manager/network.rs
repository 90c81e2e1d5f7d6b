//! The client side of Raft between managers: openraft's RPCs over gRPC.
//!
//! openraft's messages are serde types, carried as JSON inside a small
//! protobuf envelope that also names the sender, the target and the group.
//! Any transport failure is reported as `Unreachable` so that openraft backs
//! off instead of hammering a dead peer.

use std::fmt::Display;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::identity::Identity;
use super::types::{NodeId, TypeConfig};
use crate::proto::raft::raft_client::RaftClient;
use crate::proto::raft::RaftMessage;
use crate::security::ClientSecurity;
use crate::transport;

/// Creates one [`PeerConnection`] per target manager.
#[derive(Clone)]
pub struct Network {
    identity: Identity,
    security: ClientSecurity,
}

impl Network {
    /// `security`: how to dial the other managers (TLS with this
    /// manager's own certificate, or plaintext).
    pub fn new(identity: Identity, security: ClientSecurity) -> Self {
        Network { identity, security }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            identity: self.identity.clone(),
            security: self.security.clone(),
            target,
            address: node.addr.clone(),
            client: None,
        }
    }
}

/// The Raft RPCs one leader or candidate sends to one peer.
pub struct PeerConnection {
    identity: Identity,
    security: ClientSecurity,
    target: NodeId,
    address: String,
    client: Option<RaftClient<Channel>>,
}

/// A failure reaching a peer, wrapped so that openraft can report it.
#[derive(Debug, thiserror::Error)]
#[error("manager {target} at {address}: {message}")]
struct PeerError {
    target: NodeId,
    address: String,
    message: String,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerConnection {
    fn error(&self, message: impl Display) -> PeerError {
        PeerError {
            target: self.target,
            address: self.address.clone(),
            message: message.to_string(),
        }
    }

    fn client(&mut self) -> Result<RaftClient<Channel>, PeerError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let channel = transport::channel(&self.address, self.security.tls.as_ref())
            .map_err(|e| self.error(e))?;
        // Snapshots are small (the cluster state), but leave room.
        let client = RaftClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Send one RPC and decode the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let message = RaftMessage {
            target: self.target,
            from: self.identity.node_id(),
            group: self.identity.group(),
            payload,
        };
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                // A refused envelope (wrong target or group) is as good as
                // unreachable: back off and let the operator fix the address.
                let e = self.error(format!("{:?}: {}", status.code(), status.message()));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| {
                RPCError::Network(NetworkError::new(&self.error(format!("bad reply: {e}"))))
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
