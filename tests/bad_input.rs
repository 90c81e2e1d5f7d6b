//! Bad configuration and bad command lines: a clear message naming the
//! problem, a non-zero exit, and nothing changed on disk.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Run `pgquorum manager …` expecting it to refuse to start.
fn manager_refuses(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .arg("manager")
        .args(args)
        .output()
        .expect("run");
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 0, "manager {args:?} started but should have refused");
    (code, stderr(&out))
}

fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().to_string(),
                        std::fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn manager_configuration_errors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m1");
    let d = d.to_str().unwrap();

    let (code, err) = manager_refuses(&["--data-dir", d, "--peers", "1=127.0.0.1:7001"]);
    assert_eq!(code, 2);
    assert!(err.contains("missing manager id"), "{err}");

    let (_, err) = manager_refuses(&["--id", "1", "--data-dir", d, "--peers", "1=127.0.0.1"]);
    assert!(
        err.contains("invalid address") && err.contains("127.0.0.1"),
        "{err}"
    );

    let (_, err) = manager_refuses(&[
        "--id",
        "1",
        "--data-dir",
        d,
        "--peers",
        "1=127.0.0.1:7001,2=127.0.0.1:7002",
        "--listen",
        "127.0.0.1:7002",
    ]);
    assert!(
        err.contains("--peers gives manager 1 the address 127.0.0.1:7001"),
        "{err}"
    );

    let (_, err) = manager_refuses(&[
        "--id",
        "3",
        "--data-dir",
        d,
        "--peers",
        "1=127.0.0.1:7001,2=127.0.0.1:7002",
    ]);
    assert!(err.contains("does not list this manager's id 3"), "{err}");

    let (code, err) = manager_refuses(&[
        "--id",
        "1",
        "--data-dir",
        d,
        "--peers",
        "1=127.0.0.1:7001",
        "--join",
    ]);
    assert_eq!(code, 2, "{err}");

    let (_, err) = manager_refuses(&["--id", "1", "--listen", "127.0.0.1:7001", "--data-dir", d]);
    assert!(err.contains("is empty") && err.contains("--join"), "{err}");
    assert!(
        !std::path::Path::new(d).exists(),
        "a refused start created {d}"
    );

    // Plaintext beyond loopback is a deliberate choice (--insecure).
    for listen in ["192.0.2.1:7001", "0.0.0.0:7001"] {
        let (_, err) = manager_refuses(&[
            "--id",
            "1",
            "--data-dir",
            d,
            "--peers",
            "1=192.0.2.1:7001",
            "--listen",
            listen,
        ]);
        assert!(
            err.contains(&format!("this manager listens on {listen} without TLS"))
                && err.contains("pgquorum tls init")
                && err.contains("--insecure"),
            "{err}"
        );
    }
    assert!(
        !std::path::Path::new(d).exists(),
        "a refused start created {d}"
    );

    let file = tmp.path().join("bad.toml");
    std::fs::write(&file, "id = 1\nlisten_adress = \"127.0.0.1:7001\"\n").unwrap();
    let (_, err) = manager_refuses(&["--config", file.to_str().unwrap()]);
    assert!(err.contains("listen_adress"), "{err}");

    let (_, err) = manager_refuses(&["--config", "/nonexistent/pgquorum.toml"]);
    assert!(err.contains("/nonexistent/pgquorum.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_of_another_manager_or_group_is_refused_untouched() {
    let mut m = Managers::start(1);
    m.leader(&[1]).await;
    m.procs
        .get_mut(&1)
        .unwrap()
        .terminate(Duration::from_secs(10));
    let dir = m.data_dir(1);
    let before = snapshot(&dir);
    let d = dir.to_str().unwrap();

    let (_, err) = manager_refuses(&[
        "--id",
        "2",
        "--data-dir",
        d,
        "--peers",
        &format!("2={}", m.address(1)),
    ]);
    assert!(err.contains("belongs to manager 1"), "{err}");

    let (_, err) = manager_refuses(&[
        "--id",
        "1",
        "--data-dir",
        d,
        "--peers",
        "1=127.0.0.1:7999,2=127.0.0.1:7998",
        "--listen",
        "127.0.0.1:7999",
    ]);
    assert!(err.contains("another manager group"), "{err}");
    assert_eq!(
        snapshot(&dir),
        before,
        "a refused start changed the data directory"
    );

    // A PostgreSQL data directory is not a manager's.
    let pg = m.dir.path().join("pgdata");
    std::fs::create_dir_all(&pg).unwrap();
    std::fs::write(pg.join("PG_VERSION"), "15\n").unwrap();
    let (_, err) = manager_refuses(&[
        "--id",
        "1",
        "--data-dir",
        pg.to_str().unwrap(),
        "--peers",
        "1=127.0.0.1:7001",
    ]);
    assert!(
        err.contains("not a pgquorum manager data directory"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&pg).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    let (_, err) = manager_refuses(&[
        "--id",
        "1",
        "--data-dir",
        d.to_str().unwrap(),
        "--peers",
        &format!("1={addr}"),
    ]);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_input_errors() {
    // Usage errors: exit 2, before any network traffic.
    for args in [
        vec!["--managers", "nonsense", "managers", "list"],
        vec!["managers", "add", "0", "127.0.0.1:7001"],
        vec!["managers", "add", "5", "no-port"],
        vec!["managers", "add", "x", "127.0.0.1:7001"],
        vec!["config", "set", "novalue"],
        vec!["status", "--no-such-flag"],
    ] {
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }

    // Unreachable managers: exit 1, names the addresses.
    let port = free_port();
    let out = cli(&[
        "--managers",
        &format!("127.0.0.1:{port}"),
        "managers",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    // Nothing listening is said plainly (and at once, instead of after the
    // retry period meant for a leader change).
    assert!(
        stderr(&out).contains("nothing listens at") && stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );

    // A port where something else answers (an HTTP/1 server): a plain
    // message, not a raw protocol error blamed on TLS alone.
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_address = http.local_addr().expect("address").to_string();
    // It answers every connection (the CLI may retry) and reads what the
    // client sent before closing: closing with unread bytes would send a
    // reset that can reach the client before the answer does.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in http.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let out = cli(&["--managers", &http_address, "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not answer as a pgquorum manager")
            && stderr(&out).contains("another service"),
        "{}",
        stderr(&out)
    );

    // Refusals from a live group: exit 1, state unchanged.
    let m = Managers::start(1);
    m.leader(&[1]).await;
    m.register("main", "n1", 5432).await;
    let before = m.local_config(1).await.unwrap();
    let a = m.address(1);
    for (args, needle) in [
        (vec!["config", "set", "ttl=abc"], "1000ms to 60000ms"),
        (vec!["config", "set", "tll=2s"], "unknown configuration key"),
        (
            vec!["config", "set", "sync_mode=on", "sync_count=99"],
            "from 1 to 16",
        ),
        (vec!["managers", "remove", "42"], "no manager with id 42"),
        (
            vec!["status", "--cluster", "nope"],
            "no cluster named \"nope\"",
        ),
        (vec!["node", "restart", "ghost"], "no node named \"ghost\""),
        (vec!["switchover", "--force", "--to", "n1"], "no primary"),
    ] {
        let mut full = vec!["--managers", a.as_str()];
        full.extend(args.iter());
        let out = cli(&full);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(m.local_config(1).await.unwrap(), before);
}

/// Output into a closed pipe (`pgquorum … | head -1`) ends the command
/// quietly, as other Unix tools do: no panic, no backtrace.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let mut child = std::process::Command::new(common::bin())
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}
