//! The keeper: the one thing that enforces the primary's lease, built to
//! outlive the agent's death and hang.
//!
//! The agent (the brain: tokio, gRPC, SQL) can crash, be OOM-killed, hang
//! or stall on a slow disk while its PostgreSQL runs on. If it alone held
//! the lease, a primary could keep taking writes after another node was
//! promoted. So the lease lives in a second, tiny process per node:
//!
//! * [`rule`] — pure rules: when to fence, when to feed the watchdog.
//! * [`server`] — the keeper process: a single-threaded `poll(2)` loop, the
//!   postmaster's parent (with a parent-death signal), the lease deadline
//!   on CLOCK_BOOTTIME.
//! * [`watchdog`] — the optional hardware watchdog, the backstop for a
//!   keeper that hangs.
//! * [`gate`] — the commit gate: the keeper as its primary's synchronous
//!   standby, acknowledging WAL only while the lease is valid.
//! * [`protocol`] — the JSON lines agent and keeper exchange.
//! * [`client`] — the agent's end of the socket.
//!
//! The agent renews the keeper's deadline whenever the leader grants a
//! lease. Killed, the agent leaves the keeper and PostgreSQL running: a
//! new agent process picks both up again (no failover, no restart); if it
//! does not come back in time the keeper stops PostgreSQL at the deadline
//! minus the fence lead. Killed, the keeper takes PostgreSQL with it.

pub mod client;
pub mod gate;
pub mod protocol;
pub mod rule;
pub mod server;
pub mod watchdog;

pub use client::{KeeperLink, KeeperLinkError};
pub use protocol::{KeeperState, StartSpec, WatchdogSpec};
pub use rule::Lease;

/// The pid of the keeper living in `dir`, if one runs (from its pid file,
/// checked against the live process).
pub fn running_pid(dir: &std::path::Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(protocol::PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_keeper = cmdline.split(|b| *b == 0).any(|arg| arg == b"keeper");
    (is_keeper && crate::process::alive(pid)).then_some(pid)
}
