//! HAProxy in front of a sandbox, with the shipped `deploy/haproxy.cfg`
//! adapted to the sandbox's addresses: the test and the benchmark check
//! the configuration operators copy, not one of their own.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Proc;

/// The HAProxy program: the distribution's, installed by `scripts/prereqs`.
pub fn binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/haproxy");
    if sbin.exists() {
        return sbin;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("haproxy"))
                .find(|p| p.exists())
        })
        .expect("HAProxy is not installed: run scripts/prereqs (apt-get install haproxy)")
}

/// `deploy/haproxy.cfg` for the nodes of a `sandbox.json`: their servers
/// in place of db1…db3 (in order), checks against their agents' HTTP
/// ports over plain HTTP (the sandbox has no TLS), the front ends on
/// loopback at `base` (writes), `base + 1` (replicas) and `base + 2`
/// (read-only, the primary included).
pub fn config_for_sandbox(sandbox: &Value, base: u16) -> String {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .expect("deploy/haproxy.cfg");
    let nodes = sandbox["nodes"].as_array().expect("nodes");
    let mut out = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let line = line.replace(
            " check-ssl verify required ca-file /etc/pgquorum/tls/ca.pem",
            "",
        );
        if let Some(offset) = trimmed
            .strip_prefix("bind *:500")
            .and_then(|d| d.parse::<u16>().ok())
        {
            out.push_str(&format!("    bind 127.0.0.1:{}\n", base + offset));
        } else if let Some(i) = trimmed
            .strip_prefix("server db")
            .and_then(|rest| rest.chars().next()?.to_digit(10))
        {
            let n = &nodes[(i - 1) as usize];
            let (http_host, http_port) = n["http"]
                .as_str()
                .and_then(|h| h.rsplit_once(':'))
                .expect("http address");
            let rest = line
                .split_once(" maxconn")
                .map(|(_, r)| format!(" maxconn{r}"))
                .expect("server line")
                .replace(
                    "check port 8008",
                    &format!("check addr {http_host} port {http_port}"),
                );
            out.push_str(&format!(
                "    server {} {}:{}{rest}\n",
                n["name"].as_str().expect("name"),
                n["pg_host"].as_str().expect("pg_host"),
                n["pg_port"],
            ));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A running HAProxy (foreground, stopped with the test).
pub struct HaProxy {
    pub proc: Proc,
}

impl HaProxy {
    /// Check `config` and start HAProxy on it; its output goes to `dir`.
    pub fn start(dir: &Path, config: &str) -> HaProxy {
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).expect("write haproxy.cfg");
        let check = std::process::Command::new(binary())
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "HAProxy refuses the adapted deploy/haproxy.cfg: {}\n{config}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = std::process::Command::new(binary());
        cmd.arg("-db").arg("-f").arg(&file);
        HaProxy {
            proc: Proc::spawn("haproxy", &mut cmd, &dir.join("haproxy.log")),
        }
    }
}
