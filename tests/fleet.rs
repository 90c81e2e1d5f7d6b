//! One manager group serving several clusters: `status` without
//! `--cluster` sums the fleet up, one line per cluster; commands that act
//! on a cluster must name one.

mod common;

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
