//! Hosts for a drill (and for the partition tests): network namespaces
//! joined by a bridge, so that links between them can be cut.
//!
//! Each host gets its own address in a private /24 and a veth pair to the
//! bridge; the drill itself (the root namespace) reaches every host through
//! the bridge's address, like a client outside the cluster. A link FROM→TO
//! is cut silently with a permanent neighbour entry in FROM's namespace that
//! maps TO's address to an unused MAC: packets leave and vanish, so
//! connections time out as in a real partition. Everything is torn down on
//! drop, also when the drill fails.
//!
//! Without root there are no namespaces: hosts are loopback addresses of
//! their own (127.x.y.11, …), which cannot be cut.

use std::path::Path;
use std::process::Command;

const BLACKHOLE_MAC: &str = "02:00:00:00:00:01";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`ip {args}` failed: {why}")]
    Ip { args: String, why: String },
    #[error("no free private /24 for the drill's hosts among 10.213.40.0–10.213.239.0; remove stale bridges (`ip -br addr`)")]
    NoFreeSubnet,
    #[error("hosts on loopback cannot be cut from each other (network faults need root)")]
    Loopback,
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip {
            args: args.join(" "),
            why: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            args: args.join(" "),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Drop the neighbour entry that cuts `from` → `to`.
fn uncut(from: &Host, to: &Host) {
    let _ = ip(&["-n", &from.ns, "neigh", "del", &to.address, "dev", "eth0"]);
}

/// Can this process make network namespaces (root, iproute2 present)?
pub fn namespaces_available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Its namespace; empty on loopback.
    pub ns: String,
    pub address: String,
}

/// A set of hosts on one bridge, or on loopback.
pub struct Network {
    tag: String,
    bridge: String,
    namespaces: bool,
    /// How many faults cut each link (from, to): overlapping faults may
    /// cut the same one, and healing one must not heal the other.
    cuts: std::sync::Mutex<std::collections::HashMap<(String, String), u32>>,
    /// The /24's first three octets.
    pub subnet: String,
    pub hosts: Vec<Host>,
}

/// Does an interface other than `except` hold an address in `prefix`.0/24?
fn subnet_in_use(prefix: &str, except: &str) -> bool {
    let Ok(out) = Command::new("ip").args(["-o", "addr", "show"]).output() else {
        return true;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&format!(" {prefix}.")) && l.split_whitespace().nth(1) != Some(except))
}

impl Network {
    /// Hosts named `names` in namespaces, on `subnet`.0/24 (addresses .11,
    /// .12, …; the bridge is .1), or on the first free 10.213.x.0/24 when
    /// `subnet` is None.
    pub fn create(names: &[String], subnet: Option<&str>) -> Result<Network, NetError> {
        // Short, and unique per process and network: interface names are
        // limited to 15 characters.
        static NETWORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NETWORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
        let tag = format!("{:x}{n:x}", std::process::id() % 0xffff);
        let bridge = format!("pqb{tag}");
        let mut net = Network {
            tag: tag.clone(),
            bridge: bridge.clone(),
            namespaces: true,
            cuts: Default::default(),
            subnet: String::new(),
            hosts: Vec::new(),
        };
        // Left by a crashed run with this very process id.
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        // Claim a /24: take its first address, then make sure nobody else
        // (another drill starting at the same moment) holds one in it too.
        let candidates: Vec<String> = match subnet {
            Some(s) => vec![s.to_string()],
            None => {
                let first = rand::random::<usize>() % 200;
                (0..200)
                    .map(|i| format!("10.213.{}", 40 + (first + i) % 200))
                    .collect()
            }
        };
        for prefix in candidates {
            if subnet_in_use(&prefix, &bridge) {
                continue;
            }
            let address = format!("{prefix}.1/24");
            ip(&["addr", "add", &address, "dev", &bridge])?;
            if subnet_in_use(&prefix, &bridge) {
                let _ = ip(&["addr", "del", &address, "dev", &bridge]);
                continue;
            }
            net.subnet = prefix;
            break;
        }
        if net.subnet.is_empty() {
            return Err(NetError::NoFreeSubnet);
        }
        let subnet = net.subnet.clone();
        ip(&["link", "set", &bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("pqt{tag}h{}", i + 1);
            let outer = format!("pqv{tag}h{}", i + 1);
            let address = format!("{subnet}.{}", 11 + i);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            net.hosts.push(Host {
                name: name.clone(),
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

    /// Hosts named `names` on loopback addresses of their own (a random
    /// 127.x.y.0/24, so that several can run side by side).
    pub fn loopback(names: &[String]) -> Network {
        let (a, b) = (
            1 + rand::random::<u8>() % 250,
            1 + rand::random::<u8>() % 250,
        );
        let subnet = format!("127.{a}.{b}");
        Network {
            tag: String::new(),
            bridge: String::new(),
            namespaces: false,
            cuts: Default::default(),
            hosts: names
                .iter()
                .enumerate()
                .map(|(i, name)| Host {
                    name: name.clone(),
                    ns: String::new(),
                    address: format!("{subnet}.{}", 11 + i),
                })
                .collect(),
            subnet,
        }
    }

    pub fn namespaces(&self) -> bool {
        self.namespaces
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// A command that runs `program` inside `host`'s namespace (the pid of
    /// the spawned child is the program's own: `ip netns exec` execs it).
    pub fn command(&self, host: &Host, program: &Path) -> Command {
        if !self.namespaces {
            return Command::new(program);
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        c
    }

    /// Cut traffic from `from` to `to` (one direction).
    pub fn cut(&self, from: &Host, to: &Host) -> Result<(), NetError> {
        if !self.namespaces {
            return Err(NetError::Loopback);
        }
        let key = (from.name.clone(), to.name.clone());
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        if cuts.get(&key).copied().unwrap_or(0) == 0 {
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
            ])?;
        }
        *cuts.entry(key).or_default() += 1;
        Ok(())
    }

    /// Undo one `cut` of traffic from `from` to `to`: the link comes back
    /// when no other fault still cuts it.
    pub fn heal(&self, from: &Host, to: &Host) {
        if !self.namespaces {
            return;
        }
        let key = (from.name.clone(), to.name.clone());
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        let left = match cuts.get_mut(&key) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            cuts.remove(&key);
            uncut(from, to);
        }
    }

    /// Cut every link (from, to) of `links`, by host name; all or none:
    /// when one fails, those already cut are healed again.
    pub fn cut_links(&self, links: &[(String, String)]) -> Result<(), NetError> {
        let unknown = |name: &str| NetError::Ip {
            args: format!("neigh (host {name})"),
            why: "no such host".into(),
        };
        for (i, (from, to)) in links.iter().enumerate() {
            let done = (|| {
                let a = self.host(from).ok_or_else(|| unknown(from))?;
                let b = self.host(to).ok_or_else(|| unknown(to))?;
                self.cut(a, b)
            })();
            if let Err(e) = done {
                self.heal_links(&links[..i]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undo `cut_links`.
    pub fn heal_links(&self, links: &[(String, String)]) {
        for (from, to) in links {
            if let (Some(a), Some(b)) = (self.host(from), self.host(to)) {
                self.heal(a, b);
            }
        }
    }

    /// Every link between `host` and the others, both ways.
    pub fn links_of(&self, host: &str) -> Vec<(String, String)> {
        self.hosts
            .iter()
            .filter(|h| h.name != host)
            .flat_map(|h| {
                [
                    (host.to_string(), h.name.clone()),
                    (h.name.clone(), host.to_string()),
                ]
            })
            .collect()
    }

    /// Cut `host` off from every other host, both ways (the root
    /// namespace, where clients run, can still reach it).
    pub fn isolate(&self, host: &Host) -> Result<(), NetError> {
        self.cut_links(&self.links_of(&host.name))
    }

    /// Undo `isolate`.
    pub fn rejoin(&self, host: &Host) {
        self.heal_links(&self.links_of(&host.name));
    }

    /// Undo every cut, whoever made it.
    pub fn heal_all(&self) {
        if !self.namespaces {
            return;
        }
        let links: Vec<(String, String)> = {
            let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
            cuts.drain().map(|(k, _)| k).collect()
        };
        for (from, to) in links {
            if let (Some(a), Some(b)) = (self.host(&from), self.host(&to)) {
                uncut(a, b);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if !self.namespaces {
            return;
        }
        for h in &self.hosts {
            // Whatever still runs in the namespace (a pg_basebackup, a
            // pg_rewind the agent started) would keep it alive.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &h.ns]).output() {
                let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                crate::process::signal_all(&pids, nix::sys::signal::Signal::SIGCONT);
                crate::process::signal_all(&pids, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = ip(&["netns", "del", &h.ns]);
        }
        for i in 1..=self.hosts.len() {
            let _ = ip(&["link", "del", &format!("pqv{}h{i}", self.tag)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
