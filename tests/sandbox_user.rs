//! `pgquorum sandbox` run by an ordinary (non-root) user: everything runs as
//! that user. Needs root to switch users (it uses the `postgres` account);
//! skipped otherwise — run as an ordinary user, every other sandbox test
//! covers this case.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::bin;
use common::sandbox::free_base_port;

fn as_postgres(script: &str) -> std::process::Output {
    Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", script])
        .output()
        .expect("su")
}

#[test]
fn sandbox_runs_as_an_ordinary_user() {
    let ok = nix::unistd::geteuid().is_root()
        && nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .is_some();
    if !common::root_test_can_run(
        ok,
        "sandbox_runs_as_an_ordinary_user",
        "root and a postgres account to switch to",
    ) {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("pgq-user-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy of the binary the other user can surely execute.
    let binary = tmp.path().join("pgquorum");
    std::fs::copy(bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("sb");
    let base = free_base_port();
    let up = format!(
        "{} sandbox up --json --nodes 2 --managers 1 --base-port {base} --dir {}",
        binary.display(),
        dir.display()
    );
    let down = format!("{} sandbox down --dir {}", binary.display(), dir.display());
    let out = as_postgres(&up);
    let result = std::panic::catch_unwind(|| {
        assert!(
            out.status.success(),
            "sandbox up as postgres: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sandbox json");
        let postgres_uid = nix::unistd::User::from_name("postgres")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        // Every process it started runs as that user.
        for pid in file["managers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["pid"].as_i64().unwrap())
            .chain(
                file["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["agent_pid"].as_i64().unwrap()),
            )
        {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid: u32 = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                uid, postgres_uid,
                "pid {pid} does not run as the invoking user"
            );
        }
        let dsn = file["dsn"].as_str().unwrap();
        let q = Command::new("psql")
            .args([dsn, "-Atc", "select pg_is_in_recovery()"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&q.stdout).trim(),
            "f",
            "{}",
            String::from_utf8_lossy(&q.stderr)
        );
    });
    let stopped = as_postgres(&down);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(
        stopped.status.success(),
        "sandbox down: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
}
