//! Typed commands: the only way committed state changes.
//!
//! Each command is a Raft log entry. `apply` validates it against the state
//! it meets *at apply time* (not at proposal time: another entry may have
//! been committed in between) and either changes the state or leaves it
//! untouched and returns a [`Rejection`]. It never panics, whatever the log
//! holds, so one bad entry cannot stop the state machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::config::ConfigError;
use super::lsn::Lsn;
use super::state::{
    Cluster, ClusterState, EventKind, HistoryEvent, Member, NodeAction, NodeActionKind, Switchover,
    SwitchoverPhase, Tags,
};

/// Largest number of members of one cluster, a guard against a runaway
/// client filling the state.
const MAX_MEMBERS: usize = 64;
/// Largest number of clusters one manager group serves (the fleet bench
/// carries 333 clusters of 3 nodes on 3 managers; see docs/architecture.md).
pub const MAX_CLUSTERS: usize = 1000;

/// A change to the committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ClusterCommand {
    /// Add a node to its cluster (creating the cluster), or refresh the
    /// registration of a node that comes back from the same address.
    RegisterNode {
        cluster: String,
        name: String,
        host: String,
        port: u16,
        http: String,
        tags: Tags,
    },
    /// Forget a node.
    RemoveNode { cluster: String, name: String },
    /// Name the first primary of a cluster (epoch 0 → 1).
    Bootstrap {
        cluster: String,
        node: String,
        at_unix_ms: u64,
    },
    /// Remember the PostgreSQL system identifier of the bootstrapped data.
    SetSystemIdentifier { cluster: String, id: u64 },
    /// Make `node` the primary of epoch `expected_epoch + 1`.
    Promote {
        cluster: String,
        expected_epoch: u64,
        node: String,
        kind: EventKind,
        reason: String,
        /// Committed sync set of the new epoch (never contains `node`).
        sync_set: BTreeSet<String>,
        timeline: u32,
        lsn: Lsn,
        at_unix_ms: u64,
    },
    /// Change the committed synchronous standby set within an epoch.
    SetSyncSet {
        cluster: String,
        epoch: u64,
        sync_set: BTreeSet<String>,
    },
    /// Change dynamic configuration keys, all or nothing.
    SetConfig {
        cluster: String,
        changes: BTreeMap<String, String>,
        /// When the operator asked (for the history; 0 in entries written
        /// before it was recorded).
        #[serde(default)]
        at_unix_ms: u64,
    },
    SetPaused {
        cluster: String,
        paused: bool,
        #[serde(default)]
        at_unix_ms: u64,
    },
    /// The primary of `epoch` enforces a bounded lease again after a
    /// pause: automatic failover may resume.
    LeaseBounded { cluster: String, epoch: u64 },
    /// Plan a switchover away from the current primary.
    RequestSwitchover {
        cluster: String,
        from: Option<String>,
        to: Option<String>,
        not_before_unix_ms: Option<u64>,
        requested_unix_ms: u64,
    },
    /// Move a planned switchover to its next phase (only within `epoch`).
    AdvanceSwitchover {
        cluster: String,
        epoch: u64,
        phase: SwitchoverPhase,
    },
    /// Drop a planned switchover.
    CancelSwitchover {
        cluster: String,
        reason: String,
        #[serde(default)]
        at_unix_ms: u64,
    },
    /// Forget a whole cluster whose nodes are all gone (`cluster remove`).
    RemoveCluster { cluster: String },
    /// The operator drops a scheduled switchover (`switchover --cancel`):
    /// refused once it is under way.
    CancelScheduledSwitchover {
        cluster: String,
        #[serde(default)]
        at_unix_ms: u64,
    },
    /// Ask a node's agent to restart, reload or re-clone.
    RequestNodeAction {
        cluster: String,
        node: String,
        kind: NodeActionKind,
        /// Not before this wall-clock time (a scheduled restart).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before_unix_ms: Option<u64>,
    },
    /// Drop a node's scheduled action before it is due.
    CancelNodeAction { cluster: String, node: String },
    /// The agent carried out action `id`.
    CompleteNodeAction {
        cluster: String,
        node: String,
        id: u64,
    },
    /// Record in the history that `node`'s PostgreSQL was fenced: the
    /// `fences`-th fence of agent session `session` (recorded once).
    NoteFence {
        cluster: String,
        node: String,
        session: u64,
        fences: u64,
        reason: String,
        at_unix_ms: u64,
    },
    /// Disaster recovery: bump every cluster's epoch by `bump` so that no
    /// agent trusts a decision taken before the group was re-formed.
    Recover { bump: u64, at_unix_ms: u64 },
    /// A manager left the Raft group; its id must never be used again.
    RetireManager { id: u64 },
    /// Disaster recovery: the first entry of a re-formed group carries the
    /// state the surviving manager had. Only accepted on an empty state.
    RestoreState { state: Box<ClusterState> },
}

/// What a successful command did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The cluster's epoch after the command.
    pub epoch: u64,
    /// The cluster's primary after the command.
    pub primary: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// How a refused command is reported to API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionKind {
    NotFound,
    InvalidArgument,
    FailedPrecondition,
}

/// The command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

impl Rejection {
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Rejection {
            kind: RejectionKind::NotFound,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Rejection {
            kind: RejectionKind::InvalidArgument,
            message: message.into(),
        }
    }

    pub(crate) fn precondition(message: impl Into<String>) -> Self {
        Rejection {
            kind: RejectionKind::FailedPrecondition,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Rejection {
    fn from(e: ConfigError) -> Self {
        Rejection::invalid(e.to_string())
    }
}

/// The state machine's answer to one log entry.
pub type CommandResult = Result<Applied, Rejection>;

/// The response type of the Raft state machine (one per log entry; blank
/// and membership entries answer `Ok(Applied::default())`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse(pub CommandResult);

impl Default for CommandResponse {
    fn default() -> Self {
        CommandResponse(Ok(Applied::default()))
    }
}

fn cluster_mut<'a>(state: &'a mut ClusterState, name: &str) -> Result<&'a mut Cluster, Rejection> {
    state.clusters.get_mut(name).ok_or_else(|| {
        Rejection::not_found(format!(
            "no cluster named {name:?}; `pgquorum status` lists the clusters"
        ))
    })
}

/// A switchover as the history names it: from whom, to whom.
fn describe(s: &Switchover) -> String {
    format!(
        "from {} to {}",
        s.from,
        s.to.as_deref().unwrap_or("the best replica")
    )
}

/// The member named `node`, or NOT_FOUND naming the ones there are.
pub(crate) fn require_member<'a>(
    cluster: &'a Cluster,
    node: &str,
) -> Result<&'a Member, Rejection> {
    cluster.member(node).ok_or_else(|| {
        Rejection::not_found(format!(
            "cluster {:?} has no node named {node:?}; known nodes: {}",
            cluster.name,
            cluster
                .members
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

fn require_epoch(cluster: &Cluster, epoch: u64) -> Result<(), Rejection> {
    if cluster.epoch == epoch {
        Ok(())
    } else {
        Err(Rejection::precondition(format!(
            "stale epoch {epoch}: cluster {:?} is in epoch {}",
            cluster.name, cluster.epoch
        )))
    }
}

fn applied(cluster: &Cluster, message: impl Into<String>) -> CommandResult {
    Ok(Applied {
        epoch: cluster.epoch,
        primary: cluster.primary.clone(),
        message: message.into(),
    })
}

impl ClusterCommand {
    /// The cluster this command concerns, if it concerns one.
    pub fn cluster(&self) -> Option<&str> {
        use ClusterCommand::*;
        match self {
            RegisterNode { cluster, .. }
            | RemoveNode { cluster, .. }
            | Bootstrap { cluster, .. }
            | SetSystemIdentifier { cluster, .. }
            | Promote { cluster, .. }
            | SetSyncSet { cluster, .. }
            | SetConfig { cluster, .. }
            | SetPaused { cluster, .. }
            | LeaseBounded { cluster, .. }
            | RequestSwitchover { cluster, .. }
            | AdvanceSwitchover { cluster, .. }
            | CancelSwitchover { cluster, .. }
            | CancelScheduledSwitchover { cluster, .. }
            | RequestNodeAction { cluster, .. }
            | CompleteNodeAction { cluster, .. }
            | CancelNodeAction { cluster, .. }
            | NoteFence { cluster, .. }
            | RemoveCluster { cluster } => Some(cluster),
            Recover { .. } | RetireManager { .. } | RestoreState { .. } => None,
        }
    }

    /// Apply the command to `state`, or refuse it and leave `state` as it was.
    pub fn apply(&self, state: &mut ClusterState) -> CommandResult {
        // Work on a copy of the one cluster concerned so that a rejection
        // half-way through cannot leave a partial change behind.
        use ClusterCommand::*;
        match self {
            RegisterNode {
                cluster,
                name,
                host,
                port,
                http,
                tags,
            } => register(state, cluster, name, host, *port, http, tags),
            RestoreState { state: restored } => {
                if !state.clusters.is_empty() {
                    return Err(Rejection::precondition(
                        "a state can only be restored into an empty manager group",
                    ));
                }
                *state = (**restored).clone();
                Ok(Applied {
                    message: format!("restored {} cluster(s)", state.clusters.len()),
                    ..Applied::default()
                })
            }
            RemoveCluster { cluster } => {
                if state.clusters.remove(cluster).is_none() {
                    return Err(Rejection::not_found(format!(
                        "no cluster named {cluster:?}"
                    )));
                }
                Ok(Applied {
                    message: format!("cluster {cluster} removed"),
                    ..Applied::default()
                })
            }
            RetireManager { id } => {
                state.retired_managers.insert(*id);
                Ok(Applied {
                    message: format!("manager id {id} retired"),
                    ..Applied::default()
                })
            }
            Recover { bump, at_unix_ms } => {
                if *bump == 0 {
                    return Err(Rejection::invalid(
                        "recovery must bump the epoch by at least 1",
                    ));
                }
                for c in state.clusters.values_mut() {
                    c.epoch += bump;
                    c.switchover = None;
                    let event = HistoryEvent {
                        at_unix_ms: *at_unix_ms,
                        kind: EventKind::Recovery,
                        reason: "manager group re-formed from one manager's data".to_string(),
                        old_primary: c.primary.clone(),
                        new_primary: c.primary.clone(),
                        epoch: c.epoch,
                        timeline: 0,
                        lsn: Lsn(0),
                        node: None,
                    };
                    c.push_history(event);
                }
                Ok(Applied {
                    message: format!("epoch of every cluster bumped by {bump}"),
                    ..Applied::default()
                })
            }
            _ => {
                let name = self.cluster().unwrap_or_default().to_string();
                let mut next = cluster_mut(state, &name)?.clone();
                let result = self.apply_to_cluster(&mut next)?;
                state.clusters.insert(name, next);
                Ok(result)
            }
        }
    }

    fn apply_to_cluster(&self, c: &mut Cluster) -> CommandResult {
        use ClusterCommand::*;
        match self {
            RegisterNode { .. }
            | RemoveCluster { .. }
            | Recover { .. }
            | RetireManager { .. }
            | RestoreState { .. } => {
                Err(Rejection::invalid("internal: not a single-cluster command"))
            }
            RemoveNode { name, .. } => {
                require_member(c, name)?;
                if c.is_primary(name) {
                    return Err(Rejection::precondition(format!(
                        "{name} is the primary; switch over to another node before removing it"
                    )));
                }
                if c.sync_set.contains(name) {
                    return Err(Rejection::precondition(format!(
                        "{name} is a synchronous standby; wait until it leaves the sync set"
                    )));
                }
                c.members.remove(name);
                applied(c, format!("node {name} removed"))
            }
            Bootstrap {
                node, at_unix_ms, ..
            } => {
                require_member(c, node)?;
                if c.epoch != 0 || c.primary.is_some() {
                    return Err(Rejection::precondition(format!(
                        "cluster {:?} is already bootstrapped (epoch {})",
                        c.name, c.epoch
                    )));
                }
                c.epoch = 1;
                c.primary = Some(node.clone());
                let event = HistoryEvent {
                    at_unix_ms: *at_unix_ms,
                    kind: EventKind::Bootstrap,
                    reason: "first primary of the cluster".to_string(),
                    old_primary: None,
                    new_primary: Some(node.clone()),
                    epoch: 1,
                    timeline: 1,
                    lsn: Lsn(0),
                    node: None,
                };
                c.push_history(event);
                applied(c, format!("{node} bootstraps the cluster"))
            }
            SetSystemIdentifier { id, .. } => match c.system_identifier {
                Some(known) if known != *id => Err(Rejection::precondition(format!(
                    "cluster {:?} already holds database system {known}, not {id}",
                    c.name
                ))),
                _ => {
                    c.system_identifier = Some(*id);
                    applied(c, format!("system identifier {id}"))
                }
            },
            Promote {
                expected_epoch,
                node,
                kind,
                reason,
                sync_set,
                timeline,
                lsn,
                at_unix_ms,
                ..
            } => {
                require_epoch(c, *expected_epoch)?;
                require_member(c, node)?;
                if c.is_primary(node) {
                    return Err(Rejection::precondition(format!(
                        "{node} is already the primary of epoch {}",
                        c.epoch
                    )));
                }
                if sync_set.contains(node) {
                    return Err(Rejection::invalid(
                        "the new primary cannot be in its own sync set",
                    ));
                }
                for member in sync_set {
                    require_member(c, member)?;
                }
                let old = c.primary.replace(node.clone());
                c.epoch += 1;
                c.sync_set = sync_set.clone();
                c.switchover = None;
                // The old primary either stopped (a switchover, or an
                // operator vouched for it) or held a bounded lease that the
                // leader waited out; the new one's is open while paused.
                c.open_lease = c.paused;
                let event = HistoryEvent {
                    at_unix_ms: *at_unix_ms,
                    kind: *kind,
                    reason: reason.clone(),
                    old_primary: old,
                    new_primary: Some(node.clone()),
                    epoch: c.epoch,
                    timeline: *timeline,
                    lsn: *lsn,
                    node: None,
                };
                c.push_history(event);
                applied(c, format!("{node} is the primary of epoch {}", c.epoch))
            }
            SetSyncSet {
                epoch, sync_set, ..
            } => {
                require_epoch(c, *epoch)?;
                for member in sync_set {
                    require_member(c, member)?;
                    if c.is_primary(member) {
                        return Err(Rejection::invalid(
                            "the primary cannot be in its own sync set",
                        ));
                    }
                }
                c.sync_set = sync_set.clone();
                applied(c, "sync set changed")
            }
            SetConfig {
                changes,
                at_unix_ms,
                ..
            } => {
                if changes.is_empty() {
                    return Err(Rejection::invalid(
                        "no configuration change given; use KEY=VALUE",
                    ));
                }
                c.config = c.config.with_changes(changes)?;
                c.config_version += 1;
                let what: Vec<String> = changes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let version = format!("configuration version {}", c.config_version);
                c.note(
                    EventKind::Config,
                    format!("{version}: {}", what.join(", ")),
                    *at_unix_ms,
                );
                applied(c, version)
            }
            SetPaused {
                paused, at_unix_ms, ..
            } => {
                if c.paused != *paused {
                    let (kind, why) = if *paused {
                        (EventKind::Pause, "paused: no automatic failover until resumed")
                    } else {
                        (EventKind::Resume, "resumed")
                    };
                    c.note(kind, why.to_string(), *at_unix_ms);
                }
                c.paused = *paused;
                if *paused && c.primary.is_some() {
                    c.open_lease = true;
                }
                applied(
                    c,
                    if *paused {
                        "paused: no automatic action until resumed"
                    } else {
                        "resumed"
                    },
                )
            }
            LeaseBounded { epoch, .. } => {
                if *epoch != c.epoch || c.paused {
                    return Err(Rejection::precondition(format!(
                        "stale: the lease of epoch {epoch} cannot be bounded (epoch {}, paused {})",
                        c.epoch, c.paused
                    )));
                }
                c.open_lease = false;
                applied(c, "the primary's lease is bounded again")
            }
            RequestSwitchover {
                from,
                to,
                not_before_unix_ms,
                requested_unix_ms,
                ..
            } => {
                let Some(primary) = c.primary.clone() else {
                    return Err(Rejection::precondition("the cluster has no primary yet"));
                };
                if let Some(from) = from {
                    if *from != primary {
                        return Err(Rejection::precondition(format!(
                            "{from} is not the primary; the primary is {primary}"
                        )));
                    }
                }
                if let Some(to) = to {
                    require_member(c, to)?;
                    if *to == primary {
                        return Err(Rejection::precondition(format!(
                            "{to} is already the primary; name a replica"
                        )));
                    }
                }
                if c.switchover.is_some() {
                    return Err(Rejection::precondition(
                        "a switchover is already planned; cancel it first",
                    ));
                }
                c.switchover = Some(Switchover {
                    from: primary,
                    to: to.clone(),
                    not_before_unix_ms: *not_before_unix_ms,
                    requested_unix_ms: *requested_unix_ms,
                    phase: SwitchoverPhase::Scheduled,
                });
                applied(c, "switchover scheduled")
            }
            AdvanceSwitchover { epoch, phase, .. } => {
                require_epoch(c, *epoch)?;
                let Some(switchover) = c.switchover.as_mut() else {
                    return Err(Rejection::precondition("no switchover is planned"));
                };
                if let SwitchoverPhase::Demoting { target } = phase {
                    if !c.members.contains_key(target) || c.primary.as_deref() == Some(target) {
                        return Err(Rejection::invalid(format!(
                            "{target} cannot be the switchover target"
                        )));
                    }
                }
                switchover.phase = phase.clone();
                applied(c, "switchover advanced")
            }
            CancelSwitchover {
                reason, at_unix_ms, ..
            } => {
                let Some(dropped) = c.switchover.take() else {
                    return Err(Rejection::precondition("no switchover is planned"));
                };
                c.note(
                    EventKind::SwitchoverCancelled,
                    format!("switchover {} given up: {reason}", describe(&dropped)),
                    *at_unix_ms,
                );
                applied(c, format!("switchover cancelled: {reason}"))
            }
            CancelScheduledSwitchover { at_unix_ms, .. } => match &c.switchover {
                None => Err(Rejection::precondition("no switchover is scheduled")),
                Some(s) if s.phase != SwitchoverPhase::Scheduled => Err(Rejection::precondition(
                    "the switchover is under way and can no longer be cancelled; see `pgquorum status`",
                )),
                Some(s) => {
                    let why = format!("scheduled switchover {} cancelled by an operator", describe(s));
                    c.switchover = None;
                    c.note(EventKind::SwitchoverCancelled, why, *at_unix_ms);
                    applied(c, "scheduled switchover cancelled")
                }
            },
            RequestNodeAction {
                node,
                kind,
                not_before_unix_ms,
                ..
            } => {
                require_member(c, node)?;
                if *kind == NodeActionKind::Reinit && c.is_primary(node) {
                    return Err(Rejection::precondition(format!(
                        "{node} is the primary; only a replica can be re-initialized"
                    )));
                }
                c.actions += 1;
                let id = c.actions;
                if let Some(member) = c.members.get_mut(node) {
                    member.action = Some(NodeAction {
                        id,
                        kind: *kind,
                        not_before_unix_ms: *not_before_unix_ms,
                    });
                }
                let mut message =
                    format!("{kind:?} of {node} requested (action {id})").to_lowercase();
                if let Some(at) = not_before_unix_ms {
                    message.push_str(&format!(
                        ", scheduled at {}",
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_millis(*at)
                        )
                    ));
                }
                applied(c, message)
            }
            CancelNodeAction { node, .. } => {
                require_member(c, node)?;
                let scheduled = c
                    .members
                    .get(node)
                    .and_then(|m| m.action.as_ref())
                    .is_some_and(|a| a.not_before_unix_ms.is_some());
                if !scheduled {
                    return Err(Rejection::precondition(format!(
                        "{node} has no scheduled action to cancel"
                    )));
                }
                if let Some(member) = c.members.get_mut(node) {
                    member.action = None;
                }
                applied(c, format!("scheduled action of {node} cancelled"))
            }
            CompleteNodeAction { node, id, .. } => {
                require_member(c, node)?;
                if let Some(member) = c.members.get_mut(node) {
                    if member.action.as_ref().map(|a| a.id) == Some(*id) {
                        member.action = None;
                    }
                }
                applied(c, format!("action {id} done"))
            }
            NoteFence {
                node,
                session,
                fences,
                reason,
                at_unix_ms,
                ..
            } => {
                require_member(c, node)?;
                let key = Some((*session, *fences));
                if c.members.get(node).map(|m| m.last_fence) != Some(key) {
                    let event = HistoryEvent {
                        at_unix_ms: *at_unix_ms,
                        kind: EventKind::Fence,
                        reason: reason.clone(),
                        old_primary: None,
                        new_primary: None,
                        epoch: c.epoch,
                        timeline: 0,
                        lsn: Lsn::default(),
                        node: Some(node.clone()),
                    };
                    c.push_history(event);
                    if let Some(m) = c.members.get_mut(node) {
                        m.last_fence = key;
                    }
                }
                applied(c, format!("{node} fenced"))
            }
        }
    }
}

fn register(
    state: &mut ClusterState,
    cluster: &str,
    name: &str,
    host: &str,
    port: u16,
    http: &str,
    tags: &Tags,
) -> CommandResult {
    if !valid_name(cluster) || !valid_name(name) {
        return Err(Rejection::invalid(format!(
            "invalid name {:?}/{:?}: use letters, digits, '-' and '_' (at most 63)",
            cluster, name
        )));
    }
    if host.is_empty() || port == 0 {
        return Err(Rejection::invalid(format!(
            "node {name} needs the host and port its PostgreSQL listens on"
        )));
    }
    if !state.clusters.contains_key(cluster) && state.clusters.len() >= MAX_CLUSTERS {
        return Err(Rejection::precondition(format!(
            "this manager group already serves {MAX_CLUSTERS} clusters, its limit: remove one \
             that is gone (`pgquorum cluster remove`) or run another manager group"
        )));
    }
    let c = state
        .clusters
        .entry(cluster.to_string())
        .or_insert_with(|| Cluster::new(cluster));
    if let Some(existing) = c.members.get_mut(name) {
        if existing.host != host || existing.port != port {
            return Err(Rejection::precondition(format!(
                "node name {name:?} is already taken by {}:{} in cluster {cluster:?}; choose \
                 another name, or remove the old node first",
                existing.host, existing.port
            )));
        }
        existing.http = http.to_string();
        existing.tags = tags.clone();
        return applied(c, format!("node {name} registered again"));
    }
    if let Some(other) = c
        .members
        .values()
        .find(|m| m.host == host && m.port == port)
    {
        return Err(Rejection::precondition(format!(
            "{host}:{port} is already registered as node {:?}",
            other.name
        )));
    }
    if c.members.len() >= MAX_MEMBERS {
        return Err(Rejection::precondition(format!(
            "cluster {cluster:?} already has {MAX_MEMBERS} nodes, its limit: remove one that \
             is gone (`pgquorum node remove`)"
        )));
    }
    c.registrations += 1;
    let member = Member {
        last_fence: None,
        name: name.to_string(),
        host: host.to_string(),
        port,
        http: http.to_string(),
        tags: tags.clone(),
        registered: c.registrations,
        action: None,
    };
    c.members.insert(name.to_string(), member);
    applied(c, format!("node {name} registered"))
}

/// Cluster and node names: short, and safe in file names, conninfo strings
/// and `synchronous_standby_names`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register_cmd(name: &str, port: u16) -> ClusterCommand {
        ClusterCommand::RegisterNode {
            cluster: "main".into(),
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            http: "127.0.0.1:8008".into(),
            tags: Tags::default(),
        }
    }

    /// Three nodes, `a` bootstrapped as the primary of epoch 1.
    fn bootstrapped() -> ClusterState {
        let mut s = three_nodes();
        ClusterCommand::Bootstrap {
            cluster: "main".into(),
            node: "a".into(),
            at_unix_ms: 0,
        }
        .apply(&mut s)
        .unwrap();
        s
    }

    fn three_nodes() -> ClusterState {
        let mut s = ClusterState::default();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            register_cmd(n, 5432 + i as u16).apply(&mut s).unwrap();
        }
        s
    }

    fn promote(node: &str, expected_epoch: u64) -> ClusterCommand {
        ClusterCommand::Promote {
            cluster: "main".into(),
            expected_epoch,
            node: node.into(),
            kind: EventKind::Failover,
            reason: "test".into(),
            sync_set: BTreeSet::new(),
            timeline: 1,
            lsn: Lsn(0),
            at_unix_ms: 0,
        }
    }

    #[test]
    fn a_fleet_of_clusters_fits_and_the_limits_name_what_to_do() {
        let mut s = ClusterState::default();
        let node_of = |cluster: usize, node: usize| ClusterCommand::RegisterNode {
            cluster: format!("c{cluster}"),
            name: format!("n{node}"),
            host: format!("10.0.{}.{}", cluster / 200, cluster % 200),
            port: 5432 + node as u16,
            http: "127.0.0.1:8008".into(),
            tags: Tags::default(),
        };
        // More clusters than members per cluster: the two limits are apart.
        for c in 0..MAX_CLUSTERS {
            node_of(c, 0).apply(&mut s).expect("within the limit");
        }
        let e = node_of(MAX_CLUSTERS, 0).apply(&mut s).unwrap_err();
        assert_eq!(e.kind, RejectionKind::FailedPrecondition);
        assert!(e.message.contains("cluster remove"), "{}", e.message);
        // Another node of an existing cluster still registers.
        node_of(0, 1)
            .apply(&mut s)
            .expect("a member of a known cluster");
        for n in 1..MAX_MEMBERS {
            node_of(1, n).apply(&mut s).expect("within the limit");
        }
        node_of(1, 0).apply(&mut s).expect("registered again");
        let e = node_of(1, MAX_MEMBERS).apply(&mut s).unwrap_err();
        assert!(e.message.contains("node remove"), "{}", e.message);
        assert_eq!(s.clusters.len(), MAX_CLUSTERS);
    }

    #[test]
    fn registration_creates_cluster_and_is_idempotent() {
        let mut s = three_nodes();
        assert_eq!(s.clusters["main"].members.len(), 3);
        register_cmd("a", 5432).apply(&mut s).unwrap();
        assert_eq!(s.clusters["main"].members["a"].registered, 1);
    }

    #[test]
    fn name_taken_by_another_host_is_refused() {
        let mut s = three_nodes();
        let before = s.clone();
        let err = register_cmd("a", 6000).apply(&mut s).unwrap_err();
        assert_eq!(err.kind, RejectionKind::FailedPrecondition);
        assert!(err.message.contains("already taken"));
        assert_eq!(s, before);
    }

    #[test]
    fn stale_epoch_promotion_changes_nothing() {
        let mut s = bootstrapped();
        promote("b", 1).apply(&mut s).unwrap();
        let before = s.clone();
        let err = promote("c", 1).apply(&mut s).unwrap_err();
        assert!(err.message.contains("stale epoch"), "{err}");
        assert_eq!(s, before);
        let c = &s.clusters["main"];
        assert_eq!((c.epoch, c.primary.as_deref()), (2, Some("b")));
        assert_eq!(c.history.len(), 2);
    }

    #[test]
    fn pausing_opens_the_lease_and_only_the_current_epoch_bounds_it() {
        let mut s = bootstrapped();
        let pause = |paused| ClusterCommand::SetPaused {
            at_unix_ms: 0,
            cluster: "main".into(),
            paused,
        };
        let bounded = |epoch| ClusterCommand::LeaseBounded {
            cluster: "main".into(),
            epoch,
        };
        pause(true).apply(&mut s).unwrap();
        assert!(s.clusters["main"].open_lease);
        let err = bounded(1).apply(&mut s).unwrap_err();
        assert!(err.message.contains("paused"), "{}", err.message);
        pause(false).apply(&mut s).unwrap();
        assert!(s.clusters["main"].open_lease);
        assert!(bounded(0).apply(&mut s).is_err());
        bounded(1).apply(&mut s).unwrap();
        assert!(!s.clusters["main"].open_lease);
    }

    #[test]
    fn unknown_cluster_and_node_are_not_found() {
        let mut s = three_nodes();
        let err = ClusterCommand::SetPaused {
            at_unix_ms: 0,
            cluster: "nope".into(),
            paused: true,
        }
        .apply(&mut s)
        .unwrap_err();
        assert_eq!(err.kind, RejectionKind::NotFound);
        let err = promote("zz", 0).apply(&mut s).unwrap_err();
        assert_eq!(err.kind, RejectionKind::NotFound);
    }

    #[test]
    fn bad_config_changes_nothing() {
        let mut s = three_nodes();
        let before = s.clone();
        let err = ClusterCommand::SetConfig {
            at_unix_ms: 0,
            cluster: "main".into(),
            changes: [("ttl".to_string(), "nonsense".to_string())].into(),
        }
        .apply(&mut s)
        .unwrap_err();
        assert_eq!(err.kind, RejectionKind::InvalidArgument);
        assert_eq!(s, before);
    }

    #[test]
    fn switchover_to_primary_is_refused() {
        let mut s = bootstrapped();
        let err = ClusterCommand::RequestSwitchover {
            cluster: "main".into(),
            from: None,
            to: Some("a".into()),
            not_before_unix_ms: None,
            requested_unix_ms: 0,
        }
        .apply(&mut s)
        .unwrap_err();
        assert_eq!(err.kind, RejectionKind::FailedPrecondition);
        assert!(s.clusters["main"].switchover.is_none());
    }

    #[test]
    fn only_a_scheduled_switchover_can_be_cancelled_by_the_operator() {
        let mut s = bootstrapped();
        let cancel = ClusterCommand::CancelScheduledSwitchover {
            at_unix_ms: 0,
            cluster: "main".into(),
        };
        let err = cancel.apply(&mut s).unwrap_err();
        assert!(
            err.message.contains("no switchover is scheduled"),
            "{err:?}"
        );
        let schedule = ClusterCommand::RequestSwitchover {
            cluster: "main".into(),
            from: None,
            to: Some("b".into()),
            not_before_unix_ms: Some(1_000),
            requested_unix_ms: 0,
        };
        schedule.apply(&mut s).unwrap();
        cancel.apply(&mut s).unwrap();
        assert!(s.clusters["main"].switchover.is_none());
        let last = s.clusters["main"].history.last().expect("history");
        assert_eq!(last.kind, EventKind::SwitchoverCancelled);
        assert!(last.reason.contains("from a to b"), "{last:?}");
        assert!(last.new_primary.is_none());

        // Once under way it runs to its end (or the leader gives up on it).
        schedule.apply(&mut s).unwrap();
        let epoch = s.clusters["main"].epoch;
        ClusterCommand::AdvanceSwitchover {
            cluster: "main".into(),
            epoch,
            phase: SwitchoverPhase::Demoting { target: "b".into() },
        }
        .apply(&mut s)
        .unwrap();
        let before = s.clone();
        let err = cancel.apply(&mut s).unwrap_err();
        assert_eq!(err.kind, RejectionKind::FailedPrecondition);
        assert!(err.message.contains("under way"), "{err:?}");
        assert_eq!(s, before);
    }

    /// Pauses, resumes and configuration changes are in the history (a
    /// repeated pause once), stamped with the operator's time, in the
    /// current epoch, naming no primary.
    #[test]
    fn operators_acts_are_in_the_history() {
        let mut s = bootstrapped();
        let pause = |paused, at_unix_ms| ClusterCommand::SetPaused {
            cluster: "main".into(),
            paused,
            at_unix_ms,
        };
        pause(true, 10).apply(&mut s).unwrap();
        pause(true, 11).apply(&mut s).unwrap();
        pause(false, 12).apply(&mut s).unwrap();
        ClusterCommand::SetConfig {
            cluster: "main".into(),
            changes: [("ttl".to_string(), "3s".to_string())].into(),
            at_unix_ms: 13,
        }
        .apply(&mut s)
        .unwrap();
        let h = &s.clusters["main"].history;
        let acts: Vec<(EventKind, u64)> =
            h.iter().skip(1).map(|e| (e.kind, e.at_unix_ms)).collect();
        assert_eq!(
            acts,
            vec![
                (EventKind::Pause, 10),
                (EventKind::Resume, 12),
                (EventKind::Config, 13)
            ]
        );
        let config = h.last().expect("config event");
        assert!(config.reason.contains("ttl=3s"), "{config:?}");
        assert_eq!(config.epoch, 1);
        assert!(h
            .iter()
            .skip(1)
            .all(|e| e.new_primary.is_none() && !EventKind::starts_epoch(e.kind.as_str())));
    }
}
