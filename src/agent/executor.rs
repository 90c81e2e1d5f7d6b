//! Carries out the leader's commands, one at a time, each idempotent: the
//! same command twice leaves the node as once. Plus two loops: the observer
//! (what does PostgreSQL look like right now) and the keeper watch (the
//! keeper stops a primary whose lease runs out, whatever the agent is
//! doing; the agent learns of it here).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use super::callbacks::{self, Event};
use super::node::{Node, Observation};
use super::postgres::{RewindOutcome, StopMode};
use super::state::Intent;
use crate::cluster::wire::{
    Action, AgentCommand, AgentPhase, CommandOutcome, DataDirState, ManagedSettings, PgStatus,
    Upstream,
};

use crate::keeper::rule::FENCE_LEAD_MS;

/// How often the agent asks the keeper how it is.
const KEEPER_WATCH_EVERY: Duration = Duration::from_millis(100);
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Look at PostgreSQL now and remember what was seen.
pub async fn refresh(node: &Node) -> Observation {
    let postgres = node.pg.status().await;
    let data = match &postgres {
        Some(pg) => DataDirState::Valid {
            system_identifier: pg.system_identifier,
            timeline: pg.timeline,
            standby: pg.in_recovery,
            clean_shutdown: false,
            checkpoint_lsn: pg.lsn,
        },
        // While a clone or rewind writes the data directory it is neither
        // empty nor valid: keep the last look instead of a false alarm.
        None if matches!(
            node.phase(),
            AgentPhase::Cloning | AgentPhase::Rewinding | AgentPhase::Bootstrapping
        ) =>
        {
            node.observation().data
        }
        None => node.pg.inspect().await,
    };
    let o = Observation { postgres, data };
    node.set_observation(o.clone());
    o
}

/// Keep the observation at most about `interval` old. While a session is
/// open every report refreshes it already; this covers the time without
/// one (the HTTP endpoints still need a current picture).
pub async fn observe(node: Arc<Node>, interval: Duration) {
    loop {
        if node.observation_age_ms() >= interval.as_millis() as u64 {
            refresh(&node).await;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Follow the keeper: notice when it fenced PostgreSQL (the lease ran
/// out), and keep the agent's view of the lease the keeper's.
pub async fn watch_keeper(node: Arc<Node>) {
    loop {
        tokio::time::sleep(KEEPER_WATCH_EVERY).await;
        let Some((_, fences)) = node.sync_keeper().await else {
            continue;
        };
        if fences > 0 {
            tracing::warn!(
                epoch = node.epoch(),
                "the keeper stopped PostgreSQL: the lease ran out"
            );
            node.set_phase(AgentPhase::Fenced);
            refresh(&node).await;
            callbacks::fire(&node, Event::Stop, "fenced");
        }
    }
}

/// Run commands as they come.
pub async fn run(node: Arc<Node>, mut commands: mpsc::Receiver<AgentCommand>) {
    while let Some(command) = commands.recv().await {
        let action = command.action.name();
        tracing::info!(id = command.id, epoch = command.epoch, action, "command");
        let result = execute(&node, &command).await;
        refresh(&node).await;
        let outcome = match result {
            Ok(message) => {
                tracing::info!(id = command.id, action, %message, "command done");
                if node.phase() != AgentPhase::Fenced {
                    node.set_phase(AgentPhase::Idle);
                }
                CommandOutcome {
                    id: command.id,
                    ok: true,
                    message,
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::warn!(id = command.id, action, error = %message, "command failed");
                if node.phase() != AgentPhase::Fenced {
                    node.set_phase(AgentPhase::Idle);
                }
                CommandOutcome {
                    id: command.id,
                    ok: false,
                    message,
                }
            }
        };
        node.finish(outcome);
    }
}

async fn execute(node: &Node, command: &AgentCommand) -> anyhow::Result<String> {
    if matches!(
        command.action,
        Action::Bootstrap { .. } | Action::StartPrimary { .. } | Action::Promote { .. }
    ) {
        // A failsafe promise (or not knowing whether one was given) keeps
        // this node unwritable until it runs out.
        let hold = node.holdoff_ms();
        if hold > 0 {
            bail!("failsafe: this node promised not to be made writable for another {hold} ms");
        }
    }
    node.accept_epoch(command.epoch)?;
    match &command.action {
        Action::Bootstrap { settings } => bootstrap(node, settings).await,
        Action::StartPrimary { settings } => start_primary(node, settings).await,
        Action::Promote { settings } => promote(node, settings).await,
        Action::Follow {
            upstream,
            settings,
            reclone,
        } => follow(node, upstream, settings, *reclone).await,
        Action::Demote => demote(node).await,
        Action::Detach => detach(node).await,
        Action::Reinit {
            upstream,
            action_id,
        } => reinit(node, upstream, *action_id).await,
        Action::Fence { reason } => {
            tracing::warn!(%reason, "fenced on the leader's order");
            node.pg.fence().await?;
            node.release_lease().await;
            node.update(|p| p.intent = Intent::None)?;
            node.set_phase(AgentPhase::Fenced);
            callbacks::fire(node, Event::Stop, "fenced");
            Ok("fenced".into())
        }
        Action::Restart {
            action_id,
            pending_only,
        } => {
            let pending = status(node).await.is_some_and(|pg| pg.pending_restart);
            let message = if *pending_only && !pending {
                "no restart pending"
            } else if node.pg.postmaster_pid().is_some() {
                if node.intent() == Intent::Primary {
                    await_lease(node).await?;
                }
                node.set_phase(AgentPhase::Starting);
                node.pg.restart(START_TIMEOUT).await?;
                "restarted"
            } else {
                "not running"
            };
            node.update(|p| p.completed_action = Some(*action_id))?;
            Ok(message.into())
        }
        Action::Configure { settings } => {
            let upstream = match node.intent() {
                Intent::Replica => node.persisted().upstream,
                _ => None,
            };
            write_config(node, settings, upstream.as_ref()).await?;
            if node.pg.postmaster_pid().is_some() {
                node.pg.reload().await?;
            }
            node.update(|p| p.config_version = settings.config_version)?;
            Ok(format!(
                "configuration version {} applied",
                settings.config_version
            ))
        }
    }
}

/// The managed settings plus this node's own parameters (which win).
async fn write_config(
    node: &Node,
    settings: &ManagedSettings,
    upstream: Option<&Upstream>,
) -> anyhow::Result<()> {
    node.set_settings(settings.clone());
    let mut merged = settings.clone();
    for (k, v) in &node.config.local_parameters {
        merged.parameters.insert(k.clone(), v.clone());
    }
    node.pg.write_config(&merged, upstream).await?;
    Ok(())
}

/// A primary acts only while it holds the lease (and, with `watchdog =
/// "required"`, an armed watchdog); the grant follows the command within a
/// moment.
async fn await_lease(node: &Node) -> anyhow::Result<()> {
    for _ in 0..200 {
        if node.lease_remaining() > FENCE_LEAD_MS {
            if let Err(why) = node.watchdog_ready() {
                bail!("{why}: not acting as primary");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("no valid lease from the leader: not acting as primary")
}

/// Ask for the lease (reports say `wants_lease` from now on) and wait for
/// it. The leader keeps granting a starting primary's lease only while its
/// reports want one; the grant sent along with the command may well arrive
/// before this agent has taken on the command's epoch, and is then void.
async fn claim_lease(node: &Node) -> anyhow::Result<()> {
    if node.intent() != Intent::Primary {
        node.update(|p| p.intent = Intent::Primary)?;
        node.report_now.notify_one();
    }
    await_lease(node).await
}

async fn status(node: &Node) -> Option<PgStatus> {
    node.pg.status().await
}

async fn become_primary(node: &Node, settings: &ManagedSettings) -> anyhow::Result<()> {
    node.update(|p| {
        p.intent = Intent::Primary;
        p.upstream = None;
        p.config_version = settings.config_version;
    })?;
    Ok(())
}

async fn bootstrap(node: &Node, settings: &ManagedSettings) -> anyhow::Result<String> {
    if let Some(pg) = status(node).await {
        if !pg.in_recovery {
            become_primary(node, settings).await?;
            return Ok("already running as primary".into());
        }
    }
    claim_lease(node).await?;
    node.set_phase(AgentPhase::Bootstrapping);
    let message = match node.pg.inspect().await {
        DataDirState::Foreign { reason } => {
            bail!(
                "refusing to bootstrap: {} is not a PostgreSQL data directory ({reason})",
                node.config.postgres.data_dir.display()
            )
        }
        DataDirState::Empty => {
            node.pg.initdb().await.context("initdb")?;
            "initialized a new database"
        }
        DataDirState::Valid { .. } => "adopted the existing data directory",
    };
    become_primary(node, settings).await?;
    write_config(node, settings, None).await?;
    node.pg.set_standby(false)?;
    node.set_phase(AgentPhase::Starting);
    await_lease(node).await?;
    node.pg.start(START_TIMEOUT).await?;
    node.pg.ensure_replication_role().await?;
    callbacks::fire(node, Event::Start, "primary");
    callbacks::fire(node, Event::RoleChange, "primary");
    Ok(message.into())
}

async fn start_primary(node: &Node, settings: &ManagedSettings) -> anyhow::Result<String> {
    if let Some(pg) = status(node).await {
        if !pg.in_recovery {
            become_primary(node, settings).await?;
            return Ok("already running".into());
        }
        return promote(node, settings).await;
    }
    claim_lease(node).await?;
    let data = node.pg.inspect().await;
    let DataDirState::Valid { standby, .. } = data else {
        bail!("no usable data directory to start the primary from");
    };
    become_primary(node, settings).await?;
    write_config(node, settings, None).await?;
    node.set_phase(AgentPhase::Starting);
    node.pg.start(START_TIMEOUT).await?;
    if standby {
        // Never start a former standby as a primary on its old timeline:
        // promote it, so that it branches onto a timeline of its own.
        return promote(node, settings).await;
    }
    callbacks::fire(node, Event::Start, "primary");
    Ok("started as primary".into())
}

async fn promote(node: &Node, settings: &ManagedSettings) -> anyhow::Result<String> {
    await_lease(node).await?;
    node.set_phase(AgentPhase::Promoting);
    if let Some(pid) = unsupervised_postmaster(node) {
        // A server the keeper did not start (an older pgquorum's, or one
        // started by hand) has no parent-death signal: restart it under
        // the keeper before it becomes writable.
        tracing::warn!(
            pid,
            "restarting a standby the keeper did not start before promoting it"
        );
        node.pg.stop(StopMode::Fast, STOP_TIMEOUT).await?;
    }
    if node.pg.postmaster_pid().is_none() {
        write_config(node, settings, None).await?;
        node.pg.set_standby(true)?;
        node.pg.start(START_TIMEOUT).await?;
    }
    if status(node).await.is_some_and(|pg| !pg.in_recovery) {
        become_primary(node, settings).await?;
        return Ok("already primary".into());
    }
    // synchronous_standby_names is in place before the first commit.
    become_primary(node, settings).await?;
    write_config(node, settings, None).await?;
    node.pg.reload().await?;
    await_lease(node).await?;
    node.pg.promote(START_TIMEOUT).await?;
    // PostgreSQL 15 shows the new timeline in its control file only after a
    // checkpoint; rewinds against this node need it.
    if let Err(e) = node.pg.checkpoint().await {
        tracing::warn!(error = %e, "checkpoint after promotion failed");
    }
    callbacks::fire(node, Event::RoleChange, "primary");
    Ok("promoted".into())
}

/// A running postmaster that is not the keeper's child.
fn unsupervised_postmaster(node: &Node) -> Option<i32> {
    let pid = node.pg.postmaster_pid()?;
    let keeper = node.keeper_state()?;
    (keeper.postmaster != Some(pid)).then_some(pid)
}

/// Be a streaming replica of `upstream`.
async fn follow(
    node: &Node,
    upstream: &Upstream,
    settings: &ManagedSettings,
    reclone: bool,
) -> anyhow::Result<String> {
    let previous = node.persisted();
    let running = status(node).await;
    if running.as_ref().is_some_and(|pg| !pg.in_recovery) {
        // A primary told to follow: stop it at once (before its lease is
        // given up), then rejoin.
        tracing::warn!(upstream = %upstream.node, "stopping this former primary to follow the new one");
        node.pg.fence().await?;
    }
    node.release_lease().await;
    node.update(|p| {
        p.intent = Intent::Replica;
        p.upstream = Some(upstream.clone());
        p.config_version = settings.config_version;
    })?;
    if node.phase() == AgentPhase::Fenced {
        node.set_phase(AgentPhase::Idle);
    }
    match running {
        Some(pg) if !pg.in_recovery => {}
        Some(pg) => {
            let same = previous.upstream.as_ref() == Some(upstream);
            let streaming = streams_from(&pg, upstream);
            if same && streaming {
                return Ok(format!("already streaming from {}", upstream.node));
            }
            // Busy until it streams from the new upstream, so that nobody
            // takes it for an idle replica meanwhile.
            node.set_phase(AgentPhase::Starting);
            write_config(node, settings, Some(upstream)).await?;
            if !same {
                node.pg.reload().await?;
                if wait_streaming(node, upstream, Duration::from_secs(5)).await {
                    callbacks::fire(node, Event::RoleChange, "replica");
                    return Ok(format!("re-pointed to {}", upstream.node));
                }
            }
            // Not streaming: perhaps its timeline diverged. Stop and rejoin
            // the thorough way (rewind).
            tracing::info!(upstream = %upstream.node, "replica does not stream: restarting it through rewind");
            node.set_phase(AgentPhase::Stopping);
            node.pg.stop(StopMode::Fast, STOP_TIMEOUT).await?;
        }
        None => {}
    }
    let message = rejoin(node, upstream, settings, reclone).await?;
    callbacks::fire(node, Event::RoleChange, "replica");
    Ok(message)
}

fn streams_from(pg: &PgStatus, upstream: &Upstream) -> bool {
    pg.in_recovery
        && pg.wal_receiver.as_ref().is_some_and(|w| {
            w.status == "streaming"
                && w.sender_host == upstream.host
                && w.sender_port == upstream.port
        })
}

async fn wait_streaming(node: &Node, upstream: &Upstream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if status(node)
            .await
            .is_some_and(|pg| streams_from(&pg, upstream))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A stopped node becomes a replica of `upstream`: clone when empty,
/// rewind when it diverged (re-clone when that fails and `reclone`).
async fn rejoin(
    node: &Node,
    upstream: &Upstream,
    settings: &ManagedSettings,
    reclone: bool,
) -> anyhow::Result<String> {
    let mut message = format!("following {}", upstream.node);
    match node.pg.inspect().await {
        DataDirState::Foreign { reason } => {
            bail!(
                "{} is not a PostgreSQL data directory ({reason}); not touching it",
                node.config.postgres.data_dir.display()
            )
        }
        DataDirState::Empty => {
            node.set_phase(AgentPhase::Cloning);
            node.pg
                .basebackup(upstream, CLONE_TIMEOUT)
                .await
                .context("clone")?;
            message = format!("cloned from {}", upstream.node);
        }
        DataDirState::Valid { clean_shutdown, .. } => {
            node.set_phase(AgentPhase::Rewinding);
            let rewound = async {
                if !clean_shutdown {
                    node.pg.crash_recover(START_TIMEOUT).await?;
                }
                node.pg.rewind(upstream, CLONE_TIMEOUT).await
            }
            .await;
            match rewound {
                Ok(RewindOutcome::Rewound) => message = format!("rewound from {}", upstream.node),
                Ok(RewindOutcome::NotNeeded) => {}
                Err(e) if reclone && !node.pg.upstream_reachable(upstream).await => {
                    // Never wipe a valid copy when the source is merely out
                    // of reach: a clone could not replace it anyway.
                    return Err(anyhow::Error::new(e).context(format!(
                        "rewind failed and {} is unreachable: keeping the data directory",
                        upstream.node
                    )));
                }
                Err(e) if reclone => {
                    tracing::warn!(error = %e, "rewind failed: cloning again");
                    node.set_phase(AgentPhase::Cloning);
                    node.pg.wipe().await?;
                    node.pg
                        .basebackup(upstream, CLONE_TIMEOUT)
                        .await
                        .context("re-clone after a failed rewind")?;
                    message = format!("rewind failed ({e}); cloned again from {}", upstream.node);
                }
                Err(e) => return Err(anyhow::Error::new(e).context("rewind (re-cloning is off)")),
            }
        }
    }
    write_config(node, settings, Some(upstream)).await?;
    node.pg.set_standby(true)?;
    node.set_phase(AgentPhase::Starting);
    node.pg.start(START_TIMEOUT).await?;
    callbacks::fire(node, Event::Start, "replica");
    Ok(message)
}

async fn demote(node: &Node) -> anyhow::Result<String> {
    if node.pg.postmaster_pid().is_none() {
        node.release_lease().await;
        node.update(|p| p.intent = Intent::None)?;
        return Ok("already stopped".into());
    }
    node.set_phase(AgentPhase::Stopping);
    // A checkpoint while still taking writes makes the shutdown checkpoint
    // (and so the write pause) short.
    if let Err(e) = node.pg.checkpoint().await {
        tracing::warn!(error = %e, "checkpoint before demotion failed");
    }
    node.pg.stop(StopMode::Fast, STOP_TIMEOUT).await?;
    node.release_lease().await;
    node.update(|p| p.intent = Intent::None)?;
    callbacks::fire(node, Event::Stop, "demoted");
    Ok("stopped cleanly for the switchover".into())
}

async fn detach(node: &Node) -> anyhow::Result<String> {
    let p = node.persisted();
    if p.upstream.is_none() {
        return Ok("not streaming".into());
    }
    node.update(|p| p.upstream = None)?;
    if node.pg.postmaster_pid().is_some() {
        // Without primary_conninfo the WAL receiver stops: the old primary
        // cannot collect acknowledgements from this node any more.
        let settings = ManagedSettings {
            synchronous_standby_names: String::new(),
            ..node.settings()
        };
        write_config(node, &settings, None).await?;
        node.pg.reload().await?;
    }
    Ok("detached from the old primary".into())
}

async fn reinit(node: &Node, upstream: &Upstream, action_id: u64) -> anyhow::Result<String> {
    if status(node).await.is_some_and(|pg| !pg.in_recovery) {
        bail!("refusing to re-initialize a running primary");
    }
    node.release_lease().await;
    node.set_phase(AgentPhase::Cloning);
    node.pg.stop(StopMode::Immediate, STOP_TIMEOUT).await?;
    node.pg.wipe().await?;
    node.update(|p| {
        p.intent = Intent::Replica;
        p.upstream = Some(upstream.clone());
    })?;
    let settings = ManagedSettings {
        synchronous_standby_names: String::new(),
        ..node.settings()
    };
    let message = rejoin(node, upstream, &settings, false).await?;
    node.update(|p| p.completed_action = Some(action_id))?;
    Ok(format!("re-initialized: {message}"))
}
