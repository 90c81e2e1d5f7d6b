//! The agent: the only thing that touches one PostgreSQL server.
//!
//! * [`config`] — configuration file and flags.
//! * [`postgres`] — the driver: child processes and SQL.
//! * [`node`] — shared state: lease, persisted epoch, latest observation.
//! * [`session`] — registration and the session with the manager leader.
//! * [`core`] — what a command means in the node's state, step by step
//!   (pure; the simulation runs it too).
//! * [`executor`] — commands, the observer loop, and following the keeper
//!   (which enforces the lease, see [`crate::keeper`]).
//! * [`http`] — health endpoints, metrics, the failsafe endpoint.
//! * [`failsafe`] — keeping the lease on peers' promises without managers.
//! * [`callbacks`] — user scripts on role changes.

pub mod callbacks;
pub mod config;
pub mod core;
pub mod executor;
pub mod failsafe;
pub mod http;
pub mod lease;
pub mod node;
pub mod postgres;
pub mod reload;
pub mod session;
pub mod slots;
pub mod stall;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use config::AgentConfig;
use node::Node;
use postgres::{find_bin_dir, DataDirState, PgConfig, Postgres};

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

/// Only one agent per node: a second one would fight the first over the
/// same server and keeper. The lock is held for the life of the process.
fn lock_node(config: &AgentConfig) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = config.state_dir.join("agent.lock");
    crate::lock::exclusive_file(&path)
        .with_context(|| format!("cannot lock {}", path.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "another agent already runs for node {} (it holds {}); stop it first",
                config.name,
                path.display()
            )
        })
}

/// Run the agent until SIGTERM. PostgreSQL is left running under its
/// keeper, which enforces the lease: a restarted agent picks both up again.
/// `reload` reads the configuration again, on SIGHUP and `node reload`
/// (see [`reload`]).
pub async fn run(
    mut config: AgentConfig,
    reload: impl Fn() -> anyhow::Result<AgentConfig> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let reload: reload::Loader = std::sync::Arc::new(reload);
    let mut stop = crate::signals::StopSignals::install();
    let hangup = reload::catch_hangup();
    let pg = prepare(&config)?;
    let _lock = lock_node(&config)?;
    if let DataDirState::Foreign { reason } = pg.inspect().await {
        bail!(
            "{} is not a PostgreSQL data directory ({reason}); pgquorum will not touch it: point --data-dir at an empty directory or an existing PostgreSQL data directory",
            config.postgres.data_dir.display()
        );
    }
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let keeper = pg
        .keeper()
        .attach()
        .await
        .context("cannot reach or start the keeper")?;
    tracing::info!(keeper = keeper.pid, lease = ?keeper.lease, postmaster = ?keeper.postmaster, "keeper attached");
    if !keeper.gate.as_ref().is_some_and(|g| g.configured) {
        tracing::warn!(
            keeper = keeper.pid,
            version = keeper.version,
            "this keeper cannot stand as the commit gate (started by an older pgquorum): \
             commits on this node are not gated on the lease until the keeper restarts"
        );
    }
    check_watchdog(&mut config, &pg).await;
    let keeper_fences = (keeper.pid, keeper.fences);
    let node = Arc::new(Node::new(config, pg, keeper)?);
    // From now on every fence of this keeper is counted, also one while no
    // agent runs: the next agent notices it (`Node::new`).
    if node.persisted().keeper_fences.is_none() {
        node.update(|p| p.keeper_fences = Some(keeper_fences))?;
    }

    let reply = tokio::select! {
        reply = session::register(&node, node.config.register_timeout) => reply?,
        _ = stop.wait() => {
            tracing::info!("stopped while registering");
            return Ok(());
        }
    };
    tracing::info!(node = %node.config.name, cluster = %node.config.cluster, epoch = reply.epoch, primary = ?reply.primary, "registered");

    // A writable PostgreSQL without a lease is never left running.
    let seen = executor::refresh(&node).await;
    if seen.postgres.as_ref().is_some_and(|pg| !pg.in_recovery) && node.lease_remaining() == 0 {
        tracing::warn!("PostgreSQL runs as a primary but this node holds no lease: fencing it until the leader decides");
        node.pg.fence().await?;
        node.set_phase(crate::cluster::wire::AgentPhase::Fenced);
    }

    stall::spawn(node.config.state_dir.clone());
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(16);
    let (reloads_tx, reloads_rx) = tokio::sync::mpsc::channel(1);
    let tasks = vec![
        tokio::spawn(executor::observe(node.clone(), OBSERVE_EVERY)),
        tokio::spawn(executor::watch_keeper(node.clone())),
        tokio::spawn(failsafe::run(node.clone())),
        tokio::spawn(slots::run(node.clone())),
        tokio::spawn(reload::listen(hangup, reload.clone(), reloads_tx)),
        tokio::spawn(executor::run(node.clone(), commands_rx, reloads_rx, reload)),
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

    stop.wait().await;
    for t in &tasks {
        t.abort();
    }
    http.abort();
    let keeper = node.keeper_state().map(|k| k.pid);
    tracing::info!(
        keeper = ?keeper,
        "agent stopped; PostgreSQL (if running) stays with its keeper, which enforces the lease: stop the keeper to stop PostgreSQL"
    );
    Ok(())
}

/// With a watchdog configured, check that the keeper can arm it. A node
/// whose watchdog is required but unusable still serves as a replica but
/// registers as `nofailover`, so that it is never made primary.
async fn check_watchdog(config: &mut AgentConfig, pg: &Postgres) {
    use crate::keeper::{rule, WatchdogSpec};
    if config.watchdog == config::WatchdogMode::Off {
        return;
    }
    let default_ttl = crate::cluster::config::DynamicConfig::default().ttl_ms;
    let spec = WatchdogSpec {
        device: config.watchdog_device.clone(),
        timeout_s: rule::watchdog_timeout_s(default_ttl).unwrap_or(1),
    };
    let Err(e) = pg.keeper().probe_watchdog(spec).await else {
        tracing::info!(device = %config.watchdog_device.display(), mode = ?config.watchdog, "watchdog usable: armed while primary");
        return;
    };
    match config.watchdog {
        config::WatchdogMode::Required => {
            tracing::error!(error = %e, "watchdog = \"required\" but it cannot be armed: this node will not become primary (registered as nofailover)");
            config.tags.nofailover = true;
        }
        _ => {
            tracing::warn!(error = %e, "watchdog = \"auto\" but it cannot be armed: running without it");
        }
    }
}
