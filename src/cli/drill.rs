//! `pgquorum drill`: the command line of [`crate::drill`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::output::{print, Failure};
use super::GlobalArgs;
use crate::drill::fault::Kind;

/// Randomized faults against a real cluster on this machine, with a checker
/// that proves nothing acknowledged was lost and no two primaries took
/// writes at once. Exit 0 when every check passed, 1 when one failed (the
/// report names the seed to reproduce it), 2 on bad flags.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Where the cluster and the drill's logs live; must be new or empty
    /// [default: /tmp/pgquorum-drill-SEED-TIME].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// PostgreSQL nodes.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub nodes: usize,
    /// Managers (1, 3 or 5).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub managers: usize,
    /// Synchronous replication (`sync_mode = on`): no acknowledged write may
    /// be lost.
    #[arg(long)]
    pub sync: bool,
    /// How long to inject faults.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Stop after N faults, even before --duration is over.
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// A new fault every DURATION (later when the cluster takes longer to
    /// be whole again).
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub every: Duration,
    /// Faults to draw from, comma-separated [default: all]: host-crash,
    /// agent-kill, agent-freeze, host-freeze, postgres-freeze,
    /// primary-isolate, replica-isolate, manager-split, leader-isolate,
    /// primary-deaf, primary-mute, manager-kill, managers-restart,
    /// switchover, failover-to.
    #[arg(long, value_name = "LIST")]
    pub faults: Option<String>,
    /// Seed of the fault sequence [default: random; printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Writers through the multi-host connection string.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub clients: u32,
    /// Keep the nodes' and managers' data afterwards (the logs are always
    /// kept).
    #[arg(long)]
    pub keep: bool,
    /// Managers on the first node hosts, as in a small real deployment,
    /// instead of on hosts of their own.
    #[arg(long)]
    pub colocated: bool,
    /// Let up to two faults overlap.
    #[arg(long)]
    pub overlap: bool,
    /// Dynamic configuration for the drill's cluster (repeatable), e.g.
    /// `--set ttl=3s`: check your own settings.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Judge the logs of an earlier drill in DIR instead of running one.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["dir", "nodes", "managers", "sync", "duration", "count", "every", "faults", "seed", "clients", "keep", "colocated", "overlap", "set"])]
    pub check: Option<PathBuf>,
}

impl DrillArgs {
    fn options(&self) -> Result<crate::drill::Options, Failure> {
        if !(2..=9).contains(&self.nodes) {
            return Err(Failure::usage(format!(
                "--nodes {}: a drill needs 2 to 9 nodes",
                self.nodes
            )));
        }
        if ![1, 3, 5].contains(&self.managers) {
            return Err(Failure::usage(format!(
                "--managers {}: give 1, 3 or 5 managers",
                self.managers
            )));
        }
        if self.colocated && self.managers > self.nodes {
            return Err(Failure::usage(format!(
                "--colocated puts one manager on each of the first nodes' hosts: {} managers need at least {} nodes",
                self.managers, self.managers
            )));
        }
        if self.every < Duration::from_secs(1) {
            return Err(Failure::usage("--every must be at least 1s"));
        }
        if self.duration < Duration::from_secs(1) {
            return Err(Failure::usage("--duration must be at least 1s"));
        }
        if !(1..=64).contains(&self.clients) {
            return Err(Failure::usage("--clients: give 1 to 64 writers"));
        }
        if self.count == Some(0) {
            return Err(Failure::usage("--count must be at least 1"));
        }
        let (kinds, kinds_named) = match &self.faults {
            Some(list) => (Kind::parse_list(list).map_err(Failure::usage)?, true),
            None => (Kind::ALL.to_vec(), false),
        };
        let network: Vec<&str> = kinds
            .iter()
            .filter(|k| k.needs_network())
            .map(|k| k.name())
            .collect();
        if kinds_named && !network.is_empty() && !crate::drill::net::namespaces_available() {
            return Err(Failure::usage(format!(
                "--faults {}: they need network namespaces, which need root and iproute2; run the drill as root, or leave them out",
                network.join(",")
            )));
        }
        let mut config = Vec::new();
        for s in &self.set {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                Failure::usage(format!(
                    "--set {s}: give KEY=VALUE, e.g. --set ttl=3s (keys: `pgquorum config show`)"
                ))
            })?;
            config.push((k.trim().to_string(), v.trim().to_string()));
        }
        // Short random seeds: easy to read out and type back.
        let seed = self
            .seed
            .unwrap_or_else(|| u64::from(rand::random::<u32>()));
        // A new directory per run by default: a failed drill's logs stay,
        // and the command that reproduces it still runs.
        let dir = match &self.dir {
            Some(d) => std::path::absolute(d)
                .map_err(|e| Failure::usage(format!("--dir {}: {e}", d.display())))?,
            None => PathBuf::from(format!(
                "/tmp/pgquorum-drill-{seed}-{}",
                crate::wallclock::unix_secs()
            )),
        };
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Failure::usage(format!(
                "--dir {}: not empty (an earlier drill?); give another directory, or remove it first",
                dir.display()
            )));
        }
        super::sandbox::check_reachable_by_postgres(&dir)?;
        let mut command = format!(
            "pgquorum drill --seed {seed} --nodes {} --managers {} --duration {} --every {} --clients {}",
            self.nodes,
            self.managers,
            humantime::format_duration(self.duration),
            humantime::format_duration(self.every),
            self.clients
        );
        if let Some(n) = self.count {
            command.push_str(&format!(" --count {n}"));
        }
        if let Some(f) = &self.faults {
            command.push_str(&format!(" --faults {f}"));
        }
        for (flag, on) in [
            ("--sync", self.sync),
            ("--colocated", self.colocated),
            ("--overlap", self.overlap),
        ] {
            if on {
                command.push(' ');
                command.push_str(flag);
            }
        }
        for s in &self.set {
            command.push_str(&format!(" --set {s}"));
        }
        Ok(crate::drill::Options {
            dir,
            nodes: self.nodes,
            managers: self.managers,
            sync: self.sync,
            duration: self.duration,
            count: self.count,
            every: self.every,
            kinds,
            kinds_named,
            seed,
            clients: self.clients,
            keep: self.keep,
            colocated: self.colocated,
            overlap: self.overlap,
            config,
            command,
            progress: true,
        })
    }
}

pub async fn run(global: &GlobalArgs, args: DrillArgs) -> Result<(), Failure> {
    let verdict = match &args.check {
        Some(dir) => crate::drill::check_dir(dir).map_err(Failure::usage)?,
        None => {
            let opts = args.options()?;
            crate::drill::run(opts).await.map_err(Failure::failed)?
        }
    };
    print(global.json, &verdict, || {
        crate::drill::report::render(&verdict)
    });
    let interrupted = verdict
        .checks
        .iter()
        .any(|c| c.name == "completed" && !c.passed);
    if verdict.passed {
        Ok(())
    } else if interrupted {
        Err(Failure::failed(
            "the drill did not run to its end: the checks above cover only what ran",
        ))
    } else {
        Err(Failure::failed(
            "the drill found a violation (see the checks above)",
        ))
    }
}
