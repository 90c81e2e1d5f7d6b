//! Test "hosts" in network namespaces, joined by a bridge, so that a test
//! can cut links between them.
//!
//! Each host gets its own address in a private /24 and a veth pair to the
//! bridge; the test process (root namespace) reaches every host through the
//! bridge's own address, like a client outside the cluster. A link FROM→TO is
//! cut silently with a permanent neighbour entry in FROM's namespace that
//! maps TO's address to an unused MAC: packets leave and vanish, so
//! connections time out as in a real partition. Everything is torn down on
//! drop, even when the test fails.

#![allow(dead_code)]

use std::process::Command;

/// The /24 these tests use, chosen to stay clear of common private ranges.
pub const SUBNET: &str = "10.213.47";
const BLACKHOLE_MAC: &str = "02:00:00:00:00:01";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Network namespaces for `test`: usable, or a visible skip (a failure in
/// CI, see [`super::root_test_can_run`]).
pub fn usable(test: &str) -> bool {
    super::root_test_can_run(available(), test, "root and iproute2 (network namespaces)")
}

/// Can this process make network namespaces (root, iproute2 present)?
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// One test host.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub address: String,
}

/// A set of hosts on one bridge — or, without namespaces, on loopback
/// addresses of their own (127.x.y.11, .12, …), which needs no root but
/// cannot be cut.
pub struct Network {
    tag: String,
    bridge: String,
    namespaces: bool,
    pub hosts: Vec<Host>,
}

impl Network {
    /// Create `n` hosts: addresses SUBNET.11, .12, …; the bridge is SUBNET.1.
    pub fn create(n: usize) -> Result<Network, String> {
        // Short, unique per process: interface names are limited to 15 chars.
        let tag = format!("{:x}", std::process::id() % 0xffff);
        let bridge = format!("pqb{tag}");
        let mut net = Network {
            tag: tag.clone(),
            bridge: bridge.clone(),
            namespaces: true,
            hosts: Vec::new(),
        };
        // A bridge left by a crashed run of this very process id: remove.
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{SUBNET}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 1..=n {
            let ns = format!("pqt{tag}h{i}");
            let outer = format!("pqv{tag}h{i}");
            let address = format!("{SUBNET}.{}", 10 + i);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            net.hosts.push(Host {
                name: format!("h{i}"),
                ns: ns.clone(),
                address: address.clone(),
            });
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// `n` hosts on loopback addresses of their own (random 127.x.y.0/24,
    /// so that tests can run side by side).
    pub fn loopback(n: usize) -> Network {
        let (a, b) = (
            1 + rand::random::<u8>() % 250,
            1 + rand::random::<u8>() % 250,
        );
        Network {
            tag: String::new(),
            bridge: String::new(),
            namespaces: false,
            hosts: (1..=n)
                .map(|i| Host {
                    name: format!("h{i}"),
                    ns: String::new(),
                    address: format!("127.{a}.{b}.{}", 10 + i),
                })
                .collect(),
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("known host")
    }

    /// A command that runs inside `host`'s namespace (the pid of the spawned
    /// child is the program's own: `ip netns exec` execs it).
    pub fn command(&self, host: &Host, program: &std::path::Path) -> Command {
        if !self.namespaces {
            return Command::new(program);
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        c
    }

    /// Cut traffic from `from` to `to` (one direction).
    pub fn cut(&self, from: &Host, to: &Host) {
        assert!(self.namespaces, "loopback hosts cannot be cut");
        ip(&[
            "-n",
            &from.ns,
            "neigh",
            "replace",
            &to.address,
            "lladdr",
            BLACKHOLE_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .expect("cut link");
    }

    /// Restore traffic from `from` to `to`.
    pub fn heal(&self, from: &Host, to: &Host) {
        let _ = ip(&["-n", &from.ns, "neigh", "del", &to.address, "dev", "eth0"]);
    }

    /// Cut `host` off from every other host, both ways (the root namespace,
    /// where clients run, can still reach it).
    pub fn isolate(&self, host: &Host) {
        for other in self.hosts.iter().filter(|h| h.name != host.name) {
            self.cut(host, other);
            self.cut(other, host);
        }
    }

    /// Undo `isolate`.
    pub fn rejoin(&self, host: &Host) {
        for other in self.hosts.iter().filter(|h| h.name != host.name) {
            self.heal(host, other);
            self.heal(other, host);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.namespaces {
            return;
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        for i in 1..=self.hosts.len() {
            let _ = ip(&["link", "del", &format!("pqv{}h{i}", self.tag)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
