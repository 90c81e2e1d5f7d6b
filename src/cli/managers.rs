//! `pgquorum managers list|add|remove`.

use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;

use super::client::request;
use super::output::{print, table, Failure};
use super::GlobalArgs;
use crate::proto::api::{
    AddManagerRequest, ListManagersRequest, ManagerInfo, RemoveManagerRequest,
};

#[derive(Debug, Subcommand)]
pub enum ManagersCommand {
    /// Every manager: id, address, role, term, last applied index.
    List,
    /// Add a manager started with --join: it catches up as a learner, then votes.
    Add {
        /// Raft id of the new manager (never one a removed manager had).
        id: u64,
        /// Its gRPC address.
        #[arg(value_name = "HOST:PORT")]
        address: String,
    },
    /// Remove a manager from the group; its id is retired for good.
    Remove {
        /// Raft id of the manager to remove.
        id: u64,
    },
}

/// One row of `managers list --json`.
#[derive(Debug, Serialize)]
pub struct ManagerRow {
    pub id: u64,
    pub address: String,
    pub role: String,
    pub term: u64,
    pub last_applied: u64,
}

impl From<ManagerInfo> for ManagerRow {
    fn from(m: ManagerInfo) -> Self {
        ManagerRow {
            id: m.id,
            address: m.address,
            role: m.role,
            term: m.term,
            last_applied: m.last_applied,
        }
    }
}

/// The managers as a table.
pub fn render(rows: &[ManagerRow]) -> String {
    table(
        &["ID", "ADDRESS", "ROLE", "TERM", "LAST APPLIED"],
        rows.iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.address.clone(),
                    m.role.clone(),
                    m.term.to_string(),
                    m.last_applied.to_string(),
                ]
            })
            .collect(),
    )
}

pub async fn run(global: &GlobalArgs, command: ManagersCommand) -> Result<(), Failure> {
    let mut client = super::connect(global)?;
    let managers = match command {
        ManagersCommand::List => {
            client
                .call(|mut c, t| async move {
                    c.list_managers(request(ListManagersRequest {}, t)).await
                })
                .await?
                .managers
        }
        ManagersCommand::Add { id, address } => {
            crate::transport::check_address(&address).map_err(Failure::usage)?;
            if id == 0 {
                return Err(Failure::usage(
                    "manager id 0 is reserved: use a positive number",
                ));
            }
            client.timeout = Duration::from_secs(90);
            client
                .call(|mut c, t| {
                    let address = address.clone();
                    async move {
                        c.add_manager(request(AddManagerRequest { id, address }, t))
                            .await
                    }
                })
                .await?
                .managers
        }
        ManagersCommand::Remove { id } => {
            client
                .call(|mut c, t| async move {
                    c.remove_manager(request(RemoveManagerRequest { id }, t))
                        .await
                })
                .await?
                .managers
        }
    };
    let rows: Vec<ManagerRow> = managers.into_iter().map(ManagerRow::from).collect();
    print(global.json, &rows, || render(&rows));
    Ok(())
}
