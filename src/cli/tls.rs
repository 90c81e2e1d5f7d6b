//! `pgquorum tls init DIR`: certificates and a token for a test deployment.

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::output::{print, Failure};
use super::GlobalArgs;
use crate::security::init;

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a CA, a node certificate (managers and agents), a client
    /// certificate (CLI) and an API token in DIR; never overwrites.
    Init {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Host names and IP addresses the node certificate is valid for:
        /// every address managers are dialed by.
        #[arg(
            long,
            value_name = "HOST[,...]",
            value_delimiter = ',',
            default_value = "127.0.0.1,localhost"
        )]
        hosts: Vec<String>,
    },
}

#[derive(Serialize)]
struct Written {
    files: Vec<String>,
    hosts: Vec<String>,
}

pub fn run(global: &GlobalArgs, command: TlsCommand) -> Result<(), Failure> {
    match command {
        TlsCommand::Init { dir, hosts } => {
            let hosts: Vec<String> = hosts
                .into_iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect();
            let written = init::generate(&dir, &hosts).map_err(|e| match e {
                init::InitError::Exists(_)
                | init::InitError::Host { .. }
                | init::InitError::NoHosts => Failure::usage(e),
                other => Failure::failed(other),
            })?;
            let out = Written {
                files: written.iter().map(|p| p.display().to_string()).collect(),
                hosts: hosts.clone(),
            };
            print(global.json, &out, || init::instructions(&dir, &hosts));
            Ok(())
        }
    }
}
