//! The agent channel (`pgquorum.agent.v1.AgentChannel`): registration and
//! the long-lived session that carries reports up and commands down.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::api::status_of;
use super::control::Control;
use super::node::{ManagerNode, NodeError};
use crate::cluster::wire::{Registration, RegistrationReply};
use crate::cluster::ClusterCommand;
use crate::proto::agent::agent_channel_server::AgentChannel;
use crate::proto::agent::AgentEnvelope;

/// Serves the agent channel; only the leader accepts agents.
pub struct AgentService {
    node: Arc<ManagerNode>,
    control: Control,
}

impl AgentService {
    pub fn new(node: Arc<ManagerNode>, control: Control) -> Self {
        AgentService { node, control }
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.node.is_leader() {
            Ok(())
        } else {
            Err(status_of(NodeError::NotLeader {
                leader: self.node.leader().filter(|(id, _)| *id != self.node.id),
            }))
        }
    }
}

pub fn decode<T: serde::de::DeserializeOwned>(envelope: &AgentEnvelope) -> Result<T, Status> {
    serde_json::from_slice(&envelope.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable message: {e}")))
}

pub fn encode<T: serde::Serialize>(body: &T) -> Result<AgentEnvelope, Status> {
    serde_json::to_vec(body)
        .map(|payload| AgentEnvelope { payload })
        .map_err(|e| Status::internal(e.to_string()))
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<AgentEnvelope, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentChannel for AgentService {
    async fn register(
        &self,
        request: Request<AgentEnvelope>,
    ) -> Result<Response<AgentEnvelope>, Status> {
        self.require_leader()?;
        let r: Registration = decode(request.get_ref())?;
        let applied = self
            .node
            .propose(ClusterCommand::RegisterNode {
                cluster: r.cluster,
                name: r.node,
                host: r.host,
                port: r.port,
                http: r.http,
                tags: r.tags,
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(encode(&RegistrationReply {
            epoch: applied.epoch,
            primary: applied.primary,
        })?))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentEnvelope>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.require_leader()?;
        let _ = (&self.control, request);
        Err(Status::unimplemented(
            "agent sessions are not available yet",
        ))
    }
}
