//! Helpers for tests against `pgquorum sandbox` and `pgquorum agent` with
//! real PostgreSQL servers: a test directory PostgreSQL can reach, a block
//! of free ports, a sandbox guard that stops everything on drop (even when
//! the test fails), psql and HTTP one-liners, and process inspection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use serde_json::Value;

/// How long a sandbox may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(120);
use sha2::{Digest, Sha256};

use super::{bin, stderr, stdout};

/// Where the PostgreSQL 15 programs are on these machines.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Poll `check` every 200 ms until it returns `Ok`; panic after `limit`
/// with the last reason it gave for "not yet".
pub fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let why = match check() {
            Ok(v) => return v,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last: {why}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test's directory under /tmp, traversable by the `postgres` user.
/// Removed when the test passes; kept (and named) when it failed.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n: u32 = rand::thread_rng().gen();
        let root = PathBuf::from(format!("/tmp/pgq-it-{name}-{n:08x}"));
        std::fs::create_dir_all(&root).expect("create test dir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .expect("chmod test dir");
        TestDir(root)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Keepers and PostgreSQL servers outlive the agents a test killed.
        super::kill_processes_under(&self.0);
        if std::thread::panicking() {
            eprintln!("test failed: its files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A base port P in 20000–50000 such that P+1 … P+40 are all free (the
/// sandbox uses P+1… for managers, P+11… for PostgreSQL, P+21… for HTTP,
/// P+31… for manager metrics).
pub fn free_base_port() -> u16 {
    let mut rng = rand::thread_rng();
    loop {
        let base: u16 = rng.gen_range(20000..50000 - 41);
        if (base + 1..=base + 40).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

pub use pgquorum::process::{alive, wait_gone};

pub use pgquorum::process::processes_under as processes_in;

/// The command line of a live process (NULs as spaces).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

pub fn signal(pid: i32, sig: Signal) {
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Run `psql` on `conninfo` (bounded by `timeout`, 5 s to connect); its
/// unaligned, tuples-only output, or the error text.
pub fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("timeout")
        .args([
            "30",
            "psql",
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
        ])
        .arg(conninfo)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGOPTIONS", "-c statement_timeout=20000")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(stdout(&out).trim().to_string())
    } else {
        Err(format!(
            "psql failed ({}): {}",
            out.status,
            stderr(&out).trim()
        ))
    }
}

/// The connection string of one PostgreSQL server of the sandbox.
pub fn node_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}

/// `GET path` on `address` (HOST:PORT): the status code and the body.
pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request("GET", address, path)
}

/// An HTTP request with `method` (GET, HEAD, OPTIONS…): code and body.
pub fn http_request(method: &str, address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| std::io::Error::other(format!("{address}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The status code only; panics on a connection error.
pub fn http_code(address: &str, path: &str) -> u16 {
    http_get(address, path)
        .unwrap_or_else(|e| panic!("GET http://{address}{path}: {e}"))
        .0
}

/// A SHA-256 over every file's relative path and contents under `dir`,
/// plus the sorted file list: anything written, removed or added shows.
pub fn tree_digest(dir: &Path) -> (String, Vec<String>) {
    fn walk(base: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .display()
                .to_string();
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    files.push((format!("{rel}/"), path.clone()));
                    walk(base, &path, files)
                }
                Ok(_) => files.push((rel, path)),
                Err(_) => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    let mut h = Sha256::new();
    for (rel, path) in &files {
        h.update(rel.as_bytes());
        h.update([0]);
        if !rel.ends_with('/') {
            h.update(std::fs::read(path).unwrap_or_default());
        }
        h.update([0]);
    }
    let digest = h
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    (digest, files.into_iter().map(|(rel, _)| rel).collect())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running `pgquorum sandbox`. Dropping it stops everything: frozen
/// processes are continued, `sandbox down` runs, and whatever of the
/// sandbox still lives is killed (SIGKILL) by pid.
pub struct Sandbox {
    pub base: u16,
    /// What `sandbox up` printed.
    pub up_output: String,
    pub dir: TestDir,
}

impl Sandbox {
    /// `pgquorum sandbox up` with `nodes` nodes and 3 managers.
    pub fn up(name: &str, nodes: u16) -> Sandbox {
        let mut sandbox = Sandbox {
            base: 0,
            up_output: String::new(),
            dir: TestDir::new(name),
        };
        let mut attempts = 0;
        let out = loop {
            attempts += 1;
            sandbox.base = free_base_port();
            let base = sandbox.base.to_string();
            let out = sandbox.run(&["up", "--nodes", &nodes.to_string(), "--base-port", &base]);
            // Somebody took one of the ports between our check and its own.
            if attempts < 3 && stderr(&out).contains("is already in use") {
                continue;
            }
            break out;
        };
        assert!(
            out.status.success(),
            "sandbox up failed ({}):\n{}\n{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        sandbox.up_output = stdout(&out);
        sandbox
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `pgquorum sandbox SUB --dir DIR ARGS…`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("sandbox")
            .arg(args[0])
            .arg("--dir")
            .arg(self.path())
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run pgquorum sandbox")
    }

    /// `sandbox SUB NODE`, which must succeed.
    pub fn must(&self, sub: &str, node: &str) {
        let out = self.run(&[sub, node]);
        assert!(
            out.status.success(),
            "sandbox {sub} {node} failed ({}): {}{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
    }

    /// `sandbox.json` as it is now.
    pub fn file(&self) -> Value {
        let text =
            std::fs::read_to_string(self.path().join("sandbox.json")).expect("read sandbox.json");
        serde_json::from_str(&text).expect("sandbox.json is JSON")
    }

    /// The `nodes[]` entry of `name`.
    pub fn node(&self, name: &str) -> Value {
        self.file()["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no node {name} in sandbox.json"))
    }

    pub fn pg_port(&self, name: &str) -> u16 {
        self.node(name)["pg_port"].as_u64().expect("pg_port") as u16
    }

    pub fn http(&self, name: &str) -> String {
        self.node(name)["http"].as_str().expect("http").to_string()
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        PathBuf::from(self.node(name)["data_dir"].as_str().expect("data_dir"))
    }

    pub fn agent_pid(&self, name: &str) -> i32 {
        self.node(name)["agent_pid"].as_i64().expect("agent_pid") as i32
    }

    /// The node's keeper, while it runs.
    pub fn keeper_pid(&self, name: &str) -> Option<i32> {
        let state_dir = self.node(name)["state_dir"]
            .as_str()
            .map(PathBuf::from)
            .expect("state_dir");
        pgquorum::keeper::running_pid(&state_dir)
    }

    pub fn agent_log(&self, name: &str) -> PathBuf {
        self.path().join("logs").join(format!("agent-{name}.log"))
    }

    pub fn conninfo(&self, name: &str) -> String {
        node_conninfo(self.pg_port(name))
    }

    /// Every manager address, comma separated.
    pub fn managers(&self) -> String {
        self.file()["managers"]
            .as_array()
            .expect("managers")
            .iter()
            .map(|m| m["address"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `pgquorum --managers … ARGS…`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--managers")
            .arg(self.managers())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pgquorum")
    }

    /// `status --json`, or why not.
    pub fn status(&self) -> Result<Value, String> {
        let out = self.cli(&["--json", "status"]);
        if !out.status.success() {
            return Err(format!("status failed: {}", stderr(&out).trim()));
        }
        serde_json::from_str(&stdout(&out)).map_err(|e| format!("status --json: {e}"))
    }

    /// The current primary once there is one.
    pub fn primary(&self) -> String {
        poll("a primary", SETTLE, || {
            let s = self.status()?;
            s["primary"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| compact(&s))
        })
    }

    /// Wait for a primary other than `old`, healthy; its name.
    pub fn new_primary(&self, old: &str) -> String {
        poll(&format!("a new primary instead of {old}"), SETTLE, || {
            let s = self.status()?;
            match s["primary"].as_str() {
                Some(p) if p != old && node_of(&s, p)["healthy"] == true => Ok(p.to_string()),
                _ => Err(compact(&s)),
            }
        })
    }

    /// Wait until `primary` is the healthy primary and every other node
    /// streams, healthy, on the primary's timeline; the status then.
    pub fn wait_settled(&self, primary: &str, limit: Duration) -> Value {
        poll(
            &format!("{primary} primary and every other node streaming"),
            limit,
            || {
                let s = self.status()?;
                let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
                let p = nodes
                    .iter()
                    .find(|n| n["name"] == primary)
                    .ok_or("primary missing")?;
                let ok = s["primary"] == primary
                    && p["role"] == "primary"
                    && p["healthy"] == true
                    && nodes.iter().filter(|n| n["name"] != primary).all(|n| {
                        n["role"] == "replica"
                            && n["state"] == "streaming"
                            && n["healthy"] == true
                            && n["timeline"] == p["timeline"]
                    });
                if ok {
                    Ok(s)
                } else {
                    Err(compact(&s))
                }
            },
        )
    }

    /// Every pid the sandbox recorded plus every process running in one
    /// of its directories, alive now.
    pub fn live_processes(&self) -> Vec<i32> {
        let dir = self.path().display().to_string();
        let mut pids: Vec<i32> = Vec::new();
        if let Ok(text) = std::fs::read_to_string(self.path().join("sandbox.json")) {
            if let Ok(f) = serde_json::from_str::<Value>(&text) {
                let recorded = f["managers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m["pid"].as_i64().unwrap_or(0))
                    .chain(
                        f["nodes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|n| n["agent_pid"].as_i64().unwrap_or(0)),
                    )
                    .map(|p| p as i32)
                    // A recycled pid belongs to somebody else: only ours,
                    // whose command line names this sandbox.
                    .filter(|p| alive(*p) && cmdline(*p).contains(&dir));
                pids.extend(recorded);
            }
        }
        pids.extend(processes_in(self.path()));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn print_logs(&self) {
        let logs = self.path().join("logs");
        let Ok(entries) = std::fs::read_dir(&logs) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            eprintln!("----- {} (tail) -----\n{}", p.display(), tail(&p, 30));
        }
    }
}

/// A status in one line, for failure messages.
pub fn compact(s: &Value) -> String {
    let nodes = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            format!(
                "{} {}/{} tl={} healthy={} epoch={}",
                n["name"].as_str().unwrap_or("?"),
                n["role"].as_str().unwrap_or("?"),
                n["state"].as_str().unwrap_or("?"),
                n["timeline"],
                n["healthy"],
                n["epoch"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!("epoch {} primary {}: {nodes}", s["epoch"], s["primary"])
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // Frozen processes (SIGSTOP in a test) would stall a clean stop.
        for pid in self.live_processes() {
            signal(pid, Signal::SIGCONT);
        }
        let _ = self.run(&["down"]);
        let left = self.live_processes();
        if !left.is_empty() {
            eprintln!("sandbox down left {left:?}: killing them");
            for pid in &left {
                signal(*pid, Signal::SIGKILL);
            }
            wait_gone(&left, Duration::from_secs(10));
        }
    }
}

/// The names of the nodes in a `status --json`.
pub fn names(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_string())
        .collect()
}

/// One node of a `status --json`.
pub fn node_of<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}
