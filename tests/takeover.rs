//! Taking over a Patroni cluster's data directories without re-cloning:
//! the procedure of docs/operations/coming-from-patroni.md, step by step.
//!
//! Patroni is not installed here, so a stand-in leaves two PostgreSQL 15
//! data directories the way Patroni does, and runs them the way Patroni's
//! servers run once Patroni is paused and stopped (PostgreSQL left up):
//!
//! * member `postgresql0` (host h1), the leader: `initdb`, then Patroni's
//!   file layout — the original `postgresql.conf` renamed
//!   `postgresql.base.conf`, a Patroni-written `postgresql.conf` that
//!   includes it and sets the server parameters (`listen_addresses`,
//!   `port`, `wal_level`, `hot_standby`, `wal_log_hints`, `max_wal_senders`,
//!   `max_replication_slots`, `wal_keep_size`, `hba_file`, `ident_file`, …),
//!   a Patroni `pg_hba.conf` (password authentication), `patroni.dynamic.json`,
//!   the superuser's password and the `replicator` role, and a physical slot
//!   named after the replica member (`postgresql1`);
//! * member `postgresql1` (host h2), a replica made with `pg_basebackup` as
//!   `replicator` (a password file, as Patroni's `passfile`), then Patroni's
//!   replica `postgresql.conf` with its `# recovery.conf` block
//!   (`primary_conninfo` with `application_name=postgresql1`,
//!   `primary_slot_name = 'postgresql1'`, `recovery_target_timeline`),
//!   `standby.signal`, and a slot for the other member (`postgresql0`), as
//!   Patroni keeps member slots on replicas;
//! * both servers started with plain `pg_ctl` as the `postgres` OS user.
//!
//! Not modelled: Patroni itself (`patronictl pause`, stopping the daemon),
//! its REST API and DCS, and the command-line options Patroni passes to the
//! postmaster (the same parameters are in its `postgresql.conf`, which is
//! what a server started without Patroni reads).
//!
//! The takeover: stop both servers cleanly (the leader first), start the
//! managers, the old leader's agent (the cluster is bootstrapped on its data
//! directory), then the replica's agent; then drop Patroni's slots and
//! remove `patroni.dynamic.json`. The test proves that every row is on both
//! nodes, that the primary is the old leader on the same timeline (nothing
//! was promoted), that the replica was neither cloned nor rewritten (a
//! marker file in its data directory survives, its agent never cloned), that
//! it streams from the new primary through pgquorum's slot, and that a
//! Patroni setting left in `postgresql.conf` (the old `primary_conninfo`
//! and `primary_slot_name`) is not in force.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::deploy::{Deployment, PG_PORT};
use common::netns::{Host, Network};
use common::sandbox::{poll, psql, PG_BIN};
use common::{pg_owner, wait_for};

const LONG: Duration = Duration::from_secs(180);
const REPLICATOR_PASSWORD: &str = "rep-secret";
const SUPERUSER_PASSWORD: &str = "su-secret";

fn chown_pg(path: &Path) {
    if let Some((uid, gid)) = pg_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

/// A directory the PostgreSQL OS user owns, with `mode`.
fn pg_dir(path: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir_all(path).expect("create dir");
    chown_pg(path);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_path_buf()
}

/// A file the PostgreSQL OS user owns (mode 0600), as Patroni writes them.
fn pg_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
    chown_pg(path);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Run a PostgreSQL server program (from `PG_BIN`) as the PostgreSQL OS
/// user: [`common::as_pg`].
fn as_pg(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    common::as_pg(&Path::new(PG_BIN).join(program), args, env)
}

/// One field of `pg_controldata`.
fn controldata(data: &Path, field: &str) -> String {
    let out = as_pg("pg_controldata", &["-D", &data.display().to_string()], &[]);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field:?} in pg_controldata: {out}"))
        .trim()
        .to_string()
}

/// A Patroni member's host: its data directory, where its PostgreSQL
/// listens, and the files Patroni keeps outside the data directory.
struct Member {
    /// Patroni's name for it.
    name: &'static str,
    host: Host,
    data: PathBuf,
    socket: PathBuf,
    /// Patroni's own directory: the server log, the password file.
    patroni: PathBuf,
}

impl Member {
    fn new(d: &Deployment, host: &Host, name: &'static str) -> Member {
        let dir = d.host_dir(host);
        Member {
            name,
            host: host.clone(),
            data: dir.join("data"),
            // The agent's socket_dir is the same directory (on a real host,
            // both would be /var/run/postgresql).
            socket: pg_dir(&dir.join("socket"), 0o755),
            patroni: pg_dir(&dir.join("patroni"), 0o700),
        }
    }

    /// The superuser over the local socket (trusted by both Patroni's
    /// pg_hba.conf and pgquorum's).
    fn local(&self) -> String {
        format!(
            "host={} port={PG_PORT} user=postgres dbname=postgres",
            self.socket.display()
        )
    }

    fn sql(&self, sql: &str) -> String {
        psql(&self.local(), sql).unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.name))
    }

    /// Wait until `sql` answers `want` here.
    fn wait_value(&self, sql: &str, want: &str) {
        poll(
            &format!("{sql} = {want} on {}", self.name),
            LONG,
            || match psql(&self.local(), sql) {
                Ok(v) if v == want => Ok(()),
                Ok(v) => Err(format!("it is {v:?}")),
                Err(e) => Err(e),
            },
        );
    }

    fn pgpass(&self) -> PathBuf {
        self.patroni.join("pgpass")
    }

    /// Patroni's `postgresql.conf`: the original renamed
    /// `postgresql.base.conf` and included, then the parameters from its
    /// configuration (here: the dynamic configuration's defaults, with the
    /// test hosts' `max_connections` and `shared_buffers`), then on a replica
    /// its recovery settings.
    fn write_patroni_conf(&self, upstream: Option<&Member>) {
        let base = self.data.join("postgresql.base.conf");
        if !base.exists() {
            std::fs::rename(self.data.join("postgresql.conf"), &base).expect("rename");
        }
        let mut conf = format!(
            "# Do not edit this file manually!\n\
             # It will be overwritten by Patroni!\n\
             include 'postgresql.base.conf'\n\n\
             cluster_name = 'pgcluster'\n\
             hot_standby = 'on'\n\
             listen_addresses = '{address}'\n\
             max_connections = '50'\n\
             max_locks_per_transaction = '64'\n\
             max_prepared_transactions = '0'\n\
             max_replication_slots = '10'\n\
             max_wal_senders = '10'\n\
             max_worker_processes = '8'\n\
             port = '{PG_PORT}'\n\
             shared_buffers = '32MB'\n\
             track_commit_timestamp = 'off'\n\
             unix_socket_directories = '{socket}'\n\
             wal_keep_size = '128MB'\n\
             wal_level = 'replica'\n\
             wal_log_hints = 'on'\n\
             hba_file = '{data}/pg_hba.conf'\n\
             ident_file = '{data}/pg_ident.conf'\n",
            address = self.host.address,
            socket = self.socket.display(),
            data = self.data.display(),
        );
        if let Some(up) = upstream {
            conf.push_str(&format!(
                "\n# recovery.conf\n\
                 primary_conninfo = 'dbname=postgres user=replicator passfile={pgpass} host={host} \
                 port={PG_PORT} sslmode=prefer application_name={name} gssencmode=prefer \
                 channel_binding=prefer'\n\
                 primary_slot_name = '{name}'\n\
                 recovery_target_timeline = 'latest'\n",
                pgpass = self.pgpass().display(),
                host = up.host.address,
                name = self.name,
            ));
        }
        pg_file(&self.data.join("postgresql.conf"), &conf);
        pg_file(
            &self.data.join("pg_hba.conf"),
            "# Do not edit this file manually!\n\
             # It will be overwritten by Patroni!\n\
             local all all trust\n\
             host replication replicator 127.0.0.0/8 scram-sha-256\n\
             host all all 0.0.0.0/0 scram-sha-256\n",
        );
        pg_file(
            &self.data.join("patroni.dynamic.json"),
            "{\"loop_wait\":10,\"postgresql\":{\"parameters\":{\"max_connections\":50,\
             \"wal_keep_size\":\"128MB\"},\"use_pg_rewind\":true,\"use_slots\":true},\
             \"retry_timeout\":10,\"ttl\":30}",
        );
    }

    fn pg_ctl_start(&self) {
        let log = self.patroni.join("postgresql.log");
        as_pg(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data.display().to_string(),
                "-l",
                &log.display().to_string(),
            ],
            &[],
        );
    }

    fn pg_ctl_stop_fast(&self) {
        as_pg(
            "pg_ctl",
            &[
                "stop",
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data.display().to_string(),
            ],
            &[],
        );
    }
}

/// The stand-in's servers, started with `pg_ctl` outside pgquorum:
/// stopped (killed) when the test ends before the takeover stopped them.
struct StandInServers(Vec<PathBuf>);

impl Drop for StandInServers {
    fn drop(&mut self) {
        for data in &self.0 {
            common::kill_processes_under(data);
        }
    }
}

/// Every line of `host`'s agent log that contains all of `words`.
fn log_lines(d: &Deployment, host: &Host, words: &[&str]) -> Vec<String> {
    std::fs::read_to_string(d.host_dir(host).join("agent.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// The line pgquorum's default `hba` has and Patroni's `pg_hba.conf`
/// usually lacks: the keeper's commit gate is a local replication
/// connection of the superuser. The test hosts' `hba` list replaces the
/// default, relying on initdb's own lines below it; on a taken-over data
/// directory they are Patroni's, so the list needs it.
const GATE_HBA: &str = "local replication postgres trust";

/// `Deployment::start_agent`, with [`GATE_HBA`] first in the agent's `hba`.
fn start_agent(d: &mut Deployment, net: &Network, i: usize) {
    let host = &net.hosts[i];
    let dir = d.host_dir(host);
    let text = pgquorum::drill::cluster::agent_config(
        &dir,
        host,
        &d.subnet,
        &d.manager_addresses(),
        &pgquorum::drill::cluster::Listen {
            cluster: "main",
            pg_port: PG_PORT,
            http_port: common::deploy::HTTP_PORT,
        },
    );
    assert!(text.contains("hba = [\""), "{text}");
    let text = text
        .replacen("hba = [", &format!("hba = [\"{GATE_HBA}\", "), 1)
        .replacen(
            "[postgresql]\n",
            &format!("[postgresql]\n{}", d.agent_postgresql),
            1,
        );
    let config = dir.join("agent.toml");
    std::fs::write(&config, text).expect("agent config");
    let mut cmd = net.command(host, &common::bin());
    cmd.args(["agent", "--config"]).arg(&config);
    let p = common::Proc::spawn(
        &format!("agent {}", host.name),
        &mut cmd,
        &dir.join("agent.log"),
    );
    d.agents.insert(host.name.clone(), p);
}

/// The row count of the test table at `m`, once it is `want`.
fn wait_rows(m: &Member, want: usize) {
    m.wait_value("SELECT count(*) FROM patroni_rows", &want.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patroni_cluster_is_taken_over_without_recloning() {
    take_over(true).await;
}

/// With `use_slots=off` pgquorum names no slot: Patroni's
/// `primary_slot_name` in the replica's `postgresql.conf` must still not
/// be in force (the replica would hold on to Patroni's slot, and stop
/// streaming when step 5 drops it).
#[tokio::test(flavor = "multi_thread")]
async fn a_patroni_cluster_is_taken_over_with_slots_off() {
    take_over(false).await;
}

async fn take_over(use_slots: bool) {
    let net = Network::loopback(2);
    // The agents' configuration names Patroni's roles and their passwords
    // (pgquorum's own pg_hba.conf region trusts the test hosts, as in every
    // test here; a real agent.toml keeps its default lines).
    let secrets = tempfile::Builder::new()
        .prefix("pgq-takeover-secrets-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let replication_pw = secrets.path().join("replication.pw");
    let superuser_pw = secrets.path().join("superuser.pw");
    std::fs::write(&replication_pw, REPLICATOR_PASSWORD).unwrap();
    std::fs::write(&superuser_pw, SUPERUSER_PASSWORD).unwrap();
    let agent_postgresql = format!(
        "superuser = \"postgres\"\nsuperuser_password_file = \"{}\"\n\
         replication_user = \"replicator\"\nreplication_password_file = \"{}\"\n",
        superuser_pw.display(),
        replication_pw.display()
    );
    let mut d = Deployment::unstarted(&net, "", &agent_postgresql, "");
    let h1 = net.host("h1").clone();
    let h2 = net.host("h2").clone();
    let leader = Member::new(&d, &h1, "postgresql0");
    let replica = Member::new(&d, &h2, "postgresql1");
    let servers = StandInServers(vec![leader.data.clone(), replica.data.clone()]);

    // --- The Patroni cluster (stand-in) ---------------------------------
    pg_dir(&leader.data, 0o700);
    as_pg(
        "initdb",
        &[
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            "postgres",
            "-D",
            &leader.data.display().to_string(),
        ],
        &[],
    );
    leader.write_patroni_conf(None);
    leader.pg_ctl_start();
    leader.sql(&format!(
        "ALTER ROLE postgres PASSWORD '{SUPERUSER_PASSWORD}'; \
         CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD '{REPLICATOR_PASSWORD}'; \
         SELECT pg_create_physical_replication_slot('{}')",
        replica.name
    ));
    leader.sql(
        "CREATE TABLE patroni_rows (id int PRIMARY KEY, note text); \
         INSERT INTO patroni_rows SELECT g, 'before the replica' FROM generate_series(1, 100) g",
    );

    // The replica, as Patroni creates one: pg_basebackup as the replication
    // user, then its configuration.
    pg_file(
        &replica.pgpass(),
        &format!(
            "{}:{PG_PORT}:*:replicator:{REPLICATOR_PASSWORD}\n",
            leader.host.address
        ),
    );
    pg_dir(&replica.data, 0o700);
    as_pg(
        "pg_basebackup",
        &[
            "-h",
            &leader.host.address,
            "-p",
            &PG_PORT.to_string(),
            "-U",
            "replicator",
            "-D",
            &replica.data.display().to_string(),
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-password",
        ],
        &[("PGPASSFILE", &replica.pgpass().display().to_string())],
    );
    replica.write_patroni_conf(Some(&leader));
    pg_file(&replica.data.join("standby.signal"), "");
    replica.pg_ctl_start();
    replica.wait_value("SELECT status FROM pg_stat_wal_receiver", "streaming");
    leader.wait_value(
        &format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{}'",
            replica.name
        ),
        "t",
    );
    replica.sql(&format!(
        "SELECT pg_create_physical_replication_slot('{}')",
        leader.name
    ));
    leader.sql(
        "INSERT INTO patroni_rows SELECT g, 'streamed by the Patroni cluster' \
         FROM generate_series(101, 200) g",
    );
    wait_rows(&replica, 200);
    // Proof that the replica's data directory is never replaced.
    let marker = replica.data.join("takeover-marker");
    std::fs::write(&marker, "written before the takeover\n").unwrap();

    // --- Step 2: stop PostgreSQL cleanly, the leader first ----------------
    leader.sql(
        "INSERT INTO patroni_rows SELECT g, 'written last before the takeover' \
         FROM generate_series(201, 250) g",
    );
    leader.pg_ctl_stop_fast();
    replica.pg_ctl_stop_fast();
    assert_eq!(
        controldata(&leader.data, "Database cluster state"),
        "shut down"
    );
    assert_eq!(
        controldata(&replica.data, "Database cluster state"),
        "shut down in recovery"
    );
    let system = controldata(&leader.data, "Database system identifier");
    assert_eq!(
        controldata(&replica.data, "Database system identifier"),
        system
    );
    let timeline = controldata(&leader.data, "Latest checkpoint's TimeLineID");
    assert_eq!(
        controldata(&replica.data, "Latest checkpoint's TimeLineID"),
        timeline
    );
    // The leader's shutdown checkpoint reached the replica before the
    // leader stopped: nothing to rewind, nothing missing.
    assert_eq!(
        controldata(&replica.data, "Latest checkpoint location"),
        controldata(&leader.data, "Latest checkpoint location")
    );
    assert_eq!(controldata(&leader.data, "wal_log_hints setting"), "on");
    assert_eq!(controldata(&replica.data, "wal_log_hints setting"), "on");

    // --- Step 3: the managers, then the old leader's agent ----------------
    for i in 0..net.hosts.len() {
        d.start_manager(&net, i);
    }
    start_agent(&mut d, &net, 0);
    let s = wait_for("the old leader as primary", LONG, || async {
        let s = d.status().await?;
        let p = s.nodes.iter().find(|n| n.role == "primary" && n.healthy)?;
        (p.name == h1.name).then_some(s.clone())
    })
    .await;
    assert_eq!(s.primary, h1.name);
    assert!(
        !log_lines(&d, &h1, &["command done", "started as primary"]).is_empty(),
        "the old leader's agent did not start its data directory as primary"
    );
    assert!(
        log_lines(&d, &h1, &["initdb"]).is_empty(),
        "the old leader's data directory was initialised again"
    );
    leader.wait_value("SELECT pg_is_in_recovery()", "f");
    leader.wait_value("SELECT count(*) FROM patroni_rows", "250");
    assert_eq!(
        leader.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        timeline,
        "the old leader changed timelines: it was promoted"
    );
    assert_eq!(
        leader.sql("SELECT system_identifier FROM pg_control_system()"),
        system
    );

    if !use_slots {
        d.set_config(&[("use_slots", "off")]).await;
    }
    // pgquorum's slot for the replica (on the primary) and for the primary
    // (on the replica), if any.
    let (slot_h2, slot_h1) = if use_slots {
        ("pgq_h2", "pgq_h1")
    } else {
        ("", "")
    };
    let with = |ours: &str, patroni: &str| {
        [ours, patroni]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(",")
    };

    // --- Step 4: the replica's agent: followed, not cloned ----------------
    start_agent(&mut d, &net, 1);
    let s = d.wait_all_streaming(2, LONG).await;
    assert_eq!(s.primary, h1.name, "the primary moved");
    assert!(
        marker.exists(),
        "the replica's data directory was replaced (re-cloned)"
    );
    for words in [&["cloning"][..], &["replica created"], &["rewound"]] {
        let lines = log_lines(&d, &h2, words);
        assert!(lines.is_empty(), "the replica's agent: {lines:?}");
    }
    assert!(
        !log_lines(&d, &h2, &["command done", "following h1"]).is_empty(),
        "the replica's agent did not follow the old leader"
    );
    wait_rows(&replica, 250);
    replica.wait_value("SELECT pg_is_in_recovery()", "t");
    replica.wait_value(
        "SELECT status || ' ' || sender_host || ' ' || coalesce(slot_name, '') \
         FROM pg_stat_wal_receiver",
        format!("streaming {} {slot_h2}", h1.address).trim_end(),
    );
    assert_eq!(
        replica.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        timeline
    );
    // Patroni's recovery settings are still in its postgresql.conf, and not
    // in force: pgquorum.conf, included last, names the new upstream and
    // slot.
    let patroni_conf = std::fs::read_to_string(replica.data.join("postgresql.conf")).unwrap();
    assert!(patroni_conf.contains("primary_slot_name = 'postgresql1'"));
    assert!(patroni_conf
        .trim_end()
        .ends_with("include_if_exists = 'pgquorum.conf'"));
    assert_eq!(replica.sql("SHOW primary_slot_name"), slot_h2);
    let conninfo = replica.sql("SHOW primary_conninfo");
    assert!(
        conninfo.contains("application_name='h2'") && !conninfo.contains("postgresql1"),
        "{conninfo}"
    );
    // A write after the takeover streams to the replica.
    leader.sql("INSERT INTO patroni_rows VALUES (251, 'written after the takeover')");
    wait_rows(&replica, 251);
    // pgquorum's slots are there; Patroni's are left alone.
    let slots = "SELECT coalesce(string_agg(slot_name || ':' || active, ',' \
                 ORDER BY slot_name), '') FROM pg_replication_slots";
    // The replica's slot is in use on the primary; Patroni's are not.
    let (ours_on_leader, ours_on_replica) = if use_slots {
        ("pgq_h2:true", "pgq_h1:false")
    } else {
        ("", "")
    };
    leader.wait_value(slots, &with(ours_on_leader, "postgresql1:false"));
    replica.wait_value(slots, &with(ours_on_replica, "postgresql0:false"));

    // --- Step 5: Patroni's leftovers ---------------------------------------
    leader.sql("SELECT pg_drop_replication_slot('postgresql1')");
    replica.sql("SELECT pg_drop_replication_slot('postgresql0')");
    for m in [&leader, &replica] {
        std::fs::remove_file(m.data.join("patroni.dynamic.json")).expect("remove");
    }
    leader.sql("INSERT INTO patroni_rows VALUES (252, 'written after the clean-up')");
    wait_rows(&replica, 252);
    let names = "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') \
                 FROM pg_replication_slots";
    leader.wait_value(names, slot_h2);
    replica.wait_value(names, slot_h1);
    // Every row, on both, in one piece.
    let all = "SELECT count(*) || ' ' || sum(id) FROM patroni_rows";
    let want = format!("252 {}", 252 * 253 / 2);
    leader.wait_value(all, &want);
    replica.wait_value(all, &want);
    let s = d.wait_all_streaming(2, LONG).await;
    assert_eq!(s.primary, h1.name);

    d.stop_and_check_nothing_left();
    drop(servers);
}
