//! Physical replication slots: every node holds one for each other member,
//! replicas stream through theirs, a promoted replica (switchover or
//! crash) already has the slots its new replicas use, and a removed
//! member's slot goes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::deploy::{Deployment, PG_PORT};
use common::netns::Network;
use common::{stderr, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// One query's rows (first two columns) on the server at `host`.
async fn rows(host: &str, query: &str) -> Option<Vec<(String, String)>> {
    let dsn = format!("host={host} port={PG_PORT} user=postgres dbname=postgres connect_timeout=2");
    let (c, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let messages = c.simple_query(query).await.ok()?;
    Some(
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get(0).unwrap_or_default().to_string(),
                    r.get(1).unwrap_or_default().to_string(),
                )),
                _ => None,
            })
            .collect(),
    )
}

/// Physical slots on `host`: name -> active ("t"/"f").
async fn slots_on(host: &str) -> Option<BTreeMap<String, String>> {
    rows(
        host,
        "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'",
    )
    .await
    .map(|r| r.into_iter().collect())
}

/// `primary` has an active slot for each of `replicas`; each replica has an
/// idle one for every other node and streams through its own.
async fn wait_slots(d: &Deployment, primary: &str, replicas: &[String]) {
    let address = |n: &str| d.host_of_node(n).address;
    wait_for("the primary's slots in use", LONG, || async {
        let slots = slots_on(&address(primary)).await?;
        let want: BTreeMap<String, String> = replicas
            .iter()
            .map(|r| (format!("pgq_{r}"), "t".to_string()))
            .collect();
        (slots == want).then_some(())
    })
    .await;
    for r in replicas {
        let others: BTreeMap<String, String> = replicas
            .iter()
            .filter(|o| *o != r)
            .chain(std::iter::once(&primary.to_string()))
            .map(|o| (format!("pgq_{o}"), "f".to_string()))
            .collect();
        wait_for("a replica's slots for the others", LONG, || async {
            (slots_on(&address(r)).await? == others).then_some(())
        })
        .await;
        let receiver = rows(
            &address(r),
            "SELECT slot_name, status FROM pg_stat_wal_receiver",
        )
        .await
        .unwrap_or_default();
        assert_eq!(
            receiver,
            vec![(format!("pgq_{r}"), "streaming".to_string())],
            "{r} does not stream through its slot"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_holds_slots_for_the_others_through_switchover_failover_and_removal() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let s = d.wait_all_streaming(3, LONG).await;
    let primary = s.primary.clone();
    let replicas: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| n.name != primary)
        .map(|n| n.name.clone())
        .collect();
    wait_slots(&d, &primary, &replicas).await;

    // A switchover: the new primary already holds the slots the others
    // now stream through.
    // The third node is re-pointed, not restarted: its slot on the new
    // primary is there when it gets there.
    let target = replicas[0].clone();
    let third = d.host_of_node(&replicas[1]).address;
    let started = "SELECT pg_postmaster_start_time()::text, 1";
    let before = rows(&third, started).await.expect("start time");
    let out = d.cli(&["switchover", "--to", &target, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after: Vec<String> = [primary.clone(), replicas[1].clone()].to_vec();
    wait_slots(&d, &target, &after).await;
    assert_eq!(
        rows(&third, started).await,
        Some(before),
        "{} was restarted by the switchover",
        replicas[1]
    );

    // A crash of the primary: the promoted replica already holds the slot
    // the remaining replica streams through; the crashed node rejoins
    // through its own.
    let status = d.wait_all_streaming(3, LONG).await;
    let crashed = d.host_of_node(&status.primary);
    d.crash_host(&crashed, false);
    let promoted = d.new_primary(&crashed, status.epoch).await.name;
    let other = d
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .find(|n| *n != crashed.name && *n != promoted)
        .expect("a third node");
    let address = d.host_of_node(&promoted).address;
    wait_for(
        "the remaining replica on its slot on the promoted node",
        LONG,
        || async {
            let slots = slots_on(&address).await?;
            (slots.get(&format!("pgq_{other}")).map(String::as_str) == Some("t")).then_some(())
        },
    )
    .await;
    let i = d
        .hosts
        .iter()
        .position(|h| h.name == crashed.name)
        .expect("host");
    d.start_agent(&net, i);
    wait_slots(&d, &promoted, &[crashed.name.clone(), other.clone()]).await;

    // A removed member's slot goes, on the primary and on the replica.
    let gone = other;
    d.stop_node(&gone);
    wait_for("the stopped node to be removable", LONG, || async {
        d.cli(&["node", "remove", &gone, "--force"])
            .status
            .success()
            .then_some(())
    })
    .await;
    for n in [&promoted, &crashed.name] {
        let address = d.host_of_node(n).address;
        wait_for("the removed node's slot dropped", LONG, || async {
            let slots = slots_on(&address).await?;
            (!slots.contains_key(&format!("pgq_{gone}"))).then_some(())
        })
        .await;
    }

    // Slots off: pgquorum's slots are dropped and replicas stream without.
    let out = d.cli(&["config", "set", "use_slots=off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("no slots once use_slots is off", LONG, || async {
        slots_on(&address).await?.is_empty().then_some(())
    })
    .await;
    d.wait_all_streaming(2, LONG).await;
}
