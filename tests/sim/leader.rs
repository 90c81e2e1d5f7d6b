//! A model of the leader's control loop (src/manager/control.rs): a pass
//! every tick or on a report; each pass confirms leadership with a quorum
//! round started at T, then decides, commits through Raft (which takes
//! time, and may fail when leadership was lost meanwhile), re-decides, and
//! finally sends commands and the lease grant (booked as receive time +
//! ttl). A manager that notices it no longer leads drops its sessions and
//! soft state; a new leader starts with `Soft::new(now)`.

use std::collections::BTreeMap;

use pgquorum::cluster::decide::{self, Input};
use pgquorum::cluster::soft::Soft;
use pgquorum::cluster::wire::{Action, AgentCommand, LeaseGrant, NodeReport};
use pgquorum::cluster::ClusterCommand;

use rand::Rng;

use super::pg::GenBoolP;
use super::{Clock, Down, Ev, World, CLUSTER};

const TICK_MS: u64 = 100;
const COMMITS_PER_PASS: usize = 4;

/// One manager's control loop (its Raft role lives in `World`).
#[derive(Debug)]
pub struct Mgr {
    pub clock: Clock,
    /// The term this manager's control loop believes it leads in.
    pub term: Option<u64>,
    pub since: u64,
    pub soft: Option<Soft>,
    pub sessions: BTreeMap<String, u64>,
    pub busy: bool,
    pub wake: bool,
    pub tick_gen: u64,
    pub paused_until: Option<u64>,
    pub deferred: Vec<Ev>,
    pub waiting: Vec<String>,
}

impl Mgr {
    pub fn new(clock: Clock) -> Self {
        Mgr {
            clock,
            term: None,
            since: 0,
            soft: None,
            sessions: BTreeMap::new(),
            busy: false,
            wake: false,
            tick_gen: 0,
            paused_until: None,
            deferred: Vec::new(),
            waiting: Vec::new(),
        }
    }
}

impl World {
    pub fn mgr_now(&self, m: usize) -> u64 {
        self.mgrs[m].clock.ms(self.now)
    }

    fn mgr_after(&mut self, m: usize, ms: u64, ev: Ev) {
        let at = self.now + self.mgrs[m].clock.true_us(ms);
        self.schedule(at, ev);
    }

    fn new_soft(&mut self, since: u64) -> Soft {
        let mut soft = Soft::new(since);
        soft.next_command = (self.rng.gen::<u32>() as u64) << 16;
        soft
    }

    /// `Control::track_leadership`.
    fn track_leadership(&mut self, m: usize) -> bool {
        let leading = self.raft_leader == Some(m);
        let now = self.mgr_now(m);
        if !leading {
            if self.mgrs[m].term.is_some() {
                self.log(format!(
                    "manager {m}: no longer the leader: dropping sessions and soft state"
                ));
                self.drop_leadership(m);
            }
            return false;
        }
        if self.mgrs[m].term != Some(self.raft_term) {
            self.log(format!(
                "manager {m}: leading in term {}: soft state starts empty",
                self.raft_term
            ));
            self.drop_leadership(m);
            let mg = &mut self.mgrs[m];
            mg.term = Some(self.raft_term);
            mg.since = now;
        }
        true
    }

    fn drop_leadership(&mut self, m: usize) {
        let sessions = std::mem::take(&mut self.mgrs[m].sessions);
        let mg = &mut self.mgrs[m];
        mg.term = None;
        mg.soft = None;
        mg.waiting.clear();
        for conn in sessions.into_values() {
            self.kill_conn(conn);
        }
    }

    /// The loop's timer or a wake-up.
    pub fn pass_tick(&mut self, m: usize, gen: u64) {
        if gen != self.mgrs[m].tick_gen || self.mgrs[m].busy {
            return;
        }
        self.start_pass(m);
    }

    fn schedule_tick(&mut self, m: usize) {
        self.mgrs[m].tick_gen += 1;
        let gen = self.mgrs[m].tick_gen;
        self.mgr_after(m, TICK_MS, Ev::PassTick { m, gen });
    }

    fn start_pass(&mut self, m: usize) {
        self.mgrs[m].wake = false;
        if !self.track_leadership(m) {
            self.schedule_tick(m);
            return;
        }
        self.mgrs[m].busy = true;
        let started = self.mgr_now(m);
        let term = self.raft_term;
        let rtt = self.rng_range(1_000, 8_000);
        self.schedule(self.now + rtt, Ev::ConfirmDone { m, term, started });
    }

    fn end_pass(&mut self, m: usize) {
        self.mgrs[m].busy = false;
        if self.mgrs[m].wake {
            self.mgrs[m].tick_gen += 1;
            let gen = self.mgrs[m].tick_gen;
            self.schedule(self.now, Ev::PassTick { m, gen });
        } else {
            self.schedule_tick(m);
        }
    }

    /// The quorum round of `linearizable_state` came back.
    pub fn confirm_done(&mut self, m: usize, term: u64, started: u64) {
        let still = self.raft_term == term && self.raft_leader == Some(m);
        // A round that began before a new election may still have been
        // answered by a majority (they answered before voting).
        if !still && !self.rng.gen_bool_p(0.5) {
            self.end_pass(m);
            return;
        }
        if let Some(soft) = self.mgrs[m].soft.as_mut() {
            soft.confirmed_at = Some(started);
        }
        self.drive(m, term, 0);
    }

    /// `Control::drive`, one iteration.
    fn drive(&mut self, m: usize, term: u64, iter: usize) {
        if iter >= COMMITS_PER_PASS || self.mgrs[m].term.is_none() {
            self.end_pass(m);
            return;
        }
        let now = self.mgr_now(m);
        if self.mgrs[m].soft.is_none() {
            let since = self.mgrs[m].since;
            let soft = self.new_soft(since);
            self.mgrs[m].soft = Some(soft);
        }
        let wall_ms = self.wall_ms();
        let Some(cluster) = self.state.clusters.get(CLUSTER) else {
            self.end_pass(m);
            return;
        };
        let soft = self.mgrs[m].soft.as_mut().expect("created");
        let d = decide::decide(&Input {
            cluster,
            soft,
            now,
            wall_ms,
        });
        soft.record(d.catching_up, now);
        self.mgrs[m].waiting = d.waiting.clone();
        if let Some(commit) = d.commit {
            let latency = self.rng_range(2_000, 15_000);
            self.schedule(
                self.now + latency,
                Ev::CommitDone {
                    m,
                    term,
                    cmd: Box::new(commit),
                    iter,
                },
            );
            return;
        }
        self.send(m, d.commands, d.grant, now);
        self.end_pass(m);
    }

    pub fn commit_done(&mut self, m: usize, term: u64, cmd: ClusterCommand, iter: usize) {
        let leader_ok = self.raft_term == term && self.raft_leader == Some(m);
        if !leader_ok {
            // propose() fails; the entry may still be committed by the next
            // leader (it reached a majority) or be lost.
            if self.rng.gen_bool_p(0.5) {
                self.orphans.push(cmd);
            }
            self.end_pass(m);
            return;
        }
        let promotes = matches!(cmd, ClusterCommand::Promote { .. });
        match self.apply(&cmd) {
            Ok(()) => {
                if promotes {
                    if let Some(soft) = self.mgrs[m].soft.as_mut() {
                        soft.epoch_changed();
                    }
                }
                self.drive(m, term, iter + 1);
            }
            Err(_) => self.end_pass(m),
        }
    }

    /// `Control::send`.
    fn send(
        &mut self,
        m: usize,
        commands: Vec<(String, Action)>,
        grant: Option<(String, LeaseGrant)>,
        now: u64,
    ) {
        let Some(cluster) = self.state.clusters.get(CLUSTER) else {
            return;
        };
        let epoch = cluster.epoch;
        let mut outgoing: Vec<(String, Down)> = Vec::new();
        let mut notes = Vec::new();
        if let Some(soft) = self.mgrs[m].soft.as_mut() {
            for (node, action) in commands {
                let id = soft.sent(&node, &action, epoch, now);
                notes.push(format!(
                    "manager {m}: command #{id} {} to {node} (epoch {epoch})",
                    action.name()
                ));
                outgoing.push((node, Down::Command(AgentCommand { id, epoch, action })));
            }
            if let Some((node, g)) = grant {
                if soft.book_lease(cluster, &node, &g) {
                    outgoing.push((node, Down::Lease(g)));
                }
            }
        }
        for note in notes {
            self.log(note);
        }
        for (node, msg) in outgoing {
            if let Some(&conn) = self.mgrs[m].sessions.get(&node) {
                self.send_down(conn, msg);
            }
        }
    }

    /// A report arrives on a session (`Control::report`).
    pub fn leader_report(&mut self, m: usize, conn: u64, report: NodeReport) {
        if !self.conns.get(&conn).is_some_and(|c| c.alive) || self.mgrs[m].term.is_none() {
            return;
        }
        let now = self.mgr_now(m);
        let since = self.mgrs[m].since;
        if self.mgrs[m].soft.is_none() {
            let soft = self.new_soft(since);
            self.mgrs[m].soft = Some(soft);
        }
        let Some(cluster) = self.state.clusters.get(CLUSTER) else {
            return;
        };
        if let Some(soft) = self.mgrs[m].soft.as_mut() {
            soft.observe(cluster, report, now);
        }
        if self.mgrs[m].busy {
            self.mgrs[m].wake = true;
        } else {
            self.mgrs[m].tick_gen += 1;
            let gen = self.mgrs[m].tick_gen;
            self.schedule(self.now, Ev::PassTick { m, gen });
        }
    }

    /// Which manager an agent can open a session with right now.
    pub fn attachable_leader(&self, n: usize) -> Option<usize> {
        let m = self.raft_leader?;
        let ok = self.mgrs[m].term.is_some()
            && self.mgrs[m].paused_until.is_none()
            && !self.mgr_link_cut(n);
        ok.then_some(m)
    }

    /// Registration needs a leader that can commit.
    pub fn leader_reachable(&self, n: usize) -> bool {
        self.raft_leader
            .is_some_and(|m| self.mgrs[m].paused_until.is_none() && !self.mgr_link_cut(n))
    }

    /// A session from agent `n` to manager `m` (`Control::attach`), with the
    /// Welcome message.
    pub fn attach(&mut self, n: usize, m: usize, conn: u64) {
        let name = self.nodes[n].name.clone();
        if let Some(old) = self.mgrs[m].sessions.insert(name, conn) {
            self.kill_conn(old);
        }
        let interval_ms = self
            .state
            .clusters
            .get(CLUSTER)
            .map_or(250, |c| c.config.heartbeat_interval_ms);
        self.send_down(conn, Down::Welcome { interval_ms });
        if !self.mgrs[m].busy {
            self.mgrs[m].tick_gen += 1;
            let gen = self.mgrs[m].tick_gen;
            self.schedule(self.now, Ev::PassTick { m, gen });
        } else {
            self.mgrs[m].wake = true;
        }
    }

    /// A leader's soft state for the failure report.
    pub fn leader_summary(&self) -> String {
        let Some(m) = self.raft_leader else {
            return "no leader".into();
        };
        let mg = &self.mgrs[m];
        format!(
            "leader manager {m} (term {:?}, since {}), waiting: {:?}",
            mg.term, mg.since, mg.waiting
        )
    }
}
