//! A cluster's first steps and bookkeeping: bootstrap, the system
//! identifier, operator actions done.

use super::*;

/// Epoch 0: pick the node that creates (or adopts) the first primary.
pub(super) fn bootstrap(input: &Input, d: &mut Decision) {
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
pub(super) fn system_identifier(input: &Input, primary: &Member) -> Option<ClusterCommand> {
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
pub(super) fn complete_actions(input: &Input) -> Option<ClusterCommand> {
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
