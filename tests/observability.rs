//! Metrics on managers and agents, JSON logs, and user callbacks on role
//! changes.

mod common;

use std::time::Duration;

use common::deploy::{http_get, Deployment, METRICS_PORT};
use common::netns::Network;
use common::{stderr, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// The body of an HTTP GET (bounded), for metrics text.
async fn http_body(address: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(address).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

/// Every `pgquorum_…` metric name in the dashboard's queries.
fn metric_names(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        let expr = target["expr"].as_str().expect("expr");
        let mut rest = expr;
        while let Some(at) = rest.find("pgquorum_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_json_logs_and_callbacks() {
    let net = Network::loopback(2);
    let marker = tempfile::tempdir().unwrap();
    let script = marker.path().join("callback.sh");
    let calls = marker.path().join("calls");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1 $2 $3\" >> {}\n", calls.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tables = format!(
        "[callbacks]\non_role_change = \"{}\"\ntimeout = \"5s\"\n",
        script.display()
    );
    let d = Deployment::start_custom(&net, &[], "log_format = \"json\"", &tables, &[]).await;
    let s = d.status().await.unwrap();
    let leader = s.managers.iter().find(|m| m.role == "leader").unwrap().id;

    // Manager metrics: Raft state and control-loop counters.
    let leader_host = &d.hosts[(leader - 1) as usize];
    let m = http_body(
        &format!("{}:{METRICS_PORT}", leader_host.address),
        "/metrics",
    )
    .await
    .expect("manager metrics");
    assert_eq!(value(&m, "pgquorum_raft_is_leader"), Some(1.0), "{m}");
    assert!(value(&m, "pgquorum_raft_term").unwrap() >= 1.0);
    assert!(
        value(&m, "pgquorum_lease_grants_total").unwrap() > 0.0,
        "{m}"
    );
    assert_eq!(
        value(&m, "pgquorum_split_brain_suspected"),
        Some(0.0),
        "{m}"
    );
    for name in [
        "pgquorum_raft_apply_lag",
        "pgquorum_decisions_total",
        "pgquorum_failovers_total",
        "pgquorum_lease_denials_total",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
    let follower_host = d.hosts.iter().find(|h| h.name != leader_host.name).unwrap();
    let f = http_body(
        &format!("{}:{METRICS_PORT}", follower_host.address),
        "/metrics",
    )
    .await
    .unwrap();
    assert_eq!(value(&f, "pgquorum_raft_is_leader"), Some(0.0));

    // Per-node gauges: committed ones on every manager, report-based ones
    // on the leader only.
    let replica = s
        .nodes
        .iter()
        .find(|n| n.name != s.primary)
        .unwrap()
        .name
        .clone();
    let labels = |n: &str| format!("{{manager=\"{leader}\",cluster=\"main\",node=\"{n}\"}}");
    let m = wait_for("the replica's lag on the leader", LONG, || async {
        let m = http_body(
            &format!("{}:{METRICS_PORT}", leader_host.address),
            "/metrics",
        )
        .await?;
        m.contains(&format!("pgquorum_node_lag_bytes{}", labels(&replica)))
            .then_some(m)
    })
    .await;
    let primary_labels = labels(&s.primary);
    assert_eq!(
        value(&m, &format!("pgquorum_node_is_primary{primary_labels}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, &format!("pgquorum_node_is_primary{}", labels(&replica))),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(&m, &format!("pgquorum_node_healthy{primary_labels}")),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains(&format!(
        "pgquorum_node_role{{manager=\"{leader}\",cluster=\"main\",node=\"{replica}\",role=\"replica\""
    )), "{m}");
    assert!(value(&m, "pgquorum_cluster_epoch").unwrap() >= 1.0, "{m}");
    assert!(
        f.contains("pgquorum_node_is_primary{") && !f.contains("pgquorum_node_healthy{"),
        "{f}"
    );

    // Agent metrics.
    let primary = d.host_of_node(&s.primary);
    let a = http_body(&format!("{}:8008", primary.address), "/metrics")
        .await
        .unwrap();
    assert_eq!(value(&a, "pgquorum_primary"), Some(1.0), "{a}");

    // The shipped Grafana dashboard queries only metrics that exist.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana-dashboard.json"
        ))
        .expect("deploy/grafana-dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let queried = metric_names(&dashboard);
    assert!(queried.len() > 10, "{queried:?}");
    let a_replica = http_body(
        &format!("{}:8008", d.host_of_node(&replica).address),
        "/metrics",
    )
    .await
    .unwrap();
    for name in &queried {
        let declared = format!("# TYPE {name} ");
        assert!(
            [&m, &a, &a_replica]
                .iter()
                .any(|text| text.contains(&declared)),
            "the dashboard queries {name}, which neither a manager nor an agent exports"
        );
    }
    assert_eq!(value(&a, "pgquorum_lease_valid"), Some(1.0));
    assert!(value(&a, "pgquorum_epoch").unwrap() >= 1.0);
    assert_eq!(
        http_get(&format!("{}:8008", primary.address), "/primary").await,
        Some(200)
    );

    // JSON logs: every line the agent wrote is a JSON object (none is
    // filtered out first: a plain-text line would fail here).
    let log = std::fs::read_to_string(d.host_dir(&primary).join("agent.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 5, "hardly any log lines: {log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }

    // Callbacks: the bootstrap made the first node primary; a switchover
    // makes the other one primary and the first a replica.
    wait_for("the bootstrap callback", LONG, || async {
        std::fs::read_to_string(&calls)
            .ok()
            .filter(|c| c.contains("on_role_change primary main"))
            .map(|_| ())
    })
    .await;
    let other = d.hosts.iter().find(|h| h.name != primary.name).unwrap();
    let out = d.cli(&["switchover", "--to", &other.name, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the replica callback", LONG, || async {
        std::fs::read_to_string(&calls)
            .ok()
            .filter(|c| c.contains("on_role_change replica main"))
            .map(|_| ())
    })
    .await;
}
