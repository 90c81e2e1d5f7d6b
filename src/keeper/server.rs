//! The keeper process: one small, single-threaded loop per node.
//!
//! It is the parent of the postmaster and the one place that enforces the
//! primary's lease. Each pass it reaps its child, stops PostgreSQL when
//! [`rule::must_fence`] says so, feeds the watchdog when [`rule::may_feed`]
//! allows, acknowledges the WAL its server sent to the commit gate when
//! [`rule::may_acknowledge`] allows (see [`super::gate`]), then sleeps in
//! `poll(2)` on its sockets until a request or WAL comes or the next check
//! is due ([`rule::sleep_ms`]). No async runtime, no threads,
//! no locks shared with anybody, no disk I/O on the way from a deadline to
//! the fence: whatever the agent does — crash, hang, stall on a slow disk —
//! the fence happens on time.
//!
//! The postmaster is started with a parent-death signal (SIGQUIT, an
//! immediate shutdown), set after the switch to the PostgreSQL user (a
//! change of credentials clears it): if the keeper dies, PostgreSQL goes at
//! once. The signal fires when the *thread* that forked exits; the keeper
//! has only one.
//!
//! SIGTERM or SIGINT: stop PostgreSQL with a fast shutdown (at most
//! [`STOP_LIMIT`], the lease still enforced meanwhile), then exit. A second
//! signal stops it immediately.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use super::gate::Gate;
use super::protocol::{
    encode, KeeperState, Reply, Request, StartSpec, WatchdogSpec, WatchdogStatus, LOCK, MAX_LINE,
    PID_FILE, SOCKET,
};
use super::rule::{self, Lease};
use super::watchdog::Watchdog;
use crate::boottime::boot_ms;
use crate::process::{self, Fenced, FENCE_KILL_WAIT};

/// How long a fast shutdown on SIGTERM may take before PostgreSQL is
/// stopped immediately.
pub const STOP_LIMIT: Duration = Duration::from_secs(60);

/// Feed the watchdog at most this often (its timeout is whole seconds).
const FEED_EVERY_MS: u64 = 100;

static TERMINATE: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.fetch_add(1, Ordering::SeqCst);
}

/// Where the keeper lives and what it guards.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// Its directory (the agent's state directory): socket, lock, pid file.
    pub dir: PathBuf,
    /// The data directory of the PostgreSQL server it runs.
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("another keeper already runs for {dir} (pid {pid}): one keeper per node")]
    AlreadyRunning { dir: PathBuf, pid: String },
    #[error("keeper directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("socket path {0} is too long for a Unix socket (at most 107 bytes): use a shorter state_dir")]
    SocketPath(PathBuf),
    #[error("cannot install signal handlers: {0}")]
    Signals(nix::Error),
}

/// The connected agent.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    attached: bool,
}

struct Keeper {
    data_dir: PathBuf,
    /// The data directory as `/proc/*/cwd` shows it, once it exists.
    canonical: Option<PathBuf>,
    lease: Lease,
    /// The deadline already fenced for (fence once per lease, then watch
    /// only the keeper's own child).
    fenced_for: Option<u64>,
    child: Option<Child>,
    last_exit: Option<String>,
    fences: u64,
    watchdog: Option<Watchdog>,
    watchdog_error: Option<String>,
    feeds: u64,
    /// When the watchdog was last fed (boot ms): the loop now also wakes
    /// for every batch of WAL, and a feed may be slow (some drivers talk
    /// to the board's controller), so at most every [`FEED_EVERY_MS`].
    fed_at: u64,
    /// When the fast shutdown on SIGTERM began.
    stopping_since: Option<Instant>,
    /// The keeper as its primary's synchronous standby.
    gate: Gate,
}

/// Run the keeper until SIGTERM (and PostgreSQL stopped).
pub fn run(config: KeeperConfig) -> Result<(), KeeperError> {
    let io = |source| KeeperError::Io {
        dir: config.dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.dir).map_err(io)?;
    let socket_path = config.dir.join(SOCKET);
    if socket_path.as_os_str().len() > 107 {
        return Err(KeeperError::SocketPath(socket_path));
    }
    let Some(_lock) = crate::lock::exclusive_file(&config.dir.join(LOCK)).map_err(io)? else {
        let pid = std::fs::read_to_string(config.dir.join(PID_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        return Err(KeeperError::AlreadyRunning {
            dir: config.dir.clone(),
            pid,
        });
    };
    std::fs::write(
        config.dir.join(PID_FILE),
        format!("{}\n", std::process::id()),
    )
    .map_err(io)?;
    // Holding the lock, a socket file left behind is a dead keeper's.
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path).map_err(io)?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    // Working in its own directory, the keeper is found with the node's
    // other processes (`/proc/*/cwd`), and holds no other mount busy.
    std::env::set_current_dir(&config.dir).map_err(io)?;
    install_signals()?;

    let mut keeper = Keeper {
        canonical: std::fs::canonicalize(&config.data_dir).ok(),
        data_dir: config.data_dir.clone(),
        lease: Lease::None,
        fenced_for: None,
        child: None,
        last_exit: None,
        fences: 0,
        watchdog: None,
        watchdog_error: None,
        feeds: 0,
        fed_at: 0,
        stopping_since: None,
        gate: Gate::default(),
    };
    tracing::info!(dir = %config.dir.display(), data_dir = %config.data_dir.display(), pid = std::process::id(), "keeper running");
    let mut client: Option<Client> = None;
    loop {
        let now = boot_ms();
        keeper.reap();
        keeper.enforce(now);
        keeper.tend_watchdog(now);
        let running = keeper.child.is_some();
        keeper.gate.step(keeper.lease, running, now);
        if keeper.shutdown_done() {
            break;
        }
        let fenced = keeper.fenced_for.is_some()
            && keeper.fenced_for == until_deadline(keeper.lease)
            && keeper.child.is_none();
        let mut wait = rule::sleep_ms(keeper.lease, now, fenced);
        if rule::gates_commits(keeper.lease) && keeper.child.is_some() {
            wait = wait.min(keeper.gate.due_in(now).unwrap_or(wait));
        }
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &client {
            fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
        }
        // Whatever woke the loop, the gate reads and answers in the next
        // pass, after the lease was enforced.
        if let Some((fd, writing)) = keeper.gate.poll_interest() {
            let mut flags = PollFlags::POLLIN;
            if writing {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(fd, flags));
        }
        let timeout = PollTimeout::try_from(wait as i32).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "poll failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let listener_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let client_ready = client.is_some()
            && fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
        drop(fds);
        if client_ready {
            if let Some(c) = client.as_mut() {
                if !keeper.serve(c) {
                    client = None;
                }
            }
        }
        if listener_ready {
            if let Some(c) = accept(&listener) {
                // The newest agent wins: an old connection belongs to a
                // process that is gone or about to be.
                client = Some(c);
            }
        }
    }
    if let Some(w) = keeper.watchdog.take() {
        w.disarm();
    }
    let _ = std::fs::remove_file(&socket_path);
    let _ = std::fs::remove_file(config.dir.join(PID_FILE));
    tracing::info!("keeper stopped");
    Ok(())
}

fn until_deadline(lease: Lease) -> Option<u64> {
    match lease {
        Lease::Until { deadline, .. } => Some(deadline),
        _ => None,
    }
}

fn install_signals() -> Result<(), KeeperError> {
    let terminate = SigAction::new(
        SigHandler::Handler(on_terminate),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only increments an atomic (async-signal-safe).
    unsafe {
        sigaction(Signal::SIGTERM, &terminate).map_err(KeeperError::Signals)?;
        sigaction(Signal::SIGINT, &terminate).map_err(KeeperError::Signals)?;
        sigaction(Signal::SIGPIPE, &ignore).map_err(KeeperError::Signals)?;
        sigaction(Signal::SIGHUP, &ignore).map_err(KeeperError::Signals)?;
    }
    Ok(())
}

/// Take a new connection from the keeper's own user (or root) only.
fn accept(listener: &UnixListener) -> Option<Client> {
    let (stream, _) = match listener.accept() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
        Err(e) => {
            // Out of file descriptors, say: do not spin on a listener that
            // stays readable.
            tracing::warn!(error = %e, "cannot accept a connection");
            std::thread::sleep(Duration::from_millis(10));
            return None;
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "refused a connection from another user");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "refused a connection: no peer credentials");
            return None;
        }
    }
    // Non-blocking both ways: a client that does not read its replies is
    // dropped, never waited for.
    stream.set_nonblocking(true).ok()?;
    Some(Client {
        stream,
        buf: Vec::new(),
        attached: false,
    })
}

impl Keeper {
    fn child_pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Collect the postmaster's exit status once it has ended.
    fn reap(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(pid = child.id(), %status, "PostgreSQL exited");
                self.last_exit = Some(status.to_string());
                self.child = None;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the postmaster"),
        }
    }

    /// Stop PostgreSQL when the lease says so, or when shutting down.
    fn enforce(&mut self, now: u64) {
        if rule::must_fence(self.lease, now) {
            let deadline = until_deadline(self.lease);
            if self.fenced_for != deadline || self.child.is_some() {
                self.fenced_for = deadline;
                self.fence("the lease ran out");
            }
        }
        let signals = TERMINATE.load(Ordering::SeqCst);
        if signals == 0 {
            return;
        }
        match self.stopping_since {
            None => {
                self.stopping_since = Some(Instant::now());
                match self.child_pid() {
                    Some(pid) => {
                        tracing::info!(pid, "stopping: fast shutdown of PostgreSQL");
                        let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
                    }
                    None => {
                        // Nothing of ours runs; anything else in the data
                        // directory goes with us too.
                        self.fence("stopping");
                    }
                }
            }
            Some(since) if signals > 1 || since.elapsed() > STOP_LIMIT => {
                self.fence("stopping now");
            }
            Some(_) => {}
        }
    }

    fn shutdown_done(&self) -> bool {
        self.stopping_since.is_some() && self.child.is_none()
    }

    /// Stop every PostgreSQL process of the data directory now; disarm the
    /// watchdog once nothing runs (an unfed watchdog would reset the host
    /// for nothing). Fence first, log after: the log may sit on a slow disk.
    fn fence(&mut self, why: &str) {
        let t0 = Instant::now();
        let dir = self
            .canonical
            .clone()
            .unwrap_or_else(|| self.data_dir.clone());
        let outcome = process::fence(&dir, self.child_pid(), FENCE_KILL_WAIT);
        self.reap();
        match outcome {
            Ok(Fenced::Nothing) => {
                tracing::info!(why, "fence: nothing was running");
            }
            Ok(how) => {
                self.fences += 1;
                tracing::warn!(why, ?how, elapsed = ?t0.elapsed(), lease = ?self.lease, "PostgreSQL stopped (fenced)");
            }
            Err(pids) => {
                tracing::error!(
                    why,
                    ?pids,
                    "FENCE FAILED: PostgreSQL processes would not die"
                );
                return;
            }
        }
        if let Some(w) = self.watchdog.take() {
            tracing::info!(device = %w.device().display(), "watchdog disarmed");
            w.disarm();
        }
    }

    fn tend_watchdog(&mut self, now: u64) {
        let Some(w) = self.watchdog.as_mut() else {
            return;
        };
        if now.saturating_sub(self.fed_at) < FEED_EVERY_MS
            || !rule::may_feed(self.lease, now, w.timeout_s() as u64 * 1000)
        {
            return;
        }
        match w.feed() {
            Ok(()) => {
                self.feeds += 1;
                self.fed_at = now;
            }
            Err(e) => {
                if self.watchdog_error.is_none() {
                    tracing::error!(error = %e, "watchdog feed failed");
                }
                self.watchdog_error = Some(e.to_string());
            }
        }
    }

    /// Read what the agent sent and answer each complete line; false when
    /// the connection is gone.
    fn serve(&mut self, c: &mut Client) -> bool {
        let mut chunk = [0u8; 4096];
        let n = match c.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return true
            }
            Err(_) => return false,
        };
        c.buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=end).collect();
            let reply = match serde_json::from_slice::<Request>(&line) {
                Ok(request) => self.handle(c, request),
                Err(e) => Reply::Error {
                    message: format!("cannot read the request: {e}"),
                },
            };
            // A reply that does not fit in the socket buffer at once means
            // the client stopped reading: drop it (it reconnects).
            if c.stream.write_all(&encode(&reply)).is_err() {
                return false;
            }
        }
        c.buf.len() <= MAX_LINE
    }

    fn handle(&mut self, c: &mut Client, request: Request) -> Reply {
        let now = boot_ms();
        match request {
            Request::Attach { data_dir, gate } => {
                if !same_dir(&data_dir, &self.data_dir) {
                    return Reply::Error {
                        message: format!(
                            "this keeper runs {}, not {}",
                            self.data_dir.display(),
                            data_dir.display()
                        ),
                    };
                }
                c.attached = true;
                self.gate.set_spec(gate);
                Reply::State(self.state(now))
            }
            Request::Status => Reply::State(self.state(now)),
            _ if !c.attached => Reply::Error {
                message: "attach first".into(),
            },
            Request::Lease { lease, watchdog } => {
                self.set_lease(lease, watchdog);
                // A lease that is over already is enforced before the answer.
                self.enforce(now);
                Reply::State(self.state(now))
            }
            Request::Start(spec) => self.start(spec, now),
            Request::ProbeWatchdog(spec) => {
                // Never by arming it: opening a watchdog starts its countdown.
                let armed = self
                    .watchdog
                    .as_ref()
                    .is_some_and(|w| w.device() == spec.device);
                if !armed {
                    if let Err(e) = super::watchdog::probe(&spec.device) {
                        return Reply::Error {
                            message: e.to_string(),
                        };
                    }
                }
                Reply::State(self.state(now))
            }
        }
    }

    fn set_lease(&mut self, lease: Lease, watchdog: Option<WatchdogSpec>) {
        if std::mem::discriminant(&lease) != std::mem::discriminant(&self.lease)
            || lease.epoch() != self.lease.epoch()
        {
            tracing::info!(from = ?self.lease, to = ?lease, "lease");
        }
        self.lease = lease;
        let wanted = watchdog.filter(|_| lease != Lease::None);
        match (wanted, self.watchdog.as_mut()) {
            (None, _) => {
                if let Some(w) = self.watchdog.take() {
                    tracing::info!(device = %w.device().display(), "watchdog disarmed");
                    w.disarm();
                }
            }
            (Some(spec), Some(w)) if w.device() == spec.device => {
                if w.timeout_s() != spec.timeout_s {
                    if let Err(e) = w.set_timeout(spec.timeout_s) {
                        self.watchdog_error = Some(e.to_string());
                        if let Some(w) = self.watchdog.take() {
                            w.disarm();
                        }
                    }
                }
            }
            (Some(spec), _) => {
                if let Some(w) = self.watchdog.take() {
                    w.disarm();
                }
                match Watchdog::arm(&spec.device, spec.timeout_s) {
                    Ok(w) => {
                        tracing::info!(device = %spec.device.display(), timeout_s = w.timeout_s(), "watchdog armed");
                        self.watchdog = Some(w);
                        self.watchdog_error = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot arm the watchdog");
                        self.watchdog_error = Some(e.to_string());
                    }
                }
            }
        }
        // Feed at once: the lease may have just become valid again.
        self.fed_at = 0;
        self.tend_watchdog(boot_ms());
    }

    fn start(&mut self, spec: StartSpec, now: u64) -> Reply {
        // A postmaster fenced a moment ago may not be reaped yet.
        self.reap();
        if let Some(pid) = self.child_pid() {
            return Reply::Error {
                message: format!("PostgreSQL already runs under this keeper (pid {pid})"),
            };
        }
        if !rule::may_start(self.lease, now) {
            return Reply::Error {
                message: "the primary's lease has run out: PostgreSQL may not start until the leader grants a new one".into(),
            };
        }
        match spawn_postmaster(&spec) {
            Ok(child) => {
                let pid = child.id() as i32;
                tracing::info!(pid, program = %spec.program.display(), "PostgreSQL started");
                self.child = Some(child);
                if self.canonical.is_none() {
                    self.canonical = std::fs::canonicalize(&self.data_dir).ok();
                }
                Reply::Started { pid }
            }
            Err(e) => Reply::Error {
                message: format!("cannot start {}: {e}", spec.program.display()),
            },
        }
    }

    fn state(&self, now: u64) -> KeeperState {
        KeeperState {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            now,
            lease: self.lease,
            postmaster: self.child_pid(),
            last_exit: self.last_exit.clone(),
            fences: self.fences,
            watchdog: WatchdogStatus {
                armed: self.watchdog.is_some(),
                device: self.watchdog.as_ref().map(|w| w.device().to_path_buf()),
                timeout_s: self.watchdog.as_ref().map(|w| w.timeout_s()).unwrap_or(0),
                error: self.watchdog_error.clone(),
                feeds: self.feeds,
            },
            gate: Some(self.gate.status()),
        }
    }
}

/// Both name the same directory, compared as written (made absolute):
/// resolving links would touch a file system that may be stuck, while the
/// keeper must stay responsive. Agent and keeper read the same setting.
fn same_dir(a: &Path, b: &Path) -> bool {
    std::path::absolute(a).ok() == std::path::absolute(b).ok()
}

/// Fork and exec the postmaster: its own session (no terminal signals),
/// the requested user, and SIGQUIT when the keeper dies.
fn spawn_postmaster(spec: &StartSpec) -> std::io::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)?;
    let err: File = log.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    if let Some(gid) = spec.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = spec.uid {
        cmd.uid(uid);
    }
    let keeper = nix::unistd::getpid().as_raw();
    // SAFETY: runs in the forked child before exec; it calls only
    // async-signal-safe functions and allocates nothing. The standard
    // library switches uid/gid before running it, so the parent-death
    // signal set here is not cleared by that switch.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGQUIT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The keeper may have died before the signal was set.
            if libc::getppid() != keeper {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}
