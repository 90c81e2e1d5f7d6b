//! The leader's soft state of one cluster: latest reports and the leader's
//! own bookkeeping (leases granted, commands in flight). Lost on a leader
//! change and rebuilt from the next heartbeats — which is why a new leader
//! starts with the most cautious assumptions (see `Soft::new`).
//!
//! Time is a plain millisecond count on the leader's monotonic clock,
//! passed in by the caller, so the simulation can drive it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::lsn::Lsn;
use super::settings::ServerSettings;
use super::state::Cluster;
use super::wire::{Action, LeaseGrant, NodeReport};

/// The latest report of one node and when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub report: NodeReport,
    pub received_at: u64,
}

/// The leader's upper bound on the primary's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseBook {
    pub epoch: u64,
    pub node: String,
    /// The agent's lease ends no later than this on the leader's clock
    /// (the agent counts from the report's *send* time, which is earlier
    /// than its receive time here).
    pub expires_at: u64,
}

/// A command sent and not yet seen completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: u64,
    pub action: &'static str,
    pub epoch: u64,
    pub sent_at: u64,
}

/// The leader's soft state of one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Soft {
    /// When this manager became leader: a predecessor may have granted a
    /// lease this one does not know about, so nobody is promoted before
    /// `leader_since + ttl + margin`.
    pub leader_since: u64,
    /// Start of the latest quorum round that confirmed this leadership.
    /// Only reports received before it may be answered with a lease.
    pub confirmed_at: Option<u64>,
    pub nodes: BTreeMap<String, Observation>,
    pub lease: Option<LeaseBook>,
    pub pending: BTreeMap<String, Pending>,
    /// Since when the primary's PostgreSQL has been seen down.
    pub primary_down_since: Option<u64>,
    /// The primary's PostgreSQL ran but stopped answering (see
    /// `decide::unresponsive`) and has not answered since: once it is down
    /// (its keeper fenced it) it is not restarted but replaced — a hung
    /// disk would hang the restarted server too.
    pub primary_went_silent: bool,
    /// Since when a sync set member has not been streaming from the primary.
    pub sync_absent_since: BTreeMap<String, u64>,
    /// Since when a replica of the primary has not been streaming.
    pub not_streaming_since: BTreeMap<String, u64>,
    /// The primary's last reported write LSN and timeline.
    pub last_primary_lsn: Option<(Lsn, u32)>,
    /// The primary's synchronous_standby_names and its write LSN when they
    /// were first seen: commits acknowledged under earlier names lie
    /// before that LSN.
    pub sync_names_since: Option<(String, Lsn)>,
    /// Since when the failover candidate has been catching up from a more
    /// advanced replica.
    pub catch_up_since: Option<u64>,
    /// After a resume, while the primary's lease may still be held open:
    /// the first bounded grant this leader sent the primary's agent since
    /// its last open one (session, report sequence number). Once the agent
    /// reports that its keeper holds a lease from that grant or a later
    /// one, no open grant can still arrive (a session delivers in order,
    /// and a new open grant clears this).
    pub bounding: Option<(u64, u64)>,
    /// The last grant sent: a pass decides again for every cluster now and
    /// then, and the same grant is not sent twice.
    pub last_grant: Option<LeaseGrant>,
    /// Next command id.
    pub next_command: u64,
    /// The parameter catalog each node's server reported last (sent once
    /// per session, not with every heartbeat).
    pub settings: BTreeMap<String, Arc<ServerSettings>>,
}

/// The node's PostgreSQL runs but has not answered its agent for
/// `primary_unresponsive_timeout`: its report's picture is stale (a frozen
/// server keeps looking healthy in it), and nothing it reports of its
/// server can be relied on.
pub fn silent(report: &NodeReport, cluster: &Cluster) -> bool {
    report.unresponsive_ms >= cluster.config.primary_unresponsive_timeout_ms
}

impl Soft {
    /// The soft state of a leader elected at `now`.
    pub fn new(now: u64) -> Self {
        Soft {
            leader_since: now,
            confirmed_at: None,
            nodes: BTreeMap::new(),
            lease: None,
            pending: BTreeMap::new(),
            primary_down_since: None,
            primary_went_silent: false,
            sync_absent_since: BTreeMap::new(),
            not_streaming_since: BTreeMap::new(),
            last_primary_lsn: None,
            sync_names_since: None,
            catch_up_since: None,
            bounding: None,
            last_grant: None,
            next_command: 1,
            settings: BTreeMap::new(),
        }
    }

    /// A removed member's reports and timers go with it (its name may be
    /// registered again by a replacement host, which starts afresh).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
        self.pending.remove(node);
        self.sync_absent_since.remove(node);
        self.not_streaming_since.remove(node);
        self.settings.remove(node);
    }

    /// Take in a report that arrived at `now`.
    pub fn observe(&mut self, cluster: &Cluster, mut report: NodeReport, now: u64) {
        let node = report.node.clone();
        if let Some(settings) = report.settings.take() {
            self.settings.insert(node.clone(), Arc::new(settings));
        }
        if cluster.is_primary(&node) {
            let silent = silent(&report, cluster);
            if silent {
                self.primary_went_silent = true;
            } else if report.unresponsive_ms == 0 && report.postgres.is_some() {
                self.primary_went_silent = false;
            }
            match &report.postgres {
                // Its last picture, not what it is now.
                Some(_) if silent => {}
                Some(pg) if !pg.in_recovery => {
                    self.primary_down_since = None;
                    self.last_primary_lsn = Some((pg.lsn, pg.timeline));
                    let names = &pg.synchronous_standby_names;
                    if self
                        .sync_names_since
                        .as_ref()
                        .is_none_or(|(seen, _)| seen != names)
                    {
                        self.sync_names_since = Some((names.clone(), pg.lsn));
                    }
                    // Since when each member of the sync set has not been
                    // streaming from the primary (read by the decision; it
                    // was never recorded, so a vanished standby was never
                    // dropped and non-strict mode blocked like strict).
                    self.sync_absent_since
                        .retain(|m, _| cluster.sync_set.contains(m));
                    for member in &cluster.sync_set {
                        let streaming = pg
                            .replicas
                            .iter()
                            .any(|r| r.application_name == *member && r.state == "streaming");
                        if streaming {
                            self.sync_absent_since.remove(member);
                        } else {
                            self.sync_absent_since.entry(member.clone()).or_insert(now);
                        }
                    }
                }
                Some(_) => {}
                None => {
                    self.primary_down_since.get_or_insert(now);
                }
            }
        }
        let streaming = report
            .postgres
            .as_ref()
            .and_then(|pg| pg.wal_receiver.as_ref())
            .is_some_and(|w| w.status == "streaming");
        if !cluster.is_primary(&node) && !streaming {
            self.not_streaming_since.entry(node.clone()).or_insert(now);
        } else {
            self.not_streaming_since.remove(&node);
        }
        // A finished command is no longer pending.
        if let (Some(done), Some(p)) = (&report.last_command, self.pending.get_mut(&node)) {
            if done.id == p.id {
                if done.ok {
                    self.pending.remove(&node);
                } else {
                    // A failed command is retried after RESEND_AFTER_MS, not
                    // at once on every pass.
                    p.sent_at = now;
                    p.id = 0;
                }
            }
        }
        self.nodes.insert(
            node,
            Observation {
                report,
                received_at: now,
            },
        );
    }

    /// Forget what belonged to the previous epoch after a promotion.
    pub fn epoch_changed(&mut self) {
        self.primary_down_since = None;
        self.primary_went_silent = false;
        self.not_streaming_since.clear();
        self.sync_absent_since.clear();
        self.sync_names_since = None;
        self.catch_up_since = None;
        self.bounding = None;
    }

    /// Remember what a decision implies for later decisions.
    pub fn record(&mut self, catching_up: bool, now: u64) {
        if catching_up {
            self.catch_up_since.get_or_insert(now);
        } else {
            self.catch_up_since = None;
        }
    }

    /// Book a lease grant answering `node`'s latest report: the agent's
    /// lease ends at the report's send time + ttl, so no later than its
    /// receive time + ttl on the leader's clock. False when there is no
    /// report to answer, or this very grant was sent already (nothing is to
    /// be sent then). A bounded grant to a primary whose lease may still be
    /// open is remembered as `bounding`.
    pub fn book_lease(&mut self, cluster: &Cluster, node: &str, grant: &LeaseGrant) -> bool {
        let Some(o) = self.nodes.get(node) else {
            return false;
        };
        if grant.hold {
            // Paused (again): whatever was bounded before may be open now.
            self.bounding = None;
        } else if cluster.open_lease {
            match self.bounding {
                Some((session, _)) if session == grant.session => {}
                _ => self.bounding = Some((grant.session, grant.seq)),
            }
        }
        let expires_at = o.received_at + grant.ttl_ms;
        match &mut self.lease {
            Some(book) if book.epoch == grant.epoch && book.node == node => {
                book.expires_at = book.expires_at.max(expires_at);
            }
            _ => {
                self.lease = Some(LeaseBook {
                    epoch: grant.epoch,
                    node: node.to_string(),
                    expires_at,
                })
            }
        }
        if self.last_grant == Some(*grant) {
            return false;
        }
        self.last_grant = Some(*grant);
        true
    }

    /// Record a command as sent; returns its id.
    pub fn sent(&mut self, node: &str, action: &Action, epoch: u64, now: u64) -> u64 {
        if matches!(action, Action::Follow { .. }) {
            // A follow (re)starts the WAL receiver: a replica is "not
            // streaming" again only from its next report on. Otherwise the
            // first report after a nudge (taken before the receiver has
            // connected) looked stuck for long already and was nudged again
            // at once: a stop/start loop that never let it catch up.
            self.not_streaming_since.remove(node);
        }
        let id = self.next_command;
        self.next_command += 1;
        self.pending.insert(
            node.to_string(),
            Pending {
                id,
                action: action.name(),
                epoch,
                sent_at: now,
            },
        );
        id
    }
}
