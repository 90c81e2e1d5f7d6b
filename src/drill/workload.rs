//! The drill's clients, from outside the cluster's hosts: writers through
//! the multi-host connection string (what an application does) and one
//! direct writer per node that keeps trying to write to that node alone
//! (what a stale connection pool does). Every row says who wrote it
//! (client, sequence), which server acknowledged it and on which timeline,
//! and every attempt goes to `writes.jsonl` with its start, end and outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::check::DIRECT_WRITER_BASE;
use super::record::{now_ms, Attempt, JsonLines, Outcome};

/// Creates the table every writer writes to.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS drill_writes (\
     client int NOT NULL, seq bigint NOT NULL, server text NOT NULL, timeline int NOT NULL, \
     PRIMARY KEY (client, seq))";

/// One write: the server tags the row with its own address and the
/// timeline it writes on (the first 8 hex digits of the current WAL file's
/// name), and returns both.
const INSERT: &str = "INSERT INTO drill_writes (client, seq, server, timeline) \
     VALUES ($1, $2, host(inet_server_addr()), \
     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int) \
     RETURNING server, timeline";

/// How long one INSERT may take before the writer gives up on it (and on
/// its connection).
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The running writers.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    logger: tokio::task::JoinHandle<std::io::Result<Vec<Attempt>>>,
    /// When a client (multi-host) write was last acknowledged (ms since 1970).
    pub last_client_ack_ms: Arc<AtomicU64>,
}

/// Where a writer writes.
pub struct Target {
    pub client: u32,
    pub dsn: String,
    pub node: Option<String>,
}

impl Workload {
    /// Start `clients` writers on `dsn` and one direct writer per entry of
    /// `direct` (node, dsn); `servers` maps a server address to its node.
    pub fn start(
        dsn: &str,
        clients: u32,
        direct: &[(String, String)],
        servers: BTreeMap<String, String>,
        every: Duration,
        log: JsonLines,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicU64::new(0));
        let servers = Arc::new(servers);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut targets: Vec<Target> = (1..=clients)
            .map(|client| Target {
                client,
                dsn: dsn.to_string(),
                node: None,
            })
            .collect();
        for (i, (node, dsn)) in direct.iter().enumerate() {
            targets.push(Target {
                client: DIRECT_WRITER_BASE + 1 + i as u32,
                dsn: dsn.clone(),
                node: Some(node.clone()),
            });
        }
        let tasks = targets
            .into_iter()
            .map(|t| {
                let (stop, last, servers, tx) =
                    (stop.clone(), last.clone(), servers.clone(), tx.clone());
                tokio::spawn(async move { write_loop(t, every, stop, last, servers, tx).await })
            })
            .collect();
        Workload {
            stop,
            tasks,
            logger: tokio::spawn(keep(rx, log)),
            last_client_ack_ms: last,
        }
    }

    /// Stop writing; every attempt, in the order they ended.
    pub async fn stop(self) -> std::io::Result<Vec<Attempt>> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        match self.logger.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

async fn keep(
    mut rx: mpsc::UnboundedReceiver<Attempt>,
    mut log: JsonLines,
) -> std::io::Result<Vec<Attempt>> {
    let mut all = Vec::new();
    while let Some(a) = rx.recv().await {
        log.append(&a)?;
        all.push(a);
    }
    log.flush()?;
    Ok(all)
}

fn short(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

async fn write_loop(
    target: Target,
    every: Duration,
    stop: Arc<AtomicBool>,
    last_ack: Arc<AtomicU64>,
    servers: Arc<BTreeMap<String, String>>,
    tx: mpsc::UnboundedSender<Attempt>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_postgres::connect(&target.dsn, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                _ => None,
            };
        }
        let Some(c) = &client else {
            tokio::time::sleep(every.max(Duration::from_millis(100))).await;
            continue;
        };
        seq += 1;
        let start_ms = now_ms();
        let r = tokio::time::timeout(
            WRITE_TIMEOUT,
            c.query_one(INSERT, &[&(target.client as i32), &(seq as i64)]),
        )
        .await;
        let end_ms = now_ms();
        let outcome = match r {
            Ok(Ok(row)) => {
                let address: String = row.get(0);
                let timeline: i32 = row.get(1);
                let server = servers.get(&address).cloned().unwrap_or(address);
                if target.node.is_none() {
                    last_ack.fetch_max(end_ms, Ordering::SeqCst);
                }
                Outcome::Acked {
                    server,
                    timeline: timeline as u32,
                }
            }
            Ok(Err(e)) => {
                // A refused write (a replica, a read-only server) keeps its
                // connection; anything else starts over.
                if e.as_db_error().is_none() {
                    client = None;
                }
                Outcome::Failed { error: short(&e) }
            }
            Err(_) => {
                client = None;
                Outcome::Failed {
                    error: format!("no answer within {} s", WRITE_TIMEOUT.as_secs()),
                }
            }
        };
        let failed = matches!(outcome, Outcome::Failed { .. });
        let _ = tx.send(Attempt {
            client: target.client,
            seq,
            node: target.node.clone(),
            start_ms,
            end_ms,
            outcome,
        });
        // A direct writer to a replica fails on every attempt: no need to
        // hammer it.
        let pause = if failed && target.node.is_some() {
            every.max(Duration::from_millis(100))
        } else {
            every
        };
        tokio::time::sleep(pause).await;
    }
}

/// Every (client, seq) on the server at `dsn`.
pub async fn rows_on(dsn: &str) -> Result<Vec<(u32, u64)>, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows = c
        .query(
            "SELECT client, seq FROM drill_writes ORDER BY client, seq",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64))
        .collect())
}

/// Create the table through `dsn`.
pub async fn create_table(dsn: &str) -> Result<(), tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(CREATE_TABLE).await
}
