//! When the keeper must act: pure functions of the lease it holds and the
//! boot-clock time. The keeper's loop (`server.rs`) only carries them out.
//!
//! Every question has one rule:
//! * [`must_fence`] — must PostgreSQL stop now?
//! * [`may_start`] — may PostgreSQL be started now?
//! * [`may_feed`] — may the hardware watchdog be fed now?
//! * [`gates_commits`] — should the keeper stand as its server's
//!   synchronous standby (the commit gate)?
//! * [`may_acknowledge`] — may the gate acknowledge WAL now?
//! * [`watchdog_timeout_s`] — which watchdog timeout fits a lease ttl?
//! * [`sleep_ms`] — how long may the keeper sleep before it must look again?

use serde::{Deserialize, Serialize};

/// Stop PostgreSQL this long before the lease ends, so that it is down by
/// the time the lease does: stopping and killing the postmaster and its
/// children takes a few milliseconds, and the keeper wakes at most this late
/// (see [`sleep_ms`]). The leader waits the booked lease plus its own
/// margin on top of this.
pub const FENCE_LEAD_MS: u64 = 300;

/// The keeper looks again at least this often (reaping its child, feeding
/// the watchdog, signals).
pub const MAX_SLEEP_MS: u64 = 100;

/// The lease the keeper enforces, on the boot clock (CLOCK_BOOTTIME ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lease {
    /// No lease is involved: the server is a replica, stopped, or has no
    /// role. The keeper never stops it on its own.
    #[default]
    None,
    /// The node is (or is becoming) the primary of `epoch`: its server may
    /// run only until `deadline`.
    Until { epoch: u64, deadline: u64 },
    /// The primary of `epoch` while the cluster is paused: nobody is
    /// promoted while paused, so the lease has no deadline until the
    /// leader bounds it again after a resume.
    Open { epoch: u64 },
}

impl Lease {
    /// The epoch the lease belongs to (0 for none).
    pub fn epoch(self) -> u64 {
        match self {
            Lease::None => 0,
            Lease::Until { epoch, .. } | Lease::Open { epoch } => epoch,
        }
    }

    /// Milliseconds of lease left at `now` for `epoch`: `u64::MAX` when
    /// held open, 0 when there is none (or it belongs to another epoch).
    pub fn remaining(self, epoch: u64, now: u64) -> u64 {
        match self {
            Lease::Until { epoch: e, deadline } if e == epoch => deadline.saturating_sub(now),
            Lease::Open { epoch: e } if e == epoch => u64::MAX,
            _ => 0,
        }
    }
}

/// PostgreSQL must be stopped now: the node holds a bounded lease that
/// ends within [`FENCE_LEAD_MS`]. Whatever the server's role — a would-be
/// primary still starting or promoting is stopped too.
pub fn must_fence(lease: Lease, now: u64) -> bool {
    matches!(lease, Lease::Until { deadline, .. } if now + FENCE_LEAD_MS >= deadline)
}

/// PostgreSQL may be started: not for a would-be primary whose lease is
/// (about to be) over. A replica (no lease) always may.
pub fn may_start(lease: Lease, now: u64) -> bool {
    !must_fence(lease, now)
}

/// The watchdog may be fed at `now` only if, fed now, it cannot fire later
/// than the lease ends: a keeper that hangs right after feeding it then
/// reboots the host before the leader may promote anybody else.
pub fn may_feed(lease: Lease, now: u64, timeout_ms: u64) -> bool {
    match lease {
        Lease::None => false,
        Lease::Open { .. } => true,
        Lease::Until { deadline, .. } => now + timeout_ms <= deadline,
    }
}

/// The keeper stands as its server's synchronous standby (the commit
/// gate, see `gate.rs`) while it holds a lease: the server is, or is
/// becoming, the primary. A replica or a stopped node needs no gate.
pub fn gates_commits(lease: Lease) -> bool {
    lease != Lease::None
}

/// The gate may acknowledge WAL — let commits complete — only while the
/// server may run: exactly when the keeper would not fence it. After a
/// freeze that outlasted the lease nothing is acknowledged, whatever runs
/// first on the thawed host.
pub fn may_acknowledge(lease: Lease, now: u64) -> bool {
    gates_commits(lease) && !must_fence(lease, now)
}

/// The watchdog timeout (whole seconds, as the kernel takes it) for a
/// lease ttl: the longest that still leaves the keeper's fence lead, so
/// that the feeding window [grant, deadline − timeout] is not empty. `None`
/// when the ttl is too short for any (under 1.3 s).
pub fn watchdog_timeout_s(ttl_ms: u64) -> Option<u32> {
    let s = ttl_ms.saturating_sub(FENCE_LEAD_MS) / 1000;
    (s >= 1).then(|| s.min(u32::MAX as u64) as u32)
}

/// How long the keeper may sleep at `now`: until the fence is due (unless
/// it was `fenced` for this lease already), at most [`MAX_SLEEP_MS`].
pub fn sleep_ms(lease: Lease, now: u64, fenced: bool) -> u64 {
    match lease {
        Lease::Until { .. } if fenced => MAX_SLEEP_MS,
        Lease::Until { deadline, .. } => deadline
            .saturating_sub(FENCE_LEAD_MS)
            .saturating_sub(now)
            .min(MAX_SLEEP_MS),
        _ => MAX_SLEEP_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTIL: Lease = Lease::Until {
        epoch: 3,
        deadline: 10_000,
    };

    #[test]
    fn fences_at_deadline_minus_lead_and_only_bounded_leases() {
        assert!(!must_fence(UNTIL, 9_699));
        assert!(must_fence(UNTIL, 9_700));
        assert!(must_fence(UNTIL, 20_000));
        assert!(!must_fence(Lease::None, 20_000));
        assert!(!must_fence(
            Lease::Open { epoch: 3 },
            u64::MAX - FENCE_LEAD_MS
        ));
    }

    #[test]
    fn starts_only_within_the_lease() {
        assert!(may_start(UNTIL, 9_000));
        assert!(!may_start(UNTIL, 9_800));
        assert!(may_start(Lease::None, 99_999));
        assert!(may_start(Lease::Open { epoch: 1 }, 99_999));
    }

    #[test]
    fn feeds_only_when_the_watchdog_cannot_outlast_the_lease() {
        assert!(may_feed(UNTIL, 9_000, 1_000));
        assert!(!may_feed(UNTIL, 9_001, 1_000));
        assert!(!may_feed(Lease::None, 0, 1_000));
        assert!(may_feed(Lease::Open { epoch: 3 }, 123_456, 1_000));
    }

    #[test]
    fn acknowledges_only_while_the_lease_lets_the_server_run() {
        assert!(gates_commits(UNTIL));
        assert!(gates_commits(Lease::Open { epoch: 3 }));
        assert!(!gates_commits(Lease::None));
        assert!(may_acknowledge(UNTIL, 9_699));
        assert!(!may_acknowledge(UNTIL, 9_700));
        assert!(!may_acknowledge(UNTIL, 50_000));
        assert!(may_acknowledge(Lease::Open { epoch: 3 }, u64::MAX / 2));
        assert!(!may_acknowledge(Lease::None, 0));
    }

    #[test]
    fn watchdog_timeout_leaves_the_fence_lead() {
        assert_eq!(watchdog_timeout_s(2_000), Some(1));
        assert_eq!(watchdog_timeout_s(1_299), None);
        assert_eq!(watchdog_timeout_s(1_300), Some(1));
        assert_eq!(watchdog_timeout_s(10_000), Some(9));
        assert_eq!(watchdog_timeout_s(0), None);
    }

    #[test]
    fn sleeps_until_the_fence_is_due() {
        assert_eq!(sleep_ms(UNTIL, 9_650, false), 50);
        assert_eq!(sleep_ms(UNTIL, 9_800, false), 0);
        assert_eq!(sleep_ms(UNTIL, 9_800, true), MAX_SLEEP_MS);
        assert_eq!(sleep_ms(UNTIL, 0, false), MAX_SLEEP_MS);
        assert_eq!(sleep_ms(Lease::None, 0, false), MAX_SLEEP_MS);
    }

    #[test]
    fn remaining_is_per_epoch() {
        assert_eq!(UNTIL.remaining(3, 9_000), 1_000);
        assert_eq!(UNTIL.remaining(4, 9_000), 0);
        assert_eq!(UNTIL.remaining(3, 11_000), 0);
        assert_eq!(Lease::Open { epoch: 2 }.remaining(2, 5), u64::MAX);
        assert_eq!(Lease::None.remaining(0, 5), 0);
    }
}
