//! The agent's side of the channel to the manager leader: registration, a
//! report every heartbeat, lease grants and commands coming back.
//!
//! The agent dials any manager; a follower refuses with the leader's address
//! and the agent redials there. A broken session is simply opened again,
//! against whoever leads by then.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::node::Node;
use crate::channel::{decode, encode, leader_hint};
use crate::cluster::wire::{
    AgentCommand, LeaderHint, ManagerMessage, NodeReport, Registration, RegistrationReply,
};
use crate::proto::agent::agent_channel_client::AgentChannelClient;
use crate::proto::agent::AgentEnvelope;
use crate::transport;

/// Why the agent cannot register.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the managers refused node {node}: {message}")]
    Refused { node: String, message: String },
    #[error("no manager answered at {managers} within {seconds}s (last error: {last}); check that the managers run and --managers is right")]
    Unreachable {
        managers: String,
        seconds: u64,
        last: String,
    },
}

/// The addresses to try: the leader hint first, then the configured list.
fn candidates(node: &Node, hint: &Option<String>) -> Vec<String> {
    let mut list: Vec<String> = hint.iter().cloned().collect();
    list.extend(
        node.config
            .managers
            .iter()
            .filter(|m| Some(*m) != hint.as_ref())
            .cloned(),
    );
    list
}

fn client(node: &Node, address: &str) -> Option<AgentChannelClient<Channel>> {
    match transport::channel(address, node.config.security.tls.as_ref()) {
        Ok(channel) => Some(AgentChannelClient::new(channel)),
        Err(e) => {
            tracing::warn!(manager = %address, error = %e, "cannot dial");
            None
        }
    }
}

/// Register this node with the managers (the leader commits it).
pub async fn register(node: &Node, timeout: Duration) -> Result<RegistrationReply, RegisterError> {
    let c = &node.config;
    let registration = Registration {
        cluster: c.cluster.clone(),
        node: c.name.clone(),
        host: c.pg_host.clone(),
        port: c.postgres.port,
        http: c.http_advertise.clone(),
        tags: node.live().tags,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut hint = None;
    let mut last = String::from("none");
    loop {
        for address in candidates(node, &hint) {
            let Some(mut api) = client(node, &address) else {
                continue;
            };
            let Ok(envelope) = encode(&registration) else {
                continue;
            };
            let mut request = tonic::Request::new(envelope);
            request.set_timeout(Duration::from_secs(5));
            match api.register(request).await {
                Ok(reply) => {
                    return decode(&reply.into_inner()).map_err(|e| RegisterError::Refused {
                        node: c.name.clone(),
                        message: e.message().to_string(),
                    })
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::FailedPrecondition
                            | Code::InvalidArgument
                            | Code::NotFound
                            | Code::Unauthenticated
                    ) =>
                {
                    return Err(RegisterError::Refused {
                        node: c.name.clone(),
                        message: status.message().to_string(),
                    })
                }
                Err(status) => {
                    last = format!("{address}: {}", status.message());
                    if let Some(h) = leader_hint(&status) {
                        hint = Some(h);
                        break;
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RegisterError::Unreachable {
                managers: c.managers.join(","),
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long one "who leads?" question may take.
const ASK_LIMIT: Duration = Duration::from_millis(300);
/// Pause between two rounds of questions while nobody leads.
const ASK_AGAIN: Duration = Duration::from_millis(50);
/// How long opening a session may take.
const SESSION_OPEN_LIMIT: Duration = Duration::from_millis(1000);

/// Keep a session with the leader open forever; commands go to `commands`.
pub async fn run(node: Arc<Node>, commands: mpsc::Sender<AgentCommand>) {
    let mut hint: Option<String> = None;
    loop {
        let address = match hint.take() {
            Some(h) => h,
            None => find_leader(&node).await,
        };
        match session(&node, &address, &commands).await {
            Ok(()) => {}
            Err(status) => {
                tracing::debug!(manager = %address, code = ?status.code(), message = status.message(), "no session");
                if let Some(h) = leader_hint(&status).filter(|h| *h != address) {
                    hint = Some(h);
                    continue;
                }
                if status.code() == Code::NotFound {
                    // Not a member (removed, or the group was rebuilt):
                    // register again, then retry.
                    if let Err(e) = register(&node, Duration::from_secs(5)).await {
                        tracing::warn!(error = %e, "re-registration failed");
                    }
                }
                tokio::time::sleep(ASK_AGAIN).await;
            }
        }
    }
}

/// Ask every manager at once who leads, until the leader itself answers
/// that it does (a dead or frozen leader that its followers still name
/// would only cost a session attempt). A leader outside the configured
/// list (added later) is taken on its followers' word. A dead or frozen
/// manager costs at most [`ASK_LIMIT`], never a turn in a queue.
async fn find_leader(node: &Node) -> String {
    loop {
        let asks = node.config.managers.iter().map(|address| async move {
            let mut api = client(node, address)?;
            let ask = api.who_leads(encode(&()).ok()?);
            let reply = tokio::time::timeout(ASK_LIMIT, ask).await.ok()?.ok()?;
            decode::<LeaderHint>(&reply.into_inner()).ok()
        });
        let answers: Vec<LeaderHint> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if let Some(address) = leader_of(&answers, &node.config.managers) {
            return address;
        }
        tokio::time::sleep(ASK_AGAIN).await;
    }
}

/// The leader named by the answers: one that answered itself, or one the
/// configured list does not hold (so it could not be asked); the highest
/// term's answer wins.
fn leader_of(answers: &[LeaderHint], configured: &[String]) -> Option<String> {
    answers
        .iter()
        .filter(|h| {
            let Some(address) = &h.leader_address else {
                return false;
            };
            h.leader == Some(h.manager) || !configured.contains(address)
        })
        .max_by_key(|h| h.term)
        .and_then(|h| h.leader_address.clone())
}

/// Attach the server's parameter catalog to `report` if this session has
/// not sent that one yet (`sent`: the number of the last one sent); returns
/// the number now sent.
fn with_new_settings(node: &Node, report: &mut NodeReport, sent: u64) -> u64 {
    match node.server_settings() {
        Some((n, settings)) if n != sent => {
            report.settings = Some((*settings).clone());
            n
        }
        _ => sent,
    }
}

/// One session: returns when it breaks.
async fn session(
    node: &Arc<Node>,
    address: &str,
    commands: &mpsc::Sender<AgentCommand>,
) -> Result<(), Status> {
    let mut api = client(node, address).ok_or_else(|| Status::invalid_argument("bad address"))?;
    let (up_tx, up_rx) = mpsc::channel::<AgentEnvelope>(16);
    // The first report names us; send it before the call so the leader can
    // refuse an unknown node at once.
    let mut first = node.next_report();
    let mut settings_sent = with_new_settings(node, &mut first, 0);
    up_tx
        .send(encode(&first)?)
        .await
        .map_err(|_| Status::internal("closed"))?;
    // A frozen manager would hold the call open forever.
    let response = tokio::time::timeout(
        SESSION_OPEN_LIMIT,
        api.session(tokio_stream::wrappers::ReceiverStream::new(up_rx)),
    )
    .await
    .map_err(|_| Status::unavailable("the manager did not answer in time"))??;
    let mut down = response.into_inner();
    tracing::info!(manager = %address, "session with the leader open");

    let mut interval = Duration::from_millis(250);
    let reporter = {
        let node = node.clone();
        let up = up_tx.clone();
        let (interval_tx, mut interval_rx) = tokio::sync::watch::channel(interval);
        let handle = tokio::spawn(async move {
            // The look before each report counts against the interval: a
            // server that answers nothing (each look cut short) must not
            // stretch the heartbeat past the leader-silence limit.
            let mut spent = Duration::ZERO;
            loop {
                let wait = interval_rx.borrow().saturating_sub(spent);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = node.report_now.notified() => {}
                    r = interval_rx.changed() => { if r.is_err() { return; } continue; }
                }
                // A report carries what PostgreSQL looks like now, not a
                // look up to one observer period old (bounded: a hung server
                // must not hold the heartbeat back for long).
                let look = std::time::Instant::now();
                let _ = tokio::time::timeout(
                    Duration::from_millis(300),
                    super::executor::refresh(&node),
                )
                .await;
                spent = look.elapsed();
                let mut report: NodeReport = node.next_report();
                settings_sent = with_new_settings(&node, &mut report, settings_sent);
                let Ok(envelope) = encode(&report) else {
                    continue;
                };
                if up.send(envelope).await.is_err() {
                    return;
                }
            }
        });
        (handle, interval_tx)
    };
    // The leader answers every report at once, saying whether it still
    // has a quorum: one silent, or without a quorum, for two heartbeats is
    // dead, cut off or deposed, and the lease cannot wait for TCP to notice.
    let mut last_good = tokio::time::Instant::now();
    let result = loop {
        let silence = node.leader_silence_limit();
        let left = silence.saturating_sub(last_good.elapsed());
        let message = match tokio::time::timeout(left, down.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(status)) => break Err(status),
            Err(_) => {
                tracing::warn!(manager = %address, ?silence, "the leader went silent or lost its quorum: redialing");
                break Ok(());
            }
        };
        let message: ManagerMessage = match decode(&message) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e.message(), "undecodable message from the leader");
                continue;
            }
        };
        if !matches!(message, ManagerMessage::Ack { quorum: false, .. }) {
            last_good = tokio::time::Instant::now();
        }
        if matches!(message, ManagerMessage::Ack { quorum: true, .. }) {
            node.heard_leader();
        }
        match message {
            ManagerMessage::Welcome {
                leader,
                heartbeat_interval_ms,
                ..
            } => {
                tracing::debug!(leader, heartbeat_interval_ms, "welcome");
                interval = Duration::from_millis(heartbeat_interval_ms.clamp(50, 5000));
                node.set_heartbeat(interval);
                let _ = reporter.1.send(interval);
            }
            ManagerMessage::Lease(grant) => {
                node.apply_grant(&grant).await;
            }
            ManagerMessage::Ack {
                primary_lsn,
                sync_standby,
                ..
            } => {
                node.set_primary_lsn(primary_lsn);
                node.set_sync_standby(sync_standby);
            }
            ManagerMessage::Command(command) => {
                if commands.send(command).await.is_err() {
                    break Ok(());
                }
            }
            ManagerMessage::Poll => node.report_now.notify_one(),
            ManagerMessage::Members { members, failsafe } => {
                if let Err(e) = node.update(|p| {
                    p.peers = members;
                    p.failsafe = failsafe;
                }) {
                    tracing::warn!(error = %e, "cannot save the cluster's members");
                }
            }
            ManagerMessage::Refused { reason } => {
                break Err(Status::not_found(reason));
            }
        }
    };
    reporter.0.abort();
    tracing::info!(manager = %address, "session with the leader closed");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(manager: u64, term: u64, leader: Option<u64>) -> LeaderHint {
        LeaderHint {
            manager,
            term,
            leader,
            leader_address: leader.map(|l| format!("10.0.0.{l}:7001")),
        }
    }

    #[test]
    fn trusts_a_leader_that_answers_for_itself() {
        let configured: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:7001")).collect();
        // Followers still name 1, which does not answer (frozen): nobody yet.
        let answers = [hint(2, 5, Some(1)), hint(3, 5, Some(1))];
        assert_eq!(leader_of(&answers, &configured), None);
        // 2 won the election and says so.
        let answers = [hint(2, 6, Some(2)), hint(3, 5, Some(1))];
        assert_eq!(
            leader_of(&answers, &configured).as_deref(),
            Some("10.0.0.2:7001")
        );
        // A leader not in the list is taken on its followers' word.
        let answers = [hint(2, 7, Some(4))];
        assert_eq!(
            leader_of(&answers, &configured).as_deref(),
            Some("10.0.0.4:7001")
        );
    }
}
