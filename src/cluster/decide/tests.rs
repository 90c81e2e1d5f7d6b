//! The decision core, asserted on exact outputs.

use super::*;
use crate::cluster::state::{ClusterState, Tags};
use crate::cluster::wire::{AgentPhase, CommandOutcome, PgStatus, ReplicaConnection, WalReceiver};

const SYSID: u64 = 42;

/// Nodes n1.. (10.0.0.1..), bootstrapped on n1 with data, `config` set.
fn cluster(nodes: &[(&str, Tags)], config: &[(&str, &str)]) -> Cluster {
    let mut s = ClusterState::default();
    for (i, (name, tags)) in nodes.iter().enumerate() {
        ClusterCommand::RegisterNode {
            cluster: "main".into(),
            name: (*name).into(),
            host: format!("10.0.0.{}", i + 1),
            port: 5432,
            http: format!("10.0.0.{}:8008", i + 1),
            tags: tags.clone(),
        }
        .apply(&mut s)
        .unwrap();
    }
    if !config.is_empty() {
        ClusterCommand::SetConfig {
            at_unix_ms: 0,
            cluster: "main".into(),
            changes: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
        .apply(&mut s)
        .unwrap();
    }
    for c in [
        ClusterCommand::Bootstrap {
            cluster: "main".into(),
            node: nodes[0].0.into(),
            at_unix_ms: 0,
        },
        ClusterCommand::SetSystemIdentifier {
            cluster: "main".into(),
            id: SYSID,
        },
    ] {
        c.apply(&mut s).unwrap();
    }
    s.clusters["main"].clone()
}

fn three(config: &[(&str, &str)]) -> Cluster {
    let nodes: Vec<(&str, Tags)> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| (*n, Tags::default()))
        .collect();
    cluster(&nodes, config)
}

fn apply(c: &mut Cluster, command: ClusterCommand) {
    let mut s = ClusterState::default();
    s.clusters.insert("main".into(), c.clone());
    command.apply(&mut s).unwrap();
    *c = s.clusters["main"].clone();
}

fn host(node: &str) -> String {
    format!("10.0.0.{}", &node[1..])
}

/// A report with PostgreSQL down and a valid data directory.
fn down(node: &str) -> NodeReport {
    NodeReport {
        cluster: "main".into(),
        node: node.into(),
        seq: 1,
        session: 1,
        epoch: 1,
        data: DataDirState::Valid {
            system_identifier: SYSID,
            timeline: 1,
            standby: false,
            clean_shutdown: false,
            checkpoint_lsn: Lsn(0),
        },
        ..NodeReport::default()
    }
}

fn primary(node: &str, lsn: u64) -> NodeReport {
    NodeReport {
        postgres: Some(PgStatus {
            in_recovery: false,
            timeline: 1,
            system_identifier: SYSID,
            lsn: Lsn(lsn),
            received_lsn: Lsn(lsn),
            replay_lsn: Lsn(lsn),
            ..PgStatus::default()
        }),
        wants_lease: true,
        ..down(node)
    }
}

/// A replica at `lsn`, streaming from `upstream` when given.
fn replica(node: &str, lsn: u64, upstream: Option<&str>) -> NodeReport {
    NodeReport {
        postgres: Some(PgStatus {
            in_recovery: true,
            timeline: 1,
            system_identifier: SYSID,
            lsn: Lsn(lsn),
            received_lsn: Lsn(lsn),
            replay_lsn: Lsn(lsn),
            wal_receiver: upstream.map(|u| WalReceiver {
                status: "streaming".into(),
                sender_host: host(u),
                sender_port: 5432,
            }),
            ..PgStatus::default()
        }),
        upstream: upstream.map(str::to_string),
        ..down(node)
    }
}

/// The soft state of a leader elected at 0 that received `reports`.
fn soft(c: &Cluster, reports: Vec<(NodeReport, u64)>) -> Soft {
    let mut soft = Soft::new(0);
    for (r, at) in reports {
        soft.observe(c, r, at);
    }
    soft
}

fn run(c: &Cluster, soft: &Soft, now: u64, wall_ms: u64) -> Decision {
    decide(&Input {
        cluster: c,
        soft,
        now,
        wall_ms,
    })
}

fn commands_to(d: &Decision, node: &str) -> Vec<&'static str> {
    d.commands
        .iter()
        .filter(|(n, _)| n == node)
        .map(|(_, a)| a.name())
        .collect()
}

fn promoted(d: &Decision) -> Option<(String, BTreeSet<String>)> {
    match &d.commit {
        Some(ClusterCommand::Promote { node, sync_set, .. }) => {
            Some((node.clone(), sync_set.clone()))
        }
        _ => None,
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn paused_grants_hold_open_and_resume_waits_until_the_agent_bounds_the_lease() {
    let mut c = three(&[]);
    let pause = |paused| ClusterCommand::SetPaused {
        at_unix_ms: 0,
        cluster: "main".into(),
        paused,
    };
    apply(&mut c, pause(true));
    assert!(c.open_lease);
    // While paused the lease is granted open.
    let mut s = soft(
        &c,
        vec![
            (primary("n1", 100), 1_000),
            (replica("n2", 100, Some("n1")), 1_000),
            (replica("n3", 100, Some("n1")), 1_000),
        ],
    );
    s.confirmed_at = Some(2_000);
    let d = run(&c, &s, 2_000, 0);
    let (node, g) = d.grant.expect("a grant while paused");
    assert_eq!(node, "n1");
    assert!(g.hold, "a paused grant must hold the lease open: {g:?}");

    // Resumed; the primary's agent dies with its keeper holding the lease
    // open: whatever time passes, nobody is promoted.
    apply(&mut c, pause(false));
    assert!(c.open_lease, "resuming alone bounds nothing");
    let late = 60_000;
    let s = soft(
        &c,
        vec![
            (replica("n2", 100, Some("n1")), late - 100),
            (replica("n3", 100, Some("n1")), late - 100),
        ],
    );
    let d = run(&c, &s, late, 0);
    assert_eq!(d.commit, None, "{d:?}");
    assert!(d.waiting.iter().any(|w| w.contains("held open")), "{d:?}");

    // The agent is alive: the leader's next grant is bounded, and
    // booked as the one that bounds the lease.
    let open = NodeReport {
        lease_open: true,
        lease_seq: 4,
        seq: 5,
        ..primary("n1", 100)
    };
    let mut s = soft(&c, vec![(open.clone(), 1_000)]);
    s.confirmed_at = Some(2_000);
    let d = run(&c, &s, 2_000, 0);
    assert_eq!(d.commit, None, "an open lease is not bounded yet: {d:?}");
    let (node, g) = d.grant.expect("a grant after resume");
    assert!(!g.hold, "{g:?}");
    assert!(s.book_lease(&c, &node, &g));
    assert_eq!(s.bounding, Some((1, 5)));
    // Decided again (a full pass) before the next report: nothing to send.
    assert!(!s.book_lease(&c, &node, &g), "the same grant sent twice");
    assert_eq!(s.bounding, Some((1, 5)));
    // A report still showing an older grant's lease changes nothing...
    s.observe(
        &c,
        NodeReport {
            lease_open: false,
            lease_seq: 4,
            seq: 6,
            ..primary("n1", 100)
        },
        2_100,
    );
    assert_eq!(run(&c, &s, 2_100, 0).commit, None);
    // ...one from the bounding grant (or later) ends the open lease.
    s.observe(
        &c,
        NodeReport {
            lease_open: false,
            lease_seq: 5,
            seq: 7,
            ..primary("n1", 100)
        },
        2_200,
    );
    assert_eq!(
        run(&c, &s, 2_200, 0).commit,
        Some(ClusterCommand::LeaseBounded {
            cluster: "main".into(),
            epoch: 1,
        })
    );
    // Paused and resumed again before that commit: the open grant made
    // meanwhile voids the bounding grant, and the same report no longer
    // bounds anything.
    let mut paused = c.clone();
    apply(&mut paused, pause(true));
    let hold = LeaseGrant {
        hold: true,
        seq: 7,
        ..g
    };
    assert!(s.book_lease(&paused, "n1", &hold));
    assert_eq!(s.bounding, None);
    assert_eq!(run(&c, &s, 2_250, 0).commit, None);
    apply(
        &mut c,
        ClusterCommand::LeaseBounded {
            cluster: "main".into(),
            epoch: 1,
        },
    );
    assert!(!c.open_lease);
}

#[test]
fn resumed_with_the_primary_down_bounds_its_lease_with_a_grant_then_fails_over() {
    // Found by the simulation (seed 115): paused while the primary was cut
    // off, so its keeper fenced; its agent came back after the resume and
    // reported PostgreSQL down. No grant was ever made (a stopped primary
    // is not granted one), so the lease was never bounded and the cluster
    // waited forever for an operator.
    let mut c = three(&[("primary_start_timeout", "0")]);
    let pause = |paused| ClusterCommand::SetPaused {
        at_unix_ms: 0,
        cluster: "main".into(),
        paused,
    };
    apply(&mut c, pause(true));
    apply(&mut c, pause(false));
    assert!(c.open_lease);
    let stopped = NodeReport {
        seq: 9,
        wants_lease: true,
        ..down("n1")
    };
    let mut s = soft(
        &c,
        vec![
            (stopped.clone(), 9_000),
            (replica("n2", 100, None), 9_500),
            (replica("n3", 100, None), 9_500),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), None, "the lease is still open: {d:?}");
    // Failing over is not possible, so the primary is started again
    // (timeout 0 or not), with a bounded grant.
    assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");
    let (node, g) = d.grant.expect("a bounding grant to the primary's agent");
    assert_eq!(node, "n1");
    assert!(!g.hold, "{g:?}");
    assert!(s.book_lease(&c, &node, &g));
    // Its keeper confirms the grant: the lease is bounded again.
    s.observe(
        &c,
        NodeReport {
            seq: 10,
            lease_seq: 9,
            ..stopped
        },
        10_100,
    );
    let bounded = ClusterCommand::LeaseBounded {
        cluster: "main".into(),
        epoch: 1,
    };
    assert_eq!(run(&c, &s, 10_100, 0).commit, Some(bounded.clone()));
    apply(&mut c, bounded);
    // From then on the ordinary failover rules apply.
    assert!(!c.open_lease);
    let mut s = soft(
        &c,
        vec![
            (down("n1"), 59_000),
            (replica("n2", 100, None), 59_500),
            (replica("n3", 100, None), 59_500),
        ],
    );
    s.confirmed_at = Some(60_000);
    let d = run(&c, &s, 60_000, 0);
    assert!(promoted(&d).is_some(), "{d:?}");
}

#[test]
fn resumed_with_a_primary_that_never_learned_its_promotion_starts_it() {
    // Found by the simulation (seed 788): n1's promotion was committed
    // while its host was down, then the cluster was paused and resumed.
    // Its agent came back a replica of the previous epoch, asking for no
    // lease: nothing could bound the open lease, nothing was done.
    let mut c = three(&[("primary_start_timeout", "0")]);
    for paused in [true, false] {
        apply(
            &mut c,
            ClusterCommand::SetPaused {
                at_unix_ms: 0,
                cluster: "main".into(),
                paused,
            },
        );
    }
    c.epoch = 2;
    let stale = NodeReport {
        data: DataDirState::Valid {
            system_identifier: SYSID,
            timeline: 1,
            standby: true,
            clean_shutdown: true,
            checkpoint_lsn: Lsn(0),
        },
        ..down("n1")
    };
    let mut s = soft(
        &c,
        vec![
            (stale, 9_000),
            (replica("n2", 100, None), 9_500),
            (replica("n3", 100, None), 9_500),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), None, "{d:?}");
    assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");
}

#[test]
fn a_node_that_asks_for_its_configuration_gets_it_again() {
    // An agent reloaded with new node parameters: same configuration
    // version, but it wants the settings again to write them merged.
    let c = three(&[]);
    let wants = |r: NodeReport| NodeReport {
        wants_config: true,
        ..r
    };
    let mut s = soft(
        &c,
        vec![
            (primary("n1", 1_000), 9_900),
            (replica("n2", 1_000, Some("n1")), 9_900),
            (replica("n3", 1_000, Some("n1")), 9_900),
        ],
    );
    s.confirmed_at = Some(10_000);
    assert!(run(&c, &s, 10_000, 0).commands.is_empty());
    s.observe(&c, wants(replica("n2", 1_000, Some("n1"))), 10_000);
    s.observe(&c, wants(primary("n1", 1_000)), 10_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(commands_to(&d, "n1"), ["configure"], "{d:?}");
    assert_eq!(commands_to(&d, "n2"), ["configure"], "{d:?}");
    assert!(commands_to(&d, "n3").is_empty(), "{d:?}");
}

#[test]
fn a_replica_holding_unloaded_slot_copies_is_restarted_and_a_primary_never() {
    let c = three(&[]);
    let asks = |r: NodeReport| NodeReport {
        restart_to_load_slots: true,
        ..r
    };
    let mut s = soft(
        &c,
        vec![
            (asks(primary("n1", 1_000)), 9_900),
            (asks(replica("n2", 1_000, Some("n1"))), 9_900),
            (asks(replica("n3", 1_000, Some("n1"))), 9_900),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    // One at a time: a failover always has a candidate.
    assert_eq!(commands_to(&d, "n2"), ["restart"], "{d:?}");
    assert!(
        d.commands.iter().any(|(node, action)| node == "n2"
            && matches!(
                action,
                Action::Restart {
                    action_id: 0,
                    pending_only: false
                }
            )),
        "{d:?}"
    );
    assert!(commands_to(&d, "n1").is_empty(), "{d:?}");
    assert!(commands_to(&d, "n3").is_empty(), "{d:?}");
}

#[test]
fn a_pending_restart_waits_until_the_node_has_the_current_configuration() {
    // `config set` of a restart-only value, then at once `node restart
    // --pending`: a node that has not written the new value yet would
    // find nothing pending and never load it.
    let mut c = three(&[]);
    c.config_version = 5;
    c.members.get_mut("n2").unwrap().action = Some(crate::cluster::state::NodeAction {
        id: 7,
        kind: crate::cluster::state::NodeActionKind::RestartPending,
        not_before_unix_ms: None,
    });
    let at = |version: u64| NodeReport {
        config_version: version,
        ..replica("n2", 1_000, Some("n1"))
    };
    let mut s = soft(
        &c,
        vec![
            (
                NodeReport {
                    config_version: 5,
                    ..primary("n1", 1_000)
                },
                9_900,
            ),
            (at(4), 9_900),
            (
                NodeReport {
                    config_version: 5,
                    ..replica("n3", 1_000, Some("n1"))
                },
                9_900,
            ),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(commands_to(&d, "n2"), ["configure"], "{d:?}");
    s.observe(&c, at(5), 10_100);
    let d = run(&c, &s, 10_100, 0);
    assert_eq!(commands_to(&d, "n2"), ["restart"], "{d:?}");
}

#[test]
fn each_fence_goes_into_the_history_once_and_never_before_other_work() {
    let mut c = three(&[]);
    let fenced = |fences: u64| NodeReport {
        phase: AgentPhase::Fenced,
        session: 77,
        fences,
        postgres: None,
        ..replica("n3", 1_000, Some("n1"))
    };
    let mut s = soft(
        &c,
        vec![
            (primary("n1", 1_000), 9_900),
            (replica("n2", 1_000, Some("n1")), 9_900),
            (fenced(1), 9_900),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 1_234);
    assert_eq!(
        d.commit,
        Some(ClusterCommand::NoteFence {
            cluster: c.name.clone(),
            node: "n3".into(),
            session: 77,
            fences: 1,
            reason: d
                .commit
                .as_ref()
                .and_then(|cmd| match cmd {
                    ClusterCommand::NoteFence { reason, .. } => Some(reason.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            at_unix_ms: 1_234,
        }),
        "{d:?}"
    );
    let mut state = ClusterState::default();
    state.clusters.insert(c.name.clone(), c.clone());
    d.commit.clone().unwrap().apply(&mut state).unwrap();
    // Recorded: not again; the same command twice records it once.
    d.commit.clone().unwrap().apply(&mut state).unwrap();
    let after = &state.clusters[&c.name];
    let fences: Vec<_> = after
        .history
        .iter()
        .filter(|e| e.kind == EventKind::Fence)
        .collect();
    assert_eq!(fences.len(), 1, "{:?}", after.history);
    assert_eq!(fences[0].node.as_deref(), Some("n3"));
    assert!(fences[0].reason.contains("n3's PostgreSQL was stopped"));
    c.members.get_mut("n3").unwrap().last_fence = Some((77, 1));
    assert_eq!(run(&c, &s, 10_000, 0).commit, None);
    // The next fence of that agent is recorded.
    s.observe(&c, fenced(2), 10_000);
    assert!(matches!(
        run(&c, &s, 10_000, 0).commit,
        Some(ClusterCommand::NoteFence { fences: 2, .. })
    ));
    // Also when the first report the leader reads of it is from the rejoin
    // that followed at once (the fenced phase lasted one report).
    let rejoining = NodeReport {
        phase: AgentPhase::Rewinding,
        ..fenced(3)
    };
    s.observe(&c, rejoining, 10_000);
    assert!(matches!(
        run(&c, &s, 10_000, 0).commit,
        Some(ClusterCommand::NoteFence { fences: 3, .. })
    ));
}

#[test]
fn scheduled_restarts_wait_for_their_time_and_go_one_at_a_time_primary_last() {
    use crate::cluster::state::{NodeAction, NodeActionKind};
    let mut c = three(&[]);
    for (node, id) in [("n1", 1), ("n2", 2), ("n3", 3)] {
        c.members.get_mut(node).unwrap().action = Some(NodeAction {
            id,
            kind: NodeActionKind::Restart,
            not_before_unix_ms: Some(50_000),
        });
    }
    let mut s = soft(
        &c,
        vec![
            (primary("n1", 1_000), 9_900),
            (replica("n2", 1_000, Some("n1")), 9_900),
            (replica("n3", 1_000, Some("n1")), 9_900),
        ],
    );
    s.confirmed_at = Some(10_000);
    // Before the time: nothing.
    let d = run(&c, &s, 10_000, 49_999);
    assert!(d.commands.is_empty(), "{d:?}");
    // Due: one replica, not the primary.
    let d = run(&c, &s, 10_000, 50_000);
    assert_eq!(commands_to(&d, "n2"), ["restart"], "{d:?}");
    assert!(commands_to(&d, "n3").is_empty(), "{d:?}");
    assert!(commands_to(&d, "n1").is_empty(), "{d:?}");
    // Both replicas done: the primary.
    let done = |r: NodeReport, id: u64| NodeReport {
        completed_action: Some(id),
        ..r
    };
    s.observe(&c, done(replica("n2", 1_000, Some("n1")), 2), 10_100);
    let d = run(&c, &s, 10_100, 50_100);
    assert!(matches!(
        d.commit,
        Some(ClusterCommand::CompleteNodeAction { id: 2, .. })
    ));
    c.members.get_mut("n2").unwrap().action = None;
    // n3 still to go: not the primary yet.
    let d = run(&c, &s, 10_100, 50_100);
    assert_eq!(commands_to(&d, "n3"), ["restart"], "{d:?}");
    assert!(commands_to(&d, "n1").is_empty(), "{d:?}");
    s.observe(&c, done(replica("n3", 1_000, Some("n1")), 3), 10_200);
    c.members.get_mut("n3").unwrap().action = None;
    let d = run(&c, &s, 10_200, 50_200);
    assert_eq!(commands_to(&d, "n1"), ["restart"], "{d:?}");
}

#[test]
fn a_primary_that_stops_answering_loses_its_lease_and_is_replaced() {
    // PostgreSQL frozen with its agent alive: the agent's reports went on
    // showing the last (healthy) picture, the lease was renewed, and the
    // failover came only after primary_start_timeout (16.8 s measured).
    let c = three(&[]);
    let silent = |ms: u64| NodeReport {
        unresponsive_ms: ms,
        seq: 7,
        ..primary("n1", 1_000)
    };
    // A moment without an answer (a busy server): renewed as usual.
    let mut s = soft(
        &c,
        vec![
            (silent(1_000), 9_900),
            (replica("n2", 1_000, Some("n1")), 9_900),
            (replica("n3", 1_000, Some("n1")), 9_900),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert!(d.grant.is_some(), "{d:?}");
    // Past primary_unresponsive_timeout (1.5 s): no grant, no restart.
    s.observe(&c, silent(1_500), 10_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(d.grant, None, "{d:?}");
    assert!(d.commands.is_empty(), "{d:?}");
    assert!(
        d.waiting.iter().any(|w| w.contains("has not answered")),
        "{d:?}"
    );
    // Once its lease is over a replica is promoted — not one that is
    // silent itself.
    let mut s = soft(
        &c,
        vec![
            (primary("n1", 1_000), 8_000),
            (silent(3_000), 9_900),
            (
                NodeReport {
                    unresponsive_ms: 2_000,
                    ..replica("n2", 1_000, None)
                },
                9_900,
            ),
            (replica("n3", 1_000, None), 9_900),
        ],
    );
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), Some(("n3".into(), set(&[]))), "{d:?}");
    // Fenced by its keeper, it is down: not restarted (a hung disk would
    // hang it again, round after round), replaced.
    let mut s = soft(
        &c,
        vec![
            (silent(2_000), 8_000),
            (down("n1"), 9_900),
            (replica("n2", 1_000, None), 9_900),
            (replica("n3", 1_000, None), 9_900),
        ],
    );
    assert!(s.primary_went_silent);
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert!(commands_to(&d, "n1").is_empty(), "{d:?}");
    assert!(promoted(&d).is_some(), "{d:?}");
    // Answering again before that: renewed, nothing else happens.
    let mut s = soft(&c, vec![(primary("n1", 1_000), 9_900)]);
    s.confirmed_at = Some(10_000);
    let d = run(&c, &s, 10_000, 0);
    assert!(d.grant.is_some() && d.commit.is_none(), "{d:?}");
}

#[test]
fn restarts_the_primary_when_no_replica_could_take_over() {
    // primary_start_timeout 0: fail over at once rather than restart.
    // But with no replica that could be promoted, restarting the
    // primary is the only way back; the decision used to wait forever.
    let mut c = three(&[("primary_start_timeout", "0")]);
    let never_cloned = |n: &str| NodeReport {
        data: DataDirState::Empty,
        ..down(n)
    };
    let s = soft(
        &c,
        vec![
            (down("n1"), 9_000),
            (never_cloned("n2"), 9_500),
            (never_cloned("n3"), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");

    // The same with replicas too far behind to be promoted.
    apply(
        &mut c,
        ClusterCommand::SetConfig {
            at_unix_ms: 0,
            cluster: "main".into(),
            changes: [("maximum_lag_on_failover".to_string(), "1000".to_string())].into(),
        },
    );
    let s = soft(
        &c,
        vec![
            (primary("n1", 100_000), 1_000),
            (down("n1"), 9_000),
            (replica("n2", 50_000, None), 9_500),
            (replica("n3", 40_000, None), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert!(d.commit.is_none(), "{d:?}");
    assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");

    // And a new cluster bootstraps even with a timeout of 0.
    c.system_identifier = None;
    let s = soft(
        &c,
        vec![
            (never_cloned("n1"), 9_000),
            (never_cloned("n2"), 9_500),
            (never_cloned("n3"), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(commands_to(&d, "n1"), ["bootstrap"], "{d:?}");
}

#[test]
fn sync_mode_without_a_sync_standby_does_not_fail_over() {
    // After a sync-mode failover the new primary's sync set is empty
    // until a standby catches up. The commits acknowledged before may
    // then exist on the primary alone: promoting a replica by the
    // asynchronous rules (as was done) loses them.
    let c = three(&[("sync_mode", "on")]);
    assert!(c.sync_set.is_empty());
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 9_000, None), 9_500),
            (replica("n3", 8_000, None), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), None, "{d:?}");
    assert!(
        d.waiting
            .iter()
            .any(|w| w.contains("without a sync standby")),
        "{d:?}"
    );
    // Only the old primary may come back: it is restarted.
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (down("n1"), 9_400),
            (replica("n2", 9_000, None), 9_500),
            (replica("n3", 8_000, None), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");
}

#[test]
fn a_node_holding_a_failsafe_promise_is_not_promoted_until_it_ran_out() {
    let c = three(&[]);
    let promised = |node: &str, lsn: u64, ms: u64| NodeReport {
        promise_ms: ms,
        ..replica(node, lsn, None)
    };
    // n2 is the most advanced but promised for 2 s from 9 500.
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (promised("n2", 10_000, 2_000), 9_500),
            (promised("n3", 9_000, 0), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d).map(|p| p.0), Some("n3".into()), "{d:?}");
    assert!(d.waiting.iter().any(|w| w.contains("n2 promised")), "{d:?}");
    // Both promised: nobody.
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (promised("n2", 10_000, 2_000), 9_500),
            (promised("n3", 9_000, 2_000), 9_500),
        ],
    );
    assert_eq!(promoted(&run(&c, &s, 10_000, 0)), None);
    // Run out: n2 again.
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (promised("n2", 10_000, 400), 9_500),
            (promised("n3", 9_000, 400), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d).map(|p| p.0), Some("n2".into()), "{d:?}");
}

#[test]
fn a_promotion_keeps_only_sync_members_that_hold_everything() {
    // FIRST 1 (n2, n3): n3 may be a lagging "potential" standby while
    // n2 confirms every commit. Kept in the new epoch's sync set, n3
    // could be promoted after n2 fails, without those commits.
    let mut c = three(&[("sync_mode", "on")]);
    apply(
        &mut c,
        ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2", "n3"]),
        },
    );
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 10_000, None), 9_500),
            (replica("n3", 9_000, None), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), Some(("n2".into(), set(&[]))), "{d:?}");
    // A member at the same LSN holds the same WAL: it stays.
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 10_000, None), 9_500),
            (replica("n3", 10_000, None), 9_500),
        ],
    );
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), Some(("n2".into(), set(&["n3"]))), "{d:?}");
}

#[test]
fn sync_failover_never_skips_a_more_advanced_nofailover_member() {
    // FIRST 1 (n2, n3) with n2 tagged nofailover: n2 confirms the
    // commits while n3 lags. The failover skipped n2 for its tag and
    // promoted n3 without them (no catching up in synchronous mode).
    let nofailover = Tags {
        nofailover: true,
        ..Tags::default()
    };
    let mut c = cluster(
        &[
            ("n1", Tags::default()),
            ("n2", nofailover),
            ("n3", Tags::default()),
        ],
        &[("sync_mode", "on"), ("primary_start_timeout", "0")],
    );
    apply(
        &mut c,
        ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2", "n3"]),
        },
    );
    let reports = vec![
        (primary("n1", 10_000), 1_000),
        (replica("n2", 10_000, None), 9_500),
        (replica("n3", 9_000, None), 9_500),
    ];
    let d = run(&c, &soft(&c, reports.clone()), 10_000, 0);
    assert_eq!(promoted(&d), None, "{d:?}");
    assert!(d.waiting.iter().any(|w| w.contains("nofailover")), "{d:?}");
    // Nobody can be promoted: the old primary is restarted instead.
    let mut with_n1 = reports;
    with_n1.push((down("n1"), 9_000));
    let d = run(&c, &soft(&c, with_n1), 10_000, 0);
    assert_eq!(commands_to(&d, "n1"), ["start_primary"], "{d:?}");
}

#[test]
fn a_follow_restarts_the_not_streaming_clock() {
    // A replica that has not streamed for RESEND_AFTER_MS is told to
    // follow again. The clock was not reset by that, so the first
    // report after the restart (before its WAL receiver connected)
    // triggered another follow at once: a stop/start loop.
    let c = three(&[]);
    let mut s = soft(
        &c,
        vec![
            (replica("n2", 5_000, None), 1_000),
            (primary("n1", 6_000), 6_900),
            (replica("n2", 5_000, None), 7_000),
            (replica("n3", 6_000, Some("n1")), 7_000),
        ],
    );
    let follows_n1 = |r: NodeReport| NodeReport {
        upstream: Some("n1".into()),
        ..r
    };
    s.observe(&c, follows_n1(replica("n2", 5_000, None)), 7_000);
    let d = run(&c, &s, 7_000, 0);
    let (node, action) = d
        .commands
        .iter()
        .find(|(n, _)| n == "n2")
        .cloned()
        .expect("a nudge for n2");
    assert_eq!((node.as_str(), action.name()), ("n2", "follow"));
    let id = s.sent("n2", &action, 1, 7_000);
    let done = NodeReport {
        last_command: Some(CommandOutcome {
            action: String::new(),
            id,
            ok: true,
            message: "following n1".into(),
        }),
        ..follows_n1(replica("n2", 5_000, None))
    };
    s.observe(&c, primary("n1", 6_100), 7_500);
    s.observe(&c, done, 7_600);
    let d = run(&c, &s, 7_700, 0);
    assert!(!commands_to(&d, "n2").contains(&"follow"), "{d:?}");
}

#[test]
fn a_switchover_that_cannot_finish_is_given_up() {
    let mut c = three(&[]);
    apply(
        &mut c,
        ClusterCommand::RequestSwitchover {
            cluster: "main".into(),
            from: None,
            to: Some("n2".into()),
            not_before_unix_ms: None,
            requested_unix_ms: 1_000_000,
        },
    );
    apply(
        &mut c,
        ClusterCommand::AdvanceSwitchover {
            cluster: "main".into(),
            epoch: 1,
            phase: SwitchoverPhase::Demoting {
                target: "n2".into(),
            },
        },
    );
    let cancelled =
        |d: &Decision| matches!(d.commit, Some(ClusterCommand::CancelSwitchover { .. }));
    // The old primary was fenced instead of stopping cleanly: its last
    // WAL may be missing on the target. It used to wait for a clean
    // stop forever, with nobody restarting or replacing the primary.
    let fenced = NodeReport {
        phase: AgentPhase::Fenced,
        ..down("n1")
    };
    let s = soft(
        &c,
        vec![(fenced, 9_500), (replica("n2", 5_000, Some("n1")), 9_500)],
    );
    assert!(cancelled(&run(&c, &s, 10_000, 1_010_000)));
    // Stopped cleanly, but the target never catches up (it stopped, or
    // lost its upstream): given up after twice SWITCHOVER_LIMIT_MS.
    let clean = NodeReport {
        data: DataDirState::Valid {
            system_identifier: SYSID,
            timeline: 1,
            standby: false,
            clean_shutdown: true,
            checkpoint_lsn: Lsn(6_000),
        },
        ..down("n1")
    };
    let s = soft(
        &c,
        vec![(clean, 9_500), (replica("n2", 5_000, None), 9_500)],
    );
    let d = run(&c, &s, 10_000, 1_010_000);
    assert!(!cancelled(&d) && promoted(&d).is_none(), "{d:?}");
    let d = run(&c, &s, 10_000, 1_000_000 + 2 * SWITCHOVER_LIMIT_MS + 1);
    assert!(cancelled(&d), "{d:?}");
}

#[test]
fn not_strict_sync_failover_hears_from_every_member() {
    // sync_count 2, not strict: while the set was {n2} PostgreSQL had
    // FIRST 1 (n2), so those commits are on n2 alone. Once the set is
    // {n2, n3} (FIRST 2), n - k + 1 = 1 report was taken as enough and
    // n3 was promoted without them while n2 was down.
    let mut c = three(&[("sync_mode", "on"), ("sync_count", "2")]);
    apply(
        &mut c,
        ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2", "n3"]),
        },
    );
    let reports = vec![
        (primary("n1", 10_000), 1_000),
        (replica("n3", 9_000, None), 9_500),
    ];
    let d = run(&c, &soft(&c, reports.clone()), 10_000, 0);
    assert_eq!(promoted(&d), None, "{d:?}");
    let mut all = reports;
    all.push((replica("n2", 10_000, None), 9_500));
    let d = run(&c, &soft(&c, all), 10_000, 0);
    assert_eq!(promoted(&d), Some(("n2".into(), set(&[]))), "{d:?}");
    // Strict, PostgreSQL always waited for 2: one report is enough.
    apply(
        &mut c,
        ClusterCommand::SetConfig {
            at_unix_ms: 0,
            cluster: "main".into(),
            changes: [("sync_strict".to_string(), "on".to_string())].into(),
        },
    );
    let d = run(
        &c,
        &soft(
            &c,
            vec![
                (primary("n1", 10_000), 1_000),
                (replica("n3", 9_000, None), 9_500),
            ],
        ),
        10_000,
        0,
    );
    assert_eq!(promoted(&d), Some(("n3".into(), set(&[]))), "{d:?}");
}

#[test]
fn a_vanished_sync_standby_is_dropped_once_the_others_confirmed() {
    // Not strict, a member absent for a ttl leaves the sync set. The
    // absence was never recorded, so it never left: with sync_count 2
    // and FIRST 2 (n2, n3), n3 gone blocked every write for good.
    let mut c = three(&[("sync_mode", "on"), ("sync_count", "2")]);
    apply(
        &mut c,
        ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2", "n3"]),
        },
    );
    let with = |names: &str, lsn: u64, n2_flush: u64| {
        let mut r = primary("n1", lsn);
        if let Some(pg) = r.postgres.as_mut() {
            pg.synchronous_standby_names = names.into();
            pg.replicas = vec![ReplicaConnection {
                application_name: "n2".into(),
                state: "streaming".into(),
                flush_lsn: Lsn(n2_flush),
                replay_lsn: Lsn(n2_flush),
                sync_state: "sync".into(),
            }];
        }
        r
    };
    let both = "FIRST 2 (\"n2\",\"n3\")";
    let only_n2 = "FIRST 1 (\"n2\")";
    let mut s = soft(
        &c,
        vec![
            (with(both, 1_000, 1_000), 1_000),
            (replica("n2", 1_000, Some("n1")), 1_000),
        ],
    );
    s.observe(&c, with(both, 4_000, 4_000), 3_500);
    s.observe(&c, replica("n2", 4_000, Some("n1")), 3_500);
    let d = run(&c, &s, 3_500, 0);
    let configure = d.commands.iter().find_map(|(n, a)| match a {
        Action::Configure { settings } if n == "n1" => {
            Some(settings.synchronous_standby_names.clone())
        }
        _ => None,
    });
    assert_eq!(configure.as_deref(), Some(only_n2), "{d:?}");
    // PostgreSQL waits for n2 alone from LSN 6000 on. Commits before
    // may be on n3 alone: the committed set keeps n3 until n2 has
    // flushed up to there.
    s.observe(&c, with(only_n2, 6_000, 5_000), 3_600);
    let d = run(&c, &s, 3_600, 0);
    assert!(d.commit.is_none(), "{d:?}");
    s.observe(&c, with(only_n2, 7_000, 6_000), 3_700);
    let d = run(&c, &s, 3_700, 0);
    assert_eq!(
        d.commit,
        Some(ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2"]),
        })
    );
}

#[test]
fn the_first_member_joins_an_empty_sync_set_only_once_caught_up() {
    // Found by the simulation (seed 140): right after a sync-mode
    // failover the set is empty and the new primary alone holds the
    // commits acknowledged before. A standby its walsender still listed
    // as streaming, far behind, joined at once, became promotable on its
    // own and was promoted when the new primary froze: 507 acknowledged
    // commits lost.
    let c = three(&[("sync_mode", "on")]);
    assert!(c.sync_set.is_empty());
    let with = |lsn: u64, n2_flush: u64| {
        let mut r = primary("n1", lsn);
        if let Some(pg) = r.postgres.as_mut() {
            pg.replicas = vec![ReplicaConnection {
                application_name: "n2".into(),
                state: "streaming".into(),
                flush_lsn: Lsn(n2_flush),
                replay_lsn: Lsn(n2_flush),
                sync_state: "async".into(),
            }];
        }
        r
    };
    // The names (none) took effect at LSN 5000.
    let mut s = soft(&c, vec![(with(5_000, 1_000), 1_000)]);
    s.observe(&c, replica("n2", 1_000, Some("n1")), 1_000);
    s.observe(&c, with(6_000, 4_900), 1_100);
    let d = run(&c, &s, 1_100, 0);
    assert_eq!(d.commit, None, "{d:?}");
    assert!(d.waiting.iter().any(|w| w.contains("catch up")), "{d:?}");
    // Past it: n2 joins.
    s.observe(&c, with(7_000, 5_000), 1_200);
    assert_eq!(
        run(&c, &s, 1_200, 0).commit,
        Some(ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2"]),
        })
    );
}

#[test]
fn a_replica_busy_with_a_command_is_not_promoted() {
    // A follow sent before the failure may still stop, rewind or
    // re-clone the replica; a promotion queued behind it ran on
    // whatever that left (in the simulation: an empty data directory).
    let c = three(&[]);
    let mut s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 10_000, None), 9_500),
            (replica("n3", 9_000, None), 9_500),
        ],
    );
    let follow = Action::Follow {
        upstream: Upstream {
            node: "n3".into(),
            host: host("n3"),
            port: 5432,
        },
        settings: ManagedSettings::default(),
        reclone: true,
    };
    let id = s.sent("n2", &follow, 1, 9_000);
    let d = run(&c, &s, 10_000, 0);
    assert_eq!(promoted(&d), None, "{d:?}");
    let done = NodeReport {
        last_command: Some(CommandOutcome {
            action: String::new(),
            id,
            ok: true,
            message: String::new(),
        }),
        ..replica("n2", 10_000, None)
    };
    s.observe(&c, done, 10_100);
    let d = run(&c, &s, 10_200, 0);
    assert_eq!(promoted(&d), Some(("n2".into(), set(&[]))), "{d:?}");
}

#[test]
fn manual_failover_refuses_what_it_must_and_shares_the_sync_set_rule() {
    use crate::cluster::command::RejectionKind;
    let mut c = three(&[("sync_mode", "on")]);
    apply(
        &mut c,
        ClusterCommand::SetSyncSet {
            cluster: "main".into(),
            epoch: 1,
            sync_set: set(&["n2", "n3"]),
        },
    );
    let refused = |s: &Soft, to: &str, now: u64| {
        manual_failover(
            &Input {
                cluster: &c,
                soft: s,
                now,
                wall_ms: 0,
            },
            to,
            false,
        )
        .unwrap_err()
    };
    // A healthy primary holding its lease: that is a switchover.
    let healthy = NodeReport {
        holds_lease: true,
        ..primary("n1", 10_000)
    };
    let s = soft(
        &c,
        vec![(healthy, 9_000), (replica("n2", 10_000, Some("n1")), 9_000)],
    );
    let e = refused(&s, "n2", 9_500);
    assert!(e.message.contains("switchover"), "{}", e.message);
    let e = refused(&s, "nope", 9_500);
    assert_eq!(e.kind, RejectionKind::NotFound);
    assert!(refused(&s, "n1", 9_500)
        .message
        .contains("already the primary"));

    // The primary is gone; n3 did not report: it cannot be promoted.
    let s = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 10_000, None), 9_500),
            (replica("n3", 9_000, None), 9_500),
        ],
    );
    fn late<'a>(c: &'a Cluster, s: &'a Soft) -> Input<'a> {
        Input {
            cluster: c,
            soft: s,
            now: 10_000,
            wall_ms: 0,
        }
    }
    // Before every lease surely ended: wait.
    let fresh_start = soft(
        &c,
        vec![
            (primary("n1", 10_000), 100),
            (replica("n3", 9_000, None), 1_200),
        ],
    );
    let early = Input {
        now: 1_500,
        ..late(&c, &fresh_start)
    };
    assert!(matches!(
        manual_failover(&early, "n3", false),
        Ok(ManualFailover::WaitUntil(at)) if at > 1_500
    ));
    // Forcing the laggard n3 is allowed; n2 (ahead of it) leaves the sync
    // set: it may hold commits n3 lacks. (The manual path used to keep
    // every other member.)
    let Ok(ManualFailover::Promote(ClusterCommand::Promote { node, sync_set, .. })) =
        manual_failover(&late(&c, &s), "n3", false)
    else {
        panic!("no promotion");
    };
    assert_eq!(node, "n3");
    assert_eq!(sync_set, set(&[]));
    // n2 at n3's LSN would have stayed.
    let same = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 9_000, None), 9_500),
            (replica("n3", 9_000, None), 9_500),
        ],
    );
    let Ok(ManualFailover::Promote(ClusterCommand::Promote { sync_set, .. })) =
        manual_failover(&late(&c, &same), "n3", false)
    else {
        panic!("no promotion");
    };
    assert_eq!(sync_set, set(&["n2"]));

    // A node holding a failsafe promise, or tagged nofailover, never.
    let promised = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (
                NodeReport {
                    promise_ms: 5_000,
                    ..replica("n2", 10_000, None)
                },
                9_500,
            ),
        ],
    );
    let e = manual_failover(&late(&c, &promised), "n2", false).unwrap_err();
    assert!(e.message.contains("promised"), "{}", e.message);
    let mut tagged = c.clone();
    tagged.members.get_mut("n2").unwrap().tags.nofailover = true;
    let e = manual_failover(
        &Input {
            cluster: &tagged,
            ..late(&c, &s)
        },
        "n2",
        false,
    )
    .unwrap_err();
    assert!(e.message.contains("nofailover"), "{}", e.message);
    // An open lease after a pause needs the operator's word.
    let mut open = c.clone();
    open.open_lease = true;
    let open_input = Input {
        cluster: &open,
        ..late(&c, &s)
    };
    let e = manual_failover(&open_input, "n2", false).unwrap_err();
    assert!(e.message.contains("--old-primary-stopped"), "{}", e.message);
    assert!(manual_failover(&open_input, "n2", true).is_ok());
}

#[test]
fn switchover_checks_the_primary_and_the_target() {
    let c = three(&[]);
    let check = |s: &Soft, to: Option<&str>| {
        check_switchover(
            &Input {
                cluster: &c,
                soft: s,
                now: 9_600,
                wall_ms: 0,
            },
            to,
        )
    };
    let healthy = soft(
        &c,
        vec![
            (primary("n1", 10_000), 9_500),
            (replica("n2", 10_000, Some("n1")), 9_500),
            (replica("n3", 10_000, None), 9_500),
        ],
    );
    assert_eq!(check(&healthy, Some("n2")), Ok(()));
    assert_eq!(check(&healthy, None), Ok(()));
    let e = check(&healthy, Some("n3")).unwrap_err();
    assert!(e.message.contains("not streaming from n1"), "{}", e.message);
    let e = check(&healthy, Some("n1")).unwrap_err();
    assert!(e.message.contains("already the primary"), "{}", e.message);
    let down = soft(
        &c,
        vec![
            (down("n1"), 9_500),
            (replica("n2", 10_000, Some("n1")), 9_500),
        ],
    );
    let e = check(&down, Some("n2")).unwrap_err();
    assert!(e.message.contains("failover --to"), "{}", e.message);
    let promised = soft(
        &c,
        vec![
            (primary("n1", 10_000), 9_500),
            (
                NodeReport {
                    promise_ms: 3_000,
                    ..replica("n2", 10_000, Some("n1"))
                },
                9_500,
            ),
        ],
    );
    let e = check(&promised, None).unwrap_err();
    assert!(e.message.contains("no streaming replica"), "{}", e.message);
}

#[test]
fn only_a_stopped_non_primary_outside_the_sync_set_may_be_removed() {
    let mut c = three(&[]);
    let check = |c: &Cluster, s: &Soft, now: u64, name: &str| {
        check_node_removal(
            &Input {
                cluster: c,
                soft: s,
                now,
                wall_ms: 0,
            },
            name,
        )
    };
    let reports = soft(
        &c,
        vec![
            (primary("n1", 10_000), 9_500),
            (replica("n2", 10_000, Some("n1")), 9_500),
            (replica("n3", 10_000, Some("n1")), 1_000),
        ],
    );
    let e = check(&c, &reports, 9_600, "n9").unwrap_err();
    assert_eq!(e.kind, crate::cluster::RejectionKind::NotFound);
    let e = check(&c, &reports, 9_600, "n1").unwrap_err();
    assert!(e.message.contains("is the primary"), "{}", e.message);
    // n2 reported 100 ms ago: it runs.
    let e = check(&c, &reports, 9_600, "n2").unwrap_err();
    assert!(e.message.contains("is running"), "{}", e.message);
    // n3 has been silent for longer than a lease: it may go...
    assert_eq!(
        check(&c, &reports, 9_600, "n3"),
        Ok(ClusterCommand::RemoveNode {
            cluster: c.name.clone(),
            name: "n3".into()
        })
    );
    // ... unless it is still a synchronous standby.
    c.sync_set = set(&["n3"]);
    let e = check(&c, &reports, 9_600, "n3").unwrap_err();
    assert!(
        e.message.contains("synchronous standby set"),
        "{}",
        e.message
    );
}

#[test]
fn a_cluster_is_removed_only_once_every_node_is_silent() {
    let c = three(&[]);
    let check = |s: &Soft, now: u64| {
        check_cluster_removal(&Input {
            cluster: &c,
            soft: s,
            now,
            wall_ms: 0,
        })
    };
    let reports = soft(
        &c,
        vec![
            (primary("n1", 10_000), 1_000),
            (replica("n2", 10_000, Some("n1")), 9_500),
        ],
    );
    let e = check(&reports, 9_600).unwrap_err();
    assert!(
        e.message.contains("still runs (n2 reported"),
        "{}",
        e.message
    );
    assert_eq!(
        check(&reports, 20_000),
        Ok(ClusterCommand::RemoveCluster {
            cluster: c.name.clone()
        })
    );
}

/// An asynchronous primary whose keeper can gate commits is made to wait
/// for it; one whose agent or keeper predates the gate never is (every
/// commit would wait for a standby that never comes), nor any primary with
/// `lease_gated_commits` off.
#[test]
fn the_commit_gate_only_for_a_primary_whose_keeper_can_stand_as_it() {
    let configure = |c: &Cluster, gate: bool| {
        let mut r = primary("n1", 1_000);
        r.commit_gate = gate;
        let s = soft(
            c,
            vec![(r, 1_000), (replica("n2", 1_000, Some("n1")), 1_000)],
        );
        let d = run(c, &s, 1_000, 0);
        d.commands.iter().find_map(|(n, a)| match a {
            Action::Configure { settings } if n == "n1" => {
                Some(settings.synchronous_standby_names.clone())
            }
            _ => None,
        })
    };
    let c = three(&[]);
    assert_eq!(
        configure(&c, true).as_deref(),
        Some(crate::cluster::sync::GATE_ONLY)
    );
    let ungated = |names: Option<String>| names.is_none_or(|n| n.is_empty());
    assert!(ungated(configure(&c, false)));
    let off = three(&[("lease_gated_commits", "off")]);
    assert!(ungated(configure(&off, true)));
}
