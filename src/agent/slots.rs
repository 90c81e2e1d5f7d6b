//! Keep this node's replication slots as `cluster::slots::plan` says: a
//! slot for every other member, replicas' slots at their replay LSN,
//! removed members' slots dropped, and the permanent slots the
//! configuration declares (copied from the upstream on a replica, which
//! then asks the leader for a restart to load them). A look every second
//! while PostgreSQL answers; never while the data directory is being
//! written (clone, rewind, bootstrap), and not before the configuration
//! said whether slots are on.

use std::sync::Arc;
use std::time::Duration;

use super::node::Node;
use super::state::Intent;
use crate::cluster::slots::{self, SlotAction, SlotInput};
use crate::cluster::wire::AgentPhase;

const EVERY: Duration = Duration::from_secs(1);

pub async fn run(node: Arc<Node>) {
    loop {
        tokio::time::sleep(EVERY).await;
        if let Err(e) = tend(&node).await {
            tracing::debug!(error = %e, "replication slots not tended this time");
        }
    }
}

async fn tend(node: &Node) -> Result<(), crate::agent::postgres::PgError> {
    let persisted = node.persisted();
    let Some(use_slots) = persisted.use_slots else {
        return Ok(());
    };
    if writing_data_dir(node) {
        return Ok(());
    }
    let Some(pg) = node.observation().postgres else {
        return Ok(());
    };
    let members: Vec<String> = persisted.peers.iter().map(|p| p.name.clone()).collect();
    if members.is_empty() {
        return Ok(());
    }
    // The server this look is about: a request to restart it means nothing
    // to the next one.
    let postmaster = node.pg.postmaster_pid();
    let view = node.pg.slot_view().await?;
    let loaded: Vec<String> = view.slots.iter().map(|s| s.name.clone()).collect();
    let unloaded = node.pg.unloaded_slots(&loaded);
    let upstream = match (&persisted.upstream, persisted.intent, pg.in_recovery) {
        (Some(up), Intent::Replica, true) if needs_upstream(persisted.slots.as_ref()) => {
            match node.pg.replication_slots_on(up).await {
                Ok(slots) => Some(slots),
                Err(e) => {
                    if warn_now() {
                        tracing::warn!(error = %e, upstream = %up.node, "cannot read the upstream's replication slots, so this replica keeps no copy of the permanent ones: it connects as the superuser over TCP (set postgresql.superuser_password_file, or admit it in pg_hba.conf)");
                    }
                    None
                }
            }
        }
        _ => None,
    };
    let input = SlotInput {
        node: &node.config.name,
        members: &members,
        use_slots,
        in_recovery: pg.in_recovery,
        replay_lsn: pg.replay_lsn,
        declared: persisted.slots.as_ref(),
        upstream: upstream.as_deref(),
        unloaded: &unloaded,
        redo_lsn: view.redo_lsn,
        logical_wal: view.logical_wal,
    };
    for action in slots::plan(&input, &view.slots) {
        // A clone or rewind may have begun while this look lasted.
        if writing_data_dir(node) {
            return Ok(());
        }
        let result = match &action {
            SlotAction::Copy(name) => match &persisted.upstream {
                Some(up) => {
                    node.pg
                        .copy_slot(up, name, view.redo_lsn, pg.replay_lsn)
                        .await
                }
                None => Ok(()),
            },
            SlotAction::DiscardCopy(name) => node.pg.discard_slot_copy(name),
            _ => node.pg.change_slot(&action).await,
        };
        match result {
            Ok(())
                if matches!(
                    action,
                    SlotAction::Advance(..) | SlotAction::AdvanceLogical { .. }
                ) => {}
            Ok(()) if matches!(action, SlotAction::CreateLogical { .. }) => tracing::warn!(
                ?action,
                "created a permanent logical slot at the current position: a consumer of an \
                 earlier slot of this name (on a former primary) misses what came in between"
            ),
            Ok(()) => tracing::info!(?action, "replication slot changed"),
            Err(e) => tracing::warn!(?action, error = %e, "replication slot not changed"),
        }
    }
    // Copies made just now are counted at the next look.
    let restart = slots::restart_to_load(&input);
    node.set_restart_to_load_slots(restart.then_some(postmaster).flatten());
    Ok(())
}

/// A clone, rewind or bootstrap writes the data directory: hands off.
fn writing_data_dir(node: &Node) -> bool {
    matches!(
        node.phase(),
        AgentPhase::Cloning | AgentPhase::Rewinding | AgentPhase::Bootstrapping
    )
}

/// At most one warning a minute (the look runs every second).
fn warn_now() -> bool {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = crate::lock::lock(&LAST);
    let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
    if due {
        *last = Some(std::time::Instant::now());
    }
    due
}

/// A replica reads its upstream's slots only when it keeps permanent ones.
fn needs_upstream(declared: Option<&slots::DeclaredSlots>) -> bool {
    declared.is_some_and(|d| !d.slots.is_empty())
}
