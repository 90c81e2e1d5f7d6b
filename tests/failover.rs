//! Automatic failover with real PostgreSQL 15 servers, managers and agents,
//! each "host" on a loopback address of its own, and clients writing rows
//! throughout: host crashes, a crash that also takes the Raft leader, a
//! frozen primary, a switchover under load, and pause.

mod common;

use std::time::{Duration, Instant};

use common::deploy::{ids_on, lost, Ack, Deployment, PG_PORT};
use common::netns::{Host, Network};
use common::{stderr, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// Nothing committed by `old` after `new` was first written to. A reply
/// may arrive late — a commit done before a freeze is answered on the
/// thaw — but such a row is on `new` (`new_ids`): it reached `new` before
/// `new` stopped following `old`. A late acknowledgement of a row `new`
/// lacks was committed by a second primary.
fn assert_no_overlap(
    acks: &[Ack],
    old: &Host,
    new: &Host,
    new_ids: &std::collections::BTreeSet<i64>,
) {
    let new_first = acks
        .iter()
        .filter(|a| a.server == new.address)
        .map(|a| a.sent)
        .min()
        .expect("writes on the new primary");
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.server == old.address && a.acked >= new_first && !new_ids.contains(&a.id))
        .collect();
    assert!(
        late.is_empty(),
        "two primaries: {} acknowledged {} writes {} lacks after {} took writes, the first: {:?}",
        old.name,
        late.len(),
        new.name,
        new.name,
        &late[..late.len().min(3)]
    );
}

/// Crash the primary's host (optionally with the leader manager on it);
/// check the promotion, restart the host and check it rejoins.
async fn crash_primary_host(with_leader: bool) {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let mut before = d.status().await.expect("status");
    if with_leader {
        // Make the primary's host the leader manager's host: switch the
        // primary over to the node that lives beside the leader.
        let leader = d.leader_id().await.expect("leader");
        let target = d.hosts[(leader - 1) as usize].name.clone();
        if target != before.primary {
            let out = d.cli(&["switchover", "--to", &target, "--force"]);
            assert!(out.status.success(), "switchover: {}", stderr(&out));
            before = wait_for("the switchover", LONG, || async {
                let s = d.status().await?;
                (s.primary == target && s.nodes.iter().filter(|n| n.healthy).count() == 3)
                    .then_some(s)
            })
            .await;
        }
        assert_eq!(
            d.leader_id().await,
            Some(leader),
            "leadership moved during the switchover; rerun"
        );
    }
    let old = d.host_of_node(&before.primary);
    let w = d.writers().await;
    wait_for("writes on the primary", LONG, || async {
        (w.acks_by(&old.address).len() >= 10).then_some(())
    })
    .await;

    d.crash_host(&old, with_leader);
    let new = d.new_primary(&old, before.epoch).await;
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;

    // The host comes back: manager, then agent; the node rejoins as a replica.
    let i = d.hosts.iter().position(|h| h.name == old.name).unwrap();
    if with_leader {
        d.start_manager(&net, i);
    }
    d.start_agent(&net, i);
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.primary, new.name);
    assert_eq!(Deployment::node(&fin, &old.name).role, "replica");
    let acks = w.stop().await;
    let ids = ids_on(&new.address, PG_PORT).await;
    assert_no_overlap(&acks, &old, &new, &ids);
    let missing = lost(&acks, &ids);
    assert!(
        missing.iter().all(|a| a.server == old.address),
        "rows acknowledged by a surviving node were lost: {missing:?}"
    );
    wait_for(
        "the old primary to hold the new primary's rows",
        LONG,
        || async {
            ids_on(&old.address, PG_PORT)
                .await
                .is_superset(&ids)
                .then_some(())
        },
    )
    .await;
    let history = d.cli(&["history", "--json"]);
    let events: serde_json::Value = serde_json::from_slice(&history.stdout).expect("history json");
    let last = events
        .as_array()
        .and_then(|e| e.last())
        .expect("a history event");
    assert_eq!(last["kind"], "failover");
    assert_eq!(last["old_primary"], old.name.as_str());
    assert_eq!(last["new_primary"], new.name.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_host_crash_promotes_a_replica_and_the_old_primary_rejoins() {
    crash_primary_host(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_host_crash_that_also_takes_the_raft_leader() {
    crash_primary_host(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_primary_accepts_no_write_after_the_promotion_and_loses_nothing_in_sync_mode() {
    let net = Network::loopback(3);
    let d = Deployment::start(&net, &[("sync_mode", "on")]).await;
    wait_for("a sync standby", LONG, || async {
        d.status()
            .await
            .filter(|s| s.nodes.iter().any(|n| n.sync))
            .map(|_| ())
    })
    .await;
    let before = d.status().await.expect("status");
    let old = d.host_of_node(&before.primary);
    let w = d.writers().await;
    wait_for("writes on the primary", LONG, || async {
        (w.acks_by(&old.address).len() >= 10).then_some(())
    })
    .await;

    let frozen = d.freeze_host(&old);
    let new = d.new_primary(&old, before.epoch).await;
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;
    d.thaw(&frozen);
    // The thawed node fences itself at once, then rejoins as a replica.
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.primary, new.name);
    let acks = w.stop().await;
    let ids = ids_on(&new.address, PG_PORT).await;
    assert_no_overlap(&acks, &old, &new, &ids);
    let missing = lost(&acks, &ids);
    assert!(
        missing.is_empty(),
        "sync mode lost acknowledged rows: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_under_write_load_loses_no_row() {
    let net = Network::loopback(3);
    let d = Deployment::start(&net, &[]).await;
    let before = d.status().await.expect("status");
    let old = d.host_of_node(&before.primary);
    let target = d
        .hosts
        .iter()
        .find(|h| h.name != old.name)
        .cloned()
        .unwrap();
    let w = d.writers().await;
    wait_for("writes on the primary", LONG, || async {
        (w.acks_by(&old.address).len() >= 10).then_some(())
    })
    .await;

    let out = d.cli(&["switchover", "--to", &target.name, "--force"]);
    assert!(out.status.success(), "switchover: {}", stderr(&out));
    let new = d.new_primary(&old, before.epoch).await;
    assert_eq!(new.name, target.name);
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(Deployment::node(&fin, &old.name).role, "replica");
    let acks = w.stop().await;
    let ids = ids_on(&new.address, PG_PORT).await;
    assert_no_overlap(&acks, &old, &new, &ids);
    assert!(
        lost(&acks, &ids).is_empty(),
        "a switchover lost acknowledged rows"
    );
    // The longest pause between two acknowledged writes through the
    // multi-host connection string, for information.
    let mut times: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|p| p[1] - p[0])
        .max()
        .unwrap_or_default();
    eprintln!("switchover: longest gap between acknowledged writes {gap:?}");
    let history = d.cli(&["history", "--json"]);
    assert!(String::from_utf8_lossy(&history.stdout).contains("\"switchover\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_cluster_promotes_nobody_and_a_lost_primary_needs_an_operator_after_resume() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let before = d.status().await.expect("status");
    let old = d.host_of_node(&before.primary);
    let out = d.cli(&["pause"]);
    assert!(out.status.success(), "pause: {}", stderr(&out));
    assert!(d.status().await.unwrap().paused);

    d.crash_host(&old, false);
    // Several lease lengths go by (an observation window): nobody is promoted.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = d.status().await.expect("status");
        assert_eq!(s.epoch, before.epoch, "a promotion happened while paused");
        // (The crashed node's last report may still say primary for a
        // moment; nobody else may.)
        assert!(
            s.nodes
                .iter()
                .all(|n| n.role != "primary" || n.name == old.name),
            "a node became primary while paused"
        );
    }
    // Resumed: the old primary's lease was held open while paused and
    // nobody can bound it now (its host is gone), so nobody is promoted
    // automatically.
    let out = d.cli(&["resume"]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = d.status().await.expect("status");
        assert!(s.lease_open, "the open lease was forgotten");
        assert_eq!(s.epoch, before.epoch, "promoted over an open lease");
    }
    let target = d
        .hosts
        .iter()
        .find(|h| h.name != old.name)
        .cloned()
        .unwrap();
    // An operator's failover is refused too, naming the way out...
    let out = d.cli(&["failover", "--to", &target.name, "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--old-primary-stopped"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.status().await.unwrap().epoch, before.epoch);
    // ...which works once the operator vouches that the host is down.
    let out = d.cli(&[
        "failover",
        "--to",
        &target.name,
        "--force",
        "--old-primary-stopped",
    ]);
    assert!(out.status.success(), "failover: {}", stderr(&out));
    let new = d.new_primary(&old, before.epoch).await;
    assert_eq!(new.name, target.name);
    assert!(!d.status().await.unwrap().lease_open);
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_keeps_working_round_after_round() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let w = d.writers().await;
    for round in 0..3 {
        let before = d.wait_all_streaming(3, LONG).await;
        let old = d.host_of_node(&before.primary);
        wait_for("writes on the primary", LONG, || async {
            (w.acks_by(&old.address).len() >= 5).then_some(())
        })
        .await;
        d.crash_host(&old, false);
        let new = d.new_primary(&old, before.epoch).await;
        eprintln!("round {round}: {} -> {}", old.name, new.name);
        let i = d.hosts.iter().position(|h| h.name == old.name).unwrap();
        d.start_agent(&net, i);
    }
    d.wait_all_streaming(3, LONG).await;
    let acks = w.stop().await;
    let s = d.status().await.unwrap();
    let ids = ids_on(&d.host_of_node(&s.primary).address, PG_PORT).await;
    // Only rows acknowledged by a primary that then crashed may be missing.
    assert!(
        lost(&acks, &ids).len() < acks.len() / 2,
        "most acknowledged rows are gone"
    );
}
