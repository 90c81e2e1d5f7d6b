//! TLS and authorization with real processes: `pgquorum tls init`, three
//! managers talking Raft over mutual TLS, and the CLI with and without the
//! CA, the token and a client certificate; one agent with PostgreSQL over
//! mutual TLS and HTTPS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgquorum::proto::agent::agent_channel_client::AgentChannelClient;
use pgquorum::proto::agent::AgentEnvelope;
use pgquorum::proto::api::pg_quorum_client::PgQuorumClient;
use pgquorum::proto::api::{ClusterRequest, SetConfigRequest};
use pgquorum::proto::raft::raft_client::RaftClient;
use pgquorum::proto::raft::RaftMessage;
use pgquorum::security::Tls;

const LONG: Duration = Duration::from_secs(30);

/// `pgquorum tls init` into `dir/certs`; the directory.
fn tls_init(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let out = cli(&["tls", "init", certs.to_str().expect("utf-8")]);
    assert!(out.status.success(), "tls init: {}", stderr(&out));
    for f in [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "client.pem",
        "client.key",
        "token",
    ] {
        assert!(certs.join(f).exists(), "{f} missing");
        assert!(
            stdout(&out).contains(f),
            "{f} not reported: {}",
            stdout(&out)
        );
    }
    certs
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Three TLS managers; manager 1 reads its settings from a file (with
/// HTTPS metrics), the others from flags.
struct Group {
    dir: tempfile::TempDir,
    certs: PathBuf,
    ports: Vec<u16>,
    metrics_port: u16,
    procs: Vec<Proc>,
}

impl Group {
    fn address(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.ports[id - 1])
    }

    fn managers(&self) -> String {
        (1..=3)
            .map(|id| self.address(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn cert(&self, f: &str) -> String {
        path(&self.certs.join(f)).to_string()
    }

    fn start() -> Group {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = tls_init(dir.path());
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut g = Group {
            dir,
            certs,
            ports,
            metrics_port: free_port(),
            procs: Vec::new(),
        };
        let peers = (1..=3)
            .map(|id| format!("{id}={}", g.address(id)))
            .collect::<Vec<_>>()
            .join(",");
        let config = g.dir.path().join("m1.toml");
        std::fs::write(
            &config,
            format!(
                "id = 1\npeers = \"{peers}\"\ndata_dir = \"{data}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
                 api_token_file = \"{token}\"\n\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
                 http_cert = \"{cert}\"\nhttp_key = \"{key}\"\n",
                data = g.dir.path().join("m1").display(),
                metrics = g.metrics_port,
                token = g.cert("token"),
                ca = g.cert("ca.pem"),
                cert = g.cert("node.pem"),
                key = g.cert("node.key"),
            ),
        )
        .expect("write m1.toml");
        let mut cmd = Command::new(bin());
        cmd.args(["manager", "--config", path(&config)]);
        let p = Proc::spawn("manager 1", &mut cmd, &g.dir.path().join("m1.log"));
        g.procs.push(p);
        for id in 2..=3 {
            let p = g.spawn(id, &["--peers", &peers]);
            g.procs.push(p);
        }
        g
    }

    fn spawn(&self, id: usize, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(["manager", "--id", &id.to_string()])
            .args(extra)
            .args(["--tls-ca", &self.cert("ca.pem")])
            .args(["--tls-cert", &self.cert("node.pem")])
            .args(["--tls-key", &self.cert("node.key")])
            .args(["--api-token-file", &self.cert("token")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{id}")));
        Proc::spawn(
            &format!("manager {id}"),
            &mut cmd,
            &self.dir.path().join(format!("m{id}.log")),
        )
    }

    /// The CLI with the CA (TLS, no credentials) plus `extra` flags.
    fn cli(&self, extra: &[&str], args: &[&str]) -> Output {
        let managers = self.managers();
        let ca = self.cert("ca.pem");
        let mut all = vec!["--managers", managers.as_str(), "--tls-ca", ca.as_str()];
        all.extend_from_slice(extra);
        all.extend_from_slice(args);
        cli(&all)
    }

    fn tls(&self, client: Option<(&str, &str)>) -> Tls {
        let ca = self.certs.join("ca.pem");
        match client {
            None => Tls::load(&ca, None).expect("load CA"),
            Some((c, k)) => {
                Tls::load(&ca, Some((&self.certs.join(c), &self.certs.join(k)))).expect("load")
            }
        }
    }

    /// The cluster configuration manager `id` has applied (a local read
    /// over TLS without a client certificate).
    async fn local_config(&self, id: usize) -> Option<std::collections::BTreeMap<String, String>> {
        let tls = self.tls(None);
        let channel = pgquorum::transport::channel(&self.address(id), Some(&tls)).ok()?;
        let mut req = tonic::Request::new(ClusterRequest {
            cluster: "main".into(),
            local: true,
        });
        req.set_timeout(Duration::from_secs(2));
        let r = PgQuorumClient::new(channel).get_config(req).await.ok()?;
        Some(r.into_inner().config.into_iter().collect())
    }
}

/// Register node `n1` of cluster `main` through whichever manager leads,
/// retrying UNAVAILABLE for up to `patience`.
async fn register(
    addresses: &[String],
    tls: Option<&Tls>,
    patience: Duration,
) -> Result<(), tonic::Status> {
    let reg = pgquorum::cluster::wire::Registration {
        cluster: "main".into(),
        node: "n1".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        http: "127.0.0.1:1".into(),
        tags: Default::default(),
    };
    let payload = serde_json::to_vec(&reg).expect("json");
    let deadline = std::time::Instant::now() + patience;
    loop {
        let mut last = tonic::Status::unavailable("no manager tried");
        for a in addresses {
            let channel = pgquorum::transport::channel(a, tls).expect("channel");
            let mut req = tonic::Request::new(AgentEnvelope {
                payload: payload.clone(),
            });
            req.set_timeout(Duration::from_secs(3));
            match AgentChannelClient::new(channel).register(req).await {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::Unavailable => last = s,
                Err(s) => return Err(s),
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn refused(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} was not refused: {}{}",
        stdout(out),
        stderr(out)
    );
    let e = stderr(out);
    assert!(
        e.contains("needs a token") || e.contains("does not match"),
        "{what}: not an authentication refusal: {e}"
    );
}

/// GET `path` over HTTPS, trusting `ca`; the HTTP status.
async fn https_get(address: &str, ca: &Path, path: &str) -> Option<u16> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).ok()? {
        roots.add(c.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
        let name = ServerName::try_from("127.0.0.1").ok()?;
        let mut s = connector.connect(name, tcp).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        // The server may close without close_notify: keep what arrived.
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_clients_with_the_ca_and_a_token_or_certificate_get_in() {
    let mut g = Group::start();
    let addresses: Vec<String> = (1..=3).map(|id| g.address(id)).collect();

    // tls init never overwrites.
    let again = cli(&["tls", "init", &g.cert("")]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already exist"),
        "{}",
        stderr(&again)
    );

    // A leader, seen over TLS with the CA alone (read-only).
    wait_for("a leader", LONG, || async {
        let out = g.cli(&[], &["--json", "managers", "list"]);
        (out.status.success() && stdout(&out).contains("\"leader\"")).then_some(())
    })
    .await;

    // Agents: no client certificate, no registration.
    let ca_only = g.tls(None);
    let err = register(&addresses, Some(&ca_only), LONG)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{err:?}");
    // Plaintext does not even reach the service.
    let err = register(&addresses[..1], None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    // With the node certificate it works (this creates cluster `main`).
    let node = g.tls(Some(("node.pem", "node.key")));
    register(&addresses, Some(&node), LONG)
        .await
        .expect("register with a client certificate");

    // Raft without a client certificate is refused.
    let channel = pgquorum::transport::channel(&g.address(2), Some(&ca_only)).expect("channel");
    let err = RaftClient::new(channel)
        .vote(RaftMessage {
            target: 2,
            from: 9,
            group: String::new(),
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // No CA: the CLI cannot talk to the managers, and says why.
    let out = cli(&["--managers", &g.managers(), "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("--tls-ca"), "{}", stderr(&out));

    // The CA alone: reads work, changes are refused and change nothing.
    ok(&g.cli(&[], &["status"]), "status");
    ok(&g.cli(&[], &["managers", "list"]), "managers list");
    ok(&g.cli(&[], &["history"]), "history");
    let shown = ok(&g.cli(&[], &["config", "show"]), "config show");
    assert!(!shown.contains("work_mem"), "{shown}");
    let denied: &[&[&str]] = &[
        &["pause"],
        &["resume"],
        &["config", "set", "postgresql.parameters.work_mem=5MB"],
        &["switchover", "--force", "--no-wait"],
        &["failover", "--to", "n1", "--force", "--no-wait"],
        &["node", "restart", "n1", "--no-wait"],
        &["node", "reinit", "n1", "--force", "--no-wait"],
        &["managers", "add", "9", "127.0.0.1:1"],
        &["managers", "remove", "3"],
    ];
    for args in denied {
        refused(&g.cli(&[], args), &args.join(" "));
        refused(&g.cli(&["--token", "wrong"], args), &args.join(" "));
    }
    let status = ok(&g.cli(&["--json"], &["status"]), "status");
    assert!(status.contains("\"paused\": false"), "{status}");
    assert!(!ok(&g.cli(&[], &["config", "show"]), "config show").contains("work_mem"));

    // The token (from a file, the environment or the flag): every command.
    let token_file = g.cert("token");
    let with_file = ["--token-file", token_file.as_str()];
    ok(&g.cli(&with_file, &["pause"]), "pause with the token");
    let status = ok(&g.cli(&["--json"], &["status"]), "status");
    assert!(status.contains("\"paused\": true"), "{status}");
    let token = std::fs::read_to_string(g.certs.join("token")).expect("token");
    let out = Command::new(bin())
        .args([
            "--managers",
            &g.managers(),
            "--tls-ca",
            &g.cert("ca.pem"),
            "resume",
        ])
        .env("PGQUORUM_TOKEN", token.trim())
        .output()
        .expect("run");
    ok(&out, "resume with PGQUORUM_TOKEN");
    assert!(!stdout(&out).contains(token.trim()) && !stderr(&out).contains(token.trim()));
    let with_token = ["--token", token.trim()];
    ok(
        &g.cli(
            &with_token,
            &["config", "set", "postgresql.parameters.work_mem=6MB"],
        ),
        "config set with the token",
    );
    ok(&g.cli(&with_token, &["history"]), "history");
    // Commands that need real nodes get past authorization (and fail on
    // the cluster's state instead).
    for args in &denied[3..7] {
        let out = g.cli(&with_token, args);
        let e = stderr(&out);
        assert!(
            !e.contains("token") && !e.contains("certificate"),
            "{}: {e}",
            args.join(" ")
        );
    }

    // A write reaches every manager: Raft runs over mutual TLS.
    for id in 1..=3 {
        wait_for(&format!("work_mem on manager {id}"), LONG, || async {
            let c = g.local_config(id).await?;
            (c.get("postgresql.parameters.work_mem").map(String::as_str) == Some("6MB"))
                .then_some(())
        })
        .await;
    }

    // The client certificate instead of the token, addressed to each
    // manager in turn (followers forward to the leader with their own
    // certificate).
    let cert = g.cert("client.pem");
    let key = g.cert("client.key");
    let with_cert = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    for (i, address) in addresses.iter().enumerate() {
        let value = format!("postgresql.parameters.work_mem={}MB", 10 + i);
        let out = cli(&[
            "--managers",
            address,
            "--tls-ca",
            &g.cert("ca.pem"),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "config",
            "set",
            &value,
        ]);
        ok(&out, &format!("config set through {address}"));
    }
    ok(&g.cli(&with_cert, &["pause"]), "pause with a certificate");
    ok(&g.cli(&with_cert, &["resume"]), "resume with a certificate");
    let shown = ok(&g.cli(&with_cert, &["config", "show"]), "config show");
    assert!(shown.contains("12MB"), "{shown}");

    // Membership over TLS: a fourth manager joins and leaves.
    let p4 = free_port();
    let a4 = format!("127.0.0.1:{p4}");
    g.procs.push(g.spawn(4, &["--join", "--listen", &a4]));
    let list = ok(
        &g.cli(&with_cert, &["managers", "add", "4", &a4]),
        "managers add",
    );
    assert!(list.contains(&a4), "{list}");
    let list = ok(
        &g.cli(&with_token, &["managers", "remove", "4"]),
        "managers remove",
    );
    assert!(!list.contains(&a4), "{list}");

    // A client certificate from another CA fails the handshake: the client
    // trusts both CAs (so it accepts the managers), the managers only theirs.
    let other = tls_init(&g.dir.path().join("other"));
    let bundle = g.dir.path().join("both.pem");
    let mut both = std::fs::read(g.certs.join("ca.pem")).expect("ca");
    both.extend(std::fs::read(other.join("ca.pem")).expect("other ca"));
    std::fs::write(&bundle, both).expect("bundle");
    let foreign = Tls::load(
        &bundle,
        Some((&other.join("client.pem"), &other.join("client.key"))),
    )
    .expect("foreign identity");
    let channel = pgquorum::transport::channel(&g.address(1), Some(&foreign)).expect("channel");
    let mut req = tonic::Request::new(SetConfigRequest {
        cluster: "main".into(),
        changes: [(
            "postgresql.parameters.work_mem".to_string(),
            "99MB".to_string(),
        )]
        .into(),
    });
    req.set_timeout(Duration::from_secs(3));
    let err = PgQuorumClient::new(channel)
        .set_config(req)
        .await
        .expect_err("a foreign certificate must not get in");
    assert_ne!(err.code(), tonic::Code::Ok);
    let err = register(&addresses[..1], Some(&foreign), Duration::ZERO)
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert!(!ok(&g.cli(&[], &["config", "show"]), "config show").contains("99MB"));

    // Metrics over HTTPS (manager 1's config file), not over plain HTTP.
    let metrics = format!("127.0.0.1:{}", g.metrics_port);
    let code = wait_for("metrics over HTTPS", LONG, || async {
        https_get(&metrics, &g.certs.join("ca.pem"), "/metrics").await
    })
    .await;
    assert_eq!(code, 200);
    assert_eq!(common::deploy::http_get(&metrics, "/metrics").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_files_stop_a_manager_before_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = tls_init(dir.path());
    let port = free_port();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "manager".to_string(),
            "--id".into(),
            "1".into(),
            "--peers".into(),
            format!("1=127.0.0.1:{port}"),
            "--data-dir".into(),
            path(&dir.path().join("m1")).into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(bin()).args(&args).output().expect("run")
    };
    let c = |f: &str| path(&certs.join(f)).to_string();
    let missing = path(&dir.path().join("missing.pem")).to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls-ca".into(),
                missing.clone(),
                "--tls-cert".into(),
                c("node.pem"),
                "--tls-key".into(),
                c("node.key"),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--tls-ca".into(),
                c("token"),
                "--tls-cert".into(),
                c("node.pem"),
                "--tls-key".into(),
                c("node.key"),
            ],
            "no certificate",
        ),
        (
            vec![
                "--tls-ca".into(),
                c("ca.pem"),
                "--tls-cert".into(),
                c("node.pem"),
                "--tls-key".into(),
                c("client.key"),
            ],
            "client.key",
        ),
        (
            vec!["--tls-ca".into(), c("ca.pem")],
            "own certificate and key",
        ),
        (
            vec![
                "--tls-ca".into(),
                c("ca.pem"),
                "--tls-cert".into(),
                c("node.pem"),
                "--tls-key".into(),
                c("node.key"),
                "--api-token-file".into(),
                missing.clone(),
            ],
            "missing.pem",
        ),
    ];
    for (extra, expect) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = run(&extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{extra:?}: {}", stderr(&out));
    }
    assert!(
        !dir.path().join("m1").exists(),
        "nothing is created on bad input"
    );

    // The certificate must name the host others dial.
    let other = dir.path().join("named");
    let out = cli(&["tls", "init", path(&other), "--hosts", "db1.example"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&[
        "--tls-ca",
        path(&other.join("ca.pem")),
        "--tls-cert",
        path(&other.join("node.pem")),
        "--tls-key",
        path(&other.join("node.key")),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("127.0.0.1"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_mutual_tls_runs_postgresql() {
    let dir = tempfile::Builder::new()
        .prefix("pgq-tls-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let certs = tls_init(dir.path());
    let c = |f: &str| path(&certs.join(f)).to_string();
    let port = free_port();
    let manager = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin());
    cmd.args(["manager", "--id", "1", "--peers", &format!("1={manager}")])
        .args(["--tls-ca", &c("ca.pem"), "--tls-cert", &c("node.pem")])
        .args(["--tls-key", &c("node.key"), "--api-token-file", &c("token")])
        .arg("--data-dir")
        .arg(dir.path().join("m1"));
    let _m = Proc::spawn("manager", &mut cmd, &dir.path().join("m1.log"));

    let node = dir.path().join("n1");
    let _node = NodeGuard(node.clone());
    std::fs::create_dir_all(&node).expect("node dir");
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let http = format!("127.0.0.1:{}", free_port());
    let config = node.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"n1\"\ncluster = \"main\"\nmanagers = [\"{manager}\"]\nhttp_listen = \"{http}\"\n\
             state_dir = \"{state}\"\nregister_timeout = \"60s\"\n\n\
             [tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nhttp_cert = \"{cert}\"\nhttp_key = \"{key}\"\n\n\
             [postgresql]\ndata_dir = \"{data}\"\nlisten = \"127.0.0.1\"\nport = {pg}\nsocket_dir = \"{socket}\"\n\
             log_file = \"{log}\"\nhba = [\"local all all trust\", \"host all all 127.0.0.1/32 trust\", \"host replication all 127.0.0.1/32 trust\"]\n\n\
             [postgresql.parameters]\nshared_buffers = \"32MB\"\nmax_connections = \"20\"\n",
            state = node.join("agent").display(),
            ca = c("ca.pem"),
            cert = c("node.pem"),
            key = c("node.key"),
            data = node.join("data").display(),
            pg = free_port(),
            socket = node.join("socket").display(),
            log = node.join("postgresql.log").display(),
        ),
    )
    .expect("agent config");

    // Without its certificate the agent does not start.
    let bare = node.join("bare.toml");
    let text = std::fs::read_to_string(&config).expect("read");
    let text = text
        .lines()
        .filter(|l| !l.starts_with("cert =") && !l.starts_with("key ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&bare, text).expect("write");
    let out = cli(&["agent", "--config", path(&bare)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-cert"), "{}", stderr(&out));

    let mut cmd = Command::new(bin());
    cmd.args(["agent", "--config", path(&config)]);
    let _a = Proc::spawn("agent", &mut cmd, &node.join("agent.log"));

    let token = std::fs::read_to_string(certs.join("token")).expect("token");
    let base = ["--managers", manager.as_str(), "--tls-ca", &c("ca.pem")];
    wait_for(
        "the node to run as primary",
        Duration::from_secs(90),
        || async {
            let mut args = base.to_vec();
            args.extend(["--json", "status"]);
            let out = cli(&args);
            let s = stdout(&out);
            (out.status.success() && s.contains("\"role\": \"primary\"")).then_some(())
        },
    )
    .await;
    let code = wait_for("HTTPS /primary", LONG, || async {
        https_get(&http, &certs.join("ca.pem"), "/primary")
            .await
            .filter(|c| *c == 200)
    })
    .await;
    assert_eq!(code, 200);

    // Commands reach the agent: a restart ordered with the token.
    let mut args = base.to_vec();
    args.extend(["--token", token.trim(), "node", "restart", "n1"]);
    let out = cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The commented TLS sections of the example configurations parse once
/// uncommented.
#[test]
fn example_tls_sections_parse() {
    let uncomment = |name: &str| -> String {
        let text = std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR")))
            .expect("example file");
        text.lines()
            .map(|l| {
                let rest = l.strip_prefix("# ").unwrap_or(l);
                let key = rest.split(" =").next().unwrap_or("");
                let tls = rest == "[tls]"
                    || [
                        "api_token_file",
                        "ca",
                        "cert",
                        "key",
                        "http_cert",
                        "http_key",
                    ]
                    .contains(&key);
                if tls {
                    rest
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let m: pgquorum::manager::config::ManagerFile =
        toml::from_str(&uncomment("manager.toml")).expect("manager.toml with TLS");
    assert!(m.tls.ca.is_some() && m.tls.http_key.is_some() && m.api_token_file.is_some());
    let a: pgquorum::agent::config::AgentFile =
        toml::from_str(&uncomment("agent.toml")).expect("agent.toml with TLS");
    assert!(a.tls.cert.is_some() && a.tls.http_cert.is_some());
}
