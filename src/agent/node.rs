//! The agent's shared state: configuration, the PostgreSQL driver, the
//! lease, the persisted epoch, and the latest observation of the server.
//! Every task of the agent (session, executor, watchdog, HTTP) holds one
//! `Arc<Node>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::config::AgentConfig;
use super::lease::Lease;
use super::postgres::Postgres;
use super::state::{Intent, Persisted, StateError, StateFile};
use crate::cluster::wire::{
    AgentPhase, CommandOutcome, DataDirState, ManagedSettings, NodeReport, PgStatus, Upstream,
};
use crate::cluster::Lsn;

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
    phase: Mutex<AgentPhase>,
    last_command: Mutex<Option<CommandOutcome>>,
    observation: Mutex<Observation>,
    /// Boot-clock ms of the last observation.
    observed_at: AtomicU64,
    /// The managed settings last written to PostgreSQL's configuration.
    settings: Mutex<ManagedSettings>,
    /// The primary's latest write LSN, as the leader last told us.
    primary_lsn: AtomicU64,
    /// Wakes the reporter to send a report right away.
    pub report_now: Notify,
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
    pub fn new(config: AgentConfig, pg: Postgres) -> Result<Node, StateError> {
        let file = StateFile::new(&config.state_dir);
        let persisted = file.load()?;
        let session = rand::random::<u64>() | 1;
        let lease = Lease::load(config.state_dir.join("lease.json"), session);
        Ok(Node {
            config,
            pg,
            lease,
            session,
            seq: AtomicU64::new(0),
            file,
            persisted: Mutex::new(persisted),
            phase: Mutex::new(AgentPhase::Idle),
            last_command: Mutex::new(None),
            observation: Mutex::new(Observation::default()),
            observed_at: AtomicU64::new(0),
            settings: Mutex::new(ManagedSettings::default()),
            primary_lsn: AtomicU64::new(0),
            report_now: Notify::new(),
        })
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

    /// Change the persisted state durably.
    pub fn update(&self, f: impl FnOnce(&mut Persisted)) -> Result<(), StateError> {
        let mut p = lock(&self.persisted);
        let mut next = p.clone();
        f(&mut next);
        if next != *p {
            self.file.save(&next)?;
            *p = next;
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
        *lock(&self.phase) = phase;
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
            .store(super::clock::boot_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since PostgreSQL was last looked at.
    pub fn observation_age_ms(&self) -> u64 {
        super::clock::boot_ms().saturating_sub(self.observed_at.load(Ordering::Relaxed))
    }

    pub fn settings(&self) -> ManagedSettings {
        lock(&self.settings).clone()
    }

    pub fn set_settings(&self, settings: ManagedSettings) {
        *lock(&self.settings) = settings;
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
        };
        self.lease.sent(seq);
        report
    }

    /// The sequence number of the last report sent.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}
