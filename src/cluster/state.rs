//! The committed cluster state: what every manager agrees on through Raft.
//!
//! Small, changed rarely, and enough to act safely after any crash: who the
//! members are, who is primary in which epoch, the synchronous standby set,
//! the dynamic configuration, and the history of decisions. Everything that
//! changes every heartbeat (LSNs, liveness) is soft state on the leader.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::config::DynamicConfig;
use super::lsn::Lsn;

/// How many history events a cluster keeps; older ones are dropped.
pub const HISTORY_LIMIT: usize = 1000;

/// All PostgreSQL clusters one manager group serves, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub clusters: BTreeMap<String, Cluster>,
    /// Raft ids of managers that were removed: never to be reused, since a
    /// new manager under an old id could inherit votes it never cast.
    #[serde(default)]
    pub retired_managers: BTreeSet<u64>,
}

impl ClusterState {
    /// The cluster called `name`; an empty name picks the only cluster.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        if name.is_empty() && self.clusters.len() == 1 {
            return self.clusters.values().next();
        }
        self.clusters.get(name)
    }
}

/// One PostgreSQL cluster: a primary and its replicas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    /// Member nodes by name.
    pub members: BTreeMap<String, Member>,
    /// The primary of the current epoch; `None` before bootstrap.
    pub primary: Option<String>,
    /// Bumped by every promotion: agents obey only the newest epoch.
    pub epoch: u64,
    /// Committed synchronous standby set. PostgreSQL's
    /// `synchronous_standby_names` on the primary is always a subset of it.
    pub sync_set: BTreeSet<String>,
    pub config: DynamicConfig,
    /// Bumped by every configuration change.
    pub config_version: u64,
    /// No automatic action while paused. The primary's lease is then held
    /// open (no deadline): nobody is promoted, so it may run on without
    /// its agent, as a DBA expects of maintenance mode.
    pub paused: bool,
    /// The primary may hold a lease without a deadline, granted while
    /// paused: set by pausing, kept after resuming until the primary's
    /// agent shows that its keeper enforces a bounded lease again
    /// (`LeaseBounded`). No automatic failover while it is set: only the
    /// primary's own agent could stop that server.
    #[serde(default)]
    pub open_lease: bool,
    /// A planned switchover, waiting for its time or under way.
    pub switchover: Option<Switchover>,
    /// Promotions and other decisions, oldest first.
    pub history: Vec<HistoryEvent>,
    /// PostgreSQL's system identifier of the bootstrapped data: a node with
    /// another one belongs to another database and is never adopted.
    pub system_identifier: Option<u64>,
    /// Registration counter: gives members a stable order.
    pub registrations: u64,
    /// Counter for node actions (restart, reinit) requested by operators.
    pub actions: u64,
}

/// A node of the cluster, as registered by its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Address other nodes use to reach this node's PostgreSQL.
    pub host: String,
    pub port: u16,
    /// The agent's HTTP address (health endpoints).
    pub http: String,
    pub tags: Tags,
    /// Order of first registration.
    pub registered: u64,
    /// An operator's request waiting to be carried out by the agent.
    pub action: Option<NodeAction>,
    /// The last fence recorded in the history: the agent's session and
    /// its count of fences then (see `NodeReport::fences`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fence: Option<(u64, u64)>,
}

impl Member {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Per-node tags set in the agent's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    /// Never promote this node automatically.
    pub nofailover: bool,
    /// Never make this node a synchronous standby.
    pub nosync: bool,
    /// Higher wins among equally advanced candidates.
    pub priority: i32,
}

/// An operator's request for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAction {
    /// Unique in the cluster; the agent reports it back when done.
    pub id: u64,
    pub kind: NodeActionKind,
    /// Not before this wall-clock time (a scheduled restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_unix_ms: Option<u64>,
}

impl NodeAction {
    /// May it be carried out at wall-clock time `now_ms`?
    pub fn due(&self, now_ms: u64) -> bool {
        self.not_before_unix_ms.is_none_or(|t| now_ms >= t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeActionKind {
    /// Restart PostgreSQL.
    Restart,
    /// Restart PostgreSQL only if a parameter change waits for it.
    RestartPending,
    /// Wipe the data directory and clone again from the primary.
    Reinit,
    /// Re-read the agent's configuration file and reload PostgreSQL's.
    Reload,
}

/// A planned switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// The primary when it was requested.
    pub from: String,
    /// Target replica; `None` lets the leader pick the best one.
    pub to: Option<String>,
    /// Not before this wall-clock time (Unix milliseconds).
    pub not_before_unix_ms: Option<u64>,
    pub requested_unix_ms: u64,
    pub phase: SwitchoverPhase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum SwitchoverPhase {
    /// Waiting for its time or for the target to be ready.
    Scheduled,
    /// The old primary was told to stop; `target` is promoted once it has
    /// replayed everything the old primary wrote.
    Demoting { target: String },
}

/// Why a primary changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first primary of the cluster.
    Bootstrap,
    /// The primary failed and a replica was promoted automatically.
    Failover,
    /// A planned switchover.
    Switchover,
    /// An operator forced a failover.
    ManualFailover,
    /// The manager group was recovered from a single manager's data.
    Recovery,
    /// An operator paused automatic actions.
    Pause,
    /// An operator resumed them.
    Resume,
    /// The dynamic configuration changed.
    Config,
    /// A switchover was dropped: cancelled by an operator, or given up.
    SwitchoverCancelled,
    /// A node's PostgreSQL was stopped as a writer without the lease (by
    /// its keeper when the lease ran out, or on the leader's order).
    Fence,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Bootstrap => "bootstrap",
            EventKind::Failover => "failover",
            EventKind::Switchover => "switchover",
            EventKind::ManualFailover => "manual_failover",
            EventKind::Recovery => "recovery",
            EventKind::Pause => "pause",
            EventKind::Resume => "resume",
            EventKind::Config => "config",
            EventKind::SwitchoverCancelled => "switchover_cancelled",
            EventKind::Fence => "fence",
        }
    }

    /// Does an event of this kind (by its name) start an epoch — a new
    /// primary — rather than record an operator's or the leader's act?
    pub fn starts_epoch(kind: &str) -> bool {
        [
            "bootstrap",
            "failover",
            "switchover",
            "manual_failover",
            "recovery",
        ]
        .contains(&kind)
    }
}

/// One entry of a cluster's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Wall-clock time of the decision (informational only).
    pub at_unix_ms: u64,
    pub kind: EventKind,
    pub reason: String,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    pub epoch: u64,
    /// Timeline of the old primary when the decision was taken.
    pub timeline: u32,
    /// Best known LSN of the new primary when the decision was taken.
    pub lsn: Lsn,
    /// The node an event is about, when it is about one (a fence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Cluster {
    pub fn new(name: &str) -> Self {
        Cluster {
            name: name.to_string(),
            ..Cluster::default()
        }
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub fn is_primary(&self, name: &str) -> bool {
        self.primary.as_deref() == Some(name)
    }

    /// Record an act that changes no primary (a pause, a configuration
    /// change, a dropped switchover) in the history.
    pub(crate) fn note(&mut self, kind: EventKind, reason: String, at_unix_ms: u64) {
        let event = HistoryEvent {
            at_unix_ms,
            kind,
            reason,
            old_primary: None,
            new_primary: None,
            epoch: self.epoch,
            timeline: 0,
            lsn: Lsn::default(),
            node: None,
        };
        self.push_history(event);
    }

    pub(crate) fn push_history(&mut self, event: HistoryEvent) {
        self.history.push(event);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}
