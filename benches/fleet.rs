//! Fleet benchmark: three release managers serving many clusters of
//! synthetic agents (`tests/common/synthetic.rs`: real agent sessions, a
//! PostgreSQL made of a few numbers), in one process, no PostgreSQL.
//!
//! For each shape (clusters × nodes): the leader's and a follower's CPU
//! (% of one core) and RSS over a steady-state window; lease grants per
//! second and the delay from a report to the grant that answers it
//! (p50/p99); the time from one cluster's primary going silent to the new
//! primary's promote command while every other cluster keeps heartbeating,
//! and the same for ten clusters at once; `status` latency for one cluster
//! and for all (the CLI, process start included); the managers' data
//! directories (Raft log and sled) after the run; the time from the
//! leader's restart until every cluster's primary holds a fresh lease.
//!
//! Figures only, no pass/fail. Run with `scripts/bench-fleet`.
//! `FLEET_SHAPES` (default `100x3`; e.g. `100x3,100x10,333x3`),
//! `FLEET_STEADY` (seconds of steady state measured, default 30),
//! `FLEET_CHURN` (pause/resume commits after the failovers, to show the
//! Raft log kept bounded by snapshots; default 0),
//! `FLEET_LOGS=DIR` (keep the managers' logs of each shape there).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::synthetic::Fleet;
use common::{bin, wait_for, Managers};
use pgquorum::proto::api::{ClusterRequest, GetStatusRequest, ListClustersRequest};

/// Concurrent clients of the churn phase.
const CHURN_CLIENTS: usize = 8;
/// The churn phase's storage is sampled after each of these rounds.
const CHURN_ROUNDS: usize = 4;

/// CPU time of a process so far, in seconds (utime + stime).
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Resident set size in MB.
fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Wall time of `pgquorum --json ARGS…` (median of five), in ms.
fn cli_ms(managers: &str, args: &[&str]) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let out = tokio::task::block_in_place(|| {
                Command::new(bin())
                    .args(["--managers", managers, "--json"])
                    .args(args)
                    .output()
            })
            .expect("pgquorum");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

/// The fleet summary shows every cluster with a primary and all its nodes
/// healthy.
fn settled(managers: &str, clusters: usize, nodes: usize) -> bool {
    let out = tokio::task::block_in_place(|| {
        Command::new(bin())
            .args(["--managers", managers, "--json", "status"])
            .output()
    });
    let Ok(out) = out else { return false };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    // One cluster: `status` shows that cluster itself.
    if clusters == 1 {
        return v["primary"].is_string()
            && v["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == nodes && n.iter().all(|n| n["healthy"] == true));
    }
    v["clusters"].as_array().is_some_and(|list| {
        list.len() == clusters
            && list
                .iter()
                .all(|c| c["primary"].is_string() && c["healthy"] == nodes as u64)
    })
}

/// Silence the primaries of `clusters` at once; each one's time from
/// silence to its new primary's promote command, in ms (sorted).
async fn failover(fleet: &mut Fleet, clusters: &[String]) -> Vec<f64> {
    let victims: Vec<(String, String)> = clusters
        .iter()
        .map(|c| {
            let (node, _) = fleet.leased_primary(c).expect("a leased primary");
            (c.clone(), node)
        })
        .collect();
    let t0 = Instant::now();
    for (cluster, node) in &victims {
        fleet.silence(cluster, node);
    }
    let mut times = wait_for(
        "promote commands in every silenced cluster",
        Duration::from_secs(60),
        || async {
            victims
                .iter()
                .map(|(c, _)| {
                    fleet
                        .stats
                        .first_after(c, "promote", t0)
                        .map(|r| r.at.duration_since(t0).as_secs_f64() * 1000.0)
                })
                .collect::<Option<Vec<f64>>>()
        },
    )
    .await;
    times.sort_by(f64::total_cmp);
    times
}

/// One shape's figures, as (label, value) rows.
async fn shape(
    clusters: usize,
    nodes: usize,
    steady: Duration,
    churn: usize,
) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    let mut m = Managers::start(3);
    let addresses = m.addresses();
    let leader = m.leader(&[1, 2, 3]).await;
    let managers: Vec<String> = (1..=3).map(|id| m.address(id)).collect();
    let names: Vec<String> = (1..=clusters).map(|i| format!("c{i:03}")).collect();
    let start = Instant::now();
    let mut fleet = Fleet::start(&managers, &names, nodes);
    wait_for(
        "every cluster bootstrapped and healthy",
        Duration::from_secs(600),
        || async {
            let leased = fleet.leased_primaries().len();
            let refused = fleet.stats.refused.lock().unwrap().clone();
            assert!(
                refused.is_empty(),
                "{} registrations refused, first: {}",
                refused.len(),
                refused[0]
            );
            if start.elapsed().as_secs() % 10 == 0 {
                eprintln!(
                    "  {:.0}s: {leased} of {clusters} primaries leased",
                    start.elapsed().as_secs_f64()
                );
            }
            (leased == clusters && settled(&addresses, clusters, nodes)).then_some(())
        },
    )
    .await;
    row(
        "start → all healthy (s)",
        format!("{:.1}", start.elapsed().as_secs_f64()),
    );
    let leader = {
        let now = m.leader(&[1, 2, 3]).await;
        if now != leader {
            row("leader changed during start", format!("{leader} → {now}"));
        }
        now
    };
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let lpid = m.procs[&leader].pid().expect("leader runs");
    let fpid = m.procs[&follower].pid().expect("follower runs");
    let me = std::process::id() as i32;

    // Steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.stats.reset_delays();
    let grants0 = fleet
        .stats
        .grants
        .load(std::sync::atomic::Ordering::Relaxed);
    let reports0 = fleet
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed);
    let leases0 = fleet
        .stats
        .lease_messages
        .load(std::sync::atomic::Ordering::Relaxed);
    let (l0, f0, b0) = (cpu_seconds(lpid), cpu_seconds(fpid), cpu_seconds(me));
    let t0 = Instant::now();
    let mut rss = (0.0f64, 0.0f64);
    // A long steady run also shows the managers' storage staying bounded
    // (log purged behind snapshots): sampled six times along the way.
    let sample_every = (steady >= Duration::from_secs(240)).then(|| steady / 6);
    let mut samples = vec![storage_sample(&m, leader, Duration::ZERO).await];
    while t0.elapsed() < steady {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = (rss.0.max(rss_mb(lpid)), rss.1.max(rss_mb(fpid)));
        if let Some(every) = sample_every {
            if t0.elapsed() >= every * samples.len() as u32 {
                samples.push(storage_sample(&m, leader, t0.elapsed()).await);
                eprintln!("  storage: {}", samples[samples.len() - 1]);
            }
        }
    }
    if sample_every.is_some() {
        row(
            "storage in steady state (time: Raft index, MB per manager)",
            samples.join(" · "),
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let pct = |a: f64, b: f64| format!("{:.1}", (b - a) / secs * 100.0);
    row("leader CPU (% of a core)", pct(l0, cpu_seconds(lpid)));
    row("follower CPU (% of a core)", pct(f0, cpu_seconds(fpid)));
    row("agents' process CPU (%)", pct(b0, cpu_seconds(me)));
    row("leader RSS max (MB)", format!("{:.1}", rss.0));
    row("follower RSS max (MB)", format!("{:.1}", rss.1));
    let grants = fleet
        .stats
        .grants
        .load(std::sync::atomic::Ordering::Relaxed)
        - grants0;
    let reports = fleet
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed)
        - reports0;
    row("reports/s", format!("{:.0}", reports as f64 / secs));
    let leases = fleet
        .stats
        .lease_messages
        .load(std::sync::atomic::Ordering::Relaxed)
        - leases0;
    row("reports granted/s", format!("{:.0}", grants as f64 / secs));
    row("lease messages/s", format!("{:.0}", leases as f64 / secs));
    let mut delays: Vec<f64> = fleet
        .stats
        .grant_delays_us
        .lock()
        .unwrap()
        .iter()
        .map(|us| f64::from(*us) / 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    row(
        "report → grant p50 / p99 / max (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays.last().copied().unwrap_or(f64::NAN)
        ),
    );

    // Status.
    row(
        "status --cluster (ms, CLI)",
        format!(
            "{:.0}",
            cli_ms(&addresses, &["status", "--cluster", &names[0]])
        ),
    );
    row(
        "status, all clusters (ms, CLI)",
        format!("{:.0}", cli_ms(&addresses, &["status"])),
    );

    {
        let mut api = m.client(leader).await;
        let mut one = Vec::new();
        let mut all = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            api.get_status(GetStatusRequest {
                cluster: names[0].clone(),
                local: false,
            })
            .await
            .expect("status");
            one.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            api.list_clusters(ListClustersRequest { local: false })
                .await
                .expect("list clusters");
            all.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        one.sort_by(f64::total_cmp);
        all.sort_by(f64::total_cmp);
        row(
            "GetStatus 1 cluster p50/max (ms, gRPC)",
            format!("{:.1} / {:.1}", percentile(&one, 0.5), one[one.len() - 1]),
        );
        row(
            "ListClusters all p50/max (ms, gRPC)",
            format!("{:.1} / {:.1}", percentile(&all, 0.5), all[all.len() - 1]),
        );
    }

    // One failover at a time, three times, while the rest heartbeats.
    let mut single = Vec::new();
    for c in names.iter().take(3) {
        single.extend(failover(&mut fleet, std::slice::from_ref(c)).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    row(
        "silence → promote, 1 cluster (ms, each)",
        single
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    if clusters >= 13 {
        let ten: Vec<String> = names[3..13].to_vec();
        let times = failover(&mut fleet, &ten).await;
        row(
            "silence → promote, 10 at once (ms, min/p50/max)",
            format!(
                "{:.0} / {:.0} / {:.0}",
                times[0],
                percentile(&times, 0.5),
                times[times.len() - 1]
            ),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // Storage after the run.
    row(
        "Raft log index (entries)",
        applied_index(&m, leader).await.to_string(),
    );
    row("data dir per manager (MB)", data_dirs_mb(&m));

    // Churn: a steady fleet commits nothing (reports and leases are soft
    // state), so what keeps the log bounded — snapshots, and the log
    // purged behind them — shows only under commits: pause and resume
    // pairs, round the clusters, from a few clients at once.
    if churn > 0 {
        let t = Instant::now();
        let per_client = churn.div_ceil(2 * CHURN_CLIENTS * CHURN_ROUNDS);
        let mut after = Vec::new();
        for round in 0..CHURN_ROUNDS {
            let clients = (0..CHURN_CLIENTS).map(|c| {
                let names = &names;
                let m = &m;
                async move {
                    let mut api = m.client(leader).await;
                    for i in 0..per_client {
                        let at = c + (round * per_client + i) * CHURN_CLIENTS;
                        let request = || ClusterRequest {
                            cluster: names[at % names.len()].clone(),
                            local: false,
                        };
                        api.pause(request()).await.expect("pause");
                        api.resume(request()).await.expect("resume");
                    }
                }
            });
            futures::future::join_all(clients).await;
            after.push(format!(
                "{}: {}, {}",
                (round + 1) * per_client * 2 * CHURN_CLIENTS,
                applied_index(&m, leader).await,
                data_dirs_mb(&m)
            ));
        }
        let commits = per_client * 2 * CHURN_CLIENTS * CHURN_ROUNDS;
        row(
            "churn: pause/resume commits, rate (/s)",
            format!(
                "{commits}, {:.0}",
                commits as f64 / t.elapsed().as_secs_f64()
            ),
        );
        row(
            "after N commits: Raft index, MB per manager",
            after.join(" · "),
        );
    }

    // The leader restarts: until every cluster's primary holds a fresh lease.
    let t0 = Instant::now();
    if let Some(p) = m.procs.get_mut(&leader) {
        p.terminate(Duration::from_secs(10));
    }
    m.spawn(leader);
    let regranted = wait_for(
        "every primary granted again",
        Duration::from_secs(120),
        || async { fleet.all_granted_since(t0).then(|| t0.elapsed()) },
    )
    .await;
    row(
        "leader restart → all leases granted (s)",
        format!("{:.2}", regranted.as_secs_f64()),
    );
    let lost = clusters - fleet.leased_primaries().len();
    row("clusters without a leased primary then", lost.to_string());

    fleet.stop();
    if let Some(dir) = std::env::var_os("FLEET_LOGS") {
        // For a post-mortem: the managers' logs of this shape.
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for id in 1..=3 {
            let _ = std::fs::copy(
                m.log(id),
                dir.join(format!("{clusters}x{nodes}-manager-{id}.log")),
            );
        }
    }
    drop(m);
    rows
}

/// The leader's last applied Raft index.
async fn applied_index(m: &Managers, leader: u64) -> u64 {
    m.view(leader)
        .await
        .and_then(|v| v.iter().find(|i| i.id == leader).map(|i| i.last_applied))
        .unwrap_or(0)
}

/// Every manager's data directory (Raft log, snapshots and sled), in MB.
fn data_dirs_mb(m: &Managers) -> String {
    (1..=3)
        .map(|id| format!("{:.1}", du(&m.data_dir(id)) as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One point of the storage series: `at` into the steady state.
async fn storage_sample(m: &Managers, leader: u64, at: Duration) -> String {
    format!(
        "{:.0} min: {}, {}",
        at.as_secs_f64() / 60.0,
        applied_index(m, leader).await,
        data_dirs_mb(m)
    )
}

#[tokio::main]
async fn main() {
    let shapes = std::env::var("FLEET_SHAPES").unwrap_or_else(|_| "100x3".into());
    let steady = Duration::from_secs(
        std::env::var("FLEET_STEADY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let churn: usize = std::env::var("FLEET_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut table: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for s in shapes.split(',').filter(|s| !s.is_empty()) {
        let (c, n) = s.split_once('x').expect("shape CLUSTERSxNODES");
        let (c, n): (usize, usize) = (c.parse().expect("clusters"), n.parse().expect("nodes"));
        eprintln!("fleet {c} × {n}: running ({steady:?} steady state)…");
        let rows = shape(c, n, steady, churn).await;
        for (k, v) in &rows {
            eprintln!("  {k}: {v}");
        }
        table.push((format!("{c}×{n}"), rows));
    }
    // Every shape's rows, in order of first appearance (a one-cluster shape
    // has no "10 at once" row).
    let mut labels: Vec<String> = Vec::new();
    for (k, _) in table.iter().flat_map(|(_, rows)| rows) {
        if !labels.contains(k) {
            labels.push(k.clone());
        }
    }
    let width = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    print!("{:width$}", "", width = width);
    for (shape, _) in &table {
        print!("  {shape:>18}");
    }
    println!();
    for label in &labels {
        print!("{label:width$}");
        for (_, rows) in &table {
            let v = rows
                .iter()
                .find(|(k, _)| k == label)
                .map_or("-", |(_, v)| v.as_str());
            print!("  {v:>18}");
        }
        println!();
    }
}
