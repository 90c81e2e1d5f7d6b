//! The primary's lease survives the agent: its keeper stops PostgreSQL at
//! the deadline whether the agent was killed, frozen or stalled, and takes
//! PostgreSQL with it when it dies itself; an agent restarted in time
//! changes nothing. A PostgreSQL that freezes under a live agent loses its
//! lease the same way, and a merely busy one does not. Real managers, agents, keepers and PostgreSQL 15
//! servers, each "host" on a loopback address of its own, clients writing
//! through the multi-host connection string and straight to every node.

mod common;

use std::time::{Duration, Instant};

use common::deploy::{ids_on, lost, Ack, Deployment, Writers, PG_PORT};
use common::netns::{Host, Network};
use common::wait_for;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(120);

/// Nothing acknowledged by `old` after `new` took its first write.
fn assert_no_overlap(acks: &[Ack], old: &Host, new: &Host) {
    let new_first = acks
        .iter()
        .filter(|a| a.server == new.address)
        .map(|a| a.sent)
        .min()
        .expect("writes on the new primary");
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.server == old.address && a.acked >= new_first)
        .collect();
    assert!(
        late.is_empty(),
        "two primaries: {} acknowledged {} writes after {} took writes, the first: {:?}",
        old.name,
        late.len(),
        new.name,
        &late[..late.len().min(3)]
    );
}

/// A loop cancelling, on `host`, every commit that waits for a
/// synchronous standby: PostgreSQL then reports the commit as done (with
/// only a warning) although no standby has it. Only a fenced server keeps
/// such a row from being acknowledged.
fn cancel_sync_waits(host: &Host) -> tokio::task::JoinHandle<()> {
    let dsn = format!(
        "host={} port={PG_PORT} user=postgres dbname=postgres connect_timeout=1",
        host.address
    );
    tokio::spawn(async move {
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            if let Ok(Ok((c, conn))) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
            )
            .await
            {
                tokio::spawn(conn);
                while !c.is_closed() && Instant::now() < deadline {
                    let _ = c
                        .simple_query(
                            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                        )
                        .await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn start(sync: bool, env: &[(&str, &str)]) -> (Network, Deployment) {
    let net = Network::loopback(3);
    let config: &[(&str, &str)] = if sync { &[("sync_mode", "on")] } else { &[] };
    let d = Deployment::start_custom(&net, config, "", "", env).await;
    if sync {
        let standby = wait_for("a sync standby", LONG, || async {
            d.status()
                .await
                .and_then(|s| s.nodes.into_iter().find(|n| n.sync))
        })
        .await;
        // Patroni's /sync and /async agree with the managers.
        let host = d.host_of_node(&standby.name);
        wait_for("/sync on the sync standby", LONG, || async {
            (d.http(&host, "/sync").await == Some(200)).then_some(())
        })
        .await;
        assert_eq!(d.http(&host, "/async").await, Some(503));
    }
    (net, d)
}

/// Writers running, and the primary taking their writes.
async fn writing(d: &Deployment) -> (Writers, Host, u64) {
    let before = d.status().await.expect("status");
    let old = d.host_of_node(&before.primary);
    let w = d.writers().await;
    wait_for("writes on the primary", LONG, || async {
        (w.acks_by(&old.address).len() >= 10).then_some(())
    })
    .await;
    (w, old, before.epoch)
}

/// The processes of `host`'s PostgreSQL server as it runs now.
fn server_of(d: &Deployment, host: &Host) -> Vec<i32> {
    let server = common::deploy::postgres_pids(&d.host_dir(host).join("data"));
    assert!(!server.is_empty(), "no PostgreSQL process on {}", host.name);
    server
}

/// Wait until none of `server`'s processes runs any more (a later server
/// in the same data directory, the node rejoining, is another); how long
/// it took.
async fn postgres_gone(server: &[i32], since: Instant) -> Duration {
    wait_for("the old primary's PostgreSQL to stop", LONG, || async {
        (!server.iter().any(|p| pgquorum::process::alive(*p))).then(|| since.elapsed())
    })
    .await
}

/// The primary's agent alone, or its PostgreSQL alone, is hurt (`hurt`
/// does it); its keeper must stop PostgreSQL before another node is
/// promoted, with or without cancelled commits in sync mode. `heal` undoes
/// the fault; the old primary must then rejoin as a replica by itself.
async fn primary_agent_fault(
    sync: bool,
    hurt: impl FnOnce(&mut Deployment, &Host),
    heal: impl FnOnce(&mut Deployment, &Network, &Host),
) {
    let (net, mut d) = start(sync, &[]).await;
    let (w, old, epoch) = writing(&d).await;
    let keeper = d.keeper_pid(&old).expect("the primary's keeper");
    let canceller = sync.then(|| cancel_sync_waits(&old));
    let server = server_of(&d, &old);
    let t0 = Instant::now();
    hurt(&mut d, &old);
    let new = d.new_primary(&old, epoch).await;
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;
    // Give a surviving old primary time to take writes, then look.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let so_far = w.acks.lock().expect("acks").clone();
    assert_no_overlap(&so_far, &old, &new);
    let fenced = postgres_gone(&server, t0).await;
    eprintln!("old primary's PostgreSQL gone {fenced:?} after the fault (at the latest)");
    // The keeper enforced it and lives on (a later agent attaches to it).
    assert!(
        pgquorum::process::alive(keeper),
        "the keeper died with the agent"
    );
    if let Some(c) = canceller {
        c.abort();
    }

    heal(&mut d, &net, &old);
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.primary, new.name);
    assert_eq!(Deployment::node(&fin, &old.name).role, "replica");
    // The fence is in the history, also when it happened while no agent
    // ran (the next agent noticed it).
    wait_for("the fence in the history", LONG, || async {
        let out = d.cli(&["history", "--json"]);
        let events: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        events
            .as_array()?
            .iter()
            .any(|e| e["kind"] == "fence" && e["node"] == old.name.as_str())
            .then_some(())
    })
    .await;
    let acks = w.stop().await;
    assert_no_overlap(&acks, &old, &new);
    let ids = ids_on(&new.address, PG_PORT).await;
    let missing = lost(&acks, &ids);
    // In sync mode the cancelled commits are the one way to lose a row,
    // and only on the old primary; in async mode its last lease's rows.
    assert!(
        missing.iter().all(|a| a.server == old.address),
        "rows acknowledged by a surviving node were lost: {missing:?}"
    );
    d.stop_and_check_nothing_left();
}

fn kill_agent(d: &mut Deployment, host: &Host) {
    d.agents.get_mut(&host.name).expect("agent").kill9();
}

fn restart_agent(d: &mut Deployment, net: &Network, host: &Host) {
    let i = d.hosts.iter().position(|h| h.name == host.name).unwrap();
    d.start_agent(net, i);
}

fn freeze_agent(d: &mut Deployment, host: &Host) {
    d.agents
        .get(&host.name)
        .expect("agent")
        .signal(Signal::SIGSTOP);
}

fn thaw_agent(d: &mut Deployment, _: &Network, host: &Host) {
    d.agents
        .get(&host.name)
        .expect("agent")
        .signal(Signal::SIGCONT);
}

/// SIGSTOP of every process of the primary's server (a hung disk, a stuck
/// kernel call), its agent alive.
fn freeze_postgres(d: &mut Deployment, host: &Host) {
    pgquorum::process::signal_all(&server_of(d, host), Signal::SIGSTOP);
}

fn thaw_postgres(d: &mut Deployment, _: &Network, host: &Host) {
    let server = common::deploy::postgres_pids(&d.host_dir(host).join("data"));
    pgquorum::process::signal_all(&server, Signal::SIGCONT);
}

/// The whole primary host frozen past its lease (a paused VM) while a
/// client's COMMIT waits in a backend's socket, and on the thaw the
/// server runs before its keeper — the worst order the scheduler can
/// pick. In asynchronous mode too, nothing is acknowledged: every commit
/// waits for the keeper's commit gate, which finds the lease over; the
/// keeper then fences. Without the gate the backends acknowledge at once.
#[tokio::test(flavor = "multi_thread")]
async fn host_frozen_past_its_lease_acknowledges_nothing_after_the_thaw() {
    let (net, mut d) = start(false, &[]).await;
    let (w, old, epoch) = writing(&d).await;
    let keeper = d.keeper_pid(&old).expect("the primary's keeper");
    let server = server_of(&d, &old);
    let dsn = format!(
        "host={} port={PG_PORT} user=postgres dbname=postgres",
        old.address
    );
    let (pending, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("connect to the primary");
    tokio::spawn(conn);
    pending
        .batch_execute("BEGIN; INSERT INTO acked (id, via) VALUES (-1, 'pending')")
        .await
        .expect("open a transaction");

    // Everything on the host stops at once.
    freeze_agent(&mut d, &old);
    pgquorum::process::signal_all(&[keeper], Signal::SIGSTOP);
    pgquorum::process::signal_all(&server, Signal::SIGSTOP);
    let t0 = Instant::now();
    let commit = tokio::spawn(async move { pending.batch_execute("COMMIT").await });
    let new = d.new_primary(&old, epoch).await;
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;

    // The server first: its backends serve what waits in their sockets.
    pgquorum::process::signal_all(&server, Signal::SIGCONT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pgquorum::process::signal_all(&[keeper], Signal::SIGCONT);
    thaw_agent(&mut d, &net, &old);
    let fenced = postgres_gone(&server, t0).await;
    eprintln!("old primary's PostgreSQL gone {fenced:?} after the freeze");
    let answer = tokio::time::timeout(LONG, commit)
        .await
        .expect("the COMMIT answered")
        .expect("the COMMIT task");
    assert!(
        answer.is_err(),
        "the old primary acknowledged a COMMIT after the thaw, while {} was primary",
        new.name
    );
    let so_far = w.acks.lock().expect("acks").clone();
    assert_no_overlap(&so_far, &old, &new);

    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.primary, new.name);
    assert_eq!(Deployment::node(&fin, &old.name).role, "replica");
    let acks = w.stop().await;
    assert_no_overlap(&acks, &old, &new);
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_frozen_under_a_live_agent_loses_its_lease_and_is_replaced() {
    primary_agent_fault(false, freeze_postgres, thaw_postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_frozen_under_a_live_agent_in_sync_mode_loses_nothing() {
    primary_agent_fault(true, freeze_postgres, thaw_postgres).await;
}

/// A primary saturated by pgbench (more clients than cores), with a long
/// query and checkpoints on top, answers slowly but answers: it keeps its
/// lease, nobody is promoted.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_primary_is_not_failed_over() {
    let (_net, d) = start(false, &[]).await;
    let before = d.status().await.expect("status");
    let primary = d.host_of_node(&before.primary);
    let pgbench = |args: &[&str]| {
        let mut cmd = std::process::Command::new(format!("{}/pgbench", common::sandbox::PG_BIN));
        cmd.args([
            "-h",
            &primary.address,
            "-p",
            &PG_PORT.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        cmd
    };
    let init = pgbench(&["-i", "-s", "10", "-q"])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut load = pgbench(&["-c", "16", "-j", "2", "-T", "25"])
        .spawn()
        .expect("pgbench");
    let dsn = format!(
        "host={} port={PG_PORT} user=postgres dbname=postgres connect_timeout=5",
        primary.address
    );
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let long = tokio::spawn(async move {
        let _ = c.simple_query("SELECT pg_sleep(20)").await;
        for _ in 0..5 {
            let _ = c.simple_query("CHECKPOINT").await;
        }
    });
    // Poll the whole time pgbench runs: the same primary, the same epoch.
    let mut looks = 0;
    while load.try_wait().expect("pgbench").is_none() {
        if let Some(s) = d.status().await {
            looks += 1;
            assert_eq!(
                (s.primary.as_str(), s.epoch),
                (before.primary.as_str(), before.epoch),
                "a busy primary was failed over"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = load.wait_with_output().expect("pgbench");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    long.await.expect("long query");
    assert!(looks >= 5, "status answered only {looks} times under load");
    let after = d.status().await.expect("status");
    assert_eq!((after.primary, after.epoch), (before.primary, before.epoch));
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_alone_the_old_primary_takes_no_write_after_the_promotion() {
    primary_agent_fault(false, kill_agent, restart_agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_alone_in_sync_mode_cancelled_commits_are_not_acknowledged() {
    primary_agent_fault(true, kill_agent, restart_agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_frozen_alone_past_the_lease_then_thawed_rejoins_as_replica() {
    primary_agent_fault(false, freeze_agent, thaw_agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_frozen_alone_in_sync_mode_then_thawed_rejoins_as_replica() {
    primary_agent_fault(true, freeze_agent, thaw_agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_agent_runtime_does_not_delay_the_fence() {
    use pgquorum::agent::stall::HOOK_ENV;
    let (_net, d) = start(false, &[(HOOK_ENV, "1")]).await;
    let (w, old, epoch) = writing(&d).await;
    // Every runtime worker of the primary's agent blocks for 8 s: it sends
    // no report and renews nothing, while its process and its connection
    // to the keeper stay open.
    let server = server_of(&d, &old);
    let t0 = Instant::now();
    std::fs::write(d.host_dir(&old).join("agent").join("stall"), "8000").expect("stall");
    let fenced = postgres_gone(&server, t0).await;
    let new = d.new_primary(&old, epoch).await;
    eprintln!("stalled agent: PostgreSQL fenced after {fenced:?}");
    assert!(
        fenced < Duration::from_secs(8),
        "PostgreSQL ran until the stall ended ({fenced:?}): the fence waited for the agent"
    );
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 10).then_some(())
    })
    .await;
    // Once the runtime runs again the node rejoins by itself.
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(Deployment::node(&fin, &old.name).role, "replica");
    let acks = w.stop().await;
    assert_no_overlap(&acks, &old, &new);
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_keeper_takes_postgres_down_at_once_and_the_cluster_heals() {
    let (_net, d) = start(false, &[]).await;
    let (w, old, _) = writing(&d).await;
    let keeper = d.keeper_pid(&old).expect("keeper");
    let data = d.host_dir(&old).join("data");
    let before: Vec<i32> = common::deploy::postgres_pids(&data);
    assert!(!before.is_empty());
    let t0 = Instant::now();
    pgquorum::process::signal_all(&[keeper], Signal::SIGKILL);
    // The postmaster got SIGQUIT from the kernel (parent-death signal):
    // every process of that server goes, without anybody's help.
    wait_for("the old server's processes to go", LONG, || async {
        (!before.iter().any(|p| pgquorum::process::alive(*p))).then_some(())
    })
    .await;
    eprintln!("keeper killed: PostgreSQL gone after {:?}", t0.elapsed());
    // The agent starts a new keeper; the cluster has one writable primary
    // again and every node streams.
    let fin = d.wait_all_streaming(3, LONG).await;
    let primary = d.host_of_node(&fin.primary);
    wait_for("writes after the keeper's death", LONG, || async {
        w.acks_by(&primary.address)
            .iter()
            .any(|a| a.sent > t0)
            .then_some(())
    })
    .await;
    let new_keeper = d.keeper_pid(&old).expect("a new keeper");
    assert_ne!(new_keeper, keeper);
    let acks = w.stop().await;
    if primary.name != old.name {
        assert_no_overlap(&acks, &old, &primary);
    }
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_on_a_healthy_cluster_keeps_postgres_and_the_epoch() {
    let (net, mut d) = start(false, &[]).await;
    let (w, old, epoch) = writing(&d).await;
    let data = d.host_dir(&old).join("data");
    let postmaster = |data: &std::path::Path| {
        std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
    };
    let pm = postmaster(&data).expect("postmaster.pid");
    let i = d.hosts.iter().position(|h| h.name == old.name).unwrap();
    let t0 = Instant::now();
    for round in 0..3 {
        // What `systemctl restart` does: SIGTERM, wait, start again.
        let status = d
            .agents
            .get_mut(&old.name)
            .expect("agent")
            .terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: the agent did not stop cleanly: {status:?}"
        );
        d.start_agent(&net, i);
        // The new agent took the lease over: it reports the primary healthy
        // under the same epoch.
        wait_for("the restarted agent's report", LONG, || async {
            let s = d.status().await?;
            let n = s.nodes.iter().find(|n| n.name == old.name)?;
            (n.healthy && n.role == "primary" && s.epoch == epoch).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.epoch, epoch, "a failover happened");
    assert_eq!(fin.primary, old.name);
    assert_eq!(
        postmaster(&data).as_deref(),
        Some(pm.as_str()),
        "PostgreSQL was restarted"
    );
    let errors: Vec<_> = w.errors().into_iter().filter(|(at, _)| *at > t0).collect();
    assert!(
        errors.is_empty(),
        "the writer saw errors during agent restarts: {errors:?}"
    );
    let acks = w.stop().await;
    assert!(acks.iter().any(|a| a.sent > t0 && a.server == old.address));
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_primary_runs_on_without_its_agent_and_resume_bounds_the_lease_first() {
    let (net, mut d) = start(false, &[]).await;
    let (w, old, epoch) = writing(&d).await;
    let out = d.cli(&["pause"]);
    assert!(out.status.success(), "pause: {}", common::stderr(&out));
    // The agent's next grants hold the lease open.
    wait_for("the lease held open", LONG, || async {
        let (code, body) = common::sandbox::http_get(
            &format!("{}:{}", old.address, common::deploy::HTTP_PORT),
            "/status",
        )
        .ok()?;
        (code == 200 && body.contains("\"lease_open\":true")).then_some(())
    })
    .await;
    // Maintenance: the primary's agent goes away; PostgreSQL keeps taking
    // writes for many lease lengths, and nobody is promoted.
    kill_agent(&mut d, &old);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        w.acks_by(&old.address)
            .iter()
            .any(|a| a.sent > t0 + Duration::from_secs(5)),
        "the paused primary stopped taking writes without its agent"
    );
    let s = d.status().await.expect("status");
    assert_eq!(s.epoch, epoch);

    // Resumed while its agent is still away: the lease stays open and
    // nobody is promoted, however long it takes.
    let out = d.cli(&["resume"]);
    assert!(out.status.success(), "resume: {}", common::stderr(&out));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = d.status().await.expect("status");
    assert!(s.lease_open && !s.paused, "{s:?}");
    assert_eq!(s.epoch, epoch, "promoted while the old primary may run");

    // The agent comes back: it takes the open lease over, the leader bounds
    // it, and the cluster goes on with the same primary.
    restart_agent(&mut d, &net, &old);
    wait_for("the lease bounded again", LONG, || async {
        let s = d.status().await?;
        (!s.lease_open).then_some(())
    })
    .await;
    let s = d.wait_all_streaming(3, LONG).await;
    assert_eq!(s.epoch, epoch);
    assert_eq!(s.primary, old.name);
    // From now on the lease is enforced again: the agent killed alone
    // means a fenced primary and a failover.
    kill_agent(&mut d, &old);
    let new = d.new_primary(&old, epoch).await;
    wait_for("writes on the new primary", LONG, || async {
        (w.acks_by(&new.address).len() >= 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acks = w.stop().await;
    assert_no_overlap(&acks, &old, &new);
    d.stop_and_check_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn watchdog_is_armed_while_primary_fed_within_the_lease_and_required_means_never_primary_without_it(
) {
    use pgquorum::keeper::watchdog::STANDIN_ENV;
    // Stand-in devices: plain files (the test switch skips the timeout
    // ioctls a file cannot answer). h3 has none: with "required" it must
    // never become primary.
    let devices = tempfile::tempdir().expect("tempdir");
    for h in ["h1", "h2"] {
        std::fs::write(devices.path().join(h), b"").expect("stand-in");
    }
    let top = format!(
        "watchdog = \"required\"\nwatchdog_device = \"{}/{{host}}\"",
        devices.path().display()
    );
    let net = Network::loopback(3);
    let d = Deployment::start_custom(&net, &[], &top, "", &[(STANDIN_ENV, "1")]).await;
    let device = |h: &str| std::fs::read(devices.path().join(h)).unwrap_or_default();
    let s = d.status().await.expect("status");
    assert_eq!(s.primary, "h1");
    assert!(Deployment::node(&s, "h3").nofailover, "{s:?}");
    assert!(!Deployment::node(&s, "h2").nofailover, "{s:?}");
    // The primary's watchdog is fed; the replica's was only probed.
    wait_for("the primary's watchdog fed", LONG, || async {
        (device("h1").iter().filter(|b| **b == b'1').count() > 20).then_some(())
    })
    .await;
    assert!(
        device("h2").iter().all(|b| *b == b'V'),
        "a replica's watchdog was armed: {:?}",
        String::from_utf8_lossy(&device("h2"))
    );
    // Nobody can switch over to the node without a watchdog.
    let out = d.cli(&["switchover", "--to", "h3", "--force"]);
    assert_ne!(out.status.code(), Some(0), "switched over to h3");

    // The primary's agent freezes: its keeper stops feeding when the lease
    // no longer covers the timeout, fences, and disarms (magic close).
    let old = d.host_of_node("h1");
    let w = d.writers().await;
    freeze_agent_of(&d, &old);
    let new = d.new_primary(&old, s.epoch).await;
    assert_eq!(new.name, "h2", "h3 has no watchdog");
    let fed = device("h1");
    assert_eq!(
        fed.last(),
        Some(&b'V'),
        "the old primary's watchdog is still armed"
    );
    wait_for("the new primary's watchdog fed", LONG, || async {
        (device("h2").iter().filter(|b| **b == b'1').count() > 20).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        device("h1"),
        fed,
        "the fenced primary's watchdog was fed again"
    );
    d.agents
        .get(&old.name)
        .expect("agent")
        .signal(Signal::SIGCONT);
    let fin = d.wait_all_streaming(3, LONG).await;
    assert_eq!(fin.primary, "h2");
    assert_eq!(device("h1"), fed, "a replica's watchdog was fed");
    let acks = w.stop().await;
    assert_no_overlap(&acks, &old, &new);
    d.stop_and_check_nothing_left();
}

fn freeze_agent_of(d: &Deployment, host: &Host) {
    d.agents
        .get(&host.name)
        .expect("agent")
        .signal(Signal::SIGSTOP);
}
