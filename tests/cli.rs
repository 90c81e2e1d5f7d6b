//! The CLI against a running cluster: every command, human and JSON output,
//! confirmations, pending restarts, and exit codes.

mod common;

use std::time::Duration;

use common::deploy::Deployment;
use common::netns::Network;
use common::{stderr, stdout, wait_for};

const LONG: Duration = Duration::from_secs(120);

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "command failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_in_human_and_json_form() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;

    // status
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("primary") && stdout(&out).contains("streaming"),
        "{}",
        stdout(&out)
    );
    let s = json(&d.cli(&["status", "--json"]));
    for key in ["cluster", "epoch", "primary", "paused", "nodes", "managers"] {
        assert!(s.get(key).is_some(), "status --json lacks {key}: {s}");
    }
    let primary = s["primary"].as_str().unwrap().to_string();
    let replica = a_replica(&s);

    // dsn: every node, the primary first; it lands on the primary.
    let out = d.cli(&["dsn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = stdout(&out).trim().to_string();
    assert!(conn.contains("target_session_attrs=read-write"), "{conn}");
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect with the printed dsn");
    tokio::spawn(connection);
    let in_recovery: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query")
        .get(0);
    assert!(!in_recovery, "dsn did not land on the primary");
    let ro = json(&d.cli(&["dsn", "--read-only", "--json"]));
    assert_eq!(ro["target_session_attrs"], "prefer-standby");
    assert_eq!(ro["hosts"].as_array().unwrap().len(), 3);
    let primary_node = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == s["primary"])
        .unwrap()
        .clone();
    assert_eq!(ro["hosts"][0], primary_node["host"]);
    assert_eq!(ro["ports"][0], primary_node["port"]);

    // status --watch --json: one line per update, each with its time.
    let mut watch = std::process::Command::new(common::bin())
        .args([
            "--managers",
            &d.manager_addresses().join(","),
            "status",
            "--watch",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("status --watch");
    let stdout_pipe = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout_pipe), &mut first);
        let _ = tx.send(first);
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    let _ = watch.kill();
    let first = first.expect("a status --watch line within 30 s");
    let _ = watch.wait();
    let w: serde_json::Value = serde_json::from_str(&first).expect("watch JSON");
    assert!(
        w["at"].as_str().is_some_and(|t| t.ends_with('Z')) && w["nodes"].is_array(),
        "{first}"
    );

    // A scheduled switchover: a time in the past is refused; a future one
    // shows in status and can be cancelled; cancelling twice is refused.
    let out = d.cli(&["switchover", "--at", "2020-01-01T00:00:00Z", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("in the past"), "{}", stderr(&out));
    assert!(json(&d.cli(&["status", "--json"]))["pending_switchover"].is_null());
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let out = d.cli(&["switchover", "--at", &later, "--to", &replica, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pending = json(&d.cli(&["status", "--json"]))["pending_switchover"].clone();
    assert!(
        pending
            .as_str()
            .is_some_and(|p| p.contains(&replica) && p.contains(" at ")),
        "{pending}"
    );
    let out = d.cli(&["switchover", "--cancel"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json(&d.cli(&["status", "--json"]))["pending_switchover"].is_null());
    let out = d.cli(&["switchover", "--cancel"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no switchover is scheduled"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        json(&d.cli(&["status", "--json"]))["primary"],
        primary.as_str()
    );

    // A scheduled restart: in the past refused; a far one shown in status
    // and cancelled; a near one carried out when due, not before.
    let out = d.cli(&["node", "restart", &replica, "--at", "2020-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in the past"), "{}", stderr(&out));
    let node_json = |name: &str| {
        json(&d.cli(&["status", "--json"]))["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_default()
    };
    let out = d.cli(&["node", "restart", &replica, "--at", &later]);
    assert!(out.status.success(), "{}", stderr(&out));
    let n = node_json(&replica);
    assert_eq!(n["pending_action"], "restart", "{n}");
    assert!(n["pending_action_at"].as_str().is_some(), "{n}");
    assert!(stdout(&d.cli(&["status"])).contains("restart at "));
    let out = d.cli(&["node", "restart", &replica, "--cancel"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node_json(&replica)["pending_action"].is_null());
    let replica_host = d.host_of_node(&replica);
    let started = sql_value(&replica_host.address, "SELECT pg_postmaster_start_time()").await;
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(4))
            .to_string();
    let out = d.cli(&["node", "restart", &replica, "--at", &soon]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the scheduled restart done", LONG, || async {
        let now_started =
            sql_value(&replica_host.address, "SELECT pg_postmaster_start_time()").await?;
        (node_json(&replica)["pending_action"].is_null() && Some(&now_started) != started.as_ref())
            .then_some(())
    })
    .await;
    assert!(
        std::time::SystemTime::now() >= humantime::parse_rfc3339(&soon).expect("a time"),
        "restarted before its time"
    );

    // managers
    assert!(stdout(&d.cli(&["managers", "list"])).contains("leader"));
    assert_eq!(
        json(&d.cli(&["managers", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // config
    assert!(stdout(&d.cli(&["config", "show"])).contains("ttl = 2s"));
    let c = json(&d.cli(&["config", "set", "maximum_lag_on_failover=2097152", "--json"]));
    assert_eq!(c["config"]["maximum_lag_on_failover"], "2097152");
    assert_eq!(
        json(&d.cli(&["config", "show", "--json"]))["config"]["maximum_lag_on_failover"],
        "2097152"
    );

    // config edit: $EDITOR changes the file; a bad edit changes nothing.
    let editor = tempfile::tempdir().unwrap();
    let good = editor.path().join("good.sh");
    std::fs::write(&good, "#!/bin/sh\nsed -i 's/^ttl = .*/ttl = 3s/' \"$1\"\n").unwrap();
    let bad = editor.path().join("bad.sh");
    std::fs::write(
        &bad,
        "#!/bin/sh\nsed -i 's/^ttl = .*/ttl = forever/' \"$1\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in [&good, &bad] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let edit = |script: &std::path::Path| {
        let managers = d.manager_addresses().join(",");
        std::process::Command::new(common::bin())
            .args(["config", "edit", "--managers", &managers])
            .env("EDITOR", script)
            .output()
            .unwrap()
    };
    let out = edit(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("ttl"), "{}", stderr(&out));
    assert_eq!(
        json(&d.cli(&["config", "show", "--json"]))["config"]["ttl"],
        "2s"
    );
    let out = edit(&good);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&d.cli(&["config", "show", "--json"]))["config"]["ttl"],
        "3s"
    );

    // pause / resume
    assert_eq!(
        json(&d.cli(&["pause", "--json"]))["message"],
        "paused: no automatic action until resumed"
    );
    assert_eq!(json(&d.cli(&["status", "--json"]))["paused"], true);
    assert!(d.cli(&["resume"]).status.success());
    assert_eq!(json(&d.cli(&["status", "--json"]))["paused"], false);

    // history
    let h = json(&d.cli(&["history", "--json"]));
    assert_eq!(h[0]["kind"], "bootstrap");
    // The pause and the resume above are in it too, in order.
    let kinds: Vec<&str> = h
        .as_array()
        .expect("history is a list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let pause = kinds.iter().position(|k| *k == "pause");
    let resume = kinds.iter().position(|k| *k == "resume");
    assert!(pause.is_some() && resume > pause, "{h}");
    assert!(stdout(&d.cli(&["history"])).contains("bootstrap"));

    // Confirmations: refused without a terminal unless --force.
    let out = d.cli(&["switchover", "--to", &replica]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("add --force"), "{}", stderr(&out));
    let out = d.cli(&["failover", "--to", &replica]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("add --force"), "{}", stderr(&out));
    let out = d.cli(&["node", "reinit", &replica]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("add --force"), "{}", stderr(&out));
    assert_eq!(
        json(&d.cli(&["status", "--json"]))["primary"],
        primary.as_str(),
        "a refused command changed something"
    );

    // A failover while the primary is healthy points to switchover.
    let out = d.cli(&["failover", "--to", &replica, "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("switchover"), "{}", stderr(&out));

    // Switchover waits until done and reports the new primary.
    let r = json(&d.cli(&["switchover", "--to", &replica, "--force", "--json"]));
    assert_eq!(r["primary"], replica.as_str());
    d.wait_all_streaming(3, LONG).await;

    // Node actions: reinit of the primary is refused, of a replica works.
    let out = d.cli(&["node", "reinit", &replica, "--force"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "reinit of the primary must be refused"
    );
    let r = json(&d.cli(&["node", "reinit", &primary, "--force", "--json"]));
    assert!(r["message"].as_str().unwrap().contains("reinit"), "{r}");
    d.wait_all_streaming(3, LONG).await;
    assert!(d.cli(&["node", "restart", &primary]).status.success());

    // --timeout bounds a wait, and says the operation goes on.
    let out = d.cli(&["node", "restart", &replica, "--timeout", "1ms"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not finished after 1ms") && stderr(&out).contains("--timeout"),
        "{}",
        stderr(&out)
    );
    d.wait_all_streaming(3, LONG).await;

    // version and completions
    assert!(json(&d.cli(&["version", "--json"]))["version"].is_string());
    let out = d.cli(&["completions", "bash"]);
    assert!(stdout(&out).contains("pgquorum"));
    // Usage errors exit 2.
    assert_eq!(d.cli(&["switchover", "--bogus"]).status.code(), Some(2));

    // node remove: refused for the primary and for a node that runs; once
    // its agent and keeper are stopped it goes, and the name can come back.
    let s = d.wait_all_streaming(3, LONG).await;
    let primary = s.primary.clone();
    let replica = s
        .nodes
        .iter()
        .find(|n| n.name != primary)
        .unwrap()
        .name
        .clone();
    let out = d.cli(&["node", "remove", &primary, "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is the primary"), "{}", stderr(&out));
    let out = d.cli(&["node", "remove", &replica, "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is running"), "{}", stderr(&out));
    d.stop_node(&replica);
    let removed = wait_for("the stopped replica to be removable", LONG, || async {
        let out = d.cli(&["node", "remove", &replica, "--force", "--json"]);
        out.status.success().then(|| json(&out))
    })
    .await;
    assert!(
        removed["message"].as_str().unwrap().contains("removed"),
        "{removed}"
    );
    let s = json(&d.cli(&["status", "--json"]));
    let names: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{s}");
    assert!(!names.contains(&replica.as_str()), "{s}");
    // A replacement under the same name registers and streams again.
    let i = d.hosts.iter().position(|h| h.name == replica).unwrap();
    d.start_agent(&net, i);
    d.wait_all_streaming(3, LONG).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_needing_parameter_is_pending_until_node_restart_pending() {
    let net = Network::loopback(2);
    // Tagged nosync (irrelevant in async mode): status shows the tag.
    let mut d = Deployment::start_custom(&net, &[], "", "[tags]\nnosync = true\n", &[]).await;
    let s = json(&d.cli(&["status", "--json"]));
    assert!(
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["nosync"] == true && n["nofailover"] == false),
        "{s}"
    );
    assert!(stdout(&d.cli(&["status"])).contains("nosync"));

    // Parameters are checked against the servers' own pg_settings. Until
    // a server reported its catalog a change is taken unchecked (and says
    // so): wait for a harmless one to be checked.
    wait_for("the servers' parameter catalog", LONG, || async {
        let out = d.cli(&["config", "set", "postgresql.parameters.work_mem=8MB"]);
        assert!(out.status.success(), "{}", stderr(&out));
        (!stderr(&out).contains("not checked")).then_some(())
    })
    .await;
    let before = json(&d.cli(&["config", "show", "--json"]));
    for (change, says) in [
        ("wrok_mem=64MB", "did you mean \"work_mem\""),
        ("work_mem=banana", "expected a number"),
        ("work_mem=10", "outside the valid range 64 .. 2147483647"),
        (
            "work_mem=64mb",
            "valid units for this parameter are B, kB, MB, GB or TB",
        ),
        ("synchronous_commit=remote", "expected one of"),
        ("log_checkpoints=maybe", "expected a boolean"),
        ("block_size=4096", "read-only"),
    ] {
        let out = d.cli(&["config", "set", &format!("postgresql.parameters.{change}")]);
        assert_eq!(out.status.code(), Some(1), "{change}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{change}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(json(&d.cli(&["config", "show", "--json"])), before);

    let out = d.cli(&[
        "config",
        "set",
        "postgresql.parameters.max_locks_per_transaction=128",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("max_locks_per_transaction only takes effect after a restart"),
        "{}",
        stderr(&out)
    );

    let s = wait_for("pending restart on every node", LONG, || async {
        let s = json(&d.cli(&["status", "--json"]));
        s["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["pending_restart"] == true)
            .then_some(s)
    })
    .await;
    assert!(stdout(&d.cli(&["status"])).contains("pending restart"));
    let pending = json(&d.cli(&["config", "show", "--json"]))["pending_restart"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(pending, 2);

    assert!(s["nodes"].as_array().is_some_and(|n| n.len() >= 2));
    // Nothing named, no role: a usage error, nothing restarted.
    let out = d.cli(&["node", "restart", "--pending"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--role"), "{}", stderr(&out));
    // Every node, one at a time, the primary last.
    let out = d.cli(&["node", "restart", "--role", "any", "--pending"]);
    assert!(out.status.success(), "rolling restart: {}", stderr(&out));
    wait_for("no pending restart", LONG, || async {
        let s = json(&d.cli(&["status", "--json"]));
        s["nodes"]
            .as_array()?
            .iter()
            .all(|n| n["pending_restart"] == false && n["healthy"] == true)
            .then_some(())
    })
    .await;

    // cluster remove: refused while it runs; once every agent and keeper
    // is stopped, the managers forget it.
    let out = d.cli(&["cluster", "remove", "main", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("still runs"), "{}", stderr(&out));
    let keepers: Vec<i32> = d.hosts.iter().filter_map(|h| d.keeper_pid(h)).collect();
    for (_, mut agent) in std::mem::take(&mut d.agents) {
        assert!(agent.terminate(LONG).is_some(), "agent did not stop");
    }
    pgquorum::process::signal_all(&keepers, nix::sys::signal::Signal::SIGTERM);
    assert!(pgquorum::process::wait_gone(&keepers, LONG));
    wait_for("the stopped cluster to be removable", LONG, || async {
        d.cli(&["cluster", "remove", "main", "--force"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let out = d.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no cluster is registered"),
        "{}",
        stderr(&out)
    );
}

/// One value from the server on `host` (the test hosts trust each other).
async fn sql_value(host: &str, query: &str) -> Option<String> {
    let dsn = format!(
        "host={host} port={} user=postgres dbname=postgres connect_timeout=2",
        common::deploy::PG_PORT
    );
    let (c, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let row = c.simple_query(query).await.ok()?;
    row.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_tags_and_node_parameters_without_restarting_postgres() {
    let net = Network::loopback(2);
    let d = Deployment::start_custom(&net, &[], "", "", &[]).await;
    let s = json(&d.cli(&["status", "--json"]));
    let replica = a_replica(&s);
    let host = d.host_of_node(&replica);
    let started = sql_value(&host.address, "SELECT pg_postmaster_start_time()")
        .await
        .expect("postmaster start time");
    let agent_pid = d.agents[&host.name].pid().expect("agent pid");
    let config = d.host_dir(&host).join("agent.toml");
    let log = d.host_dir(&host).join("agent.log");
    let original = std::fs::read_to_string(&config).unwrap();
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent_pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    };

    // A file that no longer parses changes nothing and stops nothing.
    std::fs::write(&config, format!("{original}\nthis is not toml\n")).unwrap();
    hup();
    wait_for("the refused reload logged", LONG, || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("configuration not reloaded")
            .then_some(())
    })
    .await;

    // Tags and a node parameter: the node registers again, PostgreSQL
    // reloads; it is not restarted.
    let edited = original.replace(
        "max_connections = \"50\"\n",
        "max_connections = \"50\"\nwork_mem = \"7MB\"\n",
    );
    assert_ne!(edited, original, "the test's agent.toml changed shape");
    std::fs::write(&config, format!("{edited}\n[tags]\nnofailover = true\n")).unwrap();
    hup();
    wait_for("nofailover in status", LONG, || async {
        json(&d.cli(&["status", "--json"]))["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == replica.as_str() && n["nofailover"] == true)
            .then_some(())
    })
    .await;
    wait_for("work_mem = 7MB on the node", LONG, || async {
        (sql_value(&host.address, "SHOW work_mem").await? == "7MB").then_some(())
    })
    .await;
    assert_eq!(
        sql_value(&host.address, "SELECT pg_postmaster_start_time()").await,
        Some(started.clone()),
        "PostgreSQL was restarted"
    );
    assert_eq!(
        d.agents[&host.name].pid(),
        Some(agent_pid),
        "the agent was restarted"
    );
    // The other node keeps the default.
    let other = d.hosts.iter().find(|h| h.name != host.name).unwrap();
    assert_eq!(
        sql_value(&other.address, "SHOW work_mem").await.as_deref(),
        Some("4MB")
    );

    // `node reload` does the same from anywhere: a broken file fails the
    // command with the parser's message and changes nothing…
    std::fs::write(&config, format!("{edited}\n[tags]\nnofailover = maybe\n")).unwrap();
    let out = d.cli(&["node", "reload", &replica]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nofailover") && stderr(&out).contains("fix the file"),
        "{}",
        stderr(&out)
    );
    // … and a good one is applied before the command returns.
    let again = original.replace(
        "max_connections = \"50\"\n",
        "max_connections = \"50\"\nwork_mem = \"9MB\"\n",
    );
    std::fs::write(&config, again).unwrap();
    let out = d.cli(&["node", "reload", "--role", "any"]);
    assert!(out.status.success(), "node reload: {}", stderr(&out));
    wait_for("nofailover gone and work_mem = 9MB", LONG, || async {
        let nofailover = json(&d.cli(&["status", "--json"]))["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == replica.as_str() && n["nofailover"] == true);
        (!nofailover && sql_value(&host.address, "SHOW work_mem").await? == "9MB").then_some(())
    })
    .await;
    assert_eq!(
        sql_value(&host.address, "SELECT pg_postmaster_start_time()").await,
        Some(started),
        "PostgreSQL was restarted by node reload"
    );
}

/// The name of a replica in `status --json`.
fn a_replica(s: &serde_json::Value) -> String {
    s["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["role"] == "replica"))
        .and_then(|n| n["name"].as_str())
        .unwrap_or_else(|| panic!("no replica in {s}"))
        .to_string()
}
