//! An operator's `node remove NAME` and `cluster remove NAME`, checked
//! before they are committed: only what is gone may be forgotten.

use super::*;

/// The command that removes `name`, or why not: it is unknown, it is the
/// primary, its agent still reports (it runs: stop it first), or it is a
/// synchronous standby (the leader narrows the set once it stops
/// reporting; then it can go).
pub fn check_node_removal(input: &Input, name: &str) -> Result<ClusterCommand, Rejection> {
    let cluster = input.cluster;
    crate::cluster::command::require_member(cluster, name)?;
    if cluster.is_primary(name) {
        return Err(Rejection::precondition(format!(
            "{name} is the primary; switch over to another node first (`pgquorum switchover`)"
        )));
    }
    if let Some(o) = fresh(input, name) {
        return Err(Rejection::precondition(format!(
            "{name} is running (its agent reported {} ms ago): stop its agent and its keeper (which stops PostgreSQL) on that host first",
            input.now.saturating_sub(o.received_at)
        )));
    }
    if cluster.sync_set.contains(name) {
        return Err(Rejection::precondition(format!(
            "{name} is still in the synchronous standby set; the leader takes it out once it has stopped reporting (strict sync mode keeps it: set sync_strict=off first), then remove it"
        )));
    }
    Ok(ClusterCommand::RemoveNode {
        cluster: cluster.name.clone(),
        name: name.to_string(),
    })
}

/// The command that forgets the whole cluster, or why not: a node still
/// reports (it runs: stop every agent and keeper first).
pub fn check_cluster_removal(input: &Input) -> Result<ClusterCommand, Rejection> {
    let cluster = input.cluster;
    let running: Vec<&str> = cluster
        .members
        .keys()
        .filter(|m| fresh(input, m).is_some())
        .map(String::as_str)
        .collect();
    if !running.is_empty() {
        return Err(Rejection::precondition(format!(
            "cluster {} still runs ({} reported within the last lease): stop every agent and keeper of the cluster first",
            cluster.name,
            running.join(", ")
        )));
    }
    Ok(ClusterCommand::RemoveCluster {
        cluster: cluster.name.clone(),
    })
}
