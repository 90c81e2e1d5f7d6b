//! The agent: the only thing that touches one PostgreSQL server.
//!
//! * [`config`] — configuration file and flags.
//! * [`postgres`] — the driver: child processes and SQL.
//! * [`node`] — shared state: lease, persisted epoch, latest observation.
//! * [`session`] — registration and the session with the manager leader.
//! * [`executor`] — commands, the observer loop and the lease watchdog.
//! * [`http`] — health endpoints and metrics.
//! * [`callbacks`] — user scripts on role changes.

pub mod callbacks;
pub mod clock;
pub mod config;
pub mod executor;
pub mod http;
pub mod lease;
pub mod node;
pub mod postgres;
pub mod session;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use config::AgentConfig;
use node::Node;
use postgres::{find_bin_dir, DataDirState, PgConfig, Postgres, StopMode};

/// How often the agent looks at PostgreSQL.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);

/// Check everything that can be checked before touching anything.
fn prepare(config: &AgentConfig) -> anyhow::Result<Postgres> {
    let bin_dir = find_bin_dir(config.bin_dir.as_deref())?;
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "cannot create the agent state directory {}",
            config.state_dir.display()
        )
    })?;
    let pg = Postgres::new(PgConfig {
        bin_dir,
        ..config.postgres.clone()
    })?;
    Ok(pg)
}

/// Run the agent until SIGTERM.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let pg = prepare(&config)?;
    if let DataDirState::Foreign { reason } = pg.inspect().await {
        bail!(
            "{} is not a PostgreSQL data directory ({reason}); pgquorum will not touch it: point --data-dir at an empty directory or an existing PostgreSQL data directory",
            config.postgres.data_dir.display()
        );
    }
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let node = Arc::new(Node::new(config, pg)?);

    let reply = session::register(&node, node.config.register_timeout).await?;
    tracing::info!(node = %node.config.name, cluster = %node.config.cluster, epoch = reply.epoch, primary = ?reply.primary, "registered");

    // A writable PostgreSQL without a lease is never left running.
    let seen = executor::refresh(&node).await;
    if seen.postgres.as_ref().is_some_and(|pg| !pg.in_recovery) && node.lease_remaining() == 0 {
        tracing::warn!("PostgreSQL runs as a primary but this agent holds no lease: fencing it until the leader decides");
        node.pg.fence().await?;
        node.set_phase(crate::cluster::wire::AgentPhase::Fenced);
    }

    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(16);
    let tasks = vec![
        tokio::spawn(executor::observe(node.clone(), OBSERVE_EVERY)),
        tokio::spawn(executor::watchdog(node.clone())),
        tokio::spawn(executor::run(node.clone(), commands_rx)),
        tokio::spawn(session::run(node.clone(), commands_tx)),
    ];
    let http = {
        let router = http::router(node.clone());
        let tls = node.config.http_tls.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::security::http::serve(http_listener, router, tls).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    tracing::info!(http = %node.config.http_listen, https = node.config.http_tls.is_some(), tls = node.config.security.tls.is_some(), "agent running");

    crate::manager::server::shutdown_signal().await;
    tracing::info!("stopping: PostgreSQL is shut down with the agent (a primary without its agent would outlive its lease)");
    for t in &tasks {
        t.abort();
    }
    http.abort();
    if node.pg.postmaster_pid().is_some() {
        let budget = Duration::from_millis(node.lease_remaining().clamp(500, 10_000));
        if let Err(e) = node.pg.stop(StopMode::Fast, budget).await {
            tracing::warn!(error = %e, "fast stop failed: stopping immediately");
            node.pg.fence().await?;
        }
    }
    node.lease.release(node.last_seq());
    callbacks::fire(&node, callbacks::Event::Stop, "stopped");
    tracing::info!("agent stopped");
    Ok(())
}
