//! The primary's lease, as the agent holds it.
//!
//! The leader answers a report with a grant naming the report's sequence
//! number. The agent's lease then ends at *the time it sent that report*
//! plus the ttl, on its own boot clock — never later than the leader thinks,
//! since the leader counts from when it *received* the report.
//!
//! The lease is kept in a small file too (no fsync: it only needs to
//! survive an agent restart, not a reboot), so that restarting the agent
//! does not fence a healthy primary whose lease still runs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::clock::{boot_id, boot_ms};
use crate::cluster::wire::LeaseGrant;

/// How many send times are remembered (grants for older reports are late).
const REMEMBERED: usize = 256;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    boot_id: String,
    epoch: u64,
    expires_at: u64,
}

#[derive(Debug, Default)]
struct Inner {
    sent: VecDeque<(u64, u64)>,
    epoch: u64,
    /// Boot-clock ms when the lease ends; 0 when there is none.
    expires_at: u64,
    /// Grants answering reports up to this sequence number are ignored: the
    /// lease was released after they were sent.
    floor_seq: u64,
}

/// The agent's lease.
pub struct Lease {
    session: u64,
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl Lease {
    /// Load the lease a previous agent process may have left.
    pub fn load(path: PathBuf, session: u64) -> Lease {
        let mut inner = Inner::default();
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(p) = serde_json::from_str::<Persisted>(&text) {
                if p.boot_id == boot_id() && p.expires_at > boot_ms() {
                    inner.epoch = p.epoch;
                    inner.expires_at = p.expires_at;
                }
            }
        }
        Lease {
            session,
            path,
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock::lock(&self.inner)
    }

    /// Remember when report `seq` was sent.
    pub fn sent(&self, seq: u64) {
        let mut i = self.lock();
        i.sent.push_back((seq, boot_ms()));
        while i.sent.len() > REMEMBERED {
            i.sent.pop_front();
        }
    }

    /// Apply a grant; true if it extended the lease.
    pub fn grant(&self, g: &LeaseGrant, current_epoch: u64) -> bool {
        let mut i = self.lock();
        if g.session != self.session || g.epoch != current_epoch || g.seq <= i.floor_seq {
            return false;
        }
        let Some(&(_, sent_at)) = i.sent.iter().find(|(s, _)| *s == g.seq) else {
            return false;
        };
        let until = sent_at + g.ttl_ms;
        if until <= boot_ms() {
            return false;
        }
        if i.epoch != g.epoch {
            i.epoch = g.epoch;
            i.expires_at = 0;
        }
        if until > i.expires_at {
            i.expires_at = until;
            self.persist(&i);
            return true;
        }
        false
    }

    /// Milliseconds of lease left for `epoch` (0 when none).
    pub fn remaining(&self, epoch: u64) -> u64 {
        let i = self.lock();
        if i.epoch != epoch {
            return 0;
        }
        i.expires_at.saturating_sub(boot_ms())
    }

    /// When the lease ends on the boot clock (0 when there is none).
    pub fn expires_at(&self) -> u64 {
        self.lock().expires_at
    }

    /// Give the lease up: no grant for a report sent so far will count.
    pub fn release(&self, last_seq: u64) {
        let mut i = self.lock();
        i.floor_seq = i.floor_seq.max(last_seq);
        i.expires_at = 0;
        self.persist(&i);
    }

    fn persist(&self, i: &Inner) {
        let p = Persisted {
            boot_id: boot_id(),
            epoch: i.epoch,
            expires_at: i.expires_at,
        };
        if let Ok(text) = serde_json::to_vec(&p) {
            let tmp = self.path.with_extension("tmp");
            if std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, &self.path))
                .is_err()
            {
                tracing::warn!(path = %self.path.display(), "cannot save the lease; an agent restart will fence");
            }
        }
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
        }
    }

    #[test]
    fn counts_from_send_time_and_checks_everything() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::load(dir.path().join("lease"), 7);
        lease.sent(1);
        assert!(!lease.grant(&grant(1, 3, 8), 3), "other session");
        assert!(!lease.grant(&grant(1, 2, 7), 3), "other epoch");
        assert!(!lease.grant(&grant(2, 3, 7), 3), "unknown report");
        assert!(lease.grant(&grant(1, 3, 7), 3));
        let left = lease.remaining(3);
        assert!(left > 1900 && left <= 2000, "{left}");
        assert_eq!(lease.remaining(4), 0);
    }

    #[test]
    fn release_ignores_older_grants_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease");
        let lease = Lease::load(path.clone(), 7);
        lease.sent(1);
        lease.sent(2);
        assert!(lease.grant(&grant(1, 3, 7), 3));
        let again = Lease::load(path.clone(), 9);
        assert!(
            again.remaining(3) > 0,
            "a restarted agent keeps a running lease"
        );
        lease.release(2);
        assert_eq!(lease.remaining(3), 0);
        assert!(!lease.grant(&grant(2, 3, 7), 3));
        assert_eq!(Lease::load(path, 9).remaining(3), 0);
    }
}
