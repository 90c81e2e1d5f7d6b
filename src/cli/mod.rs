//! The `pgquorum` command line: one binary, subcommands for every role
//! (manager, agent) and for the people operating them.

mod client;
mod managers;
mod ops;
mod output;
mod progress;
mod sandbox;
mod status;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use client::{ApiClient, ClientError};
pub use output::Failure;

use crate::agent::config::AgentArgs;
use crate::manager::config::ManagerArgs;

/// High availability for PostgreSQL, with its own Raft quorum of managers.
#[derive(Debug, Parser)]
#[command(name = "pgquorum", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Managers to talk to (any of them works) [default: 127.0.0.1:7001].
    #[arg(
        long,
        env = "PGQUORUM_MANAGERS",
        value_name = "HOST:PORT[,...]",
        value_delimiter = ','
    )]
    pub managers: Vec<String>,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--managers` after the subcommand (`pgquorum status --managers …`). Not
/// global at the top: `sandbox up --managers N` is a count.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// Managers to talk to (any of them works) [default: 127.0.0.1:7001].
    #[arg(
        long = "managers",
        id = "conn_managers",
        global = true,
        env = "PGQUORUM_MANAGERS",
        value_name = "HOST:PORT[,...]",
        value_delimiter = ','
    )]
    pub managers: Vec<String>,
}

/// A command's own arguments plus `--managers`.
#[derive(Debug, Args)]
pub struct With<T: Args> {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub args: T,
}

/// A group of subcommands plus `--managers`.
#[derive(Debug, Args)]
pub struct Group<S: Subcommand> {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: S,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a manager (a member of the Raft group).
    Manager(ManagerArgs),
    /// Run the agent of one PostgreSQL node.
    Agent(With<AgentArgs>),
    /// Show the cluster: nodes, roles, lag, and the managers.
    Status(With<status::StatusArgs>),
    /// Manage the Raft group of managers.
    Managers(Group<managers::ManagersCommand>),
    /// Show or change the dynamic configuration.
    Config(Group<ops::ConfigCommand>),
    /// Stop automatic failover and other automatic actions.
    Pause(With<ops::ClusterArg>),
    /// Resume automatic actions.
    Resume(With<ops::ClusterArg>),
    /// Every promotion, with time, reason, epoch, timeline and LSN.
    History(With<ops::ClusterArg>),
    /// Planned switchover to a replica.
    Switchover(With<ops::SwitchoverArgs>),
    /// Promote a replica when the automatic path cannot act.
    Failover(With<ops::FailoverArgs>),
    /// Restart or re-initialize one node.
    Node(Group<ops::NodeCommand>),
    /// A whole cluster on this machine, for a first look, demos and tests.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the version.
    Version,
}

/// Parse the command line and run the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// `--managers` given after the subcommand wins over the one before it.
fn merge(global: &GlobalArgs, conn: &ConnArgs) -> GlobalArgs {
    let mut g = global.clone();
    if !conn.managers.is_empty() {
        g.managers = conn.managers.clone();
    }
    g
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let global = cli.global;
    if !matches!(cli.command, Command::Manager(_) | Command::Agent(_)) {
        // Commands log only warnings, to stderr, so stdout stays clean.
        crate::logging::init(false, "warn");
    }
    match cli.command {
        Command::Manager(args) => {
            let config =
                crate::manager::config::ManagerConfig::load(&args).map_err(Failure::usage)?;
            crate::logging::init(config.json_logs, "info");
            crate::manager::server::run(config).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "manager failed");
                Failure::failed(e)
            })
        }
        Command::Agent(w) => {
            let global = merge(&global, &w.conn);
            let config = crate::agent::config::AgentConfig::load(&w.args, &global.managers)
                .map_err(Failure::usage)?;
            crate::logging::init(config.json_logs, "info");
            crate::agent::run(config).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "agent failed");
                Failure::failed(e)
            })
        }
        Command::Status(w) => status::run(&merge(&global, &w.conn), w.args).await,
        Command::Managers(g) => managers::run(&merge(&global, &g.conn), g.command).await,
        Command::Config(g) => ops::config(&merge(&global, &g.conn), g.command).await,
        Command::Pause(w) => ops::pause(&merge(&global, &w.conn), w.args, true).await,
        Command::Resume(w) => ops::pause(&merge(&global, &w.conn), w.args, false).await,
        Command::History(w) => ops::history(&merge(&global, &w.conn), w.args).await,
        Command::Switchover(w) => ops::switchover(&merge(&global, &w.conn), w.args).await,
        Command::Failover(w) => ops::failover(&merge(&global, &w.conn), w.args).await,
        Command::Node(g) => ops::node(&merge(&global, &g.conn), g.command).await,
        Command::Sandbox(cmd) => sandbox::run(&global, cmd).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "pgquorum", &mut std::io::stdout());
            Ok(())
        }
        Command::Version => {
            output::print(
                global.json,
                &serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
                || format!("pgquorum {}", env!("CARGO_PKG_VERSION")),
            );
            Ok(())
        }
    }
}

/// The API client for `--managers`.
pub(crate) fn connect(global: &GlobalArgs) -> Result<ApiClient, Failure> {
    if global.managers.is_empty() {
        return Err(Failure::usage(
            "no manager address: give --managers HOST:PORT[,...]",
        ));
    }
    ApiClient::new(&global.managers).map_err(|e| Failure::usage(format!("--managers: {e}")))
}
