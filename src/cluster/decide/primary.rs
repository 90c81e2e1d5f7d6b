//! The primary's duties: keep it running and leased, bound a lease held
//! open while paused, and notice when it has failed.

use super::*;

pub(super) fn grant(input: &Input, d: &mut Decision, node: &str, o: &Observation) {
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
pub(super) fn primary_duties(input: &Input, primary: &Member, d: &mut Decision) -> bool {
    let cluster = input.cluster;
    let c = &cluster.config;
    let demoting = matches!(
        cluster.switchover.as_ref().map(|s| &s.phase),
        Some(SwitchoverPhase::Demoting { .. })
    );
    let obs = fresh(input, &primary.name);
    let settings_now = settings(cluster, &cluster.sync_set, gate_for(input, &primary.name));
    if let Some(c) = bound_open_lease(input, primary) {
        d.commit = Some(c);
        return false;
    }

    let silent = obs.filter(|o| !demoting && unresponsive(input, o));
    if let Some(o) = silent {
        // Not a restart (it runs) and no grant (it cannot have done its
        // part): its lease runs out, its keeper fences it, a replica is
        // promoted — unless it answers again first.
        d.wait(format!(
            "primary {} runs but has not answered its agent for {}ms: its lease is not renewed",
            primary.name, o.report.unresponsive_ms
        ));
    } else if let Some(o) = obs {
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
                // Past the timeout — or at once when it went down after it
                // had stopped answering (fenced: a hung disk would hang it
                // again) — a replica is promoted instead; but when
                // no replica could be (a new cluster whose replicas are not
                // cloned yet — with a timeout of 0 it would never even
                // bootstrap — or every replica down, too far behind, or
                // not in the sync set), starting the primary again is the
                // only way back to a writable cluster.
                let may_restart = ((down_for < c.primary_start_timeout_ms
                    && !input.soft.primary_went_silent)
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

/// See [`crate::cluster::soft::silent`].
pub(super) fn unresponsive(input: &Input, o: &Observation) -> bool {
    crate::cluster::soft::silent(&o.report, input.cluster)
}

/// After a resume: once the primary's agent reports that its keeper holds
/// a lease from a grant this leader made since (bounded, see
/// `Soft::bounding`), the lease can no longer be open: commit that.
pub(super) fn bound_open_lease(input: &Input, primary: &Member) -> Option<ClusterCommand> {
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
