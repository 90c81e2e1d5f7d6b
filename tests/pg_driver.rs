//! The PostgreSQL driver against real PostgreSQL 15 servers (no mocks).
//!
//! Each test has its own directory under /tmp and its own random ports;
//! every server is stopped by a guard's Drop even when the test fails.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgquorum::agent::postgres::{
    find_bin_dir, DataDirState, ManagedSettings, PgConfig, PgError, PgStatus, Postgres,
    RewindOutcome, Upstream,
};
use rand::Rng;

const START: Duration = Duration::from_secs(60);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pgquorum=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free TCP port in 20000–40000, never handed out twice in this process.
fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20000..40000);
        let mut used = USED.lock().unwrap();
        let used = used.get_or_insert_with(HashSet::new);
        if used.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        used.insert(port);
        return port;
    }
}

/// A test's directory; kept (and named) when the test failed.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        init_tracing();
        let n: u32 = rand::thread_rng().gen();
        let root = PathBuf::from(format!("/tmp/pgq-{name}-{n:08x}"));
        std::fs::create_dir_all(&root).unwrap();
        // The PostgreSQL OS user must be able to traverse it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        TestDir(root)
    }

    fn config(&self, name: &str, archive: bool) -> PgConfig {
        let base = self.0.join(name);
        PgConfig {
            bin_dir: find_bin_dir(None).unwrap(),
            data_dir: base.join("data"),
            listen_addresses: "127.0.0.1".into(),
            port: free_port(),
            socket_dir: base.join("sock"),
            node_name: name.into(),
            hba: vec![
                "local all all trust".into(),
                "host all all 127.0.0.1/32 trust".into(),
                "local replication all trust".into(),
                "host replication all 127.0.0.1/32 trust".into(),
            ],
            archive_dir: archive.then(|| self.0.join("archive")),
            log_file: base.join("log").join("postgresql.log"),
            initdb_options: vec!["--encoding=UTF8".into(), "--locale=C".into()],
            keeper_dir: base.join("keeper"),
            keeper_binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_pgquorum"))),
            ..PgConfig::default()
        }
    }

    fn node(&self, name: &str, archive: bool) -> Node {
        Node(Postgres::new(self.config(name, archive)).unwrap())
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: its files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A node whose server is stopped (immediately) when the test ends.
struct Node(Postgres);

impl std::ops::Deref for Node {
    type Target = Postgres;
    fn deref(&self) -> &Postgres {
        &self.0
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pg = &self.0;
        // The keeper goes first: its death takes PostgreSQL down with it.
        if let Some(keeper) = pgquorum::keeper::running_pid(&pg.config().keeper_dir) {
            let _ = kill(Pid::from_raw(keeper), Signal::SIGKILL);
            pgquorum::process::wait_gone(&[keeper], Duration::from_secs(5));
        }
        for pid in pg.running_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        if pg.running_pids().is_empty() {
            return;
        }
        let cfg = pg.config();
        let mut cmd = std::process::Command::new(cfg.bin_dir.join("pg_ctl"));
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
            .arg(&cfg.data_dir)
            .current_dir("/")
            .stdout(std::process::Stdio::null());
        let user = pg.os_user();
        if user.switch {
            use std::os::unix::process::CommandExt;
            cmd.uid(user.uid).gid(user.gid);
        }
        let _ = cmd.status();
        for pid in pg.running_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Node {
    fn upstream(&self) -> Upstream {
        let c = self.config();
        Upstream {
            node: c.node_name.clone(),
            host: "127.0.0.1".into(),
            port: c.port,
        }
    }

    async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.config().port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn exec(&self, sql: &str) {
        self.client()
            .await
            .unwrap()
            .batch_execute(sql)
            .await
            .unwrap();
    }

    async fn ints(&self, sql: &str) -> Option<Vec<i32>> {
        let client = self.client().await.ok()?;
        let rows = client.query(sql, &[]).await.ok()?;
        Some(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn status_where(&self, what: &str, ok: impl Fn(&PgStatus) -> bool) -> PgStatus {
        wait_for(what, Duration::from_secs(30), || async {
            self.status().await.filter(|s| ok(s))
        })
        .await
    }
}

/// Poll `f` every 100 ms until it yields something, failing after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn find_bin_dir_names_the_missing_program() {
    let dir = TestDir::new("bindir");
    let e = find_bin_dir(Some(&dir.0)).unwrap_err();
    assert!(
        matches!(
            e,
            PgError::MissingProgram {
                program: "postgres",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("`postgres` is missing"), "{e}");
    // A directory with postgres but without pg_rewind names pg_rewind.
    for p in [
        "postgres",
        "pg_ctl",
        "initdb",
        "pg_basebackup",
        "pg_controldata",
    ] {
        std::fs::write(dir.0.join(p), "").unwrap();
    }
    let e = find_bin_dir(Some(&dir.0)).unwrap_err();
    assert!(e.to_string().contains("`pg_rewind`"), "{e}");
    let found = find_bin_dir(None).unwrap();
    assert!(found.join("pg_ctl").is_file(), "{}", found.display());
}

#[tokio::test]
async fn inspect_tells_empty_from_foreign() {
    let dir = TestDir::new("inspect");
    let node = dir.node("n1", false);
    let data = node.config().data_dir.clone();
    assert_eq!(node.inspect().await, DataDirState::Empty, "missing dir");
    std::fs::create_dir_all(&data).unwrap();
    assert_eq!(node.inspect().await, DataDirState::Empty, "empty dir");

    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    let DataDirState::Foreign { reason } = node.inspect().await else {
        panic!("a dir with a stray file must be foreign")
    };
    assert!(reason.contains("PG_VERSION"), "{reason}");

    std::fs::write(data.join("PG_VERSION"), "9\n").unwrap();
    let DataDirState::Foreign { reason } = node.inspect().await else {
        panic!("another major version must be foreign")
    };
    assert!(reason.contains("PostgreSQL 9"), "{reason}");

    std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    let DataDirState::Foreign { reason } = node.inspect().await else {
        panic!("no control file must be foreign")
    };
    assert!(reason.contains("control data"), "{reason}");

    // Neither initdb nor a clone touches it.
    assert!(matches!(node.initdb().await, Err(PgError::Refused { .. })));
    assert_eq!(
        std::fs::read_to_string(data.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[tokio::test]
async fn basebackup_refuses_non_empty_and_cleans_up_after_failure() {
    let dir = TestDir::new("clone");
    let node = dir.node("n1", false);
    let data = node.config().data_dir.clone();
    let nowhere = Upstream {
        node: "nowhere".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
    };

    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("precious"), "keep me").unwrap();
    let e = node
        .basebackup(&nowhere, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(e, PgError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("wipe"), "{e}");
    assert_eq!(
        std::fs::read_to_string(data.join("precious")).unwrap(),
        "keep me"
    );

    std::fs::remove_file(data.join("precious")).unwrap();
    let e = node
        .basebackup(&nowhere, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(e, PgError::Failed { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pg_basebackup") && msg.contains("nowhere"),
        "{msg}"
    );
    assert_eq!(node.inspect().await, DataDirState::Empty);
    assert!(is_empty_dir(&data));
}

#[tokio::test]
async fn replicate_promote_fence_and_rewind() {
    let t0 = Instant::now();
    let dir = TestDir::new("failover");
    let settings = ManagedSettings::default();
    let n1 = dir.node("n1", true);
    let n2 = dir.node("n2", true);

    // --- bootstrap n1 as primary
    assert_eq!(n1.inspect().await, DataDirState::Empty);
    n1.initdb().await.unwrap();
    let DataDirState::Valid {
        system_identifier,
        timeline: 1,
        standby: false,
        clean_shutdown: true,
        ..
    } = n1.inspect().await
    else {
        panic!("fresh cluster: {:?}", n1.inspect().await)
    };
    let mode = std::fs::metadata(&n1.config().data_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    n1.write_config(&settings, None).await.unwrap();
    n1.write_config(&settings, None).await.unwrap(); // idempotent
    let main = std::fs::read_to_string(n1.config().data_dir.join("postgresql.conf")).unwrap();
    assert_eq!(
        main.matches("include_if_exists = 'pgquorum.conf'").count(),
        1
    );
    n1.start(START).await.unwrap();
    n1.start(START).await.unwrap(); // no-op when running
    let s1 = n1.status().await.expect("primary answers");
    assert!(!s1.in_recovery);
    assert_eq!(s1.timeline, 1);
    assert_eq!(s1.system_identifier, system_identifier);
    assert!(s1.lsn.0 > 0 && s1.received_lsn.0 > 0);
    assert!(s1.wal_receiver.is_none());
    n1.ensure_replication_role().await.unwrap();
    n1.ensure_replication_role().await.unwrap();
    assert_eq!(
        n1.ints("SELECT count(*)::int FROM pg_roles WHERE rolname = 'replicator' AND rolreplication AND rolcanlogin")
            .await,
        Some(vec![1])
    );

    // --- archive: a switched segment lands in the archive directory
    n1.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()")
        .await
        .unwrap();
    let archive = n1.config().archive_dir.clone().unwrap();
    wait_for(
        "an archived WAL segment",
        Duration::from_secs(20),
        || async { (!is_empty_dir(&archive)).then_some(()) },
    )
    .await;

    // --- clone n2 and let it stream from n1
    n2.basebackup(&n1.upstream(), Duration::from_secs(60))
        .await
        .unwrap();
    n2.write_config(&settings, Some(&n1.upstream()))
        .await
        .unwrap();
    n2.set_standby(true).unwrap();
    n2.start(START).await.unwrap();
    let s2 = n2
        .status_where("n2 streaming", |s| {
            s.wal_receiver
                .as_ref()
                .is_some_and(|w| w.status == "streaming")
        })
        .await;
    assert!(s2.in_recovery);
    assert_eq!(s2.timeline, 1);
    assert_eq!(s2.system_identifier, system_identifier);
    let w = s2.wal_receiver.unwrap();
    assert_eq!(
        (w.sender_host.as_str(), w.sender_port),
        ("127.0.0.1", n1.config().port)
    );
    let s1 = n1
        .status_where("n1 lists n2", |s| {
            s.replicas
                .iter()
                .any(|r| r.application_name == "n2" && r.state == "streaming")
        })
        .await;
    assert_eq!(s1.replicas[0].sync_state, "async");

    // --- synchronous replication: the primary waits for n2 by name
    let sync = ManagedSettings {
        synchronous_standby_names: "n2".into(),
        ..ManagedSettings::default()
    };
    n1.write_config(&sync, None).await.unwrap();
    n1.reload().await.unwrap();
    let s1 = n1
        .status_where("n2 as sync standby", |s| {
            s.replicas.first().is_some_and(|r| r.sync_state == "sync")
        })
        .await;
    assert_eq!(s1.synchronous_standby_names, "n2");

    n1.exec("INSERT INTO t VALUES (2)").await;
    n1.write_config(&settings, None).await.unwrap();
    n1.reload().await.unwrap();
    n1.status_where("asynchronous again", |s| {
        s.synchronous_standby_names.is_empty()
    })
    .await;
    wait_for("row 2 on n2", Duration::from_secs(20), || async {
        n2.ints("SELECT x FROM t WHERE x = 2")
            .await
            .filter(|v| !v.is_empty())
    })
    .await;

    // --- promote n2
    n2.promote(Duration::from_secs(30)).await.unwrap();
    n2.promote(Duration::from_secs(30)).await.unwrap(); // no-op on a primary
    let s2 = n2.status().await.unwrap();
    assert!(!s2.in_recovery);
    assert_eq!(s2.timeline, 2, "{s2:?}");
    n2.write_config(&settings, None).await.unwrap();
    n2.set_standby(false).unwrap();
    n2.reload().await.unwrap();
    n2.exec("INSERT INTO t VALUES (3)").await;

    // --- n1 diverges, then is fenced
    n1.exec("INSERT INTO t VALUES (100); SELECT pg_switch_wal()")
        .await;
    let f0 = Instant::now();
    n1.fence().await.unwrap();
    let fence_time = f0.elapsed();
    eprintln!("fence (SIGQUIT path) took {fence_time:?}");
    assert!(n1.postmaster_pid().is_none());
    assert!(n1.running_pids().is_empty());
    assert!(
        n1.client().await.is_err(),
        "a fenced server must refuse connections"
    );
    assert!(n1.status().await.is_none());
    n1.fence().await.unwrap(); // nothing left to fence
    let DataDirState::Valid {
        clean_shutdown: false,
        ..
    } = n1.inspect().await
    else {
        panic!("fenced: {:?}", n1.inspect().await)
    };

    // --- crash recovery, rewind, follow n2
    n1.crash_recover(START).await.unwrap();
    let DataDirState::Valid {
        clean_shutdown: true,
        timeline: 1,
        ..
    } = n1.inspect().await
    else {
        panic!("after crash recovery: {:?}", n1.inspect().await)
    };
    let outcome = n1
        .rewind(&n2.upstream(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outcome, RewindOutcome::Rewound);
    n1.write_config(&settings, Some(&n2.upstream()))
        .await
        .unwrap();
    n1.set_standby(true).unwrap();
    n1.start(START).await.unwrap();
    let s1 = n1
        .status_where("n1 streaming from n2 on timeline 2", |s| {
            s.timeline == 2
                && s.wal_receiver
                    .as_ref()
                    .is_some_and(|w| w.status == "streaming")
        })
        .await;
    assert!(s1.in_recovery);
    assert_eq!(s1.wal_receiver.unwrap().sender_port, n2.config().port);
    n2.status_where("n2 lists n1", |s| {
        s.replicas.iter().any(|r| r.application_name == "n1")
    })
    .await;
    n2.exec("INSERT INTO t VALUES (4)").await;
    let rows = wait_for("row 4 on n1", Duration::from_secs(20), || async {
        n1.ints("SELECT x FROM t ORDER BY x")
            .await
            .filter(|v| v.contains(&4))
    })
    .await;
    assert_eq!(rows, vec![1, 2, 3, 4], "the diverged row 100 must be gone");

    // --- a fenced standby recovers as a standby and follows again
    n1.fence().await.unwrap();
    n1.crash_recover(START).await.unwrap();
    let DataDirState::Valid {
        clean_shutdown: true,
        standby: true,
        ..
    } = n1.inspect().await
    else {
        panic!("standby after crash recovery: {:?}", n1.inspect().await)
    };
    n1.start(START).await.unwrap();
    n2.exec("INSERT INTO t VALUES (5)").await;
    wait_for("row 5 on n1", Duration::from_secs(20), || async {
        n1.ints("SELECT x FROM t WHERE x = 5")
            .await
            .filter(|v| !v.is_empty())
    })
    .await;

    n1.stop(pgquorum::agent::postgres::StopMode::Fast, START)
        .await
        .unwrap();
    let DataDirState::Valid {
        clean_shutdown: true,
        standby: true,
        ..
    } = n1.inspect().await
    else {
        panic!("after stop: {:?}", n1.inspect().await)
    };
    eprintln!("failover scenario took {:?}", t0.elapsed());
}

#[tokio::test]
async fn fence_kills_a_stopped_postmaster_and_its_backends() {
    let dir = TestDir::new("fence");
    let n1 = dir.node("n1", false);
    n1.initdb().await.unwrap();
    n1.write_config(&ManagedSettings::default(), None)
        .await
        .unwrap();
    n1.start(START).await.unwrap();
    let client = n1.client().await.unwrap();
    let pm = n1.postmaster_pid().unwrap();
    let backends = n1.running_pids();
    assert!(backends.len() > 3, "{backends:?}");

    kill(Pid::from_raw(pm), Signal::SIGSTOP).unwrap();
    // A frozen server: status gives up within its budget.
    let s0 = Instant::now();
    assert!(n1.status().await.is_none());
    assert!(s0.elapsed() < Duration::from_secs(3), "{:?}", s0.elapsed());

    let f0 = Instant::now();
    n1.fence().await.unwrap();
    eprintln!("fence (SIGSTOPped postmaster) took {:?}", f0.elapsed());
    assert!(n1.running_pids().is_empty());
    assert!(client.simple_query("SELECT 1").await.is_err());
    assert!(n1.client().await.is_err());

    // It comes back after crash recovery at the next start.
    n1.start(START).await.unwrap();
    assert!(!n1.status().await.unwrap().in_recovery);

    // A restart-only parameter shows as pending until restart().
    let mut settings = ManagedSettings::default();
    settings
        .parameters
        .insert("max_connections".into(), "50".into());
    n1.write_config(&settings, None).await.unwrap();
    n1.reload().await.unwrap();
    n1.status_where("pending restart", |s| s.pending_restart)
        .await;
    n1.restart(START).await.unwrap();
    assert!(!n1.status().await.unwrap().pending_restart);
    let client = n1.client().await.unwrap();
    let rows = client.simple_query("SHOW max_connections").await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("50"));

    let f0 = Instant::now();
    n1.fence().await.unwrap();
    eprintln!("fence (running postmaster) took {:?}", f0.elapsed());
    assert!(n1.running_pids().is_empty());
}
