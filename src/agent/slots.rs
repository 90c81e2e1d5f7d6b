//! Keep this node's replication slots as `cluster::slots::plan` says: a
//! slot for every other member, replicas' slots at their replay LSN,
//! removed members' slots dropped. A look every second while PostgreSQL
//! answers; never while the data directory is being written (clone,
//! rewind, bootstrap), and not before the configuration said whether
//! slots are on.

use std::sync::Arc;
use std::time::Duration;

use super::node::Node;
use crate::cluster::slots::{self, SlotInput};
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
    if matches!(
        node.phase(),
        AgentPhase::Cloning | AgentPhase::Rewinding | AgentPhase::Bootstrapping
    ) {
        return Ok(());
    }
    let Some(pg) = node.observation().postgres else {
        return Ok(());
    };
    let members: Vec<String> = persisted.peers.iter().map(|p| p.name.clone()).collect();
    if members.is_empty() {
        return Ok(());
    }
    let existing = node.pg.replication_slots().await?;
    let input = SlotInput {
        node: &node.config.name,
        members: &members,
        use_slots,
        in_recovery: pg.in_recovery,
        replay_lsn: pg.replay_lsn,
    };
    for action in slots::plan(&input, &existing) {
        match node.pg.change_slot(&action).await {
            Ok(()) if matches!(action, slots::SlotAction::Advance(..)) => {}
            Ok(()) => tracing::info!(?action, "replication slot changed"),
            Err(e) => tracing::warn!(?action, error = %e, "replication slot not changed"),
        }
    }
    Ok(())
}
