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
use super::core::{streams_from, Execution, Facts, Outcome, Step};
use super::node::{Node, Observation};
use super::postgres::StopMode;
use super::state::Intent;
use crate::cluster::wire::{
    AgentCommand, AgentPhase, CommandOutcome, DataDirState, ManagedSettings, Upstream,
};

use crate::cluster::settings::ServerSettings;
use crate::keeper::rule::FENCE_LEAD_MS;

/// How often the agent asks the keeper how it is.
const KEEPER_WATCH_EVERY: Duration = Duration::from_millis(100);
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Look at PostgreSQL now and remember what was seen.
pub async fn refresh(node: &Node) -> Observation {
    node.look_started();
    let look = node.pg.look().await;
    node.look_ended(&look);
    let postgres = look.status();
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
        read_parameter_catalog(&node).await;
        tokio::time::sleep(interval).await;
    }
}

/// Read the server's parameter catalog once per server start (it changes
/// only when a restart loads an extension); forget it while the server is
/// down, so the next start is read again.
async fn read_parameter_catalog(node: &Node) {
    let running = node.observation().postgres.is_some();
    let known = node.server_settings().is_some();
    if !running {
        if known {
            node.set_server_settings(None);
        }
        return;
    }
    if known {
        return;
    }
    match node.pg.parameter_catalog().await {
        Ok((server_version, catalog)) => {
            node.set_server_settings(Some(ServerSettings {
                server_version,
                catalog,
                local: node.live().local_parameters,
            }));
            // The leader gets it with the next report, not a heartbeat later.
            node.report_now.notify_one();
        }
        Err(e) => tracing::debug!(error = %e, "cannot read pg_settings yet"),
    }
}

/// Follow the keeper: notice when it fenced PostgreSQL (the lease ran
/// out), and keep the agent's view of the lease the keeper's.
pub async fn watch_keeper(node: Arc<Node>) {
    loop {
        tokio::time::sleep(KEEPER_WATCH_EVERY).await;
        let Some((keeper, fences)) = node.sync_keeper().await else {
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
            if let Err(e) = node.update(|p| p.keeper_fences = Some((keeper.pid, keeper.fences))) {
                tracing::warn!(error = %e, "cannot record the fence as noticed");
            }
        }
    }
}

/// Run commands as they come.
pub async fn run(
    node: Arc<Node>,
    mut commands: mpsc::Receiver<AgentCommand>,
    mut reloads: mpsc::Receiver<super::config::AgentConfig>,
    load: super::reload::Loader,
) {
    loop {
        // A reloaded configuration is applied between commands.
        let command = tokio::select! {
            command = commands.recv() => command,
            Some(config) = reloads.recv() => {
                super::reload::apply(&node, config).await;
                continue;
            }
        };
        let Some(command) = command else { return };
        let action = command.action.name();
        tracing::info!(id = command.id, epoch = command.epoch, action, "command");
        let result = execute(&node, &command, &load).await;
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
                    action: action.to_string(),
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
                    action: action.to_string(),
                }
            }
        };
        node.finish(outcome);
    }
}

/// Carry a command out: the agent core ([`super::core`]) decides each step
/// from what it saw and what came of the steps before; here each step is
/// done.
async fn execute(
    node: &Arc<Node>,
    command: &AgentCommand,
    load: &super::reload::Loader,
) -> anyhow::Result<String> {
    let mut execution = Execution::new(command.clone());
    loop {
        let step = execution.next_step();
        let outcome = match step {
            Step::Done(Ok(message)) => return Ok(message),
            Step::Done(Err(message)) => bail!(message),
            Step::ReloadAgent => match load() {
                Ok(config) => {
                    super::reload::apply(node, config).await;
                    Outcome::Ok
                }
                Err(e) => Outcome::Failed(format!(
                    "{e:#}; the running configuration stays: fix the file and reload again"
                )),
            },
            step => {
                let started = std::time::Instant::now();
                let outcome = perform(node, &step).await;
                tracing::debug!(?step, ?outcome, elapsed = ?started.elapsed(), "step");
                outcome
            }
        };
        execution.outcome(outcome);
    }
}

/// Do one step.
async fn perform(node: &Node, step: &Step) -> Outcome {
    use super::core::Change;
    let done = |r: anyhow::Result<()>| match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    let yes_no = |b: bool| if b { Outcome::Yes } else { Outcome::No };
    match step {
        Step::Look => Outcome::Looked(Box::new(look(node).await)),
        Step::Persist(change) => {
            let r = node.update(|p| {
                if let Change::Epoch(epoch) = change {
                    tracing::info!(epoch, "new epoch");
                }
                change.clone().apply(p);
            });
            if r.is_ok() && matches!(change, Change::Epoch(_)) {
                node.apply_early_grant().await;
            }
            done(r.map_err(Into::into))
        }
        Step::ClaimLease => {
            // Reports want the lease from now on, and one goes at once: the
            // leader may not have sent a grant along with the command.
            let r = if node.intent() != Intent::Primary {
                node.update(|p| p.intent = Intent::Primary)
            } else {
                Ok(())
            };
            node.report_now.notify_one();
            done(r.map_err(Into::into))
        }
        Step::AwaitLease => done(await_lease(node).await),
        Step::ReleaseLease => {
            node.release_lease().await;
            Outcome::Ok
        }
        Step::Phase(phase) => {
            node.set_phase(*phase);
            Outcome::Ok
        }
        Step::Initdb => done(create_cluster(node).await),
        Step::WriteConfig { settings, upstream } => {
            done(write_config(node, settings, upstream.as_ref()).await)
        }
        Step::SetStandby(standby) => done(node.pg.set_standby(*standby).map_err(Into::into)),
        Step::Start => done(node.pg.start(START_TIMEOUT).await.map_err(Into::into)),
        Step::StopFast => done(
            node.pg
                .stop(StopMode::Fast, STOP_TIMEOUT)
                .await
                .map_err(Into::into),
        ),
        Step::StopImmediate => done(
            node.pg
                .stop(StopMode::Immediate, STOP_TIMEOUT)
                .await
                .map_err(Into::into),
        ),
        Step::Restart => done(node.pg.restart(START_TIMEOUT).await.map_err(Into::into)),
        Step::Reload => done(node.pg.reload().await.map_err(Into::into)),
        Step::Promote => {
            let r = node.pg.promote(START_TIMEOUT).await;
            // `/primary` (and a load balancer checking it) says yes from
            // the moment the server takes writes, not an observer period
            // later.
            if r.is_ok() {
                refresh(node).await;
            }
            done(r.map_err(Into::into))
        }
        Step::Checkpoint => {
            let r = node.pg.checkpoint().await;
            if let Err(e) = &r {
                tracing::warn!(error = %e, "checkpoint failed");
            }
            done(r.map_err(Into::into))
        }
        Step::Fence => done(node.pg.fence().await.map_err(Into::into)),
        Step::CrashRecover => done(
            node.pg
                .crash_recover(START_TIMEOUT)
                .await
                .map_err(Into::into),
        ),
        Step::Rewind(upstream) => match node.pg.rewind(upstream, CLONE_TIMEOUT).await {
            Ok(o) => Outcome::Rewound(o),
            Err(e) => Outcome::Failed(e.to_string()),
        },
        Step::Clone(upstream) => done(clone(node, upstream).await),
        Step::Wipe => done(node.pg.wipe().await.map_err(Into::into)),
        Step::IsReachable(upstream) => yes_no(node.pg.upstream_reachable(upstream).await),
        Step::WaitStreaming(upstream) => {
            yes_no(wait_streaming(node, upstream, Duration::from_secs(5)).await)
        }
        Step::EnsureReplicationRole => done(ensure_replication_role(node).await),
        Step::Callback(event, role) => {
            callbacks::fire(node, *event, role);
            Outcome::Ok
        }
        // `ReloadAgent` is done in `execute`, which has the file's loader.
        Step::Done(_) | Step::ReloadAgent => Outcome::Ok,
    }
}

/// A new cluster: initdb, or the operator's bootstrap command
/// (`[postgresql.bootstrap]`).
async fn create_cluster(node: &Node) -> anyhow::Result<()> {
    match node.live().bootstrap {
        None => node.pg.initdb().await.context("initdb"),
        Some(command) => node
            .pg
            .bootstrap_with(&command, &node.config.cluster)
            .await
            .with_context(|| format!("bootstrap with {}", command.program.display())),
    }
}

/// A replica's data directory: the configured methods in order
/// (`postgresql.replica_methods`, pg_basebackup by default).
async fn clone(node: &Node, upstream: &Upstream) -> anyhow::Result<()> {
    let methods = node.live().replica_methods;
    // The driver logs which method made the copy.
    node.pg
        .clone_replica(&methods, upstream, &node.config.cluster, CLONE_TIMEOUT)
        .await
        .context("clone")?;
    Ok(())
}

/// The new primary's replication role. A cluster bootstrapped from a
/// backup that left `recovery.signal` runs archive recovery first and
/// promotes itself at its end: wait for that (as long as the bootstrap
/// command may run), so that the node acts as primary only once writable.
async fn ensure_replication_role(node: &Node) -> anyhow::Result<()> {
    let limit = node
        .live()
        .bootstrap
        .map_or(START_TIMEOUT, |b| b.timeout.max(START_TIMEOUT));
    node.pg.await_writable(limit).await?;
    node.pg.ensure_replication_role().await?;
    Ok(())
}

/// What the agent core decides on: a fresh look at PostgreSQL plus what
/// the agent remembers.
async fn look(node: &Node) -> Facts {
    let observation = refresh(node).await;
    // The observer keeps its last picture of the data directory while a
    // clone or rewind writes it; a command's own look must see what is
    // there now — a reinit looks right after wiping it, and a stale
    // "valid" sent it into a rewind of nothing.
    // (Only then: inspecting runs pg_controldata, which the observer just
    // did otherwise, and every look with the server down — a rejoin, a
    // restart — would pay for it twice.)
    let kept = observation.postgres.is_none()
        && matches!(
            node.phase(),
            AgentPhase::Cloning | AgentPhase::Rewinding | AgentPhase::Bootstrapping
        );
    let data = if kept {
        node.pg.inspect().await
    } else {
        observation.data
    };
    let p = node.persisted();
    Facts {
        epoch: p.epoch,
        intent: p.intent,
        upstream: p.upstream,
        phase: node.phase(),
        running: node.pg.postmaster_pid().is_some(),
        postgres: observation.postgres,
        data,
        unsupervised: unsupervised_postmaster(node).is_some(),
        holdoff_ms: node.holdoff_ms(),
        settings: node.settings(),
    }
}

/// The managed settings plus this node's own parameters (which win).
async fn write_config(
    node: &Node,
    settings: &ManagedSettings,
    upstream: Option<&Upstream>,
) -> anyhow::Result<()> {
    node.set_settings(settings.clone());
    if let (Some(up), Some(true)) = (upstream, settings.use_slots) {
        let slot = crate::cluster::slots::slot_name(&node.config.name);
        match tokio::time::timeout(Duration::from_secs(1), node.pg.ensure_slot_on(up, &slot)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, upstream = %up.node, "could not check this replica's slot on its upstream (its agent creates it)")
            }
            Err(_) => {
                tracing::debug!(upstream = %up.node, "the upstream did not answer about this replica's slot in time")
            }
        }
    }
    let mut merged = settings.clone();
    for (k, v) in node.live().local_parameters {
        merged.parameters.insert(k, v);
    }
    node.pg.write_config(&merged, upstream).await?;
    node.set_wants_config(false);
    // Kept across agent restarts for the slot keeper (written only when it
    // changes: this lies on the promotion path; and only from the leader's
    // settings, not ones made up here). Not worth failing a command over.
    if settings.use_slots.is_some() && node.persisted().use_slots != settings.use_slots {
        if let Err(e) = node.update(|p| p.use_slots = settings.use_slots) {
            tracing::warn!(error = %e, "cannot record whether replication slots are on");
        }
    }
    if settings.slots.is_some() && node.persisted().slots != settings.slots {
        if let Err(e) = node.update(|p| p.slots = settings.slots.clone()) {
            tracing::warn!(error = %e, "cannot record the permanent replication slots");
        }
    }
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

/// A running postmaster that is not the keeper's child.
fn unsupervised_postmaster(node: &Node) -> Option<i32> {
    let pid = node.pg.postmaster_pid()?;
    let keeper = node.keeper_state()?;
    (keeper.postmaster != Some(pid)).then_some(pid)
}

async fn wait_streaming(node: &Node, upstream: &Upstream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if node
            .pg
            .status()
            .await
            .is_some_and(|pg| streams_from(&pg, upstream))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
