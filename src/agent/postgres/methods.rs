//! Operator programs that create a data directory: replica-creation
//! methods (a backup tool's restore, tried in order before or instead of
//! `pg_basebackup`) and a custom bootstrap (instead of `initdb`).
//!
//! Each runs as the PostgreSQL OS user, without a shell, in a process
//! group of its own, with a timeout, and learns its situation from the
//! environment ([`method_env`]). It must leave a PostgreSQL data
//! directory of the binaries' major version behind (PG_VERSION and a
//! readable `global/pg_control`; a clone also of the upstream's system).
//! Whatever fails — exit status, timeout, or what it left — the data
//! directory is emptied again: these programs only ever run on an empty
//! one, so nothing of value can be lost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::datadir::clear_dir;
use super::error::tail_of;
use super::process::{run, Cmd};
use super::{DataDirState, PgConfig, PgError, Postgres, Upstream};

/// The name of the built-in method (`pg_basebackup`) in
/// `postgresql.replica_methods`.
pub const BASEBACKUP: &str = "basebackup";

/// An operator's program and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCommand {
    /// Absolute path of the program (checked at start: it exists and is
    /// executable).
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

/// One way to create a replica's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaMethod {
    /// `pg_basebackup` from the upstream (the built-in `basebackup`).
    Basebackup,
    /// `[postgresql.replica_method.NAME]`.
    Command {
        name: String,
        command: ExternalCommand,
    },
}

impl ReplicaMethod {
    pub fn name(&self) -> &str {
        match self {
            ReplicaMethod::Basebackup => BASEBACKUP,
            ReplicaMethod::Command { name, .. } => name,
        }
    }
}

/// The environment an operator's program gets (on top of the agent's own,
/// less the `PG*` variables that would redirect it): what to create, for
/// whom, and — for a clone — the upstream, also as libpq's `PGHOST`,
/// `PGPORT`, `PGUSER` (the replication user) and `PGPASSWORD` (when a
/// replication password is configured), so that `pg_basebackup` or `psql`
/// in a script reach it without arguments.
pub fn method_env(
    cfg: &PgConfig,
    cluster: &str,
    method: &str,
    upstream: Option<&Upstream>,
) -> Vec<(String, String)> {
    let data_dir = cfg.data_dir.display().to_string();
    let mut env = vec![
        ("PGQUORUM_METHOD".to_string(), method.to_string()),
        ("PGQUORUM_CLUSTER".to_string(), cluster.to_string()),
        ("PGQUORUM_NODE".to_string(), cfg.node_name.clone()),
        ("PGQUORUM_DATA_DIR".to_string(), data_dir.clone()),
        ("PGDATA".to_string(), data_dir),
        (
            "PGQUORUM_PG_BIN_DIR".to_string(),
            cfg.bin_dir.display().to_string(),
        ),
        (
            "PGQUORUM_REPLICATION_USER".to_string(),
            cfg.replication_user.clone(),
        ),
    ];
    if let Some(up) = upstream {
        env.extend([
            ("PGQUORUM_UPSTREAM_NODE".to_string(), up.node.clone()),
            ("PGQUORUM_UPSTREAM_HOST".to_string(), up.host.clone()),
            ("PGQUORUM_UPSTREAM_PORT".to_string(), up.port.to_string()),
            ("PGHOST".to_string(), up.host.clone()),
            ("PGPORT".to_string(), up.port.to_string()),
            ("PGUSER".to_string(), cfg.replication_user.clone()),
        ]);
        if let Some(pw) = &cfg.replication_password {
            env.push(("PGPASSWORD".to_string(), pw.clone()));
        }
    }
    env
}

impl Postgres {
    /// Create this replica's data directory from `from`, trying `methods`
    /// in order until one succeeds; the name of the one that did. Refuses
    /// a non-empty directory without touching it; every failed method
    /// leaves it empty again for the next. After it, as after
    /// [`Postgres::basebackup`]: [`Postgres::write_config`] with the
    /// upstream, [`Postgres::set_standby`], start.
    pub async fn clone_replica(
        &self,
        methods: &[ReplicaMethod],
        from: &Upstream,
        cluster: &str,
        basebackup_timeout: Duration,
    ) -> Result<String, PgError> {
        let state = self.inspect().await;
        self.refuse_unless_empty(&state, "clone into")?;
        let mut failures: Vec<(String, PgError)> = Vec::new();
        for method in methods {
            if !failures.is_empty() {
                // The failed attempt emptied it; never run the next method
                // over anything it could not remove.
                let state = self.inspect().await;
                self.refuse_unless_empty(&state, "clone into")?;
                tracing::info!(method = method.name(), "trying the next replica method");
            }
            let result = match method {
                ReplicaMethod::Basebackup => self.basebackup(from, basebackup_timeout).await,
                ReplicaMethod::Command { name, command } => {
                    self.clone_with(name, command, from, cluster).await
                }
            };
            match result {
                Ok(()) => {
                    tracing::info!(method = method.name(), from = %from.node, "replica created");
                    return Ok(method.name().to_string());
                }
                Err(e) => {
                    tracing::warn!(method = method.name(), from = %from.node, error = %e, "replica method failed");
                    failures.push((method.name().to_string(), e));
                }
            }
        }
        if failures.len() == 1 {
            // One method (pg_basebackup by default): its own error.
            if let Some((_, e)) = failures.pop() {
                return Err(e);
            }
        }
        Err(PgError::CloneFailed {
            from: from.node.clone(),
            tried: failures
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            failures: failures
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// Create a new cluster's data directory with the operator's bootstrap
    /// command instead of initdb (a restore from a backup, say). Refuses a
    /// non-empty directory; a failure leaves it empty again. When it leaves
    /// `recovery.signal`, the server started on it runs archive recovery
    /// and promotes itself at its end ([`Postgres::await_writable`]).
    pub async fn bootstrap_with(
        &self,
        command: &ExternalCommand,
        cluster: &str,
    ) -> Result<(), PgError> {
        let state = self.inspect().await;
        self.refuse_unless_empty(&state, "bootstrap")?;
        self.user.ensure_dir(&self.cfg.data_dir, 0o700, true)?;
        let cmd = self
            .external(command, "bootstrap", None, cluster)
            .hint(format!(
                "the bootstrap command (postgresql.bootstrap) failed; the data directory {} was \
                 emptied again and the bootstrap is retried",
                self.cfg.data_dir.display()
            ));
        tracing::info!(command = %cmd.display(), data_dir = %self.cfg.data_dir.display(), "bootstrapping with the bootstrap command");
        let t0 = Instant::now();
        let result = match run(&self.user, &cmd).await {
            Ok(out) => self.check_created(&cmd, &out.all(), None).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.empty_again("bootstrap");
            return Err(e);
        }
        let restoring = self.data("recovery.signal").exists();
        tracing::info!(elapsed = ?t0.elapsed(), archive_recovery = restoring, "bootstrap command done");
        Ok(())
    }

    /// One replica method of the operator's.
    async fn clone_with(
        &self,
        name: &str,
        command: &ExternalCommand,
        from: &Upstream,
        cluster: &str,
    ) -> Result<(), PgError> {
        self.user.ensure_dir(&self.cfg.data_dir, 0o700, true)?;
        let cmd = self
            .external(command, name, Some(from), cluster)
            .hint(format!(
                "replica method {name:?} (postgresql.replica_method.{name}) could not create a \
                 copy of {}; the data directory was emptied again",
                from.node
            ));
        tracing::info!(method = name, from = %from.node, command = %cmd.display(), "cloning with a replica method");
        let t0 = Instant::now();
        let result = match run(&self.user, &cmd).await {
            Ok(out) => self.check_created(&cmd, &out.all(), Some(from)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.empty_again(name);
            return Err(e);
        }
        tracing::info!(method = name, elapsed = ?t0.elapsed(), "replica method done");
        Ok(())
    }

    fn external(
        &self,
        command: &ExternalCommand,
        method: &str,
        upstream: Option<&Upstream>,
        cluster: &str,
    ) -> Cmd {
        let mut cmd = Cmd::new(&command.program, command.timeout);
        for a in &command.args {
            cmd = cmd.arg(a);
        }
        for (k, v) in method_env(&self.cfg, cluster, method, upstream) {
            cmd = cmd.env(&k, &v);
        }
        // The operator's program gets the agent's locale, and its children
        // go with it when it fails.
        cmd.c_locale = false;
        cmd.own_group = true;
        cmd
    }

    /// What a program that exited 0 left must be a data directory of this
    /// PostgreSQL's major version (and, for a clone, of the upstream's
    /// system when the upstream says which).
    async fn check_created(
        &self,
        cmd: &Cmd,
        output: &str,
        from: Option<&Upstream>,
    ) -> Result<(), PgError> {
        let bad = |problem: String| PgError::BadResult {
            command: cmd.display(),
            problem,
            hint: format!(
                "it must leave a PostgreSQL data directory in {}; it was emptied again",
                self.cfg.data_dir.display()
            ),
            tail: tail_of(output, 15),
        };
        for needed in ["PG_VERSION", "global/pg_control"] {
            if !self.data(needed).is_file() {
                return Err(bad(format!("the data directory has no {needed}")));
            }
        }
        let system_identifier = match self.inspect().await {
            DataDirState::Valid {
                system_identifier, ..
            } => system_identifier,
            DataDirState::Empty => return Err(bad("the data directory is empty".to_string())),
            DataDirState::Foreign { reason } => return Err(bad(reason)),
        };
        let Some(up) = from else { return Ok(()) };
        match self.system_identifier_of(up).await {
            Ok(theirs) if theirs == system_identifier => Ok(()),
            Ok(theirs) => Err(bad(format!(
                "the copy is of database system {system_identifier}, and {} runs system {theirs} \
                 (a backup of another cluster?)",
                up.node
            ))),
            Err(e) => {
                // The superuser may not reach the upstream (pg_hba.conf);
                // the server then refuses to stream from a foreign system.
                tracing::warn!(upstream = %up.node, error = %e, "cannot compare the copy's system identifier with the upstream's");
                Ok(())
            }
        }
    }

    /// After a failed program: empty the data directory again.
    fn empty_again(&self, what: &str) {
        if let Err(e) = clear_dir(&self.cfg.data_dir) {
            tracing::error!(method = what, error = %e, "could not empty the data directory after a failed attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_situation() {
        let cfg = PgConfig {
            data_dir: "/var/lib/pg/data".into(),
            node_name: "n2".into(),
            replication_password: Some("s3cret".into()),
            ..PgConfig::default()
        };
        let up = Upstream {
            node: "n1".into(),
            host: "10.0.0.1".into(),
            port: 5433,
        };
        let env: std::collections::BTreeMap<String, String> =
            method_env(&cfg, "main", "pgbackrest", Some(&up))
                .into_iter()
                .collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("PGQUORUM_METHOD"), Some("pgbackrest"));
        assert_eq!(get("PGQUORUM_CLUSTER"), Some("main"));
        assert_eq!(get("PGQUORUM_NODE"), Some("n2"));
        assert_eq!(get("PGQUORUM_DATA_DIR"), Some("/var/lib/pg/data"));
        assert_eq!(get("PGDATA"), Some("/var/lib/pg/data"));
        assert_eq!(
            get("PGQUORUM_PG_BIN_DIR"),
            Some("/usr/lib/postgresql/15/bin")
        );
        assert_eq!(get("PGQUORUM_REPLICATION_USER"), Some("replicator"));
        assert_eq!(get("PGQUORUM_UPSTREAM_NODE"), Some("n1"));
        assert_eq!(get("PGQUORUM_UPSTREAM_HOST"), Some("10.0.0.1"));
        assert_eq!(get("PGQUORUM_UPSTREAM_PORT"), Some("5433"));
        assert_eq!(get("PGHOST"), Some("10.0.0.1"));
        assert_eq!(get("PGPORT"), Some("5433"));
        assert_eq!(get("PGUSER"), Some("replicator"));
        assert_eq!(get("PGPASSWORD"), Some("s3cret"));

        // A bootstrap has no upstream: nothing points libpq anywhere.
        let env = method_env(&cfg, "main", "bootstrap", None);
        for k in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGQUORUM_UPSTREAM_NODE",
        ] {
            assert!(env.iter().all(|(name, _)| name != k), "{k} set: {env:?}");
        }
    }
}
