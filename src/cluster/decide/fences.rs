//! Fences go into the history: who was stopped, when, in which epoch.

use super::*;

/// A node reports a fence the history does not hold yet: record it (one
/// per fence: the agent counts them per session). Whatever phase it reports
/// now: the fenced phase may last a single report — a rejoin starts at once
/// — and a pass that had other work to commit then would miss it.
pub(super) fn note_fences(input: &Input) -> Option<ClusterCommand> {
    input.cluster.members.values().find_map(|m| {
        let r = &fresh(input, &m.name)?.report;
        let key = (r.session, r.fences);
        (r.fences > 0 && m.last_fence != Some(key)).then(|| ClusterCommand::NoteFence {
            cluster: input.cluster.name.clone(),
            node: m.name.clone(),
            session: r.session,
            fences: r.fences,
            reason: format!(
                "{}'s PostgreSQL was stopped: a writer without the lease (its keeper \
                     stops it when the lease runs out; the leader fences any second writer); \
                     it rejoins as a replica",
                m.name
            ),
            at_unix_ms: input.wall_ms,
        })
    })
}
