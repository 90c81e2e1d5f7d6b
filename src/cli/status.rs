//! `pgquorum status`: the cluster at a glance, like `patronictl list`.
use clap::Args;
use serde::Serialize;

use super::client::request;
use super::output::{print, table, Failure};
use super::GlobalArgs;
use crate::proto::api::{ClusterStatus, GetStatusRequest};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Cluster name (needed only when the managers serve several).
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

/// `status --json`: a contract for scripts; extend, never rename.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub cluster: String,
    pub epoch: u64,
    pub primary: Option<String>,
    pub paused: bool,
    /// The primary's lease is held open (see `pgquorum pause`).
    pub lease_open: bool,
    pub sync_mode: String,
    pub pending_switchover: Option<String>,
    pub nodes: Vec<NodeJson>,
    pub managers: Vec<ManagerJson>,
    /// When this status was received (`--watch` lines only), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeJson {
    pub name: String,
    pub role: String,
    pub state: String,
    pub host: String,
    pub port: u32,
    pub timeline: u32,
    pub lsn: String,
    pub lag_bytes: Option<u64>,
    pub healthy: bool,
    pub sync: bool,
    pub epoch: u64,
    pub pending_restart: bool,
    pub nofailover: bool,
    pub nosync: bool,
    pub priority: i32,
}

#[derive(Debug, Serialize)]
pub struct ManagerJson {
    pub id: u64,
    pub address: String,
    pub role: String,
    pub term: u64,
}

fn none_if_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&ClusterStatus> for StatusJson {
    fn from(s: &ClusterStatus) -> Self {
        StatusJson {
            cluster: s.cluster.clone(),
            epoch: s.epoch,
            primary: none_if_empty(&s.primary),
            paused: s.paused,
            lease_open: s.lease_open,
            sync_mode: s.sync_mode.clone(),
            pending_switchover: none_if_empty(&s.pending_switchover),
            at: None,
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeJson {
                    name: n.name.clone(),
                    role: n.role.clone(),
                    state: n.state.clone(),
                    host: n.host.clone(),
                    port: n.port,
                    timeline: n.timeline,
                    lsn: n.lsn.clone(),
                    lag_bytes: n.lag_bytes,
                    healthy: n.healthy,
                    sync: n.sync,
                    epoch: n.epoch,
                    pending_restart: n.pending_restart,
                    nofailover: n.nofailover,
                    nosync: n.nosync,
                    priority: n.priority,
                })
                .collect(),
            managers: s
                .managers
                .iter()
                .map(|m| ManagerJson {
                    id: m.id,
                    address: m.address.clone(),
                    role: m.role.clone(),
                    term: m.term,
                })
                .collect(),
        }
    }
}

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

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> Result<(), Failure> {
    let client = super::connect(global)?;
    let req = GetStatusRequest {
        cluster: args.cluster.clone(),
        local: args.local,
    };
    if !args.watch {
        let status = client
            .call(|mut c, t| {
                let req = req.clone();
                async move { c.get_status(request(req, t)).await }
            })
            .await?;
        print(global.json, &StatusJson::from(&status), || render(&status));
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
