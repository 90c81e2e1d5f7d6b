//! Server lifecycle: initdb, start/stop/restart/reload, fence, crash
//! recovery, cloning and rewinding.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::datadir::clear_dir;
use super::error::{tail_of, Tail};
use super::process::{program_env, run, Cmd};
use super::sql::Target;
use super::{DataDirState, PgError, Postgres, RewindOutcome, StopMode, Upstream};
use crate::keeper::StartSpec;
use crate::process::{Fenced, FENCE_KILL_WAIT};

/// How often start() looks whether the server is ready.
const READY_POLL: Duration = Duration::from_millis(10);
/// How often stop() looks whether the server is gone.
const STOP_POLL: Duration = Duration::from_millis(5);

/// One line about a data directory state, for refusals.
fn describe(state: &DataDirState) -> String {
    match state {
        DataDirState::Empty => "it is empty".to_string(),
        DataDirState::Valid {
            system_identifier,
            timeline,
            ..
        } => format!(
            "it holds a PostgreSQL data directory (system {system_identifier}, timeline {timeline})"
        ),
        DataDirState::Foreign { reason } => format!("it holds something else ({reason})"),
    }
}

impl Postgres {
    /// The last lines of the server log.
    fn log_tail(&self) -> Tail {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.cfg.log_file) else {
            return Tail::default();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        tail_of(&String::from_utf8_lossy(&buf), 15)
    }

    /// Replace a pg_ctl error's output with the server log's tail, which
    /// says why the server did not start or stop.
    fn with_log(&self, e: PgError) -> PgError {
        let state = match self.postmaster_pid() {
            Some(pid) => format!("the server is still running as pid {pid}"),
            None => "the server is not running".to_string(),
        };
        let log = self.cfg.log_file.display();
        match e {
            PgError::Failed {
                command,
                status,
                hint,
                ..
            } => PgError::Failed {
                command,
                status,
                hint: format!("{hint}; {state}; server log {log}"),
                tail: self.log_tail(),
            },
            PgError::Timeout {
                command,
                timeout,
                hint,
                ..
            } => PgError::Timeout {
                command,
                timeout,
                hint: format!("{hint}; {state}; server log {log}"),
                tail: self.log_tail(),
            },
            other => other,
        }
    }

    /// Socket directory and log file, owned by the OS user.
    fn prepare_runtime(&self) -> Result<(), PgError> {
        self.user.ensure_dir(&self.cfg.socket_dir, 0o755, false)?;
        self.user.ensure_file(&self.cfg.log_file, 0o600)
    }

    pub(super) fn refuse_unless_empty(
        &self,
        state: &DataDirState,
        action: &'static str,
    ) -> Result<(), PgError> {
        if *state == DataDirState::Empty {
            return Ok(());
        }
        Err(PgError::Refused {
            action,
            path: self.cfg.data_dir.clone(),
            reason: describe(state),
            hint: "this needs an empty data directory; wipe it (reinit) first if its data may go",
        })
    }

    /// Create a new cluster with data checksums (pg_rewind needs them or
    /// wal_log_hints) and `superuser` as bootstrap superuser. initdb's own
    /// pg_hba.conf lines get `peer` / `scram-sha-256`, never `trust`: what
    /// the agent needs comes from [`super::PgConfig::hba`], placed above
    /// them by [`Postgres::write_config`]. Refuses a non-empty directory; a
    /// failed initdb leaves it empty again.
    pub async fn initdb(&self) -> Result<(), PgError> {
        let state = self.inspect().await;
        self.refuse_unless_empty(&state, "initdb")?;
        self.user.ensure_dir(&self.cfg.data_dir, 0o700, true)?;
        let mut cmd = Cmd::new(self.bin("initdb"), Duration::from_secs(300))
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-U")
            .arg(&self.cfg.superuser)
            .arg("--data-checksums")
            .arg("--auth-local=peer")
            .arg("--auth-host=scram-sha-256")
            .hint("initdb could not create the cluster; the data directory was emptied again");
        cmd.c_locale = false;
        // The password file must be readable by the OS user; it lives only
        // for the duration of initdb.
        let pwfile = match &self.cfg.superuser_password {
            Some(pw) => {
                let f = tempfile::Builder::new()
                    .prefix("pgquorum-initdb-pw")
                    .tempfile()
                    .map_err(|e| {
                        PgError::io("create a password file in", std::env::temp_dir(), e)
                    })?;
                std::fs::write(f.path(), pw).map_err(|e| PgError::io("write", f.path(), e))?;
                self.user.chown(f.path())?;
                Some(f)
            }
            None => None,
        };
        if let Some(f) = &pwfile {
            let mut arg = std::ffi::OsString::from("--pwfile=");
            arg.push(f.path());
            cmd = cmd.arg(arg);
        }
        for o in &self.cfg.initdb_options {
            cmd = cmd.arg(o);
        }
        tracing::info!(data_dir = %self.cfg.data_dir.display(), "initdb");
        if let Err(e) = run(&self.user, &cmd).await {
            let _ = clear_dir(&self.cfg.data_dir);
            return Err(e);
        }
        Ok(())
    }

    /// Start the server as the keeper's child (`postgres -D DATA`, see
    /// [`crate::keeper`]) and wait until it accepts connections (a
    /// standby: once consistent). No-op when running. The keeper refuses
    /// while the node's lease has run out. On failure the error shows the
    /// log's tail; after a timeout the server may still be running (e.g. a
    /// long recovery): the error says so.
    pub async fn start(&self, timeout: Duration) -> Result<(), PgError> {
        if let Some(pid) = self.postmaster_pid() {
            tracing::debug!(pid, "start: already running");
            return Ok(());
        }
        if !self.data("PG_VERSION").is_file() {
            return Err(PgError::Refused {
                action: "start a server on",
                path: self.cfg.data_dir.clone(),
                reason: "it is not a PostgreSQL data directory".to_string(),
                hint: "initialise or clone it first",
            });
        }
        self.prepare_runtime()?;
        self.remove_stale_lock_files()?;
        let command = format!(
            "{} -D {}",
            self.bin("postgres").display(),
            self.cfg.data_dir.display()
        );
        let spec = StartSpec {
            program: self.bin("postgres"),
            args: vec![
                "-D".to_string(),
                self.cfg.data_dir.to_string_lossy().into_owned(),
            ],
            env: program_env(&self.user, true),
            uid: self.user.switch.then_some(self.user.uid),
            gid: self.user.switch.then_some(self.user.gid),
            log_file: self.cfg.log_file.clone(),
            cwd: self.cfg.data_dir.clone(),
        };
        let t0 = Instant::now();
        let pid = self.keeper.start(spec).await.map_err(|e| PgError::Failed {
            command: command.clone(),
            status: "not started".to_string(),
            hint: e.to_string(),
            tail: Tail::default(),
        })?;
        loop {
            match self.pid_file_status(pid) {
                Some("ready") | Some("standby") => break,
                _ if !crate::process::alive(pid) => {
                    return Err(self.with_log(PgError::Failed {
                        command,
                        status: "exited during start".to_string(),
                        hint: "PostgreSQL did not start".to_string(),
                        tail: Tail::default(),
                    }));
                }
                _ if t0.elapsed() >= timeout => {
                    return Err(self.with_log(PgError::Timeout {
                        command,
                        timeout,
                        hint: "PostgreSQL did not become ready in time".to_string(),
                        tail: Tail::default(),
                    }));
                }
                _ => tokio::time::sleep(READY_POLL).await,
            }
        }
        tracing::info!(elapsed = ?t0.elapsed(), pid, "PostgreSQL started");
        Ok(())
    }

    /// The status line of `postmaster.pid` (`starting`, `ready`, `standby`,
    /// `stopping`) while it names `pid`.
    fn pid_file_status(&self, pid: i32) -> Option<&'static str> {
        let text = std::fs::read_to_string(self.data("postmaster.pid")).ok()?;
        let mut lines = text.lines();
        if lines.next()?.trim().parse::<i32>().ok()? != pid {
            return None;
        }
        // Line 8 (LOCK_FILE_LINE_PM_STATUS) is written once the server runs.
        match lines.nth(6)?.trim() {
            "ready" => Some("ready"),
            "standby" => Some("standby"),
            "starting" => Some("starting"),
            "stopping" => Some("stopping"),
            _ => None,
        }
    }

    /// Stop the server (fast or immediate shutdown) and wait until it is
    /// gone. No-op when it is not running. Fails when it does not stop in time (fence then).
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        let Some(pid) = self.postmaster_pid() else {
            tracing::debug!("stop: not running");
            return Ok(());
        };
        // What `pg_ctl stop -m MODE -w` does, without its 100 ms polls: the
        // signal for the mode, then wait until the postmaster is gone. Every
        // stop of a switchover or restart is a write outage; a poll quantum
        // would add ~50 ms to it. Gone means exited, not only its
        // postmaster.pid removed: that happens a moment before the exit, and
        // a start right then was refused by the keeper ("already runs").
        // (A zombie has exited: the keeper reaps it before a start.)
        let t0 = Instant::now();
        match kill(Pid::from_raw(pid), mode.signal()) {
            // It went away on its own meanwhile.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                return Err(PgError::io(
                    "signal the postmaster to stop, of",
                    &self.cfg.data_dir,
                    e.into(),
                ))
            }
            Ok(()) => {}
        }
        while self.postmaster_pid() == Some(pid) || crate::process::alive(pid) {
            if t0.elapsed() >= timeout {
                return Err(self.with_log(PgError::Timeout {
                    command: format!("stop ({} mode, pid {pid})", mode.as_arg()),
                    timeout,
                    hint: "PostgreSQL did not stop; fence it if it must stop now".to_string(),
                    tail: Tail::default(),
                }));
            }
            tokio::time::sleep(STOP_POLL).await;
        }
        tracing::info!(mode = mode.as_arg(), elapsed = ?t0.elapsed(), "PostgreSQL stopped");
        Ok(())
    }

    /// Fast stop, then start: applies restart-only parameters.
    pub async fn restart(&self, timeout: Duration) -> Result<(), PgError> {
        self.stop(StopMode::Fast, timeout).await?;
        self.start(timeout).await
    }

    /// Re-read the configuration files: SIGHUP straight to the postmaster
    /// (what `pg_ctl reload` does, without spawning it).
    pub async fn reload(&self) -> Result<(), PgError> {
        let Some(pid) = self.postmaster_pid() else {
            return Err(PgError::Refused {
                action: "reload the server of",
                path: self.cfg.data_dir.clone(),
                reason: "no server is running".to_string(),
                hint: "start it instead",
            });
        };
        kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| {
            PgError::io(
                "signal (SIGHUP) the postmaster of",
                &self.cfg.data_dir,
                e.into(),
            )
        })?;
        tracing::info!(pid, "PostgreSQL reloaded");
        Ok(())
    }

    /// Stop accepting writes now, without spawning anything: the fence the
    /// keeper uses too ([`crate::process::fence`]: SIGSTOP, then SIGKILL,
    /// of the postmaster and its children at once). Returns when no
    /// PostgreSQL process of this data directory runs; the next start
    /// performs crash recovery.
    pub async fn fence(&self) -> Result<(), PgError> {
        let t0 = Instant::now();
        let postmaster = self.postmaster_pid();
        let Some(dir) = self.canonical_data_dir() else {
            tracing::debug!("fence: no data directory");
            return Ok(());
        };
        let outcome = tokio::task::spawn_blocking(move || {
            crate::process::fence(&dir, postmaster, FENCE_KILL_WAIT)
        })
        .await
        .map_err(|e| PgError::io("fence", &self.cfg.data_dir, std::io::Error::other(e)))?;
        match outcome {
            Ok(Fenced::Nothing) => {
                tracing::debug!("fence: nothing runs");
                Ok(())
            }
            Ok(Fenced::Killed) => {
                tracing::warn!(pid = ?postmaster, elapsed = ?t0.elapsed(), "fenced: killed");
                // Killed processes leave their lock file behind.
                self.remove_stale_lock_files()
            }
            Err(pids) => Err(PgError::FenceFailed {
                data_dir: self.cfg.data_dir.clone(),
                pids,
            }),
        }
    }

    /// Bring a crashed or fenced data directory to a clean shutdown, which
    /// pg_rewind requires. No-op when it is already clean.
    ///
    /// Without `standby.signal` this runs `postgres --single … template1`
    /// with stdin from /dev/null: crash recovery, then a shutdown
    /// checkpoint, then exit (it reads pgquorum.conf but opens no socket).
    /// With `standby.signal` single-user mode refuses to run ("standby mode
    /// is not supported by single-user servers"), and crash recovery without
    /// standby mode would append a shutdown checkpoint to WAL its upstream
    /// never wrote — so a standby is started as a standby instead and
    /// stopped fast ("shut down in recovery", also accepted by pg_rewind).
    pub async fn crash_recover(&self, timeout: Duration) -> Result<(), PgError> {
        let before = self.controldata().await?;
        if before.clean_shutdown() {
            tracing::debug!(state = %before.state, "crash_recover: already clean");
            return Ok(());
        }
        self.refuse_if_running("crash-recover")?;
        let t0 = Instant::now();
        if self.data("standby.signal").exists() {
            tracing::info!(state = %before.state, "crash recovery of a standby: start and stop it");
            self.start(timeout).await?;
            self.stop(StopMode::Fast, timeout).await?;
        } else {
            tracing::info!(state = %before.state, "crash recovery in single-user mode");
            self.prepare_runtime()?;
            self.remove_stale_lock_files()?;
            let cmd = Cmd::new(self.bin("postgres"), timeout)
                .arg("--single")
                .arg("-D")
                .arg(&self.cfg.data_dir)
                .arg("template1")
                .hint("crash recovery failed; if the WAL is damaged, reinit this node");
            run(&self.user, &cmd).await?;
        }
        let after = self.controldata().await?;
        if !after.clean_shutdown() {
            return Err(PgError::Failed {
                command: "crash recovery".to_string(),
                status: format!("cluster state is still \"{}\"", after.state),
                hint: "reinit this node".to_string(),
                tail: self.log_tail(),
            });
        }
        tracing::info!(elapsed = ?t0.elapsed(), state = %after.state, "crash recovery done");
        Ok(())
    }

    /// Clone `from` into the (empty) data directory with `pg_basebackup -X
    /// stream --checkpoint=fast` as the replication user. Refuses a
    /// non-empty directory without touching it; a failed clone leaves it
    /// empty. The copy carries the source's configuration files: call
    /// [`Postgres::write_config`] with the upstream and
    /// [`Postgres::set_standby`] before starting.
    pub async fn basebackup(&self, from: &Upstream, timeout: Duration) -> Result<(), PgError> {
        let state = self.inspect().await;
        self.refuse_unless_empty(&state, "clone into")?;
        self.user.ensure_dir(&self.cfg.data_dir, 0o700, true)?;
        let mut cmd = Cmd::new(self.bin("pg_basebackup"), timeout)
            .arg("-h")
            .arg(&from.host)
            .arg("-p")
            .arg(from.port.to_string())
            .arg("-U")
            .arg(&self.cfg.replication_user)
            .arg("-D")
            .arg(&self.cfg.data_dir)
            .arg("-X")
            .arg("stream")
            .arg("--checkpoint=fast")
            .arg("--no-password")
            .env("PGCONNECT_TIMEOUT", "5")
            .hint(format!(
                "could not clone from {} ({}:{}); check that it runs, that pg_hba.conf lets `{}` \
                 connect for replication, and the password; the data directory was emptied again",
                from.node, from.host, from.port, self.cfg.replication_user
            ));
        if let Some(pw) = &self.cfg.replication_password {
            cmd = cmd.env("PGPASSWORD", pw);
        }
        tracing::info!(from = %from.node, host = %from.host, port = from.port, "cloning with pg_basebackup");
        let t0 = Instant::now();
        if let Err(e) = run(&self.user, &cmd).await {
            if let Err(ce) = clear_dir(&self.cfg.data_dir) {
                tracing::error!(error = %ce, "could not empty the data directory after a failed clone");
            }
            return Err(e);
        }
        tracing::info!(elapsed = ?t0.elapsed(), "clone done");
        Ok(())
    }

    /// Make this stopped data directory a copy of `from` from the point
    /// where their timelines diverged (pg_rewind, connecting as the
    /// superuser). Runs [`Postgres::crash_recover`] first when the last
    /// shutdown was not clean, and `CHECKPOINT` on the source first: a
    /// freshly promoted PostgreSQL 15 primary shows its new timeline in its
    /// control file only after a checkpoint, and pg_rewind reads it from
    /// there — without it the rewind "succeeds" and the node cannot follow.
    ///
    /// After [`RewindOutcome::Rewound`] the configuration files are the
    /// source's (pg_rewind copies them) and the control file says "in
    /// archive recovery": call [`Postgres::write_config`] with the upstream
    /// and [`Postgres::set_standby`]`(true)`, then start.
    pub async fn rewind(
        &self,
        from: &Upstream,
        timeout: Duration,
    ) -> Result<RewindOutcome, PgError> {
        let t0 = Instant::now();
        self.refuse_if_running("rewind")?;
        self.crash_recover(timeout).await?;
        self.checkpoint_on(Target::Remote(from), timeout).await?;
        let source = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=5",
            super::conf::quote_conninfo(&from.host),
            from.port,
            super::conf::quote_conninfo(&self.cfg.superuser),
        );
        let mut target = std::ffi::OsString::from("--target-pgdata=");
        target.push(&self.cfg.data_dir);
        let mut cmd = Cmd::new(self.bin("pg_rewind"), timeout)
            .arg(target)
            .arg(format!("--source-server={source}"))
            .hint(format!(
                "could not rewind from {} ({}:{}); when the timelines cannot be reconciled or WAL is \
                 missing — and after any rewind that failed halfway, which leaves the data \
                 directory unusable — reinit (clone) this node",
                from.node, from.host, from.port
            ));
        if self.cfg.archive_dir.is_some() {
            // Fetch WAL the target no longer has from the archive.
            cmd = cmd.arg("--restore-target-wal");
        }
        if let Some(pw) = &self.cfg.superuser_password {
            cmd = cmd.env("PGPASSWORD", pw);
        }
        tracing::info!(from = %from.node, "rewinding with pg_rewind");
        let out = run(&self.user, &cmd).await?;
        let outcome = if out.all().contains("no rewind required") {
            RewindOutcome::NotNeeded
        } else {
            RewindOutcome::Rewound
        };
        tracing::info!(?outcome, elapsed = ?t0.elapsed(), "rewind done");
        Ok(outcome)
    }
}
