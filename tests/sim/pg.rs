//! A model of one PostgreSQL server: data directory, WAL, the postmaster,
//! streaming replication and synchronous commit.
//!
//! WAL is a vector of records, each with a globally unique id; a record's
//! LSN is its end position (`(index + 1) * REC_BYTES`). Two histories
//! diverge where their records differ, so "timeline forked off" and
//! pg_rewind's common ancestor fall out of a plain prefix comparison.

use std::cmp::Reverse;

use pgquorum::cluster::wire::{DataDirState, PgStatus, ReplicaConnection, WalReceiver};
use pgquorum::cluster::{sync, Lsn};
use pgquorum::keeper::rule;

use super::{Ev, World, MS};

/// Bytes per WAL record.
pub const REC_BYTES: u64 = 128;
/// A replica notices a dead upstream connection after this long without
/// progress (keepalives / tcp_user_timeout in primary_conninfo).
const RECEIVER_TIMEOUT: u64 = 5_000 * MS;
/// A primary lists a vanished standby in pg_stat_replication this long
/// (wal_sender_timeout, shortened from PostgreSQL's 60 s default).
const SENDER_TIMEOUT: u64 = 10_000 * MS;
/// wal_retrieve_retry_interval as pgquorum configures it.
const RETRY: u64 = 1_000 * MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub id: u64,
    pub tl: u32,
    /// A client commit (not a checkpoint or timeline switch).
    pub commit: bool,
}

#[derive(Debug, Clone)]
pub struct DataDir {
    pub sysid: u64,
    pub wal: Vec<Rec>,
    pub standby_signal: bool,
    pub clean: bool,
    /// Start of the shutdown checkpoint record after a clean stop.
    pub ckpt_lsn: Lsn,
}

impl DataDir {
    pub fn timeline(&self) -> u32 {
        self.wal.iter().map(|r| r.tl).max().unwrap_or(1)
    }
    pub fn lsn(&self) -> Lsn {
        Lsn(self.wal.len() as u64 * REC_BYTES)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PState {
    Starting,
    Running,
    Stopping,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub from: usize,
    /// The upstream's server process: a connection dies with it.
    pub from_proc: u64,
    /// The walsender reached the primary's end once ("streaming", not
    /// "catchup").
    pub caught_up: bool,
    /// What the upstream knows this standby has flushed.
    pub flush: usize,
    pub last_ok: u64,
}

#[derive(Debug, Clone)]
pub struct PgProc {
    pub id: u64,
    pub state: PState,
    pub in_recovery: bool,
    pub timeline: u32,
    /// Applied synchronous_standby_names.
    pub ssn: String,
    /// Applied primary_conninfo.
    pub upstream: Option<usize>,
    pub receiver: Option<Receiver>,
    pub retry_at: u64,
    /// Commits waiting for synchronous standbys: (WAL index, record id).
    pub waiters: Vec<(usize, u64)>,
}

/// A standby the sender side still lists after the connection died.
#[derive(Debug, Clone)]
pub struct Ghost {
    pub node: usize,
    pub flush: usize,
    /// The walsender's state when the connection died: "streaming" or
    /// still "catchup".
    pub caught_up: bool,
    pub until: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Pg {
    pub data: Option<DataDir>,
    pub conf_ssn: String,
    pub conf_upstream: Option<usize>,
    pub proc: Option<PgProc>,
    pub ghosts: Vec<Ghost>,
}

/// A parsed synchronous_standby_names.
#[derive(Debug, Clone)]
pub struct SyncRule {
    pub any: bool,
    pub k: usize,
    pub names: Vec<String>,
}

pub fn parse_rule(s: &str) -> Option<SyncRule> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let unquote = |x: &str| x.trim().trim_matches('"').to_string();
    match s.split_once('(') {
        Some((head, rest)) => {
            let mut words = head.split_whitespace();
            let method = words.next().unwrap_or("FIRST").to_ascii_uppercase();
            let k = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
            let names = rest.trim_end_matches(')').split(',').map(unquote).collect();
            Some(SyncRule {
                any: method == "ANY",
                k,
                names,
            })
        }
        None => Some(SyncRule {
            any: false,
            k: 1,
            names: s.split(',').map(unquote).collect(),
        }),
    }
}

/// `a` is a prefix of (or equal to) `b`.
pub fn is_prefix(a: &[Rec], b: &[Rec]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

pub fn common_prefix(a: &[Rec], b: &[Rec]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl World {
    pub fn pg_running(&self, n: usize) -> bool {
        self.nodes[n]
            .pg
            .proc
            .as_ref()
            .is_some_and(|p| p.state == PState::Running)
    }

    /// Accepts writes right now: running, out of recovery, not shutting
    /// down, not frozen (a frozen server executes nothing).
    pub fn writable(&self, n: usize) -> bool {
        self.nodes[n].up
            && !self.frozen(n)
            && self.nodes[n]
                .pg
                .proc
                .as_ref()
                .is_some_and(|p| p.state == PState::Running && !p.in_recovery)
    }

    /// Could `n` acknowledge a commit now? A writable server whose
    /// synchronous standbys (its commit gate among them) are not there to
    /// confirm cannot: a host thawed before its keeper fenced, its
    /// replicas detached and its lease over.
    pub fn acknowledges_writes(&self, n: usize) -> bool {
        if !self.writable(n) {
            return false;
        }
        let Some(rule) = self.nodes[n]
            .pg
            .proc
            .as_ref()
            .and_then(|p| parse_rule(&p.ssn))
        else {
            return true;
        };
        rule.k <= self.confirmers(n, &rule).len()
    }

    /// The synchronous standbys of `rule` that confirm for `p` now: (their
    /// place in the list, how much WAL they hold).
    fn confirmers(&self, p: usize, rule: &SyncRule) -> Vec<(usize, usize)> {
        let mut cands: Vec<(usize, usize)> = self
            .standbys(p)
            .into_iter()
            .filter(|(_, _, streaming)| *streaming)
            .filter_map(|(r, flush, _)| {
                rule.names
                    .iter()
                    .position(|x| *x == self.nodes[r].name)
                    .map(|pos| (pos, flush))
            })
            .collect();
        // The commit gate: the node's own keeper, a standby that has all
        // the WAL at once and acknowledges it only while its lease lets
        // the server run (keeper/gate.rs).
        if let Some(pos) = rule.names.iter().position(|x| x == sync::GATE) {
            if rule::may_acknowledge(self.keeper_lease(p), self.agent_now(p)) {
                cands.push((pos, self.wal_len(p)));
            }
        }
        cands
    }

    pub fn wal_len(&self, n: usize) -> usize {
        self.nodes[n].pg.data.as_ref().map_or(0, |d| d.wal.len())
    }

    fn append(&mut self, n: usize, commit: bool) -> Option<(usize, u64)> {
        let tl = self.nodes[n].pg.proc.as_ref()?.timeline;
        let id = self.fresh_id();
        let d = self.nodes[n].pg.data.as_mut()?;
        d.wal.push(Rec { id, tl, commit });
        Some((d.wal.len() - 1, id))
    }

    /// A non-commit record on a running primary (checkpoint, role…).
    pub fn pg_system_record(&mut self, n: usize) {
        if self.writable(n) {
            self.append(n, false);
        }
    }

    /// A client commit on `n` (which accepts writes).
    pub fn pg_commit(&mut self, n: usize) {
        let Some((idx, id)) = self.append(n, true) else {
            return;
        };
        self.stats.commits += 1;
        let waits = self.nodes[n]
            .pg
            .proc
            .as_ref()
            .is_some_and(|p| parse_rule(&p.ssn).is_some());
        if waits {
            if let Some(p) = self.nodes[n].pg.proc.as_mut() {
                p.waiters.push((idx, id));
            }
            self.pg_release(n);
        } else {
            self.ack(n, id, false);
        }
    }

    /// Start the postmaster (under its keeper): it finishes starting by
    /// itself a little later, whatever happens to the agent meanwhile.
    pub fn pg_start_begin(&mut self, n: usize) -> Result<(), String> {
        if self.nodes[n].pg.proc.is_some() {
            return Ok(());
        }
        let Some(d) = self.nodes[n].pg.data.as_ref() else {
            return Err("start: not a PostgreSQL data directory".into());
        };
        let in_recovery = d.standby_signal;
        let timeline = d.timeline();
        let id = self.fresh_id();
        let pg = &mut self.nodes[n].pg;
        pg.proc = Some(PgProc {
            id,
            state: PState::Starting,
            in_recovery,
            timeline,
            ssn: pg.conf_ssn.clone(),
            upstream: pg.conf_upstream,
            receiver: None,
            retry_at: 0,
            waiters: Vec::new(),
        });
        let at = self.now + self.rng_range(300, 1200) * MS;
        self.schedule(at, Ev::PgStarted { n, proc_: id });
        Ok(())
    }

    /// Startup of server incarnation `proc_id` is done: it takes connections.
    pub fn pg_started(&mut self, n: usize, proc_id: u64) {
        let now = self.now;
        let Some(p) = self.nodes[n].pg.proc.as_mut() else {
            return;
        };
        if p.id == proc_id && p.state == PState::Starting {
            p.state = PState::Running;
            p.retry_at = now;
            let id = p.id;
            let role = if p.in_recovery { "replica" } else { "PRIMARY" };
            if let Some(d) = self.nodes[n].pg.data.as_mut() {
                d.clean = false;
            }
            self.log(format!(
                "{}: PostgreSQL started as {role}",
                self.nodes[n].name
            ));
            let at = now + self.rng_range(5, 30) * MS;
            self.schedule(at, Ev::ReplTick { n, proc_: id });
        }
    }

    /// Whether the server has finished starting: `Ok(false)` while it
    /// still starts up, an error when it died meanwhile.
    pub fn pg_start_done(&self, n: usize) -> Result<bool, String> {
        match self.nodes[n].pg.proc.as_ref() {
            None => Err("PostgreSQL did not start (it died)".into()),
            Some(p) => Ok(p.state != PState::Starting),
        }
    }

    /// Immediate stop (fence) or a crash of the postmaster: no shutdown
    /// checkpoint, waiting commits are not acknowledged. `graceful_net`:
    /// the host is up, so peers see their connections closed at once.
    pub fn pg_kill(&mut self, n: usize, why: &str) {
        let Some(p) = self.nodes[n].pg.proc.take() else {
            return;
        };
        let was_primary = !p.in_recovery && p.state != PState::Starting;
        if let Some(d) = self.nodes[n].pg.data.as_mut() {
            d.clean = false;
        }
        self.log(format!(
            "{}: PostgreSQL stopped ({why}){}",
            self.nodes[n].name,
            if was_primary { " [was writable]" } else { "" }
        ));
        self.nodes[n].pg.ghosts.clear();
        let host_up = self.nodes[n].up;
        self.drop_downstream(n, host_up);
        if let Some(r) = p.receiver {
            if !host_up {
                self.add_ghost(r.from, n, &r);
            }
            self.after_standby_change(r.from);
        }
    }

    /// Downstream receivers of `n` lose their upstream: at once when the
    /// connection is closed, after a timeout otherwise (they find out in
    /// their ReplTick).
    fn drop_downstream(&mut self, n: usize, closed: bool) {
        if !closed {
            return;
        }
        let now = self.now;
        for r in 0..self.nodes.len() {
            if let Some(p) = self.nodes[r].pg.proc.as_mut() {
                if p.receiver.as_ref().is_some_and(|rc| rc.from == n) {
                    p.receiver = None;
                    p.retry_at = now + RETRY;
                }
            }
        }
    }

    /// The walsender of `upstream`'s server process `proc_id` goes on
    /// listing `node` for a while after its connection died unseen.
    fn add_ghost(&mut self, upstream: usize, node: usize, rc: &Receiver) {
        let until = self.now + SENDER_TIMEOUT;
        let pg = &mut self.nodes[upstream].pg;
        pg.ghosts.retain(|g| g.node != node);
        if pg.proc.as_ref().is_some_and(|p| p.id == rc.from_proc) {
            pg.ghosts.push(Ghost {
                node,
                flush: rc.flush,
                caught_up: rc.caught_up,
                until,
            });
        }
    }

    /// Fast shutdown, first half: no new transactions; a primary writes its
    /// shutdown checkpoint.
    pub fn pg_stop_fast_begin(&mut self, n: usize) {
        let primary = self.writable(n);
        if primary {
            self.append(n, false);
        }
        if let Some(p) = self.nodes[n].pg.proc.as_mut() {
            p.state = PState::Stopping;
            // Sessions are terminated: waiting commits get an error.
            p.waiters.clear();
        }
    }

    /// Fast shutdown, second half: walsenders have sent everything to the
    /// standbys they can reach; the data directory is shut down cleanly.
    pub fn pg_stop_fast_finish(&mut self, n: usize) -> Result<(), String> {
        let Some(p) = self.nodes[n].pg.proc.take() else {
            return Ok(());
        };
        if !p.in_recovery {
            let wal = self.nodes[n]
                .pg
                .data
                .as_ref()
                .map(|d| d.wal.clone())
                .unwrap_or_default();
            for r in 0..self.nodes.len() {
                let connected = self.nodes[r]
                    .pg
                    .proc
                    .as_ref()
                    .and_then(|p| p.receiver.as_ref())
                    .is_some_and(|rc| rc.from == n);
                if connected && !self.frozen(r) && self.repl_link_ok(r, n) {
                    if let Some(d) = self.nodes[r].pg.data.as_mut() {
                        if is_prefix(&d.wal, &wal) {
                            d.wal = wal.clone();
                        }
                    }
                }
            }
        }
        if let Some(d) = self.nodes[n].pg.data.as_mut() {
            d.clean = true;
            d.ckpt_lsn = Lsn((d.wal.len() as u64).saturating_sub(1) * REC_BYTES);
        }
        self.log(format!(
            "{}: PostgreSQL stopped cleanly (fast){}",
            self.nodes[n].name,
            if p.in_recovery { "" } else { " [was primary]" }
        ));
        self.nodes[n].pg.ghosts.clear();
        self.drop_downstream(n, true);
        if let Some(r) = p.receiver {
            self.after_standby_change(r.from);
        }
        Ok(())
    }

    /// Apply the configuration files (SIGHUP).
    pub fn pg_reload(&mut self, n: usize) -> Result<(), String> {
        let now = self.now;
        let pg = &mut self.nodes[n].pg;
        let Some(p) = pg.proc.as_mut() else {
            return Err("reload: PostgreSQL is not running".into());
        };
        p.ssn = pg.conf_ssn.clone();
        let mut left = None;
        if p.upstream != pg.conf_upstream {
            p.upstream = pg.conf_upstream;
            if let Some(r) = p.receiver.take() {
                left = Some(r.from);
            }
            p.retry_at = now;
        }
        if let Some(up) = left {
            self.after_standby_change(up);
        }
        self.pg_release(n);
        Ok(())
    }

    pub fn pg_promote_finish(&mut self, n: usize) -> Result<(), String> {
        let Some(p) = self.nodes[n].pg.proc.as_ref() else {
            return Err("promote: PostgreSQL is not running".into());
        };
        if p.state != PState::Running {
            return Err("promote: PostgreSQL is not ready".into());
        }
        if !p.in_recovery {
            return Ok(());
        }
        let tl = self.nodes[n].pg.data.as_ref().map_or(1, |d| d.timeline()) + 1;
        let left = {
            let p = self.nodes[n].pg.proc.as_mut().expect("checked");
            p.in_recovery = false;
            p.timeline = tl;
            p.receiver.take().map(|r| r.from)
        };
        if let Some(d) = self.nodes[n].pg.data.as_mut() {
            d.standby_signal = false;
        }
        self.append(n, false);
        self.log(format!(
            "{}: PostgreSQL PROMOTED to timeline {tl} at {}",
            self.nodes[n].name,
            self.wal_len(n)
        ));
        if let Some(up) = left {
            self.after_standby_change(up);
        }
        Ok(())
    }

    /// Is the replication link between `a` and `b` open?
    pub fn repl_link_ok(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up
            && self.nodes[b].up
            && self.nodes[a].isolated_until <= self.now
            && self.nodes[b].isolated_until <= self.now
    }

    /// Can `n` reach `up`'s running server (clone, rewind, stream)?
    pub fn can_reach_server(&self, n: usize, up: usize) -> bool {
        self.repl_link_ok(n, up) && !self.frozen(up) && self.pg_running(up)
    }

    pub fn pg_basebackup(&mut self, n: usize, up: usize) -> Result<(), String> {
        if !self.can_reach_server(n, up) {
            return Err(format!("clone: cannot reach {}", self.nodes[up].name));
        }
        let Some(src) = self.nodes[up].pg.data.clone() else {
            return Err("clone: the source has no data".into());
        };
        self.nodes[n].pg.data = Some(DataDir {
            sysid: src.sysid,
            wal: src.wal,
            standby_signal: true,
            clean: false,
            ckpt_lsn: src.ckpt_lsn,
        });
        self.log(format!(
            "{}: cloned from {} ({} records)",
            self.nodes[n].name,
            self.nodes[up].name,
            self.wal_len(n)
        ));
        Ok(())
    }

    /// pg_rewind: true when something was rewound.
    pub fn pg_rewind(&mut self, n: usize, up: usize) -> Result<bool, String> {
        if self.nodes[n].pg.proc.is_some() {
            return Err("rewind: the target is running".into());
        }
        if !self.can_reach_server(n, up) {
            return Err(format!("rewind: cannot reach {}", self.nodes[up].name));
        }
        // pg_rewind runs CHECKPOINT on the source first.
        self.pg_system_record(up);
        let src = self.nodes[up]
            .pg
            .data
            .as_ref()
            .map(|d| (d.sysid, d.wal.clone()));
        let Some((sysid, src_wal)) = src else {
            return Err("rewind: the source has no data".into());
        };
        let fail = self.rng.gen_bool_p(self.p.rewind_failure);
        let Some(d) = self.nodes[n].pg.data.as_mut() else {
            return Err("rewind: no data directory".into());
        };
        if d.sysid != sysid {
            return Err("rewind: another database system".into());
        }
        if fail {
            return Err("rewind: could not find common ancestor / WAL missing".into());
        }
        if is_prefix(&d.wal, &src_wal) || is_prefix(&src_wal, &d.wal) {
            return Ok(false);
        }
        let keep = common_prefix(&d.wal, &src_wal);
        let dropped: Vec<u64> = d.wal[keep..]
            .iter()
            .filter(|r| r.commit)
            .map(|r| r.id)
            .collect();
        d.wal.truncate(keep);
        d.clean = false;
        let name = self.nodes[n].name.clone();
        self.log(format!(
            "{name}: rewound from {} to common prefix {keep}; {} commits discarded",
            self.nodes[up].name,
            dropped.len()
        ));
        self.stats.rewinds += 1;
        Ok(true)
    }

    pub fn pg_status(&self, n: usize) -> Option<PgStatus> {
        let node = &self.nodes[n];
        let p = node.pg.proc.as_ref()?;
        if p.state != PState::Running || !node.up {
            return None;
        }
        let d = node.pg.data.as_ref()?;
        let lsn = d.lsn();
        let wal_receiver = p.receiver.as_ref().map(|r| {
            let up = &self.nodes[r.from];
            WalReceiver {
                status: "streaming".into(),
                sender_host: up.host.clone(),
                sender_port: 5432,
            }
        });
        let timeline = if p.in_recovery {
            d.timeline()
        } else {
            p.timeline
        };
        let rule = parse_rule(&p.ssn);
        let replicas = self
            .standbys(n)
            .into_iter()
            .map(|(r, flush, streaming)| {
                let name = self.nodes[r].name.clone();
                let listed = rule.as_ref().is_some_and(|x| x.names.contains(&name));
                ReplicaConnection {
                    application_name: name,
                    state: if streaming { "streaming" } else { "catchup" }.into(),
                    flush_lsn: Lsn(flush as u64 * REC_BYTES),
                    replay_lsn: Lsn(flush as u64 * REC_BYTES),
                    sync_state: match (&rule, listed) {
                        (Some(x), true) if x.any => "quorum",
                        (Some(_), true) => "sync",
                        _ => "async",
                    }
                    .into(),
                }
            })
            .collect();
        Some(PgStatus {
            in_recovery: p.in_recovery,
            timeline,
            system_identifier: d.sysid,
            lsn,
            received_lsn: lsn,
            replay_lsn: lsn,
            wal_receiver,
            replicas,
            synchronous_standby_names: p.ssn.clone(),
            pending_restart: false,
        })
    }

    pub fn pg_inspect(&self, n: usize) -> DataDirState {
        match &self.nodes[n].pg.data {
            None => DataDirState::Empty,
            Some(d) => DataDirState::Valid {
                system_identifier: d.sysid,
                timeline: d.timeline(),
                standby: d.standby_signal,
                clean_shutdown: d.clean,
                checkpoint_lsn: d.ckpt_lsn,
            },
        }
    }

    /// Standbys connected to `u` as its walsenders see them:
    /// (node, flushed records, state is "streaming").
    pub fn standbys(&self, u: usize) -> Vec<(usize, usize, bool)> {
        let mut out: Vec<(usize, usize, bool)> = Vec::new();
        for (r, node) in self.nodes.iter().enumerate() {
            if let Some(rc) = node.pg.proc.as_ref().and_then(|p| p.receiver.as_ref()) {
                if rc.from == u {
                    out.push((r, rc.flush, rc.caught_up));
                }
            }
        }
        for g in &self.nodes[u].pg.ghosts {
            if g.until > self.now && !out.iter().any(|(r, _, _)| *r == g.node) {
                out.push((g.node, g.flush, g.caught_up));
            }
        }
        out
    }

    /// Something about `u`'s standbys changed: commits may be released.
    pub fn after_standby_change(&mut self, u: usize) {
        self.pg_release(u);
    }

    /// Release commits waiting for synchronous standbys, as PostgreSQL's
    /// SyncRepReleaseWaiters does for FIRST k / ANY k.
    pub fn pg_release(&mut self, p: usize) {
        if !self.writable(p) {
            return;
        }
        let Some(proc_) = self.nodes[p].pg.proc.as_ref() else {
            return;
        };
        if proc_.waiters.is_empty() {
            return;
        }
        let Some(rule) = parse_rule(&proc_.ssn) else {
            // synchronous_standby_names became empty: every waiter is
            // released without any standby having confirmed.
            let waiters =
                std::mem::take(&mut self.nodes[p].pg.proc.as_mut().expect("some").waiters);
            for (_, id) in waiters {
                self.ack(p, id, false);
            }
            return;
        };
        let mut cands = self.confirmers(p, &rule);
        // Acknowledged with a real standby's confirmation, or the gate's
        // alone (then as unprotected as an asynchronous commit).
        let confirmed_by_standby = rule.names.iter().any(|x| x != sync::GATE);
        if rule.k == 0 || cands.len() < rule.k {
            return;
        }
        let upto = if rule.any {
            cands.sort_by_key(|c| Reverse(c.1));
            cands[rule.k - 1].1
        } else {
            cands.sort();
            cands[..rule.k].iter().map(|c| c.1).min().unwrap_or(0)
        };
        let waiters = &mut self.nodes[p].pg.proc.as_mut().expect("some").waiters;
        let (done, rest): (Vec<_>, Vec<_>) = waiters.drain(..).partition(|(idx, _)| *idx < upto);
        *waiters = rest;
        for (_, id) in done {
            self.ack(p, id, confirmed_by_standby);
        }
    }

    /// One round of the WAL receiver of `r`.
    pub fn repl_tick(&mut self, r: usize, proc_id: u64) {
        let now = self.now;
        let Some(p) = self.nodes[r].pg.proc.as_ref() else {
            return;
        };
        if p.id != proc_id || !self.nodes[r].up {
            return;
        }
        let next = now + self.rng_range(15, 40) * MS;
        self.schedule(
            next,
            Ev::ReplTick {
                n: r,
                proc_: proc_id,
            },
        );
        // Ghosts expire.
        let before = self.nodes[r].pg.ghosts.len();
        self.nodes[r].pg.ghosts.retain(|g| g.until > now);
        if self.nodes[r].pg.ghosts.len() != before {
            self.after_standby_change(r);
        }
        let p = self.nodes[r].pg.proc.as_ref().expect("checked");
        if p.state != PState::Running || !p.in_recovery {
            return;
        }
        let Some(up) = p.upstream else {
            return;
        };
        match p.receiver.clone() {
            Some(rc) if rc.from == up => {
                let same_server = self.nodes[up]
                    .pg
                    .proc
                    .as_ref()
                    .is_some_and(|q| q.id == rc.from_proc);
                if !same_server && self.nodes[up].up && self.repl_link_ok(r, up) {
                    // The upstream's server restarted: the new one resets
                    // the old connection at once.
                    if let Some(p) = self.nodes[r].pg.proc.as_mut() {
                        p.receiver = None;
                        p.retry_at = now + RETRY;
                    }
                    return;
                }
                let flowing = same_server && self.repl_link_ok(r, up) && !self.frozen(up);
                if !flowing {
                    if now.saturating_sub(rc.last_ok) > RECEIVER_TIMEOUT {
                        if let Some(p) = self.nodes[r].pg.proc.as_mut() {
                            p.receiver = None;
                            p.retry_at = now + RETRY;
                        }
                        if same_server {
                            self.add_ghost(up, r, &rc);
                            self.after_standby_change(up);
                        }
                    }
                    return;
                }
                let burst = if self.nodes[r].repl_slow_until > now {
                    usize::from(self.rng.gen_bool_p(0.05))
                } else {
                    self.rng_range(0, 12) as usize
                };
                let src_len = self.wal_len(up);
                let have = self.wal_len(r);
                if have > src_len {
                    // Cannot happen while the histories agree; be safe.
                    if let Some(p) = self.nodes[r].pg.proc.as_mut() {
                        p.receiver = None;
                        p.retry_at = now + RETRY;
                    }
                    self.after_standby_change(up);
                    return;
                }
                let take = (src_len - have).min(burst);
                if take > 0 {
                    let recs: Vec<Rec> = self.nodes[up]
                        .pg
                        .data
                        .as_ref()
                        .map(|d| d.wal[have..have + take].to_vec())
                        .unwrap_or_default();
                    if let Some(d) = self.nodes[r].pg.data.as_mut() {
                        d.wal.extend(recs);
                    }
                }
                let len = self.wal_len(r);
                if let Some(rc) = self.nodes[r]
                    .pg
                    .proc
                    .as_mut()
                    .and_then(|p| p.receiver.as_mut())
                {
                    rc.flush = len;
                    rc.last_ok = now;
                    if len == src_len {
                        rc.caught_up = true;
                    }
                }
                self.after_standby_change(up);
            }
            _ => {
                if now < p.retry_at {
                    return;
                }
                let ok = self.repl_link_ok(r, up)
                    && !self.frozen(up)
                    && self.pg_running(up)
                    && match (&self.nodes[r].pg.data, &self.nodes[up].pg.data) {
                        (Some(a), Some(b)) => a.sysid == b.sysid && is_prefix(&a.wal, &b.wal),
                        _ => false,
                    };
                let len = self.wal_len(r);
                let from_proc = self.nodes[up].pg.proc.as_ref().map_or(0, |q| q.id);
                let p = self.nodes[r].pg.proc.as_mut().expect("checked");
                if ok {
                    p.receiver = Some(Receiver {
                        from: up,
                        from_proc,
                        caught_up: false,
                        flush: len,
                        last_ok: now,
                    });
                    self.nodes[up].pg.ghosts.retain(|g| g.node != r);
                } else {
                    p.retry_at = now + RETRY;
                }
            }
        }
    }
}

/// `gen_bool` that accepts 0.0 and 1.0 without fuss.
pub trait GenBoolP {
    fn gen_bool_p(&mut self, p: f64) -> bool;
}

impl<R: rand::Rng> GenBoolP for R {
    fn gen_bool_p(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.gen::<f64>() < p)
    }
}
