//! The Linux hardware (or softdog) watchdog: the host-level backstop for a
//! keeper that hangs. Opening the device arms it; every write feeds it; if
//! it goes unfed for its timeout the kernel resets the machine. Writing
//! `V` before closing disarms it ("magic close"), unless the driver was
//! built with nowayout.
//!
//! The keeper arms it while it holds a lease and feeds it only while
//! [`super::rule::may_feed`] says so.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Set when a test uses a plain file as a stand-in for the device: the
/// timeout ioctls, which a plain file cannot answer, are skipped and the
/// requested timeout is taken as set. Never set it in production: a plain
/// file resets nothing.
pub const STANDIN_ENV: &str = "PGQUORUM_TEST_WATCHDOG_STANDIN";

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("cannot open watchdog device {device}: {source}")]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("{device} is not a watchdog device (setting its timeout failed: {source})")]
    NotAWatchdog { device: PathBuf, source: nix::Error },
    #[error("watchdog {device} keeps a timeout of {actual}s, longer than the {wanted}s the lease allows")]
    TimeoutTooLong {
        device: PathBuf,
        wanted: u32,
        actual: u32,
    },
    #[error("cannot feed watchdog {device}: {source}")]
    Feed {
        device: PathBuf,
        source: std::io::Error,
    },
}

/// An armed watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    device: PathBuf,
    timeout_s: u32,
}

impl Watchdog {
    /// Open (and so arm) `device` with a timeout of at most `timeout_s`.
    pub fn arm(device: &Path, timeout_s: u32) -> Result<Watchdog, WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(|source| WatchdogError::Open {
                device: device.to_path_buf(),
                source,
            })?;
        let mut w = Watchdog {
            file,
            device: device.to_path_buf(),
            timeout_s,
        };
        if let Err(e) = w.set_timeout(timeout_s) {
            w.disarm();
            return Err(e);
        }
        Ok(w)
    }

    /// Ask the driver for `timeout_s`; it may round up: refuse then.
    pub fn set_timeout(&mut self, timeout_s: u32) -> Result<(), WatchdogError> {
        if std::env::var_os(STANDIN_ENV).is_some() {
            self.timeout_s = timeout_s;
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let mut value = timeout_s as libc::c_int;
        // SAFETY: the fd is open for the life of `self.file`; the ioctl
        // reads and writes one c_int through a valid pointer.
        unsafe { wdioc_settimeout(fd, &mut value) }.map_err(|source| {
            WatchdogError::NotAWatchdog {
                device: self.device.clone(),
                source,
            }
        })?;
        let mut actual: libc::c_int = value;
        // SAFETY: as above.
        if unsafe { wdioc_gettimeout(fd, &mut actual) }.is_err() {
            actual = value;
        }
        let actual = actual.max(0) as u32;
        if actual > timeout_s {
            return Err(WatchdogError::TimeoutTooLong {
                device: self.device.clone(),
                wanted: timeout_s,
                actual,
            });
        }
        self.timeout_s = actual.max(1);
        Ok(())
    }

    pub fn timeout_s(&self) -> u32 {
        self.timeout_s
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Restart the countdown.
    pub fn feed(&mut self) -> Result<(), WatchdogError> {
        self.file
            .write_all(b"1")
            .map_err(|source| WatchdogError::Feed {
                device: self.device.clone(),
                source,
            })
    }

    /// Magic close: stop the countdown and close the device.
    pub fn disarm(mut self) {
        if let Err(e) = self.file.write_all(b"V") {
            tracing::warn!(device = %self.device.display(), error = %e, "watchdog magic close failed: it may still reset the host");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_a_watchdog() {
        // Without the test switch a regular file cannot pass for a
        // device (this test never sets the switch).
        if std::env::var_os(STANDIN_ENV).is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wd");
        std::fs::write(&path, b"").unwrap();
        let err = Watchdog::arm(&path, 1).unwrap_err();
        assert!(matches!(err, WatchdogError::NotAWatchdog { .. }), "{err}");
        // It was disarmed again on the way out.
        assert_eq!(std::fs::read(&path).unwrap(), b"V");
        let err = Watchdog::arm(&dir.path().join("missing"), 1).unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
    }
}
