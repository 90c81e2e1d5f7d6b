//! Who a data directory belongs to.
//!
//! `identity.json` records the manager id and the Raft group the directory
//! was written for. Starting a manager on another manager's directory, or on
//! a directory of another group, would make it vote with somebody else's
//! memory: refused before the store is opened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{ManagerConfig, Membership};
use super::types::NodeId;

const FILE: &str = "identity.json";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {dir} is empty: a new manager needs --peers (to form a group) or --join (to wait for `pgquorum managers add`)")]
    Empty { dir: PathBuf },
    #[error("{dir} is not a pgquorum manager data directory (it has files but no {FILE}); use an empty directory or the one this manager wrote")]
    Foreign { dir: PathBuf },
    #[error("data directory {dir} belongs to manager {found}, not {wanted}; start manager {found} on it, or give manager {wanted} its own directory")]
    OtherId {
        dir: PathBuf,
        found: NodeId,
        wanted: NodeId,
    },
    #[error("data directory {dir} was written by another manager group (formed with peers {found}); --peers says {wanted}. Use this group's data directory, or give the same --peers, or none (the data directory remembers its group)")]
    OtherGroup {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("data directory {dir}: {FILE} is damaged ({message}); do not delete it to rejoin under the same id — remove this manager and add a new one with a new id")]
    Damaged { dir: PathBuf, message: String },
}

/// The contents of `identity.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFile {
    pub node_id: NodeId,
    /// Raft group id; empty until a manager that joined hears from its group.
    pub group: String,
    /// The voters the group was formed with (empty for a joiner).
    pub initial_peers: BTreeMap<NodeId, String>,
}

/// The identity of a running manager; the group can be learned once.
#[derive(Debug, Clone)]
pub struct Identity {
    dir: PathBuf,
    inner: Arc<Mutex<IdentityFile>>,
}

/// The group id of a group formed by `peers`: the same on every initial voter.
pub fn group_of(peers: &BTreeMap<NodeId, String>) -> String {
    let text = peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn peers_text(peers: &BTreeMap<NodeId, String>) -> String {
    peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Identity {
    /// Check the data directory against the configuration, creating it (and
    /// its identity) when it is new. Returns whether it was new.
    pub fn prepare(config: &ManagerConfig) -> Result<(Identity, bool), IdentityError> {
        let dir = config.data_dir.clone();
        let io = |source| IdentityError::Io {
            dir: dir.clone(),
            source,
        };
        let path = dir.join(FILE);
        let has_files = match std::fs::read_dir(&dir) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(e)),
        };
        if !has_files {
            let file = match &config.membership {
                Membership::Existing => return Err(IdentityError::Empty { dir }),
                Membership::Join => IdentityFile {
                    node_id: config.id,
                    group: String::new(),
                    initial_peers: BTreeMap::new(),
                },
                Membership::Peers(peers) => IdentityFile {
                    node_id: config.id,
                    group: group_of(peers),
                    initial_peers: peers.clone(),
                },
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            let identity = Identity {
                dir: dir.clone(),
                inner: Arc::new(Mutex::new(file.clone())),
            };
            identity.write(&file)?;
            return Ok((identity, true));
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::Foreign { dir })
            }
            Err(e) => return Err(io(e)),
        };
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(|e| IdentityError::Damaged {
                dir: dir.clone(),
                message: e.to_string(),
            })?;
        if file.node_id != config.id {
            return Err(IdentityError::OtherId {
                dir,
                found: file.node_id,
                wanted: config.id,
            });
        }
        if let Membership::Peers(peers) = &config.membership {
            if file.group != group_of(peers) && !file.initial_peers.is_empty() {
                return Err(IdentityError::OtherGroup {
                    dir,
                    found: peers_text(&file.initial_peers),
                    wanted: peers_text(peers),
                });
            }
        }
        Ok((
            Identity {
                dir,
                inner: Arc::new(Mutex::new(file)),
            },
            false,
        ))
    }

    pub fn node_id(&self) -> NodeId {
        self.snapshot().node_id
    }

    /// The group id; empty while a joiner has not heard from its group.
    pub fn group(&self) -> String {
        self.snapshot().group
    }

    fn snapshot(&self) -> IdentityFile {
        crate::lock::lock(&self.inner).clone()
    }

    /// Accept a message from `group`: true if it is ours. A joiner adopts
    /// the group of the first leader that contacts it.
    pub fn accept_group(&self, group: &str) -> Result<bool, IdentityError> {
        let mut guard = crate::lock::lock(&self.inner);
        if guard.group == group {
            return Ok(true);
        }
        if !guard.group.is_empty() || group.is_empty() {
            return Ok(false);
        }
        let mut next = guard.clone();
        next.group = group.to_string();
        self.write(&next)?;
        *guard = next;
        tracing::info!(group, "joined manager group");
        Ok(true)
    }

    /// Replace the group (disaster recovery re-forms the group under a new id).
    pub fn reset_group(
        &self,
        group: &str,
        peers: BTreeMap<NodeId, String>,
    ) -> Result<(), IdentityError> {
        let mut guard = crate::lock::lock(&self.inner);
        let next = IdentityFile {
            node_id: guard.node_id,
            group: group.to_string(),
            initial_peers: peers,
        };
        self.write(&next)?;
        *guard = next;
        Ok(())
    }

    /// Write durably: temp file, fsync, rename, fsync the directory.
    fn write(&self, file: &IdentityFile) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            dir: self.dir.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(file).map_err(|e| io(std::io::Error::other(e)))?;
        crate::durable::replace(&self.dir.join(FILE), &text, Default::default()).map_err(io)
    }
}

/// Replace `path` with `contents` so that a crash leaves the old or the new
/// file, never a torn one.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::config::{ManagerArgs, ManagerConfig};
    use std::path::Path;

    fn config(dir: &Path, id: u64, peers: &str) -> ManagerConfig {
        ManagerConfig::load(&ManagerArgs {
            id: Some(id),
            data_dir: Some(dir.to_path_buf()),
            peers: Some(peers.to_string()),
            ..ManagerArgs::default()
        })
        .unwrap()
    }

    #[test]
    fn refuses_other_id_and_other_group() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        let peers = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";
        let (_, fresh) = Identity::prepare(&config(&dir, 1, peers)).unwrap();
        assert!(fresh);
        let (_, fresh) = Identity::prepare(&config(&dir, 1, peers)).unwrap();
        assert!(!fresh);
        let err =
            Identity::prepare(&config(&dir, 2, "1=127.0.0.1:7001,2=127.0.0.1:7002")).unwrap_err();
        assert!(matches!(err, IdentityError::OtherId { .. }), "{err}");
        let err =
            Identity::prepare(&config(&dir, 1, "1=127.0.0.1:7001,2=127.0.0.1:7009")).unwrap_err();
        assert!(matches!(err, IdentityError::OtherGroup { .. }), "{err}");
    }

    #[test]
    fn refuses_foreign_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("PG_VERSION"), "15").unwrap();
        let err = Identity::prepare(&config(tmp.path(), 1, "1=127.0.0.1:7001")).unwrap_err();
        assert!(matches!(err, IdentityError::Foreign { .. }), "{err}");
    }

    #[test]
    fn joiner_adopts_first_group_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ManagerConfig::load(&ManagerArgs {
            id: Some(4),
            listen: Some("127.0.0.1:7004".into()),
            data_dir: Some(tmp.path().join("m4")),
            join: true,
            ..ManagerArgs::default()
        })
        .unwrap();
        let (id, _) = Identity::prepare(&cfg).unwrap();
        assert!(id.accept_group("abc").unwrap());
        assert!(!id.accept_group("def").unwrap());
        let (again, _) = Identity::prepare(&cfg).unwrap();
        assert_eq!(again.group(), "abc");
    }
}
