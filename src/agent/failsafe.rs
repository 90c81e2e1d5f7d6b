//! Failsafe mode: the primary keeps its lease while no manager leader can
//! be reached — but only while it can prove that nobody else can be
//! promoted. Every other node's agent must promise, directly, agent to
//! agent, that it still follows this primary's epoch and will refuse to be
//! made writable until the promise runs out.
//!
//! Why that is enough: a promotion needs a committed decision *and* the
//! promoted node's agent carrying it out. Every node that could be promoted
//! has promised not to, for longer than the primary's extended lease (the
//! primary counts from before it asked, the peer from when it answered, and
//! the primary keeps [`MARGIN_MS`] back). A node promises only while it
//! cannot reach a leader either: if it can, the managers are alive and the
//! primary is the one cut off, so it must fence as usual. A node it cannot
//! reach, or one that refuses, means no extension: the lease runs out and
//! the keeper fences. A replica streaming from the primary that the agent
//! does not know (a node added meanwhile) counts as one that refuses.
//!
//! A promise is not written to disk: instead an agent refuses to be made
//! writable for a full ttl + margin after it starts ([`Node::holdoff_ms`]),
//! which covers any promise a previous process may have given. Agents
//! report what they hold (`NodeReport::promise_ms`), and the leader
//! promotes nobody who still holds one.

use std::sync::Arc;
use std::time::Duration;

use super::node::Node;
use super::state::Intent;
use crate::boottime::boot_ms;
use crate::cluster::wire::{FailsafeReply, FailsafeRequest, Peer};
use crate::keeper::Lease;

/// The primary extends its lease to (send time + promise − this).
pub const MARGIN_MS: u64 = 200;
/// How long one peer may take to answer.
const ASK_LIMIT: Duration = Duration::from_millis(300);

/// What a node knows when another node asks it for a promise.
#[derive(Debug, Clone)]
pub struct Asked<'a> {
    pub request: &'a FailsafeRequest,
    pub cluster: &'a str,
    pub name: &'a str,
    /// Failsafe is on in the cluster's configuration (as last heard).
    pub enabled: bool,
    pub intent: Intent,
    /// Highest epoch seen.
    pub epoch: u64,
    /// The node this one streams from, as configured.
    pub upstream: Option<&'a str>,
    /// PostgreSQL runs writable here.
    pub writable: bool,
    /// This node's session with a leader is working.
    pub leader_reachable: bool,
}

/// May this node promise to follow `request.node` and stay unwritable?
/// One rule, pure: the reason when not.
pub fn may_promise(a: &Asked) -> Result<(), String> {
    let r = a.request;
    if !a.enabled {
        return Err("failsafe is off in this cluster".into());
    }
    if r.cluster != a.cluster {
        return Err(format!("this node belongs to cluster {}", a.cluster));
    }
    if r.node == a.name {
        return Err("a node does not promise to itself".into());
    }
    if a.intent == Intent::Primary || a.writable {
        return Err("this node is (or is becoming) a primary itself".into());
    }
    if a.epoch != r.epoch {
        return Err(format!(
            "this node is at epoch {}, not {}",
            a.epoch, r.epoch
        ));
    }
    if a.upstream != Some(r.node.as_str()) {
        return Err(format!(
            "this node follows {}, not {}",
            a.upstream.unwrap_or("nobody"),
            r.node
        ));
    }
    if a.leader_reachable {
        return Err(
            "this node reaches the manager leader: the managers are alive, the primary is the one cut off"
                .into(),
        );
    }
    Ok(())
}

/// `POST /failsafe`: answer, and remember the promise when giving one.
pub fn answer(node: &Node, request: &FailsafeRequest) -> FailsafeReply {
    let persisted = node.persisted();
    let observation = node.observation();
    let asked = Asked {
        request,
        cluster: &node.config.cluster,
        name: &node.config.name,
        enabled: persisted.failsafe,
        intent: persisted.intent,
        epoch: persisted.epoch,
        upstream: persisted.upstream.as_ref().map(|u| u.node.as_str()),
        writable: observation.postgres.is_some_and(|pg| !pg.in_recovery),
        leader_reachable: node.leader_reachable(),
    };
    match may_promise(&asked) {
        Ok(()) => {
            node.promise(&request.node, request.epoch, request.ttl_ms);
            FailsafeReply {
                promise_ms: request.ttl_ms,
                refused: None,
            }
        }
        Err(why) => FailsafeReply {
            promise_ms: 0,
            refused: Some(why),
        },
    }
}

/// The primary's side: whenever the leader has gone silent, ask every
/// other node for a promise once a heartbeat; when all promise, extend the
/// keeper's deadline.
pub async fn run(node: Arc<Node>) {
    let client = match http_client(&node) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "failsafe disabled: no HTTP client");
            return;
        }
    };
    loop {
        tokio::time::sleep(node.heartbeat()).await;
        let p = node.persisted();
        let wanted = p.failsafe
            && p.intent == Intent::Primary
            && !node.leader_reachable()
            && node.lease_remaining() > 0
            && node
                .observation()
                .postgres
                .is_some_and(|pg| !pg.in_recovery);
        if !wanted {
            node.set_failsafe(None);
            continue;
        }
        match ask_everyone(&node, &client, &p.peers, p.epoch).await {
            Ok(until) => {
                node.extend_lease(Lease::Until {
                    epoch: p.epoch,
                    deadline: until,
                })
                .await;
                node.set_failsafe(Some(Ok(until)));
            }
            Err(why) => node.set_failsafe(Some(Err(why))),
        }
    }
}

/// Ask every peer (and any unknown replica streaming from here, which
/// counts as a refusal); the boot-clock time the lease may be extended to.
async fn ask_everyone(
    node: &Node,
    client: &reqwest::Client,
    peers: &[Peer],
    epoch: u64,
) -> Result<u64, String> {
    let me = &node.config.name;
    let others: Vec<&Peer> = peers.iter().filter(|p| p.name != *me).collect();
    if others.is_empty() {
        return Err("no other node to ask".into());
    }
    let streaming: Vec<String> = node
        .observation()
        .postgres
        .map(|pg| {
            pg.replicas
                .into_iter()
                .map(|r| r.application_name)
                .collect()
        })
        .unwrap_or_default();
    if let Some(stranger) = streaming
        .iter()
        .find(|name| !others.iter().any(|p| p.name == **name))
    {
        return Err(format!(
            "{stranger} streams from here but is not a member this node knows"
        ));
    }
    let ttl = node.ttl_ms();
    let request = FailsafeRequest {
        cluster: node.config.cluster.clone(),
        node: me.clone(),
        epoch,
        ttl_ms: ttl,
    };
    let scheme = if node.config.http_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let sent = boot_ms();
    let asks = others.iter().map(|peer| {
        let url = format!("{scheme}://{}/failsafe", peer.http);
        let call = client.post(url).json(&request).timeout(ASK_LIMIT).send();
        async move {
            let reply: FailsafeReply = call
                .await
                .map_err(|e| format!("{}: {e}", peer.name))?
                .json()
                .await
                .map_err(|e| format!("{}: {e}", peer.name))?;
            match reply.refused {
                None if reply.promise_ms > MARGIN_MS => Ok(reply.promise_ms),
                None => Err(format!("{}: a promise too short", peer.name)),
                Some(why) => Err(format!("{} refused: {why}", peer.name)),
            }
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut shortest = u64::MAX;
    for a in answers {
        shortest = shortest.min(a?);
    }
    Ok(sent + shortest - MARGIN_MS)
}

fn http_client(node: &Node) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().connect_timeout(ASK_LIMIT);
    if node.config.http_tls.is_some() {
        let tls = node
            .config
            .security
            .tls
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("HTTPS between agents needs [tls] ca"))?;
        builder = builder.use_preconfigured_tls(tls.http_client_config()?);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> FailsafeRequest {
        FailsafeRequest {
            cluster: "main".into(),
            node: "n1".into(),
            epoch: 4,
            ttl_ms: 2000,
        }
    }

    fn asked(r: &FailsafeRequest) -> Asked<'_> {
        Asked {
            request: r,
            cluster: "main",
            name: "n2",
            enabled: true,
            intent: Intent::Replica,
            epoch: 4,
            upstream: Some("n1"),
            writable: false,
            leader_reachable: false,
        }
    }

    #[test]
    fn promises_only_a_follower_of_that_epoch_cut_off_from_the_leader() {
        let r = request();
        assert_eq!(may_promise(&asked(&r)), Ok(()));
        let refused = |a: Asked| may_promise(&a).unwrap_err();
        assert!(refused(Asked {
            enabled: false,
            ..asked(&r)
        })
        .contains("off"));
        assert!(refused(Asked {
            leader_reachable: true,
            ..asked(&r)
        })
        .contains("managers are alive"));
        assert!(refused(Asked {
            epoch: 5,
            ..asked(&r)
        })
        .contains("epoch 5"));
        assert!(refused(Asked {
            upstream: Some("n3"),
            ..asked(&r)
        })
        .contains("follows n3"));
        assert!(refused(Asked {
            intent: Intent::Primary,
            ..asked(&r)
        })
        .contains("primary itself"));
        assert!(refused(Asked {
            writable: true,
            ..asked(&r)
        })
        .contains("primary itself"));
        assert!(refused(Asked {
            name: "n1",
            ..asked(&r)
        })
        .contains("itself"));
        assert!(refused(Asked {
            cluster: "other",
            ..asked(&r)
        })
        .contains("cluster other"));
    }
}
