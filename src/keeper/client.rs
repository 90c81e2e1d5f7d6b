//! The agent's end of the keeper's socket.
//!
//! One connection, one request at a time (the requests are quick: none
//! waits for PostgreSQL). When no keeper answers, one is started — the same
//! binary, `keeper --state-dir … --data-dir …`, in its own process group,
//! not a child that dies with the agent — so that a node works without a
//! service manager too; under systemd the keeper has its own unit and is
//! already there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::gate::GateSpec;
use super::protocol::{
    encode, KeeperState, Reply, Request, StartSpec, WatchdogSpec, MAX_LINE, SOCKET,
};
use super::rule::Lease;

/// How long a request may take before the keeper counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a keeper just started may take to listen.
const SPAWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KeeperLinkError {
    #[error("cannot start the keeper ({binary} keeper): {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the keeper at {socket} did not answer: {detail}")]
    Unreachable { socket: PathBuf, detail: String },
    #[error("the keeper refused: {0}")]
    Refused(String),
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// The link to one node's keeper.
pub struct KeeperLink {
    dir: PathBuf,
    data_dir: PathBuf,
    /// The program that runs a keeper; `None`: never start one.
    binary: Option<PathBuf>,
    /// Where the keeper's commit gate reaches the server (sent on attach).
    gate: Option<GateSpec>,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for KeeperLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeeperLink")
            .field("dir", &self.dir)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl KeeperLink {
    /// The keeper of `data_dir` living in `dir`; `binary` is the pgquorum
    /// program that runs it when none does yet (`None`: the keeper is a
    /// service of its own; wait for it instead).
    pub fn new(dir: &Path, data_dir: &Path, binary: Option<&Path>) -> KeeperLink {
        KeeperLink {
            dir: dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            binary: binary.map(Path::to_path_buf),
            gate: None,
            conn: Mutex::new(None),
        }
    }

    /// Tell the keeper, whenever the link attaches, how its commit gate
    /// reaches the server.
    pub fn with_gate(mut self, gate: GateSpec) -> KeeperLink {
        self.gate = Some(gate);
        self
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    fn unreachable(&self, detail: impl ToString) -> KeeperLinkError {
        KeeperLinkError::Unreachable {
            socket: self.socket(),
            detail: detail.to_string(),
        }
    }

    /// Connect (starting a keeper if none listens) and attach.
    async fn connect(&self) -> Result<(Conn, KeeperState), KeeperLinkError> {
        let socket = self.socket();
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(_) => {
                let hint = match &self.binary {
                    Some(binary) => {
                        self.spawn(binary).await?;
                        format!(
                            "a keeper was started; see {}",
                            self.dir.join("keeper.log").display()
                        )
                    }
                    None => "spawn_keeper is off: start the keeper's own service (pgquorum-keeper.service)".to_string(),
                };
                let deadline = tokio::time::Instant::now() + SPAWN_WAIT;
                loop {
                    match UnixStream::connect(&socket).await {
                        Ok(s) => break s,
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            return Err(self.unreachable(format!("{e} ({hint})")))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        };
        let (read, writer) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::new(read),
            writer,
        };
        let reply = exchange(
            &mut conn,
            &Request::Attach {
                data_dir: self.data_dir.clone(),
                gate: self.gate.clone(),
            },
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        match reply {
            Reply::State(state) => Ok((conn, state)),
            Reply::Error { message } => Err(KeeperLinkError::Refused(message)),
            other => Err(self.unreachable(format!("unexpected answer {other:?}"))),
        }
    }

    /// Start a keeper in the background (it outlives this process).
    async fn spawn(&self, binary: &Path) -> Result<(), KeeperLinkError> {
        let spawn_err = |source| KeeperLinkError::Spawn {
            binary: binary.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(spawn_err)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keeper.log"))
            .map_err(spawn_err)?;
        let err = log.try_clone().map_err(spawn_err)?;
        let mut child = tokio::process::Command::new(binary)
            .arg0("pgquorum")
            .arg("keeper")
            .arg("--state-dir")
            .arg(&self.dir)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(spawn_err)?;
        tracing::info!(pid = ?child.id(), dir = %self.dir.display(), "started a keeper");
        // Reap it should it exit while this agent runs.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// One request and its reply; reconnects once when the connection
    /// broke (the keeper was restarted, or this is the first request). The
    /// connection is out of the slot while a request is under way: if the
    /// caller gives up half-way (a timeout), its reply can never be read as
    /// the answer to the next request — the next one reconnects.
    pub async fn request(&self, request: &Request) -> Result<Reply, KeeperLinkError> {
        let mut slot = self.conn.lock().await;
        for attempt in 0..2 {
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => self.connect().await?.0,
            };
            match exchange(&mut conn, request).await {
                Ok(reply) => {
                    *slot = Some(conn);
                    return Ok(reply);
                }
                Err(e) if attempt == 1 => return Err(self.unreachable(e)),
                Err(_) => {}
            }
        }
        Err(self.unreachable("no connection"))
    }

    /// Connect (if not yet) and return the keeper's state.
    pub async fn attach(&self) -> Result<KeeperState, KeeperLinkError> {
        let mut guard = self.conn.lock().await;
        let (conn, state) = self.connect().await?;
        *guard = Some(conn);
        Ok(state)
    }

    pub async fn status(&self) -> Result<KeeperState, KeeperLinkError> {
        state_of(self.request(&Request::Status).await?)
    }

    /// Have the keeper enforce `lease` (and arm `watchdog` with it).
    pub async fn set_lease(
        &self,
        lease: Lease,
        watchdog: Option<WatchdogSpec>,
    ) -> Result<KeeperState, KeeperLinkError> {
        state_of(self.request(&Request::Lease { lease, watchdog }).await?)
    }

    /// Can the keeper arm this watchdog?
    pub async fn probe_watchdog(&self, spec: WatchdogSpec) -> Result<(), KeeperLinkError> {
        state_of(self.request(&Request::ProbeWatchdog(spec)).await?).map(|_| ())
    }

    /// Start the postmaster; its pid.
    pub async fn start(&self, spec: StartSpec) -> Result<i32, KeeperLinkError> {
        match self.request(&Request::Start(spec)).await? {
            Reply::Started { pid } => Ok(pid),
            Reply::Error { message } => Err(KeeperLinkError::Refused(message)),
            other => Err(KeeperLinkError::Refused(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

fn state_of(reply: Reply) -> Result<KeeperState, KeeperLinkError> {
    match reply {
        Reply::State(s) => Ok(s),
        Reply::Error { message } => Err(KeeperLinkError::Refused(message)),
        other => Err(KeeperLinkError::Refused(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn exchange(conn: &mut Conn, request: &Request) -> Result<Reply, String> {
    let work = async {
        conn.writer
            .write_all(&encode(request))
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        let n = (&mut conn.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the keeper closed the connection".to_string());
        }
        serde_json::from_str::<Reply>(&line).map_err(|e| format!("unreadable answer: {e}"))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}
