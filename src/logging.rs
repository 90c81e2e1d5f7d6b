//! Structured logs through `tracing`: human-readable by default, JSON lines
//! for log shippers. `RUST_LOG` overrides the level.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `default_level` applies when `RUST_LOG`
/// is not set (daemons log `info`, CLI commands only `warn`).
pub fn init(json: bool, default_level: &str) {
    use std::io::IsTerminal;
    // openraft narrates every election at info; keep its warnings only.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},openraft=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.with_target(false).try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
