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
use fault::{Heal, Injected, Kind, Plan, Roles};
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

/// SIGINT (Ctrl-C) or SIGTERM: the first asks the drill to heal
/// everything, stop the cluster and tear down in order; a second kills
/// everything of the drill's at once.
#[derive(Clone)]
pub struct Interrupt(Arc<std::sync::atomic::AtomicBool>);

impl Interrupt {
    /// Catch the signals from now on.
    fn watch(dir: PathBuf, progress: bool) -> Interrupt {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut signals = crate::signals::StopSignals::install();
        let raised = flag.clone();
        tokio::spawn(async move {
            signals.wait().await;
            raised.store(true, Ordering::SeqCst);
            if progress {
                eprintln!("interrupted: healing and tearing down (interrupt again to kill everything at once)");
            }
            signals.wait().await;
            let left = crate::process::processes_under(&dir);
            crate::process::signal_all(&left, nix::sys::signal::Signal::SIGCONT);
            crate::process::signal_all(&left, nix::sys::signal::Signal::SIGKILL);
            if progress {
                eprintln!("killed {} processes of the drill", left.len());
            }
        });
        Interrupt(flag)
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Run a drill; the verdict, also written to `DIR/report.json`.
pub async fn run(opts: Options) -> Result<check::Verdict, DrillError> {
    let stop = Interrupt::watch(opts.dir.clone(), opts.progress);
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
                "{} need network namespaces, which need root and iproute2: run the drill as root, or leave them out of --faults",
                network.join(", ")
            )));
        }
        kinds.retain(|k| !k.needs_network());
        say(
            &opts,
            "no network namespaces (they need root and iproute2): hosts are loopback addresses and only process faults run (no partitions); run as root for the full drill",
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

    let outcome = drive(&opts, &mut c, &kinds, namespaces, &events, &stop).await;
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

    let events = events.take();
    let started = events
        .iter()
        .any(|e| matches!(e.event, Event::Started { .. }));
    let (attempts, final_rows) = match outcome {
        Ok(o) => o,
        // Before the workload started there is nothing to judge.
        Err(why) if !started => {
            return Err(DrillError::Setup(format!(
                "{why} (logs kept in {})",
                dir.display()
            )))
        }
        // The workload's attempts are on disk.
        Err(_) => (
            Log::read(&dir).map(|l| l.attempts).unwrap_or_default(),
            None,
        ),
    };
    finish(
        &dir,
        &Log {
            events,
            attempts,
            final_rows,
        },
    )
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
    stop: &Interrupt,
) -> Result<(Vec<record::Attempt>, Option<FinalRows>), String> {
    let text = |e: cluster::ClusterError| e.to_string();
    // Bring the cluster up: the first node bootstraps alone.
    let first = c.nodes[0].clone();
    c.start_agent(&first).map_err(text)?;
    poll(stop, Duration::from_secs(90), || async {
        c.api().status()
            .await
            .filter(|s| s.nodes.iter().any(|n| n.name == first))
    })
    .await?
    .ok_or("the first node did not register with the managers within 90 s; see its agent.log and the managers' logs")?;
    let mut config = opts.config.clone();
    if opts.sync {
        config.push(("sync_mode".into(), "on".into()));
    }
    if !config.is_empty() {
        c.api()
            .set_config(&config)
            .await
            .map_err(|e| format!("the managers refused the configuration: {e}"))?;
    }
    for n in c.nodes.clone().iter().skip(1) {
        c.start_agent(n).map_err(text)?;
    }
    say(opts, "waiting for the cluster to come up");
    wait_whole(c, opts, None, 0, Duration::from_secs(240), stop)
        .await
        .map_err(|state| format!("the cluster did not come up within 240 s: {state}"))?;
    let ttl = c
        .api()
        .config()
        .await
        .and_then(|m| m.get("ttl").cloned())
        .and_then(|t| humantime::parse_duration(&t).ok())
        .unwrap_or(Duration::from_secs(2));
    let dsn = c.dsn().map_err(text)?;
    tokio::time::timeout(Duration::from_secs(30), workload::create_table(&dsn))
        .await
        .map_err(|_| "cannot create the drill's table: no answer within 30 s".to_string())?
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
    let mut servers = BTreeMap::new();
    let mut direct = Vec::new();
    for n in &c.nodes {
        servers.insert(c.address_of(n).map_err(text)?, n.clone());
        direct.push((n.clone(), c.node_dsn(n).map_err(text)?));
    }
    let writes = JsonLines::create(&opts.dir.join(record::WRITES)).map_err(|e| e.to_string())?;
    let load = workload::Workload::start(
        &dsn,
        opts.clients,
        &direct,
        servers,
        Duration::from_millis(20),
        writes,
    );
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let observer = tokio::spawn(observe_history(c.api(), events.clone(), watching.clone()));

    let faults = inject_and_heal(opts, c, kinds, ttl, events, &load, stop).await;
    // Whatever happened: heal everything, and the cluster must be whole.
    let healed_at = now_ms();
    heal_everything(c);
    let mut final_primary = None;
    if faults.is_ok() {
        say(opts, "final heal: waiting for the cluster to be whole");
        match wait_whole(c, opts, Some(&load), healed_at, CONVERGE_LIMIT, stop).await {
            Ok(took) => {
                events.record(Event::Converged {
                    id: 0,
                    took_ms: took,
                });
                // A little more writing on the final primary.
                tokio::time::sleep(Duration::from_secs(2)).await;
                final_primary = c.api().status().await.map(|s| s.primary);
            }
            Err(state) => events.record(Event::NotConverged {
                id: 0,
                waited_ms: CONVERGE_LIMIT.as_millis() as u64,
                state,
            }),
        }
    }
    let attempts = load.stop().await.map_err(|e| e.to_string())?;
    watching.store(false, Ordering::SeqCst);
    let _ = observer.await;
    faults?;

    let mut final_rows = None;
    if let Some(primary) = final_primary.filter(|p| !p.is_empty()) {
        let dsn = c.node_dsn(&primary).map_err(text)?;
        match tokio::time::timeout(Duration::from_secs(60), workload::rows_on(&dsn)).await {
            Ok(Ok(rows)) => {
                let f = FinalRows {
                    primary,
                    at_ms: now_ms(),
                    rows,
                };
                let text = serde_json::to_vec(&f).map_err(|e| e.to_string())?;
                std::fs::write(opts.dir.join(record::FINAL), text).map_err(|e| e.to_string())?;
                final_rows = Some(f);
            }
            Ok(Err(e)) => say(
                opts,
                format!("cannot read the final primary {primary}: {e}"),
            ),
            Err(_) => say(
                opts,
                format!("the final primary {primary} did not answer within 60 s"),
            ),
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
    aim: fault::Aim,
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
    stop: &Interrupt,
) -> Result<(), String> {
    let mut plan = Plan::new(opts.seed, kinds.to_vec(), ttl);
    let mut end = Instant::now() + opts.duration;
    let mut next_start = Instant::now() + Duration::from_secs(1);
    let mut active: Vec<Active> = Vec::new();
    let mut last_healed: Option<(u32, u64)> = None;
    let mut id = 0;
    loop {
        // Heal what is due (everything, when interrupted).
        let now = Instant::now();
        let interrupted = stop.requested();
        let (due, rest): (Vec<Active>, Vec<Active>) = active
            .into_iter()
            .partition(|a| a.heal_at <= now || interrupted);
        active = rest;
        for a in due {
            fault::heal(c, &a.injected.heal)?;
            events.record(Event::Healed { id: a.id });
            last_healed = Some((a.id, now_ms()));
        }
        if interrupted {
            return Err("interrupted".into());
        }
        // Nothing active after a heal: the cluster must become whole.
        if active.is_empty() {
            if let Some((healed, at)) = last_healed.take() {
                match wait_whole(c, opts, Some(load), at, CONVERGE_LIMIT, stop).await {
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
                    Err(_) if stop.requested() => return Err("interrupted".into()),
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
            }
            if Instant::now() >= end {
                return Ok(());
            }
        }
        let room = if opts.overlap { MAX_OVERLAP } else { 1 };
        if Instant::now() >= next_start && Instant::now() < end && active.len() < room {
            next_start = Instant::now() + opts.every;
            let Some(status) = c.api().status().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let roles = Roles::of(&status);
            let choice = plan.draw();
            let aim = fault::aim(c, choice, &roles).and_then(|aim| {
                match active.iter().find(|a| clashes(&a.aim, &aim)) {
                    Some(a) => Err(format!("it would overlap fault {}", a.id)),
                    None => Ok(aim),
                }
            });
            let aim = match aim {
                Ok(aim) => aim,
                Err(why) => {
                    events.record(Event::Skipped {
                        kind: choice.kind.name().into(),
                        why,
                    });
                    continue;
                }
            };
            id += 1;
            let target = if !choice.kind.hits_node() {
                ""
            } else if aim.target == roles.primary {
                "primary"
            } else {
                "replica"
            };
            // Written down before it happens: a drill stopped in the middle
            // of injecting it still knows.
            events.record(Event::Fault {
                id,
                kind: choice.kind.name().into(),
                hosts: aim.hosts.clone(),
                primary: roles.primary.clone(),
                target: target.into(),
                detail: aim.detail.clone(),
            });
            say(
                opts,
                format!(
                    "fault {id}: {} on {} ({}), held {:.1} s",
                    choice.kind.name(),
                    if aim.target.is_empty() {
                        "the managers"
                    } else {
                        &aim.target
                    },
                    aim.detail,
                    choice.hold.as_secs_f64()
                ),
            );
            let injected = fault::inject(c, &aim, choice).await;
            let injected = match injected {
                Ok(i) => i,
                Err(why) => {
                    // Undone already (a cut is all or nothing): healed.
                    events.record(Event::Skipped {
                        kind: choice.kind.name().into(),
                        why: format!("fault {id} failed: {why}"),
                    });
                    events.record(Event::Healed { id });
                    last_healed = Some((id, now_ms()));
                    continue;
                }
            };
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
                aim,
                injected,
                heal_at: Instant::now() + hold,
            });
            if opts.count.is_some_and(|n| id >= n) {
                end = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Would the fault `b` overlap badly with the active fault `a`? Faults on
/// the cluster or the managers as a whole never overlap; others only on
/// different hosts (and never a second one while one holds the primary:
/// the checker's excuses for lost writes are per fault).
fn clashes(a: &fault::Aim, b: &fault::Aim) -> bool {
    let whole = |k: Kind| {
        matches!(
            k,
            Kind::ManagersRestart | Kind::ManagerSplit | Kind::Switchover | Kind::FailoverTo
        )
    };
    whole(a.kind)
        || whole(b.kind)
        || a.target == b.target
        || a.hosts.iter().any(|h| b.hosts.contains(h))
        || matches!(
            a.kind,
            Kind::PrimaryIsolate | Kind::PrimaryDeaf | Kind::PrimaryMute
        ) && matches!(
            b.kind,
            Kind::PrimaryIsolate | Kind::PrimaryDeaf | Kind::PrimaryMute
        )
}

/// Poll `check` every 200 ms until it gives `Some` or `limit` passes;
/// an error when the drill is interrupted.
async fn poll<T, F, Fut>(
    stop: &Interrupt,
    limit: Duration,
    mut check: F,
) -> Result<Option<T>, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if stop.requested() {
            return Err("interrupted".into());
        }
        if let Some(v) = check().await {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
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
    stop: &Interrupt,
) -> Result<u64, String> {
    let deadline = Instant::now() + limit;
    loop {
        if stop.requested() {
            return Err("interrupted".into());
        }
        let state = match c.api().status().await {
            Some(s) => {
                let mut wrong = Vec::new();
                let primaries: Vec<&str> = s
                    .nodes
                    .iter()
                    .filter(|n| n.role == "primary" && n.healthy)
                    .map(|n| n.name.as_str())
                    .collect();
                if primaries.len() != 1 || primaries[0] != s.primary {
                    wrong.push(format!(
                        "healthy primaries: [{}], the managers' primary: {}",
                        primaries.join(","),
                        s.primary
                    ));
                }
                // Judged on reports sent after the heal: a node's last
                // report from before it may still look healthy.
                let fresh_since = now_ms().saturating_sub(since_ms);
                for n in &s.nodes {
                    if !(n.healthy && (n.role == "replica" || n.role == "primary")) {
                        wrong.push(format!("{} is {} ({})", n.name, n.role, n.state));
                    } else if n.last_seen_ms.is_none_or(|age| age >= fresh_since) {
                        wrong.push(format!("{} has not reported since the heal", n.name));
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
    api: cluster::ManagerApi,
    events: EventLog,
    watching: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seen = std::collections::BTreeSet::new();
    let mut last_chance = tokio::time::Instant::now();
    loop {
        let last_round = !watching.load(Ordering::SeqCst);
        let history = api.history().await;
        let answered = history.is_some();
        for e in history.unwrap_or_default() {
            // Pauses, configuration changes and dropped switchovers are
            // in the history too; only new primaries are epochs.
            if !crate::cluster::state::EventKind::starts_epoch(&e.kind) {
                continue;
            }
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
        // The last round must get through: a decision missed would make
        // writes look as if they came after the wrong epoch.
        if last_round && (answered || tokio::time::Instant::now() >= last_chance) {
            return;
        }
        if !last_round {
            last_chance = tokio::time::Instant::now() + Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
