//! The leader's control loop.
//!
//! Agents' reports land in the soft state (one [`Soft`] per cluster). The
//! loop, on every report and at least every tick, confirms leadership with a
//! quorum round, asks the pure decision core what to do, commits its
//! decision through Raft *before* acting on it, then sends commands and
//! lease grants down the agents' sessions. A manager that is not the leader
//! keeps no soft state and no sessions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::node::{ManagerNode, NodeError};
use crate::cluster::decide::{self, Input};
use crate::cluster::settings;
use crate::cluster::soft::Soft;
use crate::cluster::state::EventKind;
use crate::cluster::wire::{AgentCommand, ManagerMessage, NodeReport};
use crate::cluster::{Applied, Cluster, ClusterCommand, Lsn};

/// The loop runs at least this often, and decides for every cluster at
/// least this often (timeouts: a silent primary, a lease running out).
const TICK: Duration = Duration::from_millis(100);
/// Passes start at least this far apart: reports that arrive meanwhile are
/// answered by one pass and one quorum round, not one each (a fleet of 300
/// agents sends over a thousand reports a second).
const PASS_GAP: Duration = Duration::from_millis(5);
/// How long an operator's failover may wait for leases to run out.
const MANUAL_FAILOVER_WAIT: Duration = Duration::from_secs(60);
/// At most this many commits per cluster and pass (then the next pass).
const COMMITS_PER_PASS: usize = 4;

/// What the leader knows of one node beyond the committed state.
#[derive(Debug, Clone)]
pub struct NodeSoft {
    pub report: NodeReport,
    /// Milliseconds since the report arrived.
    pub age_ms: u64,
}

/// The leader's soft state of one cluster, for status.
#[derive(Debug, Clone, Default)]
pub struct SoftView {
    pub nodes: BTreeMap<String, NodeSoft>,
    /// Why the leader is waiting, if it is.
    pub waiting: Vec<String>,
}

impl SoftView {
    /// Nodes with a parameter change waiting for a restart.
    pub fn pending_restart(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.report
                    .postgres
                    .as_ref()
                    .is_some_and(|p| p.pending_restart)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One connected agent.
struct Session {
    id: u64,
    tx: mpsc::Sender<ManagerMessage>,
}

/// Soft state of a leader; empty on followers.
#[derive(Default)]
struct Leadership {
    /// The term this manager leads in, if it leads.
    term: Option<u64>,
    /// Monotonic ms when it became leader.
    since: u64,
    clusters: BTreeMap<String, Soft>,
    waiting: BTreeMap<String, Vec<String>>,
    sessions: HashMap<(String, String), Session>,
    next_session: u64,
    /// Per cluster, the (registrations, config version) the agents were
    /// last told the members and failsafe setting for.
    announced: BTreeMap<String, (u64, usize, u64)>,
    /// Clusters with news (a report, a session) since they were last
    /// decided for: a pass decides for these only, unless a full one is due.
    dirty: BTreeSet<String>,
    /// When every cluster was last decided for, and the last applied log
    /// index then (a commit — an operator's request, a new cluster — makes
    /// the next pass a full one).
    full_pass: Option<(u64, Option<u64>)>,
}

/// Counters for the manager's `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub decisions: AtomicU64,
    pub failovers: AtomicU64,
    pub switchovers: AtomicU64,
    pub commands: AtomicU64,
    pub lease_grants: AtomicU64,
    pub lease_denials: AtomicU64,
}

struct Inner {
    node: Arc<ManagerNode>,
    counters: Counters,
    started: Instant,
    leadership: Mutex<Leadership>,
    wake: Notify,
    changes: watch::Sender<u64>,
    /// The manager is shutting down: lead nothing, accept no session.
    stopping: std::sync::atomic::AtomicBool,
}

/// Handle on the control loop, shared by the API and agent services.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    pub fn new(node: Arc<ManagerNode>) -> Self {
        let (changes, _) = watch::channel(0);
        Control {
            inner: Arc::new(Inner {
                node,
                counters: Counters::default(),
                started: Instant::now(),
                leadership: Mutex::new(Leadership::default()),
                wake: Notify::new(),
                changes,
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Milliseconds on this manager's monotonic clock.
    fn now(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Leadership> {
        crate::lock::lock(&self.inner.leadership)
    }

    /// Start the control loop (it acts only while this manager leads).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let control = self.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                let _ = tokio::time::timeout(TICK, control.inner.wake.notified()).await;
                let since = last.elapsed();
                if since < PASS_GAP {
                    tokio::time::sleep(PASS_GAP - since).await;
                }
                last = Instant::now();
                if let Err(e) = control.pass().await {
                    tracing::debug!(error = %e, "control pass ended early");
                }
            }
        })
    }

    /// Ticks whenever something a status reader cares about changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Stop leading for good (shutdown): drop the soft state and every
    /// agent session, so that agents redial at once, and accept no new one.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let mut l = self.lock();
        *l = Leadership {
            next_session: l.next_session,
            ..Leadership::default()
        };
    }

    /// The manager is shutting down.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Follow leadership changes: a new leader starts from scratch (and
    /// cautiously); a former leader drops its sessions so agents redial.
    fn track_leadership(&self) -> bool {
        let metrics = self.inner.node.raft.metrics().borrow().clone();
        let leading = metrics.current_leader == Some(self.inner.node.id)
            && !self.inner.stopping.load(Ordering::SeqCst);
        let now = self.now();
        let mut l = self.lock();
        if !leading {
            if l.term.is_some() {
                tracing::info!("no longer the leader: dropping agent sessions and soft state");
                *l = Leadership {
                    next_session: l.next_session,
                    ..Leadership::default()
                };
            }
            return false;
        }
        if l.term != Some(metrics.current_term) {
            tracing::info!(
                term = metrics.current_term,
                "leading: soft state starts empty; no promotion before ttl + margin"
            );
            l.term = Some(metrics.current_term);
            l.since = now;
            l.clusters.clear();
            l.waiting.clear();
            l.sessions.clear();
        }
        true
    }

    /// One pass: confirm leadership, then decide and act for every cluster
    /// with news — or for all of them, every [`TICK`] and after a commit.
    async fn pass(&self) -> Result<(), NodeError> {
        if !self.track_leadership() {
            return Ok(());
        }
        let confirm_started = self.now();
        let applied = self.inner.node.local_state();
        let index = applied.last_applied.map(|id| id.index);
        // The clusters to decide for are taken before the quorum round: a
        // report arriving during the round cannot be answered with a lease
        // by this pass (it came after the round started), so its cluster
        // stays marked for the next one.
        let names: Vec<String> = {
            let mut l = self.lock();
            let full = l.full_pass.is_none_or(|(at, seen)| {
                confirm_started.saturating_sub(at) >= TICK.as_millis() as u64 || seen != index
            });
            if full {
                l.full_pass = Some((confirm_started, index));
                l.dirty.clear();
                applied.state.clusters.keys().cloned().collect()
            } else {
                std::mem::take(&mut l.dirty).into_iter().collect()
            }
        };
        if let Err(e) = self.inner.node.linearizable_state().await {
            self.lock().dirty.extend(names);
            return Err(e);
        }
        {
            let mut l = self.lock();
            for soft in l.clusters.values_mut() {
                soft.confirmed_at = Some(confirm_started);
            }
        }
        self.drive_all(names).await?;
        self.changed();
        Ok(())
    }

    /// Decide and act for `names` until nothing more is to be committed:
    /// each round decides for every cluster left — sending the commands and
    /// grants of those with nothing to commit at once — then proposes the
    /// others' commits together and decides for those clusters again. A
    /// cluster's lease never waits behind another cluster's commit (one at a
    /// time, a fleet starting or failing over at once took longer than a
    /// lease: primaries were fenced in clusters nothing was wrong with).
    async fn drive_all(&self, mut names: Vec<String>) -> Result<(), NodeError> {
        for _ in 0..COMMITS_PER_PASS {
            let commits: Vec<(String, ClusterCommand)> = names
                .iter()
                .filter_map(|name| Some((name.clone(), self.decide_for(name)?)))
                .collect();
            if commits.is_empty() {
                return Ok(());
            }
            let results = futures::future::join_all(
                commits
                    .into_iter()
                    .map(|(name, commit)| async move { (self.commit(&name, commit).await, name) }),
            )
            .await;
            names = Vec::new();
            for (result, name) in results {
                if result? {
                    names.push(name);
                }
            }
        }
        Ok(())
    }

    /// Decide for one cluster: its commit if it has one, or else its
    /// commands and lease grant, sent.
    fn decide_for(&self, name: &str) -> Option<ClusterCommand> {
        let applied = self.inner.node.local_state();
        let cluster = applied.state.clusters.get(name)?;
        let now = self.now();
        let decision = {
            let mut l = self.lock();
            let since = l.since;
            let soft = l
                .clusters
                .entry(name.to_string())
                .or_insert_with(|| new_soft(since));
            let d = decide::decide(&Input {
                cluster,
                soft,
                now,
                wall_ms: crate::wallclock::unix_ms(),
            });
            soft.record(d.catching_up, now);
            l.waiting.insert(name.to_string(), d.waiting.clone());
            d
        };
        if decision.commit.is_some() {
            return decision.commit;
        }
        let counters = &self.inner.counters;
        counters
            .commands
            .fetch_add(decision.commands.len() as u64, Ordering::Relaxed);
        if decision.grant.is_some() {
            counters.lease_grants.fetch_add(1, Ordering::Relaxed);
        } else if self.primary_wants_lease(cluster) {
            counters.lease_denials.fetch_add(1, Ordering::Relaxed);
        }
        self.poll(cluster, &decision.poll);
        self.announce_members(cluster);
        self.send(cluster, decision.commands, decision.grant, now);
        None
    }

    /// Commit one cluster's decision. True when committed (decide for the
    /// cluster again), false when the state machine refused it.
    async fn commit(&self, name: &str, commit: ClusterCommand) -> Result<bool, NodeError> {
        let promotes = matches!(commit, ClusterCommand::Promote { .. });
        let counters = &self.inner.counters;
        counters.decisions.fetch_add(1, Ordering::Relaxed);
        if let ClusterCommand::Promote { kind, .. } = &commit {
            match kind {
                EventKind::Switchover => counters.switchovers.fetch_add(1, Ordering::Relaxed),
                _ => counters.failovers.fetch_add(1, Ordering::Relaxed),
            };
        }
        tracing::info!(cluster = name, command = ?commit, "committing decision");
        let proposed_at = self.now();
        match self.inner.node.propose(commit).await {
            Ok(_) => {
                // A commit is a quorum round too: whoever reported before
                // the entry was appended may get a lease.
                if let Some(soft) = self.lock().clusters.get_mut(name) {
                    soft.confirmed_at = soft.confirmed_at.max(Some(proposed_at));
                    if promotes {
                        soft.epoch_changed();
                    }
                }
                Ok(true)
            }
            Err(NodeError::Rejected(r)) => {
                tracing::warn!(cluster = name, reason = %r, "decision refused by the state machine");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Tell every agent of `cluster` its members and the failsafe setting
    /// when they changed since they were last told (a registration, a
    /// removal, a configuration change).
    fn announce_members(&self, cluster: &Cluster) {
        let version = (
            cluster.registrations,
            cluster.members.len(),
            cluster.config_version,
        );
        let mut l = self.lock();
        if l.announced.get(&cluster.name) == Some(&version) {
            return;
        }
        l.announced.insert(cluster.name.clone(), version);
        let message = members_message(cluster);
        for ((c, _), session) in l.sessions.iter() {
            if *c == cluster.name {
                let _ = session.tx.try_send(message.clone());
            }
        }
    }

    /// Ask nodes for a report now.
    fn poll(&self, cluster: &Cluster, nodes: &[String]) {
        let l = self.lock();
        for node in nodes {
            if let Some(session) = l.sessions.get(&(cluster.name.clone(), node.clone())) {
                let _ = session.tx.try_send(ManagerMessage::Poll);
            }
        }
    }

    /// Send commands, then the lease grant, and book both.
    fn send(
        &self,
        cluster: &Cluster,
        commands: Vec<(String, crate::cluster::wire::Action)>,
        grant: Option<(String, crate::cluster::wire::LeaseGrant)>,
        now: u64,
    ) {
        let mut l = self.lock();
        let mut outgoing = Vec::new();
        if let Some(soft) = l.clusters.get_mut(&cluster.name) {
            for (node, action) in commands {
                let id = soft.sent(&node, &action, cluster.epoch, now);
                tracing::info!(cluster = %cluster.name, node = %node, id, action = action.name(), epoch = cluster.epoch, "command");
                outgoing.push((
                    node,
                    ManagerMessage::Command(AgentCommand {
                        id,
                        epoch: cluster.epoch,
                        action,
                    }),
                ));
            }
            if let Some((node, g)) = grant {
                if soft.book_lease(cluster, &node, &g) {
                    outgoing.push((node, ManagerMessage::Lease(g)));
                }
            }
        }
        for (node, message) in outgoing {
            match l.sessions.get(&(cluster.name.clone(), node.clone())) {
                Some(session) => {
                    if session.tx.try_send(message).is_err() {
                        tracing::warn!(node, "agent session is full or gone; message dropped");
                    }
                }
                None => tracing::debug!(node, "no session to the agent; message dropped"),
            }
        }
    }

    fn primary_wants_lease(&self, cluster: &Cluster) -> bool {
        let Some(primary) = cluster.primary.as_deref() else {
            return false;
        };
        let now = self.now();
        let l = self.lock();
        l.clusters
            .get(&cluster.name)
            .and_then(|s| s.nodes.get(primary))
            .is_some_and(|o| {
                o.report.wants_lease && now.saturating_sub(o.received_at) <= cluster.config.ttl_ms
            })
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Clusters in which more than one node reports running writable: a
    /// split brain, if it lasts longer than a fence takes.
    pub fn split_brain_suspected(&self) -> BTreeMap<String, bool> {
        let now = self.now();
        let l = self.lock();
        l.clusters
            .iter()
            .map(|(name, soft)| {
                let writable = soft
                    .nodes
                    .values()
                    .filter(|o| now.saturating_sub(o.received_at) <= 2000)
                    .filter(|o| o.report.postgres.as_ref().is_some_and(|pg| !pg.in_recovery))
                    .count();
                (name.clone(), writable > 1)
            })
            .collect()
    }

    /// An agent opened a session; messages for it go to `tx`. Returns the
    /// session id, or `None` when this manager does not lead.
    pub fn attach(
        &self,
        cluster: &str,
        node: &str,
        tx: mpsc::Sender<ManagerMessage>,
    ) -> Option<u64> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let mut l = self.lock();
        l.term?;
        l.next_session += 1;
        let id = l.next_session;
        l.sessions
            .insert((cluster.to_string(), node.to_string()), Session { id, tx });
        l.dirty.insert(cluster.to_string());
        self.inner.wake.notify_one();
        Some(id)
    }

    /// The session ended.
    pub fn detach(&self, cluster: &str, node: &str, id: u64) {
        let mut l = self.lock();
        let key = (cluster.to_string(), node.to_string());
        if l.sessions.get(&key).is_some_and(|s| s.id == id) {
            l.sessions.remove(&key);
        }
    }

    /// A report arrived on a session; returns the primary's latest LSN, and
    /// whether this leader confirmed its leadership with a quorum lately.
    pub fn report(&self, report: NodeReport) -> ReportAnswer {
        let now = self.now();
        let applied = self.inner.node.local_state();
        let Some(cluster) = applied.state.clusters.get(&report.cluster) else {
            return ReportAnswer::default();
        };
        let sync_standby = cluster.config.sync_mode != crate::cluster::config::SyncMode::Off
            && cluster.sync_set.contains(&report.node);
        let answer = {
            let mut l = self.lock();
            if l.term.is_none() {
                return ReportAnswer::default();
            }
            let since = l.since;
            let soft = l
                .clusters
                .entry(report.cluster.clone())
                .or_insert_with(|| new_soft(since));
            soft.observe(cluster, report, now);
            // Confirmations succeed on every pass (at least every 100 ms);
            // two heartbeats without one means the quorum is gone.
            let fresh = (2 * cluster.config.heartbeat_interval_ms).max(400);
            let quorum = soft
                .confirmed_at
                .is_some_and(|at| now.saturating_sub(at) <= fresh);
            let primary_lsn = soft
                .last_primary_lsn
                .map(|(lsn, _)| lsn)
                .unwrap_or_default();
            l.dirty.insert(cluster.name.clone());
            ReportAnswer {
                primary_lsn,
                quorum,
                sync_standby,
            }
        };
        self.inner.wake.notify_one();
        answer
    }

    /// The soft state of `cluster` (empty on a follower).
    pub fn soft_view(&self, cluster: &str) -> SoftView {
        let now = self.now();
        let l = self.lock();
        let Some(soft) = l.clusters.get(cluster) else {
            return SoftView::default();
        };
        SoftView {
            nodes: soft
                .nodes
                .iter()
                .map(|(name, o)| {
                    (
                        name.clone(),
                        NodeSoft {
                            report: o.report.clone(),
                            age_ms: now.saturating_sub(o.received_at),
                        },
                    )
                })
                .collect(),
            waiting: l.waiting.get(cluster).cloned().unwrap_or_default(),
        }
    }

    /// Run a pure question of the decision core against this leader's soft
    /// state of `cluster` (empty on a follower: every report is missing).
    fn ask<T>(&self, cluster: &Cluster, question: impl FnOnce(&Input) -> T) -> T {
        let l = self.lock();
        let fallback;
        let soft = match l.clusters.get(&cluster.name) {
            Some(soft) => soft,
            None => {
                fallback = new_soft(l.since);
                &fallback
            }
        };
        question(&Input {
            cluster,
            soft,
            now: self.now(),
            wall_ms: crate::wallclock::unix_ms(),
        })
    }

    /// Check PostgreSQL parameter changes (`name -> value`) against the
    /// catalog the cluster's servers reported (`settings::review`).
    pub fn review_parameters(
        &self,
        cluster: &Cluster,
        changes: &BTreeMap<String, String>,
    ) -> settings::Review {
        self.ask(cluster, |input| {
            let reported: BTreeMap<_, _> = input
                .soft
                .settings
                .iter()
                .filter(|(node, _)| cluster.members.contains_key(*node))
                .map(|(node, s)| (node.clone(), s.clone()))
                .collect();
            settings::review(changes, &reported, cluster.primary.as_deref())
        })
    }

    /// Refuse a switchover that cannot work before it is committed
    /// (`decide::check_switchover`).
    pub fn check_switchover(&self, cluster: &Cluster, to: Option<&str>) -> Result<(), NodeError> {
        self.ask(cluster, |input| decide::check_switchover(input, to))
            .map_err(NodeError::Rejected)
    }

    /// Refuse to remove a node that is not gone
    /// (`decide::check_node_removal`); the command that removes it.
    pub fn check_node_removal(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<crate::cluster::ClusterCommand, NodeError> {
        self.ask(cluster, |input| decide::check_node_removal(input, name))
            .map_err(NodeError::Rejected)
    }

    /// A removed cluster's reports, waits and announcements go with it
    /// (called once its removal is committed; a later leader starts
    /// without them anyway).
    pub fn forget_cluster(&self, name: &str) {
        let mut l = self.lock();
        l.clusters.remove(name);
        l.waiting.remove(name);
        l.announced.remove(name);
        l.dirty.remove(name);
    }

    /// A removed node's reports and timers go with it (called once its
    /// removal is committed).
    pub fn forget_node(&self, cluster: &str, node: &str) {
        if let Some(soft) = self.lock().clusters.get_mut(cluster) {
            soft.forget(node);
        }
    }

    /// Refuse to forget a cluster that still runs
    /// (`decide::check_cluster_removal`); the command that forgets it.
    pub fn check_cluster_removal(
        &self,
        cluster: &Cluster,
    ) -> Result<crate::cluster::ClusterCommand, NodeError> {
        self.ask(cluster, decide::check_cluster_removal)
            .map_err(NodeError::Rejected)
    }

    /// An operator's failover to `to` (`decide::manual_failover`): waits
    /// out any lease that may still run (bounded), then commits.
    pub async fn manual_failover(
        &self,
        cluster: &Cluster,
        to: &str,
        old_primary_stopped: bool,
    ) -> Result<Applied, NodeError> {
        let deadline = Instant::now() + MANUAL_FAILOVER_WAIT;
        loop {
            let verdict = self.ask(cluster, |input| {
                decide::manual_failover(input, to, old_primary_stopped).map(|v| (v, input.now))
            });
            match verdict.map_err(NodeError::Rejected)? {
                (decide::ManualFailover::WaitUntil(at), now) => {
                    if Instant::now() >= deadline {
                        return Err(NodeError::Precondition(
                            "a lease still runs after waiting: try again".into(),
                        ));
                    }
                    let wait = Duration::from_millis(at.saturating_sub(now).max(10));
                    tokio::time::sleep(wait.min(MANUAL_FAILOVER_WAIT)).await;
                }
                (decide::ManualFailover::Promote(command), _) => {
                    let applied = self.inner.node.propose(command).await?;
                    if let Some(soft) = self.lock().clusters.get_mut(&cluster.name) {
                        soft.epoch_changed();
                    }
                    self.inner.wake.notify_one();
                    return Ok(applied);
                }
            }
        }
    }
}

/// The members of `cluster` and its failsafe setting, for its agents.
pub fn members_message(cluster: &Cluster) -> ManagerMessage {
    ManagerMessage::Members {
        members: cluster
            .members
            .values()
            .map(|m| crate::cluster::wire::Peer {
                name: m.name.clone(),
                http: m.http.clone(),
            })
            .collect(),
        failsafe: cluster.config.failsafe,
    }
}

fn new_soft(leader_since: u64) -> Soft {
    let mut soft = Soft::new(leader_since);
    // Command ids must not repeat across leaders: start somewhere random.
    soft.next_command = (rand::random::<u32>() as u64) << 16;
    soft
}

/// What the leader answers to every report.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportAnswer {
    /// The primary's latest write LSN (replica lag on the agent's side).
    pub primary_lsn: Lsn,
    /// The leader confirmed its leadership lately.
    pub quorum: bool,
    /// The reporting node is in the committed sync set.
    pub sync_standby: bool,
}
