//! SQL over tokio-postgres: status, promotion, checkpoints, roles.
//!
//! Local connections go through the unix socket as the superuser. Every
//! call is bounded by a `tokio::time::timeout` on top of libpq-style
//! connect and statement timeouts, so a frozen server (SIGSTOP, hung
//! storage) can never hang the agent.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{PgError, PgStatus, Postgres, ReplicaConnection, Upstream, WalReceiver};
use crate::cluster::lsn::Lsn;
use crate::cluster::settings::{ParamSpec, VarType};
use crate::cluster::slots::{LogicalState, Slot, SlotAction};

/// Bound of a whole status() call.
const STATUS_BUDGET: Duration = Duration::from_secs(2);
/// How often a promotion looks whether the server left recovery.
const PROMOTE_POLL: Duration = Duration::from_millis(5);

/// Which server to talk to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// This node's server, through the unix socket.
    Local,
    /// Another node's server over TCP (same superuser).
    Remote(&'a Upstream),
}

/// One round trip: the role decides which functions may be called
/// (`pg_current_wal_lsn()` fails during recovery), so each is guarded by
/// the role computed once in the sub-select.
const STATUS_SQL: &str = "\
SELECT r.rec,
  CASE WHEN r.rec THEN NULL ELSE pg_current_wal_lsn()::text END,
  CASE WHEN r.rec THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
  CASE WHEN r.rec THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  (SELECT timeline_id FROM pg_control_checkpoint())::text,
  (SELECT min_recovery_end_timeline FROM pg_control_recovery())::text,
  (SELECT system_identifier FROM pg_control_system())::text,
  current_setting('synchronous_standby_names'),
  EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart),
  w.status, w.sender_host, w.sender_port::text, w.received_tli::text,
  (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir()
    WHERE name ~ '^[0-9A-F]{8}[.]history$')::text
FROM (SELECT pg_is_in_recovery() AS rec OFFSET 0) r
LEFT JOIN pg_stat_wal_receiver w ON true;
SELECT application_name, state, flush_lsn::text, replay_lsn::text, sync_state
FROM pg_stat_replication ORDER BY application_name";

/// `server_version_num`, then one row per parameter (enum values joined
/// by a control character no value contains).
const CATALOG_SQL: &str = "\
SELECT current_setting('server_version_num');
SELECT name, vartype, unit, min_val, max_val, array_to_string(enumvals, chr(31)), context
FROM pg_settings";

/// One `pg_settings` row of [`CATALOG_SQL`].
fn param_spec(row: &tokio_postgres::SimpleQueryRow) -> Option<(String, ParamSpec)> {
    let vartype = match row.get(1)? {
        "bool" => VarType::Bool,
        "integer" => VarType::Integer,
        "real" => VarType::Real,
        "enum" => VarType::Enum,
        _ => VarType::String,
    };
    let number = |i: usize| row.get(i).and_then(|v| v.parse::<f64>().ok());
    // PostgreSQL matches names case-insensitively; pg_settings shows some
    // in mixed case (TimeZone, DateStyle).
    Some((
        row.get(0)?.to_ascii_lowercase(),
        ParamSpec {
            vartype,
            unit: row.get(2).map(str::to_string),
            min: number(3),
            max: number(4),
            enumvals: row
                .get(5)
                .map(|v| v.split('\u{1f}').map(str::to_string).collect())
                .unwrap_or_default(),
            context: row.get(6)?.to_string(),
        },
    ))
}

/// The first column of the first row of the first result set.
/// Rows of `slot_name, active, restart_lsn, lost, logical, database,
/// plugin, confirmed_flush_lsn`.
fn parse_slots(rows: &[tokio_postgres::SimpleQueryRow]) -> Vec<Slot> {
    rows.iter()
        .filter_map(|r| {
            let logical = (r.get(4) == Some("t")).then(|| LogicalState {
                database: r.get(5).unwrap_or_default().to_string(),
                plugin: r.get(6).unwrap_or_default().to_string(),
                confirmed_flush: r.get(7).and_then(|l| l.parse().ok()),
            });
            Some(Slot {
                name: r.get(0)?.to_string(),
                active: r.get(1) == Some("t"),
                restart_lsn: r.get(2).and_then(|l| l.parse().ok()),
                lost: r.get(3) == Some("t"),
                logical,
            })
        })
        .collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the slot keeper needs to know about the local server.
#[derive(Debug, Clone)]
pub struct SlotView {
    pub slots: Vec<Slot>,
    pub redo_lsn: Lsn,
    pub logical_wal: bool,
}

fn first_value(sets: &[Vec<tokio_postgres::SimpleQueryRow>]) -> Option<&str> {
    sets.first()?.first()?.get(0)
}

/// A SQL string literal (standard_conforming_strings is on since 9.1).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Rows of the result sets of a simple query, one Vec per statement.
fn result_sets(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<tokio_postgres::SimpleQueryRow>> {
    let mut sets = vec![Vec::new()];
    for m in messages {
        match m {
            SimpleQueryMessage::Row(r) => {
                if let Some(last) = sets.last_mut() {
                    last.push(r);
                }
            }
            SimpleQueryMessage::CommandComplete(_) => sets.push(Vec::new()),
            _ => {}
        }
    }
    sets
}

fn lsn(v: Option<&str>) -> Result<Lsn, String> {
    match v {
        None => Ok(Lsn(0)),
        Some(s) => s.parse().map_err(|e| format!("{e}")),
    }
}

/// Build a [`PgStatus`] from the rows of [`STATUS_SQL`].
///
/// Timeline: a primary's is the one of the WAL file it inserts into
/// (`pg_walfile_name(pg_current_wal_lsn())`, first 8 hex digits) — right
/// after promotion, unlike `pg_control_checkpoint()`, which shows the new
/// timeline only after the next checkpoint. A standby's is the WAL
/// receiver's `received_tli` (what it streams, follows the upstream's
/// timeline switches), or the newest `NNNNNNNN.history` file in pg_wal when
/// the receiver is down (e.g. its primary just died), or the latest
/// restartpoint's / minimum-recovery-point timeline, whichever is highest.
fn parse_status(sets: &[Vec<tokio_postgres::SimpleQueryRow>]) -> Result<PgStatus, String> {
    let row = sets
        .first()
        .and_then(|s| s.first())
        .ok_or("the status query returned no row")?;
    let get = |i: usize| row.get(i).filter(|s| !s.is_empty());
    let num = |i: usize| get(i).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let in_recovery = get(0) == Some("t");
    let current = lsn(get(1))?;
    let flush = lsn(get(2))?;
    let received = lsn(get(4))?;
    let replay = lsn(get(5))?;
    let system_identifier = get(8)
        .and_then(|s| s.parse().ok())
        .ok_or("no system identifier")?;
    let wal_receiver = get(11).map(|status| WalReceiver {
        status: status.to_string(),
        sender_host: get(12).unwrap_or_default().to_string(),
        sender_port: get(13).and_then(|p| p.parse().ok()).unwrap_or(0),
    });
    // A standby whose receiver is down (its primary just died) must still
    // report the timeline it follows: the newest timeline history file it
    // received says so; restartpoint timelines lag behind.
    let timeline = if in_recovery {
        num(14).max(num(15)).max(num(6)).max(num(7))
    } else {
        get(3)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or("no WAL file name on a primary")?
    };
    let mut replicas = Vec::new();
    for r in sets.get(1).into_iter().flatten() {
        // The node's own keeper (the commit gate) is no replica.
        if r.get(0) == Some(crate::cluster::sync::GATE) {
            continue;
        }
        replicas.push(ReplicaConnection {
            application_name: r.get(0).unwrap_or_default().to_string(),
            state: r.get(1).unwrap_or_default().to_string(),
            flush_lsn: lsn(r.get(2))?,
            replay_lsn: lsn(r.get(3))?,
            sync_state: r.get(4).unwrap_or_default().to_string(),
        });
    }
    let (lsn, received_lsn, replay_lsn) = if in_recovery {
        // A receiver that (re)started reports the start of its first
        // segment until new WAL arrives, behind what was replayed already.
        let received = received.max(replay);
        (replay, received, replay)
    } else {
        (current, flush, current)
    };
    Ok(PgStatus {
        in_recovery,
        timeline,
        system_identifier,
        lsn,
        received_lsn,
        replay_lsn,
        wal_receiver,
        replicas,
        synchronous_standby_names: get(9).unwrap_or_default().to_string(),
        pending_restart: get(10) == Some("t"),
    })
}

/// What one look at the local server found.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    Answered(PgStatus),
    /// Down, starting, shutting down, refusing: it said so, or nobody
    /// listens.
    Unavailable,
    /// Nothing came back in time (frozen, or a hung kernel call).
    Silent,
}

impl Look {
    pub fn status(self) -> Option<PgStatus> {
        match self {
            Look::Answered(s) => Some(s),
            _ => None,
        }
    }
}

impl Postgres {
    fn target_name(&self, target: Target<'_>) -> String {
        match target {
            Target::Local => format!(
                "local PostgreSQL ({}/.s.PGSQL.{})",
                self.cfg.socket_dir.display(),
                self.cfg.port
            ),
            Target::Remote(up) => format!("{} ({}:{})", up.node, up.host, up.port),
        }
    }

    /// Connect as the superuser to database `postgres`. `statement_timeout`
    /// (None: unlimited) is set in the startup packet, so it costs no extra
    /// round trip.
    pub(crate) async fn connect(
        &self,
        target: Target<'_>,
        connect_timeout: Duration,
        statement_timeout: Option<Duration>,
    ) -> Result<Client, PgError> {
        self.connect_to(target, "postgres", connect_timeout, statement_timeout)
            .await
    }

    /// [`Postgres::connect`] to another database (a logical slot lives in one).
    pub(crate) async fn connect_to(
        &self,
        target: Target<'_>,
        database: &str,
        connect_timeout: Duration,
        statement_timeout: Option<Duration>,
    ) -> Result<Client, PgError> {
        let mut c = tokio_postgres::Config::new();
        match target {
            Target::Local => {
                c.host_path(&self.cfg.socket_dir).port(self.cfg.port);
            }
            Target::Remote(up) => {
                c.host(&up.host).port(up.port);
            }
        }
        c.user(&self.cfg.superuser)
            .dbname(database)
            .application_name("pgquorum-agent")
            .connect_timeout(connect_timeout)
            .options(format!(
                "-c statement_timeout={}",
                statement_timeout.map_or(0, |d| d.as_millis().max(1))
            ));
        if let Some(pw) = &self.cfg.superuser_password {
            c.password(pw);
        }
        let (client, connection) = c.connect(NoTls).await.map_err(|e| PgError::Sql {
            what: "connecting".to_string(),
            target: self.target_name(target),
            source: e,
            hint: "check that the server runs and pg_hba.conf admits the superuser",
        })?;
        // The connection task ends when the client is dropped; the bound
        // only guards against a server that stops reading.
        let limit =
            statement_timeout.unwrap_or(Duration::from_secs(3600)) + Duration::from_secs(10);
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(limit, connection).await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Run `query` (one or more statements) on `target` within `budget`.
    pub(crate) async fn query_on(
        &self,
        target: Target<'_>,
        what: &str,
        query: &str,
        budget: Duration,
    ) -> Result<Vec<Vec<tokio_postgres::SimpleQueryRow>>, PgError> {
        self.query_in(target, "postgres", what, query, budget).await
    }

    /// `query` on an open connection to `target`, its result sets.
    async fn run_on(
        &self,
        client: &Client,
        target: Target<'_>,
        what: &str,
        query: &str,
    ) -> Result<Vec<Vec<tokio_postgres::SimpleQueryRow>>, PgError> {
        client
            .simple_query(query)
            .await
            .map(result_sets)
            .map_err(|e| PgError::Sql {
                what: what.to_string(),
                target: self.target_name(target),
                source: e,
                hint: "see the PostgreSQL log",
            })
    }

    /// [`Postgres::query_on`] in `database`.
    pub(crate) async fn query_in(
        &self,
        target: Target<'_>,
        database: &str,
        what: &str,
        query: &str,
        budget: Duration,
    ) -> Result<Vec<Vec<tokio_postgres::SimpleQueryRow>>, PgError> {
        let work = async {
            let client = self
                .connect_to(
                    target,
                    database,
                    budget.min(Duration::from_secs(5)),
                    Some(budget),
                )
                .await?;
            self.run_on(&client, target, what, query).await
        };
        tokio::time::timeout(budget + Duration::from_secs(1), work)
            .await
            .map_err(|_| PgError::SqlTimeout {
                what: what.to_string(),
                target: self.target_name(target),
                timeout: budget,
            })?
    }

    /// The running server's state, or `None` when it does not answer within
    /// about 2 s (down, starting, frozen). See [`Postgres::try_status`].
    pub async fn status(&self) -> Option<PgStatus> {
        self.look().await.status()
    }

    /// Look at the local server: its state, or why there is none — and
    /// whether that is silence (see [`PgError::is_silence`]).
    pub async fn look(&self) -> Look {
        match self.try_status().await {
            Ok(s) => Look::Answered(s),
            Err(e) => {
                tracing::debug!(error = %e, "PostgreSQL status unavailable");
                if e.is_silence() {
                    Look::Silent
                } else {
                    Look::Unavailable
                }
            }
        }
    }

    /// [`Postgres::status`] with the reason when it is unavailable. One
    /// connection (1 s connect timeout, 1 s statement timeout) and one round
    /// trip, the whole bounded by 2 s. The role comes only from
    /// `pg_is_in_recovery()`. For the timeline see `parse_status`: primary
    /// from the current WAL file name, standby from the WAL receiver (and
    /// never lower than it was from the same postmaster).
    /// A primary's `replay_lsn` is its current LSN.
    pub async fn try_status(&self) -> Result<PgStatus, PgError> {
        let target = Target::Local;
        let work = async {
            let client = self
                .connect(target, Duration::from_secs(1), Some(Duration::from_secs(1)))
                .await?;
            let messages = client
                .simple_query(STATUS_SQL)
                .await
                .map_err(|e| PgError::Sql {
                    what: "status query".to_string(),
                    target: self.target_name(target),
                    source: e,
                    hint: "the server may be starting up or shutting down",
                })?;
            parse_status(&result_sets(messages))
                .map_err(|e| PgError::InvalidConfig(format!("unexpected status query result: {e}")))
        };
        tokio::time::timeout(STATUS_BUDGET, work)
            .await
            .map_err(|_| PgError::SqlTimeout {
                what: "status query".to_string(),
                target: self.target_name(target),
                timeout: STATUS_BUDGET,
            })?
    }

    /// Promote this standby and return once `pg_is_in_recovery()` is
    /// false. No-op on a primary. `pg_promote(wait => true)` checks only
    /// every 100 ms; asking without waiting and polling every 5 ms, on the
    /// same connection (a new one per poll would fork a backend each time,
    /// competing with the promotion for the CPU), shaves most of that off a
    /// failover.
    pub async fn promote(&self, timeout: Duration) -> Result<(), PgError> {
        let t0 = std::time::Instant::now();
        let client = self
            .connect(
                Target::Local,
                Duration::from_secs(5),
                Some(Duration::from_secs(10)),
            )
            .await?;
        let ask = |query: &'static str, what: &'static str| {
            self.run_on(&client, Target::Local, what, query)
        };
        let signalled = ask(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_promote(false) ELSE false END",
            "promotion",
        )
        .await?;
        let signalled = first_value(&signalled) == Some("t");
        loop {
            let recovering = ask("SELECT pg_is_in_recovery()", "promotion check").await?;
            if first_value(&recovering) == Some("f") {
                if signalled {
                    tracing::info!(elapsed = ?t0.elapsed(), "promoted");
                } else {
                    tracing::info!("promote: already a primary");
                }
                return Ok(());
            }
            if !signalled || t0.elapsed() >= timeout {
                break;
            }
            tokio::time::sleep(PROMOTE_POLL).await;
        }
        Err(self.promote_failed(&format!("still in recovery {timeout:?} after pg_promote")))
    }

    /// Wait until this server takes writes (`pg_is_in_recovery()` is
    /// false). A cluster bootstrapped from a backup with `recovery.signal`
    /// accepts connections once consistent but finishes archive recovery,
    /// and promotes itself at its end, only later. Connection errors count
    /// as "not yet" until `timeout`.
    pub async fn await_writable(&self, timeout: Duration) -> Result<(), PgError> {
        let t0 = std::time::Instant::now();
        let mut told = false;
        loop {
            let why = match self.in_recovery().await {
                Ok(false) => {
                    if told {
                        tracing::info!(elapsed = ?t0.elapsed(), "archive recovery done: the server takes writes");
                    }
                    return Ok(());
                }
                Ok(true) => "it is still in recovery".to_string(),
                Err(e) => e.to_string(),
            };
            if !told {
                tracing::info!(why = %why, "waiting for the server to finish recovery and take writes");
                told = true;
            }
            if t0.elapsed() >= timeout {
                return Err(PgError::Failed {
                    command: "SELECT pg_is_in_recovery()".to_string(),
                    status: format!("not writable after {timeout:?}: {why}"),
                    hint: format!(
                        "a data directory restored with recovery.signal must end archive recovery \
                         and promote itself (no recovery target, or recovery_target_action = \
                         'promote'); see the server log {}",
                        self.cfg.log_file.display()
                    ),
                    tail: Default::default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The system identifier of `up`'s cluster (as its superuser).
    pub(crate) async fn system_identifier_of(&self, up: &Upstream) -> Result<u64, PgError> {
        let sets = self
            .query_on(
                Target::Remote(up),
                "reading the system identifier",
                "SELECT system_identifier FROM pg_control_system()",
                Duration::from_secs(5),
            )
            .await?;
        first_value(&sets)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| PgError::Failed {
                command: "SELECT system_identifier FROM pg_control_system()".to_string(),
                status: "no number in the answer".to_string(),
                hint: format!("on {}", up.node),
                tail: Default::default(),
            })
    }

    /// Whether `up` answers a query (its PostgreSQL runs and lets us in).
    pub async fn upstream_reachable(&self, up: &Upstream) -> bool {
        self.query_on(
            Target::Remote(up),
            "reachability check",
            "SELECT 1",
            Duration::from_secs(3),
        )
        .await
        .is_ok()
    }

    /// `pg_is_in_recovery()` of this server right now.
    async fn in_recovery(&self) -> Result<bool, PgError> {
        let sets = self
            .query_on(
                Target::Local,
                "promotion check",
                "SELECT pg_is_in_recovery()",
                Duration::from_secs(5),
            )
            .await?;
        Ok(first_value(&sets) != Some("f"))
    }

    fn promote_failed(&self, what: &str) -> PgError {
        PgError::Failed {
            command: "SELECT pg_promote(false)".to_string(),
            status: what.to_string(),
            hint: format!(
                "the standby may still be replaying WAL; see the server log {}",
                self.cfg.log_file.display()
            ),
            tail: Default::default(),
        }
    }

    /// `CHECKPOINT` on this server: makes a clean switchover shutdown and
    /// a later pg_rewind against this node fast and correct.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        self.checkpoint_on(Target::Local, Duration::from_secs(300))
            .await
    }

    pub(crate) async fn checkpoint_on(
        &self,
        target: Target<'_>,
        budget: Duration,
    ) -> Result<(), PgError> {
        self.query_on(target, "CHECKPOINT", "CHECKPOINT", budget)
            .await
            .map(|_| ())
    }

    /// On a primary: make sure the replication role exists with
    /// `REPLICATION LOGIN` and the configured password (created when
    /// missing, altered otherwise, so a changed password is applied).
    /// The statement is kept out of the server log (it holds the password).
    pub async fn ensure_replication_role(&self) -> Result<(), PgError> {
        let name = &self.cfg.replication_user;
        let sets = self
            .query_on(
                Target::Local,
                "looking up the replication role",
                &format!(
                    "SELECT pg_is_in_recovery(), EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {})",
                    literal(name)
                ),
                Duration::from_secs(10),
            )
            .await?;
        let row = sets.first().and_then(|s| s.first());
        if row.and_then(|r| r.get(0)) == Some("t") {
            return Err(PgError::Refused {
                action: "create the replication role on",
                path: self.cfg.data_dir.clone(),
                reason: "the server is a standby (read-only)".to_string(),
                hint: "roles are created on the primary and replicate from there",
            });
        }
        let exists = row.and_then(|r| r.get(1)) == Some("t");
        let verb = if exists { "ALTER" } else { "CREATE" };
        let password = match &self.cfg.replication_password {
            Some(pw) => format!(" PASSWORD {}", literal(pw)),
            None => String::new(),
        };
        let sql = format!(
            "BEGIN; SET LOCAL log_statement = 'none'; \
             {verb} ROLE {} WITH REPLICATION LOGIN{password}; COMMIT",
            ident(name)
        );
        self.query_on(
            Target::Local,
            &format!("{verb} ROLE {name}"),
            &sql,
            Duration::from_secs(10),
        )
        .await?;
        tracing::info!(role = %name, created = !exists, "replication role ensured");
        Ok(())
    }

    /// The running server's parameter catalog (`pg_settings`), with which
    /// the leader checks `config set` before committing it.
    pub async fn parameter_catalog(&self) -> Result<(u32, BTreeMap<String, ParamSpec>), PgError> {
        let sets = self
            .query_on(
                Target::Local,
                "reading pg_settings",
                CATALOG_SQL,
                Duration::from_secs(2),
            )
            .await?;
        let version = sets
            .first()
            .and_then(|s| s.first())
            .and_then(|r| r.get(0))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let catalog = sets
            .get(1)
            .map(|rows| rows.iter().filter_map(param_spec).collect())
            .unwrap_or_default();
        Ok((version, catalog))
    }

    /// The slots on `up`, physical and logical.
    pub async fn replication_slots_on(&self, up: &Upstream) -> Result<Vec<Slot>, PgError> {
        let sets = self
            .query_on(
                Target::Remote(up),
                "listing replication slots",
                "SELECT slot_name, active, restart_lsn::text, wal_status = 'lost', \
                 slot_type = 'logical', database, plugin, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE NOT temporary",
                Duration::from_secs(2),
            )
            .await?;
        Ok(sets
            .first()
            .map(|rows| parse_slots(rows))
            .unwrap_or_default())
    }

    /// The local server's slots, its last checkpoint's (or restartpoint's)
    /// redo LSN and whether `wal_level` is `logical`, in one round trip.
    pub async fn slot_view(&self) -> Result<SlotView, PgError> {
        let sets = self
            .query_on(
                Target::Local,
                "listing replication slots",
                "SELECT slot_name, active, restart_lsn::text, wal_status = 'lost', \
                 slot_type = 'logical', database, plugin, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE NOT temporary; \
                 SELECT redo_lsn::text, current_setting('wal_level') = 'logical' \
                 FROM pg_control_checkpoint()",
                Duration::from_secs(2),
            )
            .await?;
        let slots = sets
            .first()
            .map(|rows| parse_slots(rows))
            .unwrap_or_default();
        let row = sets.get(1).and_then(|rows| rows.first());
        Ok(SlotView {
            slots,
            redo_lsn: row
                .and_then(|r| r.get(0))
                .and_then(|l| l.parse().ok())
                .unwrap_or(Lsn(0)),
            logical_wal: row.and_then(|r| r.get(1)) == Some("t"),
        })
    }

    /// A slot's state file on `up`, as PostgreSQL keeps it in
    /// `pg_replslot/NAME/state` (read with `pg_read_binary_file`, which
    /// takes a superuser).
    pub async fn slot_state_on(&self, up: &Upstream, name: &str) -> Result<Vec<u8>, PgError> {
        let sets = self
            .query_on(
                Target::Remote(up),
                "reading a replication slot's state",
                &format!(
                    "SELECT encode(pg_read_binary_file({}), 'hex')",
                    literal(&format!("pg_replslot/{name}/state"))
                ),
                Duration::from_secs(2),
            )
            .await?;
        let hex = first_value(&sets).unwrap_or_default();
        decode_hex(hex).ok_or_else(|| PgError::Failed {
            command: "reading a replication slot's state".to_string(),
            status: format!("{} sent something that is not hex", up.node),
            hint: "see its PostgreSQL log".to_string(),
            tail: Default::default(),
        })
    }

    /// Make sure the upstream holds slot `name` before this replica streams
    /// through it (it normally does: every node keeps a slot for each
    /// member; not yet right after slots were turned on or a member was
    /// added). Bounded by 1 s; two creating at once is fine.
    pub async fn ensure_slot_on(&self, up: &Upstream, name: &str) -> Result<(), PgError> {
        let sql = format!(
            "SELECT pg_create_physical_replication_slot({n}, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {n})",
            n = literal(name)
        );
        self.query_on(
            Target::Remote(up),
            "creating this replica's slot on its upstream",
            &sql,
            Duration::from_secs(1),
        )
        .await
        .map(|_| ())
    }

    /// Create, drop or advance one slot on the local server. Copies are
    /// not SQL: see [`Postgres::copy_slot`].
    pub async fn change_slot(&self, action: &SlotAction) -> Result<(), PgError> {
        let (what, database, sql) = match action {
            SlotAction::Create(name) => (
                "creating a replication slot",
                "postgres",
                format!(
                    "SELECT pg_create_physical_replication_slot({}, true)",
                    literal(name)
                ),
            ),
            SlotAction::Drop(name) => (
                "dropping a replication slot",
                "postgres",
                format!("SELECT pg_drop_replication_slot({})", literal(name)),
            ),
            SlotAction::Advance(name, lsn) => (
                "advancing a replication slot",
                "postgres",
                format!(
                    "SELECT pg_replication_slot_advance({}, {}::pg_lsn)",
                    literal(name),
                    literal(&lsn.to_string())
                ),
            ),
            SlotAction::CreateLogical {
                name,
                database,
                plugin,
            } => (
                "creating a logical replication slot",
                database.as_str(),
                format!(
                    "SELECT pg_create_logical_replication_slot({}, {})",
                    literal(name),
                    literal(plugin)
                ),
            ),
            SlotAction::AdvanceLogical {
                name,
                database,
                lsn,
            } => (
                "advancing a logical replication slot",
                database.as_str(),
                format!(
                    "SELECT pg_replication_slot_advance({}, {}::pg_lsn)",
                    literal(name),
                    literal(&lsn.to_string())
                ),
            ),
            SlotAction::Copy(_) | SlotAction::DiscardCopy(_) => return Ok(()),
        };
        // Creating a logical slot waits for every transaction running then;
        // advancing one decodes the WAL in between: both may take a while.
        let budget = match action {
            SlotAction::CreateLogical { .. } | SlotAction::AdvanceLogical { .. } => {
                Duration::from_secs(60)
            }
            _ => Duration::from_secs(5),
        };
        self.query_in(Target::Local, database, what, &sql, budget)
            .await
            .map(|_| ())
    }

    /// Run SQL (one or more statements, no results) on the local server as
    /// the superuser, bounded by 60 s.
    pub async fn sql(&self, query: &str) -> Result<(), PgError> {
        self.query_on(Target::Local, "SQL", query, Duration::from_secs(60))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_sql() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
