//! The decision core: given the committed state of a cluster, the leader's
//! soft state and the time, what to do now.
//!
//! A pure function, level-triggered: it compares what is committed with what
//! the agents report and returns the steps that bring them together. Any
//! step may be lost (a crash, a leader change): the next call simply finds
//! the gap again, so an interrupted failover resumes by itself.
//!
//! The safety rules of `docs/architecture.md` live here:
//! * a lease is granted only to the primary of the current epoch, only for
//!   a report received before the latest confirmation of leadership;
//! * nobody is promoted before the old primary's lease has ended on this
//!   leader's clock plus a margin, nor before `ttl + margin` after this
//!   leader was elected;
//! * in synchronous mode only a member of the committed sync set is
//!   promoted, after `n - k + 1` members reported after the lease ended;
//! * in asynchronous mode no replica more than `maximum_lag_on_failover`
//!   behind the last known primary LSN is promoted automatically.
//!
//! One job per file:
//! * `primary.rs` — the primary's lease and duties, and noticing it failed;
//! * `failover.rs` — who may be promoted, and the promotion (automatic, and
//!   an operator's `failover --to`, with the same rules);
//! * `switchover.rs` — planned switchovers, their pre-checks included;
//! * `sync_set.rs` — the committed sync set and synchronous_standby_names;
//! * `replicas.rs` — every other node: follow, rewind, re-point, fence;
//! * `bootstrap.rs` — the first primary and the cluster's bookkeeping.

use std::collections::BTreeSet;

mod bootstrap;
mod failover;
mod fences;
mod primary;
mod removal;
mod replicas;
mod switchover;
mod sync_set;
#[cfg(test)]
mod tests;

use bootstrap::{bootstrap, complete_actions, system_identifier};
pub use failover::{manual_failover, ManualFailover};
use fences::note_fences;
pub use removal::{check_cluster_removal, check_node_removal};
pub use switchover::check_switchover;

use failover::{
    candidate, candidates, effective_k, failover, failover_possible, holds_promise, sync_protected,
};
use primary::{primary_duties, unresponsive};
use replicas::replicas;
use switchover::{demote_step, switchover};
use sync_set::manage_sync_set;

use super::command::{ClusterCommand, Rejection};
use super::config::SyncMode;
use super::lsn::Lsn;
use super::soft::{Observation, Soft};
use super::state::{Cluster, EventKind, Member, NodeActionKind, SwitchoverPhase};
use super::sync;
use super::wire::{Action, DataDirState, LeaseGrant, ManagedSettings, NodeReport, Upstream};

/// How long a command may stay unanswered before it is sent again.
pub const RESEND_AFTER_MS: u64 = 5_000;
/// How long a failover candidate may spend catching up from a more
/// advanced replica before it is promoted anyway.
pub const CATCH_UP_LIMIT_MS: u64 = 10_000;
/// How long a switchover may wait for its target or for the old primary to
/// stop before it is given up.
pub const SWITCHOVER_LIMIT_MS: u64 = 30_000;

/// Everything the decision depends on.
pub struct Input<'a> {
    pub cluster: &'a Cluster,
    pub soft: &'a Soft,
    /// Leader's monotonic clock, milliseconds.
    pub now: u64,
    /// Wall clock, Unix milliseconds (schedules and history only).
    pub wall_ms: u64,
}

/// What to do now. The caller commits `commit` (if any) through Raft
/// *before* sending anything that depends on it, then calls `decide` again.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    pub commit: Option<ClusterCommand>,
    /// Commands to agents, in order, each for the cluster's current epoch.
    pub commands: Vec<(String, Action)>,
    /// Lease grant for the primary (after any command to it).
    pub grant: Option<(String, LeaseGrant)>,
    /// Why nothing (more) happens: for logs and status.
    pub waiting: Vec<String>,
    /// The failover candidate is catching up from a more advanced replica
    /// (bounded by [`CATCH_UP_LIMIT_MS`]).
    pub catching_up: bool,
    /// Nodes asked for a report right away: the decision waits for facts
    /// newer than their latest report.
    pub poll: Vec<String>,
}

impl Decision {
    fn wait(&mut self, why: impl Into<String>) {
        self.waiting.push(why.into());
    }
}

/// Is a report recent enough to act on?
fn fresh<'a>(input: &'a Input, node: &str) -> Option<&'a Observation> {
    let limit = input.cluster.config.ttl_ms;
    input
        .soft
        .nodes
        .get(node)
        .filter(|o| input.now.saturating_sub(o.received_at) <= limit)
}

fn upstream_of(member: &Member) -> Upstream {
    Upstream {
        node: member.name.clone(),
        host: member.host.clone(),
        port: member.port,
    }
}

/// Settings a node should run with; the sync names only matter on a
/// primary. `gate`: the node's keeper can stand as its commit gate
/// ([`gate_for`]).
pub fn settings(cluster: &Cluster, sync_set: &BTreeSet<String>, gate: bool) -> ManagedSettings {
    ManagedSettings {
        parameters: cluster.config.parameters.clone(),
        config_version: cluster.config_version,
        synchronous_standby_names: sync::render(&cluster.config, sync_set, gate),
        use_slots: Some(cluster.config.use_slots),
        slots: Some(cluster.config.slots.clone()),
    }
}

/// May `node`'s commits wait for its keeper's commit gate? Only if its
/// agent reports a keeper that can stand as one: an agent or keeper from
/// before the gate would leave every commit waiting for a standby that
/// never comes.
pub(super) fn gate_for(input: &Input, node: &str) -> bool {
    fresh(input, node).is_some_and(|o| o.report.commit_gate)
}

/// Settings for a replica: no synchronous standby names (they matter only
/// on a primary, and a promotion writes the right ones first).
pub fn replica_settings(cluster: &Cluster) -> ManagedSettings {
    ManagedSettings {
        synchronous_standby_names: String::new(),
        ..settings(cluster, &BTreeSet::new(), false)
    }
}

/// When the decision may next promote somebody: after every lease a
/// predecessor or this leader may have granted has surely ended.
pub fn promotion_allowed_at(input: &Input) -> u64 {
    let c = &input.cluster.config;
    let mut at = input.soft.leader_since + c.ttl_ms + c.lease_margin_ms;
    if let Some(book) = &input.soft.lease {
        at = at.max(book.expires_at + c.lease_margin_ms);
    }
    at
}

/// May this leader make a node writable that is not writable now? Not
/// before every lease a predecessor may have granted has ended — only the
/// committed primary gets leases, but a recovered manager group or a
/// predecessor's lost decisions can leave another node holding one. A node
/// that already runs writable holds such a lease itself and is kept.
fn may_make_writable(input: &Input) -> bool {
    let c = &input.cluster.config;
    let first_bootstrap = input.cluster.epoch == 1 && input.cluster.system_identifier.is_none();
    first_bootstrap || input.now >= input.soft.leader_since + c.ttl_ms + c.lease_margin_ms
}

/// The report's PostgreSQL is running as a primary.
fn is_writable(r: &NodeReport) -> bool {
    r.postgres.as_ref().is_some_and(|pg| !pg.in_recovery)
}

fn is_streaming_from(r: &NodeReport, primary: &Member) -> bool {
    r.postgres.as_ref().is_some_and(|pg| {
        pg.in_recovery
            && pg.wal_receiver.as_ref().is_some_and(|w| {
                w.status == "streaming"
                    && w.sender_port == primary.port
                    && w.sender_host == primary.host
            })
    })
}

/// Decide for one cluster.
pub fn decide(input: &Input) -> Decision {
    let mut d = Decision::default();
    let cluster = input.cluster;
    if cluster.epoch == 0 || cluster.primary.is_none() {
        bootstrap(input, &mut d);
        return d;
    }
    let Some(primary) = cluster.primary.as_deref().and_then(|p| cluster.member(p)) else {
        d.wait("the committed primary is not a member");
        return d;
    };

    if let Some(c) = system_identifier(input, primary) {
        d.commit = Some(c);
        return d;
    }
    if let Some(c) = complete_actions(input) {
        d.commit = Some(c);
        return d;
    }

    let primary_ok = primary_duties(input, primary, &mut d);
    if d.commit.is_some() {
        return d;
    }
    if primary_ok {
        if let Some(c) = switchover(input, primary, &mut d) {
            d.commit = Some(c);
            return d;
        }
        if d.commit.is_none() {
            if let Some(c) = manage_sync_set(input, primary, &mut d) {
                d.commit = Some(c);
                return d;
            }
        }
    }
    replicas(input, primary, primary_ok, &mut d);
    // Last: a history entry never delays a promotion or a lease (the
    // commands of this pass are decided again after the commit).
    if d.commit.is_none() {
        d.commit = note_fences(input);
    }
    d
}

fn pending(input: &Input, node: &str, action: &str) -> bool {
    input.soft.pending.get(node).is_some_and(|p| {
        p.action == action
            && p.epoch == input.cluster.epoch
            && input.now.saturating_sub(p.sent_at) < RESEND_AFTER_MS
    })
}

fn busy(input: &Input, node: &str) -> bool {
    input.soft.pending.get(node).is_some_and(|p| {
        p.epoch == input.cluster.epoch && input.now.saturating_sub(p.sent_at) < RESEND_AFTER_MS
    }) || fresh(input, node).is_some_and(|o| {
        o.report.phase != super::wire::AgentPhase::Idle
            && o.report.phase != super::wire::AgentPhase::Fenced
    })
}

fn command(input: &Input, d: &mut Decision, node: &str, action: Action) {
    // An agent that has seen a newer epoch than the committed one refuses
    // every command of this epoch: sending them again and again changes
    // nothing. Contradictory facts: wait for a person (or a newer state).
    if let Some(seen) = fresh(input, node)
        .map(|o| o.report.epoch)
        .filter(|seen| *seen > input.cluster.epoch)
    {
        d.wait(format!(
            "{node} has seen epoch {seen}, ahead of the cluster's {}: not commanding it",
            input.cluster.epoch
        ));
        return;
    }
    if pending(input, node, action.name()) {
        return;
    }
    d.commands.push((node.to_string(), action));
}
