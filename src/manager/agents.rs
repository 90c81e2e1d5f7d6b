//! The agent channel (`pgquorum.agent.v1.AgentChannel`): registration and
//! the long-lived session that carries reports up and commands down.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::api::status_of;
use super::control::{Control, ReportAnswer};
use super::node::{ManagerNode, NodeError};
use crate::channel::{decode, encode};
use crate::cluster::wire::{
    LeaderHint, ManagerMessage, NodeReport, Registration, RegistrationReply,
};
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

type SessionStream = Pin<Box<dyn Stream<Item = Result<AgentEnvelope, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentChannel for AgentService {
    async fn who_leads(
        &self,
        request: Request<AgentEnvelope>,
    ) -> Result<Response<AgentEnvelope>, Status> {
        self.node.guard.peer(&request, "the agent channel")?;
        let view = self.node.view();
        // A leader shutting down hands over: it names nobody.
        let leader = self
            .node
            .leader()
            .filter(|(id, _)| !(*id == self.node.id && self.control.stopping()));
        let hint = LeaderHint {
            manager: self.node.id,
            term: view.term,
            leader: leader.as_ref().map(|(id, _)| *id),
            leader_address: leader.map(|(_, address)| address),
        };
        Ok(Response::new(encode(&hint)?))
    }

    async fn register(
        &self,
        request: Request<AgentEnvelope>,
    ) -> Result<Response<AgentEnvelope>, Status> {
        self.node.guard.peer(&request, "agent registration")?;
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
        self.node.guard.peer(&request, "the agent session")?;
        self.require_leader()?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the session must start with a report"))?;
        let first: NodeReport = decode(&first)?;
        let (cluster, node) = (first.cluster.clone(), first.node.clone());
        let state = self.node.local_state();
        let member = state
            .state
            .clusters
            .get(&cluster)
            .is_some_and(|c| c.members.contains_key(&node));
        let (tx, rx) = mpsc::channel::<ManagerMessage>(64);
        if !member {
            let reason =
                format!("node {node} is not a member of cluster {cluster}: register first");
            let _ = tx.try_send(ManagerMessage::Refused { reason });
        } else {
            let config = state
                .state
                .clusters
                .get(&cluster)
                .map(|c| c.config.clone())
                .unwrap_or_default();
            let epoch = state
                .state
                .clusters
                .get(&cluster)
                .map(|c| c.epoch)
                .unwrap_or(0);
            let Some(id) = self.control.attach(&cluster, &node, tx.clone()) else {
                return Err(status_of(NodeError::NotLeader {
                    leader: self.node.leader().filter(|(id, _)| *id != self.node.id),
                }));
            };
            let _ = tx.try_send(ManagerMessage::Welcome {
                leader: self.node.id,
                epoch,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                ttl_ms: config.ttl_ms,
            });
            if let Some(c) = state.state.clusters.get(&cluster) {
                let _ = tx.try_send(super::control::members_message(c));
            }
            // Only the control loop's copy keeps the stream open: when it
            // drops the session (leadership lost), the agent sees the end.
            let weak = tx.downgrade();
            drop(tx);
            let control = self.control.clone();
            tokio::spawn(async move {
                let ack = |a: ReportAnswer| {
                    if let Some(tx) = weak.upgrade() {
                        let _ = tx.try_send(ManagerMessage::Ack {
                            primary_lsn: a.primary_lsn,
                            quorum: a.quorum,
                            sync_standby: a.sync_standby,
                        });
                    }
                };
                ack(control.report(first));
                while let Ok(Some(envelope)) = inbound.message().await {
                    match decode::<NodeReport>(&envelope) {
                        Ok(report) if report.cluster == cluster && report.node == node => {
                            ack(control.report(report))
                        }
                        Ok(_) => {
                            tracing::warn!(%node, "report for another node on this session ignored")
                        }
                        Err(e) => tracing::warn!(%node, error = %e, "undecodable report"),
                    }
                }
                control.detach(&cluster, &node, id);
            });
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| encode(&m));
        Ok(Response::new(Box::pin(stream)))
    }
}
