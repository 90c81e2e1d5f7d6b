//! `pgquorum cluster …`: clusters as a whole.

use clap::Subcommand;

use super::client::request;
use super::ops::{confirm, print_operation};
use super::output::Failure;
use super::GlobalArgs;
use crate::proto::api::ClusterRequest;

#[derive(Debug, Subcommand)]
pub enum ClustersCommand {
    /// Forget a whole cluster whose nodes are all gone (every agent and
    /// keeper stopped); data directories are not touched.
    Remove {
        /// The cluster's name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(global: &GlobalArgs, command: ClustersCommand) -> Result<(), Failure> {
    match command {
        ClustersCommand::Remove { name, force } => {
            confirm(
                &format!(
                    "Forget cluster {name} and its history (data directories are not touched)?"
                ),
                force,
            )?;
            let client = super::connect(global)?;
            let r = client
                .call(|mut api, t| {
                    let req = ClusterRequest {
                        cluster: name.clone(),
                        local: false,
                    };
                    async move { api.remove_cluster(request(req, t)).await }
                })
                .await?;
            print_operation(global, &r);
            Ok(())
        }
    }
}
