//! What travels between an agent and the manager leader.
//!
//! Reports go up with every heartbeat; lease grants and epoch-stamped
//! commands come down. The decision core consumes [`NodeReport`]s and
//! produces [`AgentCommand`]s, so these types are shared by both ends and by
//! the simulation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lsn::Lsn;
use super::state::Tags;

/// The first message an agent sends: who it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub cluster: String,
    pub node: String,
    /// Address other nodes use to reach this node's PostgreSQL.
    pub host: String,
    pub port: u16,
    /// The agent's HTTP address.
    pub http: String,
    pub tags: Tags,
}

/// The manager's answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationReply {
    pub epoch: u64,
    pub primary: Option<String>,
}

/// A manager's answer to "who leads?".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeaderHint {
    /// The manager that answers.
    pub manager: u64,
    /// Its Raft term: the highest term's answer is the freshest.
    pub term: u64,
    /// The leader it knows of, and its address.
    pub leader: Option<u64>,
    pub leader_address: Option<String>,
}

/// What the agent is busy with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentPhase {
    /// Waiting for a command; PostgreSQL may or may not run.
    #[default]
    Idle,
    Bootstrapping,
    Cloning,
    Rewinding,
    Starting,
    Stopping,
    Promoting,
    /// PostgreSQL was stopped because the lease ran out (or on command).
    Fenced,
}

impl AgentPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentPhase::Idle => "idle",
            AgentPhase::Bootstrapping => "bootstrapping",
            AgentPhase::Cloning => "cloning",
            AgentPhase::Rewinding => "rewinding",
            AgentPhase::Starting => "starting",
            AgentPhase::Stopping => "stopping",
            AgentPhase::Promoting => "promoting",
            AgentPhase::Fenced => "fenced",
        }
    }
}

/// What the agent found in its data directory (read without a running
/// server, from the files and `pg_controldata`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataDirState {
    /// Missing or empty: can be bootstrapped or cloned into.
    #[default]
    Empty,
    /// A PostgreSQL data directory.
    Valid {
        system_identifier: u64,
        /// Timeline of the latest checkpoint.
        timeline: u32,
        /// `standby.signal` is present.
        standby: bool,
        /// Shut down cleanly (pg_rewind needs that).
        clean_shutdown: bool,
        /// "Latest checkpoint location": after a clean shutdown, the end of
        /// everything this server wrote.
        checkpoint_lsn: Lsn,
    },
    /// Something else is there: the agent refuses to touch it.
    Foreign { reason: String },
}

/// A replica connected to this primary (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaConnection {
    pub application_name: String,
    pub state: String,
    pub flush_lsn: Lsn,
    pub replay_lsn: Lsn,
    /// `async`, `sync`, `quorum` or `potential`.
    pub sync_state: String,
}

/// This standby's WAL receiver (`pg_stat_wal_receiver`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalReceiver {
    pub status: String,
    pub sender_host: String,
    pub sender_port: u16,
}

/// A running, reachable PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PgStatus {
    /// `pg_is_in_recovery()`: the only source of truth for the role.
    pub in_recovery: bool,
    pub timeline: u32,
    pub system_identifier: u64,
    /// Primary: `pg_current_wal_lsn()`. Replica: replay LSN.
    pub lsn: Lsn,
    /// Primary: `pg_current_wal_flush_lsn()`. Replica: `pg_last_wal_receive_lsn()`
    /// (or the replay LSN when nothing was received yet).
    pub received_lsn: Lsn,
    pub replay_lsn: Lsn,
    pub wal_receiver: Option<WalReceiver>,
    pub replicas: Vec<ReplicaConnection>,
    /// `synchronous_standby_names` in effect.
    pub synchronous_standby_names: String,
    /// A changed parameter waits for a restart.
    pub pending_restart: bool,
}

/// One heartbeat from an agent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeReport {
    pub cluster: String,
    pub node: String,
    /// Increases with every report of one agent process; lease grants name
    /// the report they answer.
    pub seq: u64,
    /// Random per agent process, so that a restarted agent's sequence
    /// numbers are never confused with its predecessor's.
    pub session: u64,
    /// Highest epoch this agent has seen and persisted.
    pub epoch: u64,
    pub phase: AgentPhase,
    pub data: DataDirState,
    /// `None` while PostgreSQL is down or does not answer.
    pub postgres: Option<PgStatus>,
    /// The agent runs PostgreSQL as a primary (or is about to) and wants
    /// its lease renewed.
    pub wants_lease: bool,
    /// The agent believes it holds a valid lease right now.
    pub holds_lease: bool,
    /// Id of the last command the agent finished, and how.
    pub last_command: Option<CommandOutcome>,
    /// Operator action ids the agent has carried out.
    pub completed_action: Option<u64>,
    /// Version of the dynamic configuration the agent has applied.
    pub config_version: u64,
    /// The node this agent's PostgreSQL is configured to follow.
    pub upstream: Option<String>,
    /// The node's keeper holds its lease open (granted while paused).
    #[serde(default)]
    pub lease_open: bool,
    /// The report whose grant the keeper's current lease came from (0 when
    /// none in this agent process).
    #[serde(default)]
    pub lease_seq: u64,
    /// This agent will refuse to be made writable for this long (from when
    /// the report was sent): a failsafe promise to the primary, or an agent
    /// just started that cannot know whether it promised one.
    #[serde(default)]
    pub promise_ms: u64,
    /// How long PostgreSQL has not answered the agent at all (a running
    /// server that says nothing: frozen, or stuck in the kernel); 0 while
    /// it answers or is plainly down. `postgres` may then be the last
    /// picture, which a frozen server keeps looking healthy in.
    #[serde(default)]
    pub unresponsive_ms: u64,
    /// The node's keeper can stand as its commit gate (false from agents
    /// and keepers older than the gate): only then may the primary's
    /// commits wait for it.
    #[serde(default)]
    pub commit_gate: bool,
    /// The server's parameter catalog and the node's own parameters: in
    /// the first report of a session and after the server restarted, so
    /// that the leader can check `config set` (see `cluster::settings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<super::settings::ServerSettings>,
    /// The agent's own part of the configuration changed (a reload with
    /// new node parameters): it asks for the current settings again, to
    /// write them merged with its own.
    #[serde(default)]
    pub wants_config: bool,
    /// A replica holds copies of logical slots its server has not loaded:
    /// it asks for a restart (see `cluster::slots::restart_to_load`).
    #[serde(default)]
    pub restart_to_load_slots: bool,
    /// How many times this agent process has fenced its PostgreSQL (or
    /// seen its keeper do it): the leader records each fence in the
    /// history once.
    #[serde(default)]
    pub fences: u64,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub id: u64,
    pub ok: bool,
    pub message: String,
    /// The command's action ("restart", "follow"…); empty from older agents.
    #[serde(default)]
    pub action: String,
}

/// A PostgreSQL server as other nodes reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub node: String,
    pub host: String,
    pub port: u16,
}

/// Permission to run as the primary of `epoch` until the agent's clock
/// passes (send time of report `seq`) + `ttl_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub epoch: u64,
    pub session: u64,
    pub seq: u64,
    pub ttl_ms: u64,
    /// Granted while the cluster is paused: the lease holds with no
    /// deadline until a bounded grant replaces it (nobody is promoted while
    /// paused, so a primary may run on without its agent).
    #[serde(default)]
    pub hold: bool,
}

/// PostgreSQL settings the manager wants on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ManagedSettings {
    /// Operator parameters from the dynamic configuration.
    pub parameters: BTreeMap<String, String>,
    pub config_version: u64,
    /// `synchronous_standby_names` for a primary; empty for asynchronous.
    pub synchronous_standby_names: String,
    /// Stream through a replication slot, and keep slots for the other
    /// members. `None` from leaders older than slots, and in settings an
    /// agent makes up itself (a restarted agent detaching, say): slots are
    /// then left as they are.
    #[serde(default)]
    pub use_slots: Option<bool>,
    /// The permanent slots; `None` from leaders older than them (and in
    /// settings an agent makes up): left as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<super::slots::DeclaredSlots>,
}

/// An order to an agent. Every order is idempotent: replaying it does no harm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the first primary: initdb on an empty data directory, or adopt
    /// the one that is there; start it as primary (needs the lease).
    Bootstrap { settings: ManagedSettings },
    /// Start a stopped primary of the current epoch (needs the lease).
    StartPrimary { settings: ManagedSettings },
    /// Promote this standby (needs the lease). `settings` carries the
    /// synchronous standby names the new primary must have from its first
    /// commit on.
    Promote { settings: ManagedSettings },
    /// Be a streaming replica of `upstream`: clone when the data directory is
    /// empty, stop a running primary, rewind when the timeline diverged
    /// (re-clone when that fails and `reclone` allows), point
    /// `primary_conninfo` at it and (re)start or reload.
    Follow {
        upstream: Upstream,
        settings: ManagedSettings,
        reclone: bool,
    },
    /// Planned switchover: checkpoint, then stop the primary cleanly so that
    /// its replicas receive every byte of WAL; report the final LSN.
    Demote,
    /// Stop streaming from the old primary (before a failover in
    /// synchronous mode, so that it can no longer collect acknowledgements).
    Detach,
    /// Wipe the data directory and clone again from `upstream`.
    Reinit { upstream: Upstream, action_id: u64 },
    /// Stop PostgreSQL immediately (no shutdown checkpoint, sessions cut).
    Fence { reason: String },
    /// Restart PostgreSQL in its current role (with `pending_only`, only
    /// when a changed parameter waits for a restart).
    Restart {
        action_id: u64,
        #[serde(default)]
        pending_only: bool,
    },
    /// Apply managed settings and reload.
    Configure { settings: ManagedSettings },
    /// Re-read the agent's configuration file (as on SIGHUP) and reload
    /// PostgreSQL's (`pgquorum node reload`).
    Reload { action_id: u64 },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Bootstrap { .. } => "bootstrap",
            Action::StartPrimary { .. } => "start_primary",
            Action::Promote { .. } => "promote",
            Action::Follow { .. } => "follow",
            Action::Demote => "demote",
            Action::Detach => "detach",
            Action::Reinit { .. } => "reinit",
            Action::Fence { .. } => "fence",
            Action::Restart { .. } => "restart",
            Action::Configure { .. } => "configure",
            Action::Reload { .. } => "reload",
        }
    }
}

/// An epoch-stamped order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCommand {
    /// Unique per leader term and node; echoed in [`CommandOutcome`].
    pub id: u64,
    pub epoch: u64,
    pub action: Action,
}

/// Everything the leader sends down an agent's session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManagerMessage {
    /// First message of a session.
    Welcome {
        leader: u64,
        epoch: u64,
        heartbeat_interval_ms: u64,
        ttl_ms: u64,
    },
    Lease(LeaseGrant),
    Command(AgentCommand),
    /// Answer to every report: the primary's latest write LSN (for replica
    /// lag checks on the agent's HTTP endpoint).
    Ack {
        primary_lsn: Lsn,
        /// The leader confirmed its leadership with a quorum within the
        /// last two heartbeats: it can grant leases and decide. A leader
        /// that lost its quorum still answers, but counts for nothing.
        #[serde(default)]
        quorum: bool,
        /// The node is a member of the committed sync set (synchronous
        /// mode): Patroni's `/sync` and `/async` ask this.
        #[serde(default)]
        sync_standby: bool,
    },
    /// Send a report now (the leader waits for fresh facts from this node).
    Poll,
    /// The session is refused (unknown node, other cluster…).
    Refused {
        reason: String,
    },
    /// The cluster's members and the failsafe setting: sent at the start of
    /// a session and whenever they change. The agent keeps them (on disk),
    /// for failsafe mode while no manager can be reached.
    Members {
        members: Vec<Peer>,
        failsafe: bool,
    },
}

/// A member of the cluster as other agents reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// Its agent's HTTP address (HOST:PORT).
    pub http: String,
}

/// `POST /failsafe` from the primary's agent to every other agent, while
/// the primary cannot reach a manager leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeRequest {
    pub cluster: String,
    /// The primary asking.
    pub node: String,
    pub epoch: u64,
    /// How long the promise is asked for.
    pub ttl_ms: u64,
}

/// The answer: the promise, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeReply {
    /// For how long, from when it received the request, this node follows
    /// the primary and refuses to be made writable (0: no promise).
    pub promise_ms: u64,
    /// Why there is no promise.
    pub refused: Option<String>,
}
