//! Locks: a `std::sync::Mutex` whose previous holder panicked (every
//! mutex in pgquorum guards data that each critical section leaves
//! consistent, so the data is used rather than the panic spread), and the
//! exclusive file locks that keep one agent and one keeper per node.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// An exclusive lock on `path` (created if missing), held until dropped
/// (or the process ends). `Ok(None)` when another process holds it.
pub fn exclusive_file(path: &Path) -> std::io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}
