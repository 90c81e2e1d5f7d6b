//! `pgquorum agent` given bad input: a data directory that is not
//! PostgreSQL's, a bin directory without PostgreSQL, a node name another
//! host holds, unreachable managers, and commands of an older epoch than
//! the one it has seen. Each is refused with a clear message (and a
//! non-zero exit where the agent cannot run), and nothing on disk changes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::sandbox::*;
use common::{bin, free_port, Managers, Proc};
use futures::Stream;
use pgquorum::cluster::wire::{
    Action, AgentCommand, ManagedSettings, ManagerMessage, NodeReport, RegistrationReply, Upstream,
};
use pgquorum::proto::agent::agent_channel_server::{AgentChannel, AgentChannelServer};
use pgquorum::proto::agent::AgentEnvelope;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// `initdb` a data directory as the `postgres` OS user.
fn initdb(data: &Path) {
    std::fs::create_dir_all(data).unwrap();
    let pg = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("a postgres OS user");
    nix::unistd::chown(data, Some(pg.uid), Some(pg.gid)).unwrap();
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new("timeout")
        .args(["120", "runuser", "-u", "postgres", "--"])
        .arg(Path::new(PG_BIN).join("initdb"))
        .args([
            "--encoding=UTF8",
            "--locale=C",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-D",
        ])
        .arg(data)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent configuration file.
struct AgentToml {
    name: String,
    managers: Vec<String>,
    data_dir: PathBuf,
    bin_dir: Option<PathBuf>,
    pg_port: u16,
    http_port: u16,
    state_dir: PathBuf,
    socket_dir: PathBuf,
    /// More top-level keys.
    extra: String,
    /// More `[postgresql]` keys, then more tables, at the end.
    tail: String,
    register_timeout: String,
}

impl AgentToml {
    fn new(dir: &Path, name: &str, managers: Vec<String>, data_dir: PathBuf) -> AgentToml {
        AgentToml {
            name: name.to_string(),
            managers,
            data_dir,
            bin_dir: None,
            pg_port: free_port(),
            http_port: free_port(),
            state_dir: dir.join(format!("{name}-state")),
            socket_dir: dir.join(format!("{name}-socket")),
            extra: String::new(),
            tail: String::new(),
            register_timeout: "3s".into(),
        }
    }

    fn write(&self, path: &Path) -> PathBuf {
        let bin_dir = self
            .bin_dir
            .as_ref()
            .map(|b| format!("bin_dir = \"{}\"\n", b.display()))
            .unwrap_or_default();
        let text = format!(
            "name = \"{}\"\n\
             cluster = \"main\"\n\
             managers = [{}]\n\
             http_listen = \"127.0.0.1:{}\"\n\
             state_dir = \"{}\"\n\
             register_timeout = \"{}\"\n\
             {}\n\
             \n\
             [postgresql]\n\
             {bin_dir}\
             data_dir = \"{}\"\n\
             listen = \"127.0.0.1\"\n\
             port = {}\n\
             socket_dir = \"{}\"\n\
             hba = [\"local all all trust\", \"host all all 127.0.0.1/32 trust\"]\n\
             {}",
            self.name,
            self.managers
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", "),
            self.http_port,
            self.state_dir.display(),
            self.register_timeout,
            self.extra,
            self.data_dir.display(),
            self.pg_port,
            self.socket_dir.display(),
            self.tail,
        );
        std::fs::write(path, text).unwrap();
        path.to_path_buf()
    }
}

/// Run `pgquorum agent --config FILE`, expecting it to give up by itself
/// within `limit`: its exit code and stderr.
fn agent_refuses(config: &Path, limit: Duration) -> (i32, String) {
    let err_file = config.with_extension("stderr");
    let mut child = Command::new(bin())
        .args(["agent", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent still ran after {limit:?}: {}",
                std::fs::read_to_string(&err_file).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    let code = status.code().unwrap_or(-1);
    assert_ne!(code, 0, "the agent exited 0 but should have refused: {err}");
    (code, err)
}

/// A manager address nobody listens on.
fn nobody() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn agent_refuses_bad_input_and_touches_nothing() {
    let dir = TestDir::new("agent-bad");
    let root = dir.path();
    let data = root.join("data");
    initdb(&data);
    let pristine = tree_digest(&data);

    // A data directory that is not PostgreSQL's: named, and left alone.
    let foreign = root.join("foreign");
    std::fs::create_dir_all(foreign.join("photos")).unwrap();
    std::fs::write(foreign.join("notes.txt"), "my notes\n").unwrap();
    std::fs::write(foreign.join("photos").join("cat.jpg"), [0xff, 0xd8, 0xff]).unwrap();
    let before = tree_digest(&foreign);
    let cfg = AgentToml::new(root, "n1", vec![nobody()], foreign.clone());
    let (code, err) = agent_refuses(
        &cfg.write(&root.join("foreign.toml")),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{} is not a PostgreSQL data directory",
            foreign.display()
        )) && err.contains("PG_VERSION"),
        "{err}"
    );
    assert_eq!(
        tree_digest(&foreign),
        before,
        "the foreign directory changed"
    );

    // A bin directory without PostgreSQL in it.
    let empty_bin = root.join("bin");
    std::fs::create_dir_all(&empty_bin).unwrap();
    std::fs::write(empty_bin.join("README"), "no programs here\n").unwrap();
    let mut cfg = AgentToml::new(root, "n1", vec![nobody()], data.clone());
    cfg.bin_dir = Some(empty_bin.clone());
    let (code, err) = agent_refuses(&cfg.write(&root.join("bin.toml")), Duration::from_secs(60));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("missing from {}", empty_bin.display())) && err.contains("bin_dir"),
        "{err}"
    );
    assert_eq!(tree_digest(&data), pristine, "the data directory changed");

    // Unreachable managers: gives up after register_timeout, names them.
    let unreachable = nobody();
    let cfg = AgentToml::new(root, "n1", vec![unreachable.clone()], data.clone());
    let (code, err) = agent_refuses(
        &cfg.write(&root.join("unreachable.toml")),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("no manager answered at {unreachable} within 3s")),
        "{err}"
    );
    assert_eq!(tree_digest(&data), pristine, "the data directory changed");
    assert!(processes_in(&data).is_empty(), "PostgreSQL was started");

    // Plaintext to a manager beyond this machine: refused at once, before
    // anything starts, unless the operator says it is deliberate.
    let mut cfg = AgentToml::new(root, "n1", vec!["192.0.2.10:7001".into()], data.clone());
    cfg.state_dir = root.join("plain-state");
    let (code, err) = agent_refuses(
        &cfg.write(&root.join("plain.toml")),
        Duration::from_secs(60),
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("dials the manager at 192.0.2.10:7001 without TLS")
            && err.contains("pgquorum tls init")
            && err.contains("insecure = true"),
        "{err}"
    );
    assert!(
        pgquorum::keeper::running_pid(&cfg.state_dir).is_none(),
        "a keeper was started"
    );
    // (`insecure = true` is what the network tests and the drill run with.)
    assert_eq!(tree_digest(&data), pristine, "the data directory changed");

    // The keeper is a service of its own (spawn_keeper = false) and does
    // not run: the agent says so and starts nothing.
    let mut cfg = AgentToml::new(root, "n1", vec![nobody()], data.clone());
    cfg.extra = "spawn_keeper = false".into();
    cfg.state_dir = root.join("no-keeper-state");
    let (code, err) = agent_refuses(
        &cfg.write(&root.join("no-keeper.toml")),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach or start the keeper") && err.contains("pgquorum-keeper.service"),
        "{err}"
    );
    assert!(
        pgquorum::keeper::running_pid(&cfg.state_dir).is_none(),
        "a keeper was started"
    );
    assert_eq!(tree_digest(&data), pristine, "the data directory changed");

    // Two agents for one node: the second refuses at once.
    let mut cfg = AgentToml::new(root, "n1", vec![nobody()], data.clone());
    cfg.register_timeout = "60s".into();
    cfg.state_dir = root.join("two-agents-state");
    let config = cfg.write(&root.join("first.toml"));
    let first = Proc::spawn(
        "first agent",
        Command::new(bin()).args(["agent", "--config"]).arg(&config),
        &root.join("first.log"),
    );
    let lock = cfg.state_dir.join("agent.lock");
    common::sandbox::poll("the first agent's lock", Duration::from_secs(30), || {
        let file = std::fs::File::open(&lock).map_err(|e| e.to_string())?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_) => Err("not locked yet".to_string()),
            Err(_) => Ok(()),
        }
    });
    let (code, err) = agent_refuses(&config, Duration::from_secs(60));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("another agent already runs for node n1"),
        "{err}"
    );
    drop(first);

    // A node name another host holds: the managers refuse it.
    let managers = Managers::start(1);
    let taken_port = free_port();
    managers.register("main", "n1", taken_port).await;
    let cfg = AgentToml::new(root, "n1", vec![managers.address(1)], data.clone());
    let (code, err) = agent_refuses(
        &cfg.write(&root.join("taken.toml")),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "node name \"n1\" is already taken by 127.0.0.1:{taken_port}"
        )),
        "{err}"
    );
    assert_eq!(tree_digest(&data), pristine, "the data directory changed");
    assert!(processes_in(&data).is_empty(), "PostgreSQL was started");
    // The registered node is still the old one.
    let out = Command::new(bin())
        .args(["--json", "status", "--local", "--managers"])
        .arg(managers.address(1))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let n1 = &status["nodes"][0];
    assert_eq!(n1["name"], "n1", "{status}");
    assert_eq!(n1["port"], taken_port, "{status}");
}

/// A stand-in manager leader: accepts the registration, then relays what
/// the test sends down the agent's session and the agent's reports back.
struct FakeLeader {
    epoch: u64,
    address: String,
    down: Mutex<Option<mpsc::Receiver<ManagerMessage>>>,
    up: mpsc::UnboundedSender<NodeReport>,
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<AgentEnvelope, Status>> + Send + 'static>>;

fn envelope<T: serde::Serialize>(body: &T) -> AgentEnvelope {
    AgentEnvelope {
        payload: serde_json::to_vec(body).unwrap(),
    }
}

#[tonic::async_trait]
impl AgentChannel for FakeLeader {
    async fn who_leads(
        &self,
        _request: Request<AgentEnvelope>,
    ) -> Result<Response<AgentEnvelope>, Status> {
        Ok(Response::new(envelope(
            &pgquorum::cluster::wire::LeaderHint {
                manager: 1,
                term: 1,
                leader: Some(1),
                leader_address: Some(self.address.clone()),
            },
        )))
    }

    async fn register(
        &self,
        _request: Request<AgentEnvelope>,
    ) -> Result<Response<AgentEnvelope>, Status> {
        Ok(Response::new(envelope(&RegistrationReply {
            epoch: self.epoch,
            primary: Some("elsewhere".to_string()),
        })))
    }

    type SessionStream = EnvelopeStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentEnvelope>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let Some(down) = self.down.lock().unwrap().take() else {
            return Err(Status::unavailable("one session only"));
        };
        let mut inbound = request.into_inner();
        let up = self.up.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = inbound.message().await {
                if let Ok(report) = serde_json::from_slice::<NodeReport>(&e.payload) {
                    let _ = up.send(report);
                }
            }
        });
        let stream =
            futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(down), |m| {
                Ok(envelope(&m))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The next report that `accept`s, within `limit`.
async fn report_where(
    reports: &mut mpsc::UnboundedReceiver<NodeReport>,
    what: &str,
    limit: Duration,
    accept: impl Fn(&NodeReport) -> bool,
) -> NodeReport {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(r)) if accept(&r) => return r,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the agent's session ended while waiting for {what}"),
            Err(_) => panic!("no report with {what} within {limit:?}"),
        }
    }
}

#[tokio::test]
async fn agent_refuses_commands_of_an_older_epoch() {
    let dir = TestDir::new("agent-epoch");
    let root = dir.path();
    let data = root.join("data");
    initdb(&data);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (down_tx, down_rx) = mpsc::channel(16);
    let (up_tx, mut reports) = mpsc::unbounded_channel();
    let fake = FakeLeader {
        epoch: 5,
        address: address.clone(),
        down: Mutex::new(Some(down_rx)),
        up: up_tx,
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentChannelServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    struct Abort(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _server = Abort(server);

    // This node has seen epoch 50; the "leader" is at epoch 5.
    let cfg = AgentToml::new(root, "n3", vec![address], data.clone());
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    let state_file = cfg.state_dir.join("agent-state.json");
    std::fs::write(&state_file, r#"{"epoch": 50, "intent": "replica"}"#).unwrap();
    let config = cfg.write(&root.join("agent.toml"));
    let before = tree_digest(&data);
    let mut agent = Proc::spawn(
        "agent",
        Command::new(bin()).args(["agent", "--config"]).arg(&config),
        &root.join("agent.log"),
    );

    let first = report_where(
        &mut reports,
        "the first report",
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    assert_eq!(first.epoch, 50, "{first:?}");
    down_tx
        .send(ManagerMessage::Welcome {
            leader: 1,
            epoch: 5,
            heartbeat_interval_ms: 100,
            ttl_ms: 2000,
        })
        .await
        .unwrap();

    // Commands that would wipe, clone over, promote or stop this node.
    let upstream = Upstream {
        node: "elsewhere".to_string(),
        host: "127.0.0.1".to_string(),
        port: free_port(),
    };
    let stale = [
        Action::Reinit {
            upstream: upstream.clone(),
            action_id: 1,
        },
        Action::Follow {
            upstream: upstream.clone(),
            settings: ManagedSettings::default(),
            reclone: true,
        },
        Action::Bootstrap {
            settings: ManagedSettings::default(),
        },
        Action::Fence {
            reason: "test".to_string(),
        },
    ];
    for (i, action) in stale.into_iter().enumerate() {
        let id = 100 + i as u64;
        let name = action.name();
        down_tx
            .send(ManagerMessage::Command(AgentCommand {
                id,
                epoch: 5,
                action,
            }))
            .await
            .unwrap();
        let r = report_where(
            &mut reports,
            &format!("the outcome of {name}"),
            Duration::from_secs(60),
            |r| r.last_command.as_ref().is_some_and(|c| c.id == id),
        )
        .await;
        let outcome = r.last_command.unwrap();
        assert!(
            !outcome.ok,
            "{name} of epoch 5 was carried out: {outcome:?}"
        );
        assert!(
            outcome.message.contains("stale epoch 5") && outcome.message.contains("epoch 50"),
            "{name}: {}",
            outcome.message
        );
        assert_eq!(r.epoch, 50);
        assert!(r.postgres.is_none(), "PostgreSQL runs after {name}");
    }
    assert_eq!(tree_digest(&data), before, "the data directory changed");
    assert!(processes_in(&data).is_empty(), "PostgreSQL was started");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state["epoch"], 50, "{state}");

    // The same command at the current epoch is carried out: the refusals
    // were about the epoch, nothing else.
    down_tx
        .send(ManagerMessage::Command(AgentCommand {
            id: 200,
            epoch: 50,
            action: Action::Fence {
                reason: "test".to_string(),
            },
        }))
        .await
        .unwrap();
    let r = report_where(
        &mut reports,
        "the outcome of a current fence",
        Duration::from_secs(60),
        |r| r.last_command.as_ref().is_some_and(|c| c.id == 200),
    )
    .await;
    assert!(r.last_command.as_ref().unwrap().ok, "{r:?}");
    assert_eq!(tree_digest(&data), before, "the data directory changed");

    let status = agent.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not stop cleanly: {status:?}"
    );
}

#[test]
fn agent_refuses_replica_methods_and_bootstrap_it_cannot_run() {
    let dir = TestDir::new("agent-methods");
    let root = dir.path();
    let data = root.join("data");
    initdb(&data);
    let pristine = tree_digest(&data);
    let not_executable = root.join("restore.sh");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (
            "unknown",
            "replica_methods = [\"pgbackrest\", \"basebackup\"]\n".to_string(),
            "postgresql.replica_methods names \"pgbackrest\", which is not a method: add a \
             [postgresql.replica_method.pgbackrest] table with its command, or use the built-in \
             \"basebackup\""
                .to_string(),
        ),
        (
            "no-command",
            "replica_methods = [\"pgbackrest\", \"basebackup\"]\n\
             [postgresql.replica_method.pgbackrest]\ntimeout = \"2h\"\n"
                .to_string(),
            "postgresql.replica_method.pgbackrest has no command: give the program to run, e.g. \
             command = \"/usr/local/bin/restore-replica\""
                .to_string(),
        ),
        (
            "not-executable",
            format!(
                "replica_methods = [\"script\"]\n\
                 [postgresql.replica_method.script]\ncommand = \"{}\"\n",
                not_executable.display()
            ),
            format!(
                "postgresql.replica_method.script.command {} is not executable",
                not_executable.display()
            ),
        ),
        (
            "no-bootstrap-program",
            "[postgresql.bootstrap]\ncommand = \"/nonexistent/restore-cluster\"\n".to_string(),
            "postgresql.bootstrap.command /nonexistent/restore-cluster does not exist: install \
             the program or correct the path"
                .to_string(),
        ),
    ];
    for (name, tail, message) in cases {
        let mut cfg = AgentToml::new(root, "n1", vec![nobody()], data.clone());
        cfg.tail = tail;
        cfg.state_dir = root.join(format!("{name}-state"));
        let (code, err) = agent_refuses(
            &cfg.write(&root.join(format!("{name}.toml"))),
            Duration::from_secs(60),
        );
        assert_eq!(
            code, 2,
            "{name}: a configuration error is a usage error: {err}"
        );
        assert!(
            err.contains(&message),
            "{name}: expected {message:?} in: {err}"
        );
        assert!(
            pgquorum::keeper::running_pid(&cfg.state_dir).is_none(),
            "{name}: a keeper was started"
        );
        assert!(
            processes_in(&data).is_empty(),
            "{name}: PostgreSQL was started"
        );
        assert_eq!(
            tree_digest(&data),
            pristine,
            "{name}: the data directory changed"
        );
    }
}
