//! The data directory at rest: what is in it, which processes use it, and
//! the signal files the driver owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{run, Cmd};
use super::{DataDirState, PgError, Postgres};
use crate::cluster::lsn::Lsn;

/// What `pg_controldata` says about a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlData {
    pub system_identifier: u64,
    /// "Database cluster state", e.g. `shut down`, `in production`.
    pub state: String,
    pub checkpoint_lsn: Lsn,
    pub timeline: u32,
}

impl ControlData {
    /// pg_rewind accepts exactly these two states.
    pub fn clean_shutdown(&self) -> bool {
        self.state == "shut down" || self.state == "shut down in recovery"
    }
}

/// Parse `pg_controldata` output (run with `LC_ALL=C`: labels are translated).
pub(crate) fn parse_controldata(text: &str) -> Result<ControlData, String> {
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label)?.trim_start().strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("pg_controldata printed no \"{label}\""))
    };
    let system_identifier = field("Database system identifier")?
        .parse()
        .map_err(|e| format!("bad system identifier: {e}"))?;
    let state = field("Database cluster state")?.to_string();
    let checkpoint_lsn = field("Latest checkpoint location")?
        .parse()
        .map_err(|e| format!("bad checkpoint location: {e}"))?;
    let timeline = field("Latest checkpoint's TimeLineID")?
        .parse()
        .map_err(|e| format!("bad checkpoint timeline: {e}"))?;
    Ok(ControlData {
        system_identifier,
        state,
        checkpoint_lsn,
        timeline,
    })
}

use crate::process::{cwd_and_exe, is_postgres_exe};

/// The PID on the first line of a PostgreSQL lock file (a single-user
/// server writes it negated).
fn lock_file_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()
        .map(i32::abs)
}

fn has_proc() -> bool {
    Path::new("/proc/self/cwd").exists()
}

impl Postgres {
    /// The data directory with symlinks resolved, as `/proc/*/cwd` shows it.
    pub(crate) fn canonical_data_dir(&self) -> Option<PathBuf> {
        std::fs::canonicalize(&self.cfg.data_dir).ok()
    }

    /// PID of the postmaster from `postmaster.pid`, only if that process is
    /// alive and really serves this data directory: every PostgreSQL
    /// process has the data directory as its working directory, which
    /// protects against a stale file whose PID was reused (fence must
    /// never kill a stranger). Zombies count as gone.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data("postmaster.pid")).ok()?;
        // A single-user backend writes its PID negated.
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        if pid <= 0 {
            return None;
        }
        if has_proc() {
            let dir = self.canonical_data_dir()?;
            let (cwd, exe) = cwd_and_exe(pid)?;
            (cwd == dir && is_postgres_exe(&exe)).then_some(pid)
        } else {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .is_ok()
                .then_some(pid)
        }
    }

    /// Every live PostgreSQL process of this data directory (postmaster,
    /// backends, a single-user server, orphans of a killed postmaster).
    pub fn running_pids(&self) -> Vec<i32> {
        if !has_proc() {
            return self.postmaster_pid().into_iter().collect();
        }
        crate::process::postgres_processes(&self.cfg.data_dir)
    }

    /// What is in the data directory, read without a running server:
    /// `Empty` when missing or empty; `Valid` from `pg_controldata`;
    /// `Foreign` for anything the agent must not touch (no PG_VERSION,
    /// another major version than the binaries, unreadable control data).
    /// `timeline` is the latest checkpoint's, so a standby reports the
    /// timeline of its latest restartpoint.
    pub async fn inspect(&self) -> DataDirState {
        let dir = &self.cfg.data_dir;
        match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DataDirState::Empty,
            Err(e) => {
                return DataDirState::Foreign {
                    reason: format!("cannot read {}: {e}", dir.display()),
                }
            }
            Ok(mut entries) => {
                if entries.next().is_none() {
                    return DataDirState::Empty;
                }
            }
        }
        let foreign = |reason: String| {
            tracing::warn!(data_dir = %dir.display(), %reason, "data directory is foreign");
            DataDirState::Foreign { reason }
        };
        let version = match std::fs::read_to_string(self.data("PG_VERSION")) {
            Ok(v) => v,
            Err(e) => {
                return foreign(format!(
                    "{} is not empty but has no readable PG_VERSION ({e}): not a PostgreSQL \
                     data directory",
                    dir.display()
                ))
            }
        };
        let Ok(major) = version.trim().parse::<u32>() else {
            return foreign(format!("PG_VERSION holds {:?}", version.trim()));
        };
        match self.binary_major().await {
            Ok(bin) if bin == major => {}
            Ok(bin) => {
                return foreign(format!(
                    "the data directory is PostgreSQL {major}, the binaries in {} are {bin}",
                    self.cfg.bin_dir.display()
                ))
            }
            Err(e) => return foreign(format!("cannot tell the binaries' version: {e}")),
        }
        match self.controldata().await {
            Ok(cd) => DataDirState::Valid {
                system_identifier: cd.system_identifier,
                timeline: cd.timeline,
                standby: self.data("standby.signal").exists(),
                clean_shutdown: cd.clean_shutdown(),
                checkpoint_lsn: cd.checkpoint_lsn,
            },
            Err(e) => foreign(format!("control data unreadable: {e}")),
        }
    }

    /// Run and parse `pg_controldata`.
    pub(crate) async fn controldata(&self) -> Result<ControlData, PgError> {
        let cmd = Cmd::new(self.bin("pg_controldata"), Duration::from_secs(10))
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .hint("the control file (global/pg_control) is missing or damaged");
        let out = run(&self.user, &cmd).await?;
        parse_controldata(&out.stdout).map_err(|reason| PgError::Failed {
            command: cmd.display(),
            status: "unexpected output".to_string(),
            hint: reason,
            tail: super::error::tail_of(&out.stdout, 10),
        })
    }

    /// Create (`true`) or remove `standby.signal`: with it the server starts
    /// as a standby following `primary_conninfo`.
    pub fn set_standby(&self, standby: bool) -> Result<(), PgError> {
        let path = self.data("standby.signal");
        if standby {
            if !self.data("PG_VERSION").exists() {
                return Err(PgError::Refused {
                    action: "create standby.signal in",
                    path: self.cfg.data_dir.clone(),
                    reason: "it is not a PostgreSQL data directory".to_string(),
                    hint: "clone or initialise it first",
                });
            }
            self.user.write_atomic(&path, b"", 0o600)
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(PgError::io("remove", path, e)),
            }
        }
    }

    /// Remove the lock files (`postmaster.pid` and the socket's
    /// `.s.PGSQL.<port>.lock`) once no process of this data directory runs
    /// any more (the postmaster is dead, a zombie, or still exiting). PostgreSQL
    /// removes stale lock files itself, but it tests liveness with
    /// kill(pid, 0), which succeeds on a zombie: a SIGKILLed postmaster
    /// that its new parent (init) has not reaped yet blocks the next start
    /// with "lock file … already exists".
    pub(crate) fn remove_stale_lock_files(&self) -> Result<(), PgError> {
        let pidfile = self.data("postmaster.pid");
        let Some(pid) = lock_file_pid(&pidfile) else {
            return Ok(());
        };
        // No process runs in this data directory (every PostgreSQL process
        // does): whatever `pid` is now — exiting, a zombie, or reused by an
        // unrelated program — it is not this directory's postmaster.
        if !has_proc() || !self.running_pids().is_empty() {
            return Ok(());
        }
        tracing::info!(pid, "removing the lock files of a dead postmaster");
        let socket_lock = self
            .cfg
            .socket_dir
            .join(format!(".s.PGSQL.{}.lock", self.cfg.port));
        let mut stale = vec![pidfile];
        if lock_file_pid(&socket_lock) == Some(pid) {
            stale.push(socket_lock);
        }
        for path in stale {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PgError::io("remove", path, e)),
            }
        }
        Ok(())
    }

    /// Refuse when any process of this data directory runs.
    pub(crate) fn refuse_if_running(&self, action: &'static str) -> Result<(), PgError> {
        let pids = self.running_pids();
        if pids.is_empty() {
            Ok(())
        } else {
            Err(PgError::Refused {
                action,
                path: self.cfg.data_dir.clone(),
                reason: format!("PostgreSQL processes {pids:?} are using it"),
                hint: "stop or fence the server first",
            })
        }
    }

    /// Remove the data directory's contents, keeping the directory itself
    /// (its owner and mode, maybe a mount point). Refuses while a server
    /// runs. Only for an explicit reinit: this destroys the node's data.
    pub async fn wipe(&self) -> Result<(), PgError> {
        self.refuse_if_running("wipe")?;
        let dir = self.cfg.data_dir.clone();
        tracing::warn!(data_dir = %dir.display(), "wiping the data directory");
        tokio::task::spawn_blocking(move || clear_dir(&dir))
            .await
            .map_err(|e| PgError::io("wipe", &self.cfg.data_dir, std::io::Error::other(e)))?
    }
}

/// Remove everything inside `dir` (symlinks themselves, not their targets).
pub(crate) fn clear_dir(dir: &Path) -> Result<(), PgError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PgError::io("read", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| PgError::io("read", dir, e))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| PgError::io("stat", &path, e))?
            .is_dir();
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| PgError::io("remove", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7312345678901234567
Database cluster state:               shut down in recovery
pg_control last modified:             Thu 27 Nov 2025 10:00:00 AM UTC
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's REDO WAL file:    000000020000000000000003
Latest checkpoint's TimeLineID:       2
Latest checkpoint's PrevTimeLineID:   1
";

    #[test]
    fn parses_controldata() {
        let cd = parse_controldata(SAMPLE).unwrap();
        assert_eq!(cd.system_identifier, 7312345678901234567);
        assert_eq!(cd.state, "shut down in recovery");
        assert!(cd.clean_shutdown());
        assert_eq!(cd.checkpoint_lsn, "0/3000060".parse().unwrap());
        assert_eq!(cd.timeline, 2);
        let e = parse_controldata("Database system identifier: 1\n").unwrap_err();
        assert!(e.contains("cluster state"), "{e}");
    }

    #[test]
    fn knows_its_own_state() {
        assert!(!crate::process::is_stopped(std::process::id() as i32));
    }
}
