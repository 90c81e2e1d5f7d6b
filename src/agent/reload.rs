//! `kill -HUP` (`systemctl reload pgquorum-agent`): re-read the
//! configuration file without restarting the agent or PostgreSQL.
//!
//! What can change while running ([`Live`]): the tags (`nofailover`,
//! `nosync`, `priority`: the node registers again, which the leader
//! commits), the node's own `[postgresql.parameters]` (written and
//! reloaded into PostgreSQL with the next configuration the leader sends,
//! asked for at once; a restart-only one shows as pending restart), the
//! callbacks, the replica methods and the bootstrap command (used by the
//! next clone or bootstrap; one under way finishes with the old ones).
//! Everything else (name, cluster, addresses,
//! ports, directories, TLS) is named in a warning and takes effect at the
//! next restart of the agent. A file that no longer parses changes
//! nothing: the error is logged and the running configuration stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::config::{AgentConfig, WatchdogMode};
use super::node::Node;
use super::postgres::{ExternalCommand, ReplicaMethod};
use crate::cluster::state::Tags;

/// Reads the agent's configuration file again.
pub type Loader = Arc<dyn Fn() -> anyhow::Result<AgentConfig> + Send + Sync>;

/// The part of the configuration a reload changes in the running agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub tags: Tags,
    pub local_parameters: BTreeMap<String, String>,
    pub on_role_change: Option<PathBuf>,
    pub on_start: Option<PathBuf>,
    pub on_stop: Option<PathBuf>,
    pub callback_timeout: Duration,
    pub replica_methods: Vec<ReplicaMethod>,
    pub bootstrap: Option<ExternalCommand>,
}

impl Live {
    pub fn of(config: &AgentConfig) -> Live {
        Live {
            tags: config.tags.clone(),
            local_parameters: config.local_parameters.clone(),
            on_role_change: config.on_role_change.clone(),
            on_start: config.on_start.clone(),
            on_stop: config.on_stop.clone(),
            callback_timeout: config.callback_timeout,
            replica_methods: config.replica_methods.clone(),
            bootstrap: config.bootstrap.clone(),
        }
    }
}

/// Settings that only a restart of the agent applies, changed in `new`.
pub fn needs_restart(running: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let pg = (&running.postgres, &new.postgres);
    // Compared by their debug form: TLS settings hold keys and
    // certificates that implement no equality (and are never logged here).
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    [
        ("name", running.name != new.name),
        ("cluster", running.cluster != new.cluster),
        ("managers", running.managers != new.managers),
        ("http_listen", running.http_listen != new.http_listen),
        ("state_dir", running.state_dir != new.state_dir),
        ("postgresql.host", running.pg_host != new.pg_host),
        ("postgresql.data_dir", pg.0.data_dir != pg.1.data_dir),
        ("postgresql.port", pg.0.port != pg.1.port),
        (
            "postgresql.listen",
            pg.0.listen_addresses != pg.1.listen_addresses,
        ),
        ("postgresql.socket_dir", pg.0.socket_dir != pg.1.socket_dir),
        ("postgresql.hba", pg.0.hba != pg.1.hba),
        (
            "postgresql (users, passwords, archive_dir, log_file, os_user)",
            differs(pg.0, pg.1),
        ),
        ("bin_dir", running.bin_dir != new.bin_dir),
        ("watchdog", running.watchdog != new.watchdog),
        (
            "watchdog_device",
            running.watchdog_device != new.watchdog_device,
        ),
        ("tls", differs(&running.security, &new.security)),
        (
            "tls.http_cert",
            running.http_tls.is_some() != new.http_tls.is_some(),
        ),
        (
            "register_timeout",
            running.register_timeout != new.register_timeout,
        ),
        ("log_format", running.json_logs != new.json_logs),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name)
    .collect()
}

/// SIGHUP, caught from the start: one that arrives while the agent still
/// registers is taken up once it runs, instead of killing it.
pub fn catch_hangup() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGHUP: configuration reloads need a restart");
            None
        }
    }
}

/// Re-read the configuration on every SIGHUP and hand a good one to the
/// executor (which applies it between commands, never during one).
pub async fn listen(
    hangup: Option<tokio::signal::unix::Signal>,
    load: Loader,
    reloads: mpsc::Sender<AgentConfig>,
) {
    let Some(mut hangup) = hangup else { return };
    while hangup.recv().await.is_some() {
        match load() {
            Ok(config) => {
                if reloads.send(config).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "configuration not reloaded: the running one stays; fix the file and send SIGHUP again"
            ),
        }
    }
}

/// Apply a re-read configuration to the running agent.
pub async fn apply(node: &Arc<Node>, mut new: AgentConfig) {
    let restart = needs_restart(&node.config, &new);
    if !restart.is_empty() {
        tracing::warn!(
            settings = restart.join(", "),
            "changed settings take effect at the next restart of the agent"
        );
    }
    // A required watchdog that cannot be armed keeps the node out of
    // promotion whatever the file says (see `check_watchdog`).
    if node.config.watchdog == WatchdogMode::Required && node.config.tags.nofailover {
        new.tags.nofailover = true;
    }
    let before = node.live();
    let after = Live::of(&new);
    if before == after {
        tracing::info!("configuration reloaded: nothing that applies while running changed");
        return;
    }
    node.set_live(after.clone());
    if before.local_parameters != after.local_parameters {
        // Ask the leader for the configuration again: it sends a
        // `configure` with the whole current settings, written with the
        // new node parameters and reloaded into PostgreSQL by the same
        // steps as any configuration change.
        node.set_wants_config(true);
        node.report_now.notify_one();
        tracing::info!(
            parameters = ?after.local_parameters,
            "node parameters changed: asking the leader for the configuration again"
        );
        // The leader's `config set` checks name this node's own settings.
        node.set_server_settings(None);
    }
    if before.replica_methods != after.replica_methods || before.bootstrap != after.bootstrap {
        tracing::info!(
            replica_methods = ?after.replica_methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
            bootstrap = ?after.bootstrap.as_ref().map(|b| b.program.display().to_string()),
            "replica methods / bootstrap command changed: the next clone or bootstrap uses them"
        );
    }
    if before.tags != after.tags {
        // In the background, until the leader takes them: commands must
        // not wait behind it (no leader may be reachable just now).
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                match super::session::register(&node, Duration::from_secs(10)).await {
                    Ok(_) => {
                        tracing::info!(tags = ?node.live().tags, "tags changed: registered again");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tags changed but the leader did not take them yet: trying again")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    tracing::info!("configuration reloaded");
}
