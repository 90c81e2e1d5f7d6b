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

/// Write `text` to stdout. A closed pipe (`pgquorum … | head`) ends the
/// command quietly, as other Unix tools do, instead of an error or a
/// panic. (SIGPIPE stays ignored, as Rust sets it: a socket whose peer
/// went away must be an error, not the end of the process.)
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
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
    out(&text);
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
