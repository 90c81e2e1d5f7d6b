//! What the agent and the keeper say to each other: one JSON object per
//! line over the keeper's Unix socket, each request answered by one reply.
//!
//! The keeper outlives agent upgrades, so both sides must tolerate the
//! other being newer: unknown fields are ignored and new fields have
//! defaults. A request the keeper does not know is answered with
//! [`Reply::Error`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::gate::{GateSpec, GateStatus};
use super::rule::Lease;

/// Longest line either side accepts (a start request with its environment
/// is the longest message).
pub const MAX_LINE: usize = 1024 * 1024;

/// The socket's file name in the keeper's directory.
pub const SOCKET: &str = "keeper.sock";
/// The lock file a keeper holds for its whole life (one keeper per directory).
pub const LOCK: &str = "keeper.lock";
/// The keeper's pid, for people and `sandbox` (the lock is the truth).
pub const PID_FILE: &str = "keeper.pid";

/// The agent's requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first request of a connection: the agent names the data
    /// directory it drives, which must be the keeper's.
    Attach {
        data_dir: PathBuf,
        /// Where the commit gate reaches the server (none: no gate).
        #[serde(default)]
        gate: Option<GateSpec>,
    },
    /// The keeper's state.
    Status,
    /// Enforce this lease from now on, and arm the watchdog with it when
    /// `watchdog` is given (disarmed when the lease is `None`).
    Lease {
        lease: Lease,
        #[serde(default)]
        watchdog: Option<WatchdogSpec>,
    },
    /// Start PostgreSQL as the keeper's child.
    Start(StartSpec),
    /// Does this look like a watchdog the keeper can arm and disarm? (Not
    /// tried by arming it: opening a watchdog starts its countdown.)
    ProbeWatchdog(WatchdogSpec),
}

/// The hardware watchdog to arm while a lease is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogSpec {
    pub device: PathBuf,
    /// Seconds; see [`super::rule::watchdog_timeout_s`].
    pub timeout_s: u32,
}

/// How to start the postmaster: program, arguments and the complete
/// environment (the keeper's own is not passed on), as the driver builds
/// them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Switch to this user and group (only when the keeper runs as root).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Where the server's stdout and stderr go (appended).
    pub log_file: PathBuf,
    /// Working directory (the data directory).
    pub cwd: PathBuf,
}

/// The keeper's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    State(KeeperState),
    Started { pid: i32 },
    Error { message: String },
}

/// What the keeper holds and sees.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeeperState {
    /// The keeper's process id.
    pub pid: u32,
    /// The keeper's pgquorum version.
    pub version: String,
    /// The keeper's boot-clock time when it answered.
    pub now: u64,
    pub lease: Lease,
    /// The postmaster the keeper started, while it runs.
    pub postmaster: Option<i32>,
    /// How the keeper's last postmaster ended.
    pub last_exit: Option<String>,
    /// How many times the keeper stopped PostgreSQL because the lease ran
    /// out (the agent notices a fence by this number changing).
    pub fences: u64,
    pub watchdog: WatchdogStatus,
    /// The commit gate; `None` from a keeper too old to have one.
    pub gate: Option<GateStatus>,
}

/// The hardware watchdog as the keeper has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchdogStatus {
    pub armed: bool,
    pub device: Option<PathBuf>,
    pub timeout_s: u32,
    /// Why the last attempt to arm it failed.
    pub error: Option<String>,
    pub feeds: u64,
}

/// One message as a line.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; an empty object keeps the
    // line protocol intact if it ever did.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_tolerate_new_fields() {
        let r = Request::Lease {
            lease: Lease::Until {
                epoch: 2,
                deadline: 99,
            },
            watchdog: None,
        };
        let line = encode(&r);
        assert_eq!(line.last(), Some(&b'\n'));
        let back: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
        let newer = r#"{"reply":"state","pid":7,"lease":{"kind":"open","epoch":3},"shiny":1}"#;
        let Reply::State(s) = serde_json::from_str::<Reply>(newer).unwrap() else {
            panic!("not a state");
        };
        assert_eq!(s.pid, 7);
        assert_eq!(s.lease, Lease::Open { epoch: 3 });
    }
}
