//! `pgquorum drill`: a real cluster on this machine, a workload that
//! records every write, random faults with their heals, and a checker that
//! proves — or disproves — that nothing acknowledged was lost and that two
//! primaries never took writes at once.
//!
//! The parts, in the order a drill uses them:
//! * [`net`] — hosts: network namespaces on a bridge as root (links can be
//!   cut), loopback addresses otherwise (process faults only);
//! * [`cluster`] — managers and agents of this very binary on those hosts;
//! * [`workload`] — writers through the multi-host string and direct to
//!   each node, every attempt logged;
//! * [`fault`] — the seeded choice of faults and their injection and heal;
//! * [`record`] — what is written down; [`check`] judges it (also offline,
//!   `--check DIR`); [`report`] prints the verdict.

pub mod check;
pub mod cluster;
pub mod fault;
pub mod net;
pub mod record;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use cluster::Cluster;
use fault::{Choice, Heal, Injected, Kind, Plan, Roles};
use record::{now_ms, Event, FinalRows, JsonLines, Log, Setup, Stamped};

/// How long the cluster may take to be whole again after a heal before the
/// drill calls it a liveness failure.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
/// Quiet time after the cluster is whole again, before the next fault.
const CALM: Duration = Duration::from_millis(500);
/// At most this many faults at once with `--overlap`.
const MAX_OVERLAP: usize = 2;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub nodes: usize,
    pub managers: usize,
    pub sync: bool,
    pub duration: Duration,
    /// Stop after this many faults, even before `duration`.
    pub count: Option<u32>,
    pub every: Duration,
    pub kinds: Vec<Kind>,
    /// The kinds were named with `--faults` (not the default set).
    pub kinds_named: bool,
    pub seed: u64,
    pub clients: u32,
    pub keep: bool,
    pub colocated: bool,
    pub overlap: bool,
    /// Extra dynamic configuration (`--set KEY=VALUE`).
    pub config: Vec<(String, String)>,
    /// The command line that reproduces this drill.
    pub command: String,
    /// Print progress on stderr.
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot write the drill's logs in {dir}: {source}")]
    Logs { dir: String, source: std::io::Error },
}

/// The events written down so far.
struct Events {
    file: JsonLines,
    all: Vec<Stamped>,
}

#[derive(Clone)]
struct EventLog(Arc<Mutex<Events>>);

impl EventLog {
    fn record_at(&self, at_ms: u64, event: Event) {
        let stamped = Stamped { at_ms, event };
        if let Ok(mut e) = self.0.lock() {
            // Flushed line by line: the timeline can be followed live, and
            // survives the drill itself being killed.
            if let Err(err) = e.file.append(&stamped).and_then(|()| e.file.flush()) {
                tracing::warn!(error = %err, "cannot write the drill's event log");
            }
            e.all.push(stamped);
        }
    }

    fn record(&self, event: Event) {
        self.record_at(now_ms(), event)
    }

    fn take(&self) -> Vec<Stamped> {
        match self.0.lock() {
            Ok(mut e) => {
                let _ = e.file.flush();
                let mut all = std::mem::take(&mut e.all);
                all.sort_by_key(|s| s.at_ms);
                all
            }
            Err(_) => Vec::new(),
        }
    }
}

fn say(opts: &Options, message: impl AsRef<str>) {
    if opts.progress {
        eprintln!("{}", message.as_ref());
    }
}

/// Run a drill; the verdict, also written to `DIR/report.json`.
pub async fn run(opts: Options) -> Result<check::Verdict, DrillError> {
    let namespaces = net::namespaces_available();
    let mut kinds = opts.kinds.clone();
    if !namespaces {
        let network: Vec<&str> = kinds
            .iter()
            .filter(|k| k.needs_network())
            .map(|k| k.name())
            .collect();
        if opts.kinds_named && !network.is_empty() {
            return Err(DrillError::Setup(format!(
                "{} need network namespaces, which need root (and iproute2): run the drill as root, or leave them out of --faults",
                network.join(", ")
            )));
        }
        kinds.retain(|k| !k.needs_network());
        say(
            &opts,
            "not root: hosts are loopback addresses and only process faults run (no partitions); run as root for the full drill",
        );
    }
    prepare_dir(&opts.dir)?;
    let logs = |source| DrillError::Logs {
        dir: opts.dir.display().to_string(),
        source,
    };
    let host_names = cluster::host_names(opts.nodes, opts.managers, opts.colocated);
    let network = if namespaces {
        net::Network::create(&host_names, None)?
    } else {
        net::Network::loopback(&host_names)
    };
    say(
        &opts,
        format!(
            "drill: seed {}, {} mode, {} nodes, {} managers{}, hosts on {}.0/24{}, {} for {}; logs in {}",
            opts.seed,
            if opts.sync { "sync" } else { "async" },
            opts.nodes,
            opts.managers,
            if opts.colocated { " (colocated)" } else { "" },
            network.subnet,
            if namespaces { " (network namespaces)" } else { " (loopback)" },
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
            humantime::format_duration(opts.duration),
            opts.dir.display()
        ),
    );
    let exe = std::env::current_exe()
        .map_err(|e| DrillError::Setup(format!("cannot find this program's own path: {e}")))?;
    let mut c = Cluster::start(
        network,
        &opts.dir,
        &exe,
        opts.nodes,
        opts.managers,
        opts.colocated,
    )?;
    let events = EventLog(Arc::new(Mutex::new(Events {
        file: JsonLines::create(&opts.dir.join(record::EVENTS)).map_err(logs)?,
        all: Vec::new(),
    })));

    let outcome = drive(&opts, &mut c, &kinds, namespaces, &events).await;
    if let Err(why) = &outcome {
        events.record(Event::Interrupted { why: why.clone() });
        say(&opts, format!("drill stopped: {why}"));
    }
    say(&opts, "stopping the cluster");
    c.shutdown();
    let dir = c.dir.clone();
    drop(c);
    if !opts.keep {
        remove_data(&dir, &host_names);
    }

    let log = Log {
        events: events.take(),
        attempts: outcome.as_ref().map(|o| o.0.clone()).unwrap_or_default(),
        final_rows: outcome.ok().and_then(|o| o.1),
    };
    if log.attempts.is_empty() {
        // The workload may have stopped with the error: read what it wrote.
        if let Ok(read) = Log::read(&dir) {
            return finish(&dir, &read);
        }
    }
    finish(&dir, &log)
}

/// Judge the drill in `dir` from its logs (`pgquorum drill --check DIR`).
pub fn check_dir(dir: &Path) -> Result<check::Verdict, DrillError> {
    let log = Log::read(dir).map_err(|e| DrillError::Setup(e.to_string()))?;
    Ok(check::check(&log))
}

fn finish(dir: &Path, log: &Log) -> Result<check::Verdict, DrillError> {
    let verdict = check::check(log);
    let path = dir.join("report.json");
    let text = serde_json::to_vec_pretty(&verdict).map_err(std::io::Error::other);
    text.and_then(|t| std::fs::write(&path, t))
        .map_err(|source| DrillError::Logs {
            dir: dir.display().to_string(),
            source,
        })?;
    Ok(verdict)
}

/// The drill's directory must be new or empty: a drill never mixes its
/// logs with an earlier one's, nor deletes anything it did not create.
fn prepare_dir(dir: &Path) -> Result<(), DrillError> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(DrillError::Setup(format!(
                "{} is not empty (an earlier drill?); give another --dir, or remove it first",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| DrillError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| DrillError::Setup(format!("cannot open up {}: {e}", dir.display())))
}

/// Remove the nodes' and managers' data, keeping the logs.
fn remove_data(dir: &Path, hosts: &[String]) {
    for h in hosts {
        let Ok(entries) = std::fs::read_dir(dir.join(h)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Everything between a started cluster and its shutdown: bring it up,
/// write, inject and heal, converge, read the final primary. The attempts
/// and the final rows; an error says why the drill stopped early.
async fn drive(
    opts: &Options,
    c: &mut Cluster,
    kinds: &[Kind],
    namespaces: bool,
    events: &EventLog,
) -> Result<(Vec<record::Attempt>, Option<FinalRows>), String> {
    let mut signals = crate::signals::StopSignals::install();
    // Bring the cluster up: the first node bootstraps alone.
    let first = c.nodes[0].clone();
    c.start_agent(&first).map_err(|e| e.to_string())?;
    let registered = poll(Duration::from_secs(90), || async {
        c.status()
            .await
            .filter(|s| s.nodes.iter().any(|n| n.name == first))
    });
    tokio::select! {
        r = registered => r.ok_or("the first node did not register with the managers within 90 s; see its agent.log and the managers' logs")?,
        _ = signals.wait() => return Err("interrupted".into()),
    };
    let mut config = opts.config.clone();
    if opts.sync {
        config.push(("sync_mode".into(), "on".into()));
    }
    if !config.is_empty() {
        c.set_config(&config)
            .await
            .map_err(|e| format!("the managers refused the configuration: {e}"))?;
    }
    for n in c.nodes.clone().iter().skip(1) {
        c.start_agent(n).map_err(|e| e.to_string())?;
    }
    say(opts, "waiting for the cluster to come up");
    tokio::select! {
        r = wait_whole(c, opts, None, 0, Duration::from_secs(240)) => { r.map_err(|state| format!("the cluster did not come up within 240 s: {state}"))?; }
        _ = signals.wait() => return Err("interrupted".into()),
    }
    let ttl = c
        .config()
        .await
        .and_then(|m| m.get("ttl").cloned())
        .and_then(|t| humantime::parse_duration(&t).ok())
        .unwrap_or(Duration::from_secs(2));
    workload::create_table(&c.dsn())
        .await
        .map_err(|e| format!("cannot create the drill's table: {e}"))?;

    let setup = Setup {
        seed: opts.seed,
        sync: opts.sync,
        nodes: c.nodes.clone(),
        managers: opts.managers,
        namespaces,
        colocated: opts.colocated,
        overlap: opts.overlap,
        ttl_ms: ttl.as_millis() as u64,
        command: opts.command.clone(),
    };
    events.record(Event::Started { setup });
    let servers: BTreeMap<String, String> = c
        .nodes
        .iter()
        .map(|n| (c.host_of(n).address, n.clone()))
        .collect();
    let direct: Vec<(String, String)> =
        c.nodes.iter().map(|n| (n.clone(), c.node_dsn(n))).collect();
    let writes = JsonLines::create(&opts.dir.join(record::WRITES)).map_err(|e| e.to_string())?;
    let load = workload::Workload::start(
        &c.dsn(),
        opts.clients,
        &direct,
        servers,
        Duration::from_millis(20),
        writes,
    );
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let observer = tokio::spawn(observe_history(
        c.manager_addresses(),
        events.clone(),
        watching.clone(),
    ));

    let faults = tokio::select! {
        r = inject_and_heal(opts, c, kinds, ttl, events, &load) => r,
        _ = signals.wait() => Err("interrupted".into()),
    };
    // Whatever happened: heal everything, and the cluster must be whole.
    let healed_at = now_ms();
    heal_everything(c);
    let final_state = if faults.is_ok() {
        say(opts, "final heal: waiting for the cluster to be whole");
        let r = wait_whole(c, opts, Some(&load), healed_at, CONVERGE_LIMIT).await;
        match &r {
            Ok(took) => events.record(Event::Converged {
                id: 0,
                took_ms: *took,
            }),
            Err(state) => events.record(Event::NotConverged {
                id: 0,
                waited_ms: CONVERGE_LIMIT.as_millis() as u64,
                state: state.clone(),
            }),
        }
        // A little more writing on the final primary.
        tokio::time::sleep(Duration::from_secs(2)).await;
        r.is_ok()
    } else {
        false
    };
    let attempts = load.stop().await.map_err(|e| e.to_string())?;
    watching.store(false, Ordering::SeqCst);
    let _ = observer.await;
    faults?;

    let mut final_rows = None;
    if final_state {
        if let Some(s) = c.status().await {
            match workload::rows_on(&c.node_dsn(&s.primary)).await {
                Ok(rows) => {
                    let f = FinalRows {
                        primary: s.primary.clone(),
                        at_ms: now_ms(),
                        rows,
                    };
                    let text = serde_json::to_vec(&f).map_err(|e| e.to_string())?;
                    std::fs::write(opts.dir.join(record::FINAL), text)
                        .map_err(|e| e.to_string())?;
                    final_rows = Some(f);
                }
                Err(e) => say(
                    opts,
                    format!("cannot read the final primary {}: {e}", s.primary),
                ),
            }
        }
    }
    Ok((attempts, final_rows))
}

/// Undo every cut and every freeze, start everything that is down.
fn heal_everything(c: &mut Cluster) {
    c.net.heal_all();
    for n in c.nodes.clone() {
        crate::process::signal_all(&c.node_pids(&n), nix::sys::signal::Signal::SIGCONT);
        if let Err(e) = c.start_agent(&n) {
            tracing::warn!(node = %n, error = %e, "cannot restart the agent");
        }
    }
    for id in c.managers.iter().map(|m| m.id).collect::<Vec<_>>() {
        if let Some(pid) = c.manager_pid(id) {
            crate::process::signal_all(&[pid], nix::sys::signal::Signal::SIGCONT);
        }
        if let Err(e) = c.start_manager(id) {
            tracing::warn!(manager = id, error = %e, "cannot restart the manager");
        }
    }
}

/// An active fault.
struct Active {
    id: u32,
    choice: Choice,
    injected: Injected,
    heal_at: Instant,
}

/// The fault loop: until the duration is over, inject a fault every
/// `--every` (one at a time, or up to two with `--overlap`), heal each
/// after its hold, and after the last active one is healed wait for the
/// cluster to be whole again.
async fn inject_and_heal(
    opts: &Options,
    c: &mut Cluster,
    kinds: &[Kind],
    ttl: Duration,
    events: &EventLog,
    load: &workload::Workload,
) -> Result<(), String> {
    let mut plan = Plan::new(opts.seed, kinds.to_vec(), ttl);
    let mut end = Instant::now() + opts.duration;
    let mut next_start = Instant::now() + Duration::from_secs(1);
    let mut active: Vec<Active> = Vec::new();
    let mut last_healed: Option<(u32, u64)> = None;
    let mut id = 0;
    let mut roles = c
        .status()
        .await
        .map(|s| Roles::of(&s))
        .ok_or("no manager answers")?;
    loop {
        // Heal what is due.
        let now = Instant::now();
        let (due, rest): (Vec<Active>, Vec<Active>) =
            active.into_iter().partition(|a| a.heal_at <= now);
        active = rest;
        for a in due {
            fault::heal(c, &a.injected.heal)?;
            events.record(Event::Healed { id: a.id });
            last_healed = Some((a.id, now_ms()));
        }
        // Nothing active after a heal: the cluster must become whole.
        if active.is_empty() {
            if let Some((healed, at)) = last_healed.take() {
                match wait_whole(c, opts, Some(load), at, CONVERGE_LIMIT).await {
                    Ok(took) => {
                        events.record(Event::Converged {
                            id: healed,
                            took_ms: took,
                        });
                        say(
                            opts,
                            format!("  whole again after {:.1} s", took as f64 / 1000.0),
                        );
                    }
                    Err(state) => {
                        events.record(Event::NotConverged {
                            id: healed,
                            waited_ms: CONVERGE_LIMIT.as_millis() as u64,
                            state: state.clone(),
                        });
                        say(
                            opts,
                            format!(
                                "  NOT whole again within {} s: {state}",
                                CONVERGE_LIMIT.as_secs()
                            ),
                        );
                        // Another fault on a broken cluster proves nothing.
                        return Ok(());
                    }
                }
                next_start = next_start.max(Instant::now() + CALM);
                if let Some(s) = c.status().await {
                    roles = Roles::of(&s);
                }
            }
            if Instant::now() >= end {
                return Ok(());
            }
        }
        let room = if opts.overlap { MAX_OVERLAP } else { 1 };
        if Instant::now() >= next_start && Instant::now() < end && active.len() < room {
            if let Some(s) = c.status().await {
                roles = Roles::of(&s);
            }
            let choice = plan.draw();
            // Overlapping faults hit different hosts, and only one touches
            // the managers as a whole at a time.
            let clash = active.iter().any(|a| clashes(a, choice, &roles));
            if !clash && !roles.primary.is_empty() {
                let at = now_ms();
                match fault::inject(c, choice, &roles).await {
                    Ok(injected) => {
                        id += 1;
                        let target = if !choice.kind.hits_node() {
                            ""
                        } else if injected.hosts.contains(&roles.primary) {
                            "primary"
                        } else {
                            "replica"
                        };
                        say(
                            opts,
                            format!(
                                "fault {id}: {} on {} ({}), held {:.1} s",
                                choice.kind.name(),
                                if injected.hosts.is_empty() {
                                    "the managers".to_string()
                                } else {
                                    injected.hosts.join(",")
                                },
                                injected.detail,
                                choice.hold.as_secs_f64()
                            ),
                        );
                        events.record_at(
                            at,
                            Event::Fault {
                                id,
                                kind: choice.kind.name().into(),
                                hosts: injected.hosts.clone(),
                                primary: roles.primary.clone(),
                                target: target.into(),
                                detail: injected.detail.clone(),
                            },
                        );
                        if let Some((command, accepted, answer)) = &injected.operation {
                            events.record(Event::Operation {
                                id,
                                command: command.clone(),
                                accepted: *accepted,
                                answer: answer.clone(),
                            });
                        }
                        let hold = if matches!(injected.heal, Heal::Nothing) {
                            Duration::ZERO
                        } else {
                            choice.hold
                        };
                        active.push(Active {
                            id,
                            choice,
                            injected,
                            heal_at: Instant::now() + hold,
                        });
                        if opts.count.is_some_and(|n| id >= n) {
                            end = Instant::now();
                        }
                    }
                    Err(why) => {
                        tracing::debug!(fault = choice.kind.name(), %why, "fault skipped");
                    }
                }
            }
            next_start = Instant::now() + opts.every;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Would `choice` overlap badly with the active fault `a`?
fn clashes(a: &Active, choice: Choice, roles: &Roles) -> bool {
    let whole = |k: Kind| {
        matches!(
            k,
            Kind::ManagersRestart | Kind::ManagerSplit | Kind::Switchover | Kind::FailoverTo
        )
    };
    if whole(a.choice.kind) || whole(choice.kind) {
        return true;
    }
    // Most node faults hit the primary: do not stack two on one host.
    a.injected.hosts.contains(&roles.primary)
}

/// Poll `check` every 200 ms until it gives `Some` or `limit` passes.
async fn poll<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the cluster is whole: one healthy primary, every other node a
/// streaming replica, every manager a voter in the group, and (with a
/// workload) a client write acknowledged since `since_ms`. How long it
/// took from `since_ms`, or what was still wrong.
async fn wait_whole(
    c: &Cluster,
    opts: &Options,
    load: Option<&workload::Workload>,
    since_ms: u64,
    limit: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + limit;
    loop {
        let state = match c.status().await {
            Some(s) => {
                let mut wrong = Vec::new();
                let primaries: Vec<&str> = s
                    .nodes
                    .iter()
                    .filter(|n| n.role == "primary" && n.healthy)
                    .map(|n| n.name.as_str())
                    .collect();
                if primaries.len() != 1 {
                    wrong.push(format!("healthy primaries: [{}]", primaries.join(",")));
                }
                for n in &s.nodes {
                    if !(n.healthy && (n.role == "replica" || n.role == "primary")) {
                        wrong.push(format!("{} is {} ({})", n.name, n.role, n.state));
                    }
                }
                if s.nodes.len() != opts.nodes {
                    wrong.push(format!(
                        "{} of {} nodes registered",
                        s.nodes.len(),
                        opts.nodes
                    ));
                }
                let voters = s
                    .managers
                    .iter()
                    .filter(|m| m.role == "leader" || m.role == "follower")
                    .count();
                if voters != opts.managers {
                    wrong.push(format!(
                        "managers: {}",
                        s.managers
                            .iter()
                            .map(|m| format!("{} {}", m.id, m.role))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if let Some(load) = load {
                    if load.last_client_ack_ms.load(Ordering::SeqCst) <= since_ms {
                        wrong.push("no client write acknowledged since the heal".into());
                    }
                }
                if wrong.is_empty() {
                    return Ok(now_ms().saturating_sub(since_ms));
                }
                wrong.join("; ")
            }
            None => "no manager answered".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Write every decision of the managers' history down as an epoch, stamped
/// with its decision time, until `watching` turns false.
async fn observe_history(
    managers: Vec<String>,
    events: EventLog,
    watching: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seen = std::collections::BTreeSet::new();
    let clients: Vec<_> = managers
        .iter()
        .filter_map(|a| crate::transport::lazy_channel(a).ok())
        .map(crate::proto::api::pg_quorum_client::PgQuorumClient::new)
        .collect();
    loop {
        let last_round = !watching.load(Ordering::SeqCst);
        for mut client in clients.clone() {
            let mut req = tonic::Request::new(crate::proto::api::ClusterRequest {
                cluster: cluster::CLUSTER.into(),
                local: false,
            });
            req.set_timeout(Duration::from_secs(1));
            let Ok(r) = client.history(req).await else {
                continue;
            };
            for e in r.into_inner().events {
                if seen.insert((e.epoch, e.at_unix_ms, e.kind.clone(), e.new_primary.clone())) {
                    events.record_at(
                        e.at_unix_ms,
                        Event::Epoch {
                            epoch: e.epoch,
                            kind: e.kind,
                            primary: e.new_primary,
                            old_primary: e.old_primary,
                            reason: e.reason,
                        },
                    );
                }
            }
            break;
        }
        if last_round {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
