//! Operator commands: configuration, pause/resume, history, switchover,
//! failover and node actions.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::client::request;
use super::output::{print, table, Failure};
use super::progress::{wait, Goal, WAIT};
use super::GlobalArgs;
use crate::proto::api::{
    ClusterRequest, ConfigResponse, FailoverRequest, NodeRequest, OperationResponse,
    SetConfigRequest, SwitchoverRequest,
};

#[derive(Debug, Clone, Args)]
pub struct ClusterArg {
    /// Cluster name (needed only when the managers serve several).
    #[arg(long, default_value = "")]
    pub cluster: String,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub cluster: ClusterArg,
    /// Ask only the first manager and accept its possibly stale view
    /// (works without a quorum).
    #[arg(long)]
    pub local: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the dynamic configuration.
    Show(ShowArgs),
    /// Change keys: `ttl=3s`, `sync_mode=on`, `postgresql.parameters.work_mem=8MB`;
    /// an empty value resets a key to its default.
    Set {
        #[command(flatten)]
        cluster: ClusterArg,
        #[arg(value_name = "KEY=VALUE", required = true)]
        changes: Vec<String>,
    },
    /// Edit the configuration in $EDITOR; checked before it is committed.
    Edit(ClusterArg),
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub cluster: ClusterArg,
    /// The replica to promote (default: the best one).
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
    /// Not before this time (RFC 3339, e.g. 2026-11-27T22:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Return once the switchover is scheduled instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Cancel the scheduled switchover (refused once it is under way).
    #[arg(long, conflicts_with_all = ["to", "at", "force", "no_wait"])]
    pub cancel: bool,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub cluster: ClusterArg,
    /// The replica to promote.
    #[arg(long, value_name = "NODE", required = true)]
    pub to: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
    /// Return once the promotion is committed instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// You vouch that the old primary's PostgreSQL is stopped (its host is
    /// powered off). Needed only after a pause, while the old primary's
    /// lease is still held open and its agent cannot bound it.
    #[arg(long)]
    pub old_primary_stopped: bool,
}

/// Which nodes a `node restart`/`node reload` concerns.
#[derive(Debug, clap::Args)]
pub struct NodePick {
    #[command(flatten)]
    cluster: ClusterArg,
    /// The nodes (or pick them with --role).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Also every node in this role now: primary, replica or any.
    #[arg(long, value_parser = ["primary", "replica", "any"])]
    role: Option<String>,
    /// Return once it is requested.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Restart PostgreSQL on one node or several, one at a time (replicas
    /// first, the primary last), each healthy again before the next.
    Restart {
        #[command(flatten)]
        pick: NodePick,
        /// Only if a parameter change waits for a restart.
        #[arg(long)]
        pending: bool,
        /// Not before this time (RFC 3339, e.g. 2026-12-24T03:00:00Z): the
        /// restart is scheduled (shown in `status`), and the command returns.
        #[arg(long, value_name = "TIME", conflicts_with = "cancel")]
        at: Option<String>,
        /// Drop the named nodes' scheduled restarts.
        #[arg(long)]
        cancel: bool,
    },
    /// Re-read the agent configuration file on one node or several (as
    /// `kill -HUP` of the agent would: tags, node parameters, callbacks,
    /// replica methods) and reload PostgreSQL's configuration; PostgreSQL
    /// is not restarted.
    Reload {
        #[command(flatten)]
        pick: NodePick,
    },
    /// Forget a node that is gone (its agent and keeper stopped), so that
    /// a replacement host can use its name. Refused for the primary, for a
    /// node whose agent still reports, and for a synchronous standby.
    Remove {
        #[command(flatten)]
        cluster: ClusterArg,
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Wipe a replica's data directory and clone it again from the primary.
    Reinit {
        #[command(flatten)]
        cluster: ClusterArg,
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
        /// Return once the re-initialisation is requested.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Serialize)]
struct OperationJson {
    message: String,
    epoch: u64,
    primary: Option<String>,
}

pub(super) fn print_operation(global: &GlobalArgs, r: &OperationResponse) {
    let json = OperationJson {
        message: r.message.clone(),
        epoch: r.epoch,
        primary: (!r.primary.is_empty()).then(|| r.primary.clone()),
    };
    print(global.json, &json, || r.message.clone());
}

/// Ask `question` on the terminal; without a terminal the answer is no.
pub(super) fn confirm(question: &str, force: bool) -> Result<(), Failure> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::failed(format!(
            "{question} — refusing without a terminal to confirm; add --force to go ahead"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::failed(format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure::failed("aborted"))
    }
}

#[derive(Serialize)]
struct ConfigJson {
    cluster: String,
    version: u64,
    config: BTreeMap<String, String>,
    pending_restart: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

fn print_config(global: &GlobalArgs, r: ConfigResponse) {
    let config: BTreeMap<String, String> = r.config.into_iter().collect();
    let json = ConfigJson {
        cluster: r.cluster,
        version: r.version,
        config,
        pending_restart: r.pending_restart,
        notes: r.notes,
    };
    // Notes go to stderr too, so that a script reading the JSON sees them
    // in a log.
    for note in &json.notes {
        eprintln!("note: {note}");
    }
    print(global.json, &json, || {
        let mut out = format!(
            "# cluster {} — configuration version {}\n",
            json.cluster, json.version
        );
        for (k, v) in &json.config {
            out.push_str(&format!("{k} = {v}\n"));
        }
        if !json.pending_restart.is_empty() {
            out.push_str(&format!(
                "# pending restart: {}\n",
                json.pending_restart.join(", ")
            ));
        }
        out
    });
}

/// Parse `KEY=VALUE` arguments.
pub fn parse_changes(items: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut changes = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            Failure::usage(format!("{item:?} is not KEY=VALUE (example: ttl=3s)"))
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(Failure::usage(format!("{item:?} has no key")));
        }
        changes.insert(k.to_string(), v.trim().to_string());
    }
    Ok(changes)
}

pub async fn config(global: &GlobalArgs, command: ConfigCommand) -> Result<(), Failure> {
    let client = super::connect(global)?;
    match command {
        ConfigCommand::Show(c) => {
            let local = c.local;
            let r = client
                .call(|mut api, t| {
                    let cluster = c.cluster.cluster.clone();
                    async move {
                        api.get_config(request(ClusterRequest { cluster, local }, t))
                            .await
                    }
                })
                .await?;
            print_config(global, r);
        }
        ConfigCommand::Set { cluster, changes } => {
            let changes = parse_changes(&changes)?;
            let r = set_config(&client, &cluster.cluster, changes).await?;
            print_config(global, r);
        }
        ConfigCommand::Edit(c) => {
            let current = client
                .call(|mut api, t| {
                    let cluster = c.cluster.clone();
                    async move {
                        api.get_config(request(
                            ClusterRequest {
                                cluster,
                                local: false,
                            },
                            t,
                        ))
                        .await
                    }
                })
                .await?;
            let before: BTreeMap<String, String> = current.config.clone().into_iter().collect();
            let after = edit_in_editor(&current.cluster, &before)?;
            let mut changes: BTreeMap<String, String> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for k in before.keys().filter(|k| !after.contains_key(*k)) {
                changes.insert(k.clone(), String::new());
            }
            if changes.is_empty() {
                eprintln!("no change");
                return Ok(());
            }
            let r = set_config(&client, &current.cluster, changes).await?;
            print_config(global, r);
        }
    }
    Ok(())
}

async fn set_config(
    client: &super::ApiClient,
    cluster: &str,
    changes: BTreeMap<String, String>,
) -> Result<ConfigResponse, Failure> {
    Ok(client
        .call(|mut api, t| {
            let req = SetConfigRequest {
                cluster: cluster.to_string(),
                changes: changes.clone().into_iter().collect(),
            };
            async move { api.set_config(request(req, t)).await }
        })
        .await?)
}

/// Let the operator edit `key = value` lines; returns the edited map.
fn edit_in_editor(
    cluster: &str,
    config: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Failure> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_string());
    let file = tempfile::Builder::new()
        .prefix("pgquorum-config-")
        .suffix(".conf")
        .tempfile()
        .map_err(|e| Failure::failed(format!("cannot create a temporary file: {e}")))?;
    let mut text = format!("# pgquorum configuration of cluster {cluster}: one `key = value` a line.\n# Delete a line to reset it to its default. Checked before it is committed.\n");
    for (k, v) in config {
        text.push_str(&format!("{k} = {v}\n"));
    }
    std::fs::write(file.path(), text)
        .map_err(|e| Failure::failed(format!("cannot write the temporary file: {e}")))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .map_err(|e| Failure::failed(format!("cannot run the editor {editor:?}: {e}")))?;
    if !status.success() {
        return Err(Failure::failed(format!(
            "the editor {editor:?} failed ({status}); nothing changed"
        )));
    }
    let edited = std::fs::read_to_string(file.path())
        .map_err(|e| Failure::failed(format!("cannot read the edited file: {e}")))?;
    let mut out = BTreeMap::new();
    for (n, line) in edited.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            Failure::failed(format!(
                "line {}: {line:?} is not `key = value`; nothing changed",
                n + 1
            ))
        })?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

pub async fn pause(global: &GlobalArgs, args: ClusterArg, paused: bool) -> Result<(), Failure> {
    let client = super::connect(global)?;
    let r = client
        .call(|mut api, t| {
            let req = ClusterRequest {
                cluster: args.cluster.clone(),
                local: false,
            };
            async move {
                if paused {
                    api.pause(request(req, t)).await
                } else {
                    api.resume(request(req, t)).await
                }
            }
        })
        .await?;
    print_operation(global, &r);
    Ok(())
}

pub async fn history(global: &GlobalArgs, args: ClusterArg) -> Result<(), Failure> {
    let client = super::connect(global)?;
    let r = client
        .call(|mut api, t| {
            let req = ClusterRequest {
                cluster: args.cluster.clone(),
                local: false,
            };
            async move { api.history(request(req, t)).await }
        })
        .await?;
    let events: Vec<crate::views::EventJson> = r.events.iter().map(Into::into).collect();
    print(global.json, &events, || {
        table(
            &[
                "TIME",
                "KIND",
                "OLD PRIMARY",
                "NEW PRIMARY",
                "EPOCH",
                "TL",
                "LSN",
                "REASON",
            ],
            r.events
                .iter()
                .map(|e| {
                    vec![
                        e.time.clone(),
                        e.kind.clone(),
                        e.old_primary.clone(),
                        e.new_primary.clone(),
                        e.epoch.to_string(),
                        e.timeline.to_string(),
                        e.lsn.clone(),
                        e.reason.clone(),
                    ]
                })
                .collect(),
        )
    });
    Ok(())
}

pub async fn switchover(global: &GlobalArgs, args: SwitchoverArgs) -> Result<(), Failure> {
    let client = super::connect(global)?;
    if args.cancel {
        let req = SwitchoverRequest {
            cluster: args.cluster.cluster.clone(),
            cancel: true,
            ..Default::default()
        };
        let r = client
            .call(|mut api, t| {
                let req = req.clone();
                async move { api.switchover(request(req, t)).await }
            })
            .await?;
        print_operation(global, &r);
        return Ok(());
    }
    let target = args.to.clone().unwrap_or_else(|| "the best replica".into());
    let when = args
        .at
        .clone()
        .map(|at| format!(" at {at}"))
        .unwrap_or_default();
    confirm(
        &format!("Switch the primary over to {target}{when}?"),
        args.force,
    )?;
    let req = SwitchoverRequest {
        cluster: args.cluster.cluster.clone(),
        to: args.to.clone().unwrap_or_default(),
        at: args.at.clone().unwrap_or_default(),
        from: String::new(),
        cancel: false,
    };
    let r = client
        .call(|mut api, t| {
            let req = req.clone();
            async move { api.switchover(request(req, t)).await }
        })
        .await?;
    if args.no_wait || args.at.is_some() {
        print_operation(global, &r);
        return Ok(());
    }
    let goal = Goal::NewPrimary {
        epoch: r.epoch,
        to: args.to.clone(),
    };
    let s = wait(
        &client,
        &args.cluster.cluster,
        goal,
        global.timeout.unwrap_or(WAIT),
    )
    .await?;
    print_operation(
        global,
        &OperationResponse {
            message: format!(
                "switched over: {} is the primary of epoch {}",
                s.primary, s.epoch
            ),
            epoch: s.epoch,
            primary: s.primary,
        },
    );
    Ok(())
}

pub async fn failover(global: &GlobalArgs, args: FailoverArgs) -> Result<(), Failure> {
    let client = super::connect(global)?;
    confirm(
        &format!(
            "Promote {} now? Writes not yet replicated to it may be lost",
            args.to
        ),
        args.force,
    )?;
    let req = FailoverRequest {
        cluster: args.cluster.cluster.clone(),
        to: args.to.clone(),
        old_primary_stopped: args.old_primary_stopped,
    };
    let r = client
        .call(|mut api, t| {
            let req = req.clone();
            async move { api.failover(request(req, t)).await }
        })
        .await?;
    if !args.no_wait {
        // The promotion is committed; wait until the node takes writes.
        let goal = Goal::NewPrimary {
            epoch: r.epoch.saturating_sub(1),
            to: Some(args.to.clone()),
        };
        wait(
            &client,
            &args.cluster.cluster,
            goal,
            global.timeout.unwrap_or(WAIT),
        )
        .await?;
    }
    print_operation(global, &r);
    Ok(())
}

pub async fn node(global: &GlobalArgs, command: NodeCommand) -> Result<(), Failure> {
    let client = super::connect(global)?;
    let (req, op, no_wait) = match command {
        NodeCommand::Remove {
            cluster,
            name,
            force,
        } => {
            confirm(
                &format!("Forget node {name} (its data directory is not touched)?"),
                force,
            )?;
            let req = NodeRequest {
                cluster: cluster.cluster,
                node: name,
                pending_only: false,
                ..NodeRequest::default()
            };
            let r = client
                .call(|mut api, t| {
                    let req = request(req.clone(), t);
                    async move { api.remove_node(req).await }
                })
                .await?;
            print_operation(global, &r);
            return Ok(());
        }
        NodeCommand::Restart {
            pick,
            pending,
            at,
            cancel,
        } => {
            let names = pick_nodes(&client, &pick, "restart").await?;
            // A scheduled restart is only requested; the leader carries
            // the due ones out one at a time.
            let no_wait = pick.no_wait || at.is_some() || cancel;
            return each_node(global, &client, &names, |node| {
                let req = NodeRequest {
                    cluster: pick.cluster.cluster.clone(),
                    node,
                    pending_only: pending,
                    at: at.clone().unwrap_or_default(),
                    cancel,
                };
                (req, NodeOp::Restart, no_wait)
            })
            .await;
        }
        NodeCommand::Reload { pick } => {
            let names = pick_nodes(&client, &pick, "reload").await?;
            return each_node(global, &client, &names, |node| {
                let req = NodeRequest {
                    cluster: pick.cluster.cluster.clone(),
                    node,
                    pending_only: false,
                    ..NodeRequest::default()
                };
                (req, NodeOp::Reload, pick.no_wait)
            })
            .await;
        }
        NodeCommand::Reinit {
            cluster,
            name,
            force,
            no_wait,
        } => {
            confirm(
                &format!("Wipe {name}'s data directory and clone it again?"),
                force,
            )?;
            let req = NodeRequest {
                cluster: cluster.cluster,
                node: name,
                pending_only: false,
                ..NodeRequest::default()
            };
            (req, NodeOp::Reinit, no_wait)
        }
    };
    node_action(global, &client, req, op, no_wait).await
}

/// Which nodes `node restart` restarts, in order: those named and those in
/// `role`, replicas first and the primary last (a rolling restart moves
/// the write outage to the end, once).
/// The nodes named and those in `role`, the primary last (`what`: the
/// operation, for the message when none is chosen).
async fn pick_nodes(
    client: &super::ApiClient,
    pick: &NodePick,
    what: &str,
) -> Result<Vec<String>, Failure> {
    let (cluster, names, role) = (
        pick.cluster.cluster.as_str(),
        pick.names.clone(),
        pick.role.as_deref(),
    );
    if names.is_empty() && role.is_none() {
        return Err(Failure::usage(format!(
            "name the nodes to {what}, or pick them with --role primary|replica|any"
        )));
    }
    // A name the cluster does not know is refused by the managers, which
    // say so.
    let status = super::progress::status(client, cluster).await?;
    let mut chosen: Vec<String> = names;
    for n in &status.nodes {
        let pick = match role {
            Some("any") => true,
            Some(r) => n.role == r,
            None => false,
        };
        if pick && !chosen.contains(&n.name) {
            chosen.push(n.name.clone());
        }
    }
    if chosen.is_empty() {
        return Err(Failure::usage(format!(
            "no node of cluster {} is {}",
            status.cluster,
            role.unwrap_or("named")
        )));
    }
    chosen.sort_by_key(|name| *name == status.primary);
    Ok(chosen)
}

/// What `node_action` asks of a node.
#[derive(Debug, Clone, Copy)]
enum NodeOp {
    Restart,
    Reinit,
    Reload,
}

impl NodeOp {
    /// The agent command that carries it out.
    fn action(self) -> &'static str {
        match self {
            NodeOp::Restart => "restart",
            NodeOp::Reinit => "reinit",
            NodeOp::Reload => "reload",
        }
    }
}

/// `node_action` on each of `names` in turn, each done before the next.
async fn each_node(
    global: &GlobalArgs,
    client: &super::ApiClient,
    names: &[String],
    request_for: impl Fn(String) -> (NodeRequest, NodeOp, bool),
) -> Result<(), Failure> {
    for name in names {
        let (req, op, no_wait) = request_for(name.clone());
        node_action(global, client, req, op, no_wait).await?;
    }
    Ok(())
}

/// Ask for a node's restart, re-initialisation or reload, and wait for it
/// unless `no_wait`.
async fn node_action(
    global: &GlobalArgs,
    client: &super::ApiClient,
    req: NodeRequest,
    op: NodeOp,
    no_wait: bool,
) -> Result<(), Failure> {
    let failure_before = if no_wait {
        String::new()
    } else {
        super::progress::failure_now(client, &req.cluster, &req.node).await
    };
    let r = client
        .call(|mut api, t| {
            let req = request(req.clone(), t);
            async move {
                match op {
                    NodeOp::Reinit => api.reinit_node(req).await,
                    NodeOp::Restart => api.restart_node(req).await,
                    NodeOp::Reload => api.reload_node(req).await,
                }
            }
        })
        .await?;
    let (cluster, name) = (req.cluster, req.node);
    if !no_wait {
        wait(
            client,
            &cluster,
            Goal::NodeDone {
                node: name.clone(),
                action: op.action(),
                failure_before,
            },
            global.timeout.unwrap_or(WAIT),
        )
        .await?;
    }
    print_operation(global, &r);
    Ok(())
}
