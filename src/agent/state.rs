//! What the agent must remember across restarts, kept outside the data
//! directory (pg_basebackup and pg_rewind copy the data directory from
//! other nodes, and must never carry one node's epoch to another).
//!
//! The epoch is written durably *before* the agent acts on a command of a
//! newer epoch: after a crash it still refuses the older epochs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::wire::{Peer, Upstream};

/// What this node is supposed to be, as the last command said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// No role yet (fresh, or stopped on command).
    #[default]
    None,
    /// The primary of `epoch`: runs writable only with a valid lease.
    Primary,
    /// A replica of `upstream`.
    Replica,
}

/// The contents of `agent-state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// Highest epoch seen.
    pub epoch: u64,
    pub intent: Intent,
    pub upstream: Option<Upstream>,
    /// Last operator action carried out.
    pub completed_action: Option<u64>,
    /// Dynamic configuration version applied.
    pub config_version: u64,
    /// The cluster's members as the leader last told (for failsafe mode,
    /// which works while no manager answers).
    pub peers: Vec<Peer>,
    /// Failsafe mode is on in the cluster's configuration.
    pub failsafe: bool,
    /// Replication slots are on, as the configuration last written said
    /// (None: not known yet; slots are then left as they are).
    pub use_slots: Option<bool>,
    /// The permanent slots, as the configuration last written said.
    #[serde(default)]
    pub slots: Option<crate::cluster::slots::DeclaredSlots>,
    /// The keeper (pid) and its count of fences an agent last noticed: a
    /// fence while no agent ran (the agent killed) is noticed by the next.
    #[serde(default)]
    pub keeper_fences: Option<(u32, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("agent state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent state {path} is damaged ({message}); it records the highest epoch this node saw: repair or restore it rather than delete it")]
    Damaged { path: PathBuf, message: String },
}

/// The state file.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join("agent-state.json"),
        }
    }

    pub fn load(&self) -> Result<Persisted, StateError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| StateError::Damaged {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(source) => Err(StateError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Write durably (fsync file and directory).
    pub fn save(&self, state: &Persisted) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
        crate::durable::replace(&self.path, &text, Default::default()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load().unwrap(), Persisted::default());
        let s = Persisted {
            epoch: 4,
            intent: Intent::Primary,
            ..Persisted::default()
        };
        f.save(&s).unwrap();
        assert_eq!(f.load().unwrap(), s);
        std::fs::write(dir.path().join("agent-state.json"), "{garbage").unwrap();
        assert!(matches!(f.load(), Err(StateError::Damaged { .. })));
    }
}
