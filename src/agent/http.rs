//! HTTP endpoints for load balancers and monitoring.
//!
//! * `GET /primary` — 200 only while this node is the primary of the
//!   current epoch, runs writable and holds a valid lease; 503 otherwise.
//! * `GET /replica[?lag=SIZE]` — 200 for a streaming replica (no further
//!   behind the primary than `lag`, when given: bytes, or with a unit as
//!   PostgreSQL writes them, `16kB`, `1MB`, `1GB`).
//! * `GET /health` — 200 while PostgreSQL runs and answers.
//! * Patroni's names, for load balancers and habits that expect them:
//!   `/leader`, `/read-write` and `/master` as `/primary`; `/read-only[?lag]`
//!   200 for the leased primary or a streaming replica; `/standby-leader`
//!   404 (no standby clusters); `/liveness` 200 while the agent answers;
//!   `/readiness` 200 for the leased primary or a streaming replica.
//! * `GET /status` — the node's state as JSON.
//! * `GET /metrics` — Prometheus text format.
//! * `POST /failsafe` — another node's agent asks for a failsafe promise
//!   (see [`super::failsafe`]).
//!
//! HAProxy's `option httpchk` sends OPTIONS (or HEAD) by default; the
//! health endpoints answer any method.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;

use super::node::Node;
use super::state::Intent;
use crate::proto::api::pg_quorum_client::PgQuorumClient;
use crate::proto::api::{ClusterRequest, GetStatusRequest};

/// The node's state, as `/status` shows it (and the other endpoints' body).
#[derive(Debug, Serialize)]
pub struct NodeStatusJson {
    pub node: String,
    pub cluster: String,
    /// `primary`, `replica`, `fenced` or `down`.
    pub role: String,
    pub running: bool,
    pub in_recovery: Option<bool>,
    pub streaming: bool,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
    pub received_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub epoch: u64,
    pub intent: Intent,
    pub lease_valid: bool,
    /// 0 when there is no lease or it is held open.
    pub lease_remaining_ms: u64,
    /// The lease is held open (granted while the cluster is paused).
    pub lease_open: bool,
    pub phase: String,
    pub upstream: Option<String>,
    /// The leader counts this replica in the committed sync set
    /// (synchronous mode).
    pub sync_standby: bool,
    pub pending_restart: bool,
    /// The node's keeper (the postmaster's parent, the lease's enforcer).
    pub keeper: Option<KeeperJson>,
    pub failsafe: FailsafeJson,
}

/// Failsafe mode, both sides.
#[derive(Debug, Serialize)]
pub struct FailsafeJson {
    /// This primary runs on promises from every other node (no manager
    /// leader reachable).
    pub active: bool,
    /// Why it is not (when it tried).
    pub refused: Option<String>,
    /// The primary this node promised to follow, and for how much longer
    /// it refuses to be made writable (a promise, or just started).
    pub promised_to: Option<String>,
    pub holdoff_ms: u64,
}

/// The keeper, as the agent last saw it.
#[derive(Debug, Serialize)]
pub struct KeeperJson {
    pub pid: u32,
    /// PostgreSQL runs as the keeper's child.
    pub supervises_postgres: bool,
    /// Times the keeper stopped PostgreSQL because the lease ran out.
    pub fences: u64,
    pub watchdog_armed: bool,
    pub watchdog_error: Option<String>,
    /// The commit gate streams from this primary (acknowledging its
    /// commits while the lease is valid).
    pub commit_gate_streaming: bool,
    /// Why the commit gate has no connection, while it has none (commits
    /// on a gated primary wait meanwhile).
    pub commit_gate_error: Option<String>,
}

/// The state behind every endpoint.
pub fn status_of(node: &Node) -> NodeStatusJson {
    let o = node.observation();
    let p = node.persisted();
    let pg = o.postgres.as_ref();
    let streaming = pg
        .and_then(|pg| pg.wal_receiver.as_ref())
        .is_some_and(|w| w.status == "streaming");
    let lease_remaining_ms = node.lease.remaining(p.epoch);
    let lease_open = lease_remaining_ms == u64::MAX;
    let keeper = node.keeper_state().map(|k| KeeperJson {
        pid: k.pid,
        supervises_postgres: k.postmaster.is_some(),
        fences: k.fences,
        watchdog_armed: k.watchdog.armed,
        watchdog_error: k.watchdog.error,
        commit_gate_streaming: k.gate.as_ref().is_some_and(|g| g.streaming),
        commit_gate_error: k.gate.and_then(|g| g.error),
    });
    let phase = node.phase();
    let role = match pg {
        Some(pg) if pg.in_recovery => "replica",
        Some(_) => "primary",
        None if phase == crate::cluster::wire::AgentPhase::Fenced => "fenced",
        None => "down",
    };
    let primary_lsn = node.primary_lsn();
    NodeStatusJson {
        node: node.config.name.clone(),
        cluster: node.config.cluster.clone(),
        role: role.to_string(),
        running: pg.is_some(),
        in_recovery: pg.map(|pg| pg.in_recovery),
        streaming,
        timeline: pg.map(|pg| pg.timeline),
        lsn: pg.map(|pg| pg.lsn.to_string()),
        received_lsn: pg.map(|pg| pg.received_lsn.to_string()),
        replay_lsn: pg.map(|pg| pg.replay_lsn.to_string()),
        lag_bytes: pg
            .filter(|pg| pg.in_recovery && primary_lsn.0 > 0)
            .map(|pg| pg.replay_lsn.bytes_until(primary_lsn)),
        epoch: p.epoch,
        intent: p.intent,
        lease_valid: lease_remaining_ms > 0,
        lease_remaining_ms: if lease_open { 0 } else { lease_remaining_ms },
        lease_open,
        phase: phase.as_str().to_string(),
        upstream: p.upstream.map(|u| u.node),
        sync_standby: pg.is_some_and(|pg| pg.in_recovery) && node.sync_standby(),
        pending_restart: pg.is_some_and(|pg| pg.pending_restart),
        keeper,
        failsafe: FailsafeJson {
            active: matches!(node.failsafe(), Some(Ok(_))),
            refused: node.failsafe().and_then(|f| f.err()),
            promised_to: node.promise_held().map(|p| p.to),
            holdoff_ms: node.holdoff_ms(),
        },
    }
}

fn answer(ok: bool, node: &Node) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status_of(node))).into_response()
}

async fn primary(State(node): State<Arc<Node>>) -> Response {
    answer(leased_primary(&node), &node)
}

/// A size as PostgreSQL and Patroni write it: bytes, or a number with a
/// unit (`B`, `kB`, `MB`, `GB`, `TB`, powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `?lag=SIZE`: None when absent; Err when it does not parse.
fn lag_limit(q: &HashMap<String, String>) -> Result<Option<u64>, ()> {
    match q.get("lag") {
        None => Ok(None),
        Some(text) => parse_size(text).map(Some).ok_or(()),
    }
}

fn bad_lag() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "lag must be a size in bytes or with a unit, e.g. ?lag=1048576 or ?lag=1MB (kB, MB, GB, TB)\n",
    )
        .into_response()
}

/// A streaming replica within `limit` bytes of the primary (any lag when
/// there is no limit).
fn streaming_replica(s: &NodeStatusJson, limit: Option<u64>) -> bool {
    s.in_recovery == Some(true)
        && s.streaming
        && limit.is_none_or(|limit| s.lag_bytes.is_some_and(|lag| lag <= limit))
}

fn leased_primary(node: &Node) -> bool {
    node.is_leased_primary() && node.intent() == Intent::Primary
}

async fn replica(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(limit) = lag_limit(&q) else {
        return bad_lag();
    };
    answer(streaming_replica(&status_of(&node), limit), &node)
}

/// Patroni's `/read-only`: the primary, or a replica that streams (within
/// `?lag`).
async fn read_only(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(limit) = lag_limit(&q) else {
        return bad_lag();
    };
    answer(
        leased_primary(&node) || streaming_replica(&status_of(&node), limit),
        &node,
    )
}

/// Patroni's `/sync`: a streaming replica (within `?lag`) that the leader
/// counts in the committed sync set.
async fn sync(State(node): State<Arc<Node>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Ok(limit) = lag_limit(&q) else {
        return bad_lag();
    };
    let s = status_of(&node);
    answer(streaming_replica(&s, limit) && s.sync_standby, &node)
}

/// Patroni's `/async`: a streaming replica (within `?lag`) outside the sync
/// set.
async fn asynchronous(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(limit) = lag_limit(&q) else {
        return bad_lag();
    };
    let s = status_of(&node);
    answer(streaming_replica(&s, limit) && !s.sync_standby, &node)
}

/// Patroni's `/readiness`: ready to serve as what it is.
async fn readiness(State(node): State<Arc<Node>>) -> Response {
    answer(
        leased_primary(&node) || streaming_replica(&status_of(&node), None),
        &node,
    )
}

/// Patroni's `/liveness`: the agent is alive (it answers).
async fn liveness(State(node): State<Arc<Node>>) -> Response {
    answer(true, &node)
}

/// Patroni's `/standby-leader`: pgquorum has no standby clusters (yet).
async fn standby_leader() -> Response {
    (
        StatusCode::NOT_FOUND,
        "no standby cluster: pgquorum does not run standby clusters\n",
    )
        .into_response()
}

async fn health(State(node): State<Arc<Node>>) -> Response {
    answer(node.observation().postgres.is_some(), &node)
}

/// Another node's agent, primary without a manager leader, asks for a
/// failsafe promise.
async fn failsafe(
    State(node): State<Arc<Node>>,
    Json(request): Json<crate::cluster::wire::FailsafeRequest>,
) -> Response {
    let reply = super::failsafe::answer(&node, &request);
    let code = if reply.refused.is_none() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (code, Json(reply)).into_response()
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    (StatusCode::OK, Json(status_of(&node))).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let s = status_of(&node);
    let labels = format!("cluster=\"{}\",node=\"{}\"", s.cluster, s.node);
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}"
        );
    };
    let b = |v: bool| if v { "1" } else { "0" }.to_string();
    metric(
        "pgquorum_postgres_up",
        "PostgreSQL runs and answers.",
        b(s.running),
    );
    metric(
        "pgquorum_primary",
        "This node runs as a writable primary.",
        b(s.role == "primary"),
    );
    metric(
        "pgquorum_replica",
        "This node runs as a replica.",
        b(s.role == "replica"),
    );
    metric(
        "pgquorum_fenced",
        "PostgreSQL was fenced (lease lost or ordered).",
        b(s.role == "fenced"),
    );
    metric(
        "pgquorum_streaming",
        "The WAL receiver streams from the upstream.",
        b(s.streaming),
    );
    metric(
        "pgquorum_epoch",
        "Highest epoch this node has seen.",
        s.epoch.to_string(),
    );
    metric(
        "pgquorum_lease_valid",
        "This node holds a valid primary lease.",
        b(s.lease_valid),
    );
    metric(
        "pgquorum_lease_remaining_seconds",
        "Time left on the primary lease (+Inf while held open).",
        if s.lease_open {
            "+Inf".to_string()
        } else {
            format!("{:.3}", s.lease_remaining_ms as f64 / 1000.0)
        },
    );
    metric(
        "pgquorum_failsafe_active",
        "This primary keeps its lease on its peers' promises (no manager leader).",
        b(s.failsafe.active),
    );
    metric(
        "pgquorum_failsafe_holdoff_seconds",
        "How long this node refuses to be made writable (a failsafe promise).",
        format!("{:.3}", s.failsafe.holdoff_ms as f64 / 1000.0),
    );
    metric(
        "pgquorum_lease_open",
        "The lease is held open (the cluster is paused).",
        b(s.lease_open),
    );
    metric(
        "pgquorum_keeper_up",
        "The keeper answered the agent's last look.",
        b(s.keeper.is_some()),
    );
    if let Some(k) = &s.keeper {
        metric(
            "pgquorum_keeper_fences",
            "Times the keeper stopped PostgreSQL because the lease ran out (since it started).",
            k.fences.to_string(),
        );
        metric(
            "pgquorum_watchdog_armed",
            "The hardware watchdog is armed.",
            b(k.watchdog_armed),
        );
        metric(
            "pgquorum_commit_gate_streaming",
            "The keeper's commit gate streams from this server (a gated primary's commits wait for it).",
            b(k.commit_gate_streaming),
        );
    }
    let o = node.observation();
    if let Some(pg) = o.postgres {
        metric(
            "pgquorum_timeline",
            "PostgreSQL timeline.",
            pg.timeline.to_string(),
        );
        metric(
            "pgquorum_wal_lsn_bytes",
            "Write LSN (primary) or replay LSN (replica), in bytes.",
            pg.lsn.0.to_string(),
        );
        metric(
            "pgquorum_received_lsn_bytes",
            "Flushed (primary) or received (replica) LSN, in bytes.",
            pg.received_lsn.0.to_string(),
        );
        metric(
            "pgquorum_replay_lsn_bytes",
            "Replayed LSN, in bytes.",
            pg.replay_lsn.0.to_string(),
        );
        metric(
            "pgquorum_pending_restart",
            "A parameter change waits for a restart.",
            b(pg.pending_restart),
        );
    }
    if let Some(lag) = s.lag_bytes {
        metric(
            "pgquorum_replication_lag_bytes",
            "Bytes the replica has not replayed yet.",
            lag.to_string(),
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Ask the managers (the first that answers, through this agent's own
/// TLS settings) for something the agent does not know itself.
async fn ask_managers<T, Fut>(
    node: &Node,
    call: impl Fn(PgQuorumClient<tonic::transport::Channel>) -> Fut,
) -> Result<T, String>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = "no manager configured".to_string();
    for address in &node.config.managers {
        let channel = match crate::transport::channel(address, node.config.security.tls.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match tokio::time::timeout(ASK_MANAGERS, call(PgQuorumClient::new(channel))).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(s)) => last = format!("{address}: {}", s.message()),
            Err(_) => last = format!("{address}: no answer within {ASK_MANAGERS:?}"),
        }
    }
    Err(last)
}

/// How long `/cluster` and `/history` wait for one manager.
const ASK_MANAGERS: std::time::Duration = std::time::Duration::from_secs(2);

fn no_manager(why: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": format!("no manager answered: {why}") })),
    )
        .into_response()
}

/// Patroni's `/cluster`: the whole cluster as `pgquorum status --json`
/// shows it, asked of the managers.
async fn cluster(State(node): State<Arc<Node>>) -> Response {
    let name = node.config.cluster.clone();
    let asked = ask_managers(&node, |mut api| {
        let cluster = name.clone();
        async move {
            api.get_status(GetStatusRequest {
                cluster,
                local: false,
            })
            .await
        }
    })
    .await;
    match asked {
        Ok(status) => Json(crate::views::StatusJson::from(&status)).into_response(),
        Err(why) => no_manager(why),
    }
}

/// Patroni's `/history`: the cluster's promotions and operator actions,
/// as `pgquorum history --json` shows them.
async fn history(State(node): State<Arc<Node>>) -> Response {
    let name = node.config.cluster.clone();
    let asked = ask_managers(&node, |mut api| {
        let cluster = name.clone();
        async move {
            api.history(ClusterRequest {
                cluster,
                local: false,
            })
            .await
        }
    })
    .await;
    match asked {
        Ok(r) => {
            let events: Vec<crate::views::EventJson> = r.events.iter().map(Into::into).collect();
            Json(events).into_response()
        }
        Err(why) => no_manager(why),
    }
}

/// The router of the agent's HTTP server.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/primary", any(primary))
        .route("/replica", any(replica))
        .route("/health", any(health))
        // Patroni's names.
        .route("/leader", any(primary))
        .route("/read-write", any(primary))
        .route("/master", any(primary))
        .route("/read-only", any(read_only))
        .route("/sync", any(sync))
        .route("/synchronous", any(sync))
        .route("/async", any(asynchronous))
        .route("/asynchronous", any(asynchronous))
        .route("/standby-leader", any(standby_leader))
        .route("/liveness", any(liveness))
        .route("/readiness", any(readiness))
        .route("/status", get(status))
        .route("/cluster", get(cluster))
        .route("/history", get(history))
        .route("/metrics", get(metrics))
        .route("/failsafe", axum::routing::post(failsafe))
        .with_state(node)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_as_postgresql_writes_them() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("16kB"), Some(16 << 10));
        assert_eq!(parse_size("1MB"), Some(1 << 20));
        assert_eq!(parse_size("2 GB"), Some(2 << 30));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("0B"), Some(0));
        for bad in ["", "lots", "1.5MB", "1mb", "-1", "MB", "99999999999TB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
