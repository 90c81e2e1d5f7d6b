//! SIGTERM and SIGINT for the daemons (manager, agent), caught from the
//! moment the process starts: a signal that arrives while a daemon is
//! still starting up stops it cleanly too, instead of killing it.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The stop signals, installed at once.
pub struct StopSignals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl StopSignals {
    /// Catch SIGTERM and SIGINT from now on.
    pub fn install() -> StopSignals {
        let catch = |kind, name| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch {name}");
                None
            }
        };
        StopSignals {
            term: catch(SignalKind::terminate(), "SIGTERM"),
            int: catch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn wait(&mut self) {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => {}
            _ = next(&mut self.int) => {}
        }
    }
}
