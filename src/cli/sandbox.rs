//! `pgquorum sandbox`: a whole cluster on loopback in one folder — managers,
//! agents and PostgreSQL servers — for a first look, demos, drills and
//! tests. Everything it starts is recorded by pid in `DIR/sandbox.json` and
//! stopped by pid again.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::client::{request, ApiClient};
use super::output::{print, table, Failure};
use super::GlobalArgs;
use crate::process::{alive, postgres_processes, signal_all, wait_gone};
use crate::proto::api::{ClusterStatus, GetStatusRequest, SetConfigRequest};

const CLUSTER: &str = "main";
const UP_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Start managers, agents and PostgreSQL servers; return once the
    /// primary and every replica stream.
    Up(UpArgs),
    /// Stop everything the sandbox started (by pid).
    Down(DirArg),
    /// Show the sandbox's processes and the cluster.
    Status(DirArg),
    /// Kill a node's agent and PostgreSQL at once (SIGKILL), like a host
    /// dying; `m2` kills manager 2.
    Crash(NodeArg),
    /// Bring a crashed node (or manager `mN`) back.
    Start(NodeArg),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Folder for everything (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// PostgreSQL nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Managers (3 or 5 for fault tolerance; 1 works too).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub managers: u16,
    /// Ports: managers P+1…, PostgreSQL P+11…, agent HTTP P+21…, manager metrics P+31….
    #[arg(long, default_value_t = 7000, value_parser = clap::value_parser!(u16).range(1024..=65000))]
    pub base_port: u16,
    /// Synchronous replication (sync_mode=on).
    #[arg(long)]
    pub sync: bool,
    /// Extra dynamic configuration, KEY=VALUE (e.g. ttl=3s).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// The sandbox folder.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct NodeArg {
    /// The sandbox folder.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Node name (n1, n2…) or manager (m1, m2…).
    pub node: String,
}

/// `sandbox.json`: a contract for scripts; extend, never rename.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxFile {
    pub cluster: String,
    pub managers: Vec<ManagerEntry>,
    pub nodes: Vec<NodeEntry>,
    pub dsn: String,
    #[serde(default)]
    pub binary: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerEntry {
    pub id: u64,
    pub address: String,
    pub pid: i32,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub peers: String,
    #[serde(default)]
    pub log: PathBuf,
    /// Prometheus `/metrics` address.
    #[serde(default)]
    pub metrics: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub agent_pid: i32,
    pub http: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub config: PathBuf,
    #[serde(default)]
    pub log: PathBuf,
    /// The agent's state directory, where the node's keeper lives.
    #[serde(default)]
    pub state_dir: PathBuf,
}

impl NodeEntry {
    /// The keeper's directory (older sandbox files lack `state_dir`).
    fn keeper_dir(&self) -> PathBuf {
        if !self.state_dir.as_os_str().is_empty() {
            return self.state_dir.clone();
        }
        self.data_dir
            .parent()
            .map(|p| p.join("agent"))
            .unwrap_or_default()
    }

    /// The node's keeper, if it runs.
    fn keeper_pid(&self) -> Option<i32> {
        crate::keeper::running_pid(&self.keeper_dir())
    }
}

impl SandboxFile {
    fn path(dir: &Path) -> PathBuf {
        dir.join("sandbox.json")
    }

    fn load(dir: &Path) -> Result<SandboxFile, Failure> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Failure::failed(format!(
                "no sandbox in {} ({}: {e}); start one with `pgquorum sandbox up --dir {}`",
                dir.display(),
                path.display(),
                dir.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Failure::failed(format!("{} is damaged: {e}", path.display())))
    }

    fn save(&self, dir: &Path) -> Result<(), Failure> {
        let text = serde_json::to_vec_pretty(self).map_err(Failure::failed)?;
        crate::durable::replace(&Self::path(dir), &text, Default::default()).map_err(|e| {
            Failure::failed(format!("cannot write {}: {e}", Self::path(dir).display()))
        })
    }

    fn manager_addresses(&self) -> Vec<String> {
        self.managers.iter().map(|m| m.address.clone()).collect()
    }
}

fn progress(message: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{message}");
        let _ = std::io::stderr().flush();
    }
}

fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Start `pgquorum ARGS…` in the background, detached from this terminal.
fn spawn_detached(binary: &Path, args: &[String], log: &Path) -> Result<i32, Failure> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Failure::failed(format!("cannot open log {}: {e}", log.display())))?;
    let err = file.try_clone().map_err(Failure::failed)?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::failed(format!("cannot start {}: {e}", binary.display())))?;
    Ok(child.id() as i32)
}

/// As root, PostgreSQL runs as `postgres`, which must be able to reach DIR.
pub(super) fn check_reachable_by_postgres(dir: &Path) -> Result<(), Failure> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let mut p = Some(dir);
    while let Some(d) = p {
        if let Ok(meta) = std::fs::metadata(d) {
            if meta.permissions().mode() & 0o001 == 0 {
                return Err(Failure::usage(format!(
                    "{} is not searchable by other users, so PostgreSQL (run as `postgres` because you are root) cannot reach {}; use a folder such as /tmp/pgq or /var/tmp/pgq",
                    d.display(),
                    dir.display()
                )));
            }
        }
        p = d.parent();
    }
    Ok(())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

async fn cluster_status(client: &ApiClient) -> Option<ClusterStatus> {
    client
        .call(|mut c, t| async move {
            c.get_status(request(
                GetStatusRequest {
                    cluster: CLUSTER.to_string(),
                    local: false,
                },
                t,
            ))
            .await
        })
        .await
        .ok()
}

/// The primary takes writes and every other node streams.
fn all_streaming(s: &ClusterStatus, nodes: usize) -> bool {
    s.nodes.len() == nodes
        && s.nodes
            .iter()
            .filter(|n| n.role == "primary" && n.healthy)
            .count()
            == 1
        && s.nodes
            .iter()
            .filter(|n| n.role == "replica" && n.healthy)
            .count()
            == nodes - 1
}

fn agent_config(dir: &Path, name: &str, pg_port: u16, http: &str, managers: &[String]) -> String {
    let node_dir = dir.join("nodes").join(name);
    format!(
        "# pgquorum sandbox agent {name}: trust authentication on loopback only.\n\
         name = \"{name}\"\n\
         cluster = \"{CLUSTER}\"\n\
         managers = [{managers}]\n\
         http_listen = \"{http}\"\n\
         state_dir = \"{state}\"\n\
         register_timeout = \"60s\"\n\
         \n\
         [postgresql]\n\
         data_dir = \"{data}\"\n\
         listen = \"127.0.0.1\"\n\
         port = {pg_port}\n\
         socket_dir = \"{socket}\"\n\
         log_file = \"{pglog}\"\n\
         hba = [\n  \"local all all trust\",\n  \"host all all 127.0.0.1/32 trust\",\n  \"host replication all 127.0.0.1/32 trust\",\n]\n\
         \n\
         [postgresql.parameters]\n\
         shared_buffers = \"32MB\"\n\
         max_connections = \"50\"\n",
        managers = managers.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", "),
        state = node_dir.join("agent").display(),
        data = node_dir.join("data").display(),
        socket = node_dir.join("socket").display(),
        pglog = node_dir.join("postgresql.log").display(),
    )
}

pub async fn run(global: &GlobalArgs, command: SandboxCommand) -> Result<(), Failure> {
    match command {
        SandboxCommand::Up(args) => up(global, args).await,
        SandboxCommand::Down(args) => down(&args.dir),
        SandboxCommand::Status(args) => status(global, &args.dir).await,
        SandboxCommand::Crash(args) => crash(&args.dir, &args.node),
        SandboxCommand::Start(args) => start(&args.dir, &args.node),
    }
}

async fn up(global: &GlobalArgs, args: UpArgs) -> Result<(), Failure> {
    let dir = std::path::absolute(&args.dir).map_err(|e| Failure::usage(format!("--dir: {e}")))?;
    if let Ok(existing) = SandboxFile::load(&dir) {
        let running = existing
            .managers
            .iter()
            .map(|m| m.pid)
            .chain(existing.nodes.iter().map(|n| n.agent_pid))
            .chain(existing.nodes.iter().filter_map(|n| n.keeper_pid()))
            .any(alive);
        if running {
            return Err(Failure::failed(format!(
                "a sandbox is already running in {}; stop it with `pgquorum sandbox down --dir {}`",
                dir.display(),
                dir.display()
            )));
        }
        return Err(Failure::failed(format!(
            "{} holds a stopped sandbox; remove the folder (or use another --dir) to start a new one",
            dir.display()
        )));
    }
    let changes = super::ops::parse_changes(&args.set)?;
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| Failure::failed(format!("cannot create {}: {e}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(Failure::failed)?;
    check_reachable_by_postgres(&dir)?;
    let base = args.base_port;
    let manager_ports: Vec<u16> = (1..=args.managers).map(|i| base + i).collect();
    let pg_ports: Vec<u16> = (1..=args.nodes).map(|i| base + 10 + i).collect();
    let http_ports: Vec<u16> = (1..=args.nodes).map(|i| base + 20 + i).collect();
    let metrics_ports: Vec<u16> = (1..=args.managers).map(|i| base + 30 + i).collect();
    for port in manager_ports
        .iter()
        .chain(&pg_ports)
        .chain(&http_ports)
        .chain(&metrics_ports)
    {
        if !port_free(*port) {
            return Err(Failure::failed(format!(
                "port {port} is already in use; choose other ports with --base-port"
            )));
        }
    }
    let binary = std::env::current_exe()
        .map_err(|e| Failure::failed(format!("cannot find this program: {e}")))?;
    let peers = manager_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let addresses: Vec<String> = manager_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut file = SandboxFile {
        cluster: CLUSTER.to_string(),
        managers: Vec::new(),
        nodes: Vec::new(),
        dsn: format!(
            "host={} port={} user=postgres dbname=postgres target_session_attrs=read-write",
            vec!["127.0.0.1"; pg_ports.len()].join(","),
            pg_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        binary: binary.display().to_string(),
    };

    progress("starting managers…");
    for (i, port) in manager_ports.iter().enumerate() {
        let id = i as u64 + 1;
        let data_dir = dir.join("managers").join(format!("m{id}"));
        let log = dir.join("logs").join(format!("manager-{id}.log"));
        let metrics = format!("127.0.0.1:{}", metrics_ports[i]);
        let entry = ManagerEntry {
            id,
            address: format!("127.0.0.1:{port}"),
            pid: 0,
            data_dir,
            peers: peers.clone(),
            log,
            metrics,
        };
        let pid = spawn_detached(&binary, &manager_argv(&entry), &entry.log)?;
        file.managers.push(ManagerEntry { pid, ..entry });
    }
    file.save(&dir)?;

    for (i, (pg_port, http_port)) in pg_ports.iter().zip(&http_ports).enumerate() {
        let name = format!("n{}", i + 1);
        let node_dir = dir.join("nodes").join(&name);
        std::fs::create_dir_all(node_dir.join("agent")).map_err(Failure::failed)?;
        std::fs::set_permissions(&node_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(Failure::failed)?;
        let http = format!("127.0.0.1:{http_port}");
        let config = node_dir.join("agent.toml");
        std::fs::write(
            &config,
            agent_config(&dir, &name, *pg_port, &http, &addresses),
        )
        .map_err(Failure::failed)?;
        file.nodes.push(NodeEntry {
            name,
            pg_host: "127.0.0.1".into(),
            pg_port: *pg_port,
            agent_pid: 0,
            http,
            data_dir: node_dir.join("data"),
            config,
            log: dir.join("logs").join(format!("agent-n{}.log", i + 1)),
            state_dir: node_dir.join("agent"),
        });
    }
    // The first node registers alone, so that it is the one that bootstraps.
    let client = ApiClient::new(&addresses).map_err(Failure::failed)?;
    let started = Instant::now();
    for i in 0..file.nodes.len() {
        progress(&format!("starting agent {}…", file.nodes[i].name));
        start_agent(&mut file, &binary, i)?;
        file.save(&dir)?;
        if i == 0 {
            loop {
                if let Some(s) = cluster_status(&client).await {
                    if s.nodes.iter().any(|n| n.name == "n1") {
                        break;
                    }
                }
                check_alive(&file, started)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if args.sync || !changes.is_empty() {
        let mut all = changes.clone();
        if args.sync {
            all.insert("sync_mode".to_string(), "on".to_string());
        }
        client
            .call(|mut c, t| {
                let req = SetConfigRequest {
                    cluster: CLUSTER.to_string(),
                    changes: all.clone().into_iter().collect(),
                };
                async move { c.set_config(request(req, t)).await }
            })
            .await
            .map_err(Failure::from)?;
    }
    let nodes = file.nodes.len();
    let status = loop {
        if let Some(s) = cluster_status(&client).await {
            let ready = all_streaming(&s, nodes)
                && (!args.sync || nodes < 2 || s.nodes.iter().any(|n| n.sync));
            let states: Vec<String> = s
                .nodes
                .iter()
                .map(|n| format!("{} {}", n.name, n.state))
                .collect();
            progress(&format!("waiting for the cluster: {}", states.join(", ")));
            if ready {
                break s;
            }
        }
        check_alive(&file, started)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    progress_done();
    file.save(&dir)?;
    let summary = format!(
        "Sandbox cluster {CLUSTER:?} is up in {} ({:.1}s)\n\
         primary: {}   replicas: {}\n\
         managers: {}\n\
         \n\
         connect:  psql \"{}\"\n\
         status:   {} --managers {} status\n\
         stop:     {} sandbox down --dir {}",
        dir.display(),
        started.elapsed().as_secs_f64(),
        status.primary,
        status
            .nodes
            .iter()
            .filter(|n| n.role == "replica")
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        addresses.join(","),
        file.dsn,
        binary.display(),
        addresses.join(","),
        binary.display(),
        dir.display()
    );
    print(global.json, &file, || summary);
    Ok(())
}

fn manager_argv(m: &ManagerEntry) -> Vec<String> {
    let mut argv = vec![
        "manager".to_string(),
        "--id".into(),
        m.id.to_string(),
        "--peers".into(),
        m.peers.clone(),
        "--data-dir".into(),
        m.data_dir.display().to_string(),
    ];
    if !m.metrics.is_empty() {
        argv.push("--metrics-listen".into());
        argv.push(m.metrics.clone());
    }
    argv
}

fn start_agent(file: &mut SandboxFile, binary: &Path, i: usize) -> Result<(), Failure> {
    let node = &file.nodes[i];
    let argv = vec![
        "agent".into(),
        "--config".into(),
        node.config.display().to_string(),
    ];
    let pid = spawn_detached(binary, &argv, &node.log)?;
    file.nodes[i].agent_pid = pid;
    Ok(())
}

/// Fail fast with the log's tail when a process we started died.
fn check_alive(file: &SandboxFile, started: Instant) -> Result<(), Failure> {
    let tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    for m in &file.managers {
        if !alive(m.pid) {
            return Err(Failure::failed(format!(
                "manager {} exited; its log ({}) ends with:\n{}",
                m.id,
                m.log.display(),
                tail(&m.log)
            )));
        }
    }
    for n in &file.nodes {
        if n.agent_pid > 0 && !alive(n.agent_pid) {
            return Err(Failure::failed(format!(
                "the agent of {} exited; its log ({}) ends with:\n{}",
                n.name,
                n.log.display(),
                tail(&n.log)
            )));
        }
    }
    if started.elapsed() > UP_TIMEOUT {
        return Err(Failure::failed(format!(
            "the cluster did not come up within {}s; see the logs in the sandbox folder",
            UP_TIMEOUT.as_secs()
        )));
    }
    Ok(())
}

/// The postmaster of a data directory (from its pid file, if it runs).
fn postmaster(data_dir: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse::<i32>()
        .ok()?;
    postgres_processes(data_dir).contains(&pid).then_some(pid)
}

fn down(dir: &Path) -> Result<(), Failure> {
    let file = SandboxFile::load(dir)?;
    // Agents first (they leave PostgreSQL to its keeper), then the keepers:
    // each stops its PostgreSQL cleanly on SIGTERM.
    let agents: Vec<i32> = file
        .nodes
        .iter()
        .map(|n| n.agent_pid)
        .filter(|p| alive(*p))
        .collect();
    signal_all(&agents, Signal::SIGTERM);
    wait_gone(&agents, Duration::from_secs(30));
    signal_all(&agents, Signal::SIGKILL);
    let keepers: Vec<i32> = file.nodes.iter().filter_map(|n| n.keeper_pid()).collect();
    signal_all(&keepers, Signal::SIGTERM);
    if !wait_gone(&keepers, Duration::from_secs(60)) {
        signal_all(&keepers, Signal::SIGKILL);
        wait_gone(&keepers, Duration::from_secs(5));
    }
    // Any PostgreSQL left (its keeper was killed earlier): stop it too.
    for n in &file.nodes {
        let pids = postgres_processes(&n.data_dir);
        if !pids.is_empty() {
            signal_all(&pids, Signal::SIGQUIT);
            if !wait_gone(&pids, Duration::from_secs(5)) {
                signal_all(&pids, Signal::SIGKILL);
            }
        }
    }
    let managers: Vec<i32> = file
        .managers
        .iter()
        .map(|m| m.pid)
        .filter(|p| alive(*p))
        .collect();
    signal_all(&managers, Signal::SIGTERM);
    if !wait_gone(&managers, Duration::from_secs(15)) {
        signal_all(&managers, Signal::SIGKILL);
        wait_gone(&managers, Duration::from_secs(5));
    }
    let left: Vec<i32> = agents
        .iter()
        .chain(&keepers)
        .chain(&managers)
        .copied()
        .chain(
            file.nodes
                .iter()
                .flat_map(|n| postgres_processes(&n.data_dir)),
        )
        .filter(|p| alive(*p))
        .collect();
    if !left.is_empty() {
        return Err(Failure::failed(format!(
            "processes still running: {left:?}"
        )));
    }
    println!(
        "sandbox in {} stopped (data kept; remove the folder to discard it)",
        dir.display()
    );
    Ok(())
}

async fn status(global: &GlobalArgs, dir: &Path) -> Result<(), Failure> {
    let file = SandboxFile::load(dir)?;
    let mut rows = Vec::new();
    for m in &file.managers {
        rows.push(vec![
            format!("m{}", m.id),
            "manager".into(),
            m.address.clone(),
            m.pid.to_string(),
            if alive(m.pid) { "running" } else { "stopped" }.into(),
        ]);
    }
    for n in &file.nodes {
        let pg = postmaster(&n.data_dir);
        rows.push(vec![
            n.name.clone(),
            "agent".into(),
            n.http.clone(),
            n.agent_pid.to_string(),
            if alive(n.agent_pid) {
                "running"
            } else {
                "stopped"
            }
            .into(),
        ]);
        let keeper = n.keeper_pid();
        rows.push(vec![
            n.name.clone(),
            "keeper".into(),
            n.keeper_dir().display().to_string(),
            keeper.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if keeper.is_some() {
                "running"
            } else {
                "stopped"
            }
            .into(),
        ]);
        rows.push(vec![
            n.name.clone(),
            "postgres".into(),
            format!("{}:{}", n.pg_host, n.pg_port),
            pg.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if pg.is_some() { "running" } else { "stopped" }.into(),
        ]);
    }
    let client = ApiClient::new(&file.manager_addresses()).map_err(Failure::failed)?;
    let cluster = if file.managers.iter().any(|m| alive(m.pid)) {
        cluster_status(&client).await
    } else {
        None
    };
    #[derive(Serialize)]
    struct Json<'a> {
        sandbox: &'a SandboxFile,
        cluster: Option<crate::views::StatusJson>,
    }
    let json = Json {
        sandbox: &file,
        cluster: cluster.as_ref().map(crate::views::StatusJson::from),
    };
    print(global.json, &json, || {
        let mut out = table(&["NAME", "PROCESS", "ADDRESS", "PID", "STATE"], rows);
        out.push('\n');
        match &cluster {
            Some(s) => out.push_str(&super::status::render(s)),
            None => out.push_str("cluster status unavailable (managers down or no quorum)\n"),
        }
        out.push_str(&format!("\ndsn: {}\n", file.dsn));
        out
    });
    Ok(())
}

fn crash(dir: &Path, name: &str) -> Result<(), Failure> {
    let file = SandboxFile::load(dir)?;
    if let Some(m) = manager_entry(&file, name)? {
        signal_all(&[m.pid], Signal::SIGKILL);
        println!("manager {} killed", m.id);
        return Ok(());
    }
    let node = node_entry(&file, name)?;
    // Freeze everything first so that nothing notices the others dying,
    // then kill it all: as close to a host losing power as signals get.
    let mut pids = postgres_processes(&node.data_dir);
    pids.push(node.agent_pid);
    pids.extend(node.keeper_pid());
    pids.retain(|p| alive(*p));
    signal_all(&pids, Signal::SIGSTOP);
    signal_all(&pids, Signal::SIGKILL);
    wait_gone(&pids, Duration::from_secs(5));
    println!(
        "{name} crashed: agent, keeper and PostgreSQL killed ({} processes)",
        pids.len()
    );
    Ok(())
}

fn start(dir: &Path, name: &str) -> Result<(), Failure> {
    let mut file = SandboxFile::load(dir)?;
    let binary = PathBuf::from(&file.binary);
    if let Some(m) = manager_entry(&file, name)? {
        if alive(m.pid) {
            return Err(Failure::failed(format!(
                "manager {} is already running (pid {})",
                m.id, m.pid
            )));
        }
        let pid = spawn_detached(&binary, &manager_argv(m), &m.log)?;
        let id = m.id;
        if let Some(entry) = file.managers.iter_mut().find(|e| e.id == id) {
            entry.pid = pid;
        }
        file.save(dir)?;
        println!("manager {id} started (pid {pid})");
        return Ok(());
    }
    let node = node_entry(&file, name)?;
    if alive(node.agent_pid) {
        return Err(Failure::failed(format!(
            "the agent of {name} is already running (pid {})",
            node.agent_pid
        )));
    }
    let i = file.nodes.iter().position(|n| n.name == name).unwrap_or(0);
    start_agent(&mut file, &binary, i)?;
    file.save(dir)?;
    println!(
        "{name} started (agent pid {}); it rejoins in whatever role the cluster gives it",
        file.nodes[i].agent_pid
    );
    Ok(())
}

fn manager_entry<'a>(
    file: &'a SandboxFile,
    name: &str,
) -> Result<Option<&'a ManagerEntry>, Failure> {
    let Some(id) = name.strip_prefix('m').and_then(|n| n.parse::<u64>().ok()) else {
        return Ok(None);
    };
    file.managers
        .iter()
        .find(|m| m.id == id)
        .map(Some)
        .ok_or_else(|| Failure::failed(format!("no manager {name} in this sandbox")))
}

fn node_entry<'a>(file: &'a SandboxFile, name: &str) -> Result<&'a NodeEntry, Failure> {
    file.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
        Failure::failed(format!(
            "no node {name:?} in this sandbox; nodes: {}; managers: {}",
            file.nodes
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            file.managers
                .iter()
                .map(|m| format!("m{}", m.id))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}
