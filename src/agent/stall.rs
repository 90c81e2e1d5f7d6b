//! A test-only fault: stall the agent's async runtime on demand, as a
//! blocking call on every worker thread would (a stuck disk, a hung
//! library call). Off unless the agent runs with [`HOOK_ENV`] set; then
//! writing a number of milliseconds to `STATE_DIR/stall` blocks every
//! runtime worker that long. The keeper must still fence on time.

use std::path::PathBuf;
use std::time::Duration;

/// The environment variable that enables the hook.
pub const HOOK_ENV: &str = "PGQUORUM_TEST_STALL_HOOK";

/// Watch for stall requests (only when the hook is enabled).
pub fn spawn(state_dir: PathBuf) {
    if std::env::var_os(HOOK_ENV).is_none() {
        return;
    }
    tracing::warn!("{HOOK_ENV} is set: the runtime-stall test hook is active");
    let request = state_dir.join("stall");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(text) = std::fs::read_to_string(&request) else {
                continue;
            };
            let _ = std::fs::remove_file(&request);
            let Ok(ms) = text.trim().parse::<u64>() else {
                continue;
            };
            tracing::warn!(ms, "stalling every runtime worker (test hook)");
            // Twice as many blocking tasks as workers: every worker gets
            // one, whatever the scheduler does with the others.
            let workers = tokio::runtime::Handle::current().metrics().num_workers();
            for _ in 0..workers * 2 {
                tokio::spawn(async move { std::thread::sleep(Duration::from_millis(ms)) });
            }
        }
    });
}
