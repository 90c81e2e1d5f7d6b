//! The cluster a drill runs against: real managers and agents (with their
//! keepers and PostgreSQL servers), each a process of this very binary on a
//! host of its own, plus the handful of things the drill does to them —
//! kill, freeze, restart — and a client for the managers' API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::net::{Host, Network};
use crate::proto::api::pg_quorum_client::PgQuorumClient;
use crate::proto::api::{
    ClusterRequest, ClusterStatus, FailoverRequest, GetStatusRequest, HistoryEvent,
    SetConfigRequest, SwitchoverRequest,
};

/// The name of the drill's cluster.
pub const CLUSTER: &str = "drill";
/// Ports, the same on every host (every host has an address of its own).
pub const MANAGER_PORT: u16 = 17001;
pub const PG_PORT: u16 = 15432;
pub const HTTP_PORT: u16 = 18008;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("the drill has no host named {0}")]
    UnknownHost(String),
    #[error("cannot prepare {path}: {source}")]
    Files {
        path: String,
        source: std::io::Error,
    },
}

/// A process of the drill's: killed (SIGCONT, SIGKILL) and reaped on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(
        what: &str,
        mut command: std::process::Command,
        log: &Path,
    ) -> Result<Proc, ClusterError> {
        use std::os::unix::process::CommandExt;
        let files = |source| ClusterError::Files {
            path: log.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(files)?;
        if let Some(dir) = log.parent() {
            // Working in the drill's directory: whatever is left there at
            // the end is found and stopped.
            command.current_dir(dir);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs in the
        // child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // If the drill itself is killed, its managers and agents
                // go with it (keepers and PostgreSQL are stopped by the
                // drill's teardown, or by hand: docs/operations/drill.md).
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(files)?)
            .stderr(file)
            // Its own process group: Ctrl-C in the drill's terminal reaches
            // the drill only, which then tears everything down in order.
            .process_group(0)
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                what: what.to_string(),
                source,
            })?;
        Ok(Proc { child })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn kill(mut self) {
        crate::process::signal_all(&[self.pid()], Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; SIGKILL if it has not exited within `limit`.
    fn terminate(mut self, limit: Duration) {
        crate::process::signal_all(&[self.pid()], Signal::SIGCONT);
        crate::process::signal_all(&[self.pid()], Signal::SIGTERM);
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// A manager: its id, its host, its process when it runs.
pub struct Manager {
    pub id: u64,
    pub host: Host,
    proc: Option<Proc>,
}

/// Managers and nodes on a drill's hosts.
pub struct Cluster {
    pub net: Network,
    pub dir: PathBuf,
    exe: PathBuf,
    /// Node names, which are also their hosts' names.
    pub nodes: Vec<String>,
    pub managers: Vec<Manager>,
    agents: BTreeMap<String, Option<Proc>>,
    peers: String,
}

/// Where each manager runs: its own host `m{i}`, or (colocated) the i-th
/// node's host, as in a small real deployment.
pub fn manager_hosts(nodes: usize, managers: usize, colocated: bool) -> Vec<String> {
    (1..=managers)
        .map(|i| {
            if colocated && i <= nodes {
                format!("n{i}")
            } else {
                format!("m{i}")
            }
        })
        .collect()
}

/// Every host name: the nodes' then the managers' own.
pub fn host_names(nodes: usize, managers: usize, colocated: bool) -> Vec<String> {
    let mut names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
    for m in manager_hosts(nodes, managers, colocated) {
        if !names.contains(&m) {
            names.push(m);
        }
    }
    names
}

impl Cluster {
    /// Start the managers on `net`'s hosts, then the agents (the first one
    /// alone, so that it bootstraps). Returns once the processes run; see
    /// [`Cluster::status`] for when the cluster is whole.
    pub fn start(
        net: Network,
        dir: &Path,
        exe: &Path,
        nodes: usize,
        managers: usize,
        colocated: bool,
    ) -> Result<Cluster, ClusterError> {
        let placement = manager_hosts(nodes, managers, colocated);
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            exe: exe.to_path_buf(),
            nodes: (1..=nodes).map(|i| format!("n{i}")).collect(),
            managers: Vec::new(),
            agents: BTreeMap::new(),
            peers: String::new(),
            net,
        };
        for (i, host) in placement.iter().enumerate() {
            let host = c.host(host)?.clone();
            c.managers.push(Manager {
                id: i as u64 + 1,
                host,
                proc: None,
            });
        }
        c.peers = c
            .managers
            .iter()
            .map(|m| format!("{}={}:{MANAGER_PORT}", m.id, m.host.address))
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=managers as u64 {
            c.start_manager(id)?;
        }
        Ok(c)
    }

    /// The host named `name`: one of the drill's own names (n1…, m1…),
    /// which always exist.
    fn host(&self, name: &str) -> Result<&Host, ClusterError> {
        self.net
            .host(name)
            .ok_or_else(|| ClusterError::UnknownHost(name.to_string()))
    }

    pub fn address_of(&self, name: &str) -> Result<String, ClusterError> {
        Ok(self.host(name)?.address.clone())
    }

    fn host_dir(&self, host: &str) -> Result<PathBuf, ClusterError> {
        let dir = self.dir.join(host);
        std::fs::create_dir_all(&dir).map_err(|source| ClusterError::Files {
            path: dir.display().to_string(),
            source,
        })?;
        // PostgreSQL runs as `postgres` when we are root: it must reach in.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        Ok(dir)
    }

    pub fn manager_addresses(&self) -> Vec<String> {
        self.managers
            .iter()
            .map(|m| format!("{}:{MANAGER_PORT}", m.host.address))
            .collect()
    }

    pub fn start_manager(&mut self, id: u64) -> Result<(), ClusterError> {
        let Some(i) = self.managers.iter().position(|m| m.id == id) else {
            return Ok(());
        };
        if self.managers[i].proc.is_some() {
            return Ok(());
        }
        let host = self.managers[i].host.clone();
        let dir = self.host_dir(&host.name)?;
        let mut cmd = self.net.command(&host, &self.exe);
        // Plaintext on the drill's private bridge.
        cmd.args(["manager", "--id", &id.to_string(), "--peers", &self.peers])
            .arg("--insecure")
            .arg("--data-dir")
            .arg(dir.join(format!("manager{id}")));
        let p = Proc::spawn(
            &format!("manager {id}"),
            cmd,
            &dir.join(format!("manager{id}.log")),
        )?;
        self.managers[i].proc = Some(p);
        Ok(())
    }

    pub fn manager_running(&self, id: u64) -> bool {
        self.managers.iter().any(|m| m.id == id && m.proc.is_some())
    }

    /// SIGKILL a manager.
    pub fn kill_manager(&mut self, id: u64) {
        if let Some(p) = self
            .managers
            .iter_mut()
            .find(|m| m.id == id)
            .and_then(|m| m.proc.take())
        {
            p.kill();
        }
    }

    /// SIGTERM a manager and wait for it to exit.
    pub fn stop_manager(&mut self, id: u64) {
        if let Some(p) = self
            .managers
            .iter_mut()
            .find(|m| m.id == id)
            .and_then(|m| m.proc.take())
        {
            p.terminate(Duration::from_secs(10));
        }
    }

    pub fn manager_pid(&self, id: u64) -> Option<i32> {
        self.managers
            .iter()
            .find(|m| m.id == id)?
            .proc
            .as_ref()
            .map(Proc::pid)
    }

    /// Managers running on `host`.
    pub fn managers_on(&self, host: &str) -> Vec<u64> {
        self.managers
            .iter()
            .filter(|m| m.host.name == host)
            .map(|m| m.id)
            .collect()
    }

    pub fn start_agent(&mut self, node: &str) -> Result<(), ClusterError> {
        if self.agents.get(node).is_some_and(Option::is_some) {
            return Ok(());
        }
        let host = self.host(node)?.clone();
        let dir = self.host_dir(node)?;
        let config = dir.join("agent.toml");
        let text = agent_config(
            &dir,
            &host,
            &self.net.subnet,
            &self.manager_addresses(),
            &Listen {
                cluster: CLUSTER,
                pg_port: PG_PORT,
                http_port: HTTP_PORT,
            },
        );
        std::fs::write(&config, text).map_err(|source| ClusterError::Files {
            path: config.display().to_string(),
            source,
        })?;
        let mut cmd = self.net.command(&host, &self.exe);
        cmd.args(["agent", "--config"]).arg(&config);
        let p = Proc::spawn(&format!("agent {node}"), cmd, &dir.join("agent.log"))?;
        self.agents.insert(node.to_string(), Some(p));
        Ok(())
    }

    pub fn agent_pid(&self, node: &str) -> Option<i32> {
        self.agents.get(node)?.as_ref().map(Proc::pid)
    }

    pub fn agent_running(&self, node: &str) -> bool {
        self.agent_pid(node).is_some()
    }

    /// SIGKILL the agent alone (its keeper and PostgreSQL run on).
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(p) = self.agents.get_mut(node).and_then(Option::take) {
            p.kill();
        }
    }

    pub fn keeper_pid(&self, node: &str) -> Option<i32> {
        crate::keeper::running_pid(&self.dir.join(node).join("agent"))
    }

    /// The postmaster and its children.
    pub fn postgres_pids(&self, node: &str) -> Vec<i32> {
        crate::process::postgres_processes(&self.dir.join(node).join("data"))
    }

    /// Every process of the node: agent, keeper, PostgreSQL.
    pub fn node_pids(&self, node: &str) -> Vec<i32> {
        let mut pids = self.postgres_pids(node);
        pids.extend(self.agent_pid(node));
        pids.extend(self.keeper_pid(node));
        pids
    }

    /// The host dies: everything on it is frozen first (so that nothing
    /// notices the others going), then killed.
    pub fn crash_host(&mut self, host: &str) {
        let managers = self.managers_on(host);
        let pids = crate::process::stop_all(|| self.host_pids(host));
        crate::process::signal_all(&pids, Signal::SIGKILL);
        self.kill_agent(host);
        for id in managers {
            self.kill_manager(id);
        }
        crate::process::wait_gone(&pids, Duration::from_secs(10));
    }

    /// Start what runs on `host` again (after a crash).
    pub fn restart_host(&mut self, host: &str) -> Result<(), ClusterError> {
        for id in self.managers_on(host) {
            self.start_manager(id)?;
        }
        if self.nodes.iter().any(|n| n == host) {
            self.start_agent(host)?;
        }
        Ok(())
    }

    /// Every process on `host`: its node's and its managers.
    pub fn host_pids(&self, host: &str) -> Vec<i32> {
        let mut pids = if self.nodes.iter().any(|n| n == host) {
            self.node_pids(host)
        } else {
            Vec::new()
        };
        pids.extend(
            self.managers_on(host)
                .iter()
                .filter_map(|id| self.manager_pid(*id)),
        );
        pids
    }

    /// Stop everything: agents, then keepers (which stop PostgreSQL), then
    /// managers; whatever is left under the drill's directory is killed.
    pub fn shutdown(&mut self) {
        let keepers: Vec<i32> = self
            .nodes
            .iter()
            .filter_map(|n| self.keeper_pid(n))
            .collect();
        for p in self.agents.values_mut().filter_map(Option::take) {
            p.terminate(Duration::from_secs(10));
        }
        crate::process::signal_all(&keepers, Signal::SIGCONT);
        crate::process::signal_all(&keepers, Signal::SIGTERM);
        crate::process::wait_gone(&keepers, Duration::from_secs(30));
        for m in &mut self.managers {
            if let Some(p) = m.proc.take() {
                p.terminate(Duration::from_secs(10));
            }
        }
        self.kill_leftovers();
    }

    fn kill_leftovers(&mut self) {
        for p in self.agents.values_mut().filter_map(Option::take) {
            p.kill();
        }
        for m in &mut self.managers {
            if let Some(p) = m.proc.take() {
                p.kill();
            }
        }
        let left = crate::process::processes_under(&self.dir);
        crate::process::signal_all(&left, Signal::SIGCONT);
        crate::process::signal_all(&left, Signal::SIGKILL);
        crate::process::wait_gone(&left, Duration::from_secs(10));
    }

    /// A connection string that follows the primary.
    pub fn dsn(&self) -> Result<String, ClusterError> {
        let hosts = self
            .nodes
            .iter()
            .map(|n| self.address_of(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!(
            "host={} port={} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=1",
            hosts.join(","),
            vec![PG_PORT.to_string(); self.nodes.len()].join(",")
        ))
    }

    /// A connection string for one node.
    pub fn node_dsn(&self, node: &str) -> Result<String, ClusterError> {
        Ok(format!(
            "host={} port={PG_PORT} user=postgres dbname=postgres connect_timeout=1",
            self.address_of(node)?
        ))
    }

    /// The managers' API, for this cluster.
    pub fn api(&self) -> ManagerApi {
        ManagerApi {
            addresses: self.manager_addresses(),
        }
    }
}

/// The managers' public API for the drill's cluster: each call asks the
/// managers in turn and takes the first answer. Cheap to clone, so that a
/// task of its own (the history observer) can hold one.
#[derive(Clone)]
pub struct ManagerApi {
    addresses: Vec<String>,
}

impl ManagerApi {
    fn api_clients(&self) -> Vec<PgQuorumClient<tonic::transport::Channel>> {
        self.addresses
            .iter()
            .filter_map(|a| crate::transport::lazy_channel(a).ok())
            .map(PgQuorumClient::new)
            .collect()
    }

    /// The cluster's status from the first manager that answers within a
    /// second (linearizable: through the leader).
    pub async fn status(&self) -> Option<ClusterStatus> {
        for mut c in self.api_clients() {
            let r = c
                .get_status(request(GetStatusRequest {
                    cluster: CLUSTER.into(),
                    local: false,
                }))
                .await;
            if let Ok(r) = r {
                return Some(r.into_inner());
            }
        }
        None
    }

    pub async fn history(&self) -> Option<Vec<HistoryEvent>> {
        for mut c in self.api_clients() {
            let r = c
                .history(request(ClusterRequest {
                    cluster: CLUSTER.into(),
                    local: false,
                }))
                .await;
            if let Ok(r) = r {
                return Some(r.into_inner().events);
            }
        }
        None
    }

    /// The dynamic configuration, as `config show` prints it.
    pub async fn config(&self) -> Option<BTreeMap<String, String>> {
        for mut c in self.api_clients() {
            let r = c
                .get_config(request(ClusterRequest {
                    cluster: CLUSTER.into(),
                    local: false,
                }))
                .await;
            if let Ok(r) = r {
                return Some(r.into_inner().config.into_iter().collect());
            }
        }
        None
    }

    /// Change the dynamic configuration: the managers' refusal, or that
    /// none answered.
    pub async fn set_config(&self, changes: &[(String, String)]) -> Result<(), String> {
        let mut last = String::from("no manager answered");
        for mut c in self.api_clients() {
            let r = c
                .set_config(request(SetConfigRequest {
                    cluster: CLUSTER.into(),
                    changes: changes.iter().cloned().collect(),
                }))
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    return Err(s.message().to_string())
                }
                Err(s) => last = s.message().to_string(),
            }
        }
        Err(last)
    }

    /// `switchover --to NODE`: accepted or not, and the managers' answer.
    pub async fn switchover(&self, to: &str) -> (bool, String) {
        self.operation(|mut c| {
            let to = to.to_string();
            async move {
                c.switchover(request(SwitchoverRequest {
                    cluster: CLUSTER.into(),
                    to,
                    at: String::new(),
                    from: String::new(),
                    cancel: false,
                }))
                .await
            }
        })
        .await
    }

    /// `failover --to NODE`: accepted or not, and the managers' answer.
    pub async fn failover(&self, to: &str) -> (bool, String) {
        self.operation(|mut c| {
            let to = to.to_string();
            async move {
                c.failover(request(FailoverRequest {
                    cluster: CLUSTER.into(),
                    to,
                    old_primary_stopped: false,
                }))
                .await
            }
        })
        .await
    }

    async fn operation<F, Fut>(&self, call: F) -> (bool, String)
    where
        F: Fn(PgQuorumClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<
            Output = Result<tonic::Response<crate::proto::api::OperationResponse>, tonic::Status>,
        >,
    {
        let mut last = String::from("no manager answered");
        for c in self.api_clients() {
            match call(c).await {
                Ok(r) => return (true, r.into_inner().message),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                    ) =>
                {
                    last = s.message().to_string();
                }
                Err(s) => return (false, s.message().to_string()),
            }
        }
        (false, last)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_leftovers();
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(1));
    r
}

/// Where a node listens: its cluster, its PostgreSQL port and its HTTP port
/// (on its host's address).
pub struct Listen<'a> {
    pub cluster: &'a str,
    pub pg_port: u16,
    pub http_port: u16,
}

/// The agent configuration of a test node on `host` (data under `dir`):
/// trust authentication for the hosts' /24 and loopback only, and
/// plaintext on that private bridge (`insecure`).
pub fn agent_config(
    dir: &Path,
    host: &Host,
    subnet: &str,
    managers: &[String],
    listen: &Listen,
) -> String {
    format!(
        "# pgquorum test node {name}: trust authentication on the test hosts only.\n\
         name = \"{name}\"\ncluster = \"{cluster}\"\nmanagers = [{managers}]\nhttp_listen = \"{addr}:{http}\"\n\
         state_dir = \"{state}\"\nregister_timeout = \"60s\"\ninsecure = true\n\n[postgresql]\ndata_dir = \"{data}\"\n\
         listen = \"{addr}\"\nport = {pg}\nsocket_dir = \"{socket}\"\nlog_file = \"{log}\"\n\
         hba = [\"local all all trust\", \"host all all {subnet}.0/24 trust\", \"host replication all {subnet}.0/24 trust\", \"host all all 127.0.0.0/8 trust\", \"host replication all 127.0.0.0/8 trust\"]\n\n\
         [postgresql.parameters]\nshared_buffers = \"32MB\"\nmax_connections = \"50\"\n",
        name = host.name,
        cluster = listen.cluster,
        http = listen.http_port,
        pg = listen.pg_port,
        addr = host.address,
        managers = managers.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", "),
        state = dir.join("agent").display(),
        data = dir.join("data").display(),
        socket = dir.join("socket").display(),
        log = dir.join("postgresql.log").display(),
    )
}
