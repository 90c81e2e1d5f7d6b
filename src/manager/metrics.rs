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
    out
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
