//! The `pgquorum` command line: one binary, subcommands for every role
//! (manager, agent) and for the people operating them.

mod client;
mod clusters;
mod drill;
mod dsn;
mod managers;
mod ops;
mod output;
mod progress;
mod sandbox;
mod status;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use client::{ApiClient, ClientError};
pub use output::Failure;

use crate::agent::config::{AgentArgs, KeeperArgs};
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
    /// How long commands that wait for an outcome (switchover, failover,
    /// node restart) wait before they give up [default: 3m].
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// CA certificate (PEM) the managers' certificates are signed by: talk
    /// TLS to the managers.
    #[arg(long, env = "PGQUORUM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) signed by that CA: allows every command.
    #[arg(long, env = "PGQUORUM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "PGQUORUM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// API token for commands that change the cluster (prefer
    /// PGQUORUM_TOKEN or --token-file: command lines are visible to others).
    #[arg(
        long,
        env = "PGQUORUM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File whose first line is the API token.
    #[arg(
        long,
        env = "PGQUORUM_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
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
    /// CA certificate (PEM) the managers' certificates are signed by: talk
    /// TLS to the managers.
    #[arg(
        long = "tls-ca",
        id = "conn_tls_ca",
        global = true,
        env = "PGQUORUM_TLS_CA",
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) signed by that CA: allows every command
    /// (agents: required with TLS).
    #[arg(
        long = "tls-cert",
        id = "conn_tls_cert",
        global = true,
        env = "PGQUORUM_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long = "tls-key",
        id = "conn_tls_key",
        global = true,
        env = "PGQUORUM_TLS_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
    /// API token for commands that change the cluster (prefer
    /// PGQUORUM_TOKEN or --token-file: command lines are visible to others).
    #[arg(
        long = "token",
        id = "conn_token",
        global = true,
        env = "PGQUORUM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File whose first line is the API token.
    #[arg(
        long = "token-file",
        id = "conn_token_file",
        global = true,
        env = "PGQUORUM_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "conn_token"
    )]
    pub token_file: Option<PathBuf>,
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
    Agent(Box<With<AgentArgs>>),
    /// Run the keeper of one PostgreSQL node: the parent of its postmaster
    /// and the enforcer of the primary's lease. The agent starts one when
    /// none runs; under systemd it has a unit of its own.
    Keeper(KeeperArgs),
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
    /// Print the connection string for a cluster (every node, the primary
    /// first; read-write, or --read-only).
    Dsn(With<dsn::DsnArgs>),
    /// Every promotion, with time, reason, epoch, timeline and LSN; pauses,
    /// resumes, configuration changes and dropped switchovers between them.
    History(With<ops::ClusterArg>),
    /// Planned switchover to a replica.
    Switchover(With<ops::SwitchoverArgs>),
    /// Promote a replica when the automatic path cannot act.
    Failover(With<ops::FailoverArgs>),
    /// Clusters as a whole: remove one whose nodes are all gone.
    Cluster(Group<clusters::ClustersCommand>),
    /// Restart or re-initialize one node.
    Node(Group<ops::NodeCommand>),
    /// A whole cluster on this machine, for a first look, demos and tests.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Randomized faults against a real cluster on this machine, checked:
    /// how an operator proves a configuration before trusting it.
    Drill(Box<drill::DrillArgs>),
    /// TLS helpers: certificates and a token for a test deployment.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the version.
    Version,
}

/// Parse the command line and run the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Keeper(args) = &cli.command {
        // Before any runtime exists: the keeper is single-threaded (the
        // postmaster's parent-death signal follows the forking thread).
        return keeper(args);
    }
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
    let result = runtime.block_on(run(cli));
    // Tasks and blocking threads left over (aborted servers, a sled flush)
    // must not hold the exit up: a manager stops within 2 s of SIGTERM.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn keeper(args: &KeeperArgs) -> ExitCode {
    let _flush = crate::logging::init_nonblocking("info");
    let (dir, data_dir) = match args.resolve() {
        Ok(paths) => paths,
        Err(e) => return Failure::usage(e).report(),
    };
    match crate::keeper::server::run(crate::keeper::server::KeeperConfig { dir, data_dir }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keeper failed");
            Failure::failed(e).report()
        }
    }
}

/// Connection flags given after the subcommand win over those before it.
fn merge(global: &GlobalArgs, conn: &ConnArgs) -> GlobalArgs {
    let mut g = global.clone();
    if !conn.managers.is_empty() {
        g.managers = conn.managers.clone();
    }
    let pick = |after: &Option<PathBuf>, before: &mut Option<PathBuf>| {
        if after.is_some() {
            before.clone_from(after);
        }
    };
    pick(&conn.tls_ca, &mut g.tls_ca);
    pick(&conn.tls_cert, &mut g.tls_cert);
    pick(&conn.tls_key, &mut g.tls_key);
    if conn.token.is_some() || conn.token_file.is_some() {
        g.token.clone_from(&conn.token);
        g.token_file.clone_from(&conn.token_file);
    }
    g
}

impl GlobalArgs {
    /// The TLS files given.
    pub fn tls_paths(&self) -> crate::security::TlsPaths {
        crate::security::TlsPaths {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }

    /// TLS and token for the CLI, read and checked.
    pub fn security(&self) -> Result<crate::security::ClientSecurity, Failure> {
        use crate::security::{Token, CLI_NAMES};
        let tls = self
            .tls_paths()
            .load(false, &CLI_NAMES)
            .map_err(Failure::usage)?;
        let token = match (&self.token, &self.token_file) {
            (Some(text), _) => {
                Some(Token::new(text, "from --token (PGQUORUM_TOKEN)").map_err(Failure::usage)?)
            }
            (None, Some(path)) => Some(Token::from_file(path).map_err(Failure::usage)?),
            (None, None) => None,
        };
        if token.is_some() && tls.is_none() {
            tracing::warn!("sending the API token without TLS: give --tls-ca to encrypt it");
        }
        Ok(crate::security::ClientSecurity { tls, token })
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let global = cli.global;
    if !matches!(
        cli.command,
        Command::Manager(_) | Command::Agent(_) | Command::Keeper(_)
    ) {
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
        Command::Agent(mut w) => {
            let global = merge(&global, &w.conn);
            w.args.tls = global.tls_paths();
            let config = crate::agent::config::AgentConfig::load(&w.args, &global.managers)
                .map_err(Failure::usage)?;
            crate::logging::init(config.json_logs, "info");
            let (args, managers) = (w.args.clone(), global.managers.clone());
            let reload = move || {
                crate::agent::config::AgentConfig::load(&args, &managers)
                    .map_err(anyhow::Error::from)
            };
            crate::agent::run(config, reload).await.map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "agent failed");
                Failure::failed(e)
            })
        }
        Command::Keeper(args) => {
            // Handled in `main` before the runtime starts.
            let _ = args;
            Err(Failure::usage(
                "the keeper does not run inside the async runtime",
            ))
        }
        Command::Status(w) => status::run(&merge(&global, &w.conn), w.args).await,
        Command::Managers(g) => managers::run(&merge(&global, &g.conn), g.command).await,
        Command::Config(g) => ops::config(&merge(&global, &g.conn), g.command).await,
        Command::Pause(w) => ops::pause(&merge(&global, &w.conn), w.args, true).await,
        Command::Resume(w) => ops::pause(&merge(&global, &w.conn), w.args, false).await,
        Command::Dsn(w) => dsn::run(&merge(&global, &w.conn), w.args).await,
        Command::History(w) => ops::history(&merge(&global, &w.conn), w.args).await,
        Command::Switchover(w) => ops::switchover(&merge(&global, &w.conn), w.args).await,
        Command::Failover(w) => ops::failover(&merge(&global, &w.conn), w.args).await,
        Command::Cluster(g) => clusters::run(&merge(&global, &g.conn), g.command).await,
        Command::Node(g) => ops::node(&merge(&global, &g.conn), g.command).await,
        Command::Sandbox(cmd) => sandbox::run(&global, cmd).await,
        Command::Drill(args) => drill::run(&global, *args).await,
        Command::Tls(cmd) => tls::run(&global, cmd),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "pgquorum", &mut script);
            output::out(&String::from_utf8_lossy(&script));
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
    let security = global.security()?;
    ApiClient::secure(&global.managers, &security)
        .map_err(|e| Failure::usage(format!("--managers: {e}")))
}
