//! Running PostgreSQL programs and creating files as the PostgreSQL OS user.
//!
//! PostgreSQL refuses to run as root. When the agent is root every program
//! runs as the configured OS user (uid, gid, HOME; the standard library
//! drops supplementary groups when it switches uid), and every file or
//! directory the driver creates is handed to that user, so the server can
//! read and write it.

use std::ffi::OsString;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{tail_of, PgError};

/// Environment variables that would silently redirect a PostgreSQL program
/// (another server, data directory or options) — every call spells out
/// what it means instead.
const SCRUBBED_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGTARGETSESSIONATTRS",
    "PGCLIENTENCODING",
];

/// The OS identity PostgreSQL programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// True when the agent is root and must switch to this user.
    pub switch: bool,
}

impl OsUser {
    /// The user to run as: `wanted` (default `postgres`) when root, else the
    /// current user (`wanted` is then ignored: only root can switch).
    pub fn resolve(wanted: Option<&str>) -> Result<OsUser, PgError> {
        use nix::unistd::{geteuid, User};
        let euid = geteuid();
        if euid.is_root() {
            let name = wanted.unwrap_or("postgres");
            let user = User::from_name(name)
                .map_err(|e| PgError::OsUser {
                    user: name.to_string(),
                    detail: format!("looking it up failed: {e}"),
                })?
                .ok_or_else(|| PgError::OsUser {
                    user: name.to_string(),
                    detail: "no such user".to_string(),
                })?;
            if user.uid.is_root() {
                return Err(PgError::OsUser {
                    user: name.to_string(),
                    detail: "it has uid 0".to_string(),
                });
            }
            Ok(OsUser {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
                switch: true,
            })
        } else {
            let gid = nix::unistd::getegid().as_raw();
            let (name, home) = match User::from_uid(euid) {
                Ok(Some(u)) => (u.name, u.dir),
                _ => (euid.to_string(), PathBuf::from("/")),
            };
            if let Some(w) = wanted.filter(|w| *w != name) {
                tracing::debug!(
                    wanted = w,
                    current = %name,
                    "not root: running PostgreSQL programs as the current user"
                );
            }
            Ok(OsUser {
                name,
                uid: euid.as_raw(),
                gid,
                home,
                switch: false,
            })
        }
    }

    /// Give `path` to this user (only when running as root).
    pub fn chown(&self, path: &Path) -> Result<(), PgError> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .map_err(|e| PgError::io("change the owner of", path, e))?;
        }
        Ok(())
    }

    /// Create `dir` (and missing parents, which stay root's with mode 0755)
    /// and, when this call created it or `take` is set, give it to this
    /// user with `mode`.
    pub fn ensure_dir(&self, dir: &Path, mode: u32, take: bool) -> Result<(), PgError> {
        let existed = dir.is_dir();
        if !existed {
            std::fs::create_dir_all(dir).map_err(|e| PgError::io("create directory", dir, e))?;
        }
        if !existed || take {
            self.chown(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| PgError::io("set permissions of", dir, e))?;
        }
        Ok(())
    }

    /// Create an empty file owned by this user unless it exists.
    pub fn ensure_file(&self, file: &Path, mode: u32) -> Result<(), PgError> {
        if file.exists() {
            return Ok(());
        }
        if let Some(parent) = file.parent() {
            self.ensure_dir(parent, 0o755, false)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(file)
            .map_err(|e| PgError::io("create", file, e))?;
        self.chown(file)
    }

    /// Replace `path` atomically and durably with `contents`, owned by
    /// this user with `mode`.
    pub fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), PgError> {
        let ownership = crate::durable::Ownership {
            mode: Some(mode),
            owner: self.switch.then_some((self.uid, self.gid)),
        };
        crate::durable::replace(path, contents, ownership)
            .map_err(|e| PgError::io("replace", path, e))
    }
}

/// One program invocation.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(String, String)>,
    pub timeout: Duration,
    /// Force untranslated messages (`LC_ALL=C`): for programs whose output
    /// is parsed. Not for initdb, whose locale becomes the cluster default.
    pub c_locale: bool,
    /// What to do when it fails: ends up in the error message.
    pub hint: String,
    /// Run it in a process group of its own, and kill the whole group when
    /// it fails or times out: an operator's script may leave children (tar,
    /// a backup tool) that would otherwise go on writing.
    pub own_group: bool,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            timeout,
            c_locale: true,
            hint: String::new(),
            own_group: false,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Cmd {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> Cmd {
        self.hint = h.into();
        self
    }

    /// The command line as shown in logs and errors (passwords only ever
    /// travel in the environment, never in arguments).
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.contains(' ') || a.is_empty() {
                s.push_str(&format!("'{a}'"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }
}

/// What a successful program printed.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl RunOutput {
    /// stdout and stderr together, for message matching.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>, buf: &mut Vec<u8>) {
    if let Some(mut r) = r {
        let _ = r.read_to_end(buf).await;
    }
}

/// The complete environment of a PostgreSQL program run as `user`: the
/// agent's own, less what would redirect it ([`SCRUBBED_ENV`]), with the
/// user's HOME/USER/LOGNAME when switching, and untranslated messages
/// (`LC_ALL=C`) when `c_locale`.
pub fn program_env(user: &OsUser, c_locale: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| !SCRUBBED_ENV.contains(&k.as_str()))
        .filter(|(k, _)| !(user.switch && matches!(k.as_str(), "HOME" | "USER" | "LOGNAME")))
        .filter(|(k, _)| !(c_locale && matches!(k.as_str(), "LC_ALL" | "LANGUAGE")))
        .collect();
    if user.switch {
        env.push(("HOME".into(), user.home.to_string_lossy().into_owned()));
        env.push(("USER".into(), user.name.clone()));
        env.push(("LOGNAME".into(), user.name.clone()));
    }
    if c_locale {
        env.push(("LC_ALL".into(), "C".into()));
    }
    env
}

/// Run `cmd` as `user` with stdin from /dev/null; kill it when it outlives
/// its timeout. A non-zero exit is an error carrying the output's tail.
pub async fn run(user: &OsUser, cmd: &Cmd) -> Result<RunOutput, PgError> {
    let shown = cmd.display();
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // The agent's working directory may be unreadable for the OS user.
        .current_dir("/")
        .env_clear()
        .envs(program_env(user, cmd.c_locale));
    if user.switch {
        c.uid(user.uid).gid(user.gid);
    }
    if cmd.own_group {
        c.process_group(0);
    }
    for (k, v) in &cmd.envs {
        c.env(k, v);
    }
    tracing::debug!(command = %shown, user = %user.name, "running");
    let started = Instant::now();
    let mut child = c.spawn().map_err(|e| PgError::Spawn {
        program: cmd.program.clone(),
        source: e,
    })?;
    // With its own group, the group's id is the child's pid. Whatever of
    // the group still runs when this returns — or when the call is dropped
    // (the agent stopping) — is killed: nothing an operator's program left
    // behind goes on writing into a data directory the agent has moved on
    // from.
    let group = GroupGuard(cmd.own_group.then(|| child.id()).flatten());
    let kill_group = || group.kill();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let waited = tokio::time::timeout(cmd.timeout, async {
        let (_, _, status) = tokio::join!(
            read_all(out, &mut out_buf),
            read_all(err, &mut err_buf),
            child.wait()
        );
        status
    })
    .await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let output = RunOutput {
        stdout: text(&out_buf),
        stderr: text(&err_buf),
        elapsed: started.elapsed(),
    };
    let status = match waited {
        Err(_) => {
            kill_group();
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            tracing::warn!(command = %shown, timeout = ?cmd.timeout, "killed after timeout");
            return Err(PgError::Timeout {
                command: shown,
                timeout: cmd.timeout,
                hint: cmd.hint.clone(),
                tail: tail_of(&format!("{}\n{}", output.stdout, output.stderr), 15),
            });
        }
        Ok(Err(e)) => return Err(PgError::io("wait for", &cmd.program, e)),
        Ok(Ok(status)) => status,
    };
    tracing::debug!(command = %shown, %status, elapsed = ?output.elapsed, "finished");
    if status.success() {
        Ok(output)
    } else {
        kill_group();
        Err(PgError::Failed {
            command: shown,
            status: status.to_string(),
            hint: cmd.hint.clone(),
            tail: tail_of(&format!("{}\n{}", output.stdout, output.stderr), 15),
        })
    }
}

/// Kills a process group when dropped (see [`run`]).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // ESRCH when nothing of it runs any more.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_as_the_os_user_without_supplementary_groups() {
        let user = OsUser::resolve(None).unwrap();
        let out = run(&user, &Cmd::new("/usr/bin/id", Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(
            out.stdout.contains(&format!("uid={}", user.uid)),
            "{}",
            out.stdout
        );
        if user.switch {
            // `groups=` lists only the primary group.
            let groups = out.stdout.split("groups=").nth(1).unwrap_or("").trim();
            assert!(!groups.contains(','), "supplementary groups kept: {groups}");
        }
    }

    #[tokio::test]
    async fn kills_on_timeout_and_reports_failures() {
        let user = OsUser::resolve(None).unwrap();
        let t0 = Instant::now();
        let e = run(
            &user,
            &Cmd::new("/bin/sleep", Duration::from_millis(200)).arg("10"),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, PgError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3));
        let e = run(
            &user,
            &Cmd::new("/bin/sh", Duration::from_secs(5))
                .arg("-c")
                .arg("echo boom >&2; exit 3")
                .hint("do something"),
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("boom") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }
}
