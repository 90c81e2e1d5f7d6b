//! Disaster recovery: a majority of managers is lost for good, so the group
//! can never commit again. `pgquorum manager --force-new-cluster` restarts
//! it from one survivor's data (like etcd's `--force-new-cluster`):
//!
//! 1. read the cluster state this manager knows to be committed (its last
//!    snapshot plus every log entry up to its committed index);
//! 2. set the old Raft directory aside (never deleted);
//! 3. form a new single-voter group under a new group id;
//! 4. commit the old state, then bump every cluster's epoch by
//!    [`EPOCH_BUMP`], so that no agent trusts a decision the lost managers
//!    may have taken after this one stopped hearing from them.
//!
//! The new leader, like any new leader, waits a full lease before making
//! any node writable, so a primary the lost managers still kept leased has
//! fenced itself by then.

use std::path::{Path, PathBuf};

use anyhow::Context;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::EntryPayload;

use super::store::{self, Durability};
use crate::cluster::ClusterState;

/// How far the epoch jumps: more promotions than the lost managers can have
/// committed in the time it takes an operator to notice and recover.
pub const EPOCH_BUMP: u64 = 1000;

/// The committed state a (stopped) manager's store holds.
pub async fn surviving_state(raft_dir: &Path) -> anyhow::Result<ClusterState> {
    let (mut log, state_machine) = store::open(raft_dir, Durability::Fsync)
        .with_context(|| format!("cannot open the surviving store in {}", raft_dir.display()))?;
    let applied = state_machine.watch().borrow().clone();
    let mut state = applied.state.clone();
    let from = applied.last_applied.map(|l| l.index + 1).unwrap_or(0);
    let committed = log
        .read_committed()
        .await
        .context("read the committed index")?;
    if let Some(committed) = committed {
        if committed.index >= from {
            let entries = log
                .try_get_log_entries(from..=committed.index)
                .await
                .context("read committed log entries")?;
            for entry in entries {
                if let EntryPayload::Normal(command) = entry.payload {
                    // Rejections are part of the history too: apply as Raft did.
                    let _ = command.apply(&mut state);
                }
            }
        }
    }
    Ok(state)
}

/// Move the old Raft store out of the way (kept for forensics).
pub fn set_aside(raft_dir: &Path) -> anyhow::Result<PathBuf> {
    let stamp = crate::wallclock::unix_secs();
    let aside = raft_dir.with_file_name(format!("raft.before-recovery-{stamp}"));
    std::fs::rename(raft_dir, &aside).with_context(|| {
        format!(
            "cannot move {} aside to {}",
            raft_dir.display(),
            aside.display()
        )
    })?;
    Ok(aside)
}
