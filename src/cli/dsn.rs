//! `pgquorum dsn`: the libpq connection string for a cluster, built from
//! the nodes the managers know, so that applications and scripts never
//! hard-code which node is the primary.

use clap::Args;
use serde::Serialize;

use super::client::request;
use super::output::{print, Failure};
use super::GlobalArgs;
use crate::proto::api::{ClusterStatus, GetStatusRequest};

#[derive(Debug, Args)]
pub struct DsnArgs {
    /// Cluster name (needed only when the managers serve several).
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Connect to a replica when one is up, the primary otherwise
    /// (target_session_attrs=prefer-standby), for read-only work.
    #[arg(long)]
    pub read_only: bool,
    /// Database user.
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// Database name.
    #[arg(long, default_value = "postgres")]
    pub dbname: String,
}

/// `dsn --json`: a contract for scripts; extend, never rename.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DsnJson {
    pub dsn: String,
    pub hosts: Vec<String>,
    pub ports: Vec<u32>,
    pub target_session_attrs: String,
}

/// Every node, the primary first (libpq tries hosts in order).
pub fn dsn(status: &ClusterStatus, args: &DsnArgs) -> DsnJson {
    let mut nodes: Vec<_> = status.nodes.iter().filter(|n| !n.host.is_empty()).collect();
    nodes.sort_by_key(|n| (n.name != status.primary, n.name.clone()));
    let hosts: Vec<String> = nodes.iter().map(|n| n.host.clone()).collect();
    let ports: Vec<u32> = nodes.iter().map(|n| n.port).collect();
    let attrs = if args.read_only {
        "prefer-standby"
    } else {
        "read-write"
    };
    DsnJson {
        dsn: format!(
            "host={} port={} user={} dbname={} target_session_attrs={attrs} connect_timeout=2",
            hosts.join(","),
            ports
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            args.user,
            args.dbname
        ),
        hosts,
        ports,
        target_session_attrs: attrs.to_string(),
    }
}

pub async fn run(global: &GlobalArgs, args: DsnArgs) -> Result<(), Failure> {
    let client = super::connect(global)?;
    let status = client
        .call(|mut c, t| {
            let req = GetStatusRequest {
                cluster: args.cluster.clone(),
                local: false,
            };
            async move { c.get_status(request(req, t)).await }
        })
        .await?;
    if status.nodes.is_empty() {
        return Err(Failure::failed(format!(
            "cluster {:?} has no nodes yet: start an agent first",
            status.cluster
        )));
    }
    let d = dsn(&status, &args);
    print(global.json, &d, || d.dsn.clone());
    Ok(())
}
