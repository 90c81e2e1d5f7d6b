//! Every other node: follow the primary (clone, rewind, re-point), and
//! fence any second writer.

use super::*;

/// Point every other node at the primary; fence any second writer.
pub(super) fn replicas(input: &Input, primary: &Member, primary_ok: bool, d: &mut Decision) {
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
            if r.completed_action != Some(action.id)
                && primary_ok
                && !busy(input, &m.name)
                && applied_current_config(cluster, action, r)
                && may_start(input, action, d)
            {
                let a = match action.kind {
                    NodeActionKind::Reinit => Action::Reinit {
                        upstream: upstream_of(primary),
                        action_id: action.id,
                    },
                    NodeActionKind::Restart | NodeActionKind::RestartPending => Action::Restart {
                        action_id: action.id,
                        pending_only: action.kind == NodeActionKind::RestartPending,
                    },
                    NodeActionKind::Reload => Action::Reload {
                        action_id: action.id,
                    },
                };
                command(input, d, &m.name, a);
                continue;
            }
            if !applied_current_config(cluster, action, r) {
                d.wait(format!(
                    "{}: its restart waits until it has written configuration version {}",
                    m.name, cluster.config_version
                ));
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
        } else if r.config_version < cluster.config_version || r.wants_config {
            command(
                input,
                d,
                &m.name,
                Action::Configure {
                    settings: replica_settings(cluster),
                },
            );
        } else if r.restart_to_load_slots && !restarting_any(input, d) {
            // Copies of the primary's logical slots wait in its data
            // directory; PostgreSQL loads slots only when it starts.
            command(
                input,
                d,
                &m.name,
                Action::Restart {
                    action_id: 0,
                    pending_only: false,
                },
            );
        }
    }
    if primary_ok {
        if let (Some(o), Some(action)) = (fresh(input, &primary.name), primary.action.as_ref()) {
            // An operator's restart or reload of the primary (a reinit is
            // refused when it is requested).
            let a = match action.kind {
                NodeActionKind::Restart | NodeActionKind::RestartPending => Some(Action::Restart {
                    action_id: action.id,
                    pending_only: action.kind == NodeActionKind::RestartPending,
                }),
                NodeActionKind::Reload => Some(Action::Reload {
                    action_id: action.id,
                }),
                NodeActionKind::Reinit => None,
            };
            if let Some(a) = a.filter(|_| {
                o.report.completed_action != Some(action.id)
                    && !busy(input, &primary.name)
                    && applied_current_config(cluster, action, &o.report)
                    && may_start(input, action, d)
                    && !(action.not_before_unix_ms.is_some() && replicas_first(input, primary))
            }) {
                command(input, d, &primary.name, a);
                return;
            }
        }
        if let Some(o) = fresh(input, &primary.name) {
            let outdated =
                o.report.config_version < cluster.config_version || o.report.wants_config;
            if outdated && !busy(input, &primary.name) {
                command(
                    input,
                    d,
                    &primary.name,
                    Action::Configure {
                        settings: settings(
                            cluster,
                            &cluster.sync_set,
                            gate_for(input, &primary.name),
                        ),
                    },
                );
            }
        }
    }
}

/// A restart of the nodes with a restart pending waits until the node has
/// written the current configuration: asked right after `config set`, a
/// node that had not yet heard of a new restart-only value would say "no
/// restart pending" and never load it.
fn applied_current_config(
    cluster: &Cluster,
    action: &crate::cluster::state::NodeAction,
    r: &NodeReport,
) -> bool {
    action.kind != NodeActionKind::RestartPending
        || (r.config_version >= cluster.config_version && !r.wants_config)
}

/// A restart is under way somewhere in the cluster: replicas load copied
/// slots one at a time, so that a failover always has candidates.
fn restarting_any(input: &Input, d: &Decision) -> bool {
    d.commands
        .iter()
        .any(|(_, a)| matches!(a, Action::Restart { .. }))
        || input.soft.pending.values().any(|p| {
            p.action == "restart"
                && p.epoch == input.cluster.epoch
                && input.now.saturating_sub(p.sent_at) < RESEND_AFTER_MS
        })
        || input.soft.nodes.values().any(|o| {
            matches!(
                o.report.phase,
                crate::cluster::wire::AgentPhase::Starting
                    | crate::cluster::wire::AgentPhase::Stopping
            ) && input.now.saturating_sub(o.received_at) <= input.cluster.config.ttl_ms
        })
}

/// An operator's action may start: it is due, and a scheduled one waits
/// while another node restarts (scheduled restarts of several nodes, due at
/// the same time, go one at a time).
fn may_start(input: &Input, action: &crate::cluster::state::NodeAction, d: &Decision) -> bool {
    action.due(input.wall_ms) && (action.not_before_unix_ms.is_none() || !restarting_any(input, d))
}

/// A replica has a due scheduled action still to carry out: the primary's
/// scheduled restart comes after.
fn replicas_first(input: &Input, primary: &Member) -> bool {
    input.cluster.members.values().any(|m| {
        m.name != primary.name
            && m.action.as_ref().is_some_and(|a| {
                a.not_before_unix_ms.is_some()
                    && a.due(input.wall_ms)
                    && fresh(input, &m.name)
                        .is_some_and(|o| o.report.completed_action != Some(a.id))
            })
    })
}
