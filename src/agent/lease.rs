//! The primary's lease, as the agent books it. The keeper enforces it
//! ([`crate::keeper`]); this is the agent's half: which grants count, and
//! what the keeper last confirmed.
//!
//! The leader answers a report with a grant naming the report's sequence
//! number. The lease then ends at *the time the agent sent that report*
//! plus the ttl, on the boot clock — never later than the leader thinks,
//! since the leader counts from when it *received* the report. The agent
//! counts a lease as held only once the keeper has confirmed it: the
//! keeper is what stops PostgreSQL, so its deadline is the one that
//! matters.
//!
//! Nothing here waits: no disk, no lock held across I/O.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::boottime::boot_ms;
use crate::cluster::wire::LeaseGrant;
use crate::keeper::Lease as Held;
use crate::lock::lock;

/// How many send times are remembered (grants for older reports are late).
const REMEMBERED: usize = 256;

#[derive(Debug, Default)]
struct Sent {
    /// (sequence number, boot-clock ms when sent).
    times: VecDeque<(u64, u64)>,
    /// Grants answering reports up to this sequence number are ignored:
    /// the lease was released after they were sent.
    floor_seq: u64,
}

/// The agent's lease book.
pub struct Lease {
    session: u64,
    sent: Mutex<Sent>,
    /// What the keeper confirmed last, and the report whose grant it came
    /// from (0 when not from a grant of this process).
    held: Mutex<(Held, u64)>,
    /// A grant for an epoch this agent has not taken on yet (see
    /// [`Lease::keep_early`]).
    early: Mutex<Option<LeaseGrant>>,
}

impl Lease {
    /// The book of agent process `session`, starting from what the keeper
    /// holds (a lease a previous agent process obtained keeps running).
    pub fn new(session: u64, held: Held) -> Lease {
        Lease {
            session,
            sent: Mutex::new(Sent::default()),
            held: Mutex::new((held, 0)),
            early: Mutex::new(None),
        }
    }

    /// Remember when report `seq` was sent.
    pub fn sent(&self, seq: u64) {
        self.sent_at(seq, boot_ms());
    }

    /// [`Lease::sent`] at boot-clock time `now` (the simulation's clock).
    pub fn sent_at(&self, seq: u64, now: u64) {
        let mut s = lock(&self.sent);
        s.times.push_back((seq, now));
        while s.times.len() > REMEMBERED {
            s.times.pop_front();
        }
    }

    /// The lease a grant asks the keeper to hold, if it counts and changes
    /// anything: for this process's session, the current epoch, a report
    /// not released since, and ending in the future. A grant made while
    /// the cluster is paused (`hold`) holds the lease open; a bounded grant
    /// replaces an open lease (the cluster was resumed), otherwise only
    /// extends.
    pub fn grant(&self, g: &LeaseGrant, current_epoch: u64) -> Option<Held> {
        self.grant_at(g, current_epoch, boot_ms())
    }

    /// [`Lease::grant`] at boot-clock time `now`.
    pub fn grant_at(&self, g: &LeaseGrant, current_epoch: u64, now: u64) -> Option<Held> {
        let sent_at = {
            let s = lock(&self.sent);
            if g.session != self.session || g.epoch != current_epoch || g.seq <= s.floor_seq {
                return None;
            }
            s.times.iter().find(|(seq, _)| *seq == g.seq)?.1
        };
        let until = sent_at + g.ttl_ms;
        if until <= now {
            return None;
        }
        let held = self.held();
        let next = if g.hold {
            Held::Open { epoch: g.epoch }
        } else {
            Held::Until {
                epoch: g.epoch,
                deadline: until,
            }
        };
        match (held, next) {
            (a, b) if a == b => None,
            (Held::Until { epoch, deadline }, Held::Until { deadline: d, .. })
                if epoch == g.epoch && deadline >= d =>
            {
                None
            }
            _ => Some(next),
        }
    }

    /// Keep `g` if it is for this process but an epoch newer than
    /// `current_epoch`: the leader sends a new primary's first grant right
    /// behind the command that starts the epoch, and the agent's session
    /// may read it before the command has been taken on. Dropping it would
    /// make the promotion wait a whole report and confirmation round for
    /// the next one — on the write outage's path. Only the newest is kept;
    /// true when `g` is such a grant (it counts for nothing yet).
    pub fn keep_early(&self, g: &LeaseGrant, current_epoch: u64) -> bool {
        if g.session != self.session || g.epoch <= current_epoch {
            return false;
        }
        let mut early = lock(&self.early);
        if early.is_none_or(|k| (k.epoch, k.seq) < (g.epoch, g.seq)) {
            *early = Some(*g);
        }
        true
    }

    /// The kept grant for `epoch`, now that the agent has taken it on (it
    /// is then checked like any other: [`Lease::grant`]). A kept grant for
    /// a later epoch stays; one for an earlier epoch is dropped.
    pub fn take_early(&self, epoch: u64) -> Option<LeaseGrant> {
        let mut early = lock(&self.early);
        match *early {
            Some(g) if g.epoch == epoch => early.take(),
            Some(g) if g.epoch > epoch => None,
            _ => {
                *early = None;
                None
            }
        }
    }

    /// Give the lease up: no grant for a report sent so far will count.
    pub fn release(&self, last_seq: u64) {
        let mut s = lock(&self.sent);
        s.floor_seq = s.floor_seq.max(last_seq);
    }

    /// The keeper holds `held` now (as far as this agent knows, not from a
    /// new grant).
    pub fn confirm(&self, held: Held) {
        let mut h = lock(&self.held);
        if h.0 != held {
            *h = (held, 0);
        }
    }

    /// The keeper holds `held`, which came from the grant answering report
    /// `seq`.
    pub fn confirm_grant(&self, held: Held, seq: u64) {
        *lock(&self.held) = (held, seq);
    }

    /// What the keeper holds, as last confirmed.
    pub fn held(&self) -> Held {
        lock(&self.held).0
    }

    /// The report whose grant the held lease came from (0: none).
    pub fn held_seq(&self) -> u64 {
        lock(&self.held).1
    }

    /// Milliseconds of lease left for `epoch` (0 when none, `u64::MAX`
    /// while held open).
    pub fn remaining(&self, epoch: u64) -> u64 {
        self.remaining_at(epoch, boot_ms())
    }

    /// [`Lease::remaining`] at boot-clock time `now`.
    pub fn remaining_at(&self, epoch: u64, now: u64) -> u64 {
        self.held().remaining(epoch, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(seq: u64, epoch: u64, session: u64) -> LeaseGrant {
        LeaseGrant {
            epoch,
            session,
            seq,
            ttl_ms: 2000,
            hold: false,
        }
    }

    #[test]
    fn counts_from_send_time_and_checks_everything() {
        let lease = Lease::new(7, Held::None);
        lease.sent(1);
        assert_eq!(lease.grant(&grant(1, 3, 8), 3), None, "other session");
        assert_eq!(lease.grant(&grant(1, 2, 7), 3), None, "other epoch");
        assert_eq!(lease.grant(&grant(2, 3, 7), 3), None, "unknown report");
        let Some(next @ Held::Until { epoch: 3, deadline }) = lease.grant(&grant(1, 3, 7), 3)
        else {
            panic!("no lease");
        };
        let left = deadline.saturating_sub(boot_ms());
        assert!(left > 1900 && left <= 2000, "{left}");
        // Not held until the keeper confirms it.
        assert_eq!(lease.remaining(3), 0);
        lease.confirm(next);
        assert!(lease.remaining(3) > 1900);
        assert_eq!(lease.remaining(4), 0);
        // The same grant again changes nothing.
        assert_eq!(lease.grant(&grant(1, 3, 7), 3), None);
    }

    #[test]
    fn release_ignores_older_grants() {
        let lease = Lease::new(7, Held::None);
        lease.sent(1);
        lease.sent(2);
        lease.release(2);
        assert_eq!(lease.grant(&grant(2, 3, 7), 3), None);
        lease.sent(3);
        assert!(lease.grant(&grant(3, 3, 7), 3).is_some());
    }

    #[test]
    fn paused_grants_hold_open_and_bounded_ones_close_it_again() {
        let lease = Lease::new(7, Held::None);
        lease.sent(1);
        let open = LeaseGrant {
            hold: true,
            ..grant(1, 3, 7)
        };
        assert_eq!(lease.grant(&open, 3), Some(Held::Open { epoch: 3 }));
        lease.confirm_grant(Held::Open { epoch: 3 }, 1);
        assert_eq!(lease.remaining(3), u64::MAX);
        assert_eq!(lease.held_seq(), 1);
        lease.confirm(Held::Open { epoch: 3 });
        assert_eq!(lease.held_seq(), 1, "the same lease keeps its origin");
        lease.confirm(Held::None);
        assert_eq!(lease.held_seq(), 0);
        lease.sent(2);
        assert!(matches!(
            lease.grant(&grant(2, 3, 7), 3),
            Some(Held::Until { epoch: 3, .. })
        ));
    }

    #[test]
    fn a_grant_ahead_of_its_epoch_counts_once_the_epoch_is_taken_on() {
        let lease = Lease::new(7, Held::None);
        lease.sent(1);
        lease.sent(2);
        // The agent is still in epoch 2: the grant for 3 is void now…
        assert_eq!(lease.grant(&grant(1, 3, 7), 2), None);
        assert!(lease.keep_early(&grant(1, 3, 7), 2));
        assert!(lease.keep_early(&grant(2, 3, 7), 2));
        assert!(!lease.keep_early(&grant(2, 2, 7), 2), "current epoch");
        assert!(!lease.keep_early(&grant(2, 4, 8), 2), "other session");
        // …not yet in epoch 2, kept for 3 (the newest report's)…
        assert_eq!(lease.take_early(2), None);
        let kept = lease.take_early(3).expect("kept");
        assert_eq!((kept.epoch, kept.seq), (3, 2));
        // …and checked like any grant once the agent is in epoch 3.
        assert!(matches!(
            lease.grant(&kept, 3),
            Some(Held::Until { epoch: 3, .. })
        ));
        assert_eq!(lease.take_early(3), None, "taken once");
        // A release in between voids it as it voids any older grant.
        assert!(lease.keep_early(&grant(2, 4, 7), 3));
        lease.release(2);
        let kept = lease.take_early(4).expect("kept");
        assert_eq!(lease.grant(&kept, 4), None);
        // One for an epoch that was skipped is dropped.
        assert!(lease.keep_early(&grant(2, 5, 7), 4));
        assert_eq!(lease.take_early(6), None);
        assert_eq!(lease.take_early(5), None);
    }

    #[test]
    fn a_new_process_starts_from_what_the_keeper_holds() {
        let deadline = boot_ms() + 1500;
        let lease = Lease::new(9, Held::Until { epoch: 4, deadline });
        assert!(lease.remaining(4) > 1000);
    }
}
