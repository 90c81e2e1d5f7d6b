//! The agent's decisions, pure: what a command means in the node's current
//! state, one step at a time.
//!
//! An [`Execution`] is a small program per command. [`Execution::next_step`]
//! says what to do now ([`Step`]); the shell (`executor.rs`, or the
//! simulation in `tests/sim`) carries the step out — PostgreSQL, disk, the
//! keeper, time — and hands the result back with [`Execution::outcome`].
//! Facts about the node come in the same way: the program asks for a fresh
//! [`Step::Look`] wherever it decides on them. Nothing here does I/O or
//! reads a clock, so the simulation runs exactly this code.
//!
//! The rules worth knowing, each in one place:
//! * a command of an older epoch is refused; a newer epoch is persisted
//!   before anything is done under it;
//! * nothing is made writable while a failsafe promise runs
//!   ([`Facts::holdoff_ms`]), nor without a valid lease (and, with
//!   `watchdog = "required"`, an armed watchdog): [`Step::AwaitLease`];
//! * a writable server told to follow is fenced before its lease is given
//!   up;
//! * a rewind that fails is replaced by a clone only when re-cloning is on
//!   and the source is reachable: a valid copy is never wiped for nothing;
//! * a replica is stopped to rejoin only when its upstream answers, and a
//!   stopped replica's copy whose source is out of reach runs again as a
//!   standby, untouched (only a running replica can be promoted);
//! * the primary's sync names are in place (and reloaded) before
//!   `pg_promote()`.

use super::callbacks::Event;
use super::postgres::RewindOutcome;
use super::state::{Intent, Persisted};
use crate::cluster::wire::{
    Action, AgentCommand, AgentPhase, DataDirState, ManagedSettings, PgStatus, Upstream,
};

/// What the agent knows about its node when it looks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Highest epoch seen (persisted).
    pub epoch: u64,
    pub intent: Intent,
    /// The upstream as persisted.
    pub upstream: Option<Upstream>,
    pub phase: AgentPhase,
    /// A postmaster runs (it may not answer).
    pub running: bool,
    /// What PostgreSQL answered (`None`: down or not answering).
    pub postgres: Option<PgStatus>,
    /// The data directory (meaningful when PostgreSQL is down).
    pub data: DataDirState,
    /// A running postmaster the keeper did not start (no parent-death
    /// signal): restarted under the keeper before it becomes writable.
    pub unsupervised: bool,
    /// How long this node must still refuse to be made writable
    /// (failsafe promise, or an agent just started).
    pub holdoff_ms: u64,
    /// The managed settings last written (for detach and reinit).
    pub settings: ManagedSettings,
}

impl Facts {
    fn writable(&self) -> bool {
        self.postgres.as_ref().is_some_and(|pg| !pg.in_recovery)
    }
}

/// A durable change of the agent's state (`agent-state.json`).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Epoch(u64),
    /// The primary of the current epoch, configuration version applied.
    Primary {
        config_version: u64,
    },
    /// A replica of `upstream`; the configuration version when known.
    Replica {
        upstream: Upstream,
        config_version: Option<u64>,
    },
    /// No role (stopped on command).
    NoRole,
    /// Not streaming from anybody (detached).
    NoUpstream,
    ConfigVersion(u64),
    CompletedAction(u64),
}

impl Change {
    /// Apply the change to the persisted state (the shell then writes it).
    pub fn apply(self, p: &mut Persisted) {
        match self {
            Change::Epoch(epoch) => p.epoch = epoch,
            Change::Primary { config_version } => {
                p.intent = Intent::Primary;
                p.upstream = None;
                p.config_version = config_version;
            }
            Change::Replica {
                upstream,
                config_version,
            } => {
                p.intent = Intent::Replica;
                p.upstream = Some(upstream);
                if let Some(v) = config_version {
                    p.config_version = v;
                }
            }
            Change::NoRole => p.intent = Intent::None,
            Change::NoUpstream => p.upstream = None,
            Change::ConfigVersion(v) => p.config_version = v,
            Change::CompletedAction(id) => p.completed_action = Some(id),
        }
    }
}

/// One thing for the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Look at the node: answer with [`Outcome::Looked`].
    Look,
    Persist(Change),
    /// Want the lease from now on (persist intent Primary, report now).
    ClaimLease,
    /// Wait (bounded, ~2 s) until the lease is valid beyond the fence lead
    /// and the watchdog allows acting as primary: [`Outcome::Ok`], or
    /// [`Outcome::Failed`] with the reason.
    AwaitLease,
    /// Give the lease up (the keeper stops enforcing it).
    ReleaseLease,
    Phase(AgentPhase),
    /// Create a new cluster in the empty data directory: initdb, or the
    /// operator's bootstrap command.
    Initdb,
    WriteConfig {
        settings: ManagedSettings,
        upstream: Option<Upstream>,
    },
    SetStandby(bool),
    Start,
    StopFast,
    StopImmediate,
    Restart,
    Reload,
    /// Re-read the agent's configuration file and apply what may change
    /// while running (`agent::reload`).
    ReloadAgent,
    /// `pg_promote()` and wait until out of recovery.
    Promote,
    Checkpoint,
    Fence,
    /// Bring a crashed data directory to a clean shutdown.
    CrashRecover,
    /// pg_rewind from the upstream: [`Outcome::Rewound`].
    Rewind(Upstream),
    /// Create a copy of the upstream in the empty data directory: the
    /// configured replica methods in order (pg_basebackup by default).
    Clone(Upstream),
    Wipe,
    /// Can the upstream's PostgreSQL be reached? [`Outcome::Yes`]/`No`.
    IsReachable(Upstream),
    /// Wait (bounded, 5 s) until streaming from the upstream: `Yes`/`No`.
    WaitStreaming(Upstream),
    /// Once the new primary takes writes (a restored backup ends archive
    /// recovery first), create the replication role.
    EnsureReplicationRole,
    /// A user callback, fired and forgotten.
    Callback(Event, &'static str),
    /// The command is over.
    Done(Result<String, String>),
}

/// What came of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    Looked(Box<Facts>),
    Rewound(RewindOutcome),
    Yes,
    No,
    Failed(String),
}

/// Which program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Admit,
    Bootstrap,
    StartPrimary,
    Promote,
    Follow,
    Rejoin,
    Demote,
    Detach,
    Reinit,
    Fence,
    Restart,
    Configure,
    Reload,
}

/// One command under way.
#[derive(Debug, Clone)]
pub struct Execution {
    command: AgentCommand,
    program: Program,
    pc: u16,
    facts: Facts,
    /// The upstream persisted when the command began (follow).
    previous_upstream: Option<Upstream>,
    /// The last step's outcome.
    last: Option<Outcome>,
    /// The last step's failure ends the command (most do).
    fatal: bool,
    message: String,
    /// The settings a rejoin writes (follow: the command's; reinit: the
    /// node's without sync names).
    rejoin_settings: ManagedSettings,
    rejoin_reclone: bool,
    /// Where a rejoin returns to when done (reinit records its action).
    after_rejoin: Option<Program>,
}

/// A step that moves to `pc` next.
macro_rules! then {
    ($self:ident, $pc:expr, $step:expr) => {{
        $self.pc = $pc;
        $self.fatal = true;
        return $step;
    }};
}

/// A step whose failure does not end the command.
macro_rules! then_tolerant {
    ($self:ident, $pc:expr, $step:expr) => {{
        $self.pc = $pc;
        $self.fatal = false;
        return $step;
    }};
}

impl Execution {
    pub fn new(command: AgentCommand) -> Execution {
        Execution {
            command,
            program: Program::Admit,
            pc: 0,
            facts: Facts::default(),
            previous_upstream: None,
            last: None,
            fatal: true,
            message: String::new(),
            rejoin_settings: ManagedSettings::default(),
            rejoin_reclone: false,
            after_rejoin: None,
        }
    }

    pub fn command(&self) -> &AgentCommand {
        &self.command
    }

    /// The result of the step [`Execution::next_step`] gave last.
    pub fn outcome(&mut self, outcome: Outcome) {
        if let Outcome::Looked(f) = &outcome {
            self.facts = (**f).clone();
        }
        self.last = Some(outcome);
    }

    fn failed(&self) -> Option<String> {
        match &self.last {
            Some(Outcome::Failed(m)) => Some(m.clone()),
            _ => None,
        }
    }

    fn jump(&mut self, program: Program, pc: u16) {
        self.program = program;
        self.pc = pc;
        self.last = None;
    }

    /// What to do now.
    pub fn next_step(&mut self) -> Step {
        if self.fatal {
            if let Some(m) = self.failed() {
                return Step::Done(Err(m));
            }
        }
        self.fatal = true;
        // Each program returns its step, or jumps (then runs again).
        for _ in 0..64 {
            let step = match self.program {
                Program::Admit => self.admit(),
                Program::Bootstrap => self.bootstrap(),
                Program::StartPrimary => self.start_primary(),
                Program::Promote => self.promote(),
                Program::Follow => self.follow(),
                Program::Rejoin => self.rejoin(),
                Program::Demote => self.demote(),
                Program::Detach => self.detach(),
                Program::Reinit => self.reinit(),
                Program::Fence => self.fence(),
                Program::Restart => self.restart(),
                Program::Configure => self.configure(),
                Program::Reload => self.reload(),
            };
            if let Some(step) = step {
                return step;
            }
        }
        Step::Done(Err(
            "internal: the command's program does not advance".into()
        ))
    }

    fn settings(&self) -> ManagedSettings {
        match &self.command.action {
            Action::Bootstrap { settings }
            | Action::StartPrimary { settings }
            | Action::Promote { settings }
            | Action::Follow { settings, .. }
            | Action::Configure { settings } => settings.clone(),
            _ => ManagedSettings::default(),
        }
    }

    /// Refuse stale epochs and promised nodes; persist a newer epoch.
    fn admit(&mut self) -> Option<Step> {
        match self.pc {
            0 => then!(self, 1, Some(Step::Look)),
            1 => {
                let makes_writable = matches!(
                    self.command.action,
                    Action::Bootstrap { .. } | Action::StartPrimary { .. } | Action::Promote { .. }
                );
                if makes_writable && self.facts.holdoff_ms > 0 {
                    return Some(Step::Done(Err(format!(
                        "failsafe: this node promised not to be made writable for another {} ms",
                        self.facts.holdoff_ms
                    ))));
                }
                let seen = self.facts.epoch;
                if self.command.epoch < seen {
                    return Some(Step::Done(Err(format!(
                        "stale epoch {}: this node has seen epoch {seen}",
                        self.command.epoch
                    ))));
                }
                self.previous_upstream = self.facts.upstream.clone();
                if self.command.epoch > seen {
                    then!(
                        self,
                        2,
                        Some(Step::Persist(Change::Epoch(self.command.epoch)))
                    );
                }
                self.pc = 2;
                None
            }
            _ => {
                let program = match &self.command.action {
                    Action::Bootstrap { .. } => Program::Bootstrap,
                    Action::StartPrimary { .. } => Program::StartPrimary,
                    Action::Promote { .. } => Program::Promote,
                    Action::Follow { .. } => Program::Follow,
                    Action::Demote => Program::Demote,
                    Action::Detach => Program::Detach,
                    Action::Reinit { .. } => Program::Reinit,
                    Action::Fence { .. } => Program::Fence,
                    Action::Restart { .. } => Program::Restart,
                    Action::Configure { .. } => Program::Configure,
                    Action::Reload { .. } => Program::Reload,
                };
                self.jump(program, 0);
                None
            }
        }
    }

    fn bootstrap(&mut self) -> Option<Step> {
        let settings = self.settings();
        match self.pc {
            0 => {
                if self.facts.writable() {
                    self.message = "already running as primary".into();
                    then!(
                        self,
                        100,
                        Some(Step::Persist(Change::Primary {
                            config_version: settings.config_version
                        }))
                    );
                }
                then!(self, 1, Some(Step::ClaimLease))
            }
            1 => then!(self, 2, Some(Step::AwaitLease)),
            2 => then!(self, 3, Some(Step::Phase(AgentPhase::Bootstrapping))),
            3 => then!(self, 4, Some(Step::Look)),
            4 => match &self.facts.data {
                DataDirState::Foreign { reason } => Some(Step::Done(Err(format!(
                    "refusing to bootstrap: the data directory is not a PostgreSQL data directory ({reason})"
                )))),
                DataDirState::Empty => {
                    self.message = "initialized a new database".into();
                    then!(self, 5, Some(Step::Initdb))
                }
                DataDirState::Valid { .. } => {
                    self.message = "adopted the existing data directory".into();
                    self.pc = 5;
                    None
                }
            },
            5 => then!(
                self,
                6,
                Some(Step::Persist(Change::Primary {
                    config_version: settings.config_version
                }))
            ),
            6 => then!(
                self,
                7,
                Some(Step::WriteConfig {
                    settings,
                    upstream: None
                })
            ),
            7 => then!(self, 8, Some(Step::SetStandby(false))),
            8 => then!(self, 9, Some(Step::Phase(AgentPhase::Starting))),
            9 => then!(self, 10, Some(Step::AwaitLease)),
            10 => then!(self, 11, Some(Step::Start)),
            11 => then!(self, 12, Some(Step::EnsureReplicationRole)),
            12 => then!(self, 13, Some(Step::Callback(Event::Start, "primary"))),
            13 => then!(self, 100, Some(Step::Callback(Event::RoleChange, "primary"))),
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    fn start_primary(&mut self) -> Option<Step> {
        let settings = self.settings();
        let primary = Change::Primary {
            config_version: settings.config_version,
        };
        match self.pc {
            0 => {
                if self.facts.writable() {
                    self.message = "already running".into();
                    then!(self, 100, Some(Step::Persist(primary)));
                }
                if self.facts.postgres.is_some() {
                    // A standby: promote it.
                    self.jump(Program::Promote, 0);
                    return None;
                }
                then!(self, 1, Some(Step::ClaimLease))
            }
            1 => then!(self, 2, Some(Step::AwaitLease)),
            2 => then!(self, 3, Some(Step::Look)),
            3 => {
                if !matches!(self.facts.data, DataDirState::Valid { .. }) {
                    return Some(Step::Done(Err(
                        "no usable data directory to start the primary from".into(),
                    )));
                }
                then!(self, 4, Some(Step::Persist(primary)))
            }
            4 => then!(
                self,
                5,
                Some(Step::WriteConfig {
                    settings,
                    upstream: None
                })
            ),
            5 => then!(self, 6, Some(Step::Phase(AgentPhase::Starting))),
            6 => then!(self, 7, Some(Step::Start)),
            7 => {
                if matches!(self.facts.data, DataDirState::Valid { standby: true, .. }) {
                    // Never start a former standby as a primary on its old
                    // timeline: promote it onto a timeline of its own.
                    self.jump(Program::Promote, 0);
                    return None;
                }
                self.message = "started as primary".into();
                then!(self, 100, Some(Step::Callback(Event::Start, "primary")))
            }
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    fn promote(&mut self) -> Option<Step> {
        let settings = self.settings();
        let primary = Change::Primary {
            config_version: settings.config_version,
        };
        match self.pc {
            0 => then!(self, 1, Some(Step::AwaitLease)),
            1 => then!(self, 2, Some(Step::Phase(AgentPhase::Promoting))),
            2 => then!(self, 3, Some(Step::Look)),
            3 => {
                if self.facts.running && self.facts.unsupervised {
                    // A server the keeper did not start (an older
                    // pgquorum's, or one started by hand) has no
                    // parent-death signal: restart it under the keeper.
                    then!(self, 4, Some(Step::StopFast));
                }
                // Nothing changed since the look: no second one (each is a
                // connection to PostgreSQL, on the write outage's path).
                self.pc = 5;
                None
            }
            4 => then!(self, 5, Some(Step::Look)),
            5 => {
                if self.facts.running {
                    self.pc = 9;
                    return None;
                }
                then!(
                    self,
                    6,
                    Some(Step::WriteConfig {
                        settings,
                        upstream: None
                    })
                )
            }
            6 => then!(self, 7, Some(Step::SetStandby(true))),
            7 => then!(self, 8, Some(Step::Start)),
            8 => then!(self, 9, Some(Step::Look)),
            9 => {
                if self.facts.writable() {
                    self.message = "already primary".into();
                    then!(self, 100, Some(Step::Persist(primary)));
                }
                // synchronous_standby_names is in place before the first
                // commit.
                then!(self, 10, Some(Step::Persist(primary)))
            }
            10 => then!(
                self,
                11,
                Some(Step::WriteConfig {
                    settings,
                    upstream: None
                })
            ),
            11 => then!(self, 12, Some(Step::Reload)),
            12 => then!(self, 13, Some(Step::AwaitLease)),
            13 => then!(self, 14, Some(Step::Promote)),
            // PostgreSQL 15 shows the new timeline in its control file only
            // after a checkpoint; rewinds against this node need it.
            14 => then_tolerant!(self, 15, Some(Step::Checkpoint)),
            15 => {
                self.message = "promoted".into();
                then!(
                    self,
                    100,
                    Some(Step::Callback(Event::RoleChange, "primary"))
                )
            }
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    fn follow(&mut self) -> Option<Step> {
        let Action::Follow {
            upstream,
            settings,
            reclone,
        } = self.command.action.clone()
        else {
            return Some(Step::Done(Err("internal: not a follow".into())));
        };
        match self.pc {
            0 => {
                if self.facts.writable() {
                    // A primary told to follow: stop it at once (before its
                    // lease is given up), then rejoin.
                    then!(self, 1, Some(Step::Fence));
                }
                self.pc = 1;
                None
            }
            1 => then!(self, 2, Some(Step::ReleaseLease)),
            2 => then!(
                self,
                3,
                Some(Step::Persist(Change::Replica {
                    upstream: upstream.clone(),
                    config_version: Some(settings.config_version),
                }))
            ),
            3 => {
                if self.facts.phase == AgentPhase::Fenced {
                    then!(self, 4, Some(Step::Phase(AgentPhase::Idle)));
                }
                self.pc = 4;
                None
            }
            4 => {
                self.rejoin_settings = settings.clone();
                self.rejoin_reclone = reclone;
                match &self.facts.postgres {
                    Some(pg) if pg.in_recovery => {
                        let same = self.previous_upstream.as_ref() == Some(&upstream);
                        if same && streams_from(pg, &upstream) {
                            return Some(Step::Done(Ok(format!(
                                "already streaming from {}",
                                upstream.node
                            ))));
                        }
                        if same {
                            // Not streaming from the upstream it has:
                            // perhaps its timeline diverged, perhaps the
                            // upstream is down (step 12). Not busy while
                            // that is found out: it stays a candidate.
                            self.pc = 12;
                            return None;
                        }
                        // Busy until it streams from the new upstream, so
                        // that nobody takes it for an idle replica.
                        then!(self, 5, Some(Step::Phase(AgentPhase::Starting)))
                    }
                    // A postmaster that runs but does not answer (still
                    // starting, say under an agent that was restarted
                    // meanwhile): rejoining needs it down, so stop it first
                    // rather than rewinding (or re-cloning) under it.
                    None if self.facts.running => {
                        self.pc = 9;
                        None
                    }
                    // Down, or the former primary just fenced.
                    _ => {
                        self.jump(Program::Rejoin, 0);
                        None
                    }
                }
            }
            5 => then!(
                self,
                6,
                Some(Step::WriteConfig {
                    settings,
                    upstream: Some(upstream)
                })
            ),
            6 => then!(self, 7, Some(Step::Reload)),
            7 => then!(self, 8, Some(Step::WaitStreaming(upstream))),
            8 => {
                if self.last == Some(Outcome::Yes) {
                    self.message = format!("re-pointed to {}", upstream.node);
                    then!(
                        self,
                        100,
                        Some(Step::Callback(Event::RoleChange, "replica"))
                    );
                }
                self.pc = 12;
                None
            }
            9 => then!(self, 10, Some(Step::Phase(AgentPhase::Stopping))),
            10 => then!(self, 11, Some(Step::StopFast)),
            11 => {
                self.jump(Program::Rejoin, 0);
                None
            }
            // Not streaming. Only an upstream that answers can show a
            // diverged timeline, and only one that answers can rewind or
            // re-clone this node: stopping the server for an upstream
            // that is down would leave the cluster one candidate short
            // when that upstream turns out to have failed for good.
            12 => then!(self, 13, Some(Step::IsReachable(upstream))),
            13 => {
                if self.last == Some(Outcome::Yes) {
                    self.pc = 9;
                    return None;
                }
                Some(Step::Done(Ok(format!(
                    "left running as a replica of {}, which is out of reach now",
                    upstream.node
                ))))
            }
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    /// A stopped node becomes a replica: clone when empty, rewind when it
    /// diverged (re-clone when that fails, re-cloning is on, and the source
    /// is reachable). A replica's copy whose source is out of reach runs
    /// again as a standby, untouched; a former primary's stays down.
    fn rejoin(&mut self) -> Option<Step> {
        let upstream = match &self.command.action {
            Action::Follow { upstream, .. } | Action::Reinit { upstream, .. } => upstream.clone(),
            _ => return Some(Step::Done(Err("internal: rejoin without upstream".into()))),
        };
        match self.pc {
            0 => then!(self, 1, Some(Step::Look)),
            1 => match self.facts.data.clone() {
                DataDirState::Foreign { reason } => Some(Step::Done(Err(format!(
                    "the data directory is not a PostgreSQL data directory ({reason}); not touching it"
                )))),
                DataDirState::Empty => {
                    self.message = format!("cloned from {}", upstream.node);
                    then!(self, 2, Some(Step::Phase(AgentPhase::Cloning)))
                }
                DataDirState::Valid { standby, .. } => {
                    self.message = format!("following {}", upstream.node);
                    if standby {
                        then!(self, 3, Some(Step::IsReachable(upstream)))
                    }
                    self.pc = 30;
                    None
                }
            },
            2 => then!(self, 20, Some(Step::Clone(upstream))),
            // A replica's copy (standby.signal) whose source is out of
            // reach runs again as a standby of it, untouched: down, it
            // could never be promoted should the source be gone for good;
            // up, it streams once the source answers (or is rejoined the
            // thorough way if that shows it diverged). Only before anything
            // touched it: a rewind that failed half-way leaves a directory
            // that must not run, and crash recovery is PostgreSQL's own job
            // in standby mode.
            3 => {
                if self.last == Some(Outcome::Yes) {
                    self.pc = 30;
                    return None;
                }
                self.message = format!(
                    "kept its data and runs as a replica waiting for {}, which is out of reach",
                    upstream.node
                );
                self.pc = 20;
                None
            }
            30 => {
                let clean = matches!(
                    self.facts.data,
                    DataDirState::Valid {
                        clean_shutdown: true,
                        ..
                    }
                );
                then!(
                    self,
                    if clean { 5 } else { 4 },
                    Some(Step::Phase(AgentPhase::Rewinding))
                )
            }
            // A crash-recovery failure counts as a failed rewind.
            4 => then_tolerant!(self, 41, Some(Step::CrashRecover)),
            41 => {
                if self.failed().is_some() {
                    self.pc = 6;
                    return None;
                }
                self.pc = 5;
                None
            }
            5 => then_tolerant!(self, 6, Some(Step::Rewind(upstream))),
            6 => match self.last.clone() {
                Some(Outcome::Rewound(RewindOutcome::Rewound)) => {
                    self.message = format!("rewound from {}", upstream.node);
                    self.pc = 20;
                    None
                }
                Some(Outcome::Rewound(RewindOutcome::NotNeeded)) => {
                    self.pc = 20;
                    None
                }
                Some(Outcome::Failed(e)) if self.rejoin_reclone => {
                    self.message = e;
                    then!(self, 7, Some(Step::IsReachable(upstream)))
                }
                Some(Outcome::Failed(e)) => Some(Step::Done(Err(format!(
                    "rewind (re-cloning is off): {e}"
                )))),
                _ => Some(Step::Done(Err("internal: rewind without an outcome".into()))),
            },
            7 => {
                if self.last != Some(Outcome::Yes) {
                    // Never wipe a valid copy when the source is merely out
                    // of reach: a clone could not replace it anyway. Nor
                    // start it: the failed rewind may have left it half
                    // done.
                    return Some(Step::Done(Err(format!(
                        "{}: rewind failed and {} is unreachable: keeping the data directory",
                        self.message, upstream.node
                    ))));
                }
                then!(self, 8, Some(Step::Phase(AgentPhase::Cloning)))
            }
            8 => then!(self, 9, Some(Step::Wipe)),
            9 => {
                self.message = format!(
                    "rewind failed ({}); cloned again from {}",
                    self.message, upstream.node
                );
                then!(self, 20, Some(Step::Clone(upstream)))
            }
            20 => then!(
                self,
                21,
                Some(Step::WriteConfig {
                    settings: self.rejoin_settings.clone(),
                    upstream: Some(upstream),
                })
            ),
            21 => then!(self, 22, Some(Step::SetStandby(true))),
            22 => then!(self, 23, Some(Step::Phase(AgentPhase::Starting))),
            23 => then!(self, 24, Some(Step::Start)),
            24 => then!(self, 25, Some(Step::Callback(Event::Start, "replica"))),
            25 => {
                if let Some(program) = self.after_rejoin.take() {
                    self.jump(program, 100);
                    return None;
                }
                then!(self, 100, Some(Step::Callback(Event::RoleChange, "replica")))
            }
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    fn demote(&mut self) -> Option<Step> {
        match self.pc {
            0 => {
                if !self.facts.running {
                    self.message = "already stopped".into();
                    then!(self, 10, Some(Step::ReleaseLease));
                }
                then!(self, 1, Some(Step::Phase(AgentPhase::Stopping)))
            }
            // A checkpoint while still taking writes makes the shutdown
            // checkpoint (and so the write pause) short.
            1 => then_tolerant!(self, 2, Some(Step::Checkpoint)),
            2 => then!(self, 3, Some(Step::StopFast)),
            3 => then!(self, 4, Some(Step::ReleaseLease)),
            4 => then!(self, 5, Some(Step::Persist(Change::NoRole))),
            5 => {
                self.message = "stopped cleanly for the switchover".into();
                then!(self, 100, Some(Step::Callback(Event::Stop, "demoted")))
            }
            10 => then!(self, 100, Some(Step::Persist(Change::NoRole))),
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    fn detach(&mut self) -> Option<Step> {
        match self.pc {
            0 => {
                if self.facts.upstream.is_none() {
                    return Some(Step::Done(Ok("not streaming".into())));
                }
                then!(self, 1, Some(Step::Persist(Change::NoUpstream)))
            }
            1 => {
                if !self.facts.running {
                    self.pc = 100;
                    return None;
                }
                // Without primary_conninfo the WAL receiver stops: the old
                // primary cannot collect acknowledgements from here.
                let settings = ManagedSettings {
                    synchronous_standby_names: String::new(),
                    ..self.facts.settings.clone()
                };
                then!(
                    self,
                    2,
                    Some(Step::WriteConfig {
                        settings,
                        upstream: None
                    })
                )
            }
            2 => then!(self, 100, Some(Step::Reload)),
            _ => Some(Step::Done(Ok("detached from the old primary".into()))),
        }
    }

    fn reinit(&mut self) -> Option<Step> {
        let Action::Reinit {
            upstream,
            action_id,
        } = self.command.action.clone()
        else {
            return Some(Step::Done(Err("internal: not a reinit".into())));
        };
        match self.pc {
            0 => {
                if self.facts.writable() {
                    return Some(Step::Done(Err(
                        "refusing to re-initialize a running primary".into(),
                    )));
                }
                then!(self, 1, Some(Step::ReleaseLease))
            }
            1 => then!(self, 2, Some(Step::Phase(AgentPhase::Cloning))),
            2 => then!(self, 3, Some(Step::StopImmediate)),
            3 => then!(self, 4, Some(Step::Wipe)),
            4 => then!(
                self,
                5,
                Some(Step::Persist(Change::Replica {
                    upstream,
                    config_version: None,
                }))
            ),
            5 => {
                self.rejoin_settings = ManagedSettings {
                    synchronous_standby_names: String::new(),
                    ..self.facts.settings.clone()
                };
                self.rejoin_reclone = false;
                self.after_rejoin = Some(Program::Reinit);
                self.jump(Program::Rejoin, 0);
                None
            }
            100 => {
                self.message = format!("re-initialized: {}", self.message);
                then!(
                    self,
                    101,
                    Some(Step::Persist(Change::CompletedAction(action_id)))
                )
            }
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    fn fence(&mut self) -> Option<Step> {
        match self.pc {
            0 => then!(self, 1, Some(Step::Fence)),
            1 => then!(self, 2, Some(Step::ReleaseLease)),
            2 => then!(self, 3, Some(Step::Persist(Change::NoRole))),
            3 => then!(self, 4, Some(Step::Phase(AgentPhase::Fenced))),
            4 => then!(self, 5, Some(Step::Callback(Event::Stop, "fenced"))),
            _ => Some(Step::Done(Ok("fenced".into()))),
        }
    }

    fn restart(&mut self) -> Option<Step> {
        let Action::Restart {
            action_id,
            pending_only,
        } = self.command.action.clone()
        else {
            return Some(Step::Done(Err("internal: not a restart".into())));
        };
        match self.pc {
            0 => {
                let pending = self
                    .facts
                    .postgres
                    .as_ref()
                    .is_some_and(|pg| pg.pending_restart);
                if pending_only && !pending {
                    self.message = "no restart pending".into();
                    self.pc = 10;
                } else if action_id == 0 && self.facts.intent == Intent::Primary {
                    // The leader's restart to load copied slots is for
                    // replicas: a primary creates its slots.
                    self.message = "a primary: not restarted to load slots".into();
                    self.pc = 10;
                } else if self.facts.running {
                    self.message = "restarted".into();
                    if self.facts.intent == Intent::Primary {
                        then!(self, 1, Some(Step::AwaitLease));
                    }
                    self.pc = 1;
                } else {
                    self.message = "not running".into();
                    self.pc = 10;
                }
                None
            }
            1 => then!(self, 2, Some(Step::Phase(AgentPhase::Starting))),
            2 => then!(self, 10, Some(Step::Restart)),
            // Id 0: the leader's own restart (to load copied slots), not an
            // operator's action to mark done.
            10 if action_id == 0 => {
                self.pc = 11;
                None
            }
            10 => then!(
                self,
                11,
                Some(Step::Persist(Change::CompletedAction(action_id)))
            ),
            _ => Some(Step::Done(Ok(self.message.clone()))),
        }
    }

    /// `node reload`: the agent's file first (tags, node parameters,
    /// callbacks…), then PostgreSQL's, in whatever role.
    fn reload(&mut self) -> Option<Step> {
        let Action::Reload { action_id } = self.command.action.clone() else {
            return Some(Step::Done(Err("internal: not a reload".into())));
        };
        match self.pc {
            0 => then!(self, 1, Some(Step::ReloadAgent)),
            1 if self.facts.running => then!(self, 2, Some(Step::Reload)),
            1 => {
                self.pc = 2;
                None
            }
            2 => then!(
                self,
                3,
                Some(Step::Persist(Change::CompletedAction(action_id)))
            ),
            _ => Some(Step::Done(Ok("reloaded".into()))),
        }
    }

    fn configure(&mut self) -> Option<Step> {
        let settings = self.settings();
        match self.pc {
            0 => {
                let upstream = match self.facts.intent {
                    Intent::Replica => self.facts.upstream.clone(),
                    _ => None,
                };
                then!(
                    self,
                    1,
                    Some(Step::WriteConfig {
                        settings: settings.clone(),
                        upstream
                    })
                )
            }
            1 => {
                if self.facts.running {
                    then!(self, 2, Some(Step::Reload));
                }
                self.pc = 2;
                None
            }
            2 => then!(
                self,
                3,
                Some(Step::Persist(Change::ConfigVersion(
                    settings.config_version
                )))
            ),
            _ => Some(Step::Done(Ok(format!(
                "configuration version {} applied",
                settings.config_version
            )))),
        }
    }
}

/// The server streams from `upstream` (a replica whose WAL receiver is
/// connected there).
pub fn streams_from(pg: &PgStatus, upstream: &Upstream) -> bool {
    pg.in_recovery
        && pg.wal_receiver.as_ref().is_some_and(|w| {
            w.status == "streaming"
                && w.sender_host == upstream.host
                && w.sender_port == upstream.port
        })
}

#[cfg(test)]
mod tests;
