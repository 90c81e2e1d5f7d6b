//! Replacing a file so that a crash leaves either the old or the new
//! contents, never a mix, and the new one survives power loss once this
//! returns: a temporary file beside it, fsync, rename, fsync of the
//! directory. The one place that does it (agent state, manager identity,
//! the store's watermark, PostgreSQL configuration files, sandbox.json).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who owns the new file and with which mode (default: the process's
/// user, 0644 less the umask).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ownership {
    pub mode: Option<u32>,
    /// (uid, gid), set before the rename.
    pub owner: Option<(u32, u32)>,
}

/// The temporary file beside `path`.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".pgquorum-tmp");
    path.with_file_name(name)
}

/// Replace `path` with `contents` atomically and durably.
pub fn replace(path: &Path, contents: &[u8], ownership: Ownership) -> std::io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = ownership.mode {
            options.mode(mode);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        if let Some(mode) = ownership.mode {
            // The umask narrowed the mode given at creation.
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        }
        if let Some((uid, gid)) = ownership.owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsync the directory holding `path` (makes a rename durable).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one", Ownership::default()).unwrap();
        replace(
            &path,
            b"two",
            Ownership {
                mode: Some(0o600),
                owner: None,
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
        // A directory that does not exist: an error, nothing left behind.
        assert!(replace(&dir.path().join("no/such"), b"x", Ownership::default()).is_err());
    }
}
