//! The faults a drill injects, each with its heal. Which fault comes next,
//! whom it hits and how long it lasts are drawn from a seeded generator, the
//! same three draws per fault, so that a seed replays the same sequence of
//! choices (the cluster's own timing still varies from run to run).

use std::time::Duration;

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cluster::Cluster;
use crate::proto::api::ClusterStatus;

/// Every kind of fault, by the name `--faults` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Agent, keeper, PostgreSQL (and a manager on the host) SIGKILLed;
    /// restarted at the heal.
    HostCrash,
    /// The agent alone SIGKILLed; restarted at the heal.
    AgentKill,
    /// The agent alone SIGSTOPped; SIGCONT at the heal.
    AgentFreeze,
    /// Everything on the host SIGSTOPped; SIGCONT at the heal.
    HostFreeze,
    /// The postmaster and its children SIGSTOPped, the agent alive.
    PostgresFreeze,
    /// The primary's host cut off from every other host.
    PrimaryIsolate,
    /// A replica's host cut off from every other host.
    ReplicaIsolate,
    /// The managers split into a majority and a minority.
    ManagerSplit,
    /// The Raft leader's host cut off from every other host.
    LeaderIsolate,
    /// The primary hears nobody (everything sent to it vanishes).
    PrimaryDeaf,
    /// Nobody hears the primary (everything it sends vanishes).
    PrimaryMute,
    /// A manager SIGKILLed; restarted at the heal.
    ManagerKill,
    /// Every manager stopped (SIGTERM or SIGKILL) and restarted at the heal.
    ManagersRestart,
    /// `switchover --to` a replica.
    Switchover,
    /// The primary's host crashes and the operator runs `failover --to` a
    /// replica of their choice.
    FailoverTo,
}

impl Kind {
    pub const ALL: [Kind; 15] = [
        Kind::HostCrash,
        Kind::AgentKill,
        Kind::AgentFreeze,
        Kind::HostFreeze,
        Kind::PostgresFreeze,
        Kind::PrimaryIsolate,
        Kind::ReplicaIsolate,
        Kind::ManagerSplit,
        Kind::LeaderIsolate,
        Kind::PrimaryDeaf,
        Kind::PrimaryMute,
        Kind::ManagerKill,
        Kind::ManagersRestart,
        Kind::Switchover,
        Kind::FailoverTo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::HostCrash => "host-crash",
            Kind::AgentKill => "agent-kill",
            Kind::AgentFreeze => "agent-freeze",
            Kind::HostFreeze => "host-freeze",
            Kind::PostgresFreeze => "postgres-freeze",
            Kind::PrimaryIsolate => "primary-isolate",
            Kind::ReplicaIsolate => "replica-isolate",
            Kind::ManagerSplit => "manager-split",
            Kind::LeaderIsolate => "leader-isolate",
            Kind::PrimaryDeaf => "primary-deaf",
            Kind::PrimaryMute => "primary-mute",
            Kind::ManagerKill => "manager-kill",
            Kind::ManagersRestart => "managers-restart",
            Kind::Switchover => "switchover",
            Kind::FailoverTo => "failover-to",
        }
    }

    /// Hits one node (the primary or a replica), as opposed to the network,
    /// the managers or the cluster as a whole.
    pub fn hits_node(self) -> bool {
        matches!(
            self,
            Kind::HostCrash
                | Kind::AgentKill
                | Kind::AgentFreeze
                | Kind::HostFreeze
                | Kind::PostgresFreeze
        )
    }

    /// Needs hosts whose links can be cut (network namespaces, root).
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            Kind::PrimaryIsolate
                | Kind::ReplicaIsolate
                | Kind::ManagerSplit
                | Kind::LeaderIsolate
                | Kind::PrimaryDeaf
                | Kind::PrimaryMute
        )
    }

    /// `--faults` names, comma-separated; `all` is every kind.
    pub fn parse_list(list: &str) -> Result<Vec<Kind>, String> {
        let mut kinds = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                kinds.extend(Kind::ALL);
                continue;
            }
            match Kind::ALL.iter().find(|k| k.name() == name) {
                Some(k) => kinds.push(*k),
                None => {
                    return Err(format!(
                        "unknown fault `{name}`; the faults are: all, {}",
                        Kind::ALL.map(Kind::name).join(", ")
                    ))
                }
            }
        }
        kinds.sort();
        kinds.dedup();
        if kinds.is_empty() {
            return Err("--faults names no fault".into());
        }
        Ok(kinds)
    }
}

/// The seeded sequence of choices. Kinds come out of a shuffled bag —
/// every kind once, then every kind again in a new order — so that even a
/// short drill runs every kind.
pub struct Plan {
    rng: StdRng,
    kinds: Vec<Kind>,
    bag: Vec<Kind>,
    /// Holds are drawn from [min_hold, max_hold].
    min_hold: Duration,
    max_hold: Duration,
}

/// One fault to inject: what, a number to pick its target with, and how
/// long to hold it.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    pub kind: Kind,
    pub pick: u32,
    pub hold: Duration,
}

impl Plan {
    /// Holds from half a second to two leases and a second: some faults end
    /// before the lease does, some well after.
    pub fn new(seed: u64, kinds: Vec<Kind>, ttl: Duration) -> Plan {
        Plan {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            bag: Vec::new(),
            min_hold: Duration::from_millis(500),
            max_hold: ttl * 2 + Duration::from_secs(1),
        }
    }

    pub fn draw(&mut self) -> Choice {
        if self.bag.is_empty() {
            use rand::seq::SliceRandom;
            self.bag = self.kinds.clone();
            self.bag.shuffle(&mut self.rng);
        }
        let kind = self.bag.pop().unwrap_or(Kind::Switchover);
        let pick = self.rng.gen::<u32>();
        let hold = Duration::from_millis(
            self.rng
                .gen_range(self.min_hold.as_millis() as u64..=self.max_hold.as_millis() as u64),
        );
        Choice { kind, pick, hold }
    }
}

/// How to undo an injected fault.
#[derive(Debug, Clone)]
pub enum Heal {
    Nothing,
    RestartHost(String),
    RestartAgent(String),
    Thaw(Vec<i32>),
    Links(Vec<(String, String)>),
    RestartManagers(Vec<u64>),
}

/// Roles as the managers last reported them.
pub struct Roles {
    pub primary: String,
    pub replicas: Vec<String>,
    pub leader: Option<u64>,
}

impl Roles {
    pub fn of(status: &ClusterStatus) -> Roles {
        Roles {
            primary: status.primary.clone(),
            replicas: status
                .nodes
                .iter()
                .filter(|n| n.name != status.primary)
                .map(|n| n.name.clone())
                .collect(),
            leader: status
                .managers
                .iter()
                .find(|m| m.role == "leader")
                .map(|m| m.id),
        }
    }
}

fn pick<T: Clone>(list: &[T], n: u32) -> Option<T> {
    (!list.is_empty()).then(|| list[n as usize % list.len()].clone())
}

/// The node a node fault hits: the primary two times in three, otherwise a
/// replica.
fn node_target(roles: &Roles, n: u32) -> String {
    if n % 3 != 0 || roles.replicas.is_empty() {
        roles.primary.clone()
    } else {
        pick(&roles.replicas, n / 3).unwrap_or_else(|| roles.primary.clone())
    }
}

/// Whom a fault hits, decided before anything is done (so that it can be
/// written down first, and overlapping faults can keep apart).
#[derive(Debug, Clone)]
pub struct Aim {
    pub kind: Kind,
    /// The node or host hit (empty for faults on all managers).
    pub target: String,
    /// Hosts whose nodes the fault can cost their primary role (for the
    /// checker), or that a second fault must not touch.
    pub hosts: Vec<String>,
    /// Links to cut, for network faults.
    links: Vec<(String, String)>,
    /// The managers hit, for manager faults.
    managers: Vec<u64>,
    /// The replica a switchover or `failover --to` names.
    to: String,
    pub detail: String,
}

/// Decide whom `choice` hits, given the roles; why not, when it cannot run
/// now (no replica to switch over to, say).
pub fn aim(cluster: &Cluster, choice: Choice, roles: &Roles) -> Result<Aim, String> {
    let n = choice.pick;
    let mut a = Aim {
        kind: choice.kind,
        target: String::new(),
        hosts: Vec::new(),
        links: Vec::new(),
        managers: Vec::new(),
        to: String::new(),
        detail: String::new(),
    };
    let primary = roles.primary.clone();
    if primary.is_empty() {
        return Err("there is no primary".into());
    }
    match choice.kind {
        Kind::HostCrash
        | Kind::AgentKill
        | Kind::AgentFreeze
        | Kind::HostFreeze
        | Kind::PostgresFreeze => {
            a.target = node_target(roles, n);
            a.hosts = vec![a.target.clone()];
            a.detail = match choice.kind {
                Kind::HostCrash => "SIGKILL of everything on the host",
                Kind::AgentKill => "SIGKILL of the agent",
                Kind::AgentFreeze => "SIGSTOP of the agent",
                Kind::HostFreeze => "SIGSTOP of everything on the host",
                _ => "SIGSTOP of the postmaster and its children",
            }
            .into();
        }
        Kind::PrimaryIsolate | Kind::ReplicaIsolate | Kind::LeaderIsolate => {
            a.target = match choice.kind {
                Kind::PrimaryIsolate => primary,
                Kind::ReplicaIsolate => {
                    pick(&roles.replicas, n).ok_or("there is no replica to isolate")?
                }
                _ => {
                    let leader = roles.leader.ok_or("there is no Raft leader to isolate")?;
                    cluster
                        .managers
                        .iter()
                        .find(|m| m.id == leader)
                        .map(|m| m.host.name.clone())
                        .ok_or("the leader is not one of the drill's managers")?
                }
            };
            a.links = cluster.net.links_of(&a.target);
            a.hosts = vec![a.target.clone()];
            a.detail = "cut off from every other host".into();
        }
        Kind::PrimaryDeaf | Kind::PrimaryMute => {
            let deaf = choice.kind == Kind::PrimaryDeaf;
            a.links = cluster
                .net
                .links_of(&primary)
                .into_iter()
                .filter(|(from, _)| (*from == primary) != deaf)
                .collect();
            a.target = primary.clone();
            a.hosts = vec![primary];
            a.detail = if deaf {
                "nothing sent to it arrives"
            } else {
                "nothing it sends arrives"
            }
            .into();
        }
        Kind::ManagerSplit => {
            let hosts: Vec<String> = cluster
                .managers
                .iter()
                .map(|m| m.host.name.clone())
                .collect();
            if hosts.len() < 3 {
                return Err("a split needs at least 3 managers".into());
            }
            let first = n as usize % hosts.len();
            let minority: Vec<String> = (0..(hosts.len() - 1) / 2)
                .map(|i| hosts[(first + i) % hosts.len()].clone())
                .collect();
            let majority: Vec<String> = hosts
                .iter()
                .filter(|h| !minority.contains(h))
                .cloned()
                .collect();
            a.links = minority
                .iter()
                .flat_map(|x| {
                    majority
                        .iter()
                        .flat_map(move |y| [(x.clone(), y.clone()), (y.clone(), x.clone())])
                })
                .collect();
            // The nodes that lose: those cut off with the minority
            // (colocated managers share their hosts).
            a.hosts = minority
                .iter()
                .filter(|h| cluster.nodes.contains(h))
                .cloned()
                .collect();
            a.target = minority.join(",");
            a.detail = format!(
                "managers on {} cut from those on {}",
                minority.join(","),
                majority.join(",")
            );
        }
        Kind::ManagerKill => {
            let ids: Vec<u64> = cluster.managers.iter().map(|m| m.id).collect();
            let id = pick(&ids, n).ok_or("no manager")?;
            a.managers = vec![id];
            a.target = cluster
                .managers
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.host.name.clone())
                .unwrap_or_default();
            a.detail = format!(
                "SIGKILL of manager {id}{}",
                if roles.leader == Some(id) {
                    " (the leader)"
                } else {
                    ""
                }
            );
        }
        Kind::ManagersRestart => {
            a.managers = cluster.managers.iter().map(|m| m.id).collect();
            a.detail = format!(
                "every manager stopped with {}",
                if n % 2 == 0 { "SIGKILL" } else { "SIGTERM" }
            );
        }
        Kind::Switchover | Kind::FailoverTo => {
            a.to = pick(&roles.replicas, n).ok_or("there is no replica to hand over to")?;
            a.target = primary.clone();
            a.hosts = vec![primary.clone()];
            a.detail = if choice.kind == Kind::Switchover {
                format!("to {}", a.to)
            } else {
                format!("{primary} crashed, then failover --to {}", a.to)
            };
        }
    }
    Ok(a)
}

/// An injected fault: how to heal it, and the operator command it issued
/// (the command line, whether the managers accepted it, their answer).
#[derive(Debug, Clone)]
pub struct Injected {
    pub heal: Heal,
    pub operation: Option<(String, bool, String)>,
}

/// Inject the fault `aim` describes.
pub async fn inject(cluster: &mut Cluster, aim: &Aim, choice: Choice) -> Result<Injected, String> {
    let healing = |heal| Injected {
        heal,
        operation: None,
    };
    Ok(match aim.kind {
        Kind::HostCrash => {
            cluster.crash_host(&aim.target);
            healing(Heal::RestartHost(aim.target.clone()))
        }
        Kind::AgentKill => {
            cluster.kill_agent(&aim.target);
            healing(Heal::RestartAgent(aim.target.clone()))
        }
        Kind::AgentFreeze => {
            let pids: Vec<i32> = cluster.agent_pid(&aim.target).into_iter().collect();
            crate::process::signal_all(&pids, Signal::SIGSTOP);
            healing(Heal::Thaw(pids))
        }
        Kind::HostFreeze => {
            let target = aim.target.clone();
            healing(Heal::Thaw(crate::process::stop_all(|| {
                cluster.host_pids(&target)
            })))
        }
        Kind::PostgresFreeze => {
            let target = aim.target.clone();
            healing(Heal::Thaw(crate::process::stop_all(|| {
                cluster.postgres_pids(&target)
            })))
        }
        Kind::PrimaryIsolate
        | Kind::ReplicaIsolate
        | Kind::LeaderIsolate
        | Kind::PrimaryDeaf
        | Kind::PrimaryMute
        | Kind::ManagerSplit => {
            cluster
                .net
                .cut_links(&aim.links)
                .map_err(|e| e.to_string())?;
            healing(Heal::Links(aim.links.clone()))
        }
        Kind::ManagerKill => {
            for id in &aim.managers {
                cluster.kill_manager(*id);
            }
            healing(Heal::RestartManagers(aim.managers.clone()))
        }
        Kind::ManagersRestart => {
            for id in &aim.managers {
                if choice.pick % 2 == 0 {
                    cluster.kill_manager(*id);
                } else {
                    cluster.stop_manager(*id);
                }
            }
            healing(Heal::RestartManagers(aim.managers.clone()))
        }
        Kind::Switchover => {
            let to = &aim.to;
            // Refused for now (the target still catching up, a failsafe
            // promise running out)? The operator tries again for a while.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let (mut accepted, mut answer) = cluster.api().switchover(to).await;
            while !accepted && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                (accepted, answer) = cluster.api().switchover(to).await;
            }
            if accepted {
                // A switchover is over when someone else is the primary
                // (or the managers gave up).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < deadline {
                    let s = cluster.api().status().await;
                    if s.is_some_and(|s| !s.primary.is_empty() && s.primary != aim.target) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Injected {
                heal: Heal::Nothing,
                operation: Some((format!("switchover --to {to}"), accepted, answer)),
            }
        }
        Kind::FailoverTo => {
            let (old, to) = (&aim.target, &aim.to);
            cluster.crash_host(old);
            // The operator retries until the managers take it, or until
            // automatic failover has made someone else primary.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let (mut accepted, mut answer) = cluster.api().failover(to).await;
            while !accepted && tokio::time::Instant::now() < deadline {
                if let Some(s) = cluster.api().status().await {
                    if !s.primary.is_empty() && s.primary != *old {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                (accepted, answer) = cluster.api().failover(to).await;
            }
            Injected {
                heal: Heal::RestartHost(old.clone()),
                operation: Some((format!("failover --to {to}"), accepted, answer)),
            }
        }
    })
}

/// Undo a fault.
pub fn heal(cluster: &mut Cluster, heal: &Heal) -> Result<(), String> {
    match heal {
        Heal::Nothing => {}
        Heal::RestartHost(host) => cluster.restart_host(host).map_err(|e| e.to_string())?,
        Heal::RestartAgent(node) => cluster.start_agent(node).map_err(|e| e.to_string())?,
        Heal::Thaw(pids) => crate::process::signal_all(pids, Signal::SIGCONT),
        Heal::Links(links) => cluster.net.heal_links(links),
        Heal::RestartManagers(ids) => {
            for id in ids {
                cluster.start_manager(*id).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_parse_and_unknown_ones_are_named() {
        assert_eq!(
            Kind::parse_list("host-crash, switchover").unwrap(),
            vec![Kind::HostCrash, Kind::Switchover]
        );
        assert_eq!(Kind::parse_list("all").unwrap().len(), Kind::ALL.len());
        let e = Kind::parse_list("host-crash,disk-full").unwrap_err();
        assert!(
            e.contains("unknown fault `disk-full`") && e.contains("agent-kill"),
            "{e}"
        );
        assert!(Kind::parse_list(" , ").is_err());
    }

    #[test]
    fn a_seed_replays_the_same_choices() {
        let kinds = Kind::ALL.to_vec();
        let ttl = Duration::from_secs(2);
        let a: Vec<_> = {
            let mut p = Plan::new(7, kinds.clone(), ttl);
            (0..50)
                .map(|_| p.draw())
                .map(|c| (c.kind, c.pick, c.hold))
                .collect()
        };
        let b: Vec<_> = {
            let mut p = Plan::new(7, kinds.clone(), ttl);
            (0..50)
                .map(|_| p.draw())
                .map(|c| (c.kind, c.pick, c.hold))
                .collect()
        };
        assert_eq!(a, b);
        let c: Vec<_> = {
            let mut p = Plan::new(8, kinds, ttl);
            (0..50)
                .map(|_| p.draw())
                .map(|c| (c.kind, c.pick, c.hold))
                .collect()
        };
        assert_ne!(a, c);
        assert!(a
            .iter()
            .all(|(_, _, h)| *h >= Duration::from_millis(500) && *h <= Duration::from_secs(5)));
        // Every kind comes once before any comes twice.
        let first: std::collections::BTreeSet<Kind> =
            a.iter().take(Kind::ALL.len()).map(|(k, _, _)| *k).collect();
        assert_eq!(first.len(), Kind::ALL.len());
    }

    #[test]
    fn node_faults_hit_the_primary_mostly_and_replicas_too() {
        let roles = Roles {
            primary: "n1".into(),
            replicas: vec!["n2".into(), "n3".into()],
            leader: Some(1),
        };
        let targets: Vec<String> = (0..30).map(|n| node_target(&roles, n)).collect();
        assert_eq!(targets.iter().filter(|t| *t == "n1").count(), 20);
        assert!(targets.contains(&"n2".to_string()) && targets.contains(&"n3".to_string()));
    }
}
