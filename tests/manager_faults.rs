//! Manager trouble never stops a healthy primary: a leader stopped
//! (SIGTERM), killed or frozen, a rolling restart of every manager, and the
//! manager quorum lost (failsafe). Real managers, agents, keepers and
//! PostgreSQL 15 servers, each "host" on a loopback address of its own, a
//! writer through the multi-host connection string throughout.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::deploy::{Deployment, Writers, HTTP_PORT, PG_PORT};
use common::netns::{Host, Network};
use common::wait_for;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(120);

/// The host's agent's `/status`.
fn agent_status(host: &Host) -> Option<serde_json::Value> {
    let (code, body) =
        common::sandbox::http_get(&format!("{}:{HTTP_PORT}", host.address), "/status").ok()?;
    (code == 200 || code == 503)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// The postmaster's pid from `postmaster.pid`.
fn postmaster(data: &Path) -> Option<String> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()
        .map(str::to_string)
}

/// What must not change while managers come and go.
struct Primary {
    host: Host,
    epoch: u64,
    postmaster: String,
}

impl Primary {
    async fn of(d: &Deployment) -> Primary {
        let s = d.status().await.expect("status");
        let host = d.host_of_node(&s.primary);
        let postmaster = postmaster(&d.host_dir(&host).join("data")).expect("postmaster.pid");
        Primary {
            host,
            epoch: s.epoch,
            postmaster,
        }
    }

    /// Same primary, same epoch, same postmaster, never fenced.
    async fn unchanged(&self, d: &Deployment, what: &str) {
        let s = wait_for("a status", LONG, || d.status()).await;
        assert_eq!(s.epoch, self.epoch, "{what}: a failover happened");
        assert_eq!(s.primary, self.host.name, "{what}: another primary");
        assert_eq!(
            postmaster(&d.host_dir(&self.host).join("data")).as_deref(),
            Some(self.postmaster.as_str()),
            "{what}: PostgreSQL was restarted"
        );
        let fences = agent_status(&self.host).expect("agent status")["keeper"]["fences"].clone();
        assert_eq!(fences, 0, "{what}: the primary was fenced");
    }
}

/// No failed write through the multi-host string since `since`.
fn no_errors(w: &Writers, since: Instant, what: &str) {
    let errors: Vec<_> = w
        .errors()
        .into_iter()
        .filter(|(at, _)| *at > since)
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the writer saw errors: {errors:?}"
    );
}

/// Writes acknowledged after `since`, by the primary.
async fn writes_after(w: &Writers, primary: &Host, since: Instant) {
    wait_for("writes", LONG, || async {
        (w.acks_by(&primary.address)
            .iter()
            .filter(|a| a.sent > since)
            .count()
            >= 10)
            .then_some(())
    })
    .await;
}

fn manager_index(id: u64) -> usize {
    (id - 1) as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_any_manager_exits_at_once_and_the_primary_never_notices() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let p = Primary::of(&d).await;
    let w = d.writers().await;
    writes_after(&w, &p.host, Instant::now()).await;
    let t0 = Instant::now();
    // The leader first, then a follower, twice over.
    for round in 0..4 {
        let leader = wait_for("a leader", LONG, || d.leader_id()).await;
        let id = if round % 2 == 0 {
            leader
        } else {
            (1..=3).find(|i| *i != leader).expect("a follower")
        };
        let host = d.hosts[manager_index(id)].clone();
        let stopped = Instant::now();
        let status = d
            .managers
            .get_mut(&host.name)
            .expect("manager")
            .terminate(Duration::from_secs(30));
        let took = stopped.elapsed();
        eprintln!("round {round}: manager {id} (leader {leader}) stopped in {took:?}: {status:?}");
        assert!(
            status.is_some_and(|s| s.success()),
            "manager {id} did not stop cleanly within 30 s: {status:?}"
        );
        let new = wait_for("a leader", LONG, || async {
            d.leader_id().await.filter(|l| *l != id)
        })
        .await;
        eprintln!("round {round}: leader now {new}");
        writes_after(&w, &p.host, Instant::now()).await;
        d.start_manager(&net, manager_index(id));
        // Up (its port open: its signal handlers are in place) before the
        // next round may pick it: a SIGTERM in its first milliseconds would
        // meet the default action, not the clean stop this test checks.
        let address = format!("{}:{}", host.address, common::deploy::MANAGER_PORT);
        wait_for("the restarted manager listening", LONG, || async {
            tokio::net::TcpStream::connect(&address)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        d.wait_all_streaming(3, LONG).await;
    }
    p.unchanged(&d, "stopping managers").await;
    no_errors(&w, t0, "stopping managers");
    w.stop().await;
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_or_frozen_leader_never_costs_the_primary_its_lease() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let p = Primary::of(&d).await;
    let w = d.writers().await;
    writes_after(&w, &p.host, Instant::now()).await;
    let t0 = Instant::now();
    for round in 0..10 {
        let leader = wait_for("a leader", LONG, || d.leader_id()).await;
        let host = d.hosts[manager_index(leader)].clone();
        let manager = d.managers.get_mut(&host.name).expect("manager");
        let freeze = round % 2 == 1;
        if freeze {
            // The leader's host hangs: its manager answers nothing.
            manager.signal(Signal::SIGSTOP);
        } else {
            manager.kill9();
        }
        wait_for("a new leader", LONG, || async {
            d.leader_id().await.filter(|l| *l != leader)
        })
        .await;
        writes_after(&w, &p.host, Instant::now()).await;
        if freeze {
            d.managers
                .get(&host.name)
                .expect("manager")
                .signal(Signal::SIGCONT);
        } else {
            d.start_manager(&net, manager_index(leader));
        }
        d.wait_all_streaming(3, LONG).await;
        eprintln!(
            "round {round}: leader {leader} {}",
            if freeze { "frozen" } else { "killed" }
        );
    }
    p.unchanged(&d, "losing leaders").await;
    no_errors(&w, t0, "losing leaders");
    w.stop().await;
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_of_every_manager_under_load() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let p = Primary::of(&d).await;
    let w = d.writers().await;
    writes_after(&w, &p.host, Instant::now()).await;
    let t0 = Instant::now();
    // What docs/operations/rolling-restart.md says: one at a time, the
    // leader last, each back in the group before the next.
    let leader = wait_for("a leader", LONG, || d.leader_id()).await;
    let mut order: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    order.push(leader);
    for id in order {
        let host = d.hosts[manager_index(id)].clone();
        let status = d
            .managers
            .get_mut(&host.name)
            .expect("manager")
            .terminate(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        d.start_manager(&net, manager_index(id));
        wait_for("all three managers in the group", LONG, || async {
            let s = d.status().await?;
            (s.managers.len() == 3
                && s.managers.iter().filter(|m| m.role == "leader").count() == 1
                && s.managers
                    .iter()
                    .all(|m| m.role == "leader" || m.role == "follower"))
            .then_some(())
        })
        .await;
        writes_after(&w, &p.host, Instant::now()).await;
    }
    p.unchanged(&d, "a rolling restart").await;
    no_errors(&w, t0, "a rolling restart");
    w.stop().await;
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_quorum_failsafe_keeps_the_primary_until_a_peer_cannot_promise() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[]).await;
    let p = Primary::of(&d).await;
    let w = d.writers().await;
    writes_after(&w, &p.host, Instant::now()).await;

    // Two managers die: no quorum, no leader that can grant a lease.
    let t0 = Instant::now();
    let lost: Vec<Host> = d
        .hosts
        .iter()
        .filter(|h| h.name != p.host.name)
        .cloned()
        .collect();
    for h in &lost {
        d.managers.get_mut(&h.name).expect("manager").kill9();
    }
    wait_for("failsafe mode", LONG, || async {
        agent_status(&p.host).filter(|s| s["failsafe"]["active"] == true)
    })
    .await;
    // Many lease lengths: the primary keeps taking writes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    writes_after(&w, &p.host, t0 + Duration::from_secs(5)).await;
    no_errors(&w, t0, "failsafe mode");
    let replica = lost[0].clone();
    let promised = agent_status(&replica).expect("replica status");
    assert_eq!(promised["failsafe"]["promised_to"], p.host.name.as_str());

    // A replica's agent dies as well: it can promise nothing, so the
    // primary's lease is no longer extended and its keeper fences it.
    let fault = Instant::now();
    d.agents.get_mut(&replica.name).expect("agent").kill9();
    let data = d.host_dir(&p.host).join("data");
    wait_for("the primary fenced", LONG, || async {
        common::deploy::postgres_pids(&data)
            .is_empty()
            .then_some(())
    })
    .await;
    eprintln!(
        "primary fenced {:?} after the replica's agent died",
        fault.elapsed()
    );
    let last_old = w
        .acks_by(&p.host.address)
        .iter()
        .map(|a| a.acked)
        .max()
        .expect("acks");

    // The managers come back, then the agent: normal operation resumes,
    // and nobody is promoted while a promise may still run.
    for h in &lost {
        d.start_manager(&net, d.hosts.iter().position(|x| x.name == h.name).unwrap());
    }
    let i = d.hosts.iter().position(|h| h.name == replica.name).unwrap();
    d.start_agent(&net, i);
    let fin = d.wait_all_streaming(3, LONG).await;
    let primary = d.host_of_node(&fin.primary);
    writes_after(&w, &primary, Instant::now()).await;
    let acks = w.stop().await;
    if primary.name != p.host.name {
        let first_new = acks
            .iter()
            .filter(|a| a.server == primary.address)
            .map(|a| a.sent)
            .min()
            .expect("writes on the new primary");
        assert!(last_old < first_new, "two primaries took writes at once");
    }
    let ids = common::deploy::ids_on(&primary.address, PG_PORT).await;
    let missing = common::deploy::lost(&acks, &ids);
    assert!(
        missing.iter().all(|a| a.server == p.host.address),
        "rows acknowledged by another node were lost: {missing:?}"
    );
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_failsafe_off_a_lost_quorum_fences_the_primary() {
    let net = Network::loopback(3);
    let mut d = Deployment::start(&net, &[("failsafe", "off")]).await;
    let p = Primary::of(&d).await;
    let others: Vec<Host> = d
        .hosts
        .iter()
        .filter(|h| h.name != p.host.name)
        .cloned()
        .collect();
    for h in &others {
        d.managers.get_mut(&h.name).expect("manager").kill9();
    }
    let data = d.host_dir(&p.host).join("data");
    wait_for("the primary fenced", LONG, || async {
        common::deploy::postgres_pids(&data)
            .is_empty()
            .then_some(())
    })
    .await;
    let s = agent_status(&p.host).expect("status");
    assert_eq!(s["failsafe"]["active"], false, "{s}");
    d.stop_and_check_nothing_left();
}
