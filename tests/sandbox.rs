//! `pgquorum sandbox` with real managers, agents and PostgreSQL 15 servers:
//! streaming, status, health endpoints, switchover, failover with rewind
//! and re-clone, a node whose epoch is ahead, and a clean `sandbox down`.
//!
//! Each test has its own sandbox (own directory under /tmp, own ports);
//! the `Sandbox` guard stops everything even when the test fails.

mod common;

use std::time::{Duration, Instant};

use common::sandbox::*;
use common::{stderr, stdout};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Bound for anything the cluster does by itself (a failover, a rejoin
/// with rewind or clone), generous for a busy 2-core machine.
const SETTLE: Duration = Duration::from_secs(120);

const ROLES: [&str; 5] = ["primary", "replica", "fenced", "down", "unknown"];

fn rows_sql() -> &'static str {
    "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM it_rows"
}

/// The rows of `it_rows` on one node (a replica may not have the table yet).
fn rows(sb: &Sandbox, node: &str) -> Result<String, String> {
    psql(&sb.conninfo(node), rows_sql())
}

/// Wait until every node in `nodes` holds exactly `expected`.
fn wait_rows(sb: &Sandbox, nodes: &[String], expected: &str) {
    for n in nodes {
        poll(&format!("rows {expected} on {n}"), SETTLE, || {
            let got = rows(sb, n)?;
            if got == expected {
                Ok(())
            } else {
                Err(format!("{n} has {got}"))
            }
        });
    }
}

/// `SELECT status, sender_port FROM pg_stat_wal_receiver` says `node`
/// streams from `upstream`.
fn wait_streams_from(sb: &Sandbox, node: &str, upstream: &str) {
    let want = format!("streaming|{}", sb.pg_port(upstream));
    poll(&format!("{node} streaming from {upstream}"), SETTLE, || {
        let got = psql(
            &sb.conninfo(node),
            "SELECT status, sender_port FROM pg_stat_wal_receiver",
        )?;
        if got == want {
            Ok(())
        } else {
            Err(got)
        }
    });
}

/// A metric's value for this node from `/metrics`.
fn metric(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// Continue a process when dropped (a test that freezes one and fails).
struct Continue(Vec<i32>);

impl Drop for Continue {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, Signal::SIGCONT);
        }
    }
}

fn pids_of(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// `sandbox down` succeeds and leaves nothing: every pid in sandbox.json
/// and every process in the sandbox's directories is gone, ports closed.
fn down_leaves_nothing(sb: &Sandbox) {
    let before = sb.live_processes();
    assert!(before.len() >= 6, "managers, agents, postgres: {before:?}");
    let out = sb.run(&["down"]);
    assert!(
        out.status.success(),
        "sandbox down failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let f = sb.file();
    for pid in f["managers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["pid"])
        .chain(
            f["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| &n["agent_pid"]),
        )
    {
        let pid = pid.as_i64().unwrap() as i32;
        // (A recycled pid is somebody else's process: only ours count.)
        let ours = cmdline(pid).contains(&sb.path().display().to_string());
        assert!(
            !(alive(pid) && ours),
            "pid {pid} ({}) still runs",
            cmdline(pid)
        );
    }
    for n in sb.file()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
    {
        let left = processes_in(&sb.data_dir(&n));
        assert!(
            left.is_empty(),
            "{n}: PostgreSQL processes {left:?} still run"
        );
        assert!(
            http_get(&sb.http(&n), "/health").is_err(),
            "{n} HTTP still open"
        );
    }
    let left: Vec<i32> = before.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
}

#[test]
fn up_streams_reports_serves_health_and_down_leaves_nothing() {
    let sb = Sandbox::up("up", 3);
    let base = sb.base;

    // sandbox.json: every manager and node, and the dsn.
    let f = sb.file();
    assert_eq!(f["cluster"], "main");
    let managers = f["managers"].as_array().expect("managers");
    assert_eq!(managers.len(), 3, "{f}");
    for (i, m) in managers.iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(
            m["address"],
            format!("127.0.0.1:{}", base + id as u16),
            "{m}"
        );
        let pid = m["pid"].as_i64().expect("manager pid") as i32;
        assert!(alive(pid) && cmdline(pid).contains("manager"), "{m}");
        assert!(
            std::path::Path::new(m["data_dir"].as_str().expect("data_dir")).is_dir(),
            "{m}"
        );
    }
    let nodes = f["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{f}");
    for (i, n) in nodes.iter().enumerate() {
        let k = i as u16 + 1;
        assert_eq!(n["name"], format!("n{k}"), "{n}");
        assert_eq!(n["pg_host"], "127.0.0.1", "{n}");
        assert_eq!(n["pg_port"], base + 10 + k, "{n}");
        assert_eq!(n["http"], format!("127.0.0.1:{}", base + 20 + k), "{n}");
        let pid = n["agent_pid"].as_i64().expect("agent pid") as i32;
        assert!(alive(pid) && cmdline(pid).contains("agent"), "{n}");
        let data = std::path::Path::new(n["data_dir"].as_str().expect("data_dir"));
        assert!(data.join("PG_VERSION").is_file(), "{n}");
    }
    // The dsn as printed by `sandbox up` is the one in sandbox.json.
    let printed = sb
        .up_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("connect:"))
        .and_then(|l| l.trim().strip_prefix("psql \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no psql line in:\n{}", sb.up_output))
        .to_string();
    assert_eq!(f["dsn"], printed.as_str());

    // status --json: the documented fields, with one primary and two
    // streaming replicas, agreeing with sandbox.json.
    let p = sb.primary();
    sb.wait_settled(&p, SETTLE);
    let s = poll("lag known for every node", SETTLE, || {
        let s = sb.status()?;
        let known = s["nodes"]
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["lag_bytes"].is_u64()));
        if known && s["primary"] == p.as_str() {
            Ok(s)
        } else {
            Err(compact(&s))
        }
    });
    assert_eq!(s["cluster"], "main");
    assert!(s["epoch"].as_u64().is_some_and(|e| e >= 1), "{s}");
    assert_eq!(s["paused"], false);
    let epoch = s["epoch"].as_u64().unwrap();
    for n in s["nodes"].as_array().expect("nodes") {
        let name = n["name"].as_str().expect("name");
        assert!(ROLES.contains(&n["role"].as_str().expect("role")), "{n}");
        assert!(n["state"].is_string(), "{n}");
        assert_eq!(n["host"], "127.0.0.1", "{n}");
        assert_eq!(n["port"], sb.pg_port(name), "{n}");
        assert!(n["timeline"].as_u64().is_some_and(|t| t >= 1), "{n}");
        let lsn = n["lsn"].as_str().expect("lsn");
        let (hi, lo) = lsn.split_once('/').expect("lsn X/Y");
        assert!(
            u32::from_str_radix(hi, 16).is_ok() && u32::from_str_radix(lo, 16).is_ok(),
            "{n}"
        );
        assert_eq!(n["healthy"], true, "{n}");
        assert_eq!(n["sync"], false, "{n}");
        if name == p {
            assert_eq!(n["role"], "primary", "{n}");
            assert_eq!(n["lag_bytes"], 0, "{n}");
        } else {
            assert_eq!(n["role"], "replica", "{n}");
            assert_eq!(n["state"], "streaming", "{n}");
        }
    }
    let ms = s["managers"].as_array().expect("managers");
    assert_eq!(ms.len(), 3, "{s}");
    for m in ms {
        let id = m["id"].as_u64().expect("id");
        assert_eq!(
            m["address"],
            format!("127.0.0.1:{}", base + id as u16),
            "{m}"
        );
        assert!(m["role"] == "leader" || m["role"] == "follower", "{m}");
        assert!(m["term"].as_u64().is_some_and(|t| t >= 1), "{m}");
    }
    assert_eq!(
        ms.iter().filter(|m| m["role"] == "leader").count(),
        1,
        "{s}"
    );

    // The printed dsn lands on the primary; the row reaches both replicas.
    let landed = psql(
        &printed,
        "CREATE TABLE it_rows (id int PRIMARY KEY, note text); \
         INSERT INTO it_rows VALUES (1, 'via the dsn'); \
         SELECT inet_server_port() || ' ' || pg_is_in_recovery()",
    )
    .expect("write through the printed dsn");
    assert_eq!(landed, format!("{} false", sb.pg_port(&p)));
    let replicas: Vec<String> = names(&s).into_iter().filter(|n| *n != p).collect();
    for r in &replicas {
        poll(&format!("the row on {r}"), SETTLE, || {
            psql(&sb.conninfo(r), "SELECT note FROM it_rows WHERE id = 1").and_then(|v| {
                if v == "via the dsn" {
                    Ok(())
                } else {
                    Err(v)
                }
            })
        });
        assert_eq!(
            psql(&sb.conninfo(r), "SELECT pg_is_in_recovery()").unwrap(),
            "t"
        );
        wait_streams_from(&sb, r, &p);
    }

    // Health endpoints.
    for n in names(&s) {
        let http = sb.http(&n);
        assert_eq!(http_code(&http, "/health"), 200, "{n} /health");
        let (code, _) = http_get(&http, "/replica?lag=lots").unwrap();
        assert_eq!(code, 400, "{n} /replica?lag=lots");
        let (code, text) = http_get(&http, "/metrics").unwrap();
        assert_eq!(code, 200);
        let is_primary = n == p;
        let flag = if is_primary { "1" } else { "0" };
        assert_eq!(
            metric(&text, "pgquorum_epoch").as_deref(),
            Some(epoch.to_string().as_str()),
            "{n} /metrics:\n{text}"
        );
        assert_eq!(
            metric(&text, "pgquorum_primary").as_deref(),
            Some(flag),
            "{text}"
        );
        assert_eq!(
            metric(&text, "pgquorum_lease_valid").as_deref(),
            Some(flag),
            "{text}"
        );
        // Patroni's names, with the same meaning.
        assert_eq!(http_code(&http, "/liveness"), 200, "{n} /liveness");
        assert_eq!(http_code(&http, "/readiness"), 200, "{n} /readiness");
        assert_eq!(http_code(&http, "/read-only"), 200, "{n} /read-only");
        assert_eq!(http_code(&http, "/standby-leader"), 404, "{n}");
        let (code, _) = http_get(&http, "/read-only?lag=1.5MB").unwrap();
        assert_eq!(code, 400, "{n} /read-only?lag=1.5MB");
        // HAProxy checks with HEAD or OPTIONS as often as with GET.
        for method in ["HEAD", "OPTIONS"] {
            let (code, body) = http_request(method, &http, "/read-write").unwrap();
            assert_eq!(code, if is_primary { 200 } else { 503 }, "{method} {n}");
            assert!(method != "HEAD" || body.is_empty(), "HEAD with a body");
        }
        if is_primary {
            assert_eq!(http_code(&http, "/primary"), 200, "{n} /primary");
            for alias in ["/leader", "/read-write", "/master"] {
                assert_eq!(http_code(&http, alias), 200, "{n} {alias}");
            }
            assert_eq!(http_code(&http, "/replica"), 503, "{n} /replica");
            assert_eq!(http_code(&http, "/replica?lag=1000000000"), 503);
            assert_eq!(http_code(&http, "/sync"), 503, "{n} /sync");
            assert_eq!(http_code(&http, "/async"), 503, "{n} /async");
        } else {
            assert_eq!(http_code(&http, "/primary"), 503, "{n} /primary");
            for alias in ["/leader", "/read-write", "/master"] {
                assert_eq!(http_code(&http, alias), 503, "{n} {alias}");
            }
            assert_eq!(http_code(&http, "/replica"), 200, "{n} /replica");
            assert_eq!(http_code(&http, "/replica?lag=1000000000"), 200);
            // Asynchronous mode: every replica is an asynchronous standby.
            assert_eq!(http_code(&http, "/async?lag=1GB"), 200, "{n} /async");
            assert_eq!(http_code(&http, "/sync"), 503, "{n} /sync");
            assert_eq!(http_code(&http, "/replica?lag=1GB"), 200, "{n}");
            assert_eq!(http_code(&http, "/read-only?lag=1GB"), 200, "{n}");
            poll(
                &format!("{n} /replica?lag=0 on an idle cluster"),
                SETTLE,
                || match http_get(&http, "/replica?lag=0") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }
    }

    // Patroni's /cluster and /history, from the managers, on any node.
    let (code, body) = http_get(&sb.http(&replicas[0]), "/cluster").unwrap();
    assert_eq!(code, 200, "{body}");
    let cluster: Value = serde_json::from_str(&body).expect("/cluster is JSON");
    assert_eq!(
        cluster["primary"],
        sb.status().unwrap()["primary"],
        "{body}"
    );
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(3), "{body}");
    let (code, body) = http_get(&sb.http(&replicas[0]), "/history").unwrap();
    assert_eq!(code, 200, "{body}");
    let history: Value = serde_json::from_str(&body).expect("/history is JSON");
    assert!(
        history
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "bootstrap")),
        "{body}"
    );

    // A replica whose replay is held back is still a replica, but not one
    // within 0 bytes of the primary.
    let r = &replicas[0];
    let http = sb.http(r);
    let startup = pids_of(
        &psql(
            &sb.conninfo(r),
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'",
        )
        .unwrap(),
    );
    assert_eq!(startup.len(), 1, "startup process of {r}");
    let frozen = Continue(startup.clone());
    signal(startup[0], Signal::SIGSTOP);
    psql(
        &printed,
        "INSERT INTO it_rows SELECT g, 'lag' FROM generate_series(100, 2000) g",
    )
    .unwrap();
    let body = poll(&format!("{r} lagging behind"), SETTLE, || {
        match http_get(&http, "/replica?lag=0") {
            Ok((503, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    let lag: Value = serde_json::from_str(&body).expect("/replica body is JSON");
    assert!(lag["lag_bytes"].as_u64().is_some_and(|l| l > 0), "{body}");
    assert_eq!(http_code(&http, "/replica?lag=1000000000"), 200);
    assert_eq!(http_code(&http, "/replica"), 200);
    // Patroni's /read-only honours the lag limit too, with units.
    assert_eq!(http_code(&http, "/read-only?lag=0kB"), 503);
    assert_eq!(http_code(&http, "/read-only?lag=1GB"), 200);
    drop(frozen);
    poll(&format!("{r} caught up"), SETTLE, || {
        match http_get(&http, "/replica?lag=0") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    down_leaves_nothing(&sb);
}

#[test]
fn switchover_round_trip_then_failover_then_a_node_ahead_in_epoch_is_left_alone() {
    let sb = Sandbox::up("switchover", 3);
    let p0 = sb.primary();
    let s = sb.wait_settled(&p0, SETTLE);
    let all = names(&s);
    let others: Vec<String> = all.iter().filter(|n| **n != p0).cloned().collect();
    let (target, third) = (others[0].clone(), others[1].clone());
    let dsn = sb.file()["dsn"].as_str().unwrap().to_string();
    psql(
        &dsn,
        "CREATE TABLE it_rows (id int PRIMARY KEY, note text); INSERT INTO it_rows VALUES (1, 'one')",
    )
    .unwrap();

    // There…
    let out = sb.cli(&["switchover", "--to", &target, "--force"]);
    assert!(out.status.success(), "switchover: {}", stderr(&out));
    let s1 = sb.wait_settled(&target, SETTLE);
    assert!(s1["epoch"].as_u64() > s["epoch"].as_u64(), "{s1}");
    wait_streams_from(&sb, &p0, &target);
    wait_streams_from(&sb, &third, &target);
    let landed = psql(
        &dsn,
        "INSERT INTO it_rows VALUES (2, 'two'); SELECT inet_server_port()",
    )
    .unwrap();
    assert_eq!(landed, sb.pg_port(&target).to_string());

    // … and back again.
    let out = sb.cli(&["switchover", "--to", &p0, "--force"]);
    assert!(out.status.success(), "switchover back: {}", stderr(&out));
    let s2 = sb.wait_settled(&p0, SETTLE);
    assert!(s2["epoch"].as_u64() > s1["epoch"].as_u64(), "{s2}");
    wait_streams_from(&sb, &target, &p0);
    wait_streams_from(&sb, &third, &p0);
    let landed = psql(
        &dsn,
        "INSERT INTO it_rows VALUES (3, 'three'); SELECT inet_server_port()",
    )
    .unwrap();
    assert_eq!(landed, sb.pg_port(&p0).to_string());
    wait_rows(&sb, &all, "1,2,3");

    let out = sb.cli(&["--json", "history"]);
    assert!(out.status.success(), "history: {}", stderr(&out));
    let history: Value = serde_json::from_str(&stdout(&out)).expect("history --json");
    let switchovers: Vec<(String, String)> = history
        .as_array()
        .expect("history is a list")
        .iter()
        .filter(|e| e["kind"] == "switchover")
        .map(|e| {
            (
                e["old_primary"].as_str().unwrap_or("").to_string(),
                e["new_primary"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        switchovers,
        vec![(p0.clone(), target.clone()), (target.clone(), p0.clone())],
        "{history}"
    );

    // The replicas followed timeline switches without a restart: when the
    // primary now dies, one of them must still qualify for promotion.
    sb.must("crash", &p0);
    let p1 = sb.new_primary(&p0);
    let landed = psql(
        &dsn,
        "INSERT INTO it_rows VALUES (4, 'four'); SELECT inet_server_port()",
    )
    .unwrap();
    assert_eq!(landed, sb.pg_port(&p1).to_string());
    sb.must("start", &p0);
    let s3 = sb.wait_settled(&p1, SETTLE);
    wait_rows(&sb, &all, "1,2,3,4");

    // A replica whose agent has seen a newer epoch than the cluster's
    // (its state file says so) refuses this epoch's commands; the leader
    // must leave it alone, and nothing in its data directory changes.
    let epoch = s3["epoch"].as_u64().unwrap();
    let victim = p0.clone();
    let data = sb.data_dir(&victim);
    let state_file = data
        .parent()
        .unwrap()
        .join("agent")
        .join("agent-state.json");
    // Stop the node: the agent (which leaves PostgreSQL running), then
    // its keeper (which stops PostgreSQL).
    let stop_node = |sb: &Sandbox| {
        let pid = sb.agent_pid(&victim);
        let running = processes_in(&data);
        signal(pid, Signal::SIGTERM);
        assert!(
            wait_gone(&[pid], Duration::from_secs(60)),
            "agent {pid} did not stop"
        );
        assert!(
            running.iter().all(|p| alive(*p)),
            "PostgreSQL stopped with its agent: it belongs to the keeper"
        );
        let keeper = sb.keeper_pid(&victim).expect("the keeper runs");
        signal(keeper, Signal::SIGTERM);
        assert!(
            wait_gone(&[keeper], Duration::from_secs(60)),
            "keeper {keeper} did not stop"
        );
        poll(&format!("{victim}'s PostgreSQL stopped"), SETTLE, || {
            let left = processes_in(&data);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        });
    };
    stop_node(&sb);
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state["epoch"], epoch, "{state}");
    let ahead = epoch + 100;
    state["epoch"] = ahead.into();
    std::fs::write(&state_file, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let before = tree_digest(&data);
    let log = sb.agent_log(&victim);
    let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;

    sb.must("start", &victim);
    poll(&format!("{victim} reporting epoch {ahead}"), SETTLE, || {
        let s = sb.status()?;
        let n = node_of(&s, &victim);
        if n["epoch"] == ahead {
            Ok(())
        } else {
            Err(compact(&s))
        }
    });
    // Watch it for a while: it must stay down, untouched.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let running = processes_in(&data);
        assert!(
            running.is_empty(),
            "{victim}'s PostgreSQL was started: {running:?}"
        );
        // Every look must succeed: a failing status would hide a change.
        let s = sb
            .status()
            .unwrap_or_else(|e| panic!("status failed while watching {victim}: {e}"));
        let n = node_of(&s, &victim);
        assert_eq!(n["role"], "down", "{}", compact(&s));
        assert_eq!(s["primary"], p1.as_str(), "{}", compact(&s));
        assert_eq!(
            s["epoch"],
            epoch,
            "the cluster's epoch moved: {}",
            compact(&s)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        tree_digest(&data),
        before,
        "{victim}'s data directory changed"
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(
        state["epoch"], ahead,
        "the persisted epoch went back: {state}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let since = &text[log_start.min(text.len())..];
    let done: Vec<&str> = since
        .lines()
        .filter(|l| l.contains("command done"))
        .collect();
    assert!(done.is_empty(), "{victim} carried out commands: {done:?}");
    // Refusals are fine; a leader resending them without end is not.
    let refused = since.lines().filter(|l| l.contains("stale epoch")).count();
    assert!(
        refused <= 3,
        "the leader keeps sending commands {victim} refuses ({refused} refusals):\n{}",
        tail(&log, 10)
    );

    // Undo the edit: the node rejoins as a replica, data intact.
    stop_node(&sb);
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    state["epoch"] = epoch.into();
    std::fs::write(&state_file, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    sb.must("start", &victim);
    sb.wait_settled(&p1, SETTLE);
    wait_rows(&sb, std::slice::from_ref(&victim), "1,2,3,4");
    down_leaves_nothing(&sb);
}

#[test]
fn failover_rewinds_a_diverged_old_primary_and_reclones_when_rewind_fails() {
    let sb = Sandbox::up("failover", 3);
    let p0 = sb.primary();
    let s = sb.wait_settled(&p0, SETTLE);
    let all = names(&s);
    let dsn = sb.file()["dsn"].as_str().unwrap().to_string();
    psql(
        &dsn,
        "CREATE TABLE it_rows (id int PRIMARY KEY, note text); \
         INSERT INTO it_rows VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    )
    .unwrap();
    wait_rows(&sb, &all, "1,2,3");

    // Make the divergence real: freeze the primary's WAL senders, commit a
    // row only the primary has, then crash it.
    // The keeper's commit gate is a WAL sender too; freezing it would hold
    // the INSERT below, which must commit on the primary alone.
    let senders = pids_of(
        &psql(
            &sb.conninfo(&p0),
            &format!(
                "SELECT pid FROM pg_stat_replication WHERE application_name <> '{}'",
                pgquorum::cluster::sync::GATE
            ),
        )
        .unwrap(),
    );
    assert_eq!(
        senders.len(),
        all.len() - 1,
        "WAL senders of {p0}: {senders:?}"
    );
    let frozen = Continue(senders.clone());
    for pid in &senders {
        signal(*pid, Signal::SIGSTOP);
    }
    psql(
        &sb.conninfo(&p0),
        "INSERT INTO it_rows VALUES (1000, 'lost')",
    )
    .unwrap();
    for r in all.iter().filter(|n| **n != p0) {
        assert_eq!(
            psql(
                &sb.conninfo(r),
                "SELECT count(*) FROM it_rows WHERE id = 1000"
            )
            .unwrap(),
            "0",
            "{r} got the row although the WAL senders are frozen"
        );
    }
    sb.must("crash", &p0);
    // They died with the crash: nothing to continue (their pids may be
    // somebody else's by now).
    let mut frozen = frozen;
    frozen.0.clear();
    assert!(
        http_get(&sb.http(&p0), "/health").is_err(),
        "{p0}'s HTTP port is still open after the crash"
    );

    // A replica is promoted; only it says yes on /primary.
    let p1 = sb.new_primary(&p0);
    poll(&format!("/primary 200 only on {p1}"), SETTLE, || {
        let codes: Vec<(String, Result<u16, String>)> = all
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    http_get(&sb.http(n), "/primary")
                        .map(|(c, _)| c)
                        .map_err(|e| e.to_string()),
                )
            })
            .collect();
        let ok = codes.iter().all(|(n, c)| {
            if *n == p0 {
                c.is_err()
            } else if *n == p1 {
                *c == Ok(200)
            } else {
                *c == Ok(503)
            }
        });
        if ok {
            Ok(())
        } else {
            Err(format!("{codes:?}"))
        }
    });
    let landed = psql(
        &dsn,
        "INSERT INTO it_rows VALUES (4, 'four'), (5, 'five'); SELECT inet_server_port()",
    )
    .unwrap();
    assert_eq!(landed, sb.pg_port(&p1).to_string());
    assert_eq!(rows(&sb, &p1).unwrap(), "1,2,3,4,5");

    // The old primary comes back: rewound onto the new timeline, with
    // exactly the new primary's rows (the lost one gone).
    sb.must("start", &p0);
    sb.wait_settled(&p1, SETTLE);
    wait_streams_from(&sb, &p0, &p1);
    wait_rows(&sb, &all, "1,2,3,4,5");
    let log = std::fs::read_to_string(sb.agent_log(&p0)).unwrap();
    assert!(
        log.contains(&format!("rewound from {p1}")),
        "{p0} was not rewound:\n{}",
        tail(&sb.agent_log(&p0), 20)
    );

    // Rewind impossible: the next primary to crash loses its WAL; it must
    // be cloned again and stream.
    sb.must("crash", &p1);
    let p2 = sb.new_primary(&p1);
    let pg_wal = sb.data_dir(&p1).join("pg_wal");
    let mut removed = 0;
    for e in std::fs::read_dir(&pg_wal).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            std::fs::remove_file(e.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "no WAL segment in {}", pg_wal.display());
    let landed = psql(
        &dsn,
        "INSERT INTO it_rows VALUES (6, 'six'); SELECT inet_server_port()",
    )
    .unwrap();
    assert_eq!(landed, sb.pg_port(&p2).to_string());
    sb.must("start", &p1);
    sb.wait_settled(&p2, SETTLE);
    wait_streams_from(&sb, &p1, &p2);
    wait_rows(&sb, &all, "1,2,3,4,5,6");
    let log = std::fs::read_to_string(sb.agent_log(&p1)).unwrap();
    assert!(
        log.contains(&format!("cloned again from {p2}")),
        "{p1} was not cloned again:\n{}",
        tail(&sb.agent_log(&p1), 20)
    );
    let out = sb.cli(&["--json", "history"]);
    let history: Value = serde_json::from_str(&stdout(&out)).expect("history --json");
    let failovers = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "failover")
        .count();
    assert_eq!(failovers, 2, "{history}");
    down_leaves_nothing(&sb);
}
