//! One manager group serving several clusters: `status` without
//! `--cluster` sums the fleet up, one line per cluster; commands that act
//! on a cluster must name one.

mod common;

use std::time::Duration;

use common::*;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn status_sums_up_the_fleet_and_commands_name_their_cluster() {
    let m = Managers::start(1);
    m.leader(&[1]).await;
    m.register("main", "n1", 5432).await;
    m.register("main", "n2", 5433).await;
    m.register("other", "o1", 5434).await;
    let a = m.address(1);
    let run = |args: &[&str]| {
        let mut full = vec!["--managers", a.as_str()];
        full.extend(args);
        cli(&full)
    };

    // One line per cluster, in human and JSON form.
    let out = run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("CLUSTER") && text.contains("WORST LAG"),
        "{text}"
    );
    let row = |name: &str| {
        text.lines()
            .any(|l| l.split_whitespace().any(|w| w == name))
    };
    assert!(row("main") && row("other"), "{text}");
    let fleet = json(&run(&["--json", "status"]));
    let clusters = fleet["clusters"].as_array().expect("clusters");
    let by_name = |name: &str| {
        clusters
            .iter()
            .find(|c| c["cluster"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {fleet}"))
    };
    assert_eq!(clusters.len(), 2, "{fleet}");
    assert_eq!(by_name("main")["nodes"], 2, "{fleet}");
    assert_eq!(by_name("other")["nodes"], 1, "{fleet}");
    // Nothing runs: no primary, nobody healthy.
    assert!(by_name("main")["primary"].is_null(), "{fleet}");
    assert_eq!(by_name("main")["healthy"], 0, "{fleet}");

    // One cluster by name: its own status.
    let one = json(&run(&["--json", "status", "--cluster", "other"]));
    assert_eq!(one["cluster"], "other");
    assert_eq!(one["nodes"].as_array().map(Vec::len), Some(1));

    // Acting without naming the cluster: refused with the list; nothing
    // changes.
    for args in [
        vec!["pause"],
        vec!["config", "set", "ttl=3s"],
        vec!["history"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("several clusters (main, other)")
                && stderr(&out).contains("--cluster"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(by_name("main")["paused"], false);
    let fleet = json(&run(&["--json", "status"]));
    assert!(
        fleet["clusters"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["paused"] == false)),
        "{fleet}"
    );
    // Named: it acts on that one only, and its history says so.
    let out = run(&["pause", "--cluster", "other"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fleet = json(&run(&["--json", "status"]));
    let paused: Vec<&str> = fleet["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .filter(|c| c["paused"] == true)
        .filter_map(|c| c["cluster"].as_str())
        .collect();
    assert_eq!(paused, ["other"], "{fleet}");
    let history = json(&run(&["--json", "history", "--cluster", "other"]));
    assert!(
        history
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["kind"] == "pause")),
        "{history}"
    );
    let history = json(&run(&["--json", "history", "--cluster", "main"]));
    assert!(
        history
            .as_array()
            .is_some_and(|h| h.iter().all(|e| e["kind"] != "pause")),
        "{history}"
    );
}

/// `pgquorum --json ARGS…` against `managers`, off the runtime's workers
/// (the synthetic agents run there); `None` unless it succeeds.
fn json_of(managers: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = tokio::task::block_in_place(|| {
        let mut full = vec!["--managers", managers, "--json"];
        full.extend(args);
        cli(&full)
    });
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Every cluster's primary and epoch from the fleet summary, once each
/// cluster has one and all its nodes are healthy.
fn settled_fleet(
    managers: &str,
    clusters: usize,
    nodes: u64,
) -> Option<Vec<(String, String, u64)>> {
    let fleet = json_of(managers, &["status"])?;
    let list = fleet["clusters"].as_array()?;
    if list.len() != clusters {
        return None;
    }
    list.iter()
        .map(|c| {
            let primary = c["primary"].as_str()?.to_string();
            (c["healthy"].as_u64()? == nodes).then_some(())?;
            Some((
                c["cluster"].as_str()?.to_string(),
                primary,
                c["epoch"].as_u64()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_synthetic_agents_fails_over_one_cluster_alone() {
    const CLUSTERS: usize = 20;
    let m = Managers::start(3);
    m.leader(&[1, 2, 3]).await;
    let managers: Vec<String> = (1..=3).map(|id| m.address(id)).collect();
    let names: Vec<String> = (1..=CLUSTERS).map(|i| format!("c{i:02}")).collect();
    let mut fleet = synthetic::Fleet::start(&managers, &names, 3);
    let a = m.addresses();

    // Every cluster bootstraps: a primary holding its lease, two replicas
    // streaming from it.
    let before = wait_for(
        "every cluster with a primary and healthy replicas",
        Duration::from_secs(120),
        || async { settled_fleet(&a, CLUSTERS, 3) },
    )
    .await;
    let leased = wait_for(
        "every primary holding its lease",
        Duration::from_secs(30),
        || async {
            let leased = fleet.leased_primaries();
            (leased.len() == CLUSTERS).then_some(leased)
        },
    )
    .await;
    for (cluster, primary, epoch) in &before {
        assert_eq!(
            leased.get(cluster),
            Some(&(primary.clone(), *epoch)),
            "{cluster}: the leader's primary and epoch are the agents' ({leased:?})"
        );
    }

    // One cluster's primary goes silent: a replica of that cluster is
    // promoted in a new epoch.
    let (victim, old_primary, old_epoch) = before[0].clone();
    fleet.silence(&victim, &old_primary);
    let (new_primary, new_epoch) = wait_for(
        "a new primary in the silenced cluster",
        Duration::from_secs(60),
        || async {
            let s = json_of(&a, &["status", "--cluster", &victim])?;
            let primary = s["primary"].as_str()?.to_string();
            let epoch = s["epoch"].as_u64()?;
            (primary != old_primary && epoch > old_epoch).then_some((primary, epoch))
        },
    )
    .await;
    wait_for(
        "the new primary holding its lease",
        Duration::from_secs(30),
        || async {
            (fleet.leased_primary(&victim) == Some((new_primary.clone(), new_epoch))).then_some(())
        },
    )
    .await;

    // Nobody else moved: same primaries, same epochs, leases still held.
    let fleet_now = json_of(&a, &["status"]).expect("fleet status");
    let list = fleet_now["clusters"].as_array().expect("clusters");
    assert_eq!(list.len(), CLUSTERS, "{fleet_now}");
    let leased = fleet.leased_primaries();
    for (cluster, primary, epoch) in before.iter().skip(1) {
        let row = list
            .iter()
            .find(|c| c["cluster"] == cluster.as_str())
            .unwrap_or_else(|| panic!("{cluster} missing from {fleet_now}"));
        assert_eq!(row["primary"], primary.as_str(), "{cluster}: {fleet_now}");
        assert_eq!(row["epoch"], *epoch, "{cluster}: {fleet_now}");
        assert_eq!(
            leased.get(cluster),
            Some(&(primary.clone(), *epoch)),
            "{cluster} lost its leased primary: {leased:?}"
        );
    }
    let promoted_elsewhere: Vec<_> = fleet
        .stats
        .commands
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.action == "promote" && c.cluster != victim)
        .map(|c| format!("{}/{}", c.cluster, c.node))
        .collect();
    assert!(promoted_elsewhere.is_empty(), "{promoted_elsewhere:?}");
    // The fleet summary lists every cluster, the failed-over one with its
    // new primary.
    let row = list
        .iter()
        .find(|c| c["cluster"] == victim.as_str())
        .expect("victim listed");
    assert_eq!(row["primary"], new_primary.as_str(), "{fleet_now}");

    // The leader's /metrics labels every cluster's epoch and primary.
    let leader = m.leader(&[1, 2, 3]).await;
    let metrics = metrics_of(&m, leader);
    let current: Vec<(String, String, u64)> = before
        .iter()
        .map(|(c, p, e)| {
            if *c == victim {
                (c.clone(), new_primary.clone(), new_epoch)
            } else {
                (c.clone(), p.clone(), *e)
            }
        })
        .collect();
    for (cluster, primary, epoch) in &current {
        let l = format!("manager=\"{leader}\",cluster=\"{cluster}\"");
        assert!(
            metrics.contains(&format!("pgquorum_cluster_epoch{{{l}}} {epoch}\n")),
            "{cluster} epoch {epoch} missing from the metrics:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "pgquorum_node_is_primary{{{l},node=\"{primary}\"}} 1\n"
            )),
            "{cluster} primary {primary} missing from the metrics:\n{metrics}"
        );
    }

    // A cluster that goes away costs nothing any more: refused while it
    // runs; once all its agents are gone it is removed, and leaves the
    // status and the metrics; the others are untouched.
    let (gone, _, _) = before[1].clone();
    let out = tokio::task::block_in_place(|| {
        cli(&["--managers", &a, "cluster", "remove", &gone, "--force"])
    });
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("still runs"), "{}", stderr(&out));
    for node in ["n1", "n2", "n3"] {
        fleet.silence(&gone, node);
    }
    wait_for(
        "the silent cluster to be removable",
        Duration::from_secs(60),
        || async {
            tokio::task::block_in_place(|| {
                cli(&["--managers", &a, "cluster", "remove", &gone, "--force"])
            })
            .status
            .success()
            .then_some(())
        },
    )
    .await;
    let fleet_after = json_of(&a, &["status"]).expect("fleet status");
    let list = fleet_after["clusters"].as_array().expect("clusters");
    assert_eq!(list.len(), CLUSTERS - 1, "{fleet_after}");
    assert!(
        list.iter().all(|c| c["cluster"] != gone.as_str()),
        "{fleet_after}"
    );
    let metrics = metrics_of(&m, leader);
    assert!(
        !metrics.contains(&format!("cluster=\"{gone}\"")),
        "{gone} still in the metrics:\n{metrics}"
    );
    let leased = fleet.leased_primaries();
    for (cluster, primary, epoch) in current.iter().filter(|(c, _, _)| *c != gone) {
        assert_eq!(
            leased.get(cluster),
            Some(&(primary.clone(), *epoch)),
            "{cluster} moved when {gone} was removed: {leased:?}"
        );
    }

    fleet.stop();
    drop(m);
}

/// Manager `id`'s Prometheus metrics text.
fn metrics_of(m: &Managers, id: u64) -> String {
    let address = m.metrics_address(id);
    let (code, body) = tokio::task::block_in_place(|| sandbox::http_get(&address, "/metrics"))
        .expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}
