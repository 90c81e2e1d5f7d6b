//! How the CLI talks back: tables for people, JSON for scripts, and exit
//! codes that mean something (0 done, 1 refused or failed, 2 usage).

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use super::client::ClientError;

/// A command that did not succeed, with the exit code it deserves.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Bad flags or arguments: exit 2.
    pub fn usage(message: impl Display) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    /// Refused or failed: exit 1.
    pub fn failed(message: impl Display) -> Self {
        Failure {
            code: 1,
            message: format!("{message:#}"),
        }
    }

    pub fn report(&self) -> ExitCode {
        eprintln!("error: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::failed(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::failed(e)
    }
}

/// Print `value` as JSON, or the human text `human` renders.
pub fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    let mut text = if json {
        match serde_json::to_string_pretty(value) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: cannot render JSON: {e}");
                return;
            }
        }
    } else {
        human()
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// A plain table with a header row.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    t.to_string()
}
