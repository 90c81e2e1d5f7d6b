//! Processes by pid, for the few places that deal with them directly (the
//! fence the keeper and the PostgreSQL driver share, the sandbox, tests): is
//! it alive, what belongs to a data directory, signal, wait. Linux `/proc`
//! is the source.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The one-letter state in `/proc/PID/stat` (R, S, T, Z…).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Exited but not reaped yet: as good as gone, though `kill(pid, 0)`
/// still succeeds (PostgreSQL's own lock-file check is fooled by it).
pub fn is_zombie(pid: i32) -> bool {
    state(pid) == Some('Z')
}

/// Stopped (SIGSTOP, a debugger): acts on no signal but SIGKILL until continued.
pub fn is_stopped(pid: i32) -> bool {
    matches!(state(pid), Some('T') | Some('t'))
}

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    pid > 0
        && kill(Pid::from_raw(pid), None).is_ok()
        && !matches!(state(pid), Some('Z') | Some('X'))
}

pub fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids.iter().filter(|p| **p > 0) {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

/// SIGSTOP every process `scan` finds, scanning again until no new one
/// shows up (a postmaster may fork a backend between the scan and the
/// signal); the pids stopped.
pub fn stop_all(scan: impl Fn() -> Vec<i32>) -> Vec<i32> {
    let mut stopped: Vec<i32> = Vec::new();
    for _ in 0..20 {
        let new: Vec<i32> = scan()
            .into_iter()
            .filter(|p| !stopped.contains(p))
            .collect();
        if new.is_empty() {
            break;
        }
        signal_all(&new, Signal::SIGSTOP);
        stopped.extend(new);
    }
    stopped
}

/// Wait (bounded, polling) until none of `pids` is alive; whether they went.
pub fn wait_gone(pids: &[i32], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !pids.iter().any(|p| alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Working directory and executable of a process.
pub fn cwd_and_exe(pid: i32) -> Option<(PathBuf, PathBuf)> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let cwd = std::fs::read_link(base.join("cwd")).ok()?;
    let exe = std::fs::read_link(base.join("exe")).ok()?;
    Some((cwd, exe))
}

/// A postgres binary (`postgres`, `postmaster`, or one replaced on disk).
pub fn is_postgres_exe(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("postgres") || n.starts_with("postmaster"))
}

/// Live processes whose working directory and executable satisfy `keep`,
/// sorted by pid.
fn scan(keep: impl Fn(&Path, &Path) -> bool) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| cwd_and_exe(*pid).is_some_and(|(cwd, exe)| keep(&cwd, &exe)))
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Every live PostgreSQL process of `data_dir` (postmaster, backends, a
/// single-user server, orphans of a killed postmaster): each runs with the
/// data directory as its working directory.
pub fn postgres_processes(data_dir: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::canonicalize(data_dir) else {
        return Vec::new();
    };
    postgres_processes_in(&dir)
}

/// [`postgres_processes`] for a data directory already canonical: reads
/// only `/proc`, never the data directory's file system.
pub fn postgres_processes_in(canonical_dir: &Path) -> Vec<i32> {
    scan(|cwd, exe| cwd == canonical_dir && is_postgres_exe(exe))
}

/// How long [`fence`] waits for SIGKILLed processes to disappear.
pub const FENCE_KILL_WAIT: Duration = Duration::from_secs(5);

/// How [`fence`] stopped a data directory's PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Nothing was running.
    Nothing,
    /// Processes had to be killed.
    Killed,
}

/// The direct children of `pid`, from the kernel's own list
/// (`/proc/PID/task/*/children`): one read per thread, no scan of `/proc`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut kids = Vec::new();
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            kids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    kids
}

/// Stop every PostgreSQL process of `canonical_dir` now, without spawning
/// anything and without touching the data directory's file system (the
/// keeper's fence must not wait on a stuck disk).
///
/// Order: (1) when the postmaster is known, SIGSTOP it (it forks nothing
/// more) and every one of its children, taken from the kernel's list of its
/// children: from that instant no backend runs another instruction, so
/// none commits anything more; then SIGKILL + SIGCONT all of them. (An
/// immediate shutdown — SIGQUIT, relayed by the postmaster — leaves the
/// backends running until the postmaster gets to relay it: tens of
/// milliseconds on a busy host, or on a host thawing after a freeze, in
/// which a backend can still commit. Both leave the data directory as a
/// crash would, for crash recovery.) (2) SIGKILL + SIGCONT whatever else
/// still works in the directory (found through `/proc`), until nothing is
/// left or `kill_wait` passes. SIGKILL of the postmaster alone would not
/// do: its backends run on until they notice, and one executing a
/// statement can still commit. Returns the processes that would not die.
pub fn fence(
    canonical_dir: &Path,
    postmaster: Option<i32>,
    kill_wait: Duration,
) -> Result<Fenced, Vec<i32>> {
    let postmaster = postmaster.filter(|pm| alive(*pm));
    let mut killed = false;
    if let Some(pm) = postmaster {
        signal_all(&[pm], Signal::SIGSTOP);
        let kids = children_of(pm);
        signal_all(&kids, Signal::SIGSTOP);
        signal_all(&[pm], Signal::SIGKILL);
        signal_all(&kids, Signal::SIGKILL);
        signal_all(&[pm], Signal::SIGCONT);
        signal_all(&kids, Signal::SIGCONT);
        killed = true;
    }
    let left = || {
        let mut pids = postgres_processes_in(canonical_dir);
        if let Some(pm) = postmaster.filter(|pm| alive(*pm) && !pids.contains(pm)) {
            pids.push(pm);
        }
        pids
    };
    let deadline = Instant::now() + kill_wait;
    loop {
        let pids = left();
        if pids.is_empty() {
            return Ok(if killed {
                Fenced::Killed
            } else {
                Fenced::Nothing
            });
        }
        if Instant::now() >= deadline {
            return Err(pids);
        }
        signal_all(&pids, Signal::SIGKILL);
        signal_all(&pids, Signal::SIGCONT);
        killed = true;
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Every live process working in `dir` or below it.
pub fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    scan(|cwd, _| cwd.starts_with(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_running() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(!is_zombie(me));
        assert!(!is_stopped(me));
        assert!(!alive(0));
        assert!(wait_gone(&[], Duration::from_millis(1)));
    }

    #[test]
    fn the_kernel_lists_a_child_of_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let kids = children_of(std::process::id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&pid), "{pid} not in {kids:?}");
        assert!(children_of(0).is_empty());
    }

    #[test]
    fn no_postgres_in_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(postgres_processes(dir.path()).is_empty());
    }
}
