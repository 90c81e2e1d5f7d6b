//! Replica-creation methods and a custom bootstrap, with a stand-in backup
//! tool: shell scripts that restore `pg_basebackup -Ft` tarballs.
//!
//! * A replica whose first method fails (after leaving junk in the data
//!   directory) is cloned by the next (`basebackup`); the junk is gone.
//! * `node reinit` clones through the backup tool; rows written before and
//!   after the backup are there, and the replica streams on.
//! * A new cluster bootstrapped from a backup that needs archive recovery
//!   (`recovery.signal`, `restore_command`) comes up as primary with the
//!   backup's rows and takes writes; a replica follows it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::deploy::{Deployment, PG_PORT};
use common::netns::Network;
use common::pg_owner;
use common::sandbox::{poll, psql, PG_BIN};
use common::{free_port, stderr, stdout};

const LONG: Duration = Duration::from_secs(180);

/// A directory the PostgreSQL OS user owns.
fn pg_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).expect("create dir");
    if let Some((uid, gid)) = pg_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

/// Run `program args` as the PostgreSQL OS user: [`common::as_pg`].
fn as_pg(program: &Path, args: &[&str]) -> String {
    common::as_pg(program, args, &[])
}

/// An executable script owned by root, readable by everybody.
fn script(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

/// `pg_basebackup -Ft` of the server at `host:port` into `dir` (made
/// complete first in a sibling directory, then renamed: a restore never
/// sees half a backup).
fn tarball(host: &str, port: u16, wal: &str, dir: &Path) {
    let partial = pg_dir(&dir.with_extension("partial")).join("b");
    as_pg(
        &Path::new(PG_BIN).join("pg_basebackup"),
        &[
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-D",
            &partial.display().to_string(),
            "-Ft",
            "-X",
            wal,
            "--checkpoint=fast",
        ],
    );
    std::fs::rename(&partial, dir).expect("move the backup in place");
}

fn conninfo(host: &str) -> String {
    format!("host={host} port={PG_PORT} user=postgres dbname=postgres")
}

/// Wait until `sql` answers `want` on `host`.
fn wait_value(host: &str, sql: &str, want: &str) {
    poll(&format!("{sql} = {want} on {host}"), LONG, || {
        match psql(&conninfo(host), sql) {
            Ok(v) if v == want => Ok(()),
            Ok(v) => Err(format!("it is {v:?}")),
            Err(e) => Err(e),
        }
    });
}

/// Every line of the agent's log that contains all of `words`.
fn log_lines(d: &Deployment, host: &str, words: &[&str]) -> Vec<String> {
    let log = d.dir.path().join(host).join("agent.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_are_cloned_by_the_backup_tool_and_fall_back_to_basebackup() {
    let tools = tempfile::Builder::new()
        .prefix("pgq-clone-tools-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = pg_dir(&tools.path().join("work"));
    let backup = work.join("backup");
    let marker = work.join("calls.log");
    // The stand-in backup tool: restore the tarball when there is one;
    // without one, fail — after leaving junk behind, as a restore that
    // broke off halfway would.
    let tool = script(
        &tools.path().join("restore-tarball"),
        &format!(
            "#!/bin/sh\n\
             set -e\n\
             echo \"call method=$PGQUORUM_METHOD cluster=$PGQUORUM_CLUSTER node=$PGQUORUM_NODE \
             upstream=$PGQUORUM_UPSTREAM_NODE host=$PGQUORUM_UPSTREAM_HOST port=$PGQUORUM_UPSTREAM_PORT \
             pghost=$PGHOST pgport=$PGPORT pguser=$PGUSER data=$PGQUORUM_DATA_DIR pgdata=$PGDATA\" >> {marker}\n\
             if [ ! -f {backup}/base.tar ]; then\n\
             \x20 echo junk > \"$PGQUORUM_DATA_DIR/junk\"\n\
             \x20 mkdir -p \"$PGQUORUM_DATA_DIR/global\"\n\
             \x20 echo junk > \"$PGQUORUM_DATA_DIR/global/junk\"\n\
             \x20 echo \"no backup in {backup} yet\" >&2\n\
             \x20 exit 1\n\
             fi\n\
             tar -xf {backup}/base.tar -C \"$PGQUORUM_DATA_DIR\"\n\
             touch \"$PGQUORUM_DATA_DIR/restored-from-tarball\"\n\
             echo \"restored node=$PGQUORUM_NODE\" >> {marker}\n",
            marker = marker.display(),
            backup = backup.display(),
        ),
    );
    let methods = "replica_methods = [\"tarball\", \"basebackup\"]\n";
    let tables = format!(
        "[postgresql.replica_method.tarball]\ncommand = \"{}\"\ntimeout = \"5m\"\n",
        tool.display()
    );

    let net = Network::loopback(2);
    let d = Deployment::start_full(&net, &[], "", methods, &tables, &[]).await;
    let s = d.wait_all_streaming(2, LONG).await;
    let primary = d.host_of_node(&s.primary);
    let replica = d
        .hosts
        .iter()
        .find(|h| h.name != primary.name)
        .cloned()
        .expect("a replica");
    let replica_data = d.host_dir(&replica).join("data");

    // The first clone: no backup yet, so the tool failed and pg_basebackup
    // cloned; the tool's junk is gone.
    let calls = std::fs::read_to_string(&marker).expect("the backup tool was called");
    assert!(
        calls.contains(&format!(
            "call method=tarball cluster=main node={r} upstream={p} host={a} port={PG_PORT} \
             pghost={a} pgport={PG_PORT} pguser=replicator data={dd} pgdata={dd}",
            r = replica.name,
            p = primary.name,
            a = primary.address,
            dd = replica_data.display(),
        )),
        "{calls}"
    );
    assert!(!calls.contains("restored"), "{calls}");
    assert!(
        !replica_data.join("junk").exists(),
        "the junk is still there"
    );
    assert!(
        !replica_data.join("global/junk").exists(),
        "the junk is still there"
    );
    assert!(!replica_data.join("restored-from-tarball").exists());
    assert!(
        !log_lines(&d, &replica.name, &["replica method failed", "tarball"]).is_empty(),
        "the agent did not log the tool's failure"
    );
    assert!(
        !log_lines(&d, &replica.name, &["no backup in"]).is_empty(),
        "the agent did not log the tool's output"
    );
    assert!(
        !log_lines(&d, &replica.name, &["replica created", "basebackup"]).is_empty(),
        "the agent did not log that basebackup cloned"
    );

    // A row, the backup, another row; then the replica is re-created: by
    // the backup tool this time.
    let p = primary.address.as_str();
    psql(
        &conninfo(p),
        "CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'before the backup')",
    )
    .expect("first row");
    tarball(p, PG_PORT, "fetch", &backup);
    psql(&conninfo(p), "INSERT INTO t VALUES (2, 'after the backup')").expect("second row");
    let out = d.cli(&["node", "reinit", &replica.name, "--force"]);
    assert!(
        out.status.success(),
        "reinit failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    d.wait_all_streaming(2, LONG).await;
    let calls = std::fs::read_to_string(&marker).expect("calls");
    assert!(
        calls.contains(&format!("restored node={}", replica.name)),
        "{calls}"
    );
    assert!(
        replica_data.join("restored-from-tarball").exists(),
        "the running data directory is not the tool's restore"
    );
    assert!(
        !log_lines(&d, &replica.name, &["replica created", "tarball"]).is_empty(),
        "the agent did not log that the tarball method cloned"
    );
    // Both rows: the one in the backup, and the one it fetched from the
    // upstream afterwards; and it streams what comes next.
    let r = replica.address.as_str();
    wait_value(
        r,
        "SELECT string_agg(note, ',' ORDER BY id) FROM t",
        "before the backup,after the backup",
    );
    psql(&conninfo(p), "INSERT INTO t VALUES (3, 'streamed')").expect("third row");
    wait_value(r, "SELECT count(*) FROM t", "3");
    wait_value(r, "SELECT status FROM pg_stat_wal_receiver", "streaming");
    wait_value(r, "SELECT pg_is_in_recovery()", "t");
    d.stop_and_check_nothing_left();
}

/// A PostgreSQL server outside pgquorum, to take a backup of. Hot standby
/// (archive recovery with `hot_standby = on`) refuses a backup of a server
/// with more connections than it allows: the same `max_connections` as the
/// test nodes.
struct SourceServer {
    data: PathBuf,
    port: u16,
}

impl SourceServer {
    fn start(dir: &Path) -> SourceServer {
        let data = pg_dir(&dir.join("source"));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = pg_dir(&dir.join("source-socket"));
        as_pg(
            &Path::new(PG_BIN).join("initdb"),
            &[
                "--encoding=UTF8",
                "--locale=C",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                &data.display().to_string(),
            ],
        );
        let port = free_port();
        let log = dir.join("source.log");
        pg_dir(dir);
        as_pg(
            &Path::new(PG_BIN).join("pg_ctl"),
            &[
                "start",
                "-w",
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-o",
                &format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50",
                    socket.display()
                ),
            ],
        );
        SourceServer { data, port }
    }

    fn stop(&self) {
        as_pg(
            &Path::new(PG_BIN).join("pg_ctl"),
            &[
                "stop",
                "-m",
                "fast",
                "-w",
                "-D",
                &self.data.display().to_string(),
            ],
        );
    }
}

impl Drop for SourceServer {
    fn drop(&mut self) {
        common::kill_processes_under(&self.data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_cluster_is_bootstrapped_from_a_backup_with_archive_recovery() {
    let tools = tempfile::Builder::new()
        .prefix("pgq-bootstrap-tools-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = pg_dir(&tools.path().join("work"));
    let backup = work.join("backup");
    let archive = work.join("archive");
    let marker = work.join("calls.log");

    // The backup: of a server that is gone by the time the cluster starts.
    let source = SourceServer::start(&work);
    let src = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        source.port
    );
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, note text); \
         INSERT INTO t VALUES (1, 'in the backup'), (2, 'also in the backup')",
    )
    .expect("rows on the source");
    tarball("127.0.0.1", source.port, "stream", &backup);
    source.stop();

    // The stand-in restore, as pgBackRest does it: the base backup in
    // place, the WAL in an archive that restore_command reads, and
    // recovery.signal for archive recovery.
    let tool = script(
        &tools.path().join("restore-cluster"),
        &format!(
            "#!/bin/sh\n\
             set -e\n\
             echo \"bootstrap method=$PGQUORUM_METHOD cluster=$PGQUORUM_CLUSTER node=$PGQUORUM_NODE \
             data=$PGQUORUM_DATA_DIR upstream=${{PGQUORUM_UPSTREAM_NODE:-none}} arg=$1\" >> {marker}\n\
             tar -xf {backup}/base.tar -C \"$PGQUORUM_DATA_DIR\"\n\
             mkdir -p {archive}\n\
             tar -xf {backup}/pg_wal.tar -C {archive}\n\
             echo \"restore_command = 'cp {archive}/%f %p'\" >> \"$PGQUORUM_DATA_DIR/postgresql.auto.conf\"\n\
             touch \"$PGQUORUM_DATA_DIR/recovery.signal\"\n",
            marker = marker.display(),
            backup = backup.display(),
            archive = archive.display(),
        ),
    );
    let tables = format!(
        "[postgresql.bootstrap]\ncommand = \"{}\"\nargs = [\"--from-tarball\"]\ntimeout = \"10m\"\n",
        tool.display()
    );

    let net = Network::loopback(2);
    let d = Deployment::start_full(&net, &[], "", "", &tables, &[]).await;
    let s = d.wait_all_streaming(2, LONG).await;
    let primary = d.host_of_node(&s.primary);
    assert_eq!(primary.name, "h1", "the first node bootstraps");
    let calls = std::fs::read_to_string(&marker).expect("the bootstrap command ran");
    assert_eq!(
        calls.trim(),
        format!(
            "bootstrap method=bootstrap cluster=main node=h1 data={} upstream=none arg=--from-tarball",
            d.host_dir(&primary).join("data").display()
        ),
        "the bootstrap command ran other than once, or without its arguments"
    );
    let p = primary.address.as_str();
    // The backup's rows, after archive recovery ended with a promotion
    // onto a new timeline; and it takes writes.
    wait_value(p, "SELECT pg_is_in_recovery()", "f");
    wait_value(
        p,
        "SELECT string_agg(note, ',' ORDER BY id) FROM t",
        "in the backup,also in the backup",
    );
    wait_value(p, "SELECT timeline_id FROM pg_control_checkpoint()", "2");
    assert!(
        !d.host_dir(&primary).join("data/recovery.signal").exists(),
        "recovery.signal is still there"
    );
    psql(
        &conninfo(p),
        "INSERT INTO t VALUES (3, 'written after the bootstrap')",
    )
    .expect("the bootstrapped primary takes writes");
    // The other node cloned from it (pg_basebackup: no replica methods)
    // and streams the new row.
    let r = d
        .hosts
        .iter()
        .find(|h| h.name != primary.name)
        .map(|h| h.address.clone())
        .expect("a replica");
    wait_value(&r, "SELECT count(*) FROM t", "3");
    wait_value(&r, "SELECT status FROM pg_stat_wal_receiver", "streaming");
    d.stop_and_check_nothing_left();
}
