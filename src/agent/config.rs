//! Agent configuration: a TOML file (`--config`) with flags on top.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::postgres::{ExternalCommand, PgConfig, ReplicaMethod, BASEBACKUP};
use crate::cluster::command::valid_name;
use crate::cluster::Tags;
use crate::security::exposure::{self, Plaintext};
use crate::security::{self, ClientSecurity, TlsFile, TlsPaths};
use crate::transport::check_address;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(m: impl Into<String>) -> AgentConfigError {
    AgentConfigError::Invalid(m.into())
}

/// `[postgresql]` in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    pub bin_dir: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// What PostgreSQL binds (`listen_addresses`).
    pub listen: Option<String>,
    /// The address other nodes and clients use to reach this server.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub socket_dir: Option<PathBuf>,
    pub os_user: Option<String>,
    pub superuser: Option<String>,
    pub superuser_password_file: Option<PathBuf>,
    pub replication_user: Option<String>,
    pub replication_password_file: Option<PathBuf>,
    /// pg_hba.conf lines pgquorum writes (at the top of the file).
    pub hba: Option<Vec<String>>,
    /// WAL archive directory (archive_command / restore_command).
    pub archive_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// Node-local parameters (the cluster-wide ones live in the dynamic
    /// configuration).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// How a replica's data directory is created, tried in order:
    /// `basebackup` (pg_basebackup, the default) or a name from
    /// `[postgresql.replica_method.NAME]`.
    pub replica_methods: Option<Vec<String>>,
    /// The operator's replica methods by name.
    #[serde(default)]
    pub replica_method: BTreeMap<String, CommandFile>,
    /// A program that creates a new cluster's data directory instead of
    /// initdb (a restore from a backup).
    pub bootstrap: Option<CommandFile>,
}

/// `[postgresql.replica_method.NAME]` and `[postgresql.bootstrap]`: a
/// program run as the PostgreSQL OS user, without a shell.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFile {
    /// Absolute path of the program.
    pub command: Option<PathBuf>,
    #[serde(default)]
    pub args: Vec<String>,
    /// How long it may run (default 1h).
    pub timeout: Option<String>,
}

/// How long a replica method or bootstrap command may run by default.
pub const DEFAULT_METHOD_TIMEOUT: Duration = Duration::from_secs(3600);

/// `[callbacks]` in the file: scripts run on events, with the role and the
/// cluster name as arguments.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksFile {
    pub on_role_change: Option<PathBuf>,
    pub on_start: Option<PathBuf>,
    pub on_stop: Option<PathBuf>,
    pub timeout: Option<String>,
}

/// The TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub managers: Option<Vec<String>>,
    pub http_listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    /// Hardware watchdog: "off" (default), "auto" or "required".
    pub watchdog: Option<String>,
    /// Watchdog device (default /dev/watchdog).
    pub watchdog_device: Option<PathBuf>,
    /// Start a keeper when none runs (default true); false when the keeper
    /// has a service of its own (systemd: pgquorum-keeper.service).
    pub spawn_keeper: Option<bool>,
    /// How long to keep trying to register before giving up at start.
    pub register_timeout: Option<String>,
    #[serde(default)]
    pub postgresql: PostgresFile,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub callbacks: CallbacksFile,
    /// Mutual TLS to the managers (ca, cert, key) and optional HTTPS for
    /// the HTTP endpoints (http_cert, http_key).
    #[serde(default)]
    pub tls: TlsFile,
    /// Dial managers and serve HTTP on non-loopback addresses without TLS
    /// (a trusted network only; see `security::exposure`).
    pub insecure: Option<bool>,
}

/// Flags; they override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name, unique in its cluster.
    #[arg(long)]
    pub name: Option<String>,
    /// Cluster name.
    #[arg(long)]
    pub cluster: Option<String>,
    /// PostgreSQL data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the PostgreSQL server programs.
    #[arg(long, value_name = "DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// Address other nodes use to reach this PostgreSQL.
    #[arg(long, value_name = "HOST")]
    pub pg_host: Option<String>,
    /// PostgreSQL port.
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// What PostgreSQL binds (listen_addresses).
    #[arg(long, value_name = "ADDRESSES")]
    pub pg_listen: Option<String>,
    /// HTTP address for health checks and metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Directory for the agent's own state (outside the data directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// OS user PostgreSQL runs as when the agent runs as root.
    #[arg(long)]
    pub os_user: Option<String>,
    /// Hardware watchdog as a backstop while primary: off, auto or required.
    #[arg(long, value_name = "MODE")]
    pub watchdog: Option<String>,
    /// Watchdog device [default: /dev/watchdog].
    #[arg(long, value_name = "PATH")]
    pub watchdog_device: Option<PathBuf>,
    /// `--tls-ca`, `--tls-cert`, `--tls-key`: the connection flags every
    /// command shares (see `cli::ConnArgs`), set by the command line.
    #[arg(skip)]
    pub tls: TlsPaths,
    /// Allow plaintext to non-loopback managers and a plaintext HTTP port
    /// on a non-loopback address (a trusted network only).
    #[arg(long)]
    pub insecure: bool,
}

/// The hardware watchdog setting (as Patroni's `watchdog.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    /// Not used.
    Off,
    /// Armed while primary when the device can be used; a warning otherwise.
    Auto,
    /// Armed while primary; a node that cannot arm it never becomes primary.
    Required,
}

impl WatchdogMode {
    fn parse(text: &str) -> Result<WatchdogMode, AgentConfigError> {
        match text {
            "off" => Ok(WatchdogMode::Off),
            "auto" | "automatic" => Ok(WatchdogMode::Auto),
            "required" => Ok(WatchdogMode::Required),
            other => Err(invalid(format!(
                "watchdog {other:?}: use \"off\", \"auto\" or \"required\""
            ))),
        }
    }
}

/// The checked configuration of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub cluster: String,
    pub managers: Vec<String>,
    pub http_listen: SocketAddr,
    /// The HTTP address as other hosts see it.
    pub http_advertise: String,
    pub state_dir: PathBuf,
    pub json_logs: bool,
    pub register_timeout: Duration,
    pub tags: Tags,
    /// The PostgreSQL bin dir as configured; found at start when absent.
    pub bin_dir: Option<PathBuf>,
    /// How the driver runs PostgreSQL (its `bin_dir` is filled in at start).
    pub postgres: PgConfig,
    /// Address other nodes use to reach this PostgreSQL.
    pub pg_host: String,
    pub local_parameters: BTreeMap<String, String>,
    pub on_role_change: Option<PathBuf>,
    pub on_start: Option<PathBuf>,
    pub on_stop: Option<PathBuf>,
    pub callback_timeout: Duration,
    /// How a replica's data directory is created, in order.
    pub replica_methods: Vec<ReplicaMethod>,
    /// Creates a new cluster instead of initdb.
    pub bootstrap: Option<ExternalCommand>,
    /// How the agent dials the managers (mutual TLS, or plaintext).
    pub security: ClientSecurity,
    /// HTTPS for the HTTP endpoints.
    pub http_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub watchdog: WatchdogMode,
    pub watchdog_device: PathBuf,
}

/// A secret from a file (first line) or, failing that, an environment variable.
fn secret(file: Option<&Path>, env: &str) -> Result<Option<String>, AgentConfigError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read password file {}: {e}", path.display())))?;
        let line = text.lines().next().unwrap_or("").trim().to_string();
        if line.is_empty() {
            return Err(invalid(format!(
                "password file {} is empty",
                path.display()
            )));
        }
        return Ok(Some(line));
    }
    Ok(std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn parse_duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, AgentConfigError> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .map_err(|_| invalid(format!("{key}: {v:?} is not a duration such as 30s"))),
    }
}

/// An operator's program: an absolute path to an executable file.
fn check_program(key: &str, path: &Path) -> Result<(), AgentConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if path.is_relative() {
        return Err(invalid(format!(
            "{key}.command {}: give an absolute path (programs run with / as their working directory)",
            path.display()
        )));
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(format!(
                "{key}.command {} does not exist: install the program or correct the path",
                path.display()
            ))
        } else {
            invalid(format!("{key}.command {}: {e}", path.display()))
        }
    })?;
    if !meta.is_file() {
        return Err(invalid(format!(
            "{key}.command {} is not a file: give the program itself",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid(format!(
            "{key}.command {} is not executable: make it so (chmod +x); it runs as the PostgreSQL OS user",
            path.display()
        )));
    }
    Ok(())
}

/// `[postgresql.replica_method.NAME]` or `[postgresql.bootstrap]`, checked.
fn resolve_command(key: &str, file: &CommandFile) -> Result<ExternalCommand, AgentConfigError> {
    let program = file.command.clone().ok_or_else(|| {
        invalid(format!(
            "{key} has no command: give the program to run, e.g. command = \"/usr/local/bin/restore-replica\""
        ))
    })?;
    check_program(key, &program)?;
    let timeout = parse_duration(
        &format!("{key}.timeout"),
        file.timeout.as_deref(),
        DEFAULT_METHOD_TIMEOUT,
    )?;
    if timeout.is_zero() {
        return Err(invalid(format!("{key}.timeout must be longer than 0s")));
    }
    Ok(ExternalCommand {
        program,
        args: file.args.clone(),
        timeout,
    })
}

/// `postgresql.replica_methods` with their tables: every name listed is
/// `basebackup` or has a table, every table is listed, none twice.
fn resolve_replica_methods(
    names: Option<&[String]>,
    tables: &BTreeMap<String, CommandFile>,
) -> Result<Vec<ReplicaMethod>, AgentConfigError> {
    if tables.contains_key(BASEBACKUP) {
        return Err(invalid(format!(
            "[postgresql.replica_method.{BASEBACKUP}]: \"{BASEBACKUP}\" is the built-in pg_basebackup \
             and takes no table; give your program another name"
        )));
    }
    let Some(names) = names else {
        if let Some(name) = tables.keys().next() {
            return Err(invalid(format!(
                "[postgresql.replica_method.{name}] is not used: list it in postgresql.replica_methods, \
                 e.g. replica_methods = [\"{name}\", \"{BASEBACKUP}\"]"
            )));
        }
        return Ok(vec![ReplicaMethod::Basebackup]);
    };
    if names.is_empty() {
        return Err(invalid(format!(
            "postgresql.replica_methods is empty: list at least one method, e.g. [\"{BASEBACKUP}\"]"
        )));
    }
    let mut methods = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(invalid(format!(
                "postgresql.replica_methods names {name:?} twice"
            )));
        }
        if name == BASEBACKUP {
            methods.push(ReplicaMethod::Basebackup);
            continue;
        }
        let Some(table) = tables.get(name) else {
            return Err(invalid(format!(
                "postgresql.replica_methods names {name:?}, which is not a method: add a \
                 [postgresql.replica_method.{name}] table with its command, or use the built-in \
                 \"{BASEBACKUP}\""
            )));
        };
        methods.push(ReplicaMethod::Command {
            name: name.clone(),
            command: resolve_command(&format!("postgresql.replica_method.{name}"), table)?,
        });
    }
    if let Some(name) = tables.keys().find(|n| !names.contains(n)) {
        return Err(invalid(format!(
            "[postgresql.replica_method.{name}] is not used: list it in postgresql.replica_methods \
             or remove the table"
        )));
    }
    Ok(methods)
}

/// Default pg_hba lines: the agent's own local connections, the keeper's
/// commit gate (a local replication connection), replication and clients
/// with passwords from anywhere.
fn default_hba(superuser: &str, replication_user: &str) -> Vec<String> {
    vec![
        format!("local all {superuser} trust"),
        format!("local replication {superuser} trust"),
        format!("host replication {replication_user} 0.0.0.0/0 scram-sha-256"),
        format!("host replication {replication_user} ::/0 scram-sha-256"),
        "host all all 0.0.0.0/0 scram-sha-256".to_string(),
        "host all all ::/0 scram-sha-256".to_string(),
    ]
}

/// `pgquorum-NAME` beside the data directory.
fn default_state_dir(data_dir: &Path, name: &str) -> PathBuf {
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    parent.join(format!("pgquorum-{name}"))
}

/// `pgquorum keeper`'s flags: the keeper needs only the agent's state
/// directory (its home) and the data directory, resolved as the agent
/// resolves them, so both can be started from the same file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeeperArgs {
    /// The agent's TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's state directory (the keeper's socket lives there).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// PostgreSQL data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl KeeperArgs {
    /// The keeper's directory and the data directory.
    pub fn resolve(&self) -> Result<(PathBuf, PathBuf), AgentConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => AgentFile::default(),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.postgresql.data_dir)
            .ok_or_else(|| {
                invalid("missing data directory: give --data-dir DIR or postgresql.data_dir")
            })?;
        if data_dir.is_relative() {
            return Err(invalid(format!(
                "data directory {} must be an absolute path",
                data_dir.display()
            )));
        }
        let state_dir = match self.state_dir.clone().or(file.state_dir) {
            Some(dir) => dir,
            None => {
                let name = file.name.ok_or_else(|| {
                    invalid("missing state directory: give --state-dir DIR, or `state_dir` or `name` in the config file")
                })?;
                default_state_dir(&data_dir, &name)
            }
        };
        Ok((state_dir, data_dir))
    }
}

fn read_file(path: &Path) -> Result<AgentFile, AgentConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgentConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| AgentConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl AgentConfig {
    pub fn load(args: &AgentArgs, managers: &[String]) -> Result<Self, AgentConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => AgentFile::default(),
        };
        Self::resolve(file, args, managers)
    }

    fn resolve(
        file: AgentFile,
        args: &AgentArgs,
        managers: &[String],
    ) -> Result<Self, AgentConfigError> {
        let name = args.name.clone().or(file.name).ok_or_else(|| {
            invalid("missing node name: give --name NAME or `name` in the config file")
        })?;
        let cluster = args
            .cluster
            .clone()
            .or(file.cluster)
            .unwrap_or_else(|| "main".to_string());
        for (what, v) in [("node name", &name), ("cluster name", &cluster)] {
            if !valid_name(v) {
                return Err(invalid(format!(
                    "{what} {v:?}: use letters, digits, '-' and '_' (at most 63)"
                )));
            }
        }
        let managers: Vec<String> = if managers.is_empty() {
            file.managers.unwrap_or_default()
        } else {
            managers.to_vec()
        };
        if managers.is_empty() {
            return Err(invalid("no manager addresses: give --managers HOST:PORT[,...] or `managers` in the config file"));
        }
        for m in &managers {
            check_address(m).map_err(|e| invalid(format!("managers: {e}")))?;
        }

        let pg = file.postgresql;
        let data_dir = args.data_dir.clone().or(pg.data_dir).ok_or_else(|| {
            invalid("missing data directory: give --data-dir DIR or postgresql.data_dir")
        })?;
        if data_dir.is_relative() {
            return Err(invalid(format!(
                "data directory {} must be an absolute path",
                data_dir.display()
            )));
        }
        let pg_port = args.pg_port.or(pg.port).unwrap_or(5432);
        if pg_port == 0 {
            return Err(invalid("postgresql.port must be from 1 to 65535"));
        }
        let pg_listen = args
            .pg_listen
            .clone()
            .or(pg.listen)
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let pg_host = match args.pg_host.clone().or(pg.host) {
            Some(h) => h,
            None if pg_listen == "*" || pg_listen == "0.0.0.0" || pg_listen.contains(',') => {
                return Err(invalid(
                    "postgresql.listen binds several addresses: give --pg-host, the address other nodes use",
                ))
            }
            None => pg_listen.clone(),
        };
        if pg_host.is_empty() || pg_host.contains(char::is_whitespace) {
            return Err(invalid(format!("invalid PostgreSQL host {pg_host:?}")));
        }

        let http_text = args
            .http_listen
            .clone()
            .or(file.http_listen)
            .unwrap_or_else(|| "127.0.0.1:8008".to_string());
        check_address(&http_text).map_err(|e| invalid(format!("http_listen: {e}")))?;
        let http_listen: SocketAddr = http_text
            .parse()
            .map_err(|_| invalid(format!("http_listen {http_text:?} must be IP:PORT")))?;
        let http_advertise = if http_listen.ip().is_unspecified() {
            format!("{pg_host}:{}", http_listen.port())
        } else {
            http_text.clone()
        };

        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| default_state_dir(&data_dir, &name));
        let watchdog = WatchdogMode::parse(
            args.watchdog
                .as_deref()
                .or(file.watchdog.as_deref())
                .unwrap_or("off"),
        )?;
        let watchdog_device = args
            .watchdog_device
            .clone()
            .or(file.watchdog_device)
            .unwrap_or_else(|| PathBuf::from("/dev/watchdog"));
        let json_logs = match file.log_format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(format!(
                    "log_format {other:?}: use \"text\" or \"json\""
                )))
            }
        };
        let superuser = pg.superuser.unwrap_or_else(|| "postgres".to_string());
        let replication_user = pg
            .replication_user
            .unwrap_or_else(|| "replicator".to_string());
        let superuser_password = secret(
            pg.superuser_password_file.as_deref(),
            "PGQUORUM_SUPERUSER_PASSWORD",
        )?;
        let replication_password = secret(
            pg.replication_password_file.as_deref(),
            "PGQUORUM_REPLICATION_PASSWORD",
        )?;
        let hba = pg
            .hba
            .unwrap_or_else(|| default_hba(&superuser, &replication_user));
        let replica_methods =
            resolve_replica_methods(pg.replica_methods.as_deref(), &pg.replica_method)?;
        let bootstrap = pg
            .bootstrap
            .as_ref()
            .map(|b| resolve_command("postgresql.bootstrap", b))
            .transpose()?;
        let callbacks = file.callbacks;
        let tls = args
            .tls
            .over(&file.tls)
            .load(true, &security::CONFIG_NAMES)
            .map_err(|e| invalid(e.to_string()))?;
        let http_tls = security::http_config(&file.tls).map_err(|e| invalid(e.to_string()))?;
        let mut plaintext = Vec::new();
        if tls.is_none() {
            plaintext.extend(managers.iter().map(|address| Plaintext {
                what: "dials the manager at",
                address,
            }));
        }
        if http_tls.is_none() {
            plaintext.push(Plaintext {
                what: exposure::SERVES_HTTP,
                address: &http_text,
            });
        }
        let insecure = args.insecure || file.insecure.unwrap_or(false);
        exposure::check("agent", &plaintext, insecure).map_err(invalid)?;
        let socket_dir = pg.socket_dir.unwrap_or_else(|| state_dir.join("socket"));
        if socket_dir.as_os_str().len() > 90 {
            return Err(invalid(format!(
                "socket directory {} is too long for a Unix socket path; set postgresql.socket_dir",
                socket_dir.display()
            )));
        }
        Ok(AgentConfig {
            security: ClientSecurity { tls, token: None },
            http_tls,
            watchdog,
            watchdog_device,
            postgres: PgConfig {
                bin_dir: PathBuf::new(),
                data_dir,
                listen_addresses: pg_listen,
                port: pg_port,
                socket_dir,
                os_user: args.os_user.clone().or(pg.os_user),
                superuser,
                superuser_password,
                replication_user,
                replication_password,
                node_name: name.clone(),
                hba,
                archive_dir: pg.archive_dir,
                log_file: pg
                    .log_file
                    .unwrap_or_else(|| state_dir.join("postgresql.log")),
                // initdb would take the locale from the agent's environment
                // (as root under systemd, often none: SQL_ASCII). UTF-8 with C
                // collation is the same on every host, which replicas need.
                initdb_options: vec!["--encoding=UTF8".to_string(), "--locale=C".to_string()],
                keeper_dir: state_dir.clone(),
                keeper_binary: file
                    .spawn_keeper
                    .unwrap_or(true)
                    .then(|| PathBuf::from("/proc/self/exe")),
            },
            name,
            cluster,
            managers,
            http_listen,
            http_advertise,
            json_logs,
            register_timeout: parse_duration(
                "register_timeout",
                file.register_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            tags: file.tags,
            bin_dir: args.pg_bin_dir.clone().or(pg.bin_dir),
            pg_host,
            local_parameters: pg.parameters,
            on_role_change: callbacks.on_role_change,
            on_start: callbacks.on_start,
            on_stop: callbacks.on_stop,
            replica_methods,
            bootstrap,
            callback_timeout: parse_duration(
                "callbacks.timeout",
                callbacks.timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            state_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AgentArgs {
        AgentArgs {
            name: Some("n1".into()),
            data_dir: Some("/tmp/pgq/n1/data".into()),
            ..AgentArgs::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = AgentConfig::resolve(AgentFile::default(), &args(), &["127.0.0.1:7001".into()])
            .unwrap();
        assert_eq!(c.cluster, "main");
        assert_eq!(c.postgres.port, 5432);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/pgq/n1/pgquorum-n1"));
        assert!(c
            .postgres
            .hba
            .iter()
            .any(|l| l.contains("replication replicator")));
    }

    #[test]
    fn refuses_bad_names_and_addresses() {
        let mut a = args();
        a.name = Some("bad name".into());
        assert!(
            AgentConfig::resolve(AgentFile::default(), &a, &["127.0.0.1:7001".into()]).is_err()
        );
        let err =
            AgentConfig::resolve(AgentFile::default(), &args(), &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("invalid address"), "{err}");
        let err = AgentConfig::resolve(AgentFile::default(), &args(), &[]).unwrap_err();
        assert!(err.to_string().contains("no manager addresses"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<AgentFile>("name = \"n1\"\n[postgresql]\ndatadir = \"/x\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("datadir"), "{err}");
    }

    /// The agent's configuration from a TOML file's text.
    fn from_toml(text: &str) -> Result<AgentConfig, AgentConfigError> {
        let file: AgentFile = toml::from_str(text).map_err(|e| AgentConfigError::Parse {
            path: "agent.toml".into(),
            message: e.to_string(),
        })?;
        AgentConfig::resolve(file, &args(), &["127.0.0.1:7001".into()])
    }

    fn refusal(text: &str) -> String {
        match from_toml(text) {
            Ok(c) => panic!("accepted: {:?}", c.replica_methods),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn replica_methods_default_to_basebackup() {
        let c = from_toml("").unwrap();
        assert_eq!(c.replica_methods, vec![ReplicaMethod::Basebackup]);
        assert_eq!(c.bootstrap, None);
    }

    #[test]
    fn replica_methods_and_bootstrap_are_resolved_in_order() {
        let c = from_toml(
            "[postgresql]\n\
             replica_methods = [\"backup\", \"basebackup\"]\n\
             [postgresql.replica_method.backup]\n\
             command = \"/bin/true\"\n\
             args = [\"--stanza\", \"main\"]\n\
             timeout = \"30m\"\n\
             [postgresql.bootstrap]\n\
             command = \"/bin/echo\"\n",
        )
        .unwrap();
        assert_eq!(
            c.replica_methods,
            vec![
                ReplicaMethod::Command {
                    name: "backup".into(),
                    command: ExternalCommand {
                        program: "/bin/true".into(),
                        args: vec!["--stanza".into(), "main".into()],
                        timeout: Duration::from_secs(1800),
                    },
                },
                ReplicaMethod::Basebackup,
            ]
        );
        assert_eq!(
            c.bootstrap,
            Some(ExternalCommand {
                program: "/bin/echo".into(),
                args: vec![],
                timeout: DEFAULT_METHOD_TIMEOUT,
            })
        );
    }

    #[test]
    fn bad_replica_methods_are_refused_with_what_to_do() {
        assert_eq!(
            refusal("[postgresql]\nreplica_methods = [\"tarball\", \"basebackup\"]\n"),
            "postgresql.replica_methods names \"tarball\", which is not a method: add a \
             [postgresql.replica_method.tarball] table with its command, or use the built-in \
             \"basebackup\""
        );
        assert_eq!(
            refusal(
                "[postgresql]\nreplica_methods = [\"tarball\"]\n\
                 [postgresql.replica_method.tarball]\ntimeout = \"1h\"\n"
            ),
            "postgresql.replica_method.tarball has no command: give the program to run, e.g. \
             command = \"/usr/local/bin/restore-replica\""
        );
        assert_eq!(
            refusal(
                "[postgresql]\nreplica_methods = [\"tarball\"]\n\
                 [postgresql.replica_method.tarball]\ncommand = \"/nonexistent/restore\"\n"
            ),
            "postgresql.replica_method.tarball.command /nonexistent/restore does not exist: \
             install the program or correct the path"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("restore");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(
            refusal(&format!(
                "[postgresql]\nreplica_methods = [\"tarball\"]\n\
                 [postgresql.replica_method.tarball]\ncommand = \"{}\"\n",
                script.display()
            )),
            format!(
                "postgresql.replica_method.tarball.command {} is not executable: make it so \
                 (chmod +x); it runs as the PostgreSQL OS user",
                script.display()
            )
        );
        assert_eq!(
            refusal(
                "[postgresql]\nreplica_methods = [\"tarball\"]\n\
                 [postgresql.replica_method.tarball]\ncommand = \"restore.sh\"\n"
            ),
            "postgresql.replica_method.tarball.command restore.sh: give an absolute path \
             (programs run with / as their working directory)"
        );
        assert_eq!(
            refusal(&format!(
                "[postgresql.bootstrap]\ncommand = \"{}\"\n",
                dir.path().display()
            )),
            format!(
                "postgresql.bootstrap.command {} is not a file: give the program itself",
                dir.path().display()
            )
        );
        assert_eq!(
            refusal("[postgresql]\nreplica_methods = []\n"),
            "postgresql.replica_methods is empty: list at least one method, e.g. [\"basebackup\"]"
        );
        assert_eq!(
            refusal("[postgresql]\nreplica_methods = [\"basebackup\", \"basebackup\"]\n"),
            "postgresql.replica_methods names \"basebackup\" twice"
        );
        assert_eq!(
            refusal("[postgresql.replica_method.basebackup]\ncommand = \"/bin/true\"\n"),
            "[postgresql.replica_method.basebackup]: \"basebackup\" is the built-in \
             pg_basebackup and takes no table; give your program another name"
        );
        assert_eq!(
            refusal("[postgresql.replica_method.backup]\ncommand = \"/bin/true\"\n"),
            "[postgresql.replica_method.backup] is not used: list it in \
             postgresql.replica_methods, e.g. replica_methods = [\"backup\", \"basebackup\"]"
        );
        assert_eq!(
            refusal(
                "[postgresql]\nreplica_methods = [\"basebackup\"]\n\
                 [postgresql.replica_method.backup]\ncommand = \"/bin/true\"\n"
            ),
            "[postgresql.replica_method.backup] is not used: list it in \
             postgresql.replica_methods or remove the table"
        );
        assert_eq!(
            refusal("[postgresql.bootstrap]\ncommand = \"/bin/true\"\ntimeout = \"0s\"\n"),
            "postgresql.bootstrap.timeout must be longer than 0s"
        );
        assert_eq!(
            refusal("[postgresql.bootstrap]\ncommand = \"/bin/true\"\ntimeout = \"soon\"\n"),
            "postgresql.bootstrap.timeout: \"soon\" is not a duration such as 30s"
        );
        // Patroni's `no_leader` has no counterpart: pgquorum clones only
        // from a running upstream.
        let e = refusal(
            "[postgresql]\nreplica_methods = [\"backup\"]\n\
             [postgresql.replica_method.backup]\ncommand = \"/bin/true\"\nno_upstream = true\n",
        );
        assert!(e.contains("unknown field `no_upstream`"), "{e}");
    }
}
