//! Stopping a manager fast, the leader included, without costing the
//! primary its lease.
//!
//! A leader that simply stopped would leave the followers waiting out
//! their leader lease plus an election timeout before anyone stands for
//! election (openraft rejects votes while a follower's lease from the
//! leader runs). So the leader, before it stops, asks its most up-to-date
//! follower to stand for election the moment that lease has run out
//! ([`take_over`]); that follower wins at once (its log is the longest).
//! openraft 0.9 has no leader transfer of its own.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Request;

use super::node::ManagerNode;
use crate::proto::raft::raft_client::RaftClient;
use crate::proto::raft::RaftMessage;

/// Payload of the `TakeOver` RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TakeOver {
    /// The leader that is stepping down.
    pub from: u64,
    /// Stand for election after this long (the leader lease).
    pub after_ms: u64,
}

/// A follower asked to take over: after `after_ms`, unless another leader
/// has shown up meanwhile, start an election.
pub fn take_over(node: Arc<ManagerNode>, rpc: TakeOver) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(rpc.after_ms)).await;
        let leader = node.raft.metrics().borrow().current_leader;
        if leader.is_some_and(|l| l != rpc.from) {
            return;
        }
        tracing::info!(
            from = rpc.from,
            "the leader stepped down: standing for election"
        );
        if let Err(e) = node.raft.trigger().elect().await {
            tracing::warn!(error = %e, "cannot start an election");
        }
    });
}

/// On the leader: ask the voter that has replicated the whole log to take
/// over. Returns its id, or `None` when no follower is up to date (the
/// followers then elect by their own timers).
pub async fn hand_over(node: &ManagerNode, lease: Duration) -> Option<u64> {
    let metrics = node.raft.metrics().borrow().clone();
    if metrics.current_leader != Some(node.id) {
        return None;
    }
    let last = metrics.last_log_index?;
    let voters: Vec<u64> = metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != node.id)
        .collect();
    let replication = metrics.replication.unwrap_or_default();
    let target = voters.into_iter().find(|id| {
        replication
            .get(id)
            .and_then(|matched| *matched)
            .is_some_and(|m| m.index >= last)
    })?;
    let address = metrics
        .membership_config
        .membership()
        .get_node(&target)?
        .addr
        .clone();
    let channel = node.channel(&address).ok()?;
    let payload = serde_json::to_vec(&TakeOver {
        from: node.id,
        // Just past the follower's lease from our last heartbeat.
        after_ms: lease.as_millis() as u64 + 20,
    })
    .ok()?;
    let mut request = Request::new(RaftMessage {
        target,
        from: node.id,
        group: node.identity.group(),
        payload,
    });
    request.set_timeout(Duration::from_millis(300));
    match RaftClient::new(channel).take_over(request).await {
        Ok(_) => Some(target),
        Err(e) => {
            tracing::warn!(target, error = %e, "the chosen follower did not take the hand-over");
            None
        }
    }
}
