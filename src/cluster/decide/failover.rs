//! Who may be promoted, and promoting them after the primary failed: one
//! candidate rule and one sync-set rule, for the automatic path and for an
//! operator's `failover --to`.

use super::*;

/// A candidate for promotion and what we know of it.
pub(super) struct Candidate<'a> {
    pub(super) member: &'a Member,
    pub(super) received: Lsn,
    pub(super) replay: Lsn,
    pub(super) timeline: u32,
}

/// May `m` be made writable now, as far as its own state goes? The one
/// rule for every promotion — automatic failover, `failover --to` and
/// switchover: it reported lately (after `since`), runs as a replica of
/// this cluster's database, and holds no failsafe promise. Lag, sync set
/// and the `nofailover` tag are the callers' rules. Why not, when not.
pub(super) fn candidate<'a>(
    input: &'a Input,
    m: &'a Member,
    since: u64,
) -> Result<Candidate<'a>, String> {
    let o = fresh(input, &m.name).ok_or("it has not reported lately")?;
    if o.received_at < since {
        return Err("its latest report is older than the old primary's lease".into());
    }
    if holds_promise(input, o) {
        return Err(format!(
            "it promised (failsafe) not to be made writable for another {} ms",
            (o.received_at + o.report.promise_ms).saturating_sub(input.now)
        ));
    }
    if unresponsive(input, o) {
        return Err(format!(
            "its PostgreSQL has not answered for {} ms",
            o.report.unresponsive_ms
        ));
    }
    let pg = o
        .report
        .postgres
        .as_ref()
        .ok_or("its PostgreSQL is not running")?;
    if !pg.in_recovery {
        return Err("it is not a replica".into());
    }
    if let Some(id) = input
        .cluster
        .system_identifier
        .filter(|id| *id != pg.system_identifier)
    {
        return Err(format!(
            "it holds another database (system {}, the cluster's is {id})",
            pg.system_identifier
        ));
    }
    Ok(Candidate {
        member: m,
        received: pg.received_lsn.max(pg.replay_lsn),
        replay: pg.replay_lsn,
        timeline: pg.timeline,
    })
}

/// Replicas that could be promoted ([`candidate`]), most advanced first.
pub(super) fn candidates<'a>(input: &'a Input, exclude: &str, since: u64) -> Vec<Candidate<'a>> {
    let mut list: Vec<Candidate> = input
        .cluster
        .members
        .values()
        .filter(|m| m.name != exclude)
        .filter_map(|m| candidate(input, m, since).ok())
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
pub(super) fn holds_promise(input: &Input, o: &Observation) -> bool {
    o.report.promise_ms > 0 && input.now < o.received_at + o.report.promise_ms
}

/// The committed sync set protects acknowledged commits only if it is
/// non-empty under a synchronous mode.
pub(super) fn sync_protected(cluster: &Cluster) -> bool {
    cluster.config.sync_mode != SyncMode::Off && !cluster.sync_set.is_empty()
}

/// Synchronous mode with an empty committed sync set: nobody but the
/// primary is known to hold every acknowledged commit. It happens after
/// every sync-mode failover (the promoted member leaves the set, and the
/// commits acknowledged before it may exist on it alone until another
/// standby has caught up and joined) and when a non-strict set shrinks to
/// nothing. Failing over by asynchronous rules then could lose them: no
/// automatic failover, as Patroni does.
pub(super) fn sync_unprotected(cluster: &Cluster) -> bool {
    cluster.config.sync_mode != SyncMode::Off && cluster.sync_set.is_empty()
}

/// How many members of the committed sync set surely hold each
/// acknowledged commit, for counting the reports a failover needs.
pub(super) fn effective_k(cluster: &Cluster) -> u32 {
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
pub(super) fn failover_possible(input: &Input, old: &Member) -> bool {
    let cluster = input.cluster;
    // Not while the old primary's lease may be held open (paused, then
    // resumed): starting that primary again, with a bounded grant, is the
    // way back, and it bounds the lease (see `bound_open_lease`).
    if sync_unprotected(cluster) || cluster.open_lease {
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
pub(super) fn failover(input: &Input, old: &Member, d: &mut Decision) {
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
    let next_sync = next_sync_set(cluster, best, &eligible);
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

/// The new epoch's sync set after promoting `winner`: only members of the
/// current set that hold everything the new primary holds (the same LSN:
/// the same WAL). The others may lack commits acknowledged in this epoch
/// (with FIRST k, a "potential" standby can lag far behind); were they
/// kept, a later failover could promote one of them. The rest rejoin once
/// streaming. One rule for automatic and manual failover.
pub(super) fn next_sync_set(
    cluster: &Cluster,
    winner: &Candidate,
    others: &[&Candidate],
) -> BTreeSet<String> {
    others
        .iter()
        .filter(|c| c.member.name != winner.member.name && c.received == winner.received)
        .filter(|c| cluster.sync_set.contains(&c.member.name))
        .map(|c| c.member.name.clone())
        .collect()
}

/// What an operator's `failover --to NODE` does now.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualFailover {
    /// Not before this time (a lease may still run): ask again then.
    WaitUntil(u64),
    /// Commit this promotion.
    Promote(ClusterCommand),
}

/// An operator's `failover --to NODE`, for when the automatic path cannot
/// act: refused while a healthy primary holds its lease (that is a
/// switchover), while the old primary's lease may be held open after a
/// pause (unless the operator vouches it is stopped), and for a node that
/// may not be promoted at all ([`candidate`], `nofailover`). Lag and
/// timeline do not count: forcing those is the point. Waits out every
/// lease like any promotion, and keeps the sync set by [`next_sync_set`].
pub fn manual_failover(
    input: &Input,
    to: &str,
    old_primary_stopped: bool,
) -> Result<ManualFailover, Rejection> {
    let cluster = input.cluster;
    let member = crate::cluster::command::require_member(cluster, to)?;
    if cluster.is_primary(to) {
        return Err(Rejection::precondition(format!(
            "{to} is already the primary"
        )));
    }
    if let Some(primary) = cluster.primary.as_deref() {
        let healthy =
            fresh(input, primary).is_some_and(|o| o.report.holds_lease && is_writable(&o.report));
        if healthy {
            return Err(Rejection::precondition(format!(
                "primary {primary} is healthy and holds its lease: use `pgquorum switchover --to {to}` for a planned change"
            )));
        }
        if cluster.open_lease && !old_primary_stopped {
            return Err(Rejection::precondition(format!(
                "{primary}'s lease has been held open since the cluster was paused and its agent has not bounded it again, so its PostgreSQL may still take writes: start its agent (it then fails over by itself if needed), or make sure {primary}'s PostgreSQL is stopped (power its host off) and add --old-primary-stopped"
            )));
        }
    }
    if member.tags.nofailover {
        return Err(Rejection::precondition(format!(
            "{to} is tagged nofailover and is never made primary"
        )));
    }
    let winner = candidate(input, member, 0).map_err(|why| {
        Rejection::precondition(format!(
            "{to} cannot be promoted now: {why}; check `pgquorum status`"
        ))
    })?;
    let allowed = promotion_allowed_at(input);
    if input.now < allowed {
        return Ok(ManualFailover::WaitUntil(allowed));
    }
    let others = candidates(input, to, 0);
    let others: Vec<&Candidate> = others.iter().collect();
    Ok(ManualFailover::Promote(ClusterCommand::Promote {
        cluster: cluster.name.clone(),
        expected_epoch: cluster.epoch,
        node: to.to_string(),
        kind: EventKind::ManualFailover,
        reason: "operator forced a failover".to_string(),
        sync_set: next_sync_set(cluster, &winner, &others),
        timeline: winner.timeline,
        lsn: winner.received.max(winner.replay),
        at_unix_ms: input.wall_ms,
    }))
}
