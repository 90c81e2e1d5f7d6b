//! Start one manager: check the data directory, open the store, start Raft,
//! serve gRPC, form the group when this is a fresh initial voter, and shut
//! down cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::net::TcpListener;
use tonic::transport::Server;

use super::agents::AgentService;
use super::api::ApiService;
use super::config::{ManagerConfig, Membership};
use super::control::Control;
use super::identity::Identity;
use super::network::Network;
use super::node::ManagerNode;
use super::raft_service::RaftService;
use super::recovery;
use super::store::{self, Durability};
use super::types::Raft;
use crate::proto;
use crate::proto::agent::agent_channel_server::AgentChannelServer;
use crate::proto::api::pg_quorum_server::PgQuorumServer;
use crate::proto::raft::raft_server::RaftServer;
use crate::security::{ClientSecurity, Guard};

/// How long open gRPC calls get to finish at shutdown.
const SERVER_STOP: std::time::Duration = std::time::Duration::from_millis(300);
/// How long Raft gets to shut down.
const RAFT_STOP: std::time::Duration = std::time::Duration::from_secs(1);

fn raft_config(config: &ManagerConfig) -> anyhow::Result<openraft::Config> {
    let raft = openraft::Config {
        cluster_name: "pgquorum".to_string(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: config.election_timeout_min.as_millis() as u64,
        election_timeout_max: config.election_timeout_max.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: config.snapshot_logs / 2,
        ..openraft::Config::default()
    };
    raft.validate().context("invalid raft timing")
}

/// Run a manager until SIGTERM.
pub async fn run(config: ManagerConfig) -> anyhow::Result<()> {
    let mut stop = crate::signals::StopSignals::install();
    let (identity, fresh) = Identity::prepare(&config)?;
    let raft_dir = config.data_dir.join("raft");
    let recovered = if config.force_new_cluster {
        if fresh {
            anyhow::bail!(
                "--force-new-cluster needs the data directory of a surviving manager; {} is empty",
                config.data_dir.display()
            );
        }
        let state = recovery::surviving_state(&raft_dir).await?;
        let aside = recovery::set_aside(&raft_dir)?;
        let peers = BTreeMap::from([(config.id, config.advertise.clone())]);
        let stamp = crate::wallclock::unix_secs();
        identity.reset_group(
            &format!("{}-r{stamp}", super::identity::group_of(&peers)),
            peers.clone(),
        )?;
        tracing::warn!(
            clusters = state.clusters.len(),
            old_store = %aside.display(),
            "forcing a new manager group from this manager's data"
        );
        Some((state, peers))
    } else {
        None
    };
    let durability = if config.fsync {
        Durability::Fsync
    } else {
        Durability::SledFlushOnly
    };
    let (log_store, state_machine) = store::open(&raft_dir, durability).with_context(|| {
        format!(
            "cannot open the Raft store in {}",
            config.data_dir.display()
        )
    })?;
    let state = state_machine.watch();
    let flush = log_store.engine();

    // Bind before starting Raft so that a taken port fails fast and cleanly.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;

    // Managers dial each other with their own certificate; callers are
    // admitted by the guard (see crate::security::guard).
    let security = ClientSecurity {
        tls: config.tls.clone(),
        token: None,
    };
    let guard = Guard::new(config.tls.is_some(), config.api_token.clone());
    let server_tls = match &config.tls {
        Some(tls) => Some(tls.server_config()?),
        None => {
            if config.api_token.is_some() {
                tracing::warn!("api_token_file is set without TLS: tokens cross the network in clear text; configure [tls]");
            }
            None
        }
    };

    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        Network::new(identity.clone(), security.clone()),
        log_store,
        state_machine,
    )
    .await
    .context("cannot start Raft")?;
    let node = Arc::new(
        ManagerNode::new(
            config.id,
            config.advertise.clone(),
            raft.clone(),
            identity.clone(),
            state,
        )
        .with_security(security, guard),
    );
    let control = Control::new(node.clone());

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PgQuorumServer<ApiService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build gRPC reflection")?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = server_tls {
        builder = builder
            .tls_config(tls)
            .context("cannot set up TLS for the gRPC server")?;
    }
    // Small RPCs, answered at once: without TCP_NODELAY every reply waits
    // for the peer's delayed ACK (40 ms on Linux) — commit latency ×10.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = builder
        .add_service(
            RaftServer::new(RaftService::new(node.clone()))
                .max_decoding_message_size(64 * 1024 * 1024),
        )
        .add_service(PgQuorumServer::new(ApiService::new(
            node.clone(),
            control.clone(),
        )))
        .add_service(AgentChannelServer::new(AgentService::new(
            node.clone(),
            control.clone(),
        )))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);
    tracing::info!(id = config.id, listen = %config.listen, advertise = %config.advertise, fresh, tls = config.tls.is_some(), "manager started");

    if let Some((state, peers)) = recovered {
        form_group(&raft, &peers).await?;
        restore(&raft, &node, state).await?;
    } else if let Membership::Peers(peers) = &config.membership {
        if !raft.is_initialized().await.context("raft stopped")? {
            form_group(&raft, peers).await?;
        }
    }
    let control_task = control.spawn();
    let metrics_task = match config.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for metrics on {address}"))?;
            let router = super::metrics::router(node.clone(), control.clone());
            let tls = config.http_tls.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::security::http::serve(listener, router, tls).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }))
        }
        None => None,
    };

    stop.wait().await;
    let started = std::time::Instant::now();
    // A second signal: stop now, whatever is under way.
    tokio::spawn(async move {
        stop.wait().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });
    tracing::info!(
        "stopping: no more agent sessions, leadership handed over, then the gRPC server and Raft"
    );
    control.stop();
    control_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let lease = config.election_timeout_max;
    match super::shutdown::hand_over(&node, lease).await {
        Some(to) => tracing::info!(to, "asked manager {to} to take over the leadership"),
        None if node.is_leader() => {
            tracing::warn!("no up-to-date follower to hand over to: the others elect by themselves")
        }
        None => {}
    }
    // Streams (agent sessions, Watch) would hold a graceful shutdown open
    // forever: give the calls under way a moment, then cut them.
    let _ = stop_tx.send(());
    let mut server = server;
    match tokio::time::timeout(SERVER_STOP, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => {
            tracing::info!("gRPC calls still open after {SERVER_STOP:?}: closing them");
            server.abort();
        }
    }
    match tokio::time::timeout(RAFT_STOP, raft.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
        Err(_) => tracing::warn!("raft did not shut down within {RAFT_STOP:?}"),
    }
    if let Err(e) = store::flush_durable(&flush).await {
        tracing::warn!(error = %e, "cannot flush the store");
    }
    tracing::info!(elapsed = ?started.elapsed(), "manager stopped");
    Ok(())
}

/// Commit the surviving state into the re-formed group, then bump the epochs.
async fn restore(
    raft: &Raft,
    node: &ManagerNode,
    state: crate::cluster::ClusterState,
) -> anyhow::Result<()> {
    raft.wait(Some(std::time::Duration::from_secs(30)))
        .current_leader(node.id, "leading the re-formed group")
        .await
        .context("the re-formed group elected no leader")?;
    let clusters = state.clusters.len();
    node.propose(crate::cluster::ClusterCommand::RestoreState {
        state: Box::new(state),
    })
    .await
    .context("restore the cluster state")?;
    let at_unix_ms = crate::wallclock::unix_ms();
    node.propose(crate::cluster::ClusterCommand::Recover {
        bump: recovery::EPOCH_BUMP,
        at_unix_ms,
    })
    .await
    .context("bump the epochs")?;
    tracing::warn!(clusters, bump = recovery::EPOCH_BUMP, "manager group re-formed; add new managers with `pgquorum managers add`, and start this one without --force-new-cluster from now on");
    Ok(())
}

/// Initialize Raft with the initial voters. Every initial voter does this
/// with the same membership, which openraft allows; whoever is not pristine
/// any more (it already heard from a leader) is told so, which is fine.
async fn form_group(raft: &Raft, peers: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    let members: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(voters = ?peers.keys().collect::<Vec<_>>(), "formed the manager group");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot form the manager group: {e}")),
    }
}
