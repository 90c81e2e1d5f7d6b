//! The Raft log and vote, on a [`KvEngine`].
//!
//! Keyspace "log" holds entries as JSON under their big-endian index, so
//! key order is log order. Keyspace "meta" holds the vote, the committed
//! log id and the last purged log id, each as JSON.
//!
//! Durability: `append` and `save_vote` flush durably before they report
//! success. Truncation, purge and the committed log id are not flushed on
//! their own: losing them in a crash only brings back a state the node was
//! in before, and the engine persists writes in order, so the next durable
//! flush covers them.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::engine::{flush_durable, EngineError, KeyRange, Keyspace, KvEngine, WriteOp};
use super::storage_error;
use super::watermark::{Watermark, WatermarkRecord};
use crate::manager::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log storage. Cloning it gives a reader sharing the same engine.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn KvEngine>,
    watermark: Option<Watermark>,
}

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn decode_entry(value: &[u8]) -> Result<Entry, EngineError> {
    serde_json::from_slice(value).map_err(|e| EngineError::Corruption(format!("log entry: {e}")))
}

/// Key bounds of the log indexes in `range`; `None` if it is empty.
fn key_range(range: &impl RangeBounds<u64>) -> Option<KeyRange> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        Some(end) => Some((
            Bound::Included(index_key(start)),
            Bound::Excluded(index_key(end)),
        )),
        None => Some((Bound::Included(index_key(start)), Bound::Unbounded)),
    }
}

impl LogStore {
    /// The engine underneath (to flush it at shutdown, after openraft has
    /// taken the store).
    pub fn engine(&self) -> Arc<dyn KvEngine> {
        Arc::clone(&self.engine)
    }

    /// Opens the log on `engine`, finishing a purge a crash interrupted.
    /// With a `watermark`, refuses an engine that lost durable data.
    pub fn new(
        engine: Arc<dyn KvEngine>,
        watermark: Option<Watermark>,
    ) -> Result<Self, EngineError> {
        let store = LogStore { engine, watermark };
        let purged: Option<LogId> = store.read_meta(LAST_PURGED)?;
        if let Some(purged) = purged {
            store.delete_up_to(purged.index)?;
        }
        let last = store.last_log_id()?;
        let record = match &store.watermark {
            Some(watermark) => watermark.read()?,
            None => None,
        };
        if let Some(record) = record {
            let vote: Option<Vote> = store.read_meta(VOTE)?;
            if let Some(loss) = record.loss(vote.as_ref(), last.or(purged).as_ref()) {
                return Err(EngineError::Corruption(format!("data lost: {loss}")));
            }
        }
        Ok(store)
    }

    /// The id of the last entry present.
    fn last_log_id(&self) -> Result<Option<LogId>, EngineError> {
        match self.engine.last(Keyspace::Log)? {
            None => Ok(None),
            Some((_, value)) => Ok(Some(decode_entry(&value)?.log_id)),
        }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, EngineError> {
        match self.engine.get(Keyspace::Meta, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                let key = String::from_utf8_lossy(key);
                EngineError::Corruption(format!("stored {key}: {e}"))
            }),
        }
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(value).map_err(|e| EngineError::Other(e.to_string()))?;
        self.engine.put(Keyspace::Meta, key, &bytes)
    }

    fn delete_up_to(&self, index: u64) -> Result<(), EngineError> {
        let range = (Bound::Unbounded, Bound::Included(index_key(index)));
        self.engine.delete_range(Keyspace::Log, range)
    }

    fn meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        self.read_meta(key)
            .map_err(|e| storage_error(subject, ErrorVerb::Read, e))
    }

    fn set_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        self.write_meta(key, value)
            .map_err(|e| storage_error(subject, ErrorVerb::Write, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some(keys) = key_range(&range) else {
            return Ok(Vec::new());
        };
        let read_error = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        self.engine
            .scan(Keyspace::Log, keys)
            .map_err(read_error)?
            .into_iter()
            .map(|(_, value)| decode_entry(&value).map_err(read_error))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(LAST_PURGED, ErrorSubject::Logs)?;
        let last = self
            .last_log_id()
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let write_error = |e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e);
        self.write_meta(VOTE, vote).map_err(write_error)?;
        flush_durable(&self.engine).await.map_err(write_error)?;
        let Some(watermark) = self.watermark.clone() else {
            return Ok(());
        };
        // Everything up to here is durable in the engine, this too.
        let record = WatermarkRecord {
            vote: Some(*vote),
            committed: self
                .meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?
                .flatten(),
        };
        tokio::task::spawn_blocking(move || watermark.write(&record))
            .await
            .map_err(|e| EngineError::Other(format!("watermark task failed: {e}")))
            .and_then(|r| r)
            .map_err(write_error)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.set_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write_error = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e);
        let mut ops = Vec::new();
        for entry in entries {
            let value = serde_json::to_vec(&entry)
                .map_err(|e| write_error(EngineError::Other(e.to_string())))?;
            ops.push(WriteOp::Put {
                key: index_key(entry.log_id.index),
                value,
            });
        }
        self.engine
            .write_batch(Keyspace::Log, ops)
            .map_err(write_error)?;
        // Readable now; durable only once flushed, and only then may
        // openraft count these entries as stored on this node.
        match flush_durable(&self.engine).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(message)));
                Err(write_error(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // One atomic delete from `log_id` to the end: no hole.
        let range = (Bound::Included(index_key(log_id.index)), Bound::Unbounded);
        self.engine
            .delete_range(Keyspace::Log, range)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge first: if a crash comes before the entries are
        // gone, `new` deletes them on the next start.
        self.set_meta(LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        self.delete_up_to(log_id.index)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges() {
        assert_eq!(key_range(&(5..5)), None);
        assert_eq!(key_range(&(Bound::Included(6), Bound::Excluded(5))), None);
        assert_eq!(
            key_range(&(u64::MAX..)),
            Some((Bound::Included(index_key(u64::MAX)), Bound::Unbounded))
        );
        assert_eq!(
            key_range(&(1..=2)),
            Some((Bound::Included(index_key(1)), Bound::Excluded(index_key(3))))
        );
        assert_eq!(
            key_range(&(..=u64::MAX)),
            Some((Bound::Included(index_key(0)), Bound::Unbounded))
        );
        assert!(index_key(255) < index_key(256));
    }
}
