//! A discrete-event simulation of a pgquorum cluster around the pure
//! decision core (`pgquorum::cluster::{decide, soft, command}`), which runs
//! unchanged inside it. Time is virtual (microseconds); every event is one
//! step, and the invariants are checked after each:
//!
//! 1. at most one PostgreSQL server accepts writes (running, out of
//!    recovery, not shutting down, not frozen);
//! 2. a server that starts accepting writes holds every commit that was
//!    acknowledged after synchronous standbys confirmed it (commits
//!    acknowledged without that — asynchronous mode, an empty
//!    synchronous_standby_names — may be lost, and are only counted).
//!
//! At the end of each run, after a long stretch without faults, the
//! cluster must have one writable primary (the committed one) that
//! acknowledges writes.
//!
//! What is modelled, and how faithfully:
//!
//! * Managers (`leader.rs`): Raft is abstracted as one committed
//!   `ClusterState` changed through `ClusterCommand::apply`, a leader and
//!   elections. Each manager runs the control loop of
//!   `manager/control.rs`: a pass per tick (100 ms) or report, a quorum
//!   round started at T (`confirmed_at`), decide, commit (taking time,
//!   failing when leadership was lost, the entry possibly committed later
//!   by the next leader), re-decide, send commands then the lease grant
//!   booked as receive time + ttl. A new leader notices at its next tick
//!   and starts with `Soft::new(now)`; a deposed or paused leader may
//!   still finish the pass it had begun (its round may have been answered
//!   before the election) and send grants and commands late.
//! * Agents (`agent.rs`): the real agent code decides, the model only
//!   carries its steps out. The lease book (`agent::lease::Lease`) counts
//!   from the send time of the granted report on the agent's clock; each
//!   command runs through the agent core (`agent::core::Execution`), every
//!   `Step` performed on the PostgreSQL model with a duration; reports go
//!   out every heartbeat and on every phase change (observation refreshed
//!   every 200 ms, so possibly stale). Each node has a keeper process that
//!   outlives the agent: it holds the lease the agent last pushed and
//!   fences by `keeper::rule::must_fence` on its own ticks, refuses starts
//!   by `keeper::rule::may_start`, and dies with the host (taking
//!   PostgreSQL with it). PostgreSQL finishes starting by itself, whatever
//!   happens to the agent meanwhile.
//! * PostgreSQL (`pg.rs`): WAL as records with unique ids (LSN = count ×
//!   128 bytes; divergence is a differing record), timelines, standby.signal,
//!   clean/unclean shutdown, streaming with variable lag and cascading,
//!   walsender states catchup/streaming, synchronous_standby_names applied
//!   at start/reload with FIRST k / ANY k release of waiting commits,
//!   pg_rewind as truncation to the common prefix (failing 5 % of the
//!   time), pg_basebackup, immediate and fast shutdown.
//! * Network: one ordered session per agent and leader; delays with
//!   spikes; partitions hold messages back (TCP retransmits) and kill
//!   sessions after 3 s (HTTP/2 keep-alive); session resets; in half the
//!   runs bursts of individually lost messages (harsher than TCP).
//! * Clocks: every agent and manager has its own offset and a rate error
//!   of up to ±0.1 %.
//! * Faults: host crashes (agent and PostgreSQL together, reboot later),
//!   PostgreSQL crashes, the agent killed alone (restarted later: it picks
//!   up the keeper's lease and the running server), the agent frozen
//!   alone, freezes of a whole node (SIGSTOP of agent and PostgreSQL), a
//!   node cut off from the managers (clients and peers still reach it) or
//!   from everything but clients, the same together with a leader change,
//!   leader changes, leader pauses, slow replication; operator actions:
//!   switchovers (through the pure `decide::check_switchover`), `failover
//!   --to` (through `decide::manual_failover`, retried while it says to
//!   wait; commits it gives up are counted apart), pause and resume; node
//!   tags nofailover / nosync; 2–4 nodes; sync off / on / quorum,
//!   sync_count 1–2, strict or not.
//!
//! Simplifications (each errs on the side of fewer false alarms or is
//! stated where it is made):
//!
//! * A frozen node executes nothing, PostgreSQL included: it accepts no
//!   writes while frozen, and on resume the keeper runs before anything
//!   else. The real keeper races PostgreSQL there: a commit in flight
//!   could land before the fence.
//! * The failsafe (agents promising each other while the managers have no
//!   quorum) and the hardware watchdog are not modelled: the managers
//!   here never lose their quorum for longer than an election.
//! * PostgreSQL never freezes without its agent (the agent's
//!   `unresponsive_ms` is always 0): the leader's rule for a silent
//!   primary is covered by unit tests and `tests/fencing.rs` instead.
//! * A sync-commit wait that a client cancels (PostgreSQL then reports
//!   success) is not modelled.
//! * received = flushed = replayed on a replica; a walsender lists a
//!   vanished standby for 10 s (PostgreSQL's default is 60 s); a replica
//!   notices a dead upstream after 5 s.
//! * Operator node actions (restart, reinit) and configuration changes
//!   after start are not exercised.
//!
//! No run is excused from a check: every seed must end with one writable
//! primary that acknowledges writes. The bugs this found are pinned by
//! unit tests of the rule that was wrong (each names its seed).

mod agent;
mod leader;
mod pg;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};

use pgquorum::agent::state::Persisted;
use pgquorum::cluster::decide;
use pgquorum::cluster::wire::{AgentCommand, LeaseGrant, NodeReport};
use pgquorum::cluster::{ClusterCommand, ClusterState, SyncMode, Tags};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use agent::{Agent, Keeper};
use leader::Mgr;
use pg::{GenBoolP, Pg};

/// Microseconds per millisecond.
pub const MS: u64 = 1000;
pub const CLUSTER: &str = "main";
/// A session is declared dead after this long without an answer
/// (HTTP/2 keep-alive 1 s + timeout 2 s, src/transport.rs).
const SESSION_DEATH: u64 = 3_000 * MS;

/// A local clock: offset plus a bounded rate error (parts per million).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ms: u64,
    ppm: i64,
}

impl Clock {
    fn random(rng: &mut StdRng, max_ppm: i64) -> Clock {
        Clock {
            offset_ms: rng.gen_range(0..1_000_000_000),
            ppm: rng.gen_range(-max_ppm..=max_ppm),
        }
    }

    /// The clock's reading (ms) at true time `t` (µs).
    pub fn ms(&self, t: u64) -> u64 {
        self.offset_ms + (t as i128 * (1_000_000 + self.ppm as i128) / 1_000_000_000) as u64
    }

    /// True µs for `ms` milliseconds on this clock (rounded up).
    pub fn true_us(&self, ms: u64) -> u64 {
        let rate = 1_000_000 + self.ppm as i128;
        ((ms as i128 * 1_000_000_000 + rate - 1) / rate) as u64
    }
}

/// Leader to agent.
#[derive(Debug, Clone)]
pub enum Down {
    Welcome { interval_ms: u64 },
    Lease(LeaseGrant),
    Command(AgentCommand),
}

#[derive(Debug, Clone)]
pub enum Ev {
    // Agent process of node n (proc_ tells incarnations apart).
    Register {
        n: usize,
        proc_: u64,
    },
    Heartbeat {
        n: usize,
        proc_: u64,
        gen: u64,
    },
    /// A tick of node n's keeper (incarnation `gen`).
    Keeper {
        n: usize,
        gen: u64,
    },
    Observe {
        n: usize,
        proc_: u64,
    },
    Exec {
        n: usize,
        proc_: u64,
    },
    Connect {
        n: usize,
        proc_: u64,
    },
    ToAgent {
        n: usize,
        conn: u64,
        msg: Box<Down>,
    },
    // PostgreSQL of node n.
    ReplTick {
        n: usize,
        proc_: u64,
    },
    /// Server incarnation `proc_` of node n has finished starting.
    PgStarted {
        n: usize,
        proc_: u64,
    },
    // Manager m.
    PassTick {
        m: usize,
        gen: u64,
    },
    ConfirmDone {
        m: usize,
        term: u64,
        started: u64,
    },
    CommitDone {
        m: usize,
        term: u64,
        cmd: Box<ClusterCommand>,
        iter: usize,
    },
    ToLeader {
        m: usize,
        conn: u64,
        report: Box<NodeReport>,
    },
    // The world.
    Client,
    Fault,
    Reboot {
        n: usize,
    },
    Unfreeze {
        n: usize,
    },
    Resume {
        m: usize,
    },
    Depose,
    Elect,
    /// Kill the sessions of a node still cut off / frozen.
    NodeSessionCheck {
        n: usize,
    },
    /// Kill the sessions of a manager still paused.
    MgrSessionCheck {
        m: usize,
    },
    /// A new agent process on node n (its keeper and PostgreSQL ran on).
    AgentStart {
        n: usize,
    },
    /// Node n's agent (alone) is continued after a SIGSTOP.
    AgentThaw {
        n: usize,
    },
    /// The operator resumes the cluster.
    Unpause,
    /// The operator's `failover --to NODE` (retried while leases run out).
    ManualFailover {
        to: usize,
        tries: u32,
    },
}

impl Ev {
    /// Events of a process on node n (all wait while the host is frozen).
    fn node(&self) -> Option<usize> {
        match self {
            Ev::Keeper { n, .. } | Ev::ReplTick { n, .. } | Ev::PgStarted { n, .. } => Some(*n),
            _ => self.agent_node(),
        }
    }

    /// Events of node n's agent process (they also wait while the agent
    /// alone is frozen).
    fn agent_node(&self) -> Option<usize> {
        match self {
            Ev::Register { n, .. }
            | Ev::Heartbeat { n, .. }
            | Ev::Observe { n, .. }
            | Ev::Exec { n, .. }
            | Ev::Connect { n, .. }
            | Ev::ToAgent { n, .. } => Some(*n),
            _ => None,
        }
    }

    fn mgr(&self) -> Option<usize> {
        match self {
            Ev::PassTick { m, .. }
            | Ev::ConfirmDone { m, .. }
            | Ev::CommitDone { m, .. }
            | Ev::ToLeader { m, .. } => Some(*m),
            _ => None,
        }
    }
}

/// A session between an agent and a manager (one gRPC stream each way:
/// ordered; everything in flight is lost when it breaks).
#[derive(Debug)]
pub struct Conn {
    pub n: usize,
    pub m: usize,
    pub alive: bool,
    last_up: u64,
    last_down: u64,
}

pub struct Node {
    pub name: String,
    pub host: String,
    pub tags: Tags,
    pub clock: Clock,
    pub up: bool,
    pub frozen_until: Option<u64>,
    /// When the host last ran again after a freeze (its own clock).
    pub resumed_at: u64,
    deferred: Vec<Ev>,
    pub mgr_cut_until: u64,
    pub isolated_until: u64,
    pub repl_slow_until: u64,
    /// The agent's state file: survives crashes.
    pub persisted: Persisted,
    pub agent: Option<Agent>,
    /// The keeper: outlives the agent, dies with the host.
    pub keeper: Option<Keeper>,
    /// The agent alone is frozen (SIGSTOP) until then.
    pub agent_frozen_until: Option<u64>,
    agent_deferred: Vec<Ev>,
    pub pg: Pg,
}

/// Knobs of one run, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub sync_mode: SyncMode,
    pub sync_count: u32,
    pub sync_strict: bool,
    pub ttl_ms: u64,
    pub lag_bytes: u64,
    pub start_timeout_ms: u64,
    pub max_ppm: i64,
    pub loss: bool,
    pub switchovers: bool,
    pub rewind_failure: f64,
}

impl Params {
    fn draw(rng: &mut StdRng) -> Params {
        let sync_mode = match rng.gen_range(0..5) {
            0 | 1 => SyncMode::Off,
            2 | 3 => SyncMode::On,
            _ => SyncMode::Quorum,
        };
        Params {
            nodes: match rng.gen_range(0..10) {
                0 => 2,
                1 | 2 => 4,
                _ => 3,
            },
            sync_mode,
            sync_count: if rng.gen_bool(0.3) { 2 } else { 1 },
            sync_strict: rng.gen_bool(0.4),
            ttl_ms: [1000, 2000, 2000, 3000][rng.gen_range(0..4)],
            lag_bytes: if rng.gen_bool(0.3) {
                64 * pg::REC_BYTES
            } else {
                1024 * 1024
            },
            start_timeout_ms: [0, 3000, 10_000][rng.gen_range(0..3)],
            max_ppm: 1000,
            loss: rng.gen_bool(0.5),
            switchovers: rng.gen_bool(0.6),
            rewind_failure: 0.05,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub commits: u64,
    pub acked_async: u64,
    pub acked_sync: u64,
    pub promotions: u64,
    pub keeper_fences: u64,
    pub rewinds: u64,
    pub elections: u64,
    pub faults: u64,
    pub lost_async: u64,
    pub agent_faults: u64,
    pub operator_actions: u64,
    /// Synchronously acknowledged commits an operator's forced failover
    /// gave up.
    pub lost_by_operator: u64,
}

pub struct World {
    pub rng: StdRng,
    pub seed: u64,
    pub now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    next_seq: u64,
    next_id: u64,
    pub state: ClusterState,
    pub nodes: Vec<Node>,
    pub mgrs: Vec<Mgr>,
    pub raft_term: u64,
    pub raft_leader: Option<usize>,
    /// Entries proposed by a leader that lost leadership meanwhile but
    /// reached a majority: the next leader commits them.
    pub orphans: Vec<ClusterCommand>,
    pub conns: BTreeMap<u64, Conn>,
    pub p: Params,
    faults: bool,
    loss_until: u64,
    loss_p: f64,
    /// Commits acknowledged after synchronous confirmation: id, the node
    /// that acknowledged it, when, and the standbys that had it then.
    acked_sync: Vec<(u64, usize, u64, String)>,
    /// Ids of commits acknowledged without it.
    acked_async: Vec<u64>,
    last_ack: u64,
    was_writable: Vec<bool>,
    writers: Vec<String>,
    trace: VecDeque<(u64, String)>,
    pub stats: Stats,
    pub steps: u64,
    /// A node that stays down during the healthy stretch.
    dead: Option<usize>,
}

/// What a successful run reports.
#[derive(Debug)]
pub struct Outcome {
    pub steps: u64,
    pub summary: String,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = Params::draw(&mut rng);
        let nodes = (0..p.nodes)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                host: format!("10.0.0.{}", i + 1),
                tags: Tags::default(),
                clock: Clock::random(&mut rng, p.max_ppm),
                up: true,
                frozen_until: None,
                resumed_at: 0,
                deferred: Vec::new(),
                mgr_cut_until: 0,
                isolated_until: 0,
                repl_slow_until: 0,
                persisted: Persisted::default(),
                agent: None,
                keeper: None,
                agent_frozen_until: None,
                agent_deferred: Vec::new(),
                pg: Pg::default(),
            })
            .collect();
        let mgrs = (0..3)
            .map(|_| Mgr::new(Clock::random(&mut rng, p.max_ppm)))
            .collect();
        let mut nodes: Vec<Node> = nodes;
        // Tags of some nodes: never promoted automatically / never a sync
        // standby.
        if rng.gen_bool(0.3) {
            let i = rng.gen_range(0..p.nodes);
            nodes[i].tags.nofailover = true;
        }
        if rng.gen_bool(0.3) {
            let i = rng.gen_range(0..p.nodes);
            nodes[i].tags.nosync = true;
        }
        let n = p.nodes;
        World {
            rng,
            seed,
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_seq: 0,
            next_id: 1,
            state: ClusterState::default(),
            nodes,
            mgrs,
            raft_term: 0,
            raft_leader: None,
            orphans: Vec::new(),
            conns: BTreeMap::new(),
            p,
            faults: false,
            loss_until: 0,
            loss_p: 0.0,
            acked_sync: Vec::new(),
            acked_async: Vec::new(),
            last_ack: 0,
            was_writable: vec![false; n],
            writers: Vec::new(),
            trace: VecDeque::new(),
            stats: Stats::default(),
            steps: 0,
            dead: None,
        }
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn rng_range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.rng.gen_range(lo..=hi)
        }
    }

    pub fn wall_ms(&self) -> u64 {
        1_700_000_000_000 + self.now / MS
    }

    pub fn schedule(&mut self, at: u64, ev: Ev) {
        self.next_seq += 1;
        self.events.insert(self.next_seq, ev);
        self.queue.push(Reverse((at.max(self.now), self.next_seq)));
    }

    pub fn log(&mut self, line: impl Into<String>) {
        self.trace.push_back((self.now, line.into()));
        if self.trace.len() > 600 {
            self.trace.pop_front();
        }
    }

    pub fn frozen(&self, n: usize) -> bool {
        self.nodes[n].frozen_until.is_some()
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|x| x.name == name)
    }

    pub fn mgr_link_cut(&self, n: usize) -> bool {
        self.nodes[n].mgr_cut_until > self.now || self.nodes[n].isolated_until > self.now
    }

    fn cut_end(&self, n: usize) -> u64 {
        self.nodes[n]
            .mgr_cut_until
            .max(self.nodes[n].isolated_until)
    }

    fn delay(&mut self) -> u64 {
        if self.faults && self.rng.gen_bool(0.02) {
            self.rng_range(20 * MS, 300 * MS)
        } else {
            self.rng_range(200, 4 * MS)
        }
    }

    fn lost(&mut self) -> bool {
        self.p.loss && self.faults && self.loss_until > self.now && self.rng.gen_bool_p(self.loss_p)
    }

    /// Agent to leader, in order; held back while the link is cut (TCP
    /// retransmits) and lost if the session dies meanwhile.
    pub fn send_up(&mut self, conn: u64, report: NodeReport) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let (n, m) = (c.n, c.m);
        if self.lost() {
            return;
        }
        let d = self.delay();
        let start = self.now.max(self.cut_end(n));
        let c = self.conns.get_mut(&conn).expect("exists");
        let at = (start + d).max(c.last_up);
        c.last_up = at;
        self.schedule(
            at,
            Ev::ToLeader {
                m,
                conn,
                report: Box::new(report),
            },
        );
    }

    pub fn send_down(&mut self, conn: u64, msg: Down) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let n = c.n;
        if self.lost() {
            return;
        }
        let d = self.delay();
        let start = self.now.max(self.cut_end(n));
        let c = self.conns.get_mut(&conn).expect("exists");
        let at = (start + d).max(c.last_down);
        c.last_down = at;
        self.schedule(
            at,
            Ev::ToAgent {
                n,
                conn,
                msg: Box::new(msg),
            },
        );
    }

    pub fn open_conn(&mut self, n: usize, m: usize) -> u64 {
        let id = self.fresh_id();
        self.conns.insert(
            id,
            Conn {
                n,
                m,
                alive: true,
                last_up: 0,
                last_down: 0,
            },
        );
        self.attach(n, m, id);
        id
    }

    pub fn kill_conn(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        c.alive = false;
        let (n, m) = (c.n, c.m);
        let name = self.nodes[n].name.clone();
        if self.mgrs[m].sessions.get(&name) == Some(&conn) {
            self.mgrs[m].sessions.remove(&name);
        }
        self.agent_conn_lost(n, conn);
        self.conns.remove(&conn);
    }

    fn kill_conns_where(&mut self, f: impl Fn(&Conn) -> bool) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && f(c))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.kill_conn(id);
        }
    }

    /// Apply a committed command to the replicated state.
    pub fn apply(&mut self, cmd: &ClusterCommand) -> Result<(), String> {
        let r = cmd
            .apply(&mut self.state)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let epoch = self.state.clusters.get(CLUSTER).map_or(0, |c| c.epoch);
        match (cmd, &r) {
            (ClusterCommand::Promote { node, kind, .. }, Ok(())) => {
                if self.dead.is_some() && self.dead == self.node_index(node) {
                    // Chosen from a report sent just before it died: in sync
                    // mode only it may come back, so it does.
                    self.dead = None;
                    if let Some(n) = self.node_index(node) {
                        self.schedule(self.now + 5_000 * MS, Ev::Reboot { n });
                    }
                }
                self.stats.promotions += 1;
                self.log(format!(
                    "COMMIT promote {node} ({}) -> epoch {epoch}",
                    kind.as_str()
                ));
            }
            (ClusterCommand::RegisterNode { .. }, _) => {}
            (_, Ok(())) => {
                let text = format!("{cmd:?}");
                let short: String = text.chars().take(160).collect();
                self.log(format!("COMMIT {short}"));
            }
            (_, Err(e)) => {
                let e = e.clone();
                self.log(format!("commit refused: {e}"));
            }
        }
        r
    }

    pub fn register_node(&mut self, name: &str, host: &str, tags: Tags) {
        let fresh = !self.state.clusters.contains_key(CLUSTER);
        let _ = self.apply(&ClusterCommand::RegisterNode {
            cluster: CLUSTER.into(),
            name: name.into(),
            host: host.into(),
            port: 5432,
            http: format!("{host}:8008"),
            tags,
        });
        if fresh {
            let p = &self.p;
            let mut changes = BTreeMap::new();
            changes.insert("ttl".to_string(), p.ttl_ms.to_string());
            changes.insert("sync_mode".to_string(), p.sync_mode.to_string());
            changes.insert("sync_count".to_string(), p.sync_count.to_string());
            changes.insert(
                "sync_strict".to_string(),
                if p.sync_strict { "on" } else { "off" }.to_string(),
            );
            changes.insert(
                "maximum_lag_on_failover".to_string(),
                p.lag_bytes.to_string(),
            );
            changes.insert(
                "primary_start_timeout".to_string(),
                p.start_timeout_ms.to_string(),
            );
            let cmd = ClusterCommand::SetConfig {
                at_unix_ms: 0,
                cluster: CLUSTER.into(),
                changes,
            };
            if let Err(e) = self.apply(&cmd) {
                panic!("configuration refused: {e}");
            }
        }
    }

    pub fn ack(&mut self, n: usize, id: u64, sync: bool) {
        self.last_ack = self.now;
        if sync {
            self.stats.acked_sync += 1;
            let holders = self
                .standbys(n)
                .iter()
                .map(|(r, flush, _)| format!("{}@{flush}", self.nodes[*r].name))
                .collect::<Vec<_>>()
                .join(" ");
            let ssn = self.nodes[n]
                .pg
                .proc
                .as_ref()
                .map(|p| p.ssn.clone())
                .unwrap_or_default();
            self.acked_sync
                .push((id, n, self.now, format!("{ssn} standbys {holders}")));
        } else {
            self.stats.acked_async += 1;
            self.acked_async.push(id);
        }
    }

    fn committed_primary(&self) -> Option<usize> {
        let c = self.state.clusters.get(CLUSTER)?;
        self.node_index(c.primary.as_deref()?)
    }

    fn epoch(&self) -> u64 {
        self.state.clusters.get(CLUSTER).map_or(0, |c| c.epoch)
    }

    // ----- faults -------------------------------------------------------

    fn pick_node(&mut self, prefer_primary: bool) -> usize {
        if prefer_primary && self.rng.gen_bool(0.5) {
            if let Some(p) = self.committed_primary() {
                return p;
            }
        }
        self.rng.gen_range(0..self.nodes.len())
    }

    fn fault(&mut self) {
        if !self.faults {
            return;
        }
        let next = self.now + self.rng_range(300, 3500) * MS;
        self.schedule(next, Ev::Fault);
        self.stats.faults += 1;
        let kind = self.rng.gen_range(0..120);
        let n = self.pick_node(true);
        let name = self.nodes[n].name.clone();
        match kind {
            0..=14 => {
                if !self.nodes[n].up {
                    return;
                }
                let down = self.rng_range(300, 15_000);
                self.log(format!("FAULT host {name} crashes for {down}ms"));
                self.crash_host(n);
                self.schedule(self.now + down * MS, Ev::Reboot { n });
            }
            15..=24 => {
                if !self.nodes[n].up || self.frozen(n) || self.nodes[n].pg.proc.is_none() {
                    return;
                }
                self.log(format!("FAULT postgres of {name} crashes"));
                self.pg_kill(n, "postgres crash");
            }
            25..=36 => {
                if !self.nodes[n].up || self.frozen(n) {
                    return;
                }
                let d = self.rng_range(200, 6_000);
                self.log(format!("FAULT {name} frozen (agent + postgres) for {d}ms"));
                self.nodes[n].frozen_until = Some(self.now + d * MS);
                self.schedule(self.now + d * MS, Ev::Unfreeze { n });
                self.schedule(self.now + SESSION_DEATH, Ev::NodeSessionCheck { n });
            }
            37..=51 => {
                let d = self.rng_range(300, 12_000);
                self.log(format!("FAULT {name} cut off from the managers for {d}ms"));
                let until = self.now + d * MS;
                self.nodes[n].mgr_cut_until = self.nodes[n].mgr_cut_until.max(until);
                self.schedule(self.now + SESSION_DEATH, Ev::NodeSessionCheck { n });
            }
            52..=61 => {
                let d = self.rng_range(300, 12_000);
                self.log(format!(
                    "FAULT {name} isolated from managers and peers (clients still reach it) for {d}ms"
                ));
                let until = self.now + d * MS;
                self.nodes[n].isolated_until = self.nodes[n].isolated_until.max(until);
                self.schedule(self.now + SESSION_DEATH, Ev::NodeSessionCheck { n });
            }
            62..=71 => {
                if self.raft_leader.is_none() {
                    return;
                }
                let gap = self.rng_range(150, 2_000);
                self.log(format!("FAULT leader change (no leader for {gap}ms)"));
                self.depose();
                self.schedule(self.now + gap * MS, Ev::Elect);
            }
            72..=77 => {
                let Some(m) = self.raft_leader else {
                    return;
                };
                if self.mgrs[m].paused_until.is_some() {
                    return;
                }
                let d = self.rng_range(100, 5_000);
                self.log(format!("FAULT leader manager {m} paused for {d}ms"));
                self.mgrs[m].paused_until = Some(self.now + d * MS);
                self.schedule(self.now + d * MS, Ev::Resume { m });
                if d > 1_000 {
                    let t = self.now + self.rng_range(900, 1_200) * MS;
                    self.schedule(t, Ev::Depose);
                    let e = t + self.rng_range(100, 1_000) * MS;
                    self.schedule(e, Ev::Elect);
                }
                self.schedule(self.now + SESSION_DEATH, Ev::MgrSessionCheck { m });
            }
            78..=85 => {
                let ids: Vec<u64> = self.conns.keys().copied().collect();
                if ids.is_empty() {
                    return;
                }
                let c = ids[self.rng.gen_range(0..ids.len())];
                self.log("FAULT a session is reset");
                self.kill_conn(c);
            }
            86..=90 if self.raft_leader.is_some() => {
                // A partition that leaves the primary (or any node) with the
                // leader on the minority side: the node is cut off and a
                // new leader is elected elsewhere, while the node may still
                // hold a lease from the old one.
                let d = self.rng_range(500, 10_000);
                let gap = self.rng_range(150, 1_500);
                let peers = self.rng.gen_bool(0.5);
                self.log(format!(
                    "FAULT {name} cut off from the managers{} with the leader for {d}ms; new election in {gap}ms",
                    if peers { " and peers" } else { "" }
                ));
                let until = self.now + d * MS;
                if peers {
                    self.nodes[n].isolated_until = self.nodes[n].isolated_until.max(until);
                } else {
                    self.nodes[n].mgr_cut_until = self.nodes[n].mgr_cut_until.max(until);
                }
                self.schedule(self.now + SESSION_DEATH, Ev::NodeSessionCheck { n });
                self.depose();
                self.schedule(self.now + gap * MS, Ev::Elect);
            }
            86..=90 => {}
            91..=93 => {
                let d = self.rng_range(500, 10_000);
                self.log(format!("FAULT replication to {name} slow for {d}ms"));
                self.nodes[n].repl_slow_until = self.now + d * MS;
            }
            94 => {
                let d = self.rng_range(500, 4_000);
                self.loss_until = self.now + d * MS;
                self.loss_p = self.rng.gen_range(0.05..0.4);
                if self.p.loss {
                    self.log(format!(
                        "FAULT messages lost ({:.2}) for {d}ms",
                        self.loss_p
                    ));
                }
            }
            95..=100 => {
                if !self.nodes[n].up || self.frozen(n) || self.nodes[n].agent.is_none() {
                    return;
                }
                let d = self.rng_range(100, 6_000);
                self.log(format!(
                    "FAULT the agent of {name} is killed alone; it starts again in {d}ms"
                ));
                self.stats.agent_faults += 1;
                self.agent_kill(n);
                self.schedule(self.now + d * MS, Ev::AgentStart { n });
            }
            101..=105 => {
                if !self.nodes[n].up
                    || self.frozen(n)
                    || self.nodes[n].agent.is_none()
                    || self.nodes[n].agent_frozen_until.is_some()
                {
                    return;
                }
                let d = self.rng_range(200, 6_000);
                self.log(format!(
                    "FAULT the agent of {name} is frozen alone for {d}ms"
                ));
                self.stats.agent_faults += 1;
                self.nodes[n].agent_frozen_until = Some(self.now + d * MS);
                self.schedule(self.now + d * MS, Ev::AgentThaw { n });
                self.schedule(self.now + SESSION_DEATH, Ev::NodeSessionCheck { n });
            }
            106..=109 => {
                if self.raft_leader.is_none()
                    || self.state.clusters.get(CLUSTER).is_none_or(|c| c.paused)
                {
                    return;
                }
                let d = self.rng_range(500, 8_000);
                self.operator_pause(true);
                self.schedule(self.now + d * MS, Ev::Unpause);
            }
            110..=114 => {
                let Some(p) = self.committed_primary() else {
                    return;
                };
                let others: Vec<usize> = (0..self.nodes.len()).filter(|&x| x != p).collect();
                let to = others[self.rng.gen_range(0..others.len())];
                self.operator_failover(to, 0);
            }
            _ => {
                if !self.p.switchovers || self.raft_leader.is_none() {
                    return;
                }
                let to = if self.rng.gen_bool(0.5) {
                    None
                } else {
                    Some(
                        self.nodes[self.rng.gen_range(0..self.nodes.len())]
                            .name
                            .clone(),
                    )
                };
                if let Err(why) = self.operator_check_switchover(to.as_deref()) {
                    self.log(format!("OPERATOR switchover to {to:?} refused: {why}"));
                    return;
                }
                self.stats.operator_actions += 1;
                self.log(format!("OPERATOR switchover to {to:?}"));
                let _ = self.apply(&ClusterCommand::RequestSwitchover {
                    cluster: CLUSTER.into(),
                    from: None,
                    to,
                    not_before_unix_ms: None,
                    requested_unix_ms: self.wall_ms(),
                });
            }
        }
    }

    // ----- the operator ---------------------------------------------------

    /// The decision core's input as the leader sees it now (`None` without
    /// a leader with soft state: an operator's call would fail then).
    fn leader_input<T>(&self, question: impl FnOnce(&decide::Input) -> T) -> Option<T> {
        let m = self.raft_leader?;
        let soft = self.mgrs[m].soft.as_ref()?;
        let cluster = self.state.clusters.get(CLUSTER)?;
        Some(question(&decide::Input {
            cluster,
            soft,
            now: self.mgr_now(m),
            wall_ms: self.wall_ms(),
        }))
    }

    /// `pgquorum switchover`: the leader's pre-check.
    fn operator_check_switchover(&self, to: Option<&str>) -> Result<(), String> {
        self.leader_input(|input| decide::check_switchover(input, to))
            .ok_or_else(|| "no leader".to_string())?
            .map_err(|r| r.message)
    }

    /// `pgquorum pause` / `resume`.
    fn operator_pause(&mut self, paused: bool) {
        if self.raft_leader.is_none() {
            if !paused {
                // Resume as soon as a leader can take it.
                self.schedule(self.now + 500 * MS, Ev::Unpause);
            }
            return;
        }
        self.stats.operator_actions += 1;
        self.log(format!(
            "OPERATOR {}",
            if paused { "pause" } else { "resume" }
        ));
        let _ = self.apply(&ClusterCommand::SetPaused {
            at_unix_ms: 0,
            cluster: CLUSTER.into(),
            paused,
        });
    }

    /// `pgquorum failover --to NODE` through the leader
    /// (`decide::manual_failover`), waiting out leases like the manager.
    /// The operator vouches that the old primary is stopped only when its
    /// host really is down.
    fn operator_failover(&mut self, to: usize, tries: u32) {
        let name = self.nodes[to].name.clone();
        let vouched = self.committed_primary().is_some_and(|p| !self.nodes[p].up);
        let verdict = self.leader_input(|input| decide::manual_failover(input, &name, vouched));
        match verdict {
            Some(Err(r)) if tries == 0 => {
                self.log(format!(
                    "OPERATOR failover --to {name} refused: {}",
                    r.message
                ));
            }
            None | Some(Err(_)) => {}
            Some(Ok(decide::ManualFailover::WaitUntil(_))) if tries < 40 => {
                self.schedule(
                    self.now + 100 * MS,
                    Ev::ManualFailover {
                        to,
                        tries: tries + 1,
                    },
                );
            }
            Some(Ok(decide::ManualFailover::WaitUntil(_))) => {}
            Some(Ok(decide::ManualFailover::Promote(cmd))) => {
                self.stats.operator_actions += 1;
                self.log(format!("OPERATOR failover --to {name}"));
                // `failover --to` promotes regardless of lag, by design:
                // commits the target lacks are the operator's to lose
                // (counted, not failed). Safety — one writer, leases and
                // promises waited out — is still checked.
                let held: HashSet<u64> = self.nodes[to]
                    .pg
                    .data
                    .as_ref()
                    .map(|d| d.wal.iter().map(|r| r.id).collect())
                    .unwrap_or_default();
                let before = self.acked_sync.len();
                self.acked_sync.retain(|(id, ..)| held.contains(id));
                self.stats.lost_by_operator += (before - self.acked_sync.len()) as u64;
                if self.apply(&cmd).is_ok() {
                    if let Some(m) = self.raft_leader {
                        if let Some(soft) = self.mgrs[m].soft.as_mut() {
                            soft.epoch_changed();
                        }
                    }
                }
            }
        }
    }

    fn crash_host(&mut self, n: usize) {
        self.nodes[n].up = false;
        self.nodes[n].agent = None;
        self.nodes[n].keeper = None;
        self.nodes[n].frozen_until = None;
        self.nodes[n].agent_frozen_until = None;
        self.nodes[n].deferred.clear();
        self.nodes[n].agent_deferred.clear();
        self.pg_kill(n, "host crash");
        self.kill_conns_where(|c| c.n == n);
    }

    fn depose(&mut self) {
        if let Some(m) = self.raft_leader.take() {
            self.log(format!("raft: manager {m} is no longer leader"));
        }
    }

    fn elect(&mut self) {
        if self.raft_leader.is_some() {
            return;
        }
        let candidates: Vec<usize> = (0..self.mgrs.len())
            .filter(|m| self.mgrs[*m].paused_until.is_none())
            .collect();
        if candidates.is_empty() {
            let t = self.now + 300 * MS;
            self.schedule(t, Ev::Elect);
            return;
        }
        let m = candidates[self.rng.gen_range(0..candidates.len())];
        self.raft_term += 1;
        self.raft_leader = Some(m);
        self.stats.elections += 1;
        self.log(format!(
            "raft: manager {m} elected, term {}",
            self.raft_term
        ));
        for cmd in std::mem::take(&mut self.orphans) {
            let _ = self.apply(&cmd);
        }
    }

    fn heal(&mut self) {
        self.faults = false;
        self.log("--- faults stop: healing everything ---");
        for n in 0..self.nodes.len() {
            self.nodes[n].mgr_cut_until = self.now;
            self.nodes[n].isolated_until = self.now;
            self.nodes[n].repl_slow_until = self.now;
        }
        self.loss_until = 0;
        for n in 0..self.nodes.len() {
            if self.nodes[n].agent_frozen_until.is_some() {
                self.nodes[n].agent_frozen_until = Some(self.now);
                self.schedule(self.now, Ev::AgentThaw { n });
            }
            if self.nodes[n].up && self.nodes[n].agent.is_none() {
                self.schedule(self.now, Ev::AgentStart { n });
            }
        }
        if self.state.clusters.get(CLUSTER).is_some_and(|c| c.paused) {
            self.schedule(self.now, Ev::Unpause);
        }
        if self.raft_leader.is_none() {
            self.schedule(self.now + 500 * MS, Ev::Elect);
        }
        // Sometimes a replica is gone for good: the others must carry on
        // (non-strict synchronous mode included).
        let primary = self.committed_primary();
        if self.nodes.len() >= 3 && primary.is_some() && self.rng.gen_bool(0.35) {
            let others: Vec<usize> = (0..self.nodes.len())
                .filter(|&n| Some(n) != primary)
                .collect();
            let n = others[self.rng.gen_range(0..others.len())];
            self.log(format!("{} is gone for good", self.nodes[n].name));
            if self.nodes[n].up {
                self.crash_host(n);
            }
            self.dead = Some(n);
        }
    }

    fn client(&mut self) {
        let next = self.now + self.rng_range(5, 25) * MS;
        self.schedule(next, Ev::Client);
        if let Some(n) = (0..self.nodes.len()).find(|&n| self.writable(n)) {
            self.pg_commit(n);
        }
    }

    // ----- the loop -----------------------------------------------------

    fn dispatch(&mut self, ev: Ev) {
        if let Some(n) = ev.node() {
            if self.frozen(n) {
                self.nodes[n].deferred.push(ev);
                return;
            }
        }
        if let Some(n) = ev.agent_node() {
            if self.nodes[n].agent_frozen_until.is_some() {
                self.nodes[n].agent_deferred.push(ev);
                return;
            }
        }
        if let Some(m) = ev.mgr() {
            if self.mgrs[m].paused_until.is_some() {
                self.mgrs[m].deferred.push(ev);
                return;
            }
        }
        match ev {
            Ev::Register { n, proc_ } => self.agent_register(n, proc_),
            Ev::Heartbeat { n, proc_, gen } => self.agent_heartbeat(n, proc_, gen),
            Ev::Keeper { n, gen } => self.keeper_tick(n, gen),
            Ev::Observe { n, proc_ } => self.agent_observe(n, proc_),
            Ev::Exec { n, proc_ } => self.agent_exec(n, proc_),
            Ev::Connect { n, proc_ } => self.agent_connect(n, proc_),
            Ev::ToAgent { n, conn, msg } => {
                if self.conns.get(&conn).is_some_and(|c| c.alive) {
                    self.agent_message(n, conn, *msg);
                }
            }
            Ev::ReplTick { n, proc_ } => self.repl_tick(n, proc_),
            Ev::PgStarted { n, proc_ } => self.pg_started(n, proc_),
            Ev::PassTick { m, gen } => self.pass_tick(m, gen),
            Ev::ConfirmDone { m, term, started } => self.confirm_done(m, term, started),
            Ev::CommitDone { m, term, cmd, iter } => self.commit_done(m, term, *cmd, iter),
            Ev::ToLeader { m, conn, report } => self.leader_report(m, conn, *report),
            Ev::Client => self.client(),
            Ev::Fault => self.fault(),
            Ev::Reboot { n } if self.dead == Some(n) => {}
            Ev::Reboot { n } => {
                self.nodes[n].up = true;
                self.log(format!("{}: host boots", self.nodes[n].name));
                self.keeper_boot(n);
                self.agent_start(n);
            }
            Ev::AgentStart { n } => {
                if self.nodes[n].up && self.nodes[n].agent.is_none() && self.dead != Some(n) {
                    self.log(format!("{}: agent starts again", self.nodes[n].name));
                    self.agent_start(n);
                }
            }
            Ev::AgentThaw { n } => {
                if self.nodes[n]
                    .agent_frozen_until
                    .is_some_and(|t| t <= self.now)
                {
                    self.nodes[n].agent_frozen_until = None;
                    self.log(format!("{}: agent resumes", self.nodes[n].name));
                    let deferred = std::mem::take(&mut self.nodes[n].agent_deferred);
                    for ev in deferred {
                        self.schedule(self.now, ev);
                    }
                }
            }
            Ev::Unpause => self.operator_pause(false),
            Ev::ManualFailover { to, tries } => self.operator_failover(to, tries),
            Ev::Unfreeze { n } => {
                if self.nodes[n].frozen_until.is_some_and(|t| t <= self.now) {
                    self.nodes[n].frozen_until = None;
                    self.nodes[n].resumed_at = self.agent_now(n);
                    self.log(format!("{}: resumes", self.nodes[n].name));
                    // Who runs first after SIGCONT is the scheduler's
                    // choice: the keeper (it fences at once), or the server,
                    // whose backends serve what waits in their sockets —
                    // the commit gate then acknowledges nothing once the
                    // lease is over.
                    let keeper_first = self.rng.gen_bool(0.5);
                    if keeper_first {
                        self.keeper_check(n);
                    }
                    let deferred = std::mem::take(&mut self.nodes[n].deferred);
                    for ev in deferred {
                        let late = !keeper_first && matches!(ev, Ev::Keeper { .. });
                        let at = if late { self.now + 5 * MS } else { self.now };
                        self.schedule(at, ev);
                    }
                    self.pg_release(n);
                }
            }
            Ev::Resume { m } => {
                if self.mgrs[m].paused_until.is_some_and(|t| t <= self.now) {
                    self.mgrs[m].paused_until = None;
                    self.log(format!("manager {m} resumes"));
                    let deferred = std::mem::take(&mut self.mgrs[m].deferred);
                    for ev in deferred {
                        self.schedule(self.now, ev);
                    }
                }
            }
            Ev::Depose => self.depose(),
            Ev::Elect => self.elect(),
            Ev::NodeSessionCheck { n } => {
                if self.mgr_link_cut(n) || self.frozen(n) {
                    self.kill_conns_where(|c| c.n == n);
                }
            }
            Ev::MgrSessionCheck { m } => {
                if self.mgrs[m].paused_until.is_some() {
                    self.kill_conns_where(|c| c.m == m);
                }
            }
        }
    }

    /// The invariants, after every event.
    fn check(&mut self) -> Result<(), String> {
        let writable: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.acknowledges_writes(n))
            .collect();
        if writable.len() > 1 {
            let names: Vec<String> = writable
                .iter()
                .map(|&n| self.nodes[n].name.clone())
                .collect();
            return Err(format!(
                "SPLIT BRAIN: {} accept writes at the same time",
                names.join(" and ")
            ));
        }
        // Acknowledging nothing is not enough for long: a server past its
        // lease is fenced soon after its host runs again (the keeper fences
        // FENCE_LEAD before the deadline; after a thaw it may run a few
        // milliseconds after the server).
        for n in 0..self.nodes.len() {
            if !self.writable(n) || self.frozen(n) {
                continue;
            }
            if let pgquorum::keeper::Lease::Until { deadline, .. } = self.keeper_lease(n) {
                let since = deadline.max(self.nodes[n].resumed_at);
                let late = self.agent_now(n).saturating_sub(since);
                if late > 100 {
                    return Err(format!(
                        "LATE FENCE: {} runs writable {late} ms past its lease (and any freeze)",
                        self.nodes[n].name
                    ));
                }
            }
        }
        for n in 0..self.nodes.len() {
            let w = writable.contains(&n);
            if w && !self.was_writable[n] {
                self.new_writer(n)?;
            }
            self.was_writable[n] = w;
        }
        Ok(())
    }

    /// `n` starts accepting writes: it must hold every synchronously
    /// acknowledged commit.
    fn new_writer(&mut self, n: usize) -> Result<(), String> {
        let name = self.nodes[n].name.clone();
        let ids: HashSet<u64> = self.nodes[n]
            .pg
            .data
            .as_ref()
            .map(|d| d.wal.iter().map(|r| r.id).collect())
            .unwrap_or_default();
        let missing: Vec<&(u64, usize, u64, String)> = self
            .acked_sync
            .iter()
            .filter(|(id, ..)| !ids.contains(id))
            .collect();
        if let Some((id, by, at, how)) = missing.first() {
            return Err(format!(
                "LOST ACKNOWLEDGED COMMITS: {name} accepts writes without {} synchronously acknowledged commit(s), the first (id {id}) acknowledged by {} at {:.3}s with {how}",
                missing.len(),
                self.nodes[*by].name,
                *at as f64 / 1e6
            ));
        }
        let lost = self
            .acked_async
            .iter()
            .filter(|id| !ids.contains(id))
            .count() as u64;
        if lost > self.stats.lost_async {
            self.stats.lost_async = lost;
        }
        self.writers.push(name.clone());
        self.log(format!(
            "{name} ACCEPTS WRITES (epoch {}, wal {})",
            self.epoch(),
            self.wal_len(n)
        ));
        Ok(())
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        let c = self.state.clusters.get(CLUSTER);
        s.push_str(&format!(
            "committed: primary {:?}, epoch {}, sync set {:?}, switchover {:?}\n",
            c.and_then(|c| c.primary.clone()),
            self.epoch(),
            c.map(|c| c.sync_set.clone()),
            c.and_then(|c| c.switchover.clone())
        ));
        s.push_str(&format!("{}\n", self.leader_summary()));
        for (i, node) in self.nodes.iter().enumerate() {
            let pg = match &node.pg.proc {
                None => "stopped".to_string(),
                Some(p) => format!(
                    "{:?} {} tl {} ssn {:?} upstream {:?} receiver {:?}",
                    p.state,
                    if p.in_recovery { "replica" } else { "PRIMARY" },
                    p.timeline,
                    p.ssn,
                    p.upstream.map(|u| self.nodes[u].name.clone()),
                    p.receiver.as_ref().map(|r| self.nodes[r.from].name.clone()),
                ),
            };
            let a = node.agent.as_ref().map(|a| {
                format!(
                    "phase {:?} lease {}ms conn {:?} queue {} exec {:?}",
                    a.phase,
                    self.lease_remaining(i),
                    a.conn,
                    a.queue.len(),
                    a.exec.as_ref().map(|e| e.command().action.name())
                )
            });
            s.push_str(&format!(
                "{}{}{}: up {} frozen {} | persisted epoch {} intent {:?} upstream {:?} | agent {:?} | pg {} | wal {}\n",
                node.name,
                if node.tags.nofailover { " [nofailover]" } else { "" },
                if node.tags.nosync { " [nosync]" } else { "" },
                node.up,
                self.frozen(i),
                node.persisted.epoch,
                node.persisted.intent,
                node.persisted.upstream.as_ref().map(|u| u.node.clone()),
                a,
                pg,
                self.wal_len(i)
            ));
        }
        s
    }

    fn failure(&self, message: &str) -> String {
        let lines: usize = std::env::var("SIM_TRACE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120);
        let mut s = format!(
            "simulation failed: {message}\n  seed {} (rerun: SIM_SEED={} cargo test --test simulation -- --nocapture), step {}, t = {:.3}s\n  params {:?}\n",
            self.seed,
            self.seed,
            self.steps,
            self.now as f64 / 1e6,
            self.p
        );
        s.push_str(&self.describe());
        s.push_str(&format!("last {lines} trace lines:\n"));
        let skip = self.trace.len().saturating_sub(lines);
        for (t, line) in self.trace.iter().skip(skip) {
            s.push_str(&format!("  {:>10.3}s  {line}\n", *t as f64 / 1e6));
        }
        s
    }
}

/// Run one seed for at least `steps` events (and at least a 45 s healthy
/// stretch at the end, in which the cluster must end up writable).
pub fn run(seed: u64, steps: u64) -> Result<Outcome, String> {
    let mut w = World::new(seed);
    w.raft_term = 1;
    w.raft_leader = Some(0);
    w.stats.elections = 1;
    for m in 0..w.mgrs.len() {
        let t = w.rng_range(0, 100) * MS;
        w.schedule(t, Ev::PassTick { m, gen: 0 });
    }
    for n in 0..w.nodes.len() {
        let t = w.rng_range(0, 500) * MS;
        w.schedule(t, Ev::Reboot { n });
    }
    w.schedule(0, Ev::Client);
    let faults_from = 8_000 * MS;
    w.schedule(faults_from, Ev::Fault);
    w.faults = true;
    let fault_steps = steps * 7 / 10;
    let mut healthy_since: Option<u64> = None;
    // Long enough for a switchover stuck in its demoting phase to be given
    // up (twice decide's SWITCHOVER_LIMIT_MS after it was requested).
    const HEALTHY: u64 = 75_000 * MS;
    loop {
        let Some(Reverse((at, seq))) = w.queue.pop() else {
            return Err(w.failure("the event queue ran dry"));
        };
        let ev = w.events.remove(&seq).expect("queued event");
        w.now = at;
        w.steps += 1;
        w.dispatch(ev);
        if let Err(e) = w.check() {
            return Err(w.failure(&e));
        }
        if healthy_since.is_none() && w.steps >= fault_steps && w.now > faults_from {
            w.heal();
            healthy_since = Some(w.now);
        }
        if let Some(h) = healthy_since {
            if w.steps >= steps && w.now >= h + HEALTHY {
                break;
            }
        }
    }
    // Liveness, loosely: after a long healthy stretch one server takes
    // writes, it is the committed primary, and writes are acknowledged.
    let writable: Vec<usize> = (0..w.nodes.len()).filter(|&n| w.writable(n)).collect();
    let primary = w.committed_primary();
    if writable.len() != 1 || primary != writable.first().copied() {
        return Err(w.failure(&format!(
            "LIVENESS: after {}s without faults the writable servers are {:?} and the committed primary is {:?}",
            HEALTHY / MS / 1000,
            writable.iter().map(|&n| w.nodes[n].name.clone()).collect::<Vec<_>>(),
            primary.map(|p| w.nodes[p].name.clone())
        )));
    }
    // Strict synchronous mode with fewer standbys allowed to be synchronous
    // than sync_count refuses every write, by design.
    let sync_capable = w
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, x)| Some(*i) != primary && Some(*i) != w.dead && !x.tags.nosync)
        .count() as u32;
    let writes_blocked_by_config =
        w.p.sync_mode != SyncMode::Off && w.p.sync_strict && sync_capable < w.p.sync_count;
    if !writes_blocked_by_config && w.now.saturating_sub(w.last_ack) > 3_000 * MS {
        return Err(w.failure(&format!(
            "LIVENESS: no write acknowledged in the last {:.1}s of a healthy cluster",
            (w.now - w.last_ack) as f64 / 1e6
        )));
    }
    if std::env::var("SIM_VERBOSE").is_ok() {
        println!("{}", w.failure("(no failure: SIM_VERBOSE)"));
    }
    let s = &w.stats;
    Ok(Outcome {
        steps: w.steps,
        summary: format!(
            "seed {seed}: {} nodes{}, sync {} k={} strict={}, ttl {}ms: {} steps, {}s virtual, {} faults, {} elections, {} promotions, {} writers, {} keeper fences, {} agent faults, {} operator actions, {} rewinds, commits {} (acked sync {}, async {}, async lost at a failover {}, given up by a forced failover {})",
            w.p.nodes,
            w.nodes
                .iter()
                .filter(|x| x.tags.nofailover || x.tags.nosync)
                .map(|x| format!(
                    " {}{}{}",
                    x.name,
                    if x.tags.nofailover { " nofailover" } else { "" },
                    if x.tags.nosync { " nosync" } else { "" }
                ))
                .collect::<String>(),
            w.p.sync_mode,
            w.p.sync_count,
            w.p.sync_strict,
            w.p.ttl_ms,
            w.steps,
            w.now / MS / 1000,
            s.faults,
            s.elections,
            s.promotions,
            w.writers.len(),
            s.keeper_fences,
            s.agent_faults,
            s.operator_actions,
            s.rewinds,
            s.commits,
            s.acked_sync,
            s.acked_async,
            s.lost_async,
            s.lost_by_operator
        ),
    })
}
