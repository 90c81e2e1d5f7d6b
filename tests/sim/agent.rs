//! A model of the agent (src/agent): the lease counted from the send time
//! of a granted report on the agent's own clock, reports, the persisted
//! epoch, the command executor (one command at a time, each a small
//! program of steps that take time) and the lease watchdog.

use std::collections::VecDeque;

use pgquorum::agent::state::Intent;
use pgquorum::cluster::wire::{
    Action, AgentCommand, AgentPhase, CommandOutcome, DataDirState, LeaseGrant, ManagedSettings,
    NodeReport, PgStatus, Upstream,
};

use rand::Rng;

use super::{Ev, World};

/// src/agent/executor.rs: fence this long before the lease ends.
pub const FENCE_LEAD_MS: u64 = 300;
const WATCHDOG_MS: u64 = 25;
const OBSERVE_MS: u64 = 200;
const REMEMBERED: usize = 256;

/// src/agent/lease.rs, on the simulated clock.
#[derive(Debug, Default, Clone)]
pub struct SimLease {
    sent: VecDeque<(u64, u64)>,
    epoch: u64,
    expires_at: u64,
    floor_seq: u64,
}

impl SimLease {
    fn sent(&mut self, seq: u64, now: u64) {
        self.sent.push_back((seq, now));
        while self.sent.len() > REMEMBERED {
            self.sent.pop_front();
        }
    }

    fn grant(&mut self, g: &LeaseGrant, session: u64, current_epoch: u64, now: u64) -> bool {
        if g.session != session || g.epoch != current_epoch || g.seq <= self.floor_seq {
            return false;
        }
        let Some(&(_, sent_at)) = self.sent.iter().find(|(s, _)| *s == g.seq) else {
            return false;
        };
        let until = sent_at + g.ttl_ms;
        if until <= now {
            return false;
        }
        if self.epoch != g.epoch {
            self.epoch = g.epoch;
            self.expires_at = 0;
        }
        if until > self.expires_at {
            self.expires_at = until;
            return true;
        }
        false
    }

    pub fn remaining(&self, epoch: u64, now: u64) -> u64 {
        if self.epoch != epoch {
            return 0;
        }
        self.expires_at.saturating_sub(now)
    }

    fn release(&mut self, last_seq: u64) {
        self.floor_seq = self.floor_seq.max(last_seq);
        self.expires_at = 0;
    }
}

/// A command under way: which program, where in it.
#[derive(Debug, Clone)]
pub struct Exec {
    pub cmd: AgentCommand,
    /// Promote runs as a sub-program of StartPrimary.
    pub promoting: bool,
    pub pc: u32,
    pub tries: u32,
    pub deadline: u64,
    pub flag: bool,
    pub msg: String,
}

/// One agent process (lost when the host crashes).
#[derive(Debug)]
pub struct Agent {
    pub proc_id: u64,
    pub session: u64,
    pub seq: u64,
    pub lease: SimLease,
    pub phase: AgentPhase,
    pub last_command: Option<CommandOutcome>,
    pub obs_pg: Option<PgStatus>,
    pub obs_data: DataDirState,
    pub settings: ManagedSettings,
    pub conn: Option<u64>,
    pub hb_gen: u64,
    pub interval_ms: u64,
    pub queue: VecDeque<AgentCommand>,
    pub exec: Option<Exec>,
    pub running: bool,
}

enum Step {
    Next,
    Wait(u64),
    Done(Result<String, String>),
}

impl World {
    pub fn agent_now(&self, n: usize) -> u64 {
        self.nodes[n].clock.ms(self.now)
    }

    /// Schedule an agent event `ms` later on the agent's clock.
    fn agent_after(&mut self, n: usize, ms: u64, ev: Ev) {
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
            .map_or(0, |a| a.lease.remaining(epoch, now))
    }

    /// The host boots: a new agent process.
    pub fn agent_boot(&mut self, n: usize) {
        let proc_id = self.fresh_id();
        let session = self.rng.gen::<u64>() | 1;
        self.nodes[n].agent = Some(Agent {
            proc_id,
            session,
            seq: 0,
            lease: SimLease::default(),
            phase: AgentPhase::Idle,
            last_command: None,
            obs_pg: None,
            obs_data: DataDirState::Empty,
            settings: ManagedSettings::default(),
            conn: None,
            hb_gen: 0,
            interval_ms: 250,
            queue: VecDeque::new(),
            exec: None,
            running: false,
        });
        self.schedule(self.now, Ev::Register { n, proc_: proc_id });
    }

    /// `session::register`, then the start-up checks and the tasks.
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
            self.agent(n).phase = AgentPhase::Fenced;
        }
        self.agent(n).running = true;
        self.schedule(self.now, Ev::Observe { n, proc_ });
        self.agent_after(n, WATCHDOG_MS, Ev::Watchdog { n, proc_ });
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

    /// `executor::watchdog`, one check.
    pub fn watchdog_check(&mut self, n: usize) {
        let Some(a) = self.nodes[n].agent.as_ref() else {
            return;
        };
        if !a.running
            || self.nodes[n].persisted.intent != Intent::Primary
            || a.phase == AgentPhase::Fenced
        {
            return;
        }
        if self.lease_remaining(n) > FENCE_LEAD_MS || self.nodes[n].pg.proc.is_none() {
            return;
        }
        self.pg_kill(n, "watchdog: lease running out");
        self.stats.watchdog_fences += 1;
        self.set_phase(n, AgentPhase::Fenced);
        self.refresh(n);
    }

    pub fn agent_watchdog(&mut self, n: usize, proc_: u64) {
        if !self.proc_ok(n, proc_) {
            return;
        }
        self.watchdog_check(n);
        self.agent_after(n, WATCHDOG_MS, Ev::Watchdog { n, proc_ });
    }

    fn set_phase(&mut self, n: usize, phase: AgentPhase) {
        self.agent(n).phase = phase;
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
            holds_lease: a.lease.remaining(p.epoch, now) > 0,
            last_command: a.last_command.clone(),
            completed_action: p.completed_action,
            config_version: p.config_version,
            upstream: p.upstream.as_ref().map(|u| u.node.clone()),
            // The simulation never pauses: no lease is ever held open.
            lease_open: false,
            lease_seq: 0,
            // Nor does it model failsafe mode.
            promise_ms: 0,
        };
        let a = self.agent(n);
        a.seq = seq;
        a.lease.sent(seq, now);
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
            let wait = 100 + self.rng_range(0, 400);
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
        self.agent_after(n, 100, Ev::Connect { n, proc_ });
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
            super::Down::Lease(g) => {
                let now = self.agent_now(n);
                let epoch = self.nodes[n].persisted.epoch;
                let a = self.agent(n);
                let session = a.session;
                a.lease.grant(&g, session, epoch, now);
            }
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

    fn exec_next(&mut self, n: usize) {
        let Some(cmd) = self.agent(n).queue.pop_front() else {
            return;
        };
        self.agent(n).exec = Some(Exec {
            cmd,
            promoting: false,
            pc: 0,
            tries: 0,
            deadline: 0,
            flag: false,
            msg: String::new(),
        });
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
            match self.exec_step(n) {
                Step::Next => continue,
                Step::Wait(ms) => {
                    let proc_ = self.agent(n).proc_id;
                    self.agent_after(n, ms, Ev::Exec { n, proc_ });
                    return;
                }
                Step::Done(result) => {
                    let Some(e) = self.agent(n).exec.take() else {
                        return;
                    };
                    self.refresh(n);
                    let name = self.nodes[n].name.clone();
                    let (ok, message) = match result {
                        Ok(m) => (true, m),
                        Err(m) => (false, m),
                    };
                    self.log(format!(
                        "{name}: #{} {} {}: {message}",
                        e.cmd.id,
                        e.cmd.action.name(),
                        if ok { "done" } else { "FAILED" }
                    ));
                    let a = self.agent(n);
                    if a.phase != AgentPhase::Fenced {
                        a.phase = AgentPhase::Idle;
                    }
                    a.last_command = Some(CommandOutcome {
                        id: e.cmd.id,
                        ok,
                        message,
                    });
                    self.report_now(n);
                    self.exec_next(n);
                    return;
                }
            }
        }
    }

    fn exec_mut(&mut self, n: usize) -> &mut Exec {
        self.agent(n).exec.as_mut().expect("executing")
    }

    fn goto(&mut self, n: usize, pc: u32) -> Step {
        let e = self.exec_mut(n);
        e.pc = pc;
        e.tries = 0;
        Step::Next
    }

    fn wait_then(&mut self, n: usize, ms: u64, pc: u32) -> Step {
        let e = self.exec_mut(n);
        e.pc = pc;
        e.tries = 0;
        Step::Wait(ms)
    }

    /// `executor::await_lease`: up to 40 looks, 50 ms apart.
    fn await_lease(&mut self, n: usize, next: u32) -> Step {
        if self.lease_remaining(n) > FENCE_LEAD_MS {
            return self.goto(n, next);
        }
        let e = self.exec_mut(n);
        if e.tries < 39 {
            e.tries += 1;
            return Step::Wait(50);
        }
        Step::Done(Err(
            "no valid lease from the leader: not acting as primary".into()
        ))
    }

    fn become_primary(&mut self, n: usize, settings: &ManagedSettings) {
        let p = &mut self.nodes[n].persisted;
        p.intent = Intent::Primary;
        p.upstream = None;
        p.config_version = settings.config_version;
    }

    fn write_config(&mut self, n: usize, settings: &ManagedSettings, upstream: Option<&Upstream>) {
        self.agent(n).settings = settings.clone();
        let up = upstream.and_then(|u| self.node_index(&u.node));
        let pg = &mut self.nodes[n].pg;
        pg.conf_ssn = settings.synchronous_standby_names.clone();
        pg.conf_upstream = up;
    }

    fn release_lease(&mut self, n: usize) {
        let a = self.agent(n);
        let seq = a.seq;
        a.lease.release(seq);
    }

    fn dur(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng_range(lo, hi)
    }

    fn exec_step(&mut self, n: usize) -> Step {
        let e = self.agent(n).exec.clone().expect("executing");
        if e.pc == 0 {
            // accept_epoch: refuse older epochs, persist a newer one first.
            let seen = self.nodes[n].persisted.epoch;
            if e.cmd.epoch < seen {
                return Step::Done(Err(format!(
                    "stale epoch {}: this node has seen epoch {seen}",
                    e.cmd.epoch
                )));
            }
            if e.cmd.epoch > seen {
                self.nodes[n].persisted.epoch = e.cmd.epoch;
            }
            let first = if matches!(e.cmd.action, Action::Promote { .. }) {
                self.exec_mut(n).promoting = true;
                100
            } else {
                1
            };
            return self.goto(n, first);
        }
        if e.promoting {
            let settings = match &e.cmd.action {
                Action::Promote { settings } | Action::StartPrimary { settings } => {
                    settings.clone()
                }
                _ => ManagedSettings::default(),
            };
            return self.promote_step(n, &e, &settings);
        }
        match e.cmd.action.clone() {
            Action::Bootstrap { settings } => self.bootstrap_step(n, &e, &settings),
            Action::StartPrimary { settings } => self.start_primary_step(n, &e, &settings),
            Action::Promote { .. } => Step::Done(Err("internal: promote".into())),
            Action::Follow {
                upstream,
                settings,
                reclone,
            } => self.follow_step(n, &e, &upstream, &settings, reclone),
            Action::Demote => self.demote_step(n, &e),
            Action::Detach => {
                if self.nodes[n].persisted.upstream.is_none() {
                    return Step::Done(Ok("not streaming".into()));
                }
                self.nodes[n].persisted.upstream = None;
                if self.nodes[n].pg.proc.is_some() {
                    let settings = ManagedSettings {
                        synchronous_standby_names: String::new(),
                        ..self.agent(n).settings.clone()
                    };
                    self.write_config(n, &settings, None);
                    if let Err(m) = self.pg_reload(n) {
                        return Step::Done(Err(m));
                    }
                }
                Step::Done(Ok("detached from the old primary".into()))
            }
            Action::Fence { .. } => {
                self.pg_kill(n, "fenced on the leader's order");
                self.release_lease(n);
                self.nodes[n].persisted.intent = Intent::None;
                self.set_phase(n, AgentPhase::Fenced);
                Step::Done(Ok("fenced".into()))
            }
            Action::Configure { settings } => {
                let upstream = match self.nodes[n].persisted.intent {
                    Intent::Replica => self.nodes[n].persisted.upstream.clone(),
                    _ => None,
                };
                self.write_config(n, &settings, upstream.as_ref());
                if self.nodes[n].pg.proc.is_some() {
                    if let Err(m) = self.pg_reload(n) {
                        return Step::Done(Err(m));
                    }
                }
                self.nodes[n].persisted.config_version = settings.config_version;
                Step::Done(Ok(format!(
                    "configuration version {} applied",
                    settings.config_version
                )))
            }
            Action::Restart { action_id, .. } | Action::Reinit { action_id, .. } => {
                self.nodes[n].persisted.completed_action = Some(action_id);
                Step::Done(Ok("not modelled".into()))
            }
        }
    }

    fn bootstrap_step(&mut self, n: usize, e: &Exec, settings: &ManagedSettings) -> Step {
        match e.pc {
            1 => {
                if self.pg_status(n).is_some_and(|pg| !pg.in_recovery) {
                    self.become_primary(n, settings);
                    return Step::Done(Ok("already running as primary".into()));
                }
                self.goto(n, 2)
            }
            2 => self.await_lease(n, 3),
            3 => {
                self.set_phase(n, AgentPhase::Bootstrapping);
                if self.nodes[n].pg.data.is_none() {
                    let ms = self.dur(500, 2000);
                    return self.wait_then(n, ms, 4);
                }
                self.exec_mut(n).msg = "adopted the existing data directory".into();
                self.goto(n, 5)
            }
            4 => {
                if self.nodes[n].pg.data.is_none() {
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
                }
                self.exec_mut(n).msg = "initialized a new database".into();
                self.goto(n, 5)
            }
            5 => {
                self.become_primary(n, settings);
                self.write_config(n, settings, None);
                if let Some(d) = self.nodes[n].pg.data.as_mut() {
                    d.standby_signal = false;
                }
                self.set_phase(n, AgentPhase::Starting);
                self.goto(n, 6)
            }
            6 => self.await_lease(n, 7),
            7 => {
                if let Err(m) = self.pg_start_begin(n) {
                    return Step::Done(Err(m));
                }
                let ms = self.dur(300, 1200);
                self.wait_then(n, ms, 8)
            }
            _ => {
                if let Err(m) = self.pg_start_finish(n) {
                    return Step::Done(Err(m));
                }
                // ensure_replication_role writes WAL.
                self.pg_system_record(n);
                Step::Done(Ok(e.msg.clone()))
            }
        }
    }

    fn start_primary_step(&mut self, n: usize, e: &Exec, settings: &ManagedSettings) -> Step {
        match e.pc {
            1 => {
                match self.pg_status(n) {
                    Some(pg) if !pg.in_recovery => {
                        self.become_primary(n, settings);
                        return Step::Done(Ok("already running".into()));
                    }
                    Some(_) => {
                        self.exec_mut(n).promoting = true;
                        return self.goto(n, 100);
                    }
                    None => {}
                }
                self.goto(n, 2)
            }
            2 => self.await_lease(n, 3),
            3 => {
                let Some(d) = self.nodes[n].pg.data.as_ref() else {
                    return Step::Done(Err(
                        "no usable data directory to start the primary from".into()
                    ));
                };
                let standby = d.standby_signal;
                self.exec_mut(n).flag = standby;
                self.become_primary(n, settings);
                self.write_config(n, settings, None);
                self.set_phase(n, AgentPhase::Starting);
                if let Err(m) = self.pg_start_begin(n) {
                    return Step::Done(Err(m));
                }
                let ms = self.dur(300, 1200);
                self.wait_then(n, ms, 4)
            }
            _ => {
                if let Err(m) = self.pg_start_finish(n) {
                    return Step::Done(Err(m));
                }
                if e.flag {
                    // A former standby is promoted onto a timeline of its own.
                    self.exec_mut(n).promoting = true;
                    return self.goto(n, 100);
                }
                Step::Done(Ok("started as primary".into()))
            }
        }
    }

    fn promote_step(&mut self, n: usize, e: &Exec, settings: &ManagedSettings) -> Step {
        match e.pc {
            100 => self.await_lease(n, 101),
            101 => {
                self.set_phase(n, AgentPhase::Promoting);
                if self.nodes[n].pg.proc.is_none() {
                    self.write_config(n, settings, None);
                    if let Some(d) = self.nodes[n].pg.data.as_mut() {
                        d.standby_signal = true;
                    }
                    if let Err(m) = self.pg_start_begin(n) {
                        return Step::Done(Err(m));
                    }
                    let ms = self.dur(300, 1200);
                    return self.wait_then(n, ms, 102);
                }
                self.goto(n, 103)
            }
            102 => {
                if let Err(m) = self.pg_start_finish(n) {
                    return Step::Done(Err(m));
                }
                self.goto(n, 103)
            }
            103 => {
                if self.pg_status(n).is_some_and(|pg| !pg.in_recovery) {
                    self.become_primary(n, settings);
                    return Step::Done(Ok("already primary".into()));
                }
                // synchronous_standby_names is in place before the first commit.
                self.become_primary(n, settings);
                self.write_config(n, settings, None);
                if let Err(m) = self.pg_reload(n) {
                    return Step::Done(Err(m));
                }
                self.goto(n, 104)
            }
            104 => self.await_lease(n, 105),
            105 => {
                if !self.pg_running(n) {
                    return Step::Done(Err("promote: PostgreSQL is not running".into()));
                }
                let ms = self.dur(50, 600);
                self.wait_then(n, ms, 106)
            }
            _ => {
                if let Err(m) = self.pg_promote_finish(n) {
                    return Step::Done(Err(m));
                }
                // CHECKPOINT after promotion (errors only logged).
                self.pg_system_record(n);
                Step::Done(Ok("promoted".into()))
            }
        }
    }

    fn follow_step(
        &mut self,
        n: usize,
        e: &Exec,
        upstream: &Upstream,
        settings: &ManagedSettings,
        reclone: bool,
    ) -> Step {
        let Some(up) = self.node_index(&upstream.node) else {
            return Step::Done(Err("unknown upstream".into()));
        };
        match e.pc {
            1 => {
                let previous = self.nodes[n].persisted.upstream.clone();
                self.release_lease(n);
                let p = &mut self.nodes[n].persisted;
                p.intent = Intent::Replica;
                p.upstream = Some(upstream.clone());
                p.config_version = settings.config_version;
                if self.agent(n).phase == AgentPhase::Fenced {
                    self.agent(n).phase = AgentPhase::Idle;
                }
                match self.pg_status(n) {
                    Some(pg) if !pg.in_recovery => {
                        self.pg_kill(n, "a former primary told to follow");
                        self.goto(n, 10)
                    }
                    Some(pg) => {
                        let same = previous.as_ref() == Some(upstream);
                        if same && streams_from(&pg, &self.nodes[up].host) {
                            return Step::Done(Ok(format!(
                                "already streaming from {}",
                                upstream.node
                            )));
                        }
                        self.write_config(n, settings, Some(upstream));
                        if !same {
                            if let Err(m) = self.pg_reload(n) {
                                return Step::Done(Err(m));
                            }
                            let deadline = self.agent_now(n) + 5000;
                            self.exec_mut(n).deadline = deadline;
                            return self.goto(n, 2);
                        }
                        self.goto(n, 3)
                    }
                    None => self.goto(n, 10),
                }
            }
            2 => {
                let streaming = self
                    .pg_status(n)
                    .is_some_and(|pg| streams_from(&pg, &self.nodes[up].host));
                if streaming {
                    return Step::Done(Ok(format!("re-pointed to {}", upstream.node)));
                }
                if self.agent_now(n) < e.deadline {
                    return Step::Wait(100);
                }
                self.goto(n, 3)
            }
            3 => {
                self.set_phase(n, AgentPhase::Stopping);
                self.pg_stop_fast_begin(n);
                let ms = self.dur(50, 400);
                self.wait_then(n, ms, 4)
            }
            4 => {
                if let Err(m) = self.pg_stop_fast_finish(n) {
                    return Step::Done(Err(m));
                }
                self.goto(n, 10)
            }
            // rejoin
            10 => match &self.nodes[n].pg.data {
                None => {
                    self.set_phase(n, AgentPhase::Cloning);
                    if !self.can_reach_server(n, up) {
                        return Step::Done(Err(format!("clone: cannot reach {}", upstream.node)));
                    }
                    let ms = self.dur(800, 3000);
                    self.wait_then(n, ms, 11)
                }
                Some(d) => {
                    let clean = d.clean;
                    self.set_phase(n, AgentPhase::Rewinding);
                    if !clean {
                        let ms = self.dur(100, 800);
                        return self.wait_then(n, ms, 12);
                    }
                    self.goto(n, 13)
                }
            },
            11 => {
                if let Err(m) = self.pg_basebackup(n, up) {
                    return Step::Done(Err(m));
                }
                self.goto(n, 20)
            }
            12 => {
                if self.nodes[n].pg.proc.is_none() {
                    if let Some(d) = self.nodes[n].pg.data.as_mut() {
                        d.clean = true;
                    }
                }
                self.goto(n, 13)
            }
            13 => {
                let ms = self.dur(200, 1500);
                self.wait_then(n, ms, 14)
            }
            14 => match self.pg_rewind(n, up) {
                Ok(_) => self.goto(n, 20),
                Err(m) if reclone => {
                    let name = self.nodes[n].name.clone();
                    self.log(format!("{name}: {m}; cloning again"));
                    self.set_phase(n, AgentPhase::Cloning);
                    self.nodes[n].pg.data = None;
                    if !self.can_reach_server(n, up) {
                        return Step::Done(Err(format!(
                            "re-clone after a failed rewind: cannot reach {}",
                            upstream.node
                        )));
                    }
                    let ms = self.dur(800, 3000);
                    self.wait_then(n, ms, 11)
                }
                Err(m) => Step::Done(Err(m)),
            },
            20 => {
                self.write_config(n, settings, Some(upstream));
                if let Some(d) = self.nodes[n].pg.data.as_mut() {
                    d.standby_signal = true;
                }
                self.set_phase(n, AgentPhase::Starting);
                if let Err(m) = self.pg_start_begin(n) {
                    return Step::Done(Err(m));
                }
                let ms = self.dur(300, 1200);
                self.wait_then(n, ms, 21)
            }
            _ => {
                if let Err(m) = self.pg_start_finish(n) {
                    return Step::Done(Err(m));
                }
                Step::Done(Ok(format!("following {}", upstream.node)))
            }
        }
    }

    fn demote_step(&mut self, n: usize, e: &Exec) -> Step {
        match e.pc {
            1 => {
                if self.nodes[n].pg.proc.is_none() {
                    self.release_lease(n);
                    self.nodes[n].persisted.intent = Intent::None;
                    return Step::Done(Ok("already stopped".into()));
                }
                self.set_phase(n, AgentPhase::Stopping);
                // CHECKPOINT while still taking writes.
                self.pg_system_record(n);
                let ms = self.dur(20, 200);
                self.wait_then(n, ms, 2)
            }
            2 => {
                self.pg_stop_fast_begin(n);
                let ms = self.dur(50, 400);
                self.wait_then(n, ms, 3)
            }
            _ => {
                if let Err(m) = self.pg_stop_fast_finish(n) {
                    return Step::Done(Err(m));
                }
                self.release_lease(n);
                self.nodes[n].persisted.intent = Intent::None;
                Step::Done(Ok("stopped cleanly for the switchover".into()))
            }
        }
    }
}

fn streams_from(pg: &PgStatus, host: &str) -> bool {
    pg.in_recovery
        && pg.wal_receiver.as_ref().is_some_and(|w| {
            w.status == "streaming" && w.sender_host == host && w.sender_port == 5432
        })
}
