//! The server side of Raft between managers: decode the envelope, check it
//! is meant for this manager and this group, hand it to openraft.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::node::ManagerNode;
use crate::proto::raft::raft_server::Raft as RaftRpc;
use crate::proto::raft::RaftMessage;

/// Serves `pgquorum.raft.v1.Raft` for one manager.
pub struct RaftService {
    node: Arc<ManagerNode>,
}

impl RaftService {
    pub fn new(node: Arc<ManagerNode>) -> Self {
        RaftService { node }
    }

    /// Check the envelope and decode its payload.
    fn open<T: DeserializeOwned>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        self.node.guard.peer(&request, "Raft between managers")?;
        let message = request.into_inner();
        if message.target != self.node.id {
            return Err(Status::failed_precondition(format!(
                "this is manager {}, not manager {}: check the peer addresses",
                self.node.id, message.target
            )));
        }
        match self.node.identity.accept_group(&message.group) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Status::failed_precondition(format!(
                    "manager {} belongs to group {:?}, not {:?}: a manager of another group is using this address",
                    self.node.id,
                    self.node.identity.group(),
                    message.group
                )))
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        }
        serde_json::from_slice(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
    }

    fn reply<T: Serialize>(&self, body: &T) -> Result<Response<RaftMessage>, Status> {
        let payload = serde_json::to_vec(body).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage {
            target: 0,
            from: self.node.id,
            group: self.node.identity.group(),
            payload,
        }))
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.open(request)?;
        let result = self.node.raft.append_entries(rpc).await;
        self.reply(&result)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.open(request)?;
        let result = self.node.raft.vote(rpc).await;
        self.reply(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = self.open(request)?;
        let result = self.node.raft.install_snapshot(rpc).await;
        self.reply(&result)
    }

    async fn take_over(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: super::shutdown::TakeOver = self.open(request)?;
        super::shutdown::take_over(self.node.clone(), rpc);
        self.reply(&())
    }

    async fn node_info(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        // Any manager may ask who we are; no group check (a joiner has
        // none yet).
        self.node.guard.peer(&request, "Raft between managers")?;
        self.reply(&self.node.view())
    }
}
