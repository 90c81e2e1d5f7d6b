//! JSON views of the API's messages, for people's scripts: `pgquorum
//! status --json`, `history --json`, and the agent's `/cluster` and
//! `/history`. Contracts: extend, never rename.

use serde::Serialize;

use crate::proto::api::{ClusterStatus, HistoryEvent};

/// `status --json` and the agent's `/cluster`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub cluster: String,
    pub epoch: u64,
    pub primary: Option<String>,
    pub paused: bool,
    /// The primary's lease is held open (see `pgquorum pause`).
    pub lease_open: bool,
    pub sync_mode: String,
    pub pending_switchover: Option<String>,
    pub nodes: Vec<NodeJson>,
    pub managers: Vec<ManagerJson>,
    /// When this status was received (`--watch` lines only), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeJson {
    pub name: String,
    pub role: String,
    pub state: String,
    pub host: String,
    pub port: u32,
    pub timeline: u32,
    pub lsn: String,
    pub lag_bytes: Option<u64>,
    pub healthy: bool,
    pub sync: bool,
    pub epoch: u64,
    pub pending_restart: bool,
    pub nofailover: bool,
    pub nosync: bool,
    pub priority: i32,
    /// An operator's action waiting: "restart", "restart_pending",
    /// "reinit", "reload".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<String>,
    /// When it is scheduled for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_action_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ManagerJson {
    pub id: u64,
    pub address: String,
    pub role: String,
    pub term: u64,
}

fn none_if_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&ClusterStatus> for StatusJson {
    fn from(s: &ClusterStatus) -> Self {
        StatusJson {
            cluster: s.cluster.clone(),
            epoch: s.epoch,
            primary: none_if_empty(&s.primary),
            paused: s.paused,
            lease_open: s.lease_open,
            sync_mode: s.sync_mode.clone(),
            pending_switchover: none_if_empty(&s.pending_switchover),
            at: None,
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeJson {
                    name: n.name.clone(),
                    role: n.role.clone(),
                    state: n.state.clone(),
                    host: n.host.clone(),
                    port: n.port,
                    timeline: n.timeline,
                    lsn: n.lsn.clone(),
                    lag_bytes: n.lag_bytes,
                    healthy: n.healthy,
                    sync: n.sync,
                    epoch: n.epoch,
                    pending_restart: n.pending_restart,
                    nofailover: n.nofailover,
                    nosync: n.nosync,
                    priority: n.priority,
                    pending_action: none_if_empty(&n.pending_action),
                    pending_action_at: none_if_empty(&n.pending_action_at),
                })
                .collect(),
            managers: s
                .managers
                .iter()
                .map(|m| ManagerJson {
                    id: m.id,
                    address: m.address.clone(),
                    role: m.role.clone(),
                    term: m.term,
                })
                .collect(),
        }
    }
}

/// One event of `history --json` and the agent's `/history`.
#[derive(Debug, Serialize)]
pub struct EventJson {
    pub time: String,
    pub kind: String,
    pub reason: String,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    pub epoch: u64,
    pub timeline: u32,
    pub lsn: String,
    /// The node an event is about (a fence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl From<&HistoryEvent> for EventJson {
    fn from(e: &HistoryEvent) -> Self {
        EventJson {
            time: e.time.clone(),
            kind: e.kind.clone(),
            reason: e.reason.clone(),
            old_primary: none_if_empty(&e.old_primary),
            new_primary: none_if_empty(&e.new_primary),
            epoch: e.epoch,
            timeline: e.timeline,
            lsn: e.lsn.clone(),
            node: none_if_empty(&e.node),
        }
    }
}

/// One cluster of `status --json` without `--cluster` when the managers
/// serve several.
#[derive(Debug, Serialize)]
pub struct ClusterSummaryJson {
    pub cluster: String,
    pub primary: Option<String>,
    pub epoch: u64,
    pub nodes: u32,
    pub healthy: u32,
    pub sync: Vec<String>,
    pub paused: bool,
    pub worst_lag_bytes: Option<u64>,
}

impl From<&crate::proto::api::ClusterSummary> for ClusterSummaryJson {
    fn from(s: &crate::proto::api::ClusterSummary) -> Self {
        ClusterSummaryJson {
            cluster: s.cluster.clone(),
            primary: none_if_empty(&s.primary),
            epoch: s.epoch,
            nodes: s.nodes,
            healthy: s.healthy,
            sync: s.sync.clone(),
            paused: s.paused,
            worst_lag_bytes: s.worst_lag_bytes,
        }
    }
}

/// `status --json` of a fleet.
#[derive(Debug, Serialize)]
pub struct FleetJson {
    pub clusters: Vec<ClusterSummaryJson>,
}
