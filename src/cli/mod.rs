//! The `pgquorum` command line: one binary, subcommands for every role
//! (manager, agent) and for the people operating them.

mod client;
mod managers;
mod ops;
mod output;
mod status;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use client::{ApiClient, ClientError};
pub use output::Failure;

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
    /// Managers to talk to (any of them works).
    #[arg(
        long,
        global = true,
        env = "PGQUORUM_MANAGERS",
        value_name = "HOST:PORT[,...]",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    pub managers: Vec<String>,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a manager (a member of the Raft group).
    Manager(ManagerArgs),
    /// Show the cluster: nodes, roles, lag, and the managers.
    Status(status::StatusArgs),
    /// Manage the Raft group of managers.
    #[command(subcommand)]
    Managers(managers::ManagersCommand),
    /// Show or change the dynamic configuration.
    #[command(subcommand)]
    Config(ops::ConfigCommand),
    /// Stop automatic failover and other automatic actions.
    Pause(ops::ClusterArg),
    /// Resume automatic actions.
    Resume(ops::ClusterArg),
    /// Every promotion, with time, reason, epoch, timeline and LSN.
    History(ops::ClusterArg),
    /// Planned switchover to a replica.
    Switchover(ops::SwitchoverArgs),
    /// Promote a replica when the automatic path cannot act.
    Failover(ops::FailoverArgs),
    /// Restart or re-initialize one node.
    #[command(subcommand)]
    Node(ops::NodeCommand),
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

async fn run(cli: Cli) -> Result<(), Failure> {
    let global = cli.global;
    if !matches!(cli.command, Command::Manager(_)) {
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
        Command::Status(args) => status::run(&global, args).await,
        Command::Managers(cmd) => managers::run(&global, cmd).await,
        Command::Config(cmd) => ops::config(&global, cmd).await,
        Command::Pause(args) => ops::pause(&global, args, true).await,
        Command::Resume(args) => ops::pause(&global, args, false).await,
        Command::History(args) => ops::history(&global, args).await,
        Command::Switchover(args) => ops::switchover(&global, args).await,
        Command::Failover(args) => ops::failover(&global, args).await,
        Command::Node(cmd) => ops::node(&global, cmd).await,
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
