//! The agent's PostgreSQL driver: everything that touches the local server.
//!
//! The server itself runs as the keeper's child ([`crate::keeper`]); other
//! programs (initdb, pg_ctl, `postgres --single`, pg_basebackup,
//! pg_rewind, pg_controldata) run as the PostgreSQL OS user with a timeout;
//! SQL goes over tokio-postgres through the local unix socket. Nothing here
//! decides anything: the agent's executor calls these steps in the order the
//! manager's command needs, and reports [`PgStatus`] / [`DataDirState`].
//!
//! Every step is idempotent where PostgreSQL allows it (stopping a stopped
//! server, promoting a primary, fencing nothing) so that replayed commands
//! do no harm.
//!
//! Typical sequences (the executor's job; each step is one call here):
//!
//! * bootstrap: `initdb` → `write_config(s, None)` → `start` →
//!   `ensure_replication_role`.
//! * bootstrap from a backup: `bootstrap_with(cmd)` instead of `initdb`,
//!   then as above; `await_writable` before `ensure_replication_role`
//!   (a restore that left `recovery.signal` ends archive recovery first).
//! * clone: `clone_replica(methods, up)` (the operator's methods in order,
//!   `pg_basebackup` by default) → `write_config(s, Some(up))` →
//!   `set_standby(true)` → `start`.
//! * rejoin an old primary: `fence`/`stop` → `rewind(up)` (runs crash
//!   recovery and a CHECKPOINT on `up` itself) → `write_config(s, Some(up))`
//!   → `set_standby(true)` → `start`; reclone (`wipe` + clone) if it fails.
//! * promote: `promote` → `write_config(s, None)` → `set_standby(false)`
//!   → `reload`.
//!
//! A postmaster SIGKILLed by a fence is a zombie until its keeper reaps it
//! (at most 100 ms); [`Postgres::start`] clears stale lock files meanwhile.

mod conf;
mod datadir;
mod error;
mod methods;
mod process;
mod server;
mod slot_files;
mod sql;

use std::path::{Path, PathBuf};

pub use crate::cluster::wire::{
    DataDirState, ManagedSettings, PgStatus, ReplicaConnection, Upstream, WalReceiver,
};
pub use error::{PgError, Tail};
pub use methods::{method_env, ExternalCommand, ReplicaMethod, BASEBACKUP};
pub use process::OsUser;
pub use sql::{Look, SlotView};

use process::{run, Cmd};

/// Programs the driver needs from the PostgreSQL bin directory.
pub const REQUIRED_PROGRAMS: [&str; 6] = [
    "postgres",
    "pg_ctl",
    "initdb",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// How to reach and run the local PostgreSQL server; plain data filled from
/// the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Directory of the PostgreSQL programs (see [`find_bin_dir`]).
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// What PostgreSQL binds (`listen_addresses`), e.g. `127.0.0.1` or `*`.
    pub listen_addresses: String,
    pub port: u16,
    /// `unix_socket_directories`; the agent connects through it.
    pub socket_dir: PathBuf,
    /// Run PostgreSQL programs as this user when the agent is root
    /// (default `postgres`).
    pub os_user: Option<String>,
    /// Database superuser the agent connects as.
    pub superuser: String,
    pub superuser_password: Option<String>,
    /// Role replicas stream with (created by [`Postgres::ensure_replication_role`]).
    pub replication_user: String,
    pub replication_password: Option<String>,
    /// `application_name` in `primary_conninfo`: synchronous standby names
    /// match it, and the primary lists replicas by it.
    pub node_name: String,
    /// pg_hba.conf lines; the agent supplies defaults. They go first, so
    /// they win over whatever else the file holds.
    pub hba: Vec<String>,
    /// WAL archive: when set, `archive_command` copies WAL there and
    /// `restore_command` brings it back, so a replica can catch up past
    /// `wal_keep_size`.
    pub archive_dir: Option<PathBuf>,
    /// Server log (`pg_ctl -l`); its tail goes into start errors.
    pub log_file: PathBuf,
    /// Extra initdb arguments, e.g. `--encoding=UTF8 --locale=C.UTF-8`
    /// (initdb otherwise takes the locale from the agent's environment).
    pub initdb_options: Vec<String>,
    /// The keeper's directory (the agent's state directory): the server
    /// runs as the keeper's child (see [`crate::keeper`]).
    pub keeper_dir: PathBuf,
    /// The pgquorum program that runs a keeper when none runs yet; `None`
    /// when the keeper is a service of its own and is never started here.
    pub keeper_binary: Option<PathBuf>,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            data_dir: PathBuf::new(),
            listen_addresses: "127.0.0.1".to_string(),
            port: 5432,
            socket_dir: PathBuf::from("/var/run/postgresql"),
            os_user: None,
            superuser: "postgres".to_string(),
            superuser_password: None,
            replication_user: "replicator".to_string(),
            replication_password: None,
            node_name: String::new(),
            hba: Vec::new(),
            archive_dir: None,
            log_file: PathBuf::new(),
            initdb_options: Vec::new(),
            keeper_dir: PathBuf::new(),
            keeper_binary: Some(PathBuf::from("/proc/self/exe")),
        }
    }
}

/// How [`Postgres::stop`] shuts the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back sessions, write a shutdown checkpoint: clean shutdown, the
    /// replicas receive every byte of WAL.
    Fast,
    /// Cut everything now, no checkpoint: the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }

    /// The postmaster's signal for this shutdown mode.
    fn signal(self) -> nix::sys::signal::Signal {
        match self {
            StopMode::Fast => nix::sys::signal::Signal::SIGINT,
            StopMode::Immediate => nix::sys::signal::Signal::SIGQUIT,
        }
    }
}

/// What [`Postgres::rewind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindOutcome {
    /// Blocks and files were copied from the source: the configuration files
    /// are now the source's, rewrite them before starting.
    Rewound,
    /// The target had not diverged ("no rewind required"); nothing changed.
    NotNeeded,
}

/// Where the PostgreSQL programs are: `explicit` when given (it must hold
/// every program in [`REQUIRED_PROGRAMS`]); else `pg_config --bindir` when
/// pg_config is on PATH and that directory is complete; else the highest
/// `/usr/lib/postgresql/<major>/bin` (Debian's layout, no pg_ctl on PATH).
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, PgError> {
    if let Some(dir) = explicit {
        check_bin_dir(dir)?;
        return Ok(dir.to_path_buf());
    }
    let mut tried = Vec::new();
    if let Some(dir) = pg_config_bindir() {
        match check_bin_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => tried.push(format!("pg_config --bindir: {e}")),
        }
    } else {
        tried.push("pg_config (not on PATH)".to_string());
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    candidates.sort();
    for (_, dir) in candidates.into_iter().rev() {
        if check_bin_dir(&dir).is_ok() {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    if tried.len() == 1 {
        tried.push("/usr/lib/postgresql/*/bin (none)".to_string());
    }
    Err(PgError::NoBinDir {
        tried: tried.join("; "),
    })
}

fn check_bin_dir(dir: &Path) -> Result<(), PgError> {
    for program in REQUIRED_PROGRAMS {
        if !dir.join(program).is_file() {
            return Err(PgError::MissingProgram {
                dir: dir.to_path_buf(),
                program,
            });
        }
    }
    Ok(())
}

/// `pg_config --bindir`, when pg_config is on PATH and answers.
fn pg_config_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let pg_config = std::env::split_paths(&path)
        .map(|d| d.join("pg_config"))
        .find(|p| p.is_file())?;
    // pg_config only prints build constants: it cannot hang, so a plain
    // blocking call is fine here.
    let out = std::process::Command::new(pg_config)
        .arg("--bindir")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The local PostgreSQL server: its configuration plus the OS user its
/// programs run as.
#[derive(Debug)]
pub struct Postgres {
    cfg: PgConfig,
    user: OsUser,
    /// The keeper: the server's parent, the lease's enforcer.
    keeper: crate::keeper::KeeperLink,
    /// Major version of the binaries, asked once.
    major: tokio::sync::OnceCell<u32>,
}

impl Postgres {
    /// Check the configuration and resolve the OS user (it must exist when
    /// the agent is root). Relative paths are made absolute, because the
    /// programs run with `/` as their working directory.
    pub fn new(mut cfg: PgConfig) -> Result<Self, PgError> {
        let user = OsUser::resolve(cfg.os_user.as_deref())?;
        for p in [
            &mut cfg.bin_dir,
            &mut cfg.data_dir,
            &mut cfg.socket_dir,
            &mut cfg.log_file,
            &mut cfg.keeper_dir,
        ] {
            if p.as_os_str().is_empty() {
                return Err(PgError::InvalidConfig(
                    "bin_dir, data_dir, socket_dir, log_file and keeper_dir must all be set"
                        .to_string(),
                ));
            }
            *p = std::path::absolute(&*p).map_err(|e| PgError::io("resolve", p.clone(), e))?;
        }
        if let Some(a) = cfg.archive_dir.as_mut() {
            *a = std::path::absolute(&*a).map_err(|e| PgError::io("resolve", a.clone(), e))?;
        }
        if cfg.node_name.is_empty() {
            return Err(PgError::InvalidConfig(
                "node_name must be set: it is the replica's application_name".to_string(),
            ));
        }
        let keeper = crate::keeper::KeeperLink::new(
            &cfg.keeper_dir,
            &cfg.data_dir,
            cfg.keeper_binary.as_deref(),
        )
        .with_gate(crate::keeper::gate::GateSpec {
            socket_dir: cfg.socket_dir.clone(),
            port: cfg.port,
            user: cfg.superuser.clone(),
            password: cfg.superuser_password.clone(),
            os_uid: user.switch.then_some(user.uid),
        });
        Ok(Postgres {
            keeper,
            cfg,
            user,
            major: tokio::sync::OnceCell::new(),
        })
    }

    /// The configuration (with absolute paths).
    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

    /// The OS user PostgreSQL programs run as.
    pub fn os_user(&self) -> &OsUser {
        &self.user
    }

    /// The link to this server's keeper.
    pub fn keeper(&self) -> &crate::keeper::KeeperLink {
        &self.keeper
    }

    fn bin(&self, program: &str) -> PathBuf {
        self.cfg.bin_dir.join(program)
    }

    fn data(&self, file: &str) -> PathBuf {
        self.cfg.data_dir.join(file)
    }

    /// Major version of the binaries (`postgres --version`).
    async fn binary_major(&self) -> Result<u32, PgError> {
        self.major
            .get_or_try_init(|| async {
                let cmd = Cmd::new(self.bin("postgres"), std::time::Duration::from_secs(10))
                    .arg("--version")
                    .hint("check that bin_dir holds a working PostgreSQL installation");
                let out = run(&self.user, &cmd).await?;
                parse_major(&out.stdout).ok_or_else(|| PgError::Failed {
                    command: cmd.display(),
                    status: "unexpected output".to_string(),
                    hint: "expected `postgres (PostgreSQL) 15.x`".to_string(),
                    tail: Tail(out.stdout.clone()),
                })
            })
            .await
            .copied()
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian …)` → 15.
fn parse_major(version: &str) -> Option<u32> {
    let rest = version.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_major() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 16beta1"), Some(16));
        assert_eq!(parse_major("nonsense"), None);
    }
}
