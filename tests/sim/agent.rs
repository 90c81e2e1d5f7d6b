//! The agent in the simulation. What decides is the real code: the lease
//! book (`agent::lease::Lease`), the command core (`agent::core`), the
//! keeper's rules (`keeper::rule`). What is modelled here is only I/O and
//! time: each step of the core is carried out on the PostgreSQL model
//! (`pg.rs`) with a duration, reports and grants travel the simulated
//! network, and the keeper is a process of its own that outlives the agent.

use std::collections::VecDeque;

use pgquorum::agent::core::{Execution, Facts, Outcome, Step};
use pgquorum::agent::lease::Lease;
use pgquorum::agent::postgres::RewindOutcome;
use pgquorum::agent::state::Intent;
use pgquorum::cluster::wire::{
    AgentCommand, AgentPhase, CommandOutcome, DataDirState, LeaseGrant, ManagedSettings,
    NodeReport, PgStatus, Upstream,
};
use pgquorum::keeper::rule::{self, FENCE_LEAD_MS};
use pgquorum::keeper::Lease as Held;

use rand::Rng;

use super::{Ev, World};

const OBSERVE_MS: u64 = 200;
/// `executor::await_lease`: this many looks, this far apart (2 s in all).
const AWAIT_LOOKS: u32 = 80;
/// The driver polls a starting server's `postmaster.pid` (every 50 ms,
/// for up to the executor's 120 s start timeout).
const START_POLL_MS: u64 = 50;
const START_POLLS: u32 = 2_400;
const AWAIT_EVERY_MS: u64 = 25;

/// A node's keeper: the lease it enforces. It outlives the agent process
/// and dies with the host (taking PostgreSQL with it).
#[derive(Debug, Clone, Default)]
pub struct Keeper {
    pub lease: Held,
    /// The deadline already fenced for.
    pub fenced_for: Option<u64>,
    /// Tells keeper incarnations apart (its tick events).
    pub gen: u64,
}

/// A step of the core under way: which, and how far.
#[derive(Debug, Clone)]
struct Pending {
    step: Step,
    stage: u32,
}

/// One agent process.
pub struct Agent {
    pub proc_id: u64,
    pub session: u64,
    pub seq: u64,
    pub lease: Lease,
    pub phase: AgentPhase,
    /// Times this agent process entered the fenced phase.
    pub fences: u64,
    pub last_command: Option<CommandOutcome>,
    pub obs_pg: Option<PgStatus>,
    pub obs_data: DataDirState,
    pub settings: ManagedSettings,
    pub conn: Option<u64>,
    pub hb_gen: u64,
    pub interval_ms: u64,
    pub queue: VecDeque<AgentCommand>,
    pub exec: Option<Execution>,
    pending: Option<Pending>,
    pub running: bool,
}

impl Agent {
    /// `Node::set_phase`: counts fences.
    fn enter(&mut self, phase: AgentPhase) {
        if phase == AgentPhase::Fenced && self.phase != AgentPhase::Fenced {
            self.fences += 1;
        }
        self.phase = phase;
    }
}

/// What a step did: its outcome now, or a pause first (then the step
/// continues at `stage`).
enum Perf {
    Done(Outcome),
    Wait(u64, u32),
}

impl World {
    pub fn agent_now(&self, n: usize) -> u64 {
        self.nodes[n].clock.ms(self.now)
    }

    /// Schedule an event `ms` later on node `n`'s clock.
    pub fn agent_after(&mut self, n: usize, ms: u64, ev: Ev) {
        let at = self.now + self.nodes[n].clock.true_us(ms);
        self.schedule(at, ev);
    }

    fn agent(&mut self, n: usize) -> &mut Agent {
        self.nodes[n].agent.as_mut().expect("agent runs")
    }

    fn proc_ok(&self, n: usize, proc_: u64) -> bool {
        self.nodes[n]
            .agent
            .as_ref()
            .is_some_and(|a| a.proc_id == proc_)
    }

    pub fn lease_remaining(&self, n: usize) -> u64 {
        let now = self.agent_now(n);
        let epoch = self.nodes[n].persisted.epoch;
        self.nodes[n]
            .agent
            .as_ref()
            .map_or(0, |a| a.lease.remaining_at(epoch, now))
    }

    // ----- the keeper -----------------------------------------------------

    /// The host boots: its keeper starts (empty) with it.
    pub fn keeper_boot(&mut self, n: usize) {
        let gen = self.fresh_id();
        self.nodes[n].keeper = Some(Keeper {
            gen,
            ..Keeper::default()
        });
        self.schedule(self.now, Ev::Keeper { n, gen });
    }

    /// One pass of the keeper's loop: `rule::must_fence`, then sleep
    /// `rule::sleep_ms`.
    pub fn keeper_tick(&mut self, n: usize, gen: u64) {
        if self.nodes[n].keeper.as_ref().map(|k| k.gen) != Some(gen) {
            return;
        }
        self.keeper_check(n);
        let now = self.agent_now(n);
        let k = self.nodes[n].keeper.as_ref().expect("checked");
        let deadline = match k.lease {
            Held::Until { deadline, .. } => Some(deadline),
            _ => None,
        };
        let fenced = k.fenced_for.is_some() && k.fenced_for == deadline;
        let sleep = rule::sleep_ms(k.lease, now, fenced).max(1);
        self.agent_after(n, sleep, Ev::Keeper { n, gen });
    }

    /// The keeper's check (also right after a frozen host resumes).
    pub fn keeper_check(&mut self, n: usize) {
        let now = self.agent_now(n);
        let Some(k) = self.nodes[n].keeper.as_ref() else {
            return;
        };
        if !rule::must_fence(k.lease, now) {
            return;
        }
        let deadline = match k.lease {
            Held::Until { deadline, .. } => Some(deadline),
            _ => None,
        };
        if k.fenced_for == deadline && self.nodes[n].pg.proc.is_none() {
            return;
        }
        if let Some(k) = self.nodes[n].keeper.as_mut() {
            k.fenced_for = deadline;
        }
        if self.nodes[n].pg.proc.is_some() {
            self.pg_kill(n, "keeper: the lease ran out");
            self.stats.keeper_fences += 1;
            if let Some(a) = self.nodes[n].agent.as_mut() {
                a.enter(AgentPhase::Fenced);
            }
        }
    }

    /// The agent hands the keeper a lease (instant: a local socket).
    fn keeper_hold(&mut self, n: usize, lease: Held) {
        if let Some(k) = self.nodes[n].keeper.as_mut() {
            k.lease = lease;
        }
        self.keeper_check(n);
    }

    pub(super) fn keeper_lease(&self, n: usize) -> Held {
        self.nodes[n]
            .keeper
            .as_ref()
            .map_or(Held::None, |k| k.lease)
    }

    // ----- the agent process --------------------------------------------

    /// A new agent process: at boot, or restarted alone (its keeper and
    /// PostgreSQL run on; it takes the keeper's lease over).
    pub fn agent_start(&mut self, n: usize) {
        if self.nodes[n].keeper.is_none() {
            self.keeper_boot(n);
        }
        let proc_id = self.fresh_id();
        let session = self.rng.gen::<u64>() | 1;
        let lease = Lease::new(session, self.keeper_lease(n));
        self.nodes[n].agent = Some(Agent {
            proc_id,
            session,
            seq: 0,
            lease,
            phase: AgentPhase::Idle,
            fences: 0,
            last_command: None,
            obs_pg: None,
            obs_data: DataDirState::Empty,
            settings: ManagedSettings::default(),
            conn: None,
            hb_gen: 0,
            interval_ms: 250,
            queue: VecDeque::new(),
            exec: None,
            pending: None,
            running: false,
        });
        self.schedule(self.now, Ev::Register { n, proc_: proc_id });
    }

    /// The agent process dies alone (SIGKILL, OOM): its sessions end, its
    /// keeper and PostgreSQL run on.
    pub fn agent_kill(&mut self, n: usize) {
        self.nodes[n].agent = None;
        self.nodes[n].agent_frozen_until = None;
        self.kill_conns_where(|c| c.n == n);
    }

    /// `session::register`, then the start-up check and the tasks.
    pub fn agent_register(&mut self, n: usize, proc_: u64) {
        if !self.proc_ok(n, proc_) {
            return;
        }
        if !self.leader_reachable(n) {
            let wait = 200 + self.rng_range(0, 300);
            self.agent_after(n, wait, Ev::Register { n, proc_ });
            return;
        }
        let name = self.nodes[n].name.clone();
        let host = self.nodes[n].host.clone();
        let tags = self.nodes[n].tags.clone();
        self.register_node(&name, &host, tags);
        // A writable PostgreSQL without a lease is never left running.
        self.refresh(n);
        let writable = self
            .agent(n)
            .obs_pg
            .as_ref()
            .is_some_and(|pg| !pg.in_recovery);
        if writable && self.lease_remaining(n) == 0 {
            self.pg_kill(n, "agent start: no lease");
            self.agent(n).enter(AgentPhase::Fenced);
        }
        self.agent(n).running = true;
        self.schedule(self.now, Ev::Observe { n, proc_ });
        self.schedule(self.now, Ev::Connect { n, proc_ });
    }

    /// `executor::refresh`.
    pub fn refresh(&mut self, n: usize) {
        let pg = self.pg_status(n);
        let data = match &pg {
            Some(s) => DataDirState::Valid {
                system_identifier: s.system_identifier,
                timeline: s.timeline,
                standby: s.in_recovery,
                clean_shutdown: false,
                checkpoint_lsn: s.lsn,
            },
            None => self.pg_inspect(n),
        };
        if let Some(a) = self.nodes[n].agent.as_mut() {
            a.obs_pg = pg;
            a.obs_data = data;
        }
    }

    pub fn agent_observe(&mut self, n: usize, proc_: u64) {
        if !self.proc_ok(n, proc_) {
            return;
        }
        self.refresh(n);
        self.agent_after(n, OBSERVE_MS, Ev::Observe { n, proc_ });
    }

    fn set_phase(&mut self, n: usize, phase: AgentPhase) {
        self.agent(n).enter(phase);
        self.report_now(n);
    }

    /// `Node::next_report`.
    fn next_report(&mut self, n: usize) -> NodeReport {
        let now = self.agent_now(n);
        let node = &self.nodes[n];
        let p = node.persisted.clone();
        let a = node.agent.as_ref().expect("agent runs");
        let seq = a.seq + 1;
        let report = NodeReport {
            cluster: super::CLUSTER.into(),
            node: node.name.clone(),
            seq,
            session: a.session,
            epoch: p.epoch,
            phase: a.phase,
            data: a.obs_data.clone(),
            postgres: a.obs_pg.clone(),
            wants_lease: p.intent == Intent::Primary,
            holds_lease: a.lease.remaining_at(p.epoch, now) > 0,
            last_command: a.last_command.clone(),
            completed_action: p.completed_action,
            config_version: p.config_version,
            upstream: p.upstream.as_ref().map(|u| u.node.clone()),
            lease_open: matches!(a.lease.held(), Held::Open { .. }),
            lease_seq: a.lease.held_seq(),
            // Failsafe mode is not modelled (agents never talk to agents).
            promise_ms: 0,
            commit_gate: true,
            settings: None,
            wants_config: false,
            restart_to_load_slots: false,
            fences: a.fences,
            // PostgreSQL never freezes without its agent here (see mod.rs).
            unresponsive_ms: 0,
        };
        let a = self.agent(n);
        a.seq = seq;
        a.lease.sent_at(seq, now);
        report
    }

    /// Send a report on the session now (the reporter task).
    fn send_report(&mut self, n: usize) {
        let Some(conn) = self.agent(n).conn else {
            return;
        };
        let report = self.next_report(n);
        self.send_up(conn, report);
    }

    pub fn report_now(&mut self, n: usize) {
        let Some(a) = self.nodes[n].agent.as_mut() else {
            return;
        };
        if a.conn.is_none() {
            return;
        }
        a.hb_gen += 1;
        let (gen, proc_) = (a.hb_gen, a.proc_id);
        self.schedule(self.now, Ev::Heartbeat { n, proc_, gen });
    }

    pub fn agent_heartbeat(&mut self, n: usize, proc_: u64, gen: u64) {
        if !self.proc_ok(n, proc_) || self.agent(n).hb_gen != gen || self.agent(n).conn.is_none() {
            return;
        }
        self.send_report(n);
        let interval = self.agent(n).interval_ms;
        self.agent_after(n, interval, Ev::Heartbeat { n, proc_, gen });
    }

    /// `session::run`: dial the leader.
    pub fn agent_connect(&mut self, n: usize, proc_: u64) {
        if !self.proc_ok(n, proc_) || self.agent(n).conn.is_some() {
            return;
        }
        let Some(m) = self.attachable_leader(n) else {
            let wait = 50 + self.rng_range(0, 200);
            self.agent_after(n, wait, Ev::Connect { n, proc_ });
            return;
        };
        let conn = self.open_conn(n, m);
        self.agent(n).conn = Some(conn);
        self.agent(n).interval_ms = 250;
        // The first report goes before the call.
        let first = self.next_report(n);
        self.send_up(conn, first);
        let a = self.agent(n);
        a.hb_gen += 1;
        let gen = a.hb_gen;
        self.agent_after(n, 250, Ev::Heartbeat { n, proc_, gen });
    }

    /// The session ended (either side).
    pub fn agent_conn_lost(&mut self, n: usize, conn: u64) {
        let Some(a) = self.nodes[n].agent.as_mut() else {
            return;
        };
        if a.conn != Some(conn) {
            return;
        }
        a.conn = None;
        a.hb_gen += 1;
        let proc_ = a.proc_id;
        self.agent_after(n, 50, Ev::Connect { n, proc_ });
    }

    /// A message from the leader arrives on `conn`.
    pub fn agent_message(&mut self, n: usize, conn: u64, msg: super::Down) {
        let Some(a) = self.nodes[n].agent.as_ref() else {
            return;
        };
        if a.conn != Some(conn) {
            return;
        }
        match msg {
            super::Down::Welcome { interval_ms } => {
                self.agent(n).interval_ms = interval_ms.clamp(50, 5000);
            }
            super::Down::Lease(g) => self.apply_grant(n, &g),
            super::Down::Command(c) => {
                let name = self.nodes[n].name.clone();
                self.log(format!(
                    "{name}: receives #{} {} (epoch {})",
                    c.id,
                    c.action.name(),
                    c.epoch
                ));
                self.agent(n).queue.push_back(c);
                if self.agent(n).exec.is_none() {
                    self.exec_next(n);
                }
            }
        }
    }

    /// `Node::apply_grant`: the keeper holds the new lease.
    fn apply_grant(&mut self, n: usize, g: &LeaseGrant) {
        let now = self.agent_now(n);
        let epoch = self.nodes[n].persisted.epoch;
        let Some(next) = self.agent(n).lease.grant_at(g, epoch, now) else {
            return;
        };
        self.keeper_hold(n, next);
        self.agent(n).lease.confirm_grant(next, g.seq);
    }

    /// `Node::release_lease`.
    fn release_lease(&mut self, n: usize) {
        let a = self.agent(n);
        let seq = a.seq;
        a.lease.release(seq);
        a.lease.confirm(Held::None);
        self.keeper_hold(n, Held::None);
    }

    // ----- commands: the real core, steps carried out here ---------------

    fn exec_next(&mut self, n: usize) {
        let Some(cmd) = self.agent(n).queue.pop_front() else {
            return;
        };
        let a = self.agent(n);
        a.exec = Some(Execution::new(cmd));
        a.pending = None;
        self.exec_run(n);
    }

    pub fn agent_exec(&mut self, n: usize, proc_: u64) {
        if !self.proc_ok(n, proc_) || self.agent(n).exec.is_none() {
            return;
        }
        self.exec_run(n);
    }

    fn exec_run(&mut self, n: usize) {
        loop {
            if let Some(p) = self.agent(n).pending.take() {
                match self.perform(n, &p.step, p.stage) {
                    Perf::Wait(ms, stage) => {
                        self.agent(n).pending = Some(Pending {
                            step: p.step,
                            stage,
                        });
                        let proc_ = self.agent(n).proc_id;
                        self.agent_after(n, ms, Ev::Exec { n, proc_ });
                        return;
                    }
                    Perf::Done(outcome) => {
                        if let Some(e) = self.agent(n).exec.as_mut() {
                            e.outcome(outcome);
                        }
                    }
                }
            }
            let Some(e) = self.agent(n).exec.as_mut() else {
                return;
            };
            match e.next_step() {
                Step::Done(result) => {
                    self.finish(n, result);
                    return;
                }
                step => self.agent(n).pending = Some(Pending { step, stage: 0 }),
            }
        }
    }

    fn finish(&mut self, n: usize, result: Result<String, String>) {
        let Some(e) = self.agent(n).exec.take() else {
            return;
        };
        self.refresh(n);
        let name = self.nodes[n].name.clone();
        let cmd = e.command().clone();
        let (ok, message) = match result {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        self.log(format!(
            "{name}: #{} {} {}: {message}",
            cmd.id,
            cmd.action.name(),
            if ok { "done" } else { "FAILED" }
        ));
        let a = self.agent(n);
        if a.phase != AgentPhase::Fenced {
            a.phase = AgentPhase::Idle;
        }
        a.last_command = Some(CommandOutcome {
            action: String::new(),
            id: cmd.id,
            ok,
            message,
        });
        self.report_now(n);
        self.exec_next(n);
    }

    fn dur(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng_range(lo, hi)
    }

    fn facts(&mut self, n: usize) -> Facts {
        self.refresh(n);
        let a = self.nodes[n].agent.as_ref().expect("agent runs");
        let p = &self.nodes[n].persisted;
        Facts {
            epoch: p.epoch,
            intent: p.intent,
            upstream: p.upstream.clone(),
            phase: a.phase,
            running: self.nodes[n].pg.proc.is_some(),
            postgres: a.obs_pg.clone(),
            data: a.obs_data.clone(),
            // The keeper starts every server here.
            unsupervised: false,
            holdoff_ms: 0,
            settings: a.settings.clone(),
        }
    }

    fn write_config(&mut self, n: usize, settings: &ManagedSettings, upstream: Option<&Upstream>) {
        self.agent(n).settings = settings.clone();
        let up = upstream.and_then(|u| self.node_index(&u.node));
        let pg = &mut self.nodes[n].pg;
        pg.conf_ssn = settings.synchronous_standby_names.clone();
        pg.conf_upstream = up;
    }

    fn streams_from(&self, n: usize, up: usize) -> bool {
        let host = &self.nodes[up].host;
        self.pg_status(n).is_some_and(|pg| {
            pg.in_recovery
                && pg
                    .wal_receiver
                    .as_ref()
                    .is_some_and(|w| w.status == "streaming" && w.sender_host == *host)
        })
    }

    /// Poll a starting server like the driver polls `postmaster.pid`.
    fn await_start(&mut self, n: usize, polls: u32) -> Perf {
        match self.pg_start_done(n) {
            Ok(true) => Perf::Done(Outcome::Ok),
            Ok(false) if polls < START_POLLS => Perf::Wait(START_POLL_MS, polls + 1),
            Ok(false) => Perf::Done(Outcome::Failed(
                "PostgreSQL did not finish starting in time".into(),
            )),
            Err(m) => Perf::Done(Outcome::Failed(m)),
        }
    }

    /// Carry one step out on the model: its outcome, or a pause first.
    fn perform(&mut self, n: usize, step: &Step, stage: u32) -> Perf {
        let done = |r: Result<(), String>| {
            Perf::Done(match r {
                Ok(()) => Outcome::Ok,
                Err(m) => Outcome::Failed(m),
            })
        };
        let up = |w: &World, u: &Upstream| w.node_index(&u.node);
        match (step, stage) {
            (Step::Look, _) => Perf::Done(Outcome::Looked(Box::new(self.facts(n)))),
            (Step::Persist(change), _) => {
                change.clone().apply(&mut self.nodes[n].persisted);
                Perf::Done(Outcome::Ok)
            }
            (Step::ClaimLease, _) => {
                self.nodes[n].persisted.intent = Intent::Primary;
                self.report_now(n);
                Perf::Done(Outcome::Ok)
            }
            (Step::AwaitLease, looks) => {
                if self.lease_remaining(n) > FENCE_LEAD_MS {
                    Perf::Done(Outcome::Ok)
                } else if looks < AWAIT_LOOKS {
                    Perf::Wait(AWAIT_EVERY_MS, looks + 1)
                } else {
                    Perf::Done(Outcome::Failed(
                        "no valid lease from the leader: not acting as primary".into(),
                    ))
                }
            }
            (Step::ReleaseLease, _) => {
                self.release_lease(n);
                Perf::Done(Outcome::Ok)
            }
            (Step::Phase(phase), _) => {
                self.set_phase(n, *phase);
                Perf::Done(Outcome::Ok)
            }
            (Step::Initdb, 0) => {
                if self.nodes[n].pg.data.is_some() {
                    return Perf::Done(Outcome::Failed("initdb: not empty".into()));
                }
                let ms = self.dur(500, 2000);
                Perf::Wait(ms, 1)
            }
            (Step::Initdb, _) => {
                let sysid = self.rng.gen::<u64>() | 1;
                let id = self.fresh_id();
                self.nodes[n].pg.data = Some(super::pg::DataDir {
                    sysid,
                    wal: vec![super::pg::Rec {
                        id,
                        tl: 1,
                        commit: false,
                    }],
                    standby_signal: false,
                    clean: true,
                    ckpt_lsn: pgquorum::cluster::Lsn(0),
                });
                Perf::Done(Outcome::Ok)
            }
            (Step::WriteConfig { settings, upstream }, _) => {
                self.write_config(n, settings, upstream.as_ref());
                Perf::Done(Outcome::Ok)
            }
            (Step::SetStandby(standby), _) => match self.nodes[n].pg.data.as_mut() {
                Some(d) => {
                    d.standby_signal = *standby;
                    Perf::Done(Outcome::Ok)
                }
                None => Perf::Done(Outcome::Failed("no data directory".into())),
            },
            (Step::Start, 0) => {
                if self.nodes[n].pg.proc.is_some() {
                    return Perf::Done(Outcome::Ok);
                }
                let now = self.agent_now(n);
                if !rule::may_start(self.keeper_lease(n), now) {
                    return Perf::Done(Outcome::Failed(
                        "the keeper refused: the primary's lease has run out".into(),
                    ));
                }
                if let Err(m) = self.pg_start_begin(n) {
                    return Perf::Done(Outcome::Failed(m));
                }
                Perf::Wait(START_POLL_MS, 1)
            }
            (Step::Start, polls) => self.await_start(n, polls),
            (Step::StopFast, 0) => {
                if self.nodes[n].pg.proc.is_none() {
                    return Perf::Done(Outcome::Ok);
                }
                self.pg_stop_fast_begin(n);
                let ms = self.dur(50, 400);
                Perf::Wait(ms, 1)
            }
            (Step::StopFast, _) => done(self.pg_stop_fast_finish(n)),
            (Step::StopImmediate, _) => {
                self.pg_kill(n, "immediate stop");
                Perf::Done(Outcome::Ok)
            }
            (Step::Restart, 0) => {
                self.pg_stop_fast_begin(n);
                let ms = self.dur(50, 400);
                Perf::Wait(ms, 1)
            }
            (Step::Restart, 1) => {
                if let Err(m) = self.pg_stop_fast_finish(n) {
                    return Perf::Done(Outcome::Failed(m));
                }
                if let Err(m) = self.pg_start_begin(n) {
                    return Perf::Done(Outcome::Failed(m));
                }
                Perf::Wait(START_POLL_MS, 2)
            }
            (Step::Restart, polls) => self.await_start(n, polls - 1),
            (Step::Reload, _) => done(self.pg_reload(n)),
            (Step::Promote, 0) => {
                if !self.pg_running(n) {
                    return Perf::Done(Outcome::Failed(
                        "promote: PostgreSQL is not running".into(),
                    ));
                }
                let ms = self.dur(50, 600);
                Perf::Wait(ms, 1)
            }
            (Step::Promote, _) => done(self.pg_promote_finish(n)),
            (Step::Checkpoint, _) => {
                if !self.pg_running(n) {
                    return Perf::Done(Outcome::Failed("checkpoint: not running".into()));
                }
                self.pg_system_record(n);
                Perf::Done(Outcome::Ok)
            }
            (Step::Fence, _) => {
                self.pg_kill(n, "fenced by the agent");
                Perf::Done(Outcome::Ok)
            }
            (Step::CrashRecover, 0) => {
                if self.nodes[n].pg.proc.is_some() {
                    return Perf::Done(Outcome::Failed("crash recovery: server running".into()));
                }
                if self.nodes[n].pg.data.as_ref().is_none_or(|d| d.clean) {
                    return Perf::Done(Outcome::Ok);
                }
                let ms = self.dur(100, 800);
                Perf::Wait(ms, 1)
            }
            (Step::CrashRecover, _) => {
                if self.nodes[n].pg.proc.is_none() {
                    if let Some(d) = self.nodes[n].pg.data.as_mut() {
                        d.clean = true;
                    }
                }
                Perf::Done(Outcome::Ok)
            }
            (Step::Rewind(_), 0) => {
                let ms = self.dur(200, 1500);
                Perf::Wait(ms, 1)
            }
            (Step::Rewind(u), _) => {
                let Some(up) = up(self, u) else {
                    return Perf::Done(Outcome::Failed("unknown upstream".into()));
                };
                match self.pg_rewind(n, up) {
                    Ok(true) => Perf::Done(Outcome::Rewound(RewindOutcome::Rewound)),
                    Ok(false) => Perf::Done(Outcome::Rewound(RewindOutcome::NotNeeded)),
                    Err(m) => Perf::Done(Outcome::Failed(m)),
                }
            }
            (Step::Clone(u), 0) => {
                let Some(up) = up(self, u) else {
                    return Perf::Done(Outcome::Failed("unknown upstream".into()));
                };
                if !self.can_reach_server(n, up) {
                    return Perf::Done(Outcome::Failed(format!("clone: cannot reach {}", u.node)));
                }
                let ms = self.dur(800, 3000);
                Perf::Wait(ms, 1)
            }
            (Step::Clone(u), _) => {
                let Some(up) = up(self, u) else {
                    return Perf::Done(Outcome::Failed("unknown upstream".into()));
                };
                done(self.pg_basebackup(n, up))
            }
            (Step::Wipe, _) => {
                if self.nodes[n].pg.proc.is_some() {
                    return Perf::Done(Outcome::Failed("wipe: server running".into()));
                }
                self.nodes[n].pg.data = None;
                Perf::Done(Outcome::Ok)
            }
            (Step::IsReachable(u), _) => {
                let reachable = up(self, u).is_some_and(|up| self.can_reach_server(n, up));
                Perf::Done(if reachable { Outcome::Yes } else { Outcome::No })
            }
            (Step::WaitStreaming(u), looks) => {
                let Some(up) = up(self, u) else {
                    return Perf::Done(Outcome::No);
                };
                if self.streams_from(n, up) {
                    Perf::Done(Outcome::Yes)
                } else if looks < 50 {
                    Perf::Wait(100, looks + 1)
                } else {
                    Perf::Done(Outcome::No)
                }
            }
            (Step::EnsureReplicationRole, _) => {
                // It writes WAL.
                self.pg_system_record(n);
                Perf::Done(Outcome::Ok)
            }
            // The simulated agent has no configuration file to re-read.
            (Step::Callback(..), _) | (Step::Done(_), _) | (Step::ReloadAgent, _) => {
                Perf::Done(Outcome::Ok)
            }
        }
    }
}

/// The report's server streams from `host` (for the leader's view).
#[allow(dead_code)]
pub fn streams_from_host(pg: &PgStatus, host: &str) -> bool {
    pg.in_recovery
        && pg.wal_receiver.as_ref().is_some_and(|w| {
            w.status == "streaming" && w.sender_host == host && w.sender_port == 5432
        })
}
