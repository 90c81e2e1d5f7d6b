//! The public gRPC API (`pgquorum.v1.PgQuorum`).
//!
//! Any manager answers. A follower forwards each call to the leader, once
//! (a forwarded call that lands on a non-leader fails with UNAVAILABLE and
//! the client retries), so clients never need to know who leads.
//!
//! State-changing calls are checked ([`crate::security::Guard::write`])
//! by the manager the client called, before forwarding; the forwarded call
//! carries the follower's own client certificate (with TLS), which the
//! leader accepts, and the caller's metadata, token included (which the
//! leader checks again when there is no TLS).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::control::Control;
use super::node::{ManagerNode, ManagerView, NodeError};
use super::status;
use crate::cluster::config::PARAMETER_PREFIX;
use crate::cluster::{Cluster, ClusterCommand, ClusterState, RejectionKind};
use crate::proto::api::pg_quorum_client::PgQuorumClient;
use crate::proto::api::pg_quorum_server::PgQuorum;
use crate::proto::api::*;
use crate::proto::raft::raft_client::RaftClient;
use crate::proto::raft::RaftMessage;

/// Metadata set on a call a follower forwarded to the leader.
const FORWARDED: &str = "pgquorum-forwarded";
pub use crate::channel::LEADER_HEADER;

/// Map an internal error to a gRPC status a person can act on.
pub fn status_of(error: NodeError) -> Status {
    match error {
        NodeError::NotLeader { leader } => {
            let mut status = Status::unavailable(
                NodeError::NotLeader {
                    leader: leader.clone(),
                }
                .to_string(),
            );
            if let Some((_, address)) = leader {
                if let Ok(value) = MetadataValue::try_from(address.as_str()) {
                    status.metadata_mut().insert(LEADER_HEADER, value);
                }
            }
            status
        }
        NodeError::Rejected(r) => match r.kind {
            RejectionKind::NotFound => Status::not_found(r.message),
            RejectionKind::InvalidArgument => Status::invalid_argument(r.message),
            RejectionKind::FailedPrecondition => Status::failed_precondition(r.message),
        },
        NodeError::Timeout(_) => Status::unavailable(error.to_string()),
        NodeError::Invalid(m) => Status::invalid_argument(m),
        NodeError::NotFound(m) => Status::not_found(m),
        NodeError::Precondition(m) => Status::failed_precondition(m),
        NodeError::Raft(m) => Status::internal(m),
    }
}

/// Pick the cluster a request names; an empty name means "the only one".
pub fn pick_cluster<'a>(state: &'a ClusterState, name: &str) -> Result<&'a Cluster, Status> {
    if let Some(c) = state.cluster(name) {
        return Ok(c);
    }
    let names: Vec<&str> = state.clusters.keys().map(String::as_str).collect();
    if name.is_empty() {
        if names.is_empty() {
            Err(Status::not_found(
                "no cluster is registered yet: start an agent, it registers its cluster",
            ))
        } else {
            Err(Status::invalid_argument(format!(
                "this manager group serves several clusters ({}); name one with --cluster",
                names.join(", ")
            )))
        }
    } else {
        Err(Status::not_found(format!(
            "no cluster named {name:?}; known clusters: {}",
            if names.is_empty() {
                "none yet".to_string()
            } else {
                names.join(", ")
            }
        )))
    }
}

/// Serves the public API of one manager.
pub struct ApiService {
    node: Arc<ManagerNode>,
    control: Control,
}

impl ApiService {
    pub fn new(node: Arc<ManagerNode>, control: Control) -> Self {
        ApiService { node, control }
    }

    /// `Some(client)` when the call must be served by the leader elsewhere.
    fn forward_client<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<PgQuorumClient<tonic::transport::Channel>>, Status> {
        if self.node.is_leader() {
            return Ok(None);
        }
        let leader = self.node.leader().filter(|(id, _)| *id != self.node.id);
        if request.metadata().contains_key(FORWARDED) || leader.is_none() {
            return Err(status_of(NodeError::NotLeader { leader }));
        }
        let (_, address) = leader.ok_or_else(|| Status::unavailable("no leader"))?;
        let channel = self.node.channel(&address).map_err(status_of)?;
        Ok(Some(PgQuorumClient::new(channel)))
    }

    /// A linearizable read on the leader, or this manager's own state when
    /// the caller accepts it (`local`).
    async fn read_state(&self, local: bool) -> Result<Arc<ClusterState>, Status> {
        let applied = if local {
            self.node.local_state()
        } else {
            self.node.linearizable_state().await.map_err(status_of)?
        };
        Ok(Arc::new(applied.state.clone()))
    }

    async fn propose(&self, command: ClusterCommand) -> Result<OperationResponse, Status> {
        let applied = self.node.propose(command).await.map_err(status_of)?;
        Ok(OperationResponse {
            message: applied.message,
            epoch: applied.epoch,
            primary: applied.primary.unwrap_or_default(),
        })
    }

    /// Every manager's own view; the unreachable ones say so.
    async fn managers(&self) -> Vec<ManagerInfo> {
        let members = self.node.members();
        let asks = members.into_iter().map(|(id, address, _)| async move {
            if id == self.node.id {
                return self.node.view();
            }
            self.ask_view(id, &address).await.unwrap_or(ManagerView {
                id,
                address,
                role: "unreachable".to_string(),
                term: 0,
                last_applied: 0,
                leader: None,
            })
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .map(|v| ManagerInfo {
                id: v.id,
                address: v.address,
                role: v.role,
                term: v.term,
                last_applied: v.last_applied,
            })
            .collect()
    }

    async fn ask_view(&self, id: u64, address: &str) -> Option<ManagerView> {
        let channel = self.node.channel(address).ok()?;
        let mut request = Request::new(RaftMessage {
            target: id,
            from: self.node.id,
            group: self.node.identity.group(),
            payload: Vec::new(),
        });
        request.set_timeout(Duration::from_millis(700));
        let reply = RaftClient::new(channel).node_info(request).await.ok()?;
        let mut view: ManagerView = serde_json::from_slice(&reply.into_inner().payload).ok()?;
        view.address = address.to_string();
        Some(view)
    }

    async fn cluster_status(&self, request: GetStatusRequest) -> Result<ClusterStatus, Status> {
        let state = self.read_state(request.local).await?;
        let cluster = pick_cluster(&state, &request.cluster)?;
        let soft = if request.local {
            None
        } else {
            Some(self.control.soft_view(&cluster.name))
        };
        Ok(status::build(cluster, soft.as_ref(), self.managers().await))
    }
}

/// Forward the call to the leader when this manager is not it.
macro_rules! forward {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut client) = $self.forward_client(&$request)? {
            let (mut metadata, _, message) = $request.into_parts();
            metadata.insert(FORWARDED, MetadataValue::from_static("1"));
            let forwarded = Request::from_parts(metadata, Default::default(), message);
            return client.$method(forwarded).await;
        }
    };
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<ClusterStatus, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PgQuorum for ApiService {
    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        if !request.get_ref().local {
            forward!(self, request, list_clusters);
        }
        let local = request.get_ref().local;
        let state = self.read_state(local).await?;
        // A summary names no manager: no need to ask them how they are.
        let summaries = state
            .clusters
            .values()
            .map(|cluster| {
                let soft = (!local).then(|| self.control.soft_view(&cluster.name));
                status::summary(&status::build(cluster, soft.as_ref(), Vec::new()))
            })
            .collect();
        Ok(Response::new(ListClustersResponse {
            clusters: state.clusters.keys().cloned().collect(),
            summaries,
        }))
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        if !request.get_ref().local {
            forward!(self, request, get_status);
        }
        Ok(Response::new(
            self.cluster_status(request.into_inner()).await?,
        ))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if let Some(mut client) = self.forward_client(&request)? {
            let (mut metadata, _, message) = request.into_parts();
            metadata.insert(FORWARDED, MetadataValue::from_static("1"));
            let stream = client
                .watch(Request::from_parts(metadata, Default::default(), message))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let request = request.into_inner();
        // Fail early on an unknown cluster.
        self.cluster_status(request.clone()).await?;
        let api = ApiService {
            node: self.node.clone(),
            control: self.control.clone(),
        };
        let mut changes = self.control.changes();
        let stream = async_stream::stream! {
            let mut last: Option<ClusterStatus> = None;
            loop {
                let round = tokio::time::Instant::now();
                match api.cluster_status(request.clone()).await {
                    Ok(status) => {
                        if last.as_ref() != Some(&status) {
                            last = Some(status.clone());
                            yield Ok(status);
                        }
                    }
                    Err(e) => {
                        yield Err(e);
                        break;
                    }
                }
                // Wake on a change, and at least every second (lag, last seen).
                let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
                // Every control pass signals a change, and each status costs a
                // quorum round plus a call to every manager: at most four a second.
                tokio::time::sleep_until(round + Duration::from_millis(250)).await;
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn switchover(
        &self,
        request: Request<SwitchoverRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "switchover")?;
        forward!(self, request, switchover);
        let r = request.into_inner();
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &r.cluster)?;
        if r.cancel {
            let response = self
                .propose(ClusterCommand::CancelScheduledSwitchover {
                    at_unix_ms: crate::wallclock::unix_ms(),
                    cluster: cluster.name.clone(),
                })
                .await?;
            return Ok(Response::new(response));
        }
        let not_before_unix_ms = scheduled_at(&r.at, "switch over")?;
        let to = (!r.to.is_empty()).then(|| r.to.clone());
        self.control
            .check_switchover(cluster, to.as_deref())
            .map_err(status_of)?;
        let response = self
            .propose(ClusterCommand::RequestSwitchover {
                cluster: cluster.name.clone(),
                from: (!r.from.is_empty()).then(|| r.from.clone()),
                to,
                not_before_unix_ms,
                requested_unix_ms: crate::wallclock::unix_ms(),
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn failover(
        &self,
        request: Request<FailoverRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "failover")?;
        forward!(self, request, failover);
        let r = request.into_inner();
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &r.cluster)?;
        let applied = self
            .control
            .manual_failover(cluster, &r.to, r.old_primary_stopped)
            .await
            .map_err(status_of)?;
        Ok(Response::new(OperationResponse {
            message: applied.message,
            epoch: applied.epoch,
            primary: applied.primary.unwrap_or_default(),
        }))
    }

    async fn pause(
        &self,
        request: Request<ClusterRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "pause")?;
        forward!(self, request, pause);
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &request.get_ref().cluster)?;
        let response = self
            .propose(ClusterCommand::SetPaused {
                at_unix_ms: crate::wallclock::unix_ms(),
                cluster: cluster.name.clone(),
                paused: true,
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn resume(
        &self,
        request: Request<ClusterRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "resume")?;
        forward!(self, request, resume);
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &request.get_ref().cluster)?;
        let response = self
            .propose(ClusterCommand::SetPaused {
                at_unix_ms: crate::wallclock::unix_ms(),
                cluster: cluster.name.clone(),
                paused: false,
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn get_config(
        &self,
        request: Request<ClusterRequest>,
    ) -> Result<Response<ConfigResponse>, Status> {
        if !request.get_ref().local {
            forward!(self, request, get_config);
        }
        let state = self.read_state(request.get_ref().local).await?;
        let cluster = pick_cluster(&state, &request.get_ref().cluster)?;
        Ok(Response::new(self.config_response(cluster)))
    }

    async fn set_config(
        &self,
        request: Request<SetConfigRequest>,
    ) -> Result<Response<ConfigResponse>, Status> {
        self.node.guard.write(&request, "config set")?;
        forward!(self, request, set_config);
        let r = request.into_inner();
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &r.cluster)?;
        let changes: BTreeMap<String, String> = r.changes.into_iter().collect();
        // Validate before proposing so that a bad value costs no log entry;
        // the state machine checks again at apply time.
        cluster
            .config
            .with_changes(&changes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // PostgreSQL parameters are checked against what the servers
        // report: a bad one would make every node log it at reload, or
        // refuse to start at the next restart.
        let parameters: BTreeMap<String, String> = changes
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(PARAMETER_PREFIX)?.to_string(), v.clone())))
            .collect();
        let review = self.control.review_parameters(cluster, &parameters);
        if !review.errors.is_empty() {
            return Err(Status::invalid_argument(format!(
                "nothing was changed: {}",
                review.errors.join("; ")
            )));
        }
        self.propose(ClusterCommand::SetConfig {
            at_unix_ms: crate::wallclock::unix_ms(),
            cluster: cluster.name.clone(),
            changes,
        })
        .await?;
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &cluster.name)?;
        let mut response = self.config_response(cluster);
        response.notes = review.notes;
        Ok(Response::new(response))
    }

    async fn history(
        &self,
        request: Request<ClusterRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        if !request.get_ref().local {
            forward!(self, request, history);
        }
        let state = self.read_state(request.get_ref().local).await?;
        let cluster = pick_cluster(&state, &request.get_ref().cluster)?;
        Ok(Response::new(HistoryResponse {
            events: cluster.history.iter().map(status::history_event).collect(),
        }))
    }

    async fn restart_node(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "node restart")?;
        forward!(self, request, restart_node);
        let r = request.into_inner();
        if r.cancel {
            let state = self.read_state(true).await?;
            let cluster = pick_cluster(&state, &r.cluster)?;
            let response = self
                .propose(ClusterCommand::CancelNodeAction {
                    cluster: cluster.name.clone(),
                    node: r.node.clone(),
                })
                .await?;
            return Ok(Response::new(response));
        }
        let kind = if r.pending_only {
            crate::cluster::state::NodeActionKind::RestartPending
        } else {
            crate::cluster::state::NodeActionKind::Restart
        };
        let not_before = scheduled_at(&r.at, "restart")?;
        self.node_action(&r, kind, not_before).await
    }

    async fn reload_node(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "node reload")?;
        forward!(self, request, reload_node);
        let r = request.into_inner();
        self.node_action(&r, crate::cluster::state::NodeActionKind::Reload, None)
            .await
    }

    async fn reinit_node(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "node reinit")?;
        forward!(self, request, reinit_node);
        let r = request.into_inner();
        self.node_action(&r, crate::cluster::state::NodeActionKind::Reinit, None)
            .await
    }

    async fn remove_node(
        &self,
        request: Request<NodeRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "node remove")?;
        forward!(self, request, remove_node);
        let r = request.into_inner();
        let state = self.read_state(true).await?; // the command re-validates when applied
        let cluster = pick_cluster(&state, &r.cluster)?;
        let command = self
            .control
            .check_node_removal(cluster, &r.node)
            .map_err(status_of)?;
        let name = cluster.name.clone();
        let response = self.propose(command).await?;
        self.control.forget_node(&name, &r.node);
        Ok(Response::new(response))
    }

    async fn remove_cluster(
        &self,
        request: Request<ClusterRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        self.node.guard.write(&request, "cluster remove")?;
        forward!(self, request, remove_cluster);
        let r = request.into_inner();
        if r.cluster.is_empty() {
            return Err(Status::invalid_argument(
                "name the cluster to remove (every one of its nodes must be stopped)",
            ));
        }
        let state = self.read_state(true).await?;
        let cluster = pick_cluster(&state, &r.cluster)?;
        let command = self
            .control
            .check_cluster_removal(cluster)
            .map_err(status_of)?;
        let name = cluster.name.clone();
        let response = self.propose(command).await?;
        self.control.forget_cluster(&name);
        Ok(Response::new(response))
    }

    async fn list_managers(
        &self,
        _request: Request<ListManagersRequest>,
    ) -> Result<Response<ListManagersResponse>, Status> {
        Ok(Response::new(ListManagersResponse {
            managers: self.managers().await,
        }))
    }

    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<ListManagersResponse>, Status> {
        self.node.guard.write(&request, "managers add")?;
        forward!(self, request, add_manager);
        let r = request.into_inner();
        self.node
            .add_manager(r.id, &r.address)
            .await
            .map_err(status_of)?;
        Ok(Response::new(ListManagersResponse {
            managers: self.managers().await,
        }))
    }

    async fn remove_manager(
        &self,
        request: Request<RemoveManagerRequest>,
    ) -> Result<Response<ListManagersResponse>, Status> {
        self.node.guard.write(&request, "managers remove")?;
        forward!(self, request, remove_manager);
        let r = request.into_inner();
        self.node.remove_manager(r.id).await.map_err(status_of)?;
        Ok(Response::new(ListManagersResponse {
            managers: self.managers().await,
        }))
    }
}

impl ApiService {
    fn config_response(&self, cluster: &Cluster) -> ConfigResponse {
        ConfigResponse {
            cluster: cluster.name.clone(),
            config: cluster.config.to_map().into_iter().collect(),
            version: cluster.config_version,
            pending_restart: self.control.soft_view(&cluster.name).pending_restart(),
            notes: Vec::new(),
        }
    }

    async fn node_action(
        &self,
        r: &NodeRequest,
        kind: crate::cluster::state::NodeActionKind,
        not_before_unix_ms: Option<u64>,
    ) -> Result<Response<OperationResponse>, Status> {
        let state = self.read_state(true).await?; // commands re-validate at apply time
        let cluster = pick_cluster(&state, &r.cluster)?;
        let response = self
            .propose(ClusterCommand::RequestNodeAction {
                cluster: cluster.name.clone(),
                node: r.node.clone(),
                kind,
                not_before_unix_ms,
            })
            .await?;
        Ok(Response::new(response))
    }
}

/// `--at TIME` (RFC 3339) of an operation (`what`: "switch over",
/// "restart") as wall-clock milliseconds; empty: now. A time in the past is
/// refused.
fn scheduled_at(at: &str, what: &str) -> Result<Option<u64>, Status> {
    if at.is_empty() {
        return Ok(None);
    }
    let parsed = humantime::parse_rfc3339_weak(at).map_err(|e| {
        Status::invalid_argument(format!(
            "--at {at:?}: {e}; use RFC 3339, e.g. 2026-11-27T22:00:00Z"
        ))
    })?;
    let at_ms = parsed
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // A little slack for the time the request took to get here.
    if at_ms + 5_000 < crate::wallclock::unix_ms() {
        return Err(Status::invalid_argument(format!(
            "--at {at}: that is in the past (it is {} now); give a time to come, or leave --at out to {what} now",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        )));
    }
    Ok(Some(at_ms))
}
