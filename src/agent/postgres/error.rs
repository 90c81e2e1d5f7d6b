//! Errors of the PostgreSQL driver.
//!
//! Every message names what failed, on which path or command, shows the end
//! of the program's output or server log, and says what to do next: the
//! agent reports these verbatim to the manager and the operator.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The last lines of a program's output or of the server log, shown at the
/// end of an error message (nothing when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail(pub String);

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0.trim();
        if t.is_empty() {
            Ok(())
        } else {
            write!(f, "\n--- last output ---\n{t}\n---")
        }
    }
}

/// Everything the driver can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL program `{program}` is missing from {dir}: point bin_dir at the directory \
         holding postgres, pg_ctl, initdb, pg_basebackup, pg_rewind and pg_controldata"
    )]
    MissingProgram { dir: PathBuf, program: &'static str },

    #[error(
        "no PostgreSQL server binaries found (tried {tried}): install the PostgreSQL server \
         package or set bin_dir"
    )]
    NoBinDir { tried: String },

    #[error(
        "OS user `{user}` to run PostgreSQL as is unusable: {detail}; PostgreSQL refuses to run \
         as root, so create that user or set os_user to an existing one"
    )]
    OsUser { user: String, detail: String },

    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not run {program}: {source}; check bin_dir and that the file is executable")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {hint}{tail}")]
    Failed {
        command: String,
        status: String,
        hint: String,
        tail: Tail,
    },

    #[error("`{command}` did not finish within {timeout:?} and was killed: {hint}{tail}")]
    Timeout {
        command: String,
        timeout: Duration,
        hint: String,
        tail: Tail,
    },

    #[error("`{command}` exited successfully but {problem}; {hint}{tail}")]
    BadResult {
        command: String,
        problem: String,
        hint: String,
        tail: Tail,
    },

    #[error(
        "no replica-creation method could clone from {from} (tried {tried}); the data directory \
         was left empty: fix the methods (postgresql.replica_methods) or the upstream\n{failures}"
    )]
    CloneFailed {
        from: String,
        tried: String,
        failures: String,
    },

    #[error("refusing to {action} {path}: {reason}; {hint}")]
    Refused {
        action: &'static str,
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },

    #[error("{what} on {target} failed: {source}; {hint}")]
    Sql {
        what: String,
        target: String,
        #[source]
        source: tokio_postgres::Error,
        hint: &'static str,
    },

    #[error(
        "{what} on {target} got no answer within {timeout:?}: the server is down, \
         overloaded or frozen"
    )]
    SqlTimeout {
        what: String,
        target: String,
        timeout: Duration,
    },

    #[error("invalid PostgreSQL configuration: {0}")]
    InvalidConfig(String),

    #[error(
        "PostgreSQL processes of {data_dir} are still alive after SIGKILL: {pids:?}; they are \
         probably stuck in uninterruptible I/O — do not promote another node until they are gone"
    )]
    FenceFailed { data_dir: PathBuf, pids: Vec<i32> },
}

impl PgError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PgError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The last `max_lines` lines (at most ~2000 bytes) of `text`.
pub(crate) fn tail_of(text: &str, max_lines: usize) -> Tail {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut out = lines[start..].join("\n");
    if out.len() > 2000 {
        let mut cut = out.len() - 2000;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("…{}", &out[cut..]);
    }
    Tail(out)
}

impl PgError {
    /// The server never answered in time: it was not refused, and it said
    /// nothing, not even an error. A frozen postmaster looks like this (the
    /// kernel still accepts connections on its socket); a server that is
    /// down refuses at once, and one starting up or overloaded says so.
    pub fn is_silence(&self) -> bool {
        match self {
            PgError::SqlTimeout { .. } => true,
            PgError::Sql { source, .. } => {
                let mut cause = std::error::Error::source(source);
                while let Some(c) = cause {
                    if c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                    {
                        return true;
                    }
                    cause = c.source();
                }
                false
            }
            _ => false,
        }
    }
}
