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
nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);

/// `struct watchdog_info` of linux/watchdog.h.
#[repr(C)]
#[derive(Default)]
pub struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

/// `WDIOF_MAGICCLOSE`: writing `V` before closing stops the countdown.
const WDIOF_MAGICCLOSE: u32 = 0x0100;

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
    #[error("watchdog {device} cannot be disarmed once armed ({why}): the host would reset every time this node stops being primary; load the driver with nowayout=0")]
    NoWayOut { device: PathBuf, why: &'static str },
    #[error("{device} is not a character device; point watchdog_device at the watchdog (e.g. /dev/watchdog)")]
    NotADevice { device: PathBuf },
}

/// An armed watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    device: PathBuf,
    timeout_s: u32,
}

/// Check, without opening it (opening arms it), that `device` looks like a
/// watchdog this keeper could arm and disarm again.
pub fn probe(device: &Path) -> Result<(), WatchdogError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(device).map_err(|source| WatchdogError::Open {
        device: device.to_path_buf(),
        source,
    })?;
    let standin = std::env::var_os(STANDIN_ENV).is_some();
    if !meta.file_type().is_char_device() && !standin {
        return Err(WatchdogError::NotADevice {
            device: device.to_path_buf(),
        });
    }
    nix::unistd::access(device, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        WatchdogError::Open {
            device: device.to_path_buf(),
            source: e.into(),
        }
    })?;
    if nowayout(device) {
        return Err(WatchdogError::NoWayOut {
            device: device.to_path_buf(),
            why: "its driver says nowayout",
        });
    }
    Ok(())
}

/// The driver's `nowayout` flag from sysfs, where the kernel shows it
/// (`/dev/watchdog` is `watchdog0`).
fn nowayout(device: &Path) -> bool {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let name = if name == "watchdog" {
        "watchdog0"
    } else {
        name
    };
    std::fs::read_to_string(format!("/sys/class/watchdog/{name}/nowayout"))
        .is_ok_and(|v| v.trim() == "1")
}

impl Watchdog {
    /// Open (and so arm) `device` with a timeout of at most `timeout_s`.
    /// [`probe`] it first: an armed device that cannot be disarmed resets
    /// the host whenever this node stops being primary.
    pub fn arm(device: &Path, timeout_s: u32) -> Result<Watchdog, WatchdogError> {
        probe(device)?;
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
        if let Err(e) = w
            .check_magic_close()
            .and_then(|()| w.set_timeout(timeout_s))
        {
            w.disarm();
            return Err(e);
        }
        Ok(w)
    }

    /// The driver must support the magic close, or disarming fails.
    fn check_magic_close(&self) -> Result<(), WatchdogError> {
        if std::env::var_os(STANDIN_ENV).is_some() {
            return Ok(());
        }
        let mut info = WatchdogInfo::default();
        // SAFETY: the fd is open; the ioctl fills one watchdog_info.
        match unsafe { wdioc_getsupport(self.file.as_raw_fd(), &mut info) } {
            Ok(_) if info.options & WDIOF_MAGICCLOSE != 0 => Ok(()),
            Ok(_) => Err(WatchdogError::NoWayOut {
                device: self.device.clone(),
                why: "its driver has no magic close",
            }),
            Err(source) => Err(WatchdogError::NotAWatchdog {
                device: self.device.clone(),
                source,
            }),
        }
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
    fn a_plain_file_is_not_a_watchdog_and_is_never_written() {
        // Without the test switch a regular file cannot pass for a
        // device (this test never sets the switch).
        if std::env::var_os(STANDIN_ENV).is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wd");
        std::fs::write(&path, b"").unwrap();
        let err = Watchdog::arm(&path, 1).unwrap_err();
        assert!(matches!(err, WatchdogError::NotADevice { .. }), "{err}");
        assert!(err.to_string().contains("/dev/watchdog"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"", "it was opened");
        let err = probe(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("cannot open"), "{err}");
        // A character device that is no watchdog: opened, refused, closed.
        let err = Watchdog::arm(Path::new("/dev/null"), 1).unwrap_err();
        assert!(matches!(err, WatchdogError::NotAWatchdog { .. }), "{err}");
    }
}
