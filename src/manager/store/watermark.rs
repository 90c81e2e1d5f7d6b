//! A record, outside the engine, of the latest vote and committed log id.
//!
//! sled 0.34 opens a damaged data file as an *empty* database instead of
//! reporting corruption (flipping bytes anywhere in `db` does it). A manager
//! that comes back empty under its old id may vote twice in a term or
//! forget entries it acknowledged. So the log store writes this small file
//! on every vote change (rare: elections only) and, on open, refuses an
//! engine that holds less than the file says was durable.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::engine::EngineError;
use crate::manager::types::{LogId, Vote};

/// What the engine is known to have made durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkRecord {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
}

impl WatermarkRecord {
    /// Why an engine holding `vote` and a log reaching `last_log_id` has
    /// lost data this record saw durable; `None` if it has not.
    pub fn loss(&self, vote: Option<&Vote>, last_log_id: Option<&LogId>) -> Option<String> {
        if let Some(marked) = &self.vote {
            if !vote.is_some_and(|v| v >= marked) {
                let vote = vote.map_or("none".to_string(), |v| v.to_string());
                return Some(format!(
                    "the stored vote ({vote}) is behind the vote recorded in the watermark \
                     ({marked})"
                ));
            }
        }
        if let Some(marked) = &self.committed {
            if last_log_id.is_none_or(|l| l.index < marked.index) {
                let last = last_log_id.map_or("none".to_string(), |l| l.to_string());
                return Some(format!(
                    "the stored log ends at {last}, before the committed entry recorded in the \
                     watermark ({marked})"
                ));
            }
        }
        None
    }
}

/// The watermark file.
#[derive(Debug, Clone)]
pub struct Watermark {
    path: PathBuf,
}

impl Watermark {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Watermark { path: path.into() }
    }

    /// The record, or `None` if the file was never written.
    pub fn read(&self) -> Result<Option<WatermarkRecord>, EngineError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                EngineError::Corruption(format!("watermark {}: {e}", self.path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the record durably: write a temporary file, sync, rename.
    pub fn write(&self, record: &WatermarkRecord) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(record).map_err(|e| EngineError::Other(e.to_string()))?;
        crate::durable::replace(&self.path, &bytes, Default::default())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    #[test]
    fn detects_vote_and_log_rollback() {
        let record = WatermarkRecord {
            vote: Some(Vote::new(3, 1)),
            committed: Some(log_id(7)),
        };
        assert_eq!(record.loss(Some(&Vote::new(3, 1)), Some(&log_id(7))), None);
        assert_eq!(record.loss(Some(&Vote::new(4, 2)), Some(&log_id(9))), None);
        assert!(record.loss(None, None).is_some());
        assert!(record
            .loss(Some(&Vote::new(2, 1)), Some(&log_id(9)))
            .is_some());
        assert!(record
            .loss(Some(&Vote::new(3, 1)), Some(&log_id(6)))
            .is_some());
        assert_eq!(WatermarkRecord::default().loss(None, None), None);
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::TempDir::new().unwrap();
        let watermark = Watermark::new(dir.path().join("w.json"));
        assert_eq!(watermark.read().unwrap(), None);
        let record = WatermarkRecord {
            vote: Some(Vote::new(1, 1)),
            committed: None,
        };
        watermark.write(&record).unwrap();
        assert_eq!(watermark.read().unwrap(), Some(record));
    }
}
