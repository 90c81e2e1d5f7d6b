//! Copies of logical replication slots, file by file.
//!
//! PostgreSQL 15 cannot create a logical slot on a standby, but it loads
//! whatever slots it finds in `pg_replslot` when it starts, in recovery
//! too, and `pg_replication_slot_advance` then moves them. So a replica
//! gets a logical slot by copying the primary's `pg_replslot/NAME/state`
//! and restarting once (see `cluster::slots`).
//!
//! A damaged state file makes PostgreSQL refuse to start (a checksum
//! mismatch is a PANIC), so a copy is checked — magic, length and CRC-32C,
//! as PostgreSQL checks it — before it is written, and it is written the
//! way PostgreSQL writes its own: into `NAME.tmp` (which PostgreSQL removes
//! at start if a crash left it), fsynced, then renamed.

use std::fs::File;
use std::path::Path;

use super::{PgError, Postgres, Upstream};
use crate::cluster::lsn::Lsn;

/// `SLOT_MAGIC` of `slot.c`.
const MAGIC: u32 = 0x1051CA1;
/// Magic and checksum come first and are not covered by the checksum.
const NOT_CHECKSUMMED: usize = 8;
/// Magic, checksum, version and length.
const CONSTANT: usize = 16;

/// What a state file says about its slot (offsets of PostgreSQL 15's
/// `ReplicationSlotPersistentData` after the 16-byte header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateInfo {
    /// `RS_PERSISTENT`: a slot being created is ephemeral, and PostgreSQL
    /// deletes ephemeral slots when it starts.
    pub persistent: bool,
    pub restart_lsn: Lsn,
    pub confirmed_flush: Lsn,
}

/// Why a state file is not one PostgreSQL would load; what it says if it is.
pub fn check_state(bytes: &[u8]) -> Result<StateInfo, String> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let (Some(magic), Some(checksum), Some(length)) = (word(0), word(4), word(12)) else {
        return Err(format!("{} bytes: too short", bytes.len()));
    };
    if magic != MAGIC {
        return Err(format!("magic {magic:#x}, not {MAGIC:#x}"));
    }
    if bytes.len() != CONSTANT + length as usize {
        return Err(format!(
            "{} bytes where the header says {}",
            bytes.len(),
            CONSTANT + length as usize
        ));
    }
    let computed = crc32c::crc32c(&bytes[NOT_CHECKSUMMED..]);
    if computed != checksum {
        return Err(format!("checksum {checksum:#x}, computed {computed:#x}"));
    }
    let lsn = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b| Lsn(u64::from_le_bytes(b)))
    };
    // persistency, restart_lsn, and (after invalidated_at) confirmed_flush.
    match (word(CONSTANT + 68), lsn(CONSTANT + 80), lsn(CONSTANT + 96)) {
        (Some(persistency), Some(restart_lsn), Some(confirmed_flush)) => Ok(StateInfo {
            persistent: persistency == 0,
            restart_lsn,
            confirmed_flush,
        }),
        _ => Err(format!("{} bytes: too short for a slot", bytes.len())),
    }
}

impl Postgres {
    /// Copy logical slot `name` from `up` into this (running, standby)
    /// server's data directory. It is loaded at the next start. Refuses to
    /// replace a slot directory that exists, to create `pg_replslot` (a
    /// data directory being cloned or wiped has none), and a state that is
    /// not safe here after all: the file is read after the plan looked, so
    /// it is checked again — a persistent slot (not one being created),
    /// needing no WAL from before `oldest_wal`, confirmed no further than
    /// `replayed`.
    pub async fn copy_slot(
        &self,
        up: &Upstream,
        name: &str,
        oldest_wal: Lsn,
        replayed: Lsn,
    ) -> Result<(), PgError> {
        let bytes = self.slot_state_on(up, name).await?;
        let refuse = |why: String| PgError::Failed {
            command: format!("copying replication slot {name} from {}", up.node),
            status: format!("its state file is not usable here yet: {why}"),
            hint: "it is tried again; see the upstream's PostgreSQL log".to_string(),
            tail: Default::default(),
        };
        let info = check_state(&bytes).map_err(refuse)?;
        if !info.persistent {
            return Err(refuse("the slot is still being created".to_string()));
        }
        if info.restart_lsn < oldest_wal || info.confirmed_flush > replayed {
            return Err(refuse(format!(
                "it needs WAL from {} and is confirmed up to {}; this replica holds WAL from {} and replayed {}",
                info.restart_lsn, info.confirmed_flush, oldest_wal, replayed
            )));
        }
        let dir = self.cfg.data_dir.join("pg_replslot");
        if !dir.is_dir() || !self.cfg.data_dir.join("PG_VERSION").is_file() {
            return Err(PgError::io(
                "copy a replication slot into",
                &dir,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let done = dir.join(name);
        if done.exists() {
            return Err(PgError::io(
                "copy a replication slot into",
                &done,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let tmp = dir.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| PgError::io("remove", &tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| PgError::io("create directory", &tmp, e))?;
        self.user.ensure_dir(&tmp, 0o700, true)?;
        self.user.write_atomic(&tmp.join("state"), &bytes, 0o600)?;
        std::fs::rename(&tmp, &done).map_err(|e| PgError::io("rename", &tmp, e))?;
        sync(&dir)?;
        tracing::info!(slot = name, from = %up.node, "copied a logical replication slot; it is loaded at the next restart");
        Ok(())
    }

    /// Remove a copied slot the server never loaded.
    pub fn discard_slot_copy(&self, name: &str) -> Result<(), PgError> {
        let dir = self.cfg.data_dir.join("pg_replslot");
        let path = dir.join(name);
        std::fs::remove_dir_all(&path).map_err(|e| PgError::io("remove", &path, e))?;
        sync(&dir)
    }

    /// Slot directories in `pg_replslot` that are not among `loaded`: copies
    /// waiting for a restart (a server loads every slot at start).
    pub fn unloaded_slots(&self, loaded: &[String]) -> Vec<String> {
        let dir = self.cfg.data_dir.join("pg_replslot");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("state").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.ends_with(".tmp") && !loaded.contains(n))
            .collect();
        names.sort();
        names
    }
}

fn sync(dir: &Path) -> Result<(), PgError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PgError::io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_replslot/cdc/state` of a PostgreSQL 15 server (a test_decoding
    /// slot).
    const STATE: &str = "a11c0501f3a99ecd02000000b800000063646300000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000050000000000000000000000d402000070fc0103000000000000000000000000a8fc010300000000000000000000000000746573745f6465636f64696e6700000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    fn bytes() -> Vec<u8> {
        (0..STATE.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&STATE[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn accepts_what_postgres_wrote_and_nothing_damaged() {
        assert_eq!(
            check_state(&bytes()),
            Ok(StateInfo {
                persistent: true,
                restart_lsn: "0/301FC70".parse().unwrap(),
                confirmed_flush: "0/301FCA8".parse().unwrap(),
            })
        );
        let mut flipped = bytes();
        flipped[40] ^= 1;
        assert!(check_state(&flipped).unwrap_err().contains("checksum"));
        assert!(check_state(&bytes()[..100])
            .unwrap_err()
            .contains("header says 200"));
        assert!(check_state(&[0; 3]).unwrap_err().contains("too short"));
        let mut magic = bytes();
        magic[0] = 0;
        assert!(check_state(&magic).unwrap_err().contains("magic"));
    }
}
