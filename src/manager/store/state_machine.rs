//! The Raft state machine: the committed [`ClusterState`], in memory.
//!
//! It is persisted by snapshot only: `apply` changes memory, a snapshot is
//! written durably to keyspace "snapshot", and on start the state is
//! rebuilt from that snapshot. openraft then re-applies the committed
//! entries that follow it (the log store keeps the committed log id).
//!
//! The rest of the program reads the state through [`StateMachineStore::watch`]:
//! a cheap `Arc` published after every apply batch and snapshot install.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::engine::{EngineError, Keyspace, KvEngine};
use super::storage_error;
use crate::cluster::{ClusterState, CommandResponse};
use crate::manager::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The one key of keyspace "snapshot": meta and data in one value, so a
/// single read sees a consistent pair.
const CURRENT: &[u8] = b"current";

/// `[meta length: u32 BE][meta JSON][data]`.
fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, EngineError> {
    let meta = serde_json::to_vec(meta).map_err(|e| EngineError::Other(e.to_string()))?;
    let len = u32::try_from(meta.len())
        .map_err(|_| EngineError::Other("snapshot meta too large".into()))?;
    let mut value = Vec::with_capacity(4 + meta.len() + data.len());
    value.extend_from_slice(&len.to_be_bytes());
    value.extend_from_slice(&meta);
    value.extend_from_slice(data);
    Ok(value)
}

fn decode_snapshot(value: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), EngineError> {
    let corrupt = |what: String| EngineError::Corruption(format!("stored snapshot: {what}"));
    let (len, rest) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("truncated".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt("truncated".into()));
    }
    let (meta, data) = rest.split_at(len);
    let meta = serde_json::from_slice(meta).map_err(|e| corrupt(e.to_string()))?;
    Ok((meta, data.to_vec()))
}

/// The applied state; also the content of a snapshot (as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: ClusterState,
}

impl AppliedState {
    /// Decodes snapshot data; `meta` is authoritative for the log ids.
    fn from_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Self, serde_json::Error> {
        let decoded: AppliedState = serde_json::from_slice(data)?;
        Ok(AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: decoded.state,
        })
    }
}

struct Shared {
    engine: Arc<dyn KvEngine>,
    /// The current state. Only the state machine task replaces it.
    current: watch::Sender<Arc<AppliedState>>,
    /// Serializes snapshot writes (each compares with the stored one).
    write_lock: Mutex<()>,
}

impl Shared {
    fn current(&self) -> Arc<AppliedState> {
        Arc::clone(&self.current.borrow())
    }

    fn read_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, EngineError> {
        match self.engine.get(Keyspace::Snapshot, CURRENT)? {
            Some(value) => decode_snapshot(&value).map(Some),
            None => Ok(None),
        }
    }

    /// Stores a snapshot durably, replacing the current one; with
    /// `keep_newer`, a stored snapshot that is further ahead is kept.
    fn write_snapshot(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        keep_newer: bool,
    ) -> Result<(), EngineError> {
        let value = encode_snapshot(meta, data)?;
        let _guard = self
            .write_lock
            .lock()
            .map_err(|_| EngineError::Other("snapshot lock poisoned".into()))?;
        if keep_newer {
            if let Some((stored, _)) = self.read_snapshot()? {
                if stored.last_log_id > meta.last_log_id {
                    return Ok(());
                }
            }
        }
        self.engine.put(Keyspace::Snapshot, CURRENT, &value)?;
        self.engine.flush_durable()
    }
}

/// Runs a blocking snapshot write on a blocking thread.
async fn write_snapshot(
    shared: &Arc<Shared>,
    meta: SnapshotMeta,
    data: Vec<u8>,
    keep_newer: bool,
) -> Result<(), StorageError> {
    let signature = Some(meta.signature());
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || shared.write_snapshot(&meta, &data, keep_newer))
        .await
        .map_err(|e| EngineError::Other(format!("snapshot task failed: {e}")))
        .and_then(|r| r)
        .map_err(|e| storage_error(ErrorSubject::Snapshot(signature), ErrorVerb::Write, e))
}

/// The state machine, persisted by snapshot.
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl StateMachineStore {
    /// Opens the state machine on `engine`, from its stored snapshot if any.
    pub fn new(engine: Arc<dyn KvEngine>) -> Result<Self, EngineError> {
        let (current, _) = watch::channel(Arc::new(AppliedState::default()));
        let shared = Shared {
            engine,
            current,
            write_lock: Mutex::new(()),
        };
        if let Some((meta, data)) = shared.read_snapshot()? {
            let state = AppliedState::from_snapshot(&meta, &data)
                .map_err(|e| EngineError::Corruption(format!("snapshot data: {e}")))?;
            shared.current.send_replace(Arc::new(state));
        }
        Ok(StateMachineStore {
            shared: Arc::new(shared),
        })
    }

    /// A read handle on the applied state, updated after every apply batch
    /// and snapshot install. Cheap: readers share one `Arc`.
    pub fn watch(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.shared.current.subscribe()
    }
}

/// Builds snapshots of the state current when `build_snapshot` runs.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let applied = self.shared.current();
        let data = serde_json::to_vec(&*applied).map_err(|e| {
            storage_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                EngineError::Other(e.to_string()),
            )
        })?;
        let unix_ms = crate::wallclock::unix_ms();
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{unix_ms}", id.leader_id.term, id.index),
            None => format!("0-0-{unix_ms}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        // A snapshot installed from the leader meanwhile may be newer.
        write_snapshot(&self.shared, meta.clone(), data.clone(), true).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let current = self.shared.current();
        Ok((current.last_applied, current.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Copy-on-write: readers keep the `Arc` they hold.
        let mut next = AppliedState::clone(&self.shared.current());
        let mut responses = Vec::new();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::default(),
                EntryPayload::Normal(command) => CommandResponse(command.apply(&mut next.state)),
                EntryPayload::Membership(membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResponse::default()
                }
            };
            responses.push(response);
        }
        if !responses.is_empty() {
            self.shared.current.send_replace(Arc::new(next));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        // The whole buffer, whatever the cursor's position.
        let data = snapshot.into_inner();
        let signature = meta.signature();
        let state = AppliedState::from_snapshot(meta, &data).map_err(|e| {
            storage_error(
                ErrorSubject::Snapshot(Some(signature)),
                ErrorVerb::Read,
                EngineError::Corruption(e.to_string()),
            )
        })?;
        // Durable first: if it fails, the state machine is unchanged.
        write_snapshot(&self.shared, meta.clone(), data, false).await?;
        self.shared.current.send_replace(Arc::new(state));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = self
            .shared
            .read_snapshot()
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_snapshot_round_trip() {
        let meta = SnapshotMeta {
            snapshot_id: "1-2-3".into(),
            ..SnapshotMeta::default()
        };
        let value = encode_snapshot(&meta, b"{\"data\":1}").unwrap();
        let (decoded, data) = decode_snapshot(&value).unwrap();
        assert_eq!((decoded, data.as_slice()), (meta, &b"{\"data\":1}"[..]));
        for damaged in [&value[..2], &value[..10]] {
            assert!(matches!(
                decode_snapshot(damaged),
                Err(EngineError::Corruption(_))
            ));
        }
    }
}
