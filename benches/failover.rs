//! Failover benchmark: write outage and data loss for
//!  (a) a host crash of the primary (sandbox, `sandbox crash`),
//!  (b) a planned switchover (sandbox),
//!  (c) the primary's host cut off from every other host while clients still
//!      reach it (network namespaces; needs root), async and sync mode,
//!  (d) the primary's agent killed alone (SIGKILL; PostgreSQL left running),
//!  (e) the primary's agent frozen alone (SIGSTOP, then SIGCONT),
//!  (k) the primary's PostgreSQL frozen alone, its agent alive (SIGSTOP of
//!      every process of the server, then SIGCONT),
//!  (f) the primary's agent restarted on a healthy cluster (SIGTERM, start),
//!  (g) the leader manager stopped (SIGTERM), (h) killed (SIGKILL),
//!  (i) a rolling restart of every manager, (j) two of three managers lost
//!      for 10 s (failsafe) — each: longest write gap, primary fenced or not,
//!  (l) (a) and (b) with the writer going through HAProxy on the shipped
//!      `deploy/haproxy.cfg` instead of the multi-host connection string.
//!
//! A writer inserts a row every 20 ms through the multi-host connection
//! string. Figures only, no pass/fail. Run with `scripts/bench-failover`.
//! `BENCH_RUNS` (default 5) sets the runs per scenario; `BENCH_ONLY=d,e`
//! runs only the named scenarios; `BENCH_TRACE=1` shows what the writer met
//! during a switchover's longest gap and what the agents and managers logged
//! meanwhile (with `RUST_LOG=info,pgquorum::agent::executor=debug`, each
//! step of the agents' commands and its duration).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::deploy::{ids_on, lost, Ack, Deployment, Writers, PG_PORT};
use common::netns::{self, Network};
use common::{bin, wait_for};

const LONG: Duration = Duration::from_secs(120);
const EVERY: Duration = Duration::from_millis(20);

struct Sandbox {
    dir: tempfile::TempDir,
    managers: String,
    dsn: String,
}

impl Sandbox {
    fn up(sync: bool) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("pgq-bench-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let base = common::sandbox::free_base_port();
        let mut cmd = Command::new(bin());
        cmd.args([
            "sandbox",
            "up",
            "--json",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path().join("s"));
        if sync {
            cmd.arg("--sync");
        }
        let out = cmd.output().expect("sandbox up");
        assert!(
            out.status.success(),
            "sandbox up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sandbox json");
        let managers = file["managers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["address"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",");
        Sandbox {
            dsn: format!("{} connect_timeout=2", file["dsn"].as_str().unwrap()),
            managers,
            dir,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    fn run(&self, args: &[&str]) {
        // The CLI call blocks (a switchover waits until done): off the
        // runtime's worker, or the writers' tasks queued on it would stall
        // with it and show a write gap that no client would see.
        let out = tokio::task::block_in_place(|| {
            Command::new(bin())
                .args(["--managers", &self.managers])
                .args(args)
                .output()
        })
        .expect("pgquorum");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = tokio::task::block_in_place(|| {
            Command::new(bin())
                .args(["--managers", &self.managers, "status", "--json"])
                .output()
        })
        .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The sandbox's file (`sandbox.json`).
    fn file(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path().join("sandbox.json")).expect("sandbox.json");
        serde_json::from_str(&text).expect("sandbox.json")
    }

    /// A node's entry in `sandbox.json`.
    fn node(&self, name: &str) -> serde_json::Value {
        self.file()["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == name).cloned())
            .expect("node entry")
    }

    fn start_node(&self, name: &str) {
        self.run(&[
            "sandbox",
            "start",
            "--dir",
            self.path().to_str().unwrap(),
            name,
        ]);
    }

    /// (primary name, its port, every replica streaming)
    fn primary(&self) -> Option<(String, u16, bool)> {
        let s = self.status()?;
        let nodes = s["nodes"].as_array()?;
        let p = nodes
            .iter()
            .find(|n| n["role"] == "primary" && n["healthy"] == true)?;
        let all = nodes.iter().all(|n| n["healthy"] == true);
        Some((
            p["name"].as_str()?.to_string(),
            p["port"].as_u64()? as u16,
            all,
        ))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["sandbox", "down", "--dir"])
            .arg(self.path())
            .output();
    }
}

/// The longest pause between two consecutive times.
fn longest_gap(mut times: Vec<Instant>) -> Duration {
    times.sort();
    times
        .windows(2)
        .map(|p| p[1] - p[0])
        .max()
        .unwrap_or_default()
}

/// A libpq client beside the tokio-postgres one: `psql` inserting every
/// 20 ms through the multi-host string, each attempt a new connection (as a
/// pooler's reconnect would be); the times of its successes.
struct LibpqWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acks: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LibpqWriter {
    fn start(dsn: &str) -> LibpqWriter {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a, dsn) = (stop.clone(), acks.clone(), dsn.to_string());
        let thread = std::thread::spawn(move || {
            let _ = Command::new("psql")
                .args(["-X", "-q", "-d", &dsn, "-c"])
                .arg("CREATE TABLE IF NOT EXISTS libpq_acked (at timestamptz DEFAULT clock_timestamp())")
                .output();
            while !s.load(Ordering::SeqCst) {
                let ok = Command::new("psql")
                    .args(["-X", "-q", "-d", &dsn, "-c"])
                    .arg("INSERT INTO libpq_acked DEFAULT VALUES")
                    .env("PGCONNECT_TIMEOUT", "2")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|st| st.success());
                if ok {
                    a.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(EVERY);
            }
        });
        LibpqWriter {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    fn stop(mut self) -> Vec<Instant> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let acks = self.acks.lock().unwrap().clone();
        acks
    }
}

fn stats(label: &str, unit: &str, mut v: Vec<f64>) {
    if v.is_empty() {
        println!("  {label}: no data");
        return;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    println!(
        "  {label}: median {median:.2}{unit}  min {:.2}{unit}  max {:.2}{unit}  (n={})",
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

/// (a) and (b) with clients connecting through the multi-host connection
/// string; (l) the same through HAProxy on the shipped `deploy/haproxy.cfg`.
async fn crash_and_switchover(runs: usize, through_haproxy: bool) {
    let sb = Sandbox::up(false);
    let base = common::sandbox::free_base_port();
    let _haproxy = through_haproxy.then(|| {
        common::haproxy::HaProxy::start(
            &sb.path(),
            &common::haproxy::config_for_sandbox(&sb.file(), base),
        )
    });
    let dsn = if through_haproxy {
        format!("host=127.0.0.1 port={base} user=postgres dbname=postgres connect_timeout=1")
    } else {
        sb.dsn.clone()
    };
    // HAProxy sends nothing anywhere before its first checks passed.
    wait_for("a connection through HAProxy", LONG, || async {
        tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let via = if through_haproxy {
        "(l) through HAProxy (deploy/haproxy.cfg), "
    } else {
        ""
    };
    let (mut outage, mut rejoin, mut lost_crash) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gaps, mut rejoin_sw, mut lost_sw) = (Vec::new(), Vec::new(), Vec::new());
    let mut libpq_gaps = Vec::new();
    for run in 0..runs {
        // (a) crash of the primary's host.
        let (old, _, _) = wait_for("a healthy cluster", LONG, || async {
            sb.primary().filter(|p| p.2)
        })
        .await;
        let w = Writers::start(&dsn, &[], EVERY).await;
        wait_for("writes", LONG, || async { (w.count() > 20).then_some(()) }).await;
        let fault = Instant::now();
        sb.run(&[
            "sandbox",
            "crash",
            "--dir",
            sb.path().to_str().unwrap(),
            &old,
        ]);
        let (new, port, _) = wait_for("a new primary", LONG, || async {
            sb.primary().filter(|p| p.0 != old)
        })
        .await;
        wait_for("a write on the new primary", LONG, || async {
            w.acks
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.port == port)
                .then_some(())
        })
        .await;
        let first = w
            .acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.port == port)
            .map(|a| a.acked)
            .min()
            .unwrap();
        outage.push((first - fault).as_secs_f64());
        let started = Instant::now();
        sb.run(&[
            "sandbox",
            "start",
            "--dir",
            sb.path().to_str().unwrap(),
            &old,
        ]);
        wait_for("the old primary streaming", LONG, || async {
            sb.primary().filter(|p| p.2).map(|_| ())
        })
        .await;
        rejoin.push(started.elapsed().as_secs_f64());
        let acks = w.stop().await;
        lost_crash.push(lost(&acks, &ids_on("127.0.0.1", port).await).len() as f64);
        eprintln!(
            "crash run {run}: {old} -> {new}, outage {:.2}s",
            outage[run]
        );

        // (b) switchover to a replica.
        let w = Writers::start(&dsn, &[], EVERY).await;
        wait_for("writes", LONG, || async { (w.count() > 20).then_some(()) }).await;
        let status = sb.status().unwrap();
        let target = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["role"] == "replica")
            .and_then(|n| n["name"].as_str())
            .unwrap()
            .to_string();
        let before = sb.primary().unwrap().0;
        // psql's own reconnection, through the multi-host string only.
        let libpq_writer = (!through_haproxy).then(|| LibpqWriter::start(&sb.dsn));
        wait_for("libpq writes", LONG, || async {
            libpq_writer
                .as_ref()
                .is_none_or(|l| l.count() > 10)
                .then_some(())
        })
        .await;
        let asked = Instant::now();
        let asked_wall = std::time::SystemTime::now();
        sb.run(&["switchover", "--to", &target, "--force"]);
        let (_, port, _) = wait_for("the switchover", LONG, || async {
            sb.primary().filter(|p| p.0 == target)
        })
        .await;
        wait_for("writes on the new primary", LONG, || async {
            w.acks
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.sent > asked)
                .count()
                .gt(&10)
                .then_some(())
        })
        .await;
        wait_for("the old primary streaming", LONG, || async {
            sb.primary().filter(|p| p.2).map(|_| ())
        })
        .await;
        rejoin_sw.push(asked.elapsed().as_secs_f64());
        let errors = w.errors();
        let acks = w.stop().await;
        let libpq = libpq_writer.map(|l| l.stop());
        let mut times: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
        times.sort();
        let worst = times.windows(2).max_by_key(|p| p[1] - p[0]);
        let gap = worst.map(|p| p[1] - p[0]).unwrap_or_default();
        if let (Some(p), true) = (worst, std::env::var_os("BENCH_TRACE").is_some()) {
            trace_gap(&sb.path(), (asked, asked_wall), p[0], p[1], &errors);
        }
        gaps.push(gap.as_secs_f64());
        let libpq_gap = libpq.map(longest_gap);
        if let Some(g) = libpq_gap {
            libpq_gaps.push(g.as_secs_f64());
        }
        lost_sw.push(lost(&acks, &ids_on("127.0.0.1", port).await).len() as f64);
        eprintln!("switchover run {run}: {before} -> {target}, longest gap {gap:?} (tokio-postgres), {libpq_gap:?} (libpq)");
    }
    println!("{via}(a) primary host crash, {runs} runs (sandbox, async):");
    stats(
        "write outage (fault → first acknowledged write on the new primary)",
        "s",
        outage,
    );
    stats(
        "old primary streaming again (after its restart)",
        "s",
        rejoin,
    );
    stats("acknowledged rows lost", "", lost_crash);
    println!("{via}(b) switchover, {runs} runs (sandbox):");
    stats(
        "longest gap between two acknowledged writes (tokio-postgres)",
        "s",
        gaps,
    );
    if !through_haproxy {
        stats(
            "longest gap between two acknowledged writes (libpq, psql)",
            "s",
            libpq_gaps,
        );
    }
    stats(
        "old primary streaming again (from the request)",
        "s",
        rejoin_sw,
    );
    stats("acknowledged rows lost", "", lost_sw);
}

async fn isolation(runs: usize, sync: bool) {
    let mode = if sync { "sync" } else { "async" };
    let (mut after_cut, mut lost_rows, mut first_new, mut overlaps, mut rejoin) =
        (Vec::new(), Vec::new(), Vec::new(), 0, Vec::new());
    for run in 0..runs {
        let net = Network::create(3).expect("network namespaces");
        let config: &[(&str, &str)] = if sync { &[("sync_mode", "on")] } else { &[] };
        let d = Deployment::start(&net, config).await;
        if sync {
            wait_for("a sync standby", LONG, || async {
                d.status()
                    .await
                    .filter(|s| s.nodes.iter().any(|n| n.sync))
                    .map(|_| ())
            })
            .await;
        }
        let before = d.status().await.unwrap();
        let old = d.host_of_node(&before.primary);
        let direct: Vec<(String, u16)> = d
            .hosts
            .iter()
            .map(|h| (h.address.clone(), PG_PORT))
            .collect();
        let w = Writers::start(&d.dsn(), &direct, EVERY).await;
        wait_for("writes", LONG, || async {
            (w.acks_by(&old.address).len() > 20).then_some(())
        })
        .await;
        let cut = Instant::now();
        net.isolate(&old);
        let s = wait_for("a new primary", LONG, || async {
            let s = d.status().await?;
            (s.epoch > before.epoch
                && s.nodes
                    .iter()
                    .any(|n| n.role == "primary" && n.healthy && n.name != old.name))
            .then_some(s)
        })
        .await;
        let new = d.host_of_node(&s.primary);
        wait_for("writes on the new primary", LONG, || async {
            (w.acks_by(&new.address).len() > 10).then_some(())
        })
        .await;
        let heal = Instant::now();
        net.rejoin(&old);
        d.wait_all_streaming(3, LONG).await;
        rejoin.push(heal.elapsed().as_secs_f64());
        let acks = w.stop().await;
        let old_acks: Vec<&Ack> = acks
            .iter()
            .filter(|a| a.server == old.address && a.sent > cut)
            .collect();
        after_cut.push(old_acks.len() as f64);
        let new_first = acks
            .iter()
            .filter(|a| a.server == new.address)
            .map(|a| a.acked)
            .min()
            .unwrap();
        first_new.push((new_first - cut).as_secs_f64());
        let new_first_sent = acks
            .iter()
            .filter(|a| a.server == new.address)
            .map(|a| a.sent)
            .min()
            .unwrap();
        if old_acks.iter().any(|a| a.acked >= new_first_sent) {
            overlaps += 1;
        }
        lost_rows.push(lost(&acks, &ids_on(&new.address, PG_PORT).await).len() as f64);
        eprintln!(
            "isolation ({mode}) run {run}: old acknowledged {} after the cut",
            old_acks.len()
        );
        drop(d);
        drop(net);
    }
    println!("(c) primary host isolated, clients still reach it, {mode} mode, {runs} runs:");
    stats(
        "writes the old primary acknowledged after the cut",
        "",
        after_cut,
    );
    stats("acknowledged rows lost after healing", "", lost_rows);
    stats(
        "cut → first write acknowledged by the new primary",
        "s",
        first_new,
    );
    println!("  runs where both primaries acknowledged writes at once: {overlaps}");
    stats("heal → old primary streaming again", "s", rejoin);
}

/// Poll (every 5 ms, in a thread) until no PostgreSQL process of
/// `data_dir` runs; when that was seen.
fn watch_gone(data_dir: PathBuf) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || loop {
        if pgquorum::process::postgres_processes(&data_dir).is_empty() {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    })
}

/// What `node_fault` does to the primary's host.
#[derive(Clone, Copy, PartialEq)]
enum NodeFault {
    AgentKilled,
    AgentFrozen,
    PostgresFrozen,
}

/// (d), (e) and (k): the primary's agent alone is killed or frozen, or its
/// PostgreSQL alone is frozen.
async fn node_fault(runs: usize, fault_kind: NodeFault) {
    let label = match fault_kind {
        NodeFault::AgentKilled => "(d) agent killed alone",
        NodeFault::AgentFrozen => "(e) agent frozen alone",
        NodeFault::PostgresFrozen => "(k) PostgreSQL frozen alone, agent alive",
    };
    let sb = Sandbox::up(false);
    let (mut refused, mut first_new, mut late_acks, mut rejoin) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (old, old_port, _) = wait_for("a healthy cluster", LONG, || async {
            sb.primary().filter(|p| p.2)
        })
        .await;
        let entry = sb.node(&old);
        let agent = entry["agent_pid"].as_i64().expect("agent_pid") as i32;
        let data = PathBuf::from(entry["data_dir"].as_str().expect("data_dir"));
        let direct = vec![("127.0.0.1".to_string(), old_port)];
        let w = Writers::start(&sb.dsn, &direct, EVERY).await;
        wait_for("writes", LONG, || async { (w.count() > 20).then_some(()) }).await;
        let server = pgquorum::process::postgres_processes(&data);
        let gone = watch_gone(data);
        let fault = Instant::now();
        let (victims, signal) = match fault_kind {
            NodeFault::AgentKilled => (vec![agent], nix::sys::signal::Signal::SIGKILL),
            NodeFault::AgentFrozen => (vec![agent], nix::sys::signal::Signal::SIGSTOP),
            NodeFault::PostgresFrozen => (server, nix::sys::signal::Signal::SIGSTOP),
        };
        pgquorum::process::signal_all(&victims, signal);
        let (new, port, _) = wait_for("a new primary", LONG, || async {
            sb.primary().filter(|p| p.0 != old)
        })
        .await;
        wait_for("a write on the new primary", LONG, || async {
            w.acks
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.port == port)
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = gone.join().expect("watcher");
        let healed = Instant::now();
        match fault_kind {
            NodeFault::AgentKilled => sb.start_node(&old),
            // The server's processes were killed by the fence: nothing
            // left to wake there, but no harm either.
            _ => pgquorum::process::signal_all(&victims, nix::sys::signal::Signal::SIGCONT),
        }
        wait_for("the old primary streaming", LONG, || async {
            sb.primary().filter(|p| p.2).map(|_| ())
        })
        .await;
        rejoin.push(healed.elapsed().as_secs_f64());
        let acks = w.stop().await;
        let new_first_sent = acks
            .iter()
            .filter(|a| a.port == port)
            .map(|a| a.sent)
            .min()
            .unwrap();
        let new_first = acks
            .iter()
            .filter(|a| a.port == port)
            .map(|a| a.acked)
            .min()
            .unwrap();
        let late = acks
            .iter()
            .filter(|a| a.port == old_port && a.acked >= new_first_sent)
            .count();
        refused.push((stopped - fault).as_secs_f64());
        first_new.push((new_first - fault).as_secs_f64());
        late_acks.push(late as f64);
        eprintln!(
            "{label} run {run}: {old} -> {new}, old fenced after {:.2}s, new primary's first write after {:.2}s, {late} writes on the old primary after the promotion",
            refused[run], first_new[run]
        );
    }
    println!("{label}, {runs} runs (sandbox, async):");
    stats(
        "fault → old primary refuses writes (PostgreSQL gone)",
        "s",
        refused,
    );
    stats(
        "fault → first write acknowledged by the new primary",
        "s",
        first_new,
    );
    stats(
        "writes acknowledged by the old primary after the promotion",
        "",
        late_acks,
    );
    stats("heal → old primary streaming again", "s", rejoin);
}

/// (f) the primary's agent restarted on a healthy cluster.
async fn agent_restart(runs: usize) {
    let sb = Sandbox::up(false);
    let (mut gaps, mut failovers, mut errors) = (Vec::new(), 0, Vec::new());
    for run in 0..runs {
        let (old, _, _) = wait_for("a healthy cluster", LONG, || async {
            sb.primary().filter(|p| p.2)
        })
        .await;
        let epoch = sb.status().unwrap()["epoch"].as_u64().unwrap();
        let agent = sb.node(&old)["agent_pid"].as_i64().expect("agent_pid") as i32;
        let w = Writers::start(&sb.dsn, &[], EVERY).await;
        wait_for("writes", LONG, || async { (w.count() > 20).then_some(()) }).await;
        let t0 = Instant::now();
        pgquorum::process::signal_all(&[agent], nix::sys::signal::Signal::SIGTERM);
        assert!(
            pgquorum::process::wait_gone(&[agent], Duration::from_secs(30)),
            "the agent did not stop"
        );
        sb.start_node(&old);
        wait_for("the restarted agent's report", LONG, || async {
            let s = sb.status()?;
            let n = s["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["name"] == old.as_str())?
                .clone();
            (n["healthy"] == true && n["role"] == "primary" && s["epoch"] == epoch).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let errs = w.errors().iter().filter(|(at, _)| *at > t0).count();
        let acks = w.stop().await;
        let mut times: Vec<Instant> = acks
            .iter()
            .filter(|a| a.sent > t0)
            .map(|a| a.acked)
            .collect();
        times.sort();
        let gap = times
            .windows(2)
            .map(|p| p[1] - p[0])
            .max()
            .unwrap_or_default();
        let epoch_after = sb.status().unwrap()["epoch"].as_u64().unwrap();
        if epoch_after != epoch {
            failovers += 1;
        }
        gaps.push(gap.as_secs_f64());
        errors.push(errs as f64);
        eprintln!("(f) agent restart run {run}: longest gap {gap:?}, {errs} failed writes, epoch {epoch} -> {epoch_after}");
    }
    println!("(f) agent restarted on a healthy cluster, {runs} runs (sandbox):");
    stats("longest gap between two acknowledged writes", "s", gaps);
    stats("failed writes through the multi-host string", "", errors);
    println!("  runs with a failover: {failovers}");
}

/// The agent `/status` of a sandbox node.
fn agent_status(sb: &Sandbox, node: &str) -> Option<serde_json::Value> {
    let http = sb.node(node)["http"].as_str()?.to_string();
    let (_, body) = common::sandbox::http_get(&http, "/status").ok()?;
    serde_json::from_str(&body).ok()
}

/// The leader manager's id and pid.
fn leader(sb: &Sandbox) -> Option<(u64, i32)> {
    let s = sb.status()?;
    let id = s["managers"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "leader")?["id"]
        .as_u64()?;
    let pid = sb.file()["managers"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)?["pid"]
        .as_i64()? as i32;
    Some((id, pid))
}

/// (g)–(j): manager faults while the primary takes writes.
async fn manager_faults(runs: usize) {
    use nix::sys::signal::Signal;
    let sb = Sandbox::up(false);
    let scenarios = [
        "(g) leader manager SIGTERM",
        "(h) leader manager SIGKILL",
        "(i) rolling restart of all managers",
        "(j) two managers lost for 10 s",
    ];
    for label in scenarios {
        let (mut gaps, mut fenced, mut exits) = (Vec::new(), 0, Vec::new());
        for run in 0..runs {
            let (primary, _, _) = wait_for("a healthy cluster", LONG, || async {
                sb.primary().filter(|p| p.2)
            })
            .await;
            let fences = |sb: &Sandbox| {
                agent_status(sb, &primary).and_then(|s| s["keeper"]["fences"].as_u64())
            };
            let before = fences(&sb);
            let epoch = sb.status().unwrap()["epoch"].as_u64().unwrap();
            let w = Writers::start(&sb.dsn, &[], EVERY).await;
            wait_for("writes", LONG, || async { (w.count() > 20).then_some(()) }).await;
            let t0 = Instant::now();
            let dir = sb.path().to_str().unwrap().to_string();
            let restart = |id: u64| sb.run(&["sandbox", "start", "--dir", &dir, &format!("m{id}")]);
            let stop = |pid: i32| {
                let t = Instant::now();
                pgquorum::process::signal_all(&[pid], Signal::SIGTERM);
                let gone = tokio::task::block_in_place(|| {
                    pgquorum::process::wait_gone(&[pid], Duration::from_secs(30))
                });
                assert!(gone, "manager did not stop");
                t.elapsed()
            };
            match label.as_bytes()[1] {
                b'g' => {
                    let (id, pid) = leader(&sb).expect("leader");
                    exits.push(stop(pid).as_secs_f64());
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    restart(id);
                }
                b'h' => {
                    let (id, pid) = leader(&sb).expect("leader");
                    pgquorum::process::signal_all(&[pid], Signal::SIGKILL);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    restart(id);
                }
                b'i' => {
                    let (leader_id, _) = leader(&sb).expect("leader");
                    let mut order: Vec<u64> = (1..=3).filter(|i| *i != leader_id).collect();
                    order.push(leader_id);
                    for id in order {
                        let pid = sb.file()["managers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|m| m["id"] == id)
                            .unwrap()["pid"]
                            .as_i64()
                            .unwrap() as i32;
                        exits.push(stop(pid).as_secs_f64());
                        restart(id);
                        wait_for("the manager back", LONG, || async {
                            let s = sb.status()?;
                            let m = s["managers"].as_array()?;
                            (m.iter().filter(|m| m["role"] == "leader").count() == 1
                                && m.iter()
                                    .all(|m| m["role"] == "leader" || m["role"] == "follower"))
                            .then_some(())
                        })
                        .await;
                    }
                }
                _ => {
                    let (leader_id, _) = leader(&sb).expect("leader");
                    let lost: Vec<u64> = (1..=3).filter(|i| *i != leader_id).collect();
                    for id in &lost {
                        sb.run(&["sandbox", "crash", "--dir", &dir, &format!("m{id}")]);
                    }
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    for id in &lost {
                        restart(*id);
                    }
                }
            }
            wait_for("a healthy cluster again", LONG, || async {
                sb.primary().filter(|p| p.2)
            })
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let acks = w.stop().await;
            let gap = longest_gap(
                acks.iter()
                    .filter(|a| a.sent > t0)
                    .map(|a| a.acked)
                    .collect(),
            );
            let now_epoch = sb.status().unwrap()["epoch"].as_u64().unwrap();
            let was_fenced = fences(&sb) != before || now_epoch != epoch;
            if was_fenced {
                fenced += 1;
            }
            gaps.push(gap.as_secs_f64());
            eprintln!("{label} run {run}: longest gap {gap:?}, fenced {was_fenced}");
        }
        println!("{label}, {runs} runs (sandbox):");
        stats("longest gap between two acknowledged writes", "s", gaps);
        if !exits.is_empty() {
            stats("SIGTERM → manager exited", "s", exits);
        }
        println!("  runs where the primary was fenced or replaced: {fenced}");
    }
}

/// `BENCH_TRACE=1`: what the writer met in its longest gap, and what the
/// agents and managers logged from the request to the gap's end, in ms from
/// the switchover request — where the time goes.
fn trace_gap(
    sandbox: &std::path::Path,
    (asked, asked_wall): (Instant, std::time::SystemTime),
    from: Instant,
    to: Instant,
    errors: &[(Instant, String)],
) {
    let ms = |t: Instant| t.saturating_duration_since(asked).as_millis();
    eprintln!(
        "  gap from {} ms to {} ms after the request",
        ms(from),
        ms(to)
    );
    let mut lines: Vec<(u128, String)> = errors
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .map(|(at, why)| (ms(*at), format!("writer: {why}")))
        .collect();
    let end = ms(to);
    let logs = std::fs::read_dir(sandbox.join("logs"))
        .into_iter()
        .flatten();
    for file in logs.flatten() {
        let name = file.file_name().to_string_lossy().replace(".log", "");
        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
        for line in text.lines() {
            let Some((stamp, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(at) = humantime::parse_rfc3339(stamp) else {
                continue;
            };
            let Ok(after) = at.duration_since(asked_wall) else {
                continue;
            };
            if after.as_millis() <= end {
                let rest: String = rest.trim_start().chars().take(150).collect();
                lines.push((after.as_millis(), format!("{name}: {rest}")));
            }
        }
    }
    lines.sort();
    for (at, line) in lines {
        eprintln!("  {at:>6} ms  {line}");
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    if wanted("a") || wanted("b") {
        crash_and_switchover(runs, false).await;
    }
    if wanted("l") {
        crash_and_switchover(runs, true).await;
    }
    if wanted("d") {
        node_fault(runs, NodeFault::AgentKilled).await;
    }
    if wanted("e") {
        node_fault(runs, NodeFault::AgentFrozen).await;
    }
    if wanted("k") {
        node_fault(runs, NodeFault::PostgresFrozen).await;
    }
    if wanted("f") {
        agent_restart(runs).await;
    }
    if wanted("g") {
        manager_faults(runs).await;
    }
    if !wanted("c") {
        return;
    }
    if netns::available() {
        isolation(runs.min(3), false).await;
        isolation(runs.min(3), true).await;
    } else {
        println!("(c) skipped: network namespaces need root");
    }
}
