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

use std::collections::BTreeSet;

use super::command::ClusterCommand;
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

/// Settings a node should run with; the sync names only matter on a primary.
pub fn settings(cluster: &Cluster, sync_set: &BTreeSet<String>) -> ManagedSettings {
    let c = &cluster.config;
    ManagedSettings {
        parameters: c.parameters.clone(),
        config_version: cluster.config_version,
        synchronous_standby_names: sync::render(c.sync_mode, c.sync_count, c.sync_strict, sync_set),
    }
}

/// Settings for a replica: no synchronous standby names (they matter only
/// on a primary, and a promotion writes the right ones first).
pub fn replica_settings(cluster: &Cluster) -> ManagedSettings {
    ManagedSettings {
        synchronous_standby_names: String::new(),
        ..settings(cluster, &BTreeSet::new())
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
    d
}

/// Epoch 0: pick the node that creates (or adopts) the first primary.
fn bootstrap(input: &Input, d: &mut Decision) {
    let cluster = input.cluster;
    if cluster.paused {
        d.wait("paused: not bootstrapping");
        return;
    }
    let reporting: Vec<(&Member, &Observation)> = cluster
        .members
        .values()
        .filter_map(|m| fresh(input, &m.name).map(|o| (m, o)))
        .collect();
    // Existing data is adopted rather than overwritten: prefer a node that
    // has a PostgreSQL data directory, a primary's over a standby's.
    let with_data = reporting
        .iter()
        .filter_map(|(m, o)| match &o.report.data {
            DataDirState::Valid {
                standby,
                timeline,
                checkpoint_lsn,
                ..
            } => Some((
                !*standby,
                *timeline,
                *checkpoint_lsn,
                std::cmp::Reverse(m.registered),
                m,
            )),
            _ => None,
        })
        .max_by_key(|(a, b, c, r, _)| (*a, *b, *c, *r))
        .map(|(_, _, _, _, m)| *m);
    let first_empty = reporting
        .iter()
        .filter(|(_, o)| o.report.data == DataDirState::Empty)
        .min_by_key(|(m, _)| m.registered)
        .map(|(m, _)| *m);
    match with_data.or(first_empty) {
        Some(m) => {
            d.commit = Some(ClusterCommand::Bootstrap {
                cluster: cluster.name.clone(),
                node: m.name.clone(),
                at_unix_ms: input.wall_ms,
            })
        }
        None => d.wait("waiting for a node to report before bootstrapping"),
    }
}

/// Remember the database system the cluster holds, once the primary tells.
fn system_identifier(input: &Input, primary: &Member) -> Option<ClusterCommand> {
    if input.cluster.system_identifier.is_some() {
        return None;
    }
    let o = fresh(input, &primary.name)?;
    let id = match (&o.report.postgres, &o.report.data) {
        (Some(pg), _) if !pg.in_recovery && pg.system_identifier != 0 => pg.system_identifier,
        _ => return None,
    };
    Some(ClusterCommand::SetSystemIdentifier {
        cluster: input.cluster.name.clone(),
        id,
    })
}

/// Operator actions the agents report done.
fn complete_actions(input: &Input) -> Option<ClusterCommand> {
    input.cluster.members.values().find_map(|m| {
        let action = m.action.as_ref()?;
        let o = fresh(input, &m.name)?;
        (o.report.completed_action == Some(action.id)).then(|| ClusterCommand::CompleteNodeAction {
            cluster: input.cluster.name.clone(),
            node: m.name.clone(),
            id: action.id,
        })
    })
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

fn grant(input: &Input, d: &mut Decision, node: &str, o: &Observation) {
    let Some(confirmed) = input.soft.confirmed_at else {
        d.wait("leadership not yet confirmed: no lease granted");
        return;
    };
    if o.received_at > confirmed {
        // Answered after the next confirmation round.
        return;
    }
    d.grant = Some((
        node.to_string(),
        LeaseGrant {
            epoch: input.cluster.epoch,
            session: o.report.session,
            seq: o.report.seq,
            ttl_ms: input.cluster.config.ttl_ms,
            // While paused nobody is promoted: the lease holds open, so a
            // primary may run on without its agent (maintenance).
            hold: input.cluster.paused,
        },
    ));
}

/// Keep the primary running and leased, or promote a replica when it has
/// failed. Returns whether the primary is up and taking writes.
fn primary_duties(input: &Input, primary: &Member, d: &mut Decision) -> bool {
    let cluster = input.cluster;
    let c = &cluster.config;
    let demoting = matches!(
        cluster.switchover.as_ref().map(|s| &s.phase),
        Some(SwitchoverPhase::Demoting { .. })
    );
    let obs = fresh(input, &primary.name);
    let settings_now = settings(cluster, &cluster.sync_set);
    if let Some(c) = bound_open_lease(input, primary) {
        d.commit = Some(c);
        return false;
    }

    if let Some(o) = obs {
        let r = &o.report;
        let data_gone = match &r.data {
            DataDirState::Empty => cluster.system_identifier.is_some(),
            DataDirState::Foreign { .. } => true,
            DataDirState::Valid {
                system_identifier, ..
            } => cluster
                .system_identifier
                .is_some_and(|id| id != *system_identifier),
        };
        match &r.postgres {
            Some(pg) if !pg.in_recovery => {
                if r.epoch < cluster.epoch && !demoting {
                    // Running, but it has not seen this epoch (the manager
                    // group was recovered): tell it, idempotently.
                    command(
                        input,
                        d,
                        &primary.name,
                        Action::StartPrimary {
                            settings: settings_now,
                        },
                    );
                    grant(input, d, &primary.name, o);
                    return false;
                }
                if r.epoch == cluster.epoch && r.wants_lease && !demoting {
                    grant(input, d, &primary.name, o);
                }
                if demoting {
                    // Keep the lease while it shuts down cleanly.
                    grant(input, d, &primary.name, o);
                }
                return r.epoch == cluster.epoch && !demoting;
            }
            Some(_) if !may_make_writable(input) => {
                d.wait("a new leader waits out its predecessors' leases before promoting");
                return false;
            }
            Some(_) => {
                // Committed primary still in recovery: the promotion is
                // not done (or was lost with a previous leader). Finished
                // even while paused: the decision is already committed.
                command(
                    input,
                    d,
                    &primary.name,
                    Action::Promote {
                        settings: settings_now,
                    },
                );
                grant(input, d, &primary.name, o);
                return false;
            }
            None if demoting => {
                // Stopped for the switchover: see `switchover`.
                return false;
            }
            None if data_gone => {
                d.wait(format!("primary {} has lost its data", primary.name));
            }
            None => {
                let down_for = input
                    .now
                    .saturating_sub(input.soft.primary_down_since.unwrap_or(input.now));
                // Past the timeout a replica is promoted instead; but when
                // no replica could be (a new cluster whose replicas are not
                // cloned yet — with a timeout of 0 it would never even
                // bootstrap — or every replica down, too far behind, or
                // not in the sync set), starting the primary again is the
                // only way back to a writable cluster.
                let may_restart = (down_for < c.primary_start_timeout_ms
                    || !failover_possible(input, primary))
                    && !cluster.paused
                    && !busy(input, &primary.name);
                if may_restart && !may_make_writable(input) {
                    d.wait("a new leader waits out its predecessors' leases before starting the primary");
                    return false;
                }
                if may_restart {
                    let action =
                        if cluster.system_identifier.is_none() && r.data == DataDirState::Empty {
                            Action::Bootstrap {
                                settings: settings_now,
                            }
                        } else {
                            Action::StartPrimary {
                                settings: settings_now,
                            }
                        };
                    command(input, d, &primary.name, action);
                    grant(input, d, &primary.name, o);
                    return false;
                }
                if busy(input, &primary.name) && down_for < c.primary_start_timeout_ms.max(120_000)
                {
                    // Bootstrapping or starting: keep the lease alive.
                    if r.wants_lease {
                        grant(input, d, &primary.name, o);
                    }
                    d.wait(format!("primary {} is {}", primary.name, r.phase.as_str()));
                    return false;
                }
                if cluster.paused {
                    if r.wants_lease {
                        grant(input, d, &primary.name, o);
                    }
                    d.wait("paused: the primary is down and nothing is done about it");
                    return false;
                }
                d.wait(format!(
                    "primary {} did not come back within {}ms",
                    primary.name, c.primary_start_timeout_ms
                ));
            }
        }
    } else {
        d.wait(format!("no report from primary {}", primary.name));
    }

    // The primary has failed.
    if cluster.paused {
        d.wait("paused: no automatic failover");
        return false;
    }
    if cluster.open_lease {
        d.wait(format!(
            "resumed, but {}'s lease was held open while paused and its agent has not bounded it again: \
             no automatic failover (start its agent, or power the host off and run \
             `pgquorum failover --to NODE --old-primary-stopped`)",
            primary.name
        ));
        return false;
    }
    if sync_protected(cluster) {
        // Cut the sync standbys off the old primary first: from then on it
        // cannot collect the acknowledgements a commit waits for, even if
        // it is still running somewhere, and their LSNs stop moving.
        for member in &cluster.sync_set {
            if fresh(input, member).is_some_and(|o| o.report.upstream.is_some()) {
                command(input, d, member, Action::Detach);
            }
        }
    }
    let allowed = promotion_allowed_at(input);
    if input.now < allowed {
        d.wait(format!(
            "waiting {}ms for the old primary's lease to end",
            allowed - input.now
        ));
        return false;
    }
    let promised: Vec<&str> = input
        .soft
        .nodes
        .iter()
        .filter(|(name, o)| **name != primary.name && holds_promise(input, o))
        .map(|(name, _)| name.as_str())
        .collect();
    if !promised.is_empty() {
        d.wait(format!(
            "{} promised (failsafe) not to be made writable yet: waiting for that to run out",
            promised.join(", ")
        ));
    }
    failover(input, primary, d);
    false
}

/// After a resume: once the primary's agent reports that its keeper holds
/// a lease from a grant this leader made since (bounded, see
/// `Soft::bounding`), the lease can no longer be open: commit that.
fn bound_open_lease(input: &Input, primary: &Member) -> Option<ClusterCommand> {
    let cluster = input.cluster;
    if !cluster.open_lease || cluster.paused {
        return None;
    }
    let (session, seq) = input.soft.bounding?;
    let r = &fresh(input, &primary.name)?.report;
    (r.session == session && r.lease_seq >= seq && !r.lease_open && r.epoch == cluster.epoch).then(
        || ClusterCommand::LeaseBounded {
            cluster: cluster.name.clone(),
            epoch: cluster.epoch,
        },
    )
}

/// A candidate for promotion and what we know of it.
struct Candidate<'a> {
    member: &'a Member,
    received: Lsn,
    replay: Lsn,
    timeline: u32,
}

/// Replicas that could be promoted (by health and tags; lag and sync set
/// are checked by the callers), most advanced first.
fn candidates<'a>(input: &'a Input, exclude: &str, since: u64) -> Vec<Candidate<'a>> {
    let mut list: Vec<Candidate> = input
        .cluster
        .members
        .values()
        .filter(|m| m.name != exclude)
        .filter_map(|m| {
            let o = fresh(input, &m.name)?;
            if o.received_at < since || holds_promise(input, o) {
                return None;
            }
            let pg = o.report.postgres.as_ref()?;
            if !pg.in_recovery {
                return None;
            }
            if input
                .cluster
                .system_identifier
                .is_some_and(|id| id != pg.system_identifier)
            {
                return None;
            }
            Some(Candidate {
                member: m,
                received: pg.received_lsn.max(pg.replay_lsn),
                replay: pg.replay_lsn,
                timeline: pg.timeline,
            })
        })
        .collect();
    list.sort_by(|a, b| {
        (
            b.received,
            b.member.tags.priority,
            std::cmp::Reverse(b.member.registered),
        )
            .cmp(&(
                a.received,
                a.member.tags.priority,
                std::cmp::Reverse(a.member.registered),
            ))
    });
    list
}

/// The node promised (failsafe) a primary not to be made writable, or just
/// started and cannot know whether it did: not before that has run out.
fn holds_promise(input: &Input, o: &Observation) -> bool {
    input.now < o.received_at + o.report.promise_ms
}

/// The committed sync set protects acknowledged commits only if it is
/// non-empty under a synchronous mode.
fn sync_protected(cluster: &Cluster) -> bool {
    cluster.config.sync_mode != SyncMode::Off && !cluster.sync_set.is_empty()
}

/// Synchronous mode with an empty committed sync set: nobody but the
/// primary is known to hold every acknowledged commit. It happens after
/// every sync-mode failover (the promoted member leaves the set, and the
/// commits acknowledged before it may exist on it alone until another
/// standby has caught up and joined) and when a non-strict set shrinks to
/// nothing. Failing over by asynchronous rules then could lose them: no
/// automatic failover, as Patroni does.
fn sync_unprotected(cluster: &Cluster) -> bool {
    cluster.config.sync_mode != SyncMode::Off && cluster.sync_set.is_empty()
}

/// How many members of the committed sync set surely hold each
/// acknowledged commit, for counting the reports a failover needs.
fn effective_k(cluster: &Cluster) -> u32 {
    if cluster.config.sync_strict {
        cluster.config.sync_count
    } else {
        // Not strict, PostgreSQL waits for min(sync_count, members) of the
        // set it has. The set grows member by member (a new epoch's may
        // start with one), so commits acknowledged a moment ago may be on
        // a single member even where the set now allows k = sync_count:
        // counting with the larger k promoted a member without them.
        1
    }
}

/// Could `failover` promote anybody once its waits are over (the old
/// lease, the sync standbys detaching)? Its rules — timeline, lag, sync
/// set and report count, tags — applied to every replica that reports now.
fn failover_possible(input: &Input, old: &Member) -> bool {
    let cluster = input.cluster;
    if sync_unprotected(cluster) {
        return false;
    }
    let all = candidates(input, &old.name, 0);
    let top_timeline = all.iter().map(|c| c.timeline).max().unwrap_or(0);
    let timeline = input
        .soft
        .last_primary_lsn
        .map(|(_, tl)| tl)
        .unwrap_or(top_timeline);
    if sync_protected(cluster) {
        let members: Vec<&Candidate> = all
            .iter()
            .filter(|c| cluster.sync_set.contains(&c.member.name))
            .collect();
        let needed = sync::reports_needed(cluster.sync_set.len(), effective_k(cluster));
        // The most advanced member must be promotable (see `failover`).
        let top = members
            .iter()
            .filter(|c| c.timeline == timeline)
            .map(|c| c.received)
            .max();
        members.len() >= needed
            && members.iter().any(|c| {
                c.timeline == timeline && !c.member.tags.nofailover && Some(c.received) == top
            })
    } else {
        let reference = input.soft.last_primary_lsn.map(|(lsn, _)| lsn);
        all.iter().any(|c| {
            !c.member.tags.nofailover
                && c.timeline == timeline
                && reference.is_none_or(|lsn| {
                    c.received.bytes_until(lsn) <= cluster.config.maximum_lag_on_failover
                })
        })
    }
}

/// Choose and promote a replica after the primary failed.
fn failover(input: &Input, old: &Member, d: &mut Decision) {
    let cluster = input.cluster;
    if sync_unprotected(cluster) {
        d.wait("synchronous mode without a sync standby: acknowledged commits may exist on the old primary alone, so only it may come back; `pgquorum failover --to NODE` can force a replica");
        return;
    }
    let lease_end = input.soft.lease.as_ref().map(|b| b.expires_at).unwrap_or(0);
    // LSNs are final only in reports sent after the old primary stopped:
    // ask for fresh ones rather than wait for the next heartbeat.
    for m in input
        .cluster
        .members
        .values()
        .filter(|m| m.name != old.name)
    {
        if fresh(input, &m.name).is_some_and(|o| o.received_at < lease_end) {
            d.poll.push(m.name.clone());
        }
    }
    let all = candidates(input, &old.name, lease_end);
    let top_timeline = all.iter().map(|c| c.timeline).max().unwrap_or(0);
    let timeline = input
        .soft
        .last_primary_lsn
        .map(|(_, tl)| tl)
        .unwrap_or(top_timeline);

    let eligible: Vec<&Candidate> = if sync_protected(cluster) {
        // Only members that no longer stream from the old primary count:
        // their LSN is final.
        let detached = |c: &&Candidate| {
            fresh(input, &c.member.name).is_some_and(|o| {
                o.report.upstream.is_none()
                    && o.report.postgres.as_ref().is_some_and(|pg| {
                        pg.wal_receiver
                            .as_ref()
                            .is_none_or(|w| w.status != "streaming")
                    })
            })
        };
        let reported = all
            .iter()
            .filter(|c| cluster.sync_set.contains(&c.member.name))
            .filter(detached)
            .count();
        let needed = sync::reports_needed(cluster.sync_set.len(), effective_k(cluster));
        if reported < needed {
            d.wait(format!(
                "synchronous mode: {reported} of the sync set reported, {needed} needed to know who has every acknowledged commit"
            ));
            return;
        }
        all.iter()
            .filter(|c| cluster.sync_set.contains(&c.member.name) && c.timeline == timeline)
            .filter(detached)
            .collect()
    } else {
        let reference = input.soft.last_primary_lsn.map(|(lsn, _)| lsn);
        all.iter()
            .filter(|c| c.timeline == timeline)
            .filter(|c| match reference {
                Some(lsn) => c.received.bytes_until(lsn) <= cluster.config.maximum_lag_on_failover,
                None => true,
            })
            .collect()
    };
    // The best by LSN first; nofailover nodes are never promoted.
    let Some(best) = eligible.iter().find(|c| !c.member.tags.nofailover) else {
        d.wait(if all.is_empty() {
            "no replica reports: nobody to promote".to_string()
        } else {
            "no replica qualifies for promotion (lag, timeline, tags or sync set); `pgquorum failover --to NODE` can force one".to_string()
        });
        return;
    };
    if sync_protected(cluster) && eligible.first().is_some_and(|c| c.received > best.received) {
        // The most advanced sync member is tagged nofailover. It may be the
        // only one holding the last acknowledged commits (with FIRST k it
        // is often the sync standby while the others lag), and catching up
        // from it is not done in synchronous mode: wait instead of losing
        // them.
        d.wait(format!(
            "synchronous mode: {} is ahead of every sync member that may be promoted (nofailover): promoting another could lose acknowledged commits",
            eligible.first().map_or("?", |c| c.member.name.as_str())
        ));
        return;
    }
    // A reachable replica that is further ahead (a nofailover one, say):
    // let the candidate catch up from it first, for a bounded time.
    if let Some(ahead) = all.iter().find(|c| {
        !sync_protected(cluster)
            && c.timeline == best.timeline
            && c.received > best.received
            && c.member.name != best.member.name
    }) {
        d.catching_up = true;
        let since = input.soft.catch_up_since.unwrap_or(input.now);
        if input.now.saturating_sub(since) < CATCH_UP_LIMIT_MS {
            let following_ahead = fresh(input, &best.member.name)
                .and_then(|o| o.report.upstream.clone())
                .is_some_and(|u| u == ahead.member.name);
            if !following_ahead {
                command(
                    input,
                    d,
                    &best.member.name,
                    Action::Follow {
                        upstream: upstream_of(ahead.member),
                        settings: replica_settings(cluster),
                        reclone: false,
                    },
                );
            }
            d.wait(format!(
                "{} catches up from {} before promotion",
                best.member.name, ahead.member.name
            ));
            return;
        }
    }
    if busy(input, &best.member.name) {
        // Its agent still carries out an earlier command (a follow, say,
        // that may stop, rewind or even re-clone it). The promotion would
        // only run after it, on whatever that left.
        d.wait(format!(
            "{} finishes its current command before promotion",
            best.member.name
        ));
        return;
    }
    // The new epoch's sync set keeps only members that hold everything the
    // new primary holds (detached at the same LSN: the same WAL). The
    // others may lack commits acknowledged in this epoch (with FIRST k, a
    // "potential" standby can lag far behind); were they kept, a later
    // failover could promote one of them. The rest rejoin once streaming.
    let next_sync: BTreeSet<String> = eligible
        .iter()
        .filter(|c| c.member.name != best.member.name && c.received == best.received)
        .map(|c| c.member.name.clone())
        .collect();
    d.commit = Some(ClusterCommand::Promote {
        cluster: cluster.name.clone(),
        expected_epoch: cluster.epoch,
        node: best.member.name.clone(),
        kind: EventKind::Failover,
        reason: format!("primary {} failed", old.name),
        sync_set: next_sync,
        timeline,
        lsn: best.received.max(best.replay),
        at_unix_ms: input.wall_ms,
    });
}

/// Drive a planned switchover; returns a commit when one is due.
fn switchover(input: &Input, primary: &Member, d: &mut Decision) -> Option<ClusterCommand> {
    let cluster = input.cluster;
    let s = cluster.switchover.as_ref()?;
    if s.phase != SwitchoverPhase::Scheduled {
        return None;
    }
    if s.not_before_unix_ms.is_some_and(|t| input.wall_ms < t) {
        d.wait("switchover scheduled for later");
        return None;
    }
    if s.from != primary.name {
        return Some(ClusterCommand::CancelSwitchover {
            cluster: cluster.name.clone(),
            reason: format!("{} is no longer the primary", s.from),
        });
    }
    let target = match &s.to {
        Some(to) => cluster.member(to),
        None => candidates(input, &primary.name, 0)
            .into_iter()
            .filter(|c| !c.member.tags.nofailover)
            .filter(|c| !sync_protected(cluster) || cluster.sync_set.contains(&c.member.name))
            .map(|c| c.member)
            .find(|m| fresh(input, &m.name).is_some_and(|o| is_streaming_from(&o.report, primary))),
    };
    let ready = target
        .filter(|m| fresh(input, &m.name).is_some_and(|o| is_streaming_from(&o.report, primary)));
    match ready {
        Some(target) => Some(ClusterCommand::AdvanceSwitchover {
            cluster: cluster.name.clone(),
            epoch: cluster.epoch,
            phase: SwitchoverPhase::Demoting {
                target: target.name.clone(),
            },
        }),
        None if input
            .wall_ms
            .saturating_sub(s.not_before_unix_ms.unwrap_or(s.requested_unix_ms))
            > SWITCHOVER_LIMIT_MS =>
        {
            Some(ClusterCommand::CancelSwitchover {
                cluster: cluster.name.clone(),
                reason: "no streaming replica to switch over to".to_string(),
            })
        }
        None => {
            d.wait("switchover waits for its target to stream");
            None
        }
    }
}

/// Keep the committed sync set and the primary's synchronous_standby_names
/// in step: widen the committed set first, narrow PostgreSQL's first.
fn manage_sync_set(input: &Input, primary: &Member, d: &mut Decision) -> Option<ClusterCommand> {
    let cluster = input.cluster;
    let c = &cluster.config;
    let o = fresh(input, &primary.name)?;
    let pg = o.report.postgres.as_ref()?;
    let committed = &cluster.sync_set;
    let in_pg = sync::parse_names(&pg.synchronous_standby_names);

    let streaming: BTreeSet<String> = pg
        .replicas
        .iter()
        .filter(|r| r.state == "streaming")
        .map(|r| r.application_name.clone())
        .filter(|n| {
            cluster
                .member(n)
                .is_some_and(|m| !m.tags.nosync && m.name != primary.name)
        })
        .collect();
    let desired: BTreeSet<String> = if c.sync_mode == SyncMode::Off {
        BTreeSet::new()
    } else {
        // Members stay while absent for less than a ttl (a restart, a
        // re-point after failover); longer absences drop out unless strict.
        let mut keep: BTreeSet<String> = streaming.clone();
        for member in committed {
            if streaming.contains(member) {
                continue;
            }
            let since = input
                .soft
                .sync_absent_since
                .get(member)
                .copied()
                .unwrap_or(input.now);
            if c.sync_strict || input.now.saturating_sub(since) < c.ttl_ms {
                keep.insert(member.clone());
            }
        }
        keep
    };

    let added: BTreeSet<String> = desired.difference(committed).cloned().collect();
    if !added.is_empty() {
        // Widen the committed set before PostgreSQL's.
        let mut next = committed.clone();
        next.extend(added);
        return Some(ClusterCommand::SetSyncSet {
            cluster: cluster.name.clone(),
            epoch: cluster.epoch,
            sync_set: next,
        });
    }
    let wanted_pg = sync::render(c.sync_mode, c.sync_count, c.sync_strict, &desired);
    let wanted_names = sync::parse_names(&wanted_pg);
    if pg.synchronous_standby_names != wanted_pg {
        // PostgreSQL's set first (it is a subset of the committed one).
        if wanted_names.is_subset(committed) {
            command(
                input,
                d,
                &primary.name,
                Action::Configure {
                    settings: ManagedSettings {
                        synchronous_standby_names: wanted_pg,
                        ..settings(cluster, committed)
                    },
                },
            );
        }
        return None;
    }
    let removed: BTreeSet<String> = committed.difference(&desired).cloned().collect();
    if !removed.is_empty() && in_pg.is_subset(&desired) {
        // PostgreSQL no longer waits for them. But commits it acknowledged
        // before may be on a removed member alone (FIRST 1 (b, c): b
        // confirms while c lags): narrow the committed set only once
        // enough members that stay flushed past the point where
        // PostgreSQL's names changed. (An empty set needs nothing: then
        // nobody but the primary may be promoted.)
        let since = input
            .soft
            .sync_names_since
            .as_ref()
            .filter(|(names, _)| *names == pg.synchronous_standby_names)
            .map(|(_, lsn)| *lsn);
        let confirmed = pg
            .replicas
            .iter()
            .filter(|r| r.state == "streaming" && desired.contains(&r.application_name))
            .filter(|r| since.is_some_and(|lsn| r.flush_lsn >= lsn))
            .count();
        if desired.is_empty() || confirmed >= effective_k(cluster) as usize {
            return Some(ClusterCommand::SetSyncSet {
                cluster: cluster.name.clone(),
                epoch: cluster.epoch,
                sync_set: desired,
            });
        }
        d.wait("sync set: the remaining standbys confirm the last commits before it shrinks");
    }
    None
}

/// Point every other node at the primary; fence any second writer.
fn replicas(input: &Input, primary: &Member, primary_ok: bool, d: &mut Decision) {
    let cluster = input.cluster;
    let demoting_target = match cluster.switchover.as_ref().map(|s| &s.phase) {
        Some(SwitchoverPhase::Demoting { target }) => Some(target.clone()),
        _ => None,
    };
    if let Some(target) = &demoting_target {
        demote_step(input, primary, target, d);
    }
    for m in cluster.members.values().filter(|m| m.name != primary.name) {
        let Some(o) = fresh(input, &m.name) else {
            continue;
        };
        let r = &o.report;
        // A second writer is fenced whatever else is going on.
        if is_writable(r) {
            command(
                input,
                d,
                &m.name,
                Action::Fence {
                    reason: format!("{} is the primary of epoch {}", primary.name, cluster.epoch),
                },
            );
            continue;
        }
        if cluster.paused && m.action.is_none() {
            continue;
        }
        if let Some(action) = &m.action {
            if r.completed_action != Some(action.id) && primary_ok && !busy(input, &m.name) {
                let a = match action.kind {
                    NodeActionKind::Reinit => Action::Reinit {
                        upstream: upstream_of(primary),
                        action_id: action.id,
                    },
                    NodeActionKind::Restart | NodeActionKind::RestartPending => Action::Restart {
                        action_id: action.id,
                        pending_only: action.kind == NodeActionKind::RestartPending,
                    },
                };
                command(input, d, &m.name, a);
                continue;
            }
        }
        if demoting_target.as_deref() == Some(m.name.as_str())
            || !primary_ok
            || busy(input, &m.name)
        {
            continue;
        }
        if let DataDirState::Valid {
            system_identifier, ..
        } = &r.data
        {
            if cluster
                .system_identifier
                .is_some_and(|id| id != *system_identifier)
            {
                d.wait(format!(
                    "{} holds another database (system {system_identifier}): `pgquorum node reinit {}` replaces it",
                    m.name, m.name
                ));
                continue;
            }
        }
        if matches!(r.data, DataDirState::Foreign { .. }) {
            d.wait(format!(
                "{}: its data directory is not PostgreSQL's; fix it by hand",
                m.name
            ));
            continue;
        }
        let follows = r.upstream.as_deref() == Some(primary.name.as_str())
            && r.epoch == cluster.epoch
            && r.postgres.as_ref().is_some_and(|pg| pg.in_recovery);
        // A receiver that does not stream for a while is nudged by
        // following again (the agent restarts it when it is stuck).
        let stuck = follows
            && input
                .soft
                .not_streaming_since
                .get(&m.name)
                .is_some_and(|since| input.now.saturating_sub(*since) > RESEND_AFTER_MS);
        if !follows || stuck {
            command(
                input,
                d,
                &m.name,
                Action::Follow {
                    upstream: upstream_of(primary),
                    settings: replica_settings(cluster),
                    reclone: cluster.config.reclone_on_rewind_failure,
                },
            );
        } else if r.config_version < cluster.config_version {
            command(
                input,
                d,
                &m.name,
                Action::Configure {
                    settings: replica_settings(cluster),
                },
            );
        }
    }
    if primary_ok {
        if let (Some(o), Some(action)) = (fresh(input, &primary.name), primary.action.as_ref()) {
            // An operator's restart of the primary (a reinit is refused
            // when it is requested).
            let restart = matches!(
                action.kind,
                NodeActionKind::Restart | NodeActionKind::RestartPending
            );
            if restart
                && o.report.completed_action != Some(action.id)
                && !busy(input, &primary.name)
            {
                command(
                    input,
                    d,
                    &primary.name,
                    Action::Restart {
                        action_id: action.id,
                        pending_only: action.kind == NodeActionKind::RestartPending,
                    },
                );
                return;
            }
        }
        if let Some(o) = fresh(input, &primary.name) {
            if o.report.config_version < cluster.config_version && !busy(input, &primary.name) {
                command(
                    input,
                    d,
                    &primary.name,
                    Action::Configure {
                        settings: settings(cluster, &cluster.sync_set),
                    },
                );
            }
        }
    }
}

/// Switchover, phase two: stop the old primary cleanly, and promote the
/// target once it has replayed everything the old primary wrote.
fn demote_step(input: &Input, primary: &Member, target: &str, d: &mut Decision) {
    let cluster = input.cluster;
    // A switchover that cannot finish is given up; the stopped primary is
    // then handled as any failed primary (restarted, or a failover).
    // Without this the cluster stayed without a primary for good: while
    // demoting, `primary_duties` neither restarts nor replaces it and
    // `replicas` leaves the target alone.
    let cancel = |d: &mut Decision, reason: &str| {
        if d.commit.is_none() {
            d.commit = Some(ClusterCommand::CancelSwitchover {
                cluster: cluster.name.clone(),
                reason: reason.to_string(),
            });
        }
    };
    if let Some(s) = &cluster.switchover {
        let since = s.not_before_unix_ms.unwrap_or(s.requested_unix_ms);
        // Up to one limit to find a streaming target, one to finish.
        if input.wall_ms.saturating_sub(since) > 2 * SWITCHOVER_LIMIT_MS {
            cancel(d, "the switchover did not complete in time");
            return;
        }
    }
    let Some(o) = fresh(input, &primary.name) else {
        d.wait("switchover: no report from the old primary");
        return;
    };
    let r = &o.report;
    if r.postgres.is_some() {
        command(input, d, &primary.name, Action::Demote);
        return;
    }
    let DataDirState::Valid {
        clean_shutdown: true,
        checkpoint_lsn,
        timeline,
        ..
    } = r.data
    else {
        if busy(input, &primary.name) {
            d.wait("switchover: the old primary is stopping");
        } else {
            // Crashed or fenced instead: its replicas may lack its last
            // WAL, so the zero-loss promotion of the target is off.
            cancel(d, "the old primary did not stop cleanly");
        }
        return;
    };
    if r.holds_lease {
        d.wait("switchover: waiting for the old primary to release its lease");
        return;
    }
    let Some(t) = fresh(input, target) else {
        d.wait("switchover: no report from the target");
        return;
    };
    if t.received_at < o.received_at {
        // The target's replay position predates the old primary's stop.
        d.poll.push(target.to_string());
    }
    let caught_up = t
        .report
        .postgres
        .as_ref()
        .is_some_and(|pg| pg.in_recovery && pg.replay_lsn > checkpoint_lsn);
    if !caught_up {
        d.wait(format!(
            "switchover: {target} replays up to {checkpoint_lsn}"
        ));
        return;
    }
    if d.commit.is_none() {
        // Only members that replayed everything the old primary wrote stay
        // in the sync set (see `failover`).
        let next_sync: BTreeSet<String> = cluster
            .sync_set
            .iter()
            .filter(|m| m.as_str() != target)
            .filter(|m| {
                fresh(input, m).is_some_and(|o| {
                    o.report
                        .postgres
                        .as_ref()
                        .is_some_and(|pg| pg.in_recovery && pg.replay_lsn > checkpoint_lsn)
                })
            })
            .cloned()
            .collect();
        d.commit = Some(ClusterCommand::Promote {
            cluster: cluster.name.clone(),
            expected_epoch: cluster.epoch,
            node: target.to_string(),
            kind: EventKind::Switchover,
            reason: format!("planned switchover from {}", primary.name),
            sync_set: next_sync,
            timeline,
            lsn: checkpoint_lsn,
            at_unix_ms: input.wall_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::{ClusterState, Tags};
    use crate::cluster::wire::{
        AgentPhase, CommandOutcome, PgStatus, ReplicaConnection, WalReceiver,
    };

    const SYSID: u64 = 42;

    /// Nodes n1.. (10.0.0.1..), bootstrapped on n1 with data, `config` set.
    fn cluster(nodes: &[(&str, Tags)], config: &[(&str, &str)]) -> Cluster {
        let mut s = ClusterState::default();
        for (i, (name, tags)) in nodes.iter().enumerate() {
            ClusterCommand::RegisterNode {
                cluster: "main".into(),
                name: (*name).into(),
                host: format!("10.0.0.{}", i + 1),
                port: 5432,
                http: format!("10.0.0.{}:8008", i + 1),
                tags: tags.clone(),
            }
            .apply(&mut s)
            .unwrap();
        }
        if !config.is_empty() {
            ClusterCommand::SetConfig {
                cluster: "main".into(),
                changes: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
            .apply(&mut s)
            .unwrap();
        }
        for c in [
            ClusterCommand::Bootstrap {
                cluster: "main".into(),
                node: nodes[0].0.into(),
                at_unix_ms: 0,
            },
            ClusterCommand::SetSystemIdentifier {
                cluster: "main".into(),
                id: SYSID,
            },
        ] {
            c.apply(&mut s).unwrap();
        }
        s.clusters["main"].clone()
    }

    fn three(config: &[(&str, &str)]) -> Cluster {
        let nodes: Vec<(&str, Tags)> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| (*n, Tags::default()))
            .collect();
        cluster(&nodes, config)
    }

    fn apply(c: &mut Cluster, command: ClusterCommand) {
        let mut s = ClusterState::default();
        s.clusters.insert("main".into(), c.clone());
        command.apply(&mut s).unwrap();
        *c = s.clusters["main"].clone();
    }

    fn host(node: &str) -> String {
        format!("10.0.0.{}", &node[1..])
    }

    /// A report with PostgreSQL down and a valid data directory.
    fn down(node: &str) -> NodeReport {
        NodeReport {
            cluster: "main".into(),
            node: node.into(),
            seq: 1,
            session: 1,
            epoch: 1,
            data: DataDirState::Valid {
                system_identifier: SYSID,
                timeline: 1,
                standby: false,
                clean_shutdown: false,
                checkpoint_lsn: Lsn(0),
            },
            ..NodeReport::default()
        }
    }

    fn primary(node: &str, lsn: u64) -> NodeReport {
        NodeReport {
            postgres: Some(PgStatus {
                in_recovery: false,
                timeline: 1,
                system_identifier: SYSID,
                lsn: Lsn(lsn),
                received_lsn: Lsn(lsn),
                replay_lsn: Lsn(lsn),
                ..PgStatus::default()
            }),
            wants_lease: true,
            ..down(node)
        }
    }

    /// A replica at `lsn`, streaming from `upstream` when given.
    fn replica(node: &str, lsn: u64, upstream: Option<&str>) -> NodeReport {
        NodeReport {
            postgres: Some(PgStatus {
                in_recovery: true,
                timeline: 1,
                system_identifier: SYSID,
                lsn: Lsn(lsn),
                received_lsn: Lsn(lsn),
                replay_lsn: Lsn(lsn),
                wal_receiver: upstream.map(|u| WalReceiver {
                    status: "streaming".into(),
                    sender_host: host(u),
                    sender_port: 5432,
                }),
                ..PgStatus::default()
            }),
            upstream: upstream.map(str::to_string),
            ..down(node)
        }
    }

    /// The soft state of a leader elected at 0 that received `reports`.
    fn soft(c: &Cluster, reports: Vec<(NodeReport, u64)>) -> Soft {
        let mut soft = Soft::new(0);
        for (r, at) in reports {
            soft.observe(c, r, at);
        }
        soft
    }

    fn run(c: &Cluster, soft: &Soft, now: u64, wall_ms: u64) -> Decision {
        decide(&Input {
            cluster: c,
            soft,
            now,
            wall_ms,
        })
    }

    fn commands_to(d: &Decision, node: &str) -> Vec<&'static str> {
        d.commands
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, a)| a.name())
            .collect()
    }

    fn promoted(d: &Decision) -> Option<(String, BTreeSet<String>)> {
        match &d.commit {
            Some(ClusterCommand::Promote { node, sync_set, .. }) => {
                Some((node.clone(), sync_set.clone()))
            }
            _ => None,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paused_grants_hold_open_and_resume_waits_until_the_agent_bounds_the_lease() {
        let mut c = three(&[]);
        let pause = |paused| ClusterCommand::SetPaused {
            cluster: "main".into(),
            paused,
        };
        apply(&mut c, pause(true));
        assert!(c.open_lease);
        // While paused the lease is granted open.
        let mut s = soft(
            &c,
            vec![
                (primary("n1", 100), 1_000),
                (replica("n2", 100, Some("n1")), 1_000),
                (replica("n3", 100, Some("n1")), 1_000),
            ],
        );
        s.confirmed_at = Some(2_000);
        let d = run(&c, &s, 2_000, 0);
        let (node, g) = d.grant.expect("a grant while paused");
        assert_eq!(node, "n1");
        assert!(g.hold, "a paused grant must hold the lease open: {g:?}");

        // Resumed; the primary's agent dies with its keeper holding the lease
        // open: whatever time passes, nobody is promoted.
        apply(&mut c, pause(false));
        assert!(c.open_lease, "resuming alone bounds nothing");
        let late = 60_000;
        let s = soft(
            &c,
            vec![
                (replica("n2", 100, Some("n1")), late - 100),
                (replica("n3", 100, Some("n1")), late - 100),
            ],
        );
        let d = run(&c, &s, late, 0);
        assert_eq!(d.commit, None, "{d:?}");
        assert!(d.waiting.iter().any(|w| w.contains("held open")), "{d:?}");

        // The agent is alive: the leader's next grant is bounded, and
        // booked as the one that bounds the lease.
        let open = NodeReport {
            lease_open: true,
            lease_seq: 4,
            seq: 5,
            ..primary("n1", 100)
        };
        let mut s = soft(&c, vec![(open.clone(), 1_000)]);
        s.confirmed_at = Some(2_000);
        let d = run(&c, &s, 2_000, 0);
        assert_eq!(d.commit, None, "an open lease is not bounded yet: {d:?}");
        let (node, g) = d.grant.expect("a grant after resume");
        assert!(!g.hold, "{g:?}");
        assert!(s.book_lease(&c, &node, &g));
        assert_eq!(s.bounding, Some((1, 5)));
        // A report still showing an older grant's lease changes nothing...
        s.observe(
            &c,
            NodeReport {
                lease_open: false,
                lease_seq: 4,
                seq: 6,
                ..primary("n1", 100)
            },
            2_100,
        );
        assert_eq!(run(&c, &s, 2_100, 0).commit, None);
        // ...one from the bounding grant (or later) ends the open lease.
        s.observe(
            &c,
            NodeReport {
                lease_open: false,
                lease_seq: 5,
                seq: 7,
                ..primary("n1", 100)
            },
            2_200,
        );
        assert_eq!(
            run(&c, &s, 2_200, 0).commit,
            Some(ClusterCommand::LeaseBounded {
                cluster: "main".into(),
                epoch: 1,
            })
        );
        // Paused and resumed again before that commit: the open grant made
        // meanwhile voids the bounding grant, and the same report no longer
        // bounds anything.
        let mut paused = c.clone();
        apply(&mut paused, pause(true));
        let hold = LeaseGrant {
            hold: true,
            seq: 7,
            ..g
        };
        assert!(s.book_lease(&paused, "n1", &hold));
        assert_eq!(s.bounding, None);
        assert_eq!(run(&c, &s, 2_250, 0).commit, None);
        apply(
            &mut c,
            ClusterCommand::LeaseBounded {
                cluster: "main".into(),
                epoch: 1,
            },
        );
        assert!(!c.open_lease);
    }

    #[test]
    fn restarts_the_primary_when_no_replica_could_take_over() {
        // primary_start_timeout 0: fail over at once rather than restart.
        // But with no replica that could be promoted, restarting the
        // primary is the only way back; the decision used to wait forever.
        let mut c = three(&[("primary_start_timeout", "0")]);
        let never_cloned = |n: &str| NodeReport {
            data: DataDirState::Empty,
            ..down(n)
        };
        let s = soft(
            &c,
            vec![
                (down("n1"), 9_000),
                (never_cloned("n2"), 9_500),
                (never_cloned("n3"), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");

        // The same with replicas too far behind to be promoted.
        apply(
            &mut c,
            ClusterCommand::SetConfig {
                cluster: "main".into(),
                changes: [("maximum_lag_on_failover".to_string(), "1000".to_string())].into(),
            },
        );
        let s = soft(
            &c,
            vec![
                (primary("n1", 100_000), 1_000),
                (down("n1"), 9_000),
                (replica("n2", 50_000, None), 9_500),
                (replica("n3", 40_000, None), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert!(d.commit.is_none(), "{d:?}");
        assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");

        // And a new cluster bootstraps even with a timeout of 0.
        c.system_identifier = None;
        let s = soft(
            &c,
            vec![
                (never_cloned("n1"), 9_000),
                (never_cloned("n2"), 9_500),
                (never_cloned("n3"), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(commands_to(&d, "n1"), ["bootstrap"], "{d:?}");
    }

    #[test]
    fn sync_mode_without_a_sync_standby_does_not_fail_over() {
        // After a sync-mode failover the new primary's sync set is empty
        // until a standby catches up. The commits acknowledged before may
        // then exist on the primary alone: promoting a replica by the
        // asynchronous rules (as was done) loses them.
        let c = three(&[("sync_mode", "on")]);
        assert!(c.sync_set.is_empty());
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (replica("n2", 9_000, None), 9_500),
                (replica("n3", 8_000, None), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(promoted(&d), None, "{d:?}");
        assert!(
            d.waiting
                .iter()
                .any(|w| w.contains("without a sync standby")),
            "{d:?}"
        );
        // Only the old primary may come back: it is restarted.
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (down("n1"), 9_400),
                (replica("n2", 9_000, None), 9_500),
                (replica("n3", 8_000, None), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");
    }

    #[test]
    fn a_node_holding_a_failsafe_promise_is_not_promoted_until_it_ran_out() {
        let c = three(&[]);
        let promised = |node: &str, lsn: u64, ms: u64| NodeReport {
            promise_ms: ms,
            ..replica(node, lsn, None)
        };
        // n2 is the most advanced but promised for 2 s from 9 500.
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (promised("n2", 10_000, 2_000), 9_500),
                (promised("n3", 9_000, 0), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(promoted(&d).map(|p| p.0), Some("n3".into()), "{d:?}");
        assert!(d.waiting.iter().any(|w| w.contains("n2 promised")), "{d:?}");
        // Both promised: nobody.
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (promised("n2", 10_000, 2_000), 9_500),
                (promised("n3", 9_000, 2_000), 9_500),
            ],
        );
        assert_eq!(promoted(&run(&c, &s, 10_000, 0)), None);
        // Run out: n2 again.
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (promised("n2", 10_000, 400), 9_500),
                (promised("n3", 9_000, 400), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(promoted(&d).map(|p| p.0), Some("n2".into()), "{d:?}");
    }

    #[test]
    fn a_promotion_keeps_only_sync_members_that_hold_everything() {
        // FIRST 1 (n2, n3): n3 may be a lagging "potential" standby while
        // n2 confirms every commit. Kept in the new epoch's sync set, n3
        // could be promoted after n2 fails, without those commits.
        let mut c = three(&[("sync_mode", "on")]);
        apply(
            &mut c,
            ClusterCommand::SetSyncSet {
                cluster: "main".into(),
                epoch: 1,
                sync_set: set(&["n2", "n3"]),
            },
        );
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (replica("n2", 10_000, None), 9_500),
                (replica("n3", 9_000, None), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(promoted(&d), Some(("n2".into(), set(&[]))), "{d:?}");
        // A member at the same LSN holds the same WAL: it stays.
        let s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (replica("n2", 10_000, None), 9_500),
                (replica("n3", 10_000, None), 9_500),
            ],
        );
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(promoted(&d), Some(("n2".into(), set(&["n3"]))), "{d:?}");
    }

    #[test]
    fn sync_failover_never_skips_a_more_advanced_nofailover_member() {
        // FIRST 1 (n2, n3) with n2 tagged nofailover: n2 confirms the
        // commits while n3 lags. The failover skipped n2 for its tag and
        // promoted n3 without them (no catching up in synchronous mode).
        let nofailover = Tags {
            nofailover: true,
            ..Tags::default()
        };
        let mut c = cluster(
            &[
                ("n1", Tags::default()),
                ("n2", nofailover),
                ("n3", Tags::default()),
            ],
            &[("sync_mode", "on"), ("primary_start_timeout", "0")],
        );
        apply(
            &mut c,
            ClusterCommand::SetSyncSet {
                cluster: "main".into(),
                epoch: 1,
                sync_set: set(&["n2", "n3"]),
            },
        );
        let reports = vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 10_000, None), 9_500),
            (replica("n3", 9_000, None), 9_500),
        ];
        let d = run(&c, &soft(&c, reports.clone()), 10_000, 0);
        assert_eq!(promoted(&d), None, "{d:?}");
        assert!(d.waiting.iter().any(|w| w.contains("nofailover")), "{d:?}");
        // Nobody can be promoted: the old primary is restarted instead.
        let mut with_n1 = reports;
        with_n1.push((down("n1"), 9_000));
        let d = run(&c, &soft(&c, with_n1), 10_000, 0);
        assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");
    }

    #[test]
    fn a_follow_restarts_the_not_streaming_clock() {
        // A replica that has not streamed for RESEND_AFTER_MS is told to
        // follow again. The clock was not reset by that, so the first
        // report after the restart (before its WAL receiver connected)
        // triggered another follow at once: a stop/start loop.
        let c = three(&[]);
        let mut s = soft(
            &c,
            vec![
                (replica("n2", 5_000, None), 1_000),
                (primary("n1", 6_000), 6_900),
                (replica("n2", 5_000, None), 7_000),
                (replica("n3", 6_000, Some("n1")), 7_000),
            ],
        );
        let follows_n1 = |r: NodeReport| NodeReport {
            upstream: Some("n1".into()),
            ..r
        };
        s.observe(&c, follows_n1(replica("n2", 5_000, None)), 7_000);
        let d = run(&c, &s, 7_000, 0);
        let (node, action) = d
            .commands
            .iter()
            .find(|(n, _)| n == "n2")
            .cloned()
            .expect("a nudge for n2");
        assert_eq!((node.as_str(), action.name()), ("n2", "follow"));
        let id = s.sent("n2", &action, 1, 7_000);
        let done = NodeReport {
            last_command: Some(CommandOutcome {
                id,
                ok: true,
                message: "following n1".into(),
            }),
            ..follows_n1(replica("n2", 5_000, None))
        };
        s.observe(&c, primary("n1", 6_100), 7_500);
        s.observe(&c, done, 7_600);
        let d = run(&c, &s, 7_700, 0);
        assert!(!commands_to(&d, "n2").contains(&"follow"), "{d:?}");
    }

    #[test]
    fn a_switchover_that_cannot_finish_is_given_up() {
        let mut c = three(&[]);
        apply(
            &mut c,
            ClusterCommand::RequestSwitchover {
                cluster: "main".into(),
                from: None,
                to: Some("n2".into()),
                not_before_unix_ms: None,
                requested_unix_ms: 1_000_000,
            },
        );
        apply(
            &mut c,
            ClusterCommand::AdvanceSwitchover {
                cluster: "main".into(),
                epoch: 1,
                phase: SwitchoverPhase::Demoting {
                    target: "n2".into(),
                },
            },
        );
        let cancelled =
            |d: &Decision| matches!(d.commit, Some(ClusterCommand::CancelSwitchover { .. }));
        // The old primary was fenced instead of stopping cleanly: its last
        // WAL may be missing on the target. It used to wait for a clean
        // stop forever, with nobody restarting or replacing the primary.
        let fenced = NodeReport {
            phase: AgentPhase::Fenced,
            ..down("n1")
        };
        let s = soft(
            &c,
            vec![(fenced, 9_500), (replica("n2", 5_000, Some("n1")), 9_500)],
        );
        assert!(cancelled(&run(&c, &s, 10_000, 1_010_000)));
        // Stopped cleanly, but the target never catches up (it stopped, or
        // lost its upstream): given up after twice SWITCHOVER_LIMIT_MS.
        let clean = NodeReport {
            data: DataDirState::Valid {
                system_identifier: SYSID,
                timeline: 1,
                standby: false,
                clean_shutdown: true,
                checkpoint_lsn: Lsn(6_000),
            },
            ..down("n1")
        };
        let s = soft(
            &c,
            vec![(clean, 9_500), (replica("n2", 5_000, None), 9_500)],
        );
        let d = run(&c, &s, 10_000, 1_010_000);
        assert!(!cancelled(&d) && promoted(&d).is_none(), "{d:?}");
        let d = run(&c, &s, 10_000, 1_000_000 + 2 * SWITCHOVER_LIMIT_MS + 1);
        assert!(cancelled(&d), "{d:?}");
    }

    #[test]
    fn not_strict_sync_failover_hears_from_every_member() {
        // sync_count 2, not strict: while the set was {n2} PostgreSQL had
        // FIRST 1 (n2), so those commits are on n2 alone. Once the set is
        // {n2, n3} (FIRST 2), n - k + 1 = 1 report was taken as enough and
        // n3 was promoted without them while n2 was down.
        let mut c = three(&[("sync_mode", "on"), ("sync_count", "2")]);
        apply(
            &mut c,
            ClusterCommand::SetSyncSet {
                cluster: "main".into(),
                epoch: 1,
                sync_set: set(&["n2", "n3"]),
            },
        );
        let reports = vec![
            (primary("n1", 10_000), 1_000),
            (replica("n3", 9_000, None), 9_500),
        ];
        let d = run(&c, &soft(&c, reports.clone()), 10_000, 0);
        assert_eq!(promoted(&d), None, "{d:?}");
        let mut all = reports;
        all.push((replica("n2", 10_000, None), 9_500));
        let d = run(&c, &soft(&c, all), 10_000, 0);
        assert_eq!(promoted(&d), Some(("n2".into(), set(&[]))), "{d:?}");
        // Strict, PostgreSQL always waited for 2: one report is enough.
        apply(
            &mut c,
            ClusterCommand::SetConfig {
                cluster: "main".into(),
                changes: [("sync_strict".to_string(), "on".to_string())].into(),
            },
        );
        let d = run(
            &c,
            &soft(
                &c,
                vec![
                    (primary("n1", 10_000), 1_000),
                    (replica("n3", 9_000, None), 9_500),
                ],
            ),
            10_000,
            0,
        );
        assert_eq!(promoted(&d), Some(("n3".into(), set(&[]))), "{d:?}");
    }

    #[test]
    fn a_vanished_sync_standby_is_dropped_once_the_others_confirmed() {
        // Not strict, a member absent for a ttl leaves the sync set. The
        // absence was never recorded, so it never left: with sync_count 2
        // and FIRST 2 (n2, n3), n3 gone blocked every write for good.
        let mut c = three(&[("sync_mode", "on"), ("sync_count", "2")]);
        apply(
            &mut c,
            ClusterCommand::SetSyncSet {
                cluster: "main".into(),
                epoch: 1,
                sync_set: set(&["n2", "n3"]),
            },
        );
        let with = |names: &str, lsn: u64, n2_flush: u64| {
            let mut r = primary("n1", lsn);
            if let Some(pg) = r.postgres.as_mut() {
                pg.synchronous_standby_names = names.into();
                pg.replicas = vec![ReplicaConnection {
                    application_name: "n2".into(),
                    state: "streaming".into(),
                    flush_lsn: Lsn(n2_flush),
                    replay_lsn: Lsn(n2_flush),
                    sync_state: "sync".into(),
                }];
            }
            r
        };
        let both = "FIRST 2 (\"n2\",\"n3\")";
        let only_n2 = "FIRST 1 (\"n2\")";
        let mut s = soft(
            &c,
            vec![
                (with(both, 1_000, 1_000), 1_000),
                (replica("n2", 1_000, Some("n1")), 1_000),
            ],
        );
        s.observe(&c, with(both, 4_000, 4_000), 3_500);
        s.observe(&c, replica("n2", 4_000, Some("n1")), 3_500);
        let d = run(&c, &s, 3_500, 0);
        let configure = d.commands.iter().find_map(|(n, a)| match a {
            Action::Configure { settings } if n == "n1" => {
                Some(settings.synchronous_standby_names.clone())
            }
            _ => None,
        });
        assert_eq!(configure.as_deref(), Some(only_n2), "{d:?}");
        // PostgreSQL waits for n2 alone from LSN 6000 on. Commits before
        // may be on n3 alone: the committed set keeps n3 until n2 has
        // flushed up to there.
        s.observe(&c, with(only_n2, 6_000, 5_000), 3_600);
        let d = run(&c, &s, 3_600, 0);
        assert!(d.commit.is_none(), "{d:?}");
        s.observe(&c, with(only_n2, 7_000, 6_000), 3_700);
        let d = run(&c, &s, 3_700, 0);
        assert_eq!(
            d.commit,
            Some(ClusterCommand::SetSyncSet {
                cluster: "main".into(),
                epoch: 1,
                sync_set: set(&["n2"]),
            })
        );
    }

    #[test]
    fn a_replica_busy_with_a_command_is_not_promoted() {
        // A follow sent before the failure may still stop, rewind or
        // re-clone the replica; a promotion queued behind it ran on
        // whatever that left (in the simulation: an empty data directory).
        let c = three(&[]);
        let mut s = soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (replica("n2", 10_000, None), 9_500),
                (replica("n3", 9_000, None), 9_500),
            ],
        );
        let follow = Action::Follow {
            upstream: Upstream {
                node: "n3".into(),
                host: host("n3"),
                port: 5432,
            },
            settings: ManagedSettings::default(),
            reclone: true,
        };
        let id = s.sent("n2", &follow, 1, 9_000);
        let d = run(&c, &s, 10_000, 0);
        assert_eq!(promoted(&d), None, "{d:?}");
        let done = NodeReport {
            last_command: Some(CommandOutcome {
                id,
                ok: true,
                message: String::new(),
            }),
            ..replica("n2", 10_000, None)
        };
        s.observe(&c, done, 10_100);
        let d = run(&c, &s, 10_200, 0);
        assert_eq!(promoted(&d), Some(("n2".into(), set(&[]))), "{d:?}");
    }
}
