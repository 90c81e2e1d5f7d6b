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

/// Replicas that could be promoted (by health and tags; lag and sync set
/// are checked by the callers), most advanced first.
pub(super) fn candidates<'a>(input: &'a Input, exclude: &str, since: u64) -> Vec<Candidate<'a>> {
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
pub(super) fn holds_promise(input: &Input, o: &Observation) -> bool {
    input.now < o.received_at + o.report.promise_ms
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
