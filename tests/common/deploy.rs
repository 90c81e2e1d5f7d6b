//! A pgquorum deployment for tests: one manager and one agent (with its
//! PostgreSQL) per host, where a host is either a network namespace or just
//! an address on loopback. Plus the client side: writers that record every
//! acknowledged row, so that tests can count what was lost and check that
//! two primaries never took writes at the same time.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgquorum::proto::api::{ClusterStatus, GetStatusRequest, NodeStatus};

use super::netns::{Host, Network};
use super::{bin, wait_for, Proc};

pub const MANAGER_PORT: u16 = 7001;
pub const PG_PORT: u16 = 5432;
pub const HTTP_PORT: u16 = 8008;
pub const METRICS_PORT: u16 = 9187;

/// Managers and agents on network-namespace hosts.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
    /// The hosts' /24 (first three octets), trusted by PostgreSQL.
    pub subnet: String,
    pub managers: BTreeMap<String, Proc>,
    pub agents: BTreeMap<String, Proc>,
    pub peers: String,
    /// Extra agent configuration: top-level keys (`{host}` stands for the
    /// host's name), and tables at the end.
    pub agent_top: String,
    /// Extra keys of the agents' `[postgresql]` table.
    pub agent_postgresql: String,
    pub agent_tables: String,
    /// Extra environment of the agents (test hooks).
    pub agent_env: Vec<(String, String)>,
}

fn traversable_tempdir() -> tempfile::TempDir {
    // PGQ_KEEP=1 keeps the logs and data of a run for a post-mortem.
    let dir = tempfile::Builder::new()
        .prefix("pgq-net-")
        .disable_cleanup(std::env::var_os("PGQ_KEEP").is_some())
        .tempdir_in("/tmp")
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

impl Deployment {
    /// Start a manager on every host of `net`, then the agents (the first
    /// host's agent first, so that it bootstraps).
    pub async fn start(net: &Network, extra_config: &[(&str, &str)]) -> Deployment {
        Self::start_custom(net, extra_config, "", "", &[]).await
    }

    /// `start`, with extra agent configuration (top-level keys and tables)
    /// and environment.
    pub async fn start_custom(
        net: &Network,
        extra_config: &[(&str, &str)],
        agent_top: &str,
        agent_tables: &str,
        agent_env: &[(&str, &str)],
    ) -> Deployment {
        Self::start_full(net, extra_config, agent_top, "", agent_tables, agent_env).await
    }

    /// `start_custom`, with extra keys in the agents' `[postgresql]` table
    /// too.
    pub async fn start_full(
        net: &Network,
        extra_config: &[(&str, &str)],
        agent_top: &str,
        agent_postgresql: &str,
        agent_tables: &str,
        agent_env: &[(&str, &str)],
    ) -> Deployment {
        let dir = traversable_tempdir();
        let peers = net
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{}={}:{MANAGER_PORT}", i + 1, h.address))
            .collect::<Vec<_>>()
            .join(",");
        let mut d = Deployment {
            dir,
            hosts: net.hosts.clone(),
            subnet: net.subnet.clone(),
            managers: BTreeMap::new(),
            agents: BTreeMap::new(),
            peers,
            agent_top: agent_top.to_string(),
            agent_postgresql: agent_postgresql.to_string(),
            agent_tables: agent_tables.to_string(),
            agent_env: agent_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..net.hosts.len() {
            d.start_manager(net, i);
        }
        for i in 0..net.hosts.len() {
            d.start_agent(net, i);
            if i == 0 {
                let host = net.hosts[0].name.clone();
                wait_for(
                    "the first node to register",
                    Duration::from_secs(60),
                    || async {
                        d.status()
                            .await
                            .filter(|s| s.nodes.iter().any(|n| n.name == host))
                            .map(|_| ())
                    },
                )
                .await;
                if !extra_config.is_empty() {
                    d.set_config(extra_config).await;
                }
            }
        }
        d.wait_all_streaming(net.hosts.len(), Duration::from_secs(180))
            .await;
        d
    }

    /// A deployment on `net` with nothing started yet: its hosts'
    /// directories exist (for data directories prepared beforehand); start
    /// its managers and agents with `start_manager` and `start_agent`.
    pub fn unstarted(
        net: &Network,
        agent_top: &str,
        agent_postgresql: &str,
        agent_tables: &str,
    ) -> Deployment {
        let d = Deployment {
            dir: traversable_tempdir(),
            hosts: net.hosts.clone(),
            subnet: net.subnet.clone(),
            managers: BTreeMap::new(),
            agents: BTreeMap::new(),
            peers: net
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| format!("{}={}:{MANAGER_PORT}", i + 1, h.address))
                .collect::<Vec<_>>()
                .join(","),
            agent_top: agent_top.to_string(),
            agent_postgresql: agent_postgresql.to_string(),
            agent_tables: agent_tables.to_string(),
            agent_env: Vec::new(),
        };
        for h in &net.hosts {
            let dir = d.host_dir(h);
            std::fs::create_dir_all(&dir).expect("host dir");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        d
    }

    pub fn host_dir(&self, host: &Host) -> PathBuf {
        self.dir.path().join(&host.name)
    }

    pub fn start_manager(&mut self, net: &Network, i: usize) {
        let peers = self.peers.clone();
        let metrics = format!("{}:{METRICS_PORT}", net.hosts[i].address);
        self.start_manager_with(net, i, &["--peers", &peers, "--metrics-listen", &metrics]);
    }

    /// Start manager `i` with `extra` arguments instead of `--peers`.
    pub fn start_manager_with(&mut self, net: &Network, i: usize, extra: &[&str]) {
        let host = &net.hosts[i];
        let dir = self.host_dir(host);
        std::fs::create_dir_all(&dir).expect("host dir");
        let mut cmd = net.command(host, &bin());
        // Plaintext on the test hosts' private bridge.
        cmd.args(["manager", "--id", &(i + 1).to_string(), "--insecure"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("manager"));
        let p = Proc::spawn(
            &format!("manager {}", host.name),
            &mut cmd,
            &dir.join("manager.log"),
        );
        self.managers.insert(host.name.clone(), p);
    }

    pub fn start_agent(&mut self, net: &Network, i: usize) {
        let host = &net.hosts[i];
        let dir = self.host_dir(host);
        std::fs::create_dir_all(&dir).expect("host dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let config = dir.join("agent.toml");
        // `{host}` in the extra configuration is this host's name.
        let text = format!(
            "{}\n{}\n{}",
            self.agent_top.replace("{host}", &host.name),
            pgquorum::drill::cluster::agent_config(
                &dir,
                host,
                &self.subnet,
                &self.manager_addresses(),
                &pgquorum::drill::cluster::Listen {
                    cluster: "main",
                    pg_port: PG_PORT,
                    http_port: HTTP_PORT,
                }
            )
            .replacen(
                "[postgresql]\n",
                &format!("[postgresql]\n{}", self.agent_postgresql),
                1
            ),
            self.agent_tables
        );
        std::fs::write(&config, text).expect("agent config");
        let mut cmd = net.command(host, &bin());
        cmd.args(["agent", "--config"]).arg(&config);
        for (k, v) in &self.agent_env {
            cmd.env(k, v);
        }
        let p = Proc::spawn(
            &format!("agent {}", host.name),
            &mut cmd,
            &dir.join("agent.log"),
        );
        self.agents.insert(host.name.clone(), p);
    }

    pub fn manager_addresses(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("{}:{MANAGER_PORT}", h.address))
            .collect()
    }

    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
            self.hosts.iter().map(|h| h.address.clone()).collect::<Vec<_>>().join(","),
            vec![PG_PORT.to_string(); self.hosts.len()].join(",")
        )
    }

    /// Cluster status from any manager that answers (linearizable).
    pub async fn status(&self) -> Option<ClusterStatus> {
        for a in self.manager_addresses() {
            let Ok(channel) = pgquorum::transport::lazy_channel(&a) else {
                continue;
            };
            let mut c = pgquorum::proto::api::pg_quorum_client::PgQuorumClient::new(channel);
            let mut req = tonic::Request::new(GetStatusRequest {
                cluster: "main".into(),
                local: false,
            });
            req.set_timeout(Duration::from_secs(2));
            if let Ok(r) = c.get_status(req).await {
                return Some(r.into_inner());
            }
        }
        None
    }

    pub async fn set_config(&self, changes: &[(&str, &str)]) {
        let changes: std::collections::HashMap<String, String> = changes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wait_for("config set", Duration::from_secs(30), || {
            let changes = changes.clone();
            async move {
                for a in self.manager_addresses() {
                    let channel = pgquorum::transport::lazy_channel(&a).ok()?;
                    let mut c =
                        pgquorum::proto::api::pg_quorum_client::PgQuorumClient::new(channel);
                    let req = pgquorum::proto::api::SetConfigRequest {
                        cluster: "main".into(),
                        changes: changes.clone(),
                    };
                    if c.set_config(req).await.is_ok() {
                        return Some(());
                    }
                }
                None
            }
        })
        .await
    }

    /// Wait until the primary takes writes and every other node streams.
    pub async fn wait_all_streaming(&self, nodes: usize, limit: Duration) -> ClusterStatus {
        wait_for(
            "primary healthy and every replica streaming",
            limit,
            || async {
                let s = self.status().await?;
                // In the cluster's epoch: a node still in an older one is
                // about to be told to follow (again).
                let current = |n: &&NodeStatus| n.healthy && n.epoch == s.epoch;
                let healthy_primary = s
                    .nodes
                    .iter()
                    .filter(|n| n.role == "primary")
                    .filter(current)
                    .count()
                    == 1;
                let streaming = s
                    .nodes
                    .iter()
                    .filter(|n| n.role == "replica")
                    .filter(current)
                    .count()
                    == nodes - 1;
                (s.nodes.len() == nodes && healthy_primary && streaming).then_some(s)
            },
        )
        .await
    }

    pub fn node<'a>(s: &'a ClusterStatus, name: &str) -> &'a NodeStatus {
        s.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node in status")
    }

    pub fn host_of_node(&self, node: &str) -> Host {
        self.hosts
            .iter()
            .find(|h| h.name == node)
            .cloned()
            .expect("host")
    }

    /// The manager id running on `host`.
    pub fn manager_id(&self, host: &Host) -> u64 {
        self.hosts
            .iter()
            .position(|h| h.name == host.name)
            .expect("host") as u64
            + 1
    }

    /// HTTP status code of an agent endpoint, or None when unreachable.
    pub async fn http(&self, host: &Host, path: &str) -> Option<u16> {
        http_get(&format!("{}:{HTTP_PORT}", host.address), path).await
    }
}

/// A minimal HTTP GET (status code only), bounded to 2 s.
pub async fn http_get(address: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(address).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i64,
    /// Address of the server that acknowledged it.
    pub server: String,
    /// Its port (sandbox nodes share one address).
    pub port: u16,
    pub sent: Instant,
    pub acked: Instant,
}

/// Failed write attempts: when each began, and why.
pub type Failures = Arc<Mutex<Vec<(Instant, String)>>>;

/// Client writers: one through the multi-host connection string, and one
/// prober per node writing straight to it, each recording acknowledgements.
pub struct Writers {
    stop: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
    pub acks: Arc<Mutex<Vec<Ack>>>,
    /// Failed attempts of the multi-host writer (connection or statement):
    /// when each began, and why.
    pub errors: Failures,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Create the table (through `dsn`) and start writing every `every`.
    pub async fn start(dsn: &str, direct: &[(String, u16)], every: Duration) -> Writers {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .expect("connect to the primary");
        tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, via text)")
            .await
            .expect("create table");
        // Ids after any a previous writer left: a reused id fails as a
        // duplicate and would look like an outage.
        let first: i64 = client
            .query_one("SELECT coalesce(max(id), 0) + 1 FROM acked", &[])
            .await
            .expect("max id")
            .get(0);
        let w = Writers {
            stop: Arc::new(AtomicBool::new(false)),
            next_id: Arc::new(AtomicU64::new(first as u64)),
            acks: Arc::new(Mutex::new(Vec::new())),
            errors: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        };
        let mut w = w;
        let mut targets = vec![dsn.to_string()];
        for (host, port) in direct {
            targets.push(format!(
                "host={host} port={port} user=postgres dbname=postgres connect_timeout=1"
            ));
        }
        for (i, target) in targets.into_iter().enumerate() {
            let (stop, next, acks) = (w.stop.clone(), w.next_id.clone(), w.acks.clone());
            // Only the multi-host writer's failures mean anything: the
            // direct probers fail against every replica all the time.
            let errors = (i == 0).then(|| w.errors.clone());
            w.tasks.push(tokio::spawn(async move {
                write_loop(target, every, stop, next, acks, errors).await
            }));
        }
        w
    }

    /// Failures of the multi-host writer so far.
    pub fn errors(&self) -> Vec<(Instant, String)> {
        self.errors.lock().expect("errors").clone()
    }

    pub async fn stop(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let acks = self.acks.lock().expect("acks").clone();
        acks
    }

    pub fn count(&self) -> usize {
        self.acks.lock().expect("acks").len()
    }

    /// Acknowledged writes so far, by server.
    pub fn acks_by(&self, server: &str) -> Vec<Ack> {
        self.acks
            .lock()
            .expect("acks")
            .iter()
            .filter(|a| a.server == server)
            .cloned()
            .collect()
    }
}

async fn write_loop(
    target: String,
    every: Duration,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Option<Failures>,
) {
    let failed = |at: Instant, why: String| {
        if let Some(e) = &errors {
            e.lock().expect("errors").push((at, why));
        }
    };
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            let at = Instant::now();
            client = match tokio::time::timeout(
                Duration::from_secs(2),
                tokio_postgres::connect(&target, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                Ok(Err(e)) => {
                    failed(at, format!("connect: {e}"));
                    None
                }
                Err(_) => {
                    failed(at, "connect: timed out".into());
                    None
                }
            };
        }
        if let Some(c) = &client {
            let id = next.fetch_add(1, Ordering::SeqCst) as i64;
            let sent = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                c.query_one(
                    "INSERT INTO acked (id, via) VALUES ($1, 'w') RETURNING host(inet_server_addr()), inet_server_port()",
                    &[&id],
                ),
            )
            .await;
            match r {
                Ok(Ok(row)) => {
                    let server: String = row.get(0);
                    let port: i32 = row.get(1);
                    acks.lock().expect("acks").push(Ack {
                        id,
                        server,
                        port: port as u16,
                        sent,
                        acked: Instant::now(),
                    });
                }
                Ok(Err(e)) => {
                    failed(sent, format!("insert: {e}"));
                    client = None;
                }
                Err(_) => {
                    failed(sent, "insert: timed out".into());
                    client = None;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Ids present on the server at `host:port` (read after everything healed).
pub async fn ids_on(host: &str, port: u16) -> std::collections::BTreeSet<i64> {
    let dsn = format!("host={host} port={port} user=postgres dbname=postgres connect_timeout=2");
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c.query("SELECT id FROM acked", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub use pgquorum::process::postgres_processes as postgres_pids;

fn signal(pids: &[i32], sig: nix::sys::signal::Signal) {
    pgquorum::process::signal_all(pids, sig);
}

impl Deployment {
    /// Stop `node` for good: its agent, then its keeper (which stops its
    /// PostgreSQL), as before `pgquorum node remove`.
    pub fn stop_node(&mut self, node: &str) {
        let host = self.host_of_node(node);
        let keeper = self.keeper_pid(&host).expect("the node's keeper");
        if let Some(mut agent) = self.agents.remove(node) {
            assert!(
                agent.terminate(Duration::from_secs(60)).is_some(),
                "agent did not stop"
            );
        }
        pgquorum::process::signal_all(&[keeper], nix::sys::signal::Signal::SIGTERM);
        assert!(pgquorum::process::wait_gone(
            &[keeper],
            Duration::from_secs(60)
        ));
    }

    /// The host's keeper, if it runs.
    pub fn keeper_pid(&self, host: &Host) -> Option<i32> {
        pgquorum::keeper::running_pid(&self.host_dir(host).join("agent"))
    }

    fn host_pids(&self, host: &Host, with_manager: bool) -> Vec<i32> {
        let mut pids = postgres_pids(&self.host_dir(host).join("data"));
        pids.extend(self.agents.get(&host.name).and_then(|p| p.pid()));
        pids.extend(self.keeper_pid(host));
        if with_manager {
            pids.extend(self.managers.get(&host.name).and_then(|p| p.pid()));
        }
        pids
    }

    /// The host dies: its agent, keeper, PostgreSQL (and manager) are frozen
    /// and then killed, so that none of them notices the others going.
    pub fn crash_host(&mut self, host: &Host, with_manager: bool) {
        let pids = self.host_pids(host, with_manager);
        signal(&pids, nix::sys::signal::Signal::SIGSTOP);
        signal(&pids, nix::sys::signal::Signal::SIGKILL);
        if let Some(p) = self.agents.get_mut(&host.name) {
            p.kill9();
        }
        if with_manager {
            if let Some(p) = self.managers.get_mut(&host.name) {
                p.kill9();
            }
        }
        let data = self.host_dir(host).join("data");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !postgres_pids(&data).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freeze the host's agent, keeper and PostgreSQL (SIGSTOP); returns
    /// the pids.
    pub fn freeze_host(&self, host: &Host) -> Vec<i32> {
        let pids = self.host_pids(host, false);
        signal(&pids, nix::sys::signal::Signal::SIGSTOP);
        pids
    }

    pub fn thaw(&self, pids: &[i32]) {
        signal(pids, nix::sys::signal::Signal::SIGCONT);
    }

    /// Run the CLI against this deployment's managers.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let managers = self.manager_addresses().join(",");
        let mut full = vec!["--managers", managers.as_str()];
        full.extend_from_slice(args);
        super::cli(&full)
    }

    /// A writer through the multi-host connection string plus one prober
    /// per node, writing every 20 ms.
    pub async fn writers(&self) -> Writers {
        let direct: Vec<(String, u16)> = self
            .hosts
            .iter()
            .map(|h| (h.address.clone(), PG_PORT))
            .collect();
        Writers::start(&self.dsn(), &direct, Duration::from_millis(20)).await
    }

    /// Wait for a healthy primary other than `old` in an epoch after `epoch`.
    pub async fn new_primary(&self, old: &Host, epoch: u64) -> Host {
        let s = wait_for("a new primary", Duration::from_secs(120), || async {
            let s = self.status().await?;
            let p = s.nodes.iter().find(|n| n.role == "primary" && n.healthy)?;
            (s.epoch > epoch && p.name != old.name).then_some(s.clone())
        })
        .await;
        self.host_of_node(&s.primary)
    }

    /// The manager id that leads, if any answers.
    pub async fn leader_id(&self) -> Option<u64> {
        self.status()
            .await?
            .managers
            .iter()
            .find(|m| m.role == "leader")
            .map(|m| m.id)
    }
}

impl Deployment {
    /// Stop everything the way an operator would — agents, then keepers
    /// (which stop PostgreSQL), then managers, each with SIGTERM — and
    /// check that nothing of the deployment is left running.
    pub fn stop_and_check_nothing_left(mut self) {
        let keepers: Vec<i32> = self
            .hosts
            .clone()
            .iter()
            .filter_map(|h| self.keeper_pid(h))
            .collect();
        for p in self.agents.values_mut() {
            if !p.is_running() {
                continue;
            }
            p.signal(nix::sys::signal::Signal::SIGCONT);
            assert!(
                p.terminate(Duration::from_secs(30)).is_some(),
                "{} did not stop on SIGTERM",
                p.name
            );
        }
        signal(&keepers, nix::sys::signal::Signal::SIGTERM);
        assert!(
            pgquorum::process::wait_gone(&keepers, Duration::from_secs(60)),
            "keepers {keepers:?} did not stop on SIGTERM"
        );
        for p in self.managers.values_mut() {
            if !p.is_running() {
                continue;
            }
            p.signal(nix::sys::signal::Signal::SIGCONT);
            assert!(
                p.terminate(Duration::from_secs(30)).is_some(),
                "{} did not stop on SIGTERM",
                p.name
            );
        }
        let left = pgquorum::process::processes_under(self.dir.path());
        assert!(left.is_empty(), "processes left behind: {left:?}");
    }
}

impl Deployment {
    /// The end of every manager's and agent's log, host by host.
    fn print_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut hosts: Vec<std::path::PathBuf> = entries.flatten().map(|e| e.path()).collect();
        hosts.sort();
        for host in hosts {
            for log in ["manager.log", "agent.log"] {
                let p = host.join(log);
                if p.exists() {
                    eprintln!(
                        "----- {} (tail) -----\n{}",
                        p.display(),
                        super::sandbox::tail(&p, 60)
                    );
                }
            }
        }
    }
}

impl Drop for Deployment {
    /// Agents and managers are killed by their `Proc` guards; keepers and
    /// PostgreSQL servers outlive agents and are killed here.
    fn drop(&mut self) {
        for p in self.agents.values_mut().chain(self.managers.values_mut()) {
            p.kill9();
        }
        super::kill_processes_under(self.dir.path());
        if std::thread::panicking() {
            // The directory goes with the test: what a CI failure needs is
            // printed here.
            self.print_logs();
        }
    }
}

/// Acknowledged rows missing from `ids`.
pub fn lost(acks: &[Ack], ids: &std::collections::BTreeSet<i64>) -> Vec<Ack> {
    acks.iter()
        .filter(|a| !ids.contains(&a.id))
        .cloned()
        .collect()
}
