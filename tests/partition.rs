//! Network partitions between network-namespace hosts, each running a
//! manager and an agent with its PostgreSQL; clients write from outside.
//!
//! Needs root (network namespaces); skipped with a message otherwise, or
//! failing when PGQUORUM_REQUIRE_ROOT_TESTS is set (CI).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::deploy::{ids_on, Ack, Deployment, PG_PORT};
use common::netns::{self, Network};
use common::wait_for;

/// One network at a time: the tests share the subnet.
static NETWORK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LONG: Duration = Duration::from_secs(90);

/// Cut the primary's host off, check the fence and the promotion, heal, and
/// return (acks, old primary address, new primary address, ids on the final primary).
async fn isolate_primary(sync: bool) -> (Vec<Ack>, String, String, BTreeSet<i64>) {
    let net = Network::create(3).expect("network namespaces");
    let config: &[(&str, &str)] = if sync { &[("sync_mode", "on")] } else { &[] };
    let d = Deployment::start(&net, config).await;
    let before = d.status().await.expect("status");
    let old = d.host_of_node(&before.primary);
    if sync {
        wait_for("a sync standby", LONG, || async {
            d.status()
                .await
                .filter(|s| s.nodes.iter().any(|n| n.sync))
                .map(|_| ())
        })
        .await;
    }
    let writers = d.writers().await;
    wait_for("writes on the primary", LONG, || async {
        (writers.acks_by(&old.address).len() >= 10).then_some(())
    })
    .await;

    let cut = Instant::now();
    net.isolate(&old);

    // The majority promotes a replica of a newer epoch …
    let after = wait_for("a new primary on the majority side", LONG, || async {
        let s = d.status().await?;
        let p = s.nodes.iter().find(|n| n.role == "primary" && n.healthy)?;
        (s.epoch > before.epoch && p.name != old.name).then_some(s.clone())
    })
    .await;
    let new = d.host_of_node(&after.primary);
    wait_for("writes on the new primary", LONG, || async {
        (writers.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;
    // … and the isolated old primary fenced itself: not primary, not running.
    assert_eq!(
        d.http(&old, "/primary").await,
        Some(503),
        "the isolated old primary still claims to be primary"
    );
    assert_eq!(
        d.http(&old, "/health").await,
        Some(503),
        "the isolated old primary still runs PostgreSQL"
    );
    let healed = Instant::now();
    net.rejoin(&old);
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.primary, new.name);
    assert_eq!(Deployment::node(&fin, &old.name).role, "replica");
    let acks = writers.stop().await;

    // Never two primaries at once: every write the old primary acknowledged
    // after the cut was acknowledged before the new primary was even asked
    // for its first write.
    let old_last = acks
        .iter()
        .filter(|a| a.server == old.address)
        .map(|a| a.acked)
        .max()
        .expect("old acks");
    let new_first = acks
        .iter()
        .filter(|a| a.server == new.address)
        .map(|a| a.sent)
        .min()
        .expect("new acks");
    assert!(
        old_last < new_first,
        "overlap: the old primary acknowledged a write after the new primary was written to"
    );
    let final_ids = ids_on(&new.address, PG_PORT).await;
    // The old primary streams again and holds exactly the new primary's rows.
    wait_for("the old primary to catch up", LONG, || async {
        let ids = ids_on(&old.address, PG_PORT).await;
        ids.is_superset(&final_ids).then_some(())
    })
    .await;
    eprintln!(
        "cut→new primary's first write {:?}; heal→all streaming {:?}",
        acks.iter()
            .filter(|a| a.server == new.address)
            .map(|a| a.acked)
            .min()
            .unwrap()
            .duration_since(cut),
        healed.elapsed()
    );
    (acks, old.address.clone(), new.address.clone(), final_ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_primary_fences_itself_and_the_majority_takes_over_async() {
    if !netns::usable("isolated_primary_fences_itself_and_the_majority_takes_over_async") {
        return;
    }
    let _guard = NETWORK.lock().await;
    let (acks, old, _new, final_ids) = isolate_primary(false).await;
    // Asynchronous mode: only what the old primary acknowledged may be lost.
    let lost: Vec<&Ack> = acks.iter().filter(|a| !final_ids.contains(&a.id)).collect();
    assert!(
        lost.iter().all(|a| a.server == old),
        "lost rows acknowledged by a surviving node: {lost:?}"
    );
    eprintln!(
        "async: {} acknowledged rows lost (all from the isolated old primary)",
        lost.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_primary_loses_no_acknowledged_row_in_sync_mode() {
    if !netns::usable("isolated_primary_loses_no_acknowledged_row_in_sync_mode") {
        return;
    }
    let _guard = NETWORK.lock().await;
    let (acks, _old, _new, final_ids) = isolate_primary(true).await;
    let lost: Vec<i64> = acks
        .iter()
        .filter(|a| !final_ids.contains(&a.id))
        .map(|a| a.id)
        .collect();
    assert!(
        lost.is_empty(),
        "sync mode lost acknowledged rows: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_minority_manager_does_not_disturb_a_healthy_primary() {
    if !netns::usable("a_cut_off_minority_manager_does_not_disturb_a_healthy_primary") {
        return;
    }
    let _guard = NETWORK.lock().await;
    let net = Network::create(3).expect("network namespaces");
    let d = Deployment::start(&net, &[]).await;
    let before = d.status().await.expect("status");
    let leader = before
        .managers
        .iter()
        .find(|m| m.role == "leader")
        .expect("leader")
        .id;
    let primary = d.host_of_node(&before.primary);
    // A host that runs neither the primary nor the leader manager.
    let victim = d
        .hosts
        .iter()
        .find(|h| h.name != primary.name && d.manager_id(h) != leader)
        .cloned()
        .expect("a third host");
    let writers = d.writers().await;
    wait_for("writes", LONG, || async {
        (writers.acks_by(&primary.address).len() >= 10).then_some(())
    })
    .await;

    net.isolate(&victim);
    // Watch for three lease lengths: nothing may change for the primary.
    // (An observation window, not a synchronisation: nothing is awaited.)
    let window = Instant::now();
    let first = writers.acks_by(&primary.address).len();
    while window.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = d.status().await.expect("the majority answers");
        assert_eq!(s.epoch, before.epoch, "a failover happened");
        assert_eq!(s.primary, before.primary);
        assert_eq!(
            d.http(&primary, "/primary").await,
            Some(200),
            "the primary lost its lease"
        );
    }
    assert!(
        writers.acks_by(&primary.address).len() > first,
        "no write succeeded while a minority manager was cut off"
    );
    net.rejoin(&victim);
    d.wait_all_streaming(3, LONG).await;
    let acks = writers.stop().await;
    let ids = ids_on(&primary.address, PG_PORT).await;
    assert!(
        acks.iter().all(|a| ids.contains(&a.id)),
        "acknowledged rows missing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_primary_with_the_managers_down_cannot_keep_failsafe_and_fences() {
    if !netns::usable("isolated_primary_with_the_managers_down_cannot_keep_failsafe_and_fences") {
        return;
    }
    let _guard = NETWORK.lock().await;
    let net = Network::create(3).expect("network namespaces");
    let mut d = Deployment::start(&net, &[]).await;
    let before = d.status().await.expect("status");
    let primary = d.host_of_node(&before.primary);
    let writers = d.writers().await;
    wait_for("writes", LONG, || async {
        (writers.acks_by(&primary.address).len() >= 10).then_some(())
    })
    .await;
    // The managers of the two other hosts die: no quorum. The primary
    // keeps its lease on its peers' promises.
    let others: Vec<_> = d
        .hosts
        .iter()
        .filter(|h| h.name != primary.name)
        .cloned()
        .collect();
    for h in &others {
        d.managers.get_mut(&h.name).expect("manager").kill9();
    }
    let in_failsafe = || async {
        let status = common::sandbox::http_get(
            &format!("{}:{}", primary.address, common::deploy::HTTP_PORT),
            "/status",
        )
        .ok()?;
        status.1.contains("\"active\":true").then_some(())
    };
    wait_for("failsafe mode", LONG, in_failsafe).await;
    // Now the primary's host is cut off from everybody: no peer can
    // promise, the lease runs out, the keeper fences.
    let cut = Instant::now();
    net.isolate(&primary);
    let data = d.host_dir(&primary).join("data");
    wait_for("the isolated primary fenced", LONG, || async {
        common::deploy::postgres_pids(&data)
            .is_empty()
            .then_some(())
    })
    .await;
    eprintln!("isolated in failsafe: fenced after {:?}", cut.elapsed());
    let last = writers
        .acks_by(&primary.address)
        .iter()
        .map(|a| a.acked)
        .max()
        .expect("acks");
    assert!(
        last < cut + Duration::from_secs(3),
        "the isolated primary took writes for {:?} after the cut",
        last - cut
    );
    net.rejoin(&primary);
    for h in &others {
        let i = d.hosts.iter().position(|x| x.name == h.name).unwrap();
        d.start_manager(&net, i);
    }
    d.wait_all_streaming(3, LONG).await;
    writers.stop().await;
}
