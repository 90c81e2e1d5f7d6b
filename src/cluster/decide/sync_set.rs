//! The committed sync set and the primary's synchronous_standby_names,
//! kept in step: widen the committed set first, narrow PostgreSQL's first.

use super::*;

/// Keep the committed sync set and the primary's synchronous_standby_names
/// in step: widen the committed set first, narrow PostgreSQL's first.
pub(super) fn manage_sync_set(
    input: &Input,
    primary: &Member,
    d: &mut Decision,
) -> Option<ClusterCommand> {
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

    let mut desired = desired;
    if committed.is_empty() && !desired.is_empty() {
        // An empty set means the primary alone is known to hold every
        // acknowledged commit (see `sync_unprotected`); the first member
        // becomes promotable on its own, so it must hold them too: it
        // joins only once it has flushed past the point where PostgreSQL's
        // current names took effect (every synchronously acknowledged
        // commit lies before it). Streaming alone is not enough: a
        // walsender goes on listing a standby that is far behind, or gone.
        let since = names_took_effect_at(input, pg);
        desired.retain(|name| {
            since.is_some_and(|lsn| {
                pg.replicas
                    .iter()
                    .any(|r| r.application_name == *name && r.flush_lsn >= lsn)
            })
        });
        if desired.is_empty() {
            d.wait("sync set: waiting for a standby to catch up before it joins the empty set");
        }
    }
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
    let gate = o.report.commit_gate;
    let wanted_pg = sync::render(c, &desired, gate);
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
                        ..settings(cluster, committed, gate)
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
        let since = names_took_effect_at(input, pg);
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

/// The primary's write LSN when its current synchronous_standby_names were
/// first seen (`Soft::sync_names_since`): every commit acknowledged under
/// earlier names lies before it. `None` while not known for these names.
fn names_took_effect_at(input: &Input, pg: &crate::cluster::wire::PgStatus) -> Option<Lsn> {
    input
        .soft
        .sync_names_since
        .as_ref()
        .filter(|(names, _)| *names == pg.synchronous_standby_names)
        .map(|(_, lsn)| *lsn)
}
