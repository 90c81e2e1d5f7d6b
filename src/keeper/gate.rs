//! The commit gate: the keeper stands as its primary's synchronous standby
//! and acknowledges WAL only while the lease is valid.
//!
//! Why: when a whole host is frozen (a paused VM) past its lease, a replica
//! is promoted, as it must be. When the host thaws, every process resumes
//! at once: the keeper wakes and fences, but backends that get the CPU
//! first serve the statements waiting in their sockets, and in
//! asynchronous mode their commits would be acknowledged — writes a client
//! saw committed while another primary took writes. No fence acting after
//! the thaw can close that: nothing orders the keeper before the backends.
//! A commit, though, completes only once a synchronous standby has
//! acknowledged its WAL; where commits would wait for no standby, the
//! primary's `synchronous_standby_names` names the keeper
//! ([`crate::cluster::sync::GATE`]), and the keeper checks the lease
//! ([`rule::may_acknowledge`]) before every acknowledgement. WAL written
//! after the thaw is never acknowledged; the fence follows.
//!
//! The keeper speaks just enough of the streaming replication protocol
//! (messages framed by `postgres-protocol`): IDENTIFY_SYSTEM, then
//! START_REPLICATION from the server's current position, then a standby
//! status update for the WAL received. It stores nothing: durability is
//! the replicas' business, the gate is only about time. Everything is
//! non-blocking and driven by the keeper's `poll(2)` loop — the server may
//! be the very thing that is frozen.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{Header, Message};
use postgres_protocol::message::frontend;
use serde::{Deserialize, Serialize};

use super::rule::{self, Lease};
use crate::cluster::sync::GATE;

/// How to reach the local server: its Unix socket and a user that may open
/// a physical replication connection there.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Connect as this OS user (the server's, when the keeper runs as
    /// root): `peer` authentication then admits the keeper as it admits
    /// that user's own `psql`.
    #[serde(default)]
    pub os_uid: Option<u32>,
}

impl std::fmt::Debug for GateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateSpec")
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("os_uid", &self.os_uid)
            .finish()
    }
}

/// The gate as the keeper reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GateStatus {
    /// Streaming: the server counts the keeper as a standby.
    pub streaming: bool,
    /// The last WAL position acknowledged.
    pub acknowledged: u64,
    /// Replication connections that reached streaming.
    pub connections: u64,
    /// The agent told the keeper where its server listens (without that
    /// the gate cannot connect, and a gated primary takes no commit).
    pub configured: bool,
    /// Why the last connection failed or ended, until one streams again.
    pub error: Option<String>,
}

/// Retry a failed connection this soon, [`FAST_RETRIES`] times: right
/// after a promotion (or a start) the server refuses connections for a few
/// milliseconds, and commits wait for the gate meanwhile. Then back off,
/// doubling up to [`RETRY_MAX_MS`] (a server that keeps refusing, say for
/// want of a `pg_hba.conf` line, logs every attempt).
const RETRY_MS: u64 = 10;
const FAST_RETRIES: u32 = 50;
const RETRY_MAX_MS: u64 = 500;
/// A connection that has not reached streaming this long after it was
/// opened (a server that accepted it and then said nothing) is dropped and
/// tried again.
const HANDSHAKE_LIMIT_MS: u64 = 5_000;
/// Report the position at least this often while nothing changes (the
/// server drops a standby silent for `wal_sender_timeout`).
const STATUS_INTERVAL_MS: u64 = 1_000;
/// Read at most this much per pass, so the keeper's loop stays responsive.
const READ_PER_PASS: usize = 4 * 1024 * 1024;

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_S: u64 = 946_684_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Startup packet sent: authentication, then the server's parameters.
    Startup,
    /// IDENTIFY_SYSTEM sent: the timeline and the current WAL position.
    Identify,
    /// START_REPLICATION sent: waiting for the server to start copying.
    Starting,
    /// WAL flows; acknowledgements go back.
    Streaming,
}

struct Conn {
    opened_at: u64,
    stream: UnixStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    phase: Phase,
    scram: Option<ScramSha256>,
    timeline: u32,
    /// The end of the WAL received (or the start position).
    received: u64,
    acked: Option<u64>,
    replied_at: u64,
    reply_requested: bool,
}

/// Why a connection ended.
enum End {
    /// The server finished the timeline (this node was promoted while the
    /// keeper streamed from it as a standby): reconnect at once.
    Timeline,
    Failed(String),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Failed(e.to_string())
    }
}

/// The keeper's replication connection to its own server.
#[derive(Default)]
pub struct Gate {
    spec: Option<GateSpec>,
    conn: Option<Conn>,
    retry_at: u64,
    /// Failed connections in a row.
    failures: u32,
    status: GateStatus,
}

impl Gate {
    pub fn status(&self) -> GateStatus {
        GateStatus {
            configured: self.spec.is_some(),
            ..self.status.clone()
        }
    }

    /// Where to connect (from the agent's start request); a new spec
    /// starts a new connection.
    pub fn set_spec(&mut self, spec: Option<GateSpec>) {
        if spec != self.spec {
            self.close();
            self.spec = spec;
            self.retry_at = 0;
            self.failures = 0;
        }
    }

    /// How soon the keeper must look again for the gate's sake: a pending
    /// reconnection is due (`None`: whenever).
    pub fn due_in(&self, now: u64) -> Option<u64> {
        (self.conn.is_none() && self.spec.is_some()).then(|| self.retry_at.saturating_sub(now))
    }

    /// The connection's descriptor and what to wait for, if there is one.
    pub fn poll_interest(&self) -> Option<(BorrowedFd<'_>, bool)> {
        self.conn
            .as_ref()
            .map(|c| (c.stream.as_fd(), !c.wbuf.is_empty()))
    }

    /// One pass: connect or disconnect as the lease says, read what
    /// arrived, acknowledge it if the lease allows, send what is due.
    /// `running`: the keeper's postmaster runs.
    pub fn step(&mut self, lease: Lease, running: bool, now: u64) {
        let wanted = running && self.spec.is_some() && rule::gates_commits(lease);
        if !wanted {
            // Whatever failed before (a server still starting, say) says
            // nothing about the next time the gate is wanted.
            self.close();
            self.failures = 0;
            self.retry_at = 0;
            return;
        }
        if self.conn.is_none() {
            if now < self.retry_at {
                return;
            }
            match self.connect(now) {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.failed(now, e);
                    return;
                }
            }
        }
        let Some(mut c) = self.conn.take() else {
            return;
        };
        if c.phase != Phase::Streaming && now.saturating_sub(c.opened_at) > HANDSHAKE_LIMIT_MS {
            self.failed(
                now,
                format!(
                    "no answer from the server within {HANDSHAKE_LIMIT_MS} ms while {:?}",
                    c.phase
                ),
            );
            return;
        }
        match self.drive(&mut c, lease) {
            Ok(()) => self.conn = Some(c),
            Err(End::Timeline) => {
                self.status.streaming = false;
                self.retry_at = 0;
            }
            Err(End::Failed(why)) => self.failed(now, why),
        }
    }

    fn close(&mut self) {
        if let Some(mut c) = self.conn.take() {
            frontend::terminate(&mut c.wbuf);
            let _ = c.stream.write(&c.wbuf);
        }
        self.status.streaming = false;
    }

    fn failed(&mut self, now: u64, why: String) {
        self.status.streaming = false;
        if self.status.error.as_deref() != Some(why.as_str()) {
            tracing::warn!(error = %why, "commit gate: no replication connection to the local server");
            self.status.error = Some(why);
        }
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(FAST_RETRIES).min(16);
        self.retry_at = now + (RETRY_MS << doublings).min(RETRY_MAX_MS);
    }

    fn connect(&self, now: u64) -> Result<Conn, String> {
        let spec = self.spec.as_ref().ok_or("no server to connect to")?;
        let path = spec.socket_dir.join(format!(".s.PGSQL.{}", spec.port));
        let stream = connect_nonblocking(&path, spec.os_uid)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut wbuf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", spec.user.as_str()),
                ("replication", "true"),
                ("application_name", GATE),
            ],
            &mut wbuf,
        )
        .map_err(|e| e.to_string())?;
        Ok(Conn {
            opened_at: now,
            stream,
            rbuf: BytesMut::new(),
            wbuf,
            phase: Phase::Startup,
            scram: None,
            timeline: 0,
            received: 0,
            acked: None,
            replied_at: 0,
            reply_requested: false,
        })
    }

    fn drive(&mut self, c: &mut Conn, lease: Lease) -> Result<(), End> {
        flush(c)?;
        let open = read(c)?;
        // What arrived before the end of the connection first: an error
        // message says why the server closed it.
        while self.handle_one(c)? {}
        if !open {
            return Err(End::Failed("the server closed the connection".into()));
        }
        // The lease is read here, after everything that arrived: what was
        // received before a freeze is acknowledged only if the lease is
        // still valid now.
        let now = crate::boottime::boot_ms();
        if c.phase == Phase::Streaming && rule::may_acknowledge(lease, now) {
            let due = c.acked != Some(c.received)
                || c.reply_requested
                || now.saturating_sub(c.replied_at) >= STATUS_INTERVAL_MS;
            if due {
                standby_status(c.received, &mut c.wbuf)?;
                c.acked = Some(c.received);
                c.replied_at = now;
                c.reply_requested = false;
                self.status.acknowledged = c.received;
            }
        }
        flush(c)
    }

    /// Handle the next complete message; false when no complete message is
    /// buffered.
    fn handle_one(&mut self, c: &mut Conn) -> Result<bool, End> {
        // CopyBothResponse is not among the messages postgres-protocol
        // parses: skip it by its header.
        if c.rbuf.first() == Some(&b'W') {
            let Some(header) = Header::parse(&c.rbuf)? else {
                return Ok(false);
            };
            let total = 1 + header.len() as usize;
            if c.rbuf.len() < total {
                return Ok(false);
            }
            c.rbuf.advance(total);
            if c.phase != Phase::Starting {
                return Err(End::Failed("unexpected CopyBothResponse".into()));
            }
            c.phase = Phase::Streaming;
            self.status.streaming = true;
            self.status.connections += 1;
            self.status.error = None;
            self.failures = 0;
            tracing::info!(timeline = c.timeline, start = %crate::cluster::lsn::Lsn(c.received), "commit gate: streaming from the local server");
            return Ok(true);
        }
        let tag = c.rbuf.first().copied().unwrap_or(b'?');
        let Some(message) = Message::parse(&mut c.rbuf)? else {
            return Ok(false);
        };
        match (c.phase, message) {
            (_, Message::ErrorResponse(body)) => Err(End::Failed(error_text(body.fields()))),
            (_, Message::NoticeResponse(_))
            | (_, Message::ParameterStatus(_))
            | (_, Message::BackendKeyData(_)) => Ok(true),
            (Phase::Startup, message) => {
                self.authenticate(c, message)?;
                Ok(true)
            }
            (Phase::Identify, Message::RowDescription(_))
            | (Phase::Identify, Message::CommandComplete(_)) => Ok(true),
            (Phase::Identify, Message::DataRow(row)) => {
                let buf = row.buffer();
                let cols: Vec<Option<&str>> = row
                    .ranges()
                    .map(|r| Ok(r.and_then(|r| std::str::from_utf8(&buf[r]).ok())))
                    .collect()?;
                let timeline = cols.get(1).copied().flatten().and_then(|t| t.parse().ok());
                let position = cols
                    .get(2)
                    .copied()
                    .flatten()
                    .and_then(|p| p.parse::<crate::cluster::lsn::Lsn>().ok());
                match (timeline, position) {
                    (Some(t), Some(p)) => {
                        c.timeline = t;
                        c.received = p.0;
                        Ok(true)
                    }
                    _ => Err(End::Failed(format!(
                        "IDENTIFY_SYSTEM answered {cols:?}, not a timeline and a position"
                    ))),
                }
            }
            (Phase::Identify, Message::ReadyForQuery(_)) => {
                let query = format!(
                    "START_REPLICATION PHYSICAL {} TIMELINE {}",
                    crate::cluster::lsn::Lsn(c.received),
                    c.timeline
                );
                frontend::query(&query, &mut c.wbuf)?;
                c.phase = Phase::Starting;
                Ok(true)
            }
            (Phase::Streaming, Message::CopyData(body)) => {
                on_copy_data(c, body.data())?;
                Ok(true)
            }
            (Phase::Streaming, Message::CopyDone) => Err(End::Timeline),
            // A walsender ends a clean shutdown with CommandComplete.
            (Phase::Streaming, Message::CommandComplete(_)) => Err(End::Timeline),
            (phase, _) => Err(End::Failed(format!(
                "unexpected message {:?} from the server while {phase:?}",
                tag as char
            ))),
        }
    }

    fn authenticate(&self, c: &mut Conn, message: Message) -> Result<(), End> {
        let spec = self.spec.as_ref().ok_or(End::Failed("no server".into()))?;
        let password = || {
            spec.password.as_deref().ok_or_else(|| {
                End::Failed(format!(
                    "the server asks a password of {} for a local replication connection: set \
                     superuser_password, or admit it in pg_hba.conf (`local replication {} trust`)",
                    spec.user, spec.user
                ))
            })
        };
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut c.wbuf)?
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(spec.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut c.wbuf)?;
            }
            Message::AuthenticationSasl(body) => {
                let offered: Vec<&str> = body.mechanisms().collect()?;
                if !offered.contains(&SCRAM_SHA_256) {
                    return Err(End::Failed(format!(
                        "the server offers {offered:?}; the keeper speaks {SCRAM_SHA_256}"
                    )));
                }
                let scram = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut c.wbuf)?;
                c.scram = Some(scram);
            }
            Message::AuthenticationSaslContinue(body) => {
                let scram = c
                    .scram
                    .as_mut()
                    .ok_or(End::Failed("SASL out of order".into()))?;
                scram.update(body.data())?;
                frontend::sasl_response(scram.message(), &mut c.wbuf)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let scram = c
                    .scram
                    .as_mut()
                    .ok_or(End::Failed("SASL out of order".into()))?;
                scram.finish(body.data())?;
            }
            Message::ReadyForQuery(_) => {
                frontend::query("IDENTIFY_SYSTEM", &mut c.wbuf)?;
                c.phase = Phase::Identify;
            }
            _ => {
                return Err(End::Failed(
                    "the server asks for an authentication the keeper does not speak".into(),
                ))
            }
        }
        Ok(())
    }
}

/// XLogData ('w') moves the received position; a keepalive ('k') may ask
/// for an answer. A keepalive's WAL end is the server's, not ours: never
/// acknowledged.
fn on_copy_data(c: &mut Conn, data: &[u8]) -> Result<(), End> {
    let short = || End::Failed("a replication message too short".into());
    match data.first() {
        Some(b'w') => {
            let start = data.get(1..9).ok_or_else(short)?;
            let start = u64::from_be_bytes(start.try_into().map_err(|_| short())?);
            let payload = data.len().checked_sub(25).ok_or_else(short)?;
            c.received = c.received.max(start.saturating_add(payload as u64));
        }
        Some(b'k') => {
            c.reply_requested |= data.get(17).copied().ok_or_else(short)? != 0;
        }
        _ => {}
    }
    Ok(())
}

/// A standby status update: written, flushed and applied up to `lsn`.
fn standby_status(lsn: u64, out: &mut BytesMut) -> std::io::Result<()> {
    let since_pg_epoch_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64 - (PG_EPOCH_OFFSET_S * 1_000_000) as i64)
        .unwrap_or(0);
    let mut body = Vec::with_capacity(34);
    body.push(b'r');
    for _ in 0..3 {
        body.extend_from_slice(&lsn.to_be_bytes());
    }
    body.extend_from_slice(&since_pg_epoch_us.to_be_bytes());
    body.push(0);
    frontend::CopyData::new(&body[..])?.write(out);
    Ok(())
}

/// Read what is there (up to [`READ_PER_PASS`]); false once the server
/// closed the connection.
fn read(c: &mut Conn) -> Result<bool, End> {
    let mut chunk = [0u8; 64 * 1024];
    let mut total = 0;
    while total < READ_PER_PASS {
        match c.stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                c.rbuf.extend_from_slice(&chunk[..n]);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn flush(c: &mut Conn) -> Result<(), End> {
    while !c.wbuf.is_empty() {
        match c.stream.write(&c.wbuf) {
            Ok(0) => return Err(End::Failed("the server stopped reading".into())),
            Ok(n) => c.wbuf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn error_text<'a>(
    mut fields: impl FallibleIterator<
        Item = postgres_protocol::message::backend::ErrorField<'a>,
        Error = std::io::Error,
    >,
) -> String {
    let (mut severity, mut message) = (String::new(), String::new());
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => severity = value,
            b'M' => message = value,
            _ => {}
        }
    }
    format!("{severity}: {message}")
}

/// A non-blocking connection to a Unix socket: a server whose backlog is
/// full (a frozen postmaster) refuses at once instead of blocking the
/// keeper. With `as_uid`, connect under that effective user id (the
/// server reads the peer's credentials as they were at `connect`), then
/// switch back (for the whole process: the log writer's thread does
/// nothing that needs root).
fn connect_nonblocking(path: &std::path::Path, as_uid: Option<u32>) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use nix::unistd::{geteuid, seteuid, Uid};
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    let me = geteuid();
    let switch = as_uid
        .map(Uid::from_raw)
        .filter(|u| *u != me && me.is_root());
    if let Some(uid) = switch {
        seteuid(uid)?;
    }
    let connected = connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr);
    if switch.is_some() {
        if let Err(e) = seteuid(me) {
            // Cannot happen for root going back to a saved set-user-id of
            // 0. If it did, the keeper could no longer be trusted to fence:
            // dying takes PostgreSQL with it (the parent-death signal).
            tracing::error!(error = %e, "commit gate: cannot switch back to the keeper's user");
            std::process::abort();
        }
    }
    connected?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    /// A backend message: tag, length, body.
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn data_row(cols: &[&str]) -> Vec<u8> {
        let mut body = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            body.extend_from_slice(&(c.len() as u32).to_be_bytes());
            body.extend_from_slice(c.as_bytes());
        }
        msg(b'D', &body)
    }

    fn xlog(start: u64, payload: usize) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&(start + payload as u64).to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend(std::iter::repeat_n(0u8, payload));
        msg(b'd', &body)
    }

    /// Everything the server has been sent so far (non-blocking reads).
    fn drain(s: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// The flush positions of the standby status updates in `sent`.
    fn acks(sent: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 5 <= sent.len() {
            let len = u32::from_be_bytes(sent[i + 1..i + 5].try_into().unwrap()) as usize;
            if sent[i] == b'd' && sent.get(i + 5) == Some(&b'r') {
                let flush = &sent[i + 14..i + 22];
                out.push(u64::from_be_bytes(flush.try_into().unwrap()));
            }
            i += 1 + len;
        }
        out
    }

    /// A gate whose server is a socket the test answers on.
    fn gate_and_server() -> (tempfile::TempDir, UnixListener, Gate) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5999")).unwrap();
        let mut gate = Gate::default();
        gate.set_spec(Some(GateSpec {
            socket_dir: dir.path().to_path_buf(),
            port: 5999,
            user: "postgres".into(),
            password: None,
            os_uid: None,
        }));
        (dir, listener, gate)
    }

    fn step_until(gate: &mut Gate, lease: Lease, mut done: impl FnMut(&Gate) -> bool) {
        for _ in 0..200 {
            gate.step(lease, true, crate::boottime::boot_ms());
            if done(gate) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the gate did not get there: {:?}", gate.status());
    }

    /// A scripted server: the gate authenticates, identifies, starts
    /// streaming (the CopyBothResponse split across two writes), and
    /// acknowledges exactly the WAL received — until the lease is over,
    /// after which WAL that arrives is never acknowledged.
    #[test]
    fn acknowledges_received_wal_only_while_the_lease_is_valid() {
        let (_dir, listener, mut gate) = gate_and_server();
        let now = crate::boottime::boot_ms();
        let lease = Lease::Until {
            epoch: 1,
            deadline: now + 60_000,
        };
        gate.step(lease, true, now);
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut script = msg(b'R', &0u32.to_be_bytes());
        script.extend(msg(b'Z', b"I"));
        server.write_all(&script).unwrap();
        step_until(&mut gate, lease, |g| {
            g.conn.as_ref().is_some_and(|c| c.phase == Phase::Identify)
        });
        let mut identify = data_row(&["7", "3", "0/1000", ""]);
        identify.extend(msg(b'C', b"IDENTIFY_SYSTEM\0"));
        identify.extend(msg(b'Z', b"I"));
        server.write_all(&identify).unwrap();
        step_until(&mut gate, lease, |g| {
            g.conn.as_ref().is_some_and(|c| c.phase == Phase::Starting)
        });
        let sent = String::from_utf8_lossy(&drain(&mut server)).into_owned();
        assert!(
            sent.contains("START_REPLICATION PHYSICAL 0/1000 TIMELINE 3"),
            "{sent}"
        );

        let both = msg(b'W', &[0, 0, 0]);
        server.write_all(&both[..3]).unwrap();
        gate.step(lease, true, crate::boottime::boot_ms());
        assert!(!gate.status().streaming, "streaming on half a message");
        server.write_all(&both[3..]).unwrap();
        step_until(&mut gate, lease, |g| g.status().streaming);
        server.write_all(&xlog(0x1000, 0x20)).unwrap();
        step_until(&mut gate, lease, |g| g.status().acknowledged == 0x1020);
        assert_eq!(acks(&drain(&mut server)), vec![0x1000, 0x1020]);

        // The lease runs out (the host was frozen past it): WAL written
        // now is never acknowledged, however often the gate looks.
        let over = Lease::Until {
            epoch: 1,
            deadline: crate::boottime::boot_ms(),
        };
        server.write_all(&xlog(0x1020, 0x40)).unwrap();
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x2000u64.to_be_bytes());
        keepalive.extend_from_slice(&0i64.to_be_bytes());
        keepalive.push(1);
        server.write_all(&msg(b'd', &keepalive)).unwrap();
        for _ in 0..20 {
            gate.step(over, true, crate::boottime::boot_ms());
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(acks(&drain(&mut server)), Vec::<u64>::new());
        assert_eq!(gate.status().acknowledged, 0x1020);

        // The lease is renewed: what was received is acknowledged, never
        // the server's own WAL end from the keepalive.
        step_until(&mut gate, lease, |g| g.status().acknowledged == 0x1060);
        assert_eq!(acks(&drain(&mut server)), vec![0x1060]);
    }

    #[test]
    fn says_why_the_server_closed_the_connection() {
        let (_dir, listener, mut gate) = gate_and_server();
        let lease = Lease::Open { epoch: 1 };
        gate.step(lease, true, crate::boottime::boot_ms());
        let (mut server, _) = listener.accept().unwrap();
        // As PostgreSQL does: read the startup packet, answer, close.
        let mut startup = [0u8; 4];
        server.read_exact(&mut startup).unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(startup) as usize - 4];
        server.read_exact(&mut rest).unwrap();
        server
            .write_all(&msg(
                b'E',
                b"SFATAL\0MNo pg_hba.conf entry for replication connection\0\0",
            ))
            .unwrap();
        drop(server);
        step_until(&mut gate, lease, |g| g.status().error.is_some());
        let error = gate.status().error.unwrap_or_default();
        assert!(error.contains("pg_hba.conf"), "{error}");
        assert!(!gate.status().streaming);
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let spec = GateSpec {
            socket_dir: "/run".into(),
            port: 5432,
            user: "postgres".into(),
            password: Some("s3cret".into()),
            os_uid: None,
        };
        assert!(!format!("{spec:?}").contains("s3cret"));
    }
}
