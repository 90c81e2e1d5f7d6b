//! Plaintext beyond this machine is a deliberate choice, not a default.
//!
//! Without TLS, whoever reaches a manager's port can switch over, pause,
//! reconfigure or remove a cluster, and whoever reaches an agent's HTTP
//! port can ask it for a failsafe promise. On loopback that is this
//! machine's users only (the sandbox, tests); anywhere else a manager or an
//! agent that would listen on, or dial, an address without TLS refuses to
//! start unless the operator sets `insecure = true` (or `--insecure`).

/// What an agent's plaintext HTTP port is called (its fix differs).
pub const SERVES_HTTP: &str = "serves HTTP on";

/// One address a process would use without TLS, and what for.
#[derive(Debug, Clone, Copy)]
pub struct Plaintext<'a> {
    /// "listens on", "dials the manager at"…
    pub what: &'static str,
    /// `HOST:PORT`, `[V6]:PORT` or a bare host.
    pub address: &'a str,
}

/// Refuse when any of `plaintext` is not a loopback address, unless
/// `insecure`. The message says which address, why, and both ways out.
pub fn check(role: &str, plaintext: &[Plaintext<'_>], insecure: bool) -> Result<(), String> {
    if insecure {
        return Ok(());
    }
    let Some(p) = plaintext.iter().find(|p| !is_loopback(host_of(p.address))) else {
        return Ok(());
    };
    // HTTP has its own certificate; gRPC needs the CA and this process's.
    let tls_keys = if p.what == SERVES_HTTP {
        "set http_cert and http_key in [tls]"
    } else {
        "set ca, cert and key in [tls]"
    };
    Err(format!(
        "this {role} {} {} without TLS, and that is not a loopback address: anyone who can \
         reach it could take control of the cluster. Turn TLS on (`pgquorum tls init DIR --hosts \
         HOST,…` writes a CA and certificates; then {tls_keys}, see docs/security.md), or, on a \
         network you trust, set `insecure = true` in the configuration file (or pass --insecure)",
        p.what, p.address
    ))
}

/// The host part of `HOST:PORT`, `[V6]:PORT`, or the text itself.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // A bare IPv6 address has more than one colon.
        Some((host, _)) if !host.contains(':') => host,
        _ => address,
    }
}

/// Only this machine can reach it. A wildcard address is reachable from
/// everywhere; a name other than `localhost` may resolve anywhere.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(address: &str) -> [Plaintext<'_>; 1] {
        [Plaintext {
            what: "listens on",
            address,
        }]
    }

    #[test]
    fn loopback_needs_nothing() {
        for a in [
            "127.0.0.1:7001",
            "127.0.0.2:1",
            "[::1]:7001",
            "localhost:7001",
            "::1",
        ] {
            assert_eq!(check("manager", &listen(a), false), Ok(()), "{a}");
        }
        assert_eq!(check("manager", &[], false), Ok(()));
    }

    #[test]
    fn anything_else_needs_tls_or_a_deliberate_insecure() {
        for a in [
            "10.0.0.1:7001",
            "0.0.0.0:7001",
            "[::]:7001",
            "db1.example.com:7001",
            "fe80::1",
        ] {
            let e = check("manager", &listen(a), false).expect_err(a);
            assert!(
                e.starts_with(&format!("this manager listens on {a} without TLS")),
                "{e}"
            );
            assert!(
                e.contains("pgquorum tls init") && e.contains("insecure = true"),
                "{e}"
            );
            assert_eq!(check("manager", &listen(a), true), Ok(()));
        }
        // The first exposed address is the one named.
        let e = check(
            "agent",
            &[
                Plaintext {
                    what: "dials the manager at",
                    address: "127.0.0.1:7001",
                },
                Plaintext {
                    what: "dials the manager at",
                    address: "10.0.0.2:7001",
                },
            ],
            false,
        )
        .expect_err("exposed");
        assert!(
            e.starts_with("this agent dials the manager at 10.0.0.2:7001"),
            "{e}"
        );
    }
}
