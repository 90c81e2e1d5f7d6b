//! `pgquorum status`: the cluster at a glance, like `patronictl list`.
use clap::Args;

use super::client::request;
use super::output::{print, table, Failure};
use super::GlobalArgs;
use crate::proto::api::{ClusterStatus, ClusterSummary, GetStatusRequest, ListClustersRequest};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Cluster name; without it, when the managers serve several
    /// clusters, one line for each.
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Keep refreshing in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Ask only the first manager and accept its possibly stale view
    /// (works without a quorum; no node reports).
    #[arg(long)]
    pub local: bool,
}

use crate::views::{FleetJson, StatusJson};

/// The human form: a header line, the nodes, the managers.
pub fn render(s: &ClusterStatus) -> String {
    let mut out = format!(
        "Cluster: {}   epoch: {}   primary: {}   sync: {}{}\n",
        s.cluster,
        s.epoch,
        if s.primary.is_empty() {
            "-"
        } else {
            &s.primary
        },
        s.sync_mode,
        if s.paused { "   PAUSED" } else { "" }
    );
    if s.lease_open && !s.paused {
        out.push_str(&format!(
            "Resumed, but {}'s lease is still held open: no automatic failover until its agent bounds it\n",
            s.primary
        ));
    }
    if !s.pending_switchover.is_empty() {
        out.push_str(&format!("Switchover scheduled: {}\n", s.pending_switchover));
    }
    if !s.operation.is_empty() {
        out.push_str(&format!("In progress: {}\n", s.operation));
    }
    let rows = s
        .nodes
        .iter()
        .map(|n| {
            let mut tags = Vec::new();
            if n.sync {
                tags.push("sync".to_string());
            }
            if n.nofailover {
                tags.push("nofailover".to_string());
            }
            if n.nosync {
                tags.push("nosync".to_string());
            }
            if n.priority != 0 {
                tags.push(format!("priority={}", n.priority));
            }
            if n.pending_restart {
                tags.push("pending restart".to_string());
            }
            if !n.pending_action_at.is_empty() {
                tags.push(format!("{} at {}", n.pending_action, n.pending_action_at));
            }
            vec![
                n.name.clone(),
                format!("{}:{}", n.host, n.port),
                n.role.clone(),
                n.state.clone(),
                if n.timeline == 0 {
                    "-".into()
                } else {
                    n.timeline.to_string()
                },
                if n.lsn.is_empty() {
                    "-".into()
                } else {
                    n.lsn.clone()
                },
                n.lag_bytes
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                if n.healthy { "yes" } else { "no" }.to_string(),
                n.epoch.to_string(),
                tags.join(","),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE", "HOST", "ROLE", "STATE", "TL", "LSN", "LAG", "HEALTHY", "EPOCH", "TAGS",
        ],
        rows,
    ));
    out.push('\n');
    out.push_str(&table(
        &["MANAGER", "ADDRESS", "ROLE", "TERM"],
        s.managers
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.address.clone(),
                    m.role.clone(),
                    m.term.to_string(),
                ]
            })
            .collect(),
    ));
    out
}

/// The fleet at a glance: one line per cluster.
pub fn render_fleet(summaries: &[ClusterSummary]) -> String {
    table(
        &[
            "CLUSTER",
            "PRIMARY",
            "EPOCH",
            "NODES",
            "HEALTHY",
            "SYNC",
            "PAUSED",
            "WORST LAG",
        ],
        summaries
            .iter()
            .map(|s| {
                vec![
                    s.cluster.clone(),
                    if s.primary.is_empty() {
                        "-".into()
                    } else {
                        s.primary.clone()
                    },
                    s.epoch.to_string(),
                    s.nodes.to_string(),
                    s.healthy.to_string(),
                    if s.sync.is_empty() {
                        "-".into()
                    } else {
                        s.sync.join(",")
                    },
                    if s.paused { "yes" } else { "no" }.to_string(),
                    s.worst_lag_bytes
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> Result<(), Failure> {
    let client = super::connect(global)?;
    let req = GetStatusRequest {
        cluster: args.cluster.clone(),
        local: args.local,
    };
    if !args.watch {
        let answer = client
            .call(|mut c, t| {
                let req = req.clone();
                async move { c.get_status(request(req, t)).await }
            })
            .await;
        // No cluster named and several served (the one reason an empty
        // name is refused as an argument): the fleet, one line each. A
        // single cluster costs one call, as before.
        let several = matches!(
            &answer,
            Err(e) if args.cluster.is_empty() && e.code() == Some(tonic::Code::InvalidArgument)
        );
        if !several {
            let status = answer?;
            print(global.json, &StatusJson::from(&status), || render(&status));
            return Ok(());
        }
        let list = client
            .call(|mut c, t| {
                let req = ListClustersRequest { local: args.local };
                async move { c.list_clusters(request(req, t)).await }
            })
            .await?;
        let json = FleetJson {
            clusters: list.summaries.iter().map(Into::into).collect(),
        };
        print(global.json, &json, || render_fleet(&list.summaries));
        return Ok(());
    }
    // --watch: follow the server's stream; reconnect when it breaks.
    loop {
        let mut stream = client
            .call(|mut c, _| {
                let req = req.clone();
                async move { c.watch(tonic::Request::new(req)).await }
            })
            .await?;
        loop {
            match stream.message().await {
                Ok(Some(status)) => {
                    // Each update says when it came: a frozen screen is
                    // not mistaken for a quiet cluster.
                    let at =
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                    if global.json {
                        let mut json = StatusJson::from(&status);
                        json.at = Some(at);
                        if let Ok(line) = serde_json::to_string(&json) {
                            super::output::out(&format!("{line}\n"));
                        }
                    } else {
                        // Clear the screen and draw again, in place.
                        super::output::out(&format!("\x1b[2J\x1b[H{at}\n{}\n", render(&status)));
                    }
                }
                Ok(None) => break,
                Err(status)
                    if status.code() == tonic::Code::NotFound
                        || status.code() == tonic::Code::InvalidArgument =>
                {
                    return Err(Failure::failed(status.message()));
                }
                Err(_) => break,
            }
        }
    }
}
