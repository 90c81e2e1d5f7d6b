//! The manager's Prometheus `/metrics` (Raft state, control-loop counters,
//! the split-brain alert) on its own HTTP port (`metrics_listen`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::control::Control;
use super::node::ManagerNode;
use crate::proto::api::{ClusterStatus, NodeStatus};

#[derive(Clone)]
struct Sources {
    node: Arc<ManagerNode>,
    control: Control,
}

fn gauge(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The metrics text of one manager.
pub fn render(node: &ManagerNode, control: &Control) -> String {
    let m = node.raft.metrics().borrow().clone();
    let id = format!("{{manager=\"{}\"}}", node.id);
    let one = |v: u64| vec![(id.clone(), v.to_string())];
    let mut out = String::new();
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    gauge(
        &mut out,
        "pgquorum_raft_term",
        "Current Raft term.",
        "gauge",
        &one(m.current_term),
    );
    gauge(
        &mut out,
        "pgquorum_raft_is_leader",
        "1 if this manager is the Raft leader.",
        "gauge",
        &one(u64::from(m.current_leader == Some(node.id))),
    );
    gauge(
        &mut out,
        "pgquorum_raft_leader_id",
        "Id of the leader this manager knows (0: none).",
        "gauge",
        &one(m.current_leader.unwrap_or(0)),
    );
    gauge(
        &mut out,
        "pgquorum_raft_last_log_index",
        "Index of the last log entry.",
        "gauge",
        &one(last_log),
    );
    gauge(
        &mut out,
        "pgquorum_raft_last_applied_index",
        "Index of the last applied entry (the committed state this manager serves).",
        "gauge",
        &one(applied),
    );
    gauge(
        &mut out,
        "pgquorum_raft_apply_lag",
        "Log entries not applied yet.",
        "gauge",
        &one(last_log.saturating_sub(applied)),
    );
    gauge(
        &mut out,
        "pgquorum_raft_voters",
        "Voters in the membership.",
        "gauge",
        &one(m.membership_config.membership().voter_ids().count() as u64),
    );
    let c = control.counters();
    let counter = |a: &std::sync::atomic::AtomicU64| one(a.load(Ordering::Relaxed));
    gauge(
        &mut out,
        "pgquorum_decisions_total",
        "Decisions committed by this manager while leader.",
        "counter",
        &counter(&c.decisions),
    );
    gauge(
        &mut out,
        "pgquorum_failovers_total",
        "Promotions other than switchovers committed by this manager.",
        "counter",
        &counter(&c.failovers),
    );
    gauge(
        &mut out,
        "pgquorum_switchovers_total",
        "Switchovers committed by this manager.",
        "counter",
        &counter(&c.switchovers),
    );
    gauge(
        &mut out,
        "pgquorum_agent_commands_total",
        "Commands sent to agents.",
        "counter",
        &counter(&c.commands),
    );
    gauge(
        &mut out,
        "pgquorum_lease_grants_total",
        "Lease grants sent to primaries.",
        "counter",
        &counter(&c.lease_grants),
    );
    gauge(
        &mut out,
        "pgquorum_lease_denials_total",
        "Passes in which a primary wanted its lease and got none.",
        "counter",
        &counter(&c.lease_denials),
    );
    let split: Vec<(String, String)> = control
        .split_brain_suspected()
        .into_iter()
        .map(|(cluster, s)| {
            (
                format!("{{manager=\"{}\",cluster=\"{cluster}\"}}", node.id),
                u64::from(s).to_string(),
            )
        })
        .collect();
    gauge(
        &mut out,
        "pgquorum_split_brain_suspected",
        "1 while more than one node of the cluster reports a writable PostgreSQL (leader only). Alert on it.",
        "gauge",
        &split,
    );
    let leader = m.current_leader == Some(node.id);
    render_clusters(&mut out, node, control, leader);
    out
}

/// Per-cluster and per-node gauges, from the same status `pgquorum
/// status` shows. What comes from the committed state (epoch, primary,
/// sync set) every manager serves; what comes from the agents' reports
/// (health, lag, last report) only the leader knows.
fn render_clusters(out: &mut String, node: &ManagerNode, control: &Control, leader: bool) {
    let state = node.local_state();
    let statuses: Vec<_> = state
        .state
        .clusters
        .values()
        .map(|c| {
            let soft = leader.then(|| control.soft_view(&c.name));
            super::status::build(c, soft.as_ref(), Vec::new())
        })
        .collect();
    let cluster_label = |c: &str| format!("{{manager=\"{}\",cluster=\"{c}\"}}", node.id);
    let node_label =
        |c: &str, n: &str| format!("{{manager=\"{}\",cluster=\"{c}\",node=\"{n}\"}}", node.id);
    let per_cluster = |f: &dyn Fn(&ClusterStatus) -> u64| -> Vec<(String, String)> {
        statuses
            .iter()
            .map(|s| (cluster_label(&s.cluster), f(s).to_string()))
            .collect()
    };
    let per_node = |f: &dyn Fn(&ClusterStatus, &NodeStatus) -> Option<String>| {
        statuses
            .iter()
            .flat_map(|s| {
                s.nodes
                    .iter()
                    .filter_map(|n| Some((node_label(&s.cluster, &n.name), f(s, n)?)))
            })
            .collect::<Vec<(String, String)>>()
    };
    let flag = |b: bool| Some(u64::from(b).to_string());
    gauge(
        out,
        "pgquorum_cluster_epoch",
        "Current epoch of the cluster (bumped by every promotion).",
        "gauge",
        &per_cluster(&|s| s.epoch),
    );
    gauge(
        out,
        "pgquorum_cluster_paused",
        "1 while automatic actions are paused.",
        "gauge",
        &per_cluster(&|s| u64::from(s.paused)),
    );
    gauge(
        out,
        "pgquorum_cluster_nodes",
        "Member nodes.",
        "gauge",
        &per_cluster(&|s| s.nodes.len() as u64),
    );
    gauge(
        out,
        "pgquorum_node_is_primary",
        "1 for the primary of the current epoch (committed).",
        "gauge",
        &per_node(&|s, n| flag(n.name == s.primary)),
    );
    gauge(
        out,
        "pgquorum_node_sync_standby",
        "1 for a member of the committed synchronous standby set.",
        "gauge",
        &per_node(&|_, n| flag(n.sync)),
    );
    if !leader {
        return;
    }
    let roles: Vec<(String, String)> = statuses
        .iter()
        .flat_map(|s| {
            s.nodes.iter().map(|n| {
                (
                    format!(
                        "{{manager=\"{}\",cluster=\"{}\",node=\"{}\",role=\"{}\",state=\"{}\"}}",
                        node.id, s.cluster, n.name, n.role, n.state
                    ),
                    "1".to_string(),
                )
            })
        })
        .collect();
    gauge(
        out,
        "pgquorum_node_role",
        "1 with the node's role and state as labels (leader only).",
        "gauge",
        &roles,
    );
    gauge(out, "pgquorum_node_healthy", "1 while the node does its role's job: a primary taking writes, a replica streaming (leader only).", "gauge", &per_node(&|_, n| flag(n.healthy)));
    gauge(
        out,
        "pgquorum_node_lag_bytes",
        "Bytes the node is behind the primary's write LSN (leader only; absent when unknown).",
        "gauge",
        &per_node(&|_, n| n.lag_bytes.map(|l| l.to_string())),
    );
    gauge(
        out,
        "pgquorum_node_timeline",
        "The node's PostgreSQL timeline (leader only).",
        "gauge",
        &per_node(&|_, n| Some(n.timeline.to_string())),
    );
    gauge(
        out,
        "pgquorum_node_last_report_seconds",
        "Seconds since the node's agent last reported (leader only).",
        "gauge",
        &per_node(&|_, n| {
            n.last_seen_ms
                .map(|ms| format!("{:.3}", ms as f64 / 1000.0))
        }),
    );
    gauge(
        out,
        "pgquorum_node_pending_restart",
        "1 while a parameter change waits for a restart of the node (leader only).",
        "gauge",
        &per_node(&|_, n| flag(n.pending_restart)),
    );
}

async fn metrics(State(s): State<Sources>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&s.node, &s.control),
    )
}

/// The router of the manager's HTTP port.
pub fn router(node: Arc<ManagerNode>, control: Control) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Sources { node, control })
}
