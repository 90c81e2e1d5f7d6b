//! The key-value engine under the Raft stores, and its sled implementation.
//!
//! The stores only need a handful of operations, so they talk to a narrow
//! [`KvEngine`] trait: another engine can replace sled without touching the
//! Raft code. Calls are synchronous; the stores move the slow one
//! ([`KvEngine::flush_durable`]) to a blocking thread.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Sled's page cache size. Its default (1 GiB) would dwarf a manager that
/// must stay under 40 MB RSS; the Raft data is small.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// A named keyspace; each maps to one sled tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyspace {
    /// Raft log entries keyed by big-endian index.
    Log,
    /// Vote, committed and last purged log ids.
    Meta,
    /// The current state machine snapshot.
    Snapshot,
}

impl Keyspace {
    pub const ALL: [Keyspace; 3] = [Keyspace::Log, Keyspace::Meta, Keyspace::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Log => "log",
            Keyspace::Meta => "meta",
            Keyspace::Snapshot => "snapshot",
        }
    }

    fn position(self) -> usize {
        match self {
            Keyspace::Log => 0,
            Keyspace::Meta => 1,
            Keyspace::Snapshot => 2,
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// Key bounds of a scan, compared as bytes.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// What an engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Stored data is damaged: never start over from an empty store.
    #[error("corrupt data: {0}")]
    Corruption(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Other(String),
}

impl From<sled::Error> for EngineError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => EngineError::Io(io),
            sled::Error::Corruption { .. } => EngineError::Corruption(e.to_string()),
            other => EngineError::Other(format!("sled: {other}")),
        }
    }
}

/// The operations the Raft stores need from an embedded key-value engine.
pub trait KvEngine: Send + Sync + 'static {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    fn put(&self, ks: Keyspace, key: &[u8], value: &[u8]) -> Result<(), EngineError>;

    /// Applies `ops` in order, all or none of them after a crash.
    fn write_batch(&self, ks: Keyspace, ops: Vec<WriteOp>) -> Result<(), EngineError>;

    /// Pairs with keys in `range`, in key order.
    fn scan(&self, ks: Keyspace, range: KeyRange) -> Result<Vec<KeyValue>, EngineError>;

    /// The pair with the greatest key.
    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, EngineError>;

    /// Deletes every key in `range`, all or none of them after a crash.
    fn delete_range(&self, ks: Keyspace, range: KeyRange) -> Result<(), EngineError> {
        let ops = self
            .scan(ks, range)?
            .into_iter()
            .map(|(key, _)| WriteOp::Delete { key })
            .collect();
        self.write_batch(ks, ops)
    }

    /// Returns once every earlier write, in every keyspace, survives a
    /// power loss. Can block for milliseconds.
    fn flush_durable(&self) -> Result<(), EngineError>;
}

/// Runs [`KvEngine::flush_durable`] on a blocking thread.
pub async fn flush_durable(engine: &Arc<dyn KvEngine>) -> Result<(), EngineError> {
    let engine = Arc::clone(engine);
    tokio::task::spawn_blocking(move || engine.flush_durable())
        .await
        .map_err(|e| EngineError::Other(format!("flush task failed: {e}")))?
}

/// How far [`SledEngine::flush_durable`] goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// sled's flush, then fdatasync of its files: survives a power loss.
    #[default]
    Fsync,
    /// sled's flush only. On Linux sled uses `sync_file_range`, which
    /// neither flushes the disk cache nor file metadata, and sled never
    /// syncs its blob files: a crash of the process is fine, a power loss
    /// can lose acknowledged writes. For measurements and throwaway tests.
    SledFlushOnly,
}

/// [`KvEngine`] on sled 0.34: one database, one tree per keyspace, so a
/// single flush covers all of them.
pub struct SledEngine {
    dir: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 3],
    durability: Durability,
    /// sled's data file, kept open for fdatasync.
    data_file: File,
    /// Directory entries known to be durable; a new one needs a sync of
    /// its file (blobs) and of the directory.
    synced: Mutex<SyncedEntries>,
}

#[derive(Default)]
struct SyncedEntries {
    top: BTreeSet<OsString>,
    blobs: BTreeSet<OsString>,
}

impl SledEngine {
    /// Opens (or creates) the database in `dir`. Damage is reported as
    /// [`EngineError::Corruption`], never papered over with an empty store.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, EngineError> {
        let created = !dir.exists();
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES);
        // sled asserts on some kinds of garbage instead of returning an
        // error: turn such a panic into a corruption report.
        let db =
            std::panic::catch_unwind(AssertUnwindSafe(|| config.open())).map_err(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_string());
                EngineError::Corruption(format!("sled panicked while opening: {what}"))
            })??;
        let tree = |ks: Keyspace| db.open_tree(ks.name());
        let trees = [
            tree(Keyspace::Log)?,
            tree(Keyspace::Meta)?,
            tree(Keyspace::Snapshot)?,
        ];
        let engine = SledEngine {
            dir: dir.to_path_buf(),
            data_file: File::open(dir.join("db"))?,
            db,
            trees,
            durability,
            synced: Mutex::new(SyncedEntries::default()),
        };
        if durability == Durability::Fsync {
            // sled writes `conf` once, at creation, and never syncs it.
            File::open(dir.join("conf"))?.sync_data()?;
            engine.sync_files()?;
            if created {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
        }
        Ok(engine)
    }

    /// The directory of the database.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tree(&self, ks: Keyspace) -> &sled::Tree {
        &self.trees[ks.position()]
    }

    /// fdatasync sled's data file, blobs not synced yet, and the
    /// directories whose entries changed.
    fn sync_files(&self) -> Result<(), EngineError> {
        self.data_file.sync_data()?;
        let mut synced = self
            .synced
            .lock()
            .map_err(|_| EngineError::Other("sync state poisoned".into()))?;
        // Blobs are written once and never changed: sync each new one.
        sync_new_entries(&self.dir.join("blobs"), &mut synced.blobs, true)?;
        // `db` and `conf` are synced above; sled syncs its `snap.*` files
        // itself but not the directory after renaming them.
        sync_new_entries(&self.dir, &mut synced.top, false)?;
        Ok(())
    }
}

/// Syncs `dir` if its entries differ from `known` (and, with `sync_files`,
/// each new file), then records the new listing.
fn sync_new_entries(
    dir: &Path,
    known: &mut BTreeSet<OsString>,
    sync_files: bool,
) -> io::Result<()> {
    let mut now = BTreeSet::new();
    let mut changed = false;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !known.contains(&name) {
            changed = true;
            if sync_files {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_data()?,
                    // sled removed an obsolete blob meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        now.insert(name);
    }
    if changed || now.len() != known.len() {
        sync_dir(dir)?;
        *known = now;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl KvEngine for SledEngine {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tree(ks).get(key)?.map(|v| v.to_vec()))
    }

    fn put(&self, ks: Keyspace, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.tree(ks).insert(key, value)?;
        Ok(())
    }

    fn write_batch(&self, ks: Keyspace, ops: Vec<WriteOp>) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                WriteOp::Put { key, value } => batch.insert(key, value),
                WriteOp::Delete { key } => batch.remove(key),
            }
        }
        self.tree(ks).apply_batch(batch)?;
        Ok(())
    }

    fn scan(&self, ks: Keyspace, range: KeyRange) -> Result<Vec<KeyValue>, EngineError> {
        self.tree(ks)
            .range(range)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, EngineError> {
        Ok(self.tree(ks).last()?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn flush_durable(&self) -> Result<(), EngineError> {
        // One flush covers every tree of the database.
        self.db.flush()?;
        if self.durability == Durability::Fsync {
            self.sync_files()?;
        }
        Ok(())
    }
}
