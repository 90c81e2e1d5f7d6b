//! The agent's shared state: configuration, the PostgreSQL driver, the
//! lease, the persisted epoch, and the latest observation of the server.
//! Every task of the agent (session, executor, watchdog, HTTP) holds one
//! `Arc<Node>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::config::{AgentConfig, WatchdogMode};
use super::lease::Lease;
use super::postgres::{Look, Postgres};
use super::reload::Live;
use super::state::{Intent, Persisted, StateError, StateFile};
use crate::cluster::settings::ServerSettings;
use crate::cluster::wire::{
    AgentPhase, CommandOutcome, DataDirState, LeaseGrant, ManagedSettings, NodeReport, PgStatus,
    Upstream,
};
use crate::cluster::Lsn;
use crate::keeper::{rule, KeeperState, WatchdogSpec};

/// A lease change the keeper has not confirmed within this long is given
/// up (the keeper keeps enforcing what it had).
const KEEPER_PUSH_LIMIT: Duration = Duration::from_millis(500);

/// The latest look at PostgreSQL.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub postgres: Option<PgStatus>,
    pub data: DataDirState,
}

/// One agent's state, shared by its tasks.
pub struct Node {
    pub config: AgentConfig,
    pub pg: Postgres,
    pub lease: Lease,
    /// Random per process: lease grants from another process's reports are
    /// never taken for ours.
    pub session: u64,
    seq: AtomicU64,
    file: StateFile,
    persisted: Mutex<Persisted>,
    /// Held while the state file is written (see [`Node::update`]).
    saving: Mutex<()>,
    phase: Mutex<AgentPhase>,
    last_command: Mutex<Option<CommandOutcome>>,
    observation: Mutex<Observation>,
    /// Boot-clock ms of the last observation.
    observed_at: AtomicU64,
    /// Boot-clock start of the oldest look at PostgreSQL still without an
    /// answer (0: the last look got one). See [`Node::unresponsive_ms`].
    silent_since: AtomicU64,
    /// The managed settings last written to PostgreSQL's configuration.
    settings: Mutex<ManagedSettings>,
    /// The primary's latest write LSN, as the leader last told us.
    primary_lsn: AtomicU64,
    /// Wakes the reporter to send a report right away.
    pub report_now: Notify,
    /// Held while a lease change travels to the keeper, so that changes
    /// reach it in the order they were decided.
    lease_io: tokio::sync::Mutex<()>,
    /// The keeper's state as last seen (None: not reachable).
    keeper: Mutex<Option<KeeperState>>,
    /// The ttl of the latest lease grant (sizes the watchdog timeout).
    lease_ttl_ms: AtomicU64,
    /// A release the keeper did not take yet: retried on every keeper look,
    /// or the keeper would stop a replica at a stale deadline.
    release_pending: std::sync::atomic::AtomicBool,
    /// The keeper last seen can stand as the commit gate.
    keeper_gates: std::sync::atomic::AtomicBool,
    /// The leader's last answer counted this node in the sync set.
    sync_standby: std::sync::atomic::AtomicBool,
    /// The keeper's pid and fence count as the keeper watch last saw them.
    fences_seen: Mutex<Option<(u32, u64)>>,
    /// Boot-clock ms when this agent process started, if a previous process
    /// may have given a failsafe promise (failsafe on, a replica): no
    /// promotion for a ttl + margin after that.
    started_at: Option<u64>,
    /// Boot-clock ms of the latest message from a leader (0: none yet).
    leader_contact: AtomicU64,
    /// The report interval the leader asked for.
    heartbeat_ms: AtomicU64,
    /// A failsafe promise given: to whom, for which epoch, until when.
    promise: Mutex<Option<Promise>>,
    /// Failsafe mode as the primary: `None` when not in it; otherwise the
    /// extended deadline, or why the peers did not all promise.
    failsafe: Mutex<Option<Result<u64, String>>>,
    /// The running server's parameter catalog (None until read, and again
    /// once the server stops: a restart may load an extension), numbered
    /// so that a session sends each one once.
    server_settings: Mutex<Option<(u64, Arc<ServerSettings>)>>,
    settings_generation: AtomicU64,
    /// What a configuration reload (SIGHUP) can change while running.
    live: Mutex<Live>,
    /// Node parameters changed: the configuration is to be written again.
    wants_config: std::sync::atomic::AtomicBool,
    /// The postmaster whose restart would load copied slots (see
    /// `agent::slots`); a request about an earlier server means nothing.
    restart_for_slots: Mutex<Option<i32>>,
    /// Times this process entered the fenced phase (for the history).
    fences: std::sync::atomic::AtomicU64,
}

/// A failsafe promise this node gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promise {
    pub to: String,
    pub epoch: u64,
    /// Boot-clock ms.
    pub until: u64,
}

/// A command of an older epoch than one already seen.
#[derive(Debug, thiserror::Error)]
#[error("stale epoch {got}: this node has seen epoch {seen}")]
pub struct StaleEpoch {
    pub got: u64,
    pub seen: u64,
}

use crate::lock::lock;

impl Node {
    /// The agent's state; `keeper` is what the node's keeper holds now
    /// (a lease a previous agent process obtained keeps running).
    pub fn new(config: AgentConfig, pg: Postgres, keeper: KeeperState) -> Result<Node, StateError> {
        let file = StateFile::new(&config.state_dir);
        let persisted = file.load()?;
        let (persisted_failsafe, persisted_intent) = (persisted.failsafe, persisted.intent);
        let session = rand::random::<u64>() | 1;
        // Fences of this keeper not noticed by an agent yet are news; with
        // no record (state from before it was kept), none are.
        let fences_seen = match persisted.keeper_fences {
            Some((pid, fences)) if pid == keeper.pid => (pid, fences),
            Some(_) => (keeper.pid, 0),
            None => (keeper.pid, keeper.fences),
        };
        let lease = Lease::new(session, keeper.lease);
        let live = Mutex::new(Live::of(&config));
        Ok(Node {
            config,
            pg,
            lease,
            session,
            seq: AtomicU64::new(0),
            file,
            persisted: Mutex::new(persisted),
            saving: Mutex::new(()),
            phase: Mutex::new(AgentPhase::Idle),
            last_command: Mutex::new(None),
            observation: Mutex::new(Observation::default()),
            observed_at: AtomicU64::new(0),
            silent_since: AtomicU64::new(0),
            settings: Mutex::new(ManagedSettings::default()),
            primary_lsn: AtomicU64::new(0),
            report_now: Notify::new(),
            lease_io: tokio::sync::Mutex::new(()),
            fences_seen: Mutex::new(Some(fences_seen)),
            keeper: Mutex::new(Some(keeper)),
            lease_ttl_ms: AtomicU64::new(0),
            release_pending: std::sync::atomic::AtomicBool::new(false),
            keeper_gates: std::sync::atomic::AtomicBool::new(false),
            sync_standby: std::sync::atomic::AtomicBool::new(false),
            started_at: (persisted_failsafe && persisted_intent == Intent::Replica)
                .then(crate::boottime::boot_ms),
            leader_contact: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(250),
            promise: Mutex::new(None),
            failsafe: Mutex::new(None),
            server_settings: Mutex::new(None),
            settings_generation: AtomicU64::new(0),
            live,
            wants_config: std::sync::atomic::AtomicBool::new(false),
            restart_for_slots: Mutex::new(None),
            fences: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A message from the leader arrived.
    pub fn heard_leader(&self) {
        self.leader_contact
            .store(crate::boottime::boot_ms(), Ordering::Relaxed);
    }

    /// The leader's report interval.
    pub fn set_heartbeat(&self, interval: Duration) {
        self.heartbeat_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed).max(50))
    }

    /// How long the leader may stay silent before it counts as gone: the
    /// leader answers every report at once.
    pub fn leader_silence_limit(&self) -> Duration {
        (self.heartbeat() * 2).max(Duration::from_millis(400))
    }

    /// The session with a leader works (it answered lately).
    pub fn leader_reachable(&self) -> bool {
        let at = self.leader_contact.load(Ordering::Relaxed);
        at > 0
            && crate::boottime::boot_ms().saturating_sub(at)
                <= self.leader_silence_limit().as_millis() as u64
    }

    /// The lease ttl as last granted (the default before any grant).
    pub fn ttl_ms(&self) -> u64 {
        match self.lease_ttl_ms.load(Ordering::Relaxed) {
            0 => crate::cluster::config::DynamicConfig::default().ttl_ms,
            ttl => ttl,
        }
    }

    /// Promise (failsafe) not to be made writable for `ms` from now.
    pub fn promise(&self, to: &str, epoch: u64, ms: u64) {
        let until = crate::boottime::boot_ms() + ms;
        let mut p = crate::lock::lock(&self.promise);
        let until = p.as_ref().map_or(until, |old| old.until.max(until));
        if p.as_ref().is_none_or(|old| old.to != to) {
            tracing::warn!(
                to,
                epoch,
                ms,
                "failsafe: promised to follow the primary and not to be made writable"
            );
        }
        *p = Some(Promise {
            to: to.to_string(),
            epoch,
            until,
        });
    }

    /// The failsafe promise still running, if any.
    pub fn promise_held(&self) -> Option<Promise> {
        let now = crate::boottime::boot_ms();
        crate::lock::lock(&self.promise)
            .clone()
            .filter(|p| p.until > now)
    }

    /// How long this node must still refuse to be made writable: a running
    /// failsafe promise, or, just after the agent started, a full ttl +
    /// margin (a promise a previous process gave is not remembered).
    pub fn holdoff_ms(&self) -> u64 {
        let now = crate::boottime::boot_ms();
        let start = self.started_at.map_or(0, |at| {
            (at + self.ttl_ms() + super::failsafe::MARGIN_MS).saturating_sub(now)
        });
        let promise = self
            .promise_held()
            .map_or(0, |p| p.until.saturating_sub(now));
        start.max(promise)
    }

    /// Failsafe mode as the primary (None: not in it).
    pub fn set_failsafe(&self, state: Option<Result<u64, String>>) {
        let mut f = crate::lock::lock(&self.failsafe);
        match (&*f, &state) {
            (Some(Ok(_)), Some(Ok(_))) | (None, None) => {}
            (_, Some(Ok(until))) => {
                tracing::warn!(
                    until,
                    "failsafe: no manager leader, every other node promised: the lease is extended"
                )
            }
            (_, Some(Err(why))) if f.as_ref() != Some(&Err(why.clone())) => {
                tracing::warn!(%why, "failsafe: no manager leader and no promise from every node: the lease is not extended")
            }
            (Some(_), None) => tracing::info!("failsafe mode over"),
            _ => {}
        }
        *f = state;
    }

    pub fn failsafe(&self) -> Option<Result<u64, String>> {
        crate::lock::lock(&self.failsafe).clone()
    }

    /// Extend the keeper's lease (failsafe): only ever later, same epoch.
    pub async fn extend_lease(&self, next: rule::Lease) {
        let _io = self.lease_io.lock().await;
        let later = match (self.lease.held(), next) {
            (
                rule::Lease::Until { epoch, deadline },
                rule::Lease::Until {
                    epoch: e,
                    deadline: d,
                },
            ) => epoch == e && d > deadline,
            _ => false,
        };
        if later {
            self.push_lease(next).await;
        }
    }

    /// Take in a lease grant: the keeper holds the new lease once this
    /// returns (if the grant counts and the keeper answered).
    pub async fn apply_grant(&self, grant: &LeaseGrant) {
        let _io = self.lease_io.lock().await;
        self.lease_ttl_ms.store(grant.ttl_ms, Ordering::Relaxed);
        if self.lease.keep_early(grant, self.epoch()) {
            return;
        }
        if let Some(next) = self.lease.grant(grant, self.epoch()) {
            if let Some(state) = self.push_lease(next).await {
                if state.lease == next {
                    self.lease.confirm_grant(next, grant.seq);
                }
            }
        }
    }

    /// Apply the grant that came ahead of the epoch just taken on (see
    /// [`Lease::keep_early`]).
    pub async fn apply_early_grant(&self) {
        if let Some(grant) = self.lease.take_early(self.epoch()) {
            self.apply_grant(&grant).await;
        }
    }

    /// Give the lease up: the keeper stops enforcing it (a replica or a
    /// stopped node must not be fenced at an old deadline), and no grant
    /// for a report sent so far will count.
    pub async fn release_lease(&self) {
        let _io = self.lease_io.lock().await;
        self.lease.release(self.last_seq());
        let taken = self.push_lease(rule::Lease::None).await.is_some();
        self.release_pending.store(!taken, Ordering::SeqCst);
        // Whether or not the keeper answered, this agent holds no lease.
        self.lease.confirm(rule::Lease::None);
    }

    /// Have the keeper hold `next`; its state when it answered.
    async fn push_lease(&self, next: rule::Lease) -> Option<KeeperState> {
        let watchdog = self.watchdog_spec();
        match tokio::time::timeout(
            KEEPER_PUSH_LIMIT,
            self.pg.keeper().set_lease(next, watchdog),
        )
        .await
        {
            Ok(Ok(state)) => {
                self.seen_keeper(state.clone());
                Some(state)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = ?next, "the keeper did not take the lease");
                None
            }
            Err(_) => {
                tracing::warn!(lease = ?next, "the keeper did not answer in time");
                None
            }
        }
    }

    /// Ask the keeper how it is (and retry a release it did not take);
    /// returns its state, and how many fences it carried out since the
    /// last look.
    pub async fn sync_keeper(&self) -> Option<(KeeperState, u64)> {
        let _io = self.lease_io.lock().await;
        if self.release_pending.load(Ordering::SeqCst)
            && self.push_lease(rule::Lease::None).await.is_some()
        {
            self.release_pending.store(false, Ordering::SeqCst);
        }
        match tokio::time::timeout(KEEPER_PUSH_LIMIT, self.pg.keeper().status()).await {
            Ok(Ok(state)) => {
                let mut seen = crate::lock::lock(&self.fences_seen);
                let new_fences = match *seen {
                    Some((pid, fences)) if pid == state.pid => state.fences.saturating_sub(fences),
                    // A new keeper: every fence it counts is news.
                    _ => state.fences,
                };
                *seen = Some((state.pid, state.fences));
                drop(seen);
                self.seen_keeper(state.clone());
                Some((state, new_fences))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "keeper unreachable");
                *crate::lock::lock(&self.keeper) = None;
                None
            }
            Err(_) => {
                tracing::warn!("keeper did not answer in time");
                None
            }
        }
    }

    fn seen_keeper(&self, state: KeeperState) {
        self.lease.confirm(state.lease);
        let gates = state.gate.as_ref().is_some_and(|g| g.configured);
        self.keeper_gates.store(gates, Ordering::Relaxed);
        *crate::lock::lock(&self.keeper) = Some(state);
    }

    /// The keeper's state as last seen.
    pub fn keeper_state(&self) -> Option<KeeperState> {
        crate::lock::lock(&self.keeper).clone()
    }

    /// Can the keeper stand as the commit gate? Not one started by a
    /// pgquorum from before the gate (it reports none). Sticky: a keeper
    /// that stops answering for a while still has its gate.
    pub fn keeper_gates(&self) -> bool {
        self.keeper_gates.load(Ordering::Relaxed)
    }

    /// The watchdog the keeper should arm with the lease, if any.
    pub fn watchdog_spec(&self) -> Option<WatchdogSpec> {
        if self.config.watchdog == WatchdogMode::Off {
            return None;
        }
        Some(WatchdogSpec {
            device: self.config.watchdog_device.clone(),
            timeout_s: rule::watchdog_timeout_s(self.ttl_ms())?,
        })
    }

    /// May this node act as a primary as far as the watchdog goes? With
    /// `watchdog = "required"` only while the keeper has it armed.
    pub fn watchdog_ready(&self) -> Result<(), String> {
        if self.config.watchdog != WatchdogMode::Required {
            return Ok(());
        }
        let state = self.keeper_state();
        match state.as_ref().map(|k| &k.watchdog) {
            Some(w) if w.armed => Ok(()),
            Some(w) => Err(format!(
                "watchdog = \"required\" but the watchdog {} is not armed{}",
                self.config.watchdog_device.display(),
                w.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            None => Err("watchdog = \"required\" but the keeper is unreachable".into()),
        }
    }

    pub fn persisted(&self) -> Persisted {
        lock(&self.persisted).clone()
    }

    pub fn epoch(&self) -> u64 {
        lock(&self.persisted).epoch
    }

    pub fn intent(&self) -> Intent {
        lock(&self.persisted).intent
    }

    /// Change the persisted state durably. Writers take turns on
    /// `saving`, held across the fsync; readers (the lease path among them)
    /// only ever wait for the in-memory copy, never for the disk.
    pub fn update(&self, f: impl FnOnce(&mut Persisted)) -> Result<(), StateError> {
        let _turn = lock(&self.saving);
        let mut next = self.persisted();
        f(&mut next);
        if next != self.persisted() {
            self.file.save(&next)?;
            *lock(&self.persisted) = next;
        }
        Ok(())
    }

    /// Accept a command of `epoch`: refuse older epochs, persist a newer one
    /// before anything is done under it.
    pub fn accept_epoch(&self, epoch: u64) -> Result<(), anyhow::Error> {
        let seen = self.epoch();
        if epoch < seen {
            return Err(StaleEpoch { got: epoch, seen }.into());
        }
        if epoch > seen {
            self.update(|p| p.epoch = epoch)?;
            tracing::info!(epoch, "new epoch");
        }
        Ok(())
    }

    pub fn phase(&self) -> AgentPhase {
        *lock(&self.phase)
    }

    pub fn set_phase(&self, phase: AgentPhase) {
        let previous = std::mem::replace(&mut *lock(&self.phase), phase);
        if phase == AgentPhase::Fenced && previous != AgentPhase::Fenced {
            self.fences.fetch_add(1, Ordering::Relaxed);
        }
        self.report_now.notify_one();
    }

    pub fn finish(&self, outcome: CommandOutcome) {
        *lock(&self.last_command) = Some(outcome);
        self.report_now.notify_one();
    }

    pub fn observation(&self) -> Observation {
        lock(&self.observation).clone()
    }

    pub fn set_observation(&self, o: Observation) {
        *lock(&self.observation) = o;
        self.observed_at
            .store(crate::boottime::boot_ms(), Ordering::Relaxed);
    }

    /// A look at PostgreSQL begins.
    pub fn look_started(&self) {
        let now = crate::boottime::boot_ms().max(1);
        let _ = self
            .silent_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A look ended: anything but silence means the server (or its
    /// absence) answers.
    pub fn look_ended(&self, look: &Look) {
        if *look != Look::Silent {
            self.silent_since.store(0, Ordering::Relaxed);
        }
    }

    /// How long a look at PostgreSQL has gone without any answer, not even
    /// a refusal (a look cut short counts: the reporter gives up after a
    /// moment and reports the last picture, which a frozen server keeps
    /// looking healthy in). The leader stops renewing a primary's lease
    /// past `primary_unresponsive_timeout`.
    pub fn unresponsive_ms(&self) -> u64 {
        match self.silent_since.load(Ordering::Relaxed) {
            0 => 0,
            since => crate::boottime::boot_ms().saturating_sub(since),
        }
    }

    /// Milliseconds since PostgreSQL was last looked at.
    pub fn observation_age_ms(&self) -> u64 {
        crate::boottime::boot_ms().saturating_sub(self.observed_at.load(Ordering::Relaxed))
    }

    pub fn settings(&self) -> ManagedSettings {
        lock(&self.settings).clone()
    }

    pub fn set_settings(&self, settings: ManagedSettings) {
        *lock(&self.settings) = settings;
    }

    /// The leader counts this node in the committed sync set.
    pub fn set_sync_standby(&self, yes: bool) {
        self.sync_standby.store(yes, Ordering::Relaxed);
    }

    pub fn sync_standby(&self) -> bool {
        self.sync_standby.load(Ordering::Relaxed)
    }

    pub fn set_primary_lsn(&self, lsn: Lsn) {
        self.primary_lsn.store(lsn.0, Ordering::Relaxed);
    }

    pub fn primary_lsn(&self) -> Lsn {
        Lsn(self.primary_lsn.load(Ordering::Relaxed))
    }

    /// Milliseconds of lease left in the current epoch.
    pub fn lease_remaining(&self) -> u64 {
        self.lease.remaining(self.epoch())
    }

    /// This node is the primary of its epoch, runs writable, and holds a
    /// valid lease: the only state in which `/primary` says yes.
    pub fn is_leased_primary(&self) -> bool {
        self.intent() == Intent::Primary
            && self.lease_remaining() > 0
            && self
                .observation()
                .postgres
                .is_some_and(|pg| !pg.in_recovery)
    }

    /// The next report, stamped with a fresh sequence number whose send
    /// time the lease remembers.
    pub fn next_report(&self) -> NodeReport {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let p = self.persisted();
        let o = self.observation();
        let report = NodeReport {
            cluster: self.config.cluster.clone(),
            node: self.config.name.clone(),
            seq,
            session: self.session,
            epoch: p.epoch,
            phase: self.phase(),
            data: o.data,
            postgres: o.postgres,
            wants_lease: p.intent == Intent::Primary,
            holds_lease: self.lease.remaining(p.epoch) > 0,
            last_command: lock(&self.last_command).clone(),
            completed_action: p.completed_action,
            config_version: p.config_version,
            upstream: p.upstream.as_ref().map(|u: &Upstream| u.node.clone()),
            lease_open: matches!(self.lease.held(), rule::Lease::Open { .. }),
            lease_seq: self.lease.held_seq(),
            promise_ms: self.holdoff_ms(),
            unresponsive_ms: self.unresponsive_ms(),
            commit_gate: self.keeper_gates(),
            settings: None,
            wants_config: self.wants_config.load(Ordering::Relaxed),
            restart_to_load_slots: lock(&self.restart_for_slots)
                .is_some_and(|pid| Some(pid) == self.pg.postmaster_pid()),
            fences: self.fences.load(Ordering::Relaxed),
        };
        self.lease.sent(seq);
        report
    }

    /// Ask the leader to restart this server (`Some(its postmaster)`), which
    /// loads copied slots; `None` when there is nothing to load.
    pub fn set_restart_to_load_slots(&self, postmaster: Option<i32>) {
        *lock(&self.restart_for_slots) = postmaster;
    }

    /// Ask the leader for the configuration (set by a reload, cleared once
    /// the configuration was written).
    pub fn set_wants_config(&self, yes: bool) {
        self.wants_config.store(yes, Ordering::Relaxed);
    }

    /// Tags, node parameters and callbacks as last (re)loaded.
    pub fn live(&self) -> Live {
        lock(&self.live).clone()
    }

    pub fn set_live(&self, live: Live) {
        *lock(&self.live) = live;
    }

    /// The server's parameter catalog and its number, if read.
    pub fn server_settings(&self) -> Option<(u64, Arc<ServerSettings>)> {
        lock(&self.server_settings).clone()
    }

    pub fn set_server_settings(&self, settings: Option<ServerSettings>) {
        let numbered = settings.map(|s| {
            let n = self.settings_generation.fetch_add(1, Ordering::Relaxed) + 1;
            (n, Arc::new(s))
        });
        *lock(&self.server_settings) = numbered;
    }

    /// The sequence number of the last report sent.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}
