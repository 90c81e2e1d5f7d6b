//! Planned switchovers: the pre-checks, the schedule, and the two phases
//! (stop the old primary cleanly, promote the target once it has replayed
//! everything).

use super::*;

/// An operator's `switchover [--to NODE]`, checked before it is committed:
/// the primary runs, and the target (without one: some replica) may be
/// promoted ([`candidate`], not `nofailover`) and streams from it.
pub fn check_switchover(input: &Input, to: Option<&str>) -> Result<(), Rejection> {
    let cluster = input.cluster;
    let Some(primary) = cluster.primary.as_deref().and_then(|p| cluster.member(p)) else {
        return Err(Rejection::precondition("the cluster has no primary yet"));
    };
    if !fresh(input, &primary.name).is_some_and(|o| is_writable(&o.report)) {
        return Err(Rejection::precondition(format!(
            "primary {} is not running: a switchover needs a healthy primary; use `pgquorum failover --to NODE`",
            primary.name
        )));
    }
    let ready = |m: &Member| -> Result<(), String> {
        if m.tags.nofailover {
            return Err(format!(
                "{} is tagged nofailover and cannot become primary",
                m.name
            ));
        }
        candidate(input, m, 0)
            .map_err(|why| format!("{} cannot be promoted now: {why}", m.name))?;
        if !fresh(input, &m.name).is_some_and(|o| is_streaming_from(&o.report, primary)) {
            return Err(format!(
                "{} is not streaming from {} right now; check `pgquorum status`",
                m.name, primary.name
            ));
        }
        Ok(())
    };
    match to {
        Some(to) => {
            let Some(member) = cluster.member(to) else {
                return Err(Rejection::not_found(format!(
                    "cluster {:?} has no node named {to:?}",
                    cluster.name
                )));
            };
            if to == primary.name {
                return Err(Rejection::precondition(format!(
                    "{to} is already the primary; name a replica"
                )));
            }
            ready(member).map_err(Rejection::precondition)
        }
        None => {
            if cluster
                .members
                .values()
                .any(|m| m.name != primary.name && ready(m).is_ok())
            {
                Ok(())
            } else {
                Err(Rejection::precondition(
                    "no streaming replica that may be promoted to switch over to",
                ))
            }
        }
    }
}

/// Drive a planned switchover; returns a commit when one is due.
pub(super) fn switchover(
    input: &Input,
    primary: &Member,
    d: &mut Decision,
) -> Option<ClusterCommand> {
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
            at_unix_ms: input.wall_ms,
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
                at_unix_ms: input.wall_ms,
            })
        }
        None => {
            d.wait("switchover waits for its target to stream");
            None
        }
    }
}

/// Switchover, phase two: stop the old primary cleanly, and promote the
/// target once it has replayed everything the old primary wrote.
pub(super) fn demote_step(input: &Input, primary: &Member, target: &str, d: &mut Decision) {
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
                at_unix_ms: input.wall_ms,
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
