//! The manager quorum with real processes: elections, replication, crashes,
//! restarts and membership changes.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(30);

/// Commit `key=value` through any manager, retrying through elections.
async fn write(m: &Managers, key: &str, value: &str) {
    wait_for(&format!("write {key}"), LONG, || async {
        for id in m.procs.keys() {
            if m.set_param(*id, key, value).await.is_ok() {
                return Some(());
            }
        }
        None
    })
    .await
}

/// Wait until manager `id` has applied every key in `keys`.
async fn has_all(m: &Managers, id: u64, keys: &BTreeSet<String>) {
    wait_for(
        &format!("manager {id} to apply {} writes", keys.len()),
        LONG,
        || async {
            let config = m.local_config(id).await?;
            keys.iter()
                .all(|k| config.contains_key(&format!("postgresql.parameters.{k}")))
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_managers_elect_one_leader_and_a_follower_write_reaches_all() {
    let m = Managers::start(3);
    let leader = m.leader(&[1, 2, 3]).await;
    m.register("main", "n1", 5432).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();

    // Through the CLI, addressed to a follower only: it forwards to the leader.
    let out = cli(&[
        "--managers",
        &m.address(follower),
        "config",
        "set",
        "postgresql.parameters.work_mem=8MB",
    ]);
    assert!(out.status.success(), "config set failed: {}", stderr(&out));

    for id in [1, 2, 3] {
        wait_for("the write on every manager", LONG, || async {
            let c = m.local_config(id).await?;
            (c.get("postgresql.parameters.work_mem").map(String::as_str) == Some("8MB"))
                .then_some(())
        })
        .await;
    }
    let out = cli(&["--managers", &m.addresses(), "managers", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let roles: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{list}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "follower").count(),
        2,
        "{list}"
    );
    for entry in list.as_array().unwrap() {
        for key in ["id", "address", "role", "term", "last_applied"] {
            assert!(entry.get(key).is_some(), "missing {key} in {entry}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_leader_is_replaced_and_catches_up_after_restart() {
    let mut m = Managers::start(3);
    let old = m.leader(&[1, 2, 3]).await;
    m.register("main", "n1", 5432).await;
    write(&m, "before", "1").await;

    m.kill9(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let new = m.leader(&rest).await;
    assert_ne!(new, old);
    write(&m, "after", "2").await;

    m.spawn(old);
    let keys: BTreeSet<String> = ["before", "after"].iter().map(|s| s.to_string()).collect();
    has_all(&m, old, &keys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn all_managers_killed_and_restarted_keep_every_committed_write() {
    let mut m = Managers::start(3);
    m.leader(&[1, 2, 3]).await;
    m.register("main", "n1", 5432).await;
    let keys: BTreeSet<String> = (0..25).map(|i| format!("k{i}")).collect();
    for k in &keys {
        write(&m, k, "v").await;
    }
    for id in [1, 2, 3] {
        m.kill9(id);
    }
    for id in [1, 2, 3] {
        m.spawn(id);
    }
    m.leader(&[1, 2, 3]).await;
    for id in [1, 2, 3] {
        has_all(&m, id, &keys).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_sigkill_under_writes_loses_no_acknowledged_write() {
    let mut m = Managers::start(3);
    m.leader(&[1, 2, 3]).await;
    m.register("main", "n1", 5432).await;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addresses: Vec<String> = [1, 2, 3].iter().map(|id| m.address(*id)).collect();
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("w{i}");
                for addr in &addresses {
                    let channel = pgquorum::transport::lazy_channel(addr).unwrap();
                    let mut c =
                        pgquorum::proto::api::pg_quorum_client::PgQuorumClient::new(channel);
                    let mut req = tonic::Request::new(pgquorum::proto::api::SetConfigRequest {
                        cluster: "main".into(),
                        changes: [(format!("postgresql.parameters.{key}"), "1".to_string())].into(),
                    });
                    req.set_timeout(Duration::from_secs(3));
                    if c.set_config(req).await.is_ok() {
                        acked.lock().unwrap().insert(key.clone());
                        break;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    for round in 0..8u64 {
        // Alternate between the leader and a follower.
        let running: Vec<u64> = vec![1, 2, 3];
        let leader = m.leader(&running).await;
        let victim = if round % 2 == 0 {
            leader
        } else {
            [1, 2, 3].into_iter().find(|id| *id != leader).unwrap()
        };
        m.kill9(victim);
        tokio::time::sleep(Duration::from_millis(300 + 100 * (round % 4))).await;
        m.spawn(victim);
        // The store must reopen: the manager answers again.
        wait_for(
            &format!("manager {victim} to come back (round {round})"),
            LONG,
            || async {
                let running = m.procs.get(&victim).map(|_| ()).is_some();
                assert!(running);
                m.view(victim).await.map(|_| ())
            },
        )
        .await;
        let p = m.procs.get_mut(&victim).unwrap();
        assert!(
            p.is_running(),
            "manager {victim} exited after restart: {}",
            std::fs::read_to_string(m.log(victim)).unwrap_or_default()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    let keys = acked.lock().unwrap().clone();
    assert!(
        keys.len() > 20,
        "too few writes were acknowledged: {}",
        keys.len()
    );
    m.leader(&[1, 2, 3]).await;
    for id in [1, 2, 3] {
        has_all(&m, id, &keys).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fourth_manager_joins_then_one_is_removed() {
    let mut m = Managers::start(3);
    m.leader(&[1, 2, 3]).await;
    m.register("main", "n1", 5432).await;
    write(&m, "first", "1").await;

    m.spawn_joiner(4);
    let out = cli(&[
        "--managers",
        &m.address(1),
        "managers",
        "add",
        "4",
        &m.address(4),
    ]);
    assert!(
        out.status.success(),
        "managers add failed: {}",
        stderr(&out)
    );
    let list = wait_for("four voters", LONG, || async {
        let out = cli(&["--managers", &m.addresses(), "managers", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let voters = list
            .as_array()?
            .iter()
            .filter(|e| matches!(e["role"].as_str(), Some("leader") | Some("follower")))
            .count();
        (voters == 4).then_some(list)
    })
    .await;
    assert!(
        list.as_array().unwrap().iter().any(|e| e["id"] == 4),
        "{list}"
    );
    has_all(&m, 4, &["first".to_string()].into()).await;

    let out = cli(&["--managers", &m.address(2), "managers", "remove", "1"]);
    assert!(
        out.status.success(),
        "managers remove failed: {}",
        stderr(&out)
    );
    m.kill9(1);
    m.procs.remove(&1);
    let out = cli(&[
        "--managers",
        &format!("{},{}", m.address(2), m.address(3)),
        "managers",
        "list",
        "--json",
    ]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ids: BTreeSet<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [2, 3, 4].into());

    // The group keeps working, and the removed id cannot come back.
    write(&m, "second", "2").await;
    for id in [2, 3, 4] {
        has_all(&m, id, &["first".to_string(), "second".to_string()].into()).await;
    }
    let out = cli(&[
        "--managers",
        &m.address(2),
        "managers",
        "add",
        "1",
        "127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("never be reused"), "{}", stderr(&out));
}
