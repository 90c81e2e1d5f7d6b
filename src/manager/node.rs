//! One running manager: its Raft handle, its view of the committed state,
//! and the operations the API builds on (write, linearizable read,
//! membership changes).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::identity::Identity;
use super::store::AppliedState;
use super::types::{NodeId, Raft};
use crate::cluster::{Applied, ClusterCommand, Rejection};
use crate::security::{ClientSecurity, Guard};
use crate::transport;

/// How long a write may wait for a quorum before the client is told to retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new manager may take to catch up before `managers add` gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// A manager as `managers list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerView {
    pub id: NodeId,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, or `unreachable`.
    pub role: String,
    pub term: u64,
    pub last_applied: u64,
    pub leader: Option<NodeId>,
}

/// Why an operation on the manager failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// This manager is not the leader; `leader` is who is, when known.
    #[error("not the Raft leader{}", match .leader { Some((id, addr)) => format!(" (the leader is manager {id} at {addr})"), None => "; no leader is elected right now, retry shortly".to_string() })]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("no quorum of managers answered within {0:?}; retry when a majority is up")]
    Timeout(Duration),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// One manager process's handle on Raft.
pub struct ManagerNode {
    pub id: NodeId,
    pub address: String,
    pub raft: Raft,
    pub identity: Identity,
    state: watch::Receiver<Arc<AppliedState>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// How this manager dials the others (TLS with its own certificate).
    pub security: ClientSecurity,
    /// Who may call this manager's services.
    pub guard: Guard,
}

impl ManagerNode {
    pub fn new(
        id: NodeId,
        address: String,
        raft: Raft,
        identity: Identity,
        state: watch::Receiver<Arc<AppliedState>>,
    ) -> Self {
        ManagerNode {
            id,
            address,
            raft,
            identity,
            state,
            channels: Mutex::new(HashMap::new()),
            security: ClientSecurity::plaintext(),
            guard: Guard::default(),
        }
    }

    /// Dial the others with `security`; admit callers through `guard`.
    pub fn with_security(mut self, security: ClientSecurity, guard: Guard) -> Self {
        self.security = security;
        self.guard = guard;
        self
    }

    /// This manager's own view, from Raft metrics.
    pub fn view(&self) -> ManagerView {
        let m = self.raft.metrics().borrow().clone();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if is_voter => "follower",
            ServerState::Follower | ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ManagerView {
            id: self.id,
            address: self.address.clone(),
            role: role.to_string(),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The current leader's id and address, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node.addr))
    }

    /// Every manager in the membership (voters and learners) with its address.
    pub fn members(&self) -> Vec<(NodeId, String, bool)> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone(), voters.contains(id)))
            .collect()
    }

    /// The committed state as this manager has applied it (may lag).
    pub fn local_state(&self) -> Arc<AppliedState> {
        self.state.borrow().clone()
    }

    /// A cached channel to another manager.
    pub fn channel(&self, address: &str) -> Result<Channel, NodeError> {
        let mut channels = crate::lock::lock(&self.channels);
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = transport::channel(address, self.security.tls.as_ref())
            .map_err(|e| NodeError::Invalid(e.to_string()))?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    fn not_leader_error(&self) -> NodeError {
        NodeError::NotLeader {
            leader: self.leader().filter(|(id, _)| *id != self.id),
        }
    }

    /// A linearizable read of the committed state: only on the leader, after
    /// confirming leadership with a quorum.
    pub async fn linearizable_state(&self) -> Result<Arc<AppliedState>, NodeError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(NodeError::Timeout(WRITE_TIMEOUT)),
            Ok(Ok(_)) => Ok(self.local_state()),
            Ok(Err(RaftError::APIError(_))) => Err(self.not_leader_error()),
            Ok(Err(RaftError::Fatal(e))) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// Commit a command through Raft (leader only) and return what the state
    /// machine answered.
    pub async fn propose(&self, command: ClusterCommand) -> Result<Applied, NodeError> {
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await;
        match result {
            Err(_) => Err(NodeError::Timeout(WRITE_TIMEOUT)),
            Ok(Ok(response)) => Ok(response.data.0?),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    fn write_error(&self, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => self.not_leader_error(),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                NodeError::Precondition(e.to_string())
            }
            RaftError::Fatal(e) => NodeError::Raft(e.to_string()),
        }
    }

    /// `managers add`: join `id` as a learner, wait until it caught up, then
    /// make it a voter. On failure the learner is removed again.
    pub async fn add_manager(&self, id: NodeId, address: &str) -> Result<(), NodeError> {
        if id == 0 {
            return Err(NodeError::Invalid(
                "manager id 0 is reserved: use a positive number".into(),
            ));
        }
        transport::check_address(address).map_err(|e| NodeError::Invalid(e.to_string()))?;
        let state = self.linearizable_state().await?;
        if state.state.retired_managers.contains(&id) {
            return Err(NodeError::Invalid(format!(
                "manager id {id} belonged to a removed manager and must never be reused; pick a new id"
            )));
        }
        for (member, addr, voter) in self.members() {
            if member == id && voter {
                return Err(NodeError::Precondition(format!(
                    "manager {id} is already a voter"
                )));
            }
            if member != id && addr == address {
                return Err(NodeError::Precondition(format!(
                    "{address} is already the address of manager {member}"
                )));
            }
        }
        let node = BasicNode::new(address);
        match tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.add_learner(id, node, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(self.write_error(e)),
            Err(_) => {
                let _ = self
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await;
                return Err(NodeError::Precondition(format!(
                    "manager {id} at {address} did not catch up within {CATCH_UP_TIMEOUT:?}; \
                     is it running with --join and reachable? It was not added"
                )));
            }
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// `managers remove`: take `id` out of the group and retire its id.
    pub async fn remove_manager(&self, id: NodeId) -> Result<(), NodeError> {
        let members = self.members();
        let Some((_, _, voter)) = members.iter().find(|(m, _, _)| *m == id) else {
            return Err(NodeError::NotFound(format!(
                "no manager with id {id}; `pgquorum managers list` shows the managers"
            )));
        };
        let voters = members.iter().filter(|(_, _, v)| *v).count();
        if *voter && voters == 1 {
            return Err(NodeError::Precondition(
                "cannot remove the last voter".into(),
            ));
        }
        // Retire the id first: if this leader removes itself it steps down
        // right after the change and could not record it any more.
        self.propose(ClusterCommand::RetireManager { id }).await?;
        let change = if *voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }
}
