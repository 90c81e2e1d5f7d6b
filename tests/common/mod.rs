//! Shared test harness: real `pgquorum` processes, free ports, polling with
//! bounded timeouts, and cleanup on drop (even when a test fails).

#![allow(dead_code)]

pub mod deploy;
pub mod haproxy;
pub mod netns;
pub mod sandbox;
pub mod synthetic;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgquorum::proto::agent::agent_channel_client::AgentChannelClient;
use pgquorum::proto::agent::AgentEnvelope;
use pgquorum::proto::api::pg_quorum_client::PgQuorumClient;
use pgquorum::proto::api::*;
use tonic::transport::Channel;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgquorum"))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    loop {
        let port = 20000 + (rand::random::<u16>() % 20000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Poll `check` every 100 ms until it returns `Some`, or panic after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the CLI; its output. Every CLI call is bounded by its own retry limit.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pgquorum")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn");
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `timeout` for a clean exit; its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        self.kill9();
    }
}

/// A group of manager processes on loopback, in a temporary directory.
pub struct Managers {
    pub dir: tempfile::TempDir,
    pub ports: BTreeMap<u64, u16>,
    /// Each manager's Prometheus `/metrics` port.
    pub metrics_ports: BTreeMap<u64, u16>,
    pub procs: BTreeMap<u64, Proc>,
    pub initial: Vec<u64>,
}

impl Managers {
    /// Start `n` managers forming a new group.
    pub fn start(n: u64) -> Managers {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: BTreeMap<u64, u16> = (1..=n).map(|id| (id, free_port())).collect();
        let mut m = Managers {
            dir,
            ports,
            // Filled by `spawn`, which gives every manager one.
            metrics_ports: BTreeMap::new(),
            procs: BTreeMap::new(),
            initial: (1..=n).collect(),
        };
        for id in 1..=n {
            m.spawn(id);
        }
        m
    }

    pub fn address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[&id])
    }

    /// Manager `id`'s metrics address (HOST:PORT).
    pub fn metrics_address(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.metrics_ports[&id])
    }

    pub fn addresses(&self) -> String {
        self.ports
            .keys()
            .map(|id| self.address(*id))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn peers(&self) -> String {
        self.initial
            .iter()
            .map(|id| format!("{id}={}", self.address(*id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("m{id}"))
    }

    pub fn log(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("m{id}.log"))
    }

    /// (Re)start manager `id` as one of the initial voters.
    pub fn spawn(&mut self, id: u64) {
        self.metrics_ports.entry(id).or_insert_with(free_port);
        let mut cmd = Command::new(bin());
        cmd.args([
            "manager",
            "--id",
            &id.to_string(),
            "--peers",
            &self.peers(),
            "--metrics-listen",
            &self.metrics_address(id),
            "--data-dir",
        ])
        .arg(self.data_dir(id));
        let p = Proc::spawn(&format!("manager {id}"), &mut cmd, &self.log(id));
        self.procs.insert(id, p);
    }

    /// Start a new manager that waits to be added.
    pub fn spawn_joiner(&mut self, id: u64) {
        let port = free_port();
        self.ports.insert(id, port);
        let mut cmd = Command::new(bin());
        cmd.args([
            "manager",
            "--id",
            &id.to_string(),
            "--join",
            "--listen",
            &self.address(id),
            "--data-dir",
        ])
        .arg(self.data_dir(id));
        let p = Proc::spawn(&format!("manager {id}"), &mut cmd, &self.log(id));
        self.procs.insert(id, p);
    }

    pub fn kill9(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            p.kill9();
        }
    }

    pub async fn client(&self, id: u64) -> PgQuorumClient<Channel> {
        let channel = pgquorum::transport::lazy_channel(&self.address(id)).expect("address");
        PgQuorumClient::new(channel)
    }

    /// The managers as manager `id` sees them, if it answers.
    pub async fn view(&self, id: u64) -> Option<Vec<ManagerInfo>> {
        let mut c = self.client(id).await;
        let mut req = tonic::Request::new(ListManagersRequest {});
        req.set_timeout(Duration::from_secs(2));
        c.list_managers(req)
            .await
            .ok()
            .map(|r| r.into_inner().managers)
    }

    /// Wait until the running managers agree on one leader; its id.
    pub async fn leader(&self, among: &[u64]) -> u64 {
        wait_for(
            "a single agreed leader",
            Duration::from_secs(20),
            || async {
                let mut leaders = Vec::new();
                for id in among {
                    let view = self.view(*id).await?;
                    let me = view.iter().find(|m| m.id == *id)?;
                    if me.role == "leader" {
                        leaders.push(*id);
                    }
                }
                (leaders.len() == 1).then(|| leaders[0])
            },
        )
        .await
    }

    /// Register a node, creating cluster `cluster`; retried until a leader takes it.
    pub async fn register(&self, cluster: &str, node: &str, port: u16) {
        let reg = pgquorum::cluster::wire::Registration {
            cluster: cluster.to_string(),
            node: node.to_string(),
            host: "127.0.0.1".to_string(),
            port,
            http: "127.0.0.1:1".to_string(),
            tags: Default::default(),
        };
        let payload = serde_json::to_vec(&reg).expect("json");
        wait_for("registration", Duration::from_secs(20), || {
            let payload = payload.clone();
            async move {
                for id in self.procs.keys() {
                    let channel = pgquorum::transport::lazy_channel(&self.address(*id)).ok()?;
                    let mut c = AgentChannelClient::new(channel);
                    if c.register(AgentEnvelope {
                        payload: payload.clone(),
                    })
                    .await
                    .is_ok()
                    {
                        return Some(());
                    }
                }
                None
            }
        })
        .await
    }

    /// Commit a config change through manager `id`; Ok if acknowledged.
    pub async fn set_param(&self, id: u64, key: &str, value: &str) -> Result<(), tonic::Status> {
        let mut c = self.client(id).await;
        let mut req = tonic::Request::new(SetConfigRequest {
            cluster: "main".to_string(),
            changes: [(format!("postgresql.parameters.{key}"), value.to_string())].into(),
        });
        req.set_timeout(Duration::from_secs(5));
        c.set_config(req).await.map(|_| ())
    }

    /// The configuration as manager `id` has applied it (a local read).
    pub async fn local_config(&self, id: u64) -> Option<BTreeMap<String, String>> {
        let mut c = self.client(id).await;
        let mut req = tonic::Request::new(ClusterRequest {
            cluster: "main".to_string(),
            local: true,
        });
        req.set_timeout(Duration::from_secs(2));
        c.get_config(req)
            .await
            .ok()
            .map(|r| r.into_inner().config.into_iter().collect())
    }
}

/// Kills every process working in a node's directory on drop — its keeper
/// and its PostgreSQL, which outlive an agent killed by its `Proc` guard.
pub struct NodeGuard(pub PathBuf);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        kill_processes_under(&self.0);
    }
}

/// SIGCONT + SIGKILL every process working in `dir` or below (keepers and
/// PostgreSQL servers of a test), and wait for them to go.
pub fn kill_processes_under(dir: &Path) {
    let pids = pgquorum::process::processes_under(dir);
    pgquorum::process::signal_all(&pids, Signal::SIGCONT);
    pgquorum::process::signal_all(&pids, Signal::SIGKILL);
    pgquorum::process::wait_gone(&pids, Duration::from_secs(5));
}

/// Set (CI does) to turn the skip of a test that needs root into a failure:
/// a CI that lost root must not stay green without those tests.
pub const REQUIRE_ROOT_TESTS: &str = "PGQUORUM_REQUIRE_ROOT_TESTS";

/// Whether a root-only test can run: when `ok`, yes; otherwise a visible
/// skip, or a failure when [`REQUIRE_ROOT_TESTS`] is set.
pub fn root_test_can_run(ok: bool, test: &str, needs: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_ROOT_TESTS).is_none(),
        "{test} needs {needs}, and {REQUIRE_ROOT_TESTS} says it must run"
    );
    eprintln!("SKIPPED {test}: needs {needs}");
    false
}

/// Run `program args` (with `env`) as the PostgreSQL OS user when root,
/// bounded to 120 s; its standard output, or a panic naming the program
/// and its output.
pub fn as_pg(program: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg("120");
    if pg_owner().is_some() {
        cmd.args(["runuser", "-u", "postgres", "--"]);
    }
    let out = cmd
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run a PostgreSQL program");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The `postgres` OS user's uid and gid (programs run as it when root).
pub fn pg_owner() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .expect("look up the postgres user")
        .expect("a postgres OS user");
    Some((u.uid.as_raw(), u.gid.as_raw()))
}
