//! Commit latency and throughput of small cluster-state writes on three
//! local managers, and the memory of one manager.
//!
//! Run with `scripts/bench-raft` (or `cargo bench --bench raft`). Figures
//! only, no pass/fail: these machines are noisy.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let sequential: usize = std::env::var("BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let m = Arc::new(Managers::start(3));
    let mut leader = m.leader(&[1, 2, 3]).await;
    m.register("main", "n1", 5432).await;

    // Sequential writes through the leader: commit latency.
    let mut client = m.client(leader).await;
    let mut latencies = Vec::with_capacity(sequential);
    for i in 0..sequential {
        let req = pgquorum::proto::api::SetConfigRequest {
            cluster: "main".into(),
            changes: [("postgresql.parameters.bench".to_string(), i.to_string())].into(),
        };
        let start = Instant::now();
        // A leader change on a loaded machine: wait for the next leader.
        if client.set_config(req.clone()).await.is_err() {
            leader = m.leader(&[1, 2, 3]).await;
            client = m.client(leader).await;
            continue;
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "commit latency over {} sequential writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );

    // Concurrent writers: commits per second.
    let writers = 16;
    let period = Duration::from_secs(5);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let m = m.clone();
        let leader = leader;
        tasks.push(tokio::spawn(async move {
            let mut c = m.client(leader).await;
            let mut n = 0u64;
            while start.elapsed() < period {
                let req = pgquorum::proto::api::SetConfigRequest {
                    cluster: "main".into(),
                    changes: [(format!("postgresql.parameters.w{w}"), n.to_string())].into(),
                };
                if c.set_config(req).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    println!(
        "throughput with {writers} concurrent writers: {:.0} commits/s",
        total as f64 / start.elapsed().as_secs_f64()
    );
    for id in [1, 2, 3] {
        if let Some(pid) = m.procs[&id].pid() {
            println!(
                "manager {id}{}: RSS {:.1} MiB",
                if id == leader { " (leader)" } else { "" },
                rss_kib(pid) as f64 / 1024.0
            );
        }
    }
}
