//! Waiting for a long operation (switchover, failover, reinit, restart) to
//! finish, with progress on a terminal: the nodes' roles and states as
//! they change.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::client::{request, ApiClient};
use super::output::Failure;
use crate::proto::api::{ClusterStatus, GetStatusRequest};

/// How long the CLI waits for an operation by default.
pub const WAIT: Duration = Duration::from_secs(180);

/// What "done" means.
pub enum Goal {
    /// A healthy primary in an epoch after `epoch` (and it is `to`, if given).
    NewPrimary { epoch: u64, to: Option<String> },
    /// `node`'s operator action is carried out and it is healthy again;
    /// a failure of the command carrying it out (`action`), other than
    /// `failure_before`, ends the wait.
    NodeDone {
        node: String,
        action: &'static str,
        failure_before: String,
    },
}

pub async fn status(client: &ApiClient, cluster: &str) -> Result<ClusterStatus, Failure> {
    Ok(client
        .call(|mut c, t| {
            let req = GetStatusRequest {
                cluster: cluster.to_string(),
                local: false,
            };
            async move { c.get_status(request(req, t)).await }
        })
        .await?)
}

fn summary(s: &ClusterStatus) -> String {
    s.nodes
        .iter()
        .map(|n| format!("{} {}/{}", n.name, n.role, n.state))
        .collect::<Vec<_>>()
        .join(", ")
}

fn reached(goal: &Goal, s: &ClusterStatus) -> bool {
    let healthy_primary = s
        .nodes
        .iter()
        .any(|n| n.name == s.primary && n.role == "primary" && n.healthy);
    match goal {
        Goal::NewPrimary { epoch, to } => {
            s.epoch > *epoch && healthy_primary && to.as_ref().is_none_or(|t| *t == s.primary)
        }
        Goal::NodeDone { node, .. } => s
            .nodes
            .iter()
            .any(|n| n.name == *node && n.pending_action.is_empty() && n.healthy),
    }
}

/// The node's agent reports a failed command it had not before the
/// request: said at once instead of after the wait.
fn new_failure(goal: &Goal, s: &ClusterStatus) -> Option<String> {
    let Goal::NodeDone {
        node,
        action,
        failure_before,
    } = goal
    else {
        return None;
    };
    let n = s.nodes.iter().find(|n| n.name == *node)?;
    // Other commands may fail on the way (and be sent again): only the
    // operation's own is news.
    let own = n.last_failure_action == *action;
    (own && !n.last_failure.is_empty() && n.last_failure != *failure_before).then(|| {
        format!(
            "{node}: {}; the leader tries again while the request stands (`pgquorum status` shows where it stands)",
            n.last_failure
        )
    })
}

/// The node's last command failure now ("" when none), to tell a new one.
pub async fn failure_now(client: &ApiClient, cluster: &str, node: &str) -> String {
    status(client, cluster)
        .await
        .ok()
        .and_then(|s| s.nodes.into_iter().find(|n| n.name == node))
        .map(|n| n.last_failure)
        .unwrap_or_default()
}

/// Poll the status until `goal` is reached; progress lines on a terminal.
pub async fn wait(
    client: &ApiClient,
    cluster: &str,
    goal: Goal,
    limit: Duration,
) -> Result<ClusterStatus, Failure> {
    let show = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(s) = status(client, cluster).await {
            let line = summary(&s);
            if show && line != last {
                eprintln!(
                    "  [{:>5.1}s] epoch {}: {line}",
                    started.elapsed().as_secs_f64(),
                    s.epoch
                );
                last = line;
            }
            if reached(&goal, &s) {
                return Ok(s);
            }
            if let Some(failure) = new_failure(&goal, &s) {
                return Err(Failure::failed(failure));
            }
        }
        if started.elapsed() > limit {
            return Err(Failure::failed(format!(
                "not finished after {}; `pgquorum status` shows where it stands (--timeout waits longer; the operation goes on either way)",
                humantime::format_duration(limit)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
