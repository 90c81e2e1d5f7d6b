//! User callbacks: scripts run on role changes, starts and stops (to move a
//! DNS name or a virtual IP). Run with a timeout, never waited on by the
//! caller, their failure only logged: a broken script must not stall
//! failover.

use std::path::PathBuf;
use std::time::Duration;

use super::node::Node;

/// Events a callback can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    RoleChange,
    Start,
    Stop,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::RoleChange => "on_role_change",
            Event::Start => "on_start",
            Event::Stop => "on_stop",
        }
    }
}

/// Run the script for `event`, if one is configured, in the background:
/// `SCRIPT EVENT ROLE CLUSTER`.
pub fn fire(node: &Node, event: Event, role: &str) {
    let c = node.live();
    let script: Option<PathBuf> = match event {
        Event::RoleChange => c.on_role_change,
        Event::Start => c.on_start,
        Event::Stop => c.on_stop,
    };
    let Some(script) = script else { return };
    let (cluster, timeout, role) = (
        node.config.cluster.clone(),
        c.callback_timeout,
        role.to_string(),
    );
    tokio::spawn(async move { run(script, event, role, cluster, timeout).await });
}

async fn run(script: PathBuf, event: Event, role: String, cluster: String, timeout: Duration) {
    let mut cmd = tokio::process::Command::new(&script);
    cmd.arg(event.name())
        .arg(&role)
        .arg(&cluster)
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(script = %script.display(), event = event.name(), role, "callback done");
        }
        Ok(Ok(out)) => tracing::warn!(
            script = %script.display(),
            event = event.name(),
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "callback failed"
        ),
        Ok(Err(e)) => {
            tracing::warn!(script = %script.display(), error = %e, "callback could not run")
        }
        Err(_) => {
            tracing::warn!(script = %script.display(), ?timeout, "callback timed out and was killed")
        }
    }
}
