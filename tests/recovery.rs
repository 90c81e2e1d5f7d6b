//! Disaster recovery: two of three managers destroyed for good; the
//! documented `--force-new-cluster` brings the group back from the survivor
//! with its state, and failover works again.

mod common;

use std::time::Duration;

use common::deploy::{Deployment, MANAGER_PORT};
use common::netns::Network;
use common::{stderr, wait_for};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_manager_majority_is_recovered_from_one_survivor() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let before = d.status().await.expect("status");

    // Managers 2 and 3 are destroyed: processes and data.
    for host in ["h2", "h3"] {
        d.managers.get_mut(host).unwrap().kill9();
        std::fs::remove_dir_all(
            d.host_dir(&net.hosts[if host == "h2" { 1 } else { 2 }])
                .join("manager"),
        )
        .unwrap();
    }
    // Without a quorum nothing can be decided; the survivor is restarted
    // with --force-new-cluster.
    d.managers.get_mut("h1").unwrap().kill9();
    let listen = format!("{}:{MANAGER_PORT}", net.hosts[0].address);
    d.start_manager_with(&net, 0, &["--listen", &listen, "--force-new-cluster"]);

    let after = wait_for(
        "the recovered group to serve the old state",
        LONG,
        || async {
            let s = d.status().await?;
            (s.epoch >= before.epoch + 1000 && s.nodes.len() == 3).then_some(s)
        },
    )
    .await;
    assert_eq!(after.managers.len(), 1, "the re-formed group has one voter");
    let history = d.cli(&["history", "--json"]);
    let events: serde_json::Value = serde_json::from_slice(&history.stdout).expect("history");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "recovery"),
        "{events}"
    );

    // The cluster runs again under the new epoch …
    let healthy = d.wait_all_streaming(3, LONG).await;
    assert!(healthy.epoch >= before.epoch + 1000);

    // … and failover works again.
    let old = d.host_of_node(&healthy.primary);
    d.crash_host(&old, false);
    let promoted = wait_for("a failover after recovery", LONG, || async {
        let s = d.status().await?;
        let p = s.nodes.iter().find(|n| n.role == "primary" && n.healthy)?;
        (s.epoch > healthy.epoch && p.name != old.name).then_some(s.clone())
    })
    .await;
    eprintln!(
        "after recovery: {} -> {} in epoch {}",
        old.name, promoted.primary, promoted.epoch
    );

    // Restarting the survivor normally (no flag, no --peers) keeps the group.
    d.managers.get_mut("h1").unwrap().kill9();
    d.start_manager_with(&net, 0, &["--listen", &listen]);
    wait_for("the survivor back", LONG, || async {
        d.status().await.filter(|s| s.epoch == promoted.epoch)
    })
    .await;
    let out = d.cli(&["managers", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
