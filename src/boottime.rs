//! The boot clock for leases: CLOCK_BOOTTIME, which keeps counting while
//! the machine is suspended (CLOCK_MONOTONIC, behind `Instant`, does not —
//! a primary resumed from suspend would think its lease still runs). The
//! agent and the keeper both read it, so their deadlines compare.

use nix::time::{clock_gettime, ClockId};

/// Milliseconds since boot, suspend included.
pub fn boot_ms() -> u64 {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000,
        // Every Linux since 2.6.39 has it; if not, fall back to monotonic
        // time, which is still safe while the machine is not suspended.
        Err(_) => match clock_gettime(ClockId::CLOCK_MONOTONIC) {
            Ok(ts) => ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000,
            Err(_) => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn moves_forward() {
        let a = super::boot_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(super::boot_ms() >= a + 5);
    }
}
