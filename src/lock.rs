//! Locking a `std::sync::Mutex` whose previous holder panicked: every
//! mutex in pgquorum guards data that each critical section leaves
//! consistent, so the data is used rather than the panic spread.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
