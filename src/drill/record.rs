//! What a drill writes down, and all its checker reads: every write attempt
//! (`writes.jsonl`), everything that happened to the cluster
//! (`events.jsonl`), and the rows the final primary holds (`final.json`).
//! The files are the interface between running a drill and judging it, so
//! that a drill can be judged again later (`pgquorum drill --check DIR`).
//!
//! Times are wall-clock milliseconds since 1970: the managers' history
//! stamps its decisions the same way, and everything runs on one machine.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const WRITES: &str = "writes.jsonl";
pub const EVENTS: &str = "events.jsonl";
pub const FINAL: &str = "final.json";

/// Milliseconds since 1970 now.
pub fn now_ms() -> u64 {
    crate::wallclock::unix_ms()
}

/// One write attempt and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The writer: 1.. for clients through the multi-host connection
    /// string, 1000 + i for the direct writer of node i.
    pub client: u32,
    pub seq: u64,
    /// The node a direct writer writes to; None through the multi-host string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the INSERT was sent, and when its outcome came back.
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
}

/// How a write attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Outcome {
    /// Committed and acknowledged by `server` (a node name) on `timeline`.
    Acked { server: String, timeline: u32 },
    /// Not acknowledged: refused, failed or timed out (it may still have
    /// been committed; the checker never counts it either way).
    Failed { error: String },
}

impl Attempt {
    pub fn acked(&self) -> Option<(&str, u32)> {
        match &self.outcome {
            Outcome::Acked { server, timeline } => Some((server, *timeline)),
            Outcome::Failed { .. } => None,
        }
    }
}

/// What happened to the cluster, stamped with when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// The settings a drill ran with, as the checker needs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    pub seed: u64,
    pub sync: bool,
    pub nodes: Vec<String>,
    pub managers: usize,
    pub namespaces: bool,
    pub colocated: bool,
    pub overlap: bool,
    /// The primary's lease (the cluster's `ttl`).
    pub ttl_ms: u64,
    /// The command line that reproduces this drill.
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The cluster is up and the workload runs.
    Started { setup: Setup },
    /// A fault was injected. `hosts` are the hosts it hit; `primary` the
    /// primary at the time; `target` the role of the node a node fault
    /// hit ("primary" or "replica"; empty for the others).
    Fault {
        id: u32,
        kind: String,
        hosts: Vec<String>,
        primary: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        target: String,
        detail: String,
    },
    /// The fault was undone.
    Healed { id: u32 },
    /// After fault `id` was healed, the cluster was whole again: a healthy
    /// primary, every other node streaming, and writes acknowledged.
    Converged { id: u32, took_ms: u64 },
    /// ... or was not, within the bound.
    NotConverged {
        id: u32,
        waited_ms: u64,
        state: String,
    },
    /// A decision in the managers' history (bootstrap, failover,
    /// switchover…): from `at_ms` on, `primary` is the only node that may
    /// acknowledge writes.
    Epoch {
        epoch: u64,
        kind: String,
        primary: String,
        old_primary: String,
        reason: String,
    },
    /// An operator command the drill issued, and the managers' answer.
    Operation {
        id: u32,
        command: String,
        accepted: bool,
        answer: String,
    },
    /// A fault drawn from the plan could not run now (no replica to
    /// isolate, it would overlap an active fault...), or failed and was
    /// undone.
    Skipped { kind: String, why: String },
    /// The drill was stopped early (Ctrl-C, an error): the checks below
    /// cover only what ran.
    Interrupted { why: String },
}

/// The rows found on the final primary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRows {
    pub primary: String,
    pub at_ms: u64,
    /// (client, seq) of every row.
    pub rows: Vec<(u32, u64)>,
}

/// Appends JSON lines to a file, one call per record.
pub struct JsonLines {
    file: std::io::BufWriter<std::fs::File>,
}

impl JsonLines {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(JsonLines {
            file: std::io::BufWriter::new(std::fs::File::create(path)?),
        })
    }

    pub fn append<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.file, record)?;
        self.file.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Everything a drill wrote down.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub events: Vec<Stamped>,
    pub attempts: Vec<Attempt>,
    pub final_rows: Option<FinalRows>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}; is this the directory of a drill (--dir)?")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, ReadError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: name.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ReadError::Io {
            path: name.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| ReadError::Parse {
                path: name.clone(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

impl Log {
    /// Read a drill's files from `dir`. A missing `final.json` (the drill
    /// never got to read the final primary) is not an error here: the
    /// checker reports it.
    pub fn read(dir: &Path) -> Result<Log, ReadError> {
        let events = read_lines(&dir.join(EVENTS))?;
        let attempts = read_lines(&dir.join(WRITES))?;
        let final_path = dir.join(FINAL);
        let final_rows = match std::fs::read(&final_path) {
            Ok(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|source| ReadError::Parse {
                        path: final_path.display().to_string(),
                        line: 1,
                        source,
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ReadError::Io {
                    path: final_path.display().to_string(),
                    source,
                })
            }
        };
        Ok(Log {
            events,
            attempts,
            final_rows,
        })
    }

    pub fn setup(&self) -> Option<&Setup> {
        self.events.iter().find_map(|e| match &e.event {
            Event::Started { setup } => Some(setup),
            _ => None,
        })
    }
}
