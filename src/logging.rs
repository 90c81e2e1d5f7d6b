//! Structured logs through `tracing`: human-readable by default, JSON lines
//! for log shippers. `RUST_LOG` overrides the level.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `default_level` applies when `RUST_LOG`
/// is not set (daemons log `info`, CLI commands only `warn`).
pub fn init(json: bool, default_level: &str) {
    init_with(json, default_level, std::io::stderr);
}

/// Logging that never blocks the caller: lines go to stderr from a thread
/// of their own, and are dropped rather than waited for when it falls
/// behind (a log file on a stuck disk). For the keeper, whose loop must
/// never wait; keep the guard for the life of the process (it flushes).
pub fn init_nonblocking(default_level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stderr());
    init_with(false, default_level, writer);
    guard
}

fn init_with<W>(json: bool, default_level: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    // openraft narrates every election at info; keep its warnings only.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},openraft=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let result = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.with_target(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
