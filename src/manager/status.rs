//! Turning committed state plus the leader's reports into the API's
//! `ClusterStatus`: the one place that decides what "role", "state",
//! "healthy" and "lag" mean to an operator.

use super::control::{NodeSoft, SoftView};
use crate::cluster::state::HistoryEvent as Event;
use crate::cluster::wire::{AgentPhase, DataDirState};
use crate::cluster::{Cluster, Member};
use crate::proto::api::{ClusterStatus, ClusterSummary, HistoryEvent, ManagerInfo, NodeStatus};

/// A report older than this many heartbeats means the agent is unreachable.
const STALE_HEARTBEATS: u64 = 4;

/// Build the status of `cluster`. `soft` is `None` for a local read.
pub fn build(
    cluster: &Cluster,
    soft: Option<&SoftView>,
    managers: Vec<ManagerInfo>,
) -> ClusterStatus {
    let stale_after =
        (cluster.config.heartbeat_interval_ms * STALE_HEARTBEATS).max(cluster.config.ttl_ms);
    let fresh = |name: &str| {
        soft.and_then(|s| s.nodes.get(name))
            .filter(|n| n.age_ms <= stale_after)
    };
    let primary_lsn = cluster
        .primary
        .as_deref()
        .and_then(&fresh)
        .and_then(|n| n.report.postgres.as_ref())
        .filter(|pg| !pg.in_recovery)
        .map(|pg| pg.lsn);
    let nodes = cluster
        .members
        .values()
        .map(|m| {
            node_status(
                cluster,
                m,
                fresh(&m.name),
                soft.and_then(|s| s.nodes.get(&m.name)),
                primary_lsn,
            )
        })
        .collect();
    let operation = cluster
        .switchover
        .as_ref()
        .map(|s| match &s.phase {
            crate::cluster::state::SwitchoverPhase::Demoting { target } => {
                format!("switchover from {} to {target} under way", s.from)
            }
            crate::cluster::state::SwitchoverPhase::Scheduled => String::new(),
        })
        .unwrap_or_default();
    ClusterStatus {
        cluster: cluster.name.clone(),
        epoch: cluster.epoch,
        primary: cluster.primary.clone().unwrap_or_default(),
        paused: cluster.paused,
        lease_open: cluster.open_lease,
        nodes,
        managers,
        sync_mode: cluster.config.sync_mode.to_string(),
        pending_switchover: cluster
            .switchover
            .as_ref()
            .filter(|s| s.phase == crate::cluster::state::SwitchoverPhase::Scheduled)
            .map(|s| {
                let to =
                    s.to.clone()
                        .unwrap_or_else(|| "the best replica".to_string());
                match s.not_before_unix_ms {
                    Some(ms) => format!("from {} to {to} at {}", s.from, rfc3339(ms)),
                    None => format!("from {} to {to}", s.from),
                }
            })
            .unwrap_or_default(),
        operation,
    }
}

fn node_status(
    cluster: &Cluster,
    member: &Member,
    fresh: Option<&NodeSoft>,
    last: Option<&NodeSoft>,
    primary_lsn: Option<crate::cluster::Lsn>,
) -> NodeStatus {
    let mut status = NodeStatus {
        name: member.name.clone(),
        role: "unknown".to_string(),
        state: if last.is_some() {
            "unreachable"
        } else {
            "unknown"
        }
        .to_string(),
        host: member.host.clone(),
        port: u32::from(member.port),
        sync: cluster.sync_set.contains(&member.name),
        nofailover: member.tags.nofailover,
        nosync: member.tags.nosync,
        priority: member.tags.priority,
        http: member.http.clone(),
        last_seen_ms: last.map(|n| n.age_ms),
        pending_action: member
            .action
            .as_ref()
            .map(|a| match a.kind {
                crate::cluster::state::NodeActionKind::Restart => "restart",
                crate::cluster::state::NodeActionKind::RestartPending => "restart_pending",
                crate::cluster::state::NodeActionKind::Reload => "reload",
                crate::cluster::state::NodeActionKind::Reinit => "reinit",
            })
            .unwrap_or_default()
            .to_string(),
        pending_action_at: member
            .action
            .as_ref()
            .and_then(|a| a.not_before_unix_ms)
            .map(rfc3339)
            .unwrap_or_default(),
        ..NodeStatus::default()
    };
    if let Some(failed) = last
        .and_then(|n| n.report.last_command.as_ref())
        .filter(|c| !c.ok)
    {
        status.last_failure = format!("command {} failed: {}", failed.id, failed.message);
        status.last_failure_action = failed.action.clone();
    }
    let Some(soft) = fresh else {
        return status;
    };
    let report = &soft.report;
    status.epoch = report.epoch;
    match &report.postgres {
        Some(pg) => {
            status.timeline = pg.timeline;
            status.lsn = pg.lsn.to_string();
            status.pending_restart = pg.pending_restart;
            if pg.in_recovery {
                status.role = "replica".to_string();
                let streaming = pg
                    .wal_receiver
                    .as_ref()
                    .is_some_and(|w| w.status == "streaming");
                status.state = if streaming { "streaming" } else { "recovering" }.to_string();
                status.healthy = streaming;
                status.lag_bytes = primary_lsn.map(|p| pg.received_lsn.bytes_until(p));
            } else {
                status.role = "primary".to_string();
                status.state = "running".to_string();
                status.healthy = cluster.is_primary(&member.name)
                    && report.holds_lease
                    && report.epoch == cluster.epoch;
                status.lag_bytes = Some(0);
            }
        }
        None => {
            status.role = if report.phase == AgentPhase::Fenced {
                "fenced"
            } else {
                "down"
            }
            .to_string();
            status.state = match report.phase {
                AgentPhase::Idle => match report.data {
                    DataDirState::Empty => "empty",
                    DataDirState::Foreign { .. } => "foreign data",
                    DataDirState::Valid { .. } => "stopped",
                },
                phase => phase.as_str(),
            }
            .to_string();
        }
    }
    if report.phase != AgentPhase::Idle && report.postgres.is_some() {
        status.state = report.phase.as_str().to_string();
    }
    status
}

fn rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One history entry for the API.
pub fn history_event(e: &Event) -> HistoryEvent {
    HistoryEvent {
        time: rfc3339(e.at_unix_ms),
        kind: e.kind.as_str().to_string(),
        reason: e.reason.clone(),
        old_primary: e.old_primary.clone().unwrap_or_default(),
        new_primary: e.new_primary.clone().unwrap_or_default(),
        epoch: e.epoch,
        timeline: e.timeline,
        lsn: e.lsn.to_string(),
        at_unix_ms: e.at_unix_ms,
        node: e.node.clone().unwrap_or_default(),
    }
}

/// One line of the fleet: a cluster's status, summed up.
pub fn summary(s: &ClusterStatus) -> ClusterSummary {
    ClusterSummary {
        cluster: s.cluster.clone(),
        primary: s.primary.clone(),
        epoch: s.epoch,
        nodes: s.nodes.len() as u32,
        healthy: s.nodes.iter().filter(|n| n.healthy).count() as u32,
        sync: s
            .nodes
            .iter()
            .filter(|n| n.sync)
            .map(|n| n.name.clone())
            .collect(),
        paused: s.paused,
        worst_lag_bytes: s
            .nodes
            .iter()
            .filter(|n| n.role == "replica")
            .filter_map(|n| n.lag_bytes)
            .max(),
    }
}
