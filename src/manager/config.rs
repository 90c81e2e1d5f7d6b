//! Manager configuration: a TOML file (`--config`) with flags on top.
//!
//! Everything is checked before anything is touched on disk, and every
//! error names the key and what would be accepted.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::types::NodeId;
use crate::security::exposure::{self, Plaintext};
use crate::security::{self, TlsFile, TlsPaths, Token};
use crate::transport::check_address;

/// A configuration problem: the manager does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// `--peers` / `peers`: either `"1=HOST:PORT,2=HOST:PORT"` or a TOML table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PeersSpec {
    Text(String),
    Table(BTreeMap<String, String>),
}

/// Raft timing and durability.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    pub heartbeat_interval: Option<String>,
    pub election_timeout_min: Option<String>,
    pub election_timeout_max: Option<String>,
    /// fdatasync sled's files after every flush (default true). Turning it
    /// off trades power-loss safety for latency: only for benchmarks.
    pub fsync: Option<bool>,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_logs: Option<u64>,
}

/// The TOML file, every key optional (flags may supply it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerFile {
    pub id: Option<NodeId>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub peers: Option<PeersSpec>,
    pub join: Option<bool>,
    pub log_format: Option<String>,
    /// HTTP address for Prometheus `/metrics` (off when absent).
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub raft: RaftFile,
    /// TLS for gRPC (and optionally HTTPS for metrics).
    #[serde(default)]
    pub tls: TlsFile,
    /// A file whose first line is the bearer token that allows
    /// state-changing API calls (besides a client certificate).
    pub api_token_file: Option<PathBuf>,
    /// Listen on and dial non-loopback addresses without TLS (a trusted
    /// network only; see `security::exposure`).
    pub insecure: Option<bool>,
}

/// Flags given on the command line; they override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ManagerArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Raft id of this manager (a positive number, never reused).
    #[arg(long)]
    pub id: Option<NodeId>,
    /// Address to serve gRPC on (Raft, API, agents).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Address other managers, agents and clients use to reach this one
    /// (default: this manager's entry in --peers, else --listen).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Directory for the Raft log, vote and cluster state.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The initial voters; starting them on empty data directories forms the group.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// Start empty and wait until `pgquorum managers add` brings this manager in.
    #[arg(long, conflicts_with = "peers")]
    pub join: bool,
    /// HTTP address for Prometheus /metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Disaster recovery: re-form the group from this manager's data alone,
    /// when a majority of managers is lost for good (see docs/operations).
    #[arg(long, conflicts_with_all = ["join", "peers"])]
    pub force_new_cluster: bool,
    /// CA certificate (PEM) that signs every manager's and agent's
    /// certificate; turns TLS on for gRPC.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This manager's certificate (PEM): server and client use, naming the
    /// host of --advertise.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// File with the bearer token that allows state-changing API calls.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Allow plaintext gRPC on non-loopback addresses (a trusted network
    /// only): without TLS anyone who reaches the port controls the cluster.
    #[arg(long)]
    pub insecure: bool,
}

/// How this manager comes into its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// One of the initial voters, by id and address.
    Peers(BTreeMap<NodeId, String>),
    /// Wait to be added by `managers add`.
    Join,
    /// Neither given: only valid when the data directory already exists.
    Existing,
}

/// The checked, complete configuration of one manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub membership: Membership,
    pub json_logs: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub force_new_cluster: bool,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub fsync: bool,
    pub snapshot_logs: u64,
    /// TLS for gRPC, server and client side (None: plaintext).
    pub tls: Option<security::Tls>,
    /// HTTPS for the metrics endpoint.
    pub http_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The token that allows state-changing API calls.
    pub api_token: Option<Token>,
}

/// Parse `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item.split_once('=').ok_or_else(|| {
            invalid(format!(
                "--peers entry {item:?} is not ID=HOST:PORT (example: 1=10.0.0.1:7001)"
            ))
        })?;
        insert_peer(&mut peers, id, address)?;
    }
    Ok(peers)
}

fn insert_peer(
    peers: &mut BTreeMap<NodeId, String>,
    id: &str,
    address: &str,
) -> Result<(), ConfigError> {
    let id: NodeId = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid(format!("peer id {id:?} is not a positive number")))?;
    let address = address.trim();
    check_address(address).map_err(|e| invalid(format!("peer {id}: {e}")))?;
    if let Some((other, _)) = peers.iter().find(|(_, a)| a.as_str() == address) {
        return Err(invalid(format!(
            "peers {other} and {id} have the same address {address}"
        )));
    }
    if peers.insert(id, address.to_string()).is_some() {
        return Err(invalid(format!("peer id {id} is given twice")));
    }
    Ok(())
}

fn duration(key: &str, value: Option<&str>, default_ms: u64) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(Duration::from_millis(default_ms));
    };
    match value.parse::<u64>() {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => humantime::parse_duration(value).map_err(|_| {
            invalid(format!(
                "raft.{key}: {value:?} is not a duration such as 250ms"
            ))
        }),
    }
}

fn resolve_listen(listen: &str) -> Result<SocketAddr, ConfigError> {
    check_address(listen).map_err(|e| invalid(format!("--listen: {e}")))?;
    listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| invalid(format!("--listen: cannot resolve {listen:?}")))
}

/// Read the file named by `--config` (if any).
pub fn read_file(path: &Path) -> Result<ManagerFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl ManagerConfig {
    /// Merge flags over the file and check the result.
    pub fn load(args: &ManagerArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ManagerFile::default(),
        };
        Self::resolve(file, args)
    }

    fn resolve(file: ManagerFile, args: &ManagerArgs) -> Result<Self, ConfigError> {
        let id = args.id.or(file.id).ok_or_else(|| {
            invalid("missing manager id: give --id N or `id = N` in the config file")
        })?;
        if id == 0 {
            return Err(invalid("manager id 0 is reserved: use a positive number"));
        }
        let data_dir = args.data_dir.clone().or(file.data_dir).ok_or_else(|| {
            invalid("missing data directory: give --data-dir DIR or `data_dir` in the config file")
        })?;

        let peers = match (&args.peers, &file.peers) {
            (Some(text), _) => Some(parse_peers(text)?),
            (None, Some(PeersSpec::Text(text))) => Some(parse_peers(text)?),
            (None, Some(PeersSpec::Table(table))) => {
                let mut peers = BTreeMap::new();
                for (k, v) in table {
                    insert_peer(&mut peers, k, v)?;
                }
                Some(peers)
            }
            (None, None) => None,
        };
        let join = args.join || file.join.unwrap_or(false);
        // Recovery re-forms the group from the data directory alone.
        let peers = if args.force_new_cluster { None } else { peers };
        let membership = match (peers, join) {
            (Some(_), true) => {
                return Err(invalid("--peers and --join exclude each other: --peers forms a new group, --join waits to be added to one"))
            }
            (Some(peers), false) => {
                if !peers.contains_key(&id) {
                    return Err(invalid(format!(
                        "--peers does not list this manager's id {id}; list every initial voter, this one included"
                    )));
                }
                Membership::Peers(peers)
            }
            (None, true) => Membership::Join,
            (None, false) => Membership::Existing,
        };

        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .or_else(|| match &membership {
                Membership::Peers(p) => p.get(&id).cloned(),
                _ => None,
            })
            .ok_or_else(|| invalid("missing listen address: give --listen HOST:PORT"))?;
        let listen = resolve_listen(&listen_text)?;

        let advertise = match (args.advertise.clone().or(file.advertise), &membership) {
            (Some(a), _) => {
                check_address(&a).map_err(|e| invalid(format!("--advertise: {e}")))?;
                a
            }
            (None, Membership::Peers(p)) => p.get(&id).cloned().unwrap_or_default(),
            (None, _) => {
                if listen.ip().is_unspecified() {
                    return Err(invalid(format!(
                        "--listen {listen_text} is a wildcard address: give --advertise HOST:PORT, the address others use to reach this manager"
                    )));
                }
                listen_text.clone()
            }
        };
        if let Membership::Peers(p) = &membership {
            let mine = &p[&id];
            if *mine != advertise {
                return Err(invalid(format!(
                    "--peers gives manager {id} the address {mine}, but it advertises {advertise}"
                )));
            }
            check_listen_matches(id, listen, mine)?;
        }

        let log_format = file.log_format.as_deref().unwrap_or("text");
        let json_logs = match log_format {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(format!(
                    "log_format {other:?}: use \"text\" or \"json\""
                )))
            }
        };

        let metrics_listen = match args.metrics_listen.clone().or(file.metrics_listen) {
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| invalid(format!("metrics_listen {text:?} must be IP:PORT")))?,
            ),
            None => None,
        };
        let raft = &file.raft;
        let heartbeat_interval = duration(
            "heartbeat_interval",
            raft.heartbeat_interval.as_deref(),
            100,
        )?;
        let election_timeout_min = duration(
            "election_timeout_min",
            raft.election_timeout_min.as_deref(),
            300,
        )?;
        let election_timeout_max = duration(
            "election_timeout_max",
            raft.election_timeout_max.as_deref(),
            450,
        )?;
        if heartbeat_interval * 3 > election_timeout_min
            || election_timeout_min >= election_timeout_max
        {
            return Err(invalid(
                "raft timing: need 3 × heartbeat_interval ≤ election_timeout_min < election_timeout_max",
            ));
        }
        let snapshot_logs = raft.snapshot_logs.unwrap_or(1000);
        if snapshot_logs < 10 {
            return Err(invalid("raft.snapshot_logs must be at least 10"));
        }

        let tls_paths = TlsPaths {
            ca: args.tls_ca.clone(),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        }
        .over(&file.tls);
        let tls = tls_paths
            .load(true, &security::CONFIG_NAMES)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(tls) = &tls {
            let host = advertise
                .rsplit_once(':')
                .map_or(advertise.as_str(), |(h, _)| h);
            tls.check_server_name(host)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if tls.is_none() {
            let mut plaintext = vec![
                Plaintext {
                    what: "listens on",
                    address: &listen_text,
                },
                Plaintext {
                    what: "advertises",
                    address: &advertise,
                },
            ];
            if let Membership::Peers(peers) = &membership {
                plaintext.extend(peers.values().map(|address| Plaintext {
                    what: "dials a manager at",
                    address,
                }));
            }
            let insecure = args.insecure || file.insecure.unwrap_or(false);
            exposure::check("manager", &plaintext, insecure).map_err(invalid)?;
        }
        let http_tls = security::http_config(&file.tls).map_err(|e| invalid(e.to_string()))?;
        let api_token = match args
            .api_token_file
            .as_ref()
            .or(file.api_token_file.as_ref())
        {
            Some(path) => Some(Token::from_file(path).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };

        Ok(ManagerConfig {
            tls,
            http_tls,
            api_token,
            id,
            listen,
            advertise,
            data_dir,
            membership,
            json_logs,
            metrics_listen,
            force_new_cluster: args.force_new_cluster,
            heartbeat_interval,
            election_timeout_min,
            election_timeout_max,
            fsync: raft.fsync.unwrap_or(true),
            snapshot_logs,
        })
    }
}

/// A manager must listen where `--peers` says it can be reached (or on a
/// wildcard address with that port).
fn check_listen_matches(
    id: NodeId,
    listen: SocketAddr,
    peer_address: &str,
) -> Result<(), ConfigError> {
    let Some(peer) = peer_address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        // A name that does not resolve here may resolve for the others;
        // only the port can be checked.
        return Ok(());
    };
    let same_port = peer.port() == listen.port();
    let same_ip = listen.ip().is_unspecified() || listen.ip() == peer.ip();
    if same_port && same_ip {
        Ok(())
    } else {
        Err(invalid(format!(
            "--peers gives manager {id} the address {peer_address}, but it listens on {listen}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(id: u64, listen: &str, peers: &str) -> ManagerArgs {
        ManagerArgs {
            id: Some(id),
            listen: Some(listen.to_string()),
            data_dir: Some("/tmp/x".into()),
            peers: Some(peers.to_string()),
            ..ManagerArgs::default()
        }
    }

    #[test]
    fn peers_parse_and_check() {
        let p = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=127.0.0.1:7003").unwrap();
        assert_eq!(p.len(), 3);
        assert!(parse_peers("1=127.0.0.1:7001,1=127.0.0.1:7002").is_err());
        assert!(parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7001").is_err());
        assert!(parse_peers("0=127.0.0.1:7001").is_err());
        assert!(parse_peers("1:127.0.0.1:7001").is_err());
    }

    #[test]
    fn id_must_match_its_peer_address() {
        let peers = "1=127.0.0.1:7001,2=127.0.0.1:7002";
        assert!(
            ManagerConfig::resolve(ManagerFile::default(), &args(1, "127.0.0.1:7001", peers))
                .is_ok()
        );
        let err = ManagerConfig::resolve(ManagerFile::default(), &args(1, "127.0.0.1:7002", peers))
            .unwrap_err();
        assert!(err.to_string().contains("listens on"), "{err}");
        let err = ManagerConfig::resolve(ManagerFile::default(), &args(3, "127.0.0.1:7003", peers))
            .unwrap_err();
        assert!(err.to_string().contains("does not list"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<ManagerFile>("id = 1\nlisten_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn file_and_flags_merge() {
        let file: ManagerFile = toml::from_str(
            "id = 2\ndata_dir = \"/tmp/m2\"\n[peers]\n1 = \"127.0.0.1:7001\"\n2 = \"127.0.0.1:7002\"\n",
        )
        .unwrap();
        let c = ManagerConfig::resolve(file, &ManagerArgs::default()).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.advertise, "127.0.0.1:7002");
        assert_eq!(c.listen.port(), 7002);
    }
}
